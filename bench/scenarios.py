"""The six scenarios. Each takes the running ``Env`` and returns plain dicts for report.py.

Rounds are interleaved (A B C D A B C D ...) so drift on the machine hits
every contender alike; figures are medians over rounds. Every request
scenario is checked first with one request that must get the expected
status, so a misconfigured contender cannot look fast by failing fast.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import uvloop

from . import gwctl, probe
from .load import (PacedResult, WrkResult, WrkSettings, curl_transfer, paced_logins,
                   poll_keepalive, wrk)
from .procs import REPO_DIR, Service, Stack, gateway_command

MIB = 1 << 20
GATEWAY = "gateway"
NGINX, CADDY, AUTHREQ = "nginx", "caddy", "nginx+auth_request"


@dataclass(frozen=True)
class Profile:
    """How long and how big: ``full`` fits ~15 minutes, ``quick`` is a smoke run."""
    name: str
    rounds: int
    warmup: int
    hot: WrkSettings
    transfer: WrkSettings
    login: WrkSettings
    big_size: int
    sessions: tuple[int, int]
    revocations: int
    poll_connections: int = 64


def profiles(threads: int) -> dict[str, Profile]:
    return {
        "full": Profile("full", rounds=3, warmup=2,
                        hot=WrkSettings(threads, 64, 10),
                        transfer=WrkSettings(threads, 16, 5),
                        login=WrkSettings(threads, 8, 10),
                        big_size=1 << 30, sessions=(1_000, 1_000_000), revocations=5),
        "quick": Profile("quick", rounds=1, warmup=1,
                         hot=WrkSettings(threads, 64, 3),
                         transfer=WrkSettings(threads, 16, 2),
                         login=WrkSettings(threads, 8, 3),
                         big_size=1 << 30, sessions=(1_000, 50_000), revocations=2),
    }


@dataclass
class Contender:
    name: str
    service: Service
    headers: dict[str, str]       # authenticated request headers
    anon_headers: dict[str, str]  # no session

    @property
    def url(self) -> str:
        return self.service.url


@dataclass
class Env:
    stack: Stack
    profile: Profile
    upstream: Service
    redis: Service
    contenders: dict[str, Contender]
    gateway: gwctl.GatewayConfig | None = None
    gateway_service: Service | None = None
    workers: int = 2
    password_hash: str = ""
    big_file: Path = field(default=Path("/dev/null"))
    log: Callable[[str], None] = print
    # Share of the CPU other processes on the machine used during each measurement.
    noise: list[float] = field(default_factory=list)
    noisiest: list[tuple[float, str]] = field(default_factory=list)

    @contextmanager
    def measuring(self) -> Iterator[None]:
        with probe.ForeignCpu() as gauge:
            yield
        self.noise.append(gauge.busy)
        self.noisiest = sorted(self.noisiest + gauge.top, reverse=True)[:3]

    def pick(self, *names: str) -> list[Contender]:
        return [self.contenders[n] for n in names if n in self.contenders]


# -- helpers -------------------------------------------------------------------

def _expect(c: Contender, path: str, headers: dict[str, str], status: int,
            method: str = "GET", body: bytes | None = None) -> None:
    got, _, data = gwctl.request(c.service.port, method, path, headers, body)
    if got != status:
        raise RuntimeError(f"{c.name}: {method} {path} answered {got}, expected {status}: {data[:200]!r}")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _summarise(runs: list[WrkResult], unit_bytes: int = 0) -> dict[str, Any]:
    """Medians over rounds; MiB/s when each request moves ``unit_bytes``."""
    out = {
        "rps": _median([r.rps for r in runs]),
        "p50_ms": _median([r.latency_ms["p50"] for r in runs]),
        "p99_ms": _median([r.latency_ms["p99"] for r in runs]),
        "requests": sum(r.requests for r in runs),
        "non_2xx": sum(r.non_2xx for r in runs),
        "socket_errors": sum(r.socket_errors for r in runs),
        "rounds": [round(r.rps, 1) for r in runs],
        "rps_min": min((r.rps for r in runs), default=float("nan")),
        "rps_max": max((r.rps for r in runs), default=float("nan")),
    }
    if unit_bytes:
        out["mib_s"] = _median([r.rps * unit_bytes / MIB for r in runs])
    return out


def _interleaved(env: Env, contenders: list[Contender], settings: WrkSettings,
                 run: Callable[[Contender, WrkSettings], WrkResult]) -> dict[str, list[WrkResult]]:
    """Warm each contender up, then A B C D A B C D ... for ``profile.rounds`` rounds."""
    warm = WrkSettings(settings.threads, settings.connections, env.profile.warmup, settings.timeout)
    for c in contenders:
        run(c, warm)
    runs: dict[str, list[WrkResult]] = {c.name: [] for c in contenders}
    for i in range(env.profile.rounds):
        for c in contenders:
            with env.measuring():
                r = run(c, settings)
            runs[c.name].append(r)
            env.log(f"    round {i + 1} {c.name:<20} {r.rps:>10.1f} req/s  p50 {r.latency_ms['p50']:.2f} ms"
                    f"  p99 {r.latency_ms['p99']:.2f} ms  non-2xx {r.non_2xx}"
                    f"  (others used {env.noise[-1]:.0%} CPU)")
    return runs


# -- 1. hot path ---------------------------------------------------------------

def hot_path(env: Env) -> dict[str, Any]:
    """Authenticated small GET: req/s, p50, p99 for every contender."""
    cs = env.pick(GATEWAY, NGINX, CADDY, AUTHREQ)
    for c in cs:
        _expect(c, "/", c.headers, 200)
    s = env.profile.hot
    runs = _interleaved(env, cs, s, lambda c, st: wrk(c.url + "/", st, headers=c.headers))
    return {"settings": s.describe(), "results": {n: _summarise(r) for n, r in runs.items()}}


# -- 2. rejections ---------------------------------------------------------------

def rejections(env: Env) -> dict[str, Any]:
    """No session, non-browser client: every answer must be 401."""
    cs = env.pick(GATEWAY, AUTHREQ)
    for c in cs:
        _expect(c, "/", c.anon_headers, 401)
    s = env.profile.hot
    runs = _interleaved(env, cs, s, lambda c, st: wrk(c.url + "/", st, headers=c.anon_headers))
    results = {n: _summarise(r) for n, r in runs.items()}
    for res in results.values():
        res["all_rejected"] = res["non_2xx"] == res["requests"]
    return {"settings": s.describe(), "results": results}


# -- 3. bodies -------------------------------------------------------------------

def bodies(env: Env) -> dict[str, Any]:
    """1 MiB downloads and uploads (MiB/s), then one huge body each way with memory watched."""
    cs = env.pick(GATEWAY, NGINX, CADDY, AUTHREQ)
    body = b"x" * MIB
    for c in cs:
        _expect(c, "/1m", c.headers, 200)
        _expect(c, "/upload", {**c.headers, "Content-Type": "application/octet-stream"},
                200, "POST", body)
    s = env.profile.transfer
    down = _interleaved(env, cs, s, lambda c, st: wrk(c.url + "/1m", st, headers=c.headers))
    up = _interleaved(env, cs, s, lambda c, st: wrk(
        c.url + "/upload", st, method="POST", body_size=MIB,
        headers={**c.headers, "Content-Type": "application/octet-stream"}))
    big = _big_transfers(env, cs)
    return {"settings": s.describe(), "big_size": env.profile.big_size,
            "download": {n: _summarise(r, MIB) for n, r in down.items()},
            "upload": {n: _summarise(r, MIB) for n, r in up.items()},
            "big": big}


def _big_transfers(env: Env, cs: list[Contender]) -> dict[str, Any]:
    """One huge download and one huge upload at a time, rounds interleaved, memory polled.

    Per contender and direction: the median MiB/s over the rounds and the
    largest memory peak of any round.
    """
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        c.name: {"download": [], "upload": []} for c in cs}
    for i in range(env.profile.rounds):
        for c in cs:
            for direction in ("download", "upload"):
                r = _big_transfer(env, c, direction)
                runs[c.name][direction].append(r)
                env.log(f"    round {i + 1} {c.name:<20} 1 x {env.profile.big_size // MIB} MiB "
                        f"{direction:<8} {r['mib_s']:8.1f} MiB/s  peak RSS one worker "
                        f"{r['peak_worker_rss_mib']:.1f} MiB, all {r['processes']} processes "
                        f"{r['peak_total_rss_mib']:.1f} MiB")
    return {name: {d: {"mib_s": _median([r["mib_s"] for r in rs]),
                       "rounds": [round(r["mib_s"], 1) for r in rs],
                       "peak_worker_rss_mib": max(r["peak_worker_rss_mib"] for r in rs),
                       "start_worker_rss_mib": max(r["start_worker_rss_mib"] for r in rs),
                       "peak_total_rss_mib": max(r["peak_total_rss_mib"] for r in rs),
                       "processes": max(r["processes"] for r in rs)}
                   for d, rs in by_dir.items()}
            for name, by_dir in runs.items()}


def _big_transfer(env: Env, c: Contender, direction: str) -> dict[str, Any]:
    cookie = c.headers.get("Cookie", "")
    pids = [c.service.pid] + probe.children(c.service.pid)
    workers = probe.worker_pids(c.service.pid) if c.name == GATEWAY else pids
    for pid in pids:
        _reset_peak(pid)
    with env.measuring(), probe.MemorySampler(pids) as mem:
        if direction == "download":
            t = curl_transfer(c.url + "/1g", cookie=cookie)
        else:
            t = curl_transfer(c.url + "/upload", cookie=cookie, upload=env.big_file)
    if t.status != 200 or t.bytes != env.profile.big_size:
        raise RuntimeError(f"{c.name}: {direction} of {env.profile.big_size} bytes answered "
                           f"{t.status} after {t.bytes} bytes")
    peak_one = max(max(mem.peak_hwm.get(p, 0), mem.peak_rss.get(p, 0)) for p in workers)
    return {"mib_s": t.mib_per_s, "seconds": t.seconds,
            "peak_worker_rss_mib": peak_one / 1024,
            "start_worker_rss_mib": max(mem.start_rss.get(p, 0) for p in workers) / 1024,
            "peak_total_rss_mib": mem.peak_sum_rss / 1024,
            "processes": len(pids)}


def _reset_peak(pid: int) -> None:
    """Writing 5 to clear_refs resets VmHWM, so the peak is this transfer's own."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


