"""The HashEE ONNX graph, written directly from a model's weights.

Contract (issue #3): inputs ``input_ids`` and ``attention_mask`` (int64 [batch, sequence]),
``token_type_ids`` where the backbone uses them, and ``exit_masks`` (bool [num_layers, batch,
sequence]; row ``l-1`` marks the tokens active in layer ``l``, in the original token order).
Outputs ``logits`` [batch, num_labels] and, when asked for, ``token_states`` [batch, sequence, hidden].

Layer ``l`` of the graph:

1. ``active = exit_masks[l-1] & attention_mask`` (as 0/1 float);
2. ``hashee.GatherActive`` packs the active rows of the flattened hidden states ``[B*S, D]``;
3. queries, attention output, LayerNorms and FFN run on those ``n`` rows only; keys and values come
   from every token's state and padding keys are masked, so exited tokens still serve as keys;
4. for attention the ``n`` query rows are scattered into a ``[B, Q]`` grid, ``Q`` being the most
   active tokens of one sequence in this layer (each query sees only its own sequence's keys);
5. ``hashee.ScatterActive`` writes the updated rows back; exited rows are carried over unchanged.

So work per layer falls with the number of active tokens, the caller never sorts, and any mask works
(monotone masks give exactly the PyTorch reference, :mod:`hashee.modeling`).  A non-monotone mask is
taken literally, layer by layer: ``H_l = where(exit_masks[l-1] & attention_mask, Layer_l(H_{l-1}), H_{l-1})``,
so a token marked in rows 1 and 3 but not 2 computes in layers 1 and 3 and is carried through layer 2
(keys and values always come from every real token's current state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hashee.errors import ExportError
from hashee.exporter import custom_ops
from hashee.exporter.builder import GraphBuilder
from hashee.exporter.parts import FLOAT, INT64, activation, embed, head, uses_token_type_ids
from hashee.exporter.targets import MAX_OPSET, MIN_OPSET, TARGETS

MASK_VALUE = -30000.0  # additive attention mask: finite, survives fp16 conversion, exp() underflows to 0


@dataclass(frozen=True)
class GraphSpec:
    """What the exported graph takes and returns (names, dtypes, symbolic shapes)."""

    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return [spec["name"] for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec["name"] for spec in self.outputs]


def check_target(target: str, opset: int) -> None:
    """Raise :class:`ExportError` for an unknown target or an opset outside the supported range."""
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise ExportError(f"opset must be an integer, got {opset!r}")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too low: LayerNormalization needs opset {MIN_OPSET}; "
                          f"use --opset {MIN_OPSET} or higher")
    if opset > MAX_OPSET[target]:
        raise ExportError(f"opset {opset} is too high for the {target} target (it reads up to opset "
                          f"{MAX_OPSET[target]}); use --opset {MAX_OPSET[target]} or lower")


def _attention_plain(b: GraphBuilder, queries: str, keys: str, values: str, mask_add: str, batch: str,
                     heads: int, head_dim: int) -> str:
    """Softmax attention of a [B*Q, D] query grid over [B*S, D] keys/values -> [B*Q, D] (standard ops)."""
    shape = b.op("Concat", [batch, b.const([-1, heads, head_dim])], axis=0, hint="heads_shape")
    q = b.op("Transpose", [b.op("Reshape", [queries, shape])], perm=[0, 2, 1, 3], hint="q_heads")
    k = b.op("Transpose", [b.op("Reshape", [keys, shape])], perm=[0, 2, 3, 1], hint="k_heads")
    v = b.op("Transpose", [b.op("Reshape", [values, shape])], perm=[0, 2, 1, 3], hint="v_heads")
    q = b.op("Mul", [q, b.const(1.0 / math.sqrt(head_dim), np.float32)], hint="scale")
    scores = b.op("Add", [b.op("MatMul", [q, k], hint="scores"), mask_add], hint="masked_scores")
    probs = b.op("Softmax", [scores], axis=-1)
    context = b.op("Transpose", [b.op("MatMul", [probs, v], hint="context")], perm=[0, 2, 1, 3])
    return b.op("Reshape", [context, b.const([-1, heads * head_dim])], hint="context_rows")


def _attention_ort(b: GraphBuilder, queries: str, keys: str, values: str, key_padding: str, batch: str,
                   heads: int, hidden: int) -> str:
    """The same attention through ``com.microsoft.MultiHeadAttention`` (ONNX Runtime target)."""
    shape = b.op("Concat", [batch, b.const([-1, hidden])], axis=0, hint="seq_shape")
    q, k, v = (b.op("Reshape", [t, shape], hint=h) for t, h in ((queries, "q"), (keys, "k"), (values, "v")))
    context = b.op("MultiHeadAttention", [q, k, v, "", key_padding], domain="com.microsoft", num_heads=heads,
                   mask_filter_value=MASK_VALUE)
    return b.op("Reshape", [context, b.const([-1, hidden])], hint="context_rows")


def _exit_plan(b: GraphBuilder, env: dict[str, str]) -> None:
    """Bookkeeping of every layer at once, from the [L, B, S] exit masks: once per batch, not per layer.

    Adds to ``env``: ``active`` [L, B, S] float (1 where a real token computes in layer l),
    ``slot`` [L, B, S] int64 (its row in layer l's [B * Q_l] query grid: b * Q_l + rank within its
    sequence) and ``grid_rows`` [L, 1] int64 (B * Q_l), with Q_l the most active tokens of one sequence
    (at least 1).
    """
    b.scope = "plan"
    keep = b.op("Unsqueeze", [env["keep"], b.const([0])], hint="keep_all")
    active = b.op("Cast", [b.op("And", [env["exit_masks"], keep])], to=FLOAT, hint="active")
    counts = b.reduce("ReduceSum", active, [2])
    widest = b.op("Max", [b.reduce("ReduceMax", counts, [1], keepdims=1), b.const([1.0], np.float32)])
    width = b.op("Cast", [widest], to=INT64, hint="query_width")
    rank = b.op("Sub", [b.op("Cast", [b.op("CumSum", [active, b.const(2)])], to=INT64), b.const(1)], hint="rank")
    first = b.op("Mul", [b.op("Unsqueeze", [env["batch_column"], b.const([0])]),
                         b.op("Unsqueeze", [width, b.const([2])])], hint="grid_start")
    env["active"], env["slot"] = active, b.op("Add", [first, rank], hint="slot")
    env["grid_rows"] = b.op("Mul", [env["batch"], width], hint="grid_rows")


def _residual_norm(b: GraphBuilder, x: str, linear: Any, residual: str, norm: Any, name: str, norm_name: str,
                   target: str) -> str:
    """LayerNorm(x @ W.T + bias + residual): one ``com.microsoft.SkipLayerNormalization`` on ONNX Runtime."""
    if target != "onnxruntime" or linear.bias is None or norm.weight is None or norm.bias is None:
        return b.layer_norm(b.op("Add", [b.linear(x, linear, name), residual]), norm, norm_name)
    projected = b.op("MatMul", [x, b.weight(f"{name}.weight", linear.weight, transpose=True)], hint=f"{name}.matmul")
    return b.op("SkipLayerNormalization", [projected, residual, b.weight(f"{norm_name}.weight", norm.weight),
                                           b.weight(f"{norm_name}.bias", norm.bias), b.weight(f"{name}.bias", linear.bias)],
                domain="com.microsoft", hint=norm_name, epsilon=float(norm.eps))


def _layer(b: GraphBuilder, model: Any, index: int, hidden: str, env: dict[str, str], target: str) -> str:
    """Layer ``index`` (1-based) on the flat hidden states [B*S, D]; returns the new states."""
    layer = model.family.layer(model.dense, index - 1)
    heads = layer.num_heads
    size = int(layer.query.weight.shape[0])
    head_dim = size // heads
    name = f"layers.{index - 1}"
    b.scope = f"layer{index}"
    at = b.const(index - 1)
    active = b.op("Gather", [env["active"], at], axis=0, hint="active")
    rows, index_rows = b.op(custom_ops.GATHER_ACTIVE, [hidden, active], outputs=2, domain=custom_ops.DOMAIN)
    # Query grid: the n active rows placed at [b, rank within sequence] of a [B, Q] grid.
    slot = b.op("Reshape", [b.op("Gather", [env["slot"], at], axis=0), b.const([-1, 1])], hint="slot")
    slot = b.op("GatherND", [slot, index_rows], hint="query_slot")
    grid_rows = b.op("Gather", [env["grid_rows"], at], axis=0, hint="grid_rows")

    queries = b.linear(rows, layer.query, f"{name}.query")
    keys = b.linear(hidden, layer.key, f"{name}.key")
    values = b.linear(hidden, layer.value, f"{name}.value")
    zeros = b.op("ConstantOfShape", [b.op("Concat", [grid_rows, b.const([size])], axis=0)], hint="grid")
    grid = b.op("ScatterND", [zeros, slot, queries], hint="query_grid")
    if target == "onnxruntime":
        context = _attention_ort(b, grid, keys, values, env["key_padding"], env["batch"], heads, size)
    else:
        context = _attention_plain(b, grid, keys, values, env["mask_add"], env["batch"], heads, head_dim)
    context = b.op("GatherND", [context, slot], hint="context_active")
    out = attention_output_and_ffn(b, layer, name, context, rows, target)
    return b.op(custom_ops.SCATTER_ACTIVE, [hidden, index_rows, out], domain=custom_ops.DOMAIN)


def key_mask(b: GraphBuilder, target: str) -> dict[str, str]:
    """Padding as attention sees it: ORT's int32 key padding, or an additive [B, 1, 1, S] mask elsewhere."""
    from onnx import TensorProto

    if target == "onnxruntime":
        return {"key_padding": b.op("Cast", ["attention_mask"], to=TensorProto.INT32, hint="key_padding")}
    missing = b.op("Sub", [b.const(1.0, np.float32), b.op("Cast", ["attention_mask"], to=FLOAT)])
    return {"mask_add": b.op("Unsqueeze", [b.op("Mul", [missing, b.const(MASK_VALUE, np.float32)]),
                                           b.const([1, 2])], hint="mask_add")}


