"""Piecewise-constant and power ops on variable tensors: comparisons, Where with a variable
condition, casts of floats to integers, and powers with a constant exponent (numpy
broadcasting, inputs lifted to the node's `rank`).

- `Compare` (ONNX Equal, Greater, Less, GreaterOrEqual, LessOrEqual; a Cast to bool is
  x != 0): y = 1[a R b] in {0, 1}, inputs [a, b] or [a] with the constant b in
  params["other"] (params["swap"]: the constant is the left operand). Interval: 1 where the
  intervals prove the relation (a > b: l_a > u_b; a == b: both the same single point), 0 where
  they refute it, else [0, 1].
- `Where`: y = c ? t : f, c (input 0) a variable {0, 1} tensor read as c != 0, t and f
  variable (an input index in params["branches"]) or constant (an array there). Interval:
  t's where c's interval excludes 0, f's where it is [0, 0], else the hull of both.
- `Trunc` (Cast of a float to an integer type): y = trunc(x), rounding toward zero; monotone,
  so y in [trunc(l), trunc(u)]; unbounded where that leaves [low, high), the integer type's
  range (params["range"]), where the cast is undefined.
- `Power`: y = x^p, p a constant array. Integer p >= 0: x^p is monotone on either side of 0
  (even p: [0, max(l^p, u^p)] across 0; odd: [l^p, u^p]); integer p < 0: monotone on either
  side, unbounded across 0; other p: defined for x >= 0 only, monotone there (increasing for
  p > 0, decreasing for p < 0); where x may be negative the interval is unbounded (the float
  result is NaN there). The loader rewrites the scalar exponents 0, 1, 2 and 3 into a constant,
  an alias and graph.bilinear's products, and c^x (constant c > 0) into exp(x ln c). Of two
  variables (inputs [x, y], no exponent): x^y = exp(y ln x), bounded where x >= 0 on the box
  (the corners of y ln x), unbounded where x may be negative.

All of them are `ops.BOUNDED`: CROWN reads their interval as constant bounds, the LP / MILP
encodes their interval only (a relaxation, graph.encoding's default). Intervals are widened
for the float64 rounding of pow (ops.function_error); comparisons, trunc and selection are
exact. `float_error` bounds |y_fl - y| for a float evaluation (float_rounding's recurrence):
0 where the inputs' widened intervals [l - E, u + E] decide a comparison / condition (and
E_t / E_f selected), else the width of the output's hull; trunc: 0 where [l - E, u + E] lies
in one integer cell, else the width of trunc over it.
"""

from __future__ import annotations

import math

import torch

from .ir import Node

Tensor = torch.Tensor
RELATIONS = ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "NotEqual")


def _lifted(xs: list[Tensor], p: dict) -> list[Tensor]:
    from .ops import lift

    return [lift(x, p["rank"]) for x in xs]


def _compare_operands(node: Node, xs: list, p: dict) -> tuple:
    """(a, b) lifted; the constant operand in its place."""
    if len(node.inputs) == 2:
        a, b = _lifted(xs, p)
        return a, b
    (x,) = _lifted(xs[:1], p)
    c = p["other"].to(x.dtype) if isinstance(p["other"], Tensor) else p["other"]
    return (c, x) if p.get("swap") else (x, c)


def _relation(relation: str, a, b):
    return {"Equal": torch.eq, "NotEqual": torch.ne, "Greater": torch.gt, "Less": torch.lt,
            "GreaterOrEqual": torch.ge, "LessOrEqual": torch.le}[relation](a, b)


def _zero_gradient(y: Tensor, xs: list[Tensor], p: dict) -> Tensor:
    """y tied to the inputs with gradient 0 when they require one (so the attacks' gradient
    passes through a piecewise-constant op); y itself unchanged."""
    if not any(x.requires_grad for x in xs):
        return y
    from .ops import lift

    return y + sum((lift(x, p["rank"]) * 0).nan_to_num(0.0) for x in xs)


