"""alpha-CROWN and ReLU-split BaB (beta-CROWN) on graph networks (verify.graph): bounds against
CROWN, sampling and the attack on random residual conv DAGs; relu-bab verdicts against dense
sampling, the attack and, for a chain read as a graph, the chain's complete relu-bab."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from onnx import helper

from conftest import only_milp_decides
from onnx_reference import make_model, tensor
from verify import backends
from verify.attack import AttackOptions, find_counterexample
from verify.bounds import InputBatch
from verify.bounds import graph as graph_bounds
from verify.bounds.alpha_crown import AlphaCROWNOptions, graph_optimized_margin_lower
from verify.exact import relu_bab
from verify.graph.network import GraphNetwork
from verify.graph.onnx_graph import GraphReader
from verify.network import Network
from verify.onnx_io import network_from_onnx
from verify.spec import robustness_spec
from verify.vnncomp import solve
from verify.vnnlib import parse_vnnlib


def residual_dag(seed: int, n: int = 3, width: int = 8) -> GraphNetwork:
    """x -> Conv -> Relu -> Conv (+ skip) -> Relu, x - Relu(x) branch -> Concat -> Gemm -> Relu
    -> Gemm (3 outputs): residual adds, a Relu on the graph input, a Sub of two variables."""
    rng = np.random.default_rng(seed)
    g = lambda *s: rng.normal(size=s) * 0.6
    nodes = [
        helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["a1"]),
        helper.make_node("Conv", ["a1", "W2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a1", "c2"], ["res"]),
        helper.make_node("Relu", ["res"], ["r"]),
        helper.make_node("Relu", ["x"], ["rx"]),
        helper.make_node("Sub", ["x", "rx"], ["neg"]),
        helper.make_node("Concat", ["r", "neg"], ["cat"], axis=1),
        helper.make_node("Flatten", ["cat"], ["f"]),
        helper.make_node("Gemm", ["f", "W3", "b3"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["rh"]),
        helper.make_node("Gemm", ["rh", "W4", "b4"], ["y"], transB=1),
    ]
    inits = [("W1", g(2, 1, 3, 3)), ("b1", g(2)), ("W2", g(2, 2, 3, 3)), ("b2", g(2)),
             ("W3", g(width, 3 * n * n)), ("b3", g(width)), ("W4", g(3, width)), ("b4", g(3))]
    net = network_from_onnx(make_model(nodes, [tensor("x", [1, 1, n, n])], [tensor("y", None)],
                                       inits), "dag")
    assert isinstance(net, GraphNetwork)
    return net


def mlp_as_graph(seed: int) -> tuple[GraphNetwork, Network]:
    """One small MLP twice: read as a graph and as a chain."""
    rng = np.random.default_rng(seed)
    g = lambda *s: rng.normal(size=s) * 0.7
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"], transB=1),
             helper.make_node("Relu", ["h1"], ["a1"]),
             helper.make_node("Gemm", ["a1", "W2", "b2"], ["h2"], transB=1),
             helper.make_node("Relu", ["h2"], ["a2"]),
             helper.make_node("Gemm", ["a2", "W3", "b3"], ["y"], transB=1)]
    model = make_model(nodes, [tensor("x", [1, 4])], [tensor("y", None)],
                       [("W1", g(6, 4)), ("b1", g(6)), ("W2", g(6, 6)), ("b2", g(6)),
                        ("W3", g(3, 6)), ("b3", g(3))])
    chain = network_from_onnx(model, "mlp")
    assert isinstance(chain, Network)
    return GraphNetwork(GraphReader(model, "mlp").read()), chain


def spec_at(net, seed: int, eps: float):
    x = np.random.default_rng(seed).uniform(-1, 1, net.input_size)
    label = int(np.argmax(net.forward(x)))
    return robustness_spec(net.input_size, net.output_size, x, label, eps, "inf", None), x


def sampled_min(net, spec, x: np.ndarray, eps: float, count: int = 4000) -> np.ndarray:
    """Per row, the least margin over uniform samples and the box's corners (an upper bound of
    the true minimum)."""
    rng = np.random.default_rng(1)
    points = np.concatenate([rng.uniform(x - eps, x + eps, (count, len(x))),
                             np.where(rng.random((count, len(x))) < 0.5, x - eps, x + eps)])
    return (net.forward(points) @ spec.output.C.T - spec.output.d).min(axis=0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_alpha_crown_between_crown_and_the_sampled_minimum(seed, eps):
    net = residual_dag(seed)
    spec, x = spec_at(net, seed, eps)
    batch = InputBatch.from_specs([spec], torch.device("cpu"))
    best, crown_lower, _ = graph_optimized_margin_lower(net, batch, AlphaCROWNOptions(
        steps=15, early_stop=False))
    with torch.no_grad():
        plain = graph_bounds.margin_lower_from(net, batch, graph_bounds.crown_bounds(net, batch))
    assert torch.equal(crown_lower, plain)
    assert bool((best >= crown_lower).all())
    assert np.all(best[0].numpy() <= sampled_min(net, spec, x, eps) + 1e-9)


def test_crown_slopes_and_zero_betas_leave_the_bound_unchanged():
    net = residual_dag(0)
    spec, _ = spec_at(net, 0, 0.3)
    batch = InputBatch.from_specs([spec], torch.device("cpu"))
    with torch.no_grad():
        bounds = graph_bounds.crown_bounds(net, batch)
        plain = graph_bounds.margin_lower_from(net, batch, bounds)
        m = batch.C.shape[1]
        alphas = graph_bounds.relu_slopes(net, bounds, m)
        terms = {k: torch.zeros_like(a) for k, a in alphas.items()}
        record: dict = {}
        both = graph_bounds.margin_lower_from(net, batch, bounds, alphas, terms, record)
    assert torch.all(both <= plain) and torch.allclose(both, plain, atol=1e-12)
    assert set(record) == set(alphas) | {-1} and record[-1].shape == (1, m, net.input_size)


def search_at_a_point(net, seed: int, eps: float):
    """A graph search's specification, the search, a sampled point of its input set, every
    tensor's value there and the search's first domain (unsplit)."""
    spec, _ = spec_at(net, seed, eps)
    search = relu_bab.ReluSearch(net, spec, relu_bab.ReluBaBOptions(device="cpu"),
                                 relu_bab.deadlines.Deadline())
    point = spec.input_set.sample(1, np.random.default_rng(seed))[0]
    with torch.no_grad():
        values = net.run(net.split_input(torch.as_tensor(point)[None]))
    return spec, search, point, values, search.domains.take(torch.tensor([0]))


def split_by_a_point(seed: int, full: bool):
    """A graph search's first domain, its unstable Relus (the first two per node, or all) split
    by the phases of a sampled point, which therefore lies in the domain."""
    net = residual_dag(seed)
    spec, search, point, values, domains = search_at_a_point(net, seed, 0.3)
    for key, z in search.problem.input_of.items():
        lower, upper = (t.flatten(1)[0] for t in search.root[z])
        unstable = torch.nonzero((lower < 0) & (upper > 0)).squeeze(1)
        chosen = unstable if full else unstable[:2]
        phase = torch.where(values[z].flatten(1)[0, chosen] >= 0, 1, -1)
        domains.splits[key][0, chosen] = phase.to(torch.int8)
    return net, spec, search, domains, point


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("full", [False, True])
def test_beta_bound_is_sound_on_a_split_domain_and_not_below_crown(seed, full):
    net, spec, search, domains, point = split_by_a_point(seed, full)
    row = int(domains.rows[0])
    with torch.no_grad():
        bounds, empty = search.problem.domain_bounds(domains.splits, len(domains))
        plain = graph_bounds.margin_lower_from(net, search._batch(domains.rows), bounds)[0, 0]
    assert not bool(empty[0])  # it holds the sampled point, and its tensors lie in the bounds
    with torch.no_grad():
        values = net.run(net.split_input(torch.as_tensor(point)[None]))
    for name, (lo, up) in bounds.items():
        assert bool((lo <= values[name]).all() and (values[name] <= up).all()), name
    beta, _, _, _ = search.bound(domains, steps=20)
    assert float(beta[0]) >= float(plain) - 1e-9
    value = spec.output.values(net.forward(point))[row]
    assert float(beta[0]) <= value + 1e-9


def check_verdict(net, spec, x, eps, cert) -> None:
    """YES: no sample, corner or attack point violates; NO: its counterexample replays."""
    if cert.proved:
        assert np.all(sampled_min(net, spec, x, eps) > 0)
        assert find_counterexample(net, spec, AttackOptions(device="cpu")) is None
    if cert.counterexample is not None:
        values = spec.output.values(net.forward(np.asarray(cert.counterexample)))
        assert np.min(values) <= 0 and spec.input_set.contains(np.asarray(cert.counterexample))


def test_relu_bab_on_random_dags_is_never_wrong_and_decides_most():
    decided = total = 0
    verdicts = set()
    for seed in range(4):
        net = residual_dag(seed)
        for eps in (0.05, 0.15, 0.4):
            spec, x = spec_at(net, seed, eps)
            cert = backends.certify_specs(net, [spec], "relu-bab", device="cpu", timeout=0,
                                          max_domains=200)[0]
            check_verdict(net, spec, x, eps, cert)
            total += 1
            if cert.proved or cert.counterexample is not None:
                decided += 1
                verdicts.add(cert.proved)
    assert verdicts == {True, False} and decided >= 0.7 * total, (decided, total)


@pytest.mark.parametrize("seed,eps", [(1, 0.2), (5, 0.2)])
def test_relu_bab_splits_to_prove_what_crown_cannot(seed, eps):
    net = residual_dag(seed)
    spec, x = spec_at(net, seed, eps)
    # (alpha-CROWN with optimised intermediate bounds proves some of these without splitting)
    assert not backends.certify_specs(net, [spec], "alpha-crown", device="cpu",
                                      optimize_intermediate=False)[0].proved
    cert = backends.certify_specs(net, [spec], "relu-bab", device="cpu", timeout=0,
                                  max_domains=500)[0]
    assert cert.proved and cert.cost["domains"] > 2, cert.reason
    check_verdict(net, spec, x, eps, cert)


@pytest.mark.parametrize("seed", range(4))
def test_chain_read_as_graph_agrees_with_the_chains_complete_search(seed):
    graph_net, chain = mlp_as_graph(seed)
    x = np.random.default_rng(seed).uniform(-1, 1, 4)
    label = int(np.argmax(chain.forward(x)))
    np.testing.assert_allclose(graph_net.forward(x), chain.forward(x), rtol=1e-12)
    for eps in (0.05, 0.2, 0.5):
        spec = robustness_spec(4, 3, x, label, eps, "inf", None)
        exact = backends.certify_specs(chain, [spec], "relu-bab", device="cpu")[0]
        assert exact.proved or exact.counterexample is not None  # complete on the chain
        cert = backends.certify_specs(graph_net, [spec], "relu-bab", device="cpu", timeout=3.0)[0]
        if cert.proved or cert.counterexample is not None:
            assert cert.proved == exact.proved, (eps, cert.reason)
        check_verdict(graph_net, spec, x, eps, cert)


def test_auto_on_a_graph_goes_through_alpha_crown_and_relu_bab():
    net = residual_dag(5, n=5)  # 25 inputs: past input splitting's 16
    x = np.random.default_rng(5).uniform(-1, 1, net.input_size)
    label = int(np.argmax(net.forward(x)))
    eps = 0.1
    query = robustness_query(x, label, eps)
    result = solve(net, query, "auto", timeout=20.0)
    assert result.method.startswith("auto:") and result.result in ("sat", "unsat")
    spec = robustness_spec(net.input_size, 3, x, label, eps, "inf", None)
    if result.result == "unsat":
        assert np.all(sampled_min(net, spec, x, eps) > 0)
    else:
        assert query.violated_by(*result.counterexample)


@pytest.mark.slow
def test_cifar10_resnet_2b_prop_2_is_proved_by_auto(benchmark_data):
    from verify.vnncomp import solve_files

    folder = benchmark_data / "vnncomp2021" / "cifar10_resnet"
    result = solve_files(str(folder / "onnx" / "resnet_2b.onnx"),
                         str(folder / "vnnlib" / "prop_2_eps_0.008.vnnlib"), "auto", 120.0)
    assert result.result == "unsat", result.reason


def test_crown_bounds_cut_by_the_deadline_are_sound_and_resume_to_the_full_bounds():
    from verify import deadline

    net = residual_dag(2)
    spec, _ = spec_at(net, 2, 0.3)
    batch = InputBatch.from_specs([spec, spec], torch.device("cpu"))  # one set, bounded once
    graph_bounds._LAST_BOUNDS.clear()
    with torch.no_grad():
        with deadline.limit(deadline.Deadline.after(1e-9)):
            cut = graph_bounds.crown_bounds(net, batch)
        resumed = graph_bounds.crown_bounds(net, batch)
        graph_bounds._LAST_BOUNDS.clear()
        fresh = graph_bounds.crown_bounds(net, batch)
        ibp = graph_bounds.interval_bounds(net, batch)
    for name, (lo, up) in fresh.items():
        assert torch.equal(lo, resumed[name][0]) and torch.equal(up, resumed[name][1]), name
        assert bool((cut[name][0] <= lo).all() and (up <= cut[name][1]).all()), name
        # nothing tightened past IBP (equal up to the summation order of a batch of 1 or 2)
        assert torch.allclose(cut[name][0], ibp[name][0], rtol=1e-12, atol=1e-12), name


def test_a_graph_without_splittable_relus_is_bounded_not_split():
    """Relu on the graph input only: nothing to split; the verdict stays sound."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Gemm", ["r", "W", "b"], ["y"], transB=1)]
    net = GraphNetwork(GraphReader(make_model(nodes, [tensor("x", [1, 3])], [tensor("y", None)],
                                              [("W", rng.normal(size=(2, 3))),
                                               ("b", rng.normal(size=2))]), "flat").read())
    for eps in (0.1, 1.0):
        spec, x = spec_at(net, 0, eps)
        cert = backends.certify_specs(net, [spec], "relu-bab", device="cpu", timeout=0,
                                      max_domains=50)[0]
        check_verdict(net, spec, x, eps, cert)
        assert cert.proved or cert.counterexample is not None or cert.reason


