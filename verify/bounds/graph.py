"""IBP and CROWN over a GraphNetwork (verify.graph): every node read through its `ops` rule.

Accepts:   GraphNetwork; input set = l_inf/l_2/l_1 ball ∩ box, or a box.
Method:    IBP: in topological order, linear nodes in center/radius form y = L(m) + b ± |L|(r)
           (|L| the node with absolute weights), nonlinear ones by their interval rule; the margin
           C y - d from the output intervals. CROWN: a backward pass from C through the DAG,
           coefficients of a node summed over its consumers; linear nodes transpose by their
           vector-Jacobian product (exact for a linear map; a 2-D Conv by conv_transpose2d),
           Relu takes CROWN's relaxation, smooth ops chord / tangent lines (ops.relax), MaxPool
           its window candidates, Softmax a mean-value form around the box's midpoint
           (ops.softmax_relaxation; its interval where tighter). For l_2 / l_1 balls, tensors
           affine in the input get the exact ball bound x0 ± eps ||J_i||_q in IBP too.
           Intermediate bounds: IBP, tightened by CROWN passes (at most `crown_rows` rows each)
           from each nonlinear node's input where at most `max_rows` entries need it.
           Rounding: with M >= |A| carried beside the coefficients A, a linear step
           y = L x + b (computed A_x = fl(A_y L)) errs by at most gamma_n M_y . (|L| max|x| + |b|),
           max|x| from the tensor bounds, which also covers the M_y . |y| owed by earlier steps;
           a relaxation step passes M max(slopes) on (its own products' error) and its
           constants' magnitudes; all of it is charged at the end with `rounding_slack`;
           concretization is crown.concretize's (rounding included).
           alpha-CROWN slopes and beta-CROWN split terms enter the Relu step (backward_bound).
Soundness: sound, incomplete.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .. import deadline as deadlines
from ..certificate import Certificate
from ..errors import InputError
from ..graph import bilinear, discrete, ops
from ..graph.ir import size_of
from ..spec import Specification
from . import (UNDERFLOW, InputBatch, certify_with_bounds, norm_underflow,
               outward_margin, rounding_slack)
from .crown import concretize, relu_relaxation

Bounds = tuple[torch.Tensor, torch.Tensor]
GRAPH_METHODS = ("ibp", "crown", "alpha-crown", "relu-bab", "lp", "milp", "bab", "attack",
                 "smoothing")
CROWN_ROWS = 512  # CROWN intermediate bounds: at most this many entries per backward pass,
CROWN_MAX_ROWS = 4096  # for a tensor with at most this many entries to tighten (Relu: unstable)


def refuse(method: str) -> InputError:
    return InputError(f"method '{method}' does not handle graph networks (models that are not a "
                      f"plain Dense/Conv/ReLU chain) yet; use one of {', '.join(GRAPH_METHODS)}")


def _input_bounds(net, batch: InputBatch) -> dict[str, Bounds]:
    lower, upper = net.split_input(batch.lower), net.split_input(batch.upper)
    return {name: (lower[name], upper[name]) for name in lower}


# The l_2 / l_1 ball bound of a tensor affine in the input (below): its Jacobian's row norms are
# computed once per network when it has at most this many entries (outputs x inputs), by vjps of
# one-hot rows in chunks of at most BALL_CHUNK entries.
BALL_ENTRIES = 2 ** 26
BALL_CHUNK = 2 ** 20


def affine_in_input(net) -> dict[str, int]:
    """The tensors that are affine functions of the input (every node from the input to them
    linear), each with the products summed along the way (sum of terms + 1 over those nodes)."""
    graph = net.graph
    out = {name: 0 for name in graph.inputs}
    for node in graph.nodes:
        if node.op in ops.LINEAR and all(i in out for i in node.inputs):
            out[node.output] = sum(out[i] for i in dict.fromkeys(node.inputs)) + \
                ops.LINEAR[node.op][2](node) + 1
    return out


def _input_jacobian_norms(net, name: str, norm: str, device, dtype) -> Optional[Bounds]:
    """(||J_i||_q, ||J^abs_i||_q) per entry i of an input-affine tensor `name` (shape of the
    tensor), J its Jacobian over the flat input and J^abs the same through the nodes with
    absolute weights (|J| <= J^abs; the float J is within gamma J^abs of the real one), q the
    dual of `norm`; cached on the network; None when J has more than BALL_ENTRIES entries."""
    cache = net.__dict__.setdefault("_ball_norms", {})
    key = (name, norm, str(device), dtype)
    if key in cache:
        return cache[key]
    graph = net.graph
    shape, n = graph.shapes[name], sum(size_of(graph.shapes[i]) for i in graph.inputs)
    size = size_of(shape)
    if size * n > BALL_ENTRIES:
        cache[key] = None
        return None
    index = {node.output: k for k, node in enumerate(graph.nodes)}
    params = net.torch_params(device, dtype)
    params_abs = net.torch_params(device, dtype, absolute=True)
    q = {"2": 2.0, "1": float("inf")}[norm]
    norms: list[list[torch.Tensor]] = [[], []]
    chunk = max(1, BALL_CHUNK // n)
    for start in range(0, size, chunk):
        rows = min(chunk, size - start)
        onehot = torch.zeros((rows, size), dtype=dtype, device=device)
        onehot[torch.arange(rows, device=device), start + torch.arange(rows, device=device)] = 1
        for which, p in enumerate((params, params_abs)):
            A = {name: onehot.reshape(rows, *shape)}
            for k in range(index.get(name, -1), -1, -1):
                node = graph.nodes[k]
                if node.output not in A:
                    continue
                a = A.pop(node.output)
                grads = linear_transpose(ops.LINEAR[node.op][0], node, p[k],
                                         [graph.shapes[i] for i in node.inputs], a)
                for i, g in zip(node.inputs, grads):
                    if g is not None:
                        A[i] = A[i] + g if i in A else g
            flat = torch.cat([A.get(i, torch.zeros((rows, *graph.shapes[i]), dtype=dtype,
                                                   device=device)).reshape(rows, -1)
                              for i in graph.inputs], 1)
            norms[which].append(torch.linalg.vector_norm(flat, ord=q, dim=1))
    cache[key] = tuple(torch.cat(part).reshape(shape) for part in norms)
    return cache[key]


def ball_bounds(net, batch: InputBatch, name: str, center: Bounds, products: int
                ) -> Optional[Bounds]:
    """Bounds of an input-affine tensor t(x) = J x + c over the l_2 / l_1 ball (box ignored):
    t(x0) ± eps ||J_i||_q. `center`: sound bounds of t(x0) (IBP of the point x0); `products`:
    the products summed on the way from the input (for the rounding of J, within gamma of
    J^abs)."""
    lo0, up0 = center
    found = _input_jacobian_norms(net, name, batch.norm, lo0.device, lo0.dtype)
    if found is None:
        return None
    norm_j, norm_abs = found
    n = batch.center.shape[1]
    eps = batch.eps.reshape(-1, *[1] * norm_j.dim())
    spread = eps * (norm_j[None] + norm_underflow(batch.norm, n))
    allowance = rounding_slack(eps * (norm_abs[None] + norm_underflow(batch.norm, n)),
                               products + n, eps * n)
    return lo0 - spread - allowance, up0 + spread + allowance


def linear_interval(net, k: int, node, ins: list[Bounds]) -> Bounds:
    """Sound bounds of a linear node's output from its inputs' intervals (rounding included).
    A node without terms (Reshape, Transpose, Slice, Concat, Pad, Expand, Cast over the reals)
    moves entries and constants: its bounds are its inputs' bounds moved, exactly."""
    device, dtype = ins[0][0].device, ins[0][0].dtype
    p = net.torch_params(device, dtype)[k]
    forward, _, terms = ops.LINEAR[node.op]
    if terms(node) == 0:
        return (forward(node, [lo for lo, _ in ins], p).contiguous(),
                forward(node, [up for _, up in ins], p).contiguous())
    p_abs = net.torch_params(device, dtype, absolute=True)[k]
    mids = [(up + lo) / 2 for lo, up in ins]
    rads = [(up - lo) / 2 + UNDERFLOW for lo, up in ins]
    y_mid = forward(node, mids, p)
    y_rad = forward(node, rads, p_abs)
    bias = forward(node, [torch.zeros_like(m[:1]) for m in mids], p).abs()
    magnitude = forward(node, [m.abs() + r for m, r in zip(mids, rads)], p_abs) + bias
    slack = rounding_slack(magnitude, terms(node) + 1)
    return y_mid - y_rad - slack, y_mid + y_rad + slack


