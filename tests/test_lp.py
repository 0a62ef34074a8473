"""LP (triangle relaxation): sound on sampled points, at least as tight as IBP, dual bound equal to
the primal optimum, LP-all tighter still, l_2 through the cone solver, tolerance respected."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import random_conv_net, random_mlp, sampled_margins
from verify import Dense, InputError, Network, ReLU, Status, certify, certify_specs, load_onnx
from verify import deadline
from verify import robustness_spec
from verify.bounds.lp import LPOptions, neuron_bounds, solve_rows, tighten_with_lp
from verify.bounds.relu_encoding import BIG_M, TRIANGLE, build_program, lagrangian_bound
from verify.verdict import validated_counterexample


def margins(cert) -> np.ndarray:
    return np.array([v for v in cert.margin_lower if v is not None])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(2, 12), min_size=2, max_size=3), n_in=st.integers(1, 5),
       norm=st.sampled_from(["inf", "1", "2"]), eps=st.floats(0.01, 1.0),
       seed=st.integers(0, 2**16), box=st.booleans(), bounds=st.sampled_from(["ibp", "crown"]))
def test_lp_is_sound_and_at_least_as_tight_as_ibp(sizes, n_in, norm, eps, seed, box, bounds):
    rng = np.random.default_rng(seed)
    net = random_mlp(rng, [n_in] + sizes)
    x = rng.uniform(0, 1, size=n_in)
    spec = robustness_spec(n_in, net.output_size, x, 0, eps, norm, (0, 1) if box else None)
    lp = certify_specs(net, [spec], "lp", bounds=bounds)[0]
    ibp = margins(certify_specs(net, [spec], "ibp")[0])
    sampled = sampled_margins(net, spec, 1000, seed=seed).min(axis=0)
    # a NO's point lies in the set and violates in the float64 replay; a YES meets no sample <= 0
    assert lp.status is not Status.NO or \
        validated_counterexample(net, spec, np.array(lp.counterexample)) is not None
    assert lp.status is not Status.YES or np.all(sampled > 0)
    assert np.all(margins(lp) <= sampled + 1e-9), (margins(lp), sampled)
    assert np.all(ibp <= margins(lp) + 1e-9), (ibp, margins(lp))


def test_conv_net_is_sound(digits_test):
    rng = np.random.default_rng(5)
    net = random_conv_net(rng)
    for norm in ("inf", "1"):
        spec = robustness_spec(net.input_size, 4, rng.uniform(0, 1, net.input_size), 2, 0.1, norm,
                               (0, 1))
        lp = margins(certify_specs(net, [spec], "lp", bounds="ibp")[0])
        ibp = margins(certify_specs(net, [spec], "ibp")[0])
        sampled = sampled_margins(net, spec, 1000).min(axis=0)
        assert np.all(ibp <= lp + 1e-9) and np.all(lp <= sampled + 1e-9)


@pytest.mark.parametrize("norm", ["inf", "1", "2"])
def test_dual_bound_matches_the_primal_optimum(digits_mlp_path, digits_test, norm):
    """The Lagrangian bound recomputed from the duals is the LP optimum (and never above it)."""
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    eps = {"inf": 0.03, "1": 0.5, "2": 0.2}[norm]
    spec = robustness_spec(64, 10, xs[5], int(ys[5]), eps, norm, (0, 1))
    bounds, _ = neuron_bounds(net, spec, "ibp")
    rows, solver = solve_rows(build_program(net, spec.input_set, bounds, TRIANGLE), spec)
    for r in rows:
        assert r.optimal
        assert r.lower <= r.primal + 1e-9
        assert r.lower == pytest.approx(r.primal, abs=1e-5 if norm == "2" else 1e-7)


def test_lagrangian_bound_holds_for_any_duals():
    """Random multipliers give weaker bounds, never one above the true minimum."""
    rng = np.random.default_rng(2)
    net = random_mlp(rng, [3, 6, 4, 3])
    spec = robustness_spec(3, 3, rng.uniform(0, 1, 3), 1, 0.2, "1", (0, 1))
    bounds, _ = neuron_bounds(net, spec, "ibp")
    program = build_program(net, spec.input_set, bounds, TRIANGLE)
    sampled = sampled_margins(net, spec, 2000).min(axis=0)
    for row, (c, d) in enumerate(zip(spec.output.C, spec.output.d)):
        cost, offset, error = program.objective(c, d)
        for _ in range(20):
            y = rng.normal(size=program.n_rows) * rng.uniform(0, 3)
            assert lagrangian_bound(program, cost, offset, error, y) <= sampled[row] + 1e-12


def test_lp_all_is_tighter_and_still_sound(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    for i in (0, 4):
        spec = robustness_spec(64, 10, xs[i], int(ys[i]), 0.05, "inf", (0, 1))
        plain = margins(certify_specs(net, [spec], "lp", bounds="ibp")[0])
        tight = certify_specs(net, [spec], "lp", bounds="ibp", lp_tighten=True)[0]
        sampled = sampled_margins(net, spec, 1000).min(axis=0)
        assert np.all(plain <= margins(tight) + 1e-9)
        assert np.any(margins(tight) > plain + 1e-3)
        assert np.all(margins(tight) <= sampled + 1e-9)
        # every tightened neuron bound still contains the sampled activations
        bounds, _ = neuron_bounds(net, spec, "ibp")
        tightened, n_lps = tighten_with_lp(net, spec.input_set, bounds)
        assert n_lps > 0
        h = spec.input_set.sample(500, np.random.default_rng(i))
        for layer, (lo, up), (lo0, up0) in zip(net.layers, tightened, bounds):
            h = layer.forward(h)
            assert np.all(h >= lo - 1e-9) and np.all(h <= up + 1e-9)
            assert np.all(lo >= lo0) and np.all(up <= up0)


def _twin_net(offset: float) -> Network:
    """y1 = y2 = x on [-1, 1]; margin = relu(y1) - relu(y2) + offset. Triangle LP: offset - 1/2."""
    first = Dense(np.array([[1.0], [1.0]]), np.zeros(2), (1,), (2,))
    last = Dense(np.eye(2), np.array([offset, 0.0]), (2,), (2,))
    return Network([first, ReLU((2,)), last], (1,))


@pytest.mark.parametrize("norm", ["inf", "1", "2"])
def test_hand_computed_triangle_value(norm):
    cert = certify(_twin_net(0.75), [0.0], 0, 1.0, norm=norm, method="lp", bounds="ibp")
    assert cert.margin_lower[1] == pytest.approx(0.25, abs=1e-6)
    assert cert.margin_lower[1] <= 0.25 + 1e-12
    assert cert.status is Status.YES


def test_yes_needs_more_than_the_solver_tolerance():
    # LP optimum 0.5 + 5e-8 - 0.5 = 5e-8 > 0, but below HiGHS's 1e-7 feasibility tolerance
    cert = certify(_twin_net(0.5 + 5e-8), [0.0], 0, 1.0, method="lp", bounds="ibp")
    assert cert.status is Status.MAYBE
    assert certify(_twin_net(0.5 + 1e-5), [0.0], 0, 1.0, method="lp").status is Status.YES


def test_lp_relaxation_of_big_m_is_the_triangle(digits_mlp_path, digits_test):
    """One builder, two encodings: relaxing the binaries of BIG_M gives the triangle's value."""
    import highspy

    from verify.bounds.highs_session import set_objective, to_highs

    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    spec = robustness_spec(64, 10, xs[0], int(ys[0]), 0.05, "inf", (0, 1))
    bounds, _ = neuron_bounds(net, spec, "ibp")
    triangle_rows, _ = solve_rows(build_program(net, spec.input_set, bounds, TRIANGLE), spec)
    big_m = build_program(net, spec.input_set, bounds, BIG_M)
    highs = to_highs(big_m, relax=True)
    for r, (c, d) in zip(triangle_rows, zip(spec.output.C, spec.output.d)):
        cost, offset, _ = big_m.objective(c, d)
        set_objective(highs, cost, offset)
        highs.run()
        assert highs.getModelStatus() == highspy.HighsModelStatus.kOptimal
        assert highs.getInfo().objective_function_value == pytest.approx(r.primal, abs=1e-6)


