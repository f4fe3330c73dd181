"""TensorRT 11 engines from a bundle: profiles checked before TensorRT sees them, build, minimal execution.

``hashee build-engine BUNDLE [--precision fp32|fp16|int8] [--profile MIN:OPT:MAX ...]`` parses the
bundle's tensorrt-target ONNX file of that precision (``model.onnx``, ``model.fp16.onnx`` or the Q/DQ
``model.int8.onnx``; TensorRT 11 networks are strongly typed, so precision is decided in the file,
not by builder flags), adds one optimisation profile per ``--profile`` (batch and sequence ranges;
``exit_masks`` gets ``[num_layers, batch, sequence]``), reuses a timing cache when given one, and
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
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
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
        """(min, opt, max) shapes of input ``name`` ([B, S], or [L, B, S] for ``exit_masks``)."""
        lead = (num_layers,) if name == "exit_masks" else ()
        return tuple(lead + (b, s) for b, s in zip(self.batch, self.sequence))

    def to_meta(self) -> dict[str, list[int]]:
        return {"batch": list(self.batch), "sequence": list(self.sequence)}


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


def default_profiles(max_length: int) -> list[Profile]:
    """One profile: batch 1..128 (opt 32), sequence 2..max length (opt half of it)."""
    return [Profile((1, 32, 128), (min(2, max_length), max(2, max_length // 2), max_length))]


def engine_file_name(precision: str, compute_capability: tuple[int, int], tensorrt_version: str,
                     profiles: list[Profile]) -> str:
    """``engines/model.<precision>.sm<cc>.trt<version>.<profiles>.plan`` (a plan runs on that GPU and TensorRT only)."""
    major, minor = compute_capability
    tags = "+".join(p.tag for p in profiles)
    return f"{ENGINES_DIR}/model.{precision}.sm{major}{minor}.trt{tensorrt_version}.{tags}.plan"


def _import_tensorrt() -> tuple[Any, str | None]:
    """``(tensorrt module, None)``, or ``(None, why not)`` when it is absent or cannot load its libraries."""
    if importlib.util.find_spec("tensorrt") is None:
        return None, f"the tensorrt package is not installed ({INSTALL_HINT})"
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # the bindings are there, libnvinfer is not (or not loadable)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, (f"the tensorrt package is installed but cannot load its libraries ({first}); TensorRT's "
                      f"library wheels on PyPI only download from NVIDIA's index at install time: reinstall with "
                      f"pip install 'hashee[tensorrt]' where pypi.nvidia.com is reachable, or install NVIDIA's "
                      f"TensorRT libraries")
    return trt, None


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, with a CUDA GPU present; else :class:`EngineError` naming what is missing.

    A ``tensorrt`` package present without its libraries (``libnvinfer``) is an :class:`EngineError`
    too, not the raw ``ImportError``.
    """
    trt, problem = _import_tensorrt()
    missing = [problem] if problem else []
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
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise EngineError(f"TensorRT {trt.__version__} is too old: hashee builds strongly typed networks with "
                          f"TensorRT 11 (10 also works); {INSTALL_HINT}")
    return trt


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
    from hashee.exporter.bundle import read_bundle

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
    reused = attach_timing_cache(config, cache_path) if cache_path is not None else False
    say(f"building ({precision}, {len(chosen)} profile(s), workspace {workspace_mb} MiB"
        + (f", timing cache {cache_path} ({'reused' if reused else 'new'})" if cache_path else "") + ")")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT could not build an engine from {bundle / onnx_name} (see its log above)")
    name = engine_file_name(precision, capability, str(trt.__version__), chosen)
    entry = {"file": name, "precision": precision, "onnx": onnx_name, "onnx_sha256": meta["files"][onnx_name],
             "tensorrt_version": str(trt.__version__), "compute_capability": f"{capability[0]}.{capability[1]}",
             "gpu": gpu, "profiles": [p.to_meta() for p in chosen], "workspace_mb": workspace_mb,
             "timing_cache": str(cache_path.absolute()) if cache_path else None,
             "build_seconds": round(time.perf_counter() - started, 2)}
    write_plan(bundle, meta, entry, plan, config, cache_path)
    say(f"wrote {bundle / name}")
    return EngineBuild(bundle, entry, time.perf_counter() - started)


