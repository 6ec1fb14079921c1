"""Turn results into the stdout table, BENCHMARKS.md and the chart.

Every figure is laid out once as a ``Table`` and rendered both as aligned
text (stdout) and as Markdown, so the two can never disagree. Ratios are
always gateway / peer: above 1 means the gateway has more of it (req/s,
MiB/s) or, for latencies, that it is slower.
"""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .scenarios import AUTHREQ, CADDY, GATEWAY, NGINX, SCENARIOS

PEERS = (NGINX, CADDY, AUTHREQ)
CHANGES_HEADING = "## What changed and what it bought"
CHANGES_PLACEHOLDER = ("_For the lead to fill in: each optimisation, and what it bought in the "
                       "figures below. This section is kept as it is when the harness rewrites "
                       "the file._\n")

HOW_TO_RUN = """\
The benchmark harness lives in `bench/`. From the repository root run
`.venv/bin/python -m bench` (about 11 minutes on 2 cores; `--quick` for a
2-minute smoke run, `--only 1,3` for some scenarios, `--help` for the rest).
It needs `nginx`, `caddy`, `wrk`, `redis-server` and `curl` (`apt-get install
-y nginx caddy wrk redis-server`) and the Python packages in
`bench/requirements.txt` (`.venv/bin/pip install -r bench/requirements.txt`).
It starts an nginx upstream, Redis, the gateway and three peers (nginx
`proxy_pass`, Caddy `reverse_proxy`, nginx `auth_request` + a small aiohttp
auth service) on free loopback ports, each in its own temp dir, drives them
with `wrk` and tears everything down at the end, also on Ctrl-C. A full run of
all scenarios rewrites this file (keeping the section below) and
`bench/chart.png`; every run saves its raw figures as JSON under
`bench/results/`.
"""


# -- machine and versions -------------------------------------------------------

def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _pkg(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    wrk_line = _first_line(["wrk", "-v"])
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kib / 2**20:.1f} GiB",
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "aiohttp": _pkg("aiohttp"),
        "uvloop": _pkg("uvloop"),
        "redis-py": _pkg("redis"),
        "nginx": _first_line(["nginx", "-v"]).replace("nginx version: nginx/", ""),
        "caddy": _first_line(["caddy", "version"]),
        "wrk": " ".join(wrk_line.split()[:2]),
        "redis": _version_word(_first_line(["redis-server", "--version"])),
        "curl": " ".join(_first_line(["curl", "--version"]).split()[:2]),
        "gateway": _gateway_version(),
    }


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _version_word(line: str) -> str:
    m = re.search(r"v=(\S+)", line)
    return m.group(1) if m else line


def _gateway_version() -> str:
    version = _pkg("gateway")
    repo = Path(__file__).resolve().parent.parent
    commit = _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    if re.fullmatch(r"[0-9a-f]{4,40}", commit):
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "gateway"],
                               capture_output=True, text=True).stdout.strip()
        return f"{version} (commit {commit}{', with uncommitted changes' if dirty else ''})"
    return f"{version} (no commit yet)"


# -- tables ---------------------------------------------------------------------

@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c)
                  for i, c in enumerate(self.columns)]
        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths)))
        out = [self.title, line(self.columns), line(["-" * w for w in widths])]
        out += [line(r) for r in self.rows]
        out += [f"  {n}" for n in self.notes]
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
               "|" + "|".join(["---"] + ["---:"] * (len(self.columns) - 1)) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.notes:
            out += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(out)


def _f(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}x"


def _health(res: dict[str, Any], expect_rejected: bool = False) -> list[str]:
    """Say so when a contender answered errors, so its figure is not taken at face value."""
    notes = []
    for name, r in res.items():
        bad = r["requests"] - r["non_2xx"] if expect_rejected else r["non_2xx"]
        if bad:
            what = "non-401 answers" if expect_rejected else "answers with status >= 400"
            notes.append(f"WARNING {name}: {bad} of {r['requests']} {what}")
        if r.get("socket_errors"):
            notes.append(f"WARNING {name}: {r['socket_errors']} socket errors/timeouts")
    return notes


