"""How tight is the float32 evaluation-error bound (verify.float_rounding)? Bound per output
against the largest |float32 - float64| deviation observed, before and after a change.

    python benchmarks/float_rounding_tightness.py [--base REF] [--points 200] [--solve]
        [--solve-timeout 120]

Per network (the bundled VNN-COMP ones, benchmarks/data), over the input box of one property:
the bound of this tree's `evaluation_error` and of the module at commit REF (default 154fb73, the
forward walk alone: IBP intervals beyond 500k multiply-adds), and the largest deviation of
onnxruntime's float32 outputs from the float64 forward at random points of the box, random
corners and points a hill-climb moved (a few ulps at a time) towards a larger deviation relative
to the bound. looseness = bound / observed, per output (median and range over the outputs): the
observed deviation is a lower bound on the true worst case, so this overstates the looseness.
Process-CPU seconds per bound (torch on 1 thread).

`--solve`: CIFAR ResNet instances as VNN-LIB 2.0 queries declaring float32 (the 1.0 query's
box and disjunction, X [1, 3, 32, 32], Y [1, 10]), each answered by `verify-solver verify` of
both trees in a fresh process (the base tree from a temporary `git worktree`), --timeout
`--solve-timeout`; next to them the real-arithmetic answer (--floats-as-reals) of this tree.

Writes benchmarks/results/float_rounding_tightness.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.reporting import RESULTS, SHARED_NOTE, machine, single_thread  # noqa: E402
from verify import float_rounding  # noqa: E402
from verify.outputs import write_text_atomically  # noqa: E402
from verify.vnnlib import load_vnnlib  # noqa: E402

DATA = REPO / "benchmarks" / "data"
CIFAR = "vnncomp2021/cifar10_resnet"
NETWORKS = {  # name: (model, property) under benchmarks/data
    "ACAS Xu 1_1 prop 1": ("acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx",
                           "acasxu/vnnlib/prop_1.vnnlib"),
    "ACAS Xu 3_7 prop 3": ("acasxu/onnx/ACASXU_run2a_3_7_batch_2000.onnx",
                           "acasxu/vnnlib/prop_3.vnnlib"),
    "mnist_fc 256x2 prop 0, 0.03": ("mnist_fc/onnx/mnist-net_256x2.onnx",
                                    "mnist_fc/vnnlib/prop_0_0.03.vnnlib"),
    "mnist_fc 256x6 prop 0, 0.03": ("mnist_fc/onnx/mnist-net_256x6.onnx",
                                    "mnist_fc/vnnlib/prop_0_0.03.vnnlib"),
    "verivital Convnet_avgpool prop 0, 0.02": ("vnncomp2021/verivital/onnx/Convnet_avgpool.onnx",
                                               "vnncomp2021/verivital/vnnlib/prop_0_0.02.vnnlib"),
    "verivital Convnet_maxpool prop 0, 0.004": (
        "vnncomp2021/verivital/onnx/Convnet_maxpool.onnx",
        "vnncomp2021/verivital/vnnlib/prop_0_0.004.vnnlib"),
    "cifar10 resnet_2b prop 2, 0.008": (f"{CIFAR}/onnx/resnet_2b.onnx",
                                        f"{CIFAR}/vnnlib/prop_2_eps_0.008.vnnlib"),
    "cifar10 resnet_4b prop 2, 0.004": (f"{CIFAR}/onnx/resnet_4b.onnx",
                                        f"{CIFAR}/vnnlib/prop_2_eps_0.004.vnnlib"),
}
# (model, property): the ResNet instances the real-arithmetic `auto` proves within 60 s
# (benchmarks/results/vnncomp2021_cifar10_resnet.md)
SOLVE = [("resnet_2b", f"prop_{k}_eps_0.008") for k in (2, 3, 4, 5, 7)] + \
        [("resnet_4b", f"prop_{k}_eps_0.004") for k in (2, 5, 6, 7)]


NOTES = """
## Notes (the investigation behind the change)

- Before, on resnet_2b: IBP intervals leave every Relu of the last two blocks open (possibly
  active), so the walk charges each layer's rounding through the |W| products of all later
  layers: the first convolution's own rounding (at most 1e-5 per entry) reached 0.63 on a logit.
