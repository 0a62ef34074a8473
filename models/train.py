"""Train the bundled models and export them to ONNX.

Regenerate a model (writes into ``models/`` unless ``--out`` is given)::

    python -m models.train digits_mlp
    python -m models.train --list

Training is deterministic (fixed seeds, CPU, float32, deterministic torch
algorithms), so rerunning reproduces the same ONNX file byte for byte on the
same CPU type and library versions. On another CPU, torch's float32 kernels
may round differently: seen here, weights within 4e-7 of the bundled ones
(same accuracy), not the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
from typing import Callable, Optional, Sequence

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
        "input_scaling": {"low": lo.tolist(), "high": hi.tolist(),
                          "formula": "(x - low) / (high - low), per input"},
        "training": "standard (cross-entropy, Adam lr 3e-3)", "epochs": epochs, "seed": SEED,
        "train_accuracy": round(train_acc, 12), "test_accuracy": round(test_acc, 12),
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
        "train_accuracy": round(train_acc, 12),
        "test_accuracy": round(test_acc, 12),
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
        "test_accuracy": round(test_acc, 12),
        "test_accuracy_under_noise": round(noisy_acc, 6),
        "onnx_sha256": sha,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{name}: test acc {test_acc:.4f} clean, {noisy_acc:.4f} under noise sigma {sigma:g} "
          f"(base classifier f), max |onnx - torch| {diff:.2e}, sha256 {sha}")
    return meta


# ------------------------------------------------------------------------------ the model zoo
# Further digits models for the benchmarks: a larger MLP, a small CNN, an IBP-trained MLP and a
# plain / ReLU-stability-regularised pair. All share the digits split above, a fixed seed, and
# the same finishing step (export, onnxruntime vs torch, verify's loader vs onnxruntime, metadata).

DIGITS_DATA = "scikit-learn load_digits, pixels/16, stratified 80/20 split, random_state=0"
MAX_ONNX_BYTES = 200_000


def export_cnn_onnx(
    convs: Sequence[dict],
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    path: str | os.PathLike,
    input_shape: Sequence[int],
    opset: int = 17,
) -> str:
    """Write a ReLU CNN as an ONNX graph built with ``onnx.helper``.

    ``convs[i]`` holds ``weight`` ``[out, in, kh, kw]``, ``bias`` ``[out]``, ``stride`` ``(sh, sw)``
    and ``pad`` ``(ph, pw)`` (symmetric zero padding); every Conv is followed by ``Relu``. Then
    ``Flatten(axis=1)`` (channel-major, as torch's ``flatten(1)``) and the dense layers as in
    :func:`export_mlp_onnx` (``Gemm(transB=1)``, ``Relu`` between, none after the last). Input
    ``"input"`` ``[batch, *input_shape]``, output ``"logits"``. Returns the file's sha256.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not convs or not weights or len(weights) != len(biases):
        raise ValueError("need at least one conv and one dense layer, one bias per weight")
    c, h, w_ = (int(v) for v in input_shape)
    initializers: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    current = "input"
    for i, conv in enumerate(convs):
        k = np.asarray(conv["weight"], dtype=np.float32)
        b = np.asarray(conv["bias"], dtype=np.float32)
        (sh, sw), (ph, pw) = conv["stride"], conv["pad"]
        if k.ndim != 4 or k.shape[1] != c or b.shape != (k.shape[0],):
            raise ValueError(f"conv {i}: kernel {k.shape} / bias {b.shape} do not fit {c} channels")
        nodes.append(helper.make_node(
            "Conv", [current, const(f"conv{i + 1}_weight", k), const(f"conv{i + 1}_bias", b)],
            [f"conv{i + 1}_out"], name=f"conv{i + 1}", kernel_shape=list(k.shape[2:]),
            strides=[int(sh), int(sw)], pads=[int(ph), int(pw), int(ph), int(pw)]))
        nodes.append(helper.make_node("Relu", [f"conv{i + 1}_out"], [f"conv_relu{i + 1}_out"],
                                      name=f"conv_relu{i + 1}"))
        current = f"conv_relu{i + 1}_out"
        c = k.shape[0]
        h = (h + 2 * ph - k.shape[2]) // sh + 1
        w_ = (w_ + 2 * pw - k.shape[3]) // sw + 1
    nodes.append(helper.make_node("Flatten", [current], ["flat"], name="flatten", axis=1))
    current, fan_in = "flat", c * h * w_
    for i, (w, b) in enumerate(zip(weights, biases)):
        w = np.asarray(w, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        if w.ndim != 2 or w.shape[1] != fan_in or b.shape != (w.shape[0],):
            raise ValueError(f"dense {i}: weight {w.shape} / bias {b.shape} do not fit input size {fan_in}")
        last = i == len(weights) - 1
        out = "logits" if last else f"fc{i + 1}_out"
        nodes.append(helper.make_node(
            "Gemm", [current, const(f"fc{i + 1}_weight", w), const(f"fc{i + 1}_bias", b)],
            [out], name=f"fc{i + 1}_gemm", transB=1))
        current = out
        if not last:
            nodes.append(helper.make_node("Relu", [current], [f"relu{i + 1}_out"], name=f"relu{i + 1}"))
            current = f"relu{i + 1}_out"
        fan_in = w.shape[0]

    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *map(int, input_shape)])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", fan_in])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="models.train")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString(deterministic=True)
    pathlib.Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _relu_mlp(sizes: Sequence[int]):
    """nn.Sequential of Linear/ReLU with the given layer sizes (input first), float32."""
    from torch import nn

    layers: list = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if k < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).float()


