"""The ``mesh://`` fsspec filesystem against a real ``meshd embedded`` process.

Bytes are compared with what the under-store (a local directory) holds, and
Parquet files are read and written through pyarrow on top of fsspec, the way
data-loading libraries use the mesh.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from meshd.client.fsspec_mesh import MeshFileSystem
from meshd.client.sdk import MeshClient
from meshd.errors import IsADirectory, VersionChanged
from tests import data as testdata
from tests.etcdproc import EtcdProcess
from tests.meshd_proc import MeshdProcess

PAGE = 256 << 10
SIZE = 2 * (1 << 20) + 777  # a few pages, the last one short


def payload(n: int = SIZE, seed: int = 0) -> bytes:
    return testdata.payload(n, seed)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    d = tmp_path / "store"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(payload())
    (d / "b.txt").write_bytes(b"bee\n")
    (d / "sub" / "c.txt").write_bytes(b"sea")
    return d


@pytest.fixture
def node(meshd: Callable[..., MeshdProcess], store: Path) -> MeshdProcess:
    return meshd(mounts=[f"/data=file://{store}"], args=["--page-size", "256KiB"])


@pytest.fixture
def fs(node: MeshdProcess) -> MeshFileSystem:
    f = fsspec.filesystem("mesh", endpoint=node.endpoint)
    assert isinstance(f, MeshFileSystem)
    return f


def test_registered_protocol() -> None:
    assert fsspec.get_filesystem_class("mesh") is MeshFileSystem


def test_ls_info_exists(fs: MeshFileSystem, store: Path) -> None:
    entries = fs.ls("/data")
    by_name = {e["name"]: e for e in entries}
    assert set(by_name) == {"/data/a.bin", "/data/b.txt", "/data/sub"}
    assert by_name["/data/a.bin"]["type"] == "file" and by_name["/data/a.bin"]["size"] == SIZE
    assert by_name["/data/b.txt"]["size"] == 4
    assert by_name["/data/sub"]["type"] == "directory"
    # every spelling of a path means the same
    for p in ("mesh://data", "mesh:/data", "data", "/data/", "mesh://data/"):
        assert sorted(fs.ls(p, detail=False)) == ["/data/a.bin", "/data/b.txt", "/data/sub"], p
    assert fs.ls("/", detail=False) == ["/data"]
    assert fs.ls("/data/b.txt", detail=False) == ["/data/b.txt"]

    info = fs.info("mesh://data/a.bin")
    assert info["name"] == "/data/a.bin" and info["type"] == "file" and info["size"] == SIZE
    assert info["mtime"] == pytest.approx((store / "a.bin").stat().st_mtime, abs=1e-3)
    assert fs.size("/data/a.bin") == SIZE
    assert fs.info("/data/sub")["type"] == "directory"
    assert fs.modified("/data/b.txt").timestamp() == pytest.approx((store / "b.txt").stat().st_mtime,
                                                                    abs=1e-3)

    assert fs.exists("/data/a.bin") and fs.exists("/data/sub") and fs.exists("/")
    assert fs.isfile("/data/a.bin") and not fs.isdir("/data/a.bin")
    assert fs.isdir("/data/sub") and not fs.isfile("/data/sub")
    assert not fs.exists("/data/nope") and not fs.exists("/nomount/x")

    assert sorted(fs.find("/data")) == ["/data/a.bin", "/data/b.txt", "/data/sub/c.txt"]
    assert sorted(fs.glob("/data/*.bin")) == ["/data/a.bin"]
    assert fs.du("/data") == SIZE + 4 + 3


def test_missing_paths_raise_file_not_found(fs: MeshFileSystem) -> None:
    with pytest.raises(FileNotFoundError):
        fs.info("/data/nope")
    with pytest.raises(FileNotFoundError):
        fs.ls("/data/nope")
    with pytest.raises(FileNotFoundError):
        fs.cat("/data/nope")
    with pytest.raises(FileNotFoundError):
        fs.open("/data/nope", "rb")
    with pytest.raises(FileNotFoundError):
        fs.info("/nomount/x")
    with pytest.raises(FileNotFoundError):
        fs.rm("/data/nope")


def test_cat_and_ranges(fs: MeshFileSystem) -> None:
    data = payload()
    assert fs.cat("mesh://data/a.bin") == data
    assert fs.cat_file("/data/b.txt") == b"bee\n"
    for start, end in [(0, 1), (1, PAGE + 1), (PAGE - 3, PAGE + 3), (0, SIZE), (SIZE - 5, SIZE),
                       (SIZE - 5, SIZE + 100), (SIZE, SIZE + 1), (100, 100), (7, None), (None, 9)]:
        assert fs.cat_file("/data/a.bin", start=start, end=end) == data[start:end], (start, end)
    for start, end in [(-10, None), (-PAGE - 1, -PAGE + 1), (0, -1), (-SIZE - 10, 5)]:
        assert fs.cat_file("/data/a.bin", start=start, end=end) == data[start:end], (start, end)
    assert fs.cat_ranges(["/data/a.bin", "/data/a.bin"], [0, PAGE * 2], [10, PAGE * 2 + 10]) == [
        data[:10], data[PAGE * 2:PAGE * 2 + 10]]
    assert fs.head("/data/a.bin", 100) == data[:100]
    assert fs.tail("/data/a.bin", 100) == data[-100:]
    with pytest.raises(IsADirectoryError):
        fs.cat_file("/data/sub")


def test_open_seek_read(fs: MeshFileSystem, node: MeshdProcess) -> None:
    data = payload()
    with fs.open("/data/a.bin", "rb", block_size=64 << 10) as f:
        assert f.size == SIZE
        assert f.read(10) == data[:10]
        assert f.tell() == 10
        f.seek(PAGE - 5)
        assert f.read(10) == data[PAGE - 5:PAGE + 5]
        f.seek(-20, io.SEEK_END)
        assert f.read() == data[-20:]
        assert f.read(5) == b""
        f.seek(3 * PAGE)
        f.seek(7, io.SEEK_CUR)
        assert f.read(PAGE) == data[3 * PAGE + 7:4 * PAGE + 7]
        f.seek(0)
        assert f.read() == data
    with fsspec.open("mesh://data/a.bin", "rb", endpoint=node.endpoint, cache_type="none") as f:
        f.seek(12345)
        assert f.read(1000) == data[12345:13345]
    with fsspec.open("mesh://data/sub/c.txt", "rt", endpoint=node.endpoint) as f:
        assert f.read() == "sea"


def test_open_directory_for_reading_fails(fs: MeshFileSystem) -> None:
    """Reading a directory is an error (as for a local file), not an empty file."""
    with pytest.raises(IsADirectoryError):
        f = fs.open("/data/sub", "rb")  # at open ...
        f.read()  # ... or at the latest at the first read


def test_write_whole_files(fs: MeshFileSystem, node: MeshdProcess, store: Path) -> None:
    big = payload(6 * (1 << 20) + 3, seed=1)  # larger than the block size: several flushes
    with fs.open("/data/out/big.bin", "wb", block_size=1 << 20) as f:
        for i in range(0, len(big), 300_000):
            f.write(big[i:i + 300_000])
        # whole-file semantics: nothing is visible before close
        assert not (store / "out" / "big.bin").exists()
    assert (store / "out" / "big.bin").read_bytes() == big
    assert fs.info("/data/out/big.bin")["size"] == len(big)
    assert fs.cat("/data/out/big.bin") == big

    fs.pipe_file("/data/piped.bin", b"piped")
    assert (store / "piped.bin").read_bytes() == b"piped"
    fs.pipe("/data/piped.bin", b"replaced, longer")
    assert (store / "piped.bin").read_bytes() == b"replaced, longer"
    assert fs.cat("/data/piped.bin") == b"replaced, longer"

    with fsspec.open("mesh://data/text.txt", "wt", endpoint=node.endpoint) as f:
        f.write("héllo\n")
    assert (store / "text.txt").read_text(encoding="utf-8") == "héllo\n"
    assert fs.read_text("/data/text.txt", encoding="utf-8") == "héllo\n"

    with fs.open("/data/empty.bin", "wb"):
        pass
    assert (store / "empty.bin").read_bytes() == b""
    assert fs.info("/data/empty.bin")["size"] == 0

    # a file that already changed in the cache is rewritten, not served stale
    assert fs.cat("/data/a.bin") == payload()
    fs.pipe_file("/data/a.bin", b"new a")
    assert fs.cat("/data/a.bin") == b"new a"


def test_write_outside_a_mount_fails(fs: MeshFileSystem) -> None:
    f = fs.open("/outside.bin", "wb")
    f.write(b"x")
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno in (errno.EACCES, errno.ENOENT)


@pytest.mark.parametrize("ttl", [0.0, 60.0], ids=["no-metadata-cache", "metadata-cache"])
def test_rm_mkdir_mv(node: MeshdProcess, store: Path, ttl: float) -> None:
    """The filesystem's own changes show at once, whether it keeps metadata (ttl) or not."""
    fs = MeshFileSystem(node.endpoint, ttl=ttl, skip_instance_cache=True)
    assert sorted(fs.ls("/data", detail=False)) == ["/data/a.bin", "/data/b.txt", "/data/sub"]
    assert not fs.exists("/data/newdir")
    fs.mkdir("/data/newdir")
    assert (store / "newdir").is_dir()
    assert fs.isdir("/data/newdir")
    fs.makedirs("/data/newdir", exist_ok=True)
    with pytest.raises(FileExistsError):
        fs.makedirs("/data/newdir")

    fs.rm("/data/b.txt")
    assert not (store / "b.txt").exists()
    assert not fs.exists("/data/b.txt")

    fs.pipe_file("/data/newdir/inside.txt", b"1")
    with pytest.raises(OSError) as e:
        fs.rm("/data/newdir")
    assert e.value.errno == errno.ENOTEMPTY
    assert (store / "newdir" / "inside.txt").exists()
    fs.rm("/data/newdir", recursive=True)
    assert not (store / "newdir").exists()
    assert sorted(fs.ls("/data", detail=False)) == ["/data/a.bin", "/data/sub"]

    assert fs.cat("/data/sub/c.txt") == b"sea" and fs.ls("/data/sub", detail=False) == ["/data/sub/c.txt"]
    fs.mv("/data/sub/c.txt", "/data/moved.txt")
    assert (store / "moved.txt").read_bytes() == b"sea"
    assert not (store / "sub" / "c.txt").exists()
    assert fs.cat("mesh://data/moved.txt") == b"sea"
    assert fs.ls("/data/sub", detail=False) == [] and not fs.exists("/data/sub/c.txt")
    assert fs.info("/data/moved.txt")["size"] == 3
    with fs.open("/data/moved.txt", "wb") as f:
        f.write(b"longer")
    assert fs.info("/data/moved.txt")["size"] == 6


