"""IBP: sound on sampled points, exact on hand-computed nets, batched == one by one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import random_conv_net, random_mlp, sampled_margins
from verify import Box, Dense, Network, OutputProperty, ReLU, Specification, Status, certify
from verify import certify_batch, certify_specs, load_onnx, robustness_spec
from verify.bounds import InputBatch
from verify.bounds.ibp import layer_bounds


def ibp_lower(net, spec) -> np.ndarray:
    cert = certify_specs(net, [spec], "ibp")[0]
    return np.array([v for v in cert.margin_lower if v is not None])


@pytest.mark.parametrize("norm, with_box", [
    ("inf", False), ("2", False), pytest.param("1", False, marks=pytest.mark.slow),
    *(pytest.param(norm, True, marks=pytest.mark.slow) for norm in ("inf", "2", "1"))])
def test_sampled_margins_never_below_bound(norm, with_box):
    """10,000 points per ball (corners / vertices / sphere points included) on random MLPs and a
    conv net: no margin below the IBP lower bound."""
    rng = np.random.default_rng(hash((norm, with_box)) % 2**32)
    nets = [random_mlp(rng, [4, 12, 12, 3]), random_mlp(rng, [6, 20, 5], final_relu=True),
            random_conv_net(rng)]
    for net in nets:
        for _ in range(3):
            x = rng.uniform(0, 1, size=net.input_size)
            eps = float(rng.uniform(0.01, 0.5))
            label = int(rng.integers(net.output_size))
            spec = robustness_spec(net.input_size, net.output_size, x, label, eps, norm,
                                   (0, 1) if with_box else None)
            lower = ibp_lower(net, spec)
            sampled = sampled_margins(net, spec, 10_000, seed=int(rng.integers(1 << 30)))
            assert np.all(sampled.min(axis=0) >= lower - 1e-12), (sampled.min(axis=0), lower)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(2, 20), min_size=2, max_size=4),
       n_in=st.integers(1, 6), norm=st.sampled_from(["inf", "2", "1"]),
       eps=st.floats(0.0, 1.0), seed=st.integers(0, 2**16), box=st.booleans())
def test_layer_bounds_contain_activations(sizes, n_in, norm, eps, seed, box):
    rng = np.random.default_rng(seed)
    net = random_mlp(rng, [n_in] + sizes)
    x = rng.uniform(0, 1, size=n_in)
    spec = robustness_spec(n_in, net.output_size, x, 0, eps, norm, (0, 1) if box else None)
    bounds = layer_bounds(net, InputBatch.from_specs([spec], torch.device("cpu")))
    points = spec.input_set.sample(300, rng)
    h = points
    for layer, (lo, up) in zip(net.layers, bounds):
        h = layer.forward(h)
        flat = h.reshape(len(h), -1)
        assert np.all(flat >= lo.numpy()[0] - 1e-12) and np.all(flat <= up.numpy()[0] + 1e-12)
    assert np.all(ibp_lower(net, spec) <= spec.output.values(net.forward(points)).min(0) + 1e-12)


def _hand_net() -> Network:
    # h = relu([x1 + x2, x1 - x2]); z = [h1 + 1, h2]  => margin z0 - z1 = h1 - h2 + 1
    first = Dense(np.array([[1.0, 1.0], [1.0, -1.0]]), np.zeros(2), (2,), (2,))
    last = Dense(np.eye(2), np.array([1.0, 0.0]), (2,), (2,))
    return Network([first, ReLU((2,)), last], (2,))


@pytest.mark.parametrize("norm, expected", [
    # l_inf ball of radius 1 at 0: pre-activations in [-2, 2], h in [0, 2]; margin >= 1 - 2.
    ("inf", -1.0),
    # l_2: |x1 ± x2| <= sqrt(2) (dual l_2 norm of each row), h in [0, sqrt 2]: 1 - sqrt 2.
    ("2", 1.0 - math.sqrt(2.0)),
    # l_1: |x1 ± x2| <= 1 (dual l_inf norm), h in [0, 1]: 1 - 1 = 0, not > 0: MAYBE.
    ("1", 0.0),
])
def test_hand_computed_bounds(norm, expected):
    cert = certify(_hand_net(), np.zeros(2), 0, 1.0, norm=norm, method="ibp")
    assert cert.margin_lower[1] == pytest.approx(expected, abs=1e-12)
    assert cert.margin_lower[1] <= expected  # the rounding allowance only widens
    assert cert.margin_upper[1] == pytest.approx(1.0)  # margin at the center
    assert cert.status is Status.MAYBE


def test_hand_computed_box_and_folded_last_layer():
    # Box x in [0, 1] x [0, 0.5]: pre-activations [0, 1.5] and [-0.5, 1], so h1 in [0, 1.5],
    # h2 in [0, 1]. Folding C into the last layer: margin = h1 - h2 + 1 >= 0 - 1 + 1 = 0.
    net = _hand_net()
    spec = Specification(Box([0, 0], [1, 0.5]), OutputProperty.robustness(0, 2), 0)
    assert ibp_lower(net, spec)[0] == pytest.approx(0.0, abs=1e-12)
    # Shift the output so the bound is positive: YES.
    net.layers[-1].bias = np.array([1.25, 0.0])
    net._torch_params.clear()
    cert = certify_specs(net, [spec], "ibp")[0]
    assert cert.status is Status.YES and cert.margin_lower[1] == pytest.approx(0.25, abs=1e-12)


def test_folding_is_at_least_as_tight_as_logit_intervals(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    for x, y in zip(xs[:10], ys[:10]):
        spec = robustness_spec(64, 10, x, int(y), 0.03, "inf", (0, 1))
        batch = InputBatch.from_specs([spec], torch.device("cpu"))
        lo, up = (t.numpy()[0] for t in layer_bounds(net, batch)[-1])
        naive = np.array([lo[y] - up[j] for j in range(10) if j != y])
        assert np.all(ibp_lower(net, spec) >= naive - 1e-12)
        assert np.any(ibp_lower(net, spec) > naive + 1e-6)


def test_zero_radius_gives_the_margin_itself(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    cert = certify(net, xs[3], int(ys[3]), 0.0, domain=(0, 1))
    exact = net.forward(xs[3])
    for j in range(10):
        if j != ys[3]:
            assert cert.margin_lower[j] == pytest.approx(exact[ys[3]] - exact[j], abs=1e-9)


def test_bounds_shrink_with_radius(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    previous = None
    for eps in [0.0, 0.005, 0.01, 0.02, 0.05]:
        lower = np.array([v for v in certify(net, xs[0], int(ys[0]), eps, domain=(0, 1)).margin_lower
                          if v is not None])
        if previous is not None:
            assert np.all(lower <= previous + 1e-12)
        previous = lower


def test_batched_equals_one_by_one(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    batch = certify_batch(net, xs[:40], ys[:40], 0.01, "2", "ibp", (0, 1), batch_size=16)
    for x, y, cert in zip(xs[:40], ys[:40], batch):
        single = certify(net, x, int(y), 0.01, "2", "ibp", (0, 1))
        assert single.status == cert.status
        np.testing.assert_allclose([v for v in single.margin_lower if v is not None],
                                   [v for v in cert.margin_lower if v is not None], atol=1e-12)


def test_misclassified_input_is_a_confirmed_no(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    predicted = net.forward(xs).argmax(1)
    wrong = int(np.flatnonzero(predicted != ys)[0])
    cert = certify(net, xs[wrong], int(ys[wrong]), 0.01, domain=(0, 1))
    assert cert.status is Status.NO
    logits = net.forward(np.array(cert.counterexample))
    assert logits.argmax() != ys[wrong]
    np.testing.assert_allclose(cert.counterexample_logits, logits)
    # lower <= the counterexample's margins: the bounds stay consistent with the witness.
    for j, lo in enumerate(cert.margin_lower):
        if lo is not None:
            assert lo <= logits[ys[wrong]] - logits[j] + 1e-12


def test_ibp_on_digits_certifies_some_and_not_all(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    certs = certify_batch(net, xs[:100], ys[:100], 0.01, "inf", "ibp", (0, 1))
    statuses = [c.status for c in certs]
    assert 40 <= statuses.count(Status.YES) < 100
    assert statuses.count(Status.NO) == int(np.sum(net.forward(xs[:100]).argmax(1) != ys[:100]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    cpu = certify_batch(net, xs[:20], ys[:20], 0.01, device="cpu")
    gpu = certify_batch(net, xs[:20], ys[:20], 0.01, device="cuda")
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose([v for v in a.margin_lower if v is not None],
                                   [v for v in b.margin_lower if v is not None], atol=1e-10)


def test_outward_margin_is_sound_and_exact_on_unit_rows():
    """On rows with one +-1 coefficient the margin's only rounding is the subtraction of d: the
    bound must lie below (above) the exact rational c . y - d, and be 0 when y_k = d."""
    from fractions import Fraction

    from verify.bounds import outward_margin, rounding_slack

    rng = np.random.default_rng(0)
    y = torch.tensor(rng.normal(size=(200, 3)) * 10.0 ** rng.integers(-8, 8, size=(200, 1)))
    d = torch.tensor(rng.normal(size=(200, 1)) * 10.0 ** rng.integers(-8, 8, size=(200, 1)))
    d[:20, 0] = y[:20, 1]  # y_k - d = 0 exactly
    C = torch.zeros(200, 1, 3, dtype=torch.float64)
    C[:, 0, 1] = torch.tensor(rng.choice([-1.0, 1.0], size=200))
    C[:20, 0, 1] = 1.0
    value = torch.einsum("bmk,bk->bm", C, y) - d
    slack = rounding_slack(torch.einsum("bmk,bk->bm", C.abs(), y.abs()) + d.abs(), 3)
    low, high = outward_margin(C, d, value, slack), outward_margin(C, d, value, slack, down=False)
    for b in range(200):
        exact = Fraction(float(C[b, 0, 1])) * Fraction(float(y[b, 1])) - Fraction(float(d[b, 0]))
        assert Fraction(float(low[b, 0])) <= exact <= Fraction(float(high[b, 0]))
    assert torch.all(low[:20] == 0) and torch.all(high[:20] == 0)
    assert torch.all(low >= value - slack) and torch.all(high <= value + slack)
    C[:, 0, 0] = 0.5  # two coefficients: the sum's allowance again
    assert torch.equal(outward_margin(C, d, value, slack), value - slack)
