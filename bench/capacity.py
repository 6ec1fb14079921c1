"""``python -m bench.capacity``: the measured inputs of docs/capacity.md.

Three redis-servers on free loopback ports, one per part; part 3 runs beside
parts 1 and 2 (they mostly wait; what they count does not depend on timing).
About 1.5 minutes.

1. **Redis operations**, against a real gateway (``gateway run``, 1 worker,
   the bench config: every ``session`` default but the Redis store; an
   nginx upstream). ``INFO commandstats`` before and after each step
   counts every command Redis ran, a script's own calls included; MONITOR,
   read throughout and split at the same points (an ``ECHO`` in one
   ``MULTI`` with the ``INFO``), tells the commands the gateway sent from
   those its scripts ran, and the revocation feed's pings from the rest.
   The scripts are loaded first, as they stay loaded in a running Redis.
   Steps: idle (the background), first sign-ins, each session's first
   request (a cache miss), 10 more each (cached), sign-ins of users who
   have a live session, a request once ``touch_interval`` has passed
   (miss + touch), sign-outs, sign-ins of users with an ended session,
   one active-sessions sample (``audit/stats.py``, every 5 minutes).
2. **Rate limits**: a second gateway with ``bench/configs/rate-limit.yaml``
   (one rule every request falls under): the sync's script calls while a
   few users send requests, and the bytes of a window.
3. **Memory and Redis CPU**: ``--sessions`` sign-ins (10,000 over a
   quarter as many users, 1-5 each, from 4 browsers, an address each)
   through the gateway's own ``SessionService.sign_in`` with the password
   check stubbed (argon2 is the gateway's CPU, not Redis's), the audit
   trail and its counters written as a worker writes them; then a quarter
   signed out. ``used_memory`` before and after, ``MEMORY USAGE`` of every
   key by kind and the TTL each kind gets, the records again as listpacks;
   Redis CPU (``INFO cpu``) and commands per sign-in, sign-out, session
   read and touch; and the bytes a worker holds per session it caches.

Prints Markdown tables (progress on stderr).

    .venv/bin/python -m bench.capacity
    .venv/bin/python -m bench.capacity --sessions 20000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import logging
import math
import multiprocessing
import os
import re
import socket
import sys
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import redis
import uvloop
import yaml

from . import gwctl
from .probe import ForeignCpu, wait_for
from .procs import BENCH_DIR, Stack, check_tools
from .report import machine

STEP_USERS = 10          # sessions signed in per step through the gateway
HITS = 10                # cached requests per session
IDLE = 10.0              # seconds of the background alone
RATE_USERS = 5
RATE_SECONDS = 3.0
PER_USER = (1, 2, 3, 4, 5, 5, 5, 5, 5, 5)   # sessions of each 10 users: 4 on average
CONCURRENCY = 64         # store calls in flight in the memory part
CHUNK = 2_000            # sign-ins between audit flushes (its queue holds 10,000)
CACHED = 5_000           # sessions cached to weigh a worker's copy
LISTPACK = 500           # records copied to weigh them as listpacks
LISTPACK_VALUE = 1024    # covers a User-Agent (cut at 512 characters)
MAX_SESSIONS = 2 * 65536  # one address each, in 198.18.0.0/15
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
)
# What the watching client itself sends (its MULTI on a connection of its
# own); the gateway never does.
CONTROL = {"ECHO", "INFO", "MULTI", "EXEC", "CLIENT LIST", "XLEN"}
# How the entries of each kind of collection are counted.
ENTRIES = {"all": "zcard", "ip": "zcard", "{user}:idx": "zcard", "{user}:ended": "zcard",
           "{user}:alerts": "zcard", "{user}:x": "scard", "audit": "xlen"}
_MONITOR_LINE = re.compile(rb'^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]*)"(?: "((?:[^"\\]|\\.)*)")?')


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def scripts() -> dict[str, tuple[str, str]]:
    """EVALSHA's digest -> (name, text) of each script in gateway/store/redis.py."""
    from gateway.store import redis as module
    return {hashlib.sha1(text.encode()).hexdigest(): (name.strip("_").lower(), text)
            for name, text in vars(module).items()
            if name.isupper() and isinstance(text, str) and "redis.call" in text}


# -- part 1 and 2: Redis operations of a running gateway ----------------------------

