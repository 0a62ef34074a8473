"""alpha-CROWN: CROWN with optimised lower ReLU slopes.

Accepts:   Network of Dense/Conv2d/ReLU layers, or a GraphNetwork (verify.graph: the slopes of
           the final pass, and those of the pre-activation bounds on graphs with at most
           GRAPH_INTERMEDIATE_ROWS unstable Relu inputs); input set = l_inf/l_2/l_1 ball ∩ box,
           or a box.
Returns:   Certificate; margin_lower[j] <= min over the set of z_y - z_j (YES or MAYBE; NO only
           when the set's center is itself a counterexample); details["crown_margin_lower"] holds
           plain CROWN's bounds for comparison.
Method:    CROWN's backward pass (verify.bounds.crown) in which the lower line alpha z of every
           unstable ReLU gets its own slope alpha in [0, 1] per neuron and per margin row. The
           slopes start at CROWN's adaptive choice and are improved by projected gradient ascent
           (Adam, `steps` iterations, learning rate `lr` decayed by `lr_decay` per step) on the sum
           of the margin lower bounds. With `optimize_intermediate` the slopes used for every
           pre-activation bound (one set per neuron bound) are optimised jointly, for the same
           objective, and each neuron keeps its best bound so far. Any slopes in [0, 1] give a
           sound bound, so every iterate is sound and each row keeps the best bound seen; the
           result is never below CROWN (the first iterate) nor IBP. With `early_stop` an input
           stops once all its rows are proved (its margins then stay as they were). Past the
           active deadline (verify.deadline) the iterations stop and the best bounds so far are
           returned: sound, only looser.
Soundness: sound, incomplete.
Reference: Xu et al., "Fast and Complete: Enabling Complete Neural Network Verification with Rapid
           and Massively Parallel Incomplete Verifiers", ICLR 2021.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch

from .. import deadline
from ..certificate import Certificate
from ..network import Network, ReLU, resolve_device
from ..spec import Specification, norm_of
from ..verdict import per_class
from . import InputBatch, certify_with_bounds
from . import crown, ibp
from .ibp import Bounds

Tensor = torch.Tensor


@dataclass
class AlphaCROWNOptions:
    LIMITS: ClassVar[dict[str, str]] = {"batch_size": ">= 1", "steps": ">= 0", "lr": "> 0",
                                        "lr_decay": "in (0, 1]"}  # checked by make_options
    device: str = "auto"
    batch_size: int = 64
    steps: int = 20
    lr: float = 0.1
    lr_decay: float = 0.98
    optimize_intermediate: bool = True
    early_stop: bool = True  # an input stops once all its rows are proved (YES is what counts)


class ProjectedAdam:
    """Adam (Kingma and Ba, 2015) with the learning rate decayed by `decay` after each step, as
    torch.optim.Adam with ExponentialLR computes it: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
    p -= lr/(1-b1^t) * m / (sqrt(v/(1-b2^t)) + eps). Kept here because constructing
    torch.optim.Adam imports torch._dynamo (about 2.7 s, paid by every process that optimises).
    The projection onto the feasible set is the caller's (after `step`)."""

    def __init__(self, params: Sequence[Tensor], lr: float, decay: float = 1.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, self.decay, self.betas, self.eps = lr, decay, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def ascend(self, objective: Tensor, slopes) -> None:
        """One step up the scalar `objective`, then the Relu `slopes` projected onto [0, 1]
        (which keeps the next iterate sound)."""
        self.zero_grad()
        (-objective).backward()
        self.step()
        with torch.no_grad():
            for alpha in slopes:
                alpha.clamp_(0.0, 1.0)

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        correction1, correction2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denominator = (v.sqrt() / correction2 ** 0.5).add_(self.eps)
            p.addcdiv_(m, denominator, value=-self.lr / correction1)
        self.lr *= self.decay


def initial_slopes(net: Network, batch: InputBatch, bounds: list[Bounds], rows: int,
                    below: int) -> crown.Alphas:
    """CROWN's adaptive slopes, (B, rows, n) per ReLU layer before layer `below`, trainable."""
    alphas = {}
    for k, layer in enumerate(net.layers[:below]):
        if isinstance(layer, ReLU):
            relax = crown.relu_relaxation(*crown.layer_input_bounds(batch, bounds, k))
            slopes = relax.lower_slope[:, None, :].expand(-1, rows, -1)
            alphas[k] = slopes.clone().requires_grad_(True)
    return alphas


def optimized_margin_lower(net: Network, batch: InputBatch, options: AlphaCROWNOptions
                           ) -> tuple[Tensor, Tensor, dict]:
    """(alpha-CROWN lower bounds (B, m), CROWN's (B, m), cost) for C f(x) - d."""
    with torch.no_grad():
        ibp_bounds = ibp.layer_bounds(net, batch)
        bounds, selections = crown.propagate(net, batch, ibp_bounds, include_last=False)
        crown_lower = torch.maximum(crown.margin_lower_from(net, batch, bounds),
                                    crown.ibp_margin_lower(net, batch, ibp_bounds, bounds))
    best = crown_lower.clone()
    final_alphas = initial_slopes(net, batch, bounds, batch.C.shape[1], len(net.layers))
    inner_alphas: dict[int, crown.Alphas] = {}
    if options.optimize_intermediate:
        inner_alphas = {k: initial_slopes(net, batch, bounds, 2 * index.shape[1], k)
                        for k, (index, _) in selections.items() if index.shape[1] > 0}
    trainable = [a for a in final_alphas.values()] + \
        [a for alphas in inner_alphas.values() for a in alphas.values()]
    steps_done, timed_out = 0, False
    if trainable and options.steps > 0 and not (options.early_stop and bool((best > 0).all())):
        optimizer = ProjectedAdam(trainable, options.lr, options.lr_decay)
        timer = deadline.active()
        best_bounds = [(lo.detach(), up.detach()) for lo, up in bounds]
        for step in range(options.steps):
            current = bounds
            if inner_alphas:  # pre-activation bounds from the current slopes, never looser
                current, _ = crown.propagate(net, batch, ibp_bounds, include_last=False,
                                             selections=selections, alphas=inner_alphas,
                                             floor=best_bounds)
                best_bounds = [(lo.detach(), up.detach()) for lo, up in current]
            lower = crown.margin_lower_from(net, batch, current, final_alphas)
            # Every iterate is sound: keep the best per row. With early_stop an input stops
            # improving once all its rows are proved: a batch gives the numbers of one at a time.
            proved = (best > 0).all(dim=1) if options.early_stop else \
                torch.zeros(len(best), dtype=torch.bool, device=best.device)
            best = torch.where(proved[:, None], best, torch.maximum(best, lower.detach()))
            steps_done = step + 1
            if step == options.steps - 1 or options.early_stop and bool((best > 0).all()):
                break
            if timer.expired():  # every iterate is sound: stop with the best bounds so far
                timed_out = True
                break
            optimizer.ascend(lower[~proved].sum(), trainable)
    rows = sum(int(valid.sum()) for _, valid in selections.values())
    passes_per_step = 1 + (len(inner_alphas) if inner_alphas else 0)
    cost = {"bound_passes": len(selections) + 1 + steps_done * passes_per_step,
            "alpha_steps": steps_done,
            "crown_neurons_per_input": round(rows / max(len(batch), 1), 1)}
    if timed_out:
        cost["stopped_at_deadline"] = 1
    return best, crown_lower, cost


def graph_optimized_margin_lower(net, batch: InputBatch, options: AlphaCROWNOptions
                                 ) -> tuple[Tensor, Tensor, dict]:
    """The same for a GraphNetwork (verify.bounds.graph): the slopes of every Relu node in the
    backward pass from C are optimised; with `optimize_intermediate`, first the pre-activation
    bounds too (`graph_tightened_bounds`: small graphs only, GRAPH_INTERMEDIATE_ROWS), else the
    intermediate bounds stay CROWN's."""
    from . import graph

    with torch.no_grad():
        bounds = graph.crown_bounds(net, batch)
        crown_lower = graph.margin_lower_from(net, batch, bounds)
    best = crown_lower.clone()
    inner_cost: dict = {}
    if options.optimize_intermediate and options.steps > 0 and \
            not (options.early_stop and bool((best > 0).all())):
        bounds, inner_cost = graph_tightened_bounds(net, batch, bounds, options)
        if inner_cost:  # CROWN on the tighter bounds (its slopes: the start below)
            with torch.no_grad():
                best = torch.maximum(best, graph.margin_lower_from(net, batch, bounds))
    alphas = {name: a.requires_grad_(True) for name, a in
              graph.relu_slopes(net, bounds, batch.C.shape[1]).items()}
    best_slopes = {name: a.detach().clone() for name, a in alphas.items()}
    steps_done, timed_out = 0, False
    if alphas and options.steps > 0 and not (options.early_stop and bool((best > 0).all())):
        optimizer = ProjectedAdam(list(alphas.values()), options.lr, options.lr_decay)
        timer = deadline.active()
        reuse: dict = {}  # graph.backward_bound's, over the fixed bounds
        for step in range(options.steps):
            if timer.expired():  # every iterate is sound: stop with the best bounds so far
                timed_out = True
                break
            lower = graph.margin_lower_from(net, batch, bounds, alphas, reuse=reuse)
            if not lower.requires_grad:  # no Relu slope reaches the margin (e.g. behind a
                break  # Product / Quotient, bounded by its interval): CROWN's bound is final
            proved = (best > 0).all(dim=1) if options.early_stop else \
                torch.zeros(len(best), dtype=torch.bool, device=best.device)
            better = (lower.detach() > best) & ~proved[:, None]
            best = torch.where(proved[:, None], best, torch.maximum(best, lower.detach()))
            for name, alpha in alphas.items():  # the slopes of each row's best iterate
                best_slopes[name][better] = alpha.detach()[better]
            steps_done = step + 1
            if options.early_stop and bool((best > 0).all()):
                break
            optimizer.ascend(lower[~proved].sum(), alphas.values())
    _remember_slopes(net, batch, best_slopes)
    cost = {"bound_passes": 1 + steps_done, "alpha_steps": steps_done, **inner_cost}
    if timed_out or inner_cost.get("stopped_at_deadline"):
        cost["stopped_at_deadline"] = 1
    return best, crown_lower, cost


def graph_relu_inputs(net) -> list[str]:
    """The Relu nodes' input tensors of a GraphNetwork, in topological order, without repeats
    and without those affine in the input (over a box their interval is CROWN's bound already:
    nothing to optimise)."""
    from . import graph

    affine = set(graph.affine_in_input(net))
    out = []
    for node in net.graph.nodes:
        z = node.inputs[0] if node.op == "Relu" else None
        if z is not None and z not in affine and z not in out:
            out.append(z)
    return out


def _relu_ancestors(net, name: str) -> set[str]:
    """Outputs of the Relu nodes that `name` depends on (whose slopes its CROWN bound uses)."""
    producer = {node.output: node for node in net.graph.nodes}
    seen, stack, out = set(), [name], set()
    while stack:
        t = stack.pop()
        node = producer.get(t)
        if node is None or t in seen:
            continue
        seen.add(t)
        if node.op == "Relu":
            out.add(t)
        stack.extend(node.inputs)
    return out


def graph_optimized_intermediate(net, batch: InputBatch, bounds: dict[str, Bounds],
                                 targets: Sequence[str], steps: int, lr: float = 0.1,
                                 lr_decay: float = 0.98, max_rows: int = 1024
                                 ) -> tuple[dict[str, Bounds], dict]:
    """alpha-CROWN on the pre-activation bounds of a GraphNetwork: for each tensor z in
    `targets` (Relu inputs, topological order), min and max of each unstable entry z_i
    (l_i < 0 < u_i in some input of the batch; at most `max_rows` of them, the widest) are
    bounded by backward passes from +-e_i whose Relu lower slopes, one set per bound and per
    upstream Relu, follow `steps` of projected Adam on the sum of the bounds. Each bound keeps
    its best iterate and is intersected with the given one (every slope in [0, 1] is sound), so
    the result is never looser; later targets are bounded with the earlier ones' new bounds.
    Stops at the active deadline with what it has (sound). Returns the bounds (a new dict; the
    tensors downstream of a tightened z keep their old, still sound, bounds) and a cost dict."""
    from . import graph

    bounds = dict(bounds)
    timer = deadline.active()
    cost = {"intermediate_targets": 0, "intermediate_rows": 0, "intermediate_steps": 0}
    for z in targets:
        if timer.expired():
            cost["stopped_at_deadline"] = 1
            break
        lo, up = bounds[z]
        shape = net.graph.shapes[z]
        flat_lo, flat_up = lo.flatten(1), up.flatten(1)
        open_ = (flat_lo < 0) & (flat_up > 0)
        width = torch.where(open_, flat_up - flat_lo, torch.zeros_like(flat_lo)).max(0).values
        rows = torch.nonzero(open_.any(0)).flatten()
        if len(rows) == 0:
            continue
        if len(rows) > max_rows:
            rows = rows[torch.argsort(width[rows], descending=True)[:max_rows]]
        r, b = len(rows), len(batch)
        eye = torch.zeros((r, flat_lo.shape[1]), dtype=lo.dtype, device=lo.device)
        eye[torch.arange(r, device=lo.device), rows] = 1.0
        coeffs = torch.cat([eye, -eye]).reshape(2 * r, *shape).expand(b, 2 * r, *shape)
        const = torch.zeros((b, 2 * r), dtype=lo.dtype, device=lo.device)
        ancestors = _relu_ancestors(net, z)
        alphas = {name: a.requires_grad_(True) for name, a in
                  graph.relu_slopes(net, bounds, 2 * r).items() if name in ancestors}
        best = torch.cat([flat_lo[:, rows], -flat_up[:, rows]], 1)
        optimizer = ProjectedAdam(list(alphas.values()), lr, lr_decay)
        reuse: dict = {}  # (the bounds are fixed while z's are optimised)
        for step in range(steps + 1):
            value = graph.backward_bound(net, batch, bounds, z, coeffs, const, alphas,
                                         reuse=reuse)
            best = torch.maximum(best, value.detach())
            cost["intermediate_steps"] += 1
            if step == steps or not value.requires_grad:
                break
            if timer.expired():
                cost["stopped_at_deadline"] = 1
                break
            optimizer.ascend(value.sum(), alphas.values())
        new_lo, new_up = flat_lo.clone(), flat_up.clone()
        new_lo[:, rows], new_up[:, rows] = best[:, :r], -best[:, r:]
        bounds[z] = (new_lo.reshape(lo.shape), new_up.reshape(up.shape))
        cost["intermediate_targets"] += 1
        cost["intermediate_rows"] += r
    return bounds, cost


GRAPH_INTERMEDIATE_ROWS = 256  # optimise a graph's pre-activation bounds only when its Relu
# inputs have at most this many unstable entries in all (each step costs about one backward pass
# per entry: cifar10_resnet's resnet_4b has about 1100, where 10 steps on its last Relu input
# alone moved the final bound less than relu-bab gains in the same time)
_REMEMBERED: list = []  # [key, bounds] of the last optimised intermediate bounds (one input set)


def _set_keys(net, batch: InputBatch) -> list[tuple]:
    """Identifies each input set of the batch on this network (for `remembered_bounds`)."""
    rows = torch.cat([batch.lower, batch.upper, batch.center, batch.eps[:, None]], 1)
    head = (id(net), net.fingerprint(), str(rows.device), batch.norm)
    return [(*head, row.tobytes()) for row in rows.detach().cpu().numpy()]


_SLOPES: dict = {}  # (input set key, row C, d) -> {Relu output: best slopes}, one network's
SLOPES_ROWS = 4096  # at most this many rows remembered (the last call's)


def _remember_slopes(net, batch: InputBatch, slopes: dict[str, Tensor]) -> None:
    """Keep each row's best final-pass slopes of a graph alpha-CROWN call for relu-bab's root
    (`remembered_slopes`); replaces what an earlier call left."""
    _SLOPES.clear()
    b, m = batch.C.shape[:2]
    if b * m > SLOPES_ROWS:
        return
    C, d = batch.C.detach().cpu().numpy(), batch.d.detach().cpu().numpy()
    for i, key in enumerate(_set_keys(net, batch)):
        for j in range(m):
            _SLOPES[(key, C[i, j].tobytes(), d[i, j].tobytes())] = \
                {name: a[i, j].detach().clone() for name, a in slopes.items()}


def remembered_slopes(net, batch: InputBatch, C: np.ndarray, d: np.ndarray
                      ) -> list[Optional[dict[str, Tensor]]]:
    """Per row C[i] . y - d[i] on this batch's one input set: the best final-pass slopes (per
    Relu output, flat) that the last graph alpha-CROWN call found for it, or None (any slopes in
    [0, 1] are sound: relu-bab starts its root from them)."""
    if len(batch) != 1 or not _SLOPES:
        return [None] * len(C)
    key = _set_keys(net, batch)[0]
    C, d = np.asarray(C, dtype=np.float64), np.asarray(d, dtype=np.float64)
    return [_SLOPES.get((key, C[i].tobytes(), d[i].tobytes())) for i in range(len(C))]


def remembered_bounds(net, batch: InputBatch) -> Optional[dict[str, Bounds]]:
    """The bounds `graph_optimized_margin_lower` last optimised, when they are for this network
    and this batch's one input set (relu-bab's root reads them: sound, at least as tight as
    graph.crown_bounds); else None."""
    if len(batch) != 1 or not _REMEMBERED or _REMEMBERED[0] != _set_keys(net, batch)[0]:
        return None
    return dict(_REMEMBERED[1])


def graph_tightened_bounds(net, batch: InputBatch, bounds: dict[str, Bounds],
                           options: AlphaCROWNOptions) -> tuple[dict[str, Bounds], dict]:
    """`graph_optimized_intermediate` on every Relu input of a GraphNetwork (`options.steps`,
    `lr`, `lr_decay`), once per distinct input set of the batch, when the unstable entries number
    at most GRAPH_INTERMEDIATE_ROWS; else the bounds as given. The result for a batch of one
    input set is remembered for relu-bab (`remembered_bounds`)."""
    targets = graph_relu_inputs(net)
    key = torch.cat([batch.lower, batch.upper, batch.center, batch.eps[:, None]], 1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(batch), dtype=torch.long,
                       device=inverse.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(batch), device=inverse.device),
                                 "amin")
    sub = {name: (lo[first], up[first]) for name, (lo, up) in bounds.items()}
    unstable = sum(int(((sub[z][0] < 0) & (sub[z][1] > 0)).flatten(1).sum(1).max())
                   for z in targets) if targets else 0
    if not targets or unstable == 0 or unstable > GRAPH_INTERMEDIATE_ROWS or options.steps == 0:
        return bounds, {}
    sub_batch = InputBatch(lower=batch.lower[first], upper=batch.upper[first],
                           center=batch.center[first], eps=batch.eps[first], norm=batch.norm,
                           C=batch.C[first], d=batch.d[first])
    tight, cost = graph_optimized_intermediate(net, sub_batch, sub, targets, options.steps,
                                               options.lr, options.lr_decay)
    if len(first) == 1:  # (cut short at the deadline: still sound, and no looser)
        _REMEMBERED[:] = [_set_keys(net, sub_batch)[0],
                          {name: (lo.detach(), up.detach()) for name, (lo, up) in tight.items()}]
    return {name: (lo[inverse], up[inverse]) for name, (lo, up) in tight.items()}, cost


