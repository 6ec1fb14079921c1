"""Security headers on every answer the gateway gives itself: pages, JSON,
errors, redirects, the monitor script. Never on an upstream's answer (or a
relayed WebSocket), which is the app's to shape: the proxy marks those.

Pages keep their own CSP (guards.py); everything else gets the strictest,
``default-src 'none'``. ``Strict-Transport-Security`` only when
``public_url`` is https, with ``security_headers.hsts_max_age``.
``Referrer-Policy: no-referrer`` makes browsers send ``Origin: null`` with
the gateway's own form posts; web/guards.same_origin accepts that only with
``Sec-Fetch-Site: same-origin``.
"""

from __future__ import annotations

from aiohttp import web

from .config import Config

UPSTREAM_ANSWER = web.ResponseKey("upstream answer", bool)

PERMISSIONS_POLICY = ("accelerometer=(), camera=(), display-capture=(), geolocation=(), "
                      "gyroscope=(), magnetometer=(), microphone=(), payment=(), usb=()")


def security_headers(config: Config) -> dict[str, str]:
    headers = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
               "X-Frame-Options": "DENY", "Permissions-Policy": PERMISSIONS_POLICY,
               "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"}
    hsts = config.security_headers
    if config.secure_cookies and hsts.hsts_max_age:
        headers["Strict-Transport-Security"] = f"max-age={int(hsts.hsts_max_age)}" + (
            "; includeSubDomains" if hsts.hsts_include_subdomains else "")
    return headers


def add_security_headers(app: web.Application, config: Config) -> None:
    headers = security_headers(config)

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if UPSTREAM_ANSWER in response:
            return
        for name, value in headers.items():
            response.headers.setdefault(name, value)
    app.on_response_prepare.append(on_prepare)
