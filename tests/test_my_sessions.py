""""Your sessions" through the real gateway: the JSON API, the page, re-entry of
the password, the history of ended sessions, and the cap's two policies."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.http import SERVER_SOFTWARE

from authkit import COOKIE, api_login, csrf_of
from authkit import send as send_raw
from conftest import Clock

IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1")
LAPTOP = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/156.0.0.0 Safari/537.36")
SAME_SITE = [("Origin", "http://127.0.0.1:8080")]


def sid_of(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["sid"]


# The browser each token signed in from: a device keeps its User-Agent, and
# a session used from another browser is ended (security_events.ua_changed).
_AGENT_OF: dict[str, str] = {}


async def send(client: Any, method: str, target: str, *, token: str | None = None,
               headers: list[tuple[str, str]] | None = None, **kwargs: Any) -> Any:
    """authkit's send, from the browser that ``token`` signed in on."""
    headers = list(headers or [])
    if token in _AGENT_OF and not any(k.lower() == "user-agent" for k, _ in headers):
        headers.append(("User-Agent", _AGENT_OF[token]))
    return await send_raw(client, method, target, token=token, headers=headers, **kwargs)


async def login_from(client: Any, user_agent: str, ip: str, username: str = "alice",
                     password: str = "alice-pw", **extra: Any) -> Any:
    r = await send(client, "POST", "/_gateway/api/login",
                   headers=[("User-Agent", user_agent), ("X-Forwarded-For", ip)],
                   json={"username": username, "password": password, **extra})
    if r.status == 200:
        _AGENT_OF[token_of(r)] = user_agent
    return r


async def use(client: Any, token: str, ip: str = "198.51.100.7") -> int:
    """A proxied request from a device (its own browser, from ``ip``)."""
    r = await send(client, "GET", "/x", token=token, headers=[("X-Forwarded-For", ip)])
    return r.status


def token_of(reply: Any) -> str:
    assert reply.status == 200, reply
    return reply.set_cookies()[COOKIE].split("=", 1)[1].split(";", 1)[0]


@pytest.fixture
async def two_devices(upstream: Any, make_config: Any, gateway: Any,
                      store_settings: Any) -> Any:
    """alice on a laptop and a phone; the gateway's clock is the test's."""
    clock = Clock()
    config = make_config(str(upstream.make_url("/")), trusted_proxies=["127.0.0.1/32"],
                         session={**store_settings, "reauth_after": "10m",
                                  "idle_timeout": "10m"})
    client = await gateway(config, clock=clock)
    laptop = token_of(await login_from(client, LAPTOP, "198.51.100.7"))
    phone = token_of(await login_from(client, IPHONE, "203.0.113.9"))
    return client, clock, laptop, phone


# -- the JSON API ------------------------------------------------------------------------

async def test_list_shows_this_device_first_with_its_details(two_devices):
    client, clock, laptop, phone = two_devices
    clock.advance(30)
    await use(client, laptop)                                  # the laptop is more recent now
    r = await send(client, "GET", "/_gateway/api/sessions", token=phone)
    assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
    body = r.json()
    assert [s["id"] for s in body["sessions"]] == [sid_of(phone), sid_of(laptop)]
    me, other = body["sessions"]
    assert me["current"] is True and other["current"] is False
    assert me["device"] == {"type": "mobile", "os": "iOS 17", "browser": "Mobile Safari 17"}
    assert other["device"] == {"type": "desktop", "os": "Linux", "browser": "Chrome 156"}
    assert (me["ip"], other["ip"]) == ("203.0.113.9", "198.51.100.7")
    assert me["location"] is None                              # no geoip database configured
    assert {"created_at", "last_seen_at", "expires_at", "user_agent", "remember", "mfa",
            "status"} <= set(me)
    assert me["status"] == "ACTIVE" and me["user_agent"] == IPHONE
    assert body["ended"] == []


