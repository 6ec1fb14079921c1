"""Forward-auth behind real nginx (auth_request) and Caddy (forward_auth),
each running the recipe from docs/forward-auth/ as written, in front of a
real upstream: a browser-like client signs in through the proxy, the app
sees who it is, and identity headers a client sends never reach it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from authkit import csrf_of
from conftest import free_port, seen_headers

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "forward-auth"

# Every spelling a client might try: other case, underscores, repeated.
SPOOFED = [("X-Auth-User", "mallory"), ("x-auth-user", "eve"), ("X-Auth-Roles", "admin"),
           ("X_Auth_User", "trudy"), ("X-Auth-Assertion", "forged.jwt.value")]


def nginx_config(folder: Path, port: int, gateway: str, app: str) -> list[str]:
    recipe = (RECIPES / "nginx.conf").read_text()
    recipe = recipe.replace("listen 80;", f"listen 127.0.0.1:{port};") \
        .replace("127.0.0.1:9000", gateway).replace("127.0.0.1:3000", app)
    (folder / "recipe.conf").write_text(recipe)
    (folder / "nginx.conf").write_text(f"""
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
daemon off;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy_temp;
    fastcgi_temp_path {folder}/fastcgi_temp;
    uwsgi_temp_path {folder}/uwsgi_temp;
    scgi_temp_path {folder}/scgi_temp;
    include {folder}/recipe.conf;
}}
""")
    return ["nginx", "-p", str(folder), "-c", str(folder / "nginx.conf")]


def caddy_config(folder: Path, port: int, gateway: str, app: str) -> list[str]:
    recipe = (RECIPES / "Caddyfile").read_text()
    recipe = recipe.replace("app.example.com {", f"http://127.0.0.1:{port} {{") \
        .replace("127.0.0.1:9000", gateway).replace("127.0.0.1:3000", app)
    (folder / "Caddyfile").write_text("{\n\tadmin off\n\tauto_https off\n}\n\n" + recipe)
    return ["caddy", "run", "--config", str(folder / "Caddyfile"), "--adapter", "caddyfile"]


@pytest.fixture(params=["nginx", "caddy"])
def proxy_kind(request: pytest.FixtureRequest) -> str:
    if shutil.which(request.param) is None:
        pytest.fail(f"{request.param} is not installed: run scripts/test, which installs it")
    return request.param


@pytest.fixture
def run_proxy(tmp_path: Path, proxy_kind: str) -> Iterator[Any]:
    """``run_proxy(port, gateway, app)``: the recipe on ``port``, started."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(port: int, gateway: str, app: str) -> None:
        folder = tmp_path / proxy_kind
        folder.mkdir(mode=0o755)
        tmp_path.chmod(0o755)        # nginx workers run as nobody when started as root
        make = nginx_config if proxy_kind == "nginx" else caddy_config
        argv = make(folder, port, gateway, app)
        env = {**os.environ, "HOME": str(folder), "XDG_DATA_HOME": str(folder / "data"),
               "XDG_CONFIG_HOME": str(folder / "config")}
        with open(folder / "output.log", "wb") as log:
            procs.append(subprocess.Popen(argv, cwd=folder, stdout=log,
                                          stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if procs[-1].poll() is not None:
                raise RuntimeError((folder / "output.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{proxy_kind} did not start")
    yield start
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


@pytest.fixture
async def site(upstream, make_config, aiohttp_server, run_proxy) -> str:
    """The app behind the proxy, the gateway beside it; the proxy's URL,
    which is the gateway's public_url."""
    from gateway.app import create_app
    port = free_port()
    config = make_config(str(upstream.make_url("/")), public_url=f"http://127.0.0.1:{port}",
                         trusted_proxies=["127.0.0.1/32"])
    gateway = await aiohttp_server(create_app(config), host="127.0.0.1")
    await asyncio.to_thread(run_proxy, port, f"127.0.0.1:{gateway.port}",
                            f"127.0.0.1:{upstream.port}")
    return f"http://127.0.0.1:{port}"


def browser() -> aiohttp.ClientSession:
    """Keeps cookies (for an IP address too), follows nothing by itself."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 headers={"Accept": "text/html,application/xhtml+xml"})


def identity_seen(body: dict[str, Any]) -> dict[str, list[str]]:
    """What the app got under any spelling of an identity header."""
    return {name: values for name, values in seen_headers(body).items()
            if name.replace("_", "-").startswith("x-auth-")}


async def test_a_person_signs_in_through_the_proxy_and_the_app_sees_who(site):
    async with browser() as b:
        r = await b.get(f"{site}/reports?year=2026", allow_redirects=False)
        assert r.status == 302
        login = r.headers["Location"]
        assert login.startswith(f"{site}/_gateway/login?rd=")
        page = await (await b.get(login)).text()
        r = await b.post(f"{site}/_gateway/login", allow_redirects=False, data={
            "csrf_token": csrf_of(page), "username": "alice", "password": "alice-pw",
            "rd": f"{site}/reports?year=2026"})
        assert (r.status, r.headers["Location"]) == (303, f"{site}/reports?year=2026")
        jar = b.cookie_jar.filter_cookies(URL(site))["gateway_session"].value
        # Two copies of it (a browser can hold a __Host- and a __Secure- one).
        r = await b.get(f"{site}/reports?year=2026", headers=[*SPOOFED, (
            "Cookie", f"theme=dark; gateway_session={jar}; lang=en; "
                      f"__Secure-gateway_session={jar}; my_gateway_session=kept")])
        body = await r.json()
        assert r.status == 200 and body["path"] == "/reports?year=2026"
        # The app gets its own cookies, never the gateway's session.
        (cookie,) = seen_headers(body)["cookie"]
        assert jar not in cookie and "theme=dark" in cookie and "lang=en" in cookie
        assert "my_gateway_session=kept" in cookie
        seen = identity_seen(body)
        assert seen["x-auth-user"] == ["alice"] and seen["x-auth-roles"] == ["user"]
        assert seen["x-auth-assertion"] != ["forged.jwt.value"]
        assert not [k for k in seen if "_" in k]
        # A role rule refuses, whatever the client says the URL is.
        r = await b.get(f"{site}/admin", headers=[
            ("X-Original-URL", f"{site}/static/x.css"), ("X-Forwarded-Uri", "/static/x.css")])
        assert r.status == 403
        # A Host that would turn the path into a query: refused, not judged as "/".
        port = int(site.rsplit(":", 1)[1])

        def exchange() -> str:      # in a thread: the gateway shares this event loop
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.sendall(f"GET /admin/secret HTTP/1.1\r\nHost: 127.0.0.1:{port}?\r\n"
                            f"Cookie: gateway_session={jar}\r\nConnection: close\r\n\r\n"
                            .encode())
                return raw.recv(65536).decode("latin-1")
        answer = await asyncio.to_thread(exchange)
        assert answer.split()[1] in ("400", "500"), answer[:200]


async def test_spoofed_identity_never_reaches_the_app(site):
    async with browser() as b:
        # A public path: the gateway says yes with no identity (nginx removes
        # the headers, Caddy sets them empty); the client's stay out.
        r = await b.get(f"{site}/static/app.css", headers=SPOOFED)
        assert r.status == 200
        assert all(values == [""] for values in identity_seen(await r.json()).values())
        # No session: refused before the app.
        r = await b.get(f"{site}/reports", headers=SPOOFED, allow_redirects=False)
        assert r.status == 302
        r = await b.get(f"{site}/api/data", headers=[*SPOOFED, ("Accept", "application/json")],
                        allow_redirects=False)
        assert r.status == 401
        # Paths the app might read otherwise than the gateway never reach it.
        for path in ("/admin/../static/x", "/admin/%2e%2e/static/x", "/admin//../static/x"):
            r = await b.get(URL(f"{site}{path}", encoded=True), allow_redirects=False)
            assert r.status in (400, 500), path          # nginx: auth_request's error
        # Metrics are not for outside.
        r = await b.get(f"{site}/_gateway/metrics", allow_redirects=False)
        assert r.status == 404
        # The question itself cannot be asked from outside with nginx (internal),
        # and from Caddy it names the request one way only.
        r = await b.get(f"{site}/_gateway/auth", headers=[
            ("X-Original-URL", f"{site}/static/x.css")], allow_redirects=False)
        assert r.status in (400, 403, 404)
