"""CROWN and alpha-CROWN: IBP <= CROWN <= alpha-CROWN <= sampled margins, hand-computed values,
layer bounds, conv nets, the mnist_fc benchmark, batched == one by one."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import random_conv_net, random_mlp, sampled_margins
from verify import Box, Conv2d, Dense, Network, OutputProperty, ReLU, Specification, Status
from verify import certify, certify_batch, certify_specs, load_onnx, robustness_spec
from verify.bounds import InputBatch, ibp
from verify.bounds import crown
from verify.certificate import Certificate
from verify.errors import InputError

CPU = torch.device("cpu")


def lower_bounds(net, spec, method, **options) -> np.ndarray:
    cert = certify_specs(net, [spec], method, device="cpu", **options)[0]
    return np.array([v for v in cert.margin_lower if v is not None])


def check_ordering_and_soundness(net, spec, n_points=1000, seed=0):
    """IBP <= CROWN <= alpha-CROWN row by row, all <= the margins at sampled points."""
    ibp_lower = lower_bounds(net, spec, "ibp")
    crown_lower = lower_bounds(net, spec, "crown")
    alpha_lower = lower_bounds(net, spec, "alpha-crown")
    assert np.all(ibp_lower <= crown_lower + 1e-9), (ibp_lower, crown_lower)
    assert np.all(crown_lower <= alpha_lower + 1e-9), (crown_lower, alpha_lower)
    sampled = sampled_margins(net, spec, n_points, seed=seed).min(axis=0)
    assert np.all(alpha_lower <= sampled + 1e-12), (alpha_lower, sampled)
    return ibp_lower, crown_lower, alpha_lower


# ---------------------------------------------------------------------------------------------
# Ordering and sampled soundness: random MLPs, a conv net, the bundled model

@settings(max_examples=30, deadline=None)
@given(hidden=st.lists(st.integers(2, 20), min_size=1, max_size=3), n_in=st.integers(1, 6),
       n_out=st.integers(2, 5), norm=st.sampled_from(["inf", "2", "1"]), eps=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16), box=st.booleans())
def test_random_mlps_ordering_and_soundness(hidden, n_in, n_out, norm, eps, seed, box):
    rng = np.random.default_rng(seed)
    net = random_mlp(rng, [n_in, *hidden, n_out])
    x = rng.uniform(0, 1, size=n_in)
    spec = robustness_spec(n_in, n_out, x, int(rng.integers(n_out)), eps, norm,
                           (0, 1) if box else None)
    check_ordering_and_soundness(net, spec, seed=seed)


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
@pytest.mark.parametrize("with_box", [False, True])
def test_conv_net_ordering_and_soundness(norm, with_box):
    rng = np.random.default_rng(7 + len(norm) + with_box)
    net = random_conv_net(rng)
    better = 0
    for _ in range(3):
        x = rng.uniform(0, 1, size=net.input_size)
        spec = robustness_spec(net.input_size, net.output_size, x, int(rng.integers(4)),
                               float(rng.uniform(0.02, 0.2)), norm, (0, 1) if with_box else None)
        ibp_lower, crown_lower, _ = check_ordering_and_soundness(net, spec,
                                                                 seed=int(rng.integers(1 << 20)))
        better += int(np.any(crown_lower > ibp_lower + 1e-6))
    assert better > 0  # CROWN does tighten something on a conv net


def _unusual_nets(rng) -> list[Network]:
    """Two affine layers in a row, a ReLU first, a ReLU last, no ReLU at all, a conv last."""
    a = Dense(rng.normal(size=(6, 3)), rng.normal(size=6), (3,), (6,))
    b = Dense(rng.normal(size=(5, 6)), rng.normal(size=5), (6,), (5,))
    c = Dense(rng.normal(size=(3, 5)), rng.normal(size=3), (5,), (3,))
    d = Dense(rng.normal(size=(6, 3)) * 0.7, rng.normal(size=6), (3,), (6,))
    return [Network([a, b, ReLU((5,)), c], (3,)),
            Network([ReLU((3,)), d, ReLU((6,)), b, ReLU((5,)), c], (3,)),
            Network([a, ReLU((6,)), b, ReLU((5,)), c, ReLU((3,))], (3,)),
            Network([Dense(rng.normal(size=(3, 3)), rng.normal(size=3), (3,), (3,))], (3,)),
            Network([Dense(rng.normal(size=(12, 3)), rng.normal(size=12), (3,), (1, 3, 4)),
                     ReLU((12,)), Conv2d(rng.normal(size=(1, 1, 3, 2)), rng.normal(size=1),
                                         (1, 1), (0, 0, 0, 0), (1, 1), (1, 3, 4))], (3,))]


def test_ibp_ball_bound_not_applied_after_a_first_relu():
    # Regression (found while testing CROWN, which intersects with IBP): IBP used the exact
    # l_2/l_1 ball bound W x0 + b ± eps ||W_i||_q for the first affine layer even when a ReLU came
    # first, i.e. for W relu(x) + b, whose input relu(x) need not lie in the ball around x0.
    rng = np.random.default_rng(0)
    net = Network([ReLU((3,)), Dense(rng.normal(size=(4, 3)), rng.normal(size=4), (3,), (4,)),
                   ReLU((4,)), Dense(rng.normal(size=(2, 4)), rng.normal(size=2), (4,), (2,))],
                  (3,))
    for _ in range(20):
        spec = robustness_spec(3, 2, rng.uniform(-1, 1, 3), 0, 0.8, "2")
        batch = InputBatch.from_specs([spec], CPU)
        first_lo, first_up = (t.numpy()[0] for t in ibp.layer_bounds(net, batch)[1])
        h = net.layers[1].forward(net.layers[0].forward(spec.input_set.sample(2000, rng)))
        assert np.all(h >= first_lo - 1e-12) and np.all(h <= first_up + 1e-12)


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_unusual_layer_orders(norm):
    rng = np.random.default_rng(3)
    for net in _unusual_nets(rng):
        for _ in range(3):
            x = rng.uniform(-1, 1, size=3)
            spec = robustness_spec(3, 3, x, int(rng.integers(3)), 0.4, norm)
            check_ordering_and_soundness(net, spec, seed=int(rng.integers(1 << 20)))


def test_bundled_model_ordering_and_soundness(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    for i, (norm, eps) in enumerate([("inf", 0.03), ("2", 0.3), ("1", 0.6), ("inf", 0.08)]):
        spec = robustness_spec(64, 10, xs[i], int(ys[i]), eps, norm, (0, 1))
        ibp_lower, crown_lower, _ = check_ordering_and_soundness(net, spec, seed=i)
        assert np.all(crown_lower > ibp_lower + 1e-3)  # much tighter on a trained MLP


# ---------------------------------------------------------------------------------------------
# Layer bounds: contain the activations, within IBP

def _assert_layer_bounds_sound(net, spec, rng):
    batch = InputBatch.from_specs([spec], CPU)
    bounds = crown.layer_bounds(net, batch)
    interval = ibp.layer_bounds(net, batch)
    assert len(bounds) == len(net.layers)
    h = spec.input_set.sample(1000, rng)
    for layer, (lo, up), (ilo, iup) in zip(net.layers, bounds, interval):
        h = layer.forward(h)
        flat = h.reshape(len(h), -1)
        assert lo.shape == (1, flat.shape[1]) and up.shape == lo.shape
        assert np.all(flat >= lo.numpy()[0] - 1e-12) and np.all(flat <= up.numpy()[0] + 1e-12)
        assert torch.all(lo >= ilo) and torch.all(up <= iup)
    return bounds, interval


@settings(max_examples=25, deadline=None)
@given(hidden=st.lists(st.integers(2, 20), min_size=1, max_size=3), n_in=st.integers(1, 6),
       norm=st.sampled_from(["inf", "2", "1"]), eps=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16), box=st.booleans())
def test_layer_bounds_contain_activations(hidden, n_in, norm, eps, seed, box):
    rng = np.random.default_rng(seed)
    net = random_mlp(rng, [n_in, *hidden, 3])
    spec = robustness_spec(n_in, 3, rng.uniform(0, 1, size=n_in), 0, eps, norm,
                           (0, 1) if box else None)
    _assert_layer_bounds_sound(net, spec, rng)


def test_layer_bounds_conv_and_bundled(digits_mlp_path, digits_test):
    rng = np.random.default_rng(11)
    conv = random_conv_net(rng)
    for norm in ["inf", "2", "1"]:
        spec = robustness_spec(conv.input_size, 4, rng.uniform(0, 1, conv.input_size), 1, 0.15,
                               norm, (0, 1))
        _assert_layer_bounds_sound(conv, spec, rng)
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    spec = robustness_spec(64, 10, xs[0], int(ys[0]), 0.05, "inf", (0, 1))
    bounds, interval = _assert_layer_bounds_sound(net, spec, rng)
    width = (bounds[2][1] - bounds[2][0]).sum().item()
    assert width < 0.75 * (interval[2][1] - interval[2][0]).sum().item()
    # all_neurons: every neuron tightened, still sound and at least as tight.
    batch = InputBatch.from_specs([spec], CPU)
    every = crown.layer_bounds(net, batch, all_neurons=True)
    for (lo, up), (alo, aup) in zip(bounds, every):
        assert torch.all(alo >= lo - 1e-12) and torch.all(aup <= up + 1e-12)


def test_transpose_apply_matches_dense_matrix():
    """The autograd-free transposed conv equals coefficients @ the layer's dense matrix, for
    strides, asymmetric padding and dilation."""
    rng = np.random.default_rng(5)
    cases = [((1, 1), (1, 1, 1, 1), (1, 1), (6, 6)), ((2, 2), (0, 0, 0, 0), (1, 1), (7, 7)),
             ((2, 3), (1, 0, 2, 1), (2, 1), (9, 8)), ((3, 2), (0, 1, 0, 0), (1, 2), (8, 9))]
    for stride, padding, dilation, (h, w) in cases:
        conv = Conv2d(rng.normal(size=(3, 2, 3, 2)), rng.normal(size=3), stride, padding,
                      dilation, (2, h, w))
        params = {"weight": torch.tensor(conv.weight), "bias": torch.tensor(conv.bias)}
        coeffs = torch.tensor(rng.normal(size=(2, 5, int(np.prod(conv.out_shape)))))
        expected = coeffs @ torch.tensor(conv.dense_matrix())
        torch.testing.assert_close(crown.transpose_apply(conv, params, coeffs), expected,
                                   rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# An independent textbook CROWN (numpy, dense, every neuron, no rounding allowance)

def reference_crown(net: Network, spec: Specification) -> np.ndarray:
    """Margin lower bounds by textbook CROWN for Dense/ReLU nets; every layer's bounds are CROWN's
    intersected with intervals from the previous layer's, as in verify.bounds.crown."""
    ball = spec.input_set
    lo, hi = ball.bounding_box()

    def concretize(A, c):
        value = A.clip(min=0) @ lo + A.clip(max=0) @ hi + c
        if getattr(ball, "norm", "box") in ("2", "1"):
            q = 2 if ball.norm == "2" else np.inf
            value = np.maximum(value, A @ ball.center + c - ball.eps * np.linalg.norm(A, q, axis=1))
        return value

    pre: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def backward(A, c, top):  # lower bound of A h_top + c
        for k in range(top, -1, -1):
            layer = net.layers[k]
            if isinstance(layer, Dense):
                A, c = A @ layer.weight, c + A @ layer.bias
                continue
            l, u = pre[k]
            unstable = (l < 0) & (u > 0)
            chord = np.where(unstable, u / np.where(unstable, u - l, 1.0), (l >= 0) * 1.0)
            intercept = np.where(unstable, -chord * l, 0.0)
            lower_slope = np.where(unstable, (u > -l) * 1.0, (l >= 0) * 1.0)
            c = c + A.clip(max=0) @ intercept
            A = A.clip(min=0) * lower_slope + A.clip(max=0) * chord
        return concretize(A, c)

    h_lo, h_hi = lo, hi
    for k, layer in enumerate(net.layers):
        if isinstance(layer, Dense):
            W, b = layer.weight, layer.bias
            mid, rad = (h_hi + h_lo) / 2, (h_hi - h_lo) / 2
            crown_lo, crown_hi = backward(W, b, k - 1), -backward(-W, -b, k - 1)
            h_lo = np.maximum(W @ mid + b - np.abs(W) @ rad, crown_lo)
            h_hi = np.minimum(W @ mid + b + np.abs(W) @ rad, crown_hi)
        else:
            pre[k] = (h_lo, h_hi)
            h_lo, h_hi = np.maximum(h_lo, 0), np.maximum(h_hi, 0)
    return backward(spec.output.C, -spec.output.d, len(net.layers) - 1)


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
@pytest.mark.parametrize("box", [False, True])
def test_matches_textbook_crown(norm, box, digits_mlp_path, digits_test):
    """CROWN's own margin bound equals an independent plain implementation (to 1e-9: only the
    rounding allowance differs), and the certificate is at least that."""
    rng = np.random.default_rng(len(norm) + 2 * box)
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    cases = [(net, xs[i], int(ys[i]), {"inf": 0.04, "2": 0.4, "1": 0.8}[norm]) for i in range(3)]
    for sizes in ([3, 10, 10, 4], [5, 16, 3], [2, 8, 8, 8, 3]):
        small = random_mlp(rng, sizes)
        cases.append((small, rng.uniform(0, 1, sizes[0]), 0, 0.3))
    for model, x, label, eps in cases:
        spec = robustness_spec(model.input_size, model.output_size, x, label, eps, norm,
                               (0, 1) if box else None)
        batch = InputBatch.from_specs([spec], CPU)
        bounds, _ = crown.propagate(model, batch, ibp.layer_bounds(model, batch),
                                    include_last=False)
        raw = crown.margin_lower_from(model, batch, bounds)[0].numpy()
        expected = reference_crown(model, spec)
        np.testing.assert_allclose(raw, expected, rtol=0, atol=1e-9)
        assert np.all(lower_bounds(model, spec, "crown") >= expected - 1e-9)


