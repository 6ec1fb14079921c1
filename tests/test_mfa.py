"""The second factor through the real gateway and store: the operator's
secret, the code step of the login form and of JSON, enrolment at sign-in
and on /2fa, replay refused, recovery codes single-use, wrong codes
throttled, the held sign-in's five minutes (injectable clock), rules with
``mfa: true``, the policy, and a secret that no longer decrypts."""

from __future__ import annotations

import html
import io
import re
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
import yaml

from authkit import csrf_of, send
from conftest import USERS, Clock, write_users
from gateway.config import ConfigError
from gateway.state import GATEWAY

SECRET = pyotp.random_base32(32)
WITH_SECRET = [{**u, "totp_secret": SECRET} if u["username"] == "alice" else u for u in USERS]


def code(secret: str, clock: Clock, steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(clock() + steps * 30)


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.now -= 1000    # room to move forward without going past real time (JWT iat)
    return clock


@pytest.fixture
def start(upstream, make_config, gateway, store_settings, tmp_path, clock):
    async def start(users: list[dict[str, Any]] = WITH_SECRET, **overrides: Any) -> Any:
        write_users(tmp_path, users)
        session = {**store_settings, **overrides.pop("session", {})}
        config = make_config(str(upstream.make_url("/")), session=session, **overrides)
        return await gateway(config, clock=clock)
    return start


async def json_login(client: Any, otp: str | None = None, user: str = "alice",
                     password: str = "alice-pw") -> Any:
    body = {"username": user, "password": password}
    if otp is not None:
        body["otp"] = otp
    return await send(client, "POST", "/_gateway/api/login", json=body)


async def form_login(client: Any, user: str = "alice", password: str = "alice-pw",
                     rd: str = "/") -> Any:
    """The first step through the page, with the client's cookie jar."""
    page = await client.get(f"/_gateway/login?rd={rd}")
    return await client.post("/_gateway/login", allow_redirects=False, data={
        "csrf_token": csrf_of(await page.text()), "username": user, "password": password,
        "rd": rd})


async def form_code(client: Any, page_html: str, otp: str, **extra: str) -> Any:
    """The second step, as the page's form posts it (its hidden rd included)."""
    rd = re.search(r'name="rd" value="([^"]*)"', page_html)
    return await client.post("/_gateway/login", allow_redirects=False, data={
        "csrf_token": csrf_of(page_html), "otp": otp, "rd": html.unescape(rd.group(1)),
        **extra})


def secret_on(page_html: str) -> str:
    m = re.search(r'id="totp-secret">([^<]+)<', page_html)
    assert m, page_html
    return html.unescape(m.group(1)).replace(" ", "")


def session_cookie(client: Any) -> str:
    return client.session.cookie_jar.filter_cookies(client.make_url("/"))["gateway_session"].value


def codes_on(page_html: str) -> list[str]:
    return re.findall(r"<li><code>([a-z0-9-]+)</code></li>", page_html)


async def my_sessions(client: Any) -> list[dict[str, Any]]:
    r = await client.get("/_gateway/api/sessions")
    assert r.status == 200
    return (await r.json())["sessions"]


# -- the operator's secret -------------------------------------------------------

async def test_json_login_asks_for_the_code_and_takes_it_once(start, clock):
    client = await start()
    r = await json_login(client)
    assert (r.status, r.json()["error"]) == (401, "OTP_REQUIRED")
    assert "gateway_session" not in r.set_cookies()
    r = await json_login(client, "000000" if code(SECRET, clock) != "000000" else "111111")
    assert (r.status, r.json()["error"]) == (401, "OTP_INVALID")
    r = await json_login(client, code(SECRET, clock))
    assert r.status == 200, r
    assert r.json()["session"]["mfa"] is True
    # The same code again, and the one before it, are refused: replay.
    assert (await json_login(client, code(SECRET, clock))).json()["error"] == "OTP_INVALID"
    assert (await json_login(client, code(SECRET, clock, -1))).json()["error"] == "OTP_INVALID"
    # The next step's code is still inside the window, and is new.
    assert (await json_login(client, code(SECRET, clock, +1))).status == 200


async def test_a_wrong_password_never_reaches_the_code(start, clock):
    client = await start()
    r = await json_login(client, code(SECRET, clock), password="wrong")
    assert (r.status, r.json()["error"]) == (401, "INVALID_CREDENTIALS")
    # ...and spent nothing: the code still works.
    assert (await json_login(client, code(SECRET, clock))).status == 200


async def test_users_without_a_factor_sign_in_as_before(start):
    client = await start()
    r = await json_login(client, user="admin", password="admin-pw")
    assert r.status == 200 and r.json()["session"]["mfa"] is False


async def test_the_form_asks_for_the_code_in_a_second_step(start, clock):
    client = await start()
    r = await form_login(client, rd="/after")
    assert r.status == 200
    step = await r.text()
    assert 'name="otp"' in step and 'name="password"' not in step
    assert "gateway_session" not in r.cookies
    r = await form_code(client, step, "12345x")
    assert r.status == 401 and "not right" in await r.text()
    r = await form_code(client, await r.text(), code(SECRET, clock))
    assert r.status == 303, await r.text()
    assert r.headers["Location"] == "/after"
    sessions = await my_sessions(client)
    assert [s["mfa"] for s in sessions] == [True]


async def test_a_held_sign_in_lasts_five_minutes(start, clock):
    client = await start()
    step = await (await form_login(client)).text()
    clock.advance(301)
    r = await form_code(client, step, code(SECRET, clock))
    assert r.status == 401 and "took too long" in await r.text()
    assert 'name="password"' in await r.text()


async def test_a_held_sign_in_finishes_once(start, clock):
    client = await start()
    step = await (await form_login(client)).text()
    form_cookie = client.session.cookie_jar.filter_cookies(client.make_url("/_gateway/"))
    held = form_cookie["gateway_form"].value
    assert (await form_code(client, step, code(SECRET, clock))).status == 303
    # The form cookie from before, replayed with the next code, finds nothing held.
    r = await send(client, "POST", "/_gateway/login", accept="text/html",
                   headers=[("Cookie", f"gateway_form={held}")],
                   data={"csrf_token": csrf_of(step), "otp": code(SECRET, clock, +1)})
    assert r.status == 401 and "took too long" in r.text


async def test_wrong_codes_are_throttled_like_passwords(start, clock):
    client = await start()
    for _ in range(5):
        assert (await json_login(client, "000001")).json()["error"] == "OTP_INVALID"
    r = await json_login(client, code(SECRET, clock))
    assert (r.status, r.json()["error"]) == (429, "RATE_LIMITED")
    assert int(r.headers["Retry-After"]) > 1700
    blocks = await client.app[GATEWAY].store.throttle_blocks()
    assert [b.info["kind"] for b in blocks] == ["code"]


async def test_wrong_codes_are_audited(start, clock):
    client = await start()
    await json_login(client, "000001")
    gw = client.app[GATEWAY]
    await gw.audit.flush()
    events = [e for _, e in await gw.store.audit_page(None, 10)]
    assert any(e["type"] == "login.failure" and e["details"]["reason"] == "bad_otp"
               and e["user"] == "alice" for e in events)


# -- enrolment -------------------------------------------------------------------

async def test_required_makes_a_user_enrol_at_sign_in(start, clock):
    client = await start(users=USERS, mfa={"totp": "required"})
    r = await json_login(client)
    assert r.status == 401 and r.json() == {
        "error": "OTP_REQUIRED", "enrol": True,
        "message": "Set up two-step verification by signing in with a browser first."}
    r = await form_login(client)
    step = await r.text()
    assert r.status == 200 and "<svg" in step and "Set up two-step verification" in step
    secret = secret_on(step)
    # The page's QR code and text name the same secret.
    assert len(secret) == 32 and pyotp.TOTP(secret).now()
    r = await form_code(client, step, code(secret, clock))
    assert r.status == 200
    page = await r.text()
    codes = codes_on(page)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert "gateway_session" in r.cookies
    assert [s["mfa"] for s in await my_sessions(client)] == [True]
    # From now on the enrolled secret is asked for; recovery codes work once.
    assert (await json_login(client)).json()["error"] == "OTP_REQUIRED"
    assert (await json_login(client, codes[0].upper().replace("-", " "))).status == 200
    assert (await json_login(client, codes[0])).json()["error"] == "OTP_INVALID"
    assert (await client.app[GATEWAY].store.mfa_get("alice")).codes_left == 9


async def test_required_for_roles_asks_only_those_users(start):
    client = await start(users=USERS, mfa={"required_for_roles": ["admin"]})
    assert (await json_login(client)).status == 200
    r = await json_login(client, user="admin", password="admin-pw")
    assert r.json() == {"error": "OTP_REQUIRED", "enrol": True,
                        "message": "Set up two-step verification by signing in with a "
                                   "browser first."}


async def test_enrolling_on_the_page_needs_the_password_and_a_code(start, clock):
    client = await start(users=USERS)
    assert (await json_login(client)).status == 200          # optional: not asked
    await form_login(client)                                # the cookie jar's session
    r = await client.get("/_gateway/2fa")
    page = await r.text()
    assert r.status == 200 and "<svg" in page
    secret = secret_on(page)
    # Reloading shows the same secret (the person may have scanned it already).
    assert secret_on(await (await client.get("/_gateway/2fa")).text()) == secret

    async def submit(password: str, otp: str) -> Any:
        return await client.post("/_gateway/2fa", allow_redirects=False, data={
            "csrf_token": csrf_of(page), "action": "enrol", "password": password,
            "otp": otp, "rd": ""})
    r = await submit("wrong", code(secret, clock))
    assert r.status == 401 and "password is not right" in await r.text()
    r = await submit("alice-pw", "000001")
    assert r.status == 401
    r = await submit("alice-pw", code(secret, clock))
    assert r.status == 200 and len(codes_on(await r.text())) == 10
    # This session counts as verified now; the one signed in by JSON does not.
    assert [(s["current"], s["mfa"]) for s in await my_sessions(client)] == [
        (True, True), (False, False)]
    r = await client.get("/_gateway/2fa")
    assert "Two-step verification is on" in await r.text()
    assert "<strong>10</strong> unused recovery codes" in await r.text()
    # Signing in again now takes the code.
    assert (await json_login(client)).json()["error"] == "OTP_REQUIRED"
    await client.app[GATEWAY].audit.flush()
    events = [e["type"] for _, e in await client.app[GATEWAY].store.audit_page(None, 50)]
    assert "mfa.enrolled" in events


async def test_the_page_needs_a_session_and_is_gone_when_off(start):
    client = await start()
    r = await send(client, "GET", "/_gateway/2fa", accept="text/html")
    assert r.status == 303 and r.headers["Location"].startswith("/_gateway/login?rd=")
    client = await start(mfa={"totp": "off"})
    r = await send(client, "GET", "/_gateway/2fa", accept="text/html")
    assert r.status == 404


async def test_off_asks_for_no_code_even_with_a_secret(start):
    client = await start(mfa={"totp": "off"})
    r = await json_login(client)
    assert r.status == 200 and r.json()["session"]["mfa"] is False


# -- rules -------------------------------------------------------------------------

async def test_a_rule_with_mfa_needs_a_verified_session(upstream, make_config, gateway,
                                                        store_settings, tmp_path, clock):
    write_users(tmp_path, WITH_SECRET)
    config = make_config(str(upstream.make_url("/")), session=store_settings, upstreams=[
        {"name": "app", "url": str(upstream.make_url("/")),
         "rules": [{"path": "/billing", "mfa": True}]}], mfa={"totp": "optional"})
    client = await gateway(config, clock=clock)
    # Bob has no factor: signed in, but not for /billing.
    write_users(tmp_path, WITH_SECRET + [{"username": "bob", "password": "bob-pw"}])
    bob = (await json_login(client, user="bob", password="bob-pw"))
    token = bob.set_cookies()["gateway_session"].split("=", 1)[1].split(";", 1)[0]
    assert (await send(client, "GET", "/other", token=token)).status == 200
    r = await send(client, "GET", "/billing/x?y=1", token=token, accept="text/html")
    assert r.status == 403 and "needs two-step verification" in r.text
    assert 'href="/_gateway/2fa?rd=%2Fbilling%2Fx%3Fy%3D1"' in r.text
    r = await send(client, "GET", "/BILLING", token=token)
    assert (r.status, r.json()["error"]) == (403, "FORBIDDEN")
    # Alice signed in with her code passes.
    alice = await json_login(client, code(SECRET, clock))
    token = alice.set_cookies()["gateway_session"].split("=", 1)[1].split(";", 1)[0]
    assert (await send(client, "GET", "/billing/x", token=token)).status == 200


async def test_a_session_verified_on_the_page_passes_the_rule(upstream, make_config, gateway,
                                                             store_settings, tmp_path, clock):
    """Alice enrolled after signing in (here: her session predates her
    secret): /2fa verifies the session, and the rule lets it through."""
    write_users(tmp_path, USERS)
    config = make_config(str(upstream.make_url("/")), session=store_settings, upstreams=[
        {"name": "app", "url": str(upstream.make_url("/")),
         "rules": [{"path": "/billing", "mfa": True}]}])
    client = await gateway(config, clock=clock)
    await form_login(client)
    assert (await client.get("/billing", allow_redirects=False)).status == 403
    write_users(tmp_path, WITH_SECRET)
    page = await (await client.get("/_gateway/2fa?rd=/billing")).text()
    assert 'name="action" value="verify"' in page
    before = session_cookie(client)
    r = await client.post("/_gateway/2fa", allow_redirects=False, data={
        "csrf_token": csrf_of(page), "action": "verify", "otp": code(SECRET, clock),
        "rd": "/billing"})
    assert (r.status, r.headers["Location"]) == (303, "/billing")
    assert (await client.get("/billing", allow_redirects=False)).status == 200
    # A new id: the cookie from before the code gained nothing, and is spent.
    assert session_cookie(client) != before
    r = await send(client, "GET", "/billing", token=before)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")
    # The same sign-in went on: one session, its start kept; audited as a renewal.
    (now,) = await my_sessions(client)
    r = await client.get("/_gateway/api/sessions")
    (old,) = (await r.json())["ended"]
    assert now["created_at"] == old["created_at"] and old["reason"] == "renewed"
    gw = client.app[GATEWAY]
    await gw.audit.flush()
    records = [e for _, e in await gw.store.audit_page(None, 20)]
    assert [e["type"] for e in records][:2] == ["login.success", "session.renewed"]
    assert records[0]["details"] == {"mfa": "totp", "renewed": records[1]["session"]}


def test_rules_and_policy_are_checked_in_the_config(make_config):
    with pytest.raises(ConfigError) as err:
        make_config(upstreams=[{"name": "app", "url": "http://127.0.0.1:9",
                                "rules": [{"path": "/x", "mfa": True}]}], mfa={"totp": "off"})
    assert err.value.problems == [
        "upstreams[0].rules[0].mfa: needs a second factor, but mfa.totp is off"]
    with pytest.raises(ConfigError) as err:
        make_config(mfa={"totp": "always", "required_for_roles": ["a b"]})
    assert err.value.problems == [
        "mfa.totp: must be one of off, optional, required (got 'always')",
        "mfa.required_for_roles[0]: must not contain ',', whitespace or control characters "
        "(got 'a b')"]


# -- secrets --------------------------------------------------------------------------

@pytest.mark.parametrize("secret, problem", [
    ("not base32!", "must be a base32 secret (A-Z, 2-7)"),
    ("JBSWY3DPEHPK3PXP", "must hold at least 128 bits (26 base32 characters)"),
])
def test_a_bad_operator_secret_is_named_not_shown(tmp_path: Path, secret: str,
                                                  problem: str) -> None:
    from gateway.auth.users import load_users_file
    path = write_users(tmp_path, [{**USERS[0], "totp_secret": secret}])
    with pytest.raises(ConfigError) as err:
        load_users_file(path)
    assert err.value.problems == [
        f"users.file (users.yaml): users[0].totp_secret: {problem} (user 'alice'; the value "
        "is not shown)"]


def test_an_operator_secret_may_be_written_loosely(tmp_path: Path) -> None:
    from gateway.auth.users import load_users_file
    loose = " ".join(SECRET[i:i + 4] for i in range(0, 32, 4)).lower()
    path = write_users(tmp_path, [{**USERS[0], "totp_secret": loose}])
    assert load_users_file(path)["alice"].totp_secret == SECRET
    assert SECRET not in repr(load_users_file(path)["alice"])


async def enrolled_at_sign_in(start: Any, clock: Clock) -> tuple[Any, str, str]:
    """Alice enrolled at sign-in (required): the client, her secret, as stored."""
    client = await start(users=USERS, mfa={"totp": "required"})
    step = await (await form_login(client)).text()
    secret = secret_on(step)
    await form_code(client, step, code(secret, clock))
    return client, secret, (await client.app[GATEWAY].store.mfa_get("alice")).secret


async def test_enrolled_secrets_are_encrypted_and_bound_to_the_user(start, clock):
    client, secret, sealed = await enrolled_at_sign_in(start, clock)
    store = client.app[GATEWAY].store
    assert secret not in sealed
    # Copied to another user, it does not decrypt: that user cannot sign in.
    await store.mfa_enrol("admin", sealed, [], clock())
    r = await json_login(client, code(secret, clock, +1), user="admin", password="admin-pw")
    assert (r.status, r.json()["error"]) == (401, "OTP_INVALID")


async def test_a_secret_that_no_longer_decrypts_fails_closed(start, clock, tmp_path):
    client, secret, sealed = await enrolled_at_sign_in(start, clock)
    store = client.app[GATEWAY].store
    # The same store under a gateway with another `secret`.
    other = await start(users=USERS, mfa={"totp": "required"}, secret="another-secret-" * 3)
    await other.app[GATEWAY].store.mfa_enrol("alice", sealed, [], clock())
    r = await form_login(other)
    assert r.status == 401 and "ask an administrator" in await r.text()
    assert (await json_login(other, code(secret, clock, +1))).json()["error"] == "OTP_INVALID"


def test_the_users_file_example_in_the_contract_loads(tmp_path: Path) -> None:
    from gateway.auth.users import load_users_file
    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump({"users": [{
        "username": "alice", "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$"
        "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g", "totp_secret": SECRET}]}))
    assert load_users_file(path)["alice"].totp_secret == SECRET


