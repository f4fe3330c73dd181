"""``hashee export-triton`` on a prefix-layout bundle (issue 14): the tokenizer model sorts each row by exit
layer and makes ``position_ids`` and ``exit_mask_1..L``; the repository declares and wires them; served
by hand (tokenizer ``model.py`` under the fake Triton module -> ``model.onnx`` on ONNX Runtime CPU), it
gives the packed bundle's answers, alone and in server-side batches of requests of different widths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient", reason="tritonclient is not installed (pip install 'hashee[serve]')")
ort = pytest.importorskip("onnxruntime")

from export_helpers import tiny_run  # noqa: E402
from triton_fake import InferenceRequest, load_model_py, strings  # noqa: E402

from hashee.cli import main  # noqa: E402
from hashee.errors import ExportError, ValidationError  # noqa: E402
from hashee.exporter import export  # noqa: E402
from hashee.prefix import mask_names  # noqa: E402
from hashee.runtime import Session  # noqa: E402
from hashee.serve import triton as triton_export  # noqa: E402
from hashee.serve.triton import export_triton  # noqa: E402
from hashee.serve.triton_check import check_repository, model_config_pb2, parse_config, read_plan_spec  # noqa: E402

BUCKETS = [16, 32, 48]
LAYERS = 4
TESTS = Path(__file__).resolve().parent
TEXTS = ["a fine film .", "", "dull and slow , but the cast is good and the music is even better than that",
         "the story", "it is a long and quiet film about a family that never says what it means",
         " ".join(["the film is long and the story goes nowhere"] * 6), "good", "bad acting , worse jokes",
         "a fine film , and the cast is good", "dull and slow , but the cast is good and the music is even better"]


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """Packed and prefix bundles of one tiny run per family, and a repository of each."""
    root = tmp_path_factory.mktemp("triton-prefix")
    out = {}
    for family in ("bert", "roberta"):  # bert: segment ids; roberta: none (pad id 1)
        run = tiny_run(root / f"run-{family}", family, seed=11)
        for layout in ("packed", "prefix"):
            bundle = root / f"bundle-{family}-{layout}"
            export(run, bundle, progress=False, max_length=48, layout=layout)
            out[f"bundle-{family}-{layout}"] = bundle
            out[f"{family}-{layout}"] = export_triton(bundle, root / f"repo-{family}-{layout}", buckets=BUCKETS,
                                                      max_batch_size=8).repo
    out["bert-prefix-tensorrt"] = export_triton(out["bundle-bert-prefix"], root / "repo-trt", backend="tensorrt",
                                                buckets=BUCKETS, max_batch_size=8).repo
    export(root / "run-bert", root / "bundle-bert-prefix-trt", progress=False, max_length=48, target="tensorrt",
           layout="prefix")
    out["bundle-bert-prefix-trt"] = root / "bundle-bert-prefix-trt"
    out["bert-prefix-plan"] = export_triton(out["bundle-bert-prefix-trt"], root / "repo-plan", backend="tensorrt-plan",
                                            buckets=BUCKETS, max_batch_size=8).repo
    return out


def _args(folder: Path) -> dict:
    from google.protobuf import json_format

    config = parse_config(folder / "config.pbtxt")
    return {"model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
            "model_repository": str(folder), "model_version": "1", "model_name": folder.name}


def _tokenizer(repo: Path):
    model = load_model_py(repo / "hashee_tokenizer" / "1" / "model.py").TritonPythonModel()
    model.initialize(_args(repo / "hashee_tokenizer"))
    return model


def _session(repo: Path):
    return ort.InferenceSession(str(repo / "hashee_model" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def _run(session, arrays: dict) -> np.ndarray:
    names = [i.name for i in session.get_inputs()]
    return session.run(["logits"], {n: arrays[n] for n in names})[0]


def _serve(session, responses) -> tuple[list[np.ndarray], int]:
    """Triton's dynamic batcher by hand: requests whose every tensor has the same shape are stacked into one
    model call (it never stacks others); returns each request's logits and the number of model calls."""
    groups: dict = {}
    for index, response in enumerate(responses):
        assert response.error is None, response.error.message()
        arrays = response.as_dict()
        groups.setdefault(tuple(sorted((k, v.shape[1:]) for k, v in arrays.items())), []).append(index)
    out: list = [None] * len(responses)
    for members in groups.values():
        parts = [responses[i].as_dict() for i in members]
        logits = _run(session, {name: np.concatenate([p[name] for p in parts]) for name in parts[0]})
        start = 0
        for index, part in zip(members, parts):
            stop = start + len(part["input_ids"])
            out[index] = logits[start:stop]
            start = stop
    return out, len(groups)


