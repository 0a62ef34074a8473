"""From numbers to a verdict: the one place where bounds and points become YES / NO / MAYBE.

Trusted: lower bounds handed in by a certifier (each certifier documents why they are sound).
Re-checked here: every candidate counterexample is projected into the input set, checked to lie
in it, and run through the float64 numpy forward pass; only then can it make a NO.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from .certificate import Certificate, Status
from .network import Conv2d, Network
from .spec import LpBall, Specification, norm_of, radius_of


def property_values(net: Network, spec: Specification, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, C f(x) - d) in float64 for one flat input."""
    logits = net.forward(np.asarray(x, dtype=np.float64).reshape(-1))
    return logits, spec.output.values(logits)


def validated_counterexample(net: Network, spec: Specification, x: np.ndarray
                             ) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(x', logits, row values) if x projected into the set violates a row (value <= 0)."""
    x = spec.input_set.project(np.asarray(x, dtype=np.float64).reshape(-1))
    if not spec.input_set.contains(x):
        return None
    logits, values = property_values(net, spec, x)
    if np.all(values > 0):
        return None
    return x, logits, values


def per_class(spec: Specification, rows: np.ndarray, n_classes: int) -> list[Optional[float]]:
    """Row values as a per-class list (None at the label) for robustness; else row order."""
    values = np.asarray(rows, dtype=np.float64).tolist()  # Python floats
    return _per_class(spec, values, n_classes)


def _per_class(spec: Specification, values: list, n_classes: int) -> list[Optional[float]]:
    """`per_class` from row values already a list of Python floats."""
    if spec.label is None or None in spec.output.row_class:
        return values
    out: list[Optional[float]] = [None] * n_classes
    for j, v in zip(spec.output.row_class, values):
        out[j] = v
    return out


def row_name(spec: Specification, i: int) -> str:
    """How messages name row i of the specification: its competing class, or its index."""
    j = spec.output.row_class[i]
    return f"class {j}" if j is not None else f"row {i}"


def certificate_from_bounds(net: Network, spec: Specification, method: str,
                            lower: np.ndarray, upper: Optional[np.ndarray] = None,
                            candidates: Iterable[np.ndarray] = (), yes_tolerance: float = 0.0,
                            reason: str = "", time_s: float = 0.0, cost: Optional[dict] = None,
                            details: Optional[dict] = None) -> Certificate:
    """Certificate from sound row lower bounds, optional row upper bounds, and candidate points.

    The center of the input set is always tried as a candidate: its row values are valid upper
    bounds on the minimum, and it gives a NO at once when the input itself is misclassified.
    YES needs every lower bound > `yes_tolerance` (a solver's tolerance; 0 for pure arithmetic).
    """
    lower = np.asarray(lower, dtype=np.float64).reshape(-1)
    upper = np.full_like(lower, np.inf) if upper is None else \
        np.asarray(upper, dtype=np.float64).reshape(-1).copy()
    upper, counterexample = _replay(net, spec, upper, candidates)
    ball = spec.input_set
    return _certificate(net, spec, method, lower, upper, counterexample, yes_tolerance, reason,
                        _domain(ball.lower[None], ball.upper[None])[0],
                        f"{net.name}@{net.fingerprint()}", time_s, cost, details)


def certificates_from_bounds(net: Network, specs: Sequence[Specification], method: str,
                             lower: np.ndarray, time_s: float = 0.0,
                             cost: Optional[dict] = None) -> list[Certificate]:
    """`certificate_from_bounds(net, specs[b], method, lower[b], ...)` for a batch (no upper
    bounds, no candidates but the centers): the same verdicts, with what the batch shares
    (domains, model name, one batched float64 forward pass of the centers) worked out once.
    `cost` is copied into each certificate.

    The batched forward pass sums in another order than a one-input pass (last bits differ,
    ~1e-15 relative): its row values are the upper bounds; an input with a row value within
    REPLAY_MARGIN (relative) of 0 is replayed alone, so that every verdict, and every NO's
    counterexample values, are those `certificate_from_bounds` gives."""
    lower = np.asarray(lower, dtype=np.float64).reshape(len(specs), -1)
    if not specs:
        return []
    # (np.array of a list of equal-shape arrays: the rows of np.stack, ~2.5x faster for a
    # hundred small arrays; unequal shapes raise as np.stack does)
    domains = _domain(np.array([s.input_set.lower for s in specs], dtype=np.float64),
                      np.array([s.input_set.upper for s in specs], dtype=np.float64))
    model = f"{net.name}@{net.fingerprint()}"
    balls = all(isinstance(spec.input_set, LpBall) for spec in specs)
    if balls:  # an l_p ball's center lies in it (LpBall refuses one outside its box)
        centers = np.array([spec.input_set.center for spec in specs], dtype=np.float64)
        logits_all = _screening_forward(net, centers).reshape(len(specs), -1)
        C = np.array([spec.output.C for spec in specs], dtype=np.float64)
        values_all = np.einsum("bmk,bk->bm", C, logits_all) - np.array(
            [s.output.d for s in specs], dtype=np.float64)
        scale = np.einsum("bmk,bk->bm", np.abs(C), np.abs(logits_all))
        clear = (values_all > REPLAY_MARGIN * (1 + scale)).all(axis=1)
    out = []
    # YES without a NO (every row bound > 0, every center row value clear of 0): built here from
    # the rows read once as Python floats (`_certificate` gives the same certificate)
    fast = ((lower > 0).all(axis=1) & clear).tolist() if balls else [False] * len(specs)
    lower_rows = lower.tolist() if balls else None
    upper_rows = values_all.tolist() if balls else None
    n_classes = net.output_size
    usual: dict = {}  # label -> the usual row order of a robustness property (every other class)
    for b, (spec, row, domain) in enumerate(zip(specs, lower, domains)):
        if fast[b]:
            ball, label = spec.input_set, spec.label
            if label is not None and label not in usual:
                usual[label] = [j for j in range(n_classes) if j != label]
            if label is not None and spec.output.row_class == usual[label]:  # (`_per_class`)
                lows, ups = lower_rows[b], upper_rows[b]
                margin_lower = lows[:label] + [None] + lows[label:]
                margin_upper = ups[:label] + [None] + ups[label:]
            else:
                margin_lower = _per_class(spec, lower_rows[b], n_classes)
                margin_upper = _per_class(spec, upper_rows[b], n_classes)
            out.append(Certificate(
                status=Status.YES, method=method, label=label, norm=ball.norm,
                eps=ball.eps, margin_lower=margin_lower, margin_upper=margin_upper, reason="",
                time_s=time_s, domain=domain, model=model, cost=dict(cost or {}), details={}))
            continue
        if balls and clear[b]:  # every row clearly > 0 in either summation order: no NO
            upper, counterexample = values_all[b], None
        elif balls:  # `_replay` of the center alone
            center = spec.input_set.center
            logits, upper = property_values(net, spec, center)  # min(inf, values) = values
            counterexample = None if (upper > 0).all() else (center, logits, upper)
        else:
            upper, counterexample = _replay(net, spec, np.full_like(row, np.inf), ())
        out.append(_certificate(net, spec, method, row, upper, counterexample, 0.0, "", domain,
                                model, time_s, dict(cost or {}), None))
    return out


# A convolution with at most this many entries in its dense matrix goes through that matrix in
# `_screening_forward` (one matrix product; numpy's correlate loops over the kernel's offsets).
SCREEN_DENSE_ENTRIES = 2 ** 21


def _screening_forward(net: Network, x: np.ndarray) -> np.ndarray:
    """`net.forward(x)` for a batch, small convolutions as their dense matrices (cached by the
    layer): each output the same terms (plus exact zeros) summed in another order, which the
    batched pass's REPLAY_MARGIN covers as it covers the batching (a row value near 0 is
    replayed alone through `net.forward`)."""
    if type(net) is not Network:  # (a graph network, say): its own forward
        return net.forward(x)
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    for layer in net.layers:
        if isinstance(layer, Conv2d) and layer.weight.size and \
                np.prod(layer.out_shape) * np.prod(layer.in_shape) <= SCREEN_DENSE_ENTRIES:
            x = x @ layer.dense_matrix().T + layer.bias_per_output(layer.bias)
        else:
            x = layer.forward(x).reshape(len(x), -1)
    return x


# A row value of a batched forward pass above REPLAY_MARGIN (1 + |C| |z|) is > 0 in a one-input
# pass too: the two differ by the reordering of float64 sums, ~n u (|W| |h| + |b|) per layer
# and amplified through the layers, far below 1e-6 of the values' size for the networks here;
# below it the input is replayed alone (the NO decision is then that pass's own).
REPLAY_MARGIN = 1e-6


def _replay(net: Network, spec: Specification, upper: np.ndarray,
            candidates: Iterable[np.ndarray]) -> tuple[np.ndarray, Optional[tuple]]:
    """(row upper bounds lowered by the float64 row values of the set's center and of every
    candidate projected into the set, the worst violating (x, logits, values) or None).

    One batched float64 pass gives every point's values; the worst violating point is then
    replayed alone (validated_counterexample's one-point pass), and only a point that pass
    confirms is returned (the next worst otherwise)."""
    # An l_p ball's center lies in it (LpBall refuses one outside its box): no projection.
    center_inside = isinstance(spec.input_set, LpBall)
    points = []
    for i, x in enumerate([spec.input_set.center, *candidates]):
        if not (i == 0 and center_inside):
            x = spec.input_set.project(np.asarray(x, dtype=np.float64).reshape(-1))
            if not spec.input_set.contains(x):
                continue
        points.append(np.asarray(x, dtype=np.float64).reshape(-1))
    if not points:
        return upper, None
    values = np.asarray(spec.output.values(net.forward(np.stack(points))), dtype=np.float64)
    upper = np.minimum(upper, values.min(axis=0))
    violating = ~(values > 0).all(axis=1)
    worst = values.min(axis=1)
    for i in sorted(np.flatnonzero(violating).tolist(), key=lambda i: (not worst[i] <= 0, worst[i])):
        logits, single = property_values(net, spec, points[i])
        upper = np.minimum(upper, single)
        if not (single > 0).all():
            return upper, (points[i], logits, single)
    return upper, None


def _domain(lower: np.ndarray, upper: np.ndarray) -> list[Optional[list]]:
    """Each row's domain for the certificate: None when neither side is finite everywhere,
    [low, high] numbers when constant, else [lows, highs] lists. `lower`, `upper`: (B, n)."""
    bounded = np.isfinite(lower).all(axis=1) | np.isfinite(upper).all(axis=1)
    constant = (lower == lower[:, :1]).all(axis=1) & (upper == upper[:, :1]).all(axis=1)
    firsts = zip(lower[:, 0].tolist(), upper[:, 0].tolist())
    return [None if not b else [low, high] if c else [lo.tolist(), hi.tolist()]
            for b, c, (low, high), lo, hi in zip(bounded.tolist(), constant.tolist(), firsts,
                                                 lower, upper)]


def _certificate(net: Network, spec: Specification, method: str, lower: np.ndarray,
                 upper: np.ndarray, counterexample: Optional[tuple], yes_tolerance: float,
                 reason: str, domain: Optional[list], model: str, time_s: float,
                 cost: Optional[dict], details: Optional[dict]) -> Certificate:
    """The verdict: NO for a replayed counterexample, YES when every lower bound is above
    `yes_tolerance`, else MAYBE with `reason` (or the worst row). (Row lists as Python floats:
    a few numpy calls on a handful of rows cost more than the loops.)"""
    lower_values, upper_values = lower.tolist(), np.asarray(upper).tolist()
    if counterexample is not None:  # a replayed point beats any reason the caller gave
        status = Status.NO
        worst = int(np.argmin(counterexample[2]))
        reason = (f"counterexample found: {row_name(spec, worst)} reaches "
                  f"{counterexample[2][worst]:.6g} <= 0 (float64 forward pass)")
    elif all(v > yes_tolerance for v in lower_values):  # (NaN: not above)
        status, reason = Status.YES, ""
    else:
        status = Status.MAYBE
        worst = int(np.argmin(lower))
        unproved = sum(not v > yes_tolerance for v in lower_values)  # NaN: unproved
        reason = reason or (f"not proved: {unproved} of {len(lower)} rows unproved; lower bound "
                            f"for {row_name(spec, worst)} is {lower[worst]:.6g} (relaxation "
                            f"too loose, or the property does not hold)")
    ball = spec.input_set
    n_classes = net.output_size
    return Certificate(
        status=status, method=method, label=spec.label,
        norm=norm_of(ball),
        eps=radius_of(ball),
        margin_lower=_per_class(spec, lower_values, n_classes),
        margin_upper=_per_class(spec, upper_values, n_classes),
        counterexample=None if counterexample is None else counterexample[0].tolist(),
        counterexample_logits=None if counterexample is None else counterexample[1].tolist(),
        reason=reason, time_s=time_s, domain=domain, model=model, cost=cost or {},
        details={**(details or {}), **({"yes_tolerance": yes_tolerance} if yes_tolerance else {})},
    )
