"""onnx_proto: tensors and attributes decoded as onnx's own helpers do; external data files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import MODELS, REPO
from verify import ModelLoadError, load_onnx
from verify.onnx_proto import attribute_value, read_model_proto, tensor_to_array

NUMPY_TYPES = [np.float32, np.float64, np.float16, np.int8, np.uint8, np.int16, np.uint16,
               np.int32, np.uint32, np.int64, np.uint64, np.bool_, np.complex64, np.complex128]


@pytest.mark.parametrize("dtype", NUMPY_TYPES)
@pytest.mark.parametrize("raw", [True, False])
def test_tensor_to_array_matches_numpy_helper(dtype, raw):
    rng = np.random.default_rng(0)
    values = (rng.normal(size=(2, 3)) * 50).astype(dtype)
    if dtype in (np.complex64, np.complex128):
        values = values + 1j * rng.normal(size=(2, 3)).astype(dtype)
    tensor = numpy_helper.from_array(values, name="w")
    if not raw:  # the same values in the typed field instead of raw_data
        data_type = tensor.data_type
        tensor = helper.make_tensor("w", data_type, values.shape,
                                    values.view(np.uint16).ravel().tolist()
                                    if dtype == np.float16 else values.ravel().tolist())
    got = tensor_to_array(tensor)
    want = numpy_helper.to_array(tensor)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_bfloat16_widens_to_float32():
    values = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    raw = helper.make_tensor("b", TensorProto.BFLOAT16, [4], bits.tobytes(), raw=True)
    typed = helper.make_tensor("b", TensorProto.BFLOAT16, [4], values.tolist())  # converts
    for tensor in (raw, typed):
        np.testing.assert_array_equal(tensor_to_array(tensor), values)


def test_tensor_refusals_are_one_line():
    strings = helper.make_tensor("s", TensorProto.STRING, [1], [b"a"])
    with pytest.raises(ValueError, match="'s' has type STRING"):
        tensor_to_array(strings)
    short = TensorProto(name="t", data_type=TensorProto.FLOAT, dims=[3], float_data=[1.0, 2.0])
    with pytest.raises(ValueError, match="holds 2 values for shape"):
        tensor_to_array(short)


def test_attribute_value_matches_onnx_helper():
    attrs = [helper.make_attribute("f", 1.5), helper.make_attribute("i", 3),
             helper.make_attribute("s", b"x"), helper.make_attribute("fs", [1.0, 2.0]),
             helper.make_attribute("is", [1, 2, 3]), helper.make_attribute("ss", [b"a", b"b"]),
             helper.make_attribute("t", numpy_helper.from_array(np.ones(2, np.float32)))]
    for attr in attrs:
        assert attribute_value(attr) == helper.get_attribute_value(attr)


def test_external_data_is_read_relative_to_the_model(tmp_path, digits_mlp_path):
    model = onnx.load(digits_mlp_path)
    folder = tmp_path / "sub"
    folder.mkdir()
    stored = onnx.ModelProto()
    stored.CopyFrom(model)  # onnx.save moves the tensors of the model it saves out
    onnx.save(stored, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    proto = read_model_proto(folder / "m.onnx")
    assert all(t.data_location == TensorProto.DEFAULT for t in proto.graph.initializer)
    for mine, theirs in zip(proto.graph.initializer, model.graph.initializer):
        np.testing.assert_array_equal(tensor_to_array(mine), numpy_helper.to_array(theirs))
    x = np.random.default_rng(1).uniform(0, 1, size=(3, *load_onnx(digits_mlp_path).input_shape))
    np.testing.assert_array_equal(load_onnx(folder / "m.onnx").forward(x),
                                  load_onnx(digits_mlp_path).forward(x))
    (folder / "weights.bin").unlink()
    with pytest.raises(ModelLoadError, match="external data file 'weights.bin'.*no such file"):
        read_model_proto(folder / "m.onnx")


def test_corrupt_file_is_one_line(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\xff\x00 not a protobuf")
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        read_model_proto(path)


def test_reading_a_model_does_not_import_the_onnx_package():
    code = ("import sys; from verify.onnx_proto import read_model_proto; "
            f"m = read_model_proto({str(MODELS / 'digits_mlp.onnx')!r}); "
            "import onnx; assert isinstance(m, onnx.ModelProto); "
            "print('ok')")
    check = ("import sys; from verify.onnx_io import load_onnx; "
             f"load_onnx({str(MODELS / 'digits_mlp.onnx')!r}); print('onnx' in sys.modules)")
    for source, expected in ((code, "ok"), (check, "False")):
        out = subprocess.run([sys.executable, "-c", source], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected
