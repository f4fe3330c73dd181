"""``hashee bench``: PyTorch, ONNX Runtime and TensorRT, dense and HashEE, measured side by side.

For each backend and batch size: samples/s (median of ``repeats`` timed passes over the data after a
warm-up pass), p50/p99 latency per batch, peak resident memory; the analytic FLOPs speed-up on the
same data next to the realised one; the task metric of every backend and its parity with the
PyTorch reference.  Every backend runs in a worker process of its own (:mod:`hashee.bench.worker`)
and the driver sends the workers one timed pass each in turn, so ratios are measured side by side.

Every backend runs on the same batches: the data is tokenised once, items are ordered by length and
exit profile (the runtime's cost-aware batching) and cut into batches of each size.  A backend that
cannot run here (TensorRT without a GPU, PyTorch without reference weights) is reported as skipped
with the reason.
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from hashee import __version__
from hashee.bench.configs import resolve_data
from hashee.bench.report import write_markdown, write_plot
from hashee.bundle import MODEL_FILE, open_bundle, tokenizer_config, write_meta
from hashee.data import load_examples
from hashee.errors import BackendError, BundleError, DataError, HasheeError, InputError
from hashee.flops import EncoderDims, batch_flops
from hashee.runtime.batching import active_profile, plan_batches
from hashee.runtime.inputs import TextEncoder, normalize_texts
from hashee.runtime.runners.tensorrt import TensorRTRunner
from hashee.runtime.session import _special

RUNTIMES = ("torch", "onnxruntime", "tensorrt")
#: precisions ``--precisions`` takes: int8 is the dynamic int8 model on ONNX Runtime (``hashee quantize``) and the
#: int8 engine on TensorRT (``hashee calibrate`` + ``hashee build-engine --precision int8``)
PRECISIONS = ("fp32", "int8")
RUNTIME_LABELS = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT"}
DEFAULT_BATCH_SIZES = (1, 8, 32, 128)
ORT_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "electra": "bert", "distilbert": "bert", "albert": "bert"}


@dataclass
class BackendSpec:
    """One measured configuration: a runtime running a bundle (dense or HashEE)."""

    runtime: str
    model: str  # "hashee" or "dense"
    bundle: Path | None
    reference: Path | None = None
    skip: str | None = None  # reason, when known before starting a worker
    precision: str = "fp32"
    variant: str = ""  # a compared HashEE bundle (--compare), e.g. "prefix"

    @property
    def key(self) -> str:
        return (f"{self.runtime}-{self.model}" + ("" if self.precision == "fp32" else f"-{self.precision}")
                + (f":{self.variant}" if self.variant else ""))

    @property
    def label(self) -> str:
        model = "HashEE" if self.model == "hashee" else "dense"
        return (f"{RUNTIME_LABELS[self.runtime]} {model}" + (f"-{self.variant}" if self.variant else "")
                + ("" if self.precision == "fp32" else f" {self.precision}"))


def compare_specs(compare: Sequence[str | Path], backends: Sequence[str], main_bundle: Any,
                  precisions: Sequence[str] = ("fp32",)) -> list[BackendSpec]:
    """Extra HashEE bundles of the same model measured beside the main one (ONNX Runtime and TensorRT, at
    each of ``precisions``; a precision a bundle lacks is a skipped row naming the command that adds it).

    Each is named by its layout (``hashee export --layout``), or by its folder when the layout is the
    main bundle's; the torch backend runs the reference weights whatever the layout, so it is not repeated.
    """
    main_layout = (main_bundle.meta.get("onnx") or {}).get("layout") or "packed"
    specs, names = [], set()
    for path in compare:
        other = open_bundle(path)
        if other.kind != "hashee":
            raise BundleError(f"--compare {path} is a dense bundle; compare HashEE bundles (the dense baseline is "
                              f"measured anyway)")
        if other.meta["backbone"] != main_bundle.meta["backbone"]:
            raise BundleError(f"--compare {path} holds another backbone than {main_bundle.path}; compare exports "
                              f"of the same model")
        layout = (other.meta.get("onnx") or {}).get("layout") or "packed"
        name = layout if layout != main_layout else Path(path).name
        if name in names:
            raise InputError(f"--compare names two bundles that would both be labelled {name!r}")
        names.add(name)
        for runtime in (r for r in RUNTIMES if r in backends and r != "torch"):
            for precision in precisions:
                spec = BackendSpec(runtime, "hashee", Path(path), variant=name, precision=precision)
                spec.skip = precision_refusal(spec)
                specs.append(spec)
    return specs


def parse_list(text: str | Sequence[Any], kind: type, what: str) -> list[Any]:
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = [kind(str(item).strip()) for item in items if str(item).strip()]
    except ValueError:
        raise InputError(f"{what} must be a comma-separated list, got {text!r}") from None
    if not values:
        raise InputError(f"{what} is empty")
    return values


def _say(progress: bool) -> Callable[[str], None]:
    start = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"[bench {time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)
    return say


# ---------------------------------------------------------------------------------------------- dense baseline
def _source_run(bundle: Any) -> Path | None:
    """The run folder a bundle came from, when it still exists."""
    run = bundle.meta.get("source", {}).get("run_dir")
    return Path(run) if run and Path(run).is_dir() else None


def _bundle_run_folder(bundle: Any, scratch: Path) -> Path | None:
    """A run folder (weights + tokenizer) rebuilt from a bundle's ``reference/`` and ``tokenizer/``."""
    if bundle.reference_dir is None:
        return None
    scratch.mkdir(parents=True, exist_ok=True)
    for item in list(bundle.reference_dir.iterdir()) + list(bundle.tokenizer_dir.iterdir()):
        if item.is_file():
            shutil.copyfile(item, scratch / item.name)
    return scratch


