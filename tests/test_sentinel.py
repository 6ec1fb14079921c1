"""Redis Sentinel, live on loopback: one master, one replica, three
sentinels. The gateway finds the master through them, and when the master
dies mid-traffic it lets nobody through without a valid session, answers
503 meanwhile, and recovers by itself once a replica is promoted."""

from __future__ import annotations

import asyncio
from typing import Any


from authkit import api_login, failover_drill, send
from conftest import RedisSentinels, ask

def settings(topology: RedisSentinels) -> dict[str, Any]:
    return {"store": "redis", "redis": {
        "url": "redis://sentinel-names-the-master/0", "timeout": "500ms",
        "sentinel": {"master": topology.name,
                     "nodes": topology.nodes}}}


async def test_the_gateway_finds_the_master_through_the_sentinels(
        redis_sentinels, upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/")),
                                       session=settings(redis_sentinels)))
    token = await api_login(client)
    assert (await send(client, "GET", "/x", token=token)).status == 200
    # Written to the master, replicated to the replica.
    keys = await asyncio.to_thread(ask, redis_sentinels.replica, b"DBSIZE\r\n")
    assert int(keys[1:].strip()) > 0
    await send(client, "POST", "/_gateway/logout", token=token, json={})
    r = await send(client, "GET", "/x", token=token)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")


async def test_a_failover_lets_nobody_through_and_recovers_by_itself(
        redis_sentinels, upstream, make_config, gateway):
    """The drill: traffic with a valid session, a signed-out one and none,
    while the master is killed and a replica promoted."""
    client = await gateway(make_config(str(upstream.make_url("/")),
                                       session=settings(redis_sentinels), upstreams=[
        {"name": "app", "url": str(upstream.make_url("/")), "public": ["/static/"]}]))
    valid = await api_login(client)
    revoked = await api_login(client, "admin", "admin-pw")
    await send(client, "POST", "/_gateway/logout", token=revoked, json={})
    assert (await send(client, "GET", "/x", token=valid)).status == 200
    await asyncio.sleep(0.5)                    # replication is asynchronous: let it catch up
    seen, recovered = await failover_drill(client, redis_sentinels.kill_master, valid, revoked)
    # The promoted replica had the sessions: the valid one goes on, the
    # signed-out one stays out, and new sign-ins and sign-outs work.
    r = await send(client, "GET", "/x", token=revoked)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")
    fresh = await api_login(client)
    await send(client, "POST", "/_gateway/logout", token=fresh, json={})
    assert (await send(client, "GET", "/x", token=fresh)).status == 401
    print(f"failover drill: recovered {recovered:.1f}s after the kill; 503s for the valid "
          f"session: {seen['valid'].count(503)} of {len(seen['valid'])} requests")


async def test_three_instances_share_sessions_revocations_the_cap_and_throttling(
        redis_sentinels, upstream, make_config, gateway):
    """Three gateways on one Sentinel-managed Redis, each with its own cache
    and feed: a session made on one works on the others, a sign-out on one
    is refused by all at once, the per-user cap and login blocks hold across
    them."""
    config = make_config(str(upstream.make_url("/")), session={
        **settings(redis_sentinels), "max_per_user": 2}, trusted_proxies=["127.0.0.1/32"])
    a, b, c = [await gateway(config) for _ in range(3)]
    token = await api_login(a)
    for client in (a, b, c):
        assert (await send(client, "GET", "/x", token=token)).status == 200   # now cached
    await send(client=b, method="POST", target="/_gateway/logout", token=token, json={})
    for client in (a, c):           # each one's cache dropped by the feed within moments
        for _ in range(100):
            r = await send(client, "GET", "/x", token=token)
            if r.status == 401:
                break
            await asyncio.sleep(0.01)
        assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")
    first, second = await api_login(a), await api_login(b)
    third = await api_login(c)      # the cap: the least recently active one ends
    r = await send(b, "GET", "/x", token=first)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")
    assert (await send(a, "GET", "/x", token=second)).status == 200
    assert (await send(a, "GET", "/x", token=third)).status == 200
    for i in range(5):              # five wrong passwords, spread over the three
        r = await send((a, b, c)[i % 3], "POST", "/_gateway/api/login",
                       headers=[("X-Forwarded-For", "203.0.113.9")],
                       json={"username": "alice", "password": "wrong"})
        assert r.status == 401
    for client in (a, b, c):
        r = await send(client, "POST", "/_gateway/api/login",
                       headers=[("X-Forwarded-For", "203.0.113.9")],
                       json={"username": "alice", "password": "alice-pw"})
        assert (r.status, r.json()["error"]) == (429, "RATE_LIMITED")
