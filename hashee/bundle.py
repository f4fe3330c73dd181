"""The bundle format (DESIGN.md section 7), the core every stage shares: numpy and the standard library only.

File names, the format version, writing a bundle atomically, reading its manifest back with every hash
checked and every path confined to the folder, the typed :class:`Bundle` view a runtime opens, and
updates (:func:`update_bundle`, :func:`replace_precision_file`, which also drops the engines built from
the file it replaces).

A bundle holds ``hashee.json`` (format version, producer, backbone, task, labels, max length,
exit-table metadata, ONNX target/precision/opset, input and output names with dynamic axes, and a
sha256 for every other file), ``exit_table.npy`` (HashEE bundles), ``model.onnx`` and ``tokenizer/``.
Optional, added by later steps with :func:`update_bundle`: ``model.fp16.onnx`` and ``model.int8.onnx``
(described under ``precisions`` in ``hashee.json``; ``onnx.precision`` always describes ``model.onnx``,
which stays fp32), ``calibration/int8_ranges.json``, and ``engines/*.plan`` (listed under ``engines``).
Replacing a precision file drops the engines built from the old one.  No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hashee.errors import BundleError, ExitTableError, ExportError
from hashee.jsonio import read_json

FORMAT_VERSION = 1  # major: readers refuse a newer one
META_FILE = "hashee.json"
MODEL_FILE = "model.onnx"
TABLE_FILE = "exit_table.npy"
TOKENIZER_DIR = "tokenizer"
REFERENCE_DIR = "reference"  # optional: the PyTorch reference (config.json + model.safetensors)
FP16_FILE = "model.fp16.onnx"
INT8_FILE = "model.int8.onnx"  # static Q/DQ (hashee calibrate): what TensorRT's int8 engines are built from
DYNAMIC_INT8_FILE = "model.int8-dynamic.onnx"  # dynamic int8 for ONNX Runtime CPU (hashee quantize)
DYNAMIC_INT8_KEY = "int8-dynamic"  # its entry under precisions in hashee.json
RANGES_FILE = "calibration/int8_ranges.json"
ENGINES_DIR = "engines"
ORT_TRT_CACHE_DIR = "engines/onnxruntime-trt"  # ONNX Runtime's TensorRT provider cache (outside the manifest)
PRECISION_FILES = {"fp32": MODEL_FILE, "fp16": FP16_FILE, "int8": INT8_FILE}
TASKS = ("single_label_classification", "multi_label_classification", "regression")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except ``hashee.json``, by sorted relative posix path."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / META_FILE)
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}


def check_output_folder(output: Path, overwrite: bool) -> None:
    """Refuse an output path that is a file, or a non-empty folder without ``overwrite``."""
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output} exists and is not a folder; choose another -o")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ExportError(f"{output} exists and is not empty; pass --overwrite to replace it or choose another -o")


@contextmanager
def staged_folder(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``output``; on success it replaces ``output`` in one rename.

    On any error the temporary folder is removed and ``output`` is left as it was, so a failed
    export never leaves a half-written bundle behind.
    """
    output = Path(output).absolute()
    check_output_folder(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes 0700; a bundle gets the usual permissions
    try:
        yield stage
        check_output_folder(output, overwrite)
        old = None
        if output.exists():
            old = output.parent / f".{output.name}.old-{os.getpid()}"
            os.replace(output, old)
        os.replace(stage, output)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def inside(folder: Path, name: Any, what: str) -> Path:
    """``folder / name`` for a relative path that stays inside ``folder``; else :class:`BundleError`.

    A manifest is data from disk: a name such as ``../../etc/passwd`` or ``/abs/path`` must never make
    a reader open a file outside the bundle.
    """
    if not isinstance(name, str) or not name or "\\" in name or name.startswith("/") or ":" in name:
        raise BundleError(f"{folder / META_FILE} names {what} {name!r}, which is not a relative path inside the "
                          f"bundle; re-export the bundle")
    path = folder / name
    root = folder.resolve()
    if ".." in Path(name).parts or not path.resolve().is_relative_to(root):
        raise BundleError(f"{folder / META_FILE} names {what} {name!r}, which escapes the bundle folder; "
                          f"re-export the bundle")
    return path


def write_meta(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Add the format version and file hashes to ``meta`` and write ``hashee.json``."""
    meta = {"format_version": FORMAT_VERSION, **meta, "files": file_hashes(folder)}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def update_bundle(folder: str | Path, files: dict[str, Path], changes: dict[str, Any],
                  remove: tuple[str, ...] = ()) -> dict[str, Any]:
    """Add or replace files of an existing bundle and merge ``changes`` into its ``hashee.json``.

    ``files`` maps a bundle-relative name (e.g. ``model.fp16.onnx``) to a finished file written
    next to the bundle or inside it (moved in with ``os.replace``, so each file appears whole).
    The bundle is verified first; ``hashee.json`` is rewritten last, also with one rename, with the
    sha256 of every file recomputed, so the manifest never lists a file that is not there.
    Top-level keys of ``changes`` replace those of the manifest (``None`` deletes a key).
    """
    folder = Path(folder)
    meta = read_bundle(folder)
    meta.pop("path", None)
    for name in remove:
        target = folder / name
        if target.is_file():
            target.unlink()
    for name, source in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    meta.pop("files", None)
    meta.pop("format_version", None)
    meta = {"format_version": FORMAT_VERSION, **meta, "files": file_hashes(folder)}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{META_FILE}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / META_FILE)
    return meta


def replace_precision_file(folder: str | Path, precision: str, files: dict[str, Path],
                           entry: dict[str, Any]) -> dict[str, Any]:
    """Add or replace a reduced-precision file (``precisions[precision] = entry``) in a bundle.

    ``files`` maps bundle-relative names to finished files (see :func:`update_bundle`).  TensorRT
    engines built from the old file of that precision no longer match it: they are deleted and
    dropped from ``engines``.  Returns the updated ``hashee.json``.
    """
    meta = read_bundle(folder)
    old = meta.get("engines", [])
    stale = tuple(e["file"] for e in old if isinstance(e, dict) and e.get("precision") == precision and "file" in e)
    for name in stale:
        inside(Path(folder), name, "an engine file")
    engines = [e for e in old if not (isinstance(e, dict) and e.get("precision") == precision)]
    precisions = {**meta.get("precisions", {}), precision: entry}
    return update_bundle(folder, files, {"precisions": precisions, "engines": engines or None}, remove=stale)


@dataclass
class BundleAddition:
    """What a command that adds a file to a bundle did: the bundle, the manifest entry it recorded, its seconds.

    ``hashee calibrate``, ``quantize`` and ``build-engine`` return subclasses whose ``format()`` reports it.
    """

    bundle: Path
    entry: dict[str, Any]
    seconds: float


def read_bundle(folder: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read ``hashee.json`` of a bundle; with ``verify``, check every listed file's sha256.

    Raises :class:`BundleError` for a missing folder or file, a hash mismatch, or a format version
    newer than this hashee reads.
    """
    from hashee import __version__  # the package root: errors and the exit table, no stage

    folder = Path(folder)
    meta_path = folder / META_FILE
    if not folder.is_dir():
        raise BundleError(f"bundle folder {folder} does not exist; create one with hashee export")
    if not meta_path.is_file():
        raise BundleError(f"{folder} holds no {META_FILE}; it is not a hashee bundle")
    meta = read_json(meta_path, BundleError, "re-export the bundle")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{meta_path} has no integer format_version")
    if version > FORMAT_VERSION:
        raise BundleError(f"{folder} has bundle format {version}; hashee {__version__} reads format "
                          f"{FORMAT_VERSION} or older: upgrade hashee")
    files = meta.get("files") or {}
    if not isinstance(files, dict):
        raise BundleError(f"{meta_path}: 'files' must map file names to sha256s; re-export the bundle")
    if MODEL_FILE not in files:
        raise BundleError(f"{meta_path} lists no {MODEL_FILE}")
    for name in files:
        inside(folder, name, "the file")
    for key, what in (("onnx", "the model file"), ("exit_table", "the exit table")):
        if isinstance(meta.get(key), dict) and "file" in meta[key]:
            inside(folder, meta[key]["file"], what)
    for key in ("tokenizer", "reference"):
        if key in meta:
            inside(folder, meta[key], f"the {key} folder")
    if verify:
        for name, digest in sorted(files.items()):
            path = folder / name
            if not path.is_file():
                raise BundleError(f"{path} is missing from the bundle")
            if sha256_file(path) != digest:
                raise BundleError(f"{path} does not match its sha256 in {META_FILE}; the bundle is corrupted")
    meta["path"] = str(folder)
    return meta

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
    def label2id(self) -> dict[str, int]:
        """Label name -> class id (how a data file's labels map onto the model's outputs)."""
        return {name: i for i, name in enumerate(self.labels)}

    @property
    def input_names(self) -> list[str]:
        """The graph inputs the manifest declares (``onnx.inputs``)."""
        return [s["name"] for s in self.meta.get("onnx", {}).get("inputs", []) if isinstance(s, dict) and "name" in s]

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
    return bundle_view(folder, read_bundle(folder, verify=verify))


def bundle_view(folder: str | Path, meta: dict[str, Any]) -> Bundle:
    """The typed view of a manifest ``meta`` for the files in ``folder``, checked as :func:`open_bundle` does.

    Exporters call it on a staged folder before ``hashee.json`` exists, so that the file they are about
    to write is validated through the very runtime that will serve it.
    """
    folder = Path(folder)
    meta_path = folder / META_FILE
    kind = meta.get("kind")
    if kind not in ("hashee", "dense"):
        raise BundleError(f"{meta_path} has kind {kind!r}; this hashee runs 'hashee' and 'dense' bundles")
    task = meta.get("task") if isinstance(meta.get("task"), dict) else {}
    problem_type = task.get("problem_type", "single_label_classification")
    if problem_type not in TASKS:
        raise BundleError(f"{meta_path} has task {problem_type!r}; the runtime serves {', '.join(TASKS)}")
    labels = task_labels(meta, meta_path)
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


def task_labels(meta: dict[str, Any], meta_path: Path | str = META_FILE) -> list[str]:
    """The label names of a manifest, by class id (``task.id2label``; a missing name is its id)."""
    task = meta.get("task") if isinstance(meta.get("task"), dict) else {}
    num_labels = _int(meta, ("task", "num_labels"), Path(meta_path))
    id2label = task.get("id2label") or {}
    return [str(id2label.get(str(i), i)) for i in range(num_labels)]


def tokenizer_config(bundle: Bundle) -> dict[str, Any]:
    """``tokenizer/tokenizer_config.json`` as a dict (empty when absent or unreadable)."""
    path = bundle.tokenizer_dir / "tokenizer_config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BundleError(f"{path} is not valid JSON; re-export the bundle") from None
