"""`verify-solver`: the VNN-LIB standard's solver CLI, run as the installed script and in process,
against known ACAS Xu answers, onnxruntime replays and the vnnlib-test-solver reference."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from onnx_reference import onnxruntime_forward
from verify.onnx_io import LOADABLE_OPS, LOADABLE_OPSETS
from verify.solver_cli import ATTRIBUTE_PROBES, CAPABILITIES, _probe_fails, main
from verify.vnnlib import load_vnnlib

DATA = Path(__file__).resolve().parent / "data"
SCRIPT = Path(sys.executable).parent / "verify-solver"
SAT = ("1_4", "prop_2")    # known sat, solved in milliseconds (benchmarks/results)
UNSAT = ("3_7", "prop_3")  # known unsat, about 0.15 s


def _onnx(folder: Path, net_id: str) -> Path:
    return folder / f"acasxu/onnx/ACASXU_run2a_{net_id}_batch_2000.onnx"


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue(), capsys.readouterr().err


def _blocks(text: str) -> dict[str, tuple[str, list[int], np.ndarray]]:
    """Parse the standard's assignment: NAME TYPE [DIMS] then one value per line."""
    blocks, lines, k = {}, text.splitlines(), 0
    while k < len(lines):
        name, element_type, dims = lines[k].split(" ")
        shape = [int(d) for d in dims.strip("[]").split(",") if d]
        size = int(np.prod(shape, dtype=int))
        blocks[name] = (element_type, shape, np.array([float(v) for v in lines[k + 1:k + 1 +
                                                                               size]]))
        k += 1 + size
    return blocks


