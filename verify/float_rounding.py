"""Floating-point semantics for VNN-LIB queries: how far the network evaluated in IEEE float32
(or float16) can be from the same network over the reals, and the query widened by that much.

A query declaring float32 is about N_fl(x), the ONNX graph evaluated in float32 on float32
inputs x. The certifiers bound N(x), the graph over the reals. `evaluation_error` bounds
E >= |N_fl(x) - N(x)| per output, for every x in a box, whatever the summation order (so
blocked, pairwise, SIMD and FMA kernels are covered: a fused multiply-add rounds once where
the bound allows two). The recurrence walks the ONNX nodes in order (each node loaded on its
own with the project's loader, so the walk understands exactly the ops the loader does), with
sound real intervals [l_k, h_k] of every node's output (interval arithmetic) and, for the
float evaluation, the error E_k of the node's output:

    affine node y = W w + b (MatMul, Gemm, Conv, Add/Sub/Mul/Div by a constant), per output i:
        E_k,i = sum_j |W_ij| E_k-1,j
                + gamma_{m_i} (sum_j |W_ij| (max|w_j| + E_k-1,j) + |b_i|) + m_i * TINY
        m_i = nnz(W_i) + 3,   gamma_m = m u / (1 - m u)

Derivation: the float evaluation computes fl(W fl(w) + b) on the float input w + e, |e| <= E_k-1.
Exactly, W (w + e) + b - (W w + b) = W e, at most |W| E_k-1 in magnitude. The float sum of the
nnz(W_i) products plus the bias, in any order, is off by at most gamma_{nnz+1} times the sum of
the absolute values of its terms (Higham, Accuracy and Stability, Thm 3.1 and Lemma 3.3; each
product carries one more rounding, hence nnz + 1 terms and gamma_{nnz+2}); the terms' absolute
values are at most |W_ij| (max|w_j| + E_j) and |b_i|. The third extra rounding covers Gemm's
alpha/beta scalings, or the rounding of float64-stored weights to float32, and the float64
rounding in the loader's own folding (2^-53 relative, far below one u). TINY, the smallest
normal number, bounds the absolute error of one product that underflows, also when subnormals
are flushed to zero (FTZ/DAZ). ReLU and reshapes are exact in floating point (ReLU is
1-Lipschitz: E passes unchanged, and becomes 0 where h_k + E_k < 0: both values are 0). u = 2^-24 for float32, 2^-11 for float16. A magnitude that
could reach the format's largest finite number (overflow) makes the bound infinite.

`widen_query` adds sum_j |A_rj| E_j to the right-hand side of every violation row A_r y <= b_r:
a real-arithmetic proof that no x in the box satisfies the widened rows is a proof that no
float evaluation satisfies the original ones (A y_fl <= b implies A y <= b + |A| E). This is
the single post-hoc correction every certifier's answer goes through: the margin lower bound
of row r, for any method, is lowered by |A_r| E. Everything is computed in float64 and
inflated by a relative 1e-9 for the float64 rounding of this computation itself.

BatchNormalization y = (w - mean) s + B, s = scale / sqrt(var + eps) computed in the format
too: 8 more roundings per output and the terms |s||mean| (twice: w - mean, and B = b + s mean
with b the loader's folded shift) added to the magnitudes.

Not covered (see docs/float32.md): TF32 or other reduced-precision matrix units (their
products round to 10 bits), kernels that reassociate across the whole graph (a fused
Conv+BatchNorm rewrites the weights: covered only while the rewrite itself is within the
extra roundings counted above).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .errors import InputError
from .network import AFFINE, Network, ReLU

# element type -> (unit roundoff u, smallest normal TINY, largest finite, numpy dtype name)
FLOAT_FORMATS = {
    "float32": (2.0 ** -24, 2.0 ** -126, float(np.finfo(np.float32).max), "float32"),
    "float16": (2.0 ** -11, 2.0 ** -14, float(np.finfo(np.float16).max), "float16"),
    "float64": (2.0 ** -53, 2.0 ** -1022, float(np.finfo(np.float64).max), "float64"),
}
EXACT_OPS = ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Relu")
UNMODELLED_OPS: tuple[str, ...] = ()
BATCHNORM_ROUNDINGS = 8  # inv = 1/sqrt(var + eps), s = scale inv, (w - mean) s + B, in any form
EXTRA_ROUNDINGS = 3
SELF_SLACK = 1e-9  # relative inflation for the float64 rounding of this module's own sums


class FloatSemanticsError(InputError):
    """A network whose float evaluation error this module cannot bound (the reason says why)."""


def query_format(element_types: list[str]) -> Optional[str]:
    """The float format a query is about: the coarsest declared type (bfloat16, float16,
    float32, float64, in that order; unknown types as given); None when every variable is
    real."""
    kinds = {t.lower() for t in element_types} - {"real"}
    for name in ("bfloat16", "float16", "float32", "float64"):
        if name in kinds:
            return name
    return min(kinds) if kinds else None


def gamma(m: np.ndarray, u: float) -> np.ndarray:
    """Higham's gamma_m = m u / (1 - m u): the relative error of an m-term float sum."""
    mu = m * u
    if np.any(mu >= 0.5):
        return np.full(np.shape(m), np.inf)
    return mu / (1.0 - mu)


