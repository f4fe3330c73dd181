"""What is fitted from data before deployment: exit tables (every hash kind, budget calibration).

``build_exit_table`` makes a table of any hash kind for any Hugging Face tokenizer;
``calibrate_budget`` picks frequency-bucket boundaries that hit a target FLOPs reduction.
Heavy dependencies (scipy, scikit-learn, torch) are imported inside the functions that need them.
"""

from hashee.calibration.budget import calibrate_budget
from hashee.calibration.exit_tables import HASH_KINDS, bucket_layers, build_exit_table

__all__ = ["HASH_KINDS", "bucket_layers", "build_exit_table", "calibrate_budget"]
