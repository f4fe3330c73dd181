"""A small deterministic ONNX graph builder: fixed names, weights deduplicated, opset-aware helpers.

Names come from the caller's scope and a per-scope counter, never from object ids or the clock, so
building the same model twice gives byte-identical files.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


class GraphBuilder:
    """Accumulates nodes and initializers for one ONNX graph."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.scope = "graph"
        self._counts: dict[str, int] = {}
        self._constants: dict[tuple, str] = {}
        self._weights: dict[tuple, str] = {}

    # ------------------------------------------------------------------ names and tensors
    def fresh(self, hint: str) -> str:
        key = f"{self.scope}/{hint}"
        count = self._counts.get(key, 0)
        self._counts[key] = count + 1
        return key if count == 0 else f"{key}_{count}"

    def initializer(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.array(array, order="C", copy=True), name))
        return name

    def const(self, values: Any, dtype: Any = np.int64) -> str:
        """A small constant (shared by value), e.g. axes or shapes."""
        array = np.asarray(values, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.initializer(f"const/{len(self._constants)}", array)
        return self._constants[key]

    def weight(self, name: str, tensor: Any, transpose: bool = False) -> str:
        """A float32 weight from a torch tensor; a tensor shared between layers is stored once."""
        key = (tensor.data_ptr(), tuple(tensor.shape), transpose)
        if key not in self._weights:
            array = tensor.detach().cpu().float().numpy()
            self._weights[key] = self.initializer(name, array.T if transpose else array)
        return self._weights[key]

    # ------------------------------------------------------------------ nodes
    def op(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1, domain: str = "",
           hint: str | None = None, **attrs: Any) -> Any:
        """Add a node; returns its output name (one output) or a list of names."""
        from onnx import helper

        base = self.fresh(hint or op_type)
        names = [f"{base}:{i}" for i in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=base, domain=domain or None, **attrs))
        return names[0] if len(names) == 1 else names

    def linear(self, x: str, module: Any, name: str) -> str:
        """``x @ W.T + b`` for an ``nn.Linear``."""
        out = self.op("MatMul", [x, self.weight(f"{name}.weight", module.weight, transpose=True)], hint=f"{name}.matmul")
        if module.bias is not None:
            out = self.op("Add", [out, self.weight(f"{name}.bias", module.bias)], hint=f"{name}.bias")
        return out

    def layer_norm(self, x: str, module: Any, name: str) -> str:
        if module.weight is None or module.bias is None:
            from hashee.errors import ExportError

            raise ExportError(f"{name}: LayerNorm without affine weights is not supported by the exporter")
        return self.op("LayerNormalization", [x, self.weight(f"{name}.weight", module.weight),
                                              self.weight(f"{name}.bias", module.bias)],
                       hint=name, axis=-1, epsilon=float(module.eps))

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 0) -> str:
        """A Reduce* node with constant axes, in the form the opset wants (attribute or input)."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.const(list(axes))], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    def dim(self, x: str, axis: int) -> str:
        """The size of one axis of ``x`` as an int64 [1] tensor."""
        return self.op("Shape", [x], hint=f"dim{axis}", start=axis, end=axis + 1)
