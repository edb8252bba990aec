"""The `wasmkv` command line: run plugins, develop them, and look after the store and its tenants.

Every command takes `--state DIR|URL` or `--config FILE` for its store, and
`-v`/`-q` for how much of wasmkv's and the plugins' logs reach stderr. A
mistake is one line on stderr saying what was wrong and what to do, and the
exit status says what kind: 0 ok, 1 a plugin's non-zero status, 2 bad usage or
input, 3 a plugin that trapped or timed out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import kv
from ._cli_common import DEFAULT_STATE_DIR, EXIT_USAGE, Fail, configure_logging, os_error
from ._cli_plugins import add_plugin_commands
from ._cli_store import add_store_commands
from ._errors import HostError
from ._serve_cli import add_serve_command
from ._text import safe_name

__all__ = ["DEFAULT_STATE_DIR", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line: what was wrong, and where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wasmkv", description="Run WebAssembly plugins with durable key-value state.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (debug)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="fewer log lines (warnings, then errors)")
    # The same flags after the command (`wasmkv run -v ...`); SUPPRESS keeps the ones given before it.
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_plugin_commands(commands, common)
    add_store_commands(commands, common)
    add_serve_command(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `wasmkv` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    configure_logging(args.verbose - args.quiet)
    try:
        status: int = args.run(args)
        return status
    except Fail as exc:
        print("wasmkv: " + "\n".join(safe_name(line) for line in str(exc).split("\n")), file=sys.stderr)
        return exc.status
    except (HostError, kv.KvError) as exc:
        # One line, whatever a module, a file or a server put into the message.
        print(f"wasmkv: {safe_name(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"wasmkv: {safe_name(os_error(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
