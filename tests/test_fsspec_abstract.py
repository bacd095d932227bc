"""fsspec's own abstract test suites (copy, get, put, open, pipe), shipped in the
installed fsspec (``fsspec.tests.abstract``), against ``mesh://`` on a real
``meshd embedded`` process with a ``file://`` mount.

Every test gets a fresh directory of the mount as its ``fs_path``; the node is
started once for the module.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from fsspec.tests.abstract import AbstractCopyTests as _Copy
from fsspec.tests.abstract import AbstractFixtures
from fsspec.tests.abstract import AbstractGetTests as _Get
from fsspec.tests.abstract import AbstractOpenTests as _Open
from fsspec.tests.abstract import AbstractPipeTests as _Pipe
from fsspec.tests.abstract import AbstractPutTests as _Put

from meshd.client.fsspec_mesh import MeshFileSystem
from tests.meshd_proc import MeshdProcess

_dirs = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fsspec-abstract-store")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, store: Path) -> Iterator[MeshdProcess]:
    n = MeshdProcess(tmp_path_factory.mktemp("fsspec-abstract-node") / "data", [f"/data=file://{store}"]).start()
    yield n
    n.stop()


class MeshFixtures(AbstractFixtures):
    @pytest.fixture
    def fs(self, node: MeshdProcess) -> MeshFileSystem:
        f = fsspec.filesystem("mesh", endpoint=node.endpoint)
        assert isinstance(f, MeshFileSystem)
        return f

    @pytest.fixture
    def fs_path(self, fs: MeshFileSystem, store: Path) -> str:
        path = f"/data/t{next(_dirs)}"
        fs.mkdir(path)
        assert (store / path.removeprefix("/data/")).is_dir()
        return path


class TestMeshCopy(_Copy, MeshFixtures):
    pass


class TestMeshGet(_Get, MeshFixtures):
    pass


class TestMeshPut(_Put, MeshFixtures):
    pass


class TestMeshOpen(_Open, MeshFixtures):
    pass


class TestMeshPipe(_Pipe, MeshFixtures):
    pass
