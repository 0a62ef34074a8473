"""Randomized smoothing: CERTIFY and PREDICT (Cohen, Rosenfeld, Kolter 2019) for the smoothed g.

Accepts:   Network (any layers; only its batched torch forward pass is used); robustness
           specifications (l_inf/l_2/l_1 ball around x, label). The domain box is recorded but
           not used: noise is added without clipping, and g's certificate holds on the whole ball.
Returns:   Certificate with certifies = "g" (the smoothed classifier g(x) = argmax_c
           P(f(x + noise) = c)), confidence = 1 - alpha, radius = the label's certified radius in
           the requested norm (None on abstain or when another class is selected),
           counterexample = None always. details: noise, sigma, n0, n, alpha, batch_size, seed,
           dtype, counts0/counts per class, p_lower/p_upper per class, pA_lower, Cohen's CERTIFY
           output (certify_prediction: class or -1, certify_radius); cost: samples, forward
           passes, samples/s, device.
Method:    CERTIFY: top class cA from n0 noisy samples; cA's count in n *fresh* samples; one-sided
           Clopper-Pearson lower bound pA at level alpha; ABSTAIN if pA <= 1/2, else the radius of
           the noise (Gaussian: sigma PhiInv(pA) in l_2; see noise.py for every closed form, and
           radius.numerical_radius for noises without one). Sampling runs on the device in batches
           of `batch_size` noisy inputs; one forward pass may hold samples of several inputs;
           counts are accumulated on the device.
           PREDICT: two-sided binomial test between the two top counts of n samples; abstain when
           the p-value > alpha.
Soundness: statements about g at confidence 1 - alpha (over the sampling randomness):
           - YES: cA = label, not abstained, certified radius > eps (strictly: at radius exactly R
             the bound allows a tie). So g(x') = label on the whole ball.
           - NO: cA != label, and PREDICT's test on the n counts returns a class other than the
             label: g(x) != label at x itself. No counterexample point exists to show; the reason
             says so.
           - MAYBE: abstain, a radius <= eps (the reason says which), or an inconclusive PREDICT.
           Only one test is run on the n counts (which one is fixed by the independent n0 sample),
           so each certificate's statement fails with probability <= alpha. With a numerical radius
           alpha is split: (1 - mc_alpha_share) alpha for Clopper-Pearson, the rest for the
           Monte-Carlo radius. With two_class (Gaussian only): pA at alpha/2 and every other class's
           upper bound at alpha / (2 (k - 1)) (Bonferroni), R = sigma/2 (PhiInv(pA) - PhiInv(pB)).
           The base classifier f is what the device computes (float32 by default): g is the
           smoothing of that f.
Margins:   margin_lower[j] (j != label, when cA = label) = lower bound, at the certificate's
           confidence, on  min over the ball of p_label(x') - p_j(x')  where p_c are g's class
           probabilities: 2 P_low - 1 with P_low = the noise's worst-case probability of the label
           after a shift of size eps (using p_j <= 1 - p_label), or in two_class mode
           P_low - (upper bound on p_j after the shift) per class. YES <=> all of them > 0.
           None on abstain, when cA != label, or for a numerical radius. margin_upper: None
           (no upper bound on g's margins is stated). Per-class counts and one-sided
           Clopper-Pearson bounds (each at level alpha, not simultaneous) are in `details`.
Reference: Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
           ICML 2019; Teng et al., ICLR 2020 (Laplace, l_1); Yang et al., ICML 2020 (uniform);
           Hong et al., "UniCR", ECCV 2022 (numerical radius).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Optional, Sequence, Union

import numpy as np
import torch
from scipy.stats import binomtest
from scipy.stats import norm as _normal

from .. import deadline
from ..options import check_choices
from ..certificate import Certificate, Status
from ..errors import InputError
from ..network import Network, resolve_device
from ..spec import LpBall, OutputProperty, Specification
from .noise import Gaussian, NoiseDistribution, make_noise
from .radius import clopper_pearson_lower, clopper_pearson_upper, numerical_radius

ABSTAIN = -1
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class SmoothingOptions:
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "dtype": tuple(_DTYPES), "radius_method": ("auto", "closed", "numerical")}
    sigma: Optional[float] = None  # per-coordinate std of the noise (required)
    noise: Any = "gaussian"  # "gaussian" | "laplace" | "uniform" | "gennorm:BETA" | a noise object
    n0: int = 100  # selection samples
    n: int = 100_000  # estimation samples
    alpha: float = 0.001  # the certificate holds with probability >= 1 - alpha
    batch_size: int = 10_000  # noisy inputs per forward pass
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"  # of the base classifier's forward pass
    two_class: bool = False  # Gaussian: bound pA and pB separately (Bonferroni)
    radius_method: str = "auto"  # "auto" (closed form if the noise has one), "closed", "numerical"
    mc_alpha_share: float = 0.1  # share of alpha given to a numerical radius's Monte-Carlo
    mc_samples: int = 200_000  # validation samples of a numerical radius

    def check(self) -> None:
        """InputError unless the options make sense together (sigma given, n0, n >= 1, ...)."""
        _validate(self)


def _validate(opts: SmoothingOptions) -> NoiseDistribution:
    noise = make_noise(opts.noise, opts.sigma)
    if opts.n0 < 1 or opts.n < 1:
        raise InputError(f"n0 and n must be at least 1, got n0={opts.n0}, n={opts.n}")
    if opts.n0 > opts.n:
        raise InputError(f"n0={opts.n0} selection samples exceed n={opts.n} estimation samples: "
                         f"the radius rests on the n samples alone (Cohen et al.: n0=100, "
                         f"n=100000); give n >= n0")
    if not 0 < opts.alpha < 1:
        raise InputError(f"alpha must lie in (0, 1), got {opts.alpha}")
    if opts.batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {opts.batch_size}")
    check_choices(opts, "smoothing")  # dtype, radius_method
    if opts.two_class and not isinstance(noise, Gaussian):
        raise InputError("two_class needs Gaussian noise (the two-class radius is Gaussian's)")
    if not 0 < opts.mc_alpha_share < 1:
        raise InputError(f"mc_alpha_share must lie in (0, 1), got {opts.mc_alpha_share}")
    if opts.mc_samples < 1:
        raise InputError(f"mc_samples must be at least 1, got {opts.mc_samples}")
    if not 0 <= opts.seed < 2 ** 63:
        raise InputError(f"seed must lie in [0, 2^63), got {opts.seed}")
    return noise


# ---------------------------------------------------------------- sampling on the device

class NoisySampler:
    """Counts f(x + noise) per class, for several inputs at once, in batches on the device."""

    def __init__(self, net: Network, noise: NoiseDistribution, device="auto",
                 batch_size: int = 10_000, seed: int = 0, dtype: str = "float32"):
        self.net, self.noise, self.batch_size = net, noise, int(batch_size)
        self.device = resolve_device(device)
        self.dtype = _DTYPES[dtype]
        self.generator = torch.Generator(self.device).manual_seed(int(seed))
        self.samples = 0
        self.forward_passes = 0
        self.seconds = 0.0

    def counts(self, xs, n: int) -> np.ndarray:
        """(M, classes) int64: class counts of f(x_i + noise) over n samples per input."""
        xs = torch.as_tensor(np.asarray(xs), dtype=self.dtype, device=self.device)
        xs = xs.reshape(len(xs), -1)
        m_inputs, dim = xs.shape
        k = self.net.output_size
        total = m_inputs * n
        counts = torch.zeros(m_inputs * k, dtype=torch.int64, device=self.device)
        buffer = torch.empty(min(self.batch_size, total), dim, dtype=self.dtype,
                             device=self.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            # per input: noisy samples with a non-finite logit (on the device, read at the end)
            bad = torch.zeros(m_inputs, dtype=torch.int64, device=self.device)
            for start in range(0, total, self.batch_size):
                deadline.check("smoothing's sampling")  # past it: MAYBE "timeout" (backends)
                size = min(self.batch_size, total - start)
                batch = self.noise.sample_(buffer[:size], self.generator)
                first, last = start // n, (start + size - 1) // n
                if first == last:
                    batch.add_(xs[first])
                    preds, nonfinite = self._predictions(batch)
                    counts[first * k:(first + 1) * k] += torch.bincount(preds, minlength=k)
                    bad[first] += nonfinite.sum()
                else:
                    owner = torch.arange(start, start + size, device=self.device) // n
                    batch.add_(xs.index_select(0, owner))
                    preds, nonfinite = self._predictions(batch)
                    counts += torch.bincount(owner * k + preds, minlength=m_inputs * k)
                    bad.index_add_(0, owner, nonfinite.to(torch.int64))
                self.forward_passes += 1
            bad_inputs = torch.nonzero(bad).view(-1).cpu().numpy()
            if bad_inputs.size:  # argmax would have counted NaN logits for one class
                raise InputError(f"the base classifier returned non-finite logits on noisy "
                                 f"inputs of input {int(bad_inputs[0])} "
                                 f"({bad_inputs.size} input(s) affected; {self.noise.describe()}, "
                                 f"{str(self.dtype).replace('torch.', '')}): is sigma far too "
                                 "large?")
            out = counts.reshape(m_inputs, k).cpu().numpy()
        self.seconds += time.perf_counter() - t0
        self.samples += total
        return out

    def _predictions(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f's classes on a batch of noisy inputs, and which rows had a non-finite logit (the
        noise overflowed, or the network did); both stay on the device (no sync per batch)."""
        logits = self.net.torch_forward(batch)
        return logits.argmax(1), ~torch.isfinite(logits).all(1)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


