"""``hashee infer``: local streaming vs a local 2-CPU Ray cluster over JSONL, CSV and Parquet, matched by id."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from hashee.cli import main
from hashee.samples import sample_texts

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'hashee[serve]')")
import pyarrow.parquet as pq  # noqa: E402

from hashee.serve.infer import actor_resources, read_results, resolve_columns  # noqa: E402

TIMEOUT = 240  # a hung pipeline fails the test instead of the whole run


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    texts = sample_texts(300)
    ids = [f"s{i:04d}" for i in range(len(texts))]
    (root / "in.jsonl").write_text("".join(json.dumps({"id": i, "sentence": t}) + "\n" for i, t in zip(ids, texts)))
    with open(root / "in.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "sentence"])
        writer.writerows(zip(ids, texts))
    (root / "in.tsv").write_text("id\tsentence\n" + "".join(f"{i}\t{t}\n" for i, t in zip(ids, texts)))
    pq.write_table(pa.table({"id": ids, "sentence": texts}), root / "in.parquet", row_group_size=64)
    return root


def _labels(path) -> dict:
    return {str(r["id"]): (r["label"], float(r["score"])) for r in read_results(path)}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "parquet"])
def test_local_engine_streams_every_format(tiny_bundles, inputs, fmt, tmp_path):
    out = tmp_path / f"out.{fmt}"
    assert main(["infer", str(tiny_bundles["bert"]), str(inputs / f"in.{fmt}"), str(out), "--quiet",
                 "--batch-size", "64"]) == 0
    rows = read_results(out)
    assert [str(r["id"]) for r in rows] == [f"s{i:04d}" for i in range(300)]  # local keeps input order
    from hashee.runtime import Session

    with Session.load(tiny_bundles["bert"], backend="onnxruntime") as session:
        want = session.predict(sample_texts(300))
    labels = [w["label"] for w in want]
    assert 60 <= labels.count(labels[0]) <= 240  # the tiny bundle's labels split: agreement means something
    assert [r["label"] for r in rows] == labels
    assert max(abs(float(r["score"]) - w["score"]) for r, w in zip(rows, want)) < 1e-4


def test_local_engine_numbers_rows_without_an_id(tiny_bundles, tmp_path):
    source = tmp_path / "plain.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_texts(5)))
    assert main(["infer", str(tiny_bundles["bert"]), str(source), str(tmp_path / "o.csv"), "--quiet"]) == 0
    assert [r["id"] for r in read_results(tmp_path / "o.csv")] == ["0", "1", "2", "3", "4"]


def test_column_resolution_and_errors(tiny_bundles, tmp_path, capsys):
    assert resolve_columns(["ID", "premise", "hypothesis"], None, None, None, tmp_path) == ("premise", "hypothesis", "ID")
    assert resolve_columns(["doc", "text"], None, None, "doc", tmp_path) == ("text", None, "doc")
    # a known second-text column beside the text is the pair, as hashee.data and hashee predict read it
    assert resolve_columns(["text", "text_b", "id"], None, None, None, tmp_path) == ("text", "text_b", "id")
    source = tmp_path / "x.jsonl"
    source.write_text(json.dumps({"body": "a"}) + "\n")
    assert main(["infer", str(tiny_bundles["bert"]), str(source), str(tmp_path / "o.jsonl")]) == 1
    assert "--text-column" in capsys.readouterr().err
    assert main(["infer", str(tiny_bundles["bert"]), str(source), str(tmp_path / "o2.jsonl"), "--text-column", "body",
                 "--engine", "ray"]) == 1
    assert "id column" in capsys.readouterr().err


def test_actor_pool_leaves_a_cpu_for_reading():
    assert actor_resources(2, 1) == 1.0 and actor_resources(2, 2) == 0.5
    assert actor_resources(16, 3) == 5.0
    from hashee.errors import InputError

    with pytest.raises(InputError, match="at least 2"):
        actor_resources(1, 1)


# ---------------------------------------------------------------- Ray: one local 2-CPU cluster per module
@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'hashee[serve]')")
    pytest.importorskip("ray.data")
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                       _temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


def test_ray_engine_gives_the_local_labels(tiny_bundles, inputs, ray_cluster, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    for fmt, actors in (("jsonl", 2), ("csv", 1), ("tsv", 1), ("parquet", 2)):
        local = tmp_path / f"local.{fmt}"
        assert main(["infer", str(tiny_bundles["bert"]), str(inputs / f"in.{fmt}"), str(local), "--quiet"]) == 0
        out = tmp_path / f"ray-{fmt}"
        done = subprocess.run([sys.executable, "-m", "hashee.cli", "infer", str(tiny_bundles["bert"]),
                               str(inputs / f"in.{fmt}"), str(out), "--engine", "ray", "--address", ray_cluster,
                               "--actors", str(actors), "--batch-size", "64", "--quiet"],
                              capture_output=True, text=True, timeout=TIMEOUT, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "300 rows" in done.stdout
        want, got = _labels(local), _labels(out)
        assert set(got) == set(want)
        assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}
        assert max(abs(got[k][1] - want[k][1]) for k in want) < 1e-4


def test_tsv_is_read_as_train_eval_and_predict_read_it(tiny_bundles, tmp_path):
    """`hashee infer BUNDLE data.tsv OUT`: a GLUE-style TSV (quotes kept as text, a pair header) works."""
    from hashee.runtime import Session

    texts = sample_texts(6)
    texts[0] = 'a "quoted start and no end'
    source = tmp_path / "pairs.tsv"
    source.write_text("index\tsentence1\tsentence2\tlabel\n"
                      + "".join(f"{i}\t{t}\t{t[::-1]}\t0\n" for i, t in enumerate(texts)))
    out = tmp_path / "out.tsv"
    assert main(["infer", str(tiny_bundles["bert"]), str(source), str(out), "--quiet"]) == 0
    rows = read_results(out)
    with Session.load(tiny_bundles["bert"], backend="onnxruntime") as session:
        want = session.predict([(t, t[::-1]) for t in texts])
    assert [r["label"] for r in rows] == [w["label"] for w in want]
    assert [r["id"] for r in rows] == [str(i) for i in range(6)]
