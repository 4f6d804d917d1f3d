"""A tiny recording HTTP server on loopback: the upstream behind a gateway under test."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

READINESS_PATH = "/healthz/readiness"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    server: ThreadingHTTPServer
    requests: list[Recorded] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0  # seconds each answer waits (an upstream that is slow to answer)
    # n8n main's GET /healthz/readiness, which the gateway asks before each request: answered
    # here (200 when ready, else 503) and counted, not recorded with the requests.
    ready: bool = True
    readiness_checks: int = 0

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_recorder(host: str = "127.0.0.1") -> Recorder:
    """Record every request; ``host`` is loopback, or the host's side of a docker network the test created."""
    recorder: Recorder

    class Handler(BaseHTTPRequestHandler):
        def handle_any(self) -> None:
            if self.command == "GET" and self.path == READINESS_PATH:
                self.answer_readiness()
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            recorder.requests.append(Recorded(self.command, self.path, dict(self.headers.items()), body))
            if recorder.delay:
                time.sleep(recorder.delay)
            payload = json.dumps({"upstream": "recorder", "path": self.path}).encode()
            self.send_response(recorder.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def answer_readiness(self) -> None:
            recorder.readiness_checks += 1
            payload = json.dumps({"status": "ok" if recorder.ready else "error"}).encode()
            self.send_response(200 if recorder.ready else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = handle_any

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    recorder = Recorder(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return recorder
