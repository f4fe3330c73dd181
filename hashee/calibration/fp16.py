"""FP16: a mixed-precision copy of a bundle's fp32 graph, checked against it on ONNX Runtime CPU.

The conversion is onnxconverter-common's ``float16.convert_float_to_float16`` (the fallback named in
DESIGN.md section 5; ModelOpt AutoCast would pull onnxruntime-gpu into the install).  It does not
convert function bodies, so it runs on a copy with the ``hashee`` local functions inlined; the fp32
``model.onnx`` keeps them (TensorRT's parser inlines functions anyway).  What stays fp32:

* IO (``keep_io_types``): int64/bool inputs and fp32 logits, as the fp32 file;
* LayerNormalization, Softmax, every reduction, CumSum/Range/Min/Max (``op_block_list`` is the
  converter's ``DEFAULT_OP_BLOCK_LIST`` plus :data:`EXTRA_BLOCKED_OPS`), and ``MultiHeadAttention``;
* the exit-mask and index logic: every node whose inputs do not depend on a model weight (the
  activity masks, per-sequence counts, query slots, the additive attention mask), found by tracing
  which tensors the weights reach (:func:`mask_logic_nodes`).

Weights and the hidden-state path (embeddings, projections, GELU, attention matmuls, gathers and
scatters of rows) become float16.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hashee.bundle import FP16_FILE, MODEL_FILE, read_bundle, replace_precision_file
from hashee.calibration.feeds import BundleFeeder
from hashee.errors import ExportError, ValidationError

__all__ = ["FP16_FILE", "add_fp16", "build_fp16", "convert_fp16", "inline_functions"]
EXTRA_BLOCKED_OPS = ["LayerNormalization", "Softmax", "ReduceSum", "ReduceMax", "ReduceMean", "ReduceMin",
                     "NonZero", "MultiHeadAttention", "SkipLayerNormalization", "Gelu", "FastGelu"]
# logits of an fp16 graph vs the fp32 graph: absolute, scaled by max(1, largest |fp32 logit|)
FP16_TOLERANCE = 2e-2
FP16_MIN_AGREEMENT = 0.99


def inline_functions(model: Any) -> Any:
    """``model`` with its local functions inlined and the now unused custom domains dropped."""
    from onnx import inliner

    flat = inliner.inline_local_functions(model)
    used = {n.domain for n in flat.graph.node}
    keep = [o for o in flat.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del flat.opset_import[:]
    flat.opset_import.extend(keep)
    return flat


def _weight_names(graph: Any) -> set[str]:
    """Float initializers that are model weights (not the builder's small shared constants)."""
    from onnx import TensorProto

    return {i.name for i in graph.initializer
            if i.data_type == TensorProto.FLOAT and not i.name.startswith("const/") and int(np.prod(i.dims)) > 1}


def _weight_reached(graph: Any) -> set[str]:
    reached = set(_weight_names(graph))
    for node in graph.node:  # nodes are topologically sorted
        if any(name in reached for name in node.input):
            reached.update(node.output)
    return reached


def mask_logic_nodes(graph: Any) -> list[str]:
    """Names of the nodes that no model weight reaches: exit-mask, index and attention-mask logic."""
    reached = _weight_reached(graph)
    return [node.name for node in graph.node if not any(o in reached for o in node.output)]


def mask_logic_tensors(graph: Any) -> set[str]:
    """Every tensor computed without a model weight (graph inputs included): the mask and index path."""
    reached = _weight_reached(graph)
    computed = {o for node in graph.node for o in node.output if o not in reached}
    return computed | {i.name for i in graph.input}


def _untie_initializers(graph: Any, blocked: set[str]) -> None:
    """Give fp32-kept nodes their own copy of any initializer that converted nodes also read.

    The graph builder shares small constants by value (e.g. ``1.0`` in GELU and in the query-width
    ``Max``); the converter keeps an initializer fp32 when any blocked node reads it, which would
    leave the converted reader with an fp32 input.
    """
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for init in list(graph.initializer):
        users = readers.get(init.name, [])
        kept = [n for n in users if n.name in blocked]
        if kept and len(kept) < len(users):
            copy = graph.initializer.add()
            copy.CopyFrom(init)
            copy.name = f"{init.name}/fp32"
            for node in kept:
                for i, name in enumerate(node.input):
                    if name == init.name:
                        node.input[i] = copy.name


def _declare_contrib_outputs(model: Any) -> Any:
    """Shape-infer ``model`` and declare the float outputs of contrib ops that ONNX cannot infer.

    The converter inserts its fp16 casts after fp32-kept nodes from the graph's value_info; without
    one for ``com.microsoft.MultiHeadAttention``'s output it would feed fp32 into fp16 MatMuls.
    """
    from onnx import TensorProto, helper, shape_inference

    model = shape_inference.infer_shapes(model)
    known = {v.name for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    for node in model.graph.node:
        if node.domain == "com.microsoft":
            for name in node.output:
                if name and name not in known:
                    model.graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return shape_inference.infer_shapes(model)  # again, so the types flow on from the declared outputs


def convert_fp16(model: Any) -> tuple[Any, dict[str, Any]]:
    """``(fp16 ModelProto, what was kept in fp32)`` from an fp32 HashEE ``ModelProto``."""
    try:
        from onnxconverter_common import float16
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ExportError("FP16 conversion needs onnxconverter-common: pip install onnxconverter-common") from exc

    flat = inline_functions(model)
    for i, node in enumerate(flat.graph.node):  # the converter blocks nodes by name: make every name unique
        if not node.name:
            node.name = f"node_{i}"
    blocked_nodes = mask_logic_nodes(flat.graph)
    op_block_list = list(float16.DEFAULT_OP_BLOCK_LIST) + [
        op for op in EXTRA_BLOCKED_OPS if op not in float16.DEFAULT_OP_BLOCK_LIST]
    blocked = set(blocked_nodes) | {n.name for n in flat.graph.node if n.op_type in op_block_list}
    _untie_initializers(flat.graph, blocked)
    flat = _declare_contrib_outputs(flat)
    with warnings.catch_warnings():  # one warning per weight below fp16's smallest normal: noise on the CLI
        warnings.filterwarnings("ignore", category=UserWarning, module="onnxconverter_common")
        converted = float16.convert_float_to_float16(flat, keep_io_types=True, op_block_list=op_block_list,
                                                     node_block_list=blocked_nodes, disable_shape_infer=True)
    info = {"method": "onnxconverter-common float16", "functions_inlined": True, "keep_io_types": True,
            "fp32_ops": sorted(set(EXTRA_BLOCKED_OPS) | set(float16.DEFAULT_OP_BLOCK_LIST)),
            "fp32_mask_logic_nodes": len(blocked_nodes)}
    return converted, info


@dataclass
class PrecisionReport:
    """Agreement of a reduced-precision graph with the fp32 graph on ONNX Runtime CPU."""

    precision: str
    max_abs_diff: float
    label_agreement: float | None
    tolerance: float
    num_examples: int
    cases: dict[str, float] = field(default_factory=dict)

    def to_meta(self) -> dict[str, Any]:
        return {"reference": "model.onnx on ONNX Runtime CPU", "max_abs_diff": self.max_abs_diff,
                "label_agreement": self.label_agreement, "tolerance": self.tolerance,
                "num_examples": self.num_examples, "cases": self.cases}


def compare_to_fp32(fp32_file: Path, other_file: Path, feeder: Any, precision: str, tolerance: float,
                    min_agreement: float) -> PrecisionReport:
    """Run the exporter's validation cases through both files, each on a runtime Session; raise when they disagree.

    The check on |difference| is relative to the logits' scale (``tolerance * max(1, max |logit|)``)
    because fp16 keeps about three significant digits; labels must agree on at least ``min_agreement``
    of the real-text rows (classification only).
    """
    reference, candidate = feeder.session_for(fp32_file), feeder.session_for(other_file)
    cases: dict[str, float] = {}
    agree = total = 0
    worst_excess = 0.0
    classification = feeder.meta.get("task", {}).get("problem_type") != "regression"
    for name, feed in feeder.edge_feeds():
        ref = reference.run(**feed)["logits"]
        out = candidate.run(**feed)["logits"]
        diff = float(np.max(np.abs(out.astype(np.float64) - ref), initial=0.0))
        cases[name] = diff
        worst_excess = max(worst_excess, diff / (tolerance * max(1.0, float(np.max(np.abs(ref), initial=0.0)))))
        if classification and name in ("text, padded batch of mixed lengths", "sentence pairs", "batch of 1"):
            agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
            total += len(ref)
    reference.close()
    candidate.close()
    agreement = agree / total if classification and total else None
    report = PrecisionReport(precision, max(cases.values()), agreement, tolerance, total, cases)
    if worst_excess > 1.0:
        raise ValidationError(f"the {precision} graph disagrees with the fp32 graph beyond {tolerance:g} x max(1, "
                              f"|logit|): " + "; ".join(f"{k}: {v:.3g}" for k, v in cases.items()))
    if agreement is not None and agreement < min_agreement:
        raise ValidationError(f"the {precision} graph predicts the fp32 graph's label on only "
                              f"{100 * agreement:.1f} % of the validation sentences (needs {100 * min_agreement:g} %)")
    return report


def build_fp16(folder: Path, meta: dict[str, Any], output: Path) -> dict[str, Any]:
    """Convert ``folder/model.onnx`` to ``output`` and check it against the fp32 file; the manifest entry.

    Raises :class:`~hashee.errors.ValidationError` (nothing is kept) when the fp16 graph fails the
    ONNX checker's full check or disagrees with the fp32 graph.
    """
    import onnx

    folder, output = Path(folder), Path(output)
    converted, info = convert_fp16(onnx.load(str(folder / MODEL_FILE)))
    onnx.save(converted, str(output))
    del converted
    try:
        try:
            onnx.checker.check_model(str(output), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ValidationError(f"the fp16 graph fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
        report = compare_to_fp32(folder / MODEL_FILE, output, BundleFeeder(folder, meta), "fp16",
                                 FP16_TOLERANCE, FP16_MIN_AGREEMENT)
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    return {"file": FP16_FILE, "source": MODEL_FILE, "target": meta["onnx"]["target"],
            "conversion": info, "validation": report.to_meta()}


def add_fp16(bundle: str | Path) -> dict[str, Any]:
    """Add (or replace) ``model.fp16.onnx`` in an existing bundle; returns the updated ``hashee.json``.

    The fp32 ``model.onnx`` is untouched; ``hashee.json`` gains ``precisions.fp16`` (file, conversion
    settings, agreement with fp32) and the new file's sha256, written in one rename after the file.
    """
    import shutil
    import tempfile

    bundle = Path(bundle)
    meta = read_bundle(bundle)
    scratch = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.fp16-", dir=bundle.absolute().parent))
    try:
        entry = build_fp16(bundle, meta, scratch / FP16_FILE)
        return replace_precision_file(bundle, "fp16", {FP16_FILE: scratch / FP16_FILE}, entry)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
