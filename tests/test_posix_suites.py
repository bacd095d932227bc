"""A slice of pjdfstest, the standard POSIX conformance suite, over a real meshfs mount.

The vendored pjdfstest (tests/conformance/) is built once, then its test groups run inside
the mount of a ``file://`` directory and of an ``s3://`` bucket; every subtest must pass, but
over S3 those that meet what S3 cannot do (docs/SEMANTICS.md), which must fail as documented.
The whole suite and fsx: ``./dev posix`` (see tests/posix_suites.py). Runs alone with
``pytest tests/test_posix_suites.py`` (as root: FUSE, and pjdfstest switches users).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.posix_suites import (
    ROOT,
    FileResult,
    build_pjdfstest,
    meshfs_mount,
    parse_tap,
    pjdfstest_report,
    pjdfstest_summary,
    run_pjdfstest,
)

pytestmark = pytest.mark.slow

# Measured on two busy cores: the slowest groups, chown (1,497 subtests: ~85 s over file://,
# ~130 s over s3://) and unlink (440: ~22 s), are left to ./dev posix so that the slice stays
# near 3 minutes (every group's cleanup unlinks anyway).
FILE_GROUPS = ["chmod", "ftruncate", "link", "mkfifo", "open", "symlink", "truncate", "utimensat"]
S3_GROUPS = ["chmod", "open", "truncate", "utimensat"]
# What S3 cannot do (docs/SEMANTICS.md, "What S3 cannot do"), exactly as these groups meet it:
# the */03.t files build a path of PATH_MAX (4,095 bytes), past S3's 1,024-byte keys, and must
# get ENAMETOOLONG at each step; open/00.t 33-34 expect the parent directory's mtime and ctime to
# follow a create (an S3 directory's times are its marker's). Any other failure, or any of these
# passing or failing otherwise, fails the test.
S3_CANNOT = {
    "chmod/03.t": ({1, 2, 3, 4}, "got ENAMETOOLONG"),
    "open/03.t": ({1, 2, 3}, "got ENAMETOOLONG"),
    "truncate/03.t": ({1, 2, 3, 4}, "got ENAMETOOLONG"),
    "open/00.t": ({33, 34}, ""),
}


def failed_subtests(r: FileResult) -> set[int]:
    return {int(line.split()[2]) for line in r.failures}


@pytest.fixture(scope="module")
def pjdfstest() -> Path:
    return build_pjdfstest()


def run_slice(kind: str, groups: list[str], build: Path, tmp_path: Path,
              cannot: dict[str, tuple[set[int], str]] | None = None) -> None:
    try:
        with meshfs_mount(kind, tmp_path / kind) as d:
            results = run_pjdfstest(build, d, groups, log=tmp_path / f"{kind}.tap")
    finally:  # pjdfstest leaves paths thousands of levels deep: too deep for pytest's (recursive) cleanup
        subprocess.run(["rm", "-rf", str(tmp_path / kind)], check=False)
    expected = sorted(f"{g}/{t.name}" for g in groups for t in (build / "tests" / g).glob("*.t"))
    assert sorted(results) == expected  # every test file ran and reported
    cannot = cannot or {}
    for name, (subtests, errno) in cannot.items():
        r = results.pop(name)
        assert failed_subtests(r) == subtests and r.ok + r.failed == r.planned, pjdfstest_report({name: r})
        assert all(line.endswith(errno) for line in r.failures), pjdfstest_report({name: r})
    summary = pjdfstest_summary(results)
    assert all(r.passed for r in results.values()), "\n".join([*pjdfstest_report(results), summary])
    assert summary.startswith("pjdfstest: 0 of ")


def test_pjdfstest_slice_over_a_file_store(pjdfstest: Path, tmp_path: Path) -> None:
    run_slice("file", FILE_GROUPS, pjdfstest, tmp_path)


def test_pjdfstest_slice_over_an_s3_store(pjdfstest: Path, tmp_path: Path) -> None:
    run_slice("s3", S3_GROUPS, pjdfstest, tmp_path, S3_CANNOT)


def test_tap_is_counted_per_file_as_the_suite_script_does() -> None:
    tap = """/b/tests/chmod/00.t ..
1..4
ok 1
not ok 2 - tried 'chmod x 0644', expected 0, got EIO
not ok 3 # TODO not on Linux
ok 4
Failed 1/4 subtests
/b/tests/open/01.t ..
1..3
ok 1
Bail out!  a helper died
"""
    r = parse_tap(tap)
    assert sorted(r) == ["chmod/00.t", "open/01.t"]
    assert (r["chmod/00.t"].ok, r["chmod/00.t"].failed, r["chmod/00.t"].planned) == (3, 1, 4)
    assert r["chmod/00.t"].failures == ["not ok 2 - tried 'chmod x 0644', expected 0, got EIO"]
    assert not r["open/01.t"].passed and r["open/01.t"].problems == ["Bail out!  a helper died"]
    assert pjdfstest_summary(r) == "pjdfstest: 1 of 5 subtests failed; 2 of 2 files failed"


def test_dev_posix_refuses_an_unknown_store_before_setting_up(tmp_path: Path) -> None:
    r = subprocess.run([str(ROOT / "dev"), "posix", "nfs"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MESH_VENV": str(tmp_path / "no-venv")})
    assert r.returncode == 2 and r.stderr.strip() == "unknown store nfs; choose one of file, s3, both"
    assert not (tmp_path / "no-venv").exists()
