"""Webhook intake through the Nginx gateway and direct to n8n, in the same run.

Starts the test stack (tests/integration/workflows_stack.py, n8n main + worker
in queue mode), imports the workflows, then measures p50/p99 of the GET verify
and of a signed WhatsApp POST, the sustained messages/s with N concurrent
senders, and checks that every accepted message landed exactly once in
inbound_messages. Prints the figures and the gateway/direct ratio (goal <= 1.2,
zero lost).

    .venv/bin/python bench/bench_intake.py [--requests 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restobot import workflows  # noqa: E402
from tests.doubles import meta  # noqa: E402
from tests.integration.workflows_stack import Stack, http  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(base: str, stack: Stack, n: int, concurrency: int, tag: str) -> dict:
    verify_url = f"{base}/v1/inbound/whatsapp?hub.mode=subscribe&hub.verify_token={stack.verify_token}&hub.challenge=x"
    get = [timed(lambda: http("GET", verify_url)) for _ in range(n)]
    ids: list[str] = []

    def one(i: int) -> tuple[float, int]:
        payload = meta.whatsapp_text(f"bench {i}", sender=f"33{tag}{i:07d}"[:12], msg_id=f"wamid.BENCH{tag}{i:07d}")
        body = meta.encode(payload)
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": meta.sign(body, stack.app_secret)}
        started = time.perf_counter()
        answer = http("POST", f"{base}/v1/inbound/whatsapp", body, headers)
        return time.perf_counter() - started, answer.status

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - started
    accepted = sum(1 for _, status in results if status == 200)
    stored = stack.query("select count(*), count(distinct msg_id) from inbound_messages where msg_id like %s",
                         f"wamid.BENCH{tag}%")[0]
    return {"get_p50": pct(get, .5), "get_p99": pct(get, .99), "post_p50": pct([r[0] for r in results], .5),
            "post_p99": pct([r[0] for r in results], .99), "msgs_per_s": n / wall, "accepted": accepted,
            "stored": stored[0], "distinct": stored[1]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    stack = Stack(signature_mode="enforce", rate_limit=100000, publish_main=True)
    try:
        stack.start(Path(tempfile.mkdtemp()))
        workflows.import_workflows(stack.target)
        gateway = run(stack.gateway_url, stack, args.requests, args.concurrency, "G")
        direct = run(stack.direct_url, stack, args.requests, args.concurrency, "D")
    finally:
        stack.close()
    for name, figures in (("gateway", gateway), ("direct", direct)):
        print(f"{name:8} GET p50 {figures['get_p50']:.1f} ms p99 {figures['get_p99']:.1f} ms | "
              f"POST p50 {figures['post_p50']:.1f} ms p99 {figures['post_p99']:.1f} ms | "
              f"{figures['msgs_per_s']:.1f} msg/s | accepted {figures['accepted']} stored {figures['stored']} "
              f"distinct {figures['distinct']}")
    ratio = gateway["post_p50"] / direct["post_p50"]
    lost = (gateway["accepted"] - gateway["distinct"]) + (direct["accepted"] - direct["distinct"])
    print(f"ratio gateway/direct (POST p50): {ratio:.2f} (goal <= 1.2); lost messages: {lost}")
    return 0 if ratio <= 1.2 and lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
