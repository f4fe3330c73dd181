"""The importance exit table: tokens that a fine-tuned dense model attends to leave the encoder late.

In the spirit of Token Dropping's per-id loss table, every vocabulary id gets one number measured on
the fine-tuned dense model over the training texts: the attention it receives from [CLS] (from every
real token for a mean-pooled model, whose head reads their mean), averaged over heads and layers and
over the id's occurrences.  Ranked least important first, the ids fill the
buckets of a FLOPs-calibrated table (:func:`hashee.calibration.calibrate_budget`), so the budget is
spent on the tokens the dense model's decision rests on.  ``order="high-first"`` reverses the ranking
(the direction of the seed's MI hash, which sends high-MI tokens to the lowest layers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np

from hashee.calibration.exit_tables import TextItem, _normalise_texts
from hashee.errors import BackboneError, HashConfigError

IMPORTANCE_ORDERS = ("low-first", "high-first")
POOLINGS = ("cls", "mean")


def cls_attention_importance(model: Any, tokenizer: Any, texts: Iterable[TextItem], max_length: int = 128,
                             batch_size: int = 32, progress: bool = False,
                             pooling: str = "cls") -> tuple[np.ndarray, np.ndarray]:
    """Per vocabulary id: mean attention received from what the head reads (all heads and layers), and its count.

    ``model`` is a Hugging Face encoder classifier loaded with eager attention (attention weights are
    returned).  With ``pooling="cls"`` the attention comes from [CLS] (the head reads its state); with
    ``"mean"`` (a mean-pooled run: the head reads the mean of every token's state) it is averaged over
    every real query token.  Padding positions are never counted, neither as queries nor as keys;
    [CLS] attending to itself counts for [CLS].
    """
    if pooling not in POOLINGS:
        raise HashConfigError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    import torch
    from tqdm.auto import tqdm

    items = _normalise_texts(texts)
    vocab = len(tokenizer)
    sums = np.zeros(vocab, dtype=np.float64)
    counts = np.zeros(vocab, dtype=np.int64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(items), batch_size), desc="importance", disable=not progress):
                chunk = items[start:start + batch_size]
                first = [a for a, _ in chunk]
                second = [b for _, b in chunk] if chunk[0][1] is not None else None
                batch = tokenizer(first, second, truncation=True, max_length=max_length, padding=True,
                                  return_tensors="pt").to(device)
                attentions = model(**batch, output_attentions=True).attentions
                if not attentions or attentions[0] is None:
                    raise BackboneError("the model returned no attention weights; load it with "
                                        "attn_implementation='eager'")
                keep = batch["attention_mask"].bool()
                received = _received(attentions, keep, pooling)  # [batch, seq]
                ids = batch["input_ids"][keep].cpu().numpy()
                sums += np.bincount(ids, weights=received[keep].double().cpu().numpy(), minlength=vocab)[:vocab]
                counts += np.bincount(ids, minlength=vocab)[:vocab]
    finally:
        model.train(was_training)
    mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return mean, counts


def _received(attentions: tuple, keep: Any, pooling: str) -> Any:
    """[batch, seq]: attention each key receives, averaged over layers and heads (and real queries for mean)."""
    import torch

    stacked = torch.stack(attentions).mean(dim=(0, 2))  # [batch, query, key]
    if pooling == "cls":
        return stacked[:, 0, :]
    queries = keep.to(stacked.dtype)[:, :, None]
    return (stacked * queries).sum(dim=1) / queries.sum(dim=1).clamp(min=1)


def importance_ranking(importance: np.ndarray, counts: np.ndarray, order: str = "low-first") -> np.ndarray:
    """Seen ids in exit order: least important first (``low-first``) or most important first.

    Ties are broken by frequency (more frequent first), then by id, so the ranking is deterministic.
    """
    if order not in IMPORTANCE_ORDERS:
        raise HashConfigError(f"unknown importance order {order!r}; use one of {', '.join(IMPORTANCE_ORDERS)}")
    seen = np.flatnonzero(counts > 0)
    key = np.round(importance[seen], 12)
    if order == "high-first":
        key = -key
    return seen[np.lexsort((seen, -counts[seen], key))]


def load_importance_model(run_dir: str | Path, vocab_size: int) -> Any:
    """A fine-tuned dense classifier (e.g. a ``hashee train --dense`` run) with eager attention.

    A mean-pooled dense run (saved as a HashEE model with every token at the last layer) is unwrapped
    to its dense classifier (:func:`hashee.modeling.unwrap.dense_classifier`); measure it with
    ``pooling=importance_pooling(run_dir)`` so that the importance is the attention its head reads.
    """
    from hashee.modeling.unwrap import dense_classifier

    path = Path(run_dir)
    if not (path / "config.json").is_file():
        raise HashConfigError(f"the importance model {path} holds no config.json; pass a fine-tuned dense run "
                              f"directory (hashee train --dense)")
    try:
        model, _ = dense_classifier(path, attn_implementation="eager")
    except BackboneError as exc:
        raise HashConfigError(f"cannot load the importance model {path} as a dense classifier ({exc}); pass a "
                              f"hashee train --dense run") from exc
    rows = model.get_input_embeddings().num_embeddings
    if rows < vocab_size:
        raise HashConfigError(f"the importance model {path} has {rows} token embeddings but the tokenizer "
                              f"{vocab_size}: it was trained with another vocabulary")
    return model


def importance_pooling(run_dir: str | Path) -> str:
    """What the head of the importance run reads (``cls`` or ``mean``): the queries its importance averages."""
    from hashee.modeling.unwrap import run_pooling

    return run_pooling(run_dir)
