"""The max-length rule: the longest input a backbone's position table (and its tokenizer) allows.

Core module (standard library only); train, eval and export all ask it.  RoBERTa-family position ids
start after the padding id, so ``pad_token_id + 1`` rows of its position table are never a token's.
"""

from __future__ import annotations

from typing import Any

OFFSET_FAMILIES = ("roberta", "xlm-roberta", "camembert")
UNBOUNDED = 1_000_000  # tokenizers without a limit report a huge model_max_length


def position_limit(config: Any) -> int | None:
    """Positions the config's table has room for (``None`` when it does not say)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return None
    positions = int(positions)
    if getattr(config, "model_type", None) in OFFSET_FAMILIES:
        positions -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    return positions


def max_length_limit(config: Any, tokenizer: Any = None) -> int | None:
    """min(position table, tokenizer's ``model_max_length``); ``None`` when neither bounds it."""
    limits = [] if (positions := position_limit(config)) is None else [positions]
    tok = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < tok < UNBOUNDED:
        limits.append(tok)
    return min(limits) if limits else None
