"""The proxied request, top to bottom: every step answers or passes on.

    limits -> decide (canonical path -> upstream -> path parameters -> session
           -> roles) -> headers -> WebSocket origin -> forward (with the
           session monitor's tag on upstreams that want it)

``handle`` runs these in this order and is the whole of it: no middleware
chain (measured: a chain costs every proxied request). ``decide`` is the
step other entry points share; the rest are pure functions or small objects
tested on their own.
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..auth.cookies import clear_session_cookie, set_notice
from ..auth.sessions import AuthError, Identity
from ..config import Upstream, origin_of
from ..errors import HTTP1, error_response, is_navigation, json_error, refuse_version
from ..logs import ACCESS, request_id
from ..state import GATEWAY, Gateway
from ..store import StoreUnavailable
from .access import upstream_path
from .decide import Refusal, counts_as_activity, decide
from .forward import forward
from .headers import (REFUSAL_MARK, client_ip, safe_header_value, upstream_request_headers,
                      user_agent_of)
from .monitor import wants_page
from .websocket import forward_websocket, is_websocket


async def handle(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    config = gw.config

    # 1. Bounds the HTTP parser leaves to us.
    if request.version not in HTTP1:
        return refuse_version(request)
    if sum(len(k) + len(v) + 4 for k, v in request.raw_headers) > config.limits.max_header_size:
        return error_response(request, 431, "HEADERS_TOO_LARGE")
    if (request.content_length or 0) > config.limits.max_body_size:
        return error_response(request, 413, "PAYLOAD_TOO_LARGE")

    # 2-5. The decision: canonical path, upstream, path parameters, session, roles.
    ip = client_ip(request.remote, request.headers, config.trusted_proxies)
    user_agent = user_agent_of(request.headers)
    headers_in = request.headers
    activity = counts_as_activity(config.session.activity, headers_in.get("Sec-Fetch-Mode"),
                                  headers_in.get("Sec-Fetch-Dest"))
    verdict = await decide(gw, request.host, request.raw_path, headers_in.get("Cookie"),
                           ip, user_agent, activity)
    if isinstance(verdict, Refusal):
        return refuse(request, gw, verdict)
    upstream, identity, token = verdict.upstream, verdict.identity, verdict.token
    request[ACCESS] = (identity.user.username if identity else "-", upstream.name)

    # 5b. Rate limits: counted in this worker, shared through the store by a
    #     background task (ratelimit.py), so no store call here.
    if gw.rate_limits is not None:
        limited = gw.rate_limits.check(
            upstream, verdict.judged, request.method,
            identity.user.key if identity else None,
            identity.session.id if identity else None, ip)
        if limited is not None:
            return error_response(request, 429, "RATE_LIMITED", headers=limited.headers())

    # 6. Headers: the client's, minus anything that could pass for ours, plus ours.
    headers = upstream_request_headers(
        request.headers, peer=request.remote, client=ip,
        scheme=request.scheme, host=request.host,
        trusted=config.trusted_proxies, strip=gw.strip_headers,
        drop_cookies=gw.own_cookies,
        identity=identity_headers(gw, upstream.name, identity),
        upstream_host=None if upstream.preserve_host else upstream.authority)
    headers["X-Request-ID"] = request_id(request)
    # The session monitor goes into pages, which must come uncompressed for it.
    monitor = None
    if identity is not None and upstream.session_monitor and \
            wants_page(headers_in.get("Sec-Fetch-Dest"), headers_in.get("Accept")):
        headers["Accept-Encoding"] = "identity"
        for name in ("Range", "If-Range"):     # a whole page, or no tag in it
            headers.popall(name, None)
        monitor = gw.monitor_tag
    _, mark, query = request.raw_path.partition("?")
    url = URL(upstream.base + upstream_path(upstream, verdict.encoded_path)
              + (mark + query if query else ""), encoded=True)

    # 7. Forward, streaming both ways; a WebSocket ends with its session and
    #    never rides it from another site's page (CSWSH: SameSite does not
    #    cover every cross-site case, e.g. a sibling subdomain).
    if is_websocket(request):
        if identity and not origin_allowed(request.headers.get("Origin"), gw, upstream, headers):
            return error_response(request, 403, "FORBIDDEN",
                                  "This connection was opened from another site.")
        async def still_valid() -> bool:
            try:
                # touch=False: an open tab left alone must not keep a session alive.
                await gw.sessions.authenticate(token, ip=ip, user_agent=user_agent, touch=False)
            except (AuthError, StoreUnavailable):
                return False
            return True
        return await forward_websocket(request, upstream, url, headers, gw.client,
                                       still_valid if identity else None)
    return await forward(request, upstream, url, headers, gw.client,
                         config.limits.max_body_size, gw.response_guard,
                         private=identity is not None and not upstream.allow_public_cache,
                         monitor=monitor)


def origin_allowed(origin: str | None, gw: Gateway, upstream: Upstream,
                   forwarded: CIMultiDict[str]) -> bool:
    """A WebSocket's ``Origin``: this site as the client reached it, ``public_url``,
    or the upstream's ``websocket_origins``. No Origin (not a browser) passes."""
    if origin is None:
        return True
    seen = origin_of(origin)
    if seen is None:  # "null" (sandboxed frames, file:) and anything unparsable
        return False
    # A chain of proxies may list several values; the first is what the client used.
    proto = forwarded["X-Forwarded-Proto"].split(",", 1)[0].strip()
    host = forwarded["X-Forwarded-Host"].split(",", 1)[0].strip()
    own = origin_of(f"{proto}://{host}")
    return seen in (own, gw.public_origin) or seen in upstream.websocket_origins