# ---------------------------------------------------------------- PREDICT

@dataclass
class Prediction:
    """PREDICT's answer for one input: the class of g(x), or ABSTAIN (-1)."""

    prediction: int
    counts: list[int]
    p_value: float  # two-sided binomial test, top count vs runner-up count
    n: int
    alpha: float
    noise: dict
    seed: int
    batch_size: int
    device: str
    samples_per_s: float = float("nan")
    time_s: float = 0.0

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def __str__(self) -> str:
        head = ("ABSTAIN" if self.abstained else f"class {self.prediction}")
        return (f"{head}  (smoothed classifier g, {self.noise['name']} noise sigma "
                f"{self.noise['sigma']:g}; binomial test p = {self.p_value:.3g} vs alpha "
                f"{self.alpha:g}; n {self.n}, seed {self.seed})\ncounts: {self.counts}\n"
                f"time {self.time_s:.3f} s ({self.samples_per_s:,.0f} samples/s, "
                f"device {self.device})")


def predict_from_counts(counts: np.ndarray, alpha: float) -> tuple[int, float]:
    """(class or ABSTAIN, p-value) of Cohen's PREDICT from the class counts of n samples."""
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")
    n_a, n_b = int(counts[order[0]]), int(counts[order[1]]) if counts.size > 1 else 0
    p_value = float(binomtest(n_a, n_a + n_b, 0.5).pvalue) if n_a + n_b > 0 else 1.0
    return (int(order[0]) if p_value <= alpha else ABSTAIN), p_value


