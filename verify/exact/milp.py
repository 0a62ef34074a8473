"""MILP: exact verification by a big-M mixed-integer program on HiGHS.

Accepts:   Network of Dense/Conv2d/ReLU layers, or a GraphNetwork (verify.graph.encoding: exact
           on piecewise-linear graphs, a relaxation with smooth ops or Softmax); input set =
           l_inf/l_1 ball ∩ box, or a box. An l_2 ball is refused (InputError): it is not a
           MILP; use lp, crown or smoothing.
Returns:   Certificate: YES (every row's minimum proved > 0) or NO (a counterexample confirmed by
           the float64 forward pass); MAYBE on timeout, when the solver's minimum lies within
           its tolerance of 0 / its point fails the replay, or on a badly scaled model. With `exact_margins`,
           margin_lower[j] and margin_upper[j] enclose the exact minimum of z_y - z_j.
Method:    neuron bounds interval -> CROWN -> (option `lp_tighten`) LP per neuron, each step only
           shrinking the big-M constants; stable neurons linear, unstable ones a = 1[y >= 0] with
           z >= 0, z >= y, z <= y - l (1 - a), z <= u a (`relu_encoding.BIG_M`, the builder the LP
           shares). The triangle LP screens the rows first: a row whose LP bound clears the
           tolerance needs no MILP, and the LP's optimal inputs are candidate counterexamples.
           Then the optional PGD attack (a cheap NO). The open rows are solved on one HiGHS
           model per input, one objective per row, most violated first, each stopped as soon as
           its sign is decided: a cutoff ("objective_bound") just above the tolerance prunes
           every node that cannot go below it, a callback interrupts once the dual bound clears
           the tolerance or an improving solution's float64 replay violates the property.
Trusted:   HiGHS's MIP dual bound and its "no point below the cutoff" (branch and bound over
           LPs with feasibility tolerance `mip_feasibility_tolerance`, 1e-6; 1e-9 with
           `exact_margins`), only where float64 resolves it: a row counts as proved only when
           its bound exceeds max(tolerance, NOISE_FACTOR x the model's rounding noise) and no
           replayed point (center, samples, LP/attack/incumbent points) lies below it; a model
           whose noise is beyond HiGHS_RESOLUTION is not solved (sound bounds only, MAYBE with
           the reason). A row proved through the cutoff reports margin_lower = the cutoff, all
           that the stop proves; `exact_margins` gives the values. Rows proved by the LP screen
           rest on our own float64 Lagrangian bound instead. Never trusted: the incumbent's
           objective; every candidate point is replayed in float64
           (`verdict.certificate_from_bounds`), and only a replayed violation gives NO.
Soundness: sound; complete up to the solver tolerance on models float64 can resolve (YES or NO;
           MAYBE as said above, and on badly scaled models: docs/milp.md).
Reference: Tjeng, Xiao, Tedrake, "Evaluating Robustness of Neural Networks with Mixed Integer
           Programming", ICLR 2019 (MIPVerify); Cheng et al., ATVA 2017; Lomuscio & Maganti 2017.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional, Sequence

import highspy
import numpy as np

from ..bounds.lp import (BOUND_SOURCES, neuron_bounds, relaxed_margin_lower, solve_rows,
                         tighten_with_lp, trusted_lower)
from ..bounds.highs_session import (highs_tolerance, interrupt_requested, run_highs,
                                    set_objective, to_highs)
from ..bounds.relu_encoding import BIG_M, TRIANGLE, ReluProgram, build_program, lagrangian_bound
from .. import deadline
from ..options import check_choices
from ..certificate import Certificate
from ..errors import InputError
from ..graph.encoding import relaxed_reason
from ..network import Network
from ..spec import LpBall, Specification
from ..verdict import certificate_from_bounds, row_name, validated_counterexample


SAMPLES = 16  # random points of the set replayed besides the center, the LP's and the attack's
NORMS = ("inf", "1")  # linear constraints: an l_2 ball needs a cone; read by the registry


@dataclass
class MILPOptions:
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"bounds": BOUND_SOURCES}
    bounds: str = "crown"  # neuron bounds before tightening: "ibp" or "crown" (∩ IBP)
    lp_tighten: bool = False  # also tighten every unstable neuron by two LPs (slower, smaller M)
    timeout: float = 60.0  # seconds per input (0: none); on expiry MAYBE with the bounds so far
    exact_margins: bool = False  # solve every row to optimality instead of stopping on the sign
    attack: bool = True  # run a short verify.attack.pgd_attack first (a cheap NO)

    def check(self) -> None:
        _check_options(self)


def _refuse_norm(spec: Specification) -> None:
    """InputError for an l_p ball outside NORMS (that is, l_2)."""
    if isinstance(spec.input_set, LpBall) and spec.input_set.norm not in NORMS:
        raise InputError(f"milp cannot encode an l_{spec.input_set.norm} ball (it needs a "
                         "second-order cone, not linear constraints): use --method lp, crown or "
                         "smoothing")


def _check_options(options: MILPOptions) -> None:
    check_choices(options, "milp")
    if not (options.timeout >= 0 and math.isfinite(options.timeout)):
        raise InputError(f"timeout must be a finite number of seconds >= 0, got {options.timeout}")


# --------------------------------------------------------------------------- attack (optional)

def attack_candidates(net: Network, spec: Specification) -> list[np.ndarray]:
    """Points of a short PGD attack (`verify.attack.pgd_attack`): its best point and each row's
    lowest point, all replayed in float64 by the caller."""
    from ..attack import AttackOptions, pgd_attack  # (first use: keeps start-up light)

    found = pgd_attack(net, spec, AttackOptions(device="cpu", restarts=2, steps=30))
    return [np.asarray(found.best_x, dtype=np.float64).reshape(-1),
            *np.asarray(found.row_points, dtype=np.float64).reshape(-1, spec.input_set.dim)]


# --------------------------------------------------------------------------- one row on HiGHS

# Exact margins: close the gap completely, at tolerances 1e-9 (HiGHS's defaults, 1e-6 for the
# MIP, would let the optimum drift by about that much). Sign mode: HiGHS's defaults without the
# sub-MIP and rounding heuristics, which hunt for low incumbents (the LP's points and the attack
# do that here) and cost more than the proof itself on these models.
EXACT_OPTIONS = {"mip_rel_gap": 0.0, "mip_abs_gap": 1e-9, "mip_feasibility_tolerance": 1e-9,
                 "primal_feasibility_tolerance": 1e-9, "dual_feasibility_tolerance": 1e-9}
SIGN_OPTIONS = {f"mip_heuristic_run_{name}": False for name in
                ("feasibility_jump", "rins", "rens", "root_reduced_cost", "zi_round", "shifting")}


def _satisfies(program: ReluProgram, values: np.ndarray, slack: float = 1e-9) -> bool:
    """Whether column values meet every row and column bound (within `slack`, relative)."""
    activity = program.matrix @ values
    scale = 1.0 + np.abs(activity)
    return bool(np.all(activity >= program.row_lower - slack * scale)
                and np.all(activity <= program.row_upper + slack * scale)
                and np.all(values >= program.col_lower) and np.all(values <= program.col_upper))


@dataclass
class RowOutcome:
    lower: float = -math.inf  # the solver's proven bound on the row's minimum (trusted, see top)
    solver_upper: float = math.inf  # the incumbent's objective (not trusted)
    status: str = "not solved"
    timed_out: bool = False
    decided: bool = False  # optimal, or stopped by us on the sign
    nodes: int = 0
    candidates: list = field(default_factory=list)  # incumbent inputs, to be replayed
    counterexample: Optional[np.ndarray] = None  # a replay-confirmed violation found on the way


class MilpRows:
    """One HiGHS model per input; `solve(c, d, ...)` minimises one row, stopping on its sign."""

    def __init__(self, net: Network, spec: Specification, program: ReluProgram, exact: bool,
                 threshold: Optional[float] = None):
        self.net, self.spec, self.program, self.exact = net, spec, program, exact
        self.highs = to_highs(program, options=EXACT_OPTIONS if exact else SIGN_OPTIONS)
        self.tolerance = highs_tolerance(self.highs, integer=True)
        # a row counts as proved once its bound exceeds `threshold` (>= the tolerance)
        self.threshold = self.tolerance if threshold is None else max(threshold, self.tolerance)
        self.cutoff: Optional[float] = None
        self._outcome: Optional[RowOutcome] = None
        if not exact:
            # Sign mode: a cutoff just above the threshold acts like an incumbent of value 0;
            # branch and bound prunes every node whose bound clears it. "Infeasible" then means
            # "no point below the cutoff", trusted only because the model is known to be
            # feasible (the set's center, checked here in float64, satisfies every row).
            if program.integer.any() and \
                    _satisfies(program, program.assignment(net, spec.input_set.center)):
                self.cutoff = 2 * self.threshold
                self.highs.setOptionValue("objective_bound", self.cutoff)
            self.highs.cbMipImprovingSolution.subscribe(self._on_solution)
            self.highs.cbMipInterrupt.subscribe(self._on_interrupt)

    def _on_solution(self, event) -> None:
        outcome = self._outcome
        if outcome is None or event.data_out.objective_function_value > self.threshold:
            return
        x = np.asarray(event.data_out.mip_solution)[self.program.input_cols]
        if validated_counterexample(self.net, self.spec, x) is not None:
            outcome.counterexample = x
        else:
            outcome.candidates.append(x)

    def _on_interrupt(self, event) -> None:
        outcome = self._outcome
        # Stop on the sign: proved (dual bound above the tolerance) or refuted (replayed point).
        # The flag is always written: HiGHS keeps it from one run to the next.
        event.interrupt(interrupt_requested() or outcome is not None and (
            outcome.counterexample is not None or event.data_out.mip_dual_bound > self.threshold))

    def solve(self, c: np.ndarray, d: float, time_limit: float,
              start: Optional[np.ndarray] = None) -> RowOutcome:
        cost, offset, cost_error = self.program.objective(c, d)
        set_objective(self.highs, cost, offset)
        self.highs.setOptionValue("time_limit", max(float(time_limit), 1e-3))
        if start is not None and self.cutoff is None:  # (a start above the cutoff misleads)
            values = self.program.assignment(self.net, start)
            self.highs.setSolution(len(values), np.arange(len(values), dtype=np.int32), values)
        self._outcome = outcome = RowOutcome()
        run_highs(self.highs)
        self._outcome = None
        status = self.highs.getModelStatus()
        info = self.highs.getInfo()
        outcome.status = self.highs.modelStatusToString(status)
        outcome.timed_out = status == highspy.HighsModelStatus.kTimeLimit
        outcome.decided = status in (highspy.HighsModelStatus.kOptimal,
                                     highspy.HighsModelStatus.kInterrupt)
        outcome.nodes = int(info.mip_node_count)
        dual_bound = float(info.mip_dual_bound)
        if not self.program.integer.any():  # no unstable neuron: HiGHS solved a plain LP, whose
            # bound is our Lagrangian bound from its duals (HiGHS reports no MIP dual bound)
            solution = self.highs.getSolution()
            dual_bound = lagrangian_bound(self.program, cost, offset, cost_error,
                                          np.asarray(solution.row_dual)) \
                if solution.dual_valid else -math.inf
        if status in (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kInterrupt,
                      highspy.HighsModelStatus.kTimeLimit,
                      highspy.HighsModelStatus.kSolutionLimit):
            outcome.lower = dual_bound
        if self.cutoff is not None:
            # Under a cutoff HiGHS proves only "no point below the cutoff": a dual bound above it
            # (or "infeasible": every node pruned) means min >= cutoff, not more.
            if status == highspy.HighsModelStatus.kInfeasible:
                outcome.lower, outcome.decided = self.cutoff, True
            else:
                outcome.lower = min(outcome.lower, self.cutoff)
        elif outcome.lower == math.inf:  # "no feasible point" for a model that has one (the
            outcome.lower, outcome.decided = -math.inf, False  # center): the solver lost it
            outcome.status += " (bound +inf on a feasible model: not trusted)"
        solution = self.highs.getSolution()
        if info.primal_solution_status == 2 and solution.value_valid:  # a feasible incumbent
            outcome.solver_upper = float(info.objective_function_value)
            outcome.candidates.append(np.asarray(solution.col_value)[self.program.input_cols])
        return outcome


# --------------------------------------------------------------------------- certify

def _any_counterexample(net: Network, spec: Specification, points) -> bool:
    return any(validated_counterexample(net, spec, x) is not None for x in points)


def _best_start(net: Network, spec: Specification, points: list[np.ndarray], row: int
                ) -> Optional[np.ndarray]:
    """Of the points (projected into the set), the one with the lowest value of `row`."""
    best, best_value = None, math.inf
    for x in points:
        x = spec.input_set.project(x)
        if not spec.input_set.contains(x):
            continue
        value = spec.output.values(net.forward(x))[row]
        if value < best_value:
            best, best_value = x, value
    return best


# A solver-backed bound counts only where float64 can resolve it: every row's and the
# objective's worst rounding error over the column box (`ReluProgram.rounding_noise`) times
# NOISE_FACTOR must stay below HiGHS's default feasibility tolerance (the scale its tolerances
# are made for); a YES must then clear NOISE_FACTOR x that noise as well as the tolerance.
NOISE_FACTOR = 100.0
HIGHS_RESOLUTION = 1e-6


def _replayed_minimum(net: Network, spec: Specification, points) -> np.ndarray:
    """Per row, the lowest float64 value at any of the points that lies in the set (+inf if
    none): upper bounds on the row minima, against which the solver's lower bounds are checked."""
    best = np.full(len(spec.output.C), np.inf)
    for x in points:
        x = spec.input_set.project(np.asarray(x, dtype=np.float64).reshape(-1))
        if spec.input_set.contains(x):
            best = np.minimum(best, spec.output.values(net.forward(x)))
    return best


