"""The torch backend's prefix modes (issue 14): eager prefix, the cost model's dense form, the CUDA-graph
cache (LRU bound on CPU; capture/replay parity on a GPU), and TensorRT profiles of the prefix layout."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from hashee.errors import BackendError  # noqa: E402
from hashee.exporter.tensorrt_engine import Profile, engine_file_name, mask_layer  # noqa: E402
from hashee.exporter.validate import sample_texts  # noqa: E402
from hashee.prefix import CostModel  # noqa: E402
from hashee.runtime import Session, open_bundle  # noqa: E402
from hashee.runtime.runners.cuda_graphs import GraphCache  # noqa: E402
from hashee.runtime.runners.torch import TorchRunner  # noqa: E402


def _session(bundle_dir, runner=TorchRunner, **kwargs):
    bundle = open_bundle(bundle_dir)
    return Session(bundle, runner(bundle, **kwargs))


class ShapeRecorder(TorchRunner):
    """The torch runner, noting the shape ``(B, S, W_1..W_L)`` of the plan it makes for every batch
    (its own :meth:`TorchRunner.plan`: the key a CUDA graph is captured under in ``graphs`` mode)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shapes = []

    def infer(self, feed):
        self.activate()
        self.shapes.append(self.plan(feed).shape)
        return super().infer(feed)


# sample_texts(40) in batches of 8: five batches whose bucketed shapes all differ (checked on CPU below)
GRAPH_TEXTS, GRAPH_BATCH, GRAPH_SHAPES = 40, 8, 5


def test_torch_prefix_mode_equals_packed_and_onnxruntime(tiny_bundles):
    texts = sample_texts(16)
    packed = _session(tiny_bundles["bert"], device="cpu", mode="packed")
    prefix = _session(tiny_bundles["bert"], device="cpu", mode="prefix", cost_model=None)
    assert packed.runner.mode == "packed" and prefix.runner.mode == "prefix"
    onnx = Session.load(tiny_bundles["bert"], backend="onnxruntime")
    reference = packed.predict_logits(texts, batch_size=5)
    np.testing.assert_allclose(prefix.predict_logits(texts, batch_size=5), reference, atol=1e-5, rtol=0)
    np.testing.assert_allclose(onnx.predict_logits(texts, batch_size=5), reference, atol=1e-4, rtol=0)


def test_cost_model_dense_form_gives_the_same_answers(tiny_bundles):
    """A cost model that never sees HashEE pay sends every batch to the dense form (every W_l = S); one
    that always does runs narrowed layers (some W_l < S); the runner's stats show which ran, and the
    answers agree."""
    texts = sample_texts(24)
    never = CostModel(4, 32, 48, flops_per_second=1e12, launch_seconds=1.0)  # launches dominate: always dense
    always = CostModel(4, 32, 48, flops_per_second=1e3, launch_seconds=0.0)  # FLOPs dominate: HashEE if any saving
    dense = _session(tiny_bundles["bert"], device="cpu", mode="prefix", cost_model=never)
    hashee = _session(tiny_bundles["bert"], device="cpu", mode="prefix", cost_model=always)
    np.testing.assert_allclose(dense.predict_logits(texts, 8), hashee.predict_logits(texts, 8), atol=1e-5, rtol=0)
    dense_stats, hashee_stats = dense.runner.stats, hashee.runner.stats
    assert dense_stats.batches == dense_stats.dense_batches == hashee_stats.batches == 3
    seq = dense_stats.last_shape[1]
    assert len(dense_stats.last_widths) == 4 and all(w == seq for w in dense_stats.last_widths)
    assert hashee_stats.dense_batches == 0 and min(hashee_stats.last_widths) < hashee_stats.last_shape[1]
    # each batch separately: the dense-form plan has every W_l = S, the HashEE plan narrows
    feed = hashee.feed(**hashee.tokenize(texts[:8]))
    assert set(dense.runner.plan(feed).widths) == {feed["input_ids"].shape[1]}
    assert min(hashee.runner.plan(feed).widths) < feed["input_ids"].shape[1]


def test_graphs_mode_needs_cuda_and_modes_are_checked(tiny_bundles):
    bundle = open_bundle(tiny_bundles["bert"])
    with pytest.raises(BackendError, match="CUDA"):
        TorchRunner(bundle, "cpu", mode="graphs").activate()
    with pytest.raises(BackendError, match="mode"):
        TorchRunner(bundle, "cpu", mode="fast")


