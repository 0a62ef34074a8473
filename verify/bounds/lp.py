"""LP: the triangle relaxation of every unstable ReLU, solved exactly as a linear program.

Accepts:   Network of Dense/Conv2d/ReLU layers, or a GraphNetwork (rows per node from
           verify.graph.encoding); input set = l_inf/l_1 ball ∩ box or a box (HiGHS);
           l_2 ball ∩ box (a second-order cone: cvxpy with Clarabel).
Returns:   Certificate; margin_lower[j] <= min over the set of z_y - z_j (YES or MAYBE; NO when the
           LP's own optimal input, or the set's center, is a float64-confirmed counterexample).
Method:    neuron bounds from bounds/ (IBP, intersected with CROWN by default; option `lp_tighten`:
           "LP-all", two LPs per unstable neuron, layer by layer); the triangle z >= 0, z >= y,
           z <= u (y - l) / (u - l) for each unstable neuron, stable ones linear (`relu_encoding`,
           shared with the MILP). One model per input, one warm-started objective per margin row.
Trusted:   nothing the solver reports as a bound. Each row's lower bound is the Lagrangian bound
           recomputed in float64 (with a rounding allowance) from the solver's duals, valid for any
           duals, used only on a row solved to optimality, and never below CROWN's/IBP's on the
           same neuron bounds (theirs alone on a row not solved); a YES needs every row above
           the solver's feasibility tolerance.
           Rows past the deadline (option `timeout`, `verify.deadline`) are not solved.
Soundness: sound, incomplete. With the same neuron bounds it is at least as tight as IBP and CROWN.
Reference: Ehlers, "Formal Verification of Piece-Wise Linear Feed-Forward Neural Networks", ATVA
           2017 (triangle); Salman et al., "A Convex Relaxation Barrier to Tight Robustness
           Verification of Neural Networks", NeurIPS 2019 (LP-all).
"""

from __future__ import annotations

import time
import warnings
import weakref
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import highspy
import numpy as np
import torch

from .. import deadline
from ..options import check_choice, check_choices
from ..certificate import Certificate
from ..errors import InputError
from ..network import AFFINE, Network, ReLU
from ..spec import Box, InputSet, Specification
from ..verdict import certificate_from_bounds, row_name
from . import InputBatch, ibp
from .highs_session import highs_tolerance, run_highs, set_objective, to_highs
from .relu_encoding import TRIANGLE, NumpyBounds, ReluProgram, build_program, lagrangian_bound

BOUND_SOURCES = ("ibp", "crown")
_GRAPH_BOUNDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # net -> (set, bounds)


@dataclass
class LPOptions:
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"bounds": BOUND_SOURCES}
    bounds: str = "crown"  # neuron bounds: "ibp", or "crown" (intersected with IBP)
    lp_tighten: bool = False  # LP-all: tighten each unstable neuron by two LPs, layer by layer
    timeout: float = 0.0  # seconds per input (0: none); rows left then get the CROWN/IBP bound


# --------------------------------------------------------------------------- neuron bounds

def neuron_bounds(net: Network, spec: Specification, source: str = "crown"
                  ) -> tuple[list[NumpyBounds], str]:
    """Per-layer float64 bounds (entry k: output of net.layers[k]) and the name of what made
    them: IBP, intersected with CROWN for source "crown" (each can only shrink the interval).
    A GraphNetwork gets a dict: tensor name -> bounds of its flat entries (`graph.crown_bounds`,
    IBP with CROWN on the inputs of nonlinear nodes)."""
    check_choice(source, BOUND_SOURCES, "bounds")
    batch = InputBatch.from_specs([spec], torch.device("cpu"))
    if getattr(net, "is_graph", False):
        from . import graph  # (first use)

        # The bounds depend on the input set only: the disjuncts of a VNN-LIB query share them.
        key = (source, batch.norm, *(t.numpy().tobytes() for t in
                                     (batch.lower, batch.upper, batch.center, batch.eps)))
        cached = _GRAPH_BOUNDS.get(net)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                found = graph.interval_bounds(net, batch) if source == "ibp" \
                    else graph.crown_bounds(net, batch)
            cached = _GRAPH_BOUNDS[net] = (key, {name: (lo[0].reshape(-1).numpy(),
                                                        up[0].reshape(-1).numpy())
                                                 for name, (lo, up) in found.items()})
        return ({name: (lo.copy(), up.copy()) for name, (lo, up) in cached[1].items()},
                "ibp" if source == "ibp" else "ibp+crown")
    bounds = [(lo[0].numpy().copy(), up[0].numpy().copy())
              for lo, up in ibp.layer_bounds(net, batch)]
    if source == "ibp":
        return bounds, "ibp"
    from .crown import layer_bounds  # (first use)
    for k, (lo, up) in enumerate(layer_bounds(net, batch)):
        c_lo = lo[0].detach().cpu().double().numpy()
        c_up = up[0].detach().cpu().double().numpy()
        bounds[k] = (np.maximum(bounds[k][0], c_lo), np.minimum(bounds[k][1], c_up))
    return bounds, "ibp+crown"


