"""MILP: exact minima equal an independent activation-pattern oracle; the tightness ordering
IBP <= LP <= MILP <= sampled margins; YES/NO agree with known answers; export round-trips."""

from __future__ import annotations

import csv
import itertools
import re

import highspy
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scipy.optimize import linprog

from conftest import random_conv_net, random_mlp, sampled_margins
from verify import Box, Dense, InputError, Network, OutputProperty, ReLU, Specification, Status
from verify import certify, certify_specs, load_onnx, robustness_spec
from verify.exact import milp
from verify.spec import LpBall


def margins(cert) -> np.ndarray:
    return np.array([v for v in cert.margin_lower if v is not None])


def uppers(cert) -> np.ndarray:
    return np.array([v for v in cert.margin_upper if v is not None])


# --------------------------------------------------------------------------- independent oracle

def _input_polytope(spec: Specification) -> tuple[np.ndarray, np.ndarray, list]:
    """(A, b, box) with the input set = {x in box : A x <= b}; l_1 balls as 2^n facets."""
    s = spec.input_set
    lower, upper = s.bounding_box()
    n = len(lower)
    A, b = np.zeros((0, n)), np.zeros(0)
    if isinstance(s, LpBall) and s.norm == "1":
        signs = np.array(list(itertools.product([-1.0, 1.0], repeat=n)))
        A, b = signs, s.eps + signs @ s.center
    return A, b, list(zip(lower, upper))


def _feasible(A, b, box) -> bool:
    n = len(box)
    res = linprog(np.zeros(n), A_ub=A if len(A) else None, b_ub=b if len(b) else None,
                  bounds=box, method="highs")
    return res.status == 0


def pattern_oracle(net: Network, spec: Specification) -> np.ndarray:
    """min over the input set of every row, by enumerating activation patterns: depth first over
    the neurons, each branch adding y_i >= 0 or y_i <= 0 (in input space, where the network is
    affine) and pruned once infeasible; at each leaf one LP per row. Shares no code with the
    certifiers."""
    A0, b0, box = _input_polytope(spec)
    n_in = len(box)
    best = np.full(len(spec.output.C), np.inf)
    layers = net.layers

    def walk(k: int, H: np.ndarray, h0: np.ndarray, A: np.ndarray, b: np.ndarray) -> None:
        # the current activation is H x + h0 on the region {A x <= b} ∩ box
        if k == len(layers):
            rows_H, rows_h = spec.output.C @ H, spec.output.C @ h0 - spec.output.d
            for r in range(len(best)):
                res = linprog(rows_H[r], A_ub=A if len(A) else None, b_ub=b if len(b) else None,
                              bounds=box, method="highs")
                if res.status == 0:
                    best[r] = min(best[r], res.fun + rows_h[r])
            return
        layer = layers[k]
        if isinstance(layer, Dense):
            walk(k + 1, layer.weight @ H, layer.weight @ h0 + layer.bias, A, b)
            return
        assert isinstance(layer, ReLU)

        def branch(i: int, H: np.ndarray, h0: np.ndarray, A, b) -> None:
            if i == len(h0):
                walk(k + 1, H, h0, A, b)
                return
            for active in (True, False):
                sign = -1.0 if active else 1.0  # active: -(H_i x + h0_i) <= 0
                A2 = np.vstack([A, sign * H[i]]) if len(A) else (sign * H[i])[None]
                b2 = np.append(b, -sign * h0[i])
                if not _feasible(A2, b2, box):
                    continue
                if active:
                    branch(i + 1, H, h0, A2, b2)
                else:
                    H2, h2 = H.copy(), h0.copy()
                    H2[i], h2[i] = 0.0, 0.0
                    branch(i + 1, H2, h2, A2, b2)

        branch(0, H, h0, A, b)

    walk(0, np.eye(n_in), np.zeros(n_in), A0, b0)
    return best


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_in=st.integers(2, 4), h1=st.integers(2, 6), h2=st.integers(0, 6),
       norm=st.sampled_from(["inf", "1"]), eps=st.floats(0.05, 1.0), box=st.booleans(),
       seed=st.integers(0, 2**16))
