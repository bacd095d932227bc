"""Short-circuit reads of pages held only in memory: one memfd per page, passed to every
reader as a descriptor (not one inline copy per reader); small segments stay inline."""

from __future__ import annotations

import array
import asyncio
import json
import os
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meshd.servers.shortcircuit import MEMFD_KEEP, ShortCircuitServer
from tests.nodeutil import NodeBox

MiB = 1 << 20
FD_HEADER = struct.Struct("<cQQ")


def _read(path: str, req: dict[str, object]) -> tuple[bytes, list[str]]:
    """A raw client: the bytes of the read, and the kinds of message that carried them."""
    data, kinds = bytearray(), []
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(path)
        s.send(json.dumps(req).encode())
        while True:
            msg, anc, _, _ = s.recvmsg(1 << 20, socket.CMSG_SPACE(4))
            kind = msg[:1]
            if kind == b"F":
                _, off, n = FD_HEADER.unpack(msg[:FD_HEADER.size])
                fds = array.array("i")
                for level, typ, payload in anc:
                    if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                        fds.frombytes(payload[:4])
                try:
                    data += os.pread(fds[0], n, off)
                finally:
                    os.close(fds[0])
                kinds.append("F")
            elif kind == b"D":
                data += msg[1:]
                kinds.append("D")
            elif kind == b"E":
                return bytes(data), kinds
            elif kind == b"X":
                raise AssertionError(msg[1:].decode())


async def test_fresh_memory_pages_go_as_one_memfd_each(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    blob = os.urandom(3 * MiB + 12345)
    (store / "f.bin").write_bytes(blob)
    box = NodeBox(tmp_path / "node", page_size=MiB, disk=0)  # no disk tier: pages stay in memory
    node = box.open()
    await node.mounts.add("/data", f"file://{store}", {})
    server = ShortCircuitServer(node, str(tmp_path / "local.sock"))
    await server.start()
    try:
        # the clients get their own threads: the node's file:// reads use the default executor
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(6) as clients:
            results = await asyncio.gather(*(loop.run_in_executor(clients, _read, server.path,
                                                                  {"path": "/data/f.bin"}) for _ in range(6)))
        for data, kinds in results:
            assert data == blob
            # 3 whole pages as descriptors; the last 12,345 bytes are below MEMFD_MIN: inline
            assert kinds[:3] == ["F", "F", "F"] and set(kinds[3:]) == {"D"}
        assert len(server._memfds) == 4 - 1  # one memfd per large page, shared by the 6 readers
        data, kinds = await asyncio.to_thread(_read, server.path, {"path": "/data/f.bin", "offset": 10,
                                                                   "length": 1000})
        assert data == blob[10:1010] and kinds == ["D"]
        # more pages than MEMFD_KEEP: the oldest memfds are closed, reads stay right
        big = os.urandom((MEMFD_KEEP + 4) * MiB)
        (store / "big.bin").write_bytes(big)
        data, _ = await asyncio.to_thread(_read, server.path, {"path": "/data/big.bin"})
        assert data == big
        assert len(server._memfds) == MEMFD_KEEP
    finally:
        await server.stop()
        await box.close()
    assert not server._memfds