# -- the operator ----------------------------------------------------------------------

async def test_gateway_totp_reset(upstream, make_config, gateway, redis_server, tmp_path,
                                  clock, capsys):
    import asyncio

    from gateway.cli import main
    write_users(tmp_path, USERS)
    settings = {"store": "redis", "redis": {"url": redis_server.url,
                                            "key_prefix": "totp-reset"}}
    client = await gateway(make_config(str(upstream.make_url("/")), session=settings,
                                       mfa={"totp": "required"}), clock=clock)
    step = await (await form_login(client)).text()
    secret = secret_on(step)
    assert (await form_code(client, step, code(secret, clock))).status == 200

    def cli(*args: str) -> int:
        return main(["totp", "reset", *args, "--config", str(tmp_path / "config.yaml")])
    assert await asyncio.to_thread(cli, "--user", "ALICE") == 0
    assert "removed the second factor and recovery codes of 'ALICE'" in capsys.readouterr().out
    assert await asyncio.to_thread(cli, "--user", "alice") == 1
    assert "'alice' has no enrolled second factor" in capsys.readouterr().err
    # Her session goes on; her next sign-in enrols afresh.
    assert [s["mfa"] for s in await my_sessions(client)] == [True]
    assert (await json_login(client)).json()["enrol"] is True
    gw = client.app[GATEWAY]
    records = [r for _, r in await gw.store.audit_page(None, 50)]
    assert [(r["actor"], r["user"]) for r in records if r["type"] == "mfa.reset"] == [
        ("cli", "alice")]


