"""VNN-LIB 2.0 beyond one network with one input and one output: several inputs and outputs
(MIO), hidden nodes (H), several networks (MNET, MENET), linear constraints over inputs and
outputs (LIN), `!=`, and polynomial constraints (POLY), end to end through verify-solver on tiny
ONNX models built here. Sat answers are checked with onnxruntime on each network's own model;
unsat answers against a dense grid (the models are 1-D or 2-D and piecewise linear)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from verify.graph.compose import Member, compose, read_member
from verify.solver_cli import main
from verify.vnnlib import VnnlibError, parse_vnnlib

pytest.importorskip("vnnlib")
ort = pytest.importorskip("onnxruntime")


def _model(path: Path, nodes, inputs: dict, outputs: dict, consts: dict = ()) -> Path:
    """An opset-13 float32 model: inputs / outputs {name: shape}, consts {name: array}."""
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k)
             for k, v in dict(consts).items()]
    graph = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path.write_bytes(model.SerializeToString())
    return path


def _ort(path: Path, feeds: dict, outputs: list[str]) -> list[np.ndarray]:
    """onnxruntime on the model, the named tensors (hidden ones made outputs) as float64."""
    import onnx

    model = onnx.load(str(path))
    for name in outputs:
        if name not in [o.name for o in model.graph.output]:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                                    None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {k: np.asarray(v, dtype=np.float32).reshape(1) for k, v in feeds.items()}
    return [np.asarray(v, dtype=np.float64).reshape(-1) for v in session.run(outputs, feeds)]


def _solve(tmp_path: Path, text: str, networks: dict[str, Path], capsys, *extra: str):
    query = tmp_path / "q.vnnlib"
    query.write_text(text)
    argv = ["verify", str(query), "--timeout", "60", *extra]
    for name, path in networks.items():
        argv += ["--network", f"{name}={path}"]
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue(), capsys.readouterr().err


def _assignment(stdout: str) -> dict[str, float]:
    lines = stdout.splitlines()[1:]
    return {lines[k].split()[0]: float(lines[k + 1]) for k in range(0, len(lines), 2)}


@pytest.fixture
def sub(tmp_path):  # Y = X1 - X2, two inputs
    return _model(tmp_path / "sub.onnx", [helper.make_node("Sub", ["x1", "x2"], ["y"])],
                  {"x1": [1], "x2": [1]}, {"y": [1]})


@pytest.fixture
def two_out(tmp_path):  # Y1 = 2 X, Y2 = X + 10, two outputs
    return _model(tmp_path / "two_out.onnx", [helper.make_node("Mul", ["x", "two"], ["y1"]),
                                              helper.make_node("Add", ["x", "ten"], ["y2"])],
                  {"x": [1]}, {"y1": [1], "y2": [1]}, {"two": [2.0], "ten": [10.0]})


@pytest.fixture
def hidden(tmp_path):  # h = relu(2 x - 1) (hidden), y = h + 2
    return _model(tmp_path / "hidden.onnx", [
        helper.make_node("Mul", ["x", "two"], ["t"]),
        helper.make_node("Sub", ["t", "one"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["h"]),
        helper.make_node("Add", ["h", "two"], ["y"])],
        {"x": [1]}, {"y": [1]}, {"two": [2.0], "one": [1.0]})


@pytest.fixture
def relu(tmp_path):  # y = relu(x)
    return _model(tmp_path / "relu.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                  {"x": [1]}, {"y": [1]})


@pytest.fixture
def ident2(tmp_path):  # y = x + 0, two entries
    return _model(tmp_path / "ident2.onnx", [helper.make_node("Add", ["x", "zero"], ["y"])],
                  {"x": [2]}, {"y": [2]}, {"zero": [0.0, 0.0]})


def test_layout_of_networks_hidden_nodes_and_inputs_read_as_outputs():
    q = parse_vnnlib("""(vnnlib-version <2.0>)
(declare-network A (declare-input X real [2]) (declare-hidden H real [3] "h")
  (declare-output Y real [1]))
(declare-network B (equal-to A) (declare-input U real [2]) (declare-hidden G real [3] "h")
  (declare-output V real [1]))
(assert (and (>= X[0] 0.0) (<= X[0] 1.0) (>= X[1] 0.0) (<= X[1] 1.0)))
(assert (and (>= U[0] 0.0) (<= U[0] 1.0) (>= U[1] 0.0) (<= U[1] 1.0)))
(assert (!= V[0] (+ Y[0] X[1])))
""", "t.vnnlib")
    assert [(v.name, v.kind, v.offset, v.network) for v in q.variables] == [
        ("X", "input", 0, "A"), ("H", "hidden", 0, "A"), ("Y", "output", 3, "A"),
        ("U", "input", 2, "B"), ("G", "hidden", 4, "B"), ("V", "output", 7, "B")]
    assert [v.onnx_name for v in q.variables if v.kind == "hidden"] == ["h", "h"]
    assert [(n.name, n.equal_to) for n in q.networks] == [("A", None), ("B", "A")]
    # y = (H, Y, G, V) then x = (X, U): the row reads X[1] at column 8 + 1
    assert q.observes_inputs and (q.n_inputs, q.n_outputs) == (4, 12) and not q.simple
    (case,) = q.cases
    below, above = case.disjuncts  # != : V < Y + X[1] or V > Y + X[1], both strict
    assert list(below.A[0][[3, 7, 9]]) == [-1.0, 1.0, -1.0] and list(below.strict) == [True]
    assert list(above.A[0][[3, 7, 9]]) == [1.0, -1.0, 1.0]
    x = np.array([0.5, 0.25, 0.0, 0.0])
    y = np.zeros(8)
    y[3], y[7] = 1.0, 1.25
    assert not q.violated_by(x, y)  # V == Y + X[1]
    y[7] = 1.5
    assert q.violated_by(x, y)


def test_polynomial_atoms_are_kept_for_the_replay_and_bounded_by_intervals():
    q = parse_vnnlib("""(vnnlib-version <2.0>)
