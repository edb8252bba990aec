"""The public surfaces: sorted `__all__`, every name exported and documented; layering holds."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["abi", "kv", "host"])
def test_all_is_sorted_and_every_name_exists_with_a_docstring(package: str) -> None:
    module = importlib.import_module(package)
    names = module.__all__
    # isort-style, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions.
    assert list(names) == sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
    for name in names:
        value = getattr(module, name)
        if callable(value) and not isinstance(value, int):
            assert value.__doc__, f"{package}.{name} has no docstring"


@pytest.mark.parametrize(
    ("code", "forbidden"),
    [
        # kv never imports the host layer or wasmtime.
        ("kv.KvStore.memory().close()", ("host", "wasmtime")),
        # The embedded default never loads redis-py: it is imported only for a Redis URL.
        ("kv.KvStore.from_url('memory:').close(); kv.KvStore.memory().close()", ("redis",)),
    ],
)
def test_a_fresh_process_loads_no_module_it_should_not(code: str, forbidden: tuple[str, ...]) -> None:
    script = f"import sys, kv; {code}; print(sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r}))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