# -- 4. logins -----------------------------------------------------------------

LOGIN_USERS = 64
LOGIN_PREFIX = "login"


def logins(env: Env) -> dict[str, Any]:
    """Logins per second (wrk, closed loop), then the hot path's latency alone and
    beside logins arriving open-loop at that rate."""
    gw = env.contenders[GATEWAY]
    gwctl.login(env.gateway, f"{LOGIN_PREFIX}0")  # fails loudly if logins are broken
    s = env.profile.login
    login_runs = _interleaved(env, [gw], s, lambda c, st: wrk(
        c.url + "/_gateway/api/login", st, method="POST", login_users=LOGIN_USERS,
        login_prefix=LOGIN_PREFIX, login_password=gwctl.BENCH_PASSWORD))[GATEWAY]
    rate = _median([r.rps for r in login_runs])
    # wrk stops with up to -c logins still queued in the gateway: let them drain.
    time.sleep(min(10.0, max(r.latency_ms["max"] for r in login_runs) / 1000 + 0.5))
    if not rate:
        raise RuntimeError("no login succeeded")

    users = [f"{LOGIN_PREFIX}{i}" for i in range(LOGIN_USERS)]
    hot = env.profile.hot
    alone: list[WrkResult] = []
    beside: list[WrkResult] = []
    paced: list[PacedResult] = []
    with ThreadPoolExecutor(1) as pool:
        for i in range(env.profile.rounds):
            with env.measuring():
                alone.append(wrk(gw.url + "/", hot, headers=gw.headers))
            fut = pool.submit(uvloop.run, paced_logins(
                gw.service.port, rate, hot.duration, users, gwctl.BENCH_PASSWORD))
            with env.measuring():
                beside.append(wrk(gw.url + "/", hot, headers=gw.headers))
            paced.append(fut.result())
            env.log(f"    round {i + 1} hot path alone p99 {alone[-1].latency_ms['p99']:.2f} ms, "
                    f"beside {paced[-1].rps:.1f} logins/s p99 {beside[-1].latency_ms['p99']:.2f} ms "
                    f"(login answers {paced[-1].statuses})")
    return {"settings": s.describe(), "users": LOGIN_USERS,
            "logins": _summarise(login_runs),
            "paced": {"target_rate": rate,
                      "rate": _median([p.rps for p in paced]),
                      "p50_ms": _median([p.latency_ms["p50"] for p in paced]),
                      "p99_ms": _median([p.latency_ms["p99"] for p in paced]),
                      "sent": sum(p.sent for p in paced), "ok": sum(p.ok for p in paced)},
            "hot_alone": _summarise(alone), "hot_beside_logins": _summarise(beside)}