(declare-network N (declare-input X real [2]) (declare-output Y real [2]))
(assert (and (>= X[0] -1.0) (<= X[0] 2.0) (>= X[1] 0.0) (<= X[1] 2.0)))
(assert (>= (* Y[0] (+ Y[1] X[0])) 4.5))
""", "t.vnnlib")
    ((d,),) = [c.disjuncts for c in q.cases]
    assert len(d.A) == 0 and len(d.polys) == 1
    (p,) = d.polys  # 4.5 - Y0 Y1 - Y0 X0 <= 0, y = (Y0, Y1, X0, X1)
    assert p.terms == {(0, 1): -1.0, (0, 2): -1.0} and p.const == 4.5
    x, y = np.array([2.0, 1.0]), np.array([1.5, 1.0])
    assert q.violated_by(x, y) == (1.5 * (1.0 + 2.0) >= 4.5)
    lo, hi = np.array([0.0, 0.0, -1.0, 0.0]), np.array([2.0, 2.0, 2.0, 2.0])
    assert p.lower_bound(lo, hi) <= 4.5 - 2.0 * 4.0  # the true minimum over the box
    grid = np.stack(np.meshgrid(*[np.linspace(a, b, 9) for a, b in zip(lo, hi)]), -1)
    assert p.lower_bound(lo, hi) <= min(p.value(v) for v in grid.reshape(-1, 4))


def test_compose_matches_onnxruntime_per_network(two_out, hidden):
    import onnx

    members = [Member("P", read_member(onnx.load(str(two_out)), "P"), ["in0"]),
               Member("Q", read_member(onnx.load(str(hidden)), "Q", ("h",)), ["in1"])]
    net = compose(members, [("in0", (1,)), ("in1", (1,))],
                  [("P", "y2"), ("Q", "h"), ("Q", "y"), ("P", "y1"), (None, "in0")])
    rng = np.random.default_rng(0)
    for x in rng.uniform(-2, 2, size=(20, 2)):
        y1, y2 = _ort(two_out, {"x": x[0]}, ["y1", "y2"])
        h, y = _ort(hidden, {"x": x[1]}, ["h", "y"])
        expected = np.concatenate([y2, h, y, y1, x[:1]])
        assert np.allclose(net.forward(x), expected, atol=1e-5)


def test_several_inputs_sat_checked_by_onnxruntime(tmp_path, sub, capsys):
    code, out, err = _solve(tmp_path, """(vnnlib-version <2.0>)
(declare-network N (declare-input A float32 [1]) (declare-input B float32 [1])
  (declare-output Y float32 [1]))
(assert (and (>= A[0] 0.0) (<= A[0] 1.0) (>= B[0] 10.0) (<= B[0] 11.0)))
(assert (<= Y[0] -10.5))
""", {"N": sub}, capsys)
    assert code == 0 and out.startswith("sat\n"), err
    values = _assignment(out)
    (y,) = _ort(sub, {"x1": values["A"], "x2": values["B"]}, ["y"])
    assert 0 <= values["A"] <= 1 and 10 <= values["B"] <= 11 and y[0] <= -10.5
    assert values["Y"] == y[0]


def test_several_outputs_unsat_needs_both_rows(tmp_path, two_out, capsys):
    text = """(vnnlib-version <2.0>)
(declare-network N (declare-input X real [1]) (declare-output P real [1])
  (declare-output Q real [1]))
(assert (and (>= X[0] 0.0) (<= X[0] 1.0)))
(assert (>= P[0] 1.5))
(assert (<= Q[0] 10.5))
"""
    grid = np.linspace(0, 1, 100001)  # y1 >= 1.5 needs x >= 0.75, y2 <= 10.5 needs x <= 0.5
    assert not np.any((2 * grid >= 1.5) & (grid + 10 <= 10.5))
    code, out, err = _solve(tmp_path, text, {"N": two_out}, capsys)
    assert (code, out) == (0, "unsat\n"), err
    # declared in the model's output order: P is y1 = 2x, Q is y2 = x + 10; swapped, sat
    code, out, err = _solve(tmp_path, text.replace("(>= P[0] 1.5)", "(>= Q[0] 1.5)").replace(
        "(<= Q[0] 10.5)", "(<= P[0] 10.5)"), {"N": two_out}, capsys)
    assert code == 0 and out.startswith("sat\n"), err


def test_hidden_nodes_sat_and_unsat(tmp_path, hidden, capsys):
    head = """(vnnlib-version <2.0>)
