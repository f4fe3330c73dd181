"""The ONNX exporter on tiny random models of every backbone family: graph contract, custom ops,
the full checker, agreement with the PyTorch reference and the masked oracle, the TensorRT op list."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export_helpers import random_batch, tiny_run  # noqa: E402
from tiny import FAMILIES  # noqa: E402

from hashee.exporter import export, read_bundle, tensorrt_violations  # noqa: E402
from hashee.bundle import sha256_file  # noqa: E402
from hashee.modeling import HashEEForSequenceClassification  # noqa: E402
from hashee.modeling.oracle import masked_oracle  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {family: tiny_run(root / family, family) for family in FAMILIES}


def _feed_and_oracle(model, spec_inputs, seed):
    """Random ids, a padded batch, random exits (:func:`random_batch`); the masked oracle's outputs for them."""
    ids, mask, exits = random_batch(model, seed)
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in spec_inputs:
        kwargs["token_type_ids"] = types
    oracle = masked_oracle(model, exit_layers=exits, **kwargs)
    keep = (exits * mask).numpy()
    feed = {k: v.numpy() for k, v in kwargs.items()}
    feed["exit_masks"] = np.stack([keep >= layer for layer in range(1, model.num_layers + 1)])
    return feed, oracle


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
@pytest.mark.parametrize("family", FAMILIES)
def test_export_contract_and_agreement(runs, family, target, tmp_path):
    result = export(runs[family], tmp_path / "bundle", target=target, token_outputs=True, progress=False)
    bundle = tmp_path / "bundle"
    meta = read_bundle(bundle)
    assert sorted(meta["files"]) == ["exit_table.npy", "model.onnx", "tokenizer/special_tokens_map.json",
                                     "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
                                     "tokenizer/vocab.txt"]
    assert meta["format_version"] == 1 and meta["onnx"]["target"] == target
    # every edge case of the built-in validation passed within 1e-4, logits and token states
    cases = result.validation
    assert len(cases) == 7 and all(set(diffs) == {"logits", "token_states"} for diffs in cases.values())
    assert max(d for diffs in cases.values() for d in diffs.values()) <= 1e-4

    model_proto = onnx.load(str(bundle / "model.onnx"))
    onnx.checker.check_model(model_proto, full_check=True)
    inputs = {i.name: i for i in model_proto.graph.input}
    masks = inputs["exit_masks"].type.tensor_type
    assert masks.elem_type == onnx.TensorProto.BOOL
    assert [d.dim_param for d in masks.shape.dim] == ["num_layers", "batch", "sequence"]
    assert ("token_type_ids" in inputs) == (family in ("bert", "albert", "electra"))
    custom = [n for n in model_proto.graph.node if n.domain == "hashee"]
    assert {n.op_type for n in custom} == {"GatherActive", "ScatterActive"} and len(custom) == 2 * 4
    functions = {(f.domain, f.name): f for f in model_proto.functions}
    assert set(functions) == {("hashee", "GatherActive"), ("hashee", "ScatterActive")}
    assert all(n.domain == "" for f in functions.values() for n in f.node)
    assert onnx.defs.has("GatherActive", "hashee")

    # independent reference: the masked oracle (HF layer modules on every token, keep active rows)
    model = HashEEForSequenceClassification.from_pretrained(str(runs[family])).eval()
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    feed, oracle = _feed_and_oracle(model, inputs, seed=FAMILIES.index(family))  # the same in every process
    logits, states = session.run(["logits", "token_states"], feed)
    np.testing.assert_allclose(logits, oracle.logits.numpy(), atol=1e-4, rtol=0)
    keep = feed["attention_mask"].astype(bool)
    np.testing.assert_allclose(states[keep], oracle.token_states.numpy()[keep], atol=1e-4, rtol=0)

    violations = tensorrt_violations(model_proto)
    if target == "tensorrt":
        assert violations == []
    else:  # the onnxruntime target uses com.microsoft.MultiHeadAttention, which TensorRT cannot parse
        assert violations and all("com.microsoft" in v for v in violations)


@pytest.mark.parametrize("family, num_labels", [("bert", 1), ("distilbert", 3)])
def test_regression_and_multiclass(tmp_path, family, num_labels):
    run = tiny_run(tmp_path / "run", family, num_labels=num_labels, seed=3)
    result = export(run, tmp_path / "bundle", progress=False)
    meta = result.meta
    assert meta["task"]["num_labels"] == num_labels
    assert meta["task"]["problem_type"] == ("regression" if num_labels == 1 else "single_label_classification")
    assert meta["onnx"]["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", num_labels]}]
    assert max(d["logits"] for d in result.validation.values()) <= 1e-4


def test_reexport_is_byte_identical(runs, tmp_path):
    first = export(runs["albert"], tmp_path / "a", progress=False)
    second = export(runs["albert"], tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    assert first.meta["files"] == second.meta["files"]


def test_hashes_cover_every_file(runs, tmp_path):
    export(runs["bert"], tmp_path / "bundle", progress=False)
    meta = json.loads((tmp_path / "bundle" / "hashee.json").read_text())
    for name, digest in meta["files"].items():
        assert sha256_file(tmp_path / "bundle" / name) == digest
    on_disk = {p.relative_to(tmp_path / "bundle").as_posix() for p in (tmp_path / "bundle").rglob("*") if p.is_file()}
    assert on_disk == set(meta["files"]) | {"hashee.json"}


def test_every_token_exits_at_layer_one_and_empty_layers(runs, tmp_path):
    """A table that sends every id to layer 1 leaves layers 2..L with no active token at all."""
    run = tiny_run(tmp_path / "run", "roberta", exit_layers=np.ones(120, dtype=np.int64))
    result = export(run, tmp_path / "bundle", target="tensorrt", token_outputs=True, progress=False)
    assert max(d for diffs in result.validation.values() for d in diffs.values()) <= 1e-4


def test_tensorrt_checker_flags_unsupported_nodes():
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"], name="dynamic_axes"),
        helper.make_node("ScatterND", ["y", "idx", "upd"], ["z"], name="scatter_add", reduction="add"),
        helper.make_node("TopK", ["z", "k"], ["v", "i"], name="topk_unsorted", sorted=0),
        helper.make_node("Hardmax", ["v"], ["w"], name="not_listed"),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT if n in ("x", "upd") else TensorProto.INT64, None)
              for n in ("x", "starts", "ends", "axes", "idx", "upd", "k")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)])
    problems = tensorrt_violations(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    text = "\n".join(problems)
    for name in ("dynamic_axes", "scatter_add", "topk_unsorted", "not_listed"):
        assert name in text


@pytest.mark.slow
def test_real_minilm_exports_and_validates(minilm_path, minilm_tokenizer, tmp_path):
    """The offline all-MiniLM-L6-v2 with a random table (specials at L): both targets, within 1e-4."""
    from hashee import ExitTable

    rng = np.random.default_rng(0)
    layers = rng.integers(1, 7, size=minilm_tokenizer.vocab_size)
    layers[minilm_tokenizer.all_special_ids] = 6
    model = HashEEForSequenceClassification.from_dense(minilm_path, ExitTable(layers, 6), num_labels=2)
    model.save_pretrained(str(tmp_path / "run"))
    minilm_tokenizer.save_pretrained(str(tmp_path / "run"))
    first = export(tmp_path / "run", tmp_path / "trt", target="tensorrt", max_length=128, progress=False)
    assert max(d["logits"] for d in first.validation.values()) <= 1e-4
    assert first.meta["max_length"] == 128 and first.meta["backbone"]["hidden_size"] == 384
