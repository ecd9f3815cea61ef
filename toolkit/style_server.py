"""Serve the Browser style file and guide over HTTP, for `:style URL` and `:play URL` in the
Neo4j Browser.

The Browser fetches the URL from its own page, so the answer needs CORS headers (which
`python -m http.server` does not send); the Browser only fetches from hosts on its
`browser.remote_content_hostname_whitelist`, which holds `localhost` by default.
"""

from __future__ import annotations

import html
import http.server
import re
import threading
from importlib import resources
from typing import Any

STYLE_FILE = "style.grass"
GUIDE_FILE = "guide.html"
SERVED = {STYLE_FILE: "text/plain; charset=utf-8", GUIDE_FILE: "text/html; charset=utf-8"}


def served_file(name: str) -> bytes:
    """A file of `cypher/browser`; the guide gets its `{{NAME.cypher}}` slots filled with
    those queries (comments dropped, HTML-escaped), so each query has one copy."""
    folder = resources.files("toolkit.cypher") / "browser"
    text = (folder / name).read_text()
    if name == GUIDE_FILE:
        def query(match: re.Match[str]) -> str:
            body = (folder / match.group(1)).read_text().splitlines()
            return html.escape("\n".join(line for line in body
                                         if not line.lstrip().startswith("//")))
        text = re.sub(r"\{\{([a-z_]+\.cypher)\}\}", query, text)
    return text.encode()


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
