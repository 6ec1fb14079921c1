"""``python -m bench.topologies``: the gateway on Redis Cluster (issue 14).

Everything runs on 127.0.0.1 and is started and torn down here (also on
Ctrl-C): the nginx upstream of the other scenarios, one redis-server, and
Redis Clusters of three masters and three replicas (``redis-cli --cluster
create``). Every gateway is this tree with 2 workers, written by
``gwctl.write_config`` and then pointed at its store.

a. Hot path: a gateway on one Redis against one on a cluster, wrk in
   interleaved rounds as in bench.ab. Two variants: the default config
   (sessions cached per worker, no Redis call per request) and
   ``cache_ttl: 0s`` (a store read per request). Target: cluster / single
   >= 0.90 req/s.
b. Revocation across three instances (6 workers) on one cluster: a session
   polled on keep-alive connections held by every worker is ended through
   the store; per worker, the time from ``end`` returning to its first 401.
   Target: the slowest worker's median < 50 ms.
c. Failover drill: one gateway on a fresh cluster, requests with a valid,
   a revoked and no session and on a public path, while the master holding
   the valid session's slot is SIGKILLed; then, on another fresh cluster,
   another master (never the valid or the revoked session's). Nothing may
   get through without a valid session; the valid one should answer 200
   again and survive.

    .venv/bin/python -m bench.topologies             # ~6 min
    .venv/bin/python -m bench.topologies --quick     # ~3 min smoke run
    .venv/bin/python -m bench.topologies --only a,c
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import redis
import uvloop
import yaml

from . import gwctl, probe, report
from .ab import cpu_seconds
from .load import Conn, WrkResult, WrkSettings, poll_keepalive, wrk
from .procs import BENCH_DIR, Service, Stack, check_tools, redis_ping
from .scenarios import bench_usernames, revoke

USERS = bench_usernames() + ["alice", "bob"]
JSON = {"Accept": "application/json"}
PUBLIC = "/static/ok.txt"


def log(msg: str) -> None:
    print(msg, flush=True)


@dataclass(frozen=True)
class Profile:
    """``full`` keeps a whole run near 6 minutes on 2 cores; ``quick`` is a smoke run."""
    name: str
    rounds: int
    hot: WrkSettings
    warmup: int                 # seconds of wrk per gateway before the rounds
    revocations: int
    poll_connections: int       # per instance
    drill_seconds: int          # of load after the kill


PROFILES = {
    "full": Profile("full", rounds=5, hot=WrkSettings(2, 64, 8), warmup=3, revocations=5,
                    poll_connections=8, drill_seconds=15),
    "quick": Profile("quick", rounds=2, hot=WrkSettings(2, 64, 3), warmup=2, revocations=2,
                     poll_connections=8, drill_seconds=10),
}


# -- the cluster ------------------------------------------------------------------

@dataclass
class Cluster:
    """Six redis-servers made a cluster of three masters with a replica each."""
    nodes: list[Service]

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{n.port}" for n in self.nodes]

    def ask(self, *command: Any) -> Any:
        """A command to the first node that answers (a killed one does not)."""
        for node in self.nodes:
            if not node.alive():
                continue
            client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2)
            try:
                return client.execute_command(*command)
            except redis.ConnectionError:
                continue
            finally:
                client.close()
        raise RuntimeError("no cluster node answers")

    def slots(self) -> list[tuple[int, int, int]]:
        """``(first slot, last slot, master port)`` as a live node sees them."""
        return [(int(a), int(b), int(master[1])) for a, b, master, *_ in
                self.ask("CLUSTER", "SLOTS")]

    def master_of(self, key: str) -> int:
        slot = int(self.ask("CLUSTER", "KEYSLOT", key))
        return next(port for a, b, port in self.slots() if a <= slot <= b)

    def healthy(self) -> bool:
        """Every live node says ``cluster_state:ok`` and every master has an online replica."""
        for node in self.nodes:
            if not node.alive():
                continue
            client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2)
            try:
                if client.cluster("INFO").get("cluster_state") != "ok":
                    return False
                info = client.info("replication")
                if info["role"] == "master" and not any(
                        isinstance(v, dict) and v.get("state") == "online"
                        for k, v in info.items() if k.startswith("slave")):
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return True

    def subscribers(self) -> dict[int, int]:
        """Port -> pub/sub connections on that node: where the workers' revocation feeds are."""
        counts = {}
        for node in self.nodes:
            client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2)
            try:
                counts[node.port] = sum(1 for c in client.client_list() if int(c["sub"]) > 0)
            finally:
                client.close()
        return counts

    def kill(self, port: int) -> None:
        node = next(n for n in self.nodes if n.port == port)
        os.kill(node.pid, signal.SIGKILL)
        node.proc.wait()


