"""relu-bab (ReLU-split branch and bound, beta-CROWN bounds) against the exact MILP, sampling and
the VNN-COMP mnist_fc ground truth."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import random_conv_net, random_mlp
from verify import InputError, Status
from verify.attack import AttackOptions, attack_upper_bounds
from verify.backends import certify, certify_specs
from verify.bounds import InputBatch, crown
from verify.exact import relu_bab
from verify.spec import robustness_spec

CASES = [(seed, eps) for seed in range(6) for eps in (0.1, 0.3, 0.6)]


def _net_and_point(seed: int, sizes=(5, 10, 10, 3)):
    rng = np.random.default_rng(seed)
    net = random_mlp(rng, list(sizes))
    x = rng.normal(size=sizes[0])
    return net, x, int(np.argmax(net.forward(x)))


@pytest.mark.parametrize("seed,eps", CASES)
def test_agrees_with_exact_milp_and_brackets_its_minimum(seed, eps):
    net, x, label = _net_and_point(seed)
    spec = robustness_spec(net.input_size, net.output_size, x, label, eps, "inf", None)
    # attack off: the search itself (bounds, leaves, PGD from its minimisers) decides
    cert = certify_specs(net, [spec], "relu-bab", attack=False, timeout=0, device="cpu")[0]
    exact = certify_specs(net, [spec], "milp", exact_margins=True, attack=False)[0]
    assert cert.status in (Status.YES, Status.NO), cert.reason
    assert cert.status == exact.status
    if cert.status is Status.YES:  # each row's bound <= the exact minimum <= attack's value
        attack, _ = attack_upper_bounds(net, spec, AttackOptions(restarts=20))
        ours = np.array([v for v in cert.margin_lower if v is not None])
        minimum = np.array([v for v in exact.margin_lower if v is not None])
        assert np.all(ours > 0)
        assert np.all(ours <= minimum + 1e-7)
        assert np.all(minimum <= np.asarray(attack) + 1e-7)


@pytest.mark.parametrize("seed,eps", [(0, 0.05), (1, 0.05), (3, 0.05), (3, 0.15)])
def test_conv_net_agrees_with_exact_milp(seed, eps):
    rng = np.random.default_rng(seed)
    net = random_conv_net(rng)
    x = rng.uniform(0, 1, 36)
    spec = robustness_spec(36, 4, x, int(np.argmax(net.forward(x))), eps, "inf", (0, 1))
    cert = certify_specs(net, [spec], "relu-bab", attack=False, timeout=0, device="cpu")[0]
    exact = certify_specs(net, [spec], "milp", exact_margins=True, attack=False)[0]
    assert cert.status == exact.status and cert.status in (Status.YES, Status.NO)
    ours = [v for v in cert.margin_lower if v is not None]
    minimum = [v for v in exact.margin_lower if v is not None]
    assert all(a <= b + 1e-7 for a, b in zip(ours, minimum))


@pytest.mark.parametrize("seeds", [(2, 3), pytest.param((0, 1), marks=pytest.mark.slow)])
def test_search_reaches_leaves_and_decides_them_by_lp(seeds):
    # Wide boxes: the relaxation stays loose until every unstable neuron is split, so the exact
    # leaf LPs decide; verdicts still agree with the MILP (seed 0: sat after ~500 leaf LPs).
    used_leaves = 0
    for seed in seeds:
        net, x, label = _net_and_point(seed, (3, 6, 6, 2))
        spec = robustness_spec(net.input_size, net.output_size, x, label, 0.8, "inf", None)
        result = relu_bab.search(net, spec, relu_bab.ReluBaBOptions(device="cpu", steps=0,
                                                                    root_steps=0))
        exact = certify_specs(net, [spec], "milp", attack=False)[0]
        assert result.status in ("unsat", "sat"), result.reason
        assert (result.status == "unsat") == (exact.status is Status.YES)
        used_leaves += result.leaf_lps
    assert used_leaves > 0


def _split_domain(seed: int, full: bool):
    """A search's root for a random net, with the first unstable neurons (all if `full`) split
    by the phase of a sampled point (so the domain holds that point)."""
    net, x, label = _net_and_point(seed, (4, 8, 8, 3))
    spec = robustness_spec(net.input_size, net.output_size, x, label, 0.5, "inf", None)
    search = relu_bab.ReluSearch(net, spec, relu_bab.ReluBaBOptions(device="cpu"),
                                 relu_bab.deadlines.Deadline())
    point = spec.input_set.sample(1, np.random.default_rng(seed))[0]
    h, outputs = torch.as_tensor(point)[None], []
    for k, layer in enumerate(net.layers):
        h = layer.torch_forward(h, search.params[k]).flatten(1)
        outputs.append(h)
    domains = search.domains.take(torch.tensor([0]))
    for k in search.relus:
        lower, upper = search.root[k - 1]
        unstable = torch.nonzero((lower[0] < 0) & (upper[0] > 0)).squeeze(1)
        chosen = unstable if full else unstable[:2]
        phase = torch.where(outputs[k - 1][0, chosen] >= 0, 1, -1)
        domains.splits[k][0, chosen] = phase.to(torch.int8)
    return net, spec, search, domains, point


@pytest.mark.parametrize("seed", range(5))
def test_beta_bounds_between_crown_and_the_domain_minimum(seed):
    for full in (False, True):
        net, spec, search, domains, point = _split_domain(seed, full)
        row = int(domains.rows[0])
        with torch.no_grad():
            bounds, empty = relu_bab.domain_bounds(net, search.root, domains.splits,
                                                   search.params, len(domains))
            plain = crown.margin_lower_from(net, search._batch(domains.rows), bounds)[0, 0]
        assert not bool(empty[0])  # it holds the sampled point
        beta, bounds, _, _ = search.bound(domains, steps=20)
        # the first iterate is CROWN (alpha inherited from the root, beta = 0): as tight up to
        # the split terms' own rounding allowance, and the steps only improve it
        assert float(beta[0]) >= float(plain) - 1e-9
        value = spec.output.values(net.forward(point))[row]
        assert float(beta[0]) <= value + 1e-9  # sound on the domain
        if full:  # all split: the domain is linear and its LP is exact
            from verify.bounds.lp import RowSolver
            from verify.bounds.relu_encoding import TRIANGLE, build_program

            program = build_program(net, spec.input_set, [(lo[0].numpy(), up[0].numpy())
                                                          for lo, up in bounds], TRIANGLE)
            exact = RowSolver(program).minimize(spec.output.C[row], spec.output.d[row])
            assert float(beta[0]) <= exact.primal + 1e-7
            lower = search.leaf_lp(row, bounds, 0)[0]
            assert lower <= exact.primal + 1e-7 and lower >= float(beta[0]) - 1e-6


def test_split_terms_with_zero_beta_leave_crown_unchanged():
    net, x, label = _net_and_point(0)
    spec = robustness_spec(net.input_size, net.output_size, x, label, 0.3, "inf", None)
    batch = InputBatch.from_specs([spec], torch.device("cpu"))
    bounds = crown.layer_bounds(net, batch)
    terms = {k: torch.zeros((1, batch.C.shape[1], bounds[k - 1][0].shape[1]),
                            dtype=torch.float64) for k in relu_bab.splittable_layers(net)}
    plain = crown.margin_lower_from(net, batch, bounds)
    with_terms = crown.margin_lower_from(net, batch, bounds, split_terms=terms)
    assert torch.all(with_terms <= plain) and torch.allclose(with_terms, plain, atol=1e-12)


def test_options_are_checked_and_method_is_registered():
    net, x, label = _net_and_point(1)
    with pytest.raises(InputError, match="batch_size"):
        certify(net, x, label, 0.1, method="relu-bab", batch_size=0)
    with pytest.raises(InputError, match="unknown option"):
        certify(net, x, label, 0.1, method="relu-bab", beta=1.0)
    assert certify(net, x, label, 0.01, method="relu-bab").status is Status.YES


def _truth(root):
    with open(root / "mnist_fc/ground_truth.csv") as f:
        return {row["property"]: row["ground_truth"] for row in csv.DictReader(f)}


@pytest.mark.slow
def test_mnist_fc_relu_bab_agrees_with_ground_truth(benchmark_data):
    from verify import load_onnx
    from verify.vnncomp import solve
    from verify.vnnlib import load_vnnlib

    truth = _truth(benchmark_data)
    net = load_onnx(benchmark_data / "mnist_fc/onnx/mnist-net_256x2.onnx")
    for prop in ("prop_0_0.03", "prop_9_0.05", "prop_6_0.05"):
        query = load_vnnlib(benchmark_data / f"mnist_fc/vnnlib/{prop}.vnnlib")
        result = solve(net, query, "relu-bab", timeout=60)
        assert result.result in ("sat", "unsat", "timeout"), (prop, result)
        if result.result != "timeout":  # a wrong answer fails; a timeout is only slow
            assert result.result == truth[prop], (prop, result)


@pytest.mark.parametrize("seed,eps", [(1, 0.15), (3, 0.2), (4, 0.05)])
def test_auto_past_16_inputs_decides_by_relu_bab(seed, eps):
    # 20 inputs: no input splitting; alpha-CROWN leaves these open, the exact MILP proves them
    from verify.spec import Box
    from verify.vnncomp import solve
    from verify.vnnlib import Disjunct, VnnlibCase, VnnlibQuery

    net, x, label = _net_and_point(seed, (20, 16, 16, 3))
    spec = robustness_spec(net.input_size, net.output_size, x, label, eps, "inf", None)
    assert certify_specs(net, [spec], "alpha-crown")[0].status is Status.MAYBE
    assert certify_specs(net, [spec], "milp")[0].status is Status.YES
    disjuncts = [Disjunct(np.eye(3)[[label]] - np.eye(3)[[j]], np.zeros(1))  # y_j >= y_label
                 for j in range(3) if j != label]
    query = VnnlibQuery(20, 3, [VnnlibCase(Box(x - eps, x + eps), disjuncts)])
    result = solve(net, query, "auto", timeout=60)
    assert (result.result, result.method) == ("unsat", "auto:relu-bab"), result


def test_crown_benchmark_compares_the_same_network():
    # benchmarks/crown_vs_auto_lirpa.py hands auto_LiRPA a torch copy: it must be our network
    import sys

    from conftest import MODELS, REPO
    from verify import load_onnx

    sys.path.insert(0, str(REPO))
    from benchmarks.crown_vs_auto_lirpa import torch_model

    x = np.load(MODELS / "digits_test.npz")["x"][:5]
    for name in ("digits_mlp", "digits_cnn"):
        net = load_onnx(MODELS / f"{name}.onnx")
        ours = net.forward(x)
        theirs = torch_model(net)(torch.as_tensor(x).reshape(5, *net.input_shape))
        assert np.allclose(theirs.detach().numpy(), ours, atol=1e-12, rtol=0)


class _Gate(torch.nn.Module):
    """relu(A x) * sigmoid(B x) -> C: the Relu sits behind a Product (interval only)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Linear(4, 6), torch.nn.Linear(4, 6),
                                  torch.nn.Linear(6, 3))

    def forward(self, x):
        return self.c(torch.relu(self.a(x)) * torch.sigmoid(self.b(x)))


