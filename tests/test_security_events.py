"""Security events through the real gateway and store: a new device or place at
sign-in, a new address or another browser within a session, each policy, and
that every finding reaches the one event stream exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from authkit import COOKIE, send
from conftest import Clock
from gateway.auth.events import SessionEvent
from gateway.config import ConfigError
from gateway.state import GATEWAY
from gateway.store.base import MAX_FINDINGS

CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/156.0.0.0 Safari/537.36")
CHROME_PATCHED = CHROME.replace("156.0.0.0", "156.0.7390.1")
CHROME_NEXT = CHROME.replace("156.0.0.0", "157.0.0.0")
CHROME_OLDER = CHROME.replace("156.0.0.0", "120.0.0.0")
CHROME_WINDOWS = CHROME.replace("X11; Linux x86_64", "Windows NT 10.0; Win64; x64")
ANDROID_CHROME = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like "
                  "Gecko) Chrome/156.0.0.0 Mobile Safari/537.36")
MAC_SAFARI = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like "
              "Gecko) Version/17.4 Safari/605.1.15")
IPHONE_SAFARI = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
                 "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1")
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0"
HOME, CAFE = "198.51.100.7", "203.0.113.9"


class Device:
    """One browser somewhere: its User-Agent and address, and its cookie."""

    def __init__(self, client: Any, agent: str, ip: str) -> None:
        self.client, self.agent, self.ip, self.token = client, agent, ip, ""

    def headers(self) -> list[tuple[str, str]]:
        return [("User-Agent", self.agent), ("X-Forwarded-For", self.ip)]

    async def sign_in(self) -> "Device":
        clock = self.client.app[GATEWAY].sessions.clock
        if isinstance(clock, Clock):
            # Sign-ins follow each other, as in life (a millisecond: the
            # tokens' "iat" must not run ahead of the real time).
            clock.advance(0.001)
        r = await send(self.client, "POST", "/_gateway/api/login", headers=self.headers(),
                       json={"username": "alice", "password": "alice-pw"})
        assert r.status == 200, r
        self.token = r.set_cookies()[COOKIE].split("=", 1)[1].split(";", 1)[0]
        return self

    async def get(self, target: str = "/x", **kwargs: Any) -> Any:
        return await send(self.client, "GET", target, token=self.token,
                          headers=self.headers(), **kwargs)


@pytest.fixture
async def site(upstream: Any, make_config: Any, gateway: Any, store_settings: Any,
               tmp_path: Path) -> Any:
    """A gateway (clock of the test's, addresses from X-Forwarded-For, a geoip
    database knowing CAFE) and every event it emits."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet
    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", ipv4_compatible=True)
    writer.insert_network(IPSet([CAFE + "/32"]), {
        "country": {"iso_code": "NL", "names": {"en": "Netherlands"}},
        "subdivisions": [{"iso_code": "NH", "names": {"en": "North Holland"}}],
        "city": {"names": {"en": "Amsterdam"}}})
    writer.insert_network(IPSet([HOME + "/32"]), {
        "country": {"iso_code": "DE", "names": {"en": "Germany"}},
        "subdivisions": [{"iso_code": "BE", "names": {"en": "Berlin"}}],
        "city": {"names": {"en": "Berlin"}}})
    writer.to_db_file(str(tmp_path / "geo.mmdb"))

    async def start(**policies: str) -> tuple[Any, list[SessionEvent]]:
        config = make_config(str(upstream.make_url("/")), trusted_proxies=["127.0.0.1/32"],
                             session=store_settings, geoip={"database": "geo.mmdb"},
                             security_events=policies)
        client = await gateway(config, clock=Clock())
        seen: list[SessionEvent] = []
        client.app[GATEWAY].sessions.events.subscribe(
            lambda e: seen.append(e) if e.type.startswith("security.") else None)
        return client, seen
    return start


async def alerts(device: Device) -> list[str]:
    r = await send(device.client, "GET", "/_gateway/api/sessions", token=device.token,
                   headers=device.headers())
    assert r.status == 200, r
    return [a["message"] for a in r.json()["alerts"]]


# -- at sign-in ----------------------------------------------------------------------

