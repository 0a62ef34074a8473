"""`verify-solver`: the VNN-LIB standard's solver command-line interface (standard chapter 5, as
the `vnnlib-test-solver` package implements it).

    verify-solver --name | --version
    verify-solver verify QUERY --network NAME=MODEL.onnx [--timeout SECONDS] [--method auto]
    verify-solver supports --onnx-opset-versions | --onnx-operators | --vnnlib-versions | ...

`verify` answers one line on stdout, `sat`, `unsat`, `unknown` or `timed-out`, and after `sat`
the satisfying assignment in the standard's command-line format (each declared variable in
declaration order: `NAME TYPE [DIMS]`, then its values row-major, one per line), replayed in
float64 before it is printed. Loading the model and the query counts inside `--timeout` (whole
or decimal seconds; none: no limit). `supports` answers from what the loader and the reader
really do (`LOADABLE_OPSETS`, the VNN-LIB versions readable here, and of the loader's
`LOADABLE_OPS` those it takes in every attribute form probed by `ATTRIBUTE_PROBES`).

A query over several networks, inputs or outputs, hidden nodes, or with rows reading inputs is
answered on one composed graph (`verify.graph.compose`: input x, output the observed vector y);
its sat is replayed on that graph and by onnxruntime on every network's own model (docs/vnnlib.md).

Element types: a query is about the network evaluated in the coarsest element type it declares.
`real`: the reals (float64 with rounding allowances). float32, float16, float64: that IEEE
format, by default (docs/float32.md): the query is widened by a bound on the float evaluation
error (`verify.float_rounding`) before any method runs, so unsat holds for the float network,
and a sat assignment is rounded into the format inside the box and must violate the query in
both the own float replay and onnxruntime (else unknown). bfloat16 is refused (section 5.3.2,
third error condition). `--floats-as-reals` opts into real-arithmetic semantics for every
type. Exit codes as in vnnlib-test-solver: 0 for an answer, whatever it is; 1 for a usage
or query error, printed as one line on stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence, TextIO

from . import __version__
from .errors import VerifyError

PROGRAM = "verify-solver"
SOLVER_NAME = "verify (ReLU network verifier: branch and bound, CROWN, MILP)"
EXIT_OK, EXIT_USAGE_ERROR = 0, 1
NO_TIMEOUT_S = 1e7  # no --timeout: effectively unlimited, but finite for the MILP's time limit

# The theories of standard chapter 4 that the reader maps into its DNF of input boxes and
# constraints over one observed vector: hidden nodes, several inputs and outputs and several
# networks (composed into one graph, verify.graph.compose), constraints mixing any declared
# variables (inputs read through identity outputs), linear and polynomial constraints (POLY:
# certifiers bound the linear rows; a polynomial atom is refuted by interval arithmetic on
# sound output bounds or satisfied by a checked assignment, else the answer is unknown).
THEORIES = {
    "--hidden-node-theories": ("NH", "H"),
    "--multiple-input-output-theories": ("SIO", "MIO"),
    "--multiple-network-theories": ("SNET", "MNET", "MENET", "MINET"),
    "--multiple-node-comparison-theories": ("SNC", "MNC"),
    "--arithmetic-complexity-theories": ("BND", "OUTC", "LIN", "POLY"),
}
BOOLEANS = {
    "--optimised-disjunctive-reasoning": False,  # queries are expanded to DNF
    "--serialise-assignments": False,            # assignments go to stdout only
    "--unsat-proofs": False,
}
CAPABILITIES = ("--onnx-opset-versions", "--onnx-element-types", "--onnx-operators",
                "--vnnlib-versions", *THEORIES, *BOOLEANS)
ALIASES = {"--multiple-inputs-output-theories": "--multiple-input-output-theories"}
VERIFY_OPTIONS = ("--network", "--timeout", "--serialise-assignments")


class UsageError(VerifyError):
    """A command line, query or model that cannot be answered about (exit code 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, exit code 1 and no abbreviated options."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# Forms of an op, by attribute, that ONNX defines and that a claim of the op covers: an op is
# claimed only when the loader takes every one of them (each probe: a one-node model
# X -> op -> Y, the variable X of the given shape, constants W [and B], the attributes).
ATTRIBUTE_PROBES = {
    "Conv": (
        ("1-D convolution", [1, 1, 4], {"W": [1, 1, 2]}, {}),
        ("2-D convolution, group=2", [1, 2, 3, 3], {"W": [2, 1, 2, 2]}, {"group": 2}),
        ("2-D convolution, strides and dilations", [1, 1, 5, 5], {"W": [1, 1, 2, 2]},
         {"strides": [2, 1], "dilations": [1, 2]}),
    ),
    "Gemm": (
        ("transB=1, alpha, beta", [1, 3], {"W": [2, 3], "B": [2]},
         {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    ),
    "MatMul": (("variable times a 2-D matrix", [1, 3], {"W": [3, 2]}, {}),),
    "Cast": (("a variable tensor to int64", [1, 3], {}, {"to": 7}),  # TensorProto.INT64
             ("a variable tensor to float16", [1, 3], {}, {"to": 10})),  # TensorProto.FLOAT16
    "AveragePool": (("ceil_mode=1", [1, 1, 5, 5], {},
                     {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
                    ("dilations", [1, 1, 6, 6], {},
                     {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 0, 0, 1]})),
    "MaxPool": (("ceil_mode=1", [1, 1, 5, 5], {},
                 {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),),
}


def _probe_fails(op: str, form) -> Optional[str]:
    """The loader's one-line refusal of a one-node model of `op` in `form`, or None."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from .onnx_io import network_from_onnx

    _, shape, constants, attributes = form
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(dims).astype(np.float32), name)
             for name, dims in constants.items()]
    node = helper.make_node(op, ["X", *constants], ["Y"], **attributes)
    graph = helper.make_graph([node], "probe",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    try:
        network_from_onnx(model, where=f"{op} probe")
    except VerifyError as exc:
        return str(exc)
    return None


def claimed_operators() -> list[str]:
    """The loader's ops (`LOADABLE_OPS`: chain and graph readers) less those it takes only in
    some of the forms in ATTRIBUTE_PROBES (e.g. Conv if 1-D or grouped convolutions were refused)."""
    from .onnx_io import LOADABLE_OPS

    return [op for op in LOADABLE_OPS
            if not any(_probe_fails(op, form) for form in ATTRIBUTE_PROBES.get(op, ()))]


def capability_answer(capability: str) -> str:
    """The exact stdout text for `supports CAPABILITY` (each line newline-terminated)."""
    from .onnx_io import LOADABLE_OPSETS
    from .vnnlib import vnnlib2_available

    capability = ALIASES.get(capability, capability)
    if capability == "--onnx-opset-versions":
        lines = [str(v) for v in LOADABLE_OPSETS]
    elif capability == "--onnx-element-types":
        from .float_rounding import FLOAT_FORMATS
        lines = ["real", *FLOAT_FORMATS]
    elif capability == "--onnx-operators":  # bare: for every reported element type
        lines = claimed_operators()
    elif capability == "--vnnlib-versions":
        lines = ["1.0", "2.0" if vnnlib2_available() else "1.0"]
    elif capability in THEORIES:
        lines = list(THEORIES[capability])
    elif capability in BOOLEANS:
        lines = ["true" if BOOLEANS[capability] else "false"]
    else:
        raise UsageError(f"unknown capability '{capability}'; the standard defines "
                         f"{', '.join(CAPABILITIES)}")
    return "".join(line + "\n" for line in lines)


def parse_timeout(text: Optional[str]) -> float:
    """--timeout: whole or decimal seconds >= 0 (none: no limit)."""
    if text is None:
        return NO_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"--timeout must be a number of seconds >= 0, got '{text}'")
    return value


def _network_pairs(networks: Sequence[str]) -> dict[str, str]:
    """NAME -> MODEL path of the --network NAME=MODEL.onnx options, each name once."""
    pairs: dict[str, str] = {}
    for token in networks:
        name, sep, path = token.partition("=")
        if not (sep and name and path):
            raise UsageError(f"--network takes NAME=MODEL.onnx, got '{token}'")
        if name in pairs:
            raise UsageError(f"--network maps '{name}' more than once")
        pairs[name] = path
    return pairs


def _network_models(networks: Sequence[str], query, query_path: str
                    ) -> dict[Optional[str], Path]:
    """The model file of every declared network (section 5.3.2, first error condition); a
    network declared `equal-to` another one may be left out: it reuses that one's file. A
    VNN-LIB 1.0 query declares no network: exactly one --network, any name (key None)."""
    pairs = _network_pairs(networks)
    if query.network is None:
        if len(pairs) != 1:
            raise UsageError(f"{query_path} is VNN-LIB 1.0 and needs exactly one --network "
                             f"NAME=MODEL.onnx, got {len(pairs)}")
        return {None: Path(next(iter(pairs.values())))}
    declared = {n.name: n for n in query.networks}
    for name in pairs:
        if name not in declared:
            listed = f"network '{query.network}'" if len(declared) == 1 else ", ".join(declared)
            raise UsageError(f"--network maps '{name}', which {query_path} does not declare "
                             f"(it declares {listed})")
    models: dict[Optional[str], Path] = {}
    for net in query.networks:
        source, seen = net, set()
        while source.name not in pairs and source.equal_to and source.name not in seen:
            seen.add(source.name)
            source = declared.get(source.equal_to, source)
        if source.name not in pairs:
            raise UsageError(f"no model file for network '{net.name}', which {query_path} "
                             f"declares: give --network {net.name}=MODEL.onnx")
        models[net.name] = Path(pairs[source.name])
    return models


def _float_format(query, query_path: str, floats_as_reals: bool = False) -> Optional[str]:
    """The float format the query is about (None: the reals). Section 5.3.2, third error
    condition: a type with no float model here (bfloat16) is refused; `--floats-as-reals`
    accepts real-arithmetic semantics for every float type instead."""
    from .float_rounding import FLOAT_FORMATS, query_format

    kind = query_format([v.element_type for v in query.variables  # integers: exact values
                         if not v.element_type.startswith(("int", "uint"))])
    if kind is None or floats_as_reals:
        return None
    if kind not in FLOAT_FORMATS:
        name = next(v.name for v in query.variables if v.element_type.lower() == kind)
        raise UsageError(
            f"{query_path} declares {name} as {kind}, which verify cannot analyse soundly "
            f"(float semantics: {', '.join(FLOAT_FORMATS)}); pass --floats-as-reals to "
            f"accept real-arithmetic semantics")
    return kind


def _network_formats(query) -> dict[str, Optional[str]]:
    """Per declared network, the float format it is evaluated in: the coarsest type among its
    own variables (None: the reals). Networks may differ: an isomorphic network declared in
    another precision is the same graph evaluated in that format."""
    from .float_rounding import query_format

    return {net.name: query_format([v.element_type for v in query.variables
                                    if v.network == net.name
                                    and not v.element_type.startswith(("int", "uint"))])
            for net in query.networks}


def _float_widened_error(model: Path, lower, upper, kind: str, net=None):
    """(the float evaluation error of `model` per output over the box, None) or (None, the
    reason no unsat can be given) when that error cannot be bounded."""
    import numpy as np

    from .float_rounding import FloatSemanticsError, evaluation_error

    try:
        error = evaluation_error(model, lower, upper, kind, net)
    except FloatSemanticsError as exc:
        return None, f"{kind} rounding not bounded: {exc}"
    except Exception as exc:  # noqa: BLE001 - e.g. onnxruntime refusing the shape probe: the
        # answer stays sound without the bound (no unsat), so say why and go on
        return None, f"{kind} rounding not bounded: {type(exc).__name__}: " \
                     f"{' '.join(str(exc).split())[:200]}"
    if not np.all(np.isfinite(error)):
        return None, f"{kind} evaluation may overflow on the box, or its rounding error bound is " \
                     "unbounded there"
    return error, None


def _float_widened(query, model: Path, kind: str, net=None):
    """(the query widened by the float evaluation error, None, that error per output) or (the
    query itself, the reason no unsat can be given, None) when it cannot be bounded."""
    from .float_rounding import query_hull, widen_query

    error, reason = _float_widened_error(model, *query_hull(query), kind, net)
    return (query, reason, None) if error is None else (widen_query(query, error), None, error)


def _float_counterexample(query, model: Path, x, kind: str):
    """(x, y) with x in the format, inside a case's box, whose float evaluation violates the
    query both in the own replay and in onnxruntime (y: onnxruntime's outputs); else None.
    Graph-IR models have no own float replay yet: there onnxruntime's evaluation decides. The
    model is read once for the replay and once for onnxruntime, on first need."""
    from .float_rounding import (float_session, read_graph, replay_forward, round_into_box,
                                 session_forward)

    net, session, read = None, None, False  # the graph IR and the session, read on first need
    for case in query.cases:
        xf = round_into_box(x, case.box.lower, case.box.upper, kind)
        if xf is None:
            continue
        if not read:
            read = True
            try:
                net = read_graph(model)[2]
            except Exception:  # noqa: BLE001 - no own replay of this graph
                net = None
        try:
            own = None if net is None else replay_forward(net, xf, kind)
        except Exception:  # noqa: BLE001 - no own replay of this graph: onnxruntime's alone
            own = None
        if own is not None and not query.violated_by(xf, own):
            continue
        try:
            if session is None:
                session = float_session(model, kind)
            y = session_forward(session, xf)
        except Exception:  # noqa: BLE001 - no onnxruntime evaluation: no sat claimed
            return None
        if query.violated_by(xf, y):
            return xf.astype("float64"), y
    return None


# -- queries over several networks, inputs, outputs or hidden nodes -------------------------------

@dataclass
class _Part:
    """One declared network of a composed query: its model, and per declared input / observed
    variable (hidden node or output) the ONNX tensor it is, with the variable."""

    name: str
    path: Path
    model: Any
    inputs: list[tuple[str, Any]]     # (ONNX graph input, VnnlibVariable), ONNX input order
    observed: list[tuple[str, Any]]   # (ONNX tensor, VnnlibVariable), y order


def _onnx_inputs(model) -> list[str]:
    consts = {init.name for init in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in consts]


def _matched(declared: list, onnx_names: list[str], what: str, where: str) -> list[str]:
    """The ONNX tensor of each declared variable: the one it names, else by position."""
    if all(v.onnx_name for v in declared):
        for v in declared:
            if v.onnx_name not in onnx_names:
                raise UsageError(f"{where}: {what} {v.name} names '{v.onnx_name}', the model's "
                                 f"{what}s are {', '.join(onnx_names)}")
        return [v.onnx_name for v in declared]
    if len(declared) != len(onnx_names):
        raise UsageError(f"{where}: the query declares {len(declared)} {what}(s) "
                         f"({', '.join(v.name for v in declared)}), the model has "
                         f"{len(onnx_names)} ({', '.join(onnx_names)})")
    return list(onnx_names)


def _query_parts(query, models: dict[str, Path]) -> list[_Part]:
    from .onnx_proto import read_model_proto

    parts = []
    for net in query.networks:
        path = models[net.name]
        model = read_model_proto(path)
        where = f"{path} (network {net.name})"
        mine = [v for v in query.variables if v.network == net.name]
        declared_in = [v for v in mine if v.kind == "input"]
        declared_out = [v for v in mine if v.kind == "output"]
        own_inputs = _onnx_inputs(model)
        onnx_in = _matched(declared_in, own_inputs, "input", where)
        if sorted(onnx_in) != sorted(own_inputs):
            raise UsageError(f"{where}: every model input must be declared; "
                             f"{', '.join(sorted(set(own_inputs) - set(onnx_in)))} is not")
        onnx_out = _matched(declared_out, [o.name for o in model.graph.output], "output", where)
        by_var = dict(zip((v.name for v in declared_out), onnx_out))
        by_var.update({v.name: v.onnx_name for v in mine if v.kind == "hidden"})
        inputs = sorted(zip(onnx_in, declared_in),
                        key=lambda pair: own_inputs.index(pair[0]))
        observed = [(by_var[v.name], v) for v in mine if v.kind != "input"]
        parts.append(_Part(net.name, path, model, inputs, observed))
    return parts


def _composed_network(query, parts: list[_Part]):
    """The query's networks as one GraphNetwork (verify.graph.compose): input x, the declared
    inputs in declaration order; output y, the hidden nodes and outputs in declaration order,
    then x when the query's rows read inputs."""
    from .graph.compose import Member, compose, read_member
    from .graph.ir import size_of

    members, input_shapes, outputs = [], {}, []
    for part in parts:
        names = [o.name for o in part.model.graph.output]
        hidden = [t for t, v in part.observed if v.kind == "hidden" and t not in names]
        where = f"{query.source}: network {part.name} ({part.path})"
        graph = read_member(part.model, where, tuple(hidden))
        for own, v in part.inputs:
            if size_of(graph.shapes[own]) != v.size:
                raise UsageError(f"{where}: input {v.name} is declared {list(v.shape)}, "
                                 f"the model's '{own}' has shape {list(graph.shapes[own])}")
            input_shapes.setdefault(v.shares or v.name, graph.shapes[own])
        members.append(Member(part.name, graph, [v.shares or v.name for _, v in part.inputs]))
        for tensor, v in part.observed:  # each part's in declaration order, parts in order
            k = names.index(tensor) if tensor in names else len(names) + hidden.index(tensor)
            name = graph.outputs[k]
            if size_of(graph.shapes[name]) != v.size:
                raise UsageError(f"{where}: {v.kind} {v.name} is declared {list(v.shape)}, "
                                 f"the tensor '{tensor}' has shape {list(graph.shapes[name])}")
            outputs.append((part.name, name))
    inputs = [(v.name, input_shapes[v.name]) for v in query.variables
              if v.kind == "input" and v.shares is None]  # a shared input is read once
    if query.observes_inputs:
        outputs += [(None, name) for name, _ in inputs]
    try:
        net = compose(members, inputs, outputs, name="+".join(p.name for p in parts))
    except VerifyError as exc:
        raise UsageError(f"{query.source}: cannot compose the networks: {exc}") from None
    return net


def _upstream(model, producers: dict, tensor: str) -> tuple[list[str], list]:
    """(the graph inputs `tensor` depends on, in the model's input order; the nodes computing
    it, in the model's order), walking back from `tensor` through `producers` (output name ->
    node, one map per model)."""
    nodes, seen, stack = set(), set(), [tensor]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is not None:
            nodes.add(id(node))
            stack.extend(n for n in node.input if n)
    return ([name for name in _onnx_inputs(model) if name in seen],
            [node for node in model.graph.node if id(node) in nodes])


def _sub_model(model, inputs: list[str], nodes: list, tensor: str):
    """A model computing `tensor` (its only output) from the graph inputs `inputs` with `nodes`
    (_upstream's) and the initializers they read; only those parts of `model` are copied."""
    sub = type(model)()
    sub.ir_version = model.ir_version
    sub.opset_import.extend(model.opset_import)
    sub.functions.extend(model.functions)
    graph, source = sub.graph, model.graph
    graph.name = source.name
    read = {n for node in nodes for n in node.input} | {tensor}
    elem_type = next(i for i in source.input if i.name in inputs or not inputs
                     ).type.tensor_type.elem_type
    graph.node.extend(nodes)
    graph.input.extend(i for i in source.input if i.name in inputs)
    graph.initializer.extend(t for t in source.initializer if t.name in read)
    graph.sparse_initializer.extend(source.sparse_initializer)
    out = graph.output.add()
    out.name, out.type.tensor_type.elem_type = tensor, elem_type
    return sub


def _composed_float_widened(query, parts: list[_Part], kinds: dict[str, Optional[str]]):
    """As _float_widened, the error bounded per observed tensor: the sub-model from the
    network's inputs to that tensor (_upstream, _sub_model), bounded by
    float_rounding.evaluation_error in its network's format (`kinds`, None: the reals, error
    0) on the hull of those inputs; inputs read as outputs are exact (error 0)."""
    import tempfile

    import numpy as np

    from .float_rounding import query_hull

    lower, upper = query_hull(query)
    error = np.zeros(query.n_outputs)
    with tempfile.TemporaryDirectory(prefix="verify-solver-") as scratch:
        for part in parts:
            kind = kinds[part.name]
            producers = {out: node for node in part.model.graph.node for out in node.output}
            for tensor, v in part.observed if kind is not None else ():
                needed, nodes = _upstream(part.model, producers, tensor)
                slices = {own: var for own, var in part.inputs}
                lo = np.concatenate([lower[slices[n].offset:slices[n].offset + slices[n].size]
                                     for n in needed]) if needed else np.zeros(0)
                hi = np.concatenate([upper[slices[n].offset:slices[n].offset + slices[n].size]
                                     for n in needed]) if needed else np.zeros(0)
                outputs = [o.name for o in part.model.graph.output]
                if needed == _onnx_inputs(part.model) and outputs == [tensor]:
                    sub = part.path
                else:
                    sub = Path(scratch) / f"{len(list(Path(scratch).iterdir()))}.onnx"
                    sub.write_bytes(_sub_model(part.model, needed, nodes, tensor
                                               ).SerializeToString())
                widened, reason = _float_widened_error(sub, lo, hi, kind)
                if reason is not None:
                    return query, f"{reason} ({part.name}, {v.kind} {v.name})", None
                error[v.offset:v.offset + v.size] = widened
    from .float_rounding import widen_query
    return widen_query(query, error), None, error


def _onnxruntime_observed(query, parts: list[_Part], x, kinds: dict[str, Optional[str]]):
    """The observed vector y (hidden nodes and outputs, declaration order) from onnxruntime,
    each network run on its own model at its slice of x (fed in its inputs' own types); a
    network whose format (`kinds`) is not its model's float type is run on the model retyped
    to that format (float_rounding.retyped_model: an isomorphic network in another precision)."""
    import numpy as np

    from .float_rounding import (ONNX_FLOAT_TYPES, onnxruntime_feed, onnxruntime_session,
                                 retyped_model)

    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.zeros(query.n_outputs - (query.n_inputs if query.observes_inputs else 0))
    for part in parts:
        model = type(part.model)()
        model.CopyFrom(part.model)
        first = next(i for i in model.graph.input if i.name == part.inputs[0][0])
        kind = kinds.get(part.name)
        if kind in ONNX_FLOAT_TYPES and first.type.tensor_type.elem_type in \
                ONNX_FLOAT_TYPES.values() and \
                first.type.tensor_type.elem_type != ONNX_FLOAT_TYPES[kind]:
            model = retyped_model(model, kind)
        existing = {o.name for o in model.graph.output}
        elem_type = next(i for i in model.graph.input
                         if i.name == part.inputs[0][0]).type.tensor_type.elem_type
        for tensor, _ in part.observed:
            if tensor not in existing:
                out = model.graph.output.add()
                out.name, out.type.tensor_type.elem_type = tensor, elem_type
                existing.add(tensor)
        session = onnxruntime_session(model)
        feeds = {}
        for inp in session.get_inputs():
            v = dict(part.inputs)[inp.name]
            feeds[inp.name] = onnxruntime_feed(inp, x[v.offset:v.offset + v.size],
                                               nonpositive_as_one=True)
        names = [t for t, _ in part.observed]
        for (tensor, v), value in zip(part.observed, session.run(names, feeds)):
            y[v.offset:v.offset + v.size] = np.asarray(value, dtype=np.float64).reshape(-1)
    return y


_FINE_TO_COARSE = (None, "float64", "float32", "float16")


def _rounded_inputs(query, x, box, kinds: dict[str, Optional[str]]):
    """x with each entry rounded to the coarsest format of the networks reading it (`kinds`)
    and moved into the box where rounding left it (float_rounding.round_into_box); None when
    some entry has no such value in the box. Entries read by real networks only stay."""
    import numpy as np

    from .float_rounding import round_into_box

    x = np.asarray(x, dtype=np.float64).reshape(-1).copy()
    entry_kind: dict[int, Optional[str]] = {}
    for v in query.variables:
        if v.kind == "input":
            for i in range(v.offset, v.offset + v.size):
                entry_kind[i] = max(entry_kind.get(i), kinds.get(v.network),
                                    key=_FINE_TO_COARSE.index)
    for fmt in set(entry_kind.values()) - {None}:
        index = np.array([i for i, k in entry_kind.items() if k == fmt])
        rounded = round_into_box(x[index], box.lower[index], box.upper[index], fmt)
        if rounded is None:
            return None
        x[index] = rounded.astype(np.float64)
    return x


def _own_observed(query, net, x, kinds: dict[str, Optional[str]]):
    """The composed graph's observed vector at x, each network's entries from a replay in its
    own format (torch dtype; the reals: float64), inputs read as outputs as they are."""
    import numpy as np
    import torch

    dtypes = {None: torch.float64, "float32": torch.float32, "float64": torch.float64,
              "float16": torch.float16}
    from .graph.ops import rounding_casts

    runs = {}
    with torch.no_grad(), rounding_casts():
        for fmt in set(kinds.values()):
            value = net.torch_forward(torch.as_tensor(x[None], dtype=dtypes[fmt]))[0]
            runs[fmt] = value.double().numpy().reshape(-1)
    y = runs[next(iter(runs))].copy()
    for v in query.variables:
        if v.kind != "input":
            y[v.offset:v.offset + v.size] = runs[kinds[v.network]][v.offset:v.offset + v.size]
    if query.observes_inputs:
        y[query.n_outputs - query.n_inputs:] = x
    return y


def _composed_counterexample(query, parts: list[_Part], net, x,
                             kinds: Optional[dict[str, Optional[str]]]):
    """(x, y) for a composed query's sat: x (rounded into each network's format inside a
    case's box when `kinds`) violating the query in the own replay (the composed graph in
    float64, or each network's entries in its format's torch dtype) and in onnxruntime on every
    network's own model (float semantics); y the observed vector printed (onnxruntime's in
    float semantics). Else None."""
    import numpy as np

    if kinds is None:
        y = net.forward(x)
        return (x, y) if query.violated_by(x, y) else None
    for case in query.cases:
        xf = _rounded_inputs(query, x, case.box, kinds)
        if xf is None or not case.box.contains(xf):
            continue
        try:
            own = _own_observed(query, net, xf, kinds)
        except Exception:  # noqa: BLE001 - no own replay in this dtype: onnxruntime's alone
            own = None
        if own is not None and not query.violated_by(xf, own):
            continue
        try:
            y = _onnxruntime_observed(query, parts, xf, kinds)
        except Exception:  # noqa: BLE001 - no onnxruntime evaluation: no sat claimed
            return None
        if query.violated_by(xf, y):
            return xf, query.observed_from(xf, y)
    return None

def process_age() -> float:
    """Seconds since this process started (Linux, from /proc), so that a timeout also covers
    Python's start and the imports; 0 where that cannot be read."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
            now = float(uptime.read().split()[0])
        return max(0.0, now - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def cmd_verify(args: argparse.Namespace, out: TextIO, t0: float) -> int:
    """Load (timed), solve with `verify.vnncomp.solve`, replay, print; the clock started at t0
    (time.perf_counter's scale)."""
    timeout = parse_timeout(args.timeout)  # plain arguments first: before torch's import
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if not args.query:
        raise UsageError("verify needs the path to a query file")
    from .onnx_io import load_onnx
    from .threads import configure
    from .vnncomp import solve
    from .vnnlib import load_vnnlib

    query = load_vnnlib(args.query)
    models = _network_models(args.networks, query, args.query)
    kind = _float_format(query, args.query, args.floats_as_reals)
    if args.serialise_assignments is not None:
        print(f"{PROGRAM}: warning: --serialise-assignments is not supported (see supports "
              "--serialise-assignments); the assignment goes to stdout", file=sys.stderr)
    parts = None if query.simple else _query_parts(query, models)
    if parts is None:  # one network read as it is (the chain loader where it applies)
        model = next(iter(models.values()))
        net = load_onnx(model)
    else:
        net = _composed_network(query, parts)
    configure(net, args.threads)
    query.check_sizes(net.input_size, net.output_size,
                      net.input_shape if parts is None else None)
    if kind is None:
        solved_query, no_unsat, error = query, None, None
    elif parts is None:
        solved_query, no_unsat, error = _float_widened(query, model, kind, net)
    else:
        kinds = _network_formats(query)
        solved_query, no_unsat, error = _composed_float_widened(query, parts, kinds)
    remaining = timeout - (time.perf_counter() - t0)
    if remaining <= 0:
        result, counterexample, method = "timed-out", None, "loading"
    else:
        solved = solve(net, solved_query, args.method, remaining, output_slack=error)
        result, counterexample, method = solved.result, solved.counterexample, solved.method
        if result == "unknown" and solved.reason:
            method = f"{method}: {' '.join(solved.reason.split())[:200]}"
        if result == "timeout":
            result = "timed-out"
    if result == "unsat" and no_unsat is not None:
        result, method = "unknown", f"{method}; {no_unsat}"
    text = result + "\n"
    if result == "sat":
        x, _ = counterexample
        if parts is not None:
            found = _composed_counterexample(query, parts, net, x,
                                             None if kind is None else kinds)
        elif kind is None:
            y = net.forward(x)  # replayed once more, here, on the numbers that are printed
            found = (x, y) if query.violated_by(x, y) else None
        else:
            found = _float_counterexample(query, model, x, kind)
        if found is None:
            result, text = "unknown", "unknown\n"
            method = f"{method}; the assignment does not violate the query in " \
                     f"{kind or 'float64'}"
        else:
            text += query.format_assignment(*found)
    print(f"{PROGRAM}: {result} ({method or args.method}, "
          f"{time.perf_counter() - t0:.3f} s)", file=sys.stderr)
    out.write(text)
    out.flush()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROGRAM, description="The VNN-LIB solver command-line interface "
                                               "of verify.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--name", action="store_true", help="print the solver's full name")
    group.add_argument("--version", action="store_true", help="print the solver's version")
    commands = parser.add_subparsers(dest="command", metavar="<command>",
                                     parser_class=_Parser)
    p = commands.add_parser("verify", help="answer a VNN-LIB query: sat, unsat, unknown, "
                                           "timed-out")
    p.add_argument("query", metavar="<filepath>",
                   help="VNN-LIB 1.0 or 2.0 query file (2.0 needs the 'vnnlib' package)")
    p.add_argument("--network", metavar="<name>=<filepath>", action="append", dest="networks",
                   default=[], help="the ONNX model of the declared network (any name for "
                                    "VNN-LIB 1.0)")
    p.add_argument("--timeout", metavar="<seconds>", default=None,
                   help="seconds from the process start, Python's start-up and loading "
                        "included (whole or decimal; default: none)")
    p.add_argument("--serialise-assignments", "--assignments", metavar="<filepath>",
                   dest="serialise_assignments", default=None,
                   help="not supported: the assignment is printed on stdout")
    p.add_argument("--method", default="auto", help="non-standard: auto, bab, or a certifier")
    p.add_argument("--threads", type=int, default=None,
                   help="non-standard: torch threads (default: 1 for small networks, else the "
                   "free cores)")
    p.add_argument("--floats-as-reals", action="store_true",
                   help="non-standard: analyse float16/32/64 variables as reals (the usual "
                   "verifier semantics) instead of in their float format (docs/float32.md)")
    for name in ("supports", "capabilities"):
        p = commands.add_parser(name, help="report one capability" if name == "supports"
                                else "the same as supports")
        flags = p.add_mutually_exclusive_group()
        for capability in (*CAPABILITIES, *ALIASES):
            flags.add_argument(capability, dest="capability", action="store_const",
                               const=capability, help=argparse.SUPPRESS
                               if capability in ALIASES else None)
    return parser


def _unrecognised(args: argparse.Namespace, token: str) -> UsageError:
    if args.command in ("supports", "capabilities"):
        return UsageError(f"unknown capability '{token}'; the standard defines "
                          f"{', '.join(CAPABILITIES)}")
    if args.command == "verify":
        if token.startswith("-"):
            return UsageError(f"unknown option '{token}' for verify; the standard defines "
                              f"{', '.join(VERIFY_OPTIONS)}")
        return UsageError(f"verify takes exactly one query file and '{token}' is a second")
    return UsageError(f"unrecognised option '{token}'")


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    """Run the command line; answers go to `out` (default stdout), errors to stderr."""
    out = sys.stdout if out is None else out
    t0 = time.perf_counter() - (process_age() if argv is None else 0.0)  # as a command: from exec
    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            raise _unrecognised(args, unknown[0])
        if args.command is not None and (args.name or args.version):
            raise UsageError(f"--name and --version cannot be combined with {args.command}")
        if args.name or args.version:
            out.write((SOLVER_NAME if args.name else __version__) + "\n")
        elif args.command == "verify":
            return cmd_verify(args, out, t0)
        elif args.command is not None:
            if args.capability is None:
                raise UsageError(f"{args.command} needs exactly one capability; the standard "
                                 f"defines {', '.join(CAPABILITIES)}")
            out.write(capability_answer(args.capability))
        else:
            raise UsageError("no global option or command given (--name, --version, verify, "
                             "supports)")
        out.flush()
        return EXIT_OK
    except VerifyError as exc:
        message = " ".join(str(exc).split())
        print(f"{PROGRAM}: error: {message}", file=sys.stderr)
        return EXIT_USAGE_ERROR
    except KeyboardInterrupt:  # Ctrl-C: no answer; 128 + SIGINT
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return 130


def exit_now(code: int) -> NoReturn:
    """End the process with `code` at once, once stdout and stderr are flushed: os._exit skips
    the interpreter's teardown (torch's and onnxruntime's finalizers, module clean-up), which
    took 0.05-1.9 s of wall time after the answer was written. Only for the command itself,
    never from a library call: nothing after it runs (no atexit handlers, no finally blocks)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed, broken or None (no stream)
            pass
    os._exit(code)


def console_main() -> NoReturn:
    """The `verify-solver` command (console script and `python -m verify.solver_cli`): main(),
    then exit_now with its code; main() itself returns, for callers in the same process."""
    exit_now(main())


if __name__ == "__main__":
    console_main()