@pytest.mark.parametrize("smooth", ["Sigmoid", "Relu"])
def test_pooling_and_smooth_dags_bounded_soundly_by_alpha_crown_and_relu_bab(smooth):
    """MaxPool / AveragePool / Concat and a smooth first activation (test_graph_ops' DAG):
    alpha-CROWN's bounds stay below the sampled margins, relu-bab is never wrong."""
    from test_graph_ops import random_dag

    for seed, eps in ((0, 0.05), (1, 0.3)):
        net = random_dag(seed, 4, smooth)
        spec, x = spec_at(net, seed, eps)
        cert = backends.certify_specs(net, [spec], "alpha-crown", device="cpu")[0]
        lower = np.array([np.inf if v is None else v for v in cert.margin_lower])
        lower = lower[np.arange(len(lower)) != int(np.argmax(net.forward(x)))]
        assert np.all(lower <= sampled_min(net, spec, x, eps) + 1e-9)
        cert = backends.certify_specs(net, [spec], "relu-bab", device="cpu", timeout=0,
                                      max_domains=100)[0]
        check_verdict(net, spec, x, eps, cert)


def residual_mlp(seed: int, width: int = 5) -> GraphNetwork:
    """x (3) -> Gemm -> Relu -> Gemm (+ skip) -> Relu -> Gemm (3 outputs): piecewise linear,
    every Relu reads a node's output (so a fully split leaf's LP is exact)."""
    rng = np.random.default_rng(seed)
    g = lambda *s: rng.normal(size=s) * 0.8
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"], transB=1),
             helper.make_node("Relu", ["h1"], ["a1"]),
             helper.make_node("Gemm", ["a1", "W2", "b2"], ["h2"], transB=1),
             helper.make_node("Add", ["a1", "h2"], ["res"]),
             helper.make_node("Relu", ["res"], ["a2"]),
             helper.make_node("Gemm", ["a2", "W3", "b3"], ["y"], transB=1)]
    net = GraphNetwork(GraphReader(make_model(
        nodes, [tensor("x", [1, 3])], [tensor("y", None)],
        [("W1", g(width, 3)), ("b1", g(width)), ("W2", g(width, width)), ("b2", g(width)),
         ("W3", g(3, width)), ("b3", g(3))]), "resmlp").read())
    return net


