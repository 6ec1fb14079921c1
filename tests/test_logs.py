"""What the gateway writes to its log: one access line per request with its
request id (which the upstream receives too), text or JSON, a session's end
said once, upstream errors with their address and errno, and never a
password, cookie value or session id."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import pytest

from authkit import send
from conftest import seen_headers
from gateway.logs import LINES, AccessLines, JsonFormatter


async def test_one_access_line_per_request_with_the_id_the_app_saw(
        upstream, make_config, answering, caplog):
    client = await answering(make_config(str(upstream.make_url("/"))))
    r = await send(client, "POST", "/_gateway/api/login",
                   json={"username": "alice", "password": "alice-pw"})
    token = r.set_cookies()["gateway_session"].split("=", 1)[1].split(";", 1)[0]
    LINES.flush()
    written = io.StringIO()
    LINES.stream, LINES.json = written, True
    try:
        r = await send(client, "GET", "/reports/q3?token=s3cret", token=token)
        assert r.status == 200
        (rid,) = seen_headers(r.json())["x-request-id"]
        for _ in range(100):            # written once the response is out: a moment later
            LINES.flush()
            if written.getvalue():
                break
            await asyncio.sleep(0.01)
    finally:
        LINES.stream, LINES.json = None, False
    (line,) = [json.loads(text) for text in written.getvalue().splitlines()]
    assert line == {"time": line["time"], "level": "info", "logger": "gateway.access",
                    "pid": line["pid"], "request_id": rid, "user": "alice", "method": "GET",
                    "path": "/reports/q3", "status": 200, "upstream": "app",
                    "duration_ms": line["duration_ms"], "bytes": line["bytes"]}
    # Bytes sent, headers included (nginx's $bytes_sent).
    assert len(r.body) < line["bytes"] < len(r.body) + 2048
    assert "s3cret" not in written.getvalue()


def test_text_access_lines_read_like_the_other_log_lines() -> None:
    written = io.StringIO()
    lines = AccessLines("text", written)
    lines.add("abc", "alice", "GET", "/x", 200, "app", 0.0015, 512)
    assert written.getvalue() == ""                   # until flushed, in a batch
    lines.flush()
    stamp, pid, rest = written.getvalue().split(" ", 2)
    assert stamp.endswith("Z") and pid.isdigit()
    assert rest == "INFO gateway.access: abc alice GET /x 200 app 1.5ms 512B\n"


async def test_a_request_id_from_the_client_passes_if_it_is_plain(upstream, make_config,
                                                                  gateway):
    client = await gateway(make_config(str(upstream.make_url("/")),
                                       upstreams=[{"name": "app",
                                                   "url": str(upstream.make_url("/")),
                                                   "public": ["/"]}]))
    r = await send(client, "GET", "/x", headers=[("X-Request-ID", "lb-7f3a.19")])
    assert seen_headers(r.json())["x-request-id"] == ["lb-7f3a.19"]
    for odd in ("two words", "x" * 200, "a\u00e9"):
        r = await send(client, "GET", "/x", headers=[("X-Request-ID", odd)])
        (rid,) = seen_headers(r.json())["x-request-id"]
        assert rid != odd and len(rid) == 16


def test_json_lines_carry_the_access_fields() -> None:
    record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1,
                               "%s %s", ("abc", "alice"), None)
    record.fields = {"request_id": "abc", "user": "alice", "status": 200}
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "abc alice" and line["level"] == "info"
    assert (line["request_id"], line["user"], line["status"]) == ("abc", "alice", 200)
    assert line["time"].endswith("Z") and line["logger"] == "gateway.access"


async def test_a_session_end_is_said_once_and_secrets_never(upstream, make_config, answering,
                                                            caplog):
    client = await answering(make_config(str(upstream.make_url("/"))))
    caplog.set_level(logging.DEBUG)
    r = await send(client, "POST", "/_gateway/api/login",
                   json={"username": "alice", "password": "alice-pw"})
    token = r.set_cookies()["gateway_session"].split("=", 1)[1].split(";", 1)[0]
    sid = r.json()["session"]["id"]
    await send(client, "GET", "/x", token=token)
    r = await send(client, "POST", "/_gateway/logout", token=token, json={})
    assert r.status == 303
    ended = [rec.getMessage() for rec in caplog.records if "ended" in rec.getMessage()]
    assert len(ended) == 1 and "ended: logout (by alice)" in ended[0]
    everything = "\n".join(rec.getMessage() for rec in caplog.records)
    for secret in ("alice-pw", token, sid):
        assert secret not in everything


async def test_an_unreachable_upstream_is_logged_with_address_and_errno(make_config, gateway,
                                                                        caplog):
    client = await gateway(make_config("http://127.0.0.1:9", upstreams=[
        {"name": "app", "url": "http://127.0.0.1:9", "public": ["/"]}]))
    caplog.set_level(logging.WARNING, logger="gateway.proxy")
    r = await send(client, "GET", "/x")
    assert r.status == 502
    assert "upstream app (127.0.0.1:9) unavailable: ECONNREFUSED Connection refused" in \
        caplog.text
