"""Products and quotients of variable tensors: ONNX Mul of two variable tensors and Div by a
variable tensor (numpy broadcasting), the graph IR's two bilinear ops.

- `Product`: y = a b (inputs [a, b]; a square when both are the same tensor);
- `Quotient`: y = a / b (inputs [a, b]), or c / b with a constant numerator c (inputs [b],
  params["numerator"]).

Intervals (`interval`): the product of intervals is the min / max of the four endpoint products
(a square: [0, max(l^2, u^2)] across 0); the quotient is a [1/u_b, 1/l_b] when 0 is outside
[l_b, u_b], else unbounded. Each widened for the float64 rounding of the computation
(ops.function_error). Linear bounds (`product_relaxation`): McCormick's planes,

    a b >= l_b a + l_a b - l_a l_b,    a b <= u_b a + l_a b - l_a u_b,

valid on the box [l_a, u_a] x [l_b, u_b] (the product (a - l_a)(b - l_b) >= 0 and (a - l_a)(u_b -
b) >= 0); CROWN reads these ops as `ops.BOUNDED` (constant bounds from the interval) until its
backward pass takes two-input relaxations.
"""

from __future__ import annotations

import math

import torch

from .ir import Node

Tensor = torch.Tensor


def _operands(node: Node, xs: list[Tensor], p: dict) -> tuple[Tensor, Tensor]:
    """(numerator, denominator) or (factor, factor), lifted to a common rank."""
    from .ops import lift

    rank = p["rank"]
    if node.op == "Quotient" and "numerator" in p:
        b = lift(xs[0], rank)
        return p["numerator"].to(b.dtype), b
    return lift(xs[0], rank), lift(xs[1], rank)


def f_product(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    a, b = _operands(node, xs, p)
    return a * b


def f_quotient(node: Node, xs: list[Tensor], p: dict) -> Tensor:
    a, b = _operands(node, xs, p)
    return a / b


FORWARDS = {"Product": f_product, "Quotient": f_quotient}


def is_square(node: Node) -> bool:
    return node.op == "Product" and len(node.inputs) == 2 and node.inputs[0] == node.inputs[1]


def endpoint_hull(a_lo: Tensor, a_up: Tensor, b_lo: Tensor, b_up: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """[min, max] of a b over the box (the four corners), NaN-free for infinite endpoints: a NaN
    end is first widened to -inf / +inf, so a NaN corner can only be 0 * inf, which is 0."""
    inf = torch.tensor(math.inf, dtype=a_lo.dtype, device=a_lo.device)
    a_lo, b_lo = (t.where(~t.isnan(), -inf) for t in (a_lo, b_lo))
    a_up, b_up = (t.where(~t.isnan(), inf) for t in (a_up, b_up))
    corners = torch.stack(torch.broadcast_tensors(a_lo * b_lo, a_lo * b_up, a_up * b_lo,
                                                  a_up * b_up))
    corners = torch.where(corners.isnan(), torch.zeros_like(corners), corners)  # 0 * inf: 0
    return corners.min(0).values, corners.max(0).values


def interval(node: Node, ins: list[tuple[Tensor, Tensor]], p: dict) -> tuple[Tensor, Tensor]:
    """Sound bounds of the output from the inputs' intervals (float64 rounding included)."""
    from .ops import function_error, lift

    rank = p["rank"]
    if is_square(node):
        lo, up = (lift(t, rank) for t in ins[0])
        big = torch.maximum(lo * lo, up * up)
        small = torch.where(lo > 0, lo * lo, torch.where(up < 0, up * up, torch.zeros_like(lo)))
        return (small - function_error(small)).clamp(min=0), big + function_error(big)
    if node.op == "Product":
        (a_lo, a_up), (b_lo, b_up) = [(lift(lo, rank), lift(up, rank)) for lo, up in ins]
    else:
        if "numerator" in p:
            b_lo, b_up = (lift(t, rank) for t in ins[0])
            a_lo = a_up = p["numerator"].to(b_lo.dtype)
        else:
            (a_lo, a_up), (b_lo, b_up) = [(lift(lo, rank), lift(up, rank)) for lo, up in ins]
        away = (b_lo > 0) | (b_up < 0)
        inv_lo = torch.where(away, 1 / b_up, torch.full_like(b_lo, -torch.inf))
        inv_up = torch.where(away, 1 / b_lo, torch.full_like(b_up, torch.inf))
        inv_lo, inv_up = inv_lo - function_error(inv_lo), inv_up + function_error(inv_up)
        b_lo, b_up = inv_lo, inv_up
    lo, up = endpoint_hull(a_lo, a_up, b_lo, b_up)
    return lo - function_error(lo), up + function_error(up)


def product_relaxation(a_lo: Tensor, a_up: Tensor, b_lo: Tensor, b_up: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """McCormick: (la, lb, lc, ua, ub, uc) with la a + lb b + lc <= a b <= ua a + ub b + uc on
    the box (exact planes; a caller evaluating them in floats adds its rounding allowance)."""
    return b_lo, a_lo, -a_lo * b_lo, b_up, a_lo, -a_lo * b_up
