"""The model zoo (models/): every ONNX file loads and matches onnxruntime, its metadata is
consistent with the file and with the accuracy verify computes, and the specially trained models
have the property they were trained for (IBP-certifiable; ReLU-stable)."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

import verify
from conftest import MODELS
from onnx_reference import onnxruntime_forward
from verify import Conv2d, Dense, ReLU, Status, load_onnx, robustness_spec
from verify.bounds import InputBatch, ibp

ONNX_PATHS = sorted(MODELS.glob("*.onnx"))
ZOO = ["digits_mlp_large", "digits_cnn", "digits_mlp_ibp", "digits_mlp_plain", "digits_mlp_rs",
       "toy2d"]
META_KEYS = {"name", "description", "input_shape", "domain", "classes", "n_classes",
             "architecture", "data", "training", "epochs", "seed", "test_accuracy", "onnx_sha256"}


def metadata(name: str) -> dict:
    return json.loads((MODELS / f"{name}.json").read_text())


def has_conv(path) -> bool:
    return any(node.op_type == "Conv" for node in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def nets() -> dict:
    return {p.stem: load_onnx(p) for p in ONNX_PATHS}


def unstable_counts(net, bounds) -> np.ndarray:
    """Per input: hidden neurons whose pre-activation bounds straddle 0 (l < 0 < u)."""
    counts = 0
    for k, layer in enumerate(net.layers[:-1]):
        if isinstance(layer, (Dense, Conv2d)) and isinstance(net.layers[k + 1], ReLU):
            lower, upper = bounds[k]
            counts = counts + ((lower < 0) & (upper > 0)).sum(1).numpy()
    return np.asarray(counts)


def digits_batch(net, xs, ys, eps) -> InputBatch:
    specs = [robustness_spec(net.input_size, net.output_size, x, int(y), eps, "inf", (0, 1))
             for x, y in zip(xs, ys)]
    return InputBatch.from_specs(specs, torch.device("cpu"))


def test_the_zoo_is_there():
    stems = {p.stem for p in ONNX_PATHS}
    assert set(ZOO) <= stems
    from models.train import TRAINERS

    assert set(ZOO) <= set(TRAINERS)


@pytest.mark.parametrize("path", ONNX_PATHS, ids=lambda p: p.stem)
def test_model_matches_onnxruntime(path, nets):
    """verify's float64 Network against onnxruntime: float64 where onnxruntime runs the graph in
    float64, float32 precision for Conv (onnxruntime has no float64 Conv)."""
    net = nets[path.stem]
    float64 = not has_conv(path)
    x = np.random.default_rng(0).uniform(0.0, 1.0, size=(8, *net.input_shape))
    ref = onnxruntime_forward(path, x, float64=float64)
    got = net.forward(x)
    rtol = 1e-6 if float64 else 1e-4
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * (np.abs(ref).max() + 1e-12))
    np.testing.assert_array_equal(net.forward(x.reshape(len(x), -1)), got)
    got_torch = net.torch_forward(torch.as_tensor(x.reshape(len(x), -1))).numpy()
    np.testing.assert_allclose(got_torch, got, rtol=1e-12, atol=1e-12 * np.abs(got).max())


@pytest.mark.parametrize("path", ONNX_PATHS, ids=lambda p: p.stem)
def test_metadata_describes_the_file(path, nets):
    meta = metadata(path.stem)
    net = nets[path.stem]
    assert META_KEYS <= set(meta), sorted(META_KEYS - set(meta))
    assert meta["name"] == path.stem
    assert meta["onnx_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert tuple(meta["input_shape"]) == tuple(net.input_shape)
    assert meta["n_classes"] == net.output_size == len(meta["classes"])
    assert meta["domain"] == [0.0, 1.0] and meta["seed"] == 0
    assert path.stat().st_size < 200_000


@pytest.mark.parametrize("path", ONNX_PATHS, ids=lambda p: p.stem)
def test_metadata_accuracy_is_verifys(path, nets, digits_test):
    """test_accuracy = the accuracy of verify's float64 Network.forward on the bundled test set."""
    meta = metadata(path.stem)
    if path.stem == "toy2d":
        data = np.load(MODELS / "toy2d_test.npz")
        xs, ys = data["x"], data["y"]
    else:
        assert meta["data"].startswith("scikit-learn load_digits")
        xs, ys = digits_test
    accuracy = float((nets[path.stem].forward(xs).argmax(1) == ys).mean())
    assert abs(meta["test_accuracy"] - accuracy) <= 1e-9