def test_graph_cache_captures_once_per_shape_and_evicts_least_recently_used():
    captured = []

    def capture(inputs):  # a CPU stand-in for the capture step: the cache's bookkeeping is what is tested
        captured.append(inputs["x"].shape)
        return lambda batch: batch["x"].sum(axis=1)

    cache = GraphCache(capture, max_graphs=2)
    x = {"x": np.ones((2, 3))}
    y = {"x": np.ones((4, 3))}
    z = {"x": np.ones((8, 3))}
    np.testing.assert_array_equal(cache.run((2, 3), x), [3, 3])
    cache.run((2, 3), x)
    cache.run((4, 3), y)
    cache.run((2, 3), x)  # (2, 3) is now the most recent
    cache.run((8, 3), z)  # evicts (4, 3)
    assert cache.keys() == [(2, 3), (8, 3)] and len(cache) == 2
    assert cache.captures == 3 and cache.replays == 5
    cache.run((4, 3), y)
    assert cache.captures == 4 and cache.keys() == [(8, 3), (4, 3)]
    with pytest.raises(BackendError):
        GraphCache(capture, max_graphs=0)


def test_bucket_shapes_of_the_graph_test_batches_and_lru_cycling(tiny_bundles):
    """The batches of the GPU test below, planned on CPU by the runner's own code with bucketing: five
    distinct shapes, each once per pass.  Replayed cyclically, a cache of four misses every time (LRU);
    a cache of five captures each shape once and replays it on the second pass."""
    texts = sample_texts(GRAPH_TEXTS)
    session = _session(tiny_bundles["bert"], ShapeRecorder, device="cpu", mode="prefix", cost_model=None,
                       bucket=True)
    bucketed = session.predict_logits(texts, batch_size=GRAPH_BATCH)
    shapes = session.runner.shapes
    assert len(shapes) == len(set(shapes)) == GRAPH_SHAPES
    assert all(shape[0] == GRAPH_BATCH and shape[1] % 8 == 0 for shape in shapes)
    plain = _session(tiny_bundles["bert"], device="cpu", mode="prefix", cost_model=None)
    np.testing.assert_allclose(bucketed, plain.predict_logits(texts, batch_size=GRAPH_BATCH), atol=1e-5, rtol=0)

    def capture(inputs):
        return lambda batch: batch["x"]

    small, enough = GraphCache(capture, max_graphs=GRAPH_SHAPES - 1), GraphCache(capture, max_graphs=GRAPH_SHAPES)
    for _ in range(2):
        for shape in shapes:
            small.run(shape, {"x": np.zeros(1)})
            enough.run(shape, {"x": np.zeros(1)})
    assert small.captures == small.replays == 2 * GRAPH_SHAPES  # every lookup evicted before its reuse
    assert enough.captures == GRAPH_SHAPES and enough.replays == 2 * GRAPH_SHAPES


# ------------------------------------------------------------------ TensorRT profiles of the prefix layout (CPU)
def test_profile_shapes_of_the_mask_inputs():
    profile = Profile((1, 32, 128), (2, 64, 128))
    assert mask_layer("exit_mask_3") == 3 and mask_layer("exit_masks") is None and mask_layer("input_ids") is None
    assert profile.shapes("exit_mask_1", 6) == ((1, 2), (32, 64), (128, 128))  # W_1 = the sequence
    assert profile.shapes("exit_mask_6", 6) == ((1, 1), (32, 11), (128, 128))  # ceil(64 / 6)
    assert profile.shapes("exit_mask_4", 6) == ((1, 1), (32, 32), (128, 128))
    assert profile.shapes("exit_masks", 6) == ((6, 1, 2), (6, 32, 64), (6, 128, 128))  # packed: unchanged
    assert profile.shapes("position_ids", 6) == ((1, 2), (32, 64), (128, 128))
    for layer in range(1, 7):
        low, opt, high = profile.width_range(layer, 6)
        assert 1 <= low <= opt <= high == 128


