"""Reading the audit trail: filters and pages, for the admin console and the CLI.

The store keeps one stream, newest last; a search reads it newest first, a
page of entries at a time, and stops after ``SCAN_BUDGET`` entries, saying
where it stopped (the cursor) so the next request goes on from there.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..store import SessionStore

SCAN_BUDGET = 5_000
# How far an entry's writing may trail its event's time, at most, for searches.
WRITE_LAG = 300.0


def _written_at(entry_id: str) -> float:
    """When an entry was written: its id is "<milliseconds>-<sequence>"."""
    try:
        return int(entry_id.split("-", 1)[0]) / 1000
    except ValueError:
        return 0.0


def parse_time(value: str) -> float | None:
    """``2026-12-01T17:40:00Z``, a date, or Unix seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def audit_filter(user: str = "", kind: str = "", ip: str = "", since: float | None = None,
                 until: float | None = None) -> Any:
    """A predicate on audit records; ``kind`` may end in ``*`` (a prefix)."""
    def keep(record: dict[str, Any]) -> bool:
        if user and record.get("user") != user:
            return False
        if kind and not (record.get("type", "").startswith(kind[:-1]) if kind.endswith("*")
                         else record.get("type") == kind):
            return False
        if ip and record.get("ip") != ip:
            return False
        at = parse_time(str(record.get("time", "")))
        return not ((since is not None and (at is None or at < since))
                    or (until is not None and (at is None or at >= until)))
    return keep


async def audit_search(store: SessionStore, keep: Any, cursor: str | None, limit: int,
                       since: float | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """A page of matching records, newest first, and where to go on from."""
    found: list[dict[str, Any]] = []
    scanned = 0
    while len(found) < limit and scanned < SCAN_BUDGET:
        page = await store.audit_page(cursor, 500)
        if not page:
            return found, None
        for entry_id, record in page:
            scanned += 1
            cursor = entry_id
            if keep(record):
                found.append(record)
                if len(found) >= limit:
                    return found, cursor
            # Entries are in the order they were written, which can trail the
            # events' own times (a batch retried, the CLI writing as it exits,
            # several workers): stop only well past ``since``.
            if since is not None and _written_at(entry_id) < since - WRITE_LAG:
                return found, None
    return found, cursor


