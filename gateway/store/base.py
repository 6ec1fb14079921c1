"""The session records and the store interface every backend implements.

The store is the single source of truth for whether a session is alive:
the cookie only names a session, so ending the record ends the session at
once. An ended session leaves an *ended record* (its details plus status,
reason, actor and time) for the history window, ``session.history``.

Records survive versions: each carries a schema version ``v``; fields a
reader does not know are kept in ``extra`` and never dropped, and updates
write single fields (a Redis hash), so a rolling deploy that adds a field
signs nobody out, and two workers touching different fields lose nothing.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from collections import Counter
from typing import Any, NamedTuple


class StoreUnavailable(Exception):
    """The store could not answer; callers fail closed (503), never open."""


def end_if_cancelled() -> None:
    """For a background loop that goes on after StoreUnavailable: redis-py
    can turn a cancel that lands on a read into a timeout, which arrives as
    StoreUnavailable, and a worker shutting down must still end the loop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


class AtCapacity(Exception):
    """The user has ``max_per_user`` live sessions and ``on_limit`` is refuse."""


RECORD_VERSION = 1


class Ending(NamedTuple):
    """Why a session ended: a status from the contract and a reason."""
    status: str   # LOGGED_OUT | REVOKED | EXPIRED
    reason: str


LOGGED_OUT, REVOKED, EXPIRED = "LOGGED_OUT", "REVOKED", "EXPIRED"
LOGOUT = Ending(LOGGED_OUT, "logout")
REVOKED_BY_USER = Ending(REVOKED, "revoked_by_user")
REVOKED_BY_ADMIN = Ending(REVOKED, "revoked_by_admin")   # the admin console or the CLI
SESSION_LIMIT = Ending(REVOKED, "session_limit")
USER_DISABLED = Ending(REVOKED, "user_disabled")          # disabled or removed in the users file
USER_LOCKED = Ending(REVOKED, "user_locked")              # locked by an admin
RENEWED = Ending(LOGGED_OUT, "renewed")                  # went on as a session verified
                                                         # with a second factor (a new id)
IP_CHANGED = Ending(REVOKED, "ip_changed")               # security_events.ip_changed: end
UA_CHANGED = Ending(REVOKED, "ua_changed")               # security_events.ua_changed: end
IDLE = Ending(EXPIRED, "idle")
ABSOLUTE = Ending(EXPIRED, "absolute")

# Findings (security events) recorded per session at most; see add_security_event.
MAX_FINDINGS = 20

# Kept after a session's idle or absolute end, so that its expiry can still be
# observed (and recorded with its details) when its user comes back or the
# sessions are listed: the idle timeout, at most an hour.
EXPIRED_GRACE_MAX = 3600.0


def _number(value: Any) -> float:
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return number


def _flag(value: Any) -> bool:
    return str(value) in ("1", "true", "True")


