"""verify compare: the same inputs through every certifier; the ordering law on the counts."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from verify import InputError, load_onnx
from verify.cli import main
from verify.compare import compare, compare_one, format_table


@pytest.mark.slow
def test_counts_obey_the_ordering_law(tmp_path, digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    out = tmp_path / "rows.csv"
    rows, records = compare(net, xs[:15], ys[:15], [0.02, 0.05], "inf",
                            ["ibp", "crown", "milp", "attack"], (0, 1), out)
    misclassified = int(np.sum(net.forward(xs[:15]).argmax(1) != ys[:15]))
    for eps in (0.02, 0.05):
        r = {row["method"]: row for row in rows if row["eps"] == eps}
        assert r["ibp"]["yes"] <= r["crown"]["yes"] <= r["milp"]["yes"]
        assert r["milp"]["maybe"] == 0  # exact: YES or NO
        assert r["attack"]["no"] <= r["milp"]["no"] and r["attack"]["yes"] == 0
        assert r["crown"]["robust_accuracy"] <= r["milp"]["robust_accuracy"] \
            <= r["attack"]["robust_accuracy"]
        assert r["ibp"]["no"] == r["crown"]["no"] == misclassified  # relaxations: NO = input
    # Per input: never YES from one method and NO from another.
    by_input: dict = {}
    for rec in records:
        by_input.setdefault((rec["eps"], rec["index"]), set()).add(rec["status"])
    assert all(not {"YES", "NO"} <= statuses for statuses in by_input.values())
    with open(out) as fh:
        assert len(list(csv.reader(fh))) == 1 + len(rows)


def test_interrupted_run_keeps_finished_rows(tmp_path, digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    out = tmp_path / "rows.csv"
    calls = []

    def stop_after_two(text):
        calls.append(text)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compare(net, xs[:5], ys[:5], [0.01, 0.02], "inf", ["ibp", "crown"], (0, 1), out,
                progress=stop_after_two)
    with open(out) as fh:
        lines = list(csv.reader(fh))
    assert len(lines) == 3 and [line[2] for line in lines[1:]] == ["ibp", "crown"]


@pytest.mark.slow
def test_ticks_count_every_input_and_change_no_result(digits_mlp_path, digits_test):
    """The progress ticks go 0 .. N for every (eps, method), in order, and chunking the inputs
    for them leaves every verdict as it was."""
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    ticks = []
    rows, records = compare(net, xs[:23], ys[:23], [0.01, 0.03], "inf", ["crown", "milp"],
                            (0, 1), tick=lambda *t: ticks.append(t))
    _, plain = compare(net, xs[:23], ys[:23], [0.01, 0.03], "inf", ["crown", "milp"], (0, 1))
    assert [r["status"] for r in records] == [r["status"] for r in plain]
    for eps in (0.01, 0.03):
        for method in ("crown", "milp"):
            done = [d for e, m, d, n in ticks if (e, m) == (eps, method)]
            assert done[0] == 0 and done[-1] == 23 and done == sorted(done) and len(done) == 11


@pytest.mark.slow
def test_one_input_side_by_side(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    table, certs = compare_one(net, xs[4], int(ys[4]), 0.05, "inf",
                               ["ibp", "crown", "lp", "milp", "attack"], (0, 1))
    for j in range(10):
        if j == ys[4]:
            continue
        ibp, crown, lp, exact = (certs[m].margin_lower[j] for m in ("ibp", "crown", "lp", "milp"))
        attack = certs["attack"].margin_upper[j]
        assert ibp <= crown + 1e-9 and crown <= lp + 1e-6 and lp <= exact + 1e-6
        assert exact <= attack + 1e-6
    assert "milp" in table and "attack" in table


def test_cli_writes_csv_json_png(tmp_path, capsys, digits_mlp_path):
    code = main(["compare", str(digits_mlp_path), "--eps", "0.01", "0.03", "--n", "8",
                 "--methods", "ibp", "crown", "attack", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0 and "robust acc" in captured.out
    data = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert len(data["rows"]) == 6 and len(data["inputs"]) == 48
    assert (tmp_path / "out" / "compare.png").stat().st_size > 1000
    assert not list((tmp_path / "out").glob("*.part*"))
    table = captured.out[: captured.out.index("\nwrote ")]
    assert (tmp_path / "out" / "compare.txt").read_text() == table + "\n"
    with open(tmp_path / "out" / "compare.csv") as fh:
        saved = list(csv.DictReader(fh))
    lines = table.splitlines()
    shown = [_aligned_cells(lines[1 + 6 * k], line) for k in range(2)
             for line in lines[2 + 6 * k: 5 + 6 * k]]  # two blocks: eps line, header, 3 rows
    assert len(saved) == len(shown) == 6
    for row, cells in zip(saved, shown):
        assert cells["method"] == row["method"]
        assert [cells[k] for k in ("YES", "NO", "MAYBE")] == [row[k] for k in ("yes", "no",
                                                                               "maybe")]
        assert cells["robust acc"] == f"{float(row['robust_accuracy']):.3f}"
        mean = float(row["mean_margin_lower"])
        assert cells["mean lower"] == (f"{mean:.4g}" if np.isfinite(mean) else "-")
    assert main(["compare", str(digits_mlp_path), "--eps", "0.01", "--n", "0"]) == 2
    bad = tmp_path / "bad.npz"
    np.savez(bad, a=np.zeros(3))
    assert main(["compare", str(digits_mlp_path), "--eps", "0.01", "--data", str(bad)]) == 2
    assert "needs an .npz with arrays x and y" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", np.zeros(64))  # an .npy, not an .npz
    assert main(["compare", str(digits_mlp_path), "--eps", "0.01", "--data",
                 str(tmp_path / "x.npy")]) == 2
    assert "needs an .npz with arrays x and y" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["compare", str(digits_mlp_path), "--eps", "0.01", "--methods", "ibp",
                 "--out", str(tmp_path / "afile")]) == 2
    assert "--out takes a folder" in capsys.readouterr().err


def test_cli_options_per_method_are_typed_and_checked_before_anything_runs(
        tmp_path, capsys, digits_mlp_path):
    """--option METHOD.KEY=VALUE reaches one method (smoothing needs its sigma this way); bad
    ones, and a method left without a required option, stop the run before any row or file."""
    noisy = digits_mlp_path.with_name("digits_mlp_noise025.onnx")
    base = ["compare", str(noisy), "--eps", "0.1", "--norm", "2", "--n", "4"]
    assert main([*base, "--methods", "crown", "smoothing", "--option", "smoothing.sigma=0.25",
                 "--option", "smoothing.n=500", "--option", "crown.intermediate=ibp"]) == 0
    out = capsys.readouterr().out
    assert "smoothing" in out and "of g" in out
    for extra, expected in (([], "needs sigma"),
                            (["--option", "sigma=0.25"], "METHOD.KEY=VALUE"),
                            (["--option", "attack.steps=3"], "METHOD one of --methods"),
                            (["--option", "smoothing.sigma=-1"], "sigma"),
                            (["--option", "crown.batch_size=0"], "must be >= 1")):
        code = main([*base, "--methods", "crown", "smoothing", *extra,
                     "--out", str(tmp_path / "never")])
        captured = capsys.readouterr()
        assert code == 2 and expected in captured.err and captured.err.count("\n") == 1
        assert captured.out == "" and not (tmp_path / "never").exists()
    code = main(["compare", str(noisy), "--eps", "0.1", "0.2", "--methods", "crown", "--input",
                 "x.npy", "--label", "0"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and \
        captured.err == "verify: error: --input compares one radius: give one --eps, not 2\n"


@pytest.mark.parametrize("extra, expected", [
    (["--methods", "ibp", "attack", "--option", "attack.dtype=float16"],
     "option dtype of method 'attack' must be one of auto, float32, float64, got 'float16'"),
    (["--methods", "ibp", "bab", "--option", "bab.bounds=foo"],
     "option bounds of method 'bab' must be one of crown, ibp, got 'foo'"),
    (["--methods", "ibp", "crown", "--option", "crown.device=cuda:99"], "CUDA device"),
    (["--methods", "ibp", "milp", "--norm", "2"],
     "method milp takes l_inf and l_1 balls only, not l_2"),
    (["--methods", "ibp", "bab", "--norm", "1"], "method bab takes l_inf balls only, not l_1"),
    (["--methods", "ibp", "crown", "--option", "crown.device=cpu", "--option",
      "crown.device=auto"], "--option crown.device given twice"),
])
def test_values_a_method_refuses_stop_the_run_before_any_row(tmp_path, capsys, digits_mlp_path,
                                                             extra, expected):
    """Option values and norms that a method refuses only when it runs are refused before the
    first row: no row printed, no folder or compare.csv made."""
    out = tmp_path / "cmp"
    code = main(["compare", str(digits_mlp_path), "--eps", "0.02", "--n", "3", *extra,
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and not out.exists()
    assert captured.err.startswith("verify: error:") and expected in captured.err
    assert captured.err.count("\n") == 1, captured.err


def test_api_refuses_a_norm_before_writing(tmp_path, digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    out = tmp_path / "rows.csv"
    with pytest.raises(InputError, match="milp takes l_inf and l_1 balls only"):
        compare(net, xs[:2], ys[:2], [0.01], "2", ["ibp", "milp"], (0, 1), out)
    assert not out.exists()
    with pytest.raises(InputError, match="bounds of method 'bab' must be one of"):
        compare_one(net, xs[0], int(ys[0]), 0.01, "inf", ["ibp", "bab"], (0, 1),
                    {"bab": {"bounds": "foo"}})


@pytest.mark.slow
def test_workers_give_the_same_table(digits_mlp_path, digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test
    one, rec_one = compare(net, xs[:12], ys[:12], [0.03], "inf", ["crown", "milp"], (0, 1))
    two, rec_two = compare(net, xs[:12], ys[:12], [0.03], "inf", ["crown", "milp"], (0, 1),
                           workers=2)
    strip = [{k: v for k, v in r.items() if "time" not in k} for r in one]
    # Counts equal exactly; bounds to 1e-12 (a fresh worker process may sum in another order).
    assert strip == [{k: pytest.approx(v, rel=1e-12, abs=1e-12) if isinstance(v, float) else v
                      for k, v in r.items() if "time" not in k} for r in two]
    assert [r["status"] for r in rec_one] == [r["status"] for r in rec_two]


def test_an_interrupted_compare_keeps_whole_rows_and_no_empty_file(tmp_path, digits_mlp_path,
                                                                    digits_test):
    net = load_onnx(digits_mlp_path)
    xs, ys = digits_test[0][:3], digits_test[1][:3]
    out = tmp_path / "c.csv"

    def stop_at(stopping_method):
        def tick(eps, method, done, total):
            if method == stopping_method:
                raise KeyboardInterrupt
        return tick

    with pytest.raises(KeyboardInterrupt):
        compare(net, xs, ys, [0.01], "inf", ["ibp", "crown"], (0, 1), out_csv=out,
                tick=stop_at("ibp"))
    assert not out.exists()  # stopped before its first row: no header-only file
    with pytest.raises(KeyboardInterrupt):
        compare(net, xs, ys, [0.01], "inf", ["ibp", "crown"], (0, 1), out_csv=out,
                tick=stop_at("crown"))
    with open(out) as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 2 and rows[1][2] == "ibp"  # the header and the finished row


def test_one_input_compare_marks_milp_rows_a_time_limit_left_open(digits_mlp_path, digits_test):
    """A milp row whose bounds do not meet (time ran out) is shown as '>= lower bound', never
    as an exact minimum; exact_margins cannot be switched off there."""
    net = load_onnx(digits_mlp_path)
    x, y = digits_test[0][0], int(digits_test[1][0])
    table, certs = compare_one(net, x, y, 0.08, "inf", ["milp"], (0, 1),
                               {"milp": {"timeout": 0.05}})
    open_rows = [j for j in range(10) if j != y
                 and certs["milp"].margin_upper[j] - certs["milp"].margin_lower[j] > 1e-3]
    assert open_rows  # 0.05 s leaves rows open at eps 0.08
    assert table.count(">=") == len(open_rows) + 1  # and once in the header
    with pytest.raises(InputError, match="exact_margins"):
        compare_one(net, x, y, 0.05, "inf", ["milp"], (0, 1), {"milp": {"exact_margins": False}})


def _spans(line: str) -> list[tuple[int, int]]:
    """(start, end) of each cell of a table line: cells are two or more spaces apart."""
    return [m.span() for m in re.finditer(r"\S+(?: \S+)*", line)]


def _aligned_cells(header: str, line: str) -> dict[str, str]:
    """The cells of `line` keyed by the header they sit under, asserting the layout: the first
    cell starts where the first header starts, every other cell ends where its header ends."""
    heads = {end: header[start:end] for start, end in _spans(header)}
    cells = {}
    for k, (start, end) in enumerate(_spans(line)):
        if k == 0 and start == _spans(header)[0][0]:
            cells[header[slice(*_spans(header)[0])]] = line[start:end]
            continue
        assert end in heads, f"'{line[start:end]}' sits under no header:\n{header}\n{line}"
        cells[heads[end]] = line[start:end]
    return cells


def test_every_column_sits_under_its_own_header(digits_mlp_path, digits_test):
    """Logit margins and smoothing's probability margins of g have their own columns; each
    value ends where its header ends, whatever the sizes of the numbers (huge eps, no domain)."""
    net = load_onnx(digits_mlp_path.with_name("digits_mlp_noise025.onnx"))
    xs, ys = digits_test
    opts = {"smoothing": {"sigma": 0.25, "n": 300}}
    for eps in (0.1, 30.0):
        rows, _ = compare(net, xs[:3], ys[:3], [eps], "2", ["crown", "smoothing", "attack"],
                          None, options=opts)
        lines = format_table(rows).splitlines()
        header = lines[1]
        assert "g mean lower" in header and "g median lower" in header
        by_method = {r["method"]: r for r in rows}
        for line in lines[2:5]:
            cells = _aligned_cells(header, line)
            assert len(cells) == len(_spans(header))
            r = by_method[cells["method"]]
            assert int(cells["YES"]) == r["yes"] and cells["acc is"] == r["bound"]
            logits, of_g = (cells["mean lower"], cells["median lower"]), \
                (cells["g mean lower"], cells["g median lower"])
            if r["method"] == "crown":
                assert of_g == ("-", "-")
                assert float(logits[0]) == pytest.approx(r["mean_margin_lower"], rel=1e-3)
            elif r["method"] == "smoothing":
                assert logits == ("-", "-")
                assert float(of_g[1]) == pytest.approx(r["median_margin_lower"], rel=1e-3,
                                                       abs=1e-4)
    plain = format_table(compare(net, xs[:2], ys[:2], [0.1], "2", ["ibp", "crown"])[0])
    assert "g mean lower" not in plain  # the g columns only when smoothing is in the table
    table, certs = compare_one(net, xs[4], int(ys[4]), 30.0, "2",
                               ["ibp", "crown", "smoothing", "attack"], None, opts)
    lines = table.splitlines()
    kinds = _aligned_cells(lines[1], lines[2])
    assert kinds == {"ibp": "z lower", "crown": "z lower", "smoothing": "g lower",
                     "attack": "z upper"}
    for line in lines[3:]:
        cells = _aligned_cells(lines[1], line)
        assert len(cells) == 5 or (len(cells) == 4 and "class" not in cells)  # status row
        if "class" in cells:
            j = int(cells["class"])
            assert float(cells["ibp"]) == pytest.approx(certs["ibp"].margin_lower[j], abs=1e-4)


def _one_input_table(stdout: str) -> dict[tuple[int, str], str]:
    """{(class, method): cell} from `verify compare --input`'s table on stdout."""
    lines = stdout.splitlines()
    header = lines[1]
    cells = {}
    for line in lines[3:]:
        row = _aligned_cells(header, line)
        if "class" in row:
            cells.update({(int(row["class"]), m): v for m, v in row.items() if m != "class"})
    return cells


