"""``hashee export``: a run folder -> a validated bundle (model.onnx, exit_table.npy, tokenizer/, hashee.json)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from hashee.bundle import (FP16_FILE, MODEL_FILE, TABLE_FILE, TOKENIZER_DIR, bundle_view, check_output_folder,
                           staged_folder, write_meta)
from hashee.calibration.fp16 import build_fp16
from hashee.errors import ExitTableError, ExportError
from hashee.exporter.dense import export_dense
from hashee.exporter.embed import embed_exit_table as embed
from hashee.exporter.graph import check_target
from hashee.exporter.manifest import (ExportResult, Progress, bundle_meta, describe, resolve_max_length, save_reference,
                                      validation_entry)
from hashee.exporter.prefix_graph import build_layout_graph
from hashee.exporter.targets import MIN_OPSET, TARGETS, tensorrt_violations, value_dependent_shapes
from hashee.exporter.validate import check_embedded, check_export

__all__ = ["EXPORT_PRECISIONS", "ExportResult", "describe", "export", "resolve_max_length", "save_reference"]

EXPORT_PRECISIONS = ("fp32", "fp16")
LAYOUTS = ("packed", "prefix")


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


def _write_graph(path: Path, model: Any, target: str, opset: int, token_outputs: bool, embed_exit_table: bool,
                 say: Any, layout: str = "packed") -> tuple[Any, Any]:
    """Build the HashEE graph of ``layout`` (table embedded on request), save it to ``path`` and check it (the
    ONNX checker; TensorRT's op list for the tensorrt target; no value-dependent shape in the prefix layout).
    Returns ``(input/output spec, the exit-masks graph or None)``."""
    import onnx

    say(f"building the graph (target {target}, opset {opset}, layout {layout})")
    proto, spec = build_layout_graph(model, target, opset, token_outputs, layout)
    masks_proto = None
    if embed_exit_table:
        say("embedding the exit table in the graph")
        masks_proto = proto
        proto = embed(proto, model.exit_table.layers, int(model.num_layers))
        spec = type(spec)([s for s in spec.inputs if s["name"] != "exit_masks"], spec.outputs)
    path.write_bytes(proto.SerializeToString())
    del proto
    say("checking the saved file (onnx.checker, full check)")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported graph fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
    if target == "tensorrt":
        problems = tensorrt_violations(onnx.load(str(path)))
        if problems:
            raise ExportError(f"{len(problems)} nodes would not import into TensorRT: " + "; ".join(problems[:5]))
    if layout == "prefix":
        problems = value_dependent_shapes(onnx.load(str(path)))
        if problems:
            raise ExportError(f"{len(problems)} nodes of the prefix graph have value-dependent shapes: "
                              + "; ".join(problems[:5]))
    return spec, masks_proto


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
    started = time.perf_counter()
    say = Progress(progress)
    run_dir, output = Path(run_dir), Path(output)
    _check_options(target, precision, layout, dense, embed_exit_table)
    check_output_folder(output.absolute(), overwrite)
    config = _read_config(run_dir)
    if dense:
        if embed_exit_table:
            raise ExportError("--embed-exit-table applies to HashEE models; a dense export has no exit table")
        return export_dense(run_dir, output, config, opset=opset, max_length=max_length, overwrite=overwrite,
                            say=say, started=started, reference=reference)
    model, tokenizer = _load_hashee_run(run_dir, config, target, opset, say)
    max_length = resolve_max_length(max_length, model.dense.config, tokenizer)
    with staged_folder(output, overwrite) as stage:
        spec, masks_proto = _write_graph(stage / MODEL_FILE, model, target, opset, token_outputs, embed_exit_table, say,
                                         layout)
        _write_files(stage, model, tokenizer, reference)
        meta = _hashee_meta(run_dir, model, max_length, spec, target, opset, embed_exit_table, layout, reference)
        say("validating through the runtime (ONNX Runtime CPU) against PyTorch (real text and edge inputs)")
        report = check_export(bundle_view(stage, meta), model, tokenizer)
        if masks_proto is not None:
            say("checking the embedded-table graph against the exit-masks graph (1e-5)")
            check_embedded(stage / MODEL_FILE, masks_proto, model.exit_table.layers, int(model.num_layers), tokenizer,
                           max_length)
            del masks_proto
        meta["validation"] = validation_entry(report)
        if precision == "fp16":
            say("converting to fp16 (inlined copy) and checking it against the fp32 graph on ONNX Runtime CPU")
            meta["precisions"] = {"fp16": build_fp16(stage, meta, stage / FP16_FILE)}
        meta = write_meta(stage, meta)
        say(f"writing {output}")
    return ExportResult(output, meta, time.perf_counter() - started, report)


def _check_options(target: str, precision: str, layout: str, dense: bool, embed_exit_table: bool) -> None:
    """:class:`ExportError` on a target, precision or layout :func:`export` does not take, or a bad mix."""
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


def _load_hashee_run(run_dir: Path, config: dict[str, Any], target: str, opset: int, say: Any) -> tuple[Any, Any]:
    """The HashEE model (on the CPU) and tokenizer of a run folder, after checking the target and exit table."""
    from hashee.evaluation import load_run  # torch and transformers

    check_target(target, opset)
    if config.get("model_type") != "hashee":
        raise ExitTableError(f"{run_dir} holds a {config.get('model_type')!r} model without an exit table; "
                             f"export it with --dense, or train a HashEE model (hashee train)")
    _check_exit_table(run_dir, config)
    say(f"loading {run_dir}")
    model, tokenizer, _ = load_run(run_dir, device="cpu")
    return model, tokenizer


def _write_files(stage: Path, model: Any, tokenizer: Any, reference: bool) -> None:
    """The bundle's files beside the graph: the exit table, the tokenizer and (on request) the PyTorch weights."""
    np.save(stage / TABLE_FILE, model.exit_table.layers, allow_pickle=False)
    tokenizer.save_pretrained(str(stage / TOKENIZER_DIR))
    if reference:
        save_reference(model, stage)


def _hashee_meta(run_dir: Path, model: Any, max_length: int, spec: Any, target: str, opset: int,
                 embed_exit_table: bool, layout: str, reference: bool) -> dict[str, Any]:
    """The HashEE bundle's ``hashee.json`` content before validation."""
    table = model.exit_table
    return bundle_meta(
        "hashee", run_dir, model.dense.config, int(model.num_layers), max_length,
        {"file": MODEL_FILE, "target": target, "precision": "fp32", "opset": opset,
         "inputs": spec.inputs, "outputs": spec.outputs,
         "custom_ops": ["hashee.GatherActive", "hashee.ScatterActive"],
         "exit_table": "embedded" if embed_exit_table else "input", "layout": layout},
        reference, exit_table={**table.to_meta(), "file": TABLE_FILE, "dtype": str(table.layers.dtype)})
