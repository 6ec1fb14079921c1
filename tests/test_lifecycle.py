"""The one session lifecycle, through the real gateway: how sessions start and end.

Every way a session ends goes through SessionService.end: it leaves an ended
record (status, reason, actor, details) and emits exactly one event, and
the ended cookie is refused with the right code and notice.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
import pytest

from authkit import api_login, send, session_status
from conftest import Clock
from gateway.auth.events import ENDED, STARTED, SessionEvent
from gateway.state import GATEWAY
from gateway.store import create_store


def sid_of(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["sid"]


async def started(make_config: Any, gateway: Any, upstream: Any, store_settings: Any,
                  clock: Any = None, throttle: bool = True,
                  **session: Any) -> tuple[Any, Any, list[SessionEvent]]:
    config = make_config(str(upstream.make_url("/")), session={**store_settings, **session},
                         throttle={"enabled": throttle})
    store = create_store(config.session, clock or __import__("time").time)
    client = await gateway(config, store=store, **({"clock": clock} if clock else {}))
    events: list[SessionEvent] = []
    client.server.app[GATEWAY].sessions.events.subscribe(events.append)
    return client, store, events


def ends(events: list[SessionEvent]) -> list[tuple[str, str, str]]:
    return [(e.status, e.reason, e.actor) for e in events if e.type == ENDED]


async def test_logout_ends_with_one_event_and_a_record(upstream, make_config, gateway,
                                                       store_settings):
    client, store, events = await started(make_config, gateway, upstream, store_settings)
    token = await api_login(client)
    assert [e.type for e in events] == [STARTED]
    r = await send(client, "POST", "/_gateway/logout", token=token, json={})
    assert r.status == 303
    assert ends(events) == [("LOGGED_OUT", "logout", "alice")]
    record = await store.ended("alice", sid_of(token))
    assert (record.status, record.reason, record.actor) == ("LOGGED_OUT", "logout", "alice")
    assert record.session.user_agent.startswith("Python")
    status, body = await session_status(client, token)
    assert (status, body["error"]) == (401, "SESSION_REVOKED")


async def test_signing_in_again_ends_the_previous_session_of_that_browser(
        upstream, make_config, gateway, store_settings):
    client, store, events = await started(make_config, gateway, upstream, store_settings)
    first = await api_login(client)
    r = await send(client, "POST", "/_gateway/api/login", token=first,
                   json={"username": "alice", "password": "alice-pw"})
    assert r.status == 200
    assert ends(events) == [("LOGGED_OUT", "logout", "alice")]
    assert (await store.ended("alice", sid_of(first))).reason == "logout"


async def test_the_cap_ends_the_oldest_with_its_own_reason(upstream, make_config, gateway,
                                                           store_settings):
    client, store, events = await started(make_config, gateway, upstream, store_settings,
                                          max_per_user=2)
    tokens = [await api_login(client) for _ in range(3)]
    assert ends(events) == [("REVOKED", "session_limit", "system")]
    assert events[-1].session.id == sid_of(tokens[0])
    r = await send(client, "GET", "/x", token=tokens[0], accept="text/html")
    assert r.status == 302
    assert r.set_cookies()["gateway_notice"].startswith("gateway_notice=session_limit;")
    for token in tokens[1:]:
        assert (await send(client, "GET", "/x", token=token)).status == 200


async def test_twenty_parallel_logins_of_one_user_keep_the_cap(upstream, make_config, gateway,
                                                               store_settings):
    # Throttling lets no more sign-ins of one account and address run at once
    # than failures are left before its block (test_throttle.py); off here.
    client, store, events = await started(make_config, gateway, upstream, store_settings,
                                          throttle=False, max_per_user=5)
    tokens = await asyncio.gather(*(api_login(client) for _ in range(20)))
    live = [s for s in await store.user_sessions("alice")]
    assert len(live) == 5
    assert len(ends(events)) == 15
    statuses = [(await send(client, "GET", "/x", token=t)).status for t in tokens]
    assert statuses.count(200) == 5


async def test_an_idle_expiry_is_recorded_when_observed(upstream, make_config, gateway,
                                                        store_settings):
    clock = Clock()
    client, store, events = await started(make_config, gateway, upstream, store_settings,
                                          clock=clock, idle_timeout="10m")
    token = await api_login(client)
    clock.advance(601)
    r = await send(client, "GET", "/x", token=token)
    assert (r.status, r.json()["error"]) == (401, "SESSION_EXPIRED")
    assert ends(events) == [("EXPIRED", "idle", "system")]
    record = await store.ended("alice", sid_of(token))
    assert (record.status, record.reason, record.ended_at) == ("EXPIRED", "idle", clock())
    # Seen once: the replayed cookie is refused without a second record or event.
    assert (await send(client, "GET", "/x", token=token)).status == 401
    assert len(ends(events)) == 1


async def test_an_absolute_expiry_is_recorded_as_such(upstream, make_config, gateway,
                                                      store_settings):
    clock = Clock()
    client, store, events = await started(make_config, gateway, upstream, store_settings,
                                          clock=clock, idle_timeout="10m",
                                          absolute_timeout="15m", touch_interval="1s")
    token = await api_login(client)
    for _ in range(3):
        clock.advance(290)
        assert (await send(client, "GET", "/x", token=token)).status == 200
    clock.advance(31)       # 901 s: past the absolute end, well within the idle one
    assert (await send(client, "GET", "/x", token=token)).status == 401
    assert ends(events) == [("EXPIRED", "absolute", "system")]


async def test_a_subscriber_that_fails_does_not_break_sign_in(upstream, make_config, gateway,
                                                              store_settings, caplog):
    client, store, events = await started(make_config, gateway, upstream, store_settings)

    def broken(event: SessionEvent) -> None:
        raise RuntimeError("subscriber bug")
    client.server.app[GATEWAY].sessions.events.subscribe(broken)
    token = await api_login(client)
    assert (await send(client, "GET", "/x", token=token)).status == 200
    assert "subscriber failed" in caplog.text


# -- what a session records about its device -------------------------------------------------

@pytest.mark.parametrize("trusted, expected_ip", [([], "127.0.0.1"),
                                                  (["127.0.0.1/32"], "203.0.113.7")])
async def test_a_session_records_the_client_ip_and_user_agent(upstream, make_config, gateway,
                                                              store_settings, trusted,
                                                              expected_ip):
    clock = Clock()
    config = make_config(str(upstream.make_url("/")), trusted_proxies=trusted,
                         session={**store_settings, "touch_interval": "1s"})
    store = create_store(config.session, clock)
    client = await gateway(config, store=store, clock=clock)
    r = await send(client, "POST", "/_gateway/api/login",
                   headers=[("X-Forwarded-For", "203.0.113.7"), ("User-Agent", "Laptop/1.0")],
                   json={"username": "alice", "password": "alice-pw"})
    token = r.set_cookies()["gateway_session"].split("=", 1)[1].split(";", 1)[0]
    session = await store.get("alice", sid_of(token))
    assert (session.login_ip, session.ip) == (expected_ip, expected_ip)
    assert (session.login_user_agent, session.user_agent) == ("Laptop/1.0", "Laptop/1.0")
    clock.advance(5)
    await send(client, "GET", "/x", token=token,
               headers=[("X-Forwarded-For", "198.51.100.9"), ("User-Agent", "Laptop/2.0")])
    session = await store.get("alice", sid_of(token))
    moved = "198.51.100.9" if trusted else "127.0.0.1"
    assert (session.login_ip, session.ip) == (expected_ip, moved)
    assert (session.login_user_agent, session.user_agent) == ("Laptop/1.0", "Laptop/2.0")


def test_session_ids_are_long_random_and_never_look_like_an_option():
    from gateway.auth.sessions import new_session_id
    ids = {new_session_id() for _ in range(3000)}
    assert len(ids) == 3000
    assert all(len(i) == 43 and not i.startswith("-") for i in ids)


async def test_replaying_an_ended_cookie_does_not_pile_up_memory(upstream, make_config,
                                                                 gateway):
    """Each refusal is a new exception: a remembered one would keep every
    replay's traceback (and the request behind it) alive."""
    import gc
    import tracemalloc
    client = await gateway(make_config(str(upstream.make_url("/"))))
    token = await api_login(client)
    await send(client, "POST", "/_gateway/logout", token=token, json={})
    padding = [("Cookie", "pad=" + "x" * 20_000)]
    for _ in range(20):                                       # warm up
        await send(client, "GET", "/x", token=token, headers=padding)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(300):
        r = await send(client, "GET", "/x", token=token, headers=padding)
        assert r.status == 401
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 1_000_000, grown


