"""Every ``hashee`` subcommand against every bundle kind it accepts: each combination succeeds or exits 1
with a one-line ``hashee CMD: error: ...`` message, never a traceback.

Kinds: dense (``export --dense``), HashEE, ``--embed-exit-table``, ``--target tensorrt``, fp16
(``export --precision fp16``) and int8 (``calibrate`` on the tensorrt-target bundle).  Everything is
made once per session from one tiny run that ``hashee train`` writes, through the CLI itself, and
the CLI runs in-process (``hashee.cli.main``): an exception that escapes it fails the test with its
traceback.  ``demo`` is left to tests/test_bench.py (it trains MiniLM).
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from export_helpers import tiny_tokenizer  # noqa: E402
from tiny import tiny_dense  # noqa: E402

from hashee.cli import main  # noqa: E402
from hashee.samples import SST2_DEV  # noqa: E402

KINDS = ("hashee", "dense", "embed", "tensorrt", "fp16", "int8")
MAX_LENGTH = "32"


def _has_tensorrt_and_gpu() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return torch.cuda.is_available()


def run(capsys, *args) -> tuple[int, str, str]:
    """``hashee ARGS`` in-process: (status, stdout, stderr); the status must be 0 or 1, never a traceback."""
    capsys.readouterr()
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    command = str(args[0])
    assert status in (0, 1), (args, status, err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out
    if status == 1:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(f"hashee {command}: error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], err  # one line, the last one written
    return status, out, err


def ok(capsys, *args) -> str:
    status, out, err = run(capsys, *args)
    assert status == 0, err[-2000:]
    return out


def fails(capsys, message: str, *args) -> str:
    status, _, err = run(capsys, *args)
    assert status == 1, f"hashee {' '.join(map(str, args))} should exit 1 with {message!r}"
    assert message in err.strip().splitlines()[-1], err
    return err


@pytest.fixture(scope="session")
def kinds(tmp_path_factory):
    """A tiny backbone, a run `hashee train` writes from it, and one bundle of every kind."""
    root = tmp_path_factory.mktemp("matrix")
    backbone = root / "backbone"
    tiny_dense("bert", seed=4).save_pretrained(str(backbone))
    tiny_tokenizer(backbone, 120, 0).save_pretrained(str(backbone))
    data = root / "dev.tsv"
    data.write_text("".join(SST2_DEV.read_text(encoding="utf-8-sig").splitlines(keepends=True)[:33]))
    built = {"root": root, "data": data, "backbone": backbone, "run": root / "run"}
    steps = [
        ["train", "--backbone", backbone, "--train", data, "--max-steps", "2", "--batch-size", "8",
         "--max-length", MAX_LENGTH, "--quiet", "-o", root / "run"],
        ["export", root / "run", "-o", root / "hashee", "--max-length", MAX_LENGTH, "--quiet"],
        ["export", root / "run", "-o", root / "dense", "--dense", "--max-length", MAX_LENGTH, "--quiet"],
        ["export", root / "run", "-o", root / "embed", "--embed-exit-table", "--max-length", MAX_LENGTH, "--quiet"],
        ["export", root / "run", "-o", root / "tensorrt", "--target", "tensorrt", "--max-length", MAX_LENGTH,
         "--quiet"],
        ["export", root / "run", "-o", root / "fp16", "--precision", "fp16", "--max-length", MAX_LENGTH, "--quiet"],
    ]
    for args in steps:
        assert main([str(a) for a in args]) == 0, args
    shutil.copytree(root / "tensorrt", root / "int8")
    assert main(["calibrate", str(root / "int8"), "--data", str(data), "--samples", "16", "--quiet"]) == 0
    for kind in KINDS:
        built[kind] = root / kind
    return built


def _copy(kinds, kind, name):
    target = kinds["root"] / f"{name}-{kind}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(kinds[kind], target)
    return target


def test_the_bundles_are_of_the_kinds_named(kinds):
    meta = {k: json.loads((kinds[k] / "hashee.json").read_text()) for k in KINDS}
    assert meta["dense"]["kind"] == "dense" and meta["hashee"]["kind"] == "hashee"
    assert "exit_masks" not in [i["name"] for i in meta["embed"]["onnx"]["inputs"]]
    assert "exit_masks" in [i["name"] for i in meta["hashee"]["onnx"]["inputs"]]
    assert meta["tensorrt"]["onnx"]["target"] == "tensorrt"
    assert "model.fp16.onnx" in meta["fp16"]["files"] and "model.int8.onnx" in meta["int8"]["files"]


@pytest.mark.parametrize("kind", KINDS)
def test_validate(kinds, kind, capsys):
    out = ok(capsys, "validate", kinds[kind], "--data", kinds["data"], "--quiet")
    assert "label agreement with PyTorch: 100.00 %" in out


@pytest.mark.parametrize("kind", KINDS)
def test_predict_texts_and_files(kinds, kind, capsys, tmp_path):
    out = ok(capsys, "predict", kinds[kind], "a fine movie", "a dull one", "--quiet")
    assert len(out.strip().splitlines()) == 2
    ok(capsys, "predict", kinds[kind], "--input", kinds["data"], "--output", tmp_path / "p.jsonl", "--quiet")
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 32


@pytest.mark.parametrize("kind", KINDS)
def test_infer_reads_tsv(kinds, kind, capsys, tmp_path):
    ok(capsys, "infer", kinds[kind], kinds["data"], tmp_path / "out.jsonl", "--quiet")
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 32


@pytest.mark.parametrize("kind", KINDS)
def test_convert(kinds, kind, capsys):
    bundle = _copy(kinds, kind, "convert")
    if kind == "dense":
        fails(capsys, "'dense' bundle; reduced precision is built for HashEE bundles", "convert", bundle)
    else:
        assert "model.fp16.onnx: max |difference| vs fp32" in ok(capsys, "convert", bundle)


@pytest.mark.parametrize("kind", KINDS)
def test_calibrate(kinds, kind, capsys):
    bundle = _copy(kinds, kind, "calibrate")
    args = ("calibrate", bundle, "--data", kinds["data"], "--samples", "8", "--quiet")
    if kind == "dense":
        fails(capsys, "'dense' bundle; reduced precision is built for HashEE bundles", *args)
    else:
        assert "model.int8.onnx" in ok(capsys, *args)


@pytest.mark.parametrize("kind", KINDS)
def test_build_engine(kinds, kind, capsys):
    precision = {"fp16": "fp16", "int8": "int8"}.get(kind, "fp32")
    args = ("build-engine", kinds[kind], "--precision", precision, "--profile", f"1x2:2x16:4x{MAX_LENGTH}", "--quiet")
    if kind == "dense":
        fails(capsys, "'dense' bundle; build-engine reads HashEE bundles", *args)
    elif kind in ("hashee", "embed", "fp16"):
        fails(capsys, "was exported for onnxruntime; TensorRT needs a bundle exported with --target tensorrt", *args)
    elif _has_tensorrt_and_gpu():
        ok(capsys, *args)
    else:
        fails(capsys, "TensorRT engines need TensorRT and an NVIDIA GPU", *args)


@pytest.mark.parametrize("kind", KINDS)
def test_export_triton_and_validate_triton(kinds, kind, capsys):
    repo = kinds["root"] / f"triton-{kind}"
    args = ("export-triton", kinds[kind], repo, "--buckets", "16,32", "--max-batch-size", "4")
    if kind == "dense":
        fails(capsys, "dense bundle; export-triton serves HashEE bundles", *args)
        return
    ok(capsys, *args)
    ok(capsys, "validate-triton", repo)
    if kind == "tensorrt":
        plan = kinds["root"] / "triton-plan"
        ok(capsys, "export-triton", kinds[kind], plan, "--backend", "tensorrt-plan", "--buckets", "16,32",
           "--max-batch-size", "4")
        ok(capsys, "validate-triton", plan, "--allow-unbuilt-plans")


@pytest.mark.parametrize("kind", KINDS)
def test_bench(kinds, kind, capsys):
    args = ("bench", kinds[kind], "--data", kinds["data"], "--backends", "onnxruntime", "--batch-sizes", "4",
            "--repeats", "1", "--warmup", "0", "--limit", "8", "--quiet", "-o", kinds["root"] / f"bench-{kind}")
    if kind == "dense":
        fails(capsys, "is a dense bundle; hashee bench measures a HashEE bundle", *args)
    else:
        assert "results:" in ok(capsys, *args)


# ---------------------------------------------------------------- the run folder `hashee train` wrote
def test_eval_hash_and_export_take_the_run_folder(kinds, capsys):
    assert "accuracy" in ok(capsys, "eval", kinds["run"], "--data", kinds["data"], "--quiet").lower()
    out = ok(capsys, "hash", "--tokenizer", kinds["run"], "--data", kinds["data"], "--layers", "4", "--buckets", "2",
             "-o", kinds["root"] / "table")
    assert "FLOPs reduction" in out
    ok(capsys, "hash", "--tokenizer", kinds["run"], "--kind", "cluster", "--layers", "4", "--buckets", "2",
       "-o", kinds["root"] / "table-cluster")
    fails(capsys, "is not empty", "export", kinds["run"], "-o", kinds["hashee"], "--quiet")


# ---------------------------------------------------------------- data the user gave, never reinterpreted
def test_a_glue_paraphrase_file_named_by_index_trains_two_classes(kinds, capsys):
    source = kinds["root"] / "mrpc.tsv"
    rows = [f"{i % 2}\t{i}\t{i + 1}\t{s}\t{s[::-1]}" for i, s in
            enumerate(line.split("\t")[0] for line in SST2_DEV.read_text(encoding="utf-8-sig").splitlines()[1:17])]
    source.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "\n".join(rows) + "\n")
    run_dir = kinds["root"] / "run-mrpc"
    ok(capsys, "train", "--backbone", kinds["backbone"], "--train", source, "--text-column", "3", "--pair-column", "4",
       "--label-column", "0", "--max-steps", "1", "--batch-size", "8", "--max-length", MAX_LENGTH, "--quiet",
       "-o", run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["0", "1"]  # `Quality` is the header, not a third class


def test_a_header_read_as_data_is_refused(kinds, capsys, tmp_path):
    source = tmp_path / "headed.tsv"
    source.write_text("Stars\tOpinion\n1\tgood\n0\tbad\n1\tfine\n")
    fails(capsys, "the first row looks like a header", "train", "--backbone", kinds["backbone"], "--train", source,
          "--text-column", "1", "--label-column", "0", "--max-steps", "1", "--max-length", MAX_LENGTH, "--quiet",
          "-o", tmp_path / "run")
    assert not (tmp_path / "run").exists()
    fails(capsys, "the first row looks like a header", "eval", kinds["run"], "--data", source, "--text-column", "1",
          "--label-column", "0", "--quiet")
    cola = tmp_path / "cola.tsv"
    cola.write_text("gj04\t1\t\tOur friends won't buy this.\ngj04\t0\t*\tThey drank the pub.\n")
    fails(capsys, "GLUE CoLA files have no header: name the columns with --text-column 3 --label-column 1",
          "eval", kinds["run"], "--data", cola, "--quiet")


def test_user_errors_on_any_bundle_are_one_line(kinds, capsys, tmp_path):
    fails(capsys, "does not exist", "predict", tmp_path / "nothing", "text")
    fails(capsys, "does not exist", "validate", kinds["hashee"], "--data", tmp_path / "none.tsv")
    broken = _copy(kinds, "hashee", "broken")
    (broken / "exit_table.npy").write_bytes(b"not the table")
    for args in (("predict", broken, "text"), ("validate", broken, "--data", kinds["data"], "--quiet"),
                 ("convert", broken), ("infer", broken, kinds["data"], tmp_path / "o.jsonl", "--quiet"),
                 ("export-triton", broken, tmp_path / "repo")):
        fails(capsys, "exit_table.npy", *args)  # its sha256 fails, or (infer opens it unverified) it does not load
