"""The ways to reach one Redis that session.redis offers, each against a live
redis-server: an ACL user and password (in the url or beside it), TLS
(rediss://) with a private CA, and a unix socket. A wrong password or an
untrusted certificate is an outage (503), never a way round the store."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import Clock, free_port
from gateway.config import RedisConfig
from gateway.store import Session, StoreUnavailable
from gateway.store.redis import RedisSessionStore


def _started(argv: list[str], ready: Callable[[], bool]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if ready():
                return proc
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"redis-server did not start: {argv}")


def _ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)


async def _works(config: RedisConfig) -> None:
    """A session written and read back through a store built from ``config``."""
    store = RedisSessionStore(config, clock=Clock())
    try:
        now = time.time()
        session = Session(id=uuid.uuid4().hex, username="alice", created_at=now,
                          last_seen_at=now, expires_at=now + 3600, idle_timeout=600)
        await store.create(session, 5, 3600)
        assert (await store.get("alice", session.id)).id == session.id
    finally:
        await store.close()


async def _refused(config: RedisConfig) -> None:
    store = RedisSessionStore(config, clock=Clock())
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[int]:
    """A Redis whose default user is off: only ``gw`` (password s3cret/pw) gets in."""
    port = free_port()
    proc = _started(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(tmp_path),
                     "--user", "default", "off",
                     "--user", "gw", "on", ">s3cret/pw", "~*", "&*", "+@all"],
                    lambda: _ping(port))
    yield port
    _stop(proc)


async def test_an_acl_user_and_password_are_used_where_they_are_set(acl_redis):
    url = f"redis://127.0.0.1:{acl_redis}/0"
    await _works(RedisConfig(url=f"redis://gw:s3cret%2Fpw@127.0.0.1:{acl_redis}/0"))
    await _works(RedisConfig(url=url, username="gw", password="s3cret/pw"))
    await _refused(RedisConfig(url=url, username="gw", password="wrong"))
    await _refused(RedisConfig(url=url))                      # the default user is off


def _certificates(folder: Path) -> dict[str, Path]:
    """A private CA and a certificate for 127.0.0.1 signed by it; and a
    second CA that signed nothing here."""
    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(path: Path, key: ec.EllipticCurvePrivateKey | None,
              cert: x509.Certificate) -> None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            path.with_suffix(".key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))

    now = datetime.datetime.now(datetime.timezone.utc)
    out = {}
    cas = {}
    for label in ("ca", "other-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(label)).issuer_name(name(label))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        cas[label] = (key, cert)
        out[label] = folder / f"{label}.pem"
        write(out[label], None, cert)
    ca_key, ca_cert = cas["ca"]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("redis")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out["server"] = folder / "server.pem"
    write(out["server"], key, cert)
    return out


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, dict[str, Path]]]:
    certs = _certificates(tmp_path)
    port = free_port()
    proc = _started(["redis-server", "--port", "0", "--tls-port", str(port),
                     "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--dir", str(tmp_path), "--tls-cert-file", str(certs["server"]),
                     "--tls-key-file", str(certs["server"].with_suffix(".key")),
                     "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no"],
                    lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    or True)
    yield port, certs
    _stop(proc)


async def test_tls_with_a_private_ca(tls_redis):
    port, certs = tls_redis
    await _works(RedisConfig(url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs['ca']}"))
    # A certificate nobody vouched for, or plain text to a TLS port: refused.
    await _refused(RedisConfig(url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs="
                                   f"{certs['other-ca']}"))
    await _refused(RedisConfig(url=f"rediss://127.0.0.1:{port}/0"))       # the system's CAs
    await _refused(RedisConfig(url=f"redis://127.0.0.1:{port}/0"))


async def test_a_unix_socket(tmp_path: Path):
    path = tmp_path / "redis.sock"
    proc = _started(["redis-server", "--port", "0", "--unixsocket", str(path),
                     "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                     "--dir", str(tmp_path)], path.exists)
    try:
        await _works(RedisConfig(url=f"unix://{path}?db=2"))
    finally:
        _stop(proc)