def certify_one(net: Network, spec: Specification, options: MILPOptions) -> Certificate:
    _refuse_norm(spec)
    with deadline.limit(options.timeout or None) as budget:
        return _certify_one(net, spec, options, budget)


def _certify_one(net: Network, spec: Specification, options: MILPOptions,
                 budget: deadline.Deadline) -> Certificate:
    t0 = time.perf_counter()
    m = len(spec.output.C)
    cost: dict = {"lps": 0, "milps": 0, "milp_nodes": 0}
    details: dict = {}

    def finish(lower, candidates=(), reason="", yes_tolerance=0.0) -> Certificate:
        cost["unstable_neurons"] = details.get("unstable_neurons")
        return certificate_from_bounds(net, spec, "milp", lower, candidates=list(candidates),
                                       yes_tolerance=yes_tolerance, reason=reason,
                                       time_s=time.perf_counter() - t0, cost=cost,
                                       details=details)

    # 1. Neuron bounds: interval -> CROWN -> LP; each step only shrinks the big-M constants.
    bounds, source = neuron_bounds(net, spec, options.bounds)
    details["bounds"] = source
    if options.lp_tighten:
        bounds, n_lps = tighten_with_lp(net, spec.input_set, bounds)
        cost["lps"] += n_lps
        details["bounds"] += "+lp"
    relaxed_lower = relaxed_margin_lower(net, spec, bounds)
    candidates: list[np.ndarray] = [spec.input_set.center]
    candidates += list(spec.input_set.sample(SAMPLES, np.random.default_rng(0)))
    # 2. The triangle LP screens the rows (sound Lagrangian bounds) and offers its optimal inputs.
    lp_program = build_program(net, spec.input_set, bounds, TRIANGLE)
    details["unstable_neurons"] = lp_program.unstable_neurons
    lp_rows, lp_solver = solve_rows(lp_program, spec)
    cost["lps"] += lp_solver.n_solves
    lower = np.maximum(relaxed_lower, [r.lower for r in lp_rows])
    candidates += [r.x for r in lp_rows if r.x is not None]
    if budget.expired():
        lower = trusted_lower(lp_rows, relaxed_lower)
        return finish(lower, candidates, _timeout_reason(spec, lower, range(m), {},
                                                         options.timeout, "the LP screen"),
                      lp_solver.tolerance)
    program = build_program(net, spec.input_set, bounds, BIG_M)
    relaxed = relaxed_reason(program.graph)  # smooth ops, Softmax: the MILP is a relaxation
    if relaxed:
        details["not_exact"] = relaxed
    # 3. What float64 can resolve: the worst rounding error of any row or objective.
    noise, noisiest = max((program.rounding_noise(*program.objective(c, d)[:2])
                           for c, d in zip(spec.output.C, spec.output.d)), key=lambda t: t[0])
    details["rounding_noise"] = noise
    if NOISE_FACTOR * noise > HIGHS_RESOLUTION:
        # HiGHS's tolerances are absolute: on rows this large its "optimal" bounds are noise.
        # Sound bounds only (IBP, CROWN, our Lagrangian LP bound); points are still replayed.
        if options.attack:
            candidates += attack_candidates(net, spec)
        reason = (f"the MILP is not solved: {noisiest} can carry float64 rounding errors up to "
                  f"{noise:.3g} over the neuron bounds, beyond what HiGHS's tolerance "
                  f"{HIGHS_RESOLUTION:g} resolves (badly scaled weights or inputs); the bounds "
                  "are the sound LP, CROWN and IBP ones")
        details["milp_skipped"] = reason
        return finish(trusted_lower(lp_rows, relaxed_lower), candidates, reason,
                      lp_solver.tolerance)
    rows = MilpRows(net, spec, program, options.exact_margins, NOISE_FACTOR * noise)
    tolerance = rows.threshold
    details["tolerance"] = tolerance
    screened = [i for i in range(m) if lower[i] > tolerance and lp_rows[i].optimal]
    if not options.exact_margins:
        if len(screened) == m:
            return finish(lower, candidates, yes_tolerance=tolerance)
        # 4. A cheap NO: the LP's optimal inputs, then the attack's points (all replayed).
        if _any_counterexample(net, spec, candidates):
            return finish(lower, candidates, yes_tolerance=tolerance)
    if options.attack:
        found = attack_candidates(net, spec)
        candidates += found
        if _any_counterexample(net, spec, found) and not options.exact_margins:
            return finish(lower, candidates, yes_tolerance=tolerance)
    # 5. The MILP, row by row, most violated first, on one model.
    todo = [i for i in np.argsort(lower, kind="stable")
            if options.exact_margins or i not in screened]
    refuted = False
    outcomes: dict[int, RowOutcome] = {}
    timed_out: list[int] = []
    sound_lower = lower.copy()
    for i in todo:
        if budget.expired():
            timed_out.append(i)
            continue
        start = _best_start(net, spec, candidates, i) if options.exact_margins else None
        outcome = rows.solve(spec.output.C[i], float(spec.output.d[i]),
                             min(budget.remaining(), 1e7), start)
        outcomes[i] = outcome
        cost["milps"] += 1
        cost["milp_nodes"] += outcome.nodes
        lower[i] = max(lower[i], outcome.lower)
        candidates += outcome.candidates
        if outcome.counterexample is not None:
            candidates.append(outcome.counterexample)
            refuted = True
        elif outcome.timed_out:
            timed_out.append(i)
        if refuted and not options.exact_margins:
            break
    details["milp_rows"] = {row_name(spec, i): {"status": o.status, "nodes": o.nodes,
                                                 "dual_bound": o.lower,
                                                 "incumbent": o.solver_upper}
                            for i, o in outcomes.items()}
    # 6. Where the solver's number becomes a YES: `lower` holds, per row, the largest of the
    # interval bound, our float64 Lagrangian LP bound and HiGHS's MIP dual bound. The dual bound
    # is checked against every replayed point first: above one of them, the solver is wrong on
    # this model, and all its bounds are dropped. `certificate_from_bounds` then says YES only if
    # every row exceeds `tolerance` (the largest of HiGHS's feasibility tolerances and
    # NOISE_FACTOR x the rounding noise), which covers the dual bound's LP tolerances.
    replayed = _replayed_minimum(net, spec, candidates)
    wrong = [i for i in outcomes if lower[i] > replayed[i] + noise]
    if wrong:
        i = wrong[0]
        details["milp_inconsistent"] = (
            f"{row_name(spec, i)}: solver bound {lower[i]:.6g} above the float64 value "
            f"{replayed[i]:.6g} at a point of the set")
        lower = sound_lower
    refuted = refuted or _any_counterexample(net, spec, candidates)
    if refuted:
        reason = ""
    elif wrong:
        reason = (f"the MILP solver's bound is not trusted: {details['milp_inconsistent']}; "
                  "the bounds are the sound LP, CROWN and IBP ones")
        tolerance = math.inf
    elif timed_out:
        reason = _timeout_reason(spec, lower, timed_out, outcomes, options.timeout, "the MILP")
    else:
        reason = _maybe_reason(net, spec, lower, outcomes, tolerance, bool(relaxed))
    if reason and relaxed:
        reason = f"not exact: {relaxed}; {reason}"
    return finish(lower, candidates, reason, tolerance)


