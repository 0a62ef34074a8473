"""Branch and bound's refinements: alpha-CROWN on a combined row (`optimized_lower`) and the
local exact MILP around attack points (`local_milp`), checked against sampling, forward passes
and CROWN's per-row bounds."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from conftest import SHARED_BENCHMARKS, random_mlp
from verify.exact.bab import (bound_and_split_scores, falsify_box, local_milp,
                               optimized_lower)
from verify.spec import Box
from verify.vnncomp import solve_files


def _rows_at(net, A, b, points: np.ndarray) -> np.ndarray:
    """max_i (A f(x) - b)_i at each point (float64 forward pass)."""
    return (net.forward(points) @ A.T - b).max(axis=1)


def test_optimized_lower_is_sound_and_sometimes_beats_crown():
    """On random nets and sub-boxes: the combined-row bound never exceeds the sampled minimum of
    max_i (A f(x) - b)_i (it bounds lam^T (A f - b) <= that max); and over the trials it proves
    some boxes that CROWN's best single row leaves open."""
    rng = np.random.default_rng(0)
    beaten = 0
    for trial in range(12):
        net = random_mlp(rng, [3, 12, 12, 4])
        A = np.hstack([np.ones((3, 1)), -np.eye(3)])  # "output 0 is the largest" ...
        A = -A  # ... violated where y_j - y_0 <= 0 for every j
        b = np.zeros(3)
        centers = rng.uniform(-1, 1, size=(16, 3))
        lower = torch.as_tensor(centers - 0.3)
        upper = torch.as_tensor(centers + 0.3)
        At, bt = torch.as_tensor(A), torch.as_tensor(b)
        rows, _, neuron = bound_and_split_scores(net, lower, upper, At, bt, "crown")
        refined = optimized_lower(net, lower, upper, At, bt, neuron, steps=30, lr=0.5)
        for i in range(16):
            points = rng.uniform(lower[i].numpy(), upper[i].numpy(), size=(4000, 3))
            sampled = _rows_at(net, A, b, points).min()
            assert refined[i].item() <= sampled + 1e-9, (trial, i)
            assert rows[i].max().item() <= sampled + 1e-9, (trial, i)
        beaten += int(((refined > 0) & (rows.max(dim=1).values <= 0)).sum())
    assert beaten > 0


def test_local_milp_finds_a_thin_violation_and_agrees_with_proofs():
    """A violation band of width 2e-6 (c - 1e-6 <= y_0 - y_1 <= c + 1e-6, c its value at a random
    x*): the local MILP centred near x* returns a point whose float64 forward pass lies in the
    band. On small boxes that CROWN proves free of violations it returns None."""
    rng = np.random.default_rng(3)
    net = random_mlp(rng, [4, 16, 16, 3])
    box = Box(-np.ones(4), np.ones(4))
    x_star = rng.uniform(-0.5, 0.5, size=4)
    y = net.forward(x_star[None])[0]
    c = y[0] - y[1]
    A = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]])
    b = np.array([c + 1e-6, -c + 1e-6])
    near = x_star + 0.01
    x = local_milp(net, box, A, b, near, radius=0.02, time_limit=20)
    assert x is not None
    assert np.all(A @ net.forward(x[None])[0] <= b)
    assert np.all(np.abs(x - near) <= 0.04 + 1e-12)
    # A half-space violation "y_0 - y_1 <= c - 1": on small boxes CROWN proves violation-free,
    # the MILP must find nothing.
    A1, b1 = A[:1], np.array([c - 1.0])
    checked = 0
    for center in rng.uniform(-0.9, 0.9, size=(40, 4)):
        lower = torch.as_tensor(np.maximum(center - 0.04, -1))[None]
        upper = torch.as_tensor(np.minimum(center + 0.04, 1))[None]
        rows, _, _ = bound_and_split_scores(net, lower, upper, torch.as_tensor(A1),
                                            torch.as_tensor(b1), "crown")
        if rows.max().item() > 0:
            assert local_milp(net, box, A1, b1, center, radius=0.02, time_limit=20) is None
            checked += 1
    assert checked >= 5


