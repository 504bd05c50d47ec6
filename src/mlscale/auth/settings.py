"""Settings of authentication, quotas and TLS (``[auth]``, ``[quotas]``, ``[tls]`` in mlscale.toml).

Imports nothing heavy: config.py loads this module in every command.

[auth]
enabled = true
keys_file = "keys.json"          # written by `mlscale auth add-key`; holds only hashes
# keys_env = "MLSCALE_API_KEYS"  # or: the name of an environment variable holding that JSON
# jwks_file = "jwks.json"        # also accept JWTs signed by these keys
# jwt_issuer = "https://id.example.com/"
# jwt_audience = "mlscale"

[quotas]
enabled = true
rate = 100.0                     # requests per second per tenant
burst = 200                      # requests a tenant may send at once after being idle
redis = "redis://127.0.0.1:6379/0"  # shared by every worker and replica; empty: in-process buckets

[tls]
certfile = "tls/server.pem"
keyfile = "tls/server.key"
ca_file = "tls/ca.pem"           # the gateway trusts replicas signed by this CA
"""

from __future__ import annotations

import msgspec

SCOPES = ("infer", "read", "admin")


class AuthSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Who may call what: API keys (hashed) and optionally JWTs from an identity provider."""

    enabled: bool = False
    # JSON file of hashed keys (`mlscale auth add-key` writes it), relative to the project folder.
    keys_file: str = "keys.json"
    # Name of an environment variable holding the same JSON; when set it replaces the file
    # (for secrets mounted as environment variables).
    keys_env: str = ""
    # A JWKS document (RFC 7517); tokens signed by one of its keys are accepted when they carry
    # the configured issuer and audience and have not expired.
    jwks_file: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256"])
    # Claims holding the token's scopes (space-separated string or list) and its tenant.
    jwt_scope_claim: str = "scope"
    jwt_tenant_claim: str = "sub"
    # Seconds of clock skew tolerated on exp/nbf/iat.
    jwt_leeway: float = 30.0

    def __post_init__(self) -> None:
        if self.jwks_file and not (self.jwt_issuer and self.jwt_audience):
            raise ValueError("auth.jwks_file needs auth.jwt_issuer and auth.jwt_audience")


class QuotaSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Token-bucket rate limits per tenant on inference requests (scope ``infer``)."""

    enabled: bool = False
    # Sustained requests per second per tenant (a key's own ``rate`` overrides it).
    rate: float = 100.0
    # Bucket size: requests a tenant may send at once after being idle (a key's ``burst`` overrides).
    burst: float = 200.0
    # Redis URL shared by every worker and replica (redis:// or rediss:// for TLS). Empty: buckets
    # in each worker process, the rate divided among workers (approximate: the kernel spreads
    # connections, not requests, evenly).
    redis: str = ""
    key_prefix: str = "mlscale:quota:"
    # When Redis cannot be reached: admit (true, the default: a quota outage must not be a serving
    # outage) or refuse with 503.
    fail_open: bool = True

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("quotas.rate must be positive and quotas.burst at least 1")


class TLSSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Certificates for HTTPS on the server (and its dashboard) and the gateway."""

    # PEM certificate chain and private key; both set means HTTPS.
    certfile: str = ""
    keyfile: str = ""
    # CA bundle the gateway verifies replicas against (https:// backends); empty: the system's.
    ca_file: str = ""

    def __post_init__(self) -> None:
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("tls.certfile and tls.keyfile go together")

    @property
    def enabled(self) -> bool:
        return bool(self.certfile)
