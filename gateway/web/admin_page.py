"""The admin console's page, ``GET /admin`` (no JavaScript needed), and its forms.

    GET  /admin?user=&ip=&device=&cursor=        live sessions
    GET  /admin?view=users                       accounts and locks
    GET  /admin?view=audit&user=&type=&ip=&since=&until=&cursor=
    POST /admin   action = revoke (sid) | logout | lock | unlock (user) | confirm (password)

The same checks as the JSON API (admin.py): the role on every request, the
form's CSRF token and this site's Origin on every change, and the password
again before ending sessions or locking once the sign-in is older than
``session.reauth_after``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from ..audit.search import audit_filter, audit_search, parse_time
from ..auth.sessions import AuthError, Identity
from ..errors import error_response, store_unavailable
from ..store import REVOKED_BY_ADMIN, StoreUnavailable
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
    return identity


async def admin_page(request: web.Request, *, status: int = 200, error: str | None = None,
                     notice: str | None = None) -> web.StreamResponse:
    gw = gateway_of(request)
    q = request.query
    view = q.get("view", "sessions")
    if view not in ("sessions", "users", "audit"):
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
    return await admin_page(request, notice=notice)