(declare-network N (declare-input X float32 [1]) (declare-hidden H float32 [1] "h")
  (declare-output Y float32 [1]))
(assert (and (>= X[0] 0.0) (<= X[0] 2.0)))
"""
    code, out, err = _solve(tmp_path, head + "(assert (<= H[0] -0.5))", {"N": hidden}, capsys)
    assert (code, out) == (0, "unsat\n"), err  # a ReLU's output
    code, out, err = _solve(tmp_path, head + "(assert (>= H[0] (+ X[0] 0.5)))", {"N": hidden},
                            capsys)
    assert code == 0 and out.startswith("sat\n"), err
    values = _assignment(out)
    h, y = _ort(hidden, {"x": values["X"]}, ["h", "y"])
    assert h[0] >= values["X"] + 0.5 and (values["H"], values["Y"]) == (h[0], y[0])
    assert list(_assignment(out)) == ["X", "H", "Y"]  # declaration order
    code, out, err = _solve(tmp_path, head.replace('"h"', '"nowhere"') +
                            "(assert (<= H[0] 1.0))", {"N": hidden}, capsys)
    assert code == 1 and out == "" and "no tensor named 'nowhere'" in err
    assert "q.vnnlib: network N" in err  # where: the query's declaration, then its model
    assert len(err.strip().splitlines()) == 1


def test_several_networks_equal_and_separate(tmp_path, relu, capsys):
    head = """(vnnlib-version <2.0>)
(declare-network N1 (declare-input X real [1]) (declare-output Y real [1]))
(declare-network N2 (equal-to N1) (declare-input X2 real [1]) (declare-output Y2 real [1]))
(assert (and (>= X[0] -1.0) (<= X[0] 1.0) (>= X2[0] 0.5) (<= X2[0] 3.0)))
"""
    a, b = np.meshgrid(np.linspace(-1, 1, 401), np.linspace(0.5, 3, 401))
    assert not np.any(np.maximum(b, 0) + 0.6 <= np.maximum(a, 0))  # 1.1 <= relu(x2) + 0.6
    assert np.any(np.maximum(b, 0) + 0.4 <= np.maximum(a, 0))
    code, out, err = _solve(tmp_path, head + "(assert (<= (+ Y2[0] 0.6) Y[0]))",
                            {"N1": relu}, capsys)  # N2 reuses N1's model
    assert (code, out) == (0, "unsat\n"), err
    code, out, err = _solve(tmp_path, head + "(assert (<= (+ Y2[0] 0.4) Y[0]))",
                            {"N1": relu, "N2": relu}, capsys)
    assert code == 0 and out.startswith("sat\n"), err
    v = _assignment(out)
    (y,) = _ort(relu, {"x": v["X"]}, ["y"])
    (y2,) = _ort(relu, {"x": v["X2"]}, ["y"])
    # real semantics: the printed outputs are the network's over the reals at the printed X
    # (onnxruntime evaluates the float32 model on X rounded to float32)
    assert y2[0] + 0.4 <= y[0] and [v["Y"], v["Y2"]] == pytest.approx([y[0], y2[0]], rel=1e-6)
    separate = head.replace("(equal-to N1) ", "")
    code, out, err = _solve(tmp_path, separate + "(assert (<= Y2[0] Y[0]))", {"N1": relu},
                            capsys)
    assert code == 1 and "no model file for network 'N2'" in err


def test_linear_constraints_over_inputs_and_outputs(tmp_path, ident2, capsys):
    head = """(vnnlib-version <2.0>)
(declare-network N (declare-input X float32 [2]) (declare-output Y float32 [2]))
(assert (and (>= X[0] 0.0) (<= X[0] 2.0) (>= X[1] 0.0) (<= X[1] 2.0)))
"""
    code, out, err = _solve(tmp_path, head + "(assert (>= (+ (* 0.5 X[0]) (* 0.75 X[1])) 2.6))",
                            {"N": ident2}, capsys)
    assert (code, out) == (0, "unsat\n"), err  # the maximum is 2.5
    code, out, err = _solve(tmp_path, head + "(assert (>= (- Y[0] X[1]) 1.5))", {"N": ident2},
                            capsys)
    assert code == 0 and out.startswith("sat\n"), err
    lines = out.splitlines()
    x, y = np.array(lines[2:4], dtype=float), np.array(lines[5:7], dtype=float)
    (y_ort,) = _ort_vector(ident2, x)
    assert np.array_equal(y, y_ort) and y_ort[0] - x[1] >= 1.5


def _ort_vector(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(session.run(None, {"x": x.astype(np.float32)})[0], dtype=np.float64)]


def test_polynomial_constraints_sat_unsat_and_unknown(tmp_path, ident2, capsys):
    head = """(vnnlib-version <2.0>)
