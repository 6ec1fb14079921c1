"""Login throttling through the real gateway and store: the pair block and its
end (injectable clock), the address limit across accounts, the account limit
with and without a device cookie, a block shared by two instances, reset on
success, no password hash computed while blocked, the audit events, and
``gateway throttle list|clear``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from authkit import send
from conftest import Clock
from gateway.state import GATEWAY

BEHIND_PROXY = {"trusted_proxies": ["127.0.0.1/32"]}


async def attempt(client: Any, user: str = "alice", password: str = "wrong", *,
                  ip: str = "203.0.113.5", device: str | None = None) -> Any:
    headers = [("X-Forwarded-For", ip)]
    if device:
        headers.append(("Cookie", f"gateway_device={device}"))
    return await send(client, "POST", "/_gateway/api/login", headers=headers,
                      json={"username": user, "password": password})


def device_of(reply: Any) -> str:
    return reply.set_cookies()["gateway_device"].split(";", 1)[0].split("=", 1)[1]


@pytest.fixture
async def throttled(upstream, make_config, gateway, store_settings):
    clock = Clock()

    async def start(**throttle: Any) -> Any:
        config = make_config(str(upstream.make_url("/")), session=store_settings,
                             throttle=throttle, **BEHIND_PROXY)
        return await gateway(config, clock=clock)
    return start, clock


async def test_five_failures_block_the_pair_for_thirty_minutes(throttled):
    start, clock = throttled
    client = await start()
    for _ in range(5):
        assert (await attempt(client)).status == 401
    r = await attempt(client, password="alice-pw")         # even the right password
    assert (r.status, r.json()["error"]) == (429, "RATE_LIMITED")
    assert 1790 <= int(r.headers["Retry-After"]) <= 1800
    assert (await attempt(client, password="alice-pw", ip="198.51.100.9")).status == 200
    clock.advance(1801)
    assert (await attempt(client, password="alice-pw")).status == 200


async def test_a_blocked_attempt_computes_no_password_hash(throttled):
    start, _ = throttled
    client = await start()
    users = client.app[GATEWAY].users
    for _ in range(5):
        await attempt(client)
    checked = []
    original = users._check
    users._check = lambda *a: checked.append(1) or original(*a)
    try:
        assert (await attempt(client)).status == 429
    finally:
        users._check = original
    assert checked == []


async def test_unknown_and_known_accounts_are_answered_alike(throttled):
    start, _ = throttled
    client = await start()
    for user in ("alice", "nobody"):
        for _ in range(5):
            await attempt(client, user)
    a, b = await attempt(client, "alice"), await attempt(client, "nobody")
    assert (a.status, a.json()) == (b.status, b.json()) == (429, a.json())
    assert a.headers["Retry-After"] == b.headers["Retry-After"]


async def test_one_address_spraying_many_accounts_is_blocked(throttled):
    start, _ = throttled
    client = await start(ip={"failures": 4})
    for user in ("u1", "u2", "u3", "u4"):
        assert (await attempt(client, user, ip="192.0.2.66")).status == 401
    assert (await attempt(client, "alice", "alice-pw", ip="192.0.2.66")).status == 429
    assert (await attempt(client, "alice", "alice-pw", ip="192.0.2.67")).status == 200


async def test_an_account_flooded_from_everywhere_still_opens_in_its_owner_s_browser(
        throttled):
    start, _ = throttled
    client = await start(account={"failures": 3})
    mine = device_of(await attempt(client, password="alice-pw", ip="198.51.100.1"))
    for n in range(3):                                     # three addresses, one failure each
        assert (await attempt(client, ip=f"203.0.113.{n + 10}")).status == 401
    r = await attempt(client, password="alice-pw", ip="203.0.113.99")
    assert r.status == 429                                 # a new browser: blocked
    r = await attempt(client, password="alice-pw", ip="203.0.113.99", device=mine)
    assert r.status == 200                                 # the owner's browser: exempt
    forged = mine[:-4] + ("AAAA" if not mine.endswith("AAAA") else "BBBB")
    assert (await attempt(client, password="alice-pw", ip="203.0.113.98",
                          device=forged)).status == 429


async def test_a_sign_in_that_works_resets_the_pair(throttled):
    start, _ = throttled
    client = await start()
    for _ in range(4):
        await attempt(client)
    assert (await attempt(client, password="alice-pw")).status == 200
    for _ in range(4):
        assert (await attempt(client)).status == 401
    assert (await attempt(client, password="alice-pw")).status == 200


async def test_a_block_holds_on_every_instance(upstream, make_config, gateway, redis_server):
    redis_server.flush()
    config = make_config(str(upstream.make_url("/")), **BEHIND_PROXY,
                         session={"store": "redis", "redis": {"url": redis_server.url}})
    one, two = await gateway(config), await gateway(config)
    for _ in range(5):
        await attempt(one)
    assert (await attempt(two, password="alice-pw")).status == 429


async def test_blocks_are_audited_once_and_lifted_from_the_command_line(
        upstream, make_config, gateway, redis_server, tmp_path, capsys):
    import yaml

    from gateway.cli import main
    redis_server.flush()
    settings = {"store": "redis", "redis": {"url": redis_server.url}}
    client = await gateway(make_config(str(upstream.make_url("/")), session=settings,
                                       **BEHIND_PROXY))
    for _ in range(6):
        await attempt(client)
    gw = client.app[GATEWAY]
    await gw.audit.flush()
    records = [r for _, r in await gw.store.audit_page(None, 100)]
    blocked = [r for r in records if r["type"] == "throttle.blocked"]
    assert [(r["user"], r["ip"], r["details"]["kind"]) for r in blocked] == [
        ("alice", "203.0.113.5", "pair")]
    reasons = [r["details"]["reason"] for r in records if r["type"] == "login.failure"]
    assert reasons.count("throttled") == 1 and reasons.count("bad_password") == 5
    config_file = tmp_path / "config.yaml"
    assert yaml.safe_load(config_file.read_text())["session"]["store"] == "redis"
    def cli(*args: str) -> int:
        return main(["throttle", *args, "--config", str(config_file)])
    assert await asyncio.to_thread(cli, "list") == 0
    (row,) = capsys.readouterr().out.splitlines()[1:]
    assert row.split()[:3] == ["pair", "alice", "203.0.113.5"]
    assert await asyncio.to_thread(cli, "clear", "--ip", "198.51.100.1") == 0
    assert (await attempt(client, password="alice-pw")).status == 429
    assert await asyncio.to_thread(cli, "clear", "--user", "ALICE") == 0
    assert (await attempt(client, password="alice-pw")).status == 200
    for _ in range(6):                                     # an IPv6 pair, cleared by
        await attempt(client, ip="2001:db8:5:6::1")       # another address of its /64
    assert (await attempt(client, password="alice-pw", ip="2001:db8:5:6::2")).status == 429
    assert await asyncio.to_thread(cli, "clear", "--ip", "2001:db8:5:6::99") == 0
    assert (await attempt(client, password="alice-pw", ip="2001:db8:5:6::2")).status == 200
    await gw.audit.flush()
    records = [r for _, r in await gw.store.audit_page(None, 100)]
    assert [r["actor"] for r in records if r["type"] == "throttle.cleared"] == ["cli", "cli"]


async def test_throttling_can_be_turned_off(throttled):
    start, _ = throttled
    client = await start(enabled=False)
    for _ in range(8):
        assert (await attempt(client)).status == 401


async def test_a_password_re_entered_on_the_sessions_page_is_throttled_too(throttled):
    from authkit import api_login
    start, clock = throttled
    client = await start()
    token = await api_login(client)
    await api_login(client)                                # another device to sign out
    clock.advance(660)                                     # past session.reauth_after
    path = "/_gateway/api/sessions/revoke-others"
    for _ in range(5):
        r = await send(client, "POST", path, token=token, json={"password": "wrong"})
        assert r.status == 401
    r = await send(client, "POST", path, token=token, json={"password": "alice-pw"})
    assert (r.status, r.json()["error"]) == (429, "RATE_LIMITED") and "Retry-After" in r.headers


def test_an_ipv6_address_counts_as_its_slash_64():
    from gateway.auth.throttle import address_key
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9") \
        == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("203.0.113.5") == address_key("::ffff:203.0.113.5") == "203.0.113.5"


async def test_a_burst_in_parallel_gets_no_more_guesses_than_one_at_a_time(throttled,
                                                                          store_settings):
    """Attempts are counted before the password is checked: 40 at once from
    one address reach the check 5 times, not 40."""
    start, _ = throttled
    client = await start()
    users = client.app[GATEWAY].users
    checked = []
    original = users._check
    users._check = lambda *a: checked.append(1) or original(*a)
    replies = await asyncio.gather(*(attempt(client) for _ in range(40)))
    statuses = sorted(r.status for r in replies)
    if "cluster" in store_settings.get("redis", {}):
        # An attempt's keys live on different nodes and are asked at once, so
        # two attempts can each hold one key the other needs: both wait a
        # moment (BUSY_WAIT). Fewer guesses, never more.
        assert 1 <= len(checked) <= 5
    else:
        assert len(checked) == 5
    assert statuses == [401] * len(checked) + [429] * (40 - len(checked))


async def test_someone_on_the_owner_s_address_cannot_lock_the_owner_out(throttled):
    """A NAT shared with an attacker: the address is blocked for browsers
    that never signed in here, not for the owner's."""
    start, _ = throttled
    client = await start(ip={"failures": 10})
    mine = device_of(await attempt(client, password="alice-pw", ip="192.0.2.1"))
    for n in range(12):
        await attempt(client, f"guess{n}", ip="192.0.2.1")
    assert (await attempt(client, "Admin", "admin-pw", ip="192.0.2.1")).status == 429
    assert (await attempt(client, password="alice-pw", ip="192.0.2.1",
                          device=mine)).status == 200


