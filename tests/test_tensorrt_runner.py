"""The TensorRT runner on CPU: which engine of a bundle's manifest runs here and why the others are
refused, profile coverage and batch chunking as pure functions, the precision argument, and
``backend="auto"`` falling back to ONNX Runtime.

Engines here are manifest entries (the keys ``build_engine`` writes) with placeholder plan files, and
the machine facts (GPU compute capability, TensorRT version) are this module's own probes, patched:
nothing here claims to run a plan.  Running real engines is tests/test_tensorrt_gpu.py's."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import replace

import pytest

pytest.importorskip("onnxruntime")

from hashee.cli import main  # noqa: E402
from hashee.errors import BackendError, EngineError, ProfileError  # noqa: E402
from hashee.bundle import read_bundle, update_bundle  # noqa: E402
from hashee.exporter.tensorrt_engine import (  # noqa: E402
    Profile,
    engine_file_name,
    parse_profile,
    validate_profiles,
)
from hashee.runtime import Session, open_bundle  # noqa: E402
from hashee.runtime.runners import tensorrt as trt_runner  # noqa: E402
from hashee.runtime.runners.tensorrt import (  # noqa: E402
    TensorRTRunner,
    choose_engine,
    entry_profiles,
    plan_chunks,
)

CC, VERSION = "9.0", "11.0.0.7"
WIDE = Profile((1, 32, 128), (2, 24, 48))  # the tiny bundles' max length is 48


def _entry(meta: dict, precision: str = "fp32", cc: str = CC, version: str = VERSION,
           shapes: tuple[Profile, ...] = (WIDE,), **changes) -> dict:
    """A manifest entry with the keys :func:`build_engine` writes (``changes`` replace them as they are)."""
    major, minor = (int(x) for x in cc.split("."))
    entry = {"file": engine_file_name(precision, (major, minor), version, list(shapes)), "precision": precision,
             "onnx": "model.onnx", "onnx_sha256": meta["files"]["model.onnx"], "tensorrt_version": version,
             "compute_capability": cc, "gpu": "NVIDIA H200", "profiles": [p.to_meta() for p in shapes],
             "workspace_mb": 4096, "timing_cache": None, "build_seconds": 1.0}
    entry.update(changes)
    return entry


@pytest.fixture
def with_engines(tiny_bundles, tmp_path):
    """``make(*entry_kwargs)``: a copy of the tiny bert bundle listing those engines (placeholder plans;
    one default fp32 engine for this machine when none is given)."""
    counter = iter(range(1000))

    def make(*specs: dict):
        folder = tmp_path / f"bundle{next(counter)}"
        shutil.copytree(tiny_bundles["bert"], folder)
        meta = read_bundle(folder)
        files, entries = {}, []
        for spec in specs or ({},):
            entry = _entry(meta, **spec)
            plan = tmp_path / f"{folder.name}-{len(entries)}.plan"
            plan.write_bytes(b"placeholder, not a TensorRT plan " + entry["file"].encode())
            files[entry["file"]] = plan
            entries.append(entry)
        update_bundle(folder, files, {"engines": entries})
        return open_bundle(folder)

    return make


@pytest.fixture
def here(monkeypatch):
    """This machine, as the runner sees it: one GPU of compute capability 9.0 and TensorRT 11.0.0.7."""
    monkeypatch.setattr(trt_runner, "gpu_compute_capabilities", lambda: [CC])
    monkeypatch.setattr(trt_runner, "tensorrt_version", lambda: VERSION)


# ----------------------------------------------------------------------------------------- which engine
def test_the_engine_built_for_this_gpu_and_tensorrt_is_chosen(with_engines, here):
    bundle = with_engines({"cc": "8.0"}, {"version": "10.13.3.9"}, {"precision": "fp16"})
    runner = TensorRTRunner(bundle)
    assert runner.entry is bundle.engines[2] and runner.precision == "fp16" and runner.name == "tensorrt"
    assert runner.profiles == [WIDE] and runner.plan_file.is_file()
    assert not runner.is_active and runner.input_names == []  # nothing loaded before activation


def test_precision_order_and_the_asked_precision(with_engines, here):
    bundle = with_engines({"precision": "int8"}, {"precision": "fp16"}, {"precision": "fp32"})
    assert TensorRTRunner(bundle).entry["precision"] == "fp32"
    for precision in ("fp32", "fp16", "int8"):
        assert TensorRTRunner(bundle, precision=precision).entry["precision"] == precision
    bundle = with_engines({"precision": "int8"}, {"precision": "fp16"})
    assert TensorRTRunner(bundle).entry["precision"] == "fp16"


def test_within_a_precision_the_widest_profiles_then_the_newest(with_engines, here):
    short = Profile((1, 32, 512), (2, 16, 32))
    narrow = Profile((1, 16, 64), (2, 24, 48))
    bundle = with_engines({"shapes": (short,)}, {"shapes": (narrow,)}, {"shapes": (narrow, short)})
    assert choose_engine(bundle, CC, VERSION) is bundle.engines[2]  # longest sequence, then newest of the ties
    bundle = with_engines({"shapes": (narrow,)}, {"shapes": (WIDE,)}, {"shapes": (short,)})
    assert choose_engine(bundle, CC, VERSION) is bundle.engines[1]  # same length: the larger batch


def test_an_engine_for_another_gpu_is_refused_naming_both_and_the_fix(with_engines, here):
    bundle = with_engines({"cc": "8.0"})
    with pytest.raises(BackendError) as info:
        TensorRTRunner(bundle)
    text = str(info.value)
    assert f"{bundle.engines[0]['file']} (fp32, compute capability 8.0, TensorRT {VERSION})" in text
    assert "built for compute capability 8.0, this GPU is 9.0" in text
    assert f"this machine has compute capability 9.0 and TensorRT {VERSION}" in text
    assert f"hashee build-engine {bundle.path}" in text and "backend='onnxruntime'" in text
    with pytest.raises(BackendError, match="built for compute capability 8.0"):
        Session.load(bundle.path, backend="tensorrt")


@pytest.mark.parametrize("version", ["10.13.3.9", "11.0.1.2", "11.0.0"])
def test_an_engine_for_another_tensorrt_version_is_refused(with_engines, here, version):
    bundle = with_engines({"version": version})
    with pytest.raises(BackendError) as info:
        TensorRTRunner(bundle)
    assert f"built with TensorRT {version}, this machine has TensorRT {VERSION}" in str(info.value)
    assert f"hashee build-engine {bundle.path}" in str(info.value)


def test_an_engine_of_an_onnx_file_that_changed_since_is_refused(with_engines, here):
    bundle = with_engines({"onnx_sha256": "0" * 64})
    with pytest.raises(BackendError, match=r"built from an earlier model\.onnx \(the file has changed since\)"):
        TensorRTRunner(bundle)


@pytest.mark.parametrize("changes, message", [
    ({"profiles": []}, "lists no optimisation profiles"),
    ({"profiles": [{"batch": [1, 32, 16], "sequence": [2, 24, 48]}]}, "batch must be [min, opt, max]"),
    ({"profiles": [{"batch": [1, 32, 128]}]}, "sequence must be [min, opt, max]"),
    ({"precision": "bf16"}, "its precision 'bf16' is none of fp32, fp16, int8"),
])
def test_a_malformed_entry_is_refused_with_the_reason(with_engines, here, changes, message):
    bundle = with_engines(changes)
    with pytest.raises(BackendError) as info:
        TensorRTRunner(bundle)
    assert message in str(info.value)


def test_the_asked_precision_missing_names_what_runs_and_the_build_command(with_engines, here):
    bundle = with_engines({"precision": "fp32"}, {"precision": "int8", "cc": "8.6"})
    with pytest.raises(BackendError) as info:
        TensorRTRunner(bundle, precision="fp16")
    text = str(info.value)
    assert "no fp16 engine" in text and "(none of precision fp16 is listed)" in text
    assert "fp32 engine(s) do run here (load with precision=None)" in text
    assert f"hashee build-engine {bundle.path} --precision fp16" in text
    with pytest.raises(BackendError) as info:
        TensorRTRunner(bundle, precision="int8")
    assert "no int8 engine" in str(info.value) and "built for compute capability 8.6, this GPU is 9.0" in str(info.value)
    assert "--precision int8" in str(info.value)


def test_entry_profiles_read_what_the_builder_writes():
    profiles = [parse_profile("1x2:16x32:64x64"), parse_profile("1x2:1x8:1x16")]
    assert entry_profiles({"profiles": [p.to_meta() for p in profiles]}) == profiles


# ----------------------------------------------------------------------------------------- what is missing
def test_missing_pieces_are_all_named(with_engines, monkeypatch):
    monkeypatch.setattr(trt_runner, "gpu_compute_capabilities", lambda: [CC])
    monkeypatch.setattr(trt_runner, "tensorrt_version", lambda: None)
    bundle = with_engines()
    with pytest.raises(BackendError) as info:
        TensorRTRunner(replace(bundle, meta={**bundle.meta, "engines": []}), "cuda:3")
    text = str(info.value)
    assert "there is no GPU 3 (found 1)" in text and "pip install 'hashee[tensorrt]'" in text
    assert "holds no TensorRT engine" in text and f"hashee build-engine {bundle.path}" in text
    assert text.endswith("Use backend='onnxruntime' (or 'auto')")


# ----------------------------------------------------------------------------------------- precision argument
@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "tensorrt", "precision": "fp8"}, "unknown precision 'fp8'; choose one of fp32, fp16, int8"),
    ({"backend": "auto", "precision": 16}, "unknown precision 16"),
    ({"backend": "onnxruntime", "precision": "fp16"}, "precision='fp16' selects a TensorRT engine"),
    ({"backend": "torch", "precision": "int8"}, "backend 'torch' runs the fp32 model"),
])
def test_bad_precision_arguments(tiny_bundles, kwargs, message):
    with pytest.raises(BackendError) as info:
        Session.load(tiny_bundles["bert"], **kwargs)
    assert message in str(info.value)


def test_fp32_is_what_onnxruntime_runs(tiny_bundles):
    with Session.load(tiny_bundles["bert"], backend="onnxruntime", precision="fp32") as session:
        assert session.backend == "onnxruntime-cpu"


def test_predict_command_takes_precision(tiny_bundles, capsys):
    status = main(["predict", "--quiet", str(tiny_bundles["bert"]), "--backend", "onnxruntime", "--precision",
                   "int8", "a"])
    # int8 on ONNX Runtime is the dynamic int8 file of hashee quantize, which this bundle lacks
    assert status == 1 and f"add it with: hashee quantize {tiny_bundles['bert']}" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- auto and activation
def test_auto_falls_back_when_the_engine_cannot_load_and_says_so(with_engines, here):
    """A runnable-looking engine whose plan cannot load (no CUDA torch here; a placeholder plan on a GPU)."""
    import torch

    bundle = with_engines()
    with pytest.warns(RuntimeWarning, match=r"backend='auto': the TensorRT engine engines/model\.fp32\..*could not "
                                            r"be loaded .*; using ONNX Runtime") as caught:
        session = Session.load(bundle.path)
    with session:
        assert session.backend.startswith("onnxruntime") and len(session.predict(["a fine film ."])) == 1
    # asked for explicitly: the reason is the error, the very one the warning names
    expected = (BackendError, "torch sees no CUDA device") if not torch.cuda.is_available() else \
        (EngineError, "TensorRT")  # a GPU: TensorRT missing, or the placeholder plan refused
    with pytest.raises(expected[0], match=expected[1]) as refused:
        Session.load(bundle.path, backend="tensorrt")
    assert type(refused.value) is expected[0]
    assert str(refused.value) in " ".join(str(w.message) for w in caught)


def test_auto_falls_back_silently_without_a_matching_engine(with_engines, here):
    bundle = with_engines({"cc": "8.0"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Session.load(bundle.path) as session:
            assert session.backend.startswith("onnxruntime")


def test_explicit_tensorrt_without_cuda_torch_names_it(with_engines, here):
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device here")
    with pytest.raises(BackendError, match="torch sees no CUDA device"):
        Session.load(with_engines().path, backend="tensorrt")


# ----------------------------------------------------------------------------------------- shapes
def test_one_chunk_when_a_profile_holds_the_batch():
    assert plan_chunks([WIDE], 10, 20) == [(0, 10, 0)]
    assert plan_chunks([WIDE], 128, 48) == [(0, 128, 0)]
    assert plan_chunks([WIDE], 1, 2) == [(0, 1, 0)]
    assert plan_chunks([WIDE], 0, 20) == []


def test_a_batch_over_the_profile_max_is_cut_into_near_equal_chunks():
    assert plan_chunks([WIDE], 129, 20) == [(0, 65, 0), (65, 129, 0)]
    assert plan_chunks([WIDE], 300, 20) == [(0, 100, 0), (100, 200, 0), (200, 300, 0)]
    low = Profile((4, 8, 8), (2, 8, 16))
    assert plan_chunks([low], 9, 10) == [(0, 5, 0), (5, 9, 0)]  # 8 + 1 would leave a chunk under the minimum


def test_each_chunk_runs_under_the_first_profile_that_holds_it():
    big, single = Profile((1, 16, 64), (2, 32, 48)), Profile((1, 1, 1), (2, 8, 16))
    assert plan_chunks([big, single], 1, 10) == [(0, 1, 0)]
    assert plan_chunks([single, big], 1, 10) == [(0, 1, 0)]
    assert plan_chunks([single, big], 5, 10) == [(0, 5, 1)]
    assert plan_chunks([single, big], 100, 40) == [(0, 50, 1), (50, 100, 1)]
    assert plan_chunks([single, big], 1, 40) == [(0, 1, 1)]


@pytest.mark.parametrize("profiles, batch, sequence, message", [
    ([WIDE], 4, 1, "a sequence length of 1 fits no optimisation profile"),
    ([Profile((1, 8, 8), (2, 8, 16)), Profile((1, 1, 1), (17, 24, 32))], 3, 40,
     "a sequence length of 40 fits no optimisation profile"),
    ([Profile((4, 8, 8), (2, 8, 16))], 2, 10, "a batch of 2 row(s) of 10 tokens fits no optimisation profile"),
])
def test_a_shape_no_profile_holds_names_the_ranges_and_a_profile_that_would(profiles, batch, sequence, message):
    with pytest.raises(ProfileError) as info:
        plan_chunks(profiles, batch, sequence, "bundles/sst2")
    text = str(info.value)
    ranges = ", ".join(f"batch {p.batch[0]}..{p.batch[2]} x sequence {p.sequence[0]}..{p.sequence[2]}"
                       for p in profiles)
    assert message in text and f"({ranges})" in text
    assert "hashee build-engine bundles/sst2 --profile " in text
    suggested = parse_profile(text.split("--profile ")[1].split()[0])
    validate_profiles([suggested], max_length=max(48, sequence))  # the builder would take it ...
    assert plan_chunks([suggested], batch, sequence) == [(0, batch, 0)]  # ... and it holds the shape
    for profile in profiles:  # and everything the engine held before
        assert plan_chunks([suggested], profile.batch[2], profile.sequence[2])
