"""VNN-LIB queries end to end: solve one (sat / unsat / unknown / timeout) and run an instances.csv
the way VNN-COMP does (loading time counts; +10 per correct answer, -150 per wrong one; a sat
whose counterexample does not replay counts as wrong).

Methods: "auto" (falsify, then complete search: input-splitting branch and bound for inputs of at
most `BAB_MAX_INPUTS` dimensions, else bound with alpha-CROWN, search over ReLU splits (relu-bab)
and finish with the MILP where one is registered; graphs start with CROWN, and on a graph with
one Relu layer the MILP goes before relu-bab), "bab", "relu-bab", or any registered certifier
(incomplete ones answer unsat or unknown).
"""

from __future__ import annotations

import csv
import itertools
import math
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, TextIO

import numpy as np

from . import deadline as deadlines
from .backends import certify_specs, get_backend
from .deadline import DeadlineExpired, check_seconds  # noqa: F401 (check_seconds re-exported)
from .errors import InputError
from .network import Network
from .onnx_io import load_onnx
from .spec import OutputProperty, Specification
from .vnnlib import VnnlibError, VnnlibQuery, format_counterexample, load_vnnlib

BAB_MAX_INPUTS = 16
# "auto" above BAB_MAX_INPUTS inputs: each stage gets this fraction of the time that remains
# when it starts, so of the whole budget the attack gets 15%, alpha-CROWN 35% (plus what the
# attack left), the ReLU-split search 3/4 of what remains then, and the MILP all the rest.
AUTO_STAGES = (("attack", 0.15), ("alpha-crown", 0.35 / 0.85), ("relu-bab", 0.75), ("milp", 1.0))
# Graphs: the same after CROWN (up to 10%; the MILP is exact on piecewise-linear graphs). CROWN
# proves many graph queries in a fraction of a second (verivital; cifar10_resnet's resnet_2b,
# where its intermediate bounds are the ones alpha-CROWN reuses) that the attack, finding
# nothing, would spend its whole share on before alpha-CROWN (benchmarks/results/
# auto_plans_ab.md); chains keep AUTO_STAGES.
GRAPH_AUTO_STAGES = (("crown", 0.1),) + AUTO_STAGES
# ... unless a node's constant has an entry HiGHS would drop (the MILP refuses the network):
# then relu-bab gets all the rest.
NO_MILP_STAGES = (("crown", 0.1), ("attack", 0.15), ("alpha-crown", 0.35 / 0.85),
                  ("relu-bab", 1.0))
# ... and on a graph whose every Relu reads an affine function of the input (`_one_relu_layer`,
# e.g. verivital's Conv-Relu-Pool CNNs) with an exact MILP: the pre-activation bounds are exact,
# so the big-M constants are the tightest there are, and HiGHS decides what relu-bab's splits of
# thousands of unstable Relus in that one layer leave open (VNN-COMP 2021 verivital, 60 s: see
# benchmarks/results/vnncomp2021_verivital.md): the MILP goes before relu-bab, with 3/4 of what
# remains after alpha-CROWN, relu-bab gets the rest.
ONE_RELU_LAYER_STAGES = (("crown", 0.1), ("attack", 0.15), ("alpha-crown", 0.35 / 0.85),
                         ("milp", 0.75), ("relu-bab", 1.0))
AUTO_RELU_BAB_OPTIONS = {"attack": False}  # relu-bab's options in "auto" (the attack ran before)
# ... and when the graph MILP has more unstable Relus than this (at the CROWN bounds it starts
# from, on some open disjunct's input set): it would spend its time tightening their bounds by LPs
# and decide nothing (cifar10_resnet: over 1000), so relu-bab gets all the rest.
MILP_MAX_UNSTABLE = 400
# The attack stage on a graph searches in float32 (2.7x faster than float64 on one CPU thread on
# cifar10_resnet's resnet_4b: all its PGD steps within its share instead of past it).
GRAPH_ATTACK_DTYPE = "float32"
BAB_ATTACK_SHARE = 0.15  # "auto"/"bab" on few inputs: the attack before the searches
GRAPH_BAB_SHARE = 0.5  # "auto" on a small graph the MILP encodes exactly: bab, then the MILP
# Methods that bound every disjunct in one batched call; the others take one disjunct at a time.
BATCHED_METHODS = ("attack", "ibp", "crown", "alpha-crown")


