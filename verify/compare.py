"""Certifiers side by side on the same inputs: tightness and cost tables, CSV/JSON, a plot.

For each radius and method, over N inputs: YES / NO / MAYBE counts and the robust accuracy they
bound. A relaxed certifier's YES fraction is a lower bound on the true robust accuracy, the exact
certifier's is the value itself, and an attack's "not refuted" fraction an upper bound, so the
curves of `plot_curves` bracket the relaxed ones between the attack and the exact method.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .backends import certify, certify_batch, check_norm, make_options
from .certificate import Certificate, Status, json_safe
from .errors import InputError
from .network import Network
from .outputs import atomic_path, cannot_write

KIND = {"attack": "upper", "milp": "exact", "bab": "exact", "smoothing": "of g"}
FIELDS = ["eps", "norm", "method", "bound", "inputs", "yes", "no", "maybe",
          "robust_accuracy", "mean_margin_lower", "median_margin_lower", "median_time_s",
          "total_time_s"]


def _worst(values: Sequence[Optional[float]]) -> float:
    finite = [v for v in values if v is not None]
    return min(finite) if finite else float("nan")


def _number(value: float, width: int) -> str:
    """A table cell: the value, or '-' where there is none (the attack bounds no margin)."""
    return f"{value:{width}.4g}" if np.isfinite(value) else f"{'-':>{width}s}"


def summarize(eps: float, norm: str, method: str, certs: list[Certificate],
              seconds: float) -> dict:
    """One table row from the certificates of one method at one radius."""
    statuses = [c.status for c in certs]
    n = len(certs)
    yes, no = statuses.count(Status.YES), statuses.count(Status.NO)
    bound = KIND.get(method, "lower")
    accuracy = (n - no) / n if bound == "upper" else yes / n
    worst = [_worst(c.margin_lower) for c in certs]
    worst = [w for w in worst if np.isfinite(w)]
    times = [c.time_s for c in certs]
    return {"eps": eps, "norm": norm, "method": method, "bound": bound, "inputs": n,
            "yes": yes, "no": no, "maybe": n - yes - no, "robust_accuracy": accuracy,
            "mean_margin_lower": float(np.mean(worst)) if worst else float("nan"),
            "median_margin_lower": float(np.median(worst)) if worst else float("nan"),
            "median_time_s": statistics.median(times) if any(times) else seconds / max(n, 1),
            "total_time_s": seconds}


def _certify_chunk(net: Network, xs: np.ndarray, ys: np.ndarray, eps: float, norm: str,
                   method: str, domain, options: dict, single_thread: bool) -> list[Certificate]:
    """One method on a chunk of inputs (module level: it runs in worker processes too)."""
    if single_thread:
        import torch

        torch.set_num_threads(1)
    return certify_batch(net, xs, ys, eps, norm, method, domain, **options)


def check_methods(methods: Sequence[str], norm: str, options: Optional[dict] = None) -> None:
    """InputError, before anything runs, unless every method is registered, takes l_`norm`
    balls, and takes its `options[method]` (make_options: names, types, ranges, choices,
    device)."""
    for method in methods:
        check_norm(method, norm)
        make_options(method, (options or {}).get(method, {}))


def compare(net: Network, xs: np.ndarray, ys: np.ndarray, eps_list: Sequence[float],
            norm: str = "inf", methods: Sequence[str] = ("ibp", "crown", "milp", "attack"),
            domain=None, out_csv: Optional[Path] = None,
            progress: Optional[Callable[[str], None]] = None,
            options: Optional[dict] = None, workers: int = 1,
            cluster: Optional[str] = None,
            tick: Optional[Callable[[float, str, int, int], None]] = None
            ) -> tuple[list[dict], list[dict]]:
    """Every method on every input at every radius: (table rows, per-input records).

    With `out_csv`, each row is appended as soon as it is finished (an interrupted run keeps
    what it completed, and one stopped before its first row leaves no file). `options[method]`
    passes options to one method; every method's norm and options are checked before the first
    row (`check_methods`). `workers` local processes (or a Dask `cluster`) share each
    method's inputs (verify.executor). `progress`
    gets one line per finished row; `tick(eps, method, done, total)` is called as inputs
    finish (the inputs then go in up to 10 chunks per row, so a progress bar can move)."""
    from .executor import run_jobs

    check_methods(methods, norm, options)
    options = options or {}
    rows, records = [], []
    def append_csv(values: list, mode: str = "a") -> None:
        try:
            with open(out_csv, mode, newline="") as fh:
                csv.writer(fh).writerow(values)
        except OSError as error:
            raise cannot_write(out_csv, error) from None

    if out_csv is not None:
        append_csv(FIELDS, "w")
    try:
        for eps in eps_list:
            for method in methods:
                t0 = time.perf_counter()
                parallel = workers > 1 or cluster is not None
                pieces = max(workers if parallel else 1, 10 if tick is not None else 1)
                chunks = [idx for idx in np.array_split(np.arange(len(xs)), pieces) if len(idx)]
                jobs = [(net, xs[idx], ys[idx], eps, norm, method, domain, options.get(method, {}),
                         parallel) for idx in chunks]
                parts, done = {}, 0
                if tick is not None:
                    tick(eps, method, 0, len(xs))
                for k, part in run_jobs(_certify_chunk, jobs, workers, cluster):
                    parts[k] = part
                    done += len(part)
                    if tick is not None:
                        tick(eps, method, done, len(xs))
                certs = [c for k in sorted(parts) for c in parts[k]]
                row = summarize(eps, norm, method, certs, time.perf_counter() - t0)
                rows.append(row)
                records += [{"eps": eps, "method": method, "index": i, "label": int(y),
                             "status": c.status.value, "worst_margin_lower": _worst(c.margin_lower),
                             "worst_margin_upper": _worst(c.margin_upper), "time_s": c.time_s}
                            for i, (y, c) in enumerate(zip(ys, certs))]
                if out_csv is not None:
                    append_csv([row[f] for f in FIELDS])
                if progress is not None:
                    progress(f"eps {eps:g} {method}: {row['yes']} YES, {row['no']} NO, "
                             f"{row['maybe']} MAYBE in {row['total_time_s']:.2f} s")
    except BaseException:  # interrupted or failed before a row: no file, not a header
        if out_csv is not None and not rows:
            out_csv.unlink(missing_ok=True)
        raise
    return rows, records


def _solved(cert: Certificate, j: int) -> bool:
    """Whether the certificate's lower and upper bounds on margin j meet (an exact minimum)."""
    lower, upper = cert.margin_lower[j], cert.margin_upper[j]
    return lower is not None and upper is not None and upper - lower <= 1e-6 * (1 + abs(lower))