def test_exact_margins_equal_the_pattern_oracle(n_in, h1, h2, norm, eps, box, seed):
    rng = np.random.default_rng(seed)
    sizes = [n_in, h1] + ([h2] if h2 else []) + [3]
    net = random_mlp(rng, sizes)
    x = rng.uniform(0, 1, size=n_in)
    spec = robustness_spec(n_in, 3, x, int(rng.integers(3)), eps, norm, (0, 1) if box else None)
    cert = certify_specs(net, [spec], "milp", exact_margins=True, bounds="ibp", attack=False)[0]
    oracle = pattern_oracle(net, spec)
    assert np.max(np.abs(margins(cert) - oracle)) <= 1e-6, (margins(cert), oracle)
    assert np.max(np.abs(uppers(cert) - oracle)) <= 1e-6, (uppers(cert), oracle)
    fast = certify_specs(net, [spec], "milp")[0]  # stops on the sign; CROWN bounds, attack
    for c in (cert, fast):
        assert np.all(margins(c) <= oracle + 1e-6) and np.all(uppers(c) >= oracle - 1e-6)
        if oracle.min() > 1e-5:
            assert c.status is Status.YES
        elif oracle.min() < -1e-5:
            assert c.status is Status.NO


# --------------------------------------------------------------------------- ordering law

def _law_cases():
    rng = np.random.default_rng(7)
    for k, (sizes, norm, box) in enumerate([([3, 8, 6, 4], "inf", True), ([4, 10, 3], "1", False),
                                            ([2, 6, 6, 3], "inf", False),
                                            ([4, 7, 5, 3], "1", True)]):
        net = random_mlp(rng, sizes)
        x = rng.uniform(0.2, 0.8, size=sizes[0])
        yield robustness_spec(sizes[0], sizes[-1], x, k % sizes[-1], 0.3, norm,
                              (0, 1) if box else None), net
    net = random_conv_net(rng)  # Conv2d layers enter the builder as their dense matrices
    yield robustness_spec(net.input_size, 4, rng.uniform(0, 1, net.input_size), 2, 0.02, "inf",
                          (0, 1)), net


@pytest.mark.parametrize("bounds", ["ibp", "crown"])
def test_ordering_ibp_lp_milp_sampled(bounds):
    for spec, net in _law_cases():
        ibp = margins(certify_specs(net, [spec], "ibp")[0])
        lp = margins(certify_specs(net, [spec], "lp", bounds=bounds)[0])
        exact = certify_specs(net, [spec], "milp", bounds=bounds, exact_margins=True,
                              attack=False)[0]
        sampled = sampled_margins(net, spec, 1000, seed=3).min(axis=0)
        attack = uppers(certify_specs(net, [spec], "attack", stop_early=False)[0])
        crown = margins(certify_specs(net, [spec], "crown")[0])
        assert np.all(ibp <= crown + 1e-9), (ibp, crown)
        assert np.all(ibp <= lp + 1e-9), (ibp, lp)
        assert np.all(lp <= margins(exact) + 1e-6), (lp, margins(exact))
        assert np.all(margins(exact) <= sampled + 1e-9), (margins(exact), sampled)
        assert np.all(margins(exact) <= attack + 1e-9), (margins(exact), attack)
        assert np.all(uppers(exact) <= sampled + 1e-9)


def test_crown_never_tighter_than_lp_on_the_same_bounds():
    """CROWN <= LP on CROWN's bounds, the conv net's neuron bounds by receptive-field windows
    (crown._windows) as CROWN's default takes them."""
    from verify.bounds import crown

    windowed = 0
    for spec, net in _law_cases():
        crown._WINDOWS.clear()
        c = margins(certify_specs(net, [spec], "crown")[0])
        windowed += any(w is not None for w in crown._WINDOWS.get(net, {}).values())
        lp = margins(certify_specs(net, [spec], "lp", bounds="crown")[0])
        assert np.all(c <= lp + 1e-9), (c, lp)
    assert windowed == 1  # the conv net


# --------------------------------------------------------------------------- hand-computed values

def _twin_net(offset: float) -> Network:
    """y1 = y2 = x on [-1, 1]; margin (label 0) = relu(y1) - relu(y2) + offset = offset exactly.
    IBP: offset - 1. LP (triangle): min max(0, x) - (x + 1) / 2 + offset = offset - 1/2 at x = 0."""
    first = Dense(np.array([[1.0], [1.0]]), np.zeros(2), (1,), (2,))
    last = Dense(np.eye(2), np.array([offset, 0.0]), (2,), (2,))
    return Network([first, ReLU((2,)), last], (1,))


