"""Sessions in this process's memory: for the demo, tests and one worker.

Same semantics as the Redis store (grace after expiry, per-user index,
ended records with their history window, paging), so the one shared store
test suite runs against both. Lost on restart, by design.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .base import (BUSY_WAIT, MAX_FINDINGS, RANK_KEEP, SESSION_LIMIT, AtCapacity, Block, Counts,
                   CountsRead, EndedSession, Ending, Enrolment, Page, Session, SessionStore, Strike)
from .paging import decode_cursor, encode_cursor


AUDIT_MAX = 100_000


class MemorySessionStore(SessionStore):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._by_user: dict[str, set[str]] = {}
        self._ended: dict[str, EndedSession] = {}
        self._ended_until: dict[str, float] = {}
        self._next_sweep = 0.0
        # Security events: per user (time, record); per session the marks
        # already recorded, and until when they are kept.
        self._alerts: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self._locks: dict[str, dict[str, Any]] = {}
        # Bounded: failed sign-ins need no session, and this is the demo's store.
        self._audit: deque[tuple[str, dict[str, Any]]] = deque(maxlen=AUDIT_MAX)
        self._audit_ms, self._audit_seq = 0, 0
        self._marks: dict[str, tuple[float, set[str]]] = {}
        self._swapped: dict[str, dict[str, str]] = {}
        # rate limit window -> (kept until, each worker's count)
        self._rates: dict[str, tuple[float, dict[str, int]]] = {}
        # Login throttling: key -> [window end, failures, in flight]; key -> its block.
        self._failures: dict[str, list[Any]] = {}
        self._blocks: dict[str, Block] = {}
        # The second factor: user -> (enrolment, unspent code digests); user ->
        # (last step accepted, until when it is kept); held values -> (until, value).
        self._mfa: dict[str, tuple[Enrolment, set[str]]] = {}
        self._steps: dict[str, tuple[int, float]] = {}
        self._held: dict[str, tuple[float, str]] = {}
        # Analytics: key -> (kept until, a Counter of fields or a set of members).
        self._counts: dict[str, tuple[float, Any]] = {}

    async def create(self, session: Session, cap: int, history: float,
                     refuse: bool = False) -> list[Session]:
        self._sweep()
        now = self._clock()
        live = sorted((s for s in map(self._sessions.get,
                                      self._by_user.get(session.username, ()))
                       if s is not None and s.alive(now)),
                      key=lambda s: (s.last_seen_at, s.created_at, s.id))
        if cap and refuse and len(live) >= cap:
            raise AtCapacity()
        self._sessions[session.id] = replace(session, extra=dict(session.extra))
        self._by_user.setdefault(session.username, set()).add(session.id)
        evicted: list[Session] = []
        if cap:
            for old in live[:max(0, len(live) + 1 - cap)]:
                ended = await self.end(old.username, old.id, SESSION_LIMIT, "system", now,
                                       history)
                if ended is not None:
                    evicted.append(ended)
        return evicted

    async def get(self, username: str, sid: str) -> Session | None:
        session = self._sessions.get(sid)
        if session is None or session.username != username:
            return None
        if session.keep_until <= self._clock():
            self._forget(session)
            return None
        return replace(session, extra=dict(session.extra))

    async def touch(self, session: Session, changes: dict[str, Any]) -> bool:
        current = self._sessions.get(session.id)
        if current is None or current.username != session.username \
                or not current.alive(self._clock()):
            return False
        if changes.get("last_seen_at", current.last_seen_at) < current.last_seen_at:
            changes = {k: v for k, v in changes.items() if k != "last_seen_at"}
        self._sessions[session.id] = replace(current, **changes)
        return True

    async def end(self, username: str, sid: str, ending: Ending, actor: str,
                  now: float, history: float) -> Session | None:
        session = await self.get(username, sid)
        if session is None:
            return None
        self._forget(session)
        self._ended[sid] = EndedSession(session, ending.status, ending.reason, actor, now)
        self._ended_until[sid] = now + history
        return session

    async def ended(self, username: str, sid: str) -> EndedSession | None:
        record = self._ended.get(sid)
        if record is None or record.session.username != username \
                or self._ended_until[sid] <= self._clock():
            return None
        return record

    async def history(self, username: str, since: float, limit: int = 100) -> list[EndedSession]:
        now = self._clock()
        found = [e for sid, e in self._ended.items()
                 if e.session.username == username and e.ended_at > since
                 and self._ended_until[sid] > now]
        return sorted(found, key=lambda e: e.ended_at, reverse=True)[:limit]

    async def user_sessions(self, username: str) -> list[Session]:
        found = [await self.get(username, sid) for sid in list(self._by_user.get(username, ()))]
        return sorted((s for s in found if s), key=lambda s: (s.created_at, s.id))

    async def find(self, sid: str) -> Session | None:
        session = self._sessions.get(sid)
        if session is None or not session.alive(self._clock()):
            return None
        return replace(session, extra=dict(session.extra))

    async def list_sessions(self, cursor: str | None, limit: int) -> Page:
        now = self._clock()
        after = decode_cursor(cursor)
        ordered = sorted(((s.last_seen_at, s.id) for s in self._sessions.values()
                          if s.alive(now)), reverse=True)
        if after is not None:
            ordered = [k for k in ordered if k < after]
        page = [self._sessions[sid] for _, sid in ordered[:limit]]
        more = len(ordered) > limit
        cursors = [encode_cursor(s.last_seen_at, s.id) for s in page]
        return Page([replace(s, extra=dict(s.extra)) for s in page],
                    cursors[-1] if more else None, cursors)

    async def ip_sessions(self, ip: str, limit: int) -> list[Session]:
        now = self._clock()
        found = sorted((s for s in self._sessions.values() if s.ip == ip and s.alive(now)),
                       key=lambda s: (-s.last_seen_at, s.id))
        return [replace(s, extra=dict(s.extra)) for s in found[:limit]]

    async def add_security_event(self, username: str, sid: str, mark: str,
                                 record: dict[str, Any] | None, keep: float,
                                 history: float) -> bool:
        now = self._clock()
        until, marks = self._marks.get(sid, (0.0, set()))
        if until <= now:
            marks = set()
        if mark in marks or len(marks) >= MAX_FINDINGS:
            return False
        marks.add(mark)
        self._marks[sid] = (max(until, now + keep), marks)
        if record is not None:
            kept = [(t, r) for t, r in self._alerts.get(username, []) if t > now - history]
            kept.append((float(record["at"]), dict(record)))
            kept.sort(key=lambda item: item[0])
            self._alerts[username] = kept[-100:]
        return True

    async def security_events(self, username: str, since: float) -> list[dict[str, Any]]:
        return [dict(r) for t, r in reversed(self._alerts.get(username, [])) if t > since]

    async def set_locked(self, username: str, locked: bool, actor: str, now: float) -> bool:
        if locked == (username in self._locks):
            return False
        if locked:
            self._locks[username] = {"by": actor, "at": now}
        else:
            del self._locks[username]
        return True

    async def locks(self) -> dict[str, dict[str, Any]]:
        return {u: dict(v) for u, v in self._locks.items()}

    async def is_locked(self, username: str) -> bool:
        return username in self._locks

    async def audit_append(self, records: list[dict[str, Any]], retention: float,
                           counts: Counts | None = None) -> None:
        if counts:
            await self.count(counts)
        now_ms = int(self._clock() * 1000)
        for record in records:
            if now_ms > self._audit_ms:
                self._audit_ms, self._audit_seq = now_ms, 0
            else:                       # same millisecond (or a clock set back): next seq
                self._audit_seq += 1
            self._audit.append((f"{self._audit_ms}-{self._audit_seq}", dict(record)))
        oldest = f"{now_ms - int(retention * 1000)}-0"
        while self._audit and _entry_key(self._audit[0][0]) < _entry_key(oldest):
            self._audit.popleft()

    async def audit_page(self, before: str | None, count: int) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        limit = _entry_key(before) if before else None
        for entry_id, record in reversed(self._audit):
            if limit is not None and _entry_key(entry_id) >= limit:
                continue
            out.append((entry_id, dict(record)))
            if len(out) >= count:
                break
        return out

    async def audit_after(self, after: str, count: int) -> list[tuple[str, dict[str, Any]]]:
        floor = _entry_key(after)
        return [(i, dict(r)) for i, r in self._audit if _entry_key(i) > floor][:count]

    async def throttle_attempt(self, strikes: list[Strike]) -> float:
        self._sweep()           # attempts come from anyone, for any name: keep it bounded
        now = self._clock()
        waits = []
        for strike in strikes:          # no await in between: one step, as in Redis
            block = self._blocks.get(strike.key)
            if block is not None and block.until > now:
                waits.append(block.until - now)
                continue
            count = self._failures.get(strike.key)
            if count is None or count[0] <= now:
                count = self._failures[strike.key] = [now + strike.window, 0, 0]
            if count[1] + count[2] >= strike.failures:
                waits.append(BUSY_WAIT)
        if waits:
            return max(waits)
        for strike in strikes:
            self._failures[strike.key][2] += 1
        return 0.0

    async def throttle_settle(self, strikes: list[Strike], failed: bool,
                              reset: list[str]) -> list[Block]:
        now = self._clock()
        started = []
        for strike in strikes:
            count = self._failures.get(strike.key)
            if count is None:
                continue
            count[2] = max(0, count[2] - 1)
            if not failed:
                if strike.key in reset:
                    count[1] = 0
                continue
            count[1] += 1
            if count[1] >= strike.failures and self._unblocked(strike.key, now):
                block = self._blocks[strike.key] = Block(strike.key, now + strike.block,
                                                          dict(strike.info))
                del self._failures[strike.key]
                started.append(block)
        return started

    def _unblocked(self, key: str, now: float) -> bool:
        block = self._blocks.get(key)
        return block is None or block.until <= now

    async def throttle_blocks(self) -> list[Block]:
        now = self._clock()
        for key in [k for k, b in self._blocks.items() if b.until <= now]:
            del self._blocks[key]
        return sorted(self._blocks.values(), key=lambda b: (b.until, b.key))

    async def throttle_clear(self, keys: list[str]) -> int:
        live = {b.key for b in await self.throttle_blocks()}
        for key in keys:
            self._blocks.pop(key, None)
            self._failures.pop(key, None)
        return len(live & set(keys))

    async def rate_sync(self, worker: str,
                        counts: dict[str, tuple[int, float]]) -> dict[str, int]:
        self._sweep()
        now = self._clock()
        out = {}
        for key, (n, keep) in counts.items():
            until, by_worker = self._rates.get(key, (0.0, {}))
            if until <= now:
                by_worker = {}
            by_worker[worker] = n
            self._rates[key] = (now + keep, by_worker)
            out[key] = sum(by_worker.values())
        return out

    async def mfa_get(self, username: str) -> Enrolment | None:
        found = self._mfa.get(username)
        return found[0] if found else None

    async def mfa_enrol(self, username: str, secret: str, codes: list[str],
                        now: float) -> bool:
        if username in self._mfa:
            return False
        self._mfa[username] = (Enrolment(secret, now, len(set(codes))), set(codes))
        return True

    async def mfa_reset(self, username: str) -> bool:
        return self._mfa.pop(username, None) is not None

    async def mfa_use_code(self, username: str, digest: str) -> int | None:
        found = self._mfa.get(username)
        if found is None or digest not in found[1]:
            return None
        found[1].discard(digest)
        self._mfa[username] = (replace(found[0], codes_left=len(found[1])), found[1])
        return len(found[1])

    async def mfa_use_step(self, username: str, step: int, keep: float) -> bool:
        self._sweep()
        now = self._clock()
        last, until = self._steps.get(username, (-1, 0.0))
        if until > now and step <= last:
            return False
        self._steps[username] = (step, now + keep)
        return True

    async def hold(self, key: str, value: str, ttl: float) -> None:
        self._sweep()
        self._held[key] = (self._clock() + ttl, value)

    async def held(self, key: str) -> str | None:
        until, value = self._held.get(key, (0.0, None))
        return value if until > self._clock() else None

    async def release(self, key: str) -> str | None:
        value = await self.held(key)
        self._held.pop(key, None)
        return value

    async def swap(self, name: str, values: dict[str, str]) -> dict[str, str]:
        old, self._swapped[name] = self._swapped.get(name, {}), dict(values)
        return old

    async def count(self, counts: Counts) -> None:
        until = self._clock() + counts.keep

        def bucket(key: str, empty: Callable[[], Any]) -> Any:
            value = self._counts.get(key, (0.0, None))[1]
            if value is None:
                value = empty()
            self._counts[key] = (until, value)
            return value
        for key, fields in counts.add.items():
            bucket(key, Counter).update(fields)
        for key, fields in counts.once.items():
            held = bucket(key, Counter)
            for name, n in fields.items():
                held.setdefault(name, n)
        for key, members in counts.distinct.items():
            bucket(key, set).update(members)
        for key, scores in counts.rank.items():
            ranking = bucket(key, Counter)
            ranking.update(scores)
            if len(ranking) > RANK_KEEP:
                self._counts[key] = (until, Counter(dict(ranking.most_common(RANK_KEEP))))

    async def read_counts(self, hashes: list[str], distinct: list[str], ranks: list[str],
                          top: int) -> CountsRead:
        now = self._clock()

        def held(key: str) -> Any:
            until, value = self._counts.get(key, (0.0, None))
            return value if value is not None and until > now else None
        return CountsRead(
            add={k: dict(held(k) or {}) for k in hashes},
            distinct={k: len(held(k) or ()) for k in distinct},
            rank={k: (held(k) or Counter()).most_common(top) for k in ranks})

    async def active_count(self, since: float) -> int:
        now = self._clock()
        return sum(1 for s in self._sessions.values() if s.alive(now) and s.last_seen_at > since)

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
        """Drop records past their grace now and then, so memory does not grow forever."""
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60
        for session in list(self._sessions.values()):
            if session.keep_until <= now:
                self._forget(session)
        for sid in [sid for sid, until in self._ended_until.items() if until <= now]:
            del self._ended[sid], self._ended_until[sid]
        for sid in [sid for sid, (until, _) in self._marks.items() if until <= now]:
            del self._marks[sid]
        for key in [key for key, (until, _) in self._counts.items() if until <= now]:
            del self._counts[key]
        for key in [key for key, (until, _, _) in self._failures.items() if until <= now]:
            del self._failures[key]
        for key in [key for key, (until, _) in self._rates.items() if until <= now]:
            del self._rates[key]
        for key in [key for key, block in self._blocks.items() if block.until <= now]:
            del self._blocks[key]
        for key in [key for key, (until, _) in self._held.items() if until <= now]:
            del self._held[key]
        for key in [key for key, (_, until) in self._steps.items() if until <= now]:
            del self._steps[key]


def _entry_key(entry_id: str) -> tuple[int, int]:
    """An entry id ("<ms>-<seq>", as Redis streams write them) for comparing."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
