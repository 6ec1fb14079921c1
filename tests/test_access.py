"""Access control end to end: path tricks against rules and public paths,
identity-header spoofing, and which cookies reach the upstream."""

from __future__ import annotations

from typing import Any

import pytest

from authkit import api_login, send
from conftest import seen_headers
from gateway.proxy.headers import fold

IDENTITY = ("x-auth-user", "x-auth-email", "x-auth-name", "x-auth-roles", "x-auth-session",
            "x-auth-assertion")


@pytest.fixture
async def gw(upstream, make_config, gateway):
    """A gateway with public /static/ and /favicon.ico, and /admin for role admin."""
    return await gateway(make_config(str(upstream.make_url("/"))))


# (raw request path, the canonical path the upstream must see, or None for 400)
ADMIN_TRICKS = [
    ("/admin", "/admin"),
    ("/static/../admin", "/admin"),
    ("/static/%2e%2e/admin", "/admin"),
    ("/static/%2E%2E/admin", "/admin"),
    ("/static/.%2e/admin", "/admin"),
    ("/static/./../admin", "/admin"),
    ("/static%2f..%2fadmin", None),
    ("/static/..%2fadmin", None),
    ("/static/%2e%2e%2fadmin", None),
    ("/static/..%5cadmin", None),
    ("/static/..\\admin", None),
    ("//admin", "/admin"),
    ("///admin/x", "/admin/x"),
    ("/ADMIN", "/ADMIN"),
    ("/Admin/x", "/Admin/x"),
    ("/aDmIn/", "/aDmIn/"),
    ("/admin;x", None),                       # path parameters: see test_attacks.py
    ("/admin;jsessionid=1/users", None),
    ("/;/admin/x", None),
    ("/%3b/admin/x", None),
    ("/static/..;/admin", None),
    ("/static/.;/../admin", None),
    ("/./admin", "/admin"),
    ("/%61dmin", "/admin"),
    ("/%41DMIN/x", "/ADMIN/x"),
    ("/ad%6din/", "/admin/"),
    ("/admin%00", None),
    ("/admin%2f", None),
    ("/%2fadmin", None),
    ("/static/../../admin", None),
    ("/%2e%2e/admin", None),
    ("/admin.php", "/admin.php"),
    ("/administrator", "/administrator"),
    ("/favicon.ico/../admin", "/admin"),
    ("/admin/../admin/users", "/admin/users"),
]


@pytest.mark.parametrize("raw, canonical", ADMIN_TRICKS)
async def test_admin_path_tricks_never_reach_the_upstream_for_alice(gw, raw, canonical):
    token = await api_login(gw)
    r = await send(gw, "GET", raw, token=token)
    if canonical is None:
        assert r.status == 400, r
        assert r.json()["error"] == "BAD_REQUEST"
    else:
        assert r.status == 403, r
        assert r.json()["error"] == "FORBIDDEN"
    assert "headers" not in r.text            # not the upstream's echo


@pytest.mark.parametrize("raw, canonical", ADMIN_TRICKS)
async def test_admin_path_tricks_for_anonymous(gw, raw, canonical):
    r = await send(gw, "GET", raw)
    assert r.status == (400 if canonical is None else 401), r
    r = await send(gw, "GET", raw, accept="text/html")
    assert r.status == (400 if canonical is None else 302), r


@pytest.mark.parametrize("raw, canonical", [t for t in ADMIN_TRICKS if t[1]])
async def test_the_upstream_sees_exactly_the_path_that_was_judged(gw, raw, canonical):
    token = await api_login(gw, "Admin", "admin-pw")
    r = await send(gw, "GET", raw + "?q=1", token=token)
    assert r.status == 200, r
    assert r.json()["path"] == canonical + "?q=1"


# (raw path, what the upstream sees): public paths pass without a session.
PUBLIC_PATHS = [
    ("/static/app.css", "/static/app.css"),
    ("/static/", "/static/"),
    ("/static/a/./b/../c.js", "/static/a/c.js"),
    ("//static/x", "/static/x"),
    ("/admin/../static/x", "/static/x"),
    ("/static/%2e%2e/static/x", "/static/x"),
    ("/static/%252e%252e/admin", "/static/%252e%252e/admin"),   # %25 stays encoded
    ("/static/a%20b", "/static/a%20b"),
    ("/favicon.ico", "/favicon.ico"),
    ("/static/x?redirect=/admin", "/static/x?redirect=/admin"),
]


