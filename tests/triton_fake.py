"""A small fake of ``triton_python_backend_utils`` (Triton's Python-backend module): just what a
``TritonPythonModel`` touches, so the tokenizer ``model.py`` runs in-process.  Only Triton's module is
faked; tokenisation and ONNX Runtime are real."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np

FAKE_PLAN = b"ftrt fake plan"  # what the fake builder serializes: TensorRT's magic tag first, as a real plan


class Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class TritonError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self._message = message

    def message(self):
        return self._message


class InferenceResponse:
    def __init__(self, output_tensors, error=None):
        self.output_tensors, self.error = list(output_tensors), error

    def as_dict(self):
        return {t.name(): t.as_numpy() for t in self.output_tensors}


class InferenceRequest:
    def __init__(self, **arrays):
        self.inputs = {name: Tensor(name, value) for name, value in arrays.items()}


def get_input_tensor_by_name(request, name):
    return request.inputs.get(name)


class Metric:
    def __init__(self, labels):
        self.labels, self.value = labels, 0.0

    def set(self, value):
        self.value = float(value)

    def increment(self, value):
        self.value += float(value)


class MetricFamily:
    GAUGE, COUNTER = "gauge", "counter"
    registry: ClassVar[dict] = {}

    def __init__(self, name, description, kind):
        self.name, self.description, self.kind = name, description, kind
        self.metrics = []
        MetricFamily.registry[name] = self

    def Metric(self, labels):  # noqa: N802 - Triton's spelling
        metric = Metric(labels)
        self.metrics.append(metric)
        return metric


class Logger:
    """``pb_utils.Logger``: the messages are kept as (level, text)."""

    messages: ClassVar[list] = []

    @classmethod
    def log_info(cls, message):
        cls.messages.append(("info", message))

    @classmethod
    def log_warn(cls, message):
        cls.messages.append(("warn", message))

    @classmethod
    def log_error(cls, message):
        cls.messages.append(("error", message))


def fake_module() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    for name, value in dict(Tensor=Tensor, TritonError=TritonError, InferenceResponse=InferenceResponse,
                            get_input_tensor_by_name=get_input_tensor_by_name, MetricFamily=MetricFamily,
                            Logger=Logger).items():
        setattr(module, name, value)
    return module


def load_model_py(path: Path):
    """Import ``model.py`` with the fake installed as ``triton_python_backend_utils``."""
    sys.modules["triton_python_backend_utils"] = fake_module()
    try:
        spec = importlib.util.spec_from_file_location(f"triton_model_{abs(hash(str(path)))}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop("triton_python_backend_utils", None)
    return module


def strings(values) -> np.ndarray:
    """Texts as Triton hands them to a Python model with max_batch_size > 0: bytes objects, [batch, 1]."""
    return np.array([[v.encode("utf-8")] for v in values], dtype=object)


class FakeTensorRT:
    """Just what ``build_plans.py`` and ``build_engine`` touch of the ``tensorrt`` module; records the calls.

    ``refuse_cache``: ``set_timing_cache`` returns False for a non-empty cache blob, as TensorRT does for
    a cache made on another GPU; ``no_cache_back``: ``get_timing_cache()`` returns None.
    """

    __version__ = "10.99-fake"

    def __init__(self, refuse_cache: bool = False, no_cache_back: bool = False):
        self.calls = []
        fake = self

        class Flag:
            STRONGLY_TYPED = 0

        class Network:
            def __init__(self, flags):
                self.flags, self.inputs = flags, []

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, index):
                return types.SimpleNamespace(name=self.inputs[index])

        class Parser:
            def __init__(self, network, logger):
                self.network, self.num_errors = network, 0

            def parse_from_file(self, path):
                import onnx

                fake.calls.append(("parse", path))
                self.network.inputs = [i.name for i in onnx.load(path, load_external_data=False).graph.input]
                return True

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, low, opt, high):
                self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

        class Cache:
            def __init__(self, blob=b""):
                self.blob = blob

            def serialize(self):
                return b"cache"

        class Config:
            def __init__(self):
                self.profiles, self.cache = [], None

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("workspace", size))

            def add_optimization_profile(self, profile):
                self.profiles.append(profile.shapes)

            def create_timing_cache(self, blob):
                fake.calls.append(("create_timing_cache", bytes(blob)))
                return Cache(bytes(blob))

            def set_timing_cache(self, cache, ignore_mismatch):
                if refuse_cache and cache.blob:
                    return False
                self.cache = cache
                return True

            def get_timing_cache(self):
                return None if no_cache_back else self.cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("network", flags))
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build", config.profiles))
                return FAKE_PLAN

        self.module = types.ModuleType("tensorrt")
        self.module.__version__ = self.__version__
        self.module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
        self.module.NetworkDefinitionCreationFlag = Flag
        self.module.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
        self.module.Builder, self.module.OnnxParser = Builder, Parser
        self.module.BuilderFlag = types.SimpleNamespace()  # no TF32 flag to clear
