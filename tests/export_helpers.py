"""Tiny HashEE run folders (model + tokenizer) of every backbone family, for the exporter tests."""

from __future__ import annotations

import collections
import csv
import re
from pathlib import Path

import numpy as np
import torch

from hashee import ExitTable
from hashee.samples import SST2_TRAIN
from tiny import tiny_dense

SPECIALS = ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _words(count: int) -> list[str]:
    """The ``count`` most frequent lower-case words of the bundled SST-2 sample (ties by spelling)."""
    counter: collections.Counter = collections.Counter()
    with open(SST2_TRAIN, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        for row in reader:
            counter.update(re.findall(r"[a-z]+", row[0].lower()))
    return [w for w, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:count]]


def tiny_tokenizer(folder: Path, vocab_size: int, pad_id: int):
    """A WordPiece tokenizer of exactly ``vocab_size`` ids with [PAD] at ``pad_id``."""
    from transformers import BertTokenizerFast

    vocab = list(SPECIALS)
    vocab.insert(pad_id, "[PAD]")
    vocab += _words(vocab_size - len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=64)


def tiny_run(folder: Path, family: str, num_labels: int = 2, seed: int = 0, exit_layers: np.ndarray | None = None,
             **config) -> Path:
    """Save a tiny random HashEE model of ``family`` with its tokenizer into ``folder``."""
    from hashee.modeling import HashEEForSequenceClassification

    extra = dict(config)
    if num_labels == 1:
        extra.setdefault("problem_type", "regression")
    dense = tiny_dense(family, seed=seed, num_labels=num_labels, **extra)
    # Hugging Face's init (std 0.02) leaves a tiny random model's logits almost constant, which would make
    # a 1e-4 comparison meaningless; std 0.2 gives pre-activations of order 1 and logits that move.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in dense.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    vocab = dense.config.vocab_size
    rng = np.random.default_rng(seed)
    if exit_layers is None:  # as real tables do, special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) exit at L
        exit_layers = rng.integers(1, 5, size=vocab)
        exit_layers[: len(SPECIALS) + 1] = 4
    layers = exit_layers
    table = ExitTable(layers, num_layers=4, kind="random", metadata={"seed": seed})
    model = HashEEForSequenceClassification.from_dense(dense, table).eval()
    tokenizer = tiny_tokenizer(folder, vocab, int(dense.config.pad_token_id or 0))
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
