"""Start-up, deadline overshoot and threads under load, each in fresh processes.

    python benchmarks/runtime.py [--repeats 5] [--skip startup overshoot threads exit refusal]

1. Start-up: `verify vnnlib` and `verify-solver verify` on an instance the attack refutes at
   once (mnist_fc prop_1_0.03) against `python -c "import torch"`, and reading an ONNX model with
   `import onnx` against verify.onnx_proto, and constructing torch.optim.Adam against
   alpha-CROWN's ProjectedAdam (all after importing torch); medians over --repeats after one
   untimed warm-up round, the order alternating each repeat. Bytecode caching is on, as for an
   installed package (PYTHONDONTWRITEBYTECODE is dropped from the children's environment). Goal:
   verify / torch <= 1.3.
2. Deadline overshoot: `verify vnnlib`, `verify-solver verify` and `verify certify` at several
   timeouts on cases that cannot finish in them (mnist_fc prop_10_0.05, ACAS Xu 1_9 prop_7,
   smoothing with 10^8 samples), alone and next to a busy neighbour. Overshoot = the time the
   command reports for itself minus the timeout (vnnlib's and verify-solver's clocks start with
   the process, so their start-up is inside; certify's with the certifier). Goal: <= 1 s.
3. Threads: ACAS Xu 1_1 prop_3 (bab, a few seconds) with the thread policy (1 thread: a small
   network) and with torch's default (one per core), alone and next to a busy neighbour (a
   second process spinning on a core). Goal: loaded / quiet <= 3 for the policy.
4. Exit: `verify-solver verify` on verivital instances (one that times out at --timeout 3, one
   answered sat at once), ended by os._exit after the answer (the command, console_main)
   against the interpreter's normal exit (`sys.exit(main())`: torch's and onnxruntime's
   teardown), fresh processes alternating; per way the medians of the reported time, of the
   wall time and of wall - reported (the exit, plus the process spawn).
5. Refusal: `verify certify --timeout -1` and `verify-solver verify --timeout -1` against
   `python -c "import torch"`. Goal: < 1x (refused before torch is imported).

Writes benchmarks/results/runtime.md and runtime.csv.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.reporting import SHARED_NOTE, machine, write_csv, write_text  # noqa: E402

SHARED = REPO / "benchmarks" / "data"
RESULTS = REPO / "benchmarks" / "results"
PY = sys.executable
MNIST = SHARED / "mnist_fc"
ACAS = SHARED / "acasxu"


def _use_benchmarks(folder: Path) -> None:
    global SHARED, MNIST, ACAS
    SHARED, MNIST, ACAS = folder, folder / "mnist_fc", folder / "acasxu"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("OMP_NUM_THREADS", None)  # the policy (or --threads) decides, as for a user
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # .pyc files cached, as for an installed package
    return env


def timed(cmd: list[str], timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    """(wall seconds, completed process) of one fresh process."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO,
                          timeout=timeout)
    return time.perf_counter() - t0, done


def vnnlib_cmd(model: Path, prop: Path, timeout: float, *extra: str) -> list[str]:
    return [PY, "-m", "verify", "vnnlib", str(model), str(prop), "--timeout", str(timeout),
            *extra]


def load_average() -> str:
    """The 1-minute load average now (other jobs on the machine), for the record."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"


def alternating(commands: dict[str, list[str]], repeats: int, warm_up: bool = False,
                codes: dict[str, int] = {}) -> dict[str, list[float]]:  # noqa: B006 (read only)
    """Wall times of each command, run in turn, the order reversed every other repeat (after
    one untimed round with `warm_up`: caches filled, .pyc files written); each must exit with
    its code in `codes` (default 0)."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for name in names if warm_up else []:
        timed(commands[name])
    for k in range(repeats):
        for name in (names if k % 2 == 0 else names[::-1]):
            wall, done = timed(commands[name])
            if done.returncode != codes.get(name, 0):
                raise SystemExit(f"{name} failed: {done.stderr.strip()[-300:]}")
            times[name].append(wall)
    return times