async def test_a_full_session_cap_at_the_code_step_keeps_the_enrolment(start, clock):
    """With on_limit: refuse, the cap can turn the sign-in away after the
    code was taken: the enrolment stays, and its recovery codes are shown
    once the person makes room, with the next code."""
    client = await start(users=USERS, mfa={"totp": "required"},
                         session={"max_per_user": 1, "on_limit": "refuse"})
    step = await (await form_login(client)).text()
    secret = secret_on(step)
    gw = client.app[GATEWAY]
    # Another device holds the one place.
    user = gw.users.get("alice")
    await gw.sessions.start(user, remember=False, ip="198.51.100.7", user_agent="other")
    r = await form_code(client, step, code(secret, clock))
    page = await r.text()
    assert r.status == 409 and 'name="make_room"' in page and "<svg" not in page
    assert (await gw.store.mfa_get("alice")) is not None
    r = await form_code(client, page, code(secret, clock, +1), make_room="1")
    assert r.status == 200 and len(codes_on(await r.text())) == 10
    assert "gateway_session" in r.cookies


async def enrolled_after_sign_in(start: Any, clock: Clock) -> tuple[Any, Any]:
    """Alice signed in, then enrolled elsewhere: a session /2fa can verify,
    and a way to send it a code."""
    client = await start(users=USERS)
    await form_login(client)
    gw = client.app[GATEWAY]
    await gw.store.mfa_enrol("alice", gw.sessions.mfa._encrypt("alice", SECRET), [], clock())
    page = await (await client.get("/_gateway/2fa")).text()

    async def verify(otp: str) -> Any:
        return await client.post("/_gateway/2fa", allow_redirects=False, data={
            "csrf_token": csrf_of(page), "action": "verify", "otp": otp, "rd": ""})
    return client, verify


