"""Specifications: an input set and an output property "C z > d for every row".

Input sets (all flat float64 over the network's input):
- `Box(lower, upper)`;
- `LpBall(center, eps, norm, lower, upper)`: {x : ||x - center||_p <= eps} ∩ [lower, upper].

Output property: `OutputProperty(C, d)` holds at x when every row of C f(x) - d is > 0. The
robustness property for label y has rows e_y - e_j for every j != y and d = 0, so row j's value is
the margin z_y - z_j. `robustness_spec` builds and validates that case from user input;
`robustness_specs` does it for a batch at once (same specifications, same errors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional, Union

import numpy as np

from .errors import InputError

NORMS = ("inf", "2", "1")
UNIT_ROUNDOFF = 2.0 ** -53  # float64's unit roundoff u: |fl(a op b) - a op b| <= u |a op b|
_EPS64 = 2 * UNIT_ROUNDOFF  # float64's machine epsilon
_NORM_ALIASES = {
    "inf": "inf", "linf": "inf", "l_inf": "inf", "infinity": "inf", "max": "inf",
    "2": "2", "l2": "2", "l_2": "2", "1": "1", "l1": "1", "l_1": "1",
}


def parse_norm(norm: Union[str, int, float]) -> str:
    """Canonical norm name ("inf", "2" or "1") from "inf"/"linf"/np.inf/2/"l2"/1/...."""
    if isinstance(norm, (int, float, np.integer, np.floating)) and not isinstance(norm, bool):
        key = "inf" if np.isinf(norm) else (str(int(norm)) if float(norm).is_integer() else "")
    else:
        key = str(norm).strip().lower()
    if key not in _NORM_ALIASES:
        raise InputError(f"unknown norm '{norm}': use one of inf, 2, 1")
    return _NORM_ALIASES[key]


def lp_norm(v: np.ndarray, norm: str) -> np.ndarray:
    """||v||_p along the last axis."""
    return np.linalg.norm(v, ord=np.inf if norm == "inf" else int(norm), axis=-1)


@dataclass
class Box:
    """{x : lower <= x <= upper} (flat)."""

    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self) -> None:
        self.lower = np.asarray(self.lower, dtype=np.float64).reshape(-1)
        self.upper = np.asarray(self.upper, dtype=np.float64).reshape(-1)

    @property
    def dim(self) -> int:
        return self.lower.size

    @property
    def center(self) -> np.ndarray:
        return (self.lower + self.upper) / 2

    def bounding_box(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lower, self.upper

    def project(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, self.lower, self.upper)

    def contains(self, x: np.ndarray) -> bool:
        return bool(np.all(x >= self.lower) and np.all(x <= self.upper))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n points: uniform inside, with random corners mixed in (a quarter of them)."""
        u = rng.uniform(size=(n, self.dim))
        corners = rng.uniform(size=(n, 1)) < 0.25
        u = np.where(corners, np.round(u), u)
        return self.project(self.lower + u * (self.upper - self.lower))


