"""PGD attack: replayed counterexamples on the bundled model (verify and onnxruntime agree), sound
upper bounds (>= IBP, equal to the value at the returned point), closed-form minima on linear
nets, exact projections, determinism."""

from __future__ import annotations

import numpy as np

from verify.spec import lp_norm
import pytest
import torch

from conftest import random_conv_net, random_mlp, sampled_margins
from onnx_reference import onnxruntime_forward
from verify import Box, Dense, Network, OutputProperty, Specification, Status
from verify import certify, certify_specs, load_onnx, robustness_spec
from verify.attack import (AttackOptions, _build_batch, _step, attack_upper_bounds,
                           find_counterexample, pgd_attack, pgd_attack_many,
                           project_l1_ball, project_l2_ball)
from verify.errors import InputError

DUAL = {"inf": 1, "2": 2, "1": np.inf}


def row_values(net, spec, x) -> np.ndarray:
    return spec.output.values(net.forward(np.asarray(x)))


def lower_rows(cert) -> np.ndarray:
    return np.array([v for j, v in enumerate(cert.margin_lower) if j != cert.label])


def upper_rows(cert) -> np.ndarray:
    return np.array([v for j, v in enumerate(cert.margin_upper) if j != cert.label])


# --------------------------------------------------------------------------------------------
# The bundled model

def test_digits_counterexamples_are_real(digits_mlp_path, digits_test):
    """l_inf eps 0.1 on 40 test digits: most get a NO; every counterexample lies in the set and is
    misclassified by verify's float64 forward pass and by onnxruntime on the ONNX file (its own
    float32 graph and a float64 copy)."""
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test[0][:40], digits_test[1][:40]
    specs = [robustness_spec(64, 10, x, y, 0.1, "inf", (0, 1)) for x, y in zip(xs, ys)]
    certs = certify_specs(net, specs, "attack")
    no = [i for i, c in enumerate(certs) if c.status is Status.NO]
    assert len(no) >= 0.7 * len(certs), len(no)
    assert all(c.status is Status.MAYBE and "not a proof" in c.reason
               for c in certs if c.status is not Status.NO)
    points = np.array([certs[i].counterexample for i in no])
    centers, labels = xs[no].reshape(len(no), -1), ys[no]
    assert np.all(np.abs(points - centers).max(axis=1) <= 0.1)
    assert np.all((points >= 0) & (points <= 1))
    logits = net.forward(points)
    np.testing.assert_allclose(logits, np.array([certs[i].counterexample_logits for i in no]),
                               rtol=1e-12, atol=1e-12)  # batched vs one-by-one BLAS rounding
    assert np.all(logits.argmax(axis=1) != labels)
    for float64 in (False, True):
        runtime = onnxruntime_forward(digits_mlp_path, points.reshape(len(no), 64).astype(
            np.float64 if float64 else np.float32), float64=float64)
        assert np.all(runtime.argmax(axis=1) != labels), float64


