"""A real webhook receiver on 127.0.0.1 for tests: records requests, fails or hangs on demand."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when it arrived (time.monotonic)


class Receiver:
    """A tiny HTTP/1.1 webhook receiver that records requests and fails or hangs on demand."""

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self._script: deque[int | None] = deque()  # a status to answer, or None to hang
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.url = ""

    def fail(self, times: int, status: int = 503) -> None:
        """Answer the next `times` requests with `status`; later ones get 200."""
        self._script.extend([status] * times)

    def hang(self, times: int) -> None:
        """Never answer the next `times` requests."""
        self._script.extend([None] * times)

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in filter(None, header_lines):
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(ReceivedRequest(method, path, headers, body))
            status = self._script.popleft() if self._script else 200
            if status is None:
                await self._release.wait()
                return
            phrase = HTTPStatus(status).phrase
            writer.write(f"HTTP/1.1 {status} {phrase}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
