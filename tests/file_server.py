"""A small HTTP file server on 127.0.0.1 for download tests: Range requests, 404s and dropped connections."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer(ThreadingHTTPServer):
    """Serves ``files`` (URL path -> bytes). ``drops[path]`` lists byte counts after which the next responses
    are cut off (the connection closes early); ``ranges=False`` makes it ignore Range headers like a plain
    server. ``endless`` paths stream zeros without a Content-Length until the client hangs up; ``redirects[path]``
    answers ``302`` to that location. ``requests``
    records ``(path, Range header)`` of every GET, ``authorizations`` their Authorization headers."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.drops: dict[str, list[int]] = {}
        self.ranges = True
        self.endless: set[str] = set()
        self.redirects: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.authorizations: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> FileServer:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        requested_range = self.headers.get("Range")
        self.server.requests.append((self.path, requested_range))
        self.server.authorizations.append(self.headers.get("Authorization"))
        if self.path in self.server.redirects:
            self.send_response(302)
            self.send_header("Location", self.server.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path in self.server.endless:
            self._stream_zeros()
            return
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = int(requested_range.removeprefix("bytes=").rstrip("-")) if requested_range and self.server.ranges else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cuts = self.server.drops.get(self.path)
        if cuts:
            self.wfile.write(body[: cuts.pop(0)])
            self.close_connection = True
        else:
            self.wfile.write(body)

    def _stream_zeros(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.close_connection = True
        try:
            while True:
                self.wfile.write(bytes(1 << 16))
        except OSError:  # the client hung up
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - keep test output quiet
        pass
