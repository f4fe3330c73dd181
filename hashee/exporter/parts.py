"""Per-family graph pieces written from a model's weights: embeddings, activations, classification heads.

The encoder layers are family-agnostic (they use :class:`hashee.modeling.backbones.LayerModules`);
what differs between BERT, RoBERTa, DistilBERT, ALBERT and ELECTRA is how tokens are embedded and
how the [CLS] state becomes logits.  Each function mirrors the Hugging Face module it replaces, in
eval mode (dropout is the identity).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hashee.errors import ExportError
from hashee.exporter.builder import GraphBuilder

FLOAT = 1  # onnx.TensorProto.FLOAT
INT64 = 7  # onnx.TensorProto.INT64


def uses_token_type_ids(model: Any) -> bool:
    """Whether the exported graph takes ``token_type_ids`` (the family uses them and has > 1 type)."""
    config = model.dense.config
    return bool(model.family.uses_token_type_ids and int(getattr(config, "type_vocab_size", 1) or 1) > 1)


def activation(b: GraphBuilder, x: str, fn: Any, name: str, contrib: bool = False) -> str:
    """The ONNX form of a Hugging Face activation module or function.

    With ``contrib`` (ONNX Runtime target) the GELUs are one ``com.microsoft`` node each (``Gelu``,
    ``FastGelu``) instead of five to eight standard ones.
    """
    import torch.nn.functional as F
    from torch import nn

    kind = type(fn).__name__
    if isinstance(fn, nn.GELU):
        kind = "GELUActivation" if fn.approximate == "none" else "NewGELUActivation"
    elif fn is F.gelu:
        kind = "GELUActivation"
    elif fn is F.relu or isinstance(fn, nn.ReLU):
        kind = "ReLU"
    elif fn is F.silu or isinstance(fn, nn.SiLU):
        kind = "SiLU"
    scope, b.scope = b.scope, f"{b.scope}/{name}"
    try:
        if contrib and kind == "GELUActivation":
            return b.op("Gelu", [x], domain="com.microsoft")
        if contrib and kind in ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "FastGELUActivation"):
            return b.op("FastGelu", [x], domain="com.microsoft")
        if kind == "GELUActivation":  # 0.5 x (1 + erf(x / sqrt 2))
            inner = b.op("Erf", [b.op("Mul", [x, b.const(1 / math.sqrt(2), np.float32)])])
            return b.op("Mul", [b.op("Mul", [x, b.const(0.5, np.float32)]),
                                b.op("Add", [inner, b.const(1.0, np.float32)])])
        if kind in ("NewGELUActivation", "GELUTanh", "PytorchGELUTanh", "FastGELUActivation"):
            cube = b.op("Mul", [b.op("Mul", [x, x]), x])
            poly = b.op("Add", [x, b.op("Mul", [cube, b.const(0.044715, np.float32)])])
            inner = b.op("Tanh", [b.op("Mul", [poly, b.const(math.sqrt(2.0 / math.pi), np.float32)])])
            return b.op("Mul", [b.op("Mul", [x, b.const(0.5, np.float32)]),
                                b.op("Add", [inner, b.const(1.0, np.float32)])])
        if kind == "ReLU":
            return b.op("Relu", [x])
        if kind in ("SiLU", "SiLUActivation"):
            return b.op("Mul", [x, b.op("Sigmoid", [x])])
        if kind == "QuickGELUActivation":
            return b.op("Mul", [x, b.op("Sigmoid", [b.op("Mul", [x, b.const(1.702, np.float32)])])])
        if kind == "Tanh":
            return b.op("Tanh", [x])
    finally:
        b.scope = scope
    raise ExportError(f"activation {kind} is not supported by the ONNX exporter; supported: gelu, gelu_new, "
                      f"gelu_pytorch_tanh, gelu_fast, quick_gelu, relu, silu")


def embed(b: GraphBuilder, model: Any, input_ids: str, token_type_ids: str | None, seq_len: str,
          position_ids: str | None = None, keep: str | None = None) -> str:
    """Token + position (+ segment) embeddings, LayerNorm, and the family's projection: [B, S, hidden].

    With ``position_ids`` (the prefix layout: each slot's 0-based original position) tokens are embedded
    at those positions; RoBERTa's then start after its padding id at the real tokens (``keep``, bool).
    """
    family, dense = model.family.model_type, model.dense
    base = dense.distilbert if family == "distilbert" else getattr(dense, family)
    emb = base.embeddings
    b.scope = "embeddings"
    x = b.op("Gather", [b.weight("embeddings.word", emb.word_embeddings.weight), input_ids], hint="word")
    positions = b.weight("embeddings.position", emb.position_embeddings.weight)
    if position_ids is not None:
        ids = position_ids
        if family == "roberta":
            pad = int(emb.padding_idx)
            ids = b.op("Where", [keep, b.op("Add", [position_ids, b.const(pad + 1)]), b.const(pad)], hint="position_ids")
        pos = b.op("Gather", [positions, ids], hint="position")
    elif family == "roberta":  # positions count non-padding tokens, starting after padding_idx
        pad = int(emb.padding_idx)
        real = b.op("Cast", [b.op("Not", [b.op("Equal", [input_ids, b.const(pad)])])], to=FLOAT)
        count = b.op("Mul", [b.op("CumSum", [real, b.const(1)]), real])
        ids = b.op("Add", [b.op("Cast", [count], to=INT64), b.const(pad)])
        pos = b.op("Gather", [positions, ids], hint="position")
    else:
        pos = b.op("Slice", [positions, b.const([0]), seq_len, b.const([0])], hint="position")
    x = b.op("Add", [x, pos])
    types = getattr(emb, "token_type_embeddings", None)
    if types is not None:
        if token_type_ids is not None:
            x = b.op("Add", [x, b.op("Gather", [b.weight("embeddings.token_type", types.weight), token_type_ids])])
        else:
            row = types.weight.detach()[0].cpu().float().numpy()
            x = b.op("Add", [x, b.initializer("embeddings.token_type.row0", row)])
    x = b.layer_norm(x, emb.LayerNorm, "embeddings.LayerNorm")
    if family == "albert":
        x = b.linear(x, dense.albert.encoder.embedding_hidden_mapping_in, "embeddings.project")
    elif family == "electra" and getattr(dense.electra, "embeddings_project", None) is not None:
        x = b.linear(x, dense.electra.embeddings_project, "embeddings.project")
    return x


def head(b: GraphBuilder, model: Any, cls: str) -> str:
    """Logits [B, num_labels] from the [CLS] states [B, hidden], through the family's pooler/head."""
    family, dense = model.family.model_type, model.dense
    b.scope = "head"
    if family == "bert":
        if dense.bert.pooler is None:
            raise ExportError("this BERT model has no pooler; load it with add_pooling_layer=True")
        pooled = b.op("Tanh", [b.linear(cls, dense.bert.pooler.dense, "pooler")])
        return b.linear(pooled, dense.classifier, "classifier")
    if family == "albert":
        pooled = b.op("Tanh", [b.linear(cls, dense.albert.pooler, "pooler")])
        return b.linear(pooled, dense.classifier, "classifier")
    if family == "distilbert":
        hidden = b.op("Relu", [b.linear(cls, dense.pre_classifier, "pre_classifier")])
        return b.linear(hidden, dense.classifier, "classifier")
    classifier = dense.classifier
    if family == "roberta":
        hidden = b.op("Tanh", [b.linear(cls, classifier.dense, "classifier.dense")])
    elif family == "electra":
        hidden = activation(b, b.linear(cls, classifier.dense, "classifier.dense"), classifier.activation, "act")
    else:
        raise ExportError(f"no ONNX head for backbone family {family!r}")
    return b.linear(hidden, classifier.out_proj, "classifier.out_proj")
