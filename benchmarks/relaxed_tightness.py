"""Relaxed certifiers side by side: certified count, mean margin lower bound, time per input.

    python benchmarks/relaxed_tightness.py [--threads 1] [--device auto] [--quick] [--processes 5]
    python benchmarks/relaxed_tightness.py --base REF [--rounds 5]

Models: the bundled digits MLP (first 100 test digits) and, when benchmarks/data is present,
VNN-COMP mnist_fc mnist-net_256x2 (its 15 images, recovered from the prop_*_0.03 VNN-LIB boxes).
Both on l_inf balls ∩ [0, 1] over a grid of eps. Also: CROWN's cost in "forward-pass
equivalents" (time of its bound computation for the 100 digits as one batch / time of one batched
float64 forward pass of the same 100 inputs on the same device), each in `--processes` fresh
processes: how often its large tensors fault in fresh pages differs between processes.

Writes benchmarks/results/relaxed_tightness.csv and .md. Add a method by appending to METHODS:
(name passed to verify.certify_batch, options).

With `--base REF`: this tree against commit REF (a temporary `git worktree`) side by side, eps
0.03 on both models: `--rounds` rounds, each running every method once per tree in a fresh
process per tree (torch on 1 thread), the order of the two trees alternating from round to
round. Per model and method: certified counts and mean margin lower bounds of both (equal when
the arithmetic did not change) and the median over rounds of the process-CPU-time ratio
this / base. Writes benchmarks/results/relaxed_tightness_side_by_side.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Optional
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import verify  # noqa: E402
from verify.bounds import InputBatch  # noqa: E402
from verify.bounds import crown, ibp  # noqa: E402
from verify.network import resolve_device  # noqa: E402
from benchmarks.reporting import clocks, machine  # noqa: E402

METHODS: list[tuple[str, dict]] = [
    ("ibp", {}),
    ("crown", {}),
    ("alpha-crown", {"early_stop": False}),  # all steps for every input: tightness, not speed
    ("lp", {}),
]
DIGITS_EPS = [0.01, 0.02, 0.03, 0.05, 0.08]
MNIST_EPS = [0.01, 0.02, 0.03, 0.05]
MNIST_FC = REPO / "benchmarks" / "data" / "mnist_fc"
RESULTS = REPO / "benchmarks" / "results"


def digits() -> tuple[verify.Network, np.ndarray, np.ndarray]:
    net = verify.load_onnx(REPO / "models" / "digits_mlp.onnx")
    data = np.load(REPO / "models" / "digits_test.npz")
    return net, data["x"][:100], data["y"][:100]


def mnist_fc() -> tuple[verify.Network, np.ndarray, np.ndarray]:
    """mnist-net_256x2 and its 15 images: each prop_i_0.03 box is [x - eps, x + eps] ∩ [0, 1]."""
    net = verify.load_onnx(MNIST_FC / "onnx" / "mnist-net_256x2.onnx")
    xs, ys = [], []
    for i in range(15):
        text = (MNIST_FC / "vnnlib" / f"prop_{i}_0.03.vnnlib").read_text()
        lower, upper = np.zeros(784), np.zeros(784)
        for op, j, value in re.findall(r"\(assert \((<=|>=) X_(\d+) ([-+0-9.eE]+)\)\)", text):
            (upper if op == "<=" else lower)[int(j)] = float(value)
        eps = float(np.max(upper - lower)) / 2
        x = np.where(lower <= 0, upper - eps,
                     np.where(upper >= 1, lower + eps, (lower + upper) / 2))
        xs.append(np.clip(x, 0, 1))
        ys.append(int(re.search(r"label: (\d+)", text).group(1)))
    return net, np.array(xs), np.array(ys)


def with_device(method: str, options: dict, device: str) -> dict:
    """The method's options plus `device` where the method takes one (LP runs on HiGHS)."""
    from verify.backends import get_backend

    fields = get_backend(method).options_type.__dataclass_fields__
    return {**options, **({"device": device} if "device" in fields else {})}


