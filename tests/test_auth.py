"""Supabase access-token verification (s3seg.server._auth) against a real JWKS served over HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from s3seg.config import Settings
from s3seg.errors import AuthError, ServerError, UsageError
from s3seg.server._auth import TokenVerifier, User, bearer_token

ISS = "https://example.supabase.co/auth/v1"
AUD = "authenticated"
SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
SUB = "4f1c2a8e-0d6b-4c1e-9a57-2b8f1e3d9c10"

# Generated once per module (RSA 2048 takes a moment).
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_OTHER = ec.generate_private_key(ec.SECP256R1())  # the forger's key
EC_NEW = ec.generate_private_key(ec.SECP256R1())  # the key rotated in
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def _jwk(algorithm: Any, public_key: Any, kid: str, alg: str) -> dict[str, Any]:
    return {**algorithm.to_jwk(public_key, as_dict=True), "kid": kid, "alg": alg, "use": "sig"}


def _jwks(*extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "keys": [
            _jwk(ECAlgorithm, EC_KEY.public_key(), "ec1", "ES256"),
            _jwk(RSAAlgorithm, RSA_KEY.public_key(), "rsa1", "RS256"),
            _jwk(OKPAlgorithm, ED_KEY.public_key(), "ed1", "EdDSA"),
            *extra,
        ]
    }


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": SUB,
        "aud": AUD,
        "iss": ISS,
        "iat": now,
        "exp": now + 3600,
        "email": "ada@example.com",
        "role": "authenticated",
        "app_metadata": {"provider": "email", "tier": "pro"},
        "user_metadata": {},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _token(key: Any = EC_KEY, alg: str = "ES256", kid: str | None = "ec1", **claims: Any) -> str:
    return jwt.encode(_claims(**claims), key, algorithm=alg, headers={"kid": kid} if kid else None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_made(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None = None) -> str:
    """A token assembled by hand (PyJWT refuses to mint alg=none or HS256 with a PEM key)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest() if hmac_key else b""
    return f"{signing_input}.{_b64(signature)}"


# --- a real JWKS endpoint --------------------------------------------------------------------------


