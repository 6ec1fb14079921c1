"""Shared fixtures: real servers on loopback, nothing mocked.

- ``redis_server``: a real redis-server on a free port (one per test session);
  ``redis_factory`` starts extra ones a test may stop and restart.
- ``upstream``: a real aiohttp app on loopback that reports what it received.
- ``make_config``: a valid config (dict -> build_config) in a temp folder,
  with users written to a real users file.
- ``gateway``: the gateway app on a real loopback port, with a client.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from argon2 import PasswordHasher

from gateway.app import create_app
from gateway.config import Config, build_config

SECRET = "test-secret-0123456789abcdef-0123456789"
# Cheap argon2id parameters: verification reads them from the hash, so tests stay fast.
_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

USERS = [
    {"username": "alice", "password": "alice-pw", "email": "alice@example.com",
     "name": "Alice", "roles": ["user"]},
    {"username": "Admin", "password": "admin-pw", "email": "admin@example.com",
     "name": "Ada Admin", "roles": ["admin", "user"]},
    {"username": "dave", "password": "dave-pw", "email": "dave@example.com",
     "name": "Dave", "roles": ["user"], "disabled": True},
]


class Clock:
    """An injectable clock: starts at the real time, moves only when told."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- redis ---------------------------------------------------------------------

class RedisServer:
    """A real redis-server process on loopback, stoppable and restartable."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            pytest.fail("redis-server is not installed: run scripts/test, which installs it")
        self.binary, self.folder = binary, folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


class RedisCluster:
    """Three masters and three replicas on loopback, made a cluster by
    ``redis-cli --cluster create``; with ``password``, every node asks for it
    (so the gateway's clients are tested with credentials)."""

    def __init__(self, folder: Path, password: str | None = None) -> None:
        self.folder, self.password = folder, password
        self.ports = [self._free_pair() for _ in range(6)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @staticmethod
    def _free_pair() -> int:
        """A free port whose cluster bus port (10000 above it) is free too."""
        for _ in range(200):
            port = free_port()
            if port + 10000 > 65535:
                continue
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
        raise RuntimeError("no free port pair for a cluster node")

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def settings(self) -> dict[str, Any]:
        """``session.redis.cluster`` for this cluster."""
        return {"nodes": self.nodes, "password": self.password}

    def ask(self, port: int, command: bytes) -> bytes:
        return ask(port, command, self.password)

    def start(self) -> None:
        secret = ["--requirepass", self.password, "--masterauth", self.password] \
            if self.password else []
        for port in self.ports:
            self.procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.folder), "--cluster-enabled", "yes",
                 "--cluster-config-file", f"nodes-{port}.conf",
                 "--cluster-node-timeout", "2000", "--repl-diskless-sync-delay", "0",
                 "--logfile", f"node-{port}.log", *secret],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            self._wait(port, b"PING\r\n", b"+PONG")
        subprocess.run(["redis-cli", *(["-a", self.password, "--no-auth-warning"]
                                       if self.password else []),
                        "--cluster", "create", *self.nodes,
                        "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60)
        for port in self.ports:
            self._wait(port, b"CLUSTER INFO\r\n", b"cluster_state:ok", within=30)
        # Each replica in sync: one that never was cannot take over its master.
        for port in self.ports:
            if b"role:slave" in self.ask(port, b"INFO replication\r\n"):
                self._wait(port, b"INFO replication\r\n", b"master_link_status:up", within=30)

    def _wait(self, port: int, command: bytes, expected: bytes, within: float = 10) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if expected in self.ask(port, command):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"redis node {port}: no {expected!r} within {within:.0f}s")

    def master_of(self, key: str) -> int:
        """The port of the master that serves ``key``'s hash slot."""
        slot = int(self.ask(self.ports[0], f"CLUSTER KEYSLOT {key}\r\n".encode())[1:])
        for line in self.ask(self.ports[0], b"CLUSTER NODES\r\n").decode().splitlines():
            fields = line.split()
            if len(fields) > 8 and "master" in fields[2] and "fail" not in fields[2]:
                for span in fields[8:]:
                    low, _, high = span.partition("-")
                    if int(low) <= slot <= int(high or low):
                        return int(fields[1].split(":")[1].split("@")[0])
        raise RuntimeError(f"no master serves {key!r}")

    def kill(self, port: int) -> None:
        proc = self.procs[self.ports.index(port)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(10)


T = TypeVar("T", "RedisCluster", "RedisSentinels")


def running(topology: T) -> Iterator[T]:
    """A fixture's body for a set of Redis processes: started, handed over,
    stopped (also when starting failed half-way)."""
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


@pytest.fixture
def fresh_redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster of this test's own, for a test that kills a node."""
    yield from running(RedisCluster(tmp_path))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    yield from running(RedisCluster(tmp_path_factory.mktemp("cluster"), password="cluster-pw"))


def ask(port: int, command: bytes, password: str | None = None) -> bytes:
    """One command's reply, read whole when it is a bulk string (INFO,
    CLUSTER NODES); others are read as they come."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        if password:
            s.sendall(f"AUTH {password}\r\n".encode())
            if s.recv(5) != b"+OK\r\n":
                raise OSError(f"redis node {port} refused the password")
        s.sendall(command)
        time.sleep(0.05)
        reply = s.recv(65536)
        if reply.startswith(b"$") and b"\r\n" in reply:
            head = reply.index(b"\r\n")
            size = int(reply[1:head])           # -1: no value
            while size >= 0 and len(reply) < head + 2 + size + 2:
                reply += s.recv(65536)
        return reply


def wait_until(check: Any, what: str, within: float = 20) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"not within {within:.0f}s: {what}")


class RedisSentinels:
    """One master, one replica and three sentinels on loopback."""
    name = "gwmaster"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.master, self.replica = free_port(), free_port()
        self.sentinels = [free_port() for _ in range(3)]

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.sentinels]

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.folder / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def _redis(self, name: str, port: int, *extra: str) -> None:
        self._spawn(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--dir", str(self.folder),
                           "--dbfilename", f"{name}.rdb", *extra])
        wait_until(lambda: ask(port, b"PING\r\n").startswith(b"+PONG"), f"{name} up")

    def start(self) -> None:
        self._redis("master", self.master)
        self._redis("replica", self.replica, "--replicaof", "127.0.0.1", str(self.master))
        wait_until(lambda: b"master_link_status:up" in ask(self.replica, b"INFO replication\r\n"),
              "the replica in sync")
        for i, port in enumerate(self.sentinels):
            conf = self.folder / f"sentinel-{i}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.folder}\n"
                            f"sentinel monitor {self.name} 127.0.0.1 {self.master} 2\n"
                            f"sentinel down-after-milliseconds {self.name} 1000\n"
                            f"sentinel failover-timeout {self.name} 5000\n"
                            f"sentinel parallel-syncs {self.name} 1\n")
            self._spawn(f"sentinel-{i}", ["redis-sentinel", str(conf)])
        for port in self.sentinels:
            wait_until(lambda port=port: str(self.replica).encode() in ask(
                port, f"SENTINEL replicas {self.name}\r\n".encode()), "sentinels see the replica")
            wait_until(lambda port=port: b"num-other-sentinels\r\n$1\r\n2" in ask(
                port, f"SENTINEL master {self.name}\r\n".encode()), "sentinels see each other")

    def kill_master(self) -> None:
        self.procs["master"].send_signal(signal.SIGKILL)
        self.procs["master"].wait(5)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


@pytest.fixture(scope="session")
def shared_redis_sentinels(tmp_path_factory: pytest.TempPathFactory
                           ) -> Iterator[RedisSentinels]:
    """Sentinel for the store suite (the drill kills its own, below)."""
    yield from running(RedisSentinels(tmp_path_factory.mktemp("sentinels")))


@pytest.fixture
def redis_sentinels(tmp_path: Path) -> Iterator[RedisSentinels]:
    yield from running(RedisSentinels(tmp_path))


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``session`` settings for each backend: memory, one Redis, a Redis
    Cluster (a fresh key prefix per test on Redis)."""
    if request.param == "memory":
        return {"store": "memory"}
    prefix = f"t{uuid.uuid4().hex[:12]}"
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return {"store": "redis", "redis": {"url": "redis://cluster", "key_prefix": prefix,
                                            "cluster": cluster.settings()}}
    server = request.getfixturevalue("redis_server")
    return {"store": "redis", "redis": {"url": server.url, "key_prefix": prefix}}


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    started: list[RedisServer] = []

    def make() -> RedisServer:
        server = RedisServer(tmp_path)
        server.start()
        started.append(server)
        return server
    yield make
    for server in started:
        server.stop()


# -- upstream ------------------------------------------------------------------

def upstream_app() -> web.Application:
    """An upstream that reports exactly what reached it."""

    async def echo(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_size": size,
            "body_sha256": digest.hexdigest(),
        })

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", 1024))
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.query.get("length") == "1":
            response.content_length = size
        await response.prepare(request)
        block = b"x" * 65536
        while size > 0:
            await response.write(block[:size])
            size -= len(block)
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", 5)))
        return web.Response(text="late")

    async def special(request: web.Request) -> web.Response:
        headers = [("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly"),
                   ("Location", "http://elsewhere.example/x?y=1"),
                   ("Content-Encoding", "gzip"), ("Connection", "X-Upstream-Hop"),
                   ("X-Upstream-Hop", "secret"), ("Keep-Alive", "timeout=5"),
                   ("X-Kept", "yes")]
        return web.Response(status=302, body=b"\x1f\x8bnot-really-gzip", headers=headers)

    async def response_headers(request: web.Request) -> web.Response:
        """httpbin's /response-headers: every query parameter becomes a response header."""
        return web.Response(text="reflected", headers=list(request.query.items()))

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(protocols=("chat",))
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                if msg.data == "close-please":
                    await sock.close(code=4001, message=b"bye")
                    break
                await sock.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data[::-1])
        return sock

    app = web.Application()
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/special", special)
    app.router.add_get("/response-headers", response_headers)
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def upstream(aiohttp_server: Any) -> Any:
    return await aiohttp_server(upstream_app(), host="127.0.0.1")


