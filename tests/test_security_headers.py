"""Security headers on every answer the gateway gives itself (every route under
the prefix, with and without a session, and the proxy's own refusals and
errors), and none added to an upstream's answer."""

from __future__ import annotations

import re
from typing import Any

import pytest

from authkit import api_login, send

OWN = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
       "X-Frame-Options": "DENY"}


def assert_secured(r: Any, what: str) -> None:
    for name, value in OWN.items():
        assert r.headers.get(name) == value, (what, r.status, name)
    assert "camera=()" in r.headers.get("Permissions-Policy", ""), (what, r.status)
    csp = r.headers.get("Content-Security-Policy", "")
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, (what, r.status)


async def test_every_gateway_route_and_error_carries_them(upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    alice = await api_login(client)
    paths = sorted({re.sub(r"\{[^}]+\}", "x", r.canonical)
                    for r in client.app.router.resources() if r.canonical.startswith("/_gateway")},
                   key=lambda p: ("logout" in p or "revoke" in p, p))   # those sign her out
    assert len(paths) > 20
    for path in paths:
        for method in ("GET", "POST", "DELETE", "PUT"):
            for token in (None, alice):
                for accept in ("text/html", "application/json"):
                    r = await send(client, method, path, token=token, accept=accept,
                                   headers=[("Origin", "http://127.0.0.1:8080")])
                    assert_secured(r, f"{method} {path} {accept} {'signed in' if token else ''}")
    alice = await api_login(client)                 # the loop signed her out
    for method, path, token, accept, status in (
            ("GET", "/private", None, "text/html", 302),
            ("GET", "/private", None, "application/json", 401),
            ("GET", "/admin/x", alice, "text/html", 403),
            ("GET", "/%zz", alice, "text/html", 400)):
        r = await send(client, method, path, token=token, accept=accept)
        assert r.status == status
        assert_secured(r, path)


async def test_an_upstream_answer_is_the_upstream_s_own(upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    r = await send(client, "GET", "/static/app.css")              # public: no sign-in
    assert r.status == 200
    assert not {"Permissions-Policy", "Referrer-Policy", "X-Frame-Options"} & set(r.headers)


async def test_the_error_page_when_the_upstream_is_down_carries_them(make_config, gateway):
    client = await gateway(make_config("http://127.0.0.1:9"))
    alice = await api_login(client)
    r = await send(client, "GET", "/x", token=alice, accept="text/html")
    assert r.status == 502
    assert_secured(r, "502")


@pytest.mark.parametrize("public_url, settings, expected", [
    ("https://gw.example", {}, "max-age=31536000"),
    ("https://gw.example", {"hsts_max_age": "1d", "hsts_include_subdomains": True},
     "max-age=86400; includeSubDomains"),
    ("https://gw.example", {"hsts_max_age": "0s"}, None),
    ("http://127.0.0.1:8080", {}, None),
])
async def test_strict_transport_security_only_over_https(make_config, gateway, public_url,
                                                         settings, expected):
    client = await gateway(make_config(public_url=public_url, security_headers=settings))
    r = await send(client, "GET", "/_gateway/login", accept="text/html")
    assert r.headers.get("Strict-Transport-Security") == expected


async def test_a_form_posted_with_origin_null_is_ours_only_when_the_browser_says_so(
        make_config, gateway):
    """What no-referrer makes browsers send with the gateway's own forms; a
    sandboxed frame on another site sends Origin: null too, but cross-site."""
    from authkit import csrf_of
    client = await gateway(make_config())
    page = await send(client, "GET", "/_gateway/login", accept="text/html")
    form_cookie = page.set_cookies()["gateway_form"].split(";", 1)[0]
    fields = {"csrf_token": csrf_of(page.text), "username": "alice", "password": "alice-pw"}
    for site, status in (("cross-site", 403), ("same-origin", 303)):
        r = await send(client, "POST", "/_gateway/login", accept="text/html", data=fields,
                       headers=[("Cookie", form_cookie), ("Origin", "null"),
                                ("Sec-Fetch-Site", site)])
        assert r.status == status, site