def _port_pair(stack: Stack) -> int:
    """A free port whose cluster bus port (10000 above it) is free too; both leave the pool."""
    while True:
        port = stack.ports.take()
        bus = port + 10000
        if bus > 65535 or bus in stack.ports.used:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", bus))
        except OSError:
            continue
        stack.ports.used.add(bus)
        return port


def start_cluster(stack: Stack, name: str) -> Cluster:
    """As tests/conftest.py's RedisCluster, each node a Stack service (so torn down with it)."""
    nodes = []
    for _ in range(6):
        port = _port_pair(stack)
        d = stack.dir(f"{name}-{port}")
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(d),
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
                "--maxclients", "10000", "--loglevel", "warning"]
        nodes.append(stack.spawn(f"{name}-{port}", argv, port=port, dir=d,
                                 ready=lambda p=port: redis_ping(p)))
    cluster = Cluster(nodes)
    subprocess.run(["redis-cli", "--cluster", "create", *cluster.addresses,
                    "--cluster-replicas", "1", "--cluster-yes"],
                   check=True, capture_output=True, timeout=60)
    if not probe.wait_for(cluster.healthy, 30, 0.2):
        raise RuntimeError(f"{name}: not ok with every replica online within 30 s")
    return cluster


# -- the run --------------------------------------------------------------------

@dataclass
class Run:
    """What the scenarios share: the stack, the upstream, one Redis and one cluster (lazily)."""
    stack: Stack
    profile: Profile
    upstream: Service
    password_hash: str
    _single: Service | None = None
    _cluster: Cluster | None = None

    def single(self) -> Service:
        if self._single is None:
            self._single = self.stack.redis("redis-single")
        return self._single

    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = start_cluster(self.stack, "cluster")
        return self._cluster

    def gateway(self, name: str, store: Service | Cluster,
                session_extra: dict[str, str] | None = None,
                public: bool = False) -> tuple[gwctl.GatewayConfig, Service]:
        """A gateway on one Redis or a cluster; ``public``: ``/static/`` needs no session."""
        d, port = self.stack.dir(name), self.stack.ports.take()
        redis_port = store.nodes[0].port if isinstance(store, Cluster) else store.port
        cfg = gwctl.write_config(d, port=port, redis_port=redis_port,
                                 upstream_port=self.upstream.port, workers=2, usernames=USERS,
                                 hashed=self.password_hash, session_extra=session_extra)
        config = yaml.safe_load(cfg.path.read_text())
        if isinstance(store, Cluster):
            # The url's host is ignored under cluster: only scheme and credentials count.
            config["session"]["redis"] = {"url": f"redis://{store.addresses[0]}/0",
                                          "cluster": {"nodes": store.addresses}}
        if public:
            config["upstreams"][0]["public"] = ["/static/"]
        cfg.path.write_text(yaml.safe_dump(config, sort_keys=False))
        return cfg, self.stack.gateway(name, cfg.path, port)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _status(cfg: gwctl.GatewayConfig, headers: dict[str, str], path: str = "/") -> int:
    return gwctl.request(cfg.port, "GET", path, headers)[0]


