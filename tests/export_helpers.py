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


def final_linear(dense) -> torch.nn.Linear:
    """The last ``nn.Linear`` of a ``*ForSequenceClassification`` head (the one that makes the logits)."""
    classifier = dense.classifier
    return classifier.out_proj if hasattr(classifier, "out_proj") else classifier


def balance_head(model, tokenizer, texts: list[str] | None = None) -> None:
    """Shift the head's biases so that the labels of real sentences split roughly evenly.

    A tiny random model predicts (nearly) one class for every sentence, which makes label comparisons
    vacuous; centring each class's logit on the sample sentences (and, for two classes, the median of
    their difference on zero) leaves the logits' spread as it is and makes the argmax vary.
    """
    texts = texts if texts is not None else _sentences(200)
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        batch.pop("token_type_ids", None)  # single sentences: segment 0 throughout
        logits = model(**batch).logits.double()
        shift = logits.mean(0)
        if logits.shape[1] == 2:
            shift[1] = shift[0] + (logits[:, 1] - logits[:, 0]).median()
        linear = final_linear(model.dense)
        linear.bias.sub_(shift.to(linear.bias.dtype))


def _sentences(count: int) -> list[str]:
    with open(SST2_TRAIN, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [row[0] for _, row in zip(range(count), reader)]


def tiny_run(folder: Path, family: str, num_labels: int = 2, seed: int = 0, exit_layers: np.ndarray | None = None,
             balanced: bool = False, **config) -> Path:
    """Save a tiny random HashEE model of ``family`` with its tokenizer into ``folder``.

    ``balanced`` shifts the classification head so that its labels split roughly evenly over real
    sentences (see :func:`balance_head`); regression heads are left as they are.
    """
    from hashee.modeling import HashEEForSequenceClassification

    extra = dict(config)
    if num_labels == 1:
        extra.setdefault("problem_type", "regression")
    # Hugging Face's init (std 0.02) leaves a tiny random model's logits almost constant, which would make
    # a 1e-4 comparison meaningless; std 0.2 gives pre-activations of order 1 and logits that move.
    dense = tiny_dense(family, seed=seed, init_std=0.2, num_labels=num_labels, **extra)
    vocab = dense.config.vocab_size
    rng = np.random.default_rng(seed)
    if exit_layers is None:  # as real tables do, special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) exit at L
        exit_layers = rng.integers(1, 5, size=vocab)
        exit_layers[: len(SPECIALS) + 1] = 4
    layers = exit_layers
    table = ExitTable(layers, num_layers=4, kind="random", metadata={"seed": seed})
    model = HashEEForSequenceClassification.from_dense(dense, table).eval()
    tokenizer = tiny_tokenizer(folder, vocab, int(dense.config.pad_token_id or 0))
    if balanced and num_labels > 1:
        balance_head(model, tokenizer)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def random_batch(model, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, mask, exits)``: random ids of ``model``'s vocabulary in a 4 x 11 batch ([CLS] id 2 first), rows 1
    and 2 padded after 7 and 2 tokens, and random exit layers 1..L, drawn from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.exit_table_layers.shape[0], (4, 11), generator=gen)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 2:] = 0
    exits = torch.randint(1, model.num_layers + 1, ids.shape, generator=gen)
    return ids, mask, exits