def test_profile_checks_know_the_widths():
    profile = Profile((1, 8, 16), (2, 16, 32))
    ok = {"input_ids": (4, 24), "exit_mask_1": (4, 24), "exit_mask_2": (4, 9)}
    assert profile.prefix_problem(ok, 2) is None
    assert "exit_mask_1" in profile.prefix_problem({**ok, "exit_mask_1": (4, 16)}, 2)
    assert "exit_mask_2" in profile.prefix_problem({**ok, "exit_mask_2": (4, 25)}, 2)
    assert "exit_mask_2" in profile.prefix_problem({**ok, "exit_mask_2": (4, 0)}, 2)
    assert ".prefix." in engine_file_name("fp32", (9, 0), "11.0", [profile], "prefix")
    assert ".prefix." not in engine_file_name("fp32", (9, 0), "11.0", [profile])


def test_engine_layout_must_match_the_bundle(tiny_bundles, tmp_path):
    import shutil

    from hashee.bundle import read_bundle, update_bundle
    from hashee.runtime.runners.tensorrt import choose_engine, engine_problem

    folder = tmp_path / "b"
    shutil.copytree(tiny_bundles["bert"], folder)
    meta = read_bundle(folder)
    profile = Profile((1, 8, 16), (2, 16, 32))

    def entry(layout):
        return {"file": engine_file_name("fp32", (9, 0), "11.0", [profile], layout), "precision": "fp32",
                "layout": layout, "onnx": "model.onnx", "onnx_sha256": meta["files"]["model.onnx"],
                "tensorrt_version": "11.0", "compute_capability": "9.0", "profiles": [profile.to_meta()]}

    entries = [entry("packed"), entry("prefix")]
    files = {}
    for e in entries:
        (tmp_path / e["layout"]).write_bytes(b"placeholder")
        files[e["file"]] = tmp_path / e["layout"]
    update_bundle(folder, files, {"engines": entries})
    bundle = open_bundle(folder)  # a packed bundle: only the packed engine runs
    assert "layout" in engine_problem(entries[1], "9.0", "11.0", bundle.meta["files"], "packed")
    assert choose_engine(bundle, "9.0", "11.0")["layout"] == "packed"
    onnx_meta = dict(bundle.meta["onnx"], layout="prefix")  # the same manifest said to be prefix
    update_bundle(folder, {}, {"onnx": onnx_meta})
    assert choose_engine(open_bundle(folder), "9.0", "11.0")["layout"] == "prefix"


