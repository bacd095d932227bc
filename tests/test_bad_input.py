"""Bad input at a real ``meshd embedded`` process: raw HTTP requests (sent
un-normalised with http.client), the Python client, bad mounts, and a cache
disk that fills up. Each bad input must get its proper error kind, and the
daemon must stay alive and keep serving.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from meshd.client.sdk import MeshClient
from meshd.errors import (
    InvalidArgument,
    InvalidPath,
    IsADirectory,
    MountError,
    NotFound,
    PermissionDenied,
)
from tests.data import payload
from tests.meshd_proc import MeshdProcess

HELLO_PREFIX = b"Hello from the data mesh."
MiB = 1 << 20


def http_request(node: MeshdProcess, method: str, target: str, body: bytes | None = None,
                 timeout: float = 30) -> tuple[int, bytes]:
    """Send ``target`` exactly as given (no normalisation of ``..`` or ``//``)."""
    u = urlsplit(node.http)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def json_error(status: int, body: bytes) -> tuple[int, str]:
    try:
        d = json.loads(body)
    except ValueError:
        raise AssertionError(f"HTTP {status} without a JSON error body: {body[:300]!r}") from None
    assert set(d) == {"error", "message"}, d
    assert d["message"], d
    return status, d["error"]


def assert_healthy(node: MeshdProcess) -> None:
    assert node.alive(), "meshd died"
    with urllib.request.urlopen(node.http + "/healthz", timeout=10) as r:
        assert r.read() == b"ok"
    status, body = http_request(node, "GET", "/v1/files/local/hello.txt")
    assert status == 200 and body.startswith(HELLO_PREFIX)
    with node.client() as c:
        assert c.cat("/local/hello.txt").startswith(HELLO_PREFIX)


@pytest.fixture
def node(meshd: Callable[..., MeshdProcess]) -> Iterator[MeshdProcess]:
    """A node with only the default mount: DATA_DIR/local-store at /local."""
    n = meshd(args=["--page-size", "256KiB"])
    (n.data_dir / "local-store" / "sub").mkdir()
    (n.data_dir / "local-store" / "sub" / "f.txt").write_bytes(b"in sub")
    yield n
    assert_healthy(n)  # after every test, whatever it sent


@pytest.fixture(params=["default", "http-only"])
def client(request: pytest.FixtureRequest, node: MeshdProcess,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[MeshClient]:
    """The client as it comes, and with local short-circuit reads off (all bytes over HTTP)."""
    if request.param == "http-only":
        monkeypatch.setenv("MESH_SHORT_CIRCUIT", "0")
    with node.client() as c:
        yield c


# ---------------------------------------------------------------- HTTP data API

LONG_NAME = "n" * 300
LONG_PATH = "/".join(["abcd"] * 1100)  # 5,499 bytes (past 5,120), every component short


@pytest.mark.parametrize(("target", "kind"), [
    ("/v1/files/local/../etc/passwd", "InvalidPath"),
    ("/v1/files/local/../../../../../../etc/passwd", "InvalidPath"),
    ("/v1/files/../../etc/passwd", "InvalidPath"),
    ("/v1/files/local/%2e%2e/%2e%2e/etc/passwd", "InvalidPath"),
    ("/v1/files/local/..%2f..%2f..%2fetc%2fpasswd", "InvalidPath"),
    ("/v1/files/local/./hello.txt", "InvalidPath"),
    ("/v1/files/local/sub/..", "InvalidPath"),
    ("/v1/files/local/hello.txt%00.png", "InvalidPath"),
    ("/v1/files/local/%00", "InvalidPath"),
    (f"/v1/files/local/{LONG_NAME}", "NameTooLong"),
    (f"/v1/files/local/{LONG_PATH}", "NameTooLong"),
    ("/v1/files/local/hello.txt?offset=abc", "InvalidArgument"),
    ("/v1/files/local/hello.txt?offset=1.5", "InvalidArgument"),
    ("/v1/files/local/hello.txt?offset=1e3", "InvalidArgument"),
    ("/v1/files/local/hello.txt?length=ten", "InvalidArgument"),
    ("/v1/files/local/hello.txt?offset=-1", "InvalidArgument"),
    ("/v1/files/local/hello.txt?length=-2", "InvalidArgument"),
    ("/v1/files/local/hello.txt?offset=0x10", "InvalidArgument"),
])
def test_bad_read_requests(node: MeshdProcess, target: str, kind: str) -> None:
    status, body = http_request(node, "GET", target)
    assert json_error(status, body) == (400, kind)
    assert b"root:" not in body
    assert_healthy(node)


@pytest.mark.parametrize("target", [
    "/v1/files/local/../escaped.txt",
    "/v1/files/local/%2e%2e/escaped.txt",
    "/v1/files/local/..%2fescaped.txt",
    "/v1/files/local/evil%00.txt",
    f"/v1/files/local/{LONG_NAME}",
    f"/v1/files/local/{LONG_PATH}",
])
def test_bad_write_requests(node: MeshdProcess, target: str) -> None:
    before = sorted(os.listdir(node.data_dir))
    status, body = http_request(node, "PUT", target, b"evil bytes")
    too_long = target.endswith((LONG_NAME, LONG_PATH))  # ENAMETOOLONG: NameTooLong, an InvalidPath
    assert json_error(status, body) == (400, "NameTooLong" if too_long else "InvalidPath")
    assert sorted(os.listdir(node.data_dir)) == before  # nothing escaped the mount
    assert sorted(os.listdir(node.data_dir / "local-store")) == ["hello.txt", "sub"]
    assert_healthy(node)


def test_offsets_past_the_end_are_empty_not_errors(node: MeshdProcess) -> None:
    for q in ("offset=9223372036854775807", "offset=100000&length=5", "length=0"):
        status, body = http_request(node, "GET", f"/v1/files/local/hello.txt?{q}")
        assert (status, body) == (200, b""), q
    # past a 64-bit integer is not an offset at all (meshd.limits.parse_int)
    status, body = http_request(node, "GET", "/v1/files/local/hello.txt?offset=99999999999999999999")
    assert json_error(status, body) == (400, "InvalidArgument")
    status, body = http_request(node, "GET", "/v1/files/local/hello.txt?offset=6&length=4")
    assert (status, body) == (200, b"from")


def test_truncated_and_malformed_uploads_leave_nothing(node: MeshdProcess) -> None:
    u = urlsplit(node.http)
    store = node.data_dir / "local-store"
    # a body shorter than its Content-Length, then the client goes away
    with socket.create_connection((u.hostname, u.port)) as s:
        s.sendall(b"PUT /v1/files/local/partial.bin HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 1000000\r\n\r\n" + b"x" * 5000)
        time.sleep(0.3)
    # a broken chunked encoding
    with socket.create_connection((u.hostname, u.port)) as s:
        s.sendall(b"PUT /v1/files/local/partial2.bin HTTP/1.1\r\nHost: x\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\nZZ\r\n")
        s.settimeout(10)
        head = s.recv(100)
        assert head.startswith(b"HTTP/1.") and head[8:13] == b" 400 ", head
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sorted(os.listdir(store)) != ["hello.txt", "sub"]:
        time.sleep(0.1)
    assert sorted(os.listdir(store)) == ["hello.txt", "sub"]  # no partial file, no temp file
    with node.client() as c:
        with pytest.raises(NotFound):
            c.stat("/local/partial.bin")
        with pytest.raises(NotFound):
            c.stat("/local/partial2.bin")
    assert_healthy(node)


# ---------------------------------------------------------------- the client (gRPC + HTTP)


@pytest.mark.parametrize("path", [
    "/local/../x",
    "/local/../../etc/passwd",
    "/../local/hello.txt",
    "/local/./hello.txt",
    "/local/a\x00b",
    "/local/hello.txt\x00",
    f"/local/{LONG_NAME}",
    f"/local/{LONG_PATH}",
    "/" + "x" * 5000,
])
def test_bad_paths_through_the_client(node: MeshdProcess, client: MeshClient, path: str) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: client.stat(path),
        lambda: client.ls(path),
        lambda: client.cat(path),
        lambda: client.put(path, b"evil"),
        lambda: client.mkdir(path),
        lambda: client.rm(path, recursive=True),
        lambda: client.rename("/local/hello.txt", path),
        lambda: client.rename(path, "/local/other.txt"),
        lambda: list(client.load(path)),
        lambda: client.sync(path),
        lambda: client.free(path),
    ]
    for i, call in enumerate(calls):
        with pytest.raises(InvalidPath):
            call()
        assert node.alive(), f"call {i}"
    assert sorted(os.listdir(node.data_dir / "local-store")) == ["hello.txt", "sub"]
    assert_healthy(node)


def test_bad_ranges_through_the_client(client: MeshClient) -> None:
    with pytest.raises(InvalidArgument):
        client.cat("/local/hello.txt", -1, 10)
    with pytest.raises(InvalidArgument):
        client.cat("/local/hello.txt", 0, -5)


def test_reading_a_directory(node: MeshdProcess, client: MeshClient) -> None:
    for target in ("/v1/files/local/sub", "/v1/files/local/sub/", "/v1/files/local"):
        status, body = http_request(node, "GET", target)
        assert json_error(status, body) == (409, "IsADirectory"), target
    for path in ("/local/sub", "/local"):
        with pytest.raises(IsADirectory):
            client.cat(path)
        with pytest.raises(IsADirectory):
            client.cat(path, nocache=True)


def test_reading_a_virtual_directory(node: MeshdProcess, client: MeshClient) -> None:
    """``/`` (above the mounts) is a directory too: stat says so, so must a read."""
    assert client.stat("/").is_dir
    status, body = http_request(node, "GET", "/v1/files/")
    assert json_error(status, body) == (409, "IsADirectory")
    with pytest.raises(IsADirectory):
        client.cat("/")


def test_writing_a_mount_point_or_a_directory(node: MeshdProcess, client: MeshClient) -> None:
    with pytest.raises(IsADirectory):
        client.put("/local", b"x")
    with pytest.raises(IsADirectory):
        client.put("/local/sub", b"x")
    assert (node.data_dir / "local-store" / "sub" / "f.txt").read_bytes() == b"in sub"
    with pytest.raises(PermissionDenied):
        client.rm("/local", recursive=True)
    assert (node.data_dir / "local-store" / "hello.txt").exists()


@pytest.mark.parametrize("path", ["/outside.txt", "/nomount/deep/x.txt"])
def test_writing_outside_any_mount(node: MeshdProcess, client: MeshClient, path: str) -> None:
    with pytest.raises(PermissionDenied):
        client.put(path, b"x")
    status, body = http_request(node, "PUT", "/v1/files" + path, b"x")
    assert json_error(status, body) == (403, "PermissionDenied")
    with pytest.raises(PermissionDenied):
        client.mkdir(os.path.dirname(path) + "/newdir")
    with pytest.raises(PermissionDenied):
        client.rm("/")
    assert client.ls("/") and [s.path for s in client.ls("/")] == ["/local"]


# ---------------------------------------------------------------- bad mounts


def _assert_mounts(client: MeshClient, paths: list[str]) -> None:
    assert [m.path for m in client.mounts()] == paths


def test_mount_unknown_scheme_and_malformed(node: MeshdProcess, client: MeshClient,
                                            tmp_path: Path) -> None:
    for path, uri in [("/x", "nope://bucket/x"), ("/x", "no-scheme-at-all"), ("/x", ""),
                      ("/x", "file://host/dir"), ("/x", "file:///does/not/exist"),
                      ("/../x", f"file://{tmp_path}"), ("/a\x00b", f"file://{tmp_path}"),
                      (f"/{LONG_NAME}", f"file://{tmp_path}"), ("/local", f"file://{tmp_path}"),
                      ("/local/inner", f"file://{tmp_path}"), ("/", f"file://{tmp_path}")]:
        with pytest.raises(MountError):
            client.mount_add(path, uri)
        _assert_mounts(client, ["/local"])
    for opts in ({"sync_interval": "x"}, {"sync_interval": "-2"}, {"nocache": "perhaps"},
                 {"bad key": "v"}, {"": "v"}):
        with pytest.raises(MountError):
            client.mount_add("/x", f"file://{tmp_path}", opts)
    _assert_mounts(client, ["/local"])
    with pytest.raises(MountError):
        client.mount_rm("/not-mounted")
    with pytest.raises(InvalidPath):
        client.stat("/x/../local")
    assert_healthy(node)


def test_mount_s3_bad_bucket_and_bad_credentials(node: MeshdProcess, client: MeshClient,
                                                 s3_bucket: Any) -> None:
    good = dict(s3_bucket.options)
    # a bucket that does not exist
    with pytest.raises(MountError) as e:
        client.mount_add("/s3", "s3://no-such-bucket-for-mesh-tests/p", good)
    assert "no-such-bucket-for-mesh-tests" in str(e.value)
    _assert_mounts(client, ["/local"])

    # wrong secret key
    bad = {**good, "secret_key": "definitely-not-the-secret"}
    with pytest.raises(PermissionDenied) as e:
        client.mount_add("/s3", s3_bucket.uri("p"), bad)
    assert "definitely-not-the-secret" not in str(e.value)
    assert good["secret_key"] not in str(e.value)
    for hint in ("access_key=", "secret_key=", "AWS_ACCESS_KEY_ID"):  # how to give credentials
        assert hint in str(e.value), str(e.value)
    _assert_mounts(client, ["/local"])

    # unknown access key
    with pytest.raises(PermissionDenied):
        client.mount_add("/s3", s3_bucket.uri("p"), {**good, "access_key": "AKIANOBODY"})
    # malformed S3 options
    for opts in ({**good, "secret_kee": "x"}, {**good, "endpoint": "ftp://x"},
                 {k: v for k, v in good.items() if k != "secret_key"}):
        with pytest.raises(MountError):
            client.mount_add("/s3", s3_bucket.uri("p"), opts)
    _assert_mounts(client, ["/local"])

    # the good one works, and nothing of the failed attempts is left behind
    client.mount_add("/s3", s3_bucket.uri("p"), good)
    client.put("/s3/f.txt", b"s3!")
    assert client.cat("/s3/f.txt") == b"s3!"
    _assert_mounts(client, ["/local", "/s3"])
    assert_healthy(node)


def test_mount_with_no_check_then_bad_credentials_fail_reads(node: MeshdProcess, client: MeshClient,
                                                             s3_server: Any, s3_bucket: Any) -> None:
    s3_server.client().put_object(Bucket=s3_bucket.name, Key="p/f.txt", Body=b"secret data")
    bad = {**s3_bucket.options, "secret_key": "wrong"}
    client.mount_add("/s3", s3_bucket.uri("p"), bad, check=False)
    with pytest.raises(PermissionDenied):
        client.cat("/s3/f.txt")
    with pytest.raises(PermissionDenied):
        client.ls("/s3")
    status, body = http_request(node, "GET", "/v1/files/s3/f.txt")
    assert json_error(status, body) == (403, "PermissionDenied")
    assert b"wrong" not in body
    assert_healthy(node)


# ---------------------------------------------------------------- a full cache disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: the node's data directory (and so its cache disk) lives on it."""
    d = tmp_path / "small-disk"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(d)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(d)], check=True)