def _interval_refine(net: Network, bounds: list[NumpyBounds], k: int) -> None:
    """Intersect layer k's bounds with interval arithmetic from layer k-1's (in place)."""
    layer = net.layers[k]
    lo, up = bounds[k - 1]
    if isinstance(layer, ReLU):
        new_lo, new_up = np.maximum(lo, 0.0), np.maximum(up, 0.0)
    else:
        params = net.torch_params(torch.device("cpu"))[k]
        t_lo, t_up = ibp.affine_interval(layer, params, torch.as_tensor(lo)[None],
                                         torch.as_tensor(up)[None])
        new_lo, new_up = t_lo[0].numpy(), t_up[0].numpy()
    bounds[k] = (np.maximum(bounds[k][0], new_lo), np.minimum(bounds[k][1], new_up))


def tighten_with_lp(net: Network, input_set: InputSet, bounds: Sequence[NumpyBounds]
                    ) -> tuple[list[NumpyBounds], int]:
    """LP-all: for each affine layer but the last, in order, bound every unstable neuron by two
    triangle LPs (min and max) over the layers before it, then pass the tighter bounds on by
    interval arithmetic. Each new bound is a Lagrangian bound (sound), intersected with the old
    one. Returns the bounds and the number of LPs solved. Stops refining once the active
    deadline (`verify.deadline`) has passed: what it has is sound."""
    if getattr(net, "is_graph", False):
        raise InputError("lp_tighten is not available on graph networks yet (their neuron "
                         "bounds are IBP and CROWN's): drop the option")
    bounds = [(lo.copy(), up.copy()) for lo, up in bounds]
    n_lps = 0
    first_is_exact = isinstance(input_set, Box) or input_set.norm == "inf"
    seen_affine = False
    for k, layer in enumerate(net.layers[:-1]):
        if k > 0:
            _interval_refine(net, bounds, k)
        if not isinstance(layer, AFFINE):
            continue
        if not seen_affine and first_is_exact:  # interval bounds of W x + b over a box are exact
            seen_affine = True
            continue
        seen_affine = True
        lo, up = bounds[k]
        unstable = np.flatnonzero((lo < 0) & (up > 0))
        if len(unstable) == 0 or deadline.active().expired():
            continue
        prefix = Network(net.layers[:k + 1], net.input_shape, name=f"{net.name}[:{k + 1}]")
        program = build_program(prefix, input_set, bounds[:k + 1], TRIANGLE)
        solver = RowSolver(program)
        for i in unstable:
            if deadline.active().expired():
                break
            before = (lo[i], up[i])
            for sign in (1.0, -1.0):
                c = np.zeros(len(lo))
                c[i] = sign
                result = solver.minimize(c, 0.0)
                n_lps += 1
                if sign > 0:
                    lo[i] = max(lo[i], result.lower)
                else:
                    up[i] = min(up[i], -result.lower)
            if lo[i] > up[i]:  # crossed: one of the two LPs is wrong; keep the earlier bounds
                lo[i], up[i] = before
    for k in range(1, len(net.layers)):
        _interval_refine(net, bounds, k)
    return bounds, n_lps


def relaxed_margin_lower(net: Network, spec: Specification, bounds: Sequence[NumpyBounds]
                          ) -> np.ndarray:
    """max(IBP, CROWN) lower bounds of the margin rows C f(x) - d from the given neuron bounds
    (IBP's last step, and CROWN's backward pass relaxing over them): both sound, and what the
    LP and the MILP report where their solver's answer cannot be used."""
    from .crown import margin_lower_from  # (first use)

    batch = InputBatch.from_specs([spec], torch.device("cpu"))
    if getattr(net, "is_graph", False):
        from . import graph  # (first use)

        shapes = net.graph.shapes
        as_dict = {name: (torch.as_tensor(lo).reshape(1, *shapes[name]),
                          torch.as_tensor(up).reshape(1, *shapes[name]))
                   for name, (lo, up) in bounds.items()}
        with torch.no_grad():
            return graph.margin_lower_from(net, batch, as_dict)[0].numpy()
    as_torch = [(torch.as_tensor(lo)[None], torch.as_tensor(up)[None]) for lo, up in bounds]
    with torch.no_grad():
        lower = torch.maximum(ibp.margin_bounds(net, batch, as_torch)[0],
                              margin_lower_from(net, batch, as_torch))
    return lower[0].numpy()


# --------------------------------------------------------------------------- one LP per row