def refusal(repeats: int, rows: list[dict], lines: list[str]) -> float:
    """A bad --timeout refused (exit 2 / 1) by `verify certify` and `verify-solver verify`,
    against `python -c "import torch"`; the larger ratio to import torch."""
    model = REPO / "models" / "digits_mlp.onnx"
    commands = {
        "import torch": [PY, "-c", "import torch"],
        "verify certify --timeout -1": [PY, "-m", "verify", "certify", str(model), "--input",
                                        "x.npy", "--label", "0", "--eps", "0.1", "--timeout",
                                        "-1"],
        "verify-solver verify --timeout -1": [PY, "-m", "verify.solver_cli", "verify",
                                              "q.vnnlib", "--timeout", "-1"],
    }
    codes = {"verify certify --timeout -1": 2, "verify-solver verify --timeout -1": 1}
    load = load_average()
    times = alternating(commands, repeats, warm_up=True, codes=codes)
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        rows.append({"part": "refusal", "case": name, "median_s": round(med[name], 3),
                     "runs": len(t)})
    lines += ["## Bad argument refused (fresh processes, medians of %d, order alternating)"
              % repeats, "", f"1-minute load average {load} at the start.", "",
              "| command | median wall (s) | / import torch |", "|---|---|---|"]
    lines += [f"| {name} | {med[name]:.3f} | {med[name] / med['import torch']:.2f}x |"
              for name in commands]
    lines += ["", "The plain arguments are checked before torch, onnx, onnxruntime and highspy "
              "are imported (verify/__init__ resolves its names on first use).", ""]
    return max(med[name] / med["import torch"] for name in codes)


