"""Session stores: one interface, picked by ``session.store`` in the config."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config import SessionConfig
from .base import (ABSOLUTE, EXPIRED, IDLE, IP_CHANGED, LOGGED_OUT, LOGOUT, RENEWED, REVOKED,
                   REVOKED_BY_ADMIN, REVOKED_BY_USER, SESSION_LIMIT, UA_CHANGED, USER_DISABLED,
                   USER_LOCKED, AtCapacity, Block, Counts, CountsRead, EndedSession, Ending,
                   Enrolment, Page, Session, SessionStore, StoreUnavailable, Strike,
                   end_if_cancelled)

__all__ = ["create_store", "ABSOLUTE", "EXPIRED", "IDLE", "IP_CHANGED", "LOGGED_OUT", "LOGOUT",
           "REVOKED", "REVOKED_BY_ADMIN", "REVOKED_BY_USER", "SESSION_LIMIT", "UA_CHANGED",
           "USER_DISABLED", "USER_LOCKED", "RENEWED",
           "AtCapacity", "Block", "Counts", "CountsRead", "EndedSession", "Ending", "Enrolment", "Page",
           "Session", "SessionStore", "StoreUnavailable", "Strike", "end_if_cancelled"]


def create_store(config: SessionConfig, clock: Callable[[], float] = time.time) -> SessionStore:
    """The one factory: an unknown store type is refused, never guessed."""
    if config.store == "redis":
        from .redis import RedisSessionStore
        return RedisSessionStore(config.redis, clock=clock,
                                 max_idle=max(config.idle_timeout, config.remember_me_idle_timeout))
    if config.store == "memory":
        from .memory import MemorySessionStore
        return MemorySessionStore(clock)
    raise ValueError(f"session.store: unknown store {config.store!r}")
