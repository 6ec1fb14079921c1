"""Sessions in Redis: shared by every worker and every gateway instance.

Key layout (``gw`` is ``session.redis.key_prefix``; ``{tag}`` is a hash of
the username, so all keys of one user share a Redis Cluster hash slot and
the per-user scripts stay legal there):

    gw:{tag}:s:<sid>   the session, a hash (one field per attribute, ``v`` =
                       record version), until its end plus a short grace
    gw:{tag}:idx       sorted set of the user's session ids, by absolute expiry
    gw:{tag}:e:<sid>   ended record: the session's fields plus status, reason,
                       actor, ended_at, for ``session.history``
    gw:{tag}:ended     sorted set of the user's ended session ids, by ended_at
    gw:{tag}:alerts    sorted set of the user's security alerts (``notify``
                       events, JSON), by time, for ``session.history``, at most 100
    gw:{tag}:x:<sid>   set of the session's findings already recorded (marks)
    gw:o:<sid>         the session's user: find by id in O(1)
    gw:all             sorted set of every session (``tag:sid``), by last
                       activity: the paged global listing
    gw:ip:<ip>         sorted set of the sessions last seen from an address,
                       by last activity: the admin console's filter by IP
    gw:revoked         pub/sub channel: the id of every ended session
    gw:locks           hash: locked users (admin console), no TTL
    gw:audit           stream: the audit trail, trimmed to ``audit.retention``
    gw:th:k:<key>      hash: sign-in attempts counted under a throttle key, its
                       window, its block and what the block is about
    gw:th:blocks       sorted set: the keys blocked, by when the block ends
    gw:{tag}:mfa       hash: the user's second factor (secret encrypted by the
                       gateway, ``at``, ``left``, ``c:<digest>`` per unspent
                       recovery code), no TTL: held until reset
    gw:{tag}:step      the last TOTP time step accepted (the replay guard), minutes
    gw:p:<id>          a sign-in waiting for its one-time code (encrypted), minutes
    gw:rl:<rule>:<digest>  hash: each worker's count in one window of a rate limit
    gw:v:<name>        hash: the version of the config or users file in effect
                       (audit/versions.py), no TTL
    gw:{stats}:<bucket> analytics counters (audit/stats.py): hashes, HyperLogLogs
                       and sorted sets per UTC hour or day, kept a few days;
                       one slot, so one script updates a whole batch

Every key carries a TTL (``gw:all`` is pruned instead), so nothing outlives
its purpose if a gateway dies. TTLs are relative (PEXPIRE), so the
gateway's and Redis's clocks need not agree. A user's own keys change
together in one script; the scripts reach the user's other keys by name,
in the same hash slot as the declared ones (Redis Cluster, where undeclared
keys are frowned upon, is the Cluster issue's to settle). ``gw:o:*`` and
``gw:all`` live in other slots, so they are written beside the scripts, and
a reader treats an entry that points at nothing as gone. Needs Redis 6.2 or
newer (ZADD GT, ZRANGE REV). Calls are bounded by ``session.redis.timeout``;
any failure becomes StoreUnavailable so the caller fails closed.

Records written by the first versions (one JSON string per session, and
``:t:`` tombstones) are still read, and converted the first time they are
written, so an upgrade signs nobody out.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import (ClusterDownError, NoScriptError, RedisClusterException, RedisError,
                              ResponseError, TryAgainError)

from ..config import RedisConfig
from .base import (BUSY_WAIT, EXPIRED_GRACE_MAX, LOGOUT, MAX_FINDINGS, RANK_KEEP,
                   REVOKED_BY_ADMIN, SESSION_LIMIT, USER_DISABLED, AtCapacity, Block, Counts,
                   CountsRead, EndedSession, Ending, Enrolment, Page, Session, SessionStore,
                   StoreUnavailable, Strike, encode_fields)
from ..metrics import STORE_ERRORS, STORE_LATENCY
from .client import connect, connect_node
from .paging import decode_cursor, encode_cursor

T = TypeVar("T")
# What a call to Redis can raise when Redis is down, slow or failing over
# (redis-py's cluster errors, such as a slot nobody serves yet, are not RedisErrors).
FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError)
log = logging.getLogger("gateway.store")

# A legacy record (a JSON string) becomes a hash; every script calls this
# first. Returns the fields (flat) and whether the record was converted.
_LEGACY = """
local function fields_of(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'hash' then return redis.call('HGETALL', key), false end
  if kind ~= 'string' then return nil, false end
  local ok, s = pcall(cjson.decode, redis.call('GET', key))
  if not ok or type(s) ~= 'table' then return nil, false end
  local flat = {}
  for k, v in pairs(s) do
    if type(v) == 'boolean' then v = v and '1' or '0'
    elseif type(v) == 'number' then v = string.format('%.17g', v)
    elseif type(v) ~= 'string' then v = nil end
    if v then flat[#flat + 1] = k; flat[#flat + 1] = v end
  end
  local ttl = redis.call('PTTL', key)
  redis.call('DEL', key)
  redis.call('HSET', key, 'v', '1', unpack(flat))
  if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
  flat[#flat + 1] = 'v'; flat[#flat + 1] = '1'
  return flat, true
end
local function get(flat, name)
  for i = 1, #flat, 2 do if flat[i] == name then return flat[i + 1] end end
  return nil
end
local function alive(flat, now)
  local last, idle, exp = tonumber(get(flat, 'last_seen_at')),
    tonumber(get(flat, 'idle_timeout')), tonumber(get(flat, 'expires_at'))
  if not (last and idle and exp) then return false end
  return now < math.min(last + idle, exp)
end
-- Only ever lengthen a key's life (a TTL is relative: clocks need not agree).
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
-- End one session of this user: keep an ended record, tell every worker.
local function finish(prefix, tag, sid, status, reason, actor, now_ms, history_ms, channel, now)
  local skey = prefix .. ':{' .. tag .. '}:s:' .. sid
  local flat = fields_of(skey)
  redis.call('ZREM', prefix .. ':{' .. tag .. '}:idx', sid)
  if not flat then return nil end
  redis.call('DEL', skey)
  local ekey = prefix .. ':{' .. tag .. '}:e:' .. sid
  local ended = prefix .. ':{' .. tag .. '}:ended'
  redis.call('DEL', ekey)
  -- the session's own fields first: the end's fields must win over any namesake
  redis.call('HSET', ekey, unpack(flat))
  redis.call('HSET', ekey, 'status', status, 'reason', reason, 'actor', actor, 'ended_at', now)
  redis.call('PEXPIRE', ekey, history_ms)
  redis.call('ZADD', ended, now_ms, sid)
  redis.call('ZREMRANGEBYSCORE', ended, '-inf', now_ms - history_ms)
  redis.call('PEXPIRE', ended, history_ms)
  redis.call('PUBLISH', channel, sid)
  return flat
end
"""

# KEYS: session, index. ARGV: prefix, tag, sid, now_ms, keep_ms (how long to
# keep the record), expires_ms (absolute expiry, the index score), cap,
# history_ms, channel, evicted status, evicted reason, now (seconds, exact),
# refuse (1: at the cap, create nothing), then field/value pairs. Atomic:
# parallel logins of one user never exceed the cap. Returns the evicted
# records, or the string 'refused'.
_CREATE = _LEGACY + """
local prefix, tag, sid = ARGV[1], ARGV[2], ARGV[3]
local now_ms, cap = tonumber(ARGV[4]), tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms - 3600000)
local live = {}
if cap > 0 then
  for _, other in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local flat = fields_of(prefix .. ':{' .. tag .. '}:s:' .. other)
    if flat and alive(flat, now_ms / 1000) then
      -- least recently active first; then the oldest; then by id
      live[#live + 1] = {tonumber(get(flat, 'last_seen_at')) or 0,
                         tonumber(get(flat, 'created_at')) or 0, other}
    elseif not flat then
      redis.call('ZREM', KEYS[2], other)
    end
  end
  if ARGV[13] == '1' and #live >= cap then return 'refused' end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 14))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[6], sid)
local evicted = {}
if cap > 0 then
  table.sort(live, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    if a[2] ~= b[2] then return a[2] < b[2] end
    return a[3] < b[3]
  end)
  for i = 1, #live + 1 - cap do
    local flat = finish(prefix, tag, live[i][3], ARGV[10], ARGV[11], 'system',
                        now_ms, tonumber(ARGV[8]), ARGV[9], ARGV[12])
    if flat then evicted[#evicted + 1] = flat end
  end
end
-- the index lives as long as its longest session could (absolute end + grace)
local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
extend(KEYS[2], math.max(tonumber(top[2]) + 3600000 - now_ms, tonumber(ARGV[5])))
return evicted
"""

# KEYS: session. ARGV: now (seconds), keep_ms, then field/value pairs.
# Returns 0 (gone or no longer alive), 1, or 2 (a record of the first
# versions, converted: the caller adds it to the indexes it lacked).
_TOUCH = _LEGACY + """
local flat, converted = fields_of(KEYS[1])
if not flat or not alive(flat, tonumber(ARGV[1])) then return 0 end
local seen = tonumber(get(flat, 'last_seen_at')) or 0
for i = 3, #ARGV, 2 do
  -- two workers racing: last activity only ever moves forward
  if ARGV[i] ~= 'last_seen_at' or tonumber(ARGV[i + 1]) > seen then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
extend(KEYS[1], tonumber(ARGV[2]))
if converted then return 2 end
return 1
"""

# ARGV: prefix, tag, sid, status, reason, actor, now_ms, history_ms, channel,
# now (seconds, exact).
_END = _LEGACY + """
return finish(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
              tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9], ARGV[10]) or false
"""

# KEYS: marks (set), alerts (sorted set). ARGV: mark, now_ms, keep_ms,
# history_ms, record (JSON; "" for none), most marks. Returns 1 if the mark
# is new (and the record kept), 0 if it was there or the session has its fill.
_ALERT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[6]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
if ARGV[5] == '' then return 1 end
local now_ms, history_ms = tonumber(ARGV[2]), tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], now_ms, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms - history_ms)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -101)
redis.call('PEXPIRE', KEYS[2], history_ms)
return 1
"""

# KEYS: the user's index. ARGV: the session key prefix. Returns {sid, record}
# for every indexed id: the hash's fields (flat), the JSON string of a record
# of the first versions, or nil (gone).
_USER_SESSIONS = """
local out = {}
for i, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. sid
  local kind = redis.call('TYPE', key)['ok']
  local record = false
  if kind == 'hash' then record = redis.call('HGETALL', key)
  elseif kind == 'string' then record = redis.call('GET', key) end
  out[i] = {sid, record}
end
return out
"""

# KEYS: every counter a batch touches (one slot). ARGV: seconds to keep them,
# the size a ranking is cut to, and the ops as JSON: [op, key index, field
# or member, n], op h = HINCRBY, o = HSETNX, u = PFADD, z = ZINCRBY.
_COUNT = """
local keep, cut = tonumber(ARGV[1]), tonumber(ARGV[2])
local ranked = {}
for _, op in ipairs(cjson.decode(ARGV[3])) do
  local key, kind = KEYS[op[2]], op[1]
  if kind == 'h' then redis.call('HINCRBY', key, op[3], op[4])
  elseif kind == 'o' then redis.call('HSETNX', key, op[3], op[4])
  elseif kind == 'u' then redis.call('PFADD', key, op[3])
  else redis.call('ZINCRBY', key, op[4], op[3]); ranked[key] = true end
end
for key in pairs(ranked) do
  local extra = redis.call('ZCARD', key) - cut
  if extra > 0 then redis.call('ZREMRANGEBYRANK', key, 0, extra - 1) end
end
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, keep) end
return 1
"""

# KEYS: one throttle key's state, a hash: n failures and p attempts in
# flight in the window ending at w, a block until b (ms, the gateway's clock,
# so tests can move it) and what it is about, i. ARGV: now, window (ms),
# failures. Returns ms to wait (-1: busy), 0 when the attempt is in flight.
_ATTEMPT = """
local now = tonumber(ARGV[1])
local b = tonumber(redis.call('HGET', KEYS[1], 'b') or '0')
if b > now then return b - now end
if tonumber(redis.call('HGET', KEYS[1], 'w') or '0') <= now then
  redis.call('HSET', KEYS[1], 'n', 0, 'p', 0, 'w', now + tonumber(ARGV[2]), 'b', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local n = tonumber(redis.call('HGET', KEYS[1], 'n'))
if n + tonumber(redis.call('HGET', KEYS[1], 'p')) >= tonumber(ARGV[3]) then return -1 end
redis.call('HINCRBY', KEYS[1], 'p', 1)
return 0
"""

# KEYS: one throttle key's state. ARGV: now, failed (1/0), reset (1/0),
# failures, block (ms), what it is about. Returns 1 if this call started the
# key's block.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'p') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], 'p', -1)
end
if ARGV[2] ~= '1' then
  if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'n', 0) end
  return 0
end
local now = tonumber(ARGV[1])
if tonumber(redis.call('HGET', KEYS[1], 'b') or '0') > now then return 0 end
if redis.call('HINCRBY', KEYS[1], 'n', 1) < tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'n', 0, 'p', 0, 'w', 0, 'b', now + tonumber(ARGV[5]), 'i', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: a rate limit's window, a hash of each worker's count. ARGV: this
# worker, its count, ms to keep the window. Returns the sum.
_RATE = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local sum = 0
for _, n in ipairs(redis.call('HVALS', KEYS[1])) do sum = sum + tonumber(n) end
return sum
"""

# KEYS: the map. ARGV: its new fields, flat. Returns what it held, flat.
_SWAP = """
local old = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
if #ARGV > 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return old
"""

# KEYS: the user's mfa hash. ARGV: secret, enrolled at, code digests.
_ENROL = """
if redis.call('HEXISTS', KEYS[1], 'secret') == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'secret', ARGV[1], 'at', ARGV[2])
local left = 0
for i = 3, #ARGV do left = left + redis.call('HSET', KEYS[1], 'c:' .. ARGV[i], '1') end
redis.call('HSET', KEYS[1], 'left', left)
return 1
"""

# KEYS: the user's mfa hash. ARGV: a code digest. Returns the codes left, -1 if none spent.
_SPEND = """
if redis.call('HDEL', KEYS[1], 'c:' .. ARGV[1]) == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], 'left', -1)
"""

# KEYS: the user's step key. ARGV: the step, how long to keep it (ms).
_STEP = """
local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Why a session was revoked, as the first versions kept it (``:t:<sid>``).
_LEGACY_REASONS = {"logout": LOGOUT, "revoked": REVOKED_BY_ADMIN, "disabled": USER_DISABLED,
                   "session_limit": SESSION_LIMIT}