def resolve_dense(dense: str | Path | None, hashee_bundle: Any, output: Path, say: Callable[[str], None]
                  ) -> tuple[Path | None, str]:
    """The dense bundle to measure and where it came from; exports one (Optimum) from a run folder."""
    from hashee.exporter import export

    if dense is not None:
        path = Path(dense)
        if (path / "hashee.json").is_file():
            if open_bundle(path, verify=False).kind != "dense":
                raise BundleError(f"--dense {path} is a HashEE bundle; pass a dense bundle (hashee export --dense) "
                                  f"or a run folder")
            return path, f"dense bundle {path}"
        if not (path / "config.json").is_file():
            raise BundleError(f"--dense {path} is neither a bundle (hashee.json) nor a run folder (config.json)")
        run, origin = path, f"Optimum export of {path}"
    else:
        run = _source_run(hashee_bundle) or _bundle_run_folder(hashee_bundle, output / "work" / "hashee-weights")
        if run is None:
            return None, ("no dense weights: the bundle has no reference/ and its source run is gone; pass "
                          "--dense BUNDLE_OR_RUN")
        origin = f"Optimum export of the HashEE model's own weights without early exit ({run})"
    target = output / "work" / "dense-bundle"
    try:  # reuse an export of the same run from an earlier bench into this folder
        previous = open_bundle(target)
        if previous.meta.get("source", {}).get("run_dir") == str(run.absolute()) and previous.reference_dir \
                and previous.max_length == hashee_bundle.max_length:
            say(f"reusing the dense export in {target}")
            return target, origin
    except HasheeError:
        pass
    say(f"exporting the dense baseline with Optimum from {run}")
    export(run, target, dense=True, reference=True, overwrite=True, progress=False,
           max_length=hashee_bundle.max_length)
    return target, origin


def optimize_dense(bundle_dir: Path, output: Path, say: Callable[[str], None]) -> tuple[Path, str]:
    """A copy of a dense bundle whose graph went through ONNX Runtime's transformer optimizer.

    This is what a user of Optimum does for deployment (``ORTOptimizer``, O2: attention, LayerNorm,
    GELU and bias fusions), applied with ``onnxruntime.transformers.optimizer``.  Falls back to the
    plain export (with the reason) where the optimizer fails.
    """
    bundle = open_bundle(bundle_dir)
    backbone = bundle.meta["backbone"]
    model_type = ORT_MODEL_TYPES.get(backbone.get("family"))
    if model_type is None:
        return bundle_dir, f"no ONNX Runtime optimizer for {backbone.get('family')}: the plain Optimum export"
    target = output / "work" / "dense-bundle-ort-optimized"
    try:
        import logging

        from onnxruntime.transformers.optimizer import optimize_model

        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        say("optimising the dense graph with onnxruntime.transformers (Optimum O2 fusions)")
        optimized = optimize_model(str(bundle.model_file), model_type=model_type,
                                   num_heads=int(backbone["num_attention_heads"]),
                                   hidden_size=int(backbone["hidden_size"]), opt_level=2, use_gpu=False)
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(bundle_dir, target)
        optimized.save_model_to_file(str(target / MODEL_FILE))
        meta = {k: v for k, v in bundle.meta.items() if k not in ("files", "format_version")}
        meta["onnx"] = dict(meta["onnx"], optimization={"tool": "onnxruntime.transformers.optimizer",
                                                         "opt_level": 2, "fused": fused})
        write_meta(target, meta)
        return target, "ONNX Runtime transformer fusions (O2): " + ", ".join(f"{k} x{v}" for k, v in fused.items())
    except Exception as exc:  # the optimizer is best effort: measure the plain export and say why
        return bundle_dir, f"plain Optimum export (ONNX Runtime optimizer failed: {type(exc).__name__}: {exc})"


