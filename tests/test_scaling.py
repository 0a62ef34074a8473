"""Badly scaled networks: no certifier may say YES, or report a margin_lower, above the exact
minimum. One-input nets (`benchmarks/badly_scaled.py`) have exactly computable minima: the
margin is piecewise linear in x, and its breakpoints are found layer by layer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.badly_scaled import breakpoints, exact_minimum, judge, make_net  # noqa: E402
from verify import Dense, Network, ReLU, Status, certify_specs, robustness_spec  # noqa: E402
from verify.exact import milp  # noqa: E402


def _assert_sound(seed: int, method: str, max_exponent: float = 5.0) -> dict:
    net, spec = make_net(seed, max_exponent=max_exponent)
    result = judge(net, spec, method)
    assert not result["wrong"], (seed, method, result)
    return result


def test_breakpoints_give_the_minimum_of_a_hand_made_net():
    """|x| - 0.5 on [-1, 2] as relu(x) + relu(-x) - 0.5: breakpoint 0, minimum -0.5 there."""
    first = Dense(np.array([[1.0], [-1.0]]), np.zeros(2), (1,), (2,))
    last = Dense(np.array([[1.0, 1.0], [0.0, 0.0]]), np.array([-0.5, 0.0]), (2,), (2,))
    net = Network([first, ReLU((2,)), last], (1,))
    spec = robustness_spec(1, 2, [0.5], 0, 1.5)
    assert list(breakpoints(net, -1.0, 2.0)) == [-1.0, 0.0, 2.0]
    lowest, at = exact_minimum(net, spec)
    assert lowest[0] == -0.5 and at[0] == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_the_breakpoint_minimum_is_below_a_dense_grid(seed):
    """The oracle itself: no point of a dense grid goes below the breakpoint minimum (beyond
    float64 rounding of the huge logits)."""
    net, spec = make_net(seed)
    lowest, _ = exact_minimum(net, spec)
    lo, hi = (float(v[0]) for v in spec.input_set.bounding_box())
    grid = spec.output.values(net.forward(np.linspace(lo, hi, 20001)[:, None]))
    scale = np.abs(net.forward(np.array([lo]))).max()
    assert lowest[0] <= grid.min() + 1e-12 * scale


# seeds 2, 12, 13, 18: YES with margin_lower up to +inf from HiGHS's MIP before the guard
@pytest.mark.parametrize("seed", [2, 12, 13, 18, 0, 1, 3, 5])
@pytest.mark.parametrize("method", ["milp", "lp", "crown"])
def test_no_yes_above_the_exact_minimum(seed, method):
    _assert_sound(seed, method)


def test_the_milp_still_decides_moderately_scaled_nets():
    """Weights ~10^0.75..10^1.5: rounding noise far below HiGHS's tolerance, so the MILP runs
    and answers YES or NO, agreeing with the exact minimum."""
    decided = 0
    for seed in range(12):
        result = _assert_sound(seed, "milp", max_exponent=1.5)
        net, spec = make_net(seed, max_exponent=1.5)
        lowest, _ = exact_minimum(net, spec)
        if result["status"] != "MAYBE":
            decided += 1
            assert (result["status"] == "YES") == bool(lowest[0] > 0)
    assert decided >= 10


def test_a_skipped_milp_says_why():
    net, spec = make_net(2)
    cert = certify_specs(net, [spec], "milp")[0]
    assert cert.status is not Status.YES
    if cert.status is Status.MAYBE:
        assert "float64 rounding errors" in cert.reason and "\n" not in cert.reason
    assert cert.details["rounding_noise"] > 1e-8


def test_a_solver_bound_above_a_replayed_point_is_dropped(monkeypatch):
    """If HiGHS claims a row minimum above a point's float64 value, every solver bound goes and
    the answer is MAYBE, naming the inconsistency (the solver is made to lie here)."""
    rng = np.random.default_rng(3)  # a net whose one row the MILP proves (the LP screen cannot)
    first = Dense(rng.normal(size=(6, 2)), rng.normal(size=6) * 0.1, (2,), (6,))
    last = Dense(rng.normal(size=(2, 6)), np.array([0.05, 0.0]), (6,), (2,))
    net = Network([first, ReLU((6,)), last], (2,))
    spec = robustness_spec(2, 2, [0.2, 0.3], 0, 0.5)
    honest = certify_specs(net, [spec], "milp", attack=False)[0]
    assert honest.status is Status.YES and honest.details["milp_rows"]

    real_solve = milp.MilpRows.solve

    def lying_solve(self, *args, **kwargs):
        outcome = real_solve(self, *args, **kwargs)
        outcome.lower = 1e9
        return outcome

    monkeypatch.setattr(milp.MilpRows, "solve", lying_solve)
    cert = certify_specs(net, [spec], "milp", attack=False)[0]
    assert cert.status is Status.MAYBE and "not trusted" in cert.reason
    assert cert.margin_lower[1] < honest.margin_upper[1]
    assert "milp_inconsistent" in cert.details


@pytest.mark.slow
@pytest.mark.parametrize("method", ["milp", "lp", "crown"])
def test_no_yes_above_the_exact_minimum_sweep(method):
    for seed in range(200):
        _assert_sound(seed, method)