def _range(r: dict[str, Any]) -> str:
    """Lowest and highest round, so a noisy median shows as one."""
    if "rps_min" not in r or len(r.get("rounds", [])) < 2:
        return "-"
    return f"{r['rps_min']:,.0f}-{r['rps_max']:,.0f}"


def _vs_peers(res: dict[str, Any], key: str) -> list[str]:
    g = res.get(GATEWAY, {}).get(key)
    return [_ratio(g, res[p][key]) if p in res else "-" for p in PEERS]


def _gw_vs(res: dict[str, Any], peer: str, key: str) -> float | None:
    g, p = res.get(GATEWAY, {}).get(key), res.get(peer, {}).get(key)
    return g / p if g and p else None


def targets(sc: dict[str, Any]) -> Table | None:
    """The issue's targets, each judged from this run's own figures."""
    rows: list[list[str]] = []

    def judge(ok: bool) -> str:
        return "yes" if ok else "**no**"

    if "1" in sc and (r := _gw_vs(sc["1"]["results"], AUTHREQ, "rps")):
        res = sc["1"]["results"]
        rows.append([f"hot path >= 1.0x {AUTHREQ}",
                     f"{r:.2f}x ({res[GATEWAY]['rps']:,.0f} vs {res[AUTHREQ]['rps']:,.0f} req/s)",
                     judge(r >= 1.0)])
    if "1" in sc and "2" in sc and GATEWAY in sc["2"]["results"] and GATEWAY in sc["1"]["results"]:
        rej, hot = sc["2"]["results"][GATEWAY]["rps"], sc["1"]["results"][GATEWAY]["rps"]
        rows.append(["rejections >= 3x the hot path", f"{rej / hot:.2f}x ({rej:,.0f} vs {hot:,.0f} req/s)",
                     judge(rej / hot >= 3.0)])
    if "3" in sc and GATEWAY in sc["3"]["download"] and NGINX in sc["3"]["download"]:
        s3 = sc["3"]
        ratios = {"1 MiB download": _gw_vs(s3["download"], NGINX, "mib_s"),
                  "1 MiB upload": _gw_vs(s3["upload"], NGINX, "mib_s"),
                  "1 GiB download": _gw_vs({n: b["download"] for n, b in s3["big"].items()},
                                           NGINX, "mib_s"),
                  "1 GiB upload": _gw_vs({n: b["upload"] for n, b in s3["big"].items()},
                                         NGINX, "mib_s")}
        rows.append([f"streaming >= 0.5x {NGINX} MiB/s",
                     ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items() if v),
                     judge(all(v and v >= 0.5 for v in ratios.values()))])
        peak = max(s3["big"][GATEWAY][d]["peak_worker_rss_mib"] for d in ("download", "upload"))
        rows.append(["peak RSS while 1 GiB streams < 100 MiB",
                     f"{peak:.1f} MiB (largest gateway worker)", judge(peak < 100)])
    if "5" in sc:
        default = sorted((r for r in sc["5"]["results"] if r["variant"] == "default"),
                         key=lambda r: r["sessions"])
        if len(default) >= 2 and default[0]["rps"]:
            r = default[-1]["rps"] / default[0]["rps"]
            rows.append([f"hot path at {default[-1]['sessions']:,} sessions within 10% of "
                         f"{default[0]['sessions']:,}", f"{r:.2f}x req/s", judge(r >= 0.9)])
    if "6" in sc:
        rows.append(["revocation effectively instant on every worker",
                     "; ".join(f"{label}: median {v['median_max_ms']:.0f} ms, worst "
                               f"{v['worst_ms']:.0f} ms, {sum(t['ok_after_revoke'] for t in v['trials'])}"
                               f" requests let through after the revoke returned"
                               for label, v in sc["6"]["variants"].items()), "see scenario 6"])
    if not rows:
        return None
    return Table("Against the targets (every ratio from this run)", ["target", "figure", "met"], rows)


