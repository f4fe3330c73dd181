"""Graph feeds for a bundle built from real text, through the runtime: no PyTorch model, no second tokenizer.

:class:`BundleFeeder` holds a :class:`~hashee.runtime.Session` on the bundle's fp32 ``model.onnx``: its
``TextEncoder`` tokenises sentences (or pairs) and its input checks build the feed, with ``exit_masks``
from ``exit_table.npy`` (core rule :func:`hashee.exit_table.layer_masks`), or none when the graph embeds
its table.  The FP16 check, the INT8 calibration reader and the accuracy comparison feed every graph
through it and run each file on a Session of its own (:meth:`BundleFeeder.session_for`), so they see
exactly what a deployment sees.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hashee.bundle import bundle_view, open_bundle, task_labels
from hashee.data import load_examples
from hashee.errors import BundleError, DataError
from hashee.exit_table import layer_masks
from hashee.runtime.inputs import TruncationWarning
from hashee.runtime.session import Session
from hashee.samples import forced_exit_layers, validation_cases

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
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise DataError(f"the number of samples must be a positive integer, got {samples!r}")
    regression = meta.get("task", {}).get("problem_type") == "regression"
    examples = load_examples(data_file, regression=regression)
    stop = len(examples) if samples is None else min(samples, len(examples))
    labels = None
    if examples.has_labels and not regression:
        try:
            labels = examples.label_ids({name: i for i, name in enumerate(task_labels(meta))})[:stop]
        except DataError:
            labels = None
    pairs = list(examples.pairs[:stop]) if examples.pairs is not None else None
    return TextSet(list(examples.texts[:stop]), pairs, labels)


class BundleFeeder:
    """A bundle's runtime encoder, exit table and input checks, turning text batches into graph feeds."""

    def __init__(self, bundle: str | Path, meta: dict[str, Any] | None = None) -> None:
        self.bundle = Path(bundle)
        view = bundle_view(self.bundle, meta) if meta is not None else open_bundle(self.bundle)
        if view.kind != "hashee":
            raise BundleError(f"{self.bundle} is a {view.kind!r} bundle; reduced precision is built "
                              f"for HashEE bundles (hashee export without --dense)")
        self.view, self.meta = view, view.meta
        self.session = Session.for_model_file(view, view.model_file)
        self.table, self.num_layers, self.max_length = view.exit_table, view.num_layers, view.max_length
        self.input_names = list(self.session.input_names)

    @property
    def takes_exit_masks(self) -> bool:
        return self.session.takes_exit_masks

    def session_for(self, model_file: str | Path) -> Session:
        """A Session running ``model_file`` (e.g. ``model.fp16.onnx``) with this bundle's encoder and table."""
        return Session.for_model_file(self.view, model_file)

    def feed(self, texts: list[str], pairs: list[str] | None = None,
             exit_layers: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The graph inputs for one padded batch (exit layers from the table unless given)."""
        inputs: list[Any] = list(zip(texts, pairs)) if pairs is not None else list(texts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncationWarning)
            arrays = self.session.tokenize(inputs)
        masks = None
        if exit_layers is not None:
            masks = layer_masks(exit_layers, arrays["attention_mask"], self.num_layers)
        return self.session.feed(arrays["input_ids"], arrays["attention_mask"], arrays.get("token_type_ids"), masks)

    def batches(self, data: TextSet, batch_size: int = 32, sort: bool = False) -> Iterator[tuple[np.ndarray, dict]]:
        """``(rows, feed)`` over ``data`` in order (``sort``: by length, so padding is small)."""
        order = np.arange(len(data))
        if sort:
            encoded = self.session.encoder.encode(list(data.texts), list(data.pairs) if data.pairs is not None else None)
            order = np.argsort(-encoded.lengths, kind="stable")
        for start in range(0, len(data), batch_size):
            rows = order[start:start + batch_size]
            pairs = [data.pairs[i] for i in rows] if data.pairs is not None else None
            yield rows, self.feed([data.texts[i] for i in rows], pairs)

    def edge_feeds(self, seed: int = 0) -> list[tuple[str, dict[str, np.ndarray]]]:
        """The exporter's validation cases (:func:`hashee.samples.validation_cases`) as feeds; the forced-exit
        cases only where the graph takes ``exit_masks``."""
        cases = []
        for name, inputs, mode in validation_cases():
            if mode is not None and not self.takes_exit_masks:
                continue
            pairs = [b for _, b in inputs] if inputs and isinstance(inputs[0], tuple) else None
            texts = [a for a, _ in inputs] if pairs is not None else list(inputs)
            exits = None
            if mode is not None:
                shape = self.feed(texts, pairs)["input_ids"].shape
                exits = forced_exit_layers(mode, shape, self.num_layers, seed)
            cases.append((name, self.feed(texts, pairs, exit_layers=exits)))
        return cases

    def close(self) -> None:
        self.session.close()
