"""The route table of the gateway's own endpoints, under ``prefix``.

One place lists every endpoint and its methods. Only the pages with forms get the
form-state middleware (aiohttp-session), as a wrapper: an app-wide
middleware would make aiohttp run a middleware chain for every proxied
request too. Every handler refuses request lines that are not HTTP/1.x.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp_session import session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from ..auth.tokens import derive_key
from ..config import Config
from ..errors import HTTP1, error_response, refuse_version
from .. import metrics
from ..proxy import forward_auth
from . import (admin, admin_page, login, machine, monitor, my_sessions, session_api,
               two_factor)
from .guards import Handler

FORM_COOKIE = "gateway_form"


def form_state_key(secret: str) -> bytes:
    """A key for the form cookie, derived from ``secret`` and used for nothing else."""
    return derive_key(secret, b"gateway form state")


def add_gateway_routes(app: web.Application, config: Config) -> None:
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
        "/login": {"GET": with_form_state(login.login_page),
                   "POST": with_form_state(login.login_submit)},
        "/api/login": {"POST": login.api_login},
        "/logout": {"GET": with_form_state(login.logout_page),
                    "POST": with_form_state(login.logout_submit)},
        "/api/session": {"GET": session_api.api_session},
        "/api/session/refresh": {"POST": session_api.api_session_refresh},
        "/sessions": {"GET": with_form_state(my_sessions.sessions_page),
                      "POST": with_form_state(my_sessions.sessions_submit)},
        "/2fa": {"GET": with_form_state(two_factor.page),
                 "POST": with_form_state(two_factor.submit)},
        "/api/sessions": {"GET": my_sessions.api_sessions},
        "/api/sessions/revoke-others": {"POST": my_sessions.api_revoke_others},
        "/api/sessions/revoke-all": {"POST": my_sessions.api_revoke_all},
        "/api/sessions/{sid}": {"DELETE": my_sessions.api_revoke_one},
        "/admin": {"GET": with_form_state(admin_page.admin_page),
                   "POST": with_form_state(admin_page.admin_submit)},
        "/api/admin/sessions": {"GET": admin.api_sessions},
        "/api/admin/sessions/{sid}": {"GET": admin.api_session, "DELETE": admin.api_revoke},
        "/api/admin/users": {"GET": admin.api_users},
        "/api/admin/users/{username}/logout": {"POST": admin.api_logout_user},
        "/api/admin/users/{username}/lock": {"POST": admin.api_lock},
        "/api/admin/users/{username}/unlock": {"POST": admin.api_unlock},
        "/api/admin/audit": {"GET": admin.api_audit},
        "/api/admin/stats": {"GET": admin.api_stats},
        "/monitor.js": {"GET": monitor.script},
        "/monitor/signed-in": {"GET": monitor.signed_in},
        # Every method: nginx asks with the original request's.
        "/auth": {m: forward_auth.check for m in ("GET", "POST", "PUT", "PATCH", "DELETE",
                                                  "OPTIONS")},
        "/jwks.json": {"GET": machine.jwks},
        "/healthz": {"GET": machine.healthz},
        **({"/metrics": {"GET": metrics.scrape}} if config.metrics.enabled else {}),
        "/readyz": {"GET": machine.readyz},
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
        if request.version not in HTTP1:
            return refuse_version(request)
        return await handler(request)
    return checked


def _method_not_allowed(methods: set[str]) -> Handler:
    allow = ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))

    async def handler(request: web.Request) -> web.Response:
        return error_response(request, 405, "METHOD_NOT_ALLOWED",
                              f"Use {allow} here.", headers={"Allow": allow})
    return handler
