""""Your sessions": where a person is signed in, what ended lately, and why;
ending any session they do not recognise.

    GET  /sessions                      the page (no JavaScript needed)
    POST /sessions                      its forms: end one, end all others,
                                        sign out everywhere, confirm password
    GET  /api/sessions                  {"sessions": [...], "ended": [...],
                                         "alerts": [...]}
    DELETE /api/sessions/{id}           {"revoked": 1}, or 404 SESSION_NOT_FOUND
    POST /api/sessions/revoke-others    {"revoked": n}
    POST /api/sessions/revoke-all       {"revoked": n}: sign out everywhere

Ending another device's session asks for the password again once the
sign-in (or the last re-entry) is older than ``session.reauth_after``
(OWASP ASVS 7.5.2). Every change checks Origin, and the forms a CSRF token;
the JSON API takes only ``application/json`` bodies, which a cross-site
page cannot send without a CORS preflight. Sessions end through the one
lifecycle (auth/sessions.py), so each is recorded with its reason and actor.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from aiohttp import web

from ..auth import security
from ..auth.cookies import clear_session_cookie, set_notice
from ..auth.devices import Device, describe
from ..auth.sessions import AuthError, Identity, iso, session_times
from ..auth.throttle import Throttled
from ..errors import MESSAGES, json_error, json_response, store_unavailable, throttled_headers
from ..state import Gateway
from ..store import (ABSOLUTE, IDLE, IP_CHANGED, LOGOUT, RENEWED, REVOKED_BY_ADMIN,
                     REVOKED_BY_USER, SESSION_LIMIT, UA_CHANGED, USER_DISABLED, EndedSession,
                     Session, StoreUnavailable)
from .guards import (api_identity, csrf_ok, csrf_token, current_identity, gateway_of,
                     json_object, render, same_origin, see_other)

MAX_PASSWORD = 1024


def humanize(seconds: float) -> str:
    """``1800`` -> "30 minutes", ``43200`` -> "12 hours"."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0 or seconds >= size * 10:
            n = round(seconds / size)
            return f"{n} {unit}{'' if n == 1 else 's'}"
    n = round(seconds)
    return f"{n} second{'' if n == 1 else 's'}"


def wait_text(retry_after: float) -> str:
    """How long a throttled person waits, in words: never less than
    ``Retry-After`` says, whole minutes once it is a minute or more. It
    depends on the block alone: the same for every account."""
    seconds = math.ceil(retry_after)
    return humanize(seconds if seconds < 60 else math.ceil(seconds / 60) * 60)


def reason_text(record: EndedSession) -> str:
    """Why a session ended, in words for the person whose session it was."""
    s = record.session
    return {
        LOGOUT.reason: "Signed out.",
        RENEWED.reason: "Went on as a session verified with a one-time code.",
        REVOKED_BY_USER.reason: "Signed out from another device.",
        REVOKED_BY_ADMIN.reason: "Ended by an administrator.",
        SESSION_LIMIT.reason: "Ended by a newer sign-in (too many devices).",
        USER_DISABLED.reason: "The account was disabled.",
        IP_CHANGED.reason: "Ended because it was used from another network address.",
        UA_CHANGED.reason: "Ended because it was used from another browser.",
        IDLE.reason: f"Expired after {humanize(s.idle_timeout)} of inactivity.",
        ABSOLUTE.reason: f"Reached its longest allowed time, "
                         f"{humanize(s.expires_at - s.created_at)}.",
    }.get(record.reason, "Ended.")


def session_details(gw: Gateway, s: Session, devices: dict[str, Device]) -> dict[str, Any]:
    device = devices[s.user_agent]
    return {
        **session_times(s),
        "ip": s.ip,
        "location": gw.locator.locate(s.ip) if gw.locator and s.ip else None,
        "user_agent": s.user_agent,
        "device": device.public(),
    }


