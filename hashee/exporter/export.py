"""``hashee export``: a run folder -> a validated bundle (model.onnx, exit_table.npy, tokenizer/, hashee.json)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hashee.errors import ExitTableError, ExportError
from hashee.exporter.bundle import MODEL_FILE, REFERENCE_DIR, TABLE_FILE, TOKENIZER_DIR, staged_folder, write_meta
from hashee.exporter.targets import MIN_OPSET, TARGETS

EXPORT_PRECISIONS = ("fp32", "fp16")
LAYOUTS = ("packed", "prefix")


@dataclass
class ExportResult:
    """What :func:`export` wrote: the bundle folder, its ``hashee.json`` content, the time it took."""

    bundle: Path
    meta: dict[str, Any]
    seconds: float
    validation: dict[str, dict[str, float]] = field(default_factory=dict)

    def format(self) -> str:
        onnx_meta = self.meta["onnx"]
        worst = max((d for case in self.validation.values() for d in case.values()), default=0.0)
        return "\n".join([
            f"bundle: {self.bundle} ({self.meta['kind']}, target {onnx_meta['target']}, opset {onnx_meta['opset']})",
            f"validated on {len(self.validation)} input sets against PyTorch: max |difference| {worst:.3g} "
            f"(tolerance {self.meta['validation']['tolerance']:g})",
            f"export took {self.seconds:.1f} s",
        ])


class Progress:
    """One line per step on stderr, with the elapsed time."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.start = enabled, time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[export {time.perf_counter() - self.start:5.1f}s] {message}", file=sys.stderr, flush=True)


def _read_config(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise ExportError(f"run folder {run_dir} does not exist; pass a folder written by hashee train or save_pretrained")
    path = run_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{run_dir} holds no config.json; pass a folder written by hashee train or save_pretrained")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path} is not valid JSON ({exc})") from exc


def _check_exit_table(run_dir: Path, config: dict[str, Any]) -> None:
    if not config.get("exit_table", {}).get("num_layers"):
        raise ExitTableError(f"{run_dir}/config.json has no exit table metadata; save the model with "
                             f"HashEEForSequenceClassification.save_pretrained")
    weights = run_dir / "model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="np") as handle:
            if "exit_table_layers" not in handle.keys():
                raise ExitTableError(f"{weights} holds no exit table (tensor exit_table_layers); save the model "
                                     f"with HashEEForSequenceClassification.save_pretrained")


def max_length_limit(config: Any, tokenizer: Any) -> int:
    """Longest input the position table allows (RoBERTa positions start after the padding id)."""
    positions = int(getattr(config, "max_position_embeddings", 512))
    if config.model_type == "roberta":
        positions -= int(config.pad_token_id) + 1
    tok = int(getattr(tokenizer, "model_max_length", 0) or 0)
    return min(positions, tok) if 0 < tok < 1_000_000 else positions


def resolve_max_length(max_length: int | None, config: Any, tokenizer: Any) -> int:
    limit = max_length_limit(config, tokenizer)
    if max_length is None:
        return limit
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ExportError(f"max length must be an integer >= 2, got {max_length!r}")
    if max_length > limit:
        raise ExportError(f"max length {max_length} exceeds what the model's position embeddings allow ({limit})")
    return max_length


def save_reference(model: Any, stage: Path) -> None:
    """The PyTorch weights as ``reference/`` (safetensors only: the runtime never loads a pickle)."""
    model.save_pretrained(str(stage / REFERENCE_DIR), safe_serialization=True)
    extra = sorted(p.name for p in (stage / REFERENCE_DIR).iterdir() if p.name not in ("config.json", "model.safetensors"))
    for name in extra:  # e.g. generation_config.json: not needed to rebuild an encoder classifier
        (stage / REFERENCE_DIR / name).unlink()


def describe(model_config: Any, num_layers: int) -> dict[str, Any]:
    """Backbone and task facts for ``hashee.json``."""
    from hashee.flops import EncoderDims

    dims = EncoderDims.from_config(model_config)
    heads = getattr(model_config, "num_attention_heads", None) or getattr(model_config, "n_heads", None)
    return {
        "backbone": {"family": model_config.model_type, "num_layers": num_layers, "hidden_size": dims.hidden_size,
                     "intermediate_size": dims.intermediate_size, "num_attention_heads": int(heads),
                     "vocab_size": int(model_config.vocab_size)},
        "task": {"problem_type": model_config.problem_type or ("regression" if model_config.num_labels == 1
                                                               else "single_label_classification"),
                 "num_labels": int(model_config.num_labels),
                 "id2label": {str(k): str(v) for k, v in sorted(model_config.id2label.items())}},
    }


