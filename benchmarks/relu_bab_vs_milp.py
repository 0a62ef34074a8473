"""relu-bab against the MILP and `auto` on VNN-COMP mnist_fc (mnist-net_256x2, 30 instances).

    python benchmarks/relu_bab_vs_milp.py [--timeout 30] [--methods relu-bab milp auto]
        [--benchmarks benchmarks/data] [--limit N]

Each instance is solved by each method back to back in one process (the network loaded once; its
loading and the first call's imports are not timed), through `verify.vnncomp.solve` with the same
capped timeout (VNN-COMP's is 120 s; the cap is stated in the table). Counted per method: solved
(sat or unsat agreeing with the ground truth), wrong (disagreeing: must be 0), unsolved (timeout
or unknown), and the median time over solved instances; beside it alpha-beta-CROWN's 2022 times
from the ground-truth file (their machine: many cores and a GPU, start-up included). One torch
thread. Writes benchmarks/results/relu_bab_vs_milp.csv and .md.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.reporting import RESULTS, SHARED_NOTE, machine, single_thread  # noqa: E402
from verify import load_onnx  # noqa: E402
from verify.vnncomp import solve  # noqa: E402
from verify.vnnlib import load_vnnlib  # noqa: E402


def verivital_note(benchmarks: Path) -> str:
    """Whether the VNN-COMP 2021 verivital networks load; not run here when they are refused."""
    from verify.errors import VerifyError

    folder = benchmarks / "vnncomp2021" / "verivital" / "onnx"
    if not folder.is_dir():
        return f"not found at {folder}."
    refused = []
    for path in sorted(folder.glob("*.onnx")):
        try:
            load_onnx(path)
        except VerifyError as exc:
            refused.append(f"{path.stem} ({str(exc).split(': ', 1)[-1].split(';')[0]})")
    if refused:
        return "skipped, the loader refuses " + ", ".join(refused) + \
            " (pooling layers: the graph IR of another issue)."
    return "the networks load; run them with benchmarks/vnncomp.py --method relu-bab."


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--methods", nargs="+", default=["relu-bab", "milp", "auto"])
    parser.add_argument("--benchmarks", type=Path, default=REPO / "benchmarks" / "data")
    parser.add_argument("--limit", type=int, default=0, help="first N instances only")
    args = parser.parse_args(argv)
    single_thread()
    root = args.benchmarks / "mnist_fc"
    if not (root / "instances.csv").is_file():
        print(f"error: no mnist_fc benchmark at {root} (use --benchmarks)", file=sys.stderr)
        return 2
    with open(root / "ground_truth.csv") as f:
        truth = {row["property"]: row for row in csv.DictReader(f)}
    with open(root / "instances.csv") as f:
        instances = [row for row in csv.reader(f) if row]
    if args.limit:
        instances = instances[:args.limit]
    nets = {}
    rows = []
    warm = True
    for onnx_path, vnnlib_path, _ in instances:
        net = nets.setdefault(onnx_path, load_onnx(root / onnx_path))
        prop = Path(vnnlib_path).stem
        query = load_vnnlib(root / vnnlib_path)
        if warm:  # first-call imports (HiGHS, torch autograd) outside the timings
            for method in args.methods:
                solve(net, query, method, timeout=1.0)
            warm = False
        expected = truth[prop]["ground_truth"]
        for method in args.methods:
            t0 = time.perf_counter()
            result = solve(net, query, method, timeout=args.timeout)
            elapsed = time.perf_counter() - t0
            verdict = result.result
            outcome = ("solved" if verdict == expected else "wrong") \
                if verdict in ("sat", "unsat") else "unsolved"
            rows.append({"property": prop, "truth": expected, "method": method,
                         "result": verdict, "outcome": outcome, "time_s": round(elapsed, 3),
                         "via": result.method})
            print(f"{prop:14s} {expected:5s} {method:9s} {verdict:8s} {elapsed:6.1f}s "
                  f"{result.method}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "relu_bab_vs_milp.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# relu-bab vs milp vs auto on mnist_fc (mnist-net_256x2)", "", machine(), "",
             f"{len(instances)} instances, timeout capped at {args.timeout:g} s (VNN-COMP: 120 s), "
             "one torch thread, each instance solved by every method back to back. "
             + SHARED_NOTE, "",
             "| method | solved | sat | unsat | wrong | unsolved | median s (solved) |",
             "|---|---|---|---|---|---|---|"]
    for method in args.methods:
        mine = [r for r in rows if r["method"] == method]
        solved = [r for r in mine if r["outcome"] == "solved"]
        median = statistics.median(r["time_s"] for r in solved) if solved else float("nan")
        lines.append(f"| {method} | {len(solved)} | "
                     f"{sum(r['result'] == 'sat' for r in solved)} | "
                     f"{sum(r['result'] == 'unsat' for r in solved)} | "
                     f"{sum(r['outcome'] == 'wrong' for r in mine)} | "
                     f"{sum(r['outcome'] == 'unsolved' for r in mine)} | {median:.2f} |")
    abc = [float(truth[Path(v).stem]["alpha_beta_crown_2022"].split(":")[1])
           for _, v, _ in instances if ":" in truth[Path(v).stem]["alpha_beta_crown_2022"]]
    lines += ["", f"alpha-beta-CROWN (VNN-COMP 2022, their hardware, start-up included): "
              f"{len(abc)} solved, median {statistics.median(abc):.2f} s.", "",
              "Per instance: benchmarks/results/relu_bab_vs_milp.csv.", "",
              "VNN-COMP 2021 verivital: " + verivital_note(args.benchmarks)]
    (RESULTS / "relu_bab_vs_milp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
