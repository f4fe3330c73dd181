"""The TensorRT engine builder on CPU: profile parsing and validation before TensorRT, engine names,
bundle checks, and `hashee build-engine` without TensorRT or a GPU (exit 1, one line, no traceback)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

pytest.importorskip("onnx")

from export_helpers import tiny_run  # noqa: E402

from hashee.errors import EngineError, ProfileError  # noqa: E402
from hashee.exporter import export  # noqa: E402
from hashee.exporter.tensorrt_engine import (  # noqa: E402
    Profile,
    build_engine,
    default_profiles,
    engine_file_name,
    parse_profile,
    validate_profiles,
)


def _has_tensorrt_and_gpu() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    run = tiny_run(root / "run", "bert", seed=2)
    export(run, root / "trt", target="tensorrt", progress=False)  # tiny tokenizer: max length 64
    export(run, root / "ort", target="onnxruntime", progress=False)
    return root


def test_parse_profile():
    profile = parse_profile("1x8:32x64:128x128")
    assert profile == Profile((1, 32, 128), (8, 64, 128))
    assert profile.shapes("input_ids", 6) == ((1, 8), (32, 64), (128, 128))
    assert profile.shapes("exit_masks", 6) == ((6, 1, 8), (6, 32, 64), (6, 128, 128))
    assert parse_profile(" 2x4 : 2x4 : 2x4 ").tag == "b2-2-2_s4-4-4"


@pytest.mark.parametrize("text, message", [
    # malformed: parse_profile refuses them
    ("1x8:32x64", "MIN:OPT:MAX"),
    ("1x8:32x64:128x128:1x1", "MIN:OPT:MAX"),
    ("1x8:32:128x128", "not BATCHxSEQ"),
    ("1x8:-2x64:128x128", "not BATCHxSEQ"),
    ("ax8:32x64:128x128", "not BATCHxSEQ"),
    # well-formed but out of range: validate_profiles refuses them
    ("1x8:32x64:128x600", "exceeds the bundle's max length 512"),
    ("0x8:32x64:128x128", "minimum batch must be at least 1"),
    ("1x0:32x64:128x128", "minimum sequence must be at least 1"),
    ("1x8:256x64:128x128", "batch must satisfy min <= opt <= max"),
    ("1x80:32x64:128x128", "sequence must satisfy min <= opt <= max"),
])
def test_bad_profiles_are_refused_with_the_reason(text, message):
    with pytest.raises(ProfileError, match=message):
        validate_profiles([parse_profile(text)], max_length=512)


def test_profile_list_rules():
    with pytest.raises(ProfileError, match="at least one"):
        validate_profiles([], 128)
    with pytest.raises(ProfileError, match="twice"):
        validate_profiles([parse_profile("1x2:4x8:8x8")] * 2, 128)
    assert default_profiles(128) == [Profile((1, 32, 128), (2, 64, 128))]
    assert validate_profiles(default_profiles(64), 64)


def test_engine_file_name_holds_gpu_version_precision_profiles():
    profiles = [parse_profile("1x2:32x64:128x128"), parse_profile("1x2:1x16:1x32")]
    name = engine_file_name("fp16", (9, 0), "11.0.0.7", profiles)
    assert name == "engines/model.fp16.sm90.trt11.0.0.7.b1-32-128_s2-64-128+b1-1-1_s2-16-32.plan"


def test_bundle_checks_come_before_tensorrt(bundles):
    with pytest.raises(EngineError, match="--target tensorrt"):
        build_engine(bundles / "ort", progress=False)
    with pytest.raises(EngineError, match="hashee convert"):
        build_engine(bundles / "trt", precision="fp16", progress=False)
    with pytest.raises(EngineError, match="hashee calibrate"):
        build_engine(bundles / "trt", precision="int8", progress=False)
    with pytest.raises(ProfileError, match="exceeds the bundle's max length 64"):
        build_engine(bundles / "trt", profiles=["1x2:8x32:16x128"], progress=False)
    with pytest.raises(EngineError, match="--workspace"):
        build_engine(bundles / "trt", workspace_mb=0, progress=False)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "hashee.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(_has_tensorrt_and_gpu(), reason="TensorRT and a GPU are present: the GPU tier builds engines")
def test_build_engine_without_tensorrt_or_gpu_exits_1_with_one_line(bundles):
    out = _cli("build-engine", str(bundles / "trt"), "--profile", "1x2:8x32:16x64", "--quiet")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hashee build-engine: error:"), out.stderr
    assert "Traceback" not in out.stderr
    missing = []
    if importlib.util.find_spec("tensorrt") is None:
        missing += ["tensorrt package is not installed", "pip install 'hashee[tensorrt]'"]
    missing.append("no CUDA GPU")
    for text in missing:
        assert text in lines[0], lines[0]
    assert not (bundles / "trt" / "engines").exists()


def test_build_engine_profile_error_on_the_command_line(bundles):
    out = _cli("build-engine", str(bundles / "trt"), "--profile", "4x8:2x8:8x8", "--quiet")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "batch must satisfy min <= opt <= max" in out.stderr


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu(tmp_path):
    """benchmarks/gpu_check.py end to end on the CPU (a smoke test; the GPU machine runs gpu_check.sh)."""
    import json
    import os

    from conftest import REPO_ROOT

    out = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path),
                          "--device", "cpu", "--batch-sizes", "1,4", "--limit", "12", "--repeats", "1"],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "HASHEE_ELUE_DIR": str(tmp_path / "none")})
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [row["batch"] for row in report["torch"]] == [1, 4] and report["data"].endswith("samples/sst2/dev.tsv")
    parity = report["parity"]  # HashEE fp32 against an independent reference, and one that differs from it
    assert parity["masked oracle fp32"]["max_abs_diff_vs_hashee_fp32"] < 1e-4
    assert parity["masked oracle fp32"]["label_agreement_vs_hashee_fp32"] == 1.0
    assert parity["dense fp32"]["max_abs_diff_vs_hashee_fp32"] > 1e-3  # the comparison tells models apart
    assert report["tensorrt"].startswith("skipped")
    assert "| batch | dense fp32 |" in (tmp_path / "gpu_check.md").read_text()
