"""Verifying Supabase access tokens (``Authorization: Bearer <jwt>``) for the public API.

Trust model: a token is only as good as the key that signed it, and the key is chosen by our
configuration, never by the token. The unverified header is read for two things only: ``alg``, which
must be on an explicit allow-list (HS256 only when the project's legacy JWT secret is configured;
RS256/ES256/EdDSA only with keys from the issuer's JWKS), and ``kid``, which picks a JWKS key whose own
algorithm must equal ``alg`` (so an HS256 token "signed" with a public key's bytes never verifies).
Then the signature, ``exp`` (required), ``nbf``/``iat`` (with leeway), ``aud`` and ``iss`` are checked,
and ``sub`` must be a non-empty string. The JWKS is fetched over HTTP, cached for ``cache_s``, and
refetched on an unknown ``kid`` at most once per ``min_refetch_s``, so forged kids cannot make us hammer
the endpoint; after a failed fetch the cached keys (if any) stay in use and no fetch is tried for
``min_refetch_s``. The user's tier comes from ``app_metadata`` only, which only the service role can write.

A bad token is an :class:`AuthError` (401); a JWKS that cannot be fetched while no keys are cached is a
:class:`ServerError` with status 503 (our failure, not the caller's).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from s3seg.config import Settings
from s3seg.errors import AuthError, ServerError, UsageError

log = logging.getLogger("s3seg.auth")

TIERS = ("free", "pro", "enterprise")
_HMAC_ALGS = frozenset({"HS256"})
_JWKS_ALGS = frozenset({"RS256", "ES256", "EdDSA"})
_MAX_TOKEN_CHARS = 16_384
_HINT = "sign in again: s3seg login"

# Most specific first: InvalidSignatureError is a DecodeError, ExpiredSignatureError an InvalidTokenError.
_MESSAGES: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token is not valid yet"),
    (jwt.InvalidAudienceError, "token audience is wrong"),
    (jwt.InvalidIssuerError, "token issuer is wrong"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.InvalidAlgorithmError, "token algorithm does not match its signing key"),
    (jwt.InvalidKeyError, "token signing key is not acceptable"),
    (jwt.DecodeError, "token is malformed"),
)


@dataclass(frozen=True)
class User:
    id: str  # the token's `sub`
    tier: str  # app_metadata.tier if it is a known tier, else "free"
    email: str | None
    role: str  # the `role` claim (Supabase: "authenticated")


def bearer_token(header_value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None when the header is absent or empty."""
    if header_value is None or not header_value.strip():
        return None
    parts = header_value.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise AuthError("the Authorization header must be 'Bearer <access token>'", hint=_HINT)
    return parts[1]


