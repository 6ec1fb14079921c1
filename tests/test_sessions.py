"""Every session endpoint of the contract, end to end over real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from authkit import (COOKIE, api_login, cookie_attrs, csrf_of, send, session_status)
from conftest import Clock, SECRET, login, seen_headers
from gateway.state import GATEWAY

INACTIVITY = "Your session expired due to inactivity"
SIGNED_OUT = "You were signed out."
EXPIRED = "Your session has expired."
TOO_MANY = "signed in on too many devices"
GENERIC = "Invalid username or password."



@pytest.fixture
def cfg(upstream, make_config):
    """``cfg(**overrides)``: a config in front of the echo upstream."""
    return lambda **overrides: make_config(str(upstream.make_url("/")), **overrides)


async def login_page(client: Any, rd: str | None = None) -> tuple[Any, str]:
    resp = await client.get("/_gateway/login", params={"rd": rd} if rd is not None else None)
    return resp, await resp.text()


async def form_login(client: Any, username: str = "alice", password: str = "alice-pw", *,
                     rd: str = "/", remember: bool = False, csrf: str | None = None,
                     headers: dict[str, str] | None = None) -> Any:
    if csrf is None:
        _, page = await login_page(client, rd)
        csrf = csrf_of(page)
    data = {"username": username, "password": password, "rd": rd, "csrf_token": csrf}
    if remember:
        data["remember"] = "1"
    return await client.post("/_gateway/login", data=data, allow_redirects=False,
                             headers=headers)


def jar_token(client: Any, name: str = COOKIE) -> str | None:
    for c in client.session.cookie_jar:
        if c.key == name:
            return c.value
    return None


def parse_iso(text: str) -> float:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- GET /_gateway/login ---------------------------------------------------------

async def test_login_page_has_csrf_and_echoes_rd(cfg, gateway):
    client = await gateway(cfg())
    resp, page = await login_page(client, "/reports?a=1&b=2")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert len(csrf_of(page)) >= 32
    assert 'name="rd" value="/reports?a=1&amp;b=2"' in page
    assert 'name="username"' in page and 'name="password"' in page and 'name="remember"' in page
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Frame-Options"] == "DENY"
    # The form state cookie stays on the gateway's own paths.
    form = cookie_attrs(_set_cookie_line(resp, "gateway_form"))
    assert form.get("path") == "/_gateway" and "httponly" in form


async def test_login_page_escapes_a_hostile_rd(cfg, gateway):
    client = await gateway(cfg())
    _, page = await login_page(client, '"><script>alert(1)</script>')
    assert "<script>alert(1)" not in page
    assert "&#34;&gt;&lt;script&gt;" in page


async def test_login_page_defaults_rd_to_root(cfg, gateway):
    client = await gateway(cfg())
    _, page = await login_page(client)
    assert 'name="rd" value="/"' in page


# -- POST /_gateway/login ------------------------------------------------------

async def test_form_login_success_redirects_to_rd_and_sets_the_cookie(cfg, gateway):
    client = await gateway(cfg())
    resp = await form_login(client, rd="/reports?a=1")
    assert resp.status == 303
    assert resp.headers["Location"] == "/reports?a=1"
    assert COOKIE in resp.cookies
    r = await client.get("/reports?a=1")
    assert r.status == 200
    body = await r.json()
    assert body["path"] == "/reports?a=1"
    assert seen_headers(body)["x-auth-user"] == ["alice"]


@pytest.mark.parametrize("username, password", [
    ("alice", "wrong-pw"),
    ("nobody", "alice-pw"),
    ("dave", "dave-pw"),          # disabled
    ("alice", ""),
    ("", ""),
    ("alice", "alice-pw "),       # passwords are not trimmed
])
async def test_form_login_failure_is_401_with_one_generic_message(cfg, gateway, username, password):
    client = await gateway(cfg())
    resp = await form_login(client, username, password, rd="/after")
    assert resp.status == 401
    page = await resp.text()
    assert page.count(GENERIC) == 1
    assert page.count('role="alert"') == 1
    assert csrf_of(page)                              # the form again
    assert 'name="rd" value="/after"' in page
    assert COOKIE not in resp.cookies
    assert jar_token(client) is None
    # And nothing else leaks which part was wrong.
    for hint in ("disabled", "unknown", "not found", "no such", "wrong password"):
        assert hint not in page.lower()


async def test_form_login_failure_then_success_with_the_same_form(cfg, gateway):
    client = await gateway(cfg())
    resp = await form_login(client, "alice", "nope")
    page = await resp.text()
    resp = await form_login(client, csrf=csrf_of(page))
    assert resp.status == 303


async def test_form_login_without_csrf_token_is_403(cfg, gateway):
    client = await gateway(cfg())
    await login_page(client)
    resp = await client.post("/_gateway/login", allow_redirects=False,
                              data={"username": "alice", "password": "alice-pw", "rd": "/"})
    assert resp.status == 403
    assert COOKIE not in resp.cookies


@pytest.mark.parametrize("token", ["", "x", "A" * 43, "wrong-token-" * 4])
async def test_form_login_with_wrong_csrf_token_is_403(cfg, gateway, token):
    client = await gateway(cfg())
    await login_page(client)
    resp = await form_login(client, csrf=token)
    assert resp.status == 403
    assert COOKIE not in resp.cookies
    assert jar_token(client) is None


async def test_form_login_with_another_browsers_csrf_token_is_403(cfg, gateway, aiohttp_client):
    config = cfg()
    victim = await gateway(config)
    attacker = await aiohttp_client(victim.server)   # another browser, same gateway
    _, page = await login_page(attacker)
    await login_page(victim)
    resp = await form_login(victim, csrf=csrf_of(page))
    assert resp.status == 403


async def test_form_login_without_form_cookie_is_403(cfg, gateway):
    client = await gateway(cfg())
    _, page = await login_page(client)
    client.session.cookie_jar.clear()
    resp = await form_login(client, csrf=csrf_of(page))
    assert resp.status == 403


async def test_after_a_403_the_new_form_works(cfg, gateway):
    client = await gateway(cfg())
    await login_page(client)
    resp = await form_login(client, csrf="bogus")
    assert resp.status == 403
    resp = await form_login(client, csrf=csrf_of(await resp.text()))
    assert resp.status == 303


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "http://127.0.0.1:8080.evil.example"},
    {"Origin": "null"},
    {"Referer": "https://evil.example/page"},
    {"Origin": "https://127.0.0.1:8080"},          # another scheme is another site
])
async def test_form_login_cross_site_is_403(cfg, gateway, headers):
    client = await gateway(cfg())
    resp = await form_login(client, headers=headers)
    assert resp.status == 403
    assert COOKIE not in resp.cookies


@pytest.mark.parametrize("origin", ["http://127.0.0.1:8080", "HTTP://127.0.0.1:8080", "own"])
async def test_form_login_same_site_origin_is_fine(cfg, gateway, origin):
    client = await gateway(cfg())
    if origin == "own":
        origin = f"http://{client.server.host}:{client.server.port}"
    resp = await form_login(client, headers={"Origin": origin})
    assert resp.status == 303


# -- POST /_gateway/api/login --------------------------------------------------

async def test_api_login_returns_the_user_and_sets_the_cookie(cfg, gateway):
    client = await gateway(cfg())
    resp = await client.post("/_gateway/api/login",
                             json={"username": "Admin", "password": "admin-pw"})
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body["user"] == {"username": "Admin", "email": "admin@example.com",
                            "name": "Ada Admin", "roles": ["admin", "user"]}
    assert body["username"] == "Admin" and body["roles"] == ["admin", "user"]
    assert body["session"]["id"]
    assert COOKIE in resp.cookies
    status, session = await session_status(client, resp.cookies[COOKIE].value)
    assert status == 200 and session["session"]["id"] == body["session"]["id"]


@pytest.mark.parametrize("username, password", [
    ("alice", "wrong"), ("nobody", "x"), ("dave", "dave-pw"), ("alice", ""),
    ("a" * 5000, "alice-pw"), ("alice", "p" * 5000),
])
async def test_api_login_failure_is_401_invalid_credentials(cfg, gateway, username, password):
    client = await gateway(cfg())
    resp = await client.post("/_gateway/api/login",
                             json={"username": username, "password": password})
    assert resp.status == 401
    assert (await resp.json())["error"] == "INVALID_CREDENTIALS"
    assert COOKIE not in resp.cookies


@pytest.mark.parametrize("body", [
    b"not json", b"{", b"\xff\xfe", b"", b"[]", b"null", b'"alice"', b"42",
    b'{"username": "alice"}', b'{"password": "alice-pw"}',
    b'{"username": 1, "password": "alice-pw"}',
    b'{"username": "alice", "password": null}',
    b'{"username": ["alice"], "password": "alice-pw"}',
])
async def test_api_login_bad_json_is_400(cfg, gateway, body):
    client = await gateway(cfg())
    resp = await client.post("/_gateway/api/login", data=body,
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["error"] == "BAD_REQUEST"
    assert COOKIE not in resp.cookies


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
async def test_api_login_takes_only_json(cfg, gateway, content_type):
    """A cross-site form can send these without a preflight; JSON it cannot."""
    client = await gateway(cfg())
    headers = {"Content-Type": content_type} if content_type else {}
    resp = await client.post("/_gateway/api/login", headers=headers,
                             data=b'{"username": "alice", "password": "alice-pw"}')
    assert resp.status == 415
    assert (await resp.json())["error"] == "BAD_REQUEST"
    assert COOKIE not in resp.cookies


async def test_api_login_remember_must_be_true_not_truthy(cfg, gateway):
    client = await gateway(cfg())
    resp = await client.post("/_gateway/api/login",
                             json={"username": "alice", "password": "alice-pw", "remember": "yes"})
    assert resp.status == 200
    assert "max-age" not in cookie_attrs(resp.headers["Set-Cookie"])


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"}, {"Origin": "null"},
                                     {"Referer": "http://evil.example/"}])
async def test_api_login_cross_site_is_403(cfg, gateway, headers):
    client = await gateway(cfg())
    resp = await client.post("/_gateway/api/login", headers=headers,
                             json={"username": "alice", "password": "alice-pw"})
    assert resp.status == 403
    assert COOKIE not in resp.cookies


# -- logout --------------------------------------------------------------------

async def test_logout_get_asks_to_confirm_and_does_not_sign_out(cfg, gateway):
    client = await gateway(cfg())
    token = await login(client)
    resp = await client.get("/_gateway/logout")
    assert resp.status == 200
    page = await resp.text()
    assert "Sign out?" in page and "<strong>alice</strong>" in page
    assert 'method="post"' in page and csrf_of(page)
    assert (await session_status(client, token))[0] == 200


async def test_logout_get_when_signed_out(cfg, gateway):
    client = await gateway(cfg())
    resp = await client.get("/_gateway/logout")
    assert resp.status == 200
    assert "You are not signed in." in await resp.text()


async def test_logout_post_ends_the_session_and_the_old_cookie_is_dead(cfg, gateway):
    client = await gateway(cfg())
    token = await login(client)
    page = await (await client.get("/_gateway/logout")).text()
    resp = await client.post("/_gateway/logout", data={"csrf_token": csrf_of(page)},
                             allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/_gateway/login"
    cleared = cookie_attrs(resp.cookies[COOKIE].output(header="").strip())
    assert cleared[COOKIE] in ("", '""')
    assert cleared.get("max-age") == "0"
    assert jar_token(client) is None
    # Replaying the old cookie: revoked, at once, everywhere.
    status, body = await session_status(client, token)
    assert (status, body["error"]) == (401, "SESSION_REVOKED")
    r = await send(client, "GET", "/private", token=token)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")
    # The login page says why, once.
    _, page = await login_page(client)
    assert SIGNED_OUT in page
    _, page = await login_page(client)
    assert SIGNED_OUT not in page


async def test_logout_post_without_csrf_is_403_and_keeps_the_session(cfg, gateway):
    client = await gateway(cfg())
    token = await login(client)
    await client.get("/_gateway/logout")
    for data in ({}, {"csrf_token": "forged"}):
        resp = await client.post("/_gateway/logout", data=data, allow_redirects=False)
        assert resp.status == 403
    assert (await session_status(client, token))[0] == 200


async def test_logout_post_cross_site_is_403(cfg, gateway):
    client = await gateway(cfg())
    token = await login(client)
    page = await (await client.get("/_gateway/logout")).text()
    resp = await client.post("/_gateway/logout", data={"csrf_token": csrf_of(page)},
                             headers={"Origin": "https://evil.example"}, allow_redirects=False)
    assert resp.status == 403
    assert (await session_status(client, token))[0] == 200


async def test_logout_of_one_device_keeps_the_others(cfg, gateway):
    client = await gateway(cfg())
    await login(client)
    other = await api_login(client)
    page = await (await client.get("/_gateway/logout")).text()
    await client.post("/_gateway/logout", data={"csrf_token": csrf_of(page)}, allow_redirects=False)
    assert (await session_status(client, other))[0] == 200


# -- GET /_gateway/api/session ----------------------------------------------------

async def test_api_session_body_shape(cfg, gateway):
    client = await gateway(cfg(session={"idle_timeout": "30m", "absolute_timeout": "12h"}))
    before = time.time()
    token = await login(client)
    resp = await client.get("/_gateway/api/session")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body["user"] == {"username": "alice", "email": "alice@example.com",
                            "name": "Alice", "roles": ["user"]}
    s = body["session"]
    assert {"id", "created_at", "last_seen_at", "idle_expires_at", "expires_at",
            "remaining_seconds", "expiring_soon"} <= set(s)
    created = parse_iso(s["created_at"])
    assert before - 1 <= created <= time.time()
    assert parse_iso(s["last_seen_at"]) >= created
    assert abs(parse_iso(s["idle_expires_at"]) - (created + 1800)) <= 2
    assert abs(parse_iso(s["expires_at"]) - (created + 43200)) <= 2
    assert 1790 <= s["remaining_seconds"] <= 1800
    assert s["expiring_soon"] is False
    # The id is the one the upstream is told.
    up = await (await client.get("/x")).json()
    assert seen_headers(up)["x-auth-session"] == [s["id"]]
    # ...and the cookie never names it in clear text for anyone but us to trust.
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["sid"] == s["id"]


async def test_api_session_expiring_soon(cfg, gateway):
    client = await gateway(cfg(session={"idle_timeout": "2m", "expiring_soon": "5m"}))
    await login(client)
    body = await (await client.get("/_gateway/api/session")).json()
    assert body["session"]["expiring_soon"] is True
    assert body["session"]["remaining_seconds"] <= 120


async def test_api_session_without_cookie_is_session_not_found(cfg, gateway):
    client = await gateway(cfg())
    r = await send(client, "GET", "/_gateway/api/session")
    assert r.status == 401
    assert r.json()["error"] == "SESSION_NOT_FOUND"
    assert COOKIE not in r.set_cookies()
    r = await send(client, "GET", "/_gateway/api/session", token="")
    assert (r.status, r.json()["error"]) == (401, "SESSION_NOT_FOUND")


async def test_a_dead_cookie_is_cleared_by_a_navigation_never_by_a_script_s_request(
        cfg, gateway):
    """A script's request in flight while another tab signs in would clear
    the new session's cookie as its answer lands; a navigation shows the
    login page anyway."""
    client = await gateway(cfg())
    r = await send(client, "GET", "/_gateway/api/session", token="garbage")
    assert (r.status, r.json()["error"]) == (401, "JWT_INVALID")
    assert COOKIE not in r.set_cookies()
    r = await send(client, "GET", "/x", token="garbage")
    assert r.status == 401 and COOKIE not in r.set_cookies()
    r = await send(client, "GET", "/x", token="garbage", accept="text/html")
    assert r.status == 302
    assert cookie_attrs(r.set_cookies()[COOKIE]).get("max-age") == "0"


# -- POST /_gateway/api/session/refresh ----------------------------------------------

async def test_refresh_extends_the_idle_window_and_get_does_not(cfg, gateway):
    clock = Clock()
    client = await gateway(cfg(session={"idle_timeout": "20s", "touch_interval": "1s"}),
                           clock=clock)
    token = await login(client)
    clock.advance(11)
    status, body = await session_status(client, token)
    assert status == 200
    first = body["session"]
    assert first["last_seen_at"] == first["created_at"]          # GET did not touch
    r = await send(client, "POST", "/_gateway/api/session/refresh", token=token)
    assert r.status == 200
    refreshed = r.json()["session"]
    assert parse_iso(refreshed["last_seen_at"]) == parse_iso(first["created_at"]) + 11
    assert parse_iso(refreshed["idle_expires_at"]) == parse_iso(first["idle_expires_at"]) + 11
    assert refreshed["id"] == first["id"]
    clock.advance(13)
    # Past the original idle end: alive only because of the refresh.
    status, body = await session_status(client, token)
    assert status == 200, body
    clock.advance(10)
    # 23 s after the refresh; the GET at 24 s did not extend anything.
    status, body = await session_status(client, token)
    assert (status, body["error"]) == (401, "SESSION_EXPIRED")


async def test_refresh_without_session_is_401(cfg, gateway):
    client = await gateway(cfg())
    r = await send(client, "POST", "/_gateway/api/session/refresh")
    assert (r.status, r.json()["error"]) == (401, "SESSION_NOT_FOUND")


async def test_refresh_cross_site_is_403(cfg, gateway):
    client = await gateway(cfg())
    token = await login(client)
    r = await send(client, "POST", "/_gateway/api/session/refresh", token=token,
                   headers=[("Origin", "https://evil.example")])
    assert r.status == 403


async def test_refresh_is_post_only(cfg, gateway):
    client = await gateway(cfg())
    token = await login(client)
    r = await send(client, "GET", "/_gateway/api/session/refresh", token=token)
    assert r.status == 405
    assert r.headers["Allow"] == "POST"


@pytest.mark.parametrize("method, path, allow", [
    ("DELETE", "/_gateway/login", "GET, HEAD, POST"),
    ("PUT", "/_gateway/api/login", "POST"),
    ("POST", "/_gateway/healthz", "GET, HEAD"),
])
async def test_gateway_endpoints_refuse_other_methods(cfg, gateway, method, path, allow):
    """Never passed on to the upstream, whatever the method."""
    client = await gateway(cfg())
    r = await send(client, method, path)
    assert (r.status, r.headers["Allow"], r.json()["error"]) == (405, allow, "METHOD_NOT_ALLOWED")


async def test_head_works_where_get_does(cfg, gateway):
    client = await gateway(cfg())
    assert (await send(client, "HEAD", "/_gateway/healthz")).status == 200


# -- the cookie ----------------------------------------------------------------------

def _session_cookie(resp: Any, name: str = COOKIE) -> dict[str, str]:
    lines = [l for l in resp.headers.getall("Set-Cookie") if l.startswith(name + "=")]
    assert len(lines) == 1, resp.headers.getall("Set-Cookie")
    return cookie_attrs(lines[0])


@pytest.mark.parametrize("how", ["api", "form"])
async def test_cookie_attributes_without_remember_me(cfg, gateway, how):
    client = await gateway(cfg())
    if how == "api":
        resp = await client.post("/_gateway/api/login",
                                 json={"username": "alice", "password": "alice-pw"})
    else:
        resp = await form_login(client)
    a = _session_cookie(resp)
    assert "httponly" in a
    assert a["samesite"] == "Lax"
    assert a["path"] == "/"
    assert "max-age" not in a and "expires" not in a        # a browser-session cookie
    assert "secure" not in a and "domain" not in a
    assert a[COOKIE].count(".") == 2                        # a JWT


@pytest.mark.parametrize("how", ["api", "form"])
async def test_cookie_is_persistent_with_remember_me(cfg, gateway, how):
    client = await gateway(cfg(session={"remember_me_timeout": "7d"}))
    if how == "api":
        resp = await client.post("/_gateway/api/login",
                                 json={"username": "alice", "password": "alice-pw",
                                       "remember": True})
    else:
        resp = await form_login(client, remember=True)
    a = _session_cookie(resp)
    assert 7 * 86400 - 10 <= int(a["max-age"]) <= 7 * 86400
    assert "httponly" in a and a["samesite"] == "Lax" and a["path"] == "/"
    body = await (await client.get("/_gateway/api/session")).json()
    assert abs(parse_iso(body["session"]["expires_at"]) - time.time() - 7 * 86400) < 10


async def test_https_cookie_is_host_prefixed_and_secure(cfg, gateway):
    client = await gateway(cfg(public_url="https://gw.example.com"))
    resp = await client.post("/_gateway/api/login",
                             json={"username": "alice", "password": "alice-pw"})
    assert resp.status == 200
    host_name = "__Host-" + COOKIE
    a = _session_cookie(resp, host_name)
    assert "secure" in a and "httponly" in a
    assert a["path"] == "/" and "domain" not in a and a["samesite"] == "Lax"
    assert not any(l.startswith(COOKIE + "=") for l in resp.headers.getall("Set-Cookie"))
    token = a[host_name]
    # Only the prefixed name counts: a cookie tossed in from a sibling subdomain
    # under the plain name is ignored.
    r = await send(client, "GET", "/_gateway/api/session", token=token)
    assert (r.status, r.json()["error"]) == (401, "SESSION_NOT_FOUND")
    r = await send(client, "GET", "/_gateway/api/session", token=token, cookie_name=host_name)
    assert r.status == 200
    # Logout clears the prefixed cookie with the same attributes.
    r = await send(client, "POST", "/_gateway/logout", token=token, cookie_name=host_name,
                   json={})
    assert r.status == 303
    cleared = cookie_attrs(r.set_cookies()[host_name])
    assert cleared.get("max-age") == "0" and "secure" in cleared and cleared["path"] == "/"


async def test_https_form_cookie_is_secure_too(cfg, gateway):
    client = await gateway(cfg(public_url="https://gw.example.com"))
    resp, _ = await login_page(client)
    form = [l for l in resp.headers.getall("Set-Cookie") if l.startswith("gateway_form=")]
    assert form and "secure" in cookie_attrs(form[0])


# -- idle and absolute expiry ------------------------------------------------------------

async def test_activity_slides_the_idle_window_and_inactivity_ends_it(cfg, gateway,
                                                                     store_settings):
    clock = Clock()
    client = await gateway(cfg(session={**store_settings, "idle_timeout": "10s",
                                        "touch_interval": "1s"}), clock=clock)
    token = await login(client)
    for _ in range(8):               # 16 s: longer than the idle timeout, kept alive by use
        r = await send(client, "GET", "/work", token=token)
        assert r.status == 200, r
        clock.advance(2)
    clock.advance(10)
    r = await send(client, "GET", "/work", token=token)
    assert (r.status, r.json()["error"]) == (401, "SESSION_EXPIRED")
    status, body = await session_status(client, token)
    assert (status, body["error"]) == (401, "SESSION_EXPIRED")


async def test_a_session_ends_at_the_idle_timeout_not_before(cfg, gateway, store_settings):
    """Between idle_timeout - touch_interval and idle_timeout: never late."""
    clock = Clock()
    client = await gateway(cfg(session={**store_settings, "idle_timeout": "10s",
                                        "touch_interval": "1s"}), clock=clock)
    token = await login(client)
    clock.advance(8.9)
    assert (await send(client, "GET", "/work", token=token)).status == 200
    clock.advance(10)       # 10 s after the last request that was written down
    assert (await send(client, "GET", "/work", token=token)).status == 401


async def test_absolute_timeout_ends_the_session_despite_activity(cfg, gateway, store_settings):
    clock = Clock()
    client = await gateway(cfg(session={**store_settings, "idle_timeout": "10s",
                                        "absolute_timeout": "30s", "touch_interval": "1s"}),
                           clock=clock)
    token = await login(client)
    seen: list[tuple[float, int]] = []
    for step in range(17):
        r = await send(client, "GET", "/work", token=token)
        seen.append((step * 2.5, r.status))
        clock.advance(2.5)
    # Alive well past the idle timeout (activity counted)...
    assert all(status == 200 for at, status in seen if at < 30), seen
    # ...and dead at the absolute limit whatever the activity.
    assert all(status == 401 for at, status in seen if at >= 30), seen
    r = await send(client, "GET", "/work", token=token)
    assert r.json()["error"] == "SESSION_EXPIRED"
    # A browser is told the session ran out (not that it was idle).
    client.session.cookie_jar.update_cookies({COOKIE: token})
    resp = await client.get("/work", headers={"Accept": "text/html"})
    assert resp.status == 200 and resp.url.path == "/_gateway/login"
    assert EXPIRED in await resp.text()


async def test_remember_me_has_its_own_limits(cfg, gateway):
    clock = Clock()
    client = await gateway(cfg(session={"idle_timeout": "10s", "touch_interval": "1s",
                                        "remember_me_timeout": "30s",
                                        "remember_me_idle_timeout": "1h"}), clock=clock)
    normal = await api_login(client)
    remembered = await api_login(client, remember=True)
    clock.advance(13)
    # Idle for longer than idle_timeout: only the remembered one survives.
    assert (await session_status(client, normal))[1]["error"] == "SESSION_EXPIRED"
    status, body = await session_status(client, remembered)
    assert status == 200
    assert body["session"]["remember"] is True
    clock.advance(19)
    # Its own absolute limit, remember_me_timeout, still ends it.
    r = await send(client, "GET", "/work", token=remembered)
    assert (r.status, r.json()["error"]) == (401, "SESSION_EXPIRED")


async def test_expired_browser_navigation_clears_the_cookie_and_explains(cfg, gateway):
    clock = Clock()
    client = await gateway(cfg(session={"idle_timeout": "10s", "touch_interval": "1s"}),
                           clock=clock)
    await login(client)
    clock.advance(10.5)
    resp = await client.get("/docs/page?x=1", headers={"Accept": "text/html"},
                            allow_redirects=False)
    assert resp.status == 302
    location = urlsplit(resp.headers["Location"])
    assert location.path == "/_gateway/login"
    assert parse_qs(location.query) == {"rd": ["/docs/page?x=1"]}
    assert cookie_attrs(_set_cookie_line(resp, COOKIE)).get("max-age") == "0"
    assert jar_token(client) is None
    _, page = await login_page(client)
    assert INACTIVITY in page
    _, page = await login_page(client)
    assert INACTIVITY not in page


def _set_cookie_line(resp: Any, name: str) -> str:
    return next(l for l in resp.headers.getall("Set-Cookie") if l.startswith(name + "="))


# -- fixation and revocation ---------------------------------------------------------

@pytest.mark.parametrize("how", ["api", "form"])
async def test_a_new_login_gets_a_new_session_and_ends_the_old_one(cfg, gateway, how):
    client = await gateway(cfg())
    first = await login(client)
    first_sid = (await (await client.get("/_gateway/api/session")).json())["session"]["id"]
    if how == "api":
        second = await login(client)
    else:
        assert (await form_login(client)).status == 303
        second = jar_token(client)
    assert second and second != first
    status, body = await session_status(client, second)
    assert status == 200 and body["session"]["id"] != first_sid
    status, body = await session_status(client, first)
    assert (status, body["error"]) == (401, "SESSION_REVOKED")


async def test_a_planted_cookie_is_replaced_at_login(cfg, gateway):
    """Fixation: a victim carrying the attacker's cookie signs in; the attacker gains nothing."""
    client = await gateway(cfg())
    planted = await api_login(client, "alice", "alice-pw")      # attacker's own session
    client.session.cookie_jar.update_cookies({COOKIE: planted})
    victim_token = await login(client, "Admin", "admin-pw")
    assert victim_token != planted
    r = await send(client, "GET", "/admin", token=planted)
    assert r.status == 401
    status, body = await session_status(client, victim_token)
    assert body["user"]["username"] == "Admin"


