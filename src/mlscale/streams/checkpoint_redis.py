"""Stream checkpoints in Redis: for teams that run Redis and no relational database.

Layout per processor name (one hash tag, so every key of a name sits in one slot and one script
sees them all): ``{prefix}{name}:epoch`` and ``{prefix}{name}:off`` (hashes, partition -> value)
and ``{prefix}{name}:state:<part>`` (hash, feature -> blob). Acquire and commit are Lua scripts,
which Redis runs alone: the epoch compare and the writes of a commit are one atomic step, and the
new epoch is the greater of the old one + 1 and the SERVER's clock in ms (one clock for all hosts).

Durability is Redis's: a plain primary acknowledges before its replica has the write, so a
failover can roll an epoch back (and with it the fencing). ``?wait=1`` ends every acquire and
commit with WAIT 1 (it raises when no replica confirmed), and persistence (appendonly with fsync)
keeps a restart from losing them. PostgreSQL is the simpler choice where it runs.
Offsets are kept as decimal strings: Redis Streams offsets exceed 2^53, where Lua's doubles stop.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import redis

from mlscale.errors import ConfigError, ServiceUnavailable
from mlscale.storage.redis_store import split_options
from mlscale.streams.checkpoint import Checkpoints

# KEYS: epoch hash, offset hash, state hash; ARGV: partition. Returns {epoch, offset, state}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('HGET', KEYS[1], ARGV[1])
local epoch = now
if old and tonumber(old) + 1 > now then epoch = tonumber(old) + 1 end
local text = string.format('%d', epoch)
redis.call('HSET', KEYS[1], ARGV[1], text)
local off = redis.call('HGET', KEYS[2], ARGV[1])
if not off then
    off = '-1'
    redis.call('HSET', KEYS[2], ARGV[1], off)
end
return {text, off, redis.call('HGETALL', KEYS[3])}
"""

# KEYS: epoch hash, offset hash, then one state hash per partition in ARGV order.
# ARGV: per partition: part, epoch, offset, number of blobs, then feature, blob pairs.
# Returns the partitions fenced off (their epoch moved): nothing of those is written.
_COMMIT = """
local fenced = {}
local i, k = 1, 3
while i <= #ARGV do
    local part, epoch, off, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
    if redis.call('HGET', KEYS[1], part) == epoch then
        redis.call('HSET', KEYS[2], part, off)
        for j = 0, n - 1 do
            redis.call('HSET', KEYS[k], ARGV[i + 4 + 2 * j], ARGV[i + 5 + 2 * j])
        end
    else
        table.insert(fenced, part)
    end
    i = i + 4 + 2 * n
    k = k + 1
end
return fenced
"""


class RedisCheckpoints(Checkpoints):
    """``RedisCheckpoints("redis://host:6379/0?prefix=app:&wait=1")``: the shared checkpoint store."""

    def __init__(
        self, url: str, *, timeout: float = 5.0, prefix: str = "mlscale:ckpt:", wait: int | None = None
    ) -> None:
        self.url, options = split_options(url)
        self.prefix = options["prefix"] or prefix
        try:
            self.wait = wait if wait is not None else int(options["wait"] or 0)
        except ValueError:
            raise ConfigError(f"bad Redis URL {url!r}: wait= must be a number of replicas") from None
        self.timeout = timeout
        try:
            self._r = redis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout)
        except ValueError as exc:
            raise ConfigError(f"bad Redis URL {url!r}: {exc}") from None
        self._acquire = self._r.register_script(_ACQUIRE)
        self._commit = self._r.register_script(_COMMIT)

    def _keys(self, name: str) -> tuple[str, str]:
        base = f"{self.prefix}{{{name}}}"
        return f"{base}:epoch", f"{base}:off"

    def _state(self, name: str, part: int) -> str:
        return f"{self.prefix}{{{name}}}:state:{part}"

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        where = urlsplit(self.url).netloc.rsplit("@", 1)[-1] or self.url
        return ServiceUnavailable(f"checkpoint store Redis at {where}: {exc}")

    def _replicated(self) -> None:
        """With ``wait``: return only once that many replicas hold what this client wrote."""
        if self.wait:
            copies = int(self._r.execute_command("WAIT", self.wait, int(self.timeout * 500)))
            if copies < self.wait:
                raise ServiceUnavailable(
                    f"checkpoint store Redis: {copies} of {self.wait} replicas confirmed the write; retry it"
                )

    def acquire(self, name: str, part: int) -> tuple[int, int, dict[str, bytes]]:
        epochs, offs = self._keys(name)
        try:
            epoch, off, flat = self._acquire(keys=[epochs, offs, self._state(name, part)], args=[part])
            self._replicated()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        state = {flat[i].decode(): bytes(flat[i + 1]) for i in range(0, len(flat), 2)}
        return int(epoch), int(off), state

    def commit(self, name: str, updates: dict[int, tuple[int, int, dict[str, bytes]]]) -> list[int]:
        if not updates:
            return []
        keys = list(self._keys(name))
        args: list[object] = []
        for part, (epoch, off, blobs) in updates.items():
            keys.append(self._state(name, part))
            args += [part, str(epoch), str(off), len(blobs)]
            for feature, blob in blobs.items():
                args += [feature, blob]
        try:
            fenced = self._commit(keys=keys, args=args)
            self._replicated()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return [int(p) for p in fenced]

    def _hash(self, key: str) -> dict[int, int]:
        try:
            return {int(k): int(v) for k, v in self._r.hgetall(key).items()}
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    def epochs(self, name: str) -> dict[int, int]:
        return self._hash(self._keys(name)[0])

    def offsets(self, name: str) -> dict[int, int]:
        return self._hash(self._keys(name)[1])

    def forget(self, name: str) -> None:
        epochs, offs = self._keys(name)
        parts = self._hash(epochs)
        try:
            self._r.delete(epochs, offs, *[self._state(name, p) for p in parts])
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    def close(self) -> None:
        self._r.close()

    def __repr__(self) -> str:
        return f"RedisCheckpoints({urlsplit(self.url).netloc.rsplit('@', 1)[-1]}, prefix={self.prefix!r})"