class _JWKSState:
    def __init__(self) -> None:
        self.body: bytes = b""
        self.status = 200
        self.requests = 0
        self.lock = threading.Lock()

    def serve(self, jwks: dict[str, Any] | bytes, status: int = 200) -> None:
        self.body = jwks if isinstance(jwks, bytes) else json.dumps(jwks).encode()
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    state: _JWKSState

    def do_GET(self) -> None:
        with self.state.lock:
            self.state.requests += 1
        self.send_response(self.state.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.state.body)))
        self.end_headers()
        self.wfile.write(self.state.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def _server() -> Iterator[tuple[str, _JWKSState]]:
    state = _JWKSState()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/auth/v1/.well-known/jwks.json", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def jwks(_server: tuple[str, _JWKSState]) -> _JWKSState:
    url, state = _server
    state.serve(_jwks())
    state.requests = 0
    state.url = url  # type: ignore[attr-defined]
    return state


@pytest.fixture
def make_verifier(jwks: _JWKSState) -> Iterator[Any]:
    made: list[TokenVerifier] = []

    def make(**kwargs: Any) -> TokenVerifier:
        kwargs = {"jwks_url": jwks.url, "issuer": ISS, **kwargs}  # type: ignore[attr-defined]
        made.append(TokenVerifier(**kwargs))
        return made[-1]

    yield make
    for v in made:
        v.close()


@pytest.fixture
def verifier(make_verifier: Any) -> TokenVerifier:
    return make_verifier()  # type: ignore[no-any-return]


def _refused(verifier: TokenVerifier, token: str, message: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert message in info.value.message, info.value.message
    assert info.value.hint and "s3seg login" in info.value.hint
    return info.value


# --- valid tokens --------------------------------------------------------------------------------


def test_es256_token(verifier: TokenVerifier) -> None:
    assert verifier.verify(_token()) == User(id=SUB, tier="pro", email="ada@example.com", role="authenticated")


def test_rs256_token(verifier: TokenVerifier) -> None:
    user = verifier.verify(_token(RSA_KEY, "RS256", "rsa1", app_metadata={"tier": "enterprise"}, email=None))
    assert user == User(id=SUB, tier="enterprise", email=None, role="authenticated")


def test_eddsa_token(verifier: TokenVerifier) -> None:
    assert verifier.verify(_token(ED_KEY, "EdDSA", "ed1")).id == SUB


def test_hs256_token_with_secret(make_verifier: Any, jwks: _JWKSState) -> None:
    v = make_verifier(jwks_url=None, secret=SECRET)
    assert v.verify(_token(SECRET, "HS256", None, app_metadata={"tier": "bogus"})) == User(
        id=SUB, tier="free", email="ada@example.com", role="authenticated"
    )
    assert jwks.requests == 0


def test_secret_and_jwks_together(make_verifier: Any) -> None:
    v = make_verifier(secret=SECRET)
    assert v.verify(_token(SECRET, "HS256", None)).id == SUB
    assert v.verify(_token()).id == SUB


def test_user_metadata_tier_is_ignored(verifier: TokenVerifier) -> None:
    # user_metadata is writable by the user (supabase.auth.updateUser): it must never grant a tier.
    token = _token(app_metadata={"provider": "email"}, user_metadata={"tier": "pro"})
    assert verifier.verify(token).tier == "free"
    assert verifier.verify(_token(app_metadata=None, user_metadata={"tier": "enterprise"})).tier == "free"


def test_no_audience_or_issuer_check_when_not_configured(make_verifier: Any) -> None:
    v = make_verifier(issuer=None, audience=None)
    assert v.verify(_token(iss="https://elsewhere", aud="anything")).id == SUB


# --- claims --------------------------------------------------------------------------------------


def test_expired(verifier: TokenVerifier) -> None:
    now = int(time.time())
    _refused(verifier, _token(iat=now - 7200, exp=now - 120), "token expired")


def test_expiry_within_leeway_is_accepted(verifier: TokenVerifier) -> None:
    now = int(time.time())
    assert verifier.verify(_token(iat=now - 3600, exp=now - 5)).id == SUB


def test_not_yet_valid(verifier: TokenVerifier) -> None:
    now = int(time.time())
    _refused(verifier, _token(nbf=now + 600), "not valid yet")
    _refused(verifier, _token(iat=now + 600, exp=now + 4200), "not valid yet")


def test_wrong_audience(verifier: TokenVerifier) -> None:
    _refused(verifier, _token(aud="anon"), "audience is wrong")
    _refused(verifier, _token(aud=None), "'aud'")


def test_wrong_issuer(verifier: TokenVerifier) -> None:
    _refused(verifier, _token(iss="https://attacker.supabase.co/auth/v1"), "issuer is wrong")
    _refused(verifier, _token(iss=None), "'iss'")


def test_missing_sub(verifier: TokenVerifier) -> None:
    _refused(verifier, _token(sub=None), "'sub'")
    _refused(verifier, _token(sub=""), "user id")


def test_missing_exp(verifier: TokenVerifier) -> None:
    _refused(verifier, _token(exp=None), "'exp'")


# --- signatures and algorithms -------------------------------------------------------------------


def test_alg_none(make_verifier: Any) -> None:
    for v in (make_verifier(), make_verifier(secret=SECRET)):
        for alg in ("none", "None", "NONE"):
            _refused(v, _hand_made({"alg": alg, "typ": "JWT"}, _claims()), "not accepted")
            _refused(v, _hand_made({"alg": alg, "kid": "ec1"}, _claims()), "not accepted")


def test_unknown_alg(verifier: TokenVerifier) -> None:
    _refused(verifier, _token(RSA_KEY, "RS512", "rsa1"), "not accepted")
    _refused(verifier, _token(RSA_KEY, "PS256", "rsa1"), "not accepted")
    _refused(verifier, _token(SECRET * 2, "HS512", None), "not accepted")
    _refused(verifier, _hand_made({"kid": "ec1"}, _claims()), "not accepted")  # no alg at all
    _refused(verifier, _hand_made({"alg": ["ES256"], "kid": "ec1"}, _claims()), "not accepted")
    _refused(verifier, _hand_made({"alg": {"x": 1}, "kid": "ec1"}, _claims()), "not accepted")


def test_forged_signature_same_kid(verifier: TokenVerifier) -> None:
    _refused(verifier, _token(EC_OTHER, "ES256", "ec1"), "signature is invalid")
    head, _, signature = _token().split(".")
    tampered = _b64(json.dumps(_claims(app_metadata={"tier": "enterprise"})).encode())
    _refused(verifier, f"{head}.{tampered}.{signature}", "signature is invalid")


def test_alg_must_match_the_kid_key(verifier: TokenVerifier) -> None:
    # An RS256 header naming the EC key's kid (and the reverse): the key decides, not the header.
    _refused(verifier, _token(RSA_KEY, "RS256", "ec1"), "does not match")
    _refused(verifier, _token(EC_KEY, "ES256", "rsa1"), "does not match")


def test_algorithm_confusion_hs256_with_public_key(make_verifier: Any) -> None:
    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = _hand_made({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}, _claims(), hmac_key=pem)
    _refused(make_verifier(), token, "'HS256' is not accepted")  # JWKS only: no HS256 at all
    _refused(make_verifier(secret=SECRET), token, "signature is invalid")  # HS256 only with the secret


def test_hs256_refused_without_secret(verifier: TokenVerifier, jwks: _JWKSState) -> None:
    _refused(verifier, _token(SECRET, "HS256", None), "not accepted")
    _refused(verifier, _token(SECRET, "HS256", "ec1"), "not accepted")
    assert jwks.requests == 0  # refused before any key lookup


def test_jwks_alg_refused_with_secret_only(make_verifier: Any) -> None:
    _refused(make_verifier(jwks_url=None, secret=SECRET), _token(), "'ES256' is not accepted")


def test_hs256_with_wrong_secret(make_verifier: Any) -> None:
    v = make_verifier(jwks_url=None, secret=SECRET)
    _refused(v, _token("another-secret-that-is-at-least-32-bytes-long", "HS256", None), "signature is invalid")


def test_garbage(verifier: TokenVerifier) -> None:
    for token in (
        "",
        "garbage",
        "a.b.c",
        "a.b",
        "...",
        "eyJhbGciOiJFUzI1NiJ9.e30",
        "x" * 20_000,
        _token() + "x",
        "é.é.é",
    ):
        _refused(verifier, token, "token")


def test_symmetric_and_broken_keys_in_jwks_are_skipped(make_verifier: Any, jwks: _JWKSState) -> None:
    jwks.serve(
        _jwks(
            {"kty": "oct", "kid": "sym", "k": _b64(SECRET.encode())},  # never usable from a public JWKS
            {"kty": "EC", "kid": "broken", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
            {"kty": "RSA", "kid": "weird"},
            "not a key",
        )
    )
    v = make_verifier()
    assert v.verify(_token()).id == SUB
    _refused(v, _hand_made({"alg": "HS256", "kid": "sym"}, _claims(), SECRET.encode()), "not accepted")
    _refused(v, _token(EC_KEY, "ES256", "broken"), "unknown signing key")


# --- the JWKS cache ------------------------------------------------------------------------------


def test_jwks_is_cached(verifier: TokenVerifier, jwks: _JWKSState) -> None:
    token = _token()
    for _ in range(20):
        verifier.verify(token)
    verifier.verify(_token(RSA_KEY, "RS256", "rsa1"))
    assert jwks.requests == 1


def test_jwks_cache_from_threads(verifier: TokenVerifier, jwks: _JWKSState) -> None:
    token, errors = _token(), []

    def work() -> None:
        try:
            for _ in range(10):
                verifier.verify(token)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert jwks.requests == 1


def test_cache_expiry_refetches(make_verifier: Any, jwks: _JWKSState) -> None:
    v = make_verifier(cache_s=0, min_refetch_s=0)
    v.verify(_token())
    v.verify(_token())
    assert jwks.requests == 2


def test_unknown_kid_refetches_once(verifier: TokenVerifier, jwks: _JWKSState) -> None:
    verifier.verify(_token())
    assert jwks.requests == 1
    _refused(verifier, _token(EC_OTHER, "ES256", "forged-1"), "unknown signing key")
    assert jwks.requests == 2  # one refetch for the unknown kid...
    _refused(verifier, _token(EC_OTHER, "ES256", "forged-2"), "unknown signing key")
    _refused(verifier, _token(EC_OTHER, "ES256", "forged-1"), "unknown signing key")
    assert jwks.requests == 2  # ...and not another within min_refetch_s
    assert verifier.verify(_token()).id == SUB


def test_missing_kid(verifier: TokenVerifier, jwks: _JWKSState) -> None:
    _refused(verifier, _token(kid=None), "no key id")
    assert jwks.requests == 0


def test_key_rotation(make_verifier: Any, jwks: _JWKSState) -> None:
    v = make_verifier(min_refetch_s=0)
    assert v.verify(_token()).id == SUB
    jwks.serve({"keys": [_jwk(ECAlgorithm, EC_NEW.public_key(), "ec2", "ES256")]})
    assert v.verify(_token(EC_NEW, "ES256", "ec2")).id == SUB
    assert jwks.requests == 2
    _refused(v, _token(), "unknown signing key")  # the retired key is gone after the refetch


def test_key_rotation_waits_for_refetch_interval(make_verifier: Any, jwks: _JWKSState) -> None:
    v = make_verifier(min_refetch_s=0.3)
    v.verify(_token())
    _refused(v, _token(EC_OTHER, "ES256", "forged"), "unknown signing key")  # spends the refetch
    jwks.serve(_jwks(_jwk(ECAlgorithm, EC_NEW.public_key(), "ec2", "ES256")))
    _refused(v, _token(EC_NEW, "ES256", "ec2"), "unknown signing key")
    assert jwks.requests == 2
    time.sleep(0.35)
    assert v.verify(_token(EC_NEW, "ES256", "ec2")).id == SUB
    assert jwks.requests == 3


def test_jwks_down_with_empty_cache_is_503(make_verifier: Any, jwks: _JWKSState) -> None:
    with socket.socket() as s:  # a free port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    v = make_verifier(jwks_url=f"http://127.0.0.1:{port}/jwks.json", timeout_s=2)
    for _ in range(2):  # the second one is answered from the failed attempt, without a new connection
        with pytest.raises(ServerError) as info:
            v.verify(_token())
        assert (info.value.status, info.value.code) == (503, "AUTH_UNAVAILABLE")


@pytest.mark.parametrize(
    "body,status", [(b"{not json", 200), (b'{"keys": {}}', 200), (b"[]", 200), (b'{"error": "boom"}', 500)]
)
def test_bad_jwks_with_empty_cache_is_503(make_verifier: Any, jwks: _JWKSState, body: bytes, status: int) -> None:
    jwks.serve(body, status)
    v = make_verifier()
    for _ in range(3):
        with pytest.raises(ServerError) as info:
            v.verify(_token())
        assert (info.value.status, info.value.code) == (503, "AUTH_UNAVAILABLE")
    assert jwks.requests == 1  # no retry within min_refetch_s of a failed fetch


def test_jwks_recovers_after_failure(make_verifier: Any, jwks: _JWKSState) -> None:
    jwks.serve(b"oops", 503)
    v = make_verifier(min_refetch_s=0.2)
    with pytest.raises(ServerError):
        v.verify(_token())
    jwks.serve(_jwks())
    time.sleep(0.25)
    assert v.verify(_token()).id == SUB
    assert jwks.requests == 2


def test_jwks_down_keeps_the_cached_keys(make_verifier: Any, jwks: _JWKSState) -> None:
    v = make_verifier(cache_s=0, min_refetch_s=0)
    assert v.verify(_token()).id == SUB
    jwks.serve(b"oops", 500)
    assert v.verify(_token()).id == SUB
    assert jwks.requests == 2


def test_empty_jwks_is_unknown_key(make_verifier: Any, jwks: _JWKSState) -> None:
    jwks.serve({"keys": []})  # a Supabase project still on the legacy secret
    _refused(make_verifier(), _token(), "unknown signing key")


# --- bearer_token and configuration ---------------------------------------------------------------


def test_bearer_token() -> None:
    assert bearer_token(None) is None
    assert bearer_token("") is None
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("BEARER abc") == "abc"
    for bad in ("abc", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer a b", "Token abc"):
        with pytest.raises(AuthError):
            bearer_token(bad)


def test_constructor_checks() -> None:
    with pytest.raises(UsageError):
        TokenVerifier(issuer=None)
    with pytest.raises(UsageError, match="too short"):
        TokenVerifier(secret="short", issuer=None)


@pytest.fixture
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no .env file
    for name in (
        "SUPABASE_URL",
        "S3SEG_SUPABASE_URL",
        "SUPABASE_JWT_SECRET",
        "S3SEG_SUPABASE_JWT_SECRET",
        "S3SEG_JWKS_URL",
        "S3SEG_JWT_ISSUER",
        "S3SEG_JWT_AUDIENCE",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("_clean_env")
def test_from_settings() -> None:
    assert TokenVerifier.from_settings(Settings()) is None  # local mode

    v = TokenVerifier.from_settings(Settings(supabase_url="https://abc.supabase.co/"))
    assert v is not None
    assert v.jwks_url == "https://abc.supabase.co/auth/v1/.well-known/jwks.json"
    assert (v.issuer, v.audience, v.secret) == ("https://abc.supabase.co/auth/v1", "authenticated", None)
    v.close()

    v = TokenVerifier.from_settings(Settings(supabase_jwt_secret=SECRET))
    assert v is not None
    assert (v.jwks_url, v.issuer, v.secret) == (None, None, SECRET)
    v.close()

    v = TokenVerifier.from_settings(
        Settings(
            supabase_url="https://abc.supabase.co",
            jwks_url="https://k/jwks",
            jwt_issuer="https://i",
            jwt_audience="api",
            supabase_jwt_secret=SECRET,
        )
    )
    assert v is not None
    assert (v.jwks_url, v.issuer, v.audience, v.secret) == ("https://k/jwks", "https://i", "api", SECRET)
    v.close()
