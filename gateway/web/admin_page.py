"""The admin console's page, ``GET /admin`` (no JavaScript needed), and its forms.

    GET  /admin?user=&ip=&device=&cursor=        live sessions
    GET  /admin?view=users                       accounts and locks
    GET  /admin?view=audit&user=&type=&ip=&since=&until=&cursor=
    GET  /admin?view=stats&range=24h|7d          analytics, as charts (charts.py)
    POST /admin   action = revoke (sid) | logout | lock | unlock (user) | confirm (password)

The same checks as the JSON API (admin.py): the role on every request, the
form's CSRF token and this site's Origin on every change, and the password
again before ending sessions or locking once the sign-in is older than
``session.reauth_after``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from ..audit.search import audit_filter, audit_search, parse_time
from ..audit.stats import SAMPLE_EVERY, report
from ..auth.sessions import AuthError, Identity
from ..auth.throttle import Throttled
from ..errors import MESSAGES, error_response, store_unavailable, throttled_headers
from ..store import REVOKED_BY_ADMIN, StoreUnavailable
from . import charts
from .admin import actor_of, find_sessions, users_with_locks
from .guards import (csrf_ok, csrf_token, current_identity, gateway_of, render, same_origin,
                     see_other)
from .my_sessions import MAX_PASSWORD, humanize

PAGE = 50


async def _admin(request: web.Request) -> Identity | web.StreamResponse:
    gw = gateway_of(request)
    try:
        identity = await current_identity(request, gw)
    except AuthError:
        return see_other(f"{gw.config.prefix}/login?rd={gw.config.prefix}/admin")
    if not set(identity.user.roles) & set(gw.config.admin.roles):
        return error_response(request, 403, "FORBIDDEN", "This needs an administrator's role.")
    if gw.sessions.lacks_mfa(identity):
        return error_response(request, 403, "FORBIDDEN", "This page needs two-step "
                              "verification.", link=("Continue to two-step verification",
                                                     f"{gw.config.prefix}/2fa?rd="
                                                     f"{gw.config.prefix}/admin"))
    return identity


async def admin_page(request: web.Request, *, status: int = 200, error: str | None = None,
                     notice: str | None = None) -> web.StreamResponse:
    gw = gateway_of(request)
    q = request.query
    view = q.get("view", "sessions")
    if view not in ("sessions", "users", "audit", "stats"):
        view = "sessions"
    filters = {k: q.get(k, "") for k in ("user", "ip", "device", "type", "since", "until")}
    context: dict[str, Any] = {"sessions": [], "users": [], "events": [], "next_cursor": None,
                               "next_query": "", "export_query": ""}
    try:
        identity = await _admin(request)
        if not isinstance(identity, Identity):
            return identity
        if view == "sessions":
            sessions, cursor = await find_sessions(
                gw, filters["user"].strip().casefold(), filters["ip"], filters["device"],
                q.get("cursor") or None, PAGE)
            context.update(sessions=sessions, next_cursor=cursor, next_query=urlencode(
                {**{k: filters[k] for k in ("user", "ip", "device") if filters[k]},
                 "cursor": cursor or ""}))
        elif view == "users":
            context["users"] = users_with_locks(gw, await gw.store.locks())
        elif view == "stats":
            stats = await report(gw.store, gw.config.session.idle_timeout, gw.sessions.clock())
            context["stats"] = stats_view(stats, q.get("range") == "7d")
        else:
            since = parse_time(filters["since"]) if filters["since"] else None
            until = parse_time(filters["until"]) if filters["until"] else None
            if (filters["since"] and since is None) or (filters["until"] and until is None):
                error = error or "Since and until take times like 2026-12-01T09:00Z."
                status = 400
            keep = audit_filter(filters["user"].strip().casefold(), filters["type"],
                                filters["ip"], since, until)
            events, cursor = await audit_search(gw.store, keep, q.get("cursor") or None,
                                                PAGE, since)
            chosen = {k: filters[k] for k in ("user", "type", "ip", "since", "until")
                      if filters[k]}
            context.update(events=events, next_cursor=cursor,
                           next_query=urlencode({"view": "audit", **chosen,
                                                 "cursor": cursor or ""}),
                           export_query=urlencode({**chosen, "limit": 500}))
    except StoreUnavailable:
        return store_unavailable(request)
    except ValueError:
        return error_response(request, 400, "BAD_REQUEST", "That page link is not valid.")
    return render("admin.html", status=status, prefix=gw.config.prefix, view=view,
                  filters=filters, error=error, notice=notice,
                  reauth_due=gw.sessions.reauth_due(identity.session),
                  reauth_after=humanize(gw.config.session.reauth_after),
                  csrf_token=await csrf_token(request), **context)


async def admin_submit(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    form = await request.post()
    if not same_origin(request, gw) or not await csrf_ok(request, form.get("csrf_token")):
        return await admin_page(request, status=403, error="This form expired. Please try again.")
    try:
        identity = await _admin(request)
        if not isinstance(identity, Identity):
            return identity
        action = form.get("action")
        back = f"{gw.config.prefix}/admin" + ("?view=users" if form.get("view") == "users"
                                              else "")
        if action == "confirm":
            password = str(form.get("password", ""))[:MAX_PASSWORD]
            if not await gw.sessions.reauthenticate(identity, password):
                return await admin_page(request, status=401, error="That password is not right.")
            return see_other(back)
        user = str(form.get("user", "")).strip().casefold()
        if action == "unlock":
            await gw.sessions.unlock(user, actor_of(identity))
            return await admin_page(request, notice=f"Unlocked {user}.")
        if action not in ("revoke", "logout", "lock"):
            return await admin_page(request, status=400, error="Unknown action.")
        if gw.sessions.reauth_due(identity.session):
            return await admin_page(request, status=401,
                                    error="Confirm your password first, then try again.")
        if action == "revoke":
            session = await gw.store.find(str(form.get("sid", "")))
            if session is None or not await gw.sessions.end(
                    session.username, session.id, REVOKED_BY_ADMIN, actor_of(identity)):
                return await admin_page(request, status=404,
                                        error="That session has already ended.")
            notice = f"Ended a session of {session.username}."
        elif action == "logout":
            ended = await gw.sessions.log_out_user(user, actor_of(identity))
            notice = f"Signed {user} out everywhere ({ended} session{'' if ended == 1 else 's'})."
        else:
            ended = await gw.sessions.lock(user, actor_of(identity))
            notice = f"Locked {user}; {ended} session{'' if ended == 1 else 's'} ended."
    except StoreUnavailable:
        return store_unavailable(request)
    except Throttled as exc:
        page = await admin_page(request, status=429, error=MESSAGES["RATE_LIMITED"])
        page.headers.update(throttled_headers(exc.retry_after))
        return page
    return await admin_page(request, notice=notice)


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _utc(ts: float, fmt: str) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime(fmt)


def stats_view(stats: dict[str, Any], week: bool) -> dict[str, Any]:
    """The analytics as the page shows them: figures, charts and their axis
    labels, for the last 24 hours or (``week``) the last 7 days."""
    now = _ts(stats["generated_at"])
    span = 7 * 86400 if week else 86400
    start = now - span
    if week:
        points = [(_ts(p["time"]), p["sessions"]) for p in stats["active"]["last_7d"]]
        ticks = [_utc(now - 86400 * d, "%a") for d in range(7, -1, -1)]
    else:
        points = [(_ts(p["time"]), p["sessions"]) for p in stats["active"]["last_24h"]]
        ticks = [_utc(now - 3600 * h, "%H:00") for h in (24, 18, 12, 6, 0)]
    active, active_top = charts.line(points, start, now, 3600 if week else SAMPLE_EVERY,
                                     "Active sessions over the " + ("last 7 days" if week
                                                                    else "last 24 hours"))
    hours = stats["logins"][-(168 if week else 24):]
    logins, logins_top = charts.bars(
        [(f"{h['hour'][:13].replace('T', ' ')}:00 UTC", (h["success"], h["failure"]))
         for h in hours], "Sign-ins per hour, successful and failed", ("ok", "bad"))
    users, users_top = charts.bars(
        [(d["day"], (d["users"],)) for d in stats["unique_users"]],
        "Users who signed in, per day", ("ok",))
    day = stats["logins"][-24:]
    return {
        "week": week, "raw": stats, "ticks": ticks,
        "signins_24h": sum(h["success"] for h in day),
        "failures_24h": sum(h["failure"] for h in day),
        "users_today": stats["unique_users"][-1]["users"],
        "active": active, "active_top": active_top,
        "active_peak": max((v for _, v in points), default=0),
        "logins": logins, "logins_top": logins_top,
        "users": users, "users_top": users_top,
        "days": [d["day"][5:] for d in stats["unique_users"]],
        "devices": {kind: charts.shares(stats["devices"][kind])
                    for kind in ("type", "os", "browser")},
        "lengths": charts.shares({b["bucket"]: b["sessions"] for b in stats["session_length"]},
                                 ranked=False),
        "failing": stats["top_failing_ips"],
    }
