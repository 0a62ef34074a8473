"""What the benchmark scripts share: the machine line, one-thread setup, CSV / PNG writing, and
the cross-method checks on `verify.compare` records.

    from benchmarks.reporting import machine, write_csv, pyplot, finish_png, check_records

`machine()` is the line every results/*.md starts with (platform, cores, library versions,
threads, date).
"""

from __future__ import annotations

import csv
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import verify
from verify.outputs import pyplot  # noqa: F401 (the scripts import it from here)
from verify.outputs import atomic_path, save_figure, write_text_atomically

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_NOTE = ("The machine is shared with other jobs (2 cores): absolute times vary from run to "
               "run; medians are reported and ratios within one run are the robust figures.")


def single_thread() -> None:
    """One torch thread (HiGHS runs its MIP single-threaded); set OMP_NUM_THREADS=1 in the shell
    too, before Python starts, so that no OpenMP pool spins on a shared machine."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def clocks(device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds after the device's queued work; the CPU clock is the fair one
    on a shared CPU machine (another job's load does not count), the wall clock on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def machine() -> str:
    """The machine and versions a benchmark ran on, in one line."""
    return (f"{platform.platform()}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
            f" ({torch.get_num_threads()} thread(s), OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), numpy {np.__version__}, highspy "
            f"{_version('highspy')}, verify {verify.__version__}; {time.strftime('%Y-%m-%d')}")


def write_csv(rows: list[dict], path: Path) -> None:
    """Rows as CSV (columns: the union of the keys, in first-seen order), written whole."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


write_text = write_text_atomically  # results/*.md, written whole


def publish(name: str, rows: list[dict], lines: list[str], problems: list) -> int:
    """results/NAME.csv from rows and results/NAME.md from lines (also printed); the exit code:
    1 when the cross-method checks found problems."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_csv(rows, RESULTS / f"{name}.csv")
    write_text(RESULTS / f"{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if problems else 0


def add_sampling_arguments(parser) -> None:
    """The smoothing benchmarks' sampler options: --batch-size, --seed, --device, --threads."""
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def finish_png(fig, path: Path) -> bool:
    """Lay out, write whole (`verify.outputs.save_figure`, which closes it) a finished figure;
    True (it was drawn)."""
    fig.tight_layout()
    save_figure(fig, path)
    return True


def check_records(records: list[dict], order: tuple[tuple[str, str], ...] = (),
                  slack: float = 1e-9) -> list[str]:
    """Cross-method checks on `verify.compare` records (one per eps, method, input); returns one
    line per violation, empty when all hold.

    - no input gets YES from one method and NO from another (a YES next to a replayed
      counterexample is a soundness bug);
    - per input, the largest lower bound on min_j (z_y - z_j) over the methods is at most the
      smallest upper bound (every margin_upper is the value at a replayed point of the set);
    - for each (weaker, stronger) pair in `order`: every input the weaker method proves, the
      stronger proves too (e.g. ("ibp", "crown"): CROWN is intersected with IBP).
    """
    by_input: dict[tuple, dict[str, dict]] = {}
    for r in records:
        by_input.setdefault((r.get("model", ""), r["eps"], r["index"]), {})[r["method"]] = r
    problems = []
    for key, methods in sorted(by_input.items(), key=lambda kv: str(kv[0])):
        where = f"model {key[0]!r} eps {key[1]:g} input {key[2]}"
        yes = [m for m, r in methods.items() if r["status"] == "YES"]
        no = [m for m, r in methods.items() if r["status"] == "NO"]
        if yes and no:
            problems.append(f"{where}: YES from {yes} but NO from {no}")
        lowers = {m: r["worst_margin_lower"] for m, r in methods.items()
                  if np.isfinite(r["worst_margin_lower"])}
        uppers = {m: r["worst_margin_upper"] for m, r in methods.items()
                  if np.isfinite(r["worst_margin_upper"])}
        if lowers and uppers:
            lo_m = max(lowers, key=lowers.get)
            up_m = min(uppers, key=uppers.get)
            if lowers[lo_m] > uppers[up_m] + slack * max(1.0, abs(uppers[up_m])):
                problems.append(f"{where}: lower bound {lowers[lo_m]:.9g} ({lo_m}) above upper "
                                f"bound {uppers[up_m]:.9g} ({up_m})")
        for weak, strong in order:
            if weak in methods and strong in methods and methods[weak]["status"] == "YES" \
                    and methods[strong]["status"] != "YES":
                problems.append(f"{where}: {weak} proves it, {strong} gives "
                                f"{methods[strong]['status']}")
    return problems


def loglog_slope(sizes, times) -> Optional[float]:
    """k of the least-squares fit log t = k log n + c (None with fewer than 2 usable points)."""
    pts = [(np.log(n), np.log(t)) for n, t in zip(sizes, times) if n > 0 and t > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])
