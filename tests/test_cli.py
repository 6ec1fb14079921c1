"""The ``gateway`` command as an operator runs it: real subprocesses, real ports."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import select
import signal
import subprocess
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from argon2 import PasswordHasher

from conftest import base_config, deep_merge, free_port, write_users

GATEWAY = Path(sys.executable).with_name("gateway")
COMMANDS = [[str(GATEWAY)], [sys.executable, "-m", "gateway"]]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def run_cli(*args: str, stdin: bytes | None = None, command: list[str] | None = None,
                  cwd: Path | None = None, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *(command or COMMANDS[0]), *args, cwd=cwd, env=clean_env(),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(folder: Path, upstream_url: str = "http://127.0.0.1:9",
                 **overrides: Any) -> Path:
    write_users(folder)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(deep_merge(base_config(upstream_url), overrides)))
    return path


BAD_OVERRIDES = {"secret": "short", "session": {"idel_timeout": "5m"},
                 "upstreams": [{"name": "app", "url": "ftp://x", "path_prefix": "/"}]}
BAD_LINES = {
    "secret: must be at least 32 bytes (got 5)",
    "session.idel_timeout: unknown key",
    "upstreams[0].url: must be a http or https URL with a host (got 'ftp://x')",
}


# -- check-config ---------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS, ids=["script", "module"])
async def test_check_config_ok(tmp_path: Path, command: list[str]) -> None:
    path = write_config(tmp_path)
    code, out, err = await run_cli("check-config", "--config", str(path), command=command)
    assert (code, out.strip()) == (0, "ok"), err


async def test_check_config_finds_config_yaml_in_cwd_and_env(tmp_path: Path) -> None:
    write_config(tmp_path)
    code, out, _ = await run_cli("check-config", cwd=tmp_path)
    assert (code, out.strip()) == (0, "ok")
    other = tmp_path / "elsewhere"
    other.mkdir()
    proc = await asyncio.create_subprocess_exec(
        str(GATEWAY), "check-config", cwd=other,
        env={**clean_env(), "GATEWAY_CONFIG": str(tmp_path / "config.yaml")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out_b, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert (proc.returncode, out_b.decode().strip()) == (0, "ok")


async def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    path = write_config(tmp_path, **BAD_OVERRIDES)
    code, out, err = await run_cli("check-config", "--config", str(path))
    assert code == 1
    assert "ok" not in out.split()
    assert set(err.strip().splitlines()) == BAD_LINES


@pytest.mark.parametrize("content, expected", [
    ("listen: [unclosed\n", "not valid YAML at line"),
    ("- just\n- a list\n", "(top level): must be a mapping"),
    ("", "secret: is required"),
])
async def test_check_config_unusable_files(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(content)
    code, out, err = await run_cli("check-config", "--config", str(path))
    assert code == 1
    assert expected in err
    assert "Traceback" not in err


async def test_check_config_missing_file(tmp_path: Path) -> None:
    code, _, err = await run_cli("check-config", "--config", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert err.strip() == f"{tmp_path / 'nope.yaml'}: cannot read config file (No such file or directory)"


async def test_check_config_validates_users_file(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    (tmp_path / "users.yaml").write_text(yaml.safe_dump({"users": [
        {"username": "a", "password_hash": "plaintext"}]}))
    code, _, err = await run_cli("check-config", "--config", str(path))
    assert code == 1
    assert err.strip() == ("users.file (users.yaml): users[0].password_hash: "
                           "must be an argon2id hash from 'gateway hash-password'")


# -- run on a bad config ----------------------------------------------------------------------

async def test_run_bad_config_exits_with_the_same_messages(tmp_path: Path) -> None:
    path = write_config(tmp_path, **BAD_OVERRIDES)
    code, _, check_err = await run_cli("check-config", "--config", str(path))
    code, out, err = await run_cli("run", "--config", str(path))
    assert code == 1
    assert err == check_err
    assert set(err.strip().splitlines()) == BAD_LINES
    assert "Traceback" not in err + out


async def test_run_bad_users_file_exits(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    (tmp_path / "users.yaml").unlink()
    code, out, err = await run_cli("run", "--config", str(path))
    assert code == 1
    assert err.strip().startswith("users.file: cannot read ")
    assert "Traceback" not in err + out


@pytest.mark.parametrize("workers", [1, 2])
async def test_run_port_in_use_exits_cleanly(tmp_path: Path, redis_server: Any,
                                             workers: int) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        path = write_config(tmp_path, listen=f"127.0.0.1:{port}", workers=workers,
                            session={"store": "redis", "redis": {"url": redis_server.url}})
        code, out, err = await run_cli("run", "--config", str(path))
    finally:
        blocker.close()
    # One line, and no "listening" before it.
    assert (code, out, err) == (1, "", f"listen: 127.0.0.1:{port} is already in use\n")


async def test_an_uncreatable_assertion_key_is_a_config_error(tmp_path: Path) -> None:
    """Found by check-config, and by run before it listens. (A folder that is
    not writable: tests/test_docker_layout.py, as a user who is not root.)"""
    path = write_config(tmp_path, assertion={"key_file": "missing/key.pem"})
    key = tmp_path / "missing" / "key.pem"
    expected = (f"assertion.key_file: cannot create {key} (the folder {key.parent} does not "
                "exist); "
                "the key is created on first start, so set assertion.key_file to a file in a "
                "folder the gateway can write (in the Docker image: "
                "/var/lib/gateway/assertion-key.pem), or put an existing key there\n")
    for command in ("check-config", "run"):
        assert await run_cli(command, "--config", str(path)) == (1, "", expected)


# -- hash-password -----------------------------------------------------------------------------

@pytest.mark.parametrize("password", ["correct horse battery staple", "pässwörd ✓", "x"])
async def test_hash_password_from_stdin(password: str) -> None:
    code, out, err = await run_cli("hash-password", stdin=(password + "\n").encode())
    assert code == 0, err
    digest = out.strip()
    assert digest.startswith("$argon2id$")
    assert "\n" not in digest
    assert PasswordHasher().verify(digest, password)
    with pytest.raises(Exception):
        PasswordHasher().verify(digest, password + "!")


async def test_hash_password_empty_is_refused() -> None:
    code, out, err = await run_cli("hash-password", stdin=b"\n")
    assert code == 1
    assert out == ""
    assert "empty" in err


def hash_password_on_a_terminal(*keys: bytes) -> tuple[int, str, str]:
    """``gateway hash-password`` with a terminal of its own, as a person runs it:
    each of ``keys`` is typed at the next prompt. (exit code, stdout, stderr)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [str(GATEWAY), "hash-password"], stdin=terminal, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=clean_env(), start_new_session=True,
        # getpass talks to the controlling terminal, not to stdin.
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(terminal)
    try:
        for typed in keys:
            screen = b""
            while not screen.endswith(b": "):
                assert select.select([controller], [], [], 20)[0], f"no prompt: {screen!r}"
                screen += os.read(controller, 1024)
            os.write(controller, typed)
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out.decode(), err.decode()


