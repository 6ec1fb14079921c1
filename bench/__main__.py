"""``python -m bench``: start everything, run the scenarios, report, tear down.

    .venv/bin/python -m bench                 full run (~11 min), rewrites BENCHMARKS.md
    .venv/bin/python -m bench --quick         smoke run (~2 min)
    .venv/bin/python -m bench --only 1,3      some scenarios

Services live only as long as this process: ``Stack.close`` runs from
``finally``, and SIGTERM/SIGHUP are turned into exceptions so it runs then too.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import sys
import time
from pathlib import Path

import jwt
import redis

from . import gwctl, report
from .procs import REPO_DIR, Stack, check_tools, gateway_runnable
from .scenarios import (AUTHREQ, CADDY, GATEWAY, NGINX, SCENARIOS, Contender, Env,
                        profiles, start_gateway)

BENCH_DIR = Path(__file__).resolve().parent
PEER_SECRET = "peer-secret-" + "y" * 40


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="short runs, 1 round, 1k vs 50k sessions (smoke test)")
    p.add_argument("--only", metavar="SCENARIOS", default=",".join(SCENARIOS),
                   help="comma-separated scenario numbers: " +
                   "; ".join(f"{k} {v[0]}" for k, v in SCENARIOS.items()))
    p.add_argument("--rounds", type=int, help="override the number of interleaved rounds")
    p.add_argument("--wrk-threads", type=int, default=2,
                   help="wrk threads, the same for every contender (default 2)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="gateway, nginx and auth-service workers (default: cores)")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=None,
                   help="rewrite BENCHMARKS.md and bench/chart.png (default: only for a "
                        "full run of every scenario)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dirs (logs, configs)")
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(unknown)}")
    return args


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def log(msg: str) -> None:
    print(msg, flush=True)


def start(stack: Stack, env_profile, workers: int, want_gateway: bool) -> Env:  # type: ignore[no-untyped-def]
    """Upstream, Redis, peers and (if it runs yet) the gateway."""
    log(f"starting services in {stack.root}")
    upstream = stack.upstream(env_profile.big_size)
    big_file = upstream.dir / "www" / "1g"
    rds = stack.redis()
    auth = stack.auth_service(rds, PEER_SECRET, workers)
    accept = {"Accept": "application/json"}

    # The auth_request peer's session: a JWT naming a key its service GETs.
    sid = secrets.token_urlsafe(32)
    client = redis.Redis(host="127.0.0.1", port=rds.port)
    client.set(f"auth:sess:{sid}", "bench", ex=86400)
    client.close()
    peer_cookie = "session=" + jwt.encode({"sid": sid, "sub": "bench", "exp": int(time.time()) + 86400},
                                          PEER_SECRET, algorithm="HS256")

    env = Env(stack=stack, profile=env_profile, upstream=upstream, redis=rds, contenders={},
              workers=workers, big_file=big_file, log=log)
    if want_gateway:
        env.password_hash = gwctl.password_hash()
        env.gateway, env.gateway_service = start_gateway(env, "gateway", rds)
        cookie = gwctl.login(env.gateway, "bench")
        env.contenders[GATEWAY] = Contender(GATEWAY, env.gateway_service,
                                            {"Cookie": cookie, **accept}, accept)
        same = {"Cookie": cookie, **accept}
    else:
        same = {"Cookie": "gateway_session=" + "x" * 180, **accept}
    env.contenders[NGINX] = Contender(NGINX, stack.nginx_proxy(upstream, workers), same, accept)
    env.contenders[CADDY] = Contender(CADDY, stack.caddy(upstream), same, accept)
    env.contenders[AUTHREQ] = Contender(AUTHREQ, stack.nginx_authreq(upstream, auth, workers),
                                        {"Cookie": peer_cookie, **accept}, accept)
    for svc in stack.services:
        log(f"  {svc.name:<20} 127.0.0.1:{svc.port:<6} pid {svc.pid:<8} dir {svc.dir}")
    return env


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    check_tools()
    profile = profiles(args.wrk_threads)["quick" if args.quick else "full"]
    if args.rounds:
        from dataclasses import replace
        profile = replace(profile, rounds=args.rounds)
    full = not args.quick and args.only == list(SCENARIOS)
    write = full if args.write is None else args.write

    why_not = gateway_runnable()
    if why_not:
        log(f"WARNING: the gateway does not run yet ({why_not}); measuring the peers only")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    t0 = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: dict = {"started": started, "profile": profile.name, "rounds": profile.rounds,
                     "command": " ".join([".venv/bin/python -m bench", *map(shlex.quote, argv)]),
                     "workers": args.workers, "scenarios": {}, "skipped": {}, "noise": {}}
    stack = Stack(keep=args.keep_tmp)
    try:
        env = start(stack, profile, args.workers, want_gateway=why_not is None)
        for key in args.only:
            title, run, needs_gateway = SCENARIOS[key]
            if needs_gateway and env.gateway is None:
                results["skipped"][key] = "the gateway does not run yet"
                log(f"\n== {key}. {title}: skipped (no gateway)")
                continue
            log(f"\n== {key}. {title}")
            t = time.monotonic()
            env.noise.clear()
            env.noisiest.clear()
            try:
                results["scenarios"][key] = run(env)
            except (RuntimeError, OSError) as exc:
                results["skipped"][key] = f"failed: {exc}"
                log(f"   FAILED: {exc}")
            if env.noise:
                results["noise"][key] = {
                    "max": max(env.noise), "mean": sum(env.noise) / len(env.noise),
                    "top": [f"{cmd} ({share:.0%})" for share, cmd in env.noisiest]}
                log(f"   other processes used up to {max(env.noise):.0%} of the CPU during these "
                    f"measurements; busiest: {'; '.join(results['noise'][key]['top']) or '-'}")
            log(f"   ({time.monotonic() - t:.0f} s)")
    finally:
        stack.close()
        if args.keep_tmp:
            log(f"temp dirs kept in {stack.root}")

    results["wall_seconds"] = time.monotonic() - t0
    results["machine"] = report.machine()
    print("\n" + report.text_report(results))
    for key, why in results["skipped"].items():
        print(f"\nscenario {key} not measured: {why}")

    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"{stamp}-{profile.name}.json").write_text(json.dumps(results, indent=1, default=str))
    target = REPO_DIR / "BENCHMARKS.md"
    if write:
        chart = report.chart(results, BENCH_DIR / "chart.png")
        target.write_text(report.markdown(results, target, chart))
        log(f"\nwrote {target}" + (f" and {chart}" if chart else ""))
    else:
        md = out_dir / f"{stamp}-{profile.name}.md"
        chart = report.chart(results, out_dir / f"{stamp}-{profile.name}.png")
        md.write_text(report.markdown(results, target, chart))
        log(f"\nwrote {md} (BENCHMARKS.md is only rewritten by a full run, or with --write)")
    log(f"total {results['wall_seconds'] / 60:.1f} min")
    return 1 if results["skipped"] and not why_not else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("\ninterrupted: every service was stopped and its temp dir removed", file=sys.stderr)
        sys.exit(130)
