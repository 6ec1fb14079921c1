"""Security events: what is unusual about a sign-in, or about a session's requests.

At sign-in (``at_sign_in``): a **new device**, an OS and browser family
none of the user's sessions of the history window had, or a **new
location**, a country and region none of them had (with a geoip
database). Within a session (``observe``): a **new client IP**, or a
**different browser**: another browser or OS family, or an older major
version. The full User-Agent string is never compared and a newer major
version is an update, so browsers updating themselves raise nothing.

Each finding has its policy (``security_events``): off, log, notify (kept
for the user's "your sessions" page and the session monitor) or end.
Findings are recorded in the store once per session and value, across
every worker and instance, and each recorded one is emitted on the session
event stream, the audit trail's source.

The hot path pays two string comparisons: ``observe`` runs only when a
request's IP or User-Agent differs from what the session recorded, parses
User-Agents off the event loop, and remembers what it has judged, so a
client alternating between two addresses costs one store call per address.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..store import IP_CHANGED, UA_CHANGED, Ending, Session, SessionStore
from .devices import Device, describe
from .events import Events, SessionEvent, fingerprint
from .sessions import iso

if TYPE_CHECKING:
    from .geo import Locator

log = logging.getLogger("gateway.security")

NEW_DEVICE = "security.new_device"
NEW_LOCATION = "security.new_location"
IP_CHANGE = "security.ip_changed"
UA_CHANGE = "security.ua_changed"

_MAX_JUDGED = 10_000
# Parallel sign-ins from one new device raise one finding: sign-in findings
# are marked per user (this pseudo-session) for a minute.
_SIGN_INS = "~sign-ins"
_SIGN_IN_WINDOW = 60.0
# Distinct User-Agent strings one session may show a worker before that
# itself is the finding: a browser sends one, and each new one costs a parse.
_MAX_AGENTS = 8


def lineage(device: Device) -> tuple[str, str]:
    """What a device is, for these comparisons: OS and browser, as families."""
    return device.os_family, device.browser_family


# "Request desktop site" turns a phone's browser into its desktop sibling
# (Android into Linux, iOS into macOS; "Chrome Mobile" into "Chrome"). Within
# a session that way round is the same browser; the other way round (a
# desktop session's cookie on a phone) is not.
_DESKTOP_OS = {"Android": "Linux", "iOS": "Mac OS X", "iPadOS": "Mac OS X"}


def _desktop_site(device: Device) -> tuple[str, str]:
    browser = " ".join(w for w in device.browser_family.split() if w != "Mobile")
    return _DESKTOP_OS.get(device.os_family, device.os_family), browser


def _browser_differs(before: Device, after: Device) -> bool:
    if lineage(before) != lineage(after) and _desktop_site(before) != lineage(after):
        return True
    return (before.browser_major is not None and after.browser_major is not None
            and after.browser_major < before.browser_major)


def _place(location: dict[str, str] | None) -> tuple[str, str] | None:
    return (location["country"], location["region"]) if location else None


def _place_text(location: dict[str, str] | None) -> str:
    if not location:
        return ""
    return ", ".join(part for part in (location["city"], location["region"],
                                       location["country"]) if part)


class SecurityWatch:
    def __init__(self, config: Config, store: SessionStore, events: Events,
                 locator: Locator | None, clock: Callable[[], float]) -> None:
        self.policies = config.security_events
        self.history = config.session.history
        self.store = store
        self.events = events
        self.locator = locator
        self.clock = clock
        # (sid, kind, value) judged by this worker: a repeat costs a set lookup.
        self._judged: set[tuple[str, str, str]] = set()
        # sid -> how many User-Agent strings this worker has judged for it.
        self._agents: dict[str, int] = {}

    # -- at sign-in ------------------------------------------------------------
    async def at_sign_in(self, session: Session) -> None:
        """Compare a new session with the user's others, live and ended.
        Raises StoreUnavailable (the caller logs it: the sign-in stands)."""
        p = self.policies
        locate = self.locator.locate if self.locator and p.new_location != "off" else None
        if p.new_device == "off" and locate is None:
            return
        since = session.created_at - self.history
        # Only sessions begun before this one: two parallel sign-ins from one
        # new device must not vouch for each other.
        mine = (session.created_at, session.id)
        earlier = [s for s in await self.store.user_sessions(session.username)
                   if (s.created_at, s.id) < mine]
        earlier += [e.session for e in await self.store.history(session.username, since)
                    if (e.session.created_at, e.session.id) < mine]
        if not earlier:
            return   # a first sign-in: every device and place would be "new"
        agents = {session.user_agent} | {a for s in earlier
                                         for a in (s.login_user_agent, s.user_agent)}
        devices = await asyncio.to_thread(lambda: {a: describe(a) for a in agents})
        device = devices[session.user_agent]
        if p.new_device != "off":
            known = {lineage(devices[a]) for s in earlier
                     for a in (s.login_user_agent, s.user_agent)}
            if lineage(device) not in known:
                await self._report(session, NEW_DEVICE, "/".join(lineage(device)),
                                   p.new_device, device, scope=_SIGN_INS)
        if locate is not None:
            here = locate(session.ip) if session.ip else None
            seen = {_place(locate(ip)) for s in earlier for ip in (s.login_ip, s.ip) if ip}
            if here is not None and _place(here) not in seen:
                await self._report(session, NEW_LOCATION, "/".join(_place(here) or ()),
                                   p.new_location, device, location=here, scope=_SIGN_INS)

    # -- within a session --------------------------------------------------------
    async def observe(self, session: Session, ip: str, user_agent: str) -> Ending | None:
        """A request whose IP or User-Agent differs from the session's record:
        the Ending to apply when a policy says so, else None (recorded as due).
        Raises StoreUnavailable."""
        p = self.policies
        if ip != session.ip and ip != session.login_ip and p.ip_changed != "off" \
                and (session.id, "ip", ip) not in self._judged:
            await self._report(session, IP_CHANGE, ip, p.ip_changed, None,
                               previous=session.ip, ip=ip)
            if p.ip_changed == "end":
                return IP_CHANGED
            self._judge((session.id, "ip", ip))
        agent = user_agent[:512]
        if agent != session.user_agent and agent != session.login_user_agent \
                and p.ua_changed != "off" and (session.id, "ua", agent) not in self._judged:
            if len(self._agents) >= _MAX_JUDGED:
                self._agents.clear()
            agents = self._agents[session.id] = self._agents.get(session.id, 0) + 1
            if agents > _MAX_AGENTS:
                # Rotating User-Agents: no browser does that; and no more parsing.
                await self._report(session, UA_CHANGE, "many", p.ua_changed, None,
                                   previous="many different User-Agents", ip=ip)
                if p.ua_changed == "end":
                    return UA_CHANGED
                self._judge((session.id, "ua", agent))
                return None
            signed_in, before, after = await asyncio.to_thread(lambda: (
                describe(session.login_user_agent), describe(session.user_agent),
                describe(agent)))
            # Unlike both the browser it signed in with and the one last seen.
            if _browser_differs(before, after) and _browser_differs(signed_in, after):
                await self._report(session, UA_CHANGE, "/".join(map(str, (
                    *lineage(after), after.browser_major))), p.ua_changed, after,
                    previous=before.text(), ip=ip)
                if p.ua_changed == "end":
                    return UA_CHANGED
            self._judge((session.id, "ua", agent))
        return None

    def _judge(self, key: tuple[str, str, str]) -> None:
        if len(self._judged) >= _MAX_JUDGED:
            self._judged.clear()
            self._agents.clear()
        self._judged.add(key)

    # -- the one way out -----------------------------------------------------------
    async def _report(self, session: Session, kind: str, value: str, policy: str,
                      device: Device | None, *, previous: str = "", ip: str | None = None,
                      location: dict[str, str] | None = None,
                      scope: str | None = None) -> None:
        """Record and emit a finding, once per ``scope`` (the session, or all of
        the user's sign-ins of the last minute) and value."""
        now = self.clock()
        ip = session.ip if ip is None else ip
        if location is None and self.locator is not None and ip:
            location = self.locator.locate(ip)
        record: dict[str, Any] = {
            "id": secrets.token_hex(6), "type": kind, "at": now, "policy": policy,
            "session": fingerprint(session.id), "ip": ip, "location": _place_text(location),
            "device": device.text() if device else "", "previous": previous,
        }
        keep = _SIGN_IN_WINDOW if scope == _SIGN_INS else max(1.0, session.keep_until - now)
        # Marked per kind, so that many of one (a phone's addresses over a
        # month) cannot use up what another (a new browser) may record.
        if not await self.store.add_security_event(
                session.username, f"{scope or session.id}:{kind}", value,
                record if policy == "notify" else None, keep, self.history):
            return   # another worker (or instance) recorded it first
        log.warning("%s for a session of %s (%s): policy %s", kind, session.username,
                    fingerprint(session.id), policy)
        self.events.emit(SessionEvent(kind, session, now, actor="system",
                                      details={k: str(v) for k, v in record.items()
                                               if k not in ("id", "at", "session", "type")}))


async def alerts(store: SessionStore, session: Session, since: float) -> list[dict[str, Any]]:
    """The user's ``notify`` events after ``since``, for them to see, most recent
    first; ``current``: the sign-in of the session asking (not news to it).
    A change within the asking session is news to it: someone else may be
    using it."""
    mine = fingerprint(session.id)
    return [{"id": str(e.get("id", "")), "type": str(e.get("type", "")),
             "at": iso(float(e.get("at", 0))), "message": message(e),
             "current": e.get("session") == mine and e.get("type") in (NEW_DEVICE,
                                                                        NEW_LOCATION)}
            for e in await store.security_events(session.username, since)
            if e.get("policy") == "notify"]


def message(event: dict[str, Any]) -> str:
    """A security event in words, for the person whose account it is."""
    device = event.get("device") or "an unknown device"
    place = event.get("location") or ""
    where = f" from {event.get('ip')}" + (f" ({place})" if place else "") if event.get("ip") else ""
    return {
        NEW_DEVICE: f"New sign-in on a device not seen before: {device}{where}.",
        NEW_LOCATION: f"New sign-in from a place not seen before{where}, on {device}.",
        IP_CHANGE: f"A session moved to a new network address{where}"
                   + (f" (it was {event['previous']})." if event.get("previous") else "."),
        UA_CHANGE: f"A session was used from another browser: {device}{where}"
                   + (f", after {event['previous']}." if event.get("previous") else "."),
    }.get(str(event.get("type")), "Unusual activity on your account.")
