"""onnxruntime as the reference executor for loader tests, in float64 where it can run it."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, DOUBLE = TensorProto.FLOAT, TensorProto.DOUBLE


def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` computing in float64: float initialisers, constants and I/O retyped."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph

    def retype(tensor: onnx.TensorProto) -> None:
        if tensor.data_type == FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(tensor).astype(np.float64), tensor.name))

    for init in graph.initializer:
        retype(init)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                retype(attr.t)
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.tensor_type.elem_type == FLOAT:
            info.type.tensor_type.elem_type = DOUBLE
    return model


def onnxruntime_forward(model: Union[str, Path, onnx.ModelProto], x: np.ndarray,
                        float64: bool = True) -> np.ndarray:
    """Outputs (batch, -1) for inputs x shaped (batch, *input shape without batch), one sample
    per run so that models with a fixed batch of 1 work too."""
    import onnxruntime as ort

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    if float64:
        model = as_float64(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    inputs = {i.name for i in model.graph.initializer}
    feed = next(i for i in session.get_inputs() if i.name not in inputs)
    rank = len(feed.shape)
    dtype = np.float64 if float64 else np.float32
    outs = []
    for sample in x:
        sample = np.asarray(sample, dtype=dtype)
        if sample.ndim < rank:
            sample = sample[None]
        outs.append(session.run(None, {feed.name: sample})[0].reshape(-1))
    return np.stack(outs)


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 13) -> onnx.ModelProto:
    """A model from helper-made parts, IR version chosen for onnxruntime."""
    graph = helper.make_graph(list(nodes), "test_graph", list(inputs), list(outputs),
                              [numpy_helper.from_array(np.asarray(v, dtype=np.float32)
                                                       if np.asarray(v).dtype.kind == "f"
                                                       else np.asarray(v), name)
                               for name, v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 15 else 8
    if opset <= 8:
        model.ir_version = 3
        for init in graph.initializer:  # IR 3 lists initialisers among the inputs
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type,
                                                             list(init.dims)))
    return model


def tensor(name: str, shape, elem=FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)
