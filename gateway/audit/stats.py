"""Analytics for the admin console: counters kept as events happen, read back.

The audit trail's writer turns every batch of events into ``Counts``
(``tally``), which the store applies in the same round trip as the batch's
audit records: a sign-in costs its XADD and a share of one script call,
never a scan of sessions. What is counted, per UTC hour (``h:``) or day:

    h:<hour>   logins, failures                        (sign-ins, per hour)
    d:<day>    type:, os:, browser: of each sign-in;   (splits and lengths,
               len:<bucket> of each ended session       per day)
    u:<day>    the users who signed in                 (distinct count)
    f:<day>    failed sign-ins by client IP            (ranking)
    a:<day>    live sessions active within the idle timeout, sampled every
               5 minutes ("HHMM" fields) by whichever worker gets there first

A session that times out without anyone noticing has no ending event, so
session lengths count the ends the gateway saw (logouts, revocations,
evictions, expiries observed). Events the audit trail drops (a full queue,
a store down for a whole batch's retries) are not counted either.
Everything is kept KEEP_DAYS.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from ..auth.devices import Device
from ..auth.events import ENDED, SIGN_IN_FAILED, STARTED, SessionEvent
from ..store import EXPIRED, Counts, SessionStore, StoreUnavailable, end_if_cancelled

log = logging.getLogger("gateway.stats")

DAYS = 7                      # what the console shows
KEEP_DAYS = DAYS + 1          # today is partial, so one day more is kept
SAMPLE_EVERY = 300            # seconds between samples of active sessions
TOP_IPS = 10

# Session lengths: (upper bound in seconds, label), the last open-ended.
LENGTHS = [(300, "under 5 min"), (1800, "5-30 min"), (7200, "30 min-2 h"),
           (28800, "2-8 h"), (86400, "8-24 h"), (604800, "1-7 days"),
           (float("inf"), "over 7 days")]


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def hour_key(ts: float) -> str:
    return f"h:{_utc(ts):%Y%m%d%H}"


def day_key(kind: str, ts: float) -> str:
    return f"{kind}:{_utc(ts):%Y%m%d}"


def length_label(seconds: float) -> str:
    return next(label for bound, label in LENGTHS if seconds < bound)


def _family(name: str) -> str:
    return name if name and name != "Other" else "Unknown"


def tally(events: Iterable[SessionEvent], device_of: Callable[[str], Device]) -> Counts:
    """The counters a batch of events moves."""
    counts = Counts(keep=KEEP_DAYS * 86400)

    def add(key: str, name: str) -> None:
        counts.add.setdefault(key, Counter())[name] += 1
    for event in events:
        session = event.session
        if event.type == STARTED and session is not None and "renewed" not in event.details:
            add(hour_key(event.at), "logins")
            device = device_of(session.user_agent)
            day = day_key("d", event.at)
            add(day, f"type:{device.type}")
            add(day, f"os:{_family(device.os_family)}")
            add(day, f"browser:{_family(device.browser_family)}")
            counts.distinct.setdefault(day_key("u", event.at), set()).add(session.username)
        elif event.type == SIGN_IN_FAILED:
            add(hour_key(event.at), "failures")
            if event.ip:
                counts.rank.setdefault(day_key("f", event.at), Counter())[event.ip] += 1
        elif event.type == ENDED and session is not None and event.reason != "renewed":
            # An expiry is noticed later than it happened: count to its end.
            end = min(event.at, session.idle_expires_at) if event.status == EXPIRED \
                else event.at
            add(day_key("d", event.at), "len:" + length_label(end - session.created_at))
    return counts


async def sample_active(store: SessionStore, idle: float, now: float) -> int:
    """Note how many sessions are active now, in this 5-minute slot, unless
    another worker already did."""
    active = await store.active_count(now - idle)
    slot = _utc(now - now % SAMPLE_EVERY)
    await store.count(Counts(keep=KEEP_DAYS * 86400,
                             once={day_key("a", now): {f"{slot:%H%M}": active}}))
    return active


async def keep_sampling(store: SessionStore, idle: float,
                        clock: Callable[[], float] = time.time) -> None:
    """A worker's background task: one sample per slot, a few seconds into it
    (spread, so the workers do not all ask at once)."""
    while True:
        now = clock()
        await asyncio.sleep(SAMPLE_EVERY - now % SAMPLE_EVERY + random.uniform(1, 20))
        try:
            await sample_active(store, idle, clock())
        except StoreUnavailable as exc:
            end_if_cancelled()
            log.warning("active sessions not sampled (%s)", exc)


async def report(store: SessionStore, idle: float, now: float) -> dict[str, Any]:
    """Everything the console charts, for the last DAYS days (UTC buckets)."""
    hours = [now - 3600 * i for i in range(DAYS * 24 - 1, -1, -1)]
    days = [now - 86400 * i for i in range(DAYS - 1, -1, -1)]
    samples = [day_key("a", now - 86400 * i) for i in range(DAYS, -1, -1)]
    read = await store.read_counts(
        hashes=[hour_key(h) for h in hours] + [day_key("d", d) for d in days] + samples,
        distinct=[day_key("u", d) for d in days],
        ranks=[day_key("f", d) for d in days], top=100)
    active_now = await store.active_count(now - idle)

    series: list[tuple[float, int]] = []
    for key in samples:
        day = datetime.strptime(key[2:], "%Y%m%d").replace(tzinfo=timezone.utc)
        for slot, n in read.add[key].items():
            if len(slot) == 4 and slot.isdigit():
                at = (day + timedelta(hours=int(slot[:2]), minutes=int(slot[2:]))).timestamp()
                series.append((at, n))
    series.sort()
    hourly_max: dict[float, int] = {}
    for at, n in series:
        if at > now - DAYS * 86400:
            hour = at - at % 3600
            hourly_max[hour] = max(n, hourly_max.get(hour, 0))

    split: dict[str, Counter[str]] = {"type": Counter(), "os": Counter(), "browser": Counter()}
    lengths: Counter[str] = Counter()
    failing: Counter[str] = Counter()
    for d in days:
        for name, n in read.add[day_key("d", d)].items():
            kind, _, value = name.partition(":")
            if kind in split:
                split[kind][value] += n
            elif kind == "len":
                lengths[value] += n
        failing.update(dict(read.rank[day_key("f", d)]))
    return {
        "generated_at": _iso(now), "days": DAYS, "timezone": "UTC",
        "active": {
            "now": active_now, "idle_window_seconds": int(idle),
            "last_24h": [{"time": _iso(at), "sessions": n} for at, n in series
                         if at > now - 86400],
            "last_7d": [{"time": _iso(h), "sessions": n} for h, n in sorted(hourly_max.items())],
        },
        "logins": [{"hour": _iso(h - h % 3600),
                    "success": read.add[hour_key(h)].get("logins", 0),
                    "failure": read.add[hour_key(h)].get("failures", 0)} for h in hours],
        "unique_users": [{"day": f"{_utc(d):%Y-%m-%d}", "users": read.distinct[day_key("u", d)]}
                         for d in days],
        "devices": {kind: dict(c.most_common()) for kind, c in split.items()},
        "session_length": [{"bucket": label, "sessions": lengths.get(label, 0)}
                           for _, label in LENGTHS],
        "top_failing_ips": [{"ip": ip, "failures": n} for ip, n in failing.most_common(TOP_IPS)],
    }


def _iso(ts: float) -> str:
    return _utc(ts).isoformat(timespec="seconds").replace("+00:00", "Z")
