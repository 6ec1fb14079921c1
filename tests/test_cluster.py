"""Redis Cluster, live on loopback (three masters, three replicas): the
failover drill. The master that serves a signed-in user's hash slot is
killed under traffic; nobody without a valid session gets through at any
moment, requests that need that slot answer 503 meanwhile, public paths
and other users' sessions keep working, and the gateway recovers by itself
once the replica is promoted. (The store suite and the end-to-end tests run
on the cluster too, through the ``cluster`` parameter of their fixtures.)"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from authkit import api_login, failover_drill, send
from conftest import USERS, write_users
from gateway.config import ClusterConfig, RedisConfig
from gateway.store import Session, StoreUnavailable
from gateway.store.base import Counts
from gateway.store.redis import RedisSessionStore, user_tag


def settings(cluster) -> dict:
    return {"store": "redis", "redis": {"cluster": {"nodes": cluster.nodes},
                                        "key_prefix": "drill", "timeout": "500ms"}}


def other_user_than(cluster, victim_port: int, folder) -> str:
    """A user, added to the users file, whose slot another master serves."""
    for n in range(20):
        user = f"user{n}"
        if cluster.master_of(f"drill:{{{user_tag(user)}}}:s:x") != victim_port:
            write_users(folder, [*USERS, {"username": user, "password": f"{user}-pw"}])
            return user
    raise AssertionError("twenty users' slots all on the victim")


async def test_killing_the_master_of_a_user_s_slot_lets_nobody_through(
        fresh_redis_cluster, upstream, make_config, gateway, tmp_path):
    cluster = fresh_redis_cluster
    victim = cluster.master_of(f"drill:{{{user_tag('alice')}}}:s:x")
    other = other_user_than(cluster, victim, tmp_path)
    client = await gateway(make_config(str(upstream.make_url("/")), session=settings(cluster)))
    valid = await api_login(client)
    bystander = await api_login(client, other, f"{other}-pw")
    revoked = await api_login(client)
    await send(client, "POST", "/_gateway/logout", token=revoked, json={})
    assert (await send(client, "GET", "/x", token=valid)).status == 200
    await asyncio.sleep(0.5)                    # replication is asynchronous: let it catch up

    seen, recovered = await failover_drill(client, lambda: cluster.kill(victim), valid,
                                           revoked, bystander=bystander)
    assert set(seen["bystander"]) <= {200, 503}
    # The promoted replica had the sessions: the valid one goes on (none
    # lost), the signed-out one stays out, new sign-ins and sign-outs work.
    r = await send(client, "GET", "/x", token=revoked)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")
    fresh = await api_login(client)
    await send(client, "POST", "/_gateway/logout", token=fresh, json={})
    assert (await send(client, "GET", "/x", token=fresh)).status == 401
    assert (await send(client, "GET", "/x", token=bystander)).status == 200
    print(f"cluster failover drill: recovered {recovered:.1f}s after the kill; 503s for the "
          f"valid session: {seen['valid'].count(503)} of {len(seen['valid'])}, for the "
          f"bystander on another master: {seen['bystander'].count(503)}")


async def test_a_feed_ends_when_any_master_dies_and_the_next_listens_on_the_new_ones(
        fresh_redis_cluster):
    """The feed listens on every master: when one dies the watch ends at once
    (the caller empties its cache) rather than missing what it would have
    heard first. The next watch, as the caller starts one each second, finds
    the promoted replica by itself, with no other traffic to teach the
    client the new layout."""
    cluster = fresh_redis_cluster
    store = RedisSessionStore(RedisConfig(
        url="redis://cluster", timeout=0.5,
        cluster=ClusterConfig(nodes=tuple(("127.0.0.1", p) for p in cluster.ports))))

    async def watch(within: float) -> tuple[asyncio.Future, bool]:
        ready = asyncio.Event()
        feed = asyncio.ensure_future(store.watch_revocations(ready.set, lambda sid: None))
        waiting = asyncio.ensure_future(ready.wait())
        await asyncio.wait([feed, waiting], timeout=within,
                           return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        return feed, ready.is_set()

    feed, ready = await watch(5)
    try:
        assert ready
        masters = sorted(port for _, port in await store._masters())
        victim = masters[-1]                 # not the first: every master counts
        await asyncio.to_thread(cluster.kill, victim)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(feed, 5)
        deadline = time.monotonic() + 30
        while True:
            feed, ready = await watch(2)
            if ready:
                break
            assert time.monotonic() < deadline, "no feed 30 s after the kill"
            with pytest.raises(StoreUnavailable):
                await feed
            await asyncio.sleep(1)
        now = sorted(port for _, port in await store._masters())
        assert victim not in now and len(now) == 3
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)
        await store.close()


async def test_a_dead_master_is_an_outage_never_a_partial_answer(fresh_redis_cluster):
    """A batch that meets a dead master raises (503), as a pipeline on one
    Redis does: the audit trail keeps its events to send again, and the
    admin listing does not quietly leave out the sessions on that master.
    Closing the store afterwards closes every connection."""
    cluster = fresh_redis_cluster
    store = RedisSessionStore(RedisConfig(
        url="redis://cluster", key_prefix="out", timeout=0.5,
        cluster=ClusterConfig(nodes=tuple(("127.0.0.1", p) for p in cluster.ports))))
    try:
        victim = cluster.master_of(store.audit_key)
        now = time.time()
        for n in range(12):                   # users on every master, the victim's too
            user = f"user{n}"
            session = Session(id=f"s{n}", username=user, created_at=now, last_seen_at=now,
                              expires_at=now + 3600, idle_timeout=600)
            await store.create(session, 5, 3600)
        assert {cluster.master_of(store.session_key(f"user{n}", "x"))
                for n in range(12)} >= {victim}
        assert len((await store.list_sessions(None, 50)).sessions) == 12
        await asyncio.to_thread(cluster.kill, victim)
        with pytest.raises(StoreUnavailable):
            await store.audit_append([{"type": "login"}], retention=3600)
        with pytest.raises(StoreUnavailable):
            await store.list_sessions(None, 50)
    finally:
        await store.close()


async def test_the_audit_trail_is_stored_once_when_the_counts_master_dies(fresh_redis_cluster):
    """The records and the analytics counts of an audit batch live on
    different masters. When only the counts' master is lost, the records
    stay stored once: the batch is not reported failed (the trail would
    send it again, appending the records twice)."""
    cluster = fresh_redis_cluster
    prefix = next(p for p in (f"a{n}" for n in range(50))
                  if cluster.master_of(f"{p}:audit") != cluster.master_of(f"{p}:{{stats}}:x"))
    store = RedisSessionStore(RedisConfig(
        url="redis://cluster", key_prefix=prefix, timeout=0.5,
        cluster=ClusterConfig(nodes=tuple(("127.0.0.1", p) for p in cluster.ports))))
    try:
        counts = Counts(keep=60, add={"h:1": Counter(logins=1)})
        await store.audit_append([{"type": "login"}], 3600, counts)
        await asyncio.to_thread(cluster.kill, cluster.master_of(store.stats_key("h:1")))
        await store.audit_append([{"type": "logout"}], 3600, counts)
        assert [r["type"] for _, r in await store.audit_page(None, 10)] == ["logout", "login"]
    finally:
        await store.close()


async def test_a_replica_promoted_by_hand_moves_the_feed_to_the_new_master(fresh_redis_cluster):
    """CLUSTER FAILOVER keeps the old master up, as a replica: no connection
    breaks, and the client hears of it only if a command of its own meets
    it. The feed asks the cluster itself, ends, and the next watch listens
    on the new master (so a sign-out there is heard from it first)."""
    cluster = fresh_redis_cluster
    store = RedisSessionStore(RedisConfig(
        url="redis://cluster", timeout=0.5,
        cluster=ClusterConfig(nodes=tuple(("127.0.0.1", p) for p in cluster.ports))))
    ready = asyncio.Event()
    feed = asyncio.ensure_future(store.watch_revocations(ready.set, lambda sid: None))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        replica = next(p for p in cluster.ports
                       if b"role:slave" in cluster.ask(p, b"INFO replication\r\n"))
        assert cluster.ask(replica, b"CLUSTER FAILOVER\r\n").startswith(b"+OK")
        with pytest.raises(StoreUnavailable, match="masters changed"):
            await asyncio.wait_for(feed, 10)
        assert ("127.0.0.1", replica) in await store._masters()
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)
        await store.close()