def test_hash_password_on_a_terminal_asks_twice() -> None:
    code, out, err = hash_password_on_a_terminal(b"s3cret\n", b"s3cret\n")
    assert code == 0, err
    assert PasswordHasher().verify(out.strip(), "s3cret")
    code, out, err = hash_password_on_a_terminal(b"s3cret\n", b"other\n")
    assert (code, out, err) == (1, "", "the passwords do not match\n")


@pytest.mark.parametrize("keys", [[b"\x04"], [b"s3cret\n", b"\x04"]],
                         ids=["at the first prompt", "at the second"])
def test_hash_password_end_of_input_is_one_line(keys: list[bytes]) -> None:
    code, out, err = hash_password_on_a_terminal(*keys)
    assert (code, out, err.strip()) == (1, "", "the input ended (Ctrl-D): nothing was hashed")


@pytest.mark.parametrize("keys", [[b"\x03"], [b"s3cret\n", b"\x03"]],
                         ids=["at the first prompt", "at the second"])
def test_hash_password_interrupted_is_quiet(keys: list[bytes]) -> None:
    assert hash_password_on_a_terminal(*keys) == (130, "", "")


async def test_hash_is_accepted_by_the_users_file(tmp_path: Path) -> None:
    _, out, _ = await run_cli("hash-password", stdin=b"s3cret\n")
    path = write_config(tmp_path)
    (tmp_path / "users.yaml").write_text(yaml.safe_dump({"users": [
        {"username": "eve", "password_hash": out.strip(), "roles": ["user"]}]}))
    code, out, err = await run_cli("check-config", "--config", str(path))
    assert (code, out.strip()) == (0, "ok"), err


# -- serving ----------------------------------------------------------------------------------

