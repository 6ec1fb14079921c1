"""The proxy end to end: a real client, the real gateway, real upstreams on loopback."""

from __future__ import annotations

import asyncio
import io
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from authkit import raw_exchange
from conftest import free_port, login, seen_headers, upstream_app

# The User-Agent the test client signed in with: a session used from another
# browser is ended (security_events.ua_changed), as a stolen cookie would be.
SAME_BROWSER = aiohttp.http.SERVER_SOFTWARE

MiB = 2**20


def app_upstream(url: str, **fields: Any) -> dict[str, Any]:
    return {"name": "app", "url": url, "path_prefix": "/",
            "public": ["/static/", "/favicon.ico"],
            "rules": [{"path": "/admin", "roles": ["admin"]}], **fields}


async def proxied(upstream: Any, make_config: Any, gateway: Any, sign_in: bool = True,
                  **overrides: Any) -> Any:
    client = await gateway(make_config(str(upstream.make_url("/")), **overrides))
    if sign_in:
        await login(client)
    return client


def split_response(data: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:])]
    return status, headers, body


def dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, rest = out + rest[:size], rest[size + 2:]


# -- streaming bodies -----------------------------------------------------------------

async def test_upload_64_mib_chunked(upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway)
    digest, block, total = hashlib.sha256(), bytes(range(256)) * 1024, 64 * MiB

    async def body() -> AsyncIterator[bytes]:
        for _ in range(total // len(block)):
            yield block

    for _ in range(total // len(block)):
        digest.update(block)
    resp = await client.post("/upload", data=body())
    assert resp.status == 200
    seen = await resp.json()
    assert (seen["method"], seen["body_size"], seen["body_sha256"]) == (
        "POST", total, digest.hexdigest())
    assert seen_headers(seen)["transfer-encoding"] == ["chunked"]


async def test_upload_with_content_length(upstream: Any, make_config: Any,
                                          gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway)
    payload = bytes(range(251)) * 40_000
    resp = await client.put("/static/upload", data=io.BytesIO(payload))
    seen = await resp.json()
    assert seen["method"] == "PUT"
    assert seen["body_size"] == len(payload)
    assert seen["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert seen_headers(seen)["content-length"] == [str(len(payload))]


@pytest.mark.parametrize("with_length", [True, False])
async def test_download_64_mib(upstream: Any, make_config: Any, gateway: Any,
                               with_length: bool) -> None:
    client = await proxied(upstream, make_config, gateway)
    size = 64 * MiB + 123
    resp = await client.get(f"/big?size={size}&length={int(with_length)}")
    assert resp.status == 200
    if with_length:
        assert resp.headers["Content-Length"] == str(size)
        assert "Transfer-Encoding" not in resp.headers
    else:
        assert "Content-Length" not in resp.headers
        assert resp.headers["Transfer-Encoding"] == "chunked"
    received = 0
    async for chunk in resp.content.iter_any():
        assert chunk.count(b"x") == len(chunk)
        received += len(chunk)
    assert received == size


async def test_response_streams_before_upstream_finishes(aiohttp_server: Any, make_config: Any,
                                                         gateway: Any) -> None:
    """The first bytes reach the client while the upstream still holds the rest."""
    release = asyncio.Event()

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        await release.wait()
        await response.write(b"second")
        return response

    app = web.Application()
    app.router.add_get("/static/drip", drip)
    server = await aiohttp_server(app, host="127.0.0.1")
    client = await gateway(make_config(str(server.make_url("/"))))
    resp = await client.get("/static/drip")
    assert await asyncio.wait_for(resp.content.readexactly(5), 5) == b"first"
    release.set()
    assert await resp.read() == b"second"


async def test_request_streams_before_client_finishes(aiohttp_server: Any, make_config: Any,
                                                      gateway: Any) -> None:
    """The upstream sees the first chunk while the client still holds the rest."""
    got_first = asyncio.Event()

    async def sink(request: web.Request) -> web.Response:
        first = await request.content.readexactly(5)
        got_first.set()
        rest = await request.content.read()
        return web.Response(text=(first + rest).decode())

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.wait_for(got_first.wait(), 5)
        yield b"second"

    app = web.Application()
    app.router.add_post("/static/sink", sink)
    server = await aiohttp_server(app, host="127.0.0.1")
    client = await gateway(make_config(str(server.make_url("/"))))
    resp = await client.post("/static/sink", data=body())
    assert (resp.status, await resp.text()) == (200, "firstsecond")


async def test_response_headers_arrive_before_the_first_body_byte(make_config: Any,
                                                                  gateway: Any) -> None:
    """A server-sent-events upstream: its headers reach the client before any event."""
    release = asyncio.Event()

    async def events(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        await release.wait()
        writer.write(b"d\r\ndata: first\n\n\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(events, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await gateway(make_config(f"http://127.0.0.1:{port}"))
        resp = await asyncio.wait_for(client.get("/static/events"), 5)
        assert (resp.status, resp.headers["Content-Type"]) == (200, "text/event-stream")
        release.set()
        assert await resp.read() == b"data: first\n\n"
    finally:
        release.set()
        server.close()


async def test_request_headers_reach_the_upstream_before_the_body(aiohttp_server: Any,
                                                                  make_config: Any,
                                                                  gateway: Any) -> None:
    """The upstream can start on a streamed request (and refuse it early) before its body.

    Bodies up to 64 KiB with a declared length are read whole first (one write
    with the headers); larger ones stream.
    """
    called = asyncio.Event()

    async def sink(request: web.Request) -> web.Response:
        called.set()
        return web.Response(text=str(len(await request.content.read())))

    app = web.Application()
    app.router.add_post("/static/sink", sink)
    server = await aiohttp_server(app, host="127.0.0.1")
    client = await gateway(make_config(str(server.make_url("/"))))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(b"POST /static/sink HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n"
                     b"Connection: close\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(called.wait(), 5)
        writer.write(b"x" * 100_000)
        status, _, body = split_response(await asyncio.wait_for(reader.read(), 5))
        assert (status, body) == (200, b"100000")
    finally:
        writer.close()


@pytest.mark.parametrize("declared, sent", [(1000, 100), (8 * MiB, 256 * 1024)])
async def test_upstream_breaking_off_is_never_a_complete_body(
        aiohttp_server: Any, make_config: Any, gateway: Any, declared: int, sent: int) -> None:
    """An upstream that dies mid-body: a 502 if nothing was sent yet, else a cut
    connection; never a short body that looks complete."""
    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(declared)})
        await response.prepare(request)
        await response.write(b"a" * sent)
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/static/broken", broken)
    server = await aiohttp_server(app, host="127.0.0.1")
    client = await gateway(make_config(str(server.make_url("/"))))
    resp = await client.get("/static/broken")
    if resp.status == 502:
        assert (await resp.json())["error"] == "UPSTREAM_UNAVAILABLE"
    else:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(declared)
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 10)
    resp = await client.get("/static/other")  # the gateway itself is fine
    assert resp.status == 404


# -- websockets -------------------------------------------------------------------------

async def test_websocket_round_trip(upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway)
    ws = await client.ws_connect("/ws", protocols=("chat",))
    assert ws.protocol == "chat"
    await ws.send_str("hello")
    assert (await ws.receive(timeout=5)).data == "echo:hello"
    await ws.send_bytes(b"\x00\x01binary")
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (WSMsgType.BINARY, b"yranib\x01\x00")
    big = "y" * (2 * MiB)
    await ws.send_str(big)
    assert (await ws.receive(timeout=5)).data == "echo:" + big
    await ws.send_str("close-please")
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (4001, "bye")
    await ws.close()
    assert ws.close_code == 4001


async def test_websocket_close_from_client_reaches_upstream(
        aiohttp_server: Any, make_config: Any, gateway: Any) -> None:
    closed: asyncio.Future[tuple[int | None, list[str]]] = (
        asyncio.get_running_loop().create_future())

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        seen = []
        async for msg in sock:
            seen.append(msg.data)
            await sock.send_str(msg.data)
        closed.set_result((sock.close_code, seen))
        return sock

    app = web.Application()
    app.router.add_get("/ws", ws)
    server = await aiohttp_server(app, host="127.0.0.1")
    client = await gateway(make_config(str(server.make_url("/"))))
    await login(client)
    sock = await client.ws_connect("/ws")
    await sock.send_str("one")
    assert (await sock.receive(timeout=5)).data == "one"
    await sock.close(code=4002, message=b"done")
    assert await asyncio.wait_for(closed, 5) == (4002, ["one"])


async def test_websocket_needs_a_session(upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway, sign_in=False)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws")
    assert info.value.status == 401


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_websocket_ends_with_its_session(upstream: Any, make_config: Any, gateway: Any,
                                               redis_server: Any, store: str) -> None:
    """Signing out (or any revocation) also closes WebSockets opened with the session."""
    session = ({"store": "redis", "redis": {"url": redis_server.url}} if store == "redis"
               else {"store": "memory"})
    client = await gateway(make_config(str(upstream.make_url("/")), session=session))
    await login(client)
    ws = await client.ws_connect("/ws", protocols=("chat",))
    await ws.send_str("before")
    assert (await ws.receive(timeout=5)).data == "echo:before"
    resp = await client.post("/_gateway/logout", json={}, allow_redirects=False)
    assert resp.status == 303
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1008, "session ended")


async def test_websocket_upstream_down_is_502(make_config: Any, gateway: Any) -> None:
    client = await gateway(make_config(f"http://127.0.0.1:{free_port()}"))
    await login(client)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws")
    assert info.value.status == 502


# -- headers end to end -------------------------------------------------------------------

async def test_hop_by_hop_stripped_end_to_end(upstream: Any, make_config: Any,
                                              gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway)
    resp = await client.get("/hop", headers={
        "Connection": "keep-alive, X-Foo", "X-Foo": "hop", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Proxy-Authorization": "Basic eA==", "Proxy-Connection": "x",
        "X-Bar": "end-to-end"})
    seen = seen_headers(await resp.json())
    assert not {"x-foo", "keep-alive", "te", "proxy-authorization",
                "proxy-connection"} & set(seen)
    assert seen["x-bar"] == ["end-to-end"]


async def test_connection_close_named_headers_raw(upstream: Any, make_config: Any,
                                                  gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway)
    port = client.server.port
    data = await raw_exchange(client, (
        f"GET /static/raw HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Connection: close, X-Foo\r\nX-Foo: must-go\r\nX-Bar: stays\r\n\r\n").encode())
    status, headers, body = split_response(data)
    assert status == 200
    seen = seen_headers(json.loads(dechunk(body) if ("Transfer-Encoding", "chunked") in headers
                                   else body))
    assert "x-foo" not in seen
    assert seen["x-bar"] == ["stays"]


async def test_response_headers_untouched(upstream: Any, make_config: Any,
                                          gateway: Any) -> None:
    """/special: a 302 with two Set-Cookie, Location, gzip and hop-by-hop headers."""
    client = await proxied(upstream, make_config, gateway)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))["gateway_session"]
    port = client.server.port
    data = await raw_exchange(client, (
        f"GET /special HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Cookie: gateway_session={cookie.value}\r\nUser-Agent: {SAME_BROWSER}\r\n"
        "Connection: close\r\n\r\n").encode())
    status, headers, body = split_response(data)
    assert status == 302
    lower = [(k.lower(), v) for k, v in headers]
    assert [v for k, v in lower if k == "set-cookie"] == ["a=1; Path=/", "b=2; HttpOnly"]
    assert [v for k, v in lower if k == "location"] == ["http://elsewhere.example/x?y=1"]
    assert [v for k, v in lower if k == "content-encoding"] == ["gzip"]
    assert [v for k, v in lower if k == "x-kept"] == ["yes"]
    assert not {"x-upstream-hop", "keep-alive"} & {k for k, _ in lower}
    if ("transfer-encoding", "chunked") in lower:
        body = dechunk(body)
    assert body == b"\x1f\x8bnot-really-gzip"


