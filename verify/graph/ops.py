"""One rule per operator: the only place where an operator's math lives.

Tensors carry a leading sample axis B: a variable of ONNX shape S is a torch tensor (B, *S).

- linear rules (`LINEAR`): `forward(node, xs, p)` computes y = L(xs) + b with the node's
  constants p; the same function with `absolute(params)` (|weights|, zero bias) computes |L|,
  used for interval radii and rounding allowances; `terms(node)` bounds the number of products
  summed per output (for `rounding_slack`). Their backward (transpose) rule is the vector-Jacobian
  product of `forward`, exact for a linear map, so no op writes its transpose by hand.
- nonlinear elementwise rules (`ELEMENTWISE`): a monotone increasing function f with its
  derivative; `relax(op, lower, upper)` gives linear bounds a_l x + b_l <= f(x) <= a_u x + b_u on
  [lower, upper] (chord / tangent, widened for the rounding of f); intervals are [f(l), f(u)]
  widened alike.
- `MaxPool` and `Softmax` (`BOUNDED`): exact or sound interval rules. Linear bounds: MaxPool's
  from its window candidates (`max_pool_windows`, any spatial rank), Softmax's from
  `softmax_relaxation` (a mean-value form around the box's midpoint; the interval where
  tighter).

Piecewise-linear ops other than Relu (LeakyRelu, PRelu, Clip, Abs, Max, Min) are rewritten into
Relu and linear nodes by the loader (e.g. max(a, b) = b + relu(a - b)), so every certifier that
handles Relu handles them.
"""

from __future__ import annotations

import itertools
import math
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .bilinear import FORWARDS as BILINEAR
from .discrete import FORWARDS as DISCRETE
from .ir import Node, size_of

Tensor = torch.Tensor
# Relative error allowed for torch's transcendental functions (a few ulp in practice; 2^-44 is
# ~500 ulp of float64), plus an absolute floor for results near zero.
FUNCTION_ROUNDING = 2.0 ** -44
FUNCTION_FLOOR = 2.0 ** -1000


def lift(x: Tensor, rank: int) -> Tensor:
    """(B, *S) -> (B, 1, ..., 1, *S) with `rank` axes after B (numpy's broadcast alignment)."""
    missing = rank - (x.dim() - 1)
    return x.reshape(x.shape[0], *([1] * missing), *x.shape[1:]) if missing > 0 else x


def _spatial(x: Tensor, node: Node) -> tuple[Tensor, int]:
    """(B, N, C, *sp) -> (B * N, C, *sp) and B."""
    b = x.shape[0]
    return x.reshape(b * x.shape[1], *x.shape[2:]), b