@pytest.mark.slow
def test_sat_as_a_subprocess_replays_on_onnxruntime(shared_benchmarks):
    pytest.importorskip("vnnlib")
    assert SCRIPT.is_file(), "verify-solver is not installed: pip install -e ."
    model = _onnx(shared_benchmarks, SAT[0])
    query_path = DATA / f"acasxu_{SAT[1]}_v2.vnnlib"
    proc = subprocess.run([str(SCRIPT), "verify", str(query_path), "--network",
                           f"acasxu={model}", "--timeout", "60"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, _, assignment = proc.stdout.partition("\n")
    assert first == "sat"
    blocks = _blocks(assignment)
    assert list(blocks) == ["X", "Y"]
    assert blocks["X"][:2] == ("real", [1, 1, 1, 5]) and blocks["Y"][:2] == ("real", [1, 5])
    x, y = blocks["X"][2], blocks["Y"][2]
    # Independent replay: the original 1.0 property, onnxruntime in float64.
    original = load_vnnlib(shared_benchmarks / f"acasxu/vnnlib/{SAT[1]}.vnnlib")
    y_ort = onnxruntime_forward(model, x.reshape(1, 1, 1, 5))[0]
    assert original.violated_by(x, y_ort)
    np.testing.assert_allclose(y, y_ort, rtol=0, atol=1e-9)
    # Byte for byte the format of the reference implementation of the standard's CLI.
    reference = pytest.importorskip("vnnlib_test_solver.assignments")
    from vnnlib_test_solver.querymodel import read_query

    expected = reference.render(read_query(query_path), {"X": list(x), "Y": list(y)})
    assert assignment == expected


def test_unsat_in_process(shared_benchmarks, capsys):
    pytest.importorskip("vnnlib")
    code, out, err = _run(["verify", str(DATA / f"acasxu_{UNSAT[1]}_v2.vnnlib"), "--network",
                           f"acasxu={_onnx(shared_benchmarks, UNSAT[0])}", "--timeout", "60"],
                          capsys)
    assert (code, out) == (0, "unsat\n"), err


def test_vnnlib1_query_takes_any_network_name(shared_benchmarks, capsys):
    prop = shared_benchmarks / f"acasxu/vnnlib/{SAT[1]}.vnnlib"
    model = _onnx(shared_benchmarks, SAT[0])
    code, out, err = _run(["verify", str(prop), "--network", f"anything={model}",
                           "--timeout", "30.5"], capsys)
    assert code == 0, err
    first, _, assignment = out.partition("\n")
    blocks = _blocks(assignment)
    assert first == "sat" and list(blocks) == [f"X_{i}" for i in range(5)] + \
        [f"Y_{j}" for j in range(5)]
    assert all(b[:2] == ("Real", []) for b in blocks.values())
    x = np.array([blocks[f"X_{i}"][2][0] for i in range(5)])
    y_ort = onnxruntime_forward(model, x.reshape(1, 1, 1, 5))[0]
    assert load_vnnlib(prop).violated_by(x, y_ort)


def test_zero_timeout_answers_timed_out(shared_benchmarks, capsys):
    prop = shared_benchmarks / f"acasxu/vnnlib/{UNSAT[1]}.vnnlib"
    code, out, _ = _run(["verify", str(prop), "--network",
                         f"n={_onnx(shared_benchmarks, UNSAT[0])}", "--timeout", "0"], capsys)
    assert (code, out) == (0, "timed-out\n")


def test_short_timeout_is_kept_on_a_hard_query(shared_benchmarks, capsys):
    """1_1 prop_6 (unsat, about a minute of branch and bound; 8 disjuncts) with --timeout 0.5:
    the attack before the search stops at the deadline too (it alone took about 2 s here)."""
    prop = shared_benchmarks / "acasxu/vnnlib/prop_6.vnnlib"
    t0 = time.perf_counter()
    code, out, _ = _run(["verify", str(prop), "--network", f"n={_onnx(shared_benchmarks, '1_1')}",
                         "--timeout", "0.5"], capsys)
    assert (code, out) == (0, "timed-out\n")
    # About 0.8 s here, 2.6 s before; the margin allows for a slower machine (the deadline itself
    # is tested without a clock in test_bab.py::test_falsify_box_stops_at_its_deadline).
    assert time.perf_counter() - t0 < 2.0


def test_supports_answers_from_the_loader(capsys):
    answers = {}
    for capability in CAPABILITIES:
        code, out, err = _run(["supports", capability], capsys)
        assert code == 0 and err == "" and out.endswith("\n"), capability
        answers[capability] = out.splitlines()
    assert answers["--onnx-opset-versions"] == [str(v) for v in LOADABLE_OPSETS]
    # Claimed: the loader's ops, less those it refuses in a probed attribute form.
    claimed = answers["--onnx-operators"]
    assert claimed == [
        op for op in LOADABLE_OPS
        if all(_probe_fails(op, form) is None for form in ATTRIBUTE_PROBES.get(op, ()))]
    # The graph reader's ops are claimed (1-D and grouped Conv included); ops it evaluates only
    # on constants are not.
    assert {"Conv", "MaxPool", "Sigmoid", "Slice", "Concat", "Softmax"} <= set(claimed)
    # graph.discrete (Cast: to int), and Cast to float16 (rounded in float semantics)
    assert {"Where", "Pow", "Equal", "Cast"} <= set(claimed)
    assert not {"Sin", "Floor", "Not"} & set(claimed)
    # MaxPool and AveragePool take ceil_mode=1 (as end padding; tests/test_graph_ops.py checks
    # AveragePool's divisors against onnxruntime), so both are claimed
    assert {"MaxPool", "AveragePool"} <= set(claimed)
    assert _probe_fails("AveragePool", ATTRIBUTE_PROBES["AveragePool"][0]) is None
    assert answers["--onnx-element-types"] == ["real", "float32", "float16", "float64"]
    assert answers["--vnnlib-versions"][0] == "1.0"
    assert _run(["capabilities", "--multiple-inputs-output-theories"], capsys)[1] == "SIO\nMIO\n"
    # Every capability of the reference implementation is answered, and our answers are valid
    # members of the standard's sets (checked by the reference's own configuration validator).
    supports = pytest.importorskip("vnnlib_test_solver.supports")
    from vnnlib_test_solver.validation import validate

    assert set(supports.CAPABILITIES) <= set(CAPABILITIES)
    table = {}
    for capability in supports.CAPABILITIES:
        lines = answers[capability]
        key = supports.config_key(capability)
        if capability in supports.BOOLEAN_CAPABILITIES:
            table[key] = {"true": True, "false": False}[lines[0]]
        elif capability == supports.OPERATORS:
            table[key] = [{"name": op} for op in lines]
        else:
            table[key] = lines
    validate({"solver": {"name": "verify", "version": "0"}, "capabilities": table})


def test_name_version_and_vnnlib_versions(capsys):
    assert _run(["--version"], capsys)[1].strip() == __import__("verify").__version__
    assert _run(["--name"], capsys)[1].startswith("verify")
    try:
        import vnnlib  # noqa: F401
        assert _run(["supports", "--vnnlib-versions"], capsys)[1] == "1.0\n2.0\n"
    except ImportError:
        assert _run(["supports", "--vnnlib-versions"], capsys)[1] == "1.0\n1.0\n"


def _bad_cases(folder: Path, tmp: Path) -> list[tuple[list[str], str]]:
    v2 = str(DATA / f"acasxu_{SAT[1]}_v2.vnnlib")
    model = str(_onnx(folder, SAT[0]))
    bf16 = tmp / "bf16.vnnlib"
    bf16.write_text((DATA / f"acasxu_{SAT[1]}_v2.vnnlib").read_text().replace(" real ",
                                                                              " bfloat16 "))
    wide = tmp / "wide.vnnlib"
    wide.write_text((DATA / f"acasxu_{SAT[1]}_v2.vnnlib").read_text().replace(
        "[1,1,1,5])", "[1,1,1,6])") + "(assert (and (>= X[0,0,0,5] 0.0) (<= X[0,0,0,5] 1.0)))\n")
    v1 = str(folder / f"acasxu/vnnlib/{SAT[1]}.vnnlib")
    return [
        (["verify", str(tmp / "absent.vnnlib"), "--network", f"acasxu={model}"], "no such file"),
        (["verify", v2, "--network", f"acasxu={model}", "--timeout", "ten"], "--timeout"),
        (["verify", v2, "--network", f"acasxu={model}", "--timeout", "-1"], "--timeout"),
        (["verify", v2, "--network", f"acasxu={model}", "--timeout", "nan"], "--timeout"),
        (["verify", v2, "--network", f"acas={model}"], "maps 'acas', which .* does not declare"),
        (["verify", v2], "no model file for network 'acasxu'"),
        (["verify", v2, "--network", model], "--network takes NAME=MODEL.onnx"),
        (["verify", v2, "--network", f"acasxu={tmp / 'absent.onnx'}"], "absent.onnx"),
        (["verify", v1, "--network", f"a={model}", "--network", f"b={model}"],
         "needs exactly one --network"),
        (["verify", str(bf16), "--network", f"acasxu={model}"], "declares X as bfloat16"),
        (["verify", str(wide), "--network", f"acasxu={model}"],
         "declares 6 inputs and 5 outputs, the network has 5 inputs"),
        (["verify", v2, "--network", f"acasxu={model}", "--fast"], "unknown option '--fast'"),
        (["verify", v2, v2], "is a second"),
        (["supports"], "needs exactly one capability"),
        (["supports", "--onnx-operator"], "unknown capability '--onnx-operator'"),
        (["supports", "--onnx-operators", "--vnnlib-versions"], "not allowed with"),
        (["--name", "supports", "--onnx-operators"], "cannot be combined"),
        ([], "no global option or command"),
    ]


def test_user_errors_are_one_line_and_exit_1(shared_benchmarks, tmp_path, capsys):
    pytest.importorskip("vnnlib")
    for argv, pattern in _bad_cases(shared_benchmarks, tmp_path):
        code, out, err = _run(argv, capsys)
        assert code == 1 and out == "", argv
        assert err.count("\n") == 1 and err.startswith("verify-solver: error: "), (argv, err)
        assert re.search(pattern, err), (argv, err)


def test_floats_as_reals_accepts_float32_queries(shared_benchmarks, tmp_path, capsys):
    """The float32 query refused above is answered, as the same sat as its `real` twin, once the
    user accepts real-arithmetic semantics."""
    pytest.importorskip("vnnlib")
    text = (DATA / f"acasxu_{SAT[1]}_v2.vnnlib").read_text()
    f32 = tmp_path / "f32.vnnlib"
    f32.write_text(text.replace(" real ", " float32 "))
    model = str(_onnx(shared_benchmarks, SAT[0]))
    code, out, _ = _run(["verify", str(f32), "--network", f"acasxu={model}",
                         "--floats-as-reals", "--timeout", "60"], capsys)
    assert code == 0 and out.splitlines()[0] == "sat"
    assert "float32" in out  # the assignment names the declared type


@pytest.mark.parametrize("net_id, prop, expected", [(*SAT, "sat"), (*UNSAT, "unsat")])
def test_float32_queries_are_answered_in_float32_by_default(shared_benchmarks, tmp_path, capsys,
                                                            net_id, prop, expected):
    """Declared float32, no option: the same answers as the `real` twins (their margins are far
    above the float32 rounding), and the sat assignment is float32 values in the box whose
    outputs, in onnxruntime's float32 model (unoptimised here), are the printed ones up to
    summation order and violate the property."""
    pytest.importorskip("vnnlib")
    text = (DATA / f"acasxu_{prop}_v2.vnnlib").read_text().replace(" real ", " float32 ")
    f32 = tmp_path / "f32.vnnlib"
    f32.write_text(text)
    model = _onnx(shared_benchmarks, net_id)
    code, out, err = _run(["verify", str(f32), "--network", f"acasxu={model}",
                           "--timeout", "60"], capsys)
    assert code == 0 and out.splitlines()[0] == expected, err
    if expected == "sat":
        blocks = _blocks(out.partition("\n")[2])
        x, y = blocks["X"][2], blocks["Y"][2]
        assert blocks["X"][0] == "float32"
        assert np.array_equal(x.astype(np.float32).astype(np.float64), x)
        y_ort = np.ravel(onnxruntime_forward(model, x.astype(np.float32).reshape(1, 1, 1, 5),
                                             float64=False)).astype(np.float64)
        np.testing.assert_allclose(y, y_ort, rtol=1e-5, atol=1e-6)
        query = load_vnnlib(f32)
        assert query.violated_by(x, y) and query.violated_by(x, y_ort)


@pytest.mark.slow
def test_wrong_network_as_a_subprocess(shared_benchmarks):
    pytest.importorskip("vnnlib")
    proc = subprocess.run([str(SCRIPT), "verify", str(DATA / f"acasxu_{SAT[1]}_v2.vnnlib"),
                           "--network", f"net={_onnx(shared_benchmarks, SAT[0])}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "maps 'net', which" in proc.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_age_counts_from_the_process_start():
    """A command's timeout covers Python's start and the imports: process_age() is this test
    process's age: a fresh process that sleeps 1.5 s before asking reads at least that."""
    import sys

    code = ("import time; time.sleep(1.5); from verify.solver_cli import process_age; "
            "print(process_age())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    age = float(proc.stdout)
    assert 1.5 <= age < 120, proc.stderr


@pytest.mark.parametrize("argv, code, stream, text", [
    (["--name"], 0, "stdout", "verify (ReLU network verifier"),
    (["verify"], 1, "stderr", "verify-solver: error: "),
])
def test_the_command_exits_at_once_after_flushing_its_answer(argv, code, stream, text):
    """console_main ends the process with os._exit once stdout and stderr are flushed: the
    answer (block-buffered, stdout a pipe) arrives whole, with main()'s exit code, and the
    interpreter's teardown (here an atexit handler standing for torch's) never runs."""
    repo = Path(__file__).resolve().parents[1]
    program = ("import atexit, sys; atexit.register(print, 'teardown ran', file=sys.stderr); "
               "from verify.solver_cli import console_main; "
               f"sys.argv = ['verify-solver', *{argv!r}]; console_main()")
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, cwd=repo)
    assert proc.returncode == code, proc.stderr
    assert getattr(proc, stream).startswith(text) and getattr(proc, stream).endswith("\n")
    assert "teardown ran" not in proc.stderr and "Traceback" not in proc.stderr


def test_the_command_without_stdout_still_answers_in_one_line():
    """A closed stdout (`>&-`: sys.stdout is None) is skipped by the flush before os._exit:
    the error is the one line, no traceback, exit 1."""
    repo = Path(__file__).resolve().parents[1]
    program = ("import sys; sys.stdout = None; from verify.solver_cli import console_main; "
               "sys.argv = ['verify-solver', 'verify', '--timeout', '-1', 'q.vnnlib']; "
               "console_main()")
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, cwd=repo)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("verify-solver: error: ") and "Traceback" not in proc.stderr


def test_main_in_process_returns_its_code():
    """main() itself returns (no os._exit): callers in the same process go on."""
    out = io.StringIO()
    assert main(["--version"], out=out) == 0 and out.getvalue().strip()
    assert main(["verify", "--timeout", "-1", "q.vnnlib"], out=io.StringIO()) == 1
