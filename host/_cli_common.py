"""What every `wasmkv` command shares: exit codes, one-line failures, logging to stderr, opening the store."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from pathlib import Path
from typing import Final

from .. import kv
from ._config import Config, load_config
from ._text import safe_text

__all__ = [
    "DEFAULT_STATE_DIR",
    "EXIT_OK",
    "EXIT_PLUGIN_FAILED",
    "EXIT_PLUGIN_STATUS",
    "EXIT_USAGE",
    "Fail",
    "JsonLines",
    "add_store_options",
    "configure_logging",
    "open_store",
    "os_error",
]

#: Where commands keep the embedded store unless `--state` or `--config` says otherwise.
DEFAULT_STATE_DIR: Final = Path(".wasmkv") / "state"

EXIT_OK: Final = 0
EXIT_PLUGIN_STATUS: Final = 1
EXIT_USAGE: Final = 2
EXIT_PLUGIN_FAILED: Final = 3


class Fail(Exception):
    """A command's failure: one line for the user, and the exit status."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


class _Lines(logging.Formatter):
    """One line per record: a plugin's as `plugin NAME LEVEL: text`, wasmkv's own as `wasmkv: level: text`."""

    def format(self, record: logging.LogRecord) -> str:
        # Records are escaped where a plugin's text enters (`safe_text`); anything else that reaches a
        # terminal through here (a config path, a peer's address) is escaped the same way.
        text = safe_text(record.getMessage().encode("utf-8", "surrogateescape"))
        if record.name.startswith("wasmkv.plugin."):
            return f"plugin {record.name.removeprefix('wasmkv.plugin.')} {record.levelname}: {text}"
        return f"wasmkv: {record.levelname.lower()}: {text}"


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message, pid, and a call's fields when the record has them.

    The fields are those plugin log records carry (plugin, tenant, export, version) and those of
    `wasmkv serve`'s access log (method, path, status, ms). Everything is escaped to ASCII, so no
    text from a plugin or a request can break a line or reorder what a log viewer shows.
    """

    #: Record attributes copied into the object when present (set through `extra=`).
    FIELDS = ("plugin", "tenant", "export", "version", "method", "path", "status", "ms")

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        fields = record.__dict__
        for field in self.FIELDS:
            value = fields.get(field)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


def configure_logging(verbosity: int) -> None:
    """Send wasmkv's logs, plugin logs among them, to stderr: INFO and up, DEBUG with -v, WARNING with -q."""
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Lines())
    root = logging.getLogger("wasmkv")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """`--state DIR|URL` and `--config FILE`, one or the other."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--state",
        metavar="DIR|URL",
        help=f"the store: a directory, or a store URL such as redis+cluster://HOST:PORT?key_prefix=app "
        f"(default: {DEFAULT_STATE_DIR}); a Redis password goes in $WASMKV_REDIS_PASSWORD",
    )
    where.add_argument("--config", type=Path, metavar="FILE", help="use the store and tenants of this wasmkv.toml")


def open_store(args: argparse.Namespace, *, create: bool = True) -> tuple[kv.KvStore, Config | None]:
    """The store `--state` or `--config` names (with the config's tenants created), and the config if any.

    With `create=False` a directory that holds no store is an error rather than a new, empty store.

    Raises:
        Fail: if there is no store at the path, or the URL or config is wrong.
    """
    config_path: Path | None = getattr(args, "config", None)
    if config_path is not None:
        config = load_config(config_path)
        if not create and config.store.path is not None and not _holds_store(config.store.path):
            raise Fail(f"no store at {config.store.path} (from {config_path}); nothing to read")
        return config.open_store(sweep_interval_s=None), config
    state = args.state or str(DEFAULT_STATE_DIR)
    backend, location, _ = kv.backend_for(state)
    if backend.name == "lmdb" and not create and not _holds_store(Path(location)):
        raise Fail(f"no store at {location}; give --state DIR|URL or --config FILE")
    return kv.KvStore.from_url(state, sweep_interval_s=None), None


def _holds_store(path: Path) -> bool:
    return (path / "data.mdb").is_file()


def os_error(exc: OSError) -> str:
    """An OSError as one line: what failed, on which file."""
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"
