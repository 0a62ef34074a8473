"""Randomized smoothing: the numbers of the source papers, the certificate's meaning, the
samplers' distributions, Clopper-Pearson coverage over many seeds, and the numerical radius."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import binom, laplace
from scipy.stats import norm as normal

import verify
from verify import Certificate, Dense, InputError, Network, Status, certify, certify_batch
from verify.cli import main
from verify.smoothing import (Gaussian, GeneralNormal, Laplace, Mixture, Uniform,
                              best_case_radius, certified_accuracy, clopper_pearson_lower,
                              clopper_pearson_upper, gaussian_radius, gaussian_radius_two_class,
                              laplace_radius, lower_prob_shifted_mc, make_noise, min_samples,
                              numerical_radius, predict, predict_batch, robustness_score,
                              uniform_radius)
from conftest import MODELS

SMOOTHING_MODELS = ["digits_mlp_noise012", "digits_mlp_noise025", "digits_mlp_noise050",
                    "digits_mlp_noise100"]


def linear_net(w, b: float) -> Network:
    """Two classes: class 1 iff w.x + b > 0 (logits [0, w.x + b])."""
    w = np.asarray(w, dtype=np.float64)
    return Network([Dense(np.stack([np.zeros_like(w), w]), [0.0, b], (w.size,), (2,))],
                   (w.size,), name="linear")


def constant_net(dim: int, cls: int, k: int = 3) -> Network:
    bias = np.zeros(k)
    bias[cls] = 5.0
    return Network([Dense(np.zeros((k, dim)), bias, (dim,), (k,))], (dim,), name="constant")


# ---------------------------------------------------------------- the source documents' numbers

def test_certified_accuracy_and_robustness_score():
    radii = [0.10, 0.25, 0.00, 0.40, 0.18]
    correct = [True, True, False, True, True]  # the 0.00 one is misclassified
    assert certified_accuracy(radii, correct, 0.20) == pytest.approx(0.40)
    assert certified_accuracy(radii, correct, 0.0) == pytest.approx(0.80)
    np.testing.assert_allclose(certified_accuracy(radii, correct, [0.0, 0.1, 0.2, 0.5]),
                               [0.8, 0.8, 0.4, 0.0])
    # area under the curve = mean of correct * radius
    assert robustness_score(radii, correct) == pytest.approx((0.10 + 0.25 + 0.40 + 0.18) / 5)
    assert robustness_score(radii, correct, r_max=0.2) == pytest.approx(0.68 / 5)
    grid = np.linspace(0, 0.5, 50_001)
    area = np.sum(certified_accuracy(radii, correct, grid)[:-1]) * (grid[1] - grid[0])
    assert area == pytest.approx(robustness_score(radii, correct), abs=1e-4)
    # None (abstain) never counts
    assert certified_accuracy([None, 0.3], [True, True], 0.0) == pytest.approx(0.5)


def test_two_class_radius():
    assert round(gaussian_radius_two_class(0.90, 0.05, 0.50), 3) == 0.732


def test_clopper_pearson_reference_values():
    n, alpha = 100_000, 0.001
    assert clopper_pearson_lower(100_000, n, alpha) == pytest.approx(0.99993092483, abs=1e-11)
    assert clopper_pearson_lower(99_000, n, alpha) == pytest.approx(0.98898934038, abs=1e-11)
    assert gaussian_radius(clopper_pearson_lower(100_000, n, alpha), 0.5) == \
        pytest.approx(1.905728, abs=5e-7)
    assert gaussian_radius(clopper_pearson_lower(99_000, n, alpha), 0.5) == \
        pytest.approx(1.145000, abs=5e-7)
    for n_samples, expected in [(100, 1.500475), (1000, 2.463263), (10_000, 3.198578),
                                (100_000, 3.811457)]:
        assert best_case_radius(n_samples, alpha, 1.0) == pytest.approx(expected, abs=5e-7)
        assert best_case_radius(n_samples, alpha, 1.0) == pytest.approx(
            gaussian_radius(clopper_pearson_lower(n_samples, n_samples, alpha), 1.0), abs=1e-9)


def test_clopper_pearson_edge_counts():
    n, alpha = 50, 0.01
    assert clopper_pearson_lower(0, n, alpha) == 0.0
    assert clopper_pearson_upper(n, n, alpha) == 1.0
    assert clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n))
    assert clopper_pearson_upper(0, n, alpha) == pytest.approx(1 - alpha ** (1 / n))
    k = np.arange(n + 1)
    lower, upper = clopper_pearson_lower(k, n, alpha), clopper_pearson_upper(k, n, alpha)
    assert np.all(np.diff(lower) > 0) and np.all(np.diff(upper) > 0)
    assert np.all(lower < k / n + 1e-15) and np.all(upper > k / n - 1e-15)


def test_never_certifies_with_fewer_than_ten_samples():
    assert min_samples(0.001) == 10
    assert clopper_pearson_lower(10, 10, 0.001) == pytest.approx(0.501187, abs=5e-7)
    assert clopper_pearson_lower(9, 9, 0.001) < 0.5
    net = constant_net(3, cls=1)
    x = np.zeros(3)
    for n in (1, 5, 9):
        cert = certify(net, x, 1, 0.0, norm="2", method="smoothing", sigma=0.5, n=n, n0=1)
        assert cert.status is Status.MAYBE and cert.reason.startswith("abstain")
        assert cert.radius is None and cert.details["counts"][1] == n
    cert = certify(net, x, 1, 0.0, norm="2", method="smoothing", sigma=0.5, n=10, n0=5)
    assert cert.status is Status.YES
    assert cert.details["pA_lower"] == pytest.approx(0.501187, abs=5e-7)
    assert cert.radius == pytest.approx(0.5 * normal.ppf(0.001 ** 0.1), rel=1e-12)


# ---------------------------------------------------------------- statistics of the sampler

def _true_probability(noise_name: str, sigma: float, margin: float) -> float:
    """P(margin + z > 0) for one noise coordinate z (the linear classifier reads x_1 only)."""
    if noise_name == "gaussian":
        return float(normal.cdf(margin / sigma))
    if noise_name == "laplace":
        return float(laplace.cdf(margin, scale=sigma / math.sqrt(2)))
    lam = sigma * math.sqrt(3)
    return float(np.clip((margin + lam) / (2 * lam), 0, 1))


@pytest.mark.parametrize("noise", [pytest.param("gaussian", marks=pytest.mark.slow), "laplace",
                                   pytest.param("uniform", marks=pytest.mark.slow)])
def test_clopper_pearson_coverage_over_many_runs(noise):
    """1,500 independent CERTIFY runs (one certify_batch call: several inputs per forward pass) on
    a linear classifier whose class probability under the noise is known: the fraction of runs
    whose lower bound exceeds the true probability matches the exact binomial rate, <= alpha."""
    sigma, alpha, n, runs = 0.5, 0.1, 200, 1500
    net = linear_net([1.0, 0.0, 0.0], 0.0)
    x = np.array([0.2, 0.3, -0.1])
    p_true = _true_probability(noise, sigma, 0.2)
    certs = certify_batch(net, np.tile(x, (runs, 1)), [1] * runs, 0.0, norm="2",
                          method="smoothing", sigma=sigma, noise=noise, n=n, n0=10, alpha=alpha,
                          batch_size=8192, seed=7, device="cpu")
    counts = np.array([c.details["counts"][1] for c in certs])
    lower = np.array([c.details["p_lower"][1] for c in certs])
    assert counts.mean() == pytest.approx(n * p_true, abs=4 * math.sqrt(n * p_true / runs))
    k = np.arange(n + 1)
    exact_rate = float(np.sum(binom.pmf(k, n, p_true) * (clopper_pearson_lower(k, n, alpha)
                                                          > p_true)))
    assert exact_rate <= alpha
    observed = float(np.mean(lower > p_true))
    assert observed == pytest.approx(exact_rate, abs=4 * math.sqrt(exact_rate / runs) + 1e-3)
    assert certs[0].cost["forward_passes"] < runs / 10  # many inputs per forward pass


def test_predict_abstains_on_a_tie_and_answers_when_clear():
    net = linear_net([1.0, -1.0], 0.0)
    on_boundary = np.array([0.3, 0.3])  # P(class 1) = 1/2 exactly
    results = predict_batch(net, np.tile(on_boundary, (1500, 1)), sigma=0.5, n=100, alpha=0.1,
                            seed=3, device="cpu")
    answered = np.mean([not r.abstained for r in results])
    assert answered <= 0.1 + 4 * math.sqrt(0.09 / 1500)  # a tie: any answer is an error
    clear = predict(constant_net(4, cls=2), np.zeros(4), sigma=1.0, n=50, alpha=0.001)
    assert clear.prediction == 2 and clear.counts == [0, 0, 50] and clear.p_value < 1e-10
    far = predict(net, np.array([1.0, -1.0]), sigma=0.5, n=1000, alpha=0.001, device="cpu")
    assert far.prediction == 1 and far.p_value <= 0.001


@pytest.mark.parametrize("noise", [Gaussian(0.7), Laplace(0.7), Uniform(0.7),
                                   GeneralNormal(0.7, 1.5),
                                   Mixture([(0.3, Gaussian(0.4)), (0.7, Laplace(1.0))])])
def test_noise_samples_have_the_stated_std(noise):
    import torch

    z = noise.sample_(torch.empty(400_000, dtype=torch.float64),
                      torch.Generator().manual_seed(1)).numpy()
    assert abs(z.mean()) < 5 * noise.sigma / math.sqrt(z.size)
    assert z.std() == pytest.approx(noise.sigma, rel=0.01)
    assert np.all(np.isfinite(z))
    if isinstance(noise, Laplace):
        assert np.abs(z).mean() == pytest.approx(noise.scale, rel=0.01)
    if isinstance(noise, Uniform):
        assert np.abs(z).max() <= noise.half_width
    # the log density integrates to one
    grid = torch.linspace(-12 * noise.sigma, 12 * noise.sigma, 400_001, dtype=torch.float64)
    mass = torch.trapezoid(noise.log_density(grid).exp(), grid).item()
    assert mass == pytest.approx(1.0, abs=2e-3)


# ---------------------------------------------------------------- the certificate

def test_certificate_yes_and_its_numbers():
    net = linear_net([1.0, 1.0, 0.0, 0.0], -0.2)
    x = np.array([0.5, 0.4, 0.1, 0.9])
    sigma, n, alpha = 0.25, 20_000, 0.001
    cert = certify(net, x, 1, 0.3, norm="2", method="smoothing", sigma=sigma, n=n, alpha=alpha,
                   seed=11, batch_size=4096, domain=(0, 1), device="cpu")
    assert cert.status is Status.YES and cert.reason == ""
    assert cert.certifies == "g" and cert.confidence == pytest.approx(1 - alpha)
    assert cert.counterexample is None and cert.method == "smoothing"
    d = cert.details
    k_a = d["counts"][1]
    assert sum(d["counts"]) == n and sum(d["counts0"]) == 100
    assert d["pA_lower"] == pytest.approx(clopper_pearson_lower(k_a, n, alpha), rel=1e-12)
    assert cert.radius == pytest.approx(sigma * normal.ppf(d["pA_lower"]), rel=1e-12)
    p_true = normal.cdf((0.9 - 0.2) / (sigma * math.sqrt(2)))
    assert k_a / n == pytest.approx(p_true, abs=5 * math.sqrt(p_true * (1 - p_true) / n))
    for key in ("seed", "n0", "n", "alpha", "batch_size", "sigma", "noise", "p_lower", "p_upper"):
        assert key in d
    assert cert.cost["samples"] == n + 100 and cert.cost["samples_per_s"] > 0
    # margin: 2 * worst-case label probability over the ball - 1 > 0 exactly when radius > eps
    expected = 2 * normal.cdf(normal.ppf(d["pA_lower"]) - 0.3 / sigma) - 1
    assert cert.margin_lower[0] == pytest.approx(expected) and cert.margin_lower[1] is None
    assert Certificate.from_json(cert.to_json()).to_dict() == cert.to_dict()
    assert "smoothed classifier g" in str(cert) and "certified radius" in str(cert)

    # a larger ball: same samples, MAYBE with the radius in the reason, margin < 0
    bigger = certify(net, x, 1, cert.radius * 1.01, norm="2", method="smoothing", sigma=sigma,
                     n=n, alpha=alpha, seed=11, batch_size=4096, device="cpu")
    assert bigger.status is Status.MAYBE and "certified radius" in bigger.reason
    assert bigger.radius == pytest.approx(cert.radius) and bigger.margin_lower[0] < 0
    # l_inf: the l_2 radius / sqrt(d); l_1: the l_2 radius
    for norm, factor in (("inf", 0.5), ("1", 1.0)):
        other = certify(net, x, 1, 0.0, norm=norm, method="smoothing", sigma=sigma, n=n,
                        alpha=alpha, seed=11, batch_size=4096, device="cpu")
        assert other.radius == pytest.approx(cert.radius * factor, rel=1e-12)


def test_certificate_no_abstain_and_wrong_selection():
    net = constant_net(3, cls=2)
    cert = certify(net, np.zeros(3), 0, 0.1, norm="2", method="smoothing", sigma=0.5, n=200)
    assert cert.status is Status.NO and cert.counterexample is None and cert.radius is None
    assert "PREDICT" in cert.reason and "no counterexample" in cert.reason
    assert cert.details["predict"]["prediction"] == 2
    assert cert.details["certify_prediction"] == 2  # Cohen's CERTIFY output, for reference
    boundary = certify(linear_net([1.0, -1.0], 0.0), np.array([0.2, 0.2]), 1, 0.0, norm="2",
                       method="smoothing", sigma=0.5, n=2000, n0=50, seed=1)
    assert boundary.status is Status.MAYBE and boundary.radius is None
    assert boundary.reason.startswith("abstain") or "PREDICT is not conclusive" in boundary.reason


@pytest.mark.parametrize("noise,formula", [("laplace", laplace_radius),
                                           ("uniform", uniform_radius)])
def test_l1_noises_use_their_closed_forms(noise, formula):
    net = linear_net([1.0, 0.0, 0.0], 0.0)
    cert = certify(net, np.array([0.6, 0.0, 0.0]), 1, 0.05, norm="1", method="smoothing",
                   sigma=0.5, noise=noise, n=5000, seed=2, device="cpu")
    assert cert.status is Status.YES
    assert cert.radius == pytest.approx(formula(cert.details["pA_lower"], 0.5), rel=1e-12)
    assert cert.margin_lower[0] > 0
    cert2 = certify(net, np.array([0.6, 0.0, 0.0]), 1, 0.05, norm="2", method="smoothing",
                    sigma=0.5, noise=noise, n=5000, seed=2, device="cpu")
    assert cert2.radius == pytest.approx(cert.radius / math.sqrt(3), rel=1e-12)


def test_two_class_option():
    net = constant_net(2, cls=0, k=3)
    cert = certify(net, np.zeros(2), 0, 0.0, norm="2", method="smoothing", sigma=0.5, n=1000,
                   two_class=True)
    d = cert.details
    assert d["pA_lower"] == pytest.approx(clopper_pearson_lower(1000, 1000, 0.0005))
    assert d["pB_upper"] == pytest.approx(clopper_pearson_upper(0, 1000, 0.00025))
    assert cert.radius == pytest.approx(gaussian_radius_two_class(d["pA_lower"], d["pB_upper"],
                                                                  0.5))
    assert cert.status is Status.YES and all(m > 0 for m in cert.margin_lower if m is not None)
    with pytest.raises(InputError, match="Gaussian"):
        certify(net, np.zeros(2), 0, 0.0, norm="1", method="smoothing", sigma=0.5,
                noise="laplace", two_class=True)


def test_seeded_and_batched():
    net = linear_net([1.0, -2.0, 0.5], 0.1)
    xs = np.random.default_rng(0).uniform(-1, 1, size=(5, 3))
    kwargs = dict(norm="2", method="smoothing", sigma=0.3, n=700, n0=30)
    a = certify_batch(net, xs, [1] * 5, 0.0, batch_size=256, seed=5, **kwargs)
    b = certify_batch(net, xs, [1] * 5, 0.0, batch_size=256, seed=5, **kwargs)
    c = certify_batch(net, xs, [1] * 5, 0.0, batch_size=100_000, seed=6, **kwargs)
    assert [x.details["counts"] for x in a] == [x.details["counts"] for x in b]
    assert [x.details["counts"] for x in a] != [x.details["counts"] for x in c]
    assert all(sum(x.details["counts"]) == 700 for x in c)
    assert c[0].cost["forward_passes"] == 2  # all five inputs in one pass, per phase
    assert a[0].cost["forward_passes"] == math.ceil(150 / 256) + math.ceil(3500 / 256)
    single = certify(net, xs[0], 1, 0.0, batch_size=256, seed=5, **kwargs)
    assert single.details["seed"] == 5 and single.details["batch_size"] == 256


def test_registry_and_user_errors():
    assert "smoothing" in verify.methods()
    net = constant_net(2, cls=0)
    with pytest.raises(InputError, match="sigma"):
        certify(net, np.zeros(2), 0, 0.1, method="smoothing")
    with pytest.raises(InputError, match="unknown noise"):
        certify(net, np.zeros(2), 0, 0.1, method="smoothing", sigma=0.5, noise="cauchy")
    with pytest.raises(InputError, match="unknown option"):
        certify(net, np.zeros(2), 0, 0.1, method="smoothing", sigma=0.5, samples=10)
    with pytest.raises(InputError, match="alpha"):
        certify(net, np.zeros(2), 0, 0.1, method="smoothing", sigma=0.5, alpha=1.5)
    with pytest.raises(InputError, match="sigma"):
        make_noise("gaussian", -1.0)
    with pytest.raises(InputError, match="disagrees"):
        make_noise(Laplace(0.5), 0.3)
    for bad in ({"seed": -1}, {"seed": 2 ** 70}, {"mc_samples": 0}):
        with pytest.raises(InputError, match=next(iter(bad))):
            certify(net, np.zeros(2), 0, 0.1, method="smoothing", sigma=0.5, **bad)
    with pytest.raises(InputError, match=r"beta must lie in \[0.1, 100\]"):
        make_noise("gennorm:0.001", 0.5)
    with pytest.raises(InputError, match="n0=100 selection samples exceed n=50"):
        certify(net, np.zeros(2), 0, 0.1, method="smoothing", sigma=0.5, n=50, n0=100)
    xs = np.zeros((3, 2))
    xs[2, 1] = np.nan
    with pytest.raises(InputError, match=r"input 2 holds NaN or infinity \(first at index 1\)"):
        predict_batch(net, xs, sigma=0.5, n=10)
    with pytest.raises(InputError, match=r"^input holds NaN or infinity \(first at index 0\)"):
        predict(net, [np.inf, 0.0], sigma=0.5, n=10)


def test_non_finite_logits_under_noise_are_refused_not_counted(digits_mlp_path):
    """sigma = 1e40 overflows float32 noise: the logits are NaN and argmax would count them all
    for class 0, a confident YES for any label 0. Refused instead."""
    net = verify.load_onnx(digits_mlp_path)
    with pytest.raises(InputError, match="non-finite logits on noisy inputs of input 0"):
        certify(net, np.full(64, 0.5), 0, 0.1, "2", method="smoothing", sigma=1e40, n=200,
                n0=20)


# ---------------------------------------------------------------- closed forms and the numerics

@pytest.mark.parametrize("noise", [Gaussian(0.5), Laplace(0.5), Uniform(0.5)])
@pytest.mark.parametrize("norm", ["1", "2", "inf"])
def test_radius_is_where_the_shifted_bound_crosses_one_half(noise, norm):
    for p in (0.6, 0.9, 0.999):
        r = noise.closed_radius(p, norm, 8)
        assert noise.lower_prob_shifted(p, r, norm, 8) == pytest.approx(0.5, abs=1e-9)
        assert noise.lower_prob_shifted(p, r * 0.99, norm, 8) > 0.5
    assert laplace_radius(0.9, 0.5) == pytest.approx(-0.5 / math.sqrt(2) * math.log(0.2))
    assert uniform_radius(0.9, 0.5) == pytest.approx(2 * 0.5 * math.sqrt(3) * 0.4)


def _rs4a_laplace_linf(p, dim, lam):
    """Yang et al. 2020's guaranteed (differential-method) Laplace l_inf radius, computed
    independently: lam ∫_{1-p}^{1/2} dx / Phi(x) by quadrature, Phi(x) = the mean of S = 2 B - d
    (B ~ Bin(d, 1/2)) over its top x of mass, from scipy's binomial."""
    from scipy import integrate

    b = np.arange(dim, -1, -1)  # S descending
    mass = binom(dim, 0.5).pmf(b)
    values = 2.0 * b - dim

    def phi(x):
        cum = np.concatenate(([0.0], np.cumsum(mass)))
        j = min(int(np.searchsorted(cum, x, side="right")) - 1, dim)
        return float(np.sum(mass[:j] * values[:j]) + (x - cum[j]) * values[j])

    cuts = [c for c in np.cumsum(mass) if 1 - p < c < 0.5]
    return lam * integrate.quad(lambda x: 1.0 / phi(x), 1 - p, 0.5, points=cuts or None,
                                limit=500, epsabs=1e-13, epsrel=1e-10)[0]


