"""Branch and bound over input boxes: complete for low-dimensional inputs (e.g. ACAS Xu's 5).

Accepts:   Network or GraphNetwork (verify.graph: smooth activations, pooling, residuals,
           bounded by verify.bounds.graph's CROWN); input set = a box (or an l_inf ball ∩ box);
           a violation region given as a disjunction of conjunctions "A f(x) <= b" (VNN-LIB), or
           a robustness property.
Returns:   Certificate (robustness) or `BabResult` (VNN-LIB): proved, counterexample, or unknown
           when the time or box budget runs out.
Method:    keep a stack of sub-boxes per disjunct. Each round bounds a batch of them with CROWN
           (or IBP) at once, best first: a box is discarded when some row of A f(x) - b has a
           lower bound > 0 there (the conjunction cannot hold); boxes CROWN leaves open get a
           few alpha-CROWN steps on one combined row lam^T (A f(x) - b), lam >= 0, whose positive
           lower bound refutes them too (`optimized_lower`). A short PGD from the centers of
           the most suspicious boxes looks for a counterexample. The rest are split in two along
           the input whose halving raises the bound most to first order (the bound's gradient
           with respect to the box's ends, times the width), and pushed back. Graph networks
           skip the alpha-CROWN and local-MILP steps.
Soundness: sound and complete for boxes: a sub-box is dropped only when its bound proves it; a
           counterexample is replayed by the float64 forward pass. Terminates (for a property
           that holds strictly, or fails strictly) as boxes shrink, within budget: CROWN's bound
           over a box converges to the function's minimum as the box shrinks, for Relu and for
           the smooth ops alike (their linear bounds' error vanishes with the width).
Reference: Wang et al., "Formal Security Analysis of Neural Networks using Symbolic Intervals"
           (ReluVal), USENIX Security 2018; Bunel et al., "Branch and Bound for Piecewise Linear
           Neural Network Verification", JMLR 2020.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch

from .. import deadline as deadlines
from ..options import check_choice, check_choices
from ..certificate import Certificate
from ..errors import InputError
from ..network import Network, resolve_device
from ..spec import Box, LpBall, Specification
from ..verdict import certificate_from_bounds
from ..bounds import InputBatch

NORMS = ("inf",)  # the l_p balls it splits (as their bounding box); read by the registry


@dataclass
class BaBOptions:
    LIMITS: ClassVar[dict[str, str]] = {  # checked by make_options
        "batch_size": ">= 1", "timeout": ">= 0", "max_boxes": ">= 1", "alpha_steps": ">= 0",
        "alpha_lr": "> 0", "alpha_after": ">= 0", "polish_after": ">= 0", "polish_radius": "> 0",
        "polish_time": ">= 0", "polish_starts": ">= 1", "polish_steps": ">= 0"}
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"bounds": ("crown", "ibp")}
    device: str = "auto"
    bounds: str = "crown"  # "crown" or "ibp"
    batch_size: int = 1024  # boxes bounded per pass
    timeout: float = 60.0  # seconds per query (0: none, as for milp; max_boxes still bounds it)
    max_boxes: int = 5_000_000  # total boxes bounded before giving up
    # Once a search has run `alpha_after` seconds (easy ones are done by then), the boxes CROWN
    # leaves open get `alpha_steps` of projected Adam on the final lower ReLU slopes and a convex
    # combination of the violation's rows (0 steps turns it off).
    alpha_steps: int = 20
    alpha_lr: float = 0.5
    alpha_after: float = 3.0
    # A search still open after `polish_after` seconds runs the exact MILP once on a small box
    # (`polish_radius` x the box's width per side) around its best attack point (`local_milp`).
    polish_after: float = 8.0
    polish_radius: float = 0.02
    polish_time: float = 8.0
    polish_starts: int = 4096  # the longer attack whose end points the local MILPs start from
    polish_steps: int = 50


@dataclass
class BabResult:
    status: str  # "unsat" (proved), "sat" (counterexample), "unknown" (budget spent)
    counterexample: Optional[np.ndarray] = None
    reason: str = ""
    boxes: int = 0
    passes: int = 0
    proved_lower: float = np.inf  # min over discarded boxes of their best row's lower bound
    time_s: float = 0.0


def bound_and_split_scores(net: Network, lower: torch.Tensor, upper: torch.Tensor,
                           A: torch.Tensor, b: torch.Tensor, bounds: str
                           ) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Lower bounds (B, rows) of A f(x) - b on each box, per input a split score, and the
    neuron bounds used (detached; IBP's for `bounds="ibp"`).

    The score of input i is (dL/dlower_i - dL/dupper_i) x width_i for L = the box's best row
    bound: to first order, how much halving the box along i raises the bound (the bound is
    differentiable in the box, through the intermediate bounds too). The bounds themselves are
    the same numbers `crown.margin_lower_bounds` / `ibp.margin_lower_bounds` compute. A graph
    network (verify.graph) is bounded by verify.bounds.graph's CROWN / IBP; no neuron bounds."""
    from ..bounds import crown, ibp

    check_choice(bounds, BaBOptions.CHOICES["bounds"], "bounds", "bab")
    if getattr(net, "is_graph", False):
        return _graph_bound_and_split_scores(net, lower, upper, A, b, bounds)
    lower = lower.detach().clone().requires_grad_(True)
    upper = upper.detach().clone().requires_grad_(True)
    batch = _box_batch(lower, upper, A, b)
    with torch.enable_grad():
        neuron = interval = ibp.layer_bounds(net, batch)
        row_lower = ibp.margin_bounds(net, batch, interval)[0]
        if bounds == "crown":  # CROWN's margin bound over CROWN's neuron bounds, within IBP's
            neuron, _ = crown.propagate(net, batch, interval, include_last=False)
            row_lower = torch.maximum(row_lower, crown.margin_lower_from(net, batch, neuron))
        best = row_lower.max(dim=1).values
        grad_lower, grad_upper = torch.autograd.grad(best.sum(), (lower, upper))
    width = (upper - lower).detach()
    scores = (grad_lower - grad_upper) * width + 1e-12 * width  # ties: the widest side
    return (row_lower.detach(), scores.nan_to_num(0.0),
            [(lo.detach(), up.detach()) for lo, up in neuron])


