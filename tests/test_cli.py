"""The `verify` command: tables, JSON, demo, and one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_reference import make_model, tensor
from verify.cli import main


@pytest.fixture
def digit_file(tmp_path, digits_test):
    xs, ys = digits_test
    path = tmp_path / "digit.npy"
    np.save(path, xs[0])
    return path, int(ys[0])


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_info(capsys, digits_mlp_path):
    code, out, _ = run(capsys, "info", digits_mlp_path)
    assert code == 0
    assert "input (64,) -> output (10,), 100 ReLUs" in out and "Dense 64 -> 50" in out
    assert "test_accuracy" in out


def test_certify_json(capsys, digits_mlp_path, digit_file):
    path, label = digit_file
    code, out, _ = run(capsys, "certify", digits_mlp_path, "--input", path, "--label", label,
                       "--eps", 0.005, "--method", "ibp", "--json")
    assert code == 0
    data = json.loads(out)
    for key in ("status", "method", "label", "norm", "eps", "margin_lower", "margin_upper",
                "counterexample", "radius", "confidence", "reason", "time_s"):
        assert key in data
    assert data["method"] == "ibp" and data["label"] == label and data["norm"] == "inf"
    assert data["domain"] == [0.0, 1.0]  # from models/digits_mlp.json
    assert data["margin_lower"][label] is None and len(data["margin_lower"]) == 10
    assert data["status"] in ("YES", "MAYBE")


@pytest.mark.parametrize("fmt", ["csv", "json", "json_dict", "txt"])
def test_input_formats_agree(capsys, tmp_path, digits_mlp_path, digits_test, fmt):
    x = digits_test[0][1]
    label = int(digits_test[1][1])
    path = tmp_path / f"x.{fmt.split('_')[0]}"
    if fmt in ("csv", "txt"):
        path.write_text(",".join(repr(float(v)) for v in x) if fmt == "csv"
                        else "\n".join(repr(float(v)) for v in x))
    else:
        payload = x.tolist() if fmt == "json" else {"x": x.tolist()}
        path.write_text(json.dumps(payload))
    npy = tmp_path / "x.npy"
    np.save(npy, x)
    outs = []
    for p in (path, npy):
        code, out, _ = run(capsys, "certify", digits_mlp_path, "--input", p, "--label", label,
                           "--eps", 0.01, "--norm", "2", "--json")
        assert code == 0
        outs.append(json.loads(out)["margin_lower"])
    assert outs[0] == outs[1]


def test_table_output(capsys, digits_mlp_path, digit_file):
    path, label = digit_file
    code, out, _ = run(capsys, "certify", digits_mlp_path, "--input", path, "--label", label,
                       "--eps", 0.05, "--domain", "0,1")
    assert code == 0
    assert out.startswith("MAYBE") and "margin_lower" in out and "(label)" in out


@pytest.mark.slow
def test_demo(capsys):
    code, out, _ = run(capsys, "demo", "--count", 12, "--eps", 0.005, 0.05)
    assert code == 0
    assert "YES" in out and "One certificate in full" in out
    assert out.count("ms") >= 2


@pytest.fixture
def sigmoid_model(tmp_path):
    rng = np.random.default_rng(0)
    model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="fc"),
                        helper.make_node("Sin", ["g"], ["y"], name="squash")],
                       [tensor("x", ["N", 4])], [tensor("y", ["N", 4])],
                       [("w", rng.normal(size=(4, 4))), ("b", np.zeros(4))])
    path = tmp_path / "sigmoid.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("case, expected", [
    ("missing_model", "no such file"),
    ("not_onnx", "not a valid ONNX model"),
    ("truncated", "not a valid ONNX model"),
    ("sigmoid", "'squash' (Sin)"),
    ("wrong_length", "input has 3 values, the network expects 64"),
    ("nan", "NaN or infinity"),
    ("negative_eps", "eps must be a finite number >= 0"),
    ("label", "label 10 is outside the classes 0..9"),
    ("norm", "unknown norm 'l3'"),
    ("method", "unknown method 'magic'"),
    ("missing_input", "no such input file"),
    ("bad_domain", "--domain must be LO,HI"),
    ("missing_arg", "required: --label"),
    ("bad_number", "invalid float value"),
    ("unreadable_input", "cannot read the input"),
])
def test_user_errors_are_one_line_exit_2(capsys, tmp_path, digits_mlp_path, digit_file,
                                         sigmoid_model, case, expected):
    good_input, label = digit_file
    model, x_path = digits_mlp_path, good_input
    args = {"--label": label, "--eps": 0.01}
    extra = []
    if case == "missing_model":
        model = tmp_path / "nope.onnx"
    elif case == "not_onnx":
        model = good_input
    elif case == "truncated":
        model = tmp_path / "cut.onnx"
        model.write_bytes(digits_mlp_path.read_bytes()[:500])
    elif case == "sigmoid":
        model = sigmoid_model
        x_path = tmp_path / "four.json"
        x_path.write_text("[0, 0, 0, 0]")
    elif case == "wrong_length":
        x_path = tmp_path / "three.csv"
        x_path.write_text("1,2,3")
    elif case == "nan":
        x_path = tmp_path / "nan.npy"
        np.save(x_path, np.full(64, np.nan))
    elif case == "negative_eps":
        args["--eps"] = -1
    elif case == "label":
        args["--label"] = 10
    elif case == "norm":
        extra = ["--norm", "l3"]
    elif case == "method":
        extra = ["--method", "magic"]
    elif case == "missing_input":
        x_path = tmp_path / "absent.npy"
    elif case == "bad_domain":
        extra = ["--domain", "zero,one"]
    elif case == "missing_arg":
        del args["--label"]
    elif case == "bad_number":
        args["--eps"] = "tiny"
    elif case == "unreadable_input":
        x_path = tmp_path / "words.csv"
        x_path.write_text("one,two")
    argv = ["certify", model, "--input", x_path] + [str(v) for kv in args.items() for v in kv]
    code, out, err = run(capsys, *argv, *extra)
    assert code == 2, (out, err)
    assert err.startswith("verify: error:") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_console_script_exit_codes(tmp_path, digits_mlp_path, digit_file):
    """The installed entry point, run as a process: exit 0 on success, 2 on a user error."""
    path, label = digit_file
    ok = subprocess.run([sys.executable, "-m", "verify", "certify", str(digits_mlp_path),
                         "--input", str(path), "--label", str(label), "--eps", "0.01", "--json"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["method"] == "ibp"
    bad = subprocess.run([sys.executable, "-m", "verify", "certify", str(digits_mlp_path),
                          "--input", str(path), "--label", "99", "--eps", "0.01"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "Traceback" not in bad.stderr


def test_lp_tighten_and_method_options(capsys, digits_mlp_path, digit_file):
    """--lp-tighten (LP-all) never loosens the LP's margin bounds; --option reaches the method's
    options with its type; wrong names, values and combinations are one-line errors."""
    path, label = digit_file
    base = ["certify", digits_mlp_path, "--input", path, "--label", label, "--eps", 0.04,
            "--json"]
    code, out, _ = run(capsys, *base, "--method", "lp")
    plain = json.loads(out)
    code2, out, _ = run(capsys, *base, "--method", "lp", "--lp-tighten")
    tight = json.loads(out)
    assert code == code2 == 0
    pairs = [(t, p) for t, p in zip(tight["margin_lower"], plain["margin_lower"])
             if t is not None and p is not None]
    assert len(pairs) == 9 and all(t >= p - 1e-9 for t, p in pairs)
    assert any(t > p + 1e-6 for t, p in pairs)  # eps 0.04 leaves LP-all something to tighten
    code, out, _ = run(capsys, *base, "--method", "crown", "--option", "intermediate=ibp")
    code2, out2, _ = run(capsys, *base, "--method", "crown")
    assert code == code2 == 0
    assert json.loads(out)["margin_lower"] != json.loads(out2)["margin_lower"]
    for extra, expected in ((["--method", "crown", "--lp-tighten"], "--lp-tighten"),
                            (["--method", "crown", "--option", "steps=3"], "unknown option"),
                            (["--method", "alpha-crown", "--option", "steps=many"],
                             "takes an integer"),
                            (["--method", "lp", "--option", "lp_tighten=maybe"],
                             "takes true or false"),
                            (["--method", "lp", "--option", "lp_tighten"], "KEY=VALUE"),
                            (["--method", "alpha-crown", "--option", "lr=-1"], "must be > 0"),
                            (["--method", "alpha-crown", "--option", "lr_decay=2"],
                             "must be in (0, 1]"),
                            (["--method", "crown", "--option", "batch_size=0"], "must be >= 1"),
                            (["--method", "bab", "--option", "timeout=nan"], "must be finite"),
                            (["--method", "attack", "--option", "restarts=0"],
                             "restarts >= 1"),
                            (["--device", "tpu"], "unknown device")):
        code, _, err = run(capsys, *base, *extra)
        assert code == 2 and expected in err and err.count("\n") == 1, err


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lp", "milp"])
def test_json_output_is_clean_with_solver_backed_methods(method, digits_mlp_path, digit_file):
    """stdout holds the JSON certificate and nothing else (HiGHS 1.16 prints a banner to fd 1
    when a process makes its first instance)."""
    path, label = digit_file
    done = subprocess.run([sys.executable, "-m", "verify", "certify", str(digits_mlp_path),
                           "--input", str(path), "--label", str(label), "--eps", "0.01",
                           "--method", method, "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["method"] == method


def test_methods_lists_every_certifier(capsys):
    code, out, _ = run(capsys, "methods")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names == sorted(["alpha-crown", "attack", "bab", "crown", "ibp", "lp", "milp",
                            "relu-bab", "smoothing"])


def test_methods_show_the_norms_each_takes(capsys):
    code, out, _ = run(capsys, "methods")
    balls = {line.split()[0]: line.split()[1:4] for line in out.splitlines()}
    assert code == 0
    assert balls["milp"][:2] == ["l_inf", "l_1"] and balls["milp"][2] != "l_2"
    assert balls["bab"][0] == "l_inf" and balls["bab"][1] != "l_1"
    assert balls["crown"] == ["l_inf", "l_2", "l_1"]


def test_repeated_option_keys_are_refused(capsys, digits_mlp_path, digit_file):
    path, label = digit_file
    base = ["certify", digits_mlp_path, "--input", path, "--label", label, "--eps", 0.01]
    for extra, expected in ((["--method", "alpha-crown", "--option", "steps=5", "--option",
                              "steps=7"], "--option steps given twice ('steps=5', 'steps=7')"),
                            (["--method", "lp", "--lp-tighten", "--option", "lp-tighten=false"],
                             "--lp-tighten and --option lp_tighten both given: give it once"),
                            (["--method", "crown", "--device", "cpu", "--option", "device=auto"],
                             "--device and --option device both given"),
                            (["--method", "smoothing", "--n", "100", "--option", "n=50"],
                             "--n and --option n both given")):
        code, out, err = run(capsys, *base, *extra)
        assert code == 2 and out == "" and expected in err and err.count("\n") == 1, err


def test_device_is_noted_where_a_method_has_none(capsys, digits_mlp_path, digit_file):
    """--device with lp or milp (HiGHS, no device option): one note, and the run goes on; with
    a method that takes a device, no note."""
    path, label = digit_file
    base = ["certify", digits_mlp_path, "--input", path, "--label", label, "--eps", 0.01,
            "--device", "cpu", "--json"]
    code, out, err = run(capsys, *base, "--method", "milp")
    assert code == 0 and json.loads(out)["method"] == "milp"
    assert err == "verify: note: milp has no device option (it runs on the CPU); --device " \
                  "ignored\n"
    code, out, err = run(capsys, *base, "--method", "crown")
    assert code == 0 and err == ""


def test_demo_refuses_a_device_before_printing_anything(capsys):
    code, out, err = run(capsys, "demo", "--methods", "ibp", "--count", 2, "--device", "tpu")
    assert code == 2 and out == "" and err == "verify: error: unknown device 'tpu': use auto, " \
                                             "cpu or cuda\n"


def test_demo_and_plot2d_refuse_a_norm_before_running(capsys, tmp_path):
    """The default methods include milp, which takes no l_2 balls: refused before any row."""
    code, out, err = run(capsys, "demo", "--count", 1, "--norm", 2)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "method milp takes l_inf and l_1 balls only, not l_2" in err
    pytest.importorskip("matplotlib")
    code, out, err = run(capsys, "plot2d", "models/toy2d.onnx", "--x", "0.7,0.3", "--eps", 0.1,
                         "--norm", 2, "--out", tmp_path / "f.png")
    assert code == 2 and "method milp takes l_inf and l_1 balls only" in err
    assert not (tmp_path / "f.png").exists()


@pytest.mark.slow
def test_export_lp_agrees_with_milp(capsys, tmp_path, digits_mlp_path, digits_test):
    import highspy

    import verify

    xs, ys = digits_test
    x, y = xs[4], int(ys[4])
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "model.lp"
    code, printed, _ = run(capsys, "export", digits_mlp_path, "--input", tmp_path / "x.npy",
                           "--label", y, "--eps", 0.02, "--against", 3, "--out", out)
    assert code == 0 and out.is_file() and not list(tmp_path.glob("*.part*"))
    assert "z_7 - z_3" in printed or f"z_{y} - z_3" in printed
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.readModel(str(out))
    h.run()
    exact = verify.certify(verify.load_onnx(digits_mlp_path), x, y, 0.02, "inf", "milp",
                           (0, 1), exact_margins=True)
    assert h.getInfo().objective_function_value == pytest.approx(exact.margin_lower[3], abs=1e-5)
    code, _, err = run(capsys, "export", digits_mlp_path, "--input", tmp_path / "x.npy",
                       "--label", y, "--eps", 0.05, "--against", y, "--out", out)
    assert code == 2 and "--against" in err
    code, _, err = run(capsys, "export", digits_mlp_path, "--input", tmp_path / "x.npy",
                       "--label", y, "--eps", 0.05, "--norm", "2", "--out", tmp_path / "l2.lp")
    assert code == 2 and "l_2" in err and not (tmp_path / "l2.lp").exists()


def test_unreadable_npy_inputs_are_one_line_errors(capsys, tmp_path, digits_mlp_path):
    """An empty .npy, a .npy of strings and one of complex numbers: one line, exit 2."""
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    words = tmp_path / "words.npy"
    np.save(words, np.array(["a"] * 64))
    complex_ = tmp_path / "complex.npy"
    np.save(complex_, np.ones(64) * (1 + 1j))
    for path, expected in ((empty, "cannot read the input"), (words, "must be real numbers"),
                           (complex_, "must be real numbers")):
        code, _, err = run(capsys, "certify", digits_mlp_path, "--input", path, "--label", 0,
                           "--eps", 0.01)
        assert code == 2 and expected in err and err.count("\n") == 1, err


def test_compare_checks_every_eps_before_writing(capsys, tmp_path, digits_mlp_path):
    out = tmp_path / "cmp"
    code, _, err = run(capsys, "compare", digits_mlp_path, "--eps", 0.01, -1, "--n", 2,
                       "--methods", "ibp", "--out", out)
    assert code == 2 and "--eps must be finite and >= 0" in err
    assert not out.exists() or not any(out.iterdir())


def test_plot2d_without_matplotlib_is_a_clear_error(capsys, tmp_path, monkeypatch):
    import sys as _sys

    monkeypatch.setitem(_sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, _, err = run(capsys, "plot2d", "models/toy2d.onnx", "--x", "0.7,0.3", "--eps", 0.1,
                       "--out", tmp_path / "f.png")
    assert code == 2 and "pip install matplotlib" in err
    assert not (tmp_path / "f.png").exists()


@pytest.mark.slow
def test_closed_pipe_gives_no_traceback(digits_mlp_path, digit_file):
    path, label = digit_file
    proc = subprocess.Popen([sys.executable, "-m", "verify", "certify", str(digits_mlp_path),
                             "--input", str(path), "--label", str(label), "--eps", "0.01",
                             "--method", "crown"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before the certificate is printed
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_devices_this_torch_lacks_are_refused():
    import torch

    from verify import InputError
    from verify.network import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="sees no CUDA device"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(InputError, match="only"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_vnnlib_refuses_before_solving(capsys, tmp_path, shared_benchmarks):
    """An --out that cannot be written, or smoothing (a statement about g, not the network),
    is refused in one line before any solving; a folder given as a model is named as one."""
    acas = shared_benchmarks / "acasxu"
    model = str(acas / "onnx" / "ACASXU_run2a_1_1_batch_2000.onnx")
    prop = str(acas / "vnnlib" / "prop_3.vnnlib")
    for extra, expected in ((["--out", str(tmp_path / "missing" / "r.txt")], "does not exist"),
                            (["--out", str(tmp_path)], "a folder is there"),
                            (["--method", "smoothing"], "cannot answer a VNN-LIB query")):
        code, out, err = run(capsys, "vnnlib", model, prop, *extra)
        assert code == 2 and out == "" and expected in err and err.count("\n") == 1, err
    code, _, err = run(capsys, "info", str(tmp_path))
    assert code == 2 and "a folder, not a file" in err
    code, _, err = run(capsys, "certify", model, "--input", "x.npy", "--label", "7.5",
                       "--eps", "0.1")
    assert code == 2 and err.count("verify") == 2 and "see verify certify --help" in err, err


HEAVY = ("torch", "onnx", "onnxruntime", "highspy")


@pytest.mark.parametrize("module, argv, code", [
    ("verify.cli", ["certify", "m.onnx", "--input", "x.npy", "--label", "0", "--eps", "0.1",
                    "--timeout", "-1"], 2),
    ("verify.cli", ["certify", "m.onnx", "--input", "x.npy", "--label", "0", "--eps", "0.1",
                    "--threads", "0"], 2),
    ("verify.cli", ["vnnlib", "m.onnx", "p.vnnlib", "--timeout", "nan"], 2),
    ("verify.cli", ["vnncomp", "i.csv", "--limit", "0"], 2),
    ("verify.cli", ["certify", "m.onnx", "--label", "zero"], 2),
    ("verify.solver_cli", ["verify", "q.vnnlib", "--timeout", "-1"], 1),
    ("verify.solver_cli", ["verify", "q.vnnlib", "--threads", "0"], 1),
])
def test_bad_plain_arguments_are_refused_before_heavy_imports(module, argv, code):
    """A bad number or range is refused before torch, onnx, onnxruntime or highspy is imported
    (their import takes seconds), in a fresh process: `import verify` imports none of them."""
    repo = Path(__file__).resolve().parents[1]
    program = (f"import sys; from {module} import main; code = main({argv!r}); "
               f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, cwd=repo)
    assert proc.stdout.split(None, 1) == [str(code), "[]\n"], proc.stderr
    assert proc.stderr.count("\n") == 1 and "error: " in proc.stderr


def test_public_names_resolve_on_first_use():
    """verify's public names (imported lazily) are the defining modules' objects."""
    import verify
    from verify.backends import certify
    from verify.spec import robustness_spec

    assert verify.certify is certify and verify.robustness_spec is robustness_spec
    assert set(verify.__all__) <= set(dir(verify))
    for name in verify.__all__:
        assert getattr(verify, name) is not None
    with pytest.raises(AttributeError):
        verify.no_such_name  # noqa: B018


def test_every_submodule_is_an_attribute_in_a_fresh_process():
    """`import verify; verify.spec.robustness_spec` (as docs/architecture.md and the notebooks
    write) works before anything else imported verify.spec: every submodule resolves lazily."""
    repo = Path(__file__).resolve().parents[1]
    modules = sorted(p.stem for p in (repo / "verify").iterdir()
                     if not p.stem.startswith("_") and (p.suffix == ".py" or p.is_dir()
                                                        and (p / "__init__.py").exists()))
    program = ("import verify, types; "
               f"print(all(isinstance(getattr(verify, m), types.ModuleType) for m in {modules!r}),"
               " set(dir(verify)) >= set(" + repr(modules) + "))")
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, cwd=repo)
    assert proc.stdout.split() == ["True", "True"], proc.stderr


def test_option_with_the_method_prefix(capsys, digits_mlp_path, digit_file):
    """certify reads `METHOD.KEY=VALUE` (compare's form) as KEY=VALUE when METHOD is --method:
    a bad value is named as such with the valid values (it was called an unknown option, and
    the valid ones listed included it); another method's prefix is refused."""
    path, label = digit_file
    base = ["certify", digits_mlp_path, "--input", path, "--label", label, "--eps", "0.02",
            "--method", "crown", "--json"]
    code, _, err = run(capsys, *base, "--option", "crown.intermediate=bad")
    assert code == 2 and err.count("\n") == 1
    assert "option intermediate of method 'crown' must be one of crown, ibp, got 'bad'" in err
    assert "unknown" not in err
    for option, message in (
            (["crown.intermediate"], "--option expects crown.KEY=VALUE, got 'crown.intermediate'"),
            (["crown.intermediate=ibp", "intermediate=crown"],
             "--option intermediate given twice ('crown.intermediate=ibp', 'intermediate=crown')"),
            ([".x=1"], "--option .x=1: the option names no method, but --method is crown")):
        code, _, err = run(capsys, *base, *[a for o in option for a in ("--option", o)])
        assert code == 2 and err.count("\n") == 1 and message in err, err
    prefixed = run(capsys, *base, "--option", "crown.intermediate=ibp")
    plain = run(capsys, *base, "--option", "intermediate=ibp")
    assert prefixed[0] == plain[0] == 0
    drop = ("time_s",)
    assert {k: v for k, v in json.loads(prefixed[1]).items() if k not in drop} == \
        {k: v for k, v in json.loads(plain[1]).items() if k not in drop}
    code, _, err = run(capsys, *base, "--option", "milp.timeout=3")
    assert code == 2 and "for method 'milp', but --method is crown" in err
