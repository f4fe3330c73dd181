"""Layouts on PyTorch (issue 14): dense and HashEE, eager and with CUDA graphs, per batch size and data.

Variants (inputs start on the host as numpy each time, so every variant pays its own copies and
planning): ``dense`` (the Hugging Face model, SDPA), ``dense_graphs`` (the same, one CUDA graph per
bucketed shape), ``packed`` (HashEE reference layout, eager), ``prefix`` (prefix layout, eager, host
plan included), ``prefix_graphs`` (prefix layout, bucketed, one CUDA graph per bucket) and
``prefix_graphs_cost`` (the same with the host cost model's dense fallback: what the torch runner does
on a GPU).  Parity of every HashEE variant against ``packed``.  Used by benchmarks/gpu_check.py
(``--sections layouts``); on a CPU the graph variants are skipped.

Every variant runs each batch once untimed (the CUDA-graph variants capture every graph then), and the
graph caches hold more graphs than any one timed loop has batches, so timed passes only replay; a row
records any capture that still happened while timed (``captures_while_timed``), which would make its
graph figure a capture cost.  At batch 1 an evenly spread ``single_limit`` of the batches is timed.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from gpu_common import samples_per_second

MAX_GRAPHS = 256  # above the batches of one timed loop (batch 1: single_limit; larger batches: fewer)
SINGLE_LIMIT = 100  # batch-1 batches per timed pass (evenly spread over the length-sorted set)


def _tokenize(tokenizer: Any, texts: list[str], batch_size: int, max_length: int) -> list[dict[str, np.ndarray]]:
    """Batches of ``batch_size`` (longest first, as cost-aware batching does), numpy int64, right-padded."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    out = []
    for start in range(0, len(order), batch_size):
        chunk = [texts[i] for i in order[start:start + batch_size]]
        encoded = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        out.append({k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()
                    if k in ("input_ids", "attention_mask", "token_type_ids")})
    return out