def _graph_bound_and_split_scores(net, lower: torch.Tensor, upper: torch.Tensor,
                                  A: torch.Tensor, b: torch.Tensor, bounds: str
                                  ) -> tuple[torch.Tensor, torch.Tensor, list]:
    """bound_and_split_scores for a GraphNetwork: verify.bounds.graph's CROWN (or IBP) bound,
    differentiated through its intermediate bounds as for a chain."""
    from ..bounds import graph as graph_bounds

    lower = lower.detach().clone().requires_grad_(True)
    upper = upper.detach().clone().requires_grad_(True)
    batch = _box_batch(lower, upper, A, b)
    with torch.enable_grad():
        if bounds == "crown":
            row_lower = graph_bounds.margin_lower_from(net, batch,
                                                       graph_bounds.crown_bounds(net, batch))
        else:
            row_lower = graph_bounds.interval_margin(batch, *graph_bounds.output_bounds(
                net, graph_bounds.interval_bounds(net, batch)))
        grad_lower, grad_upper = torch.autograd.grad(row_lower.max(dim=1).values.sum(),
                                                     (lower, upper), allow_unused=True)
    width = (upper - lower).detach()
    grad_lower = torch.zeros_like(width) if grad_lower is None else grad_lower
    grad_upper = torch.zeros_like(width) if grad_upper is None else grad_upper
    scores = (grad_lower - grad_upper) * width + 1e-12 * width  # ties: the widest side
    return row_lower.detach(), scores.nan_to_num(0.0), []