def tensorrt_refusal(bundle_dir: Path, device: str | None, threads: int | None,
                     precision: str | None = None) -> str | None:
    """Why the TensorRT runner cannot run ``bundle_dir`` here (checked without starting a worker), or None."""
    try:
        TensorRTRunner(open_bundle(bundle_dir, verify=False), device, threads, precision)
    except BackendError as exc:
        return str(exc)
    return None


def precision_refusal(spec: BackendSpec) -> str | None:
    """Why ``spec`` cannot run at its precision (the bundle lacks the file, or the runtime has no such mode)."""
    if spec.precision == "fp32" or spec.bundle is None:
        return None
    if spec.runtime == "onnxruntime":
        from hashee.runtime.runners.onnxruntime import ort_model_file

        try:
            ort_model_file(open_bundle(spec.bundle, verify=False), spec.precision)
        except HasheeError as exc:
            return str(exc)
    return None


def quantize_own_dense(dense_bundle: Path, output: Path, say: Callable[[str], None]) -> str | None:
    """Add dynamic int8 to the dense bundle this bench exported into its work folder (never to a user's).

    Returns why it could not (the quantiser's refusal), else None.
    """
    from hashee.calibration.dynamic_int8 import MANIFEST_KEY, quantize_bundle

    if Path(dense_bundle).absolute() != (output / "work" / "dense-bundle").absolute():
        return None
    if MANIFEST_KEY in open_bundle(dense_bundle, verify=False).meta.get("precisions", {}):
        return None
    say("quantising the dense baseline (dynamic int8, hashee quantize)")
    try:
        quantize_bundle(dense_bundle, progress=False)
    except HasheeError as exc:
        return f"hashee quantize {dense_bundle} refused: {exc}"
    return None


# ---------------------------------------------------------------------------------------------- workers
class Worker:
    """A spawned :func:`hashee.bench.worker.serve` process for one backend."""

    def __init__(self, context: Any, spec: BackendSpec, payload: dict[str, Any]) -> None:
        from hashee.bench.worker import serve

        self.spec = spec
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, payload), daemon=True)
        self.process.start()
        child.close()
        self.info: dict[str, Any] = {}
        self.skip: str | None = None

    def wait_ready(self) -> None:
        try:
            status, value = self.conn.recv()
        except EOFError:
            status, value = "skipped", f"the worker process died while loading (exit code {self.process.exitcode})"
        if status == "ready":
            self.info = value
        else:
            self.skip = value
            self.close()

    def ask(self, *message: Any) -> Any:
        self.conn.send(message)
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.spec.key}: the worker process died (exit code {self.process.exitcode})") from None
        if status != "ok":
            raise RuntimeError(f"{self.spec.key}: {value}")
        return value

    def close(self) -> None:
        if self.process.is_alive() and self.skip is None:
            try:
                self.ask("close")
            except (RuntimeError, OSError):
                pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()  # our own child only


# ---------------------------------------------------------------------------------------------- statistics
def spread(plan: list[Any], max_batches: int | None) -> list[Any]:
    """At most ``max_batches`` batches of ``plan``, evenly spaced (the plan is sorted by length)."""
    if max_batches is None or len(plan) <= max_batches:
        return plan
    import numpy as np

    picks = np.unique(np.linspace(0, len(plan) - 1, int(max_batches)).round().astype(int))
    return [plan[i] for i in picks]


def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def timing_summary(count: int, passes: list[float], batches: list[float]) -> dict[str, Any]:
    median = statistics.median(passes)
    return {"samples_per_s": count / median, "pass_s": {"median": median, "runs": passes},
            "latency_ms": {"p50": 1e3 * percentile(batches, 50), "p99": 1e3 * percentile(batches, 99),
                           "mean": 1e3 * statistics.fmean(batches)}}


