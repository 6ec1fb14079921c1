"""The second factor's page, ``/2fa``: enrol, or verify a session with a code.

For a signed-in user, one of three forms, by what they have:
- no factor: a new secret (a QR code drawn by the server as SVG, and the
  same secret as text), confirmed with the password and a first code; then
  the ten recovery codes, shown once;
- a factor, but this session was signed in without a code (before the
  user enrolled, or a rule with ``mfa: true`` sent them here): the code,
  after which the session counts as verified;
- a verified session: what is set up, and how many recovery codes are left.

Enrolling or verifying renews the session with a new id (the same limits),
so a cookie copied before does not gain the factor; a code sent here is
throttled per session, so a stolen cookie cannot block its owner's sign-ins.

The secret being enrolled is held in the store (totp.py) under an id kept
in the encrypted form cookie, so reloading the page shows the same QR code
until it is confirmed or five minutes pass.
"""

from __future__ import annotations

from typing import Any

import segno
from aiohttp import web
from aiohttp_session import get_session

from ..auth.cookies import set_session_cookie
from ..auth.sessions import AuthError, Identity
from ..auth.throttle import Throttled
from ..auth.totp import OtpInvalid
from ..auth.users import User
from ..errors import MESSAGES, error_response, store_unavailable, throttled_headers
from ..state import Gateway
from ..store import StoreUnavailable
from .guards import (client_of, csrf_ok, csrf_token, current_identity, gateway_of, render,
                     same_origin, see_other)
from .my_sessions import wait_text
from .redirects import safe_redirect

ENROL = "enrol"        # the form cookie's key for the secret being enrolled
MAX_FIELD = 1024


def enrolment_view(gw: Gateway, user: User, secret: str) -> dict[str, str]:
    """What a person needs to add the secret to an authenticator app."""
    uri = gw.sessions.mfa.provisioning_uri(user, secret)
    qr = segno.make(uri, error="m")
    return {"qr": qr.svg_inline(scale=4, dark="#000", light="#fff",
                                title="QR code of your two-step verification secret"),
            "secret": " ".join(secret[i:i + 4] for i in range(0, len(secret), 4)),
            "issuer": gw.sessions.mfa.issuer, "account": user.username}