# ------------------------------------------------------------------ GPU tier
@pytest.mark.gpu
def test_cuda_graphs_replay_equals_eager(tiny_bundles):
    """One graph captured per distinct bucketed shape on the first pass; the second pass only replays."""
    texts = sample_texts(GRAPH_TEXTS)
    eager = _session(tiny_bundles["bert"], device="cuda", mode="packed")
    graphs = _session(tiny_bundles["bert"], ShapeRecorder, device="cuda", mode="graphs",
                      max_graphs=4 * GRAPH_SHAPES, cost_model=None)
    assert graphs.runner.mode == "graphs"
    reference = eager.predict_logits(texts, batch_size=GRAPH_BATCH)
    first = graphs.predict_logits(texts, batch_size=GRAPH_BATCH)
    cache, shapes = graphs.runner.graphs, list(graphs.runner.shapes)
    assert len(set(shapes)) == GRAPH_SHAPES  # as planned on CPU (test above)
    assert cache.captures == len(cache) == GRAPH_SHAPES and set(cache.keys()) == set(shapes)
    again = graphs.predict_logits(texts, batch_size=GRAPH_BATCH)  # replays of the captured shapes
    assert graphs.runner.shapes[len(shapes):] == shapes
    assert cache.captures == GRAPH_SHAPES and cache.replays == 2 * len(shapes)
    np.testing.assert_allclose(first, reference, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(first, again)
    dense = _session(tiny_bundles["bert"], device="cuda", mode="graphs",
                     cost_model=CostModel(4, 32, 48, launch_seconds=1.0))  # always the dense form
    np.testing.assert_allclose(dense.predict_logits(texts, batch_size=GRAPH_BATCH), reference, atol=1e-4, rtol=0)


@pytest.mark.gpu
def test_tensorrt_prefix_engine_equals_onnxruntime(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'hashee[tensorrt]')")
    from export_helpers import tiny_run

    from hashee.exporter import export
    from hashee.exporter.tensorrt_engine import build_engine

    run = tiny_run(tmp_path / "run", "bert", seed=4)
    texts = sample_texts(64)
    for layout in ("packed", "prefix"):
        folder = tmp_path / layout
        export(run, folder, target="tensorrt", layout=layout, progress=False)
        build = build_engine(folder, profiles=["1x2:16x32:64x64"], progress=False)
        assert build.entry["layout"] == layout
        engine = Session.load(folder, backend="tensorrt")
        onnx = Session.load(folder, backend="onnxruntime")
        np.testing.assert_allclose(engine.predict_logits(texts, 16), onnx.predict_logits(texts, 16), atol=1e-3, rtol=0)
        if layout == "prefix":
            assert "widths" in build.entry["profiles"][0]


def test_layouts_check_variants_agree_on_cpu(tiny_bundles):
    """benchmarks/layouts_check.py (gpu_check's layouts section) on the tiny model: every variant runs and the
    HashEE ones agree with packed; the CUDA-graph variants exist only on a GPU."""
    import sys

    from conftest import REPO_ROOT
    from transformers import AutoTokenizer

    from hashee.modeling import HashEEForSequenceClassification

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from layouts_check import layouts_markdown, layouts_section

    run = tiny_bundles["runs"]["bert"]
    model = HashEEForSequenceClassification.from_pretrained(str(run)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(run))
    texts = sample_texts(12)
    report = layouts_section(model, tokenizer, {"sst2": (texts, 48)}, [1, 4], 1, "cpu")
    rows = report["sst2"]["rows"]
    assert [r["batch"] for r in rows] == [1, 4] and {"dense", "packed", "prefix"} <= set(rows[0])
    assert "prefix_graphs" not in rows[0]
    assert report["sst2"]["parity"]["prefix"]["max_abs_diff_vs_packed"] < 1e-5
    assert "| batch |" in "\n".join(layouts_markdown(report))


def test_gpu_check_budget_and_long_inputs_fill_the_largest_batch(tiny_bundles):
    """benchmarks/gpu_check.py: a part that does not fit the --budget is skipped with the reason; long inputs are
    repeated up to the largest layout batch and the note says so; a skipped data set still renders."""
    import sys

    from conftest import REPO_ROOT
    from transformers import AutoTokenizer

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import gpu_check
    from layouts_check import layouts_markdown

    assert gpu_check.Budget(None).skip("tensorrt engine") is None
    assert gpu_check.Budget(1000).skip("layouts") is None
    assert gpu_check.Budget(0).skip("torch").startswith("skipped: ")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bundles["runs"]["bert"]))
    texts, note = gpu_check.long_inputs(tokenizer, sample_texts(40), 3, 8)
    assert len(texts) == 8 and len(set(texts)) <= 3 and "repeated to 8 texts" in note
    lengths = [len(ids) for ids in tokenizer(texts[:3])["input_ids"]]
    assert all(256 <= n <= 512 for n in lengths)
    assert "skipped: 3 s" in "\n".join(layouts_markdown({"long inputs (skipped)": "skipped: 3 s of the --budget left"}))