@pytest.mark.parametrize("seed,eps,norm", [(0, 0.8, "inf"), (1, 0.6, "1"), (3, 0.2, "1"),
                                           (5, 0.4, "1")])
def test_relu_bab_on_a_piecewise_linear_graph_is_complete(seed, eps, norm):
    """Weak bounds (no alpha / beta steps) and no attack force splitting down to fully split
    leaves, whose exact LPs decide them: YES or NO, as the graph MILP says, and sampling."""
    net = residual_mlp(seed)
    x = np.random.default_rng(seed).uniform(-1, 1, 3)
    label = int(np.argmax(net.forward(x)))
    spec = robustness_spec(3, 3, x, label, eps, norm, None)
    result = relu_bab.search(net, spec, relu_bab.ReluBaBOptions(
        device="cpu", timeout=0, steps=0, graph_steps=0, root_steps=0, attack=False))
    assert result.status in ("sat", "unsat") and result.leaf_lps > 0, result.reason
    milp = backends.certify_specs(net, [spec], "milp")[0]
    assert milp.proved or milp.counterexample is not None, milp.reason
    assert (result.status == "unsat") == milp.proved
    if result.status == "unsat":
        assert np.all(result.row_lower > 0)
        points = spec.input_set.sample(20000, np.random.default_rng(0))
        assert np.all(spec.output.values(net.forward(points)) > 0)
    else:
        assert result.reason == "exact LP of a fully split leaf"
        assert np.min(spec.output.values(net.forward(result.counterexample))) <= 0
        assert spec.input_set.contains(result.counterexample)


