"""The prefix layout's host-side plan (issue 14): numpy only, importable without torch or onnx.

Exit layers are known from the token ids before the model runs.  :func:`plan_prefix` sorts each
sequence's tokens by exit layer (descending, stable), so the tokens active in layer ``l`` are a prefix
of every row, and describes that prefix by *shapes* rather than values: ``exit_mask_l`` is bool
``[batch, W_l]`` with ``W_l`` the most tokens active in layer ``l`` in any row (``W_1`` = the sequence
length; at least 1).  A model in prefix mode (PyTorch :mod:`hashee.modeling.prefix`, or an ONNX graph
exported with ``--layout prefix``) computes queries, attention output and FFN on ``hidden[:, :W_l]``,
keys and values on every real token, keeps the old state where the mask is false and concatenates
``hidden[:, W_l:]`` back: every shape in the graph is then a function of input shapes.

``position_ids`` holds the original position of the token in each slot (a permutation of ``0..S-1``
per row, padding included), so a model embeds each token at its own position and can restore the
original order (token outputs; the [CLS] state for the head) from this input alone.

**Buckets.** With ``bucket=True`` the batch is padded to a power of two (copies of the last row,
dropped again by :meth:`PrefixBatch.restore_rows`), the sequence and every ``W_l`` are rounded up to
a multiple of 8 (capped at ``max_length``): few distinct shapes, so TensorRT profiles and CUDA graphs
are reused.  Extra columns are padding; extra mask slots are false; neither changes an answer.

**Cost model.** :class:`CostModel` estimates a plan's time from its analytic FLOPs
(:func:`hashee.flops.layer_macs` on the padded shapes it really computes) plus a per-launch overhead,
against the masked dense form (every ``W_l`` = the sequence length), so a runtime can send a batch to
the dense path when HashEE would not pay.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from hashee.errors import InputError

SEQ_MULTIPLE = 8  # bucketed sequence lengths and widths are multiples of this


def mask_name(layer: int) -> str:
    """The graph input of layer ``layer``'s mask (1-based): ``exit_mask_1`` ... ``exit_mask_L``."""
    return f"exit_mask_{layer}"


def mask_names(num_layers: int) -> list[str]:
    return [mask_name(layer) for layer in range(1, num_layers + 1)]