def _box_batch(lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor, d: torch.Tensor
               ) -> InputBatch:
    """Boxes (B, n) with property rows C (m, k) or (B, m, k) and offsets d as an InputBatch."""
    take = len(lower)
    return InputBatch(lower=lower, upper=upper, center=(lower + upper) / 2,
                      eps=torch.zeros(take, dtype=lower.dtype, device=lower.device), norm="box",
                      C=C.expand(take, -1, -1), d=d.expand(take, -1))


def _end(deadline: Optional[float]) -> float:
    """The sooner of `deadline` (time.monotonic's scale; None: none) and the active one."""
    end = deadlines.active().end
    return end if deadline is None else min(deadline, end)


def optimized_lower(net: Network, lower: torch.Tensor, upper: torch.Tensor, A: torch.Tensor,
                    b: torch.Tensor, neuron: list, steps: int = 20, lr: float = 0.5
                    ) -> torch.Tensor:
    """Per box, a lower bound L (B,) such that L > 0 proves that no x in the box has
    A f(x) <= b (every row), from alpha-CROWN on one combined row.

    For any lam >= 0, A f(x) <= b implies lam^T (A f(x) - b) <= 0; so a positive lower bound of
    lam^T (A f(x) - b) over the box refutes it. lam = softmax(theta) and the final lower ReLU
    slopes alpha in [0, 1] are optimised jointly by projected Adam over the fixed neuron bounds
    `neuron`; every iterate is sound, the best is kept. The row c = fl(lam^T A) and offset
    fl(lam^T b) carry rounding: c f - d' exceeds lam^T (A f - b) by at most
    gamma_m ((|lam|^T |A|) |f| + |lam|^T |b|), subtracted with |f| bounded by the logit bounds.
    """
    from ..bounds import crown, rounding_slack
    from ..bounds.alpha_crown import ProjectedAdam, initial_slopes

    batch = _box_batch(lower, upper, A[None, :1], b[None, :1])
    f_max = torch.maximum(neuron[-1][0].abs(), neuron[-1][1].abs())
    theta = torch.zeros((len(lower), len(A)), dtype=lower.dtype, device=lower.device,
                        requires_grad=True)
    alphas = initial_slopes(net, batch, neuron, 1, len(net.layers))
    optimizer = ProjectedAdam([theta, *alphas.values()], lr)
    best = torch.full((len(lower),), -np.inf, dtype=lower.dtype, device=lower.device)
    end = _end(None)
    with torch.enable_grad():
        for step in range(steps):
            if step > 0 and time.monotonic() > end:  # every iterate is sound: keep the best
                break
            lam = torch.softmax(theta, dim=1)
            C, d = lam @ A, lam @ b
            batch.C, batch.d = C[:, None, :], d[:, None]
            value = crown.margin_lower_from(net, batch, neuron, alphas)[:, 0]
            with torch.no_grad():
                lam_abs = lam.detach().abs()
                magnitude = ((lam_abs @ A.abs()) * f_max).sum(1) + lam_abs @ b.abs()
                best = torch.maximum(best, value.detach() - rounding_slack(
                    magnitude, len(A), f_max.sum(-1)))  # (lam A's entries, times f)
            optimizer.ascend(value.sum(), alphas.values())
    return best