def fully_split_leaf(net, seed: int, eps: float):
    """The first domain of a search with every unstable Relu split by a sampled point's phases:
    (search, domain bounds, the point, its row's margin there)."""
    spec, search, point, values, domains = search_at_a_point(net, seed, eps)
    with torch.no_grad():
        for key, z in search.problem.input_of.items():
            phase = torch.where(values[z].flatten(1)[0] >= 0, 1, -1).to(torch.int8)
            domains.splits[key][0] = phase
        bounds, empty = search.problem.domain_bounds(domains.splits, len(domains))
    assert not bool(empty[0])
    row = int(domains.rows[0])
    return search, bounds, row, float(spec.output.values(net.forward(point))[row])


@pytest.mark.parametrize("seed", range(3))
def test_graph_leaf_lp_is_exact_on_piecewise_linear_graphs_and_says_what_it_relaxes(seed):
    from test_graph_ops import random_dag

    search, bounds, row, value = fully_split_leaf(residual_mlp(seed), seed, 0.3)
    lower, x, relaxed = search.leaf_lp(row, bounds, 0)
    assert relaxed == "" and x is not None
    assert lower <= value + 1e-9  # the point lies in the leaf
    replayed = float(search.spec.output.values(search.net.forward(x))[row])
    assert abs(replayed - lower) <= 1e-6 * (1 + abs(lower))  # exact: the LP optimum is real
    for smooth, op in (("Sigmoid", "Sigmoid"), ("Relu", "MaxPool")):
        search, bounds, row, value = fully_split_leaf(random_dag(seed, 4, smooth), seed, 0.3)
        lower, _, relaxed = search.leaf_lp(row, bounds, 0)
        assert op in relaxed and lower <= value + 1e-9, relaxed


def test_a_leaf_with_a_relaxed_node_stays_open_with_the_reason():
    """y = Sigmoid(x) + 0.3 (Relu(x) + Relu(-x)) on [-3, 3], least 1/2 at x = 0, above
    1/2 - 1e-6: true, but on either leaf the sigmoid's linear relaxation (over x's whole
    interval, which the splits do not narrow) falls below 1/2 at 0."""
    from verify.spec import Box, OutputProperty, Specification

    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "V", "c"], ["t"], transB=1),
             helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("Add", ["s", "t"], ["y"])]
    net = GraphNetwork(GraphReader(make_model(
        nodes, [tensor("x", [1, 1])], [tensor("y", None)],
        [("W", np.array([[1.0], [-1.0]])), ("b", np.zeros(2)), ("V", np.full((1, 2), 0.3)),
         ("c", np.zeros(1))]), "sig").read())
    floor = 0.5 - 1e-6
    spec = Specification(Box(np.array([-3.0]), np.array([3.0])),
                         OutputProperty(np.ones((1, 1)), np.array([floor])))
    result = relu_bab.search(net, spec, relu_bab.ReluBaBOptions(device="cpu", timeout=0,
                                                                attack=False))
    assert result.status == "unknown" and result.leaf_lps >= 1, result.reason
    assert "not exact" in result.reason and "Sigmoid" in result.reason, result.reason
    assert result.row_lower[0] <= 0.5 - floor  # nothing proved past the truth


def test_auto_on_a_graph_reaches_the_milp_stage(monkeypatch):
    """With the earlier stages answering unknown, auto's last stage (the graph MILP, exact on a
    piecewise-linear graph) decides, in agreement with relu-bab's complete search."""
    from verify import vnncomp

    net = residual_mlp(1)
    x = np.random.default_rng(1).uniform(-1, 1, 3)
    label = int(np.argmax(net.forward(x)))
    assert vnncomp.GRAPH_AUTO_STAGES[-1][0] == "milp"
    calls = []
    only_milp_decides(monkeypatch, calls)
    monkeypatch.setattr(vnncomp, "BAB_MAX_INPUTS", 0)  # 3 inputs: not input splitting
    answers = set()
    for eps in (0.05, 0.6):
        lines = [f"(declare-const X_{i} Real)" for i in range(3)]
        lines += [f"(declare-const Y_{j} Real)" for j in range(3)]
        for i, v in enumerate(x):
            lines += [f"(assert (>= X_{i} {float(v - eps)!r}))",
                      f"(assert (<= X_{i} {float(v + eps)!r}))"]
        others = [j for j in range(3) if j != label]
        lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in others)
                     + "))")
        query = parse_vnnlib("\n".join(lines))
        result = solve(net, query, "auto", timeout=30.0)
        assert calls[-1] == "milp" and result.method == "auto:milp", result.method
        spec = robustness_spec(3, 3, x, label, eps, "inf", None)
        exact = relu_bab.search(net, spec, relu_bab.ReluBaBOptions(device="cpu", timeout=0))
        assert result.result == {"unsat": "unsat", "sat": "sat"}[exact.status], result.reason
        if result.result == "sat":
            assert query.violated_by(*result.counterexample)
        answers.add(result.result)


def robustness_query(x: np.ndarray, label: int, eps: float):
    """The VNN-LIB query 'some other output >= output `label`' over the box x ± eps (3 outputs)."""
    lines = [f"(declare-const X_{i} Real)" for i in range(len(x))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(3)]
    for i, v in enumerate(x):
        lines += [f"(assert (>= X_{i} {float(v - eps)!r}))",
                  f"(assert (<= X_{i} {float(v + eps)!r}))"]
    others = [j for j in range(3) if j != label]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in others) + "))")
    return parse_vnnlib("\n".join(lines))


