"""Comparisons, Where, casts to bool / int, Pow and constant outputs (verify.graph.discrete and
the loader's rewrites): each model against onnxruntime, graph IBP / CROWN bounds and the float
error rule against sampling, and the solver's answers (a sat assignment replayed)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import run_solver
from verify.bounds import InputBatch
from verify.bounds.graph import crown_bounds, interval_bounds, output_bounds
from verify.errors import VerifyError
from verify.float_rounding import onnxruntime_forward
from verify.graph import discrete
from verify.graph.ir import Node
from verify.onnx_io import load_onnx
from verify.solver_cli import claimed_operators
from verify.spec import Box, OutputProperty, Specification

N = 4


def _const(name: str, value, dtype=np.float32):
    return helper.make_node("Constant", [], [name],
                            value=numpy_helper.from_array(np.asarray(value, dtype=dtype), name))


def _cast(x: str, y: str, to: int = TensorProto.FLOAT):
    return helper.make_node("Cast", [x], [y], to=to)


def _split():
    return helper.make_node("Split", ["X", "halves"], ["a", "b"], axis=0)


# name: (nodes, output shape, output element type); X is float32 [N]
MODELS = {
    "equal": ([_const("c", [0.0, 0.5, -1.0, 2.0]), helper.make_node("Equal", ["X", "c"], ["e"]),
               _cast("e", "Y")], [N], TensorProto.FLOAT),
    "cast_bool": ([_cast("X", "t", TensorProto.BOOL), _cast("t", "Y")], [N], TensorProto.FLOAT),
    "cast_int": ([_cast("X", "t", TensorProto.INT64), _cast("t", "Y")], [N], TensorProto.FLOAT),
    "cast_int_out": ([_cast("X", "t", TensorProto.INT32), _cast("t", "Y", TensorProto.INT64)],
                     [N], TensorProto.INT64),
    "cast_int8": ([_cast("X", "t", TensorProto.INT8), _cast("t", "Y")], [N], TensorProto.FLOAT),
    "where": ([_const("t", 0.25), _const("f", [10.0, -1.0, 0.0, 3.0]),
               helper.make_node("Greater", ["X", "t"], ["g"]),
               helper.make_node("Where", ["g", "X", "f"], ["Y"])], [N], TensorProto.FLOAT),
    "where_const_cond": ([_const("k", [True, False, True, False], np.bool_), _const("two", 2.0),
                          helper.make_node("Mul", ["X", "two"], ["x2"]),
                          helper.make_node("Where", ["k", "X", "x2"], ["Y"])], [N],
                         TensorProto.FLOAT),
    "pow_const_base": ([_const("base", 2.0), helper.make_node("Pow", ["base", "X"], ["Y"])], [N],
                       TensorProto.FLOAT),
    "shape": ([helper.make_node("Shape", ["X"], ["Y"])], [1], TensorProto.INT64),
}
for relation in ("Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal"):
    MODELS[f"vars_{relation}"] = (
        [_const("halves", [2, 2], np.int64), _split(), helper.make_node(relation, ["a", "b"], ["r"]),
         _cast("r", "Y")], [2], TensorProto.FLOAT)
MODELS["where_vars"] = ([_const("halves", [2, 2], np.int64), _split(),
                         helper.make_node("Less", ["a", "b"], ["r"]),
                         helper.make_node("Where", ["r", "a", "b"], ["Y"])], [2], TensorProto.FLOAT)
MODELS["pow_vars"] = ([_const("halves", [2, 2], np.int64), _split(),
                      helper.make_node("Pow", ["a", "b"], ["Y"])], [2], TensorProto.FLOAT)
for exponent in (0.0, 1.0, 2.0, 3.0, -1.0, 0.5, -0.5, 4.0, [2.0, 3.0, 1.5, -2.0]):
    MODELS[f"pow_{exponent}"] = ([_const("p", exponent), helper.make_node("Pow", ["X", "p"], ["Y"])],
                                 [N], TensorProto.FLOAT)


# casts between float precisions: the identity over the reals, rounded in floats (not in
# MODELS: onnxruntime's float16 rounding is not the real forward's identity)
ROUNDING_CASTS = {
    "cast_f16": ([_const("three", 3.0), _const("tenth", 0.1), _const("one", 1.0),
                  helper.make_node("Mul", ["X", "three"], ["a"]),
                  helper.make_node("Add", ["a", "tenth"], ["b"]),
                  _cast("b", "h", TensorProto.FLOAT16), _cast("h", "f"),
                  _cast("f", "d", TensorProto.DOUBLE), _cast("d", "e"),
                  helper.make_node("Add", ["e", "one"], ["Y"])], [N], TensorProto.FLOAT),
    "cast_f16_gap": ([_cast("X", "h", TensorProto.FLOAT16), _cast("h", "f"),
                      helper.make_node("Sub", ["f", "X"], ["Y"])], [N], TensorProto.FLOAT),
}
MODELS["cast_f64"] = ([_const("three", 3.0), helper.make_node("Mul", ["X", "three"], ["a"]),
                       _cast("a", "d", TensorProto.DOUBLE), _cast("d", "Y")], [N],
                      TensorProto.FLOAT)


def _save(path, name: str) -> str:
    nodes, shape, elem = {**MODELS, **ROUNDING_CASTS}[name]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [N])],
                              [helper.make_tensor_value_info("Y", elem, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _positive_only(name: str) -> bool:
    return name.startswith("pow_") and name not in ("pow_0.0", "pow_1.0", "pow_2.0", "pow_3.0",
                                                    "pow_4.0", "pow_const_base")


def _points(rng, name: str, k: int = 300) -> np.ndarray:
    """Inputs that hit the comparisons' ties: a grid of halves mixed with uniform values."""
    grid = rng.choice(np.arange(-2.0, 2.5, 0.25), (k, N))
    x = np.where(rng.random((k, N)) < 0.5, grid, rng.uniform(-2.5, 2.5, (k, N)))
    if _positive_only(name):
        x = np.abs(x) + 0.25
    return x.astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_matches_onnxruntime(tmp_path, name):
    path = _save(tmp_path / "m.onnx", name)
    net = load_onnx(path)
    x = _points(np.random.default_rng(0), name)
    ours = net.forward(x)
    theirs = np.stack([onnxruntime_forward(path, row) for row in x])
    assert ours.shape == theirs.shape
    assert np.allclose(ours, theirs, rtol=1e-5, atol=1e-6), name


