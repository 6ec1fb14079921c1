"""Log lines: text or JSON on stderr, the access log, request ids.

``logging.format: json`` writes one JSON object a line (``time``, ``level``,
``logger``, ``message``, and an access line's fields), for log shippers.
The access log (``access_log``, on by default, whatever ``log_level``
says) is one line per request,
written by aiohttp once the response is sent: time, request id, user,
method, path, status, upstream, duration and bytes sent (headers included,
as nginx's ``$bytes_sent``). The path is logged
without its query, which is where apps put tokens; cookies, passwords and
session ids are never logged anywhere.

Every request has an id: the client's ``X-Request-ID`` when it is a short
plain token (a proxy in front made it), else a new one. The upstream gets it
in ``X-Request-ID`` too, so one request can be followed through both logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .metrics import answered
from .security_headers import UPSTREAM_ANSWER

# What the proxy learnt of a request, for its access line: (user, upstream).
ACCESS = web.RequestKey("access", tuple)
REQUEST_ID = web.RequestKey("request id", str)

_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(request: web.BaseRequest) -> str:
    """The request's id, made once: the client's if it is a plain token."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        sent = request.headers.get("X-Request-ID")
        rid = sent if sent is not None and _ID.fullmatch(sent) else os.urandom(8).hex()
        request[REQUEST_ID] = rid
    return rid


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "pid": record.process,
            "message": record.getMessage()}
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    text = logging.Formatter("%(asctime)s.%(msecs)03dZ %(process)d %(levelname)s %(name)s: "
                             "%(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
    text.converter = time.gmtime         # UTC, as the access lines and JSON lines
    handler.setFormatter(JsonFormatter() if fmt == "json" else text)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp logs every malformed request with a traceback; one line is enough.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    LINES.json = fmt == "json"


class AccessLines:
    """Access lines, written in batches (``flush``, a few times a second by
    the worker): through ``logging`` with a write per line, they cost a
    request about 40 microseconds, a fifth of the hot path."""

    def __init__(self, fmt: str = "text", stream: Any = None) -> None:
        self.json = fmt == "json"
        self.stream = stream
        self._lines: list[str] = []
        self._second = -1
        self._stamp = ""

    def add(self, rid: str, user: str, method: str, path: str, status: int, upstream: str,
            duration: float, sent: int) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:         # the time of day, formatted once a second
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        ms = round(duration * 1000, 1)
        if self.json:
            self._lines.append(json.dumps({
                "time": f"{self._stamp}.{int((now - second) * 1000):03d}Z", "level": "info",
                "logger": "gateway.access", "pid": _PID, "request_id": rid, "user": user,
                "method": method, "path": path, "status": status, "upstream": upstream,
                "duration_ms": ms, "bytes": sent}) + "\n")
        else:
            self._lines.append(f"{self._stamp}.{int((now - second) * 1000):03d}Z {_PID} INFO "
                               f"gateway.access: {rid} {user} {method} {path} {status} "
                               f"{upstream} {ms}ms {sent}B\n")
        if len(self._lines) >= 1000:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = "".join(self._lines), []
            try:
                (self.stream or sys.stderr).write(lines)
                (self.stream or sys.stderr).flush()
            except (OSError, ValueError):    # a closed stderr: the lines are lost, not the worker
                pass

    async def keep_flushing(self, every: float = 0.25) -> None:
        try:
            while True:
                await asyncio.sleep(every)
                self.flush()
        finally:
            self.flush()


_PID = os.getpid()
# The worker's access lines (server.run_worker sets the format).
LINES = AccessLines()


def outcome(response: web.StreamResponse) -> str:
    """What became of a request, for the metrics: the app answered it
    (proxied), the gateway refused it (denied) or failed (error), or it was
    the gateway's own (its pages, redirects, 4xx of malformed requests)."""
    if UPSTREAM_ANSWER in response:
        return "proxied"
    status = response.status
    if status in (401, 403, 429):
        return "denied"
    return "error" if status >= 500 else "gateway"


class AccessLogger(AbstractAccessLogger):
    """Called by aiohttp once a request is answered: the request's metrics
    (``METRICS``) and, with ``access_log``, its line (``LINES``)."""
    METRICS = True
    LINES = True

    @property
    def enabled(self) -> bool:
        return True

    def log(self, request: web.BaseRequest, response: web.StreamResponse,
            duration: float) -> None:
        user, upstream = request.get(ACCESS, ("-", "-"))
        if self.METRICS:
            answered(outcome(response), upstream, response.status, duration)
        if self.LINES:
            # As sent (percent-escapes kept: no line breaks), without the query.
            LINES.add(request_id(request), user, request.method,
                      request.raw_path.partition("?")[0], response.status, upstream,
                      duration, response.body_length)
