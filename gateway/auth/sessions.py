"""The session lifecycle: the one place sessions start and the one place they end.

``start`` makes a session (a new id every time: no fixation) and enforces
``session.max_per_user`` atomically in the store. ``end`` ends one with an
``Ending`` (status and reason) and an actor, whoever asks: logout, the user
on another device, an admin or the CLI, the cap, the users file, or a
timeout observed by ``authenticate``. Ending drops the session from this
worker's cache at once and from every other worker's through the store's
feed, keeps an ended record for ``session.history``, and emits one event.

Sliding idle expiry without a Redis write per request: last-seen is written
only when it is older than ``touch_interval`` (at most a tenth of the idle
timeout). A session therefore ends between ``idle_timeout - touch_interval``
and ``idle_timeout`` after the last request: up to one interval early,
never late. The hot path does no Redis round trip at all while the feed is
live: verified cookies are remembered (tokens.py) and sessions are served
from a push-invalidated cache (cache.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..store import (ABSOLUTE, EXPIRED, IDLE, IP_CHANGED, LOGOUT, RENEWED, REVOKED_BY_ADMIN,
                     REVOKED_BY_USER, SESSION_LIMIT, UA_CHANGED, USER_DISABLED, USER_LOCKED,
                     AtCapacity, Block, Ending, Session, SessionStore, StoreUnavailable, end_if_cancelled)
from ..metrics import cache_hit, cache_miss
from .cache import SessionCache
from .events import (ENDED, LOCKED, LOGGED_OUT_BY_ADMIN, MFA_ENROLLED, MFA_RECOVERY_USED,
                     SIGN_IN_FAILED, STARTED, THROTTLE_BLOCKED, UNLOCKED, Events, SessionEvent,
                     fingerprint)
from .throttle import LoginThrottle, Throttled
from .totp import Checked, OtpInvalid, SecondFactor
from .users import canonical_username
if TYPE_CHECKING:
    from .geo import Locator
    from .security import SecurityWatch
    from .tokens import Tokens
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
    "signed_out_elsewhere": "You were signed out from another device.",
    "admin": "An administrator signed you out.",
    "session_limit": "You were signed out because you signed in on too many devices.",
    "security": "You were signed out because your session was used from another "
                "browser or network. Please sign in again.",
}
_NOTICE_OF = {IDLE.reason: "idle", ABSOLUTE.reason: "expired",
              SESSION_LIMIT.reason: "session_limit", IP_CHANGED.reason: "security",
              UA_CHANGED.reason: "security", REVOKED_BY_USER.reason: "signed_out_elsewhere",
              REVOKED_BY_ADMIN.reason: "admin", USER_LOCKED.reason: "admin"}

# How long a password re-entered for a sensitive action counts, at least.
REENTRY_MIN = 60.0

# Who ended a session when no person did.
SYSTEM = "system"
USERS_FILE = "users-file"


class AuthError(Exception):
    """No usable session. ``notice`` (a NOTICES key) explains an ended one."""

    def __init__(self, code: str, notice: str | None = None) -> None:
        super().__init__(code)
        self.code, self.notice = code, notice


class OtpRequired(Exception):
    """The password was right; the sign-in needs a one-time code, or, with
    ``enrol``, a second factor set up first (the user has none and must)."""

    def __init__(self, user: User, enrol: bool) -> None:
        super().__init__(user.key)
        self.user, self.enrol = user, enrol


@dataclass
class Identity:
    user: User
    session: Session


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def session_times(s: Session) -> dict[str, Any]:
    """What every API shows of a session's life: id, times (ISO 8601 UTC), remember-me."""
    return {"id": s.id, "created_at": iso(s.created_at), "last_seen_at": iso(s.last_seen_at),
            "idle_expires_at": iso(s.idle_expires_at), "expires_at": iso(s.expires_at),
            "remember": s.remember, "mfa": s.mfa}


