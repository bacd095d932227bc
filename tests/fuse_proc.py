"""Run a real ``meshfs mount`` (a kernel FUSE mount) for functional tests."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.etcdproc import end_process

MESHFS = [sys.executable, "-m", "meshfs.cli"]


def is_mounted(path: Path | str) -> bool:
    target = os.path.abspath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def force_unmount(path: Path | str) -> None:
    """Lazily detach a mount a test left behind (never leave one for the next test)."""
    if is_mounted(path):
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)


class MeshfsProcess:
    def __init__(self, mountpoint: Path, endpoint: str, args: list[str] | None = None,
                 log: Path | None = None) -> None:
        self.mountpoint = Path(mountpoint)
        self.endpoint = endpoint
        self.args = list(args or [])
        self.log = log or self.mountpoint.parent / f"{self.mountpoint.name}.meshfs.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> MeshfsProcess:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([*MESHFS, "mount", str(self.mountpoint), "--endpoint", self.endpoint,
                                      *self.args], stdout=subprocess.PIPE, stderr=logf)
        logf.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if b"mounted" in line or not line:
                    break
            if self.proc.poll() is not None:
                break
        if b"meshfs: mounted" not in line or not is_mounted(self.mountpoint):
            self.kill()
            raise RuntimeError(f"meshfs did not mount ({line!r}):\n{self.log.read_text()[-3000:]}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        """Resident set size of the meshfs process, bytes."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM (a clean unmount); whatever is left is detached. The exit code."""
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                end_process(self.proc, graceful=False)
        elif self.proc is not None:
            code = self.proc.returncode
        force_unmount(self.mountpoint)
        return code

    def kill(self) -> None:
        end_process(self.proc, graceful=False)
        force_unmount(self.mountpoint)