def tables(results: dict[str, Any]) -> list[Table]:
    sc = results["scenarios"]
    out: list[Table] = []
    if (t := targets(sc)) is not None:
        out.append(t)
    rounds = results["rounds"]
    peer_cols = [f"gw/{p}" for p in PEERS]

    if "1" in sc:
        res = sc["1"]["results"]
        rows = [[n, _f(r["rps"]), _range(r), _f(r["p50_ms"], 2), _f(r["p99_ms"], 2)]
                for n, r in res.items()]
        out.append(Table(f"1. Hot path, authenticated GET / ({sc['1']['settings']}, median of {rounds})",
                         ["contender", "req/s", "rounds req/s", "p50 ms", "p99 ms"], rows, _health(res)))
        if GATEWAY in res:
            out.append(Table("1. Hot path ratios, gateway / peer", ["figure", *peer_cols],
                             [["req/s", *_vs_peers(res, "rps")],
                              ["p50", *_vs_peers(res, "p50_ms")],
                              ["p99", *_vs_peers(res, "p99_ms")]]))
    if "2" in sc:
        res = sc["2"]["results"]
        rows = [[n, _f(r["rps"]), _range(r), _f(r["p50_ms"], 2), _f(r["p99_ms"], 2)]
                for n, r in res.items()]
        notes = _health(res, expect_rejected=True)
        if GATEWAY in res and AUTHREQ in res:
            notes.append(f"gateway / {AUTHREQ}: req/s {_ratio(res[GATEWAY]['rps'], res[AUTHREQ]['rps'])}")
        out.append(Table(f"2. Rejections, no session, 401 ({sc['2']['settings']}, median of {rounds})",
                         ["contender", "req/s", "rounds req/s", "p50 ms", "p99 ms"], rows, notes))
    if "3" in sc:
        s3 = sc["3"]
        down, up = s3["download"], s3["upload"]
        rows = [[n, _f(down[n]["mib_s"]), _f(up[n]["mib_s"]), _f(down[n]["p99_ms"], 1),
                 _f(up[n]["p99_ms"], 1)] for n in down]
        notes = _health(down) + _health(up)
        if GATEWAY in down:
            for p in PEERS:
                if p in down:
                    notes.append(f"gateway / {p}: download {_ratio(down[GATEWAY]['mib_s'], down[p]['mib_s'])}, "
                                 f"upload {_ratio(up[GATEWAY]['mib_s'], up[p]['mib_s'])}")
        out.append(Table(f"3. 1 MiB bodies, MiB/s ({s3['settings']}, median of {rounds})",
                         ["contender", "download MiB/s", "upload MiB/s", "down p99 ms", "up p99 ms"],
                         rows, notes))
        size = s3["big_size"] // 2**20
        rows = []
        for n, big in s3["big"].items():
            for d in ("download", "upload"):
                b = big[d]
                rows.append([f"{n} {d}", _f(b["mib_s"]),
                             ", ".join(f"{x:,.0f}" for x in b.get("rounds", [])) or "-",
                             _f(b["start_worker_rss_mib"]), _f(b["peak_worker_rss_mib"]),
                             _f(b["peak_total_rss_mib"]), str(b["processes"])])
        notes = ["RSS in MiB. 'one worker' = the largest VmHWM (kernel peak, reset "
                 "before each transfer) of any one serving process; 'all procs' = the "
                 "largest sum of VmRSS over the whole process tree (master, workers, "
                 "helpers) seen by polling. Peaks are the largest of all rounds."]
        big = s3["big"]
        if GATEWAY in big:
            for p in PEERS:
                if p in big:
                    notes.append(f"gateway / {p}: download "
                                 f"{_ratio(big[GATEWAY]['download']['mib_s'], big[p]['download']['mib_s'])}, "
                                 f"upload {_ratio(big[GATEWAY]['upload']['mib_s'], big[p]['upload']['mib_s'])}")
        out.append(Table(f"3. One {size} MiB body alone, memory polled every 20 ms "
                         f"(median of {rounds})",
                         ["contender", "MiB/s", "rounds MiB/s", "RSS before", "peak RSS one worker",
                          "peak RSS all procs", "procs"], rows, notes))
    if "4" in sc:
        s4 = sc["4"]
        lg, pl = s4["logins"], s4["paced"]
        out.append(Table(f"4. Logins, POST /_gateway/api/login ({s4['settings']}, {s4['users']} users, "
                         f"median of {rounds})",
                         ["figure", "value"],
                         [["logins/s", _f(lg["rps"])], ["login p50 ms", _f(lg["p50_ms"], 1)],
                          ["login p99 ms", _f(lg["p99_ms"], 1)]],
                         _health({"logins": lg})))
        a, b = s4["hot_alone"], s4["hot_beside_logins"]
        notes = _health({"alone": a, "beside logins": b})
        notes.append(f"logins beside: {pl['ok']} of {pl['sent']} answered 200, "
                     f"{_f(pl['rate'])}/s (target {_f(pl['target_rate'])}/s), "
                     f"login p50 {_f(pl['p50_ms'])} ms, p99 {_f(pl['p99_ms'])} ms")
        out.append(Table(f"4. Hot path alone vs beside open-loop logins at ~{_f(pl['target_rate'])}/s",
                         ["hot path", "req/s", "p50 ms", "p99 ms"],
                         [["alone", _f(a["rps"]), _f(a["p50_ms"], 2), _f(a["p99_ms"], 2)],
                          ["beside logins", _f(b["rps"]), _f(b["p50_ms"], 2), _f(b["p99_ms"], 2)],
                          ["ratio", _ratio(b["rps"], a["rps"]), _ratio(b["p50_ms"], a["p50_ms"]),
                           _ratio(b["p99_ms"], a["p99_ms"])]], notes))
    if "5" in sc:
        s5 = sc["5"]
        res = s5["results"]
        rows, notes = [], []
        for variant in dict.fromkeys(r["variant"] for r in res):
            group = sorted((r for r in res if r["variant"] == variant), key=lambda r: r["sessions"])
            for r in group:
                rows.append([f"{r['sessions']:,}", variant, f"{r['keys']:,}", _f(r["redis_mib"]),
                             _f(r["load_seconds"]), _f(r["rps"]), _range(r), _f(r["p50_ms"], 2),
                             _f(r["p99_ms"], 2)])
            few, many = group[0], group[-1]
            rows.append(["many / few", variant, "", "", "", _ratio(many["rps"], few["rps"]), "",
                         _ratio(many["p50_ms"], few["p50_ms"]), _ratio(many["p99_ms"], few["p99_ms"])])
            notes += _health({f"{r['sessions']:,} {variant}": r for r in group})
        cli = s5["cli_revoke_big"]
        biggest = max(r["sessions"] for r in res)
        notes.append(f"'gateway sessions revoke --id' with {biggest:,} sessions took "
                     f"{cli['seconds']:.2f} s (exit {cli['exit']}, the session then answered "
                     f"{cli['status_after']})")
        notes.append("'default' is the config of scenario 1 (session cache on if the gateway has "
                     "one); 'cache_ttl 0s' reads Redis on every request.")
        out.append(Table(f"5. Hot path vs live sessions in Redis ({s5['settings']}, median of {rounds})",
                         ["sessions", "gateway config", "Redis keys", "Redis MiB", "load s",
                          "req/s", "rounds req/s", "p50 ms", "p99 ms"], rows, notes))
    if "6" in sc:
        s6 = sc["6"]
        rows, notes = [], []
        for label, v in s6["variants"].items():
            for i, t in enumerate(v["trials"], 1):
                rows.append([f"{label} #{i}", _f(t["max_ms"]),
                             ", ".join(f"{x:.1f}" for x in t["per_worker_ms"].values()),
                             _f(t.get("poll_round_trip_ms"), 1),
                             ", ".join(str(x) for x in t["connections_per_worker"].values()),
                             str(t["ok_after_revoke"])])
            notes.append(f"{label}: median {v['median_max_ms']:.1f} ms, worst {v['worst_ms']:.1f} ms")
        cli = s6["cli_revoke"]
        notes += ["A figure near the poll round trip means 'at the next request on that worker'. "
                  "'default' is the scenario-1 gateway; 'cache_ttl 0s' reads Redis on every request.",
                  "'200s after revoke' = requests sent after the revoke had returned that were "
                  "still let through (served from a stale cache); 0 is the goal.",
                  f"'gateway sessions revoke --id' took {cli['seconds']:.2f} s wall (process start "
                  f"included), exit {cli['exit']}, the session then answered {cli['status_after']}"]
        out.append(Table(f"6. Revocation: store.end() returned -> first 401 on every worker "
                         f"({s6['connections']} keep-alive connections polling)",
                         ["gateway, trial", "last worker ms", "per worker ms", "poll round trip ms",
                          "connections per worker", "200s after revoke"], rows, notes))
    noise = results.get("noise", {})
    if noise:
        titles = scenario_titles()
        rows = [[f"{k}. {titles[k]}", f"{v['mean']:.0%}", f"{v['max']:.0%}",
                 "; ".join(v.get("top", [])[:1]) or "-"] for k, v in noise.items()]
        out.append(Table("Noise: CPU share used by processes outside the benchmark while measuring",
                         ["scenario", "mean", "max", "busiest other process (share in one run)"], rows,
                         ["Share of all cores. Above a few percent, another job shared the "
                          "machine and the figures of that scenario are lower and noisier."]))
    return out


