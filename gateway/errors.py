"""Small error responses: HTML for browsers, JSON for everything else.

Never a stack trace: every status the gateway itself produces goes through
here, with a code and the one wording ``MESSAGES`` gives that code
everywhere. Only the refusals that depend on which rule refused
(BAD_REQUEST, FORBIDDEN, METHOD_NOT_ALLOWED) say which, in place of it.
"""

from __future__ import annotations

import functools
import html
import json
import math

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11

from .web.redirects import safe_redirect

# One wording per error code, wherever it is answered.
MESSAGES = {
    "BAD_REQUEST": "The request is malformed.",
    "NOT_FOUND": "Nothing is served at this address.",
    "METHOD_NOT_ALLOWED": "This method is not allowed here.",
    "FORBIDDEN": "You do not have access to this.",
    "REQUEST_TIMEOUT": "The request body did not arrive in time.",
    "PAYLOAD_TOO_LARGE": "The request body is larger than this gateway accepts.",
    "HEADERS_TOO_LARGE": "The request headers are larger than this gateway accepts.",
    "HTTP_VERSION_NOT_SUPPORTED": "Only HTTP/1.0 and HTTP/1.1 are spoken here.",
    "INVALID_CREDENTIALS": "Invalid username or password.",
    "RATE_LIMITED": "Too many requests. Please wait a while, then try again.",
    "REAUTH_REQUIRED": "Enter your password again to do this.",
    "OTP_REQUIRED": "Enter the one-time code from your authenticator app.",
    "OTP_INVALID": "That one-time code is not right, or was used already.",
    "SESSION_LIMIT": "You are signed in on as many devices as this site allows.",
    "SESSION_NOT_FOUND": "A valid session is required.",
    "SESSION_EXPIRED": "A valid session is required.",
    "SESSION_REVOKED": "A valid session is required.",
    "SESSION_INVALID": "A valid session is required.",
    "JWT_INVALID": "A valid session is required.",
    "STORE_UNAVAILABLE": "Sign-in is unavailable right now. Please try again shortly.",
    "UPSTREAM_UNAVAILABLE": "The application is not reachable right now.",
    "UPSTREAM_TIMEOUT": "The application did not answer in time.",
    "WEBSOCKET_REFUSED": "The application refused this connection.",
}
# The page's own style, and nothing else.
_PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
# Statuses after which the same request may work a little later.
_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})
# The codes whose message says which rule refused (see the module docstring).
_SPECIFIC = frozenset({"BAD_REQUEST", "FORBIDDEN", "METHOD_NOT_ALLOWED"})

