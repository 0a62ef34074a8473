"""Branch and bound over input boxes: complete for low-dimensional inputs (e.g. ACAS Xu's 5).

Accepts:   Network; input set = a box (or an l_inf ball ∩ box); a violation region given as a
           disjunction of conjunctions "A f(x) <= b" (VNN-LIB), or a robustness property.
Returns:   Certificate (robustness) or `BabResult` (VNN-LIB): proved, counterexample, or unknown
           when the time or box budget runs out.
Method:    keep a stack of sub-boxes per disjunct. Each round bounds a batch of them with CROWN
           (or IBP) at once, best first: a box is discarded when some row of A f(x) - b has a
           lower bound > 0 there (the conjunction cannot hold). A short PGD from the centers of
           the most suspicious boxes looks for a counterexample. The rest are split in two along
           the input whose halving raises the bound most to first order (the bound's gradient
           with respect to the box's ends, times the width), and pushed back.
Soundness: sound and complete for boxes: a sub-box is dropped only when its bound proves it; a
           counterexample is replayed by the float64 forward pass. Terminates (for a property
           that holds strictly, or fails strictly) as boxes shrink, within budget.
Reference: Wang et al., "Formal Security Analysis of Neural Networks using Symbolic Intervals"
           (ReluVal), USENIX Security 2018; Bunel et al., "Branch and Bound for Piecewise Linear
           Neural Network Verification", JMLR 2020.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from ..certificate import Certificate
from ..errors import InputError
from ..network import Network, resolve_device
from ..spec import Box, LpBall, Specification
from ..verdict import certificate_from_bounds
from ..bounds import InputBatch


@dataclass
class BaBOptions:
    device: str = "auto"
    bounds: str = "crown"  # "crown" or "ibp"
    batch_size: int = 1024  # boxes bounded per pass
    timeout: float = 60.0  # seconds per query
    max_boxes: int = 5_000_000  # total boxes bounded before giving up


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
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower bounds (B, rows) of A f(x) - b on each box, and per input a split score.

    The score of input i is (dL/dlower_i - dL/dupper_i) x width_i for L = the box's best row
    bound: to first order, how much halving the box along i raises the bound (the bound is
    differentiable in the box, through the intermediate bounds too). The bounds themselves are
    the same numbers `crown.margin_lower_bounds` / `ibp.margin_lower_bounds` compute."""
    from ..bounds import crown, ibp

    if bounds not in ("crown", "ibp"):
        raise InputError(f"unknown bounds '{bounds}' for bab: use crown or ibp")
    lower = lower.detach().clone().requires_grad_(True)
    upper = upper.detach().clone().requires_grad_(True)
    take = len(lower)
    batch = InputBatch(lower=lower, upper=upper, center=(lower + upper) / 2,
                       eps=torch.zeros(take, dtype=lower.dtype, device=lower.device), norm="box",
                       C=A.expand(take, -1, -1), d=b.expand(take, -1))
    with torch.enable_grad():
        interval = ibp.layer_bounds(net, batch)
        row_lower = ibp.margin_bounds(net, batch, interval)[0]
        if bounds == "crown":  # CROWN's margin bound over CROWN's neuron bounds, within IBP's
            neuron, _ = crown.propagate(net, batch, interval, include_last=False)
            row_lower = torch.maximum(row_lower, crown.margin_lower_from(net, batch, neuron))
        best = row_lower.max(dim=1).values
        grad_lower, grad_upper = torch.autograd.grad(best.sum(), (lower, upper))
    width = (upper - lower).detach()
    scores = (grad_lower - grad_upper) * width + 1e-12 * width  # ties: the widest side
    return row_lower.detach(), scores.nan_to_num(0.0)


def falsify(net: Network, lower: torch.Tensor, upper: torch.Tensor, A: torch.Tensor,
            b: torch.Tensor, start: torch.Tensor, steps: int = 20) -> tuple[torch.Tensor, float]:
    """Projected sign-gradient descent on max_i (A f(x) - b)_i, each start inside its own box
    (lower, upper: (R, n)). Returns the best point and its value (<= 0: a candidate violation)."""
    x = start.clone().requires_grad_(True)
    width = upper - lower
    best_x, best_v = start[0], float("inf")
    for step in range(steps + 1):
        values = (net.torch_forward(x) @ A.T - b).max(dim=1).values
        i = int(values.argmin())
        if values[i].item() < best_v:
            best_x, best_v = x.detach()[i].clone(), values[i].item()
        if best_v <= 0 or step == steps:
            break
        (grad,) = torch.autograd.grad(values.sum(), x)
        size = 0.5 * width * (1 - step / steps) / 2
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - size * grad.sign(), lower), upper)
        x.requires_grad_(True)
    return best_x, best_v


