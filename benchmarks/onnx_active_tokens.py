"""ONNX Runtime CPU: does the exported HashEE graph do less work when fewer tokens are active?

Usage: python benchmarks/onnx_active_tokens.py BUNDLE DATA_FILE [--dense-bundle DIR] [--batch 32]
       [--length 64] [--repeats 20] [--threads 2]

One batch of ``batch x length`` real tokens (consecutive sentences of DATA_FILE packed into each row,
no padding) runs through the bundle's ``model.onnx`` with four sets of exit masks: every token active
in every layer; 50 % and 25 % of the tokens (random, [CLS] always) going on to layer L while the rest
exit after layer 1; and the real masks from the bundle's exit table.  Printed per row: the median
time of ``repeats`` runs, the analytic FLOPs (``hashee.flops.batch_flops``) and the mean share of
active tokens over the layers; with ``--dense-bundle``, the dense (Optimum) export on the same batch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def _packed_batch(tokenizer, texts, batch: int, length: int) -> np.ndarray:
    """[batch, length] ids: [CLS] sentence tokens ... [SEP], rows filled from consecutive sentences."""
    stream = [i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    body = length - 2
    if len(stream) < batch * body:
        raise SystemExit(f"the data file has {len(stream)} tokens; need {batch * body}")
    rows = np.asarray(stream[: batch * body], dtype=np.int64).reshape(batch, body)
    cls = np.full((batch, 1), tokenizer.cls_token_id, dtype=np.int64)
    sep = np.full((batch, 1), tokenizer.sep_token_id, dtype=np.int64)
    return np.concatenate([cls, rows, sep], axis=1)


def _time(session, feed, repeats: int) -> float:
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("data")
    parser.add_argument("--dense-bundle")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import onnxruntime as ort
    from transformers import AutoTokenizer

    from hashee.data import load_examples
    from hashee.bundle import read_bundle
    from hashee.exit_table import layer_masks
    from hashee.flops import EncoderDims, batch_flops

    bundle = Path(args.bundle)
    meta = read_bundle(bundle)
    backbone = meta["backbone"]
    num_layers = int(backbone["num_layers"])
    dims = EncoderDims(num_layers, backbone["hidden_size"], backbone["intermediate_size"], meta["task"]["num_labels"])
    tokenizer = AutoTokenizer.from_pretrained(str(bundle / "tokenizer"))
    ids = _packed_batch(tokenizer, load_examples(args.data).texts, args.batch, args.length)
    mask = np.ones_like(ids)
    feed = {"input_ids": ids, "attention_mask": mask}
    if any(i["name"] == "token_type_ids" for i in meta["onnx"]["inputs"]):
        feed["token_type_ids"] = np.zeros_like(ids)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    table = np.load(bundle / "exit_table.npy").astype(np.int64)
    cases = {"all tokens active": np.full(ids.shape, num_layers)}
    for share in (0.5, 0.25):
        exits = np.where(rng.random(ids.shape) < share, num_layers, 1)
        exits[:, 0] = num_layers
        cases[f"{int(share * 100)} % go on to layer {num_layers}"] = exits
    cases["real exit masks (exit table)"] = table[ids]

    print(f"ONNX Runtime {ort.__version__} CPU, {args.threads} threads; {meta['onnx']['target']} target; "
          f"batch {args.batch} x {args.length} tokens; median of {args.repeats} runs")
    print(f"{'masks':<34} {'active':>7} {'GFLOPs':>8} {'ms':>8} {'time vs all':>11} {'FLOPs vs all':>12}")
    base_ms = base_flops = None
    for name, exits in cases.items():
        feed["exit_masks"] = layer_masks(exits, feed["attention_mask"], num_layers)
        ms = 1000 * _time(session, feed, args.repeats)
        report = batch_flops(exits, dims)
        base_ms, base_flops = base_ms or ms, base_flops or report.hashee_flops
        active = float(np.mean(report.active_fraction))
        print(f"{name:<34} {100 * active:6.1f}% {report.hashee_flops / 1e9:8.2f} {ms:8.1f} "
              f"{ms / base_ms:10.2f}x {report.hashee_flops / base_flops:11.2f}x")
    if args.dense_bundle:
        dense_dir = Path(args.dense_bundle)
        dense = ort.InferenceSession(str(dense_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
        names = {i.name for i in dense.get_inputs()}
        ms = 1000 * _time(dense, {k: v for k, v in feed.items() if k in names}, args.repeats)
        report = batch_flops(np.full(ids.shape, num_layers), dims)
        print(f"{'dense export (Optimum), no exit':<34} {100.0:6.1f}% {report.dense_flops / 1e9:8.2f} {ms:8.1f} "
              f"{ms / base_ms:10.2f}x {report.dense_flops / base_flops:11.2f}x")


if __name__ == "__main__":
    main()
