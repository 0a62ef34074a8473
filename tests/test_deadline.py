"""Deadlines: the clock object, the active context, and every method answering MAYBE on expiry."""

from __future__ import annotations

import math
import time

import pytest

from verify import deadline
from verify.deadline import Deadline, DeadlineExpired


def test_deadline_clock_basics():
    never = Deadline.after(None)
    assert not never.limited and never.remaining() == math.inf and not never.expired()
    never.check("nowhere")
    past = Deadline.after(0)
    assert past.expired() and past.remaining() == 0.0
    with pytest.raises(DeadlineExpired, match="timeout in the loop") as info:
        past.check("the loop")
    assert isinstance(info.value, TimeoutError) and info.value.where == "the loop"
    soon = Deadline.after(100.0)
    assert 99.0 < soon.remaining() <= 100.0 and not soon.expired()
    with pytest.raises(ValueError):
        Deadline.after(float("nan"))


def test_split_takes_a_fraction_of_what_remains():
    whole = Deadline.after(100.0)
    part = whole.split(0.25)
    assert 24.0 < part.remaining() <= 25.0
    assert whole.split(1.0).end <= whole.end
    assert Deadline.after(None).split(0.5).limited is False
    with pytest.raises(ValueError):
        whole.split(1.5)


def test_limits_nest_inward_and_restore():
    assert not deadline.active().limited
    with deadline.limit(100.0) as outer:
        assert deadline.active() is outer
        with deadline.limit(1000.0) as inner:  # cannot extend the enclosing limit
            assert inner.end == outer.end
        with deadline.limit(10.0) as inner:
            assert inner.remaining() <= 10.0
        assert deadline.active() is outer
        with deadline.limit(Deadline.after(0)):
            with pytest.raises(DeadlineExpired):
                deadline.check("inside")
    assert not deadline.active().limited
    deadline.check("outside")  # no limit: never raises


def test_limit_is_restored_after_an_exception():
    with pytest.raises(DeadlineExpired):
        with deadline.limit(0.0):
            time.sleep(0.001)
            deadline.check("x")
    assert not deadline.active().limited


# -- every method under an expired deadline: MAYBE "timeout" or a replayed NO, never a wrong YES --

import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from conftest import REPO, random_mlp, sampled_margins  # noqa: E402
from verify import Status, certify_specs, robustness_spec  # noqa: E402
from verify import backends, vnncomp  # noqa: E402
from verify.certificate import Certificate  # noqa: E402
from verify.vnnlib import parse_vnnlib  # noqa: E402
from verify.vnncomp import QueryResult, late_as_timeout, solve  # noqa: E402


def _robust_case(seed=0, eps=1e-3):
    """A random MLP, an input, its predicted label and a radius: (net, spec)."""
    rng = np.random.default_rng(seed)
    net = random_mlp(rng, [4, 12, 12, 3])
    x = rng.uniform(-1, 1, size=4)
    label = int(np.argmax(net.forward(x)))
    return net, robustness_spec(net.input_size, net.output_size, x, label, eps)


def _exact_min(net, spec) -> float:
    """The exact minimum margin (MILP, no deadline)."""
    cert = certify_specs(net, [spec], "milp")[0]
    assert cert.status is not Status.MAYBE
    return min(v for v in cert.margin_lower if v is not None) if cert.proved else -1.0


@pytest.mark.parametrize("method", ["attack", "alpha-crown", "bab", "smoothing"])
def test_expired_deadline_never_gives_a_wrong_answer(method):
    options = {"sigma": 0.25, "n": 2000, "n0": 100} if method == "smoothing" else {}
    for seed, eps in [(0, 1e-3), (1, 0.5), (2, 2.0)]:
        net, spec = _robust_case(seed, eps)
        with deadline.limit(0.0):
            cert = certify_specs(net, [spec], method, **options)[0]
        if cert.status is Status.NO:  # a counterexample: it must replay in float64
            x = np.array(cert.counterexample)
            assert spec.input_set.contains(x) and spec.output.values(net.forward(x)).min() <= 0
        elif cert.status is Status.YES:  # only alpha-CROWN's first (CROWN) iterate may prove
            assert method == "alpha-crown" and _exact_min(net, spec) > 0
        if method == "alpha-crown":  # stopped iterates are still sound bounds
            lower = np.array([v for v in cert.margin_lower if v is not None])
            assert np.all(lower <= sampled_margins(net, spec, 500).min(axis=0) + 1e-9)
        elif cert.status is Status.MAYBE:
            assert "timeout" in cert.reason


