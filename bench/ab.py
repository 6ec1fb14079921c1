"""``python -m bench.ab --base REV``: the hot path of this tree against a commit.

Two gateways (2 workers each, a Redis each, the same nginx upstream) run side
by side: one from a ``git worktree`` of REV, one from the working tree. wrk
drives them in turn, in interleaved rounds (ABAB...), so that the drift of a
shared machine falls on both alike; the report is each one's median req/s
and p99, and the ratio this tree / REV. This is how a change that touches the
hot path is judged against the commit before it.

    .venv/bin/python -m bench.ab --base HEAD              # ~4 min
    .venv/bin/python -m bench.ab --base a74f84f --rounds 7 --duration 10
    .venv/bin/python -m bench.ab --base HEAD --together \
        --with-config bench/configs/rate-limit.yaml       # what a setting costs
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from . import gwctl
from .load import WrkSettings, wrk
from .procs import REPO_DIR, Stack, check_tools, http_status
from .scenarios import bench_usernames


def start(stack: Stack, name: str, source: Path, redis_port: int, upstream_port: int,
          hashed: str, extra: dict[str, object] | None = None) -> tuple[gwctl.GatewayConfig, int]:
    """A gateway whose ``gateway`` package is imported from ``source``, its
    config with ``extra``'s top-level keys; (config, pid)."""
    d, port = stack.dir(name), stack.ports.take()
    cfg = gwctl.write_config(d, port=port, redis_port=redis_port, upstream_port=upstream_port,
                             workers=2, usernames=bench_usernames(), hashed=hashed)
    if extra:
        config = yaml.safe_load(cfg.path.read_text())
        cfg.path.write_text(yaml.safe_dump({**config, **extra}, sort_keys=False))
    svc = stack.spawn(name, [sys.executable, "-m", "gateway", "run", "--config", str(cfg.path)],
                      port=port, dir=d, timeout=60, env={"PYTHONPATH": str(source)},
                      ready=lambda: http_status(f"{cfg.url}/_gateway/healthz") == 200)
    return cfg, svc.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a gateway's main process and its workers so far.

    Steadier than req/s on a machine whose speed drifts: it counts the work
    done per request, not how fast the shared cores happened to run it.
    """
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(c) for c in (task / "children").read_text().split()]
    total = 0.0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _together(args: argparse.Namespace, gateways: dict[str, gwctl.GatewayConfig],
              cookies: dict[str, str], base: str, head: str) -> int:
    from concurrent.futures import ThreadPoolExecutor
    settings = WrkSettings(threads=1, connections=args.connections // 2,
                           duration=args.duration)
    ratios = []
    with ThreadPoolExecutor(2) as pool:
        for r in range(args.rounds):
            runs = {name: pool.submit(wrk, cfg.url + "/", settings,
                                      headers={"Cookie": cookies[name],
                                               "Accept": "application/json"})
                    for name, cfg in gateways.items()}
            res = {name: f.result() for name, f in runs.items()}
            for name, x in res.items():
                if x.non_2xx or x.socket_errors:
                    raise RuntimeError(f"{name}: {x.non_2xx} non-2xx, errors {x.errors}")
            ratios.append(res[head].rps / res[base].rps)
            print(f"round {r + 1}: {base} {res[base].rps:,.0f} req/s, {head} "
                  f"{res[head].rps:,.0f} req/s, ratio {ratios[-1]:.3f}", flush=True)
    print(f"\nhot path, both at once ({settings.describe()} each), {args.rounds} rounds: "
          f"ratio {head} / {base} median {statistics.median(ratios):.3f}x "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the commit to compare against")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--with-config", type=Path, metavar="YAML",
                   help="top-level keys added to this tree's config only (with --base HEAD: "
                        "the cost of a setting, e.g. rate_limits)")
    p.add_argument("--together", action="store_true",
                   help="drive both at once (wrk -t1 each, half the connections), so that "
                        "the machine's drift falls on both in the same seconds; the figure "
                        "is the median of the per-round ratios")
    args = p.parse_args(argv)
    check_tools()
    base = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=REPO_DIR,
                          capture_output=True, text=True, check=True).stdout.strip()
    head = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_DIR,
                          capture_output=True, text=True, check=True).stdout.strip()
    if args.with_config:
        head += f"+{args.with_config.stem}"
    stack = Stack()
    tree = stack.root / "base-tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), base], cwd=REPO_DIR,
                   check=True, capture_output=True)
    try:
        upstream = stack.upstream(1 << 20)
        # A Redis each: two versions may keep sessions in different formats.
        redis_base, redis_head = stack.redis("redis-base"), stack.redis("redis-head")
        hashed = gwctl.password_hash()
        started = {base: start(stack, "gw-base", tree, redis_base.port, upstream.port, hashed),
                   head: start(stack, "gw-head", REPO_DIR, redis_head.port, upstream.port,
                               hashed, yaml.safe_load(args.with_config.read_text())
                               if args.with_config else None)}
        gateways = {name: cfg for name, (cfg, _) in started.items()}
        pids = {name: pid for name, (_, pid) in started.items()}
        cpu_ms: dict[str, list[float]] = {name: [] for name in gateways}
        cookies = {name: gwctl.login(cfg, "bench") for name, cfg in gateways.items()}
        settings = WrkSettings(threads=2, connections=args.connections, duration=args.duration)
        results: dict[str, list] = {name: [] for name in gateways}
        for name, cfg in gateways.items():  # warm-up, not counted
            wrk(cfg.url + "/", WrkSettings(2, args.connections, 3),
                headers={"Cookie": cookies[name], "Accept": "application/json"})
        if args.together:
            return _together(args, gateways, cookies, base, head)
        for r in range(args.rounds):
            order = list(gateways) if r % 2 == 0 else list(reversed(gateways))
            for name in order:
                before = cpu_seconds(pids[name])
                res = wrk(gateways[name].url + "/", settings,
                          headers={"Cookie": cookies[name], "Accept": "application/json"})
                if res.non_2xx or res.socket_errors:
                    raise RuntimeError(f"{name}: {res.non_2xx} non-2xx, errors {res.errors}")
                results[name].append(res)
                cpu_ms[name].append((cpu_seconds(pids[name]) - before) * 1000 / res.requests)
                print(f"round {r + 1} {name:>16}: {res.rps:8,.0f} req/s  "
                      f"p99 {res.latency_ms.get('p99', 0):6.2f} ms  "
                      f"{cpu_ms[name][-1]:.3f} CPU-ms/req", flush=True)
        medians = {n: statistics.median(x.rps for x in rs) for n, rs in results.items()}
        p99s = {n: statistics.median(x.latency_ms.get("p99", 0) for x in rs)
                for n, rs in results.items()}
        print(f"\nhot path, {settings.describe()}, median of {args.rounds} interleaved rounds")
        cpus = {n: statistics.median(xs) for n, xs in cpu_ms.items()}
        for name in gateways:
            print(f"  {name:>16}: {medians[name]:8,.0f} req/s  p99 {p99s[name]:.2f} ms  "
                  f"{cpus[name]:.3f} CPU-ms/req")
        print(f"  ratio {head} / {base}: {medians[head] / medians[base]:.3f}x req/s, "
              f"{cpus[base] / cpus[head]:.3f}x requests per CPU-second")
    finally:
        stack.close()
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_DIR,
                       capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
