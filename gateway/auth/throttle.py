"""Login throttling that cannot lock people out (OWASP's "device cookies").

Failed sign-ins are counted in the store, so every worker and instance
shares them, under three keys, each with its own limit (``throttle``):

- pair: one account from one address, someone guessing at a keyboard;
- ip: one address across accounts, credential stuffing and spraying;
- account: one account across addresses. A browser that has signed in as
  that account before carries a signed device cookie and is exempt, so
  whoever floods an account from elsewhere cannot lock its owner out of
  their own browser.

The blocks are checked before the password hash is computed, so a blocked
guesser costs no CPU; the answer then waits as long as a verification
takes, so it is no faster than a refusal. A sign-in that works resets its
pair's count. Accounts are keyed by a hash of the name as typed
(canonical), so unknown names are throttled like real ones; IPv6 addresses
by their /64. The device cookie is auth/cookies.py's.
"""

from __future__ import annotations

import hashlib
import ipaddress

from ..config import ThrottleConfig
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

    def strikes(self, username: str, ip: str, known_device: bool) -> list[Strike]:
        c, tag, ip = self.config, account_tag(username), address_key(ip)
        user = canonical_username(username)[:128]
        out = [Strike(f"pair:{tag}:{ip}", c.pair.failures, c.pair.window, c.pair.block,
                      {"kind": "pair", "user": user, "ip": ip}),
               Strike(f"ip:{ip}", c.ip.failures, c.ip.window, c.ip.block,
                      {"kind": "ip", "ip": ip})]
        if not known_device:
            out.append(Strike(f"account:{tag}", c.account.failures, c.account.window,
                              c.account.block, {"kind": "account", "user": user}))
        return out

    async def blocked_for(self, username: str, ip: str, known_device: bool) -> float:
        """Seconds until this sign-in may be tried (0: now)."""
        return await self.store.throttle_check(
            [s.key for s in self.strikes(username, ip, known_device)])

    async def failed(self, username: str, ip: str, known_device: bool) -> list[Block]:
        """Count a failure; the blocks it started (each an audit event)."""
        return await self.store.throttle_fail(self.strikes(username, ip, known_device))

    async def succeeded(self, username: str, ip: str) -> None:
        await self.store.throttle_reset([self.strikes(username, ip, True)[0].key])
