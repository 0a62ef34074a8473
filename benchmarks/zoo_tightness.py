"""Tightness vs eps on the model zoo: every certifier on every bundled model, side by side.

    OMP_NUM_THREADS=1 python benchmarks/zoo_tightness.py [--n 50] [--milp-timeout 5]
        [--models digits_mlp digits_mlp_large ...] [--eps 0.01 0.02 0.03 0.05 0.08]

For each model of models/ (the digits MLPs, the larger MLP, the CNN, the IBP-trained, plain and
ReLU-stability-regularised MLPs, and toy2d) on its first --n test inputs, l_inf balls ∩ [0, 1],
through `verify.compare.compare`: per eps and method YES / NO / MAYBE, the mean over inputs of
the worst-row margin lower bound min_j (z_y - z_j), and the median time per input. Methods: ibp,
crown, alpha-crown (early_stop off: every input gets all steps, so its margins are comparable),
lp, milp (exact; each input capped at --milp-timeout s, a MAYBE at the cap is a timeout), the PGD
attack (its NO count bounds the robust count from above; its mean worst-row value at the points
it found is an upper bound to set against the relaxations' lower bounds), and on toy2d (2
inputs) bab, the second exact method, which must agree with milp. The digits_mlp_noiseNNN
models are base classifiers for randomized smoothing and are measured as such in
smoothing_certified_accuracy.md; the bundled digits_mlp on 100 inputs is in relaxed_tightness.md.

Writes benchmarks/results/zoo_tightness.{csv,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import verify  # noqa: E402
from benchmarks.reporting import (RESULTS, SHARED_NOTE, check_records,  # noqa: E402
                                  machine, pyplot, finish_png, single_thread, write_csv,
                                  write_text)
from verify.compare import compare  # noqa: E402

MODELS = REPO / "models"
ZOO = ("digits_mlp", "digits_mlp_large", "digits_cnn", "digits_mlp_ibp", "digits_mlp_plain",
       "digits_mlp_rs", "toy2d")
DIGITS_EPS = (0.01, 0.02, 0.03, 0.05, 0.08)
TOY_EPS = (0.02, 0.05, 0.1, 0.15)
METHODS = ("ibp", "crown", "alpha-crown", "lp", "milp", "attack")
ORDER = (("ibp", "crown"), ("crown", "alpha-crown"), ("crown", "lp"), ("lp", "milp"))
EXACT = ("milp", "bab")


def inputs_of(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(MODELS / ("toy2d_test.npz" if name == "toy2d" else "digits_test.npz"))
    return data["x"][:n], data["y"][:n]


def methods_for(net: verify.Network) -> tuple[str, ...]:
    """bab splits the input box: run it only where the input has few dimensions."""
    return METHODS + (("bab",) if net.input_size <= 5 else ())


def run_model(name: str, n: int, eps_list: Sequence[float], milp_timeout: float = 5.0,
              progress=None) -> tuple[list[dict], list[dict]]:
    """One zoo model, every method at every eps: (rows, per-input records)."""
    net = verify.load_onnx(MODELS / f"{name}.onnx")
    xs, ys = inputs_of(name, n)
    methods = methods_for(net)
    options = {"milp": {"timeout": float(milp_timeout)},
               "bab": {"timeout": float(milp_timeout)},
               "alpha-crown": {"early_stop": False}}
    compare(net, xs[:2], ys[:2], eps_list[:1], "inf", methods, (0, 1), options=options)  # warm-up
    table, records = compare(net, xs, ys, eps_list, "inf", methods, (0, 1), options=options,
                             progress=progress and (lambda s: progress(f"{name}: {s}")))
    for r in records:
        r["model"] = name
    rows = []
    for row in table:
        sel = [r for r in records if r["eps"] == row["eps"] and r["method"] == row["method"]]
        uppers = [r["worst_margin_upper"] for r in sel if np.isfinite(r["worst_margin_upper"])]
        timeouts = sum(r["status"] == "MAYBE" and r["time_s"] >= 0.99 * milp_timeout
                       for r in sel) if row["method"] in EXACT else 0
        rows.append({"model": name, "eps": row["eps"], "method": row["method"],
                     "bound": row["bound"], "inputs": row["inputs"], "yes": row["yes"],
                     "no": row["no"], "maybe": row["maybe"], "timeouts": timeouts,
                     "mean_worst_margin_lower": row["mean_margin_lower"],
                     "mean_worst_margin_upper": float(np.mean(uppers)) if uppers else np.nan,
                     "median_time_s": row["median_time_s"], "total_time_s": row["total_time_s"]})
    return rows, records


def exact_disagreements(records: list[dict]) -> list[str]:
    """Inputs where two exact methods both decide and disagree (YES vs NO)."""
    by: dict[tuple, dict[str, str]] = {}
    for r in records:
        if r["method"] in EXACT:
            by.setdefault((r["model"], r["eps"], r["index"]), {})[r["method"]] = r["status"]
    return [f"{k}: {v}" for k, v in by.items()
            if {"YES", "NO"} <= set(v.values())]


def _cell(r: dict) -> str:
    ms = 1e3 * r["median_time_s"]
    t = f"{ms:.2g} ms" if ms < 10 else f"{ms:.0f} ms"
    if r["bound"] == "lower":
        return f"{r['yes']}, {r['mean_worst_margin_lower']:.2f}, {t}"
    if r["bound"] == "upper":
        return f"{r['no']} NO, {r['mean_worst_margin_upper']:.2f}, {t}"
    text = f"{r['yes']} / {r['no']}"
    if r["maybe"]:
        text += f" / {r['maybe']}" + (f" ({r['timeouts']} t/o)" if r["timeouts"] else "")
    return f"{text}, {t}"


def write_md(rows: list[dict], problems: list[str], disagreements: list[str], args,
             wall: float) -> list[str]:
    lines = [
        "# Tightness vs eps on the model zoo",
        "",
        f"Machine: {machine()}. {SHARED_NOTE}",
        "",
        f"First {args.n} test inputs of each model, l_inf balls ∩ [0, 1]. Whole run "
        f"{wall / 60:.1f} min. `OMP_NUM_THREADS=1 python benchmarks/zoo_tightness.py`",
        "",
        "Cells — relaxed methods (ibp, crown, alpha-crown, lp): certified inputs (YES), mean "
        "over inputs of the worst-row margin lower bound min_j (z_y - z_j), median time per input. "
        f"Exact methods (milp; bab on toy2d): YES / NO [/ MAYBE (timeouts at {args.milp_timeout:g}"
        " s)], median time; without MAYBE, YES is the exact robust count. attack (PGD): inputs "
        "refuted, mean worst-row value at its best points (an upper bound on the true minimum: "
        "the exact mean lies between the relaxations' lower bounds and this), median time. "
        "ibp, crown, alpha-crown (all 20 steps) and attack run the inputs as one batch (time = "
        "batch / inputs); lp, milp and bab run input by input. A relaxed method's NO (not shown) "
        "comes from a misclassified input or a replayed LP optimum.",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        sel = [r for r in rows if r["model"] == model]
        meta = json.loads((MODELS / f"{model}.json").read_text())
        methods = list(dict.fromkeys(r["method"] for r in sel))
        lines += [f"## {model}", "",
                  f"{meta['architecture']}; {meta['training']}; test accuracy "
                  f"{meta['test_accuracy']:.4f}.", "",
                  "| eps | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        by = {(r["eps"], r["method"]): r for r in sel}
        for eps in dict.fromkeys(r["eps"] for r in sel):
            lines.append(f"| {eps:g} | " + " | ".join(_cell(by[(eps, m)]) for m in methods)
                         + " |")
        lines.append("")
    lines += ["## Checks", "",
              "Input by input, on every model and eps: no YES next to a NO from another method; "
              "the largest margin lower bound <= the smallest value at a replayed point; "
              + ", ".join(f"{a} proves => {b} proves" for a, b in ORDER) + "; milp and bab "
              "agree where both decide: "
              + ("**all hold**." if not problems and not disagreements else
                 f"**{len(problems) + len(disagreements)} violation(s)**:"), ""]
    lines += [f"- {p}" for p in (problems + disagreements)[:20]]
    lines += ["", "![certified inputs vs eps per model](zoo_tightness.png)", "",
              "Per model, eps and method: zoo_tightness.csv."]
    return lines


def write_png(rows: list[dict], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    models = list(dict.fromkeys(r["model"] for r in rows))
    cols = 4
    nrows = -(-len(models) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.3 * nrows), squeeze=False)
    for ax, model in zip(axes.flat, models):
        sel = [r for r in rows if r["model"] == model]
        for m in dict.fromkeys(r["method"] for r in sel):
            pts = [r for r in sel if r["method"] == m]
            bound = pts[0]["bound"]
            values = [(r["inputs"] - r["no"]) / r["inputs"] if bound == "upper"
                      else r["yes"] / r["inputs"] for r in pts]
            style = {"upper": "--", "exact": "-"}.get(bound, "-.")
            ax.plot([r["eps"] for r in pts], values, style, marker="o", markersize=3,
                    label=m + (" (not refuted)" if bound == "upper" else ""))
        ax.set_title(model, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_xlabel("l_inf eps", fontsize=8)
    for ax in axes.flat[len(models):]:
        ax.axis("off")
    axes[0][0].set_ylabel("share of inputs proved")
    handles, labels = max(((a.get_legend_handles_labels()) for a in axes.flat),
                          key=lambda hl: len(hl[1]))
    fig.legend(handles, labels, loc="lower right", fontsize=8)
    return finish_png(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--milp-timeout", type=float, default=5.0)
    parser.add_argument("--models", nargs="+", default=list(ZOO))
    parser.add_argument("--eps", type=float, nargs="+", default=list(DIGITS_EPS),
                        help="for the digits models (toy2d: %s)" % " ".join(map(str, TOY_EPS)))
    args = parser.parse_args(argv)
    single_thread()
    print(f"machine: {machine()}")
    t0 = time.perf_counter()
    rows, records = [], []
    for name in args.models:
        eps_list = TOY_EPS if name == "toy2d" else args.eps
        r, rec = run_model(name, args.n, eps_list, args.milp_timeout,
                           progress=lambda s: print(s, flush=True))
        rows += r
        records += rec
    problems = check_records(records, ORDER)
    disagreements = exact_disagreements(records)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_csv(rows, RESULTS / "zoo_tightness.csv")
    write_png(rows, RESULTS / "zoo_tightness.png")
    lines = write_md(rows, problems, disagreements, args, time.perf_counter() - t0)
    write_text(RESULTS / "zoo_tightness.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if problems or disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
