"""One store test suite, run against every backend (memory and a real Redis).

Time is an injected clock: expiry, grace and history are tested by moving
it, not by sleeping.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from conftest import Clock
from gateway.audit import stats
from gateway.config import ClusterConfig, RedisConfig, SentinelConfig
from gateway.store import (LOGOUT, REVOKED_BY_ADMIN, REVOKED_BY_USER,
                           USER_DISABLED, EndedSession, Session)
from gateway.store.base import MAX_FINDINGS, Counts, Strike
from gateway.store.memory import MemorySessionStore
from gateway.store.client import connect
from gateway.store.redis import RedisSessionStore, user_tag

HISTORY = 30 * 86400.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


def redis_config(request: pytest.FixtureRequest, topology: str) -> RedisConfig:
    """A config for one Redis, Sentinel or the cluster, with a prefix of its
    own (no test sees another's keys)."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    if topology == "sentinel":
        sentinels = request.getfixturevalue("shared_redis_sentinels")
        return RedisConfig(key_prefix=prefix, sentinel=SentinelConfig(
            master=sentinels.name, nodes=tuple(
                (h, int(p)) for h, p in (n.split(":") for n in sentinels.nodes))))
    if topology == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return RedisConfig(url="redis://cluster", key_prefix=prefix,
                           cluster=ClusterConfig(nodes=tuple(
                               (h, int(p)) for h, p in (n.split(":") for n in cluster.nodes)),
                               password=cluster.password))
    return RedisConfig(url=request.getfixturevalue("redis_server").url, key_prefix=prefix)


@pytest.fixture(params=["memory", "redis", "sentinel", "cluster"])
async def store(request: pytest.FixtureRequest, clock: Clock) -> Any:
    if request.param == "memory":
        s: Any = MemorySessionStore(clock)
    else:
        s = RedisSessionStore(redis_config(request, request.param), clock=clock)
    yield s
    await s.close()


@pytest.fixture(params=["redis", "sentinel", "cluster"])
async def redis_store(request: pytest.FixtureRequest, clock: Clock) -> Any:
    s = RedisSessionStore(redis_config(request, request.param), clock=clock)
    yield s
    await s.close()


@pytest.fixture
async def raw_redis(request: pytest.FixtureRequest) -> Any:
    """A client of the test's Redis (its cluster, if the store's is one),
    for what a test writes or reads by hand."""
    for name in ("store", "redis_store"):
        if name in request.fixturenames:
            store = request.getfixturevalue(name)
            if isinstance(store, RedisSessionStore):
                client = connect(store.config)
                break
    else:
        client = aioredis.from_url(request.getfixturevalue("redis_server").url)
    yield client
    await client.aclose()


def make(clock: Clock, username: str = "alice", *, idle: float = 600, absolute: float = 3600,
         age: float = 0.0, sid: str | None = None, remember: bool = False) -> Session:
    """A session created ``age`` seconds ago and seen just now."""
    now = clock()
    return Session(id=sid or uuid.uuid4().hex, username=username, created_at=now - age,
                   last_seen_at=now, expires_at=now - age + absolute,
                   idle_timeout=idle, remember=remember, login_ip="10.0.0.1",
                   login_user_agent="UA/1", ip="10.0.0.1", user_agent="UA/1")


def ids(sessions: list[Session]) -> list[str]:
    return [s.id for s in sessions]


async def create(store: Any, *sessions: Session, cap: int = 0) -> list[Session]:
    evicted: list[Session] = []
    for s in sessions:
        evicted += await store.create(s, cap, HISTORY)
    return evicted


async def touch(store: Any, session: Session, **changes: Any) -> bool:
    for k, v in changes.items():
        setattr(session, k, v)
    return await store.touch(session, changes)


# -- records ------------------------------------------------------------------------

async def test_create_then_get_returns_the_same_record(store, clock):
    s = make(clock)
    await create(store, s)
    got = await store.get("alice", s.id)
    assert got == s
    assert got is not s


@pytest.mark.parametrize("username, sid", [
    ("alice", "never-created"),
    ("bob", None),          # the right id under another user: not found
    ("Alice", None),        # usernames in the store are canonical keys already
])
async def test_get_misses(store, clock, username, sid):
    s = make(clock)
    await create(store, s)
    assert await store.get(username, sid or s.id) is None


async def test_touch_writes_only_the_fields_it_names(store, clock):
    s = make(clock)
    await create(store, s)
    clock.advance(30)
    assert await touch(store, s, last_seen_at=clock(), ip="10.9.9.9", user_agent="UA/2")
    got = await store.get("alice", s.id)
    assert (got.last_seen_at, got.ip, got.user_agent) == (clock(), "10.9.9.9", "UA/2")
    assert (got.login_ip, got.login_user_agent, got.created_at) == ("10.0.0.1", "UA/1",
                                                                     s.created_at)


async def test_two_workers_touching_different_fields_keep_both(store, clock):
    """Each worker read the record, then wrote its own change: neither is lost."""
    s = make(clock)
    await create(store, s)
    one, two = await store.get("alice", s.id), await store.get("alice", s.id)
    clock.advance(20)
    await asyncio.gather(store.touch(one, {"ip": "10.1.1.1"}),
                         store.touch(two, {"user_agent": "UA/9", "last_seen_at": clock()}))
    got = await store.get("alice", s.id)
    assert (got.ip, got.user_agent, got.last_seen_at) == ("10.1.1.1", "UA/9", clock())


async def test_a_record_from_a_newer_gateway_is_served_and_its_fields_kept(store, clock,
                                                                          raw_redis):
    s = make(clock)
    s.extra = {"device_id": "d-42", "passkey": "yes"}
    if isinstance(store, RedisSessionStore):
        # Written by hand, as a newer version would: a version and fields we do not know.
        fields = {**s.to_fields(), "v": "7"}
        await raw_redis.hset(store.session_key("alice", s.id), mapping=fields)
        await raw_redis.pexpire(store.session_key("alice", s.id), 600_000)
        await raw_redis.zadd(store.index_key("alice"), {s.id: s.expires_at * 1000})
    else:
        await create(store, s)
    got = await store.get("alice", s.id)
    assert got is not None and got.alive(clock())
    assert got.extra == {"device_id": "d-42", "passkey": "yes"}
    clock.advance(20)
    assert await touch(store, got, last_seen_at=clock())
    again = await store.get("alice", s.id)
    assert again.extra == {"device_id": "d-42", "passkey": "yes"}
    assert again.last_seen_at == clock()
    ended = await store.end("alice", s.id, LOGOUT, "alice", clock(), HISTORY)
    assert ended.extra == {"device_id": "d-42", "passkey": "yes"}
    assert (await store.ended("alice", s.id)).session.extra == ended.extra


async def test_last_activity_only_moves_forward(store, clock):
    s = make(clock)
    await create(store, s)
    late, early = await store.get("alice", s.id), await store.get("alice", s.id)
    await touch(store, late, last_seen_at=clock() + 20)
    await touch(store, early, last_seen_at=clock() + 10)      # arrives second, is older
    assert (await store.get("alice", s.id)).last_seen_at == clock() + 20


async def test_a_record_of_the_first_versions_is_served_and_converted(clock, redis_store,
                                                                     raw_redis):
    """Before hashes, a session was one JSON string; an upgrade signs nobody out."""
    store = redis_store
    s = make(clock)
    legacy = ('{"id": "%s", "username": "alice", "created_at": %r, "last_seen_at": %r, '
              '"expires_at": %r, "idle_timeout": 600.0, "remember": false, '
              '"login_ip": "10.0.0.1", "login_user_agent": "UA/1", "ip": "10.0.0.1", '
              '"user_agent": "UA/1"}' % (s.id, s.created_at, s.last_seen_at, s.expires_at))
    await raw_redis.set(store.session_key("alice", s.id), legacy, px=600_000)
    assert await store.get("alice", s.id) == s
    clock.advance(20)
    assert await touch(store, s, last_seen_at=clock())
    assert await raw_redis.type(store.session_key("alice", s.id)) == b"hash"
    assert await store.get("alice", s.id) == s
    assert 0 < await raw_redis.pttl(store.session_key("alice", s.id)) <= 3600_000
    # ...and is given the indexes it never had: found by id, listed.
    assert await store.find(s.id) == s
    assert ids((await store.list_sessions(None, 10)).sessions) == [s.id]


@pytest.mark.parametrize("old, status, reason", [("revoked", "REVOKED", "revoked_by_admin"),
                                                 ("logout", "LOGGED_OUT", "logout"),
                                                 ("disabled", "REVOKED", "user_disabled")])
async def test_why_the_first_versions_revoked_a_session_is_still_told(redis_store, raw_redis,
                                                                      old, status, reason):
    store = redis_store
    await raw_redis.set(f"{store.prefix}:{{{user_tag('alice')}}}:t:oldsid", old, px=60_000)
    record = await store.ended("alice", "oldsid")
    assert (record.status, record.reason) == (status, reason)
    assert await store.ended("bob", "oldsid") is None


CORRUPT = [
    {"id": "x", "username": "alice"},
    {"id": "x", "username": "alice", "created_at": "a", "last_seen_at": "b",
     "expires_at": "c", "idle_timeout": "d"},
    {"id": "x", "username": "alice", "created_at": "1", "last_seen_at": "nan",
     "expires_at": "9e12", "idle_timeout": "60"},
    {"id": "x", "username": "alice", "created_at": "1", "last_seen_at": "inf",
     "expires_at": "9e12", "idle_timeout": "60"},
]


@pytest.mark.parametrize("fields", CORRUPT)
def test_a_corrupt_record_reads_as_no_session(fields):
    assert Session.from_fields(fields) is None


@pytest.mark.parametrize("raw", [b"not json", b"\xff\xfe", b"[]", b"null", b"{}",
                                 b'{"id": "x", "username": "alice", "created_at": true,'
                                 b' "last_seen_at": 1, "expires_at": 9e12, "idle_timeout": 60}'])
def test_a_corrupt_legacy_record_reads_as_no_session(raw):
    assert Session.from_json(raw) is None


async def test_corrupt_records_in_redis_are_skipped_and_can_be_ended(clock, redis_store,
                                                                    raw_redis):
    store = redis_store
    good = make(clock)
    await create(store, good)
    await raw_redis.hset(store.session_key("alice", "bad"), mapping=CORRUPT[1])
    await raw_redis.pexpire(store.session_key("alice", "bad"), 60_000)
    await raw_redis.zadd(store.index_key("alice"), {"bad": clock() * 1000 + 60_000})
    assert await store.get("alice", "bad") is None
    assert ids(await store.user_sessions("alice")) == [good.id]
    await store.end("alice", "bad", REVOKED_BY_ADMIN, "cli", clock(), HISTORY)
    assert await raw_redis.exists(store.session_key("alice", "bad")) == 0


# -- ending ----------------------------------------------------------------------------

@pytest.mark.parametrize("ending, actor", [(LOGOUT, "alice"), (REVOKED_BY_USER, "alice"),
                                           (REVOKED_BY_ADMIN, "admin:ada"),
                                           (USER_DISABLED, "users-file")])
async def test_end_keeps_an_ended_record(store, clock, ending, actor):
    s, other = make(clock), make(clock)
    await create(store, s, other)
    assert await store.ended("alice", s.id) is None
    clock.advance(5)
    ended = await store.end("alice", s.id, ending, actor, clock(), HISTORY)
    assert ended == s
    assert await store.get("alice", s.id) is None
    record = await store.ended("alice", s.id)
    assert isinstance(record, EndedSession)
    assert (record.status, record.reason, record.actor, record.ended_at) == (
        ending.status, ending.reason, actor, clock())
    assert record.session == s
    assert ids(await store.user_sessions("alice")) == [other.id]
    # Ending again finds nothing and keeps the first record.
    assert await store.end("alice", s.id, LOGOUT, "alice", clock(), HISTORY) is None
    assert (await store.ended("alice", s.id)).reason == ending.reason


async def test_end_of_an_unknown_session_or_under_another_user_does_nothing(store, clock):
    s = make(clock)
    await create(store, s)
    assert await store.end("alice", "nope", LOGOUT, "alice", clock(), HISTORY) is None
    assert await store.ended("alice", "nope") is None
    assert await store.end("mallory", s.id, LOGOUT, "mallory", clock(), HISTORY) is None
    assert await store.get("alice", s.id) == s
    assert await store.find(s.id) == s                  # its indexes are untouched too
    assert ids((await store.list_sessions(None, 10)).sessions) == [s.id]


async def test_history_lists_ended_sessions_most_recent_first_within_the_window(store, clock):
    a, b, c = make(clock), make(clock), make(clock)
    await create(store, a, b, c)
    for s in (a, b):
        clock.advance(60)
        await store.end("alice", s.id, LOGOUT, "alice", clock(), 3600)
    assert [e.session.id for e in await store.history("alice", clock() - 3600)] == [b.id, a.id]
    assert [e.session.id for e in await store.history("alice", clock() - 30)] == [b.id]
    assert await store.history("bob", 0) == []


async def test_touch_never_recreates_an_ended_session(store, clock):
    s = make(clock)
    await create(store, s)
    stale = await store.get("alice", s.id)   # a request read it...
    await store.end("alice", s.id, REVOKED_BY_USER, "alice", clock(), HISTORY)  # ...then it ended
    assert await touch(store, stale, last_seen_at=clock()) is False
    assert await store.get("alice", s.id) is None
    assert ids(await store.user_sessions("alice")) == []


async def test_touch_refuses_a_session_whose_time_is_up(store, clock):
    s = make(clock, idle=60)
    await create(store, s)
    clock.advance(61)
    assert await touch(store, s, last_seen_at=clock()) is False
    got = await store.get("alice", s.id)         # kept for the grace, no longer alive
    assert got is not None and not got.alive(clock())


async def test_a_session_past_its_end_is_kept_for_the_grace_then_forgotten(store, clock):
    s = make(clock, idle=600)
    await create(store, s)
    clock.advance(601)
    got = await store.get("alice", s.id)       # within the grace: there, but not alive
    assert got is not None and not got.alive(clock()) and got.ending(clock()).reason == "idle"
    assert await store.find(s.id) is None
    assert (await store.list_sessions(None, 10)).sessions == []
    if isinstance(store, MemorySessionStore):    # Redis forgets by its own TTL, in real time
        clock.advance(600)
        assert await store.get("alice", s.id) is None


async def test_absolute_expiry_despite_activity(store, clock):
    s = make(clock, idle=60, absolute=100)
    await create(store, s)
    for _ in range(3):
        clock.advance(30)
        assert await touch(store, s, last_seen_at=clock())
    clock.advance(15)
    assert await touch(store, s, last_seen_at=clock()) is False
    got = await store.get("alice", s.id)
    assert got is not None and got.ending(clock()).reason == "absolute"


# -- the cap ---------------------------------------------------------------------------------

async def test_create_ends_the_oldest_beyond_the_cap(store, clock):
    made = [make(clock, age=10 - i) for i in range(3)]
    await create(store, *made)
    newest = make(clock)
    evicted = await store.create(newest, 3, HISTORY)
    assert ids(evicted) == [made[0].id]
    assert ids(await store.user_sessions("alice")) == [*ids(made[1:]), newest.id]
    record = await store.ended("alice", made[0].id)
    assert (record.status, record.reason, record.actor) == ("REVOKED", "session_limit", "system")
    assert await store.create(make(clock, "bob"), 3, HISTORY) == []


async def test_the_cap_ends_the_least_recently_active_first(store, clock):
    old_but_busy, young_but_idle = make(clock, age=100), make(clock, age=10)
    await create(store, old_but_busy, young_but_idle)
    clock.advance(5)
    await touch(store, old_but_busy, last_seen_at=clock())
    evicted = await store.create(make(clock), 2, HISTORY)
    assert ids(evicted) == [young_but_idle.id]


async def test_refuse_at_the_cap_saves_nothing(store, clock):
    from gateway.store import AtCapacity
    first, second = make(clock), make(clock)
    await create(store, first, second)
    third = make(clock)
    with pytest.raises(AtCapacity):
        await store.create(third, 2, HISTORY, refuse=True)
    assert sorted(ids(await store.user_sessions("alice"))) == sorted([first.id, second.id])
    assert await store.get("alice", third.id) is None
    await store.end("alice", first.id, LOGOUT, "alice", clock(), HISTORY)
    assert await store.create(third, 2, HISTORY, refuse=True) == []


async def test_refuse_holds_under_twenty_parallel_logins(store, clock):
    from gateway.store import AtCapacity
    results = await asyncio.gather(*(store.create(make(clock), 5, HISTORY, refuse=True)
                                     for _ in range(20)), return_exceptions=True)
    assert sum(isinstance(r, AtCapacity) for r in results) == 15
    assert len(await store.user_sessions("alice")) == 5


async def test_the_cap_holds_under_twenty_parallel_logins(store, clock):
    sessions = [make(clock, age=20 - i) for i in range(20)]
    results = await asyncio.gather(*(store.create(s, 5, HISTORY) for s in sessions))
    live = await store.user_sessions("alice")
    assert len([s for s in live if s.alive(clock())]) == 5
    assert sum(len(r) for r in results) == 15
    assert len({e.id for r in results for e in r}) == 15   # each ended once


# -- indexes and listings -------------------------------------------------------------------

async def test_user_sessions_oldest_first_and_pruned(store, clock):
    made = [make(clock, age=a) for a in (5, 50, 1, 20)]
    await create(store, *made)
    await store.end("alice", made[2].id, LOGOUT, "alice", clock(), HISTORY)
    got = await store.user_sessions("alice")
    assert ids(got) == ids(sorted((made[0], made[1], made[3]), key=lambda s: s.created_at))


async def test_find_by_id_alone(store, clock):
    a, b = make(clock, "alice"), make(clock, "bob")
    await create(store, a, b)
    assert await store.find(b.id) == b
    assert await store.find("missing") is None
    await store.end("bob", b.id, REVOKED_BY_ADMIN, "cli", clock(), HISTORY)
    assert await store.find(b.id) is None


async def test_find_does_not_treat_the_id_as_a_pattern(store, clock):
    await create(store, make(clock, sid="abc123"))
    for pattern in ("*", "abc*", "abc12?", "[a]bc123"):
        assert await store.find(pattern) is None, pattern


async def test_listing_pages_through_every_live_session_once_most_recent_first(store, clock):
    made = []
    for i in range(23):
        s = make(clock, f"user{i % 4}")
        # Some share one millisecond of last activity: ties must not repeat or vanish.
        s.last_seen_at = clock() - (i // 3)
        made.append(s)
    await create(store, *made)
    await store.end("user1", made[1].id, LOGOUT, "user1", clock(), HISTORY)
    seen: list[Session] = []
    cursor = None
    for _ in range(10):
        page = await store.list_sessions(cursor, 5)
        assert len(page.sessions) <= 5
        seen += page.sessions
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(ids(seen)) == sorted(s.id for s in made if s.id != made[1].id)
    activity = [s.last_seen_at for s in seen]
    assert activity == sorted(activity, reverse=True)


async def test_listing_pages_through_many_sessions_of_one_millisecond(store, clock):
    made = [make(clock, f"user{i}") for i in range(130)]
    for s in made:
        s.last_seen_at = round(clock(), 3)
    await create(store, *made)
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page = await store.list_sessions(cursor, 50)
        seen += ids(page.sessions)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == 130 and set(seen) == set(ids(made))


async def test_listing_resumes_when_the_cursor_session_moves_or_ends(store, clock):
    made = [make(clock, f"user{i}") for i in range(6)]
    for i, s in enumerate(made):
        s.last_seen_at = clock() - i
    await create(store, *made)
    first = await store.list_sessions(None, 2)
    assert ids(first.sessions) == ids(made[:2])
    # The last session shown becomes active again (moves to the top) and one ends.
    clock.advance(1)
    await touch(store, made[1], last_seen_at=clock())
    await store.end("user2", made[2].id, LOGOUT, "user2", clock(), HISTORY)
    rest = await store.list_sessions(first.next_cursor, 10)
    assert ids(rest.sessions) == ids(made[3:])


@pytest.mark.parametrize("cursor", ["x", "!!", "bnVsbA", "WzEsMl0"])
async def test_a_forged_cursor_is_refused(store, cursor):
    with pytest.raises(ValueError):
        await store.list_sessions(cursor, 10)


# -- Redis specifics -------------------------------------------------------------

TAGGED = re.compile(r"^(?P<prefix>[^:]+):\{(?P<tag>[^{}]+)\}:(?P<kind>s:.+|idx|e:.+|ended)$")


async def _keys(raw_redis: Any, prefix: str) -> list[str]:
    return sorted([k.decode() async for k in raw_redis.scan_iter(match=f"{prefix}:*")])


async def test_cluster_the_feed_hears_sign_outs_on_every_master(request, clock):
    """The feed listens on every master, so a sign-out is heard from its
    own master first, whichever master serves its user's slot."""
    store = RedisSessionStore(redis_config(request, "cluster"), clock=clock)
    ready, heard = asyncio.Event(), asyncio.Queue()
    watch = asyncio.ensure_future(store.watch_revocations(ready.set, heard.put_nowait))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        await store.redis.initialize()
        users: dict[str, str] = {}                      # a user on each master
        for n in range(100):
            node = store.redis.get_node_from_key(store.session_key(f"u{n}", "x")).name
            users.setdefault(node, f"u{n}")
        assert len(users) == 3
        for user in users.values():
            s = make(clock, user)
            await create(store, s)
            await store.end(user, s.id, LOGOUT, user, clock(), HISTORY)
            # Heard once from each master (the other two are relayed copies).
            assert [await asyncio.wait_for(heard.get(), 2) for _ in range(3)] == [s.id] * 3
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await store.close()


async def test_redis_keys_of_one_user_share_a_hash_slot_tag(redis_store, raw_redis, clock):
    store = redis_store
    alice = [make(clock, "alice") for _ in range(3)]
    bob = make(clock, "bob")
    await create(store, *alice, bob)
    await store.end("alice", alice[0].id, LOGOUT, "alice", clock(), HISTORY)
    keys = [k for k in await _keys(raw_redis, store.prefix)
            if not k.startswith((f"{store.prefix}:o:", store.all_key, f"{store.prefix}:ip:"))]
    parsed = [TAGGED.match(k) for k in keys]
    assert all(parsed), keys
    kinds: dict[str, set[str]] = {}
    for m in parsed:
        kinds.setdefault(m["tag"], set()).add(m["kind"].split(":")[0])
    assert kinds == {user_tag("alice"): {"s", "e", "idx", "ended"},
                     user_tag("bob"): {"s", "idx"}}
    # The tag hides the username (no PII in key names) and has a fixed length.
    assert all("alice" not in k and "bob" not in k for k in keys)


async def test_redis_every_key_has_a_ttl(redis_store, raw_redis, clock):
    store = redis_store
    a1, a2 = make(clock, idle=60, absolute=600), make(clock, remember=True, absolute=86400)
    b = make(clock, "bob")
    await create(store, a1, a2, b)
    clock.advance(10)
    await touch(store, a1, last_seen_at=clock())
    await store.end("bob", b.id, REVOKED_BY_ADMIN, "cli", clock(), 3600)
    keys = await _keys(raw_redis, store.prefix)
    for key in keys:
        ttl = await raw_redis.pttl(key)
        assert ttl > 0 or key == store.all_key, (key, ttl)   # gw:all is pruned instead
    # A session lives until its idle end plus the grace; an ended record for the history.
    s_ttl = await raw_redis.pttl(store.session_key("alice", a1.id))
    assert s_ttl <= (a1.keep_until - time.time()) * 1000 + 50
    e_ttl = await raw_redis.pttl(store.ended_key("bob", b.id))
    assert 3500_000 < e_ttl <= (clock() + 3600 - time.time()) * 1000 + 50


async def test_redis_owner_key_outlives_any_activity(redis_store, raw_redis, clock):
    """find(sid) must work for as long as the session can live, touched or not."""
    store = redis_store
    s = make(clock, idle=600, absolute=12 * 3600, remember=True)
    await create(store, s)
    ttl = await raw_redis.pttl(store.owner_key(s.id))
    assert ttl >= (s.expires_at - clock()) * 1000


async def test_redis_index_ttl_follows_the_longest_session(redis_store, raw_redis, clock):
    store = redis_store
    short, long = make(clock, absolute=100), make(clock, absolute=5000)
    await create(store, long, short)  # a shorter one later must not shorten the index
    ttl = await raw_redis.pttl(store.index_key("alice"))
    assert 5000_000 < ttl <= 8600_000


async def test_redis_store_closes_its_connections(redis_server, clock):
    """The pool is the client's own: closing the store leaves no connection open."""
    store = RedisSessionStore(RedisConfig(url=redis_server.url, key_prefix="close"), clock=clock)
    await store.ping()
    pool = store.redis.connection_pool
    await store.close()
    assert all(not c.is_connected for c in pool._available_connections + list(pool._in_use_connections))


# -- security events ----------------------------------------------------------------------

def alert(clock: Clock, n: int = 0) -> dict[str, Any]:
    return {"id": f"e{n}", "type": "security.ip_changed", "at": clock(), "policy": "notify"}


async def test_a_finding_is_recorded_once_per_session_and_mark(store, clock):
    assert await store.add_security_event("alice", "s1", "ip:a", alert(clock, 1), 600, 3600)
    assert not await store.add_security_event("alice", "s1", "ip:a", alert(clock, 2), 600, 3600)
    assert await store.add_security_event("alice", "s1", "ip:b", alert(clock, 3), 600, 3600)
    assert await store.add_security_event("alice", "s2", "ip:a", alert(clock, 4), 600, 3600)
    assert await store.add_security_event("bob", "s3", "ip:a", alert(clock, 5), 600, 3600)
    assert sorted(e["id"] for e in await store.security_events("alice", 0)) == ["e1", "e3", "e4"]
    # The session's marks go with it: Redis by a key TTL, memory by the clock.
    if isinstance(store, RedisSessionStore):
        assert 590_000 < await store.redis.pttl(store.marks_key("alice", "s1")) <= 600_000
    else:
        clock.advance(601)
        assert await store.add_security_event("alice", "s1", "ip:a", alert(clock, 6), 600, 3600)


async def test_security_events_keep_the_history_window_and_at_most_100(store, clock):
    await store.add_security_event("alice", "s0", "old", alert(clock, 0), 9999, 3600)
    clock.advance(10)
    since = clock()
    for n in range(1, 106):
        clock.advance(1)
        await store.add_security_event("alice", f"s{n}", "m", alert(clock, n), 9999, 3600)
    events = await store.security_events("alice", 0)
    assert [e["id"] for e in events] == [f"e{n}" for n in range(105, 5, -1)]   # newest first
    assert len(await store.security_events("alice", since + 100)) == 5
    clock.advance(3600)
    await store.add_security_event("alice", "s1", "late", alert(clock, 999), 9999, 3600)
    assert [e["id"] for e in await store.security_events("alice", 0)] == ["e999"]


async def test_a_session_has_at_most_its_fill_of_findings_and_log_ones_are_not_shown(store,
                                                                                     clock):
    assert await store.add_security_event("alice", "s1", "seen", None, 600, 3600)
    assert not await store.add_security_event("alice", "s1", "seen", None, 600, 3600)
    for n in range(MAX_FINDINGS - 1):
        assert await store.add_security_event("alice", "s1", f"ip:{n}", alert(clock, n),
                                              600, 3600)
    assert not await store.add_security_event("alice", "s1", "one-more", alert(clock, 99),
                                              600, 3600)
    ids = [e["id"] for e in await store.security_events("alice", 0)]
    assert len(ids) == MAX_FINDINGS - 1 and "e99" not in ids     # "seen" kept no record


async def test_the_audit_trail_reads_forward_from_an_entry(store, clock):
    await store.audit_append([{"n": n} for n in range(5)], retention=3600)
    first, *_ = [entry_id for entry_id, _ in reversed(await store.audit_page(None, 10))]
    after = await store.audit_after(first, 2)
    assert [r["n"] for _, r in after] == [1, 2]
    assert [r["n"] for _, r in await store.audit_after(after[-1][0], 10)] == [3, 4]
    assert await store.audit_after("0-0", 10) != []


# -- analytics counters and version swaps ---------------------------------------------

async def test_counts_add_once_and_rank(store):
    await store.count(Counts(keep=60, add={"h:1": Counter(logins=2)},
                             once={"a:1": {"0900": 5}}, distinct={"u:1": {"a", "b"}},
                             rank={"f:1": Counter({"10.0.0.1": 2, "10.0.0.2": 1})}))
    await store.count(Counts(keep=60, add={"h:1": Counter(logins=1, failures=1)},
                             once={"a:1": {"0900": 9, "0905": 7}}, distinct={"u:1": {"b", "c"}},
                             rank={"f:1": Counter({"10.0.0.2": 5})}))
    read = await store.read_counts(["h:1", "a:1", "h:missing"], ["u:1", "u:missing"],
                                   ["f:1"], top=1)
    assert read.add == {"h:1": {"logins": 3, "failures": 1}, "a:1": {"0900": 5, "0905": 7},
                        "h:missing": {}}
    assert read.distinct == {"u:1": 3, "u:missing": 0}
    assert read.rank == {"f:1": [("10.0.0.2", 6)]}


async def test_a_ranking_keeps_only_its_top_members(store, monkeypatch):
    import gateway.store.memory
    import gateway.store.redis
    monkeypatch.setattr(gateway.store.memory, "RANK_KEEP", 3)
    monkeypatch.setattr(gateway.store.redis, "RANK_KEEP", 3)
    await store.count(Counts(keep=60, rank={"f:1": Counter({f"10.0.0.{i}": i
                                                              for i in range(1, 9)})}))
    read = await store.read_counts([], [], ["f:1"], top=100)
    assert [ip for ip, _ in read.rank["f:1"]] == ["10.0.0.8", "10.0.0.7", "10.0.0.6"]


async def test_counters_are_kept_for_the_days_shown_and_then_forgotten(store, clock):
    await store.count(Counts(keep=stats.KEEP_DAYS * 86400, add={"h:x": Counter(logins=1)}))
    clock.advance(stats.DAYS * 86400)
    assert (await store.read_counts(["h:x"], [], [], 1)).add["h:x"] == {"logins": 1}
    if hasattr(store, "redis"):         # Redis expires keys on its own clock
        ttl = await store.redis.ttl(store.stats_key("h:x"))
        assert stats.DAYS * 86400 < ttl <= stats.KEEP_DAYS * 86400
    else:
        clock.advance(86400 + 1)
        assert (await store.read_counts(["h:x"], [], [], 1)).add["h:x"] == {}


async def test_one_sample_of_active_sessions_per_slot_whoever_takes_it(store, clock):
    from gateway.store import Session
    clock.now -= clock.now % stats.SAMPLE_EVERY     # the slot's start: now + 1 stays in it
    now = clock()
    await store.create(Session("s1", "alice", now, now, now + 3600, 1800), 0, 60)
    first = await stats.sample_active(store, 1800, now)
    await store.create(Session("s2", "bob", now, now, now + 3600, 1800), 0, 60)
    await stats.sample_active(store, 1800, now + 1)        # another worker, same slot
    read = await store.read_counts([stats.day_key("a", now)], [], [], 1)
    assert first == 1 and list(read.add[stats.day_key("a", now)].values()) == [1]
    assert await store.active_count(now - 1800) == 2
    assert await store.active_count(now + 1) == 0           # nobody active since


async def test_swap_hands_back_what_was_there(store):
    assert await store.swap("users", {"version": "a"}) == {}
    assert await store.swap("users", {"version": "b", "n": "2"}) == {"version": "a"}
    assert await store.swap("config", {"x": "1"}) == {}
    assert await store.swap("users", {}) == {"version": "b", "n": "2"}


async def test_sessions_by_address_follow_moves_and_ends(store, clock):
    from dataclasses import replace
    a, b, c = (replace(make(clock, user), ip="203.0.113.9") for user in ("alice", "bob", "carol"))
    other = make(clock, "dave")                                  # 10.0.0.1
    await create(store, a, b, c, other)
    clock.advance(5)
    moved = replace(b, ip="198.51.100.1", last_seen_at=clock())
    assert await store.touch(moved, {"last_seen_at": clock(), "ip": moved.ip})
    touched = replace(c, last_seen_at=clock())
    assert await store.touch(touched, {"last_seen_at": clock()})
    await store.end("alice", a.id, LOGOUT, "alice", clock(), HISTORY)
    assert ids(await store.ip_sessions("203.0.113.9", 10)) == [c.id]     # most recent first
    assert ids(await store.ip_sessions("198.51.100.1", 10)) == [b.id]
    assert ids(await store.ip_sessions("192.0.2.1", 10)) == []
    clock.advance(601)                                           # all idle now
    assert await store.ip_sessions("198.51.100.1", 10) == []


async def test_redis_scripts_are_loaded_again_after_a_script_flush(redis_store, raw_redis,
                                                                   clock):
    """A Redis that forgot the scripts (a restart, SCRIPT FLUSH; on a
    cluster, every master) gets them loaded, and the work is done."""
    store = redis_store
    s = make(clock)
    await create(store, s)
    await raw_redis.script_flush()
    clock.advance(20)
    assert await touch(store, s, last_seen_at=clock())
    await raw_redis.script_flush()
    await store.audit_append([{"type": "flushed"}], 3600,
                             Counts(keep=60, add={"h:1": Counter(logins=1)}))
    await raw_redis.script_flush()
    assert await store.throttle_attempt([Strike("pair:x", 5, 60, 60, {})]) == 0
    assert [r["type"] for _, r in await store.audit_page(None, 10)] == ["flushed"]
    assert (await store.read_counts(["h:1"], [], [], 1)).add["h:1"] == {"logins": 1}


async def test_redis_touch_and_audit_are_one_round_trip_and_survive_a_script_flush(
        redis_store, raw_redis, clock):
    """Scripts in pipelines go as bare EVALSHA (redis-py would first send
    SCRIPT EXISTS, a round trip of its own); a Redis that forgot them gets
    them loaded and the work done once."""
    store = redis_store
    if store.cluster:
        pytest.skip("one Redis: a cluster's batch goes to several nodes")
    s = make(clock)
    await create(store, s)
    counts = Counts(keep=60, add={"h:1": Counter(logins=1)})
    async with raw_redis.monitor() as monitor:
        for run in ("first", "warm", "flushed"):
            if run == "flushed":
                await raw_redis.script_flush()
            clock.advance(20)
            await raw_redis.set("mark", "start")
            assert await touch(store, s, last_seen_at=clock())
            await store.audit_append([{"type": run}], 3600, counts)
            await raw_redis.set("mark", "end")
            seen = []
            while (got := await monitor.next_command())["command"] != "SET mark end":
                # (PING: a pool's health check of an idle connection.)
                if got.get("client_type") != "lua" and "mark" not in got["command"] \
                        and got["command"] != "PING":
                    seen.append(got["command"].split()[0])
            if run == "warm":
                assert seen == ["EVALSHA", "ZADD", "ZADD", "PEXPIRE", "XADD", "EVALSHA"], seen
            assert seen.count("XADD") == 1
    assert len(await store.audit_page(None, 10)) == 3
    assert (await store.read_counts(["h:1"], [], [], 1)).add["h:1"] == {"logins": 3}


# -- the second factor and held values ----------------------------------------------

async def test_an_enrolment_is_saved_once_and_its_codes_spent_once(store, clock):
    assert await store.mfa_get("alice") is None
    assert await store.mfa_enrol("alice", "sealed-1", ["d1", "d2", "d3"], clock())
    assert not await store.mfa_enrol("alice", "sealed-2", ["d9"], clock())
    got = await store.mfa_get("alice")
    assert (got.secret, got.enrolled_at, got.codes_left) == ("sealed-1", clock(), 3)
    assert await store.mfa_use_code("alice", "d2") == 2
    assert await store.mfa_use_code("alice", "d2") is None
    assert await store.mfa_use_code("alice", "d9") is None
    assert await store.mfa_use_code("bob", "d1") is None
    spent = await asyncio.gather(*(store.mfa_use_code("alice", "d1") for _ in range(10)))
    assert sorted(spent, key=str) == [1] + [None] * 9
    assert (await store.mfa_get("alice")).codes_left == 1
    assert await store.mfa_reset("alice")
    assert not await store.mfa_reset("alice")
    assert await store.mfa_get("alice") is None
    assert await store.mfa_use_code("alice", "d3") is None


async def test_a_time_step_is_accepted_once_and_never_an_older_one(store, clock):
    assert await store.mfa_use_step("alice", 100, 300)
    assert not await store.mfa_use_step("alice", 100, 300)
    assert not await store.mfa_use_step("alice", 99, 300)
    assert await store.mfa_use_step("bob", 100, 300)
    accepted = await asyncio.gather(*(store.mfa_use_step("alice", 101, 300) for _ in range(10)))
    assert sorted(accepted) == [False] * 9 + [True]


async def test_a_held_value_is_released_once(store, clock):
    await store.hold("k", "v", 300)
    assert await store.held("k") == "v"
    assert await store.held("k") == "v"
    released = await asyncio.gather(*(store.release("k") for _ in range(5)))
    assert sorted(released, key=str) == [None] * 4 + ["v"]
    assert await store.held("k") is None
    await store.hold("short", "v", 0.05)
    clock.advance(1)
    if isinstance(store, RedisSessionStore):
        await asyncio.sleep(0.1)          # Redis keeps its own time for TTLs
    assert await store.held("short") is None
