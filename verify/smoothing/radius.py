"""Radius formulas, confidence bounds, certified-accuracy curves and the numerical (UniCR) radius.

Confidence bounds (float64, scipy):
    clopper_pearson_lower(k, n, alpha) = Beta.ppf(alpha, k, n - k + 1), 0 when k = 0: a one-sided
    lower bound on a binomial p, P(bound > p) <= alpha; the upper bound is the mirror image
    (1 when k = n). `min_samples(alpha)` = smallest n for which n of n successes certifies.

Closed forms (sigma = per-coordinate std): `gaussian_radius`, `gaussian_radius_two_class`
(sigma/2 (PhiInv(pA) - PhiInv(pB))), `laplace_radius`, `uniform_radius`, `best_case_radius`
(sigma PhiInv(alpha^(1/n)), what n of n correct samples can certify at best).

Curves: `certified_accuracy(radii, correct, r)` = fraction of inputs that are correct with radius
>= r (abstains and misclassified inputs count as not certified; a radius of None/NaN is
"nothing certified"); `robustness_score` = area under that curve = the average certified radius
of the correct inputs (ACR), optionally truncated at r_max.

Numerical radius (UniCR, Hong et al. 2022) for any noise PDF and any l_p:
    Neyman-Pearson: given P_0(A) >= p for the class region A, the least possible probability of A
    under the shifted noise P_delta (density q(y) = p0(y - delta)) is, in dual form,

        p'(delta) = sup_{kappa >= 0}  1 - kappa (1 - p) - E_{Y ~ P_delta}[(1 - kappa w(Y))^+],
        w(Y) = p0(Y) / p0(Y - delta)  (the likelihood ratio; level sets = the NP sets),

    and the class is certified at delta iff p'(delta) > 1/2. The expectation is estimated with
    N samples Y = Z + delta, Z ~ noise. Monte-Carlo error, accounted for so that the radius stays
    a lower bound: since (1 - kappa w)^+ = ∫_s^inf e^{s-v} 1{-log w > v} dv (s = log kappa), a
    one-sided DKW (Massart) bound on the survival function of -log w(Y), which holds for every v at
    once with probability 1 - exp(-2 N eps^2), bounds the expectation by its sample mean + eps for
    every kappa at once: p'(delta) >= (sample value) - eps, eps = sqrt(log(1/beta) / (2N)).
    The error lands on p' near 1/2 (not on 1 - p), so it stays small even when p is close to 1.

    Search (UniCR): for each direction u (unit in l_p; by the symmetry of i.i.d. symmetric noise
    non-negative), bisection on r for the boundary p'(r u) = 1/2, on `n_search` search samples and
    without correction; directions: the k-sparse equal-magnitude vectors (k = 1, 2, 4, ..., d:
    the l_1 axis and the l_inf corner among them), random restarts, then random local refinement
    of the worst. Validation, on `n_mc` fresh samples: for the `validate` worst directions, the
    largest r on a fixed grid of `grid` radii in (0, 1.25 r_search] whose corrected bound is
    > 1/2, found by bisection; Bonferroni over directions x grid points: beta = alpha_mc /
    (validate * grid). With probability >= 1 - alpha_mc (given the bound p on the top class)
    every claimed point is certified.

    What is assumed, not proved: (a) the worst direction is among those tried (true by symmetry
    when it is an axis or a k-sparse corner, e.g. Gaussian, and Laplace/uniform in l_1; otherwise
    it is UniCR's heuristic), (b) p'(r u) decreases in r along each ray (so the grid point stands
    for the whole segment; true for the log-concave noises here). `NumericalRadius.error` =
    uncorrected estimate - radius: the Monte-Carlo slack in radius units.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
from scipy.stats import beta as _beta
from scipy.stats import norm as _normal

from ..errors import InputError
from .noise import Laplace, NoiseDistribution, Uniform

ArrayLike = Union[float, int, Sequence, np.ndarray]


# ---------------------------------------------------------------- confidence bounds

def clopper_pearson_lower(k: ArrayLike, n: int, alpha: float) -> np.ndarray | float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from k successes in n trials."""
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = np.where(k > 0, _beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)
    return float(out) if out.ndim == 0 else out