async def test_max_per_user_revokes_the_oldest(cfg, gateway, store_settings):
    client = await gateway(cfg(session={**store_settings, "max_per_user": 2}))
    admin = await api_login(client, "Admin", "admin-pw")
    t1 = await api_login(client)
    t2 = await api_login(client)
    t3 = await api_login(client)
    status, body = await session_status(client, t1)
    assert (status, body["error"]) == (401, "SESSION_REVOKED")
    for token in (t2, t3, admin):
        assert (await session_status(client, token))[0] == 200
    # The pushed-out browser is told why.
    client.session.cookie_jar.update_cookies({COOKIE: t1})
    resp = await client.get("/x", headers={"Accept": "text/html"})
    assert resp.url.path == "/_gateway/login"
    assert TOO_MANY in await resp.text()


async def test_a_revocation_on_one_worker_reaches_the_others(cfg, gateway, redis_server):
    """Workers share Redis; one that has the session cached must still drop it at once."""
    config = cfg(session={"store": "redis", "redis": {"url": redis_server.url,
                                                      "key_prefix": f"t{uuid.uuid4().hex[:12]}"}})
    a, b = await gateway(config), await gateway(config)
    cache = b.server.app[GATEWAY].sessions.cache
    for _ in range(100):                          # b's revocation feed is subscribed
        if cache.enabled:
            break
        await asyncio.sleep(0.02)
    assert cache.enabled
    token = await api_login(a)
    for _ in range(2):
        assert (await send(b, "GET", "/x", token=token)).status == 200
    r = await send(a, "POST", "/_gateway/logout", token=token, json={})
    assert r.status == 303
    deadline = time.monotonic() + 1.0              # well under session.cache_ttl (5s)
    while (r := await send(b, "GET", "/x", token=token)).status == 200:
        assert time.monotonic() < deadline, "b still serves a revoked session"
        await asyncio.sleep(0.02)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")


