"""Exit table inside the graph (issue #7): the masks computed from ``input_ids``, no ``exit_masks`` input.

Triton's dynamic batching needs every input batch-first, so the ``[num_layers, batch, sequence]``
``exit_masks`` input cannot be served there.  :func:`embed_exit_table` rewrites an exported HashEE graph:

* the exit table becomes the int32 initializer ``exit_table`` ``[vocab]``;
* ``exits = Gather(exit_table, input_ids)`` ``[batch, sequence]``;
* ``exit_masks = Greater(exits[None], [0, 1, ..., L-1][:, None, None])``, i.e. row ``l-1`` is
  ``exit layer >= l``; each layer then ANDs its row with the attention mask, as before.

The tensor keeps the name ``exit_masks``, so it feeds the very same ``hashee.GatherActive`` /
``hashee.ScatterActive`` ops; only ``input_ids``, ``attention_mask`` (and ``token_type_ids``) remain
as inputs, all ``[batch, sequence]``.  Only ops on the TensorRT parser's list are added (Gather,
Unsqueeze with constant axes, Greater on int32).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hashee.errors import ExportError

MASKS = "exit_masks"
TABLE = "exit_table"


def embed_exit_table(model: Any, table: np.ndarray, num_layers: int) -> Any:
    """A copy of the ONNX ``model`` whose ``exit_masks`` input is computed in-graph from ``table``."""
    import onnx
    from onnx import helper, numpy_helper

    table = np.asarray(table)
    if table.ndim != 1 or not np.issubdtype(table.dtype, np.integer):
        raise ExportError(f"the exit table must be a 1-D integer array, got {table.dtype} {table.shape}")
    if table.size and (int(table.min()) < 1 or int(table.max()) > num_layers):
        raise ExportError(f"the exit table holds layers {table.min()}..{table.max()}, outside 1..{num_layers}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    names = [i.name for i in graph.input]
    if MASKS not in names:
        raise ExportError(f"the graph has no {MASKS} input (inputs: {', '.join(names)}); is the table already embedded?")
    if "input_ids" not in names:
        raise ExportError("the graph has no input_ids input")
    keep = [i for i in graph.input if i.name != MASKS]
    del graph.input[:]
    graph.input.extend(keep)
    graph.initializer.append(numpy_helper.from_array(table.astype(np.int32), TABLE))
    graph.initializer.append(numpy_helper.from_array(np.arange(num_layers, dtype=np.int32).reshape(-1, 1, 1),
                                                     "exit_table/layer_index"))
    graph.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), "exit_table/axis0"))
    nodes = [
        helper.make_node("Gather", [TABLE, "input_ids"], ["exit_table/exits"], name="exit_table/gather", axis=0),
        helper.make_node("Unsqueeze", ["exit_table/exits", "exit_table/axis0"], ["exit_table/exits_1bs"],
                         name="exit_table/unsqueeze"),
        helper.make_node("Greater", ["exit_table/exits_1bs", "exit_table/layer_index"], [MASKS],
                         name="exit_table/masks"),
    ]
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    props = {p.key: p.value for p in out.metadata_props}
    props["hashee.exit_table"] = "embedded"
    helper.set_model_props(out, props)
    return out


def has_embedded_table(model: Any) -> bool:
    return any(init.name == TABLE for init in model.graph.initializer) and MASKS not in {i.name for i in model.graph.input}