def node_interval(net, k: int, node, ins: list[Bounds]) -> Bounds:
    """Sound bounds of node k's output from its inputs' intervals; an end that comes out NaN
    (inf - inf from an unbounded input) is widened to -inf / +inf, so no rule downstream reads a
    NaN bound (a rule that reads 0 * inf as 0 would read it as 0)."""
    lo, up = _node_interval(net, k, node, ins)
    return lo.nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf), \
        up.nan_to_num(nan=math.inf, posinf=math.inf, neginf=-math.inf)


def _node_interval(net, k: int, node, ins: list[Bounds]) -> Bounds:
    if node.op in ops.LINEAR:
        return linear_interval(net, k, node, ins)
    lo, up = ins[0]
    if node.op in ops.ELEMENTWISE:
        return ops.elementwise_interval(node.op, lo, up)
    if node.op == "Softmax":
        return ops.softmax_interval(node.params["axis"], lo, up)
    p = net.torch_params(lo.device, lo.dtype)[k]
    if node.op in ops.BILINEAR:
        return bilinear.interval(node, ins, p)
    if node.op in ops.DISCRETE:
        return discrete.interval(node, ins, p)
    return ops.f_max_pool(node, [lo], p), ops.f_max_pool(node, [up], p)  # monotone, exact


def interval_bounds(net, batch: InputBatch) -> dict[str, Bounds]:
    """IBP bounds (B, *shape) of every tensor; for an l_2 / l_1 ball, the tensors affine in the
    input also within their exact ball bound (`ball_bounds`), as the chain IBP's first layer."""
    bounds = _input_bounds(net, batch)
    ball = BallBounds(net, batch)
    for k, node in enumerate(net.graph.nodes):
        bounds[node.output] = ball.intersect(k, node, node_interval(
            net, k, node, [bounds[i] for i in node.inputs]))
    return bounds


