"""Where a user may be sent after signing in: ``safe_redirect`` and the login flow."""

from __future__ import annotations

import re

import pytest

from gateway.web.redirects import safe_redirect

PUBLIC = "https://gw.example.com"
ALLOWED = ("app.example.com", "wiki.example.com:8443")

ALLOWED_TARGETS = [
    "/",
    "/x",
    "/x?y=1#z",
    "/a/b/c?q=%2F%2Fevil.com",          # an encoded slash in the *query* is harmless...
    "/reports/2024/q1.pdf",
    "/.well-known/thing",
    "/x;jsessionid=1",
    "https://gw.example.com/x?y=1",     # full URL on the public host
    "https://GW.example.com/x",
    "https://app.example.com/dashboard",   # a configured host
    "http://app.example.com/",
    "https://APP.EXAMPLE.COM/x",
    "https://wiki.example.com:8443/page",  # a configured host:port
]

REJECTED_TARGETS = [
    "//evil.com",
    "///evil.com",
    "////evil.com/x",
    "/\\evil.com",
    "\\\\evil.com",
    "/%2F%2Fevil.com",
    "/%2f/evil.com",
    "/%252F%252Fevil.com",               # double-encoded
    "%2F%2Fevil.com",
    "/%5Cevil.com",
    "/%5cevil.com",
    "\t//evil.com",
    "/\t/evil.com",
    "/%09/evil.com",
    "\n//evil.com",
    " /x",
    "/x y",
    "/x\r\nSet-Cookie: a=1",
    "/x%0d%0aSet-Cookie:%20a=1",
    "/\x00/evil.com",
    "https://evil.com",
    "https://evil.com/",
    "http://evil.com/x",
    "HTTP://evil.com",
    "HtTpS://evil.com",
    "https:evil.com",
    "https:/evil.com",
    "https:///evil.com",
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    "javascript://%0aalert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "ftp://gw.example.com/x",
    "http://user@gw.example.com/x",      # userinfo on the public host
    "https://user:pw@gw.example.com/x",
    "https://gw.example.com@evil.com/",
    "https://gw.example.com.evil.com/",
    "https://gw.example.com:8080/x",     # the public host on another port
    "http://gw.example.com/x",           # the public host on another scheme
    "https://evilgw.example.com/",
    "https://app.example.com.evil.com/",
    "https://app.example.com:99999/",    # a broken port
    "https://wiki.example.com/page",     # allowed only on :8443
    "https://[::1]/",
    "evil.com",
    "x",
    "?x=1",
    "#frag",
    "",
    None,
    "/" + "a" * 3000,                    # very long
]


@pytest.mark.parametrize("target", ALLOWED_TARGETS)
def test_allowed_targets_are_kept(target):
    assert safe_redirect(target, PUBLIC, ALLOWED) == target


@pytest.mark.parametrize("target", REJECTED_TARGETS)
def test_rejected_targets_become_root(target):
    assert safe_redirect(target, PUBLIC, ALLOWED) == "/"


def test_no_configured_hosts_means_only_this_site():
    assert safe_redirect("https://app.example.com/x", PUBLIC, ()) == "/"
    assert safe_redirect("https://gw.example.com/x", PUBLIC, ()) == "https://gw.example.com/x"


def test_public_url_with_a_port():
    public = "http://127.0.0.1:8080"
    assert safe_redirect("http://127.0.0.1:8080/x", public, ()) == "http://127.0.0.1:8080/x"
    assert safe_redirect("http://127.0.0.1/x", public, ()) == "/"
    assert safe_redirect("http://127.0.0.1:8081/x", public, ()) == "/"


def test_every_kept_target_stays_on_site():
    """Whatever is kept is a same-site path or names an allowed host: check the table's claim."""
    hosts = {"gw.example.com", "app.example.com", "wiki.example.com:8443"}
    for target in [*ALLOWED_TARGETS, *[t for t in REJECTED_TARGETS if t]]:
        out = safe_redirect(target, PUBLIC, ALLOWED)
        if out.startswith("/"):
            assert not out.startswith("//") and "\\" not in out
        else:
            m = re.match(r"^https?://([^/?#@]+)(?:[/?#]|$)", out, re.IGNORECASE)
            assert m and m.group(1).lower() in hosts, out


# -- end to end ------------------------------------------------------------------

async def _login_with_rd(client, rd: str):
    from authkit import csrf_of
    page = await (await client.get("/_gateway/login", params={"rd": rd})).text()
    return await client.post("/_gateway/login", allow_redirects=False,
                             data={"username": "alice", "password": "alice-pw", "rd": rd,
                                   "csrf_token": csrf_of(page)})


@pytest.mark.parametrize("rd", ["//evil.com", "https://evil.com/steal", "/\\evil.com",
                                "javascript:alert(1)", "/%2F%2Fevil.com", "\t//evil.com"])
async def test_login_with_a_hostile_rd_lands_on_root(upstream, make_config, gateway, rd):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    resp = await _login_with_rd(client, rd)
    assert resp.status == 303
    assert resp.headers["Location"] == "/"
    assert "gateway_session" in resp.cookies     # still signed in, just sent home


async def test_login_with_an_allowed_host_rd(upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/")),
                                       allowed_redirect_hosts=["app.example.com"]))
    resp = await _login_with_rd(client, "https://app.example.com/home?x=1")
    assert resp.headers["Location"] == "https://app.example.com/home?x=1"
    resp = await _login_with_rd(client, "https://other.example.com/")
    assert resp.headers["Location"] == "/"
