"""Read ONNX protobufs without `import onnx`'s package start-up.

`import onnx` executes onnx/__init__, which loads the C++ checker, the operator schemas, the
reference helpers and numpy_helper: 0.76 s in a fresh process on the 2-core development
machine, where loading only onnx's generated `onnx_ml_pb2` module (the message classes, built
on the protobuf runtime) takes 0.02 s (`python -c`, 3 runs each). After `import torch`, reading
mnist-net_256x2.onnx with `import onnx; onnx.load` takes 1.50x as long as with this module
(0.88 s more; benchmarks/runtime.py, medians of 5, fresh processes). This module loads that
generated file by path, without running the package's __init__, and decodes tensors and
attributes itself.

The message classes are the same objects `import onnx` later provides (protobuf caches one
class per descriptor), so a ModelProto read here is an `onnx.ModelProto` to any other code.

- `read_model_proto(path)`: the ModelProto of a file; tensors stored as external data
  (`data_location = EXTERNAL`) are read from their files, resolved relative to the model's folder.
- `tensor_to_array(tensor)`: a TensorProto as a numpy array (raw_data or the typed fields; every
  numeric type ONNX stores, bfloat16 widened to float32).
- `attribute_value(attribute)`: an AttributeProto's Python value (like onnx.helper's).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .errors import ModelLoadError, UnsupportedModelError, not_a_file

_PRIVATE_NAME = "_verify_onnx_ml_pb2"


def _load_pb2():
    """onnx's generated onnx_ml_pb2 module, loaded by path unless onnx is already imported."""
    if "onnx" in sys.modules:
        return sys.modules["onnx"].onnx_ml_pb2
    if _PRIVATE_NAME in sys.modules:
        return sys.modules[_PRIVATE_NAME]
    package = importlib.util.find_spec("onnx")  # finds the package without importing it
    locations = list(package.submodule_search_locations or []) if package is not None else []
    generated = os.path.join(locations[0], "onnx_ml_pb2.py") if locations else ""
    if not os.path.isfile(generated):
        import onnx  # an unusual install: take the ordinary route

        return onnx.onnx_ml_pb2
    spec = importlib.util.spec_from_file_location(_PRIVATE_NAME, generated)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[_PRIVATE_NAME] = module
    return module


onnx_pb2 = _load_pb2()
ModelProto = onnx_pb2.ModelProto
TensorProto = onnx_pb2.TensorProto
AttributeProto = onnx_pb2.AttributeProto

# TensorProto.DataType -> (numpy dtype, typed field holding the values when raw_data is empty)
_DTYPES: dict[int, tuple[Any, str]] = {
    1: (np.float32, "float_data"),
    2: (np.uint8, "int32_data"),
    3: (np.int8, "int32_data"),
    4: (np.uint16, "int32_data"),
    5: (np.int16, "int32_data"),
    6: (np.int32, "int32_data"),
    7: (np.int64, "int64_data"),
    9: (np.bool_, "int32_data"),
    10: (np.float16, "int32_data"),  # int32_data holds the 16-bit patterns
    11: (np.float64, "double_data"),
    12: (np.uint32, "uint64_data"),
    13: (np.uint64, "uint64_data"),
    14: (np.complex64, "float_data"),  # (real, imaginary) pairs
    15: (np.complex128, "double_data"),
    16: (np.uint16, "int32_data"),  # bfloat16 bit patterns, widened to float32 below
}
_BFLOAT16 = 16


def type_name(data_type: int) -> str:
    """An ONNX element type's name (BFLOAT16 for 16), or the number when it has none."""
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return str(data_type)


def tensor_to_array(tensor) -> np.ndarray:
    """The values of a TensorProto as a numpy array of its shape (bfloat16 -> float32).

    Raises ValueError (one line, naming the tensor) for strings, unknown types, external data
    not yet loaded, or a value count that does not match the shape.
    """
    name = tensor.name or "(unnamed)"
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ValueError(f"tensor '{name}' has external data that was not loaded")
    if tensor.data_type not in _DTYPES:
        raise ValueError(f"tensor '{name}' has type {type_name(tensor.data_type)}, "
                         f"which is not numeric")
    dtype, field = _DTYPES[tensor.data_type]
    shape = tuple(int(d) for d in tensor.dims)
    count = int(np.prod(shape, dtype=np.int64))
    if tensor.raw_data:
        flat = np.frombuffer(tensor.raw_data, dtype=np.dtype(dtype).newbyteorder("<"))
        flat = flat.astype(dtype)  # native byte order, writable copy
    else:
        values = getattr(tensor, field)
        if tensor.data_type in (10, _BFLOAT16):
            flat = np.asarray(values, dtype=np.uint16)
            flat = flat.view(np.float16) if tensor.data_type == 10 else flat
        elif tensor.data_type in (14, 15):
            pairs = np.asarray(values, dtype=np.float32 if tensor.data_type == 14 else np.float64)
            flat = (pairs[0::2] + 1j * pairs[1::2]).astype(dtype)
        else:
            flat = np.asarray(values).astype(dtype)
    if tensor.data_type == _BFLOAT16:
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    if flat.size != count:
        raise ValueError(f"tensor '{name}' holds {flat.size} values for shape {list(shape)}")
    return flat.reshape(shape)


