"""Deploy benchmark on a fresh local VPS container: prints figures, asserts nothing.

    .venv/bin/python bench/bench_deploy.py [--keep]

Measures, with the real pyinfra CLI over SSH:
  * a fresh VPS to a checked stack (images present as bundles, no registry);
  * a no-op redeploy: wall time, operations that changed (lock and audit left
    out, as Molecule does), and the remote commands it sends;
  * an upgrade (a changed workflow) and a rollback, each while a sender posts
    signed WhatsApp messages and retries refused ones the way Meta does
    (backoff, bounded): deliveries lost, and every accepted message counted
    in inbound_messages exactly once.
Goals (issue 5): no-op <= 5 s with 0 changes, rollback <= 30 s, 0 lost.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.deploys import (  # noqa: E402
    PYINFRA,
    DeployedStack,
    HarnessError,
    bring_up_stack,
    changed_operations,
    make_checkout,
    public_request,
    sql,
    stack_names,
    tear_down_stack,
)
from restobot import meta_payloads  # noqa: E402
from restobot.secrets import ensure_secrets_file  # noqa: E402
from restobot.settings import read_env_file, secrets_file  # noqa: E402

RETRY_DELAYS = (1, 2, 4, 8, 16, 30)  # Meta retries with backoff; bounded here to about a minute


@dataclass
class Sender:
    """Posts signed messages every ``interval`` seconds; retries each refused one like Meta."""

    stack: object
    interval: float = 0.5
    accepted: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    retried: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def deliver(self, text: str) -> None:
        secret = read_env_file(secrets_file("local"))["META_APP_SECRET"]
        payload = meta_payloads.whatsapp_text(text)
        msg_id = payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        body = meta_payloads.encode(payload)
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": meta_payloads.sign(body, secret)}
        for attempt, delay in enumerate((0, *RETRY_DELAYS)):
            time.sleep(delay)
            try:
                response, _ = public_request(self.stack, "POST", "/v1/inbound/whatsapp", body, headers)
                if response.status == 200:
                    self.accepted.append(msg_id)
                    return
            except OSError:
                pass
            self.retried += 1 if attempt < len(RETRY_DELAYS) else 0
        self.lost.append(msg_id)

    def start(self) -> None:
        def loop() -> None:
            number = 0
            while not self._stop.is_set():
                number += 1
                thread = threading.Thread(target=self.deliver, args=(f"bench message {number}",), daemon=True)
                thread.start()
                self._threads.append(thread)
                time.sleep(self.interval)

        threading.Thread(target=loop, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        time.sleep(self.interval)
        for thread in self._threads:
            thread.join(timeout=90)


def remote_commands(inventory: Path, source: Path) -> int:
    """Commands a run sends, counted from pyinfra's debug log (facts and operations alike)."""
    proc = subprocess.run(
        [str(PYINFRA), str(inventory), str(REPO / "deploy.py"), "-y", "--debug",
         "--data", f"source={source}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    return len(re.findall(r"Running command on ", proc.stdout + proc.stderr))


def timed_with_sender(stack: DeployedStack, action) -> tuple[float, Sender, int]:
    sender = Sender(stack)
    sender.start()
    time.sleep(3)
    started = time.monotonic()
    run = action()
    seconds = time.monotonic() - started
    time.sleep(5)
    sender.stop()
    if run.returncode != 0:
        raise SystemExit(f"run failed:\n{run.output_tail()}")
    stored = int(sql(stack, "SELECT count(*) FROM inbound_messages WHERE text LIKE 'bench message %'"))
    return seconds, sender, stored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true",
                        help="leave the stack's containers running (restobot-{vps,acme,meta}-bench-PID)")
    args = parser.parse_args(argv)

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

        upgrade_s, upgrade_sender, _ = timed_with_sender(stack, lambda: stack.deploy(source=v2))
        rollback_s, rollback_sender, stored = timed_with_sender(stack, lambda: stack.rollback("v1"))
        accepted = len(upgrade_sender.accepted) + len(rollback_sender.accepted)

        print(f"fresh VPS to checked stack (images as bundles): {fresh.seconds:6.1f} s")
        print(f"no-op redeploy:                                 {noop.seconds:6.1f} s, "
              f"{len(changed)} operations changed {changed or ''}, {commands} remote commands")
        print(f"upgrade (changed workflow) under traffic:       {upgrade_s:6.1f} s, "
              f"{len(upgrade_sender.accepted)} accepted, {len(upgrade_sender.lost)} lost, "
              f"{upgrade_sender.retried} retries")
        print(f"rollback to v1 under traffic:                   {rollback_s:6.1f} s, "
              f"{len(rollback_sender.accepted)} accepted, {len(rollback_sender.lost)} lost, "
              f"{rollback_sender.retried} retries")
        print(f"accepted messages stored in inbound_messages:   {stored} of {accepted} (exactly once: {stored == accepted})")
        print(json.dumps({"fresh_s": round(fresh.seconds, 1), "noop_s": round(noop.seconds, 1),
                          "noop_changed": len(changed), "noop_remote_commands": commands,
                          "upgrade_s": round(upgrade_s, 1), "upgrade_lost": len(upgrade_sender.lost),
                          "rollback_s": round(rollback_s, 1), "rollback_lost": len(rollback_sender.lost),
                          "stored_exactly_once": stored == accepted}))
    finally:
        if not args.keep:
            tear_down_stack(names)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