class BallBounds:
    """For an l_2 / l_1 ball: intersects the interval of each input-affine tensor with its ball
    bound, following the point x0 through those nodes (IBP of [x0, x0]); otherwise a no-op."""

    def __init__(self, net, batch: InputBatch):
        self.net, self.batch = net, batch
        self.affine = affine_in_input(net) if batch.norm in ("2", "1") else {}
        if self.affine:
            center = net.split_input(batch.center)
            self.center = {name: (center[name], center[name]) for name in center}

    def intersect(self, k: int, node, interval: Bounds) -> Bounds:
        if node.output not in self.affine:
            return interval
        point = linear_interval(self.net, k, node, [self.center[i] for i in node.inputs])
        self.center[node.output] = point
        found = ball_bounds(self.net, self.batch, node.output, point, self.affine[node.output])
        if found is None:
            return interval
        return torch.maximum(interval[0], found[0]), torch.minimum(interval[1], found[1])


def output_bounds(net, bounds: dict[str, Bounds]) -> Bounds:
    outs = net.graph.outputs
    return (torch.cat([bounds[o][0].flatten(1) for o in outs], 1),
            torch.cat([bounds[o][1].flatten(1) for o in outs], 1))


def interval_margin(batch: InputBatch, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Lower bound of C y - d over the box [lower, upper] of y (rounding included). A zero
    coefficient times an infinite bound counts 0; a NaN bound leaves its rows NaN (unproved)."""
    c_pos, c_neg = batch.C.clamp(min=0), batch.C.clamp(max=0)
    peak = torch.maximum(lower.abs(), upper.abs())
    if torch.isfinite(lower).all() and torch.isfinite(upper).all():
        lo = torch.einsum("bmk,bk->bm", c_pos, lower) + torch.einsum("bmk,bk->bm", c_neg, upper)
        magnitude = torch.einsum("bmk,bk->bm", batch.C.abs(), peak)
    else:
        def times(c: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # (B, m): sum_k c v, 0 * v = 0
            return torch.where(c == 0, torch.zeros((), dtype=c.dtype, device=c.device),
                               c * v[:, None, :]).sum(-1)
        lo = times(c_pos, lower) + times(c_neg, upper)
        magnitude = times(batch.C.abs(), peak)  # (torch.maximum keeps a NaN)
    slack = rounding_slack(magnitude + batch.d.abs(), batch.C.shape[2])
    return outward_margin(batch.C, batch.d, lo - batch.d, slack)


def _dot(t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(b, m): the entries of t (b, m, *S) times v (1 or b, *S), summed per row."""
    t, v = t.flatten(2), v.flatten(1)
    return t @ v[0] if len(v) == 1 else torch.einsum("bmn,bn->bm", t, v)


VMAP_ENTRIES = 2 ** 16  # coefficients from which a batched vjp beats autograd on R samples


def conv_transpose(node, p, shape, coeffs: torch.Tensor) -> Optional[torch.Tensor]:
    """L^T coeffs (R, N, C_in, H, W) for a 2-D Conv node y = L x + b on an input of `shape`
    (N, C_in, H, W), coeffs (R, N, C_out, H', W'): the transposed convolution of coeffs (the
    vector-Jacobian product of the padded input), cropped to the unpadded input; None when the
    node is not a 2-D Conv on a 4-D input."""
    weight = p["weight"]
    if weight.dim() != 4 or len(shape) != 4:
        return None
    n, channels, height, width = shape
    top, left, bottom, right = p["pads"]
    if min(top, left, bottom, right) < 0:  # a crop, not a pad: autograd's transpose
        return None
    stride, dilation = p["strides"], p["dilations"]
    c = coeffs.reshape(coeffs.shape[0] * n, *coeffs.shape[2:])
    padding = []
    for axis, size in enumerate((height + top + bottom, width + left + right)):
        reached = (c.shape[2 + axis] - 1) * stride[axis] + dilation[axis] * \
            (weight.shape[2 + axis] - 1) + 1
        padding.append(size - reached)  # input rows past the last window: no coefficient
        if not 0 <= padding[-1] < max(stride[axis], dilation[axis]):
            return None
    grad = torch.nn.functional.conv_transpose2d(c, weight, None, stride=stride,
                                                dilation=dilation, groups=p["group"],
                                                output_padding=padding)
    grad = grad[:, :, top:top + height, left:left + width]
    return grad.reshape(coeffs.shape[0], n, channels, height, width)


def linear_transpose(forward, node, p, shapes: list, coeffs: torch.Tensor,
                     batched_from: int = VMAP_ENTRIES) -> list[Optional[torch.Tensor]]:
    """L^T applied to coeffs (R, *out) for a linear node y = L(x) + b, `forward` its op: one
    (R, *in_i) per input, None for an input y does not read (the bias drops out; differentiable
    in coeffs when coeffs requires grad: alpha-CROWN's slopes, bab's split scores). From
    `batched_from` coefficients the forward runs once on one zero sample and its vjp is batched
    over the R rows (autograd's is_grads_batched: the same sums as autograd on R samples,
    without R forward passes; torch.func's vjp would import torch._dynamo, seconds of start-up);
    below it, or for an op whose backward has no batching rule, autograd on R samples. A 2-D
    Conv is transposed directly (`conv_transpose`: the same sums, no autograd graph of its own
    when coeffs requires grad)."""
    if node.op == "Conv":
        found = conv_transpose(node, p, shapes[0], coeffs)
        if found is not None:
            return [found, *[None] * (len(shapes) - 1)]
    if coeffs.numel() >= batched_from:
        try:
            with torch.enable_grad():
                xs = [torch.zeros((1, *s), dtype=coeffs.dtype, device=coeffs.device,
                                  requires_grad=True) for s in shapes]
                y = forward(node, xs, p)
                grads = torch.autograd.grad(
                    y, xs, coeffs.reshape(len(coeffs), *y.shape), is_grads_batched=True,
                    allow_unused=True, create_graph=coeffs.requires_grad)
            return [None if g is None else g.squeeze(1) for g in grads]
        except RuntimeError:
            pass
    with torch.enable_grad():
        xs = [torch.zeros((len(coeffs), *s), dtype=coeffs.dtype, device=coeffs.device,
                          requires_grad=True) for s in shapes]
        y = forward(node, xs, p)
        # the gradient of <y, coeffs> (a scalar: no grad_outputs, whose check imports sympy)
        return list(torch.autograd.grad((y * coeffs.reshape(y.shape)).sum(), xs,
                                        allow_unused=True, create_graph=coeffs.requires_grad))


def backward_bound(net, batch: InputBatch, bounds: dict[str, Bounds], start: str,
                   coeffs: torch.Tensor, const: torch.Tensor,
                   alphas: Optional[dict[str, torch.Tensor]] = None,
                   split_terms: Optional[dict[str, torch.Tensor]] = None,
                   record: Optional[dict] = None, reuse: Optional[dict] = None
                   ) -> torch.Tensor:
    """Sound lower bound (B, m) of coeffs . t + const over the input set, t the tensor `start`
    (coeffs (B, m, *shape of t)), by a backward linear pass through the DAG.

    `alphas[r]` (B or 1, m, size of r): lower slopes in [0, 1] of the unstable entries of the
    Relu node with output r (CROWN's adaptive slope elsewhere; alpha-CROWN). `split_terms[r]`
    (B or 1, m, size): beta * s for that Relu's input z, each split entry carrying s z >= 0
    (s = +1 active, -1 inactive, 0 unsplit) and beta >= 0 (beta-CROWN): on the set where the
    constraints hold, coeffs . t + const >= that - sum beta s z, so the term is subtracted from
    the coefficients on z (its one float subtraction charged through the carried |A|).
    `record[r]`, if given, receives the coefficients (detached, (B, m, size)) on Relu output r,
    and `record[-1]` those (B, m, input_size) on the flat input. `reuse`: a dict the caller
    keeps across passes over the same `bounds` (alpha / beta steps): what depends on the bounds
    only (each linear node's bias and output magnitude, each Relu's relaxation) is computed on
    the first pass and read back on the others (the same numbers)."""
    graph, b, m = net.graph, coeffs.shape[0], coeffs.shape[1]
    device, dtype = coeffs.device, coeffs.dtype
    params = net.torch_params(device, dtype)
    params_abs = net.torch_params(device, dtype, absolute=True)
    index = {node.output: k for k, node in enumerate(graph.nodes)}
    A = {start: coeffs}
    # M[t] >= |A[t]|: the float64 error of the pass so far is at most gamma_n M[t] . |t| (plus
    # what `owed` holds); a linear node settles it against its output's magnitude,
    # M . (|L| max|x| + |b|) with max|x| from the bounds, so M never goes through |L| itself.
    M = {start: coeffs.abs()}
    owed = torch.zeros_like(const)  # magnitudes of the constant terms summed
    const = const.clone()
    n_terms = 0
    widest = max(size_of(graph.shapes[n.output]) for n in graph.nodes)  # the constants' sums
    for k in range(index.get(start, -1), -1, -1):
        node = graph.nodes[k]
        if node.output not in A:
            continue
        a, mag = A.pop(node.output), M.pop(node.output)
        shapes = [graph.shapes[i] for i in node.inputs]
        flat = lambda t: t.reshape(b * m, *t.shape[2:])
        if node.op in ops.LINEAR:
            forward, _, terms = ops.LINEAR[node.op]
            n_terms += terms(node) + 1
            if reuse is None or k not in reuse:
                bias = forward(node, [torch.zeros((1, *s), dtype=dtype, device=device)
                                      for s in shapes], params[k])
                with torch.no_grad():  # settled below: mag . |y| <= mag . (|L| max|x| + |b|)
                    in_mag = [torch.maximum(bounds[i][0].abs(), bounds[i][1].abs())
                              for i in node.inputs]
                    step = forward(node, in_mag, params_abs[k]) + bias.abs()
                    # a NaN entry (a zero weight times an infinite input, summed with inf) is
                    # an unbounded one; only a zero coefficient on it (below) makes it count 0
                    step = step.nan_to_num(nan=math.inf)
                    finite = bool(torch.isfinite(step).all())
                if reuse is not None:
                    reuse[k] = (bias, step, finite)
            else:
                bias, step, finite = reuse[k]
            const = const + _dot(a, bias)
            with torch.no_grad():
                spread = mag.detach() * step[:, None] if not finite \
                    else None  # an infinite bound: 0 * inf counts 0 (no coefficient there)
                owed = owed + (_dot(mag.detach(), step) if spread is None else
                               spread.nan_to_num(nan=0.0).flatten(2).sum(-1))
            new = linear_transpose(forward, node, params[k], shapes, flat(a))
            new_mag = [None if g is None else g.detach().abs() for g in new]
        else:
            lo, up = bounds[node.inputs[0]]
            n_terms += 2
            if node.op == "MaxPool":
                # y >= x_k* (k* the candidate of largest lower bound); y <= x_k* when it dominates
                # (l_k* >= u_k for every other k), else y <= the constant upper bound.
                y_up = bounds[node.output][1]
                cand_lo = ops.max_pool_windows(node, lo, params[k], float("-inf"))
                cand_up = ops.max_pool_windows(node, up, params[k], float("-inf"))
                best_lo, pick = cand_lo.max(1)
                onehot = torch.nn.functional.one_hot(pick, cand_lo.shape[1]).movedim(-1, 1).to(dtype)
                others = cand_up.masked_fill(onehot.bool(), float("-inf")).max(1).values
                dominated = (best_lo >= others).to(dtype)[:, None]
                pos, neg = a.clamp(min=0), a.clamp(max=0)
                select = pos + neg * dominated
                const = const + (neg * (1 - dominated) * y_up[:, None]).flatten(2).sum(-1)
                owed = owed + (mag * (1 - dominated) * y_up.abs()[:, None]).flatten(2).sum(-1)
                mag_select = mag * torch.maximum((a > 0).to(dtype), dominated)
                window = lambda nd, xs, p: ops.max_pool_windows(nd, xs[0], p, 0.0)
                spread = lambda t: (t.unsqueeze(2) * onehot[:, None]).reshape(b * m, *onehot.shape[1:])
                new = linear_transpose(window, node, params[k], shapes, spread(select))
                new_mag = linear_transpose(window, node, params[k], shapes, spread(mag_select))
                n_terms += 1
            elif node.op == "Softmax":  # y = S x + b_l / b_u along the axis (ops.softmax_relaxation)
                axis = node.params["axis"] + 2  # in (B, m, *shape)
                slope, b_l, b_u = ops.softmax_relaxation(node.params["axis"], lo, up)
                a_last, mag_last = a.movedim(axis, -1), mag.movedim(axis, -1)
                new = [(a_last.unsqueeze(-2) @ slope[:, None]).squeeze(-2).movedim(-1, axis)]
                new_mag = [(mag_last.unsqueeze(-2) @ slope.abs()[:, None]).squeeze(-2).movedim(-1, axis)]
                pos, neg = a_last.clamp(min=0), a_last.clamp(max=0)
                const = const + (pos * b_l[:, None] + neg * b_u[:, None]).flatten(2).sum(-1)
                owed = owed + (mag_last * torch.maximum(b_l.abs(), b_u.abs())[:, None]).flatten(2).sum(-1)
                n_terms += slope.shape[-1]
                new, new_mag = [flat(t) for t in new], [flat(t) for t in new_mag]
            elif node.op in ops.BOUNDED:  # constant bounds from the interval of the output
                y_lo, y_up = bounds[node.output]
                const = const + (a.clamp(min=0) * y_lo[:, None] + a.clamp(max=0) * y_up[:, None]).flatten(2).sum(-1)
                owed = owed + (mag * torch.maximum(y_lo.abs(), y_up.abs())[:, None]).flatten(2).sum(-1)
                continue
            else:
                if node.op == "Relu":
                    r = reuse.get(("relu", k)) if reuse is not None else None
                    if r is None:
                        r = relu_relaxation(lo, up)
                        if reuse is not None:
                            reuse[("relu", k)] = r
                    a_l, a_u, b_u = r.lower_slope, r.upper_slope, r.upper_intercept
                    if record is not None:
                        record[node.output] = a.detach().reshape(b, m, -1).clone()
                    if alphas is not None and node.output in alphas:  # (B, m, *shape) slopes
                        a_l = torch.where(r.unstable[:, None], alphas[node.output].reshape(
                            -1, m, *lo.shape[1:]), a_l[:, None])
                    else:
                        a_l = a_l[:, None]
                    # b_l = 0 and slopes in [0, 1]: the same numbers as below, fewer passes
                    neg = a.clamp(max=0)
                    new = [torch.where(a > 0, a * a_l, neg * a_u[:, None])]
                    const = const + _dot(neg, b_u)
                    owed = owed + _dot(mag, b_u)
                    new_mag = [mag * torch.maximum(a_l.detach(), a_u[:, None])]
                else:
                    a_l, b_l, a_u, b_u = ops.relax(node.op, lo, up)
                    a_l = a_l[:, None]
                    pos, neg = a.clamp(min=0), a.clamp(max=0)
                    new = [pos * a_l + neg * a_u[:, None]]
                    const = const + (pos * b_l[:, None] + neg * b_u[:, None]).flatten(2).sum(-1)
                    owed = owed + (mag * torch.maximum(b_l.abs(), b_u.abs())[:, None]
                                   ).flatten(2).sum(-1)
                    new_mag = [mag * torch.maximum(a_l.detach().abs(), a_u.abs()[:, None])]
                if split_terms is not None and node.output in split_terms:  # - beta s on z
                    new = [new[0] - split_terms[node.output].reshape(-1, m, *lo.shape[1:])]
                    new_mag = [new_mag[0] + new[0].detach().abs()]  # its rounding: u |new| |z|
                    n_terms += 1
                new, new_mag = [t.reshape(b * m, *t.shape[2:]) for t in new], \
                    [t.reshape(b * m, *t.shape[2:]) for t in new_mag]
        for name, g, gm in zip(node.inputs, new, new_mag):
            if g is None:
                continue
            g, gm = g.reshape(b, m, *g.shape[1:]), gm.reshape(b, m, *gm.shape[1:])
            if name in A:
                A[name], M[name] = A[name] + g, M[name] + gm
            else:
                A[name], M[name] = g, gm
    # What reaches the graph inputs, as one flat coefficient matrix over the flat input.
    parts, mags = [], []
    for name in graph.inputs:
        size = size_of(graph.shapes[name])
        parts.append(A.get(name, torch.zeros((b, m, size), dtype=dtype, device=device)).reshape(b, m, size))
        mags.append(M.get(name, torch.zeros((b, m, size), dtype=dtype, device=device)).reshape(b, m, size))
    coeffs_in, mag_in = torch.cat(parts, -1), torch.cat(mags, -1)
    if record is not None:
        record[-1] = coeffs_in.detach().clone()
    box = torch.maximum(batch.lower.abs(), batch.upper.abs())
    carried = torch.einsum("bmn,bn->bm", mag_in, box) + owed
    lower = concretize(batch, coeffs_in, const)
    lower = lower - rounding_slack(carried, n_terms + widest + coeffs_in.shape[-1])
    return torch.nan_to_num(lower, nan=float("-inf"))


_LAST_BOUNDS: list = []  # [key, (bounds, tightened, resume node or None)] of the last call


def crown_bounds(net, batch: InputBatch, crown_rows: int = CROWN_ROWS,
                 max_rows: int = CROWN_MAX_ROWS) -> dict[str, Bounds]:
    """IBP bounds of every tensor, the inputs of nonlinear nodes tightened by CROWN passes of at
    most `crown_rows` rows each where at most `max_rows` entries need it (for Relu: the
    unstable ones, l < 0 < u, in any input of the batch; for the other ops: all). Inputs of the
    batch with the same input set (VNN-LIB disjuncts of one box) are bounded once, and the last
    call's bounds are reused when asked again for the same sets (alpha-CROWN, then relu-bab's
    root, in one `auto` run): a call cut short by the deadline (IBP past it, still sound) is
    resumed from the first tensor it left untightened."""
    key = torch.cat([batch.lower, batch.upper, batch.center, batch.eps[:, None]], 1)
    if key.requires_grad:  # bab's split scores differentiate through the bounds: no sharing
        return _crown_bounds(net, batch, crown_rows, max_rows)[0]
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    count = int(inverse.max()) + 1 if len(inverse) else 0
    if count == len(batch):
        memo = (id(net), net.fingerprint(), str(key.device), batch.norm, crown_rows, max_rows,
                key.cpu().numpy().tobytes())
        start = _LAST_BOUNDS[1] if _LAST_BOUNDS and _LAST_BOUNDS[0] == memo else None
        if start is not None and start[2] is None:  # complete
            return dict(start[0])
        bounds, resume = _crown_bounds(net, batch, crown_rows, max_rows, start)
        _LAST_BOUNDS[:] = [memo, (dict(bounds), set(), None) if resume is None else resume]
        return bounds
    first = torch.full((count,), len(batch), dtype=torch.long, device=inverse.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(batch), device=inverse.device),
                                 "amin")
    sub = InputBatch(lower=batch.lower[first], upper=batch.upper[first], center=batch.center[first],
                     eps=batch.eps[first], norm=batch.norm, C=batch.C[first], d=batch.d[first])
    return {name: (lo[inverse], up[inverse])
            for name, (lo, up) in crown_bounds(net, sub, crown_rows, max_rows).items()}


