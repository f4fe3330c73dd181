"""The project's own ONNX ops: ``hashee.GatherActive`` and ``hashee.ScatterActive``.

Both are model-local functions (``FunctionProto``) of the ``hashee`` domain whose bodies use only
standard ONNX ops, so the checker passes, a stock ONNX Runtime runs the file with no extra library,
and TensorRT's parser inlines them.  Their schemas are registered with :mod:`onnx.defs` (see
:func:`register_schemas`) so that tools reading the file can look them up.

``GatherActive(hidden [T, D], active [B, S] float) -> (rows [n, D], index [n, 1])``
    picks the rows of the flattened ``[B*S, D]`` hidden states whose mask entry is non-zero, in the
    original token order; ``index`` holds their flat positions.  The mask is float (0/1) rather than
    bool because TensorRT's NonZero takes FP32/FP16 only.
``ScatterActive(hidden [T, D], index [n, 1], rows [n, D]) -> hidden' [T, D]``
    writes ``rows`` back at ``index`` (ScatterND without reduction) and leaves every other row as is.

The prefix layout (``hashee export --layout prefix``, issue 14) uses version 2 of the domain, whose
bodies are a Slice and a Concat sized by the *shape* of the layer's mask (no NonZero, no ScatterND):

``GatherActive(hidden [B, S, D], mask [B, W] bool) -> rows [B, W, D]``: ``hidden[:, :W]``.
``ScatterActive(hidden [B, S, D], mask [B, W] bool, rows [B, W, D]) -> hidden'``:
    ``concat(where(mask, rows, hidden[:, :W]), hidden[:, W:])``.
"""

from __future__ import annotations

from typing import Any

DOMAIN = "hashee"
DOMAIN_VERSION = 1
PREFIX_DOMAIN_VERSION = 2  # the prefix layout's Slice/Concat bodies
GATHER_ACTIVE = "GatherActive"
SCATTER_ACTIVE = "ScatterActive"
FUNCTION_NAMES = (GATHER_ACTIVE, SCATTER_ACTIVE)


def _function(name: str, inputs: list[str], outputs: list[str], nodes: list[Any], opset: int, doc: str) -> Any:
    """A FunctionProto of the ``hashee`` domain whose body uses default-domain ops of ``opset``."""
    from onnx import helper

    return helper.make_function(DOMAIN, name, inputs=inputs, outputs=outputs, nodes=nodes,
                                opset_imports=[helper.make_opsetid("", opset)], doc_string=doc)


def _const(name: str, values: list[int]) -> Any:
    from onnx import TensorProto, helper

    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values))


def _gather_active(opset: int) -> Any:
    from onnx import helper

    nodes = [
        _const("flat_shape", [-1]),
        helper.make_node("Reshape", ["active", "flat_shape"], ["flat"]),
        helper.make_node("NonZero", ["flat"], ["nonzero"]),
        helper.make_node("Transpose", ["nonzero"], ["index"], perm=[1, 0]),
        helper.make_node("GatherND", ["hidden", "index"], ["rows"]),
    ]
    return _function(GATHER_ACTIVE, ["hidden", "active"], ["rows", "index"], nodes, opset,
                     "Rows of hidden [B*S, D] where the [B, S] mask is non-zero, with their flat indices [n, 1].")


def _scatter_active(opset: int) -> Any:
    from onnx import helper

    nodes = [helper.make_node("ScatterND", ["hidden", "index", "rows"], ["updated"])]
    return _function(SCATTER_ACTIVE, ["hidden", "index", "rows"], ["updated"], nodes, opset,
                     "hidden [B*S, D] with rows [n, D] written at the flat indices [n, 1]; other rows unchanged.")


def function_protos(opset: int) -> list[Any]:
    """The two FunctionProtos, for a model whose default-domain opset is ``opset``."""
    return [_gather_active(opset), _scatter_active(opset)]


def _gather_prefix(opset: int) -> Any:
    from onnx import helper

    nodes = [
        _const("zero", [0]), _const("axis", [1]),
        helper.make_node("Shape", ["mask"], ["width"], start=1, end=2),
        helper.make_node("Slice", ["hidden", "zero", "width", "axis"], ["rows"]),
    ]
    return _function(GATHER_ACTIVE, ["hidden", "mask"], ["rows"], nodes, opset,
                     "hidden[:, :W] of sorted states [B, S, D], W the width of the layer's [B, W] mask.")