def clopper_pearson_upper(k: ArrayLike, n: int, alpha: float) -> np.ndarray | float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on p from k successes in n trials."""
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = np.where(k < n, _beta.ppf(1 - alpha, k + 1, np.maximum(n - k, 1)), 1.0)
    return float(out) if out.ndim == 0 else out


def min_samples(alpha: float) -> int:
    """Smallest n with alpha^(1/n) > 1/2: fewer samples can never certify, whatever they say."""
    n = max(1, math.floor(math.log(alpha) / math.log(0.5)))
    while alpha ** (1.0 / n) <= 0.5:
        n += 1
    return n


# ---------------------------------------------------------------- closed forms

def gaussian_radius(p_lower: ArrayLike, sigma: float) -> np.ndarray | float:
    """l_2 radius sigma PhiInv(pA) of Gaussian smoothing (Cohen et al. 2019); <= 0: none."""
    out = sigma * _normal.ppf(np.asarray(p_lower, dtype=np.float64))
    return float(out) if np.ndim(out) == 0 else out


def gaussian_radius_two_class(p_a_lower: float, p_b_upper: float, sigma: float) -> float:
    """l_2 radius sigma/2 (PhiInv(pA) - PhiInv(pB)) from separately bounded pA and pB
    (Cohen et al. 2019, Theorem 1); <= 0: none."""
    return float(sigma / 2 * (_normal.ppf(p_a_lower) - _normal.ppf(p_b_upper)))


def laplace_radius(p_lower: float, sigma: float) -> float:
    """l_1 radius -lam log(2 (1 - pA)) of Laplace smoothing, lam = sigma / sqrt 2."""
    return float(Laplace(sigma).closed_radius(p_lower, "1", 1))


def uniform_radius(p_lower: float, sigma: float) -> float:
    """l_1 radius 2 lam (pA - 1/2) of uniform smoothing on [-lam, lam]^d, lam = sigma sqrt 3."""
    return float(Uniform(sigma).closed_radius(p_lower, "1", 1))


def best_case_radius(n: int, alpha: float, sigma: float) -> float:
    """sigma PhiInv(alpha^(1/n)): the Gaussian l_2 radius when all n samples are correct."""
    return float(sigma * _normal.ppf(alpha ** (1.0 / n)))


# ---------------------------------------------------------------- certified accuracy

def _radii_correct(radii, correct) -> tuple[np.ndarray, np.ndarray]:
    radii = np.array([np.nan if r is None else float(r) for r in np.ravel(radii)])
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    if radii.shape != correct.shape:
        raise InputError(f"radii ({radii.size}) and correct ({correct.size}) differ in length")
    return radii, correct


def certified_accuracy(radii, correct, r: ArrayLike) -> np.ndarray | float:
    """Fraction of inputs that are correctly classified with certified radius >= r (per r)."""
    radii, correct = _radii_correct(radii, correct)
    r_arr = np.asarray(r, dtype=np.float64)
    ok = correct & ~np.isnan(radii)
    with np.errstate(invalid="ignore"):
        hits = ok[None, :] & (radii[None, :] >= r_arr.reshape(-1, 1))
    out = hits.mean(axis=1) if len(radii) else np.zeros(r_arr.size)
    return float(out[0]) if r_arr.ndim == 0 else out.reshape(r_arr.shape)


def robustness_score(radii, correct, r_max: Optional[float] = None) -> float:
    """Area under the certified-accuracy curve over [0, r_max] (all r when None): the mean of
    correct * min(radius, r_max), i.e. the average certified radius (ACR)."""
    radii, correct = _radii_correct(radii, correct)
    values = np.where(correct & ~np.isnan(radii), np.maximum(np.nan_to_num(radii, nan=0.0), 0), 0)
    if r_max is not None:
        values = np.minimum(values, r_max)
    return float(values.mean()) if len(values) else 0.0


# ---------------------------------------------------------------- numerical radius (UniCR)

def _p_value(norm: Union[str, float]) -> float:
    if isinstance(norm, str):
        key = norm.strip().lower().lstrip("l_")
        if key in ("inf", "infinity"):
            return math.inf
        norm = float(key)
    p = float(norm)
    if not p >= 1:
        raise InputError(f"l_p norm needs p >= 1 (or inf), got {norm}")
    return p


def _unit(u: np.ndarray, p: float) -> np.ndarray:
    u = np.abs(np.asarray(u, dtype=np.float64))
    return u / np.linalg.norm(u, ord=p)


def _candidate_directions(dim: int, q: float, restarts: int, rng: np.random.Generator
                          ) -> dict[str, np.ndarray]:
    """Shift directions to search, unit in l_q, sorted decreasingly (the noises are symmetric
    under coordinate permutations and sign flips): the k-sparse corners 1, 2, 4, ..., dim and
    `restarts` random profiles."""
    candidates: dict[str, np.ndarray] = {}
    k = 1
    while True:
        candidates[f"{k}-sparse"] = _unit(np.ones(k), q)
        if k >= dim:
            break
        k = min(2 * k, dim)
    for i in range(restarts):
        u = rng.exponential(size=dim) ** rng.uniform(0.5, 3.0)
        candidates[f"random{i}"] = _unit(np.sort(u)[::-1], q)
    return candidates


def dkw_epsilon(n: int, beta: float) -> float:
    """One-sided DKW/Massart deviation: P(sup (S - S_hat) > eps) <= exp(-2 n eps^2) = beta."""
    return math.sqrt(math.log(1.0 / beta) / (2.0 * n))


def np_lower_bound(log_w: np.ndarray, p: float) -> float:
    """Sample value of sup_kappa 1 - kappa (1 - p) - mean((1 - kappa w)^+), w = exp(log_w)
    (uncorrected; the maximum is at kappa = 0 or at a breakpoint kappa = 1 / w_j)."""
    lw = np.sort(np.asarray(log_w, dtype=np.float64))
    n = lw.size
    finite = np.isfinite(lw)
    if not finite.any():
        return 0.0
    top = lw[finite].max()
    scaled = np.where(finite, np.exp(lw - top), 0.0)  # w / e^top, in [0, 1]
    below = np.concatenate(([0.0], np.cumsum(scaled)[:-1]))  # sum_{i<j} w_i / e^top
    j = np.arange(n)
    usable = finite & (lw > top - 600.0)  # others give kappa so large that f is hugely negative
    inv_w = np.exp(-lw[usable])  # kappa_j = 1 / w_j
    f = 1.0 - (1.0 - p) * inv_w - (j[usable] - below[usable] / scaled[usable]) / n
    return float(max(0.0, np.max(f))) if f.size else 0.0


class _ShiftSampler:
    """log w = sum_i log p0(Z_i + delta_i) - log p0(Z_i) over the non-zero coordinates of delta,
    for N noise vectors Z drawn from a fixed seed (common random numbers across shifts)."""

    def __init__(self, noise: NoiseDistribution, n: int, seed: int, device="cpu",
                 chunk: int = 1 << 16, cache_limit: int = 1 << 22):
        self.noise, self.n, self.seed, self.chunk = noise, n, seed, chunk
        self.device = torch.device(device)
        self.cache_limit = cache_limit
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _blocks(self, k: int):
        """(Z, log p0(Z)) blocks for k coordinates: cached when small, else regenerated."""
        if k in self._cache:
            yield self._cache[k]
            return
        gen = torch.Generator(self.device).manual_seed(self.seed * 1000003 + k)
        cache = self.n * k <= self.cache_limit
        size = self.n if cache else self.chunk
        for start in range(0, self.n, size):
            z = torch.empty(min(size, self.n - start), k, dtype=torch.float64, device=self.device)
            z = self.noise.sample_(z, gen)
            block = (z, self.noise.log_density(z))
            if cache:
                self._cache[k] = block
            yield block

    def log_weights(self, delta_nonzero: np.ndarray) -> np.ndarray:
        delta = torch.as_tensor(delta_nonzero, dtype=torch.float64, device=self.device)
        parts = [self.noise.log_ratio(z, delta, base) for z, base in self._blocks(delta.numel())]
        return torch.cat(parts).cpu().numpy()


def lower_prob_shifted_mc(noise: NoiseDistribution, p: float, delta: np.ndarray,
                          n: int = 200_000, beta: float = 1e-3, seed: int = 0,
                          device="cpu") -> tuple[float, float]:
    """(lower bound holding with probability >= 1 - beta, uncorrected estimate) of the least
    probability of a class region of P_0-mass >= p under the noise shifted by `delta`."""
    delta = np.asarray(delta, dtype=np.float64).reshape(-1)
    nz = delta[delta != 0]
    if nz.size == 0:
        return p, p
    value = np_lower_bound(_ShiftSampler(noise, n, seed, device).log_weights(nz), p)
    return max(value - dkw_epsilon(n, beta), 0.0), value


@dataclass
class NumericalRadius:
    radius: float  # certified radius: a lower bound with probability >= 1 - alpha_mc
    estimate: float  # the same search on the validation samples without the DKW correction
    error: float  # estimate - radius: the Monte-Carlo slack, in radius units
    direction: list[float]  # the worst validated direction (unit in the l_p norm, sorted)
    norm: float
    p_lower: float
    n_search: int
    n_mc: int
    alpha_mc: float
    epsilon: float  # DKW deviation subtracted from every validated probability bound
    directions_tried: int
    evaluations: int = 0
    search_radii: dict = field(default_factory=dict)  # direction label -> search radius

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _RayBisection:
    def __init__(self, sampler: _ShiftSampler, p: float, eps: float = 0.0):
        self.sampler, self.p, self.eps = sampler, p, eps
        self.evaluations = 0

    def certified(self, u: np.ndarray, r: float) -> bool:
        self.evaluations += 1
        if r <= 0:
            return True
        delta = r * u[u > 0]
        return np_lower_bound(self.sampler.log_weights(delta), self.p) - self.eps > 0.5

    def boundary(self, u: np.ndarray, guess: float, rel_tol: float = 1e-2) -> float:
        lo, hi = 0.0, max(guess, 1e-12)
        for _ in range(60):
            if not self.certified(u, hi):
                break
            lo, hi = hi, hi * 2
        else:
            return math.inf
        while hi - lo > rel_tol * hi:
            mid = (lo + hi) / 2
            if self.certified(u, mid):
                lo = mid
            else:
                hi = mid
        return lo


def _initial_guess(noise: NoiseDistribution, p: float, q: float, dim: int) -> float:
    """A Gaussian-like starting radius in the l_q norm (only used to bracket the boundary)."""
    r2 = noise.sigma * max(float(_normal.ppf(min(p, 1 - 1e-16))), 1e-3)
    return r2 * (dim ** (1 / q - 0.5) if q >= 2 else 1.0)


@contextmanager
def _one_cpu_thread(device):
    """The Monte-Carlo tensors are small: on CPU, torch's intra-op threads only add contention
    (10x slower on a busy machine), so run them on one thread and restore the setting after."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def numerical_radius(noise: NoiseDistribution, p_lower: float, norm: Union[str, float],
                     dim: int, *, alpha_mc: float = 1e-3, n_mc: int = 200_000,
                     n_search: int = 20_000, restarts: int = 4, refine_steps: int = 8,
                     validate: int = 2, grid: int = 1024, seed: int = 0,
                     device="cpu") -> NumericalRadius:
    """Certified l_p radius of `noise` smoothing for a top-class probability >= p_lower, found
    numerically (UniCR search + validated Neyman-Pearson bound; see the module docstring)."""
    with _one_cpu_thread(device):
        return _numerical_radius(noise, p_lower, norm, dim, alpha_mc, n_mc, n_search, restarts,
                                 refine_steps, validate, grid, seed, device)