# -- forged and broken cookies ------------------------------------------------------------

def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forge(kind: str, token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    header, payload, sig = token.split(".")
    now = int(time.time())
    if kind == "tampered-signature":
        return f"{header}.{payload}.{sig[:10]}{'A' if sig[10] != 'A' else 'B'}{sig[11:]}"
    if kind == "tampered-payload":
        return f"{header}.{_b64({**claims, 'sub': 'admin'})}.{sig}"
    if kind == "tampered-exp":
        return f"{header}.{_b64({**claims, 'exp': now + 10**8})}.{sig}"
    if kind == "expired":
        return jwt.encode({**claims, "exp": now - 5}, SECRET, algorithm="HS256")
    if kind == "alg-none":
        return jwt.encode(claims, None, algorithm="none")
    if kind == "alg-None-manual":
        return f"{_b64({'alg': 'None', 'typ': 'JWT'})}.{payload}."
    if kind == "alg-none-with-signature":
        return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.{sig}"
    if kind == "wrong-key":
        return jwt.encode(claims, "another-secret-0123456789abcdef-012345", algorithm="HS256")
    if kind == "HS512":
        return jwt.encode(claims, SECRET, algorithm="HS512")
    if kind == "ES256":
        return jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    if kind == "truncated":
        return token[:-12]
    if kind == "no-signature":
        return f"{header}.{payload}."
    if kind == "two-parts":
        return f"{header}.{payload}"
    if kind == "four-parts":
        return f"{token}.{sig}"
    if kind == "missing-sid":
        return jwt.encode({k: v for k, v in claims.items() if k != "sid"}, SECRET, algorithm="HS256")
    if kind == "missing-exp":
        return jwt.encode({k: v for k, v in claims.items() if k != "exp"}, SECRET, algorithm="HS256")
    if kind == "sid-not-a-string":
        return jwt.encode({**claims, "sid": 12345}, SECRET, algorithm="HS256")
    if kind == "empty-sub":
        return jwt.encode({**claims, "sub": ""}, SECRET, algorithm="HS256")
    if kind == "not-yet-valid":
        return jwt.encode({**claims, "nbf": now + 3600}, SECRET, algorithm="HS256")
    if kind == "garbage":
        return "garbage"
    if kind == "dots":
        return "a.b.c"
    if kind == "long":
        return "A" * 3000
    if kind == "base64-junk":
        return "eyJhbGciOiJIUzI1NiJ9.!!!!.????"
    raise AssertionError(kind)


FORGERIES = [
    ("tampered-signature", "JWT_INVALID"), ("tampered-payload", "JWT_INVALID"),
    ("tampered-exp", "JWT_INVALID"), ("expired", "SESSION_EXPIRED"),
    ("alg-none", "JWT_INVALID"), ("alg-None-manual", "JWT_INVALID"),
    ("alg-none-with-signature", "JWT_INVALID"), ("wrong-key", "JWT_INVALID"),
    ("HS512", "JWT_INVALID"), ("ES256", "JWT_INVALID"), ("truncated", "JWT_INVALID"),
    ("no-signature", "JWT_INVALID"), ("two-parts", "JWT_INVALID"),
    ("four-parts", "JWT_INVALID"), ("missing-sid", "JWT_INVALID"),
    ("missing-exp", "JWT_INVALID"), ("sid-not-a-string", "JWT_INVALID"),
    ("empty-sub", "JWT_INVALID"), ("not-yet-valid", "JWT_INVALID"),
    ("garbage", "JWT_INVALID"), ("dots", "JWT_INVALID"), ("long", "JWT_INVALID"),
    ("base64-junk", "JWT_INVALID"),
]


# The HS512 forgery signs with our 39-byte test secret on purpose.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("kind, code", FORGERIES)
async def test_forged_or_broken_cookie_is_refused(cfg, gateway, kind, code):
    client = await gateway(cfg())
    token = forge(kind, await api_login(client))
    status, body = await session_status(client, token)
    assert (status, body["error"]) == (401, code)
    r = await send(client, "GET", "/x", token=token)
    assert (r.status, r.json()["error"]) == (401, code)
    r = await send(client, "GET", "/admin", token=token, accept="text/html")
    assert r.status == 302 and r.headers["Location"].startswith("/_gateway/login?")
    assert cookie_attrs(r.set_cookies()[COOKIE]).get("max-age") == "0"


async def test_a_validly_signed_cookie_for_another_user_names_no_session(cfg, gateway):
    """Even with the secret, a session id is bound to the user it was made for."""
    client = await gateway(cfg())
    token = await api_login(client)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    for sub in ("admin", "Admin"):
        forged = jwt.encode({**claims, "sub": sub}, SECRET, algorithm="HS256")
        status, body = await session_status(client, forged)
        assert status == 401 and body["error"] in ("SESSION_EXPIRED", "SESSION_NOT_FOUND")
        r = await send(client, "GET", "/admin", token=forged)
        assert r.status == 401


async def test_a_validly_signed_cookie_for_an_unknown_session(cfg, gateway):
    client = await gateway(cfg())
    forged = jwt.encode({"sid": "made-up", "sub": "alice", "iat": int(time.time()),
                         "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    status, body = await session_status(client, forged)
    assert status == 401 and body["error"] in ("SESSION_EXPIRED", "SESSION_NOT_FOUND")


# -- no session on a protected path ---------------------------------------------------------

@pytest.mark.parametrize("method, accept", [
    ("GET", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("HEAD", "text/html"),
])
async def test_anonymous_browser_navigation_is_sent_to_login(cfg, gateway, method, accept):
    client = await gateway(cfg())
    r = await send(client, method, "/some/page?x=1&y=%2F", accept=accept)
    assert r.status == 302
    loc = urlsplit(r.headers["Location"])
    assert loc.path == "/_gateway/login" and not loc.netloc
    assert parse_qs(loc.query) == {"rd": ["/some/page?x=1&y=%2F"]}
    assert r.headers["Cache-Control"] == "no-store"
    assert COOKIE not in r.set_cookies()


@pytest.mark.parametrize("method, accept", [
    ("GET", "application/json"),
    ("GET", "*/*"),
    ("GET", "application/json, text/html"),
    ("POST", "text/html"),
    ("DELETE", "text/html"),
    ("GET", ""),
])
async def test_anonymous_api_request_gets_401_json(cfg, gateway, method, accept):
    client = await gateway(cfg())
    r = await send(client, method, "/api/things", accept=accept)
    assert r.status == 401
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["error"] == "SESSION_NOT_FOUND"


async def test_login_then_follow_rd_back(cfg, gateway):
    client = await gateway(cfg())
    r = await send(client, "GET", "/reports/q?year=2024", accept="text/html")
    rd = parse_qs(urlsplit(r.headers["Location"]).query)["rd"][0]
    resp = await form_login(client, rd=rd)
    assert resp.headers["Location"] == "/reports/q?year=2024"
    resp = await client.get(resp.headers["Location"])
    assert (await resp.json())["path"] == "/reports/q?year=2024"


# -- assertion and machine endpoints ---------------------------------------------------------

async def test_jwks_and_the_assertion_verify(cfg, gateway):
    client = await gateway(cfg())
    await login(client, "Admin", "admin-pw")
    keys = await (await client.get("/_gateway/jwks.json")).json()
    assert len(keys["keys"]) == 1
    jwk = keys["keys"][0]
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    assert "d" not in jwk                       # never the private part
    body = await (await client.get("/x")).json()
    headers = seen_headers(body)
    assertion = headers["x-auth-assertion"]
    assert len(assertion) == 1
    assert jwt.get_unverified_header(assertion[0])["kid"] == jwk["kid"]
    key = jwt.PyJWK(jwk).key
    claims = jwt.decode(assertion[0], key, algorithms=["ES256"], audience="app",
                        issuer="http://127.0.0.1:8080")
    assert claims["sub"] == "Admin"
    assert claims["roles"] == ["admin", "user"]
    assert claims["email"] == "admin@example.com"
    assert claims["sid"] == headers["x-auth-session"][0]
    assert claims["exp"] - claims["iat"] == 60
    assert abs(claims["iat"] - time.time()) < 5
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(assertion[0], key, algorithms=["ES256"], audience="another-app")
    # A different key does not verify it.
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(assertion[0], other, algorithms=["ES256"], audience="app")


async def test_assertion_key_survives_a_restart(cfg, gateway):
    config = cfg()
    first = await (await (await gateway(config)).get("/_gateway/jwks.json")).json()
    second = await (await (await gateway(config)).get("/_gateway/jwks.json")).json()
    assert first == second


async def test_healthz(cfg, gateway):
    client = await gateway(cfg())
    resp = await client.get("/_gateway/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"


async def test_readyz(cfg, gateway, store_settings):
    client = await gateway(cfg(session=store_settings))
    resp = await client.get("/_gateway/readyz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"
