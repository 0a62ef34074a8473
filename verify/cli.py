"""The `verify` command. Subcommands:

    info            layers, shapes, neurons and parameters of an ONNX model
    methods         the certifiers and their options
    certify         one input's robustness with one certifier (a Certificate, text or JSON)
    smooth-predict  the smoothed classifier's class, or abstain
    demo            a few test digits on the bundled model, several certifiers side by side
    compare         certifiers side by side on many inputs (CSV, JSON, PNG)
    plot2d          input- and output-space picture for a 2-input network
    export          the MILP (or its LP relaxation) of one margin as .lp / .mps
    vnnlib          answer one VNN-LIB property: sat, unsat, unknown, timeout
    vnncomp         run and score a VNN-COMP instances.csv
    benchmarks      list or fetch full VNN-COMP suites, sha256-checked

User errors (bad files, arguments, models) print one line `verify: error: ...` on stderr and exit
with code 2; a completed run exits 0 whatever the verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import __version__
from .errors import InputError, VerifyError
from .outputs import atomic_path, check_output_file, check_output_folder, write_text_atomically


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{message} (see {self.prog} --help)")


def read_input(path: str) -> np.ndarray:
    """A flat float64 input from .npy, .json (a list, or {"x": [...]}) or .csv/.txt numbers."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such input file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            value = np.load(p, allow_pickle=False)
        elif suffix == ".json":
            data = json.loads(p.read_text())
            if isinstance(data, dict):
                key = next((k for k in ("x", "input", "data") if k in data), None)
                if key is None:
                    raise InputError(f"{path}: JSON object needs a key 'x' holding the input")
                data = data[key]
            value = np.asarray(data, dtype=np.float64)
        elif suffix in (".csv", ".txt", ""):
            tokens = p.read_text().replace(",", " ").replace(";", " ").split()
            value = np.asarray([float(t) for t in tokens], dtype=np.float64)
        else:
            raise InputError(f"{path}: unknown input format '{suffix}' (use .npy, .json or .csv)")
        value = np.asarray(value)
        if value.dtype.kind not in "iuf":
            raise InputError(f"{path}: the input must be real numbers, not {value.dtype} values")
        return value.astype(np.float64).reshape(-1)
    except InputError:
        raise
    except (ValueError, TypeError, OSError, EOFError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot read the input ({first})") from None


def model_metadata(model_path: str) -> dict:
    """The metadata JSON beside a model (models/NAME.json), or {}."""
    meta = Path(model_path).with_suffix(".json")
    if meta.is_file():
        try:
            return json.loads(meta.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def parse_domain(text: Optional[str], model_path: str):
    """--domain LO,HI; 'none' for no domain; default: the model's metadata domain, if any."""
    if text is None:
        domain = model_metadata(model_path).get("domain")
        return tuple(domain) if domain else None
    if text.strip().lower() == "none":
        return None
    parts = text.split(",")
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise InputError(f"--domain must be LO,HI (two numbers) or none, got '{text}'") from None
    return lo, hi


def _options(args, method: Optional[str] = None) -> dict:
    """--device for the methods that take one; for the others, a note on stderr that it is
    ignored."""
    from .backends import get_backend

    method = method or args.method
    if not args.device:
        return {}
    if "device" in get_backend(method).options_type.__dataclass_fields__:
        return {"device": args.device}
    print(f"verify: note: {method} has no device option (it runs on the CPU); --device ignored",
          file=sys.stderr)
    return {}


def _method_options(args) -> dict:
    """`--option KEY=VALUE` (and `--lp-tighten`) as typed keyword options of the method; an
    option also given by its own flag (--device, --lp-tighten, --sigma, ...) is refused. A
    key may carry the method's name, as compare's do (`crown.intermediate=ibp` with --method
    crown); another method's name is refused."""
    pairs = list(args.option or [])
    for pair in pairs:
        method, dot, rest = pair.partition("=")[0].partition(".")
        if dot and method.strip() != args.method:
            named = f"is for method '{method.strip()}'" if method.strip() else "names no method"
            raise InputError(f"--option {pair}: the option {named}, but --method is "
                             f"{args.method} (give KEY=VALUE or {args.method}.KEY=VALUE)")
    options = _typed_options(args.method, pairs, prefix=f"{args.method}.")
    for key in options:
        flag = _FLAG_OPTIONS.get(key)
        if flag is not None and getattr(args, key, None) not in (None, False, ""):
            raise InputError(f"{flag} and --option {key} both given: give it once")
    if args.lp_tighten:
        if args.method != "lp":
            raise InputError(f"--lp-tighten applies to --method lp, not '{args.method}'")
        options["lp_tighten"] = True
    return options


def _compare_options(args) -> dict:
    """compare's `--option METHOD.KEY=VALUE` as {method: typed options} (checked by
    compare.check_methods)."""
    pairs: dict[str, list[str]] = {}
    for pair in args.option or []:
        method, dot, rest = pair.partition(".")
        if not dot or method not in args.methods:
            raise InputError(f"--option expects METHOD.KEY=VALUE with METHOD one of --methods "
                             f"({', '.join(args.methods)}), got '{pair}'")
        pairs.setdefault(method, []).append(pair)
    return {method: _typed_options(method, items, prefix=f"{method}.")
            for method, items in pairs.items()}


def _typed_options(method: str, pairs: Sequence[str], prefix: str = "") -> dict:
    """KEY=VALUE pairs, each may start with `prefix` (e.g. "crown."), as keyword options of
    `method`: each value is read as the type of the option's default (bool: true/false/1/0);
    a key given twice is refused, messages quote the pairs as typed; unknown keys are left to
    make_options."""
    from .backends import get_backend, option_kind

    defaults = get_backend(method).options_type()
    options: dict = {}
    given: dict[str, str] = {}  # key -> the pair that set it
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        key = key[len(prefix):] if prefix and key.startswith(prefix) else key
        key = key.replace("-", "_")
        if not sep or not key:
            raise InputError(f"--option expects {prefix}KEY=VALUE, got '{pair}'")
        if key in given:
            raise InputError(f"--option {pair.partition('=')[0].strip()} given twice "
                             f"('{given[key]}', '{pair}'): give each option once")
        given[key] = pair
        if not hasattr(defaults, key):  # backends.make_options names the valid ones
            options[key] = text
            continue
        default = getattr(defaults, key)
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1")
            elif isinstance(default, (int, float)) or default is None:
                value = type(default)(text) if default is not None else float(text)
            else:
                value = text
        except ValueError:
            raise InputError(f"option {key} of method '{method}' takes {option_kind(default)}, "
                             f"got '{text}'") from None
        options[key] = value
    return options


def cmd_info(args) -> int:
    from .onnx_io import load_onnx

    net = load_onnx(args.model)
    print(net.summary())
    print(f"  fingerprint {net.fingerprint()}, file sha256 {net.source_sha256}")
    meta = model_metadata(args.model)
    if meta:
        keys = ("description", "domain", "test_accuracy", "training")
        print("  metadata: " + ", ".join(f"{k} {meta[k]}" for k in keys if k in meta))
    return 0


def cmd_methods(args) -> int:
    from .backends import load_all

    registry = load_all()  # imports every built-in certifier
    for name in sorted(registry):
        backend = registry[name]
        balls = " ".join(f"l_{n}" for n in backend.norms)
        print(f"{name:12s} {balls:14s} {backend.summary}")
    return 0


def cmd_certify(args) -> int:
    from .threads import check_threads, configure

    timeout = _check_timeout(args.timeout)  # plain arguments first: before torch's import
    check_threads(args.threads)
    from . import deadline
    from .backends import certify, get_backend
    from .onnx_io import load_onnx

    get_backend(args.method)
    net = load_onnx(args.model)
    configure(net, args.threads)
    x = read_input(args.input)
    domain = parse_domain(args.domain, args.model)
    options = {**_options(args), **_smoothing_options(args), **_method_options(args)}
    own_clock = "timeout" in get_backend(args.method).options_type.__dataclass_fields__
    if timeout is not None and own_clock:  # milp, bab: their own limit, never past --timeout
        options["timeout"] = min(options.get("timeout") or timeout, timeout)  # 0: none
    with deadline.limit(timeout):  # past it: MAYBE with reason "timeout ..."
        cert = certify(net, x, args.label, args.eps, norm=args.norm, method=args.method,
                       domain=domain, **options)
    print(cert.to_json() if args.json else str(cert))
    return 0


def _check_timeout(seconds: Optional[float]) -> Optional[float]:
    """--timeout: None (no limit) or a finite number of seconds > 0."""
    if seconds is None:
        return None
    from .deadline import check_seconds

    return check_seconds(seconds, "--timeout")


def _add_threads_argument(p) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: 1 for networks under 2M multiply-accumulates "
                   "per input, else the free cores; see docs/vnnlib.md)")


def bundled_model() -> tuple[Path, Path]:
    import models

    folder = models.models_dir()
    return folder / "digits_mlp.onnx", folder / "digits_test.npz"


def cmd_demo(args) -> int:
    if args.count < 1:
        raise InputError(f"--count must be at least 1, got {args.count}")
    from .backends import certify, certify_batch
    from .compare import check_methods
    from .onnx_io import load_onnx

    device_options = {method: _options(args, method) for method in args.methods}  # notes once
    check_methods(args.methods, args.norm, device_options)  # before anything is printed
    model_path, data_path = bundled_model()
    net = load_onnx(model_path)
    data = np.load(data_path)
    xs, ys = data["x"][: args.count], data["y"][: args.count]
    domain = tuple(model_metadata(str(model_path)).get("domain", (0.0, 1.0)))
    print(net.summary())
    print(f"\nThe first {len(xs)} test digits, l_{args.norm} balls ∩ {list(domain)}: "
          "relaxed certifiers (YES or MAYBE) against the exact one (YES or NO).\n")
    print(f"{'eps':>6s}  {'method':12s} {'YES':>4s} {'NO':>4s} {'MAYBE':>5s} {'time/input':>11s}"
          "   per digit")
    for eps in args.eps:
        for method in args.methods:
            t0 = time.perf_counter()
            certs = certify_batch(net, xs, ys, eps, norm=args.norm, method=method,
                                  domain=domain, **device_options[method])
            per_input = (time.perf_counter() - t0) / len(xs)
            counts = {s: sum(c.status.value == s for c in certs) for s in ("YES", "NO", "MAYBE")}
            marks = "".join({"YES": "Y", "NO": "N", "MAYBE": "?"}[c.status.value] for c in certs)
            print(f"{eps:6.3f}  {method:12s} {counts['YES']:4d} {counts['NO']:4d} "
                  f"{counts['MAYBE']:5d} {per_input * 1e3:8.2f} ms   {marks}")
        print()
    print("Y = proved robust, N = counterexample (replayed in float64), ? = not proved.")
    eps = args.eps[len(args.eps) // 2]
    first = certify(net, xs[0], int(ys[0]), eps, norm=args.norm, method=args.methods[-1],
                    domain=domain, **device_options[args.methods[-1]])
    print(f"\nOne certificate in full ({args.methods[-1]}, eps {eps:g}):\n" + str(first))
    return 0


COMPARE_FILES = ("compare.txt", "compare.csv", "compare.json", "compare.png")


def cmd_compare(args) -> int:
    from .compare import (check_methods, compare, compare_one, format_table, plot_curves,
                          one_input_records, write_json, write_one_input)
    from .onnx_io import load_onnx
    from .spec import robustness_spec
    from .threads import configure

    net = load_onnx(args.model)
    configure(net, args.threads)
    domain = parse_domain(args.domain, args.model)
    options = _compare_options(args)
    check_methods(args.methods, args.norm, options)  # before any row runs or file is made
    if args.input is not None:
        if args.label is None:
            raise InputError("--input needs --label")
        if len(args.eps) > 1:
            raise InputError(f"--input compares one radius: give one --eps, not {len(args.eps)}")
        x = read_input(args.input)
        robustness_spec(net.input_size, net.output_size, x, args.label, args.eps[0], args.norm,
                        domain)  # input, label and eps refused before the folder is made
        out = check_output_folder(args.out, COMPARE_FILES) if args.out else None
        table, certs = compare_one(net, x, args.label, args.eps[0], args.norm, args.methods,
                                   domain, options)
        print(table)
        if out is not None:
            write_text_atomically(out / "compare.txt", table + "\n")
            written = write_one_input(one_input_records(certs, args.label, args.eps[0],
                                                        args.norm), certs, out,
                                      f"{net.name}, label {args.label}, l_{args.norm} "
                                      f"eps {args.eps[0]:g}")
            print(f"wrote {', '.join(str(p) for p in [out / 'compare.txt', *written])}"
                  + ("" if len(written) == 3 else " (no plot: matplotlib missing)"))
        return 0
    data_path = Path(args.data) if args.data else bundled_model()[1]
    if not data_path.is_file():
        raise InputError(f"{data_path}: no such data file (an .npz with arrays x and y)")
    try:
        data = np.load(data_path)
        xs, ys = np.asarray(data["x"], dtype=np.float64), np.asarray(data["y"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        raise InputError(f"{data_path}: needs an .npz with arrays x and y") from None
    if args.n < 1:
        raise InputError(f"--n must be at least 1, got {args.n}")
    if xs[0].size != net.input_size:
        raise InputError(f"{data_path}: inputs have {xs[0].size} values, the network expects "
                         f"{net.input_size}")
    if args.n > len(xs):
        print(f"verify: --n {args.n}, but {data_path} holds {len(xs)} inputs: using all of them",
              file=sys.stderr)
    xs, ys = xs[: args.n], ys[: args.n]
    for eps in args.eps:  # all of them before any file is opened
        if not np.isfinite(eps) or eps < 0:
            raise InputError(f"--eps must be finite and >= 0, got {eps}")
    out = check_output_folder(args.out, COMPARE_FILES) if args.out else None
    rows, records = compare(net, xs, ys, args.eps, args.norm, args.methods, domain,
                            out / "compare.csv" if out else None,
                            progress=_progress_line, options=options, workers=args.workers,
                            cluster=args.cluster,
                            tick=_progress_bar if sys.stderr.isatty() else None)
    table = format_table(rows)
    print(table)
    if out is not None:
        write_text_atomically(out / "compare.txt", table + "\n")
        write_json(rows, records, out / "compare.json")
        drawn = plot_curves(rows, out / "compare.png", f"{net.name}, l_{args.norm}")
        print(f"wrote {out / 'compare.txt'}, {out / 'compare.csv'}, {out / 'compare.json'}"
              + (f", {out / 'compare.png'}" if drawn else " (no plot: matplotlib missing)"))
    return 0


def _progress_bar(eps: float, method: str, done: int, total: int, width: int = 30) -> None:
    """`eps 0.05 milp [#########.....................] 30/100`, redrawn in place on stderr."""
    filled = width * done // max(total, 1)
    print(f"\r  eps {eps:g} {method} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
          end="", file=sys.stderr, flush=True)


def _progress_line(text: str) -> None:
    """One finished row; on a terminal it replaces the progress bar's line."""
    clear = "\r\033[K" if sys.stderr.isatty() else ""
    print(clear + text, file=sys.stderr, flush=True)


def cmd_plot2d(args) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("plot2d draws with matplotlib: pip install matplotlib (in a checkout: "
                         "pip install -e '.[plot]')") from None

    try:
        x = [float(v) for v in args.x.split(",")]
    except ValueError:
        raise InputError(f"--x must be two numbers X0,X1, got '{args.x}'") from None
    if len(x) != 2:
        raise InputError(f"--x must be two numbers X0,X1, got '{args.x}'")
    out = check_output_file(args.out)
    from .onnx_io import load_onnx
    from .plot2d import plot2d

    net = load_onnx(args.model)
    info = plot2d(net, x, args.eps, out, args.norm, args.label,
                  parse_domain(args.domain, args.model), args.methods,
                  options=_compare_options(args))
    bounds = ", ".join(f"{m} {v:.4g}" for m, v in info["margin_lower"].items() if v is not None)
    print(f"wrote {out}: margin z_{info['label']} - z_{info['runner_up']} lower bounds: {bounds}; "
          f"sampled minimum {info['sampled_min']:.4g}")
    return 0


def cmd_export(args) -> int:
    """The MILP (or its LP relaxation) of one margin row as a readable .lp / .mps file."""
    from .exact.milp import export_model
    from .onnx_io import load_onnx
    from .spec import robustness_spec

    net = load_onnx(args.model)
    x = read_input(args.input)
    spec = robustness_spec(net.input_size, net.output_size, x, args.label, args.eps, args.norm,
                           parse_domain(args.domain, args.model))
    if args.against is None:  # the runner-up class at the input: the margin most at risk
        logits = net.forward(x)
        against = int(max((j for j in range(net.output_size) if j != args.label),
                          key=lambda j: logits[j]))
    else:
        against = args.against
    if against not in spec.output.row_class:
        raise InputError(f"--against {against} is not a class other than the label "
                         f"(0..{net.output_size - 1})")
    out = check_output_file(args.out)
    with atomic_path(out) as tmp:
        export_model(net, spec, tmp, relax=args.relax, format=args.format,
                     row=spec.output.row_class.index(against))
    from .graph.encoding import relaxed_ops

    relaxed = relaxed_ops(net)
    kind = "LP relaxation" if args.relax else \
        f"MILP relaxation ({', '.join(relaxed)} by linear bounds)" if relaxed else "MILP"
    print(f"wrote the {kind} of min z_{args.label} - z_{against} over the l_{args.norm} ball "
          f"of radius {args.eps:g} to {out} ({args.format})")
    return 0


def cmd_vnnlib(args) -> int:
    """Answer one property; run as a command, --timeout counts from the process start (Python's
    start-up and the imports included, as verify-solver's), so the whole command ends near it."""
    from .deadline import check_seconds
    from .solver_cli import process_age
    from .threads import check_threads

    check_seconds(args.timeout, "--timeout")
    if args.out:
        check_output_file(args.out)
    threads = check_threads(args.threads)
    from .vnncomp import QueryResult, solve_files  # torch: after the plain arguments' checks
    started = process_age() if getattr(args, "as_command", False) else 0.0
    if started >= args.timeout:
        result = QueryResult("timeout", time_s=started, reason=f"Python's start-up took "
                             f"{started:.2f} s of the {args.timeout:g} s")
    else:
        result = solve_files(args.model, args.property, args.method, args.timeout - started,
                             threads)
        result.time_s += started
    text = result.text()
    if args.out:  # written before anything is printed: a failure leaves no half-reported answer
        write_text_atomically(args.out, text)
    print(text, end="")
    detail = f"{result.method or args.method}, {result.time_s:.3f} s"
    print(f"({detail}{'; ' + result.reason if result.reason else ''})", file=sys.stderr)
    return 0


def cmd_vnncomp(args) -> int:
    from .deadline import check_seconds
    from .threads import check_threads

    if args.timeout_cap is not None:
        check_seconds(args.timeout_cap, "--timeout-cap")
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    if args.out:
        check_output_file(args.out)
    threads = check_threads(args.threads)
    from .vnncomp import run_instances, summary  # torch: after the plain arguments' checks
    rows = run_instances(args.instances, args.method, args.timeout_cap, args.out, args.limit,
                         workers=args.workers, cluster=args.cluster,
                         threads=threads)
    print(summary(rows))
    return 0


# ---- randomized smoothing: `certify --method smoothing` options and `smooth-predict`
_SMOOTHING_FLAGS = {"noise": "--noise", "sigma": "--sigma", "n0": "--n0", "n": "--n",
                    "alpha": "--alpha", "batch_size": "--batch-size", "seed": "--seed"}
# Options that `verify certify` also takes as flags of their own.
_FLAG_OPTIONS = {"device": "--device", "lp_tighten": "--lp-tighten", **_SMOOTHING_FLAGS}


def _add_smoothing_arguments(p, predict_only: bool = False) -> None:
    g = p.add_argument_group("randomized smoothing" + ("" if predict_only else
                                                       " (--method smoothing only)"))
    g.add_argument("--noise", default=None,
                   help="gaussian (default), laplace, uniform, gennorm:BETA")
    g.add_argument("--sigma", type=float, default=None,
                   help="noise std per coordinate (default: the model metadata's sigma)")
    if not predict_only:
        g.add_argument("--n0", type=int, default=None, help="selection samples (default 100)")
    g.add_argument("--n", type=int, default=None, help="samples (default 100000)")
    g.add_argument("--alpha", type=float, default=None, help="1 - confidence (default 0.001)")
    g.add_argument("--batch-size", type=int, default=None, help="noisy inputs per forward pass")
    g.add_argument("--seed", type=int, default=None, help="random seed (default 0)")


def _smoothing_options(args) -> dict:
    """The smoothing options given on the command line; sigma and noise default to the model
    metadata's. Refused with any other method."""
    given = {k: getattr(args, k) for k in _SMOOTHING_FLAGS
             if getattr(args, k, None) is not None}
    if getattr(args, "method", "smoothing") != "smoothing":
        if given:
            flags = ", ".join(_SMOOTHING_FLAGS[k] for k in given)
            raise InputError(f"{flags}: only for --method smoothing")
        return {}
    meta = model_metadata(args.model)
    for key in ("sigma", "noise"):
        if key not in given and meta.get(key) is not None:
            given[key] = meta[key]
    return given


def cmd_smooth_predict(args) -> int:
    from .onnx_io import load_onnx
    from .smoothing import predict

    net = load_onnx(args.model)
    x = read_input(args.input)
    options = _smoothing_options(args)
    result = predict(net, x, **options, **_options(args, "smoothing"))
    print(json.dumps(result.to_dict(), indent=2) if args.json else str(result))
    return 0


def cmd_benchmarks(args) -> int:
    from .benchmark_suites import describe, fetch, load_registry

    if args.action == "list":
        print(describe(load_registry()))
        return 0
    if not args.name:
        raise InputError("benchmarks fetch needs a suite name (list them: verify benchmarks list)")
    target = fetch(args.name, Path(args.dest), args.source)
    print(f"fetched {args.name} into {target} (every file sha256-checked)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="verify", description="Prove or refute robustness of ONNX ReLU networks.")
    parser.add_argument("--version", action="version", version=f"verify {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("info", help="layers, shapes, neurons and parameters of a model")
    p.add_argument("model")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("methods", help="list the certifiers")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("certify", help="certify one input's robustness")
    p.add_argument("model")
    p.add_argument("--input", required=True, help="input file: .npy, .json or .csv")
    p.add_argument("--label", required=True, type=int, help="the class to protect")
    p.add_argument("--eps", required=True, type=float, help="radius of the ball")
    p.add_argument("--norm", default="inf", help="inf, 2 or 1 (default inf)")
    p.add_argument("--method", default="ibp", help="certifier name (list: verify methods)")
    p.add_argument("--domain", default=None,
                   help="valid input box LO,HI (default: the model's metadata domain; 'none')")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    p.add_argument("--json", action="store_true", help="print the certificate as JSON")
    p.add_argument("--lp-tighten", action="store_true",
                   help="lp: tighten unstable neurons layer by layer with two LPs each (LP-all)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="any option of the method, e.g. steps=50 for alpha-crown, timeout=30 "
                   "for milp, intermediate=ibp (or crown.intermediate=ibp) for crown "
                   "(repeatable)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds for the certifier (default: none); past it MAYBE 'timeout'")
    _add_threads_argument(p)
    p.set_defaults(func=cmd_certify)
    _add_smoothing_arguments(p)

    p = sub.add_parser("smooth-predict", help="PREDICT: the smoothed classifier's class (or abstain)")
    p.add_argument("model")
    p.add_argument("--input", required=True, help="input file: .npy, .json or .csv")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_smoothing_arguments(p, predict_only=True)
    p.set_defaults(func=cmd_smooth_predict)

    p = sub.add_parser("demo", help="certify a few test digits on the bundled model")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.03, 0.05])
    p.add_argument("--norm", default="inf")
    p.add_argument("--methods", nargs="+", default=["ibp", "crown", "milp"])
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("compare", help="certifiers side by side on the same inputs")
    p.add_argument("model")
    p.add_argument("--eps", type=float, nargs="+", required=True)
    p.add_argument("--norm", default="inf")
    p.add_argument("--methods", nargs="+", default=["ibp", "crown", "alpha-crown", "milp",
                                                     "attack"])
    p.add_argument("--n", type=int, default=100, help="number of inputs (default 100)")
    p.add_argument("--data", default=None,
                   help=".npz with arrays x, y (default: the bundled digits test split)")
    p.add_argument("--domain", default=None)
    p.add_argument("--out", default=None,
                   help="folder (made if missing) for compare.txt (the table), .csv, .json, "
                        ".png; with --input the per-class margins")
    p.add_argument("--workers", type=int, default=1, help="local processes sharing the inputs")
    p.add_argument("--cluster", default=None, help="address of an existing Dask scheduler")
    p.add_argument("--input", default=None, help="one input: per-class margins side by side")
    p.add_argument("--option", action="append", metavar="METHOD.KEY=VALUE",
                   help="an option of one method, e.g. smoothing.sigma=0.25 or milp.timeout=10 "
                   "(repeatable)")
    p.add_argument("--label", type=int, default=None)
    _add_threads_argument(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("plot2d", help="input and output space picture for a 2-input network")
    p.add_argument("model")
    p.add_argument("--x", required=True, help="the point X0,X1")
    p.add_argument("--eps", required=True, type=float)
    p.add_argument("--norm", default="inf")
    p.add_argument("--label", type=int, default=None, help="default: the predicted class")
    p.add_argument("--domain", default=None)
    p.add_argument("--methods", nargs="+", default=["ibp", "crown", "lp", "milp"])
    p.add_argument("--option", action="append", metavar="METHOD.KEY=VALUE",
                   help="an option of one method, e.g. smoothing.sigma=0.25 (repeatable)")
    p.add_argument("--out", required=True, help="PNG file")
    p.set_defaults(func=cmd_plot2d)

    p = sub.add_parser("export", help="write the MILP (or LP relaxation) of a margin as .lp/.mps")
    p.add_argument("model")
    p.add_argument("--input", required=True)
    p.add_argument("--label", required=True, type=int)
    p.add_argument("--eps", required=True, type=float)
    p.add_argument("--norm", default="inf", help="inf or 1 (l_2 needs a cone: not a MILP)")
    p.add_argument("--domain", default=None)
    p.add_argument("--against", type=int, default=None,
                   help="the competing class j of the margin z_label - z_j (default: runner-up)")
    p.add_argument("--format", default="lp", choices=["lp", "mps"])
    p.add_argument("--relax", action="store_true", help="the LP relaxation (triangle) instead")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("vnnlib", help="answer a VNN-LIB property: sat, unsat, unknown, timeout")
    p.add_argument("model")
    p.add_argument("property", help="VNN-LIB 1.0 or 2.0 file (describes the violation; 2.0 "
                   "needs the 'vnnlib' package)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds from the process start: Python's start-up, the imports and "
                        "loading included, as in verify-solver (default 60)")
    p.add_argument("--method", default="auto", help="auto, bab, or a certifier name")
    p.add_argument("--out", default=None, help="write the result (and counterexample) here")
    _add_threads_argument(p)
    p.set_defaults(func=cmd_vnnlib)

    p = sub.add_parser("vnncomp", help="run a VNN-COMP instances.csv and score it")
    p.add_argument("instances", help="instances.csv: onnx, vnnlib, timeout per row")
    p.add_argument("--method", default="auto")
    p.add_argument("--timeout-cap", type=float, default=None, help="cap each row's timeout")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows")
    p.add_argument("--out", default=None, help="results CSV")
    p.add_argument("--workers", type=int, default=1, help="local processes (default 1)")
    p.add_argument("--cluster", default=None,
                   help="address of an existing Dask scheduler (needs dask[distributed])")
    _add_threads_argument(p)
    p.set_defaults(func=cmd_vnncomp)

    p = sub.add_parser("benchmarks", help="list or fetch full VNN-COMP suites (sha256-checked)")
    p.add_argument("action", choices=["list", "fetch"])
    p.add_argument("name", nargs="?", default=None, help="the suite to fetch (see: list)")
    p.add_argument("--dest", default=".", help="folder to fetch into (default: here)")
    p.add_argument("--source", default=None,
                   help="a mirror URL or a local folder laid out like the repository")
    p.set_defaults(func=cmd_benchmarks)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.as_command = argv is None  # a process of its own: vnnlib's clock starts with it
        if args.command is None:
            build_parser().print_help()
            return 2
        return args.func(args)
    except VerifyError as exc:
        print(f"verify: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `verify certify ... | head -2`: the reader left, say nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:  # Ctrl-C: files already written are whole; 128 + SIGINT
        print("verify: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
