"""The node meshfs talks to: one client, its calls bounded, reconnected when the node goes.

Blocking client calls run on a pool of 32 threads, each bounded by
``timeout`` (EIO, never a hang). A node that stops answering is reconnected
(the endpoint is read again, so a restarted node on new ports is found) and
the call retried once; reconnections are at most one a second.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from meshd.client.sdk import MeshClient
from meshd.errors import NodeUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class FSError(OSError):
    """An errno for the kernel, decided by meshfs itself (the node's errors carry
    theirs: :func:`meshd.errors.errno_of` is the one table)."""

    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(errno_, message or os.strerror(errno_))

    def __str__(self) -> str:
        return str(self.strerror)


class Node:
    def __init__(self, endpoint: str | None, timeout: float,
                 factory: Callable[[str | None, float], MeshClient] | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._factory = factory or (lambda ep, t: MeshClient(ep, t))
        self._client: MeshClient | None = None
        self._lock = threading.Lock()
        self._reconnected = 0.0
        self.pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="meshfs")

    def client(self) -> MeshClient:
        with self._lock:
            if self._client is None:
                self._client = self._factory(self.endpoint, self.timeout)
            return self._client

    def _reconnect(self, why: BaseException) -> bool:
        """Drop the client so the next call finds the node again; at most once a second."""
        with self._lock:
            if time.monotonic() - self._reconnected < 1.0:
                return False
            self._reconnected = time.monotonic()
            old, self._client = self._client, None
        log.warning("node unreachable (%s): reconnecting", why)
        if old is not None:
            try:
                old.close()
            except Exception:  # the old client's sockets are dead anyway
                pass
        return True

    def with_client(self, fn: Callable[[MeshClient], T]) -> T:
        """``fn(client)``, once more with a fresh client if the node was unreachable."""
        try:
            return fn(self.client())
        except (NodeUnavailable, ConnectionError) as e:
            if not self._reconnect(e):
                raise
            return fn(self.client())

    async def call(self, fn: Callable[[MeshClient], T]) -> T:
        """A blocking client call on the pool, bounded by ``timeout``."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self.pool, self.with_client, fn), self.timeout)
        except TimeoutError:
            raise FSError(errno.EIO, f"the mesh did not answer within {self.timeout:g} s") from None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()


__all__ = ["FSError", "Node"]
