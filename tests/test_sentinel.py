"""Redis Sentinel, live on loopback: one master, one replica, three
sentinels. The gateway finds the master through them, and when the master
dies mid-traffic it lets nobody through without a valid session, answers
503 meanwhile, and recovers by itself once a replica is promoted."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authkit import api_login, send
from conftest import free_port

MASTER = "gwmaster"


def _ask(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(command)
        time.sleep(0.05)
        return s.recv(65536)


def _wait(check: Any, what: str, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"not within {within:.0f}s: {what}")


class Topology:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.master, self.replica = free_port(), free_port()
        self.sentinels = [free_port() for _ in range(3)]

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.folder / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def _redis(self, name: str, port: int, *extra: str) -> None:
        self._spawn(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--dir", str(self.folder),
                           "--dbfilename", f"{name}.rdb", *extra])
        _wait(lambda: _ask(port, b"PING\r\n").startswith(b"+PONG"), f"{name} up")

    def start(self) -> None:
        self._redis("master", self.master)
        self._redis("replica", self.replica, "--replicaof", "127.0.0.1", str(self.master))
        _wait(lambda: b"master_link_status:up" in _ask(self.replica, b"INFO replication\r\n"),
              "the replica in sync")
        for i, port in enumerate(self.sentinels):
            conf = self.folder / f"sentinel-{i}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.folder}\n"
                            f"sentinel monitor {MASTER} 127.0.0.1 {self.master} 2\n"
                            f"sentinel down-after-milliseconds {MASTER} 1000\n"
                            f"sentinel failover-timeout {MASTER} 5000\n"
                            f"sentinel parallel-syncs {MASTER} 1\n")
            self._spawn(f"sentinel-{i}", ["redis-sentinel", str(conf)])
        for port in self.sentinels:
            _wait(lambda port=port: str(self.replica).encode() in _ask(
                port, f"SENTINEL replicas {MASTER}\r\n".encode()), "sentinels see the replica")
            _wait(lambda port=port: b"num-other-sentinels\r\n$1\r\n2" in _ask(
                port, f"SENTINEL master {MASTER}\r\n".encode()), "sentinels see each other")

    def kill_master(self) -> None:
        self.procs["master"].send_signal(signal.SIGKILL)
        self.procs["master"].wait(5)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[Topology]:
    topology = Topology(tmp_path)
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


def settings(topology: Topology) -> dict[str, Any]:
    return {"store": "redis", "redis": {
        "url": "redis://sentinel-names-the-master/0", "timeout": "500ms",
        "sentinel": {"master_name": MASTER,
                     "nodes": [f"127.0.0.1:{p}" for p in topology.sentinels]}}}


async def test_the_gateway_finds_the_master_through_the_sentinels(
        sentinels, upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/")),
                                       session=settings(sentinels)))
    token = await api_login(client)
    assert (await send(client, "GET", "/x", token=token)).status == 200
    # Written to the master, replicated to the replica.
    keys = await asyncio.to_thread(_ask, sentinels.replica, b"DBSIZE\r\n")
    assert int(keys[1:].strip()) > 0
    await send(client, "POST", "/_gateway/logout", token=token, json={})
    r = await send(client, "GET", "/x", token=token)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")


async def test_a_failover_lets_nobody_through_and_recovers_by_itself(
        sentinels, upstream, make_config, gateway):
    """The drill: traffic with a valid session, a signed-out one and none,
    while the master is killed and a replica promoted."""
    client = await gateway(make_config(str(upstream.make_url("/")),
                                       session=settings(sentinels), upstreams=[
        {"name": "app", "url": str(upstream.make_url("/")), "public": ["/static/"]}]))
    valid = await api_login(client)
    revoked = await api_login(client, "admin", "admin-pw")
    await send(client, "POST", "/_gateway/logout", token=revoked, json={})
    assert (await send(client, "GET", "/x", token=valid)).status == 200
    await asyncio.sleep(0.5)                    # replication is asynchronous: let it catch up
    killed = time.monotonic()
    await asyncio.to_thread(sentinels.kill_master)
    seen: dict[str, list[int]] = {"valid": [], "revoked": [], "none": [], "public": []}
    recovered = None
    while time.monotonic() - killed < 40:
        for name, token, path in (("valid", valid, "/x"), ("revoked", revoked, "/x"),
                                  ("none", None, "/x"), ("public", None, "/static/a.css")):
            seen[name].append((await send(client, "GET", path, token=token)).status)
        if 503 in seen["valid"] and seen["valid"][-1] == 200:
            recovered = time.monotonic() - killed
            break
        await asyncio.sleep(0.05)
    assert recovered is not None, {k: sorted(set(v)) for k, v in seen.items()}
    # Nobody without a valid session got through, at any moment.
    assert set(seen["revoked"]) <= {401, 503} and set(seen["none"]) <= {401, 503}
    assert set(seen["valid"]) <= {200, 503}
    assert set(seen["public"]) == {200}        # public paths never needed the store
    # The promoted replica had the sessions: the valid one goes on, the
    # signed-out one stays out, and new sign-ins and sign-outs work.
    r = await send(client, "GET", "/x", token=revoked)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")
    fresh = await api_login(client)
    await send(client, "POST", "/_gateway/logout", token=fresh, json={})
    assert (await send(client, "GET", "/x", token=fresh)).status == 401
    print(f"failover drill: recovered {recovered:.1f}s after the kill; 503s for the valid "
          f"session: {seen['valid'].count(503)} of {len(seen['valid'])} requests")


async def test_three_instances_share_sessions_revocations_the_cap_and_throttling(
        sentinels, upstream, make_config, gateway):
    """Three gateways on one Sentinel-managed Redis, each with its own cache
    and feed: a session made on one works on the others, a sign-out on one
    is refused by all at once, the per-user cap and login blocks hold across
    them."""
    config = make_config(str(upstream.make_url("/")), session={
        **settings(sentinels), "max_per_user": 2}, trusted_proxies=["127.0.0.1/32"])
    a, b, c = [await gateway(config) for _ in range(3)]
    token = await api_login(a)
    for client in (a, b, c):
        assert (await send(client, "GET", "/x", token=token)).status == 200   # now cached
    await send(client=b, method="POST", target="/_gateway/logout", token=token, json={})
    for client in (a, c):           # each one's cache dropped by the feed within moments
        for _ in range(100):
            r = await send(client, "GET", "/x", token=token)
            if r.status == 401:
                break
            await asyncio.sleep(0.01)
        assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")
    first, second = await api_login(a), await api_login(b)
    third = await api_login(c)      # the cap: the least recently active one ends
    r = await send(b, "GET", "/x", token=first)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")
    assert (await send(a, "GET", "/x", token=second)).status == 200
    assert (await send(a, "GET", "/x", token=third)).status == 200
    for i in range(5):              # five wrong passwords, spread over the three
        r = await send((a, b, c)[i % 3], "POST", "/_gateway/api/login",
                       headers=[("X-Forwarded-For", "203.0.113.9")],
                       json={"username": "alice", "password": "wrong"})
        assert r.status == 401
    for client in (a, b, c):
        r = await send(client, "POST", "/_gateway/api/login",
                       headers=[("X-Forwarded-For", "203.0.113.9")],
                       json={"username": "alice", "password": "alice-pw"})
        assert (r.status, r.json()["error"]) == (429, "RATE_LIMITED")
