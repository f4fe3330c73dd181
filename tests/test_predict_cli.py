"""`hashee predict`: texts on the command line, files streamed to JSON lines in input order."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from hashee.cli import main  # noqa: E402
from hashee.exporter.validate import sample_texts  # noqa: E402
from hashee.runtime import Session  # noqa: E402


@pytest.fixture(scope="module")
def session(tiny_bundles):
    with Session.load(tiny_bundles["bert"], backend="onnxruntime") as s:
        yield s


def test_texts_on_the_command_line(tiny_bundles, session, capsys):
    texts = ["a fine film .", "dull"]
    assert main(["predict", str(tiny_bundles["bert"]), "--backend", "onnxruntime", *texts]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    expected = session.predict(texts)
    assert [line.split("\t") for line in lines] == [[r["label"], f"{r['score']:.4f}", t] for r, t in zip(expected, texts)]
    assert "backend onnxruntime-cpu" in captured.err


@pytest.mark.parametrize("fmt", ["txt", "tsv", "jsonl", "pairs.tsv", "pairs.jsonl"])
def test_file_streams_to_jsonl_in_order(tiny_bundles, session, tmp_path, capsys, fmt):
    texts = sample_texts(16) * 4 + ["", "x " * 100]  # 66 records, read 10 at a time
    pairs = list(zip(texts, reversed(texts)))
    path = tmp_path / f"in.{fmt.split('.')[-1]}"
    if fmt == "txt":
        path.write_text("\n".join(texts) + "\n")
        items = texts
    elif fmt == "tsv":
        path.write_text("id\tsentence\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(texts)))
        items = texts
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": 0}) + "\n" for t in texts))
        items = texts
    elif fmt == "pairs.tsv":
        path.write_text("sentence1\tsentence2\n" + "".join(f"{a}\t{b}\n" for a, b in pairs))
        items = pairs
    else:
        path.write_text("".join(json.dumps({"premise": a, "hypothesis": b}) + "\n" for a, b in pairs))
        items = pairs
    out = tmp_path / "out.jsonl"
    status = main(["predict", str(tiny_bundles["bert"]), "--input", str(path), "--output", str(out),
                   "--chunk-size", "10", "--batch-size", "4", "--backend", "onnxruntime"])
    assert status == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    expected = session.predict(items)
    assert [r["label"] for r in written] == [r["label"] for r in expected]
    assert np.allclose([r["score"] for r in written], [r["score"] for r in expected], atol=1e-6)
    err = capsys.readouterr().err
    truncated = session.encoder.encode(*([list(x) for x in zip(*items)] if fmt.startswith("pairs") else [items])).truncated
    assert "66 prediction(s) written" in err and f"{truncated} of 66 input(s)" in err and "predict" in err


@pytest.mark.parametrize("args, message", [
    (["BUNDLE"], "either texts or --input"),
    (["BUNDLE", "a", "--input", "x.txt"], "either texts or --input"),
    (["BUNDLE", "--input", "MISSING.txt"], "does not exist"),
    (["BUNDLE", "--input", "BAD.jsonl"], "BAD.jsonl:2: not valid JSON"),
    (["BUNDLE", "--backend", "tensorrt", "a"], "backend 'tensorrt' cannot run here"),
    (["NOBUNDLE", "a"], "does not exist; create one with hashee export"),
])
def test_user_errors_exit_1_with_one_line(tiny_bundles, tmp_path, capsys, args, message):
    (tmp_path / "BAD.jsonl").write_text('{"text": "ok"}\n{oops\n')
    mapping = {"BUNDLE": str(tiny_bundles["bert"]), "NOBUNDLE": str(tmp_path / "none"),
               "MISSING.txt": str(tmp_path / "missing.txt"), "BAD.jsonl": str(tmp_path / "BAD.jsonl")}
    status = main(["predict", "--quiet", *[mapping.get(a, a) for a in args]])
    assert status == 1
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "backend onnxruntime" not in line]
    assert len(err) == 1 and "error:" in err[0] and message in err[0], err
