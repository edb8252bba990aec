"""uvicorn's httptools protocol with bounds on a request's head, for `wasmkv serve`.

httptools (llhttp) keeps every header byte a client sends (200 MiB of headers cost the
server 200 MiB), and uvicorn waits forever for a request's head. Here the head's bytes
(`MAX_HEAD_BYTES`), its number of headers (`MAX_HEADERS`) and the time to send it
(`HEAD_TIMEOUT_S`) are bounded: past them uvicorn answers 400, or the connection is closed.
Imported only where httptools is installed (uvicorn[standard]); h11 bounds a head itself.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ._serve import HEAD_TIMEOUT_S, MAX_HEAD_BYTES, MAX_HEADERS

__all__ = ["BoundedHttpTools"]


class _HeadTooLarge(Exception):
    """Raised inside the parser's callbacks: httptools wraps it, and uvicorn answers 400 and closes."""


class BoundedHttpTools(HttpToolsProtocol):
    """`HttpToolsProtocol` refusing a head over `MAX_HEAD_BYTES` or `MAX_HEADERS`; too slow a head closes it."""

    _head_bytes = 0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        if len(self.headers) >= MAX_HEADERS:
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        # Between requests uvicorn's keep-alive timeout rules; this one covers the head only.
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()
