"""Opaque cursors for paged listings: a position, not an offset.

A cursor names the last item of a page (its sort score and id), so pages
stay consistent while sessions come and go, and it is cheap to resume from
in a sorted index. Clients must treat it as opaque; a malformed one is a
ValueError, which the APIs answer with 400.
"""

from __future__ import annotations

import base64
import binascii
import json


def encode_cursor(score: float, member: str) -> str:
    raw = json.dumps([score, member], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[float, str] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        score, member = json.loads(raw)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValueError("not a cursor from this listing") from None
    if isinstance(score, bool) or not isinstance(score, (int, float)) \
            or not isinstance(member, str):
        raise ValueError("not a cursor from this listing")
    return float(score), member
