"""Analytics: the counters after a scripted sequence of sign-ins, through the real
gateway and store; what a sign-in costs Redis; the charts and their page. The
counters' store semantics are in the store suite (test_store.py)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Any

from authkit import api_login, send
from conftest import Clock
from gateway.audit import stats
from gateway.state import GATEWAY
from gateway.web import charts

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0"
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1")


async def sign_in(client: Any, user: str, password: str, agent: str) -> Any:
    return await send(client, "POST", "/_gateway/api/login", headers=[("User-Agent", agent)],
                      json={"username": user, "password": password})


async def test_the_counters_after_a_scripted_sequence_of_sign_ins(
        upstream, make_config, gateway, store_settings):
    clock = Clock()
    # The 10 minutes below stay in one UTC day: after 23:00, start at 23:00
    # (never later than now: a token issued in the future would not be valid).
    clock.now -= max(0.0, clock.now % 86400 - 82800)
    client = await gateway(make_config(str(upstream.make_url("/")), session=store_settings),
                           clock=clock)
    admin = await api_login(client, "Admin", "admin-pw")
    alice = await sign_in(client, "alice", "alice-pw", FIREFOX)
    await sign_in(client, "alice", "alice-pw", IPHONE)
    for name in ("alice", "nobody", "alice"):
        assert (await sign_in(client, name, "wrong", FIREFOX)).status == 401
    clock.advance(600)                                      # a 10-minute session, then
    token = alice.set_cookies()["gateway_session"].split(";", 1)[0].split("=", 1)[1]
    r = await send(client, "POST", "/_gateway/logout", token=token, json={},
                   headers=[("User-Agent", FIREFOX)])
    assert r.status in (200, 303)
    gw = client.app[GATEWAY]
    await gw.audit.flush()
    await stats.sample_active(gw.store, gw.config.session.idle_timeout, clock())

    r = await send(client, "GET", "/_gateway/api/admin/stats", token=admin)
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    got = r.json()
    assert got["active"]["now"] == 2                         # admin, alice's phone
    assert got["active"]["last_24h"][-1]["sessions"] == 2
    assert sum(h["success"] for h in got["logins"]) == 3
    assert sum(h["failure"] for h in got["logins"]) == 3
    assert got["unique_users"][-1]["users"] == 2            # admin, alice
    assert got["devices"]["type"]["mobile"] == 1
    assert got["devices"]["browser"]["Firefox"] == 1
    assert got["devices"]["os"]["iOS"] == 1
    assert {b["bucket"]: b["sessions"] for b in got["session_length"]}["5-30 min"] == 1
    assert got["top_failing_ips"] == [{"ip": "127.0.0.1", "failures": 3}]
    assert len(got["logins"]) == 7 * 24 and len(got["unique_users"]) == 7


async def test_a_sign_in_costs_redis_at_most_three_commands_for_audit_and_counters(
        upstream, make_config, gateway, redis_server):
    """Watched from Redis itself (MONITOR): the audit records (XADD) and the
    counter script that 20 sign-ins, then one, add."""
    import redis.asyncio as aioredis
    redis_server.flush()
    client = await gateway(make_config(str(upstream.make_url("/")), session={
        "store": "redis", "redis": {"url": redis_server.url}, "max_per_user": 0}))
    gw = client.app[GATEWAY]
    counter_script = gw.store._count.sha
    r = aioredis.from_url(redis_server.url)
    try:
        async with r.monitor() as monitor:
            for batch in (20, 1):
                await gw.audit.flush()
                await r.set("mark", "start")
                for _ in range(batch):
                    assert (await sign_in(client, "alice", "alice-pw", FIREFOX)).status == 200
                await gw.audit.flush()
                await r.set("mark", "end")
                seen: Counter[str] = Counter()
                while (got := await monitor.next_command())["command"] != "SET mark end":
                    if got.get("client_type") == "lua":            # inside a script
                        continue
                    name, *args = got["command"].split()
                    if name == "EVALSHA" and args[0] != counter_script:
                        continue                                   # the sign-in's own
                    seen[name] += 1
                assert seen["XADD"] == batch                       # every sign-in recorded
                assert 1 <= seen["EVALSHA"] <= batch               # counted, in batches
                # No counter written beside the script, one command each:
                assert not {"HINCRBY", "PFADD", "ZINCRBY", "HSETNX", "INCR"} & set(seen), seen
    finally:
        await r.aclose()


def test_session_lengths_fall_in_their_buckets():
    assert [stats.length_label(s) for s in (0, 299, 300, 7199, 86400, 10**9)] == [
        "under 5 min", "under 5 min", "5-30 min", "30 min-2 h", "1-7 days", "over 7 days"]


def test_charts_are_well_formed_svg_with_the_figures_as_titles():
    chart, top = charts.bars([("09:00", (3, 1)), ("10:00", (0, 0)), ("<b>", (7, 0))],
                             "Sign-ins", ("ok", "bad"))
    svg = ET.fromstring(str(chart))
    assert top == 10 and svg.get("aria-label") == "Sign-ins"
    titles = [t.text for t in svg.iter("title")]
    assert titles == ["09:00: 3 ok, 1 bad", "10:00: 0 ok, 0 bad", "<b>: 7 ok, 0 bad"]
    assert len([r for r in svg.iter("rect")]) == 3
    line, top = charts.line([(0, 1), (300, 4), (3000, 2)], 0, 3600, 300, "Active")
    svg = ET.fromstring(str(line))
    assert top == 5 and len(list(svg.iter("polyline"))) == 2    # the gap breaks the line
    assert charts.shares({"a": 6, "b": 3, "c": 1}, limit=1) == [
        {"name": "a", "n": 6, "percent": 60, "width": 100},
        {"name": "Other", "n": 4, "percent": 40, "width": 67}]


async def test_the_analytics_page_draws_its_charts_without_script(
        upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    admin = await api_login(client, "Admin", "admin-pw")
    alice = await api_login(client)
    for who, status in ((alice, 403), (admin, 200)):
        r = await send(client, "GET", "/_gateway/admin?view=stats", token=who,
                       accept="text/html")
        assert r.status == status
    assert "<script" not in r.text and r.text.count("<svg") == 3
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    r = await send(client, "GET", "/_gateway/admin?view=stats&range=7d", token=admin,
                   accept="text/html")
    assert r.status == 200 and "show 24 hours" in r.text


async def test_a_counter_redis_refuses_neither_repeats_nor_loses_the_audit_records(
        redis_server):
    """The counters ride in the audit batch's pipeline: when Redis refuses the
    script (here a counter key of the wrong type), the records stand, once."""
    import redis.asyncio as aioredis

    from gateway.audit.trail import AuditTrail
    from gateway.auth.events import SIGN_IN_FAILED, SessionEvent
    from gateway.config import RedisConfig, build_config
    from gateway.store.redis import RedisSessionStore
    from conftest import base_config
    redis_server.flush()
    store = RedisSessionStore(RedisConfig(url=redis_server.url))
    r = aioredis.from_url(redis_server.url)
    try:
        now = Clock()()
        await r.set(store.stats_key(stats.hour_key(now)), "not a hash")
        trail = AuditTrail(build_config(base_config(), env={}), store, to_stdout=False)
        trail.record(SessionEvent(SIGN_IN_FAILED, None, now, "system", user="alice",
                                  ip="192.0.2.1", reason="bad_password"))
        await trail.flush()
        assert [e["type"] for _, e in await store.audit_page(None, 10)] == ["login.failure"]
        assert trail.dropped == 0
    finally:
        await r.aclose()
        await store.close()


async def test_the_sampler_ends_when_cancelled_even_as_a_timeout(monkeypatch):
    """redis-py can turn a cancel that lands on a read into a timeout: the
    sampler would take it for an outage and sample on, holding up the
    worker's shutdown for good."""
    from gateway.store import StoreUnavailable
    asking = asyncio.Event()

    class Slow:
        async def active_count(self, since: float) -> int:
            asking.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise StoreUnavailable("TimeoutError") from None
            return 0
    monkeypatch.setattr(stats.random, "uniform", lambda a, b: 0.0)
    clock = Clock()
    clock.now = clock.now - clock.now % stats.SAMPLE_EVERY + stats.SAMPLE_EVERY - 0.001
    task = asyncio.ensure_future(stats.keep_sampling(Slow(), 1800, clock))  # type: ignore[arg-type]
    await asyncio.wait_for(asking.wait(), 5)         # the cancel lands on the store's read
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert done
