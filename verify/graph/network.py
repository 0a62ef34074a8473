"""GraphNetwork: a Graph with the interface certifiers read from `Network` (input / output sizes,
float64 `forward`, batched `torch_forward`, fingerprint, summary).

The input is one flat vector: one graph input in its ONNX shape (a leading batch axis of 1
dropped from `input_shape`), or several inputs concatenated in graph order. The output is every
graph output flattened and concatenated. Certifiers that only read Network.layers
(alpha-CROWN, BaB) refuse a GraphNetwork; `is_graph` tells them apart.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Optional

import numpy as np
import torch

from ..errors import InputError
from . import ops
from .ir import Graph, Shape, size_of


class GraphNetwork:
    """A DAG of `ops` rules over named tensors (see ir.Graph)."""

    is_graph = True

    def __init__(self, graph: Graph, name: str = "network", source_sha256: Optional[str] = None):
        self.graph = graph
        self.name = name
        self.source_sha256 = source_sha256
        shapes = [graph.shapes[i] for i in graph.inputs]
        if len(shapes) == 1:
            s = shapes[0]
            self.input_shape: Shape = s[1:] if len(s) >= 2 and s[0] == 1 else s
        else:
            self.input_shape = (sum(size_of(s) for s in shapes),)
        self.output_shape: Shape = (sum(size_of(graph.shapes[o]) for o in graph.outputs),)
        self._params: dict = {}

    @property
    def input_size(self) -> int:
        return size_of(self.input_shape)

    @property
    def output_size(self) -> int:
        return size_of(self.output_shape)

    @property
    def n_relus(self) -> int:
        return sum(size_of(self.graph.shapes[n.output]) for n in self.graph.nodes if n.op == "Relu")

    @property
    def n_params(self) -> int:
        return sum(int(v.size) for n in self.graph.nodes for v in n.params.values()
                   if isinstance(v, np.ndarray) and v.dtype.kind == "f")

    def multiply_accumulates(self) -> int:
        """Products of one forward pass (one input): each linear node's weight entries per output
        position, one per output entry for the other nodes."""
        total = 0
        for node in self.graph.nodes:
            out = size_of(self.graph.shapes[node.output])
            weight = node.params.get("weight")
            if isinstance(weight, np.ndarray) and node.op in ("Conv", "ConvTranspose"):
                total += int(weight[0].size) * out
            elif isinstance(weight, np.ndarray):
                total += int(weight.shape[0] if weight.ndim > 1 else 1) * out
            else:
                total += out
        return total

    def fingerprint(self) -> str:
        """sha256 of the node ops, shapes and float64 constants (first 16 hex digits)."""
        digest = hashlib.sha256(repr([self.graph.shapes[i] for i in self.graph.inputs]).encode())
        for node in self.graph.nodes:
            digest.update(f"{node.op}{node.inputs}{node.output}".encode())
            for key in sorted(node.params):
                value = node.params[key]
                digest.update(key.encode())
                digest.update(value.tobytes() if isinstance(value, np.ndarray) else repr(value).encode())
        return digest.hexdigest()[:16]

    def torch_params(self, device: torch.device, dtype: torch.dtype = torch.float64,
                     absolute: bool = False) -> list[dict]:
        """Per-node torch constants (of |L| for linear nodes when `absolute`), cached."""
        key = (str(device), dtype, absolute)
        if key not in self._params:
            rows = []
            for node in self.graph.nodes:
                params = node.params
                if absolute and node.op in ops.LINEAR:
                    params = ops.LINEAR[node.op][1](params)
                rows.append(ops.to_torch(params, device, dtype))
            self._params[key] = rows
        return self._params[key]

    def split_input(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, input_size) -> {graph input: (B, *shape)}."""
        out, start = {}, 0
        for name in self.graph.inputs:
            shape = self.graph.shapes[name]
            out[name] = x[:, start:start + size_of(shape)].reshape(len(x), *shape)
            start += size_of(shape)
        return out

    def run(self, values: dict[str, torch.Tensor], absolute: bool = False) -> dict[str, torch.Tensor]:
        """Evaluate every node in order from the given input tensors; returns all tensors."""
        some = next(iter(values.values()))
        params = self.torch_params(some.device, some.dtype, absolute)
        for node, p in zip(self.graph.nodes, params):
            values[node.output] = ops.forward_of(node.op)(node, [values[i] for i in node.inputs], p)
        return values

    def join_outputs(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([values[o].reshape(len(values[o]), -1) for o in self.graph.outputs], 1)

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Batched outputs (batch, output_size) in the dtype and on the device of `x`."""
        x = x.reshape(len(x), -1)
        return self.join_outputs(self.run(self.split_input(x)))

    def forward(self, x) -> np.ndarray:
        """Outputs in float64: (batch, output_size), or (output_size,) for one flat sample."""
        x = np.asarray(x, dtype=np.float64)
        n = self.input_size
        if x.ndim == 1 and x.size == n:
            batch, single = x.reshape(1, n), True
        elif x.ndim >= 2 and x[0].size == n:
            batch, single = x.reshape(len(x), n), False
        else:
            raise InputError(f"input of shape {x.shape} does not fit the network input "
                             f"{self.input_shape} ({n} values per sample)")
        with torch.no_grad():
            out = self.torch_forward(torch.as_tensor(batch, dtype=torch.float64)).numpy()
        return out[0] if single else out

    def summary(self) -> str:
        counts = Counter(n.op for n in self.graph.nodes)
        rows = [f"{self.name}: graph, input {self.input_shape} -> output {self.output_shape}, "
                f"{len(self.graph.nodes)} nodes, {self.n_relus} ReLUs, {self.n_params} parameters"]
        for node in self.graph.nodes:
            rows.append(f"  {node.op:18s} {','.join(node.inputs):30.30s} -> {node.output} "
                        f"{self.graph.shapes[node.output]}")
        rows.append("  ops: " + ", ".join(f"{op} x{c}" for op, c in sorted(counts.items())))
        return "\n".join(rows)

    def __repr__(self) -> str:
        return f"GraphNetwork({self.name!r}, input={self.input_shape}, nodes={len(self.graph.nodes)})"
