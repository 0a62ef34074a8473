"""Noise distributions for randomized smoothing: i.i.d. over coordinates, zero mean, std `sigma`.

Every distribution is parameterised by its per-coordinate standard deviation `sigma`, so that
noises of one `sigma` are comparable. Each one knows how to

- fill a torch tensor with samples in place (`sample_`), on the tensor's device, from a seeded
  `torch.Generator` (the CERTIFY/PREDICT sampler and the Monte-Carlo radius both use it);
- evaluate its per-coordinate log density (`log_density`, float64; the numerical radius needs it);
- where a closed form exists, bound the probability of a class after a shift of the input
  (`lower_prob_shifted`) and give the certified radius (`closed_radius`); None where none exists.

Closed forms (p = lower bound on the top class's probability at x, d = input dimension):

    Gaussian N(0, sigma^2):       l_2 radius sigma PhiInv(p);  l_1 the same (l_1 ball ⊂ l_2 ball);
                                  l_inf radius = l_2 radius / sqrt(d) (exact: the corner is worst).
                                  Shifted bound Phi(PhiInv(p) - ||delta||_2 / sigma)
                                  (Cohen et al. 2019).
    Laplace, scale lam = sigma/√2: l_1 radius -lam log(2 (1 - p)) (Teng et al. 2020; exact).
                                  Shifted bound max(1 - e^t (1 - p), e^-t p), t = ||delta||_1 / lam
                                  (the likelihood ratio of a shift lies within e^{±t}).
                                  l_inf: Yang et al. 2020's differential method (rs4a,
                                  proved, their "integrate" mode):
                                  R_inf = lam ∫_{1-p}^{1/2} dx / Phi_inf(x), Phi_inf(x) = the
                                  largest mean of S = sum_i sign(z_i) (= 2 Bin(d, 1/2) - d)
                                  over an event of mass x (top x of S); computed exactly, the
                                  integrand being piecewise 1/linear.
    Uniform on [-lam, lam], lam = sigma √3:
                                  l_1 radius 2 lam (p - 1/2); l_inf radius
                                  2 lam (1 - (3/2 - p)^(1/d)) (Yang et al. 2020). Shifted
                                  bound p - (1 - overlap), overlap = prod(1 - |delta_i| / 2 lam)
                                  >= 1 - ||delta||_1 / 2 lam and >= (1 - ||delta||_inf / 2 lam)^d.
    Laplace and uniform in any norm: the best of what every ball inclusion proves (rs4a's
    conversion, here in every direction): ||x||_m <= c ||x||_n with c = d^(1/m - 1/n) for m < n,
    c = 1 for m >= n, so the l_n ball of radius R_m / c lies in the l_m ball of radius R_m:
    R_n = max_m R_m / c. E.g. R_2 = max(R_1 / √d, R_inf), R_inf = max(R_inf, R_1 / d), and the
    shifted bound after ||delta||_n <= r is the largest of the l_m bounds at c r. So
    R_1 >= R_2 >= R_inf >= R_1 / d, and each is non-decreasing in p.
    GeneralNormal(beta), density ∝ exp(-|x/a|^beta); Mixture of the above (per coordinate):
                                  no closed form here; use `radius.numerical_radius`.

`make_noise("gaussian" | "laplace" | "uniform" | "gennorm:BETA", sigma)` builds one from a name.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional, Sequence, Union

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import gammaln
from scipy.stats import norm as _normal

from ..errors import InputError


def _p(norm: str) -> float:
    return math.inf if norm == "inf" else float(norm)


def inclusion_factor(norm: str, outer: str, dim: int) -> float:
    """c with ||x||_outer <= c ||x||_norm on R^dim: d^(1/outer - 1/norm) if outer < norm, else 1.
    The l_norm ball of radius r lies in the l_outer ball of radius c r."""
    p, q = _p(norm), _p(outer)
    return float(dim) ** (1 / q - 1 / p) if q < p else 1.0


def standard_gamma_(out: torch.Tensor, shape: float, generator: torch.Generator) -> torch.Tensor:
    """Fill `out` (float64 or float32, on the generator's device) with Gamma(shape, 1) variates,
    in place: Marsaglia and Tsang's squeeze-free rejection method (ACM TOMS 2000) for shape >= 1,
    vectorised (each round redraws only the rejected entries; acceptance >= 95%); for shape < 1,
    Gamma(shape + 1) * U^(1/shape). Deterministic given the generator's state (torch.distributions'
    gamma takes no generator)."""
    shape = float(shape)
    if not math.isfinite(shape) or shape <= 0:
        raise InputError(f"the gamma shape must be > 0, got {shape}")
    boost = shape < 1
    d = (shape + 1.0 if boost else shape) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    flat = out.view(-1)
    kw = dict(generator=generator, dtype=torch.float64, device=out.device)

    def propose(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """m proposals d v and whether each is accepted."""
        x = torch.randn(m, **kw)
        log_u = torch.rand(m, **kw).log_()
        t = 1.0 + c * x
        v = t * t * t
        ok = (v > 0) & (log_u < 0.5 * x * x + d - d * v + d * v.clamp(min=1e-300).log())
        return d * v, ok

    value, ok = propose(flat.numel())  # first round over everything, then only the rejected
    flat.copy_(value)
    todo = (~ok).nonzero().view(-1)
    while todo.numel():
        value, ok = propose(todo.numel())
        flat[todo[ok]] = value[ok].to(flat.dtype)
        todo = todo[~ok]
    if boost:  # Gamma(k) = Gamma(k + 1) U^(1/k), the power taken in logs (U^(1/k) may underflow)
        u = torch.rand(flat.shape, **kw)
        flat.copy_((flat.to(torch.float64).log() + u.log() / shape).exp().to(flat.dtype))
    return out


class NoiseDistribution:
    """Base class: zero-mean noise, i.i.d. over coordinates, per-coordinate std `sigma`."""

    name = "noise"
    native_norm: Optional[str] = None  # norm of the closed-form radius, if any

    def __init__(self, sigma: float):
        sigma = float(sigma)
        if not math.isfinite(sigma) or sigma <= 0:
            raise InputError(f"sigma must be a finite number > 0, got {sigma}")
        self.sigma = sigma

    def sample_(self, out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Fill `out` with i.i.d. samples in place and return it."""
        raise NotImplementedError

    def log_density(self, t: torch.Tensor) -> torch.Tensor:
        """Per-coordinate log density (normalised), elementwise; -inf outside the support."""
        raise NotImplementedError

    def log_ratio(self, z: torch.Tensor, delta: torch.Tensor,
                  base: Optional[torch.Tensor] = None) -> torch.Tensor:
        """sum_i log p(z_i + delta_i) - log p(z_i) per row of z (base = log_density(z), cached)."""
        if base is None:
            base = self.log_density(z)
        return (self.log_density(z + delta) - base).sum(1)

    def lower_prob_shifted(self, p: float, r: float, norm: str, dim: int) -> Optional[float]:
        """Lower bound on P(f(x + delta + noise) = c) over ||delta||_norm <= r, given
        P(f(x + noise) = c) >= p; None when this noise has no closed form."""
        return None

    def closed_radius(self, p: float, norm: str, dim: int) -> Optional[float]:
        """Certified radius in `norm` for top-class probability >= p (<= 0: nothing certified);
        None when this noise has no closed form."""
        return None

    def describe(self) -> str:
        return f"{self.name}(sigma={self.sigma:g})"

    def to_dict(self) -> dict:
        return {"name": self.name, "sigma": self.sigma}

    def __repr__(self) -> str:
        return self.describe()