async def test_a_first_sign_in_raises_nothing_and_a_new_browser_is_a_new_device(site):
    client, seen = await site()
    laptop = await Device(client, CHROME, HOME).sign_in()
    await Device(client, CHROME_PATCHED, HOME).sign_in()      # same browser, updated
    assert seen == []
    await Device(client, FIREFOX, HOME).sign_in()
    assert [e.type for e in seen] == ["security.new_device"]
    assert seen[0].details["device"] == "Firefox 130 on Linux"
    assert seen[0].details["policy"] == "notify" and seen[0].actor == "system"
    assert await alerts(laptop) == [
        "New sign-in on a device not seen before: Firefox 130 on Linux from "
        f"{HOME} (Berlin, Berlin, Germany)."]
    page = await laptop.get("/_gateway/sessions", accept="text/html")
    assert "Security alerts" in page.text and "Firefox 130 on Linux from" in page.text


async def test_ended_sessions_of_the_history_window_count_as_known(site):
    client, seen = await site()
    first = await Device(client, FIREFOX, HOME).sign_in()
    await send(client, "POST", "/_gateway/logout", token=first.token,
               headers=first.headers(), json={})
    await Device(client, FIREFOX, HOME).sign_in()             # known from the history
    await Device(client, CHROME_WINDOWS, HOME).sign_in()      # Windows: a new device
    assert [e.type for e in seen] == ["security.new_device"]


async def test_a_new_country_or_region_is_a_new_location(site):
    client, seen = await site()
    laptop = await Device(client, CHROME, HOME).sign_in()
    await Device(client, CHROME, HOME).sign_in()
    await Device(client, CHROME, "192.0.2.1").sign_in()       # not in the database: unknown
    assert seen == []
    await Device(client, CHROME, CAFE).sign_in()
    assert [e.type for e in seen] == ["security.new_location"]
    assert seen[0].details["location"] == "Amsterdam, North Holland, Netherlands"
    assert "New sign-in from a place not seen before from 203.0.113.9 (Amsterdam, " \
           "North Holland, Netherlands), on Chrome 156 on Linux." in await alerts(laptop)


async def test_sign_in_policies_log_and_off(site):
    client, seen = await site(new_device="log", new_location="off")
    laptop = await Device(client, CHROME, HOME).sign_in()
    await Device(client, FIREFOX, CAFE).sign_in()
    assert [(e.type, e.details["policy"]) for e in seen] == [("security.new_device", "log")]
    assert await alerts(laptop) == []                          # log: not shown to the user


# -- within a session ----------------------------------------------------------------------

async def test_a_new_address_is_logged_once_and_the_session_goes_on(site):
    client, seen = await site()
    laptop = await Device(client, CHROME, HOME).sign_in()
    laptop.ip = CAFE
    for _ in range(3):
        assert (await laptop.get()).status == 200
    laptop.ip = HOME                                           # back where it signed in
    assert (await laptop.get()).status == 200
    laptop.ip = CAFE
    assert (await laptop.get()).status == 200
    assert [(e.type, e.details["ip"], e.details["previous"]) for e in seen] == [
        ("security.ip_changed", CAFE, HOME)]
    assert await alerts(laptop) == []                          # default policy: log


async def test_a_new_address_with_notify_is_shown_and_with_end_ends_the_session(site):
    client, seen = await site(ip_changed="notify")
    laptop = await Device(client, CHROME, HOME).sign_in()
    laptop.ip = CAFE
    assert (await laptop.get()).status == 200
    assert await alerts(laptop) == [
        f"A session moved to a new network address from {CAFE} (Amsterdam, North Holland, "
        f"Netherlands) (it was {HOME})."]

    client, seen = await site(ip_changed="end")
    laptop = await Device(client, CHROME, HOME).sign_in()
    laptop.ip = CAFE
    r = await laptop.get()
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")
    assert [e.type for e in seen] == ["security.ip_changed"]
    again = await Device(client, CHROME, HOME).sign_in()
    ended = (await send(client, "GET", "/_gateway/api/sessions", token=again.token,
                        headers=again.headers())).json()["ended"]
    assert [(e["status"], e["reason"], e["reason_text"]) for e in ended] == [
        ("REVOKED", "ip_changed", "Ended because it was used from another network address.")]