def _box(rng, name: str):
    lo = rng.choice(np.arange(-2.0, 2.5, 0.25), N)
    width = np.where(rng.random(N) < 0.3, 0.0, rng.choice([0.25, 0.5, 1.0, 2.0], N))
    if _positive_only(name):
        lo = np.abs(lo) + 0.25
    return lo, lo + width


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bounds_contain_sampled_outputs(tmp_path, name):
    path = _save(tmp_path / "m.onnx", name)
    net = load_onnx(path)
    rng = np.random.default_rng(1)
    for _ in range(6):
        lower, upper = _box(rng, name)
        corners = np.stack([np.where(rng.random(N) < 0.5, lower, upper) for _ in range(16)])
        x = np.concatenate([corners, rng.uniform(lower, upper, (200, N))])
        y = net.forward(x)
        spec = Specification(Box(lower, upper), OutputProperty(np.eye(net.output_size)[:1], [0.0]))
        batch = InputBatch.from_specs([spec], torch.device("cpu"))
        with torch.no_grad():
            for bounds in (interval_bounds(net, batch), crown_bounds(net, batch)):
                lo, up = (t[0].numpy() for t in output_bounds(net, bounds))
                assert np.all(y >= lo) and np.all(y <= up), (name, lower, upper)


def test_intervals_decide_where_they_can():
    t = lambda v: torch.tensor([v], dtype=torch.float64)
    eq = Node("Compare", "eq", ["x"], "y", {"relation": "Equal", "rank": 1})
    p = {"relation": "Equal", "rank": 1, "other": t([0.0, 0.0, 0.0])}
    lo, up = discrete.interval(eq, [(t([0.0, 0.5, -1.0]), t([0.0, 1.0, 1.0]))], p)
    assert lo.tolist() == [[1.0, 0.0, 0.0]] and up.tolist() == [[1.0, 0.0, 1.0]]
    where = Node("Where", "w", ["c", "x"], "y")
    p = {"branches": [1, np.array([10.0, 10.0, 10.0])], "rank": 1}
    lo, up = discrete.interval(where, [(t([1.0, 0.0, 0.0]), t([1.0, 0.0, 1.0])),
                                       (t([0.0, 0.0, 0.0]), t([1.0, 1.0, 1.0]))], p)
    assert lo.tolist() == [[0.0, 10.0, 0.0]] and up.tolist() == [[1.0, 10.0, 10.0]]
    lo, up = discrete.power_interval(t([-2.0, -2.0, 1.0, -1.0]), t([1.0, 1.0, 4.0, 1.0]),
                                     torch.tensor([2.0, 3.0, -0.5, -1.0], dtype=torch.float64))
    assert lo.tolist() == [[0.0, -8.0, 0.5, -np.inf]] and up.tolist() == [[4.0, 1.0, 1.0, np.inf]]
    trunc = Node("Trunc", "t", ["x"], "y")
    lo, up = discrete.interval(trunc, [(t([-1.5, 2.7, 1.0]), t([-0.5, 3.2, 3e9]))],
                               {"range": torch.tensor([-2.0 ** 31, 2.0 ** 31], dtype=torch.float64)})
    assert lo.tolist() == [[-1.0, 2.0, -np.inf]] and up.tolist() == [[0.0, 3.0, np.inf]]


