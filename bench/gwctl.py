"""Drive the gateway from outside and inside: config, logins, bulk sessions, revocation.

Bulk sessions go through the gateway's own ``gateway.store`` code (the
source of truth for the Redis key layout): a ``RedisSessionStore`` is bound
to a Redis *pipeline*, so each ``store.create`` only queues its commands
and a million creates cost a few hundred round trips instead of a million.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import multiprocessing
import os
import secrets
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import jwt
import yaml

BENCH_PASSWORD = "bench-password-not-secret"
SECRET = "bench-secret-" + "x" * 40  # >= 32 bytes; loopback-only throwaway runs


@dataclass
class GatewayConfig:
    path: Path
    port: int
    redis_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def password_hash(password: str = BENCH_PASSWORD) -> str:
    """One argon2id hash with the library defaults, as ``gateway hash-password`` makes."""
    from argon2 import PasswordHasher
    return PasswordHasher().hash(password)


def write_config(dir: Path, *, port: int, redis_port: int, upstream_port: int,
                 workers: int, usernames: list[str], hashed: str,
                 session_extra: dict[str, str] | None = None,
                 admins: tuple[str, ...] = ()) -> GatewayConfig:
    """The config of the brief: redis store, one upstream at ``/``, N workers.

    ``session_extra`` adds keys to ``session:`` (e.g. ``cache_ttl: 0s``);
    the users in ``admins`` also get the ``admin`` role (the default ``admin.roles``).
    """
    users = [{"username": u, "password_hash": hashed, "email": f"{u}@example.com",
              "name": u.title(), "roles": ["user", "admin"] if u in admins else ["user"]}
             for u in usernames]
    (dir / "users.yaml").write_text(yaml.safe_dump({"users": users}, sort_keys=False))
    config = {
        "listen": f"127.0.0.1:{port}",
        "public_url": f"http://127.0.0.1:{port}",
        "secret": SECRET,
        "workers": workers,
        "session": {"store": "redis",
                    "redis": {"url": f"redis://127.0.0.1:{redis_port}/0"},
                    "idle_timeout": "30m", "absolute_timeout": "12h", **(session_extra or {})},
        "users": {"file": "users.yaml"},
        "assertion": {"key_file": "assertion-key.pem"},
        "limits": {"max_body_size": "2GiB"},
        "upstreams": [{"name": "app", "url": f"http://127.0.0.1:{upstream_port}",
                       "path_prefix": "/"}],
    }
    path = dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return GatewayConfig(path, port, redis_port)


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request to 127.0.0.1 (http.client: no proxy settings apply)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def login(gw: GatewayConfig, username: str, password: str = BENCH_PASSWORD) -> str:
    """A session cookie (``name=value``) from ``POST /_gateway/api/login``."""
    body = json.dumps({"username": username, "password": password}).encode()
    status, headers, data = request(gw.port, "POST", "/_gateway/api/login",
                                    {"Content-Type": "application/json",
                                     "Accept": "application/json"}, body)
    if status != 200:
        raise RuntimeError(f"login as {username} answered {status}: {data[:200]!r}")
    for value in headers.get_all("Set-Cookie") or []:
        pair = value.split(";", 1)[0]
        if pair.startswith("gateway_session="):
            return pair
    raise RuntimeError(f"login answered 200 without a gateway_session cookie: {headers}")


def session_id(cookie: str) -> tuple[str, str]:
    """``(username, sid)`` named by a gateway cookie (its JWT claims ``sub``, ``sid``)."""
    claims = jwt.decode(cookie.split("=", 1)[1], options={"verify_signature": False})
    return claims["sub"], claims["sid"]


def has_session_cache() -> bool:
    """Whether this gateway version has ``session.cache_ttl`` (a per-worker session cache)."""
    from dataclasses import fields
    from gateway.config import SessionConfig
    return any(f.name == "cache_ttl" for f in fields(SessionConfig))


def _config(gw: GatewayConfig):  # type: ignore[no-untyped-def]
    from gateway.config import load_config
    return load_config(gw.path)


def bulk_create(gw: GatewayConfig, count: int, procs: int | None = None) -> float:
    """Create ``count`` live sessions (4 per synthetic user); returns seconds.

    Each record is made by the store's own ``create()``, run against a client
    that records the Redis call instead of sending it; the recorded calls are
    streamed to ``redis-cli --pipe``. That keeps the key layout, TTLs and
    script the store's own, and loads a million sessions in well under two
    minutes. The work is split over ``procs`` processes; a session made this
    way is then read back through a normal store to prove it is live.
    """
    procs = procs or os.cpu_count() or 1
    per = -(-count // procs)
    per += -per % PER_USER  # whole users per process
    chunks = [(str(gw.path), gw.redis_port, a, min(count, a + per)) for a in range(0, count, per)]
    t0 = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(chunks), mp_context=ctx) as pool:
        list(pool.map(_bulk_chunk, chunks))
    seconds = time.monotonic() - t0
    asyncio.run(_check_bulk(gw))
    return seconds


PER_USER = 4


def _bulk_session(i: int, now: float):  # type: ignore[no-untyped-def]
    from gateway.store import Session
    return Session(id=secrets.token_urlsafe(32), username=f"bulk{i // PER_USER}",
               created_at=now, last_seen_at=now, expires_at=now + 43200,
               idle_timeout=1800, login_ip="127.0.0.1", login_user_agent="bench",
               ip="127.0.0.1", user_agent="bench")


class _Recorder:
    """Stands in for the redis client: scripts and pipelined commands record
    their call as RESP bytes (every reply is taken as success)."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.scripts: dict[str, str] = {}

    def register_script(self, text: str):  # type: ignore[no-untyped-def]
        sha = hashlib.sha1(text.encode()).hexdigest()
        self.scripts[sha] = text

        async def call(keys=(), args=(), client=None):  # type: ignore[no-untyped-def]
            self.out.append(_resp("EVALSHA", sha, len(keys), *keys, *args))
            return []
        return call

    def pipeline(self, transaction: bool = True) -> "_RecordedPipeline":
        return _RecordedPipeline(self.out)


