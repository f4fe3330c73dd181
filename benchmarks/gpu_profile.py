"""Where PyTorch-CUDA time goes: HashEE vs dense, per forward, on short (SST-2) and long (256-512 token) inputs.

Usage: python benchmarks/gpu_profile.py --out DIR [--model RUN] [--device cuda]

For each input set and batch size: samples/s (median of passes, no profiler attached), and from one
profiled pass (torch.profiler) the device operations launched per forward, the summed device time of
those operations per forward, and the wall time per forward.  A device busy fraction far below 1 means
the forward is bound by the host issuing kernels, not by arithmetic; then fewer, larger kernels
(TensorRT, CUDA graphs) matter more than fewer FLOPs.  Model and data as benchmarks/gpu_check.py.
Writes DIR/gpu_profile.json and DIR/gpu_profile.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_check import _batches, _data, _model  # noqa: E402
from gpu_common import cuda_missing, samples_per_second, script_parser, write_report  # noqa: E402


def _device_ops(fn, batches, device) -> tuple[int, float]:
    """(device operations, summed device microseconds) over one pass, from torch.profiler."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for b in batches:
            fn(**b)
        if device == "cuda":
            torch.cuda.synchronize()
    if device == "cuda":  # kernels and copies as the device ran them
        ops = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    else:  # on a CPU, the outermost aten operators stand in for kernels
        ops = [e for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return len(ops), float(sum(e.time_range.elapsed_us() for e in ops))


def measure(model, batches_by_size, repeats, device) -> list[dict]:
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    dense = model.dense
    rows = []
    with torch.no_grad():
        for batch_size, batches in batches_by_size.items():
            samples = sum(b["input_ids"].shape[0] for b in batches)
            row = {"batch": batch_size, "batches": len(batches),
                   "mean_tokens": float(sum(int(b["attention_mask"].sum()) for b in batches) / samples)}
            for name, fn in (("dense", dense), ("hashee", model)):
                seconds = samples / samples_per_second(lambda b, fn=fn: fn(**b), batches, repeats, sync, warmup=3)
                count, device_us = _device_ops(fn, batches, device)
                per = len(batches)
                row[name] = {"samples_per_s": samples / seconds, "wall_ms_per_forward": 1e3 * seconds / per,
                             "device_ops_per_forward": count / per,
                             "device_ms_per_forward": device_us / 1e3 / per,
                             "device_busy": (device_us / 1e6) / seconds if seconds else None}
            row["speedup"] = row["hashee"]["samples_per_s"] / row["dense"]["samples_per_s"]
            row["device_time_ratio"] = (row["dense"]["device_ms_per_forward"] / row["hashee"]["device_ms_per_forward"]
                                        if row["hashee"]["device_ms_per_forward"] else None)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def markdown(report) -> str:
    lines = [f"# PyTorch eager on {report['device']}: where the time goes", "",
             f"model: {report['model']}", ""]
    for name, section in report["sets"].items():
        lines += [f"## {name}", "",
                  "| batch | mean tokens | dense samples/s | HashEE samples/s | speed-up | device-time ratio "
                  "| ops/forward dense / HashEE | device busy dense / HashEE |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in section:
            d, h = r["dense"], r["hashee"]
            ratio = f"{r['device_time_ratio']:.2f}x" if r["device_time_ratio"] else "n/a"
            busy = (f"{100 * d['device_busy']:.0f} % / {100 * h['device_busy']:.0f} %"
                    if d["device_busy"] is not None and h["device_busy"] is not None else "n/a")
            lines.append(f"| {r['batch']} | {r['mean_tokens']:.0f} | {d['samples_per_s']:.1f} | "
                         f"{h['samples_per_s']:.1f} | {r['speedup']:.2f}x | {ratio} | "
                         f"{d['device_ops_per_forward']:.0f} / {h['device_ops_per_forward']:.0f} | {busy} |")
        lines.append("")
    lines.append("speed-up: HashEE over dense samples/s (same weights, dense = no early exit); device-time ratio: "
                 "dense over HashEE summed device time per forward (what the speed-up would be if the GPU were "
                 "never idle); device busy: summed device time over wall time.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = script_parser(__doc__.splitlines()[0])
    parser.add_argument("--short-batch-sizes", default="1,32,128,512")
    parser.add_argument("--long-batch-sizes", default="1,8,32")
    args = parser.parse_args()
    import platform

    import torch

    from hashee.bench.configs import build_long_inputs
    from hashee.data import load_examples

    if cuda_missing(args.device, "gpu_profile"):
        return 1
    train_file, dev_file = _data()
    texts = load_examples(dev_file).inputs()[: args.limit]
    model, tokenizer = _model(train_file, args.model)
    model = model.to(args.device).eval()
    model.dense.config._attn_implementation = "sdpa"
    tokenizer_file = Path(tokenizer.name_or_path) / "tokenizer.json"
    if not tokenizer_file.is_file():
        folder = Path(args.out) / "tokenizer"
        tokenizer.save_pretrained(str(folder))
        tokenizer_file = folder / "tokenizer.json"
    long_texts = build_long_inputs(list(load_examples(dev_file).texts), tokenizer_file, count=128)

    def on_device(text_list, sizes, max_length):
        return {size: [{k: v.to(args.device) for k, v in b.items()}
                       for b in _batches(tokenizer, text_list, size, max_length=max_length)] for size in sizes}

    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
              "model": args.model or "all-MiniLM-L6-v2 + frequency exit table (untrained head)",
              "versions": {"torch": torch.__version__}, "sets": {}}
    sets = {"SST-2 dev (short)": (texts, args.short_batch_sizes, 128),
            "long (256-512 tokens)": (long_texts, args.long_batch_sizes, 512)}
    for name, (text_list, sizes, max_length) in sets.items():
        print(f"== {name}", flush=True)
        batches = on_device(text_list, [int(s) for s in sizes.split(",")], max_length)
        report["sets"][name] = measure(model, batches, args.repeats, args.device)
    write_report(Path(args.out), "gpu_profile", report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
