"""Fault benchmark: Meta-like traffic while one service is stopped or crashes; prints figures, asserts nothing.

    .venv/bin/python bench/bench_faults.py [--seconds 20] [--rate 2] [--only redis] [--graph 500] [--engine] [--demo] [--keep]

For each fault of harness.faults (each service stopped for --seconds, then each crashed and restarted
by docker, then the Graph API answering 500, 429 or closing the connection to 6 sends, or accepting
3 and answering after W3's 10 s time-out, then the
VPS's docker engine restarted), a sender posts signed WhatsApp messages through Traefik at --rate per second and retries
every non-200 answer every 2 s until a 200, as Meta does. Printed per fault: sent, answered 200, the
non-200 answers, stored, duplicates, replied, lost, and the time from the end of the fault to the
first 200 (the intake's recovery time: the figure to shorten).

By default the benchmark deploys its own fresh local VPS (a few minutes); --demo runs against the
stack `scripts/demo` deployed instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import meta_double, vps  # noqa: E402
from harness.deploys import bring_up_stack, stack_names, tear_down_stack, vps_exec  # noqa: E402
from harness.faults import (  # noqa: E402
    GRAPH_ERROR_CODES, LATE_GRAPH_ANSWERS, SERVICES, EngineRestart, Fault, GraphFault)
from harness.traffic import MetaLikeSender, outcome  # noqa: E402
from restobot.secrets import ensure_secrets_file  # noqa: E402
from restobot.settings import load_inventory, read_env_file, secrets_file  # noqa: E402


@dataclasses.dataclass
class DemoStack:
    """The stack `scripts/demo` deployed, with what harness.traffic and harness.faults use."""

    endpoint: Any
    settings: dict[str, Any]
    meta: Any

    def ssh(self, *command: str, check: bool = True, timeout: float = 120):
        return vps_exec(self.endpoint, *command, check=check, timeout=timeout)


def demo_stack() -> DemoStack:
    settings = load_inventory("local", read_env_file(secrets_file("local")))["SETTINGS"]
    return DemoStack(vps.vps_endpoint(), settings, meta_double.recorded_double())


def run(stack, fault: Fault | GraphFault | EngineRestart, rate: float, number: int, before: float = 10.0, after: float = 20.0) -> str:
    sender = MetaLikeSender(stack, rate=rate, sender_prefix=f"34{number:02d}", statuses=True)
    sender.start()
    time.sleep(before)
    fault.inject(stack)
    ended = sender.now()
    time.sleep(after)
    sender.stop()
    return outcome(stack, sender, fault_ended_at=ended).line()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long a stopped service stays stopped")
    parser.add_argument("--rate", type=float, default=2.0, help="messages per second")
    parser.add_argument("--only", choices=SERVICES, action="append", help="only these services (repeatable)")
    parser.add_argument("--kind", choices=("stop", "crash"), action="append", help="only these kinds")
    parser.add_argument("--graph", type=int, choices=sorted({*GRAPH_ERROR_CODES, 200}), action="append",
                        help="the Graph API answering this status to 6 sends (0: closing the connection; 200: "
                             "accepting 3 and answering after W3's time-out); repeatable; alone, only these faults")
    parser.add_argument("--engine", action="store_true",
                        help="the VPS's docker engine restarted; alone, only this fault")
    parser.add_argument("--demo", action="store_true", help="against the stack scripts/demo deployed")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's own stack afterwards")
    args = parser.parse_args(argv)
    services_chosen = args.only or args.kind or not (args.graph or args.engine)
    faults: list[Fault | GraphFault | EngineRestart] = [
        Fault(service, kind, args.seconds) for kind in args.kind or ("stop", "crash")
        for service in args.only or SERVICES] if services_chosen else []
    faults += [LATE_GRAPH_ANSWERS if status == 200 else GraphFault(status)
               for status in args.graph or ((500, 429, 0, 200) if services_chosen else ())]
    faults += [EngineRestart()] if args.engine or not (args.only or args.kind or args.graph) else []
    names = None
    if args.demo:
        stack = demo_stack()
    else:
        ensure_secrets_file(secrets_file("local"))
        names = stack_names("bench-faults")
        print("deploying a fresh local VPS ...", flush=True)
        workdir = Path(tempfile.mkdtemp(prefix="bench-faults-"))
        stack = bring_up_stack(names, workdir, release="bench-faults")
    try:
        print(f"{len(faults)} faults, {args.rate:g} messages/s, stopped for {args.seconds:g} s", flush=True)
        for number, fault in enumerate(faults, start=1):
            print(f"{str(fault):36} {run(stack, fault, args.rate, number)}", flush=True)
    finally:
        if names is not None and not args.keep:
            tear_down_stack(names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