def _digits_normalisation(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and std (floored at 0.1) of the training pixels, as for digits_mlp."""
    mean = x_train.mean(axis=0).astype(np.float32)
    std = np.maximum(x_train.std(axis=0), 0.1).astype(np.float32)
    return mean, std


def _train_steps(model, xt, yt, epochs: int, loss_of: Callable, batch: int = 64,
                 lr: float = 1e-3, lr_drops: Sequence[float] = ()) -> None:
    """Adam on shuffled minibatches (seeded); ``loss_of(xb, yb, progress)`` gives the loss, with
    ``progress`` = step / total steps in [0, 1); the learning rate is divided by 10 at each
    fraction of the epochs in ``lr_drops``."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[int(f * epochs) for f in lr_drops], gamma=0.1)
    gen = torch.Generator().manual_seed(SEED)
    steps_per_epoch = -(-len(xt) // batch)
    total, step = epochs * steps_per_epoch, 0
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch):
            idx = perm[start : start + batch]
            opt.zero_grad()
            loss_of(xt[idx], yt[idx], step / total).backward()
            opt.step()
            step += 1
        sched.step()


def interval_bounds(linears, mean, std, lower, upper):
    """Interval bound propagation (Gowal et al. 2018) through ``(x - mean) / std`` and a ReLU MLP,
    in plain differentiable torch. Returns the pre-activation bounds ``[(l, u), ...]`` of every
    hidden layer and the post-ReLU box ``(l, u)`` that feeds the last layer."""
    import torch

    lower, upper = (lower - mean) / std, (upper - mean) / std  # std > 0: monotone, exact
    pre = []
    for lin in linears[:-1]:
        mid, rad = (upper + lower) / 2, (upper - lower) / 2
        centre = mid @ lin.weight.T + lin.bias
        spread = rad @ lin.weight.abs().T
        lower, upper = centre - spread, centre + spread
        pre.append((lower, upper))
        lower, upper = torch.relu(lower), torch.relu(upper)
    return pre, (lower, upper)


def margin_lower_bounds(last, labels, lower, upper):
    """IBP lower bounds (B, n_classes) of z_y - z_j with the margin folded into the last layer
    (rows w_y - w_j, the "elision" of Gowal et al.); column y is 0."""
    import torch

    wc = last.weight[labels][:, None, :] - last.weight[None, :, :]  # (B, K, h)
    bc = last.bias[labels][:, None] - last.bias[None, :]  # (B, K)
    mid, rad = (upper + lower) / 2, (upper - lower) / 2
    return (torch.einsum("bkh,bh->bk", wc, mid) + bc
            - torch.einsum("bkh,bh->bk", wc.abs(), rad))


def _input_box(x, eps: float):
    """The l_inf ball of radius eps around x, clipped to the pixel domain [0, 1]."""
    return (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)


def _finish_digits(name: str, out_dir: pathlib.Path, export: Callable[[pathlib.Path], str],
                   torch_logits: Callable[[np.ndarray], np.ndarray], input_shape: Sequence[int],
                   split: tuple, meta: dict, max_bytes: Optional[int] = MAX_ONNX_BYTES) -> dict:
    """Export, check onnxruntime against torch and verify's loader (float64 Network.forward)
    against onnxruntime, compute the accuracies and write ``NAME.json``; returns the metadata.
    ``test_accuracy`` is the float64 Network.forward accuracy (onnxruntime's must agree).
    ``max_bytes`` guards the size of bundled models (None: no limit, for throw-away ones)."""
    from verify import load_onnx

    x_train, x_test, y_train, y_test = split
    onnx_path = out_dir / f"{name}.onnx"
    sha = export(onnx_path)
    size = onnx_path.stat().st_size
    if max_bytes is not None and size >= max_bytes:
        raise RuntimeError(f"{onnx_path.name} is {size} bytes, over {max_bytes}")
    shaped = (-1, *input_shape)
    torch_test = torch_logits(x_test)
    ort_test = _onnx_logits(onnx_path, x_test.reshape(shaped))
    diff = float(np.max(np.abs(ort_test - torch_test)))
    if diff >= 1e-4:
        raise RuntimeError(f"onnxruntime and torch disagree: max abs diff {diff:.3g}")
    net = load_onnx(onnx_path)
    if tuple(net.input_shape) != tuple(input_shape):
        raise RuntimeError(f"verify reads input shape {net.input_shape}, expected {input_shape}")
    ver_test = net.forward(x_test)
    vdiff = float(np.max(np.abs(ver_test - ort_test)))
    if vdiff >= 1e-4 * max(1.0, float(np.abs(ort_test).max())):
        raise RuntimeError(f"verify's Network and onnxruntime disagree: max abs diff {vdiff:.3g}")
    test_acc = float((ver_test.argmax(1) == y_test).mean())
    ort_acc = float((ort_test.argmax(1) == y_test).mean())
    if ort_acc != test_acc or float((torch_test.argmax(1) == y_test).mean()) != test_acc:
        raise RuntimeError(f"accuracy mismatch: verify {test_acc}, onnxruntime {ort_acc}")
    train_acc = float((net.forward(x_train).argmax(1) == y_train).mean())
    head = {
        "name": name, "description": meta.pop("description"), "input_shape": list(input_shape),
        "domain": [0.0, 1.0], "classes": list(range(10)), "n_classes": 10,
    }
    tail = {"seed": SEED, "train_accuracy": round(train_acc, 12),
            "test_accuracy": round(test_acc, 12), "onnx_sha256": sha, "onnx_bytes": size}
    meta = {**head, **meta, **tail}
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{name}: train acc {train_acc:.4f}, test acc {test_acc:.4f} (verify float64 = "
          f"onnxruntime), max |onnx - torch| {diff:.2e}, |verify - onnx| {vdiff:.2e}, "
          f"{size} bytes, sha256 {sha}")
    return meta


def _normalised_mlp_io(model, linears, mean: np.ndarray, std: np.ndarray, input_size: int
                       ) -> tuple[Callable, Callable]:
    """(torch_logits(x), export(path)) of an MLP whose inputs are normalised (x - mean) / std,
    for ``_finish_digits``: the same normalisation in torch and inside the ONNX graph."""
    import torch

    mean_t, std_t = torch.from_numpy(mean), torch.from_numpy(std)

    def torch_logits(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model((torch.tensor(x, dtype=torch.float32) - mean_t) / std_t).numpy()

    def export(path: pathlib.Path) -> str:
        return export_mlp_onnx([m.weight.detach().numpy() for m in linears],
                               [m.bias.detach().numpy() for m in linears], path,
                               input_size=input_size, mean=mean, std=std)

    return torch_logits, export


def _train_normalised_mlp(name: str, out_dir: pathlib.Path, sizes: Sequence[int], epochs: int,
                          meta: dict, loss_of: Optional[Callable] = None, lr: float = 1e-3,
                          lr_drops: Sequence[float] = (), prune_below: float = 0.0,
                          max_bytes: Optional[int] = MAX_ONNX_BYTES) -> dict:
    """A digits MLP with in-graph (x - mean) / std, trained by ``_train_steps``. ``loss_of`` is
    ``(model, mean, std) -> loss_of(xb, yb, progress)``; default cross-entropy. With
    ``prune_below`` > 0 the weights smaller in magnitude are set to 0 after training."""
    import torch
    from torch import nn

    _seed_everything()
    split = _load_digits_split()
    x_train, x_test, y_train, y_test = split
    mean, std = _digits_normalisation(x_train)
    mean_t, std_t = torch.from_numpy(mean), torch.from_numpy(std)
    model = _relu_mlp(sizes)
    xt = torch.tensor(x_train, dtype=torch.float32)
    yt = torch.tensor(y_train, dtype=torch.int64)
    ce = nn.CrossEntropyLoss()
    if loss_of is None:
        step_loss = lambda xb, yb, progress: ce(model((xb - mean_t) / std_t), yb)  # noqa: E731
    else:
        step_loss = loss_of(model, mean_t, std_t)
    _train_steps(model, xt, yt, epochs, step_loss, lr=lr, lr_drops=lr_drops)
    model.eval()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    if prune_below > 0:
        with torch.no_grad():
            n_zero = 0
            for lin in linears:
                small = lin.weight.abs() < prune_below
                lin.weight[small] = 0.0
                n_zero += int(small.sum())
        n_weights = sum(lin.weight.numel() for lin in linears)
        meta["pruning"] = {"threshold": prune_below, "weights_zeroed": n_zero,
                           "weights": n_weights, "sparsity": round(n_zero / n_weights, 6)}

    torch_logits, export = _normalised_mlp_io(model, linears, mean, std, sizes[0])

    meta = {"description": meta.pop("description"),
            "architecture": "-".join(map(str, sizes)) + " ReLU MLP",
            "normalisation": "per-pixel (x-mean)/std inside the ONNX graph",
            "data": DIGITS_DATA, **meta, "epochs": epochs}
    return _finish_digits(name, out_dir, export, torch_logits, [sizes[0]], split, meta,
                          max_bytes)


def train_digits_mlp_large(out_dir: pathlib.Path, epochs: int = 40) -> dict:
    """A bigger digits MLP, 64-100-100-100-10, trained like digits_mlp (cross-entropy, Adam)."""
    return _train_normalised_mlp(
        "digits_mlp_large", out_dir, (64, 100, 100, 100, 10), epochs,
        {"description": "Larger digits MLP (3 hidden layers of 100): more ReLUs for the "
                        "certifiers to work through.",
         "training": "standard (cross-entropy, Adam lr 1e-3, batch 64)"})


def train_digits_cnn(out_dir: pathlib.Path, epochs: int = 60, lr: float = 5e-3,
                     lr_drops: Sequence[float] = (0.75,)) -> dict:
    """A small digits CNN on [batch, 1, 8, 8]: Conv(1->8, 3x3, pad 1) + ReLU, Conv(8->16, 3x3,
    stride 2, pad 1) + ReLU, Flatten, Gemm 256 -> 10. No normalisation (pixels in [0, 1])."""
    import torch
    from torch import nn

    _seed_everything()
    split = _load_digits_split()
    x_train, x_test, y_train, y_test = split
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10)).float()
    xt = torch.tensor(x_train, dtype=torch.float32).reshape(-1, 1, 8, 8)
    yt = torch.tensor(y_train, dtype=torch.int64)
    ce = nn.CrossEntropyLoss()
    _train_steps(model, xt, yt, epochs, lambda xb, yb, _: ce(model(xb), yb), lr=lr,
                 lr_drops=lr_drops)
    model.eval()
    conv1, conv2, dense = model[0], model[2], model[5]

    def torch_logits(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8)).numpy()

    def export(path: pathlib.Path) -> str:
        convs = [{"weight": c.weight.detach().numpy(), "bias": c.bias.detach().numpy(),
                  "stride": c.stride, "pad": c.padding} for c in (conv1, conv2)]
        return export_cnn_onnx(convs, [dense.weight.detach().numpy()],
                               [dense.bias.detach().numpy()], path, (1, 8, 8))

    meta = {
        "description": "Small digits CNN (input [batch, 1, 8, 8]: the 64 pixels row by row).",
        "architecture": "Conv(1->8, 3x3, pad 1)-ReLU-Conv(8->16, 3x3, stride 2, pad 1)-ReLU-"
                        "Flatten-Gemm(256->10)",
        "normalisation": "none (pixels/16 in [0, 1] fed directly)",
        "data": DIGITS_DATA + "; each 64-pixel row reshaped to [1, 8, 8]",
        "training": f"standard (cross-entropy, Adam lr {lr:g}, /10 at "
                    f"{', '.join(f'{f:.0%}' for f in lr_drops) or 'no point'} of the epochs, "
                    f"batch 64)",
        "epochs": epochs,
    }
    return _finish_digits("digits_cnn", out_dir, export, torch_logits, (1, 8, 8), split, meta)


