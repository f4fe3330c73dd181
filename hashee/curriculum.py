"""An exit curriculum for fine-tuning: start with every token at the last layer, move to the table.

A model fine-tuned with its exit table from the first step must learn the task and live with early
exits at once.  With a curriculum over the first ``ratio`` of the optimiser steps, each real token
follows the table with probability ``step / (ratio * total_steps)`` and stays to the last layer
otherwise; afterwards every token follows the table, as at inference.  Imported only when a run asks
for it (``hashee train --curriculum R``).
"""

from __future__ import annotations

from typing import Any

import torch


def curriculum_exits(model: Any, inputs: dict[str, torch.Tensor], fraction: float, seed: int) -> torch.Tensor:
    """Exit layers for one batch: the table's with probability ``fraction`` per token, else the last layer."""
    ids, mask = inputs["input_ids"], inputs.get("attention_mask")
    table = model.exit_layers_for(ids, mask)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    follow = torch.rand(ids.shape, generator=generator).to(ids.device) < fraction
    return torch.where(follow, table, torch.full_like(table, model.num_layers))


class CurriculumMixin:
    """Mixed into a ``Trainer``: passes curriculum exit layers to the HashEE model while the ramp lasts."""

    curriculum_steps: int = 0

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        step = self.state.global_step
        if step < self.curriculum_steps:
            fraction = step / self.curriculum_steps
            inputs = {**inputs, "exit_layers": curriculum_exits(model, inputs, fraction, self.args.seed * 100003 + step)}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def with_curriculum(trainer_class: type, steps: int) -> type:
    """``trainer_class`` with the curriculum ramping over its first ``steps`` optimiser steps."""
    return type(f"Curriculum{trainer_class.__name__}", (CurriculumMixin, trainer_class), {"curriculum_steps": steps})