@pytest.mark.parametrize("dim", [1, 2, 7, 64])
def test_laplace_and_uniform_radii_reach_rs4a_guarantees_in_every_norm(dim):
    lap, uni = Laplace(0.25), Uniform(0.25)
    for p in (0.55, 0.6, 0.9, 0.99, 0.9999):
        r = {n: lap.closed_radius(p, n, dim) for n in ("1", "2", "inf")}
        rs4a_inf = _rs4a_laplace_linf(p, dim, lap.scale)
        assert r["inf"] == pytest.approx(max(rs4a_inf, r["1"] / dim), rel=1e-7)
        assert r["2"] >= max(r["1"] / math.sqrt(dim), rs4a_inf) * (1 - 1e-9)
        u = {n: uni.closed_radius(p, n, dim) for n in ("1", "2", "inf")}
        assert u["1"] == pytest.approx(2 * uni.half_width * (p - 0.5))
        assert u["inf"] == pytest.approx(2 * uni.half_width * (1 - (1.5 - p) ** (1 / dim)))
        assert u["2"] == pytest.approx(max(u["1"] / math.sqrt(dim), u["inf"]))
        for radii in (r, u):  # ordered by the inclusions
            assert radii["1"] >= radii["2"] >= radii["inf"] >= radii["1"] / dim * (1 - 1e-12)
    if dim == 1:  # one coordinate: every norm is the (exact) l_1 radius
        assert lap.closed_radius(0.9, "inf", 1) == pytest.approx(lap.closed_radius(0.9, "1", 1))
    # monotone in p
    ps = np.linspace(0.51, 0.999, 25)
    for noise in (lap, uni):
        for n in ("1", "2", "inf"):
            assert np.all(np.diff([noise.closed_radius(p, n, dim) for p in ps]) > 0)


