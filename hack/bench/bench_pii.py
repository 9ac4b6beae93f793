#!/usr/bin/env python
"""PII detection: scan time against body size, ordinary and adversarial text.

For each kind of text, ``pii.detect`` runs on 100 KB and on 1 MB of it (the fastest
of ``--repeats``: on a shared machine the other jobs only ever add time); the ratio of
the two times shows how the scan grows: a linear scan grows about 10x for 10x the
size, a backtracking one far more. Kinds:

- ordinary: prose with dates, prices, versions, order numbers and some PII;
- a_quote: ``a'`` repeated (made the old e-mail pattern quadratic: 19 s for 60 KB);
- plus_digits: ``+1`` followed by long digit runs (made the old phone patterns try
  every split of the run: 62 s for 200 KB);
- digits: one run of digits with single spaces (every group a card/ID/phone start);
- at_signs: ``a@`` repeated (an e-mail candidate at every ``@``);
- encoded: percent-encoded and HTML-entity text (the decoded views);
- colons: ``1:`` repeated (IPv6 candidates).

    python hack/bench/bench_pii.py --out hack/bench/results/pii.json
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

from mmo_serving.gateway import pii

SIZES = (100_000, 1_000_000)
TARGET_GROWTH = 12.0  # at most 12x the time for 10x the size

UNITS = {
    "ordinary": (
        "Order 48213377 shipped on 2024-05-01 for $1,299.00 (v1.26.4, room 204); "
        "write to jane.doe@example.com or call +44 20 7946 0958. "
    ),
    "a_quote": "a'",
    "plus_digits": "+1" + "2" * 60 + " ",
    "digits": "4111 ",
    "at_signs": "a@",
    "encoded": "%41%40%2E&#64;&amp;x ",
    "colons": "1:",
}


def _text(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


def _times(texts: list[str], repeats: int) -> list[float]:
    """The fastest scan of each text; the texts take turns, so that a burst of load
    from other jobs hits every size alike."""
    best = [float("inf")] * len(texts)
    gc.disable()
    try:
        for _ in range(repeats):
            for i, text in enumerate(texts):
                start = time.perf_counter()
                pii.detect(text)
                best[i] = min(best[i], time.perf_counter() - start)
    finally:
        gc.enable()
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("hack/bench/results/pii.json"))
    args = parser.parse_args()
    results = {}
    for name, unit in UNITS.items():
        small, large = _times([_text(unit, n) for n in SIZES], args.repeats)
        growth = large / small
        results[name] = {
            "seconds_100KB": round(small, 4),
            "seconds_1MB": round(large, 4),
            "growth_10x_size": round(growth, 2),
            "within_target": growth <= TARGET_GROWTH,
        }
        print(f"{name:12s} 100 KB {small:7.3f} s   1 MB {large:7.3f} s   growth {growth:5.2f}x")
    worst = max(r["growth_10x_size"] for r in results.values())
    summary = {"target_growth": TARGET_GROWTH, "worst_growth": worst, "cases": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"worst growth {worst:.2f}x (target <= {TARGET_GROWTH}x) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