@dataclass
class Step:
    name: str
    count: int                 # operations the step made
    seconds: float
    stats: Counter[str]        # INFO commandstats calls (the watcher's own left out)
    sent: Counter[str]         # MONITOR: top-level commands (EVALSHA by script)
    scripted: Counter[str]     # MONITOR: commands the scripts ran
    feed: Counter[str]         # MONITOR: the revocation feed's connection

    def per(self, counter: Counter[str]) -> float:
        return sum(counter.values()) / self.count

    @property
    def all(self) -> float:
        """Every command Redis ran for the step, per operation (commandstats),
        the feed's pings left out (they are the background's)."""
        return (sum(self.stats.values()) - sum(self.feed.values())) / self.count


class Watch:
    """One Redis, watched: INFO commandstats at each mark and MONITOR in a
    thread throughout, split at the same marks (an ECHO in one MULTI with
    the INFO, so nothing runs between the two)."""

    def __init__(self, port: int) -> None:
        self.client = redis.Redis(host="127.0.0.1", port=port, single_connection_client=True)
        self.me = self.client.client_info()["addr"]
        self.scripts = {sha: name for sha, (name, _) in scripts().items()}
        self._lines: list[bytes] = []
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.sendall(b"MONITOR\r\n")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self._marks = 0
        self._seen = 0
        self._feed: set[str] = set()

    def _read(self) -> None:
        try:
            with self._sock.makefile("rb") as f:
                for line in f:
                    self._lines.append(line)
        except OSError:
            pass

    def close(self) -> None:
        self._sock.close()
        self._thread.join(timeout=5)
        self.client.close()

    def _mark(self) -> tuple[bytes, Counter[str]]:
        tag = f"capacity:{self._marks}"
        self._marks += 1
        # The feed: whichever connection is subscribed (pub/sub flag P).
        self._feed |= {c["addr"] for c in self.client.client_list() if "P" in c["flags"]}
        pipe = self.client.pipeline(transaction=True)
        pipe.echo(tag)
        pipe.info("commandstats")
        _, info = pipe.execute()
        calls = Counter({k.removeprefix("cmdstat_").upper().replace("|", " "): v["calls"]
                         for k, v in info.items()})
        return f'"ECHO" "{tag}"'.encode(), calls

    def step(self, name: str, count: int, run: Callable[[], object]) -> Step:
        start, before = self._mark()
        t0 = time.monotonic()
        run()
        seconds = time.monotonic() - t0
        end, after = self._mark()
        if not wait_for(lambda: any(end in line for line in self._lines[self._seen:]), 10):
            raise RuntimeError(f"{name}: MONITOR never showed the step's end")
        lines = self._lines[self._seen:]
        first = next(i for i, line in enumerate(lines) if start in line)
        last = next(i for i, line in enumerate(lines) if end in line)
        self._seen += last
        stats = Counter({k: n - before.get(k, 0) for k, n in after.items()
                         if k not in CONTROL and n > before.get(k, 0)})
        sent: Counter[str] = Counter()
        scripted: Counter[str] = Counter()
        feed: Counter[str] = Counter()
        for line in lines[first + 1:last]:
            m = _MONITOR_LINE.match(line)
            if not m or m.group(1).decode() == self.me:
                continue
            client, command = m.group(1).decode(), m.group(2).decode().upper()
            arg = (m.group(3) or b"").decode(errors="replace")
            if command in CONTROL or f"{command} {arg.upper()}" in CONTROL:
                continue
            if client == "lua":
                scripted[command] += 1
            elif client in self._feed:
                feed[command] += 1
            elif command == "EVALSHA":
                sent[f"EVALSHA {self.scripts.get(arg, arg[:8])}"] += 1
            elif command == "CLIENT":
                sent[f"CLIENT {arg.upper()}"] += 1
            else:
                sent[command] += 1
        got = Step(name, count, seconds, stats, sent, scripted, feed)
        if sum(stats.values()) != sum(sent.values()) + sum(scripted.values()) + sum(feed.values()):
            log(f"  note: {name}: commandstats counted {sum(stats.values())} commands, "
                f"MONITOR {sum(sent.values()) + sum(scripted.values()) + sum(feed.values())}")
        log(f"  {name}: {count} in {seconds:.1f} s, {got.all:.2f} commands each")
        return got


