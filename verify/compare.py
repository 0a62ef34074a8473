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
from .outputs import atomic_path, cannot_write, pyplot, save_figure

KIND = {"attack": "upper", "milp": "exact", "bab": "exact", "smoothing": "of g"}
FIELDS = ["eps", "norm", "method", "bound", "inputs", "yes", "no", "maybe",
          "robust_accuracy", "mean_margin_lower", "median_margin_lower", "median_time_s",
          "total_time_s"]


def _worst(values: Sequence[Optional[float]]) -> float:
    finite = [v for v in values if v is not None]
    return min(finite) if finite else float("nan")


def _number(value: float) -> str:
    """A table cell: the value, or '-' where there is none (the attack bounds no margin)."""
    return f"{value:.4g}" if np.isfinite(value) else "-"


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


def _layout(header_rows: list[list[str]], rows: list[list[str]], indent: str = "") -> list[str]:
    """Columns as wide as their widest cell, two spaces apart: the first left-aligned, the others
    right-aligned, so each value ends where its header ends (whatever the numbers' sizes)."""
    every = header_rows + rows
    widths = [max(len(r[k]) for r in every) for k in range(len(every[0]))]
    return [indent + "  ".join(cell.ljust(w) if k == 0 else cell.rjust(w)
                               for k, (cell, w) in enumerate(zip(r, widths))).rstrip()
            for r in every]


def _margins_of_g(row: dict) -> bool:
    """Whether a row's margins are the smoothed classifier g's (probabilities), not logits."""
    return row["bound"] == KIND["smoothing"]


def format_table(rows: list[dict]) -> str:
    """One block per radius: counts, robust accuracy (and which bound it is), margins, time.

    Logit margins (z_y - z_j) and the smoothed classifier's probability margins
    (p_y - p_j of g) are different quantities: each has its own pair of columns, the latter
    only when smoothing is in the table."""
    with_g = any(_margins_of_g(r) for r in rows)
    header = ["method", "YES", "NO", "MAYBE", "robust acc", "acc is", "mean lower",
              "median lower"] + (["g mean lower", "g median lower"] if with_g else []) \
        + ["median time", "total"]
    lines = []
    for eps in dict.fromkeys(r["eps"] for r in rows):
        block = [r for r in rows if r["eps"] == eps]
        lines.append(f"eps {eps:g} (l_{block[0]['norm']}), {block[0]['inputs']} inputs")
        cells = []
        for r in block:
            margins = [_number(r["mean_margin_lower"]), _number(r["median_margin_lower"])]
            none = ["-", "-"]
            if with_g:
                margins = none + margins if _margins_of_g(r) else margins + none
            cells.append([r["method"], str(r["yes"]), str(r["no"]), str(r["maybe"]),
                          f"{r['robust_accuracy']:.3f}", r["bound"], *margins,
                          f"{r['median_time_s'] * 1e3:.2f} ms", f"{r['total_time_s']:.2f}s"])
        lines += _layout([header], cells, indent="  ")
        lines.append("")
    lines.append("acc is: a lower bound on the network's true robust accuracy (relaxed "
                 "certifiers), its exact value (complete methods), an upper bound (the attack), "
                 "or the smoothed classifier g's (smoothing).")
    lines.append("mean/median lower: over the inputs, the lower bound on the worst margin "
                 "min_j z_y - z_j (logits)" + (
                     "; g mean/median lower: the same for g's class probabilities, "
                     "min_j p_y - p_j (smoothing)." if with_g else "."))
    if any(r["method"] in ("milp", "bab") for r in rows):
        lines.append("milp/bab: YES/NO counts are exact; their margin columns are lower bounds "
                     "from a search that stops once each sign is decided, not minima (one input "
                     "with --input gives the exact minima).")
    return "\n".join(lines)


ONE_INPUT_FIELDS = ["eps", "norm", "label", "class", "method", "margin_of", "bound", "value",
                    "margin_lower", "margin_upper", "status"]


def compare_one(net: Network, x: np.ndarray, label: int, eps: float, norm: str = "inf",
                methods: Sequence[str] = ("ibp", "crown", "alpha-crown", "lp", "milp", "attack"),
                domain=None, options: Optional[dict] = None
                ) -> tuple[str, dict[str, Certificate]]:
    """One input: every method's per-class margin bounds side by side (the exact minimum from
    the MILP with exact_margins, the attack's value as an upper bound). `options[method]`
    passes options to one method. The table is `format_one(one_input_records(...))`."""
    certs = {}
    if "exact_margins" in (options or {}).get("milp", {}):
        raise InputError("one-input compare solves milp with exact_margins=true (the exact "
                         "minima): leave that option out")
    check_methods(methods, norm, options)
    for method in methods:
        extra = {"exact_margins": True} if method == "milp" else {}
        extra.update((options or {}).get(method, {}))
        certs[method] = certify(net, x, label, eps, norm, method, domain, **extra)
    return format_one(one_input_records(certs, label, eps, norm)), certs


