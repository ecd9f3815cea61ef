"""Serve the Browser style file and guide over HTTP, for `:style URL` and `:play URL` in the
Neo4j Browser.

The Browser fetches the URL from its own page, so the answer needs CORS headers (which
`python -m http.server` does not send); the Browser only fetches from hosts on its
`browser.remote_content_hostname_whitelist`, which holds `localhost` by default.
"""

from __future__ import annotations

import http.server
import threading
from importlib import resources
from typing import Any

STYLE_FILE = "style.grass"
GUIDE_FILE = "guide.html"
SERVED = {STYLE_FILE: "text/plain; charset=utf-8", GUIDE_FILE: "text/html; charset=utf-8"}


def served_file(name: str) -> bytes:
    return (resources.files("toolkit.cypher") / "browser" / name).read_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    def _headers(self, status: int, length: int = 0,
                 kind: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "*")
        self.send_header("Access-Control-Allow-Methods", "GET")
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def do_OPTIONS(self) -> None:  # the CORS preflight
        self._headers(200)

    def do_GET(self) -> None:
        name = self.path.split("?")[0].lstrip("/")
        if name not in SERVED:
            self._headers(404)
            return
        body = served_file(name)
        self._headers(200, len(body), SERVED[name])
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # quiet: the CLI prints what matters
        pass


class StyleServer:
    """A background HTTP server for the style file and guide: `url` is what `:style` takes,
    `guide_url` what `:play` takes."""

    def __init__(self, port: int = 0) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        root = f"http://localhost:{self._server.server_address[1]}"
        self.url = f"{root}/{STYLE_FILE}"
        self.guide_url = f"{root}/{GUIDE_FILE}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StyleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