async def test_revoke_one_other_device(two_devices):
    client, clock, laptop, phone = two_devices
    r = await send(client, "DELETE", f"/_gateway/api/sessions/{sid_of(laptop)}", token=phone,
                   headers=SAME_SITE)
    assert (r.status, r.json()) == (200, {"revoked": 1})
    r = await send(client, "GET", "/x", token=laptop)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")
    ended = (await send(client, "GET", "/_gateway/api/sessions", token=phone)).json()["ended"]
    assert [(e["id"], e["status"], e["reason"]) for e in ended] == [
        (sid_of(laptop), "REVOKED", "revoked_by_user")]
    assert ended[0]["reason_text"] == "Signed out from another device."
    assert ended[0]["device"]["browser"] == "Chrome 156"


async def test_another_users_or_an_unknown_id_is_not_found(two_devices):
    client, clock, laptop, phone = two_devices
    admin = await api_login(client, "Admin", "admin-pw")
    for sid in (sid_of(admin), "no-such-session", sid_of(laptop) + "x"):
        r = await send(client, "DELETE", f"/_gateway/api/sessions/{sid}", token=phone,
                       headers=SAME_SITE)
        assert (r.status, r.json()["error"]) == (404, "SESSION_NOT_FOUND"), sid
    assert (await send(client, "GET", "/x", token=admin)).status == 200


async def test_revoking_this_device_signs_it_out(two_devices):
    client, clock, laptop, phone = two_devices
    r = await send(client, "DELETE", f"/_gateway/api/sessions/{sid_of(phone)}", token=phone,
                   headers=SAME_SITE)
    assert r.status == 200
    assert "max-age=0" in r.set_cookies()[COOKIE].lower()
    assert (await send(client, "GET", "/x", token=phone)).status == 401
    assert (await send(client, "GET", "/x", token=laptop)).status == 200


async def test_revoke_others_asks_for_the_password_once_the_login_is_old(two_devices):
    client, clock, laptop, phone = two_devices
    third = token_of(await login_from(client, LAPTOP, "192.0.2.1"))
    for _ in range(2):                  # 11 minutes on, all three kept alive by use
        clock.advance(5.5 * 60)
        for token in (laptop, third):
            await use(client, token)
        await use(client, phone)
    path = "/_gateway/api/sessions/revoke-others"
    r = await send(client, "POST", path, token=phone, headers=SAME_SITE)
    assert (r.status, r.json()["error"]) == (401, "REAUTH_REQUIRED")
    r = await send(client, "POST", path, token=phone, headers=SAME_SITE,
                   json={"password": "wrong"})
    assert (r.status, r.json()["error"]) == (401, "INVALID_CREDENTIALS")
    assert (await send(client, "GET", "/x", token=laptop)).status == 200
    r = await send(client, "POST", path, token=phone, headers=SAME_SITE,
                   json={"password": "alice-pw"})
    assert (r.status, r.json()) == (200, {"revoked": 2})
    for token in (laptop, third):
        assert (await send(client, "GET", "/x", token=token)).status == 401
    # Confirmed just now: the next sensitive action within reauth_after needs nothing.
    again = token_of(await login_from(client, LAPTOP, "192.0.2.2"))
    r = await send(client, "POST", path, token=phone, headers=SAME_SITE)
    assert (r.status, r.json()) == (200, {"revoked": 1})
    assert (await send(client, "GET", "/x", token=again)).status == 401


async def test_sign_out_everywhere(two_devices):
    client, clock, laptop, phone = two_devices
    r = await send(client, "POST", "/_gateway/api/sessions/revoke-all", token=phone,
                   headers=SAME_SITE)
    assert (r.status, r.json()) == (200, {"revoked": 2})
    assert "max-age=0" in r.set_cookies()[COOKIE].lower()
    for token in (laptop, phone):
        assert (await send(client, "GET", "/x", token=token)).status == 401


async def test_signing_out_only_this_device_needs_no_password(two_devices):
    """As on the page: the password is asked when another device would go."""
    client, clock, laptop, phone = two_devices
    clock.advance(9 * 60)
    await use(client, phone)
    clock.advance(2 * 60)                     # the laptop idled out; the sign-in is 11 min old
    r = await send(client, "POST", "/_gateway/api/sessions/revoke-others", token=phone,
                   headers=SAME_SITE)
    assert (r.status, r.json()) == (200, {"revoked": 0})
    r = await send(client, "POST", "/_gateway/api/sessions/revoke-all", token=phone,
                   headers=SAME_SITE)
    assert (r.status, r.json()) == (200, {"revoked": 1})


