"""The prefix-layout ONNX graph (``hashee export --layout prefix``, issue 14): every shape from input shapes.

Contract: inputs ``input_ids``, ``attention_mask``, ``position_ids`` (int64 [batch, sequence]; the host
has sorted each row by exit layer, descending and stable, and ``position_ids`` holds each slot's
original position, a permutation of ``0..sequence-1``), ``token_type_ids`` where the backbone uses
them, and ``exit_mask_1`` ... ``exit_mask_L`` (bool [batch, W_l]; ``W_1`` = sequence).  The host side
is :func:`hashee.prefix.plan_prefix`.  Outputs ``logits`` [batch, num_labels] and, when asked for,
``token_states`` [batch, sequence, hidden] in the *original* token order.

Layer ``l``: ``hashee.GatherActive`` (version 2: a Slice sized by the shape of ``exit_mask_l``) takes
``hidden[:, :W_l]``; queries, attention output and FFN run on it, keys and values on every slot
(padding masked); ``hashee.ScatterActive`` (a Where and a Concat) keeps the old state where the mask
is false and appends ``hidden[:, W_l:]``.  No NonZero, GatherND or ScatterND, no ReduceMax of a mask:
:func:`hashee.exporter.targets.value_dependent_shapes` finds nothing, so TensorRT needs no
device-to-host synchronisation and a CUDA graph can capture an engine per shape.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hashee.errors import ExportError
from hashee.exporter import custom_ops
from hashee.exporter.builder import GraphBuilder
from hashee.exporter.graph import MASK_VALUE, GraphSpec, assemble_model, attention_output_and_ffn, check_target, key_mask
from hashee.exporter.parts import embed, head, uses_token_type_ids
from hashee.exporter.targets import MIN_OPSET
from hashee.prefix import mask_name


def _attention(b: GraphBuilder, queries: str, keys: str, values: str, env: dict[str, str], target: str,
               heads: int, hidden: int) -> str:
    """Attention of [B, W, D] queries over [B, S, D] keys/values of the same row -> [B, W, D]."""
    if target == "onnxruntime":
        return b.op("MultiHeadAttention", [queries, keys, values, "", env["key_padding"]], domain="com.microsoft",
                    num_heads=heads, mask_filter_value=MASK_VALUE)
    head_dim = hidden // heads
    split = b.const([0, 0, heads, head_dim])
    q = b.op("Transpose", [b.op("Reshape", [queries, split])], perm=[0, 2, 1, 3], hint="q_heads")
    k = b.op("Transpose", [b.op("Reshape", [keys, split])], perm=[0, 2, 3, 1], hint="k_heads")
    v = b.op("Transpose", [b.op("Reshape", [values, split])], perm=[0, 2, 1, 3], hint="v_heads")
    q = b.op("Mul", [q, b.const(1.0 / math.sqrt(head_dim), np.float32)], hint="scale")
    scores = b.op("Add", [b.op("MatMul", [q, k], hint="scores"), env["mask_add"]], hint="masked_scores")
    probs = b.op("Softmax", [scores], axis=-1)
    context = b.op("Transpose", [b.op("MatMul", [probs, v], hint="context")], perm=[0, 2, 1, 3])
    return b.op("Reshape", [context, b.const([0, 0, hidden])], hint="context_rows")


def _layer(b: GraphBuilder, model: Any, index: int, hidden: str, env: dict[str, str], target: str) -> str:
    """Layer ``index`` (1-based) on sorted states [B, S, D]; returns the new states."""
    layer = model.family.layer(model.dense, index - 1)
    size = int(layer.query.weight.shape[0])
    name = f"layers.{index - 1}"
    b.scope = f"layer{index}"
    mask = mask_name(index)
    rows = b.op(custom_ops.GATHER_ACTIVE, [hidden, mask], domain=custom_ops.DOMAIN, hint="active_rows")
    grid = b.op("Shape", [rows], hint="active_grid")  # [B, W_l, D]: from input shapes only
    # The active slots as 2-D rows [B * W_l, D]: ONNX Runtime fuses a 2-D MatMul + bias into one Gemm
    # (its 3-D MatMul keeps a separate bias Add and runs slower per row), as in the packed layout.
    flat = b.op("Reshape", [rows, b.const([-1, size])], hint="active_flat")
    queries = b.op("Reshape", [b.linear(flat, layer.query, f"{name}.query"), grid], hint="queries")
    every_flat = b.op("Reshape", [hidden, b.const([-1, size])], hint="slots_flat")
    keys = b.op("Reshape", [b.linear(every_flat, layer.key, f"{name}.key"), env["slot_grid"]], hint="keys")
    values = b.op("Reshape", [b.linear(every_flat, layer.value, f"{name}.value"), env["slot_grid"]], hint="values")
    context = _attention(b, queries, keys, values, env, target, layer.num_heads, size)
    context = b.op("Reshape", [context, b.const([-1, size])], hint="context_flat")
    out = b.op("Reshape", [attention_output_and_ffn(b, layer, name, context, flat, target), grid], hint="active_out")
    return b.op(custom_ops.SCATTER_ACTIVE, [hidden, mask, out], domain=custom_ops.DOMAIN, hint="write_back")


def _restore_order(b: GraphBuilder, states: str, hidden_size: int, token_outputs: bool) -> tuple[str, str | None]:
    """``([CLS] states [B, D], token states in the original order or None)`` from sorted states [B, S, D]."""
    from onnx import TensorProto, helper

    b.scope = "outputs"
    shape = b.op("Shape", ["position_ids"], hint="shape")
    seq = b.op("Squeeze", [b.dim("position_ids", 1), b.const([0])], hint="seq")
    slots = b.op("Expand", [b.op("Range", [b.const(0), seq, b.const(1)], hint="slots"), shape], hint="slot_grid")
    zeros = b.op("ConstantOfShape", [shape], hint="zeros", value=helper.make_tensor("zero", TensorProto.INT64, [1], [0]))
    inverse = b.op("ScatterElements", [zeros, "position_ids", slots], axis=1, hint="inverse")  # slot of each position
    cls_slot = b.op("Unsqueeze", [b.op("Slice", [inverse, b.const([0]), b.const([1]), b.const([1])]), b.const([2])])
    cls_index = b.op("Expand", [cls_slot, b.op("Concat", [b.dim("position_ids", 0), b.const([1, hidden_size])],
                                                 axis=0)], hint="cls_index")
    cls = b.op("Reshape", [b.op("GatherElements", [states, cls_index], axis=1), b.const([-1, hidden_size])], hint="cls")
    if not token_outputs:
        return cls, None
    index = b.op("Expand", [b.op("Unsqueeze", [inverse, b.const([2])]), b.op("Shape", [states])], hint="token_index")
    return cls, b.op("GatherElements", [states, index], axis=1, outputs=["token_states"])


def build_prefix_graph(model: Any, target: str = "onnxruntime", opset: int = MIN_OPSET,
                       token_outputs: bool = False) -> tuple[Any, GraphSpec]:
    """The prefix-layout ``ModelProto`` of a HashEE model and its spec (deterministic, like the packed one)."""
    from onnx import TensorProto

    check_target(target, opset)
    if getattr(model.config, "pooling", "cls") != "cls":
        raise ExportError(f"the prefix layout reads [CLS] from its sorted slots; a {model.config.pooling}-pooled model "
                          f"exports with the packed layout (drop --layout prefix)")
    custom_ops.register_schemas()
    config = model.dense.config
    num_layers, num_labels = int(model.num_layers), int(config.num_labels)
    hidden_size = int(model.family.layer(model.dense, 0).query.weight.shape[0])
    with_types = uses_token_type_ids(model)
    grid = ["batch", "sequence"]
    spec_in = [{"name": n, "dtype": "int64", "shape": grid} for n in ("input_ids", "attention_mask", "position_ids")]
    if with_types:
        spec_in.append({"name": "token_type_ids", "dtype": "int64", "shape": grid})
    for layer in range(1, num_layers + 1):
        spec_in.append({"name": mask_name(layer), "dtype": "bool",
                        "shape": ["batch", "sequence" if layer == 1 else f"width_{layer}"]})
    spec_out = [{"name": "logits", "dtype": "float32", "shape": ["batch", num_labels]}]
    if token_outputs:
        spec_out.append({"name": "token_states", "dtype": "float32", "shape": ["batch", "sequence", hidden_size]})

    b = GraphBuilder(opset)
    b.scope = "inputs"
    keep = b.op("Cast", ["attention_mask"], to=TensorProto.BOOL, hint="keep")
    env: dict[str, str] = {}
    env.update(key_mask(b, target))
    hidden = embed(b, model, "input_ids", "token_type_ids" if with_types else None, "",  # no sequence slice:
                   position_ids="position_ids", keep=keep)  # tokens are embedded at their own positions
    env["slot_grid"] = b.op("Shape", [hidden], hint="slot_grid")  # [B, S, D], the same in every layer
    for index in range(1, num_layers + 1):
        hidden = _layer(b, model, index, hidden, env, target)
    cls, _ = _restore_order(b, hidden, hidden_size, token_outputs)
    logits = head(b, model, cls)
    proto = assemble_model(b, model, logits, spec_in, spec_out, opset, target, custom_ops.PREFIX_DOMAIN_VERSION,
                           custom_ops.prefix_function_protos(opset), f"target {target}, prefix layout",
                           {"hashee.layout": "prefix"})
    return proto, GraphSpec(spec_in, spec_out)


def build_layout_graph(model: Any, target: str, opset: int, token_outputs: bool, layout: str) -> tuple[Any, GraphSpec]:
    """The graph of ``layout`` (``packed``: :func:`hashee.exporter.graph.build_graph`; ``prefix``: this module)."""
    if layout == "prefix":
        return build_prefix_graph(model, target, opset, token_outputs)
    from hashee.exporter.graph import build_graph

    return build_graph(model, target, opset, token_outputs)
