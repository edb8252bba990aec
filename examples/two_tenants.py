"""Embed the host in a Python app: two tenants with different quotas run the same counter plugin.

    .venv/bin/python plugins/build.py && .venv/bin/python examples/two_tenants.py

The free tenant may keep 3 keys; the paid one 1,000. When the free tenant's
plugin tries to create a fourth counter, the store refuses with QUOTA_EXCEEDED,
the plugin receives status -4 from `kv.increment` and returns it, and the app
sees a `PluginStatusError` carrying that status. The paid tenant is unaffected.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from wasmkv import host, kv
from wasmkv.abi import Status

COUNTER = Path(__file__).resolve().parent.parent / "plugins" / "build" / "counter.wasm"


def main() -> int:
    """Run the demo; returns the exit status."""
    if not COUNTER.exists():
        print(f"build the sample plugins first: python plugins/build.py ({COUNTER} is missing)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as state, kv.KvStore.open(state) as store, host.Host(store) as wasm_host:
        free = store.tenant("free", kv.Quota(max_keys=3, max_bytes=1024))
        paid = store.tenant("paid", kv.Quota(max_keys=1000, ops_per_second=10_000))
        plugins = {
            tenant.name: wasm_host.load(COUNTER, name=f"counter-{tenant.name}", tenant=tenant)
            for tenant in (free, paid)
        }
        for name, plugin in plugins.items():
            for page in ("home", "about", "pricing", "blog"):
                try:
                    count = plugin.call("hit", page.encode()).decode()
                    print(f"{name:>4}: {page:<8} -> {count}")
                except host.PluginStatusError as exc:
                    print(f"{name:>4}: {page:<8} -> refused: status {exc.status} ({Status(exc.status).name})")
            usage = store.tenant(name).usage()
            print(f"{name:>4}: usage {usage.keys} keys, {usage.bytes} bytes of quota {store.tenant(name).quota}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
