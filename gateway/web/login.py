"""Sign in and sign out: the login and logout pages and ``POST /api/login``.

Sessions start and end in the session service (auth/sessions.py); these
handlers check the form (CSRF token, Origin), the password, and answer.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp_session import get_session

from ..auth.cookies import NOTICE_COOKIE, clear_session_cookie, set_notice, set_session_cookie
from ..auth.sessions import NOTICES, AuthError, Identity, OtpRequired
from ..auth.throttle import Throttled
from ..auth.totp import OtpInvalid
from ..errors import (MESSAGES, error_response, json_error, json_response, store_unavailable,
                      throttled_headers)
from ..proxy.headers import valid_text
from ..state import Gateway
from ..store import LOGOUT, AtCapacity, Session, StoreUnavailable
from .guards import (client_of, csrf_ok, csrf_token, current_identity, gateway_of,
                     json_object, render, same_origin, see_other)
from .my_sessions import wait_text
from .redirects import safe_redirect
from .two_factor import enrolment_view

log = logging.getLogger("gateway.auth")

MAX_FIELD = 1024

# The form cookie's key for a sign-in waiting for its one-time code.
PENDING = "pending"
TOO_LATE = "This sign-in took too long. Please sign in again."
UNREADABLE = ("Your second factor cannot be checked. Please ask an administrator to "
              "reset it.")


async def sign_in(request: web.Request, gw: Gateway, username: str, password: str,
                  remember: bool, make_room: bool = False,
                  otp: str | None = None) -> tuple[Identity, str] | None:
    """Check the password (and the one-time code), end the caller's previous
    session, start a new one; the identity and the device cookie's new value.

    AtCapacity propagates when ``on_limit: refuse`` turns the sign-in away,
    Throttled while a block is in force, OtpRequired and OtpInvalid for a
    user with a second factor.
    """
    if len(username) > MAX_FIELD or len(password) > MAX_FIELD:
        return None
    ip, agent = client_of(request, gw)
    device = request.cookies.get(gw.config.device_cookie_name)
    signed_in = await gw.sessions.sign_in(username, password, remember=remember, ip=ip,
                                          user_agent=agent, make_room=make_room,
                                          replacing=await _previous(request, gw),
                                          device=gw.devices.device_for(device, username),
                                          otp=otp)
    if signed_in is None:
        log.info("login failed from %s", ip)
        return None
    user, session = signed_in
    log.info("login %s from %s", user.username, ip)
    return Identity(user=user, session=session), gw.devices.issue(device, username)


async def _previous(request: web.Request, gw: Gateway) -> Session | None:
    """The caller's current session, which a new sign-in replaces."""
    try:
        return (await current_identity(request, gw)).session
    except AuthError:
        return None


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
    # A sign-in waiting for its code is abandoned by going back to the start.
    (await get_session(request)).pop(PENDING, None)
    response = render(
        "login.html", status=status, prefix=gw.config.prefix, error=error,
        notice=None if error else NOTICES.get(notice_key or ""),
        csrf_token=await csrf_token(request), username=username, remember=remember,
        rd=rd if rd is not None else request.query.get("rd", "/"), at_capacity=at_capacity,
        focus="password" if username else "username")
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
    if "otp" in form:
        return await _code_submit(request, gw, str(form["otp"])[:MAX_FIELD], rd, make_room)
    try:
        signed_in = await sign_in(request, gw, username, password, remember, make_room)
    except StoreUnavailable:
        return store_unavailable(request)
    except AtCapacity:
        return await login_page(request, status=409, error=MESSAGES["SESSION_LIMIT"],
                                username=username, remember=remember, rd=rd, at_capacity=True)
    except Throttled as exc:
        page = await login_page(request, status=429, username=username, remember=remember,
                                rd=rd, error=f"Too many sign-in attempts. Try again in "
                                             f"{wait_text(exc.retry_after)}.")
        page.headers.update(throttled_headers(exc.retry_after))
        return page
    except OtpRequired as exc:
        held: dict[str, Any] = {"u": exc.user.key, "r": remember, "m": make_room}
        if exc.enrol:
            held["s"] = gw.sessions.mfa.new_secret()
        try:
            pid = await gw.sessions.mfa.hold(held, "login")
        except StoreUnavailable:
            return store_unavailable(request)
        (await get_session(request))[PENDING] = pid
        return await _code_page(request, gw, held, rd)
    except OtpInvalid:
        return await login_page(request, status=401, username=username, remember=remember,
                                rd=rd, error=UNREADABLE)
    if signed_in is None:
        return await login_page(request, status=401, error=MESSAGES["INVALID_CREDENTIALS"],
                                username=username, remember=remember, rd=rd)
    return await _signed_in(request, gw, signed_in, rd)