(declare-network N (declare-input X float32 [2]) (declare-output Y float32 [2]))
(assert (and (>= X[0] 0.0) (<= X[0] 2.0) (>= X[1] 0.0) (<= X[1] 2.0)))
"""
    code, out, err = _solve(tmp_path, head + "(assert (>= (* X[0] X[1]) 4.5))", {"N": ident2},
                            capsys)
    assert (code, out) == (0, "unsat\n"), err
    code, out, err = _solve(tmp_path, head + "(assert (>= (* Y[0] Y[1]) 4.0))", {"N": ident2},
                            capsys)
    assert code == 0 and out.startswith("sat\n"), err  # only at the corner (2, 2)
    lines = out.splitlines()
    (y,) = _ort_vector(ident2, np.array(lines[2:4], dtype=float))
    assert y[0] * y[1] >= 4.0
    # (Y0 - Y1)^2 <= -0.01: no point, but interval arithmetic on the expanded square does not
    # see it; never unsat from an unproved relaxation, never sat without a checked point
    code, out, err = _solve(tmp_path, head + "(assert (<= (* (- Y[0] Y[1]) (- Y[0] Y[1])) "
                                             "-0.01))", {"N": ident2}, capsys)
    assert (code, out) == (0, "unknown\n") and "nonlinear constraint" in err


def test_shared_input_is_one_graph_input(tmp_path, relu, hidden, capsys):
    head = """(vnnlib-version <2.0>)
(declare-network N1 (declare-input X real [1]) (declare-output Y real [1]))
(declare-network N2 (declare-input U real [1]) (declare-output V real [1]))
(assert (and (>= X[0] 0.0) (<= X[0] 1.0) (>= U[0] -5.0) (<= U[0] 5.0)))
(assert (== U[0] X[0]))
"""
    q = parse_vnnlib(head + "(assert (>= (- V[0] 2.01) Y[0]))", "t.vnnlib")
    assert [(v.name, v.offset, v.shares) for v in q.variables if v.kind == "input"] == \
        [("X", 0, None), ("U", 0, "X")]
    assert q.n_inputs == 1 and not q.observes_inputs
    (case,) = q.cases
    assert (case.box.lower[0], case.box.upper[0]) == (0.0, 1.0)  # both boxes intersected
    grid = np.linspace(0, 1, 100001)  # relu(2x - 1) <= relu(x) on [0, 1], equal at 0 and 1
    assert not np.any(np.maximum(2 * grid - 1, 0) >= np.maximum(grid, 0) + 0.01)
    code, out, err = _solve(tmp_path, head + "(assert (>= (- V[0] 2.01) Y[0]))",
                            {"N1": relu, "N2": hidden}, capsys)
    assert (code, out) == (0, "unsat\n"), err
    code, out, err = _solve(tmp_path, head + "(assert (>= (- V[0] 2.0) Y[0]))",
                            {"N1": relu, "N2": hidden}, capsys)
    assert code == 0 and out.startswith("sat\n"), err
    v = _assignment(out)
    assert v["X"] == v["U"]
    (y,) = _ort(relu, {"x": v["X"]}, ["y"])
    (h,) = _ort(hidden, {"x": v["U"]}, ["y"])
    assert h[0] - 2.0 >= y[0] and [v["Y"], v["V"]] == [y[0], h[0]]


def test_polynomial_query_is_no_specification():
    from verify.vnnlib import VnnlibError

    q = parse_vnnlib("""(vnnlib-version <2.0>)
(declare-network N (declare-input X real [1]) (declare-output Y real [2]))
(assert (and (>= X[0] 0.0) (<= X[0] 1.0)))
(assert (and (<= Y[0] 1.0) (<= (* Y[0] Y[1]) 1.0)))
""", "t.vnnlib")
    assert not q.single_row and q.nonlinear
    with pytest.raises(VnnlibError, match="polynomial"):
        q.to_specifications()


def test_satisfactory_driver_checks_assignments_per_network(tmp_path, relu, hidden, capsys):
    """benchmarks/vnnlib_satisfactory.py's own check of a multi-network sat: valid as printed,
    invalid once an input moves (the outputs no longer satisfy the query)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.vnnlib_satisfactory import valid_assignment

    text = """(vnnlib-version <2.0>)
(declare-network N1 (declare-input X float32 [1]) (declare-output Y float32 [1]))
(declare-network N2 (declare-input U float32 [1]) (declare-hidden H float32 [1] "h")
  (declare-output V float32 [1]))
(assert (and (>= X[0] 0.0) (<= X[0] 1.0) (>= U[0] 0.0) (<= U[0] 1.0)))
(assert (>= H[0] (+ Y[0] 0.5)))
"""
    models = {"N1": relu, "N2": hidden}
    code, out, err = _solve(tmp_path, text, models, capsys)
    assert code == 0 and out.startswith("sat\n"), err
    query = tmp_path / "q.vnnlib"
    assert valid_assignment(out, models, query) == (True, "")
    v = _assignment(out)
    moved = out.replace(f"U float32 [1]\n{v['U']!r}", "U float32 [1]\n0.0")
    assert moved != out and not valid_assignment(moved, models, query)[0]