@pytest.mark.parametrize("op", ["Compare", "Where", "Trunc", "Power", "PowerOfVariables"])
def test_float_error_covers_perturbed_inputs(op):
    """|f(x + d) - f(x)| <= float_error for |d| <= E (the op's own rounding aside)."""
    rng = np.random.default_rng(2)
    n = 64
    lo = torch.as_tensor(rng.choice(np.arange(-2.0, 2.5, 0.5), n)[None])
    up = lo + torch.as_tensor(rng.choice([0.0, 0.25, 1.0], n)[None])
    if op.startswith("Power"):
        lo, up = lo.abs() + 0.5, up.abs() + 0.5
        lo, up = torch.minimum(lo, up), torch.maximum(lo, up)
    e = torch.as_tensor(rng.choice([0.0, 1e-3, 0.3], n)[None])
    params = {"rank": 1}
    if op == "Compare":
        node, params["relation"], params["other"] = Node(op, op, ["x"], "y"), "GreaterOrEqual", \
            torch.zeros(n, dtype=torch.float64)
        ins, errs = [(lo, up)], [e]
    elif op == "Where":
        node = Node(op, op, ["c", "x"], "y")
        params["branches"] = [1, np.full(n, 5.0)]
        c_lo = (lo > 0).double()
        ins, errs = [(c_lo, torch.maximum(c_lo, (up > 0).double())), (lo, up)], [0 * e, e]
    elif op == "Trunc":
        node, ins, errs = Node(op, op, ["x"], "y"), [(lo, up)], [e]
        params["range"] = torch.tensor([-2.0 ** 31, 2.0 ** 31], dtype=torch.float64)
    elif op == "Power":
        node, ins, errs = Node(op, op, ["x"], "y"), [(lo, up)], [e]
        params["exponent"] = torch.as_tensor(rng.choice([2.0, 3.0, -1.0, 0.5], n))
    else:  # x^y, x in [0.5, 3], y in [-2.5, 3]
        op = "Power"
        node = Node(op, op, ["x", "p"], "y")
        p_lo = torch.as_tensor(rng.choice([-2.5, -1.0, 0.0, 0.5, 2.0], n)[None])
        p_up = p_lo + torch.as_tensor(rng.choice([0.0, 0.25, 1.0], n)[None])
        e = e.clamp(max=0.1)  # the widened base stays positive
        ins, errs = [(lo, up), (p_lo, p_up)], [e, e.flip(-1)]
    bound = discrete.float_error(node, params, errs, ins, 2.0 ** -24, 2.0 ** -126, 4.0)
    f = discrete.FORWARDS[op]
    for _ in range(200):
        xs = [a + torch.as_tensor(rng.random(n)[None]) * (b - a) for a, b in ins]
        if op == "Where":
            xs[0] = torch.where(xs[0] > 0.5, 1.0, 0.0).double()
            xs[0] = torch.where(ins[0][0] == ins[0][1], ins[0][0], xs[0])
        moved = [x + torch.as_tensor(rng.uniform(-1, 1, n)[None]) * er for x, er in zip(xs, errs)]
        if op == "Power":  # the base
            moved[0] = moved[0].clamp(min=1e-3)
        gap = (f(node, moved, params) - f(node, xs, params)).abs()
        assert torch.all(gap <= bound + 1e-12), op


@pytest.mark.parametrize("form", [
    ("negative base", [_const("b", -2.0), helper.make_node("Pow", ["b", "X"], ["Y"])], "base <= 0"),
    ("cast to string", [_cast("X", "Y", TensorProto.STRING)], "element type STRING"),
])
def test_refusals_are_one_line(tmp_path, form):
    _, nodes, why = form
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [N])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(VerifyError) as exc:
        load_onnx(str(path))
    assert why in str(exc.value) and "\n" not in str(exc.value)


def test_supports_claims_the_new_ops():
    claimed = set(claimed_operators())
    assert {"Cast", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Pow", "Where",
            "Shape"} <= claimed