def test_falsify_box_stops_at_its_deadline():
    """The cheap attack before branch and bound (1024 starts x 60 steps per disjunct) stops
    after its current step once the deadline has passed, keeping the best point so far."""
    net = random_mlp(np.random.default_rng(4), [3, 8, 2])
    box = Box(-np.ones(3), np.ones(3))
    A, b = np.array([[1.0, -1.0]]), np.array([-1e6])  # unreachable: no early stop on success
    forward, calls = net.torch_forward, []
    net.torch_forward = lambda x: calls.append(1) or forward(x)
    x, value = falsify_box(net, box, A, b, "cpu", steps=60, best=True,
                           deadline=time.monotonic() - 1)
    assert len(calls) == 1 and value > 0 and np.all(np.abs(x) <= 1)
    calls.clear()
    falsify_box(net, box, A, b, "cpu", steps=60, best=True, deadline=time.monotonic() + 600)
    assert len(calls) == 61


@pytest.mark.slow
@pytest.mark.parametrize("net_id, prop, expected", [("3_3", "prop_2", "unsat"),
                                                     ("1_9", "prop_7", "sat")])
def test_hardest_acasxu_instances_within_their_timeout(net_id, prop, expected):
    """The two ACAS Xu instances plain CROWN input splitting could not decide in 116 s: the
    alpha refinement proves 3_3 prop_2, the local MILP finds 1_9 prop_7's thin counterexample."""
    folder = SHARED_BENCHMARKS / "acasxu"
    if not folder.is_dir():
        pytest.skip("bundled benchmark data not present")
    result = solve_files(str(folder / f"onnx/ACASXU_run2a_{net_id}_batch_2000.onnx"),
                         str(folder / f"vnnlib/{prop}.vnnlib"), timeout=116)
    assert result.result == expected


def test_local_milp_skips_a_network_highs_cannot_hold():
    """A weight below 1e-9 (HiGHS would drop it) makes lp/milp refuse the network; bab's local
    MILP on a small box is only a counterexample finder, so it is skipped, not an error."""
    from verify import Dense, Network, ReLU, certify_specs
    from verify.spec import OutputProperty, Specification

    rng = np.random.default_rng(0)
    W1 = rng.normal(size=(20, 2))
    W1[0, 0] = 1e-10
    net = Network([Dense(W1, rng.normal(size=20), (2,), (20,)), ReLU((20,)),
                   Dense(rng.normal(size=(2, 20)), np.zeros(2), (20,), (2,))], (2,))
    f = net.forward(np.zeros(2))
    label = int(np.argmax(f))
    C = np.zeros((1, 2))
    C[0, label], C[0, 1 - label] = 1.0, -1.0
    d = np.array([-(C @ f)[0]])
    spec = Specification(Box(np.full(2, -3.0), np.full(2, 3.0)), OutputProperty(C, d))
    assert local_milp(net, spec.input_set, C, d, np.zeros(2), 0.1, 1.0) is None
    cert = certify_specs(net, [spec], "bab", polish_after=0.0, alpha_after=0.0, timeout=2.0)[0]
    assert cert.status.value in ("YES", "NO", "MAYBE")


def test_timeout_zero_means_no_limit_as_for_milp():
    """bab's timeout=0 answered MAYBE ("timeout") at once; like milp's, it now means no limit
    (max_boxes still bounds the search)."""
    from verify import Status, certify_specs, robustness_spec

    net = random_mlp(np.random.default_rng(1), [3, 8, 3])
    x = np.full(3, 0.5)
    spec = robustness_spec(3, 3, x, int(np.argmax(net.forward(x))), 0.01, "inf")
    cert = certify_specs(net, [spec], "bab", timeout=0.0)[0]
    assert cert.status is Status.YES, cert.reason


