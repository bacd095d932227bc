"""The distribution's promise: `pip install datamesh` is the client side (MeshClient,
mesh://, meshctl) without the node's or the FUSE mount's dependencies, and the
commands that need an extra say which one."""

from __future__ import annotations

import subprocess
import sys

SERVER_AND_FUSE = ["aiohttp", "rocksdict", "boto3", "botocore", "aetcd", "prometheus_client", "pyfuse3",
                   "defusedxml", "crc32c", "cryptography", "awscrt"]
BLOCK = f"import sys\nfor m in {SERVER_AND_FUSE!r}: sys.modules[m] = None\n"


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=60)


def test_client_side_imports_without_the_extras() -> None:
    r = run("import fsspec\nfrom meshd.client import MeshClient\nimport meshd.client.fsspec_mesh\n"
            "import meshd.cli.meshctl\n"
            "assert fsspec.get_filesystem_class('mesh').__name__ == 'MeshFileSystem'\nprint('ok')")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_meshd_without_the_server_extra_names_it() -> None:
    r = run("from meshd.cli.meshd import main\nsys.exit(main(['embedded', '--data-dir', '/nonexistent-x']))")
    assert r.returncode == 2
    assert "pip install 'datamesh[server]'" in r.stderr and "Traceback" not in r.stderr


def test_meshfs_without_the_fuse_extra_names_it() -> None:
    r = run("from meshfs.cli import main\nsys.exit(main(['mount', '/nonexistent-x']))")
    assert r.returncode == 2
    assert "pip install 'datamesh[fuse]'" in r.stderr and "Traceback" not in r.stderr
