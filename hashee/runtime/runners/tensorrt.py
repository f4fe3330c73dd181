"""Native TensorRT runner: a serialized engine from the bundle's ``engines/``, run on this GPU.

``hashee build-engine BUNDLE`` (:func:`hashee.exporter.tensorrt_engine.build_engine`) writes a plan
under ``engines/`` and lists it in ``hashee.json`` ``engines`` (with its sha256 under ``files``)::

    {"file": "engines/model.fp32.sm90.trt11.0.0.7.b1-32-128_s2-32-64.plan", "precision": "fp32",
     "onnx": "model.onnx", "onnx_sha256": "<sha256 of model.onnx when the plan was built>",
     "tensorrt_version": "11.0.0.7", "compute_capability": "9.0", "gpu": "NVIDIA H200",
     "profiles": [{"batch": [1, 32, 128], "sequence": [2, 32, 64]}],
     "workspace_mb": 4096, "timing_cache": null, "build_seconds": 41.2}

**Which engine.** A plan runs only on the GPU compute capability and the exact TensorRT version it
was built with, only while its ONNX file is the one it was built from (``onnx_sha256``), and only
for the layout of the bundle's graph (``layout``: the host feeds that layout, so an engine of a prefix
bundle is a prefix engine; ``build-engine`` builds from the bundle's graph).
:func:`choose_engine` keeps the entries that pass those checks and takes the asked precision
(``Session.load(..., precision="fp16")``), else the first of fp32 > fp16 > int8 present; among
engines of one precision, the one whose profiles reach the longest sequence, then the largest batch,
then the most recently built.  Nothing runnable: a :class:`BackendError` naming each engine, what it
was built for, what this machine has, and the fix (``hashee build-engine BUNDLE`` here).  No GPU, no
``tensorrt`` package or no engine at all: a :class:`BackendError` naming every missing piece (the GPU
is found through the driver library, without importing torch), so ``backend="auto"`` falls back to
ONNX Runtime.

**Shapes.** :func:`plan_chunks` maps a ``[batch, sequence]`` feed onto the engine's optimisation
profiles before TensorRT sees it: a batch larger than any profile at that length is cut into
near-equal chunks that fit (outputs are concatenated back, so ``Session.predict`` with any
``batch_size`` works); a sequence length no profile holds raises :class:`ProfileError` naming the
profiles and a ``--profile`` that would.

**Threads.** One TensorRT execution context runs one call at a time: :meth:`TensorRTRunner.infer`
takes a lock around it, so a session may be shared by threads but its GPU work is serialised (open
one session per thread to overlap engines).  ``tensorrt`` and torch (CUDA buffers and the stream)
import only on activation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from typing import Any

import numpy as np

from hashee.errors import BackendError, EngineError, ProfileError
from hashee.bundle import Bundle
from hashee.engines import Profile, bundle_layout
from hashee.runtime.runners import cuda_index
from hashee.runtime.runners.base import Runner

#: engine precisions, in the order chosen when none is asked for
PRECISIONS = ("fp32", "fp16", "int8")


def _driver_library_names() -> list[str]:
    """Where the CUDA driver API is looked for, in order: the driver's own ``libcuda.so.1`` (Windows:
    ``nvcuda.dll``) first, then ``find_library("cuda")``, which may find a toolkit stub (``stubs/libcuda.so``,
    whose ``cuInit`` always fails) before the driver."""
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1"]
    found = ctypes.util.find_library("cuda")
    if found and found not in names:
        names.append(found)
    return names


def load_cuda_driver() -> Any:
    """The CUDA driver library whose ``cuInit`` succeeds, or None (no driver, only a stub, or no GPU)."""
    for name in _driver_library_names():
        try:
            cuda = ctypes.CDLL(name)
        except OSError:
            continue
        if cuda.cuInit(0) == 0:
            return cuda
    return None


def gpu_compute_capabilities() -> list[str]:
    """``"major.minor"`` of every CUDA device the driver reports (empty without a driver or GPU)."""
    cuda = load_cuda_driver()
    if cuda is None:
        return []
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    found = []
    for index in range(count.value):
        device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        if cuda.cuDeviceGet(ctypes.byref(device), index) != 0:
            continue
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # ..._MINOR
        found.append(f"{major.value}.{minor.value}")
    return found


def tensorrt_version() -> str | None:
    """``tensorrt.__version__``, or None where the package is absent or cannot load its libraries."""
    try:
        import tensorrt
    except (ImportError, OSError):
        return None
    return str(getattr(tensorrt, "__version__", "unknown"))


def check_precision(precision: object) -> str | None:
    if precision is None:
        return None
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)} (or None: the "
                           f"best engine present)")
    return precision


# ------------------------------------------------------------------------------------------ manifest entries
def entry_profiles(entry: dict[str, Any]) -> list[Profile]:
    """The optimisation profiles a manifest entry lists, in the engine's order; EngineError when malformed."""
    raw = entry.get("profiles")
    if not isinstance(raw, list) or not raw:
        raise EngineError(f"its manifest entry lists no optimisation profiles (got {raw!r})")
    profiles = []
    for item in raw:
        ranges = []
        for axis in ("batch", "sequence"):
            values = item.get(axis) if isinstance(item, dict) else None
            if (not isinstance(values, list) or len(values) != 3
                    or any(isinstance(v, bool) or not isinstance(v, int) for v in values)
                    or not 1 <= values[0] <= values[1] <= values[2]):
                raise EngineError(f"its manifest entry has a malformed profile {item!r}: {axis} must be "
                                  f"[min, opt, max] with 1 <= min <= opt <= max")
            ranges.append(tuple(values))
        profiles.append(Profile(ranges[0], ranges[1]))  # type: ignore[arg-type]
    return profiles


