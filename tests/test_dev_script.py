"""``./dev``, the first command a new user runs: what it refuses, what it installs, what it leaves."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "dev"


def fake_venv(tmp_path: Path, stamp: str) -> Path:
    """A venv whose commands are this interpreter's, stamped as installed with ``stamp``'s
    extras (so ./dev installs nothing); its pip refuses to run, in case it tried."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    scripts = {"python": f'[ "${{1:-}} ${{2:-}}" = "-m pip" ] && exit 99\nexec {sys.executable} "$@"',
               "meshd": f'exec {sys.executable} -m meshd.cli.meshd "$@"',
               "meshctl": f'exec {sys.executable} -m meshd.cli.meshctl "$@"'}
    for name, body in scripts.items():
        (venv / "bin" / name).write_text(f"#!/bin/sh\n{body}\n")
        (venv / "bin" / name).chmod(0o755)
    (venv / stamp).write_text(hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest() + "\n")
    return venv


def dev(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DEV), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_unknown_benchmark_is_refused_before_anything_runs(tmp_path: Path) -> None:
    r = dev("bench", "nosuch", env={"MESH_VENV": str(tmp_path / "no-venv")})
    assert r.returncode == 2
    assert r.stderr.strip() == ("unknown benchmark nosuch; choose one of read, s3, cluster, multiregion, "
                                "placement, webhdfs, fuse")
    assert not (tmp_path / "no-venv").exists()  # refused before setting anything up


def test_demo_needs_only_the_server_extra_and_removes_its_directory(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path, ".installed-server")  # the node's extra only: not the test stack
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    r = dev("demo", env={"MESH_VENV": str(venv), "MESH_DEMO_EXIT": "1", "TMPDIR": str(tmpdir)}, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "installing" not in r.stderr
    assert "Hello from the data mesh" in r.stdout and "hit ratio" in r.stdout
    assert list(tmpdir.iterdir()) == []  # the demo's data directory is gone with it
