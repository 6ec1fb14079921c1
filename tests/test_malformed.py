"""Malformed HTTP on raw sockets: a 4xx, no traceback, and the gateway unharmed."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import pytest
from aiohttp import web

from authkit import raw_exchange
from conftest import login

CRLF = b"\r\n"
MALFORMED = {
    "cl-and-te": b"POST /static/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n",
    "te-and-cl": b"POST /static/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Length: 40\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
    "duplicate-cl": b"POST /static/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                    b"Content-Length: 6\r\n\r\nabcdef",
    "negative-cl": b"POST /static/x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "te-not-chunked-last": b"POST /static/x HTTP/1.1\r\nHost: x\r\n"
                           b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-unknown": b"POST /static/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n"
                  b"0\r\n\r\n",
    "te-space-before-colon": b"POST /static/x HTTP/1.1\r\nHost: x\r\n"
                             b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "bad-chunk-size": b"POST /static/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\nabc\r\n0\r\n\r\n",
    "http-9.9": b"GET /static/x HTTP/9.9\r\nHost: x\r\n\r\n",
    "http-1.2": b"GET /static/x HTTP/1.2\r\nHost: x\r\n\r\n",
    "httx": b"GET /static/x HTTX/1.1\r\nHost: x\r\n\r\n",
    "nul-in-path": b"GET /static/a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
    "encoded-nul-in-path": b"GET /static/a%00b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "control-in-path": b"GET /static/a\x01b HTTP/1.1\r\nHost: x\r\n\r\n",
    "header-over-64k": b"GET /static/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000
                       + b"\r\n\r\n",
    "headers-over-limit": b"GET /static/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          + b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 1000) for i in range(40))
                          + CRLF,
    "request-line-over-16k": b"GET /static/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "garbage-line": b"HELLO WORLD\r\n\r\n",
    "binary-garbage": bytes(range(256)) + b"\r\n\r\n",
    "tls-on-plain-port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
    "control-in-method": b"G\x01T /static/x HTTP/1.1\r\nHost: x\r\n\r\n",
    "space-before-colon": b"GET /static/x HTTP/1.1\r\nHost : x\r\n\r\n",
    "header-without-colon": b"GET /static/x HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n",
    "obs-fold": b"GET /static/x HTTP/1.1\r\nHost: x\r\nX-Auth-User: a\r\n admin\r\n\r\n",
    "bare-cr-in-header": b"GET /static/x HTTP/1.1\r\nHost: x\r\nX-A: a\rX-Auth-User: b\r\n\r\n",
    "control-in-header": b"GET /static/x HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
    "bare-lf-lines": b"GET /static/x HTTP/1.1\nHost: x\n\n",
    "absolute-form": b"GET http://evil.example/static/x HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: close\r\n\r\n",
    "connect": b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n"
               b"Connection: close\r\n\r\n",
    "asterisk-form": b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_request_is_4xx_and_harmless(upstream: Any, make_config: Any,
                                                     gateway: Any, request_bytes: bytes) -> None:
    client = await gateway(make_config(str(upstream.make_url("/"))))
    answer = await raw_exchange(client, request_bytes)
    status_line, _, rest = answer.partition(CRLF)
    assert status_line.startswith(b"HTTP/1."), answer[:200]
    status = int(status_line.split(b" ")[1])
    assert 400 <= status < 500, answer[:300]
    body = rest.partition(CRLF + CRLF)[2]
    assert b"Traceback" not in body and b'File "' not in body
    # Nothing smuggled behind the refused request was answered as well.
    assert len(re.findall(rb"HTTP/1\.[01] \d{3} ", answer)) == 1, answer[:500]

    # A fresh connection is served normally, signed in or not.
    resp = await client.get("/static/after")
    assert resp.status == 200
    assert (await resp.json())["path"] == "/static/after"
    await login(client)
    assert (await client.get("/private")).status == 200


async def test_pipelined_requests_after_a_good_one(upstream: Any, make_config: Any,
                                                   gateway: Any) -> None:
    """Two well-formed pipelined requests: both answered, in order, on one connection."""
    client = await gateway(make_config(str(upstream.make_url("/"))))
    answer = await raw_exchange(client, b"GET /static/one HTTP/1.1\r\nHost: x\r\n\r\n"
                                    b"GET /static/two HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert answer.index(b"/static/one") < answer.index(b"/static/two")


@pytest.mark.parametrize("declared", [1_000_000, 5_000])  # streamed, read whole
async def test_client_vanishing_mid_body_does_not_harm(upstream: Any, make_config: Any,
                                                       gateway: Any, declared: int) -> None:
    client = await gateway(make_config(str(upstream.make_url("/"))))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"POST /static/upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                 % declared + b"a" * 1000)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    for _ in range(3):
        resp = await client.post("/static/upload", data=b"b" * 10)
        assert resp.status == 200
        assert (await resp.json())["body_size"] == 10


async def recording_sink(aiohttp_server: Any) -> tuple[Any, list[str]]:
    """An upstream answering POST /static/sink, and the paths it was called with."""
    calls: list[str] = []

    async def sink(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/static/sink", sink)
    return await aiohttp_server(app, host="127.0.0.1"), calls


async def test_small_body_cut_short_is_dropped_quietly(aiohttp_server: Any, make_config: Any,
                                                       gateway: Any, caplog: Any) -> None:
    """A small body is read whole before the upstream is called: cut short, nothing goes on."""
    server, calls = await recording_sink(aiohttp_server)
    client = await gateway(make_config(str(server.make_url("/"))))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"POST /static/sink HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabcd")
    await writer.drain()
    # A whole request after it: by its answer, a forwarded partial one would have arrived.
    resp = await client.post("/static/sink", data=b"whole")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert (resp.status, calls) == (200, ["/static/sink"])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_stalled_small_body_gets_408_and_never_reaches_the_upstream(
        aiohttp_server: Any, make_config: Any, gateway: Any) -> None:
    """A body the gateway reads first has a deadline: the upstream's ``timeout``."""
    server, calls = await recording_sink(aiohttp_server)
    client = await gateway(make_config(str(server.make_url("/")), upstreams=[
        {"name": "app", "url": str(server.make_url("/")), "path_prefix": "/",
         "public": ["/static/"], "timeout": "1s"}]))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(b"POST /static/sink HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n"
                     b"Content-Length: 10\r\n\r\nabcd")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in head
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        assert b'"REQUEST_TIMEOUT"' in await reader.readexactly(length)
    finally:
        writer.close()
    assert calls == []


