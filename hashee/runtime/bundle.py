"""Opening a bundle for inference: the manifest checked, the exit table validated, paths resolved.

:func:`open_bundle` builds on :func:`hashee.exporter.bundle.read_bundle` (format version, sha256 of
every listed file, manifest paths that stay inside the folder) and adds what a runtime needs before it
loads anything heavy: the task and labels, the max length, the exit table (right length, values in
``1..L``) and the files each backend reads.  Only JSON, ``.npy`` (``allow_pickle=False``), ONNX,
safetensors and ``tokenizer.json`` are ever read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hashee.errors import BundleError, ExitTableError
from hashee.exporter.bundle import META_FILE, MODEL_FILE, TABLE_FILE, TOKENIZER_DIR, inside, read_bundle

TASKS = ("single_label_classification", "multi_label_classification", "regression")


@dataclass(frozen=True)
class Bundle:
    """What a session needs to know about a bundle folder (no model loaded yet)."""

    path: Path
    meta: dict[str, Any] = field(repr=False)
    kind: str  # "hashee" or "dense"
    num_layers: int
    max_length: int
    problem_type: str
    labels: list[str]
    model_file: Path
    tokenizer_dir: Path
    exit_table: np.ndarray | None = field(default=None, repr=False)  # int64 [vocab], None for dense
    reference_dir: Path | None = None

    @property
    def is_regression(self) -> bool:
        return self.problem_type == "regression"

    @property
    def engines(self) -> list[dict[str, Any]]:
        """TensorRT engines listed in the manifest (``hashee build-engine``; entry keys: see
        :mod:`hashee.runtime.runners.tensorrt`)."""
        return [e for e in self.meta.get("engines", []) if isinstance(e, dict)]


def _load_table(path: Path, meta: dict[str, Any], num_layers: int, vocab_size: int) -> np.ndarray:
    try:
        layers = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{path} is not a readable .npy array without pickles ({exc}); re-export the bundle") from exc
    if layers.ndim != 1 or not np.issubdtype(layers.dtype, np.integer):
        raise ExitTableError(f"{path} must be a 1-D integer array (one exit layer per token id); found "
                             f"{layers.dtype} of shape {tuple(layers.shape)}: re-export the bundle")
    if layers.shape[0] != vocab_size:
        raise ExitTableError(f"{path} has {layers.shape[0]} entries but the model's vocabulary has {vocab_size} "
                             f"ids; the table does not belong to this model: re-export the bundle")
    lo, hi = (int(layers.min()), int(layers.max())) if layers.size else (1, 1)
    if lo < 1 or hi > num_layers:
        raise ExitTableError(f"{path} holds exit layers {lo}..{hi} but they must lie in 1..{num_layers} (the "
                             f"model's depth); re-export the bundle")
    declared = meta.get("exit_table", {}).get("num_layers")
    if declared is not None and int(declared) != num_layers:
        raise ExitTableError(f"{path} was built for {declared} layers but the model has {num_layers}; re-export")
    table = layers.astype(np.int64)
    table.setflags(write=False)
    return table


def _int(meta: dict[str, Any], keys: tuple[str, ...], meta_path: Path) -> int:
    value: Any = meta
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleError(f"{meta_path} has no positive integer {'.'.join(keys)}; re-export the bundle")
    return value


def open_bundle(folder: str | Path, verify: bool = True) -> Bundle:
    """Read and check a bundle folder; raise :class:`BundleError` / :class:`ExitTableError` naming the fix."""
    folder = Path(folder)
    meta = read_bundle(folder, verify=verify)
    meta_path = folder / META_FILE
    kind = meta.get("kind")
    if kind not in ("hashee", "dense"):
        raise BundleError(f"{meta_path} has kind {kind!r}; this hashee runs 'hashee' and 'dense' bundles")
    task = meta.get("task") if isinstance(meta.get("task"), dict) else {}
    problem_type = task.get("problem_type", "single_label_classification")
    if problem_type not in TASKS:
        raise BundleError(f"{meta_path} has task {problem_type!r}; the runtime serves {', '.join(TASKS)}")
    num_labels = _int(meta, ("task", "num_labels"), meta_path)
    id2label = task.get("id2label") or {}
    labels = [str(id2label.get(str(i), i)) for i in range(num_labels)]
    num_layers = _int(meta, ("backbone", "num_layers"), meta_path)
    vocab_size = _int(meta, ("backbone", "vocab_size"), meta_path)
    max_length = _int(meta, ("max_length",), meta_path)
    model_file = inside(folder, meta.get("onnx", {}).get("file", MODEL_FILE), "the model file")
    tokenizer_dir = inside(folder, meta.get("tokenizer", TOKENIZER_DIR), "the tokenizer folder")
    for path, what in ((model_file, "model file"), (tokenizer_dir / "tokenizer.json", "tokenizer")):
        if not path.is_file():
            raise BundleError(f"the bundle's {what} {path} is missing; re-export the bundle with hashee export")
    table = None
    if kind == "hashee":
        table_file = inside(folder, meta.get("exit_table", {}).get("file", TABLE_FILE), "the exit table")
        if not table_file.is_file():
            raise BundleError(f"the bundle's exit table {table_file} is missing; re-export the bundle")
        table = _load_table(table_file, meta, num_layers, vocab_size)
    reference = meta.get("reference")
    reference_dir = inside(folder, reference, "the reference folder") if reference else None
    return Bundle(path=folder, meta=meta, kind=kind, num_layers=num_layers, max_length=max_length,
                  problem_type=problem_type, labels=labels, model_file=model_file, tokenizer_dir=tokenizer_dir,
                  exit_table=table, reference_dir=reference_dir)


def tokenizer_config(bundle: Bundle) -> dict[str, Any]:
    """``tokenizer/tokenizer_config.json`` as a dict (empty when absent or unreadable)."""
    path = bundle.tokenizer_dir / "tokenizer_config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BundleError(f"{path} is not valid JSON; re-export the bundle") from None
