"""ONNX -> Graph: every node whose inputs are all constants is evaluated at load time (shape
arithmetic from exporters: Shape, Gather, Concat, Unsqueeze, ConstantOfShape, Expand, Cast,
Range, Equal, Where, Slice, Reshape, ...); the others become `ir.Node`s of `ops` rules. Clip,
Abs, LeakyRelu, PRelu, Max and Min become Relu and linear nodes; BatchNormalization, Neg and
arithmetic with constants become `Affine` nodes. Every node that cannot be read is listed in one
`UnsupportedModelError` line."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ..errors import UnsupportedModelError
from ..onnx_proto import attribute_value, static_input_shape, tensor_to_array, type_name
from . import ops
from .ir import Graph, Node, Shape, size_of

SUPPORTED_OPSETS = (8, 22)
# ONNX ops accepted on variable tensors (constants-only nodes may use FOLDABLE ops as well).
VARIABLE_OPS = (
    "Abs", "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Conv",
    "ConvTranspose", "Div", "Dropout", "Exp", "Expand", "Flatten", "Gather", "Gemm",
    "GlobalAveragePool", "Identity", "LeakyRelu", "MatMul", "Max", "MaxPool", "Min", "Mul", "Neg",
    "PRelu", "Pad", "ReduceMean", "ReduceSum", "Relu", "Reshape", "Shape", "Sigmoid", "Size",
    "Slice", "Softmax", "Softplus", "Split", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze",
    "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Pow", "Where",  # graph.discrete
)
# ONNX ops evaluated when all their inputs are constants (see `fold`).
FOLD_OPS = (
    "Abs", "Add", "And", "Cast", "Ceil", "Concat", "Constant", "ConstantOfShape", "Div",
    "Dropout", "Equal", "Exp", "Expand", "Flatten", "Floor", "Gather", "Greater",
    "GreaterOrEqual", "Identity", "Less", "LessOrEqual", "MatMul", "Max", "Min", "Mod", "Mul",
    "Neg", "Not", "Or", "Pow", "Range", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "Relu", "Reshape", "Shape", "Sigmoid", "Size", "Slice", "Sqrt",
    "Squeeze", "Sub", "Tanh", "Tile", "Transpose", "Unsqueeze", "Where",
)
FLOAT_TYPES = (1, 10, 11, 16)  # float32, float16, float64, bfloat16
# Integer element types: [low, high) of their values (a cast of a float truncates toward zero)
INTEGER_RANGES = {2: (0, 2 ** 8), 3: (-2 ** 7, 2 ** 7), 4: (0, 2 ** 16), 5: (-2 ** 15, 2 ** 15),
                  6: (-2 ** 31, 2 ** 31), 7: (-2 ** 63, 2 ** 63), 12: (0, 2 ** 32),
                  13: (0, 2 ** 64)}
_NUMPY_TYPES = {1: np.float64, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64,
                9: np.bool_, 10: np.float64, 11: np.float64, 12: np.uint32, 13: np.uint64,
                16: np.float64}


class NodeError(Exception):
    """One node cannot be read: the reason (collected, then reported with all others)."""


def _decoded(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _as_float(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def _finite(value: np.ndarray, what: str) -> np.ndarray:
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise NodeError(f"{what} holds NaN or infinity")
    return value


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise NodeError(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _slice_indices(shape: Shape, starts, ends, axes, steps) -> tuple[list[int], list[np.ndarray]]:
    rank = len(shape)
    axes = list(range(len(starts))) if axes is None else [_axis(int(a), rank) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    indices = []
    for a, start, end, step in zip(axes, starts, ends, steps):
        if step == 0:
            raise NodeError("slice step 0")
        start, end = int(max(min(int(start), 2 ** 62), -2 ** 62)), int(max(min(int(end), 2 ** 62), -2 ** 62))
        indices.append(np.arange(*slice(start, end, step).indices(shape[a]), dtype=np.int64))
    return axes, indices


class GraphReader:
    """Reads one ModelProto; `where` names the model in messages."""

    def __init__(self, model, where: str):
        self.model, self.where = model, where
        self.consts: dict[str, np.ndarray] = {}
        self.shapes: dict[str, Shape] = {}  # variable tensors
        self.alias: dict[str, str] = {}
        self.nodes: list[Node] = []
        self.producers: dict[str, Node] = {}  # IR tensor -> the node emitting it
        self.offending: list[str] = []
        self.poisoned: set[str] = set()
        self.opset = 0
        self._count = 0

    # -- helpers ----------------------------------------------------------------------------------
    def var(self, name: str) -> str:
        return self.alias.get(name, name)

    def fresh(self, base: str) -> str:
        self._count += 1
        return f"{base}__{self._count}"

    def emit(self, op: str, name: str, inputs: list[str], params: dict,
             output: Optional[str] = None) -> str:
        """Append a node; its output shape comes from running the rule on zeros (batch 1)."""
        output = output or self.fresh(name or op)
        node = Node(op, name, inputs, output, params)
        xs = [torch.zeros((1, *self.shapes[i]), dtype=torch.float64) for i in inputs]
        try:
            y = ops.forward_of(op)(node, xs, ops.to_torch(params, torch.device("cpu"), torch.float64))
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NodeError(f"cannot be applied to input(s) of shape "
                            f"{', '.join(str(self.shapes[i]) for i in inputs)} ({first})") from None
        self.shapes[output] = tuple(int(d) for d in y.shape[1:])
        if size_of(self.shapes[output]) == 0:
            raise NodeError(f"output shape {self.shapes[output]} is empty")
        self.nodes.append(node)
        self.producers[output] = node
        return output

    def affine(self, name: str, x: str, scale, shift, output: Optional[str] = None) -> str:
        scale, shift = _finite(_as_float(scale), "constant"), _finite(_as_float(shift), "constant")
        rank = max(len(self.shapes[x]), scale.ndim, shift.ndim)
        return self.emit("Affine", name, [x], {"scale": scale, "shift": shift, "rank": rank}, output)

    def add_vars(self, name: str, terms: list[tuple[str, float]], output: Optional[str] = None) -> str:
        rank = max(len(self.shapes[x]) for x, _ in terms)
        return self.emit("Sum", name, [x for x, _ in terms],
                         {"signs": [s for _, s in terms], "rank": rank}, output)

    def relu(self, name: str, x: str) -> str:
        return self.emit("Relu", name, [x], {})

    def maximum(self, name: str, a, b, output: Optional[str] = None) -> str:
        """max(a, b) = b + relu(a - b); a, b variable names or constant arrays (not both)."""
        if not isinstance(a, str):
            a, b = b, a
        if isinstance(b, str):
            return self.add_vars(name, [(b, 1.0), (self.relu(name, self.add_vars(name, [(a, 1.0), (b, -1.0)])), 1.0)], output)
        return self.affine(name, self.relu(name, self.affine(name, a, 1.0, -b)), 1.0, b, output)

    # -- main loop --------------------------------------------------------------------------------
    def read(self) -> Graph:
        graph = self.model.graph
        for entry in self.model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                self.opset = int(entry.version)
        lo, hi = SUPPORTED_OPSETS
        if not lo <= self.opset <= hi:
            raise UnsupportedModelError(f"{self.where}: opset {self.opset} is not supported "
                                        f"(opsets {lo}-{hi})")
        for init in graph.initializer:
            self.consts[init.name] = self.array(init)
        inputs = []
        for value_info in graph.input:
            if value_info.name in self.consts:
                continue
            self.shapes[value_info.name] = self.input_shape(value_info)
            inputs.append(value_info.name)
        if not inputs:
            raise UnsupportedModelError(f"{self.where}: the model has no input")
        for node in graph.node:
            try:
                self.read_node(node)
            except NodeError as exc:
                self.offending.append(f"'{node.name or '(unnamed)'}' ({node.op_type}): {exc}")
                self.poisoned.update(node.output)
        if self.offending:
            raise UnsupportedModelError(f"{self.where}: unsupported node(s): "
                                        + "; ".join(self.offending))
        outputs = []
        for value_info in graph.output:
            name = self.var(value_info.name)
            if name not in self.shapes and name in self.consts and not self.poisoned:
                name = self.constant_output(name, inputs[0])
            if name not in self.shapes:
                raise UnsupportedModelError(f"{self.where}: output '{value_info.name}' does not "
                                            "depend on the input")
            outputs.append(name)
        return Graph(inputs, outputs, self.nodes, self.shapes)

    def constant_output(self, name: str, x: str) -> str:
        """A graph output that is a constant (e.g. the Shape of an input) as 0 * x_0 + c, x_0
        the first entry of input x: a variable tensor every certifier reads."""
        c = _finite(_as_float(self.consts[name]), "constant output")
        flat = self.emit("Reshape", name, [x], {"shape": [size_of(self.shapes[x])]})
        first = self.select(name, flat, [0], [np.zeros(1, dtype=np.int64)], None,
                            (1,) * max(c.ndim, 1))
        if c.ndim == 0:
            first = self.emit("Reshape", name, [first], {"shape": []})
        return self.affine(name, first, np.zeros(c.shape), c)

    def array(self, tensor) -> np.ndarray:
        try:
            value = tensor_to_array(tensor)
        except ValueError as exc:
            raise UnsupportedModelError(f"{self.where}: {exc}") from None
        return value.astype(np.float64) if value.dtype.kind in "fc" else value

    def input_shape(self, value_info) -> Shape:
        """A graph input's static shape; a symbolic batch axis is one sample."""
        return tuple(1 if d is None else d for d in static_input_shape(value_info, self.where))

    def attrs(self, node) -> dict:
        return {a.name: _decoded(attribute_value(a)) for a in node.attribute}

    def read_node(self, node) -> None:
        names = [self.var(n) if n else "" for n in node.input]
        if any(n in self.poisoned for n in names):
            self.poisoned.update(node.output)
            if node.op_type not in VARIABLE_OPS + FOLD_OPS:  # still name every unknown op
                raise NodeError(f"op {node.op_type} is not supported")
            return
        unknown = [n for n in names if n and n not in self.consts and n not in self.shapes]
        if unknown:
            raise NodeError(f"input '{unknown[0]}' is produced by no earlier node")
        if node.domain not in ("", "ai.onnx"):
            raise NodeError(f"domain '{node.domain}' is not supported")
        attrs = self.attrs(node)
        if node.op_type == "Constant":
            self.consts[node.output[0]] = self.constant(attrs)
            return
        consts = [self.consts.get(n) if n else None for n in names]
        variables = [n for n in names if n in self.shapes]
        if not variables:
            values = fold(node.op_type, consts, attrs, self.opset)
            for out, value in zip(node.output, values):
                self.consts[out] = value
            return
        if node.op_type not in VARIABLE_OPS:
            raise NodeError(f"op {node.op_type} is not supported on variable tensors")
        getattr(self, f"op_{node.op_type}")(node, names, consts, attrs)

    def constant(self, attrs: dict) -> np.ndarray:
        if "value" in attrs:
            return self.array(attrs["value"])
        for key in ("value_float", "value_int", "value_floats", "value_ints"):
            if key in attrs:
                value = np.asarray(attrs[key])
                return value.astype(np.float64) if "float" in key else value.astype(np.int64)
        raise NodeError("only dense numeric constants are supported")

    # -- variable ops -------------------------------------------------------------------------------
    def alias_of(self, node, names, consts, attrs) -> None:
        self.alias[node.output[0]] = names[0]

    op_Identity = op_Dropout = alias_of

    def op_Cast(self, node, names, consts, attrs) -> None:
        to = attrs.get("to")
        producer = self.producers.get(names[0])
        zero_one = producer is not None and producer.op == "Compare"
        if to in INTEGER_RANGES and zero_one or to in FLOAT_TYPES and zero_one:
            self.alias_of(node, names, consts, attrs)
        elif to in FLOAT_TYPES:  # identity over the reals, rounds in floats (float_rounding)
            self.emit("Cast", node.name, [names[0]], {"to": int(to)}, node.output[0])
        elif to == 9:  # bool: x != 0 (graph.discrete)
            self.compare(node, "NotEqual", names[0], np.zeros(()))
        elif to in INTEGER_RANGES:  # toward zero (graph.discrete's Trunc)
            self.emit("Trunc", node.name, [names[0]], {"range": np.asarray(
                INTEGER_RANGES[to], dtype=np.float64)}, node.output[0])
        else:
            raise NodeError(f"casts a variable tensor to element type {type_name(to)} (only "
                            "float, bool and integer casts are supported)")

    # -- comparisons, Where, Pow (graph.discrete) ----------------------------------------------
    def compare(self, node, relation: str, a, b) -> None:
        """1[a R b] as a 0 / 1 tensor; a, b variable names or constant arrays (not both)."""
        variables = [v for v in (a, b) if isinstance(v, str)]
        rank = max([len(self.shapes[v]) for v in variables]
                   + [np.ndim(v) for v in (a, b) if not isinstance(v, str)])
        params = {"relation": relation, "rank": rank}
        if len(variables) == 1:
            params.update(other=_finite(_as_float(b if isinstance(a, str) else a), "constant"),
                          swap=not isinstance(a, str))
        self.emit("Compare", node.name, variables, params, node.output[0])

    def _relation(self, node, names, consts, attrs) -> None:
        a, b = [n if n in self.shapes else c for n, c in zip(names, consts)]
        self.compare(node, node.op_type, a, b)

    op_Equal = op_Greater = op_Less = op_GreaterOrEqual = op_LessOrEqual = _relation

    def op_Where(self, node, names, consts, attrs) -> None:
        if names[0] not in self.shapes:  # a constant condition: c t + (1 - c) f
            c = np.asarray(consts[0]).astype(bool).astype(np.float64)
            terms = [(n, w) for n, w in zip(names[1:], (c, 1 - c)) if n in self.shapes]
            shift = sum(w * _as_float(k) for n, k, w in zip(names[1:], consts[1:], (c, 1 - c))
                        if n not in self.shapes)
            parts = [self.affine(node.name, n, w, 0.0) for n, w in terms]
            rank = max(len(self.shapes[names[1 if names[1] in self.shapes else 2]]),
                       *(np.ndim(k) for k in consts if k is not None))
            total = parts[0] if len(parts) == 1 else \
                self.add_vars(node.name, [(p, 1.0) for p in parts])
            self.affine(node.name, total, np.ones((1,) * rank), shift, node.output[0])
            return
        variables = [n for n in names if n in self.shapes]
        branches = [variables.index(n) if n in self.shapes else _finite(_as_float(c), "constant")
                    for n, c in zip(names[1:], consts[1:])]
        rank = max([len(self.shapes[v]) for v in variables]
                   + [np.ndim(b) for b in branches if not isinstance(b, int)])
        self.emit("Where", node.name, variables, {"branches": branches, "rank": rank},
                  node.output[0])

    def op_Pow(self, node, names, consts, attrs) -> None:
        if all(n in self.shapes for n in names):  # x^y: bounded where x >= 0 (discrete)
            rank = max(len(self.shapes[n]) for n in names)
            self.emit("Power", node.name, list(names), {"rank": rank}, node.output[0])
            return
        if names[0] not in self.shapes:  # c^x = exp(x ln c), c > 0
            base = _finite(_as_float(consts[0]), "base")
            if np.any(base <= 0):
                raise NodeError("a constant base <= 0 to a variable power is not supported")
            scaled = self.affine(node.name, names[1], np.log(base), 0.0)
            self.emit("Exp", node.name, [scaled], {}, node.output[0])
            return
        x, e = names[0], _finite(_as_float(consts[1]), "exponent")
        rank = max(len(self.shapes[x]), e.ndim)
        if e.size and np.all(e == e.reshape(-1)[0]) and e.reshape(-1)[0] in (0, 1, 2, 3):
            p = int(e.reshape(-1)[0])
            if p == 0:  # x^0 = 1 (also at 0, as ONNX and C's pow)
                self.affine(node.name, x, np.zeros(e.shape), np.ones(e.shape), node.output[0])
            elif p == 1:
                self.affine(node.name, x, np.ones(e.shape), 0.0, node.output[0])
            else:
                square = self.emit("Product", node.name, [x, x], {"rank": rank},
                                   None if p == 3 else node.output[0])
                if p == 3:
                    self.emit("Product", node.name, [square, x], {"rank": rank}, node.output[0])
            return
        self.emit("Power", node.name, [x], {"exponent": e, "rank": rank}, node.output[0])

    def op_Shape(self, node, names, consts, attrs) -> None:
        shape = np.asarray(self.shapes[names[0]], dtype=np.int64)
        start, end = attrs.get("start", 0), attrs.get("end", None)
        self.consts[node.output[0]] = shape[start:end]

    def op_Size(self, node, names, consts, attrs) -> None:
        self.consts[node.output[0]] = np.asarray(size_of(self.shapes[names[0]]), dtype=np.int64)

    def _binary(self, node, names, consts) -> tuple[int, np.ndarray]:
        k = 0 if names[0] in self.shapes else 1
        return k, _as_float(consts[1 - k])

    def op_Add(self, node, names, consts, attrs) -> None:
        if all(n in self.shapes for n in names):
            self.add_vars(node.name, [(names[0], 1.0), (names[1], 1.0)], node.output[0])
            return
        k, c = self._binary(node, names, consts)
        self.affine(node.name, names[k], 1.0, c, node.output[0])

    def op_Sub(self, node, names, consts, attrs) -> None:
        if all(n in self.shapes for n in names):
            self.add_vars(node.name, [(names[0], 1.0), (names[1], -1.0)], node.output[0])
            return
        k, c = self._binary(node, names, consts)
        if k == 0:
            self.affine(node.name, names[0], 1.0, -c, node.output[0])
        else:
            self.affine(node.name, names[1], -1.0, c, node.output[0])

    def op_Mul(self, node, names, consts, attrs) -> None:
        if all(n in self.shapes for n in names):  # bilinear (graph.bilinear)
            rank = max(len(self.shapes[n]) for n in names)
            self.emit("Product", node.name, names[:2], {"rank": rank}, node.output[0])
            return
        k, c = self._binary(node, names, consts)
        self.affine(node.name, names[k], c, 0.0, node.output[0])

    def op_Div(self, node, names, consts, attrs) -> None:
        if names[1] in self.shapes:  # by a variable: graph.bilinear's Quotient
            rank = max(len(self.shapes[names[1]]), np.ndim(consts[0]) if consts[0] is not None
                       else len(self.shapes[names[0]]))
            if names[0] in self.shapes:
                self.emit("Quotient", node.name, names[:2], {"rank": rank}, node.output[0])
            else:
                self.emit("Quotient", node.name, [names[1]], {"rank": rank, "numerator":
                          _finite(_as_float(consts[0]), "numerator")}, node.output[0])
            return
        c = _as_float(consts[1])
        if np.any(c == 0):
            raise NodeError("divides by a constant holding zeros")
        self.affine(node.name, names[0], 1.0 / c, 0.0, node.output[0])

    def op_Neg(self, node, names, consts, attrs) -> None:
        self.affine(node.name, names[0], -1.0, 0.0, node.output[0])

    def _data_only(self, names: list[str], what: str = "the data input") -> None:
        if any(n in self.shapes for n in names[1:]):
            raise NodeError(f"only {what} may be variable")

    def op_BatchNormalization(self, node, names, consts, attrs) -> None:
        self._data_only(names)
        if attrs.get("training_mode", 0) or attrs.get("spatial", 1) != 1:
            raise NodeError("only inference mode with spatial=1 is supported")
        shape = self.shapes[names[0]]
        if len(shape) < 2:
            raise NodeError(f"input of shape {shape} has no channel axis")
        scale, bias, mean, var = (_as_float(c) for c in consts[1:5])
        if not scale.shape == bias.shape == mean.shape == var.shape == (shape[1],):
            raise NodeError(f"parameters do not match the {shape[1]} channels")
        if np.any(var < 0):
            raise NodeError("running variance holds negative values")
        s = scale / np.sqrt(var + attrs.get("epsilon", 1e-5))
        t = bias - mean * s
        channel = (1, len(s)) + (1,) * (len(shape) - 2)
        self.affine(node.name, names[0], s.reshape(channel), t.reshape(channel), node.output[0])

    def op_Gemm(self, node, names, consts, attrs) -> None:
        self._data_only(names, "input A")
        if names[0] not in self.shapes:
            raise NodeError("only input A may be variable")
        shape = self.shapes[names[0]]
        if len(shape) != 2:
            raise NodeError(f"input A of shape {shape} is not 2-D (Gemm needs a matrix)")
        b = _as_float(consts[1])
        if b.ndim != 2:
            raise NodeError(f"input B of shape {b.shape} is not 2-D")
        weight = attrs.get("alpha", 1.0) * (b.T if attrs.get("transB", 0) else b)
        rows = shape[1] if attrs.get("transA", 0) else shape[0]
        c = _as_float(consts[2]) if len(consts) > 2 and consts[2] is not None else np.zeros(1)
        try:
            bias = attrs.get("beta", 1.0) * np.broadcast_to(c, (rows, weight.shape[1]))
        except ValueError:
            raise NodeError(f"bias C of shape {c.shape} does not broadcast to "
                            f"({rows}, {weight.shape[1]})") from None
        self.emit("Gemm", node.name, [names[0]], {"weight": _finite(weight, "weight"),
                  "bias": _finite(np.array(bias), "bias"), "transA": int(attrs.get("transA", 0))},
                  node.output[0])

    def op_MatMul(self, node, names, consts, attrs) -> None:
        if all(n in self.shapes for n in names):
            raise NodeError("multiplies two variable tensors (not linear)")
        k, w = self._binary(node, names, consts)
        if k == 1 and w.ndim == 1:
            raise NodeError("a 1-D constant times a variable matrix is not supported")
        self.emit("MatMul", node.name, [names[k]], {"weight": _finite(w, "weight"), "side": k},
                  node.output[0])

    def _spatial_attrs(self, attrs: dict, shape: Shape, kernel: list[int]) -> dict:
        k = len(kernel)
        strides = list(attrs.get("strides", [1] * k))
        dilations = list(attrs.get("dilations", [1] * k))
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad in ("NOTSET", ""):
            pads = list(attrs.get("pads", [0] * (2 * k)))
        elif auto_pad == "VALID":
            pads = [0] * (2 * k)
        else:
            begin, end = [], []
            for size, s, d, kk in zip(shape[2:], strides, dilations, kernel):
                out = -(-size // s)
                total = max((out - 1) * s + (kk - 1) * d + 1 - size, 0)
                low = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
                begin.append(low)
                end.append(total - low)
            pads = begin + end
        if len(shape) != k + 2:
            raise NodeError(f"input of shape {shape} does not fit a {k}-D kernel")
        return {"strides": strides, "dilations": dilations, "pads": pads}

    def op_Conv(self, node, names, consts, attrs) -> None:
        self._data_only(names)
        w = _finite(_as_float(consts[1]), "weight")
        if w.ndim not in (3, 4, 5):
            raise NodeError(f"weight of shape {w.shape}: 1-D, 2-D or 3-D convolutions only")
        params = self._spatial_attrs(attrs, self.shapes[names[0]], list(w.shape[2:]))
        bias = consts[2] if len(consts) > 2 and consts[2] is not None else np.zeros(w.shape[0])
        params.update(weight=w, bias=_finite(_as_float(bias), "bias"), group=int(attrs.get("group", 1)))
        self.emit("Conv", node.name, [names[0]], params, node.output[0])

    def op_ConvTranspose(self, node, names, consts, attrs) -> None:
        self._data_only(names)
        w = _finite(_as_float(consts[1]), "weight")
        if w.ndim not in (3, 4):
            raise NodeError(f"weight of shape {w.shape}: 1-D or 2-D transposed convolutions only")
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "", "VALID") or "output_shape" in attrs:
            raise NodeError("auto_pad SAME and output_shape are not supported")
        k = w.ndim - 2
        groups = int(attrs.get("group", 1))
        bias = consts[2] if len(consts) > 2 and consts[2] is not None else np.zeros(w.shape[1] * groups)
        self.emit("ConvTranspose", node.name, [names[0]], {
            "weight": w, "bias": _finite(_as_float(bias), "bias"), "group": groups,
            "strides": list(attrs.get("strides", [1] * k)),
            "dilations": list(attrs.get("dilations", [1] * k)),
            "pads": list(attrs.get("pads", [0] * (2 * k))),
            "output_padding": list(attrs.get("output_padding", [0] * k))}, node.output[0])

    def _pool(self, attrs: dict, shape: Shape) -> dict:
        """Kernel, strides, dilations, pads. ceil_mode=1 (output sizes rounded up): the extra
        end cells become end pads (for MaxPool -inf, never the maximum; for AveragePool zeros
        left out of the divisor, see op_AveragePool); a last window that would start in the end
        padding is dropped, as onnxruntime does."""
        kernel = list(attrs["kernel_shape"])
        params = self._spatial_attrs(attrs, shape, kernel)
        params["kernel"] = kernel
        if attrs.get("ceil_mode", 0):
            k = len(kernel)
            pads = list(params["pads"])
            for a, (size, s, d, kk) in enumerate(zip(shape[2:], params["strides"],
                                                      params["dilations"], kernel)):
                span = size + pads[a] + pads[a + k] - d * (kk - 1) - 1
                out = -(-span // s) + 1
                if (out - 1) * s >= size + pads[a]:
                    out -= 1
                pads[a + k] += max((out - 1) * s - span, 0)
            params["pads"] = pads
        return params

    def op_AveragePool(self, node, names, consts, attrs) -> None:
        """Window sums over the input padded with zeros, each divided by its count of cells:
        the input's cells (count_include_pad=0), or those of the explicitly padded input
        (count_include_pad=1; the cells ceil_mode=1 adds at the end are never counted), as
        onnxruntime divides; `factor` = kernel size / count per output cell."""
        shape = self.shapes[names[0]]
        params = self._pool(attrs, shape)
        k = len(params["kernel"])
        explicit = self._spatial_attrs(attrs, shape, params["kernel"])["pads"]
        params["factor"] = np.ones(1)
        if attrs.get("count_include_pad", 0):  # counted: the explicitly padded input
            counted = [d + explicit[a] + explicit[a + k] for a, d in enumerate(shape[2:])]
            zeros = [0] * k + [p - q for p, q in zip(params["pads"][k:], explicit[k:])]
        else:  # counted: the input's own cells
            counted, zeros = list(shape[2:]), params["pads"]
        if any(zeros):
            ones = torch.ones((1, 1, 1, *counted), dtype=torch.float64)
            probe_params = {**params, "pads": zeros}
            probe = Node("AveragePool", node.name, [], "", probe_params)
            counts = ops.f_average_pool(probe, [ones], ops.to_torch(probe_params,
                                                                    torch.device("cpu"),
                                                                    torch.float64))
            fraction = counts[0, 0].numpy()  # (1, *out spatial): cells counted / kernel size
            if np.any(fraction <= 0):
                raise NodeError("a pooling window holds no counted cell")
            params["factor"] = 1.0 / fraction
        self.emit("AveragePool", node.name, [names[0]], params, node.output[0])

    def op_MaxPool(self, node, names, consts, attrs) -> None:
        if len(node.output) > 1 and node.output[1]:
            raise NodeError("the Indices output is not supported")
        params = self._pool(attrs, self.shapes[names[0]])
        self.emit("MaxPool", node.name, [names[0]], params, node.output[0])

    def op_GlobalAveragePool(self, node, names, consts, attrs) -> None:
        shape = self.shapes[names[0]]
        self.emit("GlobalAveragePool", node.name, [names[0]], {"count": size_of(shape[2:])},
                  node.output[0])

    def op_Pad(self, node, names, consts, attrs) -> None:
        self._data_only(names)
        if attrs.get("mode", "constant") != "constant":
            raise NodeError(f"mode '{attrs.get('mode')}'; only constant padding is supported")
        shape = self.shapes[names[0]]
        rank = len(shape)
        pads = [int(p) for p in (consts[1] if len(consts) > 1 and consts[1] is not None
                                 else attrs.get("pads", []))]
        value = float(_as_float(consts[2]).reshape(-1)[0]) if len(consts) > 2 and consts[2] is not None \
            and np.size(consts[2]) else float(attrs.get("value", 0.0))
        if len(consts) > 3 and consts[3] is not None:
            axes = [_axis(int(a), rank) for a in np.asarray(consts[3]).reshape(-1)]
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[a + rank] = pads[i], pads[i + len(axes)]
            pads = full
        if len(pads) != 2 * rank or any(p < 0 for p in pads):
            raise NodeError(f"pads {pads} do not fit rank {rank} (negative pads unsupported)")
        self.emit("Pad", node.name, [names[0]], {"pads": pads, "value": np.asarray(value)},
                  node.output[0])

    def _reduce(self, node, names, consts, attrs) -> None:
        shape = self.shapes[names[0]]
        if len(consts) > 1 and consts[1] is not None:
            axes = [int(a) for a in np.asarray(consts[1]).reshape(-1)]
        else:
            axes = attrs.get("axes")
        if not axes:
            axes = [] if attrs.get("noop_with_empty_axes", 0) else list(range(len(shape)))
        axes = sorted(_axis(a, len(shape)) for a in axes)
        count = size_of(tuple(shape[a] for a in axes))
        factor = 1.0 / count if node.op_type == "ReduceMean" else 1.0
        self.emit("Reduce", node.name, [names[0]], {"axes": axes, "keepdims": int(attrs.get("keepdims", 1)),
                  "factor": np.asarray(factor), "count": count}, node.output[0])

    op_ReduceSum = op_ReduceMean = _reduce

    def _reshape(self, node, names, consts, attrs) -> None:
        self._data_only(names)
        shape = self.shapes[names[0]]
        out = reshaped(node.op_type, shape, consts, attrs)
        if size_of(out) != size_of(shape):
            raise NodeError(f"reshape from {shape} to {out} changes the size")
        self.emit("Reshape", node.name, [names[0]], {"shape": list(out)}, node.output[0])

    op_Flatten = op_Reshape = op_Squeeze = op_Unsqueeze = _reshape

    def op_Transpose(self, node, names, consts, attrs) -> None:
        rank = len(self.shapes[names[0]])
        perm = list(attrs.get("perm", list(reversed(range(rank)))))
        self.emit("Transpose", node.name, [names[0]], {"perm": perm}, node.output[0])

    def select(self, name: str, x: str, axes: list[int], indices: list[np.ndarray],
               output: Optional[str], out_shape: Optional[Shape] = None) -> str:
        shape = list(self.shapes[x])
        for a, idx in zip(axes, indices):
            shape[a] = len(idx.reshape(-1))
        return self.emit("Select", name, [x], {"axes": axes, "indices": indices,
                         "shape": list(out_shape or shape)}, output)

    def op_Slice(self, node, names, consts, attrs) -> None:
        self._data_only(names)
        shape = self.shapes[names[0]]
        if len(consts) > 1:
            starts, ends = consts[1].reshape(-1), consts[2].reshape(-1)
            axes = consts[3].reshape(-1) if len(consts) > 3 and consts[3] is not None else None
            steps = consts[4].reshape(-1) if len(consts) > 4 and consts[4] is not None else None
        else:
            starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
        axes, indices = _slice_indices(shape, starts, ends, axes, steps)
        self.select(node.name, names[0], axes, indices, node.output[0])

    def op_Gather(self, node, names, consts, attrs) -> None:
        self._data_only(names)
        shape = self.shapes[names[0]]
        axis = _axis(int(attrs.get("axis", 0)), len(shape))
        idx = np.asarray(consts[1], dtype=np.int64)
        if np.any(idx < -shape[axis]) or np.any(idx >= shape[axis]):
            raise NodeError(f"indices out of range for axis {axis} of size {shape[axis]}")
        idx = np.where(idx < 0, idx + shape[axis], idx)
        out = tuple(shape[:axis]) + idx.shape + tuple(shape[axis + 1:])
        self.select(node.name, names[0], [axis], [idx.reshape(-1)], node.output[0], out)

    def op_Split(self, node, names, consts, attrs) -> None:
        self._data_only(names)
        shape = self.shapes[names[0]]
        axis = _axis(int(attrs.get("axis", 0)), len(shape))
        if len(consts) > 1 and consts[1] is not None:
            sizes = [int(s) for s in np.asarray(consts[1]).reshape(-1)]
        elif "split" in attrs:
            sizes = [int(s) for s in attrs["split"]]
        else:
            n = len(node.output)
            chunk = -(-shape[axis] // n)
            sizes = [min(chunk, shape[axis] - chunk * i) for i in range(n)]
        if sum(sizes) != shape[axis] or len(sizes) != len(node.output):
            raise NodeError(f"split sizes {sizes} do not fit axis {axis} of size {shape[axis]}")
        start = 0
        for out, size in zip(node.output, sizes):
            self.select(node.name, names[0], [axis], [np.arange(start, start + size)], out)
            start += size

    def op_Concat(self, node, names, consts, attrs) -> None:
        variables = [n for n in names if n in self.shapes]
        rank = len(self.shapes[variables[0]])
        parts = [variables.index(n) if n in self.shapes else _as_float(c)
                 for n, c in zip(names, consts)]
        self.emit("Concat", node.name, variables, {"parts": parts,
                  "axis": _axis(int(attrs["axis"]), rank)}, node.output[0])

    def op_Expand(self, node, names, consts, attrs) -> None:
        self._data_only(names)
        try:
            target = np.broadcast_shapes(self.shapes[names[0]], tuple(int(d) for d in consts[1]))
        except ValueError:
            raise NodeError(f"cannot expand {self.shapes[names[0]]} to {list(consts[1])}") from None
        self.emit("Expand", node.name, [names[0]], {"shape": list(target)}, node.output[0])

    def _elementwise(self, node, names, consts, attrs) -> None:
        self.emit(node.op_type, node.name, [names[0]], {}, node.output[0])

    op_Relu = op_Sigmoid = op_Tanh = op_Exp = _elementwise

    def op_Softplus(self, node, names, consts, attrs) -> None:
        self.emit("Softplus", node.name, [names[0]], {}, node.output[0])

    def op_Softmax(self, node, names, consts, attrs) -> None:
        rank = len(self.shapes[names[0]])
        axis = _axis(int(attrs.get("axis", -1 if self.opset >= 13 else 1)), rank)
        if self.opset < 13 and axis != rank - 1:
            raise NodeError("Softmax before opset 13 over several axes is not supported")
        self.emit("Softmax", node.name, [names[0]], {"axis": axis}, node.output[0])

    # -- piecewise-linear ops rewritten into Relu --------------------------------------------------
    def _leaky(self, name: str, x: str, slope, output: str) -> str:
        """relu(x) - slope relu(-x)."""
        pos = self.relu(name, x)
        neg = self.relu(name, self.affine(name, x, -1.0, 0.0))
        scaled = self.affine(name, neg, -_as_float(slope), 0.0)
        return self.add_vars(name, [(pos, 1.0), (scaled, 1.0)], output)

    def op_LeakyRelu(self, node, names, consts, attrs) -> None:
        self._leaky(node.name, names[0], attrs.get("alpha", 0.01), node.output[0])

    def op_PRelu(self, node, names, consts, attrs) -> None:
        self._data_only(names, "X")
        self._leaky(node.name, names[0], consts[1], node.output[0])

    def op_Abs(self, node, names, consts, attrs) -> None:
        self._leaky(node.name, names[0], -1.0, node.output[0])

    def op_Clip(self, node, names, consts, attrs) -> None:
        self._data_only(names)
        if len(consts) > 1 or self.opset >= 11:
            lo = consts[1] if len(consts) > 1 and consts[1] is not None and names[1] else None
            hi = consts[2] if len(consts) > 2 and consts[2] is not None and names[2] else None
        else:
            lo, hi = attrs.get("min"), attrs.get("max")
        x = names[0]
        if lo is None and hi is None:
            self.alias[node.output[0]] = x
            return
        if lo is not None and hi is not None:  # lo + relu(x - lo) - relu(x - hi)
            lo, hi = _as_float(lo), _as_float(hi)
            a = self.relu(node.name, self.affine(node.name, x, 1.0, -lo))
            b = self.relu(node.name, self.affine(node.name, x, 1.0, -hi))
            d = self.add_vars(node.name, [(a, 1.0), (b, -1.0)])
            self.affine(node.name, d, 1.0, lo, node.output[0])
        elif lo is not None:
            self.maximum(node.name, x, _as_float(lo), node.output[0])
        else:  # min(x, hi) = -max(-x, -hi)
            m = self.maximum(node.name, self.affine(node.name, x, -1.0, 0.0), -_as_float(hi))
            self.affine(node.name, m, -1.0, 0.0, node.output[0])

    def _extremum(self, node, names, consts, attrs) -> None:
        sign = 1.0 if node.op_type == "Max" else -1.0  # min(a, b) = -max(-a, -b)
        items = []
        for n, c in zip(names, consts):
            items.append(self.affine(node.name, n, sign, 0.0) if n in self.shapes
                         else sign * _as_float(c))
        const_items = [c for c in items if not isinstance(c, str)]
        var_items = [c for c in items if isinstance(c, str)]
        acc: Any = var_items[0]
        for other in var_items[1:] + ([np.maximum.reduce(const_items)] if const_items else []):
            acc = self.maximum(node.name, acc, other)
        self.affine(node.name, acc, sign, 0.0, node.output[0])

    op_Max = op_Min = _extremum


def reshaped(op: str, shape: Shape, consts: list, attrs: dict) -> Shape:
    """Output shape of Flatten / Reshape / Squeeze / Unsqueeze on `shape`."""
    rank = len(shape)
    if op == "Flatten":
        axis = _axis(int(attrs.get("axis", 1)), rank + 1) if rank else 0
        return (size_of(shape[:axis]), size_of(shape[axis:]))
    if op == "Reshape":
        if len(consts) < 2 or consts[1] is None:
            raise NodeError("needs a constant target shape")
        target = [int(d) for d in np.asarray(consts[1]).reshape(-1)]
        if not attrs.get("allowzero", 0):
            target = [shape[i] if d == 0 else d for i, d in enumerate(target)]
        try:
            return tuple(np.empty(shape).reshape(target).shape)
        except ValueError:
            raise NodeError(f"cannot reshape {shape} to {tuple(target)}") from None
    if len(consts) > 1 and consts[1] is not None:
        axes = [int(a) for a in np.asarray(consts[1]).reshape(-1)]
    else:
        axes = attrs.get("axes")
    if op == "Squeeze":
        axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else \
            [_axis(a, rank) for a in axes]
        if any(shape[a] != 1 for a in axes):
            raise NodeError(f"squeezes an axis of size > 1 in {shape}")
        return tuple(d for i, d in enumerate(shape) if i not in axes)
    if axes is None:
        raise NodeError("has no axes")
    out = list(shape)
    for a in sorted(_axis(a, rank + len(axes)) for a in axes):
        out.insert(a, 1)
    return tuple(out)


def fold(op: str, vals: list, attrs: dict, opset: int) -> list[np.ndarray]:
    """Evaluate a node whose inputs are all constants (numpy, ONNX semantics)."""
    x = vals[0] if vals else None
    binary = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal,
              "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
              "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or,
              "Pow": np.power, "Mod": np.mod}
    if op in binary:
        return [np.asarray(binary[op](vals[0], vals[1]))]
    if op == "Div":
        a, b = np.asarray(vals[0]), np.asarray(vals[1])
        if a.dtype.kind in "iu" and b.dtype.kind in "iu":
            return [np.trunc(a / b).astype(a.dtype)]
        return [np.asarray(a / b)]
    unary = {"Neg": np.negative, "Identity": np.asarray, "Dropout": np.asarray, "Abs": np.abs,
             "Sqrt": np.sqrt, "Floor": np.floor, "Ceil": np.ceil, "Not": np.logical_not,
             "Relu": lambda v: np.maximum(v, 0), "Exp": np.exp, "Reciprocal": lambda v: 1 / v,
             "Sigmoid": lambda v: 1 / (1 + np.exp(-v)), "Tanh": np.tanh}
    if op in unary:
        return [np.asarray(unary[op](x))]
    if op in ("Max", "Min"):
        return [np.asarray((np.maximum if op == "Max" else np.minimum).reduce(vals))]
    if op == "Cast":
        return [np.asarray(x).astype(_NUMPY_TYPES.get(attrs.get("to"), np.float64))]
    if op == "Shape":
        return [np.asarray(np.shape(x), dtype=np.int64)[attrs.get("start", 0):attrs.get("end")]]
    if op == "Size":
        return [np.asarray(np.size(x), dtype=np.int64)]
    if op == "Gather":
        return [np.take(x, np.asarray(vals[1], dtype=np.int64), axis=attrs.get("axis", 0))]
    if op == "Concat":
        return [np.concatenate([np.asarray(v) for v in vals if v is not None and np.size(v) or
                                (v is not None and np.ndim(v) > 0)], axis=attrs["axis"])]
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        return [np.asarray(x).reshape(reshaped(op, np.shape(x), vals, attrs))]
    if op == "ConstantOfShape":
        value = np.zeros(1) if "value" not in attrs else tensor_to_array(attrs["value"]).reshape(-1)
        return [np.full(tuple(int(d) for d in np.asarray(x).reshape(-1)), value[0], dtype=value.dtype)]
    if op == "Expand":
        shape = np.broadcast_shapes(np.shape(x), tuple(int(d) for d in vals[1]))
        return [np.broadcast_to(x, shape).copy()]
    if op == "Range":
        return [np.arange(np.asarray(vals[0]).item(), np.asarray(vals[1]).item(),
                          np.asarray(vals[2]).item()).astype(np.asarray(vals[0]).dtype)]
    if op == "Where":
        return [np.where(vals[0], vals[1], vals[2])]
    if op == "Slice":
        if len(vals) > 1:
            axes = vals[3].reshape(-1) if len(vals) > 3 and vals[3] is not None else None
            steps = vals[4].reshape(-1) if len(vals) > 4 and vals[4] is not None else None
            starts, ends = vals[1].reshape(-1), vals[2].reshape(-1)
        else:
            starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
        x = np.asarray(x)
        axes_list, indices = _slice_indices(x.shape, starts, ends, axes, steps)
        for a, idx in zip(axes_list, indices):
            x = np.take(x, idx, axis=a)
        return [x]
    if op == "Transpose":
        return [np.transpose(x, attrs.get("perm"))]
    if op == "MatMul":
        return [np.matmul(vals[0], vals[1])]
    if op == "Tile":
        return [np.tile(x, tuple(int(r) for r in vals[1]))]
    if op in ("ReduceProd", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"):
        axes = attrs.get("axes") if len(vals) < 2 or vals[1] is None else list(np.asarray(vals[1]).reshape(-1))
        fn = {"ReduceProd": np.prod, "ReduceSum": np.sum, "ReduceMean": np.mean,
              "ReduceMax": np.max, "ReduceMin": np.min}[op]
        return [np.asarray(fn(x, axis=None if not axes else tuple(int(a) for a in axes),
                              keepdims=bool(attrs.get("keepdims", 1))))]
    if op == "Split":
        raise NodeError("Split of a constant is not supported")
    raise NodeError(f"op {op} is not supported (not even on constants)")
