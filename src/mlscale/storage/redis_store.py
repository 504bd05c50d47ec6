"""Redis and Redis Cluster key-value stores (redis-py with hiredis).

Every call has a socket timeout, so a dead or stalled Redis turns into ServiceUnavailable within
``timeout`` seconds instead of a hung request. Batch calls are one MGET or one pipeline: one round trip.
An optional ``prefix`` namespaces the keys, so several stores (or test runs) share one Redis safely.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.retry import Retry

from mlscale.errors import ConfigError, ServiceUnavailable
from mlscale.storage.base import KeyValue

# Errors of a call that reached (or failed to reach) the server; mapped to ServiceUnavailable.
_ERRORS = (RedisError, RedisClusterException)
# Answers of a cluster whose slot table changed (failover, reshard): reload the table and resend.
_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)
# Stages one slot's commands on a node's pipeline (see RedisClusterKeyValue._per_node).
_Stage = Callable[[Pipeline, list[bytes]], object]
_GLOB_SPECIALS = b"*?[]\\"
_OWN_OPTIONS = ("prefix", "wait")


def _glob_escape(raw: bytes) -> bytes:
    return b"".join(b"\\" + bytes([c]) if c in _GLOB_SPECIALS else bytes([c]) for c in raw)


def split_prefix(url: str) -> tuple[str, bytes]:
    """Remove mlscale's own ``prefix=`` query argument from a Redis URL (redis-py would reject it)."""
    url, options = split_options(url)
    return url, options["prefix"].encode()


def split_options(url: str) -> tuple[str, dict[str, str]]:
    """Remove mlscale's own query arguments (``prefix=``, ``wait=``) from a Redis URL; redis-py
    would reject them. Returns the URL for redis-py and the options (empty strings when absent)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {name: "".join(v for k, v in query if k == name) for name in _OWN_OPTIONS}
    rest = urlencode([(k, v) for k, v in query if k not in _OWN_OPTIONS])
    return urlunsplit(parts._replace(query=rest)), options


def _ms(ttl: float) -> int:
    return max(int(ttl * 1000), 1)


# set_many_if_newer: KEYS are the keys; ARGV[1] the ttl in ms (0: none), then (value, version)
# per key. A stored value's version is its first 8 bytes (little-endian int64): Redis runs a script
# alone, so no other write comes between the compare and the SET. Lua numbers are doubles, exact
# for versions up to 2^53 (event times in microseconds, epochs in milliseconds). First bytes that
# read as 2^62 or more are text, not a version (no clock reaches it; JSON written before versions
# existed does, '{"window' is 8.6e18): such a value is unversioned and overwritten, as in SQLite.
# Returns how many keys were written.
_SET_IF_NEWER = """
local ttl = tonumber(ARGV[1])
local written = 0
for i, key in ipairs(KEYS) do
    local value, version = ARGV[2 * i], tonumber(ARGV[2 * i + 1])
    local old = redis.call('GETRANGE', key, 0, 7)
    local stored = #old == 8 and struct.unpack('<i8', old) or nil
    if stored == nil or stored >= 4611686018427387904 or stored <= version then
        if ttl > 0 then
            redis.call('SET', key, value, 'PX', ttl)
        else
            redis.call('SET', key, value)
        end
        written = written + 1
    end