@pytest.mark.parametrize("raw, seen", PUBLIC_PATHS)
async def test_public_paths_pass_without_a_session(gw, raw, seen):
    r = await send(gw, "GET", raw, headers=[("X-Auth-User", "Admin"),
                                            ("X-Auth-Roles", "admin")])
    assert r.status == 200, r
    body = r.json()
    assert body["path"] == seen
    headers = seen_headers(body)
    assert not any(fold(name) in IDENTITY for name in headers), headers


@pytest.mark.parametrize("raw", [
    "/static",               # the public entry is /static/ (a folder), not /static
    "/STATIC/app.css",       # public entries are case-sensitive: a mismatch denies
    "/Static/app.css",
    "/favicon.ico/x",        # /favicon.ico is one exact path
    "/favicon.icox",
    "/static/../private",
    "/%73tatic/../private",
    "/static/%2e%2e/private",
    "/x/static/app.css",
])
async def test_near_misses_of_public_paths_need_a_session(gw, raw):
    r = await send(gw, "GET", raw)
    assert r.status == 401, r
    assert r.json()["error"] == "SESSION_NOT_FOUND"


@pytest.mark.parametrize("raw", ["/static/../_gateway/healthz", "/static/%2e%2e/_gateway/api/session",
                                 "//_gateway/healthz", "/x/../_gateway"])
@pytest.mark.parametrize("signed_in", [False, True])
async def test_paths_resolving_into_the_gateway_prefix_reach_nobody(gw, raw, signed_in):
    """Not the gateway's page (the router never saw that path), nor the upstream's."""
    token = await api_login(gw) if signed_in else None
    r = await send(gw, "GET", raw, token=token)
    assert r.status == 404, r
    assert r.json()["error"] == "NOT_FOUND"


async def test_public_paths_also_work_with_a_session_but_get_no_identity(gw):
    token = await api_login(gw)
    r = await send(gw, "GET", "/static/app.css", token=token)
    assert r.status == 200
    headers = seen_headers(r.json())
    # A public path is served anonymously: nothing to spoof, nothing to leak.
    assert not any(fold(name) in IDENTITY for name in headers), headers
    assert "cookie" not in headers


# -- identity header spoofing -------------------------------------------------------------