def start_gateway(stack: Stack, name: str, rds: Any, upstream_port: int, hashed: str,
                  users: list[str], extra: dict[str, Any] | None = None) -> gwctl.GatewayConfig:
    """``gateway run`` with the bench config (1 worker), ``extra``'s top-level keys added."""
    d, port = stack.dir(name), stack.ports.take()
    cfg = gwctl.write_config(d, port=port, redis_port=rds.port, upstream_port=upstream_port,
                             workers=1, usernames=users, hashed=hashed)
    if extra:
        cfg.path.write_text(yaml.safe_dump({**yaml.safe_load(cfg.path.read_text()), **extra},
                                           sort_keys=False))
    stack.gateway(name, cfg.path, port)
    return cfg


def get(cfg: gwctl.GatewayConfig, cookie: str) -> None:
    status, _, body = gwctl.request(cfg.port, "GET", "/", {"Cookie": cookie,
                                                           "Accept": "application/json"})
    if status != 200:
        raise RuntimeError(f"GET / answered {status}: {body[:200]!r}")


def sign_out(cfg: gwctl.GatewayConfig, cookie: str) -> None:
    status, _, body = gwctl.request(cfg.port, "POST", "/_gateway/logout",
                                    {"Cookie": cookie, "Content-Type": "application/json"}, b"{}")
    if status != 303:
        raise RuntimeError(f"POST /_gateway/logout answered {status}: {body[:200]!r}")


def operations(stack: Stack, upstream_port: int, hashed: str) -> dict[str, Any]:
    """Part 1: every step against one gateway, in an order that makes each
    request what its step says (the session cache and touch_interval are
    per worker; the sign-in does not cache the session)."""
    from gateway.audit.stats import sample_active
    from gateway.config import load_config
    from gateway.store import create_store

    users = [f"cap{i}" for i in range(STEP_USERS)]
    rds = stack.redis("redis-ops")
    cfg = start_gateway(stack, "gw-ops", rds, upstream_port, hashed, users)
    config = load_config(cfg.path)
    s = config.session
    audit_key = f"{s.redis.key_prefix}:audit"
    watch = Watch(rds.port)
    for _, text in scripts().values():  # loaded once per Redis lifetime: no sign-in's cost
        watch.client.script_load(text)
    steps: list[Step] = []
    signed: dict[str, float] = {}
    try:
        time.sleep(2.0)     # the start-up writes (config and users versions) done
        steps.append(watch.step("idle", 1, lambda: time.sleep(IDLE)))

        def signing_in(cookies: list[str]) -> Callable[[], None]:
            def run() -> None:
                before = watch.client.xlen(audit_key)
                with ThreadPoolExecutor(4) as pool:
                    cookies.extend(pool.map(lambda u: gwctl.login(cfg, u), users))
                signed.update({c: time.time() for c in cookies})
                # The audit trail writes in the background: wait for its records.
                if not wait_for(lambda: watch.client.xlen(audit_key) >= before + len(users), 10):
                    raise RuntimeError("the sign-ins' audit records never arrived")
            return run

        first: list[str] = []
        steps.append(watch.step("sign-in, the user's first session", len(users),
                                signing_in(first)))
        steps.append(watch.step("request, cache miss (the session's first on the worker)",
                                len(first), lambda: [get(cfg, c) for c in first]))
        steps.append(watch.step("request, cached session", len(first) * HITS,
                                lambda: [get(cfg, c) for _ in range(HITS) for c in first]))
        cached_at = time.time()
        steps.append(watch.step("sign-in, the user has a live session", len(users),
                                signing_in([])))
        due = max(max(signed[c] for c in first) + min(s.touch_interval, s.idle_timeout / 10),
                  cached_at + s.cache_ttl) + 0.5
        time.sleep(max(0.0, due - time.time()))
        steps.append(watch.step("request after touch_interval (miss + touch)", len(first),
                                lambda: [get(cfg, c) for c in first]))

        def signing_out() -> None:
            before = watch.client.xlen(audit_key)
            for c in first:
                sign_out(cfg, c)
            if not wait_for(lambda: watch.client.xlen(audit_key) >= before + len(first), 10):
                raise RuntimeError("the sign-outs' audit records never arrived")
        steps.append(watch.step("sign-out (cached session)", len(first), signing_out))
        steps.append(watch.step("sign-in, the user has a live and an ended session",
                                len(users), signing_in([])))

        store = create_store(s)
        loop = uvloop.new_event_loop()
        loop.run_until_complete(store.ping())       # its connection, before the step
        steps.append(watch.step("active-sessions sample (per worker, every 5 min)", 1,
                                lambda: loop.run_until_complete(
                                    sample_active(store, s.idle_timeout, time.time()))))
        loop.run_until_complete(store.close())
        loop.close()
    finally:
        watch.close()
    return {"steps": steps, "config": s}