def attribute_value(attribute) -> Any:
    """The Python value of an AttributeProto: float, int, bytes, TensorProto, GraphProto or a list."""
    kind = AttributeProto.AttributeType
    single = {kind.FLOAT: "f", kind.INT: "i", kind.STRING: "s", kind.TENSOR: "t",
              kind.GRAPH: "g", kind.SPARSE_TENSOR: "sparse_tensor", kind.TYPE_PROTO: "tp"}
    repeated = {kind.FLOATS: "floats", kind.INTS: "ints", kind.STRINGS: "strings",
                kind.TENSORS: "tensors", kind.GRAPHS: "graphs",
                kind.SPARSE_TENSORS: "sparse_tensors", kind.TYPE_PROTOS: "type_protos"}
    if attribute.type in single:
        return getattr(attribute, single[attribute.type])
    if attribute.type in repeated:
        return list(getattr(attribute, repeated[attribute.type]))
    raise ValueError(f"attribute '{attribute.name}' has no value (type UNDEFINED)")


def _tensors_of_graph(graph):
    """Every TensorProto held by a graph: initialisers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors_of_graph(attr.g)
            for sub in attr.graphs:
                yield from _tensors_of_graph(sub)


def _load_external(tensor, folder: Path, path: Path) -> None:
    """Read one tensor's external bytes into raw_data (offset/length as the entries give)."""
    entries = {e.key: e.value for e in tensor.external_data}
    name = tensor.name or "(unnamed)"
    location = entries.get("location", "")
    target = (folder / location).resolve()
    if not location or Path(location).is_absolute() or folder.resolve() not in target.parents:
        raise ModelLoadError(f"{path}: tensor '{name}' names external data '{location}' outside "
                             f"the model's folder")
    if not target.is_file():
        raise ModelLoadError(f"{path}: external data file '{location}' of tensor '{name}': "
                             f"{not_a_file(target)}")
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError:
        raise ModelLoadError(f"{path}: tensor '{name}' has a non-integer external offset or "
                             f"length") from None
    with open(target, "rb") as handle:
        handle.seek(offset)
        data = handle.read() if length is None else handle.read(length)
    if length is not None and len(data) != length:
        raise ModelLoadError(f"{path}: external data file '{location}' of tensor '{name}' is "
                             f"shorter than offset {offset} + length {length}")
    tensor.raw_data = data
    del tensor.external_data[:]
    tensor.data_location = TensorProto.DEFAULT


def parse_model_proto(data: bytes, where: str = "model"):
    """A ModelProto from serialized bytes, or a one-line `ModelLoadError` naming `where`."""
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises several types for corrupt data
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{where}: not a valid ONNX model ({first})") from None
    return model


def read_model_proto(path: Union[str, Path]):
    """The ModelProto stored at `path`, external data loaded; one-line `ModelLoadError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: {not_a_file(path)}")
    model = parse_model_proto(path.read_bytes(), where=str(path))
    for tensor in _tensors_of_graph(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            _load_external(tensor, path.parent, path)
    return model


def static_input_shape(value_info, where: str) -> tuple[Optional[int], ...]:
    """Dimensions of a float graph input; None for a symbolic first (batch) dimension. Any other
    dynamic dimension, a missing shape or a non-float type is refused in one line."""
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise UnsupportedModelError(f"{where}: input '{value_info.name}' has no static shape")
    dims = []
    for i, d in enumerate(tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(None)
        else:
            raise UnsupportedModelError(
                f"{where}: input '{value_info.name}' has a dynamic dimension "
                f"'{d.dim_param or '?'}' at axis {i}; only the batch axis may be symbolic")
    if tensor_type.elem_type not in (1, 10, 11, 16):  # float, float16, double, bfloat16
        raise UnsupportedModelError(f"{where}: input '{value_info.name}' is not a float tensor")
    return tuple(dims)