async def test_another_browser_ends_the_session_by_default(site):
    client, seen = await site()
    laptop = await Device(client, CHROME, HOME).sign_in()
    thief = Device(client, FIREFOX, CAFE)
    thief.token = laptop.token                                 # the cookie, stolen
    r = await thief.get(accept="text/html")
    assert r.status == 302 and r.set_cookies()["gateway_notice"].startswith("gateway_notice=security")
    assert [e.type for e in seen] == ["security.ip_changed", "security.ua_changed"]
    assert seen[1].details["device"] == "Firefox 130 on Linux"
    assert seen[1].details["previous"] == "Chrome 156 on Linux"
    r = await laptop.get("/_gateway/api/session")              # what the owner's monitor sees
    assert (r.status, r.json()["error"], r.json()["reason"]) == (401, "SESSION_REVOKED", "security")
    page = await send(client, "GET", "/_gateway/login",
                      headers=[("Cookie", "gateway_notice=security")], accept="text/html")
    assert "your session was used from another browser or network" in page.text


@pytest.mark.parametrize("agent", [CHROME_PATCHED, CHROME_NEXT])
async def test_browser_updates_are_not_a_change(site, agent):
    client, seen = await site()
    laptop = await Device(client, CHROME, HOME).sign_in()
    laptop.agent = agent
    assert (await laptop.get()).status == 200
    assert seen == []


@pytest.mark.parametrize("agent", [CHROME_OLDER, CHROME_WINDOWS, "", "curl/8.5.0"])
async def test_an_older_version_another_os_or_a_script_is_a_change(site, agent):
    client, seen = await site(ua_changed="log")
    laptop = await Device(client, CHROME, HOME).sign_in()
    laptop.agent = agent
    for _ in range(2):
        assert (await laptop.get()).status == 200              # log: the session goes on
    assert [e.type for e in seen] == ["security.ua_changed"]


async def test_off_policies_watch_nothing(site):
    client, seen = await site(ip_changed="off", ua_changed="off")
    laptop = await Device(client, CHROME, HOME).sign_in()
    laptop.agent, laptop.ip = FIREFOX, CAFE
    assert (await laptop.get()).status == 200
    assert seen == []


async def test_the_monitor_asks_for_alerts_since_a_time(site):
    client, seen = await site(ip_changed="notify")
    laptop = await Device(client, CHROME, HOME).sign_in()
    phone = await Device(client, FIREFOX, CAFE).sign_in()      # new device, new place
    body = (await laptop.get("/_gateway/api/session")).json()
    assert "alerts" not in body                                # only when asked
    body = (await laptop.get("/_gateway/api/session?alerts=0")).json()
    assert sorted((a["type"], a["current"]) for a in body["alerts"]) == [
        ("security.new_device", False), ("security.new_location", False)]
    laptop.ip = CAFE                                           # a change within a session
    await laptop.get()
    body = (await laptop.get("/_gateway/api/session?alerts=0")).json()
    assert ("security.ip_changed", False) in [(a["type"], a["current"]) for a in body["alerts"]]
    mine = (await phone.get("/_gateway/api/session?alerts=0")).json()["alerts"]
    assert all(a["current"] for a in mine if a["type"] != "security.ip_changed")
    later = client.app[GATEWAY].sessions.clock() + 1
    assert (await laptop.get(f"/_gateway/api/session?alerts={later}")).json()["alerts"] == []
    for bad in ("x", "nan", "inf"):
        r = await laptop.get(f"/_gateway/api/session?alerts={bad}")
        assert (r.status, r.json()["error"]) == (400, "BAD_REQUEST")


async def test_parallel_sign_ins_from_a_new_device_do_not_vouch_for_each_other(site):
    client, seen = await site()
    await Device(client, CHROME, HOME).sign_in()
    client.app[GATEWAY].sessions.clock.advance(0.001)
    await asyncio.gather(*(send(client, "POST", "/_gateway/api/login",
                                headers=[("User-Agent", FIREFOX), ("X-Forwarded-For", HOME)],
                                json={"username": "alice", "password": "alice-pw"})
                           for _ in range(3)))              # all at one instant
    assert [e.type for e in seen] == ["security.new_device"]