end
return written
"""


class RedisKeyValue(KeyValue):
    """One Redis server (or a Sentinel-less primary): ``RedisKeyValue("redis://host:6379/0")``.

    A write returns once the primary has applied it; Redis copies it to replicas afterwards, so a
    primary that crashes in between loses it even though the write was acknowledged, and a replica
    promoted in its place never had it. ``wait=N`` (``redis://host:6379/0?wait=1``, or the argument)
    makes every write batch end with ``WAIT N timeout``: the call returns only once N replicas hold
    the batch, and otherwise raises ServiceUnavailable (the batch may be on the primary: writes are
    idempotent, so the caller retries). With a replica per primary, a write acknowledged that way
    survives the loss of its primary, the failover promoting that replica. Reads are not affected.
    """

    # Keys per call of the conditional-write script: a script blocks the server while it runs, so a
    # big batch goes as several calls in one pipeline.
    _keys_per_script = 256

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        timeout: float = 1.0,
        prefix: bytes = b"",
        wait: int | None = None,
    ) -> None:
        self.url, options = split_options(url)
        self.prefix = prefix or options["prefix"].encode()
        self.timeout = timeout
        try:
            self.wait = wait if wait is not None else int(options["wait"] or 0)
        except ValueError:
            raise ConfigError(f"bad Redis URL {url!r}: wait= must be a number of replicas") from None
        if self.wait < 0:
            raise ConfigError(f"bad Redis URL {url!r}: wait= must be 0 or more replicas")
        self._options = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry_on_timeout": False,
            "health_check_interval": 30,
        }
        try:
            self.client = self._make_client()
        except (ValueError, RedisClusterException) as exc:
            raise ConfigError(f"bad Redis URL {url!r}: {exc}") from None
        self._async: dict[int, tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis]] = {}
        # EVALSHA with a fallback to loading the script (redis-py loads it before a pipeline runs).
        self._set_if_newer = self.client.register_script(_SET_IF_NEWER)

    def _make_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, **self._options)

    def _where(self) -> str:
        return urlsplit(self.url).netloc.rsplit("@", 1)[-1] or self.url

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable(f"Redis at {self._where()} is unavailable: {exc}")

    def _k(self, key: bytes) -> bytes:
        return self.prefix + key if self.prefix else key

    def _stage_wait(self, pipe: Pipeline) -> None:
        """End a write pipeline with WAIT when writes must reach replicas before they count."""
        if self.wait:
            # Half the timeout, so WAIT answers (with how many replicas it saw) before the socket gives up.
            pipe.execute_command("WAIT", self.wait, _ms(self.timeout / 2))

    def _check_wait(self, answers: list) -> list:
        """The pipeline's answers without WAIT's; raises when fewer replicas than asked hold the writes."""
        if not self.wait:
            return answers
        copies = int(answers[-1])
        if copies < self.wait:
            raise ServiceUnavailable(
                f"Redis at {self._where()}: a write reached {copies} of the {self.wait} replicas asked for "
                f"(wait={self.wait}) within {self.timeout / 2}s; it may be on the primary only, retry it"
            )
        return answers[:-1]

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            return self.client.mget([self._k(k) for k in keys])
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc

    def set_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        if not items:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, value in items.items():
                pipe.set(self._k(key), value, px=_ms(ttl) if ttl is not None else None)
            self._stage_wait(pipe)
            self._check_wait(pipe.execute())
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc

    def _set_many_if_newer(self, items: Mapping[bytes, bytes], versions: Sequence[int], ttl: float | None) -> None:
        keys = [self._k(k) for k in items]
        args: list = [None] * (2 * len(keys))
        args[0::2] = items.values()
        args[1::2] = versions
        ttl_arg = _ms(ttl) if ttl is not None else 0
        step = self._keys_per_script
        try:
            pipe = self.client.pipeline(transaction=False)
            for start in range(0, len(keys), step):
                self._set_if_newer(
                    keys=keys[start : start + step],
                    args=[ttl_arg, *args[2 * start : 2 * (start + step)]],
                    client=pipe,
                )
            self._stage_wait(pipe)
            self._check_wait(pipe.execute())
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc

    def set_many_with_ttls(self, items: Mapping[bytes, tuple[bytes, float | None]]) -> None:
        if not items:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, (value, ttl) in items.items():
                pipe.set(self._k(key), value, px=_ms(ttl) if ttl is not None else None)
            self._stage_wait(pipe)
            self._check_wait(pipe.execute())
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc

    def delete(self, keys: Sequence[bytes]) -> int:
        if not keys:
            return 0
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(*[self._k(k) for k in keys])
            self._stage_wait(pipe)
            return int(self._check_wait(pipe.execute())[0])
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc

    def scan(self, prefix: bytes = b"") -> Iterator[bytes]:
        pattern = _glob_escape(self.prefix + prefix) + b"*"
        cut = len(self.prefix)
        try:
            keys = [k[cut:] for k in self.client.scan_iter(match=pattern, count=1000)]
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc
        # SCAN may return a key twice (during a rehash); callers expect each key once.
        return iter(dict.fromkeys(keys))

    def ttl_many(self, keys: Sequence[bytes]) -> list[float | None]:
        if not keys:
            return []
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.pttl(self._k(key))
            answers = pipe.execute()
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc
        # PTTL: -1 no expiry, -2 missing.
        return [ms / 1000 if ms >= 0 else None for ms in answers]

    def ping(self) -> bool:
        """True when the server answers within the timeout."""
        try:
            return bool(self.client.ping())
        except RedisError:
            return False

    # Native asyncio path: one client per event loop, because a redis.asyncio connection pool is
    # bound to the loop that created it.
    def _aclient(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        entry = self._async.get(id(loop))
        # The loop is kept in the entry, so its id cannot be reused by a later loop while we hold it.
        if entry is None or entry[0] is not loop:
            entry = self._async[id(loop)] = (loop, self._make_async_client())
        return entry[1]

    def _make_async_client(self) -> redis.asyncio.Redis:
        return redis.asyncio.Redis.from_url(self.url, **self._options)

    async def aget_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            return await self._aclient().mget([self._k(k) for k in keys])
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def aset_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        if not items:
            return
        try:
            async with self._aclient().pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(self._k(key), value, px=_ms(ttl) if ttl is not None else None)
                self._stage_wait(pipe)
                self._check_wait(await pipe.execute())
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def adelete(self, keys: Sequence[bytes]) -> int:
        if not keys:
            return 0
        if self.wait:
            return await asyncio.to_thread(self.delete, keys)
        try:
            return int(await self._aclient().delete(*[self._k(k) for k in keys]))
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc

    async def aclose(self) -> None:
        """Close the async client of the running loop (call before the loop ends)."""
        entry = self._async.pop(id(asyncio.get_running_loop()), None)
        if entry is not None:
            await entry[1].aclose()

    def close(self) -> None:
        with contextlib.suppress(*_ERRORS):
            self.client.close()
        self._async.clear()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class RedisClusterKeyValue(RedisKeyValue):
    """A Redis Cluster (``redis+cluster://host:port``); the other nodes are discovered from that one.

    Blocking batch calls group the keys by owning primary and send each primary one plain pipeline
    (one MGET or DEL per hash slot, one SET or PTTL per key). redis-py's cluster pipeline would do the
    same, but when a node stalls it retries every failed slot one at a time, so a batch over a hung
    node took a timeout per slot (15 s for 50 keys at 0.5 s); here it costs one timeout per node.
    A redirect (MOVED/ASK after a failover or reshard) refreshes the slot table and the batch is
    sent once more. The async face uses redis.asyncio's cluster client, which asks nodes concurrently
    (a hung node costs it about two timeouts). A batch that fails on one node may have been applied
    on the others: writes are not atomic across slots.

    The topology is discovered at construction, so an unreachable cluster, or a plain Redis given as
    a cluster, fails there with ServiceUnavailable rather than on the first request.
    """

    def __init__(self, url: str, *, timeout: float = 1.0, prefix: bytes = b"", wait: int | None = None) -> None:
        self.spec = url
        self._stale = False  # True after a node failed: reload the slot table before the next batch
        # redis+cluster://host:port is the mlscale spelling; redis-py wants redis://.
        url = url.replace("redis+cluster://", "redis://", 1).replace("rediss+cluster://", "rediss://", 1)
        try:
            super().__init__(url, timeout=timeout, prefix=prefix, wait=wait)
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc

    def _make_client(self) -> redis.Redis:
        # redis-py retries a cluster command 10 times by default, refreshing the topology in between:
        # against a dead node that is 10 timeouts. One retry still follows a failover.
        self._options["retry"] = Retry(NoBackoff(), retries=1)
        try:
            return redis.cluster.RedisCluster.from_url(self.url, **self._options)  # type: ignore[return-value]
        except RedisClusterException as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable(f"Redis Cluster at {self._where()} is unavailable: {exc}")

    def _per_node(self, keys: list[bytes], stage: _Stage, *, write: bool = False) -> tuple[list[int], list]:
        """Run ``stage(pipe, keys_of_one_slot)`` for every slot, one pipeline per primary.

        Returns the positions of the keys in the order their commands ran and the flat answers.
        A ``write`` ends each primary's pipeline with WAIT when ``wait`` asks for replicas.
        """
        try:
            if self._stale:
                self._reload_slots()
            try:
                return self._send_per_node(keys, stage, write)
            except _REDIRECTS:
                # A failover or reshard moved slots. Resending is safe: SET, MGET and PTTL are
                # idempotent; a DEL resent may count fewer keys than it removed.
                self._reload_slots()
                return self._send_per_node(keys, stage, write)
        except (redis.ConnectionError, redis.TimeoutError):
            self._stale = True  # a node failed: the next call reloads the table, in case a replica took over
            raise

    def _reload_slots(self) -> None:
        self.client.nodes_manager.initialize()  # type: ignore[attr-defined]
        self._stale = False

    def _send_per_node(self, keys: list[bytes], stage: _Stage, write: bool) -> tuple[list[int], list]:
        cluster = self.client
        by_node: dict[str, tuple[object, dict[int, list[int]]]] = {}
        for i, key in enumerate(keys):
            slot = cluster.keyslot(key)  # type: ignore[attr-defined]
            node = cluster.nodes_manager.get_node_from_slot(slot)  # type: ignore[attr-defined]
            by_node.setdefault(node.name, (node, {}))[1].setdefault(slot, []).append(i)
        positions: list[int] = []
        answers: list = []
        for node, slots in by_node.values():
            pipe = cluster.get_redis_connection(node).pipeline(transaction=False)  # type: ignore[attr-defined]
            for group in slots.values():
                stage(pipe, [keys[i] for i in group])
                positions += group
            if write:
                self._stage_wait(pipe)
                answers += self._check_wait(pipe.execute())
            else:
                answers += pipe.execute()
        return positions, answers

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            positions, answers = self._per_node([self._k(k) for k in keys], lambda pipe, group: pipe.mget(group))
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc
        values: list[bytes | None] = [None] * len(keys)
        for i, value in zip(positions, (v for answer in answers for v in answer), strict=True):
            values[i] = value
        return values

    def set_many_with_ttls(self, items: Mapping[bytes, tuple[bytes, float | None]]) -> None:
        if not items:
            return
        staged = {self._k(key): entry for key, entry in items.items()}

        def stage(pipe: Pipeline, group: list[bytes]) -> None:
            for key in group:
                value, ttl = staged[key]
                pipe.set(key, value, px=_ms(ttl) if ttl is not None else None)

        try:
            self._per_node(list(staged), stage, write=True)
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc

    def set_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        self.set_many_with_ttls({key: (value, ttl) for key, value in items.items()})

    def delete(self, keys: Sequence[bytes]) -> int:
        if not keys:
            return 0
        try:
            _, counts = self._per_node([self._k(k) for k in keys], lambda pipe, group: pipe.delete(*group), write=True)
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc
        return sum(counts)

    def ttl_many(self, keys: Sequence[bytes]) -> list[float | None]:
        if not keys:
            return []

        def stage(pipe: Pipeline, group: list[bytes]) -> None:
            for key in group:
                pipe.pttl(key)

        try:
            positions, answers = self._per_node([self._k(k) for k in keys], stage)
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc
        ttls: list[float | None] = [None] * len(keys)
        for i, ms in zip(positions, answers, strict=True):
            ttls[i] = ms / 1000 if ms >= 0 else None  # PTTL: -1 no expiry, -2 missing
        return ttls

    def _set_many_if_newer(self, items: Mapping[bytes, bytes], versions: Sequence[int], ttl: float | None) -> None:
        """One script call per hash slot (a script's keys must share one), one pipeline per primary.

        Scripts are not loaded by a plain pipeline: after a NOSCRIPT the script is loaded on every
        primary (where SCRIPT LOAD goes) and the batch sent again (it is idempotent).
        """
        ttl_arg = _ms(ttl) if ttl is not None else 0
        staged = {self._k(key): (value, version) for (key, value), version in zip(items.items(), versions, strict=True)}
        sha = self._set_if_newer.sha

        def stage(pipe: Pipeline, group: list[bytes]) -> None:
            args: list = [ttl_arg]
            for key in group:
                args += staged[key]
            pipe.evalsha(sha, len(group), *group, *args)

        try:
            try:
                self._per_node(list(staged), stage, write=True)
            except NoScriptError:
                self.client.script_load(_SET_IF_NEWER)
                self._per_node(list(staged), stage, write=True)
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc

    def _make_async_client(self) -> redis.asyncio.Redis:
        # The asyncio cluster client takes no retry_on_timeout (it never retries a timed-out node).
        options = {k: v for k, v in self._options.items() if k != "retry_on_timeout"}
        return redis.asyncio.RedisCluster.from_url(self.url, **options)  # type: ignore[return-value]

    # WAIT has no key, so the asyncio cluster client cannot route it: with ``wait`` the async writes
    # run the blocking ones (one pipeline and one WAIT per primary) in a thread.
    async def aset_many(self, items: Mapping[bytes, bytes], ttl: float | None = None) -> None:
        if self.wait:
            await asyncio.to_thread(self.set_many, items, ttl)
        else:
            await super().aset_many(items, ttl)

    async def adelete(self, keys: Sequence[bytes]) -> int:
        if self.wait:
            return await asyncio.to_thread(self.delete, keys)
        return await super().adelete(keys)

    async def aget_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            return await self._aclient().mget_nonatomic([self._k(k) for k in keys])  # type: ignore[attr-defined]
        except _ERRORS as exc:
            raise self._unavailable(exc) from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"
