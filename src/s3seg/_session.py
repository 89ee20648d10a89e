"""Signed-in sessions of Supabase Auth (GoTrue), for the CLI and the SDK talking to a public s3seg API.

Plain HTTP (httpx) against GoTrue's REST API: ``POST /auth/v1/token?grant_type=password`` signs in,
``grant_type=refresh_token`` renews an access token. Supabase refresh tokens are single-use (each refresh
returns a new one), so renewing is done under a file lock, and a process that waited for the lock first
re-reads the session file: another process may already have renewed it.

The session lives in ``<config_dir>/session.json``, private to the user (file 0600, folder 0700 when
s3seg creates it); a file other users can read is refused rather than trusted or silently fixed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from s3seg._http import HTTP, Hints
from s3seg.errors import AuthError, S3SegError, ServerError, UsageError

if TYPE_CHECKING:
    from s3seg.config import Settings

SESSION_FILE = "session.json"
LOCK_FILE = "session.lock"
REFRESH_MARGIN_S = 60.0
_TIMEOUT_S = 30.0
_LOGIN_HINT = "sign in again: s3seg login"
_HINTS = Hints(
    timeout="check your network connection and SUPABASE_URL, then try again",
    unreachable="check SUPABASE_URL and your network connection",
)


@dataclass(frozen=True)
class Session:
    """A signed-in user's tokens. ``expires_at`` is when the access token expires (unix seconds)."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: float
    user_id: str
    email: str | None
    supabase_url: str

    def expired(self, margin_s: float = REFRESH_MARGIN_S) -> bool:
        """Whether the access token expires within ``margin_s`` seconds (or already has)."""
        return time.time() + margin_s >= self.expires_at


def session_path(config_dir: Path) -> Path:
    return Path(config_dir) / SESSION_FILE


# --- GoTrue --------------------------------------------------------------------------------------


def login(supabase_url: str, anon_key: str, email: str, password: str, *, http: httpx.Client | None = None) -> Session:
    """Sign in with email and password (GoTrue's password grant)."""
    url = _base(supabase_url)
    status, body = _post(
        url, "/auth/v1/token?grant_type=password", anon_key, {"email": email, "password": password}, http
    )
    if status >= 400:
        raise _auth_error(status, body, url)
    return _session_from(body, url)


def refresh(session: Session, anon_key: str, *, http: httpx.Client | None = None) -> Session:
    """A new session from the refresh token (which this spends: GoTrue refresh tokens are single-use)."""
    url = _base(session.supabase_url)
    status, body = _post(
        url, "/auth/v1/token?grant_type=refresh_token", anon_key, {"refresh_token": session.refresh_token}, http
    )
    if status >= 400:
        err = _auth_error(status, body, url)
        if isinstance(err, ServerError) or "SUPABASE_ANON_KEY" in (err.hint or ""):
            raise err  # Supabase down or busy, or a wrong anon key: the session itself may still be good
        raise AuthError(f"your session has ended ({err.message})", hint=_LOGIN_HINT) from err
    return _session_from(body, url)


def revoke(session: Session, anon_key: str, *, http: httpx.Client | None = None) -> bool:
    """Best effort: end this session on the server too (``POST /auth/v1/logout?scope=local``), so its
    refresh token stops working. Whether the server confirmed it; never raises."""
    try:
        status, _ = _post(
            _base(session.supabase_url),
            "/auth/v1/logout?scope=local",
            anon_key,
            None,
            http,
            bearer=session.access_token,
            timeout_s=10.0,
        )
    except S3SegError:
        return False
    return status < 300


def _base(supabase_url: str) -> str:
    url = supabase_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageError(
            f"SUPABASE_URL must start with https:// (or http://), got {supabase_url!r}",
            hint="the project URL, e.g. https://abcdefgh.supabase.co",
        )
    return url


def _post(
    url: str,
    path: str,
    anon_key: str,
    body: dict[str, Any] | None,
    http: httpx.Client | None,
    *,
    bearer: str | None = None,
    timeout_s: float = _TIMEOUT_S,
) -> tuple[int, Any]:
    headers = {"apikey": anon_key, "Accept": "application/json"}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    with HTTP(url, where=f"Supabase Auth at {url}", hints=_HINTS, timeout_s=timeout_s, http=http) as auth:
        response = auth.send("POST", path, json=body, headers=headers)
    try:
        data = response.json() if response.content else None
    except ValueError:
        data = None
    return response.status_code, data


def _auth_error(status: int, body: Any, url: str) -> AuthError | ServerError:
    """GoTrue's error, in either shape: ``{"error", "error_description"}`` (older) or
    ``{"code", "error_code", "msg"}`` (newer); the API gateway answers ``{"message"}`` for a bad apikey."""
    message = code = None
    if isinstance(body, dict):
        message = body.get("msg") or body.get("error_description") or body.get("message") or body.get("error")
        code = body.get("error_code") or body.get("error")
    text = str(message) if message else f"HTTP {status}"
    if status == 429:
        return ServerError(
            f"Supabase Auth: {text}",
            hint="too many sign-in attempts; wait a minute and try again",
            status=status,
            code=str(code) if code else None,
        )
    if status >= 500 or status < 400:
        return ServerError(
            f"Supabase Auth at {url} failed: {text}",
            hint="try again later",
            status=status,
            code=str(code) if code else None,
        )
    hint = None
    if code in ("invalid_credentials", "invalid_grant") and "refresh" not in text.lower():
        hint = "check the email and password"
    elif code == "email_not_confirmed":
        hint = "open the confirmation link Supabase emailed you, then sign in"
    elif status in (401, 403) and "api key" in text.lower():
        hint = "check SUPABASE_ANON_KEY: the project's anon (publishable) key"
    return AuthError(text, hint=hint)