def test_upper_bounds_sound_and_replayed(digits_mlp_path, digits_test):
    """margin_upper >= IBP's margin_lower for every row, never YES, the certificate's row upper
    bounds are the attack's, and each is the float64 value at its returned point."""
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test[0][40:55], digits_test[1][40:55]
    for eps, norm in [(0.02, "inf"), (0.3, "2"), (1.0, "1")]:
        specs = [robustness_spec(64, 10, x, y, eps, norm, (0, 1)) for x, y in zip(xs, ys)]
        ibp = certify_specs(net, specs, "ibp")
        attack = certify_specs(net, specs, "attack", stop_early=False)
        for spec, lo, up in zip(specs, ibp, attack):
            assert up.status is not Status.YES and not (lo.proved and up.status is Status.NO)
            assert np.all(upper_rows(up) >= lower_rows(lo))
            upper, points = attack_upper_bounds(net, spec)
            np.testing.assert_allclose(upper_rows(up), upper, rtol=0, atol=1e-12)
            assert all(spec.input_set.contains(p) for p in points)
            at_points = row_values(net, spec, points)  # (rows, rows): row i at point i
            np.testing.assert_allclose(np.diag(at_points), upper, rtol=1e-14, atol=1e-14)
            assert np.all(upper <= row_values(net, spec, spec.input_set.center))


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_random_nets_upper_between_ibp_and_samples(norm):
    """Random MLPs and conv nets with a box: IBP lower <= attack upper for every row, all returned
    points lie in the set, and PGD's upper bound is at or below the minimum over 3,000 sampled
    points (corners / vertices / sphere points included) on at least 85% of the rows.

    Not on every row: in few dimensions the sampler all but enumerates the l_inf corners and
    l_1 vertices, and PGD can end in a local minimum or on a flat region where every ReLU is
    off (measured: sampling wins on about 2-6% of such rows)."""
    rng = np.random.default_rng({"inf": 1, "2": 2, "1": 3}[norm])
    at_or_below = rows = 0
    for net in [random_mlp(rng, [5, 16, 16, 4]), random_conv_net(rng),
                random_mlp(rng, [20, 32, 32, 5])]:
        specs = [robustness_spec(net.input_size, net.output_size,
                                 rng.uniform(0, 1, size=net.input_size),
                                 int(rng.integers(net.output_size)),
                                 float(rng.uniform(0.05, 0.4)) * (1 if norm == "inf" else 3),
                                 norm, (0, 1)) for _ in range(5)]
        results = pgd_attack_many(net, specs, AttackOptions(stop_early=False))
        ibp = certify_specs(net, specs, "ibp")
        for spec, result, lower in zip(specs, results, ibp):
            assert all(spec.input_set.contains(p) for p in result.row_points)
            assert np.all(result.upper >= lower_rows(lower))
            sampled = sampled_margins(net, spec, 3000, seed=int(rng.integers(1 << 30)))
            at_or_below += int(np.sum(result.upper <= sampled.min(axis=0) + 1e-9))
            rows += result.upper.size
    assert at_or_below >= 0.85 * rows, (at_or_below, rows)


def test_box_set_and_general_rows():
    """A VNN-LIB-style box with two general rows: upper bounds >= IBP, points in the box; a row
    that fails somewhere in the box gives a NO whose point the float64 pass confirms."""
    rng = np.random.default_rng(7)
    net = random_mlp(rng, [3, 10, 10, 2])
    box = Box(np.full(3, -1.0), np.full(3, 1.0))
    C = np.array([[1.0, -1.0], [-1.0, 1.0]])
    spec = Specification(box, OutputProperty(C, np.array([-50.0, -50.0])))
    upper, points = attack_upper_bounds(net, spec)
    assert all(box.contains(p) for p in points)
    lower = lower_rows(certify_specs(net, [spec], "ibp")[0])
    assert np.all(upper >= lower)
    shifted = Specification(box, OutputProperty(C, np.array([upper[0] + 0.1, -50.0])))
    cert = certify_specs(net, [shifted], "attack")[0]
    assert cert.status is Status.NO
    assert row_values(net, shifted, cert.counterexample).min() <= 0
    unbounded = Specification(Box(np.full(3, -np.inf), np.ones(3)), spec.output)
    with pytest.raises(InputError):
        certify_specs(net, [unbounded], "attack")


# --------------------------------------------------------------------------------------------
# Closed-form minima

@pytest.mark.parametrize("norm", ["inf", "2", "1"])
@pytest.mark.parametrize("eps", [0.1, 0.7])
def test_linear_net_reaches_closed_form_minimum(norm, eps):
    """f(x) = W x + b, no box: min over the ball of (w_y - w_j).x + b_y - b_j is
    (w_y - w_j).x0 + b_y - b_j - eps ||w_y - w_j||_q (q the dual norm), for every row."""
    rng = np.random.default_rng(11)
    n, k, label = 12, 4, 2
    W, b = rng.normal(size=(k, n)), rng.normal(size=k)
    net = Network([Dense(W, b, (n,), (k,))], (n,))
    x0 = rng.uniform(-1, 1, size=n)
    spec = robustness_spec(n, k, x0, label, eps, norm)
    others = [j for j in range(k) if j != label]
    w, c = W[label] - W[others], b[label] - b[others]
    closed = w @ x0 + c - eps * np.linalg.norm(w, ord=DUAL[norm], axis=1)
    upper, points = attack_upper_bounds(net, spec)
    np.testing.assert_allclose(upper, closed, rtol=0, atol=1e-6)
    cert = certify(net, x0, label, eps, norm, method="attack", stop_early=False)
    np.testing.assert_allclose(upper_rows(cert), closed, rtol=0, atol=1e-6)


