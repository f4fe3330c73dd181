"""`hashee export` / `hashee validate` end to end: typed one-line errors, no half-written bundles,
hard-failing validation, whole-file validation, the dense (Optimum) baseline."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from export_helpers import tiny_run  # noqa: E402

from hashee.cli import main  # noqa: E402
from hashee.errors import BundleError, ValidationError  # noqa: E402
from hashee.exporter import export, read_bundle, validate_bundle  # noqa: E402
from hashee.samples import SST2_DEV  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run") / "bert", "bert", seed=5)


@pytest.fixture(scope="module")
def bundle(run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle") / "b"
    export(run, folder, progress=False)
    return folder


def _one_line_error(capsys, status, message):
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1 and "error:" in err[0] and message in err[0], err
    return err[0]


def _leftovers(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


@pytest.mark.parametrize("case, message", [
    ("missing run", "does not exist"),
    ("no exit table", "without an exit table"),
    ("table not in weights", "holds no exit table"),
    ("opset too low", "opset 16 is too low"),
    ("unknown target", "unknown target 'tflite'"),
    ("output not empty", "--overwrite"),
    ("max length too long", "exceeds"),
])
def test_export_user_errors_exit_1_with_one_line(case, message, run, tmp_path, capsys):
    import shutil

    from safetensors.numpy import load_file, save_file

    source, out, extra = run, tmp_path / "out", []
    if case == "missing run":
        source = tmp_path / "nowhere"
    elif case == "no exit table":
        from tiny import tiny_dense

        source = tmp_path / "dense"
        tiny_dense("bert").save_pretrained(str(source))
    elif case == "table not in weights":
        source = tmp_path / "copy"
        shutil.copytree(run, source)
        tensors = load_file(str(source / "model.safetensors"))
        del tensors["exit_table_layers"]
        save_file(tensors, str(source / "model.safetensors"), metadata={"format": "pt"})
    elif case == "opset too low":
        extra = ["--opset", "16"]
    elif case == "unknown target":
        extra = ["--target", "tflite"]
    elif case == "output not empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "max length too long":
        extra = ["--max-length", "100000"]
    status = main(["export", str(source), "-o", str(out), "--quiet", *extra])
    _one_line_error(capsys, status, message)
    if case == "output not empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert _leftovers(out) == []


def test_validation_failure_leaves_no_bundle(run, tmp_path, monkeypatch, capsys):
    """A graph whose padding keys dominate disagrees on padded batches: exit 1, nothing written."""
    import hashee.exporter.graph as graph

    monkeypatch.setattr(graph, "MASK_VALUE", 30000.0)  # padding keys dominate instead of vanishing
    out = tmp_path / "bad"
    with pytest.raises(ValidationError) as excinfo:
        export(run, out, target="tensorrt", progress=False)
    assert "padded batch" in str(excinfo.value) and "logits" in str(excinfo.value)
    assert not out.exists() and _leftovers(out) == []
    status = main(["export", str(run), "-o", str(out), "--target", "tensorrt", "--quiet"])
    _one_line_error(capsys, status, "disagrees with the PyTorch reference")
    assert not out.exists()


def test_overwrite_replaces_a_bundle(run, bundle, tmp_path):
    out = tmp_path / "again"
    export(run, out, progress=False)
    before = (out / "hashee.json").read_text()
    export(run, out, target="tensorrt", overwrite=True, progress=False)
    assert json.loads((out / "hashee.json").read_text())["onnx"]["target"] == "tensorrt"
    assert (out / "hashee.json").read_text() != before and _leftovers(out) == []


def test_validate_command_over_a_data_file(bundle, capsys):
    status = main(["validate", str(bundle), "--data", str(SST2_DEV), "--quiet"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "label agreement with PyTorch: 100.00 %" in out and "(400 examples)" in out
    result = validate_bundle(bundle, SST2_DEV, progress=False)
    assert result.num_examples == 400 and result.label_agreement == 1.0 and result.max_abs_diff <= 1e-4


def test_validate_notices_a_drifted_exit_table(run, bundle, tmp_path):
    """The bundle's masks come from its own table: a different table shows as a difference."""
    import shutil

    copy = tmp_path / "drift"
    shutil.copytree(bundle, copy)
    table = np.load(copy / "exit_table.npy")
    np.save(copy / "exit_table.npy", np.ones_like(table))
    with pytest.raises(BundleError, match="sha256"):
        read_bundle(copy)
    meta = json.loads((copy / "hashee.json").read_text())
    from hashee.bundle import sha256_file

    meta["files"]["exit_table.npy"] = sha256_file(copy / "exit_table.npy")
    (copy / "hashee.json").write_text(json.dumps(meta))
    result = validate_bundle(copy, SST2_DEV, progress=False, raise_on_failure=False)
    assert not result.ok
    with pytest.raises(ValidationError, match="exceeds"):
        validate_bundle(copy, SST2_DEV, progress=False)


def test_bundle_reader_refuses_newer_format_and_corruption(bundle, tmp_path, capsys):
    import shutil

    copy = tmp_path / "newer"
    shutil.copytree(bundle, copy)
    meta = json.loads((copy / "hashee.json").read_text())
    meta["format_version"] = 99
    (copy / "hashee.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="upgrade hashee"):
        read_bundle(copy)
    status = main(["validate", str(copy), "--data", str(SST2_DEV), "--quiet"])
    _one_line_error(capsys, status, "format 99")


def test_dense_baseline_through_optimum(run, tmp_path):
    pytest.importorskip("optimum.exporters.onnx")
    result = export(run, tmp_path / "dense", dense=True, progress=False)
    meta = read_bundle(tmp_path / "dense")
    assert meta["kind"] == "dense" and "exit_table.npy" not in meta["files"]
    assert [i["name"] for i in meta["onnx"]["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert max(d["logits"] for d in result.validation.values()) <= 1e-4
    check = validate_bundle(tmp_path / "dense", SST2_DEV, progress=False)
    assert check.label_agreement == 1.0


def test_export_command_runs_as_a_script(run, tmp_path):
    out = subprocess.run([sys.executable, "-m", "hashee.cli", "export", str(run), "-o", str(tmp_path / "b"),
                          "--target", "tensorrt"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "validating" in out.stderr and "target tensorrt" in out.stdout
    assert read_bundle(tmp_path / "b")["onnx"]["target"] == "tensorrt"