IBP_EPS = 0.05
IBP_SCHEDULE = {"warmup_epochs": 10, "ramp_epochs": 90, "kappa_start": 1.0, "kappa_end": 0.5}


def train_digits_mlp_ibp(out_dir: pathlib.Path, epochs: int = 200, eps: float = IBP_EPS,
                         schedule: dict = IBP_SCHEDULE) -> dict:
    """64-50-50-10 MLP trained with interval bound propagation (Gowal et al. 2018): loss
    kappa * CE(clean logits) + (1 - kappa) * CE(worst-case logits from IBP over the l_inf ball
    of radius eps_t ∩ [0, 1]). Warm-up epochs at eps_t = 0, kappa = 1; then eps_t rises
    linearly (per step) to eps and kappa falls linearly to kappa_end over the ramp; then both
    stay. The worst-case logit of class j is -(lower bound of z_y - z_j), class y's is 0."""
    from torch import nn

    ce = nn.CrossEntropyLoss()
    warm = schedule["warmup_epochs"] / epochs
    ramp = schedule["ramp_epochs"] / epochs
    k0, k1 = schedule["kappa_start"], schedule["kappa_end"]

    def loss_of(model, mean, std):
        linears = [m for m in model if isinstance(m, nn.Linear)]

        def step_loss(xb, yb, progress):
            t = min(max((progress - warm) / ramp, 0.0), 1.0)
            eps_t, kappa = t * eps, k0 + t * (k1 - k0)
            clean = ce(model((xb - mean) / std), yb)
            if eps_t == 0.0:
                return clean
            _, (h_lo, h_up) = interval_bounds(linears, mean, std, *_input_box(xb, eps_t))
            worst = -margin_lower_bounds(linears[-1], yb, h_lo, h_up)
            return kappa * clean + (1 - kappa) * ce(worst, yb)

        return step_loss

    meta = {
        "description": f"Digits MLP trained with interval bound propagation (IBP) at l_inf "
                       f"eps={eps:g} on [0, 1] pixels: certifiable by IBP/CROWN at that eps.",
        "training": "IBP certified training (Gowal et al. 2018): kappa*CE(clean) + "
                    "(1-kappa)*CE(IBP worst-case logits, last layer folded into the margins), "
                    "Adam lr 1e-3 (/10 at 75% and 90% of the epochs), batch 64",
        "eps": eps, "norm": "inf",
        "schedule": {**schedule, "eps_start": 0.0, "eps_end": eps,
                     "description": "eps 0 and kappa 1 for the warm-up epochs; then eps rises "
                                    "linearly 0 -> eps and kappa falls linearly kappa_start -> "
                                    "kappa_end, per step, over the ramp epochs; then constant"},
    }
    return _train_normalised_mlp("digits_mlp_ibp", out_dir, (64, 50, 50, 10), epochs, meta,
                                 loss_of, lr_drops=(0.75, 0.9))


