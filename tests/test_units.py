"""Unit tests of small pieces, with in-memory doubles."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from meshd import paths
from meshd.cache.pages import MemoryTier, PageKey
from meshd.cache.readahead import ReadAhead
from meshd.config import from_dict, parse_mount_flag, parse_size
from meshd.errors import InvalidArgument, InvalidPath, MountError
from meshd.metadata.kv import MemoryKV, RocksKV
from meshd.metadata.mounts import MountTable, validate
from meshd.secrets import SecretsKey


@pytest.mark.parametrize("bad", ["", "/a/../b", "/a/./b", "/a\x00b", "/" + "x" * 256, "/a/" + "b/" * 2600])
def test_bad_paths_are_refused(bad: str) -> None:
    with pytest.raises(InvalidPath):
        paths.normalize(bad)


def test_paths_normalise() -> None:
    assert paths.normalize("a//b/") == "/a/b"
    assert paths.normalize("/") == "/"
    assert paths.is_within("/a/b", "/a") and not paths.is_within("/ab", "/a")


async def test_mount_table_refuses_overlap_and_malformed(tmp_path: object) -> None:
    t = MountTable(MemoryKV())
    await t.add("/data", f"file://{tmp_path}", {})
    for path, uri in [("/data/sub", f"file://{tmp_path}"), ("/", f"file://{tmp_path}")]:
        with pytest.raises(MountError, match="overlaps"):
            await t.add(path, uri, {})
    for uri in ["ftp://x", "no-scheme", "file://host/x", "file://relative"]:
        with pytest.raises(MountError):
            await t.add("/other", uri, {}, check=False)
    with pytest.raises(MountError, match="already mounted"):
        await t.add("/data", f"file://{tmp_path}", {})
    with pytest.raises(MountError, match="sync_interval"):
        await t.add("/x", f"file://{tmp_path}", {"sync_interval": "soon"})
    with pytest.raises(MountError, match="does not exist"):
        await t.add("/y", "file:///definitely/not/here", {})
    assert t.resolve("/data/a/b") == (t.entries()[0], "a/b")
    assert t.resolve("/datab") is None
    await t.close()


async def test_mount_table_persists_and_redacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kv = MemoryKV()
    key = SecretsKey(os.urandom(32), "test")
    t = MountTable(kv, key=key)
    await t.add("/s", "s3://bucket/p", {"access_key": "a", "secret_key": "hunter2", "region": "x"}, check=False)
    assert b"hunter2" not in b"".join(v for _, v in kv.scan(b""))
    again = MountTable(kv, key=key)
    (m,) = again.entries()
    assert m.uri == "s3://bucket/p" and m.options["secret_key"].startswith("enc:v1:")
    assert m.redacted_options() == {"access_key": "***", "secret_key": "***", "region": "x"}
    await t.remove("/s")
    assert MountTable(kv).entries() == []
    # without a key (a cluster node without cluster.secrets_key_file), an inline secret is
    # refused, naming both ways that work; references are taken
    bare = MountTable(MemoryKV())
    with pytest.raises(MountError, match="secret_key_file=/path or secret_key_env=VARIABLE"):
        await bare.add("/s", "s3://bucket/p", {"secret_key": "hunter2", "access_key_env": "AK"}, check=False)
    with pytest.raises(MountError, match="cannot read secret_key_file /nonexistent/k: No such file"):
        await bare.add("/s", "s3://bucket/p", {"secret_key_file": "/nonexistent/k", "access_key_env": "AK"},
                       check=False)
    (tmp_path / "k").write_text("hunter2\n")
    with pytest.raises(MountError, match="access_key_env names AK, which is not set"):
        await bare.add("/s", "s3://bucket/p", {"secret_key_file": str(tmp_path / "k"), "access_key_env": "AK"},
                       check=False)
    monkeypatch.setenv("AK", "a")
    m = await bare.add("/s", "s3://bucket/p", {"secret_key_file": str(tmp_path / "k"), "access_key_env": "AK"},
                       check=False)
    assert m.redacted_options() == {"secret_key_file": str(tmp_path / "k"), "access_key_env": "AK"}
    assert bare.store(m).options["secret_key"] == "hunter2" and bare.store(m).options["access_key"] == "a"
    await bare.close()
    with pytest.raises(MountError, match="both give secret_key"):
        validate("/s", "s3://b", {"secret_key": "x", "secret_key_env": "S"})
    with pytest.raises(MountError, match="unknown file mount option 'secret_key_file'"):
        validate("/s", "file:///tmp", {"secret_key_file": "/k"})  # file:// takes no secrets


async def test_clear_secrets_of_an_older_version_are_sealed_on_load(tmp_path: Path) -> None:
    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in (tmp_path / "meta").iterdir())

    kv = RocksKV(str(tmp_path / "meta"))
    old = {"path": "/s", "uri": "s3://b", "options": {"access_key": "AKOLD", "secret_key": "hunter2"}}
    kv.put(b"m:/s", json.dumps(old).encode())
    for i in range(100):
        kv.put(b"s:/%d" % i, b"x" * 100)
    kv.close()
    kv = RocksKV(str(tmp_path / "meta"))
    kv.purge(b"m:")  # the old version's entry now in an SST file, as after a long run
    assert b"hunter2" in on_disk()
    key = SecretsKey(os.urandom(32), "test")
    t = MountTable(kv, key=key)
    assert b"hunter2" not in b"".join(v for _, v in kv.scan(b"")) and b"AKOLD" not in (kv.get(b"m:/s") or b"")
    kv.close()
    assert b"hunter2" not in on_disk() and b"AKOLD" not in on_disk()  # SST, WAL, LOG, MANIFEST
    kv = RocksKV(str(tmp_path / "meta"))
    t = MountTable(kv, key=key)
    (m,) = t.entries()
    assert t.store(m).options["secret_key"] == "hunter2"  # the store opens with the value
    other = SecretsKey(os.urandom(32), "another")
    with pytest.raises(MountError, match=f"encrypted with the secrets key {key.id}, this node's is {other.id}"):
        MountTable(kv, key=other).store(m)
    await t.close()
    kv.close()


def test_memory_tier_lru_between_watermarks() -> None:
    tier = MemoryTier(capacity=100, high=0.9, low=0.5)
    for i in range(9):
        tier.put(PageKey("f", "v", i), b"x" * 10)
    assert tier.stats.used == 90  # at the high watermark, nothing evicted yet
    assert tier.get(PageKey("f", "v", 0)) is not None  # 0 is now most recent
    tier.put(PageKey("f", "v", 9), b"x" * 10)  # 100 > 90: evict down to <= 50
    assert tier.stats.used == 50
    assert tier.get(PageKey("f", "v", 0)) is not None
    assert tier.get(PageKey("f", "v", 1)) is None  # least recently used went first
    assert tier.stats.evicted_pages == 5


def test_readahead_window_grows_only_for_sequential_readers() -> None:
    ra = ReadAhead(page_size=100, min_pages=2, max_pages=8)
    assert ra.on_read("s", 0, 100) == 0
    assert ra.on_read("s", 100, 200) == 2
    assert ra.on_read("s", 200, 300) == 4
    assert ra.on_read("s", 300, 400) == 8
    assert ra.on_read("s", 400, 500) == 8
    assert ra.on_read("s", 5000, 5100) == 0  # a jump resets
    assert ra.on_read("r", 0, 100) == 0


def test_config_sizes_and_unknown_keys() -> None:
    assert parse_size("4MiB") == 4 << 20 and parse_size("1g") == 1 << 30 and parse_size(12) == 12
    with pytest.raises(InvalidArgument):
        parse_size("lots")
    cfg = from_dict({"cache": {"page_size": "2MiB"}, "mounts": [{"path": "/a", "uri": "file:///x"}]})
    assert cfg.cache.page_size == 2 << 20 and cfg.mounts[0].path == "/a"
    with pytest.raises(InvalidArgument, match="pagesize"):
        from_dict({"cache": {"pagesize": 1}})
    m = parse_mount_flag("/s=s3://b/p,endpoint=http://h:1,region=r")
    assert (m.path, m.uri, m.options) == ("/s", "s3://b/p", {"endpoint": "http://h:1", "region": "r"})
    with pytest.raises(InvalidArgument):
        parse_mount_flag("nouri")


def test_page_keys_name_the_endpoint_not_only_the_bucket() -> None:
    from meshd.cache.pages import file_id
    from meshd.metadata.mounts import Mount

    a = Mount("/a", "s3://bucket", {"endpoint": "http://dc1:9000"})
    b = Mount("/b", "s3://bucket", {"endpoint": "http://dc2:9000"})
    c = Mount("/c", "s3://bucket", {"endpoint": "http://dc1:9000", "region": "x"})
    assert file_id(a.identity, "k") != file_id(b.identity, "k")
    assert file_id(a.identity, "k") == file_id(c.identity, "k")  # same data, same pages


@pytest.mark.parametrize("flags, named", [
    (["--s3-access-key", "AK", "--s3-secret-key", ""], "--s3-secret-key"),
    (["--s3-access-key", " ", "--s3-secret-key", "SK"], "--s3-access-key"),
])
def test_empty_s3_key_flag_is_refused(flags: list[str], named: str) -> None:
    """``--s3-secret-key "$SECRET"`` with SECRET unset must not start a gateway whose secret is empty."""
    from meshd.cli.meshd import _parser, build_config

    with pytest.raises(InvalidArgument, match=f"{named} is empty"):
        build_config(_parser().parse_args(["embedded", *flags]))
    cfg = build_config(_parser().parse_args(["embedded", "--s3-access-key", "AK", "--s3-secret-key", "SK"]))
    assert cfg.s3.access_keys == {"AK": "SK"}


def test_empty_s3_secret_in_config_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="empty access key or secret key"):
        from_dict({"s3": {"access_keys": {"AK": ""}}})


def test_missing_s3_credentials_name_the_options_and_environment() -> None:
    from botocore.exceptions import NoCredentialsError

    from meshd.understore.s3 import translate_error

    message = str(translate_error(NoCredentialsError(), "/mnt/key"))
    assert "no usable S3 credentials" in message
    for name in ("access_key=", "secret_key=", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert name in message, message


def test_member_usage_keeps_the_tiers_apart() -> None:
    """A page in memory is on disk too: USED is the disk tier's, against the disk capacity."""
    from meshd.cli.meshctl import _member_line
    from meshd.core.admin import member_usage

    gib = 1 << 30
    tiers = {"memory": {"used": 3 * gib, "capacity": 4 * gib, "pages": 3},
             "disk": {"used": 10 * gib, "capacity": 10 * gib, "pages": 10}}
    row = member_usage(tiers)
    assert row["used"] == row["disk_used"] == 10 * gib  # not 13 GiB of a 10 GiB capacity
    assert row["memory_used"] == 3 * gib and row["memory_capacity"] == 4 * gib
    assert row["disk_capacity"] == 10 * gib and row["disk_pages"] == 10 and row["memory_pages"] == 3
    line = _member_line({"node_id": "n1", "state": "up", "zone": "", "grpc": "h:1", "capacity": 10 * gib,
                         "hit_ratio": 0.5, **row})
    assert "10.0 GiB" in line and "3.0 GiB" in line and "13.0 GiB" not in line
    old = _member_line({"node_id": "n1", "state": "up", "zone": "", "grpc": "h:1", "capacity": gib})
    assert old.split()[4:] == ["-", "1.0", "GiB", "-", "-"]


