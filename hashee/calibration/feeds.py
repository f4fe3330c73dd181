"""ONNX feeds for a bundle built from real text: the bundle's tokenizer and exit table, no PyTorch model.

:class:`BundleFeeder` tokenises sentences (or sentence pairs) the way the runtime will, and builds
``exit_masks`` [num_layers, batch, sequence] from ``exit_table.npy``: token ``t`` is active in layer
``l`` when ``table[t] >= l`` and it is not padding.  The FP16 check, the INT8 calibration reader and
the accuracy comparison all feed the graphs through it, so they see exactly what a deployment sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hashee.errors import BundleError, DataError


def exit_masks(table: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray, num_layers: int) -> np.ndarray:
    """bool [num_layers, batch, sequence]: row ``l-1`` marks the tokens active in layer ``l``."""
    exits = table[input_ids] * (attention_mask != 0)
    return np.stack([exits >= layer for layer in range(1, num_layers + 1)])


@dataclass
class TextSet:
    """Sentences read from a data file, with gold label ids when the file has usable labels."""

    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.texts)


def read_texts(data_file: str | Path, meta: dict[str, Any], samples: int | None = None) -> TextSet:
    """The first ``samples`` examples of ``data_file`` (all when ``None``), labels mapped by the bundle."""
    from hashee.data import load_examples

    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise DataError(f"the number of samples must be a positive integer, got {samples!r}")
    regression = meta.get("task", {}).get("problem_type") == "regression"
    examples = load_examples(data_file, regression=regression)
    stop = len(examples) if samples is None else min(samples, len(examples))
    labels = None
    if examples.has_labels and not regression:
        label2id = {str(v): int(k) for k, v in meta.get("task", {}).get("id2label", {}).items()} or None
        try:
            labels = examples.label_ids(label2id)[:stop]
        except DataError:
            labels = None
    pairs = list(examples.pairs[:stop]) if examples.pairs is not None else None
    return TextSet(list(examples.texts[:stop]), pairs, labels)


class BundleFeeder:
    """Tokeniser + exit table of a bundle, turning text batches into ONNX feeds."""

    def __init__(self, bundle: str | Path, meta: dict[str, Any] | None = None) -> None:
        from transformers import AutoTokenizer

        from hashee.exporter.bundle import TABLE_FILE, TOKENIZER_DIR, read_bundle

        self.bundle = Path(bundle)
        self.meta = meta if meta is not None else read_bundle(self.bundle)
        if self.meta.get("kind") != "hashee":
            raise BundleError(f"{self.bundle} is a {self.meta.get('kind')!r} bundle; reduced precision is built "
                              f"for HashEE bundles (hashee export without --dense)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.bundle / TOKENIZER_DIR))
        self.table = np.load(self.bundle / TABLE_FILE, allow_pickle=False).astype(np.int64)
        self.num_layers = int(self.meta["backbone"]["num_layers"])
        self.max_length = int(self.meta.get("max_length") or 512)
        self.input_names = [spec["name"] for spec in self.meta["onnx"]["inputs"]]

    def feed(self, texts: list[str], pairs: list[str] | None = None,
             exit_layers: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The ONNX inputs for one padded batch (exit layers from the table unless given; none for a graph
        that embeds its exit table, which has no ``exit_masks`` input)."""
        args = (texts, pairs) if pairs is not None else (texts,)
        encoded = self.tokenizer(*args, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="np")
        feed = {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items() if k in self.input_names}
        if "exit_masks" not in self.input_names:  # --embed-exit-table: the graph looks the table up itself
            return feed
        if exit_layers is None:
            feed["exit_masks"] = exit_masks(self.table, feed["input_ids"], feed["attention_mask"], self.num_layers)
        else:
            exits = np.asarray(exit_layers) * (feed["attention_mask"] != 0)
            feed["exit_masks"] = np.stack([exits >= layer for layer in range(1, self.num_layers + 1)])
        return feed

    def batches(self, data: TextSet, batch_size: int = 32, sort: bool = False) -> Iterator[tuple[slice, dict]]:
        """``(rows, feed)`` over ``data`` in order (``sort``: by length, so padding is small)."""
        order = np.arange(len(data))
        if sort:
            lengths = [len(ids) for ids in self.tokenizer(data.texts, truncation=True,
                                                          max_length=self.max_length)["input_ids"]]
            order = np.argsort(-np.asarray(lengths), kind="stable")
        for start in range(0, len(data), batch_size):
            rows = order[start:start + batch_size]
            pairs = [data.pairs[i] for i in rows] if data.pairs is not None else None
            yield rows, self.feed([data.texts[i] for i in rows], pairs)

    def edge_feeds(self, seed: int = 0) -> list[tuple[str, dict[str, np.ndarray]]]:
        """The exporter's validation cases (real text, batch of 1, only specials, extreme and random exits)."""
        from hashee.exporter.validate import sample_texts

        texts = sample_texts()
        base = self.feed(texts)
        shape = base["input_ids"].shape
        rng = np.random.default_rng(seed)
        return [
            ("text, padded batch of mixed lengths", base),
            ("batch of 1", self.feed(texts[:1])),
            ("only special tokens", self.feed(["", ""])),
            ("every token exits at layer 1", self.feed(texts, exit_layers=np.ones(shape, dtype=np.int64))),
            ("all tokens active", self.feed(texts, exit_layers=np.full(shape, self.num_layers, dtype=np.int64))),
            ("sentence pairs", self.feed(texts[:8], texts[8:16])),
            ("random exit layers", self.feed(texts, exit_layers=rng.integers(1, self.num_layers + 1, size=shape))),
        ]
