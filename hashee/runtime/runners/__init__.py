"""Backend runners behind one interface (:class:`~hashee.runtime.runners.base.Runner`) and the choice among them."""

from __future__ import annotations

import warnings
from pathlib import Path

from hashee.errors import BackendError, HasheeError, InputError
from hashee.bundle import Bundle
from hashee.runtime.runners.base import Runner

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")


def check_device(device: object) -> str | None:
    if device is None:
        return None
    text = str(device) if not isinstance(device, str) else device
    if hasattr(device, "type") and not isinstance(device, str):  # a torch.device
        text = f"{device.type}:{device.index}" if getattr(device, "index", None) is not None else device.type
    head, _, index = text.partition(":")
    if head == "cpu" and not index or head == "cuda" and (not index or index.isdigit()):
        return text
    raise BackendError(f"unknown device {device!r}; use None (auto), 'cpu', 'cuda' or 'cuda:N'")


def cuda_index(device: str | None) -> int:
    """The GPU index of a checked device string (``cuda:N`` -> N; ``cuda``, ``cpu`` or None -> 0)."""
    return int(device.split(":", 1)[1]) if device and ":" in device else 0


def check_threads(threads: object) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a positive integer or None (library default), got {threads!r}")
    return threads


def make_runner(bundle: Bundle, backend: str = "auto", device: object = None, threads: object = None,
                reference: str | Path | None = None, precision: str | None = None) -> Runner:
    """The runner for ``backend``; ``auto`` tries a TensorRT engine, then ONNX Runtime (CUDA, else CPU).

    ``precision`` (``fp32``, ``fp16``, ``int8``) picks the TensorRT engine of that precision; ONNX
    Runtime and torch run the fp32 model, so they accept only ``None`` or ``fp32``.  With ``auto``, a
    TensorRT engine is activated here, and any reason it cannot run (no GPU, no tensorrt, no engine
    for this GPU or precision, a plan that does not load) falls back to ONNX Runtime; a matching
    engine that fails to load also warns.
    """
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    device, threads = check_device(device), check_threads(threads)
    from hashee.runtime.runners.tensorrt import check_precision

    precision = check_precision(precision)
    if backend in ("onnxruntime", "torch") and precision not in (None, "fp32"):
        raise BackendError(f"precision={precision!r} selects a TensorRT engine, but backend {backend!r} runs the fp32 "
                           f"model; use backend='tensorrt' (or 'auto'), or precision=None")
    if backend == "torch":
        from hashee.runtime.runners.torch import TorchRunner

        return TorchRunner(bundle, device, threads, reference)
    if backend == "tensorrt" or device != "cpu":
        from hashee.runtime.runners.tensorrt import TensorRTRunner

        if backend == "tensorrt":
            return TensorRTRunner(bundle, device, threads, precision)
        try:
            runner = TensorRTRunner(bundle, device, threads, precision)
        except BackendError:
            runner = None
        if runner is not None:
            try:
                return runner.activate()
            except HasheeError as exc:
                warnings.warn(f"backend='auto': the TensorRT engine {runner.entry['file']} could not be loaded "
                              f"({exc}); using ONNX Runtime", RuntimeWarning, stacklevel=3)
    from hashee.runtime.runners.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(bundle, device, threads)
