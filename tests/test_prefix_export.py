"""`hashee export --layout prefix` (issue 14): graph contract, agreement, the static shape check, the runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from export_helpers import random_batch, tiny_run  # noqa: E402
from tiny import FAMILIES  # noqa: E402

from hashee.errors import ExportError  # noqa: E402
from hashee.exporter import export, read_bundle, tensorrt_violations, value_dependent_shapes  # noqa: E402
from hashee.exporter.validate import ort_session, sample_texts  # noqa: E402
from hashee.modeling import HashEEForSequenceClassification  # noqa: E402
from hashee.modeling.oracle import masked_oracle  # noqa: E402
from hashee.prefix import mask_names, plan_prefix  # noqa: E402

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix-runs")
    return {family: tiny_run(root / family, family, seed=3) for family in FAMILIES}


def _random_batch(model, seed):
    ids, mask, exits = random_batch(model, seed)
    exits[:, 0] = 1  # [CLS] exits first: after sorting it is not in slot 0
    return ids, mask, exits


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_export_contract_and_agreement(runs, family, target, tmp_path):
    result = export(runs[family], tmp_path / "b", target=target, token_outputs=True, progress=False, layout="prefix")
    meta = read_bundle(tmp_path / "b")
    assert meta["onnx"]["layout"] == "prefix" and len(result.validation) == 7  # every edge case, forced exits too
    names = [s["name"] for s in meta["onnx"]["inputs"]]
    types = ["token_type_ids"] if family in ("bert", "albert", "electra") else []
    assert names == ["input_ids", "attention_mask", "position_ids", *types, *mask_names(4)]
    assert meta["onnx"]["inputs"][-1]["shape"] == ["batch", "width_4"]
    proto = onnx.load(str(tmp_path / "b" / "model.onnx"))
    assert {(f.domain, f.name) for f in proto.functions} == {("hashee", "GatherActive"), ("hashee", "ScatterActive")}
    body_ops = {n.op_type for f in proto.functions for n in f.node}
    assert not body_ops & {"NonZero", "GatherND", "ScatterND"} and {"Slice", "Concat", "Where"} <= body_ops
    assert value_dependent_shapes(proto) == []
    if target == "tensorrt":
        assert tensorrt_violations(proto) == []
    model = HashEEForSequenceClassification.from_pretrained(str(runs[family])).eval()
    ids, mask, exits = _random_batch(model, seed=5)
    kwargs = {"token_type_ids": (torch.arange(11) >= 6).long().expand(4, 11) * mask} if types else {}
    oracle = masked_oracle(model, ids, mask, exit_layers=exits, **kwargs)
    plan = plan_prefix(ids.numpy(), mask.numpy(), exits.numpy(), 4,
                       kwargs["token_type_ids"].numpy() if types else None, bucket=True, max_length=64)
    assert (plan.position_ids[:, 0] != 0).any()
    logits, states = ort_session(tmp_path / "b" / "model.onnx").run(["logits", "token_states"], plan.feed(names))
    np.testing.assert_allclose(plan.restore_rows(logits), oracle.logits.numpy(), atol=1e-4, rtol=0)
    real = mask.bool().numpy()
    np.testing.assert_allclose(states[:4, :11][real], oracle.token_states.numpy()[real], atol=1e-4, rtol=0)


def test_packed_stays_the_default(runs, tmp_path):
    export(runs["bert"], tmp_path / "b", progress=False)
    meta = read_bundle(tmp_path / "b")
    assert meta["onnx"]["layout"] == "packed"
    assert [s["name"] for s in meta["onnx"]["inputs"]][-1] == "exit_masks"


def test_prefix_refuses_embedded_tables_and_dense(runs, tmp_path):
    with pytest.raises(ExportError, match="prefix"):
        export(runs["bert"], tmp_path / "b", progress=False, layout="prefix", embed_exit_table=True)
    with pytest.raises(ExportError, match="layout"):
        export(runs["bert"], tmp_path / "c", progress=False, layout="sorted")


# ------------------------------------------------------------------ the static shape check (CI, both layouts)
@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_static_check_flags_packed_and_passes_prefix(runs, target):
    from hashee.exporter.prefix_graph import build_layout_graph

    model = HashEEForSequenceClassification.from_pretrained(str(runs["bert"])).eval()
    packed, _ = build_layout_graph(model, target, 17, True, "packed")
    problems = value_dependent_shapes(packed)
    assert any("NonZero" in p for p in problems)
    assert any("ConstantOfShape" in p for p in problems)  # the query grid sized by a ReduceMax of the masks
    prefix, _ = build_layout_graph(model, target, 17, True, "prefix")
    assert value_dependent_shapes(prefix) == []


def _graph(nodes, inputs, output):
    from onnx import TensorProto, helper

    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT if n == "x" else TensorProto.INT64, None)
              for n in inputs]
    graph = helper.make_graph(nodes, "g", values, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              initializer=[onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_static_check_follows_shape_provenance():
    from onnx import helper

    # K from the input's shape (Shape -> Gather -> Sub): fine; K from a tensor value: flagged
    shape_k = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Sub", ["s", "one"], ["k"]),
               helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")]
    assert value_dependent_shapes(_graph(shape_k, ["x"], "v")) == []
    value_k = [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk_by_value")]
    assert "topk_by_value" in "".join(value_dependent_shapes(_graph(value_k, ["x", "k"], "v")))
    # a Reshape fed by a reduction of values, and a Shape taken of a NonZero output, are flagged
    reduced = [helper.make_node("ReduceMax", ["n", "one"], ["m"], keepdims=1),
               helper.make_node("Reshape", ["x", "m"], ["y"], name="reshape_by_value")]
    assert "reshape_by_value" in "".join(value_dependent_shapes(_graph(reduced, ["x", "n"], "y")))
    tainted = [helper.make_node("NonZero", ["x"], ["nz"], name="nonzero"), helper.make_node("Shape", ["nz"], ["s"]),
               helper.make_node("Expand", ["x", "s"], ["y"], name="expand_by_nonzero")]
    text = "".join(value_dependent_shapes(_graph(tainted, ["x"], "y")))
    assert "nonzero" in text and "expand_by_nonzero" in text
    assert value_dependent_shapes(_graph([helper.make_node("Reshape", ["x", "one"], ["y"])], ["x"], "y")) == []


# constructed graphs: x float [N, M], n int64 [K].  A shape-deciding tensor m (int64 [1]) and ms (its scalar)
# come from the *values* of n (must be flagged), from the *shape* of x, or from constants (must pass).
SHAPE_OPS = ("Reshape", "Expand", "Slice", "ConstantOfShape", "Range", "Tile", "TopK")
VALUE_FEEDS = ({"x": np.ones((2, 6), np.float32), "n": np.array([2, 0, 0, 0, 0, 0], np.int64)},
               {"x": np.array([[0, 0, 0, 1, 1, 1], [1] * 6], np.float32), "n": np.array([3, 1, 1, 0, 0, 0], np.int64)})


def _probe_model(source, op):
    """A model whose node ``probe`` is ``op``, shaped by m/ms from ``source`` (values, shape, constant)."""
    from onnx import TensorProto, helper, numpy_helper

    const = lambda name, value: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=numpy_helper.from_array(np.array(value, dtype=np.int64), name))
    nodes = [const("zero_axes", [0]), const("minus_one", [-1]), const("one", [1]), const("zero", 0), const("step", 1),
             const("slice_start", [0]), const("slice_axis", [1])]
    if source == "values":
        nodes.append(helper.make_node("ReduceMax", ["n"], ["m"], keepdims=1))
    elif source == "shape":
        nodes.append(helper.make_node("Shape", ["x"], ["m"], start=1, end=2))
    else:
        nodes.append(const("m", [2]))
    nodes.append(helper.make_node("Squeeze", ["m", "zero_axes"], ["ms"]))
    out_type = TensorProto.FLOAT
    if op == "Reshape":
        nodes += [helper.make_node("Concat", ["m", "minus_one"], ["target"], axis=0),
                  helper.make_node("Reshape", ["x", "target"], ["y"], name="probe")]
    elif op == "Expand":
        nodes += [helper.make_node("Shape", ["x"], ["x_shape"]),
                  helper.make_node("Concat", ["m", "x_shape"], ["target"], axis=0),
                  helper.make_node("Expand", ["x", "target"], ["y"], name="probe")]
    elif op == "Slice":
        nodes.append(helper.make_node("Slice", ["x", "slice_start", "m", "slice_axis"], ["y"], name="probe"))
    elif op == "ConstantOfShape":
        nodes.append(helper.make_node("ConstantOfShape", ["m"], ["y"], name="probe"))
    elif op == "Range":
        nodes.append(helper.make_node("Range", ["zero", "ms", "step"], ["y"], name="probe"))
        out_type = TensorProto.INT64
    elif op == "Tile":
        nodes += [helper.make_node("Concat", ["m", "one"], ["repeats"], axis=0),
                  helper.make_node("Tile", ["x", "repeats"], ["y"], name="probe")]
    elif op == "TopK":
        nodes.append(helper.make_node("TopK", ["x", "m"], ["y", "indices"], axis=1, name="probe"))
    elif op == "NonZero":  # of x, or of the shape-derived m
        nodes.append(helper.make_node("NonZero", ["x" if source == "values" else "m"], ["y"], name="probe"))
        out_type = TensorProto.INT64
    elif op == "Compress":  # a condition from n's values, or from the shape-derived m
        condition = "n" if source == "values" else "m"
        nodes += [helper.make_node("Cast", [condition], ["keep"], to=TensorProto.BOOL),
                  helper.make_node("Compress", ["x", "keep"], ["y"], axis=1, name="probe")]
    elif op == "Unique":
        nodes.append(helper.make_node("Unique", ["n" if source == "values" else "m"], ["y"], name="probe"))
        out_type = TensorProto.INT64
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "M"]),
              helper.make_tensor_value_info("n", TensorProto.INT64, ["K"])]
    rank = {"Expand": 3, "ConstantOfShape": 1, "Range": 1, "Unique": 1}.get(op, 2)
    output = helper.make_tensor_value_info("y", out_type, [f"y{i}" for i in range(rank)])
    graph = helper.make_graph(nodes, "probe", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _output_shapes(model):
    """The output's shape in ONNX Runtime for the two feeds of VALUE_FEEDS (same input shapes, other values)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [session.run(["y"], feed)[0].shape for feed in VALUE_FEEDS]


