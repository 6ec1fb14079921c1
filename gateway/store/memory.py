"""Sessions in this process's memory: for the demo, tests and one worker.

Same semantics as the Redis store (expiry, index, tombstones), so the one
shared store test suite runs against both. Lost on restart, by design.
"""

from __future__ import annotations

import time
from dataclasses import replace

from .base import Session, SessionStore


class MemorySessionStore(SessionStore):
    def __init__(self, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._by_user: dict[str, set[str]] = {}
        self._tombstones: dict[str, tuple[str, float]] = {}
        self._next_sweep = 0.0

    async def create(self, session: Session) -> None:
        self._sweep()
        self._sessions[session.id] = replace(session)
        self._by_user.setdefault(session.username, set()).add(session.id)

    async def get(self, username: str, sid: str) -> Session | None:
        session = self._sessions.get(sid)
        if session is None or session.username != username:
            return None
        if not session.alive(self._clock()):
            self._forget(session)
            return None
        return replace(session)

    async def touch(self, session: Session) -> bool:
        current = await self.get(session.username, session.id)
        if current is None:
            return False
        self._sessions[session.id] = replace(session)
        return True

    async def revoke(self, username: str, sid: str, reason: str) -> bool:
        session = await self.get(username, sid)
        if session is None:
            return False
        self._forget(session)
        self._tombstones[sid] = (reason, session.expires_at)
        return True

    async def revocation_reason(self, username: str, sid: str) -> str | None:
        reason, until = self._tombstones.get(sid, (None, 0.0))
        return reason if until > self._clock() else None

    async def user_sessions(self, username: str) -> list[Session]:
        found = [await self.get(username, sid) for sid in list(self._by_user.get(username, ()))]
        return sorted((s for s in found if s), key=lambda s: s.created_at)

    async def all_sessions(self) -> list[Session]:
        found = [await self.get(s.username, s.id) for s in list(self._sessions.values())]
        return sorted((s for s in found if s), key=lambda s: s.created_at)

    async def ping(self) -> None:
        return None

    def _forget(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        ids = self._by_user.get(session.username)
        if ids is not None:
            ids.discard(session.id)
            if not ids:
                del self._by_user[session.username]

    def _sweep(self) -> None:
        """Drop expired records now and then, so memory does not grow forever."""
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60
        for session in list(self._sessions.values()):
            if not session.alive(now):
                self._forget(session)
        self._tombstones = {k: v for k, v in self._tombstones.items() if v[1] > now}
