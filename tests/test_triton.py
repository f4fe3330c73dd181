"""``hashee export-triton`` / ``validate-triton``: the repository for both backends, each semantic check
against a planted fault, the tokenizer model.py under a fake of Triton's Python-backend module, and a
slow tier against a real tritonserver."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

pytest.importorskip("tritonclient", reason="tritonclient is not installed (pip install 'hashee[serve]')")
pytest.importorskip("onnxruntime")

from export_helpers import tiny_run  # noqa: E402
from triton_fake import InferenceRequest, Logger, MetricFamily, load_model_py, strings  # noqa: E402

from hashee.cli import main  # noqa: E402
from hashee.errors import ExportError  # noqa: E402
from hashee.exporter import export  # noqa: E402
from hashee.runtime import Session  # noqa: E402
from hashee.runtime.batching import bucket_width, pad_to  # noqa: E402
from hashee.runtime.inputs import TextEncoder  # noqa: E402
from hashee.serve.triton import export_triton  # noqa: E402
from hashee.serve.triton_check import check_repository, parse_config  # noqa: E402

BUCKETS = [16, 32, 48]
TEXTS = ["a fine film .", "", "dull and slow , but the cast is good and the music is even better than that",
         " ".join(["the film is long and the story goes nowhere"] * 6)]


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    out = {}
    for family in ("bert", "roberta"):
        run = tiny_run(root / f"run-{family}", family, seed=11)
        export(run, root / f"bundle-{family}", progress=False, max_length=48)
        out[f"bundle-{family}"] = root / f"bundle-{family}"
    for backend in ("onnxruntime", "tensorrt"):
        export_triton(out["bundle-bert"], root / f"repo-{backend}", backend=backend, buckets=BUCKETS, max_batch_size=8)
        out[backend] = root / f"repo-{backend}"
    export_triton(out["bundle-roberta"], root / "repo-roberta", buckets=BUCKETS, max_batch_size=4, name="rob")
    out["roberta"] = root / "repo-roberta"
    return out


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_repository_parses_and_passes_the_checks(repos, backend):
    repo = repos[backend]
    assert check_repository(repo) == []
    assert sorted(p.name for p in repo.iterdir()) == ["hashee", "hashee_model", "hashee_tokenizer"]
    configs = {p.name: parse_config(p / "config.pbtxt") for p in repo.iterdir()}
    model = configs["hashee_model"]
    assert model.backend == "onnxruntime" and model.max_batch_size == 8 and model.HasField("dynamic_batching")
    want = "TYPE_INT32" if backend == "tensorrt" else "TYPE_INT64"
    from hashee.serve.triton_check import model_config_pb2

    pb2 = model_config_pb2()
    assert {pb2.DataType.Name(i.data_type) for i in model.input} == {want}
    assert [i.name for i in model.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [(w.name, w.batch_size, list(w.inputs["input_ids"].dims)) for w in model.model_warmup] == [
        ("smallest_bucket", 1, [16]), ("largest_bucket", 8, [48])]
    accelerators = model.optimization.execution_accelerators.gpu_execution_accelerator
    if backend == "tensorrt":
        (trt,) = accelerators
        assert trt.name == "tensorrt" and trt.parameters["trt_engine_cache_enable"] == "1"
        assert trt.parameters["trt_profile_max_shapes"].split(",")[:3] == [
            "input_ids:8x16", "attention_mask:8x16", "token_type_ids:8x16"]
    else:
        assert not accelerators
    ensemble = configs["hashee"]
    assert ensemble.platform == "ensemble"
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["hashee_tokenizer", "hashee_model"]
    tokenizer = configs["hashee_tokenizer"]
    assert tokenizer.backend == "python" and tokenizer.parameters["buckets"].string_value == "16,32,48"


def test_the_model_serves_the_runtime_logits(repos):
    """The ensemble by hand: tokenizer model.py (fake Triton module) -> model.onnx on ONNX Runtime CPU."""
    import onnxruntime as ort

    repo = repos["tensorrt"]  # int32 boundary: the stricter one
    tokenizer = _tokenizer(repo)
    session = ort.InferenceSession(str(repo / "hashee_model" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    with Session.load(repos["bundle-bert"], backend="onnxruntime") as runtime:
        want = runtime.predict_logits(TEXTS)
    got = []
    for text in TEXTS:  # one request per text, as clients send them
        (response,) = tokenizer.execute([InferenceRequest(TEXT=strings([text]))])
        assert response.error is None
        got.append(session.run(["logits"], response.as_dict())[0][0])
    np.testing.assert_allclose(np.stack(got), want, atol=1e-4)


def _tokenizer(repo, name="hashee_tokenizer"):
    folder = repo / name
    module = load_model_py(folder / "1" / "model.py")
    config = parse_config(folder / "config.pbtxt")
    from google.protobuf import json_format

    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
                      "model_repository": str(folder), "model_version": "1", "model_name": name})
    return model


@pytest.mark.parametrize("which", ["onnxruntime", "tensorrt", "roberta"])
def test_tokenizer_model_matches_the_runtime_tokenisation_and_bucketing(repos, which):
    repo = repos[which]
    bundle = repos["bundle-roberta" if which == "roberta" else "bundle-bert"]
    name = "rob_tokenizer" if which == "roberta" else "hashee_tokenizer"
    MetricFamily.registry.clear()
    Logger.messages.clear()
    model = _tokenizer(repo, name)
    # numpy 2 here: the stub-compatibility warning is logged once at load (numpy 1: nothing)
    warned = [m for level, m in Logger.messages if level == "warn" and "numpy<2" in m]
    assert len(warned) == (1 if int(np.__version__.split(".")[0]) >= 2 else 0)
    with Session.load(bundle, backend="onnxruntime") as runtime:
        encoder = TextEncoder(runtime.bundle.tokenizer_dir, BUCKETS[-1], None)
        encoder.pad_id = runtime.encoder.pad_id
        table = runtime.bundle.exit_table
        uses_types = runtime.uses_token_type_ids
    dtype = np.int32 if which == "tensorrt" else np.int64
    requests = [TEXTS[:1], TEXTS[:2], TEXTS[2:3], TEXTS, ["x"] * 3]
    responses = model.execute([InferenceRequest(TEXT=strings(r)) for r in requests])
    seen_tokens = seen_layers = 0
    for texts, response in zip(requests, responses):
        assert response.error is None
        got = response.as_dict()
        encoded = encoder.encode(texts)
        width = bucket_width(int(encoded.lengths.max()), BUCKETS)
        ids, mask = pad_to(encoded.ids, width, encoder.pad_id)
        assert got["input_ids"].dtype == dtype and got["input_ids"].shape == (len(texts), width)
        np.testing.assert_array_equal(got["input_ids"], ids)
        np.testing.assert_array_equal(got["attention_mask"], mask)
        assert ("token_type_ids" in got) == uses_types
        seen_tokens += int(mask.sum())
        seen_layers += int(table[ids[mask.astype(bool)]].sum())
    # pairs: the second text's segment ids
    pairs = [("a man sleeps", "a person rests"), ("the cast is good", "")]
    (response,) = model.execute([InferenceRequest(TEXT=strings([p[0] for p in pairs]),
                                                  TEXT_PAIR=strings([p[1] for p in pairs]))])
    got = response.as_dict()
    encoded = encoder.encode([p[0] for p in pairs], [p[1] for p in pairs])
    ids, mask = pad_to(encoded.ids, bucket_width(int(encoded.lengths.max()), BUCKETS), encoder.pad_id)
    np.testing.assert_array_equal(got["input_ids"], ids)
    if uses_types:
        types, _ = pad_to(encoded.types, ids.shape[1], 0)
        np.testing.assert_array_equal(got["token_type_ids"], types)
    seen_tokens += int(mask.sum())
    seen_layers += int(table[ids[mask.astype(bool)]].sum())
    # the custom metric: mean exit layer of every real token served
    gauge = MetricFamily.registry["hashee_mean_exit_layer"].metrics[0]
    assert gauge.value == pytest.approx(seen_layers / seen_tokens)
    assert MetricFamily.registry["hashee_tokens_total"].metrics[0].value == seen_tokens
    # a bad request fails alone
    bad, good = model.execute([InferenceRequest(TEXT=strings(["a", "b"]), TEXT_PAIR=strings(["c"])),
                               InferenceRequest(TEXT=strings(["fine"]))])
    assert bad.error is not None and "TEXT_PAIR" in bad.error.message() and good.error is None


# ---------------------------------------------------------------- planted faults
def _edit(path, old, new):
    text = path.read_text()
    assert old in text, (old, path)
    path.write_text(text.replace(old, new, 1))


def _plant_wrong_name(repo, bundle):
    _edit(repo / "hashee_model" / "config.pbtxt", 'name: "hashee_model"', 'name: "hashee_modle"')


def _plant_missing_version(repo, bundle):
    shutil.rmtree(repo / "hashee_tokenizer" / "1")


def _plant_broken_mapping(repo, bundle):
    _edit(repo / "hashee" / "config.pbtxt", 'input_map { key: "attention_mask" value: "attention_mask" }',
          'input_map { key: "attention_mask" value: "attn_mask" }')


def _plant_non_batch_first(repo, bundle):
    # the exit-masks graph: exit_masks is [num_layers, batch, sequence]
    shutil.copyfile(bundle / "model.onnx", repo / "hashee_model" / "1" / "model.onnx")
    _edit(repo / "hashee_model" / "config.pbtxt", "input [\n",
          'input [\n  { name: "exit_masks" data_type: TYPE_BOOL dims: [ -1, -1 ] },\n')


def _plant_dtype_mismatch(repo, bundle):
    _edit(repo / "hashee_model" / "config.pbtxt", '{ name: "attention_mask" data_type: TYPE_INT64',
          '{ name: "attention_mask" data_type: TYPE_INT32')


def _plant_relative_python_env(repo, bundle):
    path = repo / "hashee_tokenizer" / "config.pbtxt"
    path.write_text(path.read_text() + 'parameters { key: "EXECUTION_ENV_PATH" value { string_value: "envs/py311" } }\n')


def _plant_missing_packed_env(repo, bundle):
    path = repo / "hashee_tokenizer" / "config.pbtxt"
    path.write_text(path.read_text() + 'parameters { key: "EXECUTION_ENV_PATH" value { string_value: '
                                       '"$$TRITON_MODEL_DIRECTORY/py311.tar.gz" } }\n')


def _plant_unparsable(repo, bundle):
    _edit(repo / "hashee_model" / "config.pbtxt", "max_batch_size: 8", "max_batch_size: eight")


FAULTS = {
    "wrong name": (_plant_wrong_name, "differs from its folder"),
    "missing version folder": (_plant_missing_version, "no version folder"),
    "broken ensemble mapping": (_plant_broken_mapping, "neither an ensemble input nor an output of an earlier step"),
    "non-batch-first input": (_plant_non_batch_first, "not batch-first"),
    "dtype mismatch": (_plant_dtype_mismatch, "TYPE_INT32 in config.pbtxt but INT64"),
    "not a ModelConfig": (_plant_unparsable, "does not parse as Triton's ModelConfig"),
    "relative EXECUTION_ENV_PATH": (_plant_relative_python_env, "must be an absolute path on the server"),
    "missing packed environment": (_plant_missing_packed_env, "py311.tar.gz, which does not exist"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_check_catches_a_planted_fault(repos, fault, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(repos["onnxruntime"], repo)
    plant, message = FAULTS[fault]
    plant(repo, repos["bundle-bert"])
    problems = check_repository(repo)
    assert any(message in p for p in problems), problems


def test_validate_triton_command_lists_every_problem(repos, tmp_path, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(repos["onnxruntime"], repo)
    assert main(["validate-triton", str(repo)]) == 0
    _plant_wrong_name(repo, None)
    _plant_dtype_mismatch(repo, None)
    assert main(["validate-triton", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "differs from its folder" in err and "TYPE_INT32 in config.pbtxt" in err
    assert err.count("\n  - ") >= 2


def test_export_triton_command_and_argument_errors(repos, tmp_path, capsys):
    bundle = repos["bundle-bert"]
    assert main(["export-triton", str(bundle), str(tmp_path / "r"), "--buckets", "16,48", "--max-batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "hashee_tokenizer/" in out and "model.onnx" in out
    for args, message in ((["--buckets", "16,64"], "exceeds the bundle's max length"),
                          (["--fp16"], "--backend tensorrt"), (["--buckets", "a,b"], "comma-separated"),
                          (["--max-batch-size", "0"], "positive")):
        assert main(["export-triton", str(bundle), str(tmp_path / "x"), *args]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_python_env_becomes_execution_env_path(repos, tmp_path):
    repo = export_triton(repos["bundle-bert"], tmp_path / "r", buckets=BUCKETS, max_batch_size=4,
                         python_env="/opt/envs/hashee-py311").repo
    config = parse_config(repo / "hashee_tokenizer" / "config.pbtxt")
    assert config.parameters["EXECUTION_ENV_PATH"].string_value == "/opt/envs/hashee-py311"
    assert check_repository(repo) == []  # the environment lives on the server: not looked for here
    with pytest.raises(ExportError, match="absolute path on the server"):
        export_triton(repos["bundle-bert"], tmp_path / "x", buckets=BUCKETS, python_env="envs/py311")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- slow tier: a real tritonserver
@pytest.mark.triton
def test_real_tritonserver_runs_the_tokenizer_and_the_ensemble(repos, tmp_path):
    from triton_server import find_tritonserver, has_backend, python_env, running_server

    binary = find_tritonserver()
    if binary is None:
        pytest.skip("no tritonserver found (set HASHEE_TRITONSERVER, put it on PATH, or install nvidia-pytriton)")
    env = python_env(binary)  # skips with the reason when no environment suits the Python-backend stub
    repo = tmp_path / "repo"
    export_triton(repos["bundle-bert"], repo, buckets=BUCKETS, max_batch_size=8, python_env=str(env.path))
    # the nvidia-pytriton wheel brings only the Python backend: then the tokenizer model is served alone
    full = has_backend("onnxruntime")
    models = None if full else ["hashee_tokenizer"]
    with Session.load(repos["bundle-bert"], backend="onnxruntime") as runtime:
        want = runtime.predict_logits(TEXTS)
        encoder = TextEncoder(runtime.bundle.tokenizer_dir, BUCKETS[-1], None)
        encoder.pad_id = runtime.encoder.pad_id
        table = runtime.bundle.exit_table
    tokens = layers = 0
    with running_server(repo, env, models) as server:
        for text in TEXTS:
            got = server.infer("hashee_tokenizer", [text])
            encoded = encoder.encode([text])
            ids, mask = pad_to(encoded.ids, bucket_width(int(encoded.lengths.max()), BUCKETS), encoder.pad_id)
            np.testing.assert_array_equal(got["input_ids"], ids)
            np.testing.assert_array_equal(got["attention_mask"], mask)
            tokens += int(mask.sum())
            layers += int(table[ids[mask.astype(bool)]].sum())
        batch = server.infer("hashee_tokenizer", TEXTS[:3])  # one request of three texts: one bucket for all
        encoded = encoder.encode(TEXTS[:3])
        ids, mask = pad_to(encoded.ids, bucket_width(int(encoded.lengths.max()), BUCKETS), encoder.pad_id)
        np.testing.assert_array_equal(batch["input_ids"], ids)
        tokens += int(mask.sum())
        layers += int(table[ids[mask.astype(bool)]].sum())
        if full:
            logits = np.stack([server.infer("hashee", [t])["logits"][0] for t in TEXTS]).astype(np.float32)
            np.testing.assert_allclose(logits, want, atol=1e-4)
        metrics = server.metrics()
        log = server.log_tail(10**7)
    gauge = re.search(r'^hashee_mean_exit_layer\{model="hashee_tokenizer",version="1"\} (\S+)$', metrics, re.MULTILINE)
    assert gauge is not None, metrics[-2000:]
    assert float(gauge.group(1)) == pytest.approx(layers / tokens)
    assert f"source {env.path}/bin/activate" in log  # the stub ran in the environment EXECUTION_ENV_PATH names
