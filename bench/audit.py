"""``python -m bench.audit``: the audit stream's append latency under the login load.

The targets: ``store.audit_append`` p99 under 2 ms while scenario 4's
logins run, and at most 3 pipelined Redis operations per sign-in for the
audit records and analytics counters. A redis-server and a gateway are
started as scenario 4 starts them (same config, users, worker count), then:

- a probe, an asyncio loop (uvloop) in this process, appends one
  ``login.success`` record with the counters of one sign-in every 10 ms,
  through a ``RedisSessionStore`` built from the gateway's own config, so it
  shares the gateway's stream and counter keys; each call is timed with
  ``perf_counter``: first ~5 s with the gateway idle, then ~20 s beside
  wrk's logins (scenario 4's script, threads and connections). A bare PING
  at the same pace, idle and beside the logins, is the floor to read it by;
- Redis's ``INFO commandstats`` before and after the login run: XADD,
  EVALSHA (every script) and SCRIPT EXISTS calls per sign-in, less the
  probe's own (an XADD and an EVALSHA per append; the commands its script
  runs are counted too, so no other command is reported from there); the sign-ins
  are the ``login.success`` records the gateway added to the stream;
- a 5 s MONITOR capture after the probe stops (MONITOR slows Redis, so
  never while timing), with the wrk load still on: every top-level
  command, EVALSHA told apart by script, per ``login.success`` XADD.

``--at-cap`` first gives every login user ``session.max_per_user`` sessions
(through the store's own create), so each sign-in also evicts one, as in a
long login run.

    .venv/bin/python -m bench.audit                    # ~1 min
    .venv/bin/python -m bench.audit --at-cap --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import redis
import redis.asyncio as aioredis
import uvloop
from gateway.audit.stats import tally
from gateway.audit.trail import to_record
from gateway.auth.devices import describe
from gateway.auth.events import STARTED, SessionEvent
from gateway.config import load_config
from gateway.store import Session
from gateway.store.redis import RedisSessionStore

from . import gwctl
from .load import wrk
from .procs import Stack, check_tools
from .scenarios import LOGIN_PREFIX, LOGIN_USERS, Env, profiles, start_gateway

TICK = 0.010           # one probe call every 10 ms
LEAD_IN = 1.0          # wrk's connections open before the probe times anything
PING_SECONDS = 5.0     # the PING reference, each way
CAPTURE = 5.0          # seconds of MONITOR (~30 sign-ins at scenario 4's rate)
PROBE_USER = "probe"   # not a bench user: its records are told apart from the gateway's
AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 "
         "Firefox/128.0")
RECORD_TYPE = re.compile(r'"type":"([^"]+)"')


def pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Probe:
    """The gateway's store, as a worker builds it, and one realistic sign-in's
    append, as the audit trail's writer makes it."""

    def __init__(self, config_path: str) -> None:
        self.config = load_config(config_path)
        self.store = RedisSessionStore(self.config.session.redis)
        self.device = describe(AGENT)

    def append(self) -> Awaitable[None]:
        """The call, its record and counters made (the time is in awaiting it)."""
        now = time.time()
        session = Session(secrets.token_urlsafe(32), PROBE_USER, now, now, now + 43200, 1800,
                          login_ip="127.0.0.1", login_user_agent=AGENT, ip="127.0.0.1",
                          user_agent=AGENT)
        event = SessionEvent(STARTED, session, now, actor=PROBE_USER)
        return self.store.audit_append([to_record(event, self.device.text())],
                                       self.config.audit.retention,
                                       tally([event], {AGENT: self.device}.__getitem__))

    async def fill_to_cap(self, users: list[str]) -> None:
        s = self.config.session
        now = time.time()
        for user in users:
            for _ in range(s.max_per_user):
                await self.store.create(Session(
                    secrets.token_urlsafe(32), user, now, now, now + s.absolute_timeout,
                    s.idle_timeout, login_ip="127.0.0.1", ip="127.0.0.1"),
                    s.max_per_user, s.history)

    def script_names(self) -> dict[str, str]:
        s = self.store
        return {script.sha: name for name, script in (
            ("create", s._create), ("touch", s._touch), ("end", s._end), ("alert", s._alert),
            ("user_sessions", s._user_sessions), ("count", s._count), ("swap", s._swap))}


