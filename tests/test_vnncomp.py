"""VNN-LIB end to end: branch and bound, the solver's answers against known ones, the runner."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import random_mlp
from onnx_reference import onnxruntime_forward
from verify import InputError, Status, certify, load_onnx
from verify.cli import main
from verify.vnncomp import run_instances, score, solve, summary
from verify.vnnlib import load_vnnlib, parse_vnnlib

# Fast ACAS Xu instances with known answers (network, property, answer).
ACAS_FAST = [("1_1", "prop_1"), ("1_2", "prop_2"), ("2_1", "prop_2"), ("1_9", "prop_2"),
             ("1_1", "prop_4")]


def _acas(folder, net_id):
    return load_onnx(folder / f"acasxu/onnx/ACASXU_run2a_{net_id}_batch_2000.onnx")


def _truth(folder, bench):
    with open(folder / bench / "ground_truth.csv") as fh:
        return {(r["network"], r["property"]): r["ground_truth"] for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_acasxu_answers_agree_with_ground_truth(shared_benchmarks):
    truth = _truth(shared_benchmarks, "acasxu")
    solved = 0
    for net_id, prop in ACAS_FAST:
        expected = truth.get((f"ACASXU_run2a_{net_id}", prop))
        if expected is None:
            continue
        net = _acas(shared_benchmarks, net_id)
        query = load_vnnlib(shared_benchmarks / f"acasxu/vnnlib/{prop}.vnnlib")
        result = solve(net, query, "bab", timeout=20)
        assert result.result in (expected, "unknown", "timeout"), (net_id, prop, result)
        solved += result.result == expected
        if result.result == "sat":
            x, y = result.counterexample
            assert query.violated_by(x, y)
            # Replayed on onnxruntime too (float64 copy of the model).
            path = shared_benchmarks / f"acasxu/onnx/ACASXU_run2a_{net_id}_batch_2000.onnx"
            y_ort = onnxruntime_forward(path, x.reshape(1, 1, 1, 5))[0]
            assert query.violated_by(x, y_ort)
    assert solved >= 4


# BaB's alpha refinement and local MILP start after seconds; `eager` runs them from the start so
# that the quick tests exercise them too.
BAB_VARIANTS = {"default": {}, "eager": {"alpha_after": 0.0, "polish_after": 0.0,
                                         "polish_time": 2.0, "polish_starts": 256}}


@pytest.mark.parametrize("variant", [v if v == "default" else pytest.param(v, marks=pytest.mark.slow)
                                     for v in sorted(BAB_VARIANTS)])
def test_bab_agrees_with_milp_on_small_networks(variant):
    """Cross-method oracle on random nets: the complete input-splitting search and the exact
    MILP give the same YES / NO wherever both decide."""
    rng = np.random.default_rng(11)
    decided = 0
    for _ in range(12):
        net = random_mlp(rng, [3, 10, 10, 3])
        x = rng.uniform(0, 1, size=3)
        label = int(net.forward(x).argmax())
        eps = float(rng.uniform(0.02, 0.3))
        a = certify(net, x, label, eps, "inf", "bab", (0, 1), timeout=10.0,
                    **BAB_VARIANTS[variant])
        b = certify(net, x, label, eps, "inf", "milp", (0, 1), exact_margins=True)
        if Status.MAYBE in (a.status, b.status):
            continue
        decided += 1
        assert a.status == b.status, (a, b)
        if a.status is Status.YES:
            # bab's margin lower bounds are sound: below the exact minimum margins.
            mins = [v for v in b.margin_lower if v is not None]
            ours = [v for v in a.margin_lower if v is not None]
            assert all(o <= m + 1e-9 for o, m in zip(ours, mins))
    assert decided >= 8


def test_eager_bab_refinements_agree_on_multi_row_violations():
    """Violations "output 0 is the largest" (3 rows, a conjunction) on random nets and boxes:
    BaB with its alpha refinement and local MILP running from the start gives the same sat /
    unsat as plain CROWN splitting, and every sat point replays."""
    rng = np.random.default_rng(5)
    A = np.array([[-1.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 1.0]])
    decided, answers = 0, set()
    for _ in range(10):
        net = random_mlp(rng, [3, 12, 12, 4])
        lo = [float(v) for v in rng.uniform(-1, 0.5, size=3)]
        text = "".join(f"(declare-const X_{i} Real)" for i in range(3)) + \
            "".join(f"(declare-const Y_{j} Real)" for j in range(4)) + \
            "".join(f"(assert (>= X_{i} {lo[i]!r}))(assert (<= X_{i} {lo[i] + 0.4!r}))"
                    for i in range(3)) + \
            "".join(f"(assert (<= Y_0 Y_{j}))" for j in range(1, 4))  # y_0 - y_j <= 0
        query = parse_vnnlib(text)
        plain = solve(net, query, "bab", timeout=10, alpha_steps=0, polish_after=1e9)
        eager = solve(net, query, "bab", timeout=10, **BAB_VARIANTS["eager"])
        for result in (plain, eager):
            if result.result == "sat":
                x, y = result.counterexample
                assert np.all(A @ y <= 0) or query.violated_by(x, y)
        if {plain.result, eager.result} <= {"sat", "unsat"}:
            decided += 1
            answers.add(plain.result)
            assert plain.result == eager.result
    assert decided >= 6 and answers == {"sat", "unsat"}


def test_bab_refuses_l2_balls():
    net = random_mlp(np.random.default_rng(0), [2, 4, 2])
    with pytest.raises(Exception, match="l_inf balls or boxes"):
        certify(net, np.zeros(2), 0, 0.1, "2", "bab")


def test_multi_row_disjunct_solved_by_bab():
    # f(x) = x (identity): violation "Y_0 <= 0 and Y_1 <= 0" over [-1, 1]^2 is satisfiable;
    # over [0.5, 1] x [-1, 1] it is not (Y_0 >= 0.5).
    from verify import Dense, Network

    net = Network([Dense(np.eye(2), np.zeros(2), (2,), (2,))], (2,))
    head = "(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)" \
           "(declare-const Y_1 Real)(assert (<= Y_0 0))(assert (<= Y_1 0))"
    sat = parse_vnnlib(head + "(assert (>= X_0 -1))(assert (<= X_0 1))"
                              "(assert (>= X_1 -1))(assert (<= X_1 1))")
    unsat = parse_vnnlib(head + "(assert (>= X_0 0.5))(assert (<= X_0 1))"
                                "(assert (>= X_1 -1))(assert (<= X_1 1))")
    result = solve(net, sat, "bab", timeout=10)
    assert result.result == "sat" and np.all(result.counterexample[1] <= 0)
    assert solve(net, unsat, "bab", timeout=10).result == "unsat"
    # An incomplete certifier on the same query: unsat is proved by the row Y_0 >= 0.5.
    assert solve(net, unsat, "crown", timeout=10).result == "unsat"


def test_mnist_fc_auto_agrees_with_ground_truth(shared_benchmarks):
    truth = _truth(shared_benchmarks, "mnist_fc")
    net = load_onnx(shared_benchmarks / "mnist_fc/onnx/mnist-net_256x2.onnx")
    for prop in ("prop_0_0.03", "prop_1_0.03", "prop_3_0.03"):
        query = load_vnnlib(shared_benchmarks / f"mnist_fc/vnnlib/{prop}.vnnlib")
        result = solve(net, query, "auto", timeout=30)
        assert result.result == truth[("mnist-net_256x2", prop)], (prop, result)


def test_score_rules():
    assert score("sat", "sat") == 10 and score("unsat", "unsat") == 10
    assert score("sat", "unsat") == -150 and score("unsat", "sat") == -150
    assert score("unknown", "sat") == 0 and score("timeout", "unsat") == 0
    assert score("sat", "") == 0


def test_runner_and_cli(tmp_path, shared_benchmarks, capsys):
    folder = shared_benchmarks / "acasxu"
    instances = tmp_path / "instances.csv"
    instances.write_text(
        f"{folder}/onnx/ACASXU_run2a_1_1_batch_2000.onnx,{folder}/vnnlib/prop_1.vnnlib,116\n"
        f"{folder}/onnx/ACASXU_run2a_1_2_batch_2000.onnx,{folder}/vnnlib/prop_2.vnnlib,116\n")
    (tmp_path / "ground_truth.csv").write_text(
        "network,property,ground_truth,nnenum_2022\n"
        "ACASXU_run2a_1_1,prop_1,unsat,unsat:1.24\nACASXU_run2a_1_2,prop_2,sat,sat:0.5\n")
    out = tmp_path / "results.csv"
    rows = run_instances(str(instances), timeout_cap=30, out_csv=str(out), progress=None)
    assert [r.result for r in rows] == ["unsat", "sat"] and sum(r.score for r in rows) == 20
    text = summary(rows)
    assert "wrong 0" in text and "score 20 (max 20)" in text and "nnenum_2022: median" in text
    assert out.read_text().splitlines()[0].startswith("network,property,result")
    assert not list(tmp_path.glob("*.part*"))

    answer = tmp_path / "answer.txt"
    code = main(["vnnlib", str(folder / "onnx/ACASXU_run2a_1_2_batch_2000.onnx"),
                 str(folder / "vnnlib/prop_2.vnnlib"), "--timeout", "30", "--out", str(answer)])
    printed = capsys.readouterr().out
    assert code == 0 and printed.startswith("sat\n((X_0 ") and answer.read_text() == printed


def test_cli_vnnlib_errors(tmp_path, capsys, shared_benchmarks):
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)\n(assert (<= X_0 1)")
    model = shared_benchmarks / "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx"
    code = main(["vnnlib", str(model), str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "bad.vnnlib:2:1: '(' is never closed" in err
    code = main(["vnnlib", str(model), str(shared_benchmarks / "mnist_fc/vnnlib/prop_0_0.03.vnnlib")])
    err = capsys.readouterr().err
    assert code == 2 and "declares 784 inputs and 10 outputs, the network has 5 inputs" in err
    code = main(["vnnlib", str(model), str(shared_benchmarks / "acasxu/vnnlib/prop_1.vnnlib"),
                 "--timeout", "0"])
    assert code == 2 and "--timeout must be > 0" in capsys.readouterr().err


def test_timeouts_must_be_finite_and_positive(tmp_path, capsys, shared_benchmarks):
    """nan meant no limit, and a cap <= 0 timed every instance out: each is one line, exit 2,
    before anything is solved; so is an instances.csv timeout that is not a number."""
    folder = shared_benchmarks / "acasxu"
    model, prop = folder / "onnx/ACASXU_run2a_1_1_batch_2000.onnx", folder / "vnnlib/prop_3.vnnlib"
    instances = tmp_path / "instances.csv"
    instances.write_text(f"{model},{prop},116\n")
    words = tmp_path / "words.csv"
    words.write_text(f"{model},{prop},soon\n")
    for argv, expected in (
            (["vnnlib", model, prop, "--timeout", "nan"], "--timeout must be > 0 seconds"),
            (["vnnlib", model, prop, "--timeout", "inf"], "--timeout must be > 0 seconds"),
            (["vnncomp", instances, "--timeout-cap", "nan"], "--timeout-cap must be > 0"),
            (["vnncomp", instances, "--timeout-cap", "0"], "--timeout-cap must be > 0"),
            (["vnncomp", instances, "--limit", "0"], "--limit must be at least 1, got 0"),
            (["vnncomp", words], "words.csv:1: the timeout must be a number of seconds, got "
                                 "'soon'")):
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        assert code == 2 and captured.out == "" and expected in captured.err, captured
        assert captured.err.count("\n") == 1
    with pytest.raises(InputError, match="timeout must be > 0 seconds"):
        solve(load_onnx(model), load_vnnlib(prop), timeout=float("nan"))
    missing = tmp_path / "missing.csv"  # row 2 names no file: refused before row 1 runs
    missing.write_text(f"{model},{prop},116\n{folder / 'onnx/none.onnx'},{prop},116\n")
    code = main(["vnncomp", str(missing)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and captured.err.count("\n") == 1
    assert "missing.csv:2:" in captured.err and "none.onnx: no such file" in captured.err


def test_disjunct_without_output_constraint_is_sat():
    from verify import Dense, Network

    net = Network([Dense(np.eye(2), np.zeros(2), (2,), (2,))], (2,))
    query = parse_vnnlib(
        "(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)"
        "(declare-const Y_1 Real)(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= X_1 0))"
        "(assert (<= X_1 1))(assert (or (and (<= X_0 0.5)) (and (<= Y_0 -5))))")
    for method in ("auto", "bab", "crown", "milp"):
        result = solve(net, query, method, timeout=10)
        assert result.result == "sat" and query.violated_by(*result.counterexample), method


def test_multi_row_disjunct_respects_solver_tolerance():
    """Y_0 <= -5e-7 and Y_1 <= 0.5 over [0, 1]^2 with f(x) = (x0, x1, 0): the minimum of the
    first row is 5e-7, below HiGHS' 1e-6 tolerance: the MILP may not call it unsat."""
    from verify import Dense, Network

    net = Network([Dense(np.array([[1.0, 0], [0, 1.0], [0, 0]]), np.zeros(3), (2,), (3,))], (2,))
    query = parse_vnnlib(
        "".join(f"(declare-const X_{i} Real)" for i in range(2))
        + "".join(f"(declare-const Y_{j} Real)" for j in range(3))
        + "(assert (>= X_0 0))(assert (<= X_0 1))(assert (>= X_1 0))(assert (<= X_1 1))"
        "(assert (<= Y_0 -5e-7))(assert (<= Y_1 0.5))")
    assert solve(net, query, "milp", timeout=10).result != "unsat"
    assert solve(net, query, "bab", timeout=10).result == "unsat"  # exact arithmetic bound


