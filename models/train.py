"""Train the bundled models and export them to ONNX.

Regenerate a model (writes into ``models/`` unless ``--out`` is given)::

    python -m models.train digits_mlp
    python -m models.train --list

Training is deterministic (fixed seeds, CPU, float32, deterministic torch
algorithms), so rerunning reproduces the same ONNX file byte for byte on the
same library versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
from typing import Callable, Sequence

import numpy as np

SEED = 0


def _seed_everything(seed: int = SEED) -> None:
    """Fix every random source and force deterministic torch kernels on CPU."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def export_mlp_onnx(
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    path: str | os.PathLike,
    input_size: int,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    opset: int = 17,
) -> str:
    """Write a ReLU MLP as an ONNX graph built with ``onnx.helper``.

    ``weights[i]`` has torch ``Linear`` layout ``[out, in]``; layers are
    ``Gemm(transB=1)`` with ``Relu`` between them (none after the last).
    If ``mean``/``std`` are given, the input is first normalised by
    ``Sub(mean) -> Div(std)``. Input is ``"input"`` ``[batch, input_size]``,
    output ``"logits"`` ``[batch, n_out]``. Returns the file's sha256.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if len(weights) != len(biases) or not weights:
        raise ValueError("need one bias per weight matrix, at least one layer")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")

    initializers: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    current = "input"
    if mean is not None and std is not None:
        if np.shape(mean) != (input_size,) or np.shape(std) != (input_size,):
            raise ValueError("mean and std must have shape [input_size]")
        nodes.append(helper.make_node("Sub", [current, const("norm_mean", mean)], ["centred"], name="normalise_sub_mean"))
        nodes.append(helper.make_node("Div", ["centred", const("norm_std", std)], ["normalised"], name="normalise_div_std"))
        current = "normalised"

    fan_in = input_size
    n_layers = len(weights)
    for i, (w, b) in enumerate(zip(weights, biases)):
        w = np.asarray(w, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        if w.ndim != 2 or w.shape[1] != fan_in or b.shape != (w.shape[0],):
            raise ValueError(f"layer {i}: weight {w.shape} / bias {b.shape} do not fit input size {fan_in}")
        last = i == n_layers - 1
        out = "logits" if last else f"fc{i + 1}_out"
        nodes.append(
            helper.make_node(
                "Gemm",
                [current, const(f"fc{i + 1}_weight", w), const(f"fc{i + 1}_bias", b)],
                [out],
                name=f"fc{i + 1}_gemm",
                transB=1,
            )
        )
        current = out
        if not last:
            nodes.append(helper.make_node("Relu", [current], [f"relu{i + 1}_out"], name=f"relu{i + 1}"))
            current = f"relu{i + 1}_out"
        fan_in = w.shape[0]

    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", input_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", fan_in])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="models.train",
    )
    model.ir_version = 8  # opset 17 era; readable by onnxruntime >= 1.13
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString(deterministic=True)
    pathlib.Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``x_train, x_test, y_train, y_test`` (pixels/16 in [0,1], float64/int64)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)


def _onnx_logits(path: pathlib.Path, x: np.ndarray) -> np.ndarray:
    """Run the ONNX file with onnxruntime on CPU."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x.astype(np.float32)})[0]


def _fit(model, xt, yt, epochs: int, batch: int = 64, lr: float = 1e-3) -> None:
    """Plain cross-entropy training with Adam, shuffled minibatches from a seeded generator."""
    import torch
    from torch import nn

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch):
            idx = perm[start : start + batch]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()