def attention_output_and_ffn(b: GraphBuilder, layer: Any, name: str, context: str, rows: str, target: str) -> str:
    """A layer's tail on the active rows: output projection + residual + LayerNorm, FFN + residual + LayerNorm."""
    attended = _residual_norm(b, context, layer.attn_output, rows, layer.attn_norm, f"{name}.attention.output",
                              f"{name}.attention.LayerNorm", target)
    inner = activation(b, b.linear(attended, layer.ffn_in, f"{name}.ffn.in"), layer.activation, "act",
                       contrib=target == "onnxruntime")
    return _residual_norm(b, inner, layer.ffn_out, attended, layer.ffn_norm, f"{name}.ffn.out",
                          f"{name}.ffn.LayerNorm", target)


def _pooled(b: GraphBuilder, model: Any, states: str, keep: str) -> str:
    """What the head reads: the [CLS] state, or (``pooling == "mean"``) the mean of the real tokens' states."""
    if getattr(model.config, "pooling", "cls") != "mean":
        return b.op("Gather", [states, b.const(0)], axis=1, hint="cls")
    weights = b.op("Unsqueeze", [b.op("Cast", [keep], to=FLOAT), b.const([2])], hint="mean_weights")
    total = b.op("ReduceSum", [b.op("Mul", [states, weights]), b.const([1])], keepdims=0, hint="mean_sum")
    count = b.op("Max", [b.op("ReduceSum", [weights, b.const([1])], keepdims=0), b.const(1.0, np.float32)])
    return b.op("Div", [total, count], hint="mean_pooled")


