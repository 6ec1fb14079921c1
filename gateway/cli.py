"""The ``gateway`` command: run, check-config, hash-password, sessions, demo."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher

from .config import Config, ConfigError, default_config_path, load_config
from .config.values import parse_listen
from .auth.users import canonical_username, load_users_file

if TYPE_CHECKING:
    from .store import Session, SessionStore


def _load(path: str | None) -> Config:
    """The config and its users file, fully validated, or one ConfigError with
    every problem of both (the users file is checked even when the config has
    other problems, as long as ``users.file`` itself could be read)."""
    problems: list[str] = []
    config: Config | None = None
    try:
        config = load_config(path or default_config_path())
        users_file = config.users_file
    except ConfigError as exc:
        problems += exc.problems
        users_file = exc.users_file
    if users_file is not None:
        try:
            load_users_file(users_file)
        except ConfigError as exc:
            problems += exc.problems
    if config is not None and config.geoip_database is not None:
        from .auth.geo import Locator
        try:
            Locator(config.geoip_database).close()
        except ConfigError as exc:
            problems += exc.problems
    if config is not None:
        from .auth.assertion import check_key_file
        try:
            check_key_file(config.assertion_key_file)
        except ConfigError as exc:
            problems += exc.problems
    if problems or config is None:
        raise ConfigError(problems)
    return config


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        _load(args.config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    print("ok")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    from .server import cannot_listen, serve
    try:
        return serve(config)
    except ConfigError as exc:  # e.g. an unreadable assertion key
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"listen: {cannot_listen(*config.listen, exc)}", file=sys.stderr)
        return 1


def cmd_hash_password(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Again: ")
        except EOFError:  # Ctrl-D; the prompt is left without a line end
            print("\nthe input ended (Ctrl-D): nothing was hashed", file=sys.stderr)
            return 1
        if again != password:
            print("the passwords do not match", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("the password is empty", file=sys.stderr)
        return 1
    print(PasswordHasher().hash(password))
    return 0


def _shared_store(args: argparse.Namespace, what: str) -> Config | None:
    """The config, when its store can be reached from outside the gateway."""
    try:
        config = load_config(args.config or default_config_path())
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return None
    if config.session.store == "memory":
        print(f"session.store: the memory store lives inside the running gateway; "
              f"{what} can only be reached from outside with session.store: redis",
              file=sys.stderr)
        return None
    return config


def cmd_sessions(args: argparse.Namespace) -> int:
    config = _shared_store(args, "sessions")
    return 1 if config is None else asyncio.run(_sessions(config, args))


async def _sessions(config: Config, args: argparse.Namespace) -> int:
    from .store import REVOKED_BY_ADMIN

    async def act(store: Any, service: Any, audit: Any) -> int:
        if args.action == "list":
            print(f"{'ID':<44} {'USER':<20} {'CREATED':<20} {'LAST SEEN':<20} IP")
            async for s in _every_session(store, args.user):
                print(f"{s.id:<44} {s.username:<20} {_when(s.created_at):<20} "
                      f"{_when(s.last_seen_at):<20} {s.ip}")
            return 0
        if args.user:
            ended = await service.end_all(canonical_username(args.user), REVOKED_BY_ADMIN, "cli")
        else:
            found = await store.find(args.id)
            ended = int(bool(found and await service.end(found.username, found.id,
                                                         REVOKED_BY_ADMIN, "cli")))
        await audit.flush()
        if not ended:
            print(f"{args.user!r} has no live sessions" if args.user else
                  "no live session has that id", file=sys.stderr)
            return 1
        print(f"revoked {ended} session{'s' if ended != 1 else ''}")
        return 0
    return await _operator(config, act)


async def _operator(config: Config, act: Callable[[Any, Any, Any], Awaitable[int]]) -> int:
    """Runs ``act(store, service, audit)`` with the store, the one session
    lifecycle of the running gateway (ended records, the feed to every
    worker's cache, one event each; the actor is the CLI) and an audit
    trail recording it like a worker's; its exit code, or 1 when audit.file
    cannot be opened or the store cannot be reached."""
    from .audit.trail import AuditTrail
    from .auth.sessions import SessionService
    from .store import StoreUnavailable, create_store
    store = create_store(config.session)
    try:
        # audit.file "-" would mix the records into this command's output,
        # so the CLI leaves it out.
        audit = AuditTrail(config, store, to_stdout=False)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        await store.close()
        return 1
    service = SessionService(config, store, users=None, tokens=None, watch=False)
    service.events.subscribe(audit.record)
    try:
        return await act(store, service, audit)
    except StoreUnavailable:
        print("session.redis.url: the session store is unreachable", file=sys.stderr)
        return 1
    finally:
        audit.close()
        await store.close()


def cmd_throttle(args: argparse.Namespace) -> int:
    config = _shared_store(args, "login blocks")
    return 1 if config is None else asyncio.run(_throttle(config, args))


async def _throttle(config: Config, args: argparse.Namespace) -> int:
    from .auth.events import THROTTLE_CLEARED, SessionEvent
    from .auth.throttle import address_key

    async def act(store: Any, service: Any, audit: Any) -> int:
        blocks = await store.throttle_blocks()
        if args.action == "list":
            print(f"{'KIND':<8} {'USER':<24} {'IP':<40} UNTIL")
            for b in blocks:
                print(f"{b.info.get('kind', ''):<8} {b.info.get('user', '-'):<24} "
                      f"{b.info.get('ip', '-'):<40} {_when(b.until)}")
            return 0
        user = canonical_username(args.user)[:128] if args.user else None
        ip = address_key(args.ip) if args.ip else None      # an IPv6 address: its /64
        chosen = [b.key for b in blocks if args.all or
                  (user is not None and b.info.get("user") == user) or
                  (ip is not None and b.info.get("ip") == ip)]
        lifted = await store.throttle_clear(chosen)
        if lifted:
            service.events.emit(SessionEvent(
                THROTTLE_CLEARED, None, time.time(), actor="cli", user=user or "",
                ip=ip or "", details={"blocks": str(lifted)}))
            await audit.flush()
        print(f"lifted {lifted} block{'s' if lifted != 1 else ''}")
        return 0
    return await _operator(config, act)


def cmd_totp(args: argparse.Namespace) -> int:
    config = _shared_store(args, "enrolled second factors")
    return 1 if config is None else asyncio.run(_totp_reset(config, args.user))


async def _totp_reset(config: Config, username: str) -> int:
    """Removes a user's enrolled TOTP secret and recovery codes (a lost
    phone): they sign in with the password alone, or enrol again when the
    policy requires a factor. Their sessions go on."""
    from .auth.events import MFA_RESET, SessionEvent
    user = canonical_username(username)

    async def act(store: Any, service: Any, audit: Any) -> int:
        if not await service.mfa.reset(user):
            print(f"{username!r} has no enrolled second factor (a totp_secret in the users "
                  "file is removed there)", file=sys.stderr)
            return 1
        service.events.emit(SessionEvent(MFA_RESET, None, time.time(), actor="cli", user=user))
        await audit.flush()
        print(f"removed the second factor and recovery codes of {username!r} (their sessions "
              f"go on: 'gateway sessions revoke --user {username}' ends them)")
        return 0
    return await _operator(config, act)


def cmd_audit(args: argparse.Namespace) -> int:
    config = _shared_store(args, "the audit trail (see the admin console)")
    return 1 if config is None else asyncio.run(_audit(config, args))


async def _audit(config: Config, args: argparse.Namespace) -> int:
    """One JSON object a line, oldest first."""
    from .audit.search import audit_filter, audit_search, parse_time
    from .store import StoreUnavailable, create_store
    store = create_store(config.session)
    try:
        if args.action == "search":
            since = parse_time(args.since) if args.since else None
            if args.since and since is None:
                print("--since: an ISO 8601 time or Unix seconds", file=sys.stderr)
                return 2
            keep = audit_filter(canonical_username(args.user) if args.user else "",
                                args.type or "", args.ip or "", since)
            found, cursor = await audit_search(store, keep, None, args.limit, since)
            while cursor and len(found) < args.limit:
                more, cursor = await audit_search(store, keep, cursor, args.limit - len(found),
                                                  since)
                found += more
            for record in reversed(found):
                print(json.dumps(record))
            return 0 if found else 1
        page = await store.audit_page(None, args.lines)
        for _, record in reversed(page):
            print(json.dumps(record), flush=True)
        last = page[0][0] if page else "0-0"
        while args.follow:
            await asyncio.sleep(1)
            # Forward from the last one printed, until caught up: none missed.
            while newer := await store.audit_after(last, 500):
                for entry_id, record in newer:
                    print(json.dumps(record), flush=True)
                    last = entry_id
        return 0
    except StoreUnavailable:
        print("session.redis.url: the session store is unreachable", file=sys.stderr)
        return 1
    finally:
        await store.close()


async def _every_session(store: SessionStore, user: str | None) -> AsyncIterator[Session]:
    """Live sessions, a page at a time: one user's, or everybody's."""
    now = time.time()
    if user:
        for session in await store.user_sessions(canonical_username(user)):
            if session.alive(now):
                yield session
        return
    cursor = None
    while True:
        page = await store.list_sessions(cursor, 500)
        for session in page.sessions:
            yield session
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    host, port = args.listen if args.port is None else ("127.0.0.1", args.port)
    return run_demo(host, port)


def _listen_option(value: str) -> tuple[str, int]:
    """``demo --listen``, read as the config reads ``listen``."""
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="Reverse-proxy authentication gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = "config file (default: $GATEWAY_CONFIG, then ./config.yaml)"

    p = sub.add_parser("run", help="serve the gateway")
    p.add_argument("--config", help=config_help)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate the config and users file")
    p.add_argument("--config", help=config_help)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("hash-password", help="read a password on stdin, print an argon2id hash")
    p.set_defaults(func=cmd_hash_password)

    p = sub.add_parser("sessions", help="list or revoke live sessions in the configured store")
    actions = p.add_subparsers(dest="action", required=True)
    lst = actions.add_parser("list")
    lst.add_argument("--user")
    lst.add_argument("--config", help=config_help)
    rev = actions.add_parser("revoke")
    who = rev.add_mutually_exclusive_group(required=True)
    who.add_argument("--user")
    who.add_argument("--id")
    rev.add_argument("--config", help=config_help)
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("throttle", help="login blocks in force, and lifting them")
    actions = p.add_subparsers(dest="action", required=True)
    lst = actions.add_parser("list")
    lst.add_argument("--config", help=config_help)
    clear = actions.add_parser("clear")
    which = clear.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", help="the blocks of this account (as typed at sign-in)")
    which.add_argument("--ip", help="the blocks of this address")
    which.add_argument("--all", action="store_true")
    clear.add_argument("--config", help=config_help)
    p.set_defaults(func=cmd_throttle)

    p = sub.add_parser("totp", help="users' second factors")
    actions = p.add_subparsers(dest="action", required=True)
    reset = actions.add_parser("reset", help="remove a user's enrolled second factor and "
                                             "recovery codes")
    reset.add_argument("--user", required=True)
    reset.add_argument("--config", help=config_help)
    p.set_defaults(func=cmd_totp)

    p = sub.add_parser("audit", help="the audit trail, one JSON object a line")
    actions = p.add_subparsers(dest="action", required=True)
    tail = actions.add_parser("tail", help="the newest events; --follow for more as they come")
    tail.add_argument("--lines", type=int, default=20)
    tail.add_argument("--follow", action="store_true")
    tail.add_argument("--config", help=config_help)
    search = actions.add_parser("search", help="events by user, type, address and time")
    search.add_argument("--user")
    search.add_argument("--type", help='an event type, or a prefix ending in "*"')
    search.add_argument("--ip")
    search.add_argument("--since", help="ISO 8601 time or Unix seconds")
    search.add_argument("--limit", type=int, default=1000)
    search.add_argument("--config", help=config_help)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("demo", help="a bundled legacy app behind the gateway (no Redis needed)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--listen", type=_listen_option, default=("127.0.0.1", 8080),
                       metavar="HOST:PORT",
                       help="default 127.0.0.1:8080; 0.0.0.0:8080 to be reached from outside "
                            "a container")
    where.add_argument("--port", type=int, help="the same as --listen 127.0.0.1:PORT")
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
