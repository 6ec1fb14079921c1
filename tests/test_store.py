"""One store test suite, run against every backend (memory and a real Redis)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.config import RedisConfig
from gateway.store import (REASON_DISABLED, REASON_LIMIT, REASON_LOGOUT, REASON_REVOKED,
                           Session)
from gateway.store.base import Session as BaseSession
from gateway.store.memory import MemorySessionStore
from gateway.store.redis import RedisSessionStore, user_tag


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        s = MemorySessionStore()
        yield s
        await s.close()
        return
    server = request.getfixturevalue("redis_server")
    # A unique prefix per test: no test sees another's keys, nothing to flush.
    s = RedisSessionStore(RedisConfig(url=server.url, key_prefix=f"t{uuid.uuid4().hex[:12]}"))
    yield s
    await s.close()


@pytest.fixture
async def raw_redis(redis_server: Any) -> Any:
    client = aioredis.from_url(redis_server.url)
    yield client
    await client.aclose()


def make(username: str = "alice", *, idle: float = 600, absolute: float = 3600,
         age: float = 0.0, idle_left: float | None = None, sid: str | None = None,
         remember: bool = False) -> Session:
    """A session created ``age`` seconds ago; ``idle_left`` seconds of idle time left."""
    now = time.time()
    last_seen = now if idle_left is None else now - idle + idle_left
    return Session(id=sid or uuid.uuid4().hex, username=username, created_at=now - age,
                   last_seen_at=last_seen, expires_at=now - age + absolute,
                   idle_timeout=idle, remember=remember, login_ip="10.0.0.1",
                   login_user_agent="UA/1", ip="10.0.0.1", user_agent="UA/1")


def ids(sessions: list[Session]) -> list[str]:
    return [s.id for s in sessions]


async def test_create_then_get_returns_the_same_record(store):
    s = make()
    await store.create(s)
    got = await store.get("alice", s.id)
    assert got == s
    assert got is not s


@pytest.mark.parametrize("username, sid", [
    ("alice", "never-created"),
    ("bob", None),          # the right id under another user: not found
    ("Alice", None),        # usernames in the store are canonical keys already
])
async def test_get_misses(store, username, sid):
    s = make()
    await store.create(s)
    assert await store.get(username, sid or s.id) is None


async def test_touch_persists_last_seen_ip_and_agent(store):
    s = make(idle_left=300)
    await store.create(s)
    s.last_seen_at, s.ip, s.user_agent = time.time(), "10.9.9.9", "UA/2"
    assert await store.touch(s) is True
    got = await store.get("alice", s.id)
    assert got is not None
    assert (got.last_seen_at, got.ip, got.user_agent) == (s.last_seen_at, "10.9.9.9", "UA/2")


async def test_touch_extends_the_idle_window(store):
    s = make(idle=1, idle_left=0.4)
    await store.create(s)
    await asyncio.sleep(0.25)
    s.last_seen_at = time.time()
    assert await store.touch(s)
    await asyncio.sleep(0.4)   # past the original idle end, within the new one
    assert await store.get("alice", s.id) is not None


async def test_touch_never_recreates_a_revoked_session(store):
    s = make()
    await store.create(s)
    stale = await store.get("alice", s.id)   # a request read it...
    assert await store.revoke("alice", s.id, REASON_REVOKED)   # ...then it was revoked
    stale.last_seen_at = time.time()
    assert await store.touch(stale) is False
    assert await store.get("alice", s.id) is None
    assert ids(await store.user_sessions("alice")) == []
    assert await store.revocation_reason("alice", s.id) == REASON_REVOKED


async def test_touch_never_recreates_an_expired_session(store):
    s = make(idle=1, idle_left=0.2)
    await store.create(s)
    await asyncio.sleep(0.35)
    assert await store.touch(s) is False       # last_seen not moved: its window is over
    s.last_seen_at = time.time()
    assert await store.touch(s) is False       # moved: still must not come back
    assert await store.get("alice", s.id) is None


@pytest.mark.parametrize("reason", [REASON_LOGOUT, REASON_REVOKED, REASON_DISABLED, REASON_LIMIT])
async def test_revoke_leaves_a_tombstone_with_the_reason(store, reason):
    s, other = make(), make()
    await store.create(s)
    await store.create(other)
    assert await store.revocation_reason("alice", s.id) is None
    assert await store.revoke("alice", s.id, reason) is True
    assert await store.get("alice", s.id) is None
    assert await store.revocation_reason("alice", s.id) == reason
    assert ids(await store.user_sessions("alice")) == [other.id]
    # Revoking again finds nothing and keeps the first reason.
    assert await store.revoke("alice", s.id, REASON_REVOKED) is False
    assert await store.revocation_reason("alice", s.id) == reason


async def test_revoke_of_unknown_session_is_false_and_leaves_no_tombstone(store):
    assert await store.revoke("alice", "nope", REASON_LOGOUT) is False
    assert await store.revocation_reason("alice", "nope") is None


async def test_revoke_under_the_wrong_user_does_nothing(store):
    s = make()
    await store.create(s)
    assert await store.revoke("mallory", s.id, REASON_REVOKED) is False
    assert await store.get("alice", s.id) == s


async def test_revoke_user_keeps_the_one_asked_for(store):
    sessions = [make(age=3 - i) for i in range(3)]
    bob = make("bob")
    for s in [*sessions, bob]:
        await store.create(s)
    keep = sessions[1].id
    assert await store.revoke_user("alice", REASON_REVOKED, keep=keep) == 2
    assert ids(await store.user_sessions("alice")) == [keep]
    for s in (sessions[0], sessions[2]):
        assert await store.revocation_reason("alice", s.id) == REASON_REVOKED
    assert ids(await store.user_sessions("bob")) == [bob.id]
    assert await store.revoke_user("alice", REASON_DISABLED) == 1
    assert await store.user_sessions("alice") == []


async def test_user_sessions_oldest_first(store):
    made = [make(age=a) for a in (5, 50, 1, 20)]
    for s in made:
        await store.create(s)
    got = await store.user_sessions("alice")
    assert ids(got) == ids(sorted(made, key=lambda s: s.created_at))
    assert ids(got)[0] == made[1].id


async def test_user_sessions_prunes_expired(store, raw_redis):
    short, absolute_short, long = make(idle=1, idle_left=0.2), make(absolute=0.2), make()
    for s in (short, absolute_short, long):
        await store.create(s)
    await asyncio.sleep(0.35)
    assert ids(await store.user_sessions("alice")) == [long.id]
    # ...and forgets them in its index, not just hides them.
    if isinstance(store, RedisSessionStore):
        index = await raw_redis.zrange(store.index_key("alice"), 0, -1)
        assert [i.decode() for i in index] == [long.id]
    else:
        assert store._by_user["alice"] == {long.id}


async def test_all_sessions_spans_users_oldest_first(store):
    a, b, c = make("alice", age=10), make("bob", age=30), make("carol", age=20)
    gone = make("dave")
    for s in (a, b, c, gone):
        await store.create(s)
    await store.revoke("dave", gone.id, REASON_REVOKED)
    assert ids(await store.all_sessions()) == [b.id, c.id, a.id]


async def test_find_by_id_alone(store):
    a, b = make("alice"), make("bob")
    await store.create(a)
    await store.create(b)
    assert await store.find(b.id) == b
    assert await store.find("missing") is None
    await store.revoke("bob", b.id, REASON_REVOKED)
    assert await store.find(b.id) is None


async def test_find_does_not_treat_the_id_as_a_pattern(store):
    a = make(sid="abc123")
    await store.create(a)
    for pattern in ("*", "abc*", "abc12?", "[a]bc123"):
        assert await store.find(pattern) is None, pattern


async def test_idle_expiry(store):
    s = make(idle=1, idle_left=0.3)
    await store.create(s)
    assert await store.get("alice", s.id) is not None
    await asyncio.sleep(0.45)
    assert await store.get("alice", s.id) is None
    assert await store.find(s.id) is None
    assert await store.all_sessions() == []
    # Expiry is not revocation: no reason to show.
    assert await store.revocation_reason("alice", s.id) is None


async def test_absolute_expiry_despite_activity(store):
    s = make(idle=60, absolute=0.6)
    await store.create(s)
    for _ in range(3):
        await asyncio.sleep(0.15)
        s.last_seen_at = time.time()
        assert await store.touch(s)
    await asyncio.sleep(0.3)
    assert await store.get("alice", s.id) is None
    s.last_seen_at = time.time()
    assert await store.touch(s) is False


CORRUPT = [
    b"not json at all",
    b"\xff\xfe\x00garbage",
    b"[]",
    b"null",
    b'"a string"',
    b"{}",
    b'{"id": "x", "username": "alice"}',
    b'{"id": "x", "username": "alice", "created_at": 1, "last_seen_at": 1,'
    b' "expires_at": 9e12, "idle_timeout": 9e12, "surprise": 1}',
    # Valid JSON, the right keys, the wrong types: must not blow up later.
    b'{"id": "x", "username": "alice", "created_at": "a", "last_seen_at": "b",'
    b' "expires_at": "c", "idle_timeout": "d"}',
    b'{"id": "x", "username": "alice", "created_at": 1, "last_seen_at": null,'
    b' "expires_at": 9e12, "idle_timeout": 60}',
]


@pytest.mark.parametrize("raw", CORRUPT)
async def test_corrupt_record_reads_as_no_session(store, raw_redis, raw):
    if not isinstance(store, RedisSessionStore):
        # The memory store keeps objects; the decoder both backends share is the unit.
        assert BaseSession.loads(raw) is None
        return
    good = make()
    await store.create(good)
    bad_sid = "corrupt"
    await raw_redis.set(store.session_key("alice", bad_sid), raw, px=60_000)
    await raw_redis.zadd(store.index_key("alice"), {bad_sid: time.time() * 1000 + 60_000})
    assert await store.get("alice", bad_sid) is None
    assert ids(await store.user_sessions("alice")) == [good.id]
    assert ids(await store.all_sessions()) == [good.id]
    assert await store.find(bad_sid) is None
    # Revoking a corrupt record still removes it.
    await store.revoke("alice", bad_sid, REASON_REVOKED)
    assert await raw_redis.exists(store.session_key("alice", bad_sid)) == 0


async def test_ping(store):
    await store.ping()


# -- Redis specifics -------------------------------------------------------------

TAGGED = re.compile(r"^(?P<prefix>[^:]+):\{(?P<tag>[^{}]+)\}:(?P<kind>s:.+|idx|t:.+)$")


async def _keys(raw_redis: Any, prefix: str) -> list[str]:
    return sorted([k.decode() async for k in raw_redis.scan_iter(match=f"{prefix}:*")])


@pytest.fixture
async def redis_store(redis_server: Any) -> Any:
    s = RedisSessionStore(RedisConfig(url=redis_server.url, key_prefix=f"t{uuid.uuid4().hex[:12]}"))
    yield s
    await s.close()


async def test_redis_keys_of_one_user_share_a_hash_slot_tag(redis_store, raw_redis):
    store = redis_store
    alice = [make("alice") for _ in range(3)]
    bob = make("bob")
    for s in [*alice, bob]:
        await store.create(s)
    await store.revoke("alice", alice[0].id, REASON_LOGOUT)   # a tombstone too
    keys = await _keys(raw_redis, store.prefix)
    parsed = [TAGGED.match(k) for k in keys]
    assert all(parsed), keys
    tags: dict[str, set[str]] = {}
    kinds: dict[str, set[str]] = {}
    for m in parsed:
        owner = "alice" if any(s.id in m["kind"] for s in alice) else \
            "bob" if bob.id in m["kind"] else m["tag"]
        tags.setdefault(owner, set()).add(m["tag"])
        kinds.setdefault(m["tag"], set()).add(m["kind"].split(":")[0])
    assert tags["alice"] == {user_tag("alice")}
    assert tags["bob"] == {user_tag("bob")}
    assert user_tag("alice") != user_tag("bob")
    assert kinds[user_tag("alice")] == {"s", "t", "idx"}
    assert kinds[user_tag("bob")] == {"s", "idx"}
    # The tag hides the username (no PII in key names) and has a fixed length.
    assert all("alice" not in k and "bob" not in k for k in keys)


async def test_redis_every_key_has_a_ttl(redis_store, raw_redis):
    store = redis_store
    a1, a2 = make("alice", idle=60, absolute=600), make("alice", remember=True, absolute=86400)
    b = make("bob")
    for s in (a1, a2, b):
        await store.create(s)
    a1.last_seen_at = time.time()
    await store.touch(a1)
    await store.revoke("bob", b.id, REASON_REVOKED)
    await store.revoke_user("alice", REASON_DISABLED, keep=a2.id)
    await store.user_sessions("alice")
    keys = await _keys(raw_redis, store.prefix)
    assert set(keys) == {store.session_key("alice", a2.id), store.index_key("alice"),
                         store.tombstone_key("alice", a1.id), store.tombstone_key("bob", b.id)}
    for key in keys:
        ttl = await raw_redis.pttl(key)
        assert ttl > 0, (key, ttl)
    # The session key lives until its idle end; a tombstone until the absolute end.
    s_ttl = await raw_redis.pttl(store.session_key("alice", a2.id))
    assert s_ttl <= a2.idle_timeout * 1000
    t_ttl = await raw_redis.pttl(store.tombstone_key("bob", b.id))
    assert t_ttl <= (b.expires_at - time.time()) * 1000 + 50


async def test_redis_index_ttl_follows_the_longest_session(redis_store, raw_redis):
    store = redis_store
    short, long = make(absolute=100), make(absolute=5000)
    await store.create(long)
    await store.create(short)     # a shorter one later must not shorten the index
    ttl = await raw_redis.pttl(store.index_key("alice"))
    assert 4000_000 < ttl <= 5000_000
