"""TensorRT 11 engines from a bundle: profiles checked before TensorRT sees them (:mod:`hashee.engines`), build.

``hashee build-engine BUNDLE [--precision fp32|fp16|int8] [--profile MIN:OPT:MAX ...]`` parses the
bundle's tensorrt-target ONNX file of that precision (``model.onnx``, ``model.fp16.onnx`` or the Q/DQ
``model.int8.onnx``; TensorRT 11 networks are strongly typed, so precision is decided in the file,
not by builder flags), adds one optimisation profile per ``--profile`` (batch and sequence ranges;
``exit_masks`` gets ``[num_layers, batch, sequence]``; a prefix-layout bundle's ``exit_mask_l`` gets
``[batch, W_l]`` with ``W_l`` ranging over 1 .. the profile's longest sequence, see
:meth:`Profile.width_range`), reuses a timing cache when given one, and
writes the serialized plan to ``BUNDLE/engines/`` under a name holding the precision, the GPU's
compute capability, the TensorRT version and the profiles; ``hashee.json`` lists it with its sha256.
The plan is written before the timing cache, which is replaced atomically; a cache TensorRT refuses
(``set_timing_cache`` -> False: made on another GPU) or does not give back (``get_timing_cache`` ->
None) only warns (:class:`TimingCacheWarning`).

Running a plan is the runtime's: :class:`~hashee.runtime.runners.tensorrt_engine.TensorRTEngine` (re-exported
here with :func:`run_engine` for callers of this module).

``tensorrt`` and CUDA torch are imported only inside the functions that need them; without either,
:func:`require_tensorrt` raises :class:`~hashee.errors.EngineError` naming what is missing.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from hashee.bundle import PRECISION_FILES, BundleAddition, read_bundle, update_bundle
from hashee.engines import (Profile, bundle_layout, default_profiles, engine_file_name, mask_layer, parse_profile,
                            validate_profiles)
from hashee.errors import EngineError
from hashee.runtime.runners.tensorrt_engine import INSTALL_HINT, TensorRTEngine, _logger, require_tensorrt, run_engine

__all__ = ["INSTALL_HINT", "EngineBuild", "Profile", "TensorRTEngine", "TimingCacheWarning", "attach_timing_cache",
           "build_engine", "bundle_layout", "default_profiles", "engine_file_name", "mask_layer", "parse_profile",
           "require_tensorrt", "run_engine", "save_timing_cache", "validate_profiles", "write_bytes_atomically",
           "write_plan"]


class EngineBuild(BundleAddition):
    """What :func:`build_engine` wrote: ``entry`` is the engine's record under ``engines`` in ``hashee.json``."""

    def format(self) -> str:
        e = self.entry
        profiles = ", ".join(f"batch {p['batch']} sequence {p['sequence']}" for p in e["profiles"])
        return "\n".join([f"engine: {self.bundle / e['file']}",
                          f"from {e['onnx']} ({e['precision']}), TensorRT {e['tensorrt_version']}, "
                          f"{e['gpu']} (sm {e['compute_capability']}), profiles: {profiles}",
                          f"built in {self.seconds:.1f} s"])


def _onnx_for(meta: dict[str, Any], bundle: Path, precision: str) -> str:
    if precision not in PRECISION_FILES:
        raise EngineError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_FILES)}")
    if meta.get("kind") != "hashee":
        raise EngineError(f"{bundle} is a {meta.get('kind')!r} bundle; build-engine reads HashEE bundles")
    if meta["onnx"].get("target") != "tensorrt":
        raise EngineError(f"{bundle} was exported for {meta['onnx'].get('target')}; TensorRT needs a bundle "
                          f"exported with --target tensorrt (hashee export RUN -o DIR --target tensorrt)")
    name = PRECISION_FILES[precision]
    if name not in meta.get("files", {}):
        how = {"fp16": f"hashee convert {bundle}", "int8": f"hashee calibrate {bundle} --data FILE"}[precision]
        raise EngineError(f"{bundle} has no {precision} model ({name}); create it first: {how}")
    return name


