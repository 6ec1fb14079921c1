"""Pure functions from request or response headers to the headers to send on.

Nothing here does I/O, so every spoofing variant is a row in a test table.
Header names are compared lowercased with ``_`` and ``.`` folded to ``-``,
because some servers (CGI, WSGI, PHP) read ``X_Auth_User`` as ``X-Auth-User``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict

# RFC 9110 section 7.6.1, plus the non-standard ones proxies still meet.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "proxy-authenticate", "proxy-authorization",
})
# Set by the gateway from what it knows; a client's values are never believed
# unless it is a trusted proxy (then X-Forwarded-* are extended, not replaced).
FORWARDED = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                       "x-real-ip", "forwarded"})
# Other names for the client's address that some apps and CDNs believe; like
# X-Forwarded-For, they pass only from a trusted proxy.
CLIENT_ADDRESS = frozenset({"true-client-ip", "cf-connecting-ip", "x-client-ip",
                            "x-cluster-client-ip", "fastly-client-ip", "x-originating-ip",
                            "client-ip"})
# Headers that make some apps (Symfony, IIS modules: CVE-2018-14773) serve a
# path other than the one the gateway judged. Never forwarded, from anyone.
REWRITES = frozenset({"x-original-url", "x-rewrite-url", "x-original-uri",
                      "x-forwarded-prefix", "x-forwarded-uri", "x-forwarded-path",
                      "x-envoy-original-path"})
# The gateway meets a client's "Expect: 100-continue" itself (aiohttp answers
# it before the handler runs); passed on, the upstream client would wait for
# a 100 Continue that an upstream ignoring Expect never sends.
_NOT_FORWARDED = HOP_BY_HOP | FORWARDED | REWRITES | {"expect", "host"}
# Marks the gateway's own refusals (the session monitor holds those and
# sends them again): an upstream's response must not be able to claim it.
REFUSAL_MARK = "Gateway-Refusal"
_NOT_RETURNED = HOP_BY_HOP | {REFUSAL_MARK.lower()}
_NOT_FORWARDED_UNTRUSTED = _NOT_FORWARDED | CLIENT_ADDRESS


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators that
# some parsers (and log viewers) treat as line breaks.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def fold(name: str) -> str:
    """The name a lenient upstream may read: ``X_Auth.User`` -> ``x-auth-user``."""
    return name.lower().replace("_", "-").replace(".", "-")


def connection_tokens(headers: Mapping[str, str] | CIMultiDict[str]) -> set[str]:
    """Header names listed in ``Connection``: hop-by-hop for this hop only."""
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):  # type: ignore[union-attr]
        tokens.update(fold(t.strip()) for t in value.split(",") if t.strip())
    return tokens


def strip_cookie(value: str, drop: Iterable[str]) -> str:
    """Remove the gateway's own cookies from a Cookie header value."""
    drop = set(drop)
    kept = [part for part in (p.strip() for p in value.split(";"))
            if part and part.split("=", 1)[0].strip() not in drop]
    return "; ".join(kept)


def client_ip(peer: str | None, headers: CIMultiDict[str], trusted: tuple) -> str:
    """The first address, right to left, that is not a trusted proxy.

    A client can put anything in X-Forwarded-For; only the entries appended
    by proxies we trust are believed, starting from the direct peer, and
    only as IP addresses (written the one standard way).
    """
    if not peer:
        return ""
    if not is_trusted(peer, trusted):
        return peer
    chain = [peer]
    for value in reversed(headers.getall("X-Forwarded-For", [])):
        chain.extend(a.strip() for a in reversed(value.split(",")) if a.strip())
    for i, addr in enumerate(chain):
        ip = _address(addr)
        if ip is None:          # a trusted hop passed on garbage: the last address we can name
            return chain[i - 1]
        if not any(ip in net for net in trusted):
            return str(ip)
    return chain[-1]