async def test_bytes_that_are_not_utf8_in_the_user_agent_and_a_lone_surrogate_in_json(
        upstream: Any, make_config: Any, gateway: Any, store_settings: Any) -> None:
    """They reach the session, the audit trail and the analytics as U+FFFD:
    every page that shows them still renders (it used to answer 500)."""
    from authkit import api_login, send
    from gateway.state import GATEWAY
    client = await gateway(make_config(str(upstream.make_url("/")), session=store_settings))
    admin = await api_login(client, "Admin", "admin-pw")
    for body in (b'{"username":"alice","password":"alice-pw"}',
                 b'{"username":"al\\udcffice","password":"x\\ud800"}'):
        reply = await raw_exchange(client, b"POST /_gateway/api/login HTTP/1.1\r\n"
                                   b"Host: x\r\nConnection: close\r\n"
                                   b"Content-Type: application/json\r\n"
                                   b"User-Agent: \xff/1.0 CFNetwork/1.0 Darwin/19.0\r\n"
                                   b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert reply.split(b" ", 2)[1] in (b"200", b"401"), reply[:200]
    await client.app[GATEWAY].audit.flush()
    for view in ("sessions", "audit", "stats"):
        r = await send(client, "GET", f"/_gateway/admin?view={view}", token=admin,
                       accept="text/html")
        assert r.status == 200, view
    r = await send(client, "GET", "/_gateway/api/admin/audit?type=login.failure", token=admin)
    assert r.json()["events"][0]["user"] == "al\ufffdice"