async def test_ending_all_records_the_expired_as_expired(upstream, make_config, gateway,
                                                         store_settings):
    clock = Clock()
    client, store, events = await started(make_config, gateway, upstream, store_settings,
                                          clock=clock, idle_timeout="10m")
    stale = await api_login(client)
    clock.advance(300)
    fresh = await api_login(client)
    clock.advance(301)                  # the first is past its idle end, within its grace
    service = client.server.app[GATEWAY].sessions
    from gateway.store import REVOKED_BY_ADMIN
    assert await service.end_all("alice", REVOKED_BY_ADMIN, "cli") == 1
    assert (await store.ended("alice", sid_of(stale))).reason == "idle"
    assert (await store.ended("alice", sid_of(fresh))).reason == "revoked_by_admin"


async def test_a_cookie_past_its_end_is_refused_even_with_the_store_down(
        upstream, make_config, gateway, redis_factory):
    server = redis_factory()
    clock = Clock()
    client = await gateway(make_config(str(upstream.make_url("/")), session={
        "store": "redis", "redis": {"url": server.url, "timeout": "200ms"},
        "idle_timeout": "1h", "absolute_timeout": "2h"}), clock=clock)
    token = await api_login(client)
    server.stop()
    clock.advance(2 * 3600 + 1)
    r = await send(client, "GET", "/x", token=token)
    assert (r.status, r.json()["error"]) == (401, "SESSION_EXPIRED")