async def test_spoofed_identity_headers_removed_end_to_end(upstream: Any, make_config: Any,
                                                           gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway)
    resp = await client.get("/me", headers=[
        ("X-Auth-User", "admin"), ("x_auth_user", "admin"), ("X.Auth.Roles", "admin"),
        ("X-AUTH-ROLES", "admin"), ("x-auth-assertion", "forged")])
    seen = seen_headers(await resp.json())
    assert seen["x-auth-user"] == ["alice"]
    assert seen["x-auth-roles"] == ["user"]
    assert seen["x-auth-assertion"] != ["forged"] and len(seen["x-auth-assertion"]) == 1
    folded = [k.replace("_", "-").replace(".", "-") for k in seen]
    assert folded.count("x-auth-user") == 1 and folded.count("x-auth-roles") == 1


async def test_spoofed_identity_headers_removed_on_public_paths(
        upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway, sign_in=False)
    resp = await client.get("/static/x", headers=[("X-Auth-User", "admin"),
                                                   ("X_Auth_User", "admin")])
    seen = seen_headers(await resp.json())
    assert not {k for k in seen if k.replace("_", "-").startswith("x-auth-")}


async def test_gateway_cookie_never_reaches_upstream(upstream: Any, make_config: Any,
                                                     gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway)
    resp = await client.get("/cookies", headers={"Cookie": "theme=dark; gateway_form=x"})
    seen = seen_headers(await resp.json())
    assert resp.status == 200
    assert seen["cookie"] == ["theme=dark"]
    assert seen["x-auth-user"] == ["alice"]