def identity_headers(gw: Gateway, audience: str, identity: Identity | None) -> dict[str, str]:
    if identity is None:
        return {}
    user, h = identity.user, gw.config.headers
    return {
        # From the users file: any character could be in them.
        h.user: safe_header_value(user.username),
        h.email: safe_header_value(user.email),
        h.name: safe_header_value(user.name),
        h.roles: safe_header_value(",".join(user.roles)),
        # Ours, URL-safe base64 by construction: scanning the 600-byte
        # assertion on every request cost about 6 us.
        h.session: identity.session.id,
        h.assertion: gw.signer.sign(audience=audience, subject=user.username,
                                    email=user.email, name=user.name, roles=user.roles,
                                    sid=identity.session.id),
    }


_REFUSED = {"Cache-Control": "no-store", REFUSAL_MARK: "session"}


def refuse(request: web.Request, gw: Gateway, refusal: Refusal) -> web.Response:
    if refusal.auth is not None:
        return deny(request, gw, refusal.auth, refusal.had_cookie)
    return error_response(request, refusal.status, refusal.code, refusal.detail,
                          link=refusal.link)


def deny(request: web.Request, gw: Gateway, exc: AuthError, had_cookie: bool) -> web.Response:
    """Browsers are sent to sign in; everything else gets 401 JSON with the code.

    A browser navigation is ``is_navigation``'s. The 401 carries ``Gateway-Refusal: session``, by which the session
    monitor knows the upstream never saw the request. A short-lived notice
    cookie tells the login page why the user has to sign in again. The
    cookie that named the dead session is cleared on a navigation only: a
    script's request still in flight when another tab signs in would
    otherwise clear the new session's cookie as its answer lands (a dead
    cookie left in place costs nothing; the store refuses it).
    """
    browser = is_navigation(request, request.method)
    if browser:
        target = f"{gw.config.prefix}/login?" + urlencode({"rd": request.raw_path})
        response = web.Response(status=302, headers={"Location": target,
                                                     "Cache-Control": "no-store"})
    else:
        response = json_error(401, exc.code, headers=_REFUSED)
    if had_cookie:
        if browser:
            clear_session_cookie(response, gw.config)
        if exc.notice:
            set_notice(response, gw.config, exc.notice)
    return response