def format_table(rows: list[dict]) -> str:
    """One block per radius: counts, robust accuracy (and which bound it is), margins, time."""
    lines = []
    for eps in dict.fromkeys(r["eps"] for r in rows):
        block = [r for r in rows if r["eps"] == eps]
        lines.append(f"eps {eps:g} (l_{block[0]['norm']}), {block[0]['inputs']} inputs")
        lines.append(f"  {'method':12s} {'YES':>4s} {'NO':>4s} {'MAYBE':>5s}  {'robust acc':>10s}"
                     f" {'acc is':>6s}  {'mean lower':>10s} {'median lower':>12s}"
                     f"  {'median time':>11s} {'total':>8s}")
        for r in block:
            lines.append(
                f"  {r['method']:12s} {r['yes']:4d} {r['no']:4d} {r['maybe']:5d}  "
                f"{r['robust_accuracy']:10.3f} {r['bound']:>6s}  "
                f"{_number(r['mean_margin_lower'], 10)} {_number(r['median_margin_lower'], 12)}  "
                f"{r['median_time_s'] * 1e3:8.2f} ms "
                f"{r['total_time_s']:7.2f}s")
        lines.append("")
    lines.append("acc is: a lower bound on the network's true robust accuracy (relaxed "
                 "certifiers), its exact value (complete methods), an upper bound (the attack), "
                 "or the smoothed classifier g's (smoothing).")
    if any(r["method"] in ("milp", "bab") for r in rows):
        lines.append("milp/bab: YES/NO counts are exact; their margin columns are lower bounds "
                     "from a search that stops once each sign is decided, not minima (one input "
                     "with --input gives the exact minima).")
    return "\n".join(lines)


def compare_one(net: Network, x: np.ndarray, label: int, eps: float, norm: str = "inf",
                methods: Sequence[str] = ("ibp", "crown", "alpha-crown", "lp", "milp", "attack"),
                domain=None, options: Optional[dict] = None
                ) -> tuple[str, dict[str, Certificate]]:
    """One input: every method's per-class margin bounds side by side (the exact minimum from
    the MILP with exact_margins, the attack's value as an upper bound). `options[method]`
    passes options to one method."""
    certs = {}
    if "exact_margins" in (options or {}).get("milp", {}):
        raise InputError("one-input compare solves milp with exact_margins=true (the exact "
                         "minima): leave that option out")
    check_methods(methods, norm, options)
    for method in methods:
        extra = {"exact_margins": True} if method == "milp" else {}
        extra.update((options or {}).get(method, {}))
        certs[method] = certify(net, x, label, eps, norm, method, domain, **extra)
    header = f"{'class':>5s} " + " ".join(f"{m:>12s}" for m in methods)
    lines = [f"label {label}, l_{norm} ball of radius {eps:g}: lower bounds on min z_{label} - "
             "z_j (milp: the exact minimum, or '>=' a lower bound where its time ran out; "
             "attack: an upper bound)", header]
    for j in range(net.output_size):
        if j == label:
            continue
        cells = []
        for method in methods:
            c = certs[method]
            value = c.margin_upper[j] if method == "attack" else c.margin_lower[j]
            if value is None:
                cells.append(f"{'-':>12s}")
            elif method == "milp" and not _solved(c, j):
                cells.append(f">={value:10.4f}")
            else:
                cells.append(f"{value:12.4f}")
        lines.append(f"{j:5d} " + " ".join(cells))
    lines.append(f"{'':5s} " + " ".join(f"{certs[m].status.value:>12s}" for m in methods))
    return "\n".join(lines), certs


def plot_curves(rows: list[dict], path: Path, title: str = "") -> bool:
    """Robust accuracy vs eps, one curve per method; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [(r["eps"], r["robust_accuracy"]) for r in rows if r["method"] == method]
        bound = next(r["bound"] for r in rows if r["method"] == method)
        style = {"upper": "--", "exact": "-", "lower": "-.", "of g": ":"}[bound]
        ax.plot(*zip(*pts), style, marker="o", label=f"{method} ({bound})")
    ax.set_xlabel("eps")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or "certified accuracy vs radius")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return True


def write_json(rows: list[dict], records: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe({"rows": rows, "inputs": records}), indent=1,
                                  allow_nan=False))