def test_auto_skips_the_milp_on_a_graph_with_too_many_unstable_relus(monkeypatch):
    """A graph whose MILP would have more than MILP_MAX_UNSTABLE unstable Relus ends auto with
    relu-bab (given all the time left), and the MILP stage is not run; under the limit it is."""
    from verify import vnncomp

    net = residual_mlp(1)
    x = np.random.default_rng(1).uniform(-1, 1, 3)
    label = int(np.argmax(net.forward(x)))
    calls = []
    def stage(net_, query_, step, options, pairs=None):
        calls.append(step)
        return vnncomp.QueryResult("unknown", method=step, open_pairs=pairs)

    monkeypatch.setattr(vnncomp, "_solve_with_certifier", stage)
    monkeypatch.setattr(vnncomp, "_solve_relu_bab", lambda net_, query_, options, pairs=None:
                        stage(net_, query_, "relu-bab", options, pairs))
    monkeypatch.setattr(vnncomp, "BAB_MAX_INPUTS", 0)
    query = robustness_query(x, label, 0.6)
    pairs = vnncomp._disjunct_specs(query)
    with torch.no_grad():
        bounds = graph_bounds.crown_bounds(net, InputBatch.from_specs([pairs[0][0]], "cpu"))
    unstable = sum(int(((bounds[n.inputs[0]][0] < 0) & (bounds[n.inputs[0]][1] > 0)).sum())
                   for n in net.graph.nodes if n.op == "Relu")
    assert unstable > 0  # the rule can tell the two cases apart
    for limit, milp_runs in ((unstable - 1, False), (unstable, True)):
        calls.clear()
        monkeypatch.setattr(vnncomp, "MILP_MAX_UNSTABLE", limit)
        result = solve(net, query, "auto", timeout=30.0)
        assert result.result == "unknown"
        assert calls[-1] == ("milp" if milp_runs else "relu-bab"), calls
        assert ("milp" in calls) == milp_runs


def test_auto_attack_on_a_graph_runs_in_float32_and_its_sat_replays_in_float64(monkeypatch):
    """auto's attack stage on a graph searches in float32 (GRAPH_ATTACK_DTYPE); a sat it finds
    is the float64 replay's: the counterexample violates the query in float64."""
    from verify import vnncomp

    net = residual_mlp(2)
    x = np.random.default_rng(2).uniform(-1, 1, 3)
    label = int(np.argmax(net.forward(x)))
    seen = []
    real = vnncomp._solve_with_certifier

    def record(net_, query_, step, options, pairs=None):
        seen.append((step, dict(options)))
        return real(net_, query_, step, options, pairs)

    monkeypatch.setattr(vnncomp, "_solve_with_certifier", record)
    monkeypatch.setattr(vnncomp, "BAB_MAX_INPUTS", 0)
    query = robustness_query(x, label, 2.0)
    result = solve(net, query, "auto", timeout=30.0)
    assert ("attack", {"stop_at_first": True, "dtype": "float32"}) in seen
    assert result.result == "sat", result.reason  # a wide box: some other class wins somewhere
    x_found, y_found = result.counterexample
    assert query.violated_by(x_found, net.forward(x_found))


def test_auto_answers_unknown_when_the_milp_cannot_encode_the_graph(monkeypatch):
    """A network the MILP refuses (e.g. a weight HiGHS would drop) ends auto with unknown and
    that reason, not an error."""
    from verify import vnncomp
    from verify.errors import InputError

    net = residual_mlp(1)

    def refusing_milp(net_, query_, step, options, pairs=None):
        if step == "milp":
            raise InputError("milp cannot encode this network")
        return vnncomp.QueryResult("unknown", method=step, open_pairs=pairs)

    monkeypatch.setattr(vnncomp, "_solve_with_certifier", refusing_milp)
    monkeypatch.setattr(vnncomp, "_solve_relu_bab", lambda net_, query_, options, pairs=None:
                        vnncomp.QueryResult("unknown", method="relu-bab", open_pairs=pairs))
    monkeypatch.setattr(vnncomp, "BAB_MAX_INPUTS", 0)
    lines = [f"(declare-const X_{i} Real)" for i in range(3)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(3)]
    lines += [f"(assert (>= X_{i} -0.1))" for i in range(3)]
    lines += [f"(assert (<= X_{i} 0.1))" for i in range(3)]
    lines.append("(assert (>= Y_0 Y_1))")
    result = solve(net, parse_vnnlib("\n".join(lines)), "auto", timeout=30.0)
    assert result.result == "unknown" and result.method == "auto:milp"
    assert "cannot encode" in result.reason
    # few inputs: bab first, then the MILP; a refused MILP leaves bab's answer (not an error)
    monkeypatch.setattr(vnncomp, "BAB_MAX_INPUTS", 16)
    monkeypatch.setattr(vnncomp, "_solve_bab", lambda net_, query_, options:
                        vnncomp.QueryResult("unknown", method="bab", reason="bab left it open"))
    result = solve(net, parse_vnnlib("\n".join(lines)), "auto", timeout=30.0)
    assert (result.result, result.method, result.reason) == ("unknown", "bab", "bab left it open")


