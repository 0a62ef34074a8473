"""General-normal smoothing noise and the noise-shape study: the gamma sampler's distribution,
the general normal's variance and density (Gaussian at beta = 2, Laplace at beta = 1), the
numerical radius as a curve over pA (against the closed forms, monotone, read off downwards),
the models trained with each shape and the benchmark's choice of closed forms."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import gamma as gamma_fn

import verify
from conftest import MODELS, REPO
from verify.smoothing import (Gaussian, GeneralNormal, Laplace, certified_accuracy,
                              clopper_pearson_lower, make_noise, numerical_radius_curve,
                              robustness_score, standard_gamma_)
from verify.smoothing.radius import np_lower_bound, np_lower_bounds

BETAS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


# ---------------------------------------------------------------- the samplers

@pytest.mark.parametrize("shape", [0.25, 0.5, 2 / 3, 1.0, 2.0])
def test_standard_gamma_has_the_gamma_distribution(shape):
    n = 200_000
    z = standard_gamma_(torch.empty(n, dtype=torch.float64), shape,
                        torch.Generator().manual_seed(5)).numpy()
    assert np.all(z > 0) and np.all(np.isfinite(z))
    # mean = var = shape; 5 standard errors (var of the sample variance ~ (m4 - k^2) / n)
    assert abs(z.mean() - shape) < 5 * math.sqrt(shape / n)
    m4 = shape * (shape + 1) * (shape + 2) * (shape + 3) - 4 * shape * shape * (shape + 1) * (
        shape + 2) + 6 * shape ** 3 * (shape + 1) - 3 * shape ** 4  # 4th central moment
    assert abs(z.var() - shape) < 5 * math.sqrt((m4 - shape ** 2) / n)
    assert stats.kstest(z, stats.gamma(shape).cdf).pvalue > 1e-3
    # float32 output, same generator seed -> same values
    again = standard_gamma_(torch.empty(n, dtype=torch.float32), shape,
                            torch.Generator().manual_seed(5)).numpy()
    np.testing.assert_allclose(again, z, rtol=1e-6)


@pytest.mark.parametrize("beta", BETAS)
def test_general_normal_has_variance_sigma_squared_and_its_shape(beta):
    sigma, n = 0.25, 400_000
    noise = GeneralNormal(sigma, beta)
    assert noise.a == pytest.approx(sigma * math.sqrt(gamma_fn(1 / beta) / gamma_fn(3 / beta)),
                                    rel=1e-12)
    z = noise.sample_(torch.empty(n, dtype=torch.float64),
                      torch.Generator().manual_seed(2)).numpy()
    m4 = noise.a ** 4 * gamma_fn(5 / beta) / gamma_fn(1 / beta)
    assert abs(z.var() - sigma ** 2) < 5 * math.sqrt((m4 - sigma ** 4) / n)
    assert abs(z.mean()) < 5 * sigma / math.sqrt(n)
    # |z / a|^beta ~ Gamma(1/beta): its mean 1/beta pins the shape, not just the variance
    g = np.abs(z / noise.a) ** beta
    assert abs(g.mean() - 1 / beta) < 5 * math.sqrt(1 / beta / n)
    assert stats.kstest(z, stats.gennorm(beta, scale=noise.a).cdf).pvalue > 1e-3
    # the log density is scipy's
    t = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64)
    np.testing.assert_allclose(noise.log_density(t).numpy(),
                               stats.gennorm(beta, scale=noise.a).logpdf(t.numpy()),
                               rtol=1e-10, atol=1e-12)


def test_general_normal_is_gaussian_at_2_and_laplace_at_1():
    t = torch.linspace(-3.0, 3.0, 601, dtype=torch.float64)
    for sigma in (0.12, 0.25, 1.0):
        np.testing.assert_allclose(GeneralNormal(sigma, 2.0).log_density(t).numpy(),
                                   Gaussian(sigma).log_density(t).numpy(), rtol=1e-13,
                                   atol=1e-13)
        np.testing.assert_allclose(GeneralNormal(sigma, 1.0).log_density(t).numpy(),
                                   Laplace(sigma).log_density(t).numpy(), rtol=1e-13,
                                   atol=1e-13)
        assert GeneralNormal(sigma, 1.0).a == pytest.approx(Laplace(sigma).scale, rel=1e-13)
    assert make_noise("gennorm:1.5", 0.25).beta == 1.5


def test_general_normal_samples_on_the_tensors_device_and_seeded():
    noise = GeneralNormal(0.25, 3.0)
    a = noise.sample_(torch.empty(1000, 64), torch.Generator().manual_seed(9))
    b = noise.sample_(torch.empty(1000, 64), torch.Generator().manual_seed(9))
    c = noise.sample_(torch.empty(1000, 64), torch.Generator().manual_seed(10))
    assert a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)
    # bounded support grows slowly with beta: |z| <= a * Gamma quantile^(1/beta), no outliers
    assert float(a.abs().max()) < noise.a * stats.gamma(1 / 3).ppf(1 - 1e-9) ** (1 / 3)


# ---------------------------------------------------------------- the radius curve

def test_np_lower_bounds_is_the_scalar_bound_for_every_p_and_monotone():
    log_w = np.random.default_rng(1).normal(0.0, 1.3, size=5000)
    p = np.linspace(0.5, 0.9999, 41)
    many = np_lower_bounds(log_w, p)
    np.testing.assert_allclose(many, [np_lower_bound(log_w, v) for v in p], rtol=1e-12,
                               atol=1e-14)
    assert np.all(np.diff(many) >= 0)
    # no shift (w = 1 everywhere): the bound is p itself
    np.testing.assert_allclose(np_lower_bounds(np.zeros(100), p), p, atol=1e-12)


FAST_CURVE = dict(n_mc=50_000, n_search=5_000, grid=128)
P_GRID = np.array([0.3, 0.5, 0.6, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999])


@pytest.mark.slow
@pytest.mark.parametrize("noise,closed,norm", [
    (GeneralNormal(0.5, 2.0), Gaussian(0.5), "2"),
    (GeneralNormal(0.5, 1.0), Laplace(0.5), "1"),
    (GeneralNormal(0.5, 2.0), Gaussian(0.5), "inf"),
])
def test_radius_curve_matches_the_closed_forms(noise, closed, norm):
    dim = 4
    curve = numerical_radius_curve(noise, P_GRID, norm, dim, alpha_mc=1e-3, seed=3,
                                   **FAST_CURVE)
    exact = np.array([closed.closed_radius(p, norm, dim) if p > 0.5 else 0.0 for p in P_GRID])
    np.testing.assert_array_equal(curve.p_grid, P_GRID)
    assert curve.radius[0] == curve.radius[1] == 0.0  # p <= 1/2 certifies nothing
    # sound: never above the closed form by more than the Monte-Carlo slack
    assert np.all(curve.radius <= exact + curve.error() + 1e-12)
    # tight: the DKW correction (eps ~ 0.011 here) and the ladder cost a few per cent
    high = P_GRID >= 0.99
    assert np.all(curve.radius[high] >= 0.96 * exact[high])
    mid = (P_GRID >= 0.75) & ~high
    assert np.all(curve.radius[mid] >= 0.9 * exact[mid])
    assert np.all(np.diff(curve.radius) >= 0)  # non-decreasing in p
    assert 0.009 < curve.epsilon < 0.013 and curve.evaluations > 0


def test_radius_curve_is_ordered_across_norms_and_reaches_small_pa():
    """The general normal at beta = 0.5 (d = 16): pA = 0.6 certifies a positive radius (the
    ladder reaches down to it), and r_1 >= r_2 >= r_inf >= r_1 / d at every p, from the same
    rays (the old per-norm search gave l_1 = 0 < l_2 here)."""
    dim, grid = 16, np.array([0.6, 0.75, 0.9, 0.99])
    curve = numerical_radius_curve(GeneralNormal(0.25, 0.5), grid, "1", dim, alpha_mc=1e-3,
                                   seed=2, n_mc=20_000, n_search=5_000, grid=64)
    r1, r2, rinf = curve.in_norm("1"), curve.in_norm("2"), curve.in_norm("inf")
    np.testing.assert_array_equal(r1, curve.radius)
    assert np.all(rinf > 0)
    assert np.all(r1 >= r2) and np.all(r2 >= rinf) and np.all(rinf >= r1 / dim)
    assert np.all(np.diff(r1) >= 0) and np.all(np.diff(rinf) >= 0)
    assert curve.lower_in("2", 0.95) == r2[2]


@pytest.mark.slow
def test_radius_curve_is_read_off_downwards():
    curve = numerical_radius_curve(GeneralNormal(0.5, 1.5), P_GRID, "2", 4, alpha_mc=1e-3,
                                   seed=1, **FAST_CURVE)
    assert np.all(np.diff(curve.radius) >= 0) and curve.radius[-1] > 0
    # between grid points: the value of the grid point below (never interpolated upwards)
    between = (P_GRID[4:-1] + P_GRID[5:]) / 2
    np.testing.assert_array_equal(curve.lower(between), curve.radius[4:-1])
    np.testing.assert_array_equal(curve.lower(P_GRID), curve.radius)
    assert curve.lower(0.2) == 0.0 and curve.lower(0.5) == 0.0
    assert curve.lower(1.0) == curve.radius[-1]
    fine = np.linspace(0.4, 1.0, 2001)
    assert np.all(np.diff(curve.lower(fine)) >= 0)
    # heavier than Gaussian in the tails, lighter at the centre: its l_2 radius lies within a
    # factor of two of the Gaussian one at the same std (not a closed form; a sanity bracket)
    gauss = Gaussian(0.5).closed_radius(0.99, "2", 4)
    assert 0.5 * gauss < float(curve.lower(0.99)) < 2.0 * gauss


# ---------------------------------------------------------------- the models

GN_MODELS = [f"digits_mlp_gn{round(b * 100):03d}" for b in BETAS]


@pytest.mark.parametrize("name,beta", list(zip(GN_MODELS, BETAS)))
def test_general_normal_models(name, beta, digits_test):
    from models.train import TRAINERS, gennorm_model_name

    assert gennorm_model_name(beta) == name and name in TRAINERS
    meta = json.loads((MODELS / f"{name}.json").read_text())
    assert meta["beta"] == beta and meta["sigma"] == 0.25
    assert meta["noise"] == f"gennorm:{beta:g}"
    assert make_noise(meta["noise"], meta["sigma"]).beta == beta
    assert meta["architecture"] == "64-100-100-10 ReLU MLP"
    path = MODELS / f"{name}.onnx"
    assert path.stat().st_size < 100_000
    net = verify.load_onnx(path)
    xs, ys = digits_test
    # the base classifier works under its own noise (trained for it): 20 noisy copies of 100
    noise = GeneralNormal(0.25, beta)
    noisy = np.repeat(xs[:100], 20, axis=0) + noise.sample_(
        torch.empty(2000, 64, dtype=torch.float64), torch.Generator().manual_seed(0)).numpy()
    accuracy = float((net.forward(noisy).argmax(1) == np.repeat(ys[:100], 20)).mean())
    assert accuracy > 0.85
    assert abs(accuracy - meta["test_accuracy_under_noise"]) < 0.05


# ---------------------------------------------------------------- the study's choices

def _study():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import noise_shape_study

    return noise_shape_study


def test_study_uses_closed_forms_only_where_they_are_the_same_noise():
    study = _study()
    assert isinstance(study.closed_form(2.0, "inf", 0.25), Gaussian)
    assert isinstance(study.closed_form(2.0, "1", 0.25), Gaussian)
    assert isinstance(study.closed_form(1.0, "1", 0.25), Laplace)
    assert study.closed_form(1.0, "2", 0.25) is None and study.closed_form(1.0, "inf", 0.25) is None
    assert study.closed_form(1.5, "1", 0.25) is None and study.closed_form(4.0, "2", 0.25) is None
    grid = study.p_grid(10_000, 0.0009, 40)
    assert grid.size == 40 and np.all(np.diff(grid) > 0) and grid[0] > 0.5
    assert grid[-1] == pytest.approx(float(clopper_pearson_lower(10_000, 10_000, 0.0009)),
                                     rel=1e-15)


def test_study_summary_is_the_robustness_score():
    study = _study()
    radii = np.array([0.3, np.nan, 0.1, 0.6])
    ok = np.array([True, False, True, False])
    cell = study.summarize(radii, ok, "2", "numerical", 0.0)
    assert cell["score"] == pytest.approx((0.3 + 0.1) / 4)
    assert cell["score"] == robustness_score([0.3, None, 0.1, 0.6], ok)
    np.testing.assert_allclose(cell["curve"], certified_accuracy(
        [0.3, None, 0.1, 0.6], ok, np.asarray(study.RADII["2"])))
    assert cell["curve"][0] == pytest.approx(0.5)  # r = 0.1: both correct ones reach it


@pytest.mark.slow
def test_radius_curve_with_pa_one_stays_finite_and_sound():
    """pA = 1 has no boundary along any ray (an infinite true radius); it must neither make the
    curve infinite nor lift the other entries above their closed forms."""
    grid = np.array([0.9, 0.99, 1.0])
    curve = numerical_radius_curve(GeneralNormal(0.5, 2.0), grid, "2", 4, alpha_mc=1e-3, seed=3,
                                   **FAST_CURVE)
    exact = np.array([Gaussian(0.5).closed_radius(p, "2", 4) for p in grid[:2]])
    assert np.all(np.isfinite(curve.radius))
    assert np.all(curve.radius[:2] <= exact + curve.error()[:2] + 1e-12)
    assert np.all(curve.radius[:2] >= 0.9 * exact) and curve.radius[2] >= curve.radius[1]