# -- what the review found ---------------------------------------------------------------

async def test_a_policy_or_role_applies_to_sessions_already_running(start, tmp_path, clock):
    client = await start(users=USERS, mfa={"required_for_roles": ["admin"]})
    token = (await json_login(client)).set_cookies()["gateway_session"]
    token = token.split("=", 1)[1].split(";", 1)[0]
    assert (await send(client, "GET", "/x", token=token)).status == 200
    # Alice is made an admin while signed in: her session must now be verified.
    write_users(tmp_path, [{**USERS[0], "roles": ["admin"]}, *USERS[1:]])
    r = await send(client, "GET", "/x", token=token, accept="text/html")
    assert r.status == 403 and 'href="/_gateway/2fa?rd=%2Fx"' in r.text
    r = await send(client, "GET", "/_gateway/api/admin/stats", token=token)
    assert (r.status, r.json()["error"]) == (403, "FORBIDDEN")
    assert "two-step verification" in r.json()["message"]
    # /2fa, the sessions page and signing out still work for her.
    assert (await send(client, "GET", "/_gateway/2fa", token=token,
                       accept="text/html")).status == 200
    assert (await send(client, "GET", "/_gateway/api/sessions", token=token)).status == 200


async def test_codes_are_throttled_even_with_throttling_off(start, clock):
    client = await start(throttle={"enabled": False})
    for _ in range(5):
        assert (await json_login(client, "000001")).json()["error"] == "OTP_INVALID"
    assert (await json_login(client, code(SECRET, clock))).status == 429
    for _ in range(8):                              # passwords are not throttled
        assert (await json_login(client, password="wrong")).status == 401


