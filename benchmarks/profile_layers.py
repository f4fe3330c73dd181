"""Where ONNX Runtime's time goes: per layer, per op type, the gather/scatter share and padding waste.

    python benchmarks/profile_layers.py BUNDLE [--dense-bundle DIR] [--data sst2-dev] [--batch-size 32]
                                      [--passes 2] [--threads N]

Runs the same cost-aware batches ``hashee bench`` uses through ``model.onnx`` with ONNX Runtime's
profiler (``enable_profiling``) for ``passes`` passes after one unprofiled warm-up pass and sums the
kernel times of the nodes: by layer (node names start with ``layerN/``), by op type, and by group
(gather/scatter of the active rows: ``GatherND``/``ScatterND``/``NonZero`` and the index bookkeeping
around them; attention; projections and FFN MatMuls; the rest).  Also prints the analytic waste of the
padded layout for these batches: key/value slots of padding, and query slots left idle because each
sequence's queries are padded to the batch's widest active prefix.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np

GATHER_SCATTER = {"GatherND", "ScatterND", "NonZero", "GatherElements", "ScatterElements"}
BOOKKEEPING = {"CumSum", "ReduceSum", "ReduceMax", "Max", "Cast", "Reshape", "Concat", "ConstantOfShape", "And",
               "Shape", "Range", "Slice", "Squeeze", "Unsqueeze", "Expand", "Sub", "Gather", "Equal", "Not",
               "Where", "Less", "Greater", "Identity"}
ATTENTION = {"MultiHeadAttention", "Attention", "Softmax"}


def profile(model: Path, feeds: list[dict], passes: int, threads: int | None) -> dict[str, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    warm = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in warm.get_inputs()}
    for feed in feeds:
        warm.run(None, {k: v for k, v in feed.items() if k in names})
    with tempfile.TemporaryDirectory() as scratch:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        for _ in range(passes):
            for feed in feeds:
                session.run(None, {k: v for k, v in feed.items() if k in names})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = collections.Counter()
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name, op = event["name"][: -len("_kernel_time")], event["args"].get("op_name", "?")
        ms = event["dur"] / 1e3 / passes
        layer = name.split("/")[0] if name.startswith("layer") else "other"
        group = ("gather/scatter" if op in GATHER_SCATTER or "Active" in name
                 else "attention" if op in ATTENTION
                 else "matmul" if op in ("MatMul", "Gemm", "FusedMatMul")
                 else "index bookkeeping" if op in BOOKKEEPING else "elementwise/norm")
        totals[f"layer:{layer}"] += ms
        totals[f"op:{op}"] += ms
        totals[f"group:{group}"] += ms
        totals["total"] += ms
    return dict(totals)


def main() -> None:
    from hashee.bench.configs import resolve_data
    from hashee.data import load_examples
    from hashee.runtime.batching import active_profile, exit_masks, pad, plan_batches
    from hashee.bundle import open_bundle
    from hashee.runtime.inputs import TextEncoder, normalize_texts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--dense-bundle")
    parser.add_argument("--data", default="sst2-dev")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()

    bundle = open_bundle(args.bundle)
    with tempfile.TemporaryDirectory() as scratch:
        dataset = resolve_data(args.data, Path(scratch), bundle.tokenizer_dir / "tokenizer.json", args.limit)
        inputs = load_examples(dataset["file"]).inputs()
    inputs = inputs[: dataset["limit"]] if dataset["limit"] else inputs
    encoder = TextEncoder(bundle.tokenizer_dir, bundle.max_length)
    encoded = encoder.encode(*normalize_texts(inputs))
    table, layers = bundle.exit_table, bundle.num_layers
    plan = plan_batches(active_profile(encoded.ids, table, layers), args.batch_size)
    feeds, kv_slots, q_slots, active, real = [], 0, np.zeros(layers), np.zeros(layers), 0
    for index in plan:
        ids, mask = pad(encoded.ids, index, encoder.pad_id)
        types, _ = pad(encoded.types, index, 0)
        masks = exit_masks(ids, mask, table, layers)
        feeds.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "exit_masks": masks})
        kv_slots += ids.size
        real += int(mask.sum())
        per_seq = masks.sum(axis=2)  # [L, batch]
        q_slots += per_seq.max(axis=1) * ids.shape[0]
        active += per_seq.sum(axis=1)
    print(f"{dataset['description']}: {len(inputs)} examples, batch {args.batch_size}, {len(plan)} batches")
    print(f"padding: key/value slots {kv_slots} for {real} real tokens ({1 - real / kv_slots:.1%} padding)")
    print("query slots idle (padded to the widest active prefix) per layer: "
          + ", ".join(f"L{i + 1} {1 - a / q:.0%}" for i, (a, q) in enumerate(zip(active, q_slots))))
    print("active tokens per layer: " + ", ".join(f"{a / real:.0%}" for a in active))
    runs = {"hashee": profile(bundle.model_file, feeds, args.passes, args.threads)}
    if args.dense_bundle:
        runs["dense"] = profile(open_bundle(args.dense_bundle).model_file, feeds, args.passes, args.threads)
    for name, totals in runs.items():
        total = totals["total"]
        print(f"\n{name}: {total:.0f} ms of kernel time per pass")
        for prefix in ("group:", "layer:", "op:"):
            rows = sorted(((k[len(prefix):], v) for k, v in totals.items() if k.startswith(prefix)),
                          key=lambda kv: -kv[1])
            print(f"  by {prefix[:-1]}: " + ", ".join(f"{k} {v:.0f} ms ({v / total:.0%})" for k, v in rows[:12]))


if __name__ == "__main__":
    main()
