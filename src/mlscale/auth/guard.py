"""The edge check every request passes before anything else looks at it: who is calling (API key
or JWT), may they call this route (scope), and is their quota left. The server and the gateway
both run it, before admission and before reading the body, so a refusal costs only the headers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mlscale.auth.keys import KeyStore, Principal
from mlscale.auth.quotas import LocalBuckets, Quotas, RedisBuckets
from mlscale.auth.scopes import required_scope
from mlscale.auth.settings import AuthSettings, QuotaSettings
from mlscale.errors import Forbidden, Unauthorized

ANONYMOUS = Principal("anonymous", "anonymous", frozenset({"infer", "read", "admin"}))


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None when absent or another scheme."""
    for key, value in headers:
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class Guard:
    """Authentication, scopes and quotas for one process (built from the project settings)."""

    def __init__(
        self,
        auth: AuthSettings,
        quotas: QuotaSettings | None = None,
        *,
        resolve: Callable[[str], Path] = Path,
        workers: int = 1,
    ) -> None:
        self.enabled = auth.enabled
        self.keys: KeyStore | None = None
        self.jwt = None
        if auth.enabled:
            self.keys = KeyStore(resolve(auth.keys_file) if not auth.keys_env else None, auth.keys_env)
            if auth.jwks_file:
                from mlscale.auth.tokens import JwtVerifier

                self.jwt = JwtVerifier(auth, resolve(auth.jwks_file))
        self.quotas: Quotas | None = None
        if quotas is not None and quotas.enabled:
            buckets = RedisBuckets(quotas.redis, quotas.key_prefix) if quotas.redis else LocalBuckets(workers)
            self.quotas = Quotas(buckets, quotas.rate, quotas.burst, quotas.fail_open)

    @property
    def active(self) -> bool:
        return self.enabled or self.quotas is not None

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> Principal:
        """The caller, or Unauthorized; the message never contains the credential."""
        token = bearer(headers)
        if token is None:
            raise Unauthorized("this route needs an API key: send 'Authorization: Bearer <key>'")
        principal = None
        if self.keys is not None:
            principal = self.keys.verify(token)
        if principal is None and self.jwt is not None and token.count(".") == 2:
            principal = self.jwt.verify(token)
        if principal is None:
            raise Unauthorized("the API key or token is not valid", error="invalid_token")
        return principal

    async def check(self, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Principal | None:
        """Raise Unauthorized (401), Forbidden (403) or RateLimited (429); else the principal
        (None for open routes)."""
        return await self.check_scope(required_scope(method, path), headers, f"{method} {path}")

    async def check_scope(self, scope: str | None, headers: list[tuple[bytes, bytes]], what: str) -> Principal | None:
        """``check`` for a call that needs ``scope`` (None: open), described as ``what`` in a
        refusal: the gRPC edge maps its methods to the same scopes as the REST routes."""
        if scope is None:
            return None
        principal = ANONYMOUS
        if self.enabled:
            principal = self.authenticate(headers)
            if scope not in principal.scopes:
                raise Forbidden(f"this key lacks the scope {scope!r} that {what} needs")
        if self.quotas is not None and scope == "infer":
            await self.quotas.check(principal.tenant, principal.rate, principal.burst)
        return principal

    async def aclose(self) -> None:
        if self.quotas is not None:
            await self.quotas.buckets.aclose()


def guard_from_settings(settings, workers: int = 1) -> Guard | None:
    """The project's guard, or None when neither auth nor quotas are on (the zero-cost default)."""
    guard = Guard(settings.auth, settings.quotas, resolve=settings.resolve, workers=workers)
    return guard if guard.active else None
