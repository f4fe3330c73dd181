"""Tiny random backbones of every supported family, for fast CPU tests."""

from __future__ import annotations

import torch
import transformers

FAMILIES = ("bert", "roberta", "distilbert", "albert", "electra")


def tiny_config(family: str, vocab_size: int = 120, num_layers: int = 4, num_labels: int = 2, **extra):
    common = dict(vocab_size=vocab_size, num_labels=num_labels, max_position_embeddings=64, **extra)
    if family == "bert":
        return transformers.BertConfig(hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
                                       intermediate_size=48, **common)
    if family == "roberta":
        return transformers.RobertaConfig(hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
                                          intermediate_size=48, pad_token_id=1, type_vocab_size=1, **common)
    if family == "distilbert":
        return transformers.DistilBertConfig(dim=32, n_layers=num_layers, n_heads=4, hidden_dim=48, **common)
    if family == "albert":
        return transformers.AlbertConfig(embedding_size=16, hidden_size=32, num_hidden_layers=num_layers,
                                         num_attention_heads=4, intermediate_size=48, **common)
    if family == "electra":
        return transformers.ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=num_layers,
                                          num_attention_heads=4, intermediate_size=48, **common)
    raise ValueError(family)


def tiny_dense(family: str, seed: int = 0, init_std: float | None = None, **kwargs):
    """A randomly initialised ``*ForSequenceClassification`` in eval mode, eager attention.

    ``init_std`` redraws every matrix from N(0, init_std^2): Hugging Face's init (std 0.02) gives logits
    of about 0.01, too small for an absolute 1e-4 bound to catch anything; std 0.2 gives logits of order 1.
    """
    torch.manual_seed(seed)
    config = tiny_config(family, **kwargs)
    model = transformers.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    if init_std is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() == 2:
                    param.copy_(torch.randn(param.shape, generator=generator) * init_std)
    return model.eval()
