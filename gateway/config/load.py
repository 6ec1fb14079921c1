"""Load, interpolate and validate the one YAML config file.

Every problem is collected as ``path.to.key: what is wrong (got 'value')`` and
reported together, so an operator fixes a file in one pass. Unknown keys are
errors: a typo must never silently fall back to a default. The result is a tree
of frozen dataclasses that the rest of the gateway reads and never mutates.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import yaml


class ConfigError(Exception):
    """Raised with every problem found; ``problems`` holds the lines.

    ``users_file`` is the users file named by a config that had other
    problems, so that it can be checked in the same pass.
    """

    def __init__(self, problems: list[str], users_file: Path | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.users_file = users_file


# -- value parsers ---------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
               "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_duration(value: Any) -> float:
    """``90s``, ``30m``, ``1h30m``, ``250ms``, ``30d`` -> seconds."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("must be a duration like 90s, 30m, 12h or 30d")
    text = str(value).strip()
    if isinstance(value, int) or text.isdigit():
        raise ValueError("needs a unit, like 90s, 30m, 12h or 30d")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError("must be a duration like 90s, 30m, 12h or 30d")
    return total


def parse_size(value: Any) -> int:
    """``16KiB``, ``100MiB``, ``1GiB`` or a plain byte count."""
    if isinstance(value, bool):
        raise ValueError("must be a size like 64KiB, 100MiB or 1GiB")
    if isinstance(value, int):
        return value
    m = _SIZE.fullmatch(str(value).strip())
    if not m:
        raise ValueError("must be a size like 64KiB, 100MiB or 1GiB")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def parse_listen(value: Any) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:8080``)."""
    if not isinstance(value, str):
        raise ValueError("must be host:port, like 127.0.0.1:8080")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("must be host:port, like 127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not 0 < int(port) < 65536:
        raise ValueError("port must be between 1 and 65535")
    return host, int(port)


def interpolate_env(node: Any, path: str, problems: list[str],
                    env: dict[str, str]) -> Any:
    """Replace ``${NAME}`` in every string; a missing variable is a problem."""
    if isinstance(node, dict):
        return {k: interpolate_env(v, _join(path, str(k)), problems, env)
                for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_env(v, f"{path}[{i}]", problems, env)
                for i, v in enumerate(node)]
    if isinstance(node, str):
        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in env:
                problems.append(f"{path}: environment variable {name} is not set")
                return ""
            return env[name]
        return _ENV_REF.sub(sub, node)
    return node


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Section:
    """Reads one mapping of the config, recording problems with full paths.

    Each getter returns a usable default when the value is bad, so reading
    goes on and every problem in the file is found in one pass.
    """

    def __init__(self, data: Any, path: str, problems: list[str]) -> None:
        self.path, self.problems, self.seen = path, problems, set()
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.problem("", f"must be a mapping (got {_show(data)})")
            data = {}
        self.data: dict[str, Any] = data

    def problem(self, key: str, message: str) -> None:
        where = _join(self.path, key) if key else (self.path or "(top level)")
        self.problems.append(f"{where}: {message}")

    def get(self, key: str, default: Any, parse: Callable[[Any], Any] | None = None,
            required: bool = False) -> Any:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                self.problem(key, "is required")
            return default
        value = self.data[key]
        if parse is None:
            return value
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            self.problem(key, f"{exc} (got {_show(value)})")
            return default

    def str(self, key: str, default: str | None = "", required: bool = False) -> Any:
        return self.get(key, default, _typed(str, "a string"), required)

    def bool(self, key: str, default: bool) -> bool:
        return self.get(key, default, _typed(bool, "true or false"))

    def int(self, key: str, default: int, minimum: int = 0) -> int:
        def parse(v: Any) -> int:
            v = _typed(int, "a whole number")(v)
            if v < minimum:
                raise ValueError(f"must be at least {minimum}")
            return v
        return self.get(key, default, parse)

    def duration(self, key: str, default: str, minimum: float = 0.001) -> float:
        def parse(v: Any) -> float:
            seconds = parse_duration(v)
            if seconds < minimum:
                raise ValueError(f"must be at least {minimum:g}s")
            return seconds
        return self.get(key, parse_duration(default), parse)

    def size(self, key: str, default: str) -> int:
        return self.get(key, parse_size(default), parse_size)

    def str_list(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        def parse(v: Any) -> tuple[str, ...]:
            if not isinstance(v, list) or not all(isinstance(i, str) for i in v):
                raise ValueError("must be a list of strings")
            return tuple(v)
        return self.get(key, default, parse)

    def section(self, key: str) -> "Section":
        self.seen.add(key)
        return Section(self.data.get(key), _join(self.path, key), self.problems)

    def items(self, key: str) -> list["Section"]:
        self.seen.add(key)
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(key, f"must be a list (got {_show(value)})")
            return []
        return [Section(v, f"{_join(self.path, key)}[{i}]", self.problems)
                for i, v in enumerate(value)]

    def done(self) -> None:
        """Unknown keys are errors: typos must not silently become defaults."""
        for key in self.data:
            if key not in self.seen:
                self.problem(str(key), "unknown key")


def _typed(kind: type, name: str) -> Callable[[Any], Any]:
    def parse(v: Any) -> Any:
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise ValueError(f"must be {name}")
        return v
    return parse


# -- the config tree -------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """Requests whose path starts with ``path`` (any case) need one of ``roles``."""
    path: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str
    path_prefix: str = "/"
    host: str | None = None
    strip_prefix: bool = False
    preserve_host: bool = False
    connect_timeout: float = 5.0
    timeout: float = 60.0
    public: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    allow_path_parameters: bool = False
    allow_public_cache: bool = False
    websocket_origins: frozenset[str] = frozenset()

    @functools.cached_property
    def base(self) -> str:
        """``url`` without a trailing slash: request paths are appended to it."""
        return self.url.rstrip("/")

    @functools.cached_property
    def authority(self) -> str:
        """``host[:port]`` of ``url``: the Host header unless ``preserve_host``."""
        return urlsplit(self.url).netloc


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "gw"
    timeout: float = 1.0
    max_connections: int = 64


@dataclass(frozen=True)
class SessionConfig:
    store: str = "memory"
    redis: RedisConfig = field(default_factory=RedisConfig)
    cookie_name: str = "gateway_session"
    idle_timeout: float = 1800.0
    absolute_timeout: float = 43200.0
    remember_me_timeout: float = 30 * 86400.0
    remember_me_idle_timeout: float = 7 * 86400.0
    touch_interval: float = 15.0
    cache_ttl: float = 5.0
    expiring_soon: float = 300.0
    max_per_user: int = 5
    history: float = 30 * 86400.0


@dataclass(frozen=True)
class Limits:
    max_body_size: int = 2**30
    max_header_size: int = 32 * 2**10
    header_timeout: float = 15.0


@dataclass(frozen=True)
class IdentityHeaders:
    user: str = "X-Auth-User"
    email: str = "X-Auth-Email"
    name: str = "X-Auth-Name"
    roles: str = "X-Auth-Roles"
    session: str = "X-Auth-Session"
    assertion: str = "X-Auth-Assertion"

    def names(self) -> tuple[str, ...]:
        return (self.user, self.email, self.name, self.roles, self.session,
                self.assertion)


@dataclass(frozen=True)
class AssertionConfig:
    key_file: Path | None = None
    lifetime: float = 60.0


@dataclass(frozen=True)
class Config:
    listen: tuple[str, int]
    public_url: str
    secret: str
    users_file: Path
    upstreams: tuple[Upstream, ...]
    session: SessionConfig = field(default_factory=SessionConfig)
    workers: int = 1
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    prefix: str = "/_gateway"
    allowed_redirect_hosts: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    headers: IdentityHeaders = field(default_factory=IdentityHeaders)
    assertion: AssertionConfig = field(default_factory=AssertionConfig)
    shutdown_timeout: float = 30.0
    log_level: str = "info"
    access_log: bool = False
    base_dir: Path = Path(".")

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")

    @property
    def cookie_name(self) -> str:
        """``__Host-`` whenever the site is https: no Domain, Path=/, Secure."""
        name = self.session.cookie_name
        return f"__Host-{name}" if self.secure_cookies else name


# -- building --------------------------------------------------------------

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _url(schemes: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError("must be a URL string")
        parts = urlsplit(v)
        # unix:///path/to/redis.sock names a socket file, not a host.
        located = parts.hostname or (parts.scheme == "unix" and parts.path.startswith("/"))
        if parts.scheme not in schemes or not located:
            raise ValueError(f"must be a {' or '.join(schemes)} URL with a host")
        return v.rstrip("/") if parts.path in ("", "/") else v
    return parse


def _path_prefix(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/") or "//" in v or "\\" in v:
        raise ValueError("must be a path starting with '/'")
    return v


def _workers(v: Any) -> int:
    if v == "auto":
        return os.cpu_count() or 1
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError("must be a whole number >= 1 or 'auto'")
    return v


def _networks(v: Any) -> tuple[Any, ...]:
    if not isinstance(v, list):
        raise ValueError("must be a list of IP addresses or CIDR networks")
    try:
        return tuple(ipaddress.ip_network(str(i), strict=False) for i in v)
    except ValueError as exc:
        raise ValueError(f"not an IP address or network: {exc}") from None


def _header_name(v: Any) -> str:
    if not isinstance(v, str) or not _HEADER_NAME.fullmatch(v):
        raise ValueError("must be a valid HTTP header name")
    return v


_ROLE = re.compile(r"[^\s,\x00-\x1f\x7f-\x9f]+")


def bad_role(role: str) -> bool:
    """A role the identity headers could not carry as one list item."""
    return not _ROLE.fullmatch(role)


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` lowercased, default port dropped; None if not http(s)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == {"http": 80, "https": 443}[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _origins(v: Any) -> frozenset[str]:
    if not isinstance(v, list) or not all(isinstance(i, str) for i in v):
        raise ValueError("must be a list of origins like https://app.example.com")
    out = set()
    for item in v:
        origin = origin_of(item)
        if origin is None or urlsplit(item).path not in ("", "/"):
            raise ValueError(f"{item!r} is not an origin like https://app.example.com")
        out.add(origin)
    return frozenset(out)


def _one_of(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return v
    return parse


def _build_upstream(s: Section, index: int) -> Upstream:
    name = s.str("name", f"upstream{index}", required=True)
    url = s.get("url", "http://invalid", _url(("http", "https")), required=True)
    rules = []
    for r in s.items("rules"):
        path = r.get("path", "/", _path_prefix, required=True)
        roles = r.str_list("roles")
        if not roles:
            r.problem("roles", "must list at least one role")
        for i, role in enumerate(roles):
            if bad_role(role):
                r.problem(f"roles[{i}]", f"must not contain ',', whitespace or control "
                                         f"characters (got {_show(role)})")
        r.done()
        rules.append(Rule(path=path, roles=roles))
    public = s.str_list("public")
    for i, p in enumerate(public):
        if not p.startswith("/"):
            s.problem(f"public[{i}]", f"must be a path starting with '/' (got {_show(p)})")
    up = Upstream(
        name=name,
        url=url,
        path_prefix=s.get("path_prefix", "/", _path_prefix),
        host=s.str("host", None),
        strip_prefix=s.bool("strip_prefix", False),
        preserve_host=s.bool("preserve_host", False),
        connect_timeout=s.duration("connect_timeout", "5s"),
        timeout=s.duration("timeout", "60s"),
        public=public,
        rules=tuple(rules),
        allow_path_parameters=s.bool("allow_path_parameters", False),
        allow_public_cache=s.bool("allow_public_cache", False),
        websocket_origins=s.get("websocket_origins", frozenset(), _origins),
    )
    s.done()
    return up


def build_config(data: Any, base_dir: Path = Path("."),
                 env: dict[str, str] | None = None) -> Config:
    """Validate a parsed YAML document; raises ConfigError with every problem."""
    problems: list[str] = []
    data = interpolate_env(data, "", problems, dict(os.environ) if env is None else env)
    top = Section(data, "", problems)

    secret = top.str("secret", "", required=True)
    if secret and len(secret.encode()) < 32:
        top.problem("secret", f"must be at least 32 bytes (got {len(secret.encode())})")

    s = top.section("session")
    r = s.section("redis")
    redis = RedisConfig(
        url=r.get("url", RedisConfig.url,
                  _url(("redis", "rediss", "unix"))),
        key_prefix=r.str("key_prefix", "gw"),
        timeout=r.duration("timeout", "1s"),
        max_connections=r.int("max_connections", 64, minimum=1),
    )
    r.done()
    session = SessionConfig(
        store=s.get("store", "memory", _one_of("memory", "redis")),
        redis=redis,
        cookie_name=s.get("cookie_name", "gateway_session", _header_name),
        idle_timeout=s.duration("idle_timeout", "30m", minimum=1),
        absolute_timeout=s.duration("absolute_timeout", "12h", minimum=1),
        remember_me_timeout=s.duration("remember_me_timeout", "30d", minimum=1),
        remember_me_idle_timeout=s.duration("remember_me_idle_timeout", "7d", minimum=1),
        touch_interval=s.duration("touch_interval", "15s"),
        cache_ttl=s.duration("cache_ttl", "5s", minimum=0),
        expiring_soon=s.duration("expiring_soon", "5m"),
        max_per_user=s.int("max_per_user", 5),
        history=s.duration("history", "30d", minimum=60),
    )
    if session.idle_timeout > session.absolute_timeout:
        s.problem("idle_timeout", "must not be longer than session.absolute_timeout")
    s.done()

    u = top.section("users")
    users_file = u.str("file", "", required=True)
    u.done()

    upstreams = tuple(_build_upstream(item, i) for i, item in enumerate(top.items("upstreams")))
    if not upstreams:
        top.problem("upstreams", "must list at least one upstream")
    names = [up.name for up in upstreams]
    for i, up in enumerate(upstreams):
        if names.index(up.name) != i:
            problems.append(f"upstreams[{i}].name: duplicate name {up.name!r}")

    lim = top.section("limits")
    limits = Limits(max_body_size=lim.size("max_body_size", "1GiB"),
                    max_header_size=lim.size("max_header_size", "32KiB"),
                    header_timeout=lim.duration("header_timeout", "15s", minimum=1))
    if limits.max_header_size > 60 * 2**10:
        lim.problem("max_header_size", "must be at most 60KiB")
    lim.done()

    h = top.section("headers")
    headers = IdentityHeaders(**{
        f: h.get(f, getattr(IdentityHeaders, f), _header_name)
        for f in ("user", "email", "name", "roles", "session", "assertion")})
    h.done()

    a = top.section("assertion")
    key_file = a.str("key_file", None)
    assertion = AssertionConfig(
        key_file=(base_dir / key_file) if key_file else None,
        lifetime=a.duration("lifetime", "60s", minimum=1))
    a.done()

    prefix = top.get("prefix", "/_gateway", _path_prefix).rstrip("/")
    if not prefix:
        top.problem("prefix", "must not be '/'")
        prefix = "/_gateway"

    config = Config(
        listen=top.get("listen", ("127.0.0.1", 8080), parse_listen),
        public_url=top.get("public_url", "http://localhost:8080",
                           _url(("http", "https")), required=True),
        secret=secret,
        users_file=base_dir / users_file,
        upstreams=upstreams,
        session=session,
        workers=top.get("workers", 1, _workers),
        trusted_proxies=top.get("trusted_proxies", (), _networks),
        prefix=prefix,
        allowed_redirect_hosts=tuple(host.lower() for host in top.str_list("allowed_redirect_hosts")),
        limits=limits,
        headers=headers,
        assertion=assertion,
        shutdown_timeout=top.duration("shutdown_timeout", "30s"),
        log_level=top.get("log_level", "info", _one_of(*_LOG_LEVELS)),
        access_log=top.bool("access_log", False),
        base_dir=base_dir,
    )
    if config.session.store == "memory" and config.workers > 1:
        problems.append("workers: the memory session store is per process; "
                        "use session.store: redis with more than one worker")
    top.done()
    if problems:
        raise ConfigError(problems, users_file=base_dir / users_file if users_file else None)
    return config


def read_yaml(path: Path, unreadable: str, invalid: str) -> Any:
    """A YAML file's document; a missing or unparsable file is one ConfigError.

    ``unreadable`` and ``invalid`` are the messages, with ``{error}`` and
    ``{where}`` (" at line L, column C" when known) filled in.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([unreadable.format(error=exc.strerror)]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([invalid.format(where=where)]) from None


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    """Read and validate a config file; every problem is in one ConfigError."""
    p = Path(path)
    data = read_yaml(p, f"{p}: cannot read config file ({{error}})", f"{p}: not valid YAML{{where}}")
    return build_config(data, base_dir=p.resolve().parent, env=env)


def default_config_path() -> str:
    return os.environ.get("GATEWAY_CONFIG") or "config.yaml"
