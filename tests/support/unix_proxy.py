"""A proxy in front of a Docker engine's unix socket that can make the event stream stall: the
connection stays open, no error comes, and no event is delivered — while every other call
(inspect, list, restart) keeps working. What a half-dead daemon or a wedged proxy looks like."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


async def _call(fn: Callable[[], T]) -> T:
    return fn()


class DockerSocketProxy:
    def __init__(self, upstream: str = "/var/run/docker.sock") -> None:
        self.upstream = upstream
        self.path = Path(tempfile.mkdtemp(prefix="hs-proxy-")) / "docker.sock"
        self._server: asyncio.AbstractServer | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._streams: set[asyncio.StreamWriter] = set()  # open event streams (client side)
        self._stalled: set[asyncio.StreamWriter] = set()

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    async def start(self) -> DockerSocketProxy:
        """Serves from a thread of its own: clients of the proxy may block the caller's loop
        (the Docker SDK is synchronous) without blocking the proxy."""
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()

            async def main() -> None:
                self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
                ready.set()
                await self._closed.wait()
                for writer in list(self._links):
                    writer.transport.abort()
                self._server.close()

            self._closed = asyncio.Event()
            self._loop.run_until_complete(main())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="docker-proxy", daemon=True)
        self._thread.start()
        await asyncio.to_thread(ready.wait, 10)
        return self

    async def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._closed.set)
        await asyncio.to_thread(self._thread.join, 10)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self.path.parent)

    def stall_events(self) -> int:
        """The event streams open now deliver nothing more (new ones work); returns how many."""

        def stall() -> int:
            self._stalled |= self._streams
            return len(self._stalled)

        return asyncio.run_coroutine_threadsafe(_call(stall), self._loop).result(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_writer}
        is_events = asyncio.Event()

        async def client_to_daemon() -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    if b"/events" in data.split(b"\r\n", 1)[0] and b"until=" not in data:
                        is_events.set()
                        self._streams.add(writer)
                    up_writer.write(data)
                    await up_writer.drain()
            up_writer.transport.abort()

        async def daemon_to_client() -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await up_reader.read(65536):
                    if is_events.is_set() and writer in self._stalled:
                        continue  # swallowed: the stream is open and silent
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(client_to_daemon(), daemon_to_client())
        self._links -= {writer, up_writer}
        self._streams.discard(writer)
