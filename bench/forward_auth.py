"""``python -m bench.forward_auth``: nginx + the gateway's ``/_gateway/auth``
against nginx ``auth_request`` + the aiohttp auth peer.

Two nginx front-ends, configured alike but for who answers ``auth_request``
(``bench/peers/authreq-gateway.nginx.conf``, the operators' recipe
docs/forward-auth/nginx.conf, and ``bench/peers/authreq.nginx.conf``), proxy
to the same nginx upstream. One asks the gateway (2 workers, Redis store,
``trusted_proxies: ["127.0.0.1/32"]``), the other the auth peer
(``bench/peers/auth_service.py``, as many workers: an HS256 JWT and one Redis
GET per request); each has its own Redis. Both get byte-identical wrk
requests: ``GET /`` with ``Accept: application/json`` and one Cookie header
holding both sessions (the gateway's from a real sign-in, the peer's JWT).

Before measuring, both setups are checked: with the cookie 200 and the
upstream's body; without it (and with a tampered one) not 200; and the
gateway's endpoint, asked directly, names the user. Every measured answer
must be 200: wrk counts statuses >= 400, and each front logs whatever is not
200 (only 499s, wrk cutting requests in flight when it stops, are allowed).

    .venv/bin/python -m bench.forward_auth                # 5 rounds in turn, ~3 min
    .venv/bin/python -m bench.forward_auth --rounds 9 --together

Reported: each one's median req/s and p99, the ratio gateway / peer, CPU-ms
per request of each auth answerer and each nginx front, and Redis commands
per request on each side.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import redis
import yaml

from . import gwctl, probe, report
from .ab import cpu_seconds
from .load import WrkResult, WrkSettings, wrk
from .procs import PEERS_DIR, REPO_DIR, Service, Stack, check_tools, http_status, render
from .scenarios import bench_usernames

PEER_SECRET = "peer-secret-" + "y" * 40
GATEWAY, PEER = "nginx+gateway", "nginx+auth_request"

# Added to the peer's config in place of "access_log off;": the same two
# lines authreq-gateway.nginx.conf has, so that both count what is not 200.
_NON_200_LOG = ("    map $status $not_200 { 200 0; default 1; }\n"
                "    access_log {{dir}}/non200.log combined if=$not_200;\n")


def log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Side:
    name: str
    front: Service        # the nginx front-end wrk drives
    answerer: Service     # who answers auth_request: gateway or auth peer
    redis_port: int
    results: list[WrkResult] = field(default_factory=list)
    answer_ms: list[float] = field(default_factory=list)   # answerer CPU-ms per request
    front_ms: list[float] = field(default_factory=list)    # nginx front CPU-ms per request
    redis_per_req: list[float] = field(default_factory=list)
    machine_ms: list[float] = field(default_factory=list)  # all cores' busy CPU-ms per request
    cut_off: int = 0      # 499s: requests in flight when wrk stopped
    noise: list[float] = field(default_factory=list)        # other processes' CPU share
    noisiest: list[tuple[float, str]] = field(default_factory=list)

    @property
    def non200_log(self) -> Path:
        return self.front.dir / "non200.log"


def _log_statuses(path: Path, skip: int) -> tuple[Counter[int], int]:
    """Statuses logged after the first ``skip`` lines, and the line count."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return Counter(), 0
    statuses: Counter[int] = Counter()
    for line in lines[skip:]:
        m = re.search(r'" (\d{3}) ', line)
        statuses[int(m.group(1)) if m else 0] += 1
    return statuses, len(lines)


