"""One declarative adapter per backbone family: where a Hugging Face model keeps its parts.

The HashEE encoder does its own per-layer arithmetic on packed active tokens, but every weight it
uses belongs to the wrapped Hugging Face ``*ForSequenceClassification`` model.  An adapter names,
for one family, the embedding step, the modules of layer ``i``, the classification head, and how to
call the family's own layer module (used only by the masked oracle in :mod:`hashee.modeling.oracle`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from hashee.errors import BackboneError


@dataclass(frozen=True)
class LayerModules:
    """The modules of one post-LayerNorm encoder layer, in the order they are applied."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_output: nn.Linear
    attn_output_dropout: nn.Module
    attn_norm: nn.LayerNorm
    ffn_in: nn.Linear
    activation: Callable[[torch.Tensor], torch.Tensor]
    ffn_out: nn.Linear
    ffn_output_dropout: nn.Module
    ffn_norm: nn.LayerNorm
    attn_probs_dropout: float
    num_heads: int


def _additive_mask(mask2d: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[batch, seq] keep-mask -> [batch, 1, 1, seq] additive mask, as Hugging Face layers expect."""
    return (1.0 - mask2d[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class BackboneFamily:
    """Base adapter; subclasses name the parts of one family."""

    model_type: str = ""
    uses_token_type_ids: bool = True

    def base(self, dense: nn.Module) -> nn.Module:
        return getattr(dense, self.model_type)

    def num_layers(self, config) -> int:
        return int(config.num_hidden_layers)

    def layer_list(self, dense: nn.Module) -> nn.ModuleList:
        """The module list holding the encoder's layers."""
        return self.base(dense).encoder.layer

    def truncate(self, dense: nn.Module, num_layers: int) -> nn.Module:
        """Keep the first ``num_layers`` encoder layers of ``dense`` (in place; the config follows).

        The result equals the same family's model built with ``num_layers`` layers from the same
        weights: a static-depth model.  Raises :class:`BackboneError` for a depth the backbone lacks.
        """
        depth = self.num_layers(dense.config)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= depth:
            raise BackboneError(f"cannot keep {num_layers!r} layers of a {depth}-layer {self.model_type} backbone; "
                                f"pass --layers in 1..{depth}")
        if num_layers < depth:
            holder = self.layer_list(dense)
            kept = nn.ModuleList(list(holder)[:num_layers])
            self._set_layers(dense, kept)
            dense.config.num_hidden_layers = num_layers
        return dense

    def _set_layers(self, dense: nn.Module, layers: nn.ModuleList) -> None:
        self.base(dense).encoder.layer = layers

    def check(self, config) -> None:
        """Raise :class:`BackboneError` for a configuration the HashEE encoder cannot run."""
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            raise BackboneError(f"{self.model_type} decoders are not supported: HashEE wraps encoders")
        kind = getattr(config, "position_embedding_type", "absolute")
        if kind not in (None, "absolute"):
            raise BackboneError(
                f"position_embedding_type={kind!r} is not supported (attention would need relative "
                f"position terms); use a backbone with absolute position embeddings"
            )

    def embed(self, dense: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        return self.base(dense).embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def embed_at(self, dense: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                 position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings of tokens at explicit 0-based positions (the prefix layout's sorted order)."""
        return self._project(dense, self.base(dense).embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                                                position_ids=position_ids))

    def _project(self, dense: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The family's projection of embeddings to the hidden size (identity for most)."""
        return hidden

    def hf_layer(self, dense: nn.Module, index: int) -> nn.Module:
        return self.base(dense).encoder.layer[index]

    def layer(self, dense: nn.Module, index: int) -> LayerModules:
        block = self.hf_layer(dense, index)
        attention = block.attention
        return LayerModules(
            query=attention.self.query, key=attention.self.key, value=attention.self.value,
            attn_output=attention.output.dense, attn_output_dropout=attention.output.dropout,
            attn_norm=attention.output.LayerNorm,
            ffn_in=block.intermediate.dense, activation=block.intermediate.intermediate_act_fn,
            ffn_out=block.output.dense, ffn_output_dropout=block.output.dropout, ffn_norm=block.output.LayerNorm,
            attn_probs_dropout=float(dense.config.attention_probs_dropout_prob),
            num_heads=int(dense.config.num_attention_heads),
        )

    def call_hf_layer(self, dense: nn.Module, index: int, hidden: torch.Tensor, mask2d: torch.Tensor) -> torch.Tensor:
        """Run the family's own layer module on every token (the oracle's dense step)."""
        return self.hf_layer(dense, index)(hidden, attention_mask=_additive_mask(mask2d, hidden.dtype))[0]

    def head(self, dense: nn.Module, cls_states: torch.Tensor) -> torch.Tensor:
        """Logits from the [CLS] states, shaped [batch, 1, hidden]."""
        return dense.classifier(cls_states)


class BertFamily(BackboneFamily):
    model_type = "bert"

    def head(self, dense, cls_states):
        pooler = dense.bert.pooler
        if pooler is None:
            raise BackboneError("this BERT model has no pooler; load it with add_pooling_layer=True")
        return dense.classifier(dense.dropout(pooler(cls_states)))


class RobertaFamily(BackboneFamily):
    model_type = "roberta"

    def embed_at(self, dense, input_ids, token_type_ids, position_ids, attention_mask):
        # Hugging Face counts positions from padding_idx + 1 over non-padding tokens (right padding)
        pad = int(dense.roberta.embeddings.padding_idx)
        positions = torch.where(attention_mask != 0, position_ids + pad + 1, torch.full_like(position_ids, pad))
        return dense.roberta.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=positions)


class ElectraFamily(BackboneFamily):
    model_type = "electra"

    def embed(self, dense, input_ids, token_type_ids):
        return self._project(dense, dense.electra.embeddings(input_ids=input_ids, token_type_ids=token_type_ids))

    def _project(self, dense, hidden):
        project = getattr(dense.electra, "embeddings_project", None)
        return project(hidden) if project is not None else hidden


class AlbertFamily(BackboneFamily):
    model_type = "albert"

    def check(self, config):
        super().check(config)
        if int(config.inner_group_num) != 1:
            raise BackboneError(
                f"ALBERT with inner_group_num={config.inner_group_num} is not supported; exit layers "
                f"are counted per shared layer, which needs inner_group_num=1"
            )

    def embed(self, dense, input_ids, token_type_ids):
        return self._project(dense, dense.albert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids))

    def _project(self, dense, hidden):
        return dense.albert.encoder.embedding_hidden_mapping_in(hidden)

    def truncate(self, dense, num_layers):
        """ALBERT shares its layers: keeping K of them means applying the shared group K times."""
        depth = self.num_layers(dense.config)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= depth:
            raise BackboneError(f"cannot keep {num_layers!r} layers of a {depth}-layer albert backbone; "
                                f"pass --layers in 1..{depth}")
        groups = int(dense.config.num_hidden_groups)
        if num_layers < depth and groups != 1:
            raise BackboneError(f"cannot truncate an ALBERT backbone with num_hidden_groups={groups}: its layers "
                                f"map to groups by depth, so fewer layers would change which weights each uses")
        dense.config.num_hidden_layers = num_layers
        return dense

    def hf_layer(self, dense, index):
        config = dense.config
        group = int(index / (config.num_hidden_layers / config.num_hidden_groups))
        return dense.albert.encoder.albert_layer_groups[group].albert_layers[0]

    def layer(self, dense, index):
        block = self.hf_layer(dense, index)
        attention = block.attention
        return LayerModules(
            query=attention.query, key=attention.key, value=attention.value,
            attn_output=attention.dense, attn_output_dropout=attention.output_dropout,
            attn_norm=attention.LayerNorm,
            ffn_in=block.ffn, activation=block.activation, ffn_out=block.ffn_output,
            ffn_output_dropout=nn.Identity(), ffn_norm=block.full_layer_layer_norm,
            attn_probs_dropout=float(dense.config.attention_probs_dropout_prob),
            num_heads=int(dense.config.num_attention_heads),
        )

    def head(self, dense, cls_states):
        pooled = dense.albert.pooler_activation(dense.albert.pooler(cls_states[:, 0]))
        return dense.classifier(dense.dropout(pooled))


class DistilBertFamily(BackboneFamily):
    model_type = "distilbert"
    uses_token_type_ids = False

    def num_layers(self, config):
        return int(config.n_layers)

    def layer_list(self, dense):
        return dense.distilbert.transformer.layer

    def _set_layers(self, dense, layers):
        dense.distilbert.transformer.layer = layers
        dense.distilbert.transformer.n_layers = len(layers)

    def embed(self, dense, input_ids, token_type_ids):
        return dense.distilbert.embeddings(input_ids)

    def embed_at(self, dense, input_ids, token_type_ids, position_ids, attention_mask):
        emb = dense.distilbert.embeddings  # its forward takes no position ids: the same steps, explicit positions
        return emb.dropout(emb.LayerNorm(emb.word_embeddings(input_ids) + emb.position_embeddings(position_ids)))

    def hf_layer(self, dense, index):
        return dense.distilbert.transformer.layer[index]

    def layer(self, dense, index):
        block = self.hf_layer(dense, index)
        attention = block.attention
        return LayerModules(
            query=attention.q_lin, key=attention.k_lin, value=attention.v_lin,
            attn_output=attention.out_lin, attn_output_dropout=nn.Identity(), attn_norm=block.sa_layer_norm,
            ffn_in=block.ffn.lin1, activation=block.ffn.activation, ffn_out=block.ffn.lin2,
            ffn_output_dropout=block.ffn.dropout, ffn_norm=block.output_layer_norm,
            attn_probs_dropout=float(dense.config.attention_dropout),
            num_heads=int(dense.config.n_heads),
        )

    def call_hf_layer(self, dense, index, hidden, mask2d):
        if dense.config._attn_implementation == "eager":
            mask = mask2d
        else:
            mask = _additive_mask(mask2d, hidden.dtype)
        return self.hf_layer(dense, index)(hidden, attn_mask=mask)[0]

    def head(self, dense, cls_states):
        hidden = torch.relu(dense.pre_classifier(cls_states[:, 0]))
        return dense.classifier(dense.dropout(hidden))


FAMILIES: dict[str, BackboneFamily] = {
    family.model_type: family
    for family in (BertFamily(), RobertaFamily(), ElectraFamily(), AlbertFamily(), DistilBertFamily())
}


def family_for(config) -> BackboneFamily:
    """The adapter for a Hugging Face config, or :class:`BackboneError` naming the supported families."""
    model_type = getattr(config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        raise BackboneError(
            f"backbone family {model_type!r} is not supported; HashEE supports "
            f"{', '.join(sorted(FAMILIES))} (MiniLM checkpoints are BERT)"
        )
    family.check(config)
    return family
