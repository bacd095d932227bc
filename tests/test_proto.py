"""The checked-in gRPC code is exactly what scripts/gen-proto makes from proto/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["bash", str(ROOT / "scripts/gen-proto"), str(tmp_path)], check=True, env=env)
    names = ["mesh_pb2.py", "mesh_pb2.pyi", "mesh_pb2_grpc.py"]
    for name in names:
        fresh = (tmp_path / "meshd/rpc" / name).read_bytes()
        checked_in = (ROOT / "meshd/rpc" / name).read_bytes()
        assert fresh == checked_in, f"meshd/rpc/{name} is stale: run scripts/gen-proto and commit"


def test_every_rpc_is_implemented() -> None:
    from meshd.rpc import mesh_pb2
    from meshd.servers.grpc_api import MeshService

    service = mesh_pb2.DESCRIPTOR.services_by_name["Mesh"]
    for method in service.methods:
        assert method.name in MeshService.__dict__, f"MeshService does not implement {method.name}"