def _reference(bundle: Path, texts) -> np.ndarray:
    with Session.load(bundle, backend="onnxruntime") as runtime:
        return runtime.predict_logits(texts)


@pytest.mark.parametrize("which", ["bert-prefix", "roberta-prefix", "bert-prefix-tensorrt", "bert-prefix-plan"])
def test_prefix_repository_declares_and_wires_the_layout(repos, which):
    repo = repos[which]
    warnings: list = []
    assert check_repository(repo, allow_unbuilt_plans=True, warnings=warnings) == []
    pb2 = model_config_pb2()
    model, tokenizer, ensemble = (parse_config(repo / n / "config.pbtxt")
                                  for n in ("hashee_model", "hashee_tokenizer", "hashee"))
    types = [] if which.startswith("roberta") else ["token_type_ids"]
    names = ["input_ids", "attention_mask", "position_ids", *types, *mask_names(LAYERS)]
    trt = which != "bert-prefix" and which != "roberta-prefix"
    index, mask = ("TYPE_INT32", "TYPE_INT32") if trt else ("TYPE_INT64", "TYPE_BOOL")
    want = [(n, mask if n.startswith("exit_mask_") else index, [-1]) for n in names]
    assert [(i.name, pb2.DataType.Name(i.data_type), list(i.dims)) for i in model.input] == want
    assert [(o.name, pb2.DataType.Name(o.data_type), list(o.dims)) for o in tokenizer.output] == want
    step_one, step_two = ensemble.ensemble_scheduling.step
    assert sorted(step_one.output_map) == sorted(names) and sorted(step_two.input_map) == sorted(names)
    assert tokenizer.parameters["layout"].string_value == "prefix"
    assert (repo / "hashee_tokenizer" / "1" / tokenizer.parameters["prefix_plan_file"].string_value).is_file()
    for sample, width in zip(model.model_warmup, (BUCKETS[0], BUCKETS[-1])):
        widths = [list(sample.inputs[n].dims) for n in mask_names(LAYERS)]
        assert widths[0] == [width] and all(w[0] <= width and (w[0] % 8 == 0 or w[0] == width) for w in widths)
        assert widths == sorted(widths, reverse=True) and list(sample.inputs["position_ids"].dims) == [width]
    if which == "bert-prefix-tensorrt":
        (accelerator,) = model.optimization.execution_accelerators.gpu_execution_accelerator
        low = accelerator.parameters["trt_profile_min_shapes"].split(",")
        assert "exit_mask_1:1x16" in low and "exit_mask_2:1x1" in low and "position_ids:1x48" in low
        assert "exit_mask_4:8x48" in accelerator.parameters["trt_profile_max_shapes"].split(",")
    if which == "bert-prefix-plan":
        spec = read_plan_spec(repo / "hashee_model" / "build_plans.py")
        assert spec["inputs"] == names
        shapes = spec["profiles"][1]["shapes"]  # bucket 32
        assert shapes["exit_mask_1"] == shapes["input_ids"] == [[1, 32], [8, 32], [8, 32]]
        assert shapes["exit_mask_3"] == [[1, 1], [8, 16], [8, 32]]  # hashee.engines.Profile.width_range
        assert len(warnings) == 1  # the plan itself is built on the serving GPU


