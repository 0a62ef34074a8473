"""LP: the triangle relaxation of every unstable ReLU, solved exactly as a linear program.

Accepts:   Network of Dense/Conv2d/ReLU layers; input set = l_inf/l_1 ball ∩ box or a box (HiGHS);
           l_2 ball ∩ box (a second-order cone: cvxpy with Clarabel).
Returns:   Certificate; margin_lower[j] <= min over the set of z_y - z_j (YES or MAYBE; NO when the
           LP's own optimal input, or the set's center, is a float64-confirmed counterexample).
Method:    neuron bounds from bounds/ (IBP, intersected with CROWN by default; option `lp_tighten`:
           "LP-all", two LPs per unstable neuron, layer by layer); the triangle z >= 0, z >= y,
           z <= u (y - l) / (u - l) for each unstable neuron, stable ones linear (`relu_encoding`,
           shared with the MILP). One model per input, one warm-started objective per margin row.
Trusted:   nothing the solver reports as a bound. Each row's lower bound is the Lagrangian bound
           recomputed in float64 (with a rounding allowance) from the solver's duals, valid for any
           duals; a YES also needs an optimal solver status and a bound above the solver's
           feasibility tolerance.
Soundness: sound, incomplete. With the same neuron bounds it is at least as tight as IBP and CROWN.
Reference: Ehlers, "Formal Verification of Piece-Wise Linear Feed-Forward Neural Networks", ATVA
           2017 (triangle); Salman et al., "A Convex Relaxation Barrier to Tight Robustness
           Verification of Neural Networks", NeurIPS 2019 (LP-all).
"""

from __future__ import annotations

import importlib
import time
import warnings
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import highspy
import numpy as np
import torch

from ..backends import check_choice, check_choices
from ..certificate import Certificate
from ..network import AFFINE, Network, ReLU
from ..spec import Box, InputSet, Specification
from ..verdict import certificate_from_bounds, row_name, validated_counterexample
from . import InputBatch, ibp
from .relu_encoding import (TRIANGLE, NumpyBounds, ReluProgram, build_program, highs_tolerance,
                            lagrangian_bound, run_highs, set_objective, to_highs)

BOUND_SOURCES = ("ibp", "crown")


@dataclass
class LPOptions:
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"bounds": BOUND_SOURCES}
    bounds: str = "crown"  # neuron bounds: "ibp", or "crown" (intersected with IBP)
    lp_tighten: bool = False  # LP-all: tighten each unstable neuron by two LPs, layer by layer


# --------------------------------------------------------------------------- neuron bounds

def _bounds_function(name: str):
    """`layer_bounds` of bounds/<name>.py (imported on first use)."""
    check_choice(name, BOUND_SOURCES, "bounds")
    if name == "ibp":
        return ibp.layer_bounds
    try:
        return importlib.import_module("verify.bounds.crown").layer_bounds
    except ModuleNotFoundError as error:
        if error.name != "verify.bounds.crown":
            raise
        return None


def neuron_bounds(net: Network, spec: Specification, source: str = "crown"
                  ) -> tuple[list[NumpyBounds], str]:
    """Per-layer float64 bounds (entry k: output of net.layers[k]) and the name of what made
    them: IBP, intersected with CROWN for source "crown" (each can only shrink the interval)."""
    batch = InputBatch.from_specs([spec], torch.device("cpu"))
    crown_bounds = _bounds_function(source)
    bounds = [(lo[0].numpy().copy(), up[0].numpy().copy())
              for lo, up in ibp.layer_bounds(net, batch)]
    used = "ibp"
    if crown_bounds is not None and source == "crown":
        for k, (lo, up) in enumerate(crown_bounds(net, batch)):
            c_lo = lo[0].detach().cpu().double().numpy()
            c_up = up[0].detach().cpu().double().numpy()
            bounds[k] = (np.maximum(bounds[k][0], c_lo), np.minimum(bounds[k][1], c_up))
        used = "ibp+crown"
    elif source == "crown":
        used = "ibp (verify.bounds.crown not installed)"
    return bounds, used


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


