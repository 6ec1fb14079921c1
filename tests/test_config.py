"""Config validation: every problem named by its path, all reported in one pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import SECRET, base_config, deep_merge, write_users
from gateway.config import ConfigError, build_config, load_config, parse_duration, parse_size
from gateway.auth.users import load_users_file, parse_users

REPO = Path(__file__).resolve().parent.parent
DROP = object()  # marks a key to delete from the base config


def merged(overrides: dict[str, Any]) -> dict[str, Any]:
    data = deep_merge(base_config("http://127.0.0.1:9"), overrides)
    return _drop(data)


def _drop(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop(v) for k, v in node.items() if v is not DROP}
    if isinstance(node, list):
        return [_drop(v) for v in node]
    return node


def problems_of(data: Any, tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(data, base_dir=tmp_path, env=env or {})
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def up(**fields: Any) -> dict[str, Any]:
    return {"name": "app", "url": "http://127.0.0.1:9", **fields}


def test_base_config_is_valid(tmp_path: Path) -> None:
    config = build_config(merged({}), base_dir=tmp_path, env={})
    assert config.listen == ("127.0.0.1", 8080)
    assert config.session.idle_timeout == 1800
    assert config.users_file == tmp_path / "users.yaml"
    assert [u.name for u in config.upstreams] == ["app"]


BAD = [
    # missing required keys
    ({"secret": DROP}, ["secret: is required"]),
    ({"public_url": DROP}, ["public_url: is required"]),
    ({"users": DROP}, ["users.file: is required"]),
    ({"users": {"file": DROP}}, ["users.file: is required"]),
    ({"upstreams": [{"url": "http://127.0.0.1:9"}]}, ["upstreams[0].name: is required"]),
    ({"upstreams": [{"name": "app"}]}, ["upstreams[0].url: is required"]),
    # unknown keys, top level and nested
    ({"listne": "127.0.0.1:1"}, ["listne: unknown key"]),
    ({"session": {"idel_timeout": "5m"}}, ["session.idel_timeout: unknown key"]),
    ({"session": {"redis": {"ulr": "redis://x"}}}, ["session.redis.ulr: unknown key"]),
    ({"limits": {"max_bdy_size": "1MiB"}}, ["limits.max_bdy_size: unknown key"]),
    ({"upstreams": [up(pathprefix="/")]}, ["upstreams[0].pathprefix: unknown key"]),
    ({"upstreams": [up(rules=[{"path": "/a", "roles": ["x"], "role": "y"}])]},
     ["upstreams[0].rules[0].role: unknown key"]),
    # durations
    ({"session": {"idle_timeout": "30x"}},
     ["session.idle_timeout: must be a duration like 90s, 30m, 12h or 30d (got '30x')"]),
    ({"session": {"idle_timeout": 10}},
     ["session.idle_timeout: needs a unit, like 90s, 30m, 12h or 30d (got 10)"]),
    ({"session": {"idle_timeout": "10"}},
     ["session.idle_timeout: needs a unit, like 90s, 30m, 12h or 30d (got '10')"]),
    ({"session": {"idle_timeout": ""}},
     ["session.idle_timeout: must be a duration like 90s, 30m, 12h or 30d (got '')"]),
    ({"session": {"absolute_timeout": "12 hours"}},
     ["session.absolute_timeout: must be a duration like 90s, 30m, 12h or 30d "
      "(got '12 hours')"]),
    ({"upstreams": [up(timeout="1h30")]},
     ["upstreams[0].timeout: must be a duration like 90s, 30m, 12h or 30d (got '1h30')"]),
    ({"upstreams": [up(timeout="-5s")]},
     ["upstreams[0].timeout: must be a duration like 90s, 30m, 12h or 30d (got '-5s')"]),
    ({"session": {"idle_timeout": "13h"}},
     ["session.idle_timeout: must not be longer than session.absolute_timeout"]),
    # sizes
    ({"limits": {"max_body_size": "10 parsecs"}},
     ["limits.max_body_size: must be a size like 64KiB, 100MiB or 1GiB (got '10 parsecs')"]),
    ({"limits": {"max_body_size": "1.5GiB"}},
     ["limits.max_body_size: must be a size like 64KiB, 100MiB or 1GiB (got '1.5GiB')"]),
    ({"limits": {"max_header_size": "1MiB"}}, ["limits.max_header_size: must be at most 60KiB (got '1MiB')"]),
    ({"limits": {"header_timeout": "0.5s"}},
     ["limits.header_timeout: must be at least 1s (got '0.5s')"]),
    # roles travel as one comma-separated header: no separators inside a role
    ({"upstreams": [up(rules=[{"path": "/a", "roles": ["staff,admin"]}])]},
     ["upstreams[0].rules[0].roles[0]: must not contain ',', whitespace or control "
      "characters (got 'staff,admin')"]),
    ({"upstreams": [up(rules=[{"path": "/a", "roles": ["ok", "two words"]}])]},
     ["upstreams[0].rules[0].roles[1]: must not contain ',', whitespace or control "
      "characters (got 'two words')"]),
    # WebSocket origins are origins, not URLs with paths
    ({"upstreams": [up(websocket_origins=["https://a.example/app"])]},
     ["upstreams[0].websocket_origins: 'https://a.example/app' is not an origin like "
      "https://app.example.com (got ['https://a.example/app'])"]),
    ({"upstreams": [up(websocket_origins="https://a.example")]},
     ["upstreams[0].websocket_origins: must be a list of origins like "
      "https://app.example.com (got 'https://a.example')"]),
    ({"upstreams": [up(websocket_origins=["null"])]},
     ["upstreams[0].websocket_origins: 'null' is not an origin like "
      "https://app.example.com (got ['null'])"]),
    ({"upstreams": [up(allow_path_parameters="yes")]},
     ["upstreams[0].allow_path_parameters: must be true or false (got 'yes')"]),
    # listen
    ({"listen": "127.0.0.1"},
     ["listen: must be host:port, like 127.0.0.1:8080 (got '127.0.0.1')"]),
    ({"listen": "127.0.0.1:"},
     ["listen: must be host:port, like 127.0.0.1:8080 (got '127.0.0.1:')"]),
    ({"listen": "127.0.0.1:70000"},
     ["listen: port must be between 1 and 65535 (got '127.0.0.1:70000')"]),
    ({"listen": 8080}, ["listen: must be host:port, like 127.0.0.1:8080 (got 8080)"]),
    # URLs
    ({"public_url": "ftp://example.com"},
     ["public_url: must be a http or https URL with a host (got 'ftp://example.com')"]),
    ({"public_url": "localhost:8080"},
     ["public_url: must be a http or https URL with a host (got 'localhost:8080')"]),
    ({"upstreams": [up(url="http://")]},
     ["upstreams[0].url: must be a http or https URL with a host (got 'http://')"]),
    ({"session": {"redis": {"url": "http://127.0.0.1:6379"}}},
     ["session.redis.url: must be a redis or rediss or unix URL with a host "
      "(got 'http://127.0.0.1:6379')"]),
    # secret
    ({"secret": "too-short"}, ["secret: must be at least 32 bytes (got 9)"]),
    ({"secret": "x" * 31}, ["secret: must be at least 32 bytes (got 31)"]),
    # workers
    ({"workers": 2},
     ["workers: the memory session store is per process; "
      "use session.store: redis with more than one worker"]),
    ({"workers": 0}, ["workers: must be a whole number >= 1 or 'auto' (got 0)"]),
    ({"session": {"store": "postgres"}},
     ["session.store: must be one of memory, redis (got 'postgres')"]),
    # upstreams
    ({"upstreams": [up(), up(url="http://127.0.0.1:10", path_prefix="/b")]},
     ["upstreams[1].name: duplicate name 'app'"]),
    ({"upstreams": [up(rules=[{"path": "/admin"}])]},
     ["upstreams[0].rules[0].roles: must list at least one role (or the rule must set "
      "mfa: true)"]),
    ({"upstreams": [up(rules=[{"path": "/admin", "roles": []}])]},
     ["upstreams[0].rules[0].roles: must list at least one role (or the rule must set "
      "mfa: true)"]),
    # a password in a URL is never repeated either
    ({"session": {"redis": {"url": "http://:hunter2@redis:6379"}}},
     ["session.redis.url: must be a redis or rediss or unix URL with a host"]),
    # a secret is never repeated in a message
    ({"secret": "s3cr3t-but-short"}, ["secret: must be at least 32 bytes (got 16)"]),
    ({"upstreams": [up(rules=[{"path": "admin", "roles": ["a"]}])]},
     ["upstreams[0].rules[0].path: must be a path starting with '/' (got 'admin')"]),
    ({"upstreams": [up(public=["static/"])]},
     ["upstreams[0].public[0]: must be a path starting with '/' (got 'static/')"]),
    ({"upstreams": [up(public=["/ok", "favicon.ico"])]},
     ["upstreams[0].public[1]: must be a path starting with '/' (got 'favicon.ico')"]),
    ({"upstreams": [up(path_prefix="api")]},
     ["upstreams[0].path_prefix: must be a path starting with '/' (got 'api')"]),
    ({"upstreams": [up(strip_prefix="yes")]},
     ["upstreams[0].strip_prefix: must be true or false (got 'yes')"]),
    ({"upstreams": {"name": "app"}}, ["upstreams: must be a list (got {'name': 'app'})"]),
    ({"trusted_proxies": ["10.0.0.0/8", "not-an-ip"]},
     ["trusted_proxies: not an IP address or network: 'not-an-ip' does not appear to be "
      "an IPv4 or IPv6 network (got ['10.0.0.0/8', 'not-an-ip'])"]),
    ({"session": "redis"}, ["session: must be a mapping (got 'redis')"]),
    # Sentinel and Cluster
    ({"session": {"redis": {"sentinel": {"nodes": ["127.0.0.1:26379"]}}}},
     ["session.redis.sentinel.master: is required with session.redis.sentinel.nodes "
      "(the name the sentinels monitor)"]),
    ({"session": {"redis": {"sentinel": {"master": "m"}}}},
     ["session.redis.sentinel.nodes: list the sentinels (host:port) that monitor 'm'"]),
    ({"session": {"redis": {"sentinel": {"master": "m", "nodes": ["s1:26379", "s2"]}}}},
     ["session.redis.sentinel.nodes[1]: must be host:port, like 127.0.0.1:8080 (got 's2')"]),
    ({"session": {"redis": {"url": "unix:///run/redis.sock", "sentinel": {
        "master": "m", "nodes": ["s1:26379"]}}}},
     ["session.redis.url: a unix socket cannot reach Redis Sentinel; use redis:// or "
      "rediss:// for TLS and the database"]),
    ({"session": {"redis": {"cluster": {"nodes": "r1:6379"}}}},
     ["session.redis.cluster.nodes: must be a list of strings (got 'r1:6379')"]),
    ({"session": {"redis": {"cluster": {"nodes": ["r1:6379", "r2:x"]}}}},
     ["session.redis.cluster.nodes[1]: must be host:port, like 127.0.0.1:8080 (got 'r2:x')"]),
    ({"session": {"redis": {"cluster": {"seeds": ["r1:6379"]}}}},
     ["session.redis.cluster.seeds: unknown key"]),
    ({"session": {"redis": {"url": "redis://r1:6379/2", "cluster": {"nodes": ["r1:6379"]}}}},
     ["session.redis.url: Redis Cluster has only database 0; drop the database from the url"]),
    ({"session": {"redis": {"url": "redis://r1:6379?db=3", "cluster": {"nodes": ["r1:6379"]}}}},
     ["session.redis.url: Redis Cluster has only database 0; drop the database from the url"]),
    ({"session": {"redis": {"url": "redis:///0?password=hunter2"}}},      # never repeated
     ["session.redis.url: must be a redis or rediss or unix URL with a host"]),
    ({"session": {"redis": {"url": "unix:///run/redis.sock", "cluster": {"nodes": ["r1:6379"]}}}},
     ["session.redis.url: a unix socket cannot reach Redis Cluster; use redis:// or "
      "rediss:// for TLS and the database"]),
    ({"session": {"redis": {"sentinel": {"master_name": "m", "nodes": ["s1:26379"]}}}},
     ["session.redis.sentinel.master_name: unknown key",
      "session.redis.sentinel.master: is required with session.redis.sentinel.nodes "
      "(the name the sentinels monitor)"]),
    ({"session": {"redis": {"url": "redis://gw:hunter2@r1:6379", "password": "hunter3"}}},
     ["session.redis.password: the password is set in 2 places (session.redis.url, "
      "session.redis.password); set it in one"]),
    ({"session": {"redis": {"username": "gw", "cluster": {
        "nodes": ["r1:6379"], "username": "gw"}}}},
     ["session.redis.cluster.username: the username is set in 2 places "
      "(session.redis.username, session.redis.cluster.username); set it in one"]),
    ({"session": {"redis": {"url": "unix:///run/redis.sock?password=x", "password": "y"}}},
     ["session.redis.password: the password is set in 2 places (session.redis.url, "
      "session.redis.password); set it in one"]),
    ({"session": {"redis": {"cluster": {"password": "x"}}}},
     ["session.redis.cluster.password: is used only with session.redis.cluster.nodes"]),
    ({"session": {"redis": {"sentinel": {"sentinel_password": "x"}}}},
     ["session.redis.sentinel.sentinel_password: is used only with "
      "session.redis.sentinel.nodes"]),
    ({"session": {"redis": {"password": 12345}}},      # a password is never repeated
     ["session.redis.password: must be a string"]),
    ({"session": {"redis": {"cluster": {"nodes": ["r1:6379"]}, "sentinel": {
        "master": "m", "nodes": ["s1:26379"]}}}},
     ["session.redis.cluster: Redis Cluster fails over by itself; set either "
      "session.redis.sentinel or session.redis.cluster, not both"]),
]


@pytest.mark.parametrize("overrides, expected", BAD,
                         ids=[f"{i}-{e[0].split(':')[0]}" for i, (_, e) in enumerate(BAD)])
def test_config_errors(overrides: dict[str, Any], expected: list[str], tmp_path: Path) -> None:
    assert problems_of(merged(overrides), tmp_path) == expected


def test_not_a_mapping_at_top_level(tmp_path: Path) -> None:
    problems = problems_of([1, 2], tmp_path)
    assert problems[0] == "(top level): must be a mapping (got [1, 2])"
    assert "secret: is required" in problems


def test_empty_document_lists_every_required_key(tmp_path: Path) -> None:
    assert sorted(problems_of(None, tmp_path)) == sorted([
        "secret: is required", "users.file: is required", "public_url: is required"])


def test_all_problems_reported_together(tmp_path: Path) -> None:
    data = merged({"listen": "nowhere", "session": {"idel_timeout": "5m"},
                   "upstreams": [up(timeout="30x")]})
    problems = problems_of(data, tmp_path)
    assert sorted(problems) == sorted([
        "listen: must be host:port, like 127.0.0.1:8080 (got 'nowhere')",
        "session.idel_timeout: unknown key",
        "upstreams[0].timeout: must be a duration like 90s, 30m, 12h or 30d (got '30x')",
    ])


def test_all_problems_reported_together_from_file(tmp_path: Path) -> None:
    write_users(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(merged({"secret": "short", "workers": 2, "bogus": True})))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert "secret: must be at least 32 bytes (got 5)" in lines
    assert "bogus: unknown key" in lines
    assert any(line.startswith("workers: ") for line in lines)


# -- environment interpolation -------------------------------------------------

def test_env_interpolation_present(tmp_path: Path) -> None:
    data = merged({"secret": "${GW_SECRET}", "public_url": "https://${GW_HOST}:8443"})
    config = build_config(data, base_dir=tmp_path, env={"GW_SECRET": SECRET, "GW_HOST": "gw.test"})
    assert config.secret == SECRET
    assert config.public_url == "https://gw.test:8443"


@pytest.mark.parametrize("overrides, expected", [
    ({"secret": "${GW_SECRET}"}, "secret: environment variable GW_SECRET is not set"),
    ({"session": {"redis": {"url": "redis://${REDIS_HOST}:6379/0"}}},
     "session.redis.url: environment variable REDIS_HOST is not set"),
    ({"upstreams": [up(url="http://${APP_HOST}:9000")]},
     "upstreams[0].url: environment variable APP_HOST is not set"),
])
def test_env_interpolation_missing(overrides: dict[str, Any], expected: str,
                                   tmp_path: Path) -> None:
    assert expected in problems_of(merged(overrides), tmp_path)


def test_env_interpolation_reads_process_environment(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_SECRET", SECRET)
    config = build_config(merged({"secret": "${GW_TEST_SECRET}"}), base_dir=tmp_path)
    assert config.secret == SECRET


# -- value tables ----------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("30m", 1800), ("12h", 43200), ("1h30m", 5400), ("250ms", 0.25),
    ("30d", 30 * 86400), ("1d12h", 129600), ("1.5s", 1.5), ("2m30s", 150),
])
def test_good_durations(text: str, seconds: float, tmp_path: Path) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    config = build_config(merged({"upstreams": [up(timeout=text)]}), base_dir=tmp_path, env={})
    assert config.upstreams[0].timeout == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30x", "10", "", "s", "1h 30m", "h1", "1.s", "1e3s", True])
def test_bad_durations(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text, size", [
    ("16KiB", 16 * 1024), ("100MiB", 100 * 2**20), ("1GiB", 2**30), ("10KB", 10_000),
    ("512", 512), (4096, 4096), ("12 B", 12),
])
def test_good_sizes(text: Any, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["1.5GiB", "ten", "10XB", "-1", "", True])
def test_bad_sizes(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# -- loading files -----------------------------------------------------------------

def test_unparsable_yaml(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("listen: [unclosed\nsecret: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    (line,) = info.value.problems
    assert line.startswith(f"{path}: not valid YAML at line ")


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", env={})
    assert info.value.problems == [f"{tmp_path / 'nope.yaml'}: cannot read config file "
                                   "(No such file or directory)"]


def test_relative_users_file_resolves_against_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(merged({"users": {"file": "u.yaml"}})))
    config = load_config(folder / "config.yaml", env={})
    assert config.users_file == folder / "u.yaml"


# -- users file ------------------------------------------------------------------------

GOOD_HASH = "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
WHERE = "users.file (users.yaml)"


@pytest.mark.parametrize("users, expected", [
    ([{"username": "a", "password_hash": "$2b$12$abcdefghijklmnopqrstuv"}],
     [f"{WHERE}: users[0].password_hash: must be an argon2id hash from 'gateway hash-password'"]),
    ([{"username": "a", "password_hash": "$argon2i$v=19$m=1024,t=1,p=1$abc$def"}],
     [f"{WHERE}: users[0].password_hash: must be an argon2id hash from 'gateway hash-password'"]),
    ([{"username": "Bob", "password_hash": GOOD_HASH},
      {"username": "bob", "password_hash": GOOD_HASH}],
     [f"{WHERE}: users[1].username: duplicate user 'bob' (usernames ignore case)"]),
    ([{"username": "a", "password_hash": GOOD_HASH, "rolez": ["admin"]}],
     [f"{WHERE}: users[0].rolez: unknown key"]),
    ([{"password_hash": GOOD_HASH}], [f"{WHERE}: users[0].username: is required"]),
    ([{"username": "a"}], [f"{WHERE}: users[0].password_hash: is required"]),
    ([{"username": "a", "password_hash": GOOD_HASH, "roles": "admin"}],
     [f"{WHERE}: users[0].roles: must be a list of strings (got 'admin')"]),
    ([{"username": "a", "password_hash": GOOD_HASH, "disabled": "no"}],
     [f"{WHERE}: users[0].disabled: must be true or false (got 'no')"]),
])
def test_users_file_errors(users: list[dict[str, Any]], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_users({"users": users}, WHERE)
    assert info.value.problems == expected


def test_users_file_unknown_top_level_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_users({"users": [], "groups": []}, WHERE)
    assert info.value.problems == [f"{WHERE}: groups: unknown key"]


def test_users_file_good(tmp_path: Path) -> None:
    users = load_users_file(write_users(tmp_path))
    assert set(users) == {"alice", "admin", "dave"}
    assert users["admin"].username == "Admin"
    assert users["admin"].roles == ("admin", "user")
    assert users["dave"].disabled is True


def test_users_file_unreadable_and_unparsable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_users_file(tmp_path / "missing.yaml")
    assert info.value.problems == [
        f"users.file: cannot read {tmp_path / 'missing.yaml'} (No such file or directory)"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("users: [ {username: a\n")
    with pytest.raises(ConfigError) as info:
        load_users_file(bad)
    [line] = info.value.problems
    assert line.startswith(f"users.file: {bad} is not valid YAML at line ")


# -- the shipped example -----------------------------------------------------------------

def test_example_config_passes_check_config() -> None:
    example = REPO / "config.example.yaml"
    env = {**os.environ, "GATEWAY_SECRET": SECRET}
    env.pop("GATEWAY_CONFIG", None)
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config",
                             "--config", str(example)],
                            capture_output=True, text=True, env=env, timeout=30, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# Keys whose value in the example is an illustration, not the default.
ILLUSTRATED = {"upstreams[].public", "upstreams[].rules"}


def _schema_keys(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every key of the schema: dotted path -> the dataclass field."""
    from dataclasses import fields
    out: dict[str, Any] = {}
    for f in fields(cls):
        meta, path = f.metadata, f"{prefix}{f.name}"
        if "section" in meta:
            out.update(_schema_keys(meta["section"], path + "."))
        elif "items" in meta:
            out[path] = f
            out.update(_schema_keys(meta["items"], path + "[]."))
        elif "parse" in meta:
            out[path] = f
    return out


