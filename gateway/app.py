"""``create_app(config)``: the whole gateway of one worker, assembled in one place.

    /_gateway/...   the gateway's own pages and APIs (web/routes.py), with
                    their form-state middleware (aiohttp-session) scoped to
                    the two forms
    everything else the proxy pipeline (proxy/pipeline.handle), no
                    middleware: it reads top to bottom in one function

Clients (the upstream ClientSession, the session store) and every
background task are opened in ``cleanup_ctx`` and closed or cancelled there,
so tests and workers get the same lifecycle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from .audit.stats import keep_sampling
from .audit.trail import AuditTrail
from .audit.versions import note_config, note_users
from .security_headers import add_security_headers
from .proxy.access import Router
from .auth.assertion import AssertionSigner, load_or_create_key
from .config import Config, IdentityHeaders, origin_of
from .proxy.headers import fold
from .proxy.pipeline import handle
from .proxy.forward import ResponseGuard, new_client_session
from .proxy.monitor import script_tag
from .proxy.ratelimit import Limiter, ProxyLimits
from .auth.cookies import NOTICE_COOKIE, DeviceCookie
from .auth.devices import warm_up
from .auth.geo import Locator
from .auth.sessions import USERS_FILE, SessionService
from .auth.tokens import Tokens
from .state import GATEWAY, Background, Gateway
from .store import USER_DISABLED, SessionStore, StoreUnavailable, create_store
from .auth.users import UserDirectory
from .web.routes import FORM_COOKIE, add_gateway_routes
from . import logs, metrics

log = logging.getLogger("gateway")


def create_app(config: Config, store: SessionStore | None = None,
               clock: Callable[[], float] = time.time) -> web.Application:
    """Build one worker's application; ``store`` and ``clock`` are for tests."""
    # client_max_size bounds what the gateway's own pages read (forms, JSON);
    # proxied bodies stream and never count against it.
    # keepalive_timeout doubles as the header-read timeout: aiohttp closes a
    # connection whose next request is still incomplete when it runs out.
    app = web.Application(handler_args={"max_field_size": 64 * 2**10,
                                        "max_line_size": 16 * 2**10,
                                        "keepalive_timeout": config.limits.header_timeout},
                          client_max_size=64 * 2**10)
    signer = AssertionSigner(load_or_create_key(config.assertion_key_file),
                             issuer=config.public_url, lifetime=config.assertion.lifetime)
    own_cookies = frozenset({config.cookie_name, FORM_COOKIE, NOTICE_COOKIE,
                             config.device_cookie_name})
    users = UserDirectory(config.users_file)
    locator = Locator(config.geoip_database) if config.geoip_database else None

    async def resources(app: web.Application) -> AsyncIterator[None]:
        session_store = store or create_store(config.session, clock)
        background = Background()
        client = new_client_session()
        limiter = Limiter(session_store, clock)
        gw = Gateway(
            config=config, router=Router(config.upstreams), users=users,
            store=session_store,
            sessions=SessionService(config, session_store, users, Tokens(config.secret), clock,
                                    locator),
            signer=signer, client=client, background=background,
            strip_headers=frozenset(fold(n) for n in
                                    (*config.headers.names(), *IdentityHeaders().names())),
            own_cookies=own_cookies,
            response_guard=ResponseGuard(own_cookies),
            public_origin=origin_of(config.public_url),
            locator=locator,
            monitor_tag=script_tag(config.prefix),
            audit=AuditTrail(config, session_store, background.spawn, client),
            devices=DeviceCookie(config.secret, config.throttle.device_cookie_lifetime, clock),
            limiter=limiter,
            rate_limits=ProxyLimits(config.rate_limits, limiter) if config.rate_limits
            else None)
        app[GATEWAY] = gw
        gw.sessions.events.subscribe(gw.audit.record)
        if config.metrics.enabled:
            gw.sessions.events.subscribe(metrics.on_event)
            background.spawn(metrics.keep_flushing(), "metrics")
        if config.access_log:
            background.spawn(logs.LINES.keep_flushing(), "access log")
        users.on_lost = lambda keys: background.spawn(_end_sessions_of(gw, keys),
                                                      "end sessions of lost users")
        users.on_reload = lambda: background.spawn(
            note_users(session_store, gw.sessions.events, users, clock), "users version")
        background.spawn(note_config(session_store, gw.sessions.events, config, clock),
                         "config version")
        background.spawn(note_users(session_store, gw.sessions.events, users, clock),
                         "users version")
        background.spawn(gw.sessions.follow_revocations(), "revocation feed")
        background.spawn(limiter.keep_syncing(), "rate limit counts")
        background.spawn(_watch_users_file(users), "users file")
        background.spawn(keep_sampling(session_store, config.session.idle_timeout, clock),
                         "active sessions sampler")
        # ua-parser loads its rules on first use (0.2 s): not on the event loop.
        background.spawn(asyncio.to_thread(warm_up), "user-agent rules")
        try:
            yield
        finally:
            # What the audit trail still holds is written, within bounds:
            # nothing may hold up a shutdown.
            try:
                await asyncio.wait_for(gw.audit.flush(), 5)
            except TimeoutError:
                log.error("audit: events still queued at shutdown were not written")
            try:        # this worker's last counts, for the workers that go on
                await asyncio.wait_for(limiter.sync(), 2)
            except (TimeoutError, StoreUnavailable):
                pass
            except Exception:       # nothing may stop the rest of the shutdown
                log.exception("rate limits: the last sync failed")
            await background.close()
            gw.audit.close()
            await client.close()
            await session_store.close()
            users.close()
            if locator is not None:
                locator.close()

    app.cleanup_ctx.append(resources)
    add_gateway_routes(app, config)
    add_security_headers(app, config)
    # [\s\S]: a decoded path may hold a newline, which '.' would not match.
    app.router.add_route("*", r"/{path:[\s\S]*}", handle)
    return app


# How often a worker re-reads a changed users file with no request asking.
USERS_POLL = 2.0


async def _watch_users_file(users: UserDirectory) -> None:
    """Requests re-check the file anyway; this ends a disabled user's sessions
    even when nobody makes a request."""
    while True:
        await asyncio.sleep(USERS_POLL)
        users.all()


async def _end_sessions_of(gw: Gateway, keys: set[str]) -> None:
    """Users removed or disabled in the users file lose every session."""
    for key in keys:
        try:
            # Every worker reloads the file; the one that ends the sessions says so.
            if ended := await gw.sessions.end_all(key, USER_DISABLED, USERS_FILE):
                log.info("user %s disabled or removed: %d sessions ended", key, ended)
        except StoreUnavailable:
            log.warning("could not end sessions of disabled user %s: store unavailable", key)