def build_engine(bundle: str | Path, precision: str = "fp32", profiles: list[str | Profile] | None = None,
                 timing_cache: str | Path | None = None, workspace_mb: int = 4096,
                 progress: bool = True) -> EngineBuild:
    """Build a TensorRT engine for ``bundle`` and record it in ``hashee.json``.

    Args:
        bundle: a HashEE bundle exported with ``--target tensorrt``.
        precision: ``fp32`` (``model.onnx``), ``fp16`` (``model.fp16.onnx``) or ``int8`` (``model.int8.onnx``).
        profiles: ``"BATCHxSEQ:BATCHxSEQ:BATCHxSEQ"`` strings or :class:`Profile` objects (default
            :func:`default_profiles`); all are validated against the bundle's max length first.
        timing_cache: a file to read tactic timings from (when it exists) and to write them back to.
        workspace_mb: builder workspace memory pool limit in MiB.

    Raises:
        BundleError: the bundle is missing or corrupted.  ProfileError: a bad profile.
        EngineError: wrong bundle kind/target, missing precision file, TensorRT or GPU missing,
            a parse or build failure (with TensorRT's messages).
    """
    started = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"[build-engine {time.perf_counter() - started:5.1f}s] {message}", file=sys.stderr, flush=True)

    bundle = Path(bundle)
    meta = read_bundle(bundle)
    onnx_name = _onnx_for(meta, bundle, precision)
    max_length = int(meta.get("max_length") or 512)
    chosen = validate_profiles([p if isinstance(p, Profile) else parse_profile(p) for p in profiles]
                               if profiles else default_profiles(max_length), max_length)
    if isinstance(workspace_mb, bool) or not isinstance(workspace_mb, int) or workspace_mb < 1:
        raise EngineError(f"--workspace must be a positive number of MiB, got {workspace_mb!r}")
    trt = require_tensorrt()
    import torch

    num_layers = int(meta["backbone"]["num_layers"])
    capability = torch.cuda.get_device_capability()
    gpu = torch.cuda.get_device_name()
    builder, network, parser = _parse_network(trt, bundle / onnx_name, say)  # the parser owns the weights: keep it
    config = _builder_config(trt, builder, network, precision, workspace_mb, chosen, num_layers)
    cache_path = Path(timing_cache) if timing_cache else None
    reused = attach_timing_cache(config, cache_path) if cache_path is not None else False
    say(f"building ({precision}, {len(chosen)} profile(s), workspace {workspace_mb} MiB"
        + (f", timing cache {cache_path} ({'reused' if reused else 'new'})" if cache_path else "") + ")")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT could not build an engine from {bundle / onnx_name} (see its log above)")
    layout = bundle_layout(meta)
    name = engine_file_name(precision, capability, str(trt.__version__), chosen, layout)
    entry = {"file": name, "precision": precision, "layout": layout, "onnx": onnx_name,
             "onnx_sha256": meta["files"][onnx_name],
             "tensorrt_version": str(trt.__version__), "compute_capability": f"{capability[0]}.{capability[1]}",
             "gpu": gpu, "profiles": [p.to_meta() for p in chosen], "workspace_mb": workspace_mb,
             "timing_cache": str(cache_path.absolute()) if cache_path else None,
             "build_seconds": round(time.perf_counter() - started, 2)}
    if layout == "prefix":  # the W_l ranges each profile gave TensorRT, for the record
        for record, profile in zip(entry["profiles"], chosen):
            record["widths"] = [list(profile.width_range(layer, num_layers)) for layer in range(1, num_layers + 1)]
    write_plan(bundle, meta, entry, plan, config, cache_path)
    say(f"wrote {bundle / name}")
    return EngineBuild(bundle, entry, time.perf_counter() - started)


