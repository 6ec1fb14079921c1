"""What one worker holds while it serves: built once in ``app.create_app``."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web

from .access import Router
from .assertion import AssertionSigner
from .config import Config
from .proxy import ResponseGuard
from .sessions import SessionManager
from .store import SessionStore
from .users import UserDirectory


@dataclass
class Gateway:
    config: Config
    router: Router
    users: UserDirectory
    store: SessionStore
    sessions: SessionManager
    signer: AssertionSigner
    client: aiohttp.ClientSession
    # Folded names of every header that could pass for an identity header.
    strip_headers: frozenset[str]
    # The gateway's own cookies, never forwarded upstream.
    own_cookies: frozenset[str]
    # Drops upstream Set-Cookie lines for own_cookies.
    response_guard: ResponseGuard
    # headers.origin_of(config.public_url): WebSockets may be opened from it.
    public_origin: str | None


GATEWAY = web.AppKey("gateway", Gateway)
