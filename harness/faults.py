"""Faults injected into a deployed stack, over the VPS's SSH, as root.

+ ``stop``: ``docker stop`` the service's container for a while, then ``docker start`` it
  (an operator's or a host's doing; docker's restart policy leaves a stopped container alone);
+ ``crash``: SIGKILL the container's main process from the host (an OOM kill, a segfault):
  docker sees it die and its restart policy (``unless-stopped``) must bring it back by itself.

:class:`GraphFault` is the Graph API failing instead: the Meta double answers the next sends
with an error (5xx, 429) or closes the connection without an answer.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

from harness.poll import poll

SERVICES = ("traefik", "nginx", "n8n-main", "n8n-worker", "postgres", "redis")


def container(service: str) -> str:
    return f"resto-{service}-1"


@dataclasses.dataclass(frozen=True)
class Fault:
    service: str
    kind: Literal["stop", "crash"]
    seconds: float = 20.0  # how long a stopped service stays stopped

    def __str__(self) -> str:
        return f"{self.service} {'stopped' if self.kind == 'stop' else 'crashed'}"

    def inject(self, stack) -> None:
        """Break the service; return once it is back (started again, or restarted by docker)."""
        name = container(self.service)
        if self.kind == "stop":
            stack.ssh("docker", "stop", name)
            time.sleep(self.seconds)
            stack.ssh("docker", "start", name)
        else:
            before = restart_count(stack, name)
            pid = stack.ssh("docker", "inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
            stack.ssh("kill", "-KILL", pid)
            poll(lambda: restart_count(stack, name) > before and running(stack, name), timeout=120, interval=1,
                 what=f"docker restarting {name} after its process was killed (restart policy)")


def restart_count(stack, name: str) -> int:
    return int(stack.ssh("docker", "inspect", "--format", "{{.RestartCount}}", name).stdout.strip())


def running(stack, name: str) -> bool:
    return stack.ssh("docker", "inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true"


GRAPH_ERROR_CODES = {429: 130429, 500: 131000, 503: 131016, 0: 0}  # Meta's error codes for each answer


@dataclasses.dataclass(frozen=True)
class GraphFault:
    """The Graph API answers the next ``count`` sends with ``status`` (0: closes the connection)."""

    status: int
    count: int = 6

    def __str__(self) -> str:
        what = "closes the connection" if self.status == 0 else f"answers {self.status}"
        return f"graph api {what} x{self.count}"

    def inject(self, stack) -> None:
        """Queue the failures; return once W3's sends have used them all up."""
        stack.meta.script(*({"status": self.status, "code": GRAPH_ERROR_CODES[self.status]}
                            for _ in range(self.count)))
        poll(lambda: stack.meta.script() == 0, timeout=180, interval=1,
             what=f"W3 sending through the {self} failures")