async def _signed_in(request: web.Request, gw: Gateway, signed_in: tuple[Identity, str],
                     rd: str, codes: list[str] | None = None) -> web.Response:
    """On to ``rd`` with the new cookies; first the recovery codes, when new."""
    target = safe_redirect(rd, gw.config.public_url, gw.config.allowed_redirect_hosts)
    if codes:
        response = render("recovery_codes.html", prefix=gw.config.prefix, codes=codes,
                          onward=target)
    else:
        response = see_other(target)
    _set_cookie(response, gw, *signed_in)
    form_state = await get_session(request)
    form_state.pop("csrf", None)      # a fresh token for the next form
    form_state.pop(PENDING, None)
    return response


async def _code_page(request: web.Request, gw: Gateway, held: dict[str, Any], rd: str, *,
                     status: int = 200, error: str | None = None,
                     at_capacity: bool = False) -> web.Response:
    """The second step: the code, and when the user must enrol, the secret
    to enrol first (a QR code and its text)."""
    enrol = None
    if isinstance(held.get("s"), str):
        user = gw.users.get(str(held.get("u", "")))
        if user is not None:
            enrol = enrolment_view(gw, user, held["s"])
    return render("login_code.html", status=status, prefix=gw.config.prefix, error=error,
                  csrf_token=await csrf_token(request), rd=rd, enrol=enrol,
                  at_capacity=at_capacity)


async def _code_submit(request: web.Request, gw: Gateway, otp: str, rd: str,
                       make_room: bool) -> web.Response:
    """The second step's form: the code for the sign-in held since the password."""
    form_state = await get_session(request)
    pid = form_state.get(PENDING)
    ip, agent = client_of(request, gw)
    try:
        held = await gw.sessions.mfa.held(pid, "login") if isinstance(pid, str) else None
        if held is None:
            return await login_page(request, status=401, rd=rd, error=TOO_LATE)
        device = gw.devices.device_for(request.cookies.get(gw.config.device_cookie_name),
                                       str(held.get("u", "")))
        finished = await gw.sessions.finish_sign_in(
            pid, held, otp, ip=ip, user_agent=agent, replacing=await _previous(request, gw),
            device=device, make_room=make_room)
    except StoreUnavailable:
        return store_unavailable(request)
    except OtpInvalid:
        return await _code_page(request, gw, held, rd, status=401,
                                error=MESSAGES["OTP_INVALID"])
    except Throttled as exc:
        page = await _code_page(request, gw, held, rd, status=429,
                                error=f"Too many wrong codes. Try again in "
                                      f"{wait_text(exc.retry_after)}.")
        page.headers.update(throttled_headers(exc.retry_after))
        return page
    except AtCapacity:
        # Held again, enrolled: the next code, with room made, finishes it.
        return await _code_page(request, gw, {k: v for k, v in held.items() if k != "s"}, rd,
                                status=409, error=MESSAGES["SESSION_LIMIT"], at_capacity=True)
    if finished is None:
        return await login_page(request, status=401, rd=rd, error=TOO_LATE)
    user, session, codes = finished
    log.info("login %s from %s (with a one-time code)", user.username, ip)
    device_cookie = gw.devices.issue(request.cookies.get(gw.config.device_cookie_name),
                                     user.key)
    return await _signed_in(request, gw, (Identity(user, session), device_cookie), rd, codes)


async def api_login(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    if not same_origin(request, gw):
        return json_error(403, "FORBIDDEN", "Cross-site request refused.")
    body = await json_object(request)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body.get("username"), str) or not isinstance(body.get("password"), str) \
            or not isinstance(body.get("otp", ""), (str, type(None))):
        return json_error(400, "BAD_REQUEST", "Send JSON with string fields username and "
                                              "password (and otp, when asked for).")
    try:
        signed_in = await sign_in(request, gw, valid_text(body["username"]), body["password"],
                                  body.get("remember") is True, body.get("make_room") is True,
                                  otp=(body.get("otp") or None) and body["otp"][:MAX_FIELD])
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE")
    except AtCapacity:
        return json_error(409, "SESSION_LIMIT")
    except Throttled as exc:
        return json_error(429, "RATE_LIMITED", headers=throttled_headers(exc.retry_after))
    except OtpRequired as exc:
        if exc.enrol:
            # A client cannot enrol: the user sets a factor up in a browser first.
            return json_response(401, {"error": "OTP_REQUIRED", "enrol": True,
                                       "message": "Set up two-step verification by signing "
                                                  "in with a browser first."})
        return json_error(401, "OTP_REQUIRED")
    except OtpInvalid:
        return json_error(401, "OTP_INVALID")
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
