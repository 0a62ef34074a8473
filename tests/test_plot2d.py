"""plot2d: the teaching figure for 2-input networks, and the bounds it draws."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import random_mlp
from onnx_reference import make_model, tensor
from verify.cli import main
from verify.plot2d import plot2d


@pytest.mark.parametrize("norm", [pytest.param("inf", marks=pytest.mark.slow), "2",
                                  pytest.param("1", marks=pytest.mark.slow)])
def test_drawn_bounds_are_ordered(tmp_path, norm):
    net = random_mlp(np.random.default_rng(4), [2, 16, 16, 3])
    info = plot2d(net, [0.3, 0.2], 0.3, tmp_path / "fig.png", norm,
                  methods=("ibp", "crown", "lp") + (("milp",) if norm != "2" else ()))
    m = info["margin_lower"]
    assert m["ibp"] <= m["crown"] + 1e-9 and m["crown"] <= m["lp"] + 1e-6
    if norm != "2":
        assert m["lp"] <= m["milp"] + 1e-6 and m["milp"] <= info["sampled_min"] + 1e-9
    assert m["lp"] <= info["sampled_min"] + 1e-9
    assert (tmp_path / "fig.png").stat().st_size > 10_000


@pytest.mark.slow
def test_cli(tmp_path, capsys):
    rng = np.random.default_rng(1)
    model = make_model(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)],
        [tensor("x", ["N", 2])], [tensor("y", ["N", 2])],
        [("w1", rng.normal(size=(8, 2))), ("b1", rng.normal(size=8)),
         ("w2", rng.normal(size=(2, 8))), ("b2", np.zeros(2))])
    path = tmp_path / "toy.onnx"
    onnx.save(model, path)
    out = tmp_path / "toy.png"
    assert main(["plot2d", str(path), "--x", "0.1,0.2", "--eps", "0.2", "--out", str(out)]) == 0
    assert out.is_file() and "lower bounds" in capsys.readouterr().out
    assert main(["plot2d", str(path), "--x", "0.1", "--eps", "0.2", "--out", str(out)]) == 2
    assert "--x must be two numbers" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_passes_options_to_one_method(tmp_path, capsys):
    """--option METHOD.KEY=VALUE, as in compare: smoothing gets its sigma this way; a method left
    without one stops the run before anything is drawn."""
    out = tmp_path / "s.png"
    base = ["plot2d", "models/toy2d.onnx", "--x", "0.7,0.3", "--eps", "0.1", "--norm", "2",
            "--methods", "crown", "smoothing", "--out", str(out)]
    assert main([*base, "--option", "smoothing.sigma=0.25", "--option", "smoothing.n=2000"]) == 0
    assert out.is_file() and "lower bounds" in capsys.readouterr().out
    out.unlink()
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "needs sigma" in err and "plot2d" in err and err.count("\n") == 1 and not out.exists()


def test_refuses_other_input_sizes(tmp_path, capsys, digits_mlp_path):
    code = main(["plot2d", str(digits_mlp_path), "--x", "0,0", "--eps", "0.1",
                 "--out", str(tmp_path / "x.png")])
    assert code == 2 and "2-input networks; this one has 64" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_graph_network_ordered_against_the_exact_milp(tmp_path):
    """A residual graph (Relu, skip Add, Max): drawn on the graph IR, with its exact MILP."""
    from verify.graph.network import GraphNetwork
    from verify.onnx_io import load_onnx

    rng = np.random.default_rng(3)
    model = make_model(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["g"], transB=1),
         helper.make_node("Add", ["g", "r"], ["s"]),
         helper.make_node("Max", ["s", "r"], ["m"]),
         helper.make_node("Gemm", ["m", "w3", "b3"], ["y"], transB=1)],
        [tensor("x", [1, 2])], [tensor("y", [1, 3])],
        [("w1", rng.normal(size=(6, 2))), ("b1", rng.normal(size=6)),
         ("w2", rng.normal(size=(6, 6))), ("b2", rng.normal(size=6)),
         ("w3", rng.normal(size=(3, 6))), ("b3", rng.normal(size=3))])
    path = tmp_path / "res.onnx"
    onnx.save(model, path)
    net = load_onnx(path)
    assert isinstance(net, GraphNetwork)
    info = plot2d(net, [0.3, -0.2], 0.3, tmp_path / "fig.png", "inf",
                  methods=("ibp", "crown", "lp", "milp"))
    m = info["margin_lower"]
    assert m["ibp"] <= m["crown"] + 1e-9 and m["crown"] <= m["lp"] + 1e-6
    assert m["lp"] <= m["milp"] + 1e-6 and m["milp"] <= info["sampled_min"] + 1e-9
    assert (tmp_path / "fig.png").stat().st_size > 10_000