@dataclass
class LpBall:
    """{x : ||x - center||_p <= eps} ∩ [lower, upper] (flat; the box may be infinite)."""

    center: np.ndarray
    eps: float
    norm: str = "inf"
    lower: Optional[np.ndarray] = None
    upper: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float64).reshape(-1)
        n = self.center.size
        self.lower = np.full(n, -np.inf) if self.lower is None else \
            np.broadcast_to(np.asarray(self.lower, dtype=np.float64), (n,)).copy()
        self.upper = np.full(n, np.inf) if self.upper is None else \
            np.broadcast_to(np.asarray(self.upper, dtype=np.float64), (n,)).copy()
        self.eps = float(self.eps)
        self.norm = parse_norm(self.norm)
        # The bounds' float analyses (the midpoint form of the box) and `project` assume it.
        outside = np.flatnonzero((self.center < self.lower) | (self.center > self.upper))
        if outside.size:
            i = int(outside[0])
            raise InputError(f"input value {self.center[i]:g} at index {i} lies outside the "
                             f"domain [{self.lower[i]:g}, {self.upper[i]:g}]")

    @classmethod
    def validated(cls, center: np.ndarray, eps: float, norm: str, lower: np.ndarray,
                  upper: np.ndarray) -> "LpBall":
        """A ball from arguments the caller has already checked as __post_init__ would: flat
        float64 arrays of one size (not shared with other sets), eps a float, a canonical norm,
        center inside [lower, upper]. No copies, no checks (for batches validated at once)."""
        ball = object.__new__(cls)
        ball.center, ball.eps, ball.norm, ball.lower, ball.upper = center, eps, norm, lower, upper
        return ball

    @property
    def dim(self) -> int:
        return self.center.size

    def bounding_box(self) -> tuple[np.ndarray, np.ndarray]:
        """The smallest box holding the set, [center - eps, center + eps] ∩ [lower, upper],
        with center ± eps rounded outwards so that the float box holds the real one."""
        return (np.maximum(np.nextafter(self.center - self.eps, -np.inf), self.lower),
                np.minimum(np.nextafter(self.center + self.eps, np.inf), self.upper))

    def project(self, x: np.ndarray) -> np.ndarray:
        """A point of the set near x: radial shrink onto the ball, then clip into the box.

        Clipping keeps the point in the ball because the center lies in the box: each coordinate
        only moves towards the center's. The float64 result is then pulled towards the center
        until `contains` (an exact test) accepts it, so the real point lies in the set.
        """
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        delta = x - self.center
        # Aim a hair inside (relative 4 (n + 2) ulps), where float64 alone can decide membership.
        radius = self.eps * (1 - 8 * (self.dim + 2) * _EPS64)
        if self.norm == "inf":
            delta = np.clip(delta, -radius, radius)
        else:
            size = lp_norm(delta, self.norm)
            if not np.isfinite(size):
                delta = np.zeros_like(delta)
            elif size > radius:
                delta = delta * (radius / size)
        for k in range(64):
            point = np.clip(self.center + delta, self.lower, self.upper)
            if self.contains(point):
                return point
            delta = delta * (1 - 2.0 ** (k - 52))  # shrink by 1, 2, 4, ... ulps, then more
        return np.clip(self.center, self.lower, self.upper)

    def contains(self, x: np.ndarray) -> bool:
        """Exact membership of the float64 point x in the real set (rational arithmetic where
        float64 cannot decide)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if not (np.all(x >= self.lower) and np.all(x <= self.upper)):
            return False
        delta = np.abs(x - self.center)
        if self.norm == "inf":
            # |x - c| in float64 is within half an ulp of the truth: decide clear cases in float.
            unclear = np.flatnonzero(delta >= self.eps * (1 - 4 * _EPS64))
            if np.any(delta > self.eps * (1 + 4 * _EPS64)):
                return False
            eps = Fraction(self.eps)
            return all(abs(Fraction(x[i]) - Fraction(self.center[i])) <= eps for i in unclear)
        size = lp_norm(delta, self.norm)
        slack = 4 * (self.dim + 2) * _EPS64  # relative error of the float norm, generously
        if size <= self.eps * (1 - slack):
            return True
        if size > self.eps * (1 + slack):
            return False
        diffs = [abs(Fraction(a) - Fraction(c)) for a, c in zip(x, self.center)]
        if self.norm == "1":
            return sum(diffs) <= Fraction(self.eps)
        return sum(d * d for d in diffs) <= Fraction(self.eps) ** 2

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n points of the set: uniform in the ball, plus extreme points (l_inf corners, l_1
        vertices, l_2 sphere points) for a quarter of them; then clipped into the box."""
        d = self.dim
        extreme = rng.uniform(size=(n, 1)) < 0.25
        if self.norm == "inf":
            u = rng.uniform(-1, 1, size=(n, d))
            delta = np.where(extreme, np.sign(u), u)
        elif self.norm == "2":
            g = rng.normal(size=(n, d))
            g /= np.linalg.norm(g, axis=1, keepdims=True)
            r = np.where(extreme, 1.0, rng.uniform(size=(n, 1)) ** (1.0 / d))
            delta = g * r
        else:  # uniform in the l_1 ball: Dirichlet(1,...,1) magnitudes, random signs, radius
            e = rng.exponential(size=(n, d + 1))
            mags = e[:, :d] / e.sum(axis=1, keepdims=True)
            vertex = np.eye(d)[rng.integers(d, size=n)]
            mags = np.where(extreme, vertex, mags)
            delta = mags * rng.choice([-1.0, 1.0], size=(n, d))
        points = self.center + self.eps * delta
        return np.array([self.project(p) for p in points])


