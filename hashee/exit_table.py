"""The exit table: one exit layer (1..L) for every token id of a vocabulary.

Building tables from data lives in :mod:`hashee.calibration`; this module is the plain container
with its validation and its on-disk form (``exit_table.npy`` + ``exit_table.json``, no pickle).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hashee.errors import ExitTableError
from hashee.jsonio import read_json

TABLE_FILE = "exit_table.npy"
META_FILE = "exit_table.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExitTable:
    """Maps each vocabulary id to the layer after which that token stops being updated.

    Attributes:
        layers: integer array of shape ``[vocab_size]`` with values in ``1..num_layers``.
        num_layers: L, the depth of the encoder the table is meant for.
        kind: how the table was made (``random``, ``frequency``, ``mi``, ``cluster``, ...).
        metadata: JSON-serialisable facts about the build (buckets, seed, bucket layers, ...).
    """

    layers: np.ndarray
    num_layers: int
    kind: str = "custom"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        layers = np.asarray(self.layers)
        if layers.ndim != 1 or layers.size == 0:
            raise ExitTableError(
                f"an exit table is a non-empty 1-D array (one entry per vocabulary id); got shape "
                f"{tuple(layers.shape)}"
            )
        if not np.issubdtype(layers.dtype, np.integer):
            raise ExitTableError(
                f"exit table values must be integers, got dtype {layers.dtype}; cast with "
                f"np.asarray(table, dtype=np.int16)"
            )
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, (int, np.integer)) or self.num_layers < 1:
            raise ExitTableError(f"num_layers must be a positive integer, got {self.num_layers!r}")
        lo, hi = int(layers.min()), int(layers.max())
        if lo < 1 or hi > self.num_layers:
            raise ExitTableError(
                f"exit table values must lie in 1..{self.num_layers} (the number of layers); found "
                f"values in {lo}..{hi}"
            )
        dtype = np.uint8 if self.num_layers < 256 else np.int16
        object.__setattr__(self, "layers", layers.astype(dtype, copy=True))
        object.__setattr__(self, "num_layers", int(self.num_layers))
        self.layers.setflags(write=False)

    @property
    def vocab_size(self) -> int:
        """Number of token ids the table covers."""
        return int(self.layers.shape[0])

    def check_vocab_size(self, vocab_size: int, what: str = "the tokenizer") -> None:
        """Raise :class:`ExitTableError` unless the table has exactly ``vocab_size`` entries."""
        if self.vocab_size != int(vocab_size):
            raise ExitTableError(
                f"the exit table has {self.vocab_size} entries but {what} has a vocabulary of "
                f"{vocab_size}; rebuild the table for this tokenizer (hashee hash --tokenizer ...)"
            )

    def lookup(self, input_ids: np.ndarray) -> np.ndarray:
        """Exit layers for an integer array of token ids (any shape)."""
        ids = np.asarray(input_ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ExitTableError(
                f"token ids must lie in 0..{self.vocab_size - 1} for this exit table; found "
                f"{int(ids.min())}..{int(ids.max())}"
            )
        return self.layers[ids]

    def histogram(self) -> dict[int, int]:
        """How many vocabulary ids exit at each layer."""
        counts = np.bincount(self.layers, minlength=self.num_layers + 1)
        return {layer: int(counts[layer]) for layer in range(1, self.num_layers + 1)}

    def to_meta(self) -> dict[str, Any]:
        """The JSON description stored next to the array (and in model configs)."""
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "num_layers": self.num_layers,
            "vocab_size": self.vocab_size,
            "metadata": self.metadata,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``exit_table.npy`` and ``exit_table.json`` into ``directory`` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / TABLE_FILE, self.layers, allow_pickle=False)
        (directory / META_FILE).write_text(json.dumps(self.to_meta(), indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, vocab_size: int | None = None) -> "ExitTable":
        """Read a table written by :meth:`save`; checks values and, if given, the vocabulary size."""
        directory = Path(directory)
        table_path, meta_path = directory / TABLE_FILE, directory / META_FILE
        for path in (table_path, meta_path):
            if not path.is_file():
                raise ExitTableError(f"{path} is missing; an exit table folder holds {TABLE_FILE} and {META_FILE}")
        meta = read_json(meta_path, ExitTableError, "re-save the table")
        version = meta.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ExitTableError(
                f"{meta_path} has format version {version!r}; this hashee reads version {FORMAT_VERSION} "
                f"or older: upgrade hashee"
            )
        try:
            layers = np.load(table_path, allow_pickle=False)
        except ValueError as exc:
            raise ExitTableError(f"{table_path} is not a plain numpy array ({exc})") from exc
        table = cls.from_meta(layers, meta)
        if vocab_size is not None:
            table.check_vocab_size(vocab_size)
        return table

    @classmethod
    def from_meta(cls, layers: np.ndarray, meta: dict[str, Any]) -> "ExitTable":
        """Rebuild a table from an array and the dict produced by :meth:`to_meta`."""
        if "num_layers" not in meta:
            raise ExitTableError("exit table metadata lacks 'num_layers'")
        expected = meta.get("vocab_size")
        if expected is not None and int(expected) != int(np.asarray(layers).shape[0]):
            raise ExitTableError(
                f"exit table metadata says {expected} entries but the array has {np.asarray(layers).shape[0]}"
            )
        return cls(layers=layers, num_layers=int(meta["num_layers"]), kind=str(meta.get("kind", "custom")),
                   metadata=dict(meta.get("metadata", {})))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExitTable):
            return NotImplemented
        return (self.num_layers == other.num_layers and self.kind == other.kind
                and self.metadata == other.metadata and np.array_equal(self.layers, other.layers))

    __hash__ = None  # type: ignore[assignment]


def layer_masks(exit_layers: Any, attention_mask: Any, num_layers: int) -> np.ndarray:
    """The exit-mask rule: bool ``[L, batch, seq]`` whose row ``l-1`` marks the real (non-padding) tokens
    whose exit layer is ``>= l``.  ``exit_layers`` is int ``[batch, seq]``; every stage builds masks here."""
    exits = np.asarray(exit_layers) * (np.asarray(attention_mask) != 0)
    return exits[None, :, :] >= np.arange(1, int(num_layers) + 1, dtype=exits.dtype)[:, None, None]


def exit_masks(input_ids: Any, attention_mask: Any, table: np.ndarray, num_layers: int) -> np.ndarray:
    """:func:`layer_masks` of the exit layers the table gives each token id (``table[input_ids]``)."""
    return layer_masks(np.asarray(table)[np.asarray(input_ids)], attention_mask, num_layers)
