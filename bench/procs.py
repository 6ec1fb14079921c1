"""Start and stop the benchmark's services.

Every service gets a free loopback port, its own temp dir under one run
root, and its own process group (so teardown reaches forked workers too).
``Stack.close`` tears everything down in reverse start order; ``__main__``
calls it from ``finally`` so Ctrl-C and errors clean up as well.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
PEERS_DIR = BENCH_DIR / "peers"
REPO_DIR = BENCH_DIR.parent
VENV_BIN = Path(sys.executable).parent

INSTALL_HINT = "apt-get install -y nginx caddy wrk redis-server"
REQUIRED_TOOLS = ("nginx", "caddy", "wrk", "redis-server", "curl")

# Loopback only: no proxy settings from the environment may reroute traffic.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def check_tools() -> None:
    """Fail early, naming the install command, if a tool is missing."""
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)}\ninstall them with: {INSTALL_HINT}")


class PortPool:
    """Hands out free loopback ports, never the same one twice in a run."""

    def __init__(self) -> None:
        self.used: set[int] = set()

    def take(self) -> int:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in self.used:
                self.used.add(port)
                return port


def render(template: Path, dest: Path, **values: object) -> Path:
    """Fill ``{{name}}`` placeholders (nginx and Caddy syntax never uses them)."""
    text = template.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    if "{{" in text:
        raise ValueError(f"{template.name}: unfilled placeholder in {dest}")
    dest.write_text(text)
    return dest


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """Status of a GET, or None if nothing answers."""
    try:
        with _HTTP.open(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    dir: Path
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the whole process group, SIGKILL whatever outlives ``grace``."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
                # The leader is gone; forked workers may linger a moment.
                if sig == signal.SIGTERM and _group_alive(self.proc.pid):
                    time.sleep(0.2)
                    if _group_alive(self.proc.pid):
                        continue
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@dataclass
class Stack:
    """Every service and temp dir of one run; ``close`` removes them all."""

    keep: bool = False
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gwbench-")))
    ports: PortPool = field(default_factory=PortPool)
    services: list[Service] = field(default_factory=list)

    def __post_init__(self) -> None:
        # nginx workers drop to 'nobody' when started as root: let them in.
        self.root.chmod(0o755)

    def dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(mode=0o755)
        return d

    def spawn(self, name: str, argv: list[str], *, port: int, dir: Path,
              ready: Callable[[], bool], env: dict[str, str] | None = None,
              timeout: float = 30.0) -> Service:
        """Start ``argv`` in its own process group and wait until ``ready()``."""
        log = dir / "output.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=dir, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, **(env or {})})
        svc = Service(name, proc, dir, port, log)
        self.services.append(svc)
        deadline = time.monotonic() + timeout
        while not ready():
            if not svc.alive():
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{svc.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout:.0f}s:\n{svc.log_tail()}")
            time.sleep(0.05)
        return svc

    def stop(self, svc: Service) -> None:
        svc.stop()
        if svc in self.services:
            self.services.remove(svc)

    def close(self) -> None:
        for svc in reversed(self.services):
            svc.stop()
        self.services.clear()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- the services -------------------------------------------------------

    def upstream(self, big_file_size: int) -> Service:
        """nginx serving ``/`` (tiny), ``/1m``, ``/1g`` (sparse) and ``/upload``."""
        d, port = self.dir("upstream"), self.ports.take()
        www = d / "www"
        www.mkdir(mode=0o755)
        (www / "1m").write_bytes(os.urandom(1 << 20))
        with open(www / "1g", "wb") as f:
            f.truncate(big_file_size)
        for f in www.iterdir():
            f.chmod(0o644)
        return self._nginx("upstream", d, port, "upstream.nginx.conf")

    def nginx_proxy(self, upstream: Service, workers: int) -> Service:
        d, port = self.dir("nginx-proxy"), self.ports.take()
        return self._nginx("nginx", d, port, "proxy.nginx.conf",
                           upstream_port=upstream.port, workers=workers)

    def nginx_authreq(self, upstream: Service, auth: Service, workers: int) -> Service:
        d, port = self.dir("nginx-authreq"), self.ports.take()
        return self._nginx("nginx+auth_request", d, port, "authreq.nginx.conf",
                           upstream_port=upstream.port, auth_port=auth.port,
                           workers=workers)

    def _nginx(self, name: str, d: Path, port: int, template: str, **values: object) -> Service:
        conf = render(PEERS_DIR / template, d / "nginx.conf", dir=d, port=port, **values)
        return self.spawn(name, ["nginx", "-p", str(d), "-c", str(conf)], port=port, dir=d,
                          ready=lambda: http_status(f"http://127.0.0.1:{port}/") is not None)

    def caddy(self, upstream: Service) -> Service:
        d, port = self.dir("caddy"), self.ports.take()
        conf = render(PEERS_DIR / "Caddyfile", d / "Caddyfile", dir=d, port=port,
                      upstream_port=upstream.port)
        env = {"HOME": str(d), "XDG_DATA_HOME": str(d / "data"),
               "XDG_CONFIG_HOME": str(d / "config")}
        return self.spawn("caddy", ["caddy", "run", "--config", str(conf), "--adapter", "caddyfile"],
                          port=port, dir=d, env=env,
                          ready=lambda: http_status(f"http://127.0.0.1:{port}/") is not None)

    def redis(self, name: str = "redis") -> Service:
        d, port = self.dir(name), self.ports.take()
        argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(d),
                "--save", "", "--appendonly", "no", "--protected-mode", "yes",
                "--maxclients", "10000", "--loglevel", "warning"]
        return self.spawn(name, argv, port=port, dir=d, ready=lambda: redis_ping(port))

    def auth_service(self, redis: Service, secret: str, workers: int) -> Service:
        d, port = self.dir("auth-service"), self.ports.take()
        argv = [sys.executable, str(PEERS_DIR / "auth_service.py"), str(port),
                f"redis://127.0.0.1:{redis.port}/0", str(workers)]
        return self.spawn("auth_service", argv, port=port, dir=d, env={"AUTH_SECRET": secret},
                          ready=lambda: http_status(f"http://127.0.0.1:{port}/auth") == 401)

    def gateway(self, name: str, config: Path, port: int) -> Service:
        """``gateway run`` with a config already written (see ``gwctl``)."""
        return self.spawn(name, gateway_command() + ["run", "--config", str(config)],
                          port=port, dir=config.parent, timeout=60,
                          env={"PYTHONPATH": str(REPO_DIR)},
                          ready=lambda: http_status(f"http://127.0.0.1:{port}/_gateway/healthz") == 200)


def gateway_command() -> list[str]:
    """The installed console script, else ``python -m gateway`` from the repo."""
    script = VENV_BIN / "gateway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


def gateway_runnable() -> str | None:
    """None if ``gateway run`` exists, else why not (the gateway is still being written)."""
    try:
        out = subprocess.run(gateway_command() + ["--help"], cwd=REPO_DIR, capture_output=True,
                             text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO_DIR)})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if out.returncode != 0 or "run" not in out.stdout:
        lines = (out.stderr or out.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit status {out.returncode}"
    return None