def falsify_box(net: Network, box: Box, A: np.ndarray, b: np.ndarray, device="auto",
                restarts: int = 1024, steps: int = 60, seed: int = 0) -> Optional[np.ndarray]:
    """A point of the box where every row of A f(x) <= b holds (float PGD; not yet replayed)."""
    device = resolve_device(device)
    lo = torch.as_tensor(box.lower, dtype=torch.float64, device=device)[None]
    up = torch.as_tensor(box.upper, dtype=torch.float64, device=device)[None]
    generator = torch.Generator().manual_seed(seed)
    starts = torch.rand((restarts, lo.shape[1]), generator=generator, dtype=torch.float64)
    x, value = falsify(net, lo, up, torch.as_tensor(A, dtype=torch.float64, device=device),
                       torch.as_tensor(b, dtype=torch.float64, device=device),
                       lo + starts.to(device) * (up - lo), steps=steps)
    return x.cpu().numpy() if value <= 0 else None


class BoxSearch:
    """Branch and bound on one disjunct, one batch of boxes per `step()`: several searches can
    share a time budget round-robin, so an easy counterexample in a later disjunct is not
    starved by a hard earlier one."""

    def __init__(self, net: Network, box: Box, A: np.ndarray, b: np.ndarray,
                 options: BaBOptions, check=None):
        self.net, self.options, self.check = net, options, check
        self.device = resolve_device(options.device)
        if options.bounds not in ("crown", "ibp"):
            raise InputError(f"unknown bounds '{options.bounds}' for bab: use crown or ibp")
        self.A = torch.as_tensor(A, dtype=torch.float64, device=self.device)
        self.b = torch.as_tensor(b, dtype=torch.float64, device=self.device)
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
        if not len(self.lower):
            result.status = "unsat"
            return
        if result.boxes >= options.max_boxes:
            result.status, result.reason = "unknown", f"box budget of {options.max_boxes} spent"
            return
        take = min(options.batch_size, len(self.lower))
        order = torch.argsort(self.priority)
        chosen, rest = order[:take], order[take:]
        lo, up = self.lower[chosen], self.upper[chosen]
        self.lower, self.upper, self.priority = self.lower[rest], self.upper[rest], \
            self.priority[rest]
        row_lower, scores = bound_and_split_scores(self.net, lo, up, self.A, self.b,
                                                   self.options.bounds)
        result.boxes += take
        result.passes += 1
        best_row = row_lower.max(dim=1).values
        refuted = best_row > 0  # some row of A f(x) - b is > 0 on the whole box
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


def search_all(searches: list[BoxSearch], deadline: float) -> list[BoxSearch]:
    """Step the searches round-robin until one finds a counterexample, all are decided, or the
    deadline passes (the undecided ones then say "timeout")."""
    while True:
        active = [s for s in searches if not s.done]
        if not active or any(s.result.status == "sat" for s in searches):
            return searches
        for s in active:
            if time.perf_counter() > deadline:
                for t in active:
                    if not t.done:
                        t.result.status, t.result.reason = "unknown", "timeout"
                return searches
            s.step()
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
    if isinstance(s, LpBall) and s.norm == "inf":
        return Box(*s.bounding_box())
    raise InputError(f"bab splits input boxes: it takes l_inf balls or boxes, not l_{s.norm} "
                     "balls (use crown, lp or smoothing)")


def certify(net: Network, specs: Sequence[Specification], options: BaBOptions
            ) -> list[Certificate]:
    """Complete robustness check: each row 'C f(x) - d <= 0' is refuted on the box by BaB."""
    out = []
    for spec in specs:
        t0 = time.perf_counter()
        box = _as_box(spec)
        deadline = t0 + options.timeout
        C, d = spec.output.C, spec.output.d
        lower = np.full(len(C), -np.inf)
        candidates, reasons, boxes = [], [], 0

        def check(x, spec=spec) -> bool:
            values = spec.output.values(net.forward(spec.input_set.project(x)))
            return bool(np.any(values <= 0))

        for i in range(len(C)):  # cheap attack on every row before any search
            x = falsify_box(net, box, C[i:i + 1], d[i:i + 1], options.device)
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
            time_s=time.perf_counter() - t0, cost={"boxes": boxes}))
    return out
