"""CROWN and alpha-CROWN speed against auto_LiRPA's: same weights, same batch, float64, one thread.

    python benchmarks/crown_vs_auto_lirpa.py [--repeats 9] [--n 100] [--eps 0.03] [--deep-n 25]
        [--alpha-steps 20] [--benchmarks benchmarks/data]

Cases: (a) the public API `verify.certify_batch(..., method="crown")` (specifications, bounds and
Certificates) against auto_LiRPA's `compute_bounds(method="CROWN")` with the margin matrix C, on
the bundled digits MLP, the first --n test digits, l_inf eps ∩ [0, 1]; (b) bounds only
(`crown.margin_lower_bounds` on a prebuilt InputBatch) on the same batch; (c) the same for the
bundled digits CNN; (d) mnist-net_256x2 (VNN-COMP mnist_fc, bundled in benchmarks/data) on --n
random [0, 1] images (seeded), eps 0.02; (e) mnist-net_256x4 and 256x6 on --deep-n such images,
eps 0.005, and 256x6 with every neuron bounded (all_neurons=True); (f) our float32 option (CROWNOptions.dtype) on 256x6 against auto_LiRPA (float64) and
against our own float64; (g) alpha-CROWN (`alpha_crown.optimized_margin_lower`, --alpha-steps
Adam steps, lr 0.1, decay 0.98, final-layer slopes only, no early stop) against auto_LiRPA's
"CROWN-Optimized" with the same iteration count, learning rate and decay, fixed intermediate
bounds (its default) and no early stop; (h) the same with the neuron bounds' slopes optimised
too (ours optimize_intermediate=True, theirs fix_interm_bounds=False). The two run interleaved, --repeats times each, one after
the other (each side first in every other repeat, after two warm-up calls each), and the ratio
is median(theirs) / median(ours) (> 1: ours faster). Their
BoundedModule is built once outside the timings (as our network is loaded once), with
compare_crown_with_ibp=True (its neuron bounds intersected with IBP's, as ours are). CROWN bounds
must agree to 1e-9 (ours carry a float64 rounding allowance of ~1e-13; our default rows="auto"
bounds the neurons auto_LiRPA bounds, less each input's inactive ones); the table counts the
inputs where either side is tighter. Skipped when auto_LiRPA is not importable.
Writes benchmarks/results/crown_vs_auto_lirpa.md, keeping the earlier runs' ratios as history.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

# One thread for numpy's BLAS too: OpenBLAS reads this when numpy loads (later is too late; it
# ran two threads before, and process-CPU time counted both on the verdicts' forward passes).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.reporting import (RESULTS, SHARED_NOTE, machine, single_thread,  # noqa: E402
                                  write_text)
from verify import certify_batch, load_onnx  # noqa: E402
from verify.bounds import InputBatch, alpha_crown, crown  # noqa: E402
from verify.bounds.alpha_crown import AlphaCROWNOptions  # noqa: E402
from verify.network import Conv2d, Dense, Network, ReLU  # noqa: E402
from verify.spec import robustness_specs  # noqa: E402


def torch_model(net: Network) -> torch.nn.Module:
    """The network as a float64 torch.nn.Sequential with the same weights (for auto_LiRPA)."""
    modules: list[torch.nn.Module] = []
    shape = tuple(net.input_shape)
    for layer in net.layers:
        if isinstance(layer, Dense):
            if len(shape) > 1:
                modules.append(torch.nn.Flatten())
            linear = torch.nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
            linear.weight.data = torch.as_tensor(layer.weight, dtype=torch.float64)
            linear.bias.data = torch.as_tensor(layer.bias, dtype=torch.float64)
            modules.append(linear)
            shape = tuple(layer.out_shape)
        elif isinstance(layer, Conv2d):
            top, left, bottom, right = layer.padding
            assert (top, left) == (bottom, right), "symmetric padding only"
            conv = torch.nn.Conv2d(layer.weight.shape[1], layer.weight.shape[0],
                                   layer.weight.shape[2:], stride=layer.stride,
                                   padding=(top, left), dilation=layer.dilation)
            conv.weight.data = torch.as_tensor(layer.weight, dtype=torch.float64)
            conv.bias.data = torch.as_tensor(layer.bias, dtype=torch.float64)
            modules.append(conv)
            shape = tuple(layer.out_shape)
        elif isinstance(layer, ReLU):
            modules.append(torch.nn.ReLU())
    return torch.nn.Sequential(*modules).double().eval()


def case(name: str, net: Network, xs: np.ndarray, labels: np.ndarray, eps: float,
         repeats: int, ours_kind: str = "bounds", theirs_kind: str = "crown",
         alpha_steps: int = 20) -> dict:
    """One side-by-side timing. ours_kind: "api" (certify_batch), "bounds" (CROWN bounds),
    "float32" (CROWN bounds, float32 passes), "all" (CROWN bounds, every neuron), "alpha" (alpha-CROWN bounds, final-layer slopes),
    "alpha-interm" (and the neuron bounds' slopes); theirs_kind: "crown" / "alpha" /
    "alpha-interm" (auto_LiRPA) or "ours64" (our float64 CROWN bounds)."""
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    specs = robustness_specs(net.input_size, net.output_size, xs, labels, eps, "inf", (0.0, 1.0))
    batch = InputBatch.from_specs(specs, torch.device("cpu"))
    shape = (len(xs), *net.input_shape)
    x_l, x_u = batch.lower.reshape(shape), batch.upper.reshape(shape)
    center = batch.center.reshape(shape)
    model = torch_model(net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # compare_crown_with_ibp: its neuron bounds intersected with IBP's, as ours are (the
        # same algorithm; without it the bounds differ where intervals are tighter)
        bounded = BoundedModule(model, torch.zeros_like(center), device="cpu", verbose=0,
                                bound_opts={"compare_crown_with_ibp": True})
    interm = ours_kind == "alpha-interm"  # intermediate slopes optimised too, on both sides
    if theirs_kind.startswith("alpha"):
        bounded.set_bound_opts({"optimize_bound_args": {
            "iteration": alpha_steps, "lr_alpha": 0.1, "lr_decay": 0.98,
            "early_stop_patience": 10 ** 9, "fix_interm_bounds": not interm}})
    alpha_options = AlphaCROWNOptions(steps=alpha_steps, lr=0.1, lr_decay=0.98,
                                      optimize_intermediate=interm, early_stop=False)

    def theirs() -> np.ndarray:
        if theirs_kind == "ours64":
            return crown.margin_lower_bounds(net, batch)[0].numpy()
        ptb = PerturbationLpNorm(norm=np.inf, eps=eps, x_L=x_l, x_U=x_u)
        x = (BoundedTensor(center, ptb),)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if theirs_kind.startswith("alpha"):  # (its best buffers take the default dtype)
                default = torch.get_default_dtype()
                torch.set_default_dtype(torch.float64)
                try:
                    lower, _ = bounded.compute_bounds(x=x, C=batch.C, method="CROWN-Optimized",
                                                      bound_upper=False)
                finally:
                    torch.set_default_dtype(default)
                return lower.detach().numpy()
            with torch.no_grad():
                lower, _ = bounded.compute_bounds(x=x, C=batch.C, method="CROWN",
                                                  bound_upper=False)
        return lower.numpy()

    def ours():  # the certificates themselves for "api" (read back as rows untimed, below)
        if ours_kind == "api":
            return certify_batch(net, xs, labels, eps, "inf", method="crown", device="cpu",
                                 domain=(0.0, 1.0))
        if ours_kind.startswith("alpha"):
            return alpha_crown.optimized_margin_lower(net, batch, alpha_options)[0] \
                .detach().numpy()
        dtype = "float32" if ours_kind == "float32" else "float64"
        return crown.margin_lower_bounds(net, batch, dtype=dtype,
                                         all_neurons=ours_kind == "all")[0].numpy()

    for _ in range(2):  # warm-up (auto_LiRPA's first calls after building are slower)
        ours(), theirs()
    times = {"ours": [], "theirs": []}
    for i in range(repeats):  # interleaved, each side first in every other repeat
        order = (("ours", ours), ("theirs", theirs))
        for who, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.process_time()
            fn()
            times[who].append(time.process_time() - t0)
    a, b = ours(), theirs()
    if ours_kind == "api":
        a = np.array([[v for v in c.margin_lower if v is not None] for c in a])
    # our rows come in class order (label skipped); theirs in C's rows: the same order
    gap = float(np.max(np.abs(a - b)))
    looser = float(np.max(b - a))  # > 0: theirs tighter somewhere
    ours_med, theirs_med = statistics.median(times["ours"]), statistics.median(times["theirs"])
    return {"case": name, "ours": ours_med, "theirs": theirs_med, "ratio": theirs_med / ours_med,
            "gap": gap, "looser": looser,
            "n_looser": int(np.sum(np.any(b - a > 1e-9, axis=1))),
            "tighter": int(np.sum(np.any(a - b > 1e-9, axis=1))),  # inputs where ours is tighter
            "mean_ours": float(np.mean(a)), "mean_theirs": float(np.mean(b)),
            "proved_ours": int(np.sum(np.all(a > 0, axis=1))),
            "proved_theirs": int(np.sum(np.all(b > 0, axis=1))), "n": len(xs),
            "exact": ours_kind in ("api", "bounds", "all") and theirs_kind == "crown"}


def random_images(net: Network, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n seeded uniform [0, 1] images and the network's own classes for them."""
    images = np.random.default_rng(0).uniform(0, 1, size=(n, net.input_size))
    return images, net.forward(images).argmax(axis=1)


def history(path: Path) -> list[str]:
    """The earlier runs' lines: the file's history list, plus its current table as one line."""
    if not path.is_file():
        return []
    text = path.read_text().splitlines()
    old = [line for line in text if line.startswith("- ") and " ratios: " in line]
    date = next((line.rsplit("; ", 1)[-1] for line in text[:3] if "; " in line), "earlier")
    rows = [line.split(" | ") for line in text if line.startswith("| (")]
    if rows:
        old.insert(0, f"- {date.strip()} ratios: " + ", ".join(
            f"{r[0][2:].strip()} {r[3].strip()}" for r in rows))
    return old


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--deep-n", type=int, default=25)
    parser.add_argument("--eps", type=float, default=0.03)
    parser.add_argument("--alpha-steps", type=int, default=20)
    parser.add_argument("--benchmarks", type=Path, default=REPO / "benchmarks" / "data")
    args = parser.parse_args(argv)
    try:
        import auto_LiRPA  # noqa: F401
    except ImportError:
        print("auto_LiRPA is not importable: nothing to compare (pip install --no-deps "
              "git+https://github.com/Verified-Intelligence/auto_LiRPA)")
        return 0
    single_thread()
    data = np.load(REPO / "models" / "digits_test.npz")
    xs, labels = data["x"][:args.n], data["y"][:args.n]
    mlp = load_onnx(REPO / "models/digits_mlp.onnx")
    cnn = load_onnx(REPO / "models/digits_cnn.onnx")
    reps = args.repeats
    results = [
        case("(a) digits MLP, certify_batch (public API)", mlp, xs, labels, args.eps, reps, "api"),
        case("(b) digits MLP, bounds only", mlp, xs, labels, args.eps, reps),
        case("(c) digits CNN, bounds only", cnn, xs, labels, args.eps, reps),
        case("(c') digits CNN, certify_batch", cnn, xs, labels, args.eps, reps, "api"),
    ]
    folder = args.benchmarks / "mnist_fc" / "onnx"
    missing = []
    nets = {}
    for size in ("256x2", "256x4", "256x6"):
        path = folder / f"mnist-net_{size}.onnx"
        if path.is_file():
            nets[size] = load_onnx(path)
        else:
            missing.append(size)
    if "256x2" in nets:
        images, guess = random_images(nets["256x2"], args.n)
        results.append(case("(d) mnist-net_256x2, bounds only", nets["256x2"], images, guess,
                            0.02, reps))
    deep_reps = max(3, reps // 2)
    for size, letter in (("256x4", "e"), ("256x6", "e'")):
        if size in nets:
            images, guess = random_images(nets[size], args.deep_n)
            results.append(case(f"({letter}) mnist-net_{size}, bounds only", nets[size], images,
                                guess, 0.005, deep_reps))
    if "256x6" in nets:
        images, guess = random_images(nets["256x6"], args.deep_n)
        results.append(case("(e'') mnist-net_256x6, bounds only, every neuron bounded",
                            nets["256x6"], images, guess, 0.005, deep_reps, "all"))
        results.append(case("(f) mnist-net_256x6, ours float32 vs auto_LiRPA", nets["256x6"],
                            images, guess, 0.005, deep_reps, "float32"))
        results.append(case("(f') mnist-net_256x6, ours float32 vs ours float64", nets["256x6"],
                            images, guess, 0.005, deep_reps, "float32", "ours64"))
    results.append(case(f"(g) digits MLP, alpha-CROWN {args.alpha_steps} steps", mlp, xs, labels,
                        args.eps, max(3, reps // 3), "alpha", "alpha", args.alpha_steps))
    results.append(case(f"(h) digits MLP, alpha-CROWN {args.alpha_steps} steps, neuron bounds' "
                        "slopes optimised too", mlp, xs, labels, args.eps, max(3, reps // 3),
                        "alpha-interm", "alpha-interm", args.alpha_steps))
    if "256x2" in nets:
        images, guess = random_images(nets["256x2"], args.deep_n)
        results.append(case(f"(g') mnist-net_256x2, alpha-CROWN {args.alpha_steps} steps",
                            nets["256x2"], images, guess, 0.02, max(3, reps // 3), "alpha",
                            "alpha", args.alpha_steps))
    path = RESULTS / "crown_vs_auto_lirpa.md"
    past = history(path)
    lines = ["# CROWN: verify vs auto_LiRPA 0.7.1", "", machine(), "",
             f"Batch of {args.n} inputs, l_inf eps {args.eps} ∩ [0, 1] (mnist 256x2: 0.02, "
             f"random images; 256x4 / 256x6: {args.deep_n} random images, eps 0.005), float64 "
             f"unless said, one thread, {reps} interleaved repeats ({deep_reps} for the deep "
             "nets, fewer for alpha-CROWN), process-CPU medians; ratio = theirs / ours (> 1: "
             "ours faster). " + SHARED_NOTE, "",
             "| case | ours s | theirs s | ratio | max bound gap | inputs ours tighter / looser "
             "| mean bound ours / theirs | proved ours / theirs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['case']} | {r['ours']:.4f} | {r['theirs']:.4f} | {r['ratio']:.2f} | "
                     f"{r['gap']:.1e} | {r['tighter']} / {r['n_looser']} | "
                     f"{r['mean_ours']:.4g} / {r['mean_theirs']:.4g} | "
                     f"{r['proved_ours']} / {r['proved_theirs']} of {r['n']} |")
    lines += ["", "Bounds: auto_LiRPA runs with compare_crown_with_ibp=True (its neuron bounds "
              "intersected with IBP's, as ours are: the same algorithm). (a)-(e'): equal "
              "to 1e-9 on every input (column 'inputs ours tighter / looser'). auto_LiRPA bounds, "
              "in each layer, the batch's union of the neurons intervals leave unstable (every "
              "neuron once that union passes 90% of the layer); our default (rows=\"auto\", "
              "crown.rows_to_bound) bounds the same neurons less each input's inactive ones "
              "(whose bounds never matter), and only the unstable ones in the last layer before "
              "the margins. Bounding only each input's unstable neurons (rows=\"unstable\", the "
              "default before this run) was looser on 4 of the 25 inputs of (e') (by up to "
              "0.053): the bounds of stable active neurons tighten the interval steps above. "
              "(e''): every neuron bounded (all_neurons=True; the same bounds as rows=\"live\"; "
              "on 256x4 those are tighter than auto_LiRPA's on some inputs, by up to 0.009 in "
              "a check before this run). (f): float32 bounds are "
              "looser by float32's rounding allowances (about n 2^-24 of |Lambda| |W| h_max per "
              "layer). (g), (h): equal iteration counts and settings, different optimisers' "
              "paths: bounds differ; the table gives the mean. Before this run auto_LiRPA ran "
              "with its defaults (history below): its neuron bounds were not intersected with "
              "IBP's, and ours were tighter on a few inputs.", ""]
    if missing:
        lines += [f"Not in {folder}: mnist-net_{', '.join(missing)}: not measured.", ""]
    lines += ["Where the time went (cProfile, torch profiler, page-fault counts, this tree): "
              "the public API's extra cost over bounds-only is the specifications "
              "(robustness_specs validates the batch once), the InputBatch (boxes as (B, n) "
              "arrays), one batched float64 forward pass of the centers "
              "(verdict.certificates_from_bounds; an input within 1e-6 of a row's zero is "
              "replayed alone) and the Certificate objects (rows read as Python floats): about "
              "2.5 ms per 100 digits, was ~14 ms two sessions ago. The bounds are matrix "
              "products of the neuron rows: rows of unstable neurons are padded per group of "
              "inputs with similar counts (crown._row_groups), not to the batch's largest "
              "count; the large tensors without autograd go into per-thread buffers reused "
              "across calls (crown.scratch; the digits CNN faulted in ~19,700 fresh pages per "
              "call, now none); small convolutions go through their dense matrix "
              "(crown.DENSE_CONV_ENTRIES). A/B against the tree before these changes (one "
              "process, interleaved, bounds bit for bit equal): digits MLP bounds 1.5x, public "
              "API 1.4x, CNN 1.35-1.9x, mnist 256x2 2.4x, 256x6 1.2x. Since then: a ReLU step "
              "drops the columns of the neurons inactive on every input of the batch (both "
              "slopes 0: exact zeros), and the affine step below multiplies by those rows of W "
              "only (crown._live_neurons, when at most 80% of the layer is left); on the mnist "
              "nets 75-99% of a layer is inactive on every input at these radii, and 256x6 went "
              "from 0.52 s to 0.25 s with unstable rows and from 2.05 s to 0.76 s with every "
              "neuron (one process, same bounds up to the order of the float sums). What is "
              "left is mostly float64 matrix products (MKL, one thread) and the rounding "
              "allowances' extra passes over |Lambda|. This run: a convolution's neuron bounds "
              "go block by block over their receptive fields (crown._windows: on the digits "
              "CNN the rows of one output position reach 72 of the 512 neurons below; each "
              "selected (input, neuron) pair is one row of a backward pass on the block's "
              "sub-network, no padding; bounds within 2e-11 of the full rows', never looser); "
              "products with W that narrow the rows 4x or more run in the GEMM orientation MKL "
              "is ~2x faster at (crown.times_weight); matvecs are products into a reused buffer "
              "then a sum (torch's bmm with one column was ~3x slower); a ReLU step without "
              "autograd takes 5 passes instead of 8 (the same floats); IBP's margin step runs "
              "once (from the tightened bounds, which lie within IBP's) and no interval step "
              "runs from bounds that are still IBP's; the verdicts' batched screening pass "
              "takes small convolutions as their dense matrices. A/B in one process against "
              "the tree before: CNN bounds 1.8-2.0x, MLP bounds 1.0-1.1x, mnist 256x2 / x4 / "
              "x6 1.2 / 1.1 / 1.1x. Harness, this run: numpy's OpenBLAS ran two threads "
              "before (OMP_NUM_THREADS was set after numpy loaded, and process time counted "
              "both), now one; two warm-up calls per side (auto_LiRPA's first call after "
              "building its module is ~1.4x slower), each side first in every other repeat; "
              "the API cases' certificates are read back as rows outside the timing. "
              "auto_LiRPA's time for the same CNN call still differs between (c) and (c') "
              "from run to run (0.13-0.18 s in earlier runs, either way round): the same "
              "work, the machine's load. GPU not measured (no GPU in this session).", "",
              "## History (ratios of earlier runs)", ""]
    lines += past
    write_text(path, "\n".join(lines) + "\n")
    print("\n".join(lines))
    bad = [r["case"] for r in results if r["exact"] and r["looser"] > 1e-9]
    if bad:
        print(f"our bounds looser by more than 1e-9 in: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
