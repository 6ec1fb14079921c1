"""The Docker image as an operator runs it, checked without Docker.

The package is installed from the files the Dockerfile copies (after
.dockerignore) into a fresh virtualenv, not run from the repository, and runs
as a user who is not root, with the config folder read-only and the key in a
folder of its own, as in the image. The Dockerfile, docker/config.yaml,
docker-compose.yml and .dockerignore are read for what must agree among them.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import free_port

REPO = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((REPO / "docker" / "config.yaml").read_text())
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, its arguments), continuation lines joined, comments left out."""
    text = (REPO / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(word.upper(), rest.strip()) for word, _, rest in
            (line.strip().partition(" ") for line in joined.splitlines() if line.strip())]


def instruction(name: str) -> list[str]:
    return [args for word, args in dockerfile() if word == name]


def copied() -> list[tuple[list[str], str]]:
    """The Dockerfile's COPY instructions: (sources, destination)."""
    return [(parts[:-1], parts[-1]) for parts in (args.split() for args in instruction("COPY"))]


def build_sources() -> list[str]:
    """What is copied into the folder ``pip install .`` builds from."""
    return [src for sources, dest in copied() if not dest.startswith("/") for src in sources]


def dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or a folder above it decides."""
    ignored = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        keep = pattern.startswith("!")
        regex = re.escape(pattern.lstrip("!").strip("/")).replace(r"\*\*/", "(.*/)?")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            ignored = not keep
    return ignored


def context(source: str) -> list[Path]:
    """The files of ``source`` that .dockerignore lets into the build context."""
    root = REPO / source
    files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file())
    return [f for f in files if not dockerignored(f.relative_to(REPO).as_posix())]


VOLUME = instruction("VOLUME")[0]
USER = instruction("USER")[0]
IMAGE_CONFIG = dict(a.split("=", 1) for a in instruction("ENV"))["GATEWAY_CONFIG"]
# What the image's config reads from the environment.
VARIABLES = set(re.findall(r"\$\{(\w+)\}", (REPO / "docker" / "config.yaml").read_text()))


# -- the files agree ------------------------------------------------------------------------

def test_the_image_keeps_the_key_where_its_user_can_write() -> None:
    assert USER == "gateway"
    assert VOLUME == "/var/lib/gateway"
    assert any(re.search(rf"\bchown {USER}(:{USER})? {VOLUME}\b", run)
               for run in instruction("RUN")), f"the Dockerfile gives {VOLUME} to {USER}"
    assert (["docker/config.yaml"], IMAGE_CONFIG) in copied()
    assert Path(CONFIG["assertion"]["key_file"]).parent == Path(VOLUME)


def test_compose_gives_the_gateway_what_the_image_expects() -> None:
    gateway = COMPOSE["services"]["gateway"]
    targets = {mount.split(":")[1] for mount in gateway["volumes"]}
    assert VOLUME in targets
    assert str(Path(IMAGE_CONFIG).parent / CONFIG["users"]["file"]) in targets
    assert set(gateway["environment"]) == VARIABLES
    assert "${GATEWAY_SECRET:?" in gateway["environment"]["GATEWAY_SECRET"]  # never a default
    upstream = gateway["environment"]["GATEWAY_UPSTREAM_URL"]
    assert re.fullmatch(r"http://app(:\d+)?", upstream) and "app" in COMPOSE["services"]
    assert "ports" not in COMPOSE["services"]["app"]  # only through the gateway


def test_dockerignore_keeps_what_the_build_copies_and_nothing_else() -> None:
    for sources, _ in copied():
        for source in sources:
            root = REPO / source
            wanted = [root] if root.is_file() else sorted(
                f for f in root.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
            assert wanted, f"the Dockerfile copies {source}, which is not in the repository"
            assert context(source) == wanted
    for left_out in [".venv/bin/python", ".git/HEAD", "tests/test_cli.py", "bench/results/x",
                     "docs/screenshots/x.png", "gateway/__pycache__/cli.cpython-311.pyc",
                     "config.yaml", "users.yaml", ".env", "gateway-assertion-key.pem"]:
        assert dockerignored(left_out), left_out


# -- the image, as a user who is not root -----------------------------------------------------

@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """A folder (readable by everyone) with ``venv/``: the package installed by pip
    from the Dockerfile's build sources, its dependencies taken from this
    environment through a .pth file, so that it works offline."""
    root = Path(tempfile.mkdtemp(prefix="gateway-image-"))
    root.chmod(0o755)
    try:
        src = root / "src"
        for source in build_sources():
            for f in context(source):
                copy = src / f.relative_to(REPO)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, copy)
        venv.create(root / "venv", with_pip=False)
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        site = root / "venv" / "lib" / version / "site-packages"
        (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
        built = subprocess.run(
            [root / "venv" / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps",
             "--no-build-isolation", "--no-index", "--ignore-installed",
             "--disable-pip-version-check", src], capture_output=True, text=True, timeout=300)
        assert built.returncode == 0, (
            "pip could not install the build sources (pyproject's build-system requirements "
            f"must be installed here):\n{built.stderr[-3000:]}")
        assert (site / "gateway" / "web" / "templates").is_dir()
        yield root
    finally:
        shutil.rmtree(root)


@dataclass
class User:
    """Who runs the gateway: ``nobody`` when these tests run as root, as the
    image runs it as ``gateway``; ``prefix`` runs a command as them."""
    uid: int
    gid: int
    prefix: list[str]


@pytest.fixture(scope="module")
def user(installed: Path) -> User:
    if os.geteuid() != 0:
        return User(os.getuid(), os.getgid(), [])
    setpriv = shutil.which("setpriv")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root, with no user 'nobody' to run the gateway as")
    if setpriv is None:
        pytest.skip("running as root, without setpriv (util-linux) to run the gateway as nobody")
    prefix = [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    same = [str(installed / "venv" / "bin" / "python"), "-c", "import sys; print(sys.version)"]
    if subprocess.run(prefix + same, capture_output=True, text=True).stdout.strip() != sys.version:
        # This Python lives where only root can read (pyenv under /root), and
        # nobody would get another one: let them read everything. Writing,
        # what these tests are about, stays nobody's.
        prefix += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return User(nobody.pw_uid, nobody.pw_gid, prefix)


class Image:
    """One deployment: /etc/gateway (read-only) and /var/lib/gateway under a folder."""

    def __init__(self, installed: Path, user: User) -> None:
        self.root = Path(tempfile.mkdtemp(dir=installed))
        self.root.chmod(0o755)
        self.gateway = installed / "venv" / "bin" / "gateway"
        self.user = user
        self.etc = self.root / "etc" / "gateway"
        self.state = self.root / "var" / "lib" / "gateway"
        self.etc.mkdir(parents=True)
        self.state.mkdir(parents=True, mode=0o700)
        os.chown(self.state, user.uid, user.gid)
        self.port = free_port()

    def configure(self, config: dict[str, Any], key: bytes | None = None) -> None:
        """Writes the config, docker/users.yaml beside it, and ``key`` as
        gateway-assertion-key.pem when given; then makes the folder read-only."""
        (self.etc / "config.yaml").write_text(yaml.safe_dump(config))
        shutil.copy(REPO / "docker" / "users.yaml", self.etc / config["users"]["file"])
        if key is not None:
            (self.etc / "gateway-assertion-key.pem").write_bytes(key)
        self.etc.chmod(0o555)

    def env(self, redis_url: str) -> dict[str, str]:
        values = {"GATEWAY_SECRET": secrets.token_urlsafe(32),
                  "GATEWAY_PUBLIC_URL": f"http://127.0.0.1:{self.port}",
                  "GATEWAY_REDIS_URL": redis_url,
                  "GATEWAY_UPSTREAM_URL": "http://127.0.0.1:9"}
        assert set(values) == VARIABLES
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent",
                "PYTHONUNBUFFERED": "1", "GATEWAY_CONFIG": str(self.etc / "config.yaml"),
                **values}

    async def start(self, command: str, redis_url: str,
                    **pipes: Any) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self.user.prefix, str(self.gateway), command, cwd=self.state,
            env=self.env(redis_url), stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
            **{"stdout": asyncio.subprocess.PIPE, "stderr": asyncio.subprocess.PIPE, **pipes})

    async def run(self, command: str, redis_url: str) -> tuple[int, str, str]:
        proc = await self.start(command, redis_url)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    def close(self) -> None:
        self.etc.chmod(0o755)
        shutil.rmtree(self.root)


@pytest.fixture
def image(installed: Path, user: User) -> Iterator[Image]:
    made = Image(installed, user)
    yield made
    made.close()


def image_config(image: Image, **assertion: Any) -> dict[str, Any]:
    """docker/config.yaml with this test's port, two workers (not one per CPU),
    and the key in the test's state folder instead of /var/lib/gateway."""
    key_file = CONFIG["assertion"]["key_file"].replace(VOLUME, str(image.state), 1)
    return {**CONFIG, "listen": f"127.0.0.1:{image.port}", "workers": 2,
            "assertion": {**CONFIG["assertion"], "key_file": key_file, **assertion}}


