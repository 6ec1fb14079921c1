"""Endpoints for machines: the assertion keys, liveness and readiness."""

from __future__ import annotations

import json

from aiohttp import web

from ..errors import json_response
from ..store import StoreUnavailable
from .guards import gateway_of


async def jwks(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(gateway_of(request).signer.jwks()),
                        content_type="application/json",
                        headers={"Cache-Control": "public, max-age=300"})


async def healthz(request: web.Request) -> web.Response:
    return json_response(200, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await gateway_of(request).store.ping()
    except StoreUnavailable:
        return json_response(503, {"status": "unavailable", "error": "STORE_UNAVAILABLE"})
    return json_response(200, {"status": "ok"})