def falsify(net: Network, lower: torch.Tensor, upper: torch.Tensor, A: torch.Tensor,
            b: torch.Tensor, start: torch.Tensor, steps: int = 20, every: bool = False,
            deadline: Optional[float] = None) -> tuple[torch.Tensor, float]:
    """Projected sign-gradient descent on max_i (A f(x) - b)_i, each start inside its own box
    (lower, upper: (R, n)). Returns the best point and its value (<= 0: a candidate violation);
    with `every`, each start's best point (R, n) and value (R,) instead, as tensors. Past
    `deadline` (time.monotonic's scale) or the active one it stops after the current step."""
    end = _end(deadline)
    x = start.clone().requires_grad_(True)
    width = upper - lower
    best_x, best_v = start.clone(), torch.full((len(start),), np.inf, dtype=start.dtype,
                                                device=start.device)
    for step in range(steps + 1):
        values = (net.torch_forward(x) @ A.T - b).max(dim=1).values
        with torch.no_grad():
            better = values < best_v
            best_x[better], best_v[better] = x[better], values[better]
        if bool((best_v <= 0).any()) and not every or step == steps or time.monotonic() > end:
            break
        (grad,) = torch.autograd.grad(values.sum(), x)
        size = 0.5 * width * (1 - step / steps) / 2
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - size * grad.sign(), lower), upper)
        x.requires_grad_(True)
    if every:
        return best_x.detach(), best_v.detach()
    i = int(best_v.argmin())
    return best_x[i].detach().clone(), best_v[i].item()


def falsify_box(net: Network, box: Box, A: np.ndarray, b: np.ndarray, device="auto",
                restarts: int = 1024, steps: int = 60, seed: int = 0, best: bool = False,
                deadline: Optional[float] = None):
    """A point of the box where every row of A f(x) <= b holds (float PGD; not yet replayed),
    else None; with `best`, the best point found and its value max_i (A f(x) - b)_i instead.
    Past `deadline` (or the active one) the descent stops after its current step (`falsify`)."""
    device = resolve_device(device)
    lo = torch.as_tensor(box.lower, dtype=torch.float64, device=device)[None]
    up = torch.as_tensor(box.upper, dtype=torch.float64, device=device)[None]
    generator = torch.Generator().manual_seed(seed)
    starts = torch.rand((restarts, lo.shape[1]), generator=generator, dtype=torch.float64)
    x, value = falsify(net, lo, up, torch.as_tensor(A, dtype=torch.float64, device=device),
                       torch.as_tensor(b, dtype=torch.float64, device=device),
                       lo + starts.to(device) * (up - lo), steps=steps, deadline=deadline)
    if best:
        return x.cpu().numpy(), value
    return x.cpu().numpy() if value <= 0 else None


def local_milp(net: Network, box: Box, A: np.ndarray, b: np.ndarray, center: np.ndarray,
               radius: float, time_limit: float) -> Optional[np.ndarray]:
    """A point x of box ∩ [center -/+ radius (upper - lower)] with A f(x) <= b (every row), or
    None: the exact MILP  min t  s.t.  A f(x) - b <= t  on that small box (big-M over CROWN's
    neuron bounds there, so few binaries), solved with HiGHS within `time_limit`. It reaches the
    thin violation regions a gradient attack stops short of. Not yet replayed."""
    from ..bounds import crown
    from ..bounds.highs_session import run_highs, to_highs
    from ..bounds.relu_encoding import BIG_M, build_program

    reach = radius * (box.upper - box.lower)
    lower = np.maximum(box.lower, center - reach)
    upper = np.minimum(box.upper, center + reach)
    small = Box(lower, upper)
    batch = _box_batch(*(torch.as_tensor(v, dtype=torch.float64)[None]
                         for v in (lower, upper, A, b)))
    neuron = [(lo[0].numpy(), up[0].numpy()) for lo, up in crown.layer_bounds(net, batch)]
    program = build_program(net, small, neuron, BIG_M)
    try:
        highs = to_highs(program, options={"time_limit": max(float(time_limit), 0.01)})
    except InputError:  # e.g. a weight HiGHS would drop: no local MILP, the search goes on
        return None
    t_col = program.n_cols  # t, free; the objective
    highs.addCol(1.0, -np.inf, np.inf, 0, np.zeros(0, dtype=np.int32), np.zeros(0))
    for row, bound in zip(A, b):  # cost . v + offset - t <= 0
        cost, offset, _ = program.objective(row, bound)
        cols = np.nonzero(cost)[0]
        highs.addRow(-np.inf, -offset, len(cols) + 1, np.append(cols, t_col).astype(np.int32),
                     np.append(cost[cols], -1.0))
    run_highs(highs)
    solution = highs.getSolution()
    if not solution.value_valid or highs.getInfo().objective_function_value > 0:
        return None
    return np.clip(np.asarray(solution.col_value)[program.input_cols], lower, upper)


