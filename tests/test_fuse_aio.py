"""meshfs's pyfuse3 asyncio shim (fuse/meshfs/cli.py ``_enable_asyncio``).

pyfuse3's own ``wait_readable`` lets the /dev/fuse reader fire on a future that is
already done (a worker cancelled at unmount in the iteration its fd became readable):
asyncio then logs an ERROR with an InvalidStateError traceback in the mount's log.
The race is made here on a pipe, for pyfuse3's version and for meshfs's."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

import pyfuse3.asyncio as aio

from meshfs.cli import _enable_asyncio

Wait = Callable[[int], Coroutine[Any, Any, None]]


async def _cancelled_as_readable(wait_readable: Wait) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    r, w = os.pipe()
    try:
        task = asyncio.ensure_future(wait_readable(r))
        await asyncio.sleep(0)  # the task now waits on r
        os.write(w, b"x")
        loop.call_soon(task.cancel)  # cancelled in the iteration the reader fires
        for _ in range(5):
            await asyncio.sleep(0)
        assert task.cancelled()
        assert r not in aio._read_futures  # no waiter left behind for notify_closing
    finally:
        os.close(r)
        os.close(w)
    return errors


def test_pyfuse3_wait_readable_logs_the_race() -> None:
    """The upstream behaviour this works around (if pyfuse3 fixes it, this fails: drop the shim)."""
    import importlib

    fresh = importlib.reload(aio)  # pyfuse3's own, even if the shim was installed before
    errors = asyncio.run(_cancelled_as_readable(fresh.wait_readable))
    assert [type(e.get("exception")) for e in errors] == [asyncio.InvalidStateError]


def test_meshfs_wait_readable_is_quiet_and_still_wakes() -> None:
    _enable_asyncio()
    assert asyncio.run(_cancelled_as_readable(aio.wait_readable)) == []

    async def wakes() -> None:
        r, w = os.pipe()
        try:
            os.write(w, b"x")
            await asyncio.wait_for(aio.wait_readable(r), 5)
        finally:
            os.close(r)
            os.close(w)

    asyncio.run(wakes())
