"""Floating-point semantics for VNN-LIB queries: how far the network evaluated in IEEE float32
(or float16) can be from the same network over the reals, and the query widened by that much.

A query declaring float32 is about N_fl(x), the ONNX graph evaluated in float32 on float32
inputs x. The certifiers bound N(x), the graph over the reals. `evaluation_error` bounds
E >= |N_fl(x) - N(x)| per output, for every x in a box, whatever the summation order (so
blocked, pairwise, SIMD and FMA kernels are covered: a fused multiply-add rounds once where
the bound allows two). Every model, a Dense/Conv/ReLU chain included, is read as the graph IR
(verify.graph: one node per ONNX node, piecewise-linear ops rewritten into Relu and sums); the
walk goes over its nodes in topological order with sound real intervals [l, h] of every tensor
(IBP, the inputs of nonlinear nodes tightened by CROWN: bounds.graph.crown_bounds) and, for the
float evaluation, a bound E_t on |t_fl - t| per tensor t (tightened by a backward error pass,
below); one rule per op kind (graph.ops):

    linear  y = L(x) + b (MatMul, Gemm, Conv, pools, Reduce, Affine, Sum; n = terms per output):
            E_y = |L|(E_x) + gamma_m (|L|(max|x| + E_x) + |b|) + m TINY,  m = n + 3,
            gamma_m = m u / (1 - m u); data movement (Reshape, Transpose, Select, Concat,
            Expand, Pad: n = 0) is exact: E_y = |L|(E_x)
    Relu    E_y = E_x, and 0 where h + E_x < 0 (both values 0); MaxPool: the window's max of
            E_x (max is exact and 1-Lipschitz in the max norm)
    smooth f (Sigmoid, Tanh, Exp, Softplus): E_y = max|f'| on [l - E_x, h + E_x] E_x
            + FUNCTION_ULPS u max(|f|, 1) (the runtime's f, an assumption, see FUNCTION_ULPS)
    Softmax E_y = 2 max y(1 - y) max_j E_x,j + rel y_max, rel from 2(R + log n + 1) u per exponent
            (R the spread of the widened inputs), FUNCTION_ULPS u per exp, gamma_n for the sum,
            2 roundings for the quotient (see _softmax_error)
    a b     E_a (|b| + E_b) + |a| E_b + u (|a| + E_a)(|b| + E_b); a / b: see _bilinear_error
    Cast    to float32 / float16 / float64 (identity over the reals): E_x when the target is as
            fine as the coarsest format the input's values are in; else one rounding to the
            target T, E_x + u_T (max|x| + E_x) + TINY_T; nodes after it compute in T (each
            tensor has a format, the rules use its u, TINY and range)

Derivation of the linear rule: the float evaluation computes fl(L(x_fl) + b) with |x_fl - x| <=
E_x. Exactly, L(x_fl) - L(x) = L(x_fl - x), at most |L|(E_x). The float sum of the n products
plus the bias, in any order, is off by at most gamma_{n+1} times the sum of the absolute values
of its terms (Higham, Accuracy and Stability, Thm 3.1 and Lemma 3.3; each product carries one
more rounding: gamma_{n+2}), those at most |L|(max|x| + E_x) + |b|. The third extra rounding
covers Gemm's alpha/beta, a division by a constant read as a product by its reciprocal, a
ReduceMean's division, weights stored in float64 but evaluated in float32, a float constant
the graph computes with one IEEE operation (deeper constant arithmetic is refused), and the
float64 rounding of the loader's own folding. TINY, the smallest normal number, bounds the
absolute error of one product that underflows, also when subnormals are flushed to zero
(FTZ/DAZ). u = 2^-24 for float32, 2^-11 for float16. A magnitude (partial sums included) that
could reach the format's largest finite number (overflow) makes the bound infinite. The
rewrites of Max / Min / Clip / Abs / LeakyRelu / PRelu into Relu and sums are charged at least
the Lipschitz propagation of E, which is all the exact float max / min / select costs.

The backward error pass. The walk charges errors through |L2| |L1| and through every Relu that
may be active: on deep nets 10^2 to 10^6 times more than they can do (|W2 W1| |e| can be far
below |W2| |W1| |e|). Exactly, the float error d_t = t_fl - t obeys

    linear  d_y = L d_x + e_y,   |e_y| <= local_y = gamma_m magnitude + m TINY (above)
    Relu    d_y = g d_x,   g = (relu(x_fl) - relu(x)) / (x_fl - x) in [0, 1]; g = 1 where
            l >= E_x (x, x_fl >= 0), g = 0 where h + E_x < 0 (both <= 0)
    smooth  d_y = f'(xi) d_x + e_y,   f' in [lo, hi] on [l - E_x, h + E_x], |e_y| <= its local

(other ops: d_y is within the walk's E_y, taken as it is), so the error of a tensor t is a sum
over paths of products of L's and gains applied to the e's: a linear function of them, whose
coefficients a backward pass from t bounds (`_backward_error`; CROWN's pass, on the error). An
open gain g in [lo, hi] is split as mid + (g - mid): mid passes on, |C| half |d_x| <= |C| half
E_x is charged against the input's own backward-pass bound E_x. The walk takes the pass's bound
(a) at every output, (b) before a Relu, at the entries whose gain the walk's E leaves open
(l - E < 0 <= h + E): the cascade that keeps deep Relus stable, (c) before smooth f, MaxPool,
Softmax, bilinear and discrete nodes, at most TIGHTEN_ENTRIES entries per tensor; not where
fewer than two sign-mixing maps (MatMul, Gemm, Conv) lead to the tensor, where the walk's E is
the pass's. Each E is the smaller of two sound bounds, so the result is at most the walk's
alone (network_error(backward=False)); the monotone rules keep that through the graph. It needs
good intervals: which Relus are stable, and the magnitudes (CROWN up to CROWN_MACS).

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
extra roundings counted above), math libraries less accurate than FUNCTION_ULPS.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .errors import InputError

# element type -> (unit roundoff u, smallest normal TINY, largest finite, numpy dtype name)
FLOAT_FORMATS = {
    "float32": (2.0 ** -24, 2.0 ** -126, float(np.finfo(np.float32).max), "float32"),
    "float16": (2.0 ** -11, 2.0 ** -14, float(np.finfo(np.float16).max), "float16"),
    "float64": (2.0 ** -53, 2.0 ** -1022, float(np.finfo(np.float64).max), "float64"),
}
ONNX_FLOAT_TYPES = {"float32": 1, "float16": 10, "float64": 11}  # their ONNX element types
ONNX_FORMATS = {code: name for name, code in ONNX_FLOAT_TYPES.items()}
BATCHNORM_ROUNDINGS = 8  # inv = 1/sqrt(var + eps), s = scale inv, (w - mean) s + B, in any form
EXTRA_ROUNDINGS = 3
SELF_SLACK = 1e-9  # relative inflation for the float64 rounding of this module's own sums
# Allowance for the runtime's exp / tanh / sigmoid / softplus: |f_fl(v) - f(v)| <= FUNCTION_ULPS
# u max(|f(v)|, 1). An assumption about the runtime's math library (onnxruntime's MLAS kernels,
# measured: at most 4.5 u max(|f|, 1) over [-100, 100]), like the fused-kernel caveat.
FUNCTION_ULPS = 16
# CROWN tightening of the intervals the bound reads, on networks up to this many multiply-adds
# (ACAS Xu 14k, MNIST 256x2 270k, CIFAR ResNet-2b 692k, ResNet-4b 2.9M). The backward error pass
# needs them: which Relus are stable, and the magnitudes (ResNet-2b prop 2: 0.026 with CROWN,
# 0.79 with IBP; 7-15 s of CROWN passes on 2 loaded cores, shared with the certifiers when the
# caller passes its network: bounds.graph.crown_bounds' memo).
CROWN_MACS = 5_000_000


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


def _real_bounds(net, lower: np.ndarray, upper: np.ndarray) -> dict:
    """Sound real intervals (1, *shape) of every tensor over the box: IBP, the inputs of the
    nonlinear nodes tightened by CROWN (bounds.graph.crown_bounds) on networks of at most
    CROWN_MACS multiply-adds, within any enclosing deadline; else IBP (sound, looser)."""
    import torch

    from .bounds import InputBatch
    from .bounds.graph import CROWN_ROWS, crown_bounds
    from .spec import Box, OutputProperty, Specification

    spec = Specification(Box(lower, upper), OutputProperty(np.eye(net.output_size)[:1], [0.0]))
    batch = InputBatch.from_specs([spec], torch.device("cpu"))
    rows = CROWN_ROWS if net.multiply_accumulates() <= CROWN_MACS else 0
    with torch.no_grad():
        return crown_bounds(net, batch, rows)


def _linear_error(net, k: int, node, errors: list, bounds: list, u: float, tiny: float,
                  extra=None):
    """(error, magnitude, local) of a linear node y = L(x) + b: error |L|(E) + local, local =
    gamma_m magnitude + m TINY (the node's own rounding), magnitude |L|(max|x| + E) + |b| +
    extra (a bound on every partial sum), m = terms + EXTRA_ROUNDINGS; a pure data movement (no
    terms) carries E only (local None)."""
    import torch

    from .graph import ops

    forward, _, terms = ops.LINEAR[node.op]
    p = net.torch_params(torch.device("cpu"), torch.float64)[k]
    p_abs = net.torch_params(torch.device("cpu"), torch.float64, absolute=True)[k]
    carried = forward(node, errors, p_abs)
    n = terms(node)
    if n == 0:
        return carried, carried, None
    bias = forward(node, [torch.zeros_like(e) for e in errors], p).abs()
    magnitude = forward(node, [torch.maximum(lo.abs(), up.abs()) + e
                               for (lo, up), e in zip(bounds, errors)], p_abs) + bias
    m = n + EXTRA_ROUNDINGS
    if extra is not None:
        magnitude, m = magnitude + extra, m + BATCHNORM_ROUNDINGS
    local = float(gamma(np.asarray(m, dtype=np.float64), u)) * magnitude + m * tiny
    return carried + local, magnitude, local


def _elementwise_error(op: str, error, lower, upper, u: float, tiny: float):
    """Relu: E, or 0 where upper + E < 0 (both values 0). Smooth f: max|f'| on the widened
    interval times E (mean value theorem) plus f's own rounding (FUNCTION_ULPS, see above)."""
    import torch

    from .graph import ops

    if op == "Relu":
        return torch.where(upper + error * (1 + SELF_SLACK) < 0, torch.zeros_like(error), error)
    _, slope, local = _smooth_slopes(op, error, lower, upper, u, tiny)
    return slope * error + local


def _smooth_slopes(op: str, error, lower, upper, u: float, tiny: float):
    """(s_lo, s_hi, local) of a smooth increasing f: f(x_fl) - f(x) = f'(xi) (x_fl - x) with xi
    in [l - E, h + E] (mean value theorem), f' in [s_lo, s_hi] there (widened by torch's own
    rounding of f', ops.function_error); local = FUNCTION_ULPS u max(|f|, 1) + TINY, the
    runtime's rounding of f."""
    import torch

    from .graph import ops

    f, df, shape = ops.ELEMENTWISE[op]
    lo, up = lower - error, upper + error
    if shape == "s":  # f' largest at 0, monotone on either side: smallest at an end
        slope = df(torch.minimum(torch.maximum(torch.zeros_like(lo), lo), up))
        least = torch.minimum(df(lo), df(up))
    else:  # convex, increasing: f' largest at the top, smallest at the bottom
        slope, least = df(up), df(lo)
    least = torch.nan_to_num(least - ops.function_error(least), nan=0.0).clamp(min=0)
    value = torch.maximum(torch.maximum(f(lo).abs(), f(up).abs()), torch.ones_like(lo))
    return least, slope, FUNCTION_ULPS * u * value + tiny


def _gain_step(op: str, error, lower, upper, u: float, tiny: float) -> tuple:
    """The backward pass's step of an elementwise node: ('gain', local, lo, hi), its float
    error d_y = g d_x + e with g in [lo, hi]. Relu: g = (relu(x_fl) - relu(x)) / (x_fl - x) is in
    [0, 1]; 1 where l >= E (x and x_fl >= 0), 0 where h + E < 0 (both <= 0); e = 0. Smooth f:
    [lo, hi] = _smooth_slopes's, e its local rounding."""
    import torch

    from .graph import ops

    if op == "Relu":
        error = error * (1 + SELF_SLACK)
        active = (lower - error >= 0).to(error.dtype)
        dead = upper + error < 0
        return "gain", None, active, torch.where(dead, 0.0, 1.0).to(error.dtype)
    least, slope, local = _smooth_slopes(op, error, lower, upper, u, tiny)
    return "gain", local * (1 + SELF_SLACK), least, slope + ops.function_error(slope)


def _softmax_error(axis: int, error, lower, upper, u: float, tiny: float):
    """y = softmax(x) along `axis` (n entries). Input error: |dy_i| <= sum_j |y_i (d_ij - y_j)|
    E_j <= 2 y_i (1 - y_i) max_j E_j, y at some point of the widened box. Own rounding, for
    exp(x_j - max) / sum or exp(x_j - log-sum-exp), by reciprocal or division: each exponent
    off by 2 (R + log n + 1) u relatively at most (R the spread of x along the axis), each exp by
    FUNCTION_ULPS u, the sum of positive terms by gamma_n, the quotient by 2 roundings (the
    exponent's allowance doubled for the log-sum-exp form: x_i - max - log S, 3 roundings)."""
    import torch

    from .graph import ops

    lo, up = lower - error, upper + error
    y_lo, y_up = ops.softmax_interval(axis, lo, up)
    q = torch.where((y_lo <= 0.5) & (y_up >= 0.5), torch.full_like(y_lo, 0.25),
                    torch.maximum(y_lo * (1 - y_lo), y_up * (1 - y_up)))
    dim = axis + 1
    n = lo.shape[dim]
    carried = 2 * q * error.amax(dim=dim, keepdim=True)
    spread = up.amax(dim=dim, keepdim=True) - lo.amin(dim=dim, keepdim=True)
    rho = torch.expm1(2 * (spread + math.log(n) + 1) * u) + FUNCTION_ULPS * u
    rho = rho * (1 + rho)  # (1 + r)(1 + K u) - 1 <= r + K u + r K u, loosely
    g = float(gamma(np.asarray(n, dtype=np.float64), u))
    relative = (1 + rho) * (1 + u) ** 2 / ((1 - rho) * (1 - g)) - 1
    return torch.clamp(carried + relative * y_up + n * tiny, max=1.0)


def _bilinear_error(node, p: dict, errors: list, bounds: list, u: float, tiny: float):
    """Product y = a b: |a_fl b_fl - a b| <= E_a (|b| + E_b) + |a| E_b, and one rounding of
    at most u (|a| + E_a)(|b| + E_b). Quotient y = a / b (|b| >= m > E_b on the box):
    |a_fl / b_fl - a / b| = |(a_fl - a) b - a (b_fl - b)| / |b b_fl| <= (E_a |b| + |a| E_b) /
    (m (m - E_b)), and one rounding of at most u (|a| + E_a) / (m - E_b); unbounded when the
    denominator's interval, widened by E_b, reaches 0. A constant numerator is exact."""
    import torch

    from .graph.ops import lift

    rank = p["rank"]
    if node.op == "Quotient" and "numerator" in p:
        b_lo, b_up = (lift(t, rank) for t in bounds[0])
        e_b = lift(errors[0], rank)
        a_mag, e_a = p["numerator"].abs(), torch.zeros(())
    else:
        (a_lo, a_up), (b_lo, b_up) = [(lift(lo, rank), lift(up, rank)) for lo, up in bounds]
        e_a, e_b = (lift(e, rank) for e in errors)
        a_mag = torch.maximum(a_lo.abs(), a_up.abs())
    b_mag = torch.maximum(b_lo.abs(), b_up.abs())
    if node.op == "Product":
        carried = e_a * (b_mag + e_b) + a_mag * e_b
        return carried + u * (a_mag + e_a) * (b_mag + e_b) + tiny
    b_min = torch.where((b_lo > 0) | (b_up < 0), torch.minimum(b_lo.abs(), b_up.abs()),
                        torch.zeros_like(b_lo))
    room = b_min - e_b * (1 + SELF_SLACK)
    carried = (e_a * b_mag + a_mag * e_b) / (b_min * room)
    error = carried + u * (a_mag + e_a) / room + tiny
    return torch.where(room > 0, error, torch.full_like(error, torch.inf))


def _batchnorm_extras(model, reader) -> dict:
    """{output tensor of a BatchNormalization node: |running mean| (per channel)}."""
    extras = {}
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and len(node.input) > 3:
            mean = reader.consts.get(reader.var(node.input[3]))
            if mean is not None:
                extras[node.output[0]] = np.abs(np.asarray(mean, dtype=np.float64))
    return extras


def _model_type(model, reader) -> int:
    """The ONNX element type of the model's (first) variable input."""
    graph_input = next(i for i in model.graph.input if i.name not in reader.consts)
    return graph_input.type.tensor_type.elem_type


def _check_casts(model, reader) -> None:
    """Casts of variable tensors to float32 / float16 / float64 are the IR's Cast (rounded to
    the target, `_cast_error`), to integer and bool types graph.discrete's Trunc / Compare;
    a cast to another type (bfloat16) rounds in a way not modelled here."""
    from .onnx_proto import type_name

    for node in model.graph.node:
        if node.op_type == "Cast" and reader.var(node.input[0]) in reader.shapes:
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if to not in ONNX_FORMATS and to not in (2, 3, 4, 5, 6, 7, 9, 12, 13):
                raise FloatSemanticsError(f"node '{node.name or node.op_type}' (Cast): a cast "
                                          "of a variable tensor to element type "
                                          f"{type_name(to)} rounds; its rounding is not "
                                          "modelled")


def _coarsest(formats) -> str:
    """The format with the largest unit roundoff."""
    return max(formats, key=lambda name: FLOAT_FORMATS[name][0])


def _cast_target(node, element_type: str, retyped: bool) -> str:
    """The format a Cast node rounds to: its target, or `element_type` in a retyped graph."""
    from .onnx_proto import type_name

    to = node.params["to"]
    if to not in ONNX_FORMATS:
        raise FloatSemanticsError(f"node '{node.name}' (Cast): a cast to element type "
                                  f"{type_name(to)} rounds; its rounding is not modelled")
    return element_type if retyped else ONNX_FORMATS[to]


def _cast_error(error, lower, upper, source: str, target: str):
    """y = x cast to `target`, x holding values of the format `source` (the coarsest it was
    last rounded to: a float32 value widened to float64 and cast back is exact): exact when
    `target` is as fine or finer, else one rounding to the target, |fl_T(v) - v| <= u_T |v| +
    TINY_T (underflow, FTZ included), v within E of x: E_y = E + u_T (max|x| + E) + TINY_T.
    Overflow: the walk's magnitude check in the target's range."""
    import torch

    if FLOAT_FORMATS[target][0] <= FLOAT_FORMATS[source][0]:
        return error
    u, tiny = FLOAT_FORMATS[target][:2]
    return error + u * (torch.maximum(lower.abs(), upper.abs()) + error) + tiny


# Ops on constants whose float result is rounded once (IEEE correctly rounded), and ops whose
# result may be off by more (sums, math library functions): counted as two.
ONE_ROUNDING_FOLDS = ("Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal")
MANY_ROUNDING_FOLDS = ("Pow", "Exp", "MatMul", "ReduceMean", "ReduceSum", "ReduceProd",
                       "Sigmoid", "Tanh", "Mod", "Range")


def _check_constant_arithmetic(model, reader) -> None:
    """Float constants the graph computes from its initializers (folded in float64 at load):
    one rounding each is within EXTRA_ROUNDINGS (a weight off by u relatively); a constant
    computed by two or more rounding ops in a row could cancel (like x + C - C), and a sum or a
    library function may be off by more than one rounding: not modelled."""
    depth: dict[str, int] = {}
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" or any(reader.var(n) in reader.shapes for n in inputs):
            continue
        d = max((depth.get(n, 0) for n in inputs), default=0)
        if node.op_type in ONE_ROUNDING_FOLDS + MANY_ROUNDING_FOLDS:
            d += 1 if node.op_type in ONE_ROUNDING_FOLDS else 2
        for out in node.output:
            value = reader.consts.get(out)
            if value is not None and np.asarray(value).dtype.kind == "f":
                depth[out] = d
                if d >= 2:
                    raise FloatSemanticsError(
                        f"constant '{out}' is computed from the initializers by float "
                        f"arithmetic ({node.op_type} after others, or a sum); its rounding is "
                        "not modelled")


def read_graph(path: Union[str, Path]):
    """(ModelProto, the graph reader after reading, GraphNetwork) of the model at `path`: every
    model, a chain included, as the graph IR (one IR node per ONNX node, rewrites aside)."""
    from .errors import UnsupportedModelError
    from .graph.network import GraphNetwork
    from .graph.onnx_graph import GraphReader
    from .onnx_proto import read_model_proto

    model = read_model_proto(path)
    reader = GraphReader(model, str(path))
    try:
        graph = reader.read()
    except UnsupportedModelError as exc:
        raise FloatSemanticsError(str(exc)) from None
    return model, reader, GraphNetwork(graph)


# The backward error pass (module docstring): rows per pass, and the most entries of one tensor
# whose error the walk tightens by it before a node reads that error non-linearly.
BACKWARD_ROWS = 256
TIGHTEN_ENTRIES = 4096
F64_UNIT, F64_UNDERFLOW = 2.0 ** -53, 2.0 ** -1074


def _transpose(node, p: dict, shapes: list, coeffs) -> list:
    """L^T applied to coeffs (R, *out) for a linear node y = L(x) + b: one (R, *in_i) per input
    (zeros for an input y does not read), bounds.graph.linear_transpose batched over the rows."""
    import torch

    from .bounds.graph import linear_transpose
    from .graph import ops

    grads = linear_transpose(ops.LINEAR[node.op][0], node, p, shapes, coeffs, batched_from=0)
    return [torch.zeros((len(coeffs), *s), dtype=coeffs.dtype) if g is None else g
            for s, g in zip(shapes, grads)]


def _column_sums(net, k: int) -> list:
    """S_i = |L|^T 1 per input i of linear node k (shape (1, *in_i)), inflated by 1e-6 for its
    own float64 rounding; cached on the network."""
    import torch

    cache = net.__dict__.setdefault("_float_column_sums", {})
    if k not in cache:
        node = net.graph.nodes[k]
        p_abs = net.torch_params(torch.device("cpu"), torch.float64, absolute=True)[k]
        ones = torch.ones((1, *net.graph.shapes[node.output]), dtype=torch.float64)
        cache[k] = [s * (1 + 1e-6) for s in _transpose(
            node, p_abs, [net.graph.shapes[i] for i in node.inputs], ones)]
    return cache[k]


def _backward_error(net, steps: list, errors: dict, start: str, entries) -> "torch.Tensor":
    """Bounds on |t_fl - t| for the flat `entries` of tensor `start`, by one backward pass
    through the error recursion the walk recorded in `steps`: d_y = L d_x + e (linear), d_y =
    g d_x + e (Relu, smooth f; g in [lo, hi] per entry), d_y = anything within E_y (other ops:
    `stop`), |e| <= local. Each row carries a coefficient C (and a radius R >= 0 where C is
    only known to lie in [C - R, C + R]) with d_start = C . d_t + (terms charged so far):

        linear   C_x = L^T C_y, R_x = |L|^T R_y; charged (|C_y| + R_y) . local_y
        gain     where E_x came from a backward pass itself (`tight`): C_x = C_y mid(g),
                 charged (|C_y| half(g) + R_y hi) . E_x  (|C g - C mid| <= |C| half, g <= hi);
                 elsewhere the hull of [C_y - R_y, C_y + R_y] [lo, hi], as C_x +- R_x
        stop     charged (|C| + R) . E_y; graph inputs likewise (E: the subnormal allowance)

    Sound for every x in the box: d_start is exactly the sum of the products along the paths,
    with the actual gains, and every term is charged at most once per path. Relu: g =
    (relu(x_fl) - relu(x)) / (x_fl - x) is in [0, 1]; 1 where l >= E_x, 0 where h + E_x < 0.
    Float64 rounding of the pass itself: a coefficient off by D (the transpose's sums: |D| <=
    gamma_n |L|^T |C_y| + n 2^-1074 <= gamma_n max|C_y| S + n 2^-1074, S = |L|^T 1; a product
    C mid, with mid and half rounded: 4 2^-53 |C| hi; a hull's ends: 4 2^-53 (|a| + |b|) on R;
    a sum of k consumers' coefficients: gamma_k sum |C_i|) changes the
    result by D . d_x, charged as |D| . E_x; the nonnegative sums (R, the charges) are off by
    a relative (1 + 2^-53)^N at most, covered by SELF_SLACK."""
    import torch

    from .graph.ir import size_of

    graph = net.graph
    params = net.torch_params(torch.device("cpu"), torch.float64)
    params_abs = net.torch_params(torch.device("cpu"), torch.float64, absolute=True)
    shape = graph.shapes[start]
    rows = len(entries)
    eye = torch.zeros((rows, size_of(shape)), dtype=torch.float64)
    eye[torch.arange(rows), torch.as_tensor(entries)] = 1.0
    # name -> [C, R or None (0), sum of |C_i| over the consumers' parts, number of parts]
    coeffs = {start: [eye.reshape(rows, *shape), None, None, 1]}
    total = torch.zeros(rows, dtype=torch.float64)

    def charge(t, bound):  # (rows, *S) . (1, *S) per row
        return (t * bound.reshape(1, *t.shape[1:])).flatten(1).sum(1)

    def push(name, c, rad):
        if name not in coeffs:
            coeffs[name] = [c, rad, None, 1]
            return
        c0, r0, a0, k0 = coeffs[name]
        a0 = c0.abs() if a0 is None else a0
        rad = r0 if rad is None else rad if r0 is None else r0 + rad
        coeffs[name] = [c0 + c, rad, a0 + c.abs(), k0 + 1]

    def width(c, rad):
        return c.abs() if rad is None else c.abs() + rad

    def gamma64(n):
        return (n * F64_UNIT) / (1 - n * F64_UNIT)

    last = next((k for k, node in enumerate(graph.nodes) if node.output == start), -1)
    for k in range(last, -1, -1):
        node = graph.nodes[k]
        if node.output not in coeffs:
            continue
        c, rad, parts, count = coeffs.pop(node.output)
        if count > 1:
            total += gamma64(count) * charge(parts, errors[node.output])
        kind, local = steps[k][0], steps[k][1]
        if local is not None:
            total += charge(width(c, rad), local)
        if kind == "stop":
            total += charge(width(c, rad), errors[node.output])
        elif kind == "gain":
            name = node.inputs[0]
            lo, hi, tight = (t.reshape(1, *c.shape[1:]) for t in steps[k][2:])
            mid, half = (lo + hi) / 2, (hi - lo) / 2
            paid = c.abs() * (half + 4 * F64_UNIT * hi) + (0 if rad is None else rad * hi)
            total += charge(torch.where(tight, paid, 0.0), errors[name])
            if bool(tight.all()):
                push(name, c * mid, None)
                continue
            low, up = (c, c) if rad is None else (c - rad, c + rad)
            a = torch.minimum(low * lo, low * hi)
            b = torch.maximum(up * lo, up * hi)
            hull = (b - a) / 2 + 4 * F64_UNIT * (a.abs() + b.abs())
            push(name, torch.where(tight, c * mid, (a + b) / 2), torch.where(tight, 0.0, hull))
        else:
            shapes = [graph.shapes[i] for i in node.inputs]
            n = size_of(graph.shapes[node.output])
            centers = _transpose(node, params[k], shapes, c)
            spreads = [None] * len(shapes) if rad is None else \
                _transpose(node, params_abs[k], shapes, rad)
            biggest = c.abs().flatten(1).amax(1)
            for name, ci, ri, s in zip(node.inputs, centers, spreads, _column_sums(net, k)):
                e = errors[name]
                total += gamma64(n) * biggest * float((s * e).sum()) + \
                    n * F64_UNDERFLOW * float(e.sum())
                push(name, ci, ri)
    for name, (c, rad, parts, count) in coeffs.items():  # graph inputs
        e = errors[name]
        total += charge(width(c, rad), e) + \
            (0 if count == 1 else gamma64(count) * charge(parts, e))
    return total * (1 + SELF_SLACK)


def _tighten(net, steps: list, errors: dict, bounds: dict, tight: dict, name: str,
             op: str) -> None:
    """errors[name] lowered to the backward pass's bound where a node `op` reads it: a Relu
    at the entries whose gain is not fixed (l - E < 0 <= h + E), smooth f, MaxPool, Softmax,
    bilinear and discrete nodes (and the outputs) at every entry; at most TIGHTEN_ENTRIES
    entries, and not past the enclosing deadline (the walk's error stays: sound). tight[name]
    marks the entries so bounded (all of a tensor behind fewer than two sign-mixing maps,
    where the walk's error is the pass's). Beyond CROWN_MACS multiply-adds only the outputs."""
    import torch

    from . import deadline

    error = errors[name].reshape(-1)
    if _mixing_depth(net).get(name, 0) < 2:
        tight[name] = torch.ones_like(errors[name], dtype=torch.bool)
        return
    if op != "output" and net.multiply_accumulates() > CROWN_MACS:
        return  # as costly as CROWN's intermediate bounds, and as much of a gain: neither
    mask = tight.setdefault(name, torch.zeros_like(errors[name], dtype=torch.bool)).reshape(-1)
    if op == "Relu":
        lo, up = (t.reshape(-1) for t in bounds[name])
        wanted = (lo - error < 0) & (up + error >= 0)
    else:
        wanted = error > 0
    entries = torch.nonzero(wanted & ~mask).flatten()
    if len(entries) == 0 or len(entries) > TIGHTEN_ENTRIES:
        return
    error = error.clone()
    for chunk in torch.split(entries, BACKWARD_ROWS):
        if deadline.active().expired():
            break
        error[chunk] = torch.minimum(error[chunk],
                                     _backward_error(net, steps, errors, name, chunk))
        mask[chunk] = True
    errors[name] = error.reshape(errors[name].shape)


MIXING = ("MatMul", "Gemm", "Conv", "ConvTranspose")  # linear ops whose weights mix signs


def _mixing_depth(net) -> dict:
    """{tensor: the most MIXING nodes on a path to it from a graph input or a nonlinear node
    that the backward pass takes as it is}; cached on the graph. Through one such map (and
    diagonal, sum or data-movement ones) |L| E is exactly what the backward pass gives; only
    a composition |L2 L1| < |L2| |L1| (and the Relu gains met on the way) can be tighter."""
    from .graph import ops

    cached = getattr(net.graph, "_float_mixing_depth", None)
    if cached is not None:
        return cached
    depth = {name: 0 for name in net.graph.inputs}
    for node in net.graph.nodes:
        if node.op in ops.LINEAR or node.op in ops.ELEMENTWISE:
            depth[node.output] = max((depth[i] for i in node.inputs), default=0) + \
                (node.op in MIXING)
        else:
            depth[node.output] = 0
    net.graph._float_mixing_depth = depth
    return depth


def network_error(net, lower: np.ndarray, upper: np.ndarray, element_type: str = "float32",
                  batchnorm_means: Optional[dict] = None,
                  model_type: Optional[int] = None, backward: bool = True) -> np.ndarray:
    """Per output of the GraphNetwork `net`, a bound on |N_fl(x) - N(x)| over the box [lower,
    upper] (the recurrence of the module docstring, one rule per op); `batchnorm_means`: the
    |running mean| per BatchNormalization output tensor. Each tensor has a format: the inputs
    `element_type`, a Cast's output its target, any other node's output the coarsest of its
    inputs'; each rule uses its output's u, TINY and range (and a Cast knows the coarsest
    format its input's values are in, which may be coarser than the one it is stored in).
    `model_type`: the ONNX element type the model declares; when it is not `element_type`'s
    (the graph evaluated in another precision, retyped_model) every float Cast
    is to `element_type`. `backward` False: the forward walk alone (no backward error pass;
    looser, for comparison)."""
    import torch

    from .graph import discrete, ops

    if element_type not in FLOAT_FORMATS:
        raise FloatSemanticsError(f"element type {element_type} has no float model here "
                                  f"({', '.join(FLOAT_FORMATS)})")
    retyped = model_type is not None and model_type != ONNX_FLOAT_TYPES[element_type]
    u, tiny, largest, _ = FLOAT_FORMATS[element_type]
    lower = np.asarray(lower, dtype=np.float64).reshape(-1)
    upper = np.asarray(upper, dtype=np.float64).reshape(-1)
    bounds = _real_bounds(net, lower, upper)
    # Inputs are values of the format already; DAZ may read a subnormal as 0: TINY off.
    # (only where the box holds a nonzero value below TINY in magnitude)
    lows, highs = net.split_input(torch.as_tensor(lower[None])), \
        net.split_input(torch.as_tensor(upper[None]))
    errors = {name: torch.where(((lows[name] < tiny) & (highs[name] > 0))
                                | ((lows[name] < 0) & (highs[name] > -tiny)),
                                tiny, 0.0).to(torch.float64) for name in net.graph.inputs}
    means = batchnorm_means or {}
    formats = {name: element_type for name in net.graph.inputs}  # the format computed in
    held = dict(formats)  # the coarsest format whose values the tensor holds (casts keep it)
    steps: list = []  # per node, how its error enters the backward pass (_backward_error)
    tight: dict = {}  # per tensor, the entries whose error a backward pass bounded (_tighten)
    with torch.no_grad():
        for k, node in enumerate(net.graph.nodes):
            partial, step = None, ("stop", None)
            if backward and node.op not in ops.LINEAR:
                for name in dict.fromkeys(node.inputs):
                    _tighten(net, steps, errors, bounds, tight, name, node.op)
            ins = [errors[i] for i in node.inputs]
            box = [bounds[i] for i in node.inputs]
            fmt = _coarsest([formats[i] for i in node.inputs]) if node.inputs else element_type
            held[node.output] = fmt
            if node.op == "Cast":
                fmt = _cast_target(node, element_type, retyped)
                held[node.output] = _coarsest([held[node.inputs[0]], fmt])
            u, tiny, largest, _ = FLOAT_FORMATS[fmt]
            formats[node.output] = fmt
            if node.op == "Cast":
                error = _cast_error(ins[0], *box[0], held[node.inputs[0]], fmt)
            elif node.op in ops.LINEAR:
                extra = None
                if node.op == "Affine" and node.output in means:  # (x - mean) s + B
                    scale = node.params["scale"]
                    mean = means[node.output].reshape(np.shape(scale)) if np.size(scale) > 1 \
                        else means[node.output]
                    p = {**node.params, "scale": np.zeros_like(scale),
                         "shift": 2 * np.abs(scale) * mean}
                    extra = ops.f_affine(node, [torch.zeros_like(ins[0])],
                                         ops.to_torch(p, torch.device("cpu"), torch.float64))
                error, partial, local = _linear_error(net, k, node, ins, box, u, tiny, extra)
                step = ("linear", None if local is None else local * (1 + SELF_SLACK))
            elif node.op in ops.ELEMENTWISE:
                error = _elementwise_error(node.op, ins[0], *box[0], u, tiny)
                step = (*_gain_step(node.op, ins[0], *box[0], u, tiny),
                        tight.get(node.inputs[0], torch.zeros_like(ins[0], dtype=torch.bool)))
            elif node.op == "MaxPool":  # max is exact and 1-Lipschitz in the window's max norm
                p = net.torch_params(torch.device("cpu"), torch.float64)[k]
                error = ops.f_max_pool(node, ins, p)
            elif node.op == "Softmax":
                error = _softmax_error(node.params["axis"], ins[0], *box[0], u, tiny)
            elif node.op in ops.BILINEAR:
                p = net.torch_params(torch.device("cpu"), torch.float64)[k]
                error = _bilinear_error(node, p, ins, box, u, tiny)
            elif node.op in ops.DISCRETE:  # comparisons, Where, trunc, powers
                p = net.torch_params(torch.device("cpu"), torch.float64)[k]
                error = discrete.float_error(node, p, ins, box, u, tiny, FUNCTION_ULPS)
                if node.op == "Power" and len(node.inputs) == 2 and \
                        not bool(torch.isfinite(error).all()):
                    raise FloatSemanticsError(f"node '{node.name}' (Pow of two variables): the "
                                              "base is not provably positive on the box")
            else:
                raise FloatSemanticsError(f"node '{node.name or node.op}' ({node.op}): its float "
                                          "rounding is not modelled")
            errors[node.output] = error * (1 + SELF_SLACK)
            steps.append(step)
            lo, up = bounds[node.output]
            peak = float((torch.maximum(lo.abs(), up.abs()) + error).max())
            if partial is not None:
                peak = max(peak, float(partial.max()))
            if not math.isfinite(peak) or peak >= largest / 2:
                return np.full(net.output_size, np.inf)
        for name in dict.fromkeys(net.graph.outputs) if backward else ():
            _tighten(net, steps, errors, bounds, tight, name, "output")
    return np.concatenate([errors[o].reshape(-1).numpy() for o in net.graph.outputs])


def _check_constant_range(reader, element_type: str) -> None:
    """A graph evaluated in a format coarser than float32 (float16: an isomorphic network
    declared in another precision) rounds its float32 / float64 constants to it: one rounding
    of relative u each (within EXTRA_ROUNDINGS) as long as they are normal numbers of the
    format; a nonzero constant below its smallest normal (absolute, not relative, error) or
    beyond half its largest (overflow to inf) is not modelled."""
    u, tiny, largest, _ = FLOAT_FORMATS[element_type]
    if u < FLOAT_FORMATS["float32"][0]:
        return
    for name, value in reader.consts.items():
        value = np.abs(np.asarray(value))
        if value.dtype.kind != "f" or not value.size:
            continue
        nonzero = value[value != 0]
        if nonzero.size and (nonzero.min() < tiny or nonzero.max() >= largest / 2):
            raise FloatSemanticsError(f"constant '{name}' has a value outside the normal range "
                                      f"of {element_type}; its rounding is not modelled")


def evaluation_error(path: Union[str, Path], lower: np.ndarray, upper: np.ndarray,
                     element_type: str = "float32", net=None,
                     backward: bool = True) -> np.ndarray:
    """Per output, a bound on |N_fl(x) - N(x)| over the box [lower, upper] (flat network
    input), N the ONNX model at `path` over the reals and N_fl the same graph evaluated in
    `element_type` (any summation order; its constants rounded to it when the model stores
    them finer). FloatSemanticsError when it cannot be bounded.
    `net`: the caller's GraphNetwork of the same model, if any: used when its graph is the
    one read here (same fingerprint), so that the certifiers reuse the CROWN bounds computed
    here (bounds.graph.crown_bounds keeps the last ones per network object). `backward`:
    see network_error."""
    model, reader, read = read_graph(path)
    same = getattr(net, "is_graph", False) and net.fingerprint() == read.fingerprint()
    net = net if same else read
    _check_casts(model, reader)
    _check_constant_arithmetic(model, reader)
    _check_constant_range(reader, element_type)
    return network_error(net, lower, upper, element_type, _batchnorm_extras(model, reader),
                         _model_type(model, reader), backward)


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
    """The own float replay: the graph IR of the model evaluated node by node in the format
    (torch on the CPU), every constant rounded to the format; a Div by a constant as the
    product by its rounded reciprocal (the reader's form), rewrites of Max / Clip / LeakyRelu
    into Relu and sums as such; a Cast rounds to its target (the nodes after it then compute
    in the replay's format, not the target's). `replay_forward` on a model read already."""
    return replay_forward(read_graph(path)[2], x, element_type)


def replay_forward(net, x: np.ndarray, element_type: str = "float32") -> np.ndarray:
    """graph_float_forward on `net`, the GraphNetwork of `read_graph` (read once, replayed at
    several points)."""
    import torch

    from .graph.ops import rounding_casts

    dtype = {"float32": torch.float32, "float16": torch.float16,
             "float64": torch.float64}[element_type]
    value = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(1, -1)).to(dtype)
    with torch.no_grad(), rounding_casts():
        return net.torch_forward(value).reshape(-1).to(torch.float64).numpy()


