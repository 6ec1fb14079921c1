"""The gateway's own endpoints under ``/_gateway``: sign in and out, session API.

These pages keep their small form state (the CSRF token) in an encrypted
cookie through aiohttp-session, scoped to the prefix so it never reaches
an upstream; the user's real session lives in the store, not here.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import jinja2
from aiohttp import web
from aiohttp_session import get_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .config import Config
from .errors import (error_response, json_error, json_response, store_unavailable,
                     unsupported_version)
from .headers import client_ip, cookie_value
from .pipeline import NOTICE_COOKIE, set_notice
from .redirects import safe_redirect
from .sessions import NOTICES, SESSION_NOT_FOUND, AuthError, Identity
from .state import GATEWAY, Gateway
from .store import StoreUnavailable

log = logging.getLogger("gateway.auth")

FORM_COOKIE = "gateway_form"
INVALID_CREDENTIALS = "Invalid username or password."
MAX_FIELD = 1024

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("gateway", "templates"),
    autoescape=True, trim_blocks=True, lstrip_blocks=True)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def form_state_key(secret: str) -> bytes:
    """A key for the form cookie, derived from ``secret`` and used for nothing else."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"gateway form state").derive(secret.encode())


def add_gateway_routes(app: web.Application, config: Config) -> None:
    """The gateway's endpoints, on the main app under ``prefix``.

    Only the two forms get the form-state middleware, as a wrapper: an
    app-wide middleware (or a sub-app with one) would make aiohttp run a
    middleware chain for every proxied request too.
    """
    storage = EncryptedCookieStorage(
        form_state_key(config.secret),
        cookie_name=FORM_COOKIE, path=config.prefix, httponly=True,
        secure=config.secure_cookies, samesite="Strict", max_age=3600)
    form_state = session_middleware(storage)

    def with_form_state(handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            return await form_state(request, handler)
        return wrapped

    endpoints: dict[str, dict[str, Handler]] = {
        "/login": {"GET": with_form_state(login_page), "POST": with_form_state(login_submit)},
        "/api/login": {"POST": api_login},
        "/logout": {"GET": with_form_state(logout_page), "POST": with_form_state(logout_submit)},
        "/api/session": {"GET": api_session},
        "/api/session/refresh": {"POST": api_session_refresh},
        "/jwks.json": {"GET": jwks},
        "/healthz": {"GET": healthz},
        "/readyz": {"GET": readyz},
    }
    for path, methods in endpoints.items():
        for method, handler in methods.items():
            if method == "GET":  # and HEAD
                app.router.add_get(config.prefix + path, _http1(handler))
            else:
                app.router.add_route(method, config.prefix + path, _http1(handler))
        # Any other method: 405 here, rather than falling through to the proxy.
        app.router.add_route("*", config.prefix + path,
                             _http1(_method_not_allowed(set(methods))))


def _http1(handler: Handler) -> Handler:
    """HTTP/0.9-style and "HTTP/2.0" request lines are refused, as on the proxy path."""
    async def checked(request: web.Request) -> web.StreamResponse:
        return unsupported_version(request) or await handler(request)
    return checked


def _method_not_allowed(methods: set[str]) -> Handler:
    allow = ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))

    async def handler(request: web.Request) -> web.Response:
        return error_response(request, 405, "METHOD_NOT_ALLOWED",
                              f"Use {allow} here.", headers={"Allow": allow})
    return handler


# -- helpers -----------------------------------------------------------------

def _gw(request: web.Request) -> Gateway:
    return request.config_dict[GATEWAY]


