"""``s3seg login``, ``logout`` and ``whoami``: a Supabase Auth session for the public s3seg API.

The password is read from a hidden prompt or from standard input (``--password-stdin``), sent only to
Supabase Auth, and never printed or saved: the session file holds tokens, not the password.
"""

from __future__ import annotations

import json
import sys
from contextlib import closing
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from s3seg.cli import _options as opt
from s3seg.cli._console import console, say

if TYPE_CHECKING:
    from s3seg._session import Session
    from s3seg.config import Settings


def login_command(
    email: opt.Email = None, password_stdin: opt.PasswordStdin = False, as_json: opt.Json = False
) -> None:
    """Sign in to Supabase (SUPABASE_URL, SUPABASE_ANON_KEY) and save the session for later commands."""
    import click

    from s3seg import _session
    from s3seg.config import load_settings
    from s3seg.errors import UsageError

    settings = load_settings()
    url, anon_key = _project(settings)
    terminal = sys.stdin.isatty()
    if password_stdin and not email:
        raise UsageError("--password-stdin needs --email", hint="s3seg login --email you@example.com --password-stdin")
    if not terminal and not password_stdin:
        raise UsageError(
            "no terminal to ask for the email and password on",
            hint="pipe the password instead: ... | s3seg login --email you@example.com --password-stdin",
        )
    if not email:
        email = str(click.prompt("email", err=True)).strip()
    if password_stdin and not terminal:
        password = sys.stdin.readline().rstrip("\r\n")
    else:  # a terminal: a hidden prompt even with --password-stdin, so the typed password is not echoed
        password = str(click.prompt("password", hide_input=True, err=True))
    if not email or not password:
        raise UsageError("an email and a password are needed")
    session = _session.login(url, anon_key, email, password)
    path = _session.save(session, settings.config_dir)
    if as_json:
        sys.stdout.write(json.dumps({**_describe(session), "session_file": str(path)}) + "\n")
        return
    say("signed in as ", (session.email or email, "bold"), f" (session saved to {path})")


def logout_command(as_json: opt.Json = False) -> None:
    """Sign out: end the session on Supabase (best effort) and remove the saved session."""
    from s3seg import _session
    from s3seg.config import load_settings
    from s3seg.errors import AuthError

    settings = load_settings()
    path = _session.session_path(settings.config_dir)
    revoked = False
    try:
        session = _session.load(settings.config_dir)
    except AuthError:  # unreadable or corrupt: still remove it
        session = None
    if session is not None and settings.supabase_anon_key is not None:
        revoked = _session.revoke(session, settings.supabase_anon_key.get_secret_value())
    removed = _session.clear(settings.config_dir)
    if as_json:
        sys.stdout.write(json.dumps({"signed_out": removed, "revoked": revoked, "session_file": str(path)}) + "\n")
    elif removed:
        console.print(
            f"signed out (removed {path}{'; session ended on the server' if revoked else ''})",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print("not signed in; nothing to remove", highlight=False)


def whoami_command(as_json: opt.Json = False) -> None:
    """The signed-in user and when the access token expires; with S3SEG_API_URL, also tier and credits."""
    from s3seg import _session
    from s3seg.config import load_settings
    from s3seg.errors import AuthError

    settings = load_settings()
    if settings.supabase_access_token is not None:
        info = _token_info(settings.supabase_access_token.get_secret_value())
    else:
        session = _session.load(settings.config_dir)
        if session is None:
            raise AuthError("not signed in", hint="s3seg login")
        info = {
            **_describe(session),
            "source": "session",
            "session_file": str(_session.session_path(settings.config_dir)),
            "can_refresh": settings.supabase_anon_key is not None,
        }
    if settings.api_url:  # what the API says about this user: tier, credits, rate limit
        info["account"] = _account(settings)
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
        return
    say((info["email"] or "(no email)", "bold"), f"  user {info['user_id']}")
    account = info.get("account")
    if account and "error" in account:
        console.print(f"  {settings.api_url}: {account['error']}", highlight=False, soft_wrap=True)
    elif account:
        console.print(
            f"  {account['tier']} tier, {account['credits']} credits, {account['rate_limit_per_minute']} "
            f"requests per minute on {settings.api_url}",
            highlight=False,
            soft_wrap=True,
        )
    expires = info["expires_at"]
    if expires is None:
        console.print("  token from S3SEG_SUPABASE_ACCESS_TOKEN (no expiry in it)", highlight=False)
        return
    when = datetime.fromtimestamp(expires, timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    left = info["expires_in_s"]
    state = f"expires {when} (in {_duration(left)})" if left > 0 else f"expired {when}"
    if info["source"] == "env":
        console.print(
            f"  token from S3SEG_SUPABASE_ACCESS_TOKEN, {state}; it is used as is (never refreshed)",
            highlight=False,
            soft_wrap=True,
        )
    elif info["will_refresh"]:
        how = "" if info["can_refresh"] else " once SUPABASE_ANON_KEY is set"
        console.print(f"  access token {state}; it will be refreshed on next use{how}", highlight=False, soft_wrap=True)
    else:
        console.print(
            f"  access token {state}; it is refreshed automatically near expiry", highlight=False, soft_wrap=True
        )
    if info.get("session_file"):
        console.print(f"  session: {info['session_file']} ({info['supabase_url']})", highlight=False, soft_wrap=True)


def _account(settings: Settings) -> dict[str, Any]:
    from s3seg._public import PublicClient
    from s3seg.errors import S3SegError

    try:
        with closing(PublicClient.from_settings(settings)) as api:
            return api.check()
    except S3SegError as e:  # whoami still shows the local session
        return {"error": e.message}


def _project(settings: Settings) -> tuple[str, str]:
    from s3seg.errors import UsageError

    if not settings.supabase_url:
        raise UsageError(
            "SUPABASE_URL is not set",
            hint="set SUPABASE_URL to the project URL, e.g. export SUPABASE_URL=https://abcdefgh.supabase.co",
        )
    if settings.supabase_anon_key is None:
        raise UsageError(
            "SUPABASE_ANON_KEY is not set", hint="set SUPABASE_ANON_KEY to the project's anon (publishable) key"
        )
    return settings.supabase_url, settings.supabase_anon_key.get_secret_value()


def _describe(session: Session) -> dict[str, Any]:
    from s3seg._session import REFRESH_MARGIN_S

    return {
        "user_id": session.user_id,
        "email": session.email,
        "expires_at": session.expires_at,
        "expires_in_s": round(session.expires_at - _now()),
        "will_refresh": session.expired(REFRESH_MARGIN_S),
        "supabase_url": session.supabase_url,
    }


def _token_info(token: str) -> dict[str, Any]:
    """What an access token says about itself (its claims, unverified: only the server can verify it)."""
    from s3seg._jwt import unverified_claims

    claims = unverified_claims(token)
    exp = claims.get("exp")
    expires_at = float(exp) if isinstance(exp, (int, float)) else None
    return {
        "user_id": claims.get("sub"),
        "email": claims.get("email"),
        "expires_at": expires_at,
        "expires_in_s": round(expires_at - _now()) if expires_at is not None else None,
        "will_refresh": False,
        "source": "env",
    }


def _now() -> float:
    import time

    return time.time()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
