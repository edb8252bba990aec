"""The ABI is written down in four places; they must agree with `wasmkv.abi`, the one the host runs.

`abi/ABI.md` (for people), `abi/guest/wasmkv.h` (C) and `abi/guest/wasmkv.zig`
(Zig) are parsed here and held against the Python constants: every status code,
every import name, the batch and list limits, the TTL maximum.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wasmkv import abi, kv

ROOT = Path(__file__).resolve().parent.parent
HEADER = (ROOT / "abi" / "guest" / "wasmkv.h").read_text()
ZIG = (ROOT / "abi" / "guest" / "wasmkv.zig").read_text()
ABI_MD = (ROOT / "abi" / "ABI.md").read_text()

STATUSES = {status.name: int(status) for status in abi.Status}
ERRORS = {name: code for name, code in STATUSES.items() if code < 0}
IMPORTS = {(abi.KV_MODULE, name) for name in abi.KV_IMPORTS} | {(abi.HOST_MODULE, name) for name in abi.HOST_IMPORTS}


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).upper()


def test_the_c_header_defines_every_status_with_its_code() -> None:
    found = {name: int(code) for name, code in re.findall(r"#define WASMKV_([A-Z_]+) \(?(-?\d+)\)?", HEADER)}
    assert {name: found.get(name) for name in STATUSES} == STATUSES


def test_the_zig_sdk_maps_every_error_to_its_code() -> None:
    names = re.search(r"pub const Error = error\{(.*?)\};", ZIG, re.S)
    assert names is not None
    declared = {_snake(name) for name in re.findall(r"(\w+),", names.group(1))}
    assert declared == set(ERRORS)
    codes = {_snake(name): int(code) for name, code in re.findall(r"error\.(\w+) => (-\d+),", ZIG)}
    assert codes == ERRORS


def test_abi_md_lists_every_status_with_its_code() -> None:
    rows = {name: int(code) for code, name in re.findall(r"^\| *(-\d+) *\| *`([A-Z_]+)` *\|", ABI_MD, re.M)}
    assert rows == ERRORS


def test_every_sdk_and_abi_md_name_exactly_the_imports_the_host_provides() -> None:
    assert set(re.findall(r'WASMKV__IMPORT\("(\w+)", "(\w+)"\)', HEADER)) == IMPORTS
    assert set(re.findall(r'extern "(\w+)" fn (\w+)\(', ZIG)) == IMPORTS
    documented = set(re.findall(r"^\| `(\w+)` \|", ABI_MD, re.M))
    assert documented == {name for _, name in IMPORTS}


@pytest.mark.parametrize(
    ("name", "value"), [("LIST_MAX_LIMIT", abi.LIST_MAX_LIMIT), ("BATCH_MAX_ITEMS", abi.BATCH_MAX_ITEMS)]
)
def test_the_sdks_limits_are_the_abis(name: str, value: int) -> None:
    assert re.search(rf"#define WASMKV_{name} {value}\b", HEADER)
    assert re.search(rf"pub const {name.lower()} = {value};", ZIG)


def test_abi_md_states_the_ttl_maximum_the_store_enforces() -> None:
    stated = re.search(r"`ttl_ms` must be in 1\.\.([\d,]+)", ABI_MD)
    assert stated is not None
    assert int(stated.group(1).replace(",", "")) == kv.MAX_TTL_MS