@dataclass
class _State:
    lower: np.ndarray  # real interval of the current tensor (flat, row-major)
    upper: np.ndarray
    error: np.ndarray  # bound on |float value - real value|


def _affine_step(layer, state: _State, u: float, tiny: float,
                 batchnorm_mean: Optional[np.ndarray] = None) -> _State:
    W = np.asarray(layer.dense_matrix(), dtype=np.float64)
    b = np.asarray(layer.bias, dtype=np.float64)
    if b.size != W.shape[0]:  # Conv2d: one bias per channel, repeated over the positions
        b = np.repeat(b, W.shape[0] // b.size)
    absW = np.abs(W)
    mid, rad = (state.upper + state.lower) / 2, (state.upper - state.lower) / 2
    out_mid, out_rad = W @ mid + b, absW @ rad
    out_rad = out_rad * (1 + SELF_SLACK) + SELF_SLACK * np.abs(out_mid) + 1e-300
    magnitude = np.maximum(np.abs(state.lower), np.abs(state.upper)) + state.error
    m = np.count_nonzero(W, axis=1) + EXTRA_ROUNDINGS
    terms = absW @ magnitude + np.abs(b)
    if batchnorm_mean is not None:  # y = (w - mean) s + B: |B| <= |b| + |s mean|; + |s mean|
        m = m + BATCHNORM_ROUNDINGS
        terms = terms + 2 * (absW @ np.abs(batchnorm_mean))
    error = absW @ state.error + gamma(m, u) * terms + m * tiny
    return _State(out_mid - out_rad, out_mid + out_rad, error * (1 + SELF_SLACK))


def _tighten(state: _State, bounds) -> _State:
    """state's interval ∩ sound bounds (lower, upper) of the same real values, where sizes fit."""
    if bounds is None or bounds[0].size != state.lower.size:
        return state
    return _State(np.maximum(state.lower, bounds[0]), np.minimum(state.upper, bounds[1]),
                  state.error)


def _step(net: Network, state: _State, u: float, tiny: float,
          batchnorm_mean: Optional[np.ndarray] = None) -> _State:
    for layer in net.layers:
        if isinstance(layer, ReLU):  # exact; both values 0 where upper + E < 0: no error left
            dead = state.upper + state.error * (1 + SELF_SLACK) + 1e-12 * np.abs(state.upper) < 0
            state = _State(np.maximum(state.lower, 0), np.maximum(state.upper, 0),
                           np.where(dead, 0.0, state.error))
        elif isinstance(layer, AFFINE):
            state = _affine_step(layer, state, u, tiny, batchnorm_mean)
        else:  # pragma: no cover - the loader makes only these layers
            raise FloatSemanticsError(f"layer {layer.describe()} is not modelled")
    return state


def _tensor_shapes(model, names: list[str]) -> dict[str, tuple[int, ...]]:
    """The shapes of the named intermediate tensors at batch size 1: onnxruntime runs the model
    once (on zeros) with them as extra outputs (no `import onnx` needed)."""
    import onnxruntime as ort

    probe = type(model)()
    probe.CopyFrom(model)
    graph_input = next(i for i in probe.graph.input
                       if i.name not in {init.name for init in probe.graph.initializer})
    elem_type = graph_input.type.tensor_type.elem_type
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name in existing:
            continue
        out = probe.graph.output.add()
        out.name = name
        out.type.tensor_type.elem_type = elem_type
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(inp.type,
                                                                               np.float32)
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    outputs = session.run(names, {inp.name: np.zeros(shape, dtype=dtype)})
    return {name: tuple(np.shape(value)) for name, value in zip(names, outputs)}


def _single_node_model(model, const_nodes: list, node, var: str, shape: tuple[int, ...],
                       elem_type: int):
    """A copy of `model` with the constant nodes and `node` only, `var` its input."""
    single = type(model)()
    single.CopyFrom(model)
    graph = single.graph
    del graph.node[:], graph.input[:], graph.output[:], graph.value_info[:]
    graph.node.extend([*const_nodes, node])
    for name, dims in ((var, shape), (node.output[0], None)):
        info = (graph.input if dims is not None else graph.output).add()
        info.name = name
        info.type.tensor_type.elem_type = elem_type
        for d in dims or ():
            info.type.tensor_type.shape.dim.add().dim_value = int(d)
    return single


def _node_models(path: Union[str, Path]):
    """(node, single-node ModelProto or None for exact reshapes) for every node on the variable
    chain, in order; the single-node model holds the node, every constant and initializer, and
    the variable input with its shape at batch size 1."""
    from .onnx_proto import read_model_proto

    model = read_model_proto(path)
    const_names = {init.name for init in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in const_names)
    elem_type = graph_input.type.tensor_type.elem_type
    chain, const_nodes = [], []
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" or all(name in const_names for name in inputs):
            const_nodes.append(node)
            const_names.update(node.output)
            continue
        if node.op_type in UNMODELLED_OPS:
            raise FloatSemanticsError(f"node '{node.name or node.op_type}' ({node.op_type}): "
                                      "its float rounding is not modelled")
        var = next(name for name in inputs if name not in const_names)
        chain.append((node, var, list(const_nodes)))
    shapes = _tensor_shapes(model, [var for _, var, _ in chain if var != graph_input.name])
    input_dims = [d.dim_value if d.dim_value > 0 else 1
                  for d in graph_input.type.tensor_type.shape.dim]
    shapes[graph_input.name] = tuple(input_dims)
    for node, var, consts in chain:
        if node.op_type in EXACT_OPS and node.op_type != "Relu":
            yield node, None
            continue
        yield node, _single_node_model(model, consts, node, var, shapes[var], elem_type)


def _batchnorm_mean(single, node, input_shape) -> np.ndarray:
    """|running mean| of a BatchNormalization node, per input element (flat)."""
    from .onnx_proto import tensor_to_array

    name = node.input[3]
    values = {init.name: init for init in single.graph.initializer}
    for const in single.graph.node:
        if const.op_type == "Constant" and const.output[0] == name:
            values.update({name: a.t for a in const.attribute if a.name == "value"})
    if name not in values:
        raise FloatSemanticsError(f"node '{node.name or node.op_type}': its mean '{name}' is "
                                  "not an initializer or Constant tensor")
    mean = np.abs(np.asarray(tensor_to_array(values[name]), dtype=np.float64).reshape(-1))
    channels = input_shape[0] if len(input_shape) > 1 else input_shape[-1]
    if mean.size != channels:
        raise FloatSemanticsError(f"node '{node.name or node.op_type}': mean of size "
                                  f"{mean.size} for {channels} channels")
    positions = int(np.prod(input_shape, dtype=np.int64)) // channels
    return np.repeat(mean, positions)


def _relu_bounds(path, lower: np.ndarray, upper: np.ndarray) -> list:
    """[(bounds on the input, bounds on the output)] of every ReLU layer of the loaded network,
    in order (CROWN, sound for the reals): the values at the graph's Relu nodes, whose inputs
    the loader never folds past (pending scalings are flushed before each ReLU)."""
    import torch

    from .bounds import InputBatch
    from .bounds.crown import layer_bounds
    from .onnx_io import load_onnx
    from .spec import Box, OutputProperty, Specification

    net = load_onnx(path)
    if getattr(net, "is_graph", False):
        raise FloatSemanticsError("a graph-IR model: its float rounding is not modelled yet")
    spec = Specification(Box(lower, upper), OutputProperty(np.eye(net.output_size)[:1], [0.0]))
    batch = InputBatch.from_specs([spec], torch.device("cpu"))
    bounds = [(lo[0].numpy(), hi[0].numpy()) for lo, hi in layer_bounds(net, batch)]
    return [(bounds[k - 1] if k else None, bounds[k])
            for k, layer in enumerate(net.layers) if isinstance(layer, ReLU)]


def evaluation_error(path: Union[str, Path], lower: np.ndarray, upper: np.ndarray,
                     element_type: str = "float32") -> np.ndarray:
    """Per output, a bound on |N_fl(x) - N(x)| over the box [lower, upper] (flat network
    input), N the ONNX model at `path` over the reals and N_fl the same graph evaluated in
    `element_type` (any summation order). FloatSemanticsError when it cannot be bounded."""
    from .onnx_io import network_from_onnx

    if element_type not in FLOAT_FORMATS:
        raise FloatSemanticsError(f"element type {element_type} has no float model here "
                                  f"({', '.join(FLOAT_FORMATS)})")
    u, tiny, largest, _ = FLOAT_FORMATS[element_type]
    lower = np.asarray(lower, dtype=np.float64).reshape(-1)
    upper = np.asarray(upper, dtype=np.float64).reshape(-1)
    # Inputs are float values already (the assignment is in the format); DAZ may read a
    # subnormal as 0: at most TINY off.
    state = _State(lower, upper, np.full(lower.shape, tiny))
    relu_bounds = _relu_bounds(path, lower, upper)  # CROWN's, around each ReLU of the network
    for node, single in _node_models(path):
        if single is None:
            continue
        pre, post = relu_bounds.pop(0) if node.op_type == "Relu" and relu_bounds else (None, None)
        state = _tighten(state, pre)
        net = network_from_onnx(single, where=f"node '{node.name or node.op_type}'")
        if getattr(net, "is_graph", False):
            raise FloatSemanticsError(f"node '{node.name or node.op_type}' ({node.op_type}): "
                                      "its float rounding is not modelled (graph-IR op)")
        if net.input_size != state.error.size:
            raise FloatSemanticsError(f"node '{node.name or node.op_type}' reads "
                                      f"{net.input_size} values, the walk has "
                                      f"{state.error.size}")
        mean = None
        if node.op_type == "BatchNormalization":
            mean = _batchnorm_mean(single, node, net.input_shape)
        state = _step(net, state, u, tiny, mean)
        state = _tighten(state, post)
        peak = np.max(np.maximum(np.abs(state.lower), np.abs(state.upper)) + state.error,
                      initial=0.0)
        if not math.isfinite(peak) or peak >= largest / 2:
            return np.full(state.error.shape, np.inf)
    return state.error


def widen_query(query, error: np.ndarray):
    """The query with every violation row A_r y <= b_r widened to A_r y <= b_r + |A_r| E."""
    error = np.asarray(error, dtype=np.float64)
    cases = []
    for case in query.cases:
        disjuncts = [replace(d, b=d.b + (np.abs(d.A) @ error) * (1 + SELF_SLACK))
                     if len(d.A) else d for d in case.disjuncts]
        cases.append(replace(case, disjuncts=disjuncts))
    return replace(query, cases=cases)


def query_hull(query) -> tuple[np.ndarray, np.ndarray]:
    """The bounding box of every case's input box."""
    lows = np.min([case.box.lower for case in query.cases], axis=0)
    highs = np.max([case.box.upper for case in query.cases], axis=0)
    return lows, highs


def round_into_box(x: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                   element_type: str = "float32") -> Optional[np.ndarray]:
    """x rounded to the format, moved to the nearest representable value inside [lower, upper]
    where rounding left the box; None where no representable value lies inside."""
    dtype = np.dtype(FLOAT_FORMATS[element_type][3])
    lo = np.asarray(lower, dtype=np.float64).reshape(-1)
    hi = np.asarray(upper, dtype=np.float64).reshape(-1)
    xf = np.asarray(x, dtype=np.float64).reshape(-1).astype(dtype)
    up = lo.astype(dtype)  # the smallest format value >= lo
    up = np.where(up.astype(np.float64) < lo, np.nextafter(up, dtype.type(np.inf)), up)
    down = hi.astype(dtype)  # the largest format value <= hi
    down = np.where(down.astype(np.float64) > hi, np.nextafter(down, dtype.type(-np.inf)), down)
    xf = np.where(xf.astype(np.float64) < lo, up, xf)
    xf = np.where(xf.astype(np.float64) > hi, down, xf).astype(dtype)
    values = xf.astype(np.float64)
    if np.any(values < lo) or np.any(values > hi):
        return None
    return xf


def graph_float_forward(path: Union[str, Path], x: np.ndarray,
                        element_type: str = "float32") -> np.ndarray:
    """The own float replay: the ONNX graph evaluated node by node in the format (numpy), each
    node as the loader reads it on its own (a product by the constant's reciprocal for Div),
    every value and constant rounded to the format; reshapes move nothing."""
    from .onnx_io import network_from_onnx

    dtype = np.dtype(FLOAT_FORMATS[element_type][3])
    value = np.asarray(x).astype(dtype).reshape(-1)
    for node, single in _node_models(path):
        if single is None:
            continue
        net = network_from_onnx(single, where=f"node '{node.name}'")
        if getattr(net, "is_graph", False):
            raise FloatSemanticsError(f"node '{node.name or node.op_type}' ({node.op_type}): no "
                                      "own float replay for graph-IR ops")
        for layer in net.layers:
            if isinstance(layer, ReLU):
                value = np.maximum(value, dtype.type(0))
                continue
            W = np.asarray(layer.dense_matrix()).astype(dtype)
            b = np.asarray(layer.bias).astype(dtype)
            if b.size != W.shape[0]:
                b = np.repeat(b, W.shape[0] // b.size)
            value = (W @ value + b).astype(dtype)
    return value.astype(np.float64)


def onnxruntime_forward(path: Union[str, Path], x: np.ndarray) -> np.ndarray:
    """The model's first output from onnxruntime (CPU) on x, fed in the input's own type."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64,
             "tensor(float16)": np.float16}.get(inp.type, np.float32)
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
    out = session.run(None, {inp.name: np.asarray(x).astype(dtype).reshape(shape)})[0]
    return np.asarray(out, dtype=np.float64).reshape(-1)
