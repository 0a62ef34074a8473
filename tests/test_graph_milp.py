"""MILP and LP on graph networks (verify.graph.encoding): the MILP is exact on tiny
piecewise-linear graphs (residual add, concat, MaxPool, LeakyRelu, Abs, Max, Clip) against a
dense grid of the 2-D input box; on random small DAGs the order CROWN <= LP <= MILP <= sampled
and attacked values holds; on smooth graphs the MILP is a relaxation (MAYBE with the reason) whose
bounds still hold."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnx_reference import make_model, tensor
from verify import backends
from verify.cli import main
from verify.graph.network import GraphNetwork
from verify.graph.onnx_graph import GraphReader
from verify.spec import robustness_spec

R = np.random.default_rng(11)


def w(*shape, scale=0.8):
    return R.normal(size=shape) * scale


def graph_net(nodes, inits, shape=(1, 2), name="g") -> GraphNetwork:
    model = make_model(nodes, [tensor("x", list(shape))], [tensor("y", None)], inits, 13)
    return GraphNetwork(GraphReader(model, name).read(), name=name)


def n(op, inputs, out, **attrs):
    return helper.make_node(op, inputs, [out], **attrs)


def hidden(k=6):
    """x (1, 2) -> h = Gemm (1, k) -> r = Relu(h)."""
    return [n("Gemm", ["x", "W1", "b1"], "h"), n("Relu", ["h"], "r")], \
        [("W1", w(2, k)), ("b1", w(k, scale=0.3))]


def tiny_graphs():
    """(name, nodes, initializers) of 2-input piecewise-linear graphs with 3 outputs."""
    cases = []
    nodes, inits = hidden()
    cases.append(("residual_add", nodes + [n("Gemm", ["r", "W2"], "g"), n("Relu", ["g"], "s"),
                                           n("Add", ["r", "s"], "t"), n("Gemm", ["t", "W3"], "y")],
                  inits + [("W2", w(6, 6)), ("W3", w(6, 3))]))
    nodes, inits = hidden()
    cases.append(("concat", nodes + [n("Gemm", ["x", "W2"], "g"), n("Abs", ["g"], "a"),
                                     n("Concat", ["r", "a"], "c", axis=1),
                                     n("Gemm", ["c", "W3"], "y")],
                  inits + [("W2", w(2, 4)), ("W3", w(10, 3))]))
    nodes, inits = hidden(16)
    cases.append(("max_pool", nodes + [n("Reshape", ["h", "sh"], "img"),
                                       n("MaxPool", ["img"], "p", kernel_shape=[2, 2],
                                         strides=[1, 1], pads=[0, 0, 1, 1]),
                                       n("Flatten", ["p"], "f"), n("Gemm", ["f", "W3"], "y")],
                  inits + [("sh", np.array([1, 1, 4, 4])), ("W3", w(16, 3))]))
    nodes, inits = hidden(12)
    cases.append(("max_pool_1d", nodes + [n("Reshape", ["h", "sh"], "seq"),
                                          n("MaxPool", ["seq"], "p", kernel_shape=[3],
                                            strides=[2], pads=[1, 1]),
                                          n("Flatten", ["p"], "f"), n("Gemm", ["f", "W3"], "y")],
                  inits + [("sh", np.array([1, 2, 6])), ("W3", w(6, 3))]))
    nodes, inits = hidden(16)
    cases.append(("max_pool_3d", nodes + [n("Reshape", ["h", "sh"], "vol"),
                                          n("MaxPool", ["vol"], "p", kernel_shape=[2, 2, 2]),
                                          n("Flatten", ["p"], "f"), n("Gemm", ["f", "W3"], "y")],
                  inits + [("sh", np.array([1, 2, 2, 2, 2])), ("W3", w(2, 3))]))
    nodes, inits = hidden()
    cases.append(("leaky_relu", nodes + [n("Gemm", ["r", "W2"], "g"),
                                         n("LeakyRelu", ["g"], "l", alpha=0.1),
                                         n("Gemm", ["l", "W3"], "y")],
                  inits + [("W2", w(6, 5)), ("W3", w(5, 3))]))
    nodes, inits = hidden()
    cases.append(("max_min", nodes + [n("Gemm", ["r", "W2"], "g"), n("Gemm", ["x", "W4"], "q"),
                                      n("Max", ["g", "q"], "m"), n("Min", ["m", "k"], "mm"),
                                      n("Gemm", ["mm", "W3"], "y")],
                  inits + [("W2", w(6, 4)), ("W4", w(2, 4)), ("k", np.array(0.5)),
                           ("W3", w(4, 3))]))
    nodes, inits = hidden()
    cases.append(("clip", nodes + [n("Gemm", ["r", "W2"], "g"), n("Clip", ["g", "lo", "hi"], "c"),
                                   n("Gemm", ["c", "W3"], "y")],
                  inits + [("W2", w(6, 5)), ("lo", np.array(-0.2)), ("hi", np.array(0.4)),
                           ("W3", w(5, 3))]))
    return cases


TINY = tiny_graphs()


def grid(center: np.ndarray, eps: float, k: int = 301) -> np.ndarray:
    t = np.linspace(-eps, eps, k)
    a, b = np.meshgrid(t, t)
    return center + np.stack([a.ravel(), b.ravel()], 1)


def row_values(cert, label):
    lower = np.array([v for j, v in enumerate(cert.margin_lower) if j != label], dtype=float)
    upper = np.array([v for j, v in enumerate(cert.margin_upper) if j != label], dtype=float)
    return lower, upper


@pytest.mark.parametrize("case", TINY, ids=[c[0] for c in TINY])
def test_milp_is_exact_on_tiny_piecewise_linear_graphs(case):
    """exact_margins: lower and upper (a replayed point's value) meet; no grid point lies below
    the lower bound, and the MILP's point is at least as low as every grid point."""
    name, nodes, inits = case
    net = graph_net(nodes, inits, name=name)
    x, eps = np.array([0.2, -0.1]), 0.4
    label = int(np.argmax(net.forward(x)))
    spec = robustness_spec(2, 3, x, label, eps, "inf", None)
    cert = backends.certify_specs(net, [spec], "milp", exact_margins=True, attack=False)[0]
    lower, upper = row_values(cert, label)
    sampled = np.min([spec.output.values(o) for o in net.forward(grid(x, eps))], axis=0)
    assert np.all(upper - lower <= 1e-6), (lower, upper)
    assert np.all(lower <= sampled + 1e-9), (lower, sampled)
    assert np.all(upper <= sampled + 1e-9), (upper, sampled)
    assert "not_exact" not in cert.details


def random_dag(seed: int) -> GraphNetwork:
    """3 inputs -> Gemm -> Relu, then two random blocks among residual add, concat of a
    LeakyRelu and a Clip branch, MaxPool, Abs; -> Gemm to 3 outputs."""
    rng = np.random.default_rng(seed)
    weight = lambda *s: rng.normal(size=s) * 0.7
    nodes = [n("Gemm", ["x", "W0", "b0"], "h0"), n("Relu", ["h0"], "t0")]
    inits = [("W0", weight(3, 8)), ("b0", weight(8) * 0.3)]
    current = "t0"
    for k, block in enumerate(rng.choice(["residual", "concat", "pool", "abs"], 2)):
        a, b = f"A{k}", f"B{k}"
        if block == "residual":
            nodes += [n("Gemm", [current, a], f"g{k}"), n("Relu", [f"g{k}"], f"r{k}"),
                      n("Add", [current, f"r{k}"], f"o{k}")]
            inits += [(a, weight(8, 8))]
        elif block == "concat":
            nodes += [n("Gemm", [current, a], f"g{k}"),
                      n("LeakyRelu", [f"g{k}"], f"l{k}", alpha=0.2),
                      n("Gemm", [current, b], f"q{k}"), n("Clip", [f"q{k}", "lo", "hi"], f"c{k}"),
                      n("Concat", [f"l{k}", f"c{k}"], f"o{k}", axis=1)]
            inits += [(a, weight(8, 4)), (b, weight(8, 4))]
        elif block == "pool":
            nodes += [n("Gemm", [current, a], f"g{k}"), n("Reshape", [f"g{k}", "sh"], f"i{k}"),
                      n("MaxPool", [f"i{k}"], f"p{k}", kernel_shape=[2, 2], strides=[1, 1],
                        pads=[0, 0, 1, 1]),
                      n("Flatten", [f"p{k}"], f"o{k}")]
            inits += [(a, weight(8, 8))]
        else:
            nodes += [n("Gemm", [current, a], f"g{k}"), n("Abs", [f"g{k}"], f"o{k}")]
            inits += [(a, weight(8, 8))]
        current = f"o{k}"
    nodes.append(n("Gemm", [current, "Wout"], "y"))
    inits += [("Wout", weight(8, 3)), ("lo", np.array(-0.3)), ("hi", np.array(0.5)),
              ("sh", np.array([1, 2, 2, 2]))]
    return graph_net(nodes, inits, shape=(1, 3), name=f"dag{seed}")


def moving_dag(seed: int) -> GraphNetwork:
    """3 inputs -> Gemm -> Relu -> (1, 2, 2, 2) -> Pad with 0.25 -> dilated AveragePool
    (ceil_mode) -> Concat with the Relu output -> Relu -> Gemm to 3 outputs: the data-movement
    nodes (moved bounds) and a dilated pool in one graph."""
    rng = np.random.default_rng(seed)
    weight = lambda *s: rng.normal(size=s) * 0.7
    nodes = [n("Gemm", ["x", "W0", "b0"], "h0"), n("Relu", ["h0"], "t0"),
             n("Reshape", ["t0", "sh"], "i0"), n("Pad", ["i0", "pads", "pv"], "p0"),
             n("AveragePool", ["p0"], "a0", kernel_shape=[2, 2], dilations=[2, 2], ceil_mode=1,
               strides=[1, 1]),
             n("Flatten", ["a0"], "f0"), n("Concat", ["f0", "t0"], "c0", axis=1),
             n("Relu", ["c0"], "r0"), n("Gemm", ["r0", "Wout"], "y")]
    inits = [("W0", weight(3, 8)), ("b0", weight(8) * 0.3), ("sh", np.array([1, 2, 2, 2])),
             ("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1])), ("pv", np.array(0.25)),
             ("Wout", weight(16, 3))]
    return graph_net(nodes, inits, shape=(1, 3), name=f"moving{seed}")


@pytest.mark.parametrize("seed,build", [(s, random_dag) for s in range(6)]
                         + [(s, moving_dag) for s in range(3)])
def test_ordering_law_on_random_dags(seed, build):
    """IBP <= CROWN <= LP <= exact MILP <= sampled and attacked values, row by row."""
    net = build(seed)
    rng = np.random.default_rng(seed)
    x, eps = rng.uniform(-1, 1, 3), 0.3
    label = int(np.argmax(net.forward(x)))
    spec = robustness_spec(3, 3, x, label, eps, "inf", None)
    ibp = row_values(backends.certify_specs(net, [spec], "ibp", device="cpu")[0], label)[0]
    crown = row_values(backends.certify_specs(net, [spec], "crown", device="cpu")[0], label)[0]
    lp = row_values(backends.certify_specs(net, [spec], "lp")[0], label)[0]
    milp = backends.certify_specs(net, [spec], "milp", exact_margins=True)[0]
    exact, upper = row_values(milp, label)
    attack = backends.certify_specs(net, [spec], "attack", device="cpu")[0]
    samples = x + rng.uniform(-eps, eps, (3000, 3))
    sampled = np.min([spec.output.values(o) for o in net.forward(samples)], axis=0)
    assert np.all(ibp <= crown + 1e-12 * (1 + np.abs(crown)))  # (an ulp either way)
    assert np.all(crown <= lp + 1e-9) and np.all(lp <= exact + 1e-7)
    assert np.all(exact <= sampled + 1e-9) and np.all(upper - exact <= 1e-6)
    attacked = row_values(attack, label)[1]
    assert np.all(exact <= attacked + 1e-9)
    assert milp.status.name == ("YES" if np.all(exact > 1e-6) else "NO")


def smooth_net() -> GraphNetwork:
    """y = (sigmoid(x) + sigmoid(-x), 0.99): margin y_0 - y_1 = 0.01 > 0 everywhere, but no
    linear relaxation of the two sigmoids over [-1, 1] proves it."""
    nodes = [n("Sigmoid", ["x"], "a"), n("Neg", ["x"], "m"), n("Sigmoid", ["m"], "b"),
             n("Add", ["a", "b"], "s"), n("Concat", ["s", "c"], "y", axis=1)]
    return graph_net(nodes, [("c", np.array([[0.99]]))], shape=(1, 1), name="smooth")


def test_smooth_graph_milp_is_a_relaxation():
    net = smooth_net()
    spec = robustness_spec(1, 2, np.zeros(1), 0, 1.0, "inf", None)
    milp = backends.certify_specs(net, [spec], "milp")[0]
    lp = backends.certify_specs(net, [spec], "lp")[0]
    sampled = min(spec.output.values(o)[0] for o in net.forward(np.linspace(-1, 1, 2001)[:, None]))
    assert milp.status.name == "MAYBE" and "not exact" in milp.reason and "Sigmoid" in milp.reason
    if "true minimum" in milp.reason:  # the interval quoted is ordered: [lower, replayed]
        low, high = (float(v) for v in milp.reason.split("lies in [")[1].split("]")[0].split(","))
        assert low <= sampled + 1e-9 and low <= high
    assert milp.margin_lower[1] <= sampled and lp.margin_lower[1] <= sampled
    assert lp.margin_lower[1] <= milp.margin_lower[1] + 1e-7
    # a property the relaxation does prove: YES stays sound and reachable
    easy = robustness_spec(1, 2, np.zeros(1), 0, 0.05, "inf", None)
    assert backends.certify_specs(net, [easy], "milp")[0].status.name == "YES"


def smooth_dag(seed: int) -> GraphNetwork:
    """2 inputs -> Gemm -> f -> Gemm -> g, plus a residual add -> Gemm to 3 outputs, f and g
    drawn from Sigmoid, Tanh, Softplus, Exp."""
    rng = np.random.default_rng(seed)
    weight = lambda *s: rng.normal(size=s) * 0.8
    f, g = rng.choice(["Sigmoid", "Tanh", "Softplus", "Exp"], 2)
    nodes = [n("Gemm", ["x", "W0", "b0"], "h0"), n(str(f), ["h0"], "a0"),
             n("Gemm", ["a0", "W1"], "h1"), n(str(g), ["h1"], "a1"), n("Add", ["a1", "h1"], "s"),
             n("Gemm", ["s", "W2"], "y")]
    inits = [("W0", weight(2, 6)), ("b0", weight(6)), ("W1", weight(6, 6)), ("W2", weight(6, 3))]
    return graph_net(nodes, inits, name=f"smooth{seed}")


@pytest.mark.parametrize("seed", range(4))
def test_smooth_dags_lp_and_milp_bounds_hold(seed):
    """CROWN <= LP (relax lines and tangents) <= the grid's minimum; the MILP (a relaxation
    here) is below the grid too, and never answers YES on a violated row."""
    net = smooth_dag(seed)
    x, eps = np.array([0.1, -0.3]), 0.5
    label = int(np.argmax(net.forward(x)))
    spec = robustness_spec(2, 3, x, label, eps, "inf", None)
    sampled = np.min([spec.output.values(o) for o in net.forward(grid(x, eps, 201))], axis=0)
    crown = row_values(backends.certify_specs(net, [spec], "crown", device="cpu")[0], label)[0]
    lp = row_values(backends.certify_specs(net, [spec], "lp")[0], label)[0]
    milp = backends.certify_specs(net, [spec], "milp", exact_margins=True)[0]
    assert np.all(crown <= lp + 1e-9) and np.all(lp <= sampled)
    assert np.all(row_values(milp, label)[0] <= sampled)
    assert not (milp.status.name == "YES" and sampled.min() <= 0)


def test_softmax_is_interval_only():
    nodes = [n("Gemm", ["x", "W"], "h"), n("Softmax", ["h"], "y", axis=1)]
    net = graph_net(nodes, [("W", w(2, 3))], name="softmax")
    x = np.array([0.3, -0.2])
    label = int(np.argmax(net.forward(x)))
    spec = robustness_spec(2, 3, x, label, 0.2, "inf", None)
    cert = backends.certify_specs(net, [spec], "milp", exact_margins=True)[0]
    lower = row_values(cert, label)[0]
    sampled = np.min([spec.output.values(o) for o in net.forward(grid(x, 0.2, 61))], axis=0)
    assert np.all(lower <= sampled) and "Softmax" in cert.details["not_exact"]


def test_cli_certify_and_export_on_a_graph_model(capsys, tmp_path):
    import highspy
    import onnx

    name, nodes, inits = TINY[0]
    model = make_model(nodes, [tensor("x", [1, 2])], [tensor("y", None)], inits, 13)
    path = tmp_path / "residual.onnx"
    onnx.save(model, str(path))
    np.save(tmp_path / "x.npy", np.array([0.2, -0.1]))
    net = graph_net(nodes, inits)
    label = int(np.argmax(net.forward(np.array([0.2, -0.1]))))
    for method in ("milp", "lp"):
        code = main(["certify", str(path), "--input", str(tmp_path / "x.npy"), "--label",
                     str(label), "--eps", "0.01", "--method", method])
        out, err = capsys.readouterr()
        assert code == 0 and "YES" in out, (out, err)
    out = tmp_path / "residual.lp"
    against = (label + 1) % 3
    code = main(["export", str(path), "--input", str(tmp_path / "x.npy"), "--label", str(label),
                 "--eps", "0.3", "--against", str(against), "--out", str(out)])
    assert code == 0 and out.is_file() and "wrote the MILP of" in capsys.readouterr().out
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.readModel(str(out))
    h.run()
    spec = robustness_spec(2, 3, np.array([0.2, -0.1]), label, 0.3, "inf", None)
    exact = backends.certify_specs(net, [spec], "milp", exact_margins=True, attack=False)[0]
    assert h.getInfo().objective_function_value == pytest.approx(exact.margin_lower[against],
                                                                 abs=1e-5)


def test_lp_tighten_is_refused_on_graphs():
    name, nodes, inits = TINY[0]
    net = graph_net(nodes, inits)
    spec = robustness_spec(2, 3, np.zeros(2), 0, 0.1, "inf", None)
    with pytest.raises(Exception, match="lp_tighten is not available on graph networks"):
        backends.certify_specs(net, [spec], "lp", lp_tighten=True)


def test_linear_matrices_reproduce_every_linear_op():
    """J x + b from verify.graph.encoding.linear_matrices equals the node's forward, for every
    linear node of the op cases of test_graph_ops (both the forward- and reverse-mode paths)."""
    import torch

    from test_graph_ops import CASES, as_graph, build
    from verify.graph import ops
    from verify.graph.encoding import linear_matrices

    seen = set()
    for case in CASES:
        net = as_graph(build(case), case[0])
        params = net.torch_params(torch.device("cpu"))
        for k, node in enumerate(net.graph.nodes):
            if node.op not in ops.LINEAR:
                continue
            shapes = [net.graph.shapes[i] for i in node.inputs]
            matrices, bias = linear_matrices(node, params[k], shapes)
            xs = [R.normal(size=(1, *s)) for s in shapes]
            want = ops.LINEAR[node.op][0](node, [torch.as_tensor(x) for x in xs], params[k])
            got = bias + sum(J @ x.reshape(-1) for J, x in zip(matrices, xs))
            np.testing.assert_allclose(got, want.reshape(-1).numpy(), rtol=1e-12, atol=1e-12)
            seen.add(node.op)
    assert {"Conv", "ConvTranspose", "Gemm", "AveragePool", "Select", "Concat", "Pad"} <= seen


@pytest.mark.parametrize("norm, eps", [("1", 0.4), ("2", 0.3)])
def test_l1_and_l2_balls_on_a_graph(norm, eps):
    """LP (HiGHS for l_1, Clarabel's cone for l_2) and, for l_1, the MILP stay below the margins
    sampled in the ball, and CROWN stays below the LP."""
    net = random_dag(1)
    rng = np.random.default_rng(5)
    x = np.random.default_rng(1).uniform(-1, 1, 3)
    label = int(np.argmax(net.forward(x)))
    spec = robustness_spec(3, 3, x, label, eps, norm, None)
    d = rng.normal(size=(4000, 3))
    d /= np.linalg.norm(d, ord=float(norm), axis=1, keepdims=True)
    points = x + d * eps * rng.uniform(0, 1, (4000, 1))
    sampled = np.min([spec.output.values(o) for o in net.forward(points)], axis=0)
    lp = row_values(backends.certify_specs(net, [spec], "lp")[0], label)[0]
    crown = row_values(backends.certify_specs(net, [spec], "crown", device="cpu")[0], label)[0]
    assert np.all(lp <= sampled) and np.all(crown <= lp + 1e-9)
    if norm == "1":
        milp = backends.certify_specs(net, [spec], "milp", exact_margins=True)[0]
        exact, upper = row_values(milp, label)
        assert np.all(lp <= exact + 1e-7) and np.all(exact <= sampled + 1e-9)
        assert np.all(upper - exact <= 1e-6)


def test_relaxed_ops_name_what_the_milp_relaxes():
    """export's message and the MILP's "not exact" come from the same op classes."""
    from verify.graph.encoding import relaxed_ops

    assert [relaxed_ops(graph_net(nodes, inits)) for _, nodes, inits in TINY] == [[]] * len(TINY)
    assert relaxed_ops(smooth_net()) == ["Sigmoid"]
