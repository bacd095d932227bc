"""``meshfs``: the mesh's global namespace as a local filesystem (FUSE).

    meshfs mount MOUNTPOINT [--endpoint NODE] [--ttl 1] [--max-ttl 300] [--timeout 30] [--allow-other]
                            [--uid N --gid N] [--readahead-kb 1024] [--readahead sequential] [--debug]
    meshfs umount MOUNTPOINT
    meshfs drop-cache MOUNTPOINT

``mount`` runs in the foreground until SIGTERM or SIGINT (or ``meshfs
umount``), then unmounts cleanly; run it under systemd or as a container's
process. It prints ``meshfs: mounted ...`` once the mount serves (the kernel's INIT answered).
``NODE`` is a mesh node (gRPC ``host:port`` or its data directory; default:
``$MESH_ENDPOINT``, then the default data directory). Reads of a node on the
same machine go through its short-circuit socket (page-file descriptors).

Semantics, operation by operation: docs/SEMANTICS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from typing import Any

from meshfs import DROP_CACHE

log = logging.getLogger("meshfs")


def _mount_device(mountpoint: str) -> str | None:
    """``major:minor`` of the filesystem mounted at ``mountpoint`` (from mountinfo, without
    stat-ing it: that would ask our own, not yet running, loop)."""
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4 and parts[4] == mountpoint:
                    found = parts[2]  # the last one: mounts stack
    except OSError:
        return None
    return found


def _set_readahead(mountpoint: str, kb: int) -> None:
    """Let the kernel read ahead ``kb`` KiB on sequential reads (larger FUSE requests)."""
    dev = _mount_device(mountpoint)
    if dev is None or kb <= 0:
        return
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(kb))
    except OSError as e:
        log.info("could not set read-ahead to %d KiB (%s): the kernel's default stays", kb, e)


def _enable_asyncio() -> None:
    """pyfuse3 in asyncio mode, with its ``wait_readable`` made safe to wake twice.

    pyfuse3's own (3.5.0) registers ``future.set_result`` as the /dev/fuse reader and
    removes the reader only from a done-callback, one loop iteration later: on a busy
    loop the reader can fire again first, and asyncio logs "Exception in callback
    Future.set_result(None)" with an InvalidStateError traceback (harmless, but an
    ERROR in the mount's log). Here the reader sets the result only once."""
    import pyfuse3.asyncio as aio

    def wake(future: asyncio.Future[None]) -> None:
        if not future.done():
            future.set_result(None)

    async def wait_readable(fd: Any) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        aio._read_futures[fd].add(future)  # notify_closing fails these when the fd closes
        try:
            loop.add_reader(fd, wake, future)
            future.add_done_callback(lambda _f: loop.remove_reader(fd))
            await future
        finally:
            aio._read_futures[fd].discard(future)
            if not aio._read_futures[fd]:
                del aio._read_futures[fd]

    aio.enable()
    aio.wait_readable = wait_readable  # pyfuse3 looks it up on every wait


async def _serve(args: argparse.Namespace) -> int:
    import pyfuse3

    from meshd.client.base import write_mode
    from meshfs.core import MeshFS
    from meshfs.ops import MeshOps

    _enable_asyncio()
    if args.token_file:
        os.environ["MESH_TOKEN_FILE"] = args.token_file
    mountpoint = os.path.abspath(args.mountpoint)
    core = MeshFS(args.endpoint, ttl=args.ttl, timeout=args.timeout, uid=args.uid, gid=args.gid,
                  max_ttl=args.max_ttl, readahead=args.readahead, staging_dir=args.staging_dir,
                  owners=args.owners, writeback=write_mode(args.write_mode))
    try:
        core.client()  # fail now, with a clear message, if there is no node
    except Exception as e:
        print(f"meshfs: cannot reach the mesh node: {e}", file=sys.stderr)
        return 1
    options = set(pyfuse3.default_options) | {"fsname=meshfs", "subtype=mesh"}
    if args.allow_other:
        options.add("allow_other")
    if args.debug:
        options.add("debug")
    try:
        endpoint = core.client().endpoint

        def ready() -> None:
            # the kernel's FUSE INIT is answered: the mount serves from now on; the answer reset
            # the read-ahead to min(it, 128 KiB), so it is set here, not earlier
            _set_readahead(mountpoint, args.readahead_kb)
            print(f"meshfs: mounted {endpoint} at {mountpoint}", flush=True)

        ops = MeshOps(core, after_init=ready)
        pyfuse3.init(ops, mountpoint, options)
    except RuntimeError as e:
        print(f"meshfs: cannot mount at {mountpoint}: {e}", file=sys.stderr)
        core.close()
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, pyfuse3.terminate)
    try:
        await pyfuse3.main(min_tasks=4, max_tasks=64)
    finally:
        pyfuse3.close(unmount=True)
        core.close()
        print(f"meshfs: unmounted {mountpoint}", flush=True)
    return 0


def _umount(mountpoint: str) -> int:
    r = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"meshfs: {r.stderr.strip() or 'fusermount3 failed'}", file=sys.stderr)
    return r.returncode