@pytest.mark.parametrize("page_size", ["1MiB", "64KiB"])
def test_full_cache_disk_never_fails_reads(meshd: Callable[..., MeshdProcess], small_disk: Path,
                                           tmp_path: Path, page_size: str) -> None:
    store = tmp_path / "store"
    store.mkdir()
    data = payload(20 * MiB)
    (store / "big.bin").write_bytes(data)
    (store / "small.txt").write_bytes(b"small")
    node = meshd(mounts=[f"/data=file://{store}"], data_dir=small_disk,
                 args=["--page-size", page_size, "--disk-capacity", "1GiB",
                       "--memory-capacity", "64MiB"])
    try:
        _read_through_a_full_disk(node, store, data)
    finally:
        node.stop()  # before the tmpfs is unmounted


def _read_through_a_full_disk(node: MeshdProcess, store: Path, data: bytes) -> None:
    with node.client() as c:
        for _ in range(2):
            assert hashlib.sha256(c.cat("/data/big.bin")).hexdigest() == hashlib.sha256(data).hexdigest()
        deadline = time.monotonic() + 15  # the disk tier is written behind the reads
        while (rep := c.report())["cache_write_errors"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rep["cache_write_errors"] > 0
        assert rep["tiers"]["disk"]["used"] < 4 * MiB  # the disk tier holds what fit, no more
        with urllib.request.urlopen(node.http + "/healthz", timeout=10) as r:
            assert r.read() == b"ok"
        # the node keeps serving: the same file, ranges of it, other and new files
        assert c.cat("/data/big.bin", 7 * MiB + 5, 1000) == data[7 * MiB + 5:7 * MiB + 1005]
        assert c.cat("/data/big.bin") == data
        assert c.cat("/data/small.txt") == b"small"
        assert [s.path for s in c.ls("/data")] == ["/data/big.bin", "/data/small.txt"]
        for i in range(5):
            (store / f"new{i}.bin").write_bytes(data[i * MiB:(i + 1) * MiB])
            assert c.cat(f"/data/new{i}.bin") == data[i * MiB:(i + 1) * MiB]
        assert c.stat("/data/new4.bin").size == MiB
    assert node.alive()


def test_cache_disk_with_no_space_left_at_all(meshd: Callable[..., MeshdProcess], small_disk: Path,
                                             tmp_path: Path) -> None:
    """Something else takes the last free byte of the cache disk: reads still work.

    The cache is an optimisation; neither its pages nor its metadata may turn
    a full disk into failed reads.
    """
    store = tmp_path / "store"
    store.mkdir()
    data = payload(6 * MiB, seed=1)
    (store / "big.bin").write_bytes(data)
    node = meshd(mounts=[f"/data=file://{store}"], data_dir=small_disk,
                 args=["--page-size", "256KiB", "--disk-capacity", "1GiB", "--memory-capacity", "64MiB"])
    try:
        with node.client() as c:
            assert c.cat("/data/big.bin") == data
            deadline = time.monotonic() + 15  # until every page was written, or failed to be
            while time.monotonic() < deadline:
                rep = c.report()
                if rep["tiers"]["disk"]["pages"] + rep["cache_write_errors"] >= 24:
                    break
                time.sleep(0.05)
            fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
            try:  # fill the disk to the last byte
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
            assert os.statvfs(small_disk).f_bavail == 0
            for i in range(20):
                (store / f"new{i}.bin").write_bytes(data[i * 300_000:(i + 1) * 300_000])
            assert len(c.ls("/data")) == 21
            for i in range(20):
                assert c.cat(f"/data/new{i}.bin") == data[i * 300_000:(i + 1) * 300_000]
                assert c.stat(f"/data/new{i}.bin").size == 300_000
            assert c.cat("/data/big.bin") == data
            assert c.report()["cache_write_errors"] > 0
        with urllib.request.urlopen(node.http + "/healthz", timeout=10) as r:
            assert r.read() == b"ok"
        assert node.alive()
    finally:
        node.stop()


# ---------------------------------------------------------------- numbers of thousands of digits

HUGE_NUMBER = "9" * 5000  # Python refuses to convert more than 4,300 digits: once a 500


def _s3(node: MeshdProcess, method: str, target: str, headers: dict[str, str] | None = None,
        body: bytes | None = None) -> tuple[int, bytes]:
    u = urlsplit(node.endpoints["s3"])
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize(("method", "target", "headers", "status", "code"), [
    ("GET", "/local/hello.txt", {"Range": f"bytes=0-{HUGE_NUMBER}"}, 206, None),  # clipped at the end
    ("GET", "/local/hello.txt", {"Range": f"bytes={HUGE_NUMBER}-"}, 416, "InvalidRange"),
    ("GET", "/local/hello.txt", {"Range": f"bytes=-{HUGE_NUMBER}"}, 206, None),  # the whole object
    ("GET", f"/local?max-keys={HUGE_NUMBER}", {}, 200, None),  # capped at 1000, as S3 does
    ("GET", f"/local?list-type=2&max-keys={HUGE_NUMBER}", {}, 200, None),
    ("GET", f"/local/hello.txt?partNumber={HUGE_NUMBER}", {}, 400, "InvalidArgument"),
    ("PUT", "/local/huge.txt", {"x-amz-decoded-content-length": HUGE_NUMBER, "Content-Length": "1"},
     400, "EntityTooLarge"),
])
def test_numbers_of_thousands_of_digits_are_s3_errors_not_500(
        node: MeshdProcess, method: str, target: str, headers: dict[str, str], status: int,
        code: str | None) -> None:
    got, body = _s3(node, method, target, headers, b"x" if method == "PUT" else None)
    assert got == status, body[:300]
    if code is not None:
        assert f"<Code>{code}</Code>".encode() in body
    if status == 206:
        assert body.startswith(HELLO_PREFIX)
    assert "Traceback" not in node.log.read_text()