@pytest.mark.filterwarnings("ignore::hashee.runtime.inputs.TruncationWarning")  # the long text, in both
@pytest.mark.parametrize("which", ["bert-prefix", "roberta-prefix", "bert-prefix-tensorrt"])
def test_prefix_repository_serves_the_packed_answers(repos, which):
    """One request per text and one request of all texts (mixed lengths): the packed bundle's logits (1e-5),
    and the packed repository's; the tokenizer's rows are sorted by exit layer, position_ids restore them."""
    family = which.split("-")[0]
    repo, packed_repo = repos[which], repos[f"{family}-packed"]
    want = _reference(repos[f"bundle-{family}-packed"], TEXTS)
    np.testing.assert_allclose(_reference(repos[f"bundle-{family}-prefix"], TEXTS), want, atol=1e-5, rtol=0)
    tokenizer, session = _tokenizer(repo), _session(repo)
    packed_tokenizer, packed_session = _tokenizer(packed_repo), _session(packed_repo)
    table = np.load(repo / "hashee_tokenizer" / "1" / "exit_table.npy").astype(np.int64)
    alone, packed_alone = [], []
    for text in TEXTS:
        (response,) = tokenizer.execute([InferenceRequest(TEXT=strings([text]))])
        (packed,) = packed_tokenizer.execute([InferenceRequest(TEXT=strings([text]))])
        got, flat = response.as_dict(), packed.as_dict()
        _check_sorted(got, flat, table)
        alone.append(_run(session, got)[0])
        packed_alone.append(_run(packed_session, flat)[0])
    np.testing.assert_allclose(np.stack(alone), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.stack(alone), np.stack(packed_alone), atol=1e-5, rtol=0)
    (response,) = tokenizer.execute([InferenceRequest(TEXT=strings(TEXTS))])  # one request, every length
    np.testing.assert_allclose(_run(session, response.as_dict()), want, atol=1e-5, rtol=0)


def _check_sorted(got: dict, flat: dict, table: np.ndarray) -> None:
    """``got`` (prefix) is ``flat`` (packed) with each row sorted by exit layer, descending, and its masks."""
    ids, positions, real = got["input_ids"], got["position_ids"].astype(np.int64), got["attention_mask"] != 0
    exits = table[ids.astype(np.int64)] * real
    assert (np.diff(exits, axis=1) <= 0).all()
    back = np.argsort(positions, axis=1)
    np.testing.assert_array_equal(np.take_along_axis(ids, back, axis=1), flat["input_ids"])
    np.testing.assert_array_equal(np.take_along_axis(got["attention_mask"], back, axis=1), flat["attention_mask"])
    for layer, name in enumerate(mask_names(LAYERS), 1):
        mask = got[name].astype(bool)
        np.testing.assert_array_equal(mask, (exits >= layer)[:, :mask.shape[1]])
        assert (exits >= layer).sum() == mask.sum()  # every active token is inside the prefix