# ---------------------------------------------------------------------------------------------
# Hand-computed bounds

def _dependent_net() -> Network:
    # z1 = x1 + x2, z2 = x1 + x2 - 0.5 (so z2 = z1 - 0.5); h = relu(z);
    # logits [h1 - h2 + 0.25, 0]  => margin for label 0 = h1 - h2 + 0.25 = min(z1, 0.5) + 0.25
    # when z1 >= 0.
    first = Dense(np.array([[1.0, 1.0], [1.0, 1.0]]), np.array([0.0, -0.5]), (2,), (2,))
    last = Dense(np.array([[1.0, -1.0], [0.0, 0.0]]), np.array([0.25, 0.0]), (2,), (2,))
    return Network([first, ReLU((2,)), last], (2,))


@pytest.mark.parametrize("norm, eps, expected", [
    # l_inf, center (0.5, 0.5), radius 0.5 (x in [0,1]^2): z1 in [0, 2] is stable (l >= 0);
    # z2 in [-0.5, 1.5], u > -l, upper chord slope 1.5/2 = 0.75, intercept 0.75 * 0.5 = 0.375.
    # margin >= z1 - (0.75 z2 + 0.375) + 0.25 = z1 - 0.75 (z1 - 0.5) - 0.375 + 0.25
    #         = 0.25 z1 + 0.25 >= 0.25 (z1 >= 0). Exact: the true minimum min(z1, .5) + .25 = .25.
    ("inf", 0.5, 0.25),
    # l_2, radius 0.5: z1 in 1 ± 0.5 sqrt 2 = [0.293, 1.707] (stable), z2 = z1 - 0.5 unstable.
    # With s = u / (u - l), t = -s l the bound is (1 - s) z1 + 0.5 s - t + 0.25, and
    # 0.5 s - t = s (0.5 + l) = s (1 - 0.5 sqrt 2) while min (1 - s) z1 = (1 - s)(1 - 0.5 sqrt 2)
    # (dual l_2 norm of (1 - s)(1, 1)), so the bound is 1 - 0.5 sqrt 2 + 0.25 = 0.543: exact.
    ("2", 0.5, 1.25 - 0.5 * math.sqrt(2.0)),
    # l_1, radius 0.75: z1 in 1 ± 0.75 (dual l_inf norm 1), stable; same algebra: 1 - 0.75 + 0.25.
    ("1", 0.75, 0.5),
])
def test_hand_computed_crown(norm, eps, expected):
    net = _dependent_net()
    cert = certify(net, np.array([0.5, 0.5]), 0, eps, norm=norm, method="crown")
    assert cert.margin_lower[1] == pytest.approx(expected, abs=1e-12)
    assert cert.margin_lower[1] <= expected  # the rounding allowance only widens
    assert cert.status is Status.YES
    # IBP on the same set, l_inf: h1 in [0, 2], h2 in [0, 1.5]: 0 - 1.5 + 0.25 = -1.25 (MAYBE).
    if norm == "inf":
        ibp_cert = certify(net, np.array([0.5, 0.5]), 0, eps, norm=norm, method="ibp")
        assert ibp_cert.margin_lower[1] == pytest.approx(-1.25, abs=1e-12)
        assert ibp_cert.status is Status.MAYBE


