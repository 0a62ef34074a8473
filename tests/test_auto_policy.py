"""The stage plan of `auto` past 16 inputs (verify.vnncomp._auto_stages): chains and deep graphs
keep attack -> alpha-CROWN -> relu-bab -> MILP; a graph whose every Relu reads an affine function
of the input (exact pre-activation bounds) runs the MILP before relu-bab. Verdicts are checked
against the exact MILP and relu-bab's complete search; counterexamples replay."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from conftest import only_milp_decides, random_mlp
from onnx_reference import make_model, tensor
from verify import vnncomp
from verify.backends import certify_specs
from verify.certificate import Status
from verify.exact import relu_bab
from verify.graph.network import GraphNetwork
from verify.graph.onnx_graph import GraphReader
from verify.onnx_io import load_onnx
from verify.spec import Box, robustness_spec
from verify.vnnlib import Disjunct, VnnlibCase, VnnlibQuery


def pooled_cnn(seed: int, pool: str, deep: bool = False) -> GraphNetwork:
    """x (1x1x5x5) -> Conv 2x2 (4 ch) -> Relu -> `pool` 2x2 -> Flatten -> Gemm (3 outputs); with
    `deep`, a second Relu reads the pooled tensor (its bounds are no longer exact)."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "W1", "b1"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node(pool, ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2])]
    if deep:
        nodes += [helper.make_node("Sub", ["p", "s"], ["q"]),
                  helper.make_node("Relu", ["q"], ["p2"])]
    nodes += [helper.make_node("Flatten", ["p2" if deep else "p"], ["f"]),
              helper.make_node("Gemm", ["f", "W2", "b2"], ["y"], transB=1)]
    inits = [("W1", rng.normal(size=(4, 1, 2, 2))), ("b1", rng.normal(size=4) * 0.3),
             ("W2", rng.normal(size=(3, 16))), ("b2", rng.normal(size=3) * 0.3)]
    if deep:
        inits.append(("s", np.full((1, 4, 2, 2), 0.5)))
    model = make_model(nodes, [tensor("x", [1, 1, 5, 5])], [tensor("y", None)], inits)
    return GraphNetwork(GraphReader(model, "cnn").read(), name="cnn")


def robustness_query(net, seed: int, eps: float):
    """The VNN-LIB robustness query at a random point: some y_j >= y_label (one row each)."""
    x = np.random.default_rng(seed).uniform(0, 1, net.input_size)
    label = int(np.argmax(net.forward(x)))
    disjuncts = [Disjunct(np.eye(3)[[label]] - np.eye(3)[[j]], np.zeros(1))
                 for j in range(3) if j != label]
    query = VnnlibQuery(net.input_size, 3, [VnnlibCase(Box(x - eps, x + eps), disjuncts)])
    return query, robustness_spec(net.input_size, 3, x, label, eps, "inf", None)


def test_plans_chains_deep_graphs_and_one_relu_layer_graphs():
    chain = random_mlp(np.random.default_rng(0), [20, 8, 3])
    assert vnncomp._auto_stages(chain) == vnncomp.AUTO_STAGES
    for pool in ("AveragePool", "MaxPool"):
        assert vnncomp._one_relu_layer(pooled_cnn(0, pool))
        assert vnncomp._auto_stages(pooled_cnn(0, pool)) == vnncomp.ONE_RELU_LAYER_STAGES
        assert not vnncomp._one_relu_layer(pooled_cnn(0, pool, deep=True))
        assert vnncomp._auto_stages(pooled_cnn(0, pool, deep=True)) == vnncomp.GRAPH_AUTO_STAGES
    steps = [step for step, _ in vnncomp.ONE_RELU_LAYER_STAGES]
    assert steps.index("milp") < steps.index("relu-bab") and steps[-1] == "relu-bab"
    # graphs: CROWN first, then the chains' plan; chains: no CROWN stage
    assert vnncomp.GRAPH_AUTO_STAGES[1:] == vnncomp.AUTO_STAGES
    assert [s for s, _ in vnncomp.AUTO_STAGES] == ["attack", "alpha-crown", "relu-bab", "milp"]
    for plan in (vnncomp.GRAPH_AUTO_STAGES, vnncomp.NO_MILP_STAGES,
                 vnncomp.ONE_RELU_LAYER_STAGES):
        assert [s for s, _ in plan][:3] == ["crown", "attack", "alpha-crown"]
        assert all(0 < share <= 1 for _, share in plan) and plan[-1][1] == 1.0  # all the rest


