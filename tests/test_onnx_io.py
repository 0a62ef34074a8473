"""ONNX loader: exact agreement with onnxruntime, folding of normalisation, clear refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from onnx_reference import make_model, onnxruntime_forward, tensor
from conftest import MODELS
from verify import Dense, ModelLoadError, UnsupportedModelError, load_onnx
from verify.onnx_io import network_from_onnx


def assert_matches_onnxruntime(net, model, rng, n=6, float64=True, low=-1.0, high=1.0):
    """Network.forward (flat and ONNX-shaped input) vs onnxruntime; torch forward as well."""
    x = rng.uniform(low, high, size=(n, *net.input_shape))
    ref = onnxruntime_forward(model, x, float64=float64)
    got_shaped = net.forward(x)
    got_flat = net.forward(x.reshape(n, -1))
    rtol = 1e-6 if float64 else 1e-4
    scale = np.abs(ref).max() + 1e-12
    np.testing.assert_allclose(got_shaped, ref, rtol=rtol, atol=rtol * scale)
    np.testing.assert_array_equal(got_flat, got_shaped)
    got_torch = net.torch_forward(torch.as_tensor(x.reshape(n, -1))).numpy()
    np.testing.assert_allclose(got_torch, got_shaped, rtol=1e-12, atol=1e-12 * scale)


def load_model(model, tmp_path, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return load_onnx(path)


# -- real networks ---------------------------------------------------------------------------

def test_bundled_models_match_onnxruntime():
    paths = sorted(MODELS.glob("*.onnx"))
    assert paths, "models/ holds no ONNX file"
    rng = np.random.default_rng(0)
    for path in paths:
        net = load_onnx(path)
        has_conv = any(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
        # onnxruntime has no float64 Conv: such models are compared at float32 precision.
        assert_matches_onnxruntime(net, path, rng, low=0.0, high=1.0, float64=not has_conv)


def test_shared_benchmark_networks_match_onnxruntime(shared_benchmarks):
    paths = sorted(shared_benchmarks.glob("*/onnx/*.onnx"))
    assert len(paths) >= 28
    rng = np.random.default_rng(1)
    for path in paths:
        net = load_onnx(path)
        assert_matches_onnxruntime(net, path, rng, n=4)


def test_acasxu_structure(shared_benchmarks):
    net = load_onnx(shared_benchmarks / "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx")
    assert net.input_shape == (1, 1, 5) and net.output_size == 5
    assert net.n_relus == 300
    # The input Sub is folded into the first Dense: 7 affine layers, 6 ReLUs, nothing else.
    assert [type(l).__name__ for l in net.layers] == ["Dense", "ReLU"] * 6 + ["Dense"]


def test_mnist_fc_structure(shared_benchmarks):
    net = load_onnx(shared_benchmarks / "mnist_fc/onnx/mnist-net_256x2.onnx")
    assert net.input_shape == (784, 1) and net.output_size == 10 and net.n_relus == 512


def test_bundled_model_folds_normalisation(digits_mlp_path):
    net = load_onnx(digits_mlp_path)
    assert [type(l).__name__ for l in net.layers] == ["Dense", "ReLU"] * 2 + ["Dense"]
    assert net.source_sha256 is not None and len(net.fingerprint()) == 16


# -- synthetic graphs covering every supported op ----------------------------------------------

def test_gemm_attributes_and_elementwise_folding(tmp_path):
    rng = np.random.default_rng(2)
    w1, b1 = rng.normal(size=(4, 3)), rng.normal(size=(4,))  # transB = 0: B is (K, N)
    w2, c2 = rng.normal(size=(2, 4)), rng.normal(size=(1, 2))
    nodes = [
        helper.make_node("Sub", ["mean", "x"], ["s"], name="c_minus_x"),  # c - x
        helper.make_node("Div", ["s", "std"], ["n"], name="div_std"),
        helper.make_node("Gemm", ["n", "w1", "b1"], ["g1"], alpha=0.5, beta=2.0, name="gemm1"),
        helper.make_node("Mul", ["g1", "gain"], ["m"], name="after_gemm_mul"),  # folds backwards
        helper.make_node("Add", ["shift", "m"], ["a"], name="const_plus_x"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "c2"], ["y"], transB=1, name="gemm2"),
    ]
    model = make_model(nodes, [tensor("x", ["N", 3])], [tensor("y", ["N", 2])], [
        ("mean", rng.normal(size=3)), ("std", rng.uniform(0.5, 2, size=3)),
        ("w1", w1.T), ("b1", b1), ("gain", rng.normal(size=4)), ("shift", rng.normal(size=(1, 4))),
        ("w2", w2), ("c2", c2)])
    net = load_model(model, tmp_path)
    assert [type(l).__name__ for l in net.layers] == ["Dense", "ReLU", "Dense"]
    assert_matches_onnxruntime(net, model, rng)


def test_matmul_add_and_final_relu_opset8(tmp_path):
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Sub", ["x", "avg"], ["s"], name="sub"),
        helper.make_node("Flatten", ["s"], ["f"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["f", "w1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="mm2"),
        helper.make_node("Add", ["m2", "b2"], ["a2"], name="add2"),
        helper.make_node("Relu", ["a2"], ["y"], name="relu_on_logits"),
    ]
    model = make_model(nodes, [tensor("x", [1, 1, 1, 5])], [tensor("y", [1, 3])], [
        ("avg", rng.normal(size=(1, 1, 1, 5))), ("w1", rng.normal(size=(5, 7))),
        ("b1", rng.normal(size=7)), ("w2", rng.normal(size=(7, 3))), ("b2", rng.normal(size=3))],
        opset=8)
    net = load_model(model, tmp_path)
    assert net.input_shape == (1, 1, 5)
    assert isinstance(net.layers[-1], type(net.layers[1]))  # ends with ReLU
    assert_matches_onnxruntime(net, model, rng)


def test_reshape_squeeze_unsqueeze_identity_constant(tmp_path):
    rng = np.random.default_rng(4)
    for opset in (11, 13, 21):
        axes_attr = {"axes": [1]} if opset < 13 else {}
        axes_in = ["axes"] if opset >= 13 else []
        nodes = [
            helper.make_node("Constant", [], ["shape"], name="shape_const",
                             value=helper.make_tensor("v", onnx.TensorProto.INT64, [2], [0, -1])),
            helper.make_node("Reshape", ["x", "shape"], ["flat"], name="reshape"),
            helper.make_node("Unsqueeze", ["flat"] + axes_in, ["u"], name="unsqueeze", **axes_attr),
            helper.make_node("Squeeze", ["u"] + axes_in, ["q"], name="squeeze", **axes_attr),
            helper.make_node("Identity", ["q"], ["i"], name="identity"),
            helper.make_node("Gemm", ["i", "w", "b"], ["y"], transB=1, name="gemm"),
        ]
        inits = [("w", rng.normal(size=(3, 12))), ("b", rng.normal(size=3))]
        if opset >= 13:
            inits.append(("axes", np.array([1], dtype=np.int64)))
        model = make_model(nodes, [tensor("x", ["batch", 3, 2, 2])], [tensor("y", ["batch", 3])],
                           inits, opset=opset)
        net = load_model(model, tmp_path)
        assert net.input_shape == (3, 2, 2)
        assert_matches_onnxruntime(net, model, rng)


def _conv_model(rng, norm_per_pixel: bool, auto_pad=None, dilations=(1, 1), opset=13):
    conv_kwargs = {"strides": [2, 1], "dilations": list(dilations)}
    if auto_pad:
        conv_kwargs["auto_pad"] = auto_pad
    else:
        conv_kwargs["pads"] = [1, 0, 2, 1]
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["s"], name="sub_mean"),
        helper.make_node("Div", ["s", "std"], ["n"], name="div_std"),
        helper.make_node("Conv", ["n", "w1", "b1"], ["c1"], name="conv1", **conv_kwargs),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mu", "var"], ["bn"],
                         name="bn", epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2", kernel_shape=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="fc"),
    ]
    mean_shape = (1, 2, 6, 5) if norm_per_pixel else (1, 2, 1, 1)
    probe = helper.make_graph(nodes[:7], "probe", [tensor("x", [1, 2, 6, 5])],
                              [tensor("r2", None)])
    inits = [("mean", rng.normal(size=mean_shape)), ("std", rng.uniform(0.5, 2, size=mean_shape)),
             ("w1", rng.normal(size=(3, 2, 3, 3))), ("b1", rng.normal(size=3)),
             ("g", rng.uniform(0.5, 2, 3)), ("beta", rng.normal(size=3)),
             ("mu", rng.normal(size=3)), ("var", rng.uniform(0.5, 2, 3)),
             ("w2", rng.normal(size=(4, 3, 2, 2)))]
    probe_model = make_model(nodes[:7], [tensor("x", [1, 2, 6, 5])], [tensor("r2", None)], inits,
                             opset=opset)
    del probe
    n_hidden = onnxruntime_forward(probe_model, np.zeros((1, 2, 6, 5)), float64=False).shape[1]
    inits += [("w3", rng.normal(size=(5, n_hidden))), ("b3", rng.normal(size=5))]
    return make_model(nodes, [tensor("x", [1, 2, 6, 5])], [tensor("y", [1, 5])], inits,
                      opset=opset)


@pytest.mark.parametrize("per_pixel", [False, True])
@pytest.mark.parametrize("auto_pad", [None, "SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_batchnorm_normalisation(tmp_path, per_pixel, auto_pad):
    rng = np.random.default_rng(5)
    model = _conv_model(rng, per_pixel, auto_pad)
    net = load_model(model, tmp_path)
    kinds = [type(l).__name__ for l in net.layers]
    assert kinds.count("Conv2d") == 2
    if per_pixel or auto_pad != "VALID":
        # A shift cannot enter a zero-padded conv (the padding would see it), nor a per-pixel
        # scale a conv kernel: the normalisation stays as an exact diagonal layer.
        assert kinds[0] == "Dense"
    else:
        assert kinds[0] == "Conv2d"  # per-channel normalisation folded into conv1
    # BatchNorm folds into conv1: no layer of its own.
    assert kinds[-5:] == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Dense"] and len(kinds) <= 6
    # onnxruntime has no float64 Conv: compare at float32 precision.
    assert_matches_onnxruntime(net, model, rng, float64=False)


def test_conv_dilation(tmp_path):
    rng = np.random.default_rng(6)
    model = _conv_model(rng, False, None, dilations=(2, 1))
    net = load_model(model, tmp_path)
    assert net.layers[1].dilation == (2, 1)
    assert_matches_onnxruntime(net, model, rng, float64=False)


# -- refusals ----------------------------------------------------------------------------------

def _simple(nodes, extra_inits=(), inputs=None, outputs=None, opset=13):
    rng = np.random.default_rng(7)
    inits = [("w", rng.normal(size=(4, 4))), ("b", rng.normal(size=4)), *extra_inits]
    return make_model(nodes, inputs or [tensor("x", ["N", 4])], outputs or [tensor("y", ["N", 4])],
                      inits, opset=opset)


def test_unsupported_ops_are_all_listed(tmp_path):
    model = _simple([
        helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="fc1"),
        helper.make_node("Sin", ["g"], ["s"], name="wave"),
        helper.make_node("Gemm", ["s", "w", "b"], ["g2"], name="fc2"),
        helper.make_node("Erf", ["g2"], ["p"], name="erf"),
        helper.make_node("Gemm", ["p", "w", "b"], ["y"], name="fc3"),
    ])
    with pytest.raises(UnsupportedModelError) as err:
        load_model(model, tmp_path)
    msg = str(err.value)
    assert "'wave' (Sin)" in msg and "'erf' (Erf)" in msg and "\n" not in msg


def test_maxpool_loads_as_a_graph(tmp_path):
    model = make_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2],
                                         strides=[2, 2], name="pool")],
                       [tensor("x", [1, 1, 4, 4])], [tensor("y", [1, 1, 2, 2])])
    net = load_model(model, tmp_path)
    x = np.arange(16.0)
    np.testing.assert_array_equal(net.forward(x), [5.0, 7.0, 13.0, 15.0])


@pytest.mark.parametrize("case, pattern", [
    ("dynamic", "dynamic dimension 'width' at axis 1"),
    ("pow_of_var", "op Floor is not supported on variable tensors"),
    ("opset", "opset 7 is not supported"),
])
def test_structural_refusals(tmp_path, case, pattern):
    gemm = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")
    if case == "two_inputs":
        model = _simple([helper.make_node("Add", ["x", "x2"], ["y"], name="add")],
                        inputs=[tensor("x", ["N", 4]), tensor("x2", ["N", 4])])
    elif case == "two_outputs":
        model = _simple([gemm, helper.make_node("Relu", ["y"], ["z"], name="r")],
                        outputs=[tensor("y", ["N", 4]), tensor("z", ["N", 4])])
    elif case == "dynamic":
        model = _simple([gemm], inputs=[tensor("x", ["N", "width"])])
    elif case == "fixed_batch":
        model = _simple([gemm], inputs=[tensor("x", [4, 4])])
    elif case == "residual":
        model = _simple([helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="fc"),
                         helper.make_node("Add", ["g", "x"], ["y"], name="residual")])
    elif case == "pow_of_var":  # (Div and Pow load: verify.graph.bilinear / discrete)
        model = _simple([helper.make_node("Floor", ["x"], ["y"], name="floor")])
    else:
        model = _simple([gemm], opset=7)
    with pytest.raises(UnsupportedModelError, match=pattern) as err:
        load_model(model, tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content, pattern", [
    (b"", "not a valid ONNX model"),
    (b"this is not an onnx file at all \x00\xff\x12", "not a valid ONNX model"),
])
def test_corrupt_files(tmp_path, content, pattern):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=pattern):
        load_onnx(path)


def test_truncated_and_missing_files(tmp_path, digits_mlp_path):
    data = digits_mlp_path.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated.onnx: not a valid ONNX model"):
        load_onnx(path)
    with pytest.raises(ModelLoadError, match="no such file"):
        load_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="a folder, not a file"):
        load_onnx(tmp_path)


def test_fingerprint_tracks_weights(digits_mlp_path):
    a, b = load_onnx(digits_mlp_path), load_onnx(digits_mlp_path)
    assert a.fingerprint() == b.fingerprint()
    dense = next(l for l in b.layers if isinstance(l, Dense))
    dense.bias = dense.bias + 1e-9
    b._fingerprint = None
    assert a.fingerprint() != b.fingerprint()


def test_in_memory_model_loads():
    rng = np.random.default_rng(8)
    model = _simple([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")])
    net = network_from_onnx(model)
    assert_matches_onnxruntime(net, model, rng)
