"""What one worker holds while it serves: built once in ``app.create_app``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from .audit.trail import AuditTrail
from .auth.assertion import AssertionSigner
from .auth.geo import Locator
from .auth.sessions import SessionService
from .auth.cookies import DeviceCookie
from .auth.users import UserDirectory
from .config import Config
from .proxy.access import Router
from .proxy.forward import ResponseGuard
from .proxy.ratelimit import Limiter, ProxyLimits
from .store import SessionStore

log = logging.getLogger("gateway")


class Background:
    """Every task a worker runs beside requests, owned by the app: each is
    started through here and all are cancelled and awaited at cleanup."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(),
                      exc_info=task.exception())

    async def close(self, grace: float = 5.0) -> None:
        """Cancel every task and wait for them, within ``grace`` seconds: a
        task that does not end must not hold up the shutdown."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=grace)
            for task in stuck:
                log.error("background task %s did not stop within %g s", task.get_name(),
                          grace)


@dataclass
class Gateway:
    config: Config
    router: Router
    users: UserDirectory
    store: SessionStore
    sessions: SessionService
    signer: AssertionSigner
    client: aiohttp.ClientSession
    background: Background
    # Folded names of every header that could pass for an identity header.
    strip_headers: frozenset[str]
    # The gateway's own cookies, never forwarded upstream.
    own_cookies: frozenset[str]
    # Drops upstream Set-Cookie lines for own_cookies.
    response_guard: ResponseGuard
    # config.origin_of(config.public_url): WebSockets may be opened from it.
    public_origin: str | None
    # Locations of IP addresses, when geoip.database is set.
    locator: Locator | None
    # The session monitor's script tag, added to pages of upstreams that ask.
    monitor_tag: bytes
    # The audit trail, fed by the session event stream.
    audit: AuditTrail
    # The browser's record of accounts it signed in as (login throttling).
    devices: DeviceCookie
    # Rate limits: counted in this worker, shared through the store; the
    # rate_limits rules (None without any).
    limiter: Limiter
    rate_limits: ProxyLimits | None


GATEWAY = web.AppKey("gateway", Gateway)