RS_EPS = 0.05
RS_SETTINGS = {"rs_weight": 0.01, "l1_weight": 1e-4, "prune_below": 1e-3}
RS_EPOCHS = 100


def train_digits_mlp_plain(out_dir: pathlib.Path, epochs: int = RS_EPOCHS) -> dict:
    """The baseline for digits_mlp_rs: same architecture, epochs, optimiser and seed, plain
    cross-entropy only."""
    return _train_normalised_mlp(
        "digits_mlp_plain", out_dir, (64, 50, 50, 10), epochs,
        {"description": "Digits MLP trained plainly: the baseline of digits_mlp_rs (same "
                        "architecture, epochs, optimiser and seed).",
         "training": "standard (cross-entropy, Adam lr 1e-3, batch 64), no regulariser",
         "eps": RS_EPS, "norm": "inf",
         "regulariser": {"rs_weight": 0.0, "l1_weight": 0.0, "prune_below": 0.0}})


def train_digits_mlp_rs(out_dir: pathlib.Path, epochs: int = RS_EPOCHS, eps: float = RS_EPS,
                        settings: dict = RS_SETTINGS) -> dict:
    """Digits MLP trained for fast exact verification (Xiao et al., ICLR 2019): cross-entropy +
    rs_weight * RS loss + l1_weight * sum |W|, then magnitude pruning of weights below
    prune_below. RS loss: sum over hidden neurons of -tanh(1 + l * u), (l, u) the neuron's IBP
    pre-activation bounds over the l_inf ball of radius eps ∩ [0, 1], averaged over the batch;
    it pushes l * u > 0 (stable neurons)."""
    import torch
    from torch import nn

    ce = nn.CrossEntropyLoss()
    w_rs, w_l1 = settings["rs_weight"], settings["l1_weight"]

    def loss_of(model, mean, std):
        linears = [m for m in model if isinstance(m, nn.Linear)]

        def step_loss(xb, yb, progress):
            pre, _ = interval_bounds(linears, mean, std, *_input_box(xb, eps))
            rs = sum((-torch.tanh(1.0 + lo * up)).sum(1) for lo, up in pre).mean()
            l1 = sum(lin.weight.abs().sum() for lin in linears)
            return ce(model((xb - mean) / std), yb) + w_rs * rs + w_l1 * l1

        return step_loss

    meta = {
        "description": f"Digits MLP trained with the ReLU-stability (RS) regulariser and L1 "
                       f"weight sparsity at l_inf eps={eps:g}: few unstable ReLUs, fast MILP.",
        "training": "cross-entropy + RS loss + L1 weight penalty (Xiao et al., ICLR 2019), "
                    "magnitude pruning at the end; Adam lr 1e-3, batch 64",
        "eps": eps, "norm": "inf",
        "regulariser": {**settings,
                        "rs_loss": "sum over hidden neurons of -tanh(1 + l*u), (l, u) IBP "
                                   "pre-activation bounds at eps (in the normalised network), "
                                   "mean over the batch",
                        "l1": "sum of |W| over all weight matrices (biases excluded)"},
    }
    return _train_normalised_mlp("digits_mlp_rs", out_dir, (64, 50, 50, 10), epochs, meta,
                                 loss_of, prune_below=settings["prune_below"])


