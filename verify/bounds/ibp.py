"""IBP: interval bound propagation.

Accepts:   Network of Dense/Conv2d/ReLU layers; input set = l_inf/l_2/l_1 ball ∩ box, or a box.
Returns:   Certificate; margin_lower[j] <= min over the set of z_y - z_j (YES or MAYBE; NO only
           when the set's center is itself a counterexample).
Method:    intervals in center/radius form through each affine layer, y = W m + b ± |W| r, and
           ReLU applied to both ends. The first affine layer of an l_2/l_1 ball also uses the exact
           ball bound W x0 + b ± eps ||W_i||_q (q the dual norm) and keeps the tighter end. The
           margin matrix C is folded into the last Dense layer (bounds of C W h + C b - d), which
           is tighter than subtracting logit intervals. Every bound is widened by a float64
           rounding allowance (`rounding_slack`), so YES holds for the real-arithmetic network.
Soundness: sound, incomplete.
Reference: Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training
           Verifiably Robust Models", 2018; Mirman et al., ICML 2018 (box domain).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch

from ..certificate import Certificate
from ..network import AFFINE, Dense, Network, ReLU
from ..spec import Specification
from . import (UNDERFLOW, InputBatch, certify_with_bounds, norm_underflow,
               outward_margin, rounding_slack)

Bounds = tuple[torch.Tensor, torch.Tensor]  # (lower, upper), each (B, size) flat


@dataclass
class IBPOptions:
    LIMITS: ClassVar[dict[str, str]] = {"batch_size": ">= 1"}  # checked by make_options
    device: str = "auto"
    batch_size: int = 256


def fan_in(layer) -> int:
    """Number of products summed per output of an affine layer."""
    return layer.weight.shape[1] if isinstance(layer, Dense) else int(np.prod(layer.weight.shape[1:]))


def abs_params_of(layer, params: dict) -> dict:
    if "abs_weight" not in params:
        params["abs_weight"] = params["weight"].abs()
        params["abs_bias"] = params["bias"].abs()
    return {"weight": params["abs_weight"], "bias": torch.zeros_like(params["bias"])}


def affine_interval(layer, params: dict, lower: torch.Tensor, upper: torch.Tensor) -> Bounds:
    """Sound bounds of W x + b for x in [lower, upper] (flat, batched)."""
    mid, rad = (upper + lower) / 2, (upper - lower) / 2 + UNDERFLOW  # (the halving may underflow)
    abs_params = abs_params_of(layer, params)
    y_mid = layer.torch_forward(mid, params).flatten(1)
    y_rad = layer.torch_forward(rad, abs_params).flatten(1)
    magnitude = layer.torch_forward(mid.abs() + rad, abs_params).flatten(1) + layer.bias_per_output(params["abs_bias"])
    slack = rounding_slack(magnitude, fan_in(layer))
    return y_mid - y_rad - slack, y_mid + y_rad + slack


def dual_norm(norm: str) -> float:
    return {"2": 2.0, "1": float("inf")}[norm]


def row_dual_norms(layer, params: dict, norm: str) -> torch.Tensor:
    """||W_i||_q for every output i of an affine layer (q the dual of the ball's norm)."""
    key = f"row_norm_{norm}"
    if key not in params:
        matrix = torch.as_tensor(layer.dense_matrix(), dtype=params["weight"].dtype,
                                 device=params["weight"].device)
        params[key] = torch.linalg.vector_norm(matrix, ord=dual_norm(norm), dim=1)
    return params[key]


def ball_affine_bounds(layer, params: dict, batch: InputBatch) -> Bounds:
    """Exact bounds of W x + b over the l_p ball (box ignored): W x0 + b ± eps ||W_i||_q."""
    abs_params = abs_params_of(layer, params)
    y0 = layer.torch_forward(batch.center, params).flatten(1)
    spread = batch.eps[:, None] * (row_dual_norms(layer, params, batch.norm)[None, :]
                                   + norm_underflow(batch.norm, batch.center.shape[1]))
    magnitude = (layer.torch_forward(batch.center.abs(), abs_params).flatten(1) + spread
                 + layer.bias_per_output(params["abs_bias"]))
    slack = rounding_slack(magnitude, fan_in(layer))
    return y0 - spread - slack, y0 + spread + slack


def layer_interval(layer, params: dict, lower: torch.Tensor, upper: torch.Tensor) -> Bounds:
    """Sound bounds of one layer's output for inputs in [lower, upper]: `affine_interval` for an
    affine layer, [max(l, 0), max(u, 0)] for a ReLU (monotone, exact in floating point)."""
    if isinstance(layer, AFFINE):
        return affine_interval(layer, params, lower, upper)
    if isinstance(layer, ReLU):
        return lower.clamp(min=0), upper.clamp(min=0)
    raise TypeError(f"IBP cannot handle {type(layer).__name__}")  # pragma: no cover


def layer_bounds(net: Network, batch: InputBatch, device: Optional[torch.device] = None
                 ) -> list[Bounds]:
    """Interval bounds on the output of every layer (pre-activation after affine layers)."""
    params = net.torch_params(batch.lower.device)
    lower, upper = batch.lower, batch.upper
    out: list[Bounds] = []
    first_affine = True
    for layer, p in zip(net.layers, params):
        lower, upper = layer_interval(layer, p, lower, upper)
        if first_affine and isinstance(layer, AFFINE) and batch.norm in ("2", "1"):
            ball_lower, ball_upper = ball_affine_bounds(layer, p, batch)
            lower, upper = torch.maximum(lower, ball_lower), torch.minimum(upper, ball_upper)
        first_affine = False  # the ball bound holds only for an affine layer reading x itself
        out.append((lower, upper))
    return out


def margin_bounds(net: Network, batch: InputBatch, bounds: list[Bounds]) -> Bounds:
    """Bounds of C f(x) - d, with C folded into the last layer when it is Dense."""
    last = net.layers[-1]
    if not isinstance(last, Dense):
        lower, upper = bounds[-1]
        c_pos, c_neg = batch.C.clamp(min=0), batch.C.clamp(max=0)
        lo = torch.einsum("bmk,bk->bm", c_pos, lower) + torch.einsum("bmk,bk->bm", c_neg, upper)
        up = torch.einsum("bmk,bk->bm", c_pos, upper) + torch.einsum("bmk,bk->bm", c_neg, lower)
        magnitude = torch.einsum("bmk,bk->bm", batch.C.abs(), torch.maximum(lower.abs(), upper.abs()))
        slack = rounding_slack(magnitude + batch.d.abs(), batch.C.shape[2])
        return (outward_margin(batch.C, batch.d, lo - batch.d, slack),
                outward_margin(batch.C, batch.d, up - batch.d, slack, down=False))
    p = net.torch_params(batch.lower.device)[-1]
    weight = torch.einsum("bmk,kn->bmn", batch.C, p["weight"])  # (B, m, n)
    bias = torch.einsum("bmk,k->bm", batch.C, p["bias"]) - batch.d
    h_lower, h_upper = bounds[-2] if len(bounds) > 1 else (batch.lower, batch.upper)
    mid, rad = (h_upper + h_lower) / 2, (h_upper - h_lower) / 2 + UNDERFLOW
    y_mid = torch.einsum("bmn,bn->bm", weight, mid) + bias
    y_rad = torch.einsum("bmn,bn->bm", weight.abs(), rad)
    # C W and C b are themselves rounded: one more term per product in the allowance.
    magnitude = (torch.einsum("bmn,bn->bm", batch.C.abs() @ p["weight"].abs(), mid.abs() + rad)
                 + batch.C.abs() @ p["bias"].abs() + batch.d.abs())
    slack = rounding_slack(magnitude, last.weight.shape[1] + batch.C.shape[2],
                           (mid.abs() + rad).sum(-1, keepdim=True))  # C W's entries, times h
    lower, upper = y_mid - y_rad - slack, y_mid + y_rad + slack
    if len(bounds) == 1 and batch.norm in ("2", "1"):  # one affine layer: exact ball bound
        q = dual_norm(batch.norm)
        n = weight.shape[2]
        spread = batch.eps[:, None] * (torch.linalg.vector_norm(weight, ord=q, dim=2)
                                       + norm_underflow(batch.norm, n))
        y0 = torch.einsum("bmn,bn->bm", weight, batch.center) + bias
        # C W's entries are rounded products: their underflow times |x - x0|, summed (<= n eps)
        ball_slack = rounding_slack(spread, n, n * batch.eps[:, None])
        lower = torch.maximum(lower, y0 - spread - slack - ball_slack)
        upper = torch.minimum(upper, y0 + spread + slack + ball_slack)
    return lower, upper


def margin_lower_bounds(net: Network, batch: InputBatch) -> tuple[torch.Tensor, dict]:
    bounds = layer_bounds(net, batch)
    return margin_bounds(net, batch, bounds)[0], {"bound_passes": 1}


def certify(net: Network, specs: Sequence[Specification], options: IBPOptions) -> list[Certificate]:
    """IBP certificates for a list of specifications, batched on `options.device`."""
    return certify_with_bounds(net, specs, "ibp", margin_lower_bounds, options.device,
                               options.batch_size)
