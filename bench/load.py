"""Load generators: wrk for throughput and latency, curl for single huge bodies,
and a raw keep-alive poller that knows which connection got which answer.

Every generator is bounded in time (wrk -d, curl --max-time, the poller's
deadline) and talks only to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

LUA = Path(__file__).resolve().parent / "lua" / "bench.lua"


@dataclass(frozen=True)
class WrkSettings:
    """Identical for every contender within a scenario."""
    threads: int
    connections: int
    duration: int  # whole seconds: wrk rejects fractions
    timeout: float = 10.0

    def describe(self) -> str:
        return f"wrk -t{self.threads} -c{self.connections} -d{self.duration:g}s --timeout {self.timeout:g}s"


@dataclass
class WrkResult:
    requests: int
    seconds: float
    bytes_read: int
    errors: dict[str, int]
    latency_ms: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def non_2xx(self) -> int:
        """wrk counts answers with status > 399 (3xx pass as success)."""
        return self.errors.get("status", 0)

    @property
    def socket_errors(self) -> int:
        return sum(v for k, v in self.errors.items() if k != "status")


def wrk(url: str, settings: WrkSettings, *, headers: dict[str, str] | None = None,
        method: str = "GET", body_size: int = 0,
        login_users: int = 0, login_prefix: str = "", login_password: str = "") -> WrkResult:
    """Run wrk once with ``bench.lua``; returns its parsed summary."""
    env = {**os.environ,
           "BENCH_METHOD": method,
           "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in (headers or {}).items()),
           "BENCH_BODY_SIZE": str(body_size),
           "BENCH_LOGIN_USERS": str(login_users),
           "BENCH_LOGIN_PREFIX": login_prefix,
           "BENCH_LOGIN_PASSWORD": login_password}
    argv = ["wrk", f"-t{settings.threads}", f"-c{settings.connections}",
            f"-d{settings.duration:g}s", "--timeout", f"{settings.timeout:g}s",
            "-s", str(LUA), url]
    out = subprocess.run(argv, env=env, capture_output=True, text=True,
                         timeout=settings.duration + settings.timeout + 30)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line[len("BENCH_JSON "):])
            return WrkResult(
                requests=data["requests"], seconds=data["duration_us"] / 1e6,
                bytes_read=data["bytes"], errors=data["errors"],
                latency_ms={k: v / 1000 for k, v in data["latency_us"].items()})
    raise RuntimeError(f"wrk printed no summary (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")


@dataclass
class Transfer:
    status: int
    bytes: int
    seconds: float

    @property
    def mib_per_s(self) -> float:
        return self.bytes / self.seconds / 2**20 if self.seconds else 0.0


def curl_transfer(url: str, *, cookie: str = "", upload: Path | None = None,
                  max_time: float = 300) -> Transfer:
    """One download (body discarded) or one upload of ``upload`` (streamed by curl)."""
    argv = ["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "--max-time", f"{max_time:g}",
            "-H", "Accept: application/json", "-w", "%{http_code} %{size_download} "
            "%{size_upload} %{time_total}"]
    if cookie:
        argv += ["-H", f"Cookie: {cookie}"]
    if upload is not None:
        argv += ["-X", "POST", "-T", str(upload), "-H", "Expect:"]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=max_time + 10)
    parts = out.stdout.split()
    if len(parts) != 4:
        raise RuntimeError(f"curl failed ({out.returncode}): {out.stderr.strip()}")
    code, down, up, secs = int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3])
    return Transfer(code, up if upload is not None else down, secs)


@dataclass
class Answer:
    sent: float      # time.monotonic() when the request was written
    at: float        # ... when its answer had been read
    status: int


@dataclass
class Conn:
    local_port: int = 0
    answers: list[Answer] = field(default_factory=list)


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Status of one HTTP/1.1 response; reads its body (Content-Length or chunked)."""
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split()[1])
    length, chunked = 0, False
    while True:
        line = await reader.readuntil(b"\r\n")
        if line == b"\r\n":
            break
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def poll_keepalive(port: int, path: str, headers: dict[str, str], connections: int,
                         until: asyncio.Event, deadline: float) -> list[Conn]:
    """``connections`` keep-alive connections each sending GETs back to back.

    Stops when ``until`` is set or at ``deadline`` (monotonic), whichever is first.
    """
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    payload = head.encode()
    conns = [Conn() for _ in range(connections)]

    async def one(conn: Conn) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn.local_port = writer.get_extra_info("sockname")[1]
        try:
            while not until.is_set() and time.monotonic() < deadline:
                sent = time.monotonic()
                writer.write(payload)
                status = await asyncio.wait_for(_read_response(reader), timeout=5)
                conn.answers.append(Answer(sent, time.monotonic(), status))
        finally:
            writer.close()

    await asyncio.gather(*(one(c) for c in conns))
    return conns


@dataclass
class PacedResult:
    sent: int
    ok: int
    statuses: dict[int, int]
    seconds: float
    latency_ms: dict[str, float]

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


async def paced_logins(port: int, rate: float, duration: float, users: list[str],
                       password: str) -> PacedResult:
    """Open-loop logins: one every 1/rate s whatever the answers, like real users.

    wrk cannot hold a rate (its delay() adds to each response time), so this
    small aiohttp client does. Stragglers get 30 s, then are cancelled.
    """
    import aiohttp

    url = f"http://127.0.0.1:{port}/_gateway/api/login"
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        body = {"username": users[i % len(users)], "password": password}
        t = time.monotonic()
        try:
            async with session.post(url, json=body) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            status = 0
        latencies.append(time.monotonic() - t)
        statuses[status] = statuses.get(status, 0) + 1

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=timeout, trust_env=False) as session:
        tasks: list[asyncio.Task[None]] = []
        t0 = time.monotonic()
        while True:
            due = t0 + len(tasks) / rate
            if due >= t0 + duration:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.ensure_future(one(session, len(tasks))))
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=30)
            for task in pending:
                task.cancel()
    ordered = sorted(latencies) or [0.0]
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return PacedResult(sent=len(tasks), ok=statuses.get(200, 0), statuses=statuses,
                       seconds=duration,
                       latency_ms={"p50": pick(0.5), "p99": pick(0.99)})
