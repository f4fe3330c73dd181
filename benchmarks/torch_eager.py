"""PyTorch eager: HashEE (packed layout) against the Hugging Face dense model, side by side.

Usage: python benchmarks/torch_eager.py RUN_DIR DATA_FILE [--batch-sizes 1,32,128] [--repeats 5]

Both models carry the same weights (the dense one is the HashEE model's wrapped backbone), see the
same length-sorted batches, and are timed alternately in one process; the script prints the median
samples/s of each, their ratio, and the analytic FLOPs reduction on the same batches.  Issue #6's
suite (``hashee bench``) will supersede this; it exists so the layout's speed is measured, not assumed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("data")
    parser.add_argument("--batch-sizes", default="1,32,128")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from hashee.data import load_examples
    from hashee.flops import EncoderDims, batch_flops
    from hashee.modeling import HashEEForSequenceClassification

    model = HashEEForSequenceClassification.from_pretrained(args.run_dir).eval()
    dense = model.dense
    dense.config._attn_implementation = "sdpa"
    tokenizer = AutoTokenizer.from_pretrained(args.run_dir)
    examples = load_examples(args.data)
    texts = examples.inputs()
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    dims = EncoderDims.from_config(dense.config)
    print(f"{len(texts)} texts, torch threads {torch.get_num_threads()}")
    print("batch | dense samples/s | HashEE samples/s | speed-up | FLOPs reduction")
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        batches = [tokenizer([texts[i] for i in order[s:s + batch_size]], padding=True, truncation=True,
                             max_length=args.max_length, return_tensors="pt")
                   for s in range(0, len(order), batch_size)]
        if batch_size == 1:
            batches = batches[:: max(1, len(batches) // 200)]  # 200 single sentences keep batch 1 short
        n = sum(b["input_ids"].shape[0] for b in batches)
        flops = None
        with torch.no_grad():
            for b in batches[:2]:  # warm-up
                dense(**b), model(**b)
            times = {"dense": [], "hashee": []}
            for _ in range(args.repeats):
                for name, fn in (("dense", dense), ("hashee", model)):
                    start = time.perf_counter()
                    for b in batches:
                        fn(**b)
                    times[name].append(time.perf_counter() - start)
            for b in batches:
                part = batch_flops(model(**b).exit_layers, dims)
                flops = part if flops is None else flops + part
        dense_sps = n / statistics.median(times["dense"])
        hashee_sps = n / statistics.median(times["hashee"])
        print(f"{batch_size:5d} | {dense_sps:15.1f} | {hashee_sps:16.1f} | {hashee_sps / dense_sps:7.2f}x | "
              f"{flops.speedup:14.2f}x")


if __name__ == "__main__":
    main()
