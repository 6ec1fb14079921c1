"""Session lifecycle events: the one stream the audit trail subscribes to.

The session service emits one event when a session starts and one when it
ends, whoever ended it (the user, an admin, the CLI, the cap, the users
file, a timeout observed), and the security watch one per finding
(``security.*``, security.py). Subscribers are called in order and must not
block; one that raises is logged and the others still run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..store import Session

log = logging.getLogger("gateway.events")

STARTED = "session.started"
ENDED = "session.ended"
SIGN_IN_FAILED = "login.failure"
LOGGED_OUT_BY_ADMIN = "user.logged_out_by_admin"
LOCKED = "user.locked"
UNLOCKED = "user.unlocked"
USERS_RELOADED = "users.reloaded"
THROTTLE_BLOCKED = "throttle.blocked"
THROTTLE_CLEARED = "throttle.cleared"
CONFIG_RELOADED = "config.reloaded"
MFA_ENROLLED = "mfa.enrolled"
MFA_RESET = "mfa.reset"
MFA_RECOVERY_USED = "mfa.recovery_used"


def fingerprint(sid: str) -> str:
    """Names a session in records others may read, without its id (a bearer secret)."""
    return hashlib.sha256(sid.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SessionEvent:
    """Something that happened to a session, or to a user without one
    (``session`` None: a failed sign-in, a lock, a new users file or config)."""
    type: str               # STARTED | ENDED | security.* | the user-level types above
    session: Session | None
    at: float               # unix seconds
    actor: str              # who did it: the username, "admin:<name>", "cli", "system",
                            # "users-file", "config-file"
    status: str = "ACTIVE"  # for ENDED: LOGGED_OUT | REVOKED | EXPIRED
    reason: str = ""        # for ENDED: an Ending reason; for a failed sign-in, why
    details: Mapping[str, str] = field(default_factory=dict)   # for security.*: the finding
    user: str = ""          # the subject user when there is no session
    ip: str = ""            # the client's address when there is no session
    user_agent: str = ""

    @property
    def subject(self) -> str:
        return self.session.username if self.session else self.user


class Events:
    def __init__(self) -> None:
        self._subscribers: list[Callable[[SessionEvent], None]] = []

    def subscribe(self, subscriber: Callable[[SessionEvent], None]) -> None:
        self._subscribers.append(subscriber)

    def emit(self, event: SessionEvent) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                log.exception("a session event subscriber failed on %s", event.type)
