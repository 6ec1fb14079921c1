"""The ``gateway`` command: run, check-config, hash-password, sessions, demo."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time

from argon2 import PasswordHasher

from .config import Config, ConfigError, default_config_path, load_config
from .users import canonical_username, load_users_file


def _load(path: str | None) -> Config:
    """The config and its users file, fully validated, or ConfigError."""
    config = load_config(path or default_config_path())
    load_users_file(config.users_file)
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
    from .server import serve
    try:
        return serve(config)
    except ConfigError as exc:  # e.g. an unreadable assertion key
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"listen: cannot listen on {config.listen[0]}:{config.listen[1]} ({exc.strerror})",
              file=sys.stderr)
        return 1


def cmd_hash_password(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("the passwords do not match", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("the password is empty", file=sys.stderr)
        return 1
    print(PasswordHasher().hash(password))
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config or default_config_path())
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    if config.session.store == "memory":
        print("session.store: the memory store lives inside the running gateway; "
              "sessions can only be managed from outside with session.store: redis",
              file=sys.stderr)
        return 1
    return asyncio.run(_sessions(config, args))


async def _sessions(config: Config, args: argparse.Namespace) -> int:
    from .store import REASON_REVOKED, StoreUnavailable, create_store
    store = create_store(config.session)
    try:
        if args.action == "list":
            sessions = (await store.user_sessions(canonical_username(args.user)) if args.user
                        else await store.all_sessions())
            print(f"{'ID':<44} {'USER':<20} {'CREATED':<20} {'LAST SEEN':<20} IP")
            for s in sessions:
                print(f"{s.id:<44} {s.username:<20} {_when(s.created_at):<20} "
                      f"{_when(s.last_seen_at):<20} {s.ip}")
            return 0
        if args.user:
            ended = await store.revoke_user(canonical_username(args.user), REASON_REVOKED)
        else:
            found = await store.find(args.id)
            ended = int(bool(found and await store.revoke(found.username, found.id, REASON_REVOKED)))
        print(f"revoked {ended} session{'s' if ended != 1 else ''}")
        return 0 if ended or args.user else 1
    except StoreUnavailable:
        print(f"session.redis.url: the session store is unreachable", file=sys.stderr)
        return 1
    finally:
        await store.close()


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo(args.port)


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

    p = sub.add_parser("demo", help="a bundled legacy app behind the gateway (no Redis needed)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
