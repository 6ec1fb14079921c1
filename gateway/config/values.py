"""How each kind of config value is read: one parser per kind.

A parser takes the YAML value and returns the typed value or raises
ValueError with a message that completes ``path.to.key: ...``; ItemError
names the list item at fault (``roles[1]``). The schema (schema.py) pairs
each key with one of these; nothing else parses config values.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

Parser = Callable[[Any], Any]


class HiddenValueError(ValueError):
    """A problem whose message must not repeat the value (a secret)."""


class ItemError(ValueError):
    """A problem with one item of a list: reported at ``key[index]``."""

    def __init__(self, index: int, message: str, value: Any) -> None:
        super().__init__(message)
        self.index, self.value = index, value


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
               "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
def parse_duration(value: Any) -> float:
    """``90s``, ``30m``, ``1h30m``, ``250ms``, ``30d`` -> seconds."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("must be a duration like 90s, 30m, 12h or 30d")
    text = str(value).strip()
    if isinstance(value, int) or text.isdigit():
        raise ValueError("needs a unit, like 90s, 30m, 12h or 30d")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError("must be a duration like 90s, 30m, 12h or 30d")
    return total


def parse_size(value: Any) -> int:
    """``16KiB``, ``100MiB``, ``1GiB`` or a plain byte count."""
    if isinstance(value, bool):
        raise ValueError("must be a size like 64KiB, 100MiB or 1GiB")
    if isinstance(value, int):
        return value
    m = _SIZE.fullmatch(str(value).strip())
    if not m:
        raise ValueError("must be a size like 64KiB, 100MiB or 1GiB")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def parse_listen(value: Any) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:8080``)."""
    if not isinstance(value, str):
        raise ValueError("must be host:port, like 127.0.0.1:8080")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("must be host:port, like 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not 0 < int(port) < 65536:
        raise ValueError("port must be between 1 and 65535")
    return host, int(port)




def host_ports(v: Any) -> tuple[tuple[str, int], ...]:
    """A list of ``host:port`` (IPv6 as ``[::1]:26379``)."""
    items = str_list(v)
    out = []
    for i, item in enumerate(items):
        try:
            out.append(parse_listen(item))
        except ValueError as exc:
            raise ItemError(i, str(exc), item) from None
    return tuple(out)


def duration(minimum: float = 0.001) -> Parser:
    def parse(v: Any) -> float:
        seconds = parse_duration(v)
        if seconds < minimum:
            raise ValueError(f"must be at least {minimum:g}s")
        return seconds
    return parse


def size(maximum: int | None = None) -> Parser:
    def parse(v: Any) -> int:
        n = parse_size(v)
        if maximum is not None and n > maximum:
            raise ValueError(f"must be at most {maximum // 2**10}KiB")
        return n
    return parse


def integer(minimum: int = 0) -> Parser:
    def parse(v: Any) -> int:
        v = _typed(int, "a whole number")(v)
        if v < minimum:
            raise ValueError(f"must be at least {minimum}")
        return v
    return parse


def boolean(v: Any) -> bool:
    return _typed(bool, "true or false")(v)


def string(v: Any) -> str:
    return _typed(str, "a string")(v)


def optional_string(v: Any) -> str | None:
    return None if v is None else string(v)


def optional_password(v: Any) -> str | None:
    """A password, or None; a problem never repeats the value."""
    if v is not None and not isinstance(v, str):
        raise HiddenValueError("must be a string")
    return v


def str_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(i, str) for i in v):
        raise ValueError("must be a list of strings")
    return tuple(v)


def cookie_domain(v: Any) -> str | None:
    """A cookie's Domain: a host name without scheme, port or leading dot."""
    if v is None:
        return None
    text = string(v).strip().lower().lstrip(".")
    labels = text.split(".")
    if len(labels) < 2 or not all(
            label and len(label) <= 63 and all(c.isalnum() or c == "-" for c in label)
            and not label.startswith("-") and not label.endswith("-") for label in labels):
        raise ValueError("must be a domain name such as example.com (no scheme, port or "
                         "path)")
    return text


