"""ReLU stability and certified training: what training does to verification.

    python benchmarks/relu_stability.py [--n 30] [--n-cert 360] [--eps-cert 0.01 0.03 0.05]
                                        [--milp-bounds crown ibp] [--threads 1]

Part 1, digits_mlp_plain vs digits_mlp_rs (same 64-50-50-10 architecture, epochs and seed; the
second trained with the ReLU-stability regulariser, L1 and pruning of Xiao et al., ICLR 2019), on
the first --n test digits at the models' training eps (l_inf ∩ [0, 1]): test accuracy, mean number
of unstable hidden neurons (pre-activation bounds straddling 0) under IBP and CROWN bounds
(`verify.bounds.ibp/crown.layer_bounds`), and `verify.certify(..., method="milp")` per input:
median and max time, MILPs solved, B&B nodes, YES / NO / MAYBE. For each --milp-bounds the
MILP runs with those neuron bounds (default options otherwise: LP screen, PGD attack, stop on the
sign); the two models run back to back per input, so both see the same machine load.

Part 2, digits_mlp vs digits_mlp_ibp (IBP certified training, Gowal et al. 2018): IBP and CROWN
certified accuracy (YES and correctly classified) on the first --n-cert test digits at each
--eps-cert, and the gap between the two models.

Writes benchmarks/results/relu_stability.csv (one row per measurement) and .md.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import verify  # noqa: E402
from verify import Conv2d, Dense, ReLU, Status  # noqa: E402
from verify.bounds import InputBatch, crown, ibp  # noqa: E402
from benchmarks.reporting import machine  # noqa: E402

MODELS = REPO / "models"
RESULTS = REPO / "benchmarks" / "results"


def metadata(name: str) -> dict:
    return json.loads((MODELS / f"{name}.json").read_text())


def unstable_counts(net: verify.Network, bounds) -> np.ndarray:
    """Per input: hidden neurons whose pre-activation bounds straddle 0."""
    counts = np.zeros(len(bounds[0][0]))
    for k, layer in enumerate(net.layers[:-1]):
        if isinstance(layer, (Dense, Conv2d)) and isinstance(net.layers[k + 1], ReLU):
            lower, upper = bounds[k]
            counts += ((lower < 0) & (upper > 0)).sum(1).numpy()
    return counts


def batch_of(net: verify.Network, xs, ys, eps: float) -> InputBatch:
    specs = [verify.robustness_spec(net.input_size, net.output_size, x, int(y), eps, "inf", (0, 1))
             for x, y in zip(xs, ys)]
    return InputBatch.from_specs(specs, torch.device("cpu"))


def stability_part(args, xs, ys) -> list[dict]:
    names = ("digits_mlp_plain", "digits_mlp_rs")
    metas = {n: metadata(n) for n in names}
    eps = metas["digits_mlp_rs"]["eps"]
    assert metas["digits_mlp_plain"]["eps"] == eps
    nets = {n: verify.load_onnx(MODELS / f"{n}.onnx") for n in names}
    x, y = xs[:args.n], ys[:args.n]
    rows = []
    for name in names:
        net = nets[name]
        batch = batch_of(net, x, y, eps)
        row = {"section": "stability", "model": name, "eps": eps, "inputs": len(x),
               "test_accuracy": metas[name]["test_accuracy"],
               "accuracy_on_inputs": float((net.forward(x).argmax(1) == y).mean()),
               "relus": net.n_relus,
               "zero_weights": sum(int((l.weight == 0).sum()) for l in net.layers
                                   if isinstance(l, Dense)),
               "unstable_ibp": float(unstable_counts(net, ibp.layer_bounds(net, batch)).mean()),
               "unstable_crown": float(unstable_counts(net, crown.layer_bounds(net, batch)).mean())}
        rows.append(row)
    for bounds in args.milp_bounds:
        records = {n: [] for n in names}
        for i in range(len(x)):
            for name in names:  # back to back: both models see the same load
                t0 = time.perf_counter()
                cert = verify.certify(nets[name], x[i], int(y[i]), eps, method="milp",
                                      domain=(0, 1), bounds=bounds)
                seconds = time.perf_counter() - t0
                records[name].append((cert.status.value, seconds, cert.cost.get("milps", 0),
                                      cert.cost.get("milp_nodes", 0)))
        for row in rows:
            recs = records[row["model"]]
            statuses = [r[0] for r in recs]
            times = [r[1] for r in recs]
            row.update({
                f"milp_{bounds}_median_s": statistics.median(times),
                f"milp_{bounds}_max_s": max(times),
                f"milp_{bounds}_milps": sum(r[2] for r in recs),
                f"milp_{bounds}_nodes": sum(r[3] for r in recs),
                f"milp_{bounds}_yes": statuses.count("YES"),
                f"milp_{bounds}_no": statuses.count("NO"),
                f"milp_{bounds}_maybe": statuses.count("MAYBE"),
            })
    return rows


def certified_part(args, xs, ys) -> list[dict]:
    names = ("digits_mlp", "digits_mlp_ibp")
    nets = {n: verify.load_onnx(MODELS / f"{n}.onnx") for n in names}
    x, y = xs[:args.n_cert], ys[:args.n_cert]
    rows = []
    for eps in args.eps_cert:
        for name in names:
            row = {"section": "certified", "model": name, "eps": eps, "inputs": len(x),
                   "clean_accuracy": float((nets[name].forward(x).argmax(1) == y).mean())}
            for method in ("ibp", "crown"):
                t0 = time.perf_counter()
                certs = verify.certify_batch(nets[name], x, y, eps, method=method, domain=(0, 1),
                                             device="cpu")
                row[f"{method}_certified"] = float(np.mean([c.status is Status.YES
                                                            for c in certs]))
                row[f"{method}_seconds"] = time.perf_counter() - t0
            rows.append(row)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_md(stab: list[dict], cert: list[dict], args, path: Path) -> list[str]:
    rs = metadata("digits_mlp_rs")
    ibp_meta = metadata("digits_mlp_ibp")
    eps = stab[0]["eps"]
    lines = [
        "# ReLU stability and certified training",
        "",
        f"Machine: {machine()}. HiGHS MIP single-threaded. Shared machine: absolute "
        "times vary from run to run (the two models of a pair run back to back per input).",
        "",
        f"## digits_mlp_plain vs digits_mlp_rs (l_inf eps {eps:g} ∩ [0, 1], first {stab[0]['inputs']}"
        " test digits)",
        "",
        f"Both 64-50-50-10, {rs['epochs']} epochs, seed {rs['seed']}. digits_mlp_rs: RS loss weight "
        f"{rs['regulariser']['rs_weight']:g}, L1 weight {rs['regulariser']['l1_weight']:g}, "
        f"pruning below {rs['regulariser']['prune_below']:g} "
        f"({rs['pruning']['sparsity']:.1%} of the weights zero); RS bounds at eps {rs['eps']:g}.",
        "",
    ]
    head = ["model", "test acc", "unstable ReLUs (IBP)", "unstable ReLUs (CROWN)"]
    for b in args.milp_bounds:
        head += [f"MILP ({b} bounds) median / max s", f"MILPs, nodes ({b})",
                 f"YES / NO / MAYBE ({b})"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in stab:
        cells = [r["model"], f"{r['test_accuracy']:.4f}",
                 f"{r['unstable_ibp']:.1f} / {r['relus']}",
                 f"{r['unstable_crown']:.1f} / {r['relus']}"]
        for b in args.milp_bounds:
            cells += [f"{r[f'milp_{b}_median_s']:.3f} / {r[f'milp_{b}_max_s']:.2f}",
                      f"{r[f'milp_{b}_milps']}, {r[f'milp_{b}_nodes']}",
                      f"{r[f'milp_{b}_yes']} / {r[f'milp_{b}_no']} / {r[f'milp_{b}_maybe']}"]
        lines.append("| " + " | ".join(cells) + " |")
    speedups = []
    for b in args.milp_bounds:
        plain, reg = stab[0][f"milp_{b}_median_s"], stab[1][f"milp_{b}_median_s"]
        worst = stab[0][f"milp_{b}_max_s"] / stab[1][f"milp_{b}_max_s"]
        speedups.append(f"{plain / reg:.1f}x with {b} bounds (max time: {worst:.0f}x)")
    lines += ["", "Unstable: mean over inputs of the hidden neurons whose pre-activation bounds "
              "straddle 0. MILP time: `verify.certify(..., method=\"milp\")` per input, "
              "everything included (bounds, LP screen, attack, MILPs); MILPs / nodes: totals "
              "over the inputs. Median MILP time, plain / rs: " + ", ".join(speedups) + ".", ""]
    lines += [
        f"## digits_mlp vs digits_mlp_ibp: certified accuracy (first {cert[0]['inputs']} test digits)",
        "",
        f"digits_mlp_ibp: IBP-trained at eps {ibp_meta['eps']:g} (eps ramped 0 -> "
        f"{ibp_meta['eps']:g} over {ibp_meta['schedule']['ramp_epochs']} epochs after "
        f"{ibp_meta['schedule']['warmup_epochs']} warm-up epochs, kappa "
        f"{ibp_meta['schedule']['kappa_start']:g} -> {ibp_meta['schedule']['kappa_end']:g}). "
        "Certified accuracy = share of inputs with a YES (a YES implies correct classification).",
        "",
        "| eps | digits_mlp IBP | digits_mlp_ibp IBP | gap IBP | digits_mlp CROWN | "
        "digits_mlp_ibp CROWN | gap CROWN |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(r["model"], r["eps"]): r for r in cert}
    for e in args.eps_cert:
        a, b = by[("digits_mlp", e)], by[("digits_mlp_ibp", e)]
        lines.append(
            f"| {e:g} | {a['ibp_certified']:.3f} | {b['ibp_certified']:.3f} | "
            f"{b['ibp_certified'] - a['ibp_certified']:+.3f} | {a['crown_certified']:.3f} | "
            f"{b['crown_certified']:.3f} | {b['crown_certified'] - a['crown_certified']:+.3f} |")
    a, b = by[("digits_mlp", args.eps_cert[0])], by[("digits_mlp_ibp", args.eps_cert[0])]
    lines += ["", f"Clean accuracy on these inputs: digits_mlp {a['clean_accuracy']:.4f}, "
              f"digits_mlp_ibp {b['clean_accuracy']:.4f}.", "",
              "Per model and measurement: relu_stability.csv."]
    path.write_text("\n".join(lines) + "\n")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="inputs for the stability part")
    parser.add_argument("--n-cert", type=int, default=360, help="inputs for certified accuracy")
    parser.add_argument("--eps-cert", type=float, nargs="+", default=[0.01, 0.03, 0.05])
    parser.add_argument("--milp-bounds", nargs="+", default=["crown", "ibp"],
                        choices=["crown", "ibp"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    data = np.load(MODELS / "digits_test.npz")
    xs, ys = data["x"], data["y"]
    stab = stability_part(args, xs, ys)
    cert = certified_part(args, xs, ys)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_csv(stab + cert, RESULTS / "relu_stability.csv")
    lines = write_md(stab, cert, args, RESULTS / "relu_stability.md")
    print("\n".join(lines[4:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