def _session_from(body: Any, url: str) -> Session:
    try:
        user = body.get("user") or {}
        expires_at = body.get("expires_at")
        if expires_at is None:
            expires_at = time.time() + float(body["expires_in"])
        return Session(
            access_token=str(body["access_token"]),
            refresh_token=str(body["refresh_token"]),
            expires_at=float(expires_at),
            user_id=str(user.get("id", "")),
            email=user.get("email") or None,
            supabase_url=url,
        )
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ServerError(
            f"Supabase Auth at {url} answered without a session",
            hint="check SUPABASE_URL: it must be the project URL, not its API gateway path",
        ) from e


# --- the session file ----------------------------------------------------------------------------


def save(session: Session, config_dir: Path) -> Path:
    """Write the session privately and atomically: a 0600 temporary file beside it, then rename."""
    folder = Path(config_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = folder / SESSION_FILE
    tmp = folder / f".{SESSION_FILE}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(session), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def load(config_dir: Path) -> Session | None:
    """The saved session, or None when there is none. A file others can read, or a corrupt one, is an error."""
    path = Path(config_dir) / SESSION_FILE
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AuthError(
            f"cannot read the session file {path}: {e.strerror}", hint=f"sign in again: s3seg login (or remove {path})"
        ) from e
    with os.fdopen(fd, "rb") as f:
        if sys.platform != "win32" and os.fstat(f.fileno()).st_mode & 0o077:
            raise AuthError(
                f"the session file {path} can be read by other users, so it is not used",
                hint=f"chmod 600 {path}, or sign in again: s3seg logout && s3seg login",
            )
        raw = f.read()
    try:
        data = json.loads(raw)
        return Session(
            access_token=str(data["access_token"]),
            refresh_token=str(data["refresh_token"]),
            expires_at=float(data["expires_at"]),
            user_id=str(data["user_id"]),
            email=data.get("email"),
            supabase_url=str(data["supabase_url"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise AuthError(f"the session file {path} is corrupt", hint="sign in again: s3seg login") from e


def clear(config_dir: Path) -> bool:
    """Remove the saved session; whether there was one."""
    try:
        os.unlink(Path(config_dir) / SESSION_FILE)
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def _locked(config_dir: Path) -> Iterator[None]:
    """An exclusive lock between processes (``session.lock`` beside the session), held while a refresh
    token is spent and the new session saved."""
    folder = Path(config_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        if sys.platform == "win32":
            import msvcrt

            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                    break
                except OSError:  # LK_LOCK gives up after ~10 s
                    continue
            try:
                yield
            finally:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --- the token to send ---------------------------------------------------------------------------


def access_token(settings: Settings, *, http: httpx.Client | None = None) -> str:
    """The access token to send as ``Authorization: Bearer``: ``S3SEG_SUPABASE_ACCESS_TOKEN`` as is when set,
    else the saved session's, refreshed (and saved) first when it expires within a minute."""
    if settings.supabase_access_token is not None:
        return settings.supabase_access_token.get_secret_value()
    folder = settings.config_dir
    session = load(folder)
    if session is None:
        raise AuthError("not signed in", hint="s3seg login")
    _check_project(session, settings)
    if not session.expired(REFRESH_MARGIN_S):
        return session.access_token
    if settings.supabase_anon_key is None:
        raise UsageError(
            "the session needs refreshing, and SUPABASE_ANON_KEY is not set",
            hint="set SUPABASE_ANON_KEY (or S3SEG_SUPABASE_ANON_KEY) to the project's anon key",
        )
    anon_key = settings.supabase_anon_key.get_secret_value()
    with _locked(folder):
        current = load(folder)  # another process may have refreshed (or signed out) while this one waited
        if current is None:
            raise AuthError("not signed in", hint="s3seg login")
        _check_project(current, settings)
        if not current.expired(REFRESH_MARGIN_S):
            return current.access_token
        try:
            renewed = refresh(current, anon_key, http=http)
        except ServerError:
            if not current.expired(0):  # Supabase unreachable, but the token still has a few seconds
                return current.access_token
            raise
        save(renewed, folder)
    return renewed.access_token


def _check_project(session: Session, settings: Settings) -> None:
    if settings.supabase_url and _base(settings.supabase_url) != session.supabase_url:
        raise AuthError(
            f"signed in to {session.supabase_url}, but SUPABASE_URL is {settings.supabase_url}",
            hint="sign in to this project: s3seg login",
        )


__all__ = [
    "Session",
    "access_token",
    "clear",
    "load",
    "login",
    "refresh",
    "revoke",
    "save",
    "session_path",
]