def test_verify_vnnlib_points_a_two_network_query_to_verify_solver(tmp_path, relu, capsys):
    """`verify vnnlib MODEL QUERY` takes one model: a query over two networks is refused in one
    line that says where it can be answered (not a confusing size mismatch)."""
    from verify.cli import main as verify_main

    query = tmp_path / "two.vnnlib"
    query.write_text("""(vnnlib-version <2.0>)
(declare-network N1 (declare-input X real [1]) (declare-output Y real [1]))
(declare-network N2 (equal-to N1) (declare-input X2 real [1]) (declare-output Y2 real [1]))
(assert (and (>= X[0] -1.0) (<= X[0] 1.0) (>= X2[0] 0.5) (<= X2[0] 3.0)))
(assert (<= (+ Y2[0] 0.6) Y[0]))
""")
    assert verify_main(["vnnlib", str(relu), str(query)]) == 2
    err = capsys.readouterr().err
    assert "declares 2 networks (N1, N2)" in err and "verify-solver" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_auto_on_two_copies_of_a_small_piecewise_linear_graph_reaches_the_milp(tmp_path, capsys):
    """Two copies of one residual ReLU network on a shared input: Y2 - Y >= 1e-3 is unsat (they
    are equal), which input splitting struggles with (the copies' bounds are not correlated)
    and the exact MILP of the composed graph decides: auto gives bab half the time, then the
    MILP."""
    rng = np.random.default_rng(0)
    n, h = 6, 8
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["a"], transB=1),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["c"], transB=1),
             helper.make_node("Relu", ["c"], ["s"]),
             helper.make_node("Add", ["r", "s"], ["t"]),
             helper.make_node("Gemm", ["t", "W3", "b3"], ["y"], transB=1)]
    consts = {"W1": rng.normal(size=(h, n)), "b1": rng.normal(size=h) * 0.3,
              "W2": rng.normal(size=(h, h)) * 0.5, "b2": rng.normal(size=h) * 0.3,
              "W3": rng.normal(size=(1, h)), "b3": np.zeros(1)}
    model = _model(tmp_path / "res.onnx", nodes, {"x": [1, n]}, {"y": [1, 1]}, consts)
    lines = ["(vnnlib-version <2.0>)",
             f"(declare-network A (declare-input X real [1, {n}]) (declare-output Y real [1, 1]))",
             f"(declare-network B (equal-to A) (declare-input U real [1, {n}]) "
             "(declare-output V real [1, 1]))"]
    for i in range(n):
        lines += [f"(assert (>= X[0,{i}] -1.0))", f"(assert (<= X[0,{i}] 1.0))",
                  f"(assert (>= U[0,{i}] -1.0))", f"(assert (<= U[0,{i}] 1.0))",
                  f"(assert (== U[0,{i}] X[0,{i}]))"]
    lines.append("(assert (>= (- V[0,0] Y[0,0]) 0.001))")
    code, out, err = _solve(tmp_path, "\n".join(lines) + "\n", {"A": model}, capsys,
                            "--timeout", "30")
    assert (code, out) == (0, "unsat\n"), err


@pytest.mark.parametrize("method", ["ibp", "crown", "auto"])
def test_strict_violation_is_refuted_by_a_bound_of_exactly_zero(tmp_path, relu, method, capsys):
    """relu(x) < 0 never holds, and IBP / CROWN bound relu(x) - 0 below by exactly 0; the closed
    violation relu(x) <= 0 holds at x <= 0, so the same bound must not refute it."""
    head = """(vnnlib-version <2.0>)
(declare-network N (declare-input X real [1]) (declare-output Y real [1]))
(assert (and (>= X[0] -1.0) (<= X[0] 1.0)))
"""
    code, out, err = _solve(tmp_path, head + "(assert (< Y[0] 0.0))", {"N": relu}, capsys,
                            "--method", method)
    assert (code, out) == (0, "unsat\n"), err
    code, out, err = _solve(tmp_path, head + "(assert (<= Y[0] 0.0))", {"N": relu}, capsys,
                            "--method", method)
    assert out != "unsat\n", err
    if method == "auto":
        assert code == 0 and out.startswith("sat\n") and _assignment(out)["X"] <= 0


@pytest.mark.parametrize("method", ["ibp", "auto"])
def test_softmax_outputs_never_leave_the_unit_interval(tmp_path, method, capsys):
    """The suite's softmax01: y = softmax(x), x in [-1000, 1000]^2 (exp overflows at the ends);
    y_0 < 0 or y_0 > 1 is unsat, refuted by the interval [0, 1] on the strict rows. y_0 >= 0.75
    is sat (checked by onnxruntime)."""
    path = tmp_path / "softmax.onnx"
    _model(path, [helper.make_node("Softmax", ["x"], ["y"], axis=0)], {"x": [2]}, {"y": [2]})
    head = """(vnnlib-version <2.0>)
(declare-network N (declare-input X real [2]) (declare-output Y real [2]))
(assert (and (<= X[0] 1000.0) (>= X[0] -1000.0)))
(assert (and (<= X[1] 1000.0) (>= X[1] -1000.0)))
"""
    code, out, err = _solve(tmp_path, head + "(assert (or (< Y[0] 0.0) (> Y[0] 1.0)))",
                            {"N": path}, capsys, "--method", method)
    assert (code, out) == (0, "unsat\n"), err
    if method == "auto":
        code, out, err = _solve(tmp_path, head + "(assert (>= Y[0] 0.75))", {"N": path}, capsys)
        assert code == 0 and out.startswith("sat\n"), err
        x = np.array(out.splitlines()[2:4], dtype=np.float32)  # "X real [2]", then its values
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {"x": x})
        assert y[0] >= 0.75 - 1e-6


