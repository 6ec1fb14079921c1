"""The signed identity assertion upstreams can verify (ES256, keys at jwks.json).

Identity headers are only trustworthy if nothing but the gateway can reach
the upstream. The assertion lets an upstream check for itself: a short-lived
JWT signed with a key that only the gateway holds. The key is read from
``assertion.key_file``, or created there (mode 0600) on first start.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from ..config import ConfigError


def check_key_file(path: Path) -> None:
    """What ``load_or_create_key`` would fail on, found before anything starts
    (check-config, and run before binding): a key that exists must be readable,
    even in a read-only folder; a missing one is created, so its folder must be
    writable by this user."""
    if path.exists():
        _read_key(path)
    elif not path.parent.is_dir():
        raise ConfigError([_cannot_create(path, f"the folder {path.parent} does not exist")])
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError([_cannot_create(path, f"the folder {path.parent} is not writable")])


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load the PEM key, creating it atomically if absent (workers race safely)."""
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigError([_cannot_create(path, exc.strerror)]) from None
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
    return _read_key(path)


def _cannot_create(path: Path, reason: str) -> str:
    return (f"assertion.key_file: cannot create {path} ({reason}); the key is created on "
            "first start, so set assertion.key_file to a file in a folder the gateway can "
            "write (in the Docker image: /var/lib/gateway/assertion-key.pem), or put an "
            "existing key there")


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError([f"assertion.key_file: cannot read a PEM private key from {path} ({exc})"]) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError([f"assertion.key_file: {path} must hold a P-256 (ES256) private key"])
    return key


class AssertionSigner:
    """Signs assertions; one per (session, upstream) is reused for half its life.

    ES256 signing is the most expensive step of a proxied request, and the
    claims only change when the user does, so the cache key includes them.
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey, issuer: str, lifetime: float) -> None:
        self._key = key
        self.issuer = issuer
        self.lifetime = int(lifetime)
        jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
        self.kid = _thumbprint(jwk)
        self._jwks = {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}]}
        self._cache: dict[tuple[Any, ...], tuple[float, str]] = {}

    def jwks(self) -> dict[str, Any]:
        return self._jwks

    def sign(self, *, audience: str, subject: str, email: str, name: str,
             roles: tuple[str, ...], sid: str) -> str:
        now = time.time()
        cache_key = (sid, audience, subject, email, name, roles)
        hit = self._cache.get(cache_key)
        if hit and hit[0] > now:
            return hit[1]
        iat = int(now)
        token = jwt.encode(
            {"iss": self.issuer, "aud": audience, "sub": subject, "email": email,
             "name": name, "roles": list(roles), "sid": sid,
             "iat": iat, "nbf": iat, "exp": iat + self.lifetime},
            self._key, algorithm="ES256", headers={"kid": self.kid})
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[cache_key] = (iat + self.lifetime / 2, token)
        return token


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 key id, so the kid is stable for one key across restarts."""
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")},
                           separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