def smooth_graph(seed: int, act: str = "Sigmoid"):
    """A 2-input MLP with Sigmoid / Tanh layers and a residual add: a GraphNetwork."""
    from onnx import helper
    from onnx_reference import make_model, tensor
    from verify.onnx_io import network_from_onnx

    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"], transB=1),
             helper.make_node(act, ["h1"], ["a1"]),
             helper.make_node("Gemm", ["a1", "W2", "b2"], ["h2"], transB=1),
             helper.make_node("Tanh", ["h2"], ["a2"]),
             helper.make_node("Add", ["a1", "a2"], ["r"]),
             helper.make_node("Gemm", ["r", "W3", "b3"], ["y"], transB=1)]
    inits = [("W1", rng.normal(size=(8, 2)) * 2), ("b1", rng.normal(size=8)),
             ("W2", rng.normal(size=(8, 8))), ("b2", rng.normal(size=8)),
             ("W3", rng.normal(size=(2, 8))), ("b3", rng.normal(size=2))]
    net = network_from_onnx(make_model(nodes, [tensor("x", [1, 2])], [tensor("y", None)], inits),
                            "smooth")
    assert getattr(net, "is_graph", False)
    return net


@pytest.mark.parametrize("seed, act", [(0, "Sigmoid"), (1, "Tanh"), (2, "Sigmoid")])
def test_bab_on_smooth_graphs_is_exact_against_a_dense_grid(seed, act):
    """Input-split BaB on a Sigmoid / Tanh graph is complete in 2-D: with the threshold just
    below the minimum of a dense grid (minus what the net can move between grid points) it
    proves the property; just above the grid's minimum it finds a violation that replays in
    float64 (its value checked here again); the proved lower bound never exceeds the grid's."""
    from verify.exact.bab import BaBOptions, refute

    net = smooth_graph(seed, act)
    box = Box(np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
    A = np.array([[1.0, -1.0]])
    axis = np.linspace(-1, 1, 401)
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    values = net.forward(grid) @ A[0]
    grid_min = values.min()
    # A bound of the change between neighbouring grid points (spacing h): the largest sampled
    # step between neighbours, doubled.
    steps = np.abs(np.diff(values.reshape(401, 401), axis=0)).max() + \
        np.abs(np.diff(values.reshape(401, 401), axis=1)).max()
    options = BaBOptions(device="cpu", timeout=60, batch_size=256)
    check = lambda x: bool(np.all(net.forward(x) @ A.T <= b))
    b = np.array([grid_min - steps - 1e-3])
    proved = refute(net, box, A, b, options, time.monotonic() + 60, check)
    assert proved.status == "unsat", proved.reason
    assert proved.proved_lower <= grid_min - b[0] + 1e-9
    b = np.array([grid_min + 1e-3])
    found = refute(net, box, A, b, options, time.monotonic() + 60, check)
    assert found.status == "sat"
    x = found.counterexample
    assert np.all(box.lower <= x) and np.all(x <= box.upper)
    assert float(net.forward(x) @ A[0]) <= b[0]


def test_bab_certifies_graph_robustness_and_agrees_with_the_attack():
    """verify.certify(method="bab") takes a graph network and decides every case: NO wherever
    the attack finds a counterexample (and only with one that replays), YES wherever graph
    CROWN proves, and YES on larger balls CROWN leaves open."""
    import verify

    net = smooth_graph(3)
    rng = np.random.default_rng(4)
    answers = []
    for x in rng.uniform(-0.5, 0.5, size=(6, 2)):
        label = int(np.argmax(net.forward(x)))
        for eps in (0.05, 0.4):
            bab = verify.certify(net, x, label, eps, "inf", "bab", timeout=30, device="cpu")
            crown = verify.certify(net, x, label, eps, "inf", "crown", device="cpu")
            attack = verify.certify(net, x, label, eps, "inf", "attack", device="cpu")
            answers.append(bab.status)
            assert bab.status is not verify.Status.MAYBE, bab.reason
            if crown.status is verify.Status.YES:
                assert bab.status is verify.Status.YES
            if attack.status is verify.Status.NO:
                assert bab.status is verify.Status.NO
            if bab.status is verify.Status.NO:
                z = net.forward(np.asarray(bab.counterexample))
                assert np.all(np.abs(np.asarray(bab.counterexample) - x) <= eps)
                assert np.argmax(z) != label or np.any(np.delete(z, label) >= z[label])
    assert verify.Status.YES in answers and verify.Status.NO in answers


@pytest.mark.parametrize("seed", range(4))
def test_bab_on_a_chain_read_as_a_graph_searches_like_the_chain(seed):
    """A Relu MLP through the graph path (graph CROWN, its gradient for the split scores) gives
    the chain path's answers with about as many boxes (alpha-CROWN and local MILPs off, which
    the graph path does not have): the same bounds and scores up to rounding."""
    from onnx import helper
    from onnx_reference import make_model, tensor
    from verify.exact.bab import BaBOptions, refute
    from verify.graph.network import GraphNetwork
    from verify.graph.onnx_graph import GraphReader
    from verify.onnx_io import network_from_onnx

    rng = np.random.default_rng(seed)
    sizes, nodes, inits, prev = [3, 12, 12, 2], [], [], "x"
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        out = "y" if k == len(sizes) - 2 else f"h{k}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{k}", f"b{k}"], [out], transB=1))
        inits += [(f"W{k}", rng.normal(size=(n_out, n_in)) * np.sqrt(2 / n_in)),
                  (f"b{k}", rng.normal(size=n_out) * 0.1)]
        if out != "y":
            nodes.append(helper.make_node("Relu", [out], [f"r{k}"]))
            prev = f"r{k}"
    model = make_model(nodes, [tensor("x", [1, 3])], [tensor("y", None)], inits)
    chain, graph = network_from_onnx(model, "mlp"), GraphNetwork(GraphReader(model, "mlp").read())
    box, A = Box(-np.ones(3), np.ones(3)), np.array([[1.0, -1.0]])
    axis = np.linspace(-1, 1, 41)
    grid_min = (chain.forward(np.stack(np.meshgrid(axis, axis, axis), -1).reshape(-1, 3)) @ A[0]).min()
    options = BaBOptions(device="cpu", alpha_steps=0, polish_after=1e9, batch_size=64)
    for b in (grid_min - 0.05, grid_min + 0.01):
        on_chain = refute(chain, box, A, np.array([b]), options, time.monotonic() + 60)
        on_graph = refute(graph, box, A, np.array([b]), options, time.monotonic() + 60)
        assert on_graph.status == on_chain.status == ("unsat" if b < grid_min else "sat")
        assert on_graph.boxes <= 1.5 * on_chain.boxes + 8