@pytest.mark.parametrize("kind", ["linear", "smooth", "gate"])
def test_relu_bab_without_a_splittable_relu_in_reach(tmp_path, kind):
    """No Relu (a linear chain, a Sigmoid/Tanh graph) or none the margin's backward pass reaches
    (behind a Product): relu-bab answers (was an IndexError / autograd RuntimeError / KeyError),
    never YES where the attack finds a counterexample, and YES only above sampled minima."""
    from test_graph import export

    from verify import backends
    from verify.onnx_io import load_onnx

    torch.manual_seed(0)
    model = {"linear": lambda: torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)),
             "smooth": lambda: torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Sigmoid(),
                                                   torch.nn.Linear(8, 8), torch.nn.Tanh(),
                                                   torch.nn.Linear(8, 3)),
             "gate": _Gate}[kind]().eval()
    export(model, (4,), tmp_path / "m.onnx")
    net = load_onnx(tmp_path / "m.onnx")
    x = np.array([0.1, -0.2, 0.3, 0.05])
    label = int(np.argmax(net.forward(x)))
    rng = np.random.default_rng(0)
    for eps in (0.05, 0.3, 3.0):
        spec = robustness_spec(4, 3, x, label, eps, "inf", None)
        cert = backends.certify_specs(net, [spec], "relu-bab", timeout=20)[0]
        attack = backends.certify_specs(net, [spec], "attack")[0]
        sampled = np.min([spec.output.values(y) for y in net.forward(
            x + rng.uniform(-eps, eps, (4000, 4)))], axis=0)
        assert cert.status.name in ("YES", "NO", "MAYBE") and cert.reason is not None
        if cert.status.name == "YES":
            assert attack.status.name != "NO" and np.all(sampled > 0)
            rows = np.array([v for j, v in enumerate(cert.margin_lower) if j != label])
            assert np.all(rows <= sampled + 1e-9)
        if cert.status.name == "NO":
            assert spec.output.values(net.forward(cert.counterexample)).min() <= 0