@pytest.mark.parametrize("op", SHAPE_OPS)
@pytest.mark.parametrize("source", ["values", "shape", "constant"])
def test_static_check_on_each_shape_deciding_op(source, op):
    """Flagged exactly when the shape-deciding input comes from tensor values (TopK's K from the input's
    shape is allowed); ONNX Runtime confirms: only then does the output shape move with the values."""
    model = _probe_model(source, op)
    problems = value_dependent_shapes(model)
    first, second = _output_shapes(model)
    if source == "values":
        assert len(problems) == 1 and problems[0].startswith(f"probe (ai.onnx::{op})"), problems
        assert first != second
    else:
        assert problems == [] and first == second


@pytest.mark.parametrize("op", ["NonZero", "Compress", "Unique"])
@pytest.mark.parametrize("source", ["values", "shape"])
def test_static_check_always_flags_value_shaped_ops(source, op):
    """NonZero, Compress and Unique are flagged whatever feeds them, even a shape-derived tensor (TensorRT
    runs them on the device and sizes their output there); fed by values, their output shape moves."""
    model = _probe_model(source, op)
    problems = value_dependent_shapes(model)
    assert any(p.startswith(f"probe (ai.onnx::{op})") for p in problems), problems
    first, second = _output_shapes(model)
    assert (first != second) == (source == "values")