def _busy_ms() -> float:
    """CPU-ms all cores spent busy so far (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # less idle and iowait
    return busy * 1000 / os.sysconf("SC_CLK_TCK")


def _redis_commands(port: int) -> int:
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        return int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()


def start_gateway(stack: Stack, redis_port: int, upstream_port: int,
                  workers: int) -> tuple[gwctl.GatewayConfig, Service]:
    """The harness's gateway config (Redis store, the bench users) with the
    nginx front trusted to name the request it asks about."""
    d, port = stack.dir("gateway"), stack.ports.take()
    cfg = gwctl.write_config(d, port=port, redis_port=redis_port, upstream_port=upstream_port,
                             workers=workers, usernames=bench_usernames(),
                             hashed=gwctl.password_hash())
    config = yaml.safe_load(cfg.path.read_text())
    config["trusted_proxies"] = ["127.0.0.1/32"]
    cfg.path.write_text(yaml.safe_dump(config, sort_keys=False))
    svc = stack.spawn("gateway", [sys.executable, "-m", "gateway", "run", "--config", str(cfg.path)],
                      port=port, dir=d, timeout=60, env={"PYTHONPATH": str(REPO_DIR)},
                      ready=lambda: http_status(f"{cfg.url}/_gateway/healthz") == 200)
    return cfg, svc


def start_peer(stack: Stack, redis_svc: Service, workers: int) -> tuple[Service, str]:
    """The auth service and a session for it (a JWT naming a key it GETs)."""
    auth = stack.auth_service(redis_svc, PEER_SECRET, workers)
    sid = secrets.token_urlsafe(32)
    client = redis.Redis(host="127.0.0.1", port=redis_svc.port)
    client.set(f"auth:sess:{sid}", "bench", ex=86400)
    client.close()
    cookie = "session=" + jwt.encode({"sid": sid, "sub": "bench", "exp": int(time.time()) + 86400},
                                     PEER_SECRET, algorithm="HS256")
    return auth, cookie


def _front(stack: Stack, name: str, template_text: str, **values: object) -> Service:
    d, port = stack.dir(name), stack.ports.take()
    template = d / "nginx.conf.in"
    template.write_text(template_text)
    conf = render(template, d / "nginx.conf", dir=d, port=port, **values)
    return stack.spawn(name, ["nginx", "-p", str(d), "-c", str(conf)], port=port, dir=d,
                       ready=lambda: http_status(f"http://127.0.0.1:{port}/") is not None)


def start_fronts(stack: Stack, upstream: Service, gateway: Service, auth: Service,
                 workers: int) -> tuple[Service, Service]:
    gw_front = _front(stack, "nginx-gateway", (PEERS_DIR / "authreq-gateway.nginx.conf").read_text(),
                      upstream_port=upstream.port, gateway_port=gateway.port, workers=workers)
    peer_text = (PEERS_DIR / "authreq.nginx.conf").read_text()
    if "    access_log off;\n" not in peer_text:
        raise RuntimeError("authreq.nginx.conf has no 'access_log off;' line to replace")
    peer_text = peer_text.replace("    access_log off;\n", _NON_200_LOG, 1)
    peer_front = _front(stack, "nginx-authreq", peer_text, upstream_port=upstream.port,
                        auth_port=auth.port, workers=workers)
    return gw_front, peer_front


def verify(sides: dict[str, Side], gw: gwctl.GatewayConfig, cookie: str) -> None:
    """Both setups authenticate: 200 and the upstream's body with the cookie,
    not 200 without it or with a tampered one."""
    json_only = {"Accept": "application/json"}
    # Each session's signature changed (both cookies: each side reads its own).
    tampered = "; ".join(c[:-6] + ("AAAAAA" if not c.endswith("AAAAAA") else "BBBBBB")
                         for c in cookie.split("; "))
    for side in sides.values():
        status, _, body = gwctl.request(side.front.port, "GET", "/", {**json_only, "Cookie": cookie})
        if status != 200 or body != b"hello\n":
            raise RuntimeError(f"{side.name}: with the session cookie {status} {body[:200]!r}")
        for what, headers in (("without a cookie", json_only),
                              ("with a tampered cookie", {**json_only, "Cookie": tampered})):
            status, _, body = gwctl.request(side.front.port, "GET", "/", headers)
            if status == 200:
                raise RuntimeError(f"{side.name} answered 200 {what}: it does not authenticate")
            log(f"  {side.name}: {what} -> {status}")
    # The gateway's own answer, asked directly as nginx asks it.
    gw_cookie = next(c.strip() for c in cookie.split(";") if c.strip().startswith("gateway_session="))
    status, headers, _ = gwctl.request(gw.port, "GET", "/_gateway/auth", {
        "Cookie": gw_cookie, "X-Original-URL": "http://127.0.0.1/", "X-Original-Method": "GET"})
    if status != 200 or headers.get("X-Auth-User") != "bench":
        raise RuntimeError(f"/_gateway/auth answered {status}, X-Auth-User "
                           f"{headers.get('X-Auth-User')!r}")
    log(f"  gateway /_gateway/auth directly: {status}, X-Auth-User {headers['X-Auth-User']}, "
        f"{len([k for k in headers if k.lower().startswith('x-auth-')])} X-Auth-* headers")


def measure(side: Side, url_headers: dict[str, str], settings: WrkSettings) -> WrkResult:
    """One wrk run against ``side``'s front, with its CPU and Redis counts."""
    _, skip = _log_statuses(side.non200_log, 0)
    cpu_a, cpu_f = cpu_seconds(side.answerer.pid), cpu_seconds(side.front.pid)
    cmds = _redis_commands(side.redis_port)
    busy = _busy_ms()
    with probe.ForeignCpu() as gauge:
        res = wrk(side.front.url + "/", settings, headers=url_headers)
    side.machine_ms.append((_busy_ms() - busy) / max(res.requests, 1))
    side.noise.append(gauge.busy)
    side.noisiest = sorted(side.noisiest + gauge.top, reverse=True)[:3]
    cmds = _redis_commands(side.redis_port) - cmds - 1  # the INFO itself
    side.answer_ms.append((cpu_seconds(side.answerer.pid) - cpu_a) * 1000 / max(res.requests, 1))
    side.front_ms.append((cpu_seconds(side.front.pid) - cpu_f) * 1000 / max(res.requests, 1))
    side.redis_per_req.append(cmds / max(res.requests, 1))
    time.sleep(0.2)  # let nginx finish logging the requests wrk cut off
    statuses, _ = _log_statuses(side.non200_log, skip)
    side.cut_off += statuses.pop(499, 0)
    if res.non_2xx or res.socket_errors or statuses:
        raise RuntimeError(f"{side.name}: not every answer was 200: wrk {res.errors}, "
                           f"front logged {dict(statuses)}")
    side.results.append(res)
    return res


