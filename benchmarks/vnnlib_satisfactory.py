"""The vnnlib-satisfactory conformance suite (PyPI `vnnlib-satisfactory` 1.0.1) against
`verify-solver`, through this driver rather than the suite's own runner (which crashes writing
report.json when a case times out).

It generates the suite's cases (ONNX + VNN-LIB 2.0, in a scratch folder), asks the solver the
same `supports` questions the suite asks and skips the same cases (via the suite's own
`partition_by_support`), runs `verify Q.vnnlib --network N=M.onnx --timeout T` per case in a
fresh process, killed at T seconds as the suite does, and sorts each case into

- pass: the expected sat/unsat (a sat whose assignment is valid, see below);
- wrong: the opposite definite answer, or a sat whose assignment is not valid;
- fail: unknown, timed-out, killed at T, or an error (exit code 1);
- skipped: a required op or theory that `supports` does not claim.

An assignment is valid when its input values are representable in the declared element type,
and onnxruntime, run on each declared network's model at its inputs (hidden nodes read as extra
outputs), gives outputs that, with those inputs, satisfy the query (checked with verify's
VNN-LIB reader; queries that reader refuses cannot be checked and count as wrong).

    python benchmarks/vnnlib_satisfactory.py [--timeout 10] [--tree PATH] [--label NAME]
        [--solver-args "--floats-as-reals"] [--category conv] [--out FILE.md]

`--tree`: the checkout whose `verify` runs (PYTHONPATH), default this one. Several
`--tree`/`--label` pairs: one column group each, side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's verify, for checking assignments
OUTCOMES = ("pass", "fail", "wrong", "skipped")


def _solver(tree: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run([sys.executable, "-m", "verify.solver_cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=str(tree))


def _supported(tree: Path, capability: str) -> set[str] | None:
    """First word of each line of `supports CAPABILITY`, as the suite reads theories (ops: the
    whole line, as the suite reads them)."""
    done = _solver(tree, ["supports", capability], 60)
    if done.returncode != 0:
        return None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if capability == "--onnx-operators":
        return set(lines) or None
    return {line.split()[0] for line in lines} or None


def parse_assignment(stdout: str) -> dict[str, tuple[str, list[int], np.ndarray]]:
    """The standard's command-line assignment after `sat`: NAME TYPE [DIMS] then values."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()][1:]
    out, k = {}, 0
    while k < len(lines):
        name, kind, dims = lines[k].split(maxsplit=2)
        shape = [int(d) for d in dims.strip("[]").split(",") if d.strip()]
        size = int(np.prod(shape, dtype=np.int64)) if shape else 1
        values = np.array([float(v) for v in lines[k + 1:k + 1 + size]])
        out[name] = (kind, shape, values)
        k += 1 + size
    return out


def _observed_by_onnxruntime(query, models: dict[str, Path], x: np.ndarray) -> np.ndarray:
    """The query's observed vector (hidden nodes and outputs in declaration order) from
    onnxruntime, each declared network run on its own model file (an `equal-to` network on the
    file of the network it equals) at its declared inputs; ONNX tensors matched by the names
    the declarations give, else by position. Written apart from verify-solver's own code."""
    import onnx
    import onnxruntime as ort

    y = np.zeros(sum(v.size for v in query.variables if v.kind != "input"))
    declared = {n.name: n for n in query.networks}
    for net in query.networks:
        source = net
        while source.name not in models and source.equal_to:
            source = declared[source.equal_to]
        model = onnx.load(str(models[source.name]))
        mine = [v for v in query.variables if v.network == net.name]
        consts = {init.name for init in model.graph.initializer}
        onnx_inputs = [i.name for i in model.graph.input if i.name not in consts]
        onnx_outputs = [o.name for o in model.graph.output]
        ins = [v for v in mine if v.kind == "input"]
        outs = [v for v in mine if v.kind == "output"]
        in_names = [v.onnx_name for v in ins] if all(v.onnx_name for v in ins) else onnx_inputs
        out_names = [v.onnx_name for v in outs] if all(v.onnx_name for v in outs) \
            else onnx_outputs
        names = dict(zip((v.name for v in outs), out_names))
        names.update({v.name: v.onnx_name for v in mine if v.kind == "hidden"})
        elem_type = model.graph.input[0].type.tensor_type.elem_type
        for v in mine:
            if v.kind == "hidden" and v.onnx_name not in onnx_outputs:
                model.graph.output.append(onnx.helper.make_tensor_value_info(
                    v.onnx_name, elem_type, None))
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        feeds = {}
        for inp in session.get_inputs():
            v = ins[in_names.index(inp.name)]
            dtype = {"tensor(double)": np.float64, "tensor(float16)": np.float16}.get(
                inp.type, np.float32)
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
            feeds[inp.name] = x[v.offset:v.offset + v.size].astype(dtype).reshape(shape)
        observed = [v for v in mine if v.kind != "input"]
        values = session.run([names[v.name] for v in observed], feeds)
        for v, value in zip(observed, values):
            y[v.offset:v.offset + v.size] = np.asarray(value, dtype=np.float64).reshape(-1)
    return y