TITLES = {
    400: "Bad request", 401: "Sign-in required", 403: "Forbidden",
    404: "Not found", 405: "Method not allowed", 408: "Request timeout",
    413: "Request body too large",
    505: "HTTP version not supported",
    429: "Too many requests", 431: "Request headers too large",
    500: "Internal error", 502: "Bad gateway", 503: "Service unavailable",
    504: "Gateway timeout",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{status} {title}</title>
<style>:root{{color-scheme:light dark}}
body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222;background:#fff}}
h1{{font-size:1.4rem}} a{{color:#2557d6}} ul{{padding-left:1.2rem}}
@media (prefers-color-scheme:dark){{body{{color:#eceef2;background:#15171a}} a{{color:#8ab0ff}}}}</style></head>
<body><main><h1>{status} {title}</h1><p>{message}</p><ul>{links}</ul></main></body></html>
"""


def wants_html(request: web.BaseRequest) -> bool:
    """A browser navigation: it asks for HTML before (or instead of) JSON."""
    accept = request.headers.get("Accept", "")
    html_at = accept.find("text/html")
    if html_at < 0:
        return False
    json_at = accept.find("application/json")
    return json_at < 0 or html_at < json_at


def is_navigation(request: web.BaseRequest, method: str) -> bool:
    """A browser's own navigation, to be sent to the login page: a GET or
    HEAD accepting HTML that is not, by its ``Sec-Fetch-Mode``, a script's
    fetch (htmx and kin accept HTML too: a redirect would hand them the
    login page as if it were their answer). ``method``: the request's, or
    for forward-auth the original request's."""
    return method in ("GET", "HEAD") and wants_html(request) and \
        request.headers.get("Sec-Fetch-Mode") in (None, "navigate")


def json_response(status: int, body: dict, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body),
                        content_type="application/json", headers=headers)


def throttled_headers(retry_after: float) -> dict[str, str]:
    """A 429's headers: when to come back (whole seconds, at least 1)."""
    return {"Retry-After": str(max(1, math.ceil(retry_after))), "Cache-Control": "no-store"}


def message_for(code: str, detail: str | None) -> str:
    if detail is not None and code not in _SPECIFIC:
        raise ValueError(f"{code} has one wording: {MESSAGES[code]!r}")
    return detail or MESSAGES[code]


def json_error(status: int, code: str, detail: str | None = None,
               headers: dict | None = None) -> web.Response:
    """``{"error": code, "message": ...}``; rejections are most of an attack's
    traffic, so each distinct body is encoded once."""
    return web.Response(status=status, body=_error_body(code, message_for(code, detail)),
                        content_type="application/json", charset="utf-8", headers=headers)


HTTP1 = (HttpVersion11, HttpVersion10)


def refuse_version(request: web.BaseRequest) -> web.Response:
    """For a request that is not HTTP/1.x (``request.version not in HTTP1``):
    refuse what nginx refuses, an HTTP/0.9-style line (no version) with 400
    and ``HTTP/2.0`` written in a request line with 505.

    aiohttp's parser accepts both, and would even echo the version in the
    status line; the answer goes out as HTTP/1.1 and the connection closes.
    """
    version = request.version
    # aiohttp writes the request's version into the status line (its cached
    # ``version``); a refusal speaks HTTP/1.1. tests/test_attacks.py holds this.
    request._cache["version"] = HttpVersion11
    if version < HttpVersion10:
        refusal = error_response(request, 400, "BAD_REQUEST",
                                 "The request line has no HTTP version.")
    else:
        refusal = error_response(request, 505, "HTTP_VERSION_NOT_SUPPORTED")
    refusal.force_close()
    return refusal


def store_unavailable(request: web.BaseRequest) -> web.Response:
    """The session store did not answer: fail closed, say so plainly."""
    return error_response(request, 503, "STORE_UNAVAILABLE")


@functools.lru_cache(maxsize=256)
def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}).encode()


def error_response(request: web.BaseRequest, status: int, code: str,
                   detail: str | None = None, headers: dict | None = None,
                   link: tuple[str, str] | None = None, retry: bool = True) -> web.Response:
    """``{"error": code, "message": ...}`` or a one-paragraph HTML page with
    a way onward: ``link`` (text, address) if given, "Try again" when
    trying again may help (``retry``: the request's own path is one a
    person asked for), and the home page."""
    headers = {"Cache-Control": "no-store", **(headers or {})}
    if wants_html(request):
        links = [link] if link else []
        if retry and status in _TRANSIENT and request.method in ("GET", "HEAD") and \
                safe_redirect(request.raw_path, "http://localhost", ()) == request.raw_path:
            links.append(("Try again", request.raw_path))    # never "//elsewhere"
        links.append(("Go to the home page", "/"))
        page = _PAGE.format(status=status, title=TITLES.get(status, "Error"),
                            message=html.escape(message_for(code, detail)),
                            links="".join(f'<li><a href="{html.escape(href)}">'
                                          f'{html.escape(text)}</a></li>'
                                          for text, href in links))
        headers.setdefault("Content-Security-Policy", _PAGE_CSP)
        return web.Response(status=status, text=page, content_type="text/html",
                            headers=headers)
    return json_error(status, code, detail, headers)
