"""Monitoring cost benchmark on a fresh local VPS container: prints figures, asserts nothing.

    .venv/bin/python bench/bench_monitoring.py [--samples 12] [--interval 5] [--demo] [--keep]

Issue #13's goals: the monitoring (Prometheus, Alertmanager and the exporters) under 300 MiB of
memory all together and under 2 % of a core while the stack is idle, and its wall time added to a
deploy. Measured with the VPS's own docker engine (``docker stats --no-stream``, sampled
--samples times every --interval seconds, idle: no traffic) and the real pyinfra CLI:
  * memory: each monitoring container's usage, their sum, and the ratio to the bot's own
    services (Traefik, nginx, n8n main and worker, PostgreSQL, Redis), the median of the samples;
  * CPU: each one's share of one core, their sum and the same ratio (a ratio, since the machine's
    noise moves both);
  * deploy: a redeploy with nothing changed against one where only a monitoring threshold changed
    (Prometheus's rules rendered again and reloaded), the difference being the monitoring's part.
By default the benchmark deploys its own fresh local VPS (a few minutes); --demo measures the stack
`scripts/demo` deployed instead (no redeploy then).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.deploys import bring_up_stack, run_deploy, stack_names, tear_down_stack, write_inventory  # noqa: E402
from restobot.commands import LONG_RUNNING_SERVICES, MONITORING_SERVICES  # noqa: E402
from restobot.secrets import ensure_secrets_file  # noqa: E402
from restobot.settings import secrets_file  # noqa: E402

MEMORY_GOAL_MIB, CPU_GOAL_PERCENT = 300, 2.0
RELEASE = "bench-monitoring"
UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "kB": 1000, "MB": 1000**2, "GB": 1000**3}


def mebibytes(usage: str) -> float:
    """``docker stats``'s ``123.4MiB / 3.8GiB`` -> 123.4."""
    used = usage.split("/")[0].strip()
    for unit in sorted(UNITS, key=len, reverse=True):
        if used.endswith(unit):
            return float(used[: -len(unit)]) * UNITS[unit] / 1024**2
    raise ValueError(f"unreadable memory usage {usage!r}")


def service_of(container: str) -> str:
    """``resto-node-exporter-1`` -> ``node-exporter``."""
    return container.removeprefix("resto-").rsplit("-", 1)[0]


def sample(stack) -> dict[str, tuple[float, float]]:
    """Each stack container's (memory MiB, CPU % of one core), once."""
    out = stack.ssh("docker", "stats", "--no-stream", "--format", "{{json .}}", timeout=60).stdout
    figures = {}
    for line in out.splitlines():
        row = json.loads(line)
        service = service_of(row["Name"])
        if service in (*LONG_RUNNING_SERVICES, *MONITORING_SERVICES):
            figures[service] = (mebibytes(row["MemUsage"]), float(row["CPUPerc"].rstrip("%")))
    return figures