def new_session_id() -> str:
    """256 random bits from ``secrets``, URL-safe. Never starting with "-", so
    an operator can paste it after ``--id`` (argparse would read it as an
    option); that costs under 0.1 bit."""
    while (sid := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return sid


def refusal_for(ending: Ending) -> AuthError:
    """What a request carrying an ended session's cookie is told."""
    code = SESSION_EXPIRED if ending.status == EXPIRED else SESSION_REVOKED
    return AuthError(code, _NOTICE_OF.get(ending.reason, "signed_out"))


class SessionService:
    """``users`` and ``tokens`` are None only in operator tools (the CLI),
    which start and end sessions but never authenticate a request; they are
    passed in so that such a tool needs no users file and loads no JWT stack
    (nor, with ``watch=False``, the User-Agent parser). The users module
    itself is imported: throttling keys names as it canonicalises them."""

    def __init__(self, config: Config, store: SessionStore, users: UserDirectory | None,
                 tokens: Tokens | None, clock: Callable[[], float] = time.time,
                 locator: Locator | None = None, watch: bool = True) -> None:
        self.config = config
        self.store = store
        self.users = users
        self.clock = clock
        s = config.session
        self.touch_interval = min(s.touch_interval, s.idle_timeout / 10)
        self.cache = SessionCache(s.cache_ttl)
        self.tokens = tokens
        self.events = Events()
        self.throttle = LoginThrottle(config.throttle, store) if config.throttle.enabled \
            else None
        # One-time codes are always throttled (with the pair's limits), even
        # with throttle.enabled off: six digits fall to a few hundred
        # thousand guesses.
        self.code_throttle = self.throttle or LoginThrottle(config.throttle, store)
        self.mfa = SecondFactor(config, store, clock)
        # name and address -> until when their throttled attempts are audited
        self._reported: dict[str, float] = {}
        self.watch: SecurityWatch | None = None
        if watch:
            from .security import SecurityWatch
            self.watch = SecurityWatch(config, store, self.events, locator, clock)
        # sid -> (code, notice) of a session known to be gone. Not the
        # AuthError itself: every raise would add its traceback to it.
        self._dead: dict[str, tuple[str, str | None]] = {}

    # -- start -----------------------------------------------------------
    async def start(self, user: User, *, remember: bool, ip: str, user_agent: str,
                    make_room: bool = False, mfa: Checked | None = None,
                    renewing: Session | None = None) -> Session:
        """A brand-new session. At ``session.max_per_user`` the least recently
        active session ends in the same step, or, with ``on_limit: refuse``,
        AtCapacity is raised and nothing is saved (``make_room``: the user
        asked to end the least recently active one anyway). ``renewing``: a
        session verified further (the second factor), which the new one
        replaces with a new id but the same limits and sign-in."""
        s = self.config.session
        now = self.clock()
        session = Session(
            id=new_session_id(), username=user.key, created_at=now,
            last_seen_at=now,
            expires_at=now + (s.remember_me_timeout if remember else s.absolute_timeout),
            idle_timeout=s.remember_me_idle_timeout if remember else s.idle_timeout,
            remember=remember, login_ip=ip, login_user_agent=user_agent[:512],
            ip=ip, user_agent=user_agent[:512], mfa=mfa is not None)
        if renewing is not None:
            session = replace(session, expires_at=renewing.expires_at,
                              idle_timeout=renewing.idle_timeout, remember=renewing.remember,
                              created_at=renewing.created_at, login_ip=renewing.login_ip,
                              login_user_agent=renewing.login_user_agent,
                              authenticated_at=renewing.authenticated_at or renewing.created_at)
        refuse = s.on_limit == "refuse" and not make_room
        evicted = await self.store.create(session, s.max_per_user, s.history, refuse=refuse)
        details = {"mfa": mfa.method} if mfa else {}
        if renewing is not None:
            details["renewed"] = fingerprint(renewing.id)
        self.events.emit(SessionEvent(STARTED, session, now, actor=user.key, details=details))
        for old in evicted:
            self._ended(old, SESSION_LIMIT, SYSTEM, now)
        if self.watch is not None and renewing is None:     # the same sign-in, renewed
            try:
                await self.watch.at_sign_in(session)
            except StoreUnavailable as exc:
                log.warning("security events of a sign-in of %s not checked: store "
                            "unavailable (%s)", user.key, exc)
        return session

    async def sign_in(self, username: str, password: str, *, remember: bool, ip: str,
                      user_agent: str, make_room: bool = False,
                      replacing: Session | None = None, device: str | None = None,
                      otp: str | None = None) -> tuple[User, Session] | None:
        """Check the password and start a session; None when refused (a wrong
        password, an unknown, disabled or locked user: one answer for all,
        the reason kept for the audit trail). ``replacing``, the caller's
        current session, is signed out first (so it frees its place under
        the cap). Throttled (throttle.py; ``device``: the browser's id when
        its device cookie vouches for this account) and AtCapacity propagate.

        A user with a second factor (totp.py) signs in with a one-time code,
        ``otp``: without one, OtpRequired (the login page then holds the
        sign-in and asks for it, finish_sign_in); a wrong one, OtpInvalid."""
        assert self.users is not None, "not in an operator tool"
        typed = canonical_username(username)[:128]    # the name as typed, for the audit
        throttle = self.throttle
        strikes = throttle.strikes(username, ip, device) if throttle is not None else []
        # Every path asks the store the same things, whatever the answer.
        locked = await self.store.is_locked(typed)
        if throttle is not None:
            wait = await throttle.attempt(strikes)
            if wait > 0:
                self._refused(typed, ip, user_agent, wait)
                await asyncio.sleep(self.users.typical_check)     # as slow as a refusal
                raise Throttled(wait)
        user, why = await self.users.check(username, password)
        if user is not None and locked:
            user, why = None, "locked"
        if user is None:
            self._failed(typed, why, ip, user_agent)
            if throttle is not None:
                self._blocked(await throttle.failed(strikes))
            return None
        if throttle is not None:
            await throttle.succeeded(strikes)
        checked = None
        if self.mfa.enabled:
            secret = await self.mfa.secret_of(user)
            if secret is None and self.mfa.required(user) or secret is not None and not otp:
                raise OtpRequired(user, enrol=secret is None)
            if secret is not None:
                checked = await self._code(user, secret, otp or "", ip, user_agent, device)
        return await self._begin(user, remember=remember, ip=ip, user_agent=user_agent,
                                 make_room=make_room, replacing=replacing, mfa=checked)

    async def finish_sign_in(self, pid: str, held: dict[str, Any], otp: str, *, ip: str,
                             user_agent: str, replacing: Session | None = None,
                             device: str | None = None, make_room: bool = False
                             ) -> tuple[User, Session, list[str] | None] | None:
        """The second step of the sign-in ``held`` under ``pid`` (SecondFactor.hold)
        since its password was right: check the code (against the new secret
        ``s`` when the user is enrolling, which is then saved) and start the
        session; the held sign-in is used up. Also the recovery codes of a new
        enrolment, to be shown once. None when the sign-in is over: finished
        already, or the user can no longer sign in (removed, disabled, locked
        meanwhile). OtpInvalid and Throttled propagate; AtCapacity too, with
        the sign-in held again (its enrolment done) for another code."""
        assert self.users is not None, "not in an operator tool"
        user = self.users.get(str(held.get("u", "")))
        if user is None or user.disabled or await self.store.is_locked(user.key):
            return None
        enrolling = isinstance(held.get("s"), str)
        secret = held["s"] if enrolling else await self.mfa.secret_of(user)
        if secret is None:
            return None             # reset meanwhile: from the start again
        checked = await self._code(user, secret, otp, ip, user_agent, device)
        if await self.mfa.release(pid, "login") is None:
            return None             # another request finished it first
        codes = held.get("c")
        if enrolling:
            codes = await self.mfa.enrol(user, secret)
            if codes is None:
                return None         # enrolled meanwhile, from elsewhere
            self.events.emit(SessionEvent(MFA_ENROLLED, None, self.clock(), actor=user.key,
                                          user=user.key, ip=ip, user_agent=user_agent))
        try:
            begun = await self._begin(user, remember=held.get("r") is True, ip=ip,
                                      user_agent=user_agent,
                                      make_room=make_room or held.get("m") is True,
                                      replacing=replacing, mfa=checked)
        except AtCapacity:
            again = {k: v for k, v in held.items() if k != "s"}
            if codes:
                again["c"] = codes
            await self.mfa.hold(again, "login", pid)
            raise
        return None if begun is None else (*begun, codes)

    async def _begin(self, user: User, *, remember: bool, ip: str, user_agent: str,
                     make_room: bool, replacing: Session | None,
                     mfa: Checked | None) -> tuple[User, Session] | None:
        if replacing is not None:
            await self.end(replacing.username, replacing.id, LOGOUT, actor=replacing.username)
        session = await self.start(user, remember=remember, ip=ip, user_agent=user_agent,
                                   make_room=make_room, mfa=mfa)
        # A lock that landed while this sign-in was under way ends it too.
        if await self.store.is_locked(user.key):
            await self.end(user.key, session.id, USER_LOCKED, SYSTEM)
            return None
        return user, session

    async def _code(self, user: User, secret: str, code: str, ip: str, user_agent: str,
                    device: str | None, session: Session | None = None) -> Checked:
        """Check a one-time code, throttled like a password: per account (or
        device), or for a code sent within a ``session``, per session, so that
        a stolen cookie cannot block its owner's sign-ins. OtpInvalid if wrong."""
        throttle = self.code_throttle
        if session is None:
            strikes = throttle.code_strikes(user.key, device)
        else:
            strikes = throttle.session_strikes(user.key, fingerprint(session.id), "code")
        wait = await throttle.attempt(strikes)
        if wait > 0:
            raise Throttled(wait)
        checked = await self.mfa.check(user, secret, code)
        if checked is None:
            self._failed(user.key, "bad_otp", ip, user_agent)
            self._blocked(await throttle.failed(strikes))
            raise OtpInvalid("wrong code")
        await throttle.succeeded(strikes)
        if checked.method == "recovery":
            self.events.emit(SessionEvent(
                MFA_RECOVERY_USED, None, self.clock(), actor=user.key, user=user.key, ip=ip,
                user_agent=user_agent, details={"codes_left": str(checked.codes_left)}))
        return checked

    # -- the second factor within a session (the /2fa page) ---------------------------
    async def enrol(self, identity: Identity, secret: str, code: str, *, ip: str,
                    user_agent: str) -> tuple[Identity | None, list[str]] | None:
        """Confirm a new secret with its first code (the caller checked the
        password) and save it; the session is renewed as verified (a new id:
        a cookie copied before does not gain the factor). The new identity
        and the recovery codes (the identity None when the session could not
        go on: ended meanwhile, or the store failed), or None if the user had
        a factor meanwhile. OtpInvalid and Throttled propagate."""
        user = identity.user
        checked = await self._code(user, secret, code, ip, user_agent, None, identity.session)
        codes = await self.mfa.enrol(user, secret)
        if codes is None:
            return None
        self.events.emit(SessionEvent(MFA_ENROLLED, identity.session, self.clock(),
                                      actor=user.key))
        try:
            return await self._renew(identity, checked, ip, user_agent), codes
        except (AuthError, StoreUnavailable):
            return None, codes      # enrolled, but signed out: the codes are shown still

    async def step_up(self, identity: Identity, code: str, *, ip: str,
                      user_agent: str) -> Identity | None:
        """A code for a session signed in without one (before the user
        enrolled, or before a policy asked for it): the session is renewed
        as verified, with a new id. None if the user has no factor;
        OtpInvalid and Throttled propagate."""
        secret = await self.mfa.secret_of(identity.user)
        if secret is None:
            return None
        checked = await self._code(identity.user, secret, code, ip, user_agent, None,
                                   identity.session)
        return await self._renew(identity, checked, ip, user_agent)

    async def _renew(self, identity: Identity, checked: Checked, ip: str,
                     user_agent: str) -> Identity:
        """The session again as verified: a new id, the same limits; the old
        one ends first (so it frees its place under the cap). AuthError if
        it ended meanwhile (revoked, locked): nothing is renewed then."""
        old = identity.session
        if not await self.end(old.username, old.id, RENEWED, actor=old.username):
            raise AuthError(SESSION_REVOKED)
        session = await self.start(identity.user, remember=old.remember, ip=ip,
                                   user_agent=user_agent, make_room=True, mfa=checked,
                                   renewing=old)
        if await self.store.is_locked(identity.user.key):      # as at sign-in
            await self.end(session.username, session.id, USER_LOCKED, SYSTEM)
            raise AuthError(SESSION_REVOKED)
        return Identity(identity.user, session)

    def lacks_mfa(self, identity: Identity) -> bool:
        """Whether the policy (``required``, ``required_for_roles``) demands a
        second factor of this user that the session was not verified with:
        checked on every request, so a role granted or a policy turned on
        later applies to sessions already running."""
        return not identity.session.mfa and self.mfa.required(identity.user)

    def _refused(self, typed: str, ip: str, user_agent: str, wait: float) -> None:
        """A throttled attempt costs its sender nothing, so it is audited once
        per name and address per block (per worker), not once per request."""
        now = self.clock()
        key = f"{typed}\n{ip}"
        if self._reported.get(key, 0.0) > now:
            return
        if len(self._reported) >= _MAX_REMEMBERED:
            self._reported.clear()
        self._reported[key] = now + wait
        self._failed(typed, "throttled", ip, user_agent)

    def _blocked(self, blocks: list[Block]) -> None:
        for block in blocks:
            log.warning("sign-ins blocked (%s) for %d s", block.info["kind"],
                        block.until - self.clock())
            self.events.emit(SessionEvent(
                THROTTLE_BLOCKED, None, self.clock(), actor=SYSTEM,
                user=block.info.get("user", ""), ip=block.info.get("ip", ""),
                details={"kind": block.info["kind"], "until": iso(block.until)}))

    def _failed(self, typed: str, why: str, ip: str, user_agent: str) -> None:
        self.events.emit(SessionEvent(SIGN_IN_FAILED, None, self.clock(), actor=SYSTEM,
                                      reason=why, user=typed, ip=ip,
                                      user_agent=user_agent[:512]))

    # -- admins ------------------------------------------------------------
    async def lock(self, username: str, actor: str) -> int:
        """Lock a user (held in the store until unlocked) and end every session
        of theirs at once; returns how many ended."""
        if await self.store.set_locked(username, True, actor, self.clock()):
            self.events.emit(SessionEvent(LOCKED, None, self.clock(), actor=actor,
                                          user=username))
        return await self.end_all(username, USER_LOCKED, actor)

    async def unlock(self, username: str, actor: str) -> bool:
        changed = await self.store.set_locked(username, False, actor, self.clock())
        if changed:
            self.events.emit(SessionEvent(UNLOCKED, None, self.clock(), actor=actor,
                                          user=username))
        return changed

    async def log_out_user(self, username: str, actor: str) -> int:
        """Force logout: every session of the user, on every worker at once."""
        ended = await self.end_all(username, REVOKED_BY_ADMIN, actor)
        self.events.emit(SessionEvent(LOGGED_OUT_BY_ADMIN, None, self.clock(), actor=actor,
                                      user=username, details={"sessions": str(ended)}))
        return ended

    # -- end -------------------------------------------------------------
    async def end(self, username: str, sid: str, ending: Ending, actor: str) -> bool:
        """End one session; False if it was already gone. Raises StoreUnavailable."""
        self.cache.drop(sid)   # this worker at once, not when the feed says so
        now = self.clock()
        session = await self.store.end(username, sid, ending, actor, now,
                                       self.config.session.history)
        if session is None:
            return False
        self._ended(session, ending, actor, now)
        return True

    async def end_all(self, username: str, ending: Ending, actor: str,
                      keep: str | None = None) -> int:
        """End every live session of a user except ``keep``; returns how many.
        Those already past their time are recorded as the expiry they are."""
        ended = 0
        now = self.clock()
        for session in await self.store.user_sessions(username):
            if session.id == keep:
                continue
            if not session.alive(now):
                await self.end(username, session.id, session.ending(now), SYSTEM)
            elif await self.end(username, session.id, ending, actor):
                ended += 1
        return ended

    def _ended(self, session: Session, ending: Ending, actor: str, now: float) -> None:
        # Logged by the one process that ended it (the store says which).
        log.info("session %s of %s ended: %s (by %s)", fingerprint(session.id),
                 session.username, ending.reason, actor)
        self.cache.drop(session.id)
        self._remember_dead(session.id, refusal_for(ending))
        self.events.emit(SessionEvent(ENDED, session, now, actor=actor,
                                      status=ending.status, reason=ending.reason))

    # -- every request ---------------------------------------------------
    async def authenticate(self, token: str | None, *, ip: str, user_agent: str,
                           touch: bool = True, force_touch: bool = False) -> Identity:
        """The identity behind a cookie, or AuthError saying why there is none.

        StoreUnavailable propagates: the caller must fail closed.
        """
        if not token:
            raise AuthError(SESSION_NOT_FOUND)
        assert self.tokens is not None and self.users is not None, "not in an operator tool"
        claims = self.tokens.read(token)
        if claims is None:
            raise AuthError(JWT_INVALID)
        username, sid, exp = claims
        dead = self._dead.get(sid)
        if dead is not None:
            raise AuthError(*dead)
        now = self.clock()
        # The cookie's own end is the session's absolute end (to the second).
        # Its refusal needs no store; recording it does, when the store answers.
        expired = exp <= now
        if expired:
            try:
                if await self.end(username, sid, ABSOLUTE, SYSTEM):
                    raise refusal_for(ABSOLUTE)
                record = await self.store.ended(username, sid)
            except StoreUnavailable:
                raise refusal_for(ABSOLUTE) from None
            error = refusal_for(ABSOLUTE if record is None
                                else Ending(record.status, record.reason))
            self._remember_dead(sid, error)
            raise error
        session = await self._lookup(username, sid, now)
        if session is None:
            record = await self.store.ended(username, sid)
            # No record at all: it expired long ago (or never was).
            ending = IDLE if record is None else Ending(record.status, record.reason)
            error = refusal_for(ending)
            self._remember_dead(sid, error)
            raise error
        if not session.alive(now):
            ending = session.ending(now)
            await self.end(username, sid, ending, SYSTEM)
            raise refusal_for(ending)
        user = self.users.get(username)
        if user is None or user.disabled:
            await self.end(username, sid, USER_DISABLED, USERS_FILE)
            raise refusal_for(USER_DISABLED)
        # Two string comparisons; only a difference costs more (security.py).
        if (ip != session.ip or user_agent != session.user_agent) and self.watch is not None:
            ending = await self.watch.observe(session, ip, user_agent)
            if ending is not None:
                await self.end(username, sid, ending, SYSTEM)
                raise refusal_for(ending)
        if force_touch or (touch and now - session.last_seen_at >= self.touch_interval):
            # A copy: the cached session must only ever say what the store says,
            # even when this write fails.
            generation = self.cache.generation
            changes = {"last_seen_at": now, "ip": ip, "user_agent": user_agent[:512]}
            touched = replace(session, **changes)
            if not await self.store.touch(touched, changes):
                self.cache.drop(sid)
                error = refusal_for(IDLE)
                self._remember_dead(sid, error)
                raise error
            self.cache.put(touched, generation)
            session = touched
        return Identity(user=user, session=session)

    def _remember_dead(self, sid: str, error: AuthError) -> None:
        """Ids are never reused and a store that cannot answer raises instead,
        so a gone session stays gone: replaying its cookie (an attacker's
        favourite) costs no store call."""
        if len(self._dead) >= _MAX_REMEMBERED:
            self._dead.clear()
        self._dead[sid] = (error.code, error.notice)

    async def _lookup(self, username: str, sid: str, now: float) -> Session | None:
        session = self.cache.get(sid)
        if session is not None and session.username == username and session.alive(now):
            cache_hit()
            return session
        cache_miss()
        generation = self.cache.generation
        session = await self.store.get(username, sid)
        if session is not None and session.alive(now):
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
                end_if_cancelled()
                if healthy:
                    log.warning("revocation feed lost (%s): sessions are read from the "
                                "store on every request until it is back", exc)
                healthy = False
            finally:
                self.cache.stop()
            await asyncio.sleep(1)

    # -- re-authentication --------------------------------------------------
    def reauth_due(self, session: Session) -> bool:
        """Whether a sensitive action must ask for the password again (ASVS 7.5.2).

        A password just re-entered counts for at least a minute even when
        ``reauth_after`` is 0s ("always ask"), so that the page's two steps
        (confirm, then act) can follow each other.
        """
        window = self.config.session.reauth_after
        if session.authenticated_at:
            window = max(window, REENTRY_MIN)
        entered = session.authenticated_at or session.created_at
        return self.clock() - entered >= window

    async def reauthenticate(self, identity: Identity, password: str) -> bool:
        """Check the password of the session's user; on success the session
        counts as freshly signed in for ``session.reauth_after``. Throttled
        while a block is in force."""
        assert self.users is not None, "not in an operator tool"
        # Guessed like a sign-in, but counted per session (a stolen one is the
        # case this guards), wherever its requests come from.
        name, throttle = identity.user.username, self.throttle
        strikes = throttle.session_strikes(name, fingerprint(identity.session.id)) \
            if throttle is not None else []
        if throttle is not None:
            wait = await throttle.attempt(strikes)
            if wait > 0:
                await asyncio.sleep(self.users.typical_check)
                raise Throttled(wait)
        if await self.users.verify(name, password) is None:
            log.info("password re-entry failed for a session of %s", identity.user.key)
            if throttle is not None:
                self._blocked(await throttle.failed(strikes))
            return False
        if throttle is not None:
            await throttle.succeeded(strikes)
        now = self.clock()
        changes = {"authenticated_at": now}
        self.cache.drop(identity.session.id)
        touched = replace(identity.session, **changes)
        if not await self.store.touch(touched, changes):
            return False            # the session ended meanwhile
        identity.session = touched
        return True

    # -- what the APIs show ------------------------------------------------
    def cookie_max_age(self, session: Session) -> int | None:
        """Persistent only with "remember me"."""
        return int(session.expires_at - self.clock()) if session.remember else None

    def describe(self, identity: Identity) -> dict[str, Any]:
        """The body of ``GET /api/session``."""
        s = identity.session
        # Rounded up: "0" only once it has ended (the monitor looks again then).
        remaining = max(0, math.ceil(s.idle_expires_at - self.clock()))
        return {
            "user": identity.user.public(),
            "session": {
                **session_times(s),
                "remaining_seconds": remaining,
                "expiring_soon": remaining <= self.config.session.expiring_soon,
            },
        }
