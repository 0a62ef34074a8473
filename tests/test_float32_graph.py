"""float32 semantics on graph-IR models (residual adds, pooling, concat, smooth activations,
softmax): the evaluation-error bound of verify.float_rounding holds against onnxruntime's float32
evaluation and the own float32 replay, compared with the loader's float64 forward (onnxruntime's
CPU provider has no double Conv or LeakyRelu), on many points of the box; a query unsat over the
reals but sat in float32 is never answered unsat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from conftest import run_solver
from verify.float_rounding import (evaluation_error, float_session, graph_float_forward,
                                   onnxruntime_forward, round_into_box, session_forward)
from verify.onnx_io import load_onnx


class _Builder:
    """Nodes and initializers of one ONNX graph, in float32 or float64."""

    def __init__(self, rng, dtype):
        self.rng, self.dtype = rng, dtype
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, value) -> str:
        self.count += 1
        name = f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value).astype(self.dtype), name))
        return name

    def ints(self, value) -> str:
        self.count += 1
        name = f"i{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        self.count += 1
        out = f"t{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def weights(self, *shape, scale=1.0):
        return self.rng.standard_normal(shape) * scale / np.sqrt(np.prod(shape[1:]))

    def save(self, y: str, path, input_shape: list, elem: int = TensorProto.FLOAT,
             output_shape=None):
        """The graph X -> ... -> y, its output renamed Y, as an opset-13 model at `path`."""
        self.nodes.append(helper.make_node("Identity", [y], ["Y"]))
        graph = helper.make_graph(self.nodes, Path(path).stem,
                                  [helper.make_tensor_value_info("X", elem, input_shape)],
                                  [helper.make_tensor_value_info("Y", elem, output_shape)],
                                  self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.save(model, str(path))
        return path


def _conv_residual(b: _Builder, x: str) -> str:
    """(1, 2, 6, 6): Conv + BN + Relu, a residual Add, MaxPool, AveragePool, Sigmoid, Concat,
    Gemm, Tanh, Softmax."""
    h = b.op("Conv", [x, b.const(b.weights(2, 2, 3, 3, scale=2)), b.const(b.rng.normal(size=2))],
             pads=[1, 1, 1, 1])
    h = b.op("BatchNormalization", [h, b.const(b.rng.uniform(0.5, 2, 2)),
                                    b.const(b.rng.normal(size=2)), b.const(b.rng.normal(size=2)),
                                    b.const(b.rng.uniform(0.5, 2, 2))])
    h = b.op("Relu", [h])
    r = b.op("Add", [h, x])  # residual
    p = b.op("MaxPool", [r], kernel_shape=[2, 2], strides=[2, 2])  # (1, 2, 3, 3)
    a = b.op("AveragePool", [r], kernel_shape=[2, 2], strides=[2, 2])
    s = b.op("Sigmoid", [b.op("Mul", [a, b.const(3.0)])])
    c = b.op("Concat", [p, s], axis=1)  # (1, 4, 3, 3)
    f = b.op("Flatten", [c])  # (1, 36)
    g = b.op("Gemm", [f, b.const(b.weights(36, 6, scale=3)), b.const(b.rng.normal(size=6))])
    t = b.op("Tanh", [g])
    y = b.op("Gemm", [t, b.const(b.weights(4, 6, scale=4)), b.const(b.rng.normal(size=4))],
             transB=1)
    return b.op("Softmax", [y], axis=1)


def _mlp_mixed(b: _Builder, x: str) -> str:
    """(1, 6): a cancellation x + 4096 - 4096, MatMul, LeakyRelu, Max of two tensors, Transpose,
    ReduceMean, Exp, Softplus, Sub of variables, Clip, a residual."""
    h = b.op("Sub", [b.op("Add", [x, b.const(4096.0)]), b.const(4096.0)])
    h = b.op("MatMul", [h, b.const(b.weights(6, 8, scale=3))])
    h = b.op("Add", [h, b.const(b.rng.normal(size=8))])
    u = b.op("LeakyRelu", [h], alpha=0.1)
    v = b.op("Softplus", [b.op("MatMul", [x, b.const(b.weights(6, 8, scale=2))])])
    m = b.op("Max", [u, v])
    w = b.op("Reshape", [m, b.ints([-1, 2, 4])])
    w = b.op("Transpose", [w], perm=[0, 2, 1])  # (1, 4, 2)
    mean = b.op("ReduceMean", [w], axes=[2], keepdims=0)  # (1, 4)
    e = b.op("Exp", [b.op("Mul", [mean, b.const(0.5)])])
    d = b.op("Sub", [e, b.op("Clip", [mean, b.const(-1.0), b.const(1.0)])])
    r = b.op("Add", [d, b.op("MatMul", [x, b.const(b.weights(6, 4))])])  # residual from x
    return b.op("Div", [r, b.const(3.0)])


def _deep_residual(b: _Builder, x: str) -> str:
    """(1, 8): four Gemm + Relu blocks with two residual Adds and mixed-sign weights (the
    backward error pass and its tightening of the inner Relus' errors run), a final Gemm."""
    h = x
    for block in range(4):
        z = b.op("Gemm", [h, b.const(b.weights(8, 8, scale=2)), b.const(b.rng.normal(size=8))])
        z = b.op("Relu", [z])
        h = b.op("Add", [z, h]) if block % 2 else z
    return b.op("Gemm", [h, b.const(b.weights(8, 4, scale=2)), b.const(b.rng.normal(size=4))])


BUILDERS = {"conv_residual": (_conv_residual, [1, 2, 6, 6]), "mlp_mixed": (_mlp_mixed, [1, 6]),
            "deep_residual": (_deep_residual, [1, 8])}


def _save(path: Path, kind: str, seed: int, elem) -> Path:
    build, shape = BUILDERS[kind]
    dtype = np.float32 if elem == TensorProto.FLOAT else np.float64
    b = _Builder(np.random.default_rng(seed), dtype)
    y = build(b, "X")
    return b.save(y, path, ["N", *shape[1:]], elem)


def _ort(path: Path, x: np.ndarray, dtype) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    batch = x.reshape(len(x), *shape[1:]).astype(dtype)
    return session.run(None, {"X": batch})[0].reshape(len(x), -1).astype(np.float64)


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_graph_error_bound_holds_against_onnxruntime_float32(tmp_path, kind, seed):
    rng = np.random.default_rng(100 + seed)
    path32 = _save(tmp_path / "f32.onnx", kind, seed, TensorProto.FLOAT)
    net = load_onnx(path32)
    assert getattr(net, "is_graph", False)
    n = net.input_size
    lower = rng.uniform(-2, 0, n)
    upper = lower + rng.uniform(0.1, 2, n)
    error = evaluation_error(path32, lower, upper)
    assert error.shape == (net.output_size,)
    assert np.all(np.isfinite(error)) and np.all(error > 0)
    points = rng.uniform(lower, upper, (300, n))
    points = np.stack([round_into_box(x, lower, upper) for x in points]).astype(np.float64)
    real64 = net.forward(points)  # N(x): the loader's float64 forward, what certifiers bound
    float32 = _ort(path32, points, np.float32)
    gaps = np.abs(float32 - real64)
    assert np.all(gaps <= error), (gaps.max(0), error)
    for x, real in zip(points[:20], real64[:20]):  # the own replay is a float32 evaluation too
        assert np.all(np.abs(graph_float_forward(path32, x) - real) <= error)
    # The rounding is there to be bounded, and the bound is not vacuous.
    assert gaps.max() > 0
    assert np.max(error) < 0.05


def test_float16_bound_holds_for_the_own_replay(tmp_path):
    path = _save(tmp_path / "f32.onnx", "mlp_mixed", 3, TensorProto.FLOAT)
    rng = np.random.default_rng(3)
    lower, upper = np.full(6, -0.5), np.full(6, 0.5)
    error16 = evaluation_error(path, lower, upper, "float16")
    assert np.all(error16 > evaluation_error(path, lower, upper, "float32"))
    net = load_onnx(path)
    for x in rng.uniform(lower, upper, (20, 6)):
        xf = round_into_box(x, lower, upper, "float16").astype(np.float64)
        gap = np.abs(graph_float_forward(path, xf, "float16") - net.forward(xf))
        assert np.all(gap <= error16)


def _cancel_graph(tmp_path: Path) -> Path:
    """y = tanh(((x + 16384) - x) - 16384): 0 over the reals; in float32 x + 16384 keeps x to a
    multiple of 2^-9, so y is -2^-10 or 2^-10 away from 0 for most x (a residual Sub of two
    variables does the cancelling)."""
    def build(b):
        a = b.op("Add", ["X", b.const([16384.0])])
        d = b.op("Sub", [a, "X"])
        return b.op("Tanh", [b.op("Sub", [d, b.const([16384.0])])])
    return _one_input_model(tmp_path, build, "cancel")


def test_unsat_over_reals_but_sat_in_float32_is_not_unsat(tmp_path, capsys):
    pytest.importorskip("vnnlib")
    path = _cancel_graph(tmp_path)
    xs = np.float32(np.linspace(0.01, 1, 400))
    ys = np.array([onnxruntime_forward(path, np.float32([x]))[0] for x in xs])
    assert ys.min() <= -0.0005  # the violation exists in float32
    query = tmp_path / "q.vnnlib"
    query.write_text("(vnnlib-version <2.0>)\n(declare-network N\n  (declare-input X float32 [1])\n"
                     "  (declare-output Y float32 [1])\n)\n(assert (>= X[0] 0.01))\n"
                     "(assert (<= X[0] 1.0))\n(assert (<= Y[0] -0.0005))\n")
    argv = ["verify", str(query), "--network", f"N={path}", "--timeout", "30"]
    code, out, err = run_solver(argv + ["--floats-as-reals"], capsys)
    assert (code, out) == (0, "unsat\n"), err  # y = 0 over the reals
    code, out, err = run_solver(argv, capsys)
    assert code == 0 and out.splitlines()[0] in ("sat", "unknown"), err
    error = evaluation_error(path, np.array([0.01]), np.array([1.0]))
    assert error[0] >= abs(ys).max()


def test_graph_float32_unsat_with_the_bound(tmp_path, capsys):
    """The conv-residual model: a margin far above the float32 error is proved in float32."""
    pytest.importorskip("vnnlib")
    path = _save(tmp_path / "f32.onnx", "conv_residual", 0, TensorProto.FLOAT)
    net = load_onnx(path)
    lower, upper = np.full(72, -0.05), np.full(72, 0.05)
    y0 = net.forward(np.zeros(72))
    top = int(np.argmax(y0))
    bound = float(y0[top]) + 0.5  # softmax output y_top >= that: unreachable near 0
    lines = ["(vnnlib-version <2.0>)", "(declare-network N",
             "  (declare-input X float32 [1, 2, 6, 6])", "  (declare-output Y float32 [1, 4])", ")"]
    for k in range(72):
        idx = np.unravel_index(k, (1, 2, 6, 6))
        name = "X[" + ",".join(str(i) for i in idx) + "]"
        lines += [f"(assert (>= {name} -0.05))", f"(assert (<= {name} 0.05))"]
    lines.append(f"(assert (>= Y[0,{top}] {min(bound, 0.999)}))")
    query = tmp_path / "q.vnnlib"
    query.write_text("\n".join(lines) + "\n")
    code, out, err = run_solver(["verify", str(query), "--network", f"N={path}", "--timeout", "60"],
                             capsys)
    assert (code, out) == (0, "unsat\n"), err


def _one_input_model(tmp_path: Path, build, name: str = "m") -> Path:
    """X [1] -> build(builder) -> Y [1], float32, saved as NAME.onnx."""
    b = _Builder(np.random.default_rng(0), np.float32)
    y = build(b)
    return b.save(y, tmp_path / f"{name}.onnx", [1], output_shape=[1])


@pytest.mark.parametrize("case", ["constant_cancellation", "cast_to_bfloat16"])
def test_unmodelled_roundings_are_refused(tmp_path, case):
    """A weight computed as (16384.1 + 1) - 16384 from initializers (two float operations: the
    float32 folding keeps it to 2^-10), and a Cast to bfloat16 in a float32 model (casts to
    float16 / float64 are bounded: tests/test_graph_discrete.py), round where the graph IR
    reads exact values: no bound, hence no unsat."""
    from verify.float_rounding import FloatSemanticsError

    def constant(b):
        c = b.op("Sub", [b.op("Add", [b.const([16384.1]), b.const([1.0])]), b.const([16384.0])])
        return b.op("Mul", ["X", c])

    def cast(b):
        return b.op("Cast", [b.op("Mul", ["X", b.const([3.0])])], to=TensorProto.BFLOAT16)

    path = _one_input_model(tmp_path, constant if case == "constant_cancellation" else cast)
    load_onnx(path)  # readable over the reals
    with pytest.raises(FloatSemanticsError):
        evaluation_error(path, np.array([0.0]), np.array([1.0]))


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_softmax_bound_holds_with_a_wide_spread(tmp_path, scale):
    """Y = softmax(X W) over 10 classes: at scale 40 the logits spread over hundreds, where the
    exponent's rounding (x_j - max, relative) dominates onnxruntime's error."""
    rng = np.random.default_rng(5)
    b = _Builder(rng, np.float32)
    y = b.op("Softmax", [b.op("MatMul", ["X", b.const(rng.standard_normal((5, 10)) * scale)])],
             axis=1)
    path = b.save(y, tmp_path / "softmax.onnx", ["N", 5])
    net = load_onnx(path)
    lower, upper = np.full(5, -1.0), np.full(5, 1.0)
    error = evaluation_error(path, lower, upper)
    points = np.stack([round_into_box(x, lower, upper)
                       for x in rng.uniform(lower, upper, (500, 5))]).astype(np.float64)
    gaps = np.abs(_ort(path, points, np.float32) - net.forward(points))
    assert np.all(gaps <= error), (gaps.max(0), error)
    assert 0 < gaps.max() and np.max(error) < 1e-3


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("element_type", ["float32", "float16"])
def test_backward_pass_is_at_most_the_walk(tmp_path, kind, element_type):
    """The bound with the backward error pass is at most the forward walk's alone (the bound
    before it), on every output; on the deep residual net it is several times smaller."""
    path = _save(tmp_path / "f32.onnx", kind, 4, TensorProto.FLOAT)
    n = load_onnx(path).input_size
    rng = np.random.default_rng(4)
    lower = rng.uniform(-1, 0, n)
    upper = lower + rng.uniform(0.1, 1, n)
    new = evaluation_error(path, lower, upper, element_type)
    old = evaluation_error(path, lower, upper, element_type, backward=False)
    assert np.all(new <= old), (new, old)
    if kind == "deep_residual":
        assert np.max(new / old) < 0.5, (new, old)


def _coherent_model(tmp_path: Path, n: int = 32) -> tuple[Path, np.ndarray]:
    """Y = 1^T relu(h Q + 10) Q^T... read as Y = sum_i h_i + const: h = (X + 16384) - 16384
    rounds every X_i to a multiple of 2^-9 in float32, Q a random orthogonal n x n mixing
    (the Relus active on [0, 1]^n), so the n rounding errors reach Y summed with sign +1: at
    points whose every X_i lies 3/8 of the way between multiples of 2^-9, all n errors have
    one sign (an adversarial, ill-conditioned input), |Y_fl - Y| about n 3 2^-12."""
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    b = _Builder(rng, np.float32)
    h = b.op("Sub", [b.op("Add", ["X", b.const(16384.0)]), b.const(16384.0)])
    z = b.op("Relu", [b.op("Add", [b.op("MatMul", [h, b.const(q)]), b.const(np.full(n, 10.0))])])
    y = b.op("MatMul", [z, b.const(q.T @ np.ones((n, 1)))])
    path = b.save(y, tmp_path / "coherent.onnx", ["N", n])
    ks = rng.integers(0, 511, (50, n))
    points = (ks * 2.0 ** -9 + 3 * 2.0 ** -12).astype(np.float32).astype(np.float64)
    return path, points


def test_bound_holds_at_coherent_worst_case_inputs(tmp_path):
    """Ill-conditioned sums at adversarial points: the deviation is close to the worst case,
    the bound contains it, and with the backward pass it is within a small factor of it (the
    forward walk alone charges the errors through |Q^T 1| |Q|, several times more)."""
    path, points = _coherent_model(tmp_path)
    net = load_onnx(path)
    lower, upper = np.zeros(32), np.ones(32)
    error = evaluation_error(path, lower, upper)
    gaps = np.abs(_ort(path, points, np.float32) - net.forward(points))
    assert gaps.min() > 0.8 * 32 * 3 * 2.0 ** -12  # the errors did add up with one sign
    assert np.all(gaps <= error), (gaps.max(), error)
    for x in points[:5]:
        assert np.all(np.abs(graph_float_forward(path, x) - net.forward(x)) <= error)
    walk = evaluation_error(path, lower, upper, backward=False)
    assert error[0] < 20 * gaps.max() and walk[0] > 2 * error[0], (gaps.max(), error, walk)


BUNDLED = {
    "acasxu_3_7": ("acasxu/onnx/ACASXU_run2a_3_7_batch_2000.onnx", "acasxu/vnnlib/prop_3.vnnlib"),
    "convnet_avgpool": ("vnncomp2021/verivital/onnx/Convnet_avgpool.onnx",
                        "vnncomp2021/verivital/vnnlib/prop_0_0.02.vnnlib"),
    "mnist_256x2": ("mnist_fc/onnx/mnist-net_256x2.onnx", "mnist_fc/vnnlib/prop_0_0.03.vnnlib"),
    "resnet_2b": ("vnncomp2021/cifar10_resnet/onnx/resnet_2b.onnx",
                  "vnncomp2021/cifar10_resnet/vnnlib/prop_2_eps_0.008.vnnlib"),
}


def _bundled_gaps(path: Path, lower, upper, net, rng, error) -> np.ndarray:
    """|float32 - float64| per output at random points of the box, at random corners, and at
    points a hill-climb moved (a few ulps on random coordinates) towards a larger gap relative
    to the bound."""
    session = float_session(path)

    def gaps(xs):
        f32 = np.stack([session_forward(session, x) for x in xs])
        return np.abs(f32 - net.forward(xs))

    xs = np.concatenate([rng.uniform(lower, upper, (60, len(lower))),
                         np.where(rng.random((60, len(lower))) < 0.5, lower, upper)])
    xs = np.stack([round_into_box(x, lower, upper) for x in xs]).astype(np.float64)
    found = gaps(xs)
    best = xs[np.argmax((found / error).max(1))]
    for _ in range(4):  # hill-climb from the worst point
        moves = np.repeat(best[None], 20, 0).astype(np.float32)
        for m in moves:
            picked = rng.choice(len(best), size=max(1, len(best) // 8), replace=False)
            m[picked] = np.nextafter(m[picked], np.where(rng.random(len(picked)) < 0.5,
                                                          np.float32(-np.inf), np.float32(np.inf)))
        moves = np.clip(moves.astype(np.float64), lower, upper)
        moves = np.stack([round_into_box(x, lower, upper) for x in moves]).astype(np.float64)
        more = gaps(moves)
        found = np.concatenate([found, more])
        if (more / error).max() > (found[:-len(more)] / error).max():
            best = moves[np.argmax((more / error).max(1))]
    return found


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow)
                                  if name == "resnet_2b" else name
                                  for name in BUNDLED])
