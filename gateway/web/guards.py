"""What every gateway page and API checks before it acts.

The caller's identity (from the session cookie), that a state change comes
from this site (Origin or Referer), and the form's CSRF token (kept in an
encrypted, prefix-scoped cookie by aiohttp-session). Pages render through
``render`` so every one carries the same no-store and framing headers.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import jinja2
from aiohttp import web
from aiohttp_session import get_session

from ..auth.cookies import NOTICE_COOKIE
from ..auth.sessions import NOTICES, AuthError, Identity
from ..config import origin_of
from ..errors import MESSAGES, json_error, json_response
from ..proxy.headers import client_ip, cookie_value, user_agent_of
from ..state import GATEWAY, Gateway

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("gateway.web", "templates"),
    autoescape=True, trim_blocks=True, lstrip_blocks=True)


def _when(iso_time: str) -> str:
    """``2026-12-01T17:40:17Z`` -> "1 Dec 2026, 17:40 UTC" for people."""
    moment = datetime.strptime(iso_time, "%Y-%m-%dT%H:%M:%SZ")
    return f"{moment.day} {moment:%b %Y, %H:%M} UTC"


_templates.filters["when"] = _when
_PAGE_HEADERS = {
    "Cache-Control": "no-store", "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'"}


def gateway_of(request: web.Request) -> Gateway:
    return request.config_dict[GATEWAY]


def render(name: str, status: int = 200, **context: object) -> web.Response:
    return web.Response(status=status, text=_templates.get_template(name).render(**context),
                        content_type="text/html", headers=_PAGE_HEADERS)


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def same_origin(request: web.Request, gw: Gateway) -> bool:
    """Origin (or Referer) must be this site when a browser sends one.

    The public URL's origin and the origin the request itself arrived on
    are both this site; a cross-site page can forge neither header. Under
    the gateway's ``Referrer-Policy: no-referrer`` a browser posts the
    gateway's own forms with ``Origin: null``; so does a sandboxed frame on
    any site, so "null" passes only with ``Sec-Fetch-Site: same-origin``,
    which no page can set.
    """
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if source is None:
        return True
    if source == "null":
        return request.headers.get("Sec-Fetch-Site") == "same-origin"
    seen = origin_of(source)
    return seen is not None and seen in (gw.public_origin,
                                         origin_of(f"{request.scheme}://{request.host}"))


async def csrf_token(request: web.Request) -> str:
    form_state = await get_session(request)
    token = form_state.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        form_state["csrf"] = token
    return token


async def csrf_ok(request: web.Request, sent: object) -> bool:
    expected = (await get_session(request)).get("csrf")
    return (isinstance(sent, str) and isinstance(expected, str)
            and hmac.compare_digest(sent.encode(), expected.encode()))


def client_of(request: web.Request, gw: Gateway) -> tuple[str, str]:
    """``(client IP, User-Agent)`` as the session records them."""
    return (client_ip(request.remote, request.headers, gw.config.trusted_proxies),
            user_agent_of(request.headers))


async def current_identity(request: web.Request, gw: Gateway, *, touch: bool = False,
                           force_touch: bool = False) -> Identity:
    """The caller's identity; AuthError or StoreUnavailable otherwise."""
    ip, agent = client_of(request, gw)
    token = cookie_value(request.headers.get("Cookie"), gw.config.cookie_name)
    return await gw.sessions.authenticate(token, ip=ip, user_agent=agent,
                                          touch=touch, force_touch=force_touch)


async def json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object, or the 415/400 that says what is wrong.

    Only ``application/json``: a cross-site page cannot send it without a
    CORS preflight, which is what stands in for a CSRF token on the JSON API.
    """
    if request.content_type != "application/json":
        return json_error(415, "BAD_REQUEST", "Send Content-Type: application/json.")
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        return json_error(400, "BAD_REQUEST", "Send a JSON object.")
    return body


async def api_identity(request: web.Request, gw: Gateway, *, touch: bool = False,
                       force_touch: bool = False) -> Identity | web.Response:
    """The caller's identity for a JSON endpoint, or its 401: the code says
    why (and for an ended session, ``reason`` and ``reason_text``, which the
    session monitor shows). The cookie is left alone: this answer may land
    after another tab's sign-in set a new one (pipeline.deny). StoreUnavailable
    propagates."""
    try:
        return await current_identity(request, gw, touch=touch, force_touch=force_touch)
    except AuthError as exc:
        headers = {"Cache-Control": "no-store"}
        # No cookie left: a navigation that met the end cleared it, and left
        # the notice the login page will show; the reason is in that.
        notice = exc.notice or request.cookies.get(NOTICE_COOKIE)
        if notice in NOTICES:
            response = json_response(401, {"error": exc.code, "message": MESSAGES[exc.code],
                                           "reason": notice,
                                           "reason_text": NOTICES[notice]}, headers)
        else:
            response = json_error(401, exc.code, headers=headers)
        return response