async def paced(seconds: float, call: Callable[[], Awaitable[Any]]) -> tuple[list[float],
                                                                             list[float]]:
    """``call`` every TICK for ``seconds``: milliseconds per call, and how late
    each tick woke (this process's share of the CPU: the machine, not Redis)."""
    times, late = [], []
    start = due = time.perf_counter()
    while due < start + seconds:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        late.append((time.perf_counter() - due) * 1000)
        pending = call()
        t0 = time.perf_counter()
        await pending
        t1 = time.perf_counter()
        times.append((t1 - t0) * 1000)
        due += TICK * (1 + int((t1 - due) // TICK))  # no catch-up bursts
    return sorted(times), sorted(late)


async def capture(url: str, seconds: float, scripts: dict[str, str]) -> Counter[str]:
    """Top-level commands (not those a script runs) Redis saw in ``seconds``;
    EVALSHA by script, XADD by record type."""
    mark = "bench:audit:mark"
    r = aioredis.from_url(url)
    seen: Counter[str] = Counter()
    try:
        async with r.monitor() as monitor:
            await r.set(mark, "start")
            while (await monitor.next_command())["command"] != f"SET {mark} start":
                pass
            await asyncio.sleep(seconds)
            await r.set(mark, "end")
            while (info := await monitor.next_command())["command"] != f"SET {mark} end":
                if info["client_type"] == "lua":
                    continue
                name, *args = info["command"].split(" ", 2)
                name = name.upper()
                if name == "EVALSHA":
                    name += " " + scripts.get(args[0], args[0][:8])
                elif name == "XADD":
                    kind = RECORD_TYPE.search(info["command"])
                    name += " " + (kind.group(1) if kind else "?")
                elif name in ("SCRIPT", "CLIENT", "CONFIG") and args:
                    name += " " + args[0].upper()
                seen[name] += 1
    finally:
        await r.aclose()
    return seen


def commandstats(client: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): v["calls"]
            for k, v in client.info("commandstats").items()}


def stream_types(client: redis.Redis, key: str, since_ms: int) -> Counter[str]:
    """Records the gateway (not the probe) appended since ``since_ms``, by type."""
    types: Counter[str] = Counter()
    start = f"{since_ms}-0"
    while entries := client.xrange(key, start, "+", count=10_000):
        for _, fields in entries:
            record = json.loads(fields[b"e"])
            if record.get("user") != PROBE_USER:
                types[record["type"]] += 1
        start = "(" + entries[-1][0].decode()
    return types


def redis_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.audit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=20, help="seconds timed beside logins")
    p.add_argument("--baseline", type=int, default=5, help="seconds timed with no load")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="gateway workers (default: cores, as python -m bench)")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--at-cap", action="store_true",
                   help="every login user starts at session.max_per_user sessions")
    args = p.parse_args(argv)
    check_tools()
    profile = profiles(args.wrk_threads)["full"]
    settings = replace(profile.login,
                       duration=int(LEAD_IN + args.duration + PING_SECONDS + CAPTURE + 2))
    users = [f"{LOGIN_PREFIX}{i}" for i in range(LOGIN_USERS)]
    stack = Stack()
    try:
        rds = stack.redis()
        env = Env(stack=stack, profile=profile, upstream=stack.upstream(1 << 20), redis=rds,
                  contenders={}, workers=args.workers, password_hash=gwctl.password_hash())
        cfg, _ = start_gateway(env, "gateway", rds)
        gwctl.login(cfg, users[0])  # fails loudly if logins are broken
        client = redis.Redis(host="127.0.0.1", port=rds.port)
        probe = Probe(str(cfg.path))
        loop = uvloop.new_event_loop()
        if args.at_cap:
            loop.run_until_complete(probe.fill_to_cap(users))
        loop.run_until_complete(paced(0.5, probe.append))  # connections, script cache
        log(f"no load: {args.baseline} s of appends, {PING_SECONDS:g} s of PINGs")
        idle, idle_late = loop.run_until_complete(paced(args.baseline, probe.append))
        idle_ping, _ = loop.run_until_complete(paced(PING_SECONDS, probe.store.ping))

        log(f"logins: {settings.describe()}, {args.workers} workers")
        before, since = commandstats(client), redis_ms(client)
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(wrk, cfg.url + "/_gateway/api/login", settings, method="POST",
                               login_users=LOGIN_USERS, login_prefix=LOGIN_PREFIX,
                               login_password=gwctl.BENCH_PASSWORD)
            loop.run_until_complete(asyncio.sleep(LEAD_IN))
            busy, busy_late = loop.run_until_complete(paced(args.duration, probe.append))
            busy_ping, _ = loop.run_until_complete(paced(PING_SECONDS, probe.store.ping))
            seen = loop.run_until_complete(capture(f"redis://127.0.0.1:{rds.port}/0", CAPTURE,
                                                   probe.script_names()))
            logins = load.result()
        # wrk stops with up to -c logins still queued in the gateway: let them drain.
        time.sleep(min(10.0, logins.latency_ms["max"] / 1000 + 1.0))
        after = commandstats(client)
        types = stream_types(client, probe.store.audit_key, since)
        loop.run_until_complete(probe.store.close())
        loop.close()
        client.close()
    finally:
        stack.close()

    if not (types["login.success"] and seen["XADD login.success"]):
        raise RuntimeError(f"no sign-in recorded: stream {dict(types)}, MONITOR {dict(seen)}")
    ours = len(busy)  # the probe's appends inside the commandstats window
    delta = {k: v - before.get(k, 0) for k, v in after.items()}
    signins = types["login.success"]
    # The probe's append is one XADD and one EVALSHA (scripts in pipelines
    # go as bare EVALSHA, so no SCRIPT EXISTS).
    xadd, evalsha = ((delta.get(k, 0) - ours) / signins for k in ("xadd", "evalsha"))
    exists = delta.get("script|exists", 0) / signins
    per = {k: n / seen["XADD login.success"] for k, n in seen.items()}
    xadds = sum(v for k, v in per.items() if k.startswith("XADD"))
    count = per.get("EVALSHA count", 0.0)
    ok = logins.requests - logins.non_2xx

    def row(ms: list[float]) -> str:
        return f"{len(ms)} / {pct(ms, 0.5):.2f} / {pct(ms, 0.99):.2f} / {ms[-1]:.2f} ms"

    rows = [
        ("logins achieved (wrk, successful / s)",
         f"{ok / logins.seconds:.1f}/s ({ok} of {logins.requests} in {logins.seconds:.1f} s; "
         f"login p50 {logins.latency_ms['p50']:.0f} ms, p99 {logins.latency_ms['p99']:.0f} ms)",
         ""),
        ("`audit_append` (1 record + counters), no load: count / p50 / p99 / max", row(idle), ""),
        ("`audit_append` beside the logins: count / p50 / p99 / max", row(busy), "p99 < 2 ms"),
        ("reference: a bare PING at the same pace, no load: count / p50 / p99 / max",
         row(idle_ping), ""),
        ("reference: a bare PING at the same pace, beside the logins", row(busy_ping), ""),
        ("probe tick wake-up lateness, no load / beside logins: p99 / max",
         f"{pct(idle_late, 0.99):.2f} / {idle_late[-1]:.2f} ms, "
         f"{pct(busy_late, 0.99):.2f} / {busy_late[-1]:.2f} ms", ""),
        (f"MONITOR, {CAPTURE:g} s ({seen['XADD login.success']} sign-ins): XADD (every type) + "
         "count-script EVALSHA per sign-in", f"{xadds:.2f} + {count:.2f} = {xadds + count:.2f}",
         "<= 3"),
        ("... the same plus any SCRIPT EXISTS (redis-py's own, before a pipeline with a script)",
         f"{xadds + count + per.get('SCRIPT EXISTS', 0.0):.2f}", ""),
        (f"INFO commandstats, whole run ({signins} sign-ins, probe's calls taken off): "
         "XADD / EVALSHA (every script) / SCRIPT EXISTS per sign-in",
         f"{xadd:.2f} / {evalsha:.2f} / {exists:.2f}", ""),
    ]
    start = "every login user at its session cap" if args.at_cap else "no prior sessions"
    print(f"\n**Audit stream under the login load** ({settings.describe()}, {LOGIN_USERS} "
          f"users, {start}; {args.workers} workers, {os.cpu_count()} cores; probe every "
          f"{TICK * 1000:g} ms)\n")
    print("| measure | result | target |\n|---|---|---|")
    for name, value, target in rows:
        print(f"| {name} | {value} | {target} |")
    print("\nRecords the gateway appended during the login run, by type: "
          + ", ".join(f"{k} {n}" for k, n in types.most_common()))
    print("\nTop-level commands per sign-in in the MONITOR capture (a sign-in = one "
          "`login.success` XADD; EVALSHA by script): "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