def _crown_bounds(net, batch: InputBatch, crown_rows: int, max_rows: int,
                  start: Optional[tuple] = None) -> tuple[dict[str, Bounds], Optional[tuple]]:
    """crown_bounds for distinct input sets, from `start` = (bounds, tightened, node index) of
    an earlier call cut short; also the state to resume this one from (None: complete)."""
    if start is None:
        bounds, tightened, first = _input_bounds(net, batch), set(), 0
        tightened.update(bounds)
    else:
        bounds, tightened, first = dict(start[0]), set(start[1]), start[2]
    resume = None
    # Tensors affine in the input: over a box their interval is already CROWN's bound.
    affine = set(net.graph.inputs) if batch.norm in ("inf", "box") else set()
    for node in net.graph.nodes if affine else []:
        if node.op in ops.LINEAR and all(i in affine for i in node.inputs):
            affine.add(node.output)
    tightened.update(affine)
    ball = BallBounds(net, batch)
    for k, node in enumerate(net.graph.nodes[first:], first):
        name = node.inputs[0] if node.op not in ops.LINEAR else None
        if name is not None and name not in tightened and crown_rows > 0 and resume is None \
                and deadlines.active().expired():  # past the deadline: IBP (still sound)
            resume = (dict(bounds), set(tightened), k)
        if name is not None and name not in tightened and crown_rows > 0 and resume is None:
            before = (dict(bounds), set(tightened), k)
            lo, up = bounds[name]
            flat_lo, flat_up = lo.flatten(1), up.flatten(1)
            if node.op == "Relu":
                rows = torch.nonzero(((flat_lo < 0) & (flat_up > 0)).any(0)).flatten()
            else:
                rows = torch.arange(flat_lo.shape[1], device=lo.device)
            if 0 < len(rows) <= max(max_rows, crown_rows):
                new_lo, new_up, whole = entry_bounds(net, batch, bounds, name, rows, crown_rows,
                                                     deadlines.active())
                if not whole:
                    resume = before  # this tensor again, whole, next time
                bounds[name] = (new_lo.reshape(lo.shape), new_up.reshape(up.shape))
            tightened.add(name)
        bounds[node.output] = ball.intersect(k, node, node_interval(
            net, k, node, [bounds[i] for i in node.inputs]))
    return bounds, resume