# -- outputs --------------------------------------------------------------------

def text_report(results: dict[str, Any]) -> str:
    return "\n\n".join(t.text() for t in tables(results))


def _preserved_changes(path: Path) -> str:
    if not path.exists():
        return CHANGES_PLACEHOLDER
    text = path.read_text()
    start = text.find(CHANGES_HEADING)
    if start < 0:
        return CHANGES_PLACEHOLDER
    body = text[start + len(CHANGES_HEADING):]
    end = re.search(r"^## ", body, re.M)
    kept = (body[:end.start()] if end else body).strip("\n")
    return kept + "\n" if kept.strip() else CHANGES_PLACEHOLDER


def markdown(results: dict[str, Any], path: Path, chart: Path | None) -> str:
    m = results["machine"]
    lines = ["# Benchmarks", "", HOW_TO_RUN, CHANGES_HEADING, "", _preserved_changes(path).rstrip("\n"),
             "", "## Last run", "",
             f"- date: {results['started']}, profile `{results['profile']}`, "
             f"{results['rounds']} interleaved round(s), wall time {results['wall_seconds'] / 60:.1f} min",
             f"- command: `{results['command']}`",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM, {m['os']}, kernel {m['kernel']}",
             f"- versions: Python {m['python']}, aiohttp {m['aiohttp']}, uvloop {m['uvloop']}, "
             f"redis-py {m['redis-py']}, nginx {m['nginx']}, Caddy {m['caddy']}, {m['wrk']}, "
             f"Redis {m['redis']}, {m['curl']}, gateway {m['gateway']}",
             f"- gateway: {results['workers']} workers, Redis session store; peers: nginx and the auth "
             f"service with {results['workers']} workers, Caddy with GOMAXPROCS = cores",
             ]
    noisy = {k: v for k, v in results.get("noise", {}).items() if v["mean"] > 0.05}
    if noisy:
        lines.append("- **noise**: other jobs on the machine used "
                     + ", ".join(f"{v['mean']:.0%} on average (up to {v['max']:.0%}) in scenario {k}"
                                 for k, v in noisy.items())
                     + " of the CPU; those figures are lower and noisier than on an idle machine "
                       "(see the Noise table)")
    for key, why in results.get("skipped", {}).items():
        lines.append(f"- scenario {key} skipped: {why}")
    lines.append("")
    if chart is not None:
        lines += [f"![scenarios 1 and 3]({os.path.relpath(chart, path.parent)})", ""]
    for t in tables(results):
        lines += [t.markdown(), ""]
    lines += ["## How each scenario is measured", "", METHOD]
    return "\n".join(lines)


