"""hashee: hash-based token-level early exiting (HashEE) for transformer encoders.

Light names (:class:`ExitTable`, the errors) import at once; the PyTorch model classes load on first
use, so ``import hashee`` and ``hashee --help`` stay fast and work without importing torch.
"""

from __future__ import annotations

from typing import Any

from hashee.errors import HasheeError
from hashee.exit_table import ExitTable

__version__ = "0.1.0"

_LAZY = {
    "HashEEConfig": "hashee.modeling",
    "HashEEForSequenceClassification": "hashee.modeling",
    "build_exit_table": "hashee.calibration",
    "calibrate_budget": "hashee.calibration",
}

__all__ = ["ExitTable", "HasheeError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hashee' has no attribute {name!r}")