def rate_limits(stack: Stack, upstream_port: int, hashed: str) -> dict[str, Any]:
    """Part 2: a gateway with one rule every request falls under."""
    from gateway.config import load_config

    users = [f"cap{i}" for i in range(RATE_USERS)]
    rule = yaml.safe_load((BENCH_DIR / "configs" / "rate-limit.yaml").read_text())
    rds = stack.redis("redis-rate")
    cfg = start_gateway(stack, "gw-rate", rds, upstream_port, hashed, users, rule)
    cookies = [gwctl.login(cfg, u) for u in users]
    for c in cookies:
        get(cfg, c)         # each session cached before the step
    watch = Watch(rds.port)
    for _, text in scripts().values():
        watch.client.script_load(text)
    requests = 0

    def traffic() -> None:
        nonlocal requests
        end = time.monotonic() + RATE_SECONDS
        while time.monotonic() < end:
            for c in cookies:
                get(cfg, c)
                requests += 1
        time.sleep(0.6)     # the last counts' sync
    try:
        step = watch.step("rate-limit sync (the whole step)", 1, traffic)
        prefix = load_config(cfg.path).session.redis.key_prefix
        keys = list(watch.client.scan_iter(match=f"{prefix}:rl:*", count=1000))
        sizes = [watch.client.memory_usage(k, samples=0) or 0 for k in keys]
    finally:
        watch.close()
    return {"step": step, "requests": requests, "keys": len(keys),
            "bytes_per_key": sum(sizes) / max(1, len(sizes))}


# -- part 3: memory and Redis CPU ------------------------------------------------

class Trusted:
    """Stands in for the users file's password check: every user exists and
    every password is right. argon2 is the gateway's CPU (BENCHMARKS.md,
    scenario 4), not Redis's, and 10,000 checks would take minutes."""

    typical_check = 0.0

    async def check(self, username: str, password: str) -> tuple[Any, str]:
        from gateway.auth.users import User
        return User(username, "-", roles=("user",)), "ok"


def address(i: int) -> str:
    """An address of its own for session ``i``, in 198.18.0.0/15 (RFC 2544)."""
    return f"198.{18 + i // 65536}.{i // 256 % 256}.{i % 256}"


def plan(sessions: int) -> list[tuple[int, int]]:
    """(user, k): the k-th session of each user, in waves of distinct users, so
    that a user's earlier sessions exist when the next signs in."""
    users = math.ceil(sessions * len(PER_USER) / sum(PER_USER))
    while sum(PER_USER[u % len(PER_USER)] for u in range(users)) < sessions:
        users += 1
    return [(u, k) for k in range(max(PER_USER)) for u in range(users)
            if k < PER_USER[u % len(PER_USER)]][:sessions]


def kind_of(key: str, prefix: str) -> str:
    """A key's kind, its variable parts dropped: ``{user}:s``, ``o``, ``th:k:pair``..."""
    rest = key[len(prefix) + 1:]
    if rest.startswith("{stats}:"):
        return "{stats}:" + rest.split(":")[1]
    if rest.startswith("{"):
        return "{user}:" + rest.split("}:", 1)[1].split(":")[0]
    head, _, tail = rest.partition(":")
    if head == "th" and tail.startswith("k:"):
        return "th:k:" + tail[2:].split(":")[0]
    return head