@pytest.mark.parametrize("noise", [Laplace(0.5), Uniform(0.5)])
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_closed_radii_hold_against_the_exact_bound_at_extreme_shifts(noise, norm):
    """At the certified radius the exact Neyman-Pearson probability (Monte Carlo, 200,000
    samples) of the l_norm ball's extreme points (the axis, the corner) stays >= 1/2."""
    dim, p = 8, 0.9
    r = noise.closed_radius(p, norm, dim)
    corner = np.full(dim, r if norm == "inf" else r / math.sqrt(dim))
    axis = np.zeros(dim)
    axis[0] = r
    for delta in (corner, axis):
        _, estimate = lower_prob_shifted_mc(noise, p, delta, n=200_000, seed=2)
        assert estimate >= 0.5 - 0.005


def test_monte_carlo_shift_bound_is_a_lower_bound():
    noise = Gaussian(1.0)
    for p, delta in [(0.9, [0.5]), (0.999, [1.0, 1.0, 1.0]), (0.99999, [3.0, 0.5])]:
        exact = normal.cdf(normal.ppf(p) - np.linalg.norm(delta))
        bound, estimate = lower_prob_shifted_mc(noise, p, np.array(delta), n=100_000,
                                                beta=1e-3)
        assert bound <= exact and exact - bound < 0.015
        assert estimate == pytest.approx(exact, abs=0.01)


