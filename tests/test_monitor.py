"""The session monitor's tag in upstream pages, through the real gateway: where
it goes, the headers that must follow, and every response left alone."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import pytest
from aiohttp import web

from authkit import api_login, send
from gateway.proxy.monitor import SEARCH_LIMIT, Injector, inject

TAG = b'<script src="/_gateway/monitor.js" defer></script>'
# "<body" and "</head>" inside a script's string and a comment: not the place.
SCRIPTED = (b"<html><head><script>var t = '<body class=x></head>';</script>"
            b"<!--[if IE]><body class=ie></head><![endif]--></head><body>x</body></html>")
PROCEED = web.AppKey("proceed", asyncio.Event)
PAGE = b"<!doctype html><html><head><title>t</title></head><body>hi</body></html>"
BIG = 200 * 2**10


def page_app() -> web.Application:
    async def page(request: web.Request) -> web.StreamResponse:
        seen = {"X-Seen-Accept-Encoding": request.headers.get("Accept-Encoding", "")}
        name = request.match_info["name"]
        html = "text/html; charset=utf-8"
        if name == "page":
            return web.Response(body=PAGE, headers={
                **seen, "Content-Type": html, "ETag": '"v1"', "Content-MD5": "x",
                "Accept-Ranges": "bytes"})
        if name == "fragment":
            return web.Response(body=b"<p>only this</p>", headers={**seen, "Content-Type": html})
        if name == "bodyonly":
            return web.Response(body=b"<html><BODY>x</BODY></html>", content_type="text/html")
        if name == "scripted":        # "<body" in an inline script: not the place
            return web.Response(body=SCRIPTED, content_type="text/html")
        if name == "download":
            return web.Response(body=PAGE, headers={
                "Content-Type": html, "Content-Disposition": "attachment; filename=a.html"})
        if name == "notransform":
            return web.Response(body=PAGE, headers={
                "Content-Type": html, "Cache-Control": "private, no-transform"})
        if name == "range":
            return web.Response(body=PAGE, headers={
                "Content-Type": html, "X-Seen-Range": request.headers.get("Range", "")})
        if name == "progress":        # a page that streams its progress
            response = web.StreamResponse(headers={"Content-Type": html})
            await response.prepare(request)
            await response.write(b"<p>progress 1</p>")
            await request.app[PROCEED].wait()
            await response.write(b"<p>done</p>")
            await response.write_eof()
            return response
        if name in ("late", "early", "split"):
            response = web.StreamResponse(headers={"Content-Type": html})
            if name != "split":
                response.content_length = BIG
            await response.prepare(request)
            if name == "late":        # </head> beyond the first 64 KiB: the tag goes last
                chunks = [b"<!--" + b"x" * (BIG - 18) + b"-->", b"</head>body"]
            elif name == "early":
                chunks = [b"<html><head></head>" + b"y" * (BIG - 19)]
            else:                     # chunked, the place split across writes
                chunks = [b"<html><head><title>s</title></he", b"ad><body>", b"z" * BIG]
            for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
            return response
        if name == "gzip":
            return web.Response(body=gzip.compress(PAGE), headers={
                "Content-Type": html, "Content-Encoding": "gzip"})
        if name == "json":
            return web.json_response({"html": "</head>"})
        if name == "partial":
            return web.Response(status=206, body=PAGE[:10], headers={
                "Content-Type": html, "Content-Range": f"bytes 0-9/{len(PAGE)}"})
        if name == "utf16":
            return web.Response(body="<html><head></head></html>".encode("utf-16"),
                                headers={"Content-Type": "text/html; charset=utf-16"})
        if name == "notfound":
            return web.Response(status=404, body=PAGE, content_type="text/html")
        raise web.HTTPNotFound()

    app = web.Application()
    app[PROCEED] = asyncio.Event()
    app.router.add_route("*", "/{name}", page)
    app.router.add_route("*", "/public/{name}", page)
    app.router.add_route("*", "/plain/{name}", page)
    return app


@pytest.fixture
async def site(aiohttp_server: Any, make_config: Any, gateway: Any) -> tuple[Any, str]:
    upstream = await aiohttp_server(page_app())
    url = str(upstream.make_url("/"))
    config = make_config(url, upstreams=[
        {"name": "app", "url": url, "path_prefix": "/", "session_monitor": True,
         "public": ["/public/"]},
        {"name": "plain", "url": url, "path_prefix": "/plain/"}])
    client = await gateway(config)
    return client, await api_login(client)


async def get(site: Any, path: str, method: str = "GET", accept: str = "text/html") -> Any:
    client, token = site
    return await send(client, method, path, token=token, accept=accept)


async def test_a_page_gets_the_tag_before_its_head_ends(site):
    r = await get(site, "/page")
    assert r.status == 200
    assert r.body == PAGE.replace(b"</head>", TAG + b"</head>")
    assert r.headers["Content-Length"] == str(len(PAGE) + len(TAG))
    assert r.headers["X-Seen-Accept-Encoding"] == "identity"   # asked plain
    assert r.headers["ETag"] == 'W/"v1"'                       # not these bytes any more
    assert "Content-MD5" not in r.headers and "Accept-Ranges" not in r.headers


async def test_a_head_request_is_told_the_length_of_the_page_with_the_tag(site):
    r = await get(site, "/page", method="HEAD")
    assert r.headers["Content-Length"] == str(len(PAGE) + len(TAG)) and r.body == b""


@pytest.mark.parametrize("path, expected", [
    ("/fragment", b"<p>only this</p>" + TAG),                  # nowhere to go: at the end
    ("/bodyonly", b"<html><BODY>x</BODY></html>" + TAG),
    ("/scripted", SCRIPTED.replace(b"--></head>", b"-->" + TAG + b"</head>")),
])
async def test_a_page_without_a_head(site, path, expected):
    assert (await get(site, path)).body == expected


async def test_pages_that_stream(site):
    late = await get(site, "/late")
    assert late.body.endswith(b"</head>body" + TAG) and len(late.body) == BIG + len(TAG)
    assert late.headers["Content-Length"] == str(BIG + len(TAG))
    early = await get(site, "/early")
    assert early.body.startswith(b"<html><head>" + TAG + b"</head>yyy")
    assert len(early.body) == BIG + len(TAG)
    split = await get(site, "/split")
    assert split.body.startswith(b"<html><head><title>s</title>" + TAG + b"</head><body>zzz")
    assert split.body.count(TAG) == 1 and "Content-Length" not in split.headers


@pytest.mark.parametrize("path", ["/gzip", "/json", "/partial", "/utf16", "/notfound",
                                  "/download", "/notransform"])
async def test_other_answers_pass_untouched(site, path):
    r = await get(site, path)          # (the test client decompresses gzip)
    assert b"monitor.js" not in r.body


async def test_only_signed_in_pages_of_monitored_upstreams_and_page_requests(site):
    client, _ = site
    public = await send(client, "GET", "/public/page", accept="text/html")
    assert public.body == PAGE and public.headers["X-Seen-Accept-Encoding"] != "identity"
    plain = await get(site, "/plain/page")
    assert plain.body == PAGE
    api = await get(site, "/page", accept="application/json")
    assert api.body == PAGE and api.headers["X-Seen-Accept-Encoding"] != "identity"
    client, token = site
    for dest, tagged in (("document", True), ("iframe", False), ("empty", False)):
        r = await send(client, "GET", "/page", token=token, accept="text/html",
                       headers=[("Sec-Fetch-Dest", dest), ("Sec-Fetch-Mode", "navigate")])
        assert (TAG in r.body) is tagged, dest


async def test_a_page_is_asked_for_whole(site):
    client, token = site
    r = await send(client, "GET", "/range", token=token, accept="text/html",
                   headers=[("Range", "bytes=0-9"), ("If-Range", '"v1"')])
    assert r.headers["X-Seen-Range"] == "" and TAG in r.body


async def test_a_page_streams_while_the_tag_waits_for_its_place(aiohttp_server, make_config,
                                                                gateway):
    upstream = await aiohttp_server(page_app())
    url = str(upstream.make_url("/"))
    client = await gateway(make_config(url, upstreams=[
        {"name": "app", "url": url, "path_prefix": "/", "session_monitor": True}]))
    token = await api_login(client)
    async with client.get("/progress", headers={"Accept": "text/html",
                                                "Cookie": f"gateway_session={token}"}) as r:
        first = await asyncio.wait_for(r.content.readany(), 5)
        assert first == b"<p>progress 1</p>"      # not held back for a place to come
        upstream.app[PROCEED].set()
        assert await r.content.read() == b"<p>done</p>" + TAG


async def test_the_gateways_refusals_are_marked_and_an_upstream_cannot_claim_the_mark(
        aiohttp_server, make_config, gateway):
    async def claims(request: web.Request) -> web.Response:
        return web.json_response({"error": "SESSION_EXPIRED"}, status=401,
                                 headers={"Gateway-Refusal": "session"})
    app = web.Application()
    app.router.add_get("/{tail:.*}", claims)
    upstream = await aiohttp_server(app)
    client = await gateway(make_config(str(upstream.make_url("/"))))
    token = await api_login(client)
    own = await send(client, "GET", "/x", token=token)
    assert own.status == 401 and "Gateway-Refusal" not in own.headers    # the app's own 401
    refused = await send(client, "GET", "/x", token="not-a-session")
    assert (refused.status, refused.headers["Gateway-Refusal"]) == (401, "session")
    # A script's fetch accepting HTML is not a navigation: a 401, not the login page.
    fetched = await send(client, "GET", "/x", accept="text/html",
                         headers=[("Sec-Fetch-Mode", "cors"), ("Sec-Fetch-Dest", "empty")])
    assert (fetched.status, fetched.headers["Gateway-Refusal"]) == (401, "session")
    navigated = await send(client, "GET", "/x", accept="text/html",
                           headers=[("Sec-Fetch-Mode", "navigate")])
    assert navigated.status == 302


async def test_the_script_and_the_sign_in_windows_last_page(site):
    client, _ = site
    r = await send(client, "GET", "/_gateway/monitor.js", accept="*/*")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
    assert b"/api/session" in r.body and r.headers["X-Content-Type-Options"] == "nosniff"
    again = await send(client, "GET", "/_gateway/monitor.js", accept="*/*",
                       headers=[("If-None-Match", r.headers["ETag"])])
    assert again.status == 304
    landing = await send(client, "GET", "/_gateway/monitor/signed-in", accept="text/html")
    assert landing.status == 200 and b'src="/_gateway/monitor.js" data-signed-in' in landing.body
    assert "script-src 'self'" in landing.headers["Content-Security-Policy"]


async def test_the_monitor_is_told_its_settings(make_config, gateway, upstream):
    client = await gateway(make_config(str(upstream.make_url("/")), session={
        "activity": "interaction", "monitor_interval": "10s", "idle_timeout": "1m"}))
    token = await api_login(client)
    body = (await send(client, "GET", "/_gateway/api/session?alerts=0", token=token)).json()
    assert body["monitor"] == {"interval": 10.0, "expiring_soon": 120.0,
                               "activity": "interaction", "ping_interval": 15.0}


def test_the_streaming_injector_matches_the_whole_body_one():
    bodies = [PAGE, b"<p>x</p>", b"a" * SEARCH_LIMIT + b"</head>", b"a" * (SEARCH_LIMIT - 3) + b"</HEAD>",
              b"", b"<body>" * 3]
    for body in bodies:
        for size in (1, 5, 4096, len(body) or 1):
            injector = Injector(TAG)
            out = b"".join(injector.feed(body[i:i + size]) for i in range(0, len(body), size))
            assert out + injector.finish() == inject(body, TAG), (body[:20], size)
