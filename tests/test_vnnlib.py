"""VNN-LIB 1.0 reader: the competition's files, exact semantics, errors with line and column."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from verify import Status, certify_specs, load_onnx
from verify.vnnlib import VnnlibError, format_counterexample, load_vnnlib, parse_vnnlib

HEADER = "".join(f"(declare-const X_{i} Real)\n" for i in range(2)) + \
    "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))


def test_every_shared_property_parses(shared_benchmarks):
    paths = sorted(shared_benchmarks.glob("*/vnnlib/*.vnnlib"))
    assert len(paths) == 39
    for path in paths:
        query = load_vnnlib(path)
        assert query.cases and all(c.disjuncts for c in query.cases)
        assert (query.n_inputs, query.n_outputs) in ((5, 5), (784, 10))


def test_acasxu_property_structure(shared_benchmarks):
    folder = shared_benchmarks / "acasxu/vnnlib"
    p1 = load_vnnlib(folder / "prop_1.vnnlib")
    (case,) = p1.cases
    np.testing.assert_array_equal(case.box.lower, [0.6, -0.5, -0.5, 0.45, -0.5])
    np.testing.assert_array_equal(case.box.upper, [0.679857769, 0.5, 0.5, 0.5, -0.45])
    (d,) = case.disjuncts  # violation: Y_0 >= 3.99..., i.e. -Y_0 <= -3.99...
    np.testing.assert_array_equal(d.A, [[-1, 0, 0, 0, 0]])
    assert d.b[0] == -3.991125645861615
    p2 = load_vnnlib(folder / "prop_2.vnnlib")  # violation: Y_0 is the largest (4 rows at once)
    assert len(p2.cases[0].disjuncts) == 1 and p2.cases[0].disjuncts[0].A.shape == (4, 5)
    assert not p2.single_row
    p6 = load_vnnlib(folder / "prop_6.vnnlib")  # two input boxes, four one-row disjuncts each
    assert len(p6.cases) == 2 and all(len(c.disjuncts) == 4 for c in p6.cases)
    assert p6.single_row and len(p6.to_specifications()) == 2


def test_violation_semantics_match_direct_evaluation(shared_benchmarks):
    p7 = load_vnnlib(shared_benchmarks / "acasxu/vnnlib/prop_7.vnnlib")
    rng = np.random.default_rng(0)
    box = p7.cases[0].box
    for _ in range(500):
        x = box.sample(1, rng)[0]
        y = rng.normal(size=5)
        # prop_7 violation: Y_3 or Y_4 is <= each of Y_0, Y_1, Y_2.
        direct = (y[3] <= y[:3].min()) or (y[4] <= y[:3].min())
        assert p7.violated_by(x, y) == direct
    assert not p7.violated_by(box.upper + 1, np.array([0, 0, 0, -1, 0]))  # x outside the box


def test_mnist_labels_and_boxes(shared_benchmarks):
    for path in sorted((shared_benchmarks / "mnist_fc/vnnlib").glob("*.vnnlib")):
        label = int(re.search(r"label: (\d+)", path.read_text()).group(1))
        eps = float(path.stem.split("_")[-1])
        (spec,) = load_vnnlib(path).to_specifications()
        assert spec.label == label
        assert spec.output.row_class == [j for j in range(10) if j != label]
        box = spec.input_set
        assert np.all(box.lower >= 0) and np.all(box.upper <= 1)
        assert np.all(box.upper - box.lower <= 2 * eps + 1e-6)  # float32 rounding in the file


def test_ibp_never_contradicts_known_answers(shared_benchmarks):
    """Cross-method oracle: a sat instance may never get YES, an unsat one never NO."""
    folder = shared_benchmarks / "mnist_fc"
    net = load_onnx(folder / "onnx/mnist-net_256x2.onnx")
    with open(folder / "ground_truth.csv") as fh:
        truth = {row["property"]: row["ground_truth"] for row in csv.DictReader(fh)}
    specs, answers = [], []
    for prop, answer in truth.items():
        query = load_vnnlib(folder / "vnnlib" / f"{prop}.vnnlib")
        query.check_sizes(net.input_size, net.output_size)
        specs += query.to_specifications()
        answers.append(answer)
    certs = certify_specs(net, specs, "ibp")
    for cert, answer in zip(certs, answers):
        assert not (answer == "sat" and cert.status is Status.YES)
        assert not (answer == "unsat" and cert.status is Status.NO)


def test_linear_terms_and_strictness():
    text = HEADER + """
    (assert (>= X_0 -1)) (assert (<= X_0 1.5e0)) (assert (> X_1 0)) (assert (< X_1 2))
    (assert (or (and (<= (+ Y_0 (* 2 Y_1)) (- Y_2 0.5)))
                (and (= Y_0 3))))
    """
    query = parse_vnnlib(text)
    (case,) = query.cases
    np.testing.assert_array_equal(case.box.lower, [-1, 0])
    np.testing.assert_array_equal(case.box.upper, [1.5, 2])
    first, second = case.disjuncts
    np.testing.assert_array_equal(first.A, [[1, 2, -1]])  # Y0 + 2 Y1 - Y2 <= -0.5
    assert first.b[0] == -0.5
    np.testing.assert_array_equal(second.A, [[1, 0, 0], [-1, 0, 0]])  # Y0 <= 3 and Y0 >= 3
    np.testing.assert_array_equal(second.b, [3, -3])


def test_counterexample_format_round_trips():
    x, y = np.array([0.1, -2.5e-7]), np.array([1 / 3, 2.0, -1e300])
    text = format_counterexample(x, y)
    assert text.startswith("((X_0 ") and text.endswith(")")
    values = dict(re.findall(r"\(([XY]_\d+) (\S+)\)", text))
    assert float(values["X_1"]) == x[1] and float(values["Y_0"]) == y[0]


@pytest.mark.parametrize("body, pattern", [
    ("(assert (<= X_0 1)", r"t\.vnnlib:\d+:1: '\(' is never closed"),
    ("(assert (<= X_0 1)))", "unbalanced"),
    ("(assert (<= X_0 Y_0))", r"t\.vnnlib:6:9: a constraint mixes inputs and outputs"),
    ("(assert (<= (* X_0 X_1) 1))", "product of two variables"),
    ("(assert (<= X_0 Z_3))", "'Z_3' is neither a declared name nor a number"),
    ("(assert (xor (<= X_0 1)))", "'xor' is not supported"),
    ("(assert (<= (+ X_0 X_1) 1))", "only bounds on single inputs"),
    ("(assert (<= X_0 1)) (assert (>= X_0 0))", "input X_1 is not bounded on both sides"),
    ("(vnnlib-version <2.0>)", "VNN-LIB 2.0"),
    ("(declare-const X_0 Real)", "'X_0' is declared twice"),
    ("(declare-const W_0 Real)", "name 'W_0' is not X_i or Y_j"),
    ("(define-fun f () Real 1)", "'define-fun' is not supported"),
])
def test_errors_name_line_and_column(body, pattern):
    with pytest.raises(VnnlibError, match=pattern) as err:
        parse_vnnlib(HEADER + body, "t.vnnlib")
    assert "\n" not in str(err.value)


def test_missing_file_and_size_check(tmp_path):
    with pytest.raises(VnnlibError, match="no such file"):
        load_vnnlib(tmp_path / "absent.vnnlib")
    query = parse_vnnlib(HEADER + "(assert (<= X_0 1)) (assert (>= X_0 0)) "
                         "(assert (<= X_1 1)) (assert (>= X_1 0)) (assert (<= Y_0 Y_1))")
    with pytest.raises(VnnlibError, match="declares 2 inputs and 3 outputs, the network has 4"):
        query.check_sizes(4, 3)
