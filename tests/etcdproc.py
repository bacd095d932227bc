"""A real etcd server (Debian's etcd-server) for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def end_process(proc: subprocess.Popen[bytes] | None, graceful: bool, wait: float = 15) -> None:
    """SIGTERM and wait (then SIGKILL), or SIGKILL at once; nothing if it already ended."""
    if proc is None or proc.poll() is not None:
        return
    if graceful:
        proc.terminate()
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdProcess:
    """One etcd member on loopback. ``kill``/``start`` keep its data, like a crash and a restart."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20) -> EtcdProcess:
        exe = shutil.which("etcd") or "/usr/bin/etcd"
        client, peer = f"http://127.0.0.1:{self.client_port}", f"http://127.0.0.1:{self.peer_port}"
        cmd = [exe, "--name", "t", "--data-dir", str(self.data_dir),
               "--listen-client-urls", client, "--advertise-client-urls", client,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"t={peer}", "--log-level", "warn"]
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(client + "/health", timeout=1) as r:
                    if b'"true"' in r.read():
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"etcd did not become healthy:\n{self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        end_process(self.proc, graceful=False)
        self.proc = None

    def stop(self) -> None:
        end_process(self.proc, graceful=True, wait=10)
        self.proc = None

    def ctl(self, *args: str) -> str:
        exe = shutil.which("etcdctl") or "/usr/bin/etcdctl"
        if not os.access(exe, os.X_OK):
            raise RuntimeError("etcdctl not found: install Debian's etcd-client (./dev setup does)")
        r = subprocess.run([exe, "--endpoints", self.url, *args], capture_output=True, timeout=30,
                           env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        if r.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)}: {r.stderr.decode()}")
        return r.stdout.decode()