def one_input_records(certs: dict[str, Certificate], label: int, eps: float, norm: str
                      ) -> list[dict]:
    """One record per (class j != label, method): the value the table shows and what it is.

    margin_of: "z" (logits, z_label - z_j) or "g" (smoothing: the smoothed classifier's class
    probabilities, p_label - p_j). bound: "lower", "upper" (the attack's value at its point),
    "exact" (the MILP's minimum) or ">=" (a MILP row its time limit left open: a lower bound).
    value: None where the method bounds nothing for that class."""
    records = []
    n_classes = len(next(iter(certs.values())).margin_lower)
    for j in range(n_classes):
        if j == label:
            continue
        for method, c in certs.items():
            bound = {"attack": "upper", "milp": "exact" if _solved(c, j) else ">="}.get(
                method, "lower")
            value = c.margin_upper[j] if method == "attack" else c.margin_lower[j]
            records.append({"eps": eps, "norm": norm, "label": label, "class": j,
                            "method": method, "margin_of": "g" if method == "smoothing" else "z",
                            "bound": bound, "value": value, "margin_lower": c.margin_lower[j],
                            "margin_upper": c.margin_upper[j], "status": c.status.value})
    return records


def format_one(records: list[dict]) -> str:
    """The one-input table: a column per method, a row per class; under each method's name
    what its column holds (z lower, z exact, z upper, g lower)."""
    first = records[0]
    label, methods = first["label"], list(dict.fromkeys(r["method"] for r in records))
    what = {r["method"]: r["margin_of"] + (" exact" if r["bound"] in ("exact", ">=")
                                           else f" {r['bound']}") for r in records}
    status = {r["method"]: r["status"] for r in records}
    cells = []
    for j in dict.fromkeys(r["class"] for r in records):
        row = {r["method"]: r for r in records if r["class"] == j}
        line = [str(j)]
        for method in methods:
            r = row[method]
            if r["value"] is None:
                line.append("-")
            else:
                line.append((">=" if r["bound"] == ">=" else "") + f"{r['value']:.4f}")
        cells.append(line)
    cells.append([""] + [status[m] for m in methods])
    lines = [f"label {label}, l_{first['norm']} ball of radius {first['eps']:g}: bounds on the "
             f"margin min z_{label} - z_j over the ball (z: logits; g: the smoothed "
             f"classifier's probabilities p_{label} - p_j; milp: the exact minimum, or '>=' a "
             "lower bound where its time ran out; attack: an upper bound)"]
    lines += _layout([["class", *methods], ["", *(what[m] for m in methods)]], cells)
    return "\n".join(lines)


def write_one_input(records: list[dict], certs: dict[str, Certificate], folder: Path,
                    title: str = "") -> list[Path]:
    """compare.csv (the records), compare.json (records and certificates) and compare.png
    (margins per class, when matplotlib is there) in `folder`, each written whole; the paths
    written."""
    csv_path = folder / "compare.csv"
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, ONE_INPUT_FIELDS)
            writer.writeheader()
            writer.writerows({k: ("" if r[k] is None else r[k]) for k in ONE_INPUT_FIELDS}
                             for r in records)
    json_path = folder / "compare.json"
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(json_safe({
            "margins": records, "certificates": {m: c.to_dict() for m, c in certs.items()}}),
            indent=1, allow_nan=False))
    written = [csv_path, json_path]
    if plot_margins(records, folder / "compare.png", title):
        written.append(folder / "compare.png")
    return written


def plot_margins(records: list[dict], path: Path, title: str = "") -> bool:
    """Margin bounds per class, one marker series per method (g's probability margins on their
    own axes below); False if matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False
    kinds = list(dict.fromkeys(r["margin_of"] for r in records))
    fig, axes = plt.subplots(len(kinds), 1, figsize=(6, 3.2 * len(kinds)), squeeze=False)
    marker = {"lower": "^", "upper": "v", "exact": "o", ">=": "^"}
    for ax, kind in zip(axes[:, 0], kinds):
        mine = [r for r in records if r["margin_of"] == kind]
        for method in dict.fromkeys(r["method"] for r in mine):
            pts = [(r["class"], r["value"]) for r in mine
                   if r["method"] == method and r["value"] is not None]
            if pts:
                bound = next(r["bound"] for r in mine if r["method"] == method)
                ax.plot(*zip(*pts), marker[bound],
                        label=f"{method} ({'exact' if bound == '>=' else bound})")
        ax.axhline(0.0, color="grey", lw=0.8)
        label = mine[0]["label"]
        ax.set_xlabel("class j")
        ax.set_ylabel(f"z_{label} - z_j" if kind == "z" else f"p_{label} - p_j of g")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    axes[0, 0].set_title(title or "margin bounds per class")
    fig.tight_layout()
    save_figure(fig, path)
    return True


def plot_curves(rows: list[dict], path: Path, title: str = "") -> bool:
    """Robust accuracy vs eps, one curve per method; False if matplotlib is missing."""
    plt = pyplot()
    if plt is None:
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
    save_figure(fig, path)
    return True


def write_json(rows: list[dict], records: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe({"rows": rows, "inputs": records}), indent=1,
                                  allow_nan=False))
