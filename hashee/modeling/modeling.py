"""`HashEEForSequenceClassification`: a Hugging Face encoder with hash-based token-level early exit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import ModelOutput

from hashee.errors import BackboneError, ExitTableError, ModelInputError
from hashee.exit_table import ExitTable
from hashee.modeling.backbones import family_for
from hashee.modeling.configuration import HashEEConfig
from hashee.modeling.layout import build_plan, grid_layer


@dataclass
class HashEEOutput(ModelOutput):
    """Output of :class:`HashEEForSequenceClassification`.

    ``token_states`` (on request) holds each token's hidden state at its exit layer, in the original
    token order ([batch, seq, hidden]; padding positions hold the embedding output).
    ``exit_layers`` is the [batch, seq] exit layer used for every token (0 at padding).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    token_states: torch.Tensor | None = None
    exit_layers: torch.Tensor | None = None


def _check_ids(name: str, tensor: Any, shape: torch.Size | None) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise ModelInputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise ModelInputError(f"{name} must be 2-D [batch, seq], got shape {tuple(tensor.shape)}")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        raise ModelInputError(f"{name} must hold integers (torch.long), got {tensor.dtype}")
    if shape is not None and tensor.shape != shape:
        raise ModelInputError(f"{name} has shape {tuple(tensor.shape)} but input_ids has {tuple(shape)}")
    return tensor


