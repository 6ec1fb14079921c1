"""Login throttling that cannot lock people out (OWASP's "device cookies").

Failed sign-ins are counted in the store, so every worker and instance
shares them, under three keys, each with its own limit (``throttle``):

- pair: one account from one address, someone guessing at a keyboard;
- ip: one address across accounts, credential stuffing and spraying;
- account: one account across addresses.

A browser that has signed in as the account before carries a signed device
cookie (auth/cookies.py) and is counted under that device alone, so
neither an attacker flooding the account from elsewhere nor one sharing its
owner's address can lock the owner out of their own browser.

Blocks are checked before the password hash is computed, and an attempt is
held as in flight meanwhile, atomically per key: no more attempts go on at
once than failures are left before the block, so a blocked guesser costs no
CPU and a burst cannot slip past the limit (the others wait a second). A
refused answer waits as long as a verification takes, so it is no faster
than a refusal. A sign-in that works resets its pair's count. Accounts are
keyed by a hash of the name as typed (canonical), so unknown names are
throttled like real ones; IPv6 addresses by their /64 (a /48 holder still
gets 65,536 address budgets: not built).
"""

from __future__ import annotations

import hashlib
import ipaddress

from ..config import ThrottleConfig
from ..metrics import THROTTLED
from ..store import Block, SessionStore, Strike
from .users import canonical_username


class Throttled(Exception):
    """A block is in force: answer 429 with ``Retry-After``."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def account_tag(username: str) -> str:
    """A name as typed, canonical, as a fixed-length key (no PII in keys)."""
    return hashlib.sha256(canonical_username(username).encode()).hexdigest()[:20]


def address_key(ip: str) -> str:
    """An IPv4 address as it is; an IPv6 address as its /64, which one
    subscriber usually holds whole (else a guesser could use a new address
    for every try)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class LoginThrottle:
    def __init__(self, config: ThrottleConfig, store: SessionStore) -> None:
        self.config = config
        self.store = store

    def strikes(self, username: str, ip: str, device: str | None) -> list[Strike]:
        """The keys an attempt counts under. From a browser whose device cookie
        vouches for the account (``device``: its id), only that device's own
        key, with the pair's limits: neither the address (a NAT shared with an
        attacker) nor the account (flooded from elsewhere) can lock it out,
        and a stolen device cookie buys no more guesses than a pair."""
        c, tag, ip = self.config, account_tag(username), address_key(ip)
        user = canonical_username(username)[:128]
        if device is not None:
            return [Strike(f"device:{device}:{tag}", c.pair.failures, c.pair.window,
                           c.pair.block, {"kind": "device", "user": user})]
        return [Strike(f"pair:{tag}:{ip}", c.pair.failures, c.pair.window, c.pair.block,
                       {"kind": "pair", "user": user, "ip": ip}),
                Strike(f"ip:{ip}", c.ip.failures, c.ip.window, c.ip.block,
                       {"kind": "ip", "ip": ip}),
                Strike(f"account:{tag}", c.account.failures, c.account.window,
                       c.account.block, {"kind": "account", "user": user})]

    def session_strikes(self, username: str, session: str,
                        kind: str = "session") -> list[Strike]:
        """A password (or, ``kind`` "code", a one-time code) sent within a
        session (a fingerprint of it): that session's own key with the
        pair's limits, wherever it comes from. Codes and passwords count
        apart: a right password must not reset the count of wrong codes."""
        c = self.config
        return [Strike(f"{kind}:{session}", c.pair.failures, c.pair.window, c.pair.block,
                       {"kind": kind, "user": canonical_username(username)[:128]})]

    def code_strikes(self, username: str, device: str | None) -> list[Strike]:
        """A one-time code, after the right password: per account (whoever
        sends it knows the password, from wherever), or from a browser whose
        device cookie vouches for the account, that device's own; the
        pair's limits either way."""
        c, tag = self.config, account_tag(username)
        info = {"kind": "code", "user": canonical_username(username)[:128]}
        key = f"code:{tag}" if device is None else f"code-device:{device}:{tag}"
        return [Strike(key, c.pair.failures, c.pair.window, c.pair.block, info)]

    async def attempt(self, strikes: list[Strike]) -> float:
        """Before the password (or code) is checked: 0, or the seconds to
        wait (a refused attempt, counted in the metrics here for every caller)."""
        wait = await self.store.throttle_attempt(strikes)
        if wait > 0:
            THROTTLED.inc()
        return wait

    async def failed(self, strikes: list[Strike]) -> list[Block]:
        """A wrong password: the blocks it started (each an audit event)."""
        return await self.store.throttle_settle(strikes, failed=True, reset=[])

    async def succeeded(self, strikes: list[Strike]) -> None:
        """A right password: the pair (or device, or session) starts over."""
        await self.store.throttle_settle(strikes, failed=False, reset=[strikes[0].key])
