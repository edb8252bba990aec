"""Text from outside (a plugin's log, a module's names, a request's path) made safe for terminals and logs."""

from __future__ import annotations

from typing import Final

__all__ = ["safe_name", "safe_text"]

#: Characters a terminal or a log reader would act on: C0 and C1 controls, DEL, line and paragraph
#: separators, and the bidirectional overrides that can reorder what a line appears to say.
_UNSAFE: Final = frozenset(
    [
        *map(chr, range(0x20)),
        *map(chr, range(0x7F, 0xA0)),
        "\u2028",
        "\u2029",
        *map(chr, range(0x202A, 0x202F)),
        *map(chr, range(0x2066, 0x206A)),
        "\u200e",
        "\u200f",
        "\u061c",
    ]
)


def safe_text(raw: bytes) -> str:
    """Plugin text made safe for a terminal and a line-based log: UTF-8 (invalid bytes replaced),
    every control character escaped (`\\x1b`, `\\n`), so no plugin can move the cursor, set a
    title, or write what looks like another log line."""
    text = raw.decode("utf-8", "replace")
    if text.isprintable():
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if ch in _UNSAFE else ch for ch in text)


def safe_name(name: str) -> str:
    """A name taken from a module or a request, escaped the same way, for use inside a message."""
    return safe_text(name.encode("utf-8", "surrogateescape"))
