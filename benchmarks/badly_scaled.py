"""Badly scaled one-input ReLU networks with exactly known minima: MILP's wrong answers.

A float64 MLP 1-h-h-h-2 with weights of magnitude 10^s (s drawn up to `max_exponent`) and a
last-layer bias that moves the margin's minimum to within a hair of 0 (from either side). With
one input the network is piecewise linear in x with finitely many breakpoints; `exact_minimum`
finds them layer by layer (each pre-activation is linear between the breakpoints of the layers
before it, so its own zero crossings are roots of linear pieces) and evaluates the margin at
every breakpoint and both ends. Every evaluated point lies in the interval, so the minimum over
them is an upper bound on the true minimum (equal to it up to the roots' rounding): a YES with
margin_lower above it is wrong.

    python benchmarks/badly_scaled.py --nets 500 --baseline a588fbd   # this tree vs a commit

writes benchmarks/results/badly_scaled.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
TREE = os.environ.get("BADLY_SCALED_TREE")  # another checkout's verify (set by --baseline)
if TREE:
    sys.path.insert(0, TREE)

from verify import Dense, Network, ReLU, Specification, robustness_spec  # noqa: E402


def make_net(seed: int, hidden: tuple[int, ...] = (5, 5, 6), max_exponent: float = 5.0
             ) -> tuple[Network, Specification]:
    """A 1-input, 2-class net with weights ~10^U(0, max_exponent) and its robustness spec
    (label 0) on an interval whose margin minimum sits just above or just below 0."""
    rng = np.random.default_rng(seed)
    sizes = (1,) + tuple(hidden) + (2,)
    layers = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        scale = 10.0 ** rng.uniform(max_exponent / 2, max_exponent)
        weight = rng.standard_normal((n_out, n_in)) * scale
        bias = rng.standard_normal(n_out) * scale * rng.uniform(0, 2)
        layers.append(Dense(weight, bias, (n_in,), (n_out,)))
        if k < len(sizes) - 2:
            layers.append(ReLU((n_out,)))
    center, eps = rng.uniform(-1, 1), 10.0 ** rng.uniform(-3, 0)
    net = Network(layers, (1,), name=f"badly_scaled_{seed}")
    spec = robustness_spec(1, 2, [center], 0, eps)
    lowest, _ = exact_minimum(net, spec)
    # shift class 0's bias so the minimum becomes `target`, a hair above or below 0
    target = rng.choice([-1.0, 1.0]) * 10.0 ** rng.uniform(-4, 0)
    last = layers[-1]
    shifted = last.bias.copy()
    shifted[0] += target - lowest[0]
    layers[-1] = Dense(last.weight, shifted, last.in_shape, last.out_shape)
    return Network(layers, (1,), name=f"badly_scaled_{seed}"), spec


def breakpoints(net: Network, lo: float, hi: float) -> np.ndarray:
    """Sorted points of [lo, hi] containing every breakpoint of the net (one input) and the ends.
    Before ReLU layer k each pre-activation is linear between consecutive points found for the
    layers before it, so its zero crossings are the roots of those linear pieces."""
    points = np.array([lo, hi], dtype=np.float64)
    for k, layer in enumerate(net.layers):
        if not isinstance(layer, ReLU):
            continue
        pre = points[:, None]
        for before in net.layers[:k]:
            pre = before.forward(pre)
        a, b = pre[:-1], pre[1:]
        i, j = np.nonzero(a * b < 0)
        t = a[i, j] / (a[i, j] - b[i, j])
        roots = points[i] + t * (points[i + 1] - points[i])
        points = np.unique(np.concatenate([points, np.clip(roots, lo, hi)]))
    return points


def exact_minimum(net: Network, spec: Specification) -> tuple[np.ndarray, np.ndarray]:
    """(per-row minimum of C f(x) - d over the breakpoints and ends, the point of each)."""
    lo, hi = (float(v[0]) for v in spec.input_set.bounding_box())
    points = breakpoints(net, lo, hi)
    values = spec.output.values(net.forward(points[:, None]))
    k = values.argmin(axis=0)
    return values[k, np.arange(values.shape[1])], points[k]


def judge(net: Network, spec: Specification, method: str, **options) -> dict:
    """Run one certifier; 'wrong' when it says YES although the minimum is <= 0, or reports a
    margin_lower above the evaluated minimum (beyond float64 rounding of the replay)."""
    from verify import VerifyError, certify_specs

    lowest, _ = exact_minimum(net, spec)
    try:
        cert = certify_specs(net, [spec], method, **options)[0]
    except VerifyError as error:  # refused in one line (values beyond what a solver holds)
        return {"status": "refused", "wrong": False, "lower_above_minimum": False,
                "minimum": float(lowest.min()), "margin_lower": -np.inf, "reason": str(error)}
    lower = np.array([v for v in cert.margin_lower if v is not None], dtype=np.float64)
    logits = net.forward(np.array([spec.input_set.center[0]]))
    slack = 1e-9 * (1.0 + float(np.abs(logits).max()))
    above = bool(np.any(lower > lowest + slack))
    yes = cert.status.name == "YES"
    return {"status": cert.status.name, "wrong": (yes and bool(np.any(lowest <= 0))) or above,
            "lower_above_minimum": above, "minimum": float(lowest.min()),
            "margin_lower": float(lower.min()), "reason": cert.reason}


def sweep(nets: int, methods: list[str], max_exponent: float = 5.0) -> dict:
    """Per method: status counts, wrong answers (seeds), and the worst margin_lower excess."""
    out = {}
    for method in methods:
        counts: Counter = Counter()
        wrong, excess = [], 0.0
        for seed in range(nets):
            net, spec = make_net(seed, max_exponent=max_exponent)
            options = {"timeout": 20} if method == "milp" else {}
            result = judge(net, spec, method, **options)
            counts[result["status"]] += 1
            if result["wrong"]:
                wrong.append(seed)
                excess = max(excess, result["margin_lower"] - result["minimum"])
        out[method] = {"counts": dict(counts), "wrong": wrong, "max_excess": excess}
    return out


def _baseline(commit: str, nets: int, methods: list[str], max_exponent: float) -> dict:
    """`sweep` run on another commit's verify (git archive into a temporary folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "verify"],
                                 check=True, capture_output=True).stdout
        tar = Path(tmp) / "tree.tar"
        tar.write_bytes(archive)
        with tarfile.open(tar) as t:
            t.extractall(tmp, filter="data")
        env = {**os.environ, "BADLY_SCALED_TREE": tmp}
        done = subprocess.run([sys.executable, __file__, "--nets", str(nets), "--json",
                               "--max-exponent", str(max_exponent), "--methods", *methods], env=env, check=True,
                              capture_output=True, text=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", type=int, default=500)
    parser.add_argument("--methods", nargs="+", default=["milp", "lp", "crown"])
    parser.add_argument("--baseline", help="a commit to compare with (its verify/ folder)")
    parser.add_argument("--max-exponent", type=float, default=5.0,
                        help="weights ~10^(e/2)..10^e per layer")
    parser.add_argument("--json", action="store_true", help="print the sweep as JSON only")
    args = parser.parse_args()
    results = {"this tree": sweep(args.nets, args.methods, args.max_exponent)}
    if args.json:
        print(json.dumps(results["this tree"]))
        return
    if args.baseline:
        results[f"commit {args.baseline}"] = _baseline(args.baseline, args.nets, args.methods,
                                                            args.max_exponent)
    from benchmarks.reporting import RESULTS, machine, write_text

    lines = ["# MILP (and LP, CROWN) on badly scaled one-input networks", "", machine(), "",
             f"{args.nets} nets 1-5-5-6-2 from `benchmarks/badly_scaled.py` (weights ~10^"
             f"{args.max_exponent / 2:g}..10^{args.max_exponent:g} per layer, last bias moving the margin minimum within 1e-4..1 of 0, either "
             "side; exact minimum from the breakpoints). Wrong: a YES although the minimum is "
             "<= 0, or a margin_lower above the minimum (beyond 1e-9 relative).", "",
             "| tree | method | YES | NO | MAYBE | refused | wrong | largest excess of margin_lower |",
             "|---|---|---|---|---|---|---|---|"]
    for tree, by_method in results.items():
        for method, r in by_method.items():
            c = r["counts"]
            lines.append(f"| {tree} | {method} | {c.get('YES', 0)} | {c.get('NO', 0)} | "
                         f"{c.get('MAYBE', 0)} | {c.get('refused', 0)} | {len(r['wrong'])} | {r['max_excess']:.3g} |")
    lines += ["", "Wrong seeds: " + "; ".join(f"{t} {m}: {r['wrong'][:20]}"
                                             for t, bm in results.items()
                                             for m, r in bm.items() if r["wrong"])]
    name = "badly_scaled.md" if args.max_exponent == 5.0 else \
        f"badly_scaled_e{args.max_exponent:g}.md"
    write_text(RESULTS / name, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
