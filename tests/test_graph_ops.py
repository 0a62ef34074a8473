"""Each graph op against onnxruntime (float64 and float32 models), and its IBP / CROWN bounds
against sampling; random small DAGs (hypothesis) with residual adds, pooling, concat and smooth
activations: bounds hold at sampled points."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from onnx import helper

from onnx_reference import make_model, onnxruntime_forward, tensor
from verify.bounds import InputBatch
from verify.bounds import graph as graph_bounds
from verify.graph.network import GraphNetwork
from verify.graph.onnx_graph import GraphReader
from verify.onnx_io import network_from_onnx

pytest.importorskip("onnxruntime")
R = np.random.default_rng(3)


def w(*shape, scale=0.5):
    return R.normal(size=shape) * scale


def node(op, inputs, **attrs):
    return helper.make_node(op, inputs, ["y"], name=f"the_{op.lower()}", **attrs)


# (id, nodes, input shape, initializers, opset)
CASES = [
    ("gemm_all_attrs", [node("Gemm", ["x", "B", "C"], alpha=0.7, beta=1.3, transB=1)], [1, 4],
     [("B", w(3, 4)), ("C", w(1, 3))], 13),
    ("gemm_transA", [node("Gemm", ["x", "B"], transA=1)], [4, 1], [("B", w(4, 3))], 13),
    ("matmul_right", [node("MatMul", ["x", "W"])], [1, 2, 4], [("W", w(4, 3))], 13),
    ("matmul_left", [node("MatMul", ["W", "x"])], [1, 1], [("W", w(2, 1))], 13),
    ("matmul_broadcast", [node("MatMul", ["x", "W"])], [2, 3], [("W", w(2, 3, 2))], 13),
    ("add_sub_mul_div", [helper.make_node("Add", ["x", "a"], ["t1"]),
                         helper.make_node("Mul", ["t1", "m"], ["t2"]),
                         helper.make_node("Sub", ["c", "t2"], ["t3"]),
                         helper.make_node("Div", ["t3", "d"], ["t4"]),
                         node("Neg", ["t4"])], [1, 2, 3],
     [("a", w(3)), ("m", w(2, 1)), ("c", w(1, 1, 3)), ("d", w(3) + 3)], 13),
    ("residual_sub", [helper.make_node("Relu", ["x"], ["r"]), node("Sub", ["x", "r"])], [1, 5], [], 13),
    ("conv1d", [node("Conv", ["x", "W", "b"], pads=[1, 2], strides=[2], dilations=[2])], [1, 2, 9],
     [("W", w(3, 2, 3)), ("b", w(3))], 13),
    ("conv2d_groups_autopad", [node("Conv", ["x", "W"], group=2, auto_pad="SAME_UPPER",
                                    strides=[2, 1])], [1, 4, 5, 5], [("W", w(6, 2, 3, 2))], 13),
    ("conv_transpose", [node("ConvTranspose", ["x", "W", "b"], strides=[2, 2], pads=[1, 0, 0, 1],
                             output_padding=[1, 0])], [1, 2, 3, 3], [("W", w(2, 3, 3, 3)), ("b", w(3))], 13),
    ("batchnorm", [node("BatchNormalization", ["x", "s", "bb", "mu", "var"])], [1, 3, 2, 2],
     [("s", w(3)), ("bb", w(3)), ("mu", w(3)), ("var", np.abs(w(3)) + 0.1)], 13),
    ("average_pool", [node("AveragePool", ["x"], kernel_shape=[2, 3], pads=[1, 1, 0, 1],
                           strides=[2, 1])], [1, 2, 4, 5], [], 13),
    ("average_pool_incl", [node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                count_include_pad=1)], [1, 1, 4, 4], [], 13),
    ("global_average_pool", [node("GlobalAveragePool", ["x"])], [1, 3, 3, 4], [], 13),
    ("max_pool", [node("MaxPool", ["x"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], strides=[2, 2])],
     [1, 2, 5, 5], [], 13),
    ("max_pool_1d", [node("MaxPool", ["x"], kernel_shape=[3], pads=[1, 0], strides=[2],
                          dilations=[2])], [1, 2, 9], [], 13),
    ("max_pool_3d", [node("MaxPool", ["x"], kernel_shape=[2, 2, 2], pads=[0, 1, 1, 1, 0, 0],
                          strides=[1, 2, 2])], [1, 1, 3, 3, 4], [], 13),
    ("pad_constant", [node("Pad", ["x", "p", "v"])], [1, 2, 3], [("p", np.array([0, 1, 0, 0, 0, 2])),
                                                              ("v", np.array(0.5))], 13),
    ("reduce_sum", [node("ReduceSum", ["x", "ax"], keepdims=0)], [1, 3, 4], [("ax", np.array([2]))], 13),
    ("reduce_mean", [node("ReduceMean", ["x"], axes=[1], keepdims=1)], [1, 3, 4], [], 13),
    ("transpose_slice_gather", [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
                                helper.make_node("Slice", ["t", "st", "en", "ax", "sp"], ["s"]),
                                node("Gather", ["s", "ix"], axis=2)], [1, 3, 6],
     [("st", np.array([5])), ("en", np.array([0])), ("ax", np.array([1])), ("sp", np.array([-2])),
      ("ix", np.array([2, 0, -1]))], 13),
    ("split_concat", [helper.make_node("Split", ["x", "sz"], ["a", "b"], axis=1),
                      helper.make_node("Relu", ["a"], ["ra"]),
                      node("Concat", ["b", "k", "ra"], axis=1)], [1, 5],
     [("sz", np.array([2, 3])), ("k", w(1, 2))], 13),
    ("flatten_unsqueeze_squeeze", [helper.make_node("Flatten", ["x"], ["f"]),
                                   helper.make_node("Unsqueeze", ["f", "ax"], ["u"]),
                                   node("Squeeze", ["u", "ax"])], [1, 2, 3], [("ax", np.array([1]))], 13),
    ("expand", [node("Expand", ["x", "sh"])], [1, 3, 1], [("sh", np.array([2, 1, 4]))], 13),
    ("leaky_prelu", [helper.make_node("LeakyRelu", ["x"], ["l"], alpha=0.2),
                     node("PRelu", ["l", "sl"])], [1, 3, 2], [("sl", np.array([[0.5], [2.0], [-0.3]]))], 13),
    ("clip_abs", [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]), node("Abs", ["c"])], [1, 6],
     [("lo", np.array(-0.3)), ("hi", np.array(0.6))], 13),
    ("max_min", [helper.make_node("Max", ["x", "k"], ["m"]), node("Min", ["m", "x", "k2"])], [1, 4],
     [("k", w(4)), ("k2", np.array(0.4))], 13),
    ("smooth", [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Tanh", ["x"], ["t"]),
                helper.make_node("Softplus", ["x"], ["p"]), helper.make_node("Exp", ["t"], ["e"]),
                helper.make_node("Add", ["s", "p"], ["a"]), node("Sub", ["a", "e"])], [1, 5], [], 13),
    ("softmax", [node("Softmax", ["x"], axis=1)], [1, 4], [], 13),
    ("softmax_inner_axis", [helper.make_node("Softmax", ["x"], ["s"], axis=1),
                            node("MatMul", ["s", "W"])], [1, 3, 2], [("W", w(2, 2))], 13),
    ("shape_arithmetic", [helper.make_node("Shape", ["x"], ["sh"]),
                          helper.make_node("Gather", ["sh", "zero"], ["n"], axis=0),
                          helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
                          helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
                          helper.make_node("ConstantOfShape", ["n1"], ["ones"],
                                           value=helper.make_tensor("v", 1, [1], [1.0])),
                          helper.make_node("Reshape", ["x", "target"], ["r"]),
                          node("Add", ["r", "ones"])], [1, 2, 3],
     [("zero", np.array(0)), ("zero1", np.array([0])), ("minus1", np.array([-1]))], 13),
]


def build(case):
    name, nodes, shape, inits, opset = case
    return make_model(nodes, [tensor("x", shape)], [tensor("y", None)], inits, opset)


def as_graph(model, where: str) -> GraphNetwork:
    """The graph reading even of a plain chain (network_from_onnx would give a Network)."""
    return GraphNetwork(GraphReader(model, where).read())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_matches_onnxruntime(case):
    model = build(case)
    net = as_graph(model, case[0])
    x = R.uniform(-2, 2, size=(4, *net.input_shape))
    got = net.forward(x.reshape(4, -1))
    for float64 in (True, False):
        try:
            ref = onnxruntime_forward(model, x, float64=float64)
        except Exception as exc:  # an op onnxruntime has no float64 kernel for
            if float64 and "NOT_IMPLEMENTED" in str(exc):
                continue
            raise
        rtol = 1e-9 if float64 else 1e-4
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * (np.abs(ref).max() + 1))


def box_batch(lower: np.ndarray, upper: np.ndarray, k: int) -> InputBatch:
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)[None]
    eye = np.eye(k)
    return InputBatch(lower=t(lower), upper=t(upper), center=t((lower + upper) / 2),
                      eps=torch.zeros(1, dtype=torch.float64), norm="box",
                      C=t(np.concatenate([eye, -eye])), d=torch.zeros(1, 2 * k, dtype=torch.float64))


def assert_bounds_hold(net, center: np.ndarray, radius: float) -> None:
    lower, upper = center - radius, center + radius
    batch = box_batch(lower, upper, net.output_size)
    samples = np.concatenate([R.uniform(lower, upper, size=(400, len(center))),
                              np.where(R.random((100, len(center))) < 0.5, lower, upper)])
    out = net.forward(samples)
    k = net.output_size
    with torch.no_grad():
        ibp = graph_bounds.interval_bounds(net, batch)
        lo_t, up_t = graph_bounds.output_bounds(net, ibp)
        ibp_margin = graph_bounds.interval_margin(batch, lo_t, up_t)[0].numpy()
        lo, up = lo_t[0].numpy(), up_t[0].numpy()
        crown = graph_bounds.margin_lower_from(net, batch, graph_bounds.crown_bounds(net, batch))[0].numpy()
    assert np.all(lo <= out.min(0)) and np.all(up >= out.max(0)), "IBP"
    assert np.all(crown[:k] <= out.min(0)) and np.all(-crown[k:] >= out.max(0)), "CROWN"
    # IBP <= CROWN up to rounding: an interval step from tighter inputs can land an ulp lower
    assert np.all(ibp_margin <= crown + 1e-12 * (1 + np.abs(crown))), "the order IBP <= CROWN"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_bounds_hold_on_samples(case):
    net = as_graph(build(case), case[0])
    for radius in (0.05, 1.0):
        assert_bounds_hold(net, R.uniform(-1, 1, net.input_size), radius)


def random_dag(seed: int, n: int, smooth: str) -> GraphNetwork:
    """x -> Conv -> act -> {residual Conv + add, AveragePool / MaxPool branch} -> Concat -> Gemm."""
    rng = np.random.default_rng(seed)
    g = lambda *s: rng.normal(size=s) * 0.6
    nodes = [
        helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node(smooth, ["c1"], ["a1"], **({"axis": 1} if smooth == "Softmax" else {})),
        helper.make_node("Conv", ["a1", "W2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a1", "c2"], ["res"]),
        helper.make_node("Relu", ["res"], ["r"]),
        helper.make_node("AveragePool", ["r"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxPool", ["a1"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["p1", "p2"], ["cat"], axis=1),
        helper.make_node("Flatten", ["cat"], ["f"]),
        helper.make_node("Gemm", ["f", "W3", "b3"], ["y"], transB=1),
    ]
    inits = [("W1", g(2, 1, 3, 3)), ("b1", g(2)), ("W2", g(2, 2, 3, 3)), ("W3", g(3, 4 * (n // 2) ** 2)),
             ("b3", g(3))]
    return network_from_onnx(make_model(nodes, [tensor("x", [1, 1, n, n])], [tensor("y", None)],
                                        inits), "dag")


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10 ** 6), n=st.sampled_from([2, 4]),
       smooth=st.sampled_from(["Relu", "Sigmoid", "Tanh", "Softplus", "Softmax"]),
       radius=st.sampled_from([0.01, 0.1, 0.5]))
def test_random_dag_bounds_hold(seed, n, smooth, radius):
    net = random_dag(seed, n, smooth)
    assert_bounds_hold(net, np.random.default_rng(seed).uniform(-1, 1, net.input_size), radius)


def test_max_pool_windows_any_rank():
    """The candidates' maximum is the pool itself for 1-, 2- and 3-D kernels (padding, strides,
    dilations), so CROWN's MaxPool bounds read the right cells at every rank."""
    from verify.graph import ops

    for case in ("max_pool_1d", "max_pool", "max_pool_3d"):
        net = as_graph(build(next(c for c in CASES if c[0] == case)), case)
        (k, pool), = [(k, n) for k, n in enumerate(net.graph.nodes) if n.op == "MaxPool"]
        p = net.torch_params(torch.device("cpu"))[k]
        x = torch.as_tensor(R.normal(size=(3, *net.graph.shapes[pool.inputs[0]])))
        windows = ops.max_pool_windows(pool, x, p, float("-inf"))
        assert windows.shape[1] == int(np.prod(p["kernel"]))
        assert torch.equal(windows.max(1).values, ops.f_max_pool(pool, [x], p))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10 ** 6), n=st.integers(2, 6),
       radius=st.sampled_from([1e-4, 0.01, 0.2, 1.0, 5.0]))
