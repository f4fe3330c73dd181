"""The bundle folder (DESIGN.md section 7): writing it atomically, reading it back with its hashes checked.

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
from pathlib import Path
from typing import Any, Iterator

from hashee.errors import BundleError, ExportError

FORMAT_VERSION = 1  # major: readers refuse a newer one
META_FILE = "hashee.json"
MODEL_FILE = "model.onnx"
TABLE_FILE = "exit_table.npy"
TOKENIZER_DIR = "tokenizer"
REFERENCE_DIR = "reference"  # optional: the PyTorch reference (config.json + model.safetensors)


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


def read_bundle(folder: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read ``hashee.json`` of a bundle; with ``verify``, check every listed file's sha256.

    Raises :class:`BundleError` for a missing folder or file, a hash mismatch, or a format version
    newer than this hashee reads.
    """
    from hashee import __version__

    folder = Path(folder)
    meta_path = folder / META_FILE
    if not folder.is_dir():
        raise BundleError(f"bundle folder {folder} does not exist; create one with hashee export")
    if not meta_path.is_file():
        raise BundleError(f"{folder} holds no {META_FILE}; it is not a hashee bundle")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path} is not valid JSON ({exc}); re-export the bundle") from exc
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
