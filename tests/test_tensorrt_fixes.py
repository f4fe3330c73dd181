"""TensorRT code paths a CPU can check: timing caches TensorRT refuses or does not give back never lose
the plan, atomic cache writes, a tensorrt package without its libraries, driver lookup, dtype map.

The fake ``tensorrt`` module (tests/triton_fake.py) stands in only for the return values hashee must
handle (``set_timing_cache`` -> False, ``get_timing_cache`` -> None); the real builds run in the GPU tier.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import types

import pytest

pytest.importorskip("onnx")

import triton_fake  # noqa: E402
from export_helpers import tiny_run  # noqa: E402

from conftest import REPO_ROOT  # noqa: E402
from hashee.errors import EngineError  # noqa: E402
from hashee.exporter import tensorrt_engine  # noqa: E402
from hashee.exporter.tensorrt_engine import TimingCacheWarning, build_engine  # noqa: E402
from hashee.runtime.runners import tensorrt_engine as engine_runner  # noqa: E402

OTHER_DEVICE = b"a timing cache written on another GPU"


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory):
    from hashee.exporter import export

    root = tmp_path_factory.mktemp("trt-fixes")
    run = tiny_run(root / "run", "bert", seed=3)
    export(run, root / "bundle", target="tensorrt", progress=False, max_length=32)
    return root / "bundle"


def _fake_gpu(monkeypatch, fake):
    import torch

    fake.module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake GPU")


def _copy(bundle, tmp_path):
    import shutil

    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def test_a_refused_cache_and_none_back_still_write_the_plan(trt_bundle, tmp_path, monkeypatch):
    from hashee.bundle import read_bundle

    bundle = _copy(trt_bundle, tmp_path)
    fake = triton_fake.FakeTensorRT(refuse_cache=True, no_cache_back=True)
    _fake_gpu(monkeypatch, fake)
    cache = tmp_path / "caches" / "timing.cache"
    cache.parent.mkdir()
    cache.write_bytes(OTHER_DEVICE)
    with pytest.warns(TimingCacheWarning) as caught:
        result = build_engine(bundle, profiles=["1x2:2x16:4x32"], timing_cache=cache, progress=False)
    messages = [str(w.message) for w in caught]
    assert any("refused the timing cache" in m for m in messages), messages
    assert any("returned no timing cache" in m for m in messages), messages
    # the build went on with a fresh cache: an empty blob was offered after the refused one
    assert [blob for name, blob in fake.calls if name == "create_timing_cache"] == [OTHER_DEVICE, b""]
    plan = bundle / result.entry["file"]
    assert plan.read_bytes() == triton_fake.FAKE_PLAN
    meta = read_bundle(bundle)  # verifies every sha256, the plan's included
    assert [e["file"] for e in meta["engines"]] == [result.entry["file"]]
    assert cache.read_bytes() == OTHER_DEVICE  # left as it was, not truncated
    assert sorted(p.name for p in cache.parent.iterdir()) == ["timing.cache"]


def test_an_accepted_cache_is_written_back_atomically(trt_bundle, tmp_path, monkeypatch):
    bundle = _copy(trt_bundle, tmp_path)
    fake = triton_fake.FakeTensorRT()
    _fake_gpu(monkeypatch, fake)
    cache = tmp_path / "timing.cache"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", TimingCacheWarning)
        result = build_engine(bundle, profiles=["1x2:2x16:4x32"], timing_cache=cache, progress=False)
    assert (bundle / result.entry["file"]).read_bytes() == triton_fake.FAKE_PLAN
    assert cache.read_bytes() == b"cache"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "timing.cache"]  # no temporary left


class _Config:
    """A builder config whose timing cache cannot be serialized (TensorRT raises from serialize())."""

    class _Cache:
        def serialize(self):
            raise RuntimeError("out of host memory")

    def get_timing_cache(self):
        return self._Cache()


def test_a_cache_that_cannot_serialize_leaves_the_old_file(tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    with pytest.warns(TimingCacheWarning, match="could not serialize"):
        assert tensorrt_engine.save_timing_cache(_Config(), cache) is False
    assert cache.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timing.cache"]


def test_atomic_write_replaces_in_one_step_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "file.bin"
    tensorrt_engine.write_bytes_atomically(target, b"one")
    tensorrt_engine.write_bytes_atomically(target, b"two")
    assert target.read_bytes() == b"two" and sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(tensorrt_engine.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        tensorrt_engine.write_bytes_atomically(target, b"three")
    assert target.read_bytes() == b"two" and sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


# ---------------------------------------------------------------- the Triton build_plans.py template
def _template():
    path = REPO_ROOT / "hashee" / "serve" / "triton_plan_build.py"
    spec = importlib.util.spec_from_file_location("build_plans_template", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_plans_writes_the_plan_when_the_cache_is_refused(tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["b", "s"])],
                              [helper.make_tensor_value_info("logits", TensorProto.INT32, ["b", "s"])])
    (tmp_path / "onnx").mkdir()
    onnx.save(helper.make_model(graph), str(tmp_path / "onnx" / "model.onnx"))
    spec = {"model": "m", "onnx": "onnx/model.onnx", "plan": "1/model.plan", "strongly_typed": True,
            "precision": "fp32", "inputs": ["input_ids"], "max_batch_size": 4,
            "profiles": [{"bucket": 16, "shapes": {"input_ids": [[1, 16], [4, 16], [4, 16]]}}]}
    fake = triton_fake.FakeTensorRT(refuse_cache=True, no_cache_back=True)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(OTHER_DEVICE)
    said = []
    target = _template().build(spec, str(tmp_path), 64, str(cache), said.append)
    assert open(target, "rb").read() == triton_fake.FAKE_PLAN
    assert cache.read_bytes() == OTHER_DEVICE
    assert any("refused the timing cache" in m for m in said) and any("no timing cache" in m for m in said)
    assert not [p for p in (tmp_path / "1").iterdir() if p.name != "model.plan"]


def test_build_plans_without_tensorrt_libraries_exits_with_the_reason(tmp_path, monkeypatch):
    _broken_tensorrt(tmp_path, monkeypatch)
    with pytest.raises(SystemExit, match="cannot import tensorrt.*libnvinfer"):
        _template().import_tensorrt()


# ---------------------------------------------------------------- a tensorrt package without its libraries
def _broken_tensorrt(tmp_path, monkeypatch):
    """A ``tensorrt`` package whose import fails as the bindings do without libnvinfer."""
    package = tmp_path / "site" / "tensorrt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        'raise ImportError("libnvinfer.so.11: cannot open shared object file: No such file or directory")\n')
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_require_tensorrt_turns_missing_libraries_into_an_engine_error(tmp_path, monkeypatch):
    _broken_tensorrt(tmp_path, monkeypatch)
    with pytest.raises(EngineError, match=r"installed but cannot load its libraries \(libnvinfer.so.11"):
        engine_runner.require_tensorrt()
    from hashee.runtime.runners.tensorrt import tensorrt_version

    assert tensorrt_version() is None


def test_gpu_check_skips_tensorrt_and_keeps_its_report(tmp_path, monkeypatch):
    _broken_tensorrt(tmp_path, monkeypatch)
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", REPO_ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    versions = {"torch": "x"}
    ran = []
    entry = gpu_check.tensorrt_report("cuda", versions, ran.append)
    assert entry.startswith("skipped:") and "cannot load its libraries" in entry
    assert ran == [] and versions == {"torch": "x"}
    report = {"device": "d", "model": "m", "data": "x", "num_texts": 1, "gpu_tests": "-", "parity": {},
              "torch": [{"batch": 1, "dense_fp32": 1.0, "hashee_fp32": 2.0, "speedup_fp32": 2.0, "dense_fp16": 1.0,
                         "hashee_fp16": 2.0, "speedup_fp16": 2.0}], "tensorrt": entry}
    text = gpu_check.markdown(report)
    assert "| 1 | 1.0 | 2.0 | 2.00x |" in text and "cannot load its libraries" in text
    json.dumps(report)


# ---------------------------------------------------------------- driver library and dtypes
def test_the_driver_library_comes_before_a_toolkit_stub(monkeypatch):
    from hashee.runtime.runners import tensorrt as runner

    stub = "/usr/local/cuda/lib64/stubs/libcuda.so"
    monkeypatch.setattr(runner.ctypes.util, "find_library", lambda name: stub)
    monkeypatch.setattr(runner.sys, "platform", "linux")
    assert runner._driver_library_names() == ["libcuda.so.1", stub]

    class Library:
        def __init__(self, name):
            if name == "libcuda.so.1":
                raise OSError("not found")
            self.name = name

        def cuInit(self, flags):
            return 100 if self.name == stub else 0  # the stub's cuInit fails (CUDA_ERROR_NO_DEVICE)

    monkeypatch.setattr(runner.ctypes, "CDLL", Library)
    assert runner.load_cuda_driver() is None  # only a stub: no driver, no GPU
    monkeypatch.setattr(runner.ctypes.util, "find_library", lambda name: "libcuda.so")
    assert runner.load_cuda_driver().name == "libcuda.so"


def test_dtype_map_binds_bf16_and_uint8():
    import torch

    names = ("FLOAT", "HALF", "BF16", "INT32", "INT64", "INT8", "UINT8", "BOOL")
    trt = types.SimpleNamespace(DataType=types.SimpleNamespace(**{n: f"DataType.{n}" for n in names}))
    table = engine_runner.torch_dtypes(trt, torch)
    assert table["DataType.BF16"] is torch.bfloat16 and table["DataType.UINT8"] is torch.uint8
    assert table["DataType.HALF"] is torch.float16 and len(table) == len(names)
    older = types.SimpleNamespace(DataType=types.SimpleNamespace(FLOAT="f", HALF="h"))  # a TensorRT without BF16
    assert engine_runner.torch_dtypes(older, torch) == {"f": torch.float32, "h": torch.float16}


def test_a_refused_profile_switch_is_an_engine_error():
    """``set_optimization_profile_async`` returns False (e.g. a profile index the context cannot take)."""
    calls = []

    def switch(index, stream):
        calls.append((index, stream))
        return index == 0

    engine = object.__new__(engine_runner.TensorRTEngine)  # the engine's state without a GPU
    engine.context = types.SimpleNamespace(set_optimization_profile_async=switch)
    engine.stream = types.SimpleNamespace(cuda_stream=7)
    engine._profile = -1
    engine._use_profile(0)
    engine._use_profile(0)  # already there: no second call
    with pytest.raises(EngineError, match="refused to switch the execution context to optimisation profile 1"):
        engine._use_profile(1)
    assert calls == [(0, 7), (1, 7)] and engine._profile == 0
