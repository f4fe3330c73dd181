"""Layouts on ONNX Runtime CPU (issue 14): HashEE bundles of one run side by side, e.g. packed against prefix.

Every bundle runs the same cost-aware batches of a data file through its runtime ``Session`` (exit masks,
and for a prefix-layout bundle the host sort, included; tokenisation excluded).  Each timed pass runs the
bundles in turn on the same batches, so a slow moment of a shared machine costs all of them; samples/s
is the median of ``--repeats`` passes after one warm-up pass, and the ratio is over the first bundle.
Batches are spread evenly over the length-sorted plan (``--max-batches``; more at batch 1, whose batches
are single sentences).  Beside each ratio: the ratio of the encoder multiply-adds the two graphs really
compute on the same batches (:func:`grid_macs`), the speed ratio expected if time follows the work.

    python benchmarks/layouts_cpu.py bundles/sst2 bundles/sst2-prefix --dense bundles/sst2-dense \\
        --data ../shared/data/elue/SST-2/dev.tsv --out results/layouts-cpu

``--dense`` adds a dense bundle (the fused ONNX Runtime export of the dense model) on the same batches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpu_common import write_report


def batches(session: Any, texts: list[str], batch_size: int, max_batches: int) -> list[dict[str, np.ndarray]]:
    """Packed-form feeds of the runtime's cost-aware plan (at most ``max_batches``, evenly spread)."""
    from hashee.bench.driver import spread
    from hashee.exit_table import exit_masks
    from hashee.runtime.batching import active_profile, pad, plan_batches

    encoded = session.encoder.encode(texts, None)
    table, layers = session.bundle.exit_table, session.bundle.num_layers
    feeds = []
    for index in spread(plan_batches(active_profile(encoded.ids, table, layers), batch_size, True), max_batches):
        ids, mask = pad(encoded.ids, index, session.encoder.pad_id)
        feed = {"input_ids": ids, "attention_mask": mask, "exit_masks": exit_masks(ids, mask, table, layers)}
        if session.uses_token_type_ids:
            feed["token_type_ids"], _ = pad(encoded.types, index, 0)
        feeds.append(feed)
    return feeds


def grid_macs(feeds: list[dict[str, np.ndarray]], prefix: bool, hidden: int, intermediate: int) -> float:
    """Encoder multiply-adds a graph of this layout computes on ``feeds`` (packed-form feeds).

    Both layouts compute keys and values on every slot of the padded ``[B, S]`` grid and attention
    for a ``[B, Q_l]`` query grid (``Q_l`` the most tokens of one row active in layer ``l``; ``S`` in
    layer 1).  The packed graph computes queries, attention output and FFN on the active tokens only;
    the prefix graph on all ``B * Q_l`` slots of the grid, active or not.
    """
    total = 0.0
    for feed in feeds:
        batch, seq = feed["input_ids"].shape
        active = (feed["exit_masks"] & (feed["attention_mask"] != 0)[None]).sum(axis=2)  # [L, B]
        widths = active.max(axis=1).astype(np.float64)
        widths[0] = seq
        rows = batch * widths if prefix else active.sum(axis=1).astype(np.float64)
        total += encoder_work(batch, seq, widths, rows, hidden, intermediate)
    return total


def encoder_work(batch: int, seq: int, widths: np.ndarray, rows: np.ndarray, hidden: int, intermediate: int) -> float:
    """Multiply-adds of the encoder layers on a ``[batch, seq]`` grid with query widths ``widths``
    (per layer) of which ``rows`` slots compute queries, attention output and FFN: the full query grid's
    (:func:`hashee.flops.layer_macs` per row of the batch) less the slots left idle."""
    from hashee.flops import layer_macs

    grid = batch * layer_macs(widths, np.full_like(widths, seq), hidden, intermediate)
    idle = layer_macs(batch * widths - rows, 0, hidden, intermediate)  # idle slots' query, output and FFN
    return float((grid - idle).sum())