def predict_batch(net: Network, xs, sigma: Optional[float] = None, n: int = 100_000,
                  alpha: float = 0.001, noise: Union[str, NoiseDistribution] = "gaussian",
                  batch_size: int = 10_000, seed: int = 0, device="auto",
                  dtype: str = "float32") -> list[Prediction]:
    """PREDICT for many inputs (their samples share forward passes)."""
    opts = SmoothingOptions(sigma=sigma, noise=noise, n0=1, n=n, alpha=alpha,  # no selection
                            batch_size=batch_size, seed=seed, device=device, dtype=dtype)
    noise_obj = _validate(opts)
    xs = np.asarray(xs, dtype=np.float64).reshape(-1, net.input_size)
    if not np.all(np.isfinite(xs)):
        row, col = (int(i[0]) for i in np.nonzero(~np.isfinite(xs)))
        which = "input" if len(xs) == 1 else f"input {row}"
        raise InputError(f"{which} holds NaN or infinity (first at index {col})")
    sampler = NoisySampler(net, noise_obj, device, batch_size, seed, dtype)
    counts = sampler.counts(xs, n)
    per_input = sampler.seconds / len(xs)
    out = []
    for row in counts:
        cls, p_value = predict_from_counts(row, alpha)
        out.append(Prediction(cls, row.tolist(), p_value, n, alpha, noise_obj.to_dict(), seed,
                              batch_size, str(sampler.device), sampler.samples_per_s, per_input))
    return out