class Gaussian(NoiseDistribution):
    name = "gaussian"
    native_norm = "2"

    def sample_(self, out, generator):
        return out.normal_(0.0, self.sigma, generator=generator)

    def log_density(self, t):
        return -0.5 * (t / self.sigma) ** 2 - math.log(self.sigma * math.sqrt(2 * math.pi))

    def log_ratio(self, z, delta, base=None):
        return -(z @ delta) / self.sigma ** 2 - float(delta @ delta) / (2 * self.sigma ** 2)

    def _l2(self, r: float, norm: str, dim: int) -> float:
        return r * (math.sqrt(dim) if norm == "inf" else 1.0)

    def lower_prob_shifted(self, p, r, norm, dim):
        return float(_normal.cdf(_normal.ppf(p) - self._l2(r, norm, dim) / self.sigma))

    def closed_radius(self, p, norm, dim):
        r2 = self.sigma * float(_normal.ppf(p))
        return r2 / math.sqrt(dim) if norm == "inf" else r2


class _ProvedNorms(NoiseDistribution):
    """A noise with radii proved directly in the norms `proved`; every other norm (and these
    too) takes the best of what the ball inclusions give (see the module docstring)."""

    proved: tuple[str, ...] = ()

    def _radius_in(self, p: float, norm: str, dim: int) -> float:
        raise NotImplementedError

    def _lower_in(self, p: float, r: float, norm: str, dim: int) -> float:
        raise NotImplementedError

    def closed_radius(self, p, norm, dim):
        return float(max(self._radius_in(p, m, dim) / inclusion_factor(norm, m, dim)
                         for m in self.proved))

    def lower_prob_shifted(self, p, r, norm, dim):
        return float(max(self._lower_in(p, r * inclusion_factor(norm, m, dim), m, dim)
                         for m in self.proved))