def _kink_net() -> Network:
    # 1-2-1: z1 = x, z2 = x + 3; out = h1 - 0.5 h2 + 1.5 = relu(x) - 0.5 x, on the box [-2, 1].
    first = Dense(np.array([[1.0], [1.0]]), np.array([0.0, 3.0]), (1,), (2,))
    last = Dense(np.array([[1.0, -0.5]]), np.array([1.5]), (2,), (1,))
    return Network([first, ReLU((2,)), last], (1,))


def test_hand_computed_adaptive_slope_and_alpha():
    # z1 = x in [-2, 1]: unstable, u = 1 < -l = 2, so CROWN's lower slope is 0: h1 >= 0.
    # z2 = x + 3 in [1, 4]: stable active, h2 = x + 3.
    # CROWN: out >= 0 - 0.5 (x + 3) + 1.5 = -0.5 x >= -0.5 (at x = 1).
    # IBP: h1 in [0, 1], h2 in [1, 4]: out >= 0 - 2 + 1.5 = -0.5 as well.
    # alpha-CROWN, slope a: out >= a x - 0.5 x = (a - 0.5) x, best at a = 0.5: 0 = the true min.
    net = _kink_net()
    spec = Specification(Box([-2.0], [1.0]), OutputProperty(np.array([[1.0]]), np.zeros(1)))
    batch = InputBatch.from_specs([spec], CPU)
    bounds = crown.layer_bounds(net, batch)
    raw = crown.margin_lower_from(net, batch, bounds)
    assert raw.item() == pytest.approx(-0.5, abs=1e-12) and raw.item() <= -0.5
    assert lower_bounds(net, spec, "crown")[0] == pytest.approx(-0.5, abs=1e-12)
    alpha = lower_bounds(net, spec, "alpha-crown")[0]
    assert -0.05 < alpha <= 0.0
    assert lower_bounds(net, spec, "alpha-crown", steps=0)[0] == pytest.approx(-0.5, abs=1e-12)