FAST_MC = dict(n_mc=50_000)


@pytest.mark.parametrize("noise,norm", [(Gaussian(0.5), "2"), (Laplace(0.5), "1"),
                                        (Uniform(0.5), "1")])
@pytest.mark.parametrize("p", [0.9, 0.999])
def test_numerical_radius_matches_the_closed_forms(noise, norm, p):
    closed = noise.closed_radius(p, norm, 4)
    result = numerical_radius(noise, p, norm, 4, alpha_mc=1e-3, seed=3, **FAST_MC)
    # sound by construction (every ray checked on fresh samples): never above the exact radius
    assert 0.95 * closed <= result.radius <= closed
    assert abs(result.estimate - closed) <= result.error + closed * 0.02
    assert result.error > 0 and result.epsilon > 0 and result.directions_tried == 3


def test_numerical_radius_is_ordered_across_norms_and_monotone_in_p():
    """r_1 >= r_2 >= r_inf (l_1 ball ⊂ l_2 ball ⊂ l_inf ball) and r_inf >= r_2 / sqrt(d) >=
    r_1 / d (the other inclusions), read off the same rays; non-decreasing in p."""
    dim, previous = 16, None
    for p in (0.6, 0.7, 0.9):
        result = numerical_radius(GeneralNormal(0.5, 0.5), p, "1", dim, seed=1, n_mc=20_000)
        r = result.radii
        assert r["1"] == result.radius > 0
        assert r["1"] >= r["2"] >= r["inf"] > 0
        assert r["inf"] >= r["2"] / math.sqrt(dim) - 1e-15 and r["2"] >= r["1"] / math.sqrt(dim)
        if previous is not None:
            assert all(r[n] >= previous[n] for n in r)
        previous = r


