"""The session monitor: its script, and the page its sign-in window ends on.

    GET /monitor.js            the script (proxy/monitor.py adds it to pages)
    GET /monitor/signed-in     where the sign-in window lands: it tells the
                               page that opened it, and closes

The script is one static file, read once; it is served with a validator
and a short cache lifetime, so a new version reaches browsers within
minutes without every page load asking.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files

from aiohttp import web

from .guards import gateway_of, render

_SCRIPT = files("gateway.web").joinpath("static/monitor.js").read_bytes()
_ETAG = '"' + hashlib.sha256(_SCRIPT).hexdigest()[:20] + '"'
_SCRIPT_HEADERS = {"Cache-Control": "public, max-age=300", "ETag": _ETAG,
                   "X-Content-Type-Options": "nosniff"}
# The landing page runs the script (same origin) and nothing else.
_LANDING_CSP = ("default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
                "frame-ancestors 'none'")


async def script(request: web.Request) -> web.Response:
    if request.headers.get("If-None-Match") == _ETAG:
        return web.Response(status=304, headers=_SCRIPT_HEADERS)
    return web.Response(body=_SCRIPT, content_type="text/javascript", charset="utf-8",
                        headers=_SCRIPT_HEADERS)


async def signed_in(request: web.Request) -> web.Response:
    response = render("signed_in.html", prefix=gateway_of(request).config.prefix)
    response.headers["Content-Security-Policy"] = _LANDING_CSP
    return response
