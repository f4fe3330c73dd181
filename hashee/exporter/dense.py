"""The dense baseline: the same weights without early exit, exported the way a user would (Optimum).

Optimum's exporter (TorchScript-based) only warns on value mismatches, so its own validation is off
here and the file is checked by :func:`hashee.exporter.validate.check_export` instead: the saved
graph must match the Hugging Face model within 1e-4 or nothing is written.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from hashee.bundle import MODEL_FILE, TOKENIZER_DIR, bundle_view, staged_folder, write_meta
from hashee.errors import ExportError
from hashee.exporter.manifest import ExportResult, bundle_meta, resolve_max_length, save_reference, validation_entry
from hashee.exporter.targets import MAX_OPSET, MIN_OPSET
from hashee.exporter.validate import check_export


def graph_io(values: Any) -> list[dict[str, Any]]:
    """``[{"name", "dtype", "shape"}]`` of ONNX graph inputs or outputs (symbolic dims by name)."""
    from onnx import helper

    out = []
    for value in values:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        out.append({"name": value.name, "dtype": helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name,
                    "shape": dims})
    return out


def export_dense(run_dir: Path, output: Path, config: dict[str, Any], opset: int, max_length: int | None,
                 overwrite: bool, say: Callable[[str], None], started: float, reference: bool = False) -> Any:
    """Export the dense classifier of ``run_dir`` (a HashEE run's backbone, or a dense run) to ``output``."""
    import onnx
    from optimum.exporters.onnx import main_export

    from hashee.evaluation import load_run  # torch and transformers

    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET["onnxruntime"]:
        raise ExportError(f"opset {opset!r} is out of range for the dense export; use {MIN_OPSET}.."
                          f"{MAX_OPSET['onnxruntime']}")
    say(f"loading {run_dir}")
    model, tokenizer, kind = load_run(run_dir, device="cpu")
    dense = model.dense if kind == "hashee" else model
    dense.config.problem_type = dense.config.problem_type or model.config.problem_type
    max_length = resolve_max_length(max_length, dense.config, tokenizer)
    with staged_folder(output, overwrite) as stage, tempfile.TemporaryDirectory(prefix="hashee-dense-") as scratch:
        source = Path(scratch) / "source"
        dense.save_pretrained(str(source))
        tokenizer.save_pretrained(str(source))
        say(f"exporting the dense {dense.config.model_type} classifier with Optimum (opset {opset})")
        from transformers.utils import logging as hf_logging

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            level, hf_level = logging.getLogger("optimum").level, hf_logging.get_verbosity()
            logging.getLogger("optimum").setLevel(logging.ERROR)
            hf_logging.set_verbosity_error()
            try:
                main_export(str(source), Path(scratch) / "onnx", task="text-classification", opset=opset,
                            device="cpu", do_validation=False, library_name="transformers")
            except (ValueError, KeyError, RuntimeError) as exc:
                raise ExportError(f"Optimum could not export the dense model: {str(exc).splitlines()[0]}") from exc
            finally:
                logging.getLogger("optimum").setLevel(level)
                hf_logging.set_verbosity(hf_level)
        shutil.copyfile(Path(scratch) / "onnx" / MODEL_FILE, stage / MODEL_FILE)
        onnx.checker.check_model(str(stage / MODEL_FILE), full_check=True)
        tokenizer.save_pretrained(str(stage / TOKENIZER_DIR))
        if reference:
            save_reference(dense, stage)
        graph = onnx.load(str(stage / MODEL_FILE), load_external_data=False).graph
        layers = int(getattr(dense.config, "num_hidden_layers", 0) or dense.config.n_layers)
        meta = bundle_meta("dense", run_dir, dense.config, layers, max_length,
                           {"file": MODEL_FILE, "target": "onnxruntime", "precision": "fp32", "opset": opset,
                            "inputs": graph_io(graph.input), "outputs": graph_io(graph.output)},
                           reference, producer={"exporter": "optimum"})
        say("validating through the runtime (ONNX Runtime CPU) against PyTorch")
        report = check_export(bundle_view(stage, meta), dense.eval(), tokenizer, dense=True)
        meta["validation"] = validation_entry(report)
        meta = write_meta(stage, meta)
        say(f"writing {output}")
    return ExportResult(output, meta, time.perf_counter() - started, report)
