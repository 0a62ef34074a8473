"""MILP on graph networks: VNN-COMP 2021 verivital (Conv - Relu - MaxPool / AveragePool - Gemm).

    python benchmarks/graph_milp_verivital.py [--cap 30] [--per-network 5]

Runs `verify.vnncomp.solve_files` with method milp, and with crown side by side, on the first
--per-network instances of each network plus every instance whose ground truth is sat, each capped
at --cap seconds (loading included). Scores against ground_truth.csv (a wrong answer is one that
contradicts it). Writes benchmarks/results/graph_milp_verivital.md.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.reporting import machine  # noqa: E402
from verify.vnncomp import solve_files  # noqa: E402

DATA = REPO / "benchmarks" / "data" / "vnncomp2021" / "verivital"
RESULTS = REPO / "benchmarks" / "results"


def folder() -> Path:
    if not (DATA / "onnx").is_dir():
        raise SystemExit(f"verivital benchmark files not found in {DATA}")
    return DATA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=30.0)
    parser.add_argument("--per-network", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=["crown", "milp"])
    args = parser.parse_args()
    root = folder()
    with open(root / "ground_truth.csv") as fh:
        truth = {(r["network"], r["property"]): r["ground_truth"] for r in csv.DictReader(fh)}
    with open(root / "instances.csv") as fh:
        instances = [r for r in csv.reader(fh) if r]
    chosen, taken = [], {}
    for onnx_rel, prop_rel, _ in instances:
        key = (Path(onnx_rel).stem, Path(prop_rel).stem)
        taken.setdefault(key[0], 0)
        if taken[key[0]] < args.per_network or truth.get(key) == "sat":
            taken[key[0]] += 1
            chosen.append((onnx_rel, prop_rel, key))
    rows = []
    for onnx_rel, prop_rel, key in chosen:
        row = {"network": key[0], "property": key[1], "truth": truth.get(key, "?")}
        for method in args.methods:
            result = solve_files(str(root / onnx_rel), str(root / prop_rel), method, args.cap,
                                 threads=1)
            answer = result.result if result.time_s <= args.cap else "timeout"
            row[method] = (answer, result.time_s)
            print(key, method, answer, f"{result.time_s:.1f}s", result.reason[:120], flush=True)
        rows.append(row)
    lines = [f"# MILP on graph networks: VNN-COMP 2021 verivital, {len(rows)} instances, "
             f"cap {args.cap:g} s each (loading included)\n",
             f"Machine: {machine()}. Instances: the first {args.per_network} of each network and "
             "every sat one. `python benchmarks/graph_milp_verivital.py`.\n",
             "| method | solved | correct | wrong | median time (s) |", "|---|---|---|---|---|"]
    for method in args.methods:
        answers = [(r[method][0], r["truth"], r[method][1]) for r in rows]
        solved = [a for a in answers if a[0] in ("sat", "unsat")]
        lines.append(f"| {method} | {len(solved)} | {sum(a == t for a, t, _ in solved)} | "
                     f"{sum(a != t for a, t, _ in solved)} | "
                     f"{statistics.median(s for _, _, s in answers):.1f} |")
    lines += ["", "| network | property | truth | " + " | ".join(args.methods) + " |",
              "|---|---|---|" + "---|" * len(args.methods)]
    for r in rows:
        cells = " | ".join(f"{r[m][0]} ({r[m][1]:.1f} s)" for m in args.methods)
        lines.append(f"| {r['network']} | {r['property']} | {r['truth']} | {cells} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "graph_milp_verivital.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
