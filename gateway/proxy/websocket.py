"""Relay a WebSocket: connect upstream first, then copy messages both ways.

An upstream that refuses the upgrade (an app checking Origin answers 403)
is heard: the client gets its status, not a 502 that blames the gateway.

A socket opened with a session lives only as long as the session: it is
re-checked every ``WS_RECHECK`` seconds (cheap while cached) and closed with
1008 once the session has ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..config import Upstream
from ..errors import error_response
from ..logs import request_id
from ..metrics import UPSTREAM_ERRORS
from .forward import why
from ..security_headers import UPSTREAM_ANSWER

log = logging.getLogger("gateway.proxy")

_WS_MAX_MESSAGE = 16 * 2**20
# How often an open WebSocket's session is checked again (cheap while cached).
WS_RECHECK = 1.0


def is_websocket(request: web.BaseRequest) -> bool:
    return (request.method == "GET"
            and request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in request.headers.get("Connection", "").lower())


async def forward_websocket(request: web.BaseRequest, upstream: Upstream, url: URL,
                            headers: CIMultiDict[str], client: aiohttp.ClientSession,
                            still_valid: Callable[[], Awaitable[bool]] | None = None
                            ) -> web.StreamResponse:
    """Connect upstream first (so that its refusal is the answer), then relay
    both ways.

    A socket opened with a session lives only as long as the session: it is
    re-checked every WS_RECHECK seconds and closed (1008) once it has ended.
    """
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                 if p.strip()]
    for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Protocol",
                 "Sec-WebSocket-Extensions"):
        headers.popall(name, None)
    try:
        upstream_ws = await client.ws_connect(
            url.with_scheme("wss" if url.scheme == "https" else "ws"),
            headers=headers, protocols=protocols, autoclose=False, autoping=True,
            max_msg_size=_WS_MAX_MESSAGE,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0))
    except aiohttp.WSServerHandshakeError as exc:
        log.info("upstream %s refused a websocket with %s", upstream.name, exc.status)
        UPSTREAM_ERRORS.labels(upstream.name, "websocket_refused").inc()
        if 400 <= exc.status <= 599:
            return error_response(request, exc.status, "WEBSOCKET_REFUSED")
        return error_response(request, 502, "UPSTREAM_UNAVAILABLE")
    except asyncio.TimeoutError:
        UPSTREAM_ERRORS.labels(upstream.name, "timeout").inc()
        return error_response(request, 504, "UPSTREAM_TIMEOUT")
    except (aiohttp.ClientError, OSError) as exc:
        log.warning("upstream %s (%s) unavailable for a websocket: %s", upstream.name,
                    upstream.authority, why(exc))
        UPSTREAM_ERRORS.labels(upstream.name, "unavailable").inc()
        return error_response(request, 502, "UPSTREAM_UNAVAILABLE")

    client_ws = web.WebSocketResponse(
        protocols=[upstream_ws.protocol] if upstream_ws.protocol else (),
        autoclose=False, autoping=True, max_msg_size=_WS_MAX_MESSAGE)
    client_ws[UPSTREAM_ANSWER] = True
    loop = asyncio.get_running_loop()
    opened = loop.time()
    try:
        await client_ws.prepare(request)
        relays = [asyncio.ensure_future(_relay(client_ws, upstream_ws)),
                  asyncio.ensure_future(_relay(upstream_ws, client_ws))]
        if still_valid is not None:
            relays.append(asyncio.ensure_future(_while_valid(still_valid)))
        done, pending = await asyncio.wait(relays, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if still_valid is not None and relays[2] in done:
            await client_ws.close(code=1008, message=b"session ended")
    finally:
        await upstream_ws.close()
        await client_ws.close()
        log.info("websocket %s to %s closed: %s after %.0f s", request_id(request),
                 upstream.name, client_ws.close_code, loop.time() - opened)
    return client_ws


async def _while_valid(still_valid: Callable[[], Awaitable[bool]]) -> None:
    while True:
        await asyncio.sleep(WS_RECHECK)
        if not await still_valid():
            return


async def _relay(source, sink) -> None:  # type: ignore[no-untyped-def]
    """Copy messages until a close, passing the close code and reason on."""
    # Not ``async for``: it stops before yielding the CLOSE, losing its reason.
    while True:
        msg = await source.receive()
        if msg.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type == aiohttp.WSMsgType.CLOSE:
            await sink.close(code=_wire_code(msg.data),
                             message=(msg.extra or "").encode()[:123])
            return
        else:  # CLOSING, CLOSED, ERROR
            break
    await sink.close(code=_wire_code(source.close_code or 1011))


def _wire_code(code: int | None) -> int:
    """RFC 6455 7.4.1: 1005, 1006 and 1015 must never be sent in a Close frame."""
    if not code:
        return 1000
    return 1011 if code in (1005, 1006, 1015) else code