def tighten_with_lp(net: Network, input_set: InputSet, bounds: Sequence[NumpyBounds],
                    deadline: Optional[float] = None) -> tuple[list[NumpyBounds], int]:
    """LP-all: for each affine layer but the last, in order, bound every unstable neuron by two
    triangle LPs (min and max) over the layers before it, then pass the tighter bounds on by
    interval arithmetic. Each new bound is a Lagrangian bound (sound), intersected with the old
    one. Returns the bounds and the number of LPs solved. Stops refining at `deadline`."""
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
        if len(unstable) == 0 or (deadline is not None and time.perf_counter() > deadline):
            continue
        prefix = Network(net.layers[:k + 1], net.input_shape, name=f"{net.name}[:{k + 1}]")
        program = build_program(prefix, input_set, bounds[:k + 1], TRIANGLE)
        solver = RowSolver(program)
        for i in unstable:
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


def interval_margin_lower(net: Network, spec: Specification, bounds: Sequence[NumpyBounds]
                          ) -> np.ndarray:
    """IBP's margin lower bounds (C folded into the last layer) from the given neuron bounds."""
    batch = InputBatch.from_specs([spec], torch.device("cpu"))
    as_torch = [(torch.as_tensor(lo)[None], torch.as_tensor(up)[None]) for lo, up in bounds]
    return ibp.margin_bounds(net, batch, as_torch)[0][0].numpy()


# --------------------------------------------------------------------------- one LP per row

@dataclass
class RowResult:
    lower: float  # sound lower bound on the row's minimum (-inf if none)
    primal: float  # the solver's objective value (not trusted)
    optimal: bool
    status: str
    x: Optional[np.ndarray]  # the solver's optimal input (a candidate point)


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
        cost, offset, cost_error = self.program.objective(np.asarray(c, dtype=np.float64), d)
        self.n_solves += 1
        if self.program.ball is not None:
            return self._minimize_cone(cost, offset, cost_error)
        set_objective(self.highs, cost, offset)
        run_highs(self.highs)
        status = self.highs.getModelStatus()
        info = self.highs.getInfo()
        solution = self.highs.getSolution()
        optimal = status == highspy.HighsModelStatus.kOptimal
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
    """One RowResult per property row of `spec`."""
    solver = RowSolver(program)
    rows = [solver.minimize(c, d) for c, d in zip(spec.output.C, spec.output.d)]
    return rows, solver


# --------------------------------------------------------------------------- certify

def certify_one(net: Network, spec: Specification, options: LPOptions) -> Certificate:
    t0 = time.perf_counter()
    bounds, source = neuron_bounds(net, spec, options.bounds)
    n_tighten = 0
    if options.lp_tighten:
        bounds, n_tighten = tighten_with_lp(net, spec.input_set, bounds)
    program = build_program(net, spec.input_set, bounds, TRIANGLE)
    rows, solver = solve_rows(program, spec)
    # Never looser than IBP on the same neuron bounds (mathematically the LP is at least as
    # tight; the max only absorbs the cone solver's ~1e-8 inaccuracy in its duals).
    lower = np.maximum([r.lower for r in rows], interval_margin_lower(net, spec, bounds))
    not_optimal = [i for i, r in enumerate(rows) if not r.optimal]
    # Where the solver's number becomes a YES: each lower bound is our own float64 Lagrangian
    # bound (valid for any duals); it must also clear the solver's feasibility tolerance
    # (`solver.tolerance`: HiGHS primal/dual feasibility, or Clarabel's tol_feas), and every row
    # must have been solved to optimality.
    yes_tolerance, reason = solver.tolerance, ""
    if not_optimal:
        yes_tolerance = np.inf
        i = not_optimal[0]
        reason = (f"LP solver did not reach optimality for {row_name(spec, i)} "
                  f"(status: {rows[i].status}); bound {lower[i]:.6g} not trusted for a YES")
    candidates = [r.x for r in rows if r.x is not None]
    if reason and any(validated_counterexample(net, spec, x) is not None for x in candidates):
        reason = ""
    return certificate_from_bounds(
        net, spec, "lp", lower, candidates=candidates, yes_tolerance=yes_tolerance,
        reason=reason, time_s=time.perf_counter() - t0,
        cost={"lps": solver.n_solves + n_tighten, "unstable_neurons": program.unstable_neurons},
        details={"bounds": source + ("+lp" if options.lp_tighten else ""),
                 "solver": "clarabel" if program.ball is not None else "highs",
                 "tolerance": solver.tolerance,
                 "lp_primal": [r.primal for r in rows]})


def certify(net: Network, specs: Sequence[Specification], options: LPOptions) -> list[Certificate]:
    """LP certificates, one model per specification (sequential; the solver is single-threaded)."""
    check_choices(options, "lp")
    return [certify_one(net, spec, options) for spec in specs]
