"""What one worker holds while it serves: built once in ``app.create_app``."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web

from .access import Router
from .assertion import AssertionSigner
from .config import Config
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


GATEWAY = web.AppKey("gateway", Gateway)