@pytest.mark.parametrize("norm", ["inf", "1"])
def test_hand_computed_milp_closes_the_gap(norm):
    net = _twin_net(0.25)
    ibp, lp, exact = (certify(net, [0.0], 0, 1.0, norm=norm, method=m, **o) for m, o in
                      [("ibp", {}), ("lp", {"bounds": "ibp"}),
                       ("milp", {"bounds": "ibp", "exact_margins": True, "attack": False})])
    assert ibp.margin_lower[1] == pytest.approx(-0.75, abs=1e-9)
    assert lp.margin_lower[1] == pytest.approx(-0.25, abs=1e-7) and lp.status is Status.MAYBE
    assert exact.margin_lower[1] == pytest.approx(0.25, abs=1e-7) and exact.status is Status.YES
    fast = certify(net, [0.0], 0, 1.0, norm=norm, method="milp", bounds="ibp")
    assert fast.status is Status.YES and fast.margin_lower[1] > 1e-6


@pytest.mark.parametrize("exact, tolerance", [(False, 1e-6), (True, 1e-9)])
def test_yes_needs_more_than_the_solver_tolerance(exact, tolerance):
    # The exact minimum is the offset; HiGHS's MIP tolerance is 1e-6 (1e-9 for exact margins).
    below = certify(_twin_net(tolerance / 2), [0.0], 0, 1.0, method="milp", bounds="ibp",
                    exact_margins=exact)
    assert below.status is Status.MAYBE and "tolerance" in below.reason, below.reason
    above = certify(_twin_net(tolerance * 10), [0.0], 0, 1.0, method="milp", exact_margins=exact)
    assert above.status is Status.YES


def test_l2_is_refused_with_a_pointer_to_other_methods():
    net = _twin_net(0.25)
    with pytest.raises(InputError, match="lp.*crown.*smoothing"):
        certify(net, [0.0], 0, 0.5, norm="2", method="milp")


