"""The session record and the store interface every backend implements.

The store is the single source of truth for whether a session is alive:
the cookie only names a session, so deleting the record revokes it at once.
A revoked session leaves a small tombstone (until the session would have
expired anyway) so the user can be told why they were signed out.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass


class StoreUnavailable(Exception):
    """The store could not answer; callers fail closed (503), never open."""


# Why a session ended; shown to the user and recorded in tombstones.
REASON_LOGOUT = "logout"
REASON_REVOKED = "revoked"
REASON_DISABLED = "disabled"
REASON_LIMIT = "session_limit"


@dataclass
class Session:
    id: str
    username: str          # canonical (trimmed, casefolded) user key
    created_at: float      # unix seconds
    last_seen_at: float
    expires_at: float      # absolute limit: nothing extends it
    idle_timeout: float
    remember: bool = False
    login_ip: str = ""
    login_user_agent: str = ""
    ip: str = ""
    user_agent: str = ""

    @property
    def idle_expires_at(self) -> float:
        return min(self.last_seen_at + self.idle_timeout, self.expires_at)

    def alive(self, now: float) -> bool:
        return now < self.idle_expires_at

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str | bytes) -> "Session | None":
        """A corrupt record reads as no session (anonymous), never as an error."""
        try:
            data = json.loads(raw)
            session = cls(**data)
        except (ValueError, TypeError):
            return None
        # Valid JSON with the wrong types must not fail later, in arithmetic.
        numbers = (session.created_at, session.last_seen_at, session.expires_at,
                   session.idle_timeout)
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers) \
                or not isinstance(session.id, str) or not isinstance(session.username, str):
            return None
        return session


class SessionStore(ABC):
    """Sessions, a per-user index of them, and revocation tombstones.

    Every method raises StoreUnavailable when the backend cannot answer.
    """

    @abstractmethod
    async def create(self, session: Session) -> None:
        """Save a new session and index it under its user."""

    @abstractmethod
    async def get(self, username: str, sid: str) -> Session | None:
        """The live session, or None if it expired, was revoked or never was."""

    @abstractmethod
    async def touch(self, session: Session) -> bool:
        """Persist last-seen, IP and user agent; False if the session is gone.

        Never re-creates a session that was revoked in the meantime.
        """

    @abstractmethod
    async def revoke(self, username: str, sid: str, reason: str) -> bool:
        """End one session, leaving a tombstone with ``reason``; False if none."""

    @abstractmethod
    async def revocation_reason(self, username: str, sid: str) -> str | None:
        """Why a session that no longer exists was ended, if it was revoked."""

    @abstractmethod
    async def user_sessions(self, username: str) -> list[Session]:
        """A user's live sessions, oldest first."""

    @abstractmethod
    async def all_sessions(self) -> list[Session]:
        """Every live session (operator tools; not for the request path)."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    async def revoke_user(self, username: str, reason: str,
                          keep: str | None = None) -> int:
        """End all of a user's sessions except ``keep``; returns how many."""
        ended = 0
        for session in await self.user_sessions(username):
            if session.id != keep and await self.revoke(username, session.id, reason):
                ended += 1
        return ended

    async def find(self, sid: str) -> Session | None:
        """A session by id alone (operator tools; scans every session)."""
        for session in await self.all_sessions():
            if session.id == sid:
                return session
        return None

    async def watch_revocations(self, on_ready: Callable[[], None],
                                on_revoked: Callable[[str], None]) -> None:
        """Follow revocations made anywhere, calling ``on_revoked(sid)`` for each.

        Calls ``on_ready`` once subscribed; runs until cancelled, and raises
        StoreUnavailable the moment it can no longer vouch for having seen
        every revocation. A store without a feed raises NotImplementedError.
        """
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""
