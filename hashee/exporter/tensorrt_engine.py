"""TensorRT 11 engines from a bundle: profiles checked before TensorRT sees them, build, minimal execution.

``hashee build-engine BUNDLE [--precision fp32|fp16|int8] [--profile MIN:OPT:MAX ...]`` parses the
bundle's tensorrt-target ONNX file of that precision (``model.onnx``, ``model.fp16.onnx`` or the Q/DQ
``model.int8.onnx``; TensorRT 11 networks are strongly typed, so precision is decided in the file,
not by builder flags), adds one optimisation profile per ``--profile`` (batch and sequence ranges;
``exit_masks`` gets ``[num_layers, batch, sequence]``; a prefix-layout bundle's ``exit_mask_l`` gets
``[batch, W_l]`` with ``W_l`` ranging over 1 .. the profile's longest sequence, see
:meth:`Profile.width_range`), reuses a timing cache when given one, and
writes the serialized plan to ``BUNDLE/engines/`` under a name holding the precision, the GPU's
compute capability, the TensorRT version and the profiles; ``hashee.json`` lists it with its sha256.

:class:`TensorRTEngine` / :func:`run_engine` execute a plan on torch CUDA tensors (pick the profile
that fits, set input shapes, bind device buffers, run on a stream, copy out): the helper the GPU tests
use and that ``hashee.runtime``'s TensorRT runner (:mod:`hashee.runtime.runners.tensorrt`) wraps.

``tensorrt`` and CUDA torch are imported only inside the functions that need them; without either,
:func:`require_tensorrt` raises :class:`~hashee.errors.EngineError` naming what is missing.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hashee.errors import EngineError, ProfileError

ENGINES_DIR = "engines"
PRECISION_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
INSTALL_HINT = "install it with: pip install 'hashee[tensorrt]', NVIDIA's wheel, which needs an NVIDIA driver"
_DIMS = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: (min, opt, max) of the batch and of the sequence length."""

    batch: tuple[int, int, int]
    sequence: tuple[int, int, int]

    @property
    def tag(self) -> str:
        return f"b{'-'.join(map(str, self.batch))}_s{'-'.join(map(str, self.sequence))}"

    def shapes(self, name: str, num_layers: int) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) shapes of input ``name`` ([B, S], or [L, B, S] for ``exit_masks``, or
        [B, W_l] for the prefix layout's ``exit_mask_l``: see :meth:`width_range`)."""
        layer = mask_layer(name)
        if layer is not None:
            return tuple((b, w) for b, w in zip(self.batch, self.width_range(layer, num_layers)))
        lead = (num_layers,) if name == "exit_masks" else ()
        return tuple(lead + (b, s) for b, s in zip(self.batch, self.sequence))

    def width_range(self, layer: int, num_layers: int) -> tuple[int, int, int]:
        """(min, opt, max) of ``W_l``, the width of ``exit_mask_l`` (prefix layout), from the sequence range.

        ``W_1`` is the sequence length.  Deeper layers hold 1 .. the longest sequence; the optimum
        assumes the active share falls linearly with depth (``ceil(opt * (L - l + 1) / L)``).
        """
        low, opt, high = self.sequence
        if layer == 1:
            return (low, opt, high)
        return (1, max(1, -(-opt * (num_layers - layer + 1) // num_layers)), high)

    def prefix_problem(self, shapes: dict[str, tuple[int, ...]], num_layers: int) -> str | None:
        """Why the prefix-layout input ``shapes`` do not fit this profile (None: they do)."""
        for name, shape in shapes.items():
            layer = mask_layer(name)
            if layer is None:
                continue
            low, _, high = self.width_range(layer, num_layers)
            width, sequence = shape[-1], shapes.get("input_ids", shape)[-1]
            if not low <= width <= min(high, sequence) or (layer == 1 and width != sequence):
                return (f"{name} has width {width}, outside {low}..{min(high, sequence)} (the profile's range for "
                        f"W_{layer} at sequence {sequence}" + ("; W_1 must equal the sequence length)" if layer == 1
                                                               else ")"))
        return None

    def to_meta(self) -> dict[str, list[int]]:
        return {"batch": list(self.batch), "sequence": list(self.sequence)}


def mask_layer(name: str) -> int | None:
    """``l`` for the prefix layout's input ``exit_mask_l``, else None."""
    head, _, tail = str(name).rpartition("_")
    return int(tail) if head == "exit_mask" and tail.isdigit() and int(tail) >= 1 else None


def parse_profile(text: str) -> Profile:
    """``"1x8:32x64:128x128"`` (BATCHxSEQ for min:opt:max) -> :class:`Profile`; :class:`ProfileError` if malformed."""
    parts = str(text).split(":")
    if len(parts) != 3:
        raise ProfileError(f"profile {text!r} must be MIN:OPT:MAX, each BATCHxSEQ (e.g. 1x8:32x64:128x128)")
    dims = []
    for part in parts:
        match = _DIMS.match(part)
        if not match:
            raise ProfileError(f"profile {text!r}: {part!r} is not BATCHxSEQ with positive integers (e.g. 32x64)")
        dims.append((int(match.group(1)), int(match.group(2))))
    return Profile(tuple(d[0] for d in dims), tuple(d[1] for d in dims))  # type: ignore[arg-type]


def validate_profiles(profiles: list[Profile], max_length: int) -> list[Profile]:
    """Check every profile against the bundle before TensorRT sees it; returns them unchanged."""
    if not profiles:
        raise ProfileError("at least one optimisation profile is needed")
    for profile in profiles:
        where = f"profile {':'.join(f'{b}x{s}' for b, s in zip(profile.batch, profile.sequence))}"
        for axis, (low, opt, high) in (("batch", profile.batch), ("sequence", profile.sequence)):
            if low < 1:
                raise ProfileError(f"{where}: the minimum {axis} must be at least 1, got {low}")
            if not low <= opt <= high:
                raise ProfileError(f"{where}: {axis} must satisfy min <= opt <= max, got {low}, {opt}, {high}")
        if profile.sequence[2] > max_length:
            raise ProfileError(f"{where}: the maximum sequence length {profile.sequence[2]} exceeds the bundle's "
                               f"max length {max_length}; use at most {max_length} (or re-export with --max-length)")
    if len(set(profiles)) != len(profiles):
        raise ProfileError("the same profile is given twice")
    return profiles


def bundle_layout(meta: dict[str, Any]) -> str:
    """``packed`` or ``prefix``: the compute layout of a bundle's graph (``onnx.layout``; older bundles: packed)."""
    return str((meta.get("onnx") or {}).get("layout") or "packed")


def default_profiles(max_length: int) -> list[Profile]:
    """One profile: batch 1..128 (opt 32), sequence 2..max length (opt half of it)."""
    return [Profile((1, 32, 128), (min(2, max_length), max(2, max_length // 2), max_length))]


def engine_file_name(precision: str, compute_capability: tuple[int, int], tensorrt_version: str,
                     profiles: list[Profile], layout: str = "packed") -> str:
    """``engines/model.<precision>[.prefix].sm<cc>.trt<version>.<profiles>.plan`` (a plan runs on that GPU
    and TensorRT only)."""
    major, minor = compute_capability
    tags = "+".join(p.tag for p in profiles)
    kind = f"{precision}.prefix" if layout == "prefix" else precision
    return f"{ENGINES_DIR}/model.{kind}.sm{major}{minor}.trt{tensorrt_version}.{tags}.plan"


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, with a CUDA GPU present; else :class:`EngineError` naming what is missing."""
    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing.append(f"the tensorrt package is not installed ({INSTALL_HINT})")
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        missing.append("no CUDA GPU is visible (torch.cuda.is_available() is False; a CUDA build of torch and "
                       "an NVIDIA GPU are needed)")
    if missing:
        raise EngineError("TensorRT engines need TensorRT and an NVIDIA GPU: " + "; ".join(missing))
    import tensorrt as trt

    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise EngineError(f"TensorRT {trt.__version__} is too old: hashee builds strongly typed networks with "
                          f"TensorRT 11 (10 also works); {INSTALL_HINT}")
    return trt


def _logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


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
    from hashee.exporter.bundle import read_bundle, update_bundle

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
    scratch = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.engine-", dir=bundle.absolute().parent))
    try:
        (scratch / "plan").write_bytes(bytes(plan))
        engines = [e for e in meta.get("engines", []) if e.get("file") != name] + [entry]
        update_bundle(bundle, {name: scratch / "plan"}, {"engines": engines})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    say(f"wrote {bundle / name}")
    return EngineBuild(bundle, entry, time.perf_counter() - started)


class TensorRTEngine:
    """A deserialized plan with one execution context; :meth:`infer` runs numpy feeds on the GPU."""

    def __init__(self, plan: str | Path | bytes) -> None:
        trt = require_tensorrt()
        import torch

        self._trt, self._torch = trt, torch
        data = Path(plan).read_bytes() if isinstance(plan, (str, Path)) else plan
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise EngineError("TensorRT could not deserialize the plan: it was built for another GPU or TensorRT "
                              "version; rebuild it with hashee build-engine on this machine")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError("TensorRT could not create an execution context for the plan (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.stream = torch.cuda.Stream()
        self._profile = -1
        table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
                 trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool, trt.DataType.INT8: torch.int8}
        self._dtypes = {name: table[self.engine.get_tensor_dtype(name)] for name in names}  # once, not per batch

    def _dtype(self, name: str) -> Any:
        return self._dtypes[name]

    def pick_profile(self, shapes: dict[str, tuple[int, ...]]) -> int:
        """Index of the first optimisation profile whose ranges hold every input shape."""
        for index in range(self.engine.num_optimization_profiles):
            fits = True
            for name, shape in shapes.items():
                low, _, high = self.engine.get_tensor_profile_shape(name, index)
                if len(low) != len(shape) or any(not lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
                    fits = False
                    break
            if fits:
                return index
        raise EngineError(f"no optimisation profile of the engine accepts input shapes {shapes}; rebuild with a "
                          f"--profile that covers them")

    def infer(self, feed: dict[str, np.ndarray], profile: int | None = None) -> dict[str, np.ndarray]:
        """Run one batch; returns every output as a numpy array.

        ``profile`` is the optimisation profile to run under (default: :meth:`pick_profile`).  Not
        thread-safe: one execution context serves one call at a time (the runtime's TensorRT runner
        holds a lock around it).
        """
        torch = self._torch
        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise EngineError(f"the engine needs inputs {missing}")
        if profile is None:
            profile = self.pick_profile({n: tuple(np.shape(feed[n])) for n in self.inputs})
        elif not 0 <= profile < self.engine.num_optimization_profiles:
            raise EngineError(f"profile {profile} does not exist: the engine has "
                              f"{self.engine.num_optimization_profiles} optimisation profile(s)")
        if profile != self._profile:
            self.context.set_optimization_profile_async(profile, self.stream.cuda_stream)
            self._profile = profile
        keep = []
        with torch.cuda.stream(self.stream):
            for name in self.inputs:
                tensor = torch.as_tensor(np.ascontiguousarray(feed[name])).to("cuda", self._dtype(name),
                                                                               non_blocking=False).contiguous()
                keep.append(tensor)
                if not self.context.set_input_shape(name, tuple(tensor.shape)):
                    raise EngineError(f"TensorRT refused shape {tuple(tensor.shape)} for input {name!r} under "
                                      f"optimisation profile {profile}; rebuild with a --profile that covers it")
                self.context.set_tensor_address(name, tensor.data_ptr())
            results = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                results[name] = torch.empty(shape, dtype=self._dtype(name), device="cuda")
                self.context.set_tensor_address(name, results[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EngineError("TensorRT failed to execute the engine")
        self.stream.synchronize()
        return {name: out.float().cpu().numpy() if out.is_floating_point() else out.cpu().numpy()
                for name, out in results.items()}

    def profile_ranges(self, name: str) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """``(min shape, max shape)`` of input ``name`` under each optimisation profile."""
        ranges = []
        for index in range(self.engine.num_optimization_profiles):
            low, _, high = self.engine.get_tensor_profile_shape(name, index)
            ranges.append((tuple(int(x) for x in low), tuple(int(x) for x in high)))
        return ranges

    def close(self) -> None:
        """Free the execution context, the engine and the runtime, in that order."""
        for attribute in ("context", "engine", "runtime"):
            if hasattr(self, attribute):
                delattr(self, attribute)


def run_engine(plan: str | Path | bytes, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Deserialize ``plan`` and run one batch (see :class:`TensorRTEngine` to run many)."""
    return TensorRTEngine(plan).infer(feed)
