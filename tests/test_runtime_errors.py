"""Bad inputs and broken bundles: a typed error (a HasheeError) whose message names the fix, for each
case of issue #4; nothing loads a pickle."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from hashee.errors import BackendError, BundleError, ExitTableError, HasheeError, InputError  # noqa: E402
from hashee.bundle import sha256_file  # noqa: E402
from hashee.runtime import Session  # noqa: E402


@pytest.fixture(scope="module")
def session(tiny_bundles):
    with Session.load(tiny_bundles["bert"], backend="onnxruntime") as s:
        yield s


def test_valid_edge_inputs(session):
    assert session.predict([]) == []
    assert session.predict(iter([])) == []
    (empty,) = session.predict([""])
    assert set(empty) == {"label", "score"}
    with pytest.warns(UserWarning, match="1 of 1 input"):
        (long,) = session.predict(["word " * 20_000])  # 100,000 characters
    assert 0 < long["score"] <= 1
    assert len(session.predict([("", ""), ("a", "")])) == 2


@pytest.mark.parametrize("texts, message", [
    (None, "list of strings"),
    ("a single text", "wrap it: predict([text])"),
    (b"raw bytes", "decode"),
    (42, "list of strings"),
    ([None], "item 0 is None; pass a string (use '' for an empty text)"),
    (["ok", b"bytes"], "item 1 is bytes; decode it first"),
    (["ok", 3.5], "item 1 is a number"),
    ([{"text": "a"}], "item 0 is a dict"),
    ([("only one side",)], "pair with 1 element"),
    ([("a", None)], "item 0, second text, is None"),
    ([("a", "b", "c")], "pair with 3 element"),
    (["a", ("b", "c")], "do not mix strings and pairs"),
    ([("b", "c"), "a"], "do not mix strings and pairs"),
    (["lone \ud800 surrogate"], "lone surrogate"),
])
def test_bad_texts(session, texts, message):
    with pytest.raises(InputError, match=None) as info:
        session.predict(texts)
    assert isinstance(info.value, HasheeError) and message in str(info.value)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "32"])
def test_bad_batch_size(session, batch_size):
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        session.predict(["a"], batch_size=batch_size)


def _arrays(layers=4):
    ids = np.array([[2, 10, 11, 3], [2, 12, 3, 0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    masks = np.ones((layers, 2, 4), dtype=bool)
    return ids, mask, masks


@pytest.mark.parametrize("case, message", [
    ("float ids", "input_ids must hold integers, got dtype float32"),
    ("rank 1", "must be 2-D [batch, sequence], got rank 1"),
    ("rank 3", "got rank 3"),
    ("mask shape", "attention_mask has shape (2, 3) but input_ids has (2, 4)"),
    ("id out of range", "input_ids must lie in 0..119"),
    ("mask values", "attention_mask must hold only 0 and 1"),
    ("left padding", "row 1 of attention_mask starts with padding"),
    ("too long", "exceeds the bundle's max length 48"),
    ("float masks", "exit_masks must be bool"),
    ("masks rank", "exit_masks must be 3-D"),
    ("masks layers", "exit_masks has 3 layers but the model has 4"),
    ("masks shape", "expected [4, 2, 4]"),
    ("not monotone", "not monotone: a token is active in layer 3 but not in layer 2"),
    ("layer 1 off", "exit_masks[0] must be True at every non-padding token"),
    ("type shape", "token_type_ids has shape"),
])
def test_bad_arrays(session, case, message):
    ids, mask, masks = _arrays()
    types = None
    if case == "float ids":
        ids = ids.astype(np.float32)
    elif case == "rank 1":
        ids, mask = ids[0], mask[0]
    elif case == "rank 3":
        ids, mask = ids[None], mask[None]
    elif case == "mask shape":
        mask = mask[:, :3]
    elif case == "id out of range":
        ids[0, 1] = 120
    elif case == "mask values":
        mask[0, 1] = 2
    elif case == "left padding":
        mask[1] = [0, 1, 1, 1]
    elif case == "too long":
        ids, mask = np.full((1, 49), 5), np.ones((1, 49), dtype=np.int64)
        masks = np.ones((4, 1, 49), dtype=bool)
    elif case == "float masks":
        masks = masks.astype(np.float32)
    elif case == "masks rank":
        masks = masks[0]
    elif case == "masks layers":
        masks = masks[:3]
    elif case == "masks shape":
        masks = masks[:, :, :3]
    elif case == "not monotone":
        masks[1, 0, 1] = False
    elif case == "layer 1 off":
        masks[:, 0, 2] = False
    elif case == "type shape":
        types = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(InputError) as info:
        session.run(ids, mask, types, masks)
    assert message in str(info.value)


def test_good_arrays_accept_other_integer_dtypes(session):
    ids, mask, masks = _arrays()
    a = session.run(ids.astype(np.int32), mask.astype(bool), None, masks.astype(np.uint8))["logits"]
    b = session.run(ids, mask, np.zeros_like(ids), masks)["logits"]
    assert np.array_equal(a, b)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"backend": "tflite"}, BackendError, "unknown backend 'tflite'; choose one of auto, onnxruntime, tensorrt, torch"),
    ({"backend": "onnxruntime", "device": "tpu"}, BackendError, "unknown device 'tpu'"),
    ({"backend": "onnxruntime", "threads": 0}, InputError, "threads must be a positive integer"),
    ({"backend": "tensorrt"}, BackendError, "holds no TensorRT engine"),
    ({"backend": "tensorrt", "device": "cpu"}, BackendError, "TensorRT runs on a GPU"),
])
def test_bad_backend_arguments(tiny_bundles, kwargs, error, message):
    with pytest.raises(error) as info:
        Session.load(tiny_bundles["bert"], **kwargs)
    assert message in str(info.value)


def test_tensorrt_without_gpu_names_what_is_missing(tiny_bundles):
    from hashee.runtime.runners.tensorrt import gpu_compute_capabilities, tensorrt_version

    if gpu_compute_capabilities() and tensorrt_version():
        pytest.skip("this machine has a GPU and TensorRT")
    with pytest.raises(BackendError) as info:
        Session.load(tiny_bundles["bert"], backend="tensorrt")
    text = str(info.value)
    if not gpu_compute_capabilities():
        assert "no CUDA GPU is visible" in text
    if tensorrt_version() is None:
        assert "pip install tensorrt" in text
    assert "Use backend='onnxruntime'" in text


def test_torch_backend_without_reference_weights(tiny_bundles):
    with pytest.raises(BackendError, match="--with-reference, or pass reference=RUN_DIR"):
        Session.load(tiny_bundles["roberta"], backend="torch")
    with Session.load(tiny_bundles["roberta"], backend="torch", reference=tiny_bundles["runs"]["roberta"]) as s:
        assert s.backend == "torch-cpu" and len(s.predict(["a"])) == 1


# ---------------------------------------------------------------------------------------- broken bundles
def _copy(tiny_bundles, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_bundles["roberta"], folder)
    return folder


def _rewrite_meta(folder, change, rehash=()):
    meta = json.loads((folder / "hashee.json").read_text())
    change(meta)
    for name in rehash:
        meta["files"][name] = sha256_file(folder / name)
    (folder / "hashee.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("case, error, message", [
    ("missing file", BundleError, "tokenizer/vocab.txt is missing from the bundle"),
    ("missing folder", BundleError, "does not exist; create one with hashee export"),
    ("sha mismatch", BundleError, "does not match its sha256 in hashee.json; the bundle is corrupted"),
    ("truncated model", BundleError, "does not match its sha256"),
    ("truncated model, rehashed", BundleError, "ONNX Runtime cannot load"),
    ("newer format", BundleError, "has bundle format 2; hashee 0.1.0 reads format 1 or older: upgrade hashee"),
    ("table too short", ExitTableError, "has 100 entries but the model's vocabulary has 120 ids"),
    ("table values 0", ExitTableError, "exit layers 0..4 but they must lie in 1..4"),
    ("table values 5", ExitTableError, "exit layers 1..5 but they must lie in 1..4"),
    ("table pickled", BundleError, "not a readable .npy array without pickles"),
    ("escaping file entry", BundleError, "escapes the bundle folder"),
    ("escaping model path", BundleError, "escapes the bundle folder"),
    ("absolute tokenizer path", BundleError, "not a relative path inside the bundle"),
    ("no manifest", BundleError, "holds no hashee.json; it is not a hashee bundle"),
    ("bad tokenizer", BundleError, "cannot be read as a tokenizer"),
])
def test_broken_bundles(tiny_bundles, tmp_path, case, error, message):
    folder = _copy(tiny_bundles, tmp_path)
    table = folder / "exit_table.npy"
    if case == "missing file":
        (folder / "tokenizer" / "vocab.txt").unlink()
    elif case == "missing folder":
        folder = tmp_path / "nowhere"
    elif case == "sha mismatch":
        data = bytearray(table.read_bytes())
        data[-1] ^= 1
        table.write_bytes(bytes(data))
    elif case.startswith("truncated model"):
        model = folder / "model.onnx"
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
        if case.endswith("rehashed"):
            _rewrite_meta(folder, lambda m: None, rehash=["model.onnx"])
    elif case == "newer format":
        _rewrite_meta(folder, lambda m: m.update(format_version=2))
    elif case.startswith("table"):
        layers = np.load(table)
        if case == "table too short":
            layers = layers[:100]
        elif case == "table values 0":
            layers[7] = 0
        elif case == "table values 5":
            layers[7] = 5
        if case == "table pickled":
            np.save(table, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        else:
            np.save(table, layers)
        _rewrite_meta(folder, lambda m: None, rehash=["exit_table.npy"])
    elif case == "escaping file entry":
        _rewrite_meta(folder, lambda m: m["files"].update({"../outside.txt": "0" * 64}))
    elif case == "escaping model path":
        _rewrite_meta(folder, lambda m: m["onnx"].update(file="../../model.onnx"))
    elif case == "absolute tokenizer path":
        _rewrite_meta(folder, lambda m: m.update(tokenizer="/etc"))
    elif case == "no manifest":
        (folder / "hashee.json").unlink()
    elif case == "bad tokenizer":
        (folder / "tokenizer" / "tokenizer.json").write_text("{not json")
        _rewrite_meta(folder, lambda m: None, rehash=["tokenizer/tokenizer.json"])
    with pytest.raises(error) as info:
        Session.load(folder, backend="onnxruntime")
    assert isinstance(info.value, HasheeError)
    assert message in str(info.value)


def test_a_graph_failing_at_run_time_is_a_backend_error(tiny_bundles, tmp_path):
    """ONNX Runtime's own run-time failure (here a Reshape that only fits some batch shapes) reaches the
    caller as a BackendError naming the file and the input shapes, not as an onnxruntime exception."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    folder = _copy(tiny_bundles, tmp_path)
    model = onnx.load(str(folder / "model.onnx"))
    graph = model.graph
    producer = next(n for n in graph.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "logits_raw"
    graph.initializer.extend([numpy_helper.from_array(np.array([3, -1], dtype=np.int64), "fault/shape"),
                              numpy_helper.from_array(np.array(0.0, dtype=np.float32), "fault/zero")])
    graph.node.extend([
        helper.make_node("Reshape", ["input_ids", "fault/shape"], ["fault/grid"]),
        helper.make_node("Cast", ["fault/grid"], ["fault/float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["fault/float"], ["fault/sum"], keepdims=0),
        helper.make_node("Mul", ["fault/sum", "fault/zero"], ["fault/nothing"]),
        helper.make_node("Add", ["logits_raw", "fault/nothing"], ["logits"]),
    ])
    onnx.save(model, str(folder / "model.onnx"))
    _rewrite_meta(folder, lambda m: None, rehash=["model.onnx"])
    with Session.load(folder, backend="onnxruntime") as session:
        ids = np.full((3, 5), 7, dtype=np.int64)
        assert session.run(ids, np.ones_like(ids))["logits"].shape[0] == 3  # 15 ids fit [3, -1]
        ids = np.full((2, 5), 7, dtype=np.int64)
        with pytest.raises(BackendError, match=r"ONNX Runtime failed running .*model.onnx on inputs input_ids \(2, 5\)"):
            session.run(ids, np.ones_like(ids))
