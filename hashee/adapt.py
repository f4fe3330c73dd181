"""Exit-aware adaptation: teach a routed (HashEE) or cut (static-depth) model to reproduce the dense model.

The seed's backbone (ElasticBERT) was pre-trained with exits at every layer, so its layer-1 states
were already good keys and values for the layers above; an ordinary backbone's are not.  Before task
fine-tuning, :func:`adapt` trains the student for a few steps on unlabelled text (the task's training
texts: no labels are read) to make every real token's final state (its state at its exit layer, for
HashEE) match the frozen full-depth dense backbone's state::

    loss = mean over real tokens of || student_state - dense_state ||^2 / hidden_size

``dense_state`` is the dense model's last hidden state (``state_target="last"``, the default) or, with
``state_target="exit"``, its state after the token's own exit layer (the last layer for [CLS] and a cut
model's depth for a static-depth student): the routed model then learns to compute what the dense model
computes at every depth despite the frozen keys and values of tokens that left, instead of pulling a
token that leaves after layer 1 towards the dense model's layer-L state.

It runs through the Hugging Face ``Trainer`` (AdamW, linear decay, warm-up 10 %); imported only when
a run asks for adaptation (``hashee train --adapt-steps N``).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from hashee.errors import TrainConfigError
from hashee.modeling.backbones import family_for

def _features(model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    features = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if not family_for(model.config).uses_token_type_ids:
        features.pop("token_type_ids", None)
    return features


def final_states(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Every token's final state [batch, seq, hidden]: at its exit layer (HashEE) or the last layer."""
    return routed_states(model, batch)[0]


def routed_states(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every token's final state [batch, seq, hidden] and the layer it comes from [batch, seq]: its exit
    layer for HashEE (the batch's ``exit_layers`` where given, 0 at padding), the depth otherwise."""
    if getattr(model.config, "model_type", None) == "hashee":
        exits = {"exit_layers": batch["exit_layers"]} if batch.get("exit_layers") is not None else {}
        features = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        outputs = model(**features, **exits, output_token_states=True)
        return outputs.token_states, outputs.exit_layers
    states = family_for(model.config).base(model)(**_features(model, batch)).last_hidden_state
    depth = family_for(model.config).num_layers(model.config)
    return states, torch.full(states.shape[:2], depth, dtype=torch.long, device=states.device)


def teacher_states(teacher: Any, batch: dict[str, torch.Tensor], layers: torch.Tensor | None) -> torch.Tensor:
    """A dense teacher's state for every token: its last hidden state (``layers`` None) or the state after
    each token's ``layers`` entry (:func:`states_after`)."""
    base = family_for(teacher.config).base(teacher)
    outputs = base(**_features(teacher, batch), output_hidden_states=layers is not None)
    return outputs.last_hidden_state if layers is None else states_after(outputs.hidden_states, layers)


def states_after(hidden_states: tuple[torch.Tensor, ...], layers: torch.Tensor) -> torch.Tensor:
    """Per token, the state after its layer in ``layers`` ([batch, seq], 1-based; 0 at padding reads layer 1)
    from a Hugging Face ``hidden_states`` tuple (the embeddings, then one state per layer)."""
    depth = len(hidden_states) - 1
    deepest = int(layers.max()) if layers.numel() else 0
    if deepest > depth:
        raise TrainConfigError(f"the student's tokens reach layer {deepest} but the teacher has {depth} layers: "
                               f"state_target 'exit' needs a teacher at least as deep as the student")
    stacked = torch.stack(hidden_states[1:])  # [depth, batch, seq, hidden]
    index = (layers.long().clamp(1, depth) - 1)[None, :, :, None].expand(1, *stacked.shape[1:])
    return stacked.gather(0, index)[0]


def state_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference per hidden unit over the real tokens (``mask`` [batch, seq])."""
    weights = mask.to(student.dtype)[:, :, None]
    squared = ((student - teacher.to(student.dtype)) ** 2 * weights).sum()
    return squared / (weights.sum().clamp(min=1) * student.shape[-1])


class AdaptationTrainer(Trainer):
    """A ``Trainer`` whose loss is :func:`state_loss` against a frozen dense model's states (the last ones, or
    with ``state_target="exit"`` each token's state after its exit layer)."""

    def __init__(self, *args: Any, teacher: Any, state_target: str = "last", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.state_target = state_target

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        states, layers = routed_states(model, inputs)
        with torch.no_grad():
            target = teacher_states(self.teacher, inputs, layers if self.state_target == "exit" else None)
        loss = state_loss(states, target, inputs["attention_mask"])
        return (loss, None) if return_outputs else loss


def adapt(student: Any, teacher: Any, dataset: Any, tokenizer: Any, steps: int, learning_rate: float,
          batch_size: int, seed: int, output_dir: Any, progress: bool = False,
          state_target: str = "last") -> list[float]:
    """Train ``student`` in place for ``steps`` steps; returns the logged losses (first to last).

    ``dataset`` is a :class:`hashee.data.TokenizedDataset`; its labels are dropped.  ``state_target``:
    ``last`` or ``exit`` (see the module's docstring).
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
                                state_target=state_target,
                                data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    if not progress:
        trainer.remove_callback(PrinterCallback)
    was_training = student.training
    trainer.train()
    student.train(was_training)
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