@dataclass
class RowResult:
    lower: float  # sound lower bound on the row's minimum (-inf if none)
    primal: float  # the solver's objective value (not trusted)
    optimal: bool
    status: str
    x: Optional[np.ndarray]  # the solver's optimal input (a candidate point)


TIMEOUT = "timeout"  # RowResult.status of a row the deadline left unsolved


class RowSolver:
    """One model per input; `minimize(c, d)` bounds min c^T f(x) - d with warm-started re-solves.
    HiGHS for linear programs, cvxpy + Clarabel when the program holds an l_2 ball."""

    def __init__(self, program: ReluProgram):
        self.program = program
        self.n_solves = 0
        if program.ball is None:
            self.highs = to_highs(program)
            self.tolerance = highs_tolerance(self.highs)
        else:
            self._build_cone()

    def minimize(self, c: np.ndarray, d: float) -> RowResult:
        """One row's bound; past the active deadline (`verify.deadline`) a "timeout" row with no
        bound, and HiGHS stops at it (its time limit is what remains)."""
        budget = deadline.active()
        if budget.expired():
            return RowResult(-np.inf, np.nan, False, TIMEOUT, None)
        cost, offset, cost_error = self.program.objective(np.asarray(c, dtype=np.float64), d)
        self.n_solves += 1
        if self.program.ball is not None:
            return self._minimize_cone(cost, offset, cost_error)
        set_objective(self.highs, cost, offset)
        self.highs.setOptionValue("time_limit", max(min(budget.remaining(), 1e7), 1e-3))
        run_highs(self.highs)
        status = self.highs.getModelStatus()
        info = self.highs.getInfo()
        solution = self.highs.getSolution()
        optimal = status == highspy.HighsModelStatus.kOptimal
        if status == highspy.HighsModelStatus.kTimeLimit:
            return RowResult(-np.inf, np.nan, False, TIMEOUT, None)
        lower = -np.inf
        if solution.dual_valid:
            lower = lagrangian_bound(self.program, cost, offset, cost_error,
                                     np.asarray(solution.row_dual))
        x = np.asarray(solution.col_value)[self.program.input_cols] if solution.value_valid \
            else None
        return RowResult(lower, float(info.objective_function_value), optimal,
                         self.highs.modelStatusToString(status), x)

    # l_2 balls: the same rows plus a second-order cone, solved by Clarabel through cvxpy
    def _build_cone(self) -> None:
        import cvxpy as cp

        p = self.program
        v = cp.Variable(p.n_cols)
        self._cost = cp.Parameter(p.n_cols)
        A = p.matrix.tocsr()
        equal = np.flatnonzero(p.row_lower == p.row_upper)
        above = np.flatnonzero(np.isfinite(p.row_lower) & (p.row_lower != p.row_upper))
        below = np.flatnonzero(np.isfinite(p.row_upper) & (p.row_lower != p.row_upper))
        inputs, center, eps = p.ball
        self._rows = (equal, above, below)
        self._cons = [A[equal] @ v == p.row_lower[equal], A[above] @ v >= p.row_lower[above],
                      A[below] @ v <= p.row_upper[below], v >= p.col_lower, v <= p.col_upper,
                      cp.SOC(cp.Constant(eps), v[inputs] - center)]
        self._v = v
        self._problem = cp.Problem(cp.Minimize(self._cost @ v), self._cons)
        self.tolerance = 1e-8  # Clarabel's default feasibility tolerance (tol_feas)

    def _minimize_cone(self, cost, offset, cost_error) -> RowResult:
        import cvxpy as cp

        p = self.program
        self._cost.value = cost
        try:
            with warnings.catch_warnings():  # "solution may be inaccurate": seen in the status
                warnings.simplefilter("ignore")
                self._problem.solve(solver=cp.CLARABEL)
            status = str(self._problem.status)
        except cp.error.SolverError as error:
            return RowResult(-np.inf, np.nan, False, f"solver error: {error}", None)
        equal, above, below = self._rows
        duals = [c.dual_value for c in self._cons]
        if any(d is None for d in duals[:5]):
            return RowResult(-np.inf, np.nan, False, status, None)
        y = np.zeros(p.n_rows)
        y[equal] -= np.asarray(duals[0]).reshape(-1)  # cvxpy: L = f + nu (A v - b)
        y[above] += np.asarray(duals[1]).reshape(-1)
        y[below] -= np.asarray(duals[2]).reshape(-1)
        inputs = p.ball[0]
        box_dual = (np.asarray(duals[3]).reshape(-1)[inputs]
                    - np.asarray(duals[4]).reshape(-1)[inputs])
        lower = lagrangian_bound(p, cost, offset, cost_error, y, box_dual)
        value = self._v.value
        x = None if value is None else np.asarray(value)[inputs]
        primal = float(self._problem.value) + offset if self._problem.value is not None else np.nan
        return RowResult(lower, primal, status == cp.OPTIMAL, status, x)


