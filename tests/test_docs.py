"""The docs say what the code does: one C build line everywhere, and a configuration reference that is the loader's."""

from __future__ import annotations

import re
from pathlib import Path

from wasmkv.host._config_keys import reference_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

#: How a C plugin is built, the same wherever the docs say it (tests/test_packaging.py runs it).
C_BUILD = (
    "python -m ziglang cc --target=wasm32-freestanding -nostdlib -Oz -Wl,--no-entry -Wl,--export-dynamic "
    '-Wl,--strip-all -I "$(wasmkv sdk c)" -o hit.wasm hit.c'
)


#: And a WASI reactor, the same wherever the docs say it (tests/test_wasi.py builds plugins so).
C_WASI_BUILD = (
    "python -m ziglang cc --target=wasm32-wasi -mexec-model=reactor -Oz -Wl,--export-dynamic -o greet.wasm greet.c"
)


def test_every_doc_gives_the_one_c_build_line() -> None:
    for doc in (ROOT / "README.md", ROOT / "abi" / "ABI.md", ROOT / "abi" / "guest" / "wasmkv.h"):
        lines = [line for line in doc.read_text().splitlines() if "ziglang cc" in line or "zig cc --target" in line]
        assert lines, f"{doc.name} gives no C build line"
        assert all(line.strip(" *") in (C_BUILD, C_WASI_BUILD) for line in lines), (doc.name, lines)
        assert any(line.strip(" *") == C_BUILD for line in lines), doc.name


def test_the_configuration_reference_is_the_loaders() -> None:
    start = README.index("| table | key | type | default | meaning |")
    table = "\n".join(line for line in README[start:].splitlines() if line.startswith("|"))
    assert table == reference_table()


def test_the_readme_shows_the_new_import_name_only() -> None:
    code = "\n".join(re.findall(r"```python\n(.*?)```", README, re.S))
    assert "from wasmkv import" in code
    assert not re.search(r"^import (kv|host|abi)\b", code, re.M)