def test_a_round_is_cut_to_fit_half_the_time_left(monkeypatch):
    """With a fake clock on which bounding costs 0.01 s per domain (and no attack, so that a
    property that fails keeps the search busy), every round after the first measured one is cut so that it ends within half the time left when it starts: the
    search cannot run far past its deadline whatever its batch size."""
    from verify import deadline as deadlines

    now = [0.0]
    monkeypatch.setattr(relu_bab.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(deadlines.time, "monotonic", lambda: now[0])
    rounds = []
    real = relu_bab.ReluSearch.bound

    def costly(self, chosen, steps):
        left = self.deadline.remaining()
        out = real(self, chosen, steps)
        now[0] += 0.01 * len(chosen)
        rounds.append((len(chosen), left))
        return out

    monkeypatch.setattr(relu_bab.ReluSearch, "bound", costly)
    monkeypatch.setattr(relu_bab.ReluSearch, "_attack_corners", lambda *a, **k: None)
    net, x, label = _net_and_point(0, sizes=(5, 40, 40, 40, 3))
    spec = robustness_spec(net.input_size, net.output_size, x, label, 2.0, "inf", None)
    options = relu_bab.ReluBaBOptions(attack=False, timeout=0, batch_size=4096, device="cpu")
    result = relu_bab.search(net, spec, options, deadlines.Deadline.after(2.0))
    assert result.reason == "timeout" and len(rounds) >= 4
    assert now[0] <= 2.0 + 0.01 * rounds[1][0] + 0.02  # past the deadline by one round at most
    for take, left in rounds[2:]:
        assert 0.01 * take <= 0.5 * left + 0.01  # within half the time left (or one domain)