@pytest.mark.parametrize("method, path", [
    ("DELETE", "/_gateway/api/sessions/{sid}"),
    ("POST", "/_gateway/api/sessions/revoke-others"),
    ("POST", "/_gateway/api/sessions/revoke-all"),
])
async def test_changes_refuse_cross_site_requests_and_forms(two_devices, method, path):
    client, clock, laptop, phone = two_devices
    target = path.format(sid=sid_of(laptop))
    r = await send(client, method, target, token=phone,
                   headers=[("Origin", "https://evil.example")])
    assert (r.status, r.json()["error"]) == (403, "FORBIDDEN")
    r = await send(client, method, target, token=phone, headers=SAME_SITE,
                   data=b"password=x", )
    assert r.status == 415
    assert (await send(client, "GET", "/x", token=laptop)).status == 200


async def test_the_api_needs_a_session(two_devices):
    client, *_ = two_devices
    r = await send(client, "GET", "/_gateway/api/sessions")
    assert (r.status, r.json()["error"]) == (401, "SESSION_NOT_FOUND")
    r = await send(client, "POST", "/_gateway/api/sessions/revoke-others", headers=SAME_SITE)
    assert (r.status, r.json()["error"]) == (401, "SESSION_NOT_FOUND")


async def test_history_shows_each_status_and_why(two_devices):
    client, clock, laptop, phone = two_devices
    third = token_of(await login_from(client, LAPTOP, "192.0.2.1"))
    await send(client, "POST", "/_gateway/logout", token=third, json={})
    clock.advance(9 * 60)
    await use(client, phone)
    clock.advance(2 * 60)                                   # the laptop idled out
    assert (await send(client, "GET", "/x", token=laptop)).status == 401
    ended = (await send(client, "GET", "/_gateway/api/sessions", token=phone)).json()["ended"]
    assert [(e["status"], e["reason_text"]) for e in ended] == [
        ("EXPIRED", "Expired after 10 minutes of inactivity."),
        ("LOGGED_OUT", "Signed out.")]
    assert all(e["ended_at"] and e["device"]["type"] == "desktop" for e in ended)


async def test_history_is_kept_for_the_history_window(upstream, make_config, gateway):
    clock = Clock()
    client = await gateway(make_config(str(upstream.make_url("/")),
                                       session={"history": "1h", "idle_timeout": "2h",
                                                "absolute_timeout": "12h"}), clock=clock)
    old, current = await api_login(client), await api_login(client)
    await send(client, "POST", "/_gateway/logout", token=old, json={})
    clock.advance(3599)
    assert len((await send(client, "GET", "/_gateway/api/sessions",
                           token=current)).json()["ended"]) == 1
    clock.advance(2)
    assert (await send(client, "GET", "/_gateway/api/sessions",
                       token=current)).json()["ended"] == []


async def test_locations_come_from_the_configured_database(upstream, make_config, gateway,
                                                          tmp_path: Path):
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet
    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", ipv4_compatible=True)
    writer.insert_network(IPSet(["203.0.113.0/24"]), {
        "country": {"iso_code": "NL", "names": {"en": "Netherlands"}},
        "subdivisions": [{"iso_code": "NH", "names": {"en": "North Holland"}}],
        "city": {"names": {"en": "Amsterdam"}}})
    writer.to_db_file(str(tmp_path / "geo.mmdb"))
    client = await gateway(make_config(str(upstream.make_url("/")),
                                       trusted_proxies=["127.0.0.1/32"],
                                       geoip={"database": "geo.mmdb"}))
    phone = token_of(await login_from(client, IPHONE, "203.0.113.9"))
    laptop = token_of(await login_from(client, LAPTOP, "198.51.100.7"))
    sessions = (await send(client, "GET", "/_gateway/api/sessions", token=phone)).json()
    assert [s["location"] for s in sessions["sessions"]] == [
        {"country": "Netherlands", "region": "North Holland", "city": "Amsterdam"}, None]
    page = await send(client, "GET", "/_gateway/sessions", token=laptop, accept="text/html")
    assert "Amsterdam, North Holland, Netherlands · 203.0.113.9" in page.text


