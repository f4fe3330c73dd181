"""`HashEEConfig`: a Hugging Face config that carries the backbone's config and the exit table's metadata."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

from hashee.errors import BackboneError


POOLINGS = ("cls", "mean")


class HashEEConfig(PretrainedConfig):
    """Configuration of a HashEE model.

    Args:
        backbone: the wrapped dense model's config as a dict (``config.to_dict()``), with its
            ``model_type`` (bert, roberta, distilbert, albert, electra).
        exit_table: the exit table's metadata (:meth:`hashee.ExitTable.to_meta`); the table's values
            are saved with the weights (buffer ``exit_table_layers``).
        pooling: what feeds the backbone's head: ``cls`` (the [CLS] state, the seed) or ``mean`` (the mean
            of every real token's state at its exit layer).
        kwargs: the usual :class:`~transformers.PretrainedConfig` fields; ``num_labels``,
            ``id2label``, ``label2id`` and ``problem_type`` describe the task and are kept in sync
            with the backbone.
    """

    model_type = "hashee"

    def __init__(self, backbone: dict[str, Any] | None = None, exit_table: dict[str, Any] | None = None,
                 pooling: str = "cls", **kwargs: Any) -> None:
        if pooling not in POOLINGS:
            raise BackboneError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
        self.backbone = dict(backbone) if backbone else {}
        self.exit_table = dict(exit_table) if exit_table else {}
        self.pooling = pooling
        super().__init__(**kwargs)

    def backbone_config(self) -> PretrainedConfig:
        """The dense backbone's config, with this config's task fields (labels, problem type)."""
        if not self.backbone.get("model_type"):
            raise BackboneError("HashEEConfig.backbone is empty; build the model with "
                                "HashEEForSequenceClassification.from_dense(...)")
        fields = {k: v for k, v in self.backbone.items() if k not in ("model_type", "transformers_version")}
        fields.update(id2label=self.id2label, label2id=self.label2id, problem_type=self.problem_type)
        return AutoConfig.for_model(self.backbone["model_type"], **fields)
