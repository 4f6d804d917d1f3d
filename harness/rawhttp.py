"""A raw HTTP/1.1 client for hostile-request tests: the request bytes go out exactly as given.

Python's http.client and urllib refuse or repair what these tests must send
(raw CR LF in a target, two Content-Length headers, a bare LF inside a header,
an absolute-form target...). Here the caller writes the whole request, this
module only wraps it in TLS (SNI = the public name, chain verified against the
given root) and reads back what the edge answered, within a deadline:

    edge = Edge(("127.0.0.1", 8443), "api.resto.localhost.test", Path("pebble-root.pem"))
    answer = exchange(edge, b"GET /healthz HTTP/1.1\\r\\nHost: api.resto.localhost.test\\r\\n"
                            b"Connection: close\\r\\n\\r\\n")
    answer.status, answer.header("content-type"), answer.body

``answer.status`` is None when the edge closed the connection (or stopped
answering) without a status line; ``answer.outcome`` says which.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import time
import urllib.request
from pathlib import Path

CHUNK = 16 * 1024
MAX_ANSWER_BYTES = 1024 * 1024
# What a peer that hangs up looks like through TLS: a reset, a broken pipe or a TLS EOF.
CLOSED_ERRORS = (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


@dataclasses.dataclass(frozen=True)
class Edge:
    """Where the public edge listens and how to speak TLS to it.

    + address: (host, port) to connect to (the VPS's published 443 on loopback)
    + server_name: SNI and the name the certificate must carry (api.<domain>)
    + ca_file: PEM root the certificate chain must verify against (pebble's)
    """

    address: tuple[str, int]
    server_name: str
    ca_file: Path

    def tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


@dataclasses.dataclass(frozen=True)
class Answer:
    """What came back for one request.

    + outcome: "answered" (a status line was read), "closed" (the edge hung up
      without one) or "timeout" (nothing complete before the deadline)
    + status: the status code, None unless answered
    + headers: (name, value) pairs as received, names lower-cased
    + body: the body (de-chunked), possibly cut at the deadline or size bound
    + after: bytes that came on the connection after this answer (``linger``):
      a second answer means the edge read a second request out of this one
    """

    outcome: str
    status: int | None
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    after: bytes = b""

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name.lower()]
        return ", ".join(values) if values else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def describe(self) -> str:
        """One line for reports: '400 {"error":"bad_request"}' or 'closed without an answer'."""
        if self.status is None:
            return f"{self.outcome} without an answer"
        return f"{self.status} {self.text[:120]!r}"


def exchange(edge: Edge, request: bytes, *, timeout: float = 10.0, linger: float = 0.0) -> Answer:
    """Send ``request`` verbatim over one TLS connection and read the answer (bounded by ``timeout``).

    The request is sent in chunks; when the edge answers before the whole
    request is out (a 413 after the headers of a large body), sending stops and
    the answer is read. ``linger``: seconds to keep reading after the answer
    (``Answer.after``), for requests that may hide a second one.
    """
    deadline = time.monotonic() + timeout
    with (socket.create_connection(edge.address, timeout=timeout) as raw,
          edge.tls_context().wrap_socket(raw, server_hostname=edge.server_name) as tls):
        try:
            early = _send(tls, request, deadline)
        except CLOSED_ERRORS:
            early = b""  # the edge hung up mid-request: whatever it answered first is still readable
        except TimeoutError:
            return Answer("timeout", None)
        answer = _read_answer(tls, early, deadline)
        if linger and answer.status is not None:
            later = _read_until(tls, b"", lambda data: False, time.monotonic() + linger)
            answer = dataclasses.replace(answer, after=later)
        return answer


def _send(tls: ssl.SSLSocket, request: bytes, deadline: float) -> bytes:
    """Send in chunks; stop early when the edge has already answered. Return what it sent back so far."""
    for start in range(0, len(request), CHUNK):
        if start and (early := _early_answer(tls)) is not None:
            return early
        tls.settimeout(max(0.01, deadline - time.monotonic()))
        tls.sendall(request[start:start + CHUNK])
    return b""


def _early_answer(tls: ssl.SSLSocket) -> bytes | None:
    """Application data the edge has already sent; None if none (yet, or it hung up: the next send fails).

    A non-blocking read, not select(): TLS 1.3 session tickets make the socket
    readable without any answer.
    """
    tls.setblocking(False)
    try:
        return tls.recv(CHUNK) or None
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return None
    finally:
        tls.setblocking(True)


def _recv(tls: ssl.SSLSocket, deadline: float) -> bytes | None:
    """Bytes read, b"" at the end of the stream, None at the deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    tls.settimeout(remaining)
    try:
        return tls.recv(CHUNK)
    except CLOSED_ERRORS:
        return b""
    except TimeoutError:
        return None


def _read_answer(tls: ssl.SSLSocket, received: bytes, deadline: float) -> Answer:
    while b"\r\n\r\n" not in received:
        data = _recv(tls, deadline)
        if not data or len(received) > MAX_ANSWER_BYTES:
            return _partial(received, "closed" if data == b"" else "timeout")
        received += data
    head, rest = received.split(b"\r\n\r\n", 1)
    status, reason, headers = _parse_head(head)
    if status is None:
        return Answer("closed", None)
    body = _read_body(tls, dict(headers), rest, deadline)
    return Answer("answered", status, reason, headers, body)


def _partial(received: bytes, outcome: str) -> Answer:
    """Bytes that ended before the blank line: a status line alone still counts as an answer."""
    status, reason, headers = _parse_head(received.split(b"\r\n\r\n", 1)[0])
    if status is None:
        return Answer(outcome, None)
    return Answer("answered", status, reason, headers)


def _parse_head(head: bytes) -> tuple[int | None, str, tuple[tuple[str, str], ...]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return None, "", ()
    headers = tuple((name.strip().lower(), value.strip())
                    for name, _, value in (line.partition(":") for line in lines[1:] if ":" in line))
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


def _read_body(tls: ssl.SSLSocket, headers: dict[str, str], body: bytes, deadline: float) -> bytes:
    if "content-length" in headers and headers["content-length"].isdigit():
        wanted = int(headers["content-length"])
        return _read_until(tls, body, lambda data: len(data) >= wanted, deadline)[:wanted]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _dechunk(_read_until(tls, body, lambda data: data.endswith(b"0\r\n\r\n"), deadline))
    return _read_until(tls, body, lambda data: False, deadline)


def _read_until(tls: ssl.SSLSocket, data: bytes, complete, deadline: float) -> bytes:
    while not complete(data) and len(data) <= MAX_ANSWER_BYTES:
        more = _recv(tls, deadline)
        if not more:
            break
        data += more
    return data


def _dechunk(data: bytes) -> bytes:
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        body, data = body + data[:size], data[size + 2:]
    return body


def fetch_root(roots_url: str, ca_file: Path, path: Path) -> Path:
    """Save the ACME server's issuing root (pebble's roots URL, served over its own TLS) to ``path``."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with urllib.request.urlopen(roots_url, context=context, timeout=10) as answer:
        path.write_bytes(answer.read())
    return path
