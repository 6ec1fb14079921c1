"""The session cookie's value: a JWT that only *names* a server-side session.

HS256 with ``secret``, algorithm pinned, ``exp`` = the session's absolute
expiry. A token verified once is remembered by its exact value, so the hot
path does not check the signature again on every request; expiry still is
checked, against the injectable clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt

from ..store import Session

_MAX_REMEMBERED = 10_000


class BadToken(Exception):
    """The token is not one of ours, or is malformed; ``expired`` when only its time is up."""

    def __init__(self, expired: bool = False) -> None:
        super().__init__("expired" if expired else "invalid")
        self.expired = expired


class Tokens:
    def __init__(self, secret: str, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._clock = clock
        self._claims: dict[str, tuple[str, str, float]] = {}

    def issue(self, session: Session) -> str:
        return jwt.encode({"sid": session.id, "sub": session.username,
                           "iat": int(session.created_at), "exp": int(session.expires_at)},
                          self._secret, algorithm="HS256")

    def read(self, token: str) -> tuple[str, str]:
        """``(username, sid)``, or BadToken."""
        hit = self._claims.get(token)
        if hit is None:
            try:
                claims = jwt.decode(token, self._secret, algorithms=["HS256"],
                                    options={"require": ["exp", "sid", "sub"],
                                             "verify_exp": False})
            except jwt.InvalidTokenError:
                raise BadToken() from None
            sid, sub, exp = claims["sid"], claims["sub"], claims["exp"]
            if not isinstance(sid, str) or not isinstance(sub, str) or not sid or not sub \
                    or isinstance(exp, bool) or not isinstance(exp, (int, float)):
                raise BadToken()
            if len(self._claims) >= _MAX_REMEMBERED:
                self._claims.clear()
            hit = self._claims[token] = (sub, sid, float(exp))
        if hit[2] <= self._clock():
            raise BadToken(expired=True)
        return hit[0], hit[1]