def _unescape(field: str) -> str:
    """A mountinfo path field: spaces, tabs, newlines and backslashes are octal escapes."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _mount_of(path: str) -> tuple[str, str, str] | None:
    """``(mount point, fstype, source)`` of the filesystem ``path`` lies on, from mountinfo
    (the longest mount point holding it; the last of equal ones: mounts stack)."""
    target, best = os.path.realpath(path), None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                head, sep, tail = line.partition(" - ")
                fields, rest = head.split(), tail.split()
                if not sep or len(fields) < 5 or len(rest) < 2:
                    continue
                point = _unescape(fields[4])
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and (best is None or len(point) >= len(best[0])):
                    best = (point, rest[0], _unescape(rest[1]))
    except OSError:
        return None
    return best


def is_meshfs(path: str) -> bool:
    """Whether ``path`` lies on a meshfs mount (``fsname=meshfs``, ``subtype=mesh``)."""
    found = _mount_of(path)
    return found is not None and (found[1] == "fuse.mesh" or found[2] == "meshfs")


def _drop_cache(mountpoint: str) -> int:
    if not os.path.exists(mountpoint):
        print(f"meshfs: {mountpoint}: no such file or directory", file=sys.stderr)
        return 1
    if not is_meshfs(mountpoint):
        found = _mount_of(mountpoint)
        on = f" (it is on {found[1]} at {found[0]})" if found else ""
        print(f"meshfs: {mountpoint} is not a meshfs mount{on}: give the directory "
              "`meshfs mount` was started on", file=sys.stderr)
        return 1
    try:
        os.setxattr(mountpoint, DROP_CACHE, b"1")
    except OSError as e:
        print(f"meshfs: {mountpoint}: {e.strerror} (is it a meshfs mount?)", file=sys.stderr)
        return 1
    print(f"dropped cached metadata and pages of {mountpoint}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        import pyfuse3  # noqa: F401
    except ImportError as e:  # a client-only install: `pip install datamesh`
        print(f"meshfs: the FUSE mount needs the fuse extra: pip install 'datamesh[fuse]' ({e})", file=sys.stderr)
        return 2
    p = _parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "debug", False) else logging.INFO,
                        stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "umount":
        return _umount(args.mountpoint)
    from meshd.tls import apply_client_flags

    apply_client_flags(args)
    if args.command == "drop-cache":
        return _drop_cache(args.mountpoint)
    if args.ttl < 0 or args.max_ttl < 0 or args.timeout <= 0:
        p.error("--ttl and --max-ttl must be >= 0 and --timeout > 0")
    if not os.path.exists(args.mountpoint):
        print(f"meshfs: {args.mountpoint}: no such directory (create it first: mkdir -p {args.mountpoint})",
              file=sys.stderr)
        return 1
    if not os.path.isdir(args.mountpoint):
        print(f"meshfs: {args.mountpoint}: not a directory", file=sys.stderr)
        return 1
    return asyncio.run(_serve(args))


def _parser() -> argparse.ArgumentParser:
    from meshd.client.readahead import policy_names

    p = argparse.ArgumentParser(prog="meshfs", description="The mesh's namespace as a local filesystem.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mount", help="mount the mesh at MOUNTPOINT (runs until SIGTERM or umount)")
    m.add_argument("mountpoint")
    m.add_argument("--endpoint", help="mesh node: gRPC host:port or data directory")
    m.add_argument("--token-file", metavar="FILE",
                   help="the credential meshfs presents for every user of the mount (default: $MESH_TOKEN, "
                   "$MESH_TOKEN_FILE, then credentials.json beside the node's endpoints.json)")
    from meshd.tls import add_client_flags

    add_client_flags(m)
    m.add_argument("--ttl", type=float, default=1.0,
                   help="seconds statuses and listings are kept here and in the kernel (default 1); "
                        "longer on mounts whose sync_interval is longer, and an open always "
                        "re-checks a status older than this")
    m.add_argument("--max-ttl", type=float, default=300.0,
                   help="at most this many seconds, whatever a mount's sync_interval (default 300)")
    m.add_argument("--timeout", type=float, default=30.0,
                   help="seconds before a call the mesh does not answer fails with EIO (default 30)")
    m.add_argument("--allow-other", action="store_true", help="let other users use the mount")
    m.add_argument("--owners", choices=("store", "mount"),
                   help="'store': files show the owner and group their store keeps, and new files get the "
                        "caller's (the default when meshfs runs as root); 'mount': every file shows --uid/--gid "
                        "(the default for a user's own mount; chown to anyone else is EPERM)")
    m.add_argument("--uid", type=int, help="owner shown for files whose store keeps none, and for every file "
                                           "with --owners mount (default: this process's user)")
    m.add_argument("--gid", type=int, help="group shown likewise")
    m.add_argument("--staging-dir", help="where files open for writing are staged until committed (default "
                                         "/var/tmp/meshfs-staging-<uid>; needs room for the files being written)")
    m.add_argument("--readahead-kb", type=int, default=1024,
                   help="kernel read-ahead for the mount, KiB (default 1024; 0 keeps the kernel's)")
    m.add_argument("--readahead", default="sequential", choices=policy_names(),
                   help="meshfs's own read-ahead policy (meshd/client/readahead.py): 'sequential' "
                        "(default) fetches page descriptors ahead of sequential readers, 'none' "
                        "fetches exactly what each read asks for")
    m.add_argument("--write-mode", choices=("back", "through"),
                   help="'back': close and fsync return once the node has the bytes on its disk (uploaded "
                        "to the under-store in the background); 'through': once they are in the under-store "
                        "(default: each mount's own write_mode)")
    m.add_argument("--debug", action="store_true", help="log every FUSE request")
    u = sub.add_parser("umount", help="unmount MOUNTPOINT")
    u.add_argument("mountpoint")
    d = sub.add_parser("drop-cache", help="forget cached metadata and pages of a mount")
    d.add_argument("mountpoint")
    return p


if __name__ == "__main__":
    sys.exit(main())