def describe(entry: dict[str, Any]) -> str:
    return (f"{entry.get('file')} ({entry.get('precision')}, compute capability {entry.get('compute_capability')}, "
            f"TensorRT {entry.get('tensorrt_version')})")


def engine_problem(entry: dict[str, Any], capability: str, version: str, files: dict[str, Any],
                   layout: str = "packed") -> str | None:
    """Why manifest ``entry`` cannot run on a GPU of ``capability`` with TensorRT ``version`` (None: it can).

    ``files`` is the manifest's ``{path: sha256}``: an engine built from an ONNX file that has changed
    since is stale.  ``layout`` is the bundle's (``packed`` or ``prefix``): the host feeds that layout.
    """
    if not isinstance(entry.get("file"), str) or entry["file"] not in files:
        return "its manifest entry names no file of the bundle"
    if str(entry.get("layout") or "packed") != layout:
        return f"built for the {entry.get('layout') or 'packed'} layout, the bundle's graph has the {layout} layout"
    if entry.get("precision") not in PRECISIONS:
        return f"its precision {entry.get('precision')!r} is none of {', '.join(PRECISIONS)}"
    try:
        entry_profiles(entry)
    except EngineError as exc:
        return str(exc)
    built_for = str(entry.get("compute_capability"))
    if built_for != capability:
        return f"built for compute capability {built_for}, this GPU is {capability}"
    built_with = str(entry.get("tensorrt_version"))
    if built_with != version:
        return f"built with TensorRT {built_with}, this machine has TensorRT {version}"
    onnx, sha = entry.get("onnx"), entry.get("onnx_sha256")
    if onnx and sha and files.get(onnx) != sha:
        return f"built from an earlier {onnx} (the file has changed since)"
    return None