def data_statistics(encoded: Any, table: Any, dims: Any, plans: dict[int, list[Any]]) -> dict[str, Any]:
    """Token counts, analytic FLOPs on the data, and the padding of each batch size's plan."""
    import numpy as np

    lengths = encoded.lengths
    flops = batch_flops([table[ids] for ids in encoded.ids], dims)
    padding = {}
    for size, plan in plans.items():  # the timed batches (all of them, or the spread subset)
        slots = sum(len(index) * int(lengths[index].max()) for index in plan)
        real = sum(int(lengths[index].sum()) for index in plan)
        padding[str(size)] = {"padded_slots": int(slots), "real_tokens": real, "waste": 1 - real / slots}
    return {
        "examples": int(len(lengths)),
        "tokens": {"total": int(lengths.sum()), "mean": float(lengths.mean()), "min": int(lengths.min()),
                   "max": int(lengths.max()), "p50": float(np.median(lengths))},
        "flops": {"dense_gflops": flops.dense_flops / 1e9, "hashee_gflops": flops.hashee_flops / 1e9,
                  "speedup": flops.speedup, "active_fraction": list(flops.active_fraction)},
        "padding": padding,
    }


def score(logits: Any, gold: Any, regression: bool) -> dict[str, float]:
    from hashee.metrics import compute_metrics

    return {k: float(v) for k, v in compute_metrics(logits, gold, regression).items()}


def parity(logits: Any, reference: Any, regression: bool) -> dict[str, Any]:
    import numpy as np

    out = {"max_abs_diff": float(np.abs(logits - reference).max())}
    out["label_agreement"] = None if regression else float((logits.argmax(1) == reference.argmax(1)).mean())
    return out


def parity_reference(runtime: str, model: str) -> str:
    """The record a backend's logits are compared with: never the backend itself.

    Every runtime is checked against PyTorch running the same model; PyTorch itself is checked against
    ONNX Runtime (an independent implementation: the exported graph, not the eager layers).
    """
    return f"{'onnxruntime' if runtime == 'torch' else 'torch'}-{model}"


# ---------------------------------------------------------------------------------------------- planning
def check_options(backends: Sequence[str], precisions: Sequence[str], batch_sizes: Sequence[int],
                  max_batches: int | None, repeats: int, say: Callable[[str], None]
                  ) -> tuple[list[str], list[str], list[int]]:
    """The backends, precisions (in :data:`PRECISIONS` order) and sorted batch sizes; InputError on a bad one."""
    backends = list(backends)
    unknown = [b for b in backends if b not in RUNTIMES]
    if unknown:
        raise InputError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(RUNTIMES)}")
    wrong = [p for p in precisions if p not in PRECISIONS]
    if wrong or not precisions:
        raise InputError(f"unknown precision(s) {', '.join(map(str, wrong)) or '(none given)'}; choose from "
                         f"{', '.join(PRECISIONS)}")
    precisions = [p for p in PRECISIONS if p in set(precisions)]
    batch_sizes = sorted({int(b) for b in batch_sizes})
    if not batch_sizes or batch_sizes[0] < 1:
        raise InputError("batch sizes must be positive integers")
    if max_batches is not None and int(max_batches) < 1:
        raise InputError(f"--max-batches must be at least 1, got {max_batches}")
    if isinstance(repeats, bool) or int(repeats) < 1:
        raise InputError(f"--repeats must be at least 1, got {repeats}")
    if repeats < 5:
        say(f"note: {repeats} timed runs per point; the suite's standard is at least 5")
    return backends, precisions, batch_sizes


@dataclass
class BenchData:
    """The examples every backend runs, their gold labels, and the batches cut from them."""

    dataset: dict[str, Any]
    inputs: list[Any]
    gold: Any  # label ids / targets, or None (then ``metric_note`` says why)
    metric_note: str | None
    full_plans: dict[int, list[Any]]  # every example, per batch size (accuracy and parity)
    plans: dict[int, list[Any]]  # the timed batches (``max_batches`` spread)
    stats: dict[str, Any]  # :func:`data_statistics`