@dataclass
class QueryResult:
    result: str  # "sat", "unsat", "unknown" or "timeout"
    counterexample: Optional[tuple[np.ndarray, np.ndarray]] = None  # (x, f(x)) replayed
    time_s: float = 0.0
    method: str = ""
    reason: str = ""
    open_pairs: list = field(default_factory=list, repr=False)  # disjuncts left unrefuted

    def text(self) -> str:
        """The VNN-COMP result file: the verdict, and for sat the assignment."""
        if self.result == "sat" and self.counterexample is not None:
            return "sat\n" + format_counterexample(*self.counterexample) + "\n"
        return self.result + "\n"


def replay(net: Network, query: VnnlibQuery, x: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(x, f(x)) if the float64 forward pass confirms that x violates the property."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = net.forward(x)
    return (x, y) if query.violated_by(x, y) else None


def _disjunct_specs(query: VnnlibQuery) -> list[tuple[Specification, int]]:
    """One specification per (case, disjunct): rows A y - b, to be refuted by *some* row > 0
    (>= 0 for a strict row, `OutputProperty.closed`)."""
    return [(Specification(case.box, OutputProperty(d.A, d.b, closed=d.strict)), len(d.A))
            for case in query.cases for d in case.disjuncts]


def _solve_with_certifier(net: Network, query: VnnlibQuery, method: str, options: dict,
                          pairs: Optional[list[tuple[Specification, int]]] = None
                          ) -> QueryResult:
    """Incomplete or exact certifier on each (case, disjunct): refuted when a row's lower bound
    is > 0 (one-row disjuncts: the certificate's own YES). The batched bound methods take every
    disjunct in one call under the active deadline; the others (lp, milp, bab) one disjunct at
    a time, each with an equal share of the time that remains when it starts (what one leaves
    passes to the next), never the whole budget each. `pairs`: the (specification, rows) still
    open (default: every disjunct); the result's `open_pairs` are those left unrefuted."""
    timer = deadlines.active()
    pairs = _disjunct_specs(query) if pairs is None else pairs
    still_open = []
    groups = [pairs] if method in BATCHED_METHODS else [[pair] for pair in pairs]
    has_timeout = "timeout" in get_backend(method).options_type.__dataclass_fields__
    open_reasons = []
    for k, group in enumerate(groups):
        with deadlines.limit(timer.split(1.0 / (len(groups) - k))) as share:
            call_options = dict(options)
            if has_timeout and share.limited:  # the method's own clock, never past the share
                asked = options.get("timeout") or math.inf  # 0: none, as milp and bab read it
                call_options["timeout"] = max(0.05, min(asked, share.remaining()))
            if share.expired():
                certs = None
            else:
                certs = certify_specs(net, [s for s, _ in group], method, **call_options)
        if certs is None:
            open_reasons.append("timeout before this disjunct's turn")
            still_open.extend(group)
            continue
        for (spec, rows), cert in zip(group, certs):
            if cert.counterexample is not None:
                found = replay(net, query, np.array(cert.counterexample))
                if found is not None:
                    return QueryResult("sat", found, method=method)
            lower = np.array([-np.inf if v is None else v for v in cert.margin_lower])
            # A solver's bound counts only above its tolerance, as in the certificate's own YES.
            tolerance = cert.details.get("yes_tolerance", 0.0)
            refuted = cert.proved or bool(spec.output.refuted_by(lower, tolerance).any())
            if not refuted:
                open_reasons.append(cert.reason or "not proved")
                still_open.append((spec, rows))
    if not open_reasons:
        return QueryResult("unsat", method=method)
    timed_out = timer.expired() or any("timeout" in reason for reason in open_reasons)
    return QueryResult("timeout" if timed_out else "unknown", method=method,
                       reason=open_reasons[0], open_pairs=still_open)


def _solve_bab(net: Network, query: VnnlibQuery, options: dict) -> QueryResult:
    """Input-splitting branch and bound: a cheap attack on every disjunct (BAB_ATTACK_SHARE of
    the time, shared equally), then all searches round-robin until the active deadline."""
    from .backends import make_options
    from .exact.bab import BoxSearch, falsify_box, search_all

    opts = make_options("bab", options)
    pairs = [(case, d) for case in query.cases for d in case.disjuncts]
    hints = []  # a cheap attack on every disjunct before any search; its best point seeds it
    attack_time = deadlines.active().split(BAB_ATTACK_SHARE)
    for k, (case, d) in enumerate(pairs):
        if attack_time.expired():  # its share is spent: the searches start from the centers
            hints.append(None)
            continue
        with deadlines.limit(attack_time.split(1.0 / (len(pairs) - k))):
            x, value = falsify_box(net, case.box, d.A, d.b, opts.device, best=True)
        found = replay(net, query, x) if value <= 0 else None
        if found is not None:
            return QueryResult("sat", found, method="bab")
        hints.append((x, value))
    searches = search_all([BoxSearch(net, case.box, d.A, d.b, opts,
                                     check=lambda x: replay(net, query, x) is not None, hint=hint,
                                     strict=d.strict)
                           for (case, d), hint in zip(pairs, hints)], None)
    for s in searches:
        if s.result.status == "sat":
            return QueryResult("sat", replay(net, query, s.result.counterexample), method="bab")
    open_searches = [s for s in searches if s.result.status != "unsat"]
    if not open_searches:
        return QueryResult("unsat", method="bab")
    reason = open_searches[0].result.reason
    return QueryResult("timeout" if reason == "timeout" else "unknown", method="bab",
                       reason=reason)


def _solve_relu_bab(net: Network, query: VnnlibQuery, options: dict,
                    pairs: Optional[list[tuple[Specification, int]]] = None) -> QueryResult:
    """ReLU-split BaB under the active deadline: the one-row disjuncts of one input box become
    the rows of one specification (one shared search; every row must be refuted), multi-row
    disjuncts go one by one (refuted by some row > 0). `pairs` as for _solve_with_certifier."""
    pairs = _disjunct_specs(query) if pairs is None else pairs
    merged: dict[int, list[Specification]] = {}
    for spec, rows in pairs:
        if rows == 1:
            merged.setdefault(id(spec.input_set), []).append(spec)
    groups = [(Specification(specs[0].input_set, OutputProperty(
        np.concatenate([s.output.C for s in specs]), np.concatenate([s.output.d for s in specs]))),
        specs) for specs in merged.values()] + [(s, None) for s, rows in pairs if rows != 1]
    options = {"timeout": 0.0, **options}  # the active deadline bounds it
    still_open, reasons = [], []
    for spec, parts in groups:
        cert = certify_specs(net, [spec], "relu-bab", **options)[0]
        if cert.counterexample is not None:
            found = replay(net, query, np.array(cert.counterexample))
            if found is not None:
                return QueryResult("sat", found, method="relu-bab")
        lower = np.array([-np.inf if v is None else v for v in cert.margin_lower])
        if parts is None and not spec.output.refuted_by(lower).any():
            still_open.append((spec, len(lower)))
        elif parts is not None:  # row i refuted when its own bound is > 0 (>= 0 if closed)
            still_open += [(part, 1) for part, value in zip(parts, lower)
                           if not part.output.refuted_by([value])[0]]
        if cert.reason and still_open:
            reasons.append(cert.reason)
    if not still_open:
        return QueryResult("unsat", method="relu-bab")
    timed_out = deadlines.active().expired() or any("timeout" in r for r in reasons)
    return QueryResult("timeout" if timed_out else "unknown", method="relu-bab",
                       reason=reasons[0] if reasons else "not proved", open_pairs=still_open)


NONLINEAR_SAMPLES = 256  # random points per case tried on a polynomial query, besides corners
NONLINEAR_MAX_CORNERS = 1024


def _output_intervals(net: Network, box) -> tuple[np.ndarray, np.ndarray]:
    """Sound bounds on every output over the box: CROWN's lower bounds of y_j and of -y_j."""
    n = net.output_size
    spec = Specification(box, OutputProperty(np.vstack([np.eye(n), -np.eye(n)]), np.zeros(2 * n)))
    (cert,) = certify_specs(net, [spec], "crown")
    lower = np.array([-np.inf if v is None else v for v in cert.margin_lower], dtype=np.float64)
    return lower[:n], -lower[n:]


def _nonlinear_candidates(box, rng: np.random.Generator) -> np.ndarray:
    """Points tried on a case with polynomial atoms: its center, its corners (up to
    NONLINEAR_MAX_CORNERS) and NONLINEAR_SAMPLES uniform samples."""
    lo, hi = box.lower, box.upper
    points = [box.center]
    if 2 ** len(lo) <= NONLINEAR_MAX_CORNERS:
        for bits in itertools.product((0, 1), repeat=len(lo)):
            points.append(np.where(np.array(bits, dtype=bool), hi, lo))
    points.extend(lo + (hi - lo) * rng.random((NONLINEAR_SAMPLES, len(lo))))
    return np.array(points)


def _split_nonlinear(net: Network, query: VnnlibQuery, slack: Optional[np.ndarray]
                     ) -> tuple[Optional[QueryResult], VnnlibQuery, int]:
    """Polynomial atoms before the certifiers: (a sat found among the candidate points, or
    None; the query left for the certifiers; how many disjuncts stay undecided). A disjunct
    whose polynomial is positive on sound output bounds (widened by `slack`, the float error per
    output) is refuted; one with linear rows keeps them (its polynomials dropped: a superset of
    the region, so an unsat of the rest still proves it); one with polynomials only is left out
    of the certifiers' query and counted undecided."""
    rng = np.random.default_rng(0)
    cases, undecided = [], 0
    for case in query.cases:
        if not any(d.polys for d in case.disjuncts):
            cases.append(case)
            continue
        points = _nonlinear_candidates(case.box, rng)
        outputs = net.forward(points)
        for x, y in zip(points, outputs):
            if case.contains(x) and query.violated_by(x, y):
                return QueryResult("sat", (x, y), method="nonlinear-candidates"), query, 0
        lower, upper = _output_intervals(net, case.box)
        if slack is not None:
            lower, upper = lower - slack, upper + slack
        kept = []
        for d in case.disjuncts:
            if any(p.lower_bound(lower, upper) > 0 or (p.strict and
                                                       p.lower_bound(lower, upper) >= 0)
                   for p in d.polys):
                continue  # refuted on the bounds
            if d.polys and len(d.A) == 0:
                undecided += 1
                continue
            kept.append(replace(d, polys=[]))
        if kept:
            cases.append(replace(case, disjuncts=kept))
    return None, replace(query, cases=cases), undecided


COMBINATION_STEPS = 8  # multi-row disjuncts: row weights on the simplex grid of step 1/8
COMBINATION_MAX_ROWS = 4


def _falsify_multirow(net: Network, query: VnnlibQuery) -> Optional[QueryResult]:
    """A graph network's multi-row disjuncts (every row must hold at one point, which the
    attack certifier, violating one row at a time, does not search for): PGD on
    max_r (A_r f(x) - b_r) over each case's box (exact.bab.falsify_box), replayed."""
    from .exact.bab import falsify_box

    pairs = [(case, d) for case in query.cases for d in case.disjuncts if len(d.A) > 1]
    timer = deadlines.active()
    for k, (case, d) in enumerate(pairs):
        if timer.expired():
            break
        with deadlines.limit(timer.split(1.0 / (len(pairs) - k))):
            x = falsify_box(net, case.box, d.A, d.b, "cpu", restarts=256, steps=40)
        found = replay(net, query, x) if x is not None else None
        if found is not None:
            return QueryResult("sat", found, method="attack")
    return None


def _row_combinations(rows: int) -> np.ndarray:
    """Weights lambda >= 0 on the grid of step 1/COMBINATION_STEPS of the simplex (every
    entry in use: the others are the rows' own, or smaller, combinations)."""
    grid = [np.array(c) / COMBINATION_STEPS
            for c in itertools.product(range(1, COMBINATION_STEPS + 1), repeat=rows)
            if sum(c) == COMBINATION_STEPS]
    return np.array(grid).reshape(len(grid), rows)


def _combine_rows(net: Network, query: VnnlibQuery, pairs: list) -> list:
    """Refute multi-row disjuncts A y <= b by one combination: for lambda >= 0, the region
    implies lambda^T A y <= lambda^T b, so a CROWN lower bound of lambda^T (A y - b) > 0 over the
    box refutes it (the rows alone may each be satisfiable: y1 >= 1.5 and y2 <= 10.5 with
    y = (2x, x + 10), x in [0, 1]). Returns the pairs still open."""
    still_open = []
    for spec, rows in pairs:
        if rows < 2 or rows > COMBINATION_MAX_ROWS or deadlines.active().expired():
            still_open.append((spec, rows))
            continue
        A, b = spec.output.C, spec.output.d
        scale = 1.0 / np.maximum(np.linalg.norm(A, axis=1), 1e-300)
        weights = _row_combinations(rows) * scale
        combined = Specification(spec.input_set, OutputProperty(weights @ A, weights @ b))
        (cert,) = certify_specs(net, [combined], "crown")
        lower = np.array([-np.inf if v is None else v for v in cert.margin_lower])
        if not np.max(lower) > cert.details.get("yes_tolerance", 0.0):
            still_open.append((spec, rows))
    return still_open


def _milp_holds(net) -> bool:
    """Whether no node constant of a GraphNetwork has a non-zero entry at or below HiGHS's
    smallest matrix coefficient (which the MILP refuses, `highs_session.to_highs`)."""
    from .bounds.relu_encoding import SMALL_COEFFICIENT

    return not any(isinstance(v, np.ndarray) and v.dtype.kind == "f"
                   and bool(np.any((v != 0) & (np.abs(v) <= SMALL_COEFFICIENT)))
                   for node in net.graph.nodes for v in node.params.values())


def _milp_too_large(net, pairs: list[tuple[Specification, int]]) -> bool:
    """Whether a graph MILP on some open disjunct would have more than MILP_MAX_UNSTABLE unstable
    Relus at its starting bounds (graph.crown_bounds: remembered from alpha-CROWN, and what
    relu-bab starts from too)."""
    import torch

    from .bounds import InputBatch
    from .bounds.graph import crown_bounds
    from .network import resolve_device

    relu_inputs = [node.inputs[0] for node in net.graph.nodes if node.op == "Relu"]
    seen: set[int] = set()
    for spec, _ in pairs:
        if id(spec.input_set) in seen:
            continue
        seen.add(id(spec.input_set))
        with torch.no_grad():
            bounds = crown_bounds(net, InputBatch.from_specs([spec], resolve_device("auto")))
        unstable = sum(int(((bounds[z][0] < 0) & (bounds[z][1] > 0)).sum()) for z in relu_inputs)
        if unstable > MILP_MAX_UNSTABLE:
            return True
    return False


def _exact_milp(net) -> bool:
    """Whether the MILP encodes this GraphNetwork exactly (piecewise-linear ops only) and
    HiGHS can hold its constants."""
    from .graph.encoding import relaxed_ops

    return not relaxed_ops(net) and _milp_holds(net)


def _one_relu_layer(net) -> bool:
    """Whether every Relu of a GraphNetwork reads an affine function of the network input (only
    linear nodes between them), so that its pre-activation bounds over a box are exact."""
    from .graph.ops import LINEAR

    affine = set(net.graph.inputs)  # variable tensors affine in the input
    for node in net.graph.nodes:
        reads_affine = all(name in affine for name in node.inputs)
        if node.op == "Relu" and not reads_affine:
            return False
        if node.op in LINEAR and reads_affine:
            affine.add(node.output)
    return True


def _auto_stages(net) -> tuple[tuple[str, float], ...]:
    """The (stage, share of the time that remains) plan of "auto" past BAB_MAX_INPUTS inputs."""
    if not getattr(net, "is_graph", False):
        return AUTO_STAGES
    if not _milp_holds(net):
        return NO_MILP_STAGES
    return ONE_RELU_LAYER_STAGES if _exact_milp(net) and _one_relu_layer(net) \
        else GRAPH_AUTO_STAGES


def _solve(net: Network, query: VnnlibQuery, method: str, options: dict,
           slack: Optional[np.ndarray] = None) -> QueryResult:
    """`solve` under its deadline (the active one)."""
    if query.nonlinear:
        found, rest, undecided = _split_nonlinear(net, query, slack)
        if found is not None:
            return found
        result = _solve(net, rest, method, options) if rest.cases else \
            QueryResult("unsat", method="interval")
        if result.result == "sat":  # the relaxed query's sat: replay it on the full query
            result.counterexample = replay(net, query, result.counterexample[0])
        if result.result == "unsat" and undecided:
            return QueryResult("unknown", method=result.method,
                               reason=f"{undecided} disjunct(s) with a nonlinear constraint "
                                      "neither refuted on the output bounds nor satisfied by "
                                      "a candidate point")
        return result
    for case in query.cases:  # a disjunct without output constraints: the box itself violates
        if any(len(d.A) == 0 for d in case.disjuncts):
            found = replay(net, query, case.box.center)
            if found is not None:
                return QueryResult("sat", found, 0.0, method,
                                   "the violation has no output constraint")
    graph = getattr(net, "is_graph", False)  # a GraphNetwork
    if graph and method not in ("auto", "ibp", "crown", "alpha-crown", "relu-bab", "lp", "milp",
                                "bab", "attack", "smoothing"):
        from .bounds.graph import refuse
        raise refuse(method)
    if method == "bab" or (method == "auto" and net.input_size <= BAB_MAX_INPUTS):
        if not (method == "auto" and graph and _exact_milp(net)):
            return _solve_bab(net, query, options)
        # graphs have no local MILP inside bab (chains do): the MILP gets what bab leaves
        with deadlines.limit(deadlines.active().split(GRAPH_BAB_SHARE)):
            result = _solve_bab(net, query, options)
        if result.result in ("sat", "unsat") or deadlines.active().expired():
            return result
        try:
            milp = _solve_with_certifier(net, query, "milp", {})
        except InputError:  # HiGHS cannot hold this program (e.g. unbounded neuron bounds)
            return result
        return milp if milp.result in ("sat", "unsat") else result
    if method == "auto":
        result = QueryResult("unknown")
        pairs = _disjunct_specs(query)  # each stage gets the disjuncts the earlier ones left
        if graph and any(rows > 1 for _, rows in pairs):
            with deadlines.limit(deadlines.active().split(0.15)):
                found = _falsify_multirow(net, query)
            if found is not None:
                found.method = f"auto:{found.method}"
                return found
        for step, share in _auto_stages(net):
            if deadlines.active().expired():
                break
            stage_options = {"stop_at_first": True} if step == "attack" else {}
            if step == "attack" and graph:  # its points are replayed in float64 all the same
                stage_options["dtype"] = GRAPH_ATTACK_DTYPE
            last = step == "relu-bab" and graph and share < 1.0 and _milp_too_large(net, pairs)
            share = 1.0 if last else share  # no MILP after: relu-bab gets all the rest
            with deadlines.limit(deadlines.active().split(share)):
                try:
                    result = _solve_relu_bab(net, query, dict(AUTO_RELU_BAB_OPTIONS), pairs) \
                        if step == "relu-bab" else \
                        _solve_with_certifier(net, query, step, stage_options, pairs)
                except InputError as error:  # the MILP cannot encode this network
                    if step != "milp":
                        raise
                    result = QueryResult("unknown", method=step, reason=str(error),
                                         open_pairs=pairs)
            if result.result in ("sat", "unsat") or last:
                break
            pairs = result.open_pairs
            if graph and step == "crown" and pairs:  # multi-row disjuncts: combined rows
                pairs = _combine_rows(net, query, pairs)
                if not pairs:
                    result = QueryResult("unsat", method="crown+combined-rows")
                    break
        result.method = f"auto:{result.method}"
        return result
    if method == "relu-bab":
        return _solve_relu_bab(net, query, options)
    get_backend(method)
    if method == "smoothing":
        raise InputError("smoothing certifies the smoothed classifier g, with a probability, "
                         "not the network: it cannot answer a VNN-LIB query (use auto, bab, "
                         "milp or a bound method)")
    return _solve_with_certifier(net, query, method, options)


def solve(net: Network, query: VnnlibQuery, method: str = "auto", timeout: float = 60.0,
          output_slack: Optional[np.ndarray] = None, **options) -> QueryResult:
    """Answer a VNN-LIB query on a network: sat (with a replayed counterexample), unsat,
    unknown (the method could not decide) or timeout. Every stage runs under one deadline
    (verify.deadline) `timeout` seconds from the call; past it the answer is "timeout".
    `output_slack`: per output, how far the evaluation the query is about may be from the
    network over the reals (float semantics; the rows come widened already, polynomial atoms
    are widened by it here)."""
    t0 = time.monotonic()
    check_seconds(timeout)
    if len(query.networks) > 1 and (net.input_size, net.output_size) != (query.n_inputs,
                                                                          query.n_outputs):
        names = ", ".join(n.name for n in query.networks)
        raise VnnlibError(f"{query.source}: the query declares {len(query.networks)} networks "
                          f"({names}): answer it with verify-solver verify QUERY --network "
                          "NAME=MODEL.onnx for each")
    query.check_sizes(net.input_size, net.output_size, net.input_shape)
    with deadlines.limit(timeout) as whole:
        try:
            result = _solve(net, query, method, options, output_slack)
        except DeadlineExpired as exc:  # a loop that raises rather than returning its best
            result = QueryResult("timeout", method=method, reason=str(exc))
    result.time_s = time.monotonic() - t0
    if result.result == "unsat" and query.windowed_inputs:
        result.result = "unknown"
        result.reason = (f"unsat within the search window of the unbounded input(s) "
                         f"{', '.join(query.windowed_inputs[:3])}"
                         f"{' and more' if len(query.windowed_inputs) > 3 else ''} only "
                         f"(vnnlib.INPUT_WINDOW), not over their whole range")
    if result.result == "sat" and result.counterexample is None:
        result.result, result.reason = "unknown", "counterexample failed the float64 replay"
    if result.result == "unknown" and whole.expired():
        result.result = "timeout"
    return result


def solve_files(model: str, prop: str, method: str = "auto", timeout: float = 60.0,
                threads: Optional[int] = None, **options) -> QueryResult:
    """Load (timed, as in the competition) and solve; torch's threads follow verify.threads'
    policy for the loaded network unless `threads` is given."""
    from .threads import configure

    t0 = time.monotonic()
    check_seconds(timeout)
    net = load_onnx(model)
    query = load_vnnlib(prop)
    configure(net, threads)
    remaining = timeout - (time.monotonic() - t0)
    if remaining <= 0:
        return QueryResult("timeout", time_s=time.monotonic() - t0, reason="loading")
    result = solve(net, query, method, remaining, **options)
    result.time_s = time.monotonic() - t0
    return result


# -- instances.csv runner -------------------------------------------------------------------------

@dataclass
class InstanceRow:
    network: str
    property: str
    result: str
    time_s: float
    expected: str = ""
    score: int = 0
    method: str = ""
    reference: dict = field(default_factory=dict)
    reason: str = ""


def score(result: str, expected: str) -> int:
    """VNN-COMP points: +10 for a correct sat/unsat, -150 for a wrong one, 0 otherwise."""
    if result not in ("sat", "unsat") or expected not in ("sat", "unsat"):
        return 0
    return 10 if result == expected else -150


def _median_reference(values: list[str]) -> Optional[float]:
    times = []
    for v in values:
        if ":" in v and v.split(":")[0] in ("sat", "unsat"):
            times.append(float(v.split(":")[1]))
    return statistics.median(times) if times else None


def _solve_job(model: str, prop: str, method: str, timeout: float, options: dict,
               threads: Optional[int]) -> QueryResult:
    """One instance, in this process or a worker (module level, so it pickles)."""
    return solve_files(model, prop, method, timeout, threads, **options)


def late_as_timeout(result: QueryResult, timeout: float) -> QueryResult:
    """A result that came after its timeout counts as a timeout, as in VNN-COMP (its answer is
    kept in the reason)."""
    if result.time_s > timeout and result.result != "timeout":
        result.reason = (f"{result.result} after {result.time_s:.2f} s, past the "
                         f"{timeout:g} s timeout")
        result.result, result.counterexample = "timeout", None
    return result


def run_instances(instances_csv: str, method: str = "auto", timeout_cap: Optional[float] = None,
                  out_csv: Optional[str] = None, limit: Optional[int] = None,
                  progress: Optional[TextIO] = sys.stderr, workers: int = 1,
                  cluster: Optional[str] = None, threads: Optional[int] = None,
                  **options) -> list[InstanceRow]:
    """Run every (onnx, vnnlib, timeout) row, on `workers` local processes or a Dask `cluster`;
    compare with ground_truth.csv when the folder has one. A result that came after its row's
    timeout counts as a timeout. `threads`: torch threads per instance (default: the policy of
    verify.threads, and 1 when several workers share the machine)."""
    from .executor import run_jobs

    path = Path(instances_csv)
    if not path.is_file():
        raise InputError(f"{path}: no such instances file")
    if timeout_cap is not None:
        check_seconds(timeout_cap, "the timeout cap")
    folder = path.parent
    truth: dict[tuple[str, str], dict] = {}
    if (folder / "ground_truth.csv").is_file():
        with open(folder / "ground_truth.csv") as fh:
            for row in csv.DictReader(fh):
                truth[(row["network"], row["property"])] = row
    with open(path) as fh:
        instances = [r for r in csv.reader(fh) if r and not r[0].startswith("#")]
    if limit is not None:
        instances = instances[:limit]
    jobs, names = [], []
    for k, inst in enumerate(instances):
        if len(inst) < 3:
            raise InputError(f"{path}:{k + 1}: expected onnx,vnnlib,timeout")
        onnx_rel, prop_rel = inst[0], inst[1]
        try:
            timeout = check_seconds(float(inst[2]), f"{path}:{k + 1}: the timeout")
        except ValueError:
            raise InputError(f"{path}:{k + 1}: the timeout must be a number of seconds, got "
                             f"'{inst[2]}'") from None
        if timeout_cap is not None:
            timeout = min(timeout, timeout_cap)
        for name in (onnx_rel, prop_rel):  # all of them before any row runs
            if not (folder / name).is_file():
                raise InputError(f"{path}:{k + 1}: {folder / name}: no such file")
        names.append((Path(onnx_rel).stem.replace("_batch_2000", ""), Path(prop_rel).stem))
        shared = workers > 1 or cluster is not None  # several workers share the cores
        jobs.append((str(folder / onnx_rel), str(folder / prop_rel), method, timeout, options,
                     threads if threads is not None else (1 if shared else None)))
    rows: list[Optional[InstanceRow]] = [None] * len(jobs)
    for done, (k, result) in enumerate(run_jobs(_solve_job, jobs, workers, cluster), 1):
        result = late_as_timeout(result, jobs[k][3])
        network, prop = names[k]
        ref = truth.get((network, prop), {})
        expected = ref.get("ground_truth", "")
        row = InstanceRow(network, prop, result.result, result.time_s, expected,
                          score(result.result, expected), result.method,
                          {key: v for key, v in ref.items() if "_20" in key}, result.reason)
        rows[k] = row
        if progress is not None:
            mark = {10: "ok", -150: "WRONG", 0: ""}[row.score]
            print(f"[{done}/{len(jobs)}] {network} {prop}: {row.result} in "
                  f"{row.time_s:.2f}s (expected {expected or '?'}) {mark}", file=progress,
                  flush=True)
    finished = [r for r in rows if r is not None]
    if out_csv is not None:
        write_results(finished, out_csv)
    return finished


def write_results(rows: list[InstanceRow], out_csv: str) -> None:
    """instance, result, time, expected, score, method, reason: written to a temp file, then
    renamed."""
    out = Path(out_csv)
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["network", "property", "result", "time_s", "expected", "score", "method",
                         "reason"])
        for r in rows:
            writer.writerow([r.network, r.property, r.result, f"{r.time_s:.4f}", r.expected,
                             r.score, r.method, r.reason])
    tmp.replace(out)