async def page(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    if not gw.sessions.mfa.enabled:
        return error_response(request, 404, "NOT_FOUND")
    try:
        identity = await current_identity(request, gw)
        return await _show(request, gw, identity, _rd(request.query.get("rd")))
    except AuthError:
        return see_other(f"{gw.config.prefix}/login?rd={gw.config.prefix}/2fa")
    except StoreUnavailable:
        return store_unavailable(request)


async def submit(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    if not gw.sessions.mfa.enabled:
        return error_response(request, 404, "NOT_FOUND")
    try:
        return await _submit(request, gw)
    except AuthError:
        return see_other(f"{gw.config.prefix}/login?rd={gw.config.prefix}/2fa")
    except StoreUnavailable:
        return store_unavailable(request)


async def _submit(request: web.Request, gw: Gateway) -> web.StreamResponse:
    form = await request.post()
    rd = _rd(form.get("rd"))
    identity = await current_identity(request, gw)
    if not same_origin(request, gw) or not await csrf_ok(request, form.get("csrf_token")):
        (await get_session(request)).pop("csrf", None)
        return await _show(request, gw, identity, rd, status=403,
                           error="This form expired. Please try again.")
    ip, agent = client_of(request, gw)
    code = str(form.get("otp", ""))[:MAX_FIELD]
    try:
        if form.get("action") == "enrol":
            return await _enrol(request, gw, identity, rd, str(form.get("password", "")),
                                code, ip, agent)
        verified = await gw.sessions.step_up(identity, code, ip=ip, user_agent=agent)
    except OtpInvalid:
        return await _show(request, gw, identity, rd, status=401,
                           error=MESSAGES["OTP_INVALID"])
    except Throttled as exc:
        page = await _show(request, gw, identity, rd, status=429,
                           error=f"Too many wrong codes or passwords. Try again in "
                                 f"{wait_text(exc.retry_after)}.")
        page.headers.update(throttled_headers(exc.retry_after))
        return page
    if verified is None:
        return await _show(request, gw, identity, rd, status=409,
                           error="Set up two-step verification first.")
    return _with_cookie(see_other(rd or f"{gw.config.prefix}/2fa"), gw, verified)


def _with_cookie(response: web.Response, gw: Gateway, identity: Identity) -> web.Response:
    """The renewed session's cookie (a new id: the old cookie is spent)."""
    set_session_cookie(response, gw.config, gw.sessions.tokens.issue(identity.session),
                       gw.sessions.cookie_max_age(identity.session))
    return response


async def _enrol(request: web.Request, gw: Gateway, identity: Identity, rd: str | None,
                 password: str, code: str, ip: str, agent: str) -> web.StreamResponse:
    """Password, then the first code of the held secret: saved, codes shown."""
    form_state = await get_session(request)
    pid = form_state.get(ENROL)
    held = await gw.sessions.mfa.held(pid, ENROL) if isinstance(pid, str) else None
    if held is None or held.get("u") != identity.user.key or not isinstance(held.get("s"), str):
        return await _show(request, gw, identity, rd, status=409,
                           error="This page was open too long. Scan the new QR code.")
    if not await gw.sessions.reauthenticate(identity, password[:MAX_FIELD]):
        return await _show(request, gw, identity, rd, status=401,
                           error="That password is not right.")
    enrolled = await gw.sessions.enrol(identity, held["s"], code, ip=ip, user_agent=agent)
    await gw.sessions.mfa.release(pid, ENROL)
    form_state.pop(ENROL, None)
    if enrolled is None:
        return await _show(request, gw, identity, rd, status=409,
                           error="Two-step verification was set up meanwhile, elsewhere.")
    verified, codes = enrolled
    if verified is None:     # enrolled, but the session could not go on: sign in again
        return render("recovery_codes.html", prefix=gw.config.prefix, codes=codes,
                      onward=f"{gw.config.prefix}/login")
    return _with_cookie(render("recovery_codes.html", prefix=gw.config.prefix, codes=codes,
                               onward=rd or f"{gw.config.prefix}/sessions"), gw, verified)


async def _show(request: web.Request, gw: Gateway, identity: Identity, rd: str | None, *,
                status: int = 200, error: str | None = None) -> web.Response:
    user, mfa = identity.user, gw.sessions.mfa
    context: dict[str, Any] = {"prefix": gw.config.prefix, "rd": rd or "", "error": error,
                               "csrf_token": await csrf_token(request),
                               "provisioned": bool(user.totp_secret)}
    enrolment = await gw.store.mfa_get(user.key)
    if user.totp_secret or enrolment is not None:
        context["state"] = "verified" if identity.session.mfa else "verify"
        context["codes_left"] = enrolment.codes_left if enrolment else None
    else:
        context["state"] = "enrol"
        context["required"] = mfa.required(user)
        context["enrol"] = enrolment_view(gw, user, await _held_secret(request, gw, user))
    return render("two_factor.html", status=status, **context)


async def _held_secret(request: web.Request, gw: Gateway, user: User) -> str:
    """The secret this browser is enrolling: the held one, else a new one held."""
    form_state = await get_session(request)
    pid = form_state.get(ENROL)
    held = await gw.sessions.mfa.held(pid, ENROL) if isinstance(pid, str) else None
    if held is not None and held.get("u") == user.key and isinstance(held.get("s"), str):
        return held["s"]
    secret = gw.sessions.mfa.new_secret()
    form_state[ENROL] = await gw.sessions.mfa.hold({"u": user.key, "s": secret}, ENROL)
    return secret


def _rd(value: object) -> str | None:
    """Where to go on afterwards: only a path on this site."""
    if not isinstance(value, str) or not value.startswith("/"):
        return None
    return value if safe_redirect(value, "http://localhost", ()) == value else None