async def test_only_gateway_cookie_means_no_cookie_header(upstream: Any, make_config: Any,
                                                          gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway)
    seen = seen_headers(await (await client.get("/cookies")).json())
    assert "cookie" not in seen


async def test_forwarded_headers_untrusted_peer(upstream: Any, make_config: Any,
                                                gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway)
    resp = await client.get("/fwd", headers={
        "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example", "X-Real-IP": "6.6.6.6", "Forwarded": "for=6.6.6.6"})
    seen = seen_headers(await resp.json())
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-real-ip"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [f"127.0.0.1:{client.server.port}"]
    assert "forwarded" not in seen


async def test_forwarded_headers_trusted_peer(upstream: Any, make_config: Any,
                                              gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway, trusted_proxies=["127.0.0.1/32"])
    resp = await client.get("/fwd", headers={
        "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "public.example"})
    seen = seen_headers(await resp.json())
    assert seen["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert seen["x-real-ip"] == ["203.0.113.9"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-host"] == ["public.example"]


async def test_the_app_sees_the_client_s_host_unless_told_otherwise(
        upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway)
    seen = seen_headers(await (await client.get("/host")).json())
    assert seen["host"] == [f"127.0.0.1:{client.server.port}"]
    client = await proxied(upstream, make_config, gateway,
                           upstreams=[app_upstream(str(upstream.make_url("/")),
                                                   preserve_host=False)])
    seen = seen_headers(await (await client.get("/host")).json())
    assert seen["host"] == [f"127.0.0.1:{upstream.port}"]


async def test_big_cookie_header_works_and_oversized_headers_are_431(
        aiohttp_server: Any, make_config: Any, gateway: Any) -> None:
    # aiohttp's default 8 KiB field limit would make the upstream itself refuse.
    roomy = await aiohttp_server(upstream_app(), host="127.0.0.1", max_field_size=64 * 2**10)
    client = await proxied(roomy, make_config, gateway)
    crumbs = "; ".join(f"c{i}={'v' * 200}" for i in range(80))  # about 16 KiB
    assert 16 * 1024 <= len(crumbs) < 17 * 1024
    resp = await client.get("/cookies", headers={"Cookie": crumbs})
    assert resp.status == 200
    seen = seen_headers(await resp.json())
    (cookie,) = seen["cookie"]
    assert sorted(cookie.split("; ")) == sorted(crumbs.split("; "))
    resp = await client.get("/cookies", headers={f"X-Pad-{i}": "p" * 8000 for i in range(5)})
    assert resp.status == 431
    assert (await resp.json())["error"] == "HEADERS_TOO_LARGE"


async def test_header_limit_is_configurable(upstream: Any, make_config: Any,
                                            gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway, limits={"max_header_size": "4KiB"})
    assert (await client.get("/x", headers={"X-Pad": "p" * 2000})).status == 200
    assert (await client.get("/x", headers={"X-Pad": "p" * 5000})).status == 431


# -- bodies over the limit ---------------------------------------------------------------

async def test_413_on_content_length(upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway, limits={"max_body_size": "1MiB"})
    assert (await client.post("/up", data=io.BytesIO(b"z" * MiB))).status == 200
    resp = await client.post("/up", data=io.BytesIO(b"z" * (MiB + 1)))
    assert resp.status == 413
    assert (await resp.json())["error"] == "PAYLOAD_TOO_LARGE"


async def test_413_on_chunked_body(upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway, limits={"max_body_size": "1MiB"})

    async def body(total: int) -> AsyncIterator[bytes]:
        for _ in range(total // 65536):
            yield b"z" * 65536

    resp = await client.post("/up", data=body(MiB))
    assert resp.status == 200
    assert (await resp.json())["body_size"] == MiB
    resp = await client.post("/up", data=body(2 * MiB))
    assert resp.status == 413
    assert (await resp.json())["error"] == "PAYLOAD_TOO_LARGE"
    assert (await client.get("/after")).status == 200


async def test_413_html_for_browsers(upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway, limits={"max_body_size": "1KiB"})
    resp = await client.post("/up", data=b"z" * 2048, headers={"Accept": "text/html"})
    assert resp.status == 413
    assert resp.content_type == "text/html"
    assert "413" in await resp.text()


# -- routing ------------------------------------------------------------------------------

def tagged_app(tag: str) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"tag": tag, "path": request.raw_path})
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def routed(aiohttp_server: Any, make_config: Any, gateway: Any) -> Any:
    servers = {tag: await aiohttp_server(tagged_app(tag), host="127.0.0.1")
               for tag in ("root", "api", "v2", "other")}
    config = make_config(upstreams=[
        {"name": "root", "url": str(servers["root"].make_url("/")), "path_prefix": "/",
         "public": ["/"]},
        {"name": "api", "url": str(servers["api"].make_url("/")), "path_prefix": "/api",
         "public": ["/"]},
        {"name": "v2", "url": str(servers["v2"].make_url("/base")), "path_prefix": "/api/v2",
         "strip_prefix": True, "public": ["/"]},
        {"name": "other", "url": str(servers["other"].make_url("/")), "path_prefix": "/",
         "host": "other.example", "public": ["/"]},
    ])
    return await gateway(config)


ROUTES = [
    ("/", None, "root", "/"),
    ("/x/y?z=1", None, "root", "/x/y?z=1"),
    ("/api", None, "api", "/api"),
    ("/api/", None, "api", "/api/"),
    ("/api/users?q=1", None, "api", "/api/users?q=1"),
    ("/apiary", None, "root", "/apiary"),
    ("/API/x", None, "root", "/API/x"),
    ("/api/v2", None, "v2", "/base/"),
    ("/api/v2/", None, "v2", "/base/"),
    ("/api/v2/items?page=2", None, "v2", "/base/items?page=2"),
    ("/api/v20", None, "api", "/api/v20"),
    ("/api/x/../v2/items", None, "v2", "/base/items"),
    ("/api/v2/../users", None, "api", "/api/users"),
    ("/api/x", "other.example", "other", "/api/x"),
    ("/api/v2/x", "OTHER.example:8080", "other", "/api/v2/x"),
    ("/api/x", "third.example", "api", "/api/x"),
]


async def test_longest_prefix_routing(routed: Any) -> None:
    """Host match first, then the longest segment-aware prefix; strip_prefix honoured."""
    port = routed.server.port
    for path, host, tag, seen_path in ROUTES:
        data = await raw_exchange(routed, (
            f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\n"
            "Connection: close\r\n\r\n").encode())
        status, headers, body = split_response(data)
        assert status == 200, (path, host, data)
        if ("Transfer-Encoding", "chunked") in headers:
            body = dechunk(body)
        assert json.loads(body) == {"tag": tag, "path": seen_path}, (path, host)


async def test_no_matching_upstream_is_404(upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway, sign_in=False, upstreams=[
        app_upstream(str(upstream.make_url("/")), path_prefix="/app", public=["/app/"])])
    assert (await client.get("/app/x")).status == 200
    resp = await client.get("/elsewhere")
    assert resp.status == 404
    assert (await resp.json())["error"] == "NOT_FOUND"


# -- upstream failures ----------------------------------------------------------------------

ACCEPTS = [("application/json", False), ("*/*", False), (None, False),
           ("application/json, text/html", False),
           ("text/html,application/xhtml+xml,*/*;q=0.8", True)]


async def test_502_when_upstream_is_down(make_config: Any, gateway: Any) -> None:
    client = await gateway(make_config(f"http://127.0.0.1:{free_port()}"))
    for accept, html in ACCEPTS:
        headers = {"Accept": accept} if accept else {"Accept": ""}
        for path in ("/static/x.css", "/favicon.ico"):
            resp = await client.get(path, headers=headers)
            assert resp.status == 502, (path, accept)
            await check_error_body(resp, 502, "UPSTREAM_UNAVAILABLE", html)
    await login(client)
    for accept, html in ACCEPTS:
        resp = await client.post("/form", data=b"a=1", headers={"Accept": accept or ""})
        assert resp.status == 502, accept
        await check_error_body(resp, 502, "UPSTREAM_UNAVAILABLE", html)


async def test_504_when_upstream_is_slow(upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway, upstreams=[
        app_upstream(str(upstream.make_url("/")), timeout="200ms")])
    for html in (False, True):
        resp = await client.get("/slow?s=1",
                                headers={"Accept": "text/html" if html else "application/json"})
        assert resp.status == 504
        await check_error_body(resp, 504, "UPSTREAM_TIMEOUT", html)
    assert (await client.get("/after-timeout")).status == 200


async def check_error_body(resp: aiohttp.ClientResponse, status: int, code: str,
                           html: bool) -> None:
    text = await resp.text()
    assert "Traceback" not in text and "File \"" not in text
    assert resp.headers["Cache-Control"] == "no-store"
    if html:
        assert resp.content_type == "text/html"
        assert text.lstrip().startswith("<!doctype html>")
        assert f"<h1>{status} " in text
    else:
        assert resp.content_type == "application/json"
        body = json.loads(text)
        assert body["error"] == code
        assert body["message"]


# -- status codes, queries, methods ---------------------------------------------------------

@pytest.fixture
async def statuses(aiohttp_server: Any) -> Any:
    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        body = None if code in (204, 304) else f"status {code}".encode()
        return web.Response(status=code, body=body,
                            headers={"X-Status": str(code), "ETag": '"v1"'})
    app = web.Application()
    app.router.add_route("*", "/status/{code}", status)
    return await aiohttp_server(app, host="127.0.0.1")


async def test_status_codes_pass_through(statuses: Any, make_config: Any,
                                         gateway: Any) -> None:
    """The upstream's own 4xx and 5xx are its answer, not the gateway's: untouched."""
    client = await gateway(make_config(str(statuses.make_url("/")),
                                       upstreams=[app_upstream(str(statuses.make_url("/")),
                                                               public=["/status/"])]))
    for code in (200, 201, 204, 301, 304, 307, 400, 401, 403, 404, 409, 418, 429,
                 500, 502, 503, 504):
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            resp = await client.request(method, f"/status/{code}", allow_redirects=False)
            assert resp.status == code, (method, code)
            assert resp.headers["X-Status"] == str(code)
            assert resp.headers["ETag"] == '"v1"'
            body = await resp.read()
            assert body == (b"" if code in (204, 304) else f"status {code}".encode())


QUERIES = [
    "/q?a=1&b=2",
    "/q?a=1&a=2&a=3",
    "/q?x=a+b&y=%20c&z=%2F%2f",
    "/q?empty=&flag&=novalue",
    "/q?redirect=http%3A%2F%2Fevil.example%2F&path=/../admin",
    "/q?%zz=bad-escape&u=%C3%A9",
    "/q?semi=1;2&hash=%23",
    "/q/?",
    "/q?",
    "/q?" + "k=" + "v" * 4000,
]


async def test_query_string_forwarded_exactly(upstream: Any, make_config: Any,
                                              gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))["gateway_session"]
    for target in QUERIES:
        data = await raw_exchange(client, (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Cookie: gateway_session={cookie.value}\r\nUser-Agent: {SAME_BROWSER}\r\n"
            "Connection: close\r\n\r\n").encode())
        status, headers, body = split_response(data)
        assert status == 200, (target, data[:300])
        if ("Transfer-Encoding", "chunked") in headers:
            body = dechunk(body)
        path, _, query = target.partition("?")
        expected = path + ("?" + query if query else "")
        assert json.loads(body)["path"] == expected, target