def test_attack_stops_at_the_deadline_with_its_start_points():
    net, spec = _robust_case(3, 1e-3)
    with deadline.limit(0.0):
        cert = certify_specs(net, [spec], "attack", steps=500)[0]
    assert cert.cost["steps_run"] == 0 and cert.reason.startswith("timeout")
    free = certify_specs(net, [spec], "attack", steps=5, stop_early=False)[0]
    assert free.cost["steps_run"] == 5 and not free.reason.startswith("timeout")


def test_certify_specs_turns_an_expiry_into_maybe():
    import dataclasses

    net, spec = _robust_case(4, 1e-3)

    @dataclasses.dataclass
    class NoOptions:
        pass

    def expiring(net, specs, options):
        Deadline.after(0).check("a test loop")

    try:
        backends.register("expiring-test", expiring, NoOptions, "raises DeadlineExpired")
        cert = certify_specs(net, [spec], "expiring-test")[0]
    finally:
        backends.REGISTRY.pop("expiring-test", None)
    assert cert.status is Status.MAYBE and "timeout in a test loop" in cert.reason


# -- the budget split across stages and disjuncts ----------------------------------------------

QUERY_4_DISJUNCTS = """
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(assert (<= X_0 1.0))
(assert (>= X_0 -1.0))
(assert (<= X_1 1.0))
(assert (>= X_1 -1.0))
(assert (or (and (>= Y_0 1000.0)) (and (>= Y_1 1000.0)) (and (>= Y_2 1000.0))
            (and (<= Y_0 -1000.0))))
"""


def _recording_certifier(monkeypatch, calls):
    """Replace vnncomp's certify_specs: record (method, specs, options' timeout, active time
    left) and answer MAYBE for every specification."""
    from verify.verdict import certificate_from_bounds

    def fake(net, specs, method, **options):
        calls.append((method, len(specs), options.get("timeout"),
                      deadline.active().remaining(), time.monotonic()))
        return [certificate_from_bounds(net, s, method, np.full(len(s.output.C), -np.inf),
                                        reason="not proved") for s in specs]

    monkeypatch.setattr(vnncomp, "certify_specs", fake)


def _far_net():
    """A 2-input net whose outputs never violate the query above at its box's center."""
    return random_mlp(np.random.default_rng(5), [2, 6, 3])


def test_disjuncts_share_the_budget_instead_of_each_taking_it(monkeypatch):
    calls: list = []
    _recording_certifier(monkeypatch, calls)
    query = parse_vnnlib(QUERY_4_DISJUNCTS)
    timeout = 40.0
    result = solve(_far_net(), query, "milp", timeout)
    assert result.result == "unknown" and [c[1] for c in calls] == [1, 1, 1, 1]
    for k, (_, _, option_timeout, left, _) in enumerate(calls):
        # each disjunct gets an equal share of what remains when it starts, never more
        assert option_timeout <= timeout / (4 - k) + 1e-6
        assert left <= option_timeout + 1e-6
    assert calls[0][2] <= timeout / 4 + 1e-6