def test_timeout_gives_maybe_with_the_bounds_so_far(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    cert = certify(net, xs[0], int(ys[0]), 0.05, domain=(0, 1), method="milp", bounds="ibp",
                   attack=False, exact_margins=True, timeout=0.3)
    assert cert.status is Status.MAYBE and cert.reason.startswith("timeout"), cert.reason
    lower, upper = margins(cert), uppers(cert)
    assert np.all(lower <= upper) and np.all(np.isfinite(lower))


# --------------------------------------------------------------------------- bundled model

def test_digits_milp_decides_and_counterexamples_are_real(digits_mlp_path, digits_test):
    ort = pytest.importorskip("onnxruntime")
    net = load_onnx(digits_mlp_path)
    session = ort.InferenceSession(str(digits_mlp_path))
    input_name = session.get_inputs()[0].name
    xs, ys = digits_test
    seen = set()
    for i, eps in [(1, 0.02), (2, 0.05), (3, 0.05), (4, 0.05), (7, 0.03), (9, 0.02)]:
        spec = robustness_spec(64, 10, xs[i], int(ys[i]), eps, "inf", (0, 1))
        exact = certify_specs(net, [spec], "milp", timeout=60.0)[0]
        lp = certify_specs(net, [spec], "lp")[0]
        assert exact.status in (Status.YES, Status.NO), exact.reason
        assert np.all(margins(lp) <= margins(exact) + 1e-9)
        seen.add(exact.status)
        if exact.status is Status.NO:
            x = np.array(exact.counterexample)
            assert spec.input_set.contains(x)
            logits = net.forward(x)
            assert np.max(np.delete(logits, ys[i])) >= logits[ys[i]]  # float64: misclassified
            ort_logits = session.run(None, {input_name: x.astype(np.float32)[None]})[0][0]
            assert int(np.argmax(ort_logits)) != ys[i]
    assert seen == {Status.YES, Status.NO}


# --------------------------------------------------------------------------- mnist_fc (VNN-COMP)

def vnnlib_box_spec(path) -> Specification:
    """The box from the X_i bounds and the label from the '; Mnist property with label: N.' line."""
    text = path.read_text()
    label = int(re.search(r"property with label: (\d+)", text).group(1))
    bounds = {(op, int(i)): float(v) for op, i, v in
              re.findall(r"\(assert \((<=|>=) X_(\d+) ([-+0-9.eE]+)\)\)", text)}
    n = 1 + max(i for _, i in bounds)
    lower = np.array([bounds[(">=", i)] for i in range(n)])
    upper = np.array([bounds[("<=", i)] for i in range(n)])
    return Specification(Box(lower, upper), OutputProperty.robustness(label, 10), label)


def _mnist_cases(shared_benchmarks, names=None):
    folder = shared_benchmarks / "mnist_fc"
    with open(folder / "ground_truth.csv") as f:
        truth = {r["property"]: r["ground_truth"] for r in csv.DictReader(f)}
    net = load_onnx(folder / "onnx" / "mnist-net_256x2.onnx")
    for name in names or sorted(truth):
        yield name, truth[name], net, vnnlib_box_spec(folder / "vnnlib" / f"{name}.vnnlib")


def _check_known_answer(name, answer, net, spec, timeout):
    cert = certify_specs(net, [spec], "milp", timeout=timeout)[0]
    expected = Status.NO if answer == "sat" else Status.YES
    assert cert.status in (expected, Status.MAYBE), (name, answer, cert.status, cert.reason)
    if cert.status is Status.MAYBE:
        assert "timeout" in cert.reason
    return cert.status is expected


@pytest.mark.slow
def test_mnist_fc_known_answers(shared_benchmarks):
    names = ["prop_0_0.03", "prop_1_0.03", "prop_3_0.05", "prop_4_0.05"]
    decided = [_check_known_answer(*case, timeout=30.0)
               for case in _mnist_cases(shared_benchmarks, names)]
    assert all(decided)


@pytest.mark.slow
def test_mnist_fc_full_sweep(shared_benchmarks):
    decided = [_check_known_answer(*case, timeout=120.0)
               for case in _mnist_cases(shared_benchmarks)]
    assert sum(decided) >= len(decided) - 2


# --------------------------------------------------------------------------- teaching export

@pytest.mark.parametrize("fmt", ["lp", "mps"])
def test_export_solves_to_the_same_minimum(tmp_path, fmt):
    rng = np.random.default_rng(11)
    net = random_mlp(rng, [3, 6, 5, 3])
    spec = robustness_spec(3, 3, rng.uniform(0.2, 0.8, 3), 1, 0.3, "inf", (0, 1))
    exact = certify_specs(net, [spec], "milp", exact_margins=True, attack=False)[0]
    row = 0
    j = spec.output.row_class[row]
    for relax in (False, True):
        path = milp.export_model(net, spec, tmp_path / f"model.{fmt}", relax=relax, format=fmt)
        text = path.read_text()
        assert "x_0" in text and "z_1_" in text and "a_1_" in text
        highs = highspy.Highs()
        highs.setOptionValue("output_flag", False)
        highs.setOptionValue("mip_rel_gap", 0.0)
        assert highs.readModel(str(path)) == highspy.HighsStatus.kOk
        highs.run()
        value = highs.getInfo().objective_function_value
        if relax:  # the big-M relaxation is the triangle relaxation: the LP's value
            lp = certify_specs(net, [spec], "lp")[0]
            assert value == pytest.approx(lp.margin_lower[j], abs=1e-6)
        else:
            assert value == pytest.approx(exact.margin_lower[j], abs=1e-6)


def test_ctrl_c_during_a_highs_solve_stops_it_and_raises(digits_mlp_path, digits_test):
    """SIGINT while HiGHS runs: the solve stops at its next interrupt callback and
    KeyboardInterrupt follows once run() returns. (Raised by Python inside a HiGHS callback, it
    was lost, and the stopped solve passed for a decided one.)"""
    import os
    import signal
    import threading

    from verify.bounds.lp import neuron_bounds
    from verify.bounds.highs_session import (interrupt_requested, run_highs, set_objective,
                                             to_highs)
    from verify.bounds.relu_encoding import BIG_M, build_program

    net = load_onnx(digits_mlp_path)
    x, y = digits_test[0][0], int(digits_test[1][0])
    spec = robustness_spec(net.input_size, net.output_size, x, y, 0.08, "inf", (0.0, 1.0))
    bounds, _ = neuron_bounds(net, spec, "ibp")  # loose bounds: a long exact solve
    program = build_program(net, spec.input_set, bounds, BIG_M)
    highs = to_highs(program, options={**milp.EXACT_OPTIONS, "time_limit": 120.0})
    cost, offset, _ = program.objective(spec.output.C[0], spec.output.d[0])
    set_objective(highs, cost, offset)
    fired = threading.Event()

    def interrupt() -> None:
        fired.set()
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(0.3, interrupt)
    timer.start()
    try:
        run_highs(highs)
    except KeyboardInterrupt:
        pass
    else:
        if not fired.is_set():  # a fast machine solved it before the signal: nothing to test
            pytest.skip("the solve finished before the SIGINT was sent")
        pytest.fail("SIGINT during the solve did not raise KeyboardInterrupt")
    finally:
        timer.cancel()
    assert highs.getModelStatus() == highspy.HighsModelStatus.kInterrupt  # stopped, not done
    assert not interrupt_requested()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_nearly_stable_neurons_are_encoded_without_tiny_coefficients():
    """Inputs in [0, 100] through an identity layer: every hidden lower bound is 0 minus a
    rounding allowance (about -2e-13), a big-M constant HiGHS would drop (it refused the model
    before). Such neurons get the line z <= y - l instead: exact margins are still exact."""
    net = Network([Dense(np.eye(4), np.zeros(4), (4,), (4,)), ReLU((4,)),
                   Dense(np.array([[-1e-7] * 4, [0.0] * 4]), np.array([1e-3, 0.0]), (4,), (2,))],
                  (4,))
    spec = robustness_spec(4, 2, np.full(4, 50.0), 0, 50.0, "inf", (0.0, 100.0))
    exact = 1e-3 - 4 * 1e-7 * 100  # at x = 100 everywhere
    for method, options in (("milp", {"exact_margins": True, "attack": False}), ("lp", {})):
        cert = certify_specs(net, [spec], method, **options)[0]
        assert cert.status is Status.YES, cert.reason
        assert cert.margin_lower[1] <= exact + 1e-12  # sound, and for milp within 1e-9 of it
        assert method == "lp" or cert.margin_lower[1] >= exact - 1e-9


def test_a_weight_highs_would_drop_is_refused_in_one_line():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(6, 4))
    W[0] *= 1e-11
    net = Network([Dense(W, np.zeros(6), (4,), (6,)), ReLU((6,)),
                   Dense(rng.normal(size=(2, 6)), np.array([3.0, 0.0]), (6,), (2,))], (4,))
    spec = robustness_spec(4, 2, np.full(4, 0.5), 0, 0.5, "inf", (0.0, 1.0))
    for method in ("lp", "milp"):
        with pytest.raises(InputError, match=r"a weight of magnitude .* \(row affine_1_0, "
                                             r"column x_\d\) is below 1e-09") as error:
            certify_specs(net, [spec], method)
        assert "\n" not in str(error.value)


