"""A real OpenAI-compatible embeddings server on loopback that misbehaves on purpose.

Each request to ``/v1/embeddings`` takes the next fault from its script ("ok" once the script
is spent). Vectors are a fixed function of the text, so a test knows what every answer should
hold; the server records every body it was sent, so a test can count what a client paid for.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

FAULTS = (
    "ok",
    "401",
    "429",  # with Retry-After: 1
    "500",
    "503",
    "hang",  # answers only after `hang_s`
    "wrong_dim",
    "wrong_count",
    "nan",
    "not_json",
    "bad_index",
)


def expected_vector(text: str, dim: int) -> np.ndarray:
    """What the server answers for ``text``: a unit vector seeded by the text's CRC."""
    rng = np.random.default_rng(zlib.crc32(text.encode("utf-8")))
    vector = rng.standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


class MisbehavingEndpoint:
    """``with MisbehavingEndpoint(dim=32) as endpoint: endpoint.url`` is a base URL ending in /v1."""

    def __init__(self, dim: int = 32, script: list[str] | None = None, hang_s: float = 30.0) -> None:
        self.dim, self.hang_s = dim, hang_s
        self.script = list(script or [])
        self.bodies: list[dict] = []  # every embeddings request body, in arrival order
        self.faults_served: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def texts_sent(self) -> list[str]:
        return [text for body in self.bodies for text in body.get("input", [])]

    def __enter__(self) -> MisbehavingEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next_fault(self) -> str:
        with self.lock:
            fault = self.script.pop(0) if self.script else "ok"
            self.faults_served.append(fault)
            return fault

    def _handler(self):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None, kind="application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str, code: str, headers: dict | None = None) -> None:
                body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
                self._send(status, json.dumps(body).encode(), headers)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._error(404, "this server lists no models", "not_found")

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.endswith("/embeddings"):
                    self._error(404, "no such route", "not_found")
                    return
                with endpoint.lock:
                    endpoint.in_flight += 1
                    endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                try:
                    self._embeddings(body)
                finally:
                    with endpoint.lock:
                        endpoint.in_flight -= 1

            def _embeddings(self, body: dict) -> None:
                fault = endpoint._next_fault()
                if fault == "401":
                    self._error(401, "Incorrect API key provided", "invalid_api_key")
                    return
                if fault == "429":
                    self._error(429, "Rate limit reached", "rate_limit_exceeded", {"Retry-After": "1"})
                    return
                if fault in ("500", "503"):
                    self._error(int(fault), "The server had an error", "server_error")
                    return
                if fault == "hang":
                    time.sleep(endpoint.hang_s)
                if fault == "not_json":
                    self._send(200, b"<html>upstream gateway error</html>", kind="text/html")
                    return
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                with endpoint.lock:
                    endpoint.bodies.append(body)
                dim = int(body.get("dimensions") or endpoint.dim)
                vectors = [expected_vector(text, endpoint.dim)[:dim] for text in texts]
                if fault == "wrong_dim":
                    vectors = [v[: dim // 2] for v in vectors]
                if fault == "wrong_count":
                    vectors = vectors[:-1]
                if fault == "nan":
                    vectors[0] = np.full_like(vectors[0], np.nan)
                encode = body.get("encoding_format") == "base64"
                data = [
                    {
                        "object": "embedding",
                        "index": 0 if fault == "bad_index" else i,
                        "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if encode else v.tolist(),
                    }
                    for i, v in enumerate(vectors)
                ]
                answer = {
                    "object": "list",
                    "data": data,
                    "model": body.get("model"),
                    "usage": {"prompt_tokens": 0, "total_tokens": 0},
                }
                self._send(200, json.dumps(answer).encode())

        return Handler
