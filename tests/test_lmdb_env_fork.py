"""The LMDB environment across fork, a data file that is no file, and opens racing a growing map.

A forked child may not use its parent's environment (LMDB's POSIX locks are not inherited, and locks a
parent thread held stay held): a store opened before the fork fails at once in the child, and the child
opens the store anew. Each fork runs inside a fresh interpreter that bounds the child's run and kills a
hung one, so a hang fails the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import open_refusal, run_python, start_python

from wasmkv import kv

MIB = 1 << 20

#: Opens a store, puts a parent thread in the state `sys.argv[2]` names, forks, and checks in the child that
#: the store opened before the fork raises at once and that opening it again works. The child exits
#: normally (finalizing the interpreter, as a child that returns does); a child not done within 60 s is
#: killed and the run fails.
FORK = """
    import os, signal, sys, threading, time
    from wasmkv import kv

    path, state = sys.argv[1], sys.argv[2]

    def holds_lmdb_lock():  # LMDB's read lock on lock.mdb, held by this very process (F_GETLK shows others only)
        inode = os.stat(os.path.join(path, "lock.mdb")).st_ino
        with open("/proc/locks") as locks:
            rows = [row.split() for row in locks]
        return any(r[1] == "POSIX" and r[4] == str(os.getpid()) and r[5].endswith(f":{inode}") for r in rows)
    store = kv.KvStore.open(path, sweep_interval_s=0.001)  # a sweeper running, which does not survive the fork
    engine = store.engine
    bucket = store.tenant("t").bucket()
    bucket.set("before", b"parent")
    read = engine.reader(kv.Namespace("t", "default"))  # a read path bound before the fork
    stop = threading.Event()
    held = threading.Event()

    def write_forever():
        i = 0
        while not stop.is_set():
            bucket.set("x", str(i).encode())
            i += 1

    def hold_reads():  # as a map growth does: the write lock, reads held off
        with engine._write_lock, engine._reads_held():
            held.set()
            stop.wait()

    if state == "writing":
        thread = threading.Thread(target=write_forever)
        thread.start()
        while not engine._write_lock.locked():
            pass
    else:
        thread = threading.Thread(target=hold_reads)
        thread.start()
        held.wait()
    pid = os.fork()
    if pid == 0:
        started = time.monotonic()
        failures = []
        for name, use in [
            ("get", lambda: bucket.get("before")),
            ("reader", lambda: read(b"before")),
            ("set", lambda: bucket.set("after", b"inherited")),
            ("map_size", lambda: engine.map_size),
        ]:
            try:
                use()
                failures.append(f"{name} worked")
            except kv.BackendUnavailable as exc:
                if str(exc) != (
                    f"the store at {engine.path} was opened before this process forked: "
                    "open it again in the child (KvStore.open)"
                ):
                    failures.append(f"{name}: {exc}")
        again = kv.KvStore.open(path, sweep_interval_s=None)
        if again.tenant("t").bucket().get("before") != b"parent":
            failures.append("the store opened again misses the parent's data")
        again.tenant("t").bucket().set("child", b"wrote")
        if not holds_lmdb_lock():
            failures.append("the store opened again holds no lock on lock.mdb")
        store.close()  # closing the inherited store must leave the new environment and its locks alone
        if not holds_lmdb_lock():
            failures.append("closing the inherited store dropped the new environment's lock on lock.mdb")
        again.tenant("t").bucket().set("child", b"wrote")
        print("child", failures, round(time.monotonic() - started, 1), flush=True)
        sys.exit(0)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    if done == (0, 0):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print("child hung", flush=True)
    else:
        print("child exit", os.waitstatus_to_exitcode(done[1]), flush=True)
    stop.set()
    thread.join()
    print("parent reads", bucket.get("child"), flush=True)
    store.close()
