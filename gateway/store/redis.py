"""Sessions in Redis: shared by every worker and every gateway instance.

Key layout (``gw`` is ``session.redis.key_prefix``; ``{tag}`` is a hash of
the username, so all keys of one user share a Redis Cluster hash slot and
multi-key scripts stay legal there):

    gw:{tag}:s:<sid>   the session, JSON, PX = until idle (or absolute) expiry
    gw:{tag}:idx       sorted set of the user's session ids, scored by expiry
    gw:{tag}:t:<sid>   tombstone: why it was revoked, until it would have expired
    gw:revoked         pub/sub channel: the id of every revoked session

Every key carries a TTL, so nothing outlives its purpose if a gateway dies.
Calls are bounded by ``session.redis.timeout``; any failure becomes
StoreUnavailable so the caller fails closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..config import RedisConfig
from .base import Session, SessionStore, StoreUnavailable

T = TypeVar("T")

_CREATE = """
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], top[2])
return 1
"""

_REVOKE = """
local raw = redis.call('GET', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if not raw then return 0 end
redis.call('DEL', KEYS[1])
local ms = 60000
local ok, s = pcall(cjson.decode, raw)
if ok and type(s) == 'table' and type(s.expires_at) == 'number' then
  ms = math.floor(s.expires_at * 1000 - tonumber(ARGV[3]))
end
if ms > 0 then redis.call('SET', KEYS[3], ARGV[2], 'PX', ms) end
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
"""


# How quickly a worker notices that Redis stopped answering its revocation
# feed, and so stops serving sessions from its cache: at most FEED_SILENCE.
FEED_PING = 0.25
FEED_SILENCE = 0.75


def user_tag(username: str) -> str:
    """A fixed-length, key-safe stand-in for the username (the hash slot tag)."""
    return hashlib.sha256(username.encode()).hexdigest()[:20]


class RedisSessionStore(SessionStore):
    def __init__(self, config: RedisConfig, client: aioredis.Redis | None = None) -> None:
        self.config = config
        self.prefix = config.key_prefix
        self.channel = f"{config.key_prefix}:revoked"
        self.redis = client or aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                config.url,
                socket_timeout=config.timeout,
                socket_connect_timeout=config.timeout,
                # One retry on a fresh connection covers a Redis restart; more
                # would multiply how long a request waits on a dead Redis.
                retry=Retry(NoBackoff(), 1),
                health_check_interval=30,
                max_connections=config.max_connections,
                timeout=config.timeout))
        self._create = self.redis.register_script(_CREATE)
        self._revoke = self.redis.register_script(_REVOKE)

    # -- keys --------------------------------------------------------------
    def session_key(self, username: str, sid: str) -> str:
        return f"{self.prefix}:{{{user_tag(username)}}}:s:{sid}"

    def index_key(self, username: str) -> str:
        return f"{self.prefix}:{{{user_tag(username)}}}:idx"

    def tombstone_key(self, username: str, sid: str) -> str:
        return f"{self.prefix}:{{{user_tag(username)}}}:t:{sid}"

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None

    # -- interface ---------------------------------------------------------
    async def create(self, session: Session) -> None:
        now = time.time()
        ttl_ms = max(1, int((session.idle_expires_at - now) * 1000))
        await self._call(lambda: self._create(
            keys=[self.session_key(session.username, session.id),
                  self.index_key(session.username)],
            args=[session.id, session.dumps(), ttl_ms,
                  int(session.expires_at * 1000), int(now * 1000)]))

    async def get(self, username: str, sid: str) -> Session | None:
        raw = await self._call(lambda: self.redis.get(self.session_key(username, sid)))
        if raw is None:
            return None
        session = Session.loads(raw)
        if session is None or session.username != username or not session.alive(time.time()):
            return None
        return session

    async def touch(self, session: Session) -> bool:
        ttl_ms = int((session.idle_expires_at - time.time()) * 1000)
        if ttl_ms <= 0:
            return False
        key = self.session_key(session.username, session.id)
        # XX: only if it still exists, so a concurrent revoke is never undone.
        done = await self._call(lambda: self.redis.set(key, session.dumps(), px=ttl_ms, xx=True))
        return bool(done)

    async def revoke(self, username: str, sid: str, reason: str) -> bool:
        done = await self._call(lambda: self._revoke(
            keys=[self.session_key(username, sid), self.index_key(username),
                  self.tombstone_key(username, sid)],
            args=[sid, reason, int(time.time() * 1000), self.channel]))
        return bool(done)

    async def revocation_reason(self, username: str, sid: str) -> str | None:
        raw = await self._call(lambda: self.redis.get(self.tombstone_key(username, sid)))
        return raw.decode() if raw else None

    async def user_sessions(self, username: str) -> list[Session]:
        sids = await self._call(lambda: self.redis.zrange(self.index_key(username), 0, -1))
        if not sids:
            return []
        ids = [s.decode() for s in sids]
        raws = await self._call(lambda: self.redis.mget(
            [self.session_key(username, sid) for sid in ids]))
        now = time.time()
        live, gone = [], []
        for sid, raw in zip(ids, raws):
            session = Session.loads(raw) if raw else None
            if session and session.alive(now):
                live.append(session)
            else:
                gone.append(sid)
        if gone:
            await self._call(lambda: self.redis.zrem(self.index_key(username), *gone))
        return sorted(live, key=lambda s: s.created_at)

    async def all_sessions(self) -> list[Session]:
        return await self._scan(f"{self.prefix}:{{*}}:s:*")

    async def find(self, sid: str) -> Session | None:
        # SCAN MATCH is a glob: an id with * ? [ in it must not match others.
        found = await self._scan(f"{self.prefix}:{{*}}:s:{sid}")
        return next((s for s in found if s.id == sid), None)

    async def _scan(self, pattern: str) -> list[Session]:
        async def run() -> list[Any]:
            keys = [k async for k in self.redis.scan_iter(match=pattern, count=1000)]
            if not keys:
                return []
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                return await pipe.execute()
        now = time.time()
        sessions = [Session.loads(raw) for raw in await self._call(run) if raw]
        return sorted((s for s in sessions if s and s.alive(now)),
                      key=lambda s: s.created_at)

    async def watch_revocations(self, on_ready: Callable[[], None],
                                on_revoked: Callable[[str], None]) -> None:
        """Subscribe on a connection of its own, with no silent reconnects.

        redis-py would otherwise reconnect and resubscribe by itself, and
        messages published in between would be lost unnoticed. Here any
        error, or FEED_SILENCE seconds without an answer to the ping sent
        every FEED_PING seconds, ends the watch so the caller stops trusting
        its cache. (A false alarm under load only costs a cache refill.)
        """
        timeout = self.config.timeout
        client = aioredis.Redis.from_url(self.config.url, socket_timeout=timeout,
                                         socket_connect_timeout=timeout,
                                         retry=Retry(NoBackoff(), 0))
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            heard = pinged = time.monotonic()
            task = asyncio.current_task()
            while True:
                message = await pubsub.get_message(timeout=0.05)
                # A cancel that lands on get_message's own timeout comes back
                # as None (asyncio.timeout on 3.11); without this the worker
                # never finishes shutting down.
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError()
                now = time.monotonic()
                if message is not None:
                    heard = now
                    if message["type"] == "subscribe":
                        on_ready()
                    elif message["type"] == "message":
                        on_revoked(message["data"].decode())
                if now - heard > FEED_SILENCE:
                    raise StoreUnavailable("revocation feed went quiet")
                if now - pinged >= FEED_PING:
                    await pubsub.ping()
                    pinged = now
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None
        finally:
            try:
                await pubsub.aclose()
                await client.aclose()
            except (RedisError, OSError, TimeoutError):
                pass

    async def ping(self) -> None:
        await self._call(self.redis.ping)

    async def close(self) -> None:
        await self.redis.aclose()
