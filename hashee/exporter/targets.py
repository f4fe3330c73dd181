"""Export targets and the static TensorRT compatibility check.

``onnxruntime``: standard ONNX ops, the ``hashee`` local functions, and
``com.microsoft.MultiHeadAttention`` for attention (ONNX Runtime's contrib op; CPU and CUDA).

``tensorrt``: only ops, types and attributes that the TensorRT ONNX parser accepts.  The list below
is taken from the parser's support matrix, ``docs/operators.md`` of github.com/onnx/onnx-tensorrt,
the TensorRT 10.15 revision ("supports operators in the inclusive range of opset 9 to opset 24"),
which TensorRT 11's parser extends; restrictions recorded there and in ../shared/DESIGN.md section 5
(Slice needs constant axes, ScatterND without reduction, TopK sorted=1 and K < 3840, CumSum with a
constant axis, Reduce* with initializer axes, NonZero on FP32/FP16 only, LayerNormalization with
only its first output, Quantize/DequantizeLinear with constant scales and zero zero-points, no
com.microsoft ops).  Only the ops the HashEE exporter can emit, plus a few
neighbours, are listed: a new op in the graph must be added here with its restriction, on purpose.
:func:`tensorrt_violations` checks every node of a model, with local functions inlined.
:func:`value_dependent_shapes` finds every node whose output shape depends on tensor values (a
device-to-host synchronisation in TensorRT, and no CUDA graph): the packed layout has some, the
prefix layout (issue 14) none.
"""

from __future__ import annotations

from typing import Any

TARGETS = ("onnxruntime", "tensorrt")
MIN_OPSET = 17  # LayerNormalization
# onnxruntime 1.32 reads up to opset 23 for the ops used here; TensorRT 10.15's parser up to 24.
MAX_OPSET = {"onnxruntime": 23, "tensorrt": 23}

TENSORRT_SOURCE = ("https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md "
                   "(TensorRT 10.15 revision, opset 9-24)")

_FP = {"float", "float16", "bfloat16"}
_INT = {"int32", "int64"}
_ALL = _FP | _INT | {"bool"}

# op type -> (types the parser lists for the op's first input, restriction checked by _restriction)
TENSORRT_OPS: dict[str, tuple[set[str], str | None]] = {
    "Add": (_FP | _INT, None), "Sub": (_FP | _INT, None), "Mul": (_FP | _INT, None),
    "Div": (_FP | _INT, None), "Max": (_FP | _INT, None), "Min": (_FP | _INT, None),
    "And": ({"bool"}, None), "Or": ({"bool"}, None), "Not": ({"bool"}, None),
    "Equal": (_FP | _INT, None), "Greater": (_FP | _INT, None), "Less": (_FP | _INT, None),
    "Where": (_ALL, None), "Cast": (_ALL | {"uint8"}, None), "Identity": (_ALL, None),
    "Constant": (_ALL, "constant_dense"), "ConstantOfShape": (_INT, None),
    "Shape": (_ALL, None), "Reshape": (_ALL, None), "Transpose": (_ALL, None),
    "Concat": (_ALL, None), "Expand": (_ALL, None), "Range": (_FP | _INT, None),
    "Squeeze": (_ALL, "constant_input_1"), "Unsqueeze": (_ALL, "constant_input_1"),
    "Slice": (_ALL, "constant_input_3"),
    "Gather": (_ALL, None), "GatherND": (_ALL, None), "GatherElements": (_ALL, None),
    "ScatterND": (_FP | _INT, "no_reduction"), "ScatterElements": (_FP | _INT, "no_reduction"),
    "NonZero": ({"float", "float16"}, None),
    "CumSum": (_FP, "constant_input_1"),
    "TopK": (_FP | _INT, "topk"),
    "ReduceSum": (_FP | _INT, "constant_input_1"), "ReduceMax": (_FP | _INT, "constant_input_1"),
    "ReduceMean": (_FP | _INT, "constant_input_1"), "ReduceMin": (_FP | _INT, "constant_input_1"),
    "MatMul": (_FP, None), "Gemm": (_FP, None),
    "Softmax": (_FP, None), "LayerNormalization": (_FP, "first_output_only"),
    "Erf": (_FP, None), "Tanh": (_FP, None), "Sigmoid": (_FP, None), "Relu": (_FP | _INT, None),
    "Sqrt": (_FP, None), "Pow": (_FP | _INT, None), "Exp": (_FP, None), "Gelu": (_FP, None),
    # explicit quantisation (INT8 Q/DQ files): build-time constant scales, zero points that are all 0
    "QuantizeLinear": (_FP, "qdq"), "DequantizeLinear": ({"int8"}, "qdq"),
}