class _RecordedPipeline:
    def __init__(self, out: list[bytes]) -> None:
        self.out = out

    async def __aenter__(self) -> "_RecordedPipeline":
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def set(self, key: str, value: str, px: int) -> None:
        self.out.append(_resp("SET", key, value, "PX", px))

    def zadd(self, key: str, mapping: dict[str, int], gt: bool = False) -> None:
        self.out.append(_resp("ZADD", key, *(["GT"] if gt else []),
                              *[x for m, sc in mapping.items() for x in (sc, m)]))

    def pexpire(self, key: str, ms: int) -> None:
        self.out.append(_resp("PEXPIRE", key, ms))

    def zremrangebyscore(self, key: str, low: object, high: object) -> None:
        self.out.append(_resp("ZREMRANGEBYSCORE", key, low, high))

    async def execute(self) -> list[object]:
        return []


def _resp(*parts: object) -> bytes:
    chunks = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        chunks.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(chunks)


def _bulk_chunk(job: tuple[str, int, int, int]) -> None:
    path, redis_port, start, stop = job
    from gateway.config import load_config
    from gateway.store.redis import RedisSessionStore
    config = load_config(path).session
    rec = _Recorder()
    store = RedisSessionStore(config.redis, client=rec)  # type: ignore[arg-type]
    pipe = subprocess.Popen(["redis-cli", "-h", "127.0.0.1", "-p", str(redis_port), "--pipe"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert pipe.stdin is not None
    try:
        for sha, text in rec.scripts.items():
            pipe.stdin.write(_resp("SCRIPT", "LOAD", text))
        now = time.time()
        loop = asyncio.new_event_loop()
        for a in range(start, stop, 10_000):
            rec.out.clear()
            loop.run_until_complete(_create_many(store, a, min(stop, a + 10_000), now))
            pipe.stdin.write(b"".join(rec.out))
        loop.close()
        pipe.stdin.close()
        out = pipe.stdout.read().decode(errors="replace") if pipe.stdout else ""
        pipe.wait(timeout=300)
    finally:
        if pipe.poll() is None:
            pipe.kill()
    if pipe.returncode != 0 or "errors: 0," not in out:
        raise RuntimeError(f"redis-cli --pipe: {out.strip()}")


async def _create_many(store, start: int, stop: int, now: float) -> None:  # type: ignore[no-untyped-def]
    for i in range(start, stop):
        await store.create(_bulk_session(i, now), 0, 86400)


async def _check_bulk(gw: GatewayConfig) -> None:
    """A session recorded and piped like the bulk ones must read back as live."""
    from gateway.store import create_store
    config = _config(gw).session
    reader = create_store(config)
    try:
        await asyncio.to_thread(_bulk_chunk, (str(gw.path), gw.redis_port, -PER_USER, -PER_USER + 1))
        username = f"bulk{-1}"
        sessions = await reader.user_sessions(username)
        if not sessions or await reader.get(username, sessions[0].id) is None:
            raise RuntimeError("a bulk-created session does not read back through the store")
    finally:
        await reader.close()


async def revoke(gw: GatewayConfig, username: str, sid: str) -> None:
    """End a session through the store API, as the gateway's own paths do."""
    from gateway.store import REVOKED_BY_ADMIN, create_store
    config = _config(gw).session
    store = create_store(config)
    try:
        if not await store.end(username, sid, REVOKED_BY_ADMIN, "bench", time.time(),
                               config.history):
            raise RuntimeError(f"store.end found no session {sid}")
    finally:
        await store.close()


def redis_size(redis_port: int) -> tuple[int, int]:
    """``(keys, bytes of memory used)`` of a Redis."""
    import redis
    client = redis.Redis(host="127.0.0.1", port=redis_port)
    try:
        return int(client.dbsize()), int(client.info("memory")["used_memory"])
    finally:
        client.close()