def choose_engine(bundle: Bundle, capability: str, version: str, precision: str | None = None) -> dict[str, Any]:
    """The manifest entry to run on a GPU of ``capability`` with TensorRT ``version`` (see the module doc).

    Raises:
        BackendError: no engine runs here, or none of the asked ``precision`` does; the message names
            every engine and why it cannot run, this machine's compute capability and TensorRT version,
            and the ``hashee build-engine`` command that builds one here.
    """
    precision = check_precision(precision)
    files = bundle.meta.get("files", {})
    runnable: list[tuple[int, dict[str, Any]]] = []
    refused: list[tuple[dict[str, Any], str]] = []
    for order, entry in enumerate(bundle.engines):
        problem = engine_problem(entry, capability, version, files, bundle_layout(bundle.meta))
        if problem is None:
            runnable.append((order, entry))
        else:
            refused.append((entry, problem))
    wanted = [(o, e) for o, e in runnable if precision is None or e["precision"] == precision]
    if not wanted:
        what = f"{precision} engine" if precision else "engine"
        reasons = [f"{describe(e)}: {problem}" for e, problem in refused
                   if precision is None or e.get("precision") == precision]
        others = sorted({e["precision"] for _, e in runnable}, key=PRECISIONS.index)
        raise BackendError(
            f"backend 'tensorrt' cannot run here: no {what} in {bundle.path} runs on this GPU with this TensorRT"
            + (f": {'; '.join(reasons)}" if reasons else f" (none {f'of precision {precision} ' if precision else ''}"
                                                          f"is listed)")
            + (f"; {', '.join(others)} engine(s) do run here (load with precision=None)" if others else "")
            + f"; this machine has compute capability {capability} and TensorRT {version}. Build one on this "
            f"machine: hashee build-engine {bundle.path}" + (f" --precision {precision}" if precision else "")
            + ", or use backend='onnxruntime' (or 'auto')")

    def rank(item: tuple[int, dict[str, Any]]) -> tuple[int, int, int, int]:
        order, entry = item  # every runnable engine has the bundle's layout (engine_problem)
        profiles = entry_profiles(entry)
        return (PRECISIONS.index(entry["precision"]), -max(p.sequence[2] for p in profiles),
                -max(p.batch[2] for p in profiles), -order)

    return min(wanted, key=rank)[1]


# ------------------------------------------------------------------------------------------ shapes
def _ranges(profiles: list[Profile]) -> str:
    return ", ".join(f"batch {p.batch[0]}..{p.batch[2]} x sequence {p.sequence[0]}..{p.sequence[2]}"
                     for p in profiles)


def _suggest(profiles: list[Profile], batch: int, sequence: int) -> str:
    """A ``--profile`` holding ``batch`` x ``sequence`` and everything the engine holds now."""
    top_b = max([batch] + [p.batch[2] for p in profiles])
    top_s = max([sequence] + [p.sequence[2] for p in profiles])
    low_s = min([2, sequence] + [p.sequence[0] for p in profiles])
    return f"--profile 1x{low_s}:{min(32, top_b)}x{max(low_s, top_s // 2)}:{top_b}x{top_s}"


