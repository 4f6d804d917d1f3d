"""Benchmark provisioning: a fresh VPS, the no-op re-run, and its remote commands.

Starts a brand new local VPS container of its own (harness/vps.py,
name ``restobot-vps-bench-provision``, free ports on 127.0.0.1), then runs the
real CLI ``pyinfra INVENTORY DEPLOY -y --json`` (harness/deploys.py, as the e2e tests do):

1. fresh provisioning (apt downloads included: the package mirror's speed counts);
2. no-op re-runs (``results.totals.success`` must be 0), timed;
3. one more no-op run with ``--debug``: every remote command pyinfra sends is
   logged as ``Running command on <host>:``; the count of those lines is the
   number of commands a no-op run costs (facts included). Its time is not
   reported (debug logging slows it).

    .venv/bin/python bench/bench_provision.py [--runs N] [--keep]

``--keep`` leaves the container running (``python -m harness.vps down
--name restobot-vps-bench-provision`` removes it).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.deploys import (  # noqa: E402
    PROVISION_DEPLOY_BODY,
    HarnessError,
    endpoint_settings,
    run_pyinfra,
    start_vps,
    stop_vps,
    write_deploy,
    write_inventory,
)
from restobot.secrets import ensure_secrets_file  # noqa: E402
from restobot.settings import secrets_file  # noqa: E402

CONTAINER = "restobot-vps-bench-provision"
COMMAND_LINE = re.compile(r"Running command on \S+?:")


def count_remote_commands(debug_output: str) -> int:
    """Remote commands in pyinfra ``--debug`` output (one log line per command sent)."""
    return len(COMMAND_LINE.findall(debug_output))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed no-op runs (default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="leave the VPS container running")
    args = parser.parse_args(argv)

    ensure_secrets_file(secrets_file("local"))
    print(f"Starting a fresh VPS container ({CONTAINER})...", flush=True)
    try:
        endpoint = start_vps(CONTAINER, fresh=True)
    except HarnessError as error:
        print(error, file=sys.stderr)
        return 1
    try:
        with tempfile.TemporaryDirectory(prefix="bench-provision-") as tmp:
            directory = Path(tmp)
            inventory = write_inventory(directory / "inventory.py", endpoint_settings(endpoint),
                                        known_hosts=endpoint.known_hosts_path)
            deploy = write_deploy(directory / "deploy.py", PROVISION_DEPLOY_BODY)

            fresh = run_pyinfra(inventory, deploy)
            if fresh.returncode != 0:
                print(f"fresh provisioning failed\n{fresh.output_tail()}", file=sys.stderr)
                return 1
            print(f"fresh provisioning:     {fresh.seconds:6.1f} s  "
                  f"({fresh.results['totals']['success']} operations changed)")

            samples = []
            for _ in range(args.runs):
                noop = run_pyinfra(inventory, deploy)
                changed = noop.results["totals"]["success"]
                if noop.returncode != 0 or changed:
                    print(f"no-op run failed or changed {changed} operations: {noop.changed}\n"
                          f"{noop.output_tail()}", file=sys.stderr)
                    return 1
                samples.append(noop.seconds)
            print(f"no-op re-provisioning:  {statistics.median(samples):6.1f} s median "
                  f"(min {min(samples):.1f}, max {max(samples):.1f}, n={len(samples)}; "
                  f"pyinfra start-up and SSH connect included)")

            debug = run_pyinfra(inventory, deploy, "--debug")
            commands = count_remote_commands(debug.stdout + debug.stderr)
            print(f"remote commands (no-op): {commands:5d}  (from --debug 'Running command on' lines)")
    finally:
        if not args.keep:
            stop_vps(CONTAINER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
