"""One Redis for the whole process: the cache, the key store, rate limits and token reservations
share one client (one connection pool) and one key prefix; the cache and the limits (which sit on
the request path) one circuit breaker, while the key store is read by a background poll.

The URL picks the deployment:

- ``redis://[user:pass@]host:port/db``, ``rediss://`` (TLS), ``unix:///path?db=N``: one server;
- ``redis+sentinel://[user:pass@]host:port[,host:port...]/MASTER[/db]`` (``rediss+sentinel://``):
  the master that these Sentinels name, found again after a failover; ``?sentinel_password=``
  when the Sentinels themselves want one (the URL's password is the data nodes');
- ``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster://``): Redis Cluster,
  the slot map read from any of these nodes and refreshed on ``MOVED``; ``ASK`` is followed.

Every call runs under its caller's time budget (a cache read: 50 ms; the key store: a second);
redis-py's own retries are off, the breaker decides when to try again. Connections reconnect by
themselves on the next call.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from rerankd.breaker import Breaker

__all__ = ["DEFAULT_PREFIX", "FAULTS", "RedisTarget", "SharedRedis", "describe_url", "parse_redis_url"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "rerankd:"
#: What a Redis fault looks like: the client's own errors, socket errors, a time budget running out.
FAULTS = (RedisError, OSError, TimeoutError)

Mode = Literal["single", "sentinel", "cluster"]
_SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL (Sentinel and Cluster forms; single servers keep their URL for redis-py)."""

    mode: Mode
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinel_password: str | None = None


def _host_port(item: str, default_port: int) -> tuple[str, int]:
    if item.startswith("["):  # [::1]:6379
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ValueError(f"no host in {item!r}")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise ValueError(f"bad port in {item!r}") from None


def parse_redis_url(url: str) -> RedisTarget:
    """Raises ValueError with the reason for a URL that names no Redis."""
    scheme, sep, rest = url.partition("://")
    if scheme in {"redis", "rediss", "unix"}:
        return RedisTarget("single", url)
    if not sep or scheme not in _SCHEMES:
        raise ValueError(
            f"unknown Redis URL scheme {scheme!r}: use redis://, rediss://, unix://, "
            "redis+sentinel:// or redis+cluster:// (rediss+ for TLS)"
        )
    mode, tls = _SCHEMES[scheme]
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    if "?" in netloc:
        netloc, _, query = netloc.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, userinfo = netloc, ""
    user, _, password = userinfo.partition(":")
    default_port = 26379 if mode == "sentinel" else 6379
    nodes = tuple(_host_port(h.strip(), default_port) for h in hosts.split(",") if h.strip())
    if not nodes:
        raise ValueError(f"no host:port in {describe_url(url)}")
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    master, db = None, 0
    segments = [s for s in path.split("/") if s]
    if mode == "sentinel":
        if not segments:
            raise ValueError("a Sentinel URL names its master: redis+sentinel://host:26379/MASTER[/db]")
        master = unquote(segments[0])
        segments = segments[1:]
    if segments:
        if mode == "cluster" or len(segments) > 1 or not segments[0].isdigit():
            raise ValueError(f"unexpected path in {describe_url(url)} (cluster mode has only db 0)")
        db = int(segments[0])
    return RedisTarget(
        mode,
        url,
        nodes,
        master,
        db,
        unquote(user) or None,
        unquote(password) or None,
        tls,
        params.get("sentinel_password"),
    )


def describe_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "(unparsable Redis URL)"
    if scheme == "unix":
        return f"unix://{urlsplit(url).path}"
    netloc, slash, tail = rest.partition("/")
    hosts = netloc.rpartition("@")[2]
    path = tail.partition("?")[0]
    return f"{scheme}://{hosts}{slash}{path}"


class SharedRedis:
    """The client (``Redis`` for one server or Sentinel's master, ``RedisCluster`` for a cluster),
    the key prefix every name in Redis starts with, and the breaker every user of it consults."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        breaker: Breaker | None = None,
        socket_timeout_s: float = 1.0,
    ) -> None:
        self.target = parse_redis_url(url)
        self.prefix = prefix
        self.description = f"Redis at {describe_url(url)}"
        self.breaker = breaker or Breaker(self.description)
        self._sentinel: Sentinel | None = None
        self._closed = False
        options: dict[str, Any] = {
            # Backstops: callers put their own, tighter budgets around each call.
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": socket_timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "client_name": "rerankd",
        }
        self.client: Redis | RedisCluster = self._connect(self.target, options)
        #: A cluster client reads the slot map once before its first command: many first commands
        #: at once (a burst of requests at start-up) broke one another's connections in redis-py,
        #: so callers check this flag and let :meth:`warm_up` read the map once, under a lock.
        self.cold = self.cluster
        self._warming = asyncio.Lock()

    @property
    def cluster(self) -> bool:
        return self.target.mode == "cluster"

    def _connect(self, t: RedisTarget, options: dict[str, Any]) -> Redis | RedisCluster:
        if t.mode == "single":
            # Raises ValueError for an unknown option in the URL: a configuration error at start-up.
            return Redis.from_url(t.url, health_check_interval=30, **options)
        auth: dict[str, Any] = {"username": t.username, "password": t.password}
        if t.mode == "cluster":
            return RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in t.nodes],
                # A node down leaves its slots uncovered: serve the others rather than none.
                require_full_coverage=False,
                ssl=t.tls,
                **auth,
                **options,
            )
        sentinel_options: dict[str, Any] = {
            "socket_timeout": options["socket_timeout"],
            "socket_connect_timeout": options["socket_connect_timeout"],
            "password": t.sentinel_password,
            "ssl": t.tls,
        }
        self._sentinel = Sentinel(list(t.nodes), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
        assert t.master is not None
        # The master's connections ask the Sentinels where it is whenever they (re)connect.
        master: Redis = self._sentinel.master_for(
            t.master, redis_class=Redis, db=t.db, ssl=t.tls, health_check_interval=30, **auth, **options
        )
        return master

    async def warm_up(self) -> None:
        """Read the cluster's slot map if not read yet; raises one of :data:`FAULTS` on failure."""
        async with self._warming:
            if self.cold and isinstance(self.client, RedisCluster):
                await self.client.initialize()
            self.cold = False

    async def ping(self, timeout_s: float = 1.0) -> None:
        """Raises one of :data:`FAULTS` when Redis does not answer within ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            if self.cold:
                await self.warm_up()
            await self.client.ping()

    async def close(self) -> None:
        """Idempotent. Only the owner closes it: users handed a shared one leave it open."""
        if self._closed:
            return
        self._closed = True
        await self.client.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()