def valid_assignment(stdout: str, models: dict[str, Path] | Path, query_path: Path
                     ) -> tuple[bool, str]:
    """Is the printed sat assignment a real counterexample (see the module docstring)?
    `models`: the model file of each declared network, or one file for all of them."""
    from verify.vnnlib import load_vnnlib

    try:
        query = load_vnnlib(str(query_path))
        if not isinstance(models, dict):
            models = {n.name: Path(models) for n in query.networks}
        assignment = parse_assignment(stdout)
        inputs = [v for v in query.variables if v.kind == "input"]
        x = np.zeros(query.n_inputs)
        for v in inputs:  # a shared input (the query equates it with another) at its offset
            if v.shares is not None and np.any(assignment[v.name][2] !=
                                               assignment[v.shares][2]):
                return False, f"{v.name} differs from {v.shares}, which the query equates"
            x[v.offset:v.offset + v.size] = assignment[v.name][2]
        kinds = [assignment[v.name][0].lower() for v in inputs]
    except Exception as exc:  # noqa: BLE001 - any failure to read it makes it invalid
        return False, f"cannot check: {' '.join(str(exc).split())[:120]}"
    for v, kind in zip(inputs, kinds):
        values = x[v.offset:v.offset + v.size]
        for dtype in ("float16", "float32"):
            if kind == dtype and np.any(values.astype(dtype).astype(np.float64) != values):
                return False, f"inputs not representable in {dtype}"
    y = _observed_by_onnxruntime(query, models, x)
    if not query.violated_by(x, y):
        return False, "onnxruntime's outputs do not satisfy the query"
    return True, ""


