"""MILP speed: `verify.certify(..., method="milp")` against a naive MILP, interleaved in one run.

    python benchmarks/milp_speed.py [--n 20] [--eps 0.05 0.02] [--threads 1] [--naive-cap 300]
    python benchmarks/milp_speed.py --report-only     # rewrite the .md from the last .csv

Naive: IBP neuron bounds, the same big-M model (`relu_encoding.BIG_M`, stable neurons linear, as
any presolve makes them), HiGHS's default settings, every one of the 9 margin rows solved to
optimality (no LP screen, no attack, no stop on the sign); its verdict from the exact minima and
the replayed incumbents. milp: the default options (IBP ∩ CROWN bounds, LP screen, PGD attack,
sign stop). For each input the two run back to back, so both see the same machine load; the
ratio is median(naive) / median(milp) per eps. The verdicts must agree. A naive run longer than
--naive-cap seconds is cut off (its time then understates the naive cost, and the ratio is a
lower bound; the table says so). The table also gives the ratio over the inputs where milp
needed at least one MILP (the others are settled by CROWN bounds + the LP screen, or the attack).

Inputs: the first --n test digits of the bundled model (models/digits_mlp.onnx), l_inf balls
∩ [0, 1]. Writes benchmarks/results/milp_speed.csv and .md.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import highspy  # noqa: E402

import verify  # noqa: E402
from verify.bounds.lp import neuron_bounds  # noqa: E402
from verify.bounds.highs_session import set_objective, to_highs  # noqa: E402
from verify.bounds.relu_encoding import BIG_M, build_program  # noqa: E402
from verify.verdict import certificate_from_bounds  # noqa: E402
from benchmarks.reporting import machine  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def naive_milp(net: verify.Network, spec: verify.Specification, cap: float
               ) -> tuple[str, float, int]:
    """(status, seconds, B&B nodes): IBP bounds, HiGHS defaults, every row to optimality."""
    t0 = time.perf_counter()
    bounds, _ = neuron_bounds(net, spec, "ibp")
    program = build_program(net, spec.input_set, bounds, BIG_M)
    highs = to_highs(program)
    lower, candidates, nodes, capped = [], [], 0, False
    for c, d in zip(spec.output.C, spec.output.d):
        cost, offset, _ = program.objective(c, d)
        set_objective(highs, cost, offset)
        highs.setOptionValue("time_limit", max(cap - (time.perf_counter() - t0), 1e-3))
        highs.run()
        info = highs.getInfo()
        capped |= highs.getModelStatus() != highspy.HighsModelStatus.kOptimal
        nodes += max(int(info.mip_node_count), 0)
        lower.append(info.mip_dual_bound)
        if info.primal_solution_status == 2:
            candidates.append(np.asarray(highs.getSolution().col_value)[program.input_cols])
    tolerance = float(highs.getOptionValue("mip_feasibility_tolerance")[1])
    cert = certificate_from_bounds(net, spec, "naive-milp", np.array(lower), candidates=candidates,
                                   yes_tolerance=tolerance)
    status = "CAPPED" if capped and cert.status is verify.Status.MAYBE else cert.status.value
    return status, time.perf_counter() - t0, nodes


def write_report(rows: list[dict], args) -> list[str]:
    """benchmarks/results/milp_speed.md from the per-input rows; returns the summary lines."""
    n = len({r["input"] for r in rows})
    lines = ["# MILP speed: milp (default options) against a naive MILP",
             "",
             f"Bundled digits MLP (64-50-50-10), first {n} test inputs, l_inf ∩ [0, 1]; "
             f"torch threads {args.threads}, HiGHS MIP single-threaded. Naive: IBP bounds, all 9 "
             "rows to optimality with HiGHS defaults. Both run back to back per input, on a "
             "machine shared with other jobs (absolute times vary from run to run; the ratio is "
             "from one run).",
             "",
             f"Machine: {machine()}.",
             "",
             "| eps | naive median (s) | milp median (s) | ratio | inputs needing a MILP: "
             "naive / milp median (s), ratio | naive max (s) | milp max (s) "
             "| YES / NO / MAYBE (milp) | verdicts agree |",
             "|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for eps in sorted({r["eps"] for r in rows}, reverse=True):
        sel = [r for r in rows if r["eps"] == eps]
        naive = statistics.median(r["naive_s"] for r in sel)
        fast = statistics.median(r["milp_s"] for r in sel)
        capped = any(r["naive_status"] == "CAPPED" for r in sel)
        agree = all(r["naive_status"] in ("CAPPED", r["milp_status"]) for r in sel)
        counts = " / ".join(str(sum(r["milp_status"] == s for r in sel))
                            for s in ("YES", "NO", "MAYBE"))
        ratio = f"{'>= ' if capped else ''}{naive / fast:.0f}x"
        hard = [r for r in sel if int(r["milp_milps"] or 0) > 0]
        if hard:
            h_naive = statistics.median(r["naive_s"] for r in hard)
            h_fast = statistics.median(r["milp_s"] for r in hard)
            h_capped = any(r["naive_status"] == "CAPPED" for r in hard)
            hard_text = (f"{len(hard)} of {len(sel)}: {h_naive:.2f} / {h_fast:.3f}, "
                         f"{'>= ' if h_capped else ''}{h_naive / h_fast:.0f}x")
        else:
            hard_text = f"0 of {len(sel)}"
        lines.append(f"| {eps:g} | {naive:.3f} | {fast:.3f} | {ratio} | {hard_text} | "
                     f"{max(r['naive_s'] for r in sel):.2f} | {max(r['milp_s'] for r in sel):.2f} "
                     f"| {counts} | {'yes' if agree else 'NO'} |")
        summary.append(f"eps {eps:g}: naive median {naive:.3f} s, milp median {fast:.3f} s, "
                       f"ratio {ratio}; inputs needing a MILP {hard_text}; verdicts agree: "
                       f"{agree}")
    lines += ["", "A naive time of 300 s is a run cut off at --naive-cap (then '>=').",
              "Per input: milp_speed.csv (statuses, seconds, LPs, MILPs, B&B nodes)."]
    (RESULTS / "milp_speed.md").write_text("\n".join(lines) + "\n")
    return summary


def _read_csv() -> list[dict]:
    with open(RESULTS / "milp_speed.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["eps"] = float(r["eps"])
        for key in ("naive_s", "milp_s"):
            r[key] = float(r[key])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.02])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (HiGHS MIP: 1)")
    parser.add_argument("--naive-cap", type=float, default=300.0)
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite milp_speed.md from the last milp_speed.csv")
    args = parser.parse_args()
    if args.report_only:
        print("\n".join(write_report(_read_csv(), args)))
        return
    torch.set_num_threads(args.threads)

    net = verify.load_onnx(REPO / "models" / "digits_mlp.onnx")
    data = np.load(REPO / "models" / "digits_test.npz")
    xs, ys = data["x"][:args.n], data["y"][:args.n]
    verify.certify(net, xs[0], int(ys[0]), 0.01, domain=(0, 1), method="milp")  # warm imports

    rows = []
    for eps in args.eps:
        for i, (x, y) in enumerate(zip(xs, ys)):
            spec = verify.robustness_spec(64, 10, x, int(y), eps, "inf", (0, 1))
            naive_status, naive_s, naive_nodes = naive_milp(net, spec, args.naive_cap)
            t0 = time.perf_counter()
            cert = verify.certify_specs(net, [spec], "milp")[0]
            milp_s = time.perf_counter() - t0
            row = {"eps": eps, "input": i, "label": int(y), "naive_status": naive_status,
                   "naive_s": round(naive_s, 4), "naive_nodes": naive_nodes,
                   "milp_status": cert.status.value, "milp_s": round(milp_s, 4),
                   "milp_lps": cert.cost.get("lps"), "milp_milps": cert.cost.get("milps"),
                   "milp_nodes": cert.cost.get("milp_nodes")}
            rows.append(row)
            print(f"eps {eps:g} input {i:2d}: naive {naive_status:6s} {naive_s:8.3f} s   "
                  f"milp {row['milp_status']:5s} {milp_s:7.3f} s  ({row['milp_milps']} MILPs, "
                  f"{row['milp_nodes']} nodes)", flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "milp_speed.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("\n".join(write_report(rows, args)))


if __name__ == "__main__":
    main()
