"""IBP-trained vs normally trained: certified accuracy of the same architecture, every certifier.

    OMP_NUM_THREADS=1 python benchmarks/ibp_trained_vs_plain.py [--n 60]
        [--eps 0.01 0.02 0.03 0.05 0.08 0.1] [--milp-timeout 5] [--plain digits_mlp_plain]

models/digits_mlp_ibp.onnx (IBP certified training at l_inf eps 0.05, Gowal et al. 2018) against
the plain model of the same architecture: by default models/digits_mlp_plain.onnx, trained by the
same function of models/train.py (`_train_normalised_mlp`: 64-50-50-10, in-graph (x - mean) / std,
Adam lr 1e-3, batch 64, seed 0) with plain cross-entropy (100 epochs; the IBP model: 200 epochs,
learning rate /10 at 75% and 90%). models/digits_mlp.onnx has the same architecture too, trained
by the older `_fit` loop (60 epochs); `--plain digits_mlp` runs against it. The script checks that
the two networks have the same layers and shapes and refuses to compare otherwise.

On the first --n test digits, l_inf balls ∩ [0, 1], through `verify.compare.compare`: certified
accuracy (share of inputs with a YES; a YES implies the input is classified correctly) under
ibp, crown, alpha-crown, lp and the exact milp (each input capped at --milp-timeout s; timeouts
count as not certified and are reported), and the PGD attack's upper bound (share of inputs it
does not refute); plus clean accuracy. Writes benchmarks/results/ibp_trained_vs_plain.{csv,md,png}.
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
from benchmarks.reporting import (RESULTS, SHARED_NOTE, check_records, machine,  # noqa: E402
                                  pyplot, finish_png, publish, single_thread)
from verify.compare import compare  # noqa: E402

MODELS = REPO / "models"
METHODS = ("ibp", "crown", "alpha-crown", "lp", "milp", "attack")
ORDER = (("ibp", "crown"), ("crown", "alpha-crown"), ("crown", "lp"), ("lp", "milp"))
LABELS = {"ibp": "IBP", "crown": "CROWN", "alpha-crown": "alpha-CROWN", "lp": "LP",
          "milp": "MILP (exact)", "attack": "PGD (upper bound)"}


def layer_shapes(net: verify.Network) -> list[tuple]:
    """The architecture as data: (layer type, weight shape or width) per layer."""
    return [(type(layer).__name__,
             tuple(layer.weight.shape) if hasattr(layer, "weight") else tuple(layer.in_shape))
            for layer in net.layers]


def same_architecture(a: str, b: str) -> bool:
    """Same layers and shapes after loading, and the same architecture and normalisation in the
    metadata JSON."""
    nets = [verify.load_onnx(MODELS / f"{name}.onnx") for name in (a, b)]
    metas = [json.loads((MODELS / f"{name}.json").read_text()) for name in (a, b)]
    return (layer_shapes(nets[0]) == layer_shapes(nets[1]) and
            all(metas[0].get(k) == metas[1].get(k) for k in ("architecture", "normalisation",
                                                               "input_shape", "domain")))


def certified_accuracy(names: Sequence[str], xs: np.ndarray, ys: np.ndarray,
                       eps_list: Sequence[float], methods: Sequence[str] = METHODS,
                       milp_timeout: float = 10.0, progress=None) -> tuple[list[dict], list[dict]]:
    """Per model, eps and method: certified accuracy (YES / n; for the attack (n - NO) / n, an
    upper bound) with counts and timeouts. Returns (rows, per-input records)."""
    options = {"milp": {"timeout": float(milp_timeout)}}
    rows, records = [], []
    for name in names:
        net = verify.load_onnx(MODELS / f"{name}.onnx")
        clean = float((net.forward(xs).argmax(1) == ys).mean())
        compare(net, xs[:2], ys[:2], eps_list[:1], "inf", methods, (0, 1),
                options=options)  # warm-up
        table, recs = compare(net, xs, ys, eps_list, "inf", methods, (0, 1), options=options,
                              progress=progress and (lambda s, name=name: progress(f"{name}: {s}")))
        for r in recs:
            r["model"] = name
        records += recs
        for row in table:
            sel = [r for r in recs if r["eps"] == row["eps"] and r["method"] == row["method"]]
            timeouts = sum(r["status"] == "MAYBE" and r["time_s"] >= 0.99 * milp_timeout
                           for r in sel) if row["method"] == "milp" else 0
            rows.append({"model": name, "eps": row["eps"], "method": row["method"],
                         "bound": row["bound"], "inputs": row["inputs"],
                         "clean_accuracy": clean, "certified_accuracy": row["robust_accuracy"],
                         "yes": row["yes"], "no": row["no"], "maybe": row["maybe"],
                         "timeouts": timeouts, "median_time_s": row["median_time_s"],
                         "total_time_s": row["total_time_s"],
                         "mean_worst_margin_lower": row["mean_margin_lower"]})
    return rows, records


def write_md(rows: list[dict], names: Sequence[str], problems: list[str], args,
             wall: float) -> list[str]:
    plain, trained = names
    metas = {n: json.loads((MODELS / f"{n}.json").read_text()) for n in names}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    eps_list = list(dict.fromkeys(r["eps"] for r in rows))
    by = {(r["model"], r["eps"], r["method"]): r for r in rows}
    n = rows[0]["inputs"]
    ibp_meta = metas[trained]
    lines = [
        "# IBP-trained vs normally trained: certified accuracy",
        "",
        f"Machine: {machine()}. {SHARED_NOTE}",
        "",
        f"**{trained}** (IBP certified training at l_inf eps {ibp_meta['eps']:g}: "
        f"{ibp_meta['schedule']['warmup_epochs']} warm-up epochs, eps ramped over "
        f"{ibp_meta['schedule']['ramp_epochs']}, kappa {ibp_meta['schedule']['kappa_start']:g} "
        f"-> {ibp_meta['schedule']['kappa_end']:g}, {ibp_meta['epochs']} epochs) against "
        f"**{plain}** ({metas[plain]['training']}, {metas[plain]['epochs']} epochs): both "
        f"{metas[plain]['architecture']}, {metas[plain]['normalisation']}, seed 0 — the same "
        f"layers and shapes (checked on the loaded networks). Test accuracy (whole split): "
        f"{plain} {metas[plain]['test_accuracy']:.4f}, {trained} "
        f"{metas[trained]['test_accuracy']:.4f}.",
        "",
        f"First {n} test digits, l_inf eps ∩ [0, 1]. Certified accuracy = share of inputs "
        "proved (YES; a YES implies correct classification). MILP is exact (YES = robust), each "
        f"input capped at {args.milp_timeout:g} s; a timeout counts as not certified and is "
        "shown. PGD: share of inputs the attack does not refute, an upper bound on the robust "
        "accuracy. Whole run "
        f"{wall / 60:.1f} min. `OMP_NUM_THREADS=1 python benchmarks/ibp_trained_vs_plain.py`",
        "",
        f"Clean accuracy on these {n} inputs: {plain} "
        f"{by[(plain, eps_list[0], methods[0])]['clean_accuracy']:.3f}, {trained} "
        f"{by[(trained, eps_list[0], methods[0])]['clean_accuracy']:.3f}.",
        "",
    ]
    for name in names:
        lines += [f"## {name}", "",
                  "| eps | " + " | ".join(LABELS.get(m, m) for m in methods) + " |",
                  "|---|" + "---:|" * len(methods)]
        for eps in eps_list:
            cells = []
            for m in methods:
                r = by[(name, eps, m)]
                text = f"{r['certified_accuracy']:.3f}"
                if r["timeouts"]:
                    text += f" ({r['timeouts']} t/o)"
                cells.append(text)
            lines.append(f"| {eps:g} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"## Gap: {trained} - {plain} (certified accuracy)", "",
              "| eps | " + " | ".join(LABELS.get(m, m) for m in methods) + " |",
              "|---|" + "---:|" * len(methods)]
    for eps in eps_list:
        gaps = [by[(trained, eps, m)]["certified_accuracy"] -
                by[(plain, eps, m)]["certified_accuracy"] for m in methods]
        lines.append(f"| {eps:g} | " + " | ".join(f"{g:+.3f}" for g in gaps) + " |")
    brackets = []
    for name in names:
        for eps in eps_list:
            if "milp" in methods and by[(name, eps, "milp")]["timeouts"]:
                r = by[(name, eps, "milp")]
                high = (r["yes"] + r["maybe"]) / n
                if "attack" in methods:
                    high = min(high, by[(name, eps, "attack")]["certified_accuracy"])
                brackets.append(f"{name} at eps {eps:g}: [{r['yes'] / n:.3f}, {high:.3f}]")
    if brackets:
        lines += ["", "Where the MILP timed out, the robust accuracy is only bracketed: between "
                  "MILP's YES share and min(PGD's bound, (YES + timeouts) / n): "
                  + "; ".join(brackets) + "."]
    lines += ["", "## How tight the relaxations are on each model", "",
              "Share of the exactly robust inputs (MILP YES) that each relaxation proves, "
              "per eps (- where MILP proves none):", "",
              "| eps | " + " | ".join(f"{name} {LABELS[m]}" for name in names
                                      for m in methods if by[(name, eps_list[0], m)]["bound"]
                                      == "lower") + " |",
              "|---|" + "---:|" * sum(by[(name, eps_list[0], m)]["bound"] == "lower"
                                      for name in names for m in methods)]
    for eps in eps_list:
        cells = []
        for name in names:
            exact = by[(name, eps, "milp")]["yes"] if "milp" in methods else 0
            for m in methods:
                if by[(name, eps, m)]["bound"] != "lower":
                    continue
                cells.append(f"{by[(name, eps, m)]['yes'] / exact:.2f}" if exact else "-")
        lines.append(f"| {eps:g} | " + " | ".join(cells) + " |")
    lines += ["", "## Checks", "",
              "Input by input: no YES next to a NO from another method; the largest margin lower "
              "bound <= the smallest value at a replayed point; "
              + ", ".join(f"{a} proves => {b} proves" for a, b in ORDER) + ": "
              + ("**all hold**." if not problems else f"**{len(problems)} violation(s)**:"), ""]
    lines += [f"- {p}" for p in problems[:20]]
    lines += ["", "![certified accuracy vs eps](ibp_trained_vs_plain.png)", "",
              "Per model, eps and method (counts, timeouts, median time per input): "
              "ibp_trained_vs_plain.csv."]
    return lines


def write_png(rows: list[dict], names: Sequence[str], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(11, 4.2), sharey=True)
    for ax, name in zip(axes, names):
        for m in methods:
            sel = [r for r in rows if r["model"] == name and r["method"] == m]
            style = "--" if m == "attack" else ("-" if m == "milp" else "-.")
            ax.plot([r["eps"] for r in sel], [r["certified_accuracy"] for r in sel], style,
                    marker="o", markersize=4, label=LABELS.get(m, m))
        ax.set_title(name)
        ax.set_xlabel("l_inf eps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("certified accuracy")
    axes[0].set_ylim(-0.02, 1.02)
    axes[-1].legend(fontsize=8)
    return finish_png(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.01, 0.02, 0.03, 0.05, 0.08,
                                                                 0.1])
    parser.add_argument("--milp-timeout", type=float, default=5.0)
    parser.add_argument("--plain", default="digits_mlp_plain")
    parser.add_argument("--trained", default="digits_mlp_ibp")
    args = parser.parse_args(argv)
    single_thread()
    print(f"machine: {machine()}")
    names = (args.plain, args.trained)
    if not same_architecture(*names):
        parser.error(f"{args.plain} and {args.trained} differ in architecture")
    t0 = time.perf_counter()
    data = np.load(MODELS / "digits_test.npz")
    xs, ys = data["x"][:args.n], data["y"][:args.n]
    rows, records = certified_accuracy(names, xs, ys, args.eps, METHODS, args.milp_timeout,
                                       progress=lambda s: print(s, flush=True))
    problems = check_records(records, ORDER)
    lines = write_md(rows, names, problems, args, time.perf_counter() - t0)
    code = publish("ibp_trained_vs_plain", rows, lines, problems)
    write_png(rows, names, RESULTS / "ibp_trained_vs_plain.png")
    return code


if __name__ == "__main__":
    sys.exit(main())