def bench_gold(examples: Any, hashee_bundle: Any, count: int) -> tuple[Any, str | None]:
    """The first ``count`` gold labels in the bundle's label ids, or None and why there is no task metric."""
    if not examples.has_labels:
        return None, "no task metric: the data has no labels"
    label2id = None if hashee_bundle.is_regression else {name: i for i, name in enumerate(hashee_bundle.labels)}
    if label2id is not None and set(examples.labels) - set(label2id):
        label2id = {str(i): i for i in range(len(label2id))}  # a model with names, data with ids (as eval)
    try:
        return examples.label_ids(label2id)[:count], None
    except DataError as exc:
        return None, f"no task metric: {exc}"


def load_bench_data(hashee_bundle: Any, data: str, output: Path, limit: int | None, batch_sizes: list[int],
                    max_batches: int | None, say: Callable[[str], None]) -> BenchData:
    """Read ``data``, tokenise it once and cut it into each batch size's plan (every worker pads the same batches)."""
    dataset = resolve_data(data, output / "work", hashee_bundle.tokenizer_dir / "tokenizer.json", limit)
    examples = load_examples(dataset["file"], regression=hashee_bundle.is_regression)
    inputs = examples.inputs()[: dataset["limit"]] if dataset["limit"] else examples.inputs()
    if not inputs:
        raise DataError(f"{dataset['file']} holds no examples")
    gold, metric_note = bench_gold(examples, hashee_bundle, len(inputs))
    say(f"data: {dataset['description']}, {len(inputs)} examples")

    pad_token = _special(tokenizer_config(hashee_bundle).get("pad_token"))
    encoder = TextEncoder(hashee_bundle.tokenizer_dir, hashee_bundle.max_length, pad_token)
    encoded = encoder.encode(*normalize_texts(inputs))
    table, layers = hashee_bundle.exit_table, hashee_bundle.num_layers
    profile = active_profile(encoded.ids, table, layers)
    full_plans = {size: plan_batches(profile, size, cost_aware=True) for size in batch_sizes}
    plans = {size: spread(plan, max_batches) for size, plan in full_plans.items()}
    backbone = hashee_bundle.meta["backbone"]
    dims = EncoderDims(layers, int(backbone["hidden_size"]), int(backbone["intermediate_size"]),
                       len(hashee_bundle.labels))
    stats = data_statistics(encoded, table, dims, plans)
    return BenchData(dataset, inputs, gold, metric_note, full_plans, plans, stats)


@dataclass
class DenseBaseline:
    """The dense bundle measured beside the HashEE one, where it came from, and its ONNX Runtime graph."""

    bundle: Path | None
    origin: str
    ort_bundle: Path | None  # the (optimised) copy ONNX Runtime runs
    ort_note: str
    int8_refusal: str | None  # why the dense int8 row cannot run, when it cannot
    reference: Path | None  # the run folder the torch row loads, when the bundle has no reference/


def prepare_dense(dense: str | Path | None, hashee_bundle: Any, output: Path, backends: list[str],
                  precisions: list[str], optimize_dense_graph: bool, say: Callable[[str], None]) -> DenseBaseline:
    """Resolve (export) the dense baseline, quantise it for int8 rows and optimise its ONNX Runtime graph."""
    bundle, origin = None, "dense baselines not requested (no torch/onnxruntime backend)"
    if any(b in ("torch", "onnxruntime", "tensorrt") for b in backends):
        bundle, origin = resolve_dense(dense, hashee_bundle, output, say)
    int8_refusal = None
    if bundle is not None and "int8" in precisions and "onnxruntime" in backends:
        int8_refusal = quantize_own_dense(bundle, output, say)
    ort_bundle, ort_note = bundle, "plain Optimum export"
    if bundle is not None and "onnxruntime" in backends and optimize_dense_graph:
        ort_bundle, ort_note = optimize_dense(bundle, output, say)
    reference = None
    if bundle is not None:
        dense_meta = open_bundle(bundle, verify=False)
        if dense_meta.reference_dir is None:
            reference = _source_run(dense_meta)
    return DenseBaseline(bundle, origin, ort_bundle, ort_note, int8_refusal, reference)