def _round_up(value: int, multiple: int, cap: int) -> int:
    return max(value, min(cap, -(-value // multiple) * multiple))


def _next_power_of_two(value: int) -> int:
    return 1 << max(0, int(value) - 1).bit_length()


@dataclass(frozen=True)
class PrefixBatch:
    """One batch in the prefix layout (arrays sorted per row by exit layer, descending)."""

    input_ids: np.ndarray  # int64 [B, S], sorted
    attention_mask: np.ndarray  # int64 [B, S], sorted (real tokens first)
    position_ids: np.ndarray  # int64 [B, S]: original position of each slot (a permutation per row)
    token_type_ids: np.ndarray | None  # int64 [B, S], sorted, or None
    exit_masks: tuple[np.ndarray, ...]  # bool [B, W_l] for l = 1..L
    rows: int  # rows of the caller's batch (B may be larger: bucket padding)
    length: int  # sequence length of the caller's batch (S may be larger)

    @property
    def widths(self) -> tuple[int, ...]:
        """``W_l`` for l = 1..L."""
        return tuple(int(m.shape[1]) for m in self.exit_masks)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(B, S, W_1, ..., W_L)``: what a compiled graph (CUDA graph, TensorRT profile) depends on."""
        return (int(self.input_ids.shape[0]), int(self.input_ids.shape[1]), *self.widths)

    def feed(self, input_names: list[str] | tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """The ONNX inputs by name (``exit_mask_l`` for the masks); only ``input_names`` when given."""
        feed = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}
        if self.token_type_ids is not None:
            feed["token_type_ids"] = self.token_type_ids
        feed.update({mask_name(i + 1): m for i, m in enumerate(self.exit_masks)})
        if input_names is not None:
            feed = {name: feed[name] for name in input_names if name in feed}
        return feed

    def dense(self) -> "PrefixBatch":
        """The same batch with every ``W_l`` = S: the masked form (every token computed, old state kept)."""
        seq = self.input_ids.shape[1]
        masks = []
        for mask in self.exit_masks:
            full = np.zeros((mask.shape[0], seq), dtype=bool)
            full[:, :mask.shape[1]] = mask
            masks.append(full)
        return replace(self, exit_masks=tuple(masks))

    def restore_rows(self, outputs: np.ndarray) -> np.ndarray:
        """Batch-first outputs (e.g. logits) without the bucket's extra rows."""
        return outputs[:self.rows]

    def restore_tokens(self, states: np.ndarray) -> np.ndarray:
        """``[B, S, ...]`` per-slot values (sorted) -> ``[rows, length, ...]`` in the original token order."""
        inverse = np.argsort(self.position_ids, axis=1, kind="stable")[:self.rows, :self.length]
        index = inverse.reshape(inverse.shape + (1,) * (states.ndim - 2))
        return np.take_along_axis(states[:self.rows], index, axis=1)


def exit_layers_from_masks(exit_masks: np.ndarray) -> np.ndarray:
    """Per-token exit layers ``[batch, seq]`` from monotone ``[L, batch, seq]`` masks (0 at padding)."""
    return np.asarray(exit_masks, dtype=bool).sum(axis=0, dtype=np.int64)


def plan_prefix(input_ids: np.ndarray, attention_mask: np.ndarray, exit_layers: np.ndarray, num_layers: int,
                token_type_ids: np.ndarray | None = None, bucket: bool = False, max_length: int | None = None,
                pad_id: int = 0, pad_rows: bool = True) -> PrefixBatch:
    """Sort a right-padded batch by exit layer and build the per-layer masks (see the module doc).

    Args:
        input_ids, attention_mask: int ``[batch, seq]``.
        exit_layers: int ``[batch, seq]``, ``1..L`` at real tokens (ignored at padding).
        num_layers: L.
        token_type_ids: optional int ``[batch, seq]``.
        bucket: pad the batch to a power of two and round the sequence and every ``W_l`` up to a
            multiple of 8 (the sequence at most to ``max_length``).
        pad_id: the token id written into bucket padding columns.
        pad_rows: with ``bucket``, also pad the batch to a power of two (False: only the widths are
            rounded, e.g. when the caller splits the rows again, as Triton's tokenizer does).
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    mask = np.asarray(attention_mask)
    if ids.ndim != 2 or mask.shape != ids.shape or np.shape(exit_layers) != ids.shape:
        raise InputError(f"input_ids, attention_mask and exit_layers must share one [batch, seq] shape; got "
                         f"{ids.shape}, {mask.shape}, {np.shape(exit_layers)}")
    rows, length = ids.shape
    if rows == 0 or length == 0:
        raise InputError(f"the prefix layout needs at least one token in one row; got shape {ids.shape}")
    real = mask != 0
    exits = np.clip(np.asarray(exit_layers, dtype=np.int64), 0, num_layers) * real
    types = None if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64)
    batch, seq = rows, length
    if bucket:
        batch = _next_power_of_two(rows) if pad_rows else rows
        seq = _round_up(length, SEQ_MULTIPLE, max(length, max_length or length))
    if seq > length:  # padding columns: never keys, never active
        extra = seq - length
        ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=pad_id)
        real = np.pad(real, ((0, 0), (0, extra)))
        exits = np.pad(exits, ((0, 0), (0, extra)))
        types = None if types is None else np.pad(types, ((0, 0), (0, extra)))
    if batch > rows:  # padding rows: copies of the last row (finite, and dropped by restore_rows)
        take = np.minimum(np.arange(batch), rows - 1)
        ids, real, exits = ids[take], real[take], exits[take]
        types = None if types is None else types[take]
    order = np.argsort(-exits, axis=1, kind="stable")  # slot r holds original position order[b, r]
    at_least = (exits[:, None, :] >= np.arange(1, num_layers + 1)[None, :, None]).sum(axis=2)  # [B, L]
    widest = np.maximum(at_least.max(axis=0), 1)
    widths = [seq] + [int(w) for w in widest[1:]]
    if bucket:
        widths = [_round_up(w, SEQ_MULTIPLE, seq) for w in widths]
    masks = tuple(np.arange(w)[None, :] < at_least[:, layer][:, None] for layer, w in enumerate(widths))
    take = lambda a: np.ascontiguousarray(np.take_along_axis(a, order, axis=1))  # noqa: E731
    return PrefixBatch(
        input_ids=take(ids), attention_mask=take(real.astype(np.int64)), position_ids=np.ascontiguousarray(order),
        token_type_ids=None if types is None else take(types), exit_masks=masks, rows=rows, length=length)


@dataclass(frozen=True)
class CostModel:
    """Host-side estimate of whether HashEE's prefix plan beats the masked dense form of a batch.

    ``time = flops / flops_per_second + launches * launch_seconds``.  Both paths run the same
    layers; the prefix plan computes queries, attention output and FFN on ``W_l`` slots instead of
    ``S`` (analytic FLOPs of the padded shapes it really runs) and pays ``extra_launches_per_layer``
    more kernels (slice, select, concatenate) in every layer where ``W_l < S``.  With CUDA graphs
    ``launch_seconds`` is small, so the FLOPs decide; eager on a GPU it is large, so small batches
    stay dense.
    """

    num_layers: int
    hidden_size: int
    intermediate_size: int
    flops_per_second: float = 50e12
    launch_seconds: float = 5e-6
    launches_per_layer: int = 14
    extra_launches_per_layer: int = 3

    def plan_flops(self, batch: int, seq: int, widths: tuple[int, ...] | list[int]) -> float:
        """FLOPs of the encoder layers on a ``[batch, seq]`` grid with query widths ``widths``."""
        from hashee.flops import layer_macs

        m = np.asarray(widths, dtype=np.float64)
        return float(2 * batch * layer_macs(m, np.full_like(m, seq), self.hidden_size, self.intermediate_size).sum())

    def seconds(self, batch: int, seq: int, widths: tuple[int, ...] | list[int]) -> float:
        narrowed = sum(1 for w in widths if w < seq)
        launches = self.num_layers * self.launches_per_layer + narrowed * self.extra_launches_per_layer
        return self.plan_flops(batch, seq, widths) / self.flops_per_second + launches * self.launch_seconds

    def prefers_hashee(self, plan: PrefixBatch) -> bool:
        """True when the prefix plan is estimated faster than the dense form of the same batch."""
        batch, seq, *widths = plan.shape
        return self.seconds(batch, seq, widths) < self.seconds(batch, seq, [seq] * len(widths))

    def choose(self, plan: PrefixBatch) -> PrefixBatch:
        """``plan`` when HashEE pays, else :meth:`PrefixBatch.dense` (same answers)."""
        return plan if self.prefers_hashee(plan) else plan.dense()


def is_prefix_graph(input_names: list[str] | tuple[str, ...]) -> bool:
    """Whether a graph with these inputs takes the prefix layout (``position_ids`` and ``exit_mask_1``)."""
    return "position_ids" in input_names and mask_name(1) in input_names


def layout_feed(feed: dict[str, np.ndarray], input_names: list[str] | tuple[str, ...], num_layers: int,
                bucket: bool = False, max_length: int | None = None,
                pad_id: int = 0) -> tuple[dict[str, np.ndarray], PrefixBatch | None]:
    """A packed-layout feed (``exit_masks`` [L, batch, seq]) in the layout of a graph with ``input_names``.

    Returns ``(feed, plan)``; ``plan`` is None for a packed graph (the feed is returned as is, with only
    the graph's inputs), else the :class:`PrefixBatch` whose ``restore_rows`` / ``restore_tokens``
    bring outputs back to the caller's rows.  A prefix graph outputs ``token_states`` in the original
    order of its own (possibly bucket-padded) sequence: slice ``[:plan.rows, :plan.length]``.
    """
    if not is_prefix_graph(input_names):
        return {k: v for k, v in feed.items() if k in input_names}, None
    masks = feed.get("exit_masks")
    if masks is None:
        raise InputError("a prefix-layout graph is fed from exit masks [L, batch, seq]; none were given")
    plan = plan_prefix(feed["input_ids"], feed["attention_mask"], exit_layers_from_masks(masks), num_layers,
                       feed.get("token_type_ids"), bucket=bucket, max_length=max_length, pad_id=pad_id)
    return plan.feed(input_names), plan