async def listing(gw: Gateway, identity: Identity) -> tuple[list[dict[str, Any]],
                                                             list[dict[str, Any]],
                                                             list[dict[str, Any]]]:
    """The live sessions (this one first, then by last activity), the ended
    ones, and the security alerts (``notify`` events) of the history window."""
    now = gw.sessions.clock()
    username, current = identity.session.username, identity.session.id
    live = [s for s in await gw.store.user_sessions(username) if s.alive(now)]
    live.sort(key=lambda s: (s.id != current, -s.last_seen_at))
    ended = await gw.store.history(username, now - gw.config.session.history)
    alerts = await security.alerts(gw.store, identity.session, now - gw.config.session.history)
    # User-Agents are the users' own strings; parsing an unseen one costs
    # milliseconds, so all of them are parsed in one trip off the event loop.
    agents = {s.user_agent for s in live} | {e.session.user_agent for e in ended}
    devices = await asyncio.to_thread(lambda: {ua: describe(ua) for ua in agents})
    return ([{**session_details(gw, s, devices), "current": s.id == current, "status": "ACTIVE"}
             for s in live],
            [{**session_details(gw, e.session, devices), "current": False, "status": e.status,
              "ended_at": iso(e.ended_at), "reason": e.reason, "reason_text": reason_text(e)}
             for e in ended],
            alerts)


async def _others_live(gw: Gateway, me: Session) -> bool:
    now = gw.sessions.clock()
    return any(s.id != me.id and s.alive(now) for s in await gw.store.user_sessions(me.username))


async def _end_others(gw: Gateway, identity: Identity) -> int:
    s = identity.session
    return await gw.sessions.end_all(s.username, REVOKED_BY_USER, actor=s.username, keep=s.id)


async def _end_everywhere(gw: Gateway, identity: Identity) -> int:
    s = identity.session
    ended = await _end_others(gw, identity)
    return ended + await gw.sessions.end(s.username, s.id, LOGOUT, actor=s.username)


# -- JSON API -------------------------------------------------------------------

async def _api_password(request: web.Request) -> str | None | web.Response:
    """The optional ``{"password"}`` of a JSON body; a body must be JSON."""
    if not request.body_exists:
        return None
    body = await json_object(request)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body.get("password", ""), str):
        return json_error(400, "BAD_REQUEST", "Send a JSON object; password is a string.")
    password = body.get("password")
    return password[:MAX_PASSWORD] if password else None


async def _api_change(request: web.Request) -> tuple[Gateway, Identity, str | None] | web.Response:
    """What every state change of the API checks first."""
    gw = gateway_of(request)
    if not same_origin(request, gw):
        return json_error(403, "FORBIDDEN", "Cross-site request refused.")
    password = await _api_password(request)
    if isinstance(password, web.Response):
        return password
    identity = await api_identity(request, gw)
    if isinstance(identity, web.Response):
        return identity
    return gw, identity, password


async def _reauth_refusal(gw: Gateway, identity: Identity,
                          password: str | None) -> web.Response | None:
    if not gw.sessions.reauth_due(identity.session):
        return None
    if password is None:
        return json_error(401, "REAUTH_REQUIRED", headers={"Cache-Control": "no-store"})
    try:
        if not await gw.sessions.reauthenticate(identity, password):
            return json_error(401, "INVALID_CREDENTIALS", headers={"Cache-Control": "no-store"})
    except Throttled as exc:
        return json_error(429, "RATE_LIMITED", headers=throttled_headers(exc.retry_after))
    return None


def _no_store(body: dict[str, Any]) -> web.Response:
    return json_response(200, body, headers={"Cache-Control": "no-store"})


