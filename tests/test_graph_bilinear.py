"""Products and quotients of variable tensors (verify.graph.bilinear): interval and McCormick
rules against sampling, the loader's reading against onnxruntime, graph IBP / CROWN bounds and
the float32 error bound against sampled evaluations, and the solver on square / quotient cases."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import run_solver
from verify.bounds import InputBatch
from verify.bounds.graph import crown_bounds, interval_bounds, output_bounds
from verify.errors import InputError
from verify.float_rounding import evaluation_error, onnxruntime_forward, round_into_box
from verify.graph import bilinear
from verify.graph.ir import Node
from verify.onnx_io import load_onnx
from verify.spec import Box, OutputProperty, Specification


def _boxes(rng, n: int, across_zero: bool):
    lo = rng.uniform(-3, 3, n)
    up = lo + rng.uniform(0.01, 3, n)
    if not across_zero:
        lo, up = np.where(rng.random(n) < 0.5, (lo.clip(0.1), up.clip(0.2) + 0.1),
                          (-(up.clip(0.2) + 0.1), -lo.clip(0.1)))
    return torch.as_tensor(lo[None]), torch.as_tensor(up[None])


def _samples(rng, lo, up, k=400):
    t = torch.as_tensor(rng.random((k, lo.shape[1])))
    return lo + t * (up - lo)


@pytest.mark.parametrize("op", ["Product", "Square", "Quotient", "ConstantOverVariable"])
def test_interval_contains_sampled_values(op):
    rng = np.random.default_rng(0)
    n = 200
    a_lo, a_up = _boxes(rng, n, True)
    b_lo, b_up = _boxes(rng, n, op == "Product")
    params = {"rank": 1}
    if op == "Square":
        node, ins = Node("Product", "sq", ["a", "a"], "y"), [(a_lo, a_up), (a_lo, a_up)]
    elif op == "ConstantOverVariable":
        params["numerator"] = torch.as_tensor(rng.uniform(-2, 2, n))
        node, ins = Node("Quotient", "q", ["b"], "y", params), [(b_lo, b_up)]
    else:
        node, ins = Node(op, op, ["a", "b"], "y"), [(a_lo, a_up), (b_lo, b_up)]
    lo, up = bilinear.interval(node, ins, params)
    a, b = _samples(rng, a_lo, a_up), _samples(rng, b_lo, b_up)
    xs = {"Square": [a, a], "ConstantOverVariable": [b]}.get(op, [a, b])
    y = bilinear.FORWARDS[node.op](node, xs, params)
    assert torch.all(y >= lo) and torch.all(y <= up)
    if op == "Product":  # exact: the bounds are products of corners, reached there
        a_c = torch.cat([a_lo, a_lo, a_up, a_up])
        b_c = torch.cat([b_lo, b_up, b_lo, b_up])
        corners = a_c * b_c
        assert torch.allclose(lo[0], corners.min(0).values, rtol=1e-9, atol=1e-12)
        assert torch.allclose(up[0], corners.max(0).values, rtol=1e-9, atol=1e-12)


def test_quotient_unbounded_when_denominator_spans_zero():
    node = Node("Quotient", "q", ["a", "b"], "y")
    lo, up = bilinear.interval(node, [(torch.tensor([[1.0]]), torch.tensor([[2.0]])),
                                      (torch.tensor([[-1.0]]), torch.tensor([[1.0]]))], {"rank": 1})
    assert lo.item() == -np.inf and up.item() == np.inf


def test_mccormick_planes_hold():
    rng = np.random.default_rng(1)
    a_lo, a_up = _boxes(rng, 300, True)
    b_lo, b_up = _boxes(rng, 300, True)
    la, lb, lc, ua, ub, uc = bilinear.product_relaxation(a_lo, a_up, b_lo, b_up)
    for _ in range(5):
        a, b = _samples(rng, a_lo, a_up, 50), _samples(rng, b_lo, b_up, 50)
        assert torch.all(la * a + lb * b + lc <= a * b + 1e-9)
        assert torch.all(a * b <= ua * a + ub * b + uc + 1e-9)


def _model(path, kind: str):
    """X (1, 4): 'product': Y = (X W1) * (X W2) + X W3; 'quotient': Y = (X W1) / (1.5 +
    sigmoid(X W2)) - 2 / (3 + X * X) (a square and a constant numerator)."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), f"W{k}")
             for k in range(1, 4)]
    inits += [numpy_helper.from_array(np.float32(v), n) for n, v in
              (("c15", 1.5), ("c2", 2.0), ("c3", 3.0))]
    mm = [helper.make_node("MatMul", ["X", f"W{k}"], [f"m{k}"]) for k in range(1, 4)]
    if kind == "product":
        nodes = mm + [helper.make_node("Mul", ["m1", "m2"], ["p"]),
                      helper.make_node("Add", ["p", "m3"], ["Y"])]
    else:
        nodes = mm + [helper.make_node("Sigmoid", ["m2"], ["s"]),
                      helper.make_node("Add", ["s", "c15"], ["d"]),
                      helper.make_node("Div", ["m1", "d"], ["q"]),
                      helper.make_node("Mul", ["X", "X"], ["sq"]),
                      helper.make_node("Add", ["sq", "c3"], ["d2"]),
                      helper.make_node("Div", ["c2", "d2"], ["r"]),
                      helper.make_node("ReduceSum", ["r"], ["rs"], keepdims=1, axes=[1]),
                      helper.make_node("Sub", ["q", "rs"], ["Y"])]
    opset = 12  # ReduceSum with an axes attribute
    graph = helper.make_graph(nodes, kind,
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("kind", ["product", "quotient"])
def test_bounds_and_float32_error_on_bilinear_models(tmp_path, kind):
    path = _model(tmp_path / f"{kind}.onnx", kind)
    net = load_onnx(path)
    rng = np.random.default_rng(3)
    lower, upper = rng.uniform(-1, 0, 4), rng.uniform(0, 1, 4)
    points = np.stack([round_into_box(x, lower, upper)
                       for x in rng.uniform(lower, upper, (200, 4))])
    points = points.astype(np.float64)
    real = net.forward(points)
    ort32 = np.stack([onnxruntime_forward(path, x) for x in points])
    assert np.allclose(real, ort32, rtol=1e-4, atol=1e-4)
    spec = Specification(Box(lower, upper), OutputProperty(np.eye(3)[:1], [0.0]))
    batch = InputBatch.from_specs([spec], torch.device("cpu"))
    with torch.no_grad():
        for bounds in (interval_bounds(net, batch), crown_bounds(net, batch)):
            lo, up = (t[0].numpy() for t in output_bounds(net, bounds))
            assert np.all(real >= lo) and np.all(real <= up)
    error = evaluation_error(path, lower, upper)
    assert np.all(np.isfinite(error))
    assert np.all(np.abs(ort32 - real) <= error)


def _query(tmp_path, n_in: int, box: list[tuple[float, float]], output: str):
    lines = ["(vnnlib-version <2.0>)", "(declare-network N",
             f"  (declare-input X float32 [{n_in}])", "  (declare-output Y float32 [1])", ")"]
    for k, (lo, up) in enumerate(box):
        lines += [f"(assert (>= X[{k}] {lo}))", f"(assert (<= X[{k}] {up}))"]
    lines.append(output)
    path = tmp_path / "q.vnnlib"
    path.write_text("\n".join(lines) + "\n")
    return path


def _single_node(tmp_path, node, n_in: int):
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [n_in])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def test_solver_square_and_quotient(tmp_path, capsys):
    pytest.importorskip("vnnlib")
    square = _single_node(tmp_path, helper.make_node("Mul", ["X", "X"], ["Y"]), 1)
    query = _query(tmp_path, 1, [(-500.0, 500.0)], "(assert (<= Y[0] -1.0))")
    code, out, err = run_solver(["verify", str(query), "--network", f"N={square}", "--timeout", "60"],
                            capsys)
    assert (code, out) == (0, "unsat\n"), err
    # y = x0 / x1 on [4, 8] x [2, 4] lies in [1, 4]: y >= 5 is unsat, y >= 3.9 is sat (8 / 2).
    for bound, expected in ((5.0, "unsat"), (3.9, "sat")):
        b = helper.make_graph(
            [helper.make_node("Split", ["X"], ["a", "b"], axis=0),
             helper.make_node("Div", ["a", "b"], ["Y"])], "g",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
        model = helper.make_model(b, opset_imports=[helper.make_opsetid("", 17)])
        path = tmp_path / "div.onnx"
        onnx.save(model, str(path))
        query = _query(tmp_path, 2, [(4.0, 8.0), (2.0, 4.0)], f"(assert (>= Y[0] {bound}))")
        code, out, err = run_solver(["verify", str(query), "--network", f"N={path}", "--timeout", "60"],
                                capsys)
        assert code == 0 and out.splitlines()[0] == expected, err
        if expected == "sat":
            x = np.array([float(v) for v in out.splitlines()[2:4]])
            assert onnxruntime_forward(path, x.astype(np.float32))[0] >= bound


def test_alpha_crown_behind_a_product_keeps_crowns_bound(tmp_path):
    """relu(W x) * sigmoid(V x): the Relu slopes do not reach the margin through the Product's
    interval; alpha-CROWN answers with CROWN's bound (was a RuntimeError from autograd), which
    holds at sampled points."""
    from verify import backends
    from verify.spec import robustness_spec

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "V"),
             numpy_helper.from_array(rng.normal(size=(5, 3)).astype(np.float32), "U")]
    nodes = [helper.make_node("MatMul", ["X", "W"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["X", "V"], ["b"]), helper.make_node("Sigmoid", ["b"], ["s"]),
             helper.make_node("Mul", ["r", "s"], ["g"]), helper.make_node("MatMul", ["g", "U"], ["Y"])]
    graph = helper.make_graph(nodes, "gate",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])],
                              inits)
    path = tmp_path / "gate.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    net = load_onnx(path)
    x = rng.uniform(-1, 1, 4)
    label = int(np.argmax(net.forward(x)))
    spec = robustness_spec(4, 3, x, label, 0.3, "inf", None)
    alpha, crown = (backends.certify_specs(net, [spec], m)[0] for m in ("alpha-crown", "crown"))
    rows = lambda cert: np.array([v for j, v in enumerate(cert.margin_lower) if j != label])
    assert np.allclose(rows(alpha), rows(crown))
    sampled = np.min([spec.output.values(y) for y in net.forward(
        x + rng.uniform(-0.3, 0.3, (2000, 4)))], axis=0)
    assert np.all(rows(alpha) <= sampled + 1e-9)
    with pytest.raises(InputError, match="graph networks are bounded in float64"):
        backends.certify_specs(net, [spec], "crown", dtype="float32")