def test_layouts_cpu_script_times_both_layouts_on_the_same_batches(tiny_bundles, tmp_path):
    """benchmarks/layouts_cpu.py (prefix against packed on ONNX Runtime CPU): both bundles run the same
    batches (same logits through their Sessions) and the report has a ratio for every batch size."""
    import json
    import sys

    from conftest import REPO_ROOT

    from hashee.exporter import export

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import layouts_cpu

    run = tiny_bundles["runs"]["bert"]
    for layout in ("packed", "prefix"):
        export(run, tmp_path / layout, layout=layout, progress=False, max_length=48)
    export(run, tmp_path / "dense", dense=True, progress=False, max_length=48)
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t0\n" for t in sample_texts(40)))
    bundles = [str(tmp_path / "packed"), str(tmp_path / "prefix")]
    assert layouts_cpu.main([*bundles, "--dense", str(tmp_path / "dense"), "--data", str(data), "--batch-sizes",
                             "1,8", "--repeats", "1", "--max-batches", "2", "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "layouts_cpu.json").read_text())
    assert report["bundles"] == [*bundles, str(tmp_path / "dense")]
    assert set(report["samples_per_second"]) == {"1", "8"}
    assert all(v > 0 for row in report["samples_per_second"].values() for v in row.values())
    work = report["encoder_macs"]["8"]  # dense computes every slot: the most work; packed the least
    assert work[str(tmp_path / "dense")] > work[bundles[1]] >= work[bundles[0]] > 0
    assert layouts_cpu.main([bundles[0], "--dense", bundles[1], "--data", str(data), "--out",
                             str(tmp_path / "bad")]) == 1  # --dense must name a dense bundle
    packed, prefix = (Session.load(b, backend="onnxruntime") for b in bundles)
    feeds = layouts_cpu.batches(packed, sample_texts(40), 8, 2)
    assert len(feeds) == 2
    for feed in feeds:
        np.testing.assert_allclose(prefix.run_feed(feed)["logits"], packed.run_feed(feed)["logits"], atol=1e-5)
    assert "(" in (tmp_path / "out" / "layouts_cpu.md").read_text()  # the prefix column carries its ratio


def test_layouts_cpu_work_counts_the_prefix_grids_idle_query_slots():
    """grid_macs: the two layouts share keys, values and the attention grid; the prefix graph also
    computes queries, attention output and FFN on the idle slots below each W_l (constructed case)."""
    import sys

    from conftest import REPO_ROOT

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import layouts_cpu

    hidden, intermediate = 4, 16
    # two rows of 4 slots; row 0 has 3 real tokens, row 1 has 4; layer 2: 3 and 1 active tokens
    attention_mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    layer2 = np.array([[1, 1, 1, 0], [0, 1, 0, 0]], dtype=bool)
    feed = {"input_ids": np.ones((2, 4), dtype=np.int64), "attention_mask": attention_mask,
            "exit_masks": np.stack([attention_mask.astype(bool), layer2])}
    packed = layouts_cpu.grid_macs([feed], False, hidden, intermediate)
    prefix = layouts_cpu.grid_macs([feed], True, hidden, intermediate)
    per_row = 2 * hidden * hidden + 2 * hidden * intermediate
    # layer 1: 8 slots against 7 real tokens; layer 2: 2 x 3 slots against 4 active tokens
    assert prefix - packed == (8 - 7) * per_row + (6 - 4) * per_row
    keys_values, attention = 2 * 8 * hidden * hidden, 2 * 2 * (4 + 3) * 4 * hidden
    assert packed == (7 + 4) * per_row + 2 * keys_values + attention


def test_prefix_waste_best_cut_separates_rows_of_different_widths(tiny_bundles, tmp_path):
    """benchmarks/prefix_waste.py: batch_work agrees with layouts_cpu.grid_macs on the same batch, the
    dynamic programme finds the cut a hand count says is least, and the script runs on a bundle."""
    import json
    import sys

    from conftest import REPO_ROOT

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import layouts_cpu
    import prefix_waste

    hidden, intermediate = 4, 16
    # four items of 6 tokens: two with 1 token active in layer 2, two with 4
    profile = np.array([[6, 1], [6, 1], [6, 4], [6, 4]])
    attention_mask = np.ones((4, 6), dtype=np.int64)
    layer2 = np.arange(6)[None, :] < profile[:, 1:2]
    feed = {"input_ids": attention_mask, "attention_mask": attention_mask,
            "exit_masks": np.stack([attention_mask.astype(bool), layer2])}
    for prefix in (False, True):
        assert prefix_waste.batch_work(profile, prefix, hidden, intermediate) == \
            layouts_cpu.grid_macs([feed], prefix, hidden, intermediate)
    work, batches = prefix_waste.least_prefix_work(profile, np.arange(4), 2, 4, hidden, intermediate)
    split = sum(prefix_waste.batch_work(profile[i], True, hidden, intermediate) for i in ([0, 1], [2, 3]))
    assert (work, batches) == (split, 2)
    assert split < prefix_waste.batch_work(profile, True, hidden, intermediate)
    mixed = sum(prefix_waste.batch_work(profile[i], True, hidden, intermediate) for i in ([0, 2], [1, 3]))
    assert split < mixed
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t0\n" for t in sample_texts(40)))
    assert prefix_waste.main([str(tiny_bundles["bert"]), "--data", str(data), "--batch-sizes", "8",
                              "--out", str(tmp_path / "out")]) == 0
    row = json.loads((tmp_path / "out" / "prefix_waste.json").read_text())["batch_sizes"]["8"]
    assert row["plan"] >= 1.0 and set(row["best_cut"]) == {"4", "2", "1"}
    assert row["best_cut"]["1"]["ratio"] <= row["best_cut"]["4"]["ratio"]  # more freedom, never more work