def seen_headers(body: dict[str, Any]) -> dict[str, list[str]]:
    """The echo upstream's headers, lowercased name -> every value."""
    out: dict[str, list[str]] = {}
    for k, v in body["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


# -- config and gateway --------------------------------------------------------

def write_users(folder: Path, users: list[dict[str, Any]] = USERS) -> Path:
    entries = []
    for u in users:
        entry = {k: v for k, v in u.items() if k != "password"}
        entry["password_hash"] = _hash(u["password"])
        entries.append(entry)
    path = folder / "users.yaml"
    path.write_text(yaml.safe_dump({"users": entries}))
    return path


_hashes: dict[str, str] = {}


def _hash(password: str) -> str:
    if password not in _hashes:
        _hashes[password] = _HASHER.hash(password)
    return _hashes[password]


def base_config(upstream_url: str = "http://127.0.0.1:9") -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:8080",
        "public_url": "http://127.0.0.1:8080",
        "secret": SECRET,
        "session": {"store": "memory", "idle_timeout": "30m", "absolute_timeout": "12h"},
        "users": {"file": "users.yaml"},
        "upstreams": [{
            "name": "app", "url": upstream_url, "path_prefix": "/",
            "public": ["/static/", "/favicon.ico"],
            "rules": [{"path": "/admin", "roles": ["admin"]}],
        }],
    }


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """``make_config(upstream_url, **overrides)``: a valid Config in tmp_path."""
    write_users(tmp_path)

    def make(upstream_url: str = "http://127.0.0.1:9", **overrides: Any) -> Config:
        data = deep_merge(base_config(upstream_url), overrides)
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
        return build_config(data, base_dir=tmp_path, env={})
    return make