def _group_key(spec: Specification) -> tuple:
    return norm_of(spec.input_set), spec.output.C.shape


def certify(net: Network, specs: Sequence[Specification], options: AlphaCROWNOptions
            ) -> list[Certificate]:
    """alpha-CROWN certificates, batched on `options.device`; CROWN's bounds in `details`."""
    device = resolve_device(options.device)
    out: list[Optional[Certificate]] = [None] * len(specs)
    groups: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(_group_key(spec), []).append(i)
    for indices in groups.values():
        for start in range(0, len(indices), options.batch_size):
            chunk = indices[start:start + options.batch_size]
            recorded: dict[str, np.ndarray] = {}

            def margin_lower(net: Network, batch: InputBatch) -> tuple[Tensor, dict]:
                optimize = graph_optimized_margin_lower if getattr(net, "is_graph", False) \
                    else optimized_margin_lower
                lower, crown_lower, cost = optimize(net, batch, options)
                recorded["crown"] = crown_lower.detach().cpu().numpy()
                return lower, cost

            # One group, at most batch_size specs: certify_with_bounds makes exactly one batch,
            # in this order, so the recorded CROWN rows line up with `chunk`.
            certs = certify_with_bounds(net, [specs[i] for i in chunk], "alpha-crown",
                                        margin_lower, device, len(chunk))
            for row, (i, cert) in enumerate(zip(chunk, certs)):
                cert.details["crown_margin_lower"] = per_class(
                    specs[i], recorded["crown"][row], net.output_size)
                cert.details["steps"] = options.steps
                cert.details["lr"] = options.lr
                if cert.cost.get("stopped_at_deadline") and not cert.proved:
                    cert.reason = (f"timeout: alpha-CROWN stopped at its deadline after "
                                   f"{cert.cost.get('alpha_steps')} of {options.steps} steps; "
                                   f"{cert.reason}")
                out[i] = cert
    return out  # type: ignore[return-value]
