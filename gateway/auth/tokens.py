"""The session cookie's value: a JWT that only *names* a server-side session.

HS256 with ``secret``, algorithm pinned, ``exp`` = the session's absolute
expiry. A token verified once is remembered by its exact value, so the hot
path does not check the signature again on every request; the caller still
checks expiry, against the injectable clock.
"""

from __future__ import annotations

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..store import Session

_MAX_REMEMBERED = 10_000


def derive_key(secret: str, purpose: bytes) -> bytes:
    """A key derived from ``secret`` for ``purpose`` and used for nothing else."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=purpose).derive(secret.encode())


class Tokens:
    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._claims: dict[str, tuple[str, str, float]] = {}

    def issue(self, session: Session) -> str:
        return jwt.encode({"sid": session.id, "sub": session.username,
                           "iat": int(session.created_at), "exp": int(session.expires_at)},
                          self._secret, algorithm="HS256")

    def read(self, token: str) -> tuple[str, str, float] | None:
        """``(username, sid, exp)`` of a token we signed; None for anything
        else. The caller judges ``exp``: an expired token still names its
        session, so that the session's end can be recorded."""
        hit = self._claims.get(token)
        if hit is None:
            try:
                claims = jwt.decode(token, self._secret, algorithms=["HS256"],
                                    options={"require": ["exp", "sid", "sub"],
                                             "verify_exp": False})
            except jwt.InvalidTokenError:
                return None
            sid, sub, exp = claims["sid"], claims["sub"], claims["exp"]
            if not isinstance(sid, str) or not isinstance(sub, str) or not sid or not sub \
                    or isinstance(exp, bool) or not isinstance(exp, (int, float)):
                return None
            if len(self._claims) >= _MAX_REMEMBERED:
                self._claims.clear()
            hit = self._claims[token] = (sub, sid, float(exp))
        return hit
