"""``GET /api/session`` and ``POST /api/session/refresh``: the caller's own session.

``GET /api/session?alerts=<unix seconds>`` is what the session monitor
asks: it adds the user's security alerts (``notify`` events) after that
time, and the monitor's settings. Other callers pay no store read for them.
"""

from __future__ import annotations

import math

from aiohttp import web

from ..auth import security
from ..auth.sessions import Identity
from ..errors import json_error, json_response
from ..proxy.headers import cookie_value
from ..proxy.ratelimit import digest
from ..store import StoreUnavailable
from ..state import Gateway
from .guards import api_identity, gateway_of, same_origin


async def _session_json(request: web.Request, **touch: bool) -> web.Response:
    gw = gateway_of(request)
    since: float | None = None
    if "alerts" in request.query:
        try:
            since = float(request.query["alerts"])
        except ValueError:
            since = math.nan
        if not math.isfinite(since):
            return json_error(400, "BAD_REQUEST", "alerts must be a time in Unix seconds.")
    try:
        identity = await api_identity(request, gw, **touch)
        if isinstance(identity, web.Response):
            return identity
        body = gw.sessions.describe(identity)
        if since is not None:
            oldest = gw.sessions.clock() - gw.config.session.history
            body["alerts"] = await security.alerts(gw.store, identity.session,
                                                   max(since, oldest))
            body["monitor"] = monitor_settings(gw, identity)
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE")
    return json_response(200, body, headers={"Cache-Control": "no-store"})


def monitor_settings(gw: Gateway, identity: Identity) -> dict[str, object]:
    """How often to look, when to warn, and how often a person's typing and
    clicking may extend the session (``activity: interaction``): at most
    every ``touch_interval``, and every 30 s at most often."""
    s = gw.config.session
    return {"interval": s.monitor_interval, "expiring_soon": s.expiring_soon,
            "activity": s.activity,
            "ping_interval": max(gw.sessions.touch_interval,
                                 min(30.0, identity.session.idle_timeout / 4))}


async def api_session(request: web.Request) -> web.Response:
    """Reading the session does not extend it, so polling it cannot keep it alive."""
    return await _session_json(request, touch=False)


# A session may be extended this often (the monitor asks at most every 30 s).
REFRESH_LIMIT, REFRESH_WINDOW = 20, 300.0


async def api_session_refresh(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    if not same_origin(request, gw):
        return json_error(403, "FORBIDDEN", "Cross-site request refused.")
    token = cookie_value(request.headers.get("Cookie"), gw.config.cookie_name)
    if token:       # counted before the session is even read (ratelimit.py)
        limited = gw.limiter.hit([("session-refresh", "s:" + digest(token), REFRESH_LIMIT,
                                   REFRESH_WINDOW)])
        if limited is not None:
            return json_error(429, "RATE_LIMITED", headers=limited.headers())
    return await _session_json(request, force_touch=True)