# ------------------------------------------------------------------ the runtime feeds it
@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix-bundles")
    out = {}
    for family, labels in (("bert", 3), ("roberta", 2)):
        run = tiny_run(root / f"run-{family}", family, num_labels=labels, seed=7)
        for layout in ("packed", "prefix"):
            out[family, layout] = root / f"{family}-{layout}"
            export(run, out[family, layout], progress=False, layout=layout, token_outputs=True)
    return out


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_session_prefix_equals_packed(bundles, family):
    from hashee.runtime import Session
    from hashee.runtime.inputs import TruncationWarning

    packed = Session.load(bundles[family, "packed"], backend="onnxruntime")
    prefix = Session.load(bundles[family, "prefix"], backend="onnxruntime")
    assert prefix.prefix and not packed.prefix and not prefix.embedded_table
    texts = sample_texts(16)
    for batch_size in (1, 5, 16):
        np.testing.assert_allclose(prefix.predict_logits(texts, batch_size), packed.predict_logits(texts, batch_size),
                                   atol=1e-5, rtol=0)
    pairs = list(zip(texts[:6], texts[6:12]))  # some pairs fill the max length and are truncated
    with pytest.warns(TruncationWarning):
        cut = prefix.predict_logits(pairs)
    with pytest.warns(TruncationWarning):
        np.testing.assert_allclose(cut, packed.predict_logits(pairs), atol=1e-5, rtol=0)
    assert [p["label"] for p in prefix.predict(texts)] == [p["label"] for p in packed.predict(texts)]
    # low level, with explicit (monotone) exit masks and token outputs in the original order
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 120, (3, 9))
    mask = np.ones_like(ids)
    mask[2, 4:] = 0
    exits = rng.integers(1, 5, ids.shape)
    masks = exits[None] >= np.arange(1, 5)[:, None, None]
    a, b = prefix.run(ids, mask, exit_masks=masks), packed.run(ids, mask, exit_masks=masks)
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-5, rtol=0)
    real = mask.astype(bool)
    np.testing.assert_allclose(a["token_states"][real], b["token_states"][real], atol=1e-5, rtol=0)