def _numerical_radius(noise, p_lower, norm, dim, alpha_mc, n_mc, n_search, restarts,
                      refine_steps, validate, grid, seed, device) -> NumericalRadius:
    q = _p_value(norm)
    if not 0 < alpha_mc < 1:
        raise InputError(f"alpha_mc must lie in (0, 1), got {alpha_mc}")
    eps = dkw_epsilon(n_mc, alpha_mc / (validate * grid))
    base = dict(norm=q, p_lower=float(p_lower), n_search=n_search, n_mc=n_mc, alpha_mc=alpha_mc,
                epsilon=eps)
    if p_lower <= 0.5:
        return NumericalRadius(0.0, 0.0, 0.0, [], directions_tried=0, **base)
    rng = np.random.default_rng(seed)
    search = _RayBisection(_ShiftSampler(noise, n_search, seed, device), p_lower)
    guess = _initial_guess(noise, p_lower, q, dim)

    candidates = _candidate_directions(dim, q, restarts, rng)
    radii = {name: search.boundary(u, guess) for name, u in candidates.items()}

    best_name = min(radii, key=radii.get)
    best_u, best_r = candidates[best_name], radii[best_name]
    step = 0.5
    for i in range(refine_steps):
        full = np.zeros(dim)
        full[:best_u.size] = best_u
        if best_u.size < dim and rng.uniform() < 0.5:  # sometimes spread onto new coordinates
            full[best_u.size:] = best_u.min() * rng.uniform(size=dim - best_u.size)
        trial = full * np.exp(step * rng.normal(size=dim))
        trial = trial[trial > 0]
        u = _unit(np.sort(trial)[::-1], q)
        r = search.boundary(u, best_r)
        name = f"refine{i}"
        candidates[name], radii[name] = u, r
        if r < best_r:
            best_u, best_r = u, r
        else:
            step /= 2

    # validation on fresh samples, fixed grid, Bonferroni over (directions x grid points)
    order = sorted(radii, key=radii.get)[:validate]
    checker = _RayBisection(_ShiftSampler(noise, n_mc, seed + 7919, device), p_lower, eps)
    raw = _RayBisection(checker.sampler, p_lower, 0.0)
    claimed, estimates = [], []
    for name in order:
        u, r_search = candidates[name], radii[name]
        if not math.isfinite(r_search):
            claimed.append(math.inf)
            estimates.append(math.inf)
            continue
        points = 1.25 * r_search * np.arange(1, grid + 1) / grid
        results = []
        lo = -1
        for bisect in (checker, raw):  # the uncorrected boundary lies beyond the corrected one
            hi = grid  # invariant: points[lo] certified (lo = -1: radius 0), points[hi] not
            if bisect.certified(u, points[-1]):
                lo = grid - 1
            else:
                hi = grid - 1
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if bisect.certified(u, points[mid]):
                        lo = mid
                    else:
                        hi = mid
            results.append(0.0 if lo < 0 else float(points[lo]))
        claimed.append(results[0])
        estimates.append(results[1])
    worst = int(np.argmin(claimed))
    radius, estimate = float(claimed[worst]), float(min(estimates))
    return NumericalRadius(
        radius=radius, estimate=estimate, error=max(estimate - radius, 0.0),
        direction=candidates[order[worst]].tolist(), directions_tried=len(candidates),
        evaluations=search.evaluations + checker.evaluations + raw.evaluations,
        search_radii={k: float(v) for k, v in radii.items()}, **base)