def _line(side: Side, res: WrkResult) -> str:
    return (f"{side.name:>18}: {res.rps:8,.0f} req/s  p99 {res.latency_ms.get('p99', 0):6.2f} ms  "
            f"auth {side.answer_ms[-1]:.3f} CPU-ms/req  nginx {side.front_ms[-1]:.3f}  "
            f"redis {side.redis_per_req[-1]:.2f} cmd/req  (others used {side.noise[-1]:.0%} CPU)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.forward_auth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="wrk threads (in turn)")
    p.add_argument("--workers", type=int, default=2,
                   help="gateway, auth-peer and nginx-front workers (default 2)")
    p.add_argument("--together", action="store_true",
                   help="drive both at once (wrk -t1 each, half the connections); the "
                        "figure is the median of the per-round ratios")
    p.add_argument("--hold", type=float, default=0, metavar="SECONDS",
                   help="after the rounds, keep driving the gateway side this long "
                        "(for attaching a profiler; pids are printed)")
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    check_tools()
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    stack = Stack(keep=args.keep_tmp)
    try:
        log(f"starting services in {stack.root}")
        upstream = stack.upstream(1 << 20)
        redis_gw, redis_peer = stack.redis("redis-gateway"), stack.redis("redis-peer")
        gw, gateway = start_gateway(stack, redis_gw.port, upstream.port, args.workers)
        auth, peer_cookie = start_peer(stack, redis_peer, args.workers)
        gw_front, peer_front = start_fronts(stack, upstream, gateway, auth, args.workers)
        for svc in stack.services:
            log(f"  {svc.name:<16} 127.0.0.1:{svc.port:<6} pid {svc.pid}")
        gw_cookie = gwctl.login(gw, "bench")
        # One Cookie header for both: the requests are byte-identical.
        cookie = f"{gw_cookie}; {peer_cookie}"
        headers = {"Cookie": cookie, "Accept": "application/json"}
        sides = {GATEWAY: Side(GATEWAY, gw_front, gateway, redis_gw.port),
                 PEER: Side(PEER, peer_front, auth, redis_peer.port)}
        log("checks")
        verify(sides, gw, cookie)

        settings = WrkSettings(threads=args.threads, connections=args.connections,
                               duration=args.duration)
        log("warm-up")
        for side in sides.values():
            measure(side, headers, WrkSettings(args.threads, args.connections, 3))
            side.results.clear(), side.answer_ms.clear(), side.front_ms.clear()
            side.redis_per_req.clear(), side.machine_ms.clear()
            side.cut_off = 0
            side.noise.clear(), side.noisiest.clear()
        ratios: list[float] = []
        if args.together:
            settings = WrkSettings(threads=1, connections=args.connections // 2,
                                   duration=args.duration)
            with ThreadPoolExecutor(2) as pool:
                for r in range(args.rounds):
                    futures = {n: pool.submit(measure, s, headers, settings) for n, s in sides.items()}
                    res = {n: f.result() for n, f in futures.items()}
                    ratios.append(res[GATEWAY].rps / res[PEER].rps)
                    log(f"round {r + 1}, both at once, ratio {ratios[-1]:.3f}")
                    for n, s in sides.items():
                        log("  " + _line(s, res[n]))
        else:
            for r in range(args.rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                res = {}
                for n in order:
                    res[n] = measure(sides[n], headers, settings)
                    log(f"round {r + 1} " + _line(sides[n], res[n]))
                ratios.append(res[GATEWAY].rps / res[PEER].rps)

        med = lambda xs: statistics.median(xs)  # noqa: E731
        rps = {n: med([x.rps for x in s.results]) for n, s in sides.items()}
        p99 = {n: med([x.latency_ms.get("p99", 0) for x in s.results]) for n, s in sides.items()}
        mode = "both at once" if args.together else "in turn (ABAB...)"
        log(f"\n{settings.describe()}, {args.rounds} rounds {mode}, medians "
            f"(started {started})")
        log(f"| measure | {GATEWAY} | {PEER} |")
        log("|---|---:|---:|")
        log(f"| req/s | {rps[GATEWAY]:,.0f} | {rps[PEER]:,.0f} |")
        log("| req/s, rounds | " + " | ".join(
            f"{min(x.rps for x in s.results):,.0f}-{max(x.rps for x in s.results):,.0f}"
            for s in sides.values()) + " |")
        log("| p50 ms | " + " | ".join(f"{med([x.latency_ms.get('p50', 0) for x in s.results]):.2f}"
                                      for s in sides.values()) + " |")
        log(f"| p99 ms | {p99[GATEWAY]:.2f} | {p99[PEER]:.2f} |")
        log("| auth answerer CPU-ms/req | " + " | ".join(
            f"{med(s.answer_ms):.3f}" for s in sides.values()) + " |")
        log("| nginx front CPU-ms/req | " + " | ".join(
            f"{med(s.front_ms):.3f}" for s in sides.values()) + " |")
        if not args.together:  # at once, the machine's CPU is shared by both
            log("| whole machine CPU-ms/req (wrk, both nginx, Redis, others too) | " + " | ".join(
                f"{med(s.machine_ms):.3f}" for s in sides.values()) + " |")
        log("| Redis commands/req | " + " | ".join(
            f"{med(s.redis_per_req):.3f}" for s in sides.values()) + " |")
        log("| requests, all 200 | " + " | ".join(
            f"{sum(x.requests for x in s.results):,} (+{s.cut_off} cut off by wrk's end)"
            for s in sides.values()) + " |")
        noise = [x for s in sides.values() for x in s.noise]
        top = sorted(sum((s.noisiest for s in sides.values()), []), reverse=True)[:3]
        log(f"other processes used {statistics.mean(noise):.0%} of the CPU on average "
            f"(max {max(noise):.0%}); busiest: "
            + ("; ".join(f"{cmd} ({share:.0%})" for share, cmd in top) or "-"))
        ratio = rps[GATEWAY] / rps[PEER]
        # In turn, the ratio of the medians (as bench.ab); at once, the median
        # of the per-round ratios.
        verdict = med(ratios) if args.together else ratio
        log(f"\nratio gateway / peer: req/s {ratio:.2f}x (medians), per-round ratios median "
            f"{med(ratios):.3f}x ({min(ratios):.2f}-{max(ratios):.2f}), p99 "
            f"{p99[GATEWAY] / p99[PEER]:.2f}x; target >= 1.5x: "
            + ("met" if verdict >= 1.5 else "NOT met") + f" ({verdict:.2f}x)")
        m = report.machine()
        log(f"machine: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM, {m['os']}, "
            f"kernel {m['kernel']}")
        log(f"versions: Python {m['python']}, aiohttp {m['aiohttp']}, uvloop {m['uvloop']}, "
            f"nginx {m['nginx']}, {m['wrk']}, Redis {m['redis']}, gateway {m['gateway']}")
        if args.hold:
            workers = [int(c) for t in Path(f"/proc/{gateway.pid}/task").iterdir()
                       for c in (t / "children").read_text().split()]
            log(f"\nholding load on {GATEWAY} for {args.hold:g} s; gateway pid {gateway.pid}, "
                f"workers {workers}")
            wrk(gw_front.url + "/", WrkSettings(args.threads, args.connections, int(args.hold)),
                headers=headers)
    finally:
        stack.close()
        if args.keep_tmp:
            log(f"temp dirs kept in {stack.root}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: every service was stopped", file=sys.stderr)
        sys.exit(130)
