"""Cost vs network size: how each certifier's time per input grows with the hidden neurons.

    OMP_NUM_THREADS=1 python benchmarks/cost_vs_size.py [--n 50] [--eps 0.04] [--milp-timeout 5]
        [--widths 16 32 64 128 256] [--depths 1 2 3 4] [--depth-width 64] [--epochs 40]

Two families of digits MLPs, trained inside the script (a few seconds each) by models/train.py's
own loop (`_train_normalised_mlp`: in-graph (x - mean) / std, cross-entropy, Adam lr 1e-3,
batch 64, seed 0, exported to ONNX and checked against onnxruntime) into a temporary folder:
- width: 2 hidden layers of each --widths (64-w-w-10);
- depth: --depths hidden layers of --depth-width (the 2-layer one is shared with the width family).
Every model is certified on the same first --n test digits at one l_inf eps ∩ [0, 1] by ibp,
crown, alpha-crown (default options: an input stops once proved), lp, milp (each input capped
at --milp-timeout seconds; a MAYBE at the cap is a timeout) and the PGD attack, through
`verify.compare.compare`. bab is left out: it splits the input box, complete only for a few input
dimensions (ACAS Xu's 5), hopeless on 64 pixels.

Per model and method: YES / NO / MAYBE (timeouts), median and total time per input, and per
method and family the slope k of the least-squares fit log(median time) = k log(neurons) + c.
Batched methods (ibp, crown, alpha-crown, attack) report the batch time / inputs; lp and milp
run input by input. Writes benchmarks/results/cost_vs_size.{csv,md,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import verify  # noqa: E402
from benchmarks.reporting import (RESULTS, SHARED_NOTE, check_records, loglog_slope,  # noqa: E402
                                  machine, pyplot, finish_png, publish, single_thread)
from models import train  # noqa: E402
from verify.compare import compare  # noqa: E402

METHODS = ("ibp", "crown", "alpha-crown", "lp", "milp", "attack")
# Inclusions that must hold input by input (checked, reported in the .md).
ORDER = (("ibp", "crown"), ("crown", "alpha-crown"), ("crown", "lp"), ("lp", "milp"))


@contextlib.contextmanager
def _quiet_training():
    """Training restores the global torch state it changes (deterministic algorithms)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def train_mlp(hidden: Sequence[int], epochs: int, folder: Path) -> tuple[verify.Network, dict]:
    """A 64-hidden...-10 digits MLP trained by models.train's loop; (network, its metadata)."""
    name = "mlp_" + "_".join(map(str, hidden))
    with _quiet_training():
        meta = train._train_normalised_mlp(
            name, folder, (64, *hidden, 10), epochs,
            {"description": f"cost_vs_size benchmark model {name}",
             "training": "standard (cross-entropy, Adam lr 1e-3, batch 64)"},
            max_bytes=None)  # throw-away models: no size guard
    return verify.load_onnx(folder / f"{name}.onnx"), meta