def test_softmax_relaxation_holds_on_samples(seed, n, radius):
    """slope . x + b_l <= softmax_i(x) <= slope . x + b_u at sampled points and corners of the
    box, along an inner axis; the gap is never wider than the interval's."""
    from verify.graph import ops

    rng = np.random.default_rng(seed)
    shape = (2, n, 3)
    center = rng.normal(size=shape) * 3
    half = radius * rng.random(shape)
    lo, up = torch.as_tensor(center - half)[None], torch.as_tensor(center + half)[None]
    slope, b_l, b_u = ops.softmax_relaxation(1, lo, up)
    xs = torch.cat([lo + (up - lo) * torch.as_tensor(rng.random((300, *shape))),
                    torch.where(torch.as_tensor(rng.random((100, *shape))) < 0.5, lo, up)])
    y = torch.softmax(xs, dim=2).movedim(2, -1)
    line = (slope * xs.movedim(2, -1)[..., None, :]).sum(-1)
    assert torch.all(line + b_l <= y) and torch.all(y <= line + b_u)
    y_lo, y_up = ops.softmax_interval(1, lo, up)
    assert torch.all(b_u - b_l <= (y_up - y_lo).movedim(2, -1))


def softmax_net() -> GraphNetwork:
    """Gemm -> Softmax -> Gemm (logits of a soft attention): the Softmax's linear bounds matter."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
             helper.make_node("Softmax", ["h"], ["s"], axis=1),
             helper.make_node("Gemm", ["s", "W2"], ["y"], transB=1)]
    inits = [("W1", rng.normal(size=(4, 3))), ("b1", rng.normal(size=4)),
             ("W2", rng.normal(size=(3, 4)) * 3)]
    return network_from_onnx(make_model(nodes, [tensor("x", [1, 3])], [tensor("y", None)], inits),
                             "softmax")


def test_softmax_linear_bounds_tighten_crown(monkeypatch):
    """On a small box CROWN with Softmax's linear bounds beats CROWN with its interval only (the
    former rule) by a clear margin, and both stay below the sampled outputs."""
    from verify.graph import ops

    net = softmax_net()
    center = np.array([0.3, -0.2, 0.5])
    lower, upper = center - 0.005, center + 0.005
    batch = box_batch(lower, upper, net.output_size)
    corners = np.array(np.meshgrid(*zip(lower, upper))).reshape(3, -1).T
    out = net.forward(np.concatenate([corners, R.uniform(lower, upper, size=(2000, 3))]))
    sampled = np.concatenate([out.min(0), -out.max(0)])

    def crown():
        with torch.no_grad():
            return graph_bounds.margin_lower_from(net, batch, graph_bounds.crown_bounds(net, batch))[0].numpy()

    linear = crown()
    interval = ops.softmax_interval

    def constant(axis, lo, up):  # the former rule: the interval as constant bounds
        slope, _, _ = ops.softmax_relaxation.__wrapped__(axis, lo, up)
        y_lo, y_up = (t.movedim(axis + 1, -1) for t in interval(axis, lo, up))
        return torch.zeros_like(slope), y_lo, y_up

    constant.__wrapped__ = ops.softmax_relaxation
    monkeypatch.setattr(ops, "softmax_relaxation", constant)
    former = crown()
    assert np.all(linear <= sampled) and np.all(former <= sampled)
    assert np.all(linear >= former)
    # the gap to the sampled optimum shrinks tenfold on every row (r^2 against r)
    assert np.all(sampled - linear <= 0.1 * (sampled - former))


def ball_batch(net, center: np.ndarray, eps: float, norm: str) -> InputBatch:
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)[None]
    k = net.output_size
    eye = np.eye(k)
    return InputBatch(lower=t(center - eps), upper=t(center + eps), center=t(center),
                      eps=torch.tensor([eps], dtype=torch.float64), norm=norm,
                      C=t(np.concatenate([eye, -eye])), d=torch.zeros(1, 2 * k, dtype=torch.float64))


@pytest.mark.parametrize("norm", ["2", "1"])
def test_graph_ibp_uses_the_ball_like_the_chain(norm):
    """For l_2 / l_1 balls the graph IBP bounds the input-affine tensors by x0 ± eps ||J_i||_q:
    on a chain read as a graph, its first Dense layer's bounds equal the chain IBP's; on a graph
    with a normalisation, a flatten and a doubled residual before the first Gemm they hold at
    sampled points of the sphere and are much tighter than the box's."""
    from verify.bounds import ibp

    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2"], ["y"], transB=1)]
    inits = [("W1", rng.normal(size=(6, 5))), ("b1", rng.normal(size=6)), ("W2", rng.normal(size=(3, 6)))]
    model = make_model(nodes, [tensor("x", [1, 5])], [tensor("y", None)], inits)
    chain, graph = network_from_onnx(model, "chain"), as_graph(model, "chain")
    batch = ball_batch(graph, rng.normal(size=5), 0.8, norm)
    chain_first = ibp.layer_bounds(chain, batch)[0]
    with torch.no_grad():
        graph_first = graph_bounds.interval_bounds(graph, batch)["h"]
    for a, b in zip(chain_first, graph_first):
        np.testing.assert_allclose(a.numpy().ravel(), b.numpy().ravel(), rtol=1e-12, atol=1e-12)

    nodes = [helper.make_node("Sub", ["x", "m"], ["s"]), helper.make_node("Flatten", ["s"], ["f"]),
             helper.make_node("Gemm", ["f", "W1", "b1"], ["h"], transB=1),
             helper.make_node("Add", ["h", "h"], ["h2"]), helper.make_node("Tanh", ["h2"], ["a"]),
             helper.make_node("Gemm", ["a", "W2"], ["y"], transB=1)]
    inits = [("m", rng.normal(size=(1, 2, 3))), ("W1", rng.normal(size=(5, 6))),
             ("b1", rng.normal(size=5)), ("W2", rng.normal(size=(3, 5)))]
    net = network_from_onnx(make_model(nodes, [tensor("x", [1, 2, 3])], [tensor("y", None)], inits), "g")
    center, eps = rng.normal(size=6), 0.7
    batch = ball_batch(net, center, eps, norm)
    box = ball_batch(net, center, eps, "box")
    direction = rng.normal(size=(4000, 6)) if norm == "2" else rng.laplace(size=(4000, 6))
    direction /= np.linalg.norm(direction, ord=float(norm), axis=1, keepdims=True)
    with torch.no_grad():
        values = net.run(net.split_input(torch.as_tensor(center + eps * direction)))
        tight, loose = graph_bounds.interval_bounds(net, batch), graph_bounds.interval_bounds(net, box)
        crown = graph_bounds.margin_lower_from(net, batch, graph_bounds.crown_bounds(net, batch))[0].numpy()
        ibp_margin = graph_bounds.interval_margin(batch, *graph_bounds.output_bounds(net, tight))[0].numpy()
    assert np.all(ibp_margin <= crown)
    for name in ("h2", "a", "y"):
        v, (lo, up) = values[name].flatten(1), (t.flatten(1) for t in tight[name])
        assert torch.all(lo <= v) and torch.all(v <= up), name
    assert torch.all(tight["h2"][1] - tight["h2"][0] < 0.8 * (loose["h2"][1] - loose["h2"][0]))
    out = values["y"].flatten(1).numpy()
    assert np.all(crown <= np.concatenate([out.min(0), -out.max(0)]))


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10 ** 6), n=st.sampled_from([2, 4]),
       smooth=st.sampled_from(["Relu", "Sigmoid", "Softmax"]), norm=st.sampled_from(["2", "1"]),
       eps=st.sampled_from([0.05, 0.5, 2.0]))