def _timeout_reason(spec, lower, timed_out, outcomes, timeout, stage) -> str:
    """MAYBE "timeout ...": which rows were left undecided, and the bounds so far."""
    i = min(timed_out, key=lambda r: lower[r])
    names = ", ".join(row_name(spec, r) for r in sorted(timed_out))
    upper = outcomes[i].solver_upper if i in outcomes else math.inf
    limit = f" after {timeout:g} s" if timeout else ""
    return (f"timeout{limit} in {stage}: {len(timed_out)} row(s) undecided ({names}); "
            f"{row_name(spec, i)} has lower bound {lower[i]:.6g}, solver's best value "
            f"{upper:.6g}")


def _maybe_reason(net, spec, lower, outcomes, tolerance, relaxed: bool = False) -> str:
    """Why the rows that are neither proved nor refuted stay open (empty when all are proved).
    A relaxed program's optimum only bounds the true minimum from below: the interval quoted is
    then [lower bound, best replayed value]."""
    for i, outcome in outcomes.items():
        if lower[i] > tolerance:
            continue
        if not outcome.decided:
            return (f"MILP for {row_name(spec, i)} ended with status '{outcome.status}'; "
                    f"lower bound {lower[i]:.6g}")
        values = [spec.output.values(net.forward(spec.input_set.project(x)))[i]
                  for x in outcome.candidates]
        replay = f"{min(values):.6g}" if values else "none"
        if relaxed:
            return (f"the true minimum for {row_name(spec, i)} lies in [{lower[i]:.6g}, "
                    f"{replay if values else 'inf'}] (lower bound, best replayed value; the "
                    f"relaxed program's optimum is {outcome.solver_upper:.6g}), not above the "
                    f"tolerance {tolerance:g}")
        return (f"MILP minimum for {row_name(spec, i)} lies in [{lower[i]:.6g}, "
                f"{outcome.solver_upper:.6g}] (solver), not above the tolerance {tolerance:g}, "
                f"and no point of it fails the property in the float64 replay (best replayed "
                f"value {replay})")
    return ""


