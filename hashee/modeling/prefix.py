"""The prefix layout in PyTorch (issue 14): slices instead of gathers, every shape from the inputs' shapes.

The host sorts each row by exit layer and builds the masks (:func:`hashee.prefix.plan_prefix`); then
layer ``l`` computes queries, attention output and FFN on ``hidden[:, :W_l]`` (``W_l`` = the width of
``exit_mask_l``), keys and values on every slot (padding is masked), keeps the old state where the mask
is false and concatenates ``hidden[:, W_l:]`` back.  No index arithmetic, no data-dependent shape, no
host read: a forward launches about as many kernels as the dense model and can be captured in a CUDA
graph per shape.  With every ``W_l`` equal to the sequence length it is the masked oracle's form.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hashee.errors import ModelInputError
from hashee.modeling.backbones import LayerModules


def prefix_layer(hidden: torch.Tensor, layer: LayerModules, key_mask: torch.Tensor, exit_mask: torch.Tensor,
                 training: bool = False) -> torch.Tensor:
    """One encoder layer on sorted states ``[B, S, D]``; ``exit_mask`` bool ``[B, W]`` marks the active slots."""
    batch, seq, hidden_size = hidden.shape
    width = exit_mask.shape[1]
    heads = layer.num_heads
    keys = layer.key(hidden).view(batch, seq, heads, -1).transpose(1, 2)
    values = layer.value(hidden).view(batch, seq, heads, -1).transpose(1, 2)
    rows = hidden[:, :width] if width < seq else hidden
    queries = layer.query(rows).view(batch, width, heads, -1).transpose(1, 2)
    dropout = layer.attn_probs_dropout if training else 0.0
    context = F.scaled_dot_product_attention(queries, keys, values, attn_mask=key_mask, dropout_p=dropout)
    projected = layer.attn_output(context.transpose(1, 2).reshape(batch, width, hidden_size))
    if training:
        projected = layer.attn_output_dropout(projected)
    attended = layer.attn_norm(projected + rows)
    ffn = layer.ffn_out(layer.activation(layer.ffn_in(attended)))
    if training:
        ffn = layer.ffn_output_dropout(ffn)
    updated = torch.where(exit_mask[..., None], layer.ffn_norm(ffn + attended), rows)
    return torch.cat([updated, hidden[:, width:]], dim=1) if width < seq else updated


def check_prefix_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                        exit_masks: Sequence[torch.Tensor], num_layers: int) -> None:
    """Shape checks only (no host read): values were checked where the plan was made."""
    shape = tuple(input_ids.shape)
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise ModelInputError(f"input_ids must be a non-empty [batch, seq] tensor, got shape {shape}")
    for name, tensor in (("attention_mask", attention_mask), ("position_ids", position_ids)):
        if tuple(tensor.shape) != shape:
            raise ModelInputError(f"{name} has shape {tuple(tensor.shape)} but input_ids has {shape}")
    if len(exit_masks) != num_layers:
        raise ModelInputError(f"the prefix layout takes one exit mask per layer ({num_layers}), got {len(exit_masks)}")
    for index, mask in enumerate(exit_masks, start=1):
        if mask.dim() != 2 or mask.shape[0] != shape[0] or not 1 <= mask.shape[1] <= shape[1]:
            raise ModelInputError(f"exit_mask_{index} must be bool [batch, W] with 1 <= W <= {shape[1]}, got shape "
                                  f"{tuple(mask.shape)}")


def prefix_encode(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                  exit_masks: Sequence[torch.Tensor], token_type_ids: torch.Tensor | None = None,
                  output_token_states: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits [B, labels], token states [B, S, D] in the original order or None)`` of a sorted batch.

    ``position_ids`` holds each slot's original position (a permutation of ``0..S-1`` per row); the
    [CLS] state is the slot holding position 0.
    """
    check_prefix_inputs(input_ids, attention_mask, position_ids, exit_masks, model.num_layers)
    family, dense = model.family, model.dense
    types = token_type_ids if family.uses_token_type_ids else None
    hidden = family.embed_at(dense, input_ids, types, position_ids, attention_mask)
    key_mask = (attention_mask != 0)[:, None, None, :]
    masks = [m.to(dtype=torch.bool) for m in exit_masks]
    for index in range(model.num_layers):
        hidden = prefix_layer(hidden, family.layer(dense, index), key_mask, masks[index], training=model.training)
    inverse = torch.empty_like(position_ids).scatter_(
        1, position_ids, torch.arange(position_ids.shape[1], device=position_ids.device).expand_as(position_ids))
    if output_token_states:
        states = hidden.gather(1, inverse[..., None].expand(-1, -1, hidden.shape[-1]))
        return family.head(dense, states[:, :1]), states
    cls = hidden.gather(1, inverse[:, :1, None].expand(-1, -1, hidden.shape[-1]))
    return family.head(dense, cls), None


def run_prefix(model: Any, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None,
               exit_layers: Any = None, bucket: bool = False, output_token_states: bool = False,
               dense_form: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Plan on the host (numpy) and run the prefix layout: ``(logits, token states)`` in the caller's order.

    ``exit_layers`` overrides the model's table ([batch, seq]); ``bucket`` pads to the bucketed shape
    (:func:`hashee.prefix.plan_prefix`); ``dense_form`` runs every ``W_l`` at the sequence length.
    """
    from hashee.prefix import plan_prefix

    ids = np.asarray(input_ids.cpu() if isinstance(input_ids, torch.Tensor) else input_ids, dtype=np.int64)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(
        attention_mask.cpu() if isinstance(attention_mask, torch.Tensor) else attention_mask, dtype=np.int64)
    if exit_layers is None:
        table = model.exit_table_layers.cpu().numpy()
        exits = table[np.clip(ids, 0, table.shape[0] - 1)]
    else:
        exits = np.asarray(exit_layers.cpu() if isinstance(exit_layers, torch.Tensor) else exit_layers)
    types = None
    if token_type_ids is not None:
        types = np.asarray(token_type_ids.cpu() if isinstance(token_type_ids, torch.Tensor) else token_type_ids)
    config = model.dense.config
    pad = int(getattr(config, "pad_token_id", 0) or 0)
    positions = int(getattr(config, "max_position_embeddings", ids.shape[1]))
    longest = positions - (pad + 1 if config.model_type == "roberta" else 0)
    plan = plan_prefix(ids, mask, exits, model.num_layers, types, bucket=bucket, pad_id=pad, max_length=longest)
    if dense_form:
        plan = plan.dense()
    device = model.exit_table_layers.device
    tensor = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    with torch.no_grad():
        logits, states = prefix_encode(
            model, tensor(plan.input_ids), tensor(plan.attention_mask), tensor(plan.position_ids),
            [tensor(m) for m in plan.exit_masks], None if plan.token_type_ids is None else tensor(plan.token_type_ids),
            output_token_states)
    logits = plan.restore_rows(logits.float().cpu().numpy())
    if states is None:
        return logits, None
    return logits, states.float().cpu().numpy()[:plan.rows, :plan.length]
