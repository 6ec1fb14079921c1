"""Forward-auth (``/_gateway/auth``) asked the way nginx, Traefik and Caddy
ask, straight from the test: the answers, the headers believed only from
trusted proxies, one canonical path, the rules and limits the proxy applies,
an auth-only config. tests/test_forward_auth_proxies.py puts real nginx and
Caddy in front."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from authkit import api_login, send

TRUSTED = {"trusted_proxies": ["127.0.0.1/32"]}


def nginx(url: str, method: str = "GET") -> list[tuple[str, str]]:
    return [("X-Original-URL", url), ("X-Original-Method", method)]


def traefik(host: str, uri: str, method: str = "GET",
            proto: str = "https") -> list[tuple[str, str]]:
    return [("X-Forwarded-Proto", proto), ("X-Forwarded-Host", host),
            ("X-Forwarded-Uri", uri), ("X-Forwarded-Method", method)]


@pytest.fixture
async def gw(upstream, make_config, gateway, store_settings):
    async def start(**overrides: Any) -> Any:
        overrides = {**TRUSTED, **overrides}
        return await gateway(make_config(str(upstream.make_url("/")), session=store_settings,
                                         **overrides))
    return start


async def ask(client: Any, headers: list[tuple[str, str]], token: str | None = None,
              target: str = "/_gateway/auth", **kwargs: Any) -> Any:
    return await send(client, "GET", target, token=token, headers=headers, **kwargs)


async def test_a_session_gets_200_with_the_identity_headers(gw):
    client = await gw()
    token = await api_login(client)
    r = await ask(client, nginx("https://app.example.com/reports?q=1"), token)
    assert r.status == 200
    assert (r.headers["X-Auth-User"], r.headers["X-Auth-Email"], r.headers["X-Auth-Roles"]) \
        == ("alice", "alice@example.com", "user")
    assert r.headers["X-Auth-Assertion"].count(".") == 2
    assert r.headers["Cache-Control"] == "no-store"
    r = await ask(client, traefik("app.example.com", "/reports"), token)
    assert r.status == 200 and r.headers["X-Auth-User"] == "alice"


async def test_no_session_gets_401_with_the_way_to_the_login_page(gw):
    client = await gw()
    r = await ask(client, nginx("https://app.example.com/a/b?x=1&y=2"))
    assert (r.status, r.json()["error"]) == (401, "SESSION_NOT_FOUND")
    location = urlsplit(r.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == \
        "http://127.0.0.1:8080/_gateway/login"
    assert parse_qs(location.query) == {"rd": ["https://app.example.com/a/b?x=1&y=2"]}
    # Traefik and Caddy pass the answer to the browser: asked for, a redirect.
    r = await ask(client, traefik("app.example.com", "/a"), accept="text/html",
                  target="/_gateway/auth?redirect=1")
    assert r.status == 302 and r.headers["Location"].startswith(
        "http://127.0.0.1:8080/_gateway/login?rd=https%3A%2F%2Fapp.example.com%2Fa")
    # ...but not for a script's request, nor without asking.
    r = await ask(client, traefik("app.example.com", "/a"), target="/_gateway/auth?redirect=1")
    assert r.status == 401
    r = await ask(client, traefik("app.example.com", "/a", method="POST"), accept="text/html",
                  target="/_gateway/auth?redirect=1")
    assert r.status == 401


async def test_public_paths_pass_without_identity_and_rules_refuse(gw):
    client = await gw()
    r = await ask(client, nginx("http://app.example.com/static/app.css"))
    assert r.status == 200 and r.headers["X-Auth-User"] == r.headers["X-Auth-Roles"] == ""
    token = await api_login(client)
    r = await ask(client, nginx("http://app.example.com/admin/users"), token)
    assert (r.status, r.json()["error"]) == (403, "FORBIDDEN")
    admin = await api_login(client, "admin", "admin-pw")
    assert (await ask(client, nginx("http://app.example.com/admin/users"), admin)).status == 200


@pytest.mark.parametrize("path", ["/static/../admin", "/static/%2e%2e/admin", "/ADMIN",
                                  "/static/..%2fadmin", "//admin"])
async def test_the_path_judged_is_the_canonical_one(gw, path):
    client = await gw()
    token = await api_login(client)
    r = await ask(client, nginx(f"http://app.example.com{path}"), token)
    assert r.status in (400, 403), (path, r)
    r = await ask(client, traefik("app.example.com", path), token)
    assert r.status in (400, 403), (path, r)


async def test_the_headers_are_believed_only_from_trusted_proxies(gw):
    client = await gw(trusted_proxies=[])
    for headers in (nginx("http://app.example.com/static/x.css"),
                    traefik("app.example.com", "/static/x.css"), []):
        r = await ask(client, headers)
        assert (r.status, r.json()["error"]) == (403, "FORBIDDEN")
    client = await gw(trusted_proxies=["10.0.0.0/8"])
    token = await api_login(client)
    r = await ask(client, nginx("http://app.example.com/x"), token)
    assert r.status == 403 and "X-Auth-User" not in r.headers


async def test_a_trusted_proxy_must_name_the_request(gw):
    client = await gw()
    both = nginx("http://app.example.com/static/x.css") + traefik("app.example.com", "/admin")
    for headers in ([], [("X-Forwarded-Uri", "/x")], nginx("ftp://app.example.com/x"),
                    nginx("/just/a/path"), both):
        r = await ask(client, headers)
        assert (r.status, r.json()["error"]) == (400, "BAD_REQUEST"), headers


async def test_the_gateway_s_own_pages_always_pass(gw):
    """A proxy guarding a whole host must let the login page through: on the
    gateway's own host (public_url's), and only there."""
    client = await gw()
    r = await ask(client, nginx("http://127.0.0.1:8080/_gateway/login?rd=/"))
    assert r.status == 200 and r.headers["X-Auth-User"] == ""
    r = await ask(client, nginx("http://app.example.com/_gateway/login?rd=/"))
    assert (r.status, r.json()["error"]) == (403, "FORBIDDEN")


@pytest.mark.parametrize("target", [
    "/admin/../static/x", "/admin//../static/x", "/admin/%2e%2e/static/x",
    "/admin/%252e%252e/static/x", "/static/x#/../../admin", "//static/x",
    "/_gateway/;/../admin", "/static/./x", "/admin/..;/static/x"])
async def test_only_canonical_paths_are_judged(gw, target):
    """The proxy in front forwards the path as sent: one the app could read
    otherwise than the gateway is refused, never resolved and judged."""
    client = await gw()
    token = await api_login(client)
    for headers in (nginx(f"http://127.0.0.1:8080{target}"),
                    traefik("127.0.0.1:8080", target)):
        r = await ask(client, headers, token)
        assert (r.status, r.json()["error"]) == (400, "BAD_REQUEST"), (target, headers)


async def test_a_trailing_dot_does_not_escape_a_host_s_rules(upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/")), **TRUSTED, upstreams=[
        {"name": "app", "url": str(upstream.make_url("/")), "host": "app.example.com",
         "rules": [{"path": "/admin", "roles": ["admin"]}]}]))
    token = await api_login(client)
    for host in ("app.example.com", "APP.example.com.", "app.example.com.:80"):
        r = await ask(client, nginx(f"http://{host}/admin/x"), token)
        assert (r.status, r.json()["error"]) == (403, "FORBIDDEN"), host
    # A host no upstream serves passes nobody when upstreams are configured.
    r = await ask(client, nginx("http://other.example.com/x"), token)
    assert (r.status, r.json()["error"]) == (403, "FORBIDDEN")


async def test_rate_limits_apply_as_on_the_proxy(gw):
    client = await gw(rate_limits=[{"name": "api", "limit": 2, "window": "1m",
                                    "path": "/api/"}])
    token = await api_login(client)
    for _ in range(2):
        assert (await ask(client, traefik("app.example.com", "/api/x"), token)).status == 200
    r = await ask(client, traefik("app.example.com", "/api/x"), token)
    assert (r.status, r.json()["error"]) == (429, "RATE_LIMITED") and "Retry-After" in r.headers
    # nginx's auth_request turns anything but 401 and 403 into a 500.
    r = await ask(client, nginx("http://app.example.com/api/x"), token)
    assert (r.status, r.json()["error"]) == (403, "RATE_LIMITED")
    assert (await ask(client, traefik("app.example.com", "/other"), token)).status == 200


async def test_the_original_method_is_judged(gw):
    client = await gw(rate_limits=[{"name": "writes", "limit": 1, "window": "1m",
                                    "methods": ["POST"]}])
    token = await api_login(client)
    for _ in range(3):
        assert (await ask(client, traefik("app.example.com", "/x"), token)).status == 200
    assert (await ask(client, traefik("app.example.com", "/x", "POST"), token)).status == 200
    assert (await ask(client, traefik("app.example.com", "/x", "POST"), token)).status == 429
    # nginx asks with the original request's method itself.
    r = await send(client, "POST", "/_gateway/auth", token=token,
                   headers=nginx("http://app.example.com/x", "POST"))
    assert r.status == 403


async def test_an_auth_only_config_judges_every_host(gw):
    client = await gw(upstreams=[])
    token = await api_login(client)
    r = await ask(client, nginx("https://wiki.example.com/page"), token)
    assert r.status == 200 and r.headers["X-Auth-User"] == "alice"
    assert (await ask(client, nginx("https://wiki.example.com/page"))).status == 401
    # The gateway proxies nothing then.
    assert (await send(client, "GET", "/page", token=token)).status == 404


async def test_a_shared_cookie_domain(upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/")), **TRUSTED,
                                       public_url="https://auth.example.com",
                                       cookie={"domain": "example.com"}))
    r = await send(client, "POST", "/_gateway/api/login",
                   json={"username": "alice", "password": "alice-pw"})
    line = r.set_cookies()["__Secure-gateway_session"]
    assert "Domain=example.com" in line and "Secure" in line and "HttpOnly" in line
    token = line.split("=", 1)[1].split(";", 1)[0]
    r = await ask(client, nginx("https://app.example.com/x"), token,
                  cookie_name="__Secure-gateway_session")
    assert r.status == 200 and r.headers["X-Auth-User"] == "alice"


@pytest.mark.parametrize("url", ["http://app.example.com?/admin/x", "http://app@evil/admin",
                                 "http://app.example.com", "http://a b/x"])
async def test_a_host_must_be_a_host(gw, url):
    """nginx passes "Host: app?" on; with it, the path would read as a query."""
    client = await gw()
    token = await api_login(client)
    r = await ask(client, nginx(url), token)
    assert (r.status, r.json()["error"]) == (400, "BAD_REQUEST")
    r = await ask(client, [("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "app?"),
                           ("X-Forwarded-Uri", "/admin/x")], token)
    assert (r.status, r.json()["error"]) == (400, "BAD_REQUEST")


@pytest.mark.parametrize("path", ["/_gateway", "/_gateway/metrics", "/_gateway/auth"])
async def test_the_gateway_s_machine_endpoints_are_not_its_pages(gw, path):
    client = await gw()
    r = await ask(client, nginx(f"http://127.0.0.1:8080{path}"))
    assert r.status in (401, 403), r
    r = await ask(client, nginx("http://127.0.0.1:8443/_gateway/login"))   # another port
    assert r.status in (401, 403), r


async def test_a_double_encoded_backslash_is_not_canonical(gw):
    client = await gw()
    r = await ask(client, nginx("http://127.0.0.1:8080/static/..%255cadmin"))
    assert (r.status, r.json()["error"]) == (400, "BAD_REQUEST")