def _type_name(elem_type: int) -> str:
    from onnx import helper

    return {1: "float", 10: "float16", 16: "bfloat16"}.get(elem_type) or helper.tensor_dtype_to_np_dtype(elem_type).name


def _restriction(kind: str, node: Any, constants: set[str], values: dict[str, Any] | None = None) -> str | None:
    """A message when ``node`` breaks the parser restriction ``kind``, else ``None``."""
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if kind.startswith("constant_input_"):
        position = int(kind.rsplit("_", 1)[1])
        if len(node.input) > position and node.input[position] and node.input[position] not in constants:
            return f"input {position} ({node.input[position]}) must be a build-time constant"
    elif kind == "no_reduction" and attrs.get("reduction", b"none") not in (b"none", "none"):
        return f"reduction={attrs['reduction']!r} is not supported (only none)"
    elif kind == "topk":
        if attrs.get("sorted", 1) != 1:
            return "sorted must be 1"
        if len(node.input) < 2 or node.input[1] not in constants:
            return "K must be a build-time constant (< 3840)"
    elif kind == "qdq":
        if len(node.input) < 2 or node.input[1] not in constants:
            return "the scale must be a build-time constant"
        if len(node.input) > 2 and node.input[2]:
            zero = (values or {}).get(node.input[2])
            if zero is None:
                return "the zero point must be a build-time constant"
            if numpy_helper.to_array(zero).any():
                return "the zero point must be 0 (symmetric quantisation)"
    elif kind == "first_output_only" and len([o for o in node.output if o]) > 1:
        return "only the first output Y is supported"
    elif kind == "constant_dense" and any(a in attrs for a in ("sparse_value", "value_string", "value_strings")):
        return "sparse or string constants are not supported"
    return None


def tensorrt_violations(model: Any) -> list[str]:
    """Every node of ``model`` (local functions inlined) that the TensorRT ONNX parser would refuse.

    Checks the op against :data:`TENSORRT_OPS`, its first input's element type where shape
    inference knows it, and its recorded restriction; returns one message per problem (empty: ok).
    """
    from onnx import inliner, shape_inference

    flat = inliner.inline_local_functions(model)
    try:
        flat = shape_inference.infer_shapes(flat, data_prop=True)
    except Exception:  # noqa: BLE001 - types then stay unknown and only ops/attributes are checked
        pass
    types: dict[str, str] = {}
    for info in list(flat.graph.input) + list(flat.graph.value_info) + list(flat.graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types[info.name] = _type_name(info.type.tensor_type.elem_type)
    constants = {init.name for init in flat.graph.initializer}
    values = {init.name: init for init in flat.graph.initializer}
    for init in flat.graph.initializer:
        types[init.name] = _type_name(init.data_type)
    problems: list[str] = []
    for node in flat.graph.node:
        if node.op_type == "Constant":
            constants.update(node.output)
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                values[node.output[0]] = value
        where = f"{node.name or node.op_type} ({node.domain or 'ai.onnx'}::{node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: domain {node.domain!r} is not supported by TensorRT's parser")
            continue
        if node.op_type not in TENSORRT_OPS:
            problems.append(f"{where}: op not in the TensorRT allowed list ({TENSORRT_SOURCE})")
            continue
        allowed, restriction = TENSORRT_OPS[node.op_type]
        first = node.input[0] if node.input else ""
        if first and first in types and types[first] not in allowed:
            problems.append(f"{where}: input type {types[first]} not supported (allowed: {', '.join(sorted(allowed))})")
        if restriction:
            message = _restriction(restriction, node, constants, values)
            if message:
                problems.append(f"{where}: {message}")
    return problems


