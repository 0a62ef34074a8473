"""Noise-shape study: general-normal smoothing noise of shape beta at one variance, certified
against l_1, l_2 and l_inf on digits (in the spirit of UniCR's C-OPT, Hong et al. 2022, Table 2).

    python benchmarks/noise_shape_study.py [--count 200] [--n 10000] [--n0 100] [--alpha 0.001]
                                           [--device auto] [--threads 1]

For beta in models.train.GENNORM_BETAS (0.5, 1 = Laplace, 1.5, 2 = Gaussian, 3, 4), noise density
∝ exp(-|x/a|^beta) with per-pixel std sigma = 0.25 (the Gaussian noise models' digits scale):
the base classifier models/digits_mlp_gnNNN.onnx (trained with that noise), CERTIFY's sampling
on the first --count test digits with its own noise (n0 selection samples, n fresh ones), and
from the *same counts* the certified radius in each of l_1, l_2, l_inf:

- closed form where one exists: beta = 2 (Gaussian) l_2 sigma PhiInv(pA), l_inf = l_2 / sqrt(d),
  l_1 = l_2 (exact: the l_1 ball's worst point is an axis point); beta = 1 (Laplace) l_1
  -lam log(2 (1 - pA)). pA = Clopper-Pearson lower bound at alpha.
- else the numerical (UniCR-style) radius, computed once per beta on a grid of pA values
  (`verify.smoothing.numerical_radius_curve`, shared samples) and read off *downwards* for each
  input (the radius of the largest grid point <= its pA: a non-decreasing step function below the
  curve). alpha is split as in `verify.certify`: pA at 0.9 alpha, the Monte Carlo at 0.1 alpha.
- for beta = 1 and 2 the numerical radius is also computed where the closed form was used, and
  the two are compared (same counts).

Robustness score = area under the certified-accuracy curve = mean over the digits of
1{correct, not abstained} * radius (`verify.smoothing.robustness_score`). Every radius holds at
confidence 1 - alpha per input; the numerical ones under the assumptions stated in
verify/smoothing/radius.py (the worst direction is among the k-sparse rays certified).
Writes benchmarks/results/noise_shape_study.{csv,md,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm as _normal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import verify  # noqa: E402
from models.train import GENNORM_BETAS, gennorm_model_name  # noqa: E402
from benchmarks.reporting import (add_sampling_arguments, finish_png, machine,  # noqa: E402
                                  pyplot)
from verify.smoothing import (Gaussian, GeneralNormal, Laplace, NoisySampler,  # noqa: E402
                              certified_accuracy, clopper_pearson_lower,
                              numerical_radius_curve, robustness_score)

NORMS = ("1", "2", "inf")
RADII = {"1": (0.25, 0.5, 1.0), "2": (0.1, 0.25, 0.5), "inf": (0.01, 0.03, 0.06)}
MC_SHARE = 0.1  # share of alpha for the numerical radius's Monte Carlo (as SmoothingOptions)
DIM = 64
RESULTS = REPO / "benchmarks" / "results"


def closed_form(beta: float, norm: str, sigma: float):
    """The noise with an exact closed-form radius in `norm` that *is* GeneralNormal(sigma, beta),
    or None (beta = 2: Gaussian in every norm; beta = 1: Laplace in l_1 only: its l_2 / l_inf
    forms, rs4a's guaranteed bounds, are lower bounds, not the exact radius)."""
    if beta == 2.0:
        return Gaussian(sigma)
    if beta == 1.0 and norm == "1":
        return Laplace(sigma)
    return None


def p_grid(n: int, alpha_cp: float, points: int) -> np.ndarray:
    """pA grid for the numerical curves: even in PhiInv(pA) from 0.01 to the largest bound n
    samples can give, that bound itself included (every all-correct digit sits on it)."""
    p_max = float(clopper_pearson_lower(n, n, alpha_cp))
    z = np.linspace(0.01, float(_normal.ppf(p_max)), points)
    return np.unique(np.append(_normal.cdf(z[:-1]), p_max))


def study_beta(beta: float, xs, ys, args) -> dict:
    name = gennorm_model_name(beta)
    meta = json.loads((REPO / "models" / f"{name}.json").read_text())
    sigma = float(meta["sigma"])
    noise = GeneralNormal(sigma, beta)
    net = verify.load_onnx(REPO / "models" / f"{name}.onnx")
    t0 = time.perf_counter()
    sampler = NoisySampler(net, noise, args.device, args.batch_size, args.seed)
    counts0 = sampler.counts(xs, args.n0)  # selection
    counts = sampler.counts(xs, args.n)  # estimation, fresh samples
    sampling_s = time.perf_counter() - t0
    top = counts0.argmax(1)
    k_top = counts[np.arange(len(xs)), top]
    alpha_num = args.alpha * (1 - MC_SHARE)
    p_closed = clopper_pearson_lower(k_top, args.n, args.alpha)
    p_num = clopper_pearson_lower(k_top, args.n, alpha_num)
    right = top == ys
    grid = p_grid(args.n, alpha_num, args.grid)
    cells, checks = {}, {}
    curve, curve_s = None, 0.0
    if args.check or any(closed_form(beta, norm, sigma) is None for norm in NORMS):
        # one curve: its rays give every norm (r_1 >= r_2 >= r_inf by construction)
        t1 = time.perf_counter()
        curve = numerical_radius_curve(noise, grid, "1", DIM, alpha_mc=args.alpha * MC_SHARE,
                                       n_mc=args.n_mc, grid=args.ladder, seed=args.seed)
        curve_s = time.perf_counter() - t1
    for norm in NORMS:
        closed = closed_form(beta, norm, sigma)
        if closed is not None:
            ok = right & (p_closed > 0.5)
            radii = np.where(ok, [closed.closed_radius(p, norm, DIM) for p in p_closed], np.nan)
            cells[norm] = summarize(radii, ok, norm, "closed", curve_s)
            if curve is not None:
                ok_n = right & (p_num > 0.5)
                radii_n = np.where(ok_n, curve.lower_in(norm, p_num), np.nan)
                exact = np.array([closed.closed_radius(p, norm, DIM) for p in grid])
                upper = grid >= 0.9
                numerical = curve.in_norm(norm)
                ratio = numerical[upper] / exact[upper]
                checks[norm] = {
                    **summarize(radii_n, ok_n, norm, "numerical", curve_s),
                    "closed_score": cells[norm]["score"],
                    "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max()),
                    "max_over_closed": float(np.max(numerical - exact)),  # <= 0: sound
                    "directions": list(curve.sizes)}
        else:
            ok = right & (p_num > 0.5)
            radii = np.where(ok, curve.lower_in(norm, p_num), np.nan)
            cells[norm] = summarize(radii, ok, norm, "numerical", curve_s)
            cells[norm]["directions"] = list(curve.sizes)
            cells[norm]["epsilon"] = curve.epsilon
            cells[norm]["monotone"] = bool(np.all(np.diff(curve.in_norm(norm)) >= 0))
    return {"beta": beta, "name": name, "sigma": sigma, "a": noise.a, "cells": cells,
            "checks": checks, "clean_accuracy": meta["test_accuracy"],
            "noisy_accuracy": meta.get("test_accuracy_under_noise"),
            "abstain": float(np.mean(p_closed <= 0.5)),
            "wrong": float(np.mean((p_closed > 0.5) & ~right)),
            "sampling_s": sampling_s, "seconds": time.perf_counter() - t0,
            "samples_per_s": sampler.samples_per_s}


def summarize(radii: np.ndarray, ok: np.ndarray, norm: str, method: str, seconds: float) -> dict:
    radii_list = [None if not math.isfinite(r) else float(r) for r in radii]
    return {"method": method, "score": robustness_score(radii_list, ok),
            "curve": certified_accuracy(radii_list, ok, np.asarray(RADII[norm])).tolist(),
            "radii": radii_list, "correct": ok.tolist(), "seconds": seconds}


def write_png(rows: list[dict], path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    betas = [r["beta"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for norm, marker in zip(NORMS, "osd"):
        scores = np.array([r["cells"][norm]["score"] for r in rows])
        label = f"l_{norm}"
        axes[0].plot(betas, scores, marker=marker, label=label)
        gauss = scores[betas.index(2.0)] if 2.0 in betas else scores.max()
        axes[1].plot(betas, scores / gauss, marker=marker, label=label)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("robustness score (average certified radius)")
    axes[1].set_ylabel("score / score at beta = 2 (Gaussian)")
    axes[1].axhline(1.0, color="grey", lw=0.8)
    for ax in axes:
        ax.set_xlabel("general-normal shape beta (1 = Laplace, 2 = Gaussian), std 0.25")
        ax.set_xticks(betas)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Noise shape vs certified robustness on digits (each beta: its own model)",
                 fontsize=10)
    return finish_png(fig, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="first N test digits")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--n-mc", type=int, default=50_000,
                        help="validation samples of each numerical radius curve")
    parser.add_argument("--ladder", type=int, default=128,
                        help="radii scanned per validated direction (geometric, 1.5 decades)")
    parser.add_argument("--grid", type=int, default=40, help="pA grid points per curve")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the numerical radius where a closed form exists")
    parser.add_argument("--betas", type=float, nargs="*", default=list(GENNORM_BETAS))
    add_sampling_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    data = np.load(REPO / "models" / "digits_test.npz")
    xs, ys = data["x"][: args.count], data["y"][: args.count]
    rows = []
    for beta in args.betas:
        rows.append(study_beta(float(beta), xs, ys, args))
        print(f"beta {beta:g}: {rows[-1]['seconds']:.1f} s", file=sys.stderr)
    total_s = time.perf_counter() - t_start
    lines = report(rows, args, len(xs), total_s)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args, len(xs), RESULTS / "noise_shape_study.csv")
    png = RESULTS / "noise_shape_study.png"
    if write_png(rows, png):
        lines += ["", f"![robustness score vs beta]({png.name})"]
    (RESULTS / "noise_shape_study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _mark(cell: dict) -> str:
    return "" if cell["method"] == "closed" else " ᴺ"


def report(rows: list[dict], args, count: int, total_s: float) -> list[str]:
    from verify.network import resolve_device

    lines = [
        "# Noise shape vs certified robustness (general-normal noise, digits)",
        "",
        f"General-normal noise, density ∝ exp(-|x/a|^beta), per-pixel std sigma = "
        f"{rows[0]['sigma']:g} for every beta (a = sigma sqrt(Γ(1/β)/Γ(3/β))); each beta has its "
        f"own base classifier models/digits_mlp_gnNNN.onnx trained with that noise "
        f"(`python -m models.train digits_mlp_gn050`). CERTIFY's sampling with "
        f"n0 = {args.n0}, "
        f"**n = {args.n:,}**, alpha = {args.alpha:g}, seed {args.seed}, on the first {count} "
        f"test digits (models/digits_test.npz), pixels in [0, 1], d = 64; one set of counts per "
        f"model gives all three radii. `python benchmarks/noise_shape_study.py`",
        "",
        f"Machine: {machine()}; device {resolve_device(args.device)}. "
        f"Total run time {total_s / 60:.1f} min.",
        "",
        "Robustness score = area under the certified-accuracy curve = average certified radius "
        "over the digits (0 for abstained or misclassified ones), in the norm's own units. "
        "Radius: closed form (beta = 2 every norm; beta = 1 l_1) or ᴺ numerical (DKW-corrected "
        f"Neyman-Pearson bound on every k-sparse ray k = 1, 2, 4, ..., 64, each on "
        f"{args.n_mc:,} fresh samples, alpha split "
        f"{1 - MC_SHARE:g}/{MC_SHARE:g} between Clopper-Pearson and the Monte Carlo, a ladder of "
        f"{args.ladder} magnitudes per ray), one curve per beta on a grid of {args.grid} pA "
        f"values (`verify.smoothing.numerical_radius_curve`), all three norms read off the same "
        f"rays (so l_1 >= l_2 >= l_inf), and read off downwards per digit.",
        "",
        "| beta | noise | l_1 score | l_2 score | l_inf score | f clean acc. | f acc. under "
        "noise | abstain | wrong | time |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {1.0: "Laplace", 2.0: "Gaussian"}
    for r in rows:
        c = r["cells"]
        lines.append(
            f"| {r['beta']:g} | {names.get(r['beta'], 'general normal')} | "
            + " | ".join(f"{c[nm]['score']:.4f}{_mark(c[nm])}" for nm in NORMS)
            + f" | {r['clean_accuracy']:.3f} | {r['noisy_accuracy']:.3f} | {r['abstain']:.3f} | "
              f"{r['wrong']:.3f} | {r['seconds']:.0f} s |")
    best = {nm: max(rows, key=lambda r: r["cells"][nm]["score"])["beta"] for nm in NORMS}
    lines += ["", "Best beta per norm: " + ", ".join(f"l_{nm}: {best[nm]:g}" for nm in NORMS)
              + ".", "", "Certified accuracy at a few radii (same runs):", ""]
    head = " | ".join(f"l_{nm} r = {r:g}" for nm in NORMS for r in RADII[nm])
    lines += [f"| beta | {head} |", "|---:|" + "---:|" * sum(len(v) for v in RADII.values())]
    for r in rows:
        cells = " | ".join(f"{v:.3f}" for nm in NORMS for v in r["cells"][nm]["curve"])
        lines.append(f"| {r['beta']:g} | {cells} |")
    checked = [r for r in rows if r["checks"]]
    if checked:
        lines += ["", "Numerical vs closed form on the same counts (beta = 1, 2): score with "
                  "each, ratio numerical / closed radius over the pA grid points >= 0.9, the "
                  "largest excess of the numerical radius over the exact closed form "
                  "(<= 0 expected: sound by construction), and the rays' support sizes:", "",
                  "| beta | norm | closed score | numerical score | ratio min | ratio max | "
                  "excess | support |", "|---:|---|---:|---:|---:|---:|---:|---|"]
        for r in checked:
            for nm, ch in r["checks"].items():
                lines.append(f"| {r['beta']:g} | l_{nm} | {ch['closed_score']:.4f} | "
                             f"{ch['score']:.4f} | {ch['ratio_min']:.3f} | {ch['ratio_max']:.3f} "
                             f"| {ch['max_over_closed']:.2g} | "
                             f"{ch['directions']} |")
    lines += ["", "Numerical cells: the rays' support sizes (1 = an axis, 64 = the "
              "dense corner) and the time of each beta's curve: " + "; ".join(
                  f"beta {r['beta']:g} l_{nm} {c['directions']} {c['seconds']:.0f} s"
                  for r in rows for nm, c in r["cells"].items() if c["method"] == "numerical")
              + ".",
              "", "Sampling (CERTIFY's loop, general-normal sampler): " + ", ".join(
                  f"beta {r['beta']:g}: {r['samples_per_s']:,.0f} samples/s" for r in rows) + "."]
    return lines


def write_csv(rows: list[dict], args, count: int, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["beta", "norm", "method", "score", "certacc_r1", "certacc_r2",
                         "certacc_r3", "r1", "r2", "r3", "clean_accuracy", "abstain", "wrong",
                         "curve_seconds", "n", "n0", "alpha", "count", "n_mc", "grid",
                         "ladder"])
        for r in rows:
            cells = [(nm, c) for nm, c in r["cells"].items()]
            cells += [(nm, c) for nm, c in r["checks"].items()]
            for nm, c in cells:
                method = c["method"] if c is r["cells"].get(nm) else "numerical (check)"
                writer.writerow([r["beta"], f"l_{nm}", method, f"{c['score']:.5f}",
                                 *[f"{v:.4f}" for v in c["curve"]], *RADII[nm],
                                 f"{r['clean_accuracy']:.4f}", f"{r['abstain']:.4f}",
                                 f"{r['wrong']:.4f}", f"{c['seconds']:.1f}", args.n, args.n0,
                                 args.alpha, count, args.n_mc, args.grid, args.ladder])


if __name__ == "__main__":
    sys.exit(main())
