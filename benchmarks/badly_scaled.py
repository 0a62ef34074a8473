"""Badly scaled one-input ReLU networks with exactly known minima: MILP's wrong answers.

A float64 MLP 1-h-h-h-2 with weights of magnitude 10^s (s drawn up to `max_exponent`) and a
last-layer bias that moves the margin's minimum to within a hair of 0 (from either side). With
one input the network is piecewise linear in x with finitely many breakpoints; `exact_minimum`
finds them layer by layer (each pre-activation is linear between the breakpoints of the layers
before it, so its own zero crossings are roots of linear pieces) and evaluates the margin at
every breakpoint and both ends. Every evaluated point lies in the interval, so the minimum over
them is an upper bound on the true minimum (equal to it up to the roots' rounding): a YES with
margin_lower above it is wrong.

    python benchmarks/badly_scaled.py --nets 500 --commit HEAD~1   # wrong answers, this tree vs another

writes benchmarks/results/badly_scaled.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from verify import Dense, Network, ReLU, Specification, robustness_spec  # noqa: E402


def make_net(seed: int, hidden: tuple[int, ...] = (5, 5, 6), max_exponent: float = 5.0
             ) -> tuple[Network, Specification]:
    """A 1-input, 2-class net with weights ~10^U(0, max_exponent) and its robustness spec
    (label 0) on an interval whose margin minimum sits just above or just below 0."""
    rng = np.random.default_rng(seed)
    sizes = (1,) + tuple(hidden) + (2,)
    layers = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        scale = 10.0 ** rng.uniform(max_exponent / 2, max_exponent)
        weight = rng.standard_normal((n_out, n_in)) * scale
        bias = rng.standard_normal(n_out) * scale * rng.uniform(0, 2)
        layers.append(Dense(weight, bias, (n_in,), (n_out,)))
        if k < len(sizes) - 2:
            layers.append(ReLU((n_out,)))
    center, eps = rng.uniform(-1, 1), 10.0 ** rng.uniform(-3, 0)
    net = Network(layers, (1,), name=f"badly_scaled_{seed}")
    spec = robustness_spec(1, 2, [center], 0, eps)
    lowest, _ = exact_minimum(net, spec)
    # shift class 0's bias so the minimum becomes `target`, a hair above or below 0
    target = rng.choice([-1.0, 1.0]) * 10.0 ** rng.uniform(-4, 0)
    last = layers[-1]
    shifted = last.bias.copy()
    shifted[0] += target - lowest[0]
    layers[-1] = Dense(last.weight, shifted, last.in_shape, last.out_shape)
    return Network(layers, (1,), name=f"badly_scaled_{seed}"), spec


def breakpoints(net: Network, lo: float, hi: float) -> np.ndarray:
    """Sorted points of [lo, hi] containing every breakpoint of the net (one input) and the ends.
    Before ReLU layer k each pre-activation is linear between consecutive points found for the
    layers before it, so its zero crossings are the roots of those linear pieces."""
    points = np.array([lo, hi], dtype=np.float64)
    for k, layer in enumerate(net.layers):
        if not isinstance(layer, ReLU):
            continue
        pre = points[:, None]
        for before in net.layers[:k]:
            pre = before.forward(pre)
        a, b = pre[:-1], pre[1:]
        i, j = np.nonzero(a * b < 0)
        t = a[i, j] / (a[i, j] - b[i, j])
        roots = points[i] + t * (points[i + 1] - points[i])
        points = np.unique(np.concatenate([points, np.clip(roots, lo, hi)]))
    return points


def exact_minimum(net: Network, spec: Specification) -> tuple[np.ndarray, np.ndarray]:
    """(per-row minimum of C f(x) - d over the breakpoints and ends, the point of each)."""
    lo, hi = (float(v[0]) for v in spec.input_set.bounding_box())
    points = breakpoints(net, lo, hi)
    values = spec.output.values(net.forward(points[:, None]))
    k = values.argmin(axis=0)
    return values[k, np.arange(values.shape[1])], points[k]


def judge(net: Network, spec: Specification, method: str, **options) -> dict:
    """Run one certifier; 'wrong' when it says YES although the minimum is <= 0, or reports a
    margin_lower above the evaluated minimum (beyond float64 rounding of the replay)."""
    from verify import certify_specs

    lowest, _ = exact_minimum(net, spec)
    cert = certify_specs(net, [spec], method, **options)[0]
    lower = np.array([v for v in cert.margin_lower if v is not None], dtype=np.float64)
    logits = net.forward(np.array([spec.input_set.center[0]]))
    slack = 1e-9 * (1.0 + float(np.abs(logits).max()))
    above = bool(np.any(lower > lowest + slack))
    yes = cert.status.name == "YES"
    return {"status": cert.status.name, "wrong": (yes and bool(np.any(lowest <= 0))) or above,
            "lower_above_minimum": above, "minimum": float(lowest.min()),
            "margin_lower": float(lower.min()), "reason": cert.reason}