def test_linear_net_linf_box_closed_form():
    """With the box [0, 1]: the l_inf minimum is the corner of ball ∩ box picked by sign(w)."""
    rng = np.random.default_rng(12)
    n = 20
    w = rng.normal(size=n)
    net = Network([Dense(np.stack([w, -w]) / 2, [0.3, -0.3], (n,), (2,))], (n,))
    x0 = rng.uniform(0, 1, size=n)
    spec = robustness_spec(n, 2, x0, 0, 0.25, "inf", (0, 1))
    lo, hi = np.maximum(x0 - 0.25, 0), np.minimum(x0 + 0.25, 1)
    closed = w @ np.where(w > 0, lo, hi) + 0.6
    upper, _ = attack_upper_bounds(net, spec)
    assert abs(upper[0] - closed) <= 1e-9


# --------------------------------------------------------------------------------------------
# Projections and steps

def l1_projection_by_bisection(v: np.ndarray, radius: float) -> np.ndarray:
    """Reference: soft-threshold at the tau that makes the l_1 norm equal the radius."""
    if np.abs(v).sum() <= radius:
        return v
    lo, hi = 0.0, np.abs(v).max()
    for _ in range(200):
        tau = (lo + hi) / 2
        lo, hi = (tau, hi) if np.maximum(np.abs(v) - tau, 0).sum() > radius else (lo, tau)
    return np.sign(v) * np.maximum(np.abs(v) - (lo + hi) / 2, 0)


def test_l1_projection_matches_bisection_and_is_nearest():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(300, 9)) * rng.uniform(0.01, 3, size=(300, 1))
    v[:20, 4:] = 0.0  # sparse rows
    v[20:25] = 0.0
    radius = rng.uniform(0, 4, size=300)
    radius[25:30] = 0.0
    projected = project_l1_ball(torch.as_tensor(v), torch.as_tensor(radius)).numpy()
    reference = np.array([l1_projection_by_bisection(a, r) for a, r in zip(v, radius)])
    np.testing.assert_allclose(projected, reference, rtol=0, atol=1e-10)
    assert np.all(np.abs(projected).sum(axis=1) <= radius * (1 + 1e-12) + 1e-15)
    # Nearest: no point of the ball (sampled) is closer than the projection.
    for a, r, p in zip(v[:50], radius[:50], projected[:50]):
        e = rng.exponential(size=(500, 10))
        ball = e[:, :9] / e.sum(axis=1, keepdims=True) * rng.choice([-1, 1], size=(500, 9)) * r
        assert np.linalg.norm(a - p) <= np.linalg.norm(a - ball, axis=1).min() + 1e-12


def test_l2_projection():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(200, 7)) * rng.uniform(0.01, 3, size=(200, 1))
    radius = rng.uniform(0, 4, size=200)
    projected = project_l2_ball(torch.as_tensor(v), torch.as_tensor(radius)).numpy()
    size = np.linalg.norm(v, axis=1)
    expected = np.where((size > radius)[:, None], v * (radius / size)[:, None], v)
    np.testing.assert_allclose(projected, expected, rtol=1e-14, atol=0)
    assert np.all(np.linalg.norm(projected, axis=1) <= radius * (1 + 1e-14))


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_steps_stay_in_the_set(norm):
    """Random starts and 30 steps along random gradients (long ones included) stay in ball ∩ box,
    including centers on the box's faces."""
    rng = np.random.default_rng(5)
    n = 16
    specs = []
    for _ in range(6):
        x = rng.uniform(0, 1, size=n)
        x[rng.uniform(size=n) < 0.3] = rng.choice([0.0, 1.0])
        specs.append(robustness_spec(n, 3, x, 0, float(rng.uniform(0.05, 2.0)), norm, (0, 1)))
    options = AttackOptions(restarts=4, row_restarts=2)
    batch, x = _build_batch(specs, options, torch.device("cpu"), torch.float64)
    per_spec = batch.per_spec
    for t in range(30):
        grad = torch.as_tensor(rng.normal(size=tuple(x.shape)))
        grad[rng.uniform(size=tuple(x.shape)) < 0.1] = 0.0
        x = _step(batch, x, grad, float(rng.choice([0.05, 0.5, 3.0])), int(rng.integers(1, 5)))
        for i, spec in enumerate(specs):
            ball = spec.input_set
            for p in x[i * per_spec:(i + 1) * per_spec].numpy():
                # Iterates are float points: in the set up to rounding (reported points are then
                # projected exactly by verify.verdict).
                assert lp_norm(p - ball.center, ball.norm) <= ball.eps * (1 + 1e-12), (t, i)
                assert np.all(p >= ball.lower) and np.all(p <= ball.upper), (t, i)
                assert ball.contains(ball.project(p))


