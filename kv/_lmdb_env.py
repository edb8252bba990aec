"""Opening the embedded engine's LMDB environment: its map, its format and its mode.

LMDB forbids opening one environment twice in a process, so every `LmdbStore`
on one directory shares one `Shared` entry of `registry`, opened by
`open_shared`. Opening checks the store's format (recorded in the `meta`
database): an older one is upgraded in place, a newer one refused.

The map: LMDB reserves `map_size` bytes of address space for the data file (64 GiB
unless `KvStore.open(map_size=...)` or `[store] map_size` says otherwise; the file
itself grows only as data is written). A write that finds the map full is undone,
the map doubled and the write run again, up to `max_map_size` (1 TiB, or `map_size`
if larger); past that the write fails with BackendUnavailable and nothing written.
The cap is address space, not disk: a disk that fills first is reported as a full
disk. Other processes on the directory keep their smaller map until a transaction
of theirs finds data beyond it (MDB_MAP_RESIZED), then adopt the size the file
records and carry on.

A writable map (`writemap`, chosen where the filesystem allows: `kv._lmdb_files`)
has LMDB store pages into the map instead of calling pwrite, which makes a write
about twice as fast. Every byte of such a map is allocated on disk before LMDB may
write there (a store into a hole of a full disk would be SIGBUS), so it starts at
`WRITEMAP_START_MAP_BYTES` and grows by the same doubling, each growth allocated
first; an allocation that fails is a BackendUnavailable with nothing written.

A fork: LMDB forbids using an environment in a child process (its POSIX locks are
not inherited, so a third process would take the store for unused and reset its
lock file under the child's writes), and locks a parent thread held at the fork
stay held in the child for ever. So in a child every store opened before the fork
raises BackendUnavailable on its next read or write, and the child opens the
store anew (`_after_fork_in_child`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import importlib
import mmap
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import nullcontext, suppress
from typing import Any, Final, NoReturn, cast

import lmdb

from ._errors import BackendUnavailable, InvalidArgument
from ._lmdb_files import StoreFiles, back_lock_file, data_file_problem, filesystem_of, lock_file_bytes
from ._lmdb_layout import BOX_V2, MAX_LMDB_KEY, SHORT_ROOM, replace, unbox_v2

__all__ = [
    "DEFAULT_MAP_SIZE_BYTES",
    "DEFAULT_MAX_MAP_SIZE_BYTES",
    "MIN_MAP_SIZE_BYTES",
    "STORE_FORMAT",
    "WRITEMAP_START_MAP_BYTES",
    "Shared",
    "map_size_bytes",
    "map_size_problem",
    "open_shared",
    "registry",
    "registry_lock",
    "remap_backed",
    "unmark_writemap",
]

#: The data and lock files are private to the user running the store.
_FILE_MODE: Final = 0o600
#: The layout this code writes. 1: data, expiry and usage (the first release); 2: adds tenant records;
#: 3: long keys each in their own record instead of boxes (see `kv._lmdb_layout`).
STORE_FORMAT: Final = 3
_FORMAT_KEY: Final = b"format"
#: The format record while a process has the store open with a writable map: format 3's layout, which
#: a wasmkv from before writemap refuses as unreadable instead of writing beside the map with pwrite
#: (LMDB forbids the mix). The last such process to close writes `STORE_FORMAT` back.
_WRITEMAP_MARK: Final = b"3w"
#: Address space reserved for the data file; the file itself grows only as data is written.
DEFAULT_MAP_SIZE_BYTES: Final = 64 * 1024**3
#: The smallest map a store opens with.
MIN_MAP_SIZE_BYTES: Final = 1024**2
#: Where a writable map starts (or `map_size` if smaller): every byte of it is allocated on disk, so it
#: starts at what a small store fills (a few MiB) and doubles from there like any map (a remap and a
#: fallocate, about a millisecond, ten times between here and 8 GiB).
WRITEMAP_START_MAP_BYTES: Final = 8 * 1024**2
#: How far a full map doubles at most, unless the store was opened with a larger one.
DEFAULT_MAX_MAP_SIZE_BYTES: Final = 1024**4
#: Far beyond any address space, and small enough that doubling it stays a valid size_t.
_LARGEST_MAP_BYTES: Final = sys.maxsize // 4


def map_size_problem(value: int) -> str | None:
    """What is wrong with `value` as a map size in bytes ("must be ..."), or None if nothing is."""
    if value < MIN_MAP_SIZE_BYTES:
        return f"must be at least {MIN_MAP_SIZE_BYTES} bytes (1 MiB), got {value}"
    if value > _LARGEST_MAP_BYTES:
        return f"must be at most {_LARGEST_MAP_BYTES} bytes, got {value}"
    return None


def map_size_bytes(name: str, value: object) -> int:
    """`value` as a map size: an integer of at least 1 MiB, rounded up to whole pages.

    Raises:
        InvalidArgument: naming `name`, if `value` is not an integer or is out of range.
    """
    if type(value) is not int:
        raise InvalidArgument(f"{name} must be an integer number of bytes, got {value!r}")
    if (problem := map_size_problem(value)) is not None:
        raise InvalidArgument(f"{name} {problem}")
    return -(-value // mmap.PAGESIZE) * mmap.PAGESIZE


@dataclasses.dataclass(slots=True)
class Shared:
    """One LMDB environment and what every LmdbStore open on its directory shares."""

    env: lmdb.Environment
    fsync: bool
    #: Whether LMDB writes through a writable map; then `files` keeps every byte of it allocated.
    writemap: bool
    files: StoreFiles | None
    #: The map size asked for at open (the map itself may have grown since) and the most it grows to.
    map_size: int
    max_map_size: int
    data: lmdb._Database
    expiry: lmdb._Database
    usage: lmdb._Database
    tenants: lmdb._Database
    write_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    #: `readers[0]` is True while reads are held off (for a remap, or a write's abort); then the
    #: thread id of each read transaction of this process in flight (see the module's docstring).
    #: The flag lives in the list so that a read checks it with one index; a read removes its own id.
    readers: list[bool | int] = dataclasses.field(default_factory=lambda: [False])
    #: Held by whoever holds reads off, throughout: a read that finds the flag set waits on it.
    hold_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    opened: int = 0
    #: The stores (kv._lmdb.LmdbStore) open on this entry, which a child process must stop after a fork.
    stores: weakref.WeakSet[Any] = dataclasses.field(default_factory=weakref.WeakSet)


# LMDB forbids opening one environment twice in a process, so every LmdbStore
# on the same directory shares one entry here.
registry_lock = threading.Lock()
registry: dict[str, Shared] = {}


class _ForkedAway:
    """What a store opened before a fork has, in the child, instead of its locks and its environment.

    Entering it (`with`), acquiring it or using it as the environment raises: reads and
    writes wait on the hold and write locks first, so they fail there at once, also
    where a parent thread held those locks at the fork (they stay held in the child).
    """

    __slots__ = ("message",)

    def __init__(self, path: str) -> None:
        self.message = (
            f"the store at {path} was opened before this process forked: open it again in the child (KvStore.open)"
        )

    def __enter__(self) -> NoReturn:
        raise BackendUnavailable(self.message)

    def __exit__(self, *exc_info: object) -> None:
        return None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> NoReturn:
        raise BackendUnavailable(self.message)

    def __getattr__(self, name: str) -> NoReturn:  # as the environment: begin, info, set_mapsize...
        if name.startswith("__"):
            raise AttributeError(name)  # protocols probed by copy, pickle and the like: not the environment's
        raise BackendUnavailable(self.message)


def _after_fork_in_child() -> None:
    """In a child process: empty the registry, so the child opens each store anew, and make every store
    opened before the fork raise BackendUnavailable on its next use.

    Runs with this thread the only one left. Nothing of the parent's environment is closed:
    mdb_env_close here would clear this process's reader slots and close the lock file,
    which drops every POSIX lock the process holds on it (those of the environment the
    child opens anew included), and py-lmdb's close waits for the writes and remaps of
    threads that did not survive the fork. So each stays open, unused, until the child exits.
    """
    if registry_lock.locked():
        # Held by a thread that did not survive the fork (any other holder is gone); a Lock may be
        # released by any thread. The same object stays: kv._lmdb imported it by name.
        registry_lock.release()
    inherited = list(registry.items())
    registry.clear()
    if not inherited:
        return
    _open_anew_after_fork()
    for path, entry in inherited:
        forked = _ForkedAway(path)
        # A read that finds the flag up waits on the hold lock (kv._lmdb `_wait_for_reads`): it raises.
        # This costs reads nothing: they test the flag already, for remaps.
        entry.hold_lock = cast("threading.Lock", forked)
        entry.readers[0] = True
        entry.write_lock = cast("threading.Lock", forked)
        for attributes in _stores_of(entry):
            # Each store took the write lock and the environment when it opened; a write takes the
            # lock first. Closed, so that closing it in the child leaves the registry and the
            # environment alone.
            attributes["_write_lock"] = forked
            attributes["_env"] = forked
            attributes["_closed"] = True
        # Never deallocated, even at exit: py-lmdb would close it (see above).
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(entry.env))
        if entry.files is not None:
            # The child holds no POSIX lock yet (they are not inherited), so closing these drops none; the
            # sidecar's locks belong to the parent's open file description, which the parent keeps open.
            # Closed here, the parent's own close releases its writemap lock instead of the child's copy
            # keeping it until the child exits.
            entry.files.close()


def _stores_of(entry: Shared) -> Iterator[dict[str, Any]]:
    """The attributes of each LmdbStore open on `entry`."""
    for store in list(entry.stores):
        yield store.__dict__


#: Whether py-lmdb's "already open in this process" guard keys environments per process (see below).
_keys_per_process = False


def _open_anew_after_fork() -> None:
    """Let this child open the environments it inherited again, as LMDB requires of a child.

    py-lmdb (3.0 and later) refuses to open files an environment of the process has open,
    identified by `lmdb._envid.env_keys`, and an environment inherited across fork counts
    although LMDB forbids the child to use it; only closing it would forget it, and closing
    it here is what must not happen. So in a child each identity is tagged with the process
    that opens it: what an ancestor opened no longer matches, while two opens in this process
    still do, and are refused as before. An older py-lmdb keys by path and keeps refusing.
    """
    global _keys_per_process  # once per process, in the single thread after a fork
    if _keys_per_process:
        return
    try:
        envid = importlib.import_module("lmdb._envid")
    except ImportError:
        return
    keys_of: Callable[[object, int], tuple[object, ...]] | None = getattr(envid, "env_keys", None)
    if keys_of is None:
        return

    def env_keys(path: object, subdir: int) -> tuple[object, ...]:
        pid = os.getpid()
        return tuple(("wasmkv-pid", pid, key) for key in keys_of(path, subdir))

    setattr(envid, "env_keys", env_keys)  # noqa: B010  # a module attribute mypy does not know of
    _keys_per_process = True


os.register_at_fork(after_in_child=_after_fork_in_child)


_Databases = tuple[lmdb._Database, lmdb._Database, lmdb._Database, lmdb._Database]


def _check_format(
    env: lmdb.Environment, path: str, max_map_size: int, writemap: bool, remap: Callable[[int], None]
) -> _Databases:
    """Record this code's format in a new store, upgrade an older one in place, refuse a newer one.

    With `writemap` the record is `_WRITEMAP_MARK`; without, `STORE_FORMAT` (the mode
    was chosen holding the gate: no other process has the store open with a writable map).
    Runs before the environment is shared, so it may resize the map through `remap` (a size,
    0 for the one the file records): an upgrade that fills it doubles it (up to
    `max_map_size`), and a file another process grew is adopted.
    Returns the handles of the data, expiry, usage and tenants databases.

    Raises:
        BackendUnavailable: if the store was written by a newer wasmkv, or cannot be written.
    """
    while True:
        try:
            return _record_format(env, path, writemap)
        except lmdb.MapResizedError:
            new_size = 0  # another process grew the file since we opened it: adopt the size it records
        except lmdb.MapFullError as exc:
            size = env.info()["map_size"]
            if size >= max_map_size:
                raise BackendUnavailable(f"cannot open the store at {path}: {exc}") from exc
            new_size = min(max_map_size, 2 * size)
        except lmdb.Error as exc:
            raise BackendUnavailable(f"cannot open the store at {path}: {exc}") from exc
        try:
            remap(new_size)
        except lmdb.Error as exc:
            raise BackendUnavailable(f"cannot open the store at {path}: {exc}") from exc


def _record_format(env: lmdb.Environment, path: str, writemap: bool) -> _Databases:
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        raw = txn.get(_FORMAT_KEY, db=meta)
        text = None if raw is None else bytes(raw)
        found = 1 if text is None else STORE_FORMAT if text == _WRITEMAP_MARK else int(text) if text.isdigit() else None
        if found is None or found > STORE_FORMAT:
            shown = "unreadable" if found is None else str(found)
            raise BackendUnavailable(
                f"the store at {path} has store format {shown}, newer than this wasmkv reads "
                f"({STORE_FORMAT}): open it with a newer wasmkv"
            )
        # Format 2 added the (empty) tenants database; format 3 moved long keys out of boxes.
        env.open_db(b"tenants", txn=txn)
        if found < 3:
            _unbox_long_keys(txn, env.open_db(b"data", txn=txn))
        record = _WRITEMAP_MARK if writemap else str(STORE_FORMAT).encode()
        if text != record:
            txn.put(_FORMAT_KEY, record, db=meta)
        # Opened here, once per process: the handles are valid once this transaction commits.
        return (
            env.open_db(b"data", txn=txn),
            env.open_db(b"expiry", txn=txn),
            env.open_db(b"usage", txn=txn),
            env.open_db(b"tenants", txn=txn),
        )


def _unbox_long_keys(txn: lmdb.Transaction, data: lmdb._Database) -> None:
    """Rewrite a format 1 or 2 store's long keys (in boxes, or stored whole) to format 3's layout.

    One pass over the data, once, inside the transaction that records the new format.
    """
    old_keys: list[bytes] = []
    moves: list[tuple[bytes, bytes, bytes]] = []
    for where, stored in txn.cursor(db=data):
        old_key = bytes(where)
        tenant, bucket, rest = old_key.split(b"\0", 2)
        prefix = tenant + b"\0" + bucket + b"\0"
        if stored[0] == BOX_V2:
            old_keys.append(old_key)
            moves.extend((prefix, rest + tail, record) for tail, record in unbox_v2(stored))
        elif len(old_key) > SHORT_ROOM:
            old_keys.append(old_key)
            moves.append((prefix, rest, bytes(stored)))
    for old_key in old_keys:
        txn.delete(old_key, db=data)
    for prefix, key, record in moves:
        replace(txn, data, prefix, key, record)


def open_shared(path: str, fsync: bool, map_size: int, cap: int, writemap: bool | None) -> Shared:
    """Open the environment at `path` in the mode `writemap` asks (None: the safe one), for the whole process.

    Raises:
        BackendUnavailable: if it cannot be opened, or not in the mode asked (another process has
            it open in the other, or the filesystem cannot keep a writable map backed).
    """
    try:
        files: StoreFiles | None = StoreFiles(path, _FILE_MODE)
    except OSError as exc:
        if writemap:
            raise BackendUnavailable(f"cannot open the store at {path} with writemap: {exc.strerror}") from exc
        files = None  # no sidecar or no locks on it (some network filesystems): no writable map either
    try:
        with nullcontext() if files is None else files.gate():
            shared = None
            if files is not None and _choose_writemap(path, files, writemap):
                shared = _open_env(path, fsync, map_size, cap, files, auto=writemap is None)
            if shared is None:
                shared = _open_plain(path, fsync, map_size, cap)
    except BaseException:
        if files is not None:
            files.close()
        raise
    if files is not None and not shared.writemap:
        files.close()  # the gate served its purpose; a store without a writable map needs none of its files
    return shared


def _open_plain(path: str, fsync: bool, map_size: int, cap: int) -> Shared:
    shared = _open_env(path, fsync, map_size, cap, None, auto=False)
    assert shared is not None  # without a writable map it opens or raises
    return shared


def _choose_writemap(path: str, files: StoreFiles, writemap: bool | None) -> bool:
    """Whether to open with a writable map, holding the gate: `writemap` unless that mixes modes.

    Raises:
        BackendUnavailable: if `writemap` asks for the mode other processes do not have the store open in,
            or for a writable map on a filesystem where it may SIGBUS.
    """
    with_map = files.writemap_users()
    # LMDB's own lock says whether anyone has it open; anyone not counted among writable maps has none.
    without_map = not with_map and files.lmdb_users()
    if writemap is False:
        if with_map:
            raise BackendUnavailable(
                f"cannot open the store at {path} without writemap: another process has it open with writemap, "
                "and LMDB forbids mixing the two; open it with writemap=None (adopt the mode) or close the other first"
            )
        return False
    if without_map:
        if writemap:
            raise BackendUnavailable(
                f"cannot open the store at {path} with writemap: another process has it open without, "
                "and LMDB forbids mixing the two; open it with writemap=None (adopt the mode) or close the other first"
            )
        return False
    if with_map:
        return True
    name, in_place = filesystem_of(path)
    if not in_place and writemap:
        raise BackendUnavailable(
            f"cannot open the store at {path} with writemap: it is on {name}, where space allocated up front does "
            "not guarantee later writes (a full disk would be SIGBUS); writemap needs ext4 or tmpfs"
        )
    return in_place


def _open_env(
    path: str, fsync: bool, map_size: int, cap: int, files: StoreFiles | None, *, auto: bool
) -> Shared | None:
    """Open the environment, with a writable map if `files` is given, holding the gate; None if `auto` and the
    writable map's first allocation failed (the caller opens it without one).

    Raises:
        BackendUnavailable: if it cannot be opened or (not `auto`) its map cannot be allocated.
    """
    writemap = files is not None
    try:
        back_lock_file(path, lock_file_bytes(_MAX_READERS), _FILE_MODE)
    except OSError as exc:
        raise BackendUnavailable(
            f"cannot open the store at {path}: the disk cannot hold its {lock_file_bytes(_MAX_READERS)}-byte "
            f"reader table ({exc.strerror}): free space on it, then open it again"
        ) from exc
    first_map = map_size
    if files is not None:
        # At least the file's size: LMDB ftruncates it to the map, which must never cut another process's map.
        first_map = max(min(map_size, WRITEMAP_START_MAP_BYTES), files.data_size())
        if files.data_size() == 0:
            # LMDB writes a new store's first pages with pwrite; allocating them up front would leave zeros it
            # refuses to read. So a plain open creates the store, and the writable map opens it allocated.
            # An empty file counts as none (LMDB initializes it): a creation cut short by kill -9 leaves one.
            _lmdb_open(path, fsync, MIN_MAP_SIZE_BYTES, writemap=False).close()
        try:
            # Before LMDB maps it: its ftruncate to the map then finds the file that long, with real blocks.
            files.allocate_data(first_map)
        except OSError as exc:
            if auto:
                files.forget()
                return None
            raise BackendUnavailable(
                f"cannot open the store at {path} with writemap: the disk cannot hold its {first_map}-byte map "
                f"({exc.strerror}); nothing was written: free space on it, or open it with writemap=False"
            ) from exc
    env = _lmdb_open(path, fsync, first_map, writemap=writemap)
    try:
        if env.max_key_size() != MAX_LMDB_KEY:
            raise BackendUnavailable(f"this LMDB build allows {env.max_key_size()}-byte keys; wasmkv needs 511")
        if files is not None:
            try:
                files.allocate_lock()
            except OSError as exc:
                raise BackendUnavailable(f"cannot open the store at {path} with writemap: {exc.strerror}") from exc

        def remap(size: int) -> None:
            if files is None:
                env.set_mapsize(size)
                return
            try:
                remap_backed(env, files, size)
            except OSError as exc:
                raise BackendUnavailable(
                    f"cannot open the store at {path}: the disk cannot hold its map growing past "
                    f"{env.info()['map_size']} bytes ({exc.strerror}); nothing was written: free space on it"
                ) from exc

        databases = _check_format(env, path, cap, writemap, remap)
        if files is not None:
            # A wasmkv from before writemap may have opened it since we looked; the format it read then was
            # plain, so it writes without the map: leave the store to it.
            if files.lmdb_users() and not files.writemap_users():
                raise BackendUnavailable(
                    f"cannot open the store at {path} with writemap: another process opened it without meanwhile "
                    "(a wasmkv from before writemap?); LMDB forbids mixing the two: retry, or close the other first"
                )
            files.join_writemap_users()
    except BaseException:
        env.close()
        raise
    return Shared(env, fsync, writemap, files, map_size, cap, *databases)


def unmark_writemap(env: lmdb.Environment, files: StoreFiles) -> None:
    """Write `STORE_FORMAT` back over `_WRITEMAP_MARK` if no other process has the store open with a writable map.

    Best effort: a store left marked (a full map, a killed process) is refused only by
    wasmkv versions from before writemap, until this version opens it again.
    """
    with files.gate(), suppress(lmdb.Error, OSError):
        if files.writemap_users():
            return
        with env.begin(write=True) as txn:
            meta = env.open_db(b"meta", txn=txn)
            if txn.get(_FORMAT_KEY, db=meta) == _WRITEMAP_MARK:
                txn.put(_FORMAT_KEY, str(STORE_FORMAT).encode(), db=meta)


#: Reader slots in the lock file: one per read transaction open at once, across every process.
_MAX_READERS: Final = 1024
#: How often an open is tried while other processes keep writing past the size it read.
_OPEN_ATTEMPTS: Final = 20


def _lmdb_open(path: str, fsync: bool, map_size: int, *, writemap: bool) -> lmdb.Environment:
    """The environment at `path`.

    Raises:
        BackendUnavailable: if LMDB cannot open it.
    """
    if (problem := data_file_problem(path)) is not None:
        raise BackendUnavailable(f"cannot open the store at {path}: {problem}")
    attempts_left = _OPEN_ATTEMPTS
    while True:
        try:
            return lmdb.open(
                path,
                map_size=map_size,
                max_dbs=8,
                sync=fsync,
                metasync=fsync,
                writemap=writemap,
                # readahead only helps scans of data that is not cached; point reads dominate.
                readahead=False,
                max_readers=_MAX_READERS,
                mode=_FILE_MODE,
            )
        except lmdb.MapResizedError as exc:
            # The open begins a transaction: another process wrote past the data size the open had just
            # read. Opening again reads the new size; the other grows its map at most by doubling.
            attempts_left -= 1
            if not attempts_left:
                raise BackendUnavailable(f"cannot open the store at {path}: {exc}") from exc
        except lmdb.Error as exc:
            raise BackendUnavailable(f"cannot open the store at {path}: {exc}") from exc


def remap_backed(env: lmdb.Environment, files: StoreFiles, size: int) -> None:
    """Remap a writable map to `size` bytes (0: the size the file has), allocating them first; with no
    transaction of this process open.

    Holds the gate: the file's size is then the largest map of any process (maps
    only grow it), and mapping less would cut it under theirs. On a disk too full
    for the whole growth it grows by less (down to 1 MiB), so that a writable map
    fills a disk about as far as a plain one.

    Raises:
        OSError: if the space cannot be allocated (the map is unchanged).
        lmdb.Error: if the remap fails.
    """
    with files.gate():
        current = max(files.data_size(), env.info()["map_size"])
        target = max(size, current)
        while True:
            try:
                files.allocate_data(target)
                break
            except OSError as exc:
                step = target - current
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or step <= MIN_MAP_SIZE_BYTES:
                    raise
                # A failed allocation may have kept what it got (the file then says how much).
                current = max(current, files.data_size())
                target = current + max(step // 4, MIN_MAP_SIZE_BYTES)
        env.set_mapsize(target)