def _scatter_prefix(opset: int) -> Any:
    from onnx import helper

    nodes = [
        _const("zero", [0]), _const("axis", [1]), _const("last", [2]), _const("end", [2**62]),
        helper.make_node("Shape", ["mask"], ["width"], start=1, end=2),
        helper.make_node("Slice", ["hidden", "zero", "width", "axis"], ["old"]),
        helper.make_node("Unsqueeze", ["mask", "last"], ["keep"]),
        helper.make_node("Where", ["keep", "rows", "old"], ["kept"]),
        helper.make_node("Slice", ["hidden", "width", "end", "axis"], ["tail"]),
        helper.make_node("Concat", ["kept", "tail"], ["updated"], axis=1),
    ]
    return _function(SCATTER_ACTIVE, ["hidden", "mask", "rows"], ["updated"], nodes, opset,
                     "concat(where(mask, rows, hidden[:, :W]), hidden[:, W:]): active slots updated, others kept.")


def prefix_function_protos(opset: int) -> list[Any]:
    """The prefix layout's two FunctionProtos (domain version 2)."""
    return [_gather_prefix(opset), _scatter_prefix(opset)]


def _register_prefix_schemas() -> None:
    from onnx import defs

    float_types = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    specs = {
        GATHER_ACTIVE: ("hidden[:, :W] of sorted states [B, S, D]; W is the width of the [B, W] mask.",
                        [("hidden", "T"), ("mask", "B")], [("rows", "T")]),
        SCATTER_ACTIVE: ("concat(where(mask, rows, hidden[:, :W]), hidden[:, W:]).",
                         [("hidden", "T"), ("mask", "B"), ("rows", "T")], [("updated", "T")]),
    }
    for name, (doc, inputs, outputs) in specs.items():
        if defs.has(name, PREFIX_DOMAIN_VERSION, DOMAIN) and \
                defs.get_schema(name, PREFIX_DOMAIN_VERSION, DOMAIN).since_version == PREFIX_DOMAIN_VERSION:
            continue
        schema = defs.OpSchema(
            name, DOMAIN, PREFIX_DOMAIN_VERSION, doc=doc,
            inputs=[defs.OpSchema.FormalParameter(n, t) for n, t in inputs],
            outputs=[defs.OpSchema.FormalParameter(n, t) for n, t in outputs],
            type_constraints=[("T", float_types, "hidden states"), ("B", ["tensor(bool)"], "the layer's exit mask")],
        )
        defs.register_schema(schema)


def register_schemas() -> None:
    """Register the ``hashee`` domain's op schemas with :mod:`onnx.defs` (idempotent)."""
    from onnx import defs

    float_types = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    specs = {
        GATHER_ACTIVE: (
            "Gathers the rows of hidden [B*S, D] whose entry in the [B, S] mask is non-zero.",
            [("hidden", "T"), ("active", "M")], [("rows", "T"), ("index", "I")],
        ),
        SCATTER_ACTIVE: (
            "Writes rows [n, D] into hidden [B*S, D] at the flat indices [n, 1].",
            [("hidden", "T"), ("index", "I"), ("rows", "T")], [("updated", "T")],
        ),
    }
    for name, (doc, inputs, outputs) in specs.items():
        if defs.has(name, DOMAIN):
            continue
        constraints = [
            defs.OpSchema.TypeConstraintParam("T", float_types, "hidden states"),
            defs.OpSchema.TypeConstraintParam("I", ["tensor(int64)"], "flat row indices"),
        ]
        if name == GATHER_ACTIVE:
            constraints.append(defs.OpSchema.TypeConstraintParam("M", float_types, "0/1 activity mask"))
        schema = defs.OpSchema(
            name, DOMAIN, DOMAIN_VERSION, doc=doc,
            inputs=[defs.OpSchema.FormalParameter(n, t) for n, t in inputs],
            outputs=[defs.OpSchema.FormalParameter(n, t) for n, t in outputs],
            type_constraints=[(c.type_param_str, list(c.allowed_type_strs), c.description) for c in constraints],
        )
        defs.register_schema(schema)
    _register_prefix_schemas()
