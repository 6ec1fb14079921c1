"""Prometheus metrics at ``GET /metrics``, right across worker processes.

``prometheus-client`` in multiprocess mode: each worker writes its values
to memory-mapped files in one folder (``PROMETHEUS_MULTIPROC_DIR``, which
``gateway run`` makes fresh for its workers when the operator did not set
one), and a scrape, whichever worker answers it, adds them all up. With one
process the values live in memory.

What is counted, and where, so that the hot path pays little: a request's
outcome, status and latency once it is answered (the access logger, which
aiohttp calls anyway), and a session cache hit or miss where the session is
looked up, both into this process's dicts first (``flush``); sign-ins, session ends and blocks from the session event stream;
rate-limited requests where a limit refuses; upstream and store errors where
they happen; active sessions are asked of the store at scrape time (one
``ZCOUNT``). Label values come from small fixed sets (outcomes, status
codes, upstream and rule names, end reasons): never a user or a path.

``metrics.allow`` lists the networks that may scrape (loopback by default),
judged by the client's address: the peer's, or behind ``trusted_proxies``
the one they name, so a proxy on the same host does not make every client
local.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from bisect import bisect_left
from collections import Counter as Counter_
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, \
    generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from .auth.events import ENDED, SIGN_IN_FAILED, STARTED, THROTTLE_BLOCKED, SessionEvent
from .errors import error_response
from .proxy.headers import client_ip, is_trusted
from .store import StoreUnavailable

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("gateway_requests_total",
                   "Requests answered: outcome (proxied, denied, error, gateway), upstream, "
                   "status", ["outcome", "upstream", "status"])
LATENCY = Histogram("gateway_request_duration_seconds",
                    "Time to answer a request, by upstream (gateway: its own pages)",
                    ["upstream"], buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                           2.5, 5, 10, 30, 60))
SESSION_CACHE = Counter("gateway_session_cache_total",
                        "Session lookups served from this worker's cache (hit) or the store",
                        ["result"])
LOGINS = Counter("gateway_logins_total",
                 "Sign-ins: success, or why not (bad_password, unknown_user, disabled, "
                 "locked, throttled, bad_otp)", ["result"])
SESSION_ENDS = Counter("gateway_session_ends_total", "Sessions ended, by reason", ["reason"])
THROTTLE_BLOCKS = Counter("gateway_throttle_blocks_total",
                          "Sign-in throttle blocks started, by kind", ["kind"])
THROTTLED = Counter("gateway_throttled_total", "Sign-in attempts refused by a throttle block")
RATE_LIMITED = Counter("gateway_rate_limited_total", "Requests refused by a rate limit",
                       ["rule"])
UPSTREAM_ERRORS = Counter("gateway_upstream_errors_total",
                          "Upstreams unreachable, too slow, or refusing a WebSocket",
                          ["upstream", "kind"])
STORE_ERRORS = Counter("gateway_store_errors_total", "Session store calls that failed")
STORE_LATENCY = Histogram("gateway_store_seconds", "Time of a session store call",
                          buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))

# Per request, the counts go into plain dicts of this process (about a
# microsecond), and ``flush`` hands them to prometheus-client once a second
# (a value in multiprocess mode costs a lock and a write to a mapped file:
# several microseconds each, per request). A scrape flushes its own
# worker's first; the others' are at most FLUSH_EVERY seconds behind.
FLUSH_EVERY = 1.0
_BOUNDS = LATENCY._upper_bounds          # the buckets' upper bounds, +Inf last
_requests: Counter_[tuple[str, str, int]] = Counter_()
_latency: dict[str, list[float]] = {}    # upstream -> count per bucket, then the sum
_cache = [0, 0]                          # hits, misses


def answered(outcome: str, upstream: str, status: int, seconds: float) -> None:
    """One request, answered: its outcome, upstream, status and time."""
    _requests[(outcome, upstream, status)] += 1
    counts = _latency.get(upstream)
    if counts is None:
        counts = _latency[upstream] = [0.0] * (len(_BOUNDS) + 1)
    counts[bisect_left(_BOUNDS, seconds)] += 1
    counts[-1] += seconds


def cache_hit() -> None:
    _cache[0] += 1


def cache_miss() -> None:
    _cache[1] += 1


def flush() -> None:
    """This process's counts since the last flush, into prometheus-client.
    A histogram takes counts per bucket through its children's bucket and
    sum values (prometheus-client has no public call for "n observations")."""
    requests, latency = _requests.copy(), {k: v[:] for k, v in _latency.items()}
    _requests.clear()
    _latency.clear()
    hits, misses = _cache
    _cache[:] = [0, 0]
    for (outcome, upstream, status), n in requests.items():
        REQUESTS.labels(outcome, upstream, str(status)).inc(n)
    for upstream, counts in latency.items():
        child = LATENCY.labels(upstream)
        for i, n in enumerate(counts[:-1]):
            if n:
                child._buckets[i].inc(n)
        child._sum.inc(counts[-1])
    if hits:
        SESSION_CACHE.labels("hit").inc(hits)
    if misses:
        SESSION_CACHE.labels("miss").inc(misses)


async def keep_flushing() -> None:
    """A worker's background task: ``flush`` every FLUSH_EVERY seconds, and
    once more when it stops."""
    try:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            flush()
    finally:
        flush()


def on_event(event: SessionEvent) -> None:
    """The session event stream's share: sign-ins, ends, blocks."""
    if event.type == STARTED and "renewed" not in event.details:
        LOGINS.labels("success").inc()
    elif event.type == SIGN_IN_FAILED:
        LOGINS.labels(event.reason or "failure").inc()
    elif event.type == ENDED:
        SESSION_ENDS.labels(event.reason).inc()
    elif event.type == THROTTLE_BLOCKED:
        THROTTLE_BLOCKS.labels(event.details.get("kind", "")).inc()


