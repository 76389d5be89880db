"""Shared fixtures: small demo datasets drawn once per test session, no network."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from common.demo_data import make_demo_dataset


@pytest.fixture(scope="session")
def flat_root(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("flat") / "toy", images_per_class=20, image_size=48, seed=3)


@pytest.fixture(scope="session")
def presplit_root(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("presplit") / "toy", images_per_class=20, image_size=48,
                             seed=3, layout="presplit")


@pytest.fixture()
def copy_of(tmp_path):
    """Copy a session dataset so a test may damage it."""
    def _copy(root: Path) -> Path:
        return Path(shutil.copytree(root, tmp_path / root.name))
    return _copy


class LoopbackServer:
    """A tiny HTTP server on 127.0.0.1 serving canned responses; records what was asked."""

    def __init__(self):
        import http.server
        import threading

        server = self
        self.routes: dict[str, tuple[int, str, bytes]] = {}
        self.requests: list[tuple[str, str, dict]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                server.requests.append((self.command, self.path, dict(self.headers)))
                status, ctype, body = server.routes.get(self.path, (404, "application/json", b'{"code": 404, "message": "nope"}'))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    srv = LoopbackServer()
    yield srv
    srv.close()