class Running:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.base = f"http://127.0.0.1:{port}"

    async def wait_healthy(self, session: aiohttp.ClientSession, within: float = 20) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            if self.proc.returncode is not None:
                pytest.fail(f"gateway exited with {self.proc.returncode}: "
                            f"{self.log.read_text()[-2000:]}")
            try:
                async with session.get(self.base + "/_gateway/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail("gateway did not become healthy")
            await asyncio.sleep(0.1)

    async def stop(self, within: float = 15) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), within)


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[Any]:
    started: list[Running] = []

    async def start(upstream_url: str, **overrides: Any) -> Running:
        port = free_port()
        path = write_config(tmp_path, upstream_url, listen=f"127.0.0.1:{port}",
                            shutdown_timeout="10s", **overrides)
        log = tmp_path / f"gateway-{port}.log"
        with log.open("wb") as sink:
            # Its own session: the gateway and its workers form one process group.
            proc = await asyncio.create_subprocess_exec(
                str(GATEWAY), "run", "--config", str(path), env=clean_env(),
                stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink,
                start_new_session=True)
        running = Running(proc, port, log)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.proc.returncode is None:
            running.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(running.proc.wait(), 10)
            except asyncio.TimeoutError:
                pass
        try:  # workers left behind by a test that failed half-way
            os.killpg(running.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if running.proc.returncode is None:
            await asyncio.wait_for(running.proc.wait(), 10)


def client_session() -> aiohttp.ClientSession:
    """A client that keeps cookies for 127.0.0.1 (aiohttp's default jar refuses IPs)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def test_run_two_workers_with_redis(redis_server: Any, upstream: Any,
                                          start_gateway: Any) -> None:
    gw = await start_gateway(str(upstream.make_url("/")), workers=2,
                             session={"store": "redis", "redis": {"url": redis_server.url}})
    async with client_session() as session:
        await gw.wait_healthy(session)
        async with session.get(gw.base + "/_gateway/readyz") as resp:
            assert resp.status == 200
        async with session.get(gw.base + "/static/app.css") as resp:
            assert resp.status == 200
            assert (await resp.json())["path"] == "/static/app.css"
        async with session.post(gw.base + "/_gateway/api/login",
                                json={"username": "alice", "password": "alice-pw"}) as resp:
            assert resp.status == 200
        # Sessions live in Redis: every connection (whichever worker takes it) sees it.
        for _ in range(10):
            async with session.get(gw.base + "/private",
                                   headers={"Connection": "close"}) as resp:
                assert resp.status == 200
                body = await resp.json()
                assert ["X-Auth-User", "alice"] in body["headers"]
    assert await gw.stop() == 0


async def test_a_second_gateway_on_a_running_ones_port_is_refused(
        tmp_path: Path, redis_server: Any, upstream: Any, start_gateway: Any) -> None:
    """Workers bind with SO_REUSEPORT: unchecked, a second gateway on the same
    port would start quietly and take a share of the connections."""
    gw = await start_gateway(str(upstream.make_url("/")), workers=2,
                             session={"store": "redis", "redis": {"url": redis_server.url}})
    async with client_session() as session:
        await gw.wait_healthy(session)
    code, out, err = await run_cli("run", "--config", str(tmp_path / "config.yaml"))
    assert (code, out, err) == (1, "", f"listen: 127.0.0.1:{gw.port} is already in use\n")
    assert gw.proc.returncode is None
    assert await gw.stop() == 0


async def test_graceful_shutdown_finishes_in_flight_request(aiohttp_server: Any,
                                                            start_gateway: Any) -> None:
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/static/slow", slow)
    server = await aiohttp_server(app, host="127.0.0.1")
    gw = await start_gateway(str(server.make_url("/")))
    async with client_session() as session:
        await gw.wait_healthy(session)

        async def fetch() -> tuple[int, str]:
            async with session.get(gw.base + "/static/slow?s=1") as resp:
                return resp.status, await resp.text()

        in_flight = asyncio.ensure_future(fetch())
        await asyncio.wait_for(arrived.wait(), 10)
        gw.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(in_flight, 10) == (200, "late")
        assert await asyncio.wait_for(gw.proc.wait(), 15) == 0


# -- memory ---------------------------------------------------------------------------------

HEAP_PROBE = """
import ctypes, sys
from gateway.server import tune_malloc

def from_heap(size):
    block = bytearray(size)
    address = ctypes.addressof((ctypes.c_char * size).from_buffer(block))
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            low, high = (int(x, 16) for x in line.split()[0].split("-"))
            return low <= address < high
    return False

trim = tune_malloc() if sys.argv[1] == "tune" else None
print(trim is not None, from_heap(3 * 2**20), from_heap(8 * 2**20))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="mallopt tuning is for glibc on Linux")
@pytest.mark.parametrize("mode, env, expected", [
    ("plain", {}, "False False False"),
    ("tune", {}, "True True False"),
    ("tune", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "True True False"),
    ("tune", {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}, "False False False"),
    ("tune", {"MALLOC_MMAP_THRESHOLD_": "131072"}, "False False False"),
])
async def test_workers_keep_streaming_buffers_in_the_heap(mode: str, env: dict[str, str],
                                                          expected: str) -> None:
    """Blocks a relayed body is made of (under 4 MiB) are reused, not mapped per chunk."""
    assert await heap_probe(HEAP_PROBE, mode, env) == expected


