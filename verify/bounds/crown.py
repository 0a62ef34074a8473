"""CROWN: linear bound propagation for ReLU networks.

Accepts:   Network of Dense/Conv2d/ReLU layers; input set = l_inf/l_2/l_1 ball ∩ box, or a box.
Returns:   Certificate; margin_lower[j] <= min over the set of z_y - z_j (YES or MAYBE; NO only
           when the set's center is itself a counterexample).
Method:    backward propagation of linear bounds from the margin matrix C (rows e_y - e_j) down to
           the input, never through logit bounds. Each ReLU is relaxed by its upper chord
           u (z - l) / (u - l) and an adaptive lower line (slope 1 if u > -l else 0); the input is
           eliminated with the dual norm: over the box for l_inf and boxes, over the ball and over
           the box (keeping the larger bound) for l_2/l_1. Pre-activation bounds come from the same
           backward pass, layer by layer, for the neurons auto_LiRPA bounds (the batch's union
           of unstable ones, or all past 90% of a layer), less each input's inactive ones.
           Every bound is intersected with IBP's, so CROWN is never looser than IBP (up to the
           rounding of the margin step, which runs from the tightened bounds), and widened by
           a float64 rounding allowance, so YES holds for the real-arithmetic network.
Soundness: sound, incomplete.
Reference: Zhang et al., "Efficient Neural Network Robustness Certification with General
           Activation Functions", NeurIPS 2018 (CROWN); Wong & Kolter, ICML 2018 (dual norms).
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import weakref
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch

from ..options import check_choice, check_choices
from ..certificate import Certificate
from ..network import AFFINE, Conv2d, Dense, Network, ReLU
from ..spec import Specification
from . import (InputBatch, certify_with_bounds, float_constants, norm_underflow,
               rounding_slack)
from . import ibp
from .ibp import Bounds, dual_norm

Tensor = torch.Tensor
# alphas[k]: lower ReLU slopes of layer k, (B, rows, neurons) in [0, 1]; CROWN's where absent.
Alphas = dict[int, Tensor]
# Rows (neurons) whose bounds a backward pass computed per input: (index (B, R), valid (B, R)).
Selection = tuple[Tensor, Tensor]


@dataclass
class CROWNOptions:
    LIMITS: ClassVar[dict[str, str]] = {"batch_size": ">= 1"}  # checked by make_options
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"intermediate": ("crown", "ibp"),
                                                     "dtype": ("float64", "float32"),
                                                     "rows": ("auto", "unstable", "live", "all")}
    device: str = "auto"
    batch_size: int = 128
    # "crown": every unstable neuron bounded by its own backward pass (tight; cost grows with
    # neurons x depth); "ibp": CROWN-IBP, interval neuron bounds and one backward pass from the
    # margins (Zhang et al., ICLR 2020): a few forward passes' cost, looser.
    intermediate: str = "crown"
    # The neuron bounds' backward passes (nearly all of CROWN's work) in float32 with float32's
    # rounding allowances (sound, a little looser; pays on a GPU and on large layers); IBP and
    # the margin pass stay float64.
    dtype: str = "float64"
    # Which neurons get their own backward pass (`rows_to_bound`): "auto", auto_LiRPA's choice
    # (the batch's union of unstable neurons, or every one past 90% of a layer) less each
    # input's inactive ones; "unstable" (per input, cheapest), "live" (bounds of "all"), "all".
    rows: str = "auto"


@dataclass
class ReluRelaxation:
    """Linear bounds lower_slope * z <= relu(z) <= upper_slope * z + upper_intercept on [l, u]."""

    unstable: Tensor  # (B, n) bool: l < 0 < u
    lower_slope: Tensor  # (B, n): CROWN's adaptive slope on unstable neurons, 1/0 on stable ones
    upper_slope: Tensor
    upper_intercept: Tensor


def relu_relaxation(lower: Tensor, upper: Tensor) -> ReluRelaxation:
    """CROWN's relaxation of relu on [lower, upper] (B, n), sound in real arithmetic (the
    rounding allowances are those of the bounds' dtype)."""
    unit, tiny = float_constants(lower.dtype)
    # A NaN bound (inf - inf upstream) means "unknown": widen it to -inf / +inf.
    lower = torch.nan_to_num(lower, nan=float("-inf"))
    upper = torch.nan_to_num(upper, nan=float("inf"))
    unstable = (lower < 0) & (upper > 0)
    active = (lower >= 0).to(lower.dtype)
    neg_l = torch.where(unstable, -lower, 1.0)  # -l > 0; placeholder if stable
    u = torch.where(unstable, upper, 1.0)
    slope = u / (u + neg_l)
    # The chord s (z - l) with s = u / (u - l) is computed with rounding. ReLU is convex, so a line
    # lies above it on [l, u] iff it does at both ends: s l + t >= 0 and s u + t >= u. With s and
    # t = s (-l) each off by a relative 2u (u the unit roundoff) the shortfall at either end is at
    # most ~2u (s |l| + u); raising t by 8u (s |l| + u) keeps the line above ReLU in real numbers.
    # Underflow adds at most UNDERFLOW / 2 to s, hence (u - l) UNDERFLOW / 2 at the upper end, and
    # UNDERFLOW / 2 to each product: raising t by 4 UNDERFLOW (-l + u + 1) covers those too.
    chord_at_zero = slope * neg_l
    intercept = (chord_at_zero + 8 * unit * (chord_at_zero + u)
                 + 4 * tiny * (neg_l + u + 1))
    return ReluRelaxation(
        unstable=unstable,  # (on unstable neurons neg_l = -l: u > -l there)
        lower_slope=torch.where(unstable, (upper > neg_l).to(lower.dtype), active),
        upper_slope=torch.where(unstable, slope, active),
        upper_intercept=torch.where(unstable, intercept, 0.0),
    )


def _matvec(matrix: Tensor, vector: Tensor) -> Tensor:
    """(L, m, n) x (B, n) -> (B, m), L in {1, B}: products then a sum over n. Without autograd
    the products go into a reused buffer (`scratch`: with glibc's default allocator every large
    fresh temporary faults in fresh pages, docs/crown.md); with it, into a fresh tensor: the same
    arithmetic, so alpha-CROWN's first iterate equals CROWN bit for bit. (A batched product with
    one column, torch's bmm, is ~3x slower on a CPU at every size seen here.)"""
    shape = (max(matrix.shape[0], vector.shape[0]), *matrix.shape[1:])
    buffer = scratch("matvec", shape, matrix, avoid=matrix) \
        if not matrix.requires_grad and not vector.requires_grad else None
    if buffer is None:  # (contiguous, as the buffer: the sum then adds in the same order)
        return (matrix * vector.unsqueeze(-2)).contiguous().sum(-1)
    return torch.mul(matrix, vector.unsqueeze(-2), out=buffer).sum(-1)


