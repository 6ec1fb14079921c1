"""Redis goes away mid-flight and comes back: fail closed, then recover alone."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from authkit import COOKIE, api_login, csrf_of, send


@pytest.fixture
async def setup(redis_factory, upstream, make_config, gateway):
    redis = redis_factory()
    config = make_config(str(upstream.make_url("/")),
                         session={"store": "redis", "redis": {"url": redis.url, "timeout": "500ms"},
                                  "touch_interval": "100ms", "idle_timeout": "10s"})
    client = await gateway(config)
    return redis, client


async def eventually_status(client: Any, path: str, status: int, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await send(client, "GET", path)
        if r.status == status:
            return
        assert asyncio.get_running_loop().time() < deadline, r
        await asyncio.sleep(0.05)


async def wait_fail_closed(client: Any, token: str, within: float = 2.0,
                           then: int = 3) -> None:
    """Until the revocation feed notices the outage, sessions this worker has cached
    may still be served (the documented trade-off of the session cache). It must
    notice within FEED_SILENCE (0.75 s; the bound here leaves room for a loaded
    machine); from then on, 503 only."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        r = await send(client, "GET", "/private", token=token)
        if r.status == 503:
            break
        assert r.status == 200, r
        assert asyncio.get_running_loop().time() < deadline, "still passing through"
        await asyncio.sleep(0.02)
    for _ in range(then):
        assert (await send(client, "GET", "/private", token=token)).status == 503


async def test_redis_down_fails_closed_then_recovers(setup):
    redis, client = setup
    token = await api_login(client)
    assert (await send(client, "GET", "/private", token=token)).status == 200
    assert (await send(client, "GET", "/private", token=token)).status == 200   # now cached
    page = await (await client.get("/_gateway/login")).text()

    redis.stop()
    await wait_fail_closed(client, token)

    # Protected paths: 503, never passed through, whatever the caller looks like.
    for accept in ("application/json", "text/html"):
        for _ in range(3):
            r = await send(client, "GET", "/private", token=token, accept=accept)
            assert r.status == 503, r
            assert "headers" not in r.text            # not the upstream's echo
    r = await send(client, "POST", "/private/form", token=token, data=b"x=1")
    assert (r.status, r.json()["error"]) == (503, "STORE_UNAVAILABLE")
    r = await send(client, "GET", "/admin", token=token)
    assert r.status == 503
    # The cookie is not thrown away for an outage: the user is not signed out.
    assert COOKIE not in r.set_cookies()
    # Without any cookie there is nothing to look up: still never let through.
    assert (await send(client, "GET", "/private")).status in (401, 503)
    # Public paths still work.
    r = await send(client, "GET", "/static/app.css")
    assert r.status == 200 and r.json()["path"] == "/static/app.css"
    # Readiness says so; liveness does not.
    r = await send(client, "GET", "/_gateway/readyz")
    assert (r.status, r.json()["error"]) == (503, "STORE_UNAVAILABLE")
    assert (await send(client, "GET", "/_gateway/healthz")).status == 200
    # Sign-in is unavailable, and says so.
    r = await send(client, "POST", "/_gateway/api/login",
                   json={"username": "alice", "password": "alice-pw"})
    assert (r.status, r.json()["error"]) == (503, "STORE_UNAVAILABLE")
    assert COOKIE not in r.set_cookies()
    resp = await client.post("/_gateway/login", allow_redirects=False,
                             data={"username": "alice", "password": "alice-pw", "rd": "/",
                                   "csrf_token": csrf_of(page)})
    assert resp.status == 503
    assert COOKIE not in resp.cookies
    # Session API: unavailable, not "signed out".
    r = await send(client, "GET", "/_gateway/api/session", token=token)
    assert (r.status, r.json()["error"]) == (503, "STORE_UNAVAILABLE")

    redis.start()     # same port, empty (no persistence)

    # Recovers by itself: no restart of the gateway.
    await eventually_status(client, "/_gateway/readyz", 200)
    fresh = await api_login(client)
    r = await send(client, "GET", "/private", token=fresh)
    assert r.status == 200
    # The old session died with the old Redis: asked to sign in, not let through.
    r = await send(client, "GET", "/private", token=token)
    assert r.status == 401
    assert r.json()["error"] in ("SESSION_EXPIRED", "SESSION_NOT_FOUND")


async def test_first_requests_after_a_restart_succeed(setup):
    """Pooled connections to the dead Redis are replaced, not served as errors."""
    redis, client = setup
    tokens = [await api_login(client) for _ in range(3)]
    for token in tokens:
        assert (await send(client, "GET", "/private", token=token)).status == 200
    redis.stop()
    assert (await send(client, "GET", "/_gateway/readyz")).status == 503
    redis.start()
    # Every pooled connection is stale now; none of that may reach the user.
    results = await asyncio.gather(*[send(client, "GET", "/_gateway/readyz") for _ in range(5)])
    assert [r.status for r in results] == [200] * 5
    token = await api_login(client)
    assert (await send(client, "GET", "/private", token=token)).status == 200


async def test_logout_while_redis_is_down_is_503_not_a_fake_success(setup):
    redis, client = setup
    token = await api_login(client)
    redis.stop()
    r = await send(client, "POST", "/_gateway/logout", token=token, json={})
    assert r.status == 503
    redis.start()


async def test_revocation_during_outage_is_not_missed(setup, redis_factory):
    """A cached session must not outlive a revocation made while this worker was cut off."""
    redis, client = setup
    token = await api_login(client)
    for _ in range(2):
        assert (await send(client, "GET", "/private", token=token)).status == 200
    redis.stop()
    await wait_fail_closed(client, token)
    redis.start()   # empty: the session is gone, as if revoked while we were away
    await eventually_status(client, "/_gateway/readyz", 200)
    r = await send(client, "GET", "/private", token=token)
    assert r.status == 401


async def test_a_frozen_redis_is_noticed_too(setup):
    """No connection reset, just silence (a partition, a paused VM): still fails closed."""
    redis, client = setup
    token = await api_login(client)
    for _ in range(2):
        assert (await send(client, "GET", "/private", token=token)).status == 200
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        await wait_fail_closed(client, token, within=4.0, then=1)
        assert (await send(client, "GET", "/static/x")).status == 200
        assert (await send(client, "GET", "/_gateway/readyz")).status == 503
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    await eventually_status(client, "/_gateway/readyz", 200)
    assert (await send(client, "GET", "/private", token=token)).status == 200


async def test_a_cookie_known_to_be_dead_needs_no_store(setup):
    """Replaying a signed-out or expired session's cookie is a common attack; once
    a worker has seen the session is gone, it answers from memory (ids never come
    back), so the replay costs no Redis call: here, Redis is not even running."""
    redis, client = setup
    signed_out = await api_login(client)
    await send(client, "POST", "/_gateway/logout", token=signed_out,
                headers=[("Content-Type", "application/json")])
    live = await api_login(client)
    redis.stop()
    r = await send(client, "GET", "/private", token=signed_out)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")
    await wait_fail_closed(client, live)   # a live one still needs the store