async def test_a_stolen_cookie_cannot_block_its_owner_at_the_code_step(start, clock):
    client, verify = await enrolled_after_sign_in(start, clock)
    for _ in range(5):
        assert (await verify("000001")).status == 401
    r = await verify(code(SECRET, clock))
    assert r.status == 429 and "Retry-After" in r.headers
    # The owner, signing in elsewhere with her code, is not blocked.
    assert (await json_login(client, code(SECRET, clock))).status == 200


async def test_verifying_with_a_code_is_not_a_password_re_entry(start, clock):
    client = await start(users=USERS)
    gw = client.app[GATEWAY]
    await form_login(client)
    await gw.sessions.start(gw.users.get("alice"), remember=False, ip="198.51.100.7",
                            user_agent="another device")
    await gw.store.mfa_enrol("alice", gw.sessions.mfa._encrypt("alice", SECRET), [], clock())
    clock.advance(700)                              # past session.reauth_after (10m)
    page = await (await client.get("/_gateway/2fa")).text()
    r = await client.post("/_gateway/2fa", allow_redirects=False, data={
        "csrf_token": csrf_of(page), "action": "verify", "otp": code(SECRET, clock),
        "rd": ""})
    assert r.status == 303
    r = await client.post("/_gateway/api/sessions/revoke-others", json={})
    assert (r.status, (await r.json())["error"]) == (401, "REAUTH_REQUIRED")


