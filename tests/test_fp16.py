"""FP16 bundles: float16 weights, fp32 IO and mask logic, the checker, agreement with fp32 and PyTorch,
the manifest and its sha256s, the TensorRT op list."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxconverter_common")

from export_helpers import tiny_run  # noqa: E402

from hashee.calibration.feeds import BundleFeeder  # noqa: E402
from hashee.calibration.fp16 import FP16_FILE, add_fp16  # noqa: E402
from hashee.cli import main  # noqa: E402
from hashee.exporter import export, read_bundle, tensorrt_violations  # noqa: E402
from hashee.bundle import sha256_file  # noqa: E402
from hashee.exporter.validate import ort_session, sample_texts  # noqa: E402
from hashee.modeling import HashEEForSequenceClassification  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp16runs")
    # balanced heads: their labels split over real sentences, so label agreement is not vacuous
    return {family: tiny_run(root / family, family, seed=7, balanced=True) for family in ("bert", "roberta")}


@pytest.mark.parametrize("family, target", [("bert", "tensorrt"), ("roberta", "onnxruntime")])
def test_export_fp16_bundle(runs, family, target, tmp_path):
    bundle = tmp_path / "b"
    result = export(runs[family], bundle, target=target, precision="fp16", progress=False)
    meta = read_bundle(bundle)  # verifies every sha256, the fp16 file's included
    assert meta == {**result.meta, "path": str(bundle)}
    assert FP16_FILE in meta["files"] and meta["onnx"]["precision"] == "fp32"
    entry = meta["precisions"]["fp16"]
    assert entry["file"] == FP16_FILE and entry["conversion"]["functions_inlined"]
    assert entry["validation"]["label_agreement"] == 1.0

    model = onnx.load(str(bundle / FP16_FILE))
    onnx.checker.check_model(model, full_check=True)
    io = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    fp32 = onnx.load(str(bundle / "model.onnx"))
    assert io == {v.name: v.type.tensor_type.elem_type for v in list(fp32.graph.input) + list(fp32.graph.output)}
    weights = {i.name: i.data_type for i in model.graph.initializer}
    norms = ("LayerNormalization", "SkipLayerNormalization")
    norm_inputs = {name for node in model.graph.node if node.op_type in norms for name in node.input}
    big = [i for i in model.graph.initializer if np.prod(i.dims) >= 32]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big if i.name not in norm_inputs)
    assert all(weights[n] == onnx.TensorProto.FLOAT for n in weights if n in norm_inputs or "LayerNorm" in n)
    # LayerNorm, Softmax, reductions and the NonZero of the activity mask compute in fp32
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for node in model.graph.node:
        if node.op_type in norms + ("Softmax", "ReduceSum", "ReduceMax", "NonZero", "CumSum"):
            assert types.get(node.input[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT, node.name
    if target == "tensorrt":
        assert tensorrt_violations(model) == []
    assert not model.functions  # made from an inlined copy; the fp32 file keeps the hashee functions
    assert {f.name for f in fp32.functions} == {"GatherActive", "ScatterActive"}

    # independent reference: the PyTorch model on real text
    torch_model = HashEEForSequenceClassification.from_pretrained(str(runs[family])).eval()
    feeder = BundleFeeder(bundle)
    feed = feeder.feed(sample_texts(16))
    (logits,) = ort_session(bundle / FP16_FILE).run(["logits"], feed)
    with torch.no_grad():
        ids = {k: torch.as_tensor(v) for k, v in feed.items() if k != "exit_masks"}
        reference = torch_model(**ids).logits.numpy()
    assert np.max(np.abs(logits - reference)) <= 2e-2 * max(1.0, np.abs(reference).max())
    assert 4 <= np.bincount(reference.argmax(-1), minlength=2).min()  # both labels among the 16 sentences
    assert (logits.argmax(-1) == reference.argmax(-1)).mean() >= 0.9


def test_convert_adds_fp16_to_an_existing_bundle(runs, tmp_path, capsys):
    bundle = tmp_path / "b"
    export(runs["bert"], bundle, target="tensorrt", progress=False)
    before = json.loads((bundle / "hashee.json").read_text())
    assert main(["convert", str(bundle)]) == 0
    assert "label agreement 100.0 %" in capsys.readouterr().out
    meta = read_bundle(bundle)
    assert meta["files"]["model.onnx"] == before["files"]["model.onnx"]
    assert meta["files"][FP16_FILE] == sha256_file(bundle / FP16_FILE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no scratch folders left behind
    # the 100 % above is not vacuous: on real text the fp32 graph predicts both labels, and fp16 follows
    feed = BundleFeeder(bundle).feed(sample_texts(16))
    (fp32,) = ort_session(bundle / "model.onnx").run(["logits"], feed)
    (fp16,) = ort_session(bundle / FP16_FILE).run(["logits"], feed)
    assert 4 <= np.bincount(fp32.argmax(-1), minlength=2).min()
    assert np.abs(fp16 - fp32).max() <= 2e-2 * max(1.0, np.abs(fp32).max())
    assert (fp16.argmax(-1) == fp32.argmax(-1)).mean() >= 0.9
    again = add_fp16(bundle)  # replacing it keeps the manifest coherent
    assert again["files"] == meta["files"]


def test_fp16_refuses_a_dense_bundle_and_int8_export(runs, tmp_path, capsys):
    status = main(["export", str(runs["bert"]), "-o", str(tmp_path / "x"), "--precision", "fp16", "--dense",
                   "--quiet"])
    assert status == 1 and "dense" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