METHOD = """\
Everything runs on one machine over 127.0.0.1, so the load generator, the
upstream, Redis and the contender share the same cores: figures compare
contenders with each other on this box, not with other machines. Every
contender proxies to the same nginx upstream (`bench/peers/upstream.nginx.conf`),
is driven by the same `wrk` command and Lua script (`bench/lua/bench.lua`), and
is checked with one request for the expected status before it is measured.
Each scenario first warms every contender up, then runs interleaved rounds
(A B C D A B C D ...) and reports medians.

1. **Hot path**: `GET /` with a valid session cookie (the upstream answers a
   6-byte body). nginx and Caddy get the same headers and do no
   authentication: they are the floor. The `auth_request` peer checks an
   HS256 JWT cookie and does one Redis GET per request in its aiohttp service.
2. **Rejections**: `GET /` with `Accept: application/json` and no cookie;
   every answer must be 401 (the gateway's JSON error, nginx's 401 page for
   the `auth_request` peer).
3. **Bodies**: `GET /1m` (1 MiB file) and `POST /upload` with a 1 MiB body
   (the upstream reads the whole body, then answers 200); MiB/s = requests/s x
   1 MiB. Then one 1 GiB download (sparse file) and one 1 GiB upload (`curl -T`
   of a sparse file, streamed) alone through each contender, in interleaved
   rounds (median MiB/s), while `/proc/<pid>/status` of its whole process
   tree is polled every 20 ms; VmHWM is reset before each transfer through
   `/proc/<pid>/clear_refs`.
4. **Logins**: `POST /_gateway/api/login` with JSON credentials, rotating
   over 64 users (argon2id hashes with argon2-cffi's default parameters), every
   answer must be 200 with a cookie (closed loop, wrk). Then the hot path
   alone vs the hot path while logins arrive open-loop at the measured rate
   (a small aiohttp client sends one every 1/rate s whatever the answers).
5. **Live sessions**: two fresh Redis servers, one holding the small and one
   the large number of sessions, created through the gateway's own
   `RedisSessionStore.create` (run against a recording client, its calls
   streamed to `redis-cli --pipe`; 4 sessions per synthetic user). Each Redis
   gets a gateway with the scenario-1 config and, when the gateway has a
   session cache, one with `cache_ttl: 0s` that reads Redis on every request;
   the hot path runs against all of them, interleaved. Also times
   `gateway sessions revoke --id` against the large store.
6. **Revocation**: a fresh session is polled back to back on 64 keep-alive
   connections (mapped to gateway worker processes through `/proc/net/tcp`);
   `store.end()` is called, and for every worker the time from the call's
   return to the first 401 on one of its connections is taken; the table shows
   the slowest worker per trial (after one warm-up trial). Requests still
   queued in a worker when the revoke returns are answered after it, so the
   figure is about one poll round trip even when revocation is instant; the
   count of requests *sent* after the revoke returned that still got 200 shows
   a stale cache directly. Trials alternate between the scenario-1 gateway and
   one with `cache_ttl: 0s`.
"""


