"""Dynamic INT8 for ONNX Runtime CPU: ``hashee quantize BUNDLE`` adds ``model.int8-dynamic.onnx``.

What a CPU user builds instead of early exit is ONNX Runtime's dynamic quantisation of the dense model
(``onnxruntime.quantization.quantize_dynamic``; ``optimum-cli onnxruntime quantize`` does the same).
This module applies it to any bundle, dense or HashEE, so the two compose:

* int8 weights (symmetric, per output channel unless ``per_channel=False``), activations quantised at
  run time (``DynamicQuantizeLinear``: uint8, per tensor), the products in ``MatMulInteger`` (or
  ``QAttention`` for a fused dense ``Attention`` node);
* only weight ``MatMul``/``Gemm`` nodes (second input an initializer) of the encoder are quantised, named
  one by one (``nodes_to_quantize``); the classification head (pooler, classifier: a [CLS] row per
  sequence, nothing to gain) stays fp32 unless ``quantize_head``; the exit-mask and index path
  (NonZero, GatherND/ScatterND indices, CumSum, counts, the additive attention mask) holds no weight
  MatMul, so it is never quantised; attention
  score/context products, LayerNorm, Softmax and GELU stay fp32;
* the graph is quantised from a copy with the ``hashee`` local functions inlined
  (``onnx.inliner.inline_local_functions``) and shapes inferred by ONNX Runtime's symbolic shape
  inference (``auto_merge=True``): ONNX's own inference does not see through the functions, and
  ``quantize_dynamic`` fails on the plain ``model.onnx``;
* a dense bundle (the Optimum export) is first fused with ``onnxruntime.transformers``' optimizer
  (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization), as Optimum's O2 would; the
  fused ``Attention`` node is quantised too (``QAttention``).

The result is checked against the fp32 ``model.onnx`` through the runtime's own :class:`Session`
(its encoder, batching and ONNX Runtime runner) on real sentences and edge inputs, and refused
(nothing written, :class:`~hashee.errors.ValidationError`) when it predicts the fp32 label on fewer
than :data:`MIN_AGREEMENT` of them.  The file is listed in ``hashee.json`` under
``precisions["int8-dynamic"]`` with its sha256.

Naming: ``Session.load(..., backend="onnxruntime", precision="int8")`` runs this file; on TensorRT,
``precision="int8"`` is the engine built from the Q/DQ ``model.int8.onnx`` of ``hashee calibrate``.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from hashee.bundle import DYNAMIC_INT8_FILE, MODEL_FILE, BundleAddition, read_bundle, replace_precision_file
from hashee.bundle import DYNAMIC_INT8_KEY as MANIFEST_KEY  # hashee.json: precisions["int8-dynamic"]
from hashee.errors import CalibrationError, ValidationError
#: the least share of check sentences on which int8 must predict the fp32 label
MIN_AGREEMENT = 0.995
DEFAULT_SAMPLES = 400
WEIGHT_OPS = ("MatMul", "Gemm")
FUSED_OPS = ("Attention",)  # ONNX Runtime's fused attention (dense graphs): input 1 is the QKV weight
ORT_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "electra": "bert", "distilbert": "bert", "albert": "bert"}


@contextmanager
def quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizers and optimizer log advice at WARNING on the root logger; keep the CLI clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


# ---------------------------------------------------------------------------------------------- the graph
def prepared_graph(model: Any) -> Any:
    """``model`` with local functions inlined, every node named, shapes inferred (symbolic, auto-merged)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from hashee.calibration.fp16 import inline_functions

    flat = inline_functions(model)
    for i, node in enumerate(flat.graph.node):  # quantize_dynamic selects nodes by name
        if not node.name:
            node.name = f"node_{i}"
    try:
        with quiet_quantizer():
            inferred = SymbolicShapeInference.infer_shapes(flat, auto_merge=True)
    except Exception as exc:  # the tool raises bare Exceptions on graphs it cannot follow
        raise CalibrationError(f"ONNX Runtime's symbolic shape inference failed on the inlined graph "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if inferred is None:
        raise CalibrationError("ONNX Runtime's symbolic shape inference returned no model for the inlined graph")
    return inferred


def fused_dense_graph(model_file: Path, backbone: dict[str, Any]) -> tuple[Any, dict[str, int]]:
    """The dense fp32 graph through ``onnxruntime.transformers.optimizer`` (O2 fusions) and what was fused."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = ORT_MODEL_TYPES.get(str(backbone.get("family")))
    if model_type is None:
        return onnx.load(str(model_file)), {}
    with quiet_quantizer():
        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        optimized = optimize_model(str(model_file), model_type=model_type,
                                   num_heads=int(backbone["num_attention_heads"]),
                                   hidden_size=int(backbone["hidden_size"]), opt_level=2, use_gpu=False)
    fused = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    return optimized.model, fused


NORMS = ("LayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
         "EmbedLayerNormalization", "SimplifiedLayerNormalization")


def head_nodes(graph: Any) -> set[str]:
    """Nodes from which no LayerNorm is reachable: the classification head after the last encoder layer.

    Every encoder projection feeds a residual LayerNorm; the pooler and classifier (one [CLS] row per
    sequence) do not.
    """
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    feeds_norm: set[str] = set()
    for node in reversed(graph.node):  # nodes are topologically sorted
        if node.op_type in NORMS or any(c.name in feeds_norm for o in node.output for c in consumers.get(o, ())):
            feeds_norm.add(node.name)
    return {n.name for n in graph.node if n.name not in feeds_norm}


def quantizable_nodes(graph: Any, quantize_head: bool = False) -> list[str]:
    """Names of the nodes to quantise: weight MatMul/Gemm (second input an initializer) and fused Attention;
    without ``quantize_head``, not the classification head (:func:`head_nodes`)."""
    weights = {i.name for i in graph.initializer}
    head = set() if quantize_head else head_nodes(graph)
    return [n.name for n in graph.node if n.op_type in WEIGHT_OPS + FUSED_OPS and len(n.input) > 1
            and n.input[1] in weights and n.name not in head]


def quantize_graph(model: Any, output: Path, per_channel: bool = True, quantize_head: bool = False) -> dict[str, Any]:
    """Dynamic-quantise a prepared ``model`` into ``output``; returns what was done (manifest fields)."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = quantizable_nodes(model.graph, quantize_head)
    if not nodes:
        raise CalibrationError("the graph has no MatMul/Gemm with a weight initializer: nothing to quantise")
    op_types = sorted({n.op_type for n in model.graph.node if n.name in set(nodes)})
    with tempfile.TemporaryDirectory(prefix="hashee-int8-dynamic-") as scratch, quiet_quantizer():
        source = Path(scratch) / "prepared.onnx"
        onnx.save(model, str(source))
        quantize_dynamic(str(source), str(output), op_types_to_quantize=op_types, nodes_to_quantize=nodes,
                         per_channel=per_channel, weight_type=QuantType.QInt8,
                         extra_options={"MatMulConstBOnly": True})
    quantized = onnx.load(str(output))
    # The auto-merged symbolic shapes served the quantiser only: they equate dimensions that differ at run
    # time (the prefix layout's widths W_l with one another and with the sequence), and ONNX Runtime's
    # memory planner would reuse one buffer for tensors of different shapes.  It infers its own.
    del quantized.graph.value_info[:]
    onnx.save(quantized, str(output))
    graph = quantized.graph
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in ("MatMulInteger", "DynamicQuantizeLinear", "QAttention", "DynamicQuantizeMatMul"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return {"tool": f"onnxruntime {onnxruntime.__version__} quantize_dynamic", "op_types": op_types,
            "quantized_nodes": len(nodes), "quantized_ops": counts,
            "weights": "int8, symmetric, " + ("per output channel" if per_channel else "per tensor"),
            "activations": "uint8, per tensor, quantised at run time", "per_channel": per_channel,
            "head": "int8" if quantize_head else "fp32 (pooler and classifier: one row per sequence)",
            "functions_inlined": True, "shape_inference": "onnxruntime symbolic_shape_infer (auto_merge)"}


# ---------------------------------------------------------------------------------------------- the check
@dataclass
class Agreement:
    """The dynamic int8 file against the fp32 file, both through the runtime's Session on ONNX Runtime CPU."""

    label_agreement: float | None
    num_examples: int
    max_abs_diff: float
    cases: dict[str, float] = field(default_factory=dict)
    accuracy_fp32: float | None = None
    accuracy: float | None = None
    num_sentences: int = 0

    def to_meta(self) -> dict[str, Any]:
        return {"reference": "model.onnx through hashee.runtime.Session on ONNX Runtime CPU",
                "num_sentences": self.num_sentences,
                "label_agreement": self.label_agreement, "num_examples": self.num_examples,
                "max_abs_diff": self.max_abs_diff, "cases": self.cases, "accuracy_fp32": self.accuracy_fp32,
                "accuracy": self.accuracy}


def _sessions(bundle_dir: Path, candidate: Path) -> tuple[Any, Any]:
    from hashee.bundle import open_bundle
    from hashee.runtime.runners.onnxruntime import OnnxRuntimeRunner
    from hashee.runtime.session import Session

    bundle = open_bundle(bundle_dir)
    trial = replace(bundle, model_file=Path(candidate))
    return (Session(bundle, OnnxRuntimeRunner(bundle, "cpu")), Session(trial, OnnxRuntimeRunner(trial, "cpu")))


def _exit_cases(session: Any, texts: list[str], seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """Array feeds with planted exit layers (HashEE bundles whose masks are an input): 1, L, random."""
    from hashee.runtime.batching import pad

    encoded = session.encoder.encode(texts, None)
    index = np.arange(len(texts))
    ids, mask = pad(encoded.ids, index, session.encoder.pad_id)
    layers = session.bundle.num_layers
    rng = np.random.default_rng(seed)
    cases = []
    for name, exits in (("every token exits at layer 1", np.ones(ids.shape, dtype=np.int64)),
                        ("all tokens active", np.full(ids.shape, layers, dtype=np.int64)),
                        ("random exit layers", rng.integers(1, layers + 1, size=ids.shape))):
        exits = exits * (mask != 0)
        masks = np.stack([exits >= layer for layer in range(1, layers + 1)])
        cases.append((name, {"input_ids": ids, "attention_mask": mask, "exit_masks": masks}))
    return cases


def compare_to_fp32(bundle_dir: Path, candidate: Path, texts: Sequence[Any], gold: np.ndarray | None = None,
                    min_agreement: float = MIN_AGREEMENT) -> Agreement:
    """Run real ``texts`` and edge inputs through fp32 and ``candidate``; raise when labels disagree.

    Label agreement counts the real texts, a batch of 1 and sentence pairs (classification only); the
    edge cases (only special tokens, an input cut at the max length, planted exit layers) are reported
    as max |difference|.  Raises :class:`ValidationError` when the agreement is below ``min_agreement``
    or an output is not finite.
    """
    fp32, int8 = _sessions(bundle_dir, candidate)
    with fp32, int8:
        return _compare(fp32, int8, list(texts), gold, min_agreement)


def _compare(fp32: Any, int8: Any, texts: list[Any], gold: np.ndarray | None, min_agreement: float) -> Agreement:
    """:func:`compare_to_fp32` on two open sessions."""
    from hashee.runtime.inputs import TruncationWarning

    firsts = [t[0] if isinstance(t, tuple) else t for t in texts]
    long_text = " ".join(firsts[:64]) * 4
    cases: dict[str, float] = {}
    agree = total = 0
    classification = not fp32.bundle.is_regression
    accuracy_fp32 = accuracy = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        batches = [("real text", texts, 32), ("batch of 1", firsts[:8], 1),
                   ("sentence pairs", list(zip(firsts[:8], firsts[8:16])) or [(firsts[0], firsts[0])], 8),
                   ("only special tokens", ["", ""], 2), ("longer than the max length", [long_text, firsts[0]], 2)]
        for name, items, size in batches:
            ref = fp32.predict_logits(items, batch_size=size)
            out = int8.predict_logits(items, batch_size=size)
            if not np.isfinite(out).all():
                raise ValidationError(f"the dynamic int8 graph gives non-finite logits on {name}; nothing was written")
            cases[name] = float(np.max(np.abs(out.astype(np.float64) - ref), initial=0.0))
            if classification and name in ("real text", "batch of 1", "sentence pairs"):
                agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
                total += len(ref)
            if name == "real text" and classification and gold is not None and len(gold) == len(ref):
                accuracy_fp32 = float((ref.argmax(-1) == gold).mean())
                accuracy = float((out.argmax(-1) == gold).mean())
    if fp32.bundle.kind == "hashee" and "exit_masks" in fp32.input_names:
        for name, feed in _exit_cases(fp32, firsts[:16]):
            ref, out = fp32.run(**feed)["logits"], int8.run(**feed)["logits"]
            cases[name] = float(np.max(np.abs(out.astype(np.float64) - ref), initial=0.0))
    agreement = agree / total if classification and total else None
    report = Agreement(agreement, total, max(cases.values()), cases, accuracy_fp32, accuracy, len(texts))
    if agreement is not None and agreement < min_agreement:
        raise ValidationError(f"the dynamic int8 graph predicts the fp32 graph's label on only {100 * agreement:.1f} % "
                              f"of {total} check sentences (needs {100 * min_agreement:g} %); nothing was written")
    return report


# ---------------------------------------------------------------------------------------------- the command
class QuantizeResult(BundleAddition):
    """What ``hashee quantize`` did: the manifest entry it wrote and how long it took."""

    def format(self) -> str:
        e, check = self.entry, self.entry["validation"]
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(e["quantized_ops"].items()))
        fused = e.get("fused_before_quantization")
        lines = [f"bundle: {self.bundle}",
                 f"{e['file']}: dynamic int8 for ONNX Runtime CPU on {e['quantized_nodes']} weight nodes "
                 f"({', '.join(e['op_types'])}; {ops}); weights {e['weights']}, activations {e['activations']}",
                 ("fused first (onnxruntime.transformers O2): " + ", ".join(f"{k} x{v}" for k, v in fused.items()))
                 if fused else "not fused (the graph quantised as exported)"]
        agreement = check["label_agreement"]
        text = "n/a (regression)" if agreement is None else f"{100 * agreement:.1f} %"
        acc = ""
        if check.get("accuracy") is not None:
            acc = (f", accuracy int8 {check['accuracy']:.4f} vs fp32 {check['accuracy_fp32']:.4f}")
        lines.append(f"check vs fp32 through the runtime Session on ONNX Runtime CPU ({check['num_sentences']} sentences "
                     f"of {check['data']}, a batch of 1, pairs and edge inputs): label agreement {text} of "
                     f"{check['num_examples']} rows, max |difference| {check['max_abs_diff']:.3g}{acc}")
        lines.append(f"run it: hashee predict {self.bundle} --backend onnxruntime --precision int8 \"text\"  "
                     f"(took {self.seconds:.1f} s)")
        return "\n".join(lines)


def _check_texts(data: str | Path | None, meta: dict[str, Any], samples: int) -> tuple[list[Any], Any, str]:
    """Real check sentences (pairs where the file has them) with gold label ids when usable."""
    from hashee.calibration.feeds import read_texts
    from hashee.samples import SST2_DEV

    source = Path(data) if data is not None else Path(SST2_DEV)
    found = read_texts(source, meta, samples)
    texts: list[Any] = list(zip(found.texts, found.pairs)) if found.pairs is not None else list(found.texts)
    return texts, found.labels, str(source)


def quantize_bundle(bundle: str | Path, data: str | Path | None = None, samples: int = DEFAULT_SAMPLES,
                    per_channel: bool = True, fuse: bool | None = None, min_agreement: float = MIN_AGREEMENT,
                    quantize_head: bool = False, progress: bool = True) -> QuantizeResult:
    """Add (or replace) ``model.int8-dynamic.onnx`` in a bundle (dense, HashEE or embedded exit table).

    Args:
        bundle: a folder written by ``hashee export`` (with or without ``--dense``/``--embed-exit-table``).
        data: real sentences to check against fp32 (.tsv/.csv/.jsonl); default: the bundled SST-2 dev sample.
        samples: how many of them (at most).
        per_channel: int8 weights per output channel (else one scale per weight matrix).
        fuse: run ONNX Runtime's transformer optimizer first; default: for dense bundles only (HashEE graphs
            carry their own contrib ops).
        min_agreement: refuse below this share of fp32 labels (tests plant a disagreement with it).
        quantize_head: also quantise the pooler/classifier (one row per sequence: no speed to gain, and the
            most sensitive to rounding; off by default).

    Raises:
        ValidationError: int8 disagrees with fp32 (nothing is written).
        CalibrationError, BundleError, DataError: bad arguments, bundle or data.
    """
    import onnx

    started = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"[quantize {time.perf_counter() - started:5.1f}s] {message}", file=sys.stderr, flush=True)

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise CalibrationError(f"--samples must be a positive integer, got {samples!r}")
    if not 0.0 <= float(min_agreement) <= 1.0:
        raise CalibrationError(f"the minimum label agreement must lie in 0..1, got {min_agreement!r}")
    bundle = Path(bundle)
    meta = read_bundle(bundle)
    texts, gold, source = _check_texts(data, meta, samples)
    fuse = meta.get("kind") == "dense" if fuse is None else bool(fuse)
    fused: dict[str, int] = {}
    if fuse:
        say("fusing the fp32 graph with onnxruntime.transformers (O2)")
        model, fused = fused_dense_graph(bundle / MODEL_FILE, meta["backbone"])
    else:
        model = onnx.load(str(bundle / MODEL_FILE))
    say("inlining local functions and inferring shapes (symbolic, auto-merged)")
    model = prepared_graph(model)
    scratch = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.int8-dynamic-", dir=bundle.absolute().parent))
    try:
        output = scratch / DYNAMIC_INT8_FILE
        say(f"quantising ({'per-channel' if per_channel else 'per-tensor'} int8 weights)")
        info = quantize_graph(model, output, per_channel, quantize_head)
        del model
        say(f"checking against fp32 on {len(texts)} sentences of {source} and edge inputs")
        check = compare_to_fp32(bundle, output, texts, gold, min_agreement)
        entry = {"file": DYNAMIC_INT8_FILE, "source": MODEL_FILE, "format": "dynamic", "runtime": "onnxruntime-cpu",
                 **info, "fused_before_quantization": fused or None,
                 "validation": {"data": source, "min_agreement": min_agreement, **check.to_meta()}}
        replace_precision_file(bundle, MANIFEST_KEY, {DYNAMIC_INT8_FILE: output}, entry)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return QuantizeResult(bundle, entry, time.perf_counter() - started)