def train_toy2d(out_dir: pathlib.Path, epochs: int = 300) -> dict:
    """A 2-16-16-2 ReLU MLP on scikit-learn's two moons, inputs scaled into [0, 1]^2: small
    enough to draw (verify plot2d) and to solve exactly by hand-sized MILPs."""
    import torch
    from sklearn.datasets import make_moons
    from sklearn.model_selection import train_test_split
    from torch import nn

    _seed_everything()
    x, y = make_moons(n_samples=1000, noise=0.1, random_state=SEED)
    lo, hi = x.min(axis=0), x.max(axis=0)
    x = (x - lo) / (hi - lo)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=SEED,
                                                        stratify=y)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 2)).float()
    _fit(model, torch.tensor(x_train, dtype=torch.float32),
         torch.tensor(y_train, dtype=torch.int64), epochs, batch=64, lr=3e-3)
    model.eval()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    onnx_path = out_dir / "toy2d.onnx"
    sha = export_mlp_onnx([m.weight.detach().numpy() for m in linears],
                          [m.bias.detach().numpy() for m in linears], onnx_path, input_size=2)
    with torch.no_grad():
        torch_test = model(torch.tensor(x_test, dtype=torch.float32)).numpy()
    ort_test = _onnx_logits(onnx_path, x_test)
    diff = float(np.max(np.abs(ort_test - torch_test)))
    if diff >= 1e-4:
        raise RuntimeError(f"onnxruntime and torch disagree: max abs diff {diff:.3g}")
    train_acc = float((_onnx_logits(onnx_path, x_train).argmax(1) == y_train).mean())
    test_acc = float((ort_test.argmax(1) == y_test).mean())
    np.savez_compressed(out_dir / "toy2d_test.npz", x=x_test.astype(np.float64),
                        y=y_test.astype(np.int64))
    meta = {
        "name": "toy2d", "description": "Two moons, 2 inputs and 2 classes: the picture model.",
        "input_shape": [2], "domain": [0.0, 1.0], "classes": [0, 1], "n_classes": 2,
        "architecture": "2-16-16-2 ReLU MLP",
        "data": "scikit-learn make_moons(n_samples=1000, noise=0.1, random_state=0), each input "
                f"scaled by (x - {lo.round(6).tolist()}) / {(hi - lo).round(6).tolist()} into "
                "[0, 1]; stratified 80/20 split",
        "training": "standard (cross-entropy, Adam lr 3e-3)", "epochs": epochs, "seed": SEED,
        "train_accuracy": round(train_acc, 6), "test_accuracy": round(test_acc, 6),
        "onnx_sha256": sha,
    }
    (out_dir / "toy2d.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"toy2d: train acc {train_acc:.4f}, test acc {test_acc:.4f}, sha256 {sha}")
    return meta


def train_digits_mlp(out_dir: pathlib.Path, epochs: int = 60) -> dict:
    """Train the 64-50-50-10 ReLU MLP on scikit-learn digits; write .onnx, .json, test .npz."""
    import torch
    from torch import nn

    _seed_everything()
    x_train, x_test, y_train, y_test = _load_digits_split()

    mean = x_train.mean(axis=0).astype(np.float32)
    std = np.maximum(x_train.std(axis=0), 0.1).astype(np.float32)

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.from_numpy(mean))
            self.register_buffer("std", torch.from_numpy(std))
            self.layers = nn.Sequential(
                nn.Linear(64, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 10)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers((x - self.mean) / self.std)

    model = MLP().float()
    xt = torch.tensor(x_train, dtype=torch.float32)
    yt = torch.tensor(y_train, dtype=torch.int64)
    _fit(model, xt, yt, epochs)
    model.eval()
    with torch.no_grad():
        train_acc = float((model(xt).argmax(1).numpy() == y_train).mean())
        torch_test = model(torch.tensor(x_test, dtype=torch.float32)).numpy()

    linears = [m for m in model.layers if isinstance(m, nn.Linear)]
    onnx_path = out_dir / "digits_mlp.onnx"
    sha = export_mlp_onnx(
        [m.weight.detach().numpy() for m in linears],
        [m.bias.detach().numpy() for m in linears],
        onnx_path,
        input_size=64,
        mean=mean,
        std=std,
    )

    ort_test = _onnx_logits(onnx_path, x_test)
    diff = float(np.max(np.abs(ort_test - torch_test)))
    if diff >= 1e-4:
        raise RuntimeError(f"onnxruntime and torch disagree: max abs diff {diff:.3g}")
    torch_acc = float((torch_test.argmax(1) == y_test).mean())
    test_acc = float((ort_test.argmax(1) == y_test).mean())
    if test_acc != torch_acc:
        raise RuntimeError(f"accuracy mismatch: onnxruntime {test_acc} vs torch {torch_acc}")

    np.savez_compressed(out_dir / "digits_test.npz", x=x_test.astype(np.float64), y=y_test.astype(np.int64))

    meta = {
        "name": "digits_mlp",
        "description": "Handwritten digit classifier (8x8 images) for scikit-learn's digits data set.",
        "input_shape": [64],
        "domain": [0.0, 1.0],
        "classes": list(range(10)),
        "n_classes": 10,
        "architecture": "64-50-50-10 ReLU MLP",
        "normalisation": "per-pixel (x-mean)/std inside the ONNX graph",
        "data": "scikit-learn load_digits, pixels/16, stratified 80/20 split, random_state=0",
        "training": "standard (cross-entropy, Adam)",
        "epochs": epochs,
        "seed": SEED,
        "train_accuracy": round(train_acc, 6),
        "test_accuracy": round(test_acc, 6),
        "onnx_sha256": sha,
    }
    (out_dir / "digits_mlp.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"digits_mlp: train acc {train_acc:.4f}, test acc {test_acc:.4f} (onnxruntime), "
          f"max |onnx - torch| {diff:.2e}, sha256 {sha}")
    return meta


def train_digits_mlp_noise(out_dir: pathlib.Path, sigma: float, epochs: int = 150,
                           hidden: int = 100, copies: int = 4) -> dict:
    """Base classifier for randomized smoothing: the digits MLP (64-H-H-10) trained with Gaussian
    noise augmentation N(0, sigma^2) on the pixels (Cohen et al. 2019), `copies` fresh noisy copies
    of every training image per epoch. The in-graph normalisation uses the statistics of the
    noisy data (std sqrt(std^2 + sigma^2)). Writes digits_mlp_noiseNNN.onnx / .json."""
    import torch
    from torch import nn

    _seed_everything()
    x_train, x_test, y_train, y_test = _load_digits_split()
    name = f"digits_mlp_noise{round(sigma * 100):03d}"
    mean = x_train.mean(axis=0).astype(np.float32)
    std = np.sqrt(x_train.std(axis=0) ** 2 + sigma ** 2).astype(np.float32)

    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, 10)).float()
    mean_t, std_t = torch.from_numpy(mean), torch.from_numpy(std)
    xt = torch.tensor(x_train, dtype=torch.float32).repeat(copies, 1)
    yt = torch.tensor(y_train, dtype=torch.int64).repeat(copies)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    batch = 128
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        noisy = xt + sigma * torch.randn(xt.shape, generator=gen)
        for start in range(0, len(xt), batch):
            idx = perm[start : start + batch]
            opt.zero_grad()
            loss_fn(model((noisy[idx] - mean_t) / std_t), yt[idx]).backward()
            opt.step()
        sched.step()

    model.eval()
    x_test_t = torch.tensor(x_test, dtype=torch.float32)
    with torch.no_grad():
        torch_test = model((x_test_t - mean_t) / std_t).numpy()
        noisy_test = x_test_t.repeat(20, 1) + sigma * torch.randn((20 * len(x_test), 64),
                                                                  generator=gen)
        noisy_acc = float((model((noisy_test - mean_t) / std_t).argmax(1).numpy()
                           == np.tile(y_test, 20)).mean())

    linears = [m for m in model if isinstance(m, nn.Linear)]
    onnx_path = out_dir / f"{name}.onnx"
    sha = export_mlp_onnx([m.weight.detach().numpy() for m in linears],
                          [m.bias.detach().numpy() for m in linears], onnx_path, input_size=64,
                          mean=mean, std=std)
    ort_test = _onnx_logits(onnx_path, x_test)
    diff = float(np.max(np.abs(ort_test - torch_test)))
    if diff >= 1e-4:
        raise RuntimeError(f"onnxruntime and torch disagree: max abs diff {diff:.3g}")
    test_acc = float((ort_test.argmax(1) == y_test).mean())
    meta = {
        "name": name,
        "description": f"Digits base classifier for randomized smoothing, trained with Gaussian "
                       f"noise sigma={sigma:g} (certify it with the same sigma).",
        "input_shape": [64],
        "domain": [0.0, 1.0],
        "classes": list(range(10)),
        "n_classes": 10,
        "architecture": f"64-{hidden}-{hidden}-10 ReLU MLP",
        "normalisation": "per-pixel (x-mean)/sqrt(std^2+sigma^2) inside the ONNX graph",
        "data": "scikit-learn load_digits, pixels/16, stratified 80/20 split, random_state=0",
        "training": f"Gaussian noise augmentation sigma={sigma:g} ({copies} noisy copies per "
                    f"image per epoch), cross-entropy, Adam, cosine schedule",
        "noise": "gaussian",
        "sigma": sigma,
        "epochs": epochs,
        "seed": SEED,
        "test_accuracy": round(test_acc, 6),
        "test_accuracy_under_noise": round(noisy_acc, 6),
        "onnx_sha256": sha,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{name}: test acc {test_acc:.4f} clean, {noisy_acc:.4f} under noise sigma {sigma:g} "
          f"(base classifier f), max |onnx - torch| {diff:.2e}, sha256 {sha}")
    return meta


SMOOTHING_SIGMAS = (0.12, 0.25, 0.5, 1.0)

TRAINERS: dict[str, Callable[[pathlib.Path], dict]] = {
    "digits_mlp": train_digits_mlp,
    "toy2d": train_toy2d,
    **{f"digits_mlp_noise{round(s * 100):03d}":
       (lambda out, s=s: train_digits_mlp_noise(out, s)) for s in SMOOTHING_SIGMAS},
}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    from . import models_dir

    parser = argparse.ArgumentParser(prog="python -m models.train", description="Train a bundled model and export it to ONNX.")
    parser.add_argument("name", nargs="?", choices=sorted(TRAINERS), help="model to train")
    parser.add_argument("--out", type=pathlib.Path, default=None, help="output folder (default: models/)")
    parser.add_argument("--list", action="store_true", help="list the models that can be trained")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(sorted(TRAINERS)))
        return 0
    if args.name is None:
        parser.error("give a model NAME or --list")
    out = args.out or models_dir()
    out.mkdir(parents=True, exist_ok=True)
    TRAINERS[args.name](out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