def run_grid(model: str, net, xs, ys, eps_grid, device: str) -> list[dict]:
    for method, options in METHODS:  # warm-up (imports, kernels) outside the timings
        verify.certify_batch(net, xs[:2], ys[:2], eps_grid[0], "inf", method, (0, 1),
                             **with_device(method, options, device))
    rows = []
    for eps in eps_grid:
        for method, options in METHODS:
            t0 = time.perf_counter()
            certs = verify.certify_batch(net, xs, ys, eps, "inf", method, (0, 1),
                                         **with_device(method, options, device))
            wall = time.perf_counter() - t0
            margins = [np.mean([v for v in c.margin_lower if v is not None]) for c in certs]
            rows.append({
                "model": model, "eps": eps, "method": method, "inputs": len(xs),
                "certified": sum(c.status is verify.Status.YES for c in certs),
                "counterexamples": sum(c.status is verify.Status.NO for c in certs),
                "mean_margin_lower": float(np.mean(margins)),
                "median_time_per_input_ms": 1e3 * statistics.median(c.time_s for c in certs),
                "wall_s": wall,
            })
            print(f"{model:16s} eps {eps:<5g} {method:12s} certified {rows[-1]['certified']:3d}/"
                  f"{len(xs)}  mean margin lower {rows[-1]['mean_margin_lower']:9.4f}  "
                  f"{rows[-1]['median_time_per_input_ms']:8.3f} ms/input", flush=True)
    return rows


def seconds(fn, device: torch.device, calls: int = 1) -> float:
    """Mean seconds per call of `calls` calls: process CPU time on the CPU, wall time on CUDA."""
    wall, cpu = clocks(device)
    for _ in range(calls):
        fn()
    wall2, cpu2 = clocks(device)
    return ((cpu2 - cpu) if device.type == "cpu" else (wall2 - wall)) / calls


def forward_pass_equivalents(net, xs, ys, eps: float, device: str, repeats: int = 15) -> dict:
    """CROWN's margin bounds for all inputs as one batch, in units of one batched forward pass:
    `repeats` interleaved rounds (50 forward passes, one CROWN, one CROWN-IBP), ratios taken
    within each round, medians and ranges reported."""
    dev = resolve_device(device)
    specs = [verify.robustness_spec(net.input_size, net.output_size, x, int(y), eps, "inf", (0, 1))
             for x, y in zip(xs, ys)]
    batch = InputBatch.from_specs(specs, dev)
    inputs = torch.as_tensor(xs, dtype=torch.float64, device=dev)
    crown.margin_lower_bounds(net, batch)  # warm-up
    rounds = []
    for _ in range(repeats):
        forward = seconds(lambda: net.torch_forward(inputs), dev, calls=50)
        full = seconds(lambda: crown.margin_lower_bounds(net, batch), dev)
        cheap = seconds(lambda: crown.margin_lower_bounds(net, batch, "ibp"), dev)
        rounds.append((forward, full, cheap))
    proved = [int((crown.margin_lower_bounds(net, batch, kind)[0].min(1).values > 0).sum())
              for kind in ("crown", "ibp")]
    ops = [torch_ops(lambda: net.torch_forward(inputs)),
           torch_ops(lambda: crown.margin_lower_bounds(net, batch))]
    crown_fpe = [full / forward for forward, full, _ in rounds]
    ibp_fpe = [cheap / forward for forward, _, cheap in rounds]
    return {"inputs": len(xs), "eps": eps, "rounds": repeats,
            "forward_ms": 1e3 * statistics.median(r[0] for r in rounds),
            "crown_ms": 1e3 * statistics.median(r[1] for r in rounds),
            "forward_pass_equivalents": statistics.median(crown_fpe),
            "fpe_range": (min(crown_fpe), max(crown_fpe)),
            "crown_ibp_ms": 1e3 * statistics.median(r[2] for r in rounds),
            "crown_ibp_equivalents": statistics.median(ibp_fpe), "proved": proved,
            "torch_ops": ops, **arithmetic(net, batch)}