def test_internal_errors_are_logged_without_a_flood(caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A client repeating one request that hits a bug: one traceback a minute, a few lines a
    second, and the lines left out are counted in the next one."""
    import logging

    from meshd import errors as errors_mod

    clock = [1000.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])
    monkeypatch.setattr(errors_mod, "_INTERNAL", errors_mod._InternalErrors())
    logger = logging.getLogger("test.internal")

    def fail() -> BaseException:
        try:
            raise KeyError("boom")
        except KeyError as e:
            return e

    caplog.set_level(logging.ERROR, logger="test.internal")
    for _ in range(1000):  # one second of a hostile loop
        errors_mod.log_internal(logger, "an HTTP handler", fail())
    records = [r for r in caplog.records if r.name == "test.internal"]
    assert len(records) == errors_mod.INTERNAL_LINES_PER_SECOND
    assert sum(r.exc_info is not None for r in records) == 1  # one traceback
    assert "KeyError" in records[-1].getMessage()
    caplog.clear()
    clock[0] += 1.0
    errors_mod.log_internal(logger, "an HTTP handler", fail())
    (line,) = [r for r in caplog.records if r.name == "test.internal"]
    assert f"({1000 - errors_mod.INTERNAL_LINES_PER_SECOND} more like it not logged)" in line.getMessage()
    assert line.exc_info is None  # the traceback comes again only after a minute
    caplog.clear()
    clock[0] += errors_mod.INTERNAL_TRACEBACK_EVERY
    errors_mod.log_internal(logger, "an HTTP handler", fail())
    assert [r.exc_info is not None for r in caplog.records if r.name == "test.internal"] == [True]