def _uniform_l1_claims(seeds, n_mc):
    """(claimed / exact) of the numerical l_1 radius of uniform noise at pA = 0.6, d = 64, where
    the exact radius 2 lam (pA - 1/2) is known (the axis is the worst direction)."""
    noise = Uniform(0.5)
    exact = 2 * noise.half_width * 0.1
    return [numerical_radius(noise, 0.6, "1", 64, seed=s, n_mc=n_mc).radius / exact
            for s in seeds]


def test_numerical_radius_never_exceeds_the_exact_uniform_l1_radius():
    """The search-and-validate-two scheme this replaces claimed 1.023x the exact radius here at
    1e6 samples (seeds 0 and 1): its search ranked the axis below other directions."""
    ratios = _uniform_l1_claims(range(3), 10_000)
    assert max(ratios) <= 1.0 and min(ratios) > 0.5


@pytest.mark.slow
def test_numerical_radius_never_exceeds_the_exact_uniform_l1_radius_at_1e6_samples():
    ratios = _uniform_l1_claims(range(2), 1_000_000)  # ~5 min a seed on a busy CPU
    assert max(ratios) <= 1.0 and min(ratios) > 0.9


@pytest.mark.slow
def test_numerical_radius_of_the_general_normal_reduces_to_the_special_cases():
    gauss = numerical_radius(GeneralNormal(0.5, 2.0), 0.99, "2", 3, seed=1, **FAST_MC)
    exact = Gaussian(0.5).closed_radius(0.99, "2", 3)
    assert 0.97 * exact <= gauss.radius <= exact
    lap = numerical_radius(GeneralNormal(0.5, 1.0), 0.99, "1", 3, seed=1, **FAST_MC)
    exact = Laplace(0.5).closed_radius(0.99, "1", 3)
    assert 0.97 * exact <= lap.radius <= exact


