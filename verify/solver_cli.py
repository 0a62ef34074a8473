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
from pathlib import Path
from typing import NoReturn, Optional, Sequence, TextIO

from . import __version__
from .errors import VerifyError

PROGRAM = "verify-solver"
SOLVER_NAME = "verify (ReLU network verifier: branch and bound, CROWN, MILP)"
EXIT_OK, EXIT_USAGE_ERROR = 0, 1
NO_TIMEOUT_S = 1e7  # no --timeout: effectively unlimited, but finite for the MILP's time limit

# The theories of standard chapter 4 that the reader maps into its DNF of input boxes and linear
# output constraints: no hidden nodes, one input and one output tensor, one network, no
# comparison between inputs and outputs, single-input bounds and linear output constraints.
THEORIES = {
    "--hidden-node-theories": ("NH",),
    "--multiple-input-output-theories": ("SIO",),
    "--multiple-network-theories": ("SNET",),
    "--multiple-node-comparison-theories": ("SNC",),
    "--arithmetic-complexity-theories": ("BND", "OUTC"),
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
    "Cast": (("a variable tensor to int64", [1, 3], {}, {"to": 7}),),  # TensorProto.INT64
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


def _network_model(networks: Sequence[str], query, query_path: str) -> Path:
    """The model file for the query's network (section 5.3.2, first error condition)."""
    pairs: dict[str, str] = {}
    for token in networks:
        name, sep, path = token.partition("=")
        if not (sep and name and path):
            raise UsageError(f"--network takes NAME=MODEL.onnx, got '{token}'")
        if name in pairs:
            raise UsageError(f"--network maps '{name}' more than once")
        pairs[name] = path
    if query.network is None:  # VNN-LIB 1.0 declares no network: one model, any name
        if len(pairs) != 1:
            raise UsageError(f"{query_path} is VNN-LIB 1.0 and needs exactly one --network "
                             f"NAME=MODEL.onnx, got {len(pairs)}")
        return Path(next(iter(pairs.values())))
    for name in pairs:
        if name != query.network:
            raise UsageError(f"--network maps '{name}', which {query_path} does not declare "
                             f"(it declares network '{query.network}')")
    if query.network not in pairs:
        raise UsageError(f"no model file for network '{query.network}', which {query_path} "
                         f"declares: give --network {query.network}=MODEL.onnx")
    return Path(pairs[query.network])


def _float_format(query, query_path: str, floats_as_reals: bool = False) -> Optional[str]:
    """The float format the query is about (None: the reals). Section 5.3.2, third error
    condition: a type with no float model here (bfloat16) is refused; `--floats-as-reals`
    accepts real-arithmetic semantics for every float type instead."""
    from .float_rounding import FLOAT_FORMATS, query_format

    kind = query_format([v.element_type for v in query.variables])
    if kind is None or floats_as_reals:
        return None
    if kind not in FLOAT_FORMATS:
        name = next(v.name for v in query.variables if v.element_type.lower() == kind)
        raise UsageError(
            f"{query_path} declares {name} as {kind}, which verify cannot analyse soundly "
            f"(float semantics: {', '.join(FLOAT_FORMATS)}); pass --floats-as-reals to "
            f"accept real-arithmetic semantics")
    return kind


def _float_widened(query, model: Path, kind: str):
    """(the query widened by the float evaluation error, None) or (the query itself, the
    reason no unsat can be given) when that error cannot be bounded."""
    import numpy as np

    from .float_rounding import FloatSemanticsError, evaluation_error, query_hull, widen_query

    try:
        error = evaluation_error(model, *query_hull(query), kind)
    except FloatSemanticsError as exc:
        return query, f"{kind} rounding not bounded: {exc}"
    except Exception as exc:  # noqa: BLE001 - e.g. onnxruntime refusing the shape probe: the
        # answer stays sound without the bound (no unsat), so say why and go on
        return query, f"{kind} rounding not bounded: {type(exc).__name__}: " \
                      f"{' '.join(str(exc).split())[:200]}"
    if not np.all(np.isfinite(error)):
        return query, f"{kind} evaluation may overflow on the box"
    return widen_query(query, error), None


def _float_counterexample(query, model: Path, x, kind: str):
    """(x, y) with x in the format, inside a case's box, whose float evaluation violates the
    query both in the own replay and in onnxruntime (y: onnxruntime's outputs); else None.
    Graph-IR models have no own float replay yet: there onnxruntime's evaluation decides."""
    from .float_rounding import graph_float_forward, onnxruntime_forward, round_into_box

    for case in query.cases:
        xf = round_into_box(x, case.box.lower, case.box.upper, kind)
        if xf is None:
            continue
        try:
            own = graph_float_forward(model, xf, kind)
        except Exception:  # noqa: BLE001 - no own replay of this graph: onnxruntime's alone
            own = None
        if own is not None and not query.violated_by(xf, own):
            continue
        try:
            y = onnxruntime_forward(model, xf)
        except Exception:  # noqa: BLE001 - no onnxruntime evaluation: no sat claimed
            return None
        if query.violated_by(xf, y):
            return xf.astype("float64"), y
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
    from .onnx_io import load_onnx
    from .threads import configure
    from .vnncomp import solve
    from .vnnlib import load_vnnlib

    timeout = parse_timeout(args.timeout)
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if not args.query:
        raise UsageError("verify needs the path to a query file")
    query = load_vnnlib(args.query)
    model = _network_model(args.networks, query, args.query)
    kind = _float_format(query, args.query, args.floats_as_reals)
    if args.serialise_assignments is not None:
        print(f"{PROGRAM}: warning: --serialise-assignments is not supported (see supports "
              "--serialise-assignments); the assignment goes to stdout", file=sys.stderr)
    net = load_onnx(model)
    configure(net, args.threads)
    query.check_sizes(net.input_size, net.output_size, net.input_shape)
    solved_query, no_unsat = (query, None) if kind is None else \
        _float_widened(query, model, kind)
    remaining = timeout - (time.perf_counter() - t0)
    if remaining <= 0:
        result, counterexample, method = "timed-out", None, "loading"
    else:
        solved = solve(net, solved_query, args.method, remaining)
        result, counterexample, method = solved.result, solved.counterexample, solved.method
        if result == "timeout":
            result = "timed-out"
    if result == "unsat" and no_unsat is not None:
        result, method = "unknown", f"{method}; {no_unsat}"
    text = result + "\n"
    if result == "sat":
        x, _ = counterexample
        if kind is None:
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
                   help="seconds, loading included (whole or decimal; default: none)")
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


if __name__ == "__main__":
    sys.exit(main())
