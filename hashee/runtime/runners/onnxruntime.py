"""ONNX Runtime runner: CPU, CUDA, and the TensorRT execution provider when this install has them.

``precision="int8"`` runs the bundle's dynamic int8 file (``model.int8-dynamic.onnx``, made by
``hashee quantize``; listed under ``precisions["int8-dynamic"]`` in ``hashee.json``) on the CPU; the Q/DQ
``model.int8.onnx`` of ``hashee calibrate`` is TensorRT's and is never what this runner loads.

The TensorRT provider caches the engines it builds in ``engines/onnxruntime-trt/`` inside the bundle
(outside the manifest, so the bundle still verifies); a read-only bundle runs without a cache.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hashee.bundle import DYNAMIC_INT8_KEY, Bundle, inside
from hashee.bundle import ORT_TRT_CACHE_DIR as CACHE_DIR
from hashee.errors import BackendError, BundleError, PrecisionError
from hashee.runtime.runners import cuda_index
from hashee.runtime.runners.base import Runner

SHORT = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}
#: precision -> the ``precisions`` entry of hashee.json whose file ONNX Runtime runs (fp32: model.onnx)
ORT_PRECISIONS = {"fp32": None, "int8": DYNAMIC_INT8_KEY}


def ort_model_file(bundle: Bundle, precision: str | None) -> Any:
    """The ONNX file ONNX Runtime runs for ``precision`` (``None``/``fp32``: ``model.onnx``).

    Raises :class:`PrecisionError` naming the command that adds the file when the bundle lacks it.
    """
    if precision in (None, "fp32"):
        return bundle.model_file
    if precision not in ORT_PRECISIONS:
        raise PrecisionError(f"ONNX Runtime runs precision fp32 or int8 (dynamic, hashee quantize); "
                             f"precision={precision!r} selects a TensorRT engine: use backend='tensorrt'")
    key = ORT_PRECISIONS[precision]
    entry = bundle.meta.get("precisions", {}).get(key)
    if not isinstance(entry, dict) or not entry.get("file"):
        raise PrecisionError(f"{bundle.path} holds no dynamic int8 model for ONNX Runtime; add it with: hashee quantize "
                             f"{bundle.path} (model.int8.onnx from hashee calibrate is TensorRT's Q/DQ model)")
    path = inside(bundle.path, entry["file"], f"the {precision} model")
    if not path.is_file():
        raise BundleError(f"the bundle's {precision} model {path} is missing; run hashee quantize {bundle.path} again")
    return path


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose_providers(bundle: Bundle, device: str | None, available: list[str]) -> list[Any]:
    """Providers to ask for, best first: TensorRT EP, CUDA, CPU (as ``device`` and this install allow)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    gpu = "CUDAExecutionProvider" in available
    if device is not None and not gpu:
        raise BackendError(f"device {device!r} needs onnxruntime's CUDAExecutionProvider, which this install lacks "
                           f"(it has {', '.join(available)}); pip install onnxruntime-gpu, or use device='cpu'")
    if not gpu:
        return ["CPUExecutionProvider"]
    index = cuda_index(device)
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        options: dict[str, Any] = {"device_id": index}
        cache = bundle.path / CACHE_DIR
        try:
            cache.mkdir(parents=True, exist_ok=True)
            if os.access(cache, os.W_OK):
                options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache))
        except OSError:
            pass  # read-only bundle: build engines without a cache
        providers.append(("TensorrtExecutionProvider", options))
    providers.append(("CUDAExecutionProvider", {"device_id": index}))
    providers.append("CPUExecutionProvider")
    return providers


def _ort_errors(*names: str) -> tuple[type, ...]:
    """ONNX Runtime's exception classes of these names (those this version has)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class OnnxRuntimeRunner(Runner):
    """``model.onnx`` on an ``onnxruntime.InferenceSession`` (whose ``run`` is thread-safe)."""

    def __init__(self, bundle: Bundle, device: str | None = None, threads: int | None = None,
                 precision: str | None = None) -> None:
        super().__init__()
        self.bundle, self.threads = bundle, threads
        self.model_file = ort_model_file(bundle, precision)
        self.precision = precision or "fp32"
        if self.precision == "int8" and device is None:
            device = "cpu"  # dynamic quantisation's kernels (DynamicQuantizeLinear, MatMulInteger) are CPU kernels
        self.providers = choose_providers(bundle, device, available_providers())
        self.session: Any = None
        self.name = "onnxruntime"

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def _activate(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
            options.inter_op_num_threads = 1
        path = self.model_file
        try:
            self.session = ort.InferenceSession(str(path), options, providers=self.providers)
        except _ort_errors("Fail", "InvalidProtobuf", "InvalidGraph", "NoSuchFile", "InvalidArgument",
                           "NotImplemented") as exc:
            raise BundleError(f"ONNX Runtime cannot load {path} ({_first_line(exc)}); the file is damaged or "
                              f"truncated: re-export the bundle") from exc
        self.name = f"onnxruntime-{SHORT.get(self.session.get_providers()[0], 'other')}"
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._run_errors = _ort_errors("Fail", "RuntimeException", "InvalidArgument", "NotImplemented")

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return dict(zip(self._outputs, self.session.run(self._outputs, feed)))
        except self._run_errors as exc:
            first = _first_line(exc)
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feed.items())
            raise BackendError(f"ONNX Runtime failed running {self.model_file} on inputs {shapes} ({first}); the "
                               f"graph is wrong for these shapes: re-export or re-quantise the bundle") from exc

    def _deactivate(self) -> None:
        self.session = None
