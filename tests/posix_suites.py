"""Run the standard POSIX conformance suites over a real meshfs mount.

* pjdfstest (pjd/pjdfstest @85a8aea, BSD-2-Clause), vendored unchanged in
  ``tests/conformance/``: ~8,800 subtests in groups (chmod, link, open, ...).
* fsx (xfstests ltp/fsx @63a2972, GPL-2.0): random read/write/truncate/mmap operations
  checked against an in-memory model. Not vendored (1.9 MB): taken from
  ``$MESH_XFSTESTS_TARBALL`` or ``../shared/conformance/xfstests-*.tar.gz`` beside the checkout.

Both are built once into ``$MESH_POSIX_BUILD`` (default ``<venv>/posix-suites``) and run, as
root, inside ``data/`` of a meshfs mount of a fresh node whose ``/data`` is a ``file://``
directory or an ``s3://`` bucket of the tests' S3 server::

    python -m tests.posix_suites {file|s3} {pjdfstest|fsx|all} [--groups chmod,link] [--ops N]

(``./dev posix [file|s3|both] [pjdfstest|fsx|all]`` sets up and runs this.) The test
``tests/test_posix_suites.py`` runs a slice of pjdfstest with the same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PJDFSTEST_TARBALL = ROOT / "tests" / "conformance" / "pjdfstest-85a8aea.tar.gz"
# (command, Debian package) the pjdfstest build and run need
PJDFSTEST_TOOLS = [("autoreconf", "autoconf"), ("automake", "automake"), ("gcc", "gcc"),
                   ("make", "make"), ("prove", "perl")]
FSX_PACKAGES = "libtool-bin uuid-dev xfslibs-dev libattr1-dev libacl1-dev libaio-dev"
# the four fsx variants of the posix-suites script: name, flags
FSX_VARIANTS = [("default", []), ("nommap", ["-W", "-R"]),
                ("plain", ["-W", "-R", "-F", "-H", "-z", "-C", "-I", "-J", "-B", "-E", "-0"]),
                ("lite", ["-L", "-W", "-R"])]
GROUP_TIMEOUT = 1200  # seconds for one group's prove
FILE_TIMEOUT = 400  # seconds for one test file


class SuiteError(RuntimeError):
    """A suite cannot be built or run here (missing tools or sources): the message says what to do."""


def build_root() -> Path:
    env = os.environ.get("MESH_POSIX_BUILD")
    if env:
        return Path(env)
    return Path(os.environ.get("MESH_VENV") or ROOT / ".venv").resolve() / "posix-suites"


def _need(tools: list[tuple[str, str]], extra: str = "") -> None:
    missing = [pkg for cmd, pkg in tools if shutil.which(cmd) is None]
    if missing:
        raise SuiteError(f"missing build tools; install the Debian packages: "
                         f"apt-get install {' '.join(missing)} libc6-dev {extra}".rstrip())


def _build(name: str, tarball: Path, topdir: str, steps: list[list[str]], product: str,
           packages: str) -> Path:
    """Extract ``tarball`` (whose top directory is ``topdir``) into the build root as ``name``
    and run ``steps`` there, unless ``name/product`` exists already. The product's path."""
    root = build_root()
    done = root / name / product
    if done.exists():
        return done
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        subprocess.run(["tar", "xzf", str(tarball), "-C", str(work)], check=True)
        src = work / topdir
        for step in steps:
            r = subprocess.run(step, cwd=src, capture_output=True, text=True)
            if r.returncode != 0:
                raise SuiteError(f"building {name}: {' '.join(step)} failed ({r.returncode}); it needs "
                                 f"the Debian packages {packages}:\n{(r.stdout + r.stderr)[-3000:]}")
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(root / name)
        src.rename(root / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return done


def build_pjdfstest() -> Path:
    """The built pjdfstest source tree (its ``tests/`` holds the groups); built once."""
    if not PJDFSTEST_TARBALL.exists():
        raise SuiteError(f"{PJDFSTEST_TARBALL} is missing (it is vendored in the repository)")
    _need(PJDFSTEST_TOOLS)
    name = PJDFSTEST_TARBALL.name.removesuffix(".tar.gz")
    binary = _build(name, PJDFSTEST_TARBALL, "pjdfstest",
                    [["autoreconf", "-ifs"], ["./configure"], ["make", "pjdfstest"]], "pjdfstest",
                    "autoconf automake gcc make libc6-dev")
    return binary.parent


def xfstests_tarball() -> Path | None:
    env = os.environ.get("MESH_XFSTESTS_TARBALL")
    if env:
        return Path(env)
    found = sorted(glob.glob(str(ROOT.parent / "shared" / "conformance" / "xfstests-*.tar.gz")))
    return Path(found[-1]) if found else None


def build_fsx() -> Path:
    """The fsx binary, built once from the xfstests tarball."""
    tarball = xfstests_tarball()
    if tarball is None or not tarball.exists():
        raise SuiteError("fsx needs the xfstests sources, which are not vendored (1.9 MB, GPL-2.0): "
                         "set MESH_XFSTESTS_TARBALL to an xfstests-*.tar.gz (git.kernel.org "
                         "fs/xfs/xfstests-dev, tested at 63a2972) or put it in "
                         f"{ROOT.parent / 'shared' / 'conformance'}/")
    _need([*PJDFSTEST_TOOLS[:4], ("libtoolize", "libtool-bin")], FSX_PACKAGES)
    name = tarball.name.removesuffix(".tar.gz")
    return _build(name, tarball, "xfstests",
                  [["make", "configure"], ["./configure"], ["make", "-C", "lib"],
                   ["make", "-C", "ltp", "fsx"]], "ltp/fsx",
                  f"autoconf automake gcc make libc6-dev {FSX_PACKAGES}")


# --- the file system under test --------------------------------------------------------

@contextlib.contextmanager
def meshfs_mount(kind: str, base: Path) -> Iterator[Path]:
    """A fresh node whose ``/data`` is a ``file://`` directory or an ``s3://`` bucket, mounted
    with meshfs (``--allow-other``: pjdfstest switches users) under ``base``; yields the
    mount's ``data`` directory. Needs root (FUSE)."""
    from tests.fuse_proc import MeshfsProcess
    from tests.meshd_proc import MeshdProcess
    from tests.s3server import S3Server, start

    if kind not in ("file", "s3"):
        raise ValueError(f"unknown store kind {kind!r}; choose file or s3")
    base.mkdir(parents=True, exist_ok=True)
    mounts = []
    if kind == "file":
        (base / "store").mkdir()
        mounts = [f"/data=file://{base / 'store'}"]
    srv: S3Server | None = None
    node = fs = None
    try:
        node = MeshdProcess(base / "node", mounts, ["--no-s3"]).start()
        if kind == "s3":
            srv = start()
            srv.client().create_bucket(Bucket="posix")
            opts = [a for k, v in srv.options().items() for a in ("-o", f"{k}={v}")]
            node.ctl("mount", "add", "/data", "s3://posix", *opts, check=True)
        mp = base / "mnt"
        mp.mkdir()
        fs = MeshfsProcess(mp, node.endpoint, ["--allow-other"]).start()
        yield mp / "data"
    finally:
        if fs is not None:
            fs.stop()
        if node is not None:
            node.stop()
        if srv is not None:
            srv.stop()


# --- pjdfstest -------------------------------------------------------------------------

@dataclass
class FileResult:
    """One pjdfstest test file's TAP: subtests passed (TODO lines count as passed) and failed,
    the plan, the failing lines, and the harness's complaints (Bail out, Dubious, ...)."""
    name: str
    ok: int = 0
    failed: int = 0
    planned: int | None = None
    failures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (not self.failed and not self.problems
                and self.planned is not None and self.ok == self.planned)


_HARNESS = re.compile(r"(Failed \d+/\d+ subtests|Dubious|Bailout|Bail out|Parse errors|No subtests run"
                      r"|No plan found)")


def parse_tap(text: str) -> dict[str, FileResult]:
    """The verbose output of ``prove -rv`` over pjdfstest groups, per test file
    (``chmod/00.t``): the same counting as the posix-suites script."""
    files: dict[str, FileResult] = {}
    cur: FileResult | None = None
    for line in text.splitlines():
        m = re.match(r"(\S+\.t) \.\.", line)
        if m:
            name = m.group(1).split("/tests/")[-1]
            cur = files.setdefault(name, FileResult(name))
            continue
        if cur is None:
            continue
        if re.match(r"ok \d+", line):
            cur.ok += 1
        elif re.match(r"not ok \d+", line):
            if "# TODO" in line:
                cur.ok += 1
            else:
                cur.failed += 1
                cur.failures.append(line)
        elif m := re.match(r"1\.\.(\d+)", line):
            cur.planned = int(m.group(1))
        elif _HARNESS.match(line.strip()):
            cur.problems.append(line.strip())
    return files


def pjdfstest_groups(build: Path) -> list[str]:
    return sorted(p.name for p in (build / "tests").iterdir() if p.is_dir())


def run_pjdfstest(build: Path, directory: Path, groups: list[str] | None = None,
                  log: Path | None = None) -> dict[str, FileResult]:
    """Each group in its own ``prove -rv`` (a "Bail out!" stops only its group) inside
    ``directory/pjd``, as root; the results per test file."""
    known = pjdfstest_groups(build)
    groups = groups or known
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise SuiteError(f"unknown pjdfstest groups {', '.join(unknown)}; choose from {', '.join(known)}")
    work = directory / "pjd"
    work.mkdir(parents=True, exist_ok=True)
    out = []
    for g in groups:
        r = subprocess.run(["timeout", "-k", "30", str(GROUP_TIMEOUT), "prove", "-rv", "--exec",
                            f"timeout -k 10 {FILE_TIMEOUT} /bin/sh", str(build / "tests" / g)],
                           cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, errors="replace")
        out.append(r.stdout)
        if r.returncode == 124:
            out.append(f"Bail out! group {g} timed out after {GROUP_TIMEOUT} s\n")
    text = "".join(out)
    if log is not None:
        log.write_text(text)
    return parse_tap(text)


def pjdfstest_summary(results: dict[str, FileResult]) -> str:
    bad = sum(r.failed for r in results.values())
    total = bad + sum(r.ok for r in results.values())
    nfiles = sum(not r.passed for r in results.values())
    return f"pjdfstest: {bad} of {total} subtests failed; {nfiles} of {len(results)} files failed"


def _short(line: str, width: int = 300) -> str:
    """A TAP line with its middle elided (the long-name tests print 4 KB paths)."""
    return line if len(line) <= width else f"{line[:width // 2]} ... {line[-width // 2:]}"


def pjdfstest_report(results: dict[str, FileResult]) -> list[str]:
    """Per failed file: its name, then its failing TAP lines and harness complaints."""
    lines = []
    for r in sorted(results.values(), key=lambda r: r.name):
        if r.passed:
            continue
        plan = f"{r.ok + r.failed} of {r.planned} planned" if r.planned is not None else "no plan"
        lines.append(f"failed: {r.name} ({r.failed} failed, {plan})")
        lines += [f"    {_short(x)}" for x in r.failures + r.problems]
    return lines


# --- fsx -------------------------------------------------------------------------------

@dataclass
class FsxResult:
    variant: str
    flags: list[str]
    returncode: int
    summary: str
    log: Path

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and "operations completed" in self.summary


def run_fsx(fsx: Path, directory: Path, ops: int = 20000, logdir: Path | None = None) -> list[FsxResult]:
    """The posix-suites script's four fsx variants of ``ops`` operations on ``directory/fsx-*``."""
    logdir = logdir or Path(tempfile.mkdtemp(prefix="fsx-"))
    results = []
    for v, flags in FSX_VARIANTS:
        args = ["-N", str(ops), "-S", "1", *flags]
        target = directory / f"fsx-{v}"
        target.unlink(missing_ok=True)
        if v.startswith("lite"):
            target.touch()  # -L: fsx does not create the file
        log = logdir / f"{v}.log"
        with open(log, "w") as f:
            r = subprocess.run(["timeout", "-k", "10", "900", str(fsx), *args, "-P", str(logdir),
                                str(target)], cwd=logdir, stdout=f, stderr=subprocess.STDOUT)
        text = log.read_text(errors="replace")
        summary = " ".join([ln for ln in text.splitlines()
                            if re.search(r"All \d+ operations completed|operation failed|"
                                         r": [A-Za-z ]+ not supported|LOG DUMP|Operation not", ln)][:2])
        results.append(FsxResult(v, args, r.returncode, summary, log))
    return results


# --- CLI -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.posix_suites", description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=["file", "s3"], help="the store under the mount")
    ap.add_argument("suite", choices=["pjdfstest", "fsx", "all"], nargs="?", default="all")
    ap.add_argument("--groups", help="pjdfstest groups, comma-separated (default: all)")
    ap.add_argument("--ops", type=int, default=20000, help="fsx operations per variant (20000)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("posix suites: run as root (a FUSE mount with --allow-other; pjdfstest switches users)",
              file=sys.stderr)
        return 2
    pjd = fsx = None
    missing = ""  # fsx's sources or tools: reported, and pjdfstest still runs
    try:
        pjd = build_pjdfstest() if a.suite in ("pjdfstest", "all") else None
        fsx = build_fsx() if a.suite in ("fsx", "all") else None
    except SuiteError as e:
        if pjd is None:  # nothing to run
            print(f"posix suites: {e}", file=sys.stderr)
            return 2
        missing = f"posix suites: fsx not run: {e}"
        print(missing, file=sys.stderr)
    groups = a.groups.split(",") if a.groups else None
    unknown = sorted(set(groups or []) - set(pjdfstest_groups(pjd) if pjd else groups or []))
    if unknown:
        print(f"posix suites: unknown pjdfstest groups {', '.join(unknown)}; choose from "
              f"{', '.join(pjdfstest_groups(pjd))}", file=sys.stderr)
        return 2
    logs = Path(tempfile.mkdtemp(prefix=f"posix-{a.kind}-logs-"))
    failed = False
    with tempfile.TemporaryDirectory(prefix=f"posix-{a.kind}-", dir="/var/tmp") as tmp:
        with meshfs_mount(a.kind, Path(tmp)) as d:
            if pjd is not None:
                try:
                    res = run_pjdfstest(pjd, d, groups, logs / "pjdfstest.tap")
                except SuiteError as e:
                    print(f"posix suites: {e}", file=sys.stderr)
                    return 2
                for line in pjdfstest_report(res):
                    print(line)
                print(f"[{a.kind}] TAP log: {logs / 'pjdfstest.tap'}")
                print(pjdfstest_summary(res))
                failed |= any(not r.passed for r in res.values())
            if fsx is not None:
                for r in run_fsx(fsx, d, a.ops, logs):
                    print(f"[{a.kind}] fsx {r.variant} ({' '.join(r.flags)}): rc={r.returncode} {r.summary}"
                          f"{'' if r.passed else f' (log: {r.log})'}")
                    failed |= not r.passed
    if missing:
        print(missing, file=sys.stderr)
    return 1 if failed else 2 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
