"""The audit trail: every event of the session event stream, as a record, in
the store's append-only stream, a JSON-lines file (or standard output) for a
SIEM, and an optional webhook.

It subscribes to the one event path (auth/events.py), so what the CLI, an
admin, a user or the gateway itself does is recorded alike, once, by the
process that did it. Subscribers must not block: ``record`` only puts the
event on a bounded queue; a background task turns queued events into
records (parsing User-Agents off the event loop), appends them to the store
with the analytics counters they move (stats.py) in one round trip, writes them to the file, and hands them to the webhook,
which has its own bounded queue and retries with backoff. When a queue is
full the event is dropped and counted, never waited for: an audit sink that
is down must not stop sign-ins. The store stream is trimmed after
``audit.retention``.

Record E = {time, type, severity, actor, user, session, ip, device, result,
details}; ``session`` is a fingerprint of the id, never the id itself.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

from ..auth.devices import Device, describe
from ..auth.events import ENDED, STARTED, SessionEvent
from ..auth.events import fingerprint
from ..config import Config, ConfigError
from ..store import SessionStore, StoreUnavailable, end_if_cancelled
from .stats import tally

if TYPE_CHECKING:      # the CLI records too, and need not load aiohttp for it
    import aiohttp

log = logging.getLogger("gateway.audit")

QUEUE_SIZE = 10_000
BATCH = 500

# session.ended, by the Ending's reason.
_ENDED_AS = {"logout": "logout", "idle": "session.expired", "absolute": "session.expired",
             "session_limit": "session.evicted", "renewed": "session.renewed"}
_SEVERITY = {"login.failure": "warning", "session.revoked": "notice",
             "session.evicted": "notice", "user.logged_out_by_admin": "notice",
             "user.locked": "warning", "user.unlocked": "notice",
             "throttle.blocked": "warning", "users.reloaded": "notice",
             "config.reloaded": "notice", "mfa.enrolled": "notice",
             "mfa.reset": "warning", "mfa.recovery_used": "warning"}


def audit_type(event: SessionEvent) -> str:
    if event.type == STARTED:
        return "login.success"
    if event.type == ENDED:
        return _ENDED_AS.get(event.reason, "session.revoked")
    return event.type


def severity(kind: str, event: SessionEvent) -> str:
    if kind.startswith("security."):
        return "critical" if event.details.get("policy") == "end" else "warning"
    return _SEVERITY.get(kind, "info")


def iso_ms(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def to_record(event: SessionEvent, device: str) -> dict[str, Any]:
    s = event.session
    kind = audit_type(event)
    details: dict[str, Any] = {k: v for k, v in event.details.items() if v != ""}
    if event.type == ENDED:
        details.update(status=event.status, reason=event.reason)
    elif kind == "login.failure":
        details["reason"] = event.reason
    elif event.reason:
        details["reason"] = event.reason
    return {
        "time": iso_ms(event.at), "type": kind, "severity": severity(kind, event),
        "actor": event.actor, "user": event.subject,
        "session": fingerprint(s.id) if s else None,
        "ip": (s.ip if s else event.ip) or None, "device": device or None,
        "result": "failure" if kind == "login.failure" else "success",
        "details": details,
    }


def _worth_a_line(total: int, added: int) -> bool:
    """Log a count that keeps growing when it starts, passes 100, and every
    10,000 after: a sink that stays down must not flood the log."""
    return any(total - added < mark <= total for mark in (1, 100)) or \
        total % 10_000 < added


def _device_text(devices: dict[str, Device], agent: str) -> str:
    return devices[agent].text() if agent else ""


class AuditTrail:
    def __init__(self, config: Config, store: SessionStore,
                 spawn: Callable[..., Any] | None = None,
                 client: aiohttp.ClientSession | None = None, to_stdout: bool = True) -> None:
        """``spawn`` runs the writers in the background (a worker); without it
        (the CLI) events wait for ``flush``, and there is no webhook."""
        self.config = config.audit
        self.store = store
        self._queue: asyncio.Queue[SessionEvent] = asyncio.Queue(QUEUE_SIZE)
        self._writing = asyncio.Lock()
        self.dropped = 0
        self.file_failures = 0
        self._file: IO[str] | None = None
        path = config.audit_file
        if path is not None and (to_stdout or str(path) != "-"):
            try:
                self._file = sys.stdout if str(path) == "-" else open(  # noqa: SIM115
                    path, "a", encoding="utf-8", buffering=1)
            except OSError as exc:
                raise ConfigError([f"audit.file: cannot open {path} ({exc.strerror})"]) from None
        self._webhook = None
        if spawn is not None:
            spawn(self._drain(), name="audit")
            if config.audit.webhook.url and client is not None:
                self._webhook = Webhook(config, client)
                spawn(self._webhook.run(), name="audit-webhook")

    def record(self, event: SessionEvent) -> None:
        """The event stream's subscriber: never blocks, never raises."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if _worth_a_line(self.dropped, 1):
                log.error("audit queue full: %d events dropped so far", self.dropped)

    async def flush(self) -> None:
        """Write everything queued, and wait for a write under way (the CLI
        before it exits, a worker at shutdown), including one whose events the
        background writer took but has not begun."""
        async with self._writing:
            while events := self._take():
                try:
                    await self._write(events)
                finally:
                    self._done(events)
        await self._queue.join()

    def _done(self, events: list[SessionEvent]) -> None:
        for _ in events:
            self._queue.task_done()

    def _take(self) -> list[SessionEvent]:
        events = []
        while not self._queue.empty() and len(events) < BATCH:
            events.append(self._queue.get_nowait())
        return events

    async def _drain(self) -> None:
        while True:
            batch = [await self._queue.get()]
            try:
                async with self._writing:
                    batch += self._take()
                    await self._write(batch)
            except asyncio.CancelledError:
                raise
            except Exception:     # one bad batch must not stop the trail
                log.exception("audit: a batch could not be written")
            finally:
                self._done(batch)

    async def _write(self, events: list[SessionEvent]) -> None:
        if not events:
            return
        agents = {e.session.user_agent if e.session else e.user_agent for e in events}
        devices = await asyncio.to_thread(lambda: {a: describe(a) for a in agents})
        records = [to_record(e, _device_text(devices, e.session.user_agent if e.session
                                             else e.user_agent)) for e in events]
        counts = tally(events, devices.__getitem__)
        for attempt in range(3):
            try:
                await self.store.audit_append(records, self.config.retention, counts)
                break
            except StoreUnavailable as exc:
                end_if_cancelled()
                if attempt == 2:
                    self.dropped += len(records)
                    log.error("audit: %d records not stored (%s); the file and webhook "
                              "still get them", len(records), exc)
                else:
                    await asyncio.sleep(0.5 * (attempt + 1))
        if self._file is not None:
            lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
            try:
                await asyncio.to_thread(self._file.write, lines)
            except (OSError, ValueError) as exc:     # a full disk, a closed pipe
                self.file_failures += len(records)
                if _worth_a_line(self.file_failures, len(records)):
                    log.error("audit: cannot write audit.file (%s); %d records missed it so "
                              "far", exc, self.file_failures)
        if self._webhook is not None:
            self._webhook.offer(records)

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            try:
                self._file.close()
            except OSError as exc:      # what was buffered could not be written
                log.error("audit: closing audit.file failed (%s)", exc)