def export(run_dir: str | Path, output: str | Path, target: str = "onnxruntime", opset: int = MIN_OPSET,
           max_length: int | None = None, token_outputs: bool = False, dense: bool = False,
           overwrite: bool = False, progress: bool = True, reference: bool = False,
           precision: str = "fp32", embed_exit_table: bool = False, layout: str = "packed") -> ExportResult:
    """Export a run folder to a validated bundle at ``output``.

    Args:
        run_dir: a folder written by ``save_pretrained`` of a HashEE model with its tokenizer (what
            ``hashee train`` writes); with ``dense``, also a plain Hugging Face classifier folder.
        output: the bundle folder; must not exist or be empty unless ``overwrite``.
        target: ``onnxruntime`` (may use com.microsoft ops) or ``tensorrt`` (only ops the TensorRT
            parser accepts, checked node by node).
        opset: default-domain ONNX opset (17 or higher).
        max_length: longest input the bundle accepts (default: the position table's limit).
        token_outputs: also output every token's state at its exit layer (``token_states``).
        dense: export the same weights without early exit through Optimum (the baseline).
        overwrite: replace a non-empty ``output``.
        progress: print one line per step on stderr.
        reference: also write the PyTorch weights (``reference/``: config.json + model.safetensors) so
            that ``Session.load(bundle, backend="torch")`` runs the reference model from the bundle alone.
        precision: ``fp32`` (default) or ``fp16``: also write ``model.fp16.onnx``, a mixed-precision
            copy checked against the fp32 file (:mod:`hashee.calibration.fp16`); ``model.onnx``
            stays fp32.
        embed_exit_table: put the exit table into the graph as an initializer and compute the masks
            in-graph, so the only inputs are the batch-first ``input_ids``, ``attention_mask`` (and
            ``token_type_ids``), as Triton's dynamic batching needs; also checked against the
            exit-masks graph within 1e-5.
        layout: ``packed`` (default; inputs ``exit_masks`` [L, batch, seq]) or ``prefix`` (issue 14: the
            host sorts each row by exit layer; inputs ``position_ids`` and ``exit_mask_1..L`` [batch, W_l];
            no shape depends on tensor values, checked by :func:`~hashee.exporter.targets.value_dependent_shapes`;
            see :mod:`hashee.exporter.prefix_graph`).  Recorded as ``onnx.layout`` in ``hashee.json``.

    Raises:
        ExportError, ExitTableError, BackboneError: the run folder or the arguments cannot be exported.
        ValidationError: the saved graph disagrees with PyTorch beyond 1e-4; nothing is written.
    """
    import onnx

    from hashee import __version__
    from hashee.evaluation import load_run
    from hashee.exporter.bundle import check_output_folder
    from hashee.exporter.graph import check_target
    from hashee.exporter.prefix_graph import build_layout_graph
    from hashee.exporter.targets import tensorrt_violations, value_dependent_shapes
    from hashee.exporter.validate import TOLERANCE, check_export

    started = time.perf_counter()
    say = Progress(progress)
    run_dir, output = Path(run_dir), Path(output)
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if precision not in EXPORT_PRECISIONS:
        raise ExportError(f"unknown precision {precision!r} for export; choose one of {', '.join(EXPORT_PRECISIONS)} "
                          f"(int8 needs calibration data: hashee calibrate BUNDLE --data FILE)")
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "prefix" and (dense or embed_exit_table):
        raise ExportError("--layout prefix applies to HashEE graphs fed by the host's sorted plan; it cannot be "
                          "combined with --dense or --embed-exit-table")
    if dense and precision != "fp32":
        raise ExportError("--precision fp16 is for HashEE bundles; the dense baseline is exported in fp32")
    check_output_folder(output.absolute(), overwrite)
    config = _read_config(run_dir)
    if dense:
        from hashee.exporter.dense import export_dense

        if embed_exit_table:
            raise ExportError("--embed-exit-table applies to HashEE models; a dense export has no exit table")
        return export_dense(run_dir, output, config, opset=opset, max_length=max_length, overwrite=overwrite,
                            say=say, started=started, reference=reference)
    check_target(target, opset)
    if config.get("model_type") != "hashee":
        raise ExitTableError(f"{run_dir} holds a {config.get('model_type')!r} model without an exit table; "
                             f"export it with --dense, or train a HashEE model (hashee train)")
    _check_exit_table(run_dir, config)
    say(f"loading {run_dir}")
    model, tokenizer, _ = load_run(run_dir, device="cpu")
    backbone_config = model.dense.config
    max_length = resolve_max_length(max_length, backbone_config, tokenizer)
    with staged_folder(output, overwrite) as stage:
        say(f"building the graph (target {target}, opset {opset}, layout {layout})")
        proto, spec = build_layout_graph(model, target, opset, token_outputs, layout)
        masks_proto = None
        if embed_exit_table:
            from hashee.exporter.embed import embed_exit_table as embed

            say("embedding the exit table in the graph")
            masks_proto = proto
            proto = embed(proto, model.exit_table.layers, int(model.num_layers))
            spec = type(spec)([s for s in spec.inputs if s["name"] != "exit_masks"], spec.outputs)
        (stage / MODEL_FILE).write_bytes(proto.SerializeToString())
        del proto
        say("checking the saved file (onnx.checker, full check)")
        try:
            onnx.checker.check_model(str(stage / MODEL_FILE), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ExportError(f"the exported graph fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
        if target == "tensorrt":
            problems = tensorrt_violations(onnx.load(str(stage / MODEL_FILE)))
            if problems:
                raise ExportError(f"{len(problems)} nodes would not import into TensorRT: " + "; ".join(problems[:5]))
        if layout == "prefix":
            problems = value_dependent_shapes(onnx.load(str(stage / MODEL_FILE)))
            if problems:
                raise ExportError(f"{len(problems)} nodes of the prefix graph have value-dependent shapes: "
                                  + "; ".join(problems[:5]))
        say("validating on ONNX Runtime CPU against PyTorch (real text and edge inputs)")
        report = check_export(stage / MODEL_FILE, model, tokenizer, max_length)
        if masks_proto is not None:
            from hashee.exporter.validate import check_embedded

            say("checking the embedded-table graph against the exit-masks graph (1e-5)")
            check_embedded(stage / MODEL_FILE, masks_proto, model.exit_table.layers, int(model.num_layers),
                           tokenizer, max_length)
            del masks_proto
        table = model.exit_table
        np.save(stage / TABLE_FILE, table.layers, allow_pickle=False)
        tokenizer.save_pretrained(str(stage / TOKENIZER_DIR))
        if reference:
            save_reference(model, stage)
        meta = {
            "kind": "hashee",
            "producer": {"name": "hashee", "version": __version__},
            "source": {"run_dir": str(run_dir.absolute())},
            **describe(backbone_config, int(model.num_layers)),
            "max_length": max_length,
            "exit_table": {**table.to_meta(), "file": TABLE_FILE, "dtype": str(table.layers.dtype)},
            "onnx": {"file": MODEL_FILE, "target": target, "precision": "fp32", "opset": opset,
                     "inputs": spec.inputs, "outputs": spec.outputs,
                     "custom_ops": ["hashee.GatherActive", "hashee.ScatterActive"],
                     "exit_table": "embedded" if embed_exit_table else "input", "layout": layout},
            "tokenizer": TOKENIZER_DIR,
            "validation": {"tolerance": TOLERANCE, "cases": report},
            **({"reference": REFERENCE_DIR} if reference else {}),
        }
        if precision == "fp16":
            from hashee.calibration.fp16 import FP16_FILE, build_fp16

            say("converting to fp16 (inlined copy) and checking it against the fp32 graph on ONNX Runtime CPU")
            meta["precisions"] = {"fp16": build_fp16(stage, meta, stage / FP16_FILE)}
        meta = write_meta(stage, meta)
        say(f"writing {output}")
    return ExportResult(output, meta, time.perf_counter() - started, report)