@pytest.mark.filterwarnings("ignore::hashee.runtime.inputs.TruncationWarning")
def test_server_side_batch_of_requests_of_different_widths(repos):
    """Requests of one tokenizer call that share a bucket get the same W_l (the widest, rounded up to a
    multiple of 8), so the model batches them; each gets its own answer (1e-5)."""
    repo = repos["bert-prefix"]
    tokenizer, session = _tokenizer(repo), _session(repo)
    requests = [[t] for t in TEXTS] + [TEXTS[:3], TEXTS[3:5]]
    want = _reference(repos["bundle-bert-packed"], TEXTS)
    wants = [want[i:i + 1] for i in range(len(TEXTS))] + [want[:3], want[3:5]]
    alone = []  # (bucket, W_1..W_L) of each request sent alone
    for texts in requests:
        (response,) = tokenizer.execute([InferenceRequest(TEXT=strings(texts))])
        arrays = response.as_dict()
        alone.append((arrays["input_ids"].shape[1], tuple(arrays[n].shape[1] for n in mask_names(LAYERS))))
    for bucket in (16, 32):  # the requests' own widths differ within a bucket: the case under test
        assert len({widths for width, widths in alone if width == bucket}) > 1, alone
    responses = tokenizer.execute([InferenceRequest(TEXT=strings(t)) for t in requests])
    logits, calls = _serve(session, responses)
    assert calls == len({width for width, _ in alone})  # one model call per sequence bucket
    for got, expected in zip(logits, wants):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    for texts, response in zip(requests, responses):
        (own,) = tokenizer.execute([InferenceRequest(TEXT=strings(texts))])
        _check_widened(response.as_dict(), own.as_dict())
    for bucket in set(BUCKETS):
        members = [i for i, (width, _) in enumerate(alone) if width == bucket]
        shared = {tuple(responses[i].as_dict()[n].shape[1] for n in mask_names(LAYERS)) for i in members}
        if members:  # the widest request's widths (rounding to 8 commutes with the maximum)
            assert shared == {tuple(np.max([alone[i][1] for i in members], axis=0))}
    # pairs: segment ids follow the sort
    pairs = [("a man sleeps", "a person rests"), ("the cast is good", "")]
    (response,) = tokenizer.execute([InferenceRequest(TEXT=strings([p[0] for p in pairs]),
                                                      TEXT_PAIR=strings([p[1] for p in pairs]))])
    np.testing.assert_allclose(_run(session, response.as_dict()), _reference(repos["bundle-bert-packed"], pairs),
                               atol=1e-5, rtol=0)


