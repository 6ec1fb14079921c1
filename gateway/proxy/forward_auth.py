"""Forward-auth, ``GET /auth``: the proxy's decision for a proxy in front.

nginx ``auth_request``, Traefik ``forwardAuth`` and Caddy ``forward_auth``
send each request's headers here (the body stays with them) and forward
the request only on a 2xx. The original request is named by
``X-Original-URL`` and ``X-Original-Method`` (nginx) or by
``X-Forwarded-Proto``, ``-Host``, ``-Uri`` and ``-Method`` (Traefik,
Caddy). Those headers are believed only from ``trusted_proxies``: anyone
else could name a public path and be told yes (oauth2-proxy's
CVE-2026-40575), so an untrusted caller gets 403 whatever it asks.

The answer is ``decide``'s, the proxy's own step, so both judge alike: one
canonical path, public paths, role and second-factor rules, then the rate
limits. A host and path no upstream serves is judged by ``FALLBACK``: any
signed-in user, in an auth-only deployment (no upstreams); with upstreams,
nobody. Paths under the gateway's prefix on its own host are let through:
its pages guard themselves, and the login page must stay reachable when a
proxy guards the whole host. Only canonical paths are judged (``canonical``):
the proxy forwards the path as the client sent it.

- 200: go ahead, with the identity headers as response headers for the
  proxy to copy to the app (``auth_request_set``, ``authResponseHeaders``,
  ``copy_headers``): the session's, or on a public path the same names
  empty, so that what the proxy copies always replaces a client's.
- 401: no valid session, with ``Location``: the login page, back to the
  original URL. With ``?redirect=1`` (Traefik, Caddy: they hand non-2xx
  answers to the browser) a browser navigation gets that as a 302.
- 403, 429, 400, 503: as the proxy would answer. nginx's auth_request
  passes only 401 and 403 on (anything else becomes 500), so for it a
  rate limit answers 403.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote, urlencode

from aiohttp import web

from ..config import Config, Upstream, origin_of
from ..errors import error_response, is_navigation
from ..state import GATEWAY
from .decide import Refusal, counts_as_activity, decide
from .headers import client_ip, is_trusted, user_agent_of
from .paths import BadPath, normalize_path
from .pipeline import identity_headers

log = logging.getLogger("gateway.forward_auth")

# Judges what no upstream serves: any signed-in user.
FALLBACK = Upstream(name="forward-auth", url="http://forward-auth.invalid")

_NO_STORE = {"Cache-Control": "no-store"}


# A Host as a proxy may pass it on: a name or an address, a port; nothing
# else (nginx lets "?" or "@" through, which would move the path).
_HOST = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def original_request(request: web.Request) -> tuple[str, str, str, str] | None:
    """``(scheme, host, raw path and query, method)`` of the request the
    proxy asks about, from its headers; None if they do not say, say it
    both ways (a proxy of one kind passes the other kind's headers on from
    the client: Caddy copies a client's ``X-Original-URL``), or name a host
    that is not one (``Host: app?`` would turn the path into a query)."""
    h = request.headers
    url, uri, host = h.get("X-Original-URL"), h.get("X-Forwarded-Uri"), h.get("X-Forwarded-Host")
    if url and uri:
        return None
    if url:
        scheme, sep, rest = url.partition("://")
        authority, slash, tail = rest.partition("/")
        if not sep or scheme.lower() not in ("http", "https") or not slash \
                or not _HOST.fullmatch(authority):
            return None
        return scheme.lower(), authority, "/" + tail, _method(h.get("X-Original-Method"))
    if not uri or not host:
        return None
    host = host.split(",", 1)[0].strip()
    if not _HOST.fullmatch(host) or not uri.startswith("/"):
        return None
    scheme = h.get("X-Forwarded-Proto", "http").split(",", 1)[0].strip().lower()
    return scheme, host, uri, _method(h.get("X-Forwarded-Method"))


def canonical(target: str) -> None:
    """BadPath unless the path is one the app cannot read differently from
    the gateway. Unlike its own proxy, which forwards the path it judged,
    the proxy in front forwards the client's: ``/admin/../static/x`` judged
    as public could reach an app that resolves it otherwise (or not at all)
    as ``/admin/...``. So dot segments, ``//`` and fragments, encoded or
    not, are refused rather than resolved."""
    path = target.split("?", 1)[0]
    if "#" in target:
        raise BadPath("request target contains a fragment")
    for decoded in (path, unquote(path), unquote(unquote(path))):
        if "\\" in decoded or "//" in decoded or any(
                seg in (".", "..") or seg.split(";", 1)[0] in (".", "..")
                for seg in decoded.split("/")[1:]):
            raise BadPath("request path is not canonical (dot segments or '//'); "
                          "a proxy in front forwards it as sent")


def _no_identity(config: Config) -> dict[str, str]:
    """Every identity header, empty: what a proxy copies then replaces a client's."""
    return dict.fromkeys(config.headers.names(), "")


def own_page(path: str, prefix: str) -> bool:
    """A page of the gateway's own, which guards itself: under the prefix,
    but not its two machine endpoints (a proxy must not serve those)."""
    return path.startswith(prefix + "/") and path not in (f"{prefix}/auth",
                                                           f"{prefix}/metrics")


def _method(value: str | None) -> str:
    return (value or "GET").strip().upper()


async def check(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    config = gw.config
    if not is_trusted(request.remote, config.trusted_proxies):
        log.warning("forward-auth asked by %s, which is not in trusted_proxies: refused",
                    request.remote)
        return error_response(request, 403, "FORBIDDEN",
                              "Forward-auth answers only the proxies in trusted_proxies.")
    original = original_request(request)
    if original is None:
        return error_response(request, 400, "BAD_REQUEST",
                              "Name the request one way: X-Original-URL (nginx), or "
                              "X-Forwarded-Proto, X-Forwarded-Host and X-Forwarded-Uri "
                              "(Traefik, Caddy).")
    scheme, host, target, method = original
    nginx = "X-Original-URL" in request.headers
    try:
        path, _ = normalize_path(target)
        canonical(target)
    except BadPath as exc:
        return error_response(request, 400, "BAD_REQUEST", str(exc), headers=_NO_STORE,
                              retry=False)
    if own_page(path, config.prefix) and origin_of(f"{scheme}://{host}") == gw.public_origin:
        return web.Response(status=200, headers={**_NO_STORE, **_no_identity(config)})

    h = request.headers
    ip = client_ip(request.remote, h, config.trusted_proxies)
    activity = counts_as_activity(config.session.activity, h.get("Sec-Fetch-Mode"),
                                  h.get("Sec-Fetch-Dest"))
    verdict = await decide(gw, host, target, h.get("Cookie"), ip, user_agent_of(h), activity,
                           fallback=None if config.upstreams else FALLBACK)
    if isinstance(verdict, Refusal):
        if verdict.code == "NOT_FOUND":          # no upstream serves it: nobody may pass
            return error_response(request, 403, "FORBIDDEN",
                                  "No upstream is configured for this host and path.",
                                  headers=_NO_STORE, retry=False)
        if verdict.auth is None:
            return error_response(request, verdict.status, verdict.code, verdict.detail,
                                  headers=_NO_STORE, link=verdict.link, retry=False)
        return _sign_in(request, gw.config, f"{scheme}://{host}{target}", method,
                        verdict.auth.code)
    identity = verdict.identity
    if gw.rate_limits is not None:
        limited = gw.rate_limits.check(
            verdict.upstream, verdict.judged, method, identity.user.key if identity else None,
            identity.session.id if identity else None, ip)
        if limited is not None:
            return error_response(request, 403 if nginx else 429, "RATE_LIMITED",
                                  headers=limited.headers(), retry=False)
    # A public path: every identity header, empty. A proxy copying them then
    # sets nothing a client could have sent (Caddy 2.6 would otherwise copy
    # its unresolved placeholder, "{http.reverse_proxy.header.X-Auth-User}").
    identity_out = identity_headers(gw, verdict.upstream.name, identity) if identity \
        else _no_identity(config)
    return web.Response(status=200, headers={**_NO_STORE, **identity_out})


def _sign_in(request: web.Request, config: Config, original_url: str, method: str,
             code: str) -> web.Response:
    """401 with the login page as ``Location``; a 302 there for a browser
    navigation when the proxy asked for redirects."""
    login = f"{config.public_url.rstrip('/')}{config.prefix}/login?" + \
        urlencode({"rd": original_url})
    headers = {**_NO_STORE, "Location": login}
    if is_navigation(request, method) and request.query.get("redirect") in ("1", "true"):
        return web.Response(status=302, headers=headers)
    return error_response(request, 401, code, headers=headers, retry=False)
