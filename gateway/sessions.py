"""Sessions as the user sees them: sign in, check a cookie, sign out.

The cookie is a JWT (HS256 with ``secret``, algorithm pinned, ``exp`` =
the absolute expiry) that only *names* a server-side session; the store
decides whether it is alive, so revocation is instant.

Sliding idle expiry without a Redis write per request: last-seen is written
only when it is older than ``touch_interval`` (at most a tenth of the idle
timeout). A session therefore ends between ``idle_timeout - touch_interval``
and ``idle_timeout`` after the last request: it can end early by up to one
touch interval, never late.

The hot path does no Redis round trip at all while the revocation feed is
live: verified cookies are remembered (token -> claims, ``exp`` still
checked), and sessions are served from a push-invalidated cache (cache.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import jwt
from aiohttp import web

from .cache import SessionCache
from .config import Config
from .store import (REASON_DISABLED, REASON_LIMIT, REASON_LOGOUT, Session,
                    SessionStore, StoreUnavailable)
from .users import User, UserDirectory

log = logging.getLogger("gateway.sessions")
_MAX_REMEMBERED = 10_000

# Error codes from the contract.
SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
SESSION_EXPIRED = "SESSION_EXPIRED"
SESSION_REVOKED = "SESSION_REVOKED"
JWT_INVALID = "JWT_INVALID"

# What the login page tells a returning user, by the notice an ended session left.
NOTICES = {
    "idle": "Your session expired due to inactivity. Please sign in again.",
    "expired": "Your session has expired. Please sign in again.",
    "signed_out": "You were signed out.",
    "session_limit": "You were signed out because you signed in on too many devices.",
}


class AuthError(Exception):
    """No usable session. ``notice`` (a NOTICES key) explains an ended one."""

    def __init__(self, code: str, notice: str | None = None) -> None:
        super().__init__(code)
        self.code, self.notice = code, notice


@dataclass
class Identity:
    user: User
    session: Session


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class SessionManager:
    def __init__(self, config: Config, store: SessionStore, users: UserDirectory) -> None:
        self.config = config
        self.store = store
        self.users = users
        s = config.session
        self.touch_interval = min(s.touch_interval, s.idle_timeout / 10)
        self.cache = SessionCache(s.cache_ttl)
        self._claims: dict[str, tuple[str, str, float]] = {}
        self._dead: dict[str, tuple[str, str]] = {}

    # -- the cookie ------------------------------------------------------
    def token_for(self, session: Session) -> str:
        return jwt.encode({"sid": session.id, "sub": session.username,
                           "iat": int(session.created_at), "exp": int(session.expires_at)},
                          self.config.secret, algorithm="HS256")

    def read_token(self, token: str) -> tuple[str, str]:
        """``(username, sid)`` from a cookie value, or AuthError.

        A token verified once is remembered by its exact value, so the
        signature is not checked again on every request; expiry still is.
        """
        hit = self._claims.get(token)
        if hit is not None and hit[2] > time.time():
            return hit[0], hit[1]
        try:
            claims = jwt.decode(token, self.config.secret, algorithms=["HS256"],
                                options={"require": ["exp", "sid", "sub"]})
        except jwt.ExpiredSignatureError:
            raise AuthError(SESSION_EXPIRED, "expired") from None
        except jwt.InvalidTokenError:
            raise AuthError(JWT_INVALID) from None
        sid, sub = claims["sid"], claims["sub"]
        if not isinstance(sid, str) or not isinstance(sub, str) or not sid or not sub:
            raise AuthError(JWT_INVALID)
        if len(self._claims) >= _MAX_REMEMBERED:
            self._claims.clear()
        self._claims[token] = (sub, sid, claims["exp"])
        return sub, sid

    def set_cookie(self, response: web.StreamResponse, session: Session) -> None:
        """HttpOnly, SameSite=Lax, Path=/, Secure on https; persistent only if remembered."""
        max_age = int(session.expires_at - time.time()) if session.remember else None
        response.set_cookie(self.config.cookie_name, self.token_for(session), path="/",
                            max_age=max_age, httponly=True, samesite="Lax",
                            secure=self.config.secure_cookies)

    def clear_cookie(self, response: web.StreamResponse) -> None:
        response.del_cookie(self.config.cookie_name, path="/", httponly=True,
                            samesite="Lax", secure=self.config.secure_cookies)

    # -- lifecycle -------------------------------------------------------
    async def login(self, user: User, *, remember: bool, ip: str, user_agent: str) -> Session:
        """A brand-new session (new id every time: no fixation), capped per user."""
        s = self.config.session
        now = time.time()
        session = Session(
            id=secrets.token_urlsafe(32), username=user.key, created_at=now,
            last_seen_at=now,
            expires_at=now + (s.remember_me_timeout if remember else s.absolute_timeout),
            idle_timeout=s.remember_me_idle_timeout if remember else s.idle_timeout,
            remember=remember, login_ip=ip, login_user_agent=user_agent[:512],
            ip=ip, user_agent=user_agent[:512])
        await self.store.create(session)
        if s.max_per_user:
            live = await self.store.user_sessions(user.key)
            for old in [x for x in live if x.id != session.id][:max(0, len(live) - s.max_per_user)]:
                self.cache.drop(old.id)   # this worker at once, not when the feed says so
                await self.store.revoke(user.key, old.id, REASON_LIMIT)
        return session

    async def authenticate(self, token: str | None, *, ip: str, user_agent: str,
                           touch: bool = True, force_touch: bool = False) -> Identity:
        """The identity behind a cookie, or AuthError saying why there is none.

        StoreUnavailable propagates: the caller must fail closed.
        """
        if not token:
            raise AuthError(SESSION_NOT_FOUND)
        username, sid = self.read_token(token)
        dead = self._dead.get(sid)
        if dead is not None:
            raise AuthError(*dead)
        session = await self._lookup(username, sid)
        if session is None:
            reason = await self.store.revocation_reason(username, sid)
            if reason is None:
                raise self._dead_end(sid, SESSION_EXPIRED, "idle")
            raise self._dead_end(sid, SESSION_REVOKED,
                                 reason if reason in NOTICES else "signed_out")
        user = self.users.get(username)
        if user is None or user.disabled:
            self.cache.drop(sid)
            await self.store.revoke(username, sid, REASON_DISABLED)
            raise self._dead_end(sid, SESSION_REVOKED, "signed_out")
        now = time.time()
        if force_touch or (touch and now - session.last_seen_at >= self.touch_interval):
            # A copy: the cached session must only ever say what Redis says,
            # even when this write fails.
            generation = self.cache.generation
            touched = replace(session, last_seen_at=now, ip=ip, user_agent=user_agent[:512])
            if not await self.store.touch(touched):
                self.cache.drop(sid)
                raise self._dead_end(sid, SESSION_EXPIRED, "idle")
            self.cache.put(touched, generation)
            session = touched
        return Identity(user=user, session=session)

    def _dead_end(self, sid: str, code: str, notice: str) -> AuthError:
        """Remember why a session is gone. Ids are never reused and a store
        that cannot answer raises instead, so a gone session stays gone:
        replaying its cookie (an attacker's favourite) costs no Redis call."""
        if len(self._dead) >= _MAX_REMEMBERED:
            self._dead.clear()
        self._dead[sid] = (code, notice)
        return AuthError(code, notice)

    async def _lookup(self, username: str, sid: str) -> Session | None:
        session = self.cache.get(sid)
        if session is not None and session.username == username and session.alive(time.time()):
            return session
        generation = self.cache.generation
        session = await self.store.get(username, sid)
        if session is not None:
            self.cache.put(session, generation)
        return session

    async def follow_revocations(self) -> None:
        """Keep the cache honest for the worker's lifetime (a no-op without a feed)."""
        if self.config.session.cache_ttl <= 0:
            return
        healthy = True

        def ready() -> None:
            nonlocal healthy
            if not healthy:
                log.info("revocation feed restored: session cache back on")
            healthy = True
            self.cache.start()

        while True:
            try:
                await self.store.watch_revocations(ready, self.cache.drop)
            except NotImplementedError:
                return
            except StoreUnavailable as exc:
                # redis-py can turn a cancel that lands on its read timeout into
                # a TimeoutError; shutting down must still end this loop.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError() from None
                if healthy:
                    log.warning("revocation feed lost (%s): sessions are read from the "
                                "store on every request until it is back", exc)
                healthy = False
            finally:
                self.cache.stop()
            await asyncio.sleep(1)

    async def logout(self, identity: Identity) -> None:
        self.cache.drop(identity.session.id)
        await self.store.revoke(identity.session.username, identity.session.id, REASON_LOGOUT)
        self._dead_end(identity.session.id, SESSION_REVOKED, "signed_out")

    def describe(self, identity: Identity) -> dict[str, Any]:
        """The body of ``GET /api/session``."""
        s = identity.session
        now = time.time()
        ends = s.idle_expires_at
        remaining = max(0, int(ends - now))
        return {
            "user": identity.user.public(),
            "session": {
                "id": s.id,
                "created_at": iso(s.created_at),
                "last_seen_at": iso(s.last_seen_at),
                "idle_expires_at": iso(ends),
                "expires_at": iso(s.expires_at),
                "remaining_seconds": remaining,
                "expiring_soon": remaining <= self.config.session.expiring_soon,
                "remember": s.remember,
            },
        }