# ---------------------------------------------------------------- a radius curve over many pA

def np_lower_bounds(log_w: np.ndarray, p: np.ndarray) -> np.ndarray:
    """`np_lower_bound` for many p at once on the same samples (one sort): the value for each
    p, uncorrected. Non-decreasing in p (every breakpoint's line 1 - kappa (1 - p) - ... rises
    with p)."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    lw = np.sort(np.asarray(log_w, dtype=np.float64))
    n = lw.size
    finite = np.isfinite(lw)
    if not finite.any():
        return np.zeros_like(p)
    top = lw[finite].max()
    scaled = np.where(finite, np.exp(lw - top), 0.0)
    below = np.concatenate(([0.0], np.cumsum(scaled)[:-1]))
    usable = finite & (lw > top - 600.0)
    with np.errstate(over="ignore"):  # a huge 1/w is +inf: its line is -inf for p < 1
        inv_w = np.exp(-lw[usable])
    offset = 1.0 - (np.arange(n)[usable] - below[usable] / scaled[usable]) / n
    # f_j(p) = offset_j - (1 - p) inv_w_j, maximised over j, for each p (at p = 1 the slope
    # term is 0 even where 1/w overflowed, not 0 x inf = NaN)
    gap = (1.0 - p)[:, None]
    with np.errstate(invalid="ignore"):
        slope = np.where(gap == 0.0, 0.0, gap * inv_w[None, :])
    values = np.max(offset[None, :] - slope, axis=1)
    return np.maximum(values, 0.0)


@dataclass
class RadiusCurve:
    """Certified radius as a function of the top-class bound pA, from one set of samples.

    `radius[i]` is certified for every pA >= p_grid[i]; all entries hold together with
    probability >= 1 - alpha_mc. `lower(p)` interpolates downwards: the radius of the largest
    grid point <= p (0 below the grid), a non-decreasing step function below the true curve."""

    p_grid: np.ndarray  # ascending
    radius: np.ndarray  # certified, non-decreasing in p
    estimate: np.ndarray  # the same scan without the DKW correction
    norm: float
    dim: int
    n_search: int
    n_mc: int
    alpha_mc: float
    epsilon: float
    directions: list  # the validated directions (unit in l_p, sorted, non-zero entries)
    radius_grid: list  # per validated direction: the radii scanned (ascending)
    directions_tried: int
    evaluations: int

    def lower(self, p: ArrayLike) -> np.ndarray | float:
        """The certified radius for top-class bounds p (interpolated downwards)."""
        p_arr = np.asarray(p, dtype=np.float64)
        index = np.searchsorted(self.p_grid, p_arr, side="right") - 1
        out = np.where(index >= 0, self.radius[np.clip(index, 0, None)], 0.0)
        out = np.where(p_arr > 0.5, out, 0.0)
        return float(out) if out.ndim == 0 else out

    def error(self) -> np.ndarray:
        """Monte-Carlo slack per grid point, in radius units (estimate - radius)."""
        return np.maximum(self.estimate - self.radius, 0.0)


def _ladder(top: float, points: int, decades: float) -> np.ndarray:
    """`points` radii, geometric over `decades` decades up to `top`, ascending (a constant
    relative resolution 10^(decades / (points - 1)))."""
    return top * 10.0 ** (-decades * np.arange(points)[::-1] / max(points - 1, 1))


def _prefix_radius(radii: np.ndarray, certified: np.ndarray) -> np.ndarray:
    """Per column (p): the largest radius r_j such that every r_i <= r_j is certified (0 when the
    smallest is not). `certified` is (len(radii), len(p)), radii ascending."""
    ok = np.cumprod(certified, axis=0).astype(bool)
    count = ok.sum(axis=0)
    return np.where(count > 0, radii[np.maximum(count - 1, 0)], 0.0)


def numerical_radius_curve(noise: NoiseDistribution, p_grid: ArrayLike, norm: Union[str, float],
                           dim: int, *, alpha_mc: float = 1e-3, n_mc: int = 100_000,
                           n_search: int = 10_000, restarts: int = 2, refine_steps: int = 4,
                           validate: int = 2, grid: int = 200, decades: float = 1.5,
                           search_points: int = 24, seed: int = 0,
                           device="cpu") -> RadiusCurve:
    """The numerical (UniCR) radius for every pA in `p_grid` at once, on shared samples.

    Same bound and directions as `numerical_radius` (k-sparse, random, refined), but each
    evaluation of the shift log-likelihood ratios serves every p: for a direction u and a radius
    r the samples of log w are drawn once and the Neyman-Pearson value is computed for all p
    (`np_lower_bounds`). Search (n_search samples): per direction, a geometric ladder of
    `search_points` radii over `decades` decades below a bracket of the largest p's boundary.
    Validation (n_mc fresh samples): for the `validate` directions that are worst most often, a
    geometric ladder of `grid` radii over `decades` decades below top = 1.25 x the largest
    search boundary (relative resolution 10^(decades / (grid - 1)), 1.8% by default), scanned
    upwards *in full*; p's radius is the largest r_j such
    that the corrected bound is > 1/2 at every ladder point up to r_j (so the ray-monotonicity
    assumption (b) of the module docstring is checked at every ladder point, not assumed between
    bisection steps). DKW with Bonferroni over directions x ladder points: eps =
    dkw_epsilon(n_mc, alpha_mc / (validate * grid)); the correction holds for every kappa, hence
    for every p, at once, so the whole curve holds with probability >= 1 - alpha_mc. The radius
    is non-decreasing in p by construction (the bound is, for fixed samples). Radii below the
    ladder's bottom are reported as 0."""
    with _one_cpu_thread(device):
        return _numerical_radius_curve(noise, p_grid, norm, dim, alpha_mc, n_mc, n_search,
                                       restarts, refine_steps, validate, grid, decades,
                                       search_points, seed, device)


