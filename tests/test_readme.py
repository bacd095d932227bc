"""The README's command blocks, as written: every ``meshd``/``meshctl``/``meshfs`` command in
them parses with today's flags, and those that need no service (no node, S3, etcd, HDFS or
cluster) run and succeed."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from meshd.cli.meshctl import _parser as meshctl_parser
from meshd.cli.meshd import _parser as meshd_parser
from meshfs.cli import _parser as meshfs_parser
from tests.meshd_proc import MESHCTL, env_without_endpoint

ROOT = Path(__file__).resolve().parent.parent
PARSERS = {"meshd": meshd_parser, "meshctl": meshctl_parser, "meshfs": meshfs_parser}


def offline(words: list[str]) -> bool:
    """Whether a command runs with nothing else: on files of this repository alone."""
    if words[:2] == ["meshctl", "topology"]:
        return len(words) > 3 and words[2] in ("validate", "show")
    return words[:2] == ["meshctl", "place"] and "--state" in words and "--stage" not in words


def commands() -> list[list[str]]:
    """Each mesh command of the README's ``sh`` blocks, split as the shell would (variables
    left as written, comments, pipes, ``&&`` and ``&`` cut)."""
    text = (ROOT / "README.md").read_text()
    out: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#\s.*$", "", line)
            for part in re.split(r"&&|\|(?!\|)|&\s*$", line):
                words = shlex.split(part.strip())
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words.pop(0)  # VAR=value before the command
                if words and words[0] in PARSERS:
                    out.append(words)
    return out


COMMANDS = commands()


def test_the_readme_has_commands() -> None:
    assert len(COMMANDS) >= 20 and {c[0] for c in COMMANDS} == set(PARSERS)
    assert len(RUNNABLE) >= 2


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_every_readme_command_parses(words: list[str]) -> None:
    parser: argparse.ArgumentParser = PARSERS[words[0]]()
    try:
        parser.parse_args(words[1:])
    except SystemExit as e:
        pytest.fail(f"README: `{' '.join(words)}` does not parse (exit {e.code})")


RUNNABLE = [c for c in COMMANDS if offline(c)]


@pytest.mark.parametrize("words", RUNNABLE, ids=[" ".join(c) for c in RUNNABLE])
def test_readme_commands_that_need_no_service_run(words: list[str]) -> None:
    r = subprocess.run([*MESHCTL, *words[1:]], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**env_without_endpoint(), "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
