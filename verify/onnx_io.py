"""ONNX -> Network: read a small feed-forward ReLU network exactly, or refuse it with a clear error.

The graph is interpreted at batch size 1 (certificates are about one input at a time), so a batch
dimension of size 1 or a symbolic one is accepted. The variable tensor flows through a chain of
nodes; constants (initialisers, Constant nodes) are evaluated with numpy. Elementwise affine
operations by constants (Sub/Add/Mul/Div, BatchNormalization) accumulate as a pending
y = s * x + t and are folded exactly into the neighbouring Dense or Conv2d layer:

- into the previous affine layer (no ReLU in between): always for Dense; for Conv2d when s and t
  are constant per channel;
- else into the next Dense (W' = W diag(s), b' = b + W t), or the next Conv2d when s is per
  channel and t is zero (or per channel with no padding: zero padding would see t otherwise);
- else as an explicit diagonal Dense layer.

Folding is exact up to the float64 rounding of the folded weights (~1e-16 relative; the network
certified is this float64 one). Anything else is refused with `UnsupportedModelError`, never
approximated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .errors import ModelLoadError, UnsupportedModelError
from .graph.network import GraphNetwork
from .graph import onnx_graph
from .graph.onnx_graph import GraphReader
from .network import Conv2d, Dense, Network, ReLU, size_of
from .onnx_proto import attribute_value, read_model_proto, static_input_shape, tensor_to_array

SUPPORTED_OPS = (
    "Add", "BatchNormalization", "Constant", "Conv", "Div", "Flatten", "Gemm", "Identity",
    "MatMul", "Mul", "Relu", "Reshape", "Squeeze", "Sub", "Unsqueeze",
)
SUPPORTED_OPSETS = (8, 21)
# What `load_onnx` takes as a whole: the chain ops above, the graph reader's ops on variable
# tensors, and the constant producers (other ops are folded only when their inputs are constants).
LOADABLE_OPS = tuple(sorted(set(SUPPORTED_OPS) | set(onnx_graph.VARIABLE_OPS)
                            | {"Constant", "ConstantOfShape", "Range"}))
LOADABLE_OPSETS = (min(SUPPORTED_OPSETS[0], onnx_graph.SUPPORTED_OPSETS[0]),
                   max(SUPPORTED_OPSETS[1], onnx_graph.SUPPORTED_OPSETS[1]))


@dataclass
class _Var:
    """The one variable tensor: its ONNX shape at batch size 1 and the step that produced it."""

    shape: tuple[int, ...]
    step: int


class _Builder:
    """Turns the node chain into layers, keeping one pending elementwise affine map."""

    def __init__(self, shape: tuple[int, ...]):
        self.layers: list = []
        self.shape = shape  # ONNX shape of the current variable, batch dimension set to 1
        self.scale: Optional[np.ndarray] = None  # pending y = scale * x + shift (flat)
        self.shift: Optional[np.ndarray] = None
        self.affine_open = False  # the last layer is affine and produced the current variable

    @property
    def size(self) -> int:
        return size_of(self.shape)

    # -- pending elementwise affine map -------------------------------------------------------
    def elementwise(self, scale: np.ndarray, shift: np.ndarray) -> None:
        """Compose y = scale * x + shift (both broadcast to the variable) after the pending map."""
        scale = np.broadcast_to(scale, self.shape).reshape(-1).astype(np.float64)
        shift = np.broadcast_to(shift, self.shape).reshape(-1).astype(np.float64)
        if self.scale is None:
            self.scale, self.shift = scale.copy(), shift.copy()
        else:
            self.scale, self.shift = scale * self.scale, scale * self.shift + shift

    def _pending_per_channel(self, channels: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """(s_c, t_c) when the pending map is constant over each channel's plane, else None."""
        s = self.scale.reshape(channels, -1)
        t = self.shift.reshape(channels, -1)
        if np.all(s == s[:, :1]) and np.all(t == t[:, :1]):
            return s[:, 0], t[:, 0]
        return None

    def _fold_into_previous(self) -> bool:
        last = self.layers[-1] if self.affine_open else None
        if isinstance(last, Dense):
            last.weight = self.scale[:, None] * last.weight
            last.bias = self.scale * last.bias + self.shift
            return True
        if isinstance(last, Conv2d):
            per_channel = self._pending_per_channel(last.out_shape[0])
            if per_channel is not None:
                s, t = per_channel
                last.weight = s[:, None, None, None] * last.weight
                last.bias = s * last.bias + t
                return True
        return False

    def _fold_into_next(self, layer) -> bool:
        if isinstance(layer, Dense):
            layer.bias = layer.bias + layer.weight @ self.shift
            layer.weight = layer.weight * self.scale[None, :]
            return True
        if isinstance(layer, Conv2d):
            per_channel = self._pending_per_channel(layer.in_shape[0])
            if per_channel is None:
                return False
            s, t = per_channel
            if np.any(t != 0) and any(layer.padding):
                return False
            layer.bias = layer.bias + np.einsum("ocij,c->o", layer.weight, t)
            layer.weight = layer.weight * s[None, :, None, None]
            return True
        return False

    def flush(self, next_layer=None) -> None:
        """Place the pending map: into the previous layer, the next one, or a diagonal Dense."""
        if self.scale is None:
            return
        if np.all(self.scale == 1.0) and np.all(self.shift == 0.0):
            pass
        elif self._fold_into_previous():
            pass
        elif next_layer is not None and self._fold_into_next(next_layer):
            pass
        else:
            n = self.size
            self.layers.append(Dense(np.diag(self.scale), self.shift, (n,), (n,)))
            self.affine_open = True
        self.scale = self.shift = None

    # -- layers ---------------------------------------------------------------------------------
    def add_affine(self, layer, out_shape: tuple[int, ...]) -> None:
        self.flush(next_layer=layer)
        self.layers.append(layer)
        self.affine_open = True
        self.shape = out_shape

    def add_relu(self) -> None:
        self.flush()
        self.layers.append(ReLU((self.size,)))
        self.affine_open = False