async def test_two_codes_racing_for_one_held_sign_in_start_one_session(start, clock):
    import asyncio
    client = await start()
    step = await (await form_login(client)).text()
    results = await asyncio.gather(form_code(client, step, code(SECRET, clock)),
                                   form_code(client, step, code(SECRET, clock, +1)))
    assert sorted(r.status for r in results) == [303, 401]
    assert len(await client.app[GATEWAY].store.user_sessions("alice")) == 1


async def test_a_user_disabled_between_the_steps_is_refused(start, tmp_path, clock):
    client = await start()
    step = await (await form_login(client)).text()
    write_users(tmp_path, [{**u, "disabled": True} if u["username"] == "alice" else u
                           for u in WITH_SECRET])
    r = await form_code(client, step, code(SECRET, clock))
    assert r.status == 401 and "gateway_session" not in r.cookies


async def test_hostile_codes_are_refused_cleanly(start, clock):
    client = await start()
    for otp in (123456, ["1"], {"a": 1}, True):
        r = await json_login(client, otp)
        assert (r.status, r.json()["error"]) == (400, "BAD_REQUEST")
    for otp in ("\ud800" * 3, "x" * 5000, "１２３４５６", "12 34 56 78", ""):
        r = await json_login(client, otp)
        assert r.status == 401, otp
    step = await (await form_login(client)).text()
    form = aiohttp.FormData({"csrf_token": csrf_of(step), "rd": "/"})
    form.add_field("otp", io.BytesIO(b"\xff\xfe"), filename="code.txt")   # a file, not text
    r = await client.post("/_gateway/login", data=form)
    assert r.status == 401 and "not right" in await r.text()