def test_hand_computed_negative_adaptive_choice_on_a_1_1_1_net():
    # z = x on [-1, 3]: u = 3 > -l = 1, lower slope 1; out = h (C = [[1]]): out >= x >= -1.
    # IBP gives relu's lower end 0, which is better: the certificate keeps max(-1, 0) = 0, and
    # the raw CROWN bound is -1. Upper chord (if the row were -h): slope 3/4, intercept 3/4.
    net = Network([Dense(np.eye(1), np.zeros(1), (1,), (1,)), ReLU((1,)),
                   Dense(np.eye(1), np.zeros(1), (1,), (1,))], (1,))
    spec = Specification(Box([-1.0], [3.0]), OutputProperty(np.array([[1.0], [-1.0]]),
                                                            np.zeros(2)))
    batch = InputBatch.from_specs([spec], CPU)
    raw = crown.margin_lower_from(net, batch, crown.layer_bounds(net, batch))[0].numpy()
    # Row 2: -h >= -(3/4 x + 3/4) >= -(9/4 + 3/4) = -3 (at x = 3): exact (relu(3) = 3).
    np.testing.assert_allclose(raw, [-1.0, -3.0], atol=1e-12)
    np.testing.assert_allclose(lower_bounds(net, spec, "crown"), [0.0, -3.0], atol=1e-12)


