"""Measure the cached paths of the image harness: what a CI run pays when nothing changed.

    .venv/bin/python bench/bench_images.py [--rounds N]

Prints one line per step (median of N rounds): a full `build` (every image a
cache hit), `bundle` (every tar up to date) and `list`. Build everything once
before running it; a step that builds or writes anything is reported as such.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from harness import images


def _measure(step: Callable[[], list], rounds: int) -> tuple[float, list[str]]:
    seconds, changed = [], []
    for _ in range(rounds):
        started = time.monotonic()
        results = step()
        seconds.append(time.monotonic() - started)
        changed += [r.ref for r in results if r.status in ("built", "written")]
    return statistics.median(seconds), changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    steps: dict[str, Callable[[], list]] = {
        "build (all cached)": lambda: images.build_images(out=None),
        "bundle (all up to date)": lambda: images.bundle_images(out=None),
        "list": lambda: [],
    }
    steps["list"] = lambda: (images.image_statuses(), [])[1]
    for name, step in steps.items():
        median, changed = _measure(step, args.rounds)
        note = f"  (changed: {', '.join(sorted(set(changed)))})" if changed else ""
        print(f"{name:26} {median:6.2f} s median of {args.rounds}{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
