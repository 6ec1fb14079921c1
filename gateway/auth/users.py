"""The users file: who may sign in, with which roles; re-read when it changes.

Lookups happen on every authenticated request, so that disabling a user or
removing a role takes effect on that user's very next request. A lookup
costs one ``stat`` of the file; the file is re-parsed only when its size,
inode or modification time changed. A file that turns bad while running
keeps the last good copy (and logs why), so a typo does not lock everyone
out; at start-up a bad file is a config error.

Password checks run argon2id in a thread pool: the C code releases the GIL,
so logins in flight never block the event loop. Those threads also run at
the lowest CPU priority (``nice`` 19, per thread on Linux): argon2 is meant
to be costly, and on a busy machine that cost must come out of sign-in
latency, not out of the proxied traffic competing for the same cores.
Unknown and disabled users are verified against a dummy hash so their
timing matches a real check.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

from ..config import ConfigError, Section, bad_role, read_yaml

log = logging.getLogger("gateway.users")

_MIN_SECRET_BITS = 128        # a TOTP secret's, RFC 4226 section 4, R6


@dataclass(frozen=True)
class User:
    username: str
    password_hash: str
    email: str = ""
    name: str = ""
    roles: tuple[str, ...] = ()
    disabled: bool = False
    # Operator-provisioned TOTP secret (base32), or "" (auth/totp.py).
    totp_secret: str = field(default="", repr=False)

    @property
    def key(self) -> str:
        return canonical_username(self.username)

    def public(self) -> dict[str, Any]:
        """What the APIs and identity headers reveal (never the hash)."""
        return {"username": self.username, "email": self.email, "name": self.name,
                "roles": list(self.roles)}


def canonical_username(username: str) -> str:
    """Usernames match case-insensitively and after trimming."""
    return username.strip().casefold()


def normalise_secret(text: str) -> str:
    """A base32 secret as written (spaces, lower case, padding allowed); ValueError if bad."""
    cleaned = "".join(text.split()).upper().rstrip("=")
    try:
        raw = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (binascii.Error, ValueError):
        raise ValueError("must be a base32 secret (A-Z, 2-7)") from None
    if len(raw) * 8 < _MIN_SECRET_BITS:
        raise ValueError(f"must hold at least {_MIN_SECRET_BITS} bits "
                         f"({-(-_MIN_SECRET_BITS // 5)} base32 characters)")
    return cleaned


def parse_users(data: Any, where: str) -> dict[str, User]:
    """Validate a users document; ConfigError lists every problem."""
    problems: list[str] = []
    top = Section(data, "", problems)
    if isinstance(data, dict) and data.get("users") is None or data is None:
        # An empty or truncated file (an editor mid-write) must not mean "no users".
        top.problem("users", "is required (write 'users: []' for none)")
    users: dict[str, User] = {}
    for entry in top.items("users"):
        username = entry.str("username", "", required=True).strip()
        password_hash = entry.str("password_hash", "", required=True)
        if password_hash and not password_hash.startswith("$argon2id$"):
            entry.problem("password_hash",
                          "must be an argon2id hash from 'gateway hash-password'")
        totp_secret = entry.str("totp_secret", "")
        if totp_secret:
            try:
                totp_secret = normalise_secret(totp_secret)
            except ValueError as exc:
                entry.problem("totp_secret",
                              f"{exc} (user {username!r}; the value is not shown)")
        user = User(username=username, password_hash=password_hash,
                    email=entry.str("email", ""), name=entry.str("name", ""),
                    roles=entry.str_list("roles"), disabled=entry.bool("disabled", False),
                    totp_secret=totp_secret)
        for i, role in enumerate(user.roles):
            if bad_role(role):
                # X-Auth-Roles is a comma-separated list: "staff,admin" would
                # reach the upstream as two roles, one of them never granted.
                entry.problem(f"roles[{i}]", f"role {role!r} of user {username!r} must not "
                                             "contain ',', whitespace or control characters")
        entry.done()
        if username and user.key in users:
            entry.problem("username", f"duplicate user {username!r} (usernames ignore case)")
        elif username:
            users[user.key] = user
    top.done()
    if problems:
        raise ConfigError([f"{where}: {p}" for p in problems])
    return users


def load_users_file(path: Path) -> dict[str, User]:
    data = read_yaml(path, f"users.file: cannot read {path} ({{error}})",
                     f"users.file: {path} is not valid YAML{{where}}")
    return parse_users(data, f"users.file ({path.name})")


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def dummy_hash(users: Any) -> str:
    """A hash to check unknown and disabled users against, as costly as a real one.

    Timing only matches when the argon2 parameters do, so they are taken from
    a user's own hash (hashes made elsewhere may use other parameters).
    """
    for user in users:
        try:
            params = extract_parameters(user.password_hash)
        except (InvalidHashError, ValueError):
            continue
        return PasswordHasher.from_parameters(params).hash(os.urandom(16).hex())
    return PasswordHasher().hash(os.urandom(16).hex())


def _lowest_priority() -> None:
    """Make the calling thread yield the CPU to everything else (Linux: per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: hashing just competes at normal priority


class UserDirectory:
    """In-memory users, refreshed from the file whenever it changes on disk.

    ``on_lost`` is called with the keys of users that were removed or
    disabled by a reload, so their sessions can be ended; ``on_reload``
    after every reload that took.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = path
        self._users = load_users_file(path)
        self._signature = _signature(path)
        self._hasher = PasswordHasher()
        self._dummy_hash = dummy_hash(self._users.values())
        self._pool = ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 2,
                                        thread_name_prefix="argon2",
                                        initializer=_lowest_priority)
        self.on_lost: Callable[[set[str]], None] | None = None
        self.on_reload: Callable[[], None] | None = None
        # How long a check takes lately (moving average, seconds): a refusal
        # that needs no check (a throttled sign-in) waits as long.
        self.typical_check = 0.05

    def get(self, username: str) -> User | None:
        self._refresh()
        return self._users.get(canonical_username(username))

    def all(self) -> list[User]:
        self._refresh()
        return list(self._users.values())

    def _refresh(self) -> None:
        signature = _signature(self.path)
        if signature == self._signature:
            return
        self._signature = signature
        try:
            fresh = load_users_file(self.path)
        except ConfigError as exc:
            log.error("users file not reloaded, keeping the last good copy: %s",
                      "; ".join(exc.problems))
            return
        lost = {key for key, old in self._users.items()
                if not old.disabled and (key not in fresh or fresh[key].disabled)}
        self._users = fresh
        log.info("users file reloaded: %d users", len(fresh))
        if lost and self.on_lost:
            self.on_lost(lost)
        if self.on_reload:
            self.on_reload()

    async def verify(self, username: str, password: str) -> User | None:
        """The user if the password is right and the user may sign in, else None."""
        return (await self.check(username, password))[0]

    async def check(self, username: str, password: str) -> tuple[User | None, str]:
        """``(user, "ok")``, or ``(None, why)``: "unknown_user", "bad_password" or
        "disabled", for the audit trail only, never for the person signing in.

        Every path costs one argon2 verification, so the answer's timing
        does not tell unknown, disabled and wrong-password apart.
        """
        user = self.get(username)
        stored = user.password_hash if user else self._dummy_hash
        loop = asyncio.get_running_loop()
        started = loop.time()
        ok = await loop.run_in_executor(self._pool, self._check, stored, password)
        self.typical_check += (loop.time() - started - self.typical_check) / 16
        if user is None:
            return None, "unknown_user"
        if not ok:
            return None, "bad_password"
        if user.disabled:
            return None, "disabled"
        return user, "ok"

    def _check(self, stored: str, password: str) -> bool:
        # surrogatepass: a lone surrogate (JSON allows one) costs the same
        # full verification as any wrong password, never an error.
        try:
            return self._hasher.verify(stored, password.encode("utf-8", "surrogatepass"))
        except (VerificationError, InvalidHashError):
            return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
