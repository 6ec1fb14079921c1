"""Rate limits (``rate_limits``, and the session refresh's own), without a
store round trip per request.

Each rule counts requests per key (a user, a session or an address) in
fixed windows aligned to the clock. A worker counts in memory and, every
SYNC seconds, adds what it counted to the store's count of each window and
reads back the total, which every worker and instance shares; it also reads
the totals of keys past half their limit that it did not count meanwhile.
A request goes through while the last total this worker read plus what it
counted since stays under the limit. So a key can go over its limit by at
most what the other workers let through in one SYNC interval (and by
nothing with one worker). If the store cannot be reached, each worker goes
on counting alone and sends its counts when it can.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..auth.throttle import address_key
from ..config import RateLimitRule, Upstream
from ..store import SessionStore, StoreUnavailable

log = logging.getLogger("gateway.ratelimit")

SYNC = 0.5                      # seconds between a worker's syncs with the store
KEEP_AFTER = 60.0               # a window's count outlives it, so a late sync finds it


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
                "RateLimit-Policy": f'"{self.name}";q={self.limit};w={int(self.window)}',
                "RateLimit": f'"{self.name}";r=0;t={reset}'}


class Limiter:
    def __init__(self, store: SessionStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._counted: dict[str, int] = {}      # window key -> counted here since the last sync
        self._total: dict[str, int] = {}        # window key -> the store's total at that sync
        self._ends: dict[str, float] = {}       # window key -> when its window ends
        self._limits: dict[str, int] = {}       # window key -> its rule's limit

    def hit(self, counts: list[tuple[str, str, int, float]]) -> Limited | None:
        """Count a request under each ``(rule name, key, limit, window)``, or,
        when it is one too many for any of them, count it nowhere and say so."""
        now = self.clock()
        slots = []
        for name, key, limit, window in counts:
            slot = int(now // window)
            k = f"{name}:{key}:{slot}"
            if self._total.get(k, 0) + self._counted.get(k, 0) >= limit:
                return Limited(name, limit, window, (slot + 1) * window - now)
            slots.append((k, (slot + 1) * window))
        for (k, end), (_, _, limit, _) in zip(slots, counts):
            self._counted[k] = self._counted.get(k, 0) + 1
            self._ends[k] = end
            self._limits[k] = limit
        return None

    async def sync(self) -> None:
        """Add this worker's counts to the store's and learn the totals, of
        the keys it counted and of those past half their limit (the others'
        requests may have taken them over it meanwhile)."""
        now = self.clock()
        counted, self._counted = self._counted, {}
        watched = [k for k, total in self._total.items()
                   if k not in counted and 2 * total >= self._limits[k]]
        if counted or watched:
            try:
                totals = await self.store.rate_sync(
                    {k: (n, self._ends[k] - now + KEEP_AFTER) for k, n in counted.items()},
                    watched)
            except StoreUnavailable:
                for k, n in counted.items():       # sent next time
                    self._counted[k] = self._counted.get(k, 0) + n
                raise
            # What was counted meanwhile is in _counted again, not in a total.
            self._total.update(totals)
        for k in [k for k, end in self._ends.items() if end <= now]:
            for table in (self._ends, self._total, self._counted, self._limits):
                table.pop(k, None)

    async def keep_syncing(self) -> None:
        """A worker's background task."""
        failing = False
        while True:
            await asyncio.sleep(SYNC)
            try:
                await self.sync()
                failing = False
            except StoreUnavailable as exc:
                if not failing:
                    log.warning("rate limits counted by this worker alone until the store "
                                "answers again (%s)", exc)
                failing = True


class ProxyLimits:
    """The ``rate_limits`` rules, matched against each proxied request."""

    def __init__(self, rules: tuple[RateLimitRule, ...], limiter: Limiter) -> None:
        self.rules = rules
        self.limiter = limiter

    def check(self, upstream: Upstream, path: str, method: str, user: str | None,
              session: str | None, ip: str) -> Limited | None:
        """Count the request under every rule it falls under; a Limited when
        it is over one of them (then it counts nowhere)."""
        counts = []
        lowered = path.lower()
        for rule in self.rules:
            if (rule.upstream is not None and rule.upstream != upstream.name) or \
                    not lowered.startswith(rule.path.lower()) or \
                    (rule.methods and method not in rule.methods):
                continue
            # Nobody signed in (a public path): counted per address.
            if rule.per == "user" and user is not None:
                key = "u:" + digest(user)
            elif rule.per == "session" and session is not None:
                key = "s:" + digest(session)
            else:
                key = "ip:" + address_key(ip)
            counts.append((rule.name, key, rule.limit, rule.window))
        return self.limiter.hit(counts) if counts else None


def digest(text: str) -> str:
    """Names, session ids and tokens stay out of the store's keys."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