def _sampled_tensors(net, lower: torch.Tensor, upper: torch.Tensor, seed: int,
                     count: int = 4000) -> dict[str, torch.Tensor]:
    """Every tensor of the graph at random points and corners of the box [lower, upper] (1, n)."""
    rng = np.random.default_rng(seed)
    u = torch.as_tensor(rng.uniform(size=(count, lower.shape[1])))
    u[: count // 4] = (u[: count // 4] > 0.5).to(u.dtype)  # corners
    x = lower + (upper - lower) * u
    with torch.no_grad():
        return net.run(net.split_input(x))


def _optimized_intermediate(seed: int):
    """A residual graph's CROWN bounds and alpha-CROWN's optimised bounds of its Relu inputs:
    (net, batch, crown, targets, tight, cost)."""
    from verify.bounds import alpha_crown

    net = residual_dag(seed, n=4, width=10)
    spec, _ = spec_at(net, seed, 0.4)
    batch = InputBatch.from_specs([spec], "cpu")
    with torch.no_grad():
        crown = graph_bounds.crown_bounds(net, batch)
    targets = alpha_crown.graph_relu_inputs(net)
    tight, cost = alpha_crown.graph_optimized_intermediate(net, batch, crown, targets, steps=20)
    return net, batch, crown, targets, tight, cost


@pytest.mark.parametrize("seed", range(4))
def test_graph_optimized_intermediate_bounds_are_sound_and_no_looser_than_crown(seed):
    """alpha-CROWN on the pre-activation bounds of a residual graph: every Relu input's new
    bounds contain the sampled values (random points and corners), are at least as tight as
    CROWN's, and over the seeds strictly tighter somewhere."""
    net, batch, crown, targets, tight, cost = _optimized_intermediate(seed)
    assert "x" not in targets and targets  # the Relu on the input: affine, nothing to optimise
    values = _sampled_tensors(net, batch.lower, batch.upper, seed)
    for z in targets:
        (lo0, up0), (lo, up) = crown[z], tight[z]
        assert bool((lo >= lo0).all() and (up <= up0).all()), z
        assert bool((values[z] >= lo - 1e-9).all() and (values[z] <= up + 1e-9).all()), z
    assert cost["intermediate_targets"] >= 1


def test_graph_optimized_intermediate_tightens_some_bound():
    """The optimisation does something: on some of a few residual graphs a Relu input's bounds
    shrink (the soundness test above only shows they never loosen)."""
    gained = 0.0
    for seed in range(2):
        _, _, crown, targets, tight, _ = _optimized_intermediate(seed)
        gained += sum(float((crown[z][1] - crown[z][0]).sum() - (tight[z][1] - tight[z][0]).sum())
                      for z in targets)
    assert gained > 1e-6


@pytest.mark.parametrize("seed", range(2))
def test_graph_alpha_crown_with_intermediate_bounds_is_sound_and_feeds_relu_bab(seed):
    """alpha-CROWN on a graph with optimize_intermediate: its margins are at least those
    without (both from the same start), below the sampled margins; relu-bab's root then starts
    from the remembered tighter bounds, and its search agrees with the exact answer."""
    from verify.bounds import alpha_crown

    net = residual_dag(seed, n=4, width=10)
    spec, _ = spec_at(net, seed, 0.3)
    batch = InputBatch.from_specs([spec], "cpu")
    plain, crown, _ = graph_optimized_margin_lower(
        net, batch, AlphaCROWNOptions(optimize_intermediate=False, early_stop=False))
    alpha_crown._REMEMBERED.clear()
    inner, crown2, cost = graph_optimized_margin_lower(
        net, batch, AlphaCROWNOptions(optimize_intermediate=True, early_stop=False))
    assert torch.equal(crown, crown2)
    values = _sampled_tensors(net, batch.lower, batch.upper, seed)
    y = net.join_outputs(values)
    margins = y @ batch.C[0].T - batch.d[0]
    assert bool((inner[0] <= margins.min(0).values + 1e-9).all())
    assert bool((inner >= plain - 1e-9).all()), (inner, plain)
    assert cost.get("intermediate_targets")  # small graphs: under GRAPH_INTERMEDIATE_ROWS
    remembered = alpha_crown.remembered_bounds(net, batch)
    assert remembered is not None
    root = relu_bab.GraphBounds(net, batch, torch.device("cpu")).root
    with torch.no_grad():
        crown_root = graph_bounds.crown_bounds(net, batch)
    for name, (lo, up) in remembered.items():  # (and the interval pass over the root)
        assert bool((root[name][0] >= torch.maximum(lo, crown_root[name][0])).all())
        assert bool((root[name][1] <= torch.minimum(up, crown_root[name][1])).all())
        assert bool((root[name][0] <= values[name] + 1e-9).all())
        assert bool((values[name] <= root[name][1] + 1e-9).all())
    result = relu_bab.search(net, spec, relu_bab.ReluBaBOptions(device="cpu", timeout=0))
    assert result.status in ("unsat", "sat"), result.reason
    if result.status == "unsat":  # no sampled point violates a proved row
        assert bool((margins.min(0).values > 0).all())
    else:
        x = result.counterexample
        assert bool((batch.C[0] @ torch.as_tensor(net.forward(x)) - batch.d[0] <= 0).any())


@pytest.mark.parametrize("seed", range(2))
def test_relu_bab_on_a_graph_agrees_with_itself_at_any_graph_steps(seed):
    """graph_steps (alpha/beta steps per round on a graph) changes the work, not the answer: with
    0 steps (no beta optimised past the root) and with 3, the complete search gives the same
    verdict, each checked against the sampled margins or the replayed counterexample."""
    net = residual_dag(seed, n=4, width=10)
    spec, x = spec_at(net, seed, 0.3)
    answers = []
    for steps in (0, 3):
        cert = backends.certify_specs(net, [spec], "relu-bab", device="cpu", timeout=0,
                                      graph_steps=steps, attack=False)[0]
        assert cert.proved or cert.counterexample is not None, cert.reason
        check_verdict(net, spec, x, 0.3, cert)
        answers.append(cert.proved)
    assert answers[0] == answers[1]


def test_relu_bab_root_starts_from_alpha_crowns_slopes_and_bounds():
    """After alpha-CROWN on a graph, relu-bab's root domains start from its best slopes per row
    (and its intermediate bounds): the root bound with no step taken is at least alpha-CROWN's,
    and still below the sampled margins. (Graphs whose Relus all read a node's output: a Relu
    on the input is not split, and relu-bab keeps CROWN's slope there.)"""
    from verify import deadline as deadlines

    moved = 0
    for seed in range(4):
        net = residual_mlp(seed, width=8)
        spec, _ = spec_at(net, seed, 0.5)
        batch = InputBatch.from_specs([spec], "cpu")
        alpha, crown, _ = graph_optimized_margin_lower(net, batch,
                                                       AlphaCROWNOptions(early_stop=False))
        search = relu_bab.ReluSearch(net, spec, relu_bab.ReluBaBOptions(device="cpu", timeout=0),
                                     deadlines.active())
        root, _, _, _ = search.bound(search.domains, steps=0)
        assert bool((root >= alpha[0] - 1e-9).all()), (seed, root, alpha, crown)
        values = _sampled_tensors(net, batch.lower, batch.upper, seed)
        margins = net.join_outputs(values) @ batch.C[0].T - batch.d[0]
        assert bool((root <= margins.min(0).values + 1e-9).all())
        moved += bool((alpha > crown + 1e-6).any())
    assert moved  # alpha-CROWN's slopes beat CROWN's somewhere: the first check can fail


def test_graph_backward_bound_reuse_gives_the_same_numbers():
    """backward_bound's `reuse` dict (per-node quantities of fixed bounds, kept across alpha /
    beta passes) changes no number: passes with other slopes and split terms over the same
    bounds equal those computed afresh, bit for bit."""
    net = residual_dag(3, n=4, width=10)
    spec, _ = spec_at(net, 3, 0.3)
    batch = InputBatch.from_specs([spec], "cpu")
    with torch.no_grad():
        bounds = graph_bounds.crown_bounds(net, batch)
    m = batch.C.shape[1]
    rng = torch.Generator().manual_seed(0)
    reuse: dict = {}
    for trial in range(3):
        alphas = {name: torch.rand(a.shape, generator=rng, dtype=torch.float64)
                  for name, a in graph_bounds.relu_slopes(net, bounds, m).items()}
        terms = {name: torch.randn(a.shape, generator=rng, dtype=torch.float64)
                 for name, a in alphas.items()}
        fresh = graph_bounds.margin_lower_from(net, batch, bounds, alphas, terms)
        kept = graph_bounds.margin_lower_from(net, batch, bounds, alphas, terms, reuse=reuse)
        assert torch.equal(fresh, kept), trial
        assert reuse  # filled on the first pass, read on the others


@pytest.mark.parametrize("calls", [3, 6, 10])
def test_relu_bab_past_its_deadline_stops_inside_the_round_with_sound_bounds(calls):
    """A deadline that expires inside a round (after `calls` checks): the search branches no
    further (no round after it), answers unknown with reason timeout, and its row bounds stay
    below the sampled margins, and no looser than the root's."""
    from verify import deadline as deadlines

    class ExpiresAfter:
        def __init__(self, n: int):
            self.n = n

        def expired(self) -> bool:
            self.n -= 1
            return self.n < 0

        def remaining(self) -> float:  # no limit on the clock: rounds are not cut
            return math.inf

    net = residual_dag(1, n=4, width=10)
    spec, _ = spec_at(net, 1, 0.4)
    root = relu_bab.ReluSearch(net, spec, relu_bab.ReluBaBOptions(device="cpu", timeout=0),
                               deadlines.active())
    root_lower, _, _, _ = root.bound(root.domains, steps=0)
    deadline = ExpiresAfter(calls)
    search = relu_bab.ReluSearch(net, spec, relu_bab.ReluBaBOptions(device="cpu", timeout=0),
                                 deadline)
    result = search.run()
    assert result.status == "unknown" and result.reason == "timeout", (result.status, result.reason)
    assert deadline.n < 0 and deadline.n >= -2  # checked once or twice after expiring, no more
    batch = InputBatch.from_specs([spec], "cpu")
    values = _sampled_tensors(net, batch.lower, batch.upper, 1)
    margins = net.join_outputs(values) @ batch.C[0].T - batch.d[0]
    sampled = margins.min(0).values.numpy()
    assert np.all(result.row_lower <= sampled + 1e-9)
    assert np.all(result.row_lower >= np.minimum(root_lower.numpy(), sampled) - 1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_refined_domain_bounds_are_sound_and_never_looser_than_the_clamped_root(seed):
    """GraphBounds.refine (per-domain CROWN bounds of the Relu inputs downstream of the splits)
    on two domains split on the same neurons (a sampled point's phases and their opposites):
    within the clamped root bounds, holding every sampled point that satisfies the splits."""
    from verify import deadline as deadlines

    net = residual_dag(seed, n=4, width=10)
    spec, _ = spec_at(net, seed, 0.4)
    search = relu_bab.ReluSearch(net, spec, relu_bab.ReluBaBOptions(device="cpu"),
                                 deadlines.Deadline())
    batch = InputBatch.from_specs([spec], "cpu")
    values = _sampled_tensors(net, batch.lower, batch.upper, seed)
    first = search.domains.take(torch.tensor([0]))
    for key, z in search.problem.input_of.items():
        lower, upper = (t.flatten(1)[0] for t in search.root[z])
        chosen = torch.nonzero((lower < 0) & (upper > 0)).squeeze(1)[:3]
        phase = torch.where(values[z].flatten(1)[0, chosen] >= 0, 1, -1).to(torch.int8)
        first.splits[key][0, chosen] = phase
    second = first.take(torch.tensor([0]))
    second.splits = {k: -s for k, s in first.splits.items()}
    domains = relu_bab.Domains.cat([first, second])
    with torch.no_grad():
        clamped, empty = search.problem.domain_bounds(domains.splits, 2)
        refined, refined_empty = search.problem.refine(
            search._batch(domains.rows), clamped, domains.splits, empty, deadlines.Deadline(),
            budget=7)  # (small passes: chunking covered)
    assert not bool(refined_empty[0]) and bool((refined_empty >= empty).all())
    tighter = 0
    for name, (lo, up) in refined.items():
        old_lo, old_up = clamped[name]
        assert bool((lo >= old_lo).all() and (up <= old_up).all()), name
        tighter += int((lo > old_lo + 1e-9).sum() + (up < old_up - 1e-9).sum())
    for d in range(2):
        inside = torch.ones(len(values[net.graph.inputs[0]]), dtype=torch.bool)
        for key, z in search.problem.input_of.items():
            phase, v = domains.splits[key][d], values[z].flatten(1)
            inside &= ((phase[None] == 0) | ((phase[None] > 0) & (v >= 0))
                       | ((phase[None] < 0) & (v <= 0))).all(1)
        assert d == 1 or bool(inside.any())
        if bool(refined_empty[d]):
            assert not bool(inside.any())
            continue
        for name, (lo, up) in refined.items():
            v = values[name][inside]
            # (1e-9: the sampled corners lie up to an ulp outside the box)
            assert bool((lo[d] <= v + 1e-9).all() and (v <= up[d] + 1e-9).all()), (d, name)
    assert tighter > 0


def test_a_search_with_minutes_to_spend_tightens_the_roots_last_relu_inputs():
    """With >= ROOT_INTERMEDIATE_MIN_S seconds the root's last Relu inputs are optimised first
    (GraphBounds.tighten_root): never looser than without, sound on sampled points."""
    from verify import deadline as deadlines

    net = residual_dag(3, n=4, width=10)
    spec, _ = spec_at(net, 3, 0.4)
    roots = []
    for count in (0, 2):
        search = relu_bab.ReluSearch(net, spec, relu_bab.ReluBaBOptions(
            device="cpu", root_intermediate=count), deadlines.Deadline.after(600.0))
        roots.append(search.root)
    batch = InputBatch.from_specs([spec], "cpu")
    values = _sampled_tensors(net, batch.lower, batch.upper, 3)
    tighter = 0
    for name, (lo, up) in roots[1].items():
        old_lo, old_up = roots[0][name]
        assert bool((lo >= old_lo).all() and (up <= old_up).all()), name
        assert bool((lo <= values[name] + 1e-9).all() and (values[name] <= up + 1e-9).all())
        tighter += int((lo > old_lo + 1e-9).sum() + (up < old_up - 1e-9).sum())
    assert tighter > 0


@pytest.mark.parametrize("cin,cout,kernel,stride,dilation,group,pads,height,n", [
    (3, 16, (3, 3), (2, 2), (1, 1), 1, [1, 1, 1, 1], 32, 1),  # resnet's first Conv
    (16, 32, (1, 1), (2, 2), (1, 1), 1, [0, 0, 0, 0], 16, 1),  # a 1x1 stride-2 shortcut
    (4, 6, (3, 3), (2, 2), (2, 2), 2, [0, 1, 2, 0], 9, 2),  # dilated, grouped, uneven pads
    (3, 5, (2, 3), (1, 2), (2, 1), 1, [1, 2, 0, 1], 8, 3),
    (2, 3, (3, 3), (1, 1), (1, 1), 1, [-1, 0, 1, 0], 7, 1)])  # a negative pad: None
def test_conv_transpose_is_the_vector_jacobian_product(cin, cout, kernel, stride, dilation,
                                                       group, pads, height, n):
    """graph.conv_transpose (the backward pass's Conv step) against autograd's vjp of the Conv
    forward, on an input with rows and columns the last window leaves out; a negative pad
    (a crop) is left to autograd (None)."""
    from verify.graph import ops

    torch.manual_seed(0)
    node = type("Node", (), {"op": "Conv"})()
    p = {"weight": torch.randn(cout, cin // group, *kernel, dtype=torch.float64),
         "bias": torch.randn(cout, dtype=torch.float64), "pads": pads, "strides": list(stride),
         "dilations": list(dilation), "group": group}
    shape = (n, cin, height, height + 1)
    if min(pads) < 0:
        coeffs = torch.randn((5, n, cout, height, height + 1), dtype=torch.float64)
        assert graph_bounds.conv_transpose(node, p, shape, coeffs) is None
        return
    x = torch.zeros((5, *shape), dtype=torch.float64, requires_grad=True)
    y = ops.f_conv(node, [x], p)
    coeffs = torch.randn(y.shape, dtype=torch.float64)
    expected = torch.autograd.grad((y * coeffs).sum(), [x])[0]
    found = graph_bounds.conv_transpose(node, p, shape, coeffs)
    assert found is not None and found.shape == expected.shape
    assert torch.allclose(found, expected, rtol=1e-12, atol=1e-12)


def test_a_sat_found_from_the_relaxations_corners_lies_in_the_input_set():
    """search()'s counterexample from its corner attack is the projected point it replayed (it
    was the raw PGD point, here 2.2e-16 outside the box)."""
    net = residual_dag(1, n=4, width=10)
    spec, _ = spec_at(net, 1, 0.2)
    found = relu_bab.search(net, spec, relu_bab.ReluBaBOptions(device="cpu", timeout=5,
                                                               attack=False))
    assert found.status == "sat"
    point = np.asarray(found.counterexample)
    assert spec.input_set.contains(point)
    assert spec.output.values(net.forward(point)).min() <= 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_domain_bounds_re_tighten_downstream_of_splits_as_a_full_pass(seed):
    """graph_domain_bounds re-runs the interval rules only downstream of a split Relu's clamped
    input (over the settled root): the same bounds as clamping and re-running every node's
    rule in topological order, on residual DAGs split by a sampled point's phases."""
    net, spec, search, domains, point = split_by_a_point(seed, full=False)
    problem = search.problem
    splits = domains.splits
    found, found_empty = relu_bab.graph_domain_bounds(net, search.root, splits,
                                                      problem.input_of, 1)
    clamp_at: dict = {}
    for key, z in problem.input_of.items():
        clamp_at.setdefault(z, []).append(key)
    full = {name: search.root[name] for name in net.graph.inputs}
    with torch.no_grad():
        for k, node in enumerate(net.graph.nodes):
            lo, up = search.root[node.output]
            step = graph_bounds.node_interval(net, k, node, [full[i] for i in node.inputs])
            lo, up = torch.maximum(lo, step[0]), torch.minimum(up, step[1])
            for key in clamp_at.get(node.output, []):
                phase = splits[key].reshape(lo.shape)
                lo = torch.where(phase > 0, lo.clamp(min=0), lo)
                up = torch.where(phase < 0, up.clamp(max=0), up)
            full[node.output] = (lo, up)
    moved = 0
    for name, (lo, up) in full.items():
        torch.testing.assert_close(found[name][0], lo, rtol=0, atol=1e-12)
        torch.testing.assert_close(found[name][1], up, rtol=0, atol=1e-12)
        root_lo, root_up = search.root[name]
        moved += int((lo > root_lo + 1e-9).sum() + (up < root_up - 1e-9).sum())
    assert moved > 0 and not bool(found_empty.any())
