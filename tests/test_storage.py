"""Object storage: the local folder and R2/S3 through boto3 against a real S3 server (SeaweedFS, started by
tests/_s3server.py), with the same behaviour checked on both."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from _s3server import S3Server
from s3seg.config import Settings
from s3seg.errors import DependencyError, S3SegError
from s3seg.storage import (
    LocalStorage,
    ObjectNotFoundError,
    S3Storage,
    Storage,
    StorageError,
    guess_content_type,
    safe_key,
    storage_from_settings,
)

MiB = 1024 * 1024
BUCKET = "s3seg-test"
BAD_KEYS = {
    "empty": "",
    "absolute": "/etc/passwd",
    "dotdot": "../escape.png",
    "dotdot-inside": "a/../../b.png",
    "backslash": "a\\b.png",
    "nul": "a\x00b.png",
    "newline": "a\nb.png",
    "double-slash": "a//b.png",
    "leading-dot-slash": "./a.png",
    "trailing-slash": "a/",
    "too-long": "k" * 1025,
}


# --- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def admin(s3_server: S3Server) -> Iterator[Any]:
    """A plain boto3 client on the test server, with the test bucket created."""
    s3_server.create_bucket(BUCKET)
    client = s3_server.client()
    yield client
    client.close()


def make_s3(server: S3Server, *, prefix: str | None = None, **kwargs: Any) -> S3Storage:
    """An S3Storage on the test bucket; each gets its own prefix unless one is given, so tests do not
    see each other's objects."""
    options: dict[str, Any] = {
        "endpoint_url": server.endpoint_url,
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
        "region": "auto",
        "path_style": True,
        "prefix": f"t-{uuid.uuid4().hex[:12]}" if prefix is None else prefix,
    }
    options.update(kwargs)
    bucket = options.pop("bucket", BUCKET)
    return S3Storage(bucket, **options)


@pytest.fixture
def s3(s3_server: S3Server, admin: Any) -> Iterator[S3Storage]:
    with make_s3(s3_server) as storage:
        yield storage


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    s3_storage: Storage = request.getfixturevalue("s3")
    return s3_storage


# --- both backends -----------------------------------------------------------------------------------


