"""One canonical request path: the path that is judged is the path forwarded.

Access rules are only as good as the path they look at. A proxy that judges
``/static/../admin`` as public but forwards it for the upstream to resolve has
no access control at all. So the raw path is decoded and resolved here, once;
anything an upstream could read differently from us (encoded slashes and
backslashes, NUL and control bytes, Tomcat's ``..;`` path parameters, broken
percent-escapes, ``..`` above the root) is refused with 400 instead.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes


class BadPath(ValueError):
    """The request path is refused; the message is safe to show the client."""


_FORBIDDEN_ESCAPES = re.compile(r"%(2f|5c|00)", re.IGNORECASE)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters left unescaped in the forwarded path (RFC 3986 pchar minus '%').
_SAFE = "/:@!$&'()*+,;=-._~"


def normalize_path(raw_path: str) -> tuple[str, str]:
    """Return ``(decoded, encoded)`` for a raw request target's path part.

    ``decoded`` is what access rules judge; ``encoded`` is the same path,
    percent-encoded canonically, sent upstream. ``//`` collapses to ``/``,
    ``.`` segments vanish, ``..`` removes the previous segment.
    """
    path = raw_path.split("?", 1)[0]
    if not path.startswith("/"):
        raise BadPath("request path must start with '/'")
    if "\\" in path or _FORBIDDEN_ESCAPES.search(path):
        raise BadPath("request path contains an encoded slash, backslash or NUL")
    if _BAD_ESCAPE.search(path):
        raise BadPath("request path contains a broken percent-escape")
    try:
        decoded = unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise BadPath("request path is not valid UTF-8") from None
    if _CONTROL.search(decoded) or "\\" in decoded:
        raise BadPath("request path contains control characters")

    segments: list[str] = []
    parts = decoded.split("/")[1:]
    for part in parts:
        name = part.split(";", 1)[0]
        if name in (".", "..") and name != part:
            raise BadPath("request path contains a dot segment with parameters")
        if part in ("", "."):
            continue
        if part == "..":
            if not segments:
                raise BadPath("request path climbs above the root")
            segments.pop()
            continue
        segments.append(part)
    trailing = bool(segments) and parts[-1] in ("", ".", "..")
    canonical = "/" + "/".join(segments) + ("/" if trailing else "")
    return canonical, quote(canonical, safe=_SAFE)


def without_path_parameters(path: str) -> str:
    """``path`` as a servlet container reads it: ``;params`` removed, ``//`` merged.

    Tomcat, Jetty and Spring read ``/;x/admin`` and ``/admin;jsessionid=1``
    as ``/admin`` (the pattern of Apache Shiro's CVE-2020-11989).
    """
    parts = path.split("/")[1:]
    segments = [s for s in (p.split(";", 1)[0] for p in parts) if s]
    trailing = bool(segments) and parts[-1].split(";", 1)[0] == ""
    return "/" + "/".join(segments) + ("/" if trailing else "")


def has_prefix(path: str, prefix: str) -> bool:
    """Segment-aware prefix: ``/app`` matches ``/app`` and ``/app/x``, not ``/apple``."""
    if prefix == "/" or path == prefix:
        return True
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path.startswith(prefix) and path[len(prefix)] == "/"
