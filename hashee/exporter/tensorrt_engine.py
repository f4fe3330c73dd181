"""TensorRT 11 engines from a bundle: profiles checked before TensorRT sees them (:mod:`hashee.engines`), build.

``hashee build-engine BUNDLE [--precision fp32|fp16|int8] [--profile MIN:OPT:MAX ...]`` parses the
bundle's tensorrt-target ONNX file of that precision (``model.onnx``, ``model.fp16.onnx`` or the Q/DQ
``model.int8.onnx``; TensorRT 11 networks are strongly typed, so precision is decided in the file,
not by builder flags), adds one optimisation profile per ``--profile`` (batch and sequence ranges;
``exit_masks`` gets ``[num_layers, batch, sequence]``), reuses a timing cache when given one, and
writes the serialized plan to ``BUNDLE/engines/`` under a name holding the precision, the GPU's
compute capability, the TensorRT version and the profiles; ``hashee.json`` lists it with its sha256.

Running a plan is the runtime's: :class:`~hashee.runtime.runners.tensorrt_engine.TensorRTEngine` (re-exported
here with :func:`run_engine` for callers of this module).

``tensorrt`` and CUDA torch are imported only inside the functions that need them; without either,
:func:`require_tensorrt` raises :class:`~hashee.errors.EngineError` naming what is missing.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hashee.bundle import PRECISION_FILES, read_bundle, update_bundle
from hashee.engines import Profile, default_profiles, engine_file_name, parse_profile, validate_profiles
from hashee.errors import EngineError
from hashee.runtime.runners.tensorrt_engine import INSTALL_HINT, TensorRTEngine, _logger, require_tensorrt, run_engine

__all__ = ["INSTALL_HINT", "EngineBuild", "Profile", "TensorRTEngine", "build_engine", "default_profiles",
           "engine_file_name", "parse_profile", "require_tensorrt", "run_engine", "validate_profiles"]


@dataclass
class EngineBuild:
    """What :func:`build_engine` wrote."""

    bundle: Path
    entry: dict[str, Any]
    seconds: float

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
    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:  # TensorRT 10 needs it; 11 keeps it for compatibility (always strongly typed)
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {onnx_name}")
    if not parser.parse_from_file(str(bundle / onnx_name)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"TensorRT's ONNX parser refused {bundle / onnx_name}: " + " | ".join(errors[:5]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 engines are compared with the reference at 1e-3
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    for profile in chosen:
        trt_profile = builder.create_optimization_profile()
        for name in inputs:
            low, opt, high = profile.shapes(name, num_layers)
            trt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(trt_profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache_blob = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    say(f"building ({precision}, {len(chosen)} profile(s), workspace {workspace_mb} MiB"
        + (f", timing cache {cache_path} with {len(cache_blob)} bytes" if cache_path else "") + ")")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT could not build an engine from {bundle / onnx_name} (see its log above)")
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        partial = cache_path.with_name(f".{cache_path.name}.partial")
        partial.write_bytes(bytes(config.get_timing_cache().serialize()))
        partial.replace(cache_path)
    name = engine_file_name(precision, capability, str(trt.__version__), chosen)
    entry = {"file": name, "precision": precision, "onnx": onnx_name, "onnx_sha256": meta["files"][onnx_name],
             "tensorrt_version": str(trt.__version__), "compute_capability": f"{capability[0]}.{capability[1]}",
             "gpu": gpu, "profiles": [p.to_meta() for p in chosen], "workspace_mb": workspace_mb,
             "timing_cache": str(cache_path.absolute()) if cache_path else None,
             "build_seconds": round(time.perf_counter() - started, 2)}
    scratch = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.engine-", dir=bundle.absolute().parent))
    try:
        (scratch / "plan").write_bytes(bytes(plan))
        engines = [e for e in meta.get("engines", []) if e.get("file") != name] + [entry]
        update_bundle(bundle, {name: scratch / "plan"}, {"engines": engines})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    say(f"wrote {bundle / name}")
    return EngineBuild(bundle, entry, time.perf_counter() - started)