async def test_path_forwarded_canonically(upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))["gateway_session"]
    data = await raw_exchange(client, (
        "GET //a/./b/../c%41/d%20e/caf%c3%a9?x=/../y HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Cookie: gateway_session={cookie.value}\r\nUser-Agent: {SAME_BROWSER}\r\n"
        "Connection: close\r\n\r\n").encode())
    status, headers, body = split_response(data)
    assert status == 200
    if ("Transfer-Encoding", "chunked") in headers:
        body = dechunk(body)
    assert json.loads(body)["path"] == "/a/cA/d%20e/caf%C3%A9?x=/../y"


REFUSED = ["/static/%2e%2e/admin%2fx", "/static/..%5cadmin", "/static/..;/admin",
           "/static/%2e%2e;/admin", "/%2e%2e/x", "/static/../../x", "/a%00b", "/%zz",
           "/static/%ff", "/static/a%0d%0aSet-Cookie:x=1"]


async def test_refused_paths_never_reach_upstream(upstream: Any, make_config: Any,
                                                  gateway: Any) -> None:
    """Paths the upstream could read differently are a 400 (the full table is in
    test_paths.py); checked here on public paths so access control is no factor."""
    client = await proxied(upstream, make_config, gateway, sign_in=False)
    for target in REFUSED:
        data = await raw_exchange(client, (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        ).encode())
        status, _, body = split_response(data)
        assert status == 400, (target, data[:200])
        assert b"Traceback" not in body
        assert b"BAD_REQUEST" in body, target