def test_tokenizer_model_runs_without_hashee(repos, tmp_path):
    """The Python-backend stub has numpy and tokenizers, not hashee: model.py and the shipped copy of
    hashee/prefix.py run with hashee unimportable and make the arrays the in-process model makes."""
    repo = repos["roberta-prefix"]
    folder = repo / "hashee_tokenizer"
    (tmp_path / "args.json").write_text(json.dumps(_args(folder)))
    script = f"""
import json, sys
sys.modules["hashee"] = None  # import hashee fails
sys.path.insert(0, {str(TESTS)!r})
import numpy as np
from triton_fake import InferenceRequest, load_model_py, strings
model = load_model_py({str(folder / "1" / "model.py")!r}).TritonPythonModel()
model.initialize(json.load(open({str(tmp_path / "args.json")!r})))
(response,) = model.execute([InferenceRequest(TEXT=strings({TEXTS!r}))])
assert response.error is None, response.error.message()
np.savez({str(tmp_path / "out.npz")!r}, **response.as_dict())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    (response,) = _tokenizer(repo).execute([InferenceRequest(TEXT=strings(TEXTS))])
    with np.load(tmp_path / "out.npz") as outside:
        assert sorted(outside.files) == sorted(response.as_dict())
        for name, value in response.as_dict().items():
            np.testing.assert_array_equal(outside[name], value)


def test_what_export_triton_cannot_serve_is_a_typed_error(repos, tmp_path, monkeypatch, capsys):
    bundle = repos["bundle-bert-prefix"]
    assert main(["export-triton", str(bundle), str(tmp_path / "ok"), "--buckets", "16,48"]) == 0  # was a KeyError
    assert main(["export-triton", str(bundle), str(tmp_path / "x"), "--backend", "tensorrt-plan",
                 "--buckets", "16,48"]) == 1
    err = capsys.readouterr().err
    assert "--target tensorrt" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(ExportError, match="--layout prefix"):
        triton_export._check_servable(bundle, ["input_ids", "attention_mask", "position_ids"], LAYERS)
    with pytest.raises(ExportError, match="'?input_embeds'?.*does not make"):
        triton_export._check_servable(bundle, ["input_ids", "attention_mask", "input_embeds"], LAYERS)
    changed = tmp_path / "prefix.py"
    changed.write_text(triton_export.PREFIX_SOURCE.read_text().replace(triton_export.PREFIX_IMPORT, "import os\n"))
    monkeypatch.setattr(triton_export, "PREFIX_SOURCE", changed)
    with pytest.raises(ExportError, match="lost its line"):
        export_triton(bundle, tmp_path / "y", buckets=[16, 48])
    assert not (tmp_path / "y").exists()


def test_a_wrong_int32_rewrite_of_the_prefix_graph_is_refused(repos, tmp_path, monkeypatch):
    """--backend tensorrt rewrites the graph's inputs to int32; the rewrite is checked against the bundle's graph."""
    from onnx import numpy_helper

    real = triton_export.int32_inputs

    def off_by_a_bit(model):
        out = real(model)
        weight = max(out.graph.initializer, key=lambda t: len(t.raw_data))  # a weight matrix
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))
        return out

    monkeypatch.setattr(triton_export, "int32_inputs", off_by_a_bit)
    with pytest.raises(ValidationError, match="int32-input prefix graph disagrees"):
        export_triton(repos["bundle-bert-prefix"], tmp_path / "r", backend="tensorrt", buckets=[16, 48])
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- slow tier: a real tritonserver
def _real_server(repos, tmp_path, family="bert"):
    """(repository of the prefix bundle, stub environment) for a real tritonserver; skips with the reason."""
    from triton_server import find_tritonserver, python_env

    binary = find_tritonserver()
    if binary is None:
        pytest.skip("no tritonserver found (set HASHEE_TRITONSERVER, put it on PATH, or install nvidia-pytriton)")
    env = python_env(binary)
    repo = export_triton(repos[f"bundle-{family}-prefix"], tmp_path / "repo", buckets=BUCKETS, max_batch_size=8,
                         python_env=str(env.path)).repo
    return repo, env


@pytest.mark.triton
def test_real_tritonserver_runs_the_prefix_tokenizer(repos, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from triton_server import running_server

    repo, env = _real_server(repos, tmp_path)
    local = _tokenizer(repo)
    with running_server(repo, env, ["hashee_tokenizer"]) as server:
        for texts in [[t] for t in TEXTS] + [TEXTS[:8]]:  # max_batch_size 8
            got = server.infer("hashee_tokenizer", texts)
            (response,) = local.execute([InferenceRequest(TEXT=strings(texts))])
            want = response.as_dict()
            assert sorted(got) == sorted(want)
            for name, value in want.items():
                np.testing.assert_array_equal(got[name].astype(value.dtype), value)
        with ThreadPoolExecutor(8) as pool:  # concurrent requests: the tokenizer may get several per call
            answers = list(pool.map(lambda t: server.infer("hashee_tokenizer", [t]), TEXTS * 3))
    for text, got in zip(TEXTS * 3, answers):
        (response,) = local.execute([InferenceRequest(TEXT=strings([text]))])
        _check_widened(got, response.as_dict())


def _check_widened(got: dict, alone: dict) -> None:
    """``got`` is the request's own arrays (``alone``) with masks widened only by false slots."""
    for name, value in alone.items():
        array = got[name].astype(value.dtype)
        if name.startswith("exit_mask_"):
            width = value.shape[1]
            assert array.shape[1] >= width and not array[:, width:].any()
            array = array[:, :width]
        np.testing.assert_array_equal(array, value)


@pytest.mark.triton
@pytest.mark.filterwarnings("ignore::hashee.runtime.inputs.TruncationWarning")
def test_real_tritonserver_runs_the_prefix_ensemble_under_concurrent_requests(repos, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from triton_server import has_backend, running_server

    if not has_backend("onnxruntime"):
        pytest.skip("this tritonserver has no onnxruntime backend: the ensemble cannot load (tokenizer tested alone)")
    repo, env = _real_server(repos, tmp_path)
    want = _reference(repos["bundle-bert-packed"], TEXTS)
    with running_server(repo, env, None) as server, ThreadPoolExecutor(8) as pool:  # batched server-side
        answers = list(pool.map(lambda t: server.infer("hashee", [t])["logits"][0], TEXTS * 4))
    np.testing.assert_allclose(np.stack(answers).astype(np.float32), np.concatenate([want] * 4), atol=1e-5, rtol=0)
