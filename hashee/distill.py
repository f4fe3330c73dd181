"""Knowledge distillation for :func:`hashee.training.train`: a fine-tuned teacher's logits as soft targets.

A HashEE student loses accuracy mostly because tokens stop early; a teacher that has seen the task
densely (``hashee train --dense``) gives it a richer target than the labels alone.  The loss is the
usual mix (Hinton et al., 2015)::

    loss = (1 - alpha) * task_loss + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

and, for regression, ``(1 - alpha) * MSE(student, label) + alpha * MSE(student, teacher)``.  With
``hidden > 0`` a hidden-state term is added: ``hidden * state_loss(student states, teacher states)``,
every real token's final state (at its exit layer for HashEE) against the teacher's last hidden state,
or with ``state_target="exit"`` against the teacher's state after that same exit layer
(:func:`hashee.adapt.state_loss`; the teacher must then be a dense model of the same hidden size).  The
teacher runs frozen, in eval mode, on exactly the student's batches (same tokenizer ids); it can be any
run directory with the task's labels (dense or HashEE).  Imported only when a teacher is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from hashee.errors import BackboneError, TrainConfigError


def check_distillation(teacher: str | Path, alpha: float, temperature: float, hidden: float = 0.0,
                       state_target: str = "last") -> Path:
    """Validate the options before anything heavy loads; returns the teacher folder."""
    for name, value in (("distill_alpha", alpha), ("distill_temperature", temperature), ("distill_hidden", hidden)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise TrainConfigError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= alpha <= 1.0:
        raise TrainConfigError(f"distill_alpha must be within [0, 1] (the weight of the teacher's term), got {alpha}")
    if temperature <= 0:
        raise TrainConfigError(f"distill_temperature must be positive, got {temperature}")
    if hidden < 0:
        raise TrainConfigError(f"distill_hidden must be >= 0 (the weight of the hidden-state term), got {hidden}")
    path = Path(teacher)
    if not (path / "config.json").is_file():
        raise BackboneError(f"teacher {path} is not a run directory (no config.json); pass a folder written by "
                            f"`hashee train` (e.g. a --dense run on the same task)")
    if hidden and state_target == "exit" and json.loads((path / "config.json").read_text()).get("model_type") == "hashee":
        raise TrainConfigError(f"state_target 'exit' matches each token to the teacher's state after the student's "
                               f"exit layer, and teacher {path} is a HashEE run (its tokens stop early too): pass a "
                               f"--dense run as the teacher, or --state-target last")
    return path


def load_teacher(path: Path, label2id: dict[str, int] | None, vocab_size: int) -> Any:
    """The teacher model, frozen and in eval mode, after checking it fits the task and the tokenizer.

    Raises :class:`BackboneError` when its labels or vocabulary differ from the student's.
    """
    from transformers import AutoModelForSequenceClassification

    import hashee.modeling  # noqa: F401 - registers the HashEE classes with the Auto factories

    config = json.loads((path / "config.json").read_text())
    dense_config = config.get("backbone", config) if config.get("model_type") == "hashee" else config
    teacher_vocab = int(dense_config.get("vocab_size", vocab_size))
    if teacher_vocab != vocab_size:
        raise BackboneError(f"teacher {path} has a vocabulary of {teacher_vocab} ids but the student's tokenizer "
                            f"has {vocab_size}: distillation needs the same tokenizer; pick a teacher trained from "
                            f"the same backbone")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise BackboneError(f"cannot load teacher {path} as a sequence classifier: {exc}") from exc
    theirs = {str(k): int(v) for k, v in (model.config.label2id or {}).items()}
    if label2id is None:  # regression: one output
        if int(model.config.num_labels) != 1:
            raise BackboneError(f"teacher {path} is a {model.config.num_labels}-class classifier but the task is "
                                f"regression; pass a regression run as the teacher")
    elif theirs != {str(k): int(v) for k, v in label2id.items()}:
        raise BackboneError(f"teacher {path} has labels {theirs} but the training data has {dict(label2id)}; "
                            f"pass a teacher trained on the same task")
    model.requires_grad_(False)
    return model.eval()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float,
                      temperature: float, regression: bool) -> torch.Tensor:
    """The mixed loss above for one batch (``student``/``teacher`` logits [batch, labels])."""
    if regression:
        task = F.mse_loss(student.squeeze(-1), labels.to(student.dtype))
        soft = F.mse_loss(student.squeeze(-1), teacher.squeeze(-1).to(student.dtype))
        return (1 - alpha) * task + alpha * soft
    task = F.cross_entropy(student, labels)
    soft = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    return (1 - alpha) * task + alpha * soft


class DistillationTrainer(Trainer):
    """A Hugging Face ``Trainer`` whose training loss mixes the labels with a frozen teacher's logits."""

    def __init__(self, *args: Any, teacher: Any, alpha: float, temperature: float, regression: bool,
                 hidden: float = 0.0, state_target: str = "last", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device)
        self.alpha, self.temperature, self.regression, self.hidden = alpha, temperature, regression, hidden
        self.state_target = state_target

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        labels = inputs["labels"]
        features = {k: v for k, v in inputs.items() if k != "labels"}
        if self.hidden:
            return self._with_hidden(model, features, labels, return_outputs)
        outputs = model(**features)
        with torch.no_grad():
            teacher_logits = self.teacher(**_teacher_inputs(features)).logits
        loss = distillation_loss(outputs.logits, teacher_logits, labels, self.alpha, self.temperature,
                                 self.regression)
        return (loss, outputs) if return_outputs else loss

    def _with_hidden(self, model: Any, features: dict[str, Any], labels: Any, return_outputs: bool) -> Any:
        """Logit and hidden-state terms from one forward of each model."""
        from hashee.adapt import state_loss, states_after

        states, layers, outputs = _states_and_logits(model, features)
        with torch.no_grad():
            teacher_states, _, teacher = _states_and_logits(self.teacher, _teacher_inputs(features))
            if self.state_target == "exit":
                teacher_states = states_after(teacher.hidden_states, layers)
        loss = distillation_loss(outputs.logits, teacher.logits, labels, self.alpha, self.temperature, self.regression)
        loss = loss + self.hidden * state_loss(states, teacher_states, features["attention_mask"])
        return (loss, outputs) if return_outputs else loss


def _teacher_inputs(features: dict[str, Any]) -> dict[str, Any]:
    """The student's inputs without its exit layers (a curriculum's): the teacher routes on its own."""
    return {k: v for k, v in features.items() if k != "exit_layers"}


def _states_and_logits(model: Any, features: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Every token's final state, the layer it comes from ([batch, seq]: its exit layer for HashEE, the
    depth otherwise) and the model's output, from one forward (HashEE or Hugging Face)."""
    if getattr(model.config, "model_type", None) == "hashee":
        outputs = model(**features, output_token_states=True)
        return outputs.token_states, outputs.exit_layers, outputs
    outputs = model(**features, output_hidden_states=True)
    states = outputs.hidden_states[-1]
    depth = torch.full(states.shape[:2], len(outputs.hidden_states) - 1, dtype=torch.long, device=states.device)
    return states, depth, outputs