ISOMORPHIC = """(vnnlib-version <2.0>)
(declare-network N1 (declare-input X float32 [1]) (declare-output Y float32 [1]))
(declare-network N2 (isomorphic-to N1) (declare-input X2 {t} [1]) (declare-output Y2 {t} [1]))
(assert (and (>= X[0] 0.0) (<= X[0] 1.0) (>= X2[0] 2048.0) (<= X2[0] 2048.0)))
(assert (>= Y[0] 0.0))
"""


def test_isomorphic_network_in_another_precision_is_read_with_its_own_types():
    query = parse_vnnlib(ISOMORPHIC.format(t="float16") + "(assert (<= Y2[0] 2048.0))", "q")
    assert [(v.name, v.element_type) for v in query.variables] == [
        ("X", "float32"), ("Y", "float32"), ("X2", "float16"), ("Y2", "float16")]
    assert query.networks[1].isomorphic_to == "N1"
    # only the isomorphic-types check is sidestepped: a comparison mixing float16 and float32
    # is still the package's type error
    with pytest.raises(VnnlibError, match="Type mismatch in arithmetic expression"):
        parse_vnnlib(ISOMORPHIC.format(t="float16") + "(assert (<= Y2[0] Y[0]))", "q")


def test_isomorphic_network_is_evaluated_in_its_own_precision(tmp_path, capsys):
    # y = x + 1 at x = 2048: 2049 over the reals and in float32, 2048 in float16 (ties to even)
    plus_one = _model(tmp_path / "plus_one.onnx", [helper.make_node("Add", ["x", "one"], ["y"])],
                      {"x": [1]}, {"y": [1]}, {"one": [1.0]})
    assert np.float16(2048) + np.float16(1) == 2048 and np.float32(2048) + 1 == 2049
    nets = {"N1": plus_one, "N2": plus_one}
    code, out, err = _solve(tmp_path, ISOMORPHIC.format(t="float16")
                            + "(assert (<= Y2[0] 2048.0))", nets, capsys)
    assert code == 0 and out.startswith("sat\n"), err
    v = _assignment(out)
    assert v["X2"] == 2048 and v["Y2"] == 2048 and 0 <= v["X"] <= 1
    import onnx

    half = onnx.load(str(plus_one))  # onnxruntime in float16 on a float16 copy built here
    half.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    half.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    half.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array([1], np.float16), "one"))
    session = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.array([v["X2"]], np.float16)})[0][0] == v["Y2"]
    # the same network declared float32 cannot reach 2048, and float16 cannot go below it
    code, out, err = _solve(tmp_path, ISOMORPHIC.format(t="float32")
                            + "(assert (<= Y2[0] 2048.0))", nets, capsys)
    assert (code, out) == (0, "unsat\n"), err
    # float16's rounding bound (a few units at 2049, unit roundoff 2^-11) still proves 2040
    code, out, err = _solve(tmp_path, ISOMORPHIC.format(t="float16")
                            + "(assert (<= Y2[0] 2040.0))", nets, capsys)
    assert (code, out) == (0, "unsat\n"), err


def test_float16_evaluation_of_a_float32_model_refuses_constants_out_of_float16_range(tmp_path):
    """A float32 model evaluated in float16 (an isomorphic network) rounds its constants to
    float16: 70000 overflows to inf, 1e-6 underflows (absolute, not relative, error); both are
    refused in one line, while in float32 they are bounded; retyped_model runs in float16."""
    from verify.float_rounding import FloatSemanticsError, evaluation_error, retyped_model

    for weight in (70000.0, 1e-6):
        path = _model(tmp_path / "w.onnx", [helper.make_node("Mul", ["x", "w"], ["y"])],
                      {"x": [1]}, {"y": [1]}, {"w": [weight]})
        assert np.isfinite(evaluation_error(path, np.array([0.0]), np.array([1e-3]))).all()
        with pytest.raises(FloatSemanticsError, match="normal range of float16") as exc:
            evaluation_error(path, np.array([0.0]), np.array([1e-3]), "float16")
        assert "\n" not in str(exc.value)
    import onnx

    half = retyped_model(onnx.load(str(path)), "float16")
    session = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.array([0.5], np.float16)})
    assert y.dtype == np.float16 and y[0] == np.float16(np.float16(1e-6) * np.float16(0.5))


def test_data_movement_adds_no_rounding_allowance(tmp_path, capsys):
    """Softmax then Reshape/Transpose/Slice: the moved entries keep their bounds exactly, so
    y_0 < 0 is refuted by the bound 0 as without the moves (each charged a rounding allowance,
    it was -1e-15 and never proved)."""
    path = tmp_path / "softmax_moved.onnx"
    _model(path, [helper.make_node("Softmax", ["x"], ["s"], axis=0),
                  helper.make_node("Reshape", ["s", "shape"], ["r"]),
                  helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0]),
                  helper.make_node("Reshape", ["t", "flat"], ["y"])],
           {"x": [2]}, {"y": [2]}, {})
    import onnx  # the shapes are int64 initializers

    model = onnx.load(str(path))
    model.graph.initializer.extend([numpy_helper.from_array(np.array([1, 2], np.int64), "shape"),
                                    numpy_helper.from_array(np.array([2], np.int64), "flat")])
    path.write_bytes(model.SerializeToString())
    head = """(vnnlib-version <2.0>)
(declare-network N (declare-input X real [2]) (declare-output Y real [2]))
(assert (and (<= X[0] 1000.0) (>= X[0] -1000.0) (<= X[1] 1000.0) (>= X[1] -1000.0)))
"""
    code, out, err = _solve(tmp_path, head + "(assert (or (< Y[0] 0.0) (> Y[1] 1.0)))",
                            {"N": path}, capsys, "--method", "ibp")
    assert (code, out) == (0, "unsat\n"), err


