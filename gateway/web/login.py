"""Sign in and sign out: the login and logout pages and ``POST /api/login``.

Sessions start and end in the session service (auth/sessions.py); these
handlers check the form (CSRF token, Origin), the password, and answer.
"""

from __future__ import annotations

import logging
import math

from aiohttp import web
from aiohttp_session import get_session

from ..auth.cookies import NOTICE_COOKIE, clear_session_cookie, set_notice, set_session_cookie
from ..auth.sessions import NOTICES, AuthError, Identity
from ..auth.throttle import Throttled
from ..errors import (MESSAGES, error_response, json_error, json_response, store_unavailable,
                      throttled_headers)
from ..proxy.headers import valid_text
from ..state import Gateway
from ..store import LOGOUT, AtCapacity, Session, StoreUnavailable
from .guards import (client_of, csrf_ok, csrf_token, current_identity, gateway_of,
                     json_object, render, same_origin, see_other)
from .my_sessions import humanize
from .redirects import safe_redirect

log = logging.getLogger("gateway.auth")

MAX_FIELD = 1024


async def sign_in(request: web.Request, gw: Gateway, username: str, password: str,
                  remember: bool, make_room: bool = False) -> tuple[Identity, str] | None:
    """Check the password, end the caller's previous session, start a new one;
    the identity and the device cookie's new value.

    AtCapacity propagates when ``on_limit: refuse`` turns the sign-in away,
    Throttled while a block is in force.
    """
    if len(username) > MAX_FIELD or len(password) > MAX_FIELD:
        return None
    ip, agent = client_of(request, gw)
    try:
        previous: Session | None = (await current_identity(request, gw)).session
    except AuthError:
        previous = None
    device = request.cookies.get(gw.config.device_cookie_name)
    signed_in = await gw.sessions.sign_in(username, password, remember=remember, ip=ip,
                                          user_agent=agent, make_room=make_room,
                                          replacing=previous,
                                          device=gw.devices.device_for(device, username))
    if signed_in is None:
        log.info("login failed from %s", ip)
        return None
    user, session = signed_in
    log.info("login %s from %s", user.username, ip)
    return Identity(user=user, session=session), gw.devices.issue(device, username)


def _set_cookie(response: web.StreamResponse, gw: Gateway, identity: Identity,
                device: str) -> None:
    """The session cookie, and the device cookie that exempts this browser
    from the per-account block next time (auth/throttle.py)."""
    set_session_cookie(response, gw.config, gw.sessions.tokens.issue(identity.session),
                       gw.sessions.cookie_max_age(identity.session))
    gw.devices.set(response, gw.config, device)



# -- sign in -------------------------------------------------------------------

async def login_page(request: web.Request, *, status: int = 200, error: str | None = None,
                     username: str = "", remember: bool = False,
                     rd: str | None = None, at_capacity: bool = False) -> web.Response:
    gw = gateway_of(request)
    notice_key = request.cookies.get(NOTICE_COOKIE)
    response = render(
        "login.html", status=status, prefix=gw.config.prefix, error=error,
        notice=None if error else NOTICES.get(notice_key or ""),
        csrf_token=await csrf_token(request), username=username, remember=remember,
        rd=rd if rd is not None else request.query.get("rd", "/"), at_capacity=at_capacity)
    if notice_key:
        response.del_cookie(NOTICE_COOKIE, path=gw.config.prefix)
    return response


async def login_submit(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    form = await request.post()
    # The typed name is shown again and audited as typed: as valid text.
    username, password = valid_text(str(form.get("username", ""))), str(form.get("password", ""))
    remember, rd = form.get("remember") in ("1", "on", "true"), str(form.get("rd", "/"))
    make_room = form.get("make_room") == "1"
    if not same_origin(request, gw) or not await csrf_ok(request, form.get("csrf_token")):
        (await get_session(request)).pop("csrf", None)
        return await login_page(request, status=403, rd=rd, username=username,
                                error="This form expired. Please sign in again.")
    try:
        signed_in = await sign_in(request, gw, username, password, remember, make_room)
    except StoreUnavailable:
        return store_unavailable(request)
    except AtCapacity:
        return await login_page(request, status=409, error=MESSAGES["SESSION_LIMIT"],
                                username=username, remember=remember, rd=rd, at_capacity=True)
    except Throttled as exc:
        # The wait depends on the block alone: the same for every account.
        seconds = math.ceil(exc.retry_after)    # never less than Retry-After says
        wait = humanize(seconds if seconds < 60 else math.ceil(seconds / 60) * 60)
        page = await login_page(request, status=429, username=username, remember=remember,
                                rd=rd, error=f"Too many sign-in attempts. Try again in {wait}.")
        page.headers.update(throttled_headers(exc.retry_after))
        return page
    if signed_in is None:
        return await login_page(request, status=401, error=MESSAGES["INVALID_CREDENTIALS"],
                                username=username, remember=remember, rd=rd)
    target = safe_redirect(rd, gw.config.public_url, gw.config.allowed_redirect_hosts)
    response = see_other(target)
    _set_cookie(response, gw, *signed_in)
    (await get_session(request)).pop("csrf", None)  # a fresh token for the next form
    return response


async def api_login(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    if not same_origin(request, gw):
        return json_error(403, "FORBIDDEN", "Cross-site request refused.")
    body = await json_object(request)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body.get("username"), str) or not isinstance(body.get("password"), str):
        return json_error(400, "BAD_REQUEST", "Send JSON with string fields username and password.")
    try:
        signed_in = await sign_in(request, gw, valid_text(body["username"]), body["password"],
                                  body.get("remember") is True, body.get("make_room") is True)
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE")
    except AtCapacity:
        return json_error(409, "SESSION_LIMIT")
    except Throttled as exc:
        return json_error(429, "RATE_LIMITED", headers=throttled_headers(exc.retry_after))
    if signed_in is None:
        return json_error(401, "INVALID_CREDENTIALS")
    described = gw.sessions.describe(signed_in[0])
    response = json_response(200, {**described["user"], **described},
                             headers={"Cache-Control": "no-store"})
    _set_cookie(response, gw, *signed_in)
    return response


# -- sign out -------------------------------------------------------------------

async def logout_page(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    try:
        username = (await current_identity(request, gw)).user.username
    except (AuthError, StoreUnavailable):
        username = ""
    return render("logout.html", prefix=gw.config.prefix, username=username,
                  csrf_token=await csrf_token(request))


async def logout_submit(request: web.Request) -> web.StreamResponse:
    """Ends the session (CSRF-checked), clears the cookie, back to the login page."""
    gw = gateway_of(request)
    is_json = request.content_type == "application/json"
    sent = None if is_json else (await request.post()).get("csrf_token")
    if not same_origin(request, gw) or not (is_json or await csrf_ok(request, sent)):
        return error_response(request, 403, "FORBIDDEN",
                              "This form expired. Please go back and try again.")
    try:
        session = (await current_identity(request, gw)).session
        await gw.sessions.end(session.username, session.id, LOGOUT, actor=session.username)
    except AuthError:
        pass
    except StoreUnavailable:
        return store_unavailable(request)
    response = see_other(f"{gw.config.prefix}/login")
    clear_session_cookie(response, gw.config)
    set_notice(response, gw.config, "signed_out")
    return response