def entry_bounds(net, batch: InputBatch, bounds: dict[str, Bounds], name: str, rows: torch.Tensor,
                 chunk_rows: int, deadline) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """CROWN bounds (B, size) on the entries `rows` of tensor `name` (flattened): backward passes
    from +-e_i, `chunk_rows` entries per pass, each intersected with bounds[name], so never
    looser. Stops before a pass once `deadline` has expired (what it has is still sound);
    returns (lower, upper, whether every row was bounded)."""
    lo, up = bounds[name]
    flat_lo, flat_up = lo.flatten(1), up.flatten(1)
    shape = net.graph.shapes[name]
    new_lo, new_up = flat_lo.clone(), flat_up.clone()
    for chunk in torch.split(rows, chunk_rows):
        if deadline.expired():
            return new_lo, new_up, False
        r = len(chunk)
        eye = torch.zeros((r, flat_lo.shape[1]), dtype=lo.dtype, device=lo.device)
        eye[torch.arange(r, device=lo.device), chunk] = 1.0
        coeffs = torch.cat([eye, -eye]).reshape(2 * r, *shape).expand(len(batch), 2 * r, *shape)
        lower = backward_bound(net, batch, bounds, name, coeffs, torch.zeros(
            (len(batch), 2 * r), dtype=lo.dtype, device=lo.device))
        new_lo[:, chunk] = torch.maximum(flat_lo[:, chunk], lower[:, :r])
        new_up[:, chunk] = torch.minimum(flat_up[:, chunk], -lower[:, r:])
    return new_lo, new_up, True