def solve_rows(program: ReluProgram, spec: Specification) -> tuple[list[RowResult], RowSolver]:
    """One RowResult per property row of `spec` (rows past the deadline: status "timeout")."""
    solver = RowSolver(program)
    rows = [solver.minimize(c, d) for c, d in zip(spec.output.C, spec.output.d)]
    return rows, solver


# --------------------------------------------------------------------------- certify

def trusted_lower(rows: Sequence[RowResult], relaxed: np.ndarray) -> np.ndarray:
    """Per row, the bound a verdict may use: max(Lagrangian, IBP/CROWN `relaxed`) for a row solved
    to optimality, else `relaxed` alone (a failed solve's bound is sound but not relied on)."""
    return np.array([max(r.lower, relaxed[i]) if r.optimal else relaxed[i]
                     for i, r in enumerate(rows)])


def certify_one(net: Network, spec: Specification, options: LPOptions) -> Certificate:
    with deadline.limit(options.timeout or None):
        return _certify_one(net, spec, options)


def _certify_one(net: Network, spec: Specification, options: LPOptions) -> Certificate:
    t0 = time.perf_counter()
    bounds, source = neuron_bounds(net, spec, options.bounds)
    n_tighten = 0
    if options.lp_tighten:
        bounds, n_tighten = tighten_with_lp(net, spec.input_set, bounds)
    program = build_program(net, spec.input_set, bounds, TRIANGLE)
    rows, solver = solve_rows(program, spec)
    lp_lower = np.array([r.lower for r in rows])
    # Mathematically the LP is at least as tight as IBP and CROWN on the same neuron bounds. A
    # solver that fails (timeout, "infeasible" on a badly scaled model, the cone solver's ~1e-8
    # inaccuracy) can leave its Lagrangian bound below theirs: the larger sound bound is reported
    # (CROWN's alone where the solve failed), so the order IBP <= CROWN <= LP holds, and the rows
    # where the reported bound is CROWN's/IBP's are named in details["crown_bound_rows"].
    relaxed = relaxed_margin_lower(net, spec, bounds)
    lower = trusted_lower(rows, relaxed)
    # Where the solver's number becomes a YES: each lower bound is our own float64 Lagrangian
    # bound (valid for any duals) on a row solved to optimality, or IBP's/CROWN's (pure
    # arithmetic) on any row; every row must clear the solver's feasibility tolerance
    # (`solver.tolerance`: HiGHS primal/dual feasibility, or Clarabel's tol_feas).
    yes_tolerance, reason = solver.tolerance, ""
    unproved = sorted((i for i in range(len(rows)) if lower[i] <= yes_tolerance),
                      key=lambda i: lower[i])
    failed = [i for i in unproved if not rows[i].optimal]
    timeouts = [i for i in failed if rows[i].status == TIMEOUT]
    if timeouts:
        reason = (f"timeout{f' after {options.timeout:g} s' if options.timeout else ''}: "
                  f"{len(timeouts)} LP row(s) not solved; their bounds are CROWN's and IBP's "
                  f"(lowest {lower[timeouts[0]]:.6g}, {row_name(spec, timeouts[0])})")
    elif failed:
        i = failed[0]
        reason = (f"LP solver did not reach optimality for {row_name(spec, i)} "
                  f"(status: {rows[i].status}); its bound is CROWN's and IBP's, {lower[i]:.6g}")
    candidates = [r.x for r in rows if r.x is not None]
    details = {"bounds": source + ("+lp" if options.lp_tighten else ""),
               "solver": "clarabel" if program.ball is not None else "highs",
               "tolerance": solver.tolerance, "lp_primal": [r.primal for r in rows]}
    below = {row_name(spec, i): {"lp": float(lp_lower[i]), "crown_or_ibp": float(relaxed[i]),
                                  "lp_status": rows[i].status}
             for i in range(len(rows)) if relaxed[i] > lp_lower[i] or not rows[i].optimal}
    if below:
        details["crown_bound_rows"] = below
    return certificate_from_bounds(
        net, spec, "lp", lower, candidates=candidates, yes_tolerance=yes_tolerance,
        reason=reason, time_s=time.perf_counter() - t0,
        cost={"lps": solver.n_solves + n_tighten, "unstable_neurons": program.unstable_neurons},
        details=details)


def certify(net: Network, specs: Sequence[Specification], options: LPOptions) -> list[Certificate]:
    """LP certificates, one model per specification (sequential; the solver is single-threaded)."""
    check_choices(options, "lp")
    return [certify_one(net, spec, options) for spec in specs]