def _example_keys(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        path = f"{prefix}{k}"
        out[path] = v
        if isinstance(v, dict):
            out.update(_example_keys(v, path + "."))
        elif isinstance(v, list) and v and isinstance(v[0], dict) and k != "rules":
            out.update(_example_keys(v[0], path + "[]."))
    return out


def test_the_example_shows_every_key_with_its_default() -> None:
    """Defaults are written once, in the schema; the example must show the same."""
    from gateway.config import Config
    # A role rule is an illustration; a rate limit's keys are shown in comments,
    # since a live example rule would limit whoever copies the file.
    schema = {k: f for k, f in _schema_keys(Config).items()
              if not k.startswith(("upstreams[].rules[].", "rate_limits[]."))}
    example = _example_keys(yaml.safe_load((REPO / "config.example.yaml").read_text()))
    shown = {k for k in example if not isinstance(example[k], dict)}
    assert set(schema) - shown == set(), "keys the example does not show"
    assert shown - set(schema) == set(), "keys the example shows that do not exist"
    for path, f in schema.items():
        if f.metadata.get("required") or path in ILLUSTRATED or "items" in f.metadata:
            continue
        written = example[path]
        parsed = None if written is None else f.metadata["parse"](written)
        assert parsed == f.default, f"{path}: the example says {written!r}, the default is " \
                                    f"{f.metadata['written']!r}"


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://cache.internal:6380/1",
                                 "redis://:pw@127.0.0.1:6379/0", "unix:///run/redis.sock?db=0"])