@functools.lru_cache(maxsize=4096)
def _address(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address parsed once: behind a proxy every request parses its peer's
    and its client's, a few microseconds each (bench.forward_auth's profile)."""
    try:
        return ipaddress.ip_address(addr)
    except ValueError:
        return None


def user_agent_of(headers: CIMultiDict[str]) -> str:
    """The User-Agent as text that can be stored and shown."""
    return valid_text(headers.get("User-Agent", ""))


def valid_text(value: str) -> str:
    """Text that encodes as UTF-8: surrogates (what aiohttp keeps of bytes
    that are not UTF-8, or a lone one from JSON) become U+FFFD."""
    if value.isascii():
        return value
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)


def is_trusted(addr: str | None, trusted: tuple) -> bool:
    """Whether a peer address is one of ``trusted_proxies``."""
    if not trusted or not addr:
        return False
    ip = _address(addr)
    return ip is not None and any(ip in net for net in trusted)


def upstream_request_headers(
    incoming: CIMultiDict[str],
    *,
    peer: str | None,
    client: str,
    scheme: str,
    host: str,
    trusted: tuple,
    strip: frozenset[str],
    drop_cookies: Iterable[str],
    identity: Mapping[str, str] | None = None,
    upstream_host: str | None = None,
) -> CIMultiDict[str]:
    """Headers for the upstream request.

    Hop-by-hop headers (and those named in ``Connection``), ``Expect`` and
    the path-rewrite headers go; every header whose folded name is in
    ``strip`` (identity headers) goes in any spelling; the gateway's cookies
    go; X-Forwarded-* are rebuilt and the other client-address headers kept
    only from a trusted proxy; ``identity`` is added.
    """
    dropped = connection_tokens(incoming)
    from_trusted = is_trusted(peer or "", trusted)
    never = _NOT_FORWARDED if from_trusted else _NOT_FORWARDED_UNTRUSTED
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        folded = fold(name)
        if folded in never or folded in strip or folded in dropped:
            continue
        if folded == "cookie":
            value = strip_cookie(value, drop_cookies)
            if not value:
                continue
        out.add(name, value)

    xff = incoming.getall("X-Forwarded-For", []) if from_trusted else []
    out["X-Forwarded-For"] = ", ".join([*xff, peer] if xff and peer else [peer or ""])
    out["X-Real-IP"] = client
    out["X-Forwarded-Proto"] = (from_trusted and incoming.get("X-Forwarded-Proto")) or scheme
    out["X-Forwarded-Host"] = (from_trusted and incoming.get("X-Forwarded-Host")) or host
    out["Host"] = upstream_host or host
    if identity:
        for name, value in identity.items():
            out[name] = value
    return out


def downstream_response_headers(incoming: CIMultiDict[str], own_cookies: frozenset[str],
                                 private: bool = False) -> tuple[CIMultiDict[str], bool]:
    """Upstream response headers minus hop-by-hop and minus the gateway's cookies.

    ``own_cookies`` holds :func:`cookie_key` of each of the gateway's cookie
    names: an upstream that could set those could sign a browser into
    another user's session. The rest of ``Set-Cookie`` and ``Location`` pass
    untouched. With ``private`` (a response to a signed-in request), a
    ``Cache-Control`` that lets shared caches keep the page is made private.
    Returns the headers and whether a gateway cookie was dropped.
    """
    dropped = connection_tokens(incoming)
    out = CIMultiDict((k, v) for k, v in incoming.items()
                      if (f := fold(k)) not in _NOT_RETURNED and f not in dropped)
    tossed = False
    if "Set-Cookie" in out:
        lines = out.popall("Set-Cookie")
        for line in lines:
            if set_cookie_names(line) & own_cookies:
                tossed = True
            else:
                out.add("Set-Cookie", line)
    if private:
        if "Cache-Control" in out:
            out["Cache-Control"] = private_cache_control(", ".join(out.popall("Cache-Control")))
        # Instructions for CDNs alone would let one keep a signed-in page.
        for name in [k for k in out if fold(k) in _SHARED_CACHE_ONLY or
                     fold(k).endswith("-cdn-cache-control")]:
            out.popall(name, None)
    return out, tossed


def cookie_key(name: str) -> str:
    """A cookie name as browsers may confuse it: any case, without ``__Host-``/``__Secure-``."""
    name = name.strip().lower()
    for prefix in ("__host-", "__secure-"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def set_cookie_names(line: str) -> set[str]:
    """Every name a browser might send back for one ``Set-Cookie`` line.

    Besides the plain name, a nameless cookie (``=gateway_session=x`` or a
    pair with no ``=``) is sent back by browsers as its bare value, which a
    server then reads as ``gateway_session=x``.
    """
    pair = line.split(";", 1)[0]
    name, _, value = pair.partition("=")
    names = {cookie_key(name)}
    if not name.strip():
        names.add(cookie_key(value.split("=", 1)[0]))
    return names


_SHARED_CACHE_ONLY = frozenset({"cdn-cache-control", "surrogate-control"})


def private_cache_control(value: str) -> str:
    """A Cache-Control that no shared cache may act on.

    ``public`` and ``s-maxage`` go, and a bare ``private`` is added unless a
    bare ``private`` or ``no-store`` is there already: ``max-age`` alone
    lets a shared cache store the page, and ``private="Set-Cookie"`` only
    keeps that one header out of it. (The caller adds nothing when the
    upstream sent no Cache-Control at all.)
    """
    directives = [d.strip() for d in value.split(",") if d.strip()]
    kept = [d for d in directives
            if d.split("=", 1)[0].strip().lower() not in ("public", "s-maxage")]
    if not any(d.lower() in ("private", "no-store") for d in kept):
        kept.insert(0, "private")
    if kept == directives:
        return value
    return ", ".join(kept)


def safe_header_value(value: str) -> str:
    """Header values the gateway writes never carry CR, LF or other controls."""
    return _CONTROLS.sub(" ", value)


def cookie_value(header: str | None, name: str) -> str | None:
    """One cookie from a Cookie header, tolerant of malformed neighbours."""
    if not header:
        return None
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip()
    return None