def test_upper_chord_is_sound_in_exact_arithmetic():
    """The rounded chord s z + t stays above relu at both ends of [l, u], checked with exact
    rationals (so on all of [l, u], relu being convex)."""
    rng = np.random.default_rng(0)
    lower = -np.exp(rng.uniform(-30, 30, size=2000)) * rng.uniform(size=2000)
    upper = np.exp(rng.uniform(-30, 30, size=2000)) * rng.uniform(size=2000)
    relax = crown.relu_relaxation(torch.tensor(lower)[None], torch.tensor(upper)[None])
    assert bool(relax.unstable.all())
    for l, u, s, t in zip(lower, upper, relax.upper_slope[0].tolist(),
                          relax.upper_intercept[0].tolist()):
        l, u, s, t = Fraction(l), Fraction(u), Fraction(s), Fraction(t)
        assert s * l + t >= 0 and s * u + t >= u


def test_upper_chord_is_sound_with_subnormal_and_huge_ends():
    """The same with ends from 1e-323 to 1e300: the slope u / (u - l) and the products can
    underflow (about 1 chord in 6 failed here before the intercept's absolute allowance)."""
    rng = np.random.default_rng(1)
    lower = -10.0 ** rng.uniform(-323, 300, size=1500)
    upper = 10.0 ** rng.uniform(-323, 300, size=1500)
    lower[:100], upper[:100] = -10.0 ** rng.uniform(0, 300, 100), 10.0 ** rng.uniform(-323, -300, 100)
    keep = (lower < 0) & (upper > 0)
    relax = crown.relu_relaxation(torch.tensor(lower[keep])[None], torch.tensor(upper[keep])[None])
    for l, u, s, t in zip(lower[keep], upper[keep], relax.upper_slope[0].tolist(),
                          relax.upper_intercept[0].tolist()):
        l, u, s, t = Fraction(l), Fraction(u), Fraction(s), Fraction(t)
        assert s * l + t >= 0 and s * u + t >= u


TINY = 5e-324  # the smallest subnormal float64


