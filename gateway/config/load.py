"""Load, interpolate and validate the one YAML config file.

Every problem is collected as ``path.to.key: what is wrong (got 'value')`` and
reported together, so an operator fixes a file in one pass. Unknown keys are
errors: a typo must never silently fall back to a default. Every section is
read from its schema (schema.py), then the few rules that span keys are
checked. The result is a tree of frozen dataclasses that the rest of the
gateway reads and never mutates.
"""

from __future__ import annotations

import os
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import yaml

from .schema import REFRESH_POLICY, Config, RedisConfig
from .values import HiddenValueError, ItemError, boolean, str_list, string

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """Raised with every problem found; ``problems`` holds the lines.

    ``users_file`` is the users file named by a config that had other
    problems, so that it can be checked in the same pass.
    """

    def __init__(self, problems: list[str], users_file: Path | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.users_file = users_file


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
        except ItemError as exc:
            self.problem(f"{key}[{exc.index}]", f"{exc} (got {_show(exc.value)})")
        except HiddenValueError as exc:
            self.problem(key, str(exc))
        except (ValueError, TypeError) as exc:
            self.problem(key, f"{exc} (got {_show(value)})")
        return default

    def str(self, key: str, default: str | None = "", required: bool = False) -> Any:
        return self.get(key, default, string, required)

    def bool(self, key: str, default: bool) -> bool:
        return self.get(key, default, boolean)

    def str_list(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        return self.get(key, default, str_list)

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


def read_section(cls: type, s: Section) -> Any:
    """One section, key by key as its schema declares them."""
    found: dict[str, Any] = {}
    for f in fields(cls):
        meta = f.metadata
        if "section" in meta:
            found[f.name] = read_section(meta["section"], s.section(f.name))
        elif "items" in meta:
            entries = s.items(f.name)
            if meta["required"] and not entries:
                s.problem(f.name, f"must list at least one {f.name.rstrip('s')}")
            found[f.name] = tuple(read_section(meta["items"], e) for e in entries)
        elif "parse" in meta:
            found[f.name] = s.get(f.name, f.default, meta["parse"], required=meta["required"])
    s.done()
    return cls(**found)


def build_config(data: Any, base_dir: Path = Path("."),
                 env: dict[str, str] | None = None) -> Config:
    """Validate a parsed YAML document; raises ConfigError with every problem."""
    problems: list[str] = []
    data = interpolate_env(data, "", problems, dict(os.environ) if env is None else env)
    top = Section(data, "", problems)
    config: Config = read_section(Config, top)

    # The rules that span keys.
    session = config.session
    if session.idle_timeout > session.absolute_timeout:
        problems.append("session.idle_timeout: must not be longer than session.absolute_timeout")
    names = [up.name for up in config.upstreams]
    for i, name in enumerate(names):
        if name is not None and names.index(name) != i:
            problems.append(f"upstreams[{i}].name: duplicate name {name!r}")
    for i, up in enumerate(config.upstreams):
        for j, rule in enumerate(up.rules):
            where = f"upstreams[{i}].rules[{j}]"
            if not rule.roles and not rule.mfa and \
                    not any(p.startswith(f"{where}.roles") for p in problems):
                problems.append(f"{where}.roles: must list at least one role (or the rule "
                                "must set mfa: true)")
            if rule.mfa and config.mfa.totp == "off":
                problems.append(f"{where}.mfa: needs a second factor, but mfa.totp is off")
    rules = [rule.name for rule in config.rate_limits]
    for i, rule in enumerate(config.rate_limits):
        if rule.name is not None and rules.index(rule.name) != i:
            problems.append(f"rate_limits[{i}].name: duplicate name {rule.name!r}")
        if rule.upstream is not None and rule.upstream not in names:
            problems.append(f"rate_limits[{i}].upstream: no upstream is named {rule.upstream!r}")
        if rule.name == REFRESH_POLICY:
            problems.append(f"rate_limits[{i}].name: {REFRESH_POLICY!r} is the gateway's own "
                            f"(the session refresh's limit); choose another")
        if rule.name is not None and not all(c.isascii() and (c.isalnum() or c in "-_.")
                                             for c in rule.name):
            problems.append(f"rate_limits[{i}].name: letters, digits, '-', '_' and '.' only "
                            f"(it names the RateLimit-Policy), got {rule.name!r}")
    domain, host = config.cookie.domain, urlsplit(config.public_url or "").hostname or ""
    if domain and host != domain and not host.endswith("." + domain):
        problems.append(f"cookie.domain: {domain!r} does not contain public_url's host "
                        f"{host!r}, so browsers would refuse the cookie")
    problems += redis_problems(session.redis, earlier=problems)
    if session.store == "memory" and config.workers > 1:
        problems.append("workers: the memory session store is per process; "
                        "use session.store: redis with more than one worker")
    users_file = base_dir / config.users.file if config.users.file else None
    if problems:
        raise ConfigError(problems, users_file=users_file)
    return replace(config, base_dir=base_dir)


def redis_problems(redis: RedisConfig, earlier: list[str]) -> list[str]:
    """What session.redis's keys say together: one topology, its required
    keys, and each credential set in one place only."""
    problems = []
    sentinel, cluster = redis.sentinel, redis.cluster
    where = "session.redis"
    if sentinel.nodes and not sentinel.master:
        problems.append(f"{where}.sentinel.master: is required with {where}.sentinel.nodes "
                        f"(the name the sentinels monitor)")
    if sentinel.master and not sentinel.nodes and not any(
            p.startswith(f"{where}.sentinel.nodes") for p in earlier):
        problems.append(f"{where}.sentinel.nodes: list the sentinels (host:port) that "
                        f"monitor {sentinel.master!r}")
    if cluster.nodes and sentinel.nodes:
        problems.append(f"{where}.cluster: Redis Cluster fails over by itself; set either "
                        f"{where}.sentinel or {where}.cluster, not both")
    url = urlsplit(redis.url)
    query = parse_qs(url.query)
    if (sentinel.nodes or cluster.nodes) and url.scheme == "unix":
        problems.append(f"{where}.url: a unix socket cannot reach Redis "
                        f"{'Sentinel' if sentinel.nodes else 'Cluster'}; use redis:// or "
                        f"rediss:// for TLS and the database")
    elif cluster.nodes and ({url.path.strip("/")} | set(query.get("db", []))) - {"", "0"}:
        problems.append(f"{where}.url: Redis Cluster has only database 0; drop the database "
                        f"from the url")
    for name in ("username", "password"):
        places = [place for place, value in (
            (f"{where}.url", getattr(url, name) or query.get(name)),
            (f"{where}.{name}", getattr(redis, name)),
            (f"{where}.sentinel.{name}", getattr(sentinel, name)),
            (f"{where}.cluster.{name}", getattr(cluster, name))) if value]
        if len(places) > 1:
            problems.append(f"{places[-1]}: the {name} is set in {len(places)} places "
                            f"({', '.join(places)}); set it in one")
    for section, used in (("sentinel", sentinel), ("cluster", cluster)):
        for name in ("username", "password", "sentinel_password"):
            if getattr(used, name, None) and not used.nodes:
                problems.append(f"{where}.{section}.{name}: is used only with "
                                f"{where}.{section}.nodes")
    return problems


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