def _numerical_radius_curve(noise, p_grid, norm, dim, alpha_mc, n_mc, n_search, restarts,
                            refine_steps, validate, grid, decades, search_points, seed,
                            device) -> RadiusCurve:
    q = _p_value(norm)
    if not 0 < alpha_mc < 1:
        raise InputError(f"alpha_mc must lie in (0, 1), got {alpha_mc}")
    p_all = np.unique(np.asarray(p_grid, dtype=np.float64).reshape(-1))
    if p_all.size == 0 or not np.all((p_all >= 0) & (p_all <= 1)):
        raise InputError("p_grid must hold probabilities in [0, 1]")
    p = p_all[p_all > 0.5]
    eps = dkw_epsilon(n_mc, alpha_mc / (validate * grid))
    rng = np.random.default_rng(seed)
    evaluations = 0

    # the curve reuses each direction's samples hundreds of times: keep them (n x dim float64
    # twice, ~100 MB at n_mc = 100,000, d = 64) rather than redraw them per evaluation
    cache = max(1 << 22, max(n_search, n_mc) * dim)
    search_sampler = _ShiftSampler(noise, n_search, seed, device, cache_limit=cache)

    def values(sampler, u, r):
        nonlocal evaluations
        evaluations += 1
        return np_lower_bounds(sampler.log_weights(r * u[u > 0]), p)

    def search_boundaries(u: np.ndarray) -> np.ndarray:
        """Uncorrected prefix boundary per p along u on the search samples (pA = 1, whose
        true radius is infinite, gets the top of the ladder bracketing the largest p < 1)."""
        below_one = np.flatnonzero(p < 1.0)
        if not below_one.size:
            return np.full(p.size, math.inf)
        target = int(below_one[-1])
        hi = _initial_guess(noise, float(p[target]), q, dim)
        for _ in range(60):
            if not values(search_sampler, u, hi)[target] > 0.5:
                break
            hi *= 2
        else:
            return np.full(p.size, math.inf)
        radii = hi * 10.0 ** (-decades * np.arange(search_points)[::-1] / (search_points - 1))
        certified = np.array([values(search_sampler, u, r) > 0.5 for r in radii])
        return _prefix_radius(radii, certified)

    def score(b: np.ndarray) -> float:
        return float(np.mean(np.log(np.maximum(b, 1e-300))))

    base = dict(norm=q, dim=dim, n_search=n_search, n_mc=n_mc, alpha_mc=alpha_mc, epsilon=eps)
    if p.size == 0:
        zeros = np.zeros(p_all.size)
        return RadiusCurve(p_all, zeros, zeros.copy(), directions=[], radius_grid=[],
                           directions_tried=0, evaluations=0, **base)

    candidates = _candidate_directions(dim, q, restarts, rng)
    bounds = {name: search_boundaries(u) for name, u in candidates.items()}

    best_name = min(bounds, key=lambda name: score(bounds[name]))
    best_u, best_score = candidates[best_name], score(bounds[best_name])
    step = 0.5
    for i in range(refine_steps):
        full = np.zeros(dim)
        full[:best_u.size] = best_u
        if best_u.size < dim and rng.uniform() < 0.5:
            full[best_u.size:] = best_u.min() * rng.uniform(size=dim - best_u.size)
        trial = full * np.exp(step * rng.normal(size=dim))
        u = _unit(np.sort(trial[trial > 0])[::-1], q)
        name = f"refine{i}"
        candidates[name], bounds[name] = u, search_boundaries(u)
        if score(bounds[name]) < best_score:
            best_u, best_score = u, score(bounds[name])
        else:
            step /= 2

    names = list(bounds)
    table = np.array([bounds[name] for name in names])  # (directions, p)
    # how often each direction is the worst, over the p whose boundaries are all > 0 (a p below
    # every ladder ties at 0 and would credit the first direction)
    positive = np.all(table > 0, axis=0)
    worst_counts = np.bincount(np.argmin(table[:, positive], axis=0), minlength=len(names))
    order = sorted(range(len(names)), key=lambda i: (-worst_counts[i], score(table[i])))
    chosen = [names[i] for i in order[:validate]]

    checker = _ShiftSampler(noise, n_mc, seed + 7919, device, cache_limit=cache)
    radius = np.full(p.size, math.inf)
    estimate = np.full(p.size, math.inf)
    ladders = []
    for name in chosen:
        u, found = candidates[name], bounds[name][np.isfinite(bounds[name])]
        if not found.size:  # no boundary found on the search samples: nothing validated
            radius, estimate = np.zeros(p.size), np.zeros(p.size)
            ladders.append([])
            continue
        top = 1.25 * float(found.max())  # a p without a boundary gets at most the ladder top
        ladder = _ladder(top, grid, decades)
        ok_corrected = np.ones(p.size, dtype=bool)  # still certified at every point so far
        ok_raw = np.ones(p.size, dtype=bool)
        reach = np.zeros(p.size)
        reach_raw = np.zeros(p.size)
        for r in ladder:
            if not (ok_corrected.any() or ok_raw.any()):
                break
            value = values(checker, u, r)
            ok_corrected &= value - eps > 0.5
            ok_raw &= value > 0.5
            reach = np.where(ok_corrected, r, reach)
            reach_raw = np.where(ok_raw, r, reach_raw)
        radius = np.minimum(radius, reach)
        estimate = np.minimum(estimate, reach_raw)
        ladders.append(ladder.tolist())
    # below 1/2 nothing is certified; the running minimum from the right keeps the curve
    # non-decreasing without raising any entry (a no-op when the scan is monotone, as it is)
    full_radius = np.zeros(p_all.size)
    full_estimate = np.zeros(p_all.size)
    full_radius[p_all > 0.5] = np.minimum.accumulate(radius[::-1])[::-1]
    full_estimate[p_all > 0.5] = estimate
    return RadiusCurve(p_all, full_radius, full_estimate,
                       directions=[candidates[name].tolist() for name in chosen],
                       radius_grid=ladders, directions_tried=len(candidates),
                       evaluations=evaluations, **base)