# How each known field is read back from the strings a store keeps.
_PARSE: dict[str, Callable[[Any], Any]] = {
    "id": str, "username": str, "created_at": _number, "last_seen_at": _number,
    "expires_at": _number, "idle_timeout": _number, "remember": _flag,
    "login_ip": str, "login_user_agent": str, "ip": str, "user_agent": str,
    "authenticated_at": _number, "mfa": _flag,
}


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
    # When the password was last entered for this session: at sign-in, and
    # again when a sensitive action asked for it (0: the sign-in itself).
    authenticated_at: float = 0.0
    # Whether the user proved a second factor (auth/totp.py) for this session.
    mfa: bool = False
    # Fields written by a newer gateway, kept as they came.
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def idle_expires_at(self) -> float:
        return min(self.last_seen_at + self.idle_timeout, self.expires_at)

    def alive(self, now: float) -> bool:
        return now < self.idle_expires_at

    def ending(self, now: float) -> Ending:
        """Which timeout ended a session that is no longer alive."""
        return ABSOLUTE if now >= self.expires_at else IDLE

    @property
    def keep_until(self) -> float:
        """When the store may forget the record: its end plus the grace."""
        return self.idle_expires_at + min(self.idle_timeout, EXPIRED_GRACE_MAX)

    def to_fields(self) -> dict[str, str]:
        """Every field as a string, for a hash; ``extra`` included as it came."""
        return {**self.extra, **encode_fields({f: getattr(self, f) for f in _PARSE}),
                "v": str(RECORD_VERSION)}

    @classmethod
    def from_fields(cls, raw: Mapping[Any, Any]) -> "Session | None":
        """A record from a hash (bytes or str); a corrupt one reads as None, never an error."""
        data = {(k.decode() if isinstance(k, bytes) else str(k)):
                (v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
                for k, v in raw.items()}
        try:
            known = {f: parse(data[f]) for f, parse in _PARSE.items()
                     if f in data or f in _REQUIRED}
        except (KeyError, ValueError, TypeError):
            return None
        extra = {k: str(v) for k, v in data.items() if k not in _PARSE and k != "v"}
        return cls(**known, extra=extra)

    @classmethod
    def from_json(cls, raw: str | bytes) -> "Session | None":
        """A record as the first versions stored it (one JSON string)."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict) or any(isinstance(v, (dict, list)) for v in data.values()):
            return None
        if any(isinstance(data.get(f), bool) for f in ("created_at", "last_seen_at",
                                                       "expires_at", "idle_timeout")):
            return None
        return cls.from_fields({k: ("1" if v is True else "0" if v is False else v)
                                for k, v in data.items()})


def encode_fields(values: Mapping[str, Any]) -> dict[str, str]:
    """Field values as a store keeps them: strings, floats exact, booleans 1/0."""
    return {k: ("1" if v else "0") if isinstance(v, bool) else
            repr(float(v)) if isinstance(v, (int, float)) and k in _NUMBERS else str(v)
            for k, v in values.items()}


_NUMBERS = frozenset({"created_at", "last_seen_at", "expires_at", "idle_timeout",
                      "authenticated_at"})
_REQUIRED = frozenset({"id", "username", "created_at", "last_seen_at", "expires_at",
                       "idle_timeout"})


@dataclass
class EndedSession:
    """A session that ended, kept for ``session.history``."""
    session: Session
    status: str
    reason: str
    actor: str
    ended_at: float

    @classmethod
    def from_fields(cls, raw: Mapping[Any, Any]) -> "EndedSession | None":
        data = {(k.decode() if isinstance(k, bytes) else str(k)):
                (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
                for k, v in raw.items()}
        end = {k: data.pop(k, "") for k in ("status", "reason", "actor", "ended_at")}
        session = Session.from_fields(data)
        try:
            ended_at = _number(end["ended_at"])
        except ValueError:
            return None
        if session is None or not end["status"]:
            return None
        return cls(session, end["status"], end["reason"], end["actor"], ended_at)


@dataclass(frozen=True)
class Page:
    """One page of a listing; ``next_cursor`` is None on the last page.
    ``cursors[i]`` resumes just after ``sessions[i]`` (a filtered listing
    that stops inside a page goes on from there)."""
    sessions: list[Session]
    next_cursor: str | None
    cursors: list[str] = field(default_factory=list)


@dataclass
class Counts:
    """Analytics increments (audit/stats.py), applied in one step. Keys are
    bucket names ("h:2026120109"); every key touched is kept ``keep``
    seconds from the last write."""
    keep: float
    add: dict[str, Counter[str]] = field(default_factory=dict)       # field += n
    once: dict[str, dict[str, int]] = field(default_factory=dict)    # field = n unless set
    distinct: dict[str, set[str]] = field(default_factory=dict)      # count of distinct members
    rank: dict[str, Counter[str]] = field(default_factory=dict)      # member score += n

    def __bool__(self) -> bool:
        return bool(self.add or self.once or self.distinct or self.rank)


# How long an attempt waits while as many others are in flight as failures
# are left before a block: a moment, not a block.
BUSY_WAIT = 1.0

# A ranking keeps its top RANK_KEEP members (e.g. the IPs with most failed
# sign-ins in a day), so a spray from many addresses cannot grow it without bound.
RANK_KEEP = 10_000


@dataclass(frozen=True)
class CountsRead:
    add: dict[str, dict[str, int]]             # hash key -> field -> value (once-fields too)
    distinct: dict[str, int]                   # key -> estimated distinct members
    rank: dict[str, list[tuple[str, int]]]     # key -> its top members, highest first


@dataclass(frozen=True)
class Strike:
    """One sign-in attempt, counted under a throttle key (auth/throttle.py)."""
    key: str                  # "pair:<tag>:<ip>", "ip:<ip>", "account:<tag>", ...
    failures: int             # more than this within ``window`` seconds block the key
    window: float
    block: float              # for this many seconds
    info: dict[str, str]      # what the block is about, for people: kind, user, ip


@dataclass(frozen=True)
class Block:
    key: str
    until: float
    info: dict[str, str]


@dataclass(frozen=True)
class Enrolment:
    """A user's enrolled second factor (auth/totp.py)."""
    secret: str          # the TOTP secret, encrypted by the caller
    enrolled_at: float
    codes_left: int      # recovery codes not spent yet


class SessionStore(ABC):
    """Live sessions, per-user and global indexes, and ended records.

    Every method raises StoreUnavailable when the backend cannot answer.
    Expired records are kept for a short grace (``Session.keep_until``), so
    ``get`` returns a session that is no longer alive and the caller ends it.
    """

    @abstractmethod
    async def create(self, session: Session, cap: int, history: float,
                     refuse: bool = False) -> list[Session]:
        """Save a new session and, in the same atomic step, keep the user within
        ``cap`` live sessions (0: no cap): end the least recently active as
        SESSION_LIMIT and return them, or with ``refuse`` raise AtCapacity
        and save nothing."""

    @abstractmethod
    async def get(self, username: str, sid: str) -> Session | None:
        """The record (alive or within its grace), or None."""

    @abstractmethod
    async def touch(self, session: Session, changes: dict[str, Any]) -> bool:
        """Write only the fields in ``changes`` (``session`` is the record after
        them); False if the session is gone or no longer alive. Never
        re-creates a session that was ended in the meantime."""

    @abstractmethod
    async def end(self, username: str, sid: str, ending: Ending, actor: str,
                  now: float, history: float) -> Session | None:
        """End one session and keep an ended record for ``history`` seconds;
        publish the end to every worker. Returns the session, None if there was none."""

    @abstractmethod
    async def ended(self, username: str, sid: str) -> EndedSession | None:
        """The ended record of a session, while the history keeps it."""

    @abstractmethod
    async def history(self, username: str, since: float, limit: int = 100) -> list[EndedSession]:
        """A user's sessions that ended after ``since``, most recent first, at
        most ``limit`` of them."""

    @abstractmethod
    async def user_sessions(self, username: str) -> list[Session]:
        """A user's records (alive or within grace), oldest first: O(their count)."""

    @abstractmethod
    async def find(self, sid: str) -> Session | None:
        """A live session by id alone, in O(1)."""

    @abstractmethod
    async def list_sessions(self, cursor: str | None, limit: int) -> Page:
        """All live sessions, most recently active first, a page at a time."""

    @abstractmethod
    async def ip_sessions(self, ip: str, limit: int) -> list[Session]:
        """Live sessions whose current address is ``ip``, most recently active
        first, at most ``limit``: O(their count), never a scan of everyone."""

    @abstractmethod
    async def add_security_event(self, username: str, sid: str, mark: str,
                                 record: dict[str, Any] | None, keep: float,
                                 history: float) -> bool:
        """Note a finding marked ``mark`` for a session, once: across every
        worker and instance, only the first call for a mark returns True,
        and a session has at most MAX_FINDINGS marks (kept ``keep`` seconds,
        the session's life), so a client cannot flood the event stream.
        ``record`` (JSON-able, with a numeric ``at``; None: nothing to show)
        joins the user's security alerts for ``history`` seconds, at most
        100 of them."""

    @abstractmethod
    async def security_events(self, username: str, since: float) -> list[dict[str, Any]]:
        """The user's security events after ``since``, most recent first (at most 100)."""

    # -- locks (admin console): held until unlocked, across restarts --------------
    @abstractmethod
    async def set_locked(self, username: str, locked: bool, actor: str, now: float) -> bool:
        """Lock or unlock a user; returns whether that changed anything."""

    @abstractmethod
    async def locks(self) -> dict[str, dict[str, Any]]:
        """Every locked user: ``{username: {"by": actor, "at": unix seconds}}``."""

    @abstractmethod
    async def is_locked(self, username: str) -> bool:
        """Whether a user is locked (one read, at sign-in)."""

    # -- the audit trail: append-only, trimmed after ``retention`` -------------------
    @abstractmethod
    async def audit_append(self, records: list[dict[str, Any]], retention: float,
                           counts: Counts | None = None) -> None:
        """Append records (JSON-able) and apply ``counts``, in one round trip;
        entries older than ``retention`` seconds are trimmed, approximately."""

    @abstractmethod
    async def audit_page(self, before: str | None, count: int) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``count`` entries older than the entry id ``before`` (None: the
        newest), newest first, as ``(entry id, record)``."""

    @abstractmethod
    async def audit_after(self, after: str, count: int) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``count`` entries newer than the entry id ``after``, oldest first."""

    # -- login throttling: failures counted per key, blocks held until they end -------
    @abstractmethod
    async def throttle_attempt(self, strikes: list[Strike]) -> float:
        """Before a password is checked: 0 if the attempt may go on, in which
        case it is held as in flight under each strike's key (one atomic
        step per key), else the seconds to wait: a block in force, or
        BUSY_WAIT when as many attempts are in flight as failures are left
        before the block (so a burst cannot slip past it). Every attempt
        that went on must be settled with ``throttle_settle``."""

    @abstractmethod
    async def throttle_settle(self, strikes: list[Strike], failed: bool,
                              reset: list[str]) -> list[Block]:
        """The attempt's outcome: no longer in flight; if it ``failed``, one
        failure more under each key (the window starts at the first) and the
        blocks that reached ``failures`` start, returned (across every worker
        and instance, exactly one caller starts each); if not, the counts of
        the keys in ``reset`` start over."""

    @abstractmethod
    async def throttle_blocks(self) -> list[Block]:
        """Every block in force, soonest to end first."""

    @abstractmethod
    async def throttle_clear(self, keys: list[str]) -> int:
        """Lift the blocks (and counts) of ``keys``; returns how many blocks were lifted."""

    # -- rate limits: counts per fixed window, added in batches -------------------------
    @abstractmethod
    async def rate_sync(self, worker: str,
                        counts: dict[str, tuple[int, float]]) -> dict[str, int]:
        """Set ``worker``'s count in each window (``{key: (n, seconds to keep
        the window)}``; setting it again changes nothing) and return each
        window's sum over every worker, in one round trip."""

    # -- the second factor: per user, held until reset ------------------------------
    @abstractmethod
    async def mfa_get(self, username: str) -> Enrolment | None:
        """The user's enrolment, or None."""

    @abstractmethod
    async def mfa_enrol(self, username: str, secret: str, codes: list[str],
                        now: float) -> bool:
        """Save an enrolment with ``codes`` (digests of recovery codes) in one
        atomic step, unless the user has one already (then False)."""

    @abstractmethod
    async def mfa_reset(self, username: str) -> bool:
        """Remove the user's enrolment and recovery codes; whether there was one."""

    @abstractmethod
    async def mfa_use_code(self, username: str, digest: str) -> int | None:
        """Spend a recovery code, atomically: how many are left after it, or
        None if it is not one of the user's (or was spent already)."""

    @abstractmethod
    async def mfa_use_step(self, username: str, step: int, keep: float) -> bool:
        """Accept a TOTP time step for the user at most once: False if this
        step or a later one was accepted in the last ``keep`` seconds."""

    # -- short-lived secrets (a sign-in waiting for its one-time code) ----------------
    @abstractmethod
    async def hold(self, key: str, value: str, ttl: float) -> None:
        """Keep ``value`` under ``key`` for ``ttl`` seconds."""

    @abstractmethod
    async def held(self, key: str) -> str | None:
        """The value held under ``key``, or None once it is gone or expired."""

    @abstractmethod
    async def release(self, key: str) -> str | None:
        """Take the value held under ``key`` and forget it, in one atomic
        step: of many callers, only one gets it."""

    @abstractmethod
    async def swap(self, name: str, values: dict[str, str]) -> dict[str, str]:
        """Replace the small map ``name`` with ``values`` and return what it
        held, in one atomic step: of many workers writing the same values,
        only the first sees a difference (audit/versions.py)."""

    # -- analytics: counters kept as events happen, never by scanning ----------------
    @abstractmethod
    async def count(self, counts: Counts) -> None:
        """Apply counts in one round trip."""

    @abstractmethod
    async def read_counts(self, hashes: list[str], distinct: list[str], ranks: list[str],
                          top: int) -> CountsRead:
        """The named counters in one round trip; a missing key reads as empty."""

    @abstractmethod
    async def active_count(self, since: float) -> int:
        """How many live sessions were active after ``since``: O(log n), no scan."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    async def watch_revocations(self, on_ready: Callable[[], None],
                                on_revoked: Callable[[str], None]) -> None:
        """Follow session ends made anywhere, calling ``on_revoked(sid)`` for each.

        Calls ``on_ready`` once subscribed; runs until cancelled, and raises
        StoreUnavailable the moment it can no longer vouch for having seen
        every end. A store without a feed raises NotImplementedError.
        """
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""