def test_a_missing_geoip_database_is_a_config_error(tmp_path: Path):
    from gateway.auth.geo import Locator
    from gateway.config import ConfigError
    with pytest.raises(ConfigError) as err:
        Locator(tmp_path / "nope.mmdb")
    assert err.value.problems[0].startswith("geoip.database: cannot read ")


# -- the page ------------------------------------------------------------------------------

async def page(client: Any, token: str) -> tuple[Any, str]:
    r = await send(client, "GET", "/_gateway/sessions", token=token, accept="text/html")
    form_cookie = r.set_cookies().get("gateway_form", "").split(";", 1)[0]
    return r, form_cookie


async def submit(client: Any, token: str, form_cookie: str, csrf: str,
                 **fields: str) -> Any:
    cookie = f"{COOKIE}={token}; {form_cookie}"
    return await send(client, "POST", "/_gateway/sessions", accept="text/html",
                      headers=[("Cookie", cookie), ("User-Agent", _AGENT_OF.get(token, SERVER_SOFTWARE)),
                               *SAME_SITE],
                      data={"csrf_token": csrf, **fields})


async def test_the_page_lists_devices_and_signs_one_out_without_javascript(two_devices):
    client, clock, laptop, phone = two_devices
    r, form_cookie = await page(client, phone)
    assert r.status == 200
    assert "This device" in r.text and "Mobile Safari 17 on iOS 17" in r.text
    assert "Chrome 156 on Linux" in r.text and "<script" not in r.text
    r = await submit(client, phone, form_cookie, csrf_of(r.text), action="revoke",
                     sid=sid_of(laptop))
    assert r.status == 200 and "Signed out that session." in r.text
    assert "Recently ended" in r.text and "Signed out from another device." in r.text
    assert (await send(client, "GET", "/x", token=laptop)).status == 401


async def test_the_page_asks_for_the_password_before_ending_others(two_devices):
    client, clock, laptop, phone = two_devices
    for _ in range(2):                  # 11 minutes on, both kept alive by use
        clock.advance(5.5 * 60)
        await use(client, laptop)
        await use(client, phone)
    r, form_cookie = await page(client, phone)
    assert "confirm your password" in r.text
    assert re.search(r'value="others">\s*<button[^>]*disabled', r.text)
    csrf = csrf_of(r.text)
    r = await submit(client, phone, form_cookie, csrf, action="others")
    assert r.status == 401 and "Confirm your password first" in r.text
    r = await submit(client, phone, form_cookie, csrf, action="confirm", password="nope")
    assert r.status == 401 and "That password is not right." in r.text
    r = await submit(client, phone, form_cookie, csrf, action="confirm", password="alice-pw")
    assert r.status == 303
    r = await submit(client, phone, form_cookie, csrf, action="others")
    assert r.status == 200 and "Signed out 1 other session." in r.text
    assert (await send(client, "GET", "/x", token=laptop)).status == 401


async def test_the_page_refuses_a_form_without_its_token(two_devices):
    client, clock, laptop, phone = two_devices
    r, form_cookie = await page(client, phone)
    r = await submit(client, phone, form_cookie, "forged", action="revoke", sid=sid_of(laptop))
    assert r.status == 403
    assert (await send(client, "GET", "/x", token=laptop)).status == 200


async def test_the_page_signs_out_everywhere(two_devices):
    client, clock, laptop, phone = two_devices
    r, form_cookie = await page(client, phone)
    r = await submit(client, phone, form_cookie, csrf_of(r.text), action="everywhere")
    assert r.status == 303 and r.headers["Location"] == "/_gateway/login"
    for token in (laptop, phone):
        assert (await send(client, "GET", "/x", token=token)).status == 401