def relu_slopes(net, bounds: dict[str, Bounds], rows: int) -> dict[str, torch.Tensor]:
    """CROWN's adaptive lower slopes, (B, rows, size) per Relu node (keyed by its output), as
    the starting point of alpha-CROWN."""
    out = {}
    for node in net.graph.nodes:
        if node.op == "Relu":
            slope = relu_relaxation(*bounds[node.inputs[0]]).lower_slope.flatten(1)
            out[node.output] = slope[:, None, :].expand(-1, rows, -1).clone()
    return out


def margin_lower_from(net, batch: InputBatch, bounds: dict[str, Bounds],
                      alphas: Optional[dict[str, torch.Tensor]] = None,
                      split_terms: Optional[dict[str, torch.Tensor]] = None,
                      record: Optional[dict] = None, reuse: Optional[dict] = None
                      ) -> torch.Tensor:
    """CROWN's lower bound of C f(x) - d given intermediate bounds; f's outputs concatenated
    (alphas, split terms, record and reuse as in `backward_bound`)."""
    graph = net.graph
    b, m = batch.C.shape[:2]
    best = interval_margin(batch, *output_bounds(net, bounds))
    start = 0
    # One backward pass per graph output (usually one), summed via the output's columns of C.
    total = None
    for name in graph.outputs:
        size = size_of(graph.shapes[name])
        coeffs = batch.C[:, :, start:start + size].reshape(b, m, *graph.shapes[name])
        start += size
        const = -batch.d if total is None else torch.zeros_like(batch.d)
        part = backward_bound(net, batch, bounds, name, coeffs, const, alphas, split_terms, record,
                              reuse)
        total = part if total is None else total + part
    return torch.maximum(best, total)


def ibp_margin_lower(net, batch: InputBatch) -> tuple[torch.Tensor, dict]:
    return interval_margin(batch, *output_bounds(net, interval_bounds(net, batch))), {"bound_passes": 1}


def crown_margin_lower(net, batch: InputBatch, intermediate: str = "crown"
                       ) -> tuple[torch.Tensor, dict]:
    with torch.no_grad():
        bounds = crown_bounds(net, batch, CROWN_ROWS if intermediate == "crown" else 0)
        return margin_lower_from(net, batch, bounds), {"bound_passes": 1}


def certify(net, specs: Sequence[Specification], method: str, options) -> list[Certificate]:
    """IBP or CROWN certificates for a GraphNetwork (options: IBPOptions / CROWNOptions)."""
    if method == "ibp":
        return certify_with_bounds(net, specs, "ibp", ibp_margin_lower, options.device,
                                   options.batch_size)
    if method == "crown":
        if options.dtype != "float64":
            raise InputError(f"option dtype={options.dtype} of method 'crown' is for chain "
                             "networks; graph networks are bounded in float64")
        bound = lambda n, b: crown_margin_lower(n, b, options.intermediate)
        return certify_with_bounds(net, specs, "crown", bound, options.device, options.batch_size)
    raise refuse(method)
