"""Real local servers for channel tests: an HTTP receiver that answers from a script (status and
JSON body, as group robots and SMS gateways do), and an SMTP server (aiosmtpd) that records mail."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from email import message_from_bytes, policy
from email.message import EmailMessage
from http import HTTPStatus
from typing import Any, cast

from aiosmtpd.controller import Controller

from tests.support.webhook_receiver import ReceivedRequest


class ScriptedReceiver:
    """A tiny HTTP/1.1 server on 127.0.0.1 that records requests and answers scripted JSON."""

    def __init__(self, default: Any = None) -> None:
        self.requests: list[ReceivedRequest] = []
        self.default: Any = default
        self.delay = 0.0  # seconds to wait before every answer: a slow receiver
        self._arrived = asyncio.Event()
        self._script: deque[tuple[int, Any]] = deque()
        self._server: asyncio.Server | None = None
        self.url = ""

    def answer(self, *answers: Any, status: int = 200) -> None:
        """Answer the next requests with these JSON bodies (None = empty), in order."""
        self._script.extend((status, body) for body in answers)

    def fail(self, times: int, status: int) -> None:
        """Answer the next `times` requests with `status` and an empty body."""
        self._script.extend([(status, None)] * times)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def wait_for_requests(self, count: int, within: float = 10.0) -> None:
        """Wait until `count` requests have arrived (no more than `within` seconds)."""
        async with asyncio.timeout(within):
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()

    def json(self, index: int = -1) -> Any:
        """The JSON body of a recorded request."""
        return json.loads(self.requests[index].body)

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
            self._arrived.set()
            status, answer = self._script.popleft() if self._script else (200, self.default)
            await asyncio.sleep(self.delay)
            content = b"" if answer is None else json.dumps(answer).encode()
            writer.write(
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(content)}\r\nConnection: close\r\n\r\n".encode()
                + content
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class RecordingSmtpHandler:
    """An aiosmtpd handler that records accepted mail and refuses DATA on demand."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.attempts = 0
        self._script: deque[str] = deque()

    def refuse(self, times: int, reply: str) -> None:
        """Answer the next `times` DATA commands with `reply` (say "451 4.3.0 try later")."""
        self._script.extend([reply] * times)

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.attempts += 1
        if self._script:
            return self._script.popleft()
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.messages.append(cast(EmailMessage, message_from_bytes(envelope.content, policy=policy.default)))
        return "250 OK"


class SmtpServer:
    """aiosmtpd on a free 127.0.0.1 port, in its own thread (aiosmtpd's Controller)."""

    def __init__(self) -> None:
        self.handler = RecordingSmtpHandler()
        self.port = free_port()
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