class _Now:
    """Values only the store knows, read at scrape time."""

    def __init__(self, active: int) -> None:
        self.active = active

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("gateway_active_sessions",
                                "Sessions active within the idle timeout", value=self.active)


def prepare_workers() -> Path | None:
    """For ``gateway run`` with several workers, before they start: the
    folder they share, emptied (values of a previous run must not count);
    None when the operator named one (theirs to manage)."""
    if os.environ.get(MULTIPROC_ENV):
        folder = Path(os.environ[MULTIPROC_ENV])
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
        return None
    folder = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def forget(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def allowed(remote: str | None, networks: tuple) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


async def scrape(request: web.Request) -> web.Response:
    from .state import GATEWAY
    gw = request.app[GATEWAY]
    # The client, not a proxy in front of it (believed only from trusted_proxies).
    trusted = gw.config.trusted_proxies
    client = client_ip(request.remote, request.headers, trusted)
    # A proxy's own address means its X-Forwarded-For named nobody we can read.
    unnamed = is_trusted(client, trusted) and "X-Forwarded-For" in request.headers
    if unnamed or not allowed(client, gw.config.metrics.allow):
        return error_response(request, 403, "FORBIDDEN",
                              "Metrics are served only to the networks in metrics.allow.")
    flush()
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)
    else:
        registry.register(_Registered())
    try:
        active = await gw.store.active_count(gw.sessions.clock() -
                                             gw.config.session.idle_timeout)
        registry.register(_Now(active))
    except StoreUnavailable:    # the store is down: the rest still says why
        pass
    return web.Response(body=generate_latest(registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST,
                                 "Cache-Control": "no-store"})


class _Registered:
    """This process's own metrics (one process: no multiprocess folder)."""

    def collect(self) -> Iterator[Metric]:
        for collector in (REQUESTS, LATENCY, SESSION_CACHE, LOGINS, SESSION_ENDS,
                          THROTTLE_BLOCKS, THROTTLED, RATE_LIMITED, UPSTREAM_ERRORS,
                          STORE_ERRORS, STORE_LATENCY):
            yield from collector.collect()