def _query(tmp_path, box, output: str, kind: str = "float32", out_kind: str = "float32",
           n_out: int = N) -> str:
    lines = ["(vnnlib-version <2.0>)", "(declare-network N", f"  (declare-input X {kind} [{N}])",
             f"  (declare-output Y {out_kind} [{n_out}])", ")"]
    for k, (lo, up) in enumerate(box):
        lines += [f"(assert (>= X[{k}] {lo}))", f"(assert (<= X[{k}] {up}))"]
    lines.append(output)
    path = tmp_path / "q.vnnlib"
    path.write_text("\n".join(lines) + "\n")
    return str(path)



@pytest.mark.slow
def test_solver_answers_and_replays_sat(tmp_path, capsys):
    pytest.importorskip("vnnlib")
    path = _save(tmp_path / "where.onnx", "where")
    box = [(0.0, 0.2), (0.5, 1.0), (-1.0, 1.0), (0.5, 0.5)]
    # Y0 = 10 (x0 <= 0.25), Y1 = x1: Y0 <= 9 unsat over the reals; Y2 >= 0.9 sat (x2 > 0.25).
    # float32 unsat needs the ops' float error rules (discrete.float_error) in float_rounding
    for output, kind, expected in (("(assert (<= Y[0] 9.0))", "real", "unsat"),
                                   ("(assert (<= Y[0] 9.0))", "float32", "unsat"),
                                   ("(assert (>= Y[2] 0.9))", "float32", "sat")):
        query = _query(tmp_path, box, output, kind, kind)
        code, out, err = run_solver(["verify", query, "--network", f"N={path}", "--timeout", "60"],
                                capsys)
        assert code == 0 and out.splitlines()[0] == expected, err
        if expected == "sat":
            x = np.array([float(v) for v in out.splitlines()[2:2 + N]])
            assert onnxruntime_forward(path, x.astype(np.float32))[2] >= 0.9
    shape = _save(tmp_path / "shape.onnx", "shape")
    for bound, expected in ((5, "unsat"), (4, "sat")):
        query = _query(tmp_path, box, f"(assert (>= Y[0] {bound}))", "real", "int64", 1)
        code, out, err = run_solver(["verify", query, "--network", f"N={shape}", "--timeout", "60"],
                                capsys)
        assert code == 0 and out.splitlines()[0] == expected, err


def test_float_casts_are_identities_rounded_to_the_target(tmp_path):
    """Casts float32 -> float16 -> float32 -> float64 -> float32: the real forward is the
    identity; float_rounding's bound covers onnxruntime's float32 evaluation (float16 rounding,
    relative 2^-11) on random points of random boxes, and a widening cast costs nothing."""
    from verify.float_rounding import evaluation_error

    path = _save(tmp_path / "m.onnx", "cast_f16")
    net = load_onnx(path)
    rng = np.random.default_rng(3)
    worst = 0.0
    for _ in range(4):
        lower = rng.uniform(-30, 30, N)
        upper = lower + rng.choice([0.0, 0.5, 8.0], N)
        x = rng.uniform(lower, upper, (200, N)).astype(np.float32).astype(np.float64)
        x = np.clip(x, lower, upper)
        real = x * 3 + 0.1 + 1
        assert np.allclose(net.forward(x), real, rtol=1e-12)
        bound = evaluation_error(path, lower, upper)
        gap = np.abs(np.stack([onnxruntime_forward(path, row) for row in x]) - real)
        assert np.all(gap <= bound)
        worst = max(worst, float((gap / bound).max()))
    assert worst > 0.25  # the float16 rounding is really charged, not a much larger bound
    wide = evaluation_error(_save(tmp_path / "w.onnx", "cast_f64"), np.full(N, -2.0),
                            np.full(N, 2.0))
    plain = tmp_path / "p.onnx"  # the same Mul without the casts
    graph = helper.make_graph([_const("three", 3.0),
                               helper.make_node("Mul", ["X", "three"], ["Y"])], "p",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [N])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [N])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(plain))
    # (up to the walk's 1e-9 self-slack per node)
    assert np.allclose(wide, evaluation_error(str(plain), np.full(N, -2.0), np.full(N, 2.0)),
                       rtol=1e-8, atol=0)


