"""auto's graph plans with and without their first stage, CROWN, side by side on VNN-COMP 2021.

    python benchmarks/auto_plans_ab.py [--bench cifar10_resnet verivital] [--timeout-cap 60]
                                       [--stride K] [--threads 1]

For each instance with a known answer (sat / unsat in ground_truth.csv; every STRIDE-th), runs
`verify.vnncomp.solve_files` (method auto, loading included, capped at --timeout-cap seconds)
twice, back to back in alternating order: with the plans as they are (`GRAPH_AUTO_STAGES`,
`NO_MILP_STAGES`, `ONE_RELU_LAYER_STAGES`: CROWN first) and with the CROWN stage taken out.
Writes benchmarks/results/auto_plans_ab.md: per network and plan the solved and wrong counts and
the median time of the solved, the median per-instance time ratio, and every instance's rows.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from verify import vnncomp  # noqa: E402
from benchmarks.reporting import SHARED_NOTE, machine  # noqa: E402

DATA = REPO / "benchmarks" / "data" / "vnncomp2021"
RESULTS = REPO / "benchmarks" / "results"
PLANS = ("GRAPH_AUTO_STAGES", "NO_MILP_STAGES", "ONE_RELU_LAYER_STAGES")


def without_crown(plan: tuple) -> tuple:
    return tuple((step, share) for step, share in plan if step != "crown")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", nargs="+", default=["cifar10_resnet", "verivital"])
    parser.add_argument("--timeout-cap", type=float, default=60.0)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    variants = {"crown first": {name: getattr(vnncomp, name) for name in PLANS}}
    variants["no crown stage"] = {name: without_crown(plan)
                                  for name, plan in variants["crown first"].items()}
    load_start = os.getloadavg()[0]
    records = []  # (bench, network, property, expected, variant, result, stage, seconds)
    for bench in args.bench:
        folder = DATA / bench
        truth = {(r["network"], r["property"]): r["ground_truth"]
                 for r in csv.DictReader(open(folder / "ground_truth.csv"))}
        rows = [r for r in csv.reader(open(folder / "instances.csv")) if r][::args.stride]
        for k, (onnx_rel, prop_rel, timeout) in enumerate(rows):
            key = (Path(onnx_rel).stem, Path(prop_rel).stem)
            if truth.get(key) not in ("sat", "unsat"):
                continue
            order = list(variants) if k % 2 == 0 else list(reversed(variants))
            for name in order:
                for plan, stages in variants[name].items():
                    setattr(vnncomp, plan, stages)
                cap = min(float(timeout), args.timeout_cap)
                result = vnncomp.solve_files(str(folder / onnx_rel), str(folder / prop_rel),
                                             "auto", cap, threads=args.threads)
                result = vnncomp.late_as_timeout(result, cap)
                records.append((bench, *key, truth[key], name, result.result, result.method,
                                result.time_s))
                print(f"{bench} {key[0]} {key[1]} ({truth[key]}) {name}: {result.result} "
                      f"{result.method} {result.time_s:.1f}s", flush=True)
    for name, stages in variants["crown first"].items():  # as they were
        setattr(vnncomp, name, stages)
    summary = ["| network | plan | instances | solved | wrong | median time of the solved (s) |",
               "|---|---|---|---|---|---|"]
    ratios_lines = []
    for network in dict.fromkeys(r[1] for r in records):
        mine = [r for r in records if r[1] == network]
        for name in variants:
            runs = [r for r in mine if r[4] == name]
            solved = [r[7] for r in runs if r[5] in ("sat", "unsat")]
            wrong = sum(r[5] in ("sat", "unsat") and r[5] != r[3] for r in runs)
            summary.append(f"| {network} | {name} | {len(runs)} | {len(solved)} | {wrong} | "
                           f"{statistics.median(solved) if solved else float('nan'):.1f} |")
        pairs = {}
        for r in mine:
            pairs.setdefault(r[2], {})[r[4]] = r
        both = [p for p in pairs.values() if all(p[n][5] in ("sat", "unsat") for n in variants)]
        if both:
            ratio = statistics.median(p["crown first"][7] / p["no crown stage"][7] for p in both)
            ratios_lines.append(f"- {network}: median per-instance time ratio crown first / no "
                                f"crown stage {ratio:.2f} over the {len(both)} instances both "
                                "solved")
    table = ["| network | property | expected | plan | result | stage | time (s) |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {r[6]} | {r[7]:.1f} |"
              for r in records]
    stride = f", one instance in {args.stride}" if args.stride > 1 else ""
    md = (f"# auto's graph plans with and without the CROWN stage: VNN-COMP 2021 "
          f"{', '.join(args.bench)}, instances with a known answer{stride}, each capped at "
          f"{args.timeout_cap:g} s\n\nMachine: {machine()}\n\n{SHARED_NOTE} Load average (1 min) "
          f"at the start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f}. Both plans run "
          "back to back on each instance, in alternating order. "
          "`python benchmarks/auto_plans_ab.py`.\n\n" + "\n".join(summary) + "\n\n"
          + "\n".join(ratios_lines) + "\n\n" + "\n".join(table) + "\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "auto_plans_ab.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
