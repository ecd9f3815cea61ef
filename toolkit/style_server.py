"""Serve the Browser style file over HTTP so that `:style URL` in the Neo4j Browser loads it.

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


def style_text() -> bytes:
    return (resources.files("toolkit.cypher") / "browser" / STYLE_FILE).read_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    def _headers(self, status: int, length: int = 0) -> None:
        self.send_response(status)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "*")
        self.send_header("Access-Control-Allow-Methods", "GET")
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def do_OPTIONS(self) -> None:  # the CORS preflight
        self._headers(200)

    def do_GET(self) -> None:
        if self.path.split("?")[0] != f"/{STYLE_FILE}":
            self._headers(404)
            return
        body = style_text()
        self._headers(200, len(body))
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # quiet: the CLI prints what matters
        pass


class StyleServer:
    """A background HTTP server for the style file; `url` is what `:style` takes."""

    def __init__(self, port: int = 0) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.url = f"http://localhost:{self._server.server_address[1]}/{STYLE_FILE}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StyleServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
