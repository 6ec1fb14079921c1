"""Rate limits through the real gateway and store: a rule per user on a path
prefix and methods, the 429 with Retry-After and the RateLimit fields (JSON
and a page), the window ending (injectable clock), a rule shared by two
workers through Redis, public paths counted per address, and the session
refresh's own limit."""

from __future__ import annotations

from typing import Any

import pytest

from authkit import api_login, send
from conftest import Clock
from gateway.state import GATEWAY

API = {"name": "api", "path": "/API/", "per": "user", "limit": 3, "window": "15m",
       "methods": ["get"]}


@pytest.fixture
async def limited(upstream, make_config, gateway, store_settings):
    clock = Clock()

    async def start(*rules: dict[str, Any]) -> Any:
        return await gateway(make_config(str(upstream.make_url("/")), session=store_settings,
                                         rate_limits=list(rules)), clock=clock)
    return start, clock


async def test_a_user_over_a_rule_gets_429_with_when_to_come_back(limited):
    start, clock = limited
    client = await start(API)
    alice, admin = await api_login(client), await api_login(client, "Admin", "admin-pw")
    for _ in range(3):
        assert (await send(client, "GET", "/api/x", token=alice)).status == 200
    r = await send(client, "GET", "/api/y", token=alice)
    assert (r.status, r.json()["error"]) == (429, "RATE_LIMITED")
    window_left = 900 - clock() % 900
    assert abs(int(r.headers["Retry-After"]) - window_left) <= 1
    assert r.headers["RateLimit-Policy"] == '"api";q=3;w=900'
    assert r.headers["RateLimit"] == f'"api";r=0;t={r.headers["Retry-After"]}'
    page = await send(client, "GET", "/api/y", token=alice, accept="text/html")
    assert page.status == 429 and "Retry-After" in page.headers and "<html" in page.text
    assert (await send(client, "GET", "/api/x", token=admin)).status == 200     # her own count
    assert (await send(client, "POST", "/api/x", token=alice)).status == 200    # not a GET
    assert (await send(client, "GET", "/other", token=alice)).status == 200     # not the path
    clock.advance(window_left + 1)                                              # a new window
    assert (await send(client, "GET", "/api/x", token=alice)).status == 200


async def test_a_public_path_is_counted_per_address(limited):
    start, _ = limited
    client = await start({"name": "static", "path": "/static/", "limit": 2, "window": "1m"})
    statuses = [(await send(client, "GET", "/static/a.css")).status for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_a_rule_holds_across_workers_that_share_redis(upstream, make_config, gateway,
                                                             redis_server):
    """Two gateways on one Redis stand for two workers: each counts, each
    sync adds its counts to the total both then go by."""
    redis_server.flush()
    config = make_config(str(upstream.make_url("/")), rate_limits=[{**API, "limit": 4}],
                         session={"store": "redis", "redis": {"url": redis_server.url}})
    one, two = await gateway(config), await gateway(config)
    alice = await api_login(one)
    for client in (one, one, two, two):
        assert (await send(client, "GET", "/api/x", token=alice)).status == 200
    for client in (one, two):
        await client.app[GATEWAY].limiter.sync()
    for client in (one, two):
        await client.app[GATEWAY].limiter.sync()        # both have read the other's
        assert (await send(client, "GET", "/api/x", token=alice)).status == 429


async def test_rules_cost_nothing_when_there_are_none(limited):
    start, _ = limited
    client = await start()
    assert client.app[GATEWAY].rate_limits is None


async def test_a_session_is_refreshed_at_most_twenty_times_in_five_minutes(limited):
    start, clock = limited
    client = await start()
    alice = await api_login(client)
    path = "/_gateway/api/session/refresh"
    statuses = [(await send(client, "POST", path, token=alice)).status for _ in range(21)]
    assert statuses == [200] * 20 + [429]
    clock.advance(300)
    assert (await send(client, "POST", path, token=alice)).status == 200
