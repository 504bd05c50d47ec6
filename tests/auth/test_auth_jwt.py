"""JWTs verified against a JWKS file: signature, issuer, audience and expiry all checked."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mlscale.auth.guard import Guard
from mlscale.auth.settings import AuthSettings
from mlscale.errors import Forbidden, Unauthorized

ISSUER = "https://id.example.test/"
AUDIENCE = "mlscale"


@pytest.fixture
def idp(tmp_path):
    """A signing key of our own 'identity provider', its JWKS file, and a guard trusting it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": []}
    for kid, private, alg in (("rsa-1", key, "RS256"), ("ec-1", ec_key, "ES256")):
        algo = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
        public = json.loads(algo.to_jwk(private.public_key()))
        jwks["keys"].append({**public, "kid": kid, "alg": alg, "use": "sig"})
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    settings = AuthSettings(
        enabled=True,
        keys_file=str(tmp_path / "none.json"),
        jwks_file=str(tmp_path / "jwks.json"),
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_leeway=0,
    )
    return {"rsa": key, "ec": ec_key, "guard": Guard(settings)}


def _token(private, kid="rsa-1", alg="RS256", **claims) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-a", "exp": now + 60, "iat": now, "scope": "infer read"}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, private, algorithm=alg, headers={"kid": kid})


def _headers(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + token.encode())]


async def test_a_valid_token_grants_its_scopes(idp):
    guard = idp["guard"]
    principal = await guard.check("POST", "/v2/models/iris/infer", _headers(_token(idp["rsa"], tenant="t9")))
    assert principal.name == "svc-a" and principal.scopes == frozenset({"infer", "read"})
    ec_token = _token(idp["ec"], kid="ec-1", alg="ES256", scope=["read"])
    assert (await guard.check("GET", "/metrics", _headers(ec_token))).scopes == frozenset({"read"})
    with pytest.raises(Forbidden):
        await guard.check("POST", "/v2/repository/models/iris/unload", _headers(_token(idp["rsa"])))


@pytest.mark.parametrize(
    "change",
    [
        {"iss": "https://evil.example.test/"},
        {"aud": "someone-else"},
        {"exp": 1},  # long expired
        {"exp": None},  # no expiry at all
        {"aud": None},
    ],
)
async def test_tokens_with_wrong_claims_are_401(idp, change):
    with pytest.raises(Unauthorized):
        await idp["guard"].check("GET", "/metrics", _headers(_token(idp["rsa"], **change)))


async def test_tokens_signed_by_another_key_or_unsigned_are_401(idp):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = _token(stranger)
    unsigned = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60}, None, algorithm="none")
    # HS256 keyed with the public JWK text: the algorithm-confusion attack.
    for token in (forged, unsigned, forged[:-4] + "AAAA"):
        with pytest.raises(Unauthorized):
            await idp["guard"].check("GET", "/metrics", _headers(token))
