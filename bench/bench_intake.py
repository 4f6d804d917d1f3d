"""Webhook intake through the Nginx gateway and direct to n8n, in the same run.

Starts the test stack (harness/workflows_stack.py, n8n main + worker
in queue mode), imports the workflows, then measures p50/p99 of the GET verify
and of a signed WhatsApp POST, the sustained messages/s with N concurrent
senders, and checks that every accepted message landed exactly once in
inbound_messages. Prints the figures and the gateway/direct ratio (goal <= 1.2,
zero lost).

    .venv/bin/python bench/bench_intake.py [--requests 200] [--concurrency 8] [--rounds 4]

Gateway and direct are measured in alternated rounds, so drift in the load of
the machine hits both. Figures only: nothing here asserts on timing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restobot import meta_payloads as meta
from restobot.remote import workflows
from harness.workflows_stack import Stack, http


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(base: str, stack: Stack, n: int, concurrency: int, tag: str) -> dict:
    verify_url = f"{base}/v1/inbound/whatsapp?hub.mode=subscribe&hub.verify_token={stack.verify_token}&hub.challenge=x"
    for _ in range(10):  # warm-up, not measured
        http("GET", verify_url)
    get = [timed(lambda: http("GET", verify_url)) for _ in range(n)]

    def one(i: int) -> tuple[float, int, str]:
        msg_id = f"wamid.BENCH{tag}{i:07d}"
        payload = meta.whatsapp_text(f"bench {i}", sender=f"3361{i % 50:08d}", msg_id=msg_id)
        body = meta.encode(payload)
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": meta.sign(body, stack.app_secret)}
        started = time.perf_counter()
        answer = http("POST", f"{base}/v1/inbound/whatsapp", body, headers, timeout=30)
        return time.perf_counter() - started, answer.status, msg_id

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - started
    accepted = [msg_id for _, status, msg_id in results if status == 200]
    # W1 stores before it answers; wait (bounded) in case a row commits just after the answer.
    rows = stack.wait_rows("select msg_id, count(*) from inbound_messages where msg_id like %s group by msg_id",
                           f"wamid.BENCH{tag}%", predicate=lambda r: len(r) >= len(accepted), timeout=30)
    counts = dict(rows)
    return {"get": get, "post": [r[0] for r in results], "wall": wall, "sent": n, "accepted": len(accepted),
            "stored_once": sum(1 for m in accepted if counts.get(m) == 1),
            "lost": sum(1 for m in accepted if m not in counts),
            "duplicated": sum(1 for c in counts.values() if c > 1)}


def merge(rounds: list[dict]) -> dict:
    get = [t for r in rounds for t in r["get"]]
    post = [t for r in rounds for t in r["post"]]
    total = {key: sum(r[key] for r in rounds) for key in ("wall", "sent", "accepted", "stored_once", "lost",
                                                           "duplicated")}
    return {**total, "get_p50": pct(get, .5), "get_p99": pct(get, .99), "post_p50": pct(post, .5),
            "post_p99": pct(post, .99), "msgs_per_s": total["accepted"] / total["wall"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200, help="requests per measure (bounded)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="alternate gateway and direct this many times")
    args = parser.parse_args()
    per_round = max(1, args.requests // args.rounds)
    measures: dict[str, list[dict]] = {"gateway": [], "direct": []}
    stack = Stack(signature_mode="enforce", rate_limit=10_000, publish_main=True)
    try:
        stack.start(Path(tempfile.mkdtemp(prefix="bench-intake-")))
        workflows.import_workflows(stack.target)
        bases = {"gateway": stack.gateway_url, "direct": stack.direct_url}
        for number in range(args.rounds):  # alternated, so that drift in the machine's load hits both
            order = ("gateway", "direct") if number % 2 == 0 else ("direct", "gateway")
            for name in order:
                measures[name].append(run(bases[name], stack, per_round, args.concurrency, f"{name[0].upper()}{number}-"))
        gateway, direct = merge(measures["gateway"]), merge(measures["direct"])
    finally:
        stack.close()
    print(f"n8n main + worker (queue mode), {args.rounds} alternated rounds x {per_round} requests per measure, "
          f"{args.concurrency} POST senders")
    for name, f in (("gateway", gateway), ("direct", direct)):
        print(f"{name:8} GET verify p50 {f['get_p50']:.1f} ms p99 {f['get_p99']:.1f} ms | "
              f"signed POST p50 {f['post_p50']:.1f} ms p99 {f['post_p99']:.1f} ms | {f['msgs_per_s']:.1f} msg/s | "
              f"sent {f['sent']} accepted {f['accepted']} stored exactly once {f['stored_once']} "
              f"lost {f['lost']} duplicated {f['duplicated']}")
    print(f"ratio gateway/direct: POST p50 {gateway['post_p50'] / direct['post_p50']:.2f}, "
          f"GET p50 {gateway['get_p50'] / direct['get_p50']:.2f} (goal <= 1.2)")
    print(f"lost messages: {gateway['lost'] + direct['lost']} (goal 0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
