"""--out: an unwritable path is refused in one line (exit 2) before any work, and a write that
fails late leaves neither a partial file nor a scratch file, nor a printed answer (vnnlib)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from verify import InputError
from verify.cli import main
from verify.outputs import (atomic_path, check_output_file, check_output_folder,
                            write_text_atomically)

TOY = "models/toy2d.onnx"
REPO = Path(__file__).resolve().parents[1]
# toy2d: 2 inputs, 2 outputs; the whole box [0, 1]^2 with "Y_0 <= Y_1 + 100": sat at once
PROPERTY = ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
            "(declare-const Y_1 Real)\n(assert (>= X_0 0)) (assert (<= X_0 1))\n"
            "(assert (>= X_1 0)) (assert (<= X_1 1))\n(assert (<= Y_0 (+ Y_1 100)))\n")


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder no file can be created in: read-only by mode, or (as root, who ignores modes)
    /sys, which the kernel keeps read-only."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    for candidate in (folder, Path("/sys")):
        try:
            with tempfile.TemporaryFile(dir=candidate):
                pass
        except OSError:
            yield candidate
            folder.chmod(0o700)
            return
    folder.chmod(0o700)
    pytest.skip("no unwritable folder on this machine")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_refusal(code, err, path) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("verify: error: ") and str(path) in lines[0]
    assert "Traceback" not in err


def test_helpers_refuse_and_leave_nothing(unwritable, tmp_path):
    with pytest.raises(InputError, match="cannot be written"):
        check_output_file(unwritable / "a.txt")
    with pytest.raises(InputError, match="cannot be written"):
        write_text_atomically(unwritable / "a.txt", "x")
    with pytest.raises(InputError):
        check_output_folder(unwritable / "sub")
    target = tmp_path / "kept.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == \
        ["kept.txt", "locked"]
    write_text_atomically(target, "new")
    assert target.read_text() == "new"


def test_vnnlib_refuses_before_solving(capsys, unwritable, tmp_path):
    prop = tmp_path / "p.vnnlib"
    prop.write_text(PROPERTY)
    out = unwritable / "result.txt"
    code, printed, err = run(capsys, "vnnlib", REPO / TOY, prop, "--out", out)
    _one_line_refusal(code, err, out)
    assert printed == ""


def test_vnnlib_late_write_failure_prints_no_answer(capsys, tmp_path, monkeypatch):
    """The file fails at the rename (after the check): exit 2, no 'sat' on stdout, no file."""
    prop = tmp_path / "p.vnnlib"
    prop.write_text(PROPERTY)
    out = tmp_path / "result.txt"

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    code, printed, err = run(capsys, "vnnlib", REPO / TOY, prop, "--out", out)
    _one_line_refusal(code, err, out)
    assert "No space left" in err and printed == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.vnnlib"]
    monkeypatch.undo()
    code, printed, _ = run(capsys, "vnnlib", REPO / TOY, prop, "--out", out)
    assert code == 0 and printed.startswith("sat") and out.read_text() == printed


def test_export_refuses_an_unwritable_file(capsys, unwritable, tmp_path):
    np.save(tmp_path / "x.npy", np.array([0.3, 0.6]))
    out = unwritable / "m.lp"
    code, _, err = run(capsys, "export", REPO / TOY, "--input", tmp_path / "x.npy", "--label", 0,
                       "--eps", 0.1, "--out", out)
    _one_line_refusal(code, err, out)


def test_compare_refuses_an_unwritable_folder(capsys, unwritable):
    out = unwritable / "results"
    code, printed, err = run(capsys, "compare", REPO / "models/digits_mlp.onnx", "--eps", 0.01,
                             "--n", 2, "--methods", "ibp", "--out", out)
    _one_line_refusal(code, err, out)
    assert "robust acc" not in printed


def test_plot2d_refuses_an_unwritable_file(capsys, unwritable):
    pytest.importorskip("matplotlib")
    out = unwritable / "f.png"
    code, _, err = run(capsys, "plot2d", REPO / TOY, "--x", "0.7,0.3", "--eps", 0.1,
                       "--methods", "ibp", "--out", out)
    _one_line_refusal(code, err, out)


def test_plot2d_late_write_failure_leaves_nothing(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    out = tmp_path / "f.png"
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied")))
    code, _, err = run(capsys, "plot2d", REPO / TOY, "--x", "0.7,0.3", "--eps", 0.1,
                       "--methods", "ibp", "--out", out)
    _one_line_refusal(code, err, out)
    assert list(tmp_path.iterdir()) == []