def summary(rows: list[InstanceRow]) -> str:
    """Counts, score, median time, and the competition tools' medians on the same instances."""
    n = len(rows)
    solved = [r for r in rows if r.result in ("sat", "unsat")]
    wrong = [r for r in rows if r.score < 0]
    lines = [f"instances {n}: solved {len(solved)} (sat {sum(r.result == 'sat' for r in rows)}, "
             f"unsat {sum(r.result == 'unsat' for r in rows)}), unknown "
             f"{sum(r.result == 'unknown' for r in rows)}, timeout "
             f"{sum(r.result == 'timeout' for r in rows)}, wrong {len(wrong)}",
             f"score {sum(r.score for r in rows)} (max {10 * sum(bool(r.expected) for r in rows)})"]
    if rows:
        lines.append(f"median time per instance {statistics.median(r.time_s for r in rows):.3f} s"
                     f" (solved only: {statistics.median(r.time_s for r in solved):.3f} s)"
                     if solved else "")
    tools = sorted({k for r in rows for k in r.reference})
    for tool in tools:
        med = _median_reference([r.reference.get(tool, "") for r in rows])
        if med is not None:
            lines.append(f"  {tool}: median {med:.2f} s (competition hardware, start-up included)")
    return "\n".join(line for line in lines if line)