GENNORM_BETAS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
GENNORM_SIGMA = 0.25


def gennorm_model_name(beta: float) -> str:
    """digits_mlp_gnNNN, NNN = 100 beta (digits_mlp_gn050 ... digits_mlp_gn400)."""
    return f"digits_mlp_gn{round(beta * 100):03d}"


def train_digits_mlp_gennorm(out_dir: pathlib.Path, beta: float, sigma: float = GENNORM_SIGMA,
                             epochs: int = 150, hidden: int = 100, copies: int = 4,
                             batch: int = 128, lr_drops: Sequence[float] = (0.5, 0.75)) -> dict:
    """Base classifier for the noise-shape study (benchmarks/noise_shape_study.py): the digits MLP
    64-H-H-10 of the Gaussian noise models, trained with general-normal noise augmentation
    (density ∝ exp(-|x/a|^beta), per-pixel std sigma; verify.smoothing.GeneralNormal, the sampler
    that certifies it). `copies` copies of every training image per epoch, fresh noise for every
    minibatch from a seeded generator; in-graph (x - mean) / sqrt(std^2 + sigma^2) as for the
    Gaussian noise models; cross-entropy, Adam lr 1e-3 (/10 at lr_drops), the shared
    `_train_steps` loop and `_finish_digits` export. Writes digits_mlp_gnNNN.onnx / .json."""
    import torch
    from torch import nn

    from verify.smoothing import GeneralNormal

    _seed_everything()
    split = _load_digits_split()
    x_train, x_test, y_train, y_test = split
    name = gennorm_model_name(beta)
    noise = GeneralNormal(sigma, beta)
    mean = x_train.mean(axis=0).astype(np.float32)
    std = np.sqrt(x_train.std(axis=0) ** 2 + sigma ** 2).astype(np.float32)
    mean_t, std_t = torch.from_numpy(mean), torch.from_numpy(std)
    model = _relu_mlp((64, hidden, hidden, 10))
    xt = torch.tensor(x_train, dtype=torch.float32).repeat(copies, 1)
    yt = torch.tensor(y_train, dtype=torch.int64).repeat(copies)
    ce = nn.CrossEntropyLoss()
    noise_gen = torch.Generator().manual_seed(SEED + 1)

    def step_loss(xb, yb, progress):
        noisy = xb + noise.sample_(torch.empty_like(xb), noise_gen)
        return ce(model((noisy - mean_t) / std_t), yb)

    _train_steps(model, xt, yt, epochs, step_loss, batch=batch, lr_drops=lr_drops)
    model.eval()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    x_test_t = torch.tensor(x_test, dtype=torch.float32)
    with torch.no_grad():
        noisy = x_test_t.repeat(20, 1)
        noisy += noise.sample_(torch.empty_like(noisy), noise_gen)
        noisy_acc = float((model((noisy - mean_t) / std_t).argmax(1).numpy()
                           == np.tile(y_test, 20)).mean())

    torch_logits, export = _normalised_mlp_io(model, linears, mean, std, 64)

    meta = {
        "description": f"Digits base classifier for randomized smoothing, trained with "
                       f"general-normal noise beta={beta:g}, sigma={sigma:g} (certify it with "
                       f"the same noise: --noise gennorm:{beta:g} --sigma {sigma:g}).",
        "architecture": f"64-{hidden}-{hidden}-10 ReLU MLP",
        "normalisation": "per-pixel (x-mean)/sqrt(std^2+sigma^2) inside the ONNX graph",
        "data": DIGITS_DATA,
        "training": f"general-normal noise augmentation beta={beta:g}, sigma={sigma:g} ({copies} "
                    f"copies per image per epoch, fresh noise per minibatch), cross-entropy, "
                    f"Adam lr 1e-3 (/10 at {', '.join(f'{f:.0%}' for f in lr_drops)} of the "
                    f"epochs), batch {batch}",
        "noise": f"gennorm:{beta:g}",
        "beta": beta,
        "sigma": sigma,
        "noise_scale_a": noise.a,
        "epochs": epochs,
        "test_accuracy_under_noise": round(noisy_acc, 6),
    }
    return _finish_digits(name, out_dir, export, torch_logits, [64], split, meta)


SMOOTHING_SIGMAS = (0.12, 0.25, 0.5, 1.0)

TRAINERS: dict[str, Callable[[pathlib.Path], dict]] = {
    "digits_mlp": train_digits_mlp,
    "toy2d": train_toy2d,
    "digits_mlp_large": train_digits_mlp_large,
    "digits_cnn": train_digits_cnn,
    "digits_mlp_ibp": train_digits_mlp_ibp,
    "digits_mlp_plain": train_digits_mlp_plain,
    "digits_mlp_rs": train_digits_mlp_rs,
    **{f"digits_mlp_noise{round(s * 100):03d}":
       (lambda out, s=s: train_digits_mlp_noise(out, s)) for s in SMOOTHING_SIGMAS},
    **{gennorm_model_name(b): (lambda out, b=b: train_digits_mlp_gennorm(out, b))
       for b in GENNORM_BETAS},
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