# -- 5. many sessions ------------------------------------------------------------

def many_sessions(env: Env) -> dict[str, Any]:
    """The hot path with few vs many live sessions in Redis.

    Two fresh Redis servers (few / many sessions), each with its own gateway;
    if the gateway has a session cache, a second gateway per Redis runs with
    ``cache_ttl: 0s`` so the Redis lookup itself is measured too.
    """
    small, big = env.profile.sessions
    variants = [("default", {})]
    if gwctl.has_session_cache():
        variants.append(("cache_ttl 0s", {"cache_ttl": "0s"}))
    contenders: list[Contender] = []
    meta: dict[str, dict[str, Any]] = {}
    started: list[Service] = []
    big_cfg: gwctl.GatewayConfig | None = None
    try:
        for count in (small, big):
            redis = env.stack.redis(f"redis-{count}")
            started.append(redis)
            for label, extra in variants:
                name = f"{count:,} sessions, {label}"
                cfg, svc = start_gateway(env, f"gateway-{count}-{len(meta)}", redis, extra)
                started.append(svc)
                if count == big:
                    big_cfg = cfg
                if label == variants[0][0]:  # sessions are loaded once per Redis
                    env.log(f"    loading {count:,} sessions ...")
                    seconds = gwctl.bulk_create(cfg, count)
                    keys, memory = gwctl.redis_size(redis.port)
                    env.log(f"    {count:,} sessions loaded in {seconds:.1f} s ({keys:,} keys, "
                            f"{memory / 2**20:.0f} MiB)")
                c = Contender(name, svc, {"Cookie": gwctl.login(cfg, "bench"),
                                          "Accept": "application/json"}, {})
                _expect(c, "/", c.headers, 200)
                contenders.append(c)
                meta[name] = {"sessions": count, "variant": label, "load_seconds": seconds,
                              "keys": keys, "redis_mib": memory / 2**20}
        s = env.profile.hot
        runs = _interleaved(env, contenders, s,
                            lambda c, st: wrk(c.url + "/", st, headers=c.headers))
        cli = _time_cli_revoke(big_cfg)
        env.log(f"    'gateway sessions revoke --id' with {big:,} sessions: {cli['seconds']:.2f} s")
        return {"settings": s.describe(),
                "results": [{**meta[c.name], **_summarise(runs[c.name])} for c in contenders],
                "cli_revoke_big": cli}
    finally:
        for svc in reversed(started):
            env.stack.stop(svc)


