"""Forward one request to an upstream and stream the answer back.

Only small bodies with a declared length (up to 64 KiB) are read whole, so
they leave in one write with their headers. Anything larger streams: the
request body is handed to the client as an async iterator and the response
is written chunk by chunk, each write waiting for the socket to drain, so
memory stays bounded whatever the size. The upstream's bytes pass untouched
(no decompression, no re-encoding), except that the session monitor's tag
may be added to a page (monitor.py).
"""

from __future__ import annotations

import asyncio
import errno
import os
import functools
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.payload import AsyncIterablePayload
from multidict import CIMultiDict
from yarl import URL

from ..metrics import UPSTREAM_ERRORS
from ..config import Upstream
from ..errors import error_response
from ..security_headers import UPSTREAM_ANSWER
from .headers import cookie_key, downstream_response_headers
from .monitor import Injector, adjust_headers, inject, injectable

log = logging.getLogger("gateway.proxy")

# aiohttp adds these unless told not to; the upstream must see the client's own.
_SKIP_AUTO = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})
# Bodies up to this size with a declared length are sent in the same write
# as the headers (one syscall instead of three), both ways; anything else
# streams.
_SMALL_BODY = 64 * 2**10
# Yielded first by a streamed request body, so the request's headers go out
# on their own: aiohttp's client (on Python < 3.12.9) otherwise joins them
# with the first chunk into a new bytes object, copying up to a few hundred
# KiB (measured: a fifth of a 1 MiB upload's CPU), and the upstream would not
# see the request until the client's first body byte.
_HEADERS_ALONE = b""


class BodyTooLarge(Exception):
    pass


def new_client_session() -> aiohttp.ClientSession:
    """One pooled client for all upstreams, shared by every request of a worker."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0,
                                       ttl_dns_cache=60, force_close=False),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=_SKIP_AUTO,
        # The gateway's own limits apply on the way in; an upstream's large
        # headers (long Set-Cookie lists) must still reach the client.
        max_line_size=64 * 2**10,
        max_field_size=64 * 2**10,
    )


async def _relayed(stream: aiohttp.StreamReader, limit: int | None) -> AsyncIterator[bytes]:
    """The request body as it arrives, counted against ``limit`` if given."""
    yield _HEADERS_ALONE
    seen = 0
    async for chunk in stream.iter_any():
        seen += len(chunk)
        if limit is not None and seen > limit:
            raise BodyTooLarge()
        yield chunk


@functools.lru_cache(maxsize=64)
def _timeout(connect: float, read: float) -> aiohttp.ClientTimeout:
    """Built once per upstream, not per request: a 504 after ``read`` of silence."""
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_read=read)


async def _request_body(request: web.BaseRequest, max_body: int,
                        wait: float) -> bytes | AsyncIterablePayload | None:
    """What to send upstream: nothing, a small body whole, or the stream as it arrives.

    A small body with a declared length is read first (within ``wait``
    seconds: nobody else is waiting for it yet), so it goes out in one write
    with the headers. With a declared Content-Length (already checked
    against the limit) the parser delivers exactly that many bytes, so only
    chunked bodies need counting on the way through. The payload is built
    here, not looked up in aiohttp's registry (an ABC check per request).
    """
    length = request.content_length
    if length is not None:
        if not length:
            return None
        if length <= _SMALL_BODY:
            async with asyncio.timeout(wait):
                return await request.content.readexactly(length)
        return AsyncIterablePayload(_relayed(request.content, None))
    if "Transfer-Encoding" in request.headers:
        return AsyncIterablePayload(_relayed(request.content, max_body))
    return None


class ResponseGuard:
    """Keeps an upstream's response from setting the gateway's own cookies,
    and notes pages the session monitor could not be added to.

    Each upstream is logged once per worker for each: the cookie is dropped
    every time, but the log should not fill with one app's habit.
    """

    def __init__(self, own_cookies: frozenset[str]) -> None:
        self.keys = frozenset(cookie_key(name) for name in own_cookies)
        self._warned: set[tuple[str, str]] = set()

    def tossed(self, upstream: Upstream) -> None:
        """An upstream's response tried to set one of ``keys``; it was dropped."""
        self._once(upstream, "tried to set one of the gateway's own cookies; dropped")

    def compressed(self, upstream: Upstream) -> None:
        """A page came compressed although asked for plain: no monitor on it."""
        self._once(upstream, "sent a compressed page although asked for an uncompressed "
                             "one; the session monitor was not added")

    def _once(self, upstream: Upstream, what: str) -> None:
        if (upstream.name, what) not in self._warned:
            self._warned.add((upstream.name, what))
            log.warning("upstream %s %s (logged once per upstream)", upstream.name, what)


