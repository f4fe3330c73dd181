"""``hashee bench`` and ``hashee demo``: the suite end to end on a tiny random bundle, real backends.

No timing thresholds: these tests check that every backend is measured or reported as skipped with
its reason, that the three outputs hold the required fields, and that the numbers are consistent
(parity with PyTorch, FLOPs ideal vs realised, median of the timed runs).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from hashee.cli import main
from hashee.samples import SST2_DEV, sample_texts

pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_bench(tiny_bundles, tmp_path_factory):
    """One CLI run of the suite on the tiny BERT bundle: batch sizes 1 and 4, 12 SST-2 dev sentences."""
    out = tmp_path_factory.mktemp("bench")
    status = main(["bench", str(tiny_bundles["bert"]), "--data", str(SST2_DEV), "--batch-sizes", "1,4",
                   "--repeats", "5", "--limit", "12", "--quiet", "-o", str(out)])
    assert status == 0
    return out, json.loads((out / "results.json").read_text())


def test_bench_measures_every_backend_side_by_side(tiny_bench):
    out, result = tiny_bench
    assert result["batch_sizes"] == [1, 4] and result["repeats"] == 5
    assert result["data"]["examples"] == 12 and result["data"]["tokens"]["total"] > 12
    by_key = {r["key"]: r for r in result["backends"]}
    assert set(by_key) == {"torch-dense", "onnxruntime-dense", "tensorrt-dense", "torch-hashee",
                           "onnxruntime-hashee", "tensorrt-hashee"}
    for key in ("torch-dense", "onnxruntime-dense", "torch-hashee", "onnxruntime-hashee"):
        record = by_key[key]
        assert record["status"] == "ok", record.get("reason")
        for size in ("1", "4"):
            point = record["results"][size]
            runs = point["pass_s"]["runs"]
            assert len(runs) == 5 and point["pass_s"]["median"] == statistics.median(runs)
            assert point["samples_per_s"] == pytest.approx(12 / statistics.median(runs))
            assert 0 < point["latency_ms"]["p50"] <= point["latency_ms"]["p99"]
            assert point["batches"] == (12 if size == "1" else 3)
        assert record["memory"]["peak_mib"] >= record["memory"]["loaded_mib"] > 0
        assert set(record["metric"]) >= {"accuracy", "main"} and 0 <= record["metric"]["accuracy"] <= 1
        # parity with an independent implementation of the same model, on the same batches: PyTorch
        # against ONNX Runtime, ONNX Runtime against PyTorch (never a record against itself)
        other = "onnxruntime" if record["runtime"] == "torch" else "torch"
        assert record["parity"]["reference"] == f"{other}-{record['model']}" != key
        assert record["parity"]["max_abs_diff"] < 1e-4 and record["parity"]["label_agreement"] == 1.0
        assert record["parity"]["max_abs_diff"] > 0  # two implementations never agree to the last bit here
    # the agreement means something: the tiny bundle predicts both labels on these 12 sentences
    from hashee.runtime import Session

    with Session.load(by_key["onnxruntime-hashee"]["bundle"], backend="onnxruntime") as session:
        labels = [r["label"] for r in session.predict(sample_texts(12))]
    assert len(set(labels)) == 2, labels
    # the dense ONNX Runtime baseline is the Optimum export, with ONNX Runtime's fusions applied: the graph
    # it measured holds fused contrib nodes and fewer nodes than the plain export
    assert "Optimum" in result["dense"]["origin"]
    assert by_key["onnxruntime-dense"]["device"] == "onnxruntime-cpu"
    import onnx

    fused = onnx.load(str(out / "work" / "dense-bundle-ort-optimized" / "model.onnx"), load_external_data=False)
    plain = onnx.load(str(out / "work" / "dense-bundle" / "model.onnx"), load_external_data=False)
    assert by_key["onnxruntime-dense"]["bundle"] == str(out / "work" / "dense-bundle-ort-optimized")
    contrib = {n.op_type for n in fused.graph.node if n.domain == "com.microsoft"}
    assert {"Attention", "SkipLayerNormalization"} <= contrib, contrib
    assert len(fused.graph.node) < len(plain.graph.node)


def test_bench_reports_flops_ideal_next_to_realised(tiny_bench):
    _, result = tiny_bench
    flops = result["flops"]
    assert flops["dense_gflops"] > flops["hashee_gflops"] > 0
    assert flops["speedup"] == pytest.approx(flops["dense_gflops"] / flops["hashee_gflops"])
    assert len(flops["active_fraction"]) == 4 and flops["active_fraction"][0] == 1.0
    by_key = {r["key"]: r for r in result["backends"]}
    for size in ("1", "4"):
        row = result["speedups"][size]
        assert row["flops_ideal"] == flops["speedup"]
        for runtime in ("onnxruntime", "torch"):
            realised = (by_key[f"{runtime}-hashee"]["results"][size]["samples_per_s"]
                        / by_key[f"{runtime}-dense"]["results"][size]["samples_per_s"])
            assert row[runtime]["realised"] == pytest.approx(realised)
            assert row[runtime]["realised_over_ideal"] == pytest.approx(realised / flops["speedup"])
        assert row["onnxruntime_hashee_over_torch_hashee"] > 0
        assert 0 <= result["padding"][size]["waste"] < 1
    assert result["padding"]["1"]["waste"] == 0.0  # a batch of one has no padding


def test_bench_reports_unavailable_tensorrt_as_skipped_with_reason(tiny_bench):
    out, result = tiny_bench
    for key in ("tensorrt-dense", "tensorrt-hashee"):
        record = next(r for r in result["backends"] if r["key"] == key)
        assert record["status"] == "skipped"
        assert "cannot run here" in record["reason"] and "results" not in record
    markdown = (out / "results.md").read_text()
    assert markdown.count("skipped: backend 'tensorrt' cannot run here") == 2
    assert "## Skipped" in markdown and "TensorRT HashEE:" in markdown


def test_bench_writes_markdown_table_and_png(tiny_bench):
    out, result = tiny_bench
    markdown = (out / "results.md").read_text()
    assert "| model | backend | accuracy | FLOPs speed-up | samples/s @ batch 1 | samples/s @ batch 4 |" in markdown
    for label in ("| dense | PyTorch |", "| dense | ONNX Runtime |", "| HashEE | PyTorch |", "| HashEE | ONNX Runtime |"):
        assert label in markdown
    assert "(1.00x)" in markdown and "realised / ideal" in markdown and "max abs logit difference" in markdown
    assert result["plot"].endswith("throughput.png")
    assert (out / "throughput.png").read_bytes()[:8] == PNG_MAGIC


def test_bench_with_only_unavailable_backends_still_writes_outputs(tiny_bundles, tmp_path):
    status = main(["bench", str(tiny_bundles["bert"]), "--data", str(SST2_DEV), "--backends", "tensorrt",
                   "--batch-sizes", "2", "--limit", "4", "--quiet", "-o", str(tmp_path)])
    assert status == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r["status"] for r in result["backends"]] == ["skipped", "skipped"]
    assert all(r["reason"] for r in result["backends"])
    assert (tmp_path / "throughput.png").read_bytes()[:8] == PNG_MAGIC
    assert "skipped: backend 'tensorrt'" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--backends", "torch,mxnet"], "unknown backend"),
    (["--batch-sizes", "1,x"], "--batch-sizes"),
    (["--repeats", "0"], "--repeats"),
])
def test_bench_user_errors_exit_1_with_one_line(args, message, tiny_bundles, tmp_path, capsys):
    status = main(["bench", str(tiny_bundles["bert"]), "--data", str(SST2_DEV), *args, "-o", str(tmp_path)])
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_long_configuration_joins_real_sentences_into_256_to_512_tokens(minilm_path, tmp_path):
    from tokenizers import Tokenizer

    from hashee.bench.configs import CONFIGS, resolve_data

    assert set(CONFIGS) == {"sst2-dev", "snli-dev", "long"}
    dataset = resolve_data("long", tmp_path, minilm_path / "tokenizer.json", limit=20)
    tokenizer = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    tokenizer.no_truncation()
    lines = dataset["file"].read_text().splitlines()
    assert lines[0] == "sentence" and len(lines) == 21
    lengths = [len(e.ids) for e in tokenizer.encode_batch(lines[1:])]
    assert all(256 <= n <= 512 for n in lengths), lengths
    assert max(lengths) - min(lengths) > 64  # spread over the range, not all at the minimum


def test_demo_quick_runs_the_whole_pipeline(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hashee.cli", "demo", "--quick", "--quiet", "-o", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4/4 benchmarking against dense" in out.stdout and "plot:" in out.stdout
    assert "| HashEE | ONNX Runtime |" in out.stdout
    result = json.loads((tmp_path / "bench" / "results.json").read_text())
    ok = {r["key"] for r in result["backends"] if r["status"] == "ok"}
    assert ok == {"torch-dense", "onnxruntime-dense", "torch-hashee", "onnxruntime-hashee"}
    assert (tmp_path / "bench" / "throughput.png").is_file()
