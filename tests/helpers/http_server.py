"""A threaded HTTP server on 127.0.0.1 (HTTPS when given a certificate) whose every GET is answered by a function,
counting the requests of each path: the archive that misbehaves in the tests of the HTTP clients."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"
    nth: int  # which request of its path this is (0: the first)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        owner = self.server.owner
        with owner.lock:
            self.nth = owner.requests[self.path]
            owner.requests[self.path] += 1
            owner.peers.append(self.client_address)
            owner.paths.append(self.path)
        owner.answer(self)

    def head(self, status: int, headers: dict[str, str]) -> None:
        """The status line and ``headers``; the body, if any, is the caller's to write."""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """A whole answer: ``body`` with its Content-Length."""
        self.head(status, {"Content-Length": str(len(body)), **(headers or {})})
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: "Server"

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hangs up on a body it refuses is expected here


class Server:
    """Answers every GET by ``answer(handler)``; ``requests`` counts the requests per path, ``paths`` holds the path
    of each in the order they came, ``peers`` the client's address of each (one per connection used). A context
    manager: ``url`` is set inside."""

    def __init__(self, answer: Callable[[Handler], None], certificate: tuple[Path, Path] | None = None):
        self.answer, self.certificate = answer, certificate
        self.requests: Counter[str] = Counter()
        self.peers: list[tuple[str, int]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def __enter__(self):
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.owner = self
        scheme = "http"
        if self.certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, self.certificate))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.port = self._server.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def total(self) -> int:
        with self.lock:
            return sum(self.requests.values())