def measure(architectures: Sequence[tuple[str, tuple[int, ...]]], xs: np.ndarray, ys: np.ndarray,
            eps: float, methods: Sequence[str] = METHODS, milp_timeout: float = 5.0,
            epochs: int = 40, progress=print) -> tuple[list[dict], list[dict]]:
    """Train each (family, hidden sizes) once and certify xs with every method at eps.
    Returns (rows: one per family, architecture and method; records: one per input as well)."""
    options = {"milp": {"timeout": float(milp_timeout)}}
    rows, records, trained = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for family, hidden in architectures:
            if hidden not in trained:
                t0 = time.perf_counter()
                trained[hidden] = (*train_mlp(hidden, epochs, pathlib.Path(tmp)),
                                   time.perf_counter() - t0)
            net, meta, train_s = trained[hidden]
            if not records:  # warm-up (imports, HiGHS, kernels) outside the timings
                compare(net, xs[:2], ys[:2], [eps], "inf", methods, (0, 1), options=options)
            table, recs = compare(net, xs, ys, [eps], "inf", methods, (0, 1), options=options)
            arch = "-".join(map(str, (64, *hidden, 10)))
            for r in recs:
                r.update(model=f"{family} {arch}")
            records += recs
            for row in table:
                times = [r["time_s"] for r in recs if r["method"] == row["method"]]
                statuses = [r["status"] for r in recs if r["method"] == row["method"]]
                timeouts = sum(s == "MAYBE" and t >= 0.99 * milp_timeout
                               for s, t in zip(statuses, times)) if row["method"] == "milp" else 0
                rows.append({
                    "family": family, "architecture": arch, "hidden_layers": len(hidden),
                    "neurons": sum(hidden), "test_accuracy": meta["test_accuracy"],
                    "train_s": round(train_s, 2), "eps": eps, "method": row["method"],
                    "inputs": row["inputs"], "yes": row["yes"], "no": row["no"],
                    "maybe": row["maybe"], "timeouts": timeouts,
                    "median_time_s": statistics.median(times),
                    "total_time_s": sum(times), "wall_s": row["total_time_s"],
                    "mean_worst_margin_lower": row["mean_margin_lower"]})
                progress(f"{family:5s} {arch:18s} {row['method']:12s} YES {row['yes']:3d} "
                         f"NO {row['no']:3d} MAYBE {row['maybe']:3d} (timeouts {timeouts})  "
                         f"median {1e3 * rows[-1]['median_time_s']:9.2f} ms  total "
                         f"{rows[-1]['total_time_s']:7.2f} s")
    return rows, records


def slopes(rows: list[dict]) -> dict[tuple[str, str], Optional[float]]:
    """(family, method) -> k of median time ~ neurons^k."""
    out = {}
    for family in dict.fromkeys(r["family"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if r["family"] == family and r["method"] == method]
            out[(family, method)] = loglog_slope([r["neurons"] for r in sel],
                                                 [r["median_time_s"] for r in sel])
    return out


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.3g}" if seconds < 10 else f"{1e3 * seconds:.0f}"


