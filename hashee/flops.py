"""Analytic FLOPs of a HashEE encoder for a batch, given every token's exit layer.

Per layer, with ``n`` non-padding tokens of a sequence, ``m`` of them active, hidden size ``d`` and
FFN size ``f`` (DESIGN.md section 1, the seed's Table 10), the multiply-accumulates are::

    queries m*d*d + keys/values 2*n*d*d + scores m*n*d + weighted values m*n*d
    + output projection m*d*d + FFN 2*m*d*f

and FLOPs = 2 x MACs.  The dense model is the same formula with ``m = n`` in every layer.  The
classification head (pooler or dense layer, then the classifier) and an embedding projection
(ALBERT, ELECTRA with a smaller embedding) are counted once per sequence / token in both.  A model
cut to its first K layers (a static-depth model) is compared with the full-depth dense model
(``EncoderDims.reference_layers``).
Padding costs nothing here: these are the FLOPs of the work, not of a padded implementation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EncoderDims:
    """The sizes that determine an encoder's FLOPs."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_labels: int = 2
    embedding_size: int | None = None  # set when embeddings are projected to hidden_size
    # depth of the dense model FLOPs are compared with, when it is not this encoder's (a model cut to
    # its first layers is measured against the full-depth model it came from)
    reference_layers: int | None = None

    @property
    def dense_layers(self) -> int:
        """Depth of the dense reference: ``reference_layers`` if set, else ``num_layers``."""
        return self.reference_layers or self.num_layers

    def against(self, reference_layers: int | None) -> "EncoderDims":
        """The same sizes, compared with a dense model of ``reference_layers`` layers."""
        return dataclasses.replace(self, reference_layers=reference_layers)

    @classmethod
    def from_config(cls, config: Any) -> "EncoderDims":
        """Read the sizes from a Hugging Face config of any supported backbone family."""
        if getattr(config, "model_type", None) == "distilbert":
            return cls(config.n_layers, config.dim, config.hidden_dim, config.num_labels)
        embedding = getattr(config, "embedding_size", None)
        if embedding is not None and embedding == config.hidden_size:
            embedding = None
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                   config.num_labels, embedding)


@dataclass(frozen=True)
class FlopsReport:
    """FLOPs of one batch (or corpus) with and without early exit."""

    dense_flops: float
    hashee_flops: float
    num_tokens: int
    num_sequences: int
    active_fraction: tuple[float, ...]  # per layer: active tokens / non-padding tokens

    @property
    def speedup(self) -> float:
        """Dense FLOPs divided by HashEE FLOPs (the FLOPs reduction factor)."""
        return self.dense_flops / self.hashee_flops if self.hashee_flops else float("inf")

    def __add__(self, other: "FlopsReport") -> "FlopsReport":
        total = self.num_tokens + other.num_tokens
        if total:
            fractions = tuple((a * self.num_tokens + b * other.num_tokens) / total
                              for a, b in zip(self.active_fraction, other.active_fraction))
        else:
            fractions = self.active_fraction
        return FlopsReport(self.dense_flops + other.dense_flops, self.hashee_flops + other.hashee_flops,
                           total, self.num_sequences + other.num_sequences, fractions)


def layer_macs(m: np.ndarray, n: np.ndarray, d: int, f: int) -> np.ndarray:
    """MACs of one layer for sequences with ``m`` active out of ``n`` tokens (element-wise)."""
    m = np.asarray(m, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    return 2 * m * d * d + 2 * n * d * d + 2 * m * n * d + 2 * m * d * f


def batch_flops(exit_layers: Any, dims: EncoderDims) -> FlopsReport:
    """FLOPs of a batch whose tokens exit at ``exit_layers`` ([batch, seq], 0 marks padding).

    Also accepts a list of 1-D arrays (one per sequence, no padding).
    """
    if isinstance(exit_layers, (list, tuple)):
        width = max((len(x) for x in exit_layers), default=0)
        padded = np.zeros((len(exit_layers), width), dtype=np.int64)
        for row, seq in zip(padded, exit_layers):
            row[: len(seq)] = np.asarray(seq)
        exits = padded
    else:
        exits = np.asarray(exit_layers.cpu() if hasattr(exit_layers, "cpu") else exit_layers)
    if exits.ndim != 2:
        raise ValueError(f"exit_layers must be [batch, seq], got shape {exits.shape}")
    exits = exits.astype(np.int64)
    if exits.size and exits.max() > dims.num_layers:
        raise ValueError(f"exit layers go up to {exits.max()} but the encoder has {dims.num_layers} layers")
    d, f, L = dims.hidden_size, dims.intermediate_size, dims.num_layers
    n = (exits > 0).sum(axis=1)  # [batch]
    layers = np.arange(1, L + 1)
    m = (exits[:, None, :] >= layers[None, :, None]).sum(axis=2)  # [batch, L]
    hashee = layer_macs(m, n[:, None], d, f).sum()
    dense = layer_macs(n, n, d, f).sum() * dims.dense_layers
    extra = 0.0
    if dims.embedding_size:
        extra += float(n.sum()) * dims.embedding_size * d
    extra += float((n > 0).sum()) * (d * d + d * dims.num_labels)
    total_tokens = int(n.sum())
    fractions = tuple(float(m[:, i].sum() / total_tokens) if total_tokens else 0.0 for i in range(L))
    return FlopsReport(2 * (dense + extra), 2 * (hashee + extra), total_tokens, int(exits.shape[0]), fractions)