TRIM_PROBE = """
from gateway.server import tune_malloc

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

trim = tune_malloc()
drain = [bytes(1000) + b"%d" % i for i in range(20000)]  # use up the free small chunks
blocks, pins = [], []
for i in range(300):  # a burst of 256 KiB chunks, a small live object after each
    blocks.append(b"x" * (256 * 1024))
    pins.append(bytes(1000) + b"%d" % i)
blocks.clear()
before = rss_mib()
trim()
print(before - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="mallopt tuning is for glibc on Linux")
async def test_a_burst_of_streams_does_not_stay_resident() -> None:
    """Freed chunk buffers pinned below live objects go back to the kernel on trim."""
    freed_mib = int(await heap_probe(TRIM_PROBE, "", {}))
    assert freed_mib > 50  # of the 75 MiB burst


async def heap_probe(code: str, mode: str, extra: dict[str, str]) -> str:
    env = clean_env()
    for name in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(name, None)
    env.update(extra)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, mode, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


# -- sessions list / revoke -----------------------------------------------------------------

async def _sessions_in_redis(tmp_path: Path, redis_server: Any, count: int) -> tuple[Path, Any]:
    """A config on a real Redis, and ``count`` sessions of alice plus one of Admin,
    started through the same lifecycle as the gateway's."""
    from gateway.auth.sessions import SessionService
    from gateway.auth.users import UserDirectory
    from gateway.config import load_config
    from gateway.store import create_store
    prefix = f"cli{os.getpid()}{free_port()}"
    path = write_config(tmp_path, session={"store": "redis", "redis": {
        "url": redis_server.url, "key_prefix": prefix}})
    config = load_config(path)
    store = create_store(config.session)
    users = UserDirectory(config.users_file)
    service = SessionService(config, store, users, tokens=None)
    try:
        made = [await service.start(users.get("alice"), remember=False, ip=f"10.0.0.{i}",
                                    user_agent="UA") for i in range(count)]
        made.append(await service.start(users.get("Admin"), remember=False, ip="10.9.9.9",
                                        user_agent="UA"))
    finally:
        users.close()
        await store.close()
    return path, made