def _render(name: str, status: int = 200, **context: object) -> web.Response:
    return web.Response(status=status, text=_templates.get_template(name).render(**context),
                        content_type="text/html",
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"})


def _same_origin(request: web.Request, gw: Gateway) -> bool:
    """Origin (or Referer) must be this site when a browser sends one.

    The public URL's origin and the origin the request itself arrived on
    are both this site; a cross-site page can forge neither header.
    """
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if source is None:
        return True
    parts = urlsplit(source)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    public = urlsplit(gw.config.public_url)
    return origin in (f"{public.scheme}://{public.netloc}".lower(),
                      f"{request.scheme}://{request.host}".lower())


async def _csrf_token(request: web.Request) -> str:
    form_state = await get_session(request)
    token = form_state.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        form_state["csrf"] = token
    return token


async def _csrf_ok(request: web.Request, sent: object) -> bool:
    expected = (await get_session(request)).get("csrf")
    return (isinstance(sent, str) and isinstance(expected, str)
            and hmac.compare_digest(sent.encode(), expected.encode()))


def _client(request: web.Request, gw: Gateway) -> tuple[str, str]:
    return (client_ip(request.remote, request.headers, gw.config.trusted_proxies),
            request.headers.get("User-Agent", ""))


async def _current(request: web.Request, gw: Gateway, *, touch: bool = False,
                   force_touch: bool = False) -> Identity:
    """The caller's identity; AuthError or StoreUnavailable otherwise."""
    ip, agent = _client(request, gw)
    token = cookie_value(request.headers.get("Cookie"), gw.config.cookie_name)
    return await gw.sessions.authenticate(token, ip=ip, user_agent=agent,
                                          touch=touch, force_touch=force_touch)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


async def _start_session(request: web.Request, gw: Gateway, username: str, password: str,
                         remember: bool) -> Identity | None:
    """Check the password, end the caller's previous session, start a new one."""
    if len(username) > MAX_FIELD or len(password) > MAX_FIELD:
        return None
    user = await gw.users.verify(username, password)
    ip, agent = _client(request, gw)
    if user is None:
        log.info("login failed from %s", ip)
        return None
    try:
        previous = await _current(request, gw)
        await gw.sessions.logout(previous)
    except AuthError:
        pass
    session = await gw.sessions.login(user, remember=remember, ip=ip, user_agent=agent)
    log.info("login %s from %s", user.username, ip)
    return Identity(user=user, session=session)


# -- sign in -------------------------------------------------------------------

async def login_page(request: web.Request, *, status: int = 200, error: str | None = None,
                     username: str = "", remember: bool = False,
                     rd: str | None = None) -> web.Response:
    gw = _gw(request)
    notice_key = cookie_value(request.headers.get("Cookie"), NOTICE_COOKIE)
    response = _render(
        "login.html", status=status, prefix=gw.config.prefix, error=error,
        notice=None if error else NOTICES.get(notice_key or ""),
        csrf_token=await _csrf_token(request), username=username, remember=remember,
        rd=rd if rd is not None else request.query.get("rd", "/"))
    if notice_key:
        response.del_cookie(NOTICE_COOKIE, path=gw.config.prefix)
    return response


async def login_submit(request: web.Request) -> web.StreamResponse:
    gw = _gw(request)
    form = await request.post()
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    remember, rd = form.get("remember") in ("1", "on", "true"), str(form.get("rd", "/"))
    if not _same_origin(request, gw) or not await _csrf_ok(request, form.get("csrf_token")):
        (await get_session(request)).pop("csrf", None)
        return await login_page(request, status=403, rd=rd, username=username,
                                error="This form expired. Please sign in again.")
    try:
        identity = await _start_session(request, gw, username, password, remember)
    except StoreUnavailable:
        return store_unavailable(request)
    if identity is None:
        return await login_page(request, status=401, error=INVALID_CREDENTIALS,
                                username=username, remember=remember, rd=rd)
    target = safe_redirect(rd, gw.config.public_url, gw.config.allowed_redirect_hosts)
    response = _see_other(target)
    gw.sessions.set_cookie(response, identity.session)
    (await get_session(request)).pop("csrf", None)  # a fresh token for the next form
    return response


async def api_login(request: web.Request) -> web.StreamResponse:
    gw = _gw(request)
    if not _same_origin(request, gw):
        return json_error(403, "FORBIDDEN", "Cross-site request refused.")
    # Only JSON: a cross-site page cannot send it without a CORS preflight,
    # which is what stands in for a CSRF token on this endpoint.
    if request.content_type != "application/json":
        return json_error(415, "BAD_REQUEST", "Send Content-Type: application/json.")
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("username"), str) \
            or not isinstance(body.get("password"), str):
        return json_error(400, "BAD_REQUEST", "Send JSON with string fields username and password.")
    try:
        identity = await _start_session(request, gw, body["username"], body["password"],
                                        body.get("remember") is True)
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE", "Sign-in is unavailable right now.")
    if identity is None:
        return json_error(401, "INVALID_CREDENTIALS", INVALID_CREDENTIALS)
    described = gw.sessions.describe(identity)
    response = json_response(200, {**described["user"], **described},
                             headers={"Cache-Control": "no-store"})
    gw.sessions.set_cookie(response, identity.session)
    return response


# -- sign out -------------------------------------------------------------------

async def logout_page(request: web.Request) -> web.Response:
    gw = _gw(request)
    try:
        username = (await _current(request, gw)).user.username
    except (AuthError, StoreUnavailable):
        username = ""
    return _render("logout.html", prefix=gw.config.prefix, username=username,
                   csrf_token=await _csrf_token(request))


async def logout_submit(request: web.Request) -> web.StreamResponse:
    """Ends the session (CSRF-checked), clears the cookie, back to the login page."""
    gw = _gw(request)
    is_json = request.content_type == "application/json"
    sent = None if is_json else (await request.post()).get("csrf_token")
    if not _same_origin(request, gw) or not (is_json or await _csrf_ok(request, sent)):
        return error_response(request, 403, "FORBIDDEN",
                              "This form expired. Please go back and try again.")
    try:
        await gw.sessions.logout(await _current(request, gw))
    except AuthError:
        pass
    except StoreUnavailable:
        return store_unavailable(request)
    response = _see_other(f"{gw.config.prefix}/login")
    gw.sessions.clear_cookie(response)
    set_notice(response, gw, "signed_out")
    return response


# -- session API ------------------------------------------------------------------

async def _session_json(request: web.Request, **touch: bool) -> web.Response:
    gw = _gw(request)
    try:
        identity = await _current(request, gw, **touch)
    except AuthError as exc:
        response = json_error(401, exc.code, "A valid session is required.",
                              headers={"Cache-Control": "no-store"})
        if exc.code != SESSION_NOT_FOUND:
            gw.sessions.clear_cookie(response)
        return response
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE", "The session store is unreachable.")
    return json_response(200, gw.sessions.describe(identity), headers={"Cache-Control": "no-store"})


async def api_session(request: web.Request) -> web.Response:
    """Reading the session does not extend it, so polling it cannot keep it alive."""
    return await _session_json(request, touch=False)


async def api_session_refresh(request: web.Request) -> web.Response:
    if not _same_origin(request, _gw(request)):
        return json_error(403, "FORBIDDEN", "Cross-site request refused.")
    return await _session_json(request, force_touch=True)


# -- machine endpoints ---------------------------------------------------------------

async def jwks(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(_gw(request).signer.jwks()),
                        content_type="application/json",
                        headers={"Cache-Control": "public, max-age=300"})


async def healthz(request: web.Request) -> web.Response:
    return json_response(200, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await _gw(request).store.ping()
    except StoreUnavailable:
        return json_response(503, {"status": "unavailable", "error": "STORE_UNAVAILABLE"})
    return json_response(200, {"status": "ok"})