def test_vnncomp2021_networks_get_their_plans(benchmark_data):
    root = benchmark_data / "vnncomp2021"
    for name in ("Convnet_avgpool", "Convnet_maxpool"):
        path = root / "verivital" / "onnx" / f"{name}.onnx"
        if not path.is_file():
            pytest.skip(f"{path} not found")
        assert vnncomp._auto_stages(load_onnx(str(path))) == vnncomp.ONE_RELU_LAYER_STAGES
    for name in ("resnet_2b", "resnet_4b"):  # residual: Relus read Relus; the plan as before
        path = root / "cifar10_resnet" / "onnx" / f"{name}.onnx"
        if path.is_file():
            net = load_onnx(str(path))
            assert not vnncomp._one_relu_layer(net)
            assert vnncomp._auto_stages(net) == (
                vnncomp.GRAPH_AUTO_STAGES if vnncomp._milp_holds(net) else vnncomp.NO_MILP_STAGES)


@pytest.mark.parametrize("seed,pool,eps", [(1, "MaxPool", 0.1), (3, "AveragePool", 0.15)])
def test_one_relu_layer_graph_relu_bab_cannot_finish_is_decided_by_the_milp(monkeypatch, seed,
                                                                            pool, eps):
    """alpha-CROWN leaves the query open and relu-bab cannot finish it on a node budget of one
    domain; auto decides it by the MILP, before relu-bab, in agreement with the exact MILP."""
    net = pooled_cnn(seed, pool)
    query, spec = robustness_query(net, seed, eps)
    assert certify_specs(net, [spec], "alpha-crown")[0].status is Status.MAYBE
    exact = certify_specs(net, [spec], "milp")[0].status
    assert exact is Status.YES
    budget = relu_bab.ReluBaBOptions(device="cpu", timeout=0, max_domains=1, attack=False)
    assert relu_bab.search(net, spec, budget).status == "unknown"
    monkeypatch.setattr(vnncomp, "AUTO_RELU_BAB_OPTIONS", {"attack": False, "max_domains": 1})
    calls = []
    real = vnncomp._solve_relu_bab

    def recorded(*args, **kwargs):
        calls.append("relu-bab")
        return real(*args, **kwargs)

    monkeypatch.setattr(vnncomp, "_solve_relu_bab", recorded)
    result = vnncomp.solve(net, query, "auto", timeout=60.0)
    assert (result.result, result.method) == ("unsat", "auto:milp"), result
    assert calls == []  # decided before relu-bab's turn


def test_deep_graph_keeps_relu_bab_before_the_milp(monkeypatch):
    """On a graph with a Relu behind another one, relu-bab runs first and the MILP decides what
    it leaves (a sat answer replays)."""
    net = pooled_cnn(1, "MaxPool", deep=True)
    calls = []
    only_milp_decides(monkeypatch, calls)
    for eps in (0.02, 0.4):
        calls.clear()
        query, spec = robustness_query(net, 1, eps)
        result = vnncomp.solve(net, query, "auto", timeout=60.0)
        assert calls == ["crown", "attack", "alpha-crown", "relu-bab", "milp"], calls
        exact = relu_bab.search(net, spec, relu_bab.ReluBaBOptions(device="cpu", timeout=0))
        assert result.result == exact.status and result.method == "auto:milp", result
        if result.result == "sat":
            assert query.violated_by(*result.counterexample)


