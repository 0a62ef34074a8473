"""This tree against an earlier commit on VNN-COMP instances, side by side in one run.

    python benchmarks/side_by_side.py --base REF [--bench acasxu mnist_fc] [--timeout-cap 30]
                                      [--limit N] [--every K [K ...]] [--out NAME.md]

Each instance is solved as a user solves it: `python -m verify vnnlib MODEL PROPERTY --timeout T`
in a fresh process (start-up, loading and default settings included), once with this tree's code
and once with REF's (a temporary `git worktree`), the order alternating from one instance to the
next so that a busy neighbour weighs on both alike. `--every` takes one K for all benchmarks or
one per benchmark. Prints and writes benchmarks/results/<--out> (default side_by_side.md): per
benchmark, solved and wrong counts of each, the median wall time of each and the median and
geometric mean of the per-instance ratio (this / base), then one row per instance. Besides wall
time, the CPU time (user + system) of each process is recorded: on a shared machine it moves less
with the neighbours' load than wall time does.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "data"
RESULTS = REPO / "benchmarks" / "results"


def _instances(bench: Path, limit: int | None, every: int) -> list[tuple[Path, Path, float, str]]:
    """(onnx, vnnlib, timeout, expected answer) per row of instances.csv, every `every`-th row."""
    expected = {}
    truth = bench / "ground_truth.csv"
    if truth.is_file():
        with open(truth) as fh:
            for row in csv.DictReader(fh):
                expected[(row["network"], row["property"])] = row["ground_truth"]
    rows = []
    with open(bench / "instances.csv") as fh:
        for k, (onnx, prop, timeout) in enumerate(csv.reader(fh)):
            if k % every:
                continue
            key = (Path(onnx).name.removesuffix(".onnx").removesuffix("_batch_2000"),
                   Path(prop).name.removesuffix(".vnnlib"))
            rows.append((bench / onnx, bench / prop, float(timeout), expected.get(key, "")))
    return rows[:limit]


def _children_cpu() -> float:
    """User + system CPU seconds of the waited-for child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _solve(tree: Path, onnx: Path, prop: Path, timeout: float) -> tuple[str, float, float]:
    """(first word of the answer, wall seconds, CPU seconds) of one fresh `verify vnnlib` process
    on `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cpu = _children_cpu()
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "verify", "vnnlib", str(onnx), str(prop),
                               "--timeout", f"{timeout:g}"], env=env, cwd=tree,
                              capture_output=True, text=True, timeout=timeout + 120)
    except subprocess.TimeoutExpired:  # killed, not waited for: its CPU time is not counted
        return "killed", time.perf_counter() - start, math.nan
    wall = time.perf_counter() - start
    words = done.stdout.split()
    answer = words[0] if done.returncode == 0 and words else f"error({done.returncode})"
    return answer, wall, _children_cpu() - cpu


def _ratio_line(this: list[float], base: list[float]) -> str:
    """'median this / median base | median ratio, geometric-mean ratio' of paired times."""
    pairs = [(t, b) for t, b in zip(this, base) if t > 0 and b > 0]  # NaN compares False
    ratios = [t / b for t, b in pairs]
    geo = math.exp(statistics.fmean(math.log(r) for r in ratios))
    return (f"{statistics.median(t for t, _ in pairs):.2f} / "
            f"{statistics.median(b for _, b in pairs):.2f} | "
            f"{statistics.median(ratios):.2f}, {geo:.2f}")


def _wrong(answer: str, expected: str) -> bool:
    return answer in ("sat", "unsat") and expected in ("sat", "unsat") and answer != expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git commit or branch to compare against")
    parser.add_argument("--bench", nargs="+", default=["acasxu", "mnist_fc"])
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding the benchmarks")
    parser.add_argument("--timeout-cap", type=float, default=30.0)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--every", type=int, nargs="+", default=[1],
                        help="take every K-th instance: one K, or one per benchmark")
    parser.add_argument("--out", default="side_by_side.md", help="file name in benchmarks/results")
    args = parser.parse_args()
    if len(args.every) not in (1, len(args.bench)):
        parser.error(f"--every: give one K or {len(args.bench)} (one per benchmark), "
                     f"not {len(args.every)}")
    every = dict(zip(args.bench, args.every * len(args.bench) if len(args.every) == 1
                     else args.every))
    base_sha = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout.strip()
    head_sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout.strip()
    lines = [f"# Side by side: this tree ({head_sha}, working tree) against {base_sha}",
             "", f"`python benchmarks/side_by_side.py --base {args.base} --bench "
             f"{' '.join(args.bench)} --timeout-cap {args.timeout_cap:g} --every "
             f"{' '.join(map(str, args.every))}"
             f"{f' --limit {args.limit}' if args.limit is not None else ''}`; "
             "each instance in fresh processes (start-up included), the order alternating; "
             f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}.", "",
             "| benchmark | instances | solved (this / base) | wrong (this / base) | "
             "median wall s (this / base) | wall ratio this/base: median, geometric mean | "
             "median CPU s (this / base) | CPU ratio: median, geometric mean |",
             "|---|---|---|---|---|---|---|---|"]
    per_instance = ["", "| benchmark | network | property | expected | this: answer, wall s, "
                    "CPU s | base: answer, wall s, CPU s | wall ratio | CPU ratio |",
                    "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base],
                       cwd=REPO, check=True, capture_output=True)
        try:
            for bench in args.bench:
                rows = _instances(args.data / bench, args.limit, every[bench])
                answers: dict[str, list] = {"this": [], "base": []}
                for k, (onnx, prop, timeout, expected) in enumerate(rows):
                    timeout = min(timeout, args.timeout_cap)
                    order = [("this", REPO), ("base", base_tree)]
                    for name, tree in (order if k % 2 == 0 else order[::-1]):
                        answers[name].append(_solve(tree, onnx, prop, timeout) + (expected,))
                    (a, ta, ca, _), (b, tb, cb, _) = answers["this"][-1], answers["base"][-1]
                    print(f"{bench} {onnx.name} {prop.name}: this {a} {ta:.2f} s (CPU {ca:.2f}), "
                          f"base {b} {tb:.2f} s (CPU {cb:.2f}) (expected {expected or '?'})",
                          flush=True)
                    per_instance.append(f"| {bench} | {onnx.name} | {prop.name} | "
                                        f"{expected or '?'} | {a}, {ta:.2f}, {ca:.2f} | "
                                        f"{b}, {tb:.2f}, {cb:.2f} | {ta / tb:.2f} | "
                                        f"{ca / cb:.2f} |")
                solved = {n: sum(r[0] in ("sat", "unsat") for r in v) for n, v in answers.items()}
                wrong = {n: sum(_wrong(r[0], r[3]) for r in v) for n, v in answers.items()}
                wall, cpu = ([[r[i] for r in answers[n]] for n in ("this", "base")] for i in (1, 2))
                lines.append(f"| {bench} | {len(rows)} | {solved['this']} / {solved['base']} | "
                             f"{wrong['this']} / {wrong['base']} | {_ratio_line(*wall)} | "
                             f"{_ratio_line(*cpu)} |")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO,
                           capture_output=True)
    text = "\n".join(lines + per_instance) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
