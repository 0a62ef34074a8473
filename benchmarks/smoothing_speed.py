"""CERTIFY's sampling speed against a bare loop of forward passes, on the same device in one run.

    python benchmarks/smoothing_speed.py [--device auto] [--threads 1] [--n 1000000]
                                         [--batch-size 10000] [--repeats 7]

Measured in interleaved pairs, `--repeats` times (medians reported):
- bare:    the base model's batched torch forward pass over pre-made noisy batches (noise drawn and
           added before the clock starts), cycling through 4 of them until n samples are done;
- certify: `verify.certify(..., method="smoothing")` with n samples (+ n0 = 100): noise drawn on
           the device, added, the same forward pass, argmax, counting on the device, then the
           Clopper-Pearson bound and the certificate. Its own clock around the sampling loop
           gives `cost["samples_per_s"]`.
Overhead = certify's end-to-end time / the bare loop's time for the same n - 1, per pair; on CPU
in process CPU time (other users of a shared machine do not count), on CUDA in wall time after
synchronising. Goal: at most 10%.
Models: the bundled smoothing base classifier digits_mlp_noise025 (64-100-100-10) and, to show
how the overhead scales with the cost of a forward pass, a wider random MLP 64-512-512-10.
Same device, dtype (float32) and batch size for both loops. Writes
benchmarks/results/smoothing_speed.md (the device in the file name when it is not the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import verify  # noqa: E402
from verify.network import resolve_device  # noqa: E402
from benchmarks.reporting import clocks, machine  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def wide_mlp(rng: np.random.Generator, hidden: int = 512) -> verify.Network:
    sizes = [64, hidden, hidden, 10]
    layers = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(verify.Dense(rng.normal(size=(b, a)) * np.sqrt(2 / a), np.zeros(b), (a,),
                                   (b,)))
        if k < len(sizes) - 2:
            layers.append(verify.ReLU((b,)))
    return verify.Network(layers, (64,), name=f"mlp_64_{hidden}_{hidden}_10")


def bare_loop(net: verify.Network, batches: list[torch.Tensor], n: int,
              device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds of forward passes (no noise, no counting) over pre-made batches."""
    size = len(batches[0])
    wall, cpu = clocks(device)
    with torch.inference_mode():
        for i, start in enumerate(range(0, n, size)):
            net.torch_forward(batches[i % len(batches)][:min(size, n - start)])
    wall2, cpu2 = clocks(device)
    return wall2 - wall, cpu2 - cpu


def measure(net, x, label, sigma, n, args, device) -> dict:
    gen = torch.Generator(device).manual_seed(1)
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    batches = [xt + sigma * torch.randn(args.batch_size, x.size, generator=gen, device=device)
               for _ in range(4)]
    options = dict(norm="2", method="smoothing", sigma=sigma, n=n, n0=100,
                   batch_size=args.batch_size, device=str(device))
    verify.certify(net, x, label, 0.0, **options)  # warm-up
    bare_loop(net, batches, n, device)
    rows = []
    for rep in range(args.repeats):
        bare_wall, bare_cpu = bare_loop(net, batches, n, device)
        wall, cpu = clocks(device)
        cert = verify.certify(net, x, label, 0.0, seed=rep, **options)
        wall2, cpu2 = clocks(device)
        buffer = torch.empty(args.batch_size, x.size, device=device)
        rng_wall, rng_cpu = clocks(device)
        for _ in range(0, n, args.batch_size):
            buffer.normal_(0.0, sigma, generator=gen)
        rng_wall2, rng_cpu2 = clocks(device)
        rng_share = ((rng_cpu2 - rng_cpu) / bare_cpu if device.type == "cpu"
                     else (rng_wall2 - rng_wall) / bare_wall)
        rows.append({"rng_share": rng_share, "bare": n / bare_wall,
                     "certify": cert.cost["samples_per_s"],
                     "end_to_end": (n + 100) / (wall2 - wall),
                     "ratio_wall": (wall2 - wall) / bare_wall * n / (n + 100) - 1,
                     "ratio_cpu": (cpu2 - cpu) / bare_cpu * n / (n + 100) - 1})
    key = "ratio_cpu" if device.type == "cpu" else "ratio_wall"
    for r in rows:
        r["beyond_rng"] = r[key] - r["rng_share"]
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {"model": net.name, "n": n, **med, "overhead": med[key],
            "spread": (min(r[key] for r in rows), max(r[key] for r in rows))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--n", type=int, default=1_000_000,
                        help="samples per run on the digits model (a tenth on the wide MLP)")
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = np.load(REPO / "models" / "digits_test.npz")
    x, label = data["x"][0], int(data["y"][0])
    nets = [verify.load_onnx(REPO / "models" / "digits_mlp_noise025.onnx"),
            wide_mlp(np.random.default_rng(0))]
    rows = [measure(nets[0], x, label, 0.25, args.n, args, device),
            measure(nets[1], x, label, 0.25, max(args.n // 10, args.batch_size), args, device)]

    where = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    lines = [
        "# Randomized smoothing: CERTIFY's sampling speed vs bare forward passes",
        "",
        f"Device {where} ({args.threads} CPU thread(s)), float32, batch {args.batch_size}, "
        f"Gaussian sigma 0.25, n0 = 100, medians of {args.repeats} interleaved pairs of runs "
        f"(`python benchmarks/smoothing_speed.py`).",
        "",
        f"Machine: {machine()}.",
        "",
        "| model | n per run | bare forward loop (samples/s) | CERTIFY sampling loop "
        "(samples/s) | CERTIFY end to end (samples/s) | overhead | overhead range | "
        "drawing the noise alone | overhead beyond drawing the noise |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['n']:,} | {r['bare']:,.0f} | {r['certify']:,.0f} | "
                     f"{r['end_to_end']:,.0f} | {100 * r['overhead']:+.1f}% | "
                     f"{100 * r['spread'][0]:+.1f}% .. {100 * r['spread'][1]:+.1f}% | "
                     f"{100 * r['rng_share']:.1f}% | {100 * r['beyond_rng']:+.1f}% |")
    lines += [
        "",
        "Overhead = CERTIFY's end-to-end time / the bare loop's time for the same number of "
        "samples - 1, per interleaved pair (median and range; goal <= 10%), measured in "
        f"{'process CPU time (fair on a shared CPU)' if device.type == 'cpu' else 'wall time'}; "
        "samples/s columns are wall-clock medians. The bare "
        "loop gets its noisy batches for free (made before the clock starts); CERTIFY draws the "
        "noise on the device, adds the input, runs the same forward pass, takes the argmax and "
        "counts on the device. End to end adds the n0 selection pass, the Clopper-Pearson "
        "bounds and the certificate. Drawing the noise alone: the time of `normal_` for the "
        "same n x 64 numbers relative to the bare loop, the floor of any sampler that draws "
        "fresh noise.",
    ]
    if device.type == "cpu":
        lines += ["", "GPU figures: not measured (no GPU in this run); on a machine with one, "
                      "`--device auto` runs the same comparison there and writes "
                      "smoothing_speed_cuda.md."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    out = RESULTS / f"smoothing_speed{suffix}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