def _underflow_cases() -> list:
    """(network, specification, exact minimum of the margin) where float64 underflow, not
    relative rounding, decides the sign (found by a review; each gave a false YES)."""
    box = Network([Dense(np.array([[-1e300], [0.0]]), np.array([1e-30, 0.0]), (1,), (2,))], (1,))
    halving = (box, robustness_spec(1, 2, [0.0], 0, 1.0, "inf", (0.0, TINY)),
               Fraction(1e-30) - Fraction(1e300) * Fraction(TINY))  # mid/rad of [0, TINY]
    tiny = Network([Dense(np.array([[-1e-170] * 4, [0.0] * 4]), np.array([TINY, 0.0]), (4,), (2,))],
                   (4,))
    products = (tiny, robustness_spec(4, 2, np.full(4, 2.25e-154), 0, 0.0, "inf"),
                4 * Fraction(-1e-170) * Fraction(2.25e-154) + Fraction(TINY))
    ball = Network([Dense(np.array([[1e-170] * 4, [0.0] * 4]), np.array([1e-80, 0.0]), (4,), (2,))],
                   (4,))
    squares = (ball, robustness_spec(4, 2, np.zeros(4), 0, 1e100, "2"),  # ||w||_2 = 2e-170
               Fraction(1e-80) - Fraction(1e100) * 2 * Fraction(1e-170))
    return [halving, products, squares]


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
@pytest.mark.parametrize("case", [0, 1, 2])
def test_underflow_never_gives_a_false_yes(method, case):
    net, spec, exact = _underflow_cases()[case]
    assert exact < 0
    cert = certify_specs(net, [spec], method)[0]
    assert cert.status is not Status.YES
    assert Fraction(cert.margin_lower[1]) <= exact


@pytest.mark.parametrize("method", ["crown", "alpha-crown", pytest.param("bab", marks=pytest.mark.slow)])
def test_cancelling_rows_of_a_huge_margin_matrix(method):
    """C = (1e300, -1e300) on two weights 1e-300 that nearly cancel, at x = 1e-30: |W| |x|
    underflows to 0, so |Lambda| (|W| |x|) charged nothing for fl(C W)'s rounding (a second
    review's reproducer: YES with 3.2e-47 where the exact margin is -5.4e-61)."""
    x, a1 = 1e-30, 1e-300
    a2 = a1 * (1 + 23 * 2.0 ** -52)
    net = Network([Dense(np.array([[a1], [a2]]), np.zeros(2), (1,), (2,))], (1,))
    K = Fraction(1e300) * Fraction(a1) - Fraction(1e300) * Fraction(a2)  # exact C W < 0
    f = float(-K * Fraction(x))
    f = f if Fraction(f) <= -K * Fraction(x) else float(np.nextafter(f, 0.0))
    spec = Specification(Box([x], [x]), OutputProperty([[1e300, -1e300]], [-f]))
    exact = K * Fraction(x) + Fraction(f)
    assert exact <= 0
    cert = certify_specs(net, [spec], method)[0]
    assert cert.status is not Status.YES
    assert cert.margin_lower[0] == -math.inf or Fraction(cert.margin_lower[0]) <= exact


def test_concretize_l2_ball_with_underflowing_squares():
    """||c||_2 of coefficients near 1e-170: their squares underflow; the ball's bound must still
    be below the exact minimum 1e-80 - 1e100 * 2e-170."""
    spec = robustness_spec(4, 2, np.zeros(4), 0, 1e100, "2")
    batch = InputBatch.from_specs([spec], CPU)
    coeffs = torch.full((1, 1, 4), -1e-170, dtype=torch.float64)
    bound = crown.concretize(batch, coeffs, torch.tensor([[1e-80]], dtype=torch.float64))
    assert Fraction(bound.item()) <= Fraction(1e-80) - Fraction(1e100) * 2 * Fraction(1e-170)


# ---------------------------------------------------------------------------------------------
# Bundled model: batching, zero radius, certificates