def _abs_affine(layer, params: dict, magnitude: Tensor) -> Tensor:
    """|W| magnitude + |b| (B, out): bounds |W h + b| when |h| <= magnitude."""
    abs_params = ibp.abs_params_of(layer, params)
    return layer.torch_forward(magnitude, abs_params).flatten(1) + layer.bias_per_output(params["abs_bias"])


# A convolution whose dense matrix has at most this many entries is applied as that matrix: one
# float64 matrix product beats conv_transpose2d on a CPU for the small convolutions seen here
# (about 2x on the digits CNN; benchmarks/crown_vs_auto_lirpa.py). The sums are the same terms
# (plus exact zeros), so the rounding analysis is unchanged.
DENSE_CONV_ENTRIES = 2 ** 21


def dense_weight(layer, params: dict) -> Optional[Tensor]:
    """The layer's (out, in) weight matrix as a tensor (cached in `params` as ibp caches |W|),
    or None for a convolution too large to hold densely."""
    if isinstance(layer, Dense):
        return params["weight"]
    if "dense_weight" not in params:
        size = int(np.prod(layer.out_shape)) * int(np.prod(layer.in_shape))
        params["dense_weight"] = None if size > DENSE_CONV_ENTRIES else torch.as_tensor(
            layer.dense_matrix(), dtype=params["weight"].dtype, device=params["weight"].device)
    return params["dense_weight"]


# Reused CPU buffers for the large coefficient tensors of backward passes without autograd, by
# role: a fresh tensor of a few MB comes from pages the kernel faults in on first touch (glibc
# returns freed memory at the top of its heap), ~20,000 faults per CROWN call on the digits CNN.
# A buffer is reused only while no autograd graph can hold it, only up to SCRATCH_ENTRIES, and
# only by its own thread (a Dask worker may run two certifications side by side).
SCRATCH_ENTRIES = 2 ** 21
# Below this many entries a fresh tensor costs less than the look-up (glibc reuses small blocks).
SCRATCH_MIN_ENTRIES = 2 ** 13
_scratch = threading.local()


