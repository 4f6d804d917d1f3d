"""Wall time of the go-live checklist against a stage (goal: <= 15 s on the local stage).

    .venv/bin/python bench/bench_checks.py --inventory inventory/local.py [--runs 3] [--workers 4]

Prints one line per run and the median; extra arguments go to the checklist (e.g. -k edge).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inventory", required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    args, extra = parser.parse_known_args()
    times = []
    for run in range(1, args.runs + 1):
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "restobot.golive", "--inventory", args.inventory,
                               "--workers", str(args.workers), *extra], cwd=REPO_ROOT, capture_output=True, text=True)
        seconds = time.monotonic() - started
        times.append(seconds)
        summary = next((line for line in proc.stdout.splitlines() if " items: " in line), "no report")
        print(f"run {run}: {seconds:5.1f} s, exit {proc.returncode}, {summary}")
    print(f"checklist wall time: median {statistics.median(times):.1f} s over {args.runs} runs "
          f"(min {min(times):.1f}, max {max(times):.1f}), {args.workers} workers; goal <= 15 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