class BoxSearch:
    """Branch and bound on one disjunct, one batch of boxes per `step()`: several searches can
    share a time budget round-robin, so an easy counterexample in a later disjunct is not
    starved by a hard earlier one."""

    def __init__(self, net: Network, box: Box, A: np.ndarray, b: np.ndarray,
                 options: BaBOptions, check=None,
                 hint: Optional[tuple[np.ndarray, float]] = None,
                 strict: Optional[np.ndarray] = None):
        """`strict[i]`: the violation's row i is strict (A_i y < b_i), so a box where
        A_i f(x) - b_i >= 0 holds is refuted too."""
        self.net, self.options, self.check = net, options, check
        self.graph = getattr(net, "is_graph", False)  # no alpha-CROWN, no local MILP (yet)
        self.box, self.A_array, self.b_array = box, A, b
        # The best attack point so far and its value max_i (A f(x) - b)_i, for `polish`.
        self.best_x, self.best_value = hint if hint is not None else (box.center, np.inf)
        self.polished = False
        self.started: Optional[float] = None  # time.monotonic() at the first step
        # The end time (time.monotonic's scale) that search_all sets, and the seconds per box
        # of the last step: a batch is cut to what fits in half the time left, so one step
        # cannot run far past the deadline (a batch's cost grows faster than its size).
        self.end = math.inf
        self.seconds_per_box: Optional[float] = None
        self.last_take = 0
        self.device = resolve_device(options.device)
        check_choices(options, "bab")
        self.A = torch.as_tensor(A, dtype=torch.float64, device=self.device)
        self.b = torch.as_tensor(b, dtype=torch.float64, device=self.device)
        self.strict = torch.zeros(len(b), dtype=torch.bool, device=self.device) if strict is None \
            else torch.as_tensor(np.asarray(strict, dtype=bool), device=self.device)
        self.lower = torch.as_tensor(box.lower, dtype=torch.float64, device=self.device)[None]
        self.upper = torch.as_tensor(box.upper, dtype=torch.float64, device=self.device)[None]
        self.priority = torch.full((1,), -np.inf, dtype=torch.float64, device=self.device)
        self.result = BabResult("searching")
        if A.shape[0] == 0:  # no output constraint: every point of the box violates
            x = box.center
            if check is None or check(x):
                self.result = BabResult("sat", x, "the violation has no output constraint")

    @property
    def done(self) -> bool:
        return self.result.status != "searching"

    def step(self) -> None:
        """Bound one batch (best first), drop the proved boxes, attack and split the rest."""
        result, options = self.result, self.options
        if self.started is None:
            self.started = time.monotonic()
        if not len(self.lower):
            result.status = "unsat"
            return
        if result.boxes >= options.max_boxes:
            result.status, result.reason = "unknown", f"box budget of {options.max_boxes} spent"
            return
        take = min(options.batch_size, len(self.lower))
        left = self.end - time.monotonic()
        if self.seconds_per_box and math.isfinite(left):  # at most twice the last batch
            take = max(1, min(take, 2 * self.last_take, int(0.5 * left / self.seconds_per_box)))
        self.last_take = take
        step_start = time.monotonic()
        order = torch.argsort(self.priority)
        chosen, rest = order[:take], order[take:]
        lo, up = self.lower[chosen], self.upper[chosen]
        self.lower, self.upper, self.priority = self.lower[rest], self.upper[rest], \
            self.priority[rest]
        row_lower, scores, neuron = bound_and_split_scores(self.net, lo, up, self.A, self.b,
                                                           self.options.bounds)
        result.boxes += take
        result.passes += 1
        best_row = row_lower.max(dim=1).values
        # some row of A f(x) - b is > 0 on the whole box (>= 0 for a strict row)
        refuted = (best_row > 0) | ((row_lower >= 0) & self.strict).any(dim=1)
        refine = options.alpha_steps > 0 and options.bounds == "crown" and \
            time.monotonic() - self.started >= options.alpha_after and not self.graph
        if refine and not bool(refuted.all()):
            open_ = ~refuted
            best_row[open_] = torch.maximum(best_row[open_], optimized_lower(
                self.net, lo[open_], up[open_], self.A, self.b,
                [(l[open_], u[open_]) for l, u in neuron], options.alpha_steps, options.alpha_lr))
            refuted = refuted | (best_row > 0)
        self.seconds_per_box = (time.monotonic() - step_start) / take
        if torch.any(refuted):
            result.proved_lower = min(result.proved_lower, best_row[refuted].min().item())
        keep = ~refuted
        if not torch.any(keep):
            if not len(self.lower):
                result.status = "unsat"
            return
        lo, up, best_row, scores = lo[keep], up[keep], best_row[keep], scores[keep]
        # Counterexample search from the centers of the most suspicious boxes left (short PGD
        # inside each box; a candidate is replayed in float64 by `check`).
        suspicious = torch.argsort(best_row)[:128]
        s_lo, s_up = lo[suspicious], up[suspicious]
        x, value = falsify(self.net, s_lo, s_up, self.A, self.b, (s_lo + s_up) / 2, steps=8)
        if value < self.best_value:
            self.best_x, self.best_value = x.cpu().numpy(), value
        if value <= 0 and (self.check is None or self.check(x.cpu().numpy())):
            result.status, result.counterexample = "sat", x.cpu().numpy()
            return
        dim = scores.argmax(dim=1)
        mid = ((lo + up) / 2).gather(1, dim[:, None]).squeeze(1)
        up_left, lo_right = up.clone(), lo.clone()
        rows_idx = torch.arange(len(lo), device=self.device)
        up_left[rows_idx, dim] = mid
        lo_right[rows_idx, dim] = mid
        self.lower = torch.cat([self.lower, lo, lo_right])
        self.upper = torch.cat([self.upper, up_left, up])
        self.priority = torch.cat([self.priority, best_row, best_row])


    def polish(self, deadline: float, candidates: int = 8, seed: int = 1) -> None:
        """Once: a longer attack (`polish_starts` x `polish_steps`), then the exact MILP on a
        small box around each of the best `candidates` points it ends at and the best point so
        far (`local_milp`, each with its share of `polish_time`), until one holds a violation."""
        self.polished = True
        options = self.options
        end = min(time.monotonic() + options.polish_time, deadline)
        if self.done or end - time.monotonic() < 1.0:  # no time left for attack and MILPs
            return
        lo, up = self._box_tensors()
        generator = torch.Generator().manual_seed(seed)
        starts = torch.rand((options.polish_starts, lo.shape[1]), generator=generator,
                            dtype=torch.float64)
        points, values = falsify(self.net, lo, up, self.A, self.b,
                                 lo + starts.to(self.device) * (up - lo),
                                 steps=options.polish_steps, every=True, deadline=end)
        order = torch.argsort(values)[:candidates]
        tries = [(self.best_x, self.best_value)] + \
            [(points[i].cpu().numpy(), values[i].item()) for i in order]
        for x0, value in sorted(tries, key=lambda t: t[1]):
            if value <= 0 and (self.check is None or self.check(x0)):
                x = x0
            elif self.graph:
                continue
            elif time.monotonic() < end:  # each candidate gets at most its share
                x = local_milp(self.net, self.box, self.A_array, self.b_array, x0,
                               options.polish_radius,
                               min(end - time.monotonic(), options.polish_time / len(tries)))
            else:
                return
            if x is not None and (self.check is None or self.check(x)):
                self.result.status, self.result.counterexample = "sat", x
                self.result.reason = "exact MILP on a small box around an attack point"
                return

    def _box_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The searched box as (1, n) tensors on the device."""
        return (torch.as_tensor(self.box.lower, dtype=torch.float64, device=self.device)[None],
                torch.as_tensor(self.box.upper, dtype=torch.float64, device=self.device)[None])


def search_all(searches: list[BoxSearch], deadline: float) -> list[BoxSearch]:
    """Step the searches round-robin until one finds a counterexample, all are decided, or the
    deadline passes (the undecided ones then say "timeout"). A search still open after its
    `polish_after` seconds gets one local exact MILP around its best attack point. `deadline`:
    time.monotonic's scale; the active deadline (verify.deadline) bounds it too."""
    deadline = _end(deadline)
    for s in searches:
        s.end = deadline
    start = time.monotonic()
    while True:
        active = [s for s in searches if not s.done]
        if not active or any(s.result.status == "sat" for s in searches):
            return searches
        for s in active:
            if time.monotonic() > deadline:
                for t in active:
                    if not t.done:
                        t.result.status, t.result.reason = "unknown", "timeout"
                return searches
            s.step()
            if not s.polished and not s.done and \
                    time.monotonic() - start > s.options.polish_after:
                s.polish(deadline)
            if s.result.status == "sat":
                return searches


