"""The config's schema: every key, its default as written in YAML, its parser.

Each section is a frozen dataclass; each key is declared once with ``key``:
the default in the file's own notation (``"30m"``, ``"1GiB"``), the parser
that reads it (values.py), and whether it is required. The loader reads
every section from these declarations, and a test holds config.example.yaml
to the same keys and defaults, so a default is written here and only shown
there.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import values as v


def key(default: Any, parse: v.Parser, *, required: bool = False) -> Any:
    """A config key: its default as written in YAML, and how to read it."""
    value = None if default is None else parse(default)
    return field(default=value, metadata={"written": default, "parse": parse,
                                          "required": required})


def section(cls: type) -> Any:
    """A nested mapping, read with its own schema."""
    return field(default_factory=cls, metadata={"section": cls})


def items(cls: type, *, required: bool = False) -> Any:
    """A list of mappings, each read with ``cls``'s schema."""
    return field(default=(), metadata={"items": cls, "required": required})


@dataclass(frozen=True)
class Rule:
    """Requests whose path starts with ``path`` (any case) need one of
    ``roles`` (none listed: any user), and with ``mfa`` a session signed in
    with a second factor."""
    path: str = key(None, v.path_prefix, required=True)
    roles: tuple[str, ...] = key([], v.role_names)
    mfa: bool = key(False, v.boolean)


@dataclass(frozen=True)
class Upstream:
    name: str = key(None, v.string, required=True)
    url: str = key(None, v.url(("http", "https")), required=True)
    path_prefix: str = key("/", v.path_prefix)
    host: str | None = key(None, v.optional_string)
    strip_prefix: bool = key(False, v.boolean)
    preserve_host: bool = key(True, v.boolean)
    connect_timeout: float = key("5s", v.duration())
    timeout: float = key("60s", v.duration())
    public: tuple[str, ...] = key([], v.public_paths)
    rules: tuple[Rule, ...] = items(Rule)
    allow_path_parameters: bool = key(False, v.boolean)
    allow_public_cache: bool = key(False, v.boolean)
    websocket_origins: frozenset[str] = key([], v.origins)
    session_monitor: bool = key(False, v.boolean)

    @functools.cached_property
    def base(self) -> str:
        """``url`` without a trailing slash: request paths are appended to it."""
        return self.url.rstrip("/")

    @functools.cached_property
    def mfa_rules(self) -> bool:
        """Whether any rule demands a second factor (the hot path asks once)."""
        return any(rule.mfa for rule in self.rules)

    @functools.cached_property
    def authority(self) -> str:
        """``host[:port]`` of ``url``: the Host header unless ``preserve_host``."""
        return urlsplit(self.url).netloc


@dataclass(frozen=True)
class SentinelConfig:
    """Redis Sentinel: the master is asked of these sentinels (store/client.py)."""
    master: str | None = key(None, v.optional_string)
    nodes: tuple[tuple[str, int], ...] = key([], v.host_ports)
    username: str | None = key(None, v.optional_string)
    password: str | None = key(None, v.optional_password)
    sentinel_password: str | None = key(None, v.optional_password)


@dataclass(frozen=True)
class ClusterConfig:
    """Redis Cluster: any of these nodes tells the client the rest."""
    nodes: tuple[tuple[str, int], ...] = key([], v.host_ports)
    username: str | None = key(None, v.optional_string)
    password: str | None = key(None, v.optional_password)


@dataclass(frozen=True)
class RedisConfig:
    url: str = key("redis://127.0.0.1:6379/0", v.url(("redis", "rediss", "unix")))
    username: str | None = key(None, v.optional_string)
    password: str | None = key(None, v.optional_password)
    sentinel: SentinelConfig = section(SentinelConfig)
    cluster: ClusterConfig = section(ClusterConfig)
    key_prefix: str = key("gw", v.string)
    timeout: float = key("1s", v.duration())
    max_connections: int = key(64, v.integer(minimum=1))


@dataclass(frozen=True)
class SessionConfig:
    store: str = key("memory", v.one_of("memory", "redis"))
    redis: RedisConfig = section(RedisConfig)
    cookie_name: str = key("gateway_session", v.header_name)
    idle_timeout: float = key("30m", v.duration(minimum=1))
    absolute_timeout: float = key("12h", v.duration(minimum=1))
    remember_me_timeout: float = key("30d", v.duration(minimum=1))
    remember_me_idle_timeout: float = key("7d", v.duration(minimum=1))
    touch_interval: float = key("15s", v.duration())
    cache_ttl: float = key("5s", v.duration(minimum=0))
    expiring_soon: float = key("2m", v.duration())
    max_per_user: int = key(5, v.integer())
    on_limit: str = key("evict_oldest", v.one_of("evict_oldest", "refuse"))
    history: float = key("30d", v.duration(minimum=60))
    reauth_after: float = key("10m", v.duration(minimum=0))
    activity: str = key("requests", v.one_of("requests", "navigation", "interaction"))
    monitor_interval: float = key("30s", v.duration(minimum=1))


