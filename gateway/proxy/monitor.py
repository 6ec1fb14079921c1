"""The session monitor's script tag, added to an upstream's HTML pages.

Only on upstreams with ``session_monitor: true``, only for a signed-in
request that accepts HTML, and only into a plain ``200 text/html`` answer:
never into a compressed, partial or non-HTML body (the gateway does not
decompress), nor into a charset where ASCII bytes would not be ASCII text.
Those requests ask the upstream for an uncompressed body; every other
request and response streams through untouched.

The tag goes before the first ``</head>`` or ``<body`` found in the first
64 KiB, else at the very end (browsers run a script there too). Exactly one
tag is added either way, so a declared ``Content-Length`` grows by its
length before a byte is read. The body's bytes differ from the upstream's:
a strong ``ETag`` is made weak and digests of the body are dropped.
"""

from __future__ import annotations

import html
import re

from multidict import CIMultiDict

# How far into a page the tag's place is looked for; the body is held back
# (not sent) only until then.
SEARCH_LIMIT = 64 * 2**10
_PLACE = re.compile(rb"</head|<body", re.IGNORECASE)
_LONGEST = 6   # len(b"</head"): a place starting before SEARCH_LIMIT ends by here
# Charsets in which the tag's ASCII bytes read as the tag.
_WIDE = re.compile(r"utf-?16|utf-?32|ucs-?2|ucs-?4", re.IGNORECASE)
_DIGESTS = ("Content-MD5", "Digest", "Content-Digest", "Repr-Digest")


def script_tag(prefix: str) -> bytes:
    return f'<script src="{html.escape(prefix)}/monitor.js" defer></script>'.encode()


def wants_page(accept: str | None) -> bool:
    """A request that may get a page: it asks for ``text/html`` (navigations,
    frames). Others keep the client's Accept-Encoding."""
    return accept is not None and "text/html" in accept


def injectable(status: int, headers: CIMultiDict[str]) -> bool:
    if status != 200 or "Content-Range" in headers:
        return False
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return False
    media, _, params = headers.get("Content-Type", "").partition(";")
    if media.strip().lower() != "text/html":
        return False
    return not _WIDE.search(params)


def adjust_headers(headers: CIMultiDict[str], tag: bytes) -> None:
    """The response's headers for a body that will carry ``tag``."""
    length = headers.get("Content-Length")
    if length is not None and length.isdigit():
        headers["Content-Length"] = str(int(length) + len(tag))
    etag = headers.get("ETag")
    if etag is not None and not etag.startswith("W/"):
        headers["ETag"] = "W/" + etag
    for name in (*_DIGESTS, "Accept-Ranges"):
        headers.popall(name, None)


def inject(body: bytes, tag: bytes) -> bytes:
    """A whole body with the tag in its place."""
    found = _PLACE.search(body, 0, SEARCH_LIMIT + _LONGEST)
    if found is None or found.start() >= SEARCH_LIMIT:
        return body + tag
    return body[:found.start()] + tag + body[found.start():]


class Injector:
    """The same, for a body that streams: ``feed`` each chunk and send what
    it returns, then send ``finish()``."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self._held = b""
        self._done = False
        self._at_end = False   # the place was not found: the tag goes last

    def feed(self, chunk: bytes) -> bytes:
        if self._done:
            return chunk
        self._held += chunk
        found = _PLACE.search(self._held, 0, SEARCH_LIMIT + _LONGEST)
        if found is not None and found.start() < SEARCH_LIMIT:
            self._done = True
            out = self._held[:found.start()] + self.tag + self._held[found.start():]
            self._held = b""
            return out
        if len(self._held) < SEARCH_LIMIT + _LONGEST:
            return b""
        # Not in the first 64 KiB: send it all on; the tag goes at the end.
        out, self._held = self._held, b""
        self._done = self._at_end = True
        return out

    def finish(self) -> bytes:
        if not self._done:           # a short page without either place
            self._done = True
            out, self._held = self._held + self.tag, b""
            return out
        return self.tag if self._at_end else b""