@pytest.fixture
def gateway(aiohttp_client: Any) -> Callable[..., Any]:
    """``await gateway(config)``: a test client for the gateway on a loopback port
    (``clock=Clock()`` to move its time by hand)."""
    async def start(config: Config, store: Any = None, clock: Any = time.time) -> Any:
        return await aiohttp_client(create_app(config, store=store, clock=clock),
                                    server_kwargs={"host": "127.0.0.1"})
    return start


@pytest.fixture
def answering(aiohttp_client: Any) -> Callable[..., Any]:
    """``await answering(config)``: a gateway as ``gateway run`` serves it,
    its answered requests reaching the access log and the metrics."""
    from gateway.logs import AccessLogger

    async def start(config: Config) -> Any:
        server = TestServer(create_app(config), host="127.0.0.1")
        await server.start_server(access_log_class=AccessLogger,
                                  access_log=logging.getLogger("gateway.access"))
        return await aiohttp_client(server)
    return start


async def login(client: Any, username: str = "alice", password: str = "alice-pw",
                remember: bool = False) -> str:
    """Sign in through the JSON API; returns the session cookie value."""
    resp = await client.post("/_gateway/api/login",
                             json={"username": username, "password": password,
                                   "remember": remember})
    assert resp.status == 200, await resp.text()
    return resp.cookies["gateway_session"].value


def as_json(text: str) -> Any:
    return json.loads(text)