def test_metadata_cache_keeps_statuses_for_its_ttl(node: MeshdProcess, store: Path) -> None:
    """ttl=N: statuses and listings are kept N seconds (a change behind the mesh's back shows
    after that, or after invalidate_cache); opening a file never uses them."""
    fs = MeshFileSystem(node.endpoint, ttl=60.0, skip_instance_cache=True)
    assert fs.info("/data/b.txt")["size"] == 4
    assert sorted(fs.ls("/data", detail=False)) == ["/data/a.bin", "/data/b.txt", "/data/sub"]
    replace_in_store(store, "b.txt", b"longer bee\n")
    (store / "new.txt").write_bytes(b"new")
    assert fs.info("/data/b.txt")["size"] == 4  # kept
    assert "/data/new.txt" not in fs.ls("/data", detail=False)
    with fs.open("/data/b.txt", "rb") as f:  # an open asks the node
        assert f.size == 11 and f.read() == b"longer bee\n"
    fs.invalidate_cache()
    assert fs.info("/data/b.txt")["size"] == 11
    assert "/data/new.txt" in fs.ls("/data", detail=False)
    fresh = MeshFileSystem(node.endpoint, skip_instance_cache=True)  # ttl 0: always asks
    (store / "new.txt").unlink()
    assert not fresh.exists("/data/new.txt") and fs.exists("/data/new.txt")


