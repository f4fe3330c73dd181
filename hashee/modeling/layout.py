"""The compute layout (DESIGN.md section 4) and the encoder layer that runs on it.

Each sequence's tokens are sorted once by exit layer (descending, stable), giving the *grid*: hidden
states ``[batch, K, hidden]`` where ``K`` is the longest sequence and slot ``r`` of sequence ``b`` holds
its ``r``-th deepest token.  The tokens active in layer ``l`` are then a prefix of every row of the
grid, and, sorted across the batch by exit layer as well, a prefix of length ``N_l`` of one global
packed order.  Per layer:

* keys and values are projected straight from the grid (every real token; padding slots are masked);
* the ``N_l`` active rows are gathered once; queries, attention output, LayerNorms and the FFN run on
  them only;
* for attention, the queries are placed in a ``[batch, Q_l]`` grid (``Q_l`` = the most active tokens in
  one sequence) so each query sees the keys of its own sequence;
* the updated rows are written back into the grid (in place when no gradient is needed).

The only host read is one small vector (``N_l`` and ``Q_l`` for every layer plus range checks), taken
once per batch when the plan is built, never per layer or per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hashee.modeling.backbones import LayerModules


@dataclass(frozen=True)
class ExitPlan:
    """Index tensors that place a batch's tokens in the grid, built once per forward."""

    batch_size: int
    seq_len: int
    within: torch.Tensor  # [batch, K] position of the token held by each grid slot
    rank: torch.Tensor  # [batch, seq] grid slot of each token (its rank in its sequence's exit order)
    row_batch: torch.Tensor  # [N_1] batch index of each packed row (global exit order)
    row_rank: torch.Tensor  # [N_1] grid slot of each packed row
    key_rows: torch.Tensor  # [N_1] flat index of each packed row in the [batch, K] grid
    active: tuple[int, ...]  # N_l for l = 1..L: packed rows active in layer l
    query_width: tuple[int, ...]  # Q_l for l = 1..L: most active tokens in one sequence
    key_mask: torch.Tensor  # [batch, 1, 1, K] bool, True where a grid slot holds a real token

    @property
    def key_width(self) -> int:
        """K: the grid's width, the longest sequence of the batch."""
        return self.query_width[0]

    def grid_index(self, width: int, rows: int) -> torch.Tensor:
        """Flat index into a ``[batch, width]`` grid for the first ``rows`` packed rows."""
        if width == self.key_width:
            return self.key_rows[:rows]
        return torch.add(self.row_rank[:rows], self.row_batch[:rows], alpha=width)  # one kernel

    def to_grid(self, hidden: torch.Tensor) -> torch.Tensor:
        """[batch, seq, hidden] in token order -> the [batch, K, hidden] grid."""
        return hidden.gather(1, self.within[..., None].expand(-1, -1, hidden.shape[-1]))

    def from_grid(self, grid: torch.Tensor, fallback: torch.Tensor, positions: int | None = None) -> torch.Tensor:
        """The grid back in token order (the first ``positions`` tokens, default all).

        Positions outside the grid (padding beyond the longest sequence) take ``fallback``.
        """
        rank = self.rank[:, :positions]
        slots = rank.clamp(max=self.key_width - 1)
        states = grid.gather(1, slots[..., None].expand(-1, -1, grid.shape[-1]))
        return torch.where((rank < self.key_width)[..., None], states, fallback[:, :positions])


def build_plan(exit_layers: torch.Tensor, num_layers: int,
               checks: torch.Tensor | None = None) -> tuple[ExitPlan, list[int]]:
    """Plan the layout for ``exit_layers`` ([batch, seq], 0 at padding, else 1..L).

    ``checks`` (a small integer vector, e.g. min/max of the inputs) rides along in the same host
    read and is returned as a list, so validating inputs costs no extra synchronisation.
    """
    batch, seq = exit_layers.shape
    exits = exit_layers.long().clamp(0, num_layers)
    # Per sequence: count of tokens with exit >= l, for l = 1..L (reverse cumulative histogram).
    histogram = torch.zeros(batch, num_layers + 1, dtype=torch.long, device=exits.device)
    histogram.scatter_add_(1, exits, torch.ones_like(exits))
    at_least = histogram.flip(1).cumsum(1).flip(1)[:, 1:]  # [batch, L]
    counts = [at_least.sum(0), at_least.max(0).values]
    if checks is not None:
        counts.append(checks.long().reshape(-1))
    host = torch.cat(counts).tolist()  # the one host read of the forward pass
    active = tuple(host[:num_layers])
    widths = tuple(max(w, 1) for w in host[num_layers:2 * num_layers])
    key_width = widths[0]

    within = torch.argsort(exits, dim=1, descending=True, stable=True)
    rank = torch.empty_like(within)
    rank.scatter_(1, within, torch.arange(seq, device=exits.device).expand(batch, seq))
    order = torch.argsort(exits.reshape(-1), descending=True, stable=True)[: active[0]]
    # A sequence with no tokens at all keeps one (empty) key so that softmax stays finite; it has
    # no active queries, so nothing it computes is kept.
    lengths = at_least[:, :1].clamp(min=1)
    key_mask = torch.arange(key_width, device=exits.device)[None, :] < lengths
    row_batch, row_rank = order // seq, rank.reshape(-1)[order]
    plan = ExitPlan(batch, seq, within[:, :key_width], rank, row_batch, row_rank,
                    torch.add(row_rank, row_batch, alpha=key_width), active, widths, key_mask[:, None, None, :])
    return plan, host[2 * num_layers:]


def grid_layer(grid: torch.Tensor, layer: LayerModules, plan: ExitPlan, index: int,
               training: bool = False) -> torch.Tensor:
    """Run layer ``index`` (1-based) on the grid [batch, K, hidden]; returns the updated grid.

    Active rows compute queries, attention output and FFN; keys and values come from every real
    token's current state; exited rows are carried over unchanged.
    """
    n_active = plan.active[index - 1]
    if n_active == 0:
        return grid
    batch, width, hidden = grid.shape
    heads = layer.num_heads
    flat = grid.reshape(batch * width, hidden)
    keys = layer.key(flat).view(batch, width, heads, -1).transpose(1, 2)
    values = layer.value(flat).view(batch, width, heads, -1).transpose(1, 2)
    rows = plan.grid_index(width, n_active)
    active_rows = flat.index_select(0, rows)
    q_width = plan.query_width[index - 1]
    query_index = plan.grid_index(q_width, n_active)
    queries = layer.query(active_rows)
    queries = queries.new_zeros(batch * q_width, hidden).index_copy_(0, query_index, queries)
    queries = queries.view(batch, q_width, heads, -1).transpose(1, 2)
    dropout = layer.attn_probs_dropout if training else 0.0
    context = F.scaled_dot_product_attention(queries, keys, values, attn_mask=plan.key_mask, dropout_p=dropout)
    context = context.transpose(1, 2).reshape(batch * q_width, hidden).index_select(0, query_index)
    projected = layer.attn_output(context)
    if training:  # dropout is the identity otherwise: skip the calls (this loop is launch-bound on GPUs)
        projected = layer.attn_output_dropout(projected)
    attended = layer.attn_norm(projected + active_rows)
    ffn = layer.ffn_out(layer.activation(layer.ffn_in(attended)))
    if training:
        ffn = layer.ffn_output_dropout(ffn)
    updated = layer.ffn_norm(ffn + attended)
    if torch.is_grad_enabled():
        return flat.index_copy(0, rows, updated).view(batch, width, hidden)
    return flat.index_copy_(0, rows, updated).view(batch, width, hidden)
