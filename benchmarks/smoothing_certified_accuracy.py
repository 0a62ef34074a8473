"""Certified accuracy of Gaussian randomized smoothing on the digits test split (Cohen et al.'s
Table 1 / Figure, in miniature).

    python benchmarks/smoothing_certified_accuracy.py [--n 10000] [--n0 100] [--alpha 0.001]
                                                      [--count 360] [--device auto] [--threads 1]

For sigma in {0.12, 0.25, 0.5, 1.0}: the base classifier models/digits_mlp_noiseNNN.onnx (trained
with Gaussian noise of that sigma), CERTIFY on every test digit through the public API
(`verify.certify_batch(..., method="smoothing", eps=0, norm="2")`), then the fraction of test
digits that g classifies correctly with certified l_2 radius >= r (pixels in [0, 1], d = 64).
n = 10,000 by default (Cohen et al. use 100,000): with alpha = 0.001 the largest radius n can
certify is sigma * PhiInv(0.001^(1/n)) = 3.20 sigma (3.81 sigma at n = 100,000), so the curves end
there. Writes benchmarks/results/smoothing_certified_accuracy.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import verify  # noqa: E402
from benchmarks.reporting import (add_sampling_arguments, finish_png, machine,  # noqa: E402
                                  pyplot)
from verify.smoothing import best_case_radius, certified_accuracy, robustness_score  # noqa: E402

SIGMAS = (0.12, 0.25, 0.5, 1.0)
RADII = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5)
RESULTS = REPO / "benchmarks" / "results"


def certs_device(device: str) -> str:
    from verify.network import resolve_device

    return str(resolve_device(device))


def model_path(sigma: float) -> Path:
    return REPO / "models" / f"digits_mlp_noise{round(sigma * 100):03d}.onnx"


def run_sigma(sigma: float, xs, ys, args) -> dict:
    net = verify.load_onnx(model_path(sigma))
    clean = float((net.forward(xs).argmax(1) == ys).mean())
    t0 = time.perf_counter()
    certs = verify.certify_batch(net, xs, ys, 0.0, norm="2", method="smoothing", sigma=sigma,
                                 n=args.n, n0=args.n0, alpha=args.alpha, seed=args.seed,
                                 batch_size=args.batch_size, device=args.device)
    seconds = time.perf_counter() - t0
    radii = [c.radius for c in certs]  # None: abstain or another class
    correct = [c.radius is not None for c in certs]
    abstain = np.mean([c.details["certify_prediction"] == -1 for c in certs])
    wrong = np.mean([c.details["certify_prediction"] not in (-1, y) for c, y in zip(certs, ys)])
    return {"sigma": sigma, "radii": radii, "correct": correct, "clean_accuracy": clean,
            "abstain": float(abstain), "wrong": float(wrong),
            "curve": certified_accuracy(radii, correct, np.asarray(RADII)),
            "acr": robustness_score(radii, correct), "seconds": seconds,
            "samples_per_s": certs[0].cost["samples_per_s"],
            "best_case": best_case_radius(args.n, args.alpha, sigma),
            "statuses": {s: sum(c.status.value == s for c in certs)
                         for s in ("YES", "NO", "MAYBE")}}


def write_png(rows: list[dict], args, path: Path) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    top = max(max((v for v in r["radii"] if v is not None), default=0.0) for r in rows)
    grid = np.linspace(0, top * 1.15 + 1e-9, 400)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in rows:
        ax.plot(grid, certified_accuracy(row["radii"], row["correct"], grid),
                label=f"σ = {row['sigma']:g}")
    ax.set_xlabel("l_2 radius r (pixels in [0, 1], d = 64)")
    ax.set_ylabel("certified accuracy")
    ax.set_title(f"Gaussian smoothing on digits (n = {args.n:,}, α = {args.alpha:g}, "
                 f"{len(rows[0]['radii'])} test digits)", fontsize=10)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    return finish_png(fig, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--count", type=int, default=None, help="first N test digits (all)")
    add_sampling_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = np.load(REPO / "models" / "digits_test.npz")
    xs, ys = data["x"][: args.count], data["y"][: args.count]
    rows = []
    for sigma in SIGMAS:
        rows.append(run_sigma(sigma, xs, ys, args))
        print(f"sigma {sigma:g}: {rows[-1]['seconds']:.1f} s", file=sys.stderr)

    best = np.max([r["curve"] for r in rows], axis=0)
    header = "| sigma | " + " | ".join(f"r = {r:g}" for r in RADII) + \
        " | ACR | abstain | wrong | f clean acc. | time |"
    lines = [
        "# Randomized smoothing: certified accuracy on the digits test split",
        "",
        f"Gaussian noise, CERTIFY with n0 = {args.n0}, **n = {args.n:,}** (Cohen et al. use "
        f"100,000; a smaller n caps the radius at sigma * PhiInv(alpha^(1/n)) = "
        f"{best_case_radius(args.n, args.alpha, 1.0):.2f} sigma), alpha = {args.alpha:g}, "
        f"seed {args.seed}; {len(xs)} test digits (models/digits_test.npz), pixels in [0, 1], "
        f"l_2 radius in pixel units (d = 64). Base classifiers models/digits_mlp_noiseNNN.onnx "
        f"trained with Gaussian noise of the same sigma. Device {certs_device(args.device)}"
        f", {args.threads} CPU thread(s). `python benchmarks/smoothing_certified_accuracy.py`",
        "",
        f"Machine: {machine()}.",
        "",
        "Certified accuracy = fraction of test digits that g classifies correctly with certified "
        "radius >= r (each at confidence 1 - alpha). ACR = average certified radius = area "
        "under the curve (robustness score). abstain / wrong: CERTIFY's abstentions and "
        "non-abstained wrong classes. f clean acc.: the base classifier without noise.",
        "",
        header,
        "|---|" + "---:|" * (len(RADII) + 5),
    ]
    for row in rows:
        cells = " | ".join(f"{v:.3f}" for v in row["curve"])
        lines.append(f"| {row['sigma']:g} | {cells} | {row['acr']:.3f} | {row['abstain']:.3f} | "
                     f"{row['wrong']:.3f} | {row['clean_accuracy']:.3f} | "
                     f"{row['seconds']:.1f} s |")
    lines.append("| best sigma | " + " | ".join(f"{v:.3f}" for v in best) + " | | | | | |")
    lines += ["", "Samples per second (CERTIFY's sampling loop): " + ", ".join(
        f"sigma {r['sigma']:g}: {r['samples_per_s']:,.0f}" for r in rows) + "."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "smoothing_certified_accuracy.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sigma", *[f"r={r:g}" for r in RADII], "acr", "abstain", "wrong",
                         "clean_accuracy", "seconds", "n", "n0", "alpha", "count"])
        for row in rows:
            writer.writerow([row["sigma"], *[f"{v:.4f}" for v in row["curve"]],
                             f"{row['acr']:.4f}", f"{row['abstain']:.4f}", f"{row['wrong']:.4f}",
                             f"{row['clean_accuracy']:.4f}", f"{row['seconds']:.2f}", args.n,
                             args.n0, args.alpha, len(xs)])
    png = RESULTS / "smoothing_certified_accuracy.png"
    if write_png(rows, args, png):
        lines += ["", f"![certified accuracy curves]({png.name})"]
    (RESULTS / "smoothing_certified_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
