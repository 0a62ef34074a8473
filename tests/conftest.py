"""Shared test fixtures: random small networks, the bundled model, the bundled third-party benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from verify.network import Conv2d, Dense, Network, ReLU
from verify.spec import Specification

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
BENCHMARK_DATA = REPO / "benchmarks" / "data"  # VNN-COMP subsets shipped with the repository
SHARED_BENCHMARKS = BENCHMARK_DATA  # former name, kept so that older tests still import it


def random_mlp(rng: np.random.Generator, sizes: list[int], final_relu: bool = False,
               scale: float = 1.0) -> Network:
    """Dense/ReLU network with layer sizes `sizes` (input first), He-like random weights."""
    layers = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.normal(size=(n_out, n_in)) * scale * np.sqrt(2.0 / n_in)
        b = rng.normal(size=n_out) * 0.1 * scale
        layers.append(Dense(w, b, (n_in,), (n_out,)))
        if k < len(sizes) - 2 or final_relu:
            layers.append(ReLU((n_out,)))
    return Network(layers, (sizes[0],), name="random_mlp")


def random_conv_net(rng: np.random.Generator, in_shape=(1, 6, 6), channels: int = 3,
                    n_classes: int = 4) -> Network:
    """Conv2d(3x3, stride 1, pad 1) -> ReLU -> Conv2d(3x3, stride 2, pad 0) -> ReLU -> Dense."""
    c, h, w = in_shape
    conv1 = Conv2d(rng.normal(size=(channels, c, 3, 3)) * 0.5, rng.normal(size=channels) * 0.1,
                   (1, 1), (1, 1, 1, 1), (1, 1), in_shape)
    conv2 = Conv2d(rng.normal(size=(channels, channels, 3, 3)) * 0.3,
                   rng.normal(size=channels) * 0.1, (2, 2), (0, 0, 0, 0), (1, 1), conv1.out_shape)
    n_hidden = int(np.prod(conv2.out_shape))
    dense = Dense(rng.normal(size=(n_classes, n_hidden)) * 0.5, rng.normal(size=n_classes) * 0.1,
                  (n_hidden,), (n_classes,))
    layers = [conv1, ReLU((int(np.prod(conv1.out_shape)),)), conv2, ReLU((n_hidden,)), dense]
    return Network(layers, in_shape, name="random_conv")


def sampled_margins(net: Network, spec: Specification, n: int, seed: int = 0) -> np.ndarray:
    """Row values C f(x) - d at n points sampled inside the spec's input set: (n, rows)."""
    points = spec.input_set.sample(n, np.random.default_rng(seed))
    assert all(spec.input_set.contains(p) for p in points[:50])
    return spec.output.values(net.forward(points))


@pytest.fixture
def digits_mlp_path() -> Path:
    return MODELS / "digits_mlp.onnx"


@pytest.fixture
def digits_test() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(MODELS / "digits_test.npz")
    return data["x"], data["y"]


@pytest.fixture
def benchmark_data() -> Path:
    """benchmarks/data: ACAS Xu, mnist_fc and VNN-COMP 2021 subsets (see benchmarks/data/README.md)."""
    if not BENCHMARK_DATA.is_dir():
        pytest.skip(f"bundled benchmark data not found at {BENCHMARK_DATA}")
    return BENCHMARK_DATA


@pytest.fixture
def shared_benchmarks(benchmark_data: Path) -> Path:
    """Former name of `benchmark_data`, kept so that tests written against it still run."""
    return benchmark_data


# The networks under test are small: one torch thread is as fast as two and, on a shared 2-core
# machine, avoids the spin-waiting of oversubscribed OpenMP threads (30x slowdowns seen).
import torch  # noqa: E402

torch.set_num_threads(1)


def run_solver(argv: list[str], capsys) -> tuple[int, str, str]:
    """verify-solver in this process: (exit code, stdout, stderr)."""
    import io

    from verify.solver_cli import main

    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue(), capsys.readouterr().err


def only_milp_decides(monkeypatch, calls: list) -> None:
    """Make `vnncomp.solve`'s auto stages answer unknown, all but the MILP (run for real), each
    stage's name appended to `calls`: what the MILP stage decides, when the plan reaches it."""
    from verify import vnncomp

    real = vnncomp._solve_with_certifier

    def certifier(net_, query_, step, options, pairs=None):
        calls.append(step)
        if step == "milp":
            return real(net_, query_, step, options, pairs)
        return vnncomp.QueryResult("unknown", method=step, open_pairs=pairs)

    def stuck_relu_bab(net_, query_, options, pairs=None):
        calls.append("relu-bab")
        return vnncomp.QueryResult("unknown", method="relu-bab", open_pairs=pairs)

    monkeypatch.setattr(vnncomp, "_solve_with_certifier", certifier)
    monkeypatch.setattr(vnncomp, "_solve_relu_bab", stuck_relu_bab)