def write_plan(bundle: Path, meta: dict[str, Any], entry: dict[str, Any], plan: Any, config: Any,
               cache_path: Path | None) -> None:
    """Write the built ``plan`` into the bundle (listed in ``hashee.json``), then the timing cache.

    The plan comes first: a timing cache TensorRT cannot give back or that cannot be written only
    warns (:func:`save_timing_cache`), after a long build the engine is never lost to it.
    """
    from hashee.exporter.bundle import update_bundle

    scratch = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.engine-", dir=bundle.absolute().parent))
    try:
        (scratch / "plan").write_bytes(bytes(plan))
        engines = [e for e in meta.get("engines", []) if e.get("file") != entry["file"]] + [entry]
        update_bundle(bundle, {entry["file"]: scratch / "plan"}, {"engines": engines})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if cache_path is not None:
        save_timing_cache(config, cache_path)


def torch_dtypes(trt: Any, torch: Any) -> dict[Any, Any]:
    """TensorRT ``DataType`` -> torch dtype for the tensors an engine binds (those this TensorRT has)."""
    pairs = (("FLOAT", "float32"), ("HALF", "float16"), ("BF16", "bfloat16"), ("INT32", "int32"),
             ("INT64", "int64"), ("INT8", "int8"), ("UINT8", "uint8"), ("BOOL", "bool"))
    return {getattr(trt.DataType, t): getattr(torch, d) for t, d in pairs if hasattr(trt.DataType, t)}


@dataclass
class DeviceBatch:
    """One batch resident on the GPU: input and output torch CUDA tensors and its optimisation profile."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]
    profile: int


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
        table = torch_dtypes(trt, torch)
        self._dtypes = {}
        for name in names:  # once, not per batch
            dtype = self.engine.get_tensor_dtype(name)
            if dtype not in table:
                raise EngineError(f"the engine's tensor {name!r} has TensorRT type {dtype}, which hashee cannot bind "
                                  f"(it binds {', '.join(sorted(str(k) for k in table))})")
            self._dtypes[name] = table[dtype]

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

    def _use_profile(self, profile: int) -> None:
        if profile != self._profile:
            if not self.context.set_optimization_profile_async(profile, self.stream.cuda_stream):
                raise EngineError(f"TensorRT refused to switch the execution context to optimisation profile {profile}")
            self._profile = profile

    def _set_shapes(self, batch: "DeviceBatch") -> None:
        self._use_profile(batch.profile)
        for name, tensor in batch.inputs.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise EngineError(f"TensorRT refused shape {tuple(tensor.shape)} for input {name!r} under "
                                  f"optimisation profile {batch.profile}; rebuild with a --profile that covers it")
            self.context.set_tensor_address(name, tensor.data_ptr())

    def prepare(self, feed: dict[str, np.ndarray], profile: int | None = None) -> "DeviceBatch":
        """Copy ``feed`` to the GPU once and allocate its outputs there: a batch :meth:`execute` can rerun.

        ``profile`` is the optimisation profile to run under (default: :meth:`pick_profile`).
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
        with torch.cuda.stream(self.stream):
            inputs = {name: torch.as_tensor(np.ascontiguousarray(feed[name])).to("cuda", self._dtype(name))
                      .contiguous() for name in self.inputs}
            batch = DeviceBatch(inputs, {}, profile)
            self._set_shapes(batch)
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                batch.outputs[name] = torch.empty(shape, dtype=self._dtype(name), device="cuda")
        return batch

    def execute(self, batch: "DeviceBatch") -> None:
        """Enqueue one run of a :meth:`prepare`-d batch on the engine's stream (no copies, no sync)."""
        self._set_shapes(batch)
        for name, tensor in batch.outputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError("TensorRT failed to execute the engine")

    def synchronize(self) -> None:
        """Wait for the work enqueued on the engine's stream."""
        self.stream.synchronize()

    def infer(self, feed: dict[str, np.ndarray], profile: int | None = None) -> dict[str, np.ndarray]:
        """Run one batch; returns every output as a numpy array.

        ``profile`` is the optimisation profile to run under (default: :meth:`pick_profile`).  Not
        thread-safe: one execution context serves one call at a time (the runtime's TensorRT runner
        holds a lock around it).
        """
        batch = self.prepare(feed, profile)
        self.execute(batch)
        self.synchronize()
        return {name: out.float().cpu().numpy() if out.is_floating_point() else out.cpu().numpy()
                for name, out in batch.outputs.items()}

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
