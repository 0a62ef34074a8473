"""The teaching picture for a 2-input network: input space and output space side by side.

Left: the decision regions around x, the ball of radius eps (l_inf square, l_2 disc, l_1 diamond)
and a counterexample when the exact method finds one. Right: the logits (z_j, z_y) of thousands
of points sampled in the ball (the exact reachable set, filled densely), the IBP box around them,
and for each certifier the line z_y - z_j = its margin lower bound: the set lies above the exact
line, a relaxation's line lies below it, and the property holds where the line clears
z_y = z_j. j is the runner-up class at x.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .backends import certify
from .compare import check_methods
from .bounds import InputBatch
from .bounds.ibp import layer_bounds
from .errors import InputError
from .network import Network
from .outputs import save_figure
from .spec import robustness_spec


def plot2d(net: Network, x: Sequence[float], eps: float, path: Path, norm: str = "inf",
           label: int | None = None, domain=None,
           methods: Sequence[str] = ("ibp", "crown", "lp", "milp"), samples: int = 20_000,
           seed: int = 0, options: Optional[dict] = None) -> dict:
    """Draw the figure to `path` (PNG); return the margin lower bounds per method.
    `options[method]`: that method's options (e.g. {"smoothing": {"sigma": 0.25}})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if net.input_size != 2:
        raise InputError(f"plot2d draws 2-input networks; this one has {net.input_size} inputs")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    logits = net.forward(x)
    label = int(np.argmax(logits)) if label is None else int(label)
    spec = robustness_spec(2, net.output_size, x, label, eps, norm, domain)
    options = options or {}
    check_methods(methods, norm, options)  # before any of them runs
    j = max((k for k in range(net.output_size) if k != label), key=lambda k: logits[k])
    row = spec.output.row_class.index(j)

    bounds = {}
    certs = {}
    for method in methods:
        extra = {"exact_margins": True} if method == "milp" else {}
        cert = certify(net, x, label, eps, norm, method, domain,
                       **{**extra, **options.get(method, {})})
        certs[method] = cert
        bounds[method] = cert.margin_lower[j]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    # Input space: decision regions on a grid three radii wide, the ball, the counterexample.
    span = 3 * eps if eps > 0 else 0.1
    g0, g1 = np.meshgrid(np.linspace(x[0] - span, x[0] + span, 300),
                         np.linspace(x[1] - span, x[1] + span, 300))
    grid = np.stack([g0.ravel(), g1.ravel()], axis=1)
    classes = net.forward(grid).argmax(1).reshape(g0.shape)
    left.contourf(g0, g1, classes, levels=np.arange(net.output_size + 1) - 0.5, cmap="Pastel1",
                  alpha=0.8)
    theta = np.linspace(0, 2 * np.pi, 400)
    if norm == "inf":
        ring = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]], dtype=float)
    elif norm == "1":
        ring = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [1, 0]], dtype=float)
    else:
        ring = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    ball = x + eps * ring
    left.plot(ball[:, 0], ball[:, 1], "k-", lw=1.5, label=f"l_{norm} ball, eps {eps:g}")
    left.plot(*x, "ko", label=f"x (class {label})")
    exact = certs.get("milp")
    if exact is not None and exact.counterexample is not None:
        left.plot(*exact.counterexample, "rx", ms=10, mew=2, label="counterexample (MILP)")
    left.set_title("input space: decision regions")
    left.set_aspect("equal")
    left.legend(loc="upper right", fontsize=8)

    # Output space: sampled logits, the IBP box, one margin line per method.
    points = spec.input_set.sample(samples, np.random.default_rng(seed))
    z = net.forward(points)
    right.scatter(z[:, j], z[:, label], s=1, c="0.5", alpha=0.4, label="f(ball), sampled")
    batch = InputBatch.from_specs([spec], torch.device("cpu"))
    if getattr(net, "is_graph", False):
        from .bounds import graph

        logits = graph.output_bounds(net, graph.interval_bounds(net, batch))
    else:
        logits = layer_bounds(net, batch)[-1]
    lo, up = (t.numpy()[0] for t in logits)
    right.add_patch(plt.Rectangle((lo[j], lo[label]), up[j] - lo[j], up[label] - lo[label],
                                  fill=False, ec="tab:blue", ls=":", label="IBP box of the logits"))
    xs_line = np.linspace(min(lo[j], z[:, j].min()), max(up[j], z[:, j].max()), 2)
    colours = {"ibp": "tab:blue", "crown": "tab:orange", "alpha-crown": "tab:olive",
               "lp": "tab:green", "milp": "tab:red"}
    for method, m in bounds.items():
        if m is None or not np.isfinite(m):
            continue
        right.plot(xs_line, xs_line + m, color=colours.get(method, "k"),
                   label=f"{method}: z_{label} - z_{j} >= {m:.3g}")
    right.plot(xs_line, xs_line, "k--", lw=1, label="decision boundary z_y = z_j")
    right.set_xlabel(f"z_{j} (runner-up)")
    right.set_ylabel(f"z_{label} (label)")
    right.set_title("output space: reachable logits and bounds")
    right.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return {"label": label, "runner_up": j, "margin_lower": bounds,
            "sampled_min": float((z[:, label] - z[:, j]).min()), "row": row}