def lowercase_list(v: Any) -> tuple[str, ...]:
    return tuple(item.lower() for item in str_list(v))


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def methods(v: Any) -> tuple[str, ...]:
    names = tuple(item.upper() for item in str_list(v))
    unknown = sorted(set(names) - HTTP_METHODS)
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r} (use {', '.join(sorted(HTTP_METHODS))})")
    return names


def optional_url(schemes: tuple[str, ...]) -> Callable[[Any], str | None]:
    parse = url(schemes)
    return lambda v: None if v is None else parse(v)


def secret(v: Any) -> str:
    text = string(v)
    if len(text.encode()) < 32:
        raise HiddenValueError(f"must be at least 32 bytes (got {len(text.encode())})")
    return text


def role_list(v: Any) -> tuple[str, ...]:
    roles = role_names(v)
    if not roles:
        raise ValueError("must list at least one role")
    return roles


def role_names(v: Any) -> tuple[str, ...]:
    """Roles, possibly none."""
    roles = str_list(v)
    for i, role in enumerate(roles):
        if bad_role(role):
            raise ItemError(i, "must not contain ',', whitespace or control characters", role)
    return roles


def public_paths(v: Any) -> tuple[str, ...]:
    paths = str_list(v)
    for i, p in enumerate(paths):
        if not p.startswith("/"):
            raise ItemError(i, "must be a path starting with '/'", p)
    return paths


def gateway_prefix(v: Any) -> str:
    prefix = path_prefix(v).rstrip("/")
    if not prefix:
        raise ValueError("must not be '/'")
    return prefix


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
LOG_LEVELS = ("debug", "info", "warning", "error")


def url(schemes: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError("must be a URL string")
        try:
            return _url(v, schemes)
        except ValueError as exc:
            # A password may be in it: never repeat the value.
            if "@" in v or "password" in v.lower():
                raise HiddenValueError(str(exc)) from None
            raise
    return parse


def _url(v: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(v)
    # unix:///path/to/redis.sock names a socket file, not a host.
    located = parts.hostname or (parts.scheme == "unix" and parts.path.startswith("/"))
    if parts.scheme not in schemes or not located:
        raise ValueError(f"must be a {' or '.join(schemes)} URL with a host")
    return v.rstrip("/") if parts.path in ("", "/") else v


def path_prefix(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/") or "//" in v or "\\" in v:
        raise ValueError("must be a path starting with '/'")
    return v


def workers(v: Any) -> int:
    if v == "auto":
        return os.cpu_count() or 1
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError("must be a whole number >= 1 or 'auto'")
    return v


def networks(v: Any) -> tuple[Any, ...]:
    if not isinstance(v, list):
        raise ValueError("must be a list of IP addresses or CIDR networks")
    try:
        return tuple(ipaddress.ip_network(str(i), strict=False) for i in v)
    except ValueError as exc:
        raise ValueError(f"not an IP address or network: {exc}") from None


def header_name(v: Any) -> str:
    if not isinstance(v, str) or not _HEADER_NAME.fullmatch(v):
        raise ValueError("must be a valid HTTP header name")
    return v


_ROLE = re.compile(r"[^\s,\x00-\x1f\x7f-\x9f]+")


def bad_role(role: str) -> bool:
    """A role the identity headers could not carry as one list item."""
    return not _ROLE.fullmatch(role)


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` lowercased, default port dropped; None if not http(s)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == {"http": 80, "https": 443}[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origins(v: Any) -> frozenset[str]:
    if not isinstance(v, list) or not all(isinstance(i, str) for i in v):
        raise ValueError("must be a list of origins like https://app.example.com")
    out = set()
    for item in v:
        origin = origin_of(item)
        if origin is None or urlsplit(item).path not in ("", "/"):
            raise ValueError(f"{item!r} is not an origin like https://app.example.com")
        out.add(origin)
    return frozenset(out)


def one_of(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return v
    return parse


def _typed(kind: type, name: str) -> Callable[[Any], Any]:
    def parse(v: Any) -> Any:
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise ValueError(f"must be {name}")
        return v
    return parse


