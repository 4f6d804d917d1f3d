"""A double of Meta's Graph API send endpoints, run as a real HTTP server.

Standard library only: the tests run it inside a ``restobot-local/python``
container on the test's docker network (so n8n reaches it by name) and talk to
its control endpoints through a port published on 127.0.0.1.

* ``POST /{version}/{id}/messages``: recorded; answered with the next scripted
  answer (FIFO), else 200 with a WhatsApp- or Messenger-shaped success body.
* ``POST /alert`` (any other POST): recorded and answered 200 (alert sink).
* ``GET /_control/requests``: everything recorded, oldest first, each with the
  ``status`` it was answered (0: connection closed) and, for an accepted send,
  the ``message_id`` Meta gave it (given when the request arrives: a held answer
  that never reaches the caller is still a message Meta has).
* ``POST /_control/script``: ``{"answers": [{"status": 500, "code": 131000}, ...]}``
  appends answers; ``{"status": 0}`` closes the connection (network error); ``"delay": 4``
  records the request at once and holds its answer back 4 s.
  An answer without ``path`` is for the next ``.../messages`` call; with
  ``"path": "/alert"`` it is for the next POST to that exact path.
* ``POST /_control/reset``: forget requests and scripted answers.

Error bodies have the real Graph API shape:
``{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}``.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ERROR_MESSAGES = {
    100: ("(#100) Invalid parameter", "OAuthException"),
    131000: ("Something went wrong", "OAuthException"),
    130429: ("(#130429) Rate limit hit", "OAuthException"),
    131047: ("(#131047) Re-engagement message", "OAuthException"),
    131026: ("(#131026) Message undeliverable", "OAuthException"),
    190: ("Error validating access token: Session has expired", "OAuthException"),
    2: ("An unexpected error has occurred. Please retry your request later.", "OAuthException"),
}

lock = threading.Lock()
recorded: list[dict] = []
script: list[dict] = []
counter = itertools.count(1)


def error_body(code: int) -> dict:
    message, kind = ERROR_MESSAGES.get(code, (f"(#{code}) Error", "OAuthException"))
    return {"error": {"message": message, "type": kind, "code": code, "error_subcode": 2494010,
                      "fbtrace_id": "AbCdEfGhIjKlMnOp"}}


def next_answer(path: str) -> dict | None:
    """Pop the first scripted answer meant for ``path`` (call with the lock held)."""
    for index, answer in enumerate(script):
        wanted = answer.get("path")
        if wanted == path or (wanted is None and path.endswith("/messages")):
            return script.pop(index)
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self):
        if self.path == "/_control/requests":
            with lock:
                self._send(200, {"requests": list(recorded)})
        else:
            self._send(404, error_body(100))

    def do_POST(self):
        raw = self._body()
        if self.path == "/_control/reset":
            with lock:
                recorded.clear()
                script.clear()
            return self._send(200, {"ok": True})
        if self.path == "/_control/script":
            with lock:
                script.extend(json.loads(raw)["answers"])
            return self._send(200, {"queued": len(script)})
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode(errors="replace")
        whatsapp = isinstance(body, dict) and body.get("messaging_product") == "whatsapp"
        with lock:
            answer = next_answer(self.path)
            status = 200 if answer is None else int(answer.get("status", 200))
            # Meta has the message once it accepted it, whether or not its answer reaches the caller
            message_id = None
            if status == 200 and self.path.endswith("/messages"):
                message_id = f"{'wamid.' if whatsapp else 'm_'}DOUBLE{next(counter):06d}"
            recorded.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                             "content_type": self.headers.get("Content-Type"), "body": body, "status": status,
                             "message_id": message_id})
        if answer is not None and answer.get("delay"):
            time.sleep(float(answer["delay"]))  # the request is recorded, its answer held back
        if answer is not None and answer.get("status") == 0:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if answer is not None and answer.get("status", 200) != 200:
            return self._send(answer["status"], error_body(int(answer.get("code", 131000))))
        if not self.path.endswith("/messages"):
            return self._send(200, {"ok": True})
        if whatsapp:
            return self._send(200, {"messaging_product": "whatsapp",
                                    "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
                                    "messages": [{"id": message_id}]})
        recipient = (body or {}).get("recipient", {}).get("id") if isinstance(body, dict) else None
        return self._send(200, {"recipient_id": recipient, "message_id": message_id})


def main(port: int) -> None:
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