def test_auto_stages_take_their_shares(monkeypatch):
    calls: list = []
    _recording_certifier(monkeypatch, calls)
    net = random_mlp(np.random.default_rng(6), [20, 6, 3])  # > BAB_MAX_INPUTS: attack, bounds,
    # ReLU splits, MILP
    text = QUERY_4_DISJUNCTS.replace("(declare-const X_1 Real)", "\n".join(
        f"(declare-const X_{i} Real)" for i in range(1, 20)))
    text = text.replace("(assert (>= X_1 -1.0))", "\n".join(
        f"(assert (<= X_{i} 1.0))\n(assert (>= X_{i} -1.0))" for i in range(2, 20))
        + "\n(assert (>= X_1 -1.0))")
    query = parse_vnnlib(text)
    timeout = 100.0
    solve(net, query, "auto", timeout)
    methods = [c[0] for c in calls]
    assert methods == ["attack", "alpha-crown", "relu-bab", "milp", "milp", "milp", "milp"]
    attack, alpha, relu_bab = calls[0], calls[1], calls[2]
    assert attack[3] <= 0.15 * timeout + 1e-6  # the attack: 15% of the whole
    assert alpha[3] <= 0.5 * timeout + 1e-6  # 35% of the whole plus what the attack left
    # one ReLU-split search for the 4 one-row disjuncts, 3/4 of what remains when it starts
    assert relu_bab[1] == 1 and relu_bab[3] <= 0.75 * timeout + 1e-6
    milps = calls[3:]
    for k, milp in enumerate(milps):  # what the bounds left, shared by the 4 open disjuncts
        assert milp[3] <= milp[2] + 1e-6 and milp[2] <= timeout / (4 - k) + 1e-6


def test_solve_past_its_deadline_answers_timeout():
    query = parse_vnnlib(QUERY_4_DISJUNCTS)
    result = solve(_far_net(), query, "milp", 1e-9)
    assert result.result == "timeout"


# -- vnncomp: a result after its timeout counts as a timeout -------------------------------

def test_a_late_answer_is_scored_as_a_timeout(tmp_path, monkeypatch):
    late = late_as_timeout(QueryResult("unsat", time_s=5.0), 3.0)
    assert late.result == "timeout" and "unsat after 5.00 s" in late.reason
    on_time = late_as_timeout(QueryResult("unsat", time_s=2.0), 3.0)
    assert on_time.result == "unsat"
    for name in ("net.onnx", "a.vnnlib", "b.vnnlib"):
        (tmp_path / name).write_text("placeholder")
    (tmp_path / "instances.csv").write_text("net.onnx,a.vnnlib,3\nnet.onnx,b.vnnlib,3\n")
    (tmp_path / "ground_truth.csv").write_text(
        "network,property,ground_truth\nnet,a,unsat\nnet,b,unsat\n")

    def fake_solve_files(model, prop, method, timeout, threads=None, **options):
        return QueryResult("unsat", time_s=timeout + (1.0 if prop.endswith("a.vnnlib") else -1))

    monkeypatch.setattr(vnncomp, "solve_files", fake_solve_files)
    out = tmp_path / "results.csv"
    rows = vnncomp.run_instances(str(tmp_path / "instances.csv"), out_csv=str(out),
                                 progress=None)
    assert [(r.result, r.score) for r in rows] == [("timeout", 0), ("unsat", 10)]
    import csv

    written = list(csv.DictReader(out.open()))
    assert written[0]["result"] == "timeout" and "past the 3 s timeout" in written[0]["reason"]
    assert float(written[0]["time_s"]) == pytest.approx(4.0)


# -- start-up: certifiers and heavy dependencies on first use ------------------------------

