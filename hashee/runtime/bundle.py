"""The runtime's view of a bundle: re-exported from the core :mod:`hashee.bundle`, where the format lives."""

from hashee.bundle import TASKS, Bundle, open_bundle, tokenizer_config

__all__ = ["TASKS", "Bundle", "open_bundle", "tokenizer_config"]
