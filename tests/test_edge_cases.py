"""Edge cases a reviewer of token-level early exit expects: a lone [CLS], a row of padding, inputs of
exactly the max length (every family), ALBERT's hidden groups, multi-label heads, non-monotone exit
masks fed to the graph, regression through ``hashee infer`` and the Triton tokenizer, and the training
recipe's defaults."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export_helpers import tiny_run  # noqa: E402
from tiny import FAMILIES, tiny_dense  # noqa: E402

from hashee.errors import BackboneError, InputError  # noqa: E402
from hashee.evaluation import load_run  # noqa: E402
from hashee.exit_table import ExitTable  # noqa: E402
from hashee.exporter import export  # noqa: E402
from hashee.exporter.validate import sample_texts  # noqa: E402
from hashee.modeling import HashEEForSequenceClassification  # noqa: E402
from hashee.modeling.oracle import masked_oracle  # noqa: E402
from hashee.runtime import Session  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::hashee.runtime.inputs.TruncationWarning")
LONG = " ".join(sample_texts(16)) * 3  # longer than every bundle's max length


@pytest.fixture(scope="module")
def references(tiny_bundles):
    return {name: load_run(tiny_bundles["runs"][name], device="cpu")[:2] for name in ("bert", "roberta")}


def _torch_inputs(model, ids, mask):
    kwargs = {"input_ids": torch.as_tensor(ids), "attention_mask": torch.as_tensor(mask)}
    if model.family.uses_token_type_ids:
        kwargs["token_type_ids"] = torch.zeros_like(kwargs["input_ids"])
    return kwargs


# ---------------------------------------------------------------------------------------- a lone [CLS]
@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_a_sequence_of_only_cls(tiny_bundles, references, name):
    """Length 1: the [CLS] token alone, through PyTorch (packed and oracle) and ONNX Runtime."""
    model, tokenizer = references[name]
    ids, mask = np.array([[tokenizer.cls_token_id]]), np.ones((1, 1), np.int64)
    kwargs = _torch_inputs(model, ids, mask)
    with torch.no_grad():
        packed = model(**kwargs).logits.numpy()
    oracle = masked_oracle(model, **kwargs).logits.numpy()
    np.testing.assert_allclose(packed, oracle, atol=1e-5, rtol=0)
    with Session.load(tiny_bundles[name], backend="onnxruntime") as session:
        types = np.zeros_like(ids) if "token_type_ids" in session.input_names else None
        got = session.run(ids, mask, types)["logits"]
    np.testing.assert_allclose(got, packed, atol=1e-4, rtol=0)
    assert np.isfinite(got).all()


# ---------------------------------------------------------------------------------------- a row of padding
@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_a_row_of_only_padding_changes_nothing_else(tiny_bundles, references, name):
    """A batch row whose mask is all 0: finite logits for it, the other rows exactly as without it."""
    model, tokenizer = references[name]
    batch = tokenizer(sample_texts(3), padding=True, return_tensors="np")
    ids = np.concatenate([batch["input_ids"], np.full((1, batch["input_ids"].shape[1]), tokenizer.pad_token_id)])
    mask = np.concatenate([batch["attention_mask"], np.zeros((1, ids.shape[1]), np.int64)])
    with torch.no_grad():
        alone = model(**_torch_inputs(model, ids[:3], mask[:3])).logits.numpy()
        with_padding = model(**_torch_inputs(model, ids, mask)).logits.numpy()
    assert np.isfinite(with_padding).all()
    np.testing.assert_allclose(with_padding[:3], alone, atol=1e-5, rtol=0)
    # the graph itself (Session.run refuses such a row, naming the fix)
    from hashee.runtime.batching import exit_masks
    from hashee.runtime.bundle import open_bundle

    bundle = open_bundle(tiny_bundles[name])
    feed = {"input_ids": ids, "attention_mask": mask,
            "exit_masks": exit_masks(ids, mask, bundle.exit_table, bundle.num_layers)}
    if "token_type_ids" in [spec["name"] for spec in bundle.meta["onnx"]["inputs"]]:
        feed["token_type_ids"] = np.zeros_like(ids)
    graph = ort.InferenceSession(str(bundle.model_file), providers=["CPUExecutionProvider"])
    (got,) = graph.run(["logits"], feed)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[:3], alone, atol=1e-4, rtol=0)
    with Session.load(tiny_bundles[name], backend="onnxruntime") as session:
        with pytest.raises(InputError, match="row 3 of attention_mask starts with padding"):
            session.run(ids, mask, feed.get("token_type_ids"))


# ---------------------------------------------------------------------------------------- exactly max length
@pytest.mark.parametrize("family", FAMILIES)
def test_an_input_of_exactly_the_max_length(family, tmp_path):
    """The longest input the bundle takes runs and matches PyTorch (RoBERTa: positions start at pad + 1)."""
    run, bundle = tiny_run(tmp_path / "run", family, seed=4), tmp_path / "bundle"
    export(run, bundle, progress=False)  # the default max length: the largest the model allows
    model, tokenizer = load_run(run, device="cpu")[:2]
    positions = model.dense.config.max_position_embeddings
    with Session.load(bundle, backend="onnxruntime") as session:
        expected_max = positions - (model.dense.config.pad_token_id + 1 if family == "roberta" else 0)
        assert session.max_length == expected_max
        assert len(session.encoder.encode([LONG]).ids[0]) == session.max_length
        got = session.predict_logits([LONG, "a"])
    batch = tokenizer([LONG], truncation=True, max_length=expected_max, return_tensors="pt")
    assert batch["input_ids"].shape[1] == expected_max
    if not model.family.uses_token_type_ids:
        batch.pop("token_type_ids", None)
    with torch.no_grad():
        want = model(**batch).logits.numpy()
    np.testing.assert_allclose(got[:1], want, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------- ALBERT groups
def test_albert_with_two_hidden_groups(tmp_path):
    """Layers 1-2 share group 0's weights, layers 3-4 group 1's: packed = oracle = ONNX, and = HF dense at L."""
    run = tiny_run(tmp_path / "run", "albert", seed=6, num_hidden_groups=2)
    model = HashEEForSequenceClassification.from_pretrained(str(run)).eval()
    groups = model.dense.albert.encoder.albert_layer_groups
    assert len(groups) == 2 and not torch.equal(groups[0].albert_layers[0].ffn.weight,
                                                groups[1].albert_layers[0].ffn.weight)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 120, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    exits = torch.randint(1, 5, ids.shape, generator=gen)
    with torch.no_grad():
        packed = model(ids, attention_mask=mask, exit_layers=exits).logits
        dense = model.dense(input_ids=ids, attention_mask=mask).logits
        full = model(ids, attention_mask=mask, exit_layers=torch.full_like(ids, 4)).logits
    oracle = masked_oracle(model, ids, mask, exit_layers=exits).logits
    torch.testing.assert_close(packed, oracle, atol=1e-5, rtol=0)
    torch.testing.assert_close(full, dense, atol=1e-5, rtol=0)
    assert (packed - full).abs().max() > 1e-3  # the exits matter
    result = export(run, tmp_path / "bundle", progress=False)
    assert max(d["logits"] for d in result.validation.values()) <= 1e-4
    session = ort.InferenceSession(str(tmp_path / "bundle" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": np.zeros((3, 9), np.int64),
            "exit_masks": np.stack([(exits * mask).numpy() >= layer for layer in range(1, 5)])}
    np.testing.assert_allclose(session.run(["logits"], feed)[0], oracle.numpy(), atol=1e-4, rtol=0)


def test_albert_with_inner_groups_is_refused():
    dense = tiny_dense("albert", inner_group_num=2)
    with pytest.raises(BackboneError, match="inner_group_num=2 is not supported"):
        HashEEForSequenceClassification.from_dense(dense, ExitTable(np.full(120, 4), 4))


# ---------------------------------------------------------------------------------------- multi-label
def test_multi_label_bce_sigmoid_scores_and_every_label_above_threshold(tmp_path):
    run = tiny_run(tmp_path / "run", "bert", num_labels=3, seed=8, balanced=True,
                   problem_type="multi_label_classification")
    model, tokenizer = load_run(run, device="cpu")[:2]
    texts = sample_texts(16)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    targets = torch.tensor(np.random.default_rng(0).integers(0, 2, (16, 3)), dtype=torch.float32)
    with torch.no_grad():
        out = model(**batch, labels=targets)
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets))
    probs = torch.sigmoid(out.logits).numpy()
    result = export(run, tmp_path / "bundle", progress=False)
    assert result.meta["task"]["problem_type"] == "multi_label_classification"
    with Session.load(tmp_path / "bundle", backend="onnxruntime") as session:
        names = session.labels
        predictions = session.predict(texts)
    for p, prediction in zip(probs, predictions):
        assert prediction["labels"] == [names[i] for i in range(3) if p[i] >= 0.5]
        assert prediction["label"] == names[int(p.argmax())]
        assert prediction["score"] == pytest.approx(float(p.max()), abs=1e-4)  # a sigmoid, not a softmax
    counts = [len(p["labels"]) for p in predictions]
    assert max(counts) >= 2 and len(set(counts)) >= 2, counts  # several labels at once, and not always as many


# ---------------------------------------------------------------------------------------- non-monotone masks
def test_non_monotone_exit_masks_are_taken_layer_by_layer(tiny_bundles, references):
    """The graph's documented behaviour: layer l computes exactly the tokens row l-1 marks, monotone or not."""
    model, tokenizer = references["bert"]
    batch = tokenizer(sample_texts(4), padding=True, return_tensors="pt")
    keep = batch["attention_mask"].bool()
    rng = np.random.default_rng(5)
    masks = rng.random((4, *keep.shape)) < 0.5
    masks[1] = ~masks[0]  # tokens skip layer 2 and come back in layer 3, others do the opposite
    assert not (masks[1:] <= masks[:-1]).all()  # not monotone
    family, dense = model.family, model.dense
    with torch.no_grad():
        hidden = family.embed(dense, batch["input_ids"], batch["token_type_ids"])
        for index in range(4):
            updated = family.call_hf_layer(dense, index, hidden, keep.long())
            active = (torch.as_tensor(masks[index]) & keep)[..., None]
            hidden = torch.where(active, updated, hidden)
        want = family.head(dense, hidden[:, :1]).numpy()
    feed = {k: v.numpy() for k, v in batch.items()}
    graph = ort.InferenceSession(str(tiny_bundles["bert"] / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = graph.run(["logits"], {**feed, "exit_masks": masks})
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    with Session.load(tiny_bundles["bert"], backend="onnxruntime") as session:
        monotone = session.run(feed["input_ids"], feed["attention_mask"], feed["token_type_ids"])["logits"]
        # the Session (the user-facing API) refuses what the raw graph takes literally
        with pytest.raises(InputError, match="exit_masks are not monotone"):
            session.run(feed["input_ids"], feed["attention_mask"], feed["token_type_ids"], masks)
    assert np.abs(got - monotone).max() > 1e-3  # the masks were not ignored


# ---------------------------------------------------------------------------------------- regression
def test_regression_through_hashee_infer(tiny_bundles, tmp_path):
    from hashee.cli import main

    texts = sample_texts(16) + ["", "a"]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    assert main(["infer", str(tiny_bundles["regression"]), str(source), str(tmp_path / "out.jsonl"), "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    with Session.load(tiny_bundles["regression"], backend="onnxruntime") as session:
        want = [r["value"] for r in session.predict(texts)]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(len(texts))]
    assert all("value" in r and "label" not in r for r in rows)
    np.testing.assert_allclose([r["value"] for r in rows], want, atol=1e-5)
    assert np.std(want) > 1e-3  # values that differ between inputs


def test_regression_through_the_triton_tokenizer(tiny_bundles, tmp_path):
    pytest.importorskip("tritonclient", reason="tritonclient is not installed (pip install 'hashee[serve]')")
    import triton_fake  # noqa: F401 - installs the fake triton_python_backend_utils
    from google.protobuf import json_format
    from triton_fake import InferenceRequest, load_model_py, strings

    from hashee.serve.triton import export_triton
    from hashee.serve.triton_check import check_repository, parse_config

    repo = tmp_path / "repo"
    export_triton(tiny_bundles["regression"], repo, buckets=[16, 48], max_batch_size=4)
    assert check_repository(repo) == []
    model_config = parse_config(repo / "hashee_model" / "config.pbtxt")
    assert [list(o.dims) for o in model_config.output] == [[1]]
    folder = repo / "hashee_tokenizer"
    tokenizer = load_model_py(folder / "1" / "model.py").TritonPythonModel()
    config = json_format.MessageToDict(parse_config(folder / "config.pbtxt"), preserving_proto_field_name=True)
    tokenizer.initialize({"model_config": json.dumps(config), "model_repository": str(folder),
                          "model_version": "1", "model_name": "hashee_tokenizer"})
    graph = ort.InferenceSession(str(repo / "hashee_model" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    texts = sample_texts(6) + [""]
    got = []
    for text in texts:
        (response,) = tokenizer.execute([InferenceRequest(TEXT=strings([text]))])
        assert response.error is None
        got.append(float(graph.run(["logits"], response.as_dict())[0][0, 0]))
    with Session.load(tiny_bundles["regression"], backend="onnxruntime") as session:
        want = [r["value"] for r in session.predict(texts)]
    np.testing.assert_allclose(got, want, atol=1e-4)


# ---------------------------------------------------------------------------------------- the training recipe
RECIPE = {"learning_rate": 5e-5, "batch_size": 32, "epochs": 3.0, "warmup_ratio": 0.1, "weight_decay": 0.01}


def test_training_recipe_defaults(tmp_path):
    """The seed's recipe (Table 8) is the default of ``train``, of ``hashee train`` and of the Trainer it makes."""
    from types import SimpleNamespace

    from export_helpers import tiny_tokenizer

    from hashee.cli import build_parser
    from hashee.training import _make_trainer, train

    defaults = {k: v.default for k, v in inspect.signature(train).parameters.items()}
    assert {k: defaults[k] for k in RECIPE} == RECIPE
    args = build_parser().parse_args(["train", "-o", str(tmp_path / "run")])
    assert (args.lr, args.batch_size, args.epochs, args.warmup_ratio, args.weight_decay) == tuple(RECIPE.values())
    model = tiny_dense("bert")
    tokenizer = tiny_tokenizer(tmp_path / "tok", 120, 0)
    recipe = {**RECIPE, "seed": 42, "max_steps": None, "max_length": 128}
    task = SimpleNamespace(regression=False, num_labels=2)
    trainer = _make_trainer(model, tokenizer, [{"input_ids": [2, 3], "labels": 0}] * 64, None, task,
                            tmp_path / "out", recipe, progress=False)
    a = trainer.args
    assert (a.learning_rate, a.per_device_train_batch_size, a.num_train_epochs, a.warmup_ratio, a.weight_decay) == \
        tuple(RECIPE.values())
    assert getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type) == "linear"
    assert "adamw" in str(getattr(a.optim, "value", a.optim)).lower()


# ---------------------------------------------------------------------------------------- the serving core
def test_import_hashee_runtime_loads_only_numpy():
    """``import hashee.runtime`` pulls in no third-party package but numpy (backends load on first use)."""
    import subprocess
    import sys

    code = ("import sys\nimport hashee.runtime\n"
            "names = {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - {'hashee', 'numpy'}\n"
            "print(sorted(n for n in names if not n.startswith('_')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