def backend_specs(bundle: str | Path, hashee_bundle: Any, dense: DenseBaseline, backends: list[str],
                  precisions: list[str], compare: Sequence[str | Path]) -> list[BackendSpec]:
    """Every measured configuration, in table order: per runtime and precision, dense then HashEE; then --compare."""
    hashee_reference = _source_run(hashee_bundle) if hashee_bundle.reference_dir is None else None
    specs: list[BackendSpec] = []
    for runtime in RUNTIMES:
        if runtime not in backends:
            continue
        for precision in precisions:
            if runtime == "torch" and precision != "fp32":
                continue  # PyTorch rows are the fp32 references
            for model in ("dense", "hashee"):
                if model == "dense":
                    path = dense.ort_bundle if runtime == "onnxruntime" else dense.bundle
                    spec = BackendSpec(runtime, model, path, dense.reference if runtime == "torch" else None,
                                       skip=None if path is not None else dense.origin, precision=precision)
                    if runtime == "onnxruntime" and precision == "int8":
                        spec.skip = spec.skip or dense.int8_refusal
                else:
                    spec = BackendSpec(runtime, model, Path(bundle),
                                       hashee_reference if runtime == "torch" else None, precision=precision)
                spec.skip = spec.skip or precision_refusal(spec)
                specs.append(spec)
    return specs + compare_specs(compare, backends, hashee_bundle, precisions)


# ---------------------------------------------------------------------------------------------- starting workers
def start_workers(specs: list[BackendSpec], bench: BenchData, batch_sizes: list[int], device: str | None,
                  threads: int | None, say: Callable[[str], None]
                  ) -> tuple[list[Worker], dict[str, dict[str, Any]]]:
    """A worker per runnable spec, each loaded and ready; the records of all specs (skipped ones with why)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    say(f"starting {len(specs)} backend workers: {', '.join(s.key for s in specs)}")
    plan_payload = {size: [index.tolist() for index in plan] for size, plan in bench.plans.items()}
    accuracy_plan = [index.tolist() for index in bench.full_plans[batch_sizes[-1]]]
    workers: list[Worker] = []
    records: dict[str, dict[str, Any]] = {}
    for spec in specs:
        record = {"key": spec.key, "label": spec.label, "runtime": spec.runtime, "model": spec.model,
                  "precision": spec.precision,
                  "bundle": str(spec.bundle) if spec.bundle else None, "status": "ok", "reason": None,
                  "variant": spec.variant or None}
        records[spec.key] = record
        if spec.skip is None and spec.runtime == "tensorrt":
            spec.skip = tensorrt_refusal(spec.bundle, device, threads, None if spec.precision == "fp32" else spec.precision)
        if spec.skip:
            record.update(status="skipped", reason=spec.skip)
            say(f"{spec.label}: skipped ({spec.skip})")
            continue
        payload = {"bundle": str(spec.bundle), "backend": spec.runtime, "device": device, "threads": threads,
                   "precision": None if spec.precision == "fp32" else spec.precision,
                   "reference": str(spec.reference) if spec.reference else None, "inputs": bench.inputs,
                   "plans": plan_payload, "accuracy_plan": accuracy_plan}
        workers.append(Worker(context, spec, payload))
    for worker in workers:
        worker.wait_ready()
        record = records[worker.spec.key]
        if worker.skip:
            record.update(status="skipped", reason=worker.skip)
            say(f"{worker.spec.label}: skipped ({worker.skip})")
        else:
            record.update(device=worker.info["device"], memory={"start_mib": worker.info["start_mib"],
                                                                "loaded_mib": worker.info["loaded_mib"]})
            record["results"] = {}
    return workers, records


# ---------------------------------------------------------------------------------------------- measuring
def time_batch_size(live: list[Worker], size: int, plan: list[Any], warmup: int, repeats: int, bar: Any
                    ) -> dict[str, dict[str, Any]]:
    """Warm every worker up at ``size``, then time ``repeats`` passes, one per worker in turn (side by side)."""
    timings: dict[str, dict[str, list[float]]] = {w.spec.key: {"passes": [], "batches": []} for w in live}
    for worker in live:
        bar.set_postfix_str(f"batch {size}: warm-up {worker.spec.label}")
        for _ in range(warmup):
            worker.ask("time", size, 1)
            bar.update(1)
    for repeat in range(repeats):
        for worker in live:  # one pass each, in turn: side by side
            bar.set_postfix_str(f"batch {size}: run {repeat + 1}/{repeats} {worker.spec.label}")
            got = worker.ask("time", size, 1)
            timings[worker.spec.key]["passes"] += got["passes"]
            timings[worker.spec.key]["batches"] += got["batches"]
            bar.update(1)
    timed = int(sum(len(index) for index in plan))
    summaries = {}
    for key, t in timings.items():
        summaries[key] = timing_summary(timed, t["passes"], t["batches"])
        summaries[key].update(batches=len(plan), examples=timed)
    return summaries


def measure(workers: list[Worker], records: dict[str, dict[str, Any]], plans: dict[int, list[Any]],
            batch_sizes: list[int], warmup: int, repeats: int, progress: bool) -> dict[str, Any]:
    """Run the accuracy pass, the timed passes and the memory read on every live worker; close all workers.

    Fills each live record's ``results`` and ``memory``; returns the logits of every live backend.
    """
    from tqdm.auto import tqdm

    live = [w for w in workers if not w.skip]
    steps = len(live) * (1 + len(batch_sizes) * (warmup + repeats))
    bar = tqdm(total=steps, desc="bench", unit="pass", disable=not progress, file=sys.stderr)
    logits: dict[str, Any] = {}
    try:
        for worker in live:  # every example at the largest batch size: accuracy, parity, and a first warm-up
            bar.set_postfix_str(f"accuracy pass {worker.spec.label}")
            logits[worker.spec.key] = worker.ask("logits")
            bar.update(1)
        for size in batch_sizes:
            for key, summary in time_batch_size(live, size, plans[size], warmup, repeats, bar).items():
                records[key]["results"][str(size)] = summary
        for worker in live:
            records[worker.spec.key]["memory"].update(worker.ask("memory"))
    finally:
        bar.close()
        for worker in workers:
            worker.close()
    return logits


# ---------------------------------------------------------------------------------------------- scoring
def score_records(records: dict[str, dict[str, Any]], logits: dict[str, Any], gold: Any, regression: bool,
                  metric_note: str | None) -> None:
    """Add each measured record's task metric and its parity with the reference (and with fp32 for int8)."""
    for key, record in records.items():
        if record["status"] != "ok":
            continue
        out = logits[key]
        record["metric"] = score(out, gold, regression) if gold is not None else None
        if record["metric"] is None:
            record["metric_note"] = metric_note
        reference_key = parity_reference(record["runtime"], record["model"])
        if reference_key in logits:
            record["parity"] = {"reference": reference_key, **parity(out, logits[reference_key], regression)}
        else:
            runtime = reference_key.split("-")[0]
            reason = records.get(reference_key, {}).get("reason") or f"the {runtime} backend was not run"
            record["parity"] = {"reference": None, "reason": f"no {RUNTIME_LABELS[runtime]} reference: {reason}"}
        fp32_key = f"{record['runtime']}-{record['model']}" + (f":{record['variant']}" if record.get("variant") else "")
        if record["precision"] != "fp32" and fp32_key in logits:  # int8 against fp32 on the same runtime
            record["parity_fp32"] = {"reference": fp32_key, **parity(out, logits[fp32_key], regression)}


