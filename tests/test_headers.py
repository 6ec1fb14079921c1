"""Header functions: pure tables of what goes upstream and what comes back."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.config import IdentityHeaders
from gateway.proxy.headers import (client_ip, connection_tokens, cookie_key, cookie_value,
                             private_cache_control,
                             downstream_response_headers, fold, safe_header_value,
                             strip_cookie, upstream_request_headers)

LOCAL = (ipaddress.ip_network("127.0.0.1/32"),)
PROXIES = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("10.0.0.0/8"),
           ipaddress.ip_network("::1/128"))
STRIP = frozenset(fold(n) for n in IdentityHeaders().names())
OWN_COOKIES = frozenset({"gateway_session", "gateway_form", "gateway_notice"})
OWN_KEYS = frozenset(cookie_key(c) for c in OWN_COOKIES | {"__Host-gateway_session"})


def outgoing(pairs: list[tuple[str, str]], *, peer: str = "192.0.2.7", client: str | None = None,
             trusted: tuple[Any, ...] = (), identity: dict[str, str] | None = None,
             upstream_host: str | None = None, scheme: str = "http",
             host: str = "gw.example") -> CIMultiDict[str]:
    return upstream_request_headers(
        CIMultiDict(pairs), peer=peer, client=client or peer, scheme=scheme, host=host,
        trusted=trusted, strip=STRIP, drop_cookies=OWN_COOKIES, identity=identity,
        upstream_host=upstream_host)


def names(headers: CIMultiDict[str]) -> set[str]:
    return {fold(k) for k in headers}


# -- hop-by-hop -------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding",
    "Upgrade", "Proxy-Authorization", "Proxy-Authenticate", "keep-alive", "TRANSFER-ENCODING",
])
def test_request_hop_by_hop_removed(name: str) -> None:
    out = outgoing([(name, "something"), ("X-Kept", "1")])
    assert fold(name) not in names(out)
    assert out["X-Kept"] == "1"


@pytest.mark.parametrize("connection, dropped", [
    ("close, X-Foo", {"x-foo"}),
    ("X-Foo, X-Bar", {"x-foo", "x-bar"}),
    ("x-foo", {"x-foo"}),
    ("keep-alive,X-Foo ,  X-Bar", {"x-foo", "x-bar"}),
    ("X_Foo", {"x-foo"}),
])
def test_request_connection_named_headers_removed(connection: str, dropped: set[str]) -> None:
    out = outgoing([("Connection", connection), ("X-Foo", "1"), ("X-Bar", "2"),
                    ("X-Baz", "3")])
    assert not dropped & names(out)
    assert "connection" not in names(out)
    assert out["X-Baz"] == "3"
    for name in {"x-foo", "x-bar"} - dropped:
        assert name in names(out)


def test_connection_tokens_across_repeated_headers() -> None:
    headers = CIMultiDict([("Connection", "close, X-A"), ("Connection", "X-B")])
    assert connection_tokens(headers) == {"close", "x-a", "x-b"}


# -- identity header spoofing -------------------------------------------------------

SPOOFS = [
    "X-Auth-User", "x-auth-user", "X-AUTH-USER", "X_Auth_User", "x_auth_user", "X.Auth.User",
    "X-Auth_User", "x.auth-user", "X-Auth-Email", "X_AUTH_EMAIL", "X-Auth-Name",
    "X-Auth-Roles", "x_auth_roles", "X-Auth-Session", "X.Auth.Session", "X-Auth-Assertion",
    "x_auth_assertion",
]


@pytest.mark.parametrize("name", SPOOFS)
def test_identity_spoofing_removed_anonymous(name: str) -> None:
    out = outgoing([(name, "admin"), ("X-Other", "kept")])
    assert not STRIP & names(out), out
    assert "admin" not in out.values()
    assert out["X-Other"] == "kept"


@pytest.mark.parametrize("name", SPOOFS)
def test_identity_spoofing_replaced_by_real_identity(name: str) -> None:
    identity = {"X-Auth-User": "alice", "X-Auth-Roles": "user", "X-Auth-Email": "a@x",
                "X-Auth-Name": "Alice", "X-Auth-Session": "sid", "X-Auth-Assertion": "jwt"}
    out = outgoing([(name, "admin"), (name, "admin2")], identity=identity)
    for key, value in identity.items():
        assert out.getall(key) == [value]
    assert [k for k in out if fold(k) == fold(name)] == [next(
        k for k in identity if fold(k) == fold(name))]
    assert "admin" not in out.values() and "admin2" not in out.values()


def test_identity_spoofing_repeated_and_mixed() -> None:
    out = outgoing([("X-Auth-User", "a"), ("x_auth_user", "b"), ("X.AUTH.USER", "c"),
                    ("X-Auth-Roles", "admin"), ("X-Auth-Roles", "root")],
                   identity={"X-Auth-User": "alice"})
    assert out.getall("X-Auth-User") == ["alice"]
    assert "x-auth-roles" not in names(out)


def test_custom_identity_header_names_are_stripped_too() -> None:
    strip = frozenset(fold(n) for n in ("Remote-User", *IdentityHeaders().names()))
    out = upstream_request_headers(
        CIMultiDict([("Remote_User", "admin"), ("REMOTE-USER", "root"), ("X-Auth-User", "x")]),
        peer="192.0.2.1", client="192.0.2.1", scheme="http", host="gw", trusted=(),
        strip=strip, drop_cookies=(), identity=None)
    assert not {"remote-user", "x-auth-user"} & names(out)


# -- cookies --------------------------------------------------------------------------

@pytest.mark.parametrize("cookie, expected", [
    ("a=1; gateway_session=tok; b=2", "a=1; b=2"),
    ("gateway_session=tok", None),
    ("gateway_session=tok; gateway_form=f; gateway_notice=n", None),
    ("a=1;gateway_session=tok;b=2", "a=1; b=2"),
    ("x_gateway_session=1; gateway_session_old=2", "x_gateway_session=1; gateway_session_old=2"),
    ("a=1; b=2", "a=1; b=2"),
    ("a=has=equals; gateway_session=t", "a=has=equals"),
    ("  gateway_session = tok ; a=1", "a=1"),
])
def test_gateway_cookie_removed(cookie: str, expected: str | None) -> None:
    out = outgoing([("Cookie", cookie)])
    assert out.get("Cookie") == expected


def test_gateway_cookie_removed_from_every_cookie_header() -> None:
    out = outgoing([("Cookie", "gateway_session=a"), ("Cookie", "x=1; gateway_session=b")])
    assert out.getall("Cookie") == ["x=1"]


def test_strip_cookie_names_are_exact() -> None:
    assert strip_cookie("A=1; a=2", {"a"}) == "A=1"


@pytest.mark.parametrize("header, name, expected", [
    ("a=1; gateway_session=tok", "gateway_session", "tok"),
    ("gateway_session=tok", "gateway_session", "tok"),
    ("gateway_session_x=1", "gateway_session", None),
    ("bad; gateway_session=tok", "gateway_session", "tok"),
    ("a=1", "gateway_session", None),
    ("", "gateway_session", None),
    (None, "gateway_session", None),
])
def test_cookie_value(header: str | None, name: str, expected: str | None) -> None:
    assert cookie_value(header, name) == expected


# -- X-Forwarded-* ----------------------------------------------------------------------

def test_forwarded_untrusted_peer_replaced() -> None:
    out = outgoing([("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"),
                    ("X-Forwarded-Host", "evil.example"), ("X-Real-IP", "6.6.6.6"),
                    ("Forwarded", "for=6.6.6.6")], peer="192.0.2.7")
    assert out.getall("X-Forwarded-For") == ["192.0.2.7"]
    assert out.getall("X-Forwarded-Proto") == ["http"]
    assert out.getall("X-Forwarded-Host") == ["gw.example"]
    assert out.getall("X-Real-IP") == ["192.0.2.7"]
    assert "forwarded" not in names(out)


def test_forwarded_trusted_peer_appended() -> None:
    out = outgoing([("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"),
                    ("X-Forwarded-Host", "public.example")],
                   peer="127.0.0.1", client="1.2.3.4", trusted=LOCAL)
    assert out.getall("X-Forwarded-For") == ["1.2.3.4, 127.0.0.1"]
    assert out.getall("X-Forwarded-Proto") == ["https"]
    assert out.getall("X-Forwarded-Host") == ["public.example"]
    assert out.getall("X-Real-IP") == ["1.2.3.4"]


def test_forwarded_trusted_peer_several_header_lines() -> None:
    out = outgoing([("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "10.0.0.5")],
                   peer="127.0.0.1", trusted=PROXIES)
    assert out.getall("X-Forwarded-For") == ["1.1.1.1, 10.0.0.5, 127.0.0.1"]


def test_forwarded_trusted_peer_without_headers_uses_own_view() -> None:
    out = outgoing([], peer="127.0.0.1", trusted=LOCAL, scheme="https")
    assert out.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert out.getall("X-Forwarded-Proto") == ["https"]
    assert out.getall("X-Forwarded-Host") == ["gw.example"]


@pytest.mark.parametrize("name", ["x_forwarded_for", "X.Forwarded.For", "X-FORWARDED-FOR"])
def test_forwarded_spellings_from_untrusted_peer_removed(name: str) -> None:
    out = outgoing([(name, "6.6.6.6")], peer="192.0.2.7")
    assert [v for k, v in out.items() if fold(k) == "x-forwarded-for"] == ["192.0.2.7"]


def test_host_header() -> None:
    assert outgoing([("Host", "gw.example")]).getall("Host") == ["gw.example"]
    assert outgoing([("Host", "gw.example")],
                    upstream_host="127.0.0.1:9000").getall("Host") == ["127.0.0.1:9000"]


@pytest.mark.parametrize("peer, xff, trusted, expected", [
    ("192.0.2.7", [], (), "192.0.2.7"),
    ("192.0.2.7", ["6.6.6.6"], (), "192.0.2.7"),
    ("192.0.2.7", ["6.6.6.6"], LOCAL, "192.0.2.7"),
    ("127.0.0.1", [], LOCAL, "127.0.0.1"),
    ("127.0.0.1", ["1.2.3.4"], LOCAL, "1.2.3.4"),
    ("127.0.0.1", ["6.6.6.6, 1.2.3.4"], LOCAL, "1.2.3.4"),
    ("127.0.0.1", ["6.6.6.6, 1.2.3.4, 10.0.0.2"], PROXIES, "1.2.3.4"),
    ("127.0.0.1", ["6.6.6.6, 1.2.3.4", "10.0.0.2"], PROXIES, "1.2.3.4"),
    ("127.0.0.1", ["10.0.0.3, 10.0.0.2"], PROXIES, "10.0.0.3"),
    ("127.0.0.1", ["6.6.6.6, 10.0.0.9"], LOCAL, "10.0.0.9"),
    ("::1", ["2001:db8::1"], PROXIES, "2001:db8::1"),
    (None, ["1.2.3.4"], LOCAL, ""),
    # Only addresses are believed, written one way; garbage stops the walk at
    # the last hop that is an address.
    ("::1", ["2001:DB8:0::1"], PROXIES, "2001:db8::1"),
    ("127.0.0.1", ["1.2.3.4, \udcff"], LOCAL, "127.0.0.1"),
    ("127.0.0.1", ["1.2.3.4, not-an-ip, 10.0.0.2"], PROXIES, "10.0.0.2"),
])
def test_client_ip(peer: str | None, xff: list[str], trusted: tuple[Any, ...],
                   expected: str) -> None:
    headers = CIMultiDict(("X-Forwarded-For", v) for v in xff)
    assert client_ip(peer, headers, trusted) == expected


# -- responses --------------------------------------------------------------------------

def test_downstream_keeps_end_to_end_headers() -> None:
    incoming = CIMultiDict([
        ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly"),
        ("Location", "http://elsewhere.example/x?y=1"), ("Content-Encoding", "gzip"),
        ("Content-Length", "12"), ("Cache-Control", "no-cache"),
        ("Connection", "close, X-Upstream-Hop"), ("X-Upstream-Hop", "secret"),
        ("Keep-Alive", "timeout=5"), ("Transfer-Encoding", "chunked"), ("Trailer", "X-T"),
        ("Upgrade", "h2c"), ("Proxy-Connection", "keep-alive"), ("X-Kept", "yes"),
    ])
    out, tossed = downstream_response_headers(incoming, OWN_KEYS)
    assert not tossed
    assert out.getall("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
    assert out.getall("Location") == ["http://elsewhere.example/x?y=1"]
    assert out.getall("Content-Encoding") == ["gzip"]
    assert out.getall("Content-Length") == ["12"]
    assert out.getall("X-Kept") == ["yes"]
    assert out.getall("Cache-Control") == ["no-cache"]
    assert not {"connection", "x-upstream-hop", "keep-alive", "transfer-encoding", "trailer",
                "upgrade", "proxy-connection"} & names(out)


@pytest.mark.parametrize("value, expected", [
    ("plain", "plain"),
    ("a\r\nX-Evil: 1", "a  X-Evil: 1"),
    ("a\nb", "a b"),
    ("a\rb", "a b"),
    ("nul\x00here", "nul here"),
    ("del\x7f", "del "),
    ("Zoë Ünïcode", "Zoë Ünïcode"),
    ("next\u0085line", "next line"),
    ("line\u2028sep", "line sep"),
    ("para\u2029sep", "para sep"),
    ("c1\x9bcsi", "c1 csi"),
])
def test_safe_header_value(value: str, expected: str) -> None:
    result = safe_header_value(value)
    assert result == expected
    assert "\r" not in result and "\n" not in result


# -- the gateway's own cookies, set by an upstream ------------------------------------

@pytest.mark.parametrize("line", [
    "gateway_session=bobs-token; Path=/",
    "GATEWAY_SESSION=x; Path=/",
    "Gateway_Session=x",
    "__Host-gateway_session=x; Path=/; Secure",
    "__host-GATEWAY_SESSION=x; Secure",
    "__Secure-gateway_session=x; Secure",
    " gateway_session =x",
    "gateway_form=x; Path=/_gateway",
    "gateway_notice=expired; Path=/_gateway",
    "=gateway_session=bobs-token; Path=/",   # nameless: sent back as gateway_session=...
    "gateway_session",                        # no '=': a nameless cookie with that value
    "gateway_session=",
])
def test_upstream_cannot_set_gateway_cookies(line: str) -> None:
    incoming = CIMultiDict([("Set-Cookie", "app=1; Path=/"), ("Set-Cookie", line),
                            ("X-Kept", "yes")])
    out, tossed = downstream_response_headers(incoming, OWN_KEYS)
    assert tossed
    assert out.getall("Set-Cookie") == ["app=1; Path=/"]
    assert out["X-Kept"] == "yes"


@pytest.mark.parametrize("line", [
    "gateway_sessions=x", "my_gateway_session=x", "session=gateway_session",
    "a=gateway_session=x", "gateway=1",
])
def test_upstream_cookies_with_other_names_pass(line: str) -> None:
    out, tossed = downstream_response_headers(CIMultiDict([("Set-Cookie", line)]), OWN_KEYS)
    assert not tossed
    assert out.getall("Set-Cookie") == [line]


# -- shared caches and signed-in responses ----------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("public, max-age=600", "private, max-age=600"),
    ("PUBLIC", "private"),
    ("max-age=60, public", "private, max-age=60"),
    ("public, s-maxage=600, max-age=60", "private, max-age=60"),
    ("s-maxage=600", "private"),
    ("private, public", "private"),
    ("no-store", "no-store"),
    ("max-age=60", "private, max-age=60"),
    ("must-revalidate, max-age=60", "private, must-revalidate, max-age=60"),
    ('public, private="Set-Cookie", max-age=600', 'private, private="Set-Cookie", max-age=600'),
    ("private, max-age=60", "private, max-age=60"),
    ("no-cache, must-revalidate", "private, no-cache, must-revalidate"),
    ("no-store, max-age=0", "no-store, max-age=0"),
])
def test_private_cache_control(value: str, expected: str) -> None:
    assert private_cache_control(value) == expected


def test_cache_control_rewritten_only_when_private() -> None:
    incoming = CIMultiDict([("Cache-Control", "public, max-age=600")])
    shared, _ = downstream_response_headers(incoming, OWN_KEYS)
    assert shared.getall("Cache-Control") == ["public, max-age=600"]
    private, _ = downstream_response_headers(incoming, OWN_KEYS, private=True)
    assert private.getall("Cache-Control") == ["private, max-age=600"]
    silent, _ = downstream_response_headers(CIMultiDict([("X-A", "1")]), OWN_KEYS, private=True)
    assert "Cache-Control" not in silent
    cdn = CIMultiDict([("CDN-Cache-Control", "public, max-age=600"), ("Surrogate-Control",
                       "max-age=600"), ("Cloudflare-CDN-Cache-Control", "max-age=60"),
                       ("X-A", "1")])
    private_cdn, _ = downstream_response_headers(cdn, OWN_KEYS, private=True)
    assert list(private_cdn) == ["X-A"]
    shared_cdn, _ = downstream_response_headers(cdn, OWN_KEYS)
    assert len(shared_cdn) == 4


# -- rewrite and client-address headers ----------------------------------------------

@pytest.mark.parametrize("name", ["X-Original-URL", "x-rewrite-url", "X_Original_URI",
                                  "X-Forwarded-Prefix", "X-Forwarded-Uri", "x.original.url",
                                  "X-Forwarded-Path", "X-Envoy-Original-Path"])
@pytest.mark.parametrize("trusted", [(), PROXIES])
def test_rewrite_headers_never_forwarded(name: str, trusted: tuple[Any, ...]) -> None:
    out = outgoing([(name, "/admin/x"), ("X-Kept", "1")], peer="127.0.0.1", trusted=trusted)
    assert fold(name) not in names(out)
    assert out["X-Kept"] == "1"


@pytest.mark.parametrize("name", ["True-Client-IP", "CF-Connecting-IP", "X-Client-IP",
                                  "X-Cluster-Client-IP", "true_client_ip", "x.client.ip",
                                  "Fastly-Client-IP", "X-Originating-IP", "Client-IP"])
def test_client_address_headers_only_from_trusted_proxies(name: str) -> None:
    untrusted = outgoing([(name, "10.9.9.9")], peer="192.0.2.7", trusted=PROXIES)
    assert fold(name) not in names(untrusted)
    trusted = outgoing([(name, "10.9.9.9")], peer="127.0.0.1", trusted=PROXIES)
    assert trusted[name] == "10.9.9.9"
