"""Faults injected into a deployed stack, over the VPS's SSH, as root.

+ ``stop``: ``docker stop`` the service's container for a while, then ``docker start`` it
  (an operator's or a host's doing; docker's restart policy leaves a stopped container alone);
+ ``crash``: SIGKILL the container's main process from the host (an OOM kill, a segfault):
  docker sees it die and its restart policy (``unless-stopped``) must bring it back by itself.
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
