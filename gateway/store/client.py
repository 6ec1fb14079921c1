"""The one place a Redis client is built from ``session.redis``.

Every client the gateway holds comes from here, so timeouts, retries and
pool limits are set once (and the Sentinel and Cluster forms extend this
function, not its callers). A client built with ``from_pool`` owns its
pool: ``aclose()`` closes the pool's connections too.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..config import RedisConfig


def connect(config: RedisConfig, *, dedicated: bool = False) -> aioredis.Redis:
    """A pooled client; ``dedicated``: one connection of its own with no retries
    (the revocation feed, which must notice every drop rather than hide it)."""
    timeout = config.timeout
    if dedicated:
        return aioredis.Redis.from_url(config.url, socket_timeout=timeout,
                                       socket_connect_timeout=timeout,
                                       retry=Retry(NoBackoff(), 0))
    pool = aioredis.BlockingConnectionPool.from_url(
        config.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One retry on a fresh connection covers a Redis restart; more would
        # multiply how long a request waits on a dead Redis.
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
        max_connections=config.max_connections,
        timeout=timeout)
    return aioredis.Redis.from_pool(pool)
