"""Waking up when another process writes a file, without polling: inotify on the
file's directory (a directory watch survives the file being deleted and created again,
as SQLite does with its -wal file). Linux only; `FileWatch.open` returns None where
inotify is missing or out of watches, and the caller falls back to polling."""
from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
from pathlib import Path

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
_MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
_EVENT = struct.Struct("iIII")   # struct inotify_event: wd, mask, cookie, len; then the name

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _init1 = _libc.inotify_init1
    _add_watch = _libc.inotify_add_watch
    _add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
except (OSError, AttributeError):
    _init1 = _add_watch = None


class FileWatch:
    """Changes (writes, attribute changes, creation) of some files of one directory."""

    def __init__(self, fd: int, names: set[bytes]) -> None:
        self.fd = fd
        self.names = names

    @classmethod
    def open(cls, directory: str | Path, names: list[str]) -> "FileWatch | None":
        if _init1 is None:
            return None
        fd = _init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return None
        if _add_watch(fd, os.fsencode(str(directory)), _MASK) < 0:
            os.close(fd)
            return None
        return cls(fd, {os.fsencode(n) for n in names})

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds; True when one of the files changed meanwhile
        (or before, since the watch was opened). Reads every queued event."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return False
        changed = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return changed
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
                changed = changed or name in self.names
                offset += _EVENT.size + length

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