def test_a_flat_chord_keeps_its_binary_in_big_m():
    """x in [-2e9, 1]: the chord slope u / (u - l) = 5e-10 would be a matrix entry HiGHS drops,
    so the triangle replaces the chord by z <= u; big-M holds only l and u and keeps the neuron's
    binary (a second review found it relaxed there too, losing exactness by up to u = 1)."""
    from verify.bounds.relu_encoding import BIG_M, TRIANGLE, build_program

    net = Network([Dense(np.array([[1.0], [1.0]]), np.zeros(2), (1,), (2,)), ReLU((2,)),
                   Dense(np.array([[-1.0, 1.0], [0.0, 0.0]]), np.array([0.5, 0.0]), (2,), (2,))],
                  (1,))
    box = Box([-2e9], [1.0])
    bounds = [(np.full(2, -2e9), np.ones(2)), (np.zeros(2), np.ones(2)),
              (np.full(2, -0.5), np.full(2, 1.5))]
    exact = build_program(net, box, bounds, BIG_M)
    assert np.all(exact.binary_cols[1] >= 0)
    relaxed = build_program(net, box, bounds, TRIANGLE)
    entries = np.abs(relaxed.matrix.tocsr().data)
    assert entries[entries > 0].min() >= 1e-9


def test_an_expired_deadline_stops_the_lp_screen_and_the_milp(digits_mlp_path, digits_test):
    """Past the active deadline (verify.deadline) neither the LP screen nor a MILP row runs: MAYBE
    "timeout", with the sound interval/CROWN bounds; the option timeout sets the same limit."""
    from verify import deadline

    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    spec = robustness_spec(64, 10, xs[4], int(ys[4]), 0.05, "inf", (0, 1))
    with deadline.limit(0.0):
        cert = certify_specs(net, [spec], "milp", attack=False)[0]
    crown = margins(certify_specs(net, [spec], "crown")[0])
    assert cert.status is Status.MAYBE and cert.reason.startswith("timeout")
    assert cert.cost["lps"] == 0 and cert.cost["milps"] == 0
    assert np.all(margins(cert) >= crown - 1e-9 * np.abs(crown))


def test_attack_candidates_are_points_of_the_set(digits_mlp_path, digits_test):
    """The attack module's own pgd_attack: its best point and each row's point, all in the set,
    and for a misclassified-nearby input one of them is a replayed counterexample."""
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    spec = robustness_spec(64, 10, xs[2], int(ys[2]), 0.1, "inf", (0, 1))
    points = milp.attack_candidates(net, spec)
    assert len(points) == 1 + len(spec.output.C)
    assert all(p.shape == (64,) and spec.input_set.contains(p) for p in points)
    from verify.verdict import validated_counterexample
    assert any(validated_counterexample(net, spec, p) is not None for p in points)
