"""Session stores: one interface, picked by ``session.store`` in the config."""

from __future__ import annotations

from ..config import SessionConfig
from .base import (REASON_DISABLED, REASON_LIMIT, REASON_LOGOUT, REASON_REVOKED,
                   Session, SessionStore, StoreUnavailable)

__all__ = ["create_store", "Session", "SessionStore", "StoreUnavailable",
           "REASON_DISABLED", "REASON_LIMIT", "REASON_LOGOUT", "REASON_REVOKED"]


def create_store(config: SessionConfig) -> SessionStore:
    """The one factory: an unknown store type is refused, never guessed."""
    if config.store == "redis":
        from .redis import RedisSessionStore
        return RedisSessionStore(config.redis)
    if config.store == "memory":
        from .memory import MemorySessionStore
        return MemorySessionStore()
    raise ValueError(f"session.store: unknown store {config.store!r}")
