"""Deploy benchmark on a fresh local VPS container: prints figures, asserts nothing.

    .venv/bin/python bench/bench_deploy.py [--runs N] [--keep]

Measures, with the real pyinfra CLI over SSH:
  * a fresh VPS to a checked stack (images present as bundles, no registry);
  * a no-op redeploy: wall time, operations that changed (lock and audit left
    out, as Molecule does), and the remote commands it sends;
  * an upgrade (a changed workflow) and a rollback, ``--runs`` times, each while
    harness.traffic's Meta-like sender posts signed WhatsApp messages and retries
    every refused one: whether the run completed, and the figures of the traffic
    (answered 200, stored, replied, duplicates, lost).
Goals: no-op <= 5 s with 0 changes (issue 5), rollback <= 30 s; every upgrade and
rollback under traffic completes with lost = 0 and duplicates = 0, 5 runs of 5 (issue 12).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.deploys import (  # noqa: E402
    PYINFRA,
    DeployedStack,
    HarnessError,
    PyinfraRun,
    bring_up_stack,
    changed_operations,
    make_checkout,
    stack_names,
    tear_down_stack,
)
from harness.traffic import Figures, MetaLikeSender, outcome  # noqa: E402
from restobot.secrets import ensure_secrets_file  # noqa: E402
from restobot.settings import secrets_file  # noqa: E402


def remote_commands(inventory: Path, source: Path) -> int:
    """Commands a run sends, counted from pyinfra's debug log (facts and operations alike)."""
    proc = subprocess.run(
        [str(PYINFRA), str(inventory), str(REPO / "deploy.py"), "-y", "--debug",
         "--data", f"source={source}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    return len(re.findall(r"Running command on ", proc.stdout + proc.stderr))


def under_traffic(stack: DeployedStack, action, prefix: str) -> tuple[float, PyinfraRun, Figures]:
    """Run ``action`` (a deploy or a rollback) while a Meta-like sender posts: its time, its run, the figures."""
    sender = MetaLikeSender(stack, sender_prefix=prefix)
    sender.start()
    time.sleep(3)
    started = time.monotonic()
    run = action()
    seconds = time.monotonic() - started
    time.sleep(5)
    sender.stop()
    return seconds, run, outcome(stack, sender)


def passed(run: PyinfraRun, figures: Figures) -> bool:
    return (run.returncode == 0 and figures.lost == figures.duplicates == 0
            and figures.answered_200 == figures.replied == figures.stored == figures.sent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true",
                        help="leave the stack's containers running (restobot-{vps,acme,meta}-bench-PID)")
    parser.add_argument("--runs", type=int, default=1,
                        help="upgrade + rollback under traffic this many times (issue #12's goal: 5 of 5)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be 1 or more")

    ensure_secrets_file(secrets_file("local"))
    names = stack_names("bench")
    workdir = Path(REPO / ".cache" / f"bench-deploy-{os.getpid()}")
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        v1 = make_checkout(workdir / "checkouts", "v1", {}, None)
        v2 = make_checkout(workdir / "checkouts", "v2", {}, "v2")
        try:
            # The first deploy: v1 onto a fresh VPS (ACME server and Meta double beside it).
            stack = bring_up_stack(names, workdir, release=None, source=v1, group="bench", host_name="bench-vps",
                                   keep_on_failure=args.keep)
        except HarnessError as error:
            raise SystemExit(str(error)) from None
        fresh = stack.first_deploy
        noop = stack.deploy(source=v1)
        changed = changed_operations(noop)
        commands = remote_commands(stack.inventory, v1)
        print(f"fresh VPS to checked stack (images as bundles): {fresh.seconds:6.1f} s", flush=True)
        print(f"no-op redeploy:                                 {noop.seconds:6.1f} s, "
              f"{len(changed)} operations changed {changed or ''}, {commands} remote commands", flush=True)

        results = []
        for number in range(1, args.runs + 1):
            for what, action in (("upgrade to v2 (changed workflow)", lambda: stack.deploy(source=v2)),
                                 ("rollback to v1", lambda: stack.rollback("v1"))):
                seconds, run, figures = under_traffic(stack, action, prefix=f"35{number:02d}")
                ok = passed(run, figures)
                results.append({"run": number, "what": what, "seconds": round(seconds, 1), "exit": run.returncode,
                                "lost": figures.lost, "duplicates": figures.duplicates, "passed": ok})
                print(f"run {number}: {what:33} under traffic: {seconds:6.1f} s, exit {run.returncode}, "
                      f"{'PASS' if ok else 'FAIL'}  {figures.line()}", flush=True)
                if run.returncode != 0:
                    print(run.output_tail(3000), flush=True)
        runs_passed = sum(1 for number in range(1, args.runs + 1)
                          if all(r["passed"] for r in results if r["run"] == number))
        print(f"upgrade + rollback under traffic: {runs_passed} of {args.runs} runs passed "
              f"(completed, every message answered 200, stored and replied once)")
        print(json.dumps({"fresh_s": round(fresh.seconds, 1), "noop_s": round(noop.seconds, 1),
                          "noop_changed": len(changed), "noop_remote_commands": commands,
                          "runs": args.runs, "runs_passed": runs_passed, "results": results}))
    finally:
        if not args.keep:
            tear_down_stack(names)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