def test_zoo_metadata_records_the_training():
    ibp_meta, rs_meta, plain_meta = (metadata(n) for n in
                                     ("digits_mlp_ibp", "digits_mlp_rs", "digits_mlp_plain"))
    assert ibp_meta["eps"] > 0 and ibp_meta["norm"] == "inf"
    schedule = ibp_meta["schedule"]
    assert schedule["eps_start"] == 0 and schedule["eps_end"] == ibp_meta["eps"]
    assert schedule["kappa_start"] == 1.0 and schedule["kappa_end"] == 0.5
    assert rs_meta["regulariser"]["rs_weight"] > 0 and rs_meta["regulariser"]["l1_weight"] > 0
    assert plain_meta["regulariser"]["rs_weight"] == 0 == plain_meta["regulariser"]["l1_weight"]
    assert rs_meta["eps"] == plain_meta["eps"]
    assert rs_meta["architecture"] == plain_meta["architecture"] == "64-50-50-10 ReLU MLP"
    assert rs_meta["epochs"] == plain_meta["epochs"]
    assert 0 < rs_meta["pruning"]["sparsity"] < 1
    toy = metadata("toy2d")
    assert toy["input_scaling"]["low"] and toy["input_scaling"]["high"]


def test_cnn_structure(nets, digits_test):
    net = nets["digits_cnn"]
    assert net.input_shape == (1, 8, 8)
    assert [type(l).__name__ for l in net.layers] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Dense"]
    assert net.layers[2].stride == (2, 2) and net.layers[2].out_shape == (16, 4, 4)
    xs, _ = digits_test
    ref = onnxruntime_forward(MODELS / "digits_cnn.onnx", xs[:20].reshape(-1, 1, 8, 8),
                              float64=False)
    np.testing.assert_allclose(net.forward(xs[:20]), ref, rtol=1e-4,
                               atol=1e-4 * np.abs(ref).max())


def test_pruned_weights_are_zero(nets):
    net = nets["digits_mlp_rs"]
    n_zero = sum(int((l.weight == 0).sum()) for l in net.layers[1:] if isinstance(l, Dense))
    # the first layer's zeros are scaled by 1/std when the normalisation is folded: still zero
    n_zero += int((net.layers[0].weight == 0).sum())
    assert n_zero == metadata("digits_mlp_rs")["pruning"]["weights_zeroed"]


def test_ibp_trained_model_certifies_more(nets, digits_test):
    xs, ys = digits_test
    eps = metadata("digits_mlp_ibp")["eps"]
    counts = {}
    for name in ("digits_mlp", "digits_mlp_ibp"):
        certs = verify.certify_batch(nets[name], xs[:100], ys[:100], eps, method="ibp",
                                     domain=(0, 1), device="cpu")
        counts[name] = sum(c.status is Status.YES for c in certs)
    assert counts["digits_mlp_ibp"] > counts["digits_mlp"]
    assert counts["digits_mlp_ibp"] >= 50, counts


def test_rs_model_has_fewer_unstable_neurons(nets, digits_test):
    xs, ys = digits_test
    eps = metadata("digits_mlp_rs")["eps"]
    mean_unstable = {}
    for name in ("digits_mlp_plain", "digits_mlp_rs"):
        net = nets[name]
        bounds = ibp.layer_bounds(net, digits_batch(net, xs[:50], ys[:50], eps))
        mean_unstable[name] = float(unstable_counts(net, bounds).mean())
    assert mean_unstable["digits_mlp_rs"] < mean_unstable["digits_mlp_plain"], mean_unstable


def test_training_ibp_equals_verifys_ibp(digits_test):
    """models.train's differentiable IBP (normalisation kept apart, float64 here) gives verify's
    IBP bounds (normalisation folded, with rounding slack) up to that slack."""
    from models.train import interval_bounds, margin_lower_bounds

    path = MODELS / "digits_mlp_ibp.onnx"
    model = onnx.load(str(path))
    inits = {t.name: torch.tensor(np.array(onnx.numpy_helper.to_array(t), dtype=np.float64))
             for t in model.graph.initializer}
    linears = [SimpleNamespace(weight=inits[f"fc{i}_weight"], bias=inits[f"fc{i}_bias"])
               for i in (1, 2, 3)]
    xs, ys = digits_test
    eps = metadata("digits_mlp_ibp")["eps"]
    x = torch.as_tensor(xs[:20])
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    pre, (h_lo, h_up) = interval_bounds(linears, inits["norm_mean"], inits["norm_std"], lower, upper)
    labels = torch.as_tensor(ys[:20])
    margins = margin_lower_bounds(linears[-1], labels, h_lo, h_up)

    net = load_onnx(path)
    batch = digits_batch(net, xs[:20], ys[:20], eps)
    assert [type(l).__name__ for l in net.layers] == ["Dense", "ReLU", "Dense", "ReLU", "Dense"]
    bounds = ibp.layer_bounds(net, batch)
    for (lo, up), (v_lo, v_up) in zip(pre, [bounds[0], bounds[2]]):
        torch.testing.assert_close(lo, v_lo, rtol=0, atol=1e-9)
        torch.testing.assert_close(up, v_up, rtol=0, atol=1e-9)
    verify_margins = ibp.margin_bounds(net, batch, bounds)[0]  # rows z_y - z_j, j != y
    keep = torch.ones_like(margins, dtype=torch.bool)
    keep[torch.arange(20), labels] = False
    torch.testing.assert_close(margins[keep].reshape(20, 9), verify_margins, rtol=0, atol=1e-9)


def test_train_lists_the_zoo(capsys):
    from models.train import main

    assert main(["--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert set(ZOO) <= set(listed)