def test_certify_with_a_numerical_radius():
    net = linear_net([1.0, 0.0, 0.0], 0.0)
    x = np.array([1.0, 0.0, 0.0])
    common = dict(norm="2", method="smoothing", sigma=0.5, n=4000, seed=4, device="cpu",
                  mc_samples=50_000)
    cert = certify(net, x, 1, 0.1, noise="gennorm:2", **common)
    d = cert.details
    assert d["radius_method"] == "numerical" and cert.margin_lower == [None, None]
    assert d["alpha_split"]["clopper_pearson"] == pytest.approx(0.0009)
    assert d["pA_lower"] == pytest.approx(clopper_pearson_lower(d["counts"][1], 4000, 0.0009))
    assert cert.radius == pytest.approx(gaussian_radius(d["pA_lower"], 0.5), rel=0.03)
    assert cert.radius <= gaussian_radius(d["pA_lower"], 0.5)
    assert cert.status is Status.YES and cert.confidence == pytest.approx(0.999)


# ---------------------------------------------------------------- models and CLI

@pytest.mark.parametrize("name", SMOOTHING_MODELS)
def test_bundled_smoothing_models(name):
    meta = json.loads((MODELS / f"{name}.json").read_text())
    assert meta["sigma"] == pytest.approx(int(name[-3:]) / 100) and meta["noise"] == "gaussian"
    net = verify.load_onnx(MODELS / f"{name}.onnx")
    assert net.input_size == 64 and net.output_size == 10
    assert (MODELS / f"{name}.onnx").stat().st_size < 100_000