_AT_SIGN_IN = v.one_of("off", "log", "notify")
_IN_SESSION = v.one_of("off", "log", "notify", "end")


@dataclass(frozen=True)
class SecurityEvents:
    """What to do on each finding (auth/security.py). Findings at sign-in
    cannot ``end``: that would refuse the sign-in, which is not their job."""
    new_device: str = key("notify", _AT_SIGN_IN)
    new_location: str = key("notify", _AT_SIGN_IN)
    ip_changed: str = key("log", _IN_SESSION)
    ua_changed: str = key("end", _IN_SESSION)


@dataclass(frozen=True)
class AdminConfig:
    roles: tuple[str, ...] = key(["admin"], v.role_list)


@dataclass(frozen=True)
class PairThrottle:
    """One account from one address: someone guessing at a keyboard."""
    failures: int = key(5, v.integer(minimum=1))
    window: float = key("15m", v.duration(minimum=1))
    block: float = key("30m", v.duration(minimum=1))


@dataclass(frozen=True)
class IpThrottle(PairThrottle):
    """One address across accounts: credential stuffing, password spraying."""
    failures: int = key(50, v.integer(minimum=1))


@dataclass(frozen=True)
class AccountThrottle(PairThrottle):
    """One account across addresses (a browser that signed in as it before is
    counted on its own instead)."""
    failures: int = key(20, v.integer(minimum=1))


@dataclass(frozen=True)
class ThrottleConfig:
    enabled: bool = key(True, v.boolean)
    pair: PairThrottle = section(PairThrottle)
    ip: IpThrottle = section(IpThrottle)
    account: AccountThrottle = section(AccountThrottle)
    device_cookie_lifetime: float = key("180d", v.duration(minimum=60))


@dataclass(frozen=True)
class MfaConfig:
    """The second factor (auth/totp.py): ``off``, ``optional`` (asked of
    users who have one; anyone may enrol) or ``required`` (of everyone;
    ``required_for_roles``: of users with any of these roles)."""
    totp: str = key("optional", v.one_of("off", "optional", "required"))
    required_for_roles: tuple[str, ...] = key([], v.role_names)
    # The account's name in the authenticator app (default: public_url's host).
    issuer: str | None = key(None, v.optional_string)


# The name of the session refresh's own rate limit (web/session_api.py).
REFRESH_POLICY = "session-refresh"