def refute(net: Network, box: Box, A: np.ndarray, b: np.ndarray, options: BaBOptions,
           deadline: float, check=None) -> BabResult:
    """Prove that no x in `box` has A f(x) <= b (all rows), or find one such x.

    `check(x) -> bool` re-checks a candidate (float64 forward pass plus any extra condition).
    """
    return search_all([BoxSearch(net, box, A, b, options, check)], deadline)[0].result


def _as_box(spec: Specification) -> Box:
    s = spec.input_set
    if isinstance(s, Box):
        return s
    if isinstance(s, LpBall) and s.norm in NORMS:
        return Box(*s.bounding_box())
    raise InputError(f"bab splits input boxes: it takes l_inf balls or boxes, not l_{s.norm} "
                     "balls (use milp for l_1; crown, lp or smoothing for l_1 and l_2)")


def certify(net: Network, specs: Sequence[Specification], options: BaBOptions
            ) -> list[Certificate]:
    """Complete robustness check: each row 'C f(x) - d <= 0' is refuted on the box by BaB."""
    check_choices(options, "bab")
    out = []
    for spec in specs:
        t0 = time.monotonic()
        box = _as_box(spec)
        deadline = _end(t0 + options.timeout if options.timeout > 0 else None)
        C, d = spec.output.C, spec.output.d
        lower = np.full(len(C), -np.inf)
        candidates, reasons, boxes = [], [], 0

        def check(x, spec=spec) -> bool:
            values = spec.output.values(net.forward(spec.input_set.project(x)))
            return bool(np.any(values <= 0))

        for i in range(len(C)):  # cheap attack on every row before any search, in time
            if time.monotonic() > deadline:
                break
            x = falsify_box(net, box, C[i:i + 1], d[i:i + 1], options.device, deadline=deadline)
            if x is not None and check(x):
                candidates.append(x)
                break
        if not candidates:  # row i is violated where C_i f(x) <= d_i
            searches = search_all([BoxSearch(net, box, C[i:i + 1], d[i:i + 1], options, check)
                                   for i in range(len(C))], deadline)
            for i, search in enumerate(searches):
                result = search.result
                boxes += result.boxes
                if result.status == "unsat":
                    lower[i] = result.proved_lower  # > 0: the minimum over the proved leaves
                elif result.status == "sat":
                    candidates.append(result.counterexample)
                elif result.reason:
                    reasons.append(result.reason)
        reason = f"bab stopped: {reasons[0]}" if reasons else ""
        out.append(certificate_from_bounds(
            net, spec, "bab", lower, candidates=candidates, reason=reason,
            time_s=time.monotonic() - t0, cost={"boxes": boxes}))
    return out