def startup(repeats: int, rows: list[dict], lines: list[str]) -> float:
    model = MNIST / "onnx" / "mnist-net_256x2.onnx"
    prop = MNIST / "vnnlib" / "prop_1_0.03.vnnlib"
    onnx_model = str(model)
    commands = {
        "import torch": [PY, "-c", "import torch"],
        "verify vnnlib (sat by the attack)": vnnlib_cmd(model, prop, 60),
        "verify-solver verify (sat by the attack)": [
            PY, "-m", "verify.solver_cli", "verify", str(prop), "--network", f"N={model}",
            "--timeout", "60"],
        "torch + import onnx + onnx.load": [PY, "-c", f"import torch, onnx; "
                                            f"onnx.load({onnx_model!r})"],
        "torch + onnx_proto.read_model_proto": [
            PY, "-c", f"import torch; from verify.onnx_proto import read_model_proto; "
                      f"read_model_proto({onnx_model!r})"],
        "torch + torch.optim.Adam": [PY, "-c", "import torch; torch.optim.Adam("
                                     "[torch.zeros(3, requires_grad=True)], lr=0.1)"],
        "torch + ProjectedAdam": [PY, "-c", "import torch; from verify.bounds.alpha_crown import "
                                  "ProjectedAdam; ProjectedAdam([torch.zeros(3, "
                                  "requires_grad=True)], lr=0.1)"],
    }
    load = load_average()
    times = alternating(commands, repeats, warm_up=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        rows.append({"part": "startup", "case": name, "median_s": round(med[name], 3),
                     "runs": len(t)})
    ratio = med["verify vnnlib (sat by the attack)"] / med["import torch"]
    solver_ratio = med["verify-solver verify (sat by the attack)"] / med["import torch"]
    onnx_ratio = med["torch + import onnx + onnx.load"] / med["torch + onnx_proto.read_model_proto"]
    lines += ["## Start-up (fresh processes, medians of %d, order alternating)" % repeats, "",
              f"1-minute load average {load} at the start, {load_average()} at the end.", "",
              "| command | median wall (s) | / import torch |", "|---|---|---|"]
    lines += [f"| {name} | {med[name]:.3f} | {med[name] / med['import torch']:.2f}x |"
              for name in commands]
    lines += ["", f"verify vnnlib / import torch: **{ratio:.2f}x**, verify-solver verify / "
              f"import torch: **{solver_ratio:.2f}x** (goal <= 1.3x). "
              f"Reading the model with `import onnx` / with verify.onnx_proto: "
              f"**{onnx_ratio:.2f}x** ({med['torch + import onnx + onnx.load'] - med['torch + onnx_proto.read_model_proto']:.2f} s saved). "
              f"Constructing torch.optim.Adam (it imports torch._dynamo) / alpha-CROWN's own "
              f"ProjectedAdam: **{med['torch + torch.optim.Adam'] / med['torch + ProjectedAdam']:.2f}x** "
              f"({med['torch + torch.optim.Adam'] - med['torch + ProjectedAdam']:.2f} s saved).", ""]
    return max(ratio, solver_ratio)


_REPORTED = re.compile(r"\(([^,()]+), ([0-9.]+) s")


def overshoot_cases(x_file: Path) -> list[tuple[str, float, list[str]]]:
    """(case, timeout, command): each cannot finish within its timeout (ground truth unsat, or
    more work than the time allows), several timeouts per case."""
    prop10 = MNIST / "vnnlib" / "prop_10_0.05.vnnlib"
    mnist = MNIST / "onnx" / "mnist-net_256x2.onnx"
    acas = ACAS / "onnx" / "ACASXU_run2a_1_9_batch_2000.onnx"
    prop7 = ACAS / "vnnlib" / "prop_7.vnnlib"
    digits = REPO / "models" / "digits_mlp.onnx"
    solver = [PY, "-m", "verify.solver_cli", "verify", str(prop10), "--network", f"N={mnist}",
              "--timeout"]
    smoothing = [PY, "-m", "verify", "certify", str(digits), "--input", str(x_file), "--label",
                 "7", "--eps", "0.1", "--norm", "2", "--method", "smoothing", "--sigma", "0.25",
                 "--n", "100000000", "--json", "--timeout"]
    return [
        *[("mnist_fc prop_10_0.05 auto", t, vnnlib_cmd(mnist, prop10, t)) for t in (5, 10)],
        ("mnist_fc prop_10_0.05 milp", 5, vnnlib_cmd(mnist, prop10, 5, "--method", "milp")),
        ("mnist_fc prop_10_0.05 lp", 5, vnnlib_cmd(mnist, prop10, 5, "--method", "lp")),
        ("mnist_fc prop_10_0.05 bab", 5, vnnlib_cmd(mnist, prop10, 5, "--method", "bab")),
        *[("ACAS Xu 1_9 prop_7 auto (bab)", t, vnnlib_cmd(acas, prop7, t)) for t in (5, 10)],
        ("ACAS Xu 1_9 prop_7 milp", 5, vnnlib_cmd(acas, prop7, 5, "--method", "milp")),
        *[("verify-solver mnist_fc prop_10_0.05", t, solver + [str(t)]) for t in (5, 10)],
        *[("certify smoothing n=10^8", t, smoothing + [str(t)]) for t in (2, 5)],
    ]


def overshoot(rows: list[dict], lines: list[str]) -> dict[str, list[float]]:
    """Every case alone and next to a busy neighbour; {load: overshoots of the cases that ran
    into their timeout} (a case answered before it, e.g. lp's unknown, has a negative one).
    A case whose start-up (and, for verify-solver, loading) alone used up the timeout answers
    at once: stage `start-up`; its overshoot is the start-up's, listed apart from the goal."""
    x_file = RESULTS / ".runtime_input.npy"
    import json

    import numpy as np

    np.save(x_file, np.load(REPO / "models" / "digits_test.npz")["x"][0])
    overs: dict[str, list[float]] = {}
    start_bound: dict[str, list[float]] = {}
    lines += ["## Deadline overshoot (one fresh process per case)", "",
              "| load | case | timeout (s) | answer | stage | reported (s) | overshoot (s) "
              "| wall (s) |", "|---|---|---|---|---|---|---|---|"]
    loads = []
    for load in ("quiet", "busy neighbour"):
        neighbour = _busy_neighbour() if load != "quiet" else None
        loads.append(f"{load}: {load_average()}")
        overs[load], start_bound[load] = [], []
        try:
            for name, limit, cmd in overshoot_cases(x_file):
                wall, done = timed(cmd)
                answer = (done.stdout.strip().splitlines() or ["?"])[0][:40]
                reported, stage = None, "certifier"
                if "certify" in cmd:
                    try:
                        cert = json.loads(done.stdout)
                        reported = cert["time_s"]
                        answer = f"{cert['status']}: {cert['reason'][:40]}"
                    except (ValueError, KeyError):
                        answer = f"error: {done.stderr.strip()[-80:]}"
                else:
                    match = _REPORTED.search(done.stderr)
                    reported = float(match.group(2)) if match else None
                    stage = match.group(1) if match else "?"
                    if "start-up took" in done.stderr or stage == "loading":
                        stage = "start-up"  # the timeout was gone before solving began
                over = (reported - limit) if reported is not None else float("nan")
                if reported is not None and over > -0.5:  # ran into its timeout
                    (start_bound if stage == "start-up" else overs)[load].append(over)
                rows.append({"part": "overshoot", "case": f"{name}, {load}", "timeout_s": limit,
                             "answer": answer, "stage": stage, "reported_s": reported,
                             "overshoot_s": round(over, 3), "wall_s": round(wall, 3)})
                shown = f"{reported:.3f}" if reported is not None else "?"
                lines.append(f"| {load} | {name} | {limit} | {answer} | {stage} | {shown} | "
                             f"{over:+.2f} | {wall:.2f} |")
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
    x_file.unlink(missing_ok=True)
    summary = "; ".join(f"{load}: median **{statistics.median(v):+.2f} s**, max "
                        f"**{max(v):+.2f} s** over {len(v)} cases" for load, v in overs.items()
                        if v)
    early = "; ".join(f"{load}: {len(v)} case(s), start-up past the timeout by up to "
                      f"{max(v):.2f} s" for load, v in start_bound.items() if v) or "none"
    lines += ["", f"Overshoot of the cases that ran into their timeout while solving: {summary} "
              f"(goal <= 1 s). Start-up alone used up the timeout (answered at once, not in "
              f"the goal): {early}. "
              f"1-minute load average at the start of each load: {', '.join(loads)}. "
              "`reported` is the time the command prints for itself (vnnlib and verify-solver: "
              "from the process start, Python's and torch's start-up included; certify: the "
              "certifier); wall is the whole process as the shell sees it.", ""]
    return overs


def _busy_neighbour() -> subprocess.Popen:
    return subprocess.Popen([PY, "-c", "while True: pass"])


def threads(repeats: int, rows: list[dict], lines: list[str]) -> dict:
    cmd = vnnlib_cmd(ACAS / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx",
                     ACAS / "vnnlib" / "prop_3.vnnlib", 120)
    cores = str(os.cpu_count() or 1)
    settings = {"policy (1 thread)": cmd, f"torch default ({cores} threads)":
                cmd + ["--threads", cores]}
    med: dict[tuple[str, str], float] = {}
    loads = []
    for load in ("quiet", "busy neighbour"):
        neighbour = _busy_neighbour() if load != "quiet" else None
        loads.append(f"{load}: {load_average()}")
        try:
            times = alternating(settings, repeats)
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
        for name, t in times.items():
            med[(name, load)] = statistics.median(t)
            rows.append({"part": "threads", "case": f"{name}, {load}",
                         "median_s": round(med[(name, load)], 3), "runs": len(t)})
    lines += ["## Threads: ACAS Xu 1_1 prop_3 (bab), whole command, medians of %d" % repeats, "",
              "| threads | quiet (s) | busy neighbour (s) | loaded / quiet |", "|---|---|---|---|"]
    ratios = {}
    for name in settings:
        quiet, busy = med[(name, "quiet")], med[(name, "busy neighbour")]
        ratios[name] = busy / quiet
        lines.append(f"| {name} | {quiet:.2f} | {busy:.2f} | {busy / quiet:.2f}x |")
    policy, default = list(settings)
    lines += ["", f"Under load, torch default / policy: "
              f"**{med[(default, 'busy neighbour')] / med[(policy, 'busy neighbour')]:.2f}x**; "
              f"policy loaded / quiet: **{ratios[policy]:.2f}x** (goal <= 3x). 1-minute load "
              f"average at the start of each load: {', '.join(loads)}.", ""]
    return ratios


VERIVITAL = "vnncomp2021/verivital"


def exit_cases() -> list[tuple[str, float, list[str]]]:
    """(case, timeout, verify-solver arguments after the program) on verivital: one that runs
    into its timeout (or answers just before it), one the attack answers sat at once."""
    folder = SHARED / VERIVITAL

    def args(net: str, prop: str, timeout: float) -> list[str]:
        return ["verify", str(folder / "vnnlib" / f"{prop}.vnnlib"), "--network",
                f"N={folder / 'onnx' / f'{net}.onnx'}", "--timeout", str(timeout)]

    return [("Convnet_maxpool prop_0_0.04 (timeout 3)", 3.0,
             args("Convnet_maxpool", "prop_0_0.04", 3.0)),
            ("Convnet_avgpool prop_4_0.04 (sat)", 60.0, args("Convnet_avgpool", "prop_4_0.04", 60))]


def exit_teardown(repeats: int, rows: list[dict], lines: list[str]) -> dict[str, float]:
    """os._exit after the answer against the interpreter's exit; {way: median wall - reported
    over all cases}."""
    ways = {"interpreter exit": [PY, "-c", "import sys; from verify.solver_cli import main; "
                                           "sys.exit(main())"],
            "os._exit (console_main)": [PY, "-m", "verify.solver_cli"]}
    lines += ["## Exit after the answer: verify-solver verify, fresh processes, medians of %d, "
              "order alternating" % repeats, "",
              f"1-minute load average {load_average()} at the start.", "",
              "| case | exit | answer | reported (s) | wall (s) | wall - reported (s) "
              "| wall - timeout (s) |", "|---|---|---|---|---|---|---|"]
    gaps: dict[str, list[float]] = {way: [] for way in ways}
    for name, limit, arguments in exit_cases():
        got: dict[str, list[tuple[float, float, str]]] = {way: [] for way in ways}
        for k in range(repeats):
            for way in (list(ways) if k % 2 == 0 else list(ways)[::-1]):
                wall, done = timed(ways[way] + arguments)
                match = _REPORTED.search(done.stderr)
                if done.returncode != 0 or match is None:
                    raise SystemExit(f"{name}, {way} failed: {done.stderr.strip()[-300:]}")
                got[way].append((wall, float(match.group(2)),
                                 (done.stdout.strip().splitlines() or ["?"])[0]))
        for way, runs in got.items():
            wall = statistics.median(r[0] for r in runs)
            reported = statistics.median(r[1] for r in runs)
            gap = statistics.median(r[0] - r[1] for r in runs)
            gaps[way] += [r[0] - r[1] for r in runs]
            answers = "/".join(sorted({r[2] for r in runs}))
            rows.append({"part": "exit", "case": f"{name}, {way}", "timeout_s": limit,
                         "answer": answers, "reported_s": round(reported, 3),
                         "median_s": round(wall, 3), "runs": len(runs)})
            over = f"{wall - limit:+.2f}" if limit < 60 else "-"
            lines.append(f"| {name} | {way} | {answers} | {reported:.3f} | {wall:.2f} | "
                         f"{gap:.2f} | {over} |")
    medians = {way: statistics.median(v) for way, v in gaps.items()}
    lines += ["", "Wall - reported, median over all runs: " + ", ".join(
        f"{way} **{v:.2f} s** (max {max(gaps[way]):.2f} s)" for way, v in medians.items()) +
        ". `reported` is verify-solver's own time from the process start to the answer.", ""]
    return medians


# Per part: the start of its section heading in runtime.md and of its line under Goals.
PARTS = {"startup": ("## Start-up", "- start-up"), "overshoot": ("## Deadline overshoot",
                                                                 "- overshoot"),
         "threads": ("## Threads", "- loaded / quiet"), "exit": ("## Exit after the answer",
                                                                 "- exit after"),
         "refusal": ("## Bad argument refused", "- bad argument")}


def previous_results(skipped: list[str]) -> tuple[list[str], list[str], list[dict]]:
    """The sections, goal lines and CSV rows of the `skipped` parts in the results written
    before (kept, so that running one part does not erase the others)."""
    import csv

    text = (RESULTS / "runtime.md").read_text() if (RESULTS / "runtime.md").is_file() else ""
    sections, goals = [], []
    for block in text.split("\n## ")[1:]:
        block = "## " + block
        if block.startswith("## Goals"):
            goals = [line for line in block.splitlines()
                     if any(line.startswith(PARTS[part][1]) for part in skipped)]
        elif any(block.startswith(PARTS[part][0]) for part in skipped):
            sections += block.rstrip("\n").splitlines() + [""]
    rows = []
    if (RESULTS / "runtime.csv").is_file():
        with (RESULTS / "runtime.csv").open(newline="") as f:
            rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)
                    if row["part"] in skipped]
    return sections, goals, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["startup", "overshoot", "threads", "exit", "refusal"])
    parser.add_argument("--benchmarks", type=Path, default=SHARED,
                        help="the third-party benchmarks folder (default benchmarks/data)")
    args = parser.parse_args()
    _use_benchmarks(args.benchmarks)
    if not SHARED.is_dir():
        raise SystemExit(f"needs the third-party benchmarks at {SHARED}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    lines = ["# Run time: start-up, deadlines, threads", "", f"Machine: {machine()}", "",
             SHARED_NOTE, ""]
    lines += [f"Load: other jobs share the machine (1-minute load average {load_average()} "
              "when this run began); `quiet` means no neighbour of this script's own, `busy "
              "neighbour` adds one process spinning on a core.", ""]
    kept_sections, goals, rows = previous_results(args.skip)
    if kept_sections:
        lines += [f"Sections kept from the previous run (parts skipped in this one: "
                  f"{', '.join(args.skip)}):", "", *kept_sections]
    if "startup" not in args.skip:
        ratio = startup(args.repeats, rows, lines)
        goals.append(f"- start-up <= 1.3x import torch: {'met' if ratio <= 1.3 else 'NOT met'}"
                     f" ({ratio:.2f}x)")
    if "overshoot" not in args.skip:
        overs = overshoot(rows, lines)
        for load, values in overs.items():
            worst = max(values, default=float("nan"))
            goals.append(f"- overshoot <= 1 s ({load}): {'met' if worst <= 1.0 else 'NOT met'} "
                         f"(largest {worst:+.2f} s)")
    if "threads" not in args.skip:
        ratios = threads(max(1, args.repeats // 2), rows, lines)
        policy = ratios["policy (1 thread)"]
        goals.append(f"- loaded / quiet <= 3x with the policy: "
                     f"{'met' if policy <= 3 else 'NOT met'} ({policy:.2f}x)")
    if "exit" not in args.skip:
        gaps = exit_teardown(args.repeats, rows, lines)
        goals.append(f"- exit after the answer, wall - reported: interpreter exit "
                     f"{gaps['interpreter exit']:.2f} s, os._exit "
                     f"{gaps['os._exit (console_main)']:.2f} s (no goal; smaller is better)")
    if "refusal" not in args.skip:
        ratio = refusal(args.repeats, rows, lines)
        goals.append(f"- bad argument refused faster than import torch: "
                     f"{'met' if ratio < 1 else 'NOT met'} ({ratio:.2f}x)")
    lines += ["## Goals", "", *goals, ""]
    write_csv(rows, RESULTS / "runtime.csv")
    write_text(RESULTS / "runtime.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
