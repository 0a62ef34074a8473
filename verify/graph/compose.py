"""Several ONNX networks of one query as ONE graph network.

A VNN-LIB 2.0 query may declare several networks, several inputs and outputs per network, and
hidden nodes (intermediate tensors it constrains). `compose` builds one `Graph` whose flat
input is every declared input and whose flat output is every tensor the query reads, so every
certifier sees one network with one input vector and one output vector:

- each member network's tensors are renamed `<member>/<tensor>` (members are independent
  copies, also when two of them come from the same model file);
- a member's graph input is renamed to the composed input it is mapped to; two members mapped
  to the same composed input share it (one input tensor read by both);
- the outputs are the listed tensors in order: a member's output or hidden tensor (a hidden
  tensor is made a graph output when the model is read, `read_member`), or a composed input
  itself, exposed through an identity node (y = 1 * x + 0), so that a constraint mixing inputs
  and outputs is a row over the composed outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import InputError
from .ir import Graph, Node, Shape, size_of
from .network import GraphNetwork


@dataclass
class Member:
    """One network of the composition: `name` (unique, the prefix of its tensors), its graph,
    and for each of the graph's inputs (in graph order) the composed input it reads."""

    name: str
    graph: Graph
    inputs: list[str]


def read_member(model, where: str, extra_outputs: tuple[str, ...] = ()) -> Graph:
    """The graph of an ONNX ModelProto read by the graph reader (whatever its ops: the chain
    ones too), with the named intermediate tensors `extra_outputs` appended to its outputs."""
    from .onnx_graph import GraphReader

    produced = {name for node in model.graph.node for name in node.output}
    produced |= {i.name for i in model.graph.input}
    copy = type(model)()
    copy.CopyFrom(model)
    for name in extra_outputs:
        if name not in produced:
            raise InputError(f"{where}: the model has no tensor named '{name}'")
        copy.graph.output.add().name = name
    return GraphReader(copy, where).read()


def compose(members: list[Member], inputs: list[tuple[str, Shape]],
            outputs: list[tuple[Optional[str], str]], name: str = "composed") -> GraphNetwork:
    """One GraphNetwork from `members`: its inputs the composed `inputs` (name, shape at batch
    size 1) in order, its outputs `outputs` in order, each (member name, tensor of that
    member's graph) or (None, composed input name)."""
    shapes: dict[str, Shape] = dict(inputs)
    if len(shapes) != len(inputs):
        raise InputError("composed inputs must have distinct names")
    nodes: list[Node] = []
    renamed: dict[str, dict[str, str]] = {}
    for member in members:
        graph = member.graph
        if member.name in renamed:
            raise InputError(f"network '{member.name}' appears twice in the composition")
        if len(member.inputs) != len(graph.inputs):
            raise InputError(f"network '{member.name}' has {len(graph.inputs)} inputs, "
                             f"{len(member.inputs)} are mapped")
        names = {t: f"{member.name}/{t}" for t in graph.shapes}
        for own, composed in zip(graph.inputs, member.inputs):
            if composed not in shapes:
                raise InputError(f"network '{member.name}': input '{own}' is mapped to "
                                 f"'{composed}', which is not a composed input")
            if size_of(shapes[composed]) != size_of(graph.shapes[own]):
                raise InputError(f"network '{member.name}': input '{own}' has shape "
                                 f"{graph.shapes[own]}, the composed input '{composed}' "
                                 f"{shapes[composed]}")
            names[own] = composed
        renamed[member.name] = names
        for own in graph.inputs:
            if graph.shapes[own] != shapes[names[own]]:  # same size, other shape: reshape
                target = names[own] + f"@{member.name}"
                nodes.append(Node("Reshape", f"{member.name}/{own}", [names[own]], target,
                                  {"shape": tuple(graph.shapes[own])}))
                shapes[target] = graph.shapes[own]
                names[own] = target
        for t, shape in graph.shapes.items():
            shapes.setdefault(names[t], shape)
        for node in graph.nodes:
            nodes.append(Node(node.op, f"{member.name}/{node.name}",
                              [names[i] for i in node.inputs], names[node.output], node.params))
    out_names = []
    inputs_set = {n for n, _ in inputs}
    for owner, tensor in outputs:
        if owner is None:
            composed = tensor
            if composed not in inputs_set:
                raise InputError(f"'{tensor}' is not a composed input")
        else:
            if owner not in renamed or tensor not in renamed[owner]:
                raise InputError(f"network '{owner}' has no tensor '{tensor}'")
            composed = renamed[owner][tensor]
        if composed in inputs_set:  # an input read as an output: through an identity node
            shape = shapes[composed]
            identity = f"identity/{composed}/{len(nodes)}"
            nodes.append(Node("Affine", identity, [composed], identity,
                              {"scale": np.array(1.0), "shift": np.array(0.0),
                               "rank": len(shape)}))
            shapes[identity] = shape
            composed = identity
        out_names.append(composed)
    if len(out_names) > 1:  # one output tensor: bounds are then propagated for all jointly
        unique = list(dict.fromkeys(out_names))
        flat = []
        for k, tensor in enumerate(unique):
            size = size_of(shapes[tensor])
            if shapes[tensor] != (size,):
                nodes.append(Node("Reshape", f"flatten/{tensor}", [tensor],
                                  f"flatten/{tensor}/{k}", {"shape": (size,)}))
                tensor = f"flatten/{tensor}/{k}"
                shapes[tensor] = (size,)
            flat.append(tensor)
        nodes.append(Node("Concat", "observed", flat, "observed",
                          {"parts": [unique.index(t) for t in out_names], "axis": 0}))
        shapes["observed"] = (sum(size_of(shapes[t]) for t in out_names),)
        out_names = ["observed"]
    graph = Graph([n for n, _ in inputs], out_names, nodes, shapes)
    return GraphNetwork(graph, name)
