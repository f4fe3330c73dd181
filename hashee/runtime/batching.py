"""Exit masks, batch plans and padding: all numpy, no per-token Python loops.

**Cost-aware batching.** A HashEE item's cost is known before it runs: its length and how many of
its tokens are still active in each layer (the exit table looked up on its ids).  The graph pays
K/V projections for every slot of the padded ``[batch, sequence]`` grid and attention for a
``[batch, widest active prefix]`` query grid per layer, so a batch costs what its longest and its
most-active item cost, times the batch size.  :func:`plan_batches` sorts items by length, then by
their active-token profile from the deepest layer down, and cuts the sorted order into batches:
neighbours have near-equal length and exit profile, so padding and idle query slots waste little.
Results go back to input order through the index arrays.
"""

from __future__ import annotations

import numpy as np

from hashee.errors import InputError
from hashee.exit_table import exit_masks

__all__ = ["active_profile", "bucket_width", "check_batch_size", "exit_masks", "pad", "pad_to", "plan_batches"]


def active_profile(ids: list[np.ndarray], table: np.ndarray | None, num_layers: int) -> np.ndarray:
    """int64 ``[items, L]``: how many tokens of each item are active in layers ``1..L``."""
    count = len(ids)
    lengths = np.fromiter((len(i) for i in ids), dtype=np.int64, count=count)
    if table is None or count == 0:
        return np.repeat(lengths[:, None], num_layers, axis=1)
    flat = np.concatenate(ids) if count else np.zeros(0, dtype=np.int64)
    item = np.repeat(np.arange(count), lengths)
    exits = table[flat]
    histogram = np.bincount(item * num_layers + (exits - 1), minlength=count * num_layers).reshape(count, num_layers)
    return np.cumsum(histogram[:, ::-1], axis=1)[:, ::-1]  # tokens with exit >= l


def plan_batches(profile: np.ndarray, batch_size: int, cost_aware: bool = True) -> list[np.ndarray]:
    """Index arrays of the items of each batch.

    ``cost_aware=False`` keeps input order; otherwise items are ordered by (length, active tokens in
    layer L, in layer L-1, ...) and cut into batches of ``batch_size``.
    """
    count = profile.shape[0]
    if cost_aware and count > batch_size:
        keys = tuple(profile[:, layer] for layer in range(1, profile.shape[1])) + (profile[:, 0],)
        order = np.lexsort(keys)  # the last key (length) is the primary one
    else:
        order = np.arange(count)
    return [order[start:start + batch_size] for start in range(0, count, batch_size)]


def pad(rows: list[np.ndarray], index: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values [len(index), longest], attention_mask)`` of the chosen rows, padded on the right."""
    lengths = np.fromiter((len(rows[i]) for i in index), dtype=np.int64, count=len(index))
    width = int(lengths.max()) if len(index) else 0
    mask = np.arange(width)[None, :] < lengths[:, None]
    values = np.full((len(index), width), pad_id, dtype=np.int64)
    if len(index):
        values[mask] = np.concatenate([rows[i] for i in index])
    return values, mask.astype(np.int64)


def bucket_width(length: int, buckets: list[int] | tuple[int, ...]) -> int:
    """The smallest bucket that holds ``length`` tokens (the largest when none does: the caller truncates).

    Triton's dynamic batcher only batches requests whose shapes match, so a serving tokenizer pads to
    a few fixed widths instead of each request's longest item.
    """
    ordered = sorted(int(b) for b in buckets)
    if not ordered:
        raise InputError("buckets must name at least one width")
    for width in ordered:
        if length <= width:
            return width
    return ordered[-1]


def pad_to(rows: list[np.ndarray], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values [len(rows), width], attention_mask)``: every row padded on the right to ``width``."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    if len(rows) and int(lengths.max()) > width:
        raise InputError(f"a row of {int(lengths.max())} tokens does not fit width {width}")
    mask = np.arange(width)[None, :] < lengths[:, None]
    values = np.full((len(rows), width), pad_id, dtype=np.int64)
    if len(rows):
        values[mask] = np.concatenate(rows)
    return values, mask.astype(np.int64)


def check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)
