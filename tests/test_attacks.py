"""What a black-box attack on the running gateway found, replayed through it.

Each case failed before its fix: an upstream setting the gateway's cookies,
servlet path parameters skipping role rules, a role carrying the list
separator, rewrite and client-address headers passed through, shared caches
told to keep signed-in pages, slow headers, odd request lines, Unicode line
breaks in identity headers, and cross-site WebSocket upgrades.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from authkit import api_login, raw_exchange, replace_users, send
from conftest import USERS, seen_headers, write_users


async def start(upstream: Any, make_config: Any, gateway: Any, **overrides: Any) -> Any:
    return await gateway(make_config(str(upstream.make_url("/")), **overrides))


def reflect(**headers: str) -> str:
    return "/response-headers?" + urlencode(headers)


# -- 1. the upstream cannot set the gateway's cookies ---------------------------------

@pytest.mark.parametrize("template", [
    "gateway_session={token}; Path=/",
    "GATEWAY_SESSION={token}; Path=/",
    "__Host-gateway_session={token}; Path=/; Secure",
    "__Secure-Gateway_Session={token}; Path=/",
    "={name}={token}; Path=/",
    "gateway_form=forged; Path=/_gateway",
    "gateway_notice=expired; Path=/_gateway",
])
async def test_upstream_cannot_sign_the_browser_into_another_session(
        upstream: Any, make_config: Any, gateway: Any, template: str) -> None:
    client = await start(upstream, make_config, gateway)
    alice = await api_login(client)
    admin = await api_login(client, "Admin", "admin-pw")
    line = template.format(token=admin, name="gateway_session")
    r = await send(client, "GET", reflect(**{"Set-Cookie": line}), token=alice)
    assert r.status == 200
    assert r.headers.getall("Set-Cookie", []) == []


async def test_the_apps_own_cookies_still_pass_and_the_drop_is_logged_once(
        upstream: Any, make_config: Any, gateway: Any, caplog: Any) -> None:
    client = await start(upstream, make_config, gateway)
    alice = await api_login(client)
    target = "/response-headers?" + urlencode([("Set-Cookie", "app=1; Path=/"),
                                               ("Set-Cookie", "gateway_session=x; Path=/")])
    with caplog.at_level(logging.WARNING, logger="gateway.proxy"):
        for _ in range(3):
            r = await send(client, "GET", target, token=alice)
            assert r.headers.getall("Set-Cookie") == ["app=1; Path=/"]
    warnings = [rec for rec in caplog.records if "own cookies" in rec.getMessage()]
    assert len(warnings) == 1 and "app" in warnings[0].getMessage()
    assert "gateway_session=x" not in caplog.text


# -- 2. servlet path parameters cannot skip role rules ----------------------------------

PARAMETER_PATHS = ["/;/admin/x", "/%3b/admin/x", "/%3B/admin/x", "/;x=1/admin/x",
                   "/;jsessionid=1/admin/x", "/admin;x/y", "//;//admin/x"]


@pytest.mark.parametrize("target", PARAMETER_PATHS)
async def test_path_parameters_are_refused(upstream: Any, make_config: Any, gateway: Any,
                                           target: str) -> None:
    client = await start(upstream, make_config, gateway)
    alice = await api_login(client)
    assert (await send(client, "GET", "/admin/x", token=alice)).status == 403
    r = await send(client, "GET", target, token=alice)
    assert r.status == 400 and r.json()["error"] == "BAD_REQUEST"
    assert "path parameters" in r.json()["message"]


@pytest.mark.parametrize("target", PARAMETER_PATHS)
async def test_allowed_path_parameters_are_judged_as_a_servlet_reads_them(
        upstream: Any, make_config: Any, gateway: Any, target: str) -> None:
    config = make_config(str(upstream.make_url("/")))
    data = {"upstreams": [{**_upstream_dict(config), "allow_path_parameters": True}]}
    client = await gateway(make_config(str(upstream.make_url("/")), **data))
    alice = await api_login(client)
    admin = await api_login(client, "Admin", "admin-pw")
    assert (await send(client, "GET", target, token=alice)).status == 403
    r = await send(client, "GET", target, token=admin)
    assert r.status == 200 and ";" in r.json()["path"]


async def test_allowed_path_parameters_keep_public_paths_strict(
        upstream: Any, make_config: Any, gateway: Any) -> None:
    config = make_config(str(upstream.make_url("/")))
    data = {"upstreams": [{**_upstream_dict(config), "allow_path_parameters": True}]}
    client = await gateway(make_config(str(upstream.make_url("/")), **data))
    assert (await send(client, "GET", "/static/a;v=1")).status == 200
    # Public to a servlet ("/static/x") but not as written: the stricter reading wins.
    assert (await send(client, "GET", "/;/static/x")).status == 401
    assert (await send(client, "GET", "/favicon.ico;x")).status == 401
    assert (await send(client, "GET", "/;/_gateway/api/session")).status == 404


def _upstream_dict(config: Any) -> dict[str, Any]:
    up = config.upstreams[0]
    return {"name": up.name, "url": up.url, "public": list(up.public),
            "rules": [{"path": r.path, "roles": list(r.roles)} for r in up.rules]}


# -- 3. a role cannot carry the list separator -------------------------------------------

@pytest.mark.parametrize("role", ["staff,admin", "staff admin", "admin\t", "a\nb", "a\x85b"])
async def test_a_role_with_a_separator_never_reaches_the_upstream(
        upstream: Any, make_config: Any, gateway: Any, tmp_path: Any, role: str,
        caplog: Any) -> None:
    client = await start(upstream, make_config, gateway)
    alice = await api_login(client)
    users = [dict(u, roles=["user", role]) if u["username"] == "alice" else u for u in USERS]
    with caplog.at_level(logging.ERROR, logger="gateway.users"):
        replace_users(tmp_path, users)
        r = await send(client, "GET", "/x", token=alice)
    assert seen_headers(r.json())["x-auth-roles"] == ["user"]       # the last good file
    assert f"users[0].roles[1]: role {role!r} of user 'alice' must not contain" in caplog.text


def test_a_role_with_a_separator_is_a_config_error_at_start(tmp_path: Any) -> None:
    from gateway.config import ConfigError
    from gateway.auth.users import load_users_file
    users = [dict(USERS[0], roles=["staff,admin"])]
    with pytest.raises(ConfigError) as err:
        load_users_file(write_users(tmp_path, users))
    assert err.value.problems == [
        "users.file (users.yaml): users[0].roles[0]: role 'staff,admin' of user 'alice' "
        "must not contain ',', whitespace or control characters"]


# -- soft spots ----------------------------------------------------------------------------

REWRITES = ["X-Original-URL", "X-Rewrite-URL", "X-Original-URI", "X-Forwarded-Prefix",
            "X-Forwarded-Uri", "x_original_url"]


@pytest.mark.parametrize("trusted", [[], ["127.0.0.1/32"]])
async def test_rewrite_headers_never_reach_the_upstream(
        upstream: Any, make_config: Any, gateway: Any, trusted: list[str]) -> None:
    client = await start(upstream, make_config, gateway, trusted_proxies=trusted)
    alice = await api_login(client)
    r = await send(client, "GET", "/x", token=alice,
                   headers=[(name, "/admin/x") for name in REWRITES])
    seen = seen_headers(r.json())
    assert not {n.lower().replace("_", "-") for n in REWRITES} & set(seen)


CLIENT_ADDRESS = ["True-Client-IP", "CF-Connecting-IP", "X-Client-IP", "X-Cluster-Client-IP"]


async def test_client_address_headers_only_from_trusted_proxies(
        upstream: Any, make_config: Any, gateway: Any) -> None:
    headers = [(name, "203.0.113.9") for name in CLIENT_ADDRESS]
    plain = await start(upstream, make_config, gateway)
    seen = seen_headers((await send(plain, "GET", "/static/x", headers=headers)).json())
    assert not {n.lower() for n in CLIENT_ADDRESS} & set(seen)
    behind = await start(upstream, make_config, gateway, trusted_proxies=["127.0.0.1/32"])
    seen = seen_headers((await send(behind, "GET", "/static/x", headers=headers)).json())
    assert all(seen[n.lower()] == ["203.0.113.9"] for n in CLIENT_ADDRESS)


async def test_signed_in_pages_are_not_left_to_shared_caches(
        upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await start(upstream, make_config, gateway)
    alice = await api_login(client)
    r = await send(client, "GET", reflect(**{"Cache-Control": "public, max-age=600"}),
                   token=alice)
    assert r.headers.getall("Cache-Control") == ["private, max-age=600"]
    r = await send(client, "GET", reflect(**{"X-Other": "1"}), token=alice)
    assert "Cache-Control" not in r.headers                      # nothing added
    r = await send(client, "GET", reflect(**{"Cache-Control": "no-store"}), token=alice)
    assert r.headers.getall("Cache-Control") == ["no-store"]
    r = await send(client, "GET", reflect(**{"Cache-Control": "max-age=600",
                                             "CDN-Cache-Control": "max-age=600"}), token=alice)
    assert r.headers.getall("Cache-Control") == ["private, max-age=600"]
    assert "CDN-Cache-Control" not in r.headers


async def test_public_pages_and_opted_in_upstreams_keep_public_caching(
        upstream: Any, make_config: Any, gateway: Any) -> None:
    config = make_config(str(upstream.make_url("/")))
    opted = {**_upstream_dict(config), "allow_public_cache": True}
    client = await gateway(make_config(str(upstream.make_url("/")), upstreams=[opted]))
    alice = await api_login(client)
    r = await send(client, "GET", reflect(**{"Cache-Control": "public, max-age=600"}),
                   token=alice)
    assert r.headers.getall("Cache-Control") == ["public, max-age=600"]
    public = {**_upstream_dict(config), "public": ["/response-headers"]}
    client = await gateway(make_config(str(upstream.make_url("/")), upstreams=[public]))
    r = await send(client, "GET", reflect(**{"Cache-Control": "public, max-age=600"}))
    assert r.headers.getall("Cache-Control") == ["public, max-age=600"]


async def test_a_client_dripping_its_headers_is_cut_off(
        upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await start(upstream, make_config, gateway, limits={"header_timeout": "1s"})
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    loop = asyncio.get_running_loop()
    began = loop.time()
    writer.write(b"GET /static/x HTTP/1.1\r\nHost: a\r\n")
    closed_after = None
    try:
        for i in range(40):  # one header byte every 0.25 s, for up to 10 s
            writer.write(b"X-Drip-%d: 1\r\n" % i)
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), 0.25) == b"":
                    closed_after = loop.time() - began
                    break
            except asyncio.TimeoutError:
                continue
    except ConnectionResetError:
        closed_after = loop.time() - began
    finally:
        writer.close()
    assert closed_after is not None and closed_after < 5, closed_after


async def test_a_prompt_keep_alive_client_is_not_cut_off(
        upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await start(upstream, make_config, gateway, limits={"header_timeout": "1s"})
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        for _ in range(2):
            writer.write(b"GET /static/x HTTP/1.1\r\nHost: a\r\n\r\n")
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 5)
            assert status.startswith(b"HTTP/1.1 200"), status
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            await asyncio.sleep(0.3)
    finally:
        writer.close()


@pytest.mark.parametrize("path", ["/static/x", "/_gateway/healthz"])
@pytest.mark.parametrize("line, status", [
    (b"GET {path}\r\n\r\n", b"400"),
    (b"GET {path} HTTP/2.0\r\nHost: a\r\n\r\n", b"505"),
    (b"GET {path} HTTP/0.9\r\nHost: a\r\n\r\n", b"400"),
])
async def test_request_lines_that_are_not_http1_are_refused(
        upstream: Any, make_config: Any, gateway: Any, path: str, line: bytes,
        status: bytes) -> None:
    client = await start(upstream, make_config, gateway)
    reply = await raw_exchange(client, line.replace(b"{path}", path.encode()), timeout=5)
    assert reply.startswith(b"HTTP/1.1 " + status), reply[:80]


async def test_unicode_line_breaks_never_reach_identity_headers(
        upstream: Any, make_config: Any, gateway: Any, tmp_path: Any) -> None:
    users = [dict(u, name="Ada\u2028X-Evil: 1\u0085\u2029Lovelace") if u["username"] == "alice"
             else u for u in USERS]
    write_users(tmp_path, users)
    client = await start(upstream, make_config, gateway)
    alice = await api_login(client)
    seen = seen_headers((await send(client, "GET", "/x", token=alice)).json())
    assert seen["x-auth-name"] == ["Ada X-Evil: 1  Lovelace"]
    assert "x-evil" not in seen


# -- cross-site WebSocket hijacking ---------------------------------------------------------

@pytest.mark.parametrize("origin, allowed", [
    (None, True),                                 # not a browser: judged as before
    ("{own}", True),                              # the page's own scheme and Host
    ("http://127.0.0.1:8080", True),              # public_url
    ("HTTP://127.0.0.1:8080/", True),
    ("https://apps.example.com", True),           # the upstream's websocket_origins
    ("https://apps.example.com:443", True),
    ("http://evil.example", False),
    ("https://127.0.0.1:8080", False),            # scheme differs from public_url
    ("http://127.0.0.1:8081", False),
    ("http://apps.example.com", False),
    ("null", False),
    ("", False),
])
async def test_websocket_upgrades_from_other_sites_are_refused(
        upstream: Any, make_config: Any, gateway: Any, origin: str | None,
        allowed: bool) -> None:
    config = make_config(str(upstream.make_url("/")))
    up = {**_upstream_dict(config), "websocket_origins": ["https://apps.example.com"]}
    client = await gateway(make_config(str(upstream.make_url("/")), upstreams=[up]))
    await client.post("/_gateway/api/login", json={"username": "alice", "password": "alice-pw"})
    headers = {}
    if origin is not None:
        headers["Origin"] = origin.replace("{own}", f"http://{client.server.host}:"
                                                    f"{client.server.port}")
    if allowed:
        ws = await client.ws_connect("/ws", headers=headers)
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"
        await ws.close()
    else:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect("/ws", headers=headers)
        assert info.value.status == 403


async def test_websocket_origin_behind_a_chain_of_trusted_proxies(
        upstream: Any, make_config: Any, gateway: Any) -> None:
    client = await start(upstream, make_config, gateway, trusted_proxies=["127.0.0.1/32"])
    await client.post("/_gateway/api/login", json={"username": "alice", "password": "alice-pw"})
    proxied = {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "app.example, inner:8080"}
    ws = await client.ws_connect("/ws", headers={**proxied, "Origin": "https://app.example"})
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws", headers={**proxied, "Origin": "http://inner:8080"})
    assert info.value.status == 403
