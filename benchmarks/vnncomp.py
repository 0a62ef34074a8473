"""VNN-COMP benchmarks with known answers, scored the competition's way.

    python benchmarks/vnncomp.py [--bench acasxu mnist_fc] [--timeout-cap 30] [--limit N]

Runs `verify vnncomp` (method auto) on benchmarks/data/<bench>/instances.csv, loading time
included, each instance capped at --timeout-cap seconds (an answer that comes after it counts as
a timeout; the CSV's reason column keeps it) (the competition's own timeouts are
116-120 s). Writes benchmarks/results/vnncomp_<bench>.csv (instance, result, time) and .md (counts,
score, wrong answers, median times next to the competition tools' medians on the same instances,
which ran on many-core machines with GPUs and include their start-up).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from verify.vnncomp import run_instances, summary, write_results  # noqa: E402
from benchmarks.reporting import machine  # noqa: E402

BENCHMARK_DATA = REPO / "benchmarks" / "data"
RESULTS = REPO / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", nargs="+", default=["acasxu", "mnist_fc"])
    parser.add_argument("--timeout-cap", type=float, default=None,
                        help="cap each instance's timeout (default: its own VNN-COMP timeout)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per instance (default: verify.threads' policy)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for bench in args.bench:
        instances = BENCHMARK_DATA / bench / "instances.csv"
        if not instances.is_file():
            print(f"skip {bench}: {instances} not found")
            continue
        rows = run_instances(str(instances), "auto", args.timeout_cap, limit=args.limit,
                             threads=args.threads)  # a result after its timeout: a timeout
        write_results(rows, str(RESULTS / f"vnncomp_{bench}.csv"))
        text = summary(rows)
        by_prop: dict[str, list] = {}
        for r in rows:
            by_prop.setdefault(r.property if bench == "acasxu" else "all", []).append(r)
        table = ["| property | instances | solved | wrong | median time (s) |", "|---|---|---|---|---|"]
        for prop, group in sorted(by_prop.items()):
            table.append(f"| {prop} | {len(group)} | "
                         f"{sum(r.result in ('sat', 'unsat') for r in group)} | "
                         f"{sum(r.score < 0 for r in group)} | "
                         f"{statistics.median(r.time_s for r in group):.2f} |")
        limit = "its own VNN-COMP timeout" if args.timeout_cap is None else \
            f"min(its timeout, {args.timeout_cap:g} s)"
        md = (f"# VNN-COMP {bench}: method auto, each instance under {limit}\n\n"
              f"Machine: {machine()}\n\n```\n{text}\n```\n\n" + "\n".join(table) + "\n")
        (RESULTS / f"vnncomp_{bench}.md").write_text(md)
        print(md)


if __name__ == "__main__":
    main()
