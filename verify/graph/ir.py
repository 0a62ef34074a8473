"""Graph IR: nodes over named tensors with static shapes, kept in topological order.

Every variable tensor has its ONNX shape at batch size 1 (`shapes[name]`); at run time it is held
as a torch tensor of shape (B, *shape), B the number of samples evaluated at once. Constants
(weights, folded shape arithmetic) live in each node's `params` as float64 / int numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..network import size_of  # noqa: F401 (one size rule; imported from here by the graph code)

Shape = tuple[int, ...]




@dataclass(eq=False)
class Node:
    """One operation: `op` (a key of ops.RULES) reading variable tensors `inputs`, writing `output`."""

    op: str
    name: str  # the ONNX node it came from (several nodes may share it after a rewrite)
    inputs: list[str]
    output: str
    params: dict[str, Any] = field(default_factory=dict)  # constants and attributes


@dataclass
class Graph:
    """inputs / outputs: names of variable tensors; `nodes` in topological order."""

    inputs: list[str]
    outputs: list[str]
    nodes: list[Node]
    shapes: dict[str, Shape]

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                out.setdefault(name, []).append(node)
        return out