def test_batched_equals_one_by_one(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    for method, norm, eps, n in [("crown", "2", 0.3, 30), ("alpha-crown", "inf", 0.05, 12)]:
        batch = certify_batch(net, xs[:n], ys[:n], eps, norm, method, (0, 1), batch_size=8)
        for x, y, cert in zip(xs[:n], ys[:n], batch):
            single = certify(net, x, int(y), eps, norm, method, (0, 1))
            assert single.status == cert.status
            np.testing.assert_allclose([v for v in single.margin_lower if v is not None],
                                       [v for v in cert.margin_lower if v is not None],
                                       atol=1e-9)


def test_zero_radius_gives_the_margin_itself(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    exact = net.forward(xs[3])
    for method in ["crown", "alpha-crown"]:
        cert = certify(net, xs[3], int(ys[3]), 0.0, domain=(0, 1), method=method)
        for j in range(10):
            if j != ys[3]:
                assert cert.margin_lower[j] == pytest.approx(exact[ys[3]] - exact[j], abs=1e-9)


def test_alpha_certificate_reports_crown_and_round_trips(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    certs = certify_batch(net, xs[:20], ys[:20], 0.08, "inf", "alpha-crown", (0, 1))
    improved = 0
    for cert, y in zip(certs, ys[:20]):
        base = cert.details["crown_margin_lower"]
        assert base[y] is None and len(base) == 10
        for j in range(10):
            if j != y:
                assert cert.margin_lower[j] >= base[j] - 1e-12
                improved += cert.margin_lower[j] > base[j] + 1e-6
        again = Certificate.from_json(cert.to_json())
        assert again.details["crown_margin_lower"] == base and again.method == "alpha-crown"
    assert improved > 0


def test_crown_certifies_more_than_ibp(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    counts = {}
    for method in ["ibp", "crown", "alpha-crown"]:
        certs = certify_batch(net, xs[:100], ys[:100], 0.03, "inf", method, (0, 1))
        counts[method] = sum(c.status is Status.YES for c in certs)
        wrong = int(np.sum(net.forward(xs[:100]).argmax(1) != ys[:100]))
        assert sum(c.status is Status.NO for c in certs) == wrong
    assert counts["ibp"] < counts["crown"] <= counts["alpha-crown"]


def test_options_are_validated():
    from verify import InputError

    net = _kink_net()
    with pytest.raises(InputError, match="steps"):
        certify(net, [0.0], 0, 0.1, method="alpha-crown", steps=2.5)
    with pytest.raises(InputError, match="unknown option"):
        certify(net, [0.0], 0, 0.1, method="crown", steps=3)


# ---------------------------------------------------------------------------------------------
# Third-party benchmark: VNN-COMP mnist_fc 256x2

def read_vnnlib_box(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Input bounds X_i and the label ("Mnist property with label: y") of a mnist_fc property."""
    text = path.read_text()
    pairs = re.findall(r"\(assert \((<=|>=) X_(\d+) ([-+0-9.eE]+)\)\)", text)
    n = 1 + max(int(i) for _, i, _ in pairs)
    lower, upper = np.full(n, -np.inf), np.full(n, np.inf)
    for op, i, value in pairs:
        (upper if op == "<=" else lower)[int(i)] = float(value)
    return lower, upper, int(re.search(r"label: (\d+)", text).group(1))


def image_and_eps(lower: np.ndarray, upper: np.ndarray, eps: float) -> np.ndarray:
    """The image behind a box [x - eps, x + eps] ∩ [0, 1]."""
    x = np.where(lower <= 0, upper - eps, np.where(upper >= 1, lower + eps, (lower + upper) / 2))
    return np.clip(x, 0, 1)


def test_mnist_fc_prop_0(shared_benchmarks):
    folder = shared_benchmarks / "mnist_fc"
    net = load_onnx(folder / "onnx" / "mnist-net_256x2.onnx")
    lower, upper, label = read_vnnlib_box(folder / "vnnlib" / "prop_0_0.03.vnnlib")
    eps = float(np.max(upper - lower)) / 2
    x = image_and_eps(lower, upper, eps)
    specs = [robustness_spec(784, 10, x, label, eps, "inf", (0, 1)),
             Specification(Box(lower, upper), OutputProperty.robustness(label, 10), label)]
    for spec in specs:
        ibp_lower, crown_lower, alpha_lower = check_ordering_and_soundness(net, spec)
        assert np.all(crown_lower > ibp_lower)
        assert np.all(alpha_lower > 0)  # prop_0_0.03 is unsat (robust): alpha-CROWN proves it


@pytest.mark.parametrize("method", ["crown", pytest.param("alpha-crown", marks=pytest.mark.slow)])
def test_mnist_fc_never_contradicts_ground_truth(shared_benchmarks, method):
    """On all 30 instances (exact vnnlib boxes): never YES on a sat (non-robust) instance, never
    NO on an unsat one; CROWN proves a fair share of the 19 unsat ones."""
    folder = shared_benchmarks / "mnist_fc"
    net = load_onnx(folder / "onnx" / "mnist-net_256x2.onnx")
    truth = {}
    for line in (folder / "ground_truth.csv").read_text().splitlines()[1:]:
        fields = line.split(",")
        truth[fields[1]] = fields[3]
    names = sorted(truth)
    specs = []
    for name in names:
        lower, upper, label = read_vnnlib_box(folder / "vnnlib" / f"{name}.vnnlib")
        specs.append(Specification(Box(lower, upper), OutputProperty.robustness(label, 10), label))
    certs = certify_specs(net, specs, method, device="cpu")
    for name, cert in zip(names, certs):
        assert not (cert.status is Status.YES and truth[name] == "sat"), name
        assert not (cert.status is Status.NO and truth[name] == "unsat"), name
    assert sum(c.status is Status.YES for c in certs) >= 6


def test_row_chunks_give_the_same_bounds(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    specs = [robustness_spec(64, 10, x, int(y), 0.05, "2", (0, 1)) for x, y in zip(xs[:6], ys[:6])]
    batch = InputBatch.from_specs(specs, CPU)
    bounds, selections = crown.propagate(net, batch, ibp.layer_bounds(net, batch))
    whole = crown.neuron_bounds(net, batch, bounds, 2, selections[2])
    chunked = crown.neuron_bounds(net, batch, bounds, 2, selections[2], max_elements=2000)
    for a, b in zip(whole, chunked):
        assert torch.equal(a.isinf(), b.isinf())
        torch.testing.assert_close(a[a.isfinite()], b[b.isfinite()], rtol=0, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    for method in ["crown", "alpha-crown"]:
        cpu = certify_batch(net, xs[:20], ys[:20], 0.03, method=method, device="cpu")
        gpu = certify_batch(net, xs[:20], ys[:20], 0.03, method=method, device="cuda")
        for a, b in zip(cpu, gpu):
            assert a.status == b.status
            np.testing.assert_allclose([v for v in a.margin_lower if v is not None],
                                       [v for v in b.margin_lower if v is not None], atol=1e-8)


def test_zero_radius_bound_is_below_the_exact_rational_margin():
    """At eps = 0 every neuron is stable and CROWN's bound is the float64 margin minus the rounding
    allowance; it must not exceed the margin computed exactly (rationals) from the same weights,
    which the float64 forward pass itself overshoots about half the time."""
    rng = np.random.default_rng(0)
    overshoots = 0
    for _ in range(12):
        net = random_mlp(rng, [4, 6, 5, 3])
        x = rng.uniform(0, 1, size=4)
        spec = robustness_spec(4, 3, x, 0, 0.0, "inf")
        h = [Fraction(v) for v in x]
        for layer in net.layers:
            if isinstance(layer, Dense):
                h = [sum((Fraction(w) * v for w, v in zip(row, h)), Fraction(b))
                     for row, b in zip(layer.weight, layer.bias)]
            else:
                h = [max(v, Fraction(0)) for v in h]
        exact = [h[0] - h[j] for j in (1, 2)]
        for method in ["crown", "alpha-crown"]:
            bound = lower_bounds(net, spec, method)
            assert all(Fraction(b) <= e for b, e in zip(bound, exact))
            assert np.allclose(bound, [float(e) for e in exact], atol=1e-12)
        floats = spec.output.values(net.forward(x))
        overshoots += sum(Fraction(f) > e for f, e in zip(floats, exact))
    assert overshoots > 0  # so the allowance is doing work here


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_crown_ibp_variant_is_sound_and_not_looser_than_ibp(norm, digits_mlp_path, digits_test):
    """intermediate="ibp" (CROWN-IBP): interval neuron bounds, one backward pass from C."""
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    eps = {"inf": 0.03, "2": 0.3, "1": 1.0}[norm]
    for x, y in zip(xs[:5], ys[:5]):
        spec = robustness_spec(64, 10, x, int(y), eps, norm, (0, 1))
        cheap = certify_specs(net, [spec], "crown", intermediate="ibp")[0]
        interval = certify_specs(net, [spec], "ibp")[0]
        lo = np.array([v for v in cheap.margin_lower if v is not None])
        lo_ibp = np.array([v for v in interval.margin_lower if v is not None])
        assert np.all(lo >= lo_ibp - 1e-12)
        assert np.all(sampled_margins(net, spec, 1000).min(axis=0) >= lo - 1e-12)
    with pytest.raises(InputError, match="intermediate of method 'crown' must be one of crown, "
                       "ibp, got 'lp'"):
        certify_specs(net, [spec], "crown", intermediate="lp")
    with pytest.raises(InputError, match="intermediate of method 'crown' must be one of"):
        crown.certify(net, [spec], crown.CROWNOptions(intermediate="lp"))  # a direct call
    with pytest.raises(InputError, match="unknown intermediate bounds 'lp'"):
        crown.margin_lower_bounds(net, InputBatch.from_specs([spec], CPU), "lp")


def test_backward_lower_takes_shared_coefficients_without_autograd():
    """One coefficient matrix for the whole batch (L = 1, as its docstring allows) gives the same
    bounds as that matrix repeated per input, on the in-place (no autograd) path."""
    rng = np.random.default_rng(0)
    net = random_mlp(rng, [3, 8, 8, 4])
    specs = [robustness_spec(3, 4, rng.uniform(-1, 1, 3), 0, 0.3, "inf", None)
             for _ in range(5)]
    batch = InputBatch.from_specs(specs, torch.device("cpu"))
    with torch.no_grad():
        bounds = crown.layer_bounds(net, batch)
        top = len(net.layers) - 1
        shared = crown.backward_lower(net, batch, bounds, top, batch.C[:1], -batch.d)
        repeated = crown.backward_lower(net, batch, bounds, top,
                                        batch.C[:1].expand(5, -1, -1).clone(), -batch.d)
    assert torch.equal(shared, repeated)