def why(exc: BaseException) -> str:
    """An upstream error for the log: the system's errno and words when there
    are some (``ECONNREFUSED Connection refused``), else its kind."""
    os_error = getattr(exc, "os_error", None) or (exc if isinstance(exc, OSError) else None)
    if os_error is not None and os_error.errno in errno.errorcode:
        return f"{errno.errorcode[os_error.errno]} {os.strerror(os_error.errno)}"
    if os_error is not None and os_error.strerror:      # a DNS failure (gaierror)
        return os_error.strerror
    return type(exc).__name__


async def forward(request: web.BaseRequest, upstream: Upstream, url: URL,
                  headers: CIMultiDict[str], client: aiohttp.ClientSession,
                  max_body: int, guard: ResponseGuard, private: bool,
                  monitor: bytes | None = None) -> web.StreamResponse:
    """Proxy an HTTP request; 502 if the upstream refuses, 504 if it is too slow.

    With ``private`` (a signed-in request) shared caches are told not to keep
    the response. ``monitor``: the session monitor's tag, to add to a page.
    """
    try:
        body = await _request_body(request, max_body, upstream.timeout)
    except TimeoutError:
        late = error_response(request, 408, "REQUEST_TIMEOUT")
        late.force_close()  # the rest of the body may still come: not a next request
        return late
    timeout = _timeout(upstream.connect_timeout, upstream.timeout)
    response: web.StreamResponse | None = None
    try:
        async with client.request(request.method, url, headers=headers, data=body,
                                  allow_redirects=False, timeout=timeout,
                                  compress=None) as upstream_response:
            out_headers, tossed = downstream_response_headers(
                upstream_response.headers, guard.keys, private)
            if tossed:
                guard.tossed(upstream)
            injector = None
            if monitor is not None:
                if injectable(upstream_response.status, upstream_response.headers):
                    adjust_headers(out_headers, monitor)
                    injector = Injector(monitor) if request.method != "HEAD" else None
                elif upstream_response.content_type == "text/html" and \
                        "Content-Encoding" in upstream_response.headers:
                    guard.compressed(upstream)
            length = upstream_response.content_length
            if length is not None and length <= _SMALL_BODY and request.method != "HEAD":
                small = await upstream_response.read()
                answer = web.Response(status=upstream_response.status,
                                      reason=upstream_response.reason, headers=out_headers,
                                      body=inject(small, monitor) if injector else small)
                answer[UPSTREAM_ANSWER] = True
                return answer
            response = web.StreamResponse(
                status=upstream_response.status, reason=upstream_response.reason,
                headers=out_headers)
            response[UPSTREAM_ANSWER] = True
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_any():
                if injector is not None and not (chunk := injector.feed(chunk)):
                    continue
                await response.write(chunk)
            if injector is not None:
                await response.write(injector.finish())
            await response.write_eof()
            return response
    except BodyTooLarge:
        if response is None:
            return error_response(request, 413, "PAYLOAD_TOO_LARGE")
        raise
    except asyncio.TimeoutError:
        if response is None:
            log.warning("upstream %s (%s) timed out", upstream.name, upstream.authority)
            UPSTREAM_ERRORS.labels(upstream.name, "timeout").inc()
            return error_response(request, 504, "UPSTREAM_TIMEOUT")
        raise
    except (aiohttp.ClientError, OSError) as exc:
        if isinstance(exc.__cause__, BodyTooLarge) or isinstance(exc.__context__, BodyTooLarge):
            if response is None:
                return error_response(request, 413, "PAYLOAD_TOO_LARGE")
        if response is None:
            log.warning("upstream %s (%s) unavailable: %s", upstream.name, upstream.authority,
                        why(exc))
            UPSTREAM_ERRORS.labels(upstream.name, "unavailable").inc()
            return error_response(request, 502, "UPSTREAM_UNAVAILABLE")
        # Headers are already sent: the only honest signal left is to cut the
        # connection, so the client sees a truncated body, not a complete one.
        raise ConnectionResetError("upstream broke off mid-response") from None
