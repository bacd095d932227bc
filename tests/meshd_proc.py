"""Run real ``meshd embedded`` / ``meshd run`` processes for functional tests."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshd.client.sdk import MeshClient
from tests.etcdproc import end_process

MESHD = [sys.executable, "-m", "meshd.cli.meshd"]
MESHCTL = [sys.executable, "-m", "meshd.cli.meshctl"]


class MeshdProcess:
    def __init__(self, data_dir: Path, mounts: list[str] | None = None, args: list[str] | None = None,
                 command: str = "embedded", prefix: list[str] | None = None) -> None:
        self.prefix = list(prefix or [])  # e.g. ["ip", "netns", "exec", NS]: run inside a namespace
        self.data_dir = Path(data_dir)
        self.command = command
        self.mounts = list(mounts or [])
        self.args = list(args or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoints: dict[str, str] = {}
        self.log = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def endpoint(self) -> str:
        return self.endpoints["grpc"]

    @property
    def http(self) -> str:
        return self.endpoints["http"]

    def start(self, timeout: float = 30) -> MeshdProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [*self.prefix, *MESHD, self.command, "--data-dir", str(self.data_dir)]
        for m in self.mounts:
            cmd += ["--mount", m]
        cmd += self.args
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        ep = self.data_dir / "endpoints.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"meshd exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                d = json.loads(ep.read_text())
                if d.get("pid") == self.proc.pid:
                    self.endpoints = d
                    return self
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"meshd did not become ready:\n{self.log.read_text()[-3000:]}")

    def client(self) -> MeshClient:
        return MeshClient(self.endpoint)

    def ctl(self, *args: str, input: bytes | None = None, check: bool = False) -> subprocess.CompletedProcess[bytes]:
        endpoint = str(self.data_dir) if self.prefix else self.endpoint  # inside a namespace: its data dir
        r = subprocess.run([*self.prefix, *MESHCTL, "--endpoint", endpoint, *args], input=input,
                           capture_output=True, timeout=300)
        if check and r.returncode != 0:
            raise AssertionError(f"meshctl {' '.join(args)} failed: {r.stderr.decode()}")
        return r

    def stop(self) -> None:
        end_process(self.proc, graceful=True)
        self.proc = None

    def kill(self) -> None:
        end_process(self.proc, graceful=False)
        self.proc = None

    def restart(self) -> MeshdProcess:
        self.stop()
        return self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def secrets_key_file(directory: Path) -> Path:
    """A cluster's key for mount secrets in ``directory`` (made once, 0600): what an operator
    gives every node of a cluster (``meshd run --secrets-key-file``)."""
    import base64

    path = Path(directory) / "cluster-secrets.key"
    if not path.exists():
        Path(directory).mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(os.urandom(32)) + b"\n")
    return path


def env_without_endpoint() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MESH_ENDPOINT", None)
    return env


def hostport(url: str) -> tuple[str, int]:
    """``host:port`` or a URL of a node's endpoint, as a socket address."""
    u = urlsplit(url if "//" in url else "//" + url)
    assert u.hostname is not None and u.port is not None
    return u.hostname, u.port


def wire_reply(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The next metadata wire frame on ``sock``, read raw: (request id, reply)."""
    sock.settimeout(30)
    head = b""
    while len(head) < 8:
        chunk = sock.recv(8 - len(head))
        assert chunk, "the node closed the metadata wire connection"
        head += chunk
    size, req_id = struct.unpack("!II", head)
    body = b""
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        assert chunk
        body += chunk
    return req_id, json.loads(body)