class HashEEForSequenceClassification(PreTrainedModel):
    """A ``*ForSequenceClassification`` backbone whose tokens leave the encoder at table-given layers.

    In layer ``l`` only tokens with exit layer ``>= l`` compute queries, attention output and FFN;
    keys and values come from every non-padding token's current state.  Padding is never a key, so a
    sentence gets the same logits alone or inside any padded batch.  With every exit layer at L the
    model equals the dense backbone.  Build one with :meth:`from_dense`; save and load with
    ``save_pretrained`` / ``from_pretrained`` (the exit table travels with the weights).
    """

    config_class = HashEEConfig
    base_model_prefix = "hashee"
    main_input_name = "input_ids"
    accepts_loss_kwargs = False  # the Trainer must not pass num_items_in_batch

    def __init__(self, config: HashEEConfig, dense: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        backbone_config = config.backbone_config()
        self.family = family_for(backbone_config)
        self.dense = dense if dense is not None else AutoModelForSequenceClassification.from_config(backbone_config)
        self.num_layers = self.family.num_layers(backbone_config)
        vocab = int(self.dense.get_input_embeddings().num_embeddings)
        meta_vocab = config.exit_table.get("vocab_size", vocab)
        if meta_vocab != vocab:
            raise ExitTableError(f"the exit table has {meta_vocab} entries but the backbone's vocabulary has {vocab}")
        self.register_buffer("exit_table_layers", torch.full((vocab,), self.num_layers, dtype=torch.long))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Weights come from the dense backbone or a checkpoint; nothing is re-initialised here."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(cls, dense: PreTrainedModel | str | Path, exit_table: ExitTable, pooling: str = "cls",
                   **dense_kwargs: Any) -> "HashEEForSequenceClassification":
        """Wrap a Hugging Face ``*ForSequenceClassification`` model (or a backbone folder) with a table.

        ``pooling``: ``cls`` (the head reads the [CLS] state) or ``mean`` (the mean of every real
        token's state at its exit layer).  ``dense_kwargs`` (``num_labels``, ``id2label``, ``problem_type``, ...) are passed to
        ``AutoModelForSequenceClassification.from_pretrained`` when ``dense`` is a path.
        """
        if not isinstance(exit_table, ExitTable):
            raise ExitTableError(f"exit_table must be a hashee.ExitTable, got {type(exit_table).__name__}")
        if isinstance(dense, (str, Path)):
            path = Path(dense)
            if not (path / "config.json").is_file():
                raise BackboneError(f"{path} holds no config.json; pass a Hugging Face model folder")
            dense = AutoModelForSequenceClassification.from_pretrained(str(path), **dense_kwargs)
        elif dense_kwargs:
            raise BackboneError(f"{sorted(dense_kwargs)} only apply when the backbone is given as a path")
        if not isinstance(dense, PreTrainedModel):
            raise BackboneError(f"expected a Hugging Face PreTrainedModel, got {type(dense).__name__}")
        family = family_for(dense.config)
        depth = family.num_layers(dense.config)
        if exit_table.num_layers != depth:
            raise ExitTableError(
                f"the exit table is for {exit_table.num_layers} layers but the {dense.config.model_type} "
                f"backbone has {depth}; rebuild it with --layers {depth}"
            )
        exit_table.check_vocab_size(dense.get_input_embeddings().num_embeddings, "the backbone's embedding matrix")
        dense_config = dense.config
        config = HashEEConfig(
            backbone=dense_config.to_dict(), exit_table=exit_table.to_meta(),
            num_labels=dense_config.num_labels, id2label=dense_config.id2label,
            label2id=dense_config.label2id, problem_type=dense_config.problem_type,
            pad_token_id=dense_config.pad_token_id, pooling=pooling,
        )
        model = cls(config, dense=dense)
        model.exit_table_layers.copy_(torch.as_tensor(exit_table.layers.astype(np.int64)))
        return model.to(dense.device)

    @property
    def exit_table(self) -> ExitTable:
        """The model's exit table (values from the buffer, metadata from the config)."""
        return ExitTable.from_meta(self.exit_table_layers.cpu().numpy(), self.config.exit_table)

    def get_input_embeddings(self) -> nn.Module:
        return self.dense.get_input_embeddings()

    # ------------------------------------------------------------------ forward
    def exit_layers_for(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Exit layer of every token from the table ([batch, seq], 0 at padding)."""
        exits = self.exit_table_layers[input_ids.clamp(0, self.exit_table_layers.shape[0] - 1)]
        if attention_mask is not None:
            exits = exits * (attention_mask != 0)
        return exits

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, exit_layers: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_token_states: bool = False,
                return_dict: bool | None = None, **unused: Any) -> HashEEOutput:
        """Classify a batch.

        Args:
            input_ids: [batch, seq] token ids.
            attention_mask: [batch, seq], 1 for real tokens and 0 for padding (default: all 1).
            token_type_ids: [batch, seq] segment ids, for families that use them.
            exit_layers: [batch, seq] integers in 1..L overriding the table (padding entries ignored).
                The head reads the [CLS] state, or with ``config.pooling == "mean"`` the mean of every
                real token's state at its exit layer.
            labels: [batch] class ids (or floats for regression); adds ``loss`` to the output.
            output_token_states: also return every token's state at its exit layer.
        """
        if unused:
            raise ModelInputError(f"unexpected arguments {sorted(unused)}; forward takes input_ids, "
                                  f"attention_mask, token_type_ids, exit_layers, labels, output_token_states")
        input_ids = _check_ids("input_ids", input_ids, None)
        shape = input_ids.shape
        if shape[0] == 0 or shape[1] == 0:
            raise ModelInputError(f"input_ids is empty (shape {tuple(shape)}); pass at least one token")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.dtype != torch.bool:
            attention_mask = _check_ids("attention_mask", attention_mask, shape)
        elif attention_mask.shape != shape:
            raise ModelInputError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has {tuple(shape)}")
        if token_type_ids is not None:
            _check_ids("token_type_ids", token_type_ids, shape)
            if not self.family.uses_token_type_ids:
                token_type_ids = None
        keep = attention_mask != 0
        if exit_layers is None:
            exits = self.exit_layers_for(input_ids, keep)
            user_exits = torch.zeros(2, dtype=torch.long, device=input_ids.device)
        else:
            _check_ids("exit_layers", exit_layers, shape)
            exits = exit_layers.long().to(input_ids.device) * keep
            big = torch.iinfo(torch.long).max
            user_exits = torch.stack([torch.where(keep, exits, big).min(), exits.max()])
        bad_mask = ((attention_mask != 0) & (attention_mask != 1)).any().long()
        types = token_type_ids if token_type_ids is not None else input_ids.new_zeros(1, 1)
        checks = torch.stack([input_ids.min(), input_ids.max(), *user_exits, bad_mask, types.min(), types.max()])
        plan, host_checks = build_plan(exits, self.num_layers, checks)
        id_min, id_max, exit_min, exit_max, bad_mask, type_min, type_max = host_checks
        vocab = self.exit_table_layers.shape[0]
        if id_min < 0 or id_max >= vocab:
            raise ModelInputError(f"input_ids must lie in 0..{vocab - 1}; found {id_min}..{id_max}")
        if bad_mask:
            raise ModelInputError("attention_mask must hold only 0 and 1")
        type_vocab = int(getattr(self.dense.config, "type_vocab_size", 1) or 1)
        if token_type_ids is not None and (type_min < 0 or type_max >= type_vocab):
            raise ModelInputError(f"token_type_ids must lie in 0..{type_vocab - 1} for this backbone; found "
                                  f"{type_min}..{type_max} (RoBERTa-style models take no segment ids)")
        if exit_layers is not None and exit_min <= exit_max and (exit_min < 1 or exit_max > self.num_layers):
            raise ModelInputError(f"exit_layers must lie in 1..{self.num_layers} at non-padding tokens; "
                                  f"found {exit_min}..{exit_max}")

        embedded = self.family.embed(self.dense, input_ids, token_type_ids)
        grid = plan.to_grid(embedded)
        for index in range(1, self.num_layers + 1):
            layer = self.family.layer(self.dense, index - 1)
            grid = grid_layer(grid, layer, plan, index, training=self.training)
        mean = getattr(self.config, "pooling", "cls") == "mean"
        states = plan.from_grid(grid, embedded) if output_token_states or mean else None
        if mean:  # every real token's state at its exit layer, averaged
            weights = keep.to(states.dtype)[:, :, None]
            pooled = ((states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1))[:, None]
        else:
            pooled = states[:, :1] if states is not None else plan.from_grid(grid, embedded, positions=1)
        logits = self.family.head(self.dense, pooled)
        loss = self._loss(logits, labels) if labels is not None else None
        return HashEEOutput(loss=loss, logits=logits, exit_layers=exits,
                            token_states=states)

    def forward_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                       exit_masks: list[torch.Tensor], token_type_ids: torch.Tensor | None = None,
                       output_token_states: bool = False) -> HashEEOutput:
        """The prefix layout (issue 14): a batch sorted on the host by :func:`hashee.prefix.plan_prefix`.

        ``position_ids`` holds each slot's original position and ``exit_masks`` the L bool ``[batch, W_l]``
        masks; no host read, no data-dependent shape.  ``token_states`` come back in the original order.
        See :func:`hashee.modeling.prefix.run_prefix` to plan and run in one call.
        """
        from hashee.modeling.prefix import prefix_encode

        logits, states = prefix_encode(self, input_ids, attention_mask, position_ids, exit_masks, token_type_ids,
                                       output_token_states)
        return HashEEOutput(logits=logits, token_states=states)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Hugging Face's loss conventions: MSE for regression, CE single-label, BCE multi-label."""
        num_labels = self.config.num_labels
        problem = self.config.problem_type
        if problem is None:
            if num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.reshape(-1).float())
        if problem == "single_label_classification":
            return nn.functional.cross_entropy(logits.view(-1, num_labels), labels.view(-1).long())
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
