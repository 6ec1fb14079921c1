"""Prometheus metrics: what a scrape shows after real traffic, only to the
allowed networks, and added up right across the workers of `gateway run`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from authkit import api_login, send
from gateway.metrics import FLUSH_EVERY
from test_cli import client_session, start_gateway  # noqa: F401  (a fixture)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(client: Any) -> dict:
    r = await send(client, "GET", "/_gateway/metrics", accept="text/plain")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    return samples(r.text)


async def test_a_scrape_counts_what_happened(upstream, make_config, answering):
    client = await answering(make_config(str(upstream.make_url("/"))))
    before = await scrape(client)
    token = await api_login(client)
    await send(client, "POST", "/_gateway/api/login",
               json={"username": "alice", "password": "wrong"})
    for _ in range(3):
        assert (await send(client, "GET", "/x", token=token)).status == 200
    assert (await send(client, "GET", "/x")).status == 401
    assert (await send(client, "GET", "/admin", token=token)).status == 403
    await send(client, "POST", "/_gateway/logout", token=token, json={})
    after = await scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)
    assert grew("gateway_requests_total", outcome="proxied", upstream="app", status="200") == 3
    # The wrong password and the request without a session.
    assert grew("gateway_requests_total", outcome="denied", upstream="-", status="401") == 2
    assert grew("gateway_requests_total", outcome="denied", upstream="-", status="403") == 1
    assert grew("gateway_request_duration_seconds_count", upstream="app") == 3
    assert grew("gateway_logins_total", result="success") == 1
    assert grew("gateway_logins_total", result="bad_password") == 1
    assert grew("gateway_session_ends_total", reason="logout") == 1
    # The memory store has no feed, so no cache: every lookup is a miss.
    assert grew("gateway_session_cache_total", result="miss") >= 3
    assert value(after, "gateway_active_sessions") == 0          # signed out again
    # Nothing of a user or a path is ever a label.
    labels = {v for (_, pairs) in after for _, v in pairs}
    assert not labels & {"alice", "/x", "/admin", token}


async def test_only_the_allowed_networks_may_scrape(upstream, make_config, answering):
    client = await answering(make_config(str(upstream.make_url("/")),
                                      metrics={"allow": ["10.0.0.0/8"]}))
    r = await send(client, "GET", "/_gateway/metrics", headers=[
        ("X-Forwarded-For", "10.1.2.3")])              # not believed from anyone here
    assert (r.status, r.json()["error"]) == (403, "FORBIDDEN")
    # Behind a trusted proxy on the same host, a client outside is still outside.
    client = await answering(make_config(str(upstream.make_url("/")),
                                      trusted_proxies=["127.0.0.1/32"]))
    r = await send(client, "GET", "/_gateway/metrics", headers=[
        ("X-Forwarded-For", "203.0.113.7")])
    assert (r.status, r.json()["error"]) == (403, "FORBIDDEN")
    assert (await send(client, "GET", "/_gateway/metrics")).status == 200
    client = await answering(make_config(str(upstream.make_url("/")),
                                      metrics={"enabled": False}))
    assert (await send(client, "GET", "/_gateway/metrics")).status == 404


async def test_every_worker_s_requests_are_counted(redis_server, upstream, start_gateway):
    """Two workers, a fresh connection per request (the kernel spreads them),
    and scrapes answered by either worker all say the same total."""
    gw = await start_gateway(str(upstream.make_url("/")), workers=2, metrics={},
                             session={"store": "redis", "redis": {"url": redis_server.url}})
    async with client_session() as session:
        await gw.wait_healthy(session)
        for _ in range(40):
            async with session.get(gw.base + "/static/x.css",
                                   headers={"Connection": "close"}) as r:
                assert r.status == 200
        # Each worker hands its counts over once a second (metrics.FLUSH_EVERY).
        await asyncio.sleep(FLUSH_EVERY + 0.5)
        totals = set()
        for _ in range(6):
            async with session.get(gw.base + "/_gateway/metrics",
                                   headers={"Connection": "close"}) as r:
                found = samples(await r.text())
            totals.add(value(found, "gateway_requests_total", outcome="proxied",
                             upstream="app", status="200"))
        assert totals == {40.0}
    assert await gw.stop() == 0


def test_the_dashboard_asks_only_for_metrics_that_exist() -> None:
    import json
    import re
    from pathlib import Path

    from gateway import metrics
    dashboard = json.loads((Path(__file__).resolve().parent.parent / "docs" /
                            "grafana-dashboard.json").read_text())
    asked = {re.sub(r"_(bucket|count|sum)$", "", name)
             for panel in dashboard["panels"] for target in panel["targets"]
             for name in re.findall(r"gateway_[a-z_]+", target["expr"])}
    # Counters are exposed with "_total" (their _name lacks it).
    exist = {f"{m._name}_total" if m._type == "counter" else m._name
             for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")}
    assert asked - exist - {"gateway_active_sessions"} == set()
    assert len(asked) >= 10


async def test_a_forwarded_address_nobody_can_read_is_not_local(upstream, make_config,
                                                                answering):
    client = await answering(make_config(str(upstream.make_url("/")),
                                         trusted_proxies=["127.0.0.1/32"]))
    for garbage in ("203.0.113.7:5555", "[2001:db8::1]", "unknown"):
        r = await send(client, "GET", "/_gateway/metrics",
                       headers=[("X-Forwarded-For", garbage)])
        assert r.status == 403, garbage