def _bucket_dense(batch: dict[str, np.ndarray], max_length: int) -> tuple[dict[str, np.ndarray], int]:
    """A dense batch padded to the bucketed shape (rows to a power of two, columns to a multiple of 8)."""
    from hashee.prefix import SEQ_MULTIPLE

    rows, seq = batch["input_ids"].shape
    target_rows = 1 << max(0, rows - 1).bit_length()
    target_seq = max(seq, min(max_length, -(-seq // SEQ_MULTIPLE) * SEQ_MULTIPLE))
    take = np.minimum(np.arange(target_rows), rows - 1)
    padded = {k: np.pad(v[take], ((0, 0), (0, target_seq - seq))) for k, v in batch.items()}
    return padded, rows


def variants(model: Any, device: str, max_length: int) -> dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]]:
    """name -> a function from a host batch to host logits."""
    import torch

    from hashee.flops import EncoderDims
    from hashee.modeling.prefix import prefix_encode
    from hashee.prefix import CostModel, mask_names, plan_prefix

    dense, layers = model.dense, model.num_layers
    table = model.exit_table_layers.cpu().numpy()
    pad = int(getattr(dense.config, "pad_token_id", 0) or 0)
    dims = EncoderDims.from_config(dense.config)
    cost = CostModel(dims.num_layers, dims.hidden_size, dims.intermediate_size, launch_seconds=1e-6)

    def to_device(batch: dict[str, np.ndarray]) -> dict[str, Any]:
        return {k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in batch.items()}

    def run_dense(batch):
        with torch.inference_mode():
            return dense(**to_device(batch)).logits.float().cpu().numpy()

    def run_packed(batch):
        with torch.inference_mode():
            return model(**to_device(batch)).logits.float().cpu().numpy()

    def plan(batch, bucket):
        exits = table[batch["input_ids"]]
        return plan_prefix(batch["input_ids"], batch["attention_mask"], exits, layers, batch.get("token_type_ids"),
                           bucket=bucket, max_length=max_length, pad_id=pad)

    def prefix_forward(t):
        return prefix_encode(model, t["input_ids"], t["attention_mask"], t["position_ids"],
                             [t[name] for name in mask_names(layers)], t.get("token_type_ids"))[0]

    def run_prefix(batch):
        p = plan(batch, bucket=False)
        with torch.inference_mode():
            return p.restore_rows(prefix_forward(to_device(p.feed())).float().cpu().numpy())

    out = {"dense": run_dense, "packed": run_packed, "prefix": run_prefix}
    if device.startswith("cuda"):
        from hashee.runtime.runners.cuda_graphs import GraphCache, cuda_capture

        def dense_forward(t):
            # a [B, 1, S] mask takes Hugging Face's extended-mask path: its 2-D SDPA path asks torch.all(mask == 1),
            # a host read that CUDA-graph capture forbids
            mask = t["attention_mask"][:, None, :]
            return dense(**{**t, "attention_mask": mask}).logits

        dense_graphs = GraphCache(cuda_capture(dense_forward, torch.device(device)), MAX_GRAPHS)
        prefix_graphs = GraphCache(cuda_capture(prefix_forward, torch.device(device)), MAX_GRAPHS)

        def run_dense_graphs(batch):
            padded, rows = _bucket_dense(batch, max_length)
            return dense_graphs.run(tuple(padded["input_ids"].shape), padded)[:rows]

        def run_prefix_graphs(batch, with_cost=False):
            p = plan(batch, bucket=True)
            if with_cost:
                p = cost.choose(p)
            return p.restore_rows(prefix_graphs.run(p.shape, p.feed()))

        def run_prefix_graphs_cost(batch):
            return run_prefix_graphs(batch, True)

        run_dense_graphs.cache = dense_graphs  # type: ignore[attr-defined]
        run_prefix_graphs.cache = run_prefix_graphs_cost.cache = prefix_graphs  # type: ignore[attr-defined]
        out.update(dense_graphs=run_dense_graphs, prefix_graphs=run_prefix_graphs,
                   prefix_graphs_cost=run_prefix_graphs_cost)
    return out


def _captures(fn: Callable[..., Any]) -> int:
    cache = getattr(fn, "cache", None)
    return 0 if cache is None else cache.captures


def _time_variants(fns: dict[str, Callable[..., Any]], batches: list[dict[str, np.ndarray]], repeats: int,
                   sync: Callable[[], None]) -> dict[str, Any]:
    """samples/s of every variant on ``batches``, after one untimed run of each batch (every graph captured)."""
    row: dict[str, Any] = {}
    recaptured = {}
    for variant, fn in fns.items():
        for batch in batches:
            fn(batch)
        before = _captures(fn)
        row[variant] = samples_per_second(fn, batches, repeats, sync, warmup=0)
        if _captures(fn) > before:
            recaptured[variant] = _captures(fn) - before
    if recaptured:
        row["captures_while_timed"] = recaptured
    return row


def layouts_section(model: Any, tokenizer: Any, datasets: dict[str, tuple[list[str], int]], batch_sizes: list[int],
                    repeats: int, device: str, single_limit: int = SINGLE_LIMIT) -> dict[str, Any]:
    """``{data name: {"rows": [{batch, variant samples/s, ratios}], "parity": {...}}}``."""
    import torch

    model = model.to(device).eval()
    model.dense.config._attn_implementation = "sdpa"
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fns = variants(model, device, max(length for _, length in datasets.values()))
    report: dict[str, Any] = {}
    for name, (texts, max_length) in datasets.items():
        rows, parity = [], {}
        for batch_size in batch_sizes:
            batches = _tokenize(tokenizer, texts, batch_size, max_length)
            if batch_size == 1:
                batches = batches[:: max(1, len(batches) // single_limit)]
            if batch_size == max(batch_sizes):
                reference = np.concatenate([fns["packed"](b) for b in batches])
                for variant, fn in fns.items():
                    if variant.startswith("dense"):
                        continue
                    got = np.concatenate([fn(b) for b in batches])
                    parity[variant] = {"max_abs_diff_vs_packed": float(np.max(np.abs(got - reference))),
                                       "label_agreement": float((got.argmax(-1) == reference.argmax(-1)).mean())}
            row: dict[str, Any] = {"batch": batch_size, **_time_variants(fns, batches, repeats, sync)}
            for variant in list(fns):
                base = "dense_graphs" if variant.endswith("graphs") or variant.endswith("cost") else "dense"
                if variant != base and base in row:
                    row[f"{variant}_vs_{base}"] = row[variant] / row[base]
            if "prefix" in row:
                row["prefix_vs_packed"] = row["prefix"] / row["packed"]
            rows.append(row)
            print(f"layouts {name} batch {batch_size}: "
                  + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                              if k != "batch"), flush=True)
        report[name] = {"rows": rows, "parity": parity, "num_texts": len(texts), "max_length": max_length}
    return report


def layouts_markdown(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, section in report.items():
        if isinstance(section, str):  # a data set skipped or failed (benchmarks/gpu_check.py)
            lines += ["", f"### PyTorch layouts, {name}: {section}"]
            continue
        rows = section["rows"]
        names = [k for k, v in rows[0].items() if isinstance(v, float) and "_vs_" not in k]
        lines += ["", f"### PyTorch layouts, {name} ({section['num_texts']} texts, max length {section['max_length']})",
                  *(["", section["note"]] if section.get("note") else []),
                  "", "| batch | " + " | ".join(names) + " | prefix graphs vs dense graphs | prefix vs packed |",
                  "| ---: | " + " | ".join("---:" for _ in names) + " | ---: | ---: |"]
        for r in rows:
            ratio = r.get("prefix_graphs_vs_dense_graphs")
            lines.append(f"| {r['batch']} | " + " | ".join(f"{r[n]:.1f}" for n in names)
                         + f" | {'-' if ratio is None else f'{ratio:.2f}x'} | {r['prefix_vs_packed']:.2f}x |")
        recaptured = {r["batch"]: r["captures_while_timed"] for r in rows if r.get("captures_while_timed")}
        if recaptured:
            lines += ["", f"**CUDA graphs captured while timed** (those figures include capture cost): {recaptured}"]
        lines += ["", "samples/s, each batch from host numpy (host plan, copies and one sync included); "
                  "parity vs packed eager: "
                  + "; ".join(f"{k} {v['max_abs_diff_vs_packed']:.2g} ({100 * v['label_agreement']:.1f} %)"
                              for k, v in section["parity"].items())]
    return lines