def plan_chunks(profiles: list[Profile], batch: int, sequence: int,
                bundle: object = "BUNDLE") -> list[tuple[int, int, int]]:
    """``(start, stop, profile index)`` row slices that run ``batch`` rows of ``sequence`` tokens.

    Profiles are the engine's, in its order (:func:`entry_profiles`).  One chunk when a profile holds
    the whole batch; otherwise the fewest near-equal chunks of at most the largest batch a profile
    holds at this length.  Each chunk runs under the first profile that holds it.

    Raises:
        ProfileError: no profile holds ``sequence`` tokens, or a chunk's row count; the message names
            the engine's profile ranges and a ``--profile`` for ``hashee build-engine`` that would.
    """
    if batch <= 0:
        return []
    fix = f"rebuild the engine with one that does: hashee build-engine {bundle} {_suggest(profiles, batch, sequence)}"
    fitting = [i for i, p in enumerate(profiles) if p.sequence[0] <= sequence <= p.sequence[2]]
    if not fitting:
        raise ProfileError(f"a sequence length of {sequence} fits no optimisation profile of the TensorRT engine "
                           f"({_ranges(profiles)}); {fix}")
    largest = max(profiles[i].batch[2] for i in fitting)
    count = -(-batch // largest)
    chunks, start = [], 0
    for part in range(count):
        rows = batch // count + (1 if part < batch % count else 0)
        index = next((i for i in fitting if profiles[i].batch[0] <= rows <= profiles[i].batch[2]), None)
        if index is None:
            raise ProfileError(f"a batch of {rows} row(s) of {sequence} tokens fits no optimisation profile of the "
                               f"TensorRT engine ({_ranges(profiles)}); {fix}")
        chunks.append((start, start + rows, index))
        start += rows
    return chunks


def _rows(name: str, value: np.ndarray, start: int, stop: int) -> np.ndarray:
    return value[:, start:stop] if name == "exit_masks" else value[start:stop]  # exit_masks is [L, batch, seq]


# ------------------------------------------------------------------------------------------ the runner
class TensorRTRunner(Runner):
    """A bundle's TensorRT engine for this GPU and TensorRT version (refuses, naming what is missing, otherwise).

    Args:
        bundle: an opened bundle whose manifest lists engines (``hashee build-engine``).
        device: ``None`` or ``cuda`` (GPU 0), ``cuda:N``; ``cpu`` is refused.
        threads: unused (TensorRT schedules its own kernels); accepted for the common runner signature.
        precision: ``fp32``, ``fp16`` or ``int8`` to insist on that engine; ``None`` takes the first of
            fp32 > fp16 > int8 that runs here.
    """

    name = "tensorrt"

    def __init__(self, bundle: Bundle, device: str | None = None, threads: int | None = None,
                 precision: str | None = None) -> None:
        super().__init__()
        self.bundle = bundle
        precision = check_precision(precision)
        gpus = gpu_compute_capabilities()
        version = tensorrt_version()
        index = cuda_index(device)
        missing = []
        if device == "cpu":
            missing.append("device='cpu' was asked for but TensorRT runs on a GPU")
        if not gpus:
            missing.append("no CUDA GPU is visible (no driver library or no device)")
        elif index >= len(gpus):
            missing.append(f"there is no GPU {index} (found {len(gpus)})")
        if version is None:
            missing.append("the tensorrt Python package is not installed (pip install tensorrt, or "
                           "pip install 'hashee[tensorrt]')")
        if not bundle.engines:
            missing.append(f"{bundle.path} holds no TensorRT engine (engines/ is empty; build one on the GPU machine "
                           f"with: hashee build-engine {bundle.path})")
        if missing:
            raise BackendError("backend 'tensorrt' cannot run here: " + "; ".join(missing)
                               + ". Use backend='onnxruntime' (or 'auto')")
        self.device_index = index
        self.entry = choose_engine(bundle, gpus[index], str(version), precision)
        self.precision = str(self.entry["precision"])
        self.profiles = entry_profiles(self.entry)
        self.plan_file = bundle.path / self.entry["file"]
        self.engine: Any = None
        self._run_lock = threading.Lock()

    @property
    def input_names(self) -> list[str]:
        return list(self.engine.inputs) if self.engine is not None else []

    def _activate(self) -> None:
        try:
            import torch
        except ImportError:
            torch = None
        if torch is None or not torch.cuda.is_available():
            raise BackendError("backend 'tensorrt' cannot run here: torch sees no CUDA device (the runner keeps the "
                               "engine's buffers in torch CUDA tensors; install a CUDA build of torch). Use "
                               "backend='onnxruntime' (or 'auto')")
        from hashee.runtime.runners.tensorrt_engine import TensorRTEngine

        with torch.cuda.device(self.device_index):
            engine = TensorRTEngine(self.plan_file)
        listed = [((p.batch[0], p.sequence[0]), (p.batch[2], p.sequence[2])) for p in self.profiles]
        actual = [(low[-2:], high[-2:]) for low, high in engine.profile_ranges(engine.inputs[0])]
        if actual != listed:
            engine.close()
            raise EngineError(f"{self.plan_file} has optimisation profiles {actual} ((min, max) of batch x sequence) "
                              f"but hashee.json lists {listed}; rebuild it: hashee build-engine {self.bundle.path}")
        self.engine = engine

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        batch, sequence = np.shape(feed["input_ids"])
        chunks = plan_chunks(self.profiles, int(batch), int(sequence), self.bundle.path)
        parts = []
        with self._run_lock, torch.cuda.device(self.device_index):
            engine = self.engine
            if engine is None:
                raise BackendError("the TensorRT runner was deactivated while a call waited; activate it again")
            for start, stop, profile in chunks:
                part = {name: _rows(name, value, start, stop) for name, value in feed.items() if name in engine.inputs}
                problem = self.profiles[profile].prefix_problem({k: v.shape for k, v in part.items()},
                                                               self.bundle.num_layers)
                if problem:
                    raise ProfileError(f"{problem}; rebuild the engine: hashee build-engine {self.bundle.path} "
                                       f"--profile ...")
                parts.append(engine.infer(part, profile=profile))
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}  # outputs are batch-first

    def _deactivate(self) -> None:
        with self._run_lock:
            if self.engine is not None:
                self.engine.close()
            self.engine = None