def predict(net: Network, x, sigma: Optional[float] = None, n: int = 100_000,
            alpha: float = 0.001, noise: Union[str, NoiseDistribution] = "gaussian",
            batch_size: int = 10_000, seed: int = 0, device="auto",
            dtype: str = "float32") -> Prediction:
    """Cohen et al.'s PREDICT: g(x)'s class, or ABSTAIN when the binomial test between the two
    top counts of n noisy samples has p-value > alpha (wrong class with probability <= alpha)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size != net.input_size:
        raise InputError(f"input has {x.size} values, the network expects {net.input_size}")
    return predict_batch(net, x[None], sigma, n, alpha, noise, batch_size, seed, device,
                         dtype)[0]


# ---------------------------------------------------------------- CERTIFY

@lru_cache(maxsize=4096)
def _cached_numerical(noise: NoiseDistribution, p_lower: float, norm: str, dim: int,
                      alpha_mc: float, n_mc: int, seed: int) -> dict:
    return numerical_radius(noise, p_lower, norm, dim, alpha_mc=alpha_mc, n_mc=n_mc,
                            seed=seed).to_dict()


def _radius(noise: NoiseDistribution, p_lower: float, norm: str, dim: int,
            opts: SmoothingOptions, alpha_mc: float) -> tuple[float, dict]:
    """(certified radius in `norm`, details) for top-class probability >= p_lower."""
    if _use_numerical(noise, opts):
        result = _cached_numerical(noise, float(p_lower), norm, dim, alpha_mc, opts.mc_samples,
                                   opts.seed)
        return result["radius"], {"radius_method": "numerical", "numerical_radius": result}
    return float(noise.closed_radius(p_lower, norm, dim)), {"radius_method": "closed"}


def _use_numerical(noise: NoiseDistribution, opts: SmoothingOptions) -> bool:
    closed = noise.closed_radius(0.75, "2", 1) is not None
    if opts.radius_method == "closed" and not closed:
        raise InputError(f"noise {noise.describe()} has no closed-form radius: use "
                         f"radius_method='numerical' or 'auto'")
    return opts.radius_method == "numerical" or not closed


def _check_specs(net: Network, specs: Sequence[Specification]) -> None:
    for spec in specs:
        if not isinstance(spec.input_set, LpBall) or spec.label is None:
            raise InputError("randomized smoothing certifies robustness specifications only "
                             "(an l_p ball around x and a label)")
        expected = OutputProperty.robustness(spec.label, net.output_size)
        if spec.output.C.shape != expected.C.shape or not np.array_equal(spec.output.C,
                                                                          expected.C):
            raise InputError("randomized smoothing certifies robustness properties only "
                             "(rows z_label - z_j)")


def _domain(ball: LpBall):
    lo, hi = ball.lower, ball.upper
    if np.all(np.isfinite(lo)) or np.all(np.isfinite(hi)):
        if np.all(lo == lo[0]) and np.all(hi == hi[0]):
            return [float(lo[0]), float(hi[0])]
        return [lo.tolist(), hi.tolist()]
    return None


def run(net: Network, specs: Sequence[Specification], options: SmoothingOptions
        ) -> list[Certificate]:
    """CERTIFY every specification; inputs share forward passes (the registry's entry point)."""
    noise = _validate(options)
    _check_specs(net, specs)
    if not specs:
        return []
    t0 = time.perf_counter()
    sampler = NoisySampler(net, noise, options.device, options.batch_size, options.seed,
                           options.dtype)
    centers = np.stack([s.input_set.center for s in specs])
    counts0 = sampler.counts(centers, options.n0)  # selection
    counts = sampler.counts(centers, options.n)  # estimation: fresh samples
    sampling_s = sampler.seconds
    certs = [_certificate(net, spec, noise, options, counts0[i], counts[i]) for i, spec in
             enumerate(specs)]
    per_input = (time.perf_counter() - t0) / len(specs)
    cost = {"samples": options.n0 + options.n, "forward_passes": sampler.forward_passes,
            "batch": len(specs), "samples_per_s": round(sampler.samples_per_s, 1),
            "sampling_s": round(sampling_s / len(specs), 6), "device": str(sampler.device)}
    for cert in certs:
        cert.time_s = per_input
        cert.cost = {**cost, **cert.cost}
    return certs


def _certificate(net: Network, spec: Specification, noise: NoiseDistribution,
                 opts: SmoothingOptions, counts0: np.ndarray, counts: np.ndarray) -> Certificate:
    ball: LpBall = spec.input_set  # type: ignore[assignment]
    label, k, n, dim = int(spec.label), len(counts), opts.n, net.input_size
    numerical = _use_numerical(noise, opts)
    alpha_cp = opts.alpha * (1 - opts.mc_alpha_share) if numerical else opts.alpha
    alpha_mc = opts.alpha * opts.mc_alpha_share
    top = int(np.argmax(counts0))  # cA, chosen on the n0 selection samples only
    p_lower = clopper_pearson_lower(counts, n, alpha_cp)
    p_upper = clopper_pearson_upper(counts, n, alpha_cp)
    details: dict[str, Any] = {
        "certifies": "smoothed classifier g(x) = argmax_c P(f(x + noise) = c)",
        "noise": noise.to_dict(), "sigma": noise.sigma, "n0": opts.n0, "n": n,
        "alpha": opts.alpha, "batch_size": opts.batch_size, "seed": opts.seed,
        "dtype": opts.dtype, "two_class": opts.two_class,
        "counts0": counts0.tolist(), "counts": counts.tolist(),
        "p_lower": p_lower.tolist(), "p_upper": p_upper.tolist(),
        "bounds": f"one-sided Clopper-Pearson per class at level {alpha_cp:g} each",
        "top_class": top,
    }
    if numerical:
        details["alpha_split"] = {"clopper_pearson": alpha_cp, "monte_carlo_radius": alpha_mc}

    # Cohen's CERTIFY output for the selected class (prediction, radius), as the reference code
    if opts.two_class:
        others = [j for j in range(k) if j != top]
        p_a = clopper_pearson_lower(counts[top], n, opts.alpha / 2)
        p_others = clopper_pearson_upper(counts[others], n, opts.alpha / (2 * (k - 1)))
        p_b = float(np.max(p_others)) if others else 0.0
        details.update(pA_lower=p_a, pB_upper=p_b, p_upper_bonferroni=dict(
            zip(map(str, others), np.atleast_1d(p_others).tolist())))
        abstain = not p_a > p_b
        r2 = noise.sigma / 2 * (_normal.ppf(p_a) - _normal.ppf(p_b))
        radius_top = r2 / math.sqrt(dim) if ball.norm == "inf" else r2
        details["radius_method"] = "closed (two-class)"
    else:
        p_a = float(p_lower[top])
        details["pA_lower"] = p_a
        abstain = not p_a > 0.5
        radius_top, extra = (0.0, {}) if abstain else _radius(noise, p_a, ball.norm, dim, opts,
                                                               alpha_mc)
        details.update(extra)
    radius_top = max(float(radius_top), 0.0)
    details["certify_prediction"] = ABSTAIN if abstain else top
    details["certify_radius"] = None if abstain else radius_top

    margin_lower: list[Optional[float]] = [None] * k
    margin_upper: list[Optional[float]] = [None] * k
    radius: Optional[float] = None
    if top == label:
        if not abstain:
            radius = radius_top
            margin_lower = _margins(noise, opts, details, label, k, ball, dim)
        if abstain:
            status = Status.MAYBE
            bound = (f"pA >= {p_a:.6g} is not above pB <= {details['pB_upper']:.6g}"
                     if opts.two_class else f"pA >= {p_a:.6g} is not above 1/2")
            reason = (f"abstain: the smoothed classifier's top class {top} is not certified at "
                      f"x ({bound}; {counts[top]} of {n} samples)")
        elif radius > ball.eps:
            status, reason = Status.YES, ""
        else:
            status = Status.MAYBE
            reason = (f"certified radius {radius:.6g} of g is not above eps {ball.eps:g} "
                      f"(l_{ball.norm}; pA >= {p_a:.6g})")
    else:
        predicted, p_value = predict_from_counts(counts, opts.alpha)
        details["predict"] = {"prediction": predicted, "p_value": p_value}
        if predicted not in (ABSTAIN, label):
            status = Status.NO
            reason = (f"PREDICT: the smoothed classifier g returns class {predicted} != label "
                      f"{label} at x itself (binomial test p = {p_value:.3g} <= alpha "
                      f"{opts.alpha:g}); a statement about g at confidence {1 - opts.alpha:g}, "
                      f"no counterexample point")
        else:
            status = Status.MAYBE
            reason = (f"the selection samples favour class {top}, not the label {label}, and "
                      f"PREDICT is not conclusive against the label (p = {p_value:.3g})")
    return Certificate(
        status=status, method="smoothing", label=label, norm=ball.norm, eps=ball.eps,
        margin_lower=margin_lower, margin_upper=margin_upper, counterexample=None,
        counterexample_logits=None, radius=radius, confidence=1 - opts.alpha, reason=reason,
        domain=_domain(ball), model=f"{net.name}@{net.fingerprint()}", certifies="g",
        details=details, cost={"noise": noise.describe()})


def _margins(noise: NoiseDistribution, opts: SmoothingOptions, details: dict, label: int,
             k: int, ball: LpBall, dim: int) -> list[Optional[float]]:
    """Lower bounds on min over the ball of p_label - p_j (see the module docstring)."""
    out: list[Optional[float]] = [None] * k
    if opts.two_class:
        shift = ball.eps * (math.sqrt(dim) if ball.norm == "inf" else 1.0) / noise.sigma
        low = float(_normal.cdf(_normal.ppf(details["pA_lower"]) - shift))
        for j_text, p_j in details["p_upper_bonferroni"].items():
            out[int(j_text)] = low - float(_normal.cdf(_normal.ppf(p_j) + shift))
        return out
    low = noise.lower_prob_shifted(details["pA_lower"], ball.eps, ball.norm, dim)
    if low is None or details.get("radius_method") == "numerical":
        return out
    return [None if j == label else 2 * low - 1 for j in range(k)]