class _GraphReader:
    """Walks the nodes in order; knows every supported op and refuses the rest."""

    def __init__(self, model, where: str):
        self.model = model
        self.where = where
        self.graph = model.graph
        self.opset = _default_opset(model)
        self.consts: dict[str, np.ndarray] = {}
        self.vars: dict[str, _Var] = {}
        self.step = 0

    def fail(self, node, message: str) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"{self.where}: node '{node.name or '(unnamed)'}' ({node.op_type}): {message}")

    # -- inputs ---------------------------------------------------------------------------------
    def input_of(self, node, k: int):
        """The k-th input: a numpy constant or the current _Var (None for an omitted input)."""
        if k >= len(node.input) or node.input[k] == "":
            return None
        name = node.input[k]
        if name in self.consts:
            return self.consts[name]
        if name in self.vars:
            var = self.vars[name]
            if var.step != self.step:
                raise self.fail(node, f"input '{name}' is used again after a later node; "
                                      "only a chain of nodes (no branches or skips) is supported")
            return var
        raise self.fail(node, f"input '{name}' is produced by no earlier node")

    def split_inputs(self, node) -> tuple[_Var, list]:
        inputs = [self.input_of(node, k) for k in range(len(node.input))]
        var_positions = [k for k, v in enumerate(inputs) if isinstance(v, _Var)]
        if len(var_positions) > 1:
            raise self.fail(node, "combines two variable tensors; only operations with constants "
                                  "are supported")
        return var_positions[0], inputs

    def attrs(self, node) -> dict:
        return {a.name: attribute_value(a) for a in node.attribute}

    # -- main loop ------------------------------------------------------------------------------
    def read(self) -> Network:
        for init in self.graph.initializer:
            self.consts[init.name] = _to_array(init, self.where)
        graph_inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(graph_inputs) != 1:
            names = ", ".join(i.name for i in graph_inputs) or "none"
            raise UnsupportedModelError(
                f"{self.where}: the model has {len(graph_inputs)} inputs ({names}); exactly one "
                "is supported")
        if len(self.graph.output) != 1:
            names = ", ".join(o.name for o in self.graph.output)
            raise UnsupportedModelError(
                f"{self.where}: the model has {len(self.graph.output)} outputs ({names}); exactly "
                "one is supported")
        onnx_shape = static_input_shape(graph_inputs[0], self.where)
        batched = len(onnx_shape) >= 2 and onnx_shape[0] in (1, None)
        if len(onnx_shape) >= 2 and not batched:
            raise UnsupportedModelError(
                f"{self.where}: input '{graph_inputs[0].name}' has a fixed batch dimension of "
                f"{onnx_shape[0]}; a batch dimension of 1 or a symbolic one is supported")
        shape = tuple(1 if d is None else d for d in onnx_shape)
        input_shape = shape[1:] if batched else shape
        self.vars[graph_inputs[0].name] = _Var(shape, 0)
        builder = _Builder(shape)

        for node in self.graph.node:
            self.read_node(node, builder)

        out_name = self.graph.output[0].name
        if out_name not in self.vars:
            raise UnsupportedModelError(
                f"{self.where}: output '{out_name}' does not depend on the input")
        if self.vars[out_name].step != self.step:
            raise UnsupportedModelError(
                f"{self.where}: output '{out_name}' is not the last node's result; only a chain "
                "of nodes is supported")
        builder.flush()
        if not builder.layers:
            n = size_of(input_shape)
            builder.layers.append(Dense(np.eye(n), np.zeros(n), (n,), (n,)))
        return Network(builder.layers, input_shape)

    def new_var(self, node, shape: tuple[int, ...]) -> None:
        self.step += 1
        self.vars[node.output[0]] = _Var(tuple(int(d) for d in shape), self.step)

    def read_node(self, node, builder: _Builder) -> None:
        op = node.op_type
        inputs = [node.input[k] for k in range(len(node.input)) if node.input[k]]
        if op == "Constant":
            self.consts[node.output[0]] = _constant_value(node, self)
            return
        if all(name in self.consts for name in inputs):
            self.consts[node.output[0]] = self.fold_constant(node)
            return
        handler = getattr(self, f"op_{op}")
        handler(node, builder)

    # -- elementwise ----------------------------------------------------------------------------
    def _elementwise_constant(self, node, builder: _Builder, value: np.ndarray) -> np.ndarray:
        value = np.asarray(value, dtype=np.float64)
        try:
            out = np.broadcast_shapes(value.shape, builder.shape)
        except ValueError:
            out = None
        if out != builder.shape:
            raise self.fail(node, f"constant of shape {value.shape} does not broadcast onto the "
                                  f"variable of shape {builder.shape} without enlarging it")
        if not np.all(np.isfinite(value)):
            raise self.fail(node, "constant holds NaN or infinity")
        return value

    def _elementwise(self, node, builder: _Builder) -> None:
        k, inputs = self.split_inputs(node)
        c = self._elementwise_constant(node, builder, inputs[1 - k])
        op = node.op_type
        if op == "Add":
            builder.elementwise(1.0, c)
        elif op == "Mul":
            builder.elementwise(c, 0.0)
        elif op == "Sub":
            builder.elementwise(1.0, -c) if k == 0 else builder.elementwise(-1.0, c)
        elif op == "Div":
            if k == 1:
                raise self.fail(node, "divides a constant by the variable (not affine)")
            if np.any(c == 0):
                raise self.fail(node, "divides by a constant holding zeros")
            builder.elementwise(1.0 / c, 0.0)
        self.new_var(node, builder.shape)

    op_Add = op_Sub = op_Mul = op_Div = _elementwise

    def op_BatchNormalization(self, node, builder: _Builder) -> None:
        k, inputs = self.split_inputs(node)
        attrs = self.attrs(node)
        if k != 0:
            raise self.fail(node, "the variable must be the data input X")
        if attrs.get("spatial", 1) != 1 or attrs.get("training_mode", 0) != 0:
            raise self.fail(node, "only inference mode with spatial=1 is supported")
        if len(builder.shape) < 2:
            raise self.fail(node, f"input of shape {builder.shape} has no channel axis")
        scale, bias, mean, var = (np.asarray(v, dtype=np.float64) for v in inputs[1:5])
        if not scale.shape == bias.shape == mean.shape == var.shape == (builder.shape[1],):
            raise self.fail(node, f"parameters do not match the {builder.shape[1]} channels")
        s = scale / np.sqrt(var + attrs.get("epsilon", 1e-5))
        t = bias - mean * s
        channel_shape = (1, len(s)) + (1,) * (len(builder.shape) - 2)
        builder.elementwise(s.reshape(channel_shape), t.reshape(channel_shape))
        self.new_var(node, builder.shape)

    def op_Identity(self, node, builder: _Builder) -> None:
        self.split_inputs(node)
        self.vars[node.output[0]] = self.vars[node.input[0]]

    # -- reshapes -------------------------------------------------------------------------------
    def reshaped(self, node, shape: tuple[int, ...], inputs: list) -> tuple[int, ...]:
        """Shape after a Flatten / Reshape / Squeeze / Unsqueeze node applied to `shape`."""
        op, attrs, rank = node.op_type, self.attrs(node), len(shape)
        if op == "Flatten":
            axis = attrs.get("axis", 1)
            axis = axis + rank if axis < 0 else axis
            return (size_of(shape[:axis]), size_of(shape[axis:]))
        if op == "Reshape":
            if len(inputs) < 2 or not isinstance(inputs[1], np.ndarray):
                raise self.fail(node, "needs a constant target shape")
            target = [int(d) for d in inputs[1].reshape(-1)]
            if not attrs.get("allowzero", 0):
                target = [shape[i] if d == 0 else d for i, d in enumerate(target)]
            try:
                return np.empty(shape).reshape(target).shape
            except ValueError:
                raise self.fail(node, f"cannot reshape {shape} to {tuple(target)}") from None
        if len(inputs) > 1 and inputs[1] is not None:  # opset >= 13: axes as an input
            axes = [int(a) for a in np.asarray(inputs[1]).reshape(-1)]
        else:
            axes = attrs.get("axes")
        if op == "Squeeze":
            axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else axes
            axes = [a + rank if a < 0 else a for a in axes]
            if any(shape[a] != 1 for a in axes):
                raise self.fail(node, f"squeezes an axis of size > 1 in {shape}")
            return tuple(d for i, d in enumerate(shape) if i not in axes)
        if axes is None:
            raise self.fail(node, "has no axes")
        out = list(shape)
        for a in sorted(a + rank + len(axes) if a < 0 else a for a in axes):
            out.insert(a, 1)
        return tuple(out)

    def _reshape(self, node, builder: _Builder) -> None:
        k, inputs = self.split_inputs(node)
        if k != 0:
            raise self.fail(node, "the variable must be the data input")
        shape = tuple(int(d) for d in self.reshaped(node, builder.shape, inputs))
        if size_of(shape) != builder.size:
            raise self.fail(node, f"reshape from {builder.shape} to {shape} changes the size")
        builder.shape = shape
        self.new_var(node, shape)

    op_Flatten = op_Reshape = op_Squeeze = op_Unsqueeze = _reshape

    # -- affine layers --------------------------------------------------------------------------
    def _add_dense(self, node, builder: _Builder, weight: np.ndarray, bias: np.ndarray,
                   out_shape: tuple[int, ...]) -> None:
        weight = np.asarray(weight, dtype=np.float64)
        bias = np.broadcast_to(np.asarray(bias, dtype=np.float64), (weight.shape[0],))
        if weight.shape[1] != builder.size:
            raise self.fail(node, f"weight of shape {weight.shape} does not match the variable "
                                  f"of shape {builder.shape}")
        if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))):
            raise self.fail(node, "weights hold NaN or infinity")
        layer = Dense(weight, bias, (builder.size,), (weight.shape[0],))
        builder.add_affine(layer, out_shape)
        self.new_var(node, out_shape)

    def op_MatMul(self, node, builder: _Builder) -> None:
        k, inputs = self.split_inputs(node)
        w = np.asarray(inputs[1 - k], dtype=np.float64)
        shape = builder.shape
        if w.ndim != 2:
            raise self.fail(node, f"constant of rank {w.ndim}; a 2-D matrix is supported")
        if k == 0 and len(shape) >= 1 and size_of(shape[:-1]) == 1 and shape[-1] == w.shape[0]:
            self._add_dense(node, builder, w.T, 0.0, shape[:-1] + (w.shape[1],))
        elif k == 1 and len(shape) >= 2 and size_of(shape[:-2]) == 1 and shape[-1] == 1 \
                and shape[-2] == w.shape[1]:
            self._add_dense(node, builder, w, 0.0, shape[:-2] + (w.shape[0], 1))
        else:
            raise self.fail(node, f"cannot multiply the variable of shape {shape} by a constant "
                                  f"of shape {w.shape} as one sample")

    def op_Gemm(self, node, builder: _Builder) -> None:
        k, inputs = self.split_inputs(node)
        attrs = self.attrs(node)
        if k != 0:
            raise self.fail(node, "the variable must be input A")
        shape = builder.shape
        rows = shape[1] if attrs.get("transA", 0) else shape[0]
        if len(shape) != 2 or rows != 1:
            raise self.fail(node, f"input A of shape {shape} is not one row per sample")
        b = np.asarray(inputs[1], dtype=np.float64)
        weight = attrs.get("alpha", 1.0) * (b if attrs.get("transB", 0) else b.T)
        c = inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.zeros(1)
        c = np.asarray(c, dtype=np.float64)
        try:
            bias = attrs.get("beta", 1.0) * np.broadcast_to(c, (1, weight.shape[0])).reshape(-1)
        except ValueError:
            raise self.fail(node, f"bias C of shape {c.shape} does not broadcast to "
                                  f"(1, {weight.shape[0]})") from None
        self._add_dense(node, builder, weight, bias, (1, weight.shape[0]))

    def op_Conv(self, node, builder: _Builder) -> None:
        k, inputs = self.split_inputs(node)
        attrs = self.attrs(node)
        if k != 0:
            raise self.fail(node, "the variable must be the data input X")
        w = np.asarray(inputs[1], dtype=np.float64)
        if w.ndim != 4 or len(builder.shape) != 4:
            raise self.fail(node, f"only 2-D convolutions are supported (weight {w.shape}, "
                                  f"input {builder.shape})")
        if attrs.get("group", 1) != 1:
            raise self.fail(node, f"group={attrs['group']}; only group=1 is supported")
        _, c_in, h, wd = builder.shape
        if w.shape[1] != c_in:
            raise self.fail(node, f"weight has {w.shape[1]} input channels, input has {c_in}")
        kh, kw = w.shape[2:]
        if list(attrs.get("kernel_shape", [kh, kw])) != [kh, kw]:
            raise self.fail(node, "kernel_shape does not match the weight")
        strides = tuple(attrs.get("strides", [1, 1]))
        dilations = tuple(attrs.get("dilations", [1, 1]))
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad in ("NOTSET", ""):
            p = list(attrs.get("pads", [0, 0, 0, 0]))
            pads = (p[0], p[1], p[2], p[3])
        elif auto_pad == "VALID":
            pads = (0, 0, 0, 0)
        else:  # SAME_UPPER / SAME_LOWER: output size ceil(in / stride)
            total = []
            for size, s, d, kk in ((h, strides[0], dilations[0], kh),
                                   (wd, strides[1], dilations[1], kw)):
                out = -(-size // s)
                total.append(max((out - 1) * s + (kk - 1) * d + 1 - size, 0))
            low = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
            pads = (low[0], low[1], total[0] - low[0], total[1] - low[1])
        bias = inputs[2] if len(inputs) > 2 and inputs[2] is not None else np.zeros(w.shape[0])
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(bias))):
            raise self.fail(node, "weights hold NaN or infinity")
        layer = Conv2d(w, bias, strides, pads, dilations, (c_in, h, wd))
        if min(layer.out_shape) < 1:
            raise self.fail(node, f"output shape {layer.out_shape} is empty")
        builder.add_affine(layer, (1,) + layer.out_shape)
        self.new_var(node, builder.shape)

    def op_Relu(self, node, builder: _Builder) -> None:
        self.split_inputs(node)
        builder.add_relu()
        self.new_var(node, builder.shape)

    # -- constants ------------------------------------------------------------------------------
    def fold_constant(self, node) -> np.ndarray:
        """Evaluate a node whose inputs are all constants (shape arithmetic, weight scaling)."""
        vals = [self.consts[name] if name else None for name in node.input]
        op = node.op_type
        binary = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
        if op in binary:
            return binary[op](vals[0], vals[1])
        if op == "Identity":
            return vals[0]
        if op == "Relu":
            return np.maximum(vals[0], 0)
        if op == "MatMul":
            return np.matmul(vals[0], vals[1])
        if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            return np.asarray(vals[0]).reshape(self.reshaped(node, np.shape(vals[0]), vals))
        raise self.fail(node, "cannot be evaluated on constants here")


