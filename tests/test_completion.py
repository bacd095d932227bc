"""``meshctl completion bash`` / ``meshd completion bash``: the scripts, run by a real bash."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.meshd_proc import MESHCTL, MESHD


def script(cmd: list[str]) -> str:
    r = subprocess.run([*cmd, "completion", "bash"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def complete(source: str, prog: str, line: str, tmp_cwd: str) -> list[str]:
    """What bash offers for the last word of ``line`` (an empty last word: after a space)."""
    words = line.split(" ")
    fn = f"_{prog}"
    program = (f"{source}\nCOMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
               f"COMP_CWORD={len(words) - 1}\n{fn}\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    r = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30, cwd=tmp_cwd)
    assert r.returncode == 0, r.stderr
    return sorted(w for w in r.stdout.splitlines() if w)


@pytest.mark.parametrize(("line", "expected"), [
    ("meshctl mo", ["mount"]),
    ("meshctl l", ["load", "ls"]),
    ("meshctl --endpoint /var/lib/mesh l", ["load", "ls"]),  # a flag's value is not the command
    ("meshctl mount ", ["add", "ls", "rm"]),
    ("meshctl mount add --no", ["--no-check"]),
    ("meshctl ls --l", ["--long"]),
    ("meshctl topology s", ["show"]),
    ("meshctl writeback ", ["flush", "status"]),
    ("meshctl writeback flush /x --w", ["--wait"]),
    ("meshctl cp a mesh:/b --write-", ["--write-back", "--write-through"]),
    ("meshctl place job.yaml --st", ["--stage", "--state"]),
    ("meshctl cat /x --off", ["--offset"]),
    ("meshctl ls notes", ["notes.txt"]),  # a path: file names
    ("meshctl --endpoint no", ["notes.txt"]),  # a flag's value: file names
])
def test_meshctl_completes(line: str, expected: list[str], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    assert complete(script(MESHCTL), "meshctl", line, str(tmp_path)) == expected


def test_meshd_completes(tmp_path: Path) -> None:
    source = script(MESHD)
    assert complete(source, "meshd", "meshd e", str(tmp_path)) == ["embedded"]
    assert complete(source, "meshd", "meshd run --adv", str(tmp_path)) == ["--advertise-host"]
    assert "complete -F _meshd meshd" in source and sys.executable not in source