class TokenVerifier:
    """Verifies access tokens against an HS256 secret and/or the keys of a JWKS URL. Thread-safe."""

    def __init__(
        self,
        *,
        jwks_url: str | None = None,
        secret: str | None = None,
        issuer: str | None,
        audience: str | None = "authenticated",
        leeway_s: float = 30,
        cache_s: float = 600,
        timeout_s: float = 5,
        min_refetch_s: float = 30,
        http: httpx.Client | None = None,
    ) -> None:
        if not jwks_url and not secret:
            raise UsageError(
                "token verification needs a JWKS URL or a JWT secret",
                hint="set S3SEG_SUPABASE_URL, S3SEG_JWKS_URL or S3SEG_SUPABASE_JWT_SECRET",
            )
        if secret and len(secret.encode()) < 32:
            raise UsageError(
                "the JWT secret is too short (fewer than 32 bytes)",
                hint="use the project's JWT secret from the Supabase dashboard",
            )
        self.jwks_url, self.secret, self.issuer, self.audience = jwks_url or None, secret or None, issuer, audience
        self.leeway_s, self.cache_s, self.timeout_s, self.min_refetch_s = leeway_s, cache_s, timeout_s, min_refetch_s
        self._own_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout_s)
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # time.monotonic() of the last successful fetch,
        self._failed_at = float("-inf")  # of the last failed one (no retry for min_refetch_s),
        self._missed_at = float("-inf")  # and of the last refetch for an unknown kid (same limit)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier | None:
        """The verifier for these settings; None in local mode (no JWT secret, JWKS URL or Supabase URL)."""
        secret = settings.supabase_jwt_secret.get_secret_value() if settings.supabase_jwt_secret else None
        base = settings.supabase_url.rstrip("/") + "/auth/v1" if settings.supabase_url else None
        jwks_url = settings.jwks_url or (f"{base}/.well-known/jwks.json" if base else None)
        if not secret and not jwks_url:
            return None
        return cls(
            jwks_url=jwks_url, secret=secret, issuer=settings.jwt_issuer or base, audience=settings.jwt_audience or None
        )

    def verify(self, token: str) -> User:
        """The user a valid token belongs to; AuthError for any token that is not valid."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise AuthError("token is malformed", hint=_HINT)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("token is malformed", hint=_HINT) from None
        alg = header.get("alg") if isinstance(header.get("alg"), str) else None
        key: jwt.PyJWK | str
        if alg in _HMAC_ALGS and self.secret:
            key = self.secret
        elif alg in _JWKS_ALGS and self.jwks_url:
            key = self._key(header.get("kid"))
            if key.algorithm_name != alg:
                raise AuthError("token algorithm does not match its signing key", hint=_HINT)
        else:
            raise AuthError(f"token algorithm {str(alg)[:20]!r} is not accepted", hint=_HINT)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self.audience is not None,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.MissingRequiredClaimError as e:
            raise AuthError(f"token has no {e.claim!r} claim", hint=_HINT) from None
        except jwt.PyJWTError as e:
            message = next((m for kind, m in _MESSAGES if isinstance(e, kind)), "token is invalid")
            raise AuthError(message, hint=_HINT) from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthError("token has no user id (sub)", hint=_HINT)
        # The tier is read from app_metadata only: Supabase lets only the service role write it, whereas
        # user_metadata is writable by the user themselves (auth.updateUser), so a tier there is ignored.
        app_metadata = claims.get("app_metadata")
        tier = app_metadata.get("tier") if isinstance(app_metadata, dict) else None
        email, role = claims.get("email"), claims.get("role")
        return User(
            id=sub,
            tier=tier if tier in TIERS else "free",
            email=email if isinstance(email, str) and email else None,
            role=role if isinstance(role, str) else "",
        )

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    # --- JWKS ----------------------------------------------------------------------------------

    def _key(self, kid: object) -> jwt.PyJWK:
        if not isinstance(kid, str) or not kid:
            raise AuthError("token has no key id (kid)", hint=_HINT)
        with self._lock:
            now = time.monotonic()
            if now - self._failed_at >= self.min_refetch_s:
                if self._fetched_at is None or now - self._fetched_at >= self.cache_s:
                    self._refresh(now)
                elif kid not in self._keys and now - self._missed_at >= self.min_refetch_s:
                    self._missed_at = now  # a new key (rotation), or a forged kid: one refetch, then wait
                    self._refresh(now)
            if self._fetched_at is None:
                raise ServerError(
                    "the token signing keys cannot be fetched",
                    hint="try again later",
                    status=503,
                    code="AUTH_UNAVAILABLE",
                )
            key = self._keys.get(kid)
        if key is None:
            raise AuthError("unknown signing key", hint=_HINT)
        return key

    def _refresh(self, now: float) -> None:
        """Fetch the JWKS; on failure keep the keys already cached (if any)."""
        assert self.jwks_url is not None
        try:
            response = self._http.get(self.jwks_url, timeout=self.timeout_s)
            response.raise_for_status()
            entries = response.json()["keys"]
            if not isinstance(entries, list):
                raise TypeError("keys is not a list")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            log.warning("cannot fetch the JWKS from %s (%s: %s)", self.jwks_url, type(e).__name__, e)
            self._failed_at = now
            return
        keys: dict[str, jwt.PyJWK] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue  # a key type or curve we cannot (or do not want to) use
            if key.algorithm_name in _JWKS_ALGS:  # never a symmetric ("oct") key from a public document
                keys[entry["kid"]] = key
        self._keys, self._fetched_at = keys, now
