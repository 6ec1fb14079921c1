"""Three gateways, two workers each, as ``gateway run`` starts them, sharing
one Redis, a Sentinel-managed Redis or a Redis Cluster: a session made on
one works on all, a sign-out on one is refused by every worker of every
instance within moments (each worker's cache follows the revocation feed),
and the per-user cap and the login throttle hold across them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from authkit import api_login, send
from conftest import base_config, deep_merge, free_port, write_users

GATEWAY = Path(sys.executable).with_name("gateway")
# Long enough that a worker whose feed missed the sign-out would go on
# serving it for the whole test: only the feed can make it refuse in time.
CACHE_TTL = "60s"
# Fresh connections per look at one instance: the kernel spreads them over
# its two workers, so each worker answers some (misses one with p = 2^-15).
LOOKS = 16


def topology_settings(request: pytest.FixtureRequest, topology: str) -> dict[str, Any]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    if topology == "sentinel":
        sentinels = request.getfixturevalue("redis_sentinels")
        redis = {"sentinel": {"master": sentinels.name, "nodes": sentinels.nodes}}
    elif topology == "cluster":
        redis = {"cluster": request.getfixturevalue("redis_cluster").settings()}
    else:
        redis = {"url": request.getfixturevalue("redis_server").url}
    return {"store": "redis", "redis": {**redis, "key_prefix": prefix}}


@pytest.fixture
async def instances(tmp_path: Path, upstream: Any) -> AsyncIterator[Any]:
    """``await instances(session_settings)``: three running gateways."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(session: dict[str, Any]) -> list[Any]:
        out = []
        for name in ("a", "b", "c"):
            folder, port = tmp_path / name, free_port()
            folder.mkdir()
            write_users(folder)
            config = deep_merge(base_config(str(upstream.make_url("/"))), {
                "listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}",
                "workers": 2, "trusted_proxies": ["127.0.0.1/32"],
                "session": {**session, "cache_ttl": CACHE_TTL, "max_per_user": 2}})
            (folder / "config.yaml").write_text(yaml.safe_dump(config))
            with (folder / "gateway.log").open("wb") as log:
                procs.append(await asyncio.create_subprocess_exec(
                    str(GATEWAY), "run", "--config", str(folder / "config.yaml"),
                    stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"}))
            out.append(SimpleNamespace(server=SimpleNamespace(host="127.0.0.1", port=port),
                                       log=folder / "gateway.log", proc=procs[-1]))
        for gw in out:
            await _ready(gw)
        return out

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except asyncio.TimeoutError:
            pass
        try:                # workers left behind by a test that failed half-way
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if proc.returncode is None:
            await proc.wait()


async def _ready(gw: Any, within: float = 30) -> None:
    """Both workers up and reaching the store. (A worker caches sessions only
    once its feed is subscribed, so one that is slower to subscribe reads
    the store instead: never stale either way.)"""
    deadline = time.monotonic() + within
    while True:
        if gw.proc.returncode is not None:
            pytest.fail(f"gateway exited: {gw.log.read_text()[-2000:]}")
        try:
            if all([(await send(gw, "GET", "/_gateway/readyz")).status == 200
                    for _ in range(LOOKS)]):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"gateway not ready: {gw.log.read_text()[-2000:]}")
        await asyncio.sleep(0.2)


async def statuses(gw: Any, token: str) -> list[int]:
    """The answers of LOOKS fresh connections (both workers) for ``token``."""
    replies = await asyncio.gather(*(send(gw, "GET", "/x", token=token) for _ in range(LOOKS)))
    return [r.status for r in replies]


async def refused_everywhere(gateways: list[Any], token: str, within: float = 2.0) -> float:
    """Seconds until every worker of every instance refuses ``token``."""
    started = time.monotonic()
    pending = list(gateways)
    while pending:
        seen = {gw.server.port: await statuses(gw, token) for gw in pending}
        pending = [gw for gw in pending if set(seen[gw.server.port]) != {401}]
        if pending and time.monotonic() - started > within:
            pytest.fail(f"still answered after {within}s: {seen}")
    return time.monotonic() - started


@pytest.mark.parametrize("topology", ["redis", "sentinel", "cluster"])
async def test_three_instances_share_sessions_revocations_the_cap_and_the_throttle(
        request, instances, topology):
    a, b, c = await instances(topology_settings(request, topology))
    token = await api_login(a)
    for gw in (a, b, c):                       # every worker now holds it in its cache
        assert await statuses(gw, token) == [200] * LOOKS

    r = await send(b, "POST", "/_gateway/logout", token=token, json={})
    assert r.status == 303, r                    # signed out, sent to the login page
    took = await refused_everywhere([a, b, c], token)
    r = await send(c, "GET", "/x", token=token)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")

    # The cap (max_per_user: 2) counts the sessions of all instances.
    first = await api_login(a)
    for gw in (a, b, c):
        assert await statuses(gw, first) == [200] * LOOKS
    await api_login(b)
    await api_login(c)                          # the third: the least recently active ends
    await refused_everywhere([a, b, c], first)

    # Five wrong passwords spread over the three block the pair on all three.
    for i in range(5):
        r = await send((a, b, c)[i % 3], "POST", "/_gateway/api/login",
                       headers=[("X-Forwarded-For", "203.0.113.9")],
                       json={"username": "alice", "password": "wrong"})
        assert r.status == 401, r
    for gw in (a, b, c):
        r = await send(gw, "POST", "/_gateway/api/login",
                       headers=[("X-Forwarded-For", "203.0.113.9")],
                       json={"username": "alice", "password": "alice-pw"})
        assert (r.status, r.json()["error"]) == (429, "RATE_LIMITED")
    print(f"{topology}: a sign-out on one instance refused by all six workers "
          f"within {took * 1000:.0f} ms")
