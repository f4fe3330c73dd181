"""The packed compute layout (DESIGN.md section 4) and the encoder layer that runs on it.

All non-padding tokens of a batch are sorted once, globally, by exit layer (descending, stable), so
the tokens active in layer ``l`` are a prefix of known length ``N_l`` of that packed order:
projections, LayerNorms and the FFN run on ``packed[:N_l]`` with no per-layer gather.  Attention
needs each query to see the keys of its own sequence: queries are scattered into a
``[batch, Q_l]`` grid (``Q_l`` = the largest number of active tokens in one sequence at layer ``l``)
and keys/values into ``[batch, K]`` (``K`` = longest sequence), both by the token's rank inside its
own sequence.  The only host read is one small vector (``N_l`` and ``Q_l`` for every layer plus
range checks), taken once per batch when the plan is built, never per layer or per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hashee.modeling.backbones import LayerModules


@dataclass(frozen=True)
class ExitPlan:
    """Index tensors that place a batch's tokens in the packed layout, built once per forward."""

    batch_size: int
    seq_len: int
    order: torch.Tensor  # [N_1] flat (batch*seq) index of each packed row, non-padding tokens only
    row_batch: torch.Tensor  # [N_1] batch index of each packed row
    row_rank: torch.Tensor  # [N_1] rank of the token inside its sequence's exit order
    active: tuple[int, ...]  # N_l for l = 1..L: packed rows active in layer l
    query_width: tuple[int, ...]  # Q_l for l = 1..L: most active tokens in one sequence
    key_mask: torch.Tensor  # [batch, 1, 1, K] bool, True where a key slot holds a real token

    @property
    def key_width(self) -> int:
        return self.query_width[0]

    def grid_index(self, width: int, rows: int) -> torch.Tensor:
        """Flat index into a ``[batch, width]`` grid for the first ``rows`` packed rows."""
        return self.row_batch[:rows] * width + self.row_rank[:rows]


def build_plan(exit_layers: torch.Tensor, num_layers: int,
               checks: torch.Tensor | None = None) -> tuple[ExitPlan, list[int]]:
    """Plan the packed layout for ``exit_layers`` ([batch, seq], 0 at padding, else 1..L).

    ``checks`` (a small integer vector, e.g. min/max of the inputs) rides along in the same host
    read and is returned as a list, so validating inputs costs no extra synchronisation.
    """
    batch, seq = exit_layers.shape
    exits = exit_layers.long().clamp(0, num_layers)
    # Per sequence: count of tokens with exit >= l, for l = 0..L (reverse cumulative histogram).
    histogram = torch.zeros(batch, num_layers + 1, dtype=torch.long, device=exits.device)
    histogram.scatter_add_(1, exits, torch.ones_like(exits))
    at_least = histogram.flip(1).cumsum(1).flip(1)[:, 1:]  # [batch, L]
    counts = [at_least.sum(0), at_least.max(0).values]
    if checks is not None:
        counts.append(checks.long().reshape(-1))
    host = torch.cat(counts).tolist()  # the one host read of the forward pass
    active, widths = tuple(host[:num_layers]), tuple(host[num_layers:2 * num_layers])

    flat = exits.reshape(-1)
    order = torch.argsort(flat, descending=True, stable=True)[: active[0]]
    within = torch.argsort(exits, dim=1, descending=True, stable=True)
    rank = torch.empty_like(within)
    rank.scatter_(1, within, torch.arange(seq, device=exits.device).expand(batch, seq))
    key_width = max(widths[0], 1)
    # A sequence with no tokens at all gets one (empty) key so that softmax stays finite; it has no
    # active queries, so nothing it computes is kept.
    lengths = at_least[:, :1].clamp(min=1)
    key_mask = torch.arange(key_width, device=exits.device)[None, :] < lengths
    plan = ExitPlan(batch, seq, order, order // seq, rank.reshape(-1)[order], active,
                    tuple(max(w, 1) for w in widths), key_mask[:, None, None, :])
    return plan, host[2 * num_layers:]


def _to_grid(rows: torch.Tensor, index: torch.Tensor, batch: int, width: int, heads: int) -> torch.Tensor:
    """Scatter packed rows [n, hidden] into a [batch, heads, width, head_dim] attention grid."""
    hidden = rows.shape[-1]
    grid = rows.new_zeros(batch * width, hidden).index_copy(0, index, rows)
    return grid.view(batch, width, heads, hidden // heads).transpose(1, 2)


def packed_layer(packed: torch.Tensor, layer: LayerModules, plan: ExitPlan, index: int,
                 training: bool = False) -> torch.Tensor:
    """Run layer ``index`` (1-based) on the packed hidden states [N_1, hidden]; returns the new states.

    Rows ``[:N_l]`` (active) compute queries, attention output and FFN; keys and values come from all
    ``N_1`` non-padding rows; rows ``[N_l:]`` (exited) are carried over unchanged.
    """
    n_active = plan.active[index - 1]
    if n_active == 0:
        return packed
    batch, heads = plan.batch_size, layer.num_heads
    q_width, k_width = plan.query_width[index - 1], plan.key_width
    active_rows = packed[:n_active]
    key_index = plan.grid_index(k_width, packed.shape[0])
    query_index = plan.grid_index(q_width, n_active)
    keys = _to_grid(layer.key(packed), key_index, batch, k_width, heads)
    values = _to_grid(layer.value(packed), key_index, batch, k_width, heads)
    queries = _to_grid(layer.query(active_rows), query_index, batch, q_width, heads)
    dropout = layer.attn_probs_dropout if training else 0.0
    context = F.scaled_dot_product_attention(queries, keys, values, attn_mask=plan.key_mask, dropout_p=dropout)
    context = context.transpose(1, 2).reshape(batch * q_width, -1).index_select(0, query_index)
    hidden = layer.attn_norm(layer.attn_output_dropout(layer.attn_output(context)) + active_rows)
    ffn = layer.ffn_output_dropout(layer.ffn_out(layer.activation(layer.ffn_in(hidden))))
    updated = layer.ffn_norm(ffn + hidden)
    if n_active == packed.shape[0]:
        return updated
    return torch.cat([updated, packed[n_active:]], dim=0)
