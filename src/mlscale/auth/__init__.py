"""Who may call what, at what rate, over which links: API keys and JWTs with scopes, per-tenant
token-bucket quotas (shared through Redis), and TLS settings.

Modules: ``settings`` ([auth], [quotas], [tls]; import-light), ``keys`` (hashed API keys),
``tokens`` (JWT against a JWKS file), ``scopes`` (route -> scope), ``quotas`` (token buckets),
``guard`` (the edge check the server and the gateway run), ``tls`` (SSL contexts and uvicorn
options), ``commands`` (``mlscale auth``).
"""

from mlscale.auth.settings import AuthSettings, QuotaSettings, TLSSettings

__all__ = ["AuthSettings", "QuotaSettings", "TLSSettings"]
