"""A short-lived, push-invalidated copy of sessions, so the hot path skips Redis.

Safe only while the revocation feed is live, so it is built around it:

- it is off until the store's revocation subscription is confirmed, and
  flushed and turned off the moment that subscription fails or goes quiet;
- every revocation message drops that session and bumps ``generation``; a
  lookup that started before a revocation may not fill the cache (see
  ``put``), so a session revoked mid-lookup is never cached;
- entries also age out after ``ttl`` seconds, a backstop should a message
  ever be lost while the feed still looks healthy.

Idle expiry is still judged on every hit from the cached last-seen time,
which can only be older than the truth, so a hit never outlives Redis.
"""

from __future__ import annotations

import time

from ..store import Session


class SessionCache:
    def __init__(self, ttl: float, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.enabled = False
        self.generation = 0
        self._entries: dict[str, tuple[float, Session]] = {}

    def get(self, sid: str) -> Session | None:
        if not self.enabled:
            return None
        hit = self._entries.get(sid)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            del self._entries[sid]
            return None
        return hit[1]

    def put(self, session: Session, generation: int) -> None:
        """Cache ``session`` if nothing was revoked since ``generation`` was read."""
        if not self.enabled or generation != self.generation:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[session.id] = (time.monotonic() + self.ttl, session)

    def drop(self, sid: str) -> None:
        self.generation += 1
        self._entries.pop(sid, None)

    def start(self) -> None:
        """The revocation feed is live (again): start from empty."""
        self.flush()
        self.enabled = self.ttl > 0

    def stop(self) -> None:
        """The feed broke: nothing cached may be trusted any more."""
        self.enabled = False
        self.flush()

    def flush(self) -> None:
        self.generation += 1
        self._entries.clear()