def _parse_network(trt: Any, onnx_file: Path, say: Any) -> tuple[Any, Any, Any]:
    """A strongly typed TensorRT network parsed from ``onnx_file``: ``(builder, network, parser)``."""
    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 10 needs it; 11 keeps it for compatibility (always strongly typed)
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {onnx_file.name}")
    if not parser.parse_from_file(str(onnx_file)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"TensorRT's ONNX parser refused {onnx_file}: " + " | ".join(errors[:5]))
    return builder, network, parser


def _builder_config(trt: Any, builder: Any, network: Any, precision: str, workspace_mb: int, profiles: list[Profile],
                    num_layers: int) -> Any:
    """The builder config: workspace limit, no TF32 for fp32 engines, one optimisation profile per ``profiles``."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 engines are compared with the reference at 1e-3
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name in inputs:
            low, opt, high = profile.shapes(name, num_layers)
            trt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(trt_profile)
    return config


class TimingCacheWarning(UserWarning):
    """A TensorRT timing cache could not be used or saved; the engine is built (and written) without it."""


def _warn_cache(message: str) -> None:
    warnings.warn(TimingCacheWarning(message), stacklevel=3)


def attach_timing_cache(config: Any, path: Path) -> bool:
    """Give builder ``config`` the timing cache stored at ``path`` (an empty one when the file is absent).

    TensorRT's ``set_timing_cache`` returns False for a cache made on another GPU or TensorRT version:
    then the build goes on with a fresh cache (written back to ``path`` afterwards) and a
    :class:`TimingCacheWarning` says so.  Returns whether the stored cache is in use.
    """
    blob = b""
    if path.is_file():
        try:
            blob = path.read_bytes()
        except OSError as exc:
            _warn_cache(f"cannot read the timing cache {path} ({exc}); building without it")
    if blob:
        cache = config.create_timing_cache(blob)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return True
        _warn_cache(f"TensorRT refused the timing cache {path} (made on another GPU or TensorRT version?); "
                    f"building with a fresh one, which replaces it afterwards")
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, ignore_mismatch=False):
        _warn_cache("TensorRT could not create an empty timing cache; building without one")
    return False


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_timing_cache(config: Any, path: Path) -> bool:
    """Write ``config``'s timing cache to ``path`` atomically; False (with a :class:`TimingCacheWarning`) when
    TensorRT gives none (``get_timing_cache()`` may return None), it cannot be serialized or written."""
    cache = config.get_timing_cache()
    if cache is None:
        _warn_cache(f"TensorRT returned no timing cache after the build; {path} is left as it was")
        return False
    try:
        blob = cache.serialize()
        data = bytes(blob) if blob is not None else b""
    except (RuntimeError, TypeError, ValueError) as exc:
        _warn_cache(f"TensorRT could not serialize the timing cache ({exc}); {path} is left as it was")
        return False
    if not data:
        _warn_cache(f"TensorRT serialized an empty timing cache; {path} is left as it was")
        return False
    try:
        write_bytes_atomically(path, data)
    except OSError as exc:
        _warn_cache(f"cannot write the timing cache {path} ({exc}); the engine is written all the same")
        return False
    return True


def write_plan(bundle: Path, meta: dict[str, Any], entry: dict[str, Any], plan: Any, config: Any,
               cache_path: Path | None) -> None:
    """Write the built ``plan`` into the bundle (listed in ``hashee.json``), then the timing cache.

    The plan comes first: a timing cache TensorRT cannot give back or that cannot be written only
    warns (:func:`save_timing_cache`), after a long build the engine is never lost to it.
    """
    scratch = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.engine-", dir=bundle.absolute().parent))
    try:
        (scratch / "plan").write_bytes(bytes(plan))
        engines = [e for e in meta.get("engines", []) if e.get("file") != entry["file"]] + [entry]
        update_bundle(bundle, {entry["file"]: scratch / "plan"}, {"engines": engines})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if cache_path is not None:
        save_timing_cache(config, cache_path)