def assemble_model(b: GraphBuilder, model: Any, logits: str, spec_in: list[dict[str, Any]],
                   spec_out: list[dict[str, Any]], opset: int, target: str, domain_version: int, functions: list[Any],
                   what: str, props: dict[str, str]) -> Any:
    """The ``ModelProto`` around a built graph: IO value infos, opsets, the ``hashee`` functions, properties."""
    from onnx import TensorProto, helper

    from hashee import __version__

    dtypes = {"int64": TensorProto.INT64, "bool": TensorProto.BOOL, "float32": TensorProto.FLOAT}
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="outputs/logits"))

    def value_info(spec: dict[str, Any]) -> Any:
        return helper.make_tensor_value_info(spec["name"], dtypes[spec["dtype"]], spec["shape"])

    graph = helper.make_graph(b.nodes, "hashee", [value_info(s) for s in spec_in], [value_info(s) for s in spec_out],
                              initializer=b.initializers)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(custom_ops.DOMAIN, domain_version)]
    if target == "onnxruntime":
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    num_layers = int(model.num_layers)
    proto = helper.make_model(graph, opset_imports=opsets, functions=functions, producer_name="hashee",
                              producer_version=__version__,
                              doc_string=f"HashEE {model.family.model_type}, {num_layers} layers, {what}")
    proto.ir_version = helper.find_min_ir_version_for(opsets[:2], ignore_unknown=True)
    helper.set_model_props(proto, {"hashee.target": target, "hashee.num_layers": str(num_layers), **props})
    return proto