def test_noise_model_certifies_test_digits(digits_test):
    xs, ys = digits_test
    net = verify.load_onnx(MODELS / "digits_mlp_noise025.onnx")
    certs = certify_batch(net, xs[:8], ys[:8], 0.25, norm="2", method="smoothing", sigma=0.25,
                          n=2000, n0=50, device="cpu")
    assert sum(c.status is Status.YES for c in certs) >= 5
    assert all(c.status is not Status.NO for c in certs)


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_certify_and_smooth_predict(capsys, tmp_path, digits_test):
    xs, ys = digits_test
    path = tmp_path / "x.npy"
    np.save(path, xs[0])
    model = MODELS / "digits_mlp_noise025.onnx"
    code, out, _ = _cli(capsys, "certify", model, "--input", path, "--label", int(ys[0]),
                        "--eps", 0.1, "--norm", 2, "--method", "smoothing", "--n", 2000,
                        "--n0", 50, "--alpha", 0.01, "--batch-size", 512, "--seed", 3, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["certifies"] == "g" and data["details"]["sigma"] == 0.25  # from the metadata
    assert data["details"]["n"] == 2000 and data["details"]["seed"] == 3
    assert data["confidence"] == pytest.approx(0.99)
    code, out, _ = _cli(capsys, "smooth-predict", model, "--input", path, "--n", 500,
                        "--sigma", 0.25, "--noise", "gaussian")
    assert code == 0 and f"class {int(ys[0])}" in out
    code, out, _ = _cli(capsys, "smooth-predict", model, "--input", path, "--n", 500, "--json")
    assert code == 0 and json.loads(out)["prediction"] == int(ys[0])
    code, _, err = _cli(capsys, "certify", model, "--input", path, "--label", 0, "--eps", 0.1,
                        "--method", "ibp", "--sigma", 0.25)
    assert code == 2 and "--sigma" in err and "only for --method smoothing" in err


# ---------------------------------------------------------------- slow

@pytest.mark.slow
def test_cohen_defaults_on_a_noise_model(digits_test):
    """n0 = 100, n = 100,000, alpha = 0.001 on 20 digits: radii never above the best case."""
    xs, ys = digits_test
    net = verify.load_onnx(MODELS / "digits_mlp_noise050.onnx")
    certs = certify_batch(net, xs[:20], ys[:20], 0.0, norm="2", method="smoothing", sigma=0.5)
    best = best_case_radius(100_000, 0.001, 0.5)
    radii = [c.radius for c in certs if c.radius is not None]
    assert radii and max(radii) <= best + 1e-12
    assert sum(c.status is Status.YES for c in certs) >= 10


@pytest.mark.slow
def test_numerical_radius_l_inf_corner_in_64_dimensions():
    result = numerical_radius(Gaussian(0.25), 0.99, "inf", 64, seed=2)
    closed = Gaussian(0.25).closed_radius(0.99, "inf", 64)
    assert 0.97 * closed <= result.radius <= closed