def test_backends_import_certifiers_on_first_use():
    code = ("import sys, verify, verify.backends as b; import verify.vnncomp; "
            "b.get_backend('ibp'); b.methods(); "
            "heavy = ['scipy.stats', 'cvxpy', 'matplotlib', 'onnx', 'highspy', "
            "'torch._dynamo', 'verify.smoothing', 'verify.exact.milp', 'verify.bounds.lp']; "
            "print([m for m in heavy if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_projected_adam_matches_torch_adam_with_exponential_decay():
    from verify.bounds.alpha_crown import ProjectedAdam

    rng = np.random.default_rng(7)
    start = [torch.tensor(rng.normal(size=(3, 4))), torch.tensor(rng.normal(size=5))]
    ours = [p.clone().requires_grad_(True) for p in start]
    theirs = [p.clone().requires_grad_(True) for p in start]
    mine = ProjectedAdam(ours, lr=0.1, decay=0.9)
    reference = torch.optim.Adam(theirs, lr=0.1)
    schedule = torch.optim.lr_scheduler.ExponentialLR(reference, 0.9)
    target = [torch.tensor(rng.normal(size=p.shape)) for p in start]
    for _ in range(6):
        for params, opt in ((ours, mine), (theirs, reference)):
            opt.zero_grad()
            sum(((p - t) ** 3).abs().sum() for p, t in zip(params, target)).backward()
            opt.step()
        schedule.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# -- threads -------------------------------------------------------------------------------

def test_thread_policy_counts_multiply_accumulates():
    from verify.threads import SMALL_NETWORK_MACS, configure, multiply_accumulates, policy_threads
    from conftest import random_conv_net

    small = random_mlp(np.random.default_rng(8), [5, 50, 50, 5])
    assert multiply_accumulates(small) == 5 * 50 + 50 * 50 + 50 * 5
    conv = random_conv_net(np.random.default_rng(9))
    c1, c2 = conv.layers[0], conv.layers[2]
    assert multiply_accumulates(conv) == c1.weight.size * 36 + c2.weight.size * 4 + \
        conv.layers[4].weight.size
    assert policy_threads(small) == 1
    big = random_mlp(np.random.default_rng(10), [2000, 1100, 2])
    assert multiply_accumulates(big) > SMALL_NETWORK_MACS and policy_threads(big) >= 1
    before = torch.get_num_threads()
    try:
        assert configure(small, requested=2) == 2 and torch.get_num_threads() == 2
        assert configure(small) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(Exception, match="--threads must be at least 1"):
        configure(small, requested=0)


# -- whole commands under small timeouts (slow: fresh processes on benchmark instances) ------

@pytest.mark.slow
def test_vnnlib_command_returns_timeout_within_its_deadline(shared_benchmarks):
    folder = shared_benchmarks / "mnist_fc"
    limit = 3.0
    done = subprocess.run(
        [sys.executable, "-m", "verify", "vnnlib", str(folder / "onnx/mnist-net_256x2.onnx"),
         str(folder / "vnnlib/prop_10_0.05.vnnlib"), "--timeout", str(limit)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("timeout", "unsat")  # ground truth: unsat
    import re

    reported = float(re.search(r", ([0-9.]+) s", done.stderr).group(1))
    assert reported <= limit + 3.0  # generous: the machine is shared (goal: +1 s)


def test_threads_and_timeout_flags_refuse_bad_values(capsys, tmp_path):
    from verify.cli import main
    from verify.solver_cli import main as solver_main

    model = str(REPO / "models" / "digits_mlp.onnx")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros(64))
    assert main(["certify", model, "--input", str(x), "--label", "0", "--eps", "0.1",
                 "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    assert main(["certify", model, "--input", str(x), "--label", "0", "--eps", "0.1",
                 "--timeout", "-1"]) == 2
    assert "--timeout must be > 0" in capsys.readouterr().err
    assert solver_main(["verify", str(REPO / "tests/data/acasxu_prop_2_v2.vnnlib"),
                        "--network", f"N={model}", "--threads", "0"]) == 1
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_certify_timeout_gives_maybe_timeout_for_smoothing(capsys, tmp_path):
    from verify.cli import main

    model = str(REPO / "models" / "digits_mlp.onnx")
    x = tmp_path / "x.npy"
    np.save(x, np.load(REPO / "models" / "digits_test.npz")["x"][0])
    # 10^12 samples cannot finish: the deadline stops the sampling
    assert main(["certify", model, "--input", str(x), "--label", "7", "--eps", "0.1",
                 "--norm", "2", "--method", "smoothing", "--sigma", "0.25",
                 "--n", str(10 ** 12), "--timeout", "0.5", "--json"]) == 0
    import json

    cert = json.loads(capsys.readouterr().out)
    assert cert["status"] == "MAYBE" and "timeout" in cert["reason"]


def test_a_timeout_option_becomes_the_active_deadline_of_the_call():
    import dataclasses

    net, spec = _robust_case(11, 1e-3)
    seen = []

    @dataclasses.dataclass
    class TimedOptions:
        timeout: float = 60.0

    def run(net, specs, options):
        seen.append(deadline.active().remaining())
        return [Certificate("MAYBE", "timed-test", s.label, "inf", 0.0, [], []) for s in specs]

    try:
        backends.register("timed-test", run, TimedOptions, "records its deadline")
        certify_specs(net, [spec, spec], "timed-test", timeout=5.0)
        certify_specs(net, [spec], "timed-test", timeout=0.0)  # 0: no limit
        with deadline.limit(1.0):  # an enclosing limit wins when sooner
            certify_specs(net, [spec], "timed-test", timeout=5.0)
    finally:
        backends.REGISTRY.pop("timed-test", None)
    assert 9.0 < seen[0] <= 10.0 and seen[1] == math.inf and seen[2] <= 1.0


# -- verify vnnlib's clock: from the process start, as verify-solver's ----------------------

def test_vnnlib_command_counts_its_timeout_from_the_process_start(benchmark_data, capsys,
                                                                  monkeypatch, tmp_path):
    """Run as a command (argv from sys.argv), `verify vnnlib --timeout` includes the process's
    age (process_age, monkeypatched here): past it the answer is timeout, naming the start-up,
    with --out written; within it the answer stands and the reported time includes the age.
    Called in-process with argv, the host process's age is not counted."""
    import verify.solver_cli
    from verify.cli import main

    folder = benchmark_data / "mnist_fc"
    files = [str(folder / "onnx/mnist-net_256x2.onnx"), str(folder / "vnnlib/prop_1_0.03.vnnlib")]
    out = tmp_path / "result.txt"
    for age, limit, answer in ((1e6, 30, "timeout"), (2.5, 2.0, "timeout"), (0.5, 60, "sat")):
        monkeypatch.setattr(verify.solver_cli, "process_age", lambda: age)
        monkeypatch.setattr(sys, "argv", ["verify", "vnnlib", *files, "--timeout", str(limit),
                                          "--out", str(out)])
        assert main() == 0
        captured = capsys.readouterr()
        assert captured.out.splitlines()[0] == answer == out.read_text().splitlines()[0]
        reported = float(re.search(r", ([0-9.]+) s", captured.err).group(1))
        assert reported >= age
        assert ("start-up took" in captured.err) == (answer == "timeout")
    monkeypatch.setattr(verify.solver_cli, "process_age", lambda: 1e6)
    assert main(["vnnlib", *files, "--timeout", "30"]) == 0  # not counted: no timeout
    assert capsys.readouterr().out.startswith("sat\n")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_vnnlib_command_in_a_fresh_process_counts_its_start_up(benchmark_data):
    """A real process that sleeps 1 s before `verify vnnlib --timeout 0.9`: timeout, start-up
    named; the same process's second command with --timeout 60 reports at least that 1 s."""
    folder = benchmark_data / "mnist_fc"
    files = [str(folder / "onnx/mnist-net_256x2.onnx"), str(folder / "vnnlib/prop_1_0.03.vnnlib")]
    code = ("import sys, time; time.sleep(1.0); from verify.cli import main; "
            f"sys.argv = ['verify', 'vnnlib', *{files!r}, '--timeout', '0.9']; main(); "
            f"sys.argv = ['verify', 'vnnlib', *{files!r}, '--timeout', '60']; main()")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "timeout" and "sat" in done.stdout.splitlines()
    first, second = (float(t) for t in re.findall(r", ([0-9.]+) s", done.stderr))
    assert "start-up took" in done.stderr and first >= 1.0 and second >= 1.0