def test_interval_margin_reads_zero_times_an_infinite_bound_as_zero():
    """A row that does not read an unbounded output gets a finite bound, not NaN."""
    import torch

    from verify.bounds import InputBatch
    from verify.bounds.graph import interval_margin

    C = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    batch = InputBatch(lower=torch.zeros(1, 1), upper=torch.ones(1, 1), center=torch.zeros(1, 1),
                       eps=torch.zeros(1), norm="box", C=C, d=torch.zeros(1, 2))
    lower = torch.tensor([[0.5, -math.inf]], dtype=torch.float64)
    upper = torch.tensor([[2.0, math.inf]], dtype=torch.float64)
    margin = interval_margin(batch, lower, upper)
    assert margin[0, 0] == 0.5 and margin[0, 1] == -math.inf
    # a NaN bound (inf - inf upstream) proves nothing: its row stays NaN, the other row as is
    lower, upper = lower.clone(), upper.clone()
    lower[0, 1], upper[0, 1] = math.nan, math.nan
    margin = interval_margin(batch, lower, upper)
    assert margin[0, 0] == 0.5 and math.isnan(margin[0, 1])


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_an_unbounded_exp_gives_no_unsat(tmp_path, method, capsys):
    """y0 = -exp(x0) with x0 up to 1000 (exp overflows: an infinite, then NaN, bound), y1 = x1:
    y0 < 0 and y1 = 0.3 holds at x = (0, 0.3), so no method may answer unsat (a NaN bound once
    read as 0 made IBP and CROWN refute it)."""
    path = _model(tmp_path / "expneg.onnx", [
        helper.make_node("Exp", ["x"], ["e"]), helper.make_node("MatMul", ["e", "W"], ["a"]),
        helper.make_node("MatMul", ["x", "V"], ["b"]), helper.make_node("Add", ["a", "b"], ["y"])],
        {"x": [1, 2]}, {"y": [1, 2]},
        {"W": [[-1.0, 0.0], [0.0, 0.0]], "V": [[0.0, 0.0], [0.0, 1.0]]})
    query = """(vnnlib-version <2.0>)
(declare-network N (declare-input X real [1,2]) (declare-output Y real [1,2]))
(assert (and (>= X[0,0] -1.0) (<= X[0,0] 1000.0) (>= X[0,1] -1.0) (<= X[0,1] 1.0)))
(assert (and (< Y[0,0] 0.0) (>= Y[0,1] 0.3) (<= Y[0,1] 0.3)))
"""
    code, out, err = _solve(tmp_path, query, {"N": path}, capsys, "--method", method)
    assert code == 0 and out != "unsat\n", err


def test_one_network_declared_float16_is_checked_in_float16(tmp_path, capsys):
    """y = 0.3 x stored in float32, queried in float16 at x = 1: float16's 0.3 is 0.30004883,
    float32's 0.30000001, so y > 0.30002 is sat in float16 (onnxruntime runs the model retyped
    to float16, as the error bound assumes) and unsat in float32."""
    path = _model(tmp_path / "mul.onnx", [helper.make_node("Mul", ["x", "w"], ["y"])],
                  {"x": [1]}, {"y": [1]}, {"w": [0.3]})
    query = """(vnnlib-version <2.0>)
(declare-network N (declare-input X {t} [1]) (declare-output Y {t} [1]))
(assert (and (>= X[0] 1.0) (<= X[0] 1.0)))
(assert (> Y[0] 0.30002))
"""
    code, out, err = _solve(tmp_path, query.format(t="float16"), {"N": path}, capsys)
    assert code == 0 and out.startswith("sat\n"), err
    assert float(out.splitlines()[-1]) == float(np.float16(0.3))
    code, out, err = _solve(tmp_path, query.format(t="float32"), {"N": path}, capsys)
    assert (code, out) == (0, "unsat\n"), err


