"""Signing in (s3seg._session, ``s3seg login/logout/whoami``) against a FAKE Supabase Auth over real HTTP.

Supabase Auth (GoTrue) cannot run on this machine, so :class:`FakeGoTrue` stands in for it: a small
HTTP server (``http.server.ThreadingHTTPServer`` on 127.0.0.1, a free port, in a thread) that reproduces
the GoTrue behaviours the client depends on:

* the API gateway's ``apikey`` header is required: none → 401 ``{"message": "No API key found in request"}``,
  a wrong one → 401 ``{"message": "Invalid API key"}``;
* ``POST /auth/v1/token?grant_type=password`` with ``{"email", "password"}`` → a session
  (``access_token`` (a JWT-shaped token with sub/email/exp), ``refresh_token``, ``expires_in``,
  ``expires_at``, ``user``);
* ``POST /auth/v1/token?grant_type=refresh_token`` with ``{"refresh_token"}`` → a new session and a NEW
  refresh token; refresh tokens are single-use: a spent one → 400 "Invalid Refresh Token: Already Used";
* error bodies in both of GoTrue's shapes: older ``{"error": "invalid_grant", "error_description": ...}``
  and newer ``{"code": 400, "error_code": "invalid_credentials", "msg": ...}``;
* ``POST /auth/v1/logout?scope=local`` with the access token ends that session (its refresh tokens).

It is not GoTrue: no signatures, no refresh-token reuse interval (real GoTrue tolerates a reuse within
10 s by default; the fake is stricter), no rate limits. Everything points at it through the environment
(SUPABASE_URL, SUPABASE_ANON_KEY, XDG_CONFIG_HOME in a temporary folder), so the real home is not touched.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from _cli import run
from s3seg import _session
from s3seg.config import load_settings
from s3seg.errors import AuthError, ServerError, UsageError

ANON_KEY = "anon-key-for-tests"
EMAIL = "a@b.c"
PASSWORD = "correct horse 9 battery"  # distinctive, to prove it is never printed or saved


# --- the fake GoTrue ---------------------------------------------------------------------------------


class FakeGoTrue:
    def __init__(self) -> None:
        self.url = ""
        self.anon_key = ANON_KEY
        self.users = {EMAIL: (PASSWORD, str(uuid.uuid4()))}
        self.error_shape = "new"  # or "old"
        self.expires_in = 3600
        self.refresh_delay_s = 0.0  # how long a refresh takes (to make concurrent refreshes overlap)
        self.lock = threading.Lock()
        self.refresh_tokens: dict[str, dict[str, Any]] = {}  # token → {"session", "used"}
        self.access_tokens: dict[str, dict[str, Any]] = {}  # token → {"session", "exp"}
        self.ended_sessions: set[str] = set()
        self.log: list[tuple[str, str | None, int]] = []  # (path, grant_type, status)

    def count(self, grant: str) -> int:
        with self.lock:
            return sum(1 for _, g, _ in self.log if g == grant)

    def valid(self, access_token: str) -> bool:
        with self.lock:
            a = self.access_tokens.get(access_token)
            return a is not None and a["exp"] > time.time() and a["session"] not in self.ended_sessions

    # GoTrue's answers: (status, body)
    def handle(self, path: str, grant: str | None, headers: Any, body: dict[str, Any]) -> tuple[int, Any]:
        apikey = headers.get("apikey")
        if not apikey:
            return 401, {
                "message": "No API key found in request",
                "hint": "No `apikey` request header or url param was found.",
            }
        if apikey != self.anon_key:
            return 401, {
                "message": "Invalid API key",
                "hint": "Double check your Supabase `anon` or `service_role` API key.",
            }
        if path == "/auth/v1/token" and grant == "password":
            user = self.users.get(str(body.get("email", "")).lower())
            if user is None or user[0] != body.get("password"):
                return self._error(400, "invalid_credentials", "Invalid login credentials")
            with self.lock:
                return 200, self._issue(str(body["email"]).lower(), user[1], str(uuid.uuid4()))
        if path == "/auth/v1/token" and grant == "refresh_token":
            time.sleep(self.refresh_delay_s)
            with self.lock:
                entry = self.refresh_tokens.get(str(body.get("refresh_token")))
                if entry is None or entry["session"] in self.ended_sessions:
                    return self._error(400, "refresh_token_not_found", "Invalid Refresh Token: Refresh Token Not Found")
                if entry["used"]:
                    return self._error(400, "refresh_token_already_used", "Invalid Refresh Token: Already Used")
                entry["used"] = True
                return 200, self._issue(entry["email"], entry["user_id"], entry["session"])
        if path == "/auth/v1/logout":
            token = headers.get("authorization", "").removeprefix("Bearer ")
            with self.lock:
                access = self.access_tokens.get(token)
                if access is None:
                    return self._error(401, "bad_jwt", "invalid JWT: unable to parse or verify signature")
                self.ended_sessions.add(access["session"])
            return 204, None
        return 404, {"code": 404, "error_code": "not_found", "msg": "Not Found"}

    def _error(self, status: int, code: str, message: str) -> tuple[int, Any]:
        if self.error_shape == "old":
            return status, {"error": "invalid_grant", "error_description": message}
        return status, {"code": status, "error_code": code, "msg": message}

    def _issue(self, email: str, user_id: str, session_id: str) -> dict[str, Any]:
        exp = int(time.time()) + self.expires_in
        claims = {
            "sub": user_id,
            "email": email,
            "exp": exp,
            "iat": exp - self.expires_in,
            "aud": "authenticated",
            "role": "authenticated",
            "session_id": session_id,
        }
        access = (
            ".".join(
                base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
                for part in ({"alg": "HS256", "typ": "JWT"}, claims)
            )
            + ".fake-signature"
        )
        refresh = uuid.uuid4().hex[:12]
        self.access_tokens[access] = {"session": session_id, "exp": exp}
        self.refresh_tokens[refresh] = {"session": session_id, "used": False, "email": email, "user_id": user_id}
        return {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "expires_at": exp,
            "refresh_token": refresh,
            "user": {"id": user_id, "aud": "authenticated", "role": "authenticated", "email": email},
        }


@contextlib.contextmanager
def serve(fake: FakeGoTrue) -> Iterator[FakeGoTrue]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            grant = parse_qs(parts.query).get("grant_type", [None])[0]
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = {}
            status, answer = fake.handle(parts.path, grant, self.headers, body if isinstance(body, dict) else {})
            with fake.lock:
                fake.log.append((parts.path, grant, status))
            data = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def gotrue() -> Iterator[FakeGoTrue]:
    with serve(FakeGoTrue()) as fake:
        yield fake


@pytest.fixture
def config_dir(gotrue: FakeGoTrue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment a user would set, pointing at the fake; the session folder s3seg will use."""
    for name in (
        "S3SEG_SUPABASE_URL",
        "S3SEG_SUPABASE_ANON_KEY",
        "S3SEG_SUPABASE_ACCESS_TOKEN",
        "S3SEG_CONFIG_DIR",
        "S3SEG_DEBUG",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUPABASE_URL", gotrue.url)
    monkeypatch.setenv("SUPABASE_ANON_KEY", gotrue.anon_key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # no .env from the repository
    folder = tmp_path / "xdg" / "s3seg"
    assert load_settings().config_dir == folder
    return folder


def _signed_in(gotrue: FakeGoTrue, config_dir: Path, *, expires_in_s: float | None = None) -> _session.Session:
    session = _session.login(gotrue.url, gotrue.anon_key, EMAIL, PASSWORD)
    if expires_in_s is not None:
        session = dataclasses.replace(session, expires_at=time.time() + expires_in_s)
    _session.save(session, config_dir)
    return session


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# --- login and the session file ------------------------------------------------------------------


def test_login_saves_a_private_session(gotrue: FakeGoTrue, config_dir: Path) -> None:
    session = _session.login(gotrue.url + "/", gotrue.anon_key, EMAIL, PASSWORD)
    assert session.email == EMAIL and session.user_id == gotrue.users[EMAIL][1]
    assert session.supabase_url == gotrue.url and not session.expired()
    assert gotrue.valid(session.access_token)
    assert "token" not in repr(session).replace("_token", "")  # tokens are left out of repr

    old_umask = os.umask(0)  # the modes must come from s3seg, not from the user's umask
    try:
        path = _session.save(session, config_dir)
    finally:
        os.umask(old_umask)
    assert path == config_dir / "session.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    assert [p.name for p in config_dir.iterdir()] == ["session.json"]  # no temporary file left behind
    assert PASSWORD not in path.read_text()
    assert _session.load(config_dir) == session

    _session.save(dataclasses.replace(session, email="x@y.z"), config_dir)  # replacing keeps it private
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and _session.load(config_dir).email == "x@y.z"  # type: ignore[union-attr]


@pytest.mark.parametrize("shape", ["new", "old"])
def test_wrong_password_gives_gotrues_message(gotrue: FakeGoTrue, shape: str) -> None:
    gotrue.error_shape = shape
    with pytest.raises(AuthError) as e:
        _session.login(gotrue.url, gotrue.anon_key, EMAIL, "wrong")
    assert e.value.message == "Invalid login credentials"
    assert e.value.hint == "check the email and password" and e.value.exit_code == 11
    assert gotrue.log == [("/auth/v1/token", "password", 400)]


def test_missing_or_wrong_apikey(gotrue: FakeGoTrue) -> None:
    with pytest.raises(AuthError, match="No API key found in request"):
        _session.login(gotrue.url, "", EMAIL, PASSWORD)
    with pytest.raises(AuthError, match="Invalid API key") as e:
        _session.login(gotrue.url, "not-the-key", EMAIL, PASSWORD)
    assert "SUPABASE_ANON_KEY" in (e.value.hint or "")
    assert [status for *_, status in gotrue.log] == [401, 401] and not gotrue.access_tokens


def test_wrong_apikey_on_refresh_does_not_end_the_session(
    gotrue: FakeGoTrue, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = _signed_in(gotrue, config_dir, expires_in_s=10)
    monkeypatch.setenv("SUPABASE_ANON_KEY", "not-the-key")
    with pytest.raises(AuthError, match="Invalid API key") as e:
        _session.access_token(load_settings())
    assert "SUPABASE_ANON_KEY" in (e.value.hint or "") and "session has ended" not in e.value.message
    monkeypatch.setenv("SUPABASE_ANON_KEY", gotrue.anon_key)
    assert gotrue.valid(_session.access_token(load_settings()))  # the refresh token was not spent
    assert _session.load(config_dir).refresh_token != session.refresh_token  # type: ignore[union-attr]


def test_unreachable_supabase_is_a_server_error() -> None:
    url = _closed_port_url()
    with pytest.raises(ServerError, match="cannot reach Supabase Auth") as e:
        _session.login(url, ANON_KEY, EMAIL, PASSWORD)
    assert "SUPABASE_URL" in (e.value.hint or "")
    with pytest.raises(UsageError, match="must start with"):
        _session.login("abcdefgh.supabase.co", ANON_KEY, EMAIL, PASSWORD)


def test_world_or_group_readable_session_is_refused(gotrue: FakeGoTrue, config_dir: Path) -> None:
    _signed_in(gotrue, config_dir)
    path = config_dir / "session.json"
    for mode in (0o644, 0o640, 0o604):
        path.chmod(mode)
        with pytest.raises(AuthError, match="can be read by other users") as e:
            _session.load(config_dir)
        assert f"chmod 600 {path}" in (e.value.hint or "")
        with pytest.raises(AuthError):
            _session.access_token(load_settings())
    path.chmod(0o600)
    assert _session.load(config_dir) is not None


@pytest.mark.parametrize("content", ["{not json", '{"access_token": "x"}', "[]", ""])
def test_corrupt_session_file(config_dir: Path, content: str) -> None:
    config_dir.mkdir(parents=True, mode=0o700)
    fd = os.open(config_dir / "session.json", os.O_CREAT | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    with pytest.raises(AuthError, match="is corrupt") as e:
        _session.load(config_dir)
    assert e.value.hint == "sign in again: s3seg login"


def test_clear(gotrue: FakeGoTrue, config_dir: Path) -> None:
    assert _session.load(config_dir) is None and _session.clear(config_dir) is False
    _signed_in(gotrue, config_dir)
    assert _session.clear(config_dir) is True and _session.load(config_dir) is None


# --- the token to send, and refreshing it --------------------------------------------------------


def test_not_signed_in(config_dir: Path) -> None:
    with pytest.raises(AuthError, match="not signed in") as e:
        _session.access_token(load_settings())
    assert e.value.hint == "s3seg login"


def test_fresh_session_is_used_without_contacting_supabase(gotrue: FakeGoTrue, config_dir: Path) -> None:
    session = _signed_in(gotrue, config_dir)
    assert _session.access_token(load_settings()) == session.access_token
    assert gotrue.count("refresh_token") == 0


def test_expiring_session_is_refreshed_and_the_rotated_token_saved(gotrue: FakeGoTrue, config_dir: Path) -> None:
    old = _signed_in(gotrue, config_dir, expires_in_s=30)  # inside the 60 s margin
    token = _session.access_token(load_settings())
    assert gotrue.valid(token) and gotrue.count("refresh_token") == 1
    saved = _session.load(config_dir)
    assert saved is not None and saved.access_token == token and not saved.expired()
    assert saved.refresh_token != old.refresh_token and saved.expires_at > old.expires_at + 3000
    assert saved.email == EMAIL and saved.user_id == old.user_id
    assert stat.S_IMODE((config_dir / "session.json").stat().st_mode) == 0o600
    assert _session.access_token(load_settings()) == token  # now fresh: no second refresh
    assert gotrue.count("refresh_token") == 1
    assert _session.refresh(saved, ANON_KEY).refresh_token != saved.refresh_token  # the saved one works


@pytest.mark.parametrize("shape", ["new", "old"])
def test_reusing_a_refresh_token_fails_cleanly(gotrue: FakeGoTrue, config_dir: Path, shape: str) -> None:
    gotrue.error_shape = shape
    stale = _signed_in(gotrue, config_dir, expires_in_s=-5)
    _session.refresh(stale, ANON_KEY)  # spent elsewhere (say, another machine with a copy of the file)
    with pytest.raises(AuthError) as e:
        _session.refresh(stale, ANON_KEY)
    assert e.value.message == "your session has ended (Invalid Refresh Token: Already Used)"
    assert e.value.hint == "sign in again: s3seg login"
    with pytest.raises(AuthError, match="your session has ended"):
        _session.access_token(load_settings())
    assert _session.load(config_dir) == stale  # left for `s3seg login` to replace


def test_refresh_needs_the_anon_key(gotrue: FakeGoTrue, config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _signed_in(gotrue, config_dir, expires_in_s=10)
    monkeypatch.delenv("SUPABASE_ANON_KEY")
    with pytest.raises(UsageError, match="SUPABASE_ANON_KEY") as e:
        _session.access_token(load_settings())
    assert "SUPABASE_ANON_KEY" in (e.value.hint or "")


def test_unreachable_supabase_during_refresh(
    gotrue: FakeGoTrue, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = _signed_in(gotrue, config_dir)
    dead = _closed_port_url()
    monkeypatch.setenv("SUPABASE_URL", dead)
    _session.save(dataclasses.replace(session, supabase_url=dead, expires_at=time.time() + 30), config_dir)
    assert _session.access_token(load_settings()) == session.access_token  # still valid for 30 s: used
    _session.save(dataclasses.replace(session, supabase_url=dead, expires_at=time.time() - 1), config_dir)
    with pytest.raises(ServerError, match="cannot reach Supabase Auth"):
        _session.access_token(load_settings())


def test_session_of_another_project_is_not_sent(
    gotrue: FakeGoTrue, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _signed_in(gotrue, config_dir)
    monkeypatch.setenv("SUPABASE_URL", "https://other.supabase.co")
    with pytest.raises(AuthError, match=r"signed in to http://127\.0\.0\.1") as e:
        _session.access_token(load_settings())
    assert e.value.hint == "sign in to this project: s3seg login"


def test_access_token_setting_wins(gotrue: FakeGoTrue, config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3SEG_SUPABASE_ACCESS_TOKEN", "token-from-the-environment")
    assert _session.access_token(load_settings()) == "token-from-the-environment"  # not signed in at all
    _signed_in(gotrue, config_dir, expires_in_s=5)
    assert _session.access_token(load_settings()) == "token-from-the-environment"
    assert gotrue.count("refresh_token") == 0


def _race_worker(barrier: Any, results: Any, use_lock: bool) -> None:
    """One CLI process: wait for the other, then ask for the access token at the same moment."""
    if not use_lock:
        _session._locked = lambda config_dir: contextlib.nullcontext()  # type: ignore[assignment]
    settings = load_settings()
    barrier.wait(timeout=60)
    try:
        results.put(("ok", _session.access_token(settings)))
    except Exception as e:
        results.put(("error", f"{type(e).__name__}: {e}"))


def _race(gotrue: FakeGoTrue, *, use_lock: bool) -> list[tuple[str, str]]:
    gotrue.refresh_delay_s = 0.5  # the first refresh is still in flight when the second process asks
    ctx = multiprocessing.get_context("spawn")  # (fork with the fake's threads running is unsafe)
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(barrier, results, use_lock)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        answers = [results.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
    results.close()
    results.join_thread()
    assert all(p.exitcode == 0 for p in procs)
    return sorted(answers)


def test_concurrent_processes_spend_the_refresh_token_once(gotrue: FakeGoTrue, config_dir: Path) -> None:
    old = _signed_in(gotrue, config_dir, expires_in_s=10)
    answers = _race(gotrue, use_lock=True)
    assert [status for status, _ in answers] == ["ok", "ok"], answers
    [token] = {token for _, token in answers}  # the second process used the session the first one saved
    assert gotrue.valid(token) and gotrue.count("refresh_token") == 1
    saved = _session.load(config_dir)
    assert saved is not None and saved.access_token == token
    assert saved.refresh_token != old.refresh_token and saved.expires_at > old.expires_at + 3000
    assert (config_dir / "session.lock").exists()


def test_without_the_lock_the_same_race_breaks_a_process(gotrue: FakeGoTrue, config_dir: Path) -> None:
    """The control for the test above: the fake does catch a refresh token spent twice."""
    _signed_in(gotrue, config_dir, expires_in_s=10)
    answers = _race(gotrue, use_lock=False)
    assert gotrue.count("refresh_token") == 2
    assert [status for status, _ in answers] == ["error", "ok"], answers
    assert "your session has ended (Invalid Refresh Token: Already Used)" in answers[0][1]


# --- the commands --------------------------------------------------------------------------------


def test_login_whoami_logout(capsys, gotrue: FakeGoTrue, config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    code, out, err = run(capsys, "login", "--email", EMAIL, "--password-stdin")
    assert code == 0, err
    path = config_dir / "session.json"
    assert out.strip() == f"signed in as {EMAIL} (session saved to {path})"
    assert PASSWORD not in out + err + path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    code, out, err = run(capsys, "whoami", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["email"] == EMAIL and info["user_id"] == gotrue.users[EMAIL][1]
    assert info["will_refresh"] is False and 3500 < info["expires_in_s"] <= 3600
    assert info["session_file"] == str(path) and info["supabase_url"] == gotrue.url
    assert not any(k in json.dumps(info) for k in ("access_token", "refresh_token"))

    code, out, _ = run(capsys, "whoami")
    assert code == 0 and EMAIL in out and "expires" in out

    session = _session.load(config_dir)
    assert session is not None
    code, out, err = run(capsys, "logout")
    assert code == 0, err
    assert out.strip() == f"signed out (removed {path}; session ended on the server)"
    assert not path.exists()
    with pytest.raises(AuthError, match="Refresh Token Not Found"):  # the server ended it too
        _session.refresh(session, ANON_KEY)

    code, out, err = run(capsys, "whoami")
    assert code == 11 and "not signed in" in err and "s3seg login" in err and "Traceback" not in err
    code, out, _ = run(capsys, "logout")
    assert code == 0 and out.strip() == "not signed in; nothing to remove"


def test_login_json_and_whoami_of_an_expiring_session(
    capsys, gotrue: FakeGoTrue, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD))  # no trailing newline
    code, out, err = run(capsys, "login", "--email", EMAIL, "--password-stdin", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["email"] == EMAIL and info["session_file"] == str(config_dir / "session.json")
    session = _session.load(config_dir)
    assert session is not None
    _session.save(dataclasses.replace(session, expires_at=time.time() + 20), config_dir)
    code, out, _ = run(capsys, "whoami", "--json")
    assert code == 0 and json.loads(out)["will_refresh"] is True
    code, out, _ = run(capsys, "whoami")
    assert code == 0 and "will be refreshed on next use" in out


def test_login_with_wrong_password(
    capsys, gotrue: FakeGoTrue, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("wrong\n"))
    code, out, err = run(capsys, "login", "--email", EMAIL, "--password-stdin")
    assert code == 11 and out == ""
    assert "Invalid login credentials" in err and "check the email and password" in err and "Traceback" not in err
    assert not (config_dir / "session.json").exists()


def test_login_without_supabase_url(capsys, config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPABASE_URL")
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    code, out, err = run(capsys, "login", "--email", EMAIL, "--password-stdin")
    assert code == 2 and out == ""
    assert "SUPABASE_URL is not set" in err and "hint:" in err and "https://" in err
    assert "Traceback" not in err


def test_login_without_a_terminal_or_password_stdin(
    capsys, gotrue: FakeGoTrue, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    code, _, err = run(capsys, "login", "--email", EMAIL)
    assert code == 2 and "no terminal" in err and "--password-stdin" in err
    code, _, err = run(capsys, "login")
    assert code == 2 and "no terminal" in err
    code, _, err = run(capsys, "login", "--password-stdin")
    assert code == 2 and "--password-stdin needs --email" in err
    assert gotrue.log == []


def test_login_in_a_real_process_with_a_piped_password(gotrue: FakeGoTrue, config_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "s3seg", "login", "--email", EMAIL, "--password-stdin"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    assert f"signed in as {EMAIL}" in proc.stdout and PASSWORD not in proc.stdout + proc.stderr
    assert _session.load(config_dir) is not None
    proc = subprocess.run(
        [sys.executable, "-m", "s3seg", "whoami", "--json"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["email"] == EMAIL


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_login_prompts_on_a_terminal_without_echoing_the_password(gotrue: FakeGoTrue, config_dir: Path) -> None:
    """`s3seg login` typed at a real (pseudo-)terminal: the email is echoed as typed, the password is not."""
    import select

    controller, terminal = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3seg", "login"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    os.close(terminal)
    transcript = b""

    def read_until(marker: bytes) -> None:
        nonlocal transcript
        deadline = time.monotonic() + 60
        while marker not in transcript and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.1)[0]:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # the process is gone (EIO)
                    break
                if not chunk:
                    break
                transcript += chunk

    try:
        read_until(b"email:")
        os.write(controller, EMAIL.encode() + b"\n")
        read_until(b"password:")
        os.write(controller, PASSWORD.encode() + b"\n")
        read_until(b"session saved to")
        assert proc.wait(timeout=60) == 0, transcript.decode(errors="replace")
        read_until(b"\n__never__")  # the rest of the output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    text = transcript.decode(errors="replace")
    assert EMAIL in text and "signed in as" in text and "session saved to" in text
    assert PASSWORD.encode() not in transcript  # the terminal did not echo it, and nothing printed it
    session = _session.load(config_dir)
    assert session is not None and session.email == EMAIL