@pytest.mark.slow
def test_runner_workers_agree_with_sequential(tmp_path, shared_benchmarks):
    folder = shared_benchmarks / "acasxu"
    instances = tmp_path / "instances.csv"
    instances.write_text("".join(
        f"{folder}/onnx/ACASXU_run2a_{n}_batch_2000.onnx,{folder}/vnnlib/{p}.vnnlib,116\n"
        for n, p in [("1_1", "prop_1"), ("1_2", "prop_2"), ("2_1", "prop_2")]))
    one = run_instances(str(instances), timeout_cap=30, progress=None)
    two = run_instances(str(instances), timeout_cap=30, progress=None, workers=2)
    assert [(r.network, r.property, r.result) for r in one] == \
        [(r.network, r.property, r.result) for r in two] and one[0].result == "unsat"


def test_runner_on_a_dask_cluster(tmp_path, shared_benchmarks):
    distributed = pytest.importorskip("dask.distributed")
    folder = shared_benchmarks / "acasxu"
    instances = tmp_path / "instances.csv"
    instances.write_text(f"{folder}/onnx/ACASXU_run2a_1_2_batch_2000.onnx,"
                         f"{folder}/vnnlib/prop_2.vnnlib,116\n")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster:
        rows = run_instances(str(instances), timeout_cap=30, progress=None,
                             cluster=cluster.scheduler_address)
    assert rows[0].result == "sat"


def test_bad_workers_and_cluster(tmp_path, shared_benchmarks):
    from verify import InputError

    folder = shared_benchmarks / "acasxu"
    instances = tmp_path / "instances.csv"
    instances.write_text(f"{folder}/onnx/ACASXU_run2a_1_1_batch_2000.onnx,"
                         f"{folder}/vnnlib/prop_1.vnnlib,116\n")
    with pytest.raises(InputError, match="--workers must be at least 1"):
        run_instances(str(instances), progress=None, workers=0)