def f_compare(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    a, b = _compare_operands(node, xs, p)
    return _zero_gradient(_relation(p["relation"], a, b).to(xs[0].dtype), xs, p)


def _branches(node: Node, xs: list, p: dict) -> tuple:
    rank = p["rank"]
    from .ops import lift

    out = []
    for part in p["branches"]:
        if isinstance(part, int):
            out.append(lift(xs[part], rank))
        else:
            out.append(torch.as_tensor(part, dtype=xs[0].dtype, device=xs[0].device))
    return tuple(out)


def f_where(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    from .ops import lift

    cond = lift(xs[0], p["rank"]) != 0
    t, f = _branches(node, xs, p)
    return _zero_gradient(torch.where(cond, t, f), xs, p)


def f_trunc(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    return torch.trunc(xs[0])


def f_power(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    if len(node.inputs) == 2:  # x^y of two variables
        x, y = _lifted(xs, p)
        return torch.pow(x, y)
    (x,) = _lifted(xs, p)
    return torch.pow(x, p["exponent"].to(x.dtype))


FORWARDS = {"Compare": f_compare, "Where": f_where, "Trunc": f_trunc, "Power": f_power}


# -- intervals ---------------------------------------------------------------------------------
def _decided(relation: str, a: tuple, b: tuple) -> tuple[Tensor, Tensor]:
    """(surely true, surely false) of a R b for a in [a0, a1], b in [b0, b1]."""
    (a0, a1), (b0, b1) = a, b
    if relation in ("Less", "LessOrEqual"):
        relation = {"Less": "Greater", "LessOrEqual": "GreaterOrEqual"}[relation]
        (a0, a1), (b0, b1) = (b0, b1), (a0, a1)
    if relation == "Greater":
        return a0 > b1, a1 <= b0
    if relation == "GreaterOrEqual":
        return a0 >= b1, a1 < b0
    point = (a0 == a1) & (b0 == b1) & (a0 == b0)
    apart = (a1 < b0) | (a0 > b1)
    return (point, apart) if relation == "Equal" else (apart, point)


def _compare_intervals(node: Node, ins: list, p: dict) -> tuple[tuple, tuple]:
    from .ops import lift

    if len(node.inputs) == 2:
        a, b = [(lift(lo, p["rank"]), lift(up, p["rank"])) for lo, up in ins]
        return a, b
    lo, up = (lift(t, p["rank"]) for t in ins[0])
    c = p["other"].to(lo.dtype)
    return ((c, c), (lo, up)) if p.get("swap") else ((lo, up), (c, c))


def _indicator(true: Tensor, false: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    true, false = torch.broadcast_tensors(true, false)
    shape = torch.broadcast_shapes(true.shape, like.shape[:1] + true.shape[1:])
    one = torch.ones(shape, dtype=like.dtype, device=like.device)
    return torch.where(true, one, 0 * one), torch.where(false, 0 * one, one)


def _cond_decided(lo: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """(surely c != 0, surely c == 0)."""
    return (lo > 0) | (up < 0), (lo == 0) & (up == 0)


def _branch_intervals(node: Node, ins: list, p: dict) -> list[tuple[Tensor, Tensor]]:
    from .ops import lift

    out = []
    for part in p["branches"]:
        if isinstance(part, int):
            out.append(tuple(lift(t, p["rank"]) for t in ins[part]))
        else:
            c = torch.as_tensor(part, dtype=ins[0][0].dtype, device=ins[0][0].device)
            out.append((c, c))
    return out


def _select(node: Node, ins: list, p: dict, true: Tensor, false: Tensor,
            t: tuple, f: tuple) -> tuple[Tensor, Tensor]:
    lo = torch.where(true, t[0], torch.where(false, f[0], torch.minimum(t[0], f[0])))
    up = torch.where(true, t[1], torch.where(false, f[1], torch.maximum(t[1], f[1])))
    shape = torch.broadcast_shapes(lo.shape, ins[0][0].shape[:1] + lo.shape[1:])
    return lo.expand(shape), up.expand(shape)


def power_interval(lo: Tensor, up: Tensor, exponent: Tensor) -> tuple[Tensor, Tensor]:
    """[min, max] of x^p over [lo, up] (exact real endpoints; see the module docstring)."""
    lo, up, e = torch.broadcast_tensors(lo, up, exponent.to(lo.dtype))
    integral = e == torch.round(e)
    odd = integral & (torch.remainder(e, 2) == 1)
    with torch.no_grad():
        pl, pu = torch.pow(lo, e), torch.pow(up, e)
    inf = torch.full_like(lo, math.inf)
    across = (lo <= 0) & (up >= 0)
    ends_lo, ends_up = torch.minimum(pl, pu), torch.maximum(pl, pu)
    # integer p >= 0: odd monotone; even: 0 across 0
    even_nonneg = integral & ~odd & (e >= 0)
    y_lo = torch.where(even_nonneg & across, torch.where(e == 0, torch.ones_like(lo), 0 * lo),
                       ends_lo)
    y_up = ends_up
    # integer p < 0: unbounded across 0 (at 0 itself: +-inf)
    neg_int = integral & (e < 0)
    y_lo = torch.where(neg_int & across, torch.where(odd, -inf, 0 * lo), y_lo)
    y_up = torch.where(neg_int & across, inf, y_up)
    # other p: x >= 0 only
    frac = ~integral
    y_lo = torch.where(frac & (lo < 0), -inf, y_lo)
    y_up = torch.where(frac & (lo < 0), inf, y_up)
    y_lo = torch.where(y_lo.isnan(), -inf, y_lo)
    y_up = torch.where(y_up.isnan(), inf, y_up)
    return y_lo, y_up


def variable_power_interval(x_lo: Tensor, x_up: Tensor, y_lo: Tensor, y_up: Tensor
                            ) -> tuple[Tensor, Tensor]:
    """[min, max] of x^y = exp(y ln x) over the box (exact real endpoints): y ln x is bilinear
    in (y, ln x), so its extremes are at the four corners (ln 0 = -inf; 0 * inf read as 0:
    0^0 = inf^0 = 1), and exp is increasing. Unbounded where x may be negative (x^y is then
    NaN or, for integer y, of either sign)."""
    from .bilinear import endpoint_hull

    with torch.no_grad():
        low, high = endpoint_hull(y_lo, y_up, torch.log(x_lo.clamp(min=0)),
                                   torch.log(x_up.clamp(min=0)))
    # the float64 log and product: relative 2^-51 at most, padded to 2^-48 (exp's own error:
    # the caller's ops.function_error)
    low, high = low - low.abs() * 2.0 ** -48, high + high.abs() * 2.0 ** -48
    y_min, y_max = torch.exp(low), torch.exp(high)
    positive = x_lo >= 0
    return (torch.where(positive, y_min, torch.full_like(y_min, -math.inf)),
            torch.where(positive, y_max, torch.full_like(y_max, math.inf)))


def interval(node: Node, ins: list[tuple[Tensor, Tensor]], p: dict) -> tuple[Tensor, Tensor]:
    """Sound bounds of the output from the inputs' intervals (float64 rounding included)."""
    from .ops import function_error, lift

    if node.op == "Compare":
        a, b = _compare_intervals(node, ins, p)
        true, false = _decided(p["relation"], a, b)
        return _indicator(true, false, ins[0][0])
    if node.op == "Where":
        lo, up = (lift(t, p["rank"]) for t in ins[0])
        true, false = _cond_decided(lo, up)
        t, f = _branch_intervals(node, ins, p)
        return _select(node, ins, p, true, false, t, f)
    if node.op == "Trunc":  # beyond the integer type's range the cast is undefined: unbounded
        lo, up = torch.trunc(ins[0][0]), torch.trunc(ins[0][1])
        inside = (lo >= p["range"][0]) & (up < p["range"][1])
        return torch.where(inside, lo, -math.inf), torch.where(inside, up, math.inf)
    if len(node.inputs) == 2:
        (x_lo, x_up), (e_lo, e_up) = [tuple(lift(t, p["rank"]) for t in b) for b in ins]
        y_lo, y_up = variable_power_interval(x_lo, x_up, e_lo, e_up)
        y_lo = torch.where(x_lo >= 0, (y_lo - function_error(y_lo)).clamp(min=0), y_lo)
        return y_lo, y_up + function_error(y_up)
    lo, up = (lift(t, p["rank"]) for t in ins[0])
    y_lo, y_up = power_interval(lo, up, p["exponent"])
    return y_lo - function_error(y_lo), y_up + function_error(y_up)


# -- float evaluation error (float_rounding's recurrence) ---------------------------------------
def float_error(node: Node, p: dict, errors: list[Tensor], bounds: list[tuple[Tensor, Tensor]],
                u: float, tiny: float, function_ulps: float) -> Tensor:
    """E_y >= |y_fl - y| for every x in the box: the float evaluation sees each input within
    E of its real value, so it lies in [l - E, u + E]; the op's own float result is exact
    (comparison, selection, trunc) or within `function_ulps` u max(|y|, 1) of x^p (pow, as
    float_rounding assumes of the runtime's library functions) plus max|p x^(p-1)| E_x on the
    widened interval (mean value theorem)."""
    from .ops import lift

    widened = [(lo - e, up + e) for (lo, up), e in zip(bounds, errors)]
    y_lo, y_up = interval(node, bounds, p)
    width = (y_up - y_lo)
    if node.op == "Compare":
        w_lo, w_up = interval(node, widened, p)
        return (w_up - w_lo).clamp(min=0)  # 0 where decided even with the errors, else 1
    if node.op == "Where":
        c_lo, c_up = (lift(t, p["rank"]) for t in widened[0])
        true, false = _cond_decided(c_lo, c_up)
        t, f = _branch_intervals(node, widened, p)
        e_parts = [lift(errors[part], p["rank"]) if isinstance(part, int) else 0 * y_lo
                   for part in p["branches"]]
        w_lo, w_up = _select(node, widened, p, true, false, t, f)
        spread = torch.maximum(w_up - y_lo, y_up - w_lo)  # undecided: anything in the hulls
        return torch.where(true, e_parts[0] + 0 * y_lo,
                           torch.where(false, e_parts[1] + 0 * y_lo, spread))
    if node.op == "Trunc":
        w_lo, w_up = interval(node, widened, p)
        cell = w_lo == w_up  # + u |y|: the integer read back as a float rounds above 2^24
        magnitude = torch.maximum(w_lo.abs(), w_up.abs())
        return torch.where(cell, torch.zeros_like(width), w_up - w_lo) + u * magnitude
    if len(node.inputs) == 2:
        return _variable_power_error(widened, errors, y_lo, y_up, p, u, tiny, function_ulps)
    w_lo, w_up = (lift(t, p["rank"]) for t in widened[0])
    exponent = p["exponent"].to(w_lo.dtype)
    s_lo, s_up = power_interval(w_lo, w_up, exponent - 1)  # x^(p-1): f' = p x^(p-1)
    slope = exponent.abs() * torch.maximum(s_lo.abs(), s_up.abs())
    slope = torch.where(exponent == 0, torch.zeros_like(slope), slope)
    magnitude = torch.maximum(y_lo.abs(), y_up.abs())
    return slope * lift(errors[0], p["rank"]) + function_ulps * u * torch.maximum(
        magnitude, torch.ones_like(magnitude)) + tiny


def _variable_power_error(widened: list, errors: list[Tensor], y_lo: Tensor, y_up: Tensor,
                          p: dict, u: float, tiny: float, function_ulps: float) -> Tensor:
    """x^y of two variables, both within E of their real values (the widened box): mean
    value theorem, |d(x^y)| <= max|y x^(y-1)| E_x + max|x^y ln x| E_y over the widened box, plus
    pow's own rounding function_ulps u max(|x^y|, 1). Infinite where the widened base may reach
    0 or below."""
    from .ops import lift

    (x_lo, x_up), (e_lo, e_up) = [tuple(lift(t, p["rank"]) for t in b) for b in widened]
    e_x, e_y = (lift(e, p["rank"]) for e in errors)
    d_lo, d_up = variable_power_interval(x_lo, x_up, e_lo - 1, e_up - 1)  # x^(y-1)
    w_lo, w_up = variable_power_interval(x_lo, x_up, e_lo, e_up)
    ln_mag = torch.maximum(torch.log(x_lo.clamp(min=0)).abs(), torch.log(x_up.clamp(min=0)).abs())
    slope_x = torch.maximum(e_lo.abs(), e_up.abs()) * torch.maximum(d_lo.abs(), d_up.abs())
    slope_y = torch.maximum(w_lo.abs(), w_up.abs()) * ln_mag
    slope_x = torch.where(e_x == 0, torch.zeros_like(slope_x), slope_x * e_x)
    slope_y = torch.where(e_y == 0, torch.zeros_like(slope_y), slope_y * e_y)
    magnitude = torch.maximum(y_lo.abs(), y_up.abs())
    error = slope_x + slope_y + function_ulps * u * torch.maximum(
        magnitude, torch.ones_like(magnitude)) + tiny
    return torch.where(x_lo > 0, error, torch.full_like(error, math.inf))