def measure(sessions: dict[str, Any], feeds: list[dict[str, np.ndarray]], repeats: int) -> dict[str, float]:
    """samples/s of each session over ``feeds``, the bundles interleaved within every pass."""
    rows = sum(f["input_ids"].shape[0] for f in feeds)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    own = {name: session_feeds(session, feeds) for name, session in sessions.items()}
    for name, session in sessions.items():
        for feed in own[name]:
            session.run_feed(feed)
    for _ in range(repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            for feed in own[name]:
                session.run_feed(feed)
            times[name].append(time.perf_counter() - start)
    return {name: rows / statistics.median(runs) for name, runs in times.items()}


def bundle_macs(session: Any, feeds: list[dict[str, np.ndarray]]) -> float:
    """:func:`grid_macs` of a session's graph (its layout from the bundle's manifest; a dense graph
    computes every slot in every layer)."""
    from hashee.prefix import is_prefix_graph

    backbone = session.bundle.meta["backbone"]
    if session.bundle.kind == "dense":
        feeds = [{**f, "exit_masks": np.ones_like(f["exit_masks"])} for f in feeds]
    return grid_macs(feeds, session.bundle.kind == "dense" or is_prefix_graph(session.bundle.input_names),
                     int(backbone["hidden_size"]), int(backbone["intermediate_size"]))


def session_feeds(session: Any, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """``feeds`` as a session takes them (a dense graph has no exit masks)."""
    if session.bundle.kind != "dense":
        return feeds
    return [{k: v for k, v in f.items() if k != "exit_masks"} for f in feeds]


def markdown(report: dict[str, Any]) -> str:
    names = report["bundles"]
    lines = [f"# Layouts on ONNX Runtime CPU ({report['data']}, {report['threads']} threads)", "",
             "samples/s (speed over the first bundle; the first bundle's encoder multiply-adds over this one's)", "",
             "| batch | " + " | ".join(names) + " |", "| ---: |" + " ---: |" * len(names)]
    first = names[0]
    for size, row in report["samples_per_second"].items():
        work = report["encoder_macs"][size]
        cells = [f"{row[n]:.1f}" + ("" if n == first else f" ({row[n] / row[first]:.2f}x; work {work[first] / work[n]:.2f}x)")
                 for n in names]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from hashee.data import load_examples
    from hashee.runtime import Session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", help="HashEE bundles (the first is the reference of the ratios)")
    parser.add_argument("--dense", help="a dense bundle of the same model, run on the same batches (a column)")
    parser.add_argument("--data", required=True, help="a data file hashee reads (its first text column is used)")
    parser.add_argument("--batch-sizes", default="1,8,32,128")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-batches", type=int, default=24, help="batches per size (batch 1: 8x as many)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    texts = list(load_examples(args.data).texts)
    names = [str(b) for b in args.bundles]
    sessions = {name: Session.load(name, backend="onnxruntime", threads=args.threads) for name in names}
    if any(s.bundle.kind != "hashee" for s in sessions.values()):
        print("layouts_cpu.py: error: every bundle must be a HashEE bundle (exported without --dense)", file=sys.stderr)
        return 1
    if args.dense:
        dense = Session.load(args.dense, backend="onnxruntime", threads=args.threads)
        if dense.bundle.kind != "dense":
            print(f"layouts_cpu.py: error: --dense {args.dense} is a HashEE bundle; export the dense model with "
                  "--dense", file=sys.stderr)
            return 1
        sessions[str(args.dense)] = dense
    report: dict[str, Any] = {"data": args.data, "threads": args.threads, "bundles": list(sessions),
                              "samples_per_second": {}, "encoder_macs": {}}
    for size in (int(s) for s in args.batch_sizes.split(",")):
        feeds = batches(next(iter(sessions.values())), texts, size, args.max_batches * (8 if size == 1 else 1))
        report["encoder_macs"][size] = {name: bundle_macs(s, feeds) for name, s in sessions.items()}
        report["samples_per_second"][size] = measure(sessions, feeds, args.repeats)
    write_report(Path(args.out), "layouts_cpu", report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
