"""relu-bab's least bound against time on one VNN-COMP 2021 cifar10_resnet instance, as `auto`
reaches it: alpha-CROWN on the query first (its slopes and bounds seed relu-bab's root), then
`relu_bab.search` on the rows it leaves open, one thread.

    python benchmarks/relu_bab_bound_trace.py [--net resnet_4b] [--prop prop_0_eps_0.004]
                                              [--time 60] [--options '{"graph_steps": 0}']

Prints the least bound over the open domains (and the domains bounded so far) at 5, 10, 20, ...
seconds of the search: compare variants by running them side by side (one per core).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from verify import deadline, vnncomp  # noqa: E402
from verify.exact import relu_bab  # noqa: E402
from verify.onnx_io import load_onnx  # noqa: E402
from verify.spec import OutputProperty, Specification  # noqa: E402
from verify.vnnlib import load_vnnlib  # noqa: E402

DATA = REPO / "benchmarks" / "data" / "vnncomp2021" / "cifar10_resnet"
MARKS = (5, 10, 20, 30, 45, 60, 90, 120, 150, 180, 240, 300, 420, 600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="resnet_4b")
    parser.add_argument("--prop", default="prop_0_eps_0.004")
    parser.add_argument("--time", type=float, default=60.0, help="seconds of relu-bab")
    parser.add_argument("--options", default="{}", help="ReluBaBOptions fields, as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    net = load_onnx(str(DATA / "onnx" / f"{args.net}.onnx"))
    query = load_vnnlib(str(DATA / "vnnlib" / f"{args.prop}.vnnlib"))
    start = time.perf_counter()
    with deadline.limit(60.0):
        first = vnncomp._solve_with_certifier(net, query, "alpha-crown", {})
    print(f"alpha-CROWN: {first.result} in {time.perf_counter() - start:.1f} s", flush=True)
    if first.result in ("sat", "unsat"):
        return
    specs = [spec for spec, _ in first.open_pairs]
    spec = Specification(specs[0].input_set, OutputProperty(
        np.concatenate([s.output.C for s in specs]), np.concatenate([s.output.d for s in specs])))
    trace: list[tuple[float, float, int]] = []
    bound = relu_bab.ReluSearch.bound

    def traced(search, chosen, steps):  # the chosen domains hold the least bound (lowest first)
        trace.append((time.perf_counter() - begin, float(chosen.lower.min()),
                      search.result.domains))
        return bound(search, chosen, steps)

    relu_bab.ReluSearch.bound = traced
    options = relu_bab.ReluBaBOptions(device="cpu", attack=False, timeout=args.time,
                                      **json.loads(args.options))
    begin = time.perf_counter()
    result = relu_bab.search(net, spec, options)
    marks = []
    for mark in MARKS:
        before = [t for t in trace if t[0] <= mark]
        if before and mark <= args.time + 1:
            marks.append(f"{mark}s: {before[-1][1]:.4f} ({before[-1][2]} domains)")
    print(f"{args.net} {args.prop} {args.options}: {result.status} after "
          f"{time.perf_counter() - begin:.1f} s, {result.domains} domains, {result.rounds} "
          f"rounds, least bound {float(np.min(result.row_lower)):.4f}")
    print("least bound at " + ", ".join(marks))


if __name__ == "__main__":
    main()