async def test_a_log_finding_leaves_no_alert_and_a_session_has_its_fill(site):
    client, seen = await site(ip_changed="log", new_device="notify")
    await Device(client, CHROME, HOME).sign_in()
    laptop = await Device(client, FIREFOX, HOME).sign_in()     # an alert
    for n in range(40):                                        # 40 addresses: 20 findings
        laptop.ip = f"192.0.2.{n + 1}"
        assert (await laptop.get()).status == 200
    assert len([e for e in seen if e.type == "security.ip_changed"]) == MAX_FINDINGS
    assert await alerts(laptop) == [
        "New sign-in on a device not seen before: Firefox 130 on Linux from "
        f"{HOME} (Berlin, Berlin, Germany)."]


@pytest.mark.parametrize("desktop_site", [
    CHROME.replace("Chrome/156", "Chrome/156"),
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/156.0.0.0 Safari/537.36"])
async def test_a_phone_asking_for_the_desktop_site_is_the_same_browser(site, desktop_site):
    client, seen = await site()
    phone = await Device(client, ANDROID_CHROME, HOME).sign_in()
    phone.agent = desktop_site
    assert (await phone.get()).status == 200
    assert seen == []


async def test_a_phone_is_a_new_device_after_a_desktop(site):
    client, seen = await site()
    await Device(client, MAC_SAFARI, HOME).sign_in()
    await Device(client, IPHONE_SAFARI, HOME).sign_in()
    assert [e.details["device"] for e in seen] == ["Mobile Safari 17 on iOS 17"]


async def test_a_desktop_sessions_cookie_on_a_phone_is_another_browser(site):
    client, seen = await site()
    laptop = await Device(client, CHROME, HOME).sign_in()
    laptop.agent = ANDROID_CHROME
    assert (await laptop.get()).status == 401
    assert [e.type for e in seen] == ["security.ua_changed"]


async def test_many_new_addresses_leave_room_for_another_finding(site):
    client, seen = await site(ip_changed="log", ua_changed="notify")
    laptop = await Device(client, CHROME, HOME).sign_in()
    for n in range(MAX_FINDINGS + 5):
        laptop.ip = f"192.0.2.{n + 1}"
        await laptop.get()
    laptop.agent = FIREFOX
    assert (await laptop.get()).status == 200
    assert [e.type for e in seen].count("security.ua_changed") == 1


async def test_rotating_user_agents_are_a_finding(site):
    client, seen = await site(ua_changed="log")
    laptop = await Device(client, CHROME, HOME).sign_in()
    for n in range(12):                                        # same browser, new strings
        laptop.agent = CHROME.replace("156.0.0.0", f"156.0.{n}.1")
        assert (await laptop.get()).status == 200
    assert [e.details["previous"] for e in seen] == ["many different User-Agents"]


async def test_each_finding_is_recorded_once_across_gateways(upstream, make_config, gateway,
                                                            redis_server):
    """Two gateways on one Redis (two workers or instances): one event, not two."""
    config = make_config(str(upstream.make_url("/")), trusted_proxies=["127.0.0.1/32"],
                         session={"store": "redis", "redis": {"url": redis_server.url}})
    redis_server.flush()
    first, second = await gateway(config), await gateway(config)
    seen: list[str] = []
    for client in (first, second):
        client.app[GATEWAY].sessions.events.subscribe(
            lambda e: seen.append(e.type) if e.type.startswith("security.") else None)
    laptop = await Device(first, CHROME, HOME).sign_in()
    laptop.ip = CAFE
    for client in (first, second, first, second):
        laptop.client = client
        assert (await laptop.get()).status == 200
    assert seen == ["security.ip_changed"]


def test_a_sign_in_finding_cannot_end_a_session(make_config):
    with pytest.raises(ConfigError) as err:
        make_config(security_events={"new_device": "end"})
    assert "security_events.new_device: must be one of off, log, notify" in str(err.value)
