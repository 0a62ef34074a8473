"""Specifications (validation, sets) and Certificates (JSON round trip, table)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from verify import Box, Certificate, InputError, LpBall, OutputProperty, Status, robustness_spec
from verify.spec import lp_norm, parse_norm


@pytest.mark.parametrize("kwargs, pattern", [
    ({"x": np.zeros(3)}, "input has 3 values, the network expects 4"),
    ({"x": [0, np.nan, 0, 0]}, "NaN or infinity \\(first at index 1\\)"),
    ({"x": [0, 0, np.inf, 0]}, "NaN or infinity \\(first at index 2\\)"),
    ({"x": ["a", 0, 0, 0]}, "input must be numbers"),
    ({"eps": -0.1}, "eps must be a finite number >= 0"),
    ({"eps": float("nan")}, "eps must be a finite number >= 0"),
    ({"eps": "big"}, "eps must be a number"),
    ({"label": 3}, "label 3 is outside the classes 0..2"),
    ({"label": -1}, "label -1 is outside the classes 0..2"),
    ({"label": 1.5}, "label must be an integer"),
    ({"label": True}, "label must be an integer"),
    ({"norm": "3"}, "unknown norm '3'"),
    ({"domain": (1, 0)}, "domain must have low <= high"),
    ({"domain": (0, 1, 2)}, "domain must be a pair"),
    ({"x": [0.5, 2.0, 0.5, 0.5], "domain": (0, 1)}, "input value 2 at index 1 lies outside"),
])
def test_robustness_spec_rejects_bad_input(kwargs, pattern):
    args = {"x": np.full(4, 0.5), "label": 0, "eps": 0.1, "norm": "inf", "domain": None, **kwargs}
    with pytest.raises(InputError, match=pattern) as err:
        robustness_spec(4, 3, **args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("given, canonical", [
    ("inf", "inf"), ("Linf", "inf"), (np.inf, "inf"), ("l_inf", "inf"), (2, "2"), ("l2", "2"),
    (2.0, "2"), ("1", "1"), (1, "1"), ("L1", "1")])
def test_norm_aliases(given, canonical):
    assert parse_norm(given) == canonical


def test_robustness_rows():
    prop = OutputProperty.robustness(2, 4)
    z = np.array([1.0, 5.0, 3.0, -1.0])
    np.testing.assert_array_equal(prop.values(z), [2.0, -2.0, 4.0])  # z2 - z0, z2 - z1, z2 - z3
    assert prop.row_class == [0, 1, 3]


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_ball_sample_project_contains(norm):
    rng = np.random.default_rng(0)
    center = rng.uniform(0, 1, size=7)
    ball = LpBall(center, 0.3, norm, 0.0, 1.0)
    points = ball.sample(2000, rng)
    assert all(ball.contains(p) for p in points)
    distances = lp_norm(points - center, norm)
    assert distances.max() > 0.29  # extreme points are reached
    far = center + rng.normal(size=(200, 7)) * 3
    for p in far:
        q = ball.project(p)
        assert ball.contains(q)
        assert lp_norm(q - center, norm) <= 0.3
    assert not ball.contains(center + 0.31 * np.eye(7)[0])
    # A point already inside is (up to the 1e-13 shrink) left where it is.
    np.testing.assert_allclose(ball.project(points[0]), points[0], atol=1e-12)


def test_box_set():
    box = Box([0, -1], [1, 1])
    assert box.contains([0.5, 0]) and not box.contains([1.5, 0])
    np.testing.assert_array_equal(box.project([2, -3]), [1, -1])
    np.testing.assert_array_equal(box.center, [0.5, 0])
    assert all(box.contains(p) for p in box.sample(100, np.random.default_rng(1)))


def _certificate(**overrides) -> Certificate:
    fields = dict(status=Status.NO, method="ibp", label=1, norm="inf", eps=0.05,
                  margin_lower=[-float("inf"), None, -0.5], margin_upper=[2.0, None, -0.25],
                  counterexample=[0.1, 0.2], counterexample_logits=[0.0, 1.0, 1.25],
                  radius=None, confidence=1.0, reason="counterexample found", time_s=0.01,
                  domain=[0.0, 1.0], model="m@abc", cost={"bound_passes": 1},
                  details={"seed": 3})
    fields.update(overrides)
    return Certificate(**fields)


def test_certificate_json_round_trip():
    cert = _certificate()
    text = cert.to_json()
    data = json.loads(text)  # valid JSON: no bare Infinity
    for key in ("status", "method", "label", "norm", "eps", "margin_lower", "margin_upper",
                "counterexample", "radius", "confidence", "reason", "time_s"):
        assert key in data
    assert data["status"] == "NO" and data["margin_lower"][0] == "-inf"
    assert data["margin_lower"][1] is None
    back = Certificate.from_json(text)
    assert back == cert and back.status is Status.NO and back.norm == "inf"
    assert Certificate.from_dict(cert.to_dict()) == cert


def test_certificate_table_mentions_every_class():
    text = str(_certificate(status=Status.MAYBE, counterexample=None, reason="loose"))
    assert text.startswith("MAYBE") and "reason: loose" in text
    assert "(label)" in text and "-0.5" in text and "-0.25" in text
    assert "l_inf ball of radius 0.05" in text


def test_no_counterexample_outside_the_real_ball():
    """The margin (1 + u) - x is > 0 on the whole ball [1 - 0.75u, 1 + 0.75u]; the float point
    1 + u lies just outside it. No method may return it as a NO."""
    import verify
    from verify import Dense, Network

    u = 2.0 ** -52
    net = Network([Dense(np.array([[1.0], [0.0]]), np.array([0.0, 1.0 + u]), (1,), (2,))], (1,))
    for method in ("attack", "ibp", "crown", "lp", "milp", "bab"):
        options = {"timeout": 2.0} if method in ("milp", "bab") else {}
        cert = verify.certify(net, [1.0], 1, 0.75 * u, "inf", method, **options)
        assert cert.status is not Status.NO, method


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_projection_is_exactly_inside(norm):
    from fractions import Fraction

    rng = np.random.default_rng(3)
    center = rng.uniform(0.5, 1.0, size=200)
    for eps in (1e-12, 1e-9, 0.3):
        ball = LpBall(center, eps, norm)
        for _ in range(5):
            p = ball.project(center + rng.normal(size=200))
            diffs = [abs(Fraction(a) - Fraction(c)) for a, c in zip(p, center)]
            size = {"inf": max(diffs), "1": sum(diffs)}.get(norm)
            if norm == "2":
                assert sum(d * d for d in diffs) <= Fraction(eps) ** 2
            else:
                assert size <= Fraction(eps)


def test_a_ball_whose_center_lies_outside_its_box_is_refused():
    """The bounds' midpoint analysis and `project` assume the center lies in the box; a hand-built
    LpBall is held to it as robustness_spec's domain check holds an input."""
    with pytest.raises(InputError, match=r"input value 1.5 at index 1 lies outside the domain "
                                         r"\[0, 1\]"):
        LpBall(np.array([0.5, 1.5]), 0.1, "2", 0.0, 1.0)
