"""Graph networks (verify.graph): torch.onnx.export models and VNN-COMP 2021 nets load, match
onnxruntime, and IBP / CROWN bounds hold against sampled margins."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

from verify import backends
from verify.errors import InputError, UnsupportedModelError
from verify.graph.network import GraphNetwork
from verify.network import Network
from verify.onnx_io import load_onnx
from verify.spec import robustness_spec

ort = pytest.importorskip("onnxruntime")


def export(model: nn.Module, shape, path, dynamo: bool = False) -> None:
    """TorchScript exporter, or (dynamo) the torch.export-based one, which needs onnxscript and
    writes external data for large weights."""
    model.eval()
    if dynamo:
        pytest.importorskip("onnxscript")
        torch.onnx.export(model, (torch.zeros(1, *shape),), str(path), dynamo=True,
                          input_names=["x"], output_names=["y"])
    else:
        torch.onnx.export(model, torch.zeros(1, *shape), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"])


def ort_outputs(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path))
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    outs = sess.run(None, {inp.name: x.reshape(shape).astype(np.float32)})
    return np.concatenate([np.asarray(o).reshape(-1) for o in outs])


def check_bounds(net, x: np.ndarray, eps: float, rng) -> None:
    """IBP <= CROWN-or-IBP lower bounds <= the smallest sampled margin, per row."""
    y = int(np.argmax(net.forward(x)))
    spec = robustness_spec(net.input_size, net.output_size, x, y, eps, "inf", None)
    samples = np.clip(x + rng.uniform(-eps, eps, (300, net.input_size)), x - eps, x + eps)
    sampled = np.min([spec.output.values(o) for o in net.forward(samples)], axis=0)
    for method in ("ibp", "crown"):
        cert = backends.certify_specs(net, [spec], method, device="cpu")[0]
        lower = np.array([v for j, v in enumerate(cert.margin_lower) if j != y], dtype=float)
        assert np.all(lower <= sampled + 1e-9), (method, lower, sampled)


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 4, 3, stride=1, groups=1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.c1(x))), 2)
        x = nn.functional.avg_pool2d(torch.relu(self.c2(nn.functional.pad(x, (1, 1, 1, 1)))), 2, padding=1)
        return self.fc(x.view(x.size(0), -1))


class ResidualMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(5, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.out(h + torch.relu(self.b(h)))


class ConvResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(2, 3, 3, padding=1)
        self.c1 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 5 * 5, 4)

    def forward(self, x):
        h = torch.relu(self.c0(x))
        h = torch.relu(h + self.c1(h))
        return self.fc(torch.flatten(h, 1))


class SmoothMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.sigmoid(self.a(x)))))


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 5), nn.Linear(4, 5), nn.Linear(10, 3)

    def forward(self, x):
        return self.c(torch.cat([nn.functional.leaky_relu(self.a(x), 0.1),
                                 nn.functional.relu6(self.b(x))], dim=1))


MODELS = [(LeNet, (1, 6, 6)), (ResidualMLP, (5,)), (ConvResidual, (2, 5, 5)),
          (SmoothMLP, (4,)), (Branches, (4,))]


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("make, shape", MODELS, ids=[m.__name__ for m, _ in MODELS])
def test_exported_models_load_match_onnxruntime_and_bound(make, shape, dynamo, tmp_path):
    torch.manual_seed(0)
    model = make()
    if isinstance(model, LeNet):  # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "model.onnx"
    export(model, shape, path, dynamo)
    net = load_onnx(path)
    assert isinstance(net, GraphNetwork)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.uniform(-1, 1, int(np.prod(shape)))
        np.testing.assert_allclose(net.forward(x), ort_outputs(path, x), rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            torch_out = model(torch.as_tensor(x, dtype=torch.float32).reshape(1, *shape))
        np.testing.assert_allclose(net.forward(x), torch_out.numpy().reshape(-1), rtol=1e-4, atol=1e-5)
    check_bounds(net, rng.uniform(-1, 1, net.input_size), 0.05, rng)


def test_plain_chain_stays_a_network(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    export(model, (4,), tmp_path / "chain.onnx")
    assert isinstance(load_onnx(tmp_path / "chain.onnx"), Network)


def test_unsupported_nodes_all_named_in_one_line(tmp_path):
    class Bad(nn.Module):
        def forward(self, x):
            return torch.sin(x) * torch.cos(x) + torch.floor(x)

    export(Bad(), (3,), tmp_path / "bad.onnx")
    with pytest.raises(UnsupportedModelError) as info:
        load_onnx(tmp_path / "bad.onnx")
    message = str(info.value)
    assert "\n" not in message
    for op in ("Sin", "Cos", "Floor"):
        assert f"({op})" in message


VNNCOMP = ["verivital/onnx/Convnet_maxpool.onnx", "verivital/onnx/Convnet_avgpool.onnx",
           "cifar10_resnet/onnx/resnet_2b.onnx", "test/onnx/test_small.onnx",
           "test/onnx/test_tiny.onnx"]


@pytest.mark.parametrize("relative", VNNCOMP)
def test_vnncomp2021_graphs_match_onnxruntime(relative, shared_benchmarks):
    path = shared_benchmarks / "vnncomp2021" / relative
    net = load_onnx(path)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, net.input_size)
    np.testing.assert_allclose(net.forward(x), ort_outputs(path, x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("bench, rows", [("verivital", [0, 4, 30, 40]), ("test", [1, 2])])
def test_vnncomp2021_graph_instances_never_wrong(bench, rows, shared_benchmarks):
    """auto (attack, alpha-CROWN, relu-bab on graph networks) against the ground truth: never
    wrong."""
    from verify.vnncomp import solve_files

    root = shared_benchmarks / "vnncomp2021" / bench
    truth = {(r["network"], r["property"]): r["ground_truth"]
             for r in csv.DictReader(open(root / "ground_truth.csv"))}
    instances = list(csv.reader(open(root / "instances.csv")))
    for row in rows:
        onnx_path, vnnlib_path = instances[row][:2]
        result = solve_files(str(root / onnx_path), str(root / vnnlib_path), "auto", 60.0)
        expected = truth[(onnx_path.split("/")[-1][:-5], vnnlib_path.split("/")[-1][:-7])]
        if result.result in ("sat", "unsat"):
            assert result.result == expected, (onnx_path, vnnlib_path)


def test_two_inputs_two_outputs_and_external_data(tmp_path):
    import onnx
    from onnx import helper

    from onnx_reference import make_model, tensor

    rng = np.random.default_rng(5)
    model = make_model(
        [helper.make_node("MatMul", ["a", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["s"]),
         helper.make_node("Relu", ["s"], ["y1"]), helper.make_node("Sigmoid", ["s"], ["y2"])],
        [tensor("a", ["N", 3]), tensor("b", ["N", 2])], [tensor("y1", None), tensor("y2", None)],
        [("W", rng.normal(size=(3, 2)))])
    path = tmp_path / "two.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="two.onnx.data", size_threshold=0)
    assert (tmp_path / "two.onnx.data").is_file()
    net = load_onnx(path)
    assert net.input_size == 5 and net.output_size == 4
    x = rng.normal(size=5)
    sess = ort.InferenceSession(str(path))
    y1, y2 = sess.run(None, {"a": x[None, :3].astype(np.float32), "b": x[None, 3:].astype(np.float32)})
    np.testing.assert_allclose(net.forward(x), np.concatenate([y1[0], y2[0]]), rtol=1e-5, atol=1e-6)
    check_bounds(net, x, 0.1, rng)


def test_default_exporter_model_loads(tmp_path):
    pytest.importorskip("onnxscript")  # the torch.export-based exporter needs it
    torch.manual_seed(0)
    path = tmp_path / "res.onnx"
    torch.onnx.export(ResidualMLP().eval(), (torch.zeros(1, 5),), str(path))
    net = load_onnx(path)
    x = np.random.default_rng(0).uniform(-1, 1, 5)
    np.testing.assert_allclose(net.forward(x), ort_outputs(path, x), rtol=1e-4, atol=1e-5)


def test_max_pool_ceil_mode_matches_onnxruntime(tmp_path):
    """MaxPool with ceil_mode=1 (the extra end cells as -inf padding; a last window starting
    in the end padding dropped): the same values and output shape as onnxruntime."""
    import itertools

    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from verify.onnx_io import load_onnx

    rng = np.random.default_rng(0)
    for size, k, s, p, d in itertools.product([5, 6, 7], [2, 3], [2, 3], [0, 1], [1, 2]):
        node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s],
                                pads=[p] * 4, dilations=[d, d], ceil_mode=1)
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, size, size])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
        model.ir_version = 8
        path = tmp_path / "pool.onnx"
        onnx.save(model, str(path))
        x = rng.normal(size=(1, 1, size, size)).astype(np.float32)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        expected = ort.InferenceSession(str(path), options).run(None, {"x": x})[0]
        got = load_onnx(path).forward(x.reshape(-1).astype(np.float64))
        assert got.shape == (expected.size,) and np.allclose(got, expected.reshape(-1)), \
            (size, k, s, p, d)
