"""Work follows the active tokens, on the CPU and without timing.

ONNX Runtime's profiler records the input shapes of every node it runs.  In layer ``l`` of the exported
graph the query projection, the attention output projection and both FFN MatMuls must receive exactly
as many rows as the batch has active tokens in that layer (``exit_masks[l-1] & attention_mask``), while
the key/value projections receive every token of the batch.  A graph that computes every token at every
layer and masks the result afterwards gives the same logits; the test builds one from the real graph and
checks that it fails the row count.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export_helpers import tiny_run  # noqa: E402

from hashee.exporter import export  # noqa: E402
from hashee.runtime import open_bundle  # noqa: E402
from hashee.runtime.batching import exit_masks  # noqa: E402

# layers.{i}.<part>.weight -> what the MatMul computes; rows must equal the active count for "active" parts
PARTS = {"query": "active", "attention.output": "active", "ffn.in": "active", "ffn.out": "active",
         "key": "all", "value": "all"}
WEIGHT = re.compile(r"^layers\.(\d+)\.(query|key|value|attention\.output|ffn\.in|ffn\.out)\.weight$")


def _projection_nodes(model) -> dict[str, tuple[int, str]]:
    """Node name -> (layer, part) for every weight MatMul of the encoder layers."""
    nodes = {}
    for node in model.graph.node:
        match = WEIGHT.match(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if match:
            nodes[node.name] = (int(match.group(1)) + 1, match.group(2))
    return nodes


def profiled_rows(model, feed: dict, folder) -> dict[tuple[int, str], int]:
    """Rows of the first input of every encoder weight MatMul, as ONNX Runtime's profiler recorded them."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # node names kept as exported
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = session.run(["logits"], feed)
    with open(session.end_profiling()) as handle:
        events = json.load(handle)
    wanted = _projection_nodes(model)
    rows = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        if node in wanted:
            (shape,) = event["args"]["input_type_shape"][0].values()
            rows[wanted[node]] = int(np.prod(shape[:-1]))
    assert set(rows) == set(wanted.values()), "the profiler missed encoder MatMuls"
    return rows, outputs[0]


def row_mismatches(rows: dict[tuple[int, str], int], feed: dict) -> list[str]:
    """Where the rows reaching a projection differ from what the active tokens call for."""
    active = (feed["exit_masks"] & feed["attention_mask"].astype(bool)[None]).sum(axis=(1, 2))
    everything = feed["attention_mask"].size
    problems = []
    for (layer, part), count in sorted(rows.items()):
        want = int(active[layer - 1]) if PARTS[part] == "active" else everything
        if count != want:
            problems.append(f"layer {layer} {part}: {count} rows, {want} expected")
    return problems