def run_case(tree: Path, entry: dict, folder: Path, timeout: float,
             solver_args: list[str]) -> tuple[str, str, float]:
    """(outcome, detail, seconds) of one case."""
    query = folder / entry["vnnlib"]
    argv = ["verify", str(query)]
    for name, onnx_file in entry["networks"].items():
        argv += ["--network", f"{name}={folder / onnx_file}"]
    argv += ["--timeout", f"{timeout:g}", *solver_args]
    t0 = time.monotonic()
    try:
        done = _solver(tree, argv, timeout)
    except subprocess.TimeoutExpired:
        return "fail", "killed at the timeout", time.monotonic() - t0
    seconds = time.monotonic() - t0
    lines = done.stdout.split()
    verdict = lines[0] if lines else ""
    expected = entry["expected"].lower()
    if done.returncode != 0 or verdict not in ("sat", "unsat"):
        detail = verdict or " ".join(done.stderr.split())[:160]
        return "fail", detail, seconds
    if verdict != expected:
        return "wrong", f"{verdict}, expected {expected}", seconds
    if verdict == "sat":
        models = {name: folder / onnx_file for name, onnx_file in entry["networks"].items()}
        ok, why = valid_assignment(done.stdout, models, query)
        if not ok:
            return "wrong", f"invalid assignment: {why}", seconds
    return "pass", "", seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--tree", action="append", default=None,
                        help="checkout whose verify runs (repeatable); default this one")
    parser.add_argument("--label", action="append", default=None)
    parser.add_argument("--solver-args", default="", help="extra verify options")
    parser.add_argument("--category", default=None, help="one suite category only")
    parser.add_argument("--note", action="append", default=[],
                        help="a line of context for the report (machine load, what was compared)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                             "vnnlib_satisfactory.md"))
    args = parser.parse_args(argv)
    trees = [Path(t).resolve() for t in (args.tree or [str(ROOT)])]
    labels = args.label or [t.name for t in trees]
    if len(labels) != len(trees):
        parser.error("give one --label per --tree")
    from vnntest.core.evaluator import partition_by_support
    from vnntest.core.generator import generate_all_tests
    from vnntest.models.test_case import TestCase

    scratch = Path(tempfile.mkdtemp(prefix="vnnlib-satisfactory-"))
    cwd = os.getcwd()
    os.chdir(scratch)
    try:
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):
            manifest = generate_all_tests(node_type=args.category)
    finally:
        os.chdir(cwd)
    base = scratch / ".vnnlib-satisfactory" / "tests"
    cases = {e["category"] + "/" + e["name"]: e for e in manifest}
    solver_args = shlex.split(args.solver_args)
    results: dict[str, dict[str, tuple[str, str, float]]] = {}
    for tree, label in zip(trees, labels):
        capabilities = [_supported(tree, c) for c in (
            "--onnx-operators", "--multiple-network-theories", "--hidden-node-theories",
            "--multiple-input-output-theories", "--arithmetic-complexity-theories")]
        tcs = [TestCase.from_manifest_entry(e, base / e["category"]) for e in manifest]
        _, skipped = partition_by_support(tcs, *capabilities[:3],
                                          supported_io_theories=capabilities[3],
                                          supported_arithmetic_complexity_theories=capabilities[4])
        skipped_ids = {s.test_case.id: s.missing_op for s in skipped}
        results[label] = {}
        for case_id, entry in cases.items():
            if case_id in skipped_ids:
                results[label][case_id] = ("skipped", f"missing {skipped_ids[case_id]}", 0.0)
                continue
            outcome = run_case(tree, entry, base / entry["category"], args.timeout, solver_args)
            results[label][case_id] = outcome
            print(f"{label:10s} {case_id:36s} {outcome[0]:8s} {outcome[2]:5.1f} s  {outcome[1]}",
                  flush=True)
    write_report(Path(args.out), cases, results, args)
    return 0


def write_report(path: Path, cases: dict, results: dict, args) -> None:
    labels = list(results)
    by_category: dict[str, list[str]] = defaultdict(list)
    for case_id in cases:
        by_category[case_id.split("/")[0]].append(case_id)
    head = "| category | cases | " + " | ".join(
        f"{label}: pass / fail / wrong / skipped" for label in labels) + " |"
    rows = [head, "|" + "---|" * (2 + len(labels))]
    totals = {label: Counter() for label in labels}
    for category in sorted(by_category):
        cells = []
        for label in labels:
            counts = Counter(results[label][c][0] for c in by_category[category])
            totals[label].update(counts)
            cells.append(" / ".join(str(counts[o]) for o in OUTCOMES))
        rows.append(f"| {category} | {len(by_category[category])} | " + " | ".join(cells) + " |")
    rows.append(f"| **all** | {len(cases)} | " + " | ".join(
        "**" + " / ".join(str(totals[label][o]) for o in OUTCOMES) + "**"
        for label in labels) + " |")
    details = []
    for label in labels:
        details.append(f"\n### {label}: cases not passed and not skipped\n")
        for case_id, (outcome, detail, seconds) in results[label].items():
            if outcome in ("fail", "wrong"):
                details.append(f"- {case_id}: {outcome} ({seconds:.1f} s) {detail}")
    text = "\n".join([
        "# vnnlib-satisfactory 1.0.1 against verify-solver",
        "",
        f"Generated by `python benchmarks/vnnlib_satisfactory.py` (timeout {args.timeout:g} s, "
        f"each case a fresh process killed at the timeout; extra solver options: "
        f"`{args.solver_args or 'none'}`). Skipped as the suite skips: by the `supports` "
        "answers. A sat counts as pass only with an assignment valid in onnxruntime.",
        "",
        *[f"Note: {note}" for note in args.note],
        "",
        *rows,
        *details,
        "",
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