def certify(net: Network, specs: Sequence[Specification], options: MILPOptions
            ) -> list[Certificate]:
    """MILP certificates, one model per specification; l_2 balls are refused up front."""
    _check_options(options)
    for spec in specs:
        _refuse_norm(spec)
    return [certify_one(net, spec, options) for spec in specs]


# --------------------------------------------------------------------------- teaching export

def export_model(net: Network, spec: Specification, path, relax: bool = False,
                 format: str = "lp", row: int = 0, bounds: str = "crown") -> Path:
    """Write the MILP for property row `row` (its LP relaxation if `relax`) with pulp, in CPLEX
    LP or MPS `format`. Variables: x_i inputs, y_l_i pre-activations, z_l_i post-activations,
    a_l_i binaries, t_i l_1 auxiliaries, and `one` (fixed to 1, carrying the objective's
    constant, so the file's optimum is the margin itself). Rows are named after their role
    (affine_l_i, relu_ge_pre_l_i, relu_off_l_i, relu_on_l_i, l1_*)."""
    import pulp

    _refuse_norm(spec)
    if format not in ("lp", "mps"):
        raise InputError(f"unknown export format '{format}': use lp or mps")
    if not 0 <= row < len(spec.output.C):
        raise InputError(f"row {row} is outside the property's rows 0..{len(spec.output.C) - 1}")
    neuron, _ = neuron_bounds(net, spec, bounds)
    program = build_program(net, spec.input_set, neuron, BIG_M)
    problem = pulp.LpProblem(f"{net.name}_row_{row}", pulp.LpMinimize)
    # pulp >= 3.3 attaches variables to the model; older versions construct them directly
    variable = getattr(problem, "add_variable", None) or \
        (lambda name, lo, hi, cat: pulp.LpVariable(name, lo, hi, cat=cat))
    columns = [variable(name, float(lo), float(hi), cat="Binary" if (integer and not relax)
                        else "Continuous")
               for name, lo, hi, integer in zip(program.names, program.col_lower,
                                                program.col_upper, program.integer)]
    one = variable("one", 1.0, 1.0, cat="Continuous")
    cost, offset, _ = program.objective(spec.output.C[row], float(spec.output.d[row]))
    nonzero = np.flatnonzero(cost)
    problem += pulp.LpAffineExpression([(columns[j], float(cost[j])) for j in nonzero]
                                       + [(one, float(offset))])
    A = program.matrix.tocsr()
    for r, name in enumerate(program.row_names):
        lo_r, hi_r = program.row_lower[r], program.row_upper[r]
        terms = pulp.LpAffineExpression(
            [(columns[j], float(v)) for j, v in zip(A.indices[A.indptr[r]:A.indptr[r + 1]],
                                                     A.data[A.indptr[r]:A.indptr[r + 1]])])
        if lo_r == hi_r:
            problem += (terms == float(lo_r)), name
        else:
            if np.isfinite(lo_r):
                problem += (terms >= float(lo_r)), name + ("_lo" if np.isfinite(hi_r) else "")
            if np.isfinite(hi_r):
                problem += (terms <= float(hi_r)), name + ("_hi" if np.isfinite(lo_r) else "")
    path = Path(path)
    if format == "lp":
        problem.writeLP(str(path))
    else:
        problem.writeMPS(str(path))
    return path
