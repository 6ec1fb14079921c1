"""Helpers shared by the session and access tests (not fixtures).

``send`` talks to a running gateway with a fresh client that keeps no
cookies and sends the request target exactly as written (no dot-segment
or percent-escape normalisation), so a test controls every byte that
matters: the raw path, the Cookie header and repeated or odd headers.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from conftest import write_users

COOKIE = "gateway_session"


class Reply:
    def __init__(self, status: int, headers: CIMultiDictProxy[str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        import json
        return json.loads(self.body)

    def set_cookies(self) -> dict[str, str]:
        """Set-Cookie lines by cookie name."""
        return {line.split("=", 1)[0].strip(): line for line in self.headers.getall("Set-Cookie", [])}

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body[:200]!r}>"


async def send(client: Any, method: str, target: str, *, token: str | None = None,
               cookie_name: str = COOKIE, headers: list[tuple[str, str]] | None = None,
               accept: str = "application/json", **kwargs: Any) -> Reply:
    """One request to the gateway behind ``client``, byte-exact, no cookie jar."""
    h: CIMultiDict[str] = CIMultiDict(headers or [])
    if "Accept" not in h:
        h["Accept"] = accept
    if token is not None:
        h.add("Cookie", f"{cookie_name}={token}")
    url = URL(f"http://{client.server.host}:{client.server.port}{target}", encoded=True)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        async with s.request(method, url, headers=h, allow_redirects=False, **kwargs) as r:
            return Reply(r.status, r.headers, await r.read())


async def api_login(client: Any, username: str = "alice", password: str = "alice-pw",
                    remember: bool = False) -> str:
    """Sign in from a fresh, cookie-less client (another device); returns the token."""
    r = await send(client, "POST", "/_gateway/api/login",
                   json={"username": username, "password": password, "remember": remember})
    assert r.status == 200, r
    cookies = r.set_cookies()
    line = cookies.get(COOKIE) or cookies["__Host-" + COOKIE]
    return line.split("=", 1)[1].split(";", 1)[0]


async def session_status(client: Any, token: str | None) -> tuple[int, Any]:
    r = await send(client, "GET", "/_gateway/api/session", token=token)
    return r.status, r.json()


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def cookie_attrs(line: str) -> dict[str, str]:
    """``Set-Cookie`` attributes, lowercased names (value under the cookie name)."""
    out: dict[str, str] = {}
    for i, part in enumerate(line.split(";")):
        k, _, v = part.strip().partition("=")
        out[k if i == 0 else k.lower()] = v
    return out


def replace_users(folder: Path, users: list[dict[str, Any]]) -> None:
    """Rewrite users.yaml the way editors do: a new file renamed over the old one."""
    staging = folder / "staging"
    staging.mkdir(exist_ok=True)
    write_users(staging, users)
    os.replace(staging / "users.yaml", folder / "users.yaml")


async def raw_exchange(client: Any, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes on a fresh connection, read until the gateway closes it."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def failover_drill(client: Any, kill: Callable[[], None], valid: str, revoked: str,
                         **others: str) -> tuple[dict[str, list[int]], float]:
    """Run ``kill`` (in a thread) and send, every 50 ms, requests with the
    valid session, the signed-out one, none, on a public path, and with
    ``others`` (name: token), until the valid session has answered 503 and
    then 200 three times in a row. Nobody without a valid session may get
    through at any moment, public paths never need the store. Returns each
    one's answers and the seconds from the kill to the recovery."""
    killed = time.monotonic()
    await asyncio.to_thread(kill)
    probes = [("valid", valid, "/x"), ("revoked", revoked, "/x"), ("none", None, "/x"),
              ("public", None, "/static/a.css"), *((n, t, "/x") for n, t in others.items())]
    seen: dict[str, list[int]] = {name: [] for name, _, _ in probes}
    while time.monotonic() - killed < 40:
        for name, token, path in probes:
            seen[name].append((await send(client, "GET", path, token=token)).status)
        if 503 in seen["valid"] and seen["valid"][-3:] == [200] * 3:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError({k: sorted(set(v)) for k, v in seen.items()})
    assert set(seen["revoked"]) <= {401, 503} and set(seen["none"]) <= {401, 503}
    assert set(seen["valid"]) <= {200, 503}
    assert set(seen["public"]) == {200}
    return seen, time.monotonic() - killed

