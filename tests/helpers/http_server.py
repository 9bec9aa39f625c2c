"""A plain HTTP file server on loopback for tests (a CDN catalog): byte ranges, Last-Modified, no ETag.

Files under /noversion/ are served without Last-Modified either, so nothing identifies their version.
"""

from __future__ import annotations

import os
import re
import threading
from email.utils import formatdate
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def _serve(self, body: bool) -> None:
        rel = self.path.split("?", 1)[0].lstrip("/")
        path = Path(self.directory) / rel.removeprefix("noversion/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, end = 0, len(data) - 1
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if m:
            start = int(m[1]) if m[1] else max(0, len(data) - int(m[2]))
            end = min(int(m[2]), len(data) - 1) if m[1] and m[2] else len(data) - 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if not rel.startswith("noversion/"):
            self.send_header("Last-Modified", formatdate(os.stat(path).st_mtime, usegmt=True))
        self.end_headers()
        if body:
            self.wfile.write(data[start:end + 1])

    def do_GET(self) -> None:
        self._serve(True)

    def do_HEAD(self) -> None:
        self._serve(False)


class FileServer:
    """`with FileServer(folder) as url:` serves `folder` at http://127.0.0.1:PORT."""

    def __init__(self, folder: Path) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Handler(*a, directory=str(folder)))

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
