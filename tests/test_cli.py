"""The ``hashee`` command line: help without torch, subcommands end to end, one-line user errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hashee.cli import main
from hashee.exit_table import ExitTable
from hashee.samples import SST2_DEV, SST2_TRAIN


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hashee.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_subcommands_without_importing_torch():
    code = (
        "import sys\n"
        "from hashee.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "for name in ('hash', 'train', 'eval', 'export', 'validate', 'predict', 'convert', 'calibrate',"
        " 'build-engine', 'export-triton', 'validate-triton', 'infer', 'bench', 'demo'):\n"
        "    try:\n        main([name, '--help'])\n"
        "    except SystemExit as e:\n        assert e.code in (0, None), (name, e.code)\n"
        "heavy = [m for m in ('torch', 'transformers', 'sklearn', 'scipy', 'onnx', 'onnxruntime', 'optimum',"
        " 'tensorrt', 'onnxconverter_common', 'ray', 'pyarrow', 'tritonclient')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    for name in ("hash", "train", "eval", "export", "validate", "predict", "convert", "calibrate", "build-engine",
                 "export-triton", "validate-triton", "infer", "bench", "demo"):
        assert name in out.stdout
    assert "--tokenizer-instances" in out.stdout and "--gpus-per-actor" in out.stdout
    assert "--batch-sizes" in out.stdout and "--quick" in out.stdout
    assert "--chunk-size" in out.stdout and "--with-reference" in out.stdout
    assert "--target-speedup" in out.stdout and "--dense" in out.stdout
    assert "--token-outputs" in out.stdout and "--tolerance" in out.stdout
    assert "--precision" in out.stdout and "--method" in out.stdout and "--samples" in out.stdout
    assert "--profile" in out.stdout and "--timing-cache" in out.stdout and "--workspace" in out.stdout
    assert "--embed-exit-table" in out.stdout


def test_hash_command_writes_a_loadable_table(tmp_path, minilm_path, capsys):
    status = main(["hash", "--tokenizer", str(minilm_path), "--data", str(SST2_TRAIN), "--kind", "frequency",
                   "--layers", "6", "--buckets", "3", "-o", str(tmp_path / "table")])
    assert status == 0
    report = capsys.readouterr().out
    assert "FLOPs reduction" in report
    table = ExitTable.load(tmp_path / "table", vocab_size=30522)
    assert table.kind == "frequency" and set(np.unique(table.layers)) == {1, 3, 5, 6}


def test_hash_command_calibrates_a_budget(tmp_path, minilm_path, capsys):
    status = main(["hash", "--tokenizer", str(minilm_path), "--data", str(SST2_DEV), "--layers", "6",
                   "--buckets", "6", "--target-speedup", "2.2", "-o", str(tmp_path / "budget")])
    assert status == 0
    table = ExitTable.load(tmp_path / "budget")
    achieved = table.metadata["calibration"]["achieved_speedup"]
    assert abs(achieved / 2.2 - 1) <= 0.05
    assert f"{achieved:.2f}x" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["hash", "--tokenizer", "/no/such/folder", "--data", str(SST2_DEV), "--layers", "6", "--buckets", "6",
          "-o", "unused"], "does not exist"),
        (["hash", "--tokenizer", "TOKENIZER", "--data", str(SST2_DEV), "--layers", "6", "--buckets", "7",
          "-o", "unused"], "at most 6 buckets"),
        (["hash", "--tokenizer", "TOKENIZER", "--kind", "random", "--layers", "6", "--buckets", "6",
          "--target-speedup", "2", "-o", "unused"], "frequency"),
        (["eval", "/no/such/run", "--data", str(SST2_DEV)], "run"),
    ],
)
def test_user_errors_exit_1_with_one_line(args, message, minilm_path, tmp_path):
    args = [str(minilm_path) if a == "TOKENIZER" else str(tmp_path / a) if a == "unused" else a for a in args]
    out = run_cli(*args)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr
