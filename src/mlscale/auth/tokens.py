"""JWTs from an identity provider, verified against a JWKS file (PyJWT with cryptography).

Signature, ``iss``, ``aud`` and ``exp`` are all required; the algorithm list is fixed by the
settings, never taken from the token (the classic ``alg: none`` / HMAC-with-public-key confusion).
"""

from __future__ import annotations

import json
from pathlib import Path

from mlscale.auth.keys import Principal
from mlscale.auth.settings import SCOPES, AuthSettings
from mlscale.errors import ConfigError


class JwtVerifier:
    """Verifies a bearer token and turns its claims into a Principal."""

    def __init__(self, settings: AuthSettings, jwks_path: Path) -> None:
        import jwt

        try:
            document = json.loads(jwks_path.read_text())
            self._keys = jwt.PyJWKSet.from_dict(document)
        except (OSError, ValueError, jwt.exceptions.PyJWTError) as exc:
            raise ConfigError(f"{jwks_path}: not a usable JWKS document: {exc}") from None
        self._jwt = jwt
        self.settings = settings

    def _signing_key(self, token: str):
        kid = self._jwt.get_unverified_header(token).get("kid")
        keys = self._keys.keys
        if kid is not None:
            keys = [k for k in keys if k.key_id == kid]
        if len(keys) != 1:
            raise self._jwt.InvalidTokenError("no single JWKS key matches the token's kid")
        return keys[0]

    def verify(self, token: str) -> Principal | None:
        """The principal, or None when the token does not verify (any reason: the caller answers 401)."""
        s = self.settings
        try:
            claims = self._jwt.decode(
                token,
                self._signing_key(token),
                algorithms=s.jwt_algorithms,
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                leeway=s.jwt_leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except self._jwt.exceptions.PyJWTError:
            return None
        raw = claims.get(s.jwt_scope_claim, "")
        scopes = raw.split() if isinstance(raw, str) else list(raw) if isinstance(raw, list) else []
        subject = str(claims.get("sub", ""))
        tenant = str(claims.get(s.jwt_tenant_claim, subject))
        return Principal(subject or tenant, tenant, frozenset(x for x in scopes if x in SCOPES))
