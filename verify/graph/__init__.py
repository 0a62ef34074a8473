"""Computation graphs: ONNX models that are not a plain Dense / Conv / ReLU chain.

- `ir`: nodes over named tensors with static shapes, in topological order;
- `ops`: one rule per operator (torch forward, used in float64 and for the attack; the
  absolute-value form of linear ops; interval and linear relaxation rules of nonlinear ones);
- `onnx_graph`: ONNX -> Graph, folding every input-independent subgraph at load time;
- `network`: `GraphNetwork`, the Network-like object certifiers receive.
"""
