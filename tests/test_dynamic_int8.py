"""Dynamic INT8 for ONNX Runtime CPU (``hashee quantize``): every backbone family, dense, HashEE and
embedded-table bundles; the Session runs it with labels and logits close to fp32; the manifest lists it
with its sha256; disagreement is refused with nothing written; nothing on the exit-mask/index path is
quantised (a walk over the graph).

The tiny random models get their classifier bias centred on the check sentences so that both labels
are predicted (a constant prediction would agree trivially).  With many sentences near the decision
boundary and hidden size 32, int8 moves a few percent of labels (94-98 % agreement measured); the
real MiniLM keeps >= 99.5 %, so the tiny bundles are quantised with ``min_agreement=TINY_MIN_AGREEMENT``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from export_helpers import tiny_run  # noqa: E402
from tiny import FAMILIES  # noqa: E402

from hashee.calibration import dynamic_int8  # noqa: E402
from hashee.calibration.dynamic_int8 import DYNAMIC_INT8_FILE, MANIFEST_KEY, quantize_bundle  # noqa: E402
from hashee.calibration.fp16 import inline_functions, mask_logic_nodes, mask_logic_tensors  # noqa: E402
from hashee.cli import main  # noqa: E402
from hashee.errors import PrecisionError, ValidationError  # noqa: E402
from hashee.exporter import export, read_bundle  # noqa: E402
from hashee.bundle import sha256_file  # noqa: E402
from hashee.exporter.validate import sample_texts  # noqa: E402
from hashee.modeling import HashEEForSequenceClassification  # noqa: E402
from hashee.runtime import Session  # noqa: E402

TINY_MIN_AGREEMENT = 0.9
MAX_LENGTH = 48
QUANT_OPS = ("DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger", "QAttention", "DynamicQuantizeMatMul")


def centred_run(folder: Path, family: str, seed: int = 7) -> Path:
    """A tiny run whose classifier bias puts the decision boundary at the median sentence of the SST-2 sample."""
    from transformers import AutoTokenizer

    run = tiny_run(folder, family, seed=seed)
    model = HashEEForSequenceClassification.from_pretrained(str(run)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(run))
    encoded = tokenizer(sample_texts(400), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == logits.shape[1]][-1]
        head.bias[1] -= float(torch.median(logits[:, 1] - logits[:, 0]))
    model.save_pretrained(str(run))
    return run


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """``made(family, kind)``: a quantised bundle (kind hashee, dense, embedded or prefix), built once per module."""
    root = tmp_path_factory.mktemp("int8dyn")
    cache: dict = {}

    def get(family: str, kind: str = "hashee") -> Path:
        if (family, kind) not in cache:
            run = cache.get(family) or centred_run(root / f"run-{family}", family)
            cache[family] = run
            bundle = root / f"{kind}-{family}"
            export(run, bundle, progress=False, max_length=MAX_LENGTH, dense=kind == "dense",
                   embed_exit_table=kind == "embedded", layout="prefix" if kind == "prefix" else "packed")
            quantize_bundle(bundle, min_agreement=TINY_MIN_AGREEMENT, progress=False)
            cache[(family, kind)] = bundle
        return cache[(family, kind)]
    return get


def _compare(bundle: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    texts = [t for t in texts if len(t.split()) < 30]  # nothing truncated at the max length of 48
    with Session.load(bundle, backend="onnxruntime") as fp32, \
            Session.load(bundle, backend="onnxruntime", precision="int8") as int8:
        assert (fp32.precision, int8.precision) == ("fp32", "int8")
        assert int8.backend == "onnxruntime-cpu" and int8.runner.model_file.name == DYNAMIC_INT8_FILE
        return fp32.predict_logits(texts), int8.predict_logits(texts)


def _check_close(ref: np.ndarray, out: np.ndarray, vary: bool = True) -> None:
    labels = ref.argmax(-1)
    if vary:
        assert 0.2 <= labels.mean() <= 0.8, "the fixture's predictions must vary"
    assert (out.argmax(-1) == labels).mean() >= TINY_MIN_AGREEMENT
    diff = np.abs(out - ref)
    spread = np.std(ref[:, 1] - ref[:, 0])
    assert 0 < diff.max() <= 0.1 * max(1.0, np.abs(ref).max())  # quantised (not fp32 again), but close
    assert diff.mean() <= 0.5 * spread  # well inside the variation between sentences


# ----------------------------------------------------------------------------------------- every family
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_quantises_and_the_session_runs_it(made, family):
    bundle = made(family)
    meta = read_bundle(bundle)  # verifies every sha256, the int8 file's included
    entry = meta["precisions"][MANIFEST_KEY]
    assert entry["file"] == DYNAMIC_INT8_FILE and meta["files"][DYNAMIC_INT8_FILE] == sha256_file(bundle / DYNAMIC_INT8_FILE)
    assert entry["op_types"] == ["MatMul"] and entry["per_channel"] and entry["functions_inlined"]
    assert entry["quantized_ops"]["MatMulInteger"] == entry["quantized_nodes"] > 0
    assert entry["validation"]["label_agreement"] >= TINY_MIN_AGREEMENT and entry["validation"]["num_examples"] > 400
    assert set(entry["validation"]["cases"]) >= {"real text", "batch of 1", "only special tokens",
                                                 "every token exits at layer 1", "random exit layers"}
    ref, out = _compare(bundle, sample_texts(200))
    _check_close(ref, out)


def test_dense_bundle_is_fused_then_quantised(made):
    bundle = made("bert", "dense")
    entry = read_bundle(bundle)["precisions"][MANIFEST_KEY]
    assert entry["fused_before_quantization"]["Attention"] == 4  # ONNX Runtime's O2 fusions survive
    assert entry["quantized_ops"]["QAttention"] == 4 and "Attention" in entry["op_types"]
    model = onnx.load(str(bundle / DYNAMIC_INT8_FILE))
    ops = {n.op_type for n in model.graph.node}
    assert {"QAttention", "SkipLayerNormalization", "EmbedLayerNormalization", "MatMulInteger"} <= ops
    assert "Attention" not in ops
    ref, out = _compare(bundle, sample_texts(200))
    _check_close(ref, out)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "bert"])
def test_dense_bundles_of_every_family(made, family):
    """The fixtures are centred on the HashEE logits, so dense predictions need not vary here (bert's do, above)."""
    bundle = made(family, "dense")
    entry = read_bundle(bundle)["precisions"][MANIFEST_KEY]
    assert entry["fused_before_quantization"]["Attention"] >= 3 and entry["quantized_ops"]["QAttention"] >= 3
    ref, out = _compare(bundle, sample_texts(64))
    _check_close(ref, out, vary=False)


def test_embedded_table_bundle(made):
    bundle = made("bert", "embedded")
    ref, out = _compare(bundle, sample_texts(200))
    _check_close(ref, out)
    model = onnx.load(str(bundle / DYNAMIC_INT8_FILE))
    assert "exit_masks" not in {i.name for i in model.graph.input}
    hashee = made("bert")  # the same weights with masks as an input: the same int8 logits
    with Session.load(bundle, precision="int8", backend="onnxruntime") as a, \
            Session.load(hashee, precision="int8", backend="onnxruntime") as b:
        np.testing.assert_allclose(a.predict_logits(sample_texts(32)), b.predict_logits(sample_texts(32)), atol=1e-4)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_prefix_layout_bundle(made, family):
    """The prefix layout's widths W_l are distinct run-time dimensions: the int8 file must not equate them
    (ONNX Runtime would reuse one buffer for tensors of different widths and fail on real batches)."""
    bundle = made(family, "prefix")
    model = onnx.load(str(bundle / DYNAMIC_INT8_FILE))
    assert {f"exit_mask_{layer}" for layer in (1, 2, 3)} <= {i.name for i in model.graph.input}
    texts = [t for t in sample_texts(200) if len(t.split()) < 30]
    ref, out = _compare(bundle, texts)
    _check_close(ref, out)
    with Session.load(bundle, backend="onnxruntime", precision="int8") as int8:  # other batch shapes, same rows
        _check_close(ref, int8.predict_logits(texts, batch_size=7))


# ----------------------------------------------------------------------------------------- placement
@pytest.mark.parametrize("family, kind", [("bert", "hashee"), ("roberta", "hashee"), ("bert", "embedded")])
def test_int8_never_touches_the_exit_mask_and_index_path(made, family, kind):
    bundle = made(family, kind)
    fp32 = inline_functions(onnx.load(str(bundle / "model.onnx")))
    for i, node in enumerate(fp32.graph.node):
        node.name = node.name or f"node_{i}"
    mask_tensors = mask_logic_tensors(fp32.graph)  # exit masks, counts, slots, indices, additive attention mask
    assert {"attention_mask", "input_ids"} <= mask_tensors and len(mask_tensors) > 30
    weights = {i.name for i in fp32.graph.initializer}
    weight_matmuls = {n.name for n in fp32.graph.node if n.op_type == "MatMul" and n.input[1] in weights}
    head = weight_matmuls & dynamic_int8.head_nodes(fp32.graph)
    assert len(head) == 2  # pooler and classifier: kept fp32

    model = onnx.load(str(bundle / DYNAMIC_INT8_FILE))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    quantised = [n for n in model.graph.node if n.op_type in QUANT_OPS]
    assert not [n for n in quantised if n.op_type == "QuantizeLinear"]  # dynamic: no static Q/DQ at all
    integer = [n for n in quantised if n.op_type == "MatMulInteger"]
    assert len(integer) == len(weight_matmuls) - len(head) == 4 * 6  # q, k, v, attention output, FFN in/out
    float_matmuls = {n.name: n for n in model.graph.node if n.op_type == "MatMul"}
    assert all(name in float_matmuls and inits[float_matmuls[name].input[1]].data_type == onnx.TensorProto.FLOAT
               for name in head)
    for node in quantised:
        if node.op_type == "DynamicQuantizeLinear":  # reads a float hidden state, never a mask/index tensor
            assert node.input[0] not in mask_tensors, node.name
            assert types.get(node.input[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT, node.name
        elif node.op_type == "MatMulInteger":  # A: a run-time quantised hidden state; B: an int8 weight
            assert producers[node.input[0]].op_type == "DynamicQuantizeLinear", node.name
            assert inits[node.input[1]].data_type == onnx.TensorProto.INT8
            assert not any(name in mask_tensors for name in node.input if name), node.name
    # the mask/index logic of the fp32 graph is all there, node for node, in fp32
    int8_nodes = {n.name: n for n in model.graph.node}
    for name in mask_logic_nodes(fp32.graph):
        node = next(n for n in fp32.graph.node if n.name == name)
        assert name in int8_nodes and int8_nodes[name].op_type == node.op_type, name
        assert list(int8_nodes[name].input) == list(node.input) and list(int8_nodes[name].output) == list(node.output)
    assert {n.op_type for n in model.graph.node} >= {"NonZero", "GatherND", "ScatterND"}


# ----------------------------------------------------------------------------------------- refusals
def _snapshot(bundle: Path) -> dict:
    return {p.relative_to(bundle).as_posix(): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}


def test_disagreement_below_the_threshold_is_refused_with_nothing_written(made, tmp_path, monkeypatch, capsys):
    source = made("bert")
    bundle = tmp_path / "b"
    export(Path(read_bundle(source)["source"]["run_dir"]), bundle, progress=False, max_length=MAX_LENGTH)
    before = _snapshot(bundle)
    # the real quantisation agrees on ~96 % of the sentences: a threshold above it refuses
    status = main(["quantize", str(bundle), "--quiet", "--min-agreement", "0.999"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and len(err.splitlines()) == 1
    assert "predicts the fp32 graph's label on only" in err and "nothing was written" in err
    assert _snapshot(bundle) == before and sorted(p.name for p in tmp_path.iterdir()) == ["b"]

    real = dynamic_int8.quantize_graph

    def flipped(model, output, *args):  # a planted disagreement: the int8 graph's logits negated
        info = real(model, output, *args)
        quantised = onnx.load(str(output))
        for node in quantised.graph.node:
            node.output[:] = ["logits/raw" if name == "logits" else name for name in node.output]
        quantised.graph.node.append(onnx.helper.make_node("Neg", ["logits/raw"], ["logits"], name="planted"))
        onnx.save(quantised, str(output))
        return info

    monkeypatch.setattr(dynamic_int8, "quantize_graph", flipped)
    with pytest.raises(ValidationError, match=r"label on only \d+\.\d % of \d+ check sentences \(needs 99\.5 %\)"):
        quantize_bundle(bundle, progress=False)
    assert _snapshot(bundle) == before and sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_a_precision_the_bundle_lacks_names_the_command(made, tmp_path, capsys):
    bundle = tmp_path / "plain"
    export(Path(read_bundle(made("bert"))["source"]["run_dir"]), bundle, progress=False, max_length=MAX_LENGTH)
    with pytest.raises(PrecisionError, match=f"holds no dynamic int8 model for ONNX Runtime; add it with: hashee "
                                             f"quantize {bundle}"):
        Session.load(bundle, backend="onnxruntime", precision="int8")
    status = main(["predict", str(bundle), "--quiet", "--backend", "onnxruntime", "--precision", "int8", "a film"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and len(err.splitlines()) == 1 and f"hashee quantize {bundle}" in err


def test_predict_command_runs_int8(made, capsys):
    bundle = made("bert")
    assert main(["predict", str(bundle), "--quiet", "--backend", "onnxruntime", "--precision", "int8",
                 "a fine film .", "dull and slow ."]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    with Session.load(bundle, backend="onnxruntime", precision="int8") as session:
        expected = session.predict(["a fine film .", "dull and slow ."])
    assert [line.split("\t")[:2] for line in lines] == [[e["label"], f"{e['score']:.4f}"] for e in expected]


def test_requantising_replaces_the_file_and_keeps_the_manifest_coherent(made):
    bundle = made("distilbert")
    first = read_bundle(bundle)
    meta = quantize_bundle(bundle, per_channel=False, min_agreement=TINY_MIN_AGREEMENT, progress=False).entry
    again = read_bundle(bundle)
    assert meta["per_channel"] is False and again["precisions"][MANIFEST_KEY]["weights"].endswith("per tensor")
    assert again["files"]["model.onnx"] == first["files"]["model.onnx"]
    assert again["files"][DYNAMIC_INT8_FILE] == sha256_file(bundle / DYNAMIC_INT8_FILE)
    assert json.loads((bundle / "hashee.json").read_text())["files"] == {k: v for k, v in again["files"].items()}


# ----------------------------------------------------------------------------------------- bench
def test_bench_shows_dense_and_hashee_in_fp32_and_int8_side_by_side(made, tmp_path):
    pytest.importorskip("matplotlib")
    from hashee.bench.driver import BackendSpec, precision_refusal, run_bench
    from hashee.samples import SST2_DEV

    hashee, dense = made("bert"), made("bert", "dense")
    result = run_bench(hashee, str(SST2_DEV), tmp_path / "out", backends=["onnxruntime"], batch_sizes=[1, 4],
                       dense=dense, repeats=2, limit=12, precisions=["fp32", "int8"], progress=False)
    by_key = {r["key"]: r for r in result["backends"]}
    keys = ("onnxruntime-dense", "onnxruntime-dense-int8", "onnxruntime-hashee", "onnxruntime-hashee-int8")
    assert set(by_key) == set(keys) and result["precisions"] == ["fp32", "int8"]
    for key in keys:
        assert by_key[key]["status"] == "ok", by_key[key]["reason"]
        assert by_key[key]["device"] == "onnxruntime-cpu"
    for key in keys[1::2]:  # int8 against the same model's fp32 rows: close, but not the fp32 file again
        par = by_key[key]["parity_fp32"]
        assert par["reference"] == key.removesuffix("-int8") and 0 < par["max_abs_diff"] < 0.2
    for size in ("1", "4"):
        over = result["speedups"][size]["over_dense_fp32"]
        base = by_key["onnxruntime-dense"]["results"][size]["samples_per_s"]
        assert set(over) == set(keys[1:])
        for key in keys[1:]:
            assert over[key] == pytest.approx(by_key[key]["results"][size]["samples_per_s"] / base)
        assert result["speedups"][size]["onnxruntime_hashee_int8_over_dense_int8"] == pytest.approx(
            over["onnxruntime-hashee-int8"] / over["onnxruntime-dense-int8"])
    text = (tmp_path / "out" / "results.md").read_text()
    assert "## ONNX Runtime: fp32 and dynamic int8, dense and HashEE (x over dense fp32)" in text
    for row in ("| dense fp32 |", "| dense int8 |", "| HashEE fp32 |", "| HashEE int8 |"):
        assert row in text

    plain = tmp_path / "plain"
    export(Path(read_bundle(hashee)["source"]["run_dir"]), plain, progress=False, max_length=MAX_LENGTH)
    reason = precision_refusal(BackendSpec("onnxruntime", "hashee", plain, precision="int8"))
    assert reason is not None and f"hashee quantize {plain}" in reason
    assert precision_refusal(BackendSpec("onnxruntime", "hashee", plain)) is None


def test_auto_takes_the_dynamic_int8_file_on_a_cpu_and_batchmates_move_it_only_slightly(made):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a GPU is present: auto may take TensorRT or CUDA here")
    bundle = made("bert")
    texts = [t for t in sample_texts(64) if len(t.split()) < 30]
    with Session.load(bundle, precision="int8") as session:  # backend="auto"
        assert session.backend == "onnxruntime-cpu" and session.precision == "int8"
        batched, alone = session.predict_logits(texts, batch_size=32), session.predict_logits(texts, batch_size=1)
    # activations are quantised per tensor at run time, so the scale depends on the batch: not bit-equal as
    # fp32 is, but within the int8-vs-fp32 tolerance
    assert 0 < np.abs(batched - alone).max() <= 0.1 * max(1.0, np.abs(alone).max())
    assert (batched.argmax(-1) == alone.argmax(-1)).mean() >= TINY_MIN_AGREEMENT


def test_bench_compares_a_prefix_bundle_in_fp32_and_int8(made, tmp_path):
    """``--compare`` bundles run at every precision too; their int8 rows are checked against their own fp32."""
    pytest.importorskip("matplotlib")
    from hashee.bench.driver import run_bench
    from hashee.samples import SST2_DEV

    hashee, dense, prefix = made("bert"), made("bert", "dense"), made("bert", "prefix")
    result = run_bench(hashee, str(SST2_DEV), tmp_path / "out", backends=["onnxruntime"], batch_sizes=[1, 4],
                       dense=dense, repeats=1, limit=12, precisions=["fp32", "int8"], progress=False,
                       compare=[prefix])
    by_key = {r["key"]: r for r in result["backends"]}
    for key in ("onnxruntime-hashee:prefix", "onnxruntime-hashee-int8:prefix"):
        assert by_key[key]["status"] == "ok", by_key[key].get("reason")
    par = by_key["onnxruntime-hashee-int8:prefix"]["parity_fp32"]
    assert par["reference"] == "onnxruntime-hashee:prefix" and 0 < par["max_abs_diff"] < 0.2
    text = (tmp_path / "out" / "results.md").read_text()
    assert "| HashEE (prefix) fp32 |" in text and "| HashEE (prefix) int8 |" in text
