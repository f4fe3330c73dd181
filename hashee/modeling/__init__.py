"""The HashEE reference model (PyTorch, Hugging Face conventions) and its correctness oracle."""

from transformers import AutoConfig, AutoModelForSequenceClassification

from hashee.modeling.configuration import HashEEConfig
from hashee.modeling.modeling import HashEEForSequenceClassification, HashEEOutput

AutoConfig.register(HashEEConfig.model_type, HashEEConfig, exist_ok=True)
AutoModelForSequenceClassification.register(HashEEConfig, HashEEForSequenceClassification, exist_ok=True)

__all__ = ["HashEEConfig", "HashEEForSequenceClassification", "HashEEOutput"]