InputSet = Union[Box, LpBall]


@dataclass
class OutputProperty:
    """Holds at x when C f(x) - d > 0 row by row. `row_class[i]` is the class row i competes
    with (robustness), or None for general rows. `closed[i]`: row i refutes a strict violation
    (C_i f(x) - d_i < 0, from VNN-LIB's `<`), so C_i f(x) - d_i >= 0 already holds it."""

    C: np.ndarray
    d: np.ndarray
    row_class: list = field(default_factory=list)
    closed: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.C = np.atleast_2d(np.asarray(self.C, dtype=np.float64))
        self.d = np.asarray(self.d, dtype=np.float64).reshape(-1)
        if not self.row_class:
            self.row_class = [None] * len(self.C)

    @classmethod
    def robustness(cls, label: int, n_classes: int) -> "OutputProperty":
        """Rows e_label - e_j for every j != label: the margins z_label - z_j."""
        others = [j for j in range(n_classes) if j != label]
        C = np.zeros((len(others), n_classes))
        C[:, label] = 1.0
        C[np.arange(len(others)), others] = -1.0
        return cls(C, np.zeros(len(others)), others)

    @classmethod
    def robustness_rows(cls, labels: np.ndarray, n_classes: int) -> list["OutputProperty"]:
        """`robustness(label, n_classes)` for every label, built as one (B, k-1, k) array."""
        others = np.array([[j for j in range(n_classes) if j != y] for y in range(n_classes)],
                          dtype=np.int64).reshape(n_classes, n_classes - 1)
        rows = others[labels]  # (B, k-1) the class of each row
        C = np.zeros((len(labels), n_classes - 1, n_classes))
        C[np.arange(len(labels)), :, labels] = 1.0
        np.put_along_axis(C, rows[:, :, None], -1.0, axis=2)
        d = np.zeros((len(labels), n_classes - 1))
        out = []
        for b, row_class in enumerate(rows.tolist()):
            prop = object.__new__(cls)  # already float64 arrays of the right shapes
            prop.C, prop.d, prop.row_class, prop.closed = C[b], d[b], row_class, None
            out.append(prop)
        return out

    def refuted_by(self, lower: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
        """Per row, whether `lower`, a lower bound of C_i f(x) - d_i over the input set, proves
        the row: > `tolerance`, or >= it on a closed row (NaN proves nothing)."""
        lower = np.asarray(lower, dtype=np.float64)
        proved = lower > tolerance
        if self.closed is not None:
            proved |= np.asarray(self.closed, dtype=bool) & (lower >= tolerance)
        return proved

    def values(self, logits: np.ndarray) -> np.ndarray:
        """C z - d for logits of shape (..., k)."""
        return logits @ self.C.T - self.d


@dataclass
class Specification:
    """An input set, an output property, and (for robustness) the label it protects."""

    input_set: InputSet
    output: OutputProperty
    label: Optional[int] = None


def _domain_bounds(domain, n: int) -> tuple[np.ndarray, np.ndarray]:
    if domain is None:
        return np.full(n, -np.inf), np.full(n, np.inf)
    try:
        lo, hi = domain
        lo = np.broadcast_to(np.asarray(lo, dtype=np.float64).reshape(-1), (n,)).copy()
        hi = np.broadcast_to(np.asarray(hi, dtype=np.float64).reshape(-1), (n,)).copy()
    except (TypeError, ValueError):
        raise InputError(f"domain must be a pair (low, high) of numbers or of {n}-vectors") \
            from None
    if np.any(np.isnan(lo)) or np.any(np.isnan(hi)) or np.any(lo > hi):
        raise InputError("domain must have low <= high and no NaN")
    return lo, hi


def robustness_spec(n_inputs: int, n_classes: int, x, label, eps, norm="inf",
                    domain=None) -> Specification:
    """Validated robustness specification: ball(x, eps, norm) ∩ domain, rows z_label - z_j."""
    try:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError("input must be numbers") from None
    if x.size != n_inputs:
        raise InputError(f"input has {x.size} values, the network expects {n_inputs}")
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise InputError(f"input holds NaN or infinity (first at index {bad})")
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) \
            and not (isinstance(label, float) and label.is_integer()):
        raise InputError(f"label must be an integer class index, got {label!r}")
    label = int(label)
    if not 0 <= label < n_classes:
        raise InputError(f"label {label} is outside the classes 0..{n_classes - 1}")
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise InputError(f"eps must be a number, got {eps!r}") from None
    if not np.isfinite(eps) or eps < 0:
        raise InputError(f"eps must be a finite number >= 0, got {eps}")
    norm = parse_norm(norm)
    lo, hi = _domain_bounds(domain, n_inputs)
    ball = LpBall(x, eps, norm, lo, hi)  # refuses an x outside the domain
    return Specification(ball, OutputProperty.robustness(label, n_classes), label)