def test_bound_holds_on_bundled_networks(benchmark_data, name):
    """On the bundled VNN-COMP networks over a property's box: onnxruntime's float32 outputs
    stay within the bound of the float64 ones (random points, corners, a hill-climb towards the
    bound), and the bound is at most the forward walk's alone."""
    from verify.vnnlib import load_vnnlib

    model, prop = (benchmark_data / part for part in BUNDLED[name])
    box = load_vnnlib(prop).cases[0].box
    error = evaluation_error(model, box.lower, box.upper)
    assert np.all(np.isfinite(error)) and np.all(error > 0)
    assert np.all(error <= evaluation_error(model, box.lower, box.upper, backward=False))
    gaps = _bundled_gaps(model, box.lower, box.upper, load_onnx(model),
                         np.random.default_rng(11), error)
    assert gaps.max() > 0 and np.all(gaps <= error), ((gaps / error).max(), error)


@pytest.mark.slow
def test_float32_unsat_on_cifar_resnet(benchmark_data, tmp_path, capsys):
    """VNN-COMP 2021 cifar10_resnet resnet_2b prop 2 (unsat over the reals) declared float32:
    the bound (about 0.03 per logit) leaves the margin for unsat (the forward walk alone gave
    about 4: unknown)."""
    pytest.importorskip("vnnlib")
    import re

    folder = benchmark_data / "vnncomp2021" / "cifar10_resnet"
    text = (folder / "vnnlib" / "prop_2_eps_0.008.vnnlib").read_text()
    body = "\n".join(line for line in text.splitlines()
                     if line.strip() and not line.startswith(";") and "declare-const" not in line)

    def x_name(match):
        c, rest = divmod(int(match.group(1)), 1024)
        return f"X[0,{c},{rest // 32},{rest % 32}]"

    body = re.sub(r"Y_(\d+)", r"Y[0,\1]", re.sub(r"X_(\d+)", x_name, body))
    query = tmp_path / "q.vnnlib"
    query.write_text("(vnnlib-version <2.0>)\n(declare-network N\n"
                     "  (declare-input X float32 [1, 3, 32, 32])\n"
                     "  (declare-output Y float32 [1, 10])\n)\n" + body + "\n")
    code, out, err = run_solver(["verify", str(query), "--network",
                                 f"N={folder / 'onnx' / 'resnet_2b.onnx'}", "--timeout", "200"],
                                capsys)
    assert (code, out) == (0, "unsat\n"), err