def _ratio(records: dict[str, dict[str, Any]], top: str, bottom: str, size: int) -> float | None:
    """samples/s of record ``top`` over record ``bottom`` at ``size``, when both were measured."""
    h, d = records.get(top), records.get(bottom)
    if h and d and h["status"] == d["status"] == "ok":
        return h["results"][str(size)]["samples_per_s"] / d["results"][str(size)]["samples_per_s"]
    return None


def speedup_row(records: dict[str, dict[str, Any]], size: int, ideal: float) -> dict[str, Any]:
    """The realised speed-ups at one batch size (same runtime, HashEE over dense) beside the FLOPs ideal."""
    row: dict[str, Any] = {"flops_ideal": ideal}
    for runtime in RUNTIMES:
        realised = _ratio(records, f"{runtime}-hashee", f"{runtime}-dense", size)
        if realised is not None:
            row[runtime] = {"realised": realised, "realised_over_ideal": realised / ideal}
    for name, top, bottom in (("onnxruntime_hashee_over_torch_hashee", "onnxruntime-hashee", "torch-hashee"),
                              ("onnxruntime_hashee_over_torch_dense", "onnxruntime-hashee", "torch-dense")):
        value = _ratio(records, top, bottom, size)
        if value is not None:
            row[name] = value
    over = {}  # every row over the same runtime's dense fp32 (dense int8, HashEE fp32, HashEE int8)
    for key, record in records.items():
        base = f"{record['runtime']}-dense"
        if key != base and record["status"] == "ok":
            value = _ratio(records, key, base, size)
            if value is not None:
                over[key] = value
    if over:
        row["over_dense_fp32"] = over
    value = _ratio(records, "onnxruntime-hashee-int8", "onnxruntime-dense-int8", size)
    if value is not None:
        row["onnxruntime_hashee_int8_over_dense_int8"] = value
    return row


