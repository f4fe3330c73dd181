"""Small real data shipped with hashee for the default run and the demo (see sst2/ATTRIBUTION.md)."""

from pathlib import Path
from typing import Any

SAMPLES_DIR = Path(__file__).resolve().parent
SST2_TRAIN = SAMPLES_DIR / "sst2" / "train.tsv"  # 2,000 SST-2 training sentences
SST2_DEV = SAMPLES_DIR / "sst2" / "dev.tsv"  # 400 SST-2 development sentences


#: how a validation case picks its exit layers: None (the exit table's), or forced for every token
FORCED_EXITS = ("first", "last", "random")


def validation_cases() -> list[tuple[str, list, str | None]]:
    """``(name, inputs, exits)`` of the cases every graph check runs (export, convert, calibrate): inputs are
    texts or ``(text, text)`` pairs; ``exits`` is ``None`` (the table's), ``first`` (all exit at layer 1),
    ``last`` (all active) or ``random``."""
    texts = sample_texts()
    return [
        ("text, padded batch of mixed lengths", texts, None),
        ("batch of 1", texts[:1], None),
        ("only special tokens", ["", ""], None),
        ("every token exits at layer 1", texts, "first"),
        ("all tokens active", texts, "last"),
        ("sentence pairs", list(zip(texts[:8], texts[8:16])), None),
        ("random exit layers", texts, "random"),
    ]


def forced_exit_layers(mode: str, shape: tuple, num_layers: int, seed: int = 0) -> Any:
    """int64 exit layers of a forced case (see :func:`validation_cases`)."""
    import numpy as np

    if mode == "first":
        return np.ones(shape, dtype=np.int64)
    if mode == "last":
        return np.full(shape, num_layers, dtype=np.int64)
    return np.random.default_rng(seed).integers(1, num_layers + 1, size=shape)


def sample_texts(count: int = 16) -> list[str]:
    """Real sentences: the first ``count`` of the bundled SST-2 dev sample (validation and warm-up inputs)."""
    import csv

    with open(SST2_DEV, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [row[0] for _, row in zip(range(count), reader)]
