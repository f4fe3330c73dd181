"""How much work the prefix layout's idle query slots cost, and the least any batching could cost (issue 14).

The prefix graph computes queries, attention output and FFN on every slot of a ``[B, W_l]`` grid,
``W_l`` being the most tokens of one row of the batch active in layer ``l``; the packed graph computes
them on the active tokens only.  On ONNX Runtime CPU time follows that work (``layouts_cpu.py``
prints both), so this ratio bounds what the prefix layout can reach against packed.  For each batch
size this script gives, on a data file, with a bundle's exit table and tokenizer (no model run):

- ``plan``: prefix work / packed work of the runtime's cost-aware plan (:func:`plan_batches`);
- ``best cut, >= R rows``: the least prefix work of any cut of the same sorted order into batches of
  ``R`` to ``B`` rows (dynamic programming over the cut points), over the packed work of the plan:
  no batching of that order with batches that large does better.

    python benchmarks/prefix_waste.py bundles/sst2-prefix --data ../shared/data/elue/SST-2/dev.tsv \\
        --out results/prefix-waste
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from gpu_common import write_report
from layouts_cpu import encoder_work


def batch_work(profile: np.ndarray, prefix: bool, hidden: int, intermediate: int) -> float:
    """Encoder work of one batch of items with active-token profile ``[items, L]`` (column 0: lengths)."""
    batch, seq = profile.shape[0], int(profile[:, 0].max())
    widths = profile.max(axis=0).astype(np.float64)
    widths[0] = seq
    rows = batch * widths if prefix else profile.sum(axis=0).astype(np.float64)
    return encoder_work(batch, seq, widths, rows, hidden, intermediate)


def least_prefix_work(profile: np.ndarray, order: np.ndarray, least_rows: int, most_rows: int,
                      hidden: int, intermediate: int) -> tuple[float, int]:
    """``(work, batches)``: the cut of ``order`` into batches of ``least_rows..most_rows`` items (the last
    may be smaller) of least total prefix work."""
    count = len(order)
    best = np.full(count + 1, np.inf)
    best[0], batches = 0.0, np.zeros(count + 1, dtype=np.int64)
    for end in range(1, count + 1):
        smallest = least_rows if end < count else 1
        for start in range(max(0, end - most_rows), end - smallest + 1):
            if np.isfinite(best[start]):
                cost = best[start] + batch_work(profile[order[start:end]], True, hidden, intermediate)
                if cost < best[end]:
                    best[end], batches[end] = cost, batches[start] + 1
    return float(best[count]), int(batches[count])


def waste_report(profile: np.ndarray, batch_sizes: list[int], fractions: list[int], hidden: int,
                 intermediate: int) -> dict[str, Any]:
    """The plan's and the best cuts' prefix/packed work ratios for each batch size."""
    from hashee.runtime.batching import plan_batches

    rows: dict[str, Any] = {}
    for size in batch_sizes:
        plan = plan_batches(profile, size, True)
        packed = sum(batch_work(profile[b], False, hidden, intermediate) for b in plan)
        prefix = sum(batch_work(profile[b], True, hidden, intermediate) for b in plan)
        order = np.concatenate(plan)
        row: dict[str, Any] = {"batches": len(plan), "plan": prefix / packed, "best_cut": {}}
        for fraction in fractions:
            least = max(1, size // fraction)
            work, count = least_prefix_work(profile, order, least, size, hidden, intermediate)
            row["best_cut"][str(least)] = {"ratio": work / packed, "batches": count}
        rows[str(size)] = row
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Prefix-layout work over packed ({report['data']}, {report['items']} items)", "",
             "| batch | batches | plan | best cuts of the same order |", "| ---: | ---: | ---: | --- |"]
    for size, row in report["batch_sizes"].items():
        cuts = ", ".join(f">= {least} rows: {c['ratio']:.3f} ({c['batches']} batches)"
                         for least, c in row["best_cut"].items())
        lines.append(f"| {size} | {row['batches']} | {row['plan']:.3f} | {cuts} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from hashee.data import load_examples
    from hashee.runtime import Session
    from hashee.runtime.batching import active_profile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="a HashEE bundle (its exit table and tokenizer; the model is not run)")
    parser.add_argument("--data", required=True, help="a data file hashee reads (its first text column is used)")
    parser.add_argument("--batch-sizes", default="8,32,128")
    parser.add_argument("--fractions", default="2,4,8", help="best cuts with batches of at least B/F rows")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    session = Session.load(args.bundle, backend="onnxruntime", threads=1)
    if session.bundle.kind != "hashee":
        print(f"prefix_waste.py: error: {args.bundle} is a dense bundle; give a HashEE bundle", file=sys.stderr)
        return 1
    texts = list(load_examples(args.data).texts)
    encoded = session.encoder.encode(texts, None)
    profile = active_profile(encoded.ids, session.bundle.exit_table, session.bundle.num_layers)
    backbone = session.bundle.meta["backbone"]
    report = {"data": args.data, "bundle": args.bundle, "items": len(texts),
              "batch_sizes": waste_report(profile, [int(s) for s in args.batch_sizes.split(",")],
                                          [int(f) for f in args.fractions.split(",")],
                                          int(backbone["hidden_size"]), int(backbone["intermediate_size"]))}
    write_report(Path(args.out), "prefix_waste", report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
