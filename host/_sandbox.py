"""What every plugin of a host shares on the wasmtime side: engines, compilation, the epoch ticker, deadlines.

A `Plugin` is handed the `Sandbox` of its host, never the `Host` itself: this is
all it needs to compile a new version and to bound the time of a call.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import threading
import time
from pathlib import Path
from typing import Final

import wasmtime
from wasmtime import _ffi as wasmtime_ffi

from ._cache import ModuleCache
from ._errors import LoadError, StackTooSmall
from ._limits import MAX_INSTANCES, MAX_MEMORIES, MAX_TABLES, Limits
from ._module_check import ModuleInfo, check_binary, check_module

__all__ = [
    "EPOCH_TICK_MS",
    "MAX_WASM_STACK",
    "THREAD_STACK_BYTES",
    "Compiled",
    "Sandbox",
    "Source",
    "check_thread_stack",
    "read_source",
    "stack_checked",
]

#: The epoch ticker's period: a runaway call stops within its deadline plus about one tick.
EPOCH_TICK_MS: Final = 5
_WASM_MAGIC: Final = b"\0asm"
#: The native stack a plugin's wasm may use before it traps with "call stack exhausted" (wasmtime's
#: `max_wasm_stack`, set rather than left to a default that has changed across versions).
MAX_WASM_STACK: Final = 512 * 1024
#: The stack a thread needs to run plugin code. Wasm runs on the calling thread's own stack, and
#: wasmtime checks only that wasm stays within `MAX_WASM_STACK` of where the call began: on a smaller
#: stack, deep recursion reaches the guard page first and the whole process dies of SIGSEGV. The
#: other half is for the import bodies (Python, LMDB, msgpack), which run above the deepest wasm frame.
THREAD_STACK_BYTES: Final = 2 * MAX_WASM_STACK

#: WebAssembly proposals no plugin toolchain we support needs, turned off so that their modules are
#: refused at load: (wasmtime `Config` attribute, the proposal's name, what wasmtime's error says).
#: Kept on: bulk memory, reference types, multi-value, SIMD, sign extension, mutable globals and
#: non-trapping float-to-int, which zig cc, Zig, Rust and AssemblyScript emit.
_DISABLED_PROPOSALS: Final = (
    ("wasm_multi_memory", "multi-memory", "multiple memories"),
    ("wasm_threads", "threads (shared memory)", "shared memor"),
    ("wasm_memory64", "memory64", "memory64"),
    ("wasm_gc", "garbage collection", "gc feature"),
    ("wasm_function_references", "typed function references", "function references"),
    ("wasm_exceptions", "exception handling", "exceptions proposal"),
    ("wasm_tail_call", "tail calls", "tail calls"),
    ("wasm_relaxed_simd", "relaxed SIMD", "relaxed SIMD"),
    ("wasm_custom_page_sizes", "custom page sizes", "custom page sizes"),
    ("wasm_wide_arithmetic", "wide arithmetic", "wide arithmetic"),
    ("wasm_stack_switching", "stack switching", "stack switching"),
)
#: Part of every module cache key: a change to the engine's settings must never reuse an old entry.
_ENGINE_SETTINGS: Final = (
    f"epoch=1;memory_may_move=0;max_wasm_stack={MAX_WASM_STACK};opt=speed;proposals-off="
    + ",".join(attribute for attribute, _, _ in _DISABLED_PROPOSALS)
)


#: The compilers a sandbox may use: Cranelift optimizes (the default); Winch is wasmtime's baseline
#: compiler, 5.6x faster to compile a function-heavy 1.3 MB module (680 ms against 3.8 s) for
#: slower code, which suits `wasmkv dev`'s reloads.
COMPILERS: Final = ("cranelift", "winch")
# wasmtime_strategy_t; wasmtime-py's `Config.strategy` knows only "auto" and "cranelift", so Winch is
# chosen through the C API (tests/test_host_fastpath.py guards the name).
_STRATEGY_WINCH: Final = 2


class _StackChecked(threading.local):
    ok = False


#: `.ok` is True on a thread whose stack `check_thread_stack` found large enough (a hot path reads it inline).
stack_checked = _StackChecked()


def _thread_stack_size() -> int | None:
    """The calling thread's stack size in bytes (glibc's `pthread_getattr_np`); None where unknown."""
    try:
        libc = ctypes.CDLL(None)
        getattr_np = libc.pthread_getattr_np
    except (OSError, AttributeError):
        return None
    getattr_np.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
    libc.pthread_self.restype = ctypes.c_ulong
    libc.pthread_attr_getstacksize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    libc.pthread_attr_destroy.argtypes = [ctypes.c_void_p]
    attr = ctypes.create_string_buffer(256)  # pthread_attr_t: 56 bytes on x86-64, 64 on arm64
    if getattr_np(libc.pthread_self(), attr) != 0:
        return None
    try:
        size = ctypes.c_size_t()
        if libc.pthread_attr_getstacksize(attr, ctypes.byref(size)) != 0:
            return None
        return size.value
    finally:
        libc.pthread_attr_destroy(attr)


def check_thread_stack() -> None:
    """Refuse to run plugin code on a thread whose stack is under `THREAD_STACK_BYTES`.

    Checked once per thread (a thread's stack never changes size); afterwards one attribute read.

    Raises:
        StackTooSmall: naming the thread's stack size, the size needed and how to get it.
    """
    if stack_checked.ok:
        return
    size = _thread_stack_size()
    if size is not None and size < THREAD_STACK_BYTES:
        thread = threading.current_thread()
        raise StackTooSmall(
            f"thread {thread.name!r} has a stack of {size // 1024} KiB; running plugin code needs "
            f"{THREAD_STACK_BYTES // 1024} KiB (wasm runs on the calling thread's stack and may use "
            f"{MAX_WASM_STACK // 1024} KiB of it): call from a thread started after "
            f"threading.stack_size({THREAD_STACK_BYTES}), or raise `ulimit -s` for the main thread"
        )
    stack_checked.ok = True


def _compile_error(name: str, label: str, exc: wasmtime.WasmtimeError) -> LoadError:
    """A load error for a module wasmtime refused, naming the proposal when it is one we turned off."""
    message = str(exc)
    cause = [line.strip() for line in message.strip().splitlines() if line.strip()][-1]
    for _, proposal, says in _DISABLED_PROPOSALS:
        if says in message:
            return LoadError(
                f"plugin {name!r} ({label}) uses the WebAssembly {proposal} proposal, which wasmkv turns off "
                f"for plugins; build it without that feature ({cause})"
            )
    return LoadError(f"plugin {name!r} ({label}) does not compile: {message}")


Source = str | os.PathLike[str] | bytes
"""A plugin module: a path to a `.wasm` or `.wat` file, or the module's bytes (binary or WAT text)."""


def read_source(source: Source) -> tuple[bytes, str]:
    """Return a module's binary WebAssembly and a label for messages.

    Raises:
        LoadError: if the file cannot be read or the text is not valid WAT.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data, label = bytes(source), "<bytes>"
    elif isinstance(source, str) and source.lstrip().startswith("("):
        data, label = source.encode(), "<wat>"
    else:
        path = Path(source)
        label = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LoadError(f"cannot read plugin {label}: {exc.strerror}") from exc
    if data.startswith(_WASM_MAGIC):
        return data, label
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise LoadError(
            f"plugin {label} is not a wasm module: it does not start with the WebAssembly magic bytes "
            "(\\0asm), and it is not WAT text either"
        ) from None
    try:
        return bytes(wasmtime.wat2wasm(text)), label
    except wasmtime.WasmtimeError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines()]
        where = next((line.removeprefix("--> <anon>:") for line in lines if line.startswith("-->")), "")
        reason = (lines[0] if lines else type(exc).__name__) + (f" at line:column {where}" if where else "")
        raise LoadError(f"plugin {label} is not a wasm module, and as WAT text it does not parse: {reason}") from exc


@dataclasses.dataclass(frozen=True, slots=True)
class Compiled:
    """A module compiled and checked for one plugin: the engine it runs on, the module, what the check found."""

    engine: wasmtime.Engine
    module: wasmtime.Module
    info: ModuleInfo


class Sandbox:
    """The engines plugins compile and run on, the module cache, and the epoch ticker that enforces deadlines.

    Thread-safe. `close()` stops the ticker; calls still running then end by
    their deadline only if the ticker runs, so close the plugins first.
    """

    def __init__(self, cache: ModuleCache | None = None, *, compiler: str = "cranelift") -> None:
        if compiler not in COMPILERS:
            raise ValueError(f"compiler must be one of {', '.join(COMPILERS)}, got {compiler!r}")
        self.cache = cache
        self.compiler = compiler
        self._engines: dict[bool, wasmtime.Engine] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="wasmkv-epoch", daemon=True)
        self._ticker.start()

    def engine(self, *, fuel: bool = False) -> wasmtime.Engine:
        """The engine for plugins with (or without) a fuel limit; fuel metering slows compute, so it is separate."""
        with self._lock:
            engine = self._engines.get(fuel)
            if engine is None:
                config = wasmtime.Config()
                config.epoch_interruption = True
                config.consume_fuel = fuel
                for attribute, _, _ in _DISABLED_PROPOSALS:
                    setattr(config, attribute, False)
                # The imports cache the memory's base address; this guarantees it never moves.
                config.memory_may_move = False
                config.max_wasm_stack = MAX_WASM_STACK
                config.cranelift_opt_level = "speed"
                if self.compiler == "winch":
                    wasmtime_ffi.wasmtime_config_strategy_set(config.ptr(), _STRATEGY_WINCH)
                engine = self._engines[fuel] = wasmtime.Engine(config)
            return engine

    def _tick(self) -> None:
        # Ticks on a fixed schedule, so waits do not add up to drift; ticks missed while the thread
        # could not run are skipped, never made up in a burst, which would end calls early.
        period = EPOCH_TICK_MS / 1000
        next_at = time.monotonic() + period
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            for engine in list(self._engines.values()):
                engine.increment_epoch()
            next_at += period
            now = time.monotonic()
            if next_at < now:
                next_at = now + period

    @staticmethod
    def deadline_ticks(limits: Limits) -> int:
        """The epoch deadline, in ticks from now, that ends a call after `limits.deadline_ms`."""
        return Sandbox.deadline_ticks_for(limits.deadline_ms)

    @staticmethod
    def deadline_ticks_for(deadline_ms: float) -> int:
        """The epoch deadline, in ticks from now, that ends a run after `deadline_ms`, never before."""
        # +2: the current tick may be about to end, and the ticker, held off for up to a period
        # under load, fires its next tick early to keep its schedule (seen: a 200 ms call ended
        # at 198.5 ms with +1 while the machine was saturated).
        return math.ceil(deadline_ms / EPOCH_TICK_MS) + 2

    def new_store(self, engine: wasmtime.Engine, limits: Limits, *, kernel: bool = False) -> wasmtime.Store:
        """A wasmtime store for one plugin instance, with every resource it may create capped.

        `kernel` leaves room for the Extism kernel's instance and memory (`host._extism`),
        which the host creates; the plugin's own module is still held to one memory.
        """
        store = wasmtime.Store(engine)
        store.set_limits(
            memory_size=limits.memory_bytes,
            table_elements=limits.table_elements,
            instances=MAX_INSTANCES + kernel,
            tables=MAX_TABLES,
            memories=MAX_MEMORIES + kernel,
        )
        return store

    def arm(self, store: wasmtime.Store, limits: Limits) -> None:
        """Bound a store's next run (a start function during instantiation) by the deadline and fuel."""
        store.set_epoch_deadline(self.deadline_ticks(limits))
        if limits.fuel is not None:
            store.set_fuel(limits.fuel)

    def compile(self, source: Source, *, name: str, limits: Limits, wasi: bool = False) -> Compiled:
        """Compile and check a module for plugin `name` (which may import WASI if `wasi`).

        Raises:
            LoadError: if it is not WebAssembly, breaks the ABI, or starts over its memory limit.
        """
        wasm, label = read_source(source)
        check_binary(wasm, name, label)
        fuel = limits.fuel is not None
        engine = self.engine(fuel=fuel)
        try:
            if self.cache is not None:
                module = self.cache.module(engine, wasm, f"fuel={fuel};compiler={self.compiler};{_ENGINE_SETTINGS}")
            else:
                module = wasmtime.Module(engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise _compile_error(name, label, exc) from exc
        return Compiled(engine, module, check_module(module, wasm, name=name, limits=limits, wasi=wasi))

    def close(self) -> None:
        """Stop the epoch ticker; idempotent."""
        self._stop.set()
        if threading.current_thread() is not self._ticker:
            self._ticker.join()
