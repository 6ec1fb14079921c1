"""Where a user may be sent after signing in: never off-site by accident.

Browsers are lenient with Location values: ``//evil``, ``/\\evil``,
``/%5Cevil``, ``\\t//evil`` and ``javascript:`` all leave the site. So a
target is accepted only if it is plainly a same-site absolute path, or a
full http(s) URL on the public host or a configured host; anything else,
and anything odd, becomes ``/``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

_ODD = re.compile(r"[\x00-\x20\x7f\\]")


def safe_redirect(target: str | None, public_url: str, allowed_hosts: tuple[str, ...]) -> str:
    """``target`` if it is safe to redirect to, else ``/``."""
    if not target or len(target) > 2048:
        return "/"
    decoded = unquote(unquote(target))
    if _ODD.search(target) or _ODD.search(decoded):
        return "/"
    if target.startswith("/"):
        return "/" if decoded.startswith("//") or target.startswith("//") else target
    try:
        parts = urlsplit(target)
        port = parts.port
    except ValueError:
        return "/"
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return "/"
    public = urlsplit(public_url)
    host = parts.hostname.lower()
    netloc = f"{host}:{port}" if port else host
    if (parts.scheme == public.scheme and parts.netloc.lower() == public.netloc.lower()) \
            or host in allowed_hosts or netloc in allowed_hosts:
        return target
    return "/"