def _to_array(tensor, where: str) -> np.ndarray:
    try:
        value = tensor_to_array(tensor)
    except ValueError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
    return value.astype(np.float64) if value.dtype.kind == "f" else value


def _constant_value(node, reader: _GraphReader) -> np.ndarray:
    for attr in node.attribute:
        if attr.name == "value":
            return _to_array(attr.t, reader.where)
        if attr.name in ("value_float", "value_int"):
            return np.asarray(attr.f if attr.name == "value_float" else attr.i)
        if attr.name in ("value_floats", "value_ints"):
            return np.asarray(list(attr.floats) if attr.name == "value_floats" else list(attr.ints))
    raise reader.fail(node, "only dense numeric constants are supported")


def _default_opset(model) -> Optional[int]:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def network_from_onnx(model, where: str = "model") -> Union[Network, GraphNetwork]:
    """Network from an in-memory onnx.ModelProto; `where` names it in error messages.

    A plain chain of Dense / Conv / ReLU becomes a `Network` (the fast path every certifier
    takes); any other graph a `GraphNetwork` (verify.graph), or one error naming every node that
    cannot be read."""
    try:
        return chain_from_onnx(model, where)
    except UnsupportedModelError:
        return GraphNetwork(GraphReader(model, where).read())


def chain_from_onnx(model, where: str = "model") -> Network:
    """Network from a chain of Dense / Conv / ReLU nodes, or UnsupportedModelError."""
    opset = _default_opset(model)
    lo, hi = SUPPORTED_OPSETS
    if opset is None or not lo <= opset <= hi:
        raise UnsupportedModelError(f"{where}: opset {opset} is not supported (opsets {lo}-{hi})")
    offending = [node for node in model.graph.node
                 if node.op_type not in SUPPORTED_OPS or node.domain not in ("", "ai.onnx")]
    if offending:
        listed = ", ".join(f"'{n.name or '(unnamed)'}' ({n.op_type})" for n in offending)
        raise UnsupportedModelError(
            f"{where}: unsupported node(s): {listed}; supported ops: {', '.join(SUPPORTED_OPS)}")
    return _GraphReader(model, where).read()


def load_onnx(path: Union[str, Path]) -> Union[Network, GraphNetwork]:
    """Load an ONNX file into a float64 Network, or raise a one-line `ModelLoadError`."""
    path = Path(path)
    model = read_model_proto(path)
    data = path.read_bytes()
    if len(model.graph.node) == 0:
        raise ModelLoadError(f"{path}: not a valid ONNX model (the graph has no nodes)")
    net = network_from_onnx(model, where=str(path))
    net.name = path.stem
    net.source_sha256 = hashlib.sha256(data).hexdigest()
    return net