def compute_everything(model):
    """The masked form of the same graph: every real token computes in every layer, and only the rows of
    active tokens are written back (``where(active, new, old)``).  Same outputs, no saving."""
    from onnx import TensorProto, helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    plan = next(n for n in graph.node if n.op_type == "And" and "exit_masks" in n.input)
    keep_all = next(i for i in plan.input if i != "exit_masks")
    extra = [
        helper.make_node("Not", ["exit_masks"], ["masked/not_exit"], name="masked/not_exit"),
        helper.make_node("Or", ["exit_masks", "masked/not_exit"], ["masked/all_layers"], name="masked/all_layers"),
        helper.make_node("And", ["exit_masks", keep_all], ["masked/real_and"], name="masked/real_and"),
        helper.make_node("Cast", ["masked/real_and"], ["masked/real_active"], name="masked/real_active",
                         to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["masked/column"], name="masked/column",
                         value=helper.make_tensor("column", TensorProto.INT64, [2], [-1, 1])),
    ]
    plan.input[list(plan.input).index("exit_masks")] = "masked/all_layers"
    scatters = [n for n in graph.node if n.domain == "hashee" and n.op_type == "ScatterActive"]
    for layer, node in enumerate(scatters):
        p = f"masked/layer{layer + 1}/"
        hidden, index, rows = node.input
        extra += [
            helper.make_node("Constant", [], [p + "at"], name=p + "at",
                             value=helper.make_tensor("at", TensorProto.INT64, [], [layer])),
            helper.make_node("Gather", ["masked/real_active", p + "at"], [p + "active"], name=p + "active", axis=0),
            helper.make_node("Reshape", [p + "active", "masked/column"], [p + "flat"], name=p + "flat"),
            helper.make_node("GatherND", [p + "flat", index], [p + "row_active"], name=p + "row_active"),
            helper.make_node("Cast", [p + "row_active"], [p + "keep"], name=p + "keep", to=TensorProto.BOOL),
            helper.make_node("GatherND", [hidden, index], [p + "old"], name=p + "old"),
            helper.make_node("Where", [p + "keep", rows, p + "old"], [p + "rows"], name=p + "rows"),
        ]
        node.input[2] = p + "rows"
    graph.node.extend(extra)
    nodes = list(graph.node)  # restore a topological order: producers before readers
    produced = set(i.name for i in graph.input) | set(i.name for i in graph.initializer)
    ordered = []
    while nodes:
        ready = [n for n in nodes if all(not x or x in produced for x in n.input)]
        assert ready, "cycle while ordering the masked graph"
        for n in ready:
            ordered.append(n)
            produced.update(n.output)
            nodes.remove(n)
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def bundles(tiny_bundles, tmp_path_factory):
    """The session's tiny bundles (ONNX Runtime target) and one exported for the TensorRT target."""
    root = tmp_path_factory.mktemp("active-work")
    run = tiny_run(root / "run", "electra", seed=5)
    export(run, root / "electra-trt", target="tensorrt", progress=False, max_length=48)
    return {"bert": tiny_bundles["bert"], "roberta": tiny_bundles["roberta"], "electra-trt": root / "electra-trt"}


def _feed(bundle_dir, seed: int) -> dict:
    """A padded batch of random real ids whose exit layers come from the bundle's table."""
    bundle = open_bundle(bundle_dir)
    rng = np.random.default_rng(seed)
    lengths = np.array([13, 4, 9, 1, 11, 7])
    ids = rng.integers(5, bundle.exit_table.shape[0], size=(len(lengths), 13))
    mask = (np.arange(13)[None] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, 0)
    feed = {"input_ids": ids, "attention_mask": mask,
            "exit_masks": exit_masks(ids, mask, bundle.exit_table, bundle.num_layers)}
    names = [spec["name"] for spec in bundle.meta["onnx"]["inputs"]]
    if "token_type_ids" in names:
        feed["token_type_ids"] = np.zeros_like(ids)
    return feed


@pytest.mark.parametrize("name", ["bert", "roberta", "electra-trt"])
def test_rows_reaching_each_projection_are_the_active_tokens(bundles, name, tmp_path):
    model = onnx.load(str(bundles[name] / "model.onnx"))
    feed = _feed(bundles[name], seed=len(name))
    active = (feed["exit_masks"] & feed["attention_mask"].astype(bool)[None]).sum(axis=(1, 2))
    assert active[0] > active[1] > active[-1]  # the check below tells apart every layer
    rows, _ = profiled_rows(model, feed, tmp_path)
    assert row_mismatches(rows, feed) == []
    assert len(rows) == 6 * len(active)


def test_a_compute_everything_graph_gives_the_same_logits_and_fails_the_row_count(bundles, tmp_path):
    """The check has teeth: the masked (compute-everything) form of the same graph is caught."""
    model = onnx.load(str(bundles["bert"] / "model.onnx"))
    feed = _feed(bundles["bert"], seed=3)
    real_rows, real_logits = profiled_rows(model, feed, tmp_path)
    masked_rows, masked_logits = profiled_rows(compute_everything(model), feed, tmp_path)
    np.testing.assert_allclose(masked_logits, real_logits, atol=1e-5, rtol=0)  # the same model, only slower
    problems = row_mismatches(masked_rows, feed)
    layers = open_bundle(bundles["bert"]).num_layers
    assert len(problems) == 4 * (layers - 1), problems  # every active-row MatMul of layers 2..L computes all tokens
    real = int(feed["attention_mask"].sum())
    assert all(masked_rows[(layer, "query")] == real for layer in range(1, layers + 1))
    assert row_mismatches(real_rows, feed) == []