def retyped_model(model, element_type: str):
    """A copy of the ModelProto `model` computing in `element_type` (the same graph declared in
    another precision, as a VNN-LIB isomorphic network may be): every float32 / float16 /
    float64 tensor it declares or stores (graph inputs, outputs, value_info, initializers,
    Constant and ConstantOfShape values) and every Cast to one of those types retyped."""
    from onnx import numpy_helper

    target = ONNX_FLOAT_TYPES[element_type]
    dtype = np.dtype(FLOAT_FORMATS[element_type][3])
    floats = set(ONNX_FLOAT_TYPES.values())
    copy = type(model)()
    copy.CopyFrom(model)
    graph = copy.graph

    def retensor(tensor) -> None:
        if tensor.data_type in floats and tensor.data_type != target:
            value = numpy_helper.to_array(tensor).astype(dtype)
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))

    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.type.tensor_type.elem_type in floats:
            info.type.tensor_type.elem_type = target
    for tensor in graph.initializer:
        retensor(tensor)
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i in floats:
                attribute.i = target
            elif attribute.name == "value" and attribute.HasField("t"):
                retensor(attribute.t)
    return copy


def onnxruntime_session(model):
    """An onnxruntime CPU session of the ModelProto `model` (warnings and info not logged)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def onnxruntime_feed(arg, values: np.ndarray, nonpositive_as_one: bool = False) -> np.ndarray:
    """`values` as the feed of the session input `arg` (an onnxruntime NodeArg): its own float
    type (float32 for any other) and shape, a symbolic or unknown dimension as 1 (with
    `nonpositive_as_one` also a dimension <= 0)."""
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64,
             "tensor(float16)": np.float16}.get(arg.type, np.float32)
    shape = [d if isinstance(d, int) and (d > 0 or not nonpositive_as_one) else 1
             for d in arg.shape]
    return np.asarray(values).astype(dtype).reshape(shape)


def float_session(path: Union[str, Path], element_type: Optional[str] = None):
    """The onnxruntime session of the model at `path`; with `element_type` (a float format)
    other than the model's, of the model retyped to it (`retyped_model`: the graph evaluated
    in that precision, as the error bound assumes)."""
    from .onnx_proto import read_model_proto

    model = read_model_proto(path)
    declared = model.graph.input[0].type.tensor_type.elem_type if model.graph.input else None
    if element_type in ONNX_FLOAT_TYPES and declared in set(ONNX_FLOAT_TYPES.values()) \
            and declared != ONNX_FLOAT_TYPES[element_type]:
        model = retyped_model(model, element_type)
    return onnxruntime_session(model)


def session_forward(session, x: np.ndarray) -> np.ndarray:
    """The session's first output on x fed to its first input (onnxruntime_feed), flat."""
    inp = session.get_inputs()[0]
    out = session.run(None, {inp.name: onnxruntime_feed(inp, x)})[0]
    return np.asarray(out, dtype=np.float64).reshape(-1)


def onnxruntime_forward(path: Union[str, Path], x: np.ndarray,
                        element_type: Optional[str] = None) -> np.ndarray:
    """The model's first output from onnxruntime (CPU) on x, fed in the input's own type; with
    `element_type` (a float format) other than the model's, the model retyped to it
    (`float_session`)."""
    return session_forward(float_session(path, element_type), x)
