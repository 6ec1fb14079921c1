"""The second factor: TOTP codes (RFC 6238, with ``pyotp``) and recovery codes.

A user's secret comes from the operator (``totp_secret`` in the users
file) or from enrolment on the gateway's own page; an enrolled secret is
kept in the store encrypted (AES-GCM, a key derived from ``secret``, bound
to the user, so a record copied to another user does not decrypt). A code
is accepted within one 30-second step either side of now, and each step at
most once per user (RFC 6238 section 5.2): a code seen over a shoulder or
in a log cannot be used again, nor can an older one once a newer one was.

Ten recovery codes are made at enrolment and shown once. They are random
(50 bits each), so they are kept as keyed hashes (HMAC-SHA256), not slow
password hashes: nothing short of the key makes a guess checkable offline,
and online guesses are throttled like passwords (auth/throttle.py). Each
works once.

A sign-in waiting for its code is held in the store (``hold``), encrypted,
for at most ``PENDING_FOR`` seconds; the browser holds only its random id,
in the encrypted form cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..config import Config
from ..store import SessionStore
from .tokens import derive_key
from .users import User

log = logging.getLogger("gateway.mfa")

STEP = 30                 # seconds per code (RFC 6238's default; every app's)
DIGITS = 6
PENDING_FOR = 300.0       # a sign-in waits this long for its code, at most
RECOVERY_CODES = 10
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"    # no 0/o, 1/l/i: read off paper
_CODE_LENGTH = 10                               # 10 of 31 symbols: about 50 bits


class OtpInvalid(Exception):
    """A one-time code that is wrong, spent, or cannot be checked."""


class SecretUnreadable(OtpInvalid):
    """An enrolled secret that does not decrypt: ``secret`` changed since, or
    the record was tampered with. The sign-in fails closed."""


def _normalise_code(code: str) -> str:
    return "".join(c for c in code.lower() if c.isalnum())


@dataclass(frozen=True)
class Checked:
    """How a one-time code was accepted."""
    method: str               # "totp" | "recovery"
    codes_left: int | None = None


class SecondFactor:
    """Policy, secrets and codes. ``clock`` is the gateway's (injectable)."""

    def __init__(self, config: Config, store: SessionStore,
                 clock: Callable[[], float]) -> None:
        self.policy = config.mfa.totp
        self.roles = frozenset(config.mfa.required_for_roles)
        # Whether the policy ever demands a factor (asked on every request).
        self._demands = self.policy == "required" or self.enabled and bool(self.roles)
        self.issuer = config.mfa.issuer or urlsplit(config.public_url).hostname or "gateway"
        self.store = store
        self.clock = clock
        self._secrets = AESGCM(derive_key(config.secret, b"gateway totp secrets"))
        self._pending = AESGCM(derive_key(config.secret, b"gateway pending sign-ins"))
        self._codes_key = derive_key(config.secret, b"gateway recovery codes")

    @property
    def enabled(self) -> bool:
        return self.policy != "off"

    def required(self, user: User) -> bool:
        """Whether the user must have a second factor (and enrol at sign-in if not)."""
        return self._demands and (self.policy == "required"
                                  or not self.roles.isdisjoint(user.roles))

    async def secret_of(self, user: User) -> str | None:
        """The user's TOTP secret: the operator's, else the enrolled one; None
        if neither. SecretUnreadable when the enrolled one does not decrypt."""
        if user.totp_secret:
            return user.totp_secret
        enrolment = await self.store.mfa_get(user.key)
        if enrolment is None:
            return None
        return self._decrypt(user.key, enrolment.secret)

    async def has_factor(self, user: User) -> bool:
        return bool(user.totp_secret) or await self.store.mfa_get(user.key) is not None

    # -- codes ---------------------------------------------------------------
    async def check(self, user: User, secret: str, code: str) -> Checked | None:
        """Accept a TOTP code (once per step) or a recovery code (once)."""
        typed = _normalise_code(code)[:64]
        if typed.isdigit() and len(typed) == DIGITS:
            step = self.matching_step(secret, typed)
            if step is not None and await self.store.mfa_use_step(user.key, step, PENDING_FOR):
                return Checked("totp")
            return None
        if user.totp_secret or not typed:
            return None          # recovery codes come with enrolment only
        left = await self.store.mfa_use_code(user.key, self._digest(user.key, typed))
        return None if left is None else Checked("recovery", left)

    def matching_step(self, secret: str, code: str) -> int | None:
        """The time step (now, or one either side) whose code this is, the
        latest if several; every candidate is compared in constant time."""
        totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP)
        now = int(self.clock() // STEP)
        found = None
        for step in (now - 1, now, now + 1):
            if hmac.compare_digest(totp.generate_otp(step).encode(), code.encode()):
                found = step
        return found

    # -- enrolment -------------------------------------------------------------
    @staticmethod
    def new_secret() -> str:
        return pyotp.random_base32(32)              # 160 bits, RFC 4226's advice

    def provisioning_uri(self, user: User, secret: str) -> str:
        return pyotp.TOTP(secret, digits=DIGITS, interval=STEP).provisioning_uri(
            name=user.username, issuer_name=self.issuer)

    async def enrol(self, user: User, secret: str) -> list[str] | None:
        """Save the user's new secret; their recovery codes, to be shown once,
        or None if they had a factor already."""
        if user.totp_secret:
            return None
        codes: list[str] = []
        while len(codes) < RECOVERY_CODES:
            made = "".join(secrets.choice(_ALPHABET) for _ in range(_CODE_LENGTH))
            if not made.isdigit() and made not in codes:     # six digits are a TOTP code
                codes.append(made)
        saved = await self.store.mfa_enrol(
            user.key, self._encrypt(user.key, secret),
            [self._digest(user.key, c) for c in codes], self.clock())
        return [f"{c[:5]}-{c[5:]}" for c in codes] if saved else None

    async def reset(self, username: str) -> bool:
        return await self.store.mfa_reset(username)

    # -- a sign-in waiting for its code ---------------------------------------------
    async def hold(self, data: dict[str, Any], purpose: str, pid: str | None = None) -> str:
        """Keep ``data`` (JSON-able) for ``purpose`` ("login": a sign-in
        waiting for its code; "enrol": a secret being enrolled) until its
        ``exp``, at most PENDING_FOR seconds from now; its random id (``pid``:
        under that one again, keeping its ``exp``)."""
        pid = pid or secrets.token_urlsafe(32)
        # The end is sealed in too: the store's TTL only collects the garbage.
        now = self.clock()
        exp = min(float(data.get("exp", now + PENDING_FOR)), now + PENDING_FOR)
        sealed = self._seal(self._pending, f"{purpose}:{pid}", json.dumps({**data, "exp": exp}))
        await self.store.hold(f"{purpose}:{pid}", sealed, max(1.0, exp - now))
        return pid

    async def held(self, pid: str, purpose: str) -> dict[str, Any] | None:
        return self._unseal_pending(f"{purpose}:{pid}",
                                    await self.store.held(f"{purpose}:{pid}"))

    async def release(self, pid: str, purpose: str) -> dict[str, Any] | None:
        """The held value, forgotten in the same step: it is used once."""
        return self._unseal_pending(f"{purpose}:{pid}",
                                    await self.store.release(f"{purpose}:{pid}"))

    def _unseal_pending(self, bound_to: str, sealed: str | None) -> dict[str, Any] | None:
        if sealed is None:
            return None
        try:
            data = json.loads(self._unseal(self._pending, bound_to, sealed))
        except (InvalidTag, ValueError):
            return None
        exp = data.get("exp") if isinstance(data, dict) else None
        if not isinstance(exp, (int, float)) or exp <= self.clock():
            return None
        return data

    # -- encryption --------------------------------------------------------------
    def _encrypt(self, username: str, secret: str) -> str:
        return self._seal(self._secrets, username, secret)

    def _decrypt(self, username: str, sealed: str) -> str:
        try:
            return self._unseal(self._secrets, username, sealed)
        except (InvalidTag, ValueError):
            log.error("the enrolled second factor of %s does not decrypt (was `secret` "
                      "changed?); its sign-ins fail until `gateway totp reset --user %s`",
                      username, username)
            raise SecretUnreadable(username) from None

    @staticmethod
    def _seal(aead: AESGCM, bound_to: str, text: str) -> str:
        nonce = os.urandom(12)
        return base64.urlsafe_b64encode(
            nonce + aead.encrypt(nonce, text.encode(), bound_to.encode())).decode()

    @staticmethod
    def _unseal(aead: AESGCM, bound_to: str, sealed: str) -> str:
        raw = base64.urlsafe_b64decode(sealed.encode())
        if len(raw) < 13:
            raise ValueError("too short")
        return aead.decrypt(raw[:12], raw[12:], bound_to.encode()).decode()

    def _digest(self, username: str, code: str) -> str:
        return hmac.new(self._codes_key, f"{username}\n{code}".encode(),
                        hashlib.sha256).hexdigest()[:40]
