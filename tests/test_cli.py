"""meshctl, run as a subprocess against real ``meshd embedded`` processes.

Every command is checked on what it prints *and* on what really happened:
bytes compared by sha256, the under-store (a local directory or a real S3
server) inspected directly, and the node's own report (``report --json``)
read back to see where the bytes of a read came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import data as testdata
from tests.meshd_proc import MESHCTL, MESHD, MeshdProcess, env_without_endpoint

PAGE = 256 << 10
PAGE_ARGS = ["--page-size", "256KiB"]
# a few MiB, not a whole number of pages: the last page is a short one
SIZE = 3 * (1 << 20) + 12345


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(n: int = SIZE, seed: int = 0) -> bytes:
    return testdata.payload(n, seed)


def ok(r: subprocess.CompletedProcess[bytes]) -> str:
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr.decode()}"
    assert b"Traceback" not in r.stderr, r.stderr.decode()
    return r.stdout.decode(errors="replace")


def failed(r: subprocess.CompletedProcess[bytes], kind: str | None = None) -> str:
    """A clean failure: exit 1 and exactly one ``meshctl: Kind: ...`` line on stderr."""
    err = r.stderr.decode()
    assert r.returncode == 1, f"expected exit 1, got {r.returncode}; stdout={r.stdout!r} stderr={err!r}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("meshctl: "), lines[0]
    if kind is not None:
        assert lines[0].startswith(f"meshctl: {kind}: "), lines[0]
    return lines[0]


def report(node: MeshdProcess) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(ok(node.ctl("report", "--json")))
    return result


def report_when(node: MeshdProcess, pred: Callable[[dict[str, Any]], bool],
                timeout: float = 15) -> dict[str, Any]:
    """The first report for which ``pred`` holds (the disk tier is written behind reads)."""
    deadline = time.monotonic() + timeout
    with node.client() as c:
        while True:
            rep = c.report()
            if pred(rep) or time.monotonic() > deadline:
                return rep
            time.sleep(0.05)


def s3_mount_flag(bucket: Any, path: str, prefix: str, **extra: str) -> str:
    opts = {**bucket.options, **extra}
    return f"{path}={bucket.uri(prefix)}," + ",".join(f"{k}={v}" for k, v in opts.items())


# ---------------------------------------------------------------- backends


@dataclass
class Backend:
    """One mount of a running node and direct access to its under-store."""

    kind: str
    node: MeshdProcess
    root: str  # mesh path of the mount
    put: Callable[[str, bytes], None]
    get: Callable[[str], bytes]
    exists: Callable[[str], bool]
    s3_gets: Callable[[str], int] = field(default=lambda rel: 0)

    def mesh(self, rel: str) -> str:
        return f"{self.root}/{rel}"


def _file_backend(meshd: Callable[..., MeshdProcess], store: Path, mount_opts: dict[str, str],
                  args: list[str]) -> Backend:
    store.mkdir(parents=True, exist_ok=True)
    flag = f"/m=file://{store}" + "".join(f",{k}={v}" for k, v in mount_opts.items())
    node = meshd(mounts=[flag], args=args)

    def put(rel: str, data: bytes) -> None:
        p = store / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    return Backend("file", node, "/m", put, lambda rel: (store / rel).read_bytes(),
                   lambda rel: (store / rel).exists())


def _s3_backend(meshd: Callable[..., MeshdProcess], s3_server: Any, bucket: Any,
                mount_opts: dict[str, str], args: list[str]) -> Backend:
    prefix = "pre"
    node = meshd(mounts=[s3_mount_flag(bucket, "/m", prefix, **mount_opts)], args=args)
    s3 = s3_server.client()

    def put(rel: str, data: bytes) -> None:
        s3.put_object(Bucket=bucket.name, Key=f"{prefix}/{rel}", Body=data)

    def get(rel: str) -> bytes:
        body: bytes = s3.get_object(Bucket=bucket.name, Key=f"{prefix}/{rel}")["Body"].read()
        return body

    def exists(rel: str) -> bool:
        resp = s3.list_objects_v2(Bucket=bucket.name, Prefix=f"{prefix}/{rel}")
        return any(o["Key"] == f"{prefix}/{rel}" or o["Key"].startswith(f"{prefix}/{rel}/")
                   for o in resp.get("Contents", []))

    return Backend("s3", node, "/m", put, get, exists,
                   lambda rel: s3_server.get_requests(bucket.name, f"{prefix}/{rel}"))


@pytest.fixture
def make_backend(request: pytest.FixtureRequest, meshd: Callable[..., MeshdProcess],
                 tmp_path: Path) -> Callable[..., Backend]:
    def make(kind: str, mount_opts: dict[str, str] | None = None,
             args: list[str] | None = None) -> Backend:
        opts, a = dict(mount_opts or {}), PAGE_ARGS + list(args or [])
        if kind == "file":
            return _file_backend(meshd, tmp_path / "store", opts, a)
        s3_server = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        return _s3_backend(meshd, s3_server, bucket, opts, a)

    return make


@pytest.fixture
def store(tmp_path: Path) -> Path:
    d = tmp_path / "store"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "a.bin").write_bytes(payload())
    (d / "small.txt").write_bytes(b"hello mesh\n")
    (d / "sub" / "x.txt").write_bytes(b"x" * 1000)
    (d / "sub" / "deeper" / "y.txt").write_bytes(b"y" * 10)
    return d


@pytest.fixture
def node(meshd: Callable[..., MeshdProcess], store: Path) -> MeshdProcess:
    return meshd(mounts=[f"/data=file://{store}"], args=PAGE_ARGS)


# ---------------------------------------------------------------- mount


def test_mount_add_ls_rm_file(node: MeshdProcess, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.txt").write_bytes(b"other bytes")

    out = ok(node.ctl("mount", "add", "/more/stuff", f"file://{other}", "-o", "sync_interval=5"))
    assert "/more/stuff" in out and f"file://{other}" in out

    listing = ok(node.ctl("mount", "ls"))
    lines = {ln.split()[0]: ln for ln in listing.splitlines()}
    assert set(lines) == {"/data", "/more/stuff"}
    assert f"file://{other}" in lines["/more/stuff"] and "sync_interval=5" in lines["/more/stuff"]
    as_json = json.loads(ok(node.ctl("mount", "ls", "--json")))
    assert {m["path"]: m["options"] for m in as_json} == {"/data": {}, "/more/stuff": {"sync_interval": "5"}}

    # the virtual directories above mount points, and the new mount's contents
    assert ok(node.ctl("ls", "/")).split() == ["data/", "more/"]
    assert ok(node.ctl("ls", "/more")).split() == ["stuff/"]
    assert ok(node.ctl("cat", "/more/stuff/o.txt")) == "other bytes"

    out = ok(node.ctl("mount", "rm", "/more/stuff"))
    assert "/more/stuff" in out
    assert [ln.split()[0] for ln in ok(node.ctl("mount", "ls")).splitlines()] == ["/data"]
    failed(node.ctl("cat", "/more/stuff/o.txt"), "NotFound")
    assert ok(node.ctl("ls", "/")).split() == ["data/"]
    assert (other / "o.txt").read_bytes() == b"other bytes"  # unmounting deletes nothing
    failed(node.ctl("mount", "rm", "/more/stuff"), "MountError")


def test_mount_add_s3_redacts_secrets_and_survives_restart(
        node: MeshdProcess, s3_server: Any, s3_bucket: Any) -> None:
    s3_server.client().put_object(Bucket=s3_bucket.name, Key="pfx/obj.bin", Body=b"s3 bytes")
    opts = [a for k, v in s3_bucket.options.items() for a in ("--option", f"{k}={v}")]
    out = ok(node.ctl("mount", "add", "/s3", s3_bucket.uri("pfx"), *opts))
    assert "/s3" in out and s3_bucket.uri("pfx") in out
    secret = s3_bucket.options["secret_key"]
    assert secret not in out

    def check_listing() -> None:
        text = ok(node.ctl("mount", "ls"))
        assert secret not in text
        s3_line = next(ln for ln in text.splitlines() if ln.startswith("/s3 "))
        assert "secret_key=***" in s3_line
        assert "access_key=***" in s3_line  # a secret option too (sealed at rest)
        assert f"endpoint={s3_bucket.options['endpoint']}" in s3_line
        js = ok(node.ctl("mount", "ls", "--json"))
        assert secret not in js
        s3m = next(m for m in json.loads(js) if m["path"] == "/s3")
        assert s3m["uri"] == s3_bucket.uri("pfx")
        assert s3m["options"]["secret_key"] == "***"

    check_listing()
    assert ok(node.ctl("cat", "/s3/obj.bin")) == "s3 bytes"
    # the mount table persists; the real secret (not "***") is what the node kept
    node.restart()
    check_listing()
    assert ok(node.ctl("cat", "/s3/obj.bin", "--nocache")) == "s3 bytes"
    assert secret.encode() not in (node.data_dir.parent / f"{node.data_dir.name}.log").read_bytes()


@pytest.mark.parametrize("path", ["/data/inner", "/data", "/"])
def test_overlapping_mount_refused(node: MeshdProcess, tmp_path: Path, path: str) -> None:
    before = ok(node.ctl("mount", "ls"))
    line = failed(node.ctl("mount", "add", path, f"file://{tmp_path}"), "MountError")
    assert "/data" in line  # names the mount it collides with
    assert ok(node.ctl("mount", "ls")) == before


def test_nested_mount_refused_the_other_way_round(meshd: Callable[..., MeshdProcess],
                                                  tmp_path: Path) -> None:
    node = meshd(mounts=[f"/a/b/c=file://{tmp_path}"])
    line = failed(node.ctl("mount", "add", "/a", f"file://{tmp_path}"), "MountError")
    assert "/a/b/c" in line


@pytest.mark.parametrize(("uri", "opts", "needle"), [
    ("nope://bucket/x", [], "nope"),  # unknown scheme
    ("just-some-words", [], "just-some-words"),  # no scheme at all
    ("file:///does/not/exist/anywhere", [], "/does/not/exist/anywhere"),
    ("file://relative/dir", [], "file://"),
    ("FILE", ["-o", "sync_interval=soon"], "sync_interval"),
    ("FILE", ["-o", "read_only=maybe"], "read_only"),
    # a misspelt option is refused for every scheme, not silently ignored (readonly mounted writable)
    ("FILE", ["-o", "readonly=true"], "unknown file mount option 'readonly'; did you mean 'read_only'?"),
    ("s3://bucket/p", ["-o", "secretkey=x"], "did you mean 'secret_key'?"),
    ("hdfs://namenode/x", ["-o", "usr=etl"], "did you mean 'user'?"),
    ("FILE", ["-o", "colour=blue"], "unknown file mount option 'colour' (file mounts take: home_region"),
])
def test_bad_mount_refused(node: MeshdProcess, tmp_path: Path, uri: str, opts: list[str],
                           needle: str) -> None:
    uri = f"file://{tmp_path}" if uri == "FILE" else uri
    before = ok(node.ctl("mount", "ls"))
    line = failed(node.ctl("mount", "add", "/new", uri, *opts), "MountError")
    assert needle in line
    assert ok(node.ctl("mount", "ls")) == before
    failed(node.ctl("ls", "/new"), "NotFound")


def test_option_without_value_refused(node: MeshdProcess, tmp_path: Path) -> None:
    line = failed(node.ctl("mount", "add", "/new", f"file://{tmp_path}", "-o", "sync_interval"),
                  "InvalidArgument")
    assert "key=value" in line


def test_usage_error_exits_2(node: MeshdProcess) -> None:
    r = node.ctl("cat")
    assert r.returncode == 2
    assert b"usage" in r.stderr.lower() and b"Traceback" not in r.stderr


# ---------------------------------------------------------------- namespace


def test_ls_and_ls_long(node: MeshdProcess, store: Path) -> None:
    assert ok(node.ctl("ls")).split() == ["data/"]  # default path is /
    assert ok(node.ctl("ls", "/data")).split() == ["a.bin", "small.txt", "sub/"]
    assert ok(node.ctl("ls", "/data/sub")).split() == ["deeper/", "x.txt"]

    rows = [ln.split() for ln in ok(node.ctl("ls", "-l", "/data")).splitlines()]
    by_name = {r[-1]: r for r in rows}
    assert set(by_name) == {"a.bin", "small.txt", "sub/"}
    assert by_name["a.bin"][0] == "-" and int(by_name["a.bin"][1]) == SIZE
    assert by_name["small.txt"][0] == "-" and int(by_name["small.txt"][1]) == 11
    assert by_name["sub/"][0] == "d"
    mtime = time.strftime("%Y-%m-%d", time.localtime((store / "a.bin").stat().st_mtime))
    assert by_name["a.bin"][2] == mtime

    # ls of a file lists that file
    assert ok(node.ctl("ls", "/data/small.txt")).split() == ["/data/small.txt"]
    failed(node.ctl("ls", "/data/nope"), "NotFound")


def test_stat_json(node: MeshdProcess, store: Path) -> None:
    st = json.loads(ok(node.ctl("stat", "/data/a.bin")))
    assert st["path"] == "/data/a.bin"
    assert st["type"] == "file"
    assert st["size"] == SIZE
    assert st["mtime"] == pytest.approx((store / "a.bin").stat().st_mtime, abs=1e-3)
    assert st["version"]

    d = json.loads(ok(node.ctl("stat", "/data/sub")))
    assert d["type"] == "directory" and d["path"] == "/data/sub"

    # a rewrite in the under-store is a new version
    (store / "a.bin").write_bytes(payload(SIZE + 1, seed=9))
    st2 = json.loads(ok(node.ctl("stat", "data/a.bin")))  # relative paths are absolute
    assert st2["size"] == SIZE + 1 and st2["version"] != st["version"]
    failed(node.ctl("stat", "/data/missing.bin"), "NotFound")


def test_cat_whole_and_ranges(node: MeshdProcess) -> None:
    data = payload()
    r = node.ctl("cat", "/data/a.bin")
    ok(r)
    assert r.stdout == data
    for offset, length in [(0, 1), (1, PAGE), (PAGE - 7, 14), (3 * PAGE, 2 * PAGE + 3),
                           (SIZE - 100, 100), (SIZE - 100, 10_000), (5, -1), (SIZE, 10), (SIZE + 50, 10)]:
        r = node.ctl("cat", "/data/a.bin", "--offset", str(offset), "--length", str(length))
        ok(r)
        want = data[offset:] if length == -1 else data[offset:offset + length]
        assert r.stdout == want, (offset, length)
    r = node.ctl("cat", "/data/a.bin", "--offset", "-1")
    failed(r, "InvalidArgument")
    failed(node.ctl("cat", "/data/sub"), "IsADirectory")
    failed(node.ctl("cat", "/data/nope"), "NotFound")


def test_cat_nocache_touches_no_tier(node: MeshdProcess) -> None:
    before = report(node)
    r = node.ctl("cat", "--nocache", "/data/a.bin")
    ok(r)
    assert sha(r.stdout) == sha(payload())
    after = report(node)
    assert after["bytes_by_source"]["nocache"] - before["bytes_by_source"]["nocache"] == SIZE
    assert after["bytes_by_source"]["understore"] == before["bytes_by_source"]["understore"]
    for tier in ("memory", "disk"):
        assert after["tiers"][tier]["pages"] == before["tiers"][tier]["pages"] == 0
    assert after["misses"] == before["misses"]
    # and a normal read afterwards is still a cold read
    ok(node.ctl("cat", "/data/a.bin"))
    cold = report(node)
    assert cold["bytes_by_source"]["understore"] - after["bytes_by_source"]["understore"] == SIZE


# ---------------------------------------------------------------- cp


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_cp_in_and_out(make_backend: Callable[..., Backend], tmp_path: Path, kind: str) -> None:
    b = make_backend(kind)
    node = b.node
    data = payload(SIZE, seed=1)
    src = tmp_path / "local-src.bin"
    src.write_bytes(data)

    # local -> mesh (a file with a known size)
    r = node.ctl("cp", str(src), f"mesh:{b.mesh('in/copied.bin')}")
    ok(r)
    assert b"mesh:/m/in/copied.bin" in r.stderr
    assert sha(b.get("in/copied.bin")) == sha(data)
    assert json.loads(ok(node.ctl("stat", b.mesh("in/copied.bin"))))["size"] == SIZE

    # mesh -> local file, and into a local directory
    out = tmp_path / "out.bin"
    ok(node.ctl("cp", f"mesh:{b.mesh('in/copied.bin')}", str(out)))
    assert sha(out.read_bytes()) == sha(data)
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    ok(node.ctl("cp", f"mesh://{b.mesh('in/copied.bin').lstrip('/')}", str(outdir)))
    assert sha((outdir / "copied.bin").read_bytes()) == sha(data)
    assert sorted(os.listdir(outdir)) == ["copied.bin"]  # no temporary file left behind

    # stdin -> mesh (streamed, size unknown up front), mesh -> stdout
    data2 = payload(SIZE + 4321, seed=2)
    ok(node.ctl("cp", "-", f"mesh:{b.mesh('piped.bin')}", input=data2))
    assert sha(b.get("piped.bin")) == sha(data2)
    r = node.ctl("cp", f"mesh:{b.mesh('piped.bin')}", "-")
    ok(r)
    assert sha(r.stdout) == sha(data2)

    # replace an existing file with shorter content: the old bytes are gone
    ok(node.ctl("cp", "-", f"mesh:{b.mesh('piped.bin')}", input=b"short"))
    assert b.get("piped.bin") == b"short"
    assert node.ctl("cat", b.mesh("piped.bin")).stdout == b"short"

    # an empty file
    ok(node.ctl("cp", "-", f"mesh:{b.mesh('empty.bin')}", input=b""))
    assert b.get("empty.bin") == b""
    empty_out = tmp_path / "empty.out"
    ok(node.ctl("cp", f"mesh:{b.mesh('empty.bin')}", str(empty_out)))
    assert empty_out.read_bytes() == b""


def test_cp_errors(node: MeshdProcess, tmp_path: Path) -> None:
    failed(node.ctl("cp", str(tmp_path / "a"), str(tmp_path / "b")), "InvalidArgument")
    failed(node.ctl("cp", str(tmp_path), "mesh:/data/dir-copy"), "InvalidArgument")
    failed(node.ctl("cp", str(tmp_path / "missing.bin"), "mesh:/data/x.bin"))
    failed(node.ctl("cp", "mesh:/data/missing.bin", str(tmp_path / "x.bin")), "NotFound")
    assert not (tmp_path / "x.bin").exists()
    assert not (tmp_path / "x.bin.meshctl-tmp").exists()
    # a destination directory that does not exist is named as the user gave it
    line = failed(node.ctl("cp", "mesh:/data/small.txt", str(tmp_path / "missing-dir") + "/"))
    assert "meshctl-tmp" not in line and line.endswith(f"{tmp_path / 'missing-dir'}/"), line
    assert "No such file or directory" in line


# ---------------------------------------------------------------- rm / mkdir / mv


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_rm_mkdir(make_backend: Callable[..., Backend], kind: str) -> None:
    b = make_backend(kind)
    node = b.node
    for rel in ("f.txt", "d/one.txt", "d/two.txt", "d/e/three.txt"):
        b.put(rel, rel.encode())

    out = ok(node.ctl("rm", b.mesh("f.txt")))
    assert "1 entry" in out
    assert not b.exists("f.txt")
    failed(node.ctl("stat", b.mesh("f.txt")), "NotFound")

    failed(node.ctl("rm", b.mesh("d")), "DirectoryNotEmpty")
    assert b.exists("d/one.txt") and b.exists("d/e/three.txt")
    assert ok(node.ctl("ls", b.mesh("d"))).split() == ["e/", "one.txt", "two.txt"]

    out = ok(node.ctl("rm", "-r", b.mesh("d")))
    assert "5 entries" in out  # d, d/e and three files
    assert not b.exists("d")
    assert "d/" not in ok(node.ctl("ls", b.root)).split()
    failed(node.ctl("stat", b.mesh("d/one.txt")), "NotFound")

    ok(node.ctl("mkdir", b.mesh("newdir")))
    assert json.loads(ok(node.ctl("stat", b.mesh("newdir"))))["type"] == "directory"
    assert "newdir/" in ok(node.ctl("ls", b.root)).split()
    assert ok(node.ctl("ls", b.mesh("newdir"))) == ""
    ok(node.ctl("mkdir", b.mesh("newdir")))  # idempotent
    out = ok(node.ctl("rm", b.mesh("newdir")))  # empty: no -r needed
    assert "1 entry" in out
    failed(node.ctl("stat", b.mesh("newdir")), "NotFound")

    failed(node.ctl("rm", b.mesh("never-existed")), "NotFound")
    failed(node.ctl("rm", "-r", b.root), "PermissionDenied")  # a mount point
    assert [ln.split()[0] for ln in ok(node.ctl("mount", "ls")).splitlines()] == ["/m"]


def test_rm_drops_cached_pages(node: MeshdProcess, store: Path) -> None:
    ok(node.ctl("cat", "/data/a.bin"))
    assert report(node)["tiers"]["memory"]["pages"] > 0
    ok(node.ctl("rm", "/data/a.bin"))
    assert not (store / "a.bin").exists()
    rep = report(node)
    assert rep["tiers"]["memory"]["pages"] == 0 and rep["tiers"]["disk"]["pages"] == 0
    failed(node.ctl("cat", "/data/a.bin"), "NotFound")


def test_mv_on_file_mount(node: MeshdProcess, store: Path) -> None:
    data = payload()
    ok(node.ctl("cat", "/data/a.bin"))  # cached under the old name
    ok(node.ctl("mv", "/data/a.bin", "/data/sub/renamed.bin"))
    assert not (store / "a.bin").exists()
    assert (store / "sub" / "renamed.bin").read_bytes() == data
    failed(node.ctl("stat", "/data/a.bin"), "NotFound")
    failed(node.ctl("cat", "/data/a.bin"), "NotFound")
    assert node.ctl("cat", "/data/sub/renamed.bin").stdout == data
    assert "a.bin" not in ok(node.ctl("ls", "/data")).split()
    assert "renamed.bin" in ok(node.ctl("ls", "/data/sub")).split()
    # directories too
    ok(node.ctl("mv", "/data/sub", "/data/moved"))
    assert (store / "moved" / "deeper" / "y.txt").read_bytes() == b"y" * 10
    assert ok(node.ctl("ls", "/data")).split() == ["moved/", "small.txt"]
    failed(node.ctl("mv", "/data/nope", "/data/nope2"), "NotFound")


def test_mv_on_s3(make_backend: Callable[..., Backend]) -> None:
    """s3:// renames by copy + delete (the default, mount option rename=copy)."""
    b = make_backend("s3")
    b.put("f.bin", b"content")
    ok(b.node.ctl("mv", b.mesh("f.bin"), b.mesh("g.bin")))
    assert b.get("g.bin") == b"content"
    assert not b.exists("f.bin")