@pytest.mark.parametrize("policy", ["none", "sequential"])
def test_readahead_policies(node: MeshdProcess, policy: str) -> None:
    """The read-ahead policy of meshd/client/readahead.py, by name: "none" asks for each
    range fsspec asks for; "sequential" has a sequential reader fetch whole pages and the
    page ahead in one request. Random reads are exact ranges either way."""
    data = payload()
    fs = MeshFileSystem(node.endpoint, readahead=policy, skip_instance_cache=True)
    asked: list[tuple[int, int]] = []
    cat = fs.client.cat

    def counting_cat(path: str, offset: int = 0, length: int = -1, **kw: object) -> bytes:
        asked.append((offset, length))
        return cat(path, offset, length, **kw)  # type: ignore[arg-type]

    fs.client.cat = counting_cat  # type: ignore[method-assign]
    with fs.open("/data/a.bin", "rb", block_size=64 << 10, cache_type="none") as f:
        got = bytearray()
        while chunk := f.read(64 << 10):
            got += chunk
        assert got == data
    pages = -(-SIZE // PAGE)
    if policy == "none":
        assert len(asked) == -(-SIZE // (64 << 10))
    else:
        assert len(asked) == -(-pages // 2) and asked[0] == (0, 2 * PAGE), asked
    asked.clear()
    with fs.open("/data/a.bin", "rb", block_size=64 << 10, cache_type="none",
                 readahead="sequential") as f:  # the policy of one open
        for off in (5 * PAGE + 3, PAGE + 9):
            f.seek(off)
            assert f.read(100) == data[off:off + 100]
    assert asked == [(5 * PAGE + 3, 100), (PAGE + 9, 100)]
    with pytest.raises(ValueError, match="unknown read-ahead policy"):
        MeshFileSystem(node.endpoint, readahead="nope", skip_instance_cache=True)


# ---------------------------------------------------------------- a file keeps its version

BLOCK = 1 << 20
OLD = payload(3 * BLOCK, seed=2)  # 12 pages of 256 KiB: a block is 4 of them


def replace_in_store(store: Path, name: str, data: bytes) -> None:
    """Replace a file behind the mesh's back, as a writer does: a new file renamed
    over the old one (a new inode: a new version even within one mtime tick)."""
    tmp = store / (name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, store / name)


def old_or_stale(read: Callable[[], bytes], old: bytes) -> None:
    """A pinned read of a replaced file: the old bytes (still cached at that version)
    or VersionChanged, nothing else."""
    try:
        got = read()
    except VersionChanged:
        return
    assert got == old


@pytest.fixture(params=["short-circuit", "http"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The client reads through the node's local socket, or over HTTP."""
    monkeypatch.setenv("MESH_SHORT_CIRCUIT", "1" if request.param == "short-circuit" else "0")
    return str(request.param)


@pytest.mark.parametrize("cache_type,readahead", [("none", "none"), ("readahead", "none"),
                                                  ("none", "sequential")])
@pytest.mark.parametrize("new", [payload(3 * BLOCK, seed=3), payload(BLOCK + 5, seed=4),
                                 payload(5 * BLOCK, seed=5)], ids=["same-size", "shorter", "longer"])
@pytest.mark.parametrize("how", ["under-store", "put"])
def test_an_open_file_is_read_at_its_version_or_fails_with_estale(
        transport: str, node: MeshdProcess, store: Path, how: str, new: bytes, cache_type: str,
        readahead: str) -> None:
    """Read a block, replace the file, read on: the old bytes or ESTALE, never a mix (whatever
    fsspec's cache and the read-ahead policy keep of the old version)."""
    (store / "v.bin").write_bytes(OLD)
    fs = MeshFileSystem(node.endpoint, readahead=readahead, skip_instance_cache=True)
    with fs.open("/data/v.bin", "rb", block_size=BLOCK, cache_type=cache_type) as f:
        assert f.size == len(OLD)
        assert f.read(BLOCK) == OLD[:BLOCK]
        if how == "put":
            with MeshClient(node.endpoint) as c:
                c.put("/data/v.bin", new)
        else:
            replace_in_store(store, "v.bin", new)
        assert f.size == len(OLD)  # the size it was opened with
        # pages 4.. were never fetched (the first read fetched pages 0-3, and the node
        # reads ahead only for a reader already proven sequential): the node goes back
        # to the under-store for them, pinned to the version the file was opened at
        rest = bytearray()
        try:
            while chunk := f.read(BLOCK):
                rest += chunk
        except OSError as e:
            assert e.errno == errno.ESTALE, e
            assert rest == OLD[BLOCK:BLOCK + len(rest)]  # what came before the error is old
        else:
            assert rest == OLD[BLOCK:]
    with fs.open("/data/v.bin", "rb", block_size=BLOCK, cache_type=cache_type) as f:
        assert f.size == len(new) and f.read() == new  # opened again: the new version
    assert fs.cat("/data/v.bin") == new


def test_a_file_replaced_before_its_first_read_fails_with_estale(transport: str, fs: MeshFileSystem,
                                                                 store: Path) -> None:
    """Nothing of the opened version is cached: the first read already finds it gone."""
    (store / "w.bin").write_bytes(OLD)
    with fs.open("/data/w.bin", "rb", block_size=BLOCK, cache_type="none") as f:
        replace_in_store(store, "w.bin", payload(len(OLD), seed=6))
        with pytest.raises(OSError) as e:
            f.read(BLOCK)
        assert e.value.errno == errno.ESTALE


def test_pinned_client_reads(transport: str, node: MeshdProcess, store: Path) -> None:
    """MeshClient.open gives a status; reads pinned to it serve that version or raise
    VersionChanged; reads without a pin see the new version (no over-pinning)."""
    (store / "v.bin").write_bytes(OLD)
    new = payload(2 * BLOCK + 1, seed=7)
    with MeshClient(node.endpoint) as c:
        pin = c.open("/data/v.bin")
        assert (pin.size, pin.is_dir) == (len(OLD), False) and pin.version == c.stat("/data/v.bin").version
        assert c.cat("/data/v.bin", 0, BLOCK, pin=pin) == OLD[:BLOCK]
        assert c.cat("/data/v.bin", BLOCK - 10, 20, pin=pin) == OLD[BLOCK - 10:BLOCK + 10]
        replace_in_store(store, "v.bin", new)
        old_or_stale(lambda: c.cat("/data/v.bin", 0, BLOCK, pin=pin), OLD[:BLOCK])  # cached pages
        with pytest.raises(VersionChanged):
            c.cat("/data/v.bin", BLOCK, BLOCK, pin=pin)
        with pytest.raises(VersionChanged):
            c.cat("/data/v.bin", pin=pin)
        with pytest.raises(VersionChanged):
            b"".join(c.iter_read("/data/v.bin", BLOCK, pin=pin))
        buf = bytearray(100_000)
        with pytest.raises(VersionChanged):
            for _ in c.read_chunks_into("/data/v.bin", buf, 2 * BLOCK, pin=pin):
                pass
        assert c.cat("/data/v.bin") == new
        assert b"".join(c.iter_read("/data/v.bin", BLOCK)) == new[BLOCK:]
        pin2 = c.open("/data/v.bin")
        assert pin2.size == len(new) and pin2.version != pin.version
        assert c.cat("/data/v.bin", pin=pin2) == new
        assert c.cat("/data/v.bin", BLOCK, -1, pin=pin2) == new[BLOCK:]
        with pytest.raises(IsADirectory):
            c.cat("/data/sub", pin=c.open("/data/sub"))


def test_pinned_reads_across_owners(cluster: Callable[..., list[MeshdProcess]], etcd: EtcdProcess,
                                    tmp_path: Path) -> None:
    """In a cluster the pin goes with every run of pages to each page's owner."""
    store = tmp_path / "cstore"
    store.mkdir()
    (store / "v.bin").write_bytes(OLD)
    nodes = cluster(3, etcd, ["--page-size", "256KiB"])
    nodes[0].ctl("mount", "add", "/data", f"file://{store}", check=True)
    new = payload(len(OLD), seed=8)
    with MeshClient(nodes[0].endpoint) as c:
        assert len(c.members) == 3
        pin = c.open("/data/v.bin")
        assert c.cat("/data/v.bin", 0, BLOCK, pin=pin) == OLD[:BLOCK]
        replace_in_store(store, "v.bin", new)
        with pytest.raises(VersionChanged):
            c.cat("/data/v.bin", BLOCK, pin=pin)
        with pytest.raises(VersionChanged):
            b"".join(c.iter_read("/data/v.bin", BLOCK, pin=pin))
        old_or_stale(lambda: c.cat("/data/v.bin", 0, BLOCK, pin=pin), OLD[:BLOCK])
        assert c.cat("/data/v.bin") == new
    (store / "w.bin").write_bytes(OLD)  # none of its pages cached yet
    fs = MeshFileSystem(nodes[1].endpoint, skip_instance_cache=True)
    with fs.open("/data/w.bin", "rb", block_size=BLOCK, cache_type="none") as f:
        assert f.read(BLOCK) == OLD[:BLOCK]
        replace_in_store(store, "w.bin", new)
        try:
            second = f.read(BLOCK)
        except OSError as e:
            assert e.errno == errno.ESTALE, e
        else:
            assert second == OLD[BLOCK:2 * BLOCK]
    assert fs.cat("/data/w.bin") == new


# ---------------------------------------------------------------- Parquet


def test_parquet_read_and_write(fs: MeshFileSystem, store: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    n = 50_000
    table = pa.table({
        "id": pa.array(range(n), type=pa.int64()),
        "value": pa.array([i * 0.5 for i in range(n)], type=pa.float64()),
        "name": pa.array([f"row-{i}" for i in range(n)]),
    })
    # written locally into the under-store, read through the mesh
    pq.write_table(table, store / "local.parquet", row_group_size=10_000)
    assert (store / "local.parquet").stat().st_size > PAGE  # spans several pages

    got = pq.read_table("data/local.parquet", filesystem=fs)
    assert got.equals(table)
    got = pq.read_table("data/local.parquet", filesystem=fs, columns=["id"])
    assert got.column("id").equals(table.column("id"))
    pf = pq.ParquetFile(fs.open("/data/local.parquet", "rb"))
    assert pf.metadata.num_rows == n and pf.metadata.num_row_groups == 5
    assert pf.read_row_group(3).equals(table.slice(30_000, 10_000))

    arrow_fs = PyFileSystem(FSSpecHandler(fs))
    assert pq.read_table("/data/local.parquet", filesystem=arrow_fs).equals(table)

    # written through the mesh, read back locally and through the mesh
    pq.write_table(table, "/data/written/out.parquet", filesystem=arrow_fs)
    assert pq.read_table(store / "written" / "out.parquet").equals(table)
    with fs.open("/data/written/out2.parquet", "wb") as f:
        pq.write_table(table.slice(0, 1000), f)
    assert pq.read_table(store / "written" / "out2.parquet").equals(table.slice(0, 1000))
    assert pq.read_table("/data/written", filesystem=arrow_fs).num_rows == n + 1000


def test_pandas_reads_and_writes_mesh_urls(fs: MeshFileSystem, node: MeshdProcess, store: Path) -> None:
    import pandas as pd
    df = pd.DataFrame({"a": list(range(100)), "b": [str(i) for i in range(100)]})
    df.to_parquet("mesh://data/df.parquet", storage_options={"endpoint": node.endpoint})
    assert (store / "df.parquet").exists()
    back = pd.read_parquet("mesh://data/df.parquet", storage_options={"endpoint": node.endpoint})
    pd.testing.assert_frame_equal(back, df)
    df.to_csv("mesh://data/df.csv", index=False, storage_options={"endpoint": node.endpoint})
    assert pd.read_csv(store / "df.csv").equals(df.astype({"b": "int64"}))


def test_no_node_tells_python_users_how_to_name_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Python user has no --endpoint flag: the error names endpoint= and $MESH_ENDPOINT."""
    monkeypatch.delenv("MESH_ENDPOINT", raising=False)
    fs = MeshFileSystem(endpoint=str(tmp_path / "no-node"), skip_instance_cache=True)
    with pytest.raises(OSError, match="no running node found") as e:
        fs.ls("/")
    assert "endpoint=" in str(e.value) and "$MESH_ENDPOINT" in str(e.value)


# ---- copy, exclusive create, append, attributes (issue 22) -------------------------


@pytest.mark.parametrize("ttl", [0.0, 60.0], ids=["no-metadata-cache", "metadata-cache"])
def test_copy_on_the_node(node: MeshdProcess, store: Path, ttl: float) -> None:
    fs = MeshFileSystem(node.endpoint, ttl=ttl, skip_instance_cache=True)
    assert not fs.exists("/data/copies/a.bin")  # kept as absent with a ttl: the copy must drop it
    fs.cp_file("/data/a.bin", "/data/copies/a.bin")
    assert (store / "copies" / "a.bin").read_bytes() == payload()
    assert fs.info("/data/copies/a.bin")["size"] == SIZE and fs.cat("/data/copies/a.bin") == payload()
    # over an existing file: replaced
    fs.copy("mesh://data/b.txt", "mesh://data/copies/a.bin")
    assert (store / "copies" / "a.bin").read_bytes() == b"bee\n" and fs.cat("/data/copies/a.bin") == b"bee\n"

    # a tree, through fsspec's own recursion (empty directories too), and to a depth
    (store / "sub" / "empty").mkdir()
    (store / "sub" / "deeper").mkdir()
    (store / "sub" / "deeper" / "d.txt").write_bytes(b"dee")
    fs.copy("/data/sub", "/data/sub2", recursive=True)
    assert (store / "sub2" / "c.txt").read_bytes() == b"sea"
    assert (store / "sub2" / "deeper" / "d.txt").read_bytes() == b"dee"
    assert (store / "sub2" / "empty").is_dir()
    assert sorted(fs.find("/data/sub2", withdirs=True)) == [
        "/data/sub2", "/data/sub2/c.txt", "/data/sub2/deeper", "/data/sub2/deeper/d.txt", "/data/sub2/empty"]
    # to a depth: what fsspec's LocalFileSystem makes of the same tree
    (store / "sub" / "deeper" / "deepest").mkdir()
    (store / "sub" / "deeper" / "deepest" / "e.txt").write_bytes(b"e")
    local = LocalFileSystem(auto_mkdir=True)
    local.copy(str(store / "sub"), str(store / "local3"), recursive=True, maxdepth=2)
    fs.copy("/data/sub", "/data/sub3", recursive=True, maxdepth=2)
    assert sorted(p.removeprefix("/data/sub3") for p in fs.find("/data/sub3", withdirs=True)) == sorted(
        p.removeprefix(str(store / "local3")) for p in local.find(str(store / "local3"), withdirs=True))
    assert (store / "sub3" / "deeper" / "d.txt").read_bytes() == b"dee"
    assert not (store / "sub3" / "deeper" / "deepest").exists()

    # the source is untouched, errors in Python's terms, nothing half-made
    assert (store / "a.bin").read_bytes() == payload() and (store / "sub" / "c.txt").read_bytes() == b"sea"
    with pytest.raises(FileNotFoundError):
        fs.cp_file("/data/nope", "/data/copies/nope")
    assert not (store / "copies" / "nope").exists()
    with pytest.raises(FileNotFoundError):
        fs.copy("/data/nope", "/data/copies/nope")
    with pytest.raises(IsADirectoryError):
        fs.cp_file("/data/b.txt", "/data/sub")  # a file cannot replace a directory
    assert (store / "sub").is_dir()
    with pytest.raises(OSError) as e:
        fs.cp_file("/data/b.txt", "/outside.txt")
    assert e.value.errno in (errno.EACCES, errno.ENOENT)
    with pytest.raises(FileNotFoundError):
        fs.copy("/data/nope", "/data/copies/nope", recursive=True)
    assert not (store / "copies" / "nope").exists()


def test_exclusive_create(fs: MeshFileSystem, store: Path, tmp_path: Path) -> None:
    with fs.open("/data/new/x.bin", "xb") as f:
        f.write(b"first")
    assert (store / "new" / "x.bin").read_bytes() == b"first"
    # taken: FileExistsError at open already, and the file is left as it was
    for path in ("/data/new/x.bin", "/data/b.txt", "/data/sub"):
        with pytest.raises(FileExistsError):
            fs.open(path, "xb")
    with pytest.raises(FileExistsError):
        fs.open("/data/b.txt", "x")  # text mode too
    assert (store / "b.txt").read_bytes() == b"bee\n"

    # two creators that both opened before either committed: the second loses at close
    f1, f2 = fs.open("/data/race.bin", "xb"), fs.open("/data/race.bin", "xb")
    f1.write(b"winner")
    f2.write(b"loser, never written")
    f1.close()
    with pytest.raises(FileExistsError):
        f2.close()
    assert (store / "race.bin").read_bytes() == b"winner" and fs.cat("/data/race.bin") == b"winner"
    assert [p.name for p in store.iterdir() if p.name.startswith(".mesh-tmp")] == []

    fs.pipe_file("/data/piped.bin", b"one", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file("/data/piped.bin", b"two", mode="create")
    assert (store / "piped.bin").read_bytes() == b"one"
    fs.pipe_file("/data/piped.bin", b"three", mode="overwrite")
    assert (store / "piped.bin").read_bytes() == b"three"
    with pytest.raises(ValueError, match="mode"):
        fs.pipe_file("/data/piped.bin", b"four", mode="append")
    assert (store / "piped.bin").read_bytes() == b"three"

    local = tmp_path / "local.bin"
    local.write_bytes(payload(3 << 20, seed=5))
    fs.put_file(str(local), "/data/put.bin", mode="create")
    assert (store / "put.bin").read_bytes() == local.read_bytes()
    local.write_bytes(b"other")
    with pytest.raises(FileExistsError):
        fs.put_file(str(local), "/data/put.bin", mode="create")
    assert (store / "put.bin").read_bytes() == payload(3 << 20, seed=5)
    with pytest.raises(FileExistsError):
        fs.put(str(local), "/data/put.bin", mode="create")  # through fsspec's put
    with pytest.raises(FileExistsError):
        fs.pipe({"/data/piped.bin": b"x"}, mode="create")
    assert (store / "put.bin").read_bytes() == payload(3 << 20, seed=5)
    assert (store / "piped.bin").read_bytes() == b"three"
    fs.put_file(str(local), "/data/put.bin")
    assert (store / "put.bin").read_bytes() == b"other"


def test_append_keeps_the_bytes_it_opened(fs: MeshFileSystem, store: Path) -> None:
    with fs.open("/data/b.txt", "ab") as f:
        assert f.tell() == 4
        f.write(b"hive\n")
    assert (store / "b.txt").read_bytes() == b"bee\nhive\n"
    with fs.open("/data/fresh.txt", "ab") as f:  # a new file
        f.write(b"x")
    assert (store / "fresh.txt").read_bytes() == b"x"
    (store / "empty.txt").write_bytes(b"")
    with fs.open("/data/empty.txt", "ab") as f:
        f.write(b"y")
    assert (store / "empty.txt").read_bytes() == b"y"
    with pytest.raises(IsADirectoryError):
        fs.open("/data/sub", "ab")
    # changed by someone else after the open: ESTALE, not their bytes lost
    f = fs.open("/data/b.txt", "ab")
    f.write(b"late")
    replace_in_store(store, "b.txt", b"someone else's")
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.ESTALE
    assert (store / "b.txt").read_bytes() == b"someone else's"


def test_info_shows_the_stores_attributes(fs: MeshFileSystem, store: Path) -> None:
    """A file:// store's attributes show under LocalFileSystem's names; links and special
    files as what they are. (Needs the file:// store that keeps attributes, issue 22.)"""
    os.chmod(store / "b.txt", 0o640)
    (store / "link").symlink_to("b.txt")
    (store / "dangling").symlink_to("nothing")
    os.mkfifo(store / "fifo")
    local = LocalFileSystem()
    for name in ("b.txt", "sub"):
        got, want = fs.info(f"/data/{name}"), local.info(str(store / name))
        for key in ("type", "mode", "uid", "gid", "ino", "nlink", "islink"):
            assert got[key] == want[key], (name, key)
        assert got["mtime"] == pytest.approx(want["mtime"], abs=1e-3)
        assert got["created"] == pytest.approx(want["created"], abs=1e-3)  # ctime
    assert stat.S_IMODE(fs.info("/data/b.txt")["mode"]) == 0o640

    ln = fs.info("/data/link")  # size and type of what it names, mode and owner of the link
    lst = os.lstat(store / "link")
    assert (ln["type"], ln["size"], ln["islink"], ln["destination"]) == ("file", 4, True, "b.txt")
    assert ln["mode"] == lst.st_mode and stat.S_ISLNK(ln["mode"]) and ln["ino"] == lst.st_ino
    assert fs.cat("/data/link") == b"bee\n"
    dangling = fs.info("/data/dangling")
    assert (dangling["type"], dangling["islink"], dangling["destination"]) == ("other", True, "nothing")
    with pytest.raises(FileNotFoundError):
        fs.cat("/data/dangling")
    fifo = fs.info("/data/fifo")
    assert fifo["type"] == "other" and stat.S_ISFIFO(fifo["mode"]) and not fifo["islink"]


@pytest.mark.parametrize("ttl", [0.0, 60.0], ids=["no-metadata-cache", "metadata-cache"])
def test_chmod_chown_touch_mkdir_mode(node: MeshdProcess, store: Path, ttl: float) -> None:
    """(Needs the file:// store that keeps attributes, issue 22.)"""
    fs = MeshFileSystem(node.endpoint, ttl=ttl, skip_instance_cache=True)
    assert stat.S_IMODE(fs.info("/data/b.txt")["mode"]) == 0o644 & ~_umask()
    fs.chmod("/data/b.txt", 0o600)
    assert stat.S_IMODE(os.stat(store / "b.txt").st_mode) == 0o600
    assert stat.S_IMODE(fs.info("/data/b.txt")["mode"]) == 0o600  # the cached status was dropped
    fs.chmod("/data/sub", stat.S_IFDIR | 0o750)  # a whole st_mode: its permission bits
    assert stat.S_IMODE(os.stat(store / "sub").st_mode) == 0o750
    with pytest.raises(FileNotFoundError):
        fs.chmod("/data/nope", 0o600)
    fs.chown("/data/b.txt", uid=os.getuid(), gid=os.getgid())
    assert (fs.info("/data/b.txt")["uid"], fs.info("/data/b.txt")["gid"]) == (os.getuid(), os.getgid())

    # a copy keeps the mode (the node copies with the attributes)
    fs.cp_file("/data/b.txt", "/data/b-copy.txt")
    assert stat.S_IMODE(os.stat(store / "b-copy.txt").st_mode) == 0o600

    # touch without truncate: mtime (and atime) to now, the bytes kept
    os.utime(store / "b.txt", (1_000_000_000, 1_000_000_000))
    fs.invalidate_cache()
    assert fs.info("/data/b.txt")["mtime"] == 1_000_000_000
    fs.touch("/data/b.txt", truncate=False)
    st = os.stat(store / "b.txt")
    assert st.st_mtime > 1_000_000_000 and st.st_atime > 1_000_000_000
    assert fs.info("/data/b.txt")["mtime"] == pytest.approx(st.st_mtime, abs=1e-3)
    assert (store / "b.txt").read_bytes() == b"bee\n"
    fs.touch("/data/new-empty", truncate=False)  # missing: made, empty
    assert (store / "new-empty").read_bytes() == b""
    fs.touch("/data/b.txt")  # truncate (the default): empty
    assert (store / "b.txt").read_bytes() == b"" and fs.info("/data/b.txt")["size"] == 0

    fs.mkdir("/data/private/inner", mode=0o700)
    assert stat.S_IMODE(os.stat(store / "private" / "inner").st_mode) == 0o700
    assert stat.S_IMODE(fs.info("/data/private/inner")["mode"]) == 0o700


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old
