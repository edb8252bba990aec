"""Fuzzing raw import arguments: whatever a plugin passes, the host answers with a status and survives."""

from __future__ import annotations

from collections.abc import Iterator

import hypothesis.strategies as st
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from wat import Raw, forwarder

from wasmkv import host, kv
from wasmkv.abi import HOST_IMPORTS, KV_IMPORTS, Status

I32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, -1, 7, 65535, 65536, 2**31 - 1, -(2**31)]))
I64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63)]))
VALID = {status.value for status in Status}
IMPORTS = [("kv", name, sig) for name, sig in KV_IMPORTS.items()] + [
    ("host", name, sig) for name, sig in HOST_IMPORTS.items() if name != "log"
]


@pytest.fixture(scope="module")
def raw() -> Iterator[Raw]:
    with kv.KvStore.memory() as store, host.Host(store) as wasm_host:
        quota = kv.Quota(max_keys=50, max_bytes=4096, max_value_bytes=256)
        plugin = wasm_host.load(forwarder(), name="fuzz", tenant=store.tenant("fuzz", quota))
        raw = Raw(plugin)
        raw.write(0, b"default")
        assert raw.call("fwd_kv_open", 0, 7) == 0
        yield raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), which=st.sampled_from(IMPORTS), memory=st.binary(min_size=0, max_size=64))
def test_the_host_survives_any_raw_import_arguments(
    raw: Raw, data: st.DataObject, which: tuple[str, str, tuple[tuple[str, ...], tuple[str, ...]]], memory: bytes
) -> None:
    module, name, (params, _) = which
    raw.write(0, b"default")
    raw.write(16, memory)
    # Half the time keep pointers small, so some calls get past the bounds checks into the store.
    small = st.integers(-4, 200)
    args = [data.draw(I64 if p == "i64" else st.one_of(I32, small)) for p in params]
    result = raw.call(f"fwd_{module}_{name}", *args)
    assert isinstance(result, int)
    assert result >= 0 or result in VALID, (name, args, result)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    request=st.one_of(
        st.binary(max_size=40),
        st.builds(
            msgpack.packb,
            st.recursive(
                st.none()
                | st.booleans()
                | st.integers(-(2**63), 2**64 - 1)
                | st.binary(max_size=8)
                | st.text(max_size=8),
                lambda children: (
                    st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
                ),
                max_leaves=8,
            ),
        ),
    )
)
def test_batch_imports_answer_any_request_with_a_status(raw: Raw, request: bytes) -> None:
    raw.write(100, request)
    for name in ("get_many", "set_many", "delete_many"):
        result = raw.call(f"fwd_kv_{name}", 0, 100, len(request), 2000, 1000)
        assert result >= 0 or result in VALID, (name, request, result)


def test_after_fuzzing_the_plugin_still_works(raw: Raw) -> None:
    raw.write(100, b"ok")
    assert raw.call("fwd_kv_set", 0, 100, 2, 100, 2) in (0, Status.QUOTA_EXCEEDED)
    assert raw.call("fwd_kv_exists", 0, 100, 2) in (0, 1)
    assert raw.plugin.call("noop") == b""
