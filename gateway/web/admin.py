"""The admin console's JSON API: live sessions, force logout, locks, the audit trail.

    GET    /api/admin/sessions?user=&ip=&device=&status=&cursor=&limit=
    GET    /api/admin/sessions/{id}            one session, with its audit events
    DELETE /api/admin/sessions/{id}            {"revoked": 1}
    POST   /api/admin/users/{username}/logout  {"revoked": n}
    POST   /api/admin/users/{username}/lock    {"locked": true, "revoked": n}
    POST   /api/admin/users/{username}/unlock  {"locked": false}
    GET    /api/admin/users                    the users file's accounts, with locks
    GET    /api/admin/audit?user=&type=&ip=&since=&until=&cursor=&limit=&format=json|csv
    GET    /api/admin/stats                    analytics (audit/stats.py)

Every request checks the caller's role against ``admin.roles`` (from the
users file, so a removed role takes effect at once): 401 without a
session, 403 FORBIDDEN without the role. Changes need this site's Origin
and a JSON body (a cross-site page cannot send one without a preflight);
the destructive ones ask for the password again once the sign-in is older
than ``session.reauth_after``. Everything ends through the one lifecycle,
so the audit trail records the admin as the actor.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from typing import Any

from aiohttp import web

from ..audit.search import audit_filter, audit_search, parse_time
from ..audit.stats import report
from ..auth.devices import describe
from ..auth.events import fingerprint
from ..auth.sessions import Identity
from ..errors import json_error
from ..state import Gateway
from ..store import REVOKED_BY_ADMIN, StoreUnavailable
from .guards import api_identity, gateway_of
from .my_sessions import _api_change, _no_store, _reauth_refusal, session_details

MAX_LIMIT = 500
# At most this many entries are read to fill one filtered page; the page
# says where it stopped (next_cursor) so the next request goes on from there.
SCAN_BUDGET = 5_000


def _not_admin() -> web.Response:
    return json_error(403, "FORBIDDEN", "This needs an administrator's role.")


def actor_of(identity: Identity) -> str:
    return f"admin:{identity.user.key}"


async def admin_identity(request: web.Request, gw: Gateway) -> Identity | web.Response:
    identity = await api_identity(request, gw)
    if isinstance(identity, web.Response):
        return identity
    if not set(identity.user.roles) & set(gw.config.admin.roles):
        return _not_admin()
    if gw.sessions.lacks_mfa(identity):
        return _unverified(gw)
    return identity


def _unverified(gw: Gateway) -> web.Response:
    return json_error(403, "FORBIDDEN", f"This needs a session verified with two-step "
                                        f"verification ({gw.config.prefix}/2fa).")


def _limit(request: web.Request, default: int = 50) -> int | web.Response:
    raw = request.query.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        return json_error(400, "BAD_REQUEST", f"limit must be a whole number 1-{MAX_LIMIT}.")
    return int(raw)


# -- sessions ----------------------------------------------------------------------

async def find_sessions(gw: Gateway, user: str, ip: str, device: str, cursor: str | None,
                        limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """Live sessions matching the filters, most recently active first, and the
    cursor to go on from. StoreUnavailable and ValueError (a bad cursor) propagate."""
    now = gw.sessions.clock()

    def keep(s: Any) -> bool:
        return (s.alive(now) and (not ip or s.ip == ip) and
                (not device or device.lower() in describe(s.user_agent).text().lower()))
    found: list[Any] = []
    if user or ip:
        # One user's or one address's sessions come whole, from their index
        # (a user has at most max_per_user; otherwise the most recent MAX_LIMIT).
        mine = await (gw.store.user_sessions(user) if user
                      else gw.store.ip_sessions(ip, MAX_LIMIT))
        found = sorted(await asyncio.to_thread(lambda: [s for s in mine if keep(s)]),
                       key=lambda s: -s.last_seen_at)[:MAX_LIMIT]
        cursor = None
    else:
        scanned = 0
        while cursor is not None or scanned == 0:
            page = await gw.store.list_sessions(cursor, max(limit, 100))
            scanned += max(1, len(page.sessions))
            cursor = page.next_cursor
            # User-Agents are parsed for the device filter: off the event loop.
            kept = await asyncio.to_thread(lambda: [keep(s) for s in page.sessions])
            for s, after, ok in zip(page.sessions, page.cursors, kept):
                if ok:
                    found.append(s)
                    if len(found) == limit:       # resume just after it
                        cursor = after if (after != page.cursors[-1]
                                           or page.next_cursor) else None
                        break
            if len(found) == limit or scanned >= SCAN_BUDGET:
                break
    locks = await gw.store.locks()
    devices = await asyncio.to_thread(lambda: {s.user_agent: describe(s.user_agent)
                                               for s in found})
    return ([{**session_details(gw, s, devices), "user": s.username, "status": "ACTIVE",
              "locked": s.username in locks} for s in found], cursor)


async def api_sessions(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    refused = await _admin_first(request, gw)
    if refused is not None:
        return refused
    limit = _limit(request)
    if isinstance(limit, web.Response):
        return limit
    q = request.query
    if q.get("status", "ACTIVE").upper() != "ACTIVE":
        return json_error(400, "BAD_REQUEST", "status: live sessions are ACTIVE; ended ones "
                                              "are in the audit trail and the user's history.")
    try:
        sessions, next_cursor = await find_sessions(
            gw, q.get("user", "").strip().casefold(), q.get("ip", ""), q.get("device", ""),
            q.get("cursor") or None, limit)
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE")
    except ValueError:
        return json_error(400, "BAD_REQUEST", "cursor is not one this gateway gave out.")
    return _no_store({"sessions": sessions, "next_cursor": next_cursor})


async def api_session(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    refused = await _admin_first(request, gw)
    if refused is not None:
        return refused
    try:
        session = await gw.store.find(request.match_info["sid"])
        if session is None:
            return json_error(404, "SESSION_NOT_FOUND")
        mark = fingerprint(session.id)
        events = [r for _, r in await gw.store.audit_page(None, SCAN_BUDGET)
                  if r.get("session") == mark]
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE")
    devices = await asyncio.to_thread(lambda: {session.user_agent: describe(session.user_agent)})
    return _no_store({"session": {**session_details(gw, session, devices),
                                  "user": session.username, "status": "ACTIVE"},
                      "events": events})


async def _change(request: web.Request, destructive: bool) -> tuple[Gateway, Identity] | web.Response:
    """What every admin change checks first: what every change of "your
    sessions" does (Origin, a JSON body if any, a session), the role, and
    for destructive ones the password when re-entry is due."""
    checked = await _api_change(request)
    if isinstance(checked, web.Response):
        return checked
    gw, identity, password = checked
    if not set(identity.user.roles) & set(gw.config.admin.roles):
        return _not_admin()
    if gw.sessions.lacks_mfa(identity):
        return _unverified(gw)
    if destructive and (refusal := await _reauth_refusal(gw, identity, password)) is not None:
        return refusal
    return gw, identity


async def api_revoke(request: web.Request) -> web.Response:
    try:
        checked = await _change(request, destructive=True)
        if isinstance(checked, web.Response):
            return checked
        gw, identity = checked
        session = await gw.store.find(request.match_info["sid"])
        if session is None or not await gw.sessions.end(session.username, session.id,
                                                         REVOKED_BY_ADMIN, actor_of(identity)):
            return json_error(404, "SESSION_NOT_FOUND")
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE")
    return _no_store({"revoked": 1})


def _target(request: web.Request) -> str:
    return request.match_info["username"].strip().casefold()


def _user_action(act: Any, destructive: bool) -> Any:
    """An endpoint that does ``act(gw, username, actor)`` to the user in the path."""
    async def handler(request: web.Request) -> web.Response:
        try:
            checked = await _change(request, destructive)
            if isinstance(checked, web.Response):
                return checked
            gw, identity = checked
            body = await act(gw, _target(request), actor_of(identity))
        except StoreUnavailable:
            return json_error(503, "STORE_UNAVAILABLE")
        return _no_store(body)
    return handler


async def _log_out(gw: Gateway, user: str, actor: str) -> dict[str, Any]:
    return {"revoked": await gw.sessions.log_out_user(user, actor)}


async def _lock(gw: Gateway, user: str, actor: str) -> dict[str, Any]:
    return {"locked": True, "revoked": await gw.sessions.lock(user, actor)}


async def _unlock(gw: Gateway, user: str, actor: str) -> dict[str, Any]:
    await gw.sessions.unlock(user, actor)
    return {"locked": False}


api_logout_user = _user_action(_log_out, destructive=True)
api_lock = _user_action(_lock, destructive=True)
api_unlock = _user_action(_unlock, destructive=False)


def users_with_locks(gw: Gateway, locks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The users file's accounts with their locks, and the locks of accounts
    the file no longer has (so they can still be seen and lifted)."""
    accounts = gw.users.all()
    users = [{**u.public(), "disabled": u.disabled, "locked": u.key in locks,
              "locked_by": locks.get(u.key, {}).get("by")} for u in accounts]
    known = {u.key for u in accounts}
    return users + [{"username": name, "locked": True, "locked_by": meta.get("by"),
                     "in_users_file": False} for name, meta in locks.items() if name not in known]