async def test_the_image_runs_with_its_key_in_the_state_folder(image: Image,
                                                                redis_server: Any) -> None:
    image.configure(image_config(image))
    assert await image.run("check-config", redis_server.url) == (0, "ok\n", "")
    log = image.root / "gateway.log"
    with log.open("wb") as sink:
        proc = await image.start("run", redis_server.url, stdout=sink, stderr=sink)
    try:
        healthz = f"http://127.0.0.1:{image.port}/_gateway/healthz"
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                assert proc.returncode is None, log.read_text()[-2000:]
                try:
                    async with session.get(healthz) as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"the gateway did not answer: {log.read_text()[-2000:]}")
        key = image.state / "assertion-key.pem"
        assert (key.stat().st_mode & 0o777, key.stat().st_uid) == (0o600, image.user.uid)
        assert sorted(p.name for p in image.etc.iterdir()) == ["config.yaml", "users.yaml"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0, log.read_text()[-2000:]
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def test_a_key_in_the_read_only_config_folder_is_refused(image: Image,
                                                               redis_server: Any) -> None:
    """The default key_file, next to the config, in a folder the user cannot write."""
    config = image_config(image)
    del config["assertion"]["key_file"]
    image.configure(config)
    key = image.etc / "gateway-assertion-key.pem"
    expected = (f"assertion.key_file: cannot create {key} (the folder {image.etc} is not "
                "writable); the key is created on first start, so set assertion.key_file to "
                "a file in a folder the gateway can write (in the Docker image: "
                "/var/lib/gateway/assertion-key.pem), or put an existing key there\n")
    assert await image.run("check-config", redis_server.url) == (1, "", expected)
    assert await image.run("run", redis_server.url) == (1, "", expected)


async def test_an_existing_key_in_the_read_only_config_folder_is_fine(
        image: Image, redis_server: Any) -> None:
    config = image_config(image)
    del config["assertion"]["key_file"]
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    image.configure(config, key=pem)
    assert await image.run("check-config", redis_server.url) == (0, "ok\n", "")
