"""The users file as the gateway lives with it: matching, sameness, reloads."""

from __future__ import annotations

import asyncio
import copy
import re
from typing import Any

import jwt
import pytest

from authkit import COOKIE, api_login, csrf_of, replace_users, send, session_status
from conftest import USERS, seen_headers, write_users
from gateway.store import create_store


def users_with(**changes: dict[str, Any]) -> list[dict[str, Any]]:
    """USERS with per-user field changes: ``users_with(alice={"disabled": True})``."""
    out = copy.deepcopy(USERS)
    for u in out:
        u.update(changes.get(u["username"], {}))
    return out



async def eventually(check: Any, timeout: float = 3.0) -> None:
    """Poll an async condition (the store is updated by a background task)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


def _sid(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["sid"]


# -- matching --------------------------------------------------------------------

@pytest.mark.parametrize("typed, user", [
    (" ALICE ", "alice"), ("ALICE", "alice"), ("Alice", "alice"), ("\talice\n", "alice"),
    ("admin", "Admin"), ("ADMIN", "Admin"), (" Admin", "Admin"),
])
async def test_usernames_match_case_insensitively_after_trimming(upstream, make_config, gateway,
                                                                 typed, user):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    password = "alice-pw" if user == "alice" else "admin-pw"
    resp = await client.post("/_gateway/api/login", json={"username": typed, "password": password})
    assert resp.status == 200
    assert (await resp.json())["user"]["username"] == user
    body = await (await client.get("/x")).json()
    assert seen_headers(body)["x-auth-user"] == [user]


async def test_form_login_trims_and_folds_too(upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    page = await (await client.get("/_gateway/login")).text()
    resp = await client.post("/_gateway/login", allow_redirects=False,
                             data={"username": " ALICE ", "password": "alice-pw", "rd": "/",
                                   "csrf_token": csrf_of(page)})
    assert resp.status == 303
    assert (await (await client.get("/_gateway/api/session")).json())["user"]["username"] == "alice"


@pytest.mark.parametrize("typed", [
    "al ice", "alice.", "alice\x00", "ａｌｉｃｅ",      # fullwidth letters are another name
    "ALİCE",                                          # dotted capital I is not I
    "alic", "alice2", "*", "alice\u200b",
])
async def test_lookalike_usernames_do_not_match(upstream, make_config, gateway, typed):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    resp = await client.post("/_gateway/api/login", json={"username": typed, "password": "alice-pw"})
    assert resp.status == 401


async def test_sessions_of_differently_typed_names_are_one_user(upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/")),
                                       session={"max_per_user": 1}))
    first = await api_login(client, " ALICE ", "alice-pw")
    await api_login(client, "alice", "alice-pw")
    # One user, so the cap of one pushed the first out.
    status, body = await session_status(client, first)
    assert (status, body["error"]) == (401, "SESSION_REVOKED")


# -- failures look alike -------------------------------------------------------------

FAILURES = {"unknown": ("mallory", "alice-pw"), "wrong-password": ("alice", "not-it"),
            "disabled": ("dave", "dave-pw")}


async def test_failures_look_alike_on_the_api(upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    seen = {}
    for kind, (username, password) in FAILURES.items():
        r = await send(client, "POST", "/_gateway/api/login",
                       json={"username": username, "password": password})
        seen[kind] = (r.status, r.body, sorted(r.set_cookies()),
                      sorted(k.lower() for k in r.headers if k.lower() != "date"))
    assert seen["unknown"] == seen["wrong-password"] == seen["disabled"], seen
    assert seen["unknown"][0] == 401
    assert COOKIE not in seen["unknown"][2]


async def test_failures_look_alike_on_the_form(upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    csrf = csrf_of(await (await client.get("/_gateway/login")).text())
    seen = {}
    for kind, (username, password) in FAILURES.items():
        resp = await client.post("/_gateway/login", allow_redirects=False,
                                 data={"username": username, "password": password, "rd": "/",
                                       "csrf_token": csrf})
        page = (await resp.text()).replace(f'value="{username}"', 'value="NAME"')
        seen[kind] = (resp.status, page,
                      sorted(c.split("=", 1)[0] for c in resp.headers.getall("Set-Cookie", [])))
    assert seen["unknown"] == seen["wrong-password"] == seen["disabled"], seen
    assert seen["unknown"][0] == 401
    assert COOKIE not in seen["unknown"][2]


# -- the users file changes under a running gateway ---------------------------------------

@pytest.mark.parametrize("how", ["in-place", "rename"])
async def test_disabling_a_user_takes_effect_at_once_and_ends_her_sessions(
        upstream, make_config, gateway, tmp_path, store_settings, how):
    config = make_config(str(upstream.make_url("/")), session=store_settings)
    store = create_store(config.session)       # the gateway's own store, to look into
    client = await gateway(config, store=store)
    laptop, phone = await api_login(client), await api_login(client)
    admin = await api_login(client, "Admin", "admin-pw")
    assert (await send(client, "GET", "/x", token=laptop)).status == 200
    assert (await send(client, "GET", "/x", token=laptop)).status == 200   # cached, if caching

    disabled = users_with(alice={"disabled": True})
    if how == "in-place":
        write_users(tmp_path, disabled)
    else:
        replace_users(tmp_path, disabled)

    r = await send(client, "GET", "/x", token=laptop)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")

    async def none_left() -> bool:
        return await store.user_sessions("alice") == []
    await eventually(none_left)
    ended = await store.ended("alice", _sid(phone))
    assert (ended.status, ended.reason, ended.actor) == ("REVOKED", "user_disabled", "users-file")
    status, body = await session_status(client, phone)
    assert (status, body["error"]) == (401, "SESSION_REVOKED")
    assert (await send(client, "GET", "/x", token=admin)).status == 200
    r = await send(client, "POST", "/_gateway/api/login",
                   json={"username": "alice", "password": "alice-pw"})
    assert r.status == 401


async def test_a_disabled_user_loses_sessions_even_if_she_never_comes_back(
        upstream, make_config, gateway, tmp_path, store_settings, monkeypatch):
    # No background poll in this test: only the other user's request can notice.
    monkeypatch.setattr("gateway.app.USERS_POLL", 3600.0)
    config = make_config(str(upstream.make_url("/")), session=store_settings)
    store = create_store(config.session)
    client = await gateway(config, store=store)
    await api_login(client)
    await api_login(client)
    admin = await api_login(client, "Admin", "admin-pw")
    assert len(await store.user_sessions("alice")) == 2
    replace_users(tmp_path, users_with(alice={"disabled": True}))
    # Someone else's request notices the change.
    assert (await send(client, "GET", "/x", token=admin)).status == 200

    async def none_left() -> bool:
        return await store.user_sessions("alice") == []
    await eventually(none_left)
    assert len(await store.user_sessions("admin")) == 1


async def test_a_disabled_user_loses_sessions_with_no_requests_at_all(
        upstream, make_config, gateway, tmp_path, store_settings):
    """The worker re-checks the users file on its own every 2 s."""
    config = make_config(str(upstream.make_url("/")), session=store_settings)
    store = create_store(config.session)
    client = await gateway(config, store=store)
    await api_login(client)
    replace_users(tmp_path, users_with(alice={"disabled": True}))

    async def none_left() -> bool:
        return await store.user_sessions("alice") == []
    await eventually(none_left, timeout=5.0)


async def test_removing_a_user_ends_her_sessions(upstream, make_config, gateway, tmp_path):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    token = await api_login(client)
    replace_users(tmp_path, [u for u in USERS if u["username"] != "alice"])
    r = await send(client, "GET", "/x", token=token)
    assert (r.status, r.json()["error"]) == (401, "SESSION_REVOKED")


async def test_re_enabling_does_not_revive_old_sessions(upstream, make_config, gateway, tmp_path):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    token = await api_login(client)
    replace_users(tmp_path, users_with(alice={"disabled": True}))
    assert (await send(client, "GET", "/x", token=token)).status == 401
    replace_users(tmp_path, USERS)
    assert (await send(client, "GET", "/x", token=token)).status == 401
    assert await api_login(client)


async def test_removing_a_role_gives_403_on_the_next_request(upstream, make_config, gateway,
                                                             tmp_path, store_settings):
    client = await gateway(make_config(str(upstream.make_url("/")), session=store_settings))
    token = await api_login(client, "Admin", "admin-pw")
    r = await send(client, "GET", "/admin/users", token=token)
    assert r.status == 200
    assert seen_headers(r.json())["x-auth-roles"] == ["admin,user"]
    replace_users(tmp_path, users_with(Admin={"roles": ["user"]}))
    r = await send(client, "GET", "/admin/users", token=token)
    assert (r.status, r.json()["error"]) == (403, "FORBIDDEN")
    # Still signed in, with the new roles everywhere the upstream looks.
    r = await send(client, "GET", "/x", token=token)
    assert r.status == 200
    headers = seen_headers(r.json())
    assert headers["x-auth-roles"] == ["user"]
    claims = jwt.decode(headers["x-auth-assertion"][0], options={"verify_signature": False})
    assert claims["roles"] == ["user"]
    status, body = await session_status(client, token)
    assert body["user"]["roles"] == ["user"]


async def test_a_new_user_can_sign_in_without_restart(upstream, make_config, gateway, tmp_path):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    extra = {"username": "erin", "password": "erin-pw", "email": "e@example.com",
             "name": "Erin", "roles": ["user"]}
    replace_users(tmp_path, [*USERS, extra])
    assert await api_login(client, "erin", "erin-pw")


BROKEN = [
    "users: [ {",                                       # not YAML
    "users: 5",                                         # wrong shape
    "users:\n  - {username: alice}\n",                  # no hash
    "users:\n  - {username: alice, password_hash: plain}\n",   # not argon2id
    "users:\n  - {username: alice, password_hash: '$argon2id$x', rolez: [admin]}\n",
    "",                                                 # truncated to nothing
    "# only a comment\n",
    "{}",
    "\x00\x01\x02",
]


@pytest.mark.parametrize("content", BROKEN)
async def test_a_broken_users_file_keeps_the_last_good_copy(upstream, make_config, gateway,
                                                            tmp_path, content):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    alice = await api_login(client)
    admin = await api_login(client, "Admin", "admin-pw")
    (tmp_path / "users.yaml").write_text(content)
    assert (await send(client, "GET", "/x", token=alice)).status == 200
    assert (await send(client, "GET", "/admin", token=admin)).status == 200
    assert await api_login(client)
    r = await send(client, "POST", "/_gateway/api/login",
                   json={"username": "dave", "password": "dave-pw"})
    assert r.status == 401                                   # still disabled
    # A good file afterwards is picked up again.
    replace_users(tmp_path, users_with(alice={"disabled": True}))
    assert (await send(client, "GET", "/x", token=alice)).status == 401


async def test_a_deleted_users_file_keeps_the_last_good_copy(upstream, make_config, gateway,
                                                             tmp_path):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    alice = await api_login(client)
    (tmp_path / "users.yaml").unlink()
    assert (await send(client, "GET", "/x", token=alice)).status == 200
    assert await api_login(client)
    write_users(tmp_path, users_with(alice={"roles": ["user", "admin"]}))
    assert (await send(client, "GET", "/admin", token=alice)).status == 200


async def test_users_hash_is_never_revealed(upstream, make_config, gateway):
    client = await gateway(make_config(str(upstream.make_url("/"))))
    resp = await client.post("/_gateway/api/login",
                             json={"username": "alice", "password": "alice-pw"})
    text = await resp.text() + await (await client.get("/_gateway/api/session")).text()
    text += await (await client.get("/x")).text()
    assert "$argon2" not in text and not re.search(r"password_hash", text)


def test_the_dummy_hash_costs_what_a_real_one_does(tmp_path):
    """Unknown users are checked against a hash with the users' own argon2 parameters,
    so a failed sign-in takes as long whichever way it failed."""
    from argon2 import extract_parameters

    from gateway.auth.users import dummy_hash, load_users_file
    users = load_users_file(write_users(tmp_path))
    dummy = dummy_hash(users.values())
    assert extract_parameters(dummy) == extract_parameters(users["alice"].password_hash)


@pytest.mark.parametrize("content", ["", "# nothing\n", "{}", "users:\n"])
def test_an_empty_users_file_is_an_error_not_zero_users(tmp_path, content):
    from gateway.config import ConfigError
    from gateway.auth.users import load_users_file
    (tmp_path / "users.yaml").write_text(content)
    with pytest.raises(ConfigError) as err:
        load_users_file(tmp_path / "users.yaml")
    assert any("users: is required" in p for p in err.value.problems), err.value.problems


def test_an_explicitly_empty_user_list_is_allowed(tmp_path):
    from gateway.auth.users import load_users_file
    (tmp_path / "users.yaml").write_text("users: []\n")
    assert load_users_file(tmp_path / "users.yaml") == {}