async def test_a_device_cookie_buys_no_more_guesses_than_a_pair(throttled):
    start, _ = throttled
    client = await start()
    mine = device_of(await attempt(client, password="alice-pw"))
    statuses = [(await attempt(client, ip=f"198.51.100.{n}", device=mine)).status
                for n in range(7)]
    assert statuses == [401] * 5 + [429] * 2


async def test_re_entered_passwords_are_counted_per_session_wherever_they_come_from(
        throttled):
    from authkit import api_login
    start, clock = throttled
    client = await start()
    token = await api_login(client)
    await api_login(client)
    clock.advance(660)
    path = "/_gateway/api/sessions/revoke-others"
    statuses = [(await send(client, "POST", path, token=token, json={"password": "wrong"},
                            headers=[("X-Forwarded-For", f"203.0.113.{n}")])).status
                for n in range(7)]
    assert statuses == [401] * 5 + [429] * 2


async def test_a_flood_of_throttled_attempts_is_audited_once(throttled):
    start, _ = throttled
    client = await start()
    for _ in range(30):
        await attempt(client)
    gw = client.app[GATEWAY]
    await gw.audit.flush()
    records = [r for _, r in await gw.store.audit_page(None, 100)]
    reasons = [r["details"]["reason"] for r in records if r["type"] == "login.failure"]
    assert reasons.count("throttled") == 1 and reasons.count("bad_password") == 5


async def test_right_passwords_at_once_wait_a_moment_not_a_block(throttled):
    start, _ = throttled
    client = await start()
    replies = await asyncio.gather(*(attempt(client, password="alice-pw") for _ in range(12)))
    statuses = sorted(r.status for r in replies)
    assert statuses.count(200) >= 5 and set(statuses) <= {200, 429}
    assert all(r.headers["Retry-After"] == "1" for r in replies if r.status == 429)
    assert (await attempt(client, password="alice-pw")).status == 200


async def test_the_sign_in_page_says_how_long_to_wait(throttled):
    from authkit import csrf_of
    start, _ = throttled
    client = await start()
    page = await send(client, "GET", "/_gateway/login", accept="text/html")
    form_cookie = page.set_cookies()["gateway_form"].split(";", 1)[0]
    for _ in range(6):
        r = await send(client, "POST", "/_gateway/login", accept="text/html",
                       headers=[("Cookie", form_cookie), ("X-Forwarded-For", "203.0.113.5")],
                       data={"csrf_token": csrf_of(page.text), "username": "alice",
                             "password": "wrong"})
        page = r
    assert r.status == 429 and r.headers["Retry-After"] == "1800"
    assert "Too many sign-in attempts. Try again in 30 minutes." in r.text