def arithmetic(net, batch: InputBatch) -> dict:
    """CROWN's multiply-adds on the batch in forward passes' worth, for a network of Dense and
    ReLU layers: 2 rows per CROWN-bounded neuron through the affine layers below it (on average,
    and padded to the input with the most, as the batch runs them) plus the margin rows through
    all of them."""
    dense = [layer for layer in net.layers if isinstance(layer, verify.Dense)]
    if len(dense) != sum(isinstance(layer, verify.network.AFFINE) for layer in net.layers):
        return {}

    def macs(layers) -> int:
        return sum(int(np.prod(layer.weight.shape)) for layer in layers
                   if isinstance(layer, verify.Dense))

    with torch.no_grad():
        _, selections = crown.propagate(net, batch, ibp.layer_bounds(net, batch),
                                        include_last=False)
    margins = batch.C.shape[1] * macs(dense)
    mean = padded = float(margins)
    neurons, most = 0.0, 0
    for k, (index, valid) in selections.items():
        below = macs(net.layers[:k])
        neurons += float(valid.sum()) / len(batch)
        most = max(most, index.shape[1])
        mean += 2 * float(valid.sum()) / len(batch) * below
        padded += 2 * index.shape[1] * below
    return {"crown_neurons_per_input": neurons, "crown_neurons_most": most,
            "arithmetic_fpe": mean / macs(dense), "arithmetic_fpe_padded": padded / macs(dense)}


