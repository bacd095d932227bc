"""Shared fixtures.

* ``meshd`` (factory): ``meshd(mounts=[...], args=[...])`` starts a real
  ``meshd embedded`` process with a fresh data directory and returns a
  :class:`tests.meshd_proc.MeshdProcess`; all are stopped after the test.
* ``s3_server`` / ``s3_bucket``: a real S3 wire-protocol server (moto, in a
  subprocess) that counts GET requests and bytes at the server side.
* ``etcd``: a real etcd server (Debian's etcd-server) for this test.
* ``cluster`` (factory): ``cluster(4, etcd)`` starts that many ``meshd run``
  processes of one cluster and region and waits until each sees all of them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.conftest_s3 import s3_bucket, s3_server  # noqa: F401 - fixtures
from tests.etcdproc import EtcdProcess
from tests.meshd_proc import MeshdProcess, secrets_key_file

_counter = itertools.count()
T = TypeVar("T")


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


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    e = EtcdProcess(tmp_path / "etcd").start()
    yield e
    e.kill()


def cluster_args(etcd: EtcdProcess, name: str = "test", region: str = "r1", ttl: int = 3,
                 s3: bool = False) -> list[str]:
    return ["--etcd", etcd.url, "--cluster", name, "--region", region, "--lease-ttl", str(ttl),
            "--log-level", "INFO", "--secrets-key-file", str(secrets_key_file(etcd.data_dir.parent)),
            *([] if s3 else ["--no-s3"])]


def wait_until(probe: Callable[[], T], done: Callable[[T], bool], timeout: float, what: str,
               interval: float = 0.2, fail: bool = True) -> T:
    """Probe until ``done(probe())``; returns that value. On timeout the test fails
    with ``what`` and the last value probed (``fail=False``: that value is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if not fail and time.monotonic() >= deadline:
            return value
        assert time.monotonic() < deadline, f"{what}: {value!r}"[-3000:]
        time.sleep(interval)


def wait_members(nodes: list[MeshdProcess], n: int, timeout: float = 30) -> None:
    """Until every node's report lists ``n`` members, all up."""
    def counts() -> list[int]:
        out = []
        for p in nodes:
            with p.client() as c:
                members = c.report().get("cluster", {}).get("members", [])
                out.append(sum(m["state"] in ("self", "up") for m in members) if len(members) == n else -1)
        return out

    wait_until(counts, lambda cs: all(c == n for c in cs), timeout, f"members never converged to {n}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., list[MeshdProcess]]]:
    started: list[MeshdProcess] = []

    def start(n: int, etcd: EtcdProcess, args: list[str] | None = None, name: str = "test",
              region: str = "r1", ttl: int = 3, wait: bool = True, s3: bool = False) -> list[MeshdProcess]:
        nodes = []
        for _ in range(n):
            d = tmp_path / f"cnode{next(_counter)}"
            nodes.append(MeshdProcess(d, [], [*cluster_args(etcd, name, region, ttl, s3), *(args or [])],
                                      command="run").start())
        started.extend(nodes)
        if wait:
            wait_members(nodes, len(nodes))
        return nodes

    yield start
    for p in started:
        p.stop()
