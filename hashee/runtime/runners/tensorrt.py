"""Native TensorRT runner: engines from the bundle's ``engines/`` (built by the TensorRT builder, issue #5).

This module decides whether a TensorRT engine can run here and says exactly what is missing when
not: a CUDA GPU (found through the driver library, without importing torch), the ``tensorrt``
package, an engine in the manifest built for this GPU's compute capability and TensorRT version.
Running the engine itself is issue #5's; until then an otherwise runnable engine is refused with a
:class:`BackendError` too, and ``backend="auto"`` falls back to ONNX Runtime.

Manifest entries (``hashee.json`` ``engines``) read here: ``{"file", "compute_capability": "9.0",
"tensorrt_version": "10.x.y", "precision", "profile"}``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

import numpy as np

from hashee.errors import BackendError
from hashee.runtime.bundle import Bundle
from hashee.runtime.runners.base import Runner


def gpu_compute_capabilities() -> list[str]:
    """``"major.minor"`` of every CUDA device the driver reports (empty without a driver or GPU)."""
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        cuda = ctypes.CDLL(name)
    except OSError:
        return []
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
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
    try:
        import tensorrt
    except ImportError:
        return None
    return str(getattr(tensorrt, "__version__", "unknown"))


def matching_engine(bundle: Bundle, capability: str, version: str) -> dict[str, Any] | None:
    """The first listed engine built for this compute capability and TensorRT major.minor version."""
    for engine in bundle.engines:
        same_version = str(engine.get("tensorrt_version", "")).split(".")[:2] == version.split(".")[:2]
        if str(engine.get("compute_capability")) == capability and same_version:
            return engine
    return None


class TensorRTRunner(Runner):
    """Refuses, naming every missing piece, unless an engine for this GPU and TensorRT exists."""

    def __init__(self, bundle: Bundle, device: str | None = None, threads: int | None = None) -> None:
        super().__init__()
        self.bundle = bundle
        gpus = gpu_compute_capabilities()
        version = tensorrt_version()
        index = int(device.split(":", 1)[1]) if device and ":" in device else 0
        missing = []
        if device == "cpu":
            missing.append("device='cpu' was asked for but TensorRT runs on a GPU")
        if not gpus:
            missing.append("no CUDA GPU is visible (no driver library or no device)")
        elif index >= len(gpus):
            missing.append(f"there is no GPU {index} (found {len(gpus)})")
        if version is None:
            missing.append("the tensorrt Python package is not installed (pip install tensorrt)")
        if not bundle.engines:
            missing.append(f"{bundle.path} holds no TensorRT engine (engines/ is empty; build one with the "
                           f"TensorRT builder)")
        elif gpus and version and index < len(gpus) and matching_engine(bundle, gpus[index], version) is None:
            built = ", ".join(f"{e.get('file')} (sm {e.get('compute_capability')}, TensorRT "
                              f"{e.get('tensorrt_version')})" for e in bundle.engines)
            missing.append(f"no engine matches this GPU (sm {gpus[index]}) and TensorRT {version}; the bundle has "
                           f"{built}: build one here")
        if not missing:
            missing.append("running native engines arrives with the TensorRT runner (issue #5)")
        raise BackendError("backend 'tensorrt' cannot run here: " + "; ".join(missing)
                           + ". Use backend='onnxruntime' (or 'auto')")

    @property
    def input_names(self) -> list[str]:  # pragma: no cover - the constructor always refuses for now
        return []

    def _activate(self) -> None:  # pragma: no cover
        raise BackendError("backend 'tensorrt' is not available yet (issue #5)")

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover
        raise BackendError("backend 'tensorrt' is not available yet (issue #5)")
