"""The API container's healthcheck against a real server answering /ready."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from chicago_crime.serve import healthcheck


def serve(status: int, body: dict[str, Any]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(("status", "body", "healthy"), [
    (200, {"status": "ready", "model": {"version": "3"}, "registry_reachable": True}, 0),
    (200, {"status": "degraded", "model": {"version": "3"}, "registry_reachable": False}, 0),
    # a fresh platform: the registry answers, no champion yet
    (503, {"status": "unavailable", "model": None, "registry_reachable": True,
           "champion_refused": None, "message": "no champion yet"}, 0),
    # nothing to serve and the registry cannot be read
    (503, {"status": "unavailable", "model": None, "registry_reachable": False,
           "message": "registry unreachable"}, 1),
    # the champion was refused and nothing else is loaded
    (503, {"status": "unavailable", "model": None, "registry_reachable": True,
           "champion_refused": {"version": "4", "reason": "cloudpickle"}}, 1),
    (500, {}, 1),
])
def test_ready_or_waiting_for_a_first_champion(status, body, healthy, capsys) -> None:
    server = serve(status, body)
    try:
        assert healthcheck.main([f"http://127.0.0.1:{server.server_port}/ready"]) == healthy
    finally:
        server.shutdown()
    assert capsys.readouterr().out.startswith("healthy" if healthy == 0 else "unhealthy")


def test_nothing_listening_is_unhealthy(capsys) -> None:
    server = serve(200, {})
    port = server.server_port
    server.shutdown()
    server.server_close()
    assert healthcheck.main([f"http://127.0.0.1:{port}/ready"]) == 1
    assert "unhealthy" in capsys.readouterr().out