async def test_sessions_list_shows_every_live_session(tmp_path: Path, redis_server: Any) -> None:
    path, made = await _sessions_in_redis(tmp_path, redis_server, 3)
    code, out, err = await run_cli("sessions", "list", "--config", str(path))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["ID", "USER", "CREATED", "LAST", "SEEN", "IP"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(s.id for s in made)
    code, out, _ = await run_cli("sessions", "list", "--user", " ALICE ", "--config", str(path))
    assert code == 0
    assert sorted(line.split()[0] for line in out.strip().splitlines()[1:]) == \
        sorted(s.id for s in made[:3])


async def test_sessions_revoke_by_id_and_by_user(tmp_path: Path, redis_server: Any) -> None:
    from gateway.config import load_config
    from gateway.store import create_store
    path, made = await _sessions_in_redis(tmp_path, redis_server, 3)
    code, out, _ = await run_cli("sessions", "revoke", "--id", made[0].id, "--config", str(path))
    assert (code, out.strip()) == (0, "revoked 1 session")
    code, out, err = await run_cli("sessions", "revoke", "--id", made[0].id, "--config",
                                   str(path))
    assert (code, out, err.strip()) == (1, "", "no live session has that id")
    code, out, _ = await run_cli("sessions", "revoke", "--user", "alice", "--config", str(path))
    assert (code, out.strip()) == (0, "revoked 2 sessions")
    # Nothing to revoke is an error either way, with a line that says so.
    code, out, err = await run_cli("sessions", "revoke", "--user", "nobody", "--config",
                                   str(path))
    assert (code, out, err.strip()) == (1, "", "'nobody' has no live sessions")
    store = create_store(load_config(path).session)
    try:
        record = await store.ended("alice", made[0].id)
        assert (record.status, record.reason, record.actor) == ("REVOKED", "revoked_by_admin",
                                                                "cli")
        assert await store.user_sessions("alice") == []
        assert [s.id for s in await store.user_sessions("admin")] == [made[3].id]
    finally:
        await store.close()


async def test_sessions_need_a_shared_store(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    code, _, err = await run_cli("sessions", "list", "--config", str(path))
    assert code == 1
    assert err.startswith("session.store: the memory store lives inside the running gateway")


async def test_sessions_with_redis_down_say_so(tmp_path: Path) -> None:
    path = write_config(tmp_path, session={"store": "redis", "redis": {
        "url": f"redis://127.0.0.1:{free_port()}/0", "timeout": "200ms"}})
    code, _, err = await run_cli("sessions", "revoke", "--id", "x", "--config", str(path))
    assert (code, err.strip()) == (1, "session.redis.url: the session store is unreachable")


async def test_check_config_reports_config_and_users_file_problems_in_one_pass(
        tmp_path: Path) -> None:
    path = write_config(tmp_path, **BAD_OVERRIDES)
    (tmp_path / "users.yaml").write_text(yaml.safe_dump({"users": [
        {"username": "a", "password_hash": "plaintext", "roles": ["staff,admin"]}]}))
    code, _, err = await run_cli("check-config", "--config", str(path))
    assert code == 1
    assert set(err.strip().splitlines()) == BAD_LINES | {
        "users.file (users.yaml): users[0].password_hash: must be an argon2id hash from "
        "'gateway hash-password'",
        "users.file (users.yaml): users[0].roles[0]: role 'staff,admin' of user 'a' must not "
        "contain ',', whitespace or control characters"}


# -- demo -------------------------------------------------------------------------------------

@pytest.mark.parametrize("where, url", [
    ("--port {port}", "http://127.0.0.1:{port}"),
    # In a container: reachable from outside, through a published port.
    ("--listen 0.0.0.0:{port}", "http://localhost:{port}"),
], ids=["port", "listen"])
async def test_demo_serves_the_legacy_app_behind_the_gateway(tmp_path: Path, where: str,
                                                             url: str) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(GATEWAY), "demo", *where.format(port=port).split(), env=clean_env(), cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        banner = await asyncio.wait_for(proc.stdout.readuntil(b"Press Ctrl-C to stop."), 30)
        assert f"open {url.format(port=port)}/".encode() in banner
        assert b"alice / alice-demo / user" in banner
        base = f"http://127.0.0.1:{port}"
        async with client_session() as session:
            # The banner comes once the port is bound: the first try answers.
            async with session.get(base + "/_gateway/healthz") as resp:
                assert resp.status == 200
            async with session.get(base + "/", allow_redirects=False,
                                   headers={"Accept": "text/html"}) as resp:
                assert resp.status == 302
                assert resp.headers["Location"] == "/_gateway/login?rd=%2F"
            async with session.post(base + "/_gateway/api/login", json={
                    "username": "alice", "password": "alice-demo"}) as resp:
                assert resp.status == 200
            async with session.get(base + "/", headers={"X-Auth-User": "admin"}) as resp:
                page = await resp.text()
                assert resp.status == 200 and "Legacy app" in page
                assert "<td>X-Auth-User</td><td>alice</td>" in page
            async with session.get(base + "/admin") as resp:
                assert resp.status == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0


async def test_demo_port_in_use_is_one_line_and_no_banner(tmp_path: Path) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        code, out, err = await run_cli("demo", "--port", str(port), cwd=tmp_path)
    finally:
        blocker.close()
    assert (code, out, err) == (1, "", f"127.0.0.1:{port} is already in use; try: "
                                       f"gateway demo --listen 127.0.0.1:{port + 1}\n")


async def test_the_clis_revocations_are_in_the_audit_trail(tmp_path: Path,
                                                          redis_server: Any) -> None:
    path, made = await _sessions_in_redis(tmp_path, redis_server, 2)
    code, _, _ = await run_cli("sessions", "revoke", "--id", made[0].id, "--config", str(path))
    assert code == 0
    code, out, _ = await run_cli("audit", "search", "--type", "session.*", "--config", str(path))
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert (code, record["type"], record["actor"], record["user"]) == \
        (0, "session.revoked", "cli", made[0].username)
    assert made[0].id not in out                                   # a fingerprint only
    code, out, _ = await run_cli("audit", "tail", "--lines", "5", "--config", str(path))
    assert code == 0 and [json.loads(x)["type"] for x in out.splitlines()] == ["session.revoked"]
    code, out, _ = await run_cli("audit", "search", "--user", "nobody", "--config", str(path))
    assert (code, out) == (1, "")                                  # nothing matched
    code, _, err = await run_cli("audit", "search", "--since", "soon", "--config", str(path))
    assert code == 2 and "--since" in err
