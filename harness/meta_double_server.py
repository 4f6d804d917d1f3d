"""The local stage's stand-in for Meta (Graph API send endpoints) and the alert webhook.

Standard library only. The request recording, scripted answers and Meta-shaped
bodies are those of the workflow tests' double, ``harness/graph_api.py``
(imported, not copied: it must sit beside this file, or be importable as
``harness.graph_api`` from the repository root). This file adds what the
local stage needs on top: two listeners in one process.

* The Graph listener (``--graph-port``, bound to ``--graph-address``): only
  ``POST /{version}/{phone-number-id}/messages`` (WhatsApp),
  ``POST /{version}/{page-id}/messages`` and ``POST [/{version}]/me/messages``
  (Messenger, Instagram), and the alert sink ``POST /alerts``. Anything else gets
  Graph's "unknown path" error; the control endpoints are NOT served there.
* The control listener (``--control-port``): ``GET /_control/requests``,
  ``POST /_control/reset``, ``POST /_control/script`` (graph_api.py's API:
  ``{"answers": [{"status": 429, "code": 130429}, ...]}``). The harness publishes
  it on 127.0.0.1 only; a request reaching it through ``--graph-address`` (the
  address the VPS knows) is refused, so the stack under test cannot drive it.

    python3 meta_double_server.py --graph-port 8080 --control-port 8081 [--graph-address 10.213.7.34]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from http.server import ThreadingHTTPServer

try:  # in the container: graph_api.py is copied beside this file
    import graph_api
except ImportError:  # from the repository root
    from harness import graph_api

SEND_PATH = re.compile(r"^/(v\d+\.\d+/)?(me|\d+)/messages$")
ALERT_PATH = "/alerts"
CONTROL_PREFIX = "/_control/"
UNKNOWN_PATH = {"error": {"message": "Unknown path components", "type": "OAuthException", "code": 2500,
                          "fbtrace_id": "AbCdEfGhIjKlMnOp"}}


def graph_route(path: str) -> str | None:
    """What the Graph listener does with a POST to ``path``: "send", "alert" or None (pure)."""
    path = path.split("?", 1)[0]
    if SEND_PATH.match(path):
        return "send"
    if path == ALERT_PATH:
        return "alert"
    return None


class GraphHandler(graph_api.Handler):
    """Meta's side: send endpoints and the alert sink, recorded; nothing else."""

    def do_GET(self):
        self._send(400, UNKNOWN_PATH)

    def do_POST(self):
        if graph_route(self.path) is None:
            self._body()
            return self._send(400, UNKNOWN_PATH)
        return super().do_POST()


def control_handler(graph_address: str | None):
    class ControlHandler(graph_api.Handler):
        """The tests' side: recorded requests, reset, scripted answers."""

        def _allowed(self) -> bool:
            if graph_address and self.connection.getsockname()[0] == graph_address:
                self._body()
                self._send(403, {"error": "the control API is not served on the Graph address"})
                return False
            if not self.path.startswith(CONTROL_PREFIX):
                self._body()
                self._send(404, {"error": f"control paths start with {CONTROL_PREFIX}"})
                return False
            return True

        def do_GET(self):
            if self._allowed():
                super().do_GET()

        def do_POST(self):
            if self._allowed():
                super().do_POST()

    return ControlHandler


def serve(graph_port: int, control_port: int, graph_address: str = "0.0.0.0") -> None:
    graph = ThreadingHTTPServer((graph_address, graph_port), GraphHandler)
    control = ThreadingHTTPServer(("0.0.0.0", control_port),
                                  control_handler(None if graph_address == "0.0.0.0" else graph_address))
    threading.Thread(target=graph.serve_forever, daemon=True).start()
    print(json.dumps({"graph": f"{graph_address}:{graph_port}", "control": f"0.0.0.0:{control_port}"}), flush=True)
    control.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graph-port", type=int, default=8080)
    parser.add_argument("--control-port", type=int, default=8081)
    parser.add_argument("--graph-address", default="0.0.0.0",
                        help="bind the Graph listener here only (the fixed address on its network)")
    args = parser.parse_args(argv)
    serve(args.graph_port, args.control_port, args.graph_address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