def robustness_specs(n_inputs: int, n_classes: int, xs, labels, eps, norm="inf",
                     domain=None) -> list[Specification]:
    """`robustness_spec` for every (x, label) pair, validated once for the whole batch.

    Inputs that are not a clean batch (non-integer labels, a bad value, a bad eps, ...) go
    through `robustness_spec` one by one, which raises its error for the first bad input."""
    def one_by_one() -> list[Specification]:
        return [robustness_spec(n_inputs, n_classes, x, y, eps, norm, domain)
                for x, y in zip(xs, labels)]

    try:
        label_array = np.asarray(labels)
        centers = np.array(xs, dtype=np.float64).reshape(len(label_array), -1)
        eps_value = float(eps)
        norm_name = parse_norm(norm)
        lo, hi = _domain_bounds(domain, n_inputs)
    except (TypeError, ValueError, InputError):
        return one_by_one()
    plain_labels = isinstance(labels, np.ndarray) or not any(isinstance(y, bool) for y in labels)
    if label_array.dtype.kind not in "iu" or label_array.ndim != 1 or not plain_labels \
            or centers.shape[1] != n_inputs or not np.all(np.isfinite(centers)) \
            or np.any((label_array < 0) | (label_array >= n_classes)) \
            or not np.isfinite(eps_value) or eps_value < 0 \
            or np.any((centers < lo) | (centers > hi)):
        return one_by_one()
    lowers = np.broadcast_to(lo, centers.shape).copy()  # one row per set, as LpBall copies
    uppers = np.broadcast_to(hi, centers.shape).copy()
    outputs = OutputProperty.robustness_rows(label_array.astype(np.int64), n_classes)
    return [Specification(LpBall.validated(centers[b], eps_value, norm_name, lowers[b], uppers[b]),
                          outputs[b], int(label_array[b])) for b in range(len(centers))]


def norm_of(input_set: "InputSet") -> str:
    """The norm of an LpBall ("inf", "2", "1"); "box" for a Box."""
    return input_set.norm if isinstance(input_set, LpBall) else "box"


def radius_of(input_set: "InputSet") -> float:
    """The radius eps of an LpBall; 0.0 for a Box."""
    return input_set.eps if isinstance(input_set, LpBall) else 0.0
