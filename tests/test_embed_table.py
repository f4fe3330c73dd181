"""``hashee export --embed-exit-table``: the exit table as an initializer, masks computed in-graph."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from export_helpers import tiny_run  # noqa: E402

from hashee.exporter import export, read_bundle, tensorrt_violations  # noqa: E402
from hashee.exporter.embed import embed_exit_table, has_embedded_table  # noqa: E402
from hashee.exporter.validate import ort_session  # noqa: E402
from hashee.runtime import Session  # noqa: E402
from hashee.runtime.batching import exit_masks  # noqa: E402


@pytest.fixture(scope="module")
def bundles(tiny_bundles, tmp_path_factory):
    """family -> (the session's bundle, with exit_masks input; the same run exported with --embed-exit-table)."""
    root = tmp_path_factory.mktemp("embed")
    for family in ("bert", "roberta"):
        export(tiny_bundles["runs"][family], root / family, progress=False, max_length=48, embed_exit_table=True)
    return {family: (tiny_bundles[family], root / family) for family in ("bert", "roberta")}


def _batch(rng, vocab, with_types):
    ids = rng.integers(5, vocab, size=(5, 13))
    ids[:, 0] = 2
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    mask[3, 3:] = 0
    feed = {"input_ids": ids, "attention_mask": mask}
    if with_types:
        types = np.zeros_like(ids)
        types[:, 7:] = 1
        feed["token_type_ids"] = types
    return feed


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_embedded_graph_equals_exit_masks_graph(bundles, family):
    masks_dir, embedded_dir = bundles[family]
    meta = read_bundle(embedded_dir)
    assert meta["onnx"]["exit_table"] == "embedded"
    proto = onnx.load(str(embedded_dir / "model.onnx"))
    assert has_embedded_table(proto)
    # only batch-first inputs, all [batch, sequence]
    for value in proto.graph.input:
        dims = [d.dim_param for d in value.type.tensor_type.shape.dim]
        assert dims == ["batch", "sequence"], (value.name, dims)
    assert {i.name for i in proto.graph.input} == {"input_ids", "attention_mask"} | (
        {"token_type_ids"} if family == "bert" else set())
    table = np.load(masks_dir / "exit_table.npy")
    embedded, masked = ort_session(embedded_dir / "model.onnx"), ort_session(masks_dir / "model.onnx")
    rng = np.random.default_rng(0)
    for _ in range(3):
        feed = _batch(rng, table.shape[0], family == "bert")
        (got,) = embedded.run(["logits"], feed)
        layers = int(meta["backbone"]["num_layers"])
        masks = exit_masks(feed["input_ids"], feed["attention_mask"], table.astype(np.int64), layers)
        (want,) = masked.run(["logits"], {**feed, "exit_masks": masks})
        assert np.max(np.abs(got - want)) <= 1e-5


def test_embedded_bundle_runs_in_the_session(bundles):
    masks_dir, embedded_dir = bundles["bert"]
    texts = ["a fine film .", "dull and slow , but the cast is good", ""]
    with Session.load(embedded_dir, backend="onnxruntime") as a, Session.load(masks_dir, backend="onnxruntime") as b:
        assert a.embedded_table and not b.embedded_table
        np.testing.assert_allclose(a.predict_logits(texts), b.predict_logits(texts), atol=1e-5)
        from hashee.errors import InputError

        ids = np.array([[2, 10, 3]])
        with pytest.raises(InputError, match="embedded"):
            a.run(ids, np.ones_like(ids), exit_masks=np.ones((4, 1, 3), dtype=bool))


def test_embedding_adds_only_tensorrt_ops(bundles):
    masks_dir, _ = bundles["bert"]
    proto = onnx.load(str(masks_dir / "model.onnx"))
    table = np.load(masks_dir / "exit_table.npy")
    embedded = embed_exit_table(proto, table, 4)
    added = [n for n in embedded.graph.node if n.name.startswith("exit_table/")]
    assert {n.op_type for n in added} == {"Gather", "Unsqueeze", "Greater"}
    assert not [p for p in tensorrt_violations(embedded) if "exit_table/" in p]


def test_tensorrt_target_with_embedded_table(tmp_path):
    run = tiny_run(tmp_path / "run", "bert", seed=5)
    export(run, tmp_path / "b", target="tensorrt", embed_exit_table=True, progress=False, max_length=32)
    proto = onnx.load(str(tmp_path / "b" / "model.onnx"))
    assert tensorrt_violations(proto) == []
    assert "exit_masks" not in {i.name for i in proto.graph.input}


def test_embed_refuses_dense(tmp_path):
    from hashee.errors import ExportError

    run = tiny_run(tmp_path / "run", "bert")
    with pytest.raises(ExportError, match="dense"):
        export(run, tmp_path / "b", dense=True, embed_exit_table=True, progress=False)