class Webhook:
    """POSTs records of the chosen types as JSON, one by one, in order;
    retried with backoff (1, 2, 4... up to 60 s) while the receiver fails,
    never holding up anything else. Its queue is bounded; what does not
    fit is dropped and counted."""

    def __init__(self, config: Config, client: aiohttp.ClientSession) -> None:
        import aiohttp
        hook = config.audit.webhook
        assert hook.url is not None
        self.url = hook.url
        self.patterns = hook.events
        self.timeout = aiohttp.ClientTimeout(total=hook.timeout)
        self.client = client
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(hook.queue)
        self.dropped = 0
        self.delivered = 0

    def wants(self, kind: str) -> bool:
        return any(fnmatch.fnmatchcase(kind, p) for p in self.patterns)

    def offer(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            if not self.wants(record["type"]):
                continue
            try:
                self._queue.put_nowait(record)
            except asyncio.QueueFull:
                self.dropped += 1
                if _worth_a_line(self.dropped, 1):
                    log.error("audit webhook queue full: %d events dropped so far",
                              self.dropped)

    async def run(self) -> None:
        while True:
            record = await self._queue.get()
            delay = 1.0
            while (outcome := await self._post(record)) == "retry":
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
            if outcome == "done":
                self.delivered += 1
            else:
                self.dropped += 1

    async def _post(self, record: dict[str, Any]) -> str:
        """"done", "retry" (unreachable, 5xx, 408, 429), or "refused" (another
        4xx: sending it again would be refused again, and hold up the rest)."""
        import aiohttp
        try:
            async with self.client.post(self.url, data=json.dumps(record).encode(),
                                        headers={"Content-Type": "application/json"},
                                        timeout=self.timeout,
                                        allow_redirects=False) as response:
                if response.status < 300:
                    return "done"
                if 400 <= response.status < 500 and response.status not in (408, 429):
                    log.error("audit webhook refused an event (%d); dropped", response.status)
                    return "refused"
                log.warning("audit webhook answered %d; retrying", response.status)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            log.warning("audit webhook unreachable (%s); retrying", type(exc).__name__)
        return "retry"