@dataclass(frozen=True)
class RateLimitRule:
    """At most ``limit`` proxied requests per ``window`` ``per`` user,
    session or address, on the paths under ``path`` (of one upstream, with
    some methods, when named)."""
    name: str = key(None, v.string, required=True)
    limit: int = key(None, v.integer(minimum=1), required=True)
    window: float = key(None, v.duration(minimum=1), required=True)
    per: str = key("user", v.one_of("user", "session", "ip"))
    path: str = key("/", v.path_prefix)
    upstream: str | None = key(None, v.optional_string)
    methods: tuple[str, ...] = key([], v.methods)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics at <prefix>/metrics (metrics.py)."""
    enabled: bool = key(True, v.boolean)
    # Who may scrape them, by the peer's own address (never X-Forwarded-For).
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = \
        key(["127.0.0.0/8", "::1/128"], v.networks)


@dataclass(frozen=True)
class LoggingConfig:
    format: str = key("text", v.one_of("text", "json"))


@dataclass(frozen=True)
class CookieConfig:
    # The session cookie's Domain, to share it with sibling hosts (forward-
    # auth in front of app.example.com and wiki.example.com: example.com).
    # null: this host only (then __Host- on https).
    domain: str | None = key(None, v.cookie_domain)


@dataclass(frozen=True)
class SecurityHeaders:
    # Strict-Transport-Security on the gateway's own answers when public_url
    # is https (0: none); includeSubDomains only when asked, since it binds
    # every subdomain of the host to HTTPS too.
    hsts_max_age: float = key("365d", v.duration(minimum=0))
    hsts_include_subdomains: bool = key(False, v.boolean)


@dataclass(frozen=True)
class WebhookConfig:
    url: str | None = key(None, v.optional_url(("http", "https")))
    events: tuple[str, ...] = key(["*"], v.lowercase_list)
    timeout: float = key("5s", v.duration(minimum=1))
    queue: int = key(1000, v.integer(minimum=1))


@dataclass(frozen=True)
class AuditConfig:
    retention: float = key("90d", v.duration(minimum=60))
    file: str | None = key(None, v.optional_string)
    webhook: WebhookConfig = section(WebhookConfig)


@dataclass(frozen=True)
class UsersConfig:
    file: str = key(None, v.string, required=True)


@dataclass(frozen=True)
class GeoIPConfig:
    database: str | None = key(None, v.optional_string)


@dataclass(frozen=True)
class Limits:
    max_body_size: int = key("1GiB", v.size())
    max_header_size: int = key("32KiB", v.size(maximum=60 * 2**10))
    header_timeout: float = key("15s", v.duration(minimum=1))


@dataclass(frozen=True)
class IdentityHeaders:
    user: str = key("X-Auth-User", v.header_name)
    email: str = key("X-Auth-Email", v.header_name)
    name: str = key("X-Auth-Name", v.header_name)
    roles: str = key("X-Auth-Roles", v.header_name)
    session: str = key("X-Auth-Session", v.header_name)
    assertion: str = key("X-Auth-Assertion", v.header_name)

    def names(self) -> tuple[str, ...]:
        return (self.user, self.email, self.name, self.roles, self.session,
                self.assertion)


@dataclass(frozen=True)
class AssertionConfig:
    key_file: str | None = key(None, v.optional_string)
    lifetime: float = key("60s", v.duration(minimum=1))


@dataclass(frozen=True)
class Config:
    listen: tuple[str, int] = key("127.0.0.1:8080", v.parse_listen)
    public_url: str = key(None, v.url(("http", "https")), required=True)
    secret: str = key(None, v.secret, required=True)
    workers: int = key(1, v.workers)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = \
        key([], v.networks)
    prefix: str = key("/_gateway", v.gateway_prefix)
    allowed_redirect_hosts: tuple[str, ...] = key([], v.lowercase_list)
    shutdown_timeout: float = key("30s", v.duration())
    log_level: str = key("info", v.one_of(*v.LOG_LEVELS))
    access_log: bool = key(True, v.boolean)
    logging: LoggingConfig = section(LoggingConfig)
    metrics: MetricsConfig = section(MetricsConfig)
    session: SessionConfig = section(SessionConfig)
    cookie: CookieConfig = section(CookieConfig)
    security_events: SecurityEvents = section(SecurityEvents)
    admin: AdminConfig = section(AdminConfig)
    security_headers: SecurityHeaders = section(SecurityHeaders)
    throttle: ThrottleConfig = section(ThrottleConfig)
    mfa: MfaConfig = section(MfaConfig)
    rate_limits: tuple[RateLimitRule, ...] = items(RateLimitRule)
    audit: AuditConfig = section(AuditConfig)
    users: UsersConfig = section(UsersConfig)
    limits: Limits = section(Limits)
    headers: IdentityHeaders = section(IdentityHeaders)
    assertion: AssertionConfig = section(AssertionConfig)
    geoip: GeoIPConfig = section(GeoIPConfig)
    # None at all: forward-auth only (web/forward_auth.py judges every host).
    upstreams: tuple[Upstream, ...] = items(Upstream)
    # Not a key: the config file's folder, which relative paths resolve against.
    base_dir: Path = Path(".")

    @property
    def users_file(self) -> Path:
        return self.base_dir / self.users.file

    @property
    def assertion_key_file(self) -> Path:
        """``assertion.key_file``, by default next to the config file."""
        return self.base_dir / (self.assertion.key_file or "gateway-assertion-key.pem")

    @property
    def audit_file(self) -> Path | None:
        """``audit.file``; "-" (standard output) is kept as written."""
        if self.audit.file in (None, "-"):
            return None if self.audit.file is None else Path("-")
        return self.base_dir / self.audit.file

    @property
    def geoip_database(self) -> Path | None:
        return self.base_dir / self.geoip.database if self.geoip.database else None

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")

    @property
    def device_cookie_name(self) -> str:
        """The browser's sign-in history (auth/throttle.py); ``__Secure-``
        since it is scoped to the prefix, which ``__Host-`` forbids."""
        return "__Secure-gateway_device" if self.secure_cookies else "gateway_device"

    @property
    def cookie_name(self) -> str:
        """``__Host-`` whenever the site is https (no Domain, Path=/, Secure);
        with ``cookie.domain``, which ``__Host-`` forbids, ``__Secure-``."""
        name = self.session.cookie_name
        if not self.secure_cookies:
            return name
        return f"__Secure-{name}" if self.cookie.domain else f"__Host-{name}"
