"""Which upstream serves a path, and what a path demands of the user.

All three judge the canonical decoded path from ``paths.normalize_path``.
Matching is deliberately asymmetric, so that a mismatch always denies:
role rules match as a plain, case-insensitive string prefix (``/admin``
also covers ``/ADMIN``, ``/admin.php`` and ``/administrator``), while public
entries match exactly and case-sensitively (``/static/`` is a prefix because
it ends in ``/``; ``/favicon.ico`` is one exact path).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..config import Upstream
from .paths import has_prefix


class Router:
    """Picks the upstream: a ``host`` match beats none, then the longest prefix."""

    def __init__(self, upstreams: Iterable[Upstream]) -> None:
        self._upstreams = sorted(
            upstreams,
            key=lambda u: (u.host is not None, len(u.path_prefix)), reverse=True)

    def match(self, host: str, path: str) -> Upstream | None:
        name = hostname(host)
        for up in self._upstreams:
            if up.host is not None and up.host.lower().rstrip(".") != name:
                continue
            if has_prefix(path, up.path_prefix):
                return up
        return None


def hostname(host: str) -> str:
    """The host name of a Host header, lower case, without port or the
    trailing dot of a fully qualified name (``app.example.com.`` is the
    same site, and must not miss its upstream's rules)."""
    host = host.lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return (host.rsplit(":", 1)[0] if host.count(":") == 1 else host).rstrip(".")


def is_public(upstream: Upstream, path: str) -> bool:
    return any(path.startswith(p) if p.endswith("/") else path == p
               for p in upstream.public)


def missing_roles(upstream: Upstream, path: str, roles: Iterable[str]) -> bool:
    """True when some rule covering ``path`` names none of the user's roles.

    Every matching rule must be satisfied, so a longer rule can narrow
    access further but never widen what a shorter one forbids.
    """
    lowered = path.lower()
    have = set(roles)
    return any(lowered.startswith(rule.path.lower()) and rule.roles
               and have.isdisjoint(rule.roles) for rule in upstream.rules)


def needs_mfa(upstream: Upstream, path: str) -> bool:
    """True when some rule covering ``path`` demands a second factor."""
    lowered = path.lower()
    return any(rule.mfa and lowered.startswith(rule.path.lower()) for rule in upstream.rules)


def upstream_path(upstream: Upstream, encoded_path: str) -> str:
    """The path part sent upstream, with ``path_prefix`` removed if asked."""
    if not upstream.strip_prefix or upstream.path_prefix == "/":
        return encoded_path
    prefix = upstream.path_prefix.rstrip("/")
    rest = encoded_path[len(prefix):] if encoded_path.lower().startswith(prefix.lower()) else encoded_path
    return rest if rest.startswith("/") else "/" + rest