def start_gateway(env: Env, name: str, redis: Service,
                  session_extra: dict[str, str] | None = None) -> tuple[gwctl.GatewayConfig, Service]:
    """A gateway on its own port and dir, with the bench users, on ``redis``."""
    d = env.stack.dir(name)
    port = env.stack.ports.take()
    cfg = gwctl.write_config(d, port=port, redis_port=redis.port, upstream_port=env.upstream.port,
                             workers=env.workers, usernames=bench_usernames(),
                             hashed=env.password_hash, session_extra=session_extra)
    return cfg, env.stack.gateway(name, cfg.path, port)


def bench_usernames() -> list[str]:
    return ["bench", "revoker"] + [f"{LOGIN_PREFIX}{i}" for i in range(LOGIN_USERS)]


def _time_cli_revoke(cfg: gwctl.GatewayConfig) -> dict[str, Any]:
    """Wall time of ``gateway sessions revoke --id`` (process start + finding the id)."""
    cookie = gwctl.login(cfg, "revoker")
    _, sid = gwctl.session_id(cookie)
    t0 = time.monotonic()
    out = subprocess.run(gateway_command() + ["sessions", "revoke", "--id", sid,
                                              "--config", str(cfg.path)],
                         capture_output=True, text=True, timeout=300, cwd=REPO_DIR)
    seconds = time.monotonic() - t0
    status, _, _ = gwctl.request(cfg.port, "GET", "/", {"Cookie": cookie, "Accept": "application/json"})
    return {"seconds": seconds, "exit": out.returncode, "output": out.stdout.strip(),
            "status_after": status}


# -- 6. revocation latency -------------------------------------------------------