class Redis:
    """The memory part's view of its Redis: memory, CPU, commands, keys."""

    def __init__(self, port: int) -> None:
        self.client = redis.Redis(host="127.0.0.1", port=port)

    def snapshot(self) -> dict[str, Any]:
        mem = self.client.info("memory")
        cpu = self.client.info("cpu")
        stats = {k.removeprefix("cmdstat_"): (v["calls"], v["usec"])
                 for k, v in self.client.info("commandstats").items() if k != "cmdstat_info"}
        return {"used": mem["used_memory"], "cpu": cpu["used_cpu_user"] + cpu["used_cpu_sys"],
                "commands": sum(calls for calls, _ in stats.values()), "stats": stats}

    def as_listpack(self, keys: list[bytes]) -> dict[str, Any]:
        """These hashes' mean MEMORY USAGE as stored, and as copies made with
        ``hash-max-listpack-value`` at LISTPACK_VALUE, which keeps a hash whose
        values are all at most that long in one compact listpack (Redis'
        default, 64 bytes, is shorter than a User-Agent). The setting is put
        back and the copies deleted."""
        setting = "hash-max-listpack-value"
        default = self.client.config_get(setting)[setting]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
            pipe.memory_usage(key, samples=0)
        got = pipe.execute()
        copies = [b"capacity:copy:%d" % i for i in range(len(keys))]
        self.client.config_set(setting, LISTPACK_VALUE)
        try:
            pipe = self.client.pipeline(transaction=False)
            for copy, fields in zip(copies, got[::2]):
                pipe.hset(copy, mapping=fields)
                pipe.memory_usage(copy, samples=0)
            copied = pipe.execute()[1::2]
            encodings = (self.client.object("encoding", keys[0]),
                         self.client.object("encoding", copies[0]))
            self.client.delete(*copies)
        finally:
            self.client.config_set(setting, default)
        return {"stored": sum(got[1::2]) / len(keys), "listpack": sum(copied) / len(keys),
                "encodings": [e.decode() if isinstance(e, bytes) else e for e in encodings],
                "default": default}

    def keys(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Per kind: keys, bytes (MEMORY USAGE, every element weighed), the
        entries of its sorted sets, sets and streams, and one key's TTL."""
        kinds: dict[str, dict[str, Any]] = {}
        batch: list[bytes] = []

        def weigh() -> None:
            names = [kind_of(key.decode(), prefix) for key in batch]
            pipe = self.client.pipeline(transaction=False)
            for key, kind in zip(batch, names):
                pipe.memory_usage(key, samples=0)
                if kind in ENTRIES:
                    getattr(pipe, ENTRIES[kind])(key)
            answers = iter(pipe.execute())
            for key, kind in zip(batch, names):
                row = kinds.setdefault(kind, {"keys": 0, "bytes": 0, "entries": 0,
                                              "ttl": self.client.pttl(key) / 1000})
                row["keys"] += 1
                row["bytes"] += next(answers) or 0
                row["entries"] += next(answers) if kind in ENTRIES else 0
            batch.clear()
        for key in self.client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                weigh()
        if batch:
            weigh()
        return kinds


async def bounded(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls CONCURRENCY at a time, as many workers' requests would."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(call: Callable[[], Any]) -> Any:
        async with gate:
            return await call()
    return await asyncio.gather(*(one(c) for c in calls))


class Gateway:
    """What a worker signs in and out with: its store, SessionService and
    audit trail, built from the config as the app builds them."""

    def __init__(self, path: str) -> None:
        from gateway.audit.trail import AuditTrail
        from gateway.auth.sessions import SessionService
        from gateway.config import load_config
        from gateway.store import create_store
        self.config = load_config(path)
        self.store = create_store(self.config.session)
        self.sessions = SessionService(self.config, self.store, Trusted(),  # type: ignore[arg-type]
                                       None)
        self.trail = AuditTrail(self.config, self.store, to_stdout=False)
        self.sessions.events.subscribe(self.trail.record)


def sign_in_share(job: tuple[str, list[tuple[int, int, int]]]) -> list[tuple[int, Any]]:
    """One process's share of the sign-ins (whole users, in wave order):
    ``(i, session)`` of each ``(i, user, k)``. redis-py costs about 5 ms of
    Python a sign-in, so the share is split over the cores."""
    logging.getLogger("gateway").setLevel(logging.ERROR)    # the new-device lines
    return uvloop.run(_sign_in_share(*job))


async def _sign_in_share(path: str, todo: list[tuple[int, int, int]]) -> list[tuple[int, Any]]:
    gw = Gateway(path)

    async def sign_in(i: int, u: int, k: int) -> tuple[int, Any]:
        got = await gw.sessions.sign_in(f"user{u}", "-", remember=False, ip=address(i),
                                        user_agent=AGENTS[(u + k // 2) % len(AGENTS)])
        assert got is not None
        return i, got[1]
    done: list[tuple[int, Any]] = []
    for a in range(0, len(todo), CHUNK):
        done += await bounded([lambda job=job: sign_in(*job) for job in todo[a:a + CHUNK]])
        await gw.trail.flush()
    await gw.store.close()
    return done


async def memory(cfg: gwctl.GatewayConfig, port: int, sessions: int) -> dict[str, Any]:
    """Part 3. Sign-ins run through ``SessionService.sign_in`` (throttle,
    lock and second-factor reads, create, indexes, the new-device check and
    its alert), events through the audit trail as a worker writes them."""
    from gateway.store import LOGOUT, Session

    gw = Gateway(str(cfg.path))
    store = gw.store
    prefix = gw.config.session.redis.key_prefix
    todo = plan(sessions)
    r = Redis(port)
    for _, text in scripts().values():       # the script cache is not the sessions'
        r.client.script_load(text)
    await bounded([store.ping] * CONCURRENCY)  # the connections, opened beforehand
    snaps = {"empty": r.snapshot()}

    procs = os.cpu_count() or 1
    shares = [(str(cfg.path), [(i, u, k) for i, (u, k) in enumerate(todo) if u % procs == p])
              for p in range(procs)]
    t0 = time.monotonic()
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
        live = [s for _, s in sorted(x for share in pool.map(sign_in_share, shares)
                                     for x in share)]
    log(f"  {len(live):,} sign-ins in {time.monotonic() - t0:.0f} s ({procs} processes)")
    snaps["signed in"] = r.snapshot()

    ended = live[::4]
    t0 = time.monotonic()
    await bounded([lambda s=s: gw.sessions.end(s.username, s.id, LOGOUT, s.username)
                   for s in ended])
    await gw.trail.flush()
    log(f"  {len(ended):,} sign-outs in {time.monotonic() - t0:.0f} s")
    snaps["signed out"] = r.snapshot()
    live = [s for i, s in enumerate(live) if i % 4]

    t0 = time.monotonic()
    kinds = r.keys(prefix)
    log(f"  {sum(k['keys'] for k in kinds.values()):,} keys weighed in "
        f"{time.monotonic() - t0:.0f} s")
    compact = {"{user}:s": r.as_listpack([store.session_key(s.username, s.id).encode()
                                          for s in live[:LISTPACK]]),
               "{user}:e": r.as_listpack([store.ended_key(s.username, s.id).encode()
                                          for s in ended[:LISTPACK]])}
    snaps["weighed"] = r.snapshot()
    await bounded([lambda s=s: store.get(s.username, s.id) for s in live])
    snaps["read"] = r.snapshot()
    now = time.time()

    def touching(s: Session) -> Callable[[], Any]:
        changes = {"last_seen_at": now, "ip": s.ip, "user_agent": s.user_agent}
        return lambda: store.touch(replace(s, **changes), changes)
    await bounded([touching(s) for s in live])
    snaps["touched"] = r.snapshot()

    # Records as a worker reads them, to weigh its copy (worker_copy).
    pipe = r.client.pipeline(transaction=False)
    for s in live[:CACHED]:
        pipe.hgetall(store.session_key(s.username, s.id))
    sample = pipe.execute()
    await store.close()
    r.client.close()
    return {"sessions": len(todo), "users": len({u for u, _ in todo}), "ended": len(ended),
            "live": len(live), "snaps": snaps, "kinds": kinds, "compact": compact,
            "sample": sample, "config": gw.config}


def worker_copy(raws: list[dict[bytes, bytes]], config: Any) -> dict[str, float]:
    """Bytes a worker holds per session it has seen: the cached record and the
    verified cookie (auth/cache.py, auth/tokens.py), weighed with tracemalloc
    (alone: tracemalloc counts every thread's allocations); and the CPU of
    verifying a cookie it does not remember."""
    from gateway.auth.cache import SessionCache
    from gateway.auth.tokens import Tokens
    from gateway.store import Session
    cache, tokens = SessionCache(config.session.cache_ttl), Tokens(config.secret)
    cache.start()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    sessions = []
    for raw in raws:
        session = Session.from_fields(raw)
        assert session is not None
        cache.put(session, cache.generation)
        sessions.append(session)
    cached = tracemalloc.get_traced_memory()[0]
    for session in sessions:
        tokens.read(tokens.issue(session))
    gc.collect()
    remembered = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    # A cookie the worker does not remember (its cache holds 10,000) is verified.
    fresh = Tokens(config.secret)
    cookies = [fresh.issue(session) for session in sessions]
    t0 = time.process_time()
    for cookie in cookies:
        fresh.read(cookie)
    verify = (time.process_time() - t0) / len(cookies)
    return {"cache_bytes": (cached - base) / len(raws),
            "token_bytes": (remembered - cached) / len(raws), "verify_us": verify * 1e6}


# -- the report ------------------------------------------------------------------

def _top(counter: Counter[str], per: int) -> str:
    return ", ".join(f"{k} {n / per:.2g}" for k, n in counter.most_common()) or "none"


def report(ops: dict[str, Any], rate: dict[str, Any], mem: dict[str, Any],
           noise: float, wall: float) -> None:
    m = machine()
    s = ops["config"]
    print(f"\n**Capacity inputs** ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"gateway {m['gateway']}, Redis {m['redis']}, redis-py {m['redis-py']}; "
          f"{m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}, kernel {m['kernel']}; "
          f"{wall:.0f} s; other processes and hypervisor steal took {noise:.0%} of the "
          "CPU meanwhile)\n")
    print(f"Session settings: touch_interval {s.touch_interval:g} s, cache_ttl "
          f"{s.cache_ttl:g} s, idle_timeout {s.idle_timeout:g} s, absolute_timeout "
          f"{s.absolute_timeout:g} s, history {s.history / 86400:g} d, max_per_user "
          f"{s.max_per_user}; audit.retention {mem['config'].audit.retention / 86400:g} d.\n")

    steps: list[Step] = ops["steps"]
    idle = steps[0]
    print(f"**Redis commands per operation** (gateway, 1 worker; INFO commandstats and "
          f"MONITOR; {STEP_USERS} of each)\n")
    print("| operation | n | commands sent (EVALSHA = 1) | run inside scripts | all "
          "(commandstats) | sent | inside scripts |\n|---|---:|---:|---:|---:|---|---|")
    for st in steps[1:]:
        print(f"| {st.name} | {st.count} | {st.per(st.sent):.2f} | {st.per(st.scripted):.2f} "
              f"| {st.all:.2f} | {_top(st.sent, st.count)} | {_top(st.scripted, st.count)} |")
    rs = rate["step"]
    rate_calls = rs.sent.get("EVALSHA rate", 0)
    print(f"\n**Background, per worker** (idle {idle.seconds:.1f} s)\n")
    print("| what | per second |\n|---|---:|")
    print(f"| revocation feed pings | {sum(idle.feed.values()) / idle.seconds:.2f} |")
    print(f"| anything else while idle | {sum(idle.stats.values()) - sum(idle.feed.values()):d} "
          f"commands in {idle.seconds:.1f} s |")
    print(f"| rate-limit sync, one rule (per user), {RATE_USERS} users sending "
          f"{rate['requests']} requests in {RATE_SECONDS:g} s, then the last sync: "
          f"{rate_calls} `EVALSHA rate` in {rs.seconds:.1f} s | "
          f"{rate_calls / rs.seconds / RATE_USERS:.2f} per key with requests |")
    print(f"\nRate-limit windows in Redis: {rate['keys']} keys, "
          f"{rate['bytes_per_key']:.0f} B each (one field per worker).")

    sn = mem["snaps"]
    n, ended, live = mem["sessions"], mem["ended"], mem["live"]

    def delta(a: str, b: str, key: str) -> float:
        return sn[b][key] - sn[a][key]
    print(f"\n**Memory** ({n:,} sign-ins by {mem['users']:,} users through "
          f"SessionService.sign_in, then {ended:,} signed out)\n")
    print("| measure | bytes |\n|---|---:|")
    print(f"| used_memory after the sign-ins, per sign-in (everything it wrote) | "
          f"{delta('empty', 'signed in', 'used') / n:,.0f} |")
    print(f"| used_memory change per sign-out (live keys freed, ended record and event added) | "
          f"{delta('signed in', 'signed out', 'used') / ended:,.0f} |")
    print("\n| key kind | keys | entries | bytes | bytes per key | bytes per entry |"
          " TTL of one |\n|---|---:|---:|---:|---:|---:|---|")
    for kind, row in sorted(mem["kinds"].items(), key=lambda kv: -kv[1]["bytes"]):
        shown = "none" if row["ttl"] < 0 else _duration(row["ttl"])
        entries = f"{row['entries']:,.0f}" if row["entries"] else ""
        per_entry = f"{row['bytes'] / row['entries']:,.0f}" if row["entries"] else ""
        print(f"| {kind} | {row['keys']:,.0f} | {entries} | {row['bytes']:,.0f} | "
              f"{row['bytes'] / row['keys']:,.0f} | {per_entry} | {shown} |")
    weighed = sum(row["bytes"] for row in mem["kinds"].values())
    grew = sn["signed out"]["used"] - sn["empty"]["used"]
    keys = sum(row["keys"] for row in mem["kinds"].values())
    print(f"\nLive sessions at the end: {live:,}; ended: {ended:,}. MEMORY USAGE sums to "
          f"{weighed:,.0f} B of the {grew:,.0f} B used_memory grew by; the rest, "
          f"{(grew - weighed) / keys:,.0f} B per key, is Redis' own tables of keys and expiries.")
    print(f"\nWith `hash-max-listpack-value {LISTPACK_VALUE}` ({LISTPACK} copies of each):\n")
    print("| record | as stored | with the setting |\n|---|---:|---:|")
    for kind, c in mem["compact"].items():
        print(f"| {kind} | {c['stored']:,.0f} B ({c['encodings'][0]}, the default "
              f"{c['default']}) | {c['listpack']:,.0f} B ({c['encodings'][1]}) |")
    print("\n**Redis CPU and commands per store operation** (the memory part, "
          f"{CONCURRENCY} calls in flight)\n")
    print("| operation | n | Redis CPU us each | commands each (commandstats) |\n"
          "|---|---:|---:|---:|")
    for name, a, b, count in (("sign-in (SessionService.sign_in, audit and counters)",
                               "empty", "signed in", n),
                              ("sign-out (SessionService.end, audit and counters)",
                               "signed in", "signed out", ended),
                              ("session read (a cache miss: store.get)", "weighed", "read",
                               live),
                              ("touch (store.touch)", "read", "touched", live)):
        print(f"| {name} | {count:,} | {delta(a, b, 'cpu') * 1e6 / count:,.1f} | "
              f"{delta(a, b, 'commands') / count:.2f} |")
    a, b = sn["read"]["stats"], sn["touched"]["stats"]
    spent = {name: (calls - a.get(name, (0, 0))[0], usec - a.get(name, (0, 0))[1])
             for name, (calls, usec) in b.items() if calls > a.get(name, (0, 0))[0]}
    print("\nRedis time per command during the touches (commandstats usec; the commands a "
          "script runs are inside its EVALSHA's time and listed again on their own):\n")
    print("| command | calls per touch | us per call |\n|---|---:|---:|")
    for name, (calls, usec) in sorted(spent.items(), key=lambda kv: -kv[1][1]):
        print(f"| {name.upper()} | {calls / live:.2f} | {usec / calls:.1f} |")
    print(f"\nA worker's copy of a session it has seen: {mem['cache_bytes']:,.0f} B in the "
          f"session cache, {mem['token_bytes']:,.0f} B for the verified cookie "
          f"(tracemalloc, {CACHED:,} sessions). Verifying a cookie it does not remember: "
          f"{mem['verify_us']:.0f} us of CPU.")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=10_000,
                   help="sign-ins of the memory part (4 per user on average)")
    args = p.parse_args(argv)
    if not 0 < args.sessions <= MAX_SESSIONS:
        p.error(f"--sessions: 1 to {MAX_SESSIONS:,}")
    check_tools()
    started = time.monotonic()
    stack = Stack()
    try:
        upstream = stack.upstream(4096)
        hashed = gwctl.password_hash()
        rds = stack.redis("redis-memory")
        cfg = gwctl.write_config(stack.dir("memory"), port=stack.ports.take(),
                                 redis_port=rds.port, upstream_port=1, workers=1,
                                 usernames=[], hashed=hashed)
        # Part 3 is CPU (its sign-ins' Python), parts 1 and 2 mostly wait
        # (idle, touch_interval): they run side by side, on separate Redis
        # servers; the operations counted do not depend on timing.
        with ForeignCpu() as gauge, ThreadPoolExecutor(1) as beside:
            log("memory: started")
            filling = beside.submit(uvloop.run, memory(cfg, rds.port, args.sessions))
            log("operations")
            ops = operations(stack, upstream.port, hashed)
            log("rate limits")
            rate = rate_limits(stack, upstream.port, hashed)
            mem = filling.result()
        mem.update(worker_copy(mem.pop("sample"), mem["config"]))
    finally:
        stack.close()
    report(ops, rate, mem, gauge.busy, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