def test_options_are_validated():
    from verify import InputError

    with pytest.raises(InputError, match="bounds"):
        certify(_twin_net(0.0), [0.0], 0, 1.0, method="lp", bounds="zonotope")
    assert LPOptions().bounds == "crown"


def test_lp_is_never_looser_than_crown_on_badly_scaled_l2():
    """1e6 weights on an l_2 ball: the cone solver fails (once "infeasible"); the reported bound
    is still >= CROWN's (the documented order), below the sampled margins, and the rows where
    CROWN's bound is the one reported are named in the details."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        net = random_mlp(rng, [3, 8, 8, 3], scale=1e6)
        x = rng.uniform(0, 1, 3)
        spec = robustness_spec(3, 3, x, 0, 0.1, "2")
        lp = certify_specs(net, [spec], "lp")[0]
        crown = margins(certify_specs(net, [spec], "crown")[0])
        sampled = sampled_margins(net, spec, 1000, seed=seed).min(axis=0)
        assert np.all(crown <= margins(lp) + 1e-12 * np.abs(margins(lp))), (crown, margins(lp))
        assert np.all(margins(lp) <= sampled + 1e-6 * np.abs(sampled))
        assert lp.status is not Status.YES or np.all(sampled > 0)
        for name, v in lp.details.get("crown_bound_rows", {}).items():
            j = int(name.split()[-1])
            assert lp.margin_lower[j] == v["crown_or_ibp"]
            assert v["crown_or_ibp"] > v["lp"] or v["lp_status"] != "Optimal"


@pytest.mark.parametrize("x, eps", [([1e308, 0.0, 0.0], 0.1), ([0.1, 0.2, 0.3], 1e308),
                                    ([1e19, 0.0, 0.0], 1e20)])
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_huge_input_sets_are_refused_in_one_line(x, eps, norm):
    net = random_mlp(np.random.default_rng(0), [3, 8, 3])
    with pytest.raises(InputError) as error:
        certify(net, np.array(x), 0, eps, norm=norm, method="lp")
    message = str(error.value)
    assert "\n" not in message and "beyond the 1e+20 a solver can hold" in message


def test_an_expired_deadline_gives_timeout_rows_with_crown_bounds(digits_mlp_path, digits_test):
    """Past the active deadline no LP is solved: every row is "timeout", the bound is CROWN's
    (never a YES from the solver), and the reason says timeout."""
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    spec = robustness_spec(64, 10, xs[0], int(ys[0]), 0.1, "inf", (0, 1))
    with deadline.limit(0.0):
        cert = certify_specs(net, [spec], "lp")[0]
    crown = margins(certify_specs(net, [spec], "crown")[0])
    assert cert.status is Status.MAYBE and cert.reason.startswith("timeout")
    assert np.all(margins(cert) >= crown - 1e-9 * np.abs(crown))
    assert cert.cost["lps"] == 0
