"""CROWN's faster paths give the bounds of the plain ones: grouped neuron rows, the batched
certificate replay, the float32 option (sound, never above float64 here), equality with
auto_LiRPA's CROWN (skipped when it is not importable), device="auto"."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from conftest import MODELS, random_conv_net, random_mlp, sampled_margins
from verify import (Box, Conv2d, Dense, Network, OutputProperty, ReLU, Specification,
                    certify_batch, load_onnx)
from verify.bounds import InputBatch, crown, ibp
from verify.spec import robustness_specs
from verify.verdict import certificate_from_bounds, certificates_from_bounds

CPU = torch.device("cpu")


def digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(MODELS / "digits_test.npz")
    return data["x"][:n], data["y"][:n]


def batch_of(net: Network, xs, ys, eps: float, norm: str = "inf") -> tuple[list, InputBatch]:
    specs = robustness_specs(net.input_size, net.output_size, xs, ys, eps, norm, (0.0, 1.0))
    return specs, InputBatch.from_specs(specs, CPU)


@pytest.mark.parametrize("model", ["digits_mlp", "digits_cnn"])
def test_row_groups_give_the_bounds_of_one_padded_group(model, monkeypatch):
    net = load_onnx(MODELS / f"{model}.onnx")
    xs, ys = digits(40)
    _, batch = batch_of(net, xs, ys, 0.05)
    with torch.no_grad():
        grouped, selections = crown.propagate(net, batch, ibp.layer_bounds(net, batch))
        assert any(len(crown._row_groups(valid)) > 1 for _, valid in selections.values())
        monkeypatch.setattr(crown, "GROUP_OVERHEAD_ROWS", 1e9)  # one group: the batch's padding
        single, _ = crown.propagate(net, batch, ibp.layer_bounds(net, batch))
    for (a_lo, a_up), (b_lo, b_up) in zip(grouped, single):
        torch.testing.assert_close(a_lo, b_lo, rtol=0, atol=1e-12)
        torch.testing.assert_close(a_up, b_up, rtol=0, atol=1e-12)


def test_row_groups_cover_every_input_with_rows_once():
    valid = torch.zeros(50, 7, dtype=torch.bool)
    counts = np.random.default_rng(0).integers(0, 8, size=50)
    for b, c in enumerate(counts):
        valid[b, :c] = True
    groups = crown._row_groups(valid)
    seen = torch.cat([g for g, _ in groups]).tolist()
    assert len(seen) == len(set(seen))  # each input in one group at most
    assert set(seen) >= {b for b in range(50) if counts[b] > 0}  # every input with rows
    for group, count in groups:
        assert count == int(counts[group.numpy()].max())


def test_batched_certificates_equal_one_by_one():
    """Random labels: many inputs are misclassified (NO, with the center as counterexample)."""
    net = load_onnx(MODELS / "digits_mlp.onnx")
    xs, _ = digits(60)
    labels = np.random.default_rng(1).integers(0, 10, size=60)
    specs, batch = batch_of(net, xs, labels, 0.02)
    lower = crown.margin_lower_bounds(net, batch)[0].numpy()
    batched = certificates_from_bounds(net, specs, "crown", lower)
    assert {c.status.value for c in batched} >= {"NO", "YES"}
    for spec, row, cert in zip(specs, lower, batched):
        one = certificate_from_bounds(net, spec, "crown", row)
        assert (cert.status, cert.reason, cert.counterexample, cert.counterexample_logits) == \
            (one.status, one.reason, one.counterexample, one.counterexample_logits)
        assert cert.margin_lower == one.margin_lower
        np.testing.assert_allclose([v for v in cert.margin_upper if v is not None],
                                   [v for v in one.margin_upper if v is not None], rtol=1e-12)


def test_candidates_replay_in_one_pass_as_one_by_one():
    """certificate_from_bounds replays its candidates in one batched float64 pass: the row
    upper bounds are each point's values' minimum, and the NO is the worst violating point
    with its own one-point values (candidates outside the set are projected or skipped)."""
    net = load_onnx(MODELS / "digits_mlp.onnx")
    xs, ys = digits(8)
    rng = np.random.default_rng(4)
    statuses = []
    for x, y in zip(xs, ys):
        spec = robustness_specs(net.input_size, net.output_size, x[None], [y], 0.3, "inf",
                                (0.0, 1.0))[0]
        candidates = [x + rng.uniform(-0.5, 0.5, x.shape) for _ in range(12)]
        cert = certificate_from_bounds(net, spec, "crown", np.full(9, -np.inf),
                                       candidates=candidates)
        values = []
        for c in [x, *candidates]:
            c = spec.input_set.project(c)
            values.append(spec.output.values(net.forward(c)))
        values = np.array(values)
        np.testing.assert_allclose([v for v in cert.margin_upper if v is not None],
                                   values.min(axis=0), rtol=1e-12, atol=1e-12)
        worst = values.min(axis=1)
        statuses.append(cert.status.value)
        if worst.min() > 0:
            assert cert.status.value == "MAYBE"
            continue
        assert cert.status.value == "NO"
        replayed = spec.output.values(net.forward(np.asarray(cert.counterexample)))
        assert replayed.min() == pytest.approx(worst.min(), abs=1e-12) and replayed.min() <= 0
    assert "NO" in statuses


def test_an_input_on_the_decision_boundary_is_replayed_alone():
    """Two equal logits at the center: the row value is 0 in any order of sums; NO either way."""
    net = Network([Dense(np.array([[1.0, 0.0], [1.0, 0.0]]), np.zeros(2), (2,), (2,))], (2,))
    specs = robustness_specs(2, 2, np.array([[0.5, 0.5], [0.5, 0.5]]), [0, 1], 0.1)
    certs = certificates_from_bounds(net, specs, "crown", np.full((2, 1), -1.0))
    assert [c.status.value for c in certs] == ["NO", "NO"]


# ---------------------------------------------------------------------------------------------
# float32 option

def float32_cases():
    rng = np.random.default_rng(3)
    yield "digits_mlp", load_onnx(MODELS / "digits_mlp.onnx"), 0.03
    yield "digits_cnn", load_onnx(MODELS / "digits_cnn.onnx"), 0.03
    yield "random_mlp", random_mlp(rng, [6, 30, 30, 30, 4]), 0.2
    yield "random_conv", random_conv_net(rng), 0.2


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_float32_bounds_are_sound_and_not_above_float64(norm):
    for name, net, eps in float32_cases():
        rng = np.random.default_rng(0)
        if net.input_size == 64:
            xs, ys = digits(12)
        else:
            xs = rng.uniform(0, 1, size=(12, net.input_size))
            ys = net.forward(xs).argmax(axis=1)
        eps = eps * (4 if norm != "inf" else 1)
        specs, batch = batch_of(net, xs, ys, eps, norm)
        low64 = crown.margin_lower_bounds(net, batch)[0]
        low32, _ = crown.margin_lower_bounds(net, batch, dtype="float32")
        assert low32.dtype == torch.float64
        assert bool((low32 <= low64 + 1e-12).all()), name
        assert bool((low32 > low64 - 0.05 * (1 + low64.abs())).all()), name  # still CROWN-tight
        for spec, row in zip(specs, low32.numpy()):
            sampled = sampled_margins(net, spec, 300).min(axis=0)
            assert np.all(row <= sampled), name
        with torch.no_grad():
            layers, _ = crown.propagate(net, batch, ibp.layer_bounds(net, batch),
                                        dtype=torch.float32)
        for b, spec in enumerate(specs):
            h = spec.input_set.sample(200, rng)
            for k, layer in enumerate(net.layers):
                h = layer.forward(h)
                flat = h.reshape(len(h), -1)
                assert np.all(flat >= layers[k][0][b].numpy()), (name, k)
                assert np.all(flat <= layers[k][1][b].numpy()), (name, k)


def test_float32_bounds_hold_for_weights_float32_cannot_hold():
    """z = (1 - 2^-40) h - 1 + 2^-50 on h = x in [1 - 2^-38, 1 + 2^-38]: float32 rounds the weight
    and bias to 1 and -1, which puts the minimum 2^-40 too high; the bounds must hold the exact
    (rational) range all the same."""
    w, b, e = 1 - 2.0 ** -40, -1 + 2.0 ** -50, 2.0 ** -38
    net = Network([Dense([[1.0]], [0.0], (1,), (1,)), ReLU((1,)), Dense([[w]], [b], (1,), (1,)),
                   ReLU((1,)), Dense([[1.0], [-1.0]], [0.0, 0.0], (1,), (2,))], (1,))
    spec = Specification(Box([1 - e], [1 + e]), OutputProperty(np.array([[1.0, -1.0]]), [0.0]))
    batch = InputBatch.from_specs([spec], CPU)
    with torch.no_grad():
        bounds, selections = crown.propagate(net, batch, ibp.layer_bounds(net, batch),
                                             include_last=False, dtype=torch.float32)
    assert int(selections[2][1].sum()) == 1  # the neuron went through the float32 pass
    exact_min = Fraction(w) * (1 - Fraction(e)) + Fraction(b)
    exact_max = Fraction(w) * (1 + Fraction(e)) + Fraction(b)
    assert Fraction(bounds[2][0].item()) <= exact_min
    assert Fraction(bounds[2][1].item()) >= exact_max


def test_float32_option_through_the_public_api():
    net = load_onnx(MODELS / "digits_mlp.onnx")
    xs, ys = digits(20)
    c64 = certify_batch(net, xs, ys, 0.03, method="crown", device="cpu", domain=(0, 1))
    c32 = certify_batch(net, xs, ys, 0.03, method="crown", device="cpu", domain=(0, 1),
                        dtype="float32")
    for a, b in zip(c64, c32):
        assert b.proved <= a.proved  # float32 proves nothing float64 does not (here)
        assert all(y <= x + 1e-12 for x, y in zip(a.margin_lower, b.margin_lower) if x is not None)


def test_device_auto_equals_the_explicit_device():
    net = load_onnx(MODELS / "digits_mlp.onnx")
    xs, ys = digits(10)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    auto = certify_batch(net, xs, ys, 0.03, method="crown", domain=(0, 1))  # device="auto"
    explicit = certify_batch(net, xs, ys, 0.03, method="crown", device=device, domain=(0, 1))
    assert [c.margin_lower for c in auto] == [c.margin_lower for c in explicit]
    assert {c.cost["device"] for c in auto} == {device}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_float32_on_cuda_is_sound_and_below_float64_on_cpu():
    net = load_onnx(MODELS / "digits_cnn.onnx")
    xs, ys = digits(20)
    specs, batch = batch_of(net, xs, ys, 0.03)
    cuda_batch = InputBatch.from_specs(specs, torch.device("cuda"))
    low64 = crown.margin_lower_bounds(net, batch)[0]
    low32 = crown.margin_lower_bounds(net, cuda_batch, dtype="float32")[0].cpu()
    assert bool((low32 <= low64 + 1e-9).all())
    for spec, row in zip(specs, low32.numpy()):
        assert np.all(row <= sampled_margins(net, spec, 200).min(axis=0))


# ---------------------------------------------------------------------------------------------
# auto_LiRPA (optional)

@pytest.mark.parametrize("model", ["digits_mlp", "digits_cnn", "mnist-net_256x2",
                                   "mnist-net_256x6"])
def test_bounds_equal_auto_lirpa_crown(model):
    """The same algorithm (auto_LiRPA's neuron bounds intersected with IBP's, as ours are):
    the same bounds, up to our rounding allowances. On 256x6 at eps 0.005 auto_LiRPA bounds
    every neuron of a layer whose batch-wide unstable neurons pass 90% of it, and the union of
    them elsewhere; rows="unstable" (per input) is looser there, the default "auto" is not."""
    pytest.importorskip("auto_LiRPA")
    import warnings

    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    from benchmarks.crown_vs_auto_lirpa import random_images, torch_model

    if model.startswith("mnist"):
        net = load_onnx(MODELS.parent / "benchmarks/data/mnist_fc/onnx" / f"{model}.onnx")
        xs, ys = random_images(net, 25 if model.endswith("x6") else 20)
        eps = 0.005 if model.endswith("x6") else 0.02
    else:
        net = load_onnx(MODELS / f"{model}.onnx")
        (xs, ys), eps = digits(30), 0.03
    _, batch = batch_of(net, xs, ys, eps)
    shape = (len(xs), *net.input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bounded = BoundedModule(torch_model(net), torch.zeros(shape, dtype=torch.float64),
                                device="cpu", verbose=0,
                                bound_opts={"compare_crown_with_ibp": True})
        ptb = PerturbationLpNorm(norm=np.inf, eps=eps, x_L=batch.lower.reshape(shape),
                                 x_U=batch.upper.reshape(shape))
        with torch.no_grad():
            theirs, _ = bounded.compute_bounds(
                x=(BoundedTensor(batch.center.reshape(shape), ptb),), C=batch.C, method="CROWN",
                bound_upper=False)
    ours = crown.margin_lower_bounds(net, batch)[0]
    assert float((ours - theirs).abs().max()) < 1e-9
    assert bool((ours <= theirs).all())  # ours carry the rounding allowance on top
    if model.endswith("x6"):  # the case exercises the row rule
        unstable = crown.margin_lower_bounds(net, batch, rows="unstable")[0]
        assert float((theirs - unstable).max()) > 1e-3


# ---------------------------------------------------------------------------------------------
# Reused buffers (crown.scratch)

def test_reused_buffers_change_no_bound(monkeypatch):
    net = load_onnx(MODELS / "digits_cnn.onnx")
    xs, ys = digits(30)
    _, batch = batch_of(net, xs, ys, 0.05)
    reused = crown.margin_lower_bounds(net, batch)[0]
    again = crown.margin_lower_bounds(net, batch)[0]  # the buffers hold the last call's numbers
    monkeypatch.setattr(crown, "SCRATCH_ENTRIES", 0)  # every tensor fresh
    fresh = crown.margin_lower_bounds(net, batch)[0]
    assert torch.equal(reused, fresh) and torch.equal(again, fresh)


def test_no_buffer_reuse_under_autograd():
    like = torch.zeros(2, dtype=torch.float64)
    shape = (2, crown.SCRATCH_MIN_ENTRIES)
    with torch.no_grad():
        assert crown.scratch("test", shape, like) is not None
        assert crown.scratch("test", (2, 3), like) is None  # small: a fresh tensor is cheaper
    assert crown.scratch("test", shape, like) is None  # a graph may keep it


def test_threads_have_their_own_buffers():
    """Two threads bounding different batches at once get what each gets alone."""
    import threading

    net = load_onnx(MODELS / "digits_cnn.onnx")
    xs, ys = digits(40)
    batches = [batch_of(net, xs[:20], ys[:20], 0.05)[1], batch_of(net, xs[20:], ys[20:], 0.04)[1]]
    alone = [crown.margin_lower_bounds(net, b)[0] for b in batches]
    results: dict[int, list] = {0: [], 1: []}

    def work(i: int) -> None:
        for _ in range(3):
            results[i].append(crown.margin_lower_bounds(net, batches[i])[0])

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        assert all(torch.equal(r, alone[i]) for r in results[i])


# ---------------------------------------------------------------------------------------------
# Dead columns dropped (crown._live_neurons) and the rows bounded (crown.rows_to_bound)

def dead_heavy_mlp(seed: int, sizes=(12, 40, 40, 40, 40, 5)) -> Network:
    """A random MLP whose negative biases leave most neurons inactive on small boxes."""
    rng = np.random.default_rng(seed)
    net = random_mlp(rng, list(sizes))
    layers = [Dense(layer.weight, layer.bias - 0.6 * (k < len(net.layers) - 1), layer.in_shape,
                    layer.out_shape) if isinstance(layer, Dense) else layer
              for k, layer in enumerate(net.layers)]
    return Network(layers, net.input_shape)


def random_batch(net: Network, seed: int, n: int = 12, eps: float = 0.08, norm: str = "inf"):
    rng = np.random.default_rng(seed)
    xs = rng.uniform(0, 1, size=(n, net.input_size))
    return batch_of(net, xs, net.forward(xs).argmax(axis=1), eps, norm)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_dropping_dead_columns_changes_only_rounding(norm, monkeypatch):
    """Columns of neurons inactive on the whole batch dropped or kept: the same bounds (up to
    the order of the float sums), on MLPs, a conv net (dense convolutions) and 256x6, with and
    without autograd (alpha slopes and their gradients)."""
    nets = [(dead_heavy_mlp(s), 0.08) for s in range(3)] + [(random_conv_net(
        np.random.default_rng(4)), 0.1), (load_onnx(MODELS.parent / "benchmarks/data/mnist_fc/"
                                                    "onnx/mnist-net_256x6.onnx"), 0.005)]
    calls = []
    live_neurons = crown._live_neurons

    def counting(*args):
        live = live_neurons(*args)
        calls.append(live is not None)
        return live

    monkeypatch.setattr(crown, "_live_neurons", counting)
    for net, eps in nets:
        _, batch = random_batch(net, 1, eps=eps, norm=norm)
        dropped = crown.margin_lower_bounds(net, batch, all_neurons=True)[0]
        with monkeypatch.context() as m:
            m.setattr(crown, "LIVE_FRACTION", -1.0)  # never drop
            kept = crown.margin_lower_bounds(net, batch, all_neurons=True)[0]
        torch.testing.assert_close(dropped, kept, rtol=1e-10, atol=1e-10)
    assert any(calls) and not all(calls)
    # autograd: alpha slopes on the last ReLU, values and gradients
    net = dead_heavy_mlp(0)
    _, batch = random_batch(net, 2)
    with torch.no_grad():
        bounds, _ = crown.propagate(net, batch, ibp.layer_bounds(net, batch), include_last=False)
    relu = len(net.layers) - 2
    results = []
    for fraction in (crown.LIVE_FRACTION, -1.0):
        monkeypatch.setattr(crown, "LIVE_FRACTION", fraction)
        alpha = torch.full((len(batch), batch.C.shape[1], net.layers[relu].out_shape[0]), 0.3,
                           dtype=torch.float64, requires_grad=True)
        value = crown.margin_lower_from(net, batch, bounds, {relu: alpha})
        value.sum().backward()
        results.append((value.detach(), alpha.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=1e-10)


def three_conv_net(seed: int) -> Network:
    """Conv(3x3, pad 1) -> ReLU -> Conv(3x3, pad 1) -> ReLU -> Conv(3x3, stride 2) -> ReLU -> Dense
    on 1 x 7 x 7: the last convolution's windows sit above two layers kept whole."""
    rng = np.random.default_rng(seed)
    conv1 = Conv2d(rng.normal(size=(3, 1, 3, 3)) * 0.6, rng.normal(size=3) * 0.1, (1, 1),
                   (1, 1, 1, 1), (1, 1), (1, 7, 7))
    conv2 = Conv2d(rng.normal(size=(4, 3, 3, 3)) * 0.4, rng.normal(size=4) * 0.1, (1, 1),
                   (1, 1, 1, 1), (1, 1), conv1.out_shape)
    conv3 = Conv2d(rng.normal(size=(4, 4, 3, 3)) * 0.4, rng.normal(size=4) * 0.1, (2, 2),
                   (0, 0, 0, 0), (1, 1), conv2.out_shape)
    n3 = int(np.prod(conv3.out_shape))
    dense = Dense(rng.normal(size=(3, n3)) * 0.5, rng.normal(size=3) * 0.1, (n3,), (3,))
    return Network([conv1, ReLU((147,)), conv2, ReLU((196,)), conv3, ReLU((n3,)), dense],
                   (1, 7, 7), name="three_conv")


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_receptive_field_windows_give_the_full_passes_bounds(norm, monkeypatch):
    """Convolutions' neuron bounds block by block on their receptive fields (crown._windows) or
    by the full rows: the same bounds up to rounding (the windows' allowances count fewer
    terms), on the digits CNN, a random conv net and one whose windowed layer sits above two
    layers kept whole; every neuron and margin bound below the values at sampled points."""
    nets = [(load_onnx(MODELS / "digits_cnn.onnx"), 0.05), (random_conv_net(
        np.random.default_rng(5)), 0.15), (three_conv_net(0), 0.1), (three_conv_net(1), 0.2)]
    used = []
    for net, eps in nets:
        specs, batch = random_batch(net, 3, eps=eps * (3 if norm == "2" else 1), norm=norm)
        crown._WINDOWS.clear()
        with torch.no_grad():
            windowed, _ = crown.propagate(net, batch, ibp.layer_bounds(net, batch),
                                          all_neurons=True)
        used.append(any(v is not None for v in crown._WINDOWS.get(net, {}).values()))
        low = crown.margin_lower_bounds(net, batch)[0]
        with monkeypatch.context() as m:  # pairs in chunks of ~10 rows: the same bounds
            whole = crown._window_neuron_bounds
            m.setattr(crown, "_window_neuron_bounds",
                      lambda *a: whole(*a[:6], max_elements=2 ** 14))
            with torch.no_grad():
                chunked, _ = crown.propagate(net, batch, ibp.layer_bounds(net, batch),
                                             all_neurons=True)
        for (a_lo, a_up), (b_lo, b_up) in zip(windowed, chunked):
            torch.testing.assert_close(a_lo, b_lo, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(a_up, b_up, rtol=1e-12, atol=1e-12)
        with monkeypatch.context() as m:
            m.setattr(crown, "WINDOW_FRACTION", -1.0)  # never pays: the full rows
            crown._WINDOWS.clear()
            with torch.no_grad():
                full, _ = crown.propagate(net, batch, ibp.layer_bounds(net, batch),
                                          all_neurons=True)
            full_low = crown.margin_lower_bounds(net, batch)[0]
        crown._WINDOWS.clear()
        for (a_lo, a_up), (b_lo, b_up) in zip(windowed, full):
            torch.testing.assert_close(a_lo, b_lo, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(a_up, b_up, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(low, full_low, rtol=1e-9, atol=1e-9)
        for b, spec in enumerate(specs[:4]):  # soundness at sampled points, every layer
            points = torch.as_tensor(spec.input_set.sample(300, np.random.default_rng(b)))
            h = points
            for k, (layer, p) in enumerate(zip(net.layers, net.torch_params(CPU))):
                h = layer.torch_forward(h, p).flatten(1)
                assert bool((windowed[k][0][b] <= h + 1e-12).all())
                assert bool((h <= windowed[k][1][b] + 1e-12).all())
            margins = spec.output.values(net.forward(points.numpy()))
            assert bool((low[b].numpy() <= margins.min(axis=0) + 1e-12).all())
    assert all(used)


def test_rows_to_bound_rules():
    lower = torch.tensor([[-1.0, 1.0, -2.0, -1.0], [1.0, -1.0, -1.0, 2.0]])
    upper = torch.tensor([[1.0, 2.0, -1.0, 0.0], [2.0, 1.0, 1.0, 3.0]])
    rule = crown.rows_to_bound
    assert rule(lower, upper, "unstable").tolist() == [[True, False, False, False],
                                                       [False, True, True, False]]
    assert rule(lower, upper, "live").tolist() == [[True, True, False, False],
                                                   [True, True, True, True]]
    # union of unstable: neurons 0, 1, 2 (3 of 4 <= 90%): those, less each input's inactive ones
    assert rule(lower, upper, "auto").tolist() == [[True, True, False, False],
                                                   [True, True, True, False]]
    assert rule(lower, upper, "all").all()
    upper[0, 3] = 0.5  # now all 4 unstable somewhere: every live neuron
    assert rule(lower, upper, "auto").tolist() == rule(lower, upper, "live").tolist()


@pytest.mark.parametrize("case", ["mlp0", "mlp1", "mlp2", "mnist-net_256x6"])
def test_default_rows_sound_and_not_looser_than_unstable_rows(case):
    """The default ("auto") bounds more neurons than the old per-input unstable ones: never
    below them, strictly above on some inputs of 256x6 (where the stable neurons' bounds
    tighten the interval steps above), "live" equals bounding every neuron, and all of them
    hold at sampled points."""
    if case.startswith("mlp"):
        seed = int(case[3:])
        net, runs = random_mlp(np.random.default_rng(seed), [10, 30, 30, 30, 30, 30, 4]), \
            [(seed, 16, 0.05), (seed, 16, 0.15)]
    else:
        net = load_onnx(MODELS.parent / "benchmarks/data/mnist_fc/onnx" / f"{case}.onnx")
        runs = [(0, 25, 0.005)]
    for seed, n, eps in runs:
        rng = np.random.default_rng(seed)
        xs = rng.uniform(0, 1, size=(n, net.input_size))
        specs, batch = batch_of(net, xs, net.forward(xs).argmax(axis=1), eps)
        old = crown.margin_lower_bounds(net, batch, rows="unstable")[0]
        new = crown.margin_lower_bounds(net, batch)[0]
        live = crown.margin_lower_bounds(net, batch, rows="live")[0]
        every = crown.margin_lower_bounds(net, batch, all_neurons=True)[0]
        assert bool((new >= old - 1e-12).all())
        assert bool((every >= new - 1e-12).all())
        torch.testing.assert_close(live, every, rtol=1e-10, atol=1e-10)
        if not case.startswith("mlp"):
            assert float((new - old).max()) > 1e-3
        for i, spec in enumerate(specs):
            sampled = sampled_margins(net, spec, 200, seed=i).min(axis=0)
            assert np.all(every[i].numpy() <= sampled + 1e-12)
            assert np.all(new[i].numpy() <= sampled + 1e-12)