# --------------------------------------------------------------------------------------------
# Determinism, helpers, registry

def test_seeded_and_recorded():
    rng = np.random.default_rng(3)
    net = random_mlp(rng, [6, 20, 20, 5])
    spec = robustness_spec(6, 5, rng.uniform(0, 1, 6), 1, 0.3, "inf", (0, 1))
    a = pgd_attack(net, spec, AttackOptions(seed=4, stop_early=False))
    b = pgd_attack(net, spec, AttackOptions(seed=4, stop_early=False))
    np.testing.assert_array_equal(a.row_points, b.row_points)
    np.testing.assert_array_equal(a.upper, b.upper)
    starts = [_build_batch([spec], AttackOptions(seed=s), torch.device("cpu"),
                           torch.float64)[1].numpy() for s in (4, 5)]
    assert not np.array_equal(starts[0], starts[1])
    # The first trajectory of each objective starts at the center, the others do not.
    assert np.array_equal(starts[0][0], spec.input_set.center)
    assert not np.array_equal(starts[0][1], spec.input_set.center)
    # One spec gets the same answer alone or anywhere in a list.
    other = robustness_spec(6, 5, rng.uniform(0, 1, 6), 2, 0.3, "inf", (0, 1))
    batched = certify_specs(net, [other, spec], "attack", seed=4, stop_early=False)
    alone = certify_specs(net, [spec], "attack", seed=4, stop_early=False)[0]
    assert batched[1].details["seed"] == 4 == alone.details["seed"]
    np.testing.assert_allclose(upper_rows(batched[1]), upper_rows(alone), rtol=1e-12)
    np.testing.assert_allclose(upper_rows(alone), a.upper, rtol=1e-12)


def test_find_counterexample():
    rng = np.random.default_rng(9)
    net = random_mlp(rng, [4, 12, 3])
    x = rng.uniform(0, 1, 4)
    label = int(np.argmax(net.forward(x)))
    assert find_counterexample(net, robustness_spec(4, 3, x, label, 0.0, "inf")) is None
    spec = robustness_spec(4, 3, x, label, 5.0, "2")
    found = find_counterexample(net, spec)
    if found is None:  # then no sampled point may violate either
        assert np.all(sampled_margins(net, spec, 5000) > 0)
    else:
        assert spec.input_set.contains(found) and row_values(net, spec, found).min() <= 0
    wrong = (label + 1) % 3
    found = find_counterexample(net, robustness_spec(4, 3, x, wrong, 0.0, "inf"))
    np.testing.assert_array_equal(found, x)


def test_registered_and_options_checked():
    rng = np.random.default_rng(2)
    net = random_mlp(rng, [4, 8, 3])
    cert = certify(net, rng.uniform(0, 1, 4), 0, 0.01, method="attack", domain=(0, 1),
                   restarts=2, steps=5)
    assert cert.method == "attack" and cert.status is not Status.YES
    assert all(v == -np.inf for v in lower_rows(cert))
    assert cert.details["steps"] == 5 and cert.cost["trajectories"] == 2 + 2
    with pytest.raises(InputError):
        certify(net, np.zeros(4), 0, 0.1, method="attack", restarts=0)
    with pytest.raises(InputError):
        certify(net, np.zeros(4), 0, 0.1, method="attack", dtype="float16")


def test_float32_points_are_replayed_in_float64():
    """Working in float32 changes only the search: the bounds reported are float64 values at
    points of the set."""
    rng = np.random.default_rng(8)
    net = random_mlp(rng, [10, 30, 30, 4])
    spec = robustness_spec(10, 4, rng.uniform(0, 1, 10), 3, 0.2, "2", (0, 1))
    upper, points = attack_upper_bounds(net, spec, AttackOptions(dtype="float32"))
    assert all(spec.input_set.contains(p) for p in points)
    np.testing.assert_allclose(np.diag(row_values(net, spec, points)), upper, rtol=1e-14,
                               atol=1e-14)
    upper64, _ = attack_upper_bounds(net, spec)
    np.testing.assert_allclose(upper, upper64, rtol=0, atol=1e-3)
