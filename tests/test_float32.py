"""float32 semantics: the evaluation-error bound of verify.float_rounding holds against float32
evaluations (numpy in several summation orders, onnxruntime), widening matters on a constructed
case, and verify-solver's float32 answers (sat assignments re-checked in float32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import run_solver
from verify.backends import certify_specs
from verify.float_rounding import (evaluation_error, graph_float_forward, onnxruntime_forward,
                                   round_into_box, widen_query)
from verify.onnx_io import load_onnx
from verify.spec import Box, OutputProperty, Specification


def _model(path: Path, layers: list, n_in: int) -> Path:
    """An ONNX float32 chain X -> ... -> Y; layers: ("dense", W, b), ("relu",), ("add", c),
    ("sub", c), ("mul", c), ("div", c)."""
    nodes, inits, name = [], [], "X"
    for k, layer in enumerate(layers):
        out = f"h{k}"
        if layer[0] == "dense":
            W, b = layer[1], layer[2]
            inits += [numpy_helper.from_array(W.T.astype(np.float32), f"W{k}"),
                      numpy_helper.from_array(b.astype(np.float32), f"b{k}")]
            nodes += [helper.make_node("MatMul", [name, f"W{k}"], [out + "m"]),
                      helper.make_node("Add", [out + "m", f"b{k}"], [out])]
        elif layer[0] == "relu":
            nodes.append(helper.make_node("Relu", [name], [out]))
        else:
            op = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}[layer[0]]
            inits.append(numpy_helper.from_array(np.asarray(layer[1], np.float32), f"c{k}"))
            nodes.append(helper.make_node(op, [name, f"c{k}"], [out]))
        name = out
    nodes.append(helper.make_node("Identity", [name], ["Y"]))
    graph = helper.make_graph(nodes, "net",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, n_in])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _float32_orders(layers: list, x: np.ndarray, rng) -> list[np.ndarray]:
    """The chain evaluated in float32 in several summation orders: BLAS, left to right, right
    to left, a random permutation per layer (one sample x, flat)."""
    outs = []
    for order in ("blas", "forward", "backward", "random"):
        h = x.astype(np.float32)
        for layer in layers:
            if layer[0] == "relu":
                h = np.maximum(h, np.float32(0))
            elif layer[0] == "dense":
                W, b = layer[1].astype(np.float32), layer[2].astype(np.float32)
                if order == "blas":
                    h = (W @ h + b).astype(np.float32)
                    continue
                new = np.empty(W.shape[0], np.float32)
                for i in range(W.shape[0]):
                    idx = np.arange(W.shape[1])
                    idx = idx[::-1] if order == "backward" else (
                        rng.permutation(idx) if order == "random" else idx)
                    acc = np.float32(0)
                    for j in idx:
                        acc = np.float32(acc + np.float32(W[i, j] * h[j]))
                    new[i] = np.float32(acc + b[i])
                h = new
            else:
                c = np.float32(layer[1])
                h = {"add": np.add, "sub": np.subtract, "mul": np.multiply,
                     "div": np.divide}[layer[0]](h, c).astype(np.float32)
        outs.append(h.astype(np.float64))
    return outs


def _random_layers(rng, sizes: list[int], scale: float) -> list:
    layers = [("sub", np.float32(rng.uniform(-1, 1))), ("div", np.float32(rng.uniform(0.5, 2)))]
    for k in range(len(sizes) - 1):
        W = (rng.standard_normal((sizes[k + 1], sizes[k])) * scale).astype(np.float32)
        b = rng.standard_normal(sizes[k + 1]).astype(np.float32)
        layers.append(("dense", W, b))
        if k < len(sizes) - 2:
            layers.append(("relu",))
    # A cancellation the loader folds away (x + C - C == x over the reals): its float32
    # rounding is what a bound on the folded network alone would miss.
    layers += [("add", np.float32(4096.0)), ("sub", np.float32(4096.0))]
    return layers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_error_bound_holds_for_float32_evaluations(tmp_path, seed):
    rng = np.random.default_rng(seed)
    sizes = [4, 12, 10, 3]
    layers = _random_layers(rng, sizes, scale=float(rng.uniform(0.5, 3)))
    path = _model(tmp_path / "net.onnx", layers, sizes[0])
    lower = rng.uniform(-1, 0, sizes[0])
    upper = lower + rng.uniform(0.1, 1, sizes[0])
    error = evaluation_error(path, lower, upper)
    assert np.all(np.isfinite(error)) and np.all(error > 0)
    net = load_onnx(path)
    worst = np.zeros(sizes[-1])
    points = rng.uniform(lower, upper, (40, sizes[0]))
    points = np.concatenate([points, [lower, upper]])
    for x in points:
        xf = round_into_box(x, lower, upper)
        real = net.forward(xf.astype(np.float64))
        evaluations = _float32_orders(layers, xf, rng)
        evaluations.append(onnxruntime_forward(path, xf))
        evaluations.append(graph_float_forward(path, xf))
        for y in evaluations:
            gap = np.abs(y - real)
            assert np.all(gap <= error), (gap, error)
            worst = np.maximum(worst, gap)
    # The bound is a bound, not a multiple of the gaps seen: the cancellation alone is 2^-12.
    assert np.max(worst) > 0


def test_widened_margin_bound_holds_in_float32(tmp_path):
    """A certifier's real-arithmetic margin lower bound, lowered by |c| E, is below every float32
    margin (numpy orders and onnxruntime) on points of the box."""
    rng = np.random.default_rng(7)
    sizes = [3, 8, 8, 2]
    layers = _random_layers(rng, sizes, scale=1.0)
    path = _model(tmp_path / "net.onnx", layers, sizes[0])
    lower, upper = np.full(3, -0.5), np.full(3, 0.5)
    net = load_onnx(path)
    C = np.array([[1.0, -1.0]])
    y0 = net.forward((lower + upper) / 2)
    d = np.array([float(C[0] @ y0) - 50.0])  # a margin that some method bounds below
    (cert,) = certify_specs(net, [Specification(Box(lower, upper), OutputProperty(C, d))],
                            "crown")
    error = evaluation_error(path, lower, upper)
    widened = cert.margin_lower[0] - float(np.abs(C[0]) @ error)
    for x in rng.uniform(lower, upper, (30, 3)):
        xf = round_into_box(x, lower, upper)
        for y in [*_float32_orders(layers, xf, rng), onnxruntime_forward(path, xf)]:
            assert float(C[0] @ y - d[0]) >= widened


def _cancellation_case(tmp_path) -> tuple[Path, Path, float]:
    """y = (x + 16384) - 16384 with x = 0.1f: over the reals y = x; in float32 the sum keeps
    x to a multiple of 2^-9, so y = 0.099609375. The query asks y <= 0.09999: unsat over the
    reals (margin 1e-5 > 0), sat in float32."""
    x0 = float(np.float32(0.1))
    path = _model(tmp_path / "cancel.onnx", [("add", 16384.0), ("sub", 16384.0)], 1)
    query = tmp_path / "cancel.vnnlib"
    query.write_text(
        "(vnnlib-version <2.0>)\n(declare-network N\n  (declare-input X float32 [1])\n"
        "  (declare-output Y float32 [1]))\n"
        f"(assert (>= X[0] {x0!r}))\n(assert (<= X[0] {x0!r}))\n"
        "(assert (<= Y[0] 0.09999))\n")
    return path, query, x0


def test_unwidened_bound_would_be_wrong_and_widened_is_not(tmp_path):
    path, query_path, x0 = _cancellation_case(tmp_path)
    from verify.vnnlib import load_vnnlib

    query = load_vnnlib(query_path)
    net = load_onnx(path)
    (case,) = query.cases
    (disjunct,) = case.disjuncts
    # Over the reals the margin y - 0.09999 is positive: a certifier refutes the violation.
    spec = Specification(case.box, OutputProperty(disjunct.A, disjunct.b))  # A y - b > 0
    (cert,) = certify_specs(net, [spec], "ibp")
    assert cert.margin_lower[0] > 0
    # In float32 the violation happens (onnxruntime and the own replay) ...
    for y in (onnxruntime_forward(path, np.float32([x0])), graph_float_forward(path, [x0])):
        assert query.violated_by([x0], y)
    # ... and the widened query no longer lets that margin prove anything.
    error = evaluation_error(path, case.box.lower, case.box.upper)
    (wide_disjunct,) = widen_query(query, error).cases[0].disjuncts
    assert cert.margin_lower[0] - (wide_disjunct.b[0] - disjunct.b[0]) <= 0


def test_solver_answers_the_float32_case_sat_and_reals_unsat(tmp_path, capsys):
    pytest.importorskip("vnnlib")
    path, query_path, x0 = _cancellation_case(tmp_path)
    argv = ["verify", str(query_path), "--network", f"N={path}", "--timeout", "60"]
    code, out, err = run_solver(argv + ["--floats-as-reals"], capsys)
    assert (code, out) == (0, "unsat\n"), err
    code, out, err = run_solver(argv, capsys)
    assert code == 0 and out.splitlines()[0] == "sat", err
    lines = out.splitlines()
    assert lines[1] == "X float32 [1]" and lines[3] == "Y float32 [1]"
    x, y = float(lines[2]), float(lines[4])
    assert x == x0 and np.float32(x) == x  # float32, in the (point) box
    assert y == float(onnxruntime_forward(path, np.float32([x]))[0]) <= 0.09999


def test_solver_float32_unsat_needs_the_widened_proof(tmp_path, capsys):
    """The same network, asking y <= 0.08: unsat in float32 too (the float32 error is 2^-12
    here and bounded by about 0.008: two roundings near 16384 charged gamma_4 each), so the
    widened proof still goes through."""
    pytest.importorskip("vnnlib")
    path, query_path, _ = _cancellation_case(tmp_path)
    query_path.write_text(query_path.read_text().replace("0.09999", "0.08"))
    code, out, err = run_solver(["verify", str(query_path), "--network", f"N={path}",
                              "--timeout", "60"], capsys)
    assert (code, out) == (0, "unsat\n"), err


def test_float16_is_answered_and_bfloat16_refused(tmp_path, capsys):
    pytest.importorskip("vnnlib")
    path, query_path, _ = _cancellation_case(tmp_path)
    text = query_path.read_text().replace("0.09999", "0.08")
    f16 = tmp_path / "f16.vnnlib"
    f16.write_text(text.replace("float32", "float16"))
    code, out, err = run_solver(["verify", str(f16), "--network", f"N={path}", "--timeout", "60"],
                             capsys)
    # float16 rounds 16384 + 0.1 to a multiple of 16: y is 0 or 16, far below 0.099: no unsat.
    assert code == 0 and out.splitlines()[0] in ("sat", "unknown"), err
    bf16 = tmp_path / "bf16.vnnlib"
    bf16.write_text(text.replace("float32", "bfloat16"))
    code, out, err = run_solver(["verify", str(bf16), "--network", f"N={path}"], capsys)
    assert code == 1 and out == "" and "bfloat16" in err and err.count("\n") == 1


def test_satisfactory_driver_checks_assignments(tmp_path, capsys):
    """benchmarks/vnnlib_satisfactory.py counts a sat as pass only with a valid assignment: the
    solver's is valid, a tampered one (input outside the box, or not float32) is not."""
    pytest.importorskip("vnnlib")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.vnnlib_satisfactory import valid_assignment

    path, query_path, x0 = _cancellation_case(tmp_path)
    code, out, _ = run_solver(["verify", str(query_path), "--network", f"N={path}",
                            "--timeout", "60"], capsys)
    assert code == 0 and out.startswith("sat\n")
    assert valid_assignment(out, {"N": path}, query_path) == (True, "")
    outside = out.replace(repr(x0), repr(float(np.float32(0.5))), 1)
    assert not valid_assignment(outside, {"N": path}, query_path)[0]
    not_float32 = out.replace(repr(x0), "0.1", 1)
    assert valid_assignment(not_float32, {"N": path}, query_path) == (
        False, "inputs not representable in float32")


