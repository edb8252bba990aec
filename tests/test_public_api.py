"""The public surfaces: sorted `__all__`, every name exported and documented; one import name; layering holds."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import wasmkv
from wasmkv import abi, host, kv


@pytest.mark.parametrize("package", ["wasmkv", "wasmkv.abi", "wasmkv.kv", "wasmkv.host"])
def test_all_is_sorted_and_every_name_exists_with_a_docstring(package: str) -> None:
    module = importlib.import_module(package)
    names = module.__all__
    # isort-style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions.
    assert list(names) == sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
    for name in names:
        value = getattr(module, name)
        if callable(value) and not isinstance(value, int):
            assert value.__doc__, f"{package}.{name} has no docstring"


def test_the_top_level_names_are_the_subpackages_own_objects() -> None:
    assert wasmkv.KvStore is kv.KvStore
    assert wasmkv.Host is host.Host
    assert wasmkv.Status is abi.Status
    assert wasmkv.kv is kv
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = wasmkv.Nope  # type: ignore[attr-defined]


def _loaded(code: str, prefixes: tuple[str, ...]) -> list[str]:
    """Run `code` in a fresh interpreter; the loaded modules that are, or live under, one of `prefixes`."""
    script = (
        f"import sys\n{code}\n"
        f"print(sorted(m for m in sys.modules if any(m == p or m.startswith(p + '.') for p in {prefixes!r})))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return list(eval(out))


@pytest.mark.parametrize(
    ("code", "forbidden"),
    [
        # One import name: nothing of ours lands at top level, whatever is imported.
        ("import wasmkv.host, wasmkv.kv, wasmkv.abi", ("kv", "host", "abi")),
        # `import wasmkv` loads no layer until a name is used.
        ("import wasmkv", ("wasmkv.kv", "wasmkv.host", "wasmtime", "lmdb")),
        # kv never imports the host layer or wasmtime, even through the top-level names.
        ("from wasmkv import KvStore; KvStore.memory().close()", ("wasmkv.host", "wasmtime")),
        # The embedded default never loads redis-py: it is imported only for a Redis URL.
        (
            "from wasmkv import kv; kv.KvStore.from_url('memory:').close(); kv.KvStore.memory().close()",
            ("redis",),
        ),
    ],
)
def test_a_fresh_process_loads_no_module_it_should_not(code: str, forbidden: tuple[str, ...]) -> None:
    assert _loaded(code, forbidden) == []