# -- what counts as activity ------------------------------------------------------------

NAVIGATION = [("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Dest", "document")]
BACKGROUND = [("Sec-Fetch-Mode", "cors"), ("Sec-Fetch-Dest", "empty")]


@pytest.mark.parametrize("mode, headers, alive_after", [
    ("requests", BACKGROUND, True),          # today's behaviour: any request extends
    ("navigation", BACKGROUND, False),       # an app polling in the background does not
    ("navigation", [("Sec-Fetch-Mode", "websocket"), ("Sec-Fetch-Dest", "websocket")], False),
    ("navigation", [("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Dest", "iframe")], False),
    ("navigation", NAVIGATION, True),        # a page load by the person does
    ("navigation", [], True),                # no Sec-Fetch-*: cannot tell, so it counts
    ("interaction", BACKGROUND, False),
    ("interaction", NAVIGATION, True),
])
async def test_which_requests_keep_a_session_from_going_idle(
        upstream, make_config, gateway, store_settings, mode, headers, alive_after):
    clock = Clock()
    client = await gateway(make_config(str(upstream.make_url("/")), session={
        **store_settings, "activity": mode, "idle_timeout": "10m", "touch_interval": "1s"}),
        clock=clock)
    token = await api_login(client)
    clock.advance(9 * 60)
    assert (await send(client, "GET", "/x", token=token, headers=headers)).status == 200
    clock.advance(2 * 60)                   # 11 min after sign-in, 2 after that request
    r = await send(client, "GET", "/x", token=token, headers=NAVIGATION)
    assert (r.status == 200) is alive_after, r


async def test_stay_signed_in_extends_in_every_mode(upstream, make_config, gateway):
    clock = Clock()
    client = await gateway(make_config(str(upstream.make_url("/")), session={
        "activity": "navigation", "idle_timeout": "10m"}), clock=clock)
    token = await api_login(client)
    clock.advance(9 * 60)
    r = await send(client, "POST", "/_gateway/api/session/refresh", token=token,
                   headers=BACKGROUND)
    assert r.status == 200
    clock.advance(2 * 60)
    assert (await send(client, "GET", "/x", token=token, headers=BACKGROUND)).status == 200