def median_figures(samples: list[dict[str, tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    services = set().union(*samples)
    return {service: (statistics.median(s[service][0] for s in samples if service in s),
                      statistics.median(s[service][1] for s in samples if service in s)) for service in services}


def settled(stack, deadline_s: float = 180.0, quiet_percent: float = 10.0) -> None:
    """Wait until the deploy's own burst is over: the stack's containers together under
    ``quiet_percent`` of a core in one sample (docker stats samples over about 2 s), or the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if sum(cpu for _, cpu in sample(stack).values()) < quiet_percent:
            return
    print(f"the stack was still busy after {deadline_s:.0f} s; measuring anyway", flush=True)


def idle_cost(stack, samples: int, interval: float) -> dict:
    taken = []
    for _ in range(samples):
        taken.append(sample(stack))
        time.sleep(interval)
    figures = median_figures(taken)
    monitoring = {s: f for s, f in figures.items() if s in MONITORING_SERVICES}
    bot = {s: f for s, f in figures.items() if s in LONG_RUNNING_SERVICES}
    memory, cpu = sum(f[0] for f in monitoring.values()), sum(f[1] for f in monitoring.values())
    bot_memory, bot_cpu = sum(f[0] for f in bot.values()), sum(f[1] for f in bot.values())
    for service in sorted(monitoring):
        print(f"  {service:20} {monitoring[service][0]:7.1f} MiB  {monitoring[service][1]:5.2f} % of a core")
    print(f"monitoring, all together:  {memory:7.1f} MiB  {cpu:5.2f} % of a core  "
          f"(goal: under {MEMORY_GOAL_MIB} MiB, {'MET' if memory < MEMORY_GOAL_MIB else 'MISSED'}; "
          f"under {CPU_GOAL_PERCENT:g} %, {'MET' if cpu < CPU_GOAL_PERCENT else 'MISSED'})")
    print(f"the bot's own services:    {bot_memory:7.1f} MiB  {bot_cpu:5.2f} % of a core  "
          f"(monitoring / bot: memory {memory / bot_memory:.2f}, CPU {cpu / bot_cpu if bot_cpu else float('nan'):.2f})")
    return {"monitoring_mib": round(memory, 1), "monitoring_cpu_percent": round(cpu, 2),
            "bot_mib": round(bot_memory, 1), "bot_cpu_percent": round(bot_cpu, 2),
            "per_service": {s: {"mib": round(f[0], 1), "cpu_percent": round(f[1], 2)} for s, f in figures.items()}}


def deploy_cost(stack, workdir: Path) -> dict:
    """A no-op redeploy against one where only a monitoring threshold changed."""
    noop = stack.deploy(release=RELEASE)
    monitoring = {**stack.settings.get("monitoring", {})}
    monitoring["errors_per_hour"] = monitoring.get("errors_per_hour", 10) + 1
    inventory = write_inventory(workdir / "bench.py", {**stack.settings, "monitoring": monitoring},
                                group="bench", name="bench-vps")
    changed = run_deploy(inventory, release=RELEASE)
    back = stack.deploy(release=RELEASE)
    for run, what in ((noop, "no-op"), (changed, "threshold changed"), (back, "threshold back")):
        if run.returncode != 0:
            raise SystemExit(f"the {what} redeploy failed\n{run.output_tail()}")
    print(f"no-op redeploy:                     {noop.seconds:6.1f} s")
    print(f"redeploy, a monitoring threshold changed: {changed.seconds:6.1f} s "
          f"(the monitoring's part: {changed.seconds - noop.seconds:+.1f} s)")
    return {"noop_s": round(noop.seconds, 1), "monitoring_change_s": round(changed.seconds, 1)}


def demo_stack():
    sys.path.insert(0, str(REPO / "bench"))
    from bench_faults import demo_stack as faults_demo_stack  # the same stack scripts/demo deploys
    return faults_demo_stack()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=12, help="docker stats samples (the median is printed)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between two samples")
    parser.add_argument("--demo", action="store_true", help="measure the stack scripts/demo deployed")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's own stack afterwards")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.interval < 0:
        parser.error("--samples must be 1 or more and --interval 0 or more")
    names = None
    workdir = Path(tempfile.mkdtemp(prefix="bench-monitoring-"))
    if args.demo:
        stack = demo_stack()
    else:
        ensure_secrets_file(secrets_file("local"))
        names = stack_names("bench-monitoring")
        print("deploying a fresh local VPS ...", flush=True)
        stack = bring_up_stack(names, workdir, release=RELEASE, group="bench", host_name="bench-vps")
    try:
        settled(stack)
        result = {"idle": idle_cost(stack, args.samples, args.interval)}
        if not args.demo:
            result["deploy"] = deploy_cost(stack, workdir)
        print(json.dumps(result))
    finally:
        if names is not None and not args.keep:
            tear_down_stack(names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
