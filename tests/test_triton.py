"""``hashee export-triton`` / ``validate-triton``: the repository for both backends, each semantic check
against a planted fault, the tokenizer model.py under a fake of Triton's Python-backend module, and a
slow tier against a real tritonserver."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tritonclient", reason="tritonclient is not installed (pip install 'hashee[serve]')")
pytest.importorskip("onnxruntime")

import triton_fake  # noqa: E402
from export_helpers import tiny_run  # noqa: E402
from triton_fake import InferenceRequest, Logger, MetricFamily, load_model_py, strings  # noqa: E402

from hashee.cli import main  # noqa: E402
from hashee.errors import ExportError  # noqa: E402
from hashee.exporter import export  # noqa: E402
from hashee.runtime import Session  # noqa: E402
from hashee.runtime.batching import bucket_width, pad_to  # noqa: E402
from hashee.runtime.inputs import TextEncoder  # noqa: E402
from hashee.serve.triton import export_triton  # noqa: E402
from hashee.serve.triton_check import check_repository, parse_config, read_plan_spec  # noqa: E402

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
    export(root / "run-bert", root / "bundle-bert-trt", progress=False, max_length=48, target="tensorrt")
    out["bundle-bert-trt"] = root / "bundle-bert-trt"
    export_triton(out["bundle-bert-trt"], root / "repo-plan", backend="tensorrt-plan", buckets=BUCKETS, max_batch_size=8)
    out["tensorrt-plan"] = root / "repo-plan"
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


# ---------------------------------------------------------------- --backend tensorrt-plan
def test_plan_repository_parses_and_passes_the_checks(repos):
    import onnx

    repo = repos["tensorrt-plan"]
    script = repo / "hashee_model" / "build_plans.py"
    warnings = []
    assert check_repository(repo, allow_unbuilt_plans=True, warnings=warnings) == []
    (warning,) = warnings  # the plan is not built here: a warning that names the build script
    assert "no model.plan yet" in warning and str(script) in warning
    (problem,) = check_repository(repo)  # without the allowance the unbuilt plan is the one problem
    assert "no model.plan yet" in problem and "--allow-unbuilt-plans" in problem
    assert sorted(p.name for p in repo.iterdir()) == ["hashee", "hashee_model", "hashee_tokenizer"]
    from hashee.serve.triton_check import model_config_pb2

    pb2 = model_config_pb2()
    model = parse_config(repo / "hashee_model" / "config.pbtxt")
    assert model.platform == "tensorrt_plan" and model.max_batch_size == 8 and model.HasField("dynamic_batching")
    assert [(i.name, pb2.DataType.Name(i.data_type), list(i.dims)) for i in model.input] == [
        (name, "TYPE_INT32", [-1]) for name in ("input_ids", "attention_mask", "token_type_ids")]
    (group,) = model.instance_group
    assert pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU" and list(group.profile) == ["0", "1", "2"]
    assert [(w.name, w.batch_size, list(w.inputs["input_ids"].dims)) for w in model.model_warmup] == [
        ("smallest_bucket", 1, [16]), ("largest_bucket", 8, [48])]
    assert not (repo / "hashee_model" / "1" / "model.onnx").exists()  # Triton loads only model.plan from 1/
    # the build script: executable, its SPEC (read with ast) names the graph, the plan and one profile per bucket
    assert os.access(script, os.X_OK) and script.read_text().startswith("#!/usr/bin/env python3\n")
    spec = read_plan_spec(script)
    assert (spec["model"], spec["onnx"], spec["plan"], spec["strongly_typed"]) == (
        "hashee_model", "onnx/model.onnx", "1/model.plan", True)
    assert [p["bucket"] for p in spec["profiles"]] == BUCKETS
    for width, profile in zip(BUCKETS, spec["profiles"]):
        assert profile["shapes"] == {name: [[1, width], [8, width], [8, width]]
                                     for name in ("input_ids", "attention_mask", "token_type_ids")}
    proto = onnx.load(str(repo / "hashee_model" / spec["onnx"]))
    graph = proto.graph
    assert [(i.name, i.type.tensor_type.elem_type, len(i.type.tensor_type.shape.dim)) for i in graph.input] == [
        (name, onnx.TensorProto.INT32, 2) for name in ("input_ids", "attention_mask", "token_type_ids")]
    ops = {n.op_type for n in graph.node} | {n.op_type for f in proto.functions for n in f.node}
    assert not any(n.domain == "com.microsoft" for n in graph.node) and "Attention" not in ops


def test_plan_graph_serves_the_runtime_logits(repos):
    """The plan's ONNX (int32, table embedded) on ONNX Runtime CPU gives the runtime's logits."""
    import onnxruntime as ort

    repo = repos["tensorrt-plan"]
    tokenizer = _tokenizer(repo)
    session = ort.InferenceSession(str(repo / "hashee_model" / "onnx" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    with Session.load(repos["bundle-bert-trt"], backend="onnxruntime") as runtime:
        want = runtime.predict_logits(TEXTS)
    (response,) = tokenizer.execute([InferenceRequest(TEXT=strings(TEXTS))])
    np.testing.assert_allclose(session.run(["logits"], response.as_dict())[0], want, atol=1e-4)


def _load_script(path):
    spec = importlib.util.spec_from_file_location(f"build_plans_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_script_dry_run_and_a_build_against_a_fake_tensorrt(repos, tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(repos["tensorrt-plan"], repo)
    script = repo / "hashee_model" / "build_plans.py"
    # --dry-run needs neither TensorRT nor a GPU (nor hashee: run it in a clean interpreter)
    out = subprocess.run([sys.executable, "-I", str(script), "--dry-run"], capture_output=True, text=True,
                         timeout=60, check=True, cwd=tmp_path).stdout
    assert "onnx/model.onnx -> 1/model.plan" in out
    assert [line.split(":")[0] for line in out.splitlines()[1:]] == [f"profile {i} (bucket {w})"
                                                                   for i, w in enumerate(BUCKETS)]
    fake = triton_fake.FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    assert _load_script(script).main(["--timing-cache", str(tmp_path / "cache.bin")]) == 0
    calls = {name: value for name, value, *_ in fake.calls}
    assert calls["network"] == 1 << 0  # STRONGLY_TYPED
    assert calls["parse"] == str(repo / "hashee_model" / "onnx" / "model.onnx")
    assert calls["workspace"] == 4096 << 20
    assert calls["build"] == [{name: ((1, w), (8, w), (8, w)) for name in ("input_ids", "attention_mask",
                                                                          "token_type_ids")} for w in BUCKETS]
    assert (repo / "hashee_model" / "1" / "model.plan").read_bytes() == b"ftrt fake plan"
    assert (tmp_path / "cache.bin").read_bytes() == b"cache"
    assert check_repository(repo) == []  # built: no warning, no problem
    assert main(["validate-triton", str(repo)]) == 0


def test_plan_fp16_takes_the_bundles_fp16_graph(repos, tmp_path):
    """Strongly typed plans take precision from the graph: --fp16 serves model.fp16.onnx, table embedded."""
    import onnx

    bundle = tmp_path / "bundle"
    shutil.copytree(repos["bundle-bert-trt"], bundle)
    assert main(["convert", str(bundle)]) == 0
    repo = export_triton(bundle, tmp_path / "repo", backend="tensorrt-plan", buckets=BUCKETS, max_batch_size=8,
                         fp16=True).repo
    spec = read_plan_spec(repo / "hashee_model" / "build_plans.py")
    assert spec["precision"] == "fp16"
    graph = onnx.load(str(repo / "hashee_model" / spec["onnx"])).graph
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.INT32] * 3
    assert check_repository(repo, allow_unbuilt_plans=True) == []


def _rewrite_spec(repo, change):
    from hashee.serve.triton import write_plan_script

    script = repo / "hashee_model" / "build_plans.py"
    spec = read_plan_spec(script)
    change(spec)
    write_plan_script(script, spec)


def _plant_profile_batch(repo, bundle):
    _rewrite_spec(repo, lambda spec: spec["profiles"][1]["shapes"]["input_ids"].__setitem__(2, [16, 32]))


def _plant_missing_profile(repo, bundle):
    _rewrite_spec(repo, lambda spec: spec["profiles"].pop())


def _plant_plan_onnx_gone(repo, bundle):
    (repo / "hashee_model" / "onnx" / "model.onnx").unlink()


def _plant_plan_dtype(repo, bundle):
    _edit(repo / "hashee_model" / "config.pbtxt", '{ name: "attention_mask" data_type: TYPE_INT32',
          '{ name: "attention_mask" data_type: TYPE_INT64')


def _plant_not_executable(repo, bundle):
    (repo / "hashee_model" / "build_plans.py").chmod(0o644)


def _plant_tokenizer_buckets(repo, bundle):
    _edit(repo / "hashee_tokenizer" / "config.pbtxt", 'string_value: "16,32,48"', 'string_value: "16,32,64"')


def _plant_unlisted_profiles(repo, bundle):
    _edit(repo / "hashee_model" / "config.pbtxt", 'profile: [ "0", "1", "2" ]', 'profile: [ "0" ]')


def _plant_unfilled_script(repo, bundle):
    from hashee.serve.triton import PLAN_SCRIPT_SOURCE

    shutil.copyfile(PLAN_SCRIPT_SOURCE, repo / "hashee_model" / "build_plans.py")  # the template: SPEC = {}


def _plant_empty_plan(repo, bundle):
    (repo / "hashee_model" / "1" / "model.plan").write_bytes(b"")


def _plant_onnx_as_plan(repo, bundle):  # the classic mistake: the ONNX file copied to where the plan goes
    shutil.copyfile(repo / "hashee_model" / "onnx" / "model.onnx", repo / "hashee_model" / "1" / "model.plan")


def _plant_text_as_plan(repo, bundle):
    (repo / "hashee_model" / "1" / "model.plan").write_bytes(b"placeholder, not a TensorRT plan\n" * 4)


ORT, PLAN = "onnxruntime", "tensorrt-plan"  # the repositories (keys of the repos fixture) faults are planted in
#: fault -> (the repository it is planted in, how, what check_repository must say)
FAULTS = {
    "wrong name": (ORT, _plant_wrong_name, "differs from its folder"),
    "missing version folder": (ORT, _plant_missing_version, "no version folder"),
    "broken ensemble mapping": (ORT, _plant_broken_mapping, "neither an ensemble input nor an output of an earlier step"),
    "non-batch-first input": (ORT, _plant_non_batch_first, "not batch-first"),
    "dtype mismatch": (ORT, _plant_dtype_mismatch, "TYPE_INT32 in config.pbtxt but INT64"),
    "not a ModelConfig": (ORT, _plant_unparsable, "does not parse as Triton's ModelConfig"),
    "relative EXECUTION_ENV_PATH": (ORT, _plant_relative_python_env, "must be an absolute path on the server"),
    "missing packed environment": (ORT, _plant_missing_packed_env, "py311.tar.gz, which does not exist"),
    "profile batch over max_batch_size": (PLAN, _plant_profile_batch, "batch 16 > max_batch_size 8"),
    "a bucket without a profile": (PLAN, _plant_missing_profile, "serves bucket 48"),
    "ONNX file missing": (PLAN, _plant_plan_onnx_gone, "builds from 'onnx/model.onnx', which is not in"),
    "config dtype vs ONNX": (PLAN, _plant_plan_dtype, "TYPE_INT64 in config.pbtxt but INT32"),
    "script not executable": (PLAN, _plant_not_executable, "is not executable"),
    "tokenizer buckets differ": (PLAN, _plant_tokenizer_buckets, "pads to buckets [16, 32, 64]"),
    "profiles not listed": (PLAN, _plant_unlisted_profiles, "instance_group lists profiles ['0']"),
    "empty plan": (PLAN, _plant_empty_plan, "model.plan is empty"),
    "ONNX file as the plan": (PLAN, _plant_onnx_as_plan, "model.plan is not a TensorRT plan: it starts with b'\\x08"),
    "text as the plan": (PLAN, _plant_text_as_plan, "model.plan is not a TensorRT plan: it starts with b'plac'"),
    "SPEC not filled in": (PLAN, _plant_unfilled_script, "has no readable SPEC (SPEC is empty)"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_check_catches_a_planted_fault(repos, fault, tmp_path):
    source, plant, message = FAULTS[fault]
    repo = tmp_path / "repo"
    shutil.copytree(repos[source], repo)
    plant(repo, repos["bundle-bert"])
    problems = check_repository(repo, allow_unbuilt_plans=True)  # a plan model's unbuilt plan is not the fault
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize("tag", [b"ftrt", b"ptrt"])
def test_a_plan_with_tensorrt_s_magic_tag_passes_the_header_check(repos, tag, tmp_path):
    """Only the header is read here (no TensorRT on this machine): a plan-like file passes, the build warning goes."""
    repo = tmp_path / "repo"
    shutil.copytree(repos["tensorrt-plan"], repo)
    (repo / "hashee_model" / "1" / "model.plan").write_bytes(tag + bytes(range(256)) * 8)
    warnings = []
    assert check_repository(repo, warnings=warnings) == [] and warnings == []


def test_plan_commands(repos, tmp_path, capsys):
    repo = repos["tensorrt-plan"]
    assert main(["validate-triton", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "build_plans.py" in err and "--allow-unbuilt-plans" in err
    assert main(["validate-triton", str(repo), "--allow-unbuilt-plans"]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "1 warning(s)" in captured.out
    assert main(["export-triton", str(repos["bundle-bert-trt"]), str(tmp_path / "p"), "--backend", "tensorrt-plan",
                 "--buckets", "16,48", "--max-batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "build_plans.py" in out and "model.plan is not built yet" in out
    assert [p["bucket"] for p in read_plan_spec(tmp_path / "p" / "hashee_model" / "build_plans.py")["profiles"]] == [
        16, 48]
    for bundle, args, message in ((repos["bundle-bert"], [], "--target tensorrt"),
                                  (repos["bundle-bert-trt"], ["--fp16"], "hashee convert")):
        assert main(["export-triton", str(bundle), str(tmp_path / "x"), "--backend", "tensorrt-plan", "--buckets", "16,48",
                     *args]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- slow tier: a real tritonserver
@pytest.mark.triton
def _real_server_repo(repos, tmp_path):
    """(repository, stub environment) for a real tritonserver; skips with the reason when there is none."""
    from triton_server import find_tritonserver, python_env

    binary = find_tritonserver()
    if binary is None:
        pytest.skip("no tritonserver found (set HASHEE_TRITONSERVER, put it on PATH, or install nvidia-pytriton)")
    env = python_env(binary)  # skips with the reason when no environment suits the Python-backend stub
    repo = tmp_path / "repo"
    export_triton(repos["bundle-bert"], repo, buckets=BUCKETS, max_batch_size=8, python_env=str(env.path))
    return repo, env


@pytest.mark.triton
def test_real_tritonserver_runs_the_tokenizer(repos, tmp_path):
    from triton_server import running_server

    repo, env = _real_server_repo(repos, tmp_path)
    with Session.load(repos["bundle-bert"], backend="onnxruntime") as runtime:
        encoder = TextEncoder(runtime.bundle.tokenizer_dir, BUCKETS[-1], None)
        encoder.pad_id = runtime.encoder.pad_id
        table = runtime.bundle.exit_table
    tokens = layers = 0
    with running_server(repo, env, ["hashee_tokenizer"]) as server:
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
        metrics = server.metrics()
        log = server.log_tail(10**7)
    gauge = re.search(r'^hashee_mean_exit_layer\{model="hashee_tokenizer",version="1"\} (\S+)$', metrics, re.MULTILINE)
    assert gauge is not None, metrics[-2000:]
    assert float(gauge.group(1)) == pytest.approx(layers / tokens)
    assert f"source {env.path}/bin/activate" in log  # the stub ran in the environment EXECUTION_ENV_PATH names


@pytest.mark.triton
def test_real_tritonserver_runs_the_ensemble(repos, tmp_path):
    from triton_server import has_backend, running_server

    if not has_backend("onnxruntime"):  # the nvidia-pytriton wheel brings only the Python backend
        pytest.skip("this tritonserver has no onnxruntime backend: the ensemble cannot load (tokenizer tested alone)")
    repo, env = _real_server_repo(repos, tmp_path)
    with Session.load(repos["bundle-bert"], backend="onnxruntime") as runtime:
        want = runtime.predict_logits(TEXTS)
    with running_server(repo, env, None) as server:
        logits = np.stack([server.infer("hashee", [t])["logits"][0] for t in TEXTS]).astype(np.float32)
    np.testing.assert_allclose(logits, want, atol=1e-4)
