"""``GET /api/session`` and ``POST /api/session/refresh``: the caller's own session."""

from __future__ import annotations

from aiohttp import web

from ..errors import json_error, json_response
from ..store import StoreUnavailable
from .guards import api_identity, gateway_of, same_origin


async def _session_json(request: web.Request, **touch: bool) -> web.Response:
    gw = gateway_of(request)
    try:
        identity = await api_identity(request, gw, **touch)
    except StoreUnavailable:
        return json_error(503, "STORE_UNAVAILABLE")
    if isinstance(identity, web.Response):
        return identity
    return json_response(200, gw.sessions.describe(identity), headers={"Cache-Control": "no-store"})


async def api_session(request: web.Request) -> web.Response:
    """Reading the session does not extend it, so polling it cannot keep it alive."""
    return await _session_json(request, touch=False)


async def api_session_refresh(request: web.Request) -> web.Response:
    if not same_origin(request, gateway_of(request)):
        return json_error(403, "FORBIDDEN", "Cross-site request refused.")
    return await _session_json(request, force_touch=True)
