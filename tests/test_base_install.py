"""The serving install (issue 11): a fresh virtual environment with only ``pip install <project>`` (no extras)
runs ``hashee predict`` and ``hashee infer --engine local`` on a bundle written by the full install and gets
the same labels; commands that need an extra exit 1 naming it.  Needs PyPI (CI has it); slow, not deselected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx")

from export_helpers import tiny_run  # noqa: E402

from hashee.exporter import export  # noqa: E402
from hashee.runtime import Session  # noqa: E402
from hashee.samples import sample_texts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE_GOAL_MB = 300


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


@pytest.mark.slow
def test_a_fresh_base_install_predicts_the_full_installs_labels(tmp_path):
    bundle = tmp_path / "bundle"
    export(tiny_run(tmp_path / "run", "bert", seed=11), bundle, progress=False, max_length=48)
    texts = sample_texts(12)
    with Session.load(bundle, backend="onnxruntime", device="cpu") as session:
        expected = [r["label"] for r in session.predict(texts)]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([str(bin_dir / "pip"), "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
                             capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stderr[-3000:]
    freeze = subprocess.run([str(bin_dir / "pip"), "freeze"], capture_output=True, text=True, env=env).stdout.lower()
    for heavy in ("torch", "transformers", "onnx==", "optimum", "scikit-learn", "scipy", "matplotlib"):
        assert f"\n{heavy}" not in f"\n{freeze}", f"the base install pulled {heavy}"

    run = subprocess.run([str(bin_dir / "hashee"), "predict", str(bundle), *texts], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert [line.split("\t")[0] for line in run.stdout.splitlines()] == expected

    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    infer = subprocess.run([str(bin_dir / "hashee"), "infer", str(bundle), str(data), str(tmp_path / "out.jsonl"),
                            "--engine", "local"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert infer.returncode == 0, infer.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == expected

    export_cmd = subprocess.run([str(bin_dir / "hashee"), "export", str(tmp_path / "run"), "-o", str(tmp_path / "x")],
                                capture_output=True, text=True, env=env, cwd=tmp_path)
    assert export_cmd.returncode == 1 and "pip install 'hashee[export]'" in export_cmd.stderr
    assert "Traceback" not in export_cmd.stderr
    torch_backend = subprocess.run([str(bin_dir / "hashee"), "predict", str(bundle), "--backend", "torch", "a film"],
                                   capture_output=True, text=True, env=env, cwd=tmp_path)
    assert torch_backend.returncode == 1 and "pip install 'hashee[torch]'" in torch_backend.stderr

    size = folder_mb(venv)
    print(f"\nbase install virtual environment: {size:.0f} MB")
    (tmp_path / "size.txt").write_text(f"{size:.1f}\n")
    assert size < SIZE_GOAL_MB, f"the base install takes {size:.0f} MB (goal: under {SIZE_GOAL_MB} MB)"