async def test_the_page_answers_503_while_the_store_is_down(redis_factory, upstream,
                                                          make_config, gateway, tmp_path,
                                                          clock):
    redis = redis_factory()
    write_users(tmp_path, WITH_SECRET)
    client = await gateway(make_config(str(upstream.make_url("/")), session={
        "store": "redis", "redis": {"url": redis.url}}), clock=clock)
    await form_login(client, user="admin", password="admin-pw")
    page = await (await client.get("/_gateway/2fa")).text()
    redis.stop()
    r = await client.post("/_gateway/2fa", data={
        "csrf_token": csrf_of(page), "action": "enrol", "otp": "123456",
        "password": "admin-pw"})
    assert r.status == 503
    assert (await client.get("/_gateway/2fa")).status == 503


async def test_a_right_password_does_not_reset_the_count_of_wrong_codes(start, clock):
    client, verify = await enrolled_after_sign_in(start, clock)
    for _ in range(4):
        assert (await verify("000001")).status == 401
    sessions = await (await client.get("/_gateway/sessions")).text()
    r = await client.post("/_gateway/sessions", data={
        "csrf_token": csrf_of(sessions), "action": "confirm", "password": "alice-pw"})
    assert r.status == 200
    assert (await verify("000001")).status == 401
    assert (await verify(code(SECRET, clock))).status == 429


async def test_a_session_ended_while_it_is_verified_is_not_renewed(start, clock):
    from gateway.auth.sessions import AuthError
    client = await start()
    gw = client.app[GATEWAY]
    user = gw.users.get("alice")
    session = await gw.sessions.start(user, remember=False, ip="198.51.100.7", user_agent="ua")
    identity = await gw.sessions.authenticate(gw.sessions.tokens.issue(session),
                                              ip="198.51.100.7", user_agent="ua")
    await gw.sessions.lock("alice", "admin:admin")         # lands mid-way
    with pytest.raises(AuthError):
        await gw.sessions.step_up(identity, code(SECRET, clock), ip="198.51.100.7",
                                  user_agent="ua")
    assert await gw.store.user_sessions("alice") == []