def test_one_relu_layer_graph_tries_crown_before_the_attack(monkeypatch):
    """What CROWN proves is answered before the attack spends its share; a sat query still goes
    on to the attack, whose counterexample replays."""
    net = pooled_cnn(0, "AveragePool")
    assert [s for s, _ in vnncomp.ONE_RELU_LAYER_STAGES][:2] == ["crown", "attack"]
    calls = []
    real = vnncomp._solve_with_certifier

    def recorded(net_, query_, step, options, pairs=None):
        calls.append(step)
        return real(net_, query_, step, options, pairs)

    monkeypatch.setattr(vnncomp, "_solve_with_certifier", recorded)
    for eps, expected in ((0.05, Status.YES), (0.3, Status.NO)):
        calls.clear()
        query, spec = robustness_query(net, 0, eps)
        assert certify_specs(net, [spec], "milp")[0].status is expected
        result = vnncomp.solve(net, query, "auto", timeout=60.0)
        if expected is Status.YES:
            assert certify_specs(net, [spec], "crown")[0].status is Status.YES
            assert (result.result, result.method, calls) == ("unsat", "auto:crown", ["crown"])
        else:
            assert result.result == "sat" and calls[:2] == ["crown", "attack"], (result, calls)
            assert query.violated_by(*result.counterexample)


def test_crown_stage_refutes_a_multirow_disjunct_by_a_row_combination(monkeypatch):
    """y = (2x, x + 10), x in [0, 1]: the region y1 >= 1.5 and y2 <= 10.5 is empty, though each
    row alone holds somewhere; the graph plan's CROWN stage refutes it by a combination of the
    rows and stops there (unsat, checked on a grid of x)."""
    model = make_model([helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)],
                       [tensor("x", [1, 1])], [tensor("y", None)],
                       [("W", np.array([[2.0], [1.0]])), ("b", np.array([0.0, 10.0]))])
    net = GraphNetwork(GraphReader(model, "lin").read(), name="lin")
    monkeypatch.setattr(vnncomp, "BAB_MAX_INPUTS", 0)  # the staged plan, not input splitting
    region = Disjunct(np.array([[-1.0, 0.0], [0.0, 1.0]]), np.array([-1.5, 10.5]))
    query = VnnlibQuery(1, 2, [VnnlibCase(Box(np.zeros(1), np.ones(1)), [region])])
    grid = np.linspace(0, 1, 1001)[:, None]
    assert not any(query.violated_by(x, net.forward(x)) for x in grid)
    assert any(region.A[0] @ net.forward(x) <= region.b[0] for x in grid)  # row 1 alone holds
    assert any(region.A[1] @ net.forward(x) <= region.b[1] for x in grid)  # row 2 alone holds
    result = vnncomp.solve(net, query, "auto", timeout=30.0)
    assert (result.result, result.method) == ("unsat", "auto:crown+combined-rows"), result


def test_one_relu_layer_graph_whose_milp_refuses_goes_on_to_relu_bab(monkeypatch):
    """A MILP stage that cannot encode the network (InputError) is not the plan's end there:
    relu-bab, after it, still decides (as the exact MILP says)."""
    from verify.errors import InputError

    net = pooled_cnn(1, "MaxPool")
    query, spec = robustness_query(net, 1, 0.1)
    assert certify_specs(net, [spec], "milp")[0].status is Status.YES
    real = vnncomp._solve_with_certifier

    def refusing_milp(net_, query_, step, options, pairs=None):
        if step == "milp":
            raise InputError("milp cannot encode this network")
        return real(net_, query_, step, options, pairs)

    monkeypatch.setattr(vnncomp, "_solve_with_certifier", refusing_milp)
    result = vnncomp.solve(net, query, "auto", timeout=60.0)
    assert (result.result, result.method) == ("unsat", "auto:relu-bab"), result