def test_good_redis_urls(url: str, tmp_path: Path) -> None:
    config = build_config(merged({"session": {"store": "redis", "redis": {"url": url}}}),
                          base_dir=tmp_path, env={})
    assert config.session.redis.url == url


@pytest.mark.parametrize("url", ["unix://", "unix:relative.sock", "redis://", "127.0.0.1:6379"])
def test_bad_redis_urls(url: str, tmp_path: Path) -> None:
    assert problems_of(merged({"session": {"redis": {"url": url}}}), tmp_path) == [
        f"session.redis.url: must be a redis or rediss or unix URL with a host (got {url!r})"]


@pytest.mark.parametrize("upstreams", [DROP, []])
def test_an_auth_only_config_needs_no_upstreams(upstreams: Any, tmp_path: Path) -> None:
    config = build_config(merged({"upstreams": upstreams}), base_dir=tmp_path, env={})
    assert config.upstreams == ()


@pytest.mark.parametrize("domain, problem", [
    ("https://example.com", "cookie.domain: must be a domain name such as example.com (no "
                            "scheme, port or path) (got 'https://example.com')"),
    ("com", "cookie.domain: must be a domain name such as example.com (no scheme, port or "
            "path) (got 'com')"),
    ("other.org", "cookie.domain: 'other.org' does not contain public_url's host "
                  "'127.0.0.1', so browsers would refuse the cookie"),
])
def test_a_cookie_domain_must_fit_the_public_url(domain: str, problem: str,
                                                 tmp_path: Path) -> None:
    assert problems_of(merged({"cookie": {"domain": domain}}), tmp_path) == [problem]


def test_a_cookie_domain_drops_the_host_prefix(tmp_path: Path) -> None:
    config = build_config(merged({"public_url": "https://auth.example.com",
                                  "cookie": {"domain": ".Example.com"}}),
                          base_dir=tmp_path, env={})
    assert (config.cookie.domain, config.cookie_name) == ("example.com",
                                                          "__Secure-gateway_session")
