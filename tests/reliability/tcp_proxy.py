"""A small TCP proxy for outage tests: 127.0.0.1:<port> forwards to a target address.

`cut()` closes every proxied connection and stops listening (new connections are
refused); `restore()` listens again on the same port. The proxy runs an asyncio loop
on a daemon thread, so the test's own thread stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from tests.support import free_port

_CHUNK = 64 * 1024


class TcpProxy:
    """Forward 127.0.0.1:port to target_host:target_port until cut()."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.accepted = 0  # connections proxied since start
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy",
                                        daemon=True)

    @classmethod
    def start(cls, target_host: str, target_port: int, port: int | None = None) -> TcpProxy:
        proxy = cls(target_host, target_port, port)
        proxy._thread.start()
        proxy.restore()
        return proxy

    def _run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def open_connections(self) -> int:
        """Client and server sides of the connections proxied right now."""
        return len(self._writers)

    def restore(self) -> None:
        """Listen (again) on the proxy's port."""
        self._run(self._listen())

    def cut(self) -> None:
        """Stop listening and close every proxied connection, both sides, at once."""
        self._run(self._cut())

    def stop(self) -> None:
        """Cut, then end the proxy's thread."""
        if self._thread.is_alive():
            self.cut()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port,
                                                      reuse_address=True)

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
                      ) -> None:
        if self._server is None:  # accepted just before a cut
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self.accepted += 1
        self._writers.update((client_w, server_w))
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        for writer in (client_w, server_w):
            self._writers.discard(writer)
            writer.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
        # One direction ended (EOF or a cut): pass the end on to the other side.
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof() and not writer.transport.is_closing():
                writer.write_eof()