async def api_users(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    refused = await _admin_first(request, gw)
    if refused is not None:
        return refused
    try:
        locks = await gw.store.locks()
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE")
    return _no_store({"users": users_with_locks(gw, locks)})


# -- the audit trail -------------------------------------------------------------------

_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")
# A spreadsheet runs a cell that starts with one of these as a formula; the
# user names of failed sign-ins and the User-Agents are anyone's to choose.
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA) else text


async def _admin_first(request: web.Request, gw: Gateway) -> web.Response | None:
    """The role check, before any parameter is looked at: a non-admin learns
    nothing but 401 or 403."""
    try:
        identity = await admin_identity(request, gw)
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE")
    return identity if isinstance(identity, web.Response) else None


CSV_FIELDS = ("time", "type", "severity", "actor", "user", "session", "ip", "device",
              "result", "details")


async def api_audit(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    refused = await _admin_first(request, gw)       # the role before anything else
    if refused is not None:
        return refused
    limit = _limit(request, 100)
    if isinstance(limit, web.Response):
        return limit
    q = request.query
    since = parse_time(q["since"]) if q.get("since") else None
    until = parse_time(q["until"]) if q.get("until") else None
    if (q.get("since") and since is None) or (q.get("until") and until is None):
        return json_error(400, "BAD_REQUEST", "since and until are ISO 8601 times or Unix seconds.")
    fmt = q.get("format", "json")
    if fmt not in ("json", "csv"):
        return json_error(400, "BAD_REQUEST", "format is json or csv.")
    if q.get("cursor") and not _ENTRY_ID.fullmatch(q["cursor"]):
        return json_error(400, "BAD_REQUEST", "cursor is not one this gateway gave out.")
    try:
        keep = audit_filter(q.get("user", "").strip().casefold(), q.get("type", ""),
                            q.get("ip", ""), since, until)
        events, cursor = await audit_search(gw.store, keep, q.get("cursor") or None, limit,
                                            since)
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE")
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for e in events:
            row = {**e, "details": ";".join(f"{k}={v}" for k, v in
                                            (e.get("details") or {}).items())}
            writer.writerow({k: _cell(row.get(k)) for k in CSV_FIELDS})
        return web.Response(text=out.getvalue(), content_type="text/csv", headers={
            "Cache-Control": "no-store",
            "Content-Disposition": 'attachment; filename="audit.csv"'})
    return _no_store({"events": events, "next_cursor": cursor})


# -- analytics -------------------------------------------------------------------------

async def api_stats(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    refused = await _admin_first(request, gw)
    if refused is not None:
        return refused
    try:
        stats = await report(gw.store, gw.config.session.idle_timeout, gw.sessions.clock())
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE")
    return _no_store(stats)