@pytest.fixture
async def documents(aiohttp_server: Any) -> Any:
    """Well-behaved upstream documents (aiohttp's web.Response omits HEAD bodies)."""
    async def doc(request: web.Request) -> web.Response:
        size = int(request.match_info["size"])
        return web.Response(body=b"d" * size, content_type="text/plain",
                            headers={"X-Method": request.method})
    app = web.Application()
    app.router.add_route("*", "/doc/{size}", doc)
    return await aiohttp_server(app, host="127.0.0.1")


async def test_head_requests(documents: Any, make_config: Any, gateway: Any) -> None:
    client = await gateway(make_config(str(documents.make_url("/"))))
    await login(client)
    for size in (5000, 300_000):
        resp = await client.head(f"/doc/{size}")
        assert resp.status == 200
        assert resp.headers["X-Method"] == "HEAD"
        assert resp.headers["Content-Length"] == str(size)
        assert await resp.read() == b""
        # The connection is still in step: no body was sent after the HEAD.
        resp = await client.get(f"/doc/{size}")
        assert resp.headers["X-Method"] == "GET"
        assert await resp.read() == b"d" * size


async def test_head_on_raw_keep_alive_connection(upstream: Any, make_config: Any,
                                                 gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway, sign_in=False)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(b"HEAD /static/h HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /static/g HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 200"), rest[:100]
    assert b'"method": "GET"' in rest


