"""The session monitor's script tag, added to an upstream's HTML pages.

Only on upstreams with ``session_monitor: true``, only for a signed-in
top-level page load (``Sec-Fetch-Dest: document``; without Sec-Fetch
headers, a request accepting HTML), and only into a plain
``200 text/html`` answer: never into a compressed, partial, downloaded
(``Content-Disposition: attachment``) or ``no-transform`` body, nor one in
a charset where ASCII bytes would not be ASCII text. Those requests ask the
upstream for an uncompressed, whole body; every other request and response
streams through untouched.

The tag goes just before the first ``</head>`` that starts in the first
64 KiB, else at the very end (browsers run a script there too); not before
``<body``, which inline scripts and conditional comments of old pages
contain. Exactly one tag is added either way, so a declared
``Content-Length`` grows by its length before a byte is read, and the body
streams as it comes: at most the few bytes that could begin ``</head>``
wait for the next chunk. The body's bytes differ from the upstream's, so a
strong ``ETag`` is made weak and digests of the body are dropped.
"""

from __future__ import annotations

import html
import re

from multidict import CIMultiDict

# How far into a page the tag's place is looked for.
SEARCH_LIMIT = 64 * 2**10
_PLACE = re.compile(rb"</head\s*>", re.IGNORECASE)
# What may be the start of the place, at the end of a chunk.
_PARTIAL = re.compile(rb"<(?:/(?:h(?:e(?:a(?:d\s*)?)?)?)?)?\Z", re.IGNORECASE)
_PARTIAL_MAX = 32
# Charsets in which the tag's ASCII bytes read as the tag.
_WIDE = re.compile(r"utf-?16|utf-?32|ucs-?2|ucs-?4", re.IGNORECASE)
_DIGESTS = ("Content-MD5", "Digest", "Content-Digest", "Repr-Digest")


def script_tag(prefix: str) -> bytes:
    return f'<script src="{html.escape(prefix)}/monitor.js" defer></script>'.encode()


def wants_page(fetch_dest: str | None, accept: str | None) -> bool:
    """A top-level page load: ``Sec-Fetch-Dest: document``, or without
    Sec-Fetch headers (older browsers), a request that accepts HTML. Frames
    (a sandboxed one has no cookie), fetches and XHR keep their bodies."""
    if fetch_dest is not None:
        return fetch_dest == "document"
    return accept is not None and "text/html" in accept


def injectable(status: int, headers: CIMultiDict[str]) -> bool:
    if status != 200 or "Content-Range" in headers:
        return False
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return False
    media, _, params = headers.get("Content-Type", "").partition(";")
    if media.strip().lower() != "text/html" or _WIDE.search(params):
        return False
    if "no-transform" in headers.get("Cache-Control", "").lower():
        return False
    return "attachment" not in headers.get("Content-Disposition", "").lower()


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
    found = _PLACE.search(body)
    if found is None or found.start() >= SEARCH_LIMIT:
        return body + tag
    return body[:found.start()] + tag + body[found.start():]


class Injector:
    """The same, for a body that streams: ``feed`` each chunk and send what
    it returns, then send ``finish()``. Each byte is searched once."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self._tail = b""      # a possible start of the place, held for the next chunk
        self._sent = 0        # body bytes passed on so far
        self._done = False
        self._at_end = False  # the place is not in the first 64 KiB: the tag goes last

    def feed(self, chunk: bytes) -> bytes:
        if self._done:
            return chunk
        data = self._tail + chunk
        self._tail = b""
        found = _PLACE.search(data)
        if found is not None and self._sent + found.start() < SEARCH_LIMIT:
            self._done = True
            return data[:found.start()] + self.tag + data[found.start():]
        partial = None if found else _PARTIAL.search(data, max(0, len(data) - _PARTIAL_MAX))
        if partial is not None and self._sent + partial.start() < SEARCH_LIMIT:
            data, self._tail = data[:partial.start()], data[partial.start():]
        elif found is not None or self._sent + len(data) >= SEARCH_LIMIT:
            self._done = self._at_end = True
            return data
        self._sent += len(data)
        return data

    def finish(self) -> bytes:
        if not self._done:           # no place at all
            self._done = True
            out, self._tail = self._tail + self.tag, b""
            return out
        return self.tag if self._at_end else b""
