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
# Where the tag goes, and what may hide a "</head>" that is not one: a
# comment, or the raw text of a script, style, title, textarea, template
# or noscript element (a "</head>" in a script's string, say).
_OPEN = re.compile(rb"<!--|<(script|style|title|textarea|template|noscript)(?=[\s/>])"
                   rb"|</head[ \t\r\n\f]{0,16}>", re.IGNORECASE)
_HEAD_END = b"</head"
_OPENERS = (b"<!--", b"<script", b"<style", b"<title", b"<textarea", b"<template",
            b"<noscript", _HEAD_END)
# A token split across chunks is at most this long ("</head" and 16 spaces and ">").
_CARRY = 32
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
    """A whole body with the tag in its place: the streaming rules, in one chunk."""
    injector = Injector(tag)
    return injector.feed(body) + injector.finish()


class Injector:
    """Adds the tag to a body that streams: ``feed`` each chunk and send what
    it returns, then send ``finish()``. Each byte is scanned once; only the
    few bytes at a chunk's end that may begin a token wait for the next."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self._tail = b""          # a possible token start, held for the next chunk
        self._sent = 0            # body bytes passed on so far
        self._closing: bytes | None = None   # inside a comment or raw text: what ends it
        self._done = False
        self._at_end = False      # no place in the first 64 KiB: the tag goes last

    def feed(self, chunk: bytes) -> bytes:
        if self._done:
            return chunk
        data = self._tail + chunk
        self._tail = b""
        lowered = data.lower()
        pos = 0
        while True:
            if self._closing is None:
                found = _OPEN.search(data, pos)
                if found is None:
                    break
                token = found.group(0).lower()
                if token.startswith(_HEAD_END):
                    if self._sent + found.start() >= SEARCH_LIMIT:
                        break
                    self._done = True
                    return data[:found.start()] + self.tag + data[found.start():]
                self._closing = b"-->" if token == b"<!--" else b"</" + found.group(1).lower()
                pos = found.end()
            else:
                end = lowered.find(self._closing, pos)
                if end < 0:
                    break
                after = end + len(self._closing)
                if self._closing != b"-->":
                    if after >= len(data):        # "</script" and the chunk ends
                        pos = end
                        break
                    if data[after] not in b" \t\r\n\f/>":   # "</scripts": look further
                        pos = end + 1
                        continue
                pos = after
                self._closing = None
        if self._sent + len(data) >= SEARCH_LIMIT + _CARRY:
            self._done = self._at_end = True
            return data
        keep = self._partial(data, pos)
        out, self._tail = data[:keep], data[keep:]
        self._sent += len(out)
        return out

    def _partial(self, data: bytes, pos: int) -> int:
        """Where a token that may go on in the next chunk starts (else the end)."""
        tokens = _OPENERS if self._closing is None else (self._closing,)
        for start in range(max(pos, len(data) - _CARRY), len(data)):
            if data[start] not in b"<-":
                continue
            tail = data[start:].lower()
            if any(t.startswith(tail) or tail == t for t in tokens):
                return start
            if self._closing is None and tail.startswith(_HEAD_END) and \
                    not tail[len(_HEAD_END):].strip(b" \t\r\n\f"):
                return start
        return len(data)

    def finish(self) -> bytes:
        if not self._done:            # no place at all
            self._done = True
            out, self._tail = self._tail + self.tag, b""
            return out
        return self.tag if self._at_end else b""
