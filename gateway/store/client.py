"""The one place a Redis client is built from ``session.redis``.

Every client the gateway holds comes from here, so timeouts, retries and
pool limits are set once, whatever the topology: one Redis (``url``), the
master that Redis Sentinel names (``sentinel``), or a Redis Cluster
(``cluster``); with either of the last two ``url`` gives only the scheme,
credentials and database. A client built with ``from_pool`` owns its pool:
``aclose()`` closes the pool's connections too.

Under Sentinel every new connection asks the sentinels for the master, so
after a failover the client finds the new one by itself; a connection to
the old master fails (or, once it is a replica, refuses writes), which the
store turns into StoreUnavailable: requests answer 503 until then, never
from stale data. Under Cluster the client learns the new layout from the
MOVED answers and connection errors that follow a failover, the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from ..config import RedisConfig


def connect(config: RedisConfig, *, dedicated: bool = False) -> aioredis.Redis:
    """A pooled client; ``dedicated``: one connection of its own with no retries
    (the revocation feed, which must notice every drop rather than hide it;
    on a cluster the feed uses ``connect_node``)."""
    timeout = config.timeout
    if config.sentinel.nodes:
        return _sentinel_master(config, dedicated)
    if config.cluster.nodes:
        return _cluster(config)
    username, password = credentials(config)
    if dedicated:
        return aioredis.Redis.from_url(config.url, socket_timeout=timeout,
                                       socket_connect_timeout=timeout,
                                       retry=Retry(NoBackoff(), 0),
                                       username=username, password=password)
    pool = aioredis.BlockingConnectionPool.from_url(
        config.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One retry on a fresh connection covers a Redis restart; more would
        # multiply how long a request waits on a dead Redis.
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
        max_connections=config.max_connections,
        timeout=timeout,
        username=username, password=password)
    return aioredis.Redis.from_pool(pool)


def credentials(config: RedisConfig) -> tuple[str | None, str | None]:
    """The data nodes' ACL user and password, wherever the config set them
    (load.py allows one place each): the url, beside it, or the sentinel or
    cluster section."""
    node = parse_url(config.url)
    form = config.sentinel if config.sentinel.nodes else config.cluster
    return (form.username or config.username or node.get("username"),
            form.password or config.password or node.get("password"))


def _tls(config: RedisConfig) -> dict[str, Any]:
    """rediss:// and its ``ssl_*`` options (``?ssl_ca_certs=/etc/ca.pem``, a
    private CA), for the clients that are not built from the url itself."""
    node = parse_url(config.url)
    if node.get("connection_class") is not SSLConnection:
        return {}
    return {"ssl": True, **{k: v for k, v in node.items() if k.startswith("ssl_")}}


def connect_node(config: RedisConfig, host: str, port: int) -> aioredis.Redis:
    """One connection of its own, with no retries, to one node of a Redis
    Cluster (the revocation feed's, as ``dedicated`` above)."""
    username, password = credentials(config)
    return aioredis.Redis(host=host, port=port, username=username, password=password,
                          socket_timeout=config.timeout, **_tls(config),
                          socket_connect_timeout=config.timeout, retry=Retry(NoBackoff(), 0))


def _sentinel_master(config: RedisConfig, dedicated: bool) -> aioredis.Redis:
    sentinel = config.sentinel
    timeout = config.timeout
    username, password = credentials(config)
    data_node: dict[str, Any] = {"username": username, "password": password,
                                 "db": parse_url(config.url).get("db", 0)}
    data_node.update(_tls(config))
    watchers = Sentinel(
        list(sentinel.nodes),
        sentinel_kwargs={"password": sentinel.sentinel_password, "socket_timeout": timeout,
                         "socket_connect_timeout": timeout},
        socket_timeout=timeout, socket_connect_timeout=timeout, **data_node)
    client = watchers.master_for(
        sentinel.master, redis_class=_MasterClient,
        retry=Retry(NoBackoff(), 0 if dedicated else 1),
        max_connections=1 if dedicated else config.max_connections,
        health_check_interval=0 if dedicated else 30)
    client.sentinels = watchers.sentinels
    return client


class _MasterClient(aioredis.Redis):
    """The master's client, which closes the sentinels' connections with its own."""
    sentinels: list[aioredis.Redis] = []

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for watcher in self.sentinels:
            await watcher.aclose()


def _cluster(config: RedisConfig) -> aioredis.Redis:
    username, password = credentials(config)
    return _Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in config.cluster.nodes],
        username=username, password=password, **_tls(config),
        socket_timeout=config.timeout, socket_connect_timeout=config.timeout,
        max_connections=config.max_connections,
        # One retry, as for one Redis: after a failover it goes to the node
        # the MOVED answer or the new layout names.
        retry=Retry(NoBackoff(), 1))


class _Cluster(RedisCluster):
    """redis-py's cluster client with three mends. Two are for commands that
    arrive together (every request of a busy worker):

    - It learns the cluster's layout before routing any of them. redis-py
      8.1 routes commands that arrive while it first learns it to a default
      node; their MOVED answers then make it relearn the layout and drop
      connections that other commands are still opening (tested by
      ``test_store`` with twenty creates at once).
    - At most ``max_connections`` commands run at once, waiting up to the
      timeout for a turn, as the single-Redis pool does: redis-py's node
      pools raise instead of waiting when they are full.

    The third: closing it closes every connection, also after a failure
    (``aclose``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(kwargs["max_connections"])
        self._wait = kwargs["socket_timeout"]

    async def aclose(self) -> None:
        """Close every connection, also after an error: redis-py's own close
        does nothing while the client means to relearn the layout."""
        await super().aclose()
        await self.nodes_manager.aclose()
        await self.nodes_manager.aclose("startup_nodes")

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with asyncio.timeout(self._wait):
            await self._turns.acquire()
        try:
            await self.initialize()         # at once when the layout is known
            return await super().execute_command(*args, **kwargs)
        finally:
            self._turns.release()
