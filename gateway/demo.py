"""``gateway demo``: a small "legacy" app with the gateway in front, no Redis.

The legacy app has no login of its own; it only shows the request headers
it receives, so a person can watch the gateway add identity headers and
strip spoofed ones. Everything lives in a temporary folder and goes away
when the demo stops.
"""

from __future__ import annotations

import html
import secrets
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import uvloop
import yaml
from aiohttp import WSMsgType, web
from argon2 import PasswordHasher

from .app import create_app
from .config import load_config
from .server import cannot_listen, configure_logging, host_port

DEMO_USERS = [
    {"username": "alice", "password": "alice-demo", "name": "Alice Example",
     "email": "alice@example.com", "roles": ["user"]},
    {"username": "admin", "password": "admin-demo", "name": "Ada Admin",
     "email": "admin@example.com", "roles": ["admin", "user"]},
]

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>body{{font-family:Georgia,serif;max-width:50rem;margin:2rem auto;padding:0 1rem;background:#fffbea}}
table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #ccb;padding:.3rem .5rem;text-align:left;
font-family:monospace;word-break:break-all}}tr.auth{{background:#dff5dd}}</style></head><body>
<h1>{title}</h1><p>A legacy app with no login of its own. The gateway in front of it signed you in.</p>
<p><a href="/">Home</a> · <a href="/admin">Admin area</a> (role <code>admin</code>) ·
<a href="/static/hello.txt">Public file</a> · <a href="/_gateway/api/session">Session API</a> ·
<a href="/_gateway/logout">Sign out</a></p>
<h2>Request headers this app received</h2><table><tr><th>Header</th><th>Value</th></tr>{rows}</table>
</body></html>"""


def legacy_app() -> web.Application:
    async def page(request: web.Request) -> web.Response:
        title = "Admin area" if request.path.startswith("/admin") else "Legacy app"
        rows = "".join(
            f'<tr class="{"auth" if k.lower().startswith("x-auth-") else ""}">'
            f"<td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
            for k, v in sorted(request.headers.items()))
        return web.Response(text=_PAGE.format(title=title, rows=rows), content_type="text/html")

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="A public file: no sign-in needed.\n")

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(f"echo: {msg.data}")
        return ws

    app = web.Application()
    app.router.add_get("/static/hello.txt", hello)
    app.router.add_get("/ws", echo)
    app.router.add_route("*", "/{tail:.*}", page)
    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_demo_config(folder: Path, port: int, legacy_port: int,
                      host: str = "127.0.0.1") -> Path:
    hasher = PasswordHasher()
    users = [{k: v for k, v in u.items() if k != "password"} | {"password_hash": hasher.hash(u["password"])}
             for u in DEMO_USERS]
    (folder / "users.yaml").write_text(yaml.safe_dump({"users": users}))
    # Listening on every address (in a container): the browser is elsewhere,
    # reaching a published port, most often as localhost.
    seen_as = "localhost" if host in ("0.0.0.0", "::") else host
    config = {
        "listen": host_port(host, port),
        "public_url": f"http://{host_port(seen_as, port)}",
        "secret": secrets.token_urlsafe(32),
        "session": {"store": "memory", "idle_timeout": "30m", "absolute_timeout": "12h"},
        "users": {"file": "users.yaml"},
        "upstreams": [{
            "name": "legacy", "url": f"http://127.0.0.1:{legacy_port}", "path_prefix": "/",
            "session_monitor": True,
            "public": ["/static/", "/favicon.ico"],
            "rules": [{"path": "/admin", "roles": ["admin"]}],
        }],
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_demo(host: str, port: int) -> int:
    configure_logging("info")
    legacy_port = _free_port()
    with tempfile.TemporaryDirectory(prefix="gateway-demo-") as tmp:
        config = load_config(write_demo_config(Path(tmp), port, legacy_port, host))
        app = create_app(config)

        async def legacy(_app: web.Application) -> AsyncIterator[None]:
            runner = web.AppRunner(legacy_app(), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", legacy_port).start()
            yield
            await runner.cleanup()

        app.cleanup_ctx.insert(0, legacy)
        lines = [f"Gateway demo: open {config.public_url}/ in a browser.",
                 f"The legacy app listens on 127.0.0.1:{legacy_port}; "
                 f"the gateway on {host_port(host, port)}.",
                 "Demo users (username / password / roles):"]
        lines += [f"  {u['username']} / {u['password']} / {', '.join(u['roles'])}" for u in DEMO_USERS]
        lines.append("Press Ctrl-C to stop.")

        def banner(_aiohttp_banner: str) -> None:
            """Called once the port is bound: the URL is only shown when it works."""
            print("\n".join(lines), flush=True)

        try:
            web.run_app(app, host=host, port=port, print=banner, access_log=None,
                        loop=uvloop.new_event_loop())
        except OSError as exc:
            print(f"{cannot_listen(host, port, exc)}; try: gateway demo --listen "
                  f"{host_port(host, port + 1)}", file=sys.stderr)
            return 1
    return 0
