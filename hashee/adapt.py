"""Exit-aware adaptation: teach a routed (HashEE) or cut (static-depth) model to reproduce the dense model.

The seed's backbone (ElasticBERT) was pre-trained with exits at every layer, so its layer-1 states
were already good keys and values for the layers above; an ordinary backbone's are not.  Before task
fine-tuning, :func:`adapt` trains the student for a few steps on unlabelled text (the task's training
texts: no labels are read) to make every real token's final state (its state at its exit layer, for
HashEE) match the frozen full-depth dense backbone's last hidden state::

    loss = mean over real tokens of || student_state - dense_state ||^2 / hidden_size

It runs through the Hugging Face ``Trainer`` (AdamW, linear decay, warm-up 10 %); imported only when
a run asks for adaptation (``hashee train --adapt-steps N``).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from hashee.modeling.backbones import family_for


def final_states(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every token's final state [batch, seq, hidden]: at its exit layer (HashEE) or the last layer."""
    features = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if getattr(model.config, "model_type", None) == "hashee":
        return model(**features, output_token_states=True).token_states
    family = family_for(model.config)
    if not family.uses_token_type_ids:
        features.pop("token_type_ids", None)
    return family.base(model)(**features).last_hidden_state


def state_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference per hidden unit over the real tokens (``mask`` [batch, seq])."""
    weights = mask.to(student.dtype)[:, :, None]
    squared = ((student - teacher.to(student.dtype)) ** 2 * weights).sum()
    return squared / (weights.sum().clamp(min=1) * student.shape[-1])


class AdaptationTrainer(Trainer):
    """A ``Trainer`` whose loss is :func:`state_loss` against a frozen dense model's last hidden states."""

    def __init__(self, *args: Any, teacher: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        with torch.no_grad():
            target = final_states(self.teacher, inputs)
        loss = state_loss(final_states(model, inputs), target, inputs["attention_mask"])
        return (loss, None) if return_outputs else loss


def adapt(student: Any, teacher: Any, dataset: Any, tokenizer: Any, steps: int, learning_rate: float,
          batch_size: int, seed: int, output_dir: Any, progress: bool = False) -> list[float]:
    """Train ``student`` in place for ``steps`` steps; returns the logged losses (first to last).

    ``dataset`` is a :class:`hashee.data.TokenizedDataset`; its labels are dropped.
    """
    from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments

    features = [{k: v for k, v in item.items() if k != "labels"} for item in dataset.features]
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=steps, learning_rate=learning_rate, warmup_ratio=0.1,
        per_device_train_batch_size=batch_size, lr_scheduler_type="linear", weight_decay=0.01, seed=seed,
        data_seed=seed, save_strategy="no", eval_strategy="no", report_to="none", logging_strategy="steps",
        logging_steps=max(1, steps // 10), logging_first_step=True, disable_tqdm=not progress, use_cpu=not cuda,
        dataloader_pin_memory=cuda, remove_unused_columns=False, label_names=[], push_to_hub=False)
    trainer = AdaptationTrainer(model=student, args=args, train_dataset=features, teacher=teacher,
                                data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    if not progress:
        trainer.remove_callback(PrinterCallback)
    was_training = student.training
    trainer.train()
    student.train(was_training)
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