def _random_mlp(b: _Builder, x: str, widths: list[int], acts: list[str], skips: list[bool],
                scale: float) -> str:
    """Gemm + activation blocks of the given widths (a block keeps a residual Add where its
    input has its width and `skips` says so), a final Gemm to 3 outputs."""
    h, width = x, 4
    for w, act, skip in zip(widths, acts, skips):
        z = b.op(act, [b.op("Gemm", [h, b.const(b.weights(width, w, scale=scale)),
                                     b.const(b.rng.normal(size=w))])])
        h, width = (b.op("Add", [z, h]) if skip and w == width else z), w
    return b.op("Gemm", [h, b.const(b.weights(width, 3, scale=scale)),
                         b.const(b.rng.normal(size=3))])


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2 ** 16), depth=st.integers(2, 5), width=st.sampled_from([4, 6, 12]),
       scale=st.sampled_from([1.0, 3.0]), radius=st.sampled_from([0.05, 1.0, 4.0]))
def test_random_graph_bound_holds(tmp_path_factory, seed, depth, width, scale, radius):
    """Random Gemm nets (Relu, Tanh, Sigmoid, residual Adds) over random boxes: onnxruntime's
    float32 outputs stay within the bound of the float64 forward at random points and corners,
    and the bound is at most the forward walk's alone."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng, np.float32)
    acts = list(rng.choice(["Relu", "Relu", "Tanh", "Sigmoid"], depth))
    y = _random_mlp(b, "X", [width] * depth, acts, list(rng.random(depth) < 0.5), scale)
    path = b.save(y, tmp_path_factory.mktemp("random") / "m.onnx", ["N", 4])
    center = rng.normal(size=4)
    lower = center - radius * rng.uniform(0.2, 1, 4)
    upper = center + radius * rng.uniform(0.2, 1, 4)
    error = evaluation_error(path, lower, upper)
    assert np.all(error <= evaluation_error(path, lower, upper, backward=False))
    points = np.concatenate([rng.uniform(lower, upper, (100, 4)),
                             np.where(rng.random((100, 4)) < 0.5, lower, upper)])
    points = np.stack([round_into_box(x, lower, upper) for x in points]).astype(np.float64)
    gaps = np.abs(_ort(path, points, np.float32) - load_onnx(path).forward(points))
    assert np.all(gaps <= error), (gaps.max(0), error)