async def test_methods_and_bodies_forwarded(upstream: Any, make_config: Any,
                                            gateway: Any) -> None:
    client = await proxied(upstream, make_config, gateway)
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"):
        resp = await client.request(method, "/m", data=b"abc" if method != "GET" else None)
        seen = await resp.json()
        assert seen["method"] == method
        assert seen["body_size"] == (0 if method == "GET" else 3)


@pytest.mark.parametrize("size", [10, 100_000])  # read whole, streamed
async def test_expect_100_continue_is_met_by_the_gateway(upstream: Any, make_config: Any,
                                                         gateway: Any, size: int) -> None:
    """The client gets its 100 Continue here; the upstream never sees Expect."""
    client = await proxied(upstream, make_config, gateway, sign_in=False)
    resp = await client.post("/static/upload", data=b"e" * size, expect100=True)
    assert resp.status == 200
    seen = await resp.json()
    assert seen["body_size"] == size
    assert "expect" not in seen_headers(seen)


async def test_error_pages_offer_a_way_onward(aiohttp_server: Any, make_config: Any,
                                              gateway: Any) -> None:
    from authkit import api_login, send
    client = await gateway(make_config("http://127.0.0.1:9"))        # nothing listens
    token = await api_login(client)
    r = await send(client, "GET", "/reports?y=1", token=token, accept="text/html")
    assert r.status == 502
    assert '<a href="/reports?y=1">Try again</a>' in r.text
    assert '<a href="/">Go to the home page</a>' in r.text
    # Never a link off the site, whatever the path looked like.
    r = await send(client, "GET", "//evil.example/x", token=token, accept="text/html")
    assert "evil.example" not in r.text
    r = await send(client, "GET", "/admin", token=token, accept="text/html")
    assert r.status == 403
    assert '<a href="/_gateway/logout">Sign in as someone else</a>' in r.text
    assert "Try again" not in r.text
    assert "prefers-color-scheme:dark" in r.text
    # Its style is allowed by its CSP (it was not, and the page lost it).
    assert r.headers["Content-Security-Policy"] == \
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
