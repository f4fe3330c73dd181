"""Running a serialized TensorRT plan: :class:`TensorRTEngine` (pick the profile that fits, set input shapes,
bind device buffers, run on a stream, copy out) and :func:`run_engine`.

The runtime's TensorRT runner (:mod:`hashee.runtime.runners.tensorrt`) wraps it; the GPU tests use it
directly.  ``tensorrt`` and CUDA torch are imported only inside the functions that need them; without
either, :func:`require_tensorrt` raises :class:`~hashee.errors.EngineError` naming what is missing.
Building plans is the exporter's job (:mod:`hashee.exporter.tensorrt_engine`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from hashee.errors import EngineError

INSTALL_HINT = "install it with: pip install 'hashee[tensorrt]', NVIDIA's wheel, which needs an NVIDIA driver"


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


def _logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


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
