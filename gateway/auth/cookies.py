"""The gateway's cookies as the browser sees them.

The session cookie is HttpOnly, SameSite=Lax, Path=/, Secure (with the
``__Host-`` name, or ``__Secure-`` when ``cookie.domain`` shares it with
sibling hosts) on https, and persistent only with "remember me". The
notice cookie tells the login page, once, why the user has to sign in again.
The device cookie remembers which accounts this browser signed in as, which
exempts it from their per-account throttle block (throttle.py).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import jwt
from aiohttp import web

from ..config import Config
from .throttle import account_tag
from .tokens import derive_key

# The accounts a device cookie remembers, most recent first.
DEVICE_ACCOUNTS = 10

NOTICE_COOKIE = "gateway_notice"


def set_session_cookie(response: web.StreamResponse, config: Config, token: str,
                       max_age: int | None) -> None:
    response.set_cookie(config.cookie_name, token, path="/", max_age=max_age, httponly=True,
                        samesite="Lax", secure=config.secure_cookies,
                        domain=config.cookie.domain)


def clear_session_cookie(response: web.StreamResponse, config: Config) -> None:
    response.del_cookie(config.cookie_name, path="/", httponly=True, samesite="Lax",
                        secure=config.secure_cookies, domain=config.cookie.domain)


def set_notice(response: web.StreamResponse, config: Config, notice: str) -> None:
    response.set_cookie(NOTICE_COOKIE, notice, path=config.prefix, max_age=300,
                        httponly=True, samesite="Lax", secure=config.secure_cookies)


class DeviceCookie:
    """Which accounts this browser has signed in as (their tags) and a random
    id for the browser, in an HS256 JWT under a key derived from ``secret``
    for this alone, for ``throttle.device_cookie_lifetime``; HttpOnly,
    SameSite=Strict, scoped to the prefix. It outlives sign-outs: that it
    was signed in here before is what it says."""

    def __init__(self, secret: str, lifetime: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = derive_key(secret, b"gateway device cookie")
        self.lifetime = lifetime
        self._clock = clock

    def _claims(self, value: str | None) -> tuple[str, list[str]] | None:
        if not value or len(value) > 4096:
            return None
        try:
            claims = jwt.decode(value, self._key, algorithms=["HS256"],
                                options={"require": ["exp", "a", "d"], "verify_exp": False})
        except jwt.InvalidTokenError:
            return None
        device, accounts, exp = claims["d"], claims["a"], claims["exp"]
        if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp <= self._clock():
            return None
        if not isinstance(device, str) or not isinstance(accounts, list) or \
                not all(isinstance(a, str) for a in accounts):
            return None
        return device, accounts[:DEVICE_ACCOUNTS]

    def device_for(self, value: str | None, username: str) -> str | None:
        """The browser's id if its cookie says it signed in as ``username``."""
        claims = self._claims(value)
        return claims[0] if claims and account_tag(username) in claims[1] else None

    def issue(self, value: str | None, username: str) -> str:
        """The cookie again, with ``username`` first and a fresh lifetime."""
        device, accounts = self._claims(value) or (secrets.token_urlsafe(16), [])
        tag = account_tag(username)
        accounts = [tag] + [a for a in accounts if a != tag]
        return jwt.encode({"d": device, "a": accounts[:DEVICE_ACCOUNTS],
                           "exp": int(self._clock() + self.lifetime)},
                          self._key, algorithm="HS256")

    def set(self, response: web.StreamResponse, config: Config, value: str) -> None:
        response.set_cookie(config.device_cookie_name, value, path=config.prefix,
                            max_age=int(self.lifetime), httponly=True, samesite="Strict",
                            secure=config.secure_cookies)
