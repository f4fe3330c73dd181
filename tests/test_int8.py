"""INT8 Q/DQ calibration: placement (every weight MatMul quantised, nothing on the mask/index path),
the TensorRT op list, saved ranges reused, agreement with fp32 and PyTorch, user errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import REPO_ROOT  # noqa: E402
from export_helpers import tiny_run  # noqa: E402

from hashee.calibration.feeds import BundleFeeder, read_texts  # noqa: E402
from hashee.calibration.fp16 import inline_functions, mask_logic_tensors  # noqa: E402
from hashee.calibration.int8 import INT8_FILE, RANGES_FILE, calibrate_bundle, compare_files  # noqa: E402
from hashee.cli import main  # noqa: E402
from hashee.errors import CalibrationError  # noqa: E402
from hashee.exporter import export, read_bundle, tensorrt_violations  # noqa: E402
from hashee.bundle import sha256_file  # noqa: E402
from hashee.exporter.validate import ort_session, sample_texts  # noqa: E402
from hashee.modeling import HashEEForSequenceClassification  # noqa: E402
from hashee.samples import SST2_DEV, SST2_TRAIN  # noqa: E402

INDEX_INPUTS = {"GatherND": (1,), "ScatterND": (1,), "Gather": (1,), "GatherElements": (1,), "NonZero": (0,),
                "CumSum": (0, 1), "Range": (0, 1, 2), "Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,)}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    run = tiny_run(root / "run", "bert", seed=11, balanced=True)  # labels split: agreement is not vacuous
    bundle = root / "bundle"
    export(run, bundle, target="tensorrt", progress=False)
    status = main(["calibrate", str(bundle), "--data", str(SST2_TRAIN), "--samples", "48", "--quiet"])
    assert status == 0
    return run, bundle


def test_qdq_placement(calibrated):
    _, bundle = calibrated
    fp32 = inline_functions(onnx.load(str(bundle / "model.onnx")))
    weights = {i.name for i in fp32.graph.initializer}
    weight_matmuls = {n.name for n in fp32.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights}
    mask_outputs = mask_logic_tensors(fp32.graph)  # exit masks, counts, slots, indices, additive mask
    assert {'exit_masks', 'attention_mask', 'input_ids'} <= mask_outputs and len(mask_outputs) > 50
    assert len(weight_matmuls) == 4 * 6 + 2  # q, k, v, attention output, FFN in/out per layer; pooler, classifier

    model = onnx.load(str(bundle / INT8_FILE))
    onnx.checker.check_model(model, full_check=True)
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(onnx.shape_inference.infer_shapes(model).graph.value_info) + list(model.graph.input)}
    types.update({name: init.data_type for name, init in inits.items()})

    def arr(name):
        return onnx.numpy_helper.to_array(inits[name])

    nodes = {n.name: n for n in model.graph.node}
    for name in weight_matmuls:  # every weight: int8 initializer -> DequantizeLinear, per output channel, zero point 0
        node = nodes[name]
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear", name
        assert inits[dq.input[0]].data_type == onnx.TensorProto.INT8
        columns = inits[dq.input[0]].dims[1]
        assert arr(dq.input[1]).shape == (columns,) and {a.name: a.i for a in dq.attribute}.get("axis") == 1
        assert not arr(dq.input[2]).any()
        act = producers[node.input[0]]  # the activation: float -> Q -> DQ, per tensor, symmetric
        assert act.op_type == "DequantizeLinear" and producers[act.input[0]].op_type == "QuantizeLinear"
        assert arr(act.input[1]).shape == () and not arr(act.input[2]).any()
    quantized_readers = set()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.name  # never an int64/bool tensor
            assert node.input[0] not in mask_outputs
        if node.op_type == "DequantizeLinear":
            readers = [r for r in model.graph.node if node.output[0] in r.input]
            assert readers and all(r.op_type in ("MatMul", "Gemm") for r in readers), node.name
            quantized_readers.update(r.name for r in readers)
        for position in INDEX_INPUTS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position] in producers:
                assert producers[node.input[position]].op_type not in ("QuantizeLinear", "DequantizeLinear")
    assert quantized_readers == weight_matmuls  # attention score/context MatMuls stay float
    assert tensorrt_violations(model) == []


def test_ranges_saved_and_reused(calibrated):
    _, bundle = calibrated
    meta = read_bundle(bundle)
    entry = meta["precisions"]["int8"]
    assert entry["file"] == INT8_FILE and entry["quantized_nodes"] == 26
    assert entry["calibration"]["file"] == RANGES_FILE and entry["calibration"]["samples"] == 48
    assert entry["calibration"]["model_sha256"] == meta["files"]["model.onnx"]
    assert meta["files"][RANGES_FILE] == sha256_file(bundle / RANGES_FILE)
    before = meta["files"][INT8_FILE]
    again = calibrate_bundle(bundle, SST2_TRAIN, samples=48, progress=False)
    assert again.reused_ranges and read_bundle(bundle)["files"][INT8_FILE] == before
    other = calibrate_bundle(bundle, SST2_TRAIN, method="percentile", samples=16, progress=False)
    assert not other.reused_ranges and read_bundle(bundle)["precisions"]["int8"]["calibration"]["method"] == "percentile"
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle", "run"]  # no scratch left behind


def test_int8_agrees_with_fp32_and_pytorch(calibrated):
    run, bundle = calibrated
    feeder = BundleFeeder(bundle)
    check = compare_files(bundle / "model.onnx", bundle / INT8_FILE, feeder, read_texts(SST2_DEV, feeder.meta, 96))
    assert check.label_agreement >= 0.95 and check.num_examples == 96
    assert set(check.samples_per_s) == {"fp32", "int8"}
    model = HashEEForSequenceClassification.from_pretrained(str(run)).eval()
    feed = feeder.feed(sample_texts(16))
    (logits,) = ort_session(bundle / INT8_FILE).run(["logits"], feed)
    with torch.no_grad():
        reference = model(**{k: torch.as_tensor(v) for k, v in feed.items() if k != "exit_masks"}).logits.numpy()
    assert np.max(np.abs(logits - reference)) <= 0.1 * max(1.0, np.abs(reference).max())
    assert 4 <= np.bincount(reference.argmax(-1), minlength=2).min()  # both labels among the 16 sentences
    assert (logits.argmax(-1) == reference.argmax(-1)).mean() >= 0.8


def test_calibrate_user_errors(calibrated, tmp_path, capsys):
    _, bundle = calibrated
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        calibrate_bundle(bundle, SST2_DEV, method="kl")
    for args, message in ((["--samples", "0"], "--samples must be"), ([], "does not exist")):
        target = str(tmp_path / "nothing") if message == "does not exist" else str(bundle)
        assert main(["calibrate", target, "--data", str(SST2_DEV), "--quiet", *args]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def _sst2_run() -> Path:
    path = Path(os.environ.get("HASHEE_SST2_RUN", REPO_ROOT / "runs" / "sst2-hashee"))
    if not (path / "config.json").is_file():
        pytest.skip(f"no trained MiniLM HashEE SST-2 run at {path} (set HASHEE_SST2_RUN to one)")
    return path


@pytest.mark.slow
def test_minilm_int8_within_one_point_of_fp32(elue_dir, tmp_path):
    """The trained MiniLM run: INT8 accuracy on the whole SST-2 dev set within 1 point of fp32 (ORT CPU).

    (A 300-sentence slice is too small for a 1-point claim: one point is 3 sentences; seen -1.3 there.)"""
    bundle = tmp_path / "bundle"
    export(_sst2_run(), bundle, target="tensorrt", max_length=128, progress=False)
    result = calibrate_bundle(bundle, elue_dir / "SST-2" / "train.tsv", samples=256, eval_samples=100_000,
                              eval_data=elue_dir / "SST-2" / "dev.tsv", progress=False)
    check = result.entry["evaluation"]
    print(result.format())
    assert check["num_examples"] > 1000
    assert check["accuracy"] >= check["accuracy_fp32"] - 0.01