def torch_ops(fn) -> int:
    """How many torch operations fn issues (top-level aten calls, as the profiler sees them)."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


# glibc settings that keep freed memory in the process: no fresh pages for each large tensor.
KEEP_FREED = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def cost_in_fresh_processes(count: int, device: str, threads: Optional[int] = None,
                            env: Optional[dict] = None) -> dict:
    """forward_pass_equivalents, each in its own fresh process (`env` added to its environment;
    glibc reads KEEP_FREED at start-up). Whether the large tensors fault in fresh pages on every
    call depends on where glibc's heap happens to lie, which differs from process to process, so
    one process is not a measurement. Returns the process with the median figure, plus every
    process's figure (`process_fpe`)."""
    runs = []
    for _ in range(count):
        command = [sys.executable, __file__, "--cost-only", "--device", device]
        command += ["--threads", str(threads)] if threads else []
        done = subprocess.run(command, capture_output=True, text=True, check=True,
                              env={**os.environ, **(env or {})})
        runs.append(json.loads(done.stdout.splitlines()[-1]))
    runs.sort(key=lambda run: run["forward_pass_equivalents"])
    return {**runs[len(runs) // 2], "processes": count,
            "process_fpe": [run["forward_pass_equivalents"] for run in runs]}


def write_results(rows: list[dict], cost: dict, kept: Optional[dict], header: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "relaxed_tightness.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# Relaxed certifiers: tightness and cost", "", header, "",
             "l_inf balls ∩ [0, 1]. certified = YES; NO = the input itself is misclassified; "
             "mean margin lower = mean over inputs and rows of the lower bound on z_y - z_j; "
             "time = median per input (batched).", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += [f"## {model}", "", "| eps | " + " | ".join(m for m, _ in METHODS) + " |",
                  "|---|" + "---|" * len(METHODS)]
        for eps in dict.fromkeys(r["eps"] for r in rows if r["model"] == model):
            cells = []
            for method, _ in METHODS:
                r = next(r for r in rows if r["model"] == model and r["eps"] == eps
                         and r["method"] == method)
                cells.append(f"{r['certified']}/{r['inputs']}, {r['mean_margin_lower']:.3f}, "
                             f"{r['median_time_per_input_ms']:.2f} ms")
            lines.append(f"| {eps:g} | " + " | ".join(cells) + " |")
        lines += ["", "Cells: certified / inputs, mean margin lower bound, median time per input.",
                  ""]
    low, high = cost["fpe_range"]
    lines += ["## CROWN in forward-pass equivalents", "",
              f"digits_mlp, {cost['inputs']} inputs as one batch, eps {cost['eps']:g}, "
              f"{cost['processes']} fresh processes of {cost['rounds']} interleaved rounds each, "
              "process CPU time. Per process, the median of its rounds' ratios: "
              f"{_figures(cost['process_fpe'])}. The median process: one batched forward pass "
              f"{cost['forward_ms']:.3f} ms, CROWN margin bounds {cost['crown_ms']:.2f} ms: "
              f"**{cost['forward_pass_equivalents']:.0f} forward-pass equivalents** (its rounds' "
              f"range {low:.0f} .. {high:.0f}), {cost['proved'][0]} proved. "
              "CROWN-IBP (`intermediate=\"ibp\"`: interval neuron bounds, one backward pass from "
              f"the margins): {cost['crown_ibp_ms']:.2f} ms, "
              f"**{cost['crown_ibp_equivalents']:.0f} forward-pass equivalents**, "
              f"{cost['proved'][1]} proved."]
    if kept is not None:
        env = " ".join(f"{k}={v}" for k, v in KEEP_FREED.items())
        lines += ["", f"The same in {kept['processes']} fresh processes started with `{env}`: "
                  f"{_figures(kept['process_fpe'])}; the median process: CROWN "
                  f"{kept['crown_ms']:.2f} ms, **{kept['forward_pass_equivalents']:.0f} "
                  "forward-pass equivalents**. With glibc's defaults, whether the multi-MB "
                  "coefficient tensors come from fresh pages that fault in on every call depends "
                  "on the heap's layout, which differs between processes (hence the spread above); "
                  "these settings keep freed memory for reuse in every process. They are not the "
                  "default: they slow other work (see docs/crown.md)."]
    arithmetic_text = "" if "arithmetic_fpe" not in cost else (
        f"Here that is {cost['crown_neurons_per_input']:.1f} neurons per input on average "
        f"({cost['crown_neurons_most']} at most; the batch pads to the most), each row going "
        "through the affine layers below its neuron, plus the margin rows through all of them: "
        f"{cost['arithmetic_fpe']:.0f} forward passes in multiply-adds "
        f"({cost['arithmetic_fpe_padded']:.0f} with the padding). ")
    lines += ["", "Where the time goes. Full CROWN bounds every neuron that intervals leave "
              "unstable with its own backward pass (lower and upper: 2 rows each). "
              + arithmetic_text + "The forward pass of 100 inputs, though, is not "
              f"arithmetic-bound: it is {cost['torch_ops'][0]} torch operations, against CROWN's "
              f"{cost['torch_ops'][1]} (the ReLU relaxations, the float64 rounding allowances, "
              "the interval bounds CROWN is intersected with), each a few microseconds of "
              "dispatch before any arithmetic.", ""]
    (RESULTS / "relaxed_tightness.md").write_text("\n".join(lines))


# One round of one tree, run as `python -c SIDE_WORKER SETUP.json` with PYTHONPATH = that tree:
# the quick grid of METHODS per model (a warm-up call first), process CPU time per method.
SIDE_WORKER = """
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
import verify
setup = json.load(open(sys.argv[1]))
rows = []
for model in setup["models"]:
    net = verify.load_onnx(model["onnx"])
    data = np.load(model["data"])
    xs, ys = data["x"], data["y"]
    for method, options in setup["methods"]:
        verify.certify_batch(net, xs[:2], ys[:2], setup["eps"], "inf", method, (0, 1), **options)
        t0 = time.process_time()
        certs = verify.certify_batch(net, xs, ys, setup["eps"], "inf", method, (0, 1), **options)
        cpu = time.process_time() - t0
        margins = [np.mean([v for v in c.margin_lower if v is not None]) for c in certs]
        rows.append({"model": model["name"], "method": method, "cpu_s": cpu,
                     "certified": sum(c.status is verify.Status.YES for c in certs),
                     "mean_margin_lower": float(np.mean(margins))})
print(json.dumps(rows))
"""


def side_by_side(base: str, rounds: int, device: str) -> Path:
    """This tree against commit `base` (see the module docstring); returns the .md written."""
    import tempfile

    sha = subprocess.run(["git", "rev-parse", "--short", base], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    here = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = []
        for name, load in [("digits_mlp", digits)] + ([("mnist_fc 256x2", mnist_fc)]
                                                       if MNIST_FC.is_dir() else []):
            _, xs, ys = load()
            np.savez(tmp / f"{len(models)}.npz", x=xs, y=ys)
            onnx = REPO / "models" / "digits_mlp.onnx" if name == "digits_mlp" else \
                MNIST_FC / "onnx" / "mnist-net_256x2.onnx"
            models.append({"name": name, "onnx": str(onnx), "data": str(tmp / f"{len(models)}.npz")})
        setup = tmp / "setup.json"
        setup.write_text(json.dumps({"models": models, "eps": 0.03, "methods": [
            (m, with_device(m, o, device)) for m, o in METHODS]}))
        old = tmp / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), base], cwd=REPO,
                       check=True, capture_output=True)
        try:
            runs: dict[str, list[list[dict]]] = {"this": [], "base": []}
            for r in range(rounds):
                for which in (("this", "base") if r % 2 == 0 else ("base", "this")):
                    tree = REPO if which == "this" else old
                    done = subprocess.run([sys.executable, "-c", SIDE_WORKER, str(setup)],
                                          cwd=tree, capture_output=True, text=True, check=True,
                                          env={**os.environ, "PYTHONPATH": str(tree),
                                               "OMP_NUM_THREADS": "1"})
                    runs[which].append(json.loads(done.stdout.splitlines()[-1]))
                print(f"round {r + 1}/{rounds} done", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO,
                           capture_output=True)
    lines = [f"# relaxed_tightness side by side: this tree ({here}) against {sha}", "",
             f"`python benchmarks/relaxed_tightness.py --base {base} --rounds {rounds}`; "
             f"{machine()}; device {device}. eps 0.03, l_inf ∩ [0, 1]; each round runs every "
             "method once per tree, each tree in a fresh process (1 torch thread), the order "
             "alternating; ratio = this / base process CPU time of the method's batch, per round, "
             "median and range over rounds.", "",
             "| model | method | certified (this / base) | mean margin lower (this / base) "
             "| CPU s median (this / base) | ratio median | ratio range |",
             "|---|---|---|---|---|---|---|"]
    for k, row in enumerate(runs["this"][0]):
        this = [run[k]["cpu_s"] for run in runs["this"]]
        before = [run[k]["cpu_s"] for run in runs["base"]]
        ratios = [a / b for a, b in zip(this, before)]
        b0 = runs["base"][0][k]
        lines.append(f"| {row['model']} | {row['method']} | {row['certified']} / {b0['certified']} "
                     f"| {row['mean_margin_lower']:.6f} / {b0['mean_margin_lower']:.6f} "
                     f"| {statistics.median(this):.3f} / {statistics.median(before):.3f} "
                     f"| {statistics.median(ratios):.2f} | {min(ratios):.2f} .. {max(ratios):.2f} |")
        print(lines[-1], flush=True)
    out = RESULTS / "relaxed_tightness_side_by_side.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def _figures(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="eps 0.03 only")
    parser.add_argument("--processes", type=int, default=5,
                        help="fresh processes measuring CROWN's cost (default 5)")
    parser.add_argument("--cost-only", action="store_true",
                        help="print the forward-pass-equivalents figures as JSON and stop")
    parser.add_argument("--base", help="compare this tree with this commit, side by side")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --base (default 5)")
    args = parser.parse_args()
    if args.base:
        print(f"wrote {side_by_side(args.base, args.rounds, str(resolve_device(args.device)))}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    net, xs, ys = digits()
    if args.cost_only:
        print(json.dumps(forward_pass_equivalents(net, xs, ys, 0.03, device)))
        return 0
    header = f"Machine: {machine()}; device {device}."
    print(header)
    cost = cost_in_fresh_processes(args.processes, device, args.threads)
    print(f"CROWN, 100 digits as one batch: {cost['forward_pass_equivalents']:.0f} forward-pass "
          f"equivalents in the median process ({cost['crown_ms']:.2f} ms vs "
          f"{cost['forward_ms']:.3f} ms); per process {_figures(cost['process_fpe'])}")
    kept = cost_in_fresh_processes(args.processes, device, args.threads, KEEP_FREED) \
        if device == "cpu" and platform.libc_ver()[0] == "glibc" else None
    if kept is not None:
        print(f"... keeping freed memory: {kept['forward_pass_equivalents']:.0f} "
              f"(per process {_figures(kept['process_fpe'])})")
    rows = run_grid("digits_mlp", net, xs, ys, [0.03] if args.quick else DIGITS_EPS, device)
    if MNIST_FC.is_dir():
        net, xs, ys = mnist_fc()
        rows += run_grid("mnist_fc 256x2", net, xs, ys, [0.03] if args.quick else MNIST_EPS,
                         device)
    else:
        print(f"skipping mnist_fc: {MNIST_FC} not found")
    write_results(rows, cost, kept, header)
    print(f"wrote {RESULTS / 'relaxed_tightness.csv'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