def chart(results: dict[str, Any], path: Path) -> Path | None:
    """Bars for scenario 1 (req/s, p99) and 3 (download and upload MiB/s)."""
    sc = results["scenarios"]
    if "1" not in sc and "3" not in sc:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if "1" in sc:
        res = sc["1"]["results"]
        panels += [("1. hot path req/s", {n: r["rps"] for n, r in res.items()}),
                   ("1. hot path p99 ms (lower is better)", {n: r["p99_ms"] for n, r in res.items()})]
    if "3" in sc:
        panels += [("3. 1 MiB download MiB/s", {n: r["mib_s"] for n, r in sc["3"]["download"].items()}),
                   ("3. 1 MiB upload MiB/s", {n: r["mib_s"] for n, r in sc["3"]["upload"].items()})]
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, grid = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    axes = [ax for row in grid for ax in row]
    colors = {GATEWAY: "#d62728", NGINX: "#1f77b4", CADDY: "#2ca02c", AUTHREQ: "#9467bd"}
    for ax, (title, data) in zip(axes, panels):
        names = list(data)
        bars = ax.bar(range(len(names)), [data[n] for n in names],
                      color=[colors.get(n, "#7f7f7f") for n in names])
        ax.bar_label(bars, fmt="%.0f" if max(data.values()) >= 100 else "%.2f", fontsize=8)
        ax.set_xticks(range(len(names)), [n.replace("+", "+\n") for n in names], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"gateway vs peers ({results['machine']['cores']} cores, profile "
                 f"{results['profile']}, {results['started']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scenario_titles() -> dict[str, str]:
    return {k: v[0] for k, v in SCENARIOS.items()}
