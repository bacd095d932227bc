"""Paths resolved beneath a directory, never outside it.

A ``file://`` store must not be a door to the rest of the machine: a symlink
inside it (``etc -> /etc``, ``up -> ../..``, a chain of them, or one swapped in
between a check and the use) must not let a client read or write outside its
root. Every path is therefore resolved by the kernel, in one step, relative to
a descriptor of the root held open, with ``openat2(RESOLVE_BENEATH)`` (Linux
5.6+): symlinks are followed only while they stay beneath the root, ``..``
may not climb out, and ``/proc`` magic links are refused. A resolution that
would leave the root fails with EXDEV, reported as :class:`Escapes`.

Operations on a name itself (create, unlink, rename, mkdir) run on the
descriptor of its parent directory, resolved the same way, with the ``*at``
system calls, which never follow a symlink in the last component.

Without openat2 (older kernels, other systems) each component is opened with
``O_NOFOLLOW`` instead: no symlink is followed at all, which is safe and
stricter.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from typing import Any

SYS_OPENAT2 = 437  # the same number on every Linux architecture
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
_LONG = 4000  # paths from this long on are opened in stretches (PATH_MAX is 4,096 with its NUL)


class Escapes(OSError):
    """A path that resolves outside the root."""


class NotRegular(OSError):
    """A FIFO, socket or device node where a regular file's bytes were asked for."""


def reopen(fd: int, flags: int) -> int:
    """A new descriptor, opened with ``flags``, of the very file an ``O_PATH`` descriptor
    holds (through its ``/proc/self/fd`` link: no path is resolved again, so nothing can be
    swapped in between). Without ``/proc``: ENOENT."""
    return os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC | os.O_NOCTTY)


def proc_path(fd: int) -> str:
    """The path of the file held by ``fd`` (any kind, ``O_PATH`` too), for the calls that
    take no descriptor of it (xattrs of an ``O_PATH`` descriptor, chmod)."""
    return f"/proc/self/fd/{fd}"


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _load_syscall() -> Any:
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):  # not a libc we know: component by component
        return None
    syscall.restype = ctypes.c_long
    return syscall


_syscall = _load_syscall()


def _openat2(dirfd: int, path: str, flags: int, mode: int) -> int:
    if not flags & os.O_CREAT and flags & os.O_TMPFILE != os.O_TMPFILE:  # O_TMPFILE holds O_DIRECTORY
        mode = 0  # openat2 refuses a mode it would not use (EINVAL)
    how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    fd = int(_syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(path)),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))))
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.EXDEV:
            raise Escapes(err, "the path leads outside the store", path)
        raise OSError(err, os.strerror(err), path)
    return fd


def _nofollow(dirfd: int, path: str, flags: int, mode: int) -> int:
    """The fallback: component by component, no symlink followed (ELOOP -> Escapes)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Escapes(errno.EXDEV, "the path leads outside the store", path)
    cur = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise Escapes(errno.EXDEV, "a symlink on the path is not followed", path) from None
                raise
            os.close(cur)
            cur = nxt
        if not parts:
            return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=cur)
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=cur)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise Escapes(errno.EXDEV, "a symlink on the path is not followed", path) from None
            raise
    finally:
        os.close(cur)


class Beneath:
    """A directory, and paths opened strictly beneath it. Blocking: call from a thread."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._fd = -1
        self._open = _openat2 if _syscall is not None else _nofollow

    def fd(self) -> int:
        """The root's descriptor (opened on first use: the directory may appear later)."""
        if self._fd < 0:
            self._fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._fd

    def _open1(self, dirfd: int, path: str, flags: int, mode: int) -> int:
        try:
            return self._open(dirfd, path, flags, mode)
        except OSError as e:
            if e.errno == errno.ENOSYS and self._open is _openat2:  # a kernel before 5.6
                self._open = _nofollow
                return self._open(dirfd, path, flags, mode)
            raise

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        """``path`` (relative, "" for the root) opened with ``flags``; Escapes if it leaves.

        A path longer than a system call takes (PATH_MAX, 4,096 bytes: a mesh path may be
        longer, a store root below a mount point) is opened a stretch of directories at a
        time, each beneath the one before: stricter than beneath the root (a link in a
        later stretch may not climb back into an earlier one), never looser."""
        path = path or "."
        if len(os.fsencode(path)) < _LONG:
            return self._open1(self.fd(), path, flags, mode)
        parts = path.split("/")
        dirfd, held = self.fd(), []
        try:
            while len(os.fsencode("/".join(parts))) >= _LONG:
                take, n = 0, 0
                for p in parts[:-1]:
                    n += len(os.fsencode(p)) + 1
                    if n >= _LONG:
                        break
                    take += 1
                if not take:
                    raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
                dirfd = self._open1(dirfd, "/".join(parts[:take]), os.O_PATH | os.O_DIRECTORY, 0)
                held.append(dirfd)
                parts = parts[take:]
            return self._open1(dirfd, "/".join(parts), flags, mode)
        finally:
            for fd in held:
                os.close(fd)

    def parent(self, path: str) -> tuple[int, str]:
        """The descriptor of ``path``'s directory (O_PATH) and its last name: for the
        ``*at`` calls, which act on the name itself, never through a symlink."""
        head, _, name = path.strip("/").rpartition("/")
        if not name or name in (".", ".."):
            raise Escapes(errno.EXDEV, "not a name beneath the store", path)
        return self.open(head, os.O_PATH | os.O_DIRECTORY), name

    def at(self, path: str) -> tuple[int, str]:
        """Like :meth:`parent`, and for the root (``""``) its own descriptor and ``"."``:
        the ``*at`` calls then act on the root directory itself."""
        if not path.strip("/"):
            return self.open("", os.O_PATH | os.O_DIRECTORY), "."
        return self.parent(path)

    def stat(self, path: str) -> os.stat_result:
        """The status of what ``path`` names (symlinks followed while beneath)."""
        fd = self.open(path, os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def makedirs(self, path: str) -> None:
        """Create ``path`` and its missing parents, each one beneath the root."""
        done = ""
        for part in [p for p in path.split("/") if p]:
            parent = self.open(done, os.O_PATH | os.O_DIRECTORY)
            try:
                os.mkdir(part, 0o777, dir_fd=parent)
            except FileExistsError:
                pass
            finally:
                os.close(parent)
            done = f"{done}/{part}" if done else part
        if done:  # a file (or a symlink leading out) in the way is an error, not a directory
            os.close(self.open(done, os.O_PATH | os.O_DIRECTORY))

    def open_regular(self, path: str, flags: int) -> tuple[int, os.stat_result]:
        """``path`` (symlinks followed while beneath) opened with ``flags`` only if it is a
        regular file, with its status; IsADirectoryError for a directory, :class:`NotRegular`
        for a FIFO, socket or device, which is never opened for reading or writing (a FIFO
        would block; a device node could be any device of the machine)."""
        pfd = self.open(path, os.O_PATH)
        try:
            st = os.fstat(pfd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegular(errno.EINVAL, "not a regular file", path)
            return reopen(pfd, flags), st
        finally:
            os.close(pfd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