async def test_the_page_sends_strangers_to_sign_in(two_devices):
    client, *_ = two_devices
    r = await send(client, "GET", "/_gateway/sessions", accept="text/html")
    assert r.status == 303
    assert r.headers["Location"] == "/_gateway/login?rd=/_gateway/sessions"


async def test_the_logout_page_links_to_the_sessions_page(two_devices):
    client, clock, laptop, phone = two_devices
    r = await send(client, "GET", "/_gateway/logout", token=phone, accept="text/html")
    assert 'href="/_gateway/sessions"' in r.text


# -- the cap ---------------------------------------------------------------------------------

async def test_refuse_at_the_cap_and_make_room_on_request(upstream, make_config, gateway,
                                                          store_settings):
    clock = Clock()
    client = await gateway(make_config(str(upstream.make_url("/")), session={
        **store_settings, "max_per_user": 2, "on_limit": "refuse"}), clock=clock)
    first = await api_login(client)
    clock.advance(20)
    second = await api_login(client)
    clock.advance(20)
    await send(client, "GET", "/x", token=first)               # second is now the idlest
    r = await send(client, "POST", "/_gateway/api/login",
                   json={"username": "alice", "password": "alice-pw"})
    assert (r.status, r.json()["error"]) == (409, "SESSION_LIMIT")
    assert COOKIE not in r.set_cookies()
    r = await send(client, "POST", "/_gateway/api/login",
                   json={"username": "alice", "password": "alice-pw", "make_room": True})
    assert r.status == 200
    assert (await send(client, "GET", "/x", token=second)).status == 401
    assert (await send(client, "GET", "/x", token=first)).status == 200


async def test_refuse_holds_under_parallel_logins(upstream, make_config, gateway,
                                                  store_settings):
    client = await gateway(make_config(str(upstream.make_url("/")), session={
        **store_settings, "max_per_user": 3, "on_limit": "refuse"},
        throttle={"enabled": False}))     # it would let 5 of them run at once
    replies = await asyncio.gather(*(send(client, "POST", "/_gateway/api/login", json={
        "username": "alice", "password": "alice-pw"}) for _ in range(20)))
    assert sorted(r.status for r in replies) == [200] * 3 + [409] * 17


async def test_the_login_page_explains_the_refusal(upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/")), session={
        "max_per_user": 1, "on_limit": "refuse"}))
    await api_login(client)
    r = await send(client, "GET", "/_gateway/login", accept="text/html")
    form_cookie = r.set_cookies()["gateway_form"].split(";", 1)[0]
    r = await send(client, "POST", "/_gateway/login", accept="text/html",
                   headers=[("Cookie", form_cookie), *SAME_SITE],
                   data={"csrf_token": csrf_of(r.text), "username": "alice",
                         "password": "alice-pw", "rd": "/"})
    assert r.status == 409
    assert "as many devices as this site allows" in r.text and 'name="make_room"' in r.text


async def test_always_ask_still_lets_the_page_confirm_then_act(upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/")), session={
        "reauth_after": "0s"}))
    laptop, phone = await api_login(client), await api_login(client)
    r, form_cookie = await page(client, phone)
    csrf = csrf_of(r.text)
    assert (await submit(client, phone, form_cookie, csrf, action="others")).status == 401
    r = await submit(client, phone, form_cookie, csrf, action="confirm", password="alice-pw")
    assert r.status == 303
    r = await submit(client, phone, form_cookie, csrf, action="others")
    assert r.status == 200 and "Signed out 1 other session." in r.text
    assert (await send(client, "GET", "/x", token=laptop)).status == 401


async def test_everywhere_is_not_blocked_by_a_session_that_already_idled_out(two_devices):
    client, clock, laptop, phone = two_devices
    for _ in range(2):                  # the laptop idles out; the phone stays, 11 min on
        clock.advance(5.5 * 60)
        await use(client, phone)
    r, form_cookie = await page(client, phone)
    assert "Chrome 156 on Linux" not in r.text.split("Recently ended")[0]
    r = await submit(client, phone, form_cookie, csrf_of(r.text), action="everywhere")
    assert r.status == 303 and r.headers["Location"] == "/_gateway/login"
