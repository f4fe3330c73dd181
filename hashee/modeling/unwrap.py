"""A run folder as the Hugging Face classifier inside it.

A dense run trained with mean pooling (``hashee train --dense --pooling mean``) is saved as a HashEE
model whose exit table sends every token to the last layer: only the HashEE wrapper knows how to pool
the token states.  What needs the plain classifier (a run started from a fine-tuned run, the
importance hash measuring attention) takes the wrapped ``*ForSequenceClassification`` model out of it
with :func:`dense_classifier` and keeps the run's pooling beside it (:func:`run_pooling`), so that the
caller can honour it: wrap the model again with the same pooling, or measure what that pooling reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hashee.errors import BackboneError


def _config(path: Path) -> dict[str, Any]:
    config_path = Path(path) / "config.json"
    try:
        return json.loads(config_path.read_text())
    except FileNotFoundError:
        raise BackboneError(f"{path} holds no config.json; pass a Hugging Face model folder or a hashee train "
                            f"run directory") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BackboneError(f"cannot read {config_path}: {exc}") from exc


def is_hashee_run(path: str | Path) -> bool:
    """True when the folder holds a HashEE model (``model_type`` ``hashee``), dense or routed."""
    return _config(Path(path)).get("model_type") == "hashee"


def run_pooling(path: str | Path) -> str:
    """What the head of the model in ``path`` reads: ``cls`` or ``mean`` (a plain Hugging Face model: ``cls``)."""
    config = _config(Path(path))
    return str(config.get("pooling", "cls")) if config.get("model_type") == "hashee" else "cls"


def dense_classifier(path: str | Path, attn_implementation: str | None = None) -> tuple[Any, str]:
    """``(classifier, pooling)``: the Hugging Face ``*ForSequenceClassification`` model saved in ``path``.

    A HashEE run (``model_type`` ``hashee``) is loaded and unwrapped: its dense model, trained head
    included, with the run's labels and problem type; ``pooling`` says what that head was
    trained to read.  A plain Hugging Face folder is loaded as it is (pooling ``cls``).  With
    ``attn_implementation`` (e.g. ``"eager"`` to get attention weights) the model uses it.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    from hashee.modeling.modeling import HashEEForSequenceClassification

    path = Path(path)
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    try:
        if not is_hashee_run(path):
            return AutoModelForSequenceClassification.from_pretrained(str(path), **extra), "cls"
        wrapped = HashEEForSequenceClassification.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise BackboneError(f"cannot load {path} as a sequence classifier: {exc}") from exc
    dense = wrapped.dense  # built from the run's backbone config: its labels and problem type
    if attn_implementation is not None:  # the same weights in a model built with that attention
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's stream be
            rebuilt = AutoModelForSequenceClassification.from_config(dense.config, **extra)
        rebuilt.load_state_dict(dense.state_dict())
        dense = rebuilt.eval()
    return dense, wrapped.config.pooling