- The backward error pass (Relu-by-Relu tightening: stable Relus fixed, open ones charged
  |C|/2 E_x against their input's own backward bound) on the IBP intervals: 4.0 -> 0.79, the
  late Relus still open; with CROWN intervals: 0.026.
- What remains on resnet_2b: mostly the 1024 -> 100 Gemm's own rounding (gamma_1027 sum |w||x|)
  and the ~40 open Relus after it. A sum of n products is charged n roundings where random ones
  reach about sqrt(n), and the errors of many neurons are charged with one sign: hence 10^3 to
  10^5 over random points; at inputs whose roundings all have one sign the bound is within 16x
  of the deviation (tests/test_float32_graph.py).
- The one-convolution verivital nets have nothing to compose: unchanged. ACAS Xu 1_1 prop 1 has
  a wide box where CROWN leaves every deep Relu open: the bound stays loose (2.4).
- Before, the float32 queries were `unknown`: the query widened by a bound of 4 (resnet_2b) or
  1e5 (resnet_4b) is violated over the reals by the attack's point, which the float32 replay
  then rejects.
"""


def base_module(ref: str):
    """verify.float_rounding as of commit `ref`, imported beside this tree's (its relative
    imports read this tree's verify package)."""
    source = subprocess.run(["git", "show", f"{ref}:verify/float_rounding.py"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="float-base-")) / "float_rounding_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("verify._float_rounding_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed_bound(module, model: Path, lower, upper) -> tuple[np.ndarray, float]:
    from verify.bounds import graph

    graph._LAST_BOUNDS.clear()  # no CROWN bounds kept from the other tree's call
    start = time.process_time()
    error = module.evaluation_error(model, lower, upper, "float32")
    return error, time.process_time() - start


def observed_deviation(model: Path, lower, upper, bound: np.ndarray, points: int,
                       rng) -> np.ndarray:
    """Largest |onnxruntime float32 - float64 forward| per output over random points, random
    corners and a hill-climb from the point nearest the bound (relatively)."""
    from verify.onnx_io import load_onnx

    net = load_onnx(model)
    session = float_rounding.float_session(model)

    def deviation(xs):
        f32 = np.stack([float_rounding.session_forward(session, x) for x in xs])
        return np.abs(f32 - net.forward(xs))

    def into_box(xs):
        return np.stack([float_rounding.round_into_box(x, lower, upper) for x in xs]
                        ).astype(np.float64)

    n = len(lower)
    xs = into_box(np.concatenate([rng.uniform(lower, upper, (points // 2, n)),
                                  np.where(rng.random((points // 2, n)) < 0.5, lower, upper)]))
    found = deviation(xs)
    score = (found / bound).max(1)
    best, best_score = xs[np.argmax(score)], score.max()
    for _ in range(5):
        moves = np.repeat(best[None], 20, 0).astype(np.float32)
        for m in moves:
            picked = rng.choice(n, size=max(1, n // 8), replace=False)
            m[picked] = np.nextafter(m[picked], np.where(rng.random(len(picked)) < 0.5,
                                                          np.float32(-np.inf), np.float32(np.inf)))
        moves = into_box(np.clip(moves.astype(np.float64), lower, upper))
        more = deviation(moves)
        found = np.concatenate([found, more])
        score = (more / bound).max(1)
        if score.max() > best_score:
            best, best_score = moves[np.argmax(score)], score.max()
    return found.max(0)


def float32_query(source: Path, target: Path) -> None:
    """A VNN-LIB 1.0 CIFAR query (X_i, Y_j) as VNN-LIB 2.0 declaring float32."""
    def x_name(match):
        c, rest = divmod(int(match.group(1)), 1024)
        return f"X[0,{c},{rest // 32},{rest % 32}]"

    lines = [line for line in source.read_text().splitlines()
             if line.strip() and not line.startswith(";") and "declare-const" not in line]
    body = re.sub(r"Y_(\d+)", r"Y[0,\1]", re.sub(r"X_(\d+)", x_name, "\n".join(lines)))
    target.write_text("(vnnlib-version <2.0>)\n(declare-network N\n"
                      "  (declare-input X float32 [1, 3, 32, 32])\n"
                      "  (declare-output Y float32 [1, 10])\n)\n" + body + "\n")


def solve(tree: Path, model: Path, query: Path, timeout: float, reals: bool = False
          ) -> tuple[str, str]:
    """(answer, stderr's summary) of verify-solver of `tree` in a fresh process."""
    argv = [sys.executable, "-m", "verify.solver_cli", "verify", str(query), "--network",
            f"N={model}", "--timeout", str(timeout)] + (["--floats-as-reals"] if reals else [])
    env = {"PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True,
                          timeout=timeout + 120)
    answer = (done.stdout.split() or ["(none)"])[0]
    summary = " ".join(done.stderr.strip().splitlines()[-1:])[:160]
    return answer, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="154fb73")
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--solve", action="store_true")
    parser.add_argument("--solve-timeout", type=float, default=120.0)
    args = parser.parse_args()
    single_thread()
    base = base_module(args.base)
    rng = np.random.default_rng(0)
    rows = []
    for name, (model, prop) in NETWORKS.items():
        model, prop = DATA / model, DATA / prop
        lower, upper = float_rounding.query_hull(load_vnnlib(prop))
        before, t_before = timed_bound(base, model, lower, upper)
        after, t_after = timed_bound(float_rounding, model, lower, upper)
        assert np.all(after <= before * (1 + 1e-9)), (name, before, after)
        seen = observed_deviation(model, lower, upper, after, args.points, rng)
        assert np.all(seen <= after), (name, seen, after)
        rows.append((name, before, after, seen, t_before, t_after))
        print(f"{name}: max bound {before.max():.3g} -> {after.max():.3g}, observed "
              f"{seen.max():.3g}, looseness median {np.median(before / seen):.3g} -> "
              f"{np.median(after / seen):.3g} ({t_before:.1f} s / {t_after:.1f} s CPU)",
              flush=True)

    def spread(ratio):
        return f"{np.median(ratio):.2g} ({ratio.min():.2g} - {ratio.max():.2g})"

    lines = [f"# float32 evaluation-error bound: tightness (verify.float_rounding)", "",
             f"Machine: {machine()}", "", SHARED_NOTE, "",
             f"Generated by `python benchmarks/float_rounding_tightness.py --base {args.base} "
             f"--points {args.points}{' --solve' if args.solve else ''}`. Per network, over the "
             "input box of one property: the bound E >= |N_fl32(x) - N(x)| per output of the "
             f"module at {args.base} (before: the forward walk alone, IBP intervals beyond 500k "
             "multiply-adds) and of this tree (after: the backward error pass, CROWN intervals "
             "up to 5M), and the largest deviation |onnxruntime float32 - float64 forward| "
             f"observed over {args.points} random points and corners of the box plus a "
             "hill-climb towards the bound. looseness = bound / observed per output: median "
             "(min - max) over the outputs. The observed deviation is below the true worst "
             "case, so these overstate the looseness. CPU s: process CPU time of one bound "
             "(torch on 1 thread), before / after.", "",
             "| network, property box | max bound before | max bound after | max observed | "
             "looseness before | looseness after | CPU s |", "|---|---|---|---|---|---|---|"]
    for name, before, after, seen, t_before, t_after in rows:
        lines.append(f"| {name} | {before.max():.3g} | {after.max():.3g} | {seen.max():.3g} | "
                     f"{spread(before / seen)} | {spread(after / seen)} | "
                     f"{t_before:.2f} / {t_after:.2f} |")
    lines += chain_section(base, args.base)
    if args.solve:
        lines += solve_section(args)
    lines.append(NOTES.rstrip())
    path = RESULTS / "float_rounding_tightness.md"
    write_text_atomically(path, "\n".join(lines) + "\n")
    print(f"wrote {path}")


def chain_section(base, ref: str) -> list[str]:
    """Every bundled ACAS Xu and mnist_fc instance (Dense/ReLU chains): the largest bound per
    instance after / before, and that no output's bound grew."""
    import csv

    from verify.bounds import graph

    out = ["", "## Chains: every bundled ACAS Xu and mnist_fc instance", "",
           f"Largest bound per instance, this tree / {ref}, over the instance's box (no output's "
           "bound grew on any instance: checked).", "",
           "| benchmark | instances | ratio median | ratio min | ratio max |",
           "|---|---|---|---|---|"]
    for folder in ("acasxu", "mnist_fc"):
        ratios = []
        with open(DATA / folder / "instances.csv") as handle:
            for model, prop, _ in csv.reader(handle):
                lower, upper = float_rounding.query_hull(load_vnnlib(DATA / folder / prop))
                bounds = []
                for module in (base, float_rounding):
                    graph._LAST_BOUNDS.clear()
                    bounds.append(module.evaluation_error(DATA / folder / model, lower, upper))
                assert np.all(bounds[1] <= bounds[0] * (1 + 1e-9)), (model, prop, bounds)
                ratios.append(bounds[1].max() / bounds[0].max())
        r = np.array(ratios)
        out.append(f"| {folder} | {len(r)} | {np.median(r):.3g} | {r.min():.3g} | {r.max():.3g} |")
        print(out[-1], flush=True)
    return out


def solve_section(args) -> list[str]:
    """verify-solver on the ResNet instances declared float32, both trees side by side."""
    out = ["", f"## float32 queries on cifar10_resnet (verify-solver, --timeout "
           f"{args.solve_timeout:g})", "",
           "Each 1.0 instance rewritten as a VNN-LIB 2.0 query declaring X and Y float32 (the "
           "same box and disjunction): answered in float32 semantics by default. The real-"
           "arithmetic answer of this tree (--floats-as-reals) for reference.", "",
           f"| instance | reals (this tree) | float32 before ({args.base}) | float32 after |",
           "|---|---|---|---|"]
    scratch = Path(tempfile.mkdtemp(prefix="float-solve-"))
    worktree = scratch / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.base], cwd=REPO,
                   check=True, capture_output=True)
    try:
        for net, prop in SOLVE:
            model = DATA / CIFAR / "onnx" / f"{net}.onnx"
            query = scratch / f"{net}_{prop}.vnnlib"
            float32_query(DATA / CIFAR / "vnnlib" / f"{prop}.vnnlib", query)
            reals = solve(REPO, model, query, args.solve_timeout, reals=True)
            before = solve(worktree, model, query, args.solve_timeout)
            after = solve(REPO, model, query, args.solve_timeout)
            print(f"{net} {prop}: reals {reals}, before {before}, after {after}", flush=True)
            out.append(f"| {net} {prop} | {reals[0]} | {before[0]} | {after[0]} "
                       f"({after[1].split('(', 1)[-1].rstrip(')')}) |")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO,
                       capture_output=True)
    return out


if __name__ == "__main__":
    main()