async def _poll_spread(port: int, path: str, headers: dict[str, str], connections: int,
                       pids: list[int], deadline: float
                       ) -> tuple[asyncio.Event, asyncio.Future[list[Conn]], dict[int, int]]:
    """``poll_keepalive`` restarted (up to 3 times) until every one of ``pids``
    holds some of its connections: (its stop event, the poller, client port ->
    pid). Only this poller may be connected to ``port`` while it looks."""
    for _ in range(3):
        stop = asyncio.Event()
        poller = asyncio.ensure_future(poll_keepalive(port, path, headers, connections, stop,
                                                      deadline))
        await asyncio.sleep(0.5)
        owners = await asyncio.to_thread(probe.connection_owners, pids, port)
        if set(pids) <= set(owners.values()):
            return stop, poller, owners
        stop.set()
        await poller
    raise RuntimeError(f"127.0.0.1:{port}: a worker held none of {connections} polling "
                       "connections, 3 times")


def _sign_out(cfg: gwctl.GatewayConfig, cookie: str) -> int:
    """``POST /_gateway/logout`` as a script would: JSON, no Origin (303 when done)."""
    return gwctl.request(cfg.port, "POST", "/_gateway/logout",
                         {"Cookie": cookie, "Content-Type": "application/json", **JSON}, b"{}")[0]


# -- a. hot path ----------------------------------------------------------------

VARIANTS = (("default", {}), ("cache_ttl 0s", {"cache_ttl": "0s"}))


def hot_path(run: Run) -> dict[str, Any]:
    """Single Redis vs cluster, per variant, in interleaved rounds; req/s, p99, CPU-ms/req."""
    s = run.profile.hot
    out: dict[str, Any] = {"settings": s.describe(), "rounds": run.profile.rounds, "variants": {}}
    stores: dict[str, Service | Cluster] = {"single": run.single(), "cluster": run.cluster()}
    for v, (label, extra) in enumerate(VARIANTS):
        started: list[Service] = []
        try:
            sides: dict[str, tuple[gwctl.GatewayConfig, Service, dict[str, str]]] = {}
            for name, store in stores.items():
                cfg, svc = run.gateway(f"gw-{name}-{v}", store, extra)
                started.append(svc)
                headers = {"Cookie": gwctl.login(cfg, "bench"), **JSON}
                if _status(cfg, headers) != 200:
                    raise RuntimeError(f"{name} ({label}): the signed-in GET / is not 200")
                sides[name] = (cfg, svc, headers)
            for cfg, _, headers in sides.values():
                wrk(cfg.url + "/", WrkSettings(s.threads, s.connections, run.profile.warmup),
                    headers=headers)
            runs: dict[str, list[WrkResult]] = {n: [] for n in sides}
            cpu: dict[str, list[float]] = {n: [] for n in sides}
            noise: list[float] = []
            for r in range(run.profile.rounds):
                for name in (list(sides) if r % 2 == 0 else list(reversed(sides))):
                    cfg, svc, headers = sides[name]
                    before = cpu_seconds(svc.pid)
                    with probe.ForeignCpu() as gauge:
                        res = wrk(cfg.url + "/", s, headers=headers)
                    runs[name].append(res)
                    cpu[name].append((cpu_seconds(svc.pid) - before) * 1000 / max(1, res.requests))
                    noise.append(gauge.busy)
                    log(f"    {label:<13} round {r + 1} {name:<8} {res.rps:8,.0f} req/s  "
                        f"p99 {res.latency_ms.get('p99', 0):6.2f} ms  {cpu[name][-1]:.3f} CPU-ms/req"
                        f"  non-2xx {res.non_2xx}  errors {res.socket_errors}"
                        f"  (others used {gauge.busy:.0%} CPU)")
        finally:
            for svc in reversed(started):
                run.stack.stop(svc)
        result = {name: {"rps": _median([x.rps for x in xs]),
                         "p99_ms": _median([x.latency_ms.get("p99", 0) for x in xs]),
                         "cpu_ms_per_req": _median(cpu[name]),
                         "rounds": [round(x.rps, 1) for x in xs],
                         "requests": sum(x.requests for x in xs),
                         "non_2xx": sum(x.non_2xx for x in xs),
                         "socket_errors": sum(x.socket_errors for x in xs)}
                  for name, xs in runs.items()}
        ratio = result["cluster"]["rps"] / result["single"]["rps"]
        out["variants"][label] = {**result, "ratio_rps": ratio,
                                  "ratio_rounds": [round(c.rps / s.rps, 3) for c, s in
                                                   zip(runs["cluster"], runs["single"])],
                                  "ratio_p99": result["cluster"]["p99_ms"] / result["single"]["p99_ms"],
                                  "target_met": ratio >= 0.90,
                                  "others_cpu_max": max(noise)}
    return out