# ---------------------------------------------------------------------------------------------- writing
def library_versions() -> dict[str, str]:
    """The versions of the libraries that set the figures (those importable here)."""
    versions = {}
    for name in ("numpy", "onnxruntime", "torch", "transformers"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        versions[name] = getattr(module, "__version__", "?")
    return versions


def machine_info() -> dict[str, Any]:
    """Platform, Python, CPU count, load average and library versions of this machine."""
    import os

    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg")
            else None, "versions": library_versions()}


def write_results(result: dict[str, Any], output: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and ``throughput.png`` (whose path joins the result)."""
    (output / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, output / "results.md")
    result["plot"] = str(write_plot(result, output / "throughput.png"))
    (output / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {output / 'results.json'}, {output / 'results.md'}, {result['plot']}")
    return result


# ---------------------------------------------------------------------------------------------- the run
def run_bench(bundle: str | Path, data: str, output: str | Path, backends: Sequence[str] = RUNTIMES,
              batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, dense: str | Path | None = None, repeats: int = 5,
              warmup: int = 1, threads: int | None = None, device: str | None = None, limit: int | None = None,
              optimize_dense_graph: bool = True, max_batches: int | None = None, progress: bool = True,
              command: str | None = None, precisions: Sequence[str] = ("fp32",),
              compare: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Benchmark ``bundle`` (HashEE) against its dense baseline on ``data``; write results to ``output``.

    ``compare``: more HashEE bundles of the same model (e.g. ``hashee export --layout prefix``) measured
    side by side on the ONNX Runtime and TensorRT backends, on the same batches.

    Returns the ``results.json`` content.  See the module docstring for what is measured.
    ``max_batches`` caps the batches of each timed pass (evenly spread over the length-sorted plan, so
    short and long inputs stay represented); accuracy and parity always cover every example.
    ``precisions`` (``fp32``, ``int8``) adds int8 rows: on ONNX Runtime the dynamic int8 models of ``hashee
    quantize`` (dense and HashEE; the dense baseline this bench exports itself is quantised here), on TensorRT
    the int8 engines (PyTorch rows stay fp32); ratios are over the same runtime's dense fp32.
    """
    say = _say(progress)
    started = time.time()
    backends, precisions, batch_sizes = check_options(backends, precisions, batch_sizes, max_batches, repeats, say)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    hashee_bundle = open_bundle(bundle)
    if hashee_bundle.kind != "hashee":
        raise BundleError(f"{bundle} is a dense bundle; hashee bench measures a HashEE bundle (pass the dense one "
                          f"with --dense)")
    bench = load_bench_data(hashee_bundle, data, output, limit, batch_sizes, max_batches, say)
    dense_baseline = prepare_dense(dense, hashee_bundle, output, backends, precisions, optimize_dense_graph, say)
    specs = backend_specs(bundle, hashee_bundle, dense_baseline, backends, precisions, compare)
    workers, records = start_workers(specs, bench, batch_sizes, device, threads, say)
    logits = measure(workers, records, bench.plans, batch_sizes, warmup, repeats, progress)
    score_records(records, logits, bench.gold, hashee_bundle.is_regression, bench.metric_note)
    ideal = bench.stats["flops"]["speedup"]
    stats, dataset = bench.stats, bench.dataset
    result = {
        "hashee_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "command": command,
        "machine": machine_info(),
        "bundle": str(bundle),
        "exit_table": hashee_bundle.meta.get("exit_table", {}),
        "dense": {"bundle": str(dense_baseline.bundle) if dense_baseline.bundle else None,
                  "origin": dense_baseline.origin, "onnxruntime_graph": dense_baseline.ort_note},
        "data": {"name": dataset["name"], "file": str(dataset["file"]), "description": dataset["description"],
                 "pairs": isinstance(bench.inputs[0], tuple), **{k: stats[k] for k in ("examples", "tokens")}},
        "batch_sizes": batch_sizes, "precisions": precisions, "repeats": repeats, "warmup": warmup, "threads": threads,
        "device": device,
        "timing": "per batch: exit masks + the backend's inference call (host arrays out, GPU work synchronised); "
                  "tokenisation excluded; samples/s = examples timed per pass / median pass time",
        "max_batches": max_batches,
        "flops": stats["flops"], "padding": stats["padding"],
        "backends": list(records.values()),
        "speedups": {str(size): speedup_row(records, size, ideal) for size in batch_sizes},
    }
    return write_results(result, output, say)