def _sigmoid_graph_case(tmp_path, bound: float) -> tuple[Path, Path]:
    """y = sigmoid(2 x) on x in [0, 1] (a graph-IR model), float32; the query asks y >= bound."""
    node_mul = helper.make_node("Mul", ["X", "two"], ["h"])
    node_sig = helper.make_node("Sigmoid", ["h"], ["Y"])
    graph = helper.make_graph(
        [node_mul, node_sig], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.float32([2.0]), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "sigmoid.onnx"
    onnx.save(model, path)
    query = tmp_path / "q.vnnlib"
    query.write_text("(vnnlib-version <2.0>)\n(declare-network N\n  (declare-input X float32 [1])\n"
                     "  (declare-output Y float32 [1])\n)\n(assert (>= X[0] 0.0))\n"
                     f"(assert (<= X[0] 1.0))\n(assert (>= Y[0] {bound}))\n")
    return path, query


def test_graph_model_float32_sat_by_onnxruntime_and_unsat_with_the_bound(tmp_path, capsys):
    """Graph-IR models: a float32 query is sat only with an assignment onnxruntime's float32
    evaluation confirms, and unsat when the margin beats the float32 rounding bound."""
    pytest.importorskip("vnnlib")
    path, query = _sigmoid_graph_case(tmp_path, 0.85)  # sigmoid(2) = 0.8808: reachable
    code, out, err = run_solver(["verify", str(query), "--network", f"N={path}",
                              "--timeout", "30"], capsys)
    assert code == 0 and out.splitlines()[0] == "sat", err
    x = float(out.splitlines()[2])
    assert float(onnxruntime_forward(path, np.float32([x]))[0]) >= 0.85
    path, query = _sigmoid_graph_case(tmp_path, 0.95)  # above sigmoid(2): unsat over the reals
    for extra in ([], ["--floats-as-reals"]):
        code, out, err = run_solver(["verify", str(query), "--network", f"N={path}",
                                  "--timeout", "30", *extra], capsys)
        assert (code, out) == (0, "unsat\n"), err
