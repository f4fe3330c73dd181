"""The correctness oracle (DESIGN.md section 3): the masked form of HashEE.

``H_l = where(active_l, Layer_l(H_{l-1}, key_mask), H_{l-1})`` computes every token at every layer
with the backbone family's own Hugging Face layer module and keeps only the active rows.  It shares
no code with the packed layout, so the fast path is tested against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hashee.modeling.modeling import HashEEForSequenceClassification


@dataclass
class OracleOutput:
    logits: torch.Tensor
    token_states: torch.Tensor


@torch.no_grad()
def masked_oracle(model: HashEEForSequenceClassification, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                  exit_layers: torch.Tensor | None = None) -> OracleOutput:
    """Logits and token states of the masked form, using the model's weights and exit table."""
    family, dense = model.family, model.dense
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    keep = attention_mask != 0
    if exit_layers is None:
        exit_layers = model.exit_table_layers[input_ids]
    exits = exit_layers.long() * keep
    hidden = family.embed(dense, input_ids, token_type_ids if family.uses_token_type_ids else None)
    for index in range(model.num_layers):
        updated = family.call_hf_layer(dense, index, hidden, keep.long())
        active = (exits >= index + 1)[..., None]
        hidden = torch.where(active, updated, hidden)
    return OracleOutput(logits=family.head(dense, hidden[:, :1]), token_states=hidden)