async def api_sessions(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    try:
        identity = await api_identity(request, gw)
        if isinstance(identity, web.Response):
            return identity
        live, ended, alerts = await listing(gw, identity)
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE")
    return _no_store({"sessions": live, "ended": ended, "alerts": alerts})


async def api_revoke_one(request: web.Request) -> web.Response:
    try:
        checked = await _api_change(request)
        if isinstance(checked, web.Response):
            return checked
        gw, identity, password = checked
        me = identity.session
        target = await gw.store.get(me.username, request.match_info["sid"])
        if target is None or not target.alive(gw.sessions.clock()):
            return json_error(404, "SESSION_NOT_FOUND")   # unknown, ended, or not yours
        if target.id == me.id:
            await gw.sessions.end(me.username, me.id, LOGOUT, actor=me.username)
            response = _no_store({"revoked": 1})
            clear_session_cookie(response, gw.config)
            return response
        if (refusal := await _reauth_refusal(gw, identity, password)) is not None:
            return refusal
        ended = await gw.sessions.end(me.username, target.id, REVOKED_BY_USER,
                                      actor=me.username)
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE")
    if not ended:
        return json_error(404, "SESSION_NOT_FOUND")
    return _no_store({"revoked": 1})


async def api_revoke_others(request: web.Request) -> web.Response:
    return await _end_many(request, everywhere=False)


async def api_revoke_all(request: web.Request) -> web.Response:
    return await _end_many(request, everywhere=True)


async def _end_many(request: web.Request, everywhere: bool) -> web.Response:
    try:
        checked = await _api_change(request)
        if isinstance(checked, web.Response):
            return checked
        gw, identity, password = checked
        # As on the page: the password is asked only when another device
        # would be signed out (signing out this one alone needs none).
        if gw.sessions.reauth_due(identity.session) and await _others_live(
                gw, identity.session) and \
                (refusal := await _reauth_refusal(gw, identity, password)) is not None:
            return refusal
        end = _end_everywhere if everywhere else _end_others
        response = _no_store({"revoked": await end(gw, identity)})
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE")
    if everywhere:
        clear_session_cookie(response, gw.config)
    return response


# -- the page -------------------------------------------------------------------

async def sessions_page(request: web.Request, *, status: int = 200, error: str | None = None,
                        notice: str | None = None) -> web.StreamResponse:
    gw = gateway_of(request)
    try:
        identity = await current_identity(request, gw, touch=True)
        live, ended, alerts = await listing(gw, identity)
        two_factor = await gw.sessions.mfa.has_factor(identity.user) \
            if gw.sessions.mfa.enabled else None
    except AuthError:
        return see_other(f"{gw.config.prefix}/login?rd={gw.config.prefix}/sessions")
    except StoreUnavailable:
        return store_unavailable(request)
    return render("sessions.html", status=status, prefix=gw.config.prefix,
                  user=identity.user, live=live, ended=ended, alerts=alerts, error=error,
                  notice=notice, two_factor=two_factor,
                  reauth_due=gw.sessions.reauth_due(identity.session),
                  reauth_after=humanize(gw.config.session.reauth_after),
                  csrf_token=await csrf_token(request))


async def sessions_submit(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    form = await request.post()
    if not same_origin(request, gw) or not await csrf_ok(request, form.get("csrf_token")):
        return await sessions_page(request, status=403,
                                   error="This form expired. Please try again.")
    action = form.get("action")
    try:
        identity = await current_identity(request, gw)
    except AuthError:
        return see_other(f"{gw.config.prefix}/login?rd={gw.config.prefix}/sessions")
    except StoreUnavailable:
        return store_unavailable(request)
    me = identity.session
    try:
        if action == "confirm":
            password = str(form.get("password", ""))[:MAX_PASSWORD]
            if not await gw.sessions.reauthenticate(identity, password):
                return await sessions_page(request, status=401,
                                           error="That password is not right.")
            return see_other(f"{gw.config.prefix}/sessions")
        sid = str(form.get("sid", ""))
        if action == "revoke" and sid == me.id or action == "everywhere":
            if action == "everywhere" and gw.sessions.reauth_due(me) and \
                    await _others_live(gw, me):
                return await sessions_page(request, status=401, error=_CONFIRM_FIRST)
            if action == "everywhere":
                await _end_everywhere(gw, identity)
            else:
                await gw.sessions.end(me.username, me.id, LOGOUT, actor=me.username)
            response = see_other(f"{gw.config.prefix}/login")
            clear_session_cookie(response, gw.config)
            set_notice(response, gw.config, "signed_out")
            return response
        if action not in ("revoke", "others"):
            return await sessions_page(request, status=400, error="Unknown action.")
        if gw.sessions.reauth_due(me):
            return await sessions_page(request, status=401, error=_CONFIRM_FIRST)
        if action == "others":
            ended = await _end_others(gw, identity)
            notice = f"Signed out {ended} other session{'' if ended == 1 else 's'}."
        else:
            target = await gw.store.get(me.username, sid)
            if target is None or not target.alive(gw.sessions.clock()) or not await \
                    gw.sessions.end(me.username, sid, REVOKED_BY_USER, actor=me.username):
                return await sessions_page(request, status=404,
                                           error="That session has already ended.")
            notice = "Signed out that session."
    except StoreUnavailable:
        return store_unavailable(request)
    except Throttled as exc:
        page = await sessions_page(request, status=429, error=MESSAGES["RATE_LIMITED"])
        page.headers.update(throttled_headers(exc.retry_after))
        return page
    return await sessions_page(request, notice=notice)


_CONFIRM_FIRST = "Confirm your password first, then try again."