@pytest.mark.parametrize("method", ["ibp", "crown", "auto"])
def test_unbounded_ends_never_read_as_zero_in_products_and_polynomials(tmp_path, method, capsys):
    """5 - exp(x) over x in [0, 1000]: its upper end was inf - inf = NaN, which the product's
    corners and the polynomial's interval read as 0 * inf = 0. (5 - exp(x)) x >= 1 and the
    polynomial y0 y1 >= 1, (y1 - 0.5)^2 <= 1e-12 both hold at x = 0.5, so neither is unsat."""
    five = {"five": [5.0]}
    product = _model(tmp_path / "product.onnx", [
        helper.make_node("Exp", ["x"], ["e"]), helper.make_node("Sub", ["five", "e"], ["n"]),
        helper.make_node("Mul", ["n", "x"], ["y"])], {"x": [1]}, {"y": [1]}, five)
    pair = _model(tmp_path / "pair.onnx", [
        helper.make_node("Exp", ["x"], ["e"]), helper.make_node("Sub", ["five", "e"], ["n"]),
        helper.make_node("Concat", ["n", "x"], ["y"], axis=0)], {"x": [1]}, {"y": [2]}, five)
    box = "(assert (and (>= X[0] 0.0) (<= X[0] 1000.0)))\n"
    head = "(vnnlib-version <2.0>)\n(declare-network N (declare-input X real [1]) " \
        "(declare-output Y real [{n}]))\n" + box
    code, out, err = _solve(tmp_path, head.format(n=1) + "(assert (>= Y[0] 1.0))",
                            {"N": product}, capsys, "--method", method)
    assert code == 0 and out != "unsat\n", err
    (y,) = _ort(product, {"x": 0.5}, ["y"])
    assert y[0] >= 1.0  # the witness
    code, out, err = _solve(tmp_path, head.format(n=2) + "(assert (>= (* Y[0] Y[1]) 1.0))\n"
                            "(assert (<= (* (- Y[1] 0.5) (- Y[1] 0.5)) 0.000000000001))",
                            {"N": pair}, capsys, "--method", method)
    assert code == 0 and out != "unsat\n", err


def test_sub_model_keeps_only_what_the_tensor_needs(tmp_path, sub, two_out):
    """_upstream walks back from a tensor once per model's producer map; _sub_model copies only
    the nodes, inputs and initializers it reads, and computes the tensor as the model does
    (onnxruntime on both)."""
    from verify.onnx_proto import read_model_proto
    from verify.solver_cli import _sub_model, _upstream

    model = read_model_proto(two_out)
    producers = {out: node for node in model.graph.node for out in node.output}
    for tensor, const in (("y1", "two"), ("y2", "ten")):
        inputs, nodes = _upstream(model, producers, tensor)
        assert inputs == ["x"] and [n.output[0] for n in nodes] == [tensor]
        part = _sub_model(model, inputs, nodes, tensor)
        assert [t.name for t in part.graph.initializer] == [const]
        assert [o.name for o in part.graph.output] == [tensor]
        path = tmp_path / f"{tensor}.onnx"
        path.write_bytes(part.SerializeToString())
        for x in (-3.5, 0.0, 7.25):
            assert _ort(path, {"x": x}, [tensor]) == pytest.approx(
                _ort(two_out, {"x": x}, [tensor]))
    model = read_model_proto(sub)  # two inputs, both read
    producers = {out: node for node in model.graph.node for out in node.output}
    assert _upstream(model, producers, "y")[0] == ["x1", "x2"]
    assert _upstream(model, producers, "x2") == (["x2"], [])


def test_float_counterexample_reads_the_model_once(tmp_path, relu, monkeypatch):
    """_float_counterexample tries the cases in turn: the graph IR and the onnxruntime session
    are each read once (they were read again per case), and the answer is the case whose
    float32 evaluation violates the query (relu(0.75) >= 0.5; not >= 5)."""
    import verify.float_rounding as float_rounding
    from verify.solver_cli import _float_counterexample

    query = parse_vnnlib("""
(declare-const X_0 Real)
(declare-const Y_0 Real)
(assert (or (and (>= X_0 0.0) (<= X_0 1.0) (>= Y_0 5.0))
            (and (>= X_0 0.5) (<= X_0 1.0) (>= Y_0 0.5))))
""", "q.vnnlib")
    assert len(query.cases) == 2
    calls = {"read_graph": 0, "float_session": 0}
    for name in calls:
        def counted(*args, _name=name, _real=getattr(float_rounding, name)):
            calls[_name] += 1
            return _real(*args)
        monkeypatch.setattr(float_rounding, name, counted)
    x, y = _float_counterexample(query, relu, np.array([0.75]), "float32")
    assert calls == {"read_graph": 1, "float_session": 1}
    assert x.tolist() == [0.75] and y.tolist() == [0.75]
    calls.update(read_graph=0, float_session=0)
    x, y = _float_counterexample(query, relu, np.array([0.25]), "float32")  # moved into case 2
    assert calls == {"read_graph": 1, "float_session": 1}
    assert x.tolist() == [0.5] and y.tolist() == [0.5]


def test_onnxruntime_feed_types_and_dynamic_dimensions():
    """The shared feed rule: the input's own float type; a symbolic or unknown dimension is 1,
    a dimension <= 0 too only with nonpositive_as_one (verify-solver's composed queries)."""
    from types import SimpleNamespace

    from verify.float_rounding import onnxruntime_feed

    values = np.array([0.1, 0.2, 0.3])
    half = onnxruntime_feed(SimpleNamespace(type="tensor(float16)", shape=["N", None, 3]), values)
    assert half.dtype == np.float16 and half.shape == (1, 1, 3)
    other = SimpleNamespace(type="tensor(int64)", shape=[0, 3])
    assert onnxruntime_feed(other, values, nonpositive_as_one=True).dtype == np.float32
    assert onnxruntime_feed(other, values, nonpositive_as_one=True).shape == (1, 3)
    with pytest.raises(ValueError):  # a 0 dimension kept: no room for the values
        onnxruntime_feed(other, values)
    kept = onnxruntime_feed(SimpleNamespace(type="tensor(double)", shape=[-1, 3]), values)
    assert kept.dtype == np.float64 and kept.shape == (1, 3)