def test_cli_export_layout_prefix(runs, tmp_path, capsys):
    from hashee.cli import main

    assert main(["export", str(runs["distilbert"]), "-o", str(tmp_path / "b"), "--layout", "prefix", "--quiet"]) == 0
    assert read_bundle(tmp_path / "b")["onnx"]["layout"] == "prefix"
    assert main(["export", str(runs["bert"]), "-o", str(tmp_path / "c"), "--layout", "prefix",
                 "--embed-exit-table", "--quiet"]) == 1
    assert "prefix" in capsys.readouterr().err


def test_bench_compares_prefix_beside_packed(tiny_bundles, tmp_path):
    pytest.importorskip("matplotlib")
    import json

    from hashee.cli import main
    from hashee.samples import SST2_DEV

    prefix = tmp_path / "prefix"
    export(tiny_bundles["runs"]["bert"], prefix, layout="prefix", progress=False, max_length=48)
    out = tmp_path / "bench"
    assert main(["bench", str(tiny_bundles["bert"]), "--data", str(SST2_DEV), "--batch-sizes", "1,4", "--repeats", "1",
                 "--limit", "8", "--backends", "torch,onnxruntime", "--compare", str(prefix), "--quiet",
                 "-o", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    by_key = {r["key"]: r for r in result["backends"]}
    assert set(by_key) == {"torch-dense", "onnxruntime-dense", "torch-hashee", "onnxruntime-hashee",
                           "onnxruntime-hashee:prefix"}
    record = by_key["onnxruntime-hashee:prefix"]
    assert record["status"] == "ok", record.get("reason")
    assert record["parity"]["reference"] == "torch-hashee" and record["parity"]["max_abs_diff"] < 1e-4
    assert record["results"]["4"]["batches"] == 2
    assert "HashEE (prefix)" in (out / "results.md").read_text()
