"""VNN-LIB readers: 1.0 (the competition's files, exact semantics, errors with line and column) and
2.0 through the `vnnlib` package, checked against the 1.0 reading of the same properties."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from verify import Status, certify_specs, load_onnx
from verify.vnnlib import (VnnlibError, format_counterexample, load_vnnlib, parse_vnnlib,
                           vnnlib2_available, vnnlib_version)

DATA = Path(__file__).resolve().parent / "data"

HEADER = "".join(f"(declare-const X_{i} Real)\n" for i in range(2)) + \
    "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


STRICT_NET_BOX = "(assert (>= X_0 0)) (assert (<= X_0 1)) (assert (>= X_1 0)) (assert (<= X_1 1))\n"


def _copy_net() -> "Network":
    """Y_0 = X_0, Y_1 = X_1, Y_2 = 0 (an affine net: every method is exact on it)."""
    from verify import Dense, Network

    weight = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    return Network([Dense(weight, np.zeros(3), (2,), (3,))], (2,))


def test_strict_inequalities_keep_their_strictness():
    query = parse_vnnlib(HEADER + """
    (assert (> X_0 0)) (assert (<= X_0 1)) (assert (>= X_1 0)) (assert (< X_1 2))
    (assert (or (< Y_0 Y_1) (<= Y_2 1)))""")
    (case,) = query.cases
    np.testing.assert_array_equal(case.open_lower, [True, False])
    np.testing.assert_array_equal(case.open_upper, [False, True])
    strict, plain = case.disjuncts
    assert list(strict.strict) == [True] and plain.strict is None
    y_equal = np.array([0.5, 0.5, 2.0])  # Y_0 = Y_1 exactly: not Y_0 < Y_1; Y_2 > 1
    assert not query.violated_by(np.array([0.5, 1.0]), y_equal)
    assert query.violated_by(np.array([0.5, 1.0]), np.array([0.5, np.nextafter(0.5, 1), 2.0]))
    assert not query.violated_by(np.array([0.0, 1.0]), np.array([0, 1, 0.0]))  # X_0 > 0 fails
    assert query.violated_by(np.array([1e-300, 1.0]), np.array([0, 1, 0.0]))
    assert not query.violated_by(np.array([0.5, 2.0]), np.array([0, 1, 0.0]))  # X_1 < 2 fails


@pytest.mark.parametrize("body, n_cases", [
    ("(assert (> Y_0 Y_0))", 0), ("(assert (< 1 1))", 0), ("(assert (>= Y_0 Y_0))", 1),
    ("(assert (and (> X_0 0.5) (< X_0 0.5)))", 0), ("(assert (and (>= X_0 0.5) (< X_0 0.5)))", 0),
    ("(assert (and (>= X_0 0.5) (<= X_0 0.5)))", 1),
])
def test_strict_constant_and_empty_atoms(body, n_cases):
    query = parse_vnnlib(HEADER + STRICT_NET_BOX + body)
    assert len(query.cases) == n_cases


@pytest.mark.parametrize("method", ["auto", "crown", "milp", "bab"])
def test_a_strict_violation_that_only_the_closure_meets_is_never_sat(method):
    """Y_0 < Y_2 = 0 with X_0 in [0, 1]: the closed region has X_0 = 0, the open one is empty.
    No method may answer sat; (> Y_0 Y_0) is unsat for every method; the non-strict version is
    sat with a point where Y_0 = 0."""
    from verify.vnncomp import solve

    net = _copy_net()
    strict = solve(net, parse_vnnlib(HEADER + STRICT_NET_BOX + "(assert (< Y_0 Y_2))"),
                   method, 1)
    assert strict.result != "sat"
    empty = solve(net, parse_vnnlib(HEADER + STRICT_NET_BOX + "(assert (> Y_0 Y_0))"),
                  method, 1)
    assert empty.result == "unsat"
    closed = solve(net, parse_vnnlib(HEADER + STRICT_NET_BOX + "(assert (<= Y_0 Y_2))"),
                   method, 1)
    assert closed.result in ("sat", "unknown", "timeout")
    if closed.result == "sat":
        assert closed.counterexample[1][0] <= 0


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
    ("(assert (<= Y_0 nan))", r"t\.vnnlib:6:17: the constant 'nan' is not a finite number"),
    ("(assert (<= Y_0 -inf))", r"t\.vnnlib:6:17: the constant '-inf' is not a finite number"),
    ("(assert (<= Y_0 Infinity))", r"6:17: the constant 'Infinity' is not a finite number"),
    ("(assert (<= Y_0 1e400))", r"t\.vnnlib:6:17: the constant 1e400 overflows float64"),
    ("(assert (<= Y_0 1_0))", "'1_0' is neither a declared name nor a number"),
    ("(assert (<= (* 1e200 Y_0) (* 1e200 1e200)))", r"6:9: .* overflows float64"),
    ("(assert (<= (+ Y_0 1.5e308) (- 1.5e308)))", r"6:9: .* overflows float64"),
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


# -- VNN-LIB 2.0 (through the `vnnlib` package), checked against our own 1.0 reading -----------

def to_vnnlib2(text: str, in_shape, out_shape, network: str = "net",
               element_type: str = "real") -> str:
    """A VNN-LIB 1.0 text rewritten, token by token, as VNN-LIB 2.0: X_i -> X[row-major index
    of i in in_shape], Y_j likewise, '=' -> '==', numbers as the shortest positional decimal
    that reads back as the same double (2.0 has no exponent notation)."""
    body = re.sub(r"\(\s*declare-const\s+\S+\s+Real\s*\)", "", re.sub(r";[^\n]*", "", text))

    def token(match: re.Match) -> str:
        tok = match.group(0)
        var = re.fullmatch(r"([XY])_(\d+)", tok)
        if var:
            shape = in_shape if var.group(1) == "X" else out_shape
            index = np.unravel_index(int(var.group(2)), shape)
            return var.group(1) + "[" + ",".join(str(int(k)) for k in index) + "]"
        if tok == "=":
            return "=="
        if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", tok):
            return np.format_float_positional(float(tok), unique=True, trim="0")
        return tok

    body = re.sub(r"[^\s()]+", token, body)
    dims = lambda shape: "[" + ",".join(map(str, shape)) + "]"  # noqa: E731
    return (f"(vnnlib-version <2.0>)\n(declare-network {network}\n"
            f"  (declare-input X {element_type} {dims(in_shape)})\n"
            f"  (declare-output Y {element_type} {dims(out_shape)})\n)\n"
            + "\n".join(line for line in body.splitlines() if line.strip()) + "\n")


def assert_same_query(a, b):
    """Same sizes, and the same cases: boxes and disjuncts equal to the last bit."""
    assert (a.n_inputs, a.n_outputs) == (b.n_inputs, b.n_outputs)
    assert len(a.cases) == len(b.cases)
    for ca, cb in zip(a.cases, b.cases):
        np.testing.assert_array_equal(ca.box.lower, cb.box.lower)
        np.testing.assert_array_equal(ca.box.upper, cb.box.upper)
        assert len(ca.disjuncts) == len(cb.disjuncts)
        for da, db in zip(ca.disjuncts, cb.disjuncts):
            np.testing.assert_array_equal(da.A, db.A)
            np.testing.assert_array_equal(da.b, db.b)


@pytest.fixture
def vnnlib2():
    return pytest.importorskip("vnnlib")


def test_vnnlib2_reads_the_shared_properties_like_vnnlib1(shared_benchmarks, vnnlib2):
    """Every ACAS Xu property and two mnist_fc ones, rewritten in 2.0 with the models' tensor
    shapes, read into exactly the same cases as the 1.0 originals."""
    paths = sorted((shared_benchmarks / "acasxu/vnnlib").glob("*.vnnlib"))
    assert len(paths) >= 9
    for path in paths:
        text = to_vnnlib2(path.read_text(), (1, 1, 1, 5), (1, 5), "acasxu")
        q2 = parse_vnnlib(text, "v2")
        assert (q2.version, q2.network) == ("2.0", "acasxu")
        assert_same_query(load_vnnlib(path), q2)
    for name in ("prop_0_0.03", "prop_7_0.05"):
        path = shared_benchmarks / f"mnist_fc/vnnlib/{name}.vnnlib"
        q2 = parse_vnnlib(to_vnnlib2(path.read_text(), (1, 784), (1, 10)), "v2")
        assert_same_query(load_vnnlib(path), q2)
        assert q2.to_specifications()[0].label == load_vnnlib(path).to_specifications()[0].label


def test_vnnlib2_fixtures_match_the_benchmark_originals(shared_benchmarks, vnnlib2):
    """tests/data/acasxu_prop_*_v2.vnnlib (used by the solver CLI tests) are the originals."""
    for prop in ("prop_2", "prop_3"):
        assert_same_query(load_vnnlib(shared_benchmarks / f"acasxu/vnnlib/{prop}.vnnlib"),
                          load_vnnlib(DATA / f"acasxu_{prop}_v2.vnnlib"))


HEADER5 = "".join(f"(declare-const X_{i} Real)\n" for i in range(6)) + \
    "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))
BOX1 = "(>= X_0 0) (<= X_0 1) (>= X_1 -1) (<= X_1 0.5) (>= X_2 0) (<= X_2 0.25)"
BOX2 = "(>= X_3 0.5) (<= X_3 1) (>= X_4 -2) (<= X_4 2) (>= X_5 0) (<= X_5 0)"
BOX1_2 = ("(>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] -1.0) (<= X[0,1] 0.5) (>= X[0,2] 0.0) "
          "(<= X[0,2] 0.25)")
BOX2_2 = ("(>= X[1,0] 0.5) (<= X[1,0] 1.0) (>= X[1,1] -2.0) (<= X[1,1] 2.0) (>= X[1,2] 0.0) "
          "(<= X[1,2] 0.0)")
HEADER2 = ("(vnnlib-version <2.0>)\n(declare-network f\n  (declare-input X real [2,3])\n"
           "  (declare-output Y real [3])\n)\n")

# The same property written by hand in both versions (X is [2,3] in 2.0: X[1,0] is X_3).
TRICKY = {
    # two (assert (and ...)) lines: one conjunction, not two alternatives
    "two-and-asserts": (f"(assert (and {BOX1})) (assert (and {BOX2})) (assert (<= Y_0 Y_1))",
                        f"(assert (and {BOX1_2})) (assert (and {BOX2_2})) "
                        "(assert (<= Y[0] Y[1]))"),
    # an `and` box and an `or` over the outputs (one case, two disjuncts)
    "and-box-or-output": (f"(assert (and {BOX1} {BOX2}))"
                          "(assert (or (and (<= Y_0 Y_1) (<= Y_0 Y_2)) (>= Y_2 1.5)))",
                          f"(assert (and {BOX1_2} {BOX2_2}))"
                          "(assert (or (and (<= Y[0] Y[1]) (<= Y[0] Y[2])) (>= Y[2] 1.5)))"),
    # a disjunction of input boxes, each with its own output constraint
    "or-of-boxes": (f"(assert (or (and {BOX1} {BOX2} (<= Y_0 0)) "
                    f"(and {BOX1.replace('(<= X_0 1)', '(<= X_0 2)')} {BOX2} (>= Y_1 1))))",
                    f"(assert (or (and {BOX1_2} {BOX2_2} (<= Y[0] 0.0)) "
                    f"(and {BOX1_2.replace('(<= X[0,0] 1.0)', '(<= X[0,0] 2.0)')} {BOX2_2} "
                    "(>= Y[1] 1.0))))"),
    # arithmetic: products by constants, n-ary minus, negation, ==, strict comparisons
    "arithmetic": (f"(assert (and {BOX1} {BOX2}))"
                   "(assert (< (+ (* 2 Y_0) (- Y_1)) (- Y_2 0.5 0.25)))"
                   "(assert (or (> (* -1.5 Y_2 2) 3) (= Y_0 0.125)))",
                   f"(assert (and {BOX1_2} {BOX2_2}))"
                   "(assert (< (+ (* 2.0 Y[0]) (- Y[1])) (- Y[2] 0.5 0.25)))"
                   "(assert (or (> (* -1.5 Y[2] 2.0) 3.0) (== Y[0] 0.125)))"),
}


@pytest.mark.parametrize("name", list(TRICKY))
def test_vnnlib2_tricky_shapes_match_vnnlib1(name, vnnlib2):
    v1, v2 = TRICKY[name]
    q1, q2 = parse_vnnlib(HEADER5 + v1), parse_vnnlib(HEADER2 + v2, "t2")
    assert_same_query(q1, q2)
    # and the token converter writes the same 2.0 query as the hand-written one
    assert_same_query(q1, parse_vnnlib(to_vnnlib2(HEADER5 + v1, (2, 3), (3,)), "conv"))
    # semantics on random points agree with a direct evaluation of the text's intent
    rng = np.random.default_rng(0)
    for _ in range(200):
        x, y = rng.uniform(-1, 2, size=6), rng.normal(size=3)
        assert q1.violated_by(x, y) == q2.violated_by(x, y)


def test_vnnlib2_structure_and_assignment_format(vnnlib2):
    q = parse_vnnlib(HEADER2 + TRICKY["two-and-asserts"][1], "t2")
    (case,) = q.cases  # one conjunction
    np.testing.assert_array_equal(case.box.lower, [0, -1, 0, 0.5, -2, 0])
    np.testing.assert_array_equal(case.box.upper, [1, 0.5, 0.25, 1, 2, 0])
    np.testing.assert_array_equal(case.disjuncts[0].A, [[1, -1, 0]])
    assert [(v.name, v.element_type, v.shape, v.kind) for v in q.variables] == \
        [("X", "real", (2, 3), "input"), ("Y", "real", (3,), "output")]
    text = q.format_assignment(np.arange(6) / 4, np.array([1 / 3, -2.0, 1e-300]))
    lines = text.splitlines()
    assert lines[0] == "X real [2,3]" and lines[7] == "Y real [3]" and text.endswith("\n")
    assert [float(v) for v in lines[1:7]] == list(np.arange(6) / 4)
    assert [float(v) for v in lines[8:]] == [1 / 3, -2.0, 1e-300]  # full precision
    p1 = parse_vnnlib(HEADER + "(assert (<= X_0 1)) (assert (>= X_0 0)) (assert (<= X_1 1)) "
                      "(assert (>= X_1 0)) (assert (<= Y_0 Y_1))")
    assert p1.format_assignment([0.5, 1], [1, 2, 3]).splitlines()[:4] == \
        ["X_0 Real []", "0.5", "X_1 Real []", "1.0"]


@pytest.mark.parametrize("body, pattern", [
    ("(assert (<= X[0,0] 1.0)", r"t2\.vnnlib:\d+:\d+: parse error: syntax error"),
    ("(assert (<= X[0,0] 1))", r"t2\.vnnlib:6: Type mismatch .*'1'"),
    ("(assert (<= X[2,0] 1.0))", r"t2\.vnnlib:6: Index out of bounds"),
    ("(assert (<= Z[0] 1.0))", r"t2\.vnnlib:6: Undeclared variable"),
])
def test_vnnlib2_errors_are_one_line_with_position(body, pattern, vnnlib2):
    with pytest.raises(VnnlibError, match=pattern) as err:
        parse_vnnlib(HEADER2 + body, "t2.vnnlib")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, pattern", [
    ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X int32 [2]) (declare-output Y "
     "real [2]))\n(assert (<= X[0] 1))", "input X has element type I32"),
    ("(vnnlib-version <2.1>)\n(declare-network f (declare-input X real [2]) (declare-output Y "
     "real [2]))\n(assert (<= X[0] 1.0))", "VNN-LIB version 2.1 is not supported"),
    ("; no version line\n(declare-network f (declare-input X real [2]) (declare-output Y real "
     "[2]))\n(assert (<= X[0] 1.0))", r"t2\.vnnlib:2:\d+: parse error"),
])
def test_vnnlib2_unsupported_queries(text, pattern, vnnlib2):
    with pytest.raises(VnnlibError, match=pattern) as err:
        parse_vnnlib(text, "t2.vnnlib")
    assert "\n" not in str(err.value) and str(err.value).startswith("t2.vnnlib")


def test_vnnlib2_strictness_and_overflowing_literals(vnnlib2):
    box = "(assert (and " + " ".join(f"(>= X[{i},{j}] 0.0) (<= X[{i},{j}] 1.0)"
                                     for i in range(2) for j in range(3)) + "))\n"
    query = parse_vnnlib(HEADER2 + box + "(assert (< Y[0] Y[1]))", "t2.vnnlib")
    (case,) = query.cases
    (d,) = case.disjuncts
    assert list(d.strict) == [True]
    x = np.zeros(6)
    assert not query.violated_by(x, np.array([1.0, 1.0, 0]))
    assert query.violated_by(x, np.array([0.5, 1.0, 0]))
    assert parse_vnnlib(HEADER2 + box + "(assert (> Y[0] Y[0]))", "t2.vnnlib").cases == []
    huge = "1" + "0" * 400 + ".0"
    with pytest.raises(VnnlibError, match=r"t2\.vnnlib: a numeric literal is beyond float64"):
        parse_vnnlib(HEADER2 + box + f"(assert (<= Y[0] {huge}))", "t2.vnnlib")


def test_vnnlib2_float_types_and_shape_check(vnnlib2):
    text = ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X float32 [2,3]) "
            "(declare-output Y float32 [1,3]))\n"
            f"(assert (and {BOX1_2} {BOX2_2} (<= Y[0,0] 0.5)))")
    q = parse_vnnlib(text, "t2.vnnlib")
    assert [v.element_type for v in q.variables] == ["float32", "float32"]
    q.check_sizes(6, 3, (1, 2, 3))  # dimensions of 1 aside, the same shape
    q.check_sizes(6, 3)
    with pytest.raises(VnnlibError, match=r"X is declared \[2,3\], the network's input has "
                                          r"shape \[3,2\]"):
        q.check_sizes(6, 3, (3, 2))
    with pytest.raises(VnnlibError, match="declares 6 inputs and 3 outputs, the network has 5"):
        q.check_sizes(5, 3, (5,))


def test_vnnlib2_without_the_package(tmp_path, monkeypatch):
    path = tmp_path / "q.vnnlib"
    path.write_text(HEADER2 + TRICKY["two-and-asserts"][1])
    monkeypatch.setitem(sys.modules, "vnnlib", None)  # import vnnlib -> ImportError
    with pytest.raises(VnnlibError, match=r"q\.vnnlib: reading VNN-LIB 2\.0 needs the 'vnnlib' "
                                          r"package: pip install 'vnnlib>=1\.0'"):
        load_vnnlib(path)
    assert not vnnlib2_available()
    query = parse_vnnlib(HEADER + "(assert (<= X_0 1)) (assert (>= X_0 0)) (assert (<= X_1 1)) "
                         "(assert (>= X_1 0)) (assert (<= Y_0 Y_1))")
    assert query.version == "1.0" and len(query.cases) == 1


def test_version_dispatch():
    assert vnnlib_version("; c\n(vnnlib-version <2.0>)\n") == "2.0"
    assert vnnlib_version("  (declare-network f)") == "2.0"
    assert vnnlib_version(HEADER + "(vnnlib-version <2.0>)") == "1.0"
    assert vnnlib_version("(vnnlib-version <3.1>)") == "3.1"


def _one_assert(text: str) -> str:
    """The same 2.0 query with all its assertions joined into one (assert (and ...))."""
    head, _, rest = text.partition("(assert")
    bodies = re.findall(r"\(assert (.*?)\)\s*(?=\(assert|\Z)", "(assert" + rest, re.S)
    return head + "(assert (and " + " ".join(bodies) + "))\n"


def _canonical_cases(cases):
    return sorted((tuple(lower), tuple(upper), tuple(sorted(
        (tuple(map(tuple, A)), tuple(b)) for A, b in polytopes)))
        for lower, upper, polytopes in cases)


def test_vnnlib2_agrees_with_the_package_compat_on_single_assert_queries(shared_benchmarks,
                                                                         vnnlib2):
    """A third reading: the package's own `compat.transform`, which is right when the whole
    query is one assertion (it is wrong with several: see the module docstring), gives the same
    boxes and polytopes as our AST walk."""
    import vnnlib.compat

    texts = [to_vnnlib2(p.read_text(), (1, 1, 1, 5), (1, 5))
             for p in sorted((shared_benchmarks / "acasxu/vnnlib").glob("*.vnnlib"))]
    texts += [HEADER2 + v2 for _, v2 in TRICKY.values() if "==" not in v2]
    for text in texts:
        text = _one_assert(text)
        ours = parse_vnnlib(text, "one")
        theirs = vnnlib.compat.transform(vnnlib2.parse_query_string(text))
        assert _canonical_cases(
            ([lo for lo, _ in c.input_box], [hi for _, hi in c.input_box],
             [(p.coeff_matrix, p.rhs) for p in c.output_constraints]) for c in theirs) == \
            _canonical_cases((c.box.lower, c.box.upper, [(d.A, d.b) for d in c.disjuncts])
                             for c in ours.cases)


def test_vnnlib2_unbounded_inputs_get_a_search_window_and_no_unsat(tmp_path, vnnlib2, capsys):
    """VNN-LIB 2.0 may leave an input unbounded (1.0 may not: refused above): it is searched in
    vnnlib.INPUT_WINDOW; a sat found there is a real one, an unsat there is only 'unknown'."""
    import io

    import onnx
    from onnx import helper

    from onnx_reference import make_model, tensor
    from verify.solver_cli import main as solver
    from verify.vnnlib import INPUT_WINDOW

    head = ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X real [2]) "
            "(declare-output Y real [1]))\n(assert (<= X[0] 1.0))\n")
    q = parse_vnnlib(head + "(assert (>= Y[0] 0.5))", "t2.vnnlib")
    (case,) = q.cases
    assert q.windowed_inputs == ["X[0]", "X[1]"]
    assert list(case.box.lower) == [1.0 - 2 * INPUT_WINDOW, -INPUT_WINDOW]
    assert list(case.box.upper) == [1.0, INPUT_WINDOW]
    model = tmp_path / "sum.onnx"  # Y = X0 + X1
    onnx.save(make_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                         [tensor("x", [2])], [tensor("y", [1])], [("w", np.ones((2, 1)))]),
              str(model))
    for bound, expected in (("0.5", "sat"), ("50.0", "unknown")):  # 50: sat far outside
        query = tmp_path / "q.vnnlib"
        query.write_text(head + f"(assert (>= Y[0] {bound}))\n")
        out = io.StringIO()
        code = solver(["verify", str(query), "--network", f"f={model}", "--timeout", "30"],
                      out=out)
        err = capsys.readouterr().err
        assert code == 0 and out.getvalue().splitlines()[0] == expected, err
        if expected == "sat":
            x = [float(v) for v in out.getvalue().splitlines()[2:4]]
            assert x[0] <= 1.0 and x[0] + x[1] >= 0.5
        else:
            assert "search window" in err
