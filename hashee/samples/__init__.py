"""Small real data shipped with hashee for the default run and the demo (see sst2/ATTRIBUTION.md)."""

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent
SST2_TRAIN = SAMPLES_DIR / "sst2" / "train.tsv"  # 2,000 SST-2 training sentences
SST2_DEV = SAMPLES_DIR / "sst2" / "dev.tsv"  # 400 SST-2 development sentences
