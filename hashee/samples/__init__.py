"""Small real data shipped with hashee for the default run and the demo (see sst2/ATTRIBUTION.md)."""

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent
SST2_TRAIN = SAMPLES_DIR / "sst2" / "train.tsv"  # 2,000 SST-2 training sentences
SST2_DEV = SAMPLES_DIR / "sst2" / "dev.tsv"  # 400 SST-2 development sentences


def sample_texts(count: int = 16) -> list[str]:
    """Real sentences: the first ``count`` of the bundled SST-2 dev sample (validation and warm-up inputs)."""
    import csv

    with open(SST2_DEV, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [row[0] for _, row in zip(range(count), reader)]
