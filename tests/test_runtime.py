"""The runtime Session on bundles exported from tiny random models: agreement with the PyTorch reference
(independent tokenizer and model), the torch backend, exit masks, cost-aware batching, output format."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore::hashee.runtime.inputs.TruncationWarning")

from hashee.evaluation import load_run  # noqa: E402
from hashee.exporter.validate import sample_texts  # noqa: E402
from hashee.runtime import Session, TruncationWarning  # noqa: E402
from hashee.runtime.batching import active_profile, exit_masks, pad, plan_batches  # noqa: E402

TEXTS = sample_texts(16) + ["", "a", "UNKNOWNWORD zzz qqq", "the the the the"]
PAIRS = list(zip(TEXTS[:10], TEXTS[10:20]))


@pytest.fixture(scope="module")
def session(tiny_bundles):
    with Session.load(tiny_bundles["bert"], backend="onnxruntime", threads=1) as s:
        yield s


@pytest.fixture(scope="module")
def reference(tiny_bundles):
    return {name: load_run(tiny_bundles["runs"][name], device="cpu")[:2] for name in ("bert", "roberta", "regression")}


def torch_logits(model, tokenizer, inputs, max_length, exit_layers=None):
    """The PyTorch model on the Hugging Face tokenizer's output, one item at a time (no batching effects).

    Lists even for one item: called on a single pair, Hugging Face drops an empty second text, while
    in batch mode (as in training) ('a', '') stays a pair: [CLS] a [SEP] [SEP].
    """
    rows = []
    with torch.no_grad():
        for item in inputs:
            args = ([item[0]], [item[1]]) if isinstance(item, tuple) else ([item],)
            batch = tokenizer(*args, truncation=True, max_length=max_length, return_tensors="pt")
            if model.dense.config.type_vocab_size == 1:  # RoBERTa: one segment type, ids all 0
                batch.pop("token_type_ids", None)
            rows.append(model(**batch).logits.float().numpy()[0])
    return np.stack(rows)


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_predict_matches_the_pytorch_reference(tiny_bundles, reference, name):
    model, tokenizer = reference[name]
    with Session.load(tiny_bundles[name], backend="onnxruntime") as session:
        assert session.backend == "onnxruntime-cpu"
        assert ("token_type_ids" in session.input_names) == (name == "bert")
        for inputs in (TEXTS, PAIRS):
            expected = torch_logits(model, tokenizer, inputs, session.max_length)
            got = session.predict_logits(inputs, batch_size=4)
            assert np.abs(got - expected).max() < 1e-4
            results = session.predict(inputs, batch_size=4)
            probs = softmax(expected.astype(np.float64))
            assert [r["label"] for r in results] == [session.labels[i] for i in probs.argmax(1)]
            assert np.allclose([r["score"] for r in results], probs.max(1), atol=1e-4)
            assert all(set(r) == {"label", "score"} and 0 < r["score"] <= 1 for r in results)


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_tokenizer_gives_the_hugging_face_ids(tiny_bundles, reference, name):
    _, tokenizer = reference[name]
    with Session.load(tiny_bundles[name], backend="onnxruntime") as session:
        long = " ".join(TEXTS)
        for firsts, seconds in ((TEXTS + [long], None), ([a for a, _ in PAIRS] + [long], [b for _, b in PAIRS] + [long])):
            encoded = session.encoder.encode(firsts, seconds)
            args = (firsts, seconds) if seconds else (firsts,)
            hf = tokenizer(*args, truncation=True, max_length=session.max_length)
            assert [list(i) for i in encoded.ids] == hf["input_ids"]
            if "token_type_ids" in hf:
                assert [list(t) for t in encoded.types] == hf["token_type_ids"]
            full = tokenizer(*args)["input_ids"]
            assert encoded.truncated == sum(len(i) > session.max_length for i in full) >= 1
        assert session.encoder.pad_id == tokenizer.pad_token_id


def test_torch_backend_reads_the_bundle_reference(tiny_bundles, session):
    with Session.load(tiny_bundles["bert"], backend="torch", device="cpu") as reference:
        assert reference.backend == "torch-cpu"
        for inputs in (TEXTS, PAIRS):
            assert np.abs(reference.predict_logits(inputs) - session.predict_logits(inputs)).max() < 1e-4


def test_run_with_explicit_exit_masks_matches_pytorch(session, reference):
    model, tokenizer = reference["bert"]
    batch = tokenizer(TEXTS[:8], padding=True, truncation=True, max_length=48, return_tensors="np")
    rng = np.random.default_rng(0)
    exits = rng.integers(1, 5, size=batch["input_ids"].shape)
    masks = exits[None] >= np.arange(1, 5)[:, None, None]
    out = session.run(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], masks)
    with torch.no_grad():
        expected = model(**{k: torch.as_tensor(v) for k, v in batch.items()},
                         exit_layers=torch.as_tensor(exits)).logits.numpy()
    assert np.abs(out["logits"] - expected).max() < 1e-4
    # default masks come from the bundle's table, as the model's own table gives
    default = session.run(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    with torch.no_grad():
        expected = model(**{k: torch.as_tensor(v) for k, v in batch.items()}).logits.numpy()
    assert np.abs(default["logits"] - expected).max() < 1e-4
    empty = session.run(np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64))
    assert empty["logits"].shape == (0, 2)


def test_exit_masks_and_profiles_against_a_plain_loop(session):
    table = session.bundle.exit_table
    rng = np.random.default_rng(1)
    ids = rng.integers(0, table.shape[0], size=(5, 9))
    mask = (np.arange(9)[None] < rng.integers(1, 10, size=5)[:, None]).astype(np.int64)
    masks = exit_masks(ids, mask, table, 4)
    rows = [ids[b, : mask[b].sum()] for b in range(5)]
    profile = active_profile(rows, table, 4)
    for layer in range(4):
        for b in range(5):
            for s in range(9):
                assert masks[layer, b, s] == bool(mask[b, s] and table[ids[b, s]] >= layer + 1)
            assert profile[b, layer] == sum(1 for t in rows[b] if table[t] >= layer + 1)
    padded, padded_mask = pad(rows, np.array([3, 0]), pad_id=7)
    assert padded.shape[1] == max(len(rows[3]), len(rows[0]))
    assert list(padded[0, : len(rows[3])]) == list(rows[3]) and (padded[0, len(rows[3]):] == 7).all()
    assert padded_mask.sum() == len(rows[3]) + len(rows[0])


def test_cost_aware_batching_keeps_input_order_and_cuts_padding(session):
    rng = np.random.default_rng(2)
    words = " ".join(TEXTS).split()
    texts = [" ".join(rng.choice(words, size=int(rng.integers(0, 40)))) for _ in range(100)]
    alone = np.concatenate([session.predict_logits([t]) for t in texts])
    sorted_ = session.predict_logits(texts, batch_size=8, cost_aware=True)
    ordered = session.predict_logits(texts, batch_size=8, cost_aware=False)
    assert np.abs(sorted_ - alone).max() < 1e-5 and np.abs(ordered - alone).max() < 1e-5
    encoded = session.encoder.encode(texts)
    profile = active_profile(encoded.ids, session.bundle.exit_table, 4)

    def slots(plan):  # padded token slots the graph pays for K/V, and query-grid slots per layer
        kv = sum(len(i) * profile[i, 0].max() for i in plan)
        grid = sum(len(i) * profile[i, 1:].max(0).sum() for i in plan)
        return kv, grid

    plan = plan_batches(profile, 8, cost_aware=True)
    assert sorted(np.concatenate(plan).tolist()) == list(range(100))
    (kv_sorted, grid_sorted), (kv_plain, grid_plain) = slots(plan), slots(plan_batches(profile, 8, cost_aware=False))
    assert kv_sorted < 0.8 * kv_plain and grid_sorted < 0.8 * grid_plain


def test_regression_bundle_returns_values(tiny_bundles, reference):
    model, tokenizer = reference["regression"]
    with Session.load(tiny_bundles["regression"]) as session:
        results = session.predict(TEXTS)
        expected = torch_logits(model, tokenizer, TEXTS, session.max_length)[:, 0]
        assert all(set(r) == {"value"} for r in results)
        assert np.allclose([r["value"] for r in results], expected, atol=1e-4)


def test_truncation_warns_with_the_count(session):
    texts = ["word " * 200, "short", "the " * 100]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = session.predict(texts)
    messages = [str(w.message) for w in caught if issubclass(w.category, TruncationWarning)]
    assert len(messages) == 1 and messages[0].startswith("2 of 3 input(s)") and "48 tokens" in messages[0]
    assert len(results) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session.predict(["short"])  # no warning when nothing is cut


def test_auto_backend_takes_onnxruntime_cpu_without_a_gpu(tiny_bundles):
    from hashee.runtime.runners.tensorrt import gpu_compute_capabilities

    if gpu_compute_capabilities():
        pytest.skip("a GPU is present: auto may take TensorRT or CUDA here")
    with Session.load(tiny_bundles["bert"]) as session:
        assert session.backend == "onnxruntime-cpu"


def test_sst2_dev_agrees_with_pytorch(tiny_bundles, reference, session, elue_dir):
    with open(elue_dir / "SST-2" / "dev.tsv", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        texts = [row[0] for _, row in zip(range(300), reader)]
    model, tokenizer = reference["bert"]
    with torch.no_grad():  # padded batches: the reference model's answer does not depend on batching
        expected = np.concatenate([
            model(**tokenizer(texts[i:i + 50], padding=True, truncation=True, max_length=session.max_length,
                              return_tensors="pt")).logits.numpy() for i in range(0, len(texts), 50)])
    got = session.predict_logits(texts, batch_size=32)
    assert np.abs(got - expected).max() < 1e-4
    assert np.bincount(expected.argmax(1), minlength=2).min() >= 60  # labels split: agreement is not vacuous
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_onnxruntime_sessions_never_import_torch(tiny_bundles):
    import subprocess
    import sys

    code = ("import sys\nfrom hashee.runtime import Session\n"
            f"s = Session.load({str(tiny_bundles['bert'])!r}, backend='onnxruntime')\ns.predict(['a', ('b', 'c')][:1])\n"
            "print([m for m in ('torch', 'transformers', 'onnx', 'optimum') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
