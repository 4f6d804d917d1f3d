"""Faults injected into a deployed stack, over the VPS's SSH, as root.

+ ``stop``: ``docker stop`` the service's container for a while, then ``docker start`` it
  (an operator's or a host's doing; docker's restart policy leaves a stopped container alone);
+ ``crash``: SIGKILL the container's main process from the host (an OOM kill, a segfault):
  docker sees it die and its restart policy (``unless-stopped``) must bring it back by itself.

:class:`GraphFault` is the Graph API failing instead: the Meta double answers the next sends
with an error (5xx, 429), closes the connection without an answer, or accepts them and answers
after W3 has timed out.

:class:`EngineRestart` is the VPS's docker engine restarted (a package upgrade, a daemon.json
change): every container stops with it, and the restart policies alone must bring the stack back.
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


def stack_health(stack) -> dict[str, str]:
    """Each service's container: ``running healthy``, ``running`` (no healthcheck), ``exited``, ...;
    empty while the engine does not answer."""
    names = [container(service) for service in SERVICES]
    answer = stack.ssh("docker", "inspect", "--format",
                       "{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                       *names, check=False)
    if answer.returncode != 0:
        return {}
    states = (line.strip().lstrip("/").split(" ", 1) for line in answer.stdout.splitlines() if line.strip())
    return {name: state.strip() for name, state in states}


def whole_stack_back(states: dict[str, str]) -> bool:
    return len(states) == len(SERVICES) and all(state in ("running healthy", "running") for state in states.values())


ENGINE_RESTART = (
    "service docker stop >/dev/null 2>&1; "
    "i=0; while pidof dockerd >/dev/null && [ $i -lt 120 ]; do sleep 1; i=$((i + 1)); done; "
    "service docker start >/dev/null 2>&1 </dev/null"
)


@dataclasses.dataclass(frozen=True)
class EngineRestart:
    """The VPS's docker engine restarted (through its init script, as a package upgrade does)."""

    def __str__(self) -> str:
        return "docker engine restarted"

    def inject(self, stack) -> None:
        """Restart the engine; return once every service runs (healthy where it has a healthcheck).

        Stop, wait until dockerd has exited, start: as systemd's restart does (the local VPS has
        the sysvinit script, whose own ``restart`` does not wait)."""
        before = stack.ssh("pidof", "dockerd").stdout.strip()
        stack.ssh("sh", "-c", ENGINE_RESTART, timeout=240)
        after = stack.ssh("pidof", "dockerd", check=False).stdout.strip()
        assert after and after != before, f"dockerd was not restarted (pid {before} before, {after or 'none'} after)"
        poll(lambda: stack_health(stack), until=whole_stack_back, timeout=300, interval=2,
             what="every service back after the docker engine restarted (restart policies)")


GRAPH_ERROR_CODES = {429: 130429, 500: 131000, 503: 131016, 0: 0}  # Meta's error codes for each answer


@dataclasses.dataclass(frozen=True)
class GraphFault:
    """The Graph API answers the next ``count`` sends with ``status`` (0: closes the connection), after
    ``delay`` seconds: 200 after 12 s is Meta accepting each reply and answering past W3's 10 s time-out."""

    status: int
    count: int = 6
    delay: float = 0.0

    def __str__(self) -> str:
        what = "closes the connection" if self.status == 0 else f"answers {self.status}"
        late = f" after {self.delay:g} s" if self.delay else ""
        return f"graph api {what}{late} x{self.count}"

    def answer(self) -> dict:
        answer: dict = {"status": self.status}
        if self.status != 200:
            answer["code"] = GRAPH_ERROR_CODES[self.status]
        if self.delay:
            answer["delay"] = self.delay
        return answer

    def inject(self, stack) -> None:
        """Queue the failures; return once W3's sends have used them all up."""
        stack.meta.script(*(self.answer() for _ in range(self.count)))
        poll(lambda: stack.meta.script() == 0, timeout=180, interval=1,
             what=f"W3 sending through the {self} failures")


# Meta accepts each reply but answers after W3's 10 s time-out: W3 takes it for a transient error, and
# Meta's "sent" status for the message must mark it SENT before W3's retry would send it again.
LATE_GRAPH_ANSWERS = GraphFault(200, count=3, delay=12)