def revocation(env: Env) -> dict[str, Any]:
    """Revoke a session hammered on many keep-alive connections; time until every worker rejects it.

    Trials alternate between the scenario-1 gateway and, if the gateway has a
    session cache, one with ``cache_ttl: 0s`` on the same Redis: the latter
    shows what 'at the very next request' looks like with this poller.
    """
    targets = {"default": (env.gateway, env.gateway_service)}
    extra: Service | None = None
    try:
        if gwctl.has_session_cache():
            cfg, extra = start_gateway(env, "gateway-nocache", env.redis, {"cache_ttl": "0s"})
            targets["cache_ttl 0s"] = (cfg, extra)
        trials: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
        for cfg, svc in targets.values():  # warm-up: the first revoke of a gateway is slower
            _revocation_trial(env, cfg, svc)
        for _ in range(env.profile.revocations):
            for label, (cfg, svc) in targets.items():
                with env.measuring():
                    t = _revocation_trial(env, cfg, svc)
                trials[label].append(t)
                env.log(f"    {label:<13} revoke -> last worker rejects: {t['max_ms']:.1f} ms  "
                        f"per worker {', '.join(f'{v:.1f}' for v in t['per_worker_ms'].values())} ms"
                        f"  (poll round trip {t['poll_round_trip_ms']:.1f} ms)")
    finally:
        if extra is not None:
            env.stack.stop(extra)
    cli = _time_cli_revoke(env.gateway)
    return {"connections": env.profile.poll_connections,
            "variants": {label: {"trials": ts,
                                 "median_max_ms": _median([t["max_ms"] for t in ts]),
                                 "worst_ms": max(t["max_ms"] for t in ts)}
                         for label, ts in trials.items()},
            "cli_revoke": cli}


def _revocation_trial(env: Env, cfg: gwctl.GatewayConfig, svc: Service) -> dict[str, Any]:
    cookie = gwctl.login(cfg, "revoker")
    username, sid = gwctl.session_id(cookie)
    workers = probe.worker_pids(svc.pid)
    headers = {"Cookie": cookie, "Accept": "application/json"}

    async def run() -> dict[str, Any]:
        from gateway.config import load_config
        from gateway.store import create_store
        session_config = load_config(cfg.path).session
        store = create_store(session_config)
        await store.ping()
        stop = asyncio.Event()
        poller = asyncio.ensure_future(poll_keepalive(
            cfg.port, "/", headers, env.profile.poll_connections, stop, time.monotonic() + 20))
        try:
            await asyncio.sleep(0.5)
            owners = await asyncio.to_thread(probe.connection_owners, workers, cfg.port)
            t_ret = await revoke(store, session_config, username, sid)
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            conns = await poller
            await store.close()
        return {"t": t_ret, "owners": owners, "conns": conns}

    res = uvloop.run(run())
    t_ret, owners, conns = res["t"], res["owners"], res["conns"]
    first: dict[int, float] = {}
    stale_200 = 0
    for conn in conns:
        pid = owners.get(conn.local_port)
        stale_200 += sum(1 for a in conn.answers if a.status == 200 and a.sent > t_ret)
        rejected = next((a.at for a in conn.answers if a.status == 401), None)
        if pid is not None and rejected is not None:
            first[pid] = min(first.get(pid, rejected), rejected)
    missing = [p for p in workers if p not in first]
    if missing:
        raise RuntimeError(f"workers {missing} never rejected the revoked session "
                           f"(connections per worker: {_count(owners)})")
    per_worker = {pid: max(0.0, (at - t_ret) * 1000) for pid, at in first.items()}
    # The resolution: how long one request took on a polling connection before the revoke.
    gaps = [(b.at - a.at) * 1000 for c in conns for a, b in zip(c.answers, c.answers[1:])
            if b.at < t_ret]
    return {"max_ms": max(per_worker.values()), "per_worker_ms": per_worker,
            "poll_round_trip_ms": _median(gaps),
            "connections_per_worker": _count(owners),
            "answers": sum(len(c.answers) for c in conns),
            "ok_after_revoke": stale_200}


async def revoke(store: Any, session_config: Any, username: str, sid: str) -> float:
    """End the session as an admin does, through the store; when the end
    returned (time.monotonic), which every worker's refusal is timed from."""
    from gateway.store import REVOKED_BY_ADMIN
    if not await store.end(username, sid, REVOKED_BY_ADMIN, "bench", time.time(),
                           session_config.history):
        raise RuntimeError("store.end found no session")
    return time.monotonic()


def _count(owners: dict[int, int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for pid in owners.values():
        counts[pid] = counts.get(pid, 0) + 1
    return counts


SCENARIOS: dict[str, tuple[str, Callable[[Env], dict[str, Any]], bool]] = {
    # key: (title, function, needs the gateway)
    "1": ("hot path: authenticated small GET", hot_path, False),
    "2": ("rejections: no session", rejections, False),
    "3": ("1 MiB bodies and one huge body", bodies, False),
    "4": ("logins", logins, True),
    "5": ("1k vs 1M live sessions", many_sessions, True),
    "6": ("revocation latency", revocation, True),
}