def hot_path_table(res: dict[str, Any]) -> str:
    rows = [f"**a. Hot path, cluster vs one Redis** ({res['settings']}, median of "
            f"{res['rounds']} interleaved rounds)\n",
            "| variant | single req/s | cluster req/s | ratio (target >= 0.90) | per-round "
            "ratios | single p99 ms | cluster p99 ms | CPU-ms/req single / cluster | non-2xx "
            "single / cluster |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, v in res["variants"].items():
        s, c = v["single"], v["cluster"]
        rows.append(f"| {label} | {s['rps']:,.0f} | {c['rps']:,.0f} | **{v['ratio_rps']:.2f}x** "
                    f"{'met' if v['target_met'] else 'NOT met'} | {min(v['ratio_rounds']):.2f}-"
                    f"{max(v['ratio_rounds']):.2f} | {s['p99_ms']:.2f} | "
                    f"{c['p99_ms']:.2f} | {s['cpu_ms_per_req']:.3f} / {c['cpu_ms_per_req']:.3f} | "
                    f"{s['non_2xx'] + s['socket_errors']} / {c['non_2xx'] + c['socket_errors']} |")
    return "\n".join(rows)


# -- b. revocation across instances --------------------------------------------------

INSTANCES = 3


def revocation(run: Run) -> dict[str, Any]:
    """Three gateways on one cluster; one warm-up trial, then ``profile.revocations``."""
    cluster = run.cluster()
    gateways = [run.gateway(f"gw-instance-{i}", cluster) for i in range(INSTANCES)]
    try:
        _revocation_trial(run, gateways)   # warm-up: every worker's first end is slower
        trials = []
        for i in range(run.profile.revocations):
            t = _revocation_trial(run, gateways)
            trials.append(t)
            log(f"    trial {i + 1}: end -> slowest worker rejects {t['max_ms']:.1f} ms  per worker "
                + ", ".join(f"{ms:.1f}" for ms in t["per_worker_ms"].values())
                + f" ms  stale 200s {t['ok_after_end']}  (poll round trip "
                f"{t['poll_round_trip_ms']:.1f} ms)")
    finally:
        for _, svc in reversed(gateways):
            run.stack.stop(svc)
    median = _median([t["max_ms"] for t in trials])
    return {"instances": INSTANCES, "workers": 2 * INSTANCES,
            "connections_per_instance": run.profile.poll_connections, "trials": trials,
            "median_max_ms": median, "worst_ms": max(t["max_ms"] for t in trials),
            "stale_200": sum(t["ok_after_end"] for t in trials),
            "target_met": median < 50}


def _revocation_trial(run: Run, gateways: list[tuple[gwctl.GatewayConfig, Service]]
                      ) -> dict[str, Any]:
    """As scenarios._revocation_trial, over every instance at once.

    Client ports can repeat across instances (one per destination), so
    connection owners are looked up per instance.
    """
    cookie = gwctl.login(gateways[0][0], "revoker")
    username, sid = gwctl.session_id(cookie)
    headers = {"Cookie": cookie, **JSON}
    workers = [probe.worker_pids(svc.pid) for _, svc in gateways]
    n = run.profile.poll_connections

    async def go() -> dict[str, Any]:
        from gateway.config import load_config
        from gateway.store import create_store
        session_config = load_config(gateways[0][0].path).session
        store = create_store(session_config)
        await store.ping()
        try:
            polls = [await _poll_spread(cfg.port, "/", headers, n, pids, time.monotonic() + 20)
                     for (cfg, _), pids in zip(gateways, workers)]
            try:
                t_ret = await revoke(store, session_config, username, sid)
                await asyncio.sleep(1.0)
            finally:
                for stop, _, _ in polls:
                    stop.set()
                conns = [await poller for _, poller, _ in polls]
        finally:
            await store.close()
        return {"t": t_ret, "owners": [owners for _, _, owners in polls], "conns": conns}

    res = uvloop.run(go())
    t_ret = res["t"]
    first: dict[str, float] = {}
    stale = 0
    statuses: Counter[int] = Counter()
    for i, (owners, conns) in enumerate(zip(res["owners"], res["conns"])):
        for conn in conns:
            after = [a for a in conn.answers if a.sent > t_ret]
            stale += sum(1 for a in after if a.status == 200)
            statuses.update(a.status for a in after)
            pid = owners.get(conn.local_port)
            rejected = next((a.at for a in conn.answers if a.status == 401), None)
            if pid is not None and rejected is not None:
                key = f"{i}/{pid}"
                first[key] = min(first.get(key, rejected), rejected)
    expected = [f"{i}/{pid}" for i, pids in enumerate(workers) for pid in pids]
    missing = [k for k in expected if k not in first]
    if missing:
        raise RuntimeError(f"workers (instance/pid) {missing} never rejected the ended session")
    per_worker = {k: max(0.0, (first[k] - t_ret) * 1000) for k in expected}
    gaps = [(b.at - a.at) * 1000 for conns in res["conns"] for c in conns
            for a, b in zip(c.answers, c.answers[1:]) if b.at < t_ret]
    return {"max_ms": max(per_worker.values()), "per_worker_ms": per_worker,
            "poll_round_trip_ms": _median(gaps), "ok_after_end": stale,
            "statuses_after_end": dict(statuses),
            "connections_per_worker": {f"{i}/{pid}": count for i, o in enumerate(res["owners"])
                                       for pid, count in Counter(o.values()).items()},
            "answers": sum(len(c.answers) for conns in res["conns"] for c in conns)}


def revocation_table(res: dict[str, Any]) -> str:
    return "\n".join([
        f"**b. Revocation across {res['instances']} instances** ({res['workers']} workers, one "
        f"cluster, {res['connections_per_instance']} polling connections per instance, "
        f"{len(res['trials'])} trials after a warm-up)\n",
        "| slowest worker, median (target < 50 ms) | slowest worker, worst | 200s to requests "
        "sent after the end | poll round trip (resolution) |",
        "|---:|---:|---:|---:|",
        f"| **{res['median_max_ms']:.1f} ms** {'met' if res['target_met'] else 'NOT met'} | "
        f"{res['worst_ms']:.1f} ms | {res['stale_200']} | "
        f"{_median([t['poll_round_trip_ms'] for t in res['trials']]):.1f} ms |"])


# -- c. failover drill -------------------------------------------------------------

DRILLS = ("the session's master", "another master")
BASELINE = 2.0      # seconds of load before the kill
# Concurrent keep-alive loops, per kind of request.
LOOPS = {"valid": 4, "revoked": 2, "none": 2, "public": 2}


def failover(run: Run) -> dict[str, Any]:
    """One drill per kind of master killed, each on a fresh cluster and gateway."""
    www = run.upstream.dir / "www" / "static"
    www.mkdir(mode=0o755, exist_ok=True)
    (www / "ok.txt").write_text("ok\n")
    (www / "ok.txt").chmod(0o644)
    return {"drill_seconds": run.profile.drill_seconds, "loops": LOOPS,
            "drills": {target: _drill(run, i, target) for i, target in enumerate(DRILLS)}}


def _drill(run: Run, i: int, target: str) -> dict[str, Any]:
    stack = run.stack
    cluster = start_cluster(stack, f"drill{i}")
    cfg, svc = run.gateway(f"gw-drill{i}", cluster, public=True)
    try:
        alice, bob = gwctl.login(cfg, "alice"), gwctl.login(cfg, "bob")
        if _sign_out(cfg, bob) != 303:
            raise RuntimeError("bob's sign-out did not answer 303")
        requests = {"valid": ({"Cookie": alice, **JSON}, "/"),
                    "revoked": ({"Cookie": bob, **JSON}, "/"),
                    "none": (JSON, "/"), "public": (JSON, PUBLIC)}
        expected = {"valid": 200, "revoked": 401, "none": 401, "public": 200}
        for kind, (headers, path) in requests.items():
            if _status(cfg, headers, path) != expected[kind]:
                raise RuntimeError(f"before the drill, {kind} did not answer {expected[kind]}")
        keys = uvloop.run(_keys_of(cfg, alice, bob))
        holders = {name: cluster.master_of(key) for name, key in keys.items()}
        masters = sorted({port for _, _, port in cluster.slots()})
        victim, held = _victim(target, holders, masters)
        log(f"    {target}: killing 127.0.0.1:{victim}, which holds "
            + (", ".join(held) or "none of the keys"))
        victim_slot = next(a for a, _, port in cluster.slots() if port == victim)
        feeds = cluster.subscribers()
        workers = probe.worker_pids(svc.pid)
        log_start = svc.log.stat().st_size

        async def go() -> dict[str, Any]:
            deadline = time.monotonic() + BASELINE + run.profile.drill_seconds + 15
            # The valid session's loops first, spread over both workers.
            headers, path = requests["valid"]
            stop, valid, owners = await _poll_spread(cfg.port, path, headers, LOOPS["valid"],
                                                     workers, deadline)
            loops = {"valid": valid, **{kind: asyncio.ensure_future(poll_keepalive(
                cfg.port, path, headers, LOOPS[kind], stop, deadline))
                for kind, (headers, path) in requests.items() if kind != "valid"}}
            await asyncio.sleep(BASELINE)
            t_kill = time.monotonic()
            cluster.kill(victim)
            failover = await asyncio.to_thread(_watch_failover, cluster, victim_slot, victim,
                                               t_kill, run.profile.drill_seconds)
            await asyncio.sleep(max(0.0, t_kill + run.profile.drill_seconds - time.monotonic()))
            stop.set()
            answers = {kind: await loop for kind, loop in loops.items()}
            return {"t_kill": t_kill, "failover": failover, "owners": owners,
                    "answers": answers}

        res = uvloop.run(go())
        out = _drill_figures(res, expected)
        out.update(killed=f"127.0.0.1:{victim}", holds=held, holders={
            name: f"127.0.0.1:{port}" for name, port in holders.items()},
            feeds_on_killed=feeds.get(victim, 0), feeds_by_node=feeds)
        out["valid_after"] = _status(cfg, {"Cookie": alice, **JSON})
        out["sessions_lost"] = out["valid_401_after_kill"] > 0 or out["valid_after"] == 401
        out["fresh_sign_in_out"] = _fresh_sign_in_out(cfg)
        stack.stop(svc)     # so that what it logs on its way out is counted too
        out["gateway_log"] = _log_lines(svc, log_start)
        return out
    finally:
        stack.stop(svc)
        for node in reversed(cluster.nodes):
            stack.stop(node)


async def _keys_of(cfg: gwctl.GatewayConfig, alice: str, bob: str) -> dict[str, str]:
    """The store's own names for the keys the drill's requests touch."""
    from gateway.config import load_config
    from gateway.store import create_store
    store = create_store(load_config(cfg.path).session)
    try:
        user, sid = gwctl.session_id(alice)
        other, other_sid = gwctl.session_id(bob)
        return {"alice's session and index": store.session_key(user, sid),
                "alice's owner entry": store.owner_key(sid),
                "bob's ended record": store.ended_key(other, other_sid),
                "global listing": store.all_key,
                "address listing": store.ip_key("127.0.0.1")}
    finally:
        await store.close()


def _victim(target: str, holders: dict[str, int], masters: list[int]) -> tuple[int, list[str]]:
    """The master to kill and the keys it holds: the session's own, or of the
    others (never alice's or bob's slot) the one holding the fewest of the keys."""
    if target == DRILLS[0]:
        port = holders["alice's session and index"]
    else:
        mine = {holders["alice's session and index"], holders["bob's ended record"]}
        port = min((m for m in masters if m not in mine),
                   key=lambda m: sum(1 for p in holders.values() if p == m))
    return port, [name for name, p in holders.items() if p == port]


def _watch_failover(cluster: Cluster, slot: int, victim: int, t_kill: float,
                    within: float) -> dict[str, float | None]:
    """Seconds after the kill until a live node says ``cluster_state:fail`` (with
    Redis's default ``cluster-require-full-coverage yes`` every node then refuses
    every key), and until a new master holds ``slot`` with the state ok again."""
    fail = None
    while time.monotonic() < t_kill + within:
        try:
            ok = b"cluster_state:ok" in cluster.ask("CLUSTER", "INFO")
            if not ok and fail is None:
                fail = time.monotonic() - t_kill
            if ok and next(p for a, b, p in cluster.slots() if a <= slot <= b) != victim:
                return {"state_fail_s": fail, "failover_s": time.monotonic() - t_kill}
        except (RuntimeError, redis.RedisError):
            pass
        time.sleep(0.05)
    return {"state_fail_s": fail, "failover_s": None}


def _drill_figures(res: dict[str, Any], expected: dict[str, int]) -> dict[str, Any]:
    t_kill = res["t_kill"]
    answers: dict[str, list[Conn]] = res["answers"]
    flat = {kind: sorted((a for c in conns for a in c.answers), key=lambda a: a.sent)
            for kind, conns in answers.items()}
    valid = [a for a in flat["valid"] if a.sent > t_kill]
    bad = [a for a in valid if a.status != 200]
    if not bad:
        recovery: float | None = 0.0
    else:
        good = [a for a in valid if a.status == 200 and a.sent > bad[-1].sent]
        recovery = good[0].at - t_kill if good else None
    by_worker: dict[str, Counter[int]] = {}
    for conn in answers["valid"]:
        pid = res["owners"].get(conn.local_port, 0)
        by_worker.setdefault(str(pid), Counter()).update(
            a.status for a in conn.answers if a.sent > t_kill)
    return {
        "let_through": sum(1 for kind in ("revoked", "none") for a in flat[kind]
                           if a.status == 200),
        "statuses": {kind: dict(Counter(a.status for a in xs)) for kind, xs in flat.items()},
        "unexpected": {kind: sum(1 for a in xs if a.status != expected[kind])
                       for kind, xs in flat.items()},
        "valid_503": sum(1 for a in valid if a.status == 503),
        # (seconds after the kill it was sent, ms it took, status), the first 50
        "valid_not_200": [(round(a.sent - t_kill, 3), round((a.at - a.sent) * 1000, 1), a.status)
                          for a in bad[:50]],
        "valid_slowest_ms": max(((a.at - a.sent) * 1000 for a in valid), default=0.0),
        "valid_401_after_kill": sum(1 for a in valid if a.status == 401),
        "valid_by_worker_after_kill": {pid: dict(c) for pid, c in by_worker.items()},
        "recovery_s": recovery,
        # How long the 200s after ``recovery_s`` went on before the load stopped.
        "steady_for_s": valid[-1].at - t_kill - recovery if recovery is not None and valid
        else None,
        **res["failover"],
        "requests": sum(len(xs) for xs in flat.values()),
    }


def _fresh_sign_in_out(cfg: gwctl.GatewayConfig) -> dict[str, Any]:
    """After the drill: alice signs in, is let through, signs out, is refused."""
    try:
        cookie = gwctl.login(cfg, "alice")
    except RuntimeError as exc:
        return {"ok": False, "error": str(exc)}
    steps = {"get": _status(cfg, {"Cookie": cookie, **JSON}),
             "sign_out": _sign_out(cfg, cookie),
             "get_after_sign_out": _status(cfg, {"Cookie": cookie, **JSON})}
    return {"ok": steps == {"get": 200, "sign_out": 303, "get_after_sign_out": 401}, **steps}


def _log_lines(svc: Service, start: int) -> dict[str, int]:
    """The gateway's warnings and errors since ``start`` (bytes), counted by text."""
    with open(svc.log, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    found: Counter[str] = Counter()
    for line in text.splitlines():
        for level in (" WARNING ", " ERROR ", " CRITICAL "):
            if level in line:
                found[level.strip() + " " + line.split(level, 1)[1][:200]] += 1
    return dict(found.most_common(10))


def failover_table(res: dict[str, Any]) -> str:
    rows = [f"**c. Failover drill** (one gateway, 2 workers; loops per kind {res['loops']}; "
            f"{BASELINE:g} s of load, SIGKILL, {res['drill_seconds']} s more; times are after "
            "the kill)\n",
            "| master killed | worker feeds on it | let through without a valid session | "
            "valid: 503s | valid: slowest answer | cluster_state fail / ok again | valid answers "
            "200 again, steadily | sessions lost | public path not 200 | fresh sign-in, sign-out |",
            "|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for target, d in res["drills"].items():
        fo = " / ".join("-" if x is None else f"{x:.1f} s"
                        for x in (d["state_fail_s"], d["failover_s"]))
        rec = ("**never**" if d["recovery_s"] is None else "never refused"
               if not d["valid_not_200"] else f"{d['recovery_s']:.2f} s")
        rows.append(f"| {target}, holding {', '.join(d['holds']) or 'none of the keys'} | "
                    f"{d['feeds_on_killed']} | **{d['let_through']}** | {d['valid_503']} | "
                    f"{d['valid_slowest_ms']:.0f} ms | {fo} | {rec} | "
                    f"{'**yes**' if d['sessions_lost'] else 'no'} | {d['unexpected']['public']} | "
                    f"{'ok' if d['fresh_sign_in_out']['ok'] else '**failed**'} |")
    return "\n".join(rows)


SCENARIOS: dict[str, tuple[str, Callable[[Run], dict[str, Any]],
                           Callable[[dict[str, Any]], str]]] = {
    "a": ("hot path: cluster vs one Redis", hot_path, hot_path_table),
    "b": ("revocation across three instances", revocation, revocation_table),
    "c": ("failover drill under load", failover, failover_table),
}


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.topologies", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs, 2 rounds, 2 trials")
    p.add_argument("--only", default=",".join(SCENARIOS), metavar="SCENARIOS",
                   help="comma-separated: " + "; ".join(f"{k} {v[0]}" for k, v in SCENARIOS.items()))
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dirs (logs, configs)")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if any(s not in SCENARIOS for s in only):
        p.error(f"unknown scenario in {args.only!r}; choose from {', '.join(SCENARIOS)}")
    check_tools()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    profile = PROFILES["quick" if args.quick else "full"]
    t0 = time.monotonic()
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "profile": profile.name,
        "command": " ".join([".venv/bin/python -m bench.topologies",
                             *map(shlex.quote, argv if argv is not None else sys.argv[1:])]),
        "scenarios": {}, "failed": {}}
    stack = Stack(keep=args.keep_tmp)
    try:
        log(f"starting services in {stack.root}")
        run = Run(stack, profile, stack.upstream(1 << 20), gwctl.password_hash())
        for key in only:
            title, scenario, _ = SCENARIOS[key]
            log(f"\n== {key}. {title}")
            t = time.monotonic()
            try:
                results["scenarios"][key] = scenario(run)
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                results["failed"][key] = str(exc)
                log(f"   FAILED: {exc}")
            log(f"   ({time.monotonic() - t:.0f} s)")
    finally:
        stack.close()
        if args.keep_tmp:
            log(f"temp dirs kept in {stack.root}")
    results["wall_seconds"] = time.monotonic() - t0
    results["machine"] = report.machine()
    for key, res in results["scenarios"].items():
        log("\n" + SCENARIOS[key][2](res))
    for key, why in results["failed"].items():
        log(f"\nscenario {key} failed: {why}")
    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-topologies-{profile.name}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    log(f"\nwrote {path.relative_to(BENCH_DIR.parent)}; total "
        f"{results['wall_seconds'] / 60:.1f} min")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: every service was stopped and its temp dir removed", file=sys.stderr)
        sys.exit(130)