@lru_cache(maxsize=64)
def _sign_sum_table(dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S = sum of dim random signs, values s_j = dim - 2 j (descending) with masses
    pi_j = C(dim, j) / 2^dim; returns (s, cumulative mass before j, Phi_inf at that mass), where
    Phi_inf(x) = largest mean of S over an event of mass x (piecewise linear, slope s_j)."""
    j = np.arange(dim + 1)
    s = (dim - 2 * j).astype(np.float64)
    mass = np.exp(gammaln(dim + 1) - gammaln(j + 1) - gammaln(dim - j + 1) - dim * math.log(2))
    before = np.concatenate(([0.0], np.cumsum(mass)[:-1]))
    phi_before = np.concatenate(([0.0], np.cumsum(mass * s)[:-1]))
    return s, before, phi_before


def _laplace_linf_integral(x0: float, x1: float, dim: int) -> float:
    """∫_{x0}^{x1} dx / Phi_inf(x) (0 < x0 <= x1 < 1), exactly, piece by piece."""
    s, before, phi_before = _sign_sum_table(dim)
    total = 0.0
    for j in range(dim + 1):
        lo, hi = max(x0, before[j]), min(x1, before[j + 1] if j < dim else 1.0)
        if hi <= lo:
            continue
        f_lo = phi_before[j] + s[j] * (lo - before[j])
        f_hi = phi_before[j] + s[j] * (hi - before[j])
        if f_lo <= 0 or f_hi <= 0:
            return math.inf
        total += (hi - lo) / f_lo if s[j] == 0 else math.log(f_hi / f_lo) / s[j]
    return total


class Laplace(_ProvedNorms):
    """Laplace with scale lam = sigma / sqrt(2) (variance 2 lam^2 = sigma^2)."""

    name = "laplace"
    native_norm = "1"
    proved = ("1", "inf")

    @property
    def scale(self) -> float:
        return self.sigma / math.sqrt(2.0)

    def sample_(self, out, generator):
        # inverse CDF of u ~ U(-1/2, 1/2): -lam sign(u) log(1 - 2|u|); |u| kept below 1/2.
        out.uniform_(-0.5, 0.5, generator=generator)
        sign = torch.sign(out)
        out.abs_().clamp_(max=0.5 - 2.0 ** -25).mul_(-2.0).log1p_().mul_(-self.scale)
        return out.mul_(sign)

    def log_density(self, t):
        return -t.abs() / self.scale - math.log(2 * self.scale)

    def _radius_in(self, p, norm, dim):
        if p <= 0.5:
            return 0.0 if p == 0.5 else -math.inf
        if p >= 1:
            return math.inf
        if norm == "1":
            return -self.scale * math.log(2.0 * (1.0 - p))
        return self.scale * _laplace_linf_integral(1.0 - p, 0.5, dim)  # rs4a, differential

    def _lower_in(self, p, r, norm, dim):
        if norm == "1":
            t = r / self.scale
            return float(max(1.0 - math.exp(min(t, 700.0)) * (1.0 - p), math.exp(-t) * p, 0.0))
        # l_inf: the mass x of the other classes grows at most at rate Phi_inf(x) / lam, so
        # after a shift r it is at most the x with lam ∫_{1-p}^x dx' / Phi_inf(x') = r
        if p <= 0 or r <= 0:
            return max(float(p), 0.0) if r <= 0 else 0.0
        if p >= 1:
            return 1.0
        x0 = 1.0 - p

        def excess(x: float) -> float:
            return self.scale * _laplace_linf_integral(x0, x, dim) - r

        if excess(1.0 - 1e-15) <= 0:
            return 0.0
        return float(max(1.0 - brentq(excess, x0, 1.0 - 1e-15, xtol=1e-15, rtol=1e-13), 0.0))


class Uniform(_ProvedNorms):
    """Uniform on [-lam, lam] with lam = sigma * sqrt(3) (variance lam^2 / 3 = sigma^2)."""

    name = "uniform"
    native_norm = "1"
    proved = ("1", "inf")

    @property
    def half_width(self) -> float:
        return self.sigma * math.sqrt(3.0)

    def sample_(self, out, generator):
        return out.uniform_(-self.half_width, self.half_width, generator=generator)

    def log_density(self, t):
        lam = self.half_width
        inside = torch.full_like(t, -math.log(2 * lam))
        return torch.where(t.abs() <= lam, inside, torch.full_like(t, -math.inf))

    def _radius_in(self, p, norm, dim):
        lam = self.half_width
        if norm == "1":
            return 2 * lam * (p - 0.5)
        return 2 * lam * (1.0 - (1.5 - p) ** (1.0 / dim)) if p < 1.5 else 2 * lam

    def _lower_in(self, p, r, norm, dim):
        a = r / (2 * self.half_width)
        overlap = max(1.0 - a, 0.0) ** dim if norm == "inf" else max(1.0 - a, 0.0)
        return float(max(p - (1.0 - overlap), 0.0))


class GeneralNormal(NoiseDistribution):
    """Generalised normal: density ∝ exp(-|x/a|^beta), a chosen so that the std is sigma.
    beta = 2 is Gaussian, beta = 1 Laplace; large beta approaches uniform."""

    name = "gennorm"

    def __init__(self, sigma: float, beta: float):
        super().__init__(sigma)
        beta = float(beta)
        if not 0.1 <= beta <= 100:  # outside, its scale under- or overflows in float64
            raise InputError(f"the general normal's shape beta must lie in [0.1, 100], got {beta}")
        self.beta = beta
        self.a = sigma * math.exp(0.5 * (gammaln(1 / beta) - gammaln(3 / beta)))
        self._log_norm = math.log(beta / (2 * self.a)) - float(gammaln(1 / beta))

    def sample_(self, out, generator):
        # |x/a|^beta ~ Gamma(1/beta, 1) and an independent random sign; the gamma variates come
        # from `standard_gamma_` (torch, on out's device, from the seeded generator).
        g = standard_gamma_(torch.empty_like(out, dtype=torch.float64), 1.0 / self.beta,
                            generator)
        sign = torch.rand(out.shape, generator=generator, dtype=torch.float64,
                          device=out.device) < 0.5
        magnitude = g.log_().div_(self.beta).exp_().mul_(self.a)  # a g^(1/beta)
        out.copy_(torch.where(sign, -magnitude, magnitude))
        return out

    def log_density(self, t):
        return -(t.abs() / self.a) ** self.beta + self._log_norm

    def describe(self) -> str:
        return f"gennorm(sigma={self.sigma:g}, beta={self.beta:g})"

    def to_dict(self) -> dict:
        return {"name": self.name, "sigma": self.sigma, "beta": self.beta}


class Mixture(NoiseDistribution):
    """Per-coordinate mixture: each coordinate independently drawn from component k with
    probability weights[k]. sigma = sqrt(sum_k w_k sigma_k^2)."""

    name = "mixture"

    def __init__(self, components: Sequence[tuple[float, NoiseDistribution]]):
        if not components:
            raise InputError("a mixture needs at least one (weight, noise) component")
        weights = np.array([float(w) for w, _ in components])
        if np.any(weights <= 0) or not np.all(np.isfinite(weights)):
            raise InputError("mixture weights must be finite and > 0")
        self.weights = weights / weights.sum()
        self.components = [c for _, c in components]
        super().__init__(math.sqrt(sum(w * c.sigma ** 2 for w, c in zip(self.weights,
                                                                          self.components))))

    def sample_(self, out, generator):
        choice = torch.empty_like(out).uniform_(0.0, 1.0, generator=generator)
        edges = np.cumsum(self.weights)[:-1]
        which = torch.zeros_like(out, dtype=torch.int64)
        for edge in edges:
            which += (choice >= edge).to(torch.int64)
        draw = torch.empty_like(out)
        out.zero_()
        for k, component in enumerate(self.components):
            component.sample_(draw, generator)
            out.add_(torch.where(which == k, draw, torch.zeros_like(draw)))
        return out

    def log_density(self, t):
        terms = torch.stack([math.log(w) + c.log_density(t)
                             for w, c in zip(self.weights, self.components)])
        return torch.logsumexp(terms, dim=0)

    def describe(self) -> str:
        parts = ", ".join(f"{w:.3g} {c.describe()}" for w, c in zip(self.weights, self.components))
        return f"mixture({parts})"

    def to_dict(self) -> dict:
        return {"name": self.name, "sigma": self.sigma,
                "components": [[float(w), c.to_dict()] for w, c in zip(self.weights,
                                                                         self.components)]}


NOISES = ("gaussian", "laplace", "uniform", "gennorm:BETA")


def make_noise(noise: Union[str, NoiseDistribution], sigma: Optional[float]) -> NoiseDistribution:
    """A noise from a name ("gaussian", "laplace", "uniform", "gennorm:BETA") and its std, or a
    NoiseDistribution as is (then `sigma`, if given, must agree with it)."""
    if isinstance(noise, NoiseDistribution):
        if sigma is not None and not math.isclose(float(sigma), noise.sigma, rel_tol=1e-9):
            raise InputError(f"sigma {sigma} disagrees with the noise {noise.describe()}")
        return noise
    if sigma is None:
        raise InputError("randomized smoothing needs sigma, the noise level the base classifier "
                         "was trained with: --sigma 0.25 (verify certify, smooth-predict), "
                         "--option smoothing.sigma=0.25 (verify compare, plot2d), "
                         "sigma=0.25 (Python)")
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise InputError(f"sigma must be a number, got {sigma!r}") from None
    key = str(noise).strip().lower()
    if key in ("gaussian", "normal", "gauss"):
        return Gaussian(sigma)
    if key == "laplace":
        return Laplace(sigma)
    if key == "uniform":
        return Uniform(sigma)
    if key.startswith(("gennorm", "general_normal")) and ":" in key:
        try:
            beta = float(key.split(":", 1)[1])
        except ValueError:
            raise InputError(f"noise '{noise}': write gennorm:BETA with a number BETA") from None
        return GeneralNormal(sigma, beta)
    raise InputError(f"unknown noise '{noise}': use one of {', '.join(NOISES)}")