# ------------------------------------------------------------------------------------------ static shapes
#: ops whose output shape always depends on tensor values
VALUE_SHAPED_OPS = ("NonZero", "Compress", "Unique")
#: op -> positions of the inputs that decide its output shape (must be computed from input shapes)
SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Slice": (1, 2, 3, 4), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "Tile": (1,), "TopK": (1,), "Pad": (1, 3), "OneHot": (1,), "Split": (1,), "Squeeze": (1,), "Unsqueeze": (1,),
    "Resize": (1, 2, 3), "Upsample": (1,), "CenterCropPad": (1, 2), "ReduceSum": (1,), "ReduceMax": (1,),
    "ReduceMin": (1,), "ReduceMean": (1,), "ReduceProd": (1,), "ReduceL2": (1,),
}
#: control flow: subgraph output shapes are not followed, so they are refused outright
CONTROL_FLOW_OPS = ("Loop", "If", "Scan")
#: ops whose output is computed from their input's *shape* only (never its values)
SHAPE_SOURCE_OPS = ("Shape", "Size")


def value_dependent_shapes(model: Any) -> list[str]:
    """Every node (local functions inlined) whose output shape can depend on tensor *values*.

    A shape-provenance dataflow over the graph in topological order: a value is *shape-derived* when it
    is an initializer or a Constant, the output of ``Shape``/``Size`` of a tensor whose own shape is not
    value-dependent, or computed only from shape-derived values.  Flagged: ``NonZero``, ``Compress``,
    ``Unique``, control flow, and any op of :data:`SHAPE_INPUTS` (Reshape, Expand, Slice, ConstantOfShape,
    Range, Tile, TopK's K, ...) whose shape-deciding input is not shape-derived.  Outputs of a flagged
    node, and everything shaped by them, are *tainted*: a ``Shape`` of a tainted tensor is not
    shape-derived.  Empty list: every shape in the graph is a function of input shapes, as TensorRT
    optimisation profiles and CUDA-graph capture need.

    Two choices: ``TopK`` with a K computed from input shapes (or constants) is *allowed*: its output
    shape is then a function of input shapes, like a Slice's (TensorRT's parser may still want a
    build-time constant K: :func:`tensorrt_violations` checks that).  ``NonZero``, ``Compress`` and
    ``Unique`` are flagged whatever feeds them, even shape-derived values: TensorRT runs them on the
    device and learns their output size only there.  The packed ``tensorrt`` target fails this
    (NonZero, and a query grid sized by a ReduceMax of the masks); the prefix layout passes.
    """
    from onnx import inliner

    graph = inliner.inline_local_functions(model).graph
    derived = {init.name for init in graph.initializer}
    tainted: set[str] = set()
    problems: list[str] = []
    for node in graph.node:
        where = f"{node.name or node.op_type} ({node.domain or 'ai.onnx'}::{node.op_type})"
        inputs = [name for name in node.input if name]
        outputs = [name for name in node.output if name]
        flagged = None
        if node.op_type in VALUE_SHAPED_OPS:
            flagged = "its output shape is the number of selected elements, a value"
        elif node.op_type in CONTROL_FLOW_OPS:
            flagged = "control flow: its output shapes are not checked"
        elif node.op_type in SHAPE_INPUTS and node.domain in ("", "ai.onnx"):
            for position in SHAPE_INPUTS[node.op_type]:
                if position < len(node.input) and node.input[position] and node.input[position] not in derived:
                    flagged = (f"input {position} ({node.input[position]}) decides the output shape but is not "
                               f"computed from input shapes")
                    break
        if flagged:
            problems.append(f"{where}: {flagged}")
            tainted.update(outputs)
            continue
        if any(name in tainted for name in inputs) and node.op_type not in SHAPE_SOURCE_OPS:
            tainted.update(outputs)  # shaped by a value-dependent tensor
        if node.op_type == "Constant":
            derived.update(outputs)
        elif node.op_type in SHAPE_SOURCE_OPS:
            if not any(name in tainted for name in inputs):
                derived.update(outputs)
        elif inputs and all(name in derived for name in inputs):
            derived.update(outputs)
    return problems