def test_vnnlib_auto_on_a_small_smooth_graph_is_complete(tmp_path):
    """vnncomp.solve "auto" on a 2-input Tanh graph runs input-split BaB (complete): unsat just
    below the dense grid's minimum of y_0 - y_1, sat (replayed) just above it."""
    from verify.vnncomp import solve
    from verify.vnnlib import load_vnnlib

    net = smooth_graph(1, "Tanh")
    axis = np.linspace(-1, 1, 401)
    values = net.forward(np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)) @ [1.0, -1.0]
    for threshold, expected in ((values.min() - 0.02, "unsat"), (values.min() + 1e-3, "sat")):
        path = tmp_path / f"{expected}.vnnlib"
        path.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n"
                        "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
                        "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n"
                        "(assert (>= X_1 -1))\n(assert (<= X_1 1))\n"
                        f"(assert (<= Y_0 (+ Y_1 {float(threshold)!r})))\n")
        result = solve(net, load_vnnlib(path), "auto", timeout=30)
        assert result.result == expected and result.method == "bab", result.reason
        if expected == "sat":
            x = np.asarray(result.counterexample[0], dtype=float)  # (x, f(x)), replayed
            assert np.all(np.abs(x) <= 1) and float(net.forward(x) @ [1.0, -1.0]) <= threshold
