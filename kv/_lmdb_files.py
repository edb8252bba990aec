"""The files around an LMDB environment that a writable map (MDB_WRITEMAP) needs: space, a filesystem, a mode lock.

With a writable map LMDB writes pages by storing into the mapping instead of
calling pwrite. It first ftruncates `data.mdb` to the map size, which leaves
the file sparse: a store into a hole on a full disk is not an error but SIGBUS,
and kills the process (py-lmdb issue 161). So in writemap mode:

- Space. Every byte of the map is allocated (`fallocate`) before LMDB may write
  into it: at open and before each map growth. An allocation that fails is one
  clear `BackendUnavailable` and nothing is written.
- The filesystem. Allocation guarantees later stores only where overwriting an
  allocated block never needs a new one: ext4 (which keeps a reserve for
  converting preallocated extents) and tmpfs. Copy-on-write filesystems (btrfs,
  zfs, bcachefs), xfs (a store copied with `cp` shares its blocks by reflink, and
  each first write into a shared block needs a new one, which fallocate does not
  reserve), overlayfs (whose upper layer is unknown here), network and FUSE
  filesystems get no writemap.
- The file never shrinks. LMDB's ftruncate runs at every open and remap, to that
  process's map size, also when the file is larger: a second process mapping less
  than the first would cut the file under the first one's map, and its next store
  there is SIGBUS (beyond end of file, full disk or not). So every open and remap
  maps at least the file's current size, decided under an inter-process lock.
- One mode per store at a time. LMDB forbids mixing processes with and without
  MDB_WRITEMAP on one environment. Byte 1 of the sidecar `writemap.lock` is held
  shared (an open file description lock) by every process that has the store
  open in writemap mode; LMDB's own lock file has byte 0 read-locked by every
  process that has it open at all (any version of wasmkv). Byte 0 of the sidecar
  is held exclusively while a process opens the store or remaps it, so that the
  look at who has it open and the open itself are one step. A store whose
  earlier users have all exited takes whatever mode its next opener picks.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct
import sys
from collections.abc import Iterator
from typing import Final

__all__ = ["StoreFiles", "allocate", "back_lock_file", "data_file_problem", "filesystem_of", "lock_file_bytes"]

#: statfs(2) f_type of the filesystems where an allocated block is rewritten in place.
_IN_PLACE: Final[dict[int, str]] = {0xEF53: "ext4", 0x01021994: "tmpfs"}
#: Others worth naming in a message.
_NAMED: Final[dict[int, str]] = {
    0x9123683E: "btrfs",
    0x58465342: "xfs",
    0x2FC12FC1: "zfs",
    0xCA451A4E: "bcachefs",
    0x794C7630: "overlayfs",
    0xF2F52010: "f2fs",
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0x65735546: "fuse",
    0x858458F6: "ramfs",
}
_SIDECAR: Final = "writemap.lock"
_GATE: Final = 0
_WRITEMAP_USERS: Final = 1
#: struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid (0 for open file description locks).
_FLOCK: Final = "hhqqi4x"

#: Linux only: statfs's layout, fallocate and open file description locks are what this module relies on.
_LINUX: Final = sys.platform.startswith("linux") and hasattr(fcntl, "F_OFD_SETLK")
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_statfs = getattr(_libc, "statfs", None)
_fallocate = getattr(_libc, "fallocate64", None) or getattr(_libc, "fallocate", None)
if _statfs is not None:
    _statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def filesystem_of(path: str) -> tuple[str, bool]:
    """The name of the filesystem under `path`, and whether a preallocated block there is rewritten in place."""
    if not _LINUX or _statfs is None:
        return sys.platform, False
    buffer = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux; f_type comes first
    if _statfs(os.fsencode(path), buffer) != 0:
        return f"unknown ({os.strerror(ctypes.get_errno())})", False
    magic = ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF
    if magic in _IN_PLACE:
        return _IN_PLACE[magic], True
    return _NAMED.get(magic, f"filesystem type {magic:#x}"), False


#: fallocate's mode: reserve the blocks, leave the file's size as it is.
_KEEP_SIZE: Final = 0x01


def allocate(fd: int, size: int, *, keep_size: bool = False) -> None:
    """Give the file behind `fd` real blocks for its first `size` bytes (growing it to `size` if shorter,
    unless `keep_size`: then blocks past its end wait for it to grow over them).

    The kernel's fallocate, never glibc's emulation (which writes a byte per block,
    racing the processes that write into the map).

    Raises:
        OSError: ENOSPC, EFBIG, EDQUOT..., or EOPNOTSUPP where the filesystem cannot allocate.
    """
    if _fallocate is None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    while _fallocate(fd, _KEEP_SIZE if keep_size else 0, 0, size) != 0:
        code = ctypes.get_errno()
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code))


def lock_file_bytes(max_readers: int) -> int:
    """The size LMDB gives its lock file for `max_readers` readers: its 192-byte header (MDB_txninfo,
    holding the first reader) and 64 bytes for each other reader (MDB_reader, a cache line)."""
    return 192 + 64 * (max_readers - 1)


def back_lock_file(directory: str, size: int, mode: int) -> None:
    """Give LMDB's lock file (created if missing) real blocks for its first `size` bytes; call it before
    this process opens the environment.

    Every LMDB process writes its reader slots in that file through a shared map, in either mode. LMDB
    only ftruncates it, so the file is sparse: a new reader slot on a page never written before,
    stored on a full disk, is SIGBUS (reproduced: 1000 read transactions on a full tmpfs). With the
    blocks allocated it never is. Opened and closed here before LMDB takes its locks on the file:
    closing a descriptor of it afterwards would drop them.

    The file's size stays as it is: LMDB's first opener ftruncates it to its reader table, over the
    blocks reserved here; a later one counts its slots from the size it finds. Growing the file here
    would tell a later opener of more slots than an LMDB program already in has mapped, and that
    program would read past its map (SIGSEGV). A longer file (another program's larger table) keeps
    its slots past `size` unreserved: allocating all of a sparse file of any size is not ours to do.

    Raises:
        OSError: ENOSPC, EDQUOT, EFBIG...: the disk cannot hold the file. A filesystem that cannot
            allocate, or a lock file LMDB will refuse anyway (not a regular file), is left to LMDB.
    """
    try:
        # Non-blocking: opening a FIFO planted as lock.mdb would otherwise wait for a peer forever.
        fd = os.open(os.path.join(directory, "lock.mdb"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError:
        return  # LMDB's own open says what is wrong
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        try:
            allocate(fd, size, keep_size=True)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    finally:
        os.close(fd)


def data_file_problem(directory: str) -> str | None:
    """What keeps LMDB from opening the data file in `directory` ("data.mdb is ..."), or None if nothing does.

    LMDB opens `data.mdb` and reads its meta pages with no timeout: a FIFO planted there
    would keep the open waiting for a writer forever (and every other opener of the store
    behind it, waiting for the gate). Followed through symlinks, as LMDB's open follows them.
    A missing file is no problem (LMDB creates it); any other failure to look is left to LMDB.
    """
    try:
        mode = os.stat(os.path.join(directory, "data.mdb")).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else "data.mdb is not a regular file"


def _flock(kind: int, byte: int) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, byte, 1, 0)


def _held_by_others(fd: int, byte: int, *, ofd: bool) -> bool:
    """Whether a lock another holder has on `byte` keeps us from write-locking it (the test takes nothing)."""
    command = fcntl.F_OFD_GETLK if ofd else fcntl.F_GETLK
    answer = fcntl.fcntl(fd, command, _flock(fcntl.F_WRLCK, byte))
    kind: int = struct.unpack(_FLOCK, answer)[0]
    return kind != fcntl.F_UNLCK


class StoreFiles:
    """This process's handles on a store's sidecar lock and, in writemap mode, its data and lock files.

    Raises:
        OSError: if the sidecar cannot be created or locked.
    """

    def __init__(self, directory: str, mode: int) -> None:
        if not _LINUX:
            raise OSError(errno.EOPNOTSUPP, "open file description locks are Linux only")
        self.directory = directory
        self._sidecar = os.open(os.path.join(directory, _SIDECAR), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        self._data: int | None = None
        self._lock: int | None = None
        self._gate_depth = 0
        try:
            self.writemap_users()  # a filesystem without open file description locks (some network ones) fails here
        except OSError:
            os.close(self._sidecar)
            raise

    @contextlib.contextmanager
    def gate(self) -> Iterator[None]:
        """Hold the store's open-and-remap lock (other processes wait); reentrant within one opening."""
        if self._gate_depth == 0:
            fcntl.fcntl(self._sidecar, fcntl.F_OFD_SETLKW, _flock(fcntl.F_WRLCK, _GATE))
        self._gate_depth += 1
        try:
            yield
        finally:
            self._gate_depth -= 1
            if self._gate_depth == 0:
                fcntl.fcntl(self._sidecar, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, _GATE))

    def writemap_users(self) -> bool:
        """Whether another process has the store open in writemap mode (look holding the gate)."""
        return _held_by_others(self._sidecar, _WRITEMAP_USERS, ofd=True)

    def lmdb_users(self) -> bool:
        """Whether any other process has the LMDB environment open, whatever its version or mode.

        LMDB read-locks byte 0 of `lock.mdb` in every process that has it open. Before
        this process opens the environment the file is opened just to look; after, the
        look goes through the descriptor `allocate_lock` keeps, because closing any descriptor
        of a file drops every POSIX lock the process holds on it (LMDB's included).
        """
        if self._lock is not None:
            return _held_by_others(self._lock, 0, ofd=False)
        try:
            # Non-blocking: opening a FIFO planted as lock.mdb for reading would wait for a writer forever.
            fd = os.open(os.path.join(self.directory, "lock.mdb"), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return False
        try:
            return _held_by_others(fd, 0, ofd=False)
        finally:
            os.close(fd)

    def join_writemap_users(self) -> None:
        """Mark this process as having the store open in writemap mode, until `close`."""
        fcntl.fcntl(self._sidecar, fcntl.F_OFD_SETLK, _flock(fcntl.F_RDLCK, _WRITEMAP_USERS))

    def data_size(self) -> int:
        """The data file's size in bytes (0 before it exists)."""
        if self._data is not None:
            return os.fstat(self._data).st_size
        try:
            return os.stat(os.path.join(self.directory, "data.mdb")).st_size
        except FileNotFoundError:
            return 0

    def allocate_data(self, size: int) -> None:
        """Allocate the data file's first `size` bytes (it must exist), growing it to `size` if shorter.

        Raises:
            OSError: if the filesystem cannot.
        """
        if self._data is None:
            self._data = os.open(os.path.join(self.directory, "data.mdb"), os.O_RDWR | os.O_CLOEXEC)
        allocate(self._data, size)

    def allocate_lock(self) -> None:
        """Allocate the whole lock file, whose reader table LMDB writes through a map too; once it is open.

        Raises:
            OSError: if the filesystem cannot.
        """
        if self._lock is None:
            # Kept open until `close`: closing it would drop the POSIX locks LMDB holds on lock.mdb.
            self._lock = os.open(os.path.join(self.directory, "lock.mdb"), os.O_RDWR | os.O_CLOEXEC)
        allocate(self._lock, os.fstat(self._lock).st_size)

    def forget(self) -> None:
        """Close the data and lock files, keeping the sidecar; call after the environment is closed."""
        for fd in (self._lock, self._data):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._lock = self._data = None

    def close(self) -> None:
        """Release every handle and lock; call after the environment is closed."""
        self.forget()
        with contextlib.suppress(OSError):
            os.close(self._sidecar)
