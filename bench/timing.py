"""``python -m bench.timing``: do refused sign-ins tell anything by their timing?

The issue's target: unknown user, wrong password, disabled, locked and
throttled answers take the same time within noise, measured as the median
difference over 200 tries each. A real redis-server and a gateway (one
worker, the Redis store, argon2id at its defaults) are started; then the five
kinds of refusal are sent one at a time in a shuffled order (so the drift of
a shared machine falls on all alike), each from its own address through a
trusted X-Forwarded-For, so that no throttle counter but the one meant to
fires: the throttled kind is a pair blocked beforehand. Each answer is timed
from the first byte sent to the last byte read (http.client on loopback).

    .venv/bin/python -m bench.timing              # ~1-2 min
    .venv/bin/python -m bench.timing --tries 50
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import sys
import time

import yaml

from . import gwctl
from .procs import Stack

KINDS = ("unknown user", "wrong password", "disabled", "locked", "throttled")
USERS = ["alice", "dave", "lockedout"]


def attempt(port: int, user: str, password: str, ip: str) -> tuple[int, float]:
    body = json.dumps({"username": user, "password": password}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.connect()
        started = time.perf_counter()
        conn.request("POST", "/_gateway/api/login", body=body,
                     headers={"Content-Type": "application/json", "X-Forwarded-For": ip})
        response = conn.getresponse()
        response.read()
        return response.status, (time.perf_counter() - started) * 1000
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.timing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tries", type=int, default=200)
    p.add_argument("--seed", type=int, default=7, help="of the shuffled order")
    args = p.parse_args(argv)
    stack = Stack()
    try:
        redis = stack.redis()
        d = stack.dir("gw")
        cfg = gwctl.write_config(d, port=stack.ports.take(), redis_port=redis.port,
                                 upstream_port=1, workers=1, usernames=USERS,
                                 hashed=gwctl.password_hash())
        users = yaml.safe_load((d / "users.yaml").read_text())
        for u in users["users"]:
            u["disabled"] = u["username"] == "dave"
        (d / "users.yaml").write_text(yaml.safe_dump(users))
        config = yaml.safe_load(cfg.path.read_text())
        # Only the counter each kind is meant to meet may fire.
        config["trusted_proxies"] = ["127.0.0.1/32"]
        config["throttle"] = {"ip": {"failures": 1_000_000},
                              "account": {"failures": 1_000_000}}
        cfg.path.write_text(yaml.safe_dump(config))
        stack.gateway("gateway", cfg.path, cfg.port)
        lock_user(cfg.path, "lockedout")
        for _ in range(5):                                   # block one pair
            attempt(cfg.port, "alice", "wrong", "10.255.0.1")

        tries = {
            "unknown user": lambda i: ("nobody", "wrong", f"10.1.{i // 250}.{i % 250}"),
            "wrong password": lambda i: ("alice", "wrong", f"10.2.{i // 250}.{i % 250}"),
            "disabled": lambda i: ("dave", gwctl.BENCH_PASSWORD, f"10.3.{i // 250}.{i % 250}"),
            "locked": lambda i: ("lockedout", gwctl.BENCH_PASSWORD,
                                 f"10.4.{i // 250}.{i % 250}"),
            "throttled": lambda i: ("alice", "wrong", "10.255.0.1"),
        }
        expected = {"throttled": 429}
        order = [(kind, i) for kind in KINDS for i in range(args.tries)]
        random.Random(args.seed).shuffle(order)
        # Warm every path, and let the worker learn how long a check takes
        # (a throttled answer waits that long: auth/users.py typical_check).
        for i in range(32):
            attempt(cfg.port, *tries[KINDS[i % len(KINDS)]](args.tries + i))
        times: dict[str, list[float]] = {k: [] for k in KINDS}
        for kind, i in order:
            status, ms = attempt(cfg.port, *tries[kind](i))
            if status != expected.get(kind, 401):
                raise RuntimeError(f"{kind}: answered {status}")
            times[kind].append(ms)
    finally:
        stack.close()

    base = statistics.median(times["wrong password"])
    print(f"\n**Refused sign-ins, {args.tries} tries each, shuffled (seed {args.seed})** "
          "(one worker, "
          "Redis store, argon2id defaults; ms from request to last byte)\n")
    print("| answer | median | p25 / p75 | median − wrong password |\n|---|---|---|---|")
    for kind in KINDS:
        t = sorted(times[kind])
        q = statistics.quantiles(t, n=4)
        diff = statistics.median(t) - base
        print(f"| {kind} | {statistics.median(t):.1f} ms | {q[0]:.1f} / {q[2]:.1f} | "
              f"{diff:+.1f} ms ({diff / base * 100:+.1f}%) |")
    spread = statistics.quantiles(sorted(times["wrong password"]), n=4)
    print(f"\nNoise: the wrong-password answers' own interquartile range is "
          f"{spread[2] - spread[0]:.1f} ms.")
    return 0


def lock_user(config_path: object, user: str) -> None:
    """Lock ``user`` through the store, as the admin console would."""
    import asyncio

    from gateway.config import load_config
    from gateway.store import create_store

    async def lock() -> None:
        store = create_store(load_config(str(config_path)).session)
        try:
            await store.set_locked(user, True, "bench", time.time())
        finally:
            await store.close()
    asyncio.run(lock())


if __name__ == "__main__":
    sys.exit(main())