# How quickly a worker notices that Redis stopped answering its revocation
# feed, and so stops serving sessions from its cache: at most FEED_SILENCE.
FEED_PING = 0.25
FEED_SILENCE = 0.75
# How often a feed on Redis Cluster asks which nodes are the masters.
FEED_CHECK = 1.0


def user_tag(username: str) -> str:
    """A fixed-length, key-safe stand-in for the username (the hash slot tag)."""
    return hashlib.sha256(username.encode()).hexdigest()[:20]


def _queue(pipe: Any, script: Any, keys: list[str], args: list[Any]) -> None:
    """A script in a pipeline as a bare EVALSHA: given the script itself,
    redis-py first asks SCRIPT EXISTS, a round trip of its own."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


class _ClusterBatch:
    """A batch for Redis Cluster, in place of a pipeline: redis-py's cluster
    pipeline refuses EVALSHA (and PFCOUNT). Commands on different keys go
    at the same time, each to the node of its key; commands on the same key
    go one after another, in the order queued (audit entries keep their
    order), and a command on several keys waits for all queued before it.
    The answers come back in the order queued. As in a pipeline, a command
    Redis refused is an answer with ``raise_on_error=False``, while a lost
    node or a cluster that is down raises, once every command has finished."""

    def __init__(self, client: Any) -> None:
        self._client = client
        # Phases run one after another; a phase's commands by key.
        self._phases: list[dict[Any, list[tuple[int, Callable[[], Awaitable[Any]]]]]] = [{}]
        self._count = 0

    def _queue(self, keys: tuple[Any, ...], call: Callable[[], Awaitable[Any]]) -> None:
        if len(keys) > 1:                   # its own phase, after all before it
            self._phases += [{None: [(self._count, call)]}, {}]
        else:
            self._phases[-1].setdefault(keys[0] if keys else None, []).append(
                (self._count, call))
        self._count += 1

    def __getattr__(self, name: str) -> Any:
        command = getattr(self._client, name)

        def queued(*args: Any, **kwargs: Any) -> "_ClusterBatch":
            keys = args if name in ("delete", "unlink", "exists") else args[:1]
            self._queue(keys, lambda: command(*args, **kwargs))
            return self
        return queued

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> "_ClusterBatch":
        """A script goes by its first key; if Redis forgot it, NoScriptError
        reaches ``_loading`` as from a pipeline."""
        self._queue(keys_and_args[:1], lambda: self._client.evalsha(sha, numkeys,
                                                                     *keys_and_args))
        return self

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        answers: list[Any] = [None] * self._count

        async def in_turn(calls: list[tuple[int, Callable[[], Awaitable[Any]]]]) -> None:
            for i, call in calls:
                try:
                    answers[i] = await call()
                except ResponseError as exc:
                    if raise_on_error or isinstance(exc, (ClusterDownError, TryAgainError)):
                        raise
                    answers[i] = exc
        for phase in self._phases:
            outcomes = await asyncio.gather(*(in_turn(calls) for calls in phase.values()),
                                            return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        return answers

    async def __aenter__(self) -> "_ClusterBatch":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._phases, self._count = [{}], 0


def _pairs(fields: dict[str, str]) -> list[str]:
    return [x for kv in fields.items() for x in kv]


def _entries(raw: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """Stream entries as (id, record); an entry that is not a JSON object is skipped."""
    out: list[tuple[str, dict[str, Any]]] = []
    for entry_id, fields in raw:
        try:
            record = json.loads(fields.get(b"e", b"{}"))
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append((entry_id.decode(), record))
    return out


def _flat_to_dict(flat: list[Any]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2]))


async def _listen(client: aioredis.Redis, channel: str, on_subscribed: Callable[[], None],
                  on_revoked: Callable[[str], None]) -> None:
    """Follow ``channel`` on ``client``'s one connection until it fails or
    goes quiet (StoreUnavailable); see ``watch_revocations``."""
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel)
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
                    on_subscribed()
                elif message["type"] == "message":
                    on_revoked(message["data"].decode())
            if now - heard > FEED_SILENCE:
                raise StoreUnavailable("revocation feed went quiet")
            if now - pinged >= FEED_PING:
                await pubsub.ping()
                pinged = now
    finally:
        try:
            await pubsub.aclose()
        except FAILURES:
            pass


def _first_cause(failures: BaseExceptionGroup) -> str:
    """What ended a feed, as the log line says it: the first failure's name
    (or a quiet feed's message)."""
    first = failures.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return str(first) if isinstance(first, StoreUnavailable) else type(first).__name__


class RedisSessionStore(SessionStore):
    def __init__(self, config: RedisConfig, max_idle: float = 30 * 86400.0,
                 clock: Callable[[], float] = time.time,
                 client: aioredis.Redis | None = None) -> None:
        """``max_idle``: the longest idle timeout any session can have; entries
        of the global listing idle for longer are pruned. ``client`` replaces
        the one built from ``config`` (the benchmark's bulk loader records
        the calls instead of sending them)."""
        self.config = config
        self.prefix = config.key_prefix
        self.channel = f"{config.key_prefix}:revoked"
        self.max_idle = max_idle
        self.clock = clock
        self.redis = client or connect(config)
        self.cluster = bool(config.cluster.nodes)
        self._create = self.redis.register_script(_CREATE)
        self._touch = self.redis.register_script(_TOUCH)
        self._end = self.redis.register_script(_END)
        self._alert = self.redis.register_script(_ALERT)
        self._user_sessions = self.redis.register_script(_USER_SESSIONS)
        self._count = self.redis.register_script(_COUNT)
        self._swap = self.redis.register_script(_SWAP)
        self._attempt = self.redis.register_script(_ATTEMPT)
        self._settle = self.redis.register_script(_SETTLE)
        self._rate = self.redis.register_script(_RATE)
        self._enrol = self.redis.register_script(_ENROL)
        self._spend = self.redis.register_script(_SPEND)
        self._step = self.redis.register_script(_STEP)

    # -- keys --------------------------------------------------------------
    def session_key(self, username: str, sid: str) -> str:
        return f"{self.prefix}:{{{user_tag(username)}}}:s:{sid}"

    def index_key(self, username: str) -> str:
        return f"{self.prefix}:{{{user_tag(username)}}}:idx"

    def ended_key(self, username: str, sid: str) -> str:
        return f"{self.prefix}:{{{user_tag(username)}}}:e:{sid}"

    def ended_index_key(self, username: str) -> str:
        return f"{self.prefix}:{{{user_tag(username)}}}:ended"

    def alerts_key(self, username: str) -> str:
        return f"{self.prefix}:{{{user_tag(username)}}}:alerts"

    def marks_key(self, username: str, sid: str) -> str:
        return f"{self.prefix}:{{{user_tag(username)}}}:x:{sid}"

    def owner_key(self, sid: str) -> str:
        return f"{self.prefix}:o:{sid}"

    @property
    def all_key(self) -> str:
        return f"{self.prefix}:all"

    def ip_key(self, ip: str) -> str:
        return f"{self.prefix}:ip:{ip}"

    def _pipeline(self) -> Any:
        """A pipeline without a transaction (Redis Cluster: a batch, above)."""
        if self.cluster:
            return _ClusterBatch(self.redis)
        return self.redis.pipeline(transaction=False)

    async def _loading(self, run: Callable[[], Awaitable[T]], script: Any) -> T:
        """Run a pipeline that queued ``script`` by EVALSHA; if Redis forgot
        it (a restart, SCRIPT FLUSH), load it and run the pipeline again
        (its other commands are idempotent)."""
        try:
            return await run()
        except NoScriptError:
            await self.redis.script_load(script.script)
            return await run()

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            return await op()
        except FAILURES as exc:
            STORE_ERRORS.inc()
            raise StoreUnavailable(type(exc).__name__) from None
        finally:
            STORE_LATENCY.observe(time.perf_counter() - started)

    # -- interface ---------------------------------------------------------
    async def create(self, session: Session, cap: int, history: float,
                     refuse: bool = False) -> list[Session]:
        now = self.clock()
        tag = user_tag(session.username)
        keep_ms = max(1, int((session.keep_until - now) * 1000))

        evicted_raw = await self._call(lambda: self._create(
            keys=[self.session_key(session.username, session.id),
                  self.index_key(session.username)],
            args=[self.prefix, tag, session.id, int(now * 1000), keep_ms,
                  int(session.expires_at * 1000), cap, int(history * 1000), self.channel,
                  SESSION_LIMIT.status, SESSION_LIMIT.reason, repr(float(now)),
                  "1" if refuse else "0", *_pairs(session.to_fields())]))
        if evicted_raw == b"refused":
            raise AtCapacity()
        evicted = [s for s in (Session.from_fields(_flat_to_dict(f)) for f in evicted_raw) if s]
        await self._call(lambda: self._index(session, evicted, now))
        return evicted

    async def _index(self, session: Session, evicted: list[Session], now: float) -> None:
        """The cross-slot part of a create: owner and global listing entries.
        The owner key lives as long as the session possibly can (its absolute
        end plus the grace), so activity never has to renew it."""
        tag = user_tag(session.username)
        owner_ms = int((session.expires_at + EXPIRED_GRACE_MAX - now) * 1000)
        async with self._pipeline() as pipe:
            pipe.set(self.owner_key(session.id), session.username, px=max(1, owner_ms))
            pipe.zadd(self.all_key, {f"{tag}:{session.id}": int(session.last_seen_at * 1000)})
            pipe.zremrangebyscore(self.all_key, "-inf", int((now - self.max_idle) * 1000))
            self._by_ip(pipe, session)
            pipe.zremrangebyscore(self.ip_key(session.ip), "-inf",
                                  int((now - self.max_idle) * 1000))
            for old in evicted:
                pipe.delete(self.owner_key(old.id))
                pipe.zrem(self.all_key, f"{tag}:{old.id}")
                pipe.zrem(self.ip_key(old.ip), f"{tag}:{old.id}")
            await pipe.execute()

    def _by_ip(self, pipe: Any, session: Session) -> None:
        """List the session under its current address (kept as long as a
        session can stay idle); an entry left under an earlier address is
        dropped when a reader finds the session moved on."""
        key = self.ip_key(session.ip)
        pipe.zadd(key, {f"{user_tag(session.username)}:{session.id}":
                        int(session.last_seen_at * 1000)}, gt=True)
        pipe.pexpire(key, int(self.max_idle * 1000))

    async def get(self, username: str, sid: str) -> Session | None:
        key = self.session_key(username, sid)

        async def run() -> Session | None:
            try:
                raw = await self.redis.hgetall(key)
            except ResponseError:          # WRONGTYPE: a record of the first versions
                legacy = await self.redis.get(key)
                return Session.from_json(legacy) if legacy else None
            return Session.from_fields(raw) if raw else None
        session = await self._call(run)
        if session is None or session.username != username or session.id != sid:
            return None
        return session

    async def touch(self, session: Session, changes: dict[str, Any]) -> bool:
        key = self.session_key(session.username, session.id)
        member = f"{user_tag(session.username)}:{session.id}"

        now = self.clock()
        keep_ms = max(1, int((session.keep_until - now) * 1000))

        async def run() -> list[Any]:
            async with self._pipeline() as pipe:
                _queue(pipe, self._touch, [key], [repr(now), keep_ms,
                                                  *_pairs(encode_fields(changes))])
                # XX: never re-list an ended session; GT: racing touches keep the latest.
                pipe.zadd(self.all_key, {member: int(session.last_seen_at * 1000)},
                          xx=True, gt=True)
                self._by_ip(pipe, session)
                return await pipe.execute()
        done, *_ = await self._call(lambda: self._loading(run, self._touch))
        if done == 2:     # a record of the first versions: give it the indexes it lacked
            await self._call(lambda: self._index(session, [], now))
        elif not done:    # it ended meanwhile: take back the address entry just written
            await self._call(lambda: self.redis.zrem(self.ip_key(session.ip), member))
        return bool(done)

    async def end(self, username: str, sid: str, ending: Ending, actor: str,
                  now: float, history: float) -> Session | None:
        tag = user_tag(username)

        flat = await self._call(lambda: self._end(
            keys=[self.session_key(username, sid), self.index_key(username),
                  self.ended_key(username, sid), self.ended_index_key(username)],
            args=[self.prefix, tag, sid, ending.status, ending.reason, actor,
                  int(now * 1000), int(history * 1000), self.channel, repr(float(now))]))
        if not flat:
            return None     # nothing of this user's: leave every index alone

        session = Session.from_fields(_flat_to_dict(flat))

        async def unindex() -> None:
            async with self._pipeline() as pipe:
                pipe.delete(self.owner_key(sid))
                pipe.zrem(self.all_key, f"{tag}:{sid}")
                if session is not None:
                    pipe.zrem(self.ip_key(session.ip), f"{tag}:{sid}")
                await pipe.execute()
        await self._call(unindex)
        return session

    async def ended(self, username: str, sid: str) -> EndedSession | None:
        raw = await self._call(lambda: self.redis.hgetall(self.ended_key(username, sid)))
        if raw:
            record = EndedSession.from_fields(raw)
            return record if record and record.session.username == username else None
        # The first versions kept only why a session was revoked, as ":t:<sid>".
        legacy = await self._call(lambda: self.redis.get(
            f"{self.prefix}:{{{user_tag(username)}}}:t:{sid}"))
        ending = _LEGACY_REASONS.get(legacy.decode(errors="replace")) if legacy else None
        if ending is None:
            return None
        return EndedSession(Session(sid, username, 0.0, 0.0, 0.0, 0.0), ending.status,
                            ending.reason, "", 0.0)

    async def history(self, username: str, since: float, limit: int = 100) -> list[EndedSession]:
        async def run() -> list[Any]:
            sids = await self.redis.zrange(self.ended_index_key(username), "+inf",
                                           int(since * 1000), desc=True, byscore=True,
                                           offset=0, num=limit)
            if not sids:
                return []
            async with self._pipeline() as pipe:
                for sid in sids:
                    pipe.hgetall(self.ended_key(username, sid.decode()))
                return await pipe.execute()
        records = [EndedSession.from_fields(raw) for raw in await self._call(run) if raw]
        return [r for r in records if r and r.session.username == username]

    async def user_sessions(self, username: str) -> list[Session]:
        """One round trip whatever the count: a script reads the index and
        every record (measured: 100 records in 2-4 ms, against 5-9 ms for a
        pipeline of 100 HGETALLs, most of it redis-py's packing)."""
        rows = await self._call(lambda: self._user_sessions(
            keys=[self.index_key(username)], args=[self.session_key(username, "")]))
        ids: list[str] = []
        found: list[Session | None] = []
        for raw_sid, record in rows:
            sid = raw_sid.decode()
            if isinstance(record, list):
                session = Session.from_fields(_flat_to_dict(record)) if record else None
            else:                                  # a record of the first versions
                session = Session.from_json(record) if record else None
            ids.append(sid)
            found.append(session if session and session.username == username
                         and session.id == sid else None)
        gone = [sid for sid, s in zip(ids, found) if s is None]
        if gone:
            await self._call(lambda: self.redis.zrem(self.index_key(username), *gone))
        return sorted((s for s in found if s), key=lambda s: (s.created_at, s.id))

    async def find(self, sid: str) -> Session | None:
        owner = await self._call(lambda: self.redis.get(self.owner_key(sid)))
        if owner is None:
            return None
        session = await self.get(owner.decode(), sid)
        return session if session and session.alive(self.clock()) else None

    async def list_sessions(self, cursor: str | None, limit: int) -> Page:
        """A page from ``gw:all``, read by rank from just after the cursor's entry:
        O(log N + page) however many sessions share a millisecond."""
        after = decode_cursor(cursor)
        start = 0
        if after is not None:
            start = await self._position_after(after)
        now = self.clock()
        found: list[tuple[Session, int, str]] = []
        while len(found) <= limit:
            want = limit + 1 - len(found)
            entries = await self._call(lambda: self.redis.zrange(
                self.all_key, start, start + want - 1, desc=True, withscores=True))
            if not entries:
                break
            batch = [(m.decode(), int(sc)) for m, sc in entries]
            sessions, dangling = await self._load(batch)
            found += [(session, score, member) for (member, score), session
                      in zip(batch, sessions) if session is not None and session.alive(now)]
            start += len(batch) - dangling
            if len(batch) < want:
                break
        cursors = [encode_cursor(score, member) for _, score, member in found[:limit]]
        if len(found) <= limit:
            return Page([s for s, _, _ in found], None, cursors)
        return Page([s for s, _, _ in found[:limit]], cursors[-1], cursors)

    async def ip_sessions(self, ip: str, limit: int) -> list[Session]:
        """Entries of sessions that moved to another address or are over
        (expired unnoticed) are dropped as they are met."""
        key = self.ip_key(ip)
        now = self.clock()

        async def run() -> list[Any]:
            async with self._pipeline() as pipe:
                pipe.zremrangebyscore(key, "-inf", int((now - self.max_idle) * 1000))
                pipe.zrange(key, 0, limit - 1, desc=True, withscores=True)
                return await pipe.execute()
        _, entries = await self._call(run)
        batch = [(m.decode(), int(sc)) for m, sc in entries]
        sessions, _ = await self._load(batch, key)
        here = [s for s in sessions if s is not None and s.alive(now) and s.ip == ip]
        stale = [f"{user_tag(s.username)}:{s.id}" for s in sessions
                 if s is not None and (s.ip != ip or not s.alive(now))]
        if stale:
            await self._call(lambda: self.redis.zrem(key, *stale))
        return here

    async def _position_after(self, after: tuple[float, str]) -> int:
        """Where the page after the cursor's entry starts. If that entry moved
        (new activity) or went, resume after its old score instead."""
        score, member = int(after[0]), after[1]

        async def run() -> list[Any]:
            async with self._pipeline() as pipe:
                pipe.zrevrank(self.all_key, member)
                pipe.zscore(self.all_key, member)
                pipe.zcount(self.all_key, f"({score}", "+inf")
                return await pipe.execute()
        rank, current, above = await self._call(run)
        if rank is not None and current is not None and int(current) == score:
            return rank + 1
        return above

    async def _load(self, entries: list[tuple[str, int]],
                    index: str | None = None) -> tuple[list[Session | None], int]:
        """The sessions behind entries of an index (``gw:all`` unless said),
        and how many entries pointed at nothing (those are removed)."""
        async def run() -> list[Any]:
            async with self._pipeline() as pipe:
                for member, _ in entries:
                    tag, _, sid = member.partition(":")
                    pipe.hgetall(f"{self.prefix}:{{{tag}}}:s:{sid}")
                return await pipe.execute(raise_on_error=False)
        raws = await self._call(run)
        out: list[Session | None] = []
        dangling = []
        for (member, _), raw in zip(entries, raws):
            session = Session.from_fields(raw) if isinstance(raw, dict) and raw else None
            if isinstance(raw, dict) and not raw:
                dangling.append(member)
            out.append(session)
        if dangling:
            await self._call(lambda: self.redis.zrem(index or self.all_key, *dangling))
        return out, len(dangling)

    async def watch_revocations(self, on_ready: Callable[[], None],
                                on_revoked: Callable[[str], None]) -> None:
        """Subscribe on connections of their own, with no silent reconnects.

        redis-py would otherwise reconnect and resubscribe by itself, and
        messages published in between would be lost unnoticed. Here any
        error, or FEED_SILENCE seconds without an answer to the ping sent
        every FEED_PING seconds, ends the watch so the caller stops trusting
        its cache. (A false alarm under load only costs a cache refill.)

        On Redis Cluster the feed listens on every master: the end script's
        PUBLISH reaches its own master's subscribers before the script's
        answer leaves, as on one Redis, so a sign-out that has returned is
        already on its way to every worker. The copies the cluster relays to
        the other masters come later and drop the session again, harmlessly.
        (Sharded pub/sub would need a channel per slot: SPUBLISH from the
        end script must stay inside its user's slot.)
        """
        clients: list[aioredis.Redis] = []
        try:
            if self.cluster:
                masters = await self._masters()
                clients = [connect_node(self.config, host, port) for host, port in masters]
            else:
                clients = [connect(self.config, dedicated=True)]
            waiting = len(clients)

            def subscribed() -> None:
                nonlocal waiting
                waiting -= 1
                if waiting == 0:
                    on_ready()
            async with asyncio.TaskGroup() as group:
                for client in clients:
                    group.create_task(_listen(client, self.channel, subscribed, on_revoked))
                if self.cluster:
                    group.create_task(self._same_masters(masters))
        except* (StoreUnavailable, *FAILURES) as failures:
            raise StoreUnavailable(_first_cause(failures)) from None
        finally:
            for client in clients:
                try:
                    await client.aclose()
                except FAILURES:
                    pass

    async def _masters(self) -> set[tuple[str, int]]:
        """The masters that serve the slots now, as a node of the cluster says
        (``CLUSTER SLOTS``): the client's own view changes only when one of
        its commands meets the change, and making it relearn the layout
        reconnects its whole pool."""
        slots = await self.redis.execute_command("CLUSTER SLOTS")
        if not slots:
            raise StoreUnavailable("the cluster serves no slots")
        return {(str(host), int(port)) for host, port in
                (shard["primary"] for shard in slots.values())}

    async def _same_masters(self, masters: set[tuple[str, int]]) -> None:
        """End the watch once the masters change (a failover, a reshard, a
        replica promoted by hand), so that the next one listens on those."""
        while True:
            await asyncio.sleep(FEED_CHECK)
            if await self._masters() != masters:
                raise StoreUnavailable("the cluster's masters changed")

    async def add_security_event(self, username: str, sid: str, mark: str,
                                 record: dict[str, Any] | None, keep: float,
                                 history: float) -> bool:
        payload = "" if record is None else json.dumps(record, separators=(",", ":"),
                                                       sort_keys=True)
        added = await self._call(lambda: self._alert(
            keys=[self.marks_key(username, sid), self.alerts_key(username)],
            args=[mark, int(self.clock() * 1000), max(1, int(keep * 1000)),
                  int(history * 1000), payload, MAX_FINDINGS]))
        return bool(added)

    async def security_events(self, username: str, since: float) -> list[dict[str, Any]]:
        raw = await self._call(lambda: self.redis.zrange(
            self.alerts_key(username), "+inf", f"({int(since * 1000)}", desc=True,
            byscore=True, offset=0, num=100))
        events = []
        for item in raw:
            try:
                event = json.loads(item)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    # -- locks and the audit trail ------------------------------------------------------
    @property
    def locks_key(self) -> str:
        return f"{self.prefix}:locks"

    @property
    def audit_key(self) -> str:
        return f"{self.prefix}:audit"

    async def set_locked(self, username: str, locked: bool, actor: str, now: float) -> bool:
        if locked:
            meta = json.dumps({"by": actor, "at": now})
            return bool(await self._call(lambda: self.redis.hsetnx(self.locks_key, username,
                                                                   meta)))
        return bool(await self._call(lambda: self.redis.hdel(self.locks_key, username)))

    async def locks(self) -> dict[str, dict[str, Any]]:
        raw = await self._call(lambda: self.redis.hgetall(self.locks_key))
        out: dict[str, dict[str, Any]] = {}
        for user, meta in raw.items():
            try:
                value = json.loads(meta)
            except ValueError:
                value = {}
            out[user.decode()] = value if isinstance(value, dict) else {}
        return out

    async def is_locked(self, username: str) -> bool:
        return bool(await self._call(lambda: self.redis.hexists(self.locks_key, username)))

    async def audit_append(self, records: list[dict[str, Any]], retention: float,
                           counts: Counts | None = None) -> None:
        oldest = int((self.clock() - retention) * 1000)

        # On a cluster the records and the counts live on different masters,
        # which fail apart: the counts go second, on their own, so that a
        # failure of theirs never sends the records again.
        together = bool(counts) and not self.cluster

        async def run() -> list[Any]:
            async with self._pipeline() as pipe:
                for record in records:
                    pipe.xadd(self.audit_key, {"e": json.dumps(record, separators=(",", ":"))},
                              minid=oldest, approximate=True)
                if together:
                    _queue(pipe, self._count, *self._count_call(counts))
                return await pipe.execute(raise_on_error=False)
        # Only a lost connection raises (and the batch is sent again); a
        # command Redis refused has been refused for good, and the others of
        # the batch are applied: sending them again would append them twice.
        results = await self._call(run)
        if together and isinstance(results[-1], NoScriptError):     # Redis forgot the script
            await self.count(counts)
            results.pop()
        refused = [r for r in results if isinstance(r, Exception)]
        if refused:
            log.error("audit: Redis refused %d of the %d writes of a batch (%s)", len(refused),
                      len(records) + together, type(refused[0]).__name__)
        if counts and not together:
            try:
                await self.count(counts)
            except StoreUnavailable as exc:
                log.error("audit: the analytics counts of a batch were not stored (%s)", exc)

    # -- login throttling ----------------------------------------------------------
    def _throttle_key(self, key: str) -> str:
        return f"{self.prefix}:th:k:{key}"

    @property
    def throttle_index(self) -> str:
        return f"{self.prefix}:th:blocks"

    async def throttle_attempt(self, strikes: list[Strike]) -> float:
        now_ms = int(self.clock() * 1000)

        async def run() -> list[Any]:
            async with self._pipeline() as pipe:
                for s in strikes:
                    _queue(pipe, self._attempt, [self._throttle_key(s.key)],
                           [now_ms, max(1, int(s.window * 1000)), s.failures])
                return await pipe.execute()
        answers = [int(ms) for ms in await self._call(lambda: self._loading(run, self._attempt))]
        if not any(answers):
            return 0.0
        # Refused: what this attempt holds in flight under the other keys goes.
        held = [s for s, ms in zip(strikes, answers) if ms == 0]
        if held:
            await self.throttle_settle(held, failed=False, reset=[])
        return max(BUSY_WAIT if ms < 0 else ms / 1000 for ms in answers)

    async def throttle_settle(self, strikes: list[Strike], failed: bool,
                              reset: list[str]) -> list[Block]:
        now = self.clock()
        now_ms = int(now * 1000)

        async def run() -> list[Any]:
            async with self._pipeline() as pipe:
                for s in strikes:
                    _queue(pipe, self._settle, [self._throttle_key(s.key)],
                           [now_ms, "1" if failed else "0", "1" if s.key in reset else "0",
                            s.failures, max(1, int(s.block * 1000)), json.dumps(s.info)])
                return await pipe.execute()
        answers = await self._call(lambda: self._loading(run, self._settle))
        started = [Block(s.key, now + s.block, dict(s.info))
                   for s, new in zip(strikes, answers) if new]
        if started:         # for throttle list; the blocks hold without it
            async def index() -> None:
                async with self._pipeline() as pipe:
                    pipe.zadd(self.throttle_index, {b.key: int(b.until * 1000) for b in started})
                    pipe.zremrangebyscore(self.throttle_index, "-inf", now_ms)
                    await pipe.execute()
            try:
                await self._call(index)
            except StoreUnavailable as exc:
                log.error("throttle: %d blocks not listed (%s)", len(started), exc)
        return started

    async def throttle_blocks(self) -> list[Block]:
        now_ms = int(self.clock() * 1000)

        async def run() -> list[Any]:
            keys = await self.redis.zrangebyscore(self.throttle_index, now_ms, "+inf")
            if not keys:
                return []
            async with self._pipeline() as pipe:
                for key in keys:
                    pipe.hmget(self._throttle_key(key.decode()), "b", "i")
                return list(zip(keys, await pipe.execute()))
        out = []
        for key, (until, info) in await self._call(run):
            try:
                until_ms, about = int(until or 0), json.loads(info or "{}")
            except ValueError:
                continue
            if until_ms > now_ms and isinstance(about, dict):
                out.append(Block(key.decode(), until_ms / 1000,
                                 {k: str(v) for k, v in about.items()}))
        return sorted(out, key=lambda b: (b.until, b.key))

    async def throttle_clear(self, keys: list[str]) -> int:
        if not keys:
            return 0
        now_ms = int(self.clock() * 1000)

        async def run() -> list[Any]:
            async with self._pipeline() as pipe:
                for key in keys:
                    pipe.hget(self._throttle_key(key), "b")
                pipe.delete(*(self._throttle_key(k) for k in keys))
                pipe.zrem(self.throttle_index, *keys)
                return await pipe.execute()
        return sum(1 for b in (await self._call(run))[:len(keys)] if b and int(b) > now_ms)

    async def rate_sync(self, worker: str,
                        counts: dict[str, tuple[int, float]]) -> dict[str, int]:
        async def run() -> list[Any]:
            async with self._pipeline() as pipe:
                for key, (n, keep) in counts.items():
                    _queue(pipe, self._rate, [f"{self.prefix}:rl:{key}"],
                           [worker, n, max(1, int(keep * 1000))])
                return await pipe.execute()
        sums = await self._call(lambda: self._loading(run, self._rate))
        return {key: int(total) for key, total in zip(counts, sums)}

    # -- the second factor and held sign-ins ------------------------------------------
    def mfa_key(self, username: str) -> str:
        return f"{self.prefix}:{{{user_tag(username)}}}:mfa"

    async def mfa_get(self, username: str) -> Enrolment | None:
        secret, at, left = await self._call(
            lambda: self.redis.hmget(self.mfa_key(username), "secret", "at", "left"))
        if secret is None:
            return None
        try:
            return Enrolment(secret.decode(), float(at or 0), int(left or 0))
        except (ValueError, UnicodeDecodeError):
            return Enrolment(secret.decode("utf-8", "replace"), 0.0, 0)

    async def mfa_enrol(self, username: str, secret: str, codes: list[str],
                        now: float) -> bool:
        return bool(await self._call(lambda: self._enrol(
            keys=[self.mfa_key(username)], args=[secret, repr(now), *codes])))

    async def mfa_reset(self, username: str) -> bool:
        return bool(await self._call(lambda: self.redis.delete(self.mfa_key(username))))

    async def mfa_use_code(self, username: str, digest: str) -> int | None:
        left = await self._call(lambda: self._spend(keys=[self.mfa_key(username)],
                                                    args=[digest]))
        return None if int(left) < 0 else int(left)

    async def mfa_use_step(self, username: str, step: int, keep: float) -> bool:
        key = f"{self.prefix}:{{{user_tag(username)}}}:step"
        return bool(await self._call(lambda: self._step(
            keys=[key], args=[step, max(1, int(keep * 1000))])))

    async def hold(self, key: str, value: str, ttl: float) -> None:
        await self._call(lambda: self.redis.set(f"{self.prefix}:p:{key}", value,
                                                px=max(1, int(ttl * 1000))))

    async def held(self, key: str) -> str | None:
        value = await self._call(lambda: self.redis.get(f"{self.prefix}:p:{key}"))
        return None if value is None else value.decode("utf-8", "replace")

    async def release(self, key: str) -> str | None:
        value = await self._call(lambda: self.redis.getdel(f"{self.prefix}:p:{key}"))
        return None if value is None else value.decode("utf-8", "replace")

    async def swap(self, name: str, values: dict[str, str]) -> dict[str, str]:
        old = await self._call(lambda: self._swap(keys=[f"{self.prefix}:v:{name}"],
                                                  args=_pairs(values)))
        return {k.decode(): v.decode() for k, v in _flat_to_dict(old).items()}

    # -- analytics -----------------------------------------------------------------
    def stats_key(self, bucket: str) -> str:
        return f"{self.prefix}:{{stats}}:{bucket}"

    def _count_call(self, counts: Counts) -> tuple[list[str], list[Any]]:
        """The keys and arguments of one _COUNT call."""
        keys: dict[str, int] = {}

        def at(bucket: str) -> int:
            return keys.setdefault(self.stats_key(bucket), len(keys) + 1)
        ops: list[list[Any]] = []
        ops += [["h", at(k), f, n] for k, fields in counts.add.items() for f, n in fields.items()]
        ops += [["o", at(k), f, n] for k, fields in counts.once.items() for f, n in fields.items()]
        ops += [["u", at(k), m, 1] for k, members in counts.distinct.items() for m in members]
        ops += [["z", at(k), m, n] for k, scores in counts.rank.items() for m, n in scores.items()]
        return list(keys), [max(1, int(counts.keep)), RANK_KEEP, json.dumps(ops)]

    async def count(self, counts: Counts) -> None:
        if counts:
            keys, args = self._count_call(counts)
            await self._call(lambda: self._count(keys=keys, args=args))

    async def read_counts(self, hashes: list[str], distinct: list[str], ranks: list[str],
                          top: int) -> CountsRead:
        async def run() -> list[Any]:
            async with self._pipeline() as pipe:
                for bucket in hashes:
                    pipe.hgetall(self.stats_key(bucket))
                for bucket in distinct:
                    pipe.pfcount(self.stats_key(bucket))
                for bucket in ranks:
                    pipe.zrange(self.stats_key(bucket), 0, top - 1, desc=True, withscores=True)
                return await pipe.execute()
        raw = await self._call(run)
        got = iter(raw)
        return CountsRead(
            add={b: {k.decode(): int(v) for k, v in next(got).items()} for b in hashes},
            distinct={b: int(next(got)) for b in distinct},
            rank={b: [(m.decode(), int(n)) for m, n in next(got)] for b in ranks})

    async def active_count(self, since: float) -> int:
        return int(await self._call(lambda: self.redis.zcount(
            self.all_key, f"({int(since * 1000)}", "+inf")))

    async def audit_page(self, before: str | None, count: int) -> list[tuple[str, dict[str, Any]]]:
        top = f"({before}" if before else "+"
        return _entries(await self._call(lambda: self.redis.xrevrange(
            self.audit_key, top, "-", count=count)))

    async def audit_after(self, after: str, count: int) -> list[tuple[str, dict[str, Any]]]:
        return _entries(await self._call(lambda: self.redis.xrange(
            self.audit_key, f"({after}", "+", count=count)))

    async def ping(self) -> None:
        await self._call(self.redis.ping)

    async def close(self) -> None:
        await self.redis.aclose()
