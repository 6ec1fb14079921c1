"""Rate limits (``rate_limits``, and the session refresh's own), without a
store round trip per request.

Each rule counts requests per key (a user, a session or an address) in
fixed windows aligned to the clock. A worker counts in memory what it lets
through; every SYNC seconds a background task writes each count it changed
into the store, as this worker's own field of that window (so sending it
twice counts nothing twice), and reads back the sum over every worker and
instance. It also re-reads the keys between half their limit and the limit,
which other workers may be taking over it. A request goes through while the
other workers' counts as last read plus this worker's own stay under the
limit: a key can go over by what the other workers let through in one SYNC
interval, and not at all with one worker. If the store cannot be reached,
each worker goes on limiting with what it knows and writes its counts when
it can. A fixed window lets a burst at its end and another at the start of
the next through: up to twice the limit across the boundary.

A worker tracks at most MAX_KEYS keys in the current windows; past that
(someone varying addresses on a per-address rule), new keys are let through
uncounted and a warning is logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..metrics import RATE_LIMITED
from ..auth.throttle import address_key
from ..config import RateLimitRule, Upstream
from ..store import SessionStore, StoreUnavailable, end_if_cancelled

log = logging.getLogger("gateway.ratelimit")

SYNC = 0.5                      # seconds between a worker's syncs with the store
KEEP_AFTER = 60.0               # a window's count outlives it, so a late sync finds it
MAX_KEYS = 200_000
CHUNK = 1_000                   # keys per store round trip
MAX_WATCHED = 1_000


@dataclass(frozen=True)
class Limited:
    """A request over a limit: what the 429 says."""
    name: str
    limit: int
    window: float
    reset: float                # seconds until the window ends

    def headers(self) -> dict[str, str]:
        """``Retry-After`` and the IETF RateLimit fields (draft-ietf-httpapi-
        ratelimit-headers): the policy, and that nothing is left until reset."""
        reset = max(1, math.ceil(self.reset))
        return {"Retry-After": str(reset), "Cache-Control": "no-store",
                "RateLimit-Policy": f'"{self.name}";q={self.limit};w={math.ceil(self.window)}',
                "RateLimit": f'"{self.name}";r=0;t={reset}'}


class Limiter:
    def __init__(self, store: SessionStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.worker = secrets.token_hex(6)      # this worker's field in each window
        self._mine: dict[str, int] = {}         # window key -> let through here
        self._others: dict[str, int] = {}       # window key -> the others' sum, last read
        self._limits: dict[str, int] = {}       # window key -> its rule's limit
        self._ends: dict[float, set[str]] = {}  # window end -> its keys
        self._end_of: dict[str, float] = {}
        self._dirty: set[str] = set()           # counted since their last write
        self._full_warned = False
        self._syncing = asyncio.Lock()

    def hit(self, counts: list[tuple[str, str, int, float]]) -> Limited | None:
        """Count a request under each ``(rule name, key, limit, window)``, or,
        when it is one too many for any of them, count it nowhere and say which
        (the one whose window ends last)."""
        now = self.clock()
        over: Limited | None = None
        slots = []
        for name, key, limit, window in counts:
            slot = int(now // window)
            k = f"{name}:{key}:{slot}"
            if self._others.get(k, 0) + self._mine.get(k, 0) >= limit:
                limited = Limited(name, limit, window, (slot + 1) * window - now)
                if over is None or limited.reset > over.reset:
                    over = limited
            slots.append((k, limit, (slot + 1) * window))
        if over is not None:
            RATE_LIMITED.labels(over.name).inc()
            return over
        for k, limit, end in slots:
            if k not in self._mine:
                if len(self._mine) >= MAX_KEYS:
                    self._full()
                    continue
                self._limits[k] = limit
                self._end_of[k] = end
                self._ends.setdefault(end, set()).add(k)
            self._mine[k] = self._mine.get(k, 0) + 1
            self._dirty.add(k)
        return None

    def _full(self) -> None:
        if not self._full_warned:
            log.warning("rate limits: %d keys in this worker's current windows; new keys go "
                        "uncounted until windows end", MAX_KEYS)
            self._full_warned = True

    async def sync(self) -> None:
        """Write this worker's changed counts, and read the sums of those and
        of the keys closing on their limit. One at a time (the background
        task and the last one at shutdown)."""
        async with self._syncing:
            await self._sync()

    async def _sync(self) -> None:
        now = self.clock()
        for end in [end for end in self._ends if end <= now]:      # windows that are over
            for k in self._ends.pop(end):
                for table in (self._mine, self._others, self._limits, self._end_of):
                    table.pop(k, None)
                self._dirty.discard(k)
            self._full_warned = False
        watched = [k for k, mine in self._mine.items() if k not in self._dirty and
                   self._limits[k] <= 2 * (mine + self._others.get(k, 0)) < 2 * self._limits[k]]
        if len(watched) > MAX_WATCHED:          # a different sample each time
            watched = random.sample(watched, MAX_WATCHED)
        keys = [*self._dirty, *watched]
        for i in range(0, len(keys), CHUNK):
            chunk = keys[i:i + CHUNK]
            sent = {k: self._mine[k] for k in chunk}
            sums = await self.store.rate_sync(self.worker, {
                _stored(k): (n, self._end_of[k] - now + KEEP_AFTER) for k, n in sent.items()})
            for k, n in sent.items():
                self._others[k] = sums[_stored(k)] - n
                if self._mine.get(k) == n:
                    self._dirty.discard(k)          # counted again meanwhile: stays dirty

    async def keep_syncing(self) -> None:
        """A worker's background task."""
        failing = False
        while True:
            await asyncio.sleep(SYNC)
            try:
                await self.sync()
                failing = False
            except StoreUnavailable as exc:
                end_if_cancelled()
                if not failing:
                    log.warning("rate limits: this worker's counts not shared until the store "
                                "answers again (%s)", exc)
                failing = True
            except Exception:       # the limits must outlive a bug in one sync
                log.exception("rate limits: a sync failed")


class ProxyLimits:
    """The ``rate_limits`` rules, matched against each proxied request."""

    def __init__(self, rules: tuple[RateLimitRule, ...], limiter: Limiter) -> None:
        self.rules = [(rule, rule.path.lower(),
                       frozenset(rule.methods) | ({"HEAD"} if "GET" in rule.methods else set()))
                      for rule in rules]
        self.limiter = limiter

    def check(self, upstream: Upstream, paths: tuple[str, ...], method: str,
              user: str | None, session: str | None, ip: str) -> Limited | None:
        """Count the request under every rule it falls under, matched like the
        role rules (a case-insensitive prefix of the decoded path, or of how a
        servlet reads it); a Limited when it is over one (then it counts nowhere)."""
        counts = []
        lowered = [p.lower() for p in paths]
        for rule, prefix, methods in self.rules:
            if (rule.upstream is not None and rule.upstream != upstream.name) or \
                    (methods and method not in methods) or \
                    not any(p.startswith(prefix) for p in lowered):
                continue
            # Nobody signed in (a public path): counted per address.
            if rule.per == "user" and user is not None:
                key = "u:" + user
            elif rule.per == "session" and session is not None:
                key = "s:" + session
            else:
                key = "ip:" + address_key(ip)
            counts.append((rule.name, key, rule.limit, rule.window))
        return self.limiter.hit(counts) if counts else None


def _stored(k: str) -> str:
    """A window's key in the store: its rule's name and a digest, so that
    names and session ids stay out of the store's keys."""
    return k.split(":", 1)[0] + ":" + hashlib.sha256(k.encode()).hexdigest()[:24]