def test_solver_through_a_float16_cast(tmp_path, capsys):
    """Y = float32(float16(X)) - X on X in [2048.25, 2048.75]: 0 over the reals; in float32
    every such X rounds to 2048 in float16 (spacing 2 there), so Y = 2048 - X <= -0.25, while
    |Y| <= 1 (half a float16 spacing) anywhere."""
    pytest.importorskip("vnnlib")
    path = _save(tmp_path / "gap.onnx", "cast_f16_gap")
    box = [(2048.25, 2048.75)] * N
    for output, extra, expected in (("(assert (<= Y[0] -0.2))", [], "sat"),
                                    ("(assert (<= Y[0] -0.2))", ["--floats-as-reals"], "unsat"),
                                    ("(assert (>= Y[1] 1.5))", [], "unsat")):
        query = _query(tmp_path, box, output)
        code, out, err = run_solver(["verify", query, "--network", f"N={path}", "--timeout", "60",
                                     *extra], capsys)
        assert code == 0 and out.splitlines()[0] == expected, err
        if expected == "sat":
            x = np.array([float(v) for v in out.splitlines()[2:2 + N]])
            assert np.all(x == x.astype(np.float32)) and 2048.25 <= x[0] <= 2048.75
            assert onnxruntime_forward(path, x)[0] <= -0.2


def test_power_of_two_variables(tmp_path, capsys):
    """x^y of two variables: onnxruntime agrees on random points (test_model_matches_onnxruntime
    above), the interval is exact at the corners of a positive base's box and unbounded where
    the base may be negative (the float bound then refuses in one line); the solver proves and
    finds x^y = 4 on x, y in [1, 2] (sat checked by onnxruntime)."""
    from verify.float_rounding import FloatSemanticsError, evaluation_error

    t = lambda v: torch.tensor([v], dtype=torch.float64)
    lo, up = discrete.variable_power_interval(t([0.5, 2.0, -1.0, 0.0]), t([2.0, 3.0, 1.0, 1.0]),
                                              t([-1.0, 0.5, 2.0, 0.0]), t([2.0, 2.0, 2.0, 2.0]))
    assert torch.allclose(lo, t([0.25, 2 ** 0.5, -np.inf, 0.0]))
    assert torch.allclose(up, t([4.0, 9.0, np.inf, 1.0]))
    path = _save(tmp_path / "pow.onnx", "pow_vars")
    rng = np.random.default_rng(5)
    x = rng.uniform([0.5, 0.5, -1.0, -1.0], [2.0, 2.0, 2.0, 2.0], (300, N))
    y = np.stack([onnxruntime_forward(path, row) for row in x])
    box = (np.array([0.5, 0.5, -1.0, -1.0]), np.array([2.0, 2.0, 2.0, 2.0]))
    bound = evaluation_error(path, *box)
    real = x[:, :2] ** x[:, 2:]
    assert np.all(np.abs(y - real) <= bound)
    with pytest.raises(FloatSemanticsError, match="not provably positive") as exc:
        evaluation_error(path, np.array([-0.5, 0.5, 1.0, 1.0]), np.array([2.0, 2.0, 2.0, 2.0]))
    assert "\n" not in str(exc.value)
    pytest.importorskip("vnnlib")
    square = [(1.0, 2.0)] * N
    for output, expected in (("(assert (>= Y[0] 4.001))", "unsat"),
                             ("(assert (>= Y[0] 3.99))", "sat")):
        query = _query(tmp_path, square, output, n_out=2)
        code, out, err = run_solver(["verify", query, "--network", f"N={path}", "--timeout", "60"],
                                    capsys)
        assert code == 0 and out.splitlines()[0] == expected, err
        if expected == "sat":
            x = np.array([float(v) for v in out.splitlines()[2:2 + N]])
            assert onnxruntime_forward(path, x)[0] >= 3.99


@pytest.mark.parametrize("before, cast_kept", [
    ([helper.make_node("Greater", ["X", "zero"], ["c"])], False),  # a 0 / 1 tensor: alias
    ([helper.make_node("Greater", ["X", "zero"], ["b"]),
      helper.make_node("Identity", ["b"], ["c"])], False),  # through an alias: still a Compare
    ([helper.make_node("Relu", ["X"], ["c"])], True),  # any value: rounds in float semantics
])
def test_cast_finds_its_producer_in_the_readers_map(before, cast_kept):
    """A float Cast of a comparison's 0 / 1 output is an identity (no node); of anything else
    it stays a Cast (rounding to the target in float semantics)."""
    from verify.graph.onnx_graph import GraphReader

    nodes = [_const("zero", np.zeros(N)), *before, _cast("c", "Y", TensorProto.FLOAT16)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "X", TensorProto.FLOAT, [N])], [helper.make_tensor_value_info("Y", TensorProto.FLOAT16,
                                                                      [N])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ops = [node.op for node in GraphReader(model, "m.onnx").read().nodes]
    assert ("Cast" in ops) == cast_kept and ops.count("Compare") == (not cast_kept)