def write_md(rows: list[dict], k: dict, problems: list[str], args, wall: float) -> list[str]:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    n = rows[0]["inputs"]
    lines = [
        "# Cost vs network size",
        "",
        f"Machine: {machine()}. {SHARED_NOTE}",
        "",
        f"Digits MLPs trained in the script ({args.epochs} epochs, models/train.py's loop, seed 0),"
        f" the first {n} test digits, l_inf eps {args.eps:g} ∩ [0, 1]. Width family: 2 hidden "
        f"layers of {', '.join(map(str, args.widths))}; depth family: "
        f"{', '.join(map(str, args.depths))} hidden layers of {args.depth_width}. milp: at most "
        f"{args.milp_timeout:g} s per input (a MAYBE at the cap is a timeout, counted as not "
        f"certified). alpha-crown with default options (an input stops once proved). bab is not "
        f"run: it splits the 64-dimensional input box and is complete only for a few inputs. "
        f"Whole run {wall / 60:.1f} min. `OMP_NUM_THREADS=1 python benchmarks/cost_vs_size.py`",
        "",
        "Time per input: lp and milp run input by input (everything included: neuron bounds, "
        "LP screen, attack, MILPs); ibp, crown, alpha-crown and attack run the inputs as one "
        "batch and report its time / inputs.",
        "",
        "## Median time per input (ms) and certified inputs",
        "",
        "Cells: median ms per input; YES (certified) / NO (counterexample) out of "
        f"{n}. milp's YES is the exact robust count when it has no timeouts; attack: NO only.",
        "",
        "| family | architecture | hidden neurons | test acc | " + " | ".join(methods) + " |",
        "|---|---|---:|---:|" + "---|" * len(methods),
    ]
    for family in dict.fromkeys(r["family"] for r in rows):
        for arch in dict.fromkeys(r["architecture"] for r in rows if r["family"] == family):
            sel = {r["method"]: r for r in rows if r["family"] == family and
                   r["architecture"] == arch}
            first = next(iter(sel.values()))
            cells = []
            for m in methods:
                r = sel[m]
                text = f"{_ms(r['median_time_s'])}; {r['yes']} / {r['no']}"
                if r["timeouts"]:
                    text += f", {r['timeouts']} timeouts"
                cells.append(text)
            lines.append(f"| {family} | {arch} | {first['neurons']} | "
                         f"{first['test_accuracy']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "## Growth: median time per input ~ neurons^k (least squares on log-log)", "",
              "| family | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for family in dict.fromkeys(r["family"] for r in rows):
        lines.append(f"| {family} | " + " | ".join(
            "-" if k[(family, m)] is None else f"{k[(family, m)]:.2f}" for m in methods) + " |")
    lines += ["", "k from the median time per input of each model (milp: capped at the timeout, so "
              "with timeouts its k understates the growth; ibp's times are below a millisecond, "
              "fixed overhead and noise, so its k means little). The 2-hidden-layer model of "
              f"width {args.depth_width} belongs to both families and is measured twice: the two "
              "measurements show the run-to-run noise of this shared machine.",
              "", "## Total time over the inputs (s)", "",
              "| family | architecture | " + " | ".join(methods) + " |",
              "|---|---|" + "---:|" * len(methods)]
    for family in dict.fromkeys(r["family"] for r in rows):
        for arch in dict.fromkeys(r["architecture"] for r in rows if r["family"] == family):
            sel = {r["method"]: r for r in rows if r["family"] == family and
                   r["architecture"] == arch}
            lines.append(f"| {family} | {arch} | " + " | ".join(
                f"{sel[m]['total_time_s']:.2f}" for m in methods) + " |")
    lines += ["", "## Checks", "",
              "Input by input: no YES next to a NO from another method; the largest margin lower "
              "bound (any method) <= the smallest value at a replayed point (any method); "
              + ", ".join(f"{a} proves => {b} proves" for a, b in ORDER) + ": "
              + ("**all hold**." if not problems else
                 f"**{len(problems)} violation(s)**:"), ""]
    lines += [f"- {p}" for p in problems[:20]]
    lines += ["", "![median time per input vs hidden neurons](cost_vs_size.png)", "",
              "Per method and model: cost_vs_size.csv."]
    return lines


def write_png(rows: list[dict], k: dict, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    families = list(dict.fromkeys(r["family"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4.2), sharey=True,
                             squeeze=False)
    for ax, family in zip(axes[0], families):
        for m in methods:
            sel = [r for r in rows if r["family"] == family and r["method"] == m]
            slope = k[(family, m)]
            label = m + ("" if slope is None else f" (k = {slope:.2f})")
            ax.loglog([r["neurons"] for r in sel], [r["median_time_s"] for r in sel], "o-",
                      label=label)
            for r in sel:
                if r["timeouts"]:
                    ax.annotate(f"{r['timeouts']} t/o", (r["neurons"], r["median_time_s"]),
                                fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("hidden neurons")
        ticks = sorted({r["neurons"] for r in rows if r["family"] == family})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_title(f"{family} family" + (" (2 hidden layers)" if family == "width" else
                                           " (fixed width)"))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("median time per input (s)")
    return finish_png(fig, path)


def architectures(widths, depths, depth_width) -> list[tuple[str, tuple[int, ...]]]:
    return ([("width", (w, w)) for w in widths] +
            [("depth", (depth_width,) * d) for d in depths])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--eps", type=float, default=0.04)
    parser.add_argument("--milp-timeout", type=float, default=5.0)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--depth-width", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    single_thread()
    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    data = np.load(REPO / "models" / "digits_test.npz")
    xs, ys = data["x"][:args.n], data["y"][:args.n]
    rows, records = measure(architectures(args.widths, args.depths, args.depth_width), xs, ys,
                            args.eps, METHODS, args.milp_timeout, args.epochs)
    problems = check_records(records, ORDER)
    k = slopes(rows)
    lines = write_md(rows, k, problems, args, time.perf_counter() - t0)
    code = publish("cost_vs_size", rows, lines, problems)
    write_png(rows, k, RESULTS / "cost_vs_size.png")
    return code


if __name__ == "__main__":
    sys.exit(main())
