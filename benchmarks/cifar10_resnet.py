"""VNN-COMP 2021 cifar10_resnet (residual CNNs, graph networks) with method auto, beside 2021 tools.

    python benchmarks/cifar10_resnet.py [--timeout-cap 60] [--bench cifar10_resnet verivital]
                                        [--limit N] [--stride K] [--threads 1]

Runs `verify vnncomp` (auto: attack -> alpha-CROWN -> relu-bab -> MILP on graph networks) on
benchmarks/data/vnncomp2021/<bench>/instances.csv, loading included, each instance capped at
--timeout-cap seconds (their own timeouts are 300-420 s; an answer after the cap counts as a
timeout). Writes benchmarks/results/vnncomp2021_<bench>.csv and .md (another cap than 60 s:
vnncomp2021_<bench>_<cap>s.*): solved counts, wrong answers, medians, the stage that decided each instance, and how many of the same instances each
2021 tool solved (its own hardware and timeout), plus the full-benchmark counts of issue 16.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from verify.vnncomp import run_instances, summary, write_results  # noqa: E402
from benchmarks.reporting import SHARED_NOTE, machine  # noqa: E402

DATA = REPO / "benchmarks" / "data" / "vnncomp2021"
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_CAP = 60.0
# VNN-COMP 2021 solved counts on the whole benchmarks (issue 16; the report arXiv:2109.00498).
FULL_COUNTS = {"cifar10_resnet": "72 instances: alpha-beta-CROWN 58, VeriNet 49, ERAN 44",
               "verivital": "60 instances: alpha-beta-CROWN 60, ERAN 59"}


def tool_counts(rows) -> list[str]:
    """Per 2021 tool: instances of these rows it answered correctly (sat/unsat = ground truth)."""
    counts = {}
    for r in rows:
        for tool, value in r.reference.items():
            answer = value.split(":")[0] if value else ""
            counts.setdefault(tool, 0)
            counts[tool] += answer in ("sat", "unsat") and answer == r.expected
    return [f"{tool.replace('_2021', '')} {n}" for tool, n in
            sorted(counts.items(), key=lambda kv: -kv[1]) if n > 0]


def previous_run(path: Path) -> tuple[str, dict[tuple[str, str], str]]:
    """From an earlier results CSV (the file this run replaces): its solved count and median of
    the solved, and per (network, property) its 'result (time s)'; ('', {}) when there is none."""
    if not path.exists():
        return "", {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    solved = [float(r["time_s"]) for r in rows if r["result"] in ("sat", "unsat")]
    median = f"{statistics.median(solved):.1f} s" if solved else "-"
    each = {(r["network"], r["property"]): f"{r['result']} ({float(r['time_s']):.1f})"
            for r in rows}
    return f"solved {len(solved)} of {len(rows)}, median time of the solved {median}", each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", nargs="+", default=["cifar10_resnet"])
    parser.add_argument("--timeout-cap", type=float, default=DEFAULT_CAP)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stride", type=int, default=1,
                        help="run every STRIDE-th instance only (a quicker regression check)")
    parser.add_argument("--note", default="",
                        help="a line on the run's conditions for the .md (e.g. the machine's load)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for bench in args.bench:
        # a cap other than the default keeps its own files (vnncomp2021_<bench>_300s.md)
        stem = f"vnncomp2021_{bench}" + ("" if args.timeout_cap == DEFAULT_CAP else
                                         f"_{args.timeout_cap:g}s")
        before, before_each = previous_run(RESULTS / f"{stem}.csv")
        load_start = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            instances = DATA / bench / "instances.csv"
            if args.stride > 1:  # the chosen rows, with absolute paths, beside the ground truth
                folder = Path(tmp)
                shutil.copy(DATA / bench / "ground_truth.csv", folder / "ground_truth.csv")
                rows_in = [r for r in csv.reader(open(instances)) if r][::args.stride]
                with open(folder / "instances.csv", "w", newline="") as fh:
                    csv.writer(fh).writerows([[str(DATA / bench / r[0]), str(DATA / bench / r[1]),
                                               r[2]] for r in rows_in])
                instances = folder / "instances.csv"
            rows = run_instances(str(instances), "auto", args.timeout_cap, limit=args.limit,
                                 threads=args.threads)
        load_end = os.getloadavg()[0]
        write_results(rows, str(RESULTS / f"{stem}.csv"))
        solved = [r for r in rows if r.result in ("sat", "unsat")]
        decidable = [r for r in rows if r.expected in ("sat", "unsat")]
        table = ["| network | property | expected | result | stage | time (s) | replaced file |",
                 "|---|---|---|---|---|---|---|"]
        for r in rows:
            table.append(f"| {r.network} | {r.property} | {r.expected} | {r.result} | "
                         f"{r.method} | {r.time_s:.1f} | "
                         f"{before_each.get((r.network, r.property), '-')} |")
        per_network = ["| network | instances | solved | wrong | median time of the solved (s) |",
                       "|---|---|---|---|---|"]
        for network in dict.fromkeys(r.network for r in rows):
            group = [r for r in rows if r.network == network]
            times = [r.time_s for r in group if r.result in ("sat", "unsat")]
            per_network.append(f"| {network} | {len(group)} | {len(times)} | "
                               f"{sum(r.score < 0 for r in group)} | "
                               f"{statistics.median(times) if times else float('nan'):.1f} |")
        stages: dict[str, int] = {}
        for r in solved:
            stages[r.method] = stages.get(r.method, 0) + 1
        subset = f", one instance in {args.stride}" if args.stride > 1 else ""
        md = (f"# VNN-COMP 2021 {bench}: method auto, each instance capped at "
              f"{args.timeout_cap:g} s{subset}\n\nMachine: {machine()}; load average "
              f"(1 min) {load_start:.1f} at the start, {load_end:.1f} at the end"
              f"{'; ' + args.note if args.note else ''}\n\n{SHARED_NOTE}\n\n"
              + (f"The results file this run replaced: {before}.\n\n" if before else "")
              + f"Solved {len(solved)} of {len(rows)} ({len(decidable)} with a known answer), "
              f"wrong {sum(r.score < 0 for r in rows)}; median time of the solved "
              f"{statistics.median(r.time_s for r in solved) if solved else float('nan'):.1f} s; "
              f"decided by: {', '.join(f'{k} {v}' for k, v in sorted(stages.items()))}.\n\n"
              f"2021 tools on these {len(rows)} instances (their hardware, timeouts "
              f"300-420 s): {', '.join(tool_counts(rows))}.\n"
              f"2021 tools on the whole benchmark: {FULL_COUNTS.get(bench, '-')}.\n\n"
              f"```\n{summary(rows)}\n```\n\n" + "\n".join(per_network) + "\n\n"
              + "\n".join(table) + "\n")
        (RESULTS / f"{stem}.md").write_text(md)
        print(md)


if __name__ == "__main__":
    main()
