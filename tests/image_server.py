"""A small HTTP server on loopback that serves images well and badly, for the download tests.

Paths: ``/img.jpg`` a JPEG; ``/drip`` one byte every ``drip_s`` seconds (a server that never
finishes); ``/big`` more bytes than announced limits (Content-Length given); ``/stream-big`` the same
without a Content-Length; ``/redirect?to=URL`` a 302 to URL; ``/status/N`` an empty answer with
status N. Every request's path is recorded in ``hits`` (and ``got_request`` is set).
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from PIL import Image


def jpeg_bytes(size: tuple[int, int] = (320, 240)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (30, 140, 90)).save(out, "JPEG", quality=85)
    return out.getvalue()


@dataclass
class ImageServer:
    url: str
    hits: list[str] = field(default_factory=list)
    got_request: threading.Event = field(default_factory=threading.Event)
    drip_s: float = 2.0
    big_bytes: int = 3 * 1024 * 1024


def _handler(server: ImageServer, image: bytes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            server.hits.append(self.path)
            server.got_request.set()
            parts = urlsplit(self.path)
            # The client may give up (a deadline, a cap, a stop): what the tests want.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._answer(parts.path, parse_qs(parts.query))

        def _answer(self, path: str, query: dict[str, list[str]]) -> None:
            if path == "/img.jpg":
                self._send(200, image, "image/jpeg")
            elif path == "/drip":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(image)))
                self.end_headers()
                for byte in image:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(server.drip_s)
            elif path in ("/big", "/stream-big"):
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                if path == "/big":
                    self.send_header("Content-Length", str(server.big_bytes))
                self.end_headers()
                chunk = b"\0" * 65536
                for _ in range(server.big_bytes // len(chunk)):
                    self.wfile.write(chunk)
            elif path == "/redirect":
                self.send_response(302)
                self.send_header("Location", query["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path.startswith("/status/"):
                self._send(int(path.rsplit("/", 1)[1]), b"", "text/plain")
            else:
                self._send(404, b"", "text/plain")

        def _send(self, status: int, body: bytes, media_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def serve_images(host: str = "127.0.0.1") -> Iterator[ImageServer]:
    """An :class:`ImageServer` on a free port of ``host``, stopped at the end."""
    image = jpeg_bytes()
    httpd = ThreadingHTTPServer((host, 0), BaseHTTPRequestHandler)
    httpd.daemon_threads = True
    server = ImageServer(url=f"http://{host}:{httpd.server_address[1]}")
    httpd.RequestHandlerClass = _handler(server, image)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
