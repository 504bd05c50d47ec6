"""Token-bucket rate limits per tenant: in-process, or shared by every worker and replica in Redis.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a request takes
one or is refused with the time until one is there (HTTP 429, Retry-After). In Redis the whole
read-refill-take-write step is one Lua script, so concurrent workers on many hosts never both take
the last token, and the clock is Redis's own ``TIME``, so hosts with skewed clocks agree.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from mlscale.errors import RateLimited, ServiceUnavailable

log = logging.getLogger("mlscale.auth")

# KEYS[1] the bucket; ARGV rate (tokens/s), burst, cost, now in microseconds ("" = Redis TIME).
# State: tokens and the time of the last refill in integer microseconds (exact in a double
# below 2^53, i.e. until the year 2255). Returns {allowed, seconds to wait} (floats as strings:
# Lua numbers in replies are truncated to integers).
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now
if ARGV[4] ~= nil and ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000000)
  ts = now
end
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'ts', string.format('%.0f', ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, string.format('%.17g', wait)}
"""


def retry_after(wait: float) -> int:
    """Whole seconds for Retry-After (HTTP allows no fractions): at least 1."""
    return max(1, math.ceil(wait))


class LocalBuckets:
    """Buckets in this process (no Redis configured). ``share`` divides rate and burst, so N
    workers together allow about the configured rate."""

    def __init__(self, share: int = 1) -> None:
        self.share = max(1, share)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, tenant: str, rate: float, burst: float, now: float | None = None) -> float:
        """0.0 when a token was taken, else seconds until one is available."""
        rate, burst = rate / self.share, max(1.0, burst / self.share)
        now = time.monotonic() if now is None else now
        tokens, ts = self._buckets.get(tenant, (burst, now))
        if now > ts:
            tokens = min(burst, tokens + (now - ts) * rate)
            ts = now
        if tokens >= 1:
            self._buckets[tenant] = (tokens - 1, ts)
            return 0.0
        self._buckets[tenant] = (tokens, ts)
        return (1 - tokens) / rate

    async def atake(self, tenant: str, rate: float, burst: float) -> float:
        return self.take(tenant, rate, burst)

    async def aclose(self) -> None:
        pass


class RedisBuckets:
    """Buckets in Redis, shared by every process that uses the same URL and prefix."""

    def __init__(self, url: str, prefix: str = "mlscale:quota:", timeout: float = 1.0) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self._clients: dict[int, tuple[object, object]] = {}

    def _client(self):
        """One async client per event loop (each worker process, or a test's loop)."""
        import redis.asyncio

        loop = asyncio.get_running_loop()
        entry = self._clients.get(id(loop))
        if entry is None or entry[0] is not loop:
            # A bounded pool: a burst of thousands of requests queues for 32 connections
            # instead of opening thousands (and timing out on the connects).
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.url,
                max_connections=32,
                timeout=self.timeout,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
            )
            client = redis.asyncio.Redis(connection_pool=pool)
            entry = (loop, (client, client.register_script(TOKEN_BUCKET_LUA)))
            self._clients[id(loop)] = entry
        return entry[1]

    async def atake(self, tenant: str, rate: float, burst: float, now_us: int | None = None) -> float:
        """0.0 when a token was taken, else seconds until one is available."""
        import redis

        _client, script = self._client()
        try:
            allowed, wait = await script(
                keys=[self.prefix + tenant], args=[rate, burst, 1, "" if now_us is None else now_us]
            )
        except (redis.RedisError, OSError) as exc:
            raise ServiceUnavailable(f"the quota store is unreachable: {type(exc).__name__}") from None
        return 0.0 if int(allowed) == 1 else float(wait)

    async def aclose(self) -> None:
        for loop, (client, _script) in list(self._clients.values()):
            if loop is asyncio.get_running_loop():
                await client.aclose()
                await client.connection_pool.disconnect()
        self._clients.clear()


class Quotas:
    """Per-tenant limits with defaults from the settings and overrides per key."""

    def __init__(self, buckets: LocalBuckets | RedisBuckets, rate: float, burst: float, fail_open: bool = True):
        self.buckets = buckets
        self.rate = rate
        self.burst = burst
        self.fail_open = fail_open

    async def check(self, tenant: str, rate: float | None = None, burst: float | None = None) -> None:
        """Take a token for ``tenant`` or raise RateLimited (429)."""
        try:
            wait = await self.buckets.atake(tenant, rate or self.rate, burst or self.burst)
        except ServiceUnavailable:
            if self.fail_open:
                log.warning("quota store unreachable; admitting without a quota check")
                return
            raise
        if wait > 0:
            raise RateLimited("rate limit exceeded for this key's tenant", retry_after(wait))