def build_graph(model: Any, target: str = "onnxruntime", opset: int = MIN_OPSET,
                token_outputs: bool = False) -> tuple[Any, GraphSpec]:
    """The ONNX ``ModelProto`` of a :class:`~hashee.modeling.HashEEForSequenceClassification` and its spec.

    Deterministic: the same weights give byte-identical serialisations.
    """
    from onnx import TensorProto

    check_target(target, opset)
    custom_ops.register_schemas()
    config = model.dense.config
    num_layers, num_labels = int(model.num_layers), int(config.num_labels)
    hidden_size = int(model.family.layer(model.dense, 0).query.weight.shape[0])
    with_types = uses_token_type_ids(model)

    spec_in = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
               {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]}]
    if with_types:
        spec_in.append({"name": "token_type_ids", "dtype": "int64", "shape": ["batch", "sequence"]})
    spec_in.append({"name": "exit_masks", "dtype": "bool", "shape": ["num_layers", "batch", "sequence"]})
    spec_out = [{"name": "logits", "dtype": "float32", "shape": ["batch", num_labels]}]
    if token_outputs:
        spec_out.append({"name": "token_states", "dtype": "float32", "shape": ["batch", "sequence", hidden_size]})

    b = GraphBuilder(opset)
    b.scope = "inputs"
    batch = b.dim("input_ids", 0)
    seq = b.dim("input_ids", 1)
    keep = b.op("Cast", ["attention_mask"], to=TensorProto.BOOL, hint="keep")
    env = {
        "exit_masks": "exit_masks", "keep": keep, "batch": batch,
        "batch_column": b.op("Unsqueeze", [b.op("Range", [b.const(0), b.op("Squeeze", [batch, b.const([0])]),
                                                           b.const(1)]), b.const([1])], hint="batch_column"),
    }
    env.update(key_mask(b, target))
    _exit_plan(b, env)
    embedded = embed(b, model, "input_ids", "token_type_ids" if with_types else None, seq)
    b.scope = "embeddings"
    hidden = b.op("Reshape", [embedded, b.const([-1, hidden_size])], hint="flat")
    for index in range(1, num_layers + 1):
        hidden = _layer(b, model, index, hidden, env, target)
    b.scope = "outputs"
    states = b.op("Reshape", [hidden, b.op("Concat", [batch, seq, b.const([hidden_size])], axis=0)],
                  outputs=["token_states" if token_outputs else "outputs/states"])
    logits = head(b, model, _pooled(b, model, states, keep))
    proto = assemble_model(b, model, logits, spec_in, spec_out, opset, target, custom_ops.DOMAIN_VERSION,
                           custom_ops.function_protos(opset), f"target {target}", {})
    return proto, GraphSpec(spec_in, spec_out)
