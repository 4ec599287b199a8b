"""What keeps a hostile client from holding the server's memory or its connections.

- :class:`BodyGuard`, an ASGI middleware, counts a request body's bytes as they arrive (chunked
  or not) and refuses it with 413 once it passes the limit, and with 408 when it has not arrived
  whole within its time; the application sees only bodies that fit.
- :class:`TimedHttpProtocol`, uvicorn's HTTP protocol with a deadline on the request line and
  headers, and a limit on their size: a client that sends them a byte at a time is
  disconnected, and one that sends megabytes of headers is answered 431 and disconnected.
- :func:`bind` takes the port before anything is printed, so a busy port is a clear error.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import UsageError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 64 * 1024  # a request line and headers together


class BodyGuard:
    """Read each HTTP request's body up to ``max_bytes`` within ``timeout_s``, then hand the
    application a replay of it; refuse larger bodies (413) and slower ones (408) without reading on."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout_s: float = BODY_TIMEOUT_S,
        error_body: Callable[[str, int, str], dict] | None = None,
    ) -> None:
        """``error_body(path, status, message)``: the JSON of a refusal, for an API whose errors
        take another shape (default ``{"error": message}``)."""
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.error_body = error_body or (lambda path, status, message: {"error": message})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(
                scope, send, 413, f"request body is {int(declared)} bytes; the limit is {self.max_bytes}"
            )
            return
        chunks, size = [], 0
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                await self._refuse(scope, send, 408, f"the request body did not arrive within {self.timeout_s:.0f} s")
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, send, 413, f"request body is over the limit of {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would say it

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send, status: int, message: str) -> None:
        await _send_refusal(send, status, self.error_body(scope.get("path", ""), status, message))


async def _send_refusal(send: Send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class TimedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request line and headers have not
    all arrived within ``HEADER_TIMEOUT_S`` of the connection or of the request's first byte."""

    header_timeout_s = HEADER_TIMEOUT_S
    max_header_bytes = MAX_HEADER_BYTES

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is not None:  # still reading a request line and headers: count them first
            end = data.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end  # a body after them is BodyGuard's to count
            if self._header_bytes > self.max_header_bytes:
                self._refuse_headers()
                return
        super().data_received(data)

    def _refuse_headers(self) -> None:
        self._disarm()
        payload = json.dumps({"error": f"request headers are over the limit of {self.max_header_bytes} bytes"})
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n{payload}".encode()
        )
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or a UsageError saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "it is in use" if exc.errno == 98 else exc.strerror or str(exc)
        raise UsageError(f"cannot serve on {host}:{port}: {reason}; choose another --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