SPOOFS = [
    [("X-Auth-User", "Admin")],
    [("x-auth-user", "Admin")],
    [("X-AUTH-USER", "Admin")],
    [("X_Auth_User", "Admin")],
    [("x_auth_user", "Admin")],
    [("X.Auth.User", "Admin")],
    [("X-Auth_User", "Admin")],
    [("X-Auth-User", "Admin"), ("X-Auth-User", "root")],
    [("X-Auth-User", "Admin"), ("x_auth_user", "root"), ("X.Auth.User", "toor")],
    [("X-Auth-Roles", "admin")],
    [("X_Auth_Roles", "admin,user")],
    [("X-Auth-Assertion", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJBZG1pbiJ9.")],
    [("X-Auth-Session", "someone-elses")],
    [("X-Auth-Email", "admin@example.com"), ("X-Auth-Name", "Ada Admin")],
    [("Connection", "X-Auth-User"), ("X-Auth-User", "Admin")],
]


def identity_view(body: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Every header the upstream got that a lenient app could read as ours, by folded name."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, value in body["headers"]:
        if fold(name) in IDENTITY or fold(name) == "x-remote-user":
            out.setdefault(fold(name), []).append((name, value))
    return out


@pytest.mark.parametrize("spoof", SPOOFS, ids=lambda s: "+".join(n for n, _ in s))
async def test_spoofed_identity_headers_never_reach_the_upstream(gw, spoof):
    token = await api_login(gw)
    r = await send(gw, "GET", "/page", token=token, headers=spoof)
    assert r.status == 200, r
    got = identity_view(r.json())
    assert set(got) == set(IDENTITY)
    for folded, entries in got.items():
        assert len(entries) == 1, entries                 # ours only, once
        assert entries[0][0].lower() == folded            # in our spelling
    assert got["x-auth-user"][0][1] == "alice"
    assert got["x-auth-roles"][0][1] == "user"
    assert got["x-auth-email"][0][1] == "alice@example.com"
    assert got["x-auth-name"][0][1] == "Alice"
    assert got["x-auth-session"][0][1] != "someone-elses"
    assert got["x-auth-assertion"][0][1].count(".") == 2
    assert not got["x-auth-assertion"][0][1].startswith("eyJhbGciOiJub25lIn0")


@pytest.mark.parametrize("spoof", SPOOFS[:6], ids=lambda s: "+".join(n for n, _ in s))
async def test_spoofed_headers_do_not_authenticate(gw, spoof):
    r = await send(gw, "GET", "/page", headers=spoof)
    assert r.status == 401


async def test_a_spoofed_role_does_not_open_admin(gw):
    token = await api_login(gw)
    r = await send(gw, "GET", "/admin", token=token,
                   headers=[("X-Auth-Roles", "admin"), ("X_Auth_Roles", "admin"),
                            ("X-Auth-User", "Admin")])
    assert r.status == 403


async def test_custom_header_names_strip_custom_and_default_spellings(upstream, make_config,
                                                                      gateway):
    client = await gateway(make_config(str(upstream.make_url("/")),
                                       headers={"user": "X-Remote-User"}))
    token = await api_login(client)
    r = await send(client, "GET", "/page", token=token,
                   headers=[("X-Remote-User", "Admin"), ("X_Remote_User", "Admin"),
                            ("x.remote.user", "Admin"), ("X-Auth-User", "Admin"),
                            ("X_Auth_User", "Admin")])
    assert r.status == 200
    got = identity_view(r.json())
    assert got["x-remote-user"] == [("X-Remote-User", "alice")]
    assert "x-auth-user" not in got                  # the default name is not ours here, but
    assert got["x-auth-roles"] == [("X-Auth-Roles", "user")]   # still never the client's
    # Anonymous on a public path: neither spelling gets through.
    r = await send(client, "GET", "/static/x", headers=[("X-Remote-User", "Admin"),
                                                        ("X-Auth-User", "Admin")])
    assert identity_view(r.json()) == {}


# -- cookies -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/page", "/static/x"])
async def test_the_session_cookie_never_reaches_the_upstream(gw, path):
    token = await api_login(gw)
    r = await send(gw, "GET", path, headers=[
        ("Cookie", f"theme=dark; gateway_session={token}; lang=en; gateway_form=abc; "
                   "gateway_notice=idle")])
    assert r.status == 200
    headers = seen_headers(r.json())
    assert headers["cookie"] == ["theme=dark; lang=en"]
    assert token not in str(r.json())
    if path == "/page":
        assert headers["x-auth-user"] == ["alice"]


async def test_only_the_session_cookie_means_no_cookie_header_upstream(gw):
    token = await api_login(gw)
    r = await send(gw, "GET", "/page", token=token)
    assert r.status == 200
    assert "cookie" not in seen_headers(r.json())


async def test_app_cookies_are_forwarded_untouched(gw):
    token = await api_login(gw)
    value = 'JSESSIONID=abc123; csrftoken="q=1"; a=b=c'
    r = await send(gw, "GET", "/page", headers=[("Cookie", f"{value}; gateway_session={token}")])
    assert r.status == 200
    assert seen_headers(r.json())["cookie"] == [value]


async def test_https_host_cookie_is_stripped_too(upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/")),
                                       public_url="https://gw.example.com"))
    token = await api_login(client)
    r = await send(client, "GET", "/page",
                   headers=[("Cookie", f"a=1; __Host-gateway_session={token}")])
    assert r.status == 200
    assert seen_headers(r.json())["cookie"] == ["a=1"]


async def test_a_session_cookie_in_a_second_cookie_header_is_stripped_as_well(gw):
    token = await api_login(gw)
    r = await send(gw, "GET", "/static/x", headers=[("Cookie", "a=1"),
                                                    ("Cookie", f"gateway_session={token}; b=2")])
    assert r.status == 200
    assert token not in str(r.json())
    assert seen_headers(r.json())["cookie"] == ["a=1", "b=2"]
