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

import pytest

from authkit import api_login, failover_drill, send
from conftest import USERS, write_users
from gateway.config import RedisConfig
from gateway.config.schema import ClusterConfig
from gateway.store import Session, StoreUnavailable
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


async def test_a_feed_ends_when_a_master_dies(fresh_redis_cluster):
    """The feed listens on every master; when one dies the watch ends at once
    (and the caller empties its cache), rather than missing what it would
    have heard first."""
    cluster = fresh_redis_cluster
    store = RedisSessionStore(RedisConfig(
        url="redis://cluster", timeout=0.5,
        cluster=ClusterConfig(nodes=tuple(("127.0.0.1", p) for p in cluster.ports))))
    ready = asyncio.Event()
    watch = asyncio.ensure_future(store.watch_revocations(ready.set, lambda sid: None))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        await asyncio.to_thread(cluster.kill, store.redis.get_primaries()[0].port)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(watch, 5)
    finally:
        watch.cancel()
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