def scratch(role: str, shape: Sequence[int], like: Tensor, avoid: Optional[Tensor] = None
            ) -> Optional[Tensor]:
    """A reusable uninitialised CPU tensor of `shape` for `role` (never sharing memory with
    `avoid`), or None where a fresh one is due: autograd on, not a CPU tensor, or too large."""
    size = math.prod(shape)
    if torch.is_grad_enabled() or like.device.type != "cpu" or size > SCRATCH_ENTRIES \
            or size < SCRATCH_MIN_ENTRIES:
        return None
    buffers = _scratch.__dict__.setdefault("buffers", {})
    avoid_at = None if avoid is None else avoid.untyped_storage().data_ptr()
    for key in ((role, like.dtype), (role + "'", like.dtype)):  # a second one to alternate
        entry = buffers.get(key)  # (buffer, its entries, its storage's address)
        if entry is None or entry[1] < size:
            buffer = torch.empty(max(size, SCRATCH_ENTRIES // 8), dtype=like.dtype)
            entry = buffers[key] = (buffer, buffer.numel(), buffer.untyped_storage().data_ptr())
        if entry[2] != avoid_at:
            return entry[0][:size].view(*shape)
    return None  # pragma: no cover - two buffers of one role, `avoid` is at most one of them


def times_weight(coeffs: Tensor, weight: Tensor, reuse: bool = False) -> Tensor:
    """coeffs (..., out) @ weight (out, in) -> (..., in), contiguous. Where out >= 4 in (a
    product that narrows the rows a lot: the first layers of the digits CNN) it is computed as
    (weight^T coeffs^T)^T and copied back: torch picks the BLAS orientation from the output's
    layout, and MKL's float64 GEMM runs such a product ~2x faster with the long side as the rows
    of a column-major result; elsewhere the copy costs more than it saves. Each entry is one dot
    product of `out` terms either way (summed in another order: the rounding analysis holds for
    any order). With `reuse` (no autograd) the result lies in `scratch` buffers (valid until the
    next such call)."""
    *lead, n_out = coeffs.shape
    size, n_in = math.prod(lead), weight.shape[1]
    out = scratch("product", (*lead, n_in), coeffs, avoid=coeffs) if reuse else None
    if n_out < 4 * n_in:
        return coeffs @ weight if out is None else torch.matmul(coeffs, weight, out=out)
    flat = coeffs.reshape(size, n_out)
    transposed = scratch("product_t", (n_in, size), coeffs, avoid=coeffs) if reuse else None
    if transposed is None or out is None:
        return (weight.t() @ flat.t()).t().contiguous().view(*lead, n_in)
    torch.mm(weight.t(), flat.t(), out=transposed)
    out.view(size, n_in).copy_(transposed.t())
    return out


def transpose_apply(layer, params: dict, coeffs: Tensor, reuse: bool = False) -> Tensor:
    """coeffs @ W for coefficients (L, m, out) on the layer's output: (L, m, in), no autograd.
    With `reuse` the result may lie in a `scratch` buffer (valid until the next such call)."""
    dense = dense_weight(layer, params)
    if dense is not None:
        return times_weight(coeffs, dense, reuse)
    lead, rows = coeffs.shape[:2]
    c_in, h, w = layer.in_shape
    top, left, bottom, right = layer.padding
    kh, kw = layer.weight.shape[2:]
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    _, h_out, w_out = layer.out_shape
    grad = coeffs.reshape(lead * rows, *layer.out_shape)
    output_padding = ((h + top + bottom - dh * (kh - 1) - 1) % sh,
                      (w + left + right - dw * (kw - 1) - 1) % sw)
    padded = torch.nn.functional.conv_transpose2d(
        grad, params["weight"], stride=layer.stride, dilation=layer.dilation,
        output_padding=output_padding)
    return padded[:, :, top:top + h, left:left + w].reshape(lead, rows, c_in * h * w)


def outward(lower: Tensor, upper: Tensor, dtype: torch.dtype) -> Bounds:
    """[lower, upper] in `dtype`, rounded outwards so that it holds the given interval (the same
    tensors when they are in `dtype` already). NaN stays NaN; beyond the range: -inf / +inf."""
    if lower.dtype == dtype and upper.dtype == dtype:
        return lower, upper
    low, up = lower.to(dtype), upper.to(dtype)
    low = torch.where(low.to(lower.dtype) > lower, torch.nextafter(low, low.new_tensor(-np.inf)),
                      low)
    up = torch.where(up.to(upper.dtype) < upper, torch.nextafter(up, up.new_tensor(np.inf)), up)
    return low, up


def layer_input_bounds(batch: InputBatch, bounds: list[Bounds], k: int) -> Bounds:
    """Bounds on the input of layer k."""
    return bounds[k - 1] if k > 0 else (batch.lower, batch.upper)


def concretize(batch: InputBatch, coeffs: Tensor, const: Tensor,
               abs_coeffs: Optional[Tensor] = None, consume: bool = False) -> Tensor:
    """Sound lower bound (B, m) of coeffs x + const over the input set (rounding included):
    over the box, and for l_2/l_1 also over the ball, coeffs x0 + const - eps ||coeffs||_q with q
    the dual norm; the larger is kept (both sets hold their intersection). `coeffs` is
    overwritten if `consume` (without autograd).

    In float32 (coeffs' dtype; the batch stays float64) the box is rounded outwards, eps
    upwards, and the center to nearest: that moves c x0 by at most u |c| |x0|, charged with one
    more term in the magnitude pass's gamma (n + 1)."""
    dtype = coeffs.dtype
    unit, tiny = float_constants(dtype)
    n = coeffs.shape[-1] + (dtype != torch.float64)
    box_lower, box_upper = outward(batch.lower, batch.upper, dtype)
    # Box in midpoint/radius form; mid and rad are each off by a relative u (plus UNDERFLOW / 2
    # where the halving underflows), so the radius is widened by 4u (|mid| + rad) + UNDERFLOW:
    # [mid - rad, mid + rad] then holds [lower, upper] exactly.
    mid = (box_upper + box_lower) / 2
    rad = (box_upper - box_lower) / 2
    rad = rad + 4 * unit * (mid.abs() + rad) + tiny
    ball = None
    if batch.norm in ("2", "1"):  # min over the ball: coeffs x0 + const - eps ||coeffs||_q
        center = batch.center.to(dtype)
        eps = outward(batch.eps, batch.eps, dtype)[1]
        ball_spread = eps[:, None] * (torch.linalg.vector_norm(
            coeffs, ord=dual_norm(batch.norm), dim=-1) + norm_underflow(batch.norm, n, dtype))
        ball = _matvec(coeffs, center) + const - ball_spread
    lower = _matvec(coeffs, mid) + const
    if abs_coeffs is None:
        detached = coeffs.detach()
        abs_coeffs = detached.abs_() if consume and not coeffs.requires_grad else detached.abs()
    # |coeffs| rad, plus rounding_slack(|coeffs| (|mid| + rad)), as one product with |coeffs|:
    # weights rad + g (|mid| + rad), g = rounding_slack's factor 2 (n + 4) u. Equal in
    # real numbers; the rounding of that one product (about n u of it) is covered by the factor's
    # margin over gamma_n. With and without autograd the same operations run, so alpha-CROWN's
    # first iterate equals CROWN bit for bit (its ties then resolve alike in any batch).
    weights = rad + rounding_slack(mid.abs() + rad, n)
    lower = lower - _matvec(coeffs.abs() if coeffs.requires_grad else abs_coeffs, weights)
    lower = lower - rounding_slack(const.detach().abs(), n)
    if ball is not None:
        magnitude = (_matvec(abs_coeffs, center.abs()) + ball_spread.detach()
                     + const.detach().abs())
        lower = torch.maximum(lower, ball - rounding_slack(magnitude, n))
    return lower


def backward_lower(net: Network, batch: InputBatch, bounds: list[Bounds], top: int,
                   coeffs: Tensor, const: Tensor, alphas: Optional[Alphas] = None,
                   consume: bool = False, split_terms: Optional[dict[int, Tensor]] = None,
                   record: Optional[dict[int, Tensor]] = None) -> Tensor:
    """Sound lower bound (B, m) of coeffs h_top + const over the input set.

    `coeffs` (L, m, size of layer `top`'s output), L in {1, B}, overwritten if `consume`;
    `const` broadcastable to (B, m);
    `bounds[k]` for k < top are sound bounds on the outputs h_k; `alphas` optional lower slopes.

    Rounding: the float pass computes Lambda_{k-1} = fl(Lambda_k W_k) and c_{k-1} = fl(c_k +
    Lambda_k b_k) (ReLU: fl(Lambda_k * slope), fl(c_k + Lambda_neg t)). In real arithmetic
    Lambda_k h_k + c_k >= Lambda_{k-1} h_{k-1} + c_{k-1} - e_k, with e_k <= gamma_{n_k} (|Lambda_k|
    (|W_k| |h_{k-1}| + |b_k|) + |c_k|) (Higham, Thm 3.1) and |h_{k-1}| <= max(|l_{k-1}|, |u_{k-1}|)
    from the sound bounds; likewise for ReLU steps. `rounding_slack` (2 (n + 4) u) covers gamma_n,
    the rounding of the allowance itself and the final subtraction. The sum of all e_k plus the
    concretisation's own allowance is subtracted from the bound; rounding_slack is linear, so a
    ReLU step's |Lambda| term and the next affine step's (same n) share one product with
    |Lambda|, and the concretisation folds its own into the radius (`concretize`).

    Split terms (beta-CROWN): `split_terms[k]` (B, m, n) = beta * s for ReLU layer k, where each
    split neuron i carries the constraint s_i z_i >= 0 (s = +1 active, -1 inactive, 0 unsplit;
    z the ReLU's input) and beta >= 0. On the set where the constraints hold, coeffs h_top +
    const >= that minus sum_i beta_i s_i z_i, so (bounds[k - 1] being valid there) the bound is
    sound over that set: the term is subtracted from the coefficients on z after the relaxation;
    the one extra float addition is charged u |Lambda'| max|z| (twice, with underflow).
    `record[k]`, if given, receives the coefficients (detached) on ReLU layer k's output, and
    `record[-1]` those on the input.

    A ReLU step keeps only the columns of neurons not inactive on every input (`_live_neurons`):
    the others' coefficients are exact zeros, and the affine step below takes only their rows
    of W and b.

    Float32 (coeffs and const in float32): the products run on float32 copies of the weights
    (each off by a relative u), against the float64 bounds rounded outwards (`outward`), with
    float32's u and UNDERFLOW; a weight's rounding adds u |Lambda_k| |W_k| |h_{k-1}| (and
    u |Lambda_k| |b_k|), covered by counting one more term in each gamma (n + 1). The returned
    bound is float32; as float64 it is the same number.
    """
    dtype = coeffs.dtype
    tiny = float_constants(dtype)[1]
    extra = int(dtype != torch.float64)  # one more rounding per product: the weights' own
    params = net.torch_params(batch.lower.device, dtype)
    slack = torch.zeros((), dtype=coeffs.dtype, device=coeffs.device)
    abs_coeffs: Optional[Tensor] = None  # |coeffs|, detached, when already at hand
    # The allowance still owed for the current coefficients is rounding_slack(|coeffs| owed,
    # width): a ReLU step's and the next affine step's (same width) go through one product.
    owed: Optional[Tensor] = None
    owned = consume and not torch.is_grad_enabled()  # coeffs may be overwritten in place
    live: Optional[Tensor] = None  # after a ReLU step: the neurons coeffs' columns stand for
    for k in range(top, -1, -1):
        layer, p = net.layers[k], params[k]
        in_lower, in_upper = outward(*layer_input_bounds(batch, bounds, k), dtype)
        in_magnitude = torch.maximum(in_lower.abs(), in_upper.abs()).detach()
        magnitude_sum = in_magnitude.sum(-1, keepdim=True)
        # terms per sum: the layer's full width even where dead columns are dropped (`live`)
        width = math.prod(layer.out_shape) + extra
        if isinstance(layer, AFFINE):
            with torch.no_grad():
                abs_coeffs = coeffs.detach().abs() if abs_coeffs is None else abs_coeffs
                # |W| max|h| + |b|, plus what its own products may lose to underflow (a huge
                # |Lambda| times an underflowed |W| max|h| would drop Lambda W's rounding)
                step = _abs_affine(layer, p, in_magnitude) + ibp.fan_in(layer) * tiny
                if live is not None:
                    step = step.index_select(1, live)
                owed = step if owed is None else owed + step
                slack = slack + rounding_slack(_matvec(abs_coeffs, owed) + const.detach().abs(),
                                               width, magnitude_sum)
            if live is None:
                const = const + coeffs @ layer.bias_per_output(p["bias"])
                coeffs = transpose_apply(layer, p, coeffs, reuse=True)
            else:  # only the live outputs' rows of W and b (the other coefficients are 0)
                const = const + coeffs @ layer.bias_per_output(p["bias"]).index_select(0, live)
                coeffs = times_weight(coeffs, dense_weight(layer, p).index_select(0, live),
                                      reuse=True)
            abs_coeffs, owed, live = None, None, None
            owned = not torch.is_grad_enabled()
        elif isinstance(layer, ReLU):
            if owed is not None:  # two ReLUs in a row: the earlier one's allowance is due now
                slack = _settle(slack, abs_coeffs, owed, extra)
            if record is not None:
                record[k] = coeffs.detach().clone()
            relax = relu_relaxation(in_lower, in_upper)
            alpha = None if alphas is None or k not in alphas else alphas[k]
            live = _live_neurons(net, params, k, in_upper, split_terms)
            if live is not None:  # the columns of neurons inactive on every input are dropped
                relax = ReluRelaxation(*(t.index_select(1, live) for t in (
                    relax.unstable, relax.lower_slope, relax.upper_slope, relax.upper_intercept)))
                alpha = None if alpha is None else alpha.index_select(2, live)
                in_magnitude = in_magnitude.index_select(1, live)
                buffer = scratch("live", (*coeffs.shape[:-1], len(live)), coeffs, avoid=coeffs) \
                    if not torch.is_grad_enabled() else None
                coeffs = coeffs.index_select(2, live) if buffer is None else \
                    torch.index_select(coeffs, 2, live, out=buffer)
                owned = not torch.is_grad_enabled()
            lower_slope = relax.lower_slope[:, None, :]
            if alpha is not None:
                lower_slope = torch.where(relax.unstable[:, None, :], alpha, lower_slope)
            upper_slope = relax.upper_slope[:, None, :]
            if torch.is_grad_enabled() or not owned or len(coeffs) != len(upper_slope):
                # negative entries use the chord s z + t, the others alpha z (L = 1: broadcast)
                negative = coeffs.clamp(max=0)
                positive = coeffs - negative  # exact
                increment = _matvec(negative, relax.upper_intercept)
                coeffs = positive * lower_slope + negative * upper_slope
                abs_coeffs = coeffs.detach().abs()
            else:  # the same numbers in fewer passes, in place (each large tensor allocated is
                # fresh pages to fault in with glibc's default allocator): one of the two
                # products above is an exact 0, so the sum is the other, c times the slope its
                # sign picks; and t >= 0, so fl(min(c, 0) t) = min(fl(c t), 0)
                buffer = scratch("matvec", coeffs.shape, coeffs, avoid=coeffs)
                terms = coeffs * relax.upper_intercept[:, None, :] if buffer is None else \
                    torch.mul(coeffs, relax.upper_intercept[:, None, :], out=buffer)
                increment = terms.clamp_(max=0).sum(-1)
                buffer = scratch("negative", coeffs.shape, coeffs, avoid=coeffs)
                slope = torch.where(coeffs < 0, upper_slope, lower_slope) if buffer is None \
                    else torch.where(coeffs < 0, upper_slope, lower_slope, out=buffer)
                coeffs = coeffs.mul_(slope)
                abs_coeffs = torch.abs(coeffs, out=slope)
            const = const + increment
            if split_terms is not None and k in split_terms:  # - beta s on z (beta-CROWN)
                coeffs = coeffs - split_terms[k]
                abs_coeffs, owned = coeffs.detach().abs(), not torch.is_grad_enabled()
                with torch.no_grad():
                    slack = slack + rounding_slack(_matvec(abs_coeffs, in_magnitude), 1)
            with torch.no_grad():  # owed: |coeffs| in_magnitude + |increment| + |const|
                slack = slack + rounding_slack(increment.detach().abs() + const.detach().abs(),
                                               width, magnitude_sum)
                owed = in_magnitude
        else:  # pragma: no cover - the loader only builds the layers above
            raise TypeError(f"CROWN cannot handle {type(layer).__name__}")
    if owed is not None:  # a ReLU came first
        slack = _settle(slack, abs_coeffs, owed, extra)
    if record is not None:
        record[-1] = coeffs.detach().clone()  # on the input
    return concretize(batch, coeffs, const, abs_coeffs, consume=owned) - slack


# A ReLU step drops the columns of the neurons that are inactive (u <= 0) on every input of the
# batch when at most this fraction of the layer is left (`_live_neurons`).
LIVE_FRACTION = 0.8


def _live_neurons(net: Network, params: list[dict], k: int, in_upper: Tensor,
                  split_terms: Optional[dict[int, Tensor]]) -> Optional[Tensor]:
    """The neurons of ReLU layer k not inactive on every input (index (U,)), when the affine
    layer below has a dense weight, no split term sits on layer k, and U <= LIVE_FRACTION n;
    else None. Both slopes and the intercept of an inactive neuron are exactly 0, so its
    coefficient after the ReLU step is an exact 0 for every input, and so are its terms in
    Lambda W, Lambda b and the rounding allowances: dropping them changes only which zeros are
    summed (the allowances keep the full width n)."""
    if k == 0 or not isinstance(net.layers[k - 1], AFFINE) \
            or (split_terms is not None and k in split_terms) \
            or dense_weight(net.layers[k - 1], params[k - 1]) is None:
        return None
    dead = (in_upper <= 0).all(dim=0)  # NaN counts as live
    if dead.numel() - int(dead.sum()) > LIVE_FRACTION * dead.numel():
        return None
    return (~dead).nonzero().squeeze(1)


def _settle(slack: Tensor, abs_coeffs: Tensor, owed: Tensor, extra: int = 0) -> Tensor:
    """slack plus the allowance a ReLU step left owed, rounding_slack(|coeffs| owed, width
    (+ `extra` terms))."""
    with torch.no_grad():
        return slack + rounding_slack(_matvec(abs_coeffs, owed), abs_coeffs.shape[-1] + extra)


def select_rows(mask: Tensor) -> Selection:
    """Per input, the indices of the True entries of mask (B, n), padded to the largest count."""
    count = int(mask.sum(dim=1).max()) if mask.numel() else 0
    index = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :count]
    return index, torch.gather(mask, 1, index)


def neuron_bounds(net: Network, batch: InputBatch, bounds: list[Bounds], k: int,
                  selection: Selection, alphas: Optional[Alphas] = None,
                  max_elements: int = 2 ** 20, dtype: torch.dtype = torch.float64) -> Bounds:
    """CROWN bounds (B, n) on the selected outputs of affine layer k; -inf/+inf elsewhere.

    Lower and upper bounds in one pass: rows e_i W_k and -e_i W_k (taken exactly, so this first
    step carries no rounding). `alphas[j]` (B, 2R, n_j): slopes for the R lower rows, then the R
    upper rows. Inputs go in groups of similar row counts (`_row_groups`: padding each group to
    its own largest count, not the batch's), and rows in chunks of at most ~`max_elements`
    coefficients (8 MiB: chunks that small reuse freed heap memory instead of faulting in fresh
    pages; ~1.4x on the digits CNN). Each row's arithmetic is the same in any grouping.
    `dtype`: the backward passes' float type (float32: see `_row_bounds`); bounds are float64.
    """
    if alphas is None and dtype == batch.lower.dtype:
        windows = _windows(net, k, batch.lower.device)
        if windows is not None:
            return _window_neuron_bounds(net, batch, bounds, k, selection, windows,
                                         max_elements)
    index, valid = selection
    n = int(np.prod(net.layers[k].out_shape))
    widths = [net.input_size] + [int(np.prod(layer.out_shape)) for layer in net.layers[:k + 1]]
    full = torch.full((len(index), n), float("inf"), dtype=batch.lower.dtype,
                      device=batch.lower.device)
    lower, upper = -full, full.clone()
    for group, count in _row_groups(valid):
        whole = len(group) == len(index)
        sub_batch = batch if whole else batch.subset(group)
        sub_bounds = bounds[:k] if whole else [(l[group], u[group]) for l, u in bounds[:k]]
        sub_index = index[:, :count] if whole else index[group, :count]
        sub_valid = valid[:, :count] if whole else valid[group, :count]
        rows = index.shape[1]
        step = max(1, max_elements // max(1, 2 * len(sub_index) * max(widths)))
        parts = []
        for a in range(0, count, step):
            b = min(a + step, count)
            chunk_alphas = None if alphas is None else {
                j: torch.cat([t[:, a:b], t[:, rows + a:rows + b]], 1) if whole else
                torch.cat([t[group, a:b], t[group, rows + a:rows + b]], 1)
                for j, t in alphas.items()}
            parts.append(_row_bounds(net, sub_batch, sub_bounds, k, sub_index[:, a:b],
                                     chunk_alphas, dtype))
        part_lower = torch.cat([part[0] for part in parts], dim=1)
        part_upper = torch.cat([part[1] for part in parts], dim=1)
        inf = torch.full_like(part_lower, float("inf"))
        part_lower = torch.where(sub_valid, part_lower, -inf)
        part_upper = torch.where(sub_valid, part_upper, inf)
        if whole:
            return (torch.scatter(lower, 1, sub_index, part_lower),
                    torch.scatter(upper, 1, sub_index, part_upper))
        lower = lower.index_put((group,), torch.scatter(lower[group], 1, sub_index, part_lower))
        upper = upper.index_put((group,), torch.scatter(upper[group], 1, sub_index, part_upper))
    return lower, upper


# A convolution's neurons at nearby output positions read a few neurons of the ReLU below (their
# receptive field): `neuron_bounds` bounds them block by block on that window only, when the
# windows of at most WINDOW_TILES x WINDOW_TILES tiles of the output map average at most
# WINDOW_FRACTION of the layer below (on the digits CNN: 16 blocks of 72 of 512 columns).
WINDOW_TILES = 4
WINDOW_FRACTION = 0.5


@dataclass
class _Window:
    """One block of a convolution's neurons and the sub-network their rows reach."""

    columns: Tensor  # (s,) the neurons of the ReLU below that the block's rows of W_k reach
    weight: Tensor  # (n_k, s): W_k's columns `columns` (the block's rows are used)
    net: Network  # layers[:k-2], then layer k-2's rows `columns` as a Dense layer, a ReLU (s,)


@dataclass
class _Windows:
    block_of: Tensor  # (n_k,) each neuron's block
    blocks: list[_Window]


# Per network and layer: the blocks (or None where they do not pay), built on first use.
_WINDOWS: "weakref.WeakKeyDictionary[Network, dict]" = weakref.WeakKeyDictionary()


def _windows(net: Network, k: int, device: torch.device) -> Optional[_Windows]:
    """The receptive-field blocks of affine layer k (`_window_neuron_bounds`), or None: layer k
    is not a convolution above a ReLU above an affine layer (both with dense matrices), or its
    windows are too wide to pay."""
    cache = _WINDOWS.setdefault(net, {})
    key = (k, str(device))
    if key in cache:
        return cache[key]
    cache[key] = None
    layers, params = net.layers, net.torch_params(device)
    if k < 2 or not isinstance(layers[k], Conv2d) or not isinstance(layers[k - 1], ReLU) \
            or not isinstance(layers[k - 2], AFFINE) \
            or dense_weight(layers[k], params[k]) is None \
            or dense_weight(layers[k - 2], params[k - 2]) is None:
        return None
    dense = dense_weight(layers[k], params[k])
    channels, height, width = layers[k].out_shape
    tile_h, tile_w = -(-height // WINDOW_TILES), -(-width // WINDOW_TILES)
    position = torch.arange(height * width, device=device)
    tile = (position // width // tile_h) * WINDOW_TILES + (position % width) // tile_w
    block_of = tile.repeat(channels)  # neuron c H W + p sits at position p
    below = layers[k - 2]
    below_matrix, below_bias = below.dense_matrix(), below.bias_per_output(below.bias)
    blocks, total = [], 0
    for t in range(WINDOW_TILES ** 2):
        rows = (block_of == t).nonzero().squeeze(1)
        columns = (dense.index_select(0, rows) != 0).any(dim=0).nonzero().squeeze(1) \
            if len(rows) else rows
        total += len(rows) * len(columns)
        picked = columns.cpu().numpy()
        sub = Network([*layers[:k - 2],
                       Dense(below_matrix[picked], below_bias[picked], below.in_shape,
                             (len(picked),)),
                       ReLU((len(picked),))], net.input_shape, name=f"{net.name}[{k}:{t}]")
        # the layers kept whole share the network's parameter tensors (and their dense matrices)
        sub._torch_params[(str(device), torch.float64)] = [
            *params[:k - 2], *sub.torch_params(device)[k - 2:]]
        blocks.append(_Window(columns, dense.index_select(1, columns).contiguous(), sub))
    if total > WINDOW_FRACTION * dense.numel():
        return None
    cache[key] = _Windows(block_of, blocks)
    return cache[key]


def _window_neuron_bounds(net: Network, batch: InputBatch, bounds: list[Bounds], k: int,
                          selection: Selection, windows: _Windows,
                          max_elements: int = 2 ** 20) -> Bounds:
    """`neuron_bounds` for a convolution, block by block of its receptive-field windows.

    Every selected (input, neuron) pair of a block goes through one backward pass on the block's
    sub-network: the rows +-e_i W_k restricted to the window's columns (the others are exact
    zeros, and stay zeros through the ReLU step and the rows of W_{k-2} they would select), the
    ReLU below and layer k-2 restricted to the window, then the layers below in full. That is
    CROWN on a network that computes the same neurons, with its own rounding allowances (over
    the s terms the restricted sums add), so the bounds are sound and equal to the full pass's
    up to rounding. No padding: each pair is one row of the batch (L = pairs, m = 2), in chunks
    of at most ~`max_elements` coefficients, as `neuron_bounds`'s."""
    index, valid = selection
    layer = net.layers[k]
    n = int(np.prod(layer.out_shape))
    lower = torch.full((len(index), n), -float("inf"), dtype=batch.lower.dtype,
                       device=batch.lower.device)
    upper = -lower
    mask = torch.zeros_like(lower, dtype=torch.bool).scatter_(1, index, valid)
    inputs, neurons = mask.nonzero().unbind(1)
    if len(inputs) == 0:
        return lower, upper
    block = windows.block_of.index_select(0, neurons)
    order = torch.argsort(block, stable=True)
    counts = torch.bincount(block, minlength=len(windows.blocks)).tolist()
    bias = layer.bias_per_output(net.torch_params(batch.lower.device)[k]["bias"])
    below_lower, below_upper = bounds[k - 2]
    widest = max([net.input_size] + [int(np.prod(layer.out_shape)) for layer in net.layers[:k]])
    step = max(1, max_elements // (2 * widest))
    chunks, start = [], 0
    for window, count in zip(windows.blocks, counts):
        chunks += [(window, order[a:min(a + step, start + count)])
                   for a in range(start, start + count, step)]
        start += count
    for window, pick in chunks:
        rows, cols = inputs.index_select(0, pick), neurons.index_select(0, pick)
        weight = window.weight.index_select(0, cols)
        coeffs = torch.stack([weight, -weight], dim=1)  # (P, 2, s): +-e_i W_k, exact
        row_bias = bias.index_select(0, cols)
        const = torch.stack([row_bias, -row_bias], dim=1)
        sub_bounds = [(lo.index_select(0, rows), up.index_select(0, rows))
                      for lo, up in bounds[:k - 2]]
        sub_bounds.append((below_lower.index_select(1, window.columns).index_select(0, rows),
                           below_upper.index_select(1, window.columns).index_select(0, rows)))
        pair_lower = backward_lower(window.net, batch.subset(rows), sub_bounds, k - 1, coeffs,
                                    const, consume=True)
        lower[rows, cols] = pair_lower[:, 0]
        upper[rows, cols] = -pair_lower[:, 1]
    return lower, upper


# Splitting a batch into one more group of inputs costs about this many padded rows per input
# (the Python and kernel-launch overhead of one more backward pass), measured on the digits MLP.
GROUP_OVERHEAD_ROWS = 2.0


def _row_groups(valid: Tensor) -> list[tuple[Tensor, int]]:
    """Inputs grouped by their number of selected rows (valid (B, R)): [(inputs, rows to keep)].

    The inputs are sorted by count and cut into g equal runs, g in 1, 2, 4, 8, the g that
    minimises the padded rows sum(len(run) max(run)) plus GROUP_OVERHEAD_ROWS B per run. A run
    with no rows is dropped (its neurons keep -inf/+inf, as padding did)."""
    counts = valid.sum(dim=1)
    total = len(counts)
    if total == 0:
        return []
    order = torch.argsort(counts, stable=True)
    sorted_counts = counts[order].tolist()
    best, best_cost = 1, None
    for runs in (1, 2, 4, 8):
        if runs > total:
            break
        cuts = [total * r // runs for r in range(runs + 1)]
        cost = sum((b - a) * sorted_counts[b - 1] for a, b in zip(cuts, cuts[1:])) \
            + GROUP_OVERHEAD_ROWS * total * runs
        if best_cost is None or cost < best_cost:
            best, best_cost = runs, cost
    if best == 1:
        return [(torch.arange(total, device=valid.device), int(sorted_counts[-1]))] \
            if sorted_counts[-1] > 0 else []
    cuts = [total * r // best for r in range(best + 1)]
    return [(order[a:b], int(sorted_counts[b - 1])) for a, b in zip(cuts, cuts[1:])
            if sorted_counts[b - 1] > 0]


def _row_bounds(net: Network, batch: InputBatch, bounds: list[Bounds], k: int, index: Tensor,
                alphas: Optional[Alphas], dtype: torch.dtype = torch.float64) -> Bounds:
    """(lower, upper), each (B, R), of the outputs index (B, R) of affine layer k (float64).

    In float32 the rows e_i W_k and the bias are float32 roundings, each entry off by a
    relative u: the output moves by at most u (|W_k| |h_{k-1}| + |b_k|)_i, subtracted (twice
    over, for the float64 evaluation of that magnitude) from both ends."""
    layer, p = net.layers[k], net.torch_params(batch.lower.device, dtype)[k]
    count = index.shape[1]
    dense = dense_weight(layer, p)
    if dense is not None:
        rows = torch.cat([index, index], dim=1).reshape(-1)  # (B, 2R, in), gathered once
        shape = (len(rows), dense.shape[1])
        buffer = scratch("rows", shape, dense)
        coeffs = (dense.index_select(0, rows) if buffer is None else
                  torch.index_select(dense, 0, rows, out=buffer)).view(len(index), 2 * count, -1)
    else:
        one_hot = torch.zeros((*index.shape, int(np.prod(layer.out_shape))),
                              dtype=p["weight"].dtype, device=index.device)
        rows = transpose_apply(layer, p, one_hot.scatter_(2, index[..., None], 1.0))
        coeffs = torch.cat([rows, rows], dim=1)
    coeffs[:, count:].neg_()  # rows e_i W_k, then -e_i W_k (exact)
    bias = layer.bias_per_output(p["bias"])[index]
    const = torch.cat([bias, -bias], dim=1)
    if k == 0:
        lower = concretize(batch, coeffs, const)
    else:
        lower = backward_lower(net, batch, bounds, k - 1, coeffs, const, alphas, consume=True)
    lower = lower.to(batch.lower.dtype)
    if dtype != batch.lower.dtype:  # the weights' rounding to dtype
        unit = float_constants(dtype)[0]
        in_lower, in_upper = layer_input_bounds(batch, bounds, k)
        magnitude = _abs_affine(layer, net.torch_params(batch.lower.device)[k],
                                torch.maximum(in_lower.abs(), in_upper.abs()))
        moved = (2 * unit) * torch.gather(magnitude, 1, index)
        return lower[:, :count] - moved, -lower[:, count:] + moved
    return lower[:, :count], -lower[:, count:]


def _needs_crown(net: Network, k: int, include_last: bool) -> bool:
    """Affine layers after the first whose outputs feed a ReLU (or the logits, if asked)."""
    if k == 0 or not isinstance(net.layers[k], AFFINE):
        return False
    last = k == len(net.layers) - 1
    return (include_last and last) or (not last and isinstance(net.layers[k + 1], ReLU))


def _intersect(lower: Tensor, upper: Tensor, new_lower: Tensor, new_upper: Tensor) -> Bounds:
    """[lower, upper] ∩ [new_lower, new_upper], the new bound winning ties: the gradient then
    takes one path (torch.maximum splits it at ties, which made a batch differ from one input)."""
    return (torch.where(new_lower >= lower, new_lower, lower),
            torch.where(new_upper <= upper, new_upper, upper))


# A layer whose unstable neurons (l < 0 < u), taken over the whole batch, exceed this fraction
# of it has every neuron bounded under rows="auto" (auto_LiRPA's minimum_sparsity).
DENSE_FRACTION = 0.9


def rows_to_bound(lower: Tensor, upper: Tensor, rows: str) -> Tensor:
    """Which neurons (B, n) of a layer with bounds [lower, upper] CROWN bounds, per input:
    "unstable": l < 0 < u; "live": u > 0; "auto": auto_LiRPA's choice, the batch's union of the
    unstable ones (every neuron once it passes DENSE_FRACTION of the layer), less the inactive
    ones (u <= 0) of each input; "all": every neuron.

    An inactive neuron's bound never matters (relu is exactly 0 on it, and a tighter bound keeps
    it inactive), so "live" gives the bounds of "all" above the layer, and "auto" those of
    auto_LiRPA. The bound of an active neuron (l >= 0) tightens the interval steps above; in
    the last layer that CROWN bounds before the margins, only IBP's margin bound, which CROWN's
    margin bound nearly always beats: `propagate` takes "unstable" there for "auto"."""
    if rows == "all":
        return torch.ones_like(lower, dtype=torch.bool)
    live = ~(upper <= 0)  # NaN: live
    unstable = live & (lower < 0)
    if rows == "unstable":
        return unstable
    if rows == "live":
        return live
    union = unstable.any(dim=0)
    if int(union.sum()) > DENSE_FRACTION * union.numel():
        return live
    return live & union


def propagate(net: Network, batch: InputBatch, ibp_bounds: list[Bounds], *,
              include_last: bool = True, all_neurons: bool = False, rows: str = "unstable",
              selections: Optional[dict[int, Selection]] = None,
              alphas: Optional[dict[int, Alphas]] = None,
              floor: Optional[list[Bounds]] = None,
              dtype: torch.dtype = torch.float64) -> tuple[list[Bounds], dict[int, Selection]]:
    """Bounds on every layer's output: IBP ∩ intervals from the previous layer ∩ CROWN.

    CROWN runs for the neurons `rows` picks from the interval bounds (`rows_to_bound`; all of
    them with `all_neurons`, and for the last layer); `selections` fixes those rows instead,
    `alphas[k]` gives the lower slopes for layer k's backward pass, `floor` earlier sound
    bounds to keep, `dtype` the float type of the neuron bounds' backward passes (`neuron_bounds`).
    """
    params = net.torch_params(batch.lower.device)
    selections = {} if selections is None else selections
    bounds: list[Bounds] = []
    as_ibp = True  # bounds[k - 1] are IBP's own: the interval step from them gives IBP's again
    for k, layer in enumerate(net.layers):
        lower, upper = ibp_bounds[k]
        if k > 0 and not as_ibp:
            prev_lower, prev_upper = bounds[k - 1]
            step_lower, step_upper = ibp.layer_interval(layer, params[k], prev_lower, prev_upper)
            lower, upper = _intersect(lower, upper, step_lower, step_upper)
        if floor is not None:
            lower, upper = _intersect(lower, upper, *floor[k])
            as_ibp = False
        if _needs_crown(net, k, include_last):
            if k not in selections:
                last = k == len(net.layers) - 1
                rule = "all" if all_neurons or last else rows
                if rule == "auto" and not any(_needs_crown(net, j, include_last)
                                              for j in range(k + 1, len(net.layers))):
                    rule = "unstable"  # (rows_to_bound)
                selections[k] = select_rows(rows_to_bound(lower, upper, rule))
            if selections[k][0].shape[1] > 0:
                crown_lower, crown_upper = neuron_bounds(
                    net, batch, bounds, k, selections[k], None if alphas is None else alphas.get(k),
                    dtype=dtype)
                lower, upper = _intersect(lower, upper, crown_lower, crown_upper)
                as_ibp = False
        bounds.append((lower, upper))
    return bounds, selections


def layer_bounds(net: Network, batch: InputBatch, all_neurons: bool = False) -> list[Bounds]:
    """CROWN bounds on the output of every layer (pre-activation after affine layers, post-
    activation after ReLU), (B, size) flat, each within IBP's (`verify.bounds.ibp.layer_bounds`).

    By default CROWN tightens the neurons that intervals leave unstable (the only ones a ReLU
    relaxation depends on) and every logit; `all_neurons=True` tightens every neuron.
    """
    with torch.no_grad():
        bounds, _ = propagate(net, batch, ibp.layer_bounds(net, batch), all_neurons=all_neurons)
    return bounds


def margin_lower_from(net: Network, batch: InputBatch, bounds: list[Bounds],
                      alphas: Optional[Alphas] = None,
                      split_terms: Optional[dict[int, Tensor]] = None,
                      record: Optional[dict[int, Tensor]] = None) -> Tensor:
    """CROWN's lower bound (B, m) of C f(x) - d, backward from C itself (`backward_lower`'s
    split terms and record passed through)."""
    return backward_lower(net, batch, bounds, len(net.layers) - 1, batch.C, -batch.d, alphas,
                          split_terms=split_terms, record=record)


def ibp_margin_lower(net: Network, batch: InputBatch, ibp_bounds: list[Bounds],
                     bounds: list[Bounds]) -> Tensor:
    """IBP's last step (its margin bound) from the tightened bounds. `bounds` lie within
    `ibp_bounds` (`propagate` intersects every layer's with IBP's), so in real arithmetic this is
    never below IBP's margin bound from `ibp_bounds`; the two floats differ by their rounding
    (~1e-16 relative), so that second pass (about 5% of CROWN's time on the digits CNN) is not
    run. `ibp_bounds` is kept for the callers."""
    del ibp_bounds
    return ibp.margin_bounds(net, batch, bounds)[0]


def margin_lower_bounds(net: Network, batch: InputBatch, intermediate: str = "crown",
                        dtype: str = "float64", all_neurons: bool = False,
                        rows: str = "auto") -> tuple[Tensor, dict]:
    """Lower bounds (B, m) of C f(x) - d over each input set, and the cost; `intermediate`
    picks the neuron bounds the backward pass relaxes over ("crown" or "ibp": CROWN-IBP),
    `dtype` the float type of the neuron bounds' passes ("float64" or "float32"),
    `all_neurons` bounds the stable neurons too (their CROWN bounds tighten the interval steps
    of the layers above; costlier), `rows` which neurons otherwise (`rows_to_bound`)."""
    check_choice(intermediate, CROWNOptions.CHOICES["intermediate"], "intermediate bounds",
                 "crown")
    check_choice(dtype, CROWNOptions.CHOICES["dtype"], "dtype", "crown")
    check_choice(rows, CROWNOptions.CHOICES["rows"], "rows", "crown")
    with torch.no_grad(), exact_float32(batch.lower.device):
        ibp_bounds = ibp.layer_bounds(net, batch)
        if intermediate == "ibp":
            bounds, selections = ibp_bounds, {}
        else:
            bounds, selections = propagate(net, batch, ibp_bounds, include_last=False,
                                           all_neurons=all_neurons, rows=rows,
                                           dtype=passes_dtype(net, dtype))
        # These numbers become a YES in verdict.certificate_from_bounds when every row is > 0
        # (no tolerance). Why that holds for the real-arithmetic network: (1) every pre-activation
        # bound is a sound CROWN or interval bound, each with its rounding allowance; (2) each
        # ReLU line is valid on [l, u] in real numbers (relu_relaxation); (3) backward_lower
        # subtracts gamma_n |Lambda_k| (|W_k| max|h_{k-1}| + |b_k|) + ... per layer for the float
        # products, and concretize the allowance of the final dot products (its box radius
        # widened so the rounded midpoint form still holds the box). The maximum of sound bounds
        # (CROWN's, IBP's) is sound.
        lower = torch.maximum(margin_lower_from(net, batch, bounds),
                              ibp_margin_lower(net, batch, ibp_bounds, bounds))
    rows = sum(int(valid.sum()) for _, valid in selections.values())
    return lower, {"bound_passes": len(selections) + 1,
                   "crown_neurons_per_input": round(rows / max(len(batch), 1), 1)}


# float32's allowances (2 (n + 4) u for gamma_(n + 1)) hold while n u stays well below 1: wider
# layers than this go in float64.
FLOAT32_MAX_WIDTH = 2 ** 20


def passes_dtype(net: Network, dtype: str) -> torch.dtype:
    """The torch dtype for CROWN's neuron-bound passes: float32 when asked and every layer is
    at most FLOAT32_MAX_WIDTH wide, else float64."""
    widths = [net.input_size] + [int(np.prod(layer.out_shape)) for layer in net.layers]
    return torch.float32 if dtype == "float32" and max(widths) <= FLOAT32_MAX_WIDTH \
        else torch.float64


@contextlib.contextmanager
def exact_float32(device: torch.device):
    """On CUDA, TF32 (10-bit mantissa products) off for float32 matmuls and convolutions while
    the block runs: float32 bounds charge float32's own rounding. Nothing to do on a CPU."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def certify(net: Network, specs: Sequence[Specification], options: CROWNOptions
            ) -> list[Certificate]:
    """CROWN certificates for a list of specifications, batched on `options.device`."""
    check_choices(options, "crown")
    bound = functools.partial(margin_lower_bounds, intermediate=options.intermediate,
                              dtype=options.dtype, rows=options.rows)
    return certify_with_bounds(net, specs, "crown", bound, options.device, options.batch_size)