def test_mv_on_s3_refused(make_backend: Callable[..., Backend]) -> None:
    b = make_backend("s3", {"rename": "refuse"})
    b.put("f.bin", b"content")
    line = failed(b.node.ctl("mv", b.mesh("f.bin"), b.mesh("g.bin")), "NotSupported")
    assert "rename" in line
    assert b.get("f.bin") == b"content"
    assert not b.exists("g.bin")


def test_mv_across_mounts_not_supported(node: MeshdProcess, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    ok(node.ctl("mount", "add", "/other", f"file://{other}"))
    failed(node.ctl("mv", "/data/small.txt", "/other/small.txt"), "NotSupported")
    assert not (other / "small.txt").exists()


# ---------------------------------------------------------------- load / free / report


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_load_then_reads_come_from_cache(make_backend: Callable[..., Backend], kind: str) -> None:
    b = make_backend(kind)
    node = b.node
    files = {"set/a.bin": payload(SIZE, seed=3), "set/b.bin": payload(PAGE * 2, seed=4),
             "set/nested/c.txt": b"tiny"}
    for rel, data in files.items():
        b.put(rel, data)
    total = sum(len(d) for d in files.values())
    pages = sum(-(-len(d) // PAGE) for d in files.values())

    out = ok(node.ctl("load", "-q", b.mesh("set")))
    assert f"loaded {len(files)} files" in out
    assert "fetched from the under-store" in out
    rep = report_when(node, lambda r: r["tiers"]["disk"]["pages"] == pages)
    assert rep["tiers"]["disk"]["pages"] == pages
    assert rep["tiers"]["disk"]["used"] == total
    assert rep["tiers"]["memory"]["pages"] == pages
    gets = {rel: b.s3_gets(rel) for rel in files}

    for rel, data in files.items():
        r = node.ctl("cat", b.mesh(rel))
        ok(r)
        assert sha(r.stdout) == sha(data)
    after = report(node)
    src_before, src_after = rep["bytes_by_source"], after["bytes_by_source"]
    served = (src_after["memory"] + src_after["disk"]) - (src_before["memory"] + src_before["disk"])
    assert served == total
    assert src_after["understore"] == src_before["understore"]
    assert after["misses"] == rep["misses"]
    assert after["hits"] - rep["hits"] == pages
    if kind == "s3":  # verified where it counts: at the S3 server
        assert {rel: b.s3_gets(rel) for rel in files} == gets
        assert all(n > 0 for n in gets.values())

    # a second load finds everything cached and fetches nothing
    out = ok(node.ctl("load", "-q", b.mesh("set")))
    assert f"loaded {len(files)} files" in out and "(0 B fetched" in out
    if kind == "s3":
        assert {rel: b.s3_gets(rel) for rel in files} == gets


def test_load_summary(node: MeshdProcess) -> None:
    r = node.ctl("load", "/data")
    out = ok(r)
    assert out.count("\n") == 1
    assert out.startswith("loaded 4 files, 3.0 MiB (3.0 MiB fetched from the under-store")
    # (the progress bar goes to stderr on a terminal only: tqdm's auto-disable)
    r = node.ctl("load", "--quiet", "/data/a.bin")
    assert "loaded 1 file," in ok(r) and r.stderr == b""
    failed(node.ctl("load", "/data/nope"), "NotFound")


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_free_then_next_read_goes_to_understore(make_backend: Callable[..., Backend], kind: str) -> None:
    b = make_backend(kind)
    node = b.node
    data = payload(SIZE, seed=5)
    b.put("f.bin", data)
    b.put("keep.bin", b"k" * 1000)
    ok(node.ctl("load", "-q", b.root))
    ok(node.ctl("cat", b.mesh("keep.bin")))
    gets = b.s3_gets("f.bin")
    out = ok(node.ctl("free", b.mesh("f.bin")))
    assert out.startswith("freed 3.0 MiB")
    rep = report_when(node, lambda r: r["tiers"]["disk"]["pages"] >= 1)
    assert rep["tiers"]["disk"]["pages"] == rep["tiers"]["memory"]["pages"] == 1  # keep.bin's
    r = node.ctl("cat", b.mesh("f.bin"))
    ok(r)
    assert r.stdout == data
    after = report(node)
    assert after["bytes_by_source"]["understore"] - rep["bytes_by_source"]["understore"] == SIZE
    if kind == "s3":
        assert b.s3_gets("f.bin") > gets
    # keep.bin was not freed
    ok(node.ctl("cat", b.mesh("keep.bin")))
    assert report(node)["bytes_by_source"]["understore"] == after["bytes_by_source"]["understore"]

    # free of the whole mount drops everything
    out = ok(node.ctl("free", b.root))
    assert out.startswith("freed ")
    rep = report(node)
    assert rep["tiers"]["disk"]["pages"] == rep["tiers"]["memory"]["pages"] == 0


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_sync_refreshes_metadata_with_sync_interval_never(
        make_backend: Callable[..., Backend], kind: str) -> None:
    b = make_backend(kind, {"sync_interval": "-1"})
    node = b.node
    b.put("dir/a.txt", b"old")
    assert ok(node.ctl("ls", b.mesh("dir"))).split() == ["a.txt"]
    assert json.loads(ok(node.ctl("stat", b.mesh("dir/a.txt"))))["size"] == 3
    assert node.ctl("cat", b.mesh("dir/a.txt")).stdout == b"old"

    # changed behind the mesh's back
    b.put("dir/a.txt", b"new and longer")
    b.put("dir/b.txt", b"bee")
    assert ok(node.ctl("ls", b.mesh("dir"))).split() == ["a.txt"]
    assert json.loads(ok(node.ctl("stat", b.mesh("dir/a.txt"))))["size"] == 3
    assert int(ok(node.ctl("ls", "-l", b.mesh("dir"))).split()[1]) == 3

    out = ok(node.ctl("sync", b.mesh("dir")))
    assert "synced 2 entries" in out
    assert ok(node.ctl("ls", b.mesh("dir"))).split() == ["a.txt", "b.txt"]
    assert json.loads(ok(node.ctl("stat", b.mesh("dir/a.txt"))))["size"] == 14
    assert node.ctl("cat", b.mesh("dir/a.txt")).stdout == b"new and longer"
    assert node.ctl("cat", b.mesh("dir/b.txt")).stdout == b"bee"


def test_report_human(node: MeshdProcess) -> None:
    ok(node.ctl("cat", "/data/a.bin"))
    ok(node.ctl("cat", "/data/a.bin"))
    out = ok(node.ctl("report"))
    assert "hit ratio" in out
    assert "hit ratio 50.0%" in out  # 13 misses, then 13 hits
    assert "page size 256.0 KiB" in out and "1 mount)" in out
    assert "memory" in out and "disk" in out
    rep = report(node)
    assert rep["hits"] == rep["misses"] == -(-SIZE // PAGE)
    assert rep["hit_ratio"] == pytest.approx(0.5)
    assert rep["bytes_from_cache"] == SIZE and rep["bytes_from_understore"] == SIZE
    assert rep["page_size"] == PAGE and rep["mounts"] == 1


# ---------------------------------------------------------------- finding the node


def _run_ctl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*MESHCTL, *args], capture_output=True, env=env, timeout=60)


def test_endpoint_from_env(node: MeshdProcess, tmp_path: Path) -> None:
    env = env_without_endpoint()
    env["MESH_ENDPOINT"] = str(node.data_dir)
    assert ok(_run_ctl(["ls", "/data"], env)).split() == ["a.bin", "small.txt", "sub/"]
    env["MESH_ENDPOINT"] = str(node.data_dir / "endpoints.json")
    assert ok(_run_ctl(["cat", "/data/small.txt"], env)) == "hello mesh\n"
    env["MESH_ENDPOINT"] = node.endpoint
    assert ok(_run_ctl(["stat", "/data/small.txt"], env))
    # --endpoint wins over the environment
    env["MESH_ENDPOINT"] = str(tmp_path / "nothing-here")
    assert ok(_run_ctl(["--endpoint", str(node.data_dir), "ls", "/data"], env)).split()[0] == "a.bin"
    # and with neither, the default data directory ($MESH_DATA_DIR)
    env = env_without_endpoint()
    env["MESH_DATA_DIR"] = str(node.data_dir)
    assert ok(_run_ctl(["ls"], env)).split() == ["data/"]


def test_no_node_running_fails_clearly(tmp_path: Path) -> None:
    empty = tmp_path / "empty-data-dir"
    empty.mkdir()
    env = env_without_endpoint()
    line = failed(_run_ctl(["--endpoint", str(empty), "ls"], env))
    assert "meshd embedded" in line
    env["MESH_ENDPOINT"] = str(empty)
    line = failed(_run_ctl(["report"], env))
    assert "meshd embedded" in line


def test_no_node_at_a_data_dir_that_does_not_exist(tmp_path: Path) -> None:
    """A data directory that was never created (no node started yet) is still a data directory."""
    env = env_without_endpoint()
    missing = tmp_path / "never-created"
    line = failed(_run_ctl(["--endpoint", str(missing), "ls"], env))
    assert "meshd embedded" in line, line
    env["MESH_DATA_DIR"] = str(missing)
    line = failed(_run_ctl(["ls"], env))
    assert "meshd embedded" in line, line


def test_killed_node_fails_clearly(meshd: Callable[..., MeshdProcess], tmp_path: Path) -> None:
    node = meshd()
    assert ok(node.ctl("cat", "/local/hello.txt")).startswith("Hello from the data mesh")
    node.kill()  # leaves a stale endpoints.json behind
    assert (node.data_dir / "endpoints.json").exists()
    t0 = time.monotonic()
    line = failed(_run_ctl(["--endpoint", str(node.data_dir), "ls"], env_without_endpoint()))
    assert time.monotonic() - t0 < 30
    assert "unreachable" in line.lower()


def test_default_mount_serves_hello(meshd: Callable[..., MeshdProcess]) -> None:
    node = meshd()
    assert ok(node.ctl("ls", "/")).split() == ["local/"]
    assert ok(node.ctl("ls", "/local")).split() == ["hello.txt"]
    assert "meshctl report" in ok(node.ctl("cat", "/local/hello.txt"))


def test_second_meshd_on_a_busy_data_dir_leaves_the_first_alone(meshd: Callable[..., MeshdProcess]) -> None:
    """A meshd refused a data directory's lock exits non-zero and removes nothing of the running one's."""
    node = meshd()
    published = (node.data_dir / "endpoints.json").read_text()
    second = subprocess.run([*MESHD, "embedded", "--data-dir", str(node.data_dir)],
                            capture_output=True, timeout=60)
    assert second.returncode != 0
    assert b"another meshd is using data directory" in second.stderr, second.stderr.decode()
    assert b"Traceback" not in second.stderr
    assert (node.data_dir / "endpoints.json").read_text() == published
    assert (node.data_dir / "local.sock").exists()
    env = env_without_endpoint()
    assert ok(_run_ctl(["--endpoint", str(node.data_dir), "ls", "/local"], env)).split() == ["hello.txt"]


# ---------------------------------------------------------------- a new user's first hour


def test_free_of_a_missing_path_is_not_found(node: MeshdProcess) -> None:
    """free says NotFound, as sync and load do, instead of 'freed 0 B'."""
    for cmd in ("free", "sync", "load"):
        failed(node.ctl(cmd, "/data/nope"), "NotFound")
    failed(node.ctl("free", "/nowhere"), "NotFound")
    assert "freed 0 B" in ok(node.ctl("free", "/data/small.txt"))  # exists, nothing cached


def test_mkdir_and_mv_say_what_they_did(node: MeshdProcess, store: Path) -> None:
    assert ok(node.ctl("mkdir", "/data/newdir")).strip() == "created /data/newdir"
    assert (store / "newdir").is_dir()
    assert ok(node.ctl("mv", "/data/newdir", "/data/other")).strip() == "renamed /data/newdir -> /data/other"
    assert (store / "other").is_dir() and not (store / "newdir").exists()


def test_empty_mount_table_says_so(meshd: Callable[..., MeshdProcess]) -> None:
    node = meshd(args=["--no-default-mount"])
    assert ok(node.ctl("mount", "ls")).startswith("no mounts")
    assert json.loads(ok(node.ctl("mount", "ls", "--json"))) == []


@pytest.mark.parametrize(("args", "text"), [
    (["ls", "-h"], "long listing: type"),
    (["cat", "-h"], "first byte to write"),
    (["cat", "-h"], "bytes to write (default: to the end"),
    (["cp", "-h"], "Copy one file into the mesh"),
    (["mount", "add", "-h"], "a mount option (repeatable)"),
    (["free", "-h"], "drop cached pages under PATH"),
    (["cp", "-h"], "--write-back"),
    (["writeback", "flush", "-h"], "exit 1 if --timeout passes first"),
    (["writeback", "status", "-h"], "upload rate per mount"),
])
def test_subcommand_help_describes_it(args: list[str], text: str) -> None:
    out = ok(_run_ctl(args, env_without_endpoint()))
    assert text in " ".join(out.split()), out


def test_topology_show_without_a_file(node: MeshdProcess, tmp_path: Path) -> None:
    """Without FILE, topology show draws the node's topology; an embedded node has none, and says so."""
    r = node.ctl("topology", "show")
    assert r.returncode == 1 and r.stdout == b"" and r.stderr.decode().count("\n") == 1
    assert "has no topology (one region, no links); give a FILE" in r.stderr.decode()
    r = _run_ctl(["--endpoint", str(tmp_path / "no-node"), "topology", "show"], env_without_endpoint())
    line = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in line
    assert line.startswith("meshctl topology show: give a FILE") and "no running node found" in line


def test_topology_show_draws_the_text_a_node_gives(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from topology.cli import cmd_show

    text = (Path(__file__).resolve().parent.parent / "examples" / "topology.yaml").read_text()
    args = argparse.Namespace(file="topology of the node at h:1", text=text, image=None)
    assert cmd_show(args) == 0
    assert "region-a" in capsys.readouterr().out
    assert cmd_show(argparse.Namespace(file=None, image=None)) == 2
    assert "give a FILE" in capsys.readouterr().err


def test_load_progress_uses_the_summary_units() -> None:
    from meshd.cli.meshctl import _load_progress

    text = _load_progress(400_080_000, 800_160_000, 1, 2)
    assert text == "381.5 MiB / 763.1 MiB, 1/2 files"  # tqdm's own would say 381M
    assert _load_progress(0, 10, 0, 1).endswith("0/1 file")


def test_memory_capacity_above_the_ram_is_warned_of(meshd: Callable[..., MeshdProcess]) -> None:
    node = meshd(args=["--memory-capacity", "64TiB"])  # starts: a tier fills lazily
    assert "cache.memory_capacity (--memory-capacity) is 64.0 TiB, more than this machine's" in node.log.read_text()
    small = meshd(args=["--memory-capacity", "16MiB"])
    assert "more than this machine's" not in small.log.read_text()


def test_http_root_is_an_index(node: MeshdProcess) -> None:
    """``GET /`` on the node's HTTP port answers what it serves instead of a 404."""
    import urllib.request

    with urllib.request.urlopen(node.http + "/", timeout=10) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
        index = json.loads(resp.read())
    assert index["service"] == "meshd" and index["endpoints"]["grpc"] == node.endpoint
    assert {"/metrics", "/healthz", "/v1/files/<path>"} <= set(index["paths"])


def test_errors_name_mesh_paths_not_the_store(node: MeshdProcess, store: Path) -> None:
    """A file mount's errors name the path the user gave (/data/...), not file:///<store>/..."""
    for args, kind in ((["cat", "/data/nope.txt"], "NotFound"), (["ls", "/data/small.txt/x"], None),
                       (["rm", "/data/sub"], None), (["mkdir", "/data/small.txt/d"], None)):
        line = failed(node.ctl(*args), kind)
        assert "file://" not in line and str(store) not in line, line
        assert "/data/" in line, line
