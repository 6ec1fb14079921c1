"""The decision every entry point needs: may this request reach an upstream?

    canonical path -> upstream -> path parameters -> session -> roles -> second factor

``decide`` answers with a Decision (go ahead: which upstream, which path,
who is asking) or a Refusal (why not). The proxy pipeline forwards on a
Decision; forward-auth, rate limits, metrics and security events, when they
come, are to reuse this step rather than repeat it. Apart from the session lookup it does
no I/O, and it never builds a response: that is the caller's to shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from ..auth.sessions import AuthError, Identity
from ..config import Upstream
from ..state import Gateway
from ..store import StoreUnavailable
from .access import is_public, missing_roles, needs_mfa
from .headers import cookie_value
from .paths import BadPath, has_prefix, normalize_path, without_path_parameters


@dataclass(slots=True)
class Decision:
    upstream: Upstream
    encoded_path: str              # the canonical path, as it is forwarded
    identity: Identity | None      # None on a public path
    token: str | None              # the session cookie's value, when one was needed
    judged: tuple[str, ...]        # the decoded path, and how a servlet reads it if not alike


@dataclass(slots=True)
class Refusal:
    status: int
    code: str
    detail: str | None = None
    # No valid session: browsers are sent to sign in, others get 401.
    auth: AuthError | None = None
    had_cookie: bool = False
    # A way onward for a person: (text, where), shown on the HTML page.
    link: tuple[str, str] | None = None


def counts_as_activity(mode: str, fetch_mode: str | None, fetch_dest: str | None) -> bool:
    """Whether a request shows that the person is active (``session.activity``).

    ``requests``: every request does. ``navigation`` and ``interaction``: only
    a top-level navigation (``Sec-Fetch-Mode: navigate`` with
    ``Sec-Fetch-Dest: document``), so an app polling its API in the
    background does not keep an idle person signed in. The two differ in
    what a page may send besides: ``POST /api/session/refresh`` extends the
    session in every mode (it is "Stay signed in"), and under
    ``interaction`` the session monitor is to send it, debounced, when the
    person types or clicks. A request without these headers (an older
    browser, a script, curl) counts, as before: it cannot be told apart.
    """
    if mode == "requests" or fetch_mode is None:
        return True
    return fetch_mode == "navigate" and fetch_dest in (None, "document")


_NOT_FOUND = Refusal(404, "NOT_FOUND")
_PATH_PARAMETERS = Refusal(400, "BAD_REQUEST", "The request path contains ';' (path "
                                               "parameters), which this application does "
                                               "not accept.")
_STORE_DOWN = Refusal(503, "STORE_UNAVAILABLE")


async def decide(gw: Gateway, host: str, raw_path: str, cookies: str | None, ip: str,
                 user_agent: str, activity: bool = True,
                 fallback: Upstream | None = None) -> Decision | Refusal:
    """``activity``: whether this request counts as the person being active
    (see ``counts_as_activity``); only then may it extend the session.
    ``fallback``: the upstream that judges a request no upstream serves
    (forward-auth's, with no public paths and no rules), else 404."""
    config = gw.config
    # One canonical path: what is judged below is exactly what is forwarded.
    try:
        path, encoded_path = normalize_path(raw_path)
    except BadPath as exc:
        return Refusal(400, "BAD_REQUEST", str(exc))

    # The upstream that serves it. A path that only resolves into the
    # gateway's own prefix (``/x/../_gateway/...``) belongs to nobody.
    upstream = gw.router.match(host, path) or fallback
    if upstream is None or has_prefix(path, config.prefix):
        return _NOT_FOUND

    # Servlet containers read "/;x/admin" as "/admin". Refused unless the
    # upstream opts in; then both readings are judged and the stricter wins.
    servlet_path = path
    if ";" in path:
        if not upstream.allow_path_parameters:
            return _PATH_PARAMETERS
        servlet_path = without_path_parameters(path)
        if has_prefix(servlet_path, config.prefix):
            return _NOT_FOUND

    # Who is asking: public paths need nobody, all else a live session...
    judged = (path,) if servlet_path is path else (path, servlet_path)
    if is_public(upstream, path) and (servlet_path is path or is_public(upstream, servlet_path)):
        return Decision(upstream, encoded_path, None, None, judged)
    token = cookie_value(cookies, config.cookie_name)
    try:
        identity = await gw.sessions.authenticate(token, ip=ip, user_agent=user_agent,
                                                  touch=activity)
    except AuthError as exc:
        return Refusal(401, exc.code, auth=exc, had_cookie=token is not None)
    except StoreUnavailable:
        return _STORE_DOWN
    # ...with a role for every rule that covers the path.
    roles = identity.user.roles
    if missing_roles(upstream, path, roles) or (
            servlet_path is not path and missing_roles(upstream, servlet_path, roles)):
        return Refusal(403, "FORBIDDEN", "Your account does not have access to this page.",
                       link=("Sign in as someone else", f"{config.prefix}/logout"))
    # ...and a session verified with a second factor when a rule or the
    # policy asks for one (renewed with a new id when verified: never stale).
    if not identity.session.mfa and (
            upstream.mfa_rules and any(needs_mfa(upstream, p) for p in judged)
            or gw.sessions.lacks_mfa(identity)):
        return Refusal(403, "FORBIDDEN", "This page needs two-step verification.",
                       link=("Continue to two-step verification", f"{config.prefix}/2fa?"
                             + urlencode({"rd": raw_path})))
    return Decision(upstream, encoded_path, identity, token, judged)
