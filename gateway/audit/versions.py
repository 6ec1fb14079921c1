"""Which config and which users file are in effect, recorded once when they change.

Every worker of every instance reports the fingerprints of what it runs
with (at start, and the users file again whenever it is re-read); the
store swaps them in atomically, so of all the workers that load a new
version, only the first sees a difference and emits ``config.reloaded`` or
``users.reloaded`` to the event stream (and so to the audit trail); a
store that held no version yet (the first start) records none. The
gateway reads its config at start, so a changed config is recorded by the
first start that uses it, with the sections that changed. Fingerprints are
truncated SHA-256 digests of the effective values (a rotated secret shows as
a change of ``secret``, never its value). Not recorded: a change made while
the store could not be reached (the next start or reload records it then),
and any change with the memory store, where every start is a first.
Instances that run different users files on one store record each other's
reloads as changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from ..auth.events import CONFIG_RELOADED, USERS_RELOADED, Events, SessionEvent
from ..auth.users import UserDirectory
from ..config import Config, RedisConfig
from ..store import SessionStore, StoreUnavailable

log = logging.getLogger("gateway.audit")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def canonical(value: Any) -> str:
    """The same text for the same values in every process: sets sorted (their
    order follows the per-process string hash seed), dataclasses by field."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return "(" + ",".join(f"{f.name}={canonical(getattr(value, f.name))}"
                              for f in dataclasses.fields(value)) + ")"
    if isinstance(value, (set, frozenset)):
        return "{" + ",".join(sorted(map(canonical, value))) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(canonical, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(sorted(f"{canonical(k)}:{canonical(v)}"
                                     for k, v in value.items())) + "}"
    return repr(value)


# What may differ from one instance to the next without the configuration
# having changed: where it listens, its size, how it reaches Redis, its logs.
_PER_INSTANCE = {"base_dir", "listen", "workers", "shutdown_timeout", "log_level",
                 "access_log", "logging", "metrics"}


def config_fingerprints(config: Config) -> dict[str, str]:
    """One fingerprint per top-level key, of the values after validation
    (environment variables filled in, defaults applied), leaving out what
    is per instance, so instances that share a store do not take turns
    recording a change."""
    out = {f.name: _digest(canonical(getattr(config, f.name)))
           for f in dataclasses.fields(config) if f.name not in _PER_INSTANCE}
    out["session"] = _digest(canonical(dataclasses.replace(config.session,
                                                           redis=RedisConfig())))
    return out


async def note_config(store: SessionStore, events: Events, config: Config,
                      clock: Callable[[], float]) -> None:
    now = config_fingerprints(config)
    before = await _swap(store, "config", now)
    if before and before != now:
        changed = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
        events.emit(SessionEvent(CONFIG_RELOADED, None, clock(), actor="config-file", details={
            "changed": ", ".join(changed), "version": _digest("".join(sorted(now.values())))}))


async def note_users(store: SessionStore, events: Events, users: UserDirectory,
                     clock: Callable[[], float]) -> None:
    accounts = sorted(users.all(), key=lambda u: u.key)
    now = {"version": _digest(canonical(accounts))}
    before = await _swap(store, "users", now)
    if before and before != now:
        events.emit(SessionEvent(USERS_RELOADED, None, clock(), actor="users-file", details={
            "users": str(len(accounts)), "version": now["version"],
            "previous": before.get("version", "")}))


async def _swap(store: SessionStore, name: str, values: dict[str, str]) -> dict[str, str] | None:
    try:
        return await store.swap(name, values)
    except StoreUnavailable as exc:
        log.warning("the %s version was not compared (%s); a change is not recorded", name, exc)
        return None
