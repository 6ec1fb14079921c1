"""``create_app(config)``: the whole gateway of one worker, assembled in one place.

    /_gateway/...   the gateway's own pages and APIs (views.py), with their
                    form-state middleware (aiohttp-session) scoped to them
    everything else the proxy pipeline (pipeline.handle), no middleware:
                    it reads top to bottom in one function

Clients (the upstream ClientSession, the session store) are opened and
closed in ``cleanup_ctx``, so tests and workers get the same lifecycle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from .access import Router
from .assertion import AssertionSigner, assertion_key_path, load_or_create_key
from .config import Config, IdentityHeaders, origin_of
from .headers import fold
from .pipeline import NOTICE_COOKIE, handle
from .proxy import ResponseGuard, new_client_session
from .sessions import SessionManager
from .state import GATEWAY, Gateway
from .store import REASON_DISABLED, SessionStore, StoreUnavailable, create_store
from .users import UserDirectory
from .views import FORM_COOKIE, add_gateway_routes

log = logging.getLogger("gateway")


def create_app(config: Config, store: SessionStore | None = None) -> web.Application:
    """Build one worker's application; ``store`` overrides the configured one (tests)."""
    # client_max_size bounds what the gateway's own pages read (forms, JSON);
    # proxied bodies stream and never count against it.
    # keepalive_timeout doubles as the header-read timeout: aiohttp closes a
    # connection whose next request is still incomplete when it runs out.
    app = web.Application(handler_args={"max_field_size": 64 * 2**10,
                                        "max_line_size": 16 * 2**10,
                                        "keepalive_timeout": config.limits.header_timeout},
                          client_max_size=64 * 2**10)
    users = UserDirectory(config.users_file)
    signer = AssertionSigner(load_or_create_key(assertion_key_path(config)),
                             issuer=config.public_url, lifetime=config.assertion.lifetime)

    own_cookies = frozenset({config.cookie_name, FORM_COOKIE, NOTICE_COOKIE})

    async def resources(app: web.Application) -> AsyncIterator[None]:
        session_store = store or create_store(config.session)
        client = new_client_session()
        gw = Gateway(
            config=config, router=Router(config.upstreams), users=users,
            store=session_store, sessions=SessionManager(config, session_store, users),
            signer=signer, client=client,
            strip_headers=frozenset(fold(n) for n in
                                    (*config.headers.names(), *IdentityHeaders().names())),
            own_cookies=own_cookies,
            response_guard=ResponseGuard(own_cookies),
            public_origin=origin_of(config.public_url))
        app[GATEWAY] = gw
        users.on_lost = lambda keys: _end_sessions_of(gw, keys)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(gw.sessions.follow_revocations()),
                 loop.create_task(_watch_users_file(users))]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        await session_store.close()
        users.close()

    app.cleanup_ctx.append(resources)
    add_gateway_routes(app, config)
    # [\s\S]: a decoded path may hold a newline, which '.' would not match.
    app.router.add_route("*", r"/{path:[\s\S]*}", handle)
    return app


async def _watch_users_file(users: UserDirectory) -> None:
    """Requests re-check the file anyway; this ends a disabled user's sessions
    even when nobody makes a request."""
    while True:
        await asyncio.sleep(2)
        users.all()


_background: set[asyncio.Task[None]] = set()


def _end_sessions_of(gw: Gateway, keys: set[str]) -> None:
    """Users removed or disabled in the users file lose every session."""
    async def run() -> None:
        for key in keys:
            try:
                ended = await gw.store.revoke_user(key, REASON_DISABLED)
                log.info("user %s disabled or removed: %d sessions ended", key, ended)
            except StoreUnavailable:
                log.warning("could not end sessions of disabled user %s: store unavailable", key)
    task = asyncio.get_running_loop().create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)