def _unspatial(y: Tensor, b: int) -> Tensor:
    return y.reshape(b, y.shape[0] // b, *y.shape[1:])


def _pad_pairs(pads: list[int]) -> list[int]:
    """ONNX pads (begin_1..begin_k, end_1..end_k) -> torch F.pad order (last axis first)."""
    k = len(pads) // 2
    out: list[int] = []
    for axis in reversed(range(k)):
        out += [pads[axis], pads[axis + k]]
    return out


# -- linear forwards -----------------------------------------------------------------------------
def f_affine(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    """y = x * scale + shift (constants broadcast; Add/Sub/Mul/Div/Neg by constants, BatchNorm)."""
    x = lift(xs[0], p["rank"])
    return x * p["scale"] + p["shift"]


def f_sum(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    """y = sum_i sign_i x_i (broadcast): Add / Sub of variable tensors."""
    out = None
    for x, s in zip(xs, p["signs"]):
        term = lift(x, p["rank"]) * float(s)
        out = term if out is None else out + term
    return out


def f_matmul(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    """x @ W (side 0) or W @ x (side 1), W constant, numpy matmul semantics per sample."""
    x, w = xs[0], p["weight"]
    if p["side"] == 0:
        return lift(x, w.dim()) @ w if w.dim() > 1 else x @ w
    if x.dim() == 2:  # W @ vector
        return x @ w.transpose(-1, -2)
    return w @ lift(x, w.dim())


def f_gemm(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    """alpha op(A) op(B) + beta C: the weight holds alpha op(B), the bias beta C."""
    a = xs[0].transpose(-1, -2) if p["transA"] else xs[0]
    return a @ p["weight"] + p["bias"]


def f_conv(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    x, b = _spatial(xs[0], node)
    x = F.pad(x, _pad_pairs(p["pads"]))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[p["weight"].dim() - 2]
    y = conv(x, p["weight"], p["bias"], stride=p["strides"], dilation=p["dilations"],
             groups=p["group"])
    return _unspatial(y, b)


def f_conv_transpose(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    x, b = _spatial(xs[0], node)
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d}[p["weight"].dim() - 2]
    y = conv(x, p["weight"], p["bias"], stride=p["strides"], dilation=p["dilations"],
             groups=p["group"], output_padding=p["output_padding"])
    k = len(p["pads"]) // 2
    index = [slice(None), slice(None)]
    for axis in range(k):
        index.append(slice(p["pads"][axis], y.shape[2 + axis] - p["pads"][axis + k]))
    return _unspatial(y[tuple(index)], b)


def f_average_pool(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    """Mean over each window; padded cells count as zeros, divided by the window's cell count
    (all cells with count_include_pad, else only the real ones): `factor` holds that scaling."""
    x, b = _spatial(xs[0], node)
    x = F.pad(x, _pad_pairs(p["pads"]))
    k = len(p["kernel"])
    if any(d != 1 for d in p.get("dilations", [1] * k)):  # a dilated window: a depthwise conv
        channels = x.shape[1]
        weight = torch.full((channels, 1, *p["kernel"]), 1.0 / math.prod(p["kernel"]),
                            dtype=x.dtype, device=x.device)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[k]
        y = conv(x, weight, stride=p["strides"], dilation=p["dilations"], groups=channels)
    else:
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[k]
        y = pool(x, p["kernel"], p["strides"])
    return _unspatial(y * p["factor"], b)


def f_global_average_pool(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    x = xs[0]
    return x.mean(dim=tuple(range(3, x.dim())), keepdim=True)


def f_pad(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    return F.pad(xs[0], _pad_pairs(p["pads"]), value=float(p["value"]))


def f_reduce(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    dims = tuple(a + 1 for a in p["axes"])
    y = xs[0].sum(dim=dims, keepdim=bool(p["keepdims"])) if dims else xs[0]
    return y * p["factor"]


def f_reshape(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    return xs[0].reshape(xs[0].shape[0], *p["shape"])


_CAST_DTYPES = {1: torch.float32, 10: torch.float16, 11: torch.float64}
_ROUNDING_CASTS = threading.local()


@contextmanager
def rounding_casts() -> Iterator[None]:
    """Within: Cast nodes round to their target type (a float replay of the graph); outside,
    their forward is the identity (the reals)."""
    before = getattr(_ROUNDING_CASTS, "on", False)
    _ROUNDING_CASTS.on = True
    try:
        yield
    finally:
        _ROUNDING_CASTS.on = before


def f_cast(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    """A Cast of a float tensor to a float type (params["to"], the ONNX type): the identity
    over the reals; rounded to the target within `rounding_casts` (its rounding bound is
    float_rounding's)."""
    target = _CAST_DTYPES.get(p["to"])
    if getattr(_ROUNDING_CASTS, "on", False) and target is not None:
        return xs[0].to(target).to(xs[0].dtype)
    return xs[0]


def f_transpose(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    return xs[0].permute(0, *[a + 1 for a in p["perm"]])


def f_select(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    """Gather / Slice / Split: index_select along each listed axis with constant indices."""
    x = xs[0]
    for axis, index in zip(p["axes"], p["indices"]):
        x = x.index_select(axis + 1, index.reshape(-1))
    return x.reshape(x.shape[0], *p["shape"])


def f_concat(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    """Concat of variables and constants (`parts`: an input index, or a constant array)."""
    b = xs[0].shape[0]
    pieces = []
    for part in p["parts"]:
        if isinstance(part, int):
            pieces.append(xs[part])
        else:
            pieces.append(part.expand(b, *part.shape[1:]))
    return torch.cat(pieces, dim=p["axis"] + 1)


def f_expand(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    x = lift(xs[0], len(p["shape"]))
    return x.expand(x.shape[0], *p["shape"])


# -- nonlinear forwards ----------------------------------------------------------------------------
def f_max_pool(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    x, b = _spatial(xs[0], node)
    x = F.pad(x, _pad_pairs(p["pads"]), value=float("-inf"))
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(p["kernel"])]
    return _unspatial(pool(x, p["kernel"], p["strides"], dilation=p["dilations"]), b)


def f_softmax(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    return torch.softmax(xs[0], dim=p["axis"] + 1)


ELEMENTWISE: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], str]] = {
    # op: (f, f', shape): "relu" (exact, CROWN's relaxation), "convex", or "s" (convex below 0,
    # concave above, f' largest at 0 and monotone on either side)
    "Relu": (torch.relu, lambda x: (x > 0).to(x.dtype), "relu"),
    "Sigmoid": (torch.sigmoid, lambda x: torch.sigmoid(x) * torch.sigmoid(-x), "s"),
    "Tanh": (torch.tanh, lambda x: 1 - torch.tanh(x) ** 2, "s"),
    "Softplus": (F.softplus, torch.sigmoid, "convex"),
    "Exp": (torch.exp, torch.exp, "convex"),
}


def f_elementwise(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    return ELEMENTWISE[node.op][0](xs[0])


# -- the table -------------------------------------------------------------------------------------
def _abs_weights(*zeroed: str):
    def absolute(params: dict) -> dict:
        out = {}
        for key, value in params.items():
            if key in zeroed:
                out[key] = np.zeros_like(value)
            elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
                out[key] = np.abs(value)
            else:
                out[key] = value
        return out
    return absolute


def _abs_sum(params: dict) -> dict:
    return {**params, "signs": [abs(s) for s in params["signs"]]}


def _abs_concat(params: dict) -> dict:
    return {**params, "parts": [part if isinstance(part, int) else np.zeros_like(part)
                                for part in params["parts"]]}


# op: (forward, absolute(params) -> params of |L|, terms(node) -> products per output)
LINEAR: dict[str, tuple[Callable, Callable[[dict], dict], Callable[[Node], int]]] = {
    "Affine": (f_affine, _abs_weights("shift"), lambda n: 1),
    "Sum": (f_sum, _abs_sum, lambda n: len(n.inputs)),
    "MatMul": (f_matmul, _abs_weights(), lambda n: n.params["weight"].shape[-2 if n.params["side"] == 0 else -1]
               if n.params["weight"].ndim > 1 else n.params["weight"].shape[0]),
    "Gemm": (f_gemm, _abs_weights("bias"), lambda n: n.params["weight"].shape[0]),
    "Conv": (f_conv, _abs_weights("bias"), lambda n: size_of(n.params["weight"].shape[1:])),
    "ConvTranspose": (f_conv_transpose, _abs_weights("bias"),
                      lambda n: size_of(n.params["weight"].shape[:1] + n.params["weight"].shape[2:])),
    "AveragePool": (f_average_pool, _abs_weights(), lambda n: size_of(n.params["kernel"]) + 1),
    "GlobalAveragePool": (f_global_average_pool, _abs_weights(), lambda n: n.params["count"] + 1),
    "Pad": (f_pad, _abs_weights("value"), lambda n: 0),
    "Reduce": (f_reduce, _abs_weights(), lambda n: n.params["count"] + 1),
    "Reshape": (f_reshape, _abs_weights(), lambda n: 0),
    "Cast": (f_cast, _abs_weights(), lambda n: 0),
    "Transpose": (f_transpose, _abs_weights(), lambda n: 0),
    "Select": (f_select, _abs_weights(), lambda n: 0),
    "Concat": (f_concat, _abs_concat, lambda n: 0),
    "Expand": (f_expand, _abs_weights(), lambda n: 0),
}
NONLINEAR: dict[str, Callable] = {
    **{op: f_elementwise for op in ELEMENTWISE},
    "MaxPool": f_max_pool,
    "Softmax": f_softmax,
    **BILINEAR,  # Product, Quotient of variable tensors (graph.bilinear)
    **DISCRETE,  # Compare, Where, Trunc, Power (graph.discrete)
}
BOUNDED = ("MaxPool", "Softmax", *BILINEAR, *DISCRETE)


def forward_of(op: str) -> Callable:
    return LINEAR[op][0] if op in LINEAR else NONLINEAR[op]


# -- interval and linear relaxation rules of nonlinear ops -----------------------------------------
def function_error(*values: Tensor) -> Tensor:
    """Allowance for the rounding of torch's f (and of slopes times points): relative
    FUNCTION_ROUNDING of the magnitudes involved, plus a floor."""
    total = sum(v.abs() for v in values)
    return total * FUNCTION_ROUNDING + FUNCTION_FLOOR


def elementwise_interval(op: str, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    f = ELEMENTWISE[op][0]
    lo, up = f(lower), f(upper)
    if op == "Relu":
        return lo, up
    return lo - function_error(lo), up + function_error(up)


def softmax_interval(axis: int, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """y_i in [1 / (1 + sum_{j != i} e^{u_j - l_i}), 1 / (1 + sum_{j != i} e^{l_j - u_i})]."""
    lo, up = lower.movedim(axis + 1, -1), upper.movedim(axis + 1, -1)
    n = lo.shape[-1]
    off = ~torch.eye(n, dtype=torch.bool, device=lo.device)
    worst = torch.exp(up[..., None, :] - lo[..., :, None]).where(off, torch.zeros(()).to(lo))
    best = torch.exp(lo[..., None, :] - up[..., :, None]).where(off, torch.zeros(()).to(lo))
    y_lo, y_up = 1 / (1 + worst.sum(-1)), 1 / (1 + best.sum(-1))
    y_lo = (y_lo - function_error(y_lo) * n).clamp(min=0)
    y_up = (y_up + function_error(y_up) * n).clamp(max=1)
    return y_lo.movedim(-1, axis + 1), y_up.movedim(-1, axis + 1)


def softmax_relaxation(axis: int, lower: Tensor, upper: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """Linear bounds of y = softmax(x) along `axis` for x in [lower, upper] (B, *S), sound with
    rounding, in the layout with that axis moved last: (slope (B, ..., n, n), b_l, b_u (B, ..., n))
    with slope[..., i, :] . x + b_l[..., i] <= y_i(x) <= slope[..., i, :] . x + b_u[..., i].

    Mean-value form around the box's midpoint m: y_i(x) = y_i(m) + grad y_i(xi) . (x - m) for some
    xi in the box, and grad y_i = y_i (e_i - y) lies in the interval G_i that softmax_interval's
    bounds of y give (-y_i y_j off the diagonal, y_i (1 - y_i) on it). With a = the midpoint of
    G_i: |y_i(x) - y_i(m) - a . (x - m)| <= E_i = sum_j max(G^up_ij - a_j, a_j - G^lo_ij) r_j,
    r the box's half-widths. E shrinks as r^2, the interval's width as r: an output keeps the
    line where 2 E_i is below its interval's width, else (and on unbounded boxes) the constant
    interval bounds (slope 0)."""
    y_lo, y_up = (t.movedim(axis + 1, -1) for t in softmax_interval(axis, lower, upper))
    lo, up = lower.movedim(axis + 1, -1), upper.movedim(axis + 1, -1)
    n = lo.shape[-1]
    mid = (lo + up) / 2
    radius = torch.maximum(up - mid, mid - lo)
    y_mid = torch.softmax(mid, dim=-1)
    g_lo = -y_up[..., :, None] * y_up[..., None, :]
    g_up = -y_lo[..., :, None] * y_lo[..., None, :]
    ends = torch.stack([y_lo * (1 - y_lo), y_up * (1 - y_up)])
    diag_lo = ends.min(0).values
    diag_up = torch.where((y_lo <= 0.5) & (y_up >= 0.5), torch.full_like(y_lo, 0.25),
                          ends.max(0).values)
    eye = torch.eye(n, dtype=torch.bool, device=lo.device)
    g_lo = torch.where(eye, diag_lo[..., None], g_lo)
    g_up = torch.where(eye, diag_up[..., None], g_up)
    g_lo, g_up = g_lo - function_error(g_lo), g_up + function_error(g_up)
    slope = (g_lo + g_up) / 2
    spread = (torch.maximum(g_up - slope, slope - g_lo) * radius[..., None, :]).sum(-1)
    spread = spread + function_error(spread) * (n + 4)
    at_mid = slope * mid[..., None, :]
    offset = y_mid - at_mid.sum(-1)
    spread = spread + function_error(y_mid) * n + function_error(at_mid.abs().sum(-1)) * (n + 4)
    b_l, b_u = offset - spread, offset + spread
    line = torch.isfinite(b_l) & torch.isfinite(b_u) & torch.isfinite(slope).all(-1) \
        & (2 * spread < y_up - y_lo)
    slope = torch.where(line[..., None], slope, torch.zeros_like(slope))
    return slope, torch.where(line, b_l, y_lo), torch.where(line, b_u, y_up)


def relax(op: str, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(a_l, b_l, a_u, b_u): a_l x + b_l <= f(x) <= a_u x + b_u for x in [lower, upper], sound with
    rounding. Convex f: chord above, tangent at the midpoint below. S-shaped f: the same on a side
    of 0; across 0 the lines of slope k = min(f'(l), f'(u)) through (l, f(l)) (below) and
    (u, f(u)) (above), valid as f' >= k on [l, u]. Degenerate or infinite boxes: constants."""
    f, df, shape = ELEMENTWISE[op]
    assert shape != "relu", "Relu: use bounds.crown.relu_relaxation"
    fl, fu = f(lower), f(upper)
    width = upper - lower
    mid = (lower + upper) / 2
    fm, dm = f(mid), df(mid)
    chord = (fu - fl) / width.clamp(min=1e-300)
    chord_b = fl - chord * lower
    tangent_b = fm - dm * mid
    if shape == "convex":
        a_l, b_l, a_u, b_u = dm, tangent_b, chord, chord_b
    else:
        k = torch.minimum(df(lower), df(upper))
        convex, concave = upper <= 0, lower >= 0
        a_l = torch.where(convex, dm, torch.where(concave, chord, k))
        b_l = torch.where(convex, tangent_b, torch.where(concave, chord_b, fl - k * lower))
        a_u = torch.where(convex, chord, torch.where(concave, dm, k))
        b_u = torch.where(convex, chord_b, torch.where(concave, tangent_b, fu - k * upper))
    span = lower.abs() + upper.abs() + mid.abs()
    b_l = b_l - function_error(fl, fu, fm, b_l, a_l * span)
    b_u = b_u + function_error(fl, fu, fm, b_u, a_u * span)
    # Narrow, unbounded or non-finite cases: the constant bounds [f(l), f(u)] (f increasing).
    flat = (width <= 1e-9 * (1 + span)) | ~torch.isfinite(a_l * span + b_l + a_u * span + b_u)
    if bool(flat.any()):
        lo_c, up_c = elementwise_interval(op, lower, upper)
        zero = torch.zeros_like(lower)
        a_l, a_u = torch.where(flat, zero, a_l), torch.where(flat, zero, a_u)
        b_l, b_u = torch.where(flat, lo_c, b_l), torch.where(flat, up_c, b_u)
    return a_l, b_l, a_u, b_u


def to_torch(params: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Float arrays -> tensors of `dtype`, integer arrays -> int64 tensors, on `device`; the rest
    (ints, lists of ints) unchanged; Concat's constant parts get a leading sample axis."""
    def convert(value):
        if isinstance(value, np.ndarray):
            kind = dtype if value.dtype.kind == "f" else torch.int64
            return torch.as_tensor(np.ascontiguousarray(value), dtype=kind, device=device)
        return value
    out = {key: convert(value) for key, value in params.items()}
    if "parts" in params:
        out["parts"] = [part if isinstance(part, int) else convert(part)[None]
                        for part in params["parts"]]
    if "indices" in params:
        out["indices"] = [convert(np.asarray(i, dtype=np.int64)) for i in params["indices"]]
    return out


def max_pool_windows(node: Node, x: Tensor, p: dict, fill: float) -> Tensor:
    """The K = prod(kernel) candidates of a MaxPool of any spatial rank: (B, *in) -> (B, K, *out),
    padding = `fill` (-inf for values, 0 for the linear selection map, whose transpose is its
    vjp). Candidate k is the window cell at offset k (row-major over the kernel's axes)."""
    x, b = _spatial(x, node)
    x = F.pad(x, _pad_pairs(p["pads"]), value=fill)
    kernel, strides, dilations = p["kernel"], p["strides"], p["dilations"]
    outs = [(x.shape[2 + a] - dilations[a] * (k - 1) - 1) // strides[a] + 1
            for a, k in enumerate(kernel)]
    cells = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        index = [slice(None), slice(None)]
        for a, o in enumerate(offset):
            first = o * dilations[a]
            index.append(slice(first, first + strides[a] * (outs[a] - 1) + 1, strides[a]))
        cells.append(x[tuple(index)])
    stacked = torch.stack(cells, 1)  # (B N, K, C, *out)
    return stacked.reshape(b, -1, *stacked.shape[1:]).transpose(1, 2)  # (B, K, N, C, *out)