def test_round_trip(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    assert storage.put("photo.jpg", b"jpeg bytes") == "photo.jpg"
    assert storage.exists("photo.jpg")
    assert storage.get("photo.jpg") == b"jpeg bytes"
    assert storage.list() == ["photo.jpg"]
    storage.put("photo.jpg", b"replaced")
    assert storage.get("photo.jpg") == b"replaced"
    storage.delete("photo.jpg")
    assert not storage.exists("photo.jpg")
    assert storage.list() == []
    storage.delete("photo.jpg")  # idempotent
    storage.delete("never/was/here.png")


def test_nested_keys_and_list_prefix(storage: Storage) -> None:
    for key in ["masks/a/0.png", "masks/a/1.png", "masks/ab.json", "overlays/a.webp", "z.txt"]:
        storage.put(key, key.encode())
    assert storage.list() == ["masks/a/0.png", "masks/a/1.png", "masks/ab.json", "overlays/a.webp", "z.txt"]
    assert storage.list("masks/a/") == ["masks/a/0.png", "masks/a/1.png"]
    # A plain string prefix, as S3 lists: "masks/a" also matches "masks/ab.json".
    assert storage.list("masks/a") == ["masks/a/0.png", "masks/a/1.png", "masks/ab.json"]
    assert storage.list("nothing/") == []
    assert storage.get("masks/a/1.png") == b"masks/a/1.png"


def test_unicode_keys_are_normalised(storage: Storage) -> None:
    decomposed = "e\u0301t\u00e9.png"  # "été" with a combining accent first
    key = storage.put(decomposed, b"x")
    assert key == "\u00e9t\u00e9.png"
    assert storage.get("\u00e9t\u00e9.png") == b"x"
    assert storage.list() == [key]


@pytest.mark.parametrize("bad", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
def test_bad_keys_are_refused(storage: Storage, bad: str) -> None:
    for call in (
        lambda: storage.put(bad, b"x"),
        lambda: storage.get(bad),
        lambda: storage.exists(bad),
        lambda: storage.delete(bad),
        lambda: storage.url(bad),
    ):
        with pytest.raises(StorageError, match="invalid storage key") as info:
            call()
        assert repr(bad)[:40] in info.value.message
    assert storage.list() == []


def test_bad_list_prefix_is_refused(storage: Storage) -> None:
    for bad in ["../", "/abs", "a//", "a\\b"]:
        with pytest.raises(StorageError, match="invalid storage key"):
            storage.list(bad)


def test_missing_key(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFoundError, match=r"no object 'nope\.png'") as info:
        storage.get("nope.png")
    assert info.value.hint
    with pytest.raises(ObjectNotFoundError):
        storage.download("nope.png", tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()
    assert not storage.exists("nope.png")


def test_put_file_and_download(storage: Storage, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = os.urandom(3 * MiB + 17)
    src.write_bytes(data)
    seen: list[int] = []
    assert storage.put_file("files/src.bin", src, progress=seen.append) == "files/src.bin"
    assert sum(seen) == len(data)
    out = storage.download("files/src.bin", tmp_path / "deep" / "out.bin")
    assert out == tmp_path / "deep" / "out.bin"
    assert out.read_bytes() == data


def test_put_file_missing_source(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot read"):
        storage.put_file("x.bin", tmp_path / "does-not-exist.bin")
    assert storage.list() == []


def test_url_returns_the_bytes(storage: Storage) -> None:
    storage.put("masks/m 1.png", b"\x89PNG mask")
    url = storage.url("masks/m 1.png")
    if storage.name == "local":
        parts = urlsplit(url)
        assert parts.scheme == "file"
        assert Path(unquote(parts.path)).read_bytes() == b"\x89PNG mask"
    else:
        response = httpx.get(url)
        assert response.status_code == 200
        assert response.content == b"\x89PNG mask"
        assert response.headers["content-type"] == "image/png"


def test_storage_errors_are_s3seg_errors(storage: Storage) -> None:
    with pytest.raises(S3SegError) as info:
        storage.get("missing")
    assert info.value.exit_code == 9


# --- S3 / R2 against SeaweedFS ------------------------------------------------------------------------

integration = pytest.mark.integration


@integration
@pytest.mark.parametrize(
    ("key", "given", "stored"),
    [
        ("a.png", None, "image/png"),
        ("b/c.JPG", None, "image/jpeg"),
        ("d.webp", None, "image/webp"),
        ("e.json", None, "application/json"),
        ("f", None, "application/octet-stream"),
        ("g.png", "application/x-custom", "application/x-custom"),
    ],
)
def test_content_type_is_stored(s3: S3Storage, admin: Any, key: str, given: str | None, stored: str) -> None:
    s3.put(key, b"data", content_type=given)
    head = admin.head_object(Bucket=BUCKET, Key=f"{s3.prefix}/{key}")
    assert head["ContentType"] == stored


@integration
def test_put_file_content_type(s3: S3Storage, admin: Any, tmp_path: Path) -> None:
    (tmp_path / "o.webp").write_bytes(b"RIFF")
    s3.put_file("overlay/o.webp", tmp_path / "o.webp")
    assert admin.head_object(Bucket=BUCKET, Key=f"{s3.prefix}/overlay/o.webp")["ContentType"] == "image/webp"


@integration
def test_prefix_isolation(s3_server: S3Server, admin: Any) -> None:
    run = uuid.uuid4().hex[:8]
    with make_s3(s3_server, prefix=f"{run}/a") as a, make_s3(s3_server, prefix=f"/{run}/ab/") as ab:
        a.put("same.png", b"from a")
        ab.put("same.png", b"from ab")
        ab.put("only-ab.png", b"x")
        assert a.list() == ["same.png"]
        assert ab.list() == ["only-ab.png", "same.png"]
        assert a.get("same.png") == b"from a"
        assert not a.exists("only-ab.png")
        a.delete("same.png")
        assert ab.get("same.png") == b"from ab"
    keys = [o["Key"] for o in admin.list_objects_v2(Bucket=BUCKET, Prefix=f"{run}/")["Contents"]]
    assert sorted(keys) == [f"{run}/ab/only-ab.png", f"{run}/ab/same.png"]


@integration
def test_expired_presigned_url_is_refused(s3: S3Storage) -> None:
    s3.put("short.png", b"x")
    url = s3.url("short.png", expires_s=1)
    time.sleep(2.1)
    response = httpx.get(url)
    assert response.status_code == 403
    assert response.content != b"x"


@integration
def test_url_expiry_is_checked(s3: S3Storage) -> None:
    for bad in (0, 7 * 24 * 3600 + 1):
        with pytest.raises(S3SegError, match="expires_s"):
            s3.url("a.png", expires_s=bad)


def _assert_clean(error: StorageError) -> None:
    """A one-line message and no botocore vocabulary: the user sees what to do, not a traceback."""
    text = str(error)
    assert "\n" not in text
    for word in ("botocore", "ClientError", "Traceback", "boto3.", "An error occurred"):
        assert word not in text


@integration
@pytest.mark.parametrize(
    ("key_id", "secret", "code"),
    [
        (None, "wrong-secret", "SignatureDoesNotMatch"),
        ("NOSUCHKEYID", "wrong-secret", "InvalidAccessKeyId"),
    ],
)
def test_wrong_credentials(
    s3_server: S3Server, admin: Any, tmp_path: Path, key_id: str | None, secret: str, code: str
) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    with make_s3(s3_server, access_key_id=key_id or s3_server.access_key, secret_access_key=secret) as bad:
        calls: list[Callable[[], object]] = [
            lambda: bad.put("a.png", b"x"),
            lambda: bad.get("a.png"),
            lambda: bad.list(),
            lambda: bad.delete("a.png"),
            lambda: bad.put_file("f.bin", src),
            lambda: bad.url("a.png") and bad.exists("a.png"),
        ]
        for call in calls:
            with pytest.raises(StorageError, match="refused to") as info:
                call()
            if call is not calls[-1]:  # HEAD answers carry no body, so only the status is known
                assert code in info.value.message
            assert info.value.hint is not None
            assert "R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY" in info.value.hint
            _assert_clean(info.value)
            assert isinstance(info.value.__cause__, Exception)  # chained for S3SEG_DEBUG=1


@integration
def test_missing_bucket(s3_server: S3Server, admin: Any, tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"x")
    with make_s3(s3_server, bucket="s3seg-no-such-bucket") as missing:
        for call in (
            lambda: missing.put("a.png", b"x"),
            lambda: missing.get("a.png"),
            lambda: missing.list(),
            lambda: missing.put_file("f.bin", tmp_path / "f.bin"),
            lambda: missing.delete("a.png"),
        ):
            with pytest.raises(StorageError, match="bucket 's3seg-no-such-bucket' does not exist") as info:
                call()
            assert info.value.hint and "create it" in info.value.hint
            _assert_clean(info.value)


@integration
def test_unreachable_endpoint(s3_server: S3Server) -> None:
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with make_s3(s3_server, endpoint_url=f"http://127.0.0.1:{port}") as nowhere:
        with pytest.raises(StorageError, match="cannot reach S3") as info:
            nowhere.get("a.png")
        assert info.value.hint and "R2_ENDPOINT" in info.value.hint
        _assert_clean(info.value)


@integration
def test_multipart_upload(s3_server: S3Server, admin: Any, tmp_path: Path) -> None:
    size = 11 * MiB + 123
    data = os.urandom(size)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    seen: list[int] = []
    with make_s3(s3_server, multipart_threshold=5 * MiB) as s3:
        s3.put_file("big.bin", src, progress=seen.append)
        assert sum(seen) == size
        assert len(seen) >= 3
        etag = admin.head_object(Bucket=BUCKET, Key=f"{s3.prefix}/big.bin")["ETag"].strip('"')
        assert re.fullmatch(r"[0-9a-f]{32}-3", etag), etag  # 5 + 5 + 1 MiB parts
        assert s3.get("big.bin") == data
        assert s3.download("big.bin", tmp_path / "back.bin").read_bytes() == data
        # put() of bytes above the threshold goes multipart as well.
        s3.put("big2.bin", data[: 6 * MiB])
        etag2 = admin.head_object(Bucket=BUCKET, Key=f"{s3.prefix}/big2.bin")["ETag"].strip('"')
        assert etag2.endswith("-2")
        assert s3.get("big2.bin") == data[: 6 * MiB]


@integration
def test_small_upload_is_single_part(s3: S3Storage, admin: Any) -> None:
    s3.put("small.bin", b"abc")
    assert "-" not in admin.head_object(Bucket=BUCKET, Key=f"{s3.prefix}/small.bin")["ETag"]


def test_s3_storage_name_and_endpoint() -> None:
    pytest.importorskip("boto3")
    with S3Storage("b", endpoint_url="acct.r2.cloudflarestorage.com", access_key_id="k", secret_access_key="s") as r2:
        assert r2.name == "r2"
        assert r2.endpoint_url == "https://acct.r2.cloudflarestorage.com"
    with S3Storage("b", endpoint_url=None, access_key_id="k", secret_access_key="s", region="eu-west-1") as aws:
        assert aws.name == "s3"
    with pytest.raises(StorageError, match="region 'auto' needs an endpoint"):
        S3Storage("b", endpoint_url=None, access_key_id="k", secret_access_key="s")


def test_missing_boto3_is_a_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` raise ImportError
    with pytest.raises(DependencyError, match="needs boto3") as info:
        S3Storage("b", endpoint_url="http://127.0.0.1:9", access_key_id="k", secret_access_key="s")
    assert info.value.hint == "pip install 's3seg[cloud]'"


def test_import_does_not_load_boto3() -> None:
    code = "import sys, s3seg, s3seg.storage; assert 'boto3' not in sys.modules and 'botocore' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- local folder ------------------------------------------------------------------------------------


def test_local_symlink_escape_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    store = LocalStorage(tmp_path / "store")
    store.put("ok.txt", b"ok")
    (tmp_path / "store" / "dir-link").symlink_to(outside, target_is_directory=True)
    (tmp_path / "store" / "file-link.txt").symlink_to(outside / "secret.txt")
    calls: list[Callable[[str], object]] = [
        store.get,
        lambda k: store.put(k, b"x"),
        store.exists,
        store.delete,
        store.url,
    ]
    for key in ("dir-link/secret.txt", "file-link.txt", "dir-link/new.txt"):
        for call in calls:
            with pytest.raises(StorageError, match="resolves outside"):
                call(key)
    assert (outside / "secret.txt").read_bytes() == b"secret"
    assert not (outside / "new.txt").exists()
    assert store.list() == ["ok.txt"]  # symlinks are not listed
    assert store.list("dir-link/") == []


def test_local_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalStorage(root)
    store.put("a/b.png", b"first")
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * MiB))

    def fail(_: int) -> None:
        raise KeyboardInterrupt  # the user interrupts mid-copy

    with pytest.raises(KeyboardInterrupt):
        store.put_file("a/b.png", src, progress=fail)
    assert store.get("a/b.png") == b"first"  # the old object is untouched
    store.put_file("a/b.png", src)
    assert store.get("a/b.png") == src.read_bytes()
    leftovers = [p.name for p in root.rglob("*") if p.is_file() and p.name != "b.png"]
    assert leftovers == []
    assert store.list() == ["a/b.png"]


def test_local_reserved_temp_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="reserved"):
        LocalStorage(tmp_path).put("a/.s3seg-tmp-x", b"x")


def test_local_url_is_absolute_file_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = LocalStorage(Path("rel"))
    store.put("x.png", b"x")
    assert store.url("x.png") == (tmp_path / "rel" / "x.png").resolve().as_uri()


def test_local_root_is_created_lazily(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "later")
    assert store.list() == []
    assert not (tmp_path / "later").exists()


# --- keys, content types, settings ---------------------------------------------------------------------


def test_safe_key() -> None:
    assert safe_key("masks/photo/0.png") == "masks/photo/0.png"
    assert safe_key("a/.hidden/b..png") == "a/.hidden/b..png"  # dots inside names are fine
    for bad in BAD_KEYS.values():
        with pytest.raises(StorageError):
            safe_key(bad)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a.jpg", "image/jpeg"),
        ("a.JPEG", "image/jpeg"),
        ("m/0.png", "image/png"),
        ("o.webp", "image/webp"),
        ("r.json", "application/json"),
        ("x.tar.gz", "application/gzip"),
        ("noext", "application/octet-stream"),
        (".env", "application/octet-stream"),
        ("a.weird", "application/octet-stream"),
        ("dir.png/x", "application/octet-stream"),
    ],
)
def test_guess_content_type(key: str, expected: str) -> None:
    assert guess_content_type(key) == expected


@pytest.fixture
def no_r2_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read R2_* from the environment; these tests say exactly what is configured."""
    for name in ("ENDPOINT", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "BUCKET", "REGION", "PATH_STYLE", "PREFIX"):
        monkeypatch.delenv(f"R2_{name}", raising=False)
        monkeypatch.delenv(f"S3SEG_R2_{name}", raising=False)


@pytest.mark.usefixtures("no_r2_env")
def test_storage_from_settings_local(tmp_path: Path) -> None:
    store = storage_from_settings(Settings(data_dir=tmp_path, _env_file=None))  # type: ignore[call-arg]
    assert isinstance(store, LocalStorage)
    assert store.root == tmp_path / "storage"


@pytest.mark.usefixtures("no_r2_env")
def test_storage_from_settings_half_configured(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, r2_bucket="b", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(StorageError, match="R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY not set"):
        storage_from_settings(settings)


@integration
@pytest.mark.usefixtures("no_r2_env")
def test_storage_from_settings_s3(s3_server: S3Server, admin: Any, tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path,
        r2_endpoint=s3_server.endpoint_url,
        r2_access_key_id=s3_server.access_key,
        r2_secret_access_key=SecretStr(s3_server.secret_key),
        r2_bucket=BUCKET,
        r2_prefix="from-settings/",
        _env_file=None,
    )
    store = storage_from_settings(settings)
    try:
        assert isinstance(store, S3Storage)
        assert store.name == "s3"
        store.put("k.json", b"{}")
        assert admin.head_object(Bucket=BUCKET, Key="from-settings/k.json")["ContentType"] == "application/json"
        store.delete("k.json")
    finally:
        store.close()