"""


@pytest.mark.parametrize("state", ["writing", "growing"])
def test_a_store_opened_before_a_fork_fails_at_once_in_the_child_which_opens_it_again(
    tmp_path: Path, state: str
) -> None:
    # "writing": a parent thread held the write lock at the fork (the child's first write hung on it for
    # ever, or, the lock free, wrote through an environment holding none of LMDB's locks: a third process
    # reset the lock file and a committed write was lost). "growing": it held reads off, as a map growth
    # does (the child's first read hung). And the child could not open the store again: py-lmdb counted
    # the inherited environment as open in the child.
    done = run_python(FORK, str(tmp_path / "state"), state, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("child [] "), done.stdout
    assert lines[1:] == ["child exit 0", "parent reads b'wrote'"], done.stdout + done.stderr[-3000:]


def test_a_fork_with_no_store_open_leaves_the_child_opening_stores_as_usual(tmp_path: Path) -> None:
    code = """
        import os, sys
        from wasmkv import kv
        kv.KvStore.open(sys.argv[1], sweep_interval_s=None).close()
        pid = os.fork()
        if pid == 0:
            with kv.KvStore.open(sys.argv[1], sweep_interval_s=None) as store:
                store.tenant("t").bucket().set("k", b"child")
            os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        with kv.KvStore.open(sys.argv[1], sweep_interval_s=None) as store:
            print(store.tenant("t").bucket().get("k"))
    """
    done = run_python(code, str(tmp_path / "state"), timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == "b'child'\n"


@pytest.mark.parametrize("writemap", ["None", "False"])
@pytest.mark.parametrize("through_symlink", [False, True])
def test_a_fifo_planted_as_the_data_file_is_one_clear_error_never_a_hang(
    tmp_path: Path, writemap: str, through_symlink: bool
) -> None:
    # LMDB read the FIFO's meta page forever, holding the writemap gate: every other opener waited too.
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    if through_symlink:
        os.mkfifo(tmp_path / "fifo", 0o600)
        os.symlink(tmp_path / "fifo", state / "data.mdb")
    else:
        os.mkfifo(state / "data.mdb", 0o600)
    refusal = open_refusal(state, writemap)
    assert refusal == f"cannot open the store at {state}: data.mdb is not a regular file\n"


#: Fills a plain-mode store with a 1 MiB first map for ever, growing it; says "filling" once it has begun.
FILLER = """
    import sys
    from wasmkv import kv
    with kv.KvStore.open(sys.argv[1], map_size=1 << 20, writemap=False, sweep_interval_s=None) as store:
        bucket = store.tenant("t", kv.Quota(max_keys=10**9, max_bytes=1 << 40)).bucket()
        round = 0
        while True:
            bucket.set_many({f"{round}-{i}": b"v" * 2000 for i in range(20)})
            if round == 0:
                print("filling", flush=True)
            round += 1
"""


def test_opening_a_plain_store_while_another_process_grows_it_never_fails(tmp_path: Path) -> None:
    # lmdb.open begins a transaction: a write past the data size the open had just read made it fail with
    # MDB_MAP_RESIZED (about one open in ten).
    state = tmp_path / "state"
    kv.KvStore.open(state, map_size=MIB, writemap=False, sweep_interval_s=None).close()
    filler = start_python(FILLER, str(state))
    assert filler.stdout is not None  # for the type checker
    failures: list[str] = []
    opens = 0
    try:
        assert filler.stdout.readline() == "filling\n"
        size_before = os.stat(state / "data.mdb").st_size
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            try:
                kv.KvStore.open(state, map_size=MIB, writemap=False, sweep_interval_s=None).close()
            except kv.BackendUnavailable as exc:
                failures.append(str(exc))
            opens += 1
        grown = os.stat(state / "data.mdb").st_size - size_before
    finally:
        filler.kill()
        filler.communicate(timeout=30)
    assert failures == [], f"{len(failures)} of {opens} opens failed, the first: {failures[0]}"
    assert grown > 10 * MIB  # the store grew all along: the opens raced it
