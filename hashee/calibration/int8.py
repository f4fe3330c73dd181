"""INT8: explicit quantisation (QuantizeLinear/DequantizeLinear) calibrated on real sentences.

``hashee calibrate BUNDLE --data FILE`` quantises the bundle's fp32 graph with ONNX Runtime's
``quantize_static`` in QDQ format, the form TensorRT 11's explicit quantisation reads:

* only ``MatMul``/``Gemm`` nodes whose second input is a weight are quantised (``nodes_to_quantize``):
  weights per output channel, their activations per tensor, both symmetric int8 (zero point 0).
  Attention score/context MatMuls, LayerNorm, Softmax and GELU stay in floating point;
* the exit-mask and index logic (NonZero, GatherND/ScatterND indices, CumSum, counts, casts) is never
  quantised: it is integer/bool or weight-free, and no Q/DQ is placed on it (tests check placement);
* calibration batches are real sentences tokenised by the bundle's tokenizer, with ``exit_masks``
  built from the bundle's exit table (:class:`~hashee.calibration.feeds.BundleFeeder`), so the ranges
  are those of the active rows a deployment computes.

The graph is quantised from a copy with the ``hashee`` local functions inlined (the fp32
``model.onnx`` keeps them).  The calibrated ranges are saved in the bundle
(``calibration/int8_ranges.json``, ONNX Runtime's calibration-cache JSON) with the sha256 of the
``model.onnx`` they were measured on, so re-running ``calibrate`` (e.g. after deleting the int8 file
or changing nothing but the evaluation) reuses them instead of recalibrating.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hashee.bundle import (INT8_FILE, MODEL_FILE, RANGES_FILE, BundleAddition, read_bundle, replace_precision_file,
                           sha256_file)
from hashee.calibration.dynamic_int8 import quiet_quantizer
from hashee.calibration.feeds import BundleFeeder, read_texts
from hashee.calibration.fp16 import inline_functions
from hashee.errors import CalibrationError

__all__ = ["INT8_FILE", "METHODS", "RANGES_FILE", "calibrate_bundle", "keep_float_readers", "quantize_int8"]
METHODS = ("minmax", "entropy", "percentile")
PERCENTILE = 99.999
CALIBRATION_BATCH = 16


def weight_matmuls(graph: Any) -> list[str]:
    """Names of the MatMul/Gemm nodes whose second input is an initializer (a weight)."""
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in weights]


class BundleCalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over real sentences and their exit masks."""

    def __init__(self, feeder: Any, data: Any, batch_size: int = CALIBRATION_BATCH) -> None:
        self.feeds = [feeder.graph_feed(feed) for _, feed in feeder.batches(data, batch_size)]
        self._next = iter(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next = iter(self.feeds[start_index:end_index])


def quantize_int8(fp32_file: Path, output: Path, feeder: Any, data: Any | None, method: str,
                  ranges_file: Path) -> None:
    """Write the Q/DQ model to ``output``; calibrate on ``data`` unless ``ranges_file`` exists."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    flat = inline_functions(onnx.load(str(fp32_file)))
    for i, node in enumerate(flat.graph.node):
        if not node.name:
            node.name = f"node_{i}"
    nodes = weight_matmuls(flat.graph)
    reader = None if data is None else BundleCalibrationReader(feeder, data)
    # DedicatedQDQPair: the fake-quantised copy feeds only the quantised MatMul (the residual, GatherND/ScatterND
    # data and every other reader keep the float tensor); no Q/DQ on MatMul outputs (TensorRT fuses input Q/DQ).
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "DedicatedQDQPair": True,
             "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    with tempfile.TemporaryDirectory(prefix="hashee-int8-") as scratch, quiet_quantizer():
        source = Path(scratch) / "inlined.onnx"
        onnx.save(flat, str(source))
        del flat
        quantize_static(str(source), str(output), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Gemm"], nodes_to_quantize=nodes, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], extra_options=extra,
                        calibration_cache_path=str(ranges_file))
    quantized_model = onnx.load(str(output))
    keep_float_readers(quantized_model, set(nodes))
    onnx.save(quantized_model, str(output))


def keep_float_readers(model: Any, quantized: set[str]) -> int:
    """Rewire every reader of a Q->DQ pair that is not a quantised node back to the float tensor.

    ONNX Runtime shares one Q/DQ pair between all readers of an activation, so a residual ``Add``
    (or a GatherND/ScatterND reading the hidden states) would see fake-quantised values; only the
    quantised MatMul/Gemm should.  Returns how many inputs were rewired.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    rewired = 0
    for node in model.graph.node:
        if node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
                rewired += 1
    return rewired


@dataclass
class Comparison:
    """fp32 vs a reduced-precision file on ONNX Runtime CPU over labelled sentences."""

    num_examples: int
    accuracy_fp32: float | None
    accuracy_other: float | None
    label_agreement: float
    max_abs_diff: float
    samples_per_s: dict[str, float] = field(default_factory=dict)

    def to_meta(self) -> dict[str, Any]:
        return {"num_examples": self.num_examples, "accuracy_fp32": self.accuracy_fp32,
                "accuracy": self.accuracy_other, "label_agreement": self.label_agreement,
                "max_abs_diff": self.max_abs_diff, "ort_cpu_samples_per_s_batch32": self.samples_per_s}


def compare_files(fp32_file: Path, other_file: Path, feeder: Any, data: Any, batch_size: int = 32,
                  timing_repeats: int = 1, name: str = "int8") -> Comparison:
    """Accuracy, label agreement, max |difference| and ORT CPU samples/s (length-sorted batches)."""
    sessions = {"fp32": feeder.session_for(fp32_file), "other": feeder.session_for(other_file)}
    batches = list(feeder.batches(data, batch_size, sort=True))
    preds = {name: np.zeros(len(data), dtype=np.int64) for name in sessions}
    worst = 0.0
    for rows, feed in batches:
        ref = sessions["fp32"].run(**feed)["logits"]
        out = sessions["other"].run(**feed)["logits"]
        preds["fp32"][rows], preds["other"][rows] = ref.argmax(-1), out.argmax(-1)
        worst = max(worst, float(np.max(np.abs(out - ref))))
    speed: dict[str, float] = {}
    for _ in range(timing_repeats):
        for key, session in sessions.items():
            start = time.perf_counter()
            for _, feed in batches:
                session.run(**feed)
            speed[key] = max(speed.get(key, 0.0), len(data) / (time.perf_counter() - start))
    gold = data.labels
    accuracy = (lambda p: None) if gold is None else (lambda p: float((p == gold).mean()))
    return Comparison(len(data), accuracy(preds["fp32"]), accuracy(preds["other"]),
                      float((preds["fp32"] == preds["other"]).mean()), worst,
                      {"fp32": speed["fp32"], name: speed["other"]})


@dataclass
class CalibrationResult(BundleAddition):
    """What ``hashee calibrate`` did: the manifest entry and whether the saved ranges were reused."""

    reused_ranges: bool = False

    def format(self) -> str:
        cal = self.entry["calibration"]
        lines = [f"bundle: {self.bundle}",
                 f"{self.entry['file']}: Q/DQ on {self.entry['quantized_nodes']} weight MatMul/Gemm nodes "
                 f"(per-channel symmetric int8 weights, symmetric int8 activations)",
                 f"ranges: {cal['method']} on {cal['samples']} sentences of {cal['data']}"
                 + (" (reused from the bundle)" if self.reused_ranges else f" -> {cal['file']}")]
        check = self.entry.get("evaluation")
        if check:
            acc = ""
            if check["accuracy"] is not None:
                acc = (f"accuracy int8 {check['accuracy']:.4f} vs fp32 {check['accuracy_fp32']:.4f} "
                       f"({100 * (check['accuracy'] - check['accuracy_fp32']):+.2f} points), ")
            speed = check["ort_cpu_samples_per_s_batch32"]
            lines.append(f"on {check['num_examples']} sentences of {check['data']} (ONNX Runtime CPU): {acc}label agreement "
                         f"{100 * check['label_agreement']:.1f} %, max |difference| {check['max_abs_diff']:.3g}, "
                         f"samples/s at batch 32: int8 {speed['int8']:.1f}, fp32 {speed['fp32']:.1f}")
        lines.append(f"took {self.seconds:.1f} s")
        return "\n".join(lines)


def calibrate_bundle(bundle: str | Path, data_file: str | Path, method: str = "minmax", samples: int = 256,
                     eval_samples: int = 0, recalibrate: bool = False, progress: bool = True,
                     eval_data: str | Path | None = None) -> CalibrationResult:
    """Add ``model.int8.onnx`` and its calibration ranges to a bundle; returns what was done.

    Args:
        bundle: a HashEE bundle folder (``hashee export``); the tensorrt target is what
            ``hashee build-engine --precision int8`` reads.
        data_file: real sentences (.tsv/.csv/.jsonl); the first ``samples`` calibrate the ranges.
        method: ``minmax``, ``entropy`` or ``percentile`` (99.999th percentile of |x|).
        eval_samples: when > 0, also report int8 vs fp32 accuracy, agreement and ORT CPU speed on
            the first ``eval_samples`` labelled sentences of ``eval_data`` (default ``data_file``).
        recalibrate: ignore ranges saved in the bundle.

    Raises:
        CalibrationError: unknown method or bad sample counts.
        BundleError, DataError: the bundle or the data file cannot be used.
    """
    import sys

    started = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"[calibrate {time.perf_counter() - started:5.1f}s] {message}", file=sys.stderr, flush=True)

    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    for name, value, low in (("--samples", samples, 1), ("--eval-samples", eval_samples, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CalibrationError(f"{name} must be an integer >= {low}, got {value!r}")
    bundle = Path(bundle)
    meta = read_bundle(bundle)
    feeder = BundleFeeder(bundle, meta)
    model_sha = meta["files"][MODEL_FILE]
    saved = meta.get("precisions", {}).get("int8", {}).get("calibration")
    reuse = (not recalibrate and saved is not None and saved.get("method") == method
             and saved.get("model_sha256") == model_sha and (bundle / RANGES_FILE).is_file())
    if reuse:
        calibration = dict(saved)
    else:
        data = read_texts(data_file, meta, samples)
        calibration = {"method": method, "samples": len(data), "data": str(Path(data_file).absolute()),
                       "data_sha256": sha256_file(Path(data_file)), "file": RANGES_FILE,
                       "model_sha256": model_sha, "batch_size": CALIBRATION_BATCH,
                       "percentile": PERCENTILE if method == "percentile" else None}
    scratch = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.int8-", dir=bundle.absolute().parent))
    try:
        ranges = scratch / "int8_ranges.json"
        if reuse:
            shutil.copyfile(bundle / RANGES_FILE, ranges)
            say(f"reusing the {method} ranges saved in {bundle / RANGES_FILE}")
        else:
            say(f"calibrating ({method}) on {calibration['samples']} sentences with their exit masks")
        quantize_int8(bundle / MODEL_FILE, scratch / INT8_FILE, feeder, None if reuse else data, method, ranges)
        import onnx

        graph = onnx.load(str(scratch / INT8_FILE), load_external_data=False).graph
        producers = {o: n.op_type for n in graph.node for o in n.output}
        quantized = sum(1 for n in graph.node if n.op_type in ("MatMul", "Gemm")
                        and producers.get(n.input[1]) == "DequantizeLinear")
        entry = {"file": INT8_FILE, "source": MODEL_FILE, "target": meta["onnx"]["target"], "format": "QDQ",
                 "functions_inlined": True, "quantized_nodes": quantized,
                 "weights": "int8, symmetric, per output channel", "activations": "int8, symmetric, per tensor",
                 "op_types": ["MatMul", "Gemm"], "calibration": calibration}
        if eval_samples:
            eval_data = Path(eval_data or data_file)
            say(f"comparing int8 with fp32 on up to {eval_samples} sentences of {eval_data} (ONNX Runtime CPU)")
            check = read_texts(eval_data, meta, eval_samples)
            entry["evaluation"] = {"data": str(eval_data.absolute()),
                                   **compare_files(bundle / MODEL_FILE, scratch / INT8_FILE, feeder, check).to_meta()}
        replace_precision_file(bundle, "int8", {INT8_FILE: scratch / INT8_FILE, RANGES_FILE: ranges}, entry)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return CalibrationResult(bundle, entry, time.perf_counter() - started, reused_ranges=reuse)
