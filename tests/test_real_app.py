"""A real third-party app behind the gateway: jupyter_server (the server of
JupyterLab, from PyPI), which refuses requests whose Origin does not match
their Host and speaks WebSockets. With the default ``preserve_host: true``
it works as it would without the gateway; with ``false`` it refuses, and
its refusal of a WebSocket reaches the client with its own status."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import free_port

XSRF = "test-xsrf-token"       # tornado's check: the cookie and the header agree


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("notebooks")
    port = free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".config"),
           "JUPYTER_DATA_DIR": str(root / ".data"), "JUPYTER_RUNTIME_DIR": str(root / ".run")}
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", f"--port={port}",
             "--ip=127.0.0.1", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
             "--IdentityProvider.token=", "--ServerApp.password=",
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "server.log").read_text()) from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


async def signed_in(make_config: Any, gateway: Any, jupyter: str, **upstream: Any) -> Any:
    """A gateway in front of jupyter_server, and a client signed in to it
    that talks as JupyterLab's page does (Origin, the XSRF cookie and header)."""
    from authkit import api_login
    client = await gateway(make_config(jupyter, upstreams=[
        {"name": "jupyter", "url": jupyter, **upstream}]))
    token = await api_login(client)
    origin = f"http://{client.server.host}:{client.server.port}"
    headers = {"Origin": origin, "X-XSRFToken": XSRF,
               "Cookie": f"gateway_session={token}; _xsrf={XSRF}"}
    return client, origin, headers


async def test_the_app_works_with_the_default_config(make_config, gateway, jupyter):
    client, origin, headers = await signed_in(make_config, gateway, jupyter)
    base = f"{origin}/"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        async with s.get(base + "api/status", headers=headers) as r:
            assert r.status == 200
        # A new notebook: jupyter checks that Origin matches Host.
        async with s.post(base + "api/contents", headers=headers,
                          json={"type": "notebook"}) as r:
            assert r.status == 201, await r.text()
            assert (await r.json())["name"].endswith(".ipynb")
        # Its event stream is a WebSocket, Origin-checked the same way.
        async with s.ws_connect(base + "api/events/subscribe", headers=headers) as ws:
            assert not ws.closed
            await ws.close()


async def test_without_the_client_s_host_the_app_refuses(make_config, gateway, jupyter):
    client, origin, headers = await signed_in(make_config, gateway, jupyter,
                                              preserve_host=False)
    base = f"{origin}/"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        async with s.post(base + "api/contents", headers=headers,
                          json={"type": "notebook"}) as r:
            assert r.status == 404          # what JupyterLab showed as "Not Found"
        # The app's refusal of the WebSocket arrives as it gave it.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(base + "api/events/subscribe", headers=headers)
        assert refused.value.status == 403
