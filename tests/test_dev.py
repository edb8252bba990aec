"""The dev loop: hot reload under load, broken modules, rebuilds from sources, the module cache, the HTTP endpoint."""

from __future__ import annotations

import os
import queue
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from wat import versioned

from wasmkv import host


def replace(path: Path, text: str) -> None:
    """Write a file atomically, as build tools and editors do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def config_text(extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        [dev]
        debounce_ms = 20
        [tenants.acme]
        [plugins.p]
        file = "mod/p.wat"
        tenant = "acme"
        {extra}
        """
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "p.wat").write_text(versioned(0))
    (tmp_path / "wasmkv.toml").write_text(config_text())
    return tmp_path


class Loop:
    """A running DevLoop whose events arrive on a queue, so tests wait on them instead of sleeping."""

    def __init__(self, root: Path) -> None:
        self.config = host.load_config(root / "wasmkv.toml")
        self.host = host.Host.from_loaded_config(self.config)
        self.events: queue.Queue[host.ReloadEvent] = queue.Queue()
        self.loop = host.DevLoop(self.host, self.config, on_event=self.events.put)
        self.loop.start()

    def next_event(self) -> host.ReloadEvent:
        return self.events.get(timeout=30)

    def close(self) -> None:
        self.loop.stop()
        self.host.close()


@pytest.fixture
def loop(project: Path) -> Iterator[Loop]:
    running = Loop(project)
    yield running
    running.close()


def test_reload_under_load_loses_no_call_and_keeps_state(project: Path, loop: Loop) -> None:
    plugin = loop.host.plugin("p")
    answers: list[bytes] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            try:
                answers.append(plugin.call("call"))
            except BaseException as exc:
                failures.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    try:
        for version in range(1, 21):
            replace(project / "mod" / "p.wat", versioned(version))
            event = loop.next_event()
            assert event.ok, event.error
            assert event.plugin == "p" and event.changed == "p.wat"
            # Let the caller see this version before the next write.
            seen = len(answers)
            while len(answers) < seen + 3:
                threading.Event().wait(0.001)
    finally:
        stop.set()
        thread.join()
    assert failures == []
    versions = [int(answer[1:3]) for answer in answers]
    counts = [int.from_bytes(answer[3:11], "little") for answer in answers]
    assert all(answer[:1] == b"v" and len(answer) == 11 for answer in answers)  # every answer is one whole version
    assert versions == sorted(versions) and versions[0] == 0 and versions[-1] == 20
    assert set(versions) == set(range(21))
    assert counts == list(range(1, len(answers) + 1))  # the state lived through every swap


def test_a_broken_module_leaves_the_old_version_serving(project: Path, loop: Loop) -> None:
    plugin = loop.host.plugin("p")
    before = plugin.version
    replace(project / "mod" / "p.wat", "(module (this is not wat")
    event = loop.next_event()
    assert not event.ok
    assert "as WAT text it does not parse" in (event.error or "")
    assert event.version == before
    assert "still serving" in event.line()
    assert plugin.call("call")[:3] == b"v00"
    replace(project / "mod" / "p.wat", '(module (import "kv" "nope" (func)) (memory (export "memory") 1))')
    assert "which the wasmkv ABI does not provide" in (loop.next_event().error or "")
    replace(project / "mod" / "p.wat", versioned(1))
    assert loop.next_event().ok
    assert plugin.call("call")[:3] == b"v01"


def test_a_source_change_with_a_build_command_rebuilds_and_swaps(tmp_path: Path) -> None:
    (tmp_path / "mod").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "version.txt").write_text("0")
    build = tmp_path / "build.py"
    build.write_text(
        "import pathlib, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from wat import versioned\n"
        "v = pathlib.Path('src/version.txt').read_text().strip()\n"
        "if not v.isdigit(): sys.exit('version.txt must hold a number')\n"
        "pathlib.Path('mod/p.wat').write_text(versioned(int(v)))\n"
    )
    (tmp_path / "mod" / "p.wat").write_text(versioned(0))
    (tmp_path / "wasmkv.toml").write_text(
        config_text(f'build = [{sys.executable!r}, "build.py"]\nsources = ["src/*.txt"]')
    )
    running = Loop(tmp_path)
    try:
        replace(tmp_path / "src" / "version.txt", "7")
        event = running.next_event()
        assert event.ok, event.error
        assert event.changed == "version.txt"
        assert running.host.plugin("p").call("call")[:3] == b"v07"
        replace(tmp_path / "src" / "version.txt", "oops")
        failed = running.next_event()
        assert not failed.ok and "version.txt must hold a number" in (failed.error or "")
        assert running.host.plugin("p").call("call")[:3] == b"v07"
    finally:
        running.close()


def test_the_http_endpoint_calls_plugins(project: Path, loop: Loop) -> None:
    server = host.serve_calls(loop.host, "127.0.0.1:0")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{base}/call/p/call", data=b"")) as response:
            assert response.status == 200 and response.read()[:3] == b"v00"
        with urllib.request.urlopen(f"{base}/plugins") as response:
            assert b'"exports": [\n      "call"\n    ]' in response.read()
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(urllib.request.Request(f"{base}/call/p/nope", data=b""))
        assert raised.value.code == 404
        raised.value.close()
    finally:
        server.shutdown()
        server.server_close()


def test_the_watcher_survives_an_unexpected_error_during_a_reload(
    project: Path, loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(self: host.Plugin, source: object) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(host.Plugin, "reload", explode)
    replace(project / "mod" / "p.wat", versioned(1))
    event = loop.next_event()
    assert event.error == "RuntimeError: unexpected"
    monkeypatch.undo()
    replace(project / "mod" / "p.wat", versioned(2))
    assert loop.next_event().ok
    assert loop.host.plugin("p").call("call")[:3] == b"v02"
