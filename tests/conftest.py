"""Shared fixtures.

* ``meshd`` (factory): ``meshd(mounts=[...], args=[...])`` starts a real
  ``meshd embedded`` process with a fresh data directory and returns a
  :class:`tests.meshd_proc.MeshdProcess`; all are stopped after the test.
* ``s3_server`` / ``s3_bucket``: a real S3 wire-protocol server (moto, in a
  subprocess) that counts GET requests and bytes at the server side.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest_s3 import s3_bucket, s3_server  # noqa: F401 - fixtures
from tests.meshd_proc import MeshdProcess

_counter = itertools.count()


@pytest.fixture
def meshd(tmp_path: Path) -> Iterator[Callable[..., MeshdProcess]]:
    started: list[MeshdProcess] = []

    def start(mounts: list[str] | None = None, args: list[str] | None = None,
              data_dir: Path | None = None) -> MeshdProcess:
        d = data_dir or tmp_path / f"node{next(_counter)}"
        p = MeshdProcess(d, mounts, args).start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