def test_random_dag_ball_bounds_hold(seed, n, smooth, norm, eps):
    """On random DAGs (a Conv reads the input) over l_2 / l_1 balls: IBP's and CROWN's bounds
    hold at sampled points inside and on the sphere, and IBP <= CROWN."""
    net = random_dag(seed, n, smooth)
    rng = np.random.default_rng(seed)
    center = rng.uniform(-1, 1, net.input_size)
    batch = ball_batch(net, center, eps, norm)
    direction = rng.normal(size=(600, net.input_size)) if norm == "2" else \
        rng.laplace(size=(600, net.input_size))
    direction /= np.linalg.norm(direction, ord=float(norm), axis=1, keepdims=True)
    direction[300:] *= rng.random((300, 1))
    out = net.forward(center + eps * direction)
    k = net.output_size
    with torch.no_grad():
        lo, up = graph_bounds.output_bounds(net, graph_bounds.interval_bounds(net, batch))
        ibp_margin = graph_bounds.interval_margin(batch, lo, up)[0].numpy()
        crown = graph_bounds.margin_lower_from(net, batch, graph_bounds.crown_bounds(net, batch))[0].numpy()
    assert np.all(lo[0].numpy() <= out.min(0)) and np.all(up[0].numpy() >= out.max(0)), "IBP"
    assert np.all(crown[:k] <= out.min(0)) and np.all(-crown[k:] >= out.max(0)), "CROWN"
    assert np.all(ibp_margin <= crown + 1e-12 * (1 + np.abs(crown))), "the order IBP <= CROWN"


