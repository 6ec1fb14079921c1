"""Rate limits through the real gateway and store: a rule per user on a path
prefix and methods, the 429 with Retry-After and the RateLimit fields (JSON
and a page), the window ending (injectable clock), a rule shared by two
workers through Redis, public paths counted per address, and the session
refresh's own limit."""

from __future__ import annotations

import asyncio
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
    clock = Clock()                     # one window throughout, whatever the time
    one, two = await gateway(config, clock=clock), await gateway(config, clock=clock)
    alice = await api_login(one)
    for client in (one, one, two, two):
        assert (await send(client, "GET", "/api/x", token=alice)).status == 200
    for client in (one, two):
        await client.app[GATEWAY].limiter.sync()
    for client in (one, two):
        await client.app[GATEWAY].limiter.sync()        # both have read the other's
        assert (await send(client, "GET", "/api/x", token=alice)).status == 429


async def test_a_rule_can_name_an_upstream_a_session_and_a_servlet_s_reading(
        upstream, make_config, gateway):
    """Matched like role rules: the decoded path and, where path parameters
    are let through, the path a servlet reads."""
    config = make_config(str(upstream.make_url("/")), rate_limits=[
        {"name": "mine", "path": "/api/", "per": "session", "limit": 1, "window": "1m",
         "upstream": "app"}],
        upstreams=[{"name": "app", "url": str(upstream.make_url("/")),
                    "allow_path_parameters": True}])
    client = await gateway(config)
    one, two = await api_login(client), await api_login(client)
    assert (await send(client, "GET", "/api/x", token=one)).status == 200
    assert (await send(client, "GET", "/;x/api/x", token=one)).status == 429
    assert (await send(client, "GET", "/%61pi/x", token=one)).status == 429
    assert (await send(client, "GET", "/api/x", token=two)).status == 200      # per session


async def test_a_session_is_refreshed_at_most_twenty_times_in_five_minutes(limited):
    start, clock = limited
    client = await start()
    alice = await api_login(client)
    path = "/_gateway/api/session/refresh"
    statuses = [(await send(client, "POST", path, token=alice)).status for _ in range(21)]
    assert statuses == [200] * 20 + [429]
    assert (await send(client, "POST", path, token=alice + "=")).status == 429  # same session
    for garbage in ("x", "a.b.c"):           # not ours: refused, and counted nowhere
        assert (await send(client, "POST", path, token=garbage)).status == 401
    clock.advance(300)
    assert (await send(client, "POST", path, token=alice)).status == 200


# -- the limiter alone --------------------------------------------------------------------

class SlowStore:
    """A store whose sync waits until told, or fails first: before it writes,
    or after (the reply lost, as in a timeout)."""

    def __init__(self, fail: int = 0, lose: int = 0) -> None:
        from gateway.store.memory import MemorySessionStore
        self.inner, self.fail, self.lose = MemorySessionStore(), fail, lose
        self.release = asyncio.Event()
        self.release.set()

    async def rate_sync(self, worker: str, counts: dict[str, Any]) -> dict[str, int]:
        from gateway.store import StoreUnavailable
        await self.release.wait()
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("down")
        sums = await self.inner.rate_sync(worker, counts)
        if self.lose:
            self.lose -= 1
            raise StoreUnavailable("timeout")
        return sums


def ten_per_minute(limiter: Any) -> Any:
    return limiter.hit([("r", "u:alice", 10, 60.0)])


async def test_counts_being_sent_still_count():
    from gateway.proxy.ratelimit import Limiter
    store = SlowStore()
    limiter = Limiter(store)                                    # type: ignore[arg-type]
    assert [ten_per_minute(limiter) for _ in range(6)] == [None] * 6
    store.release.clear()
    syncing = asyncio.ensure_future(limiter.sync())
    await asyncio.sleep(0)                                      # the sync waits on the store
    results = [ten_per_minute(limiter) for _ in range(6)]
    assert results[:4] == [None] * 4 and all(r is not None for r in results[4:])
    store.release.set()
    await syncing


async def test_a_failing_store_neither_loses_nor_doubles_counts():
    from gateway.proxy.ratelimit import Limiter
    from gateway.store import StoreUnavailable
    store, clock = SlowStore(fail=1, lose=2), Clock()
    one, two = Limiter(store, clock), Limiter(store, clock)      # type: ignore[arg-type]
    for _ in range(4):
        ten_per_minute(one)
    for _ in range(3):                  # not written, then written twice with no reply
        with pytest.raises(StoreUnavailable):
            await one.sync()
    await one.sync()
    await one.sync()
    await two.sync()
    ten_per_minute(two)
    await two.sync()
    assert two._others["r:u:alice:" + str(int(clock() // 60))] == 4


async def test_windows_that_are_over_are_forgotten_and_new_keys_are_capped(monkeypatch):
    import gateway.proxy.ratelimit as rl
    monkeypatch.setattr(rl, "MAX_KEYS", 3)
    clock = Clock()
    limiter = rl.Limiter(SlowStore(), clock)                    # type: ignore[arg-type]
    for n in range(5):
        assert limiter.hit([("r", f"ip:{n}", 1, 60.0)]) is None
    assert len(limiter._mine) == 3                              # two went uncounted
    clock.advance(61)
    await limiter.sync()
    assert not (limiter._mine or limiter._others or limiter._ends or limiter._dirty)


def test_the_refresh_limit_s_name_is_the_gateway_s(make_config):
    from gateway.config import ConfigError
    with pytest.raises(ConfigError) as exc:
        make_config(rate_limits=[{"name": "session-refresh", "limit": 1, "window": "1m"}])
    assert exc.value.problems == [
        "rate_limits[0].name: 'session-refresh' is the gateway's own (the session refresh's "
        "limit); choose another"]
