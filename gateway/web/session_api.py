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
from ..config.schema import REFRESH_POLICY
from ..errors import json_error, json_response
from ..proxy.headers import cookie_value
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
    clicking may extend the session (``activity: interaction``)."""
    s = gw.config.session
    return {"interval": s.monitor_interval, "expiring_soon": s.expiring_soon,
            "activity": s.activity,
            "ping_interval": ping_interval(gw, identity.session.idle_timeout)}


def ping_interval(gw: Gateway, idle_timeout: float) -> float:
    """How often the monitor's pings may extend a session: at most every
    ``touch_interval``, and every 30 s at most often."""
    return max(gw.sessions.touch_interval, min(30.0, idle_timeout / 4))


async def api_session(request: web.Request) -> web.Response:
    """Reading the session does not extend it, so polling it cannot keep it alive."""
    return await _session_json(request, touch=False)


async def api_session_refresh(request: web.Request) -> web.Response:
    gw = gateway_of(request)
    if not same_origin(request, gw):
        return json_error(403, "FORBIDDEN", "Cross-site request refused.")
    # Counted per session before the session is read; a token that is not
    # ours (a signature check, no store call) counts nowhere: it is refused.
    claims = gw.sessions.tokens.read(cookie_value(request.headers.get("Cookie"),
                                                  gw.config.cookie_name) or "")
    if claims is not None:
        limited = gw.limiter.hit([(REFRESH_POLICY, "s:" + claims[1], refresh_limit(gw),
                                   REFRESH_WINDOW)])
        if limited is not None:
            return json_error(429, "RATE_LIMITED", headers=limited.headers())
    return await _session_json(request, force_touch=True)


REFRESH_WINDOW = 300.0


def refresh_limit(gw: Gateway) -> int:
    """20 refreshes in 5 minutes, or twice what the session monitor's pings
    need when the idle timeout is short enough to make them more often."""
    fastest = ping_interval(gw, gw.config.session.idle_timeout)   # the shortest timeout's
    return max(20, math.ceil(2 * REFRESH_WINDOW / fastest))