def test_average_pool_ceil_mode_matches_onnxruntime():
    """AveragePool with ceil_mode 0 / 1, count_include_pad 0 / 1, dilations 1 / 2, asymmetric
    pads, 1-D and 2-D: the loader's output shape and values (the last, partial window divided by the count
    onnxruntime uses: its input cells, or those of the explicitly padded input, never the cells
    ceil_mode adds) are onnxruntime's."""
    import itertools

    import onnxruntime as ort

    rng = np.random.default_rng(4)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    checked = 0
    for size, k, s, p, include, ceil in itertools.product([4, 5, 7], [2, 3], [1, 2, 3], [0, 1],
                                                          [0, 1], [0, 1]):
        dilation = 2 if (size + k + s) % 3 == 0 else 1  # a third of the shapes dilated
        for spatial in ([size, size + 1], [size + 2]):
            d = len(spatial)
            pads = [p] * d + [min(p + 1, k - 1)] + [p] * (d - 1)  # end pads != begin pads
            model = make_model([helper.make_node(
                "AveragePool", ["x"], ["y"], kernel_shape=[k] * d, strides=[s] * d, pads=pads,
                count_include_pad=include, ceil_mode=ceil, dilations=[dilation] * d)],
                [tensor("x", [1, 2, *spatial])],
                [tensor("y", None)], opset=19)
            x = rng.normal(size=(1, 2, *spatial)).astype(np.float32)
            expected = ort.InferenceSession(model.SerializeToString(), options).run(
                None, {"x": x})[0]
            net = network_from_onnx(model, where="pool")
            got = net.forward(x.reshape(1, -1).astype(np.float64))
            assert got.size == expected.size, (size, k, s, p, include, ceil, spatial)
            assert np.allclose(got.reshape(-1), expected.reshape(-1), atol=1e-5), \
                (size, k, s, p, include, ceil, spatial)
            checked += 1
    assert checked == 288