def test_one_input_out_writes_the_table_csv_json_png(tmp_path, capsys, digits_mlp_path,
                                                     digits_test):
    """--input with --out: the folder is made and holds compare.txt (what was printed),
    compare.csv and compare.json with the very numbers of the table, and a plot; nothing
    half-written. Bad input: exit 2 before the folder exists."""
    noisy = digits_mlp_path.with_name("digits_mlp_noise025.onnx")
    x, y = digits_test[0][4], int(digits_test[1][4])
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "new" / "cmp"
    code = main(["compare", str(noisy), "--eps", "0.1", "--norm", "2", "--input",
                 str(tmp_path / "x.npy"), "--label", str(y), "--methods", "ibp", "crown",
                 "smoothing", "attack", "--option", "smoothing.sigma=0.25", "--option",
                 "smoothing.n=300", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    table = printed[: printed.index("\nwrote ")]
    assert (out / "compare.txt").read_text() == table + "\n"
    shown = _one_input_table(table)
    with open(out / "compare.csv") as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == 9 * 4 == len(shown)
    for r in records:
        assert r["margin_of"] == ("g" if r["method"] == "smoothing" else "z")
        value = shown[(int(r["class"]), r["method"])]
        assert value == f"{float(r['value']):.4f}"
        bound = "margin_upper" if r["method"] == "attack" else "margin_lower"
        assert float(r["value"]) == float(r[bound])
    saved = json.loads((out / "compare.json").read_text())
    assert len(saved["margins"]) == len(records)
    status_row = table.splitlines()[-1].split()
    assert status_row == [saved["certificates"][m]["status"]
                          for m in ("ibp", "crown", "smoothing", "attack")]
    assert (out / "compare.png").stat().st_size > 1000
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.json",
                                                     "compare.png", "compare.txt"]
    never = tmp_path / "never"
    for extra, expected in ((["--label", "12"], "label 12 is outside the classes 0..9"),
                            (["--label", str(y), "--eps", "-1"], "eps must be a finite")):
        argv = ["compare", str(noisy), "--input", str(tmp_path / "x.npy"), "--methods", "ibp",
                "--out", str(never)]
        code = main(argv + (extra if "--eps" in extra else extra + ["--eps", "0.1"]))
        captured = capsys.readouterr()
        assert code == 2 and expected in captured.err and captured.out == ""
        assert not never.exists()


def test_out_with_a_folder_where_a_file_goes_writes_nothing(tmp_path, capsys, digits_mlp_path,
                                                           digits_test):
    """compare.csv already a folder in --out: one line, exit 2, and no compare.txt left
    behind (every file name is checked before any is written)."""
    x, y = digits_test[0][4], int(digits_test[1][4])
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "cmp"
    (out / "compare.csv").mkdir(parents=True)
    code = main(["compare", str(digits_mlp_path), "--eps", "0.1", "--input",
                 str(tmp_path / "x.npy"), "--label", str(y), "--methods", "ibp",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "compare.csv" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv"]
