"""Network: an ordered list of layers (Dense, Conv2d, ReLU) in float64.

Every layer knows the per-sample shape it reads and writes (no batch dimension). Data are stored
row-major, so a reshape (ONNX Flatten, Reshape, Squeeze, Unsqueeze) never moves a number: it needs
no layer, each layer reads its input in the shape it wants. Two forward passes exist:

- `Network.forward`: numpy float64, the reference used to re-check every counterexample;
- `Network.torch_forward`: torch, batched, on any device, for speed.

Nothing else lives here: bounds and certifiers iterate over `Network.layers` themselves.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np
import torch

from .errors import InputError

Shape = tuple[int, ...]


def size_of(shape: Shape) -> int:
    return math.prod(int(n) for n in shape)  # (np.prod: ~20 us a call, on every forward)


@dataclass(eq=False)
class Dense:
    """y = W x + b on the flattened input; `out_shape` may be non-flat (e.g. a folded scaling)."""

    weight: np.ndarray  # (out_features, in_features)
    bias: np.ndarray  # (out_features,)
    in_shape: Shape
    out_shape: Shape

    def __post_init__(self) -> None:
        self.weight = np.array(self.weight, dtype=np.float64, order="C")
        self.bias = np.array(self.bias, dtype=np.float64).reshape(-1)
        assert self.weight.shape == (size_of(self.out_shape), size_of(self.in_shape))
        assert self.bias.shape == (self.weight.shape[0],)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) @ self.weight.T + self.bias

    def torch_forward(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        return x.reshape(len(x), -1) @ params["weight"].T + params["bias"]

    def dense_matrix(self) -> np.ndarray:
        return self.weight

    def bias_per_output(self, bias):
        """A bias-shaped vector (numpy or torch) with one entry per output: itself."""
        return bias

    def describe(self) -> str:
        return f"Dense {self.weight.shape[1]} -> {self.weight.shape[0]}"

    @property
    def n_params(self) -> int:
        return self.weight.size + self.bias.size


@dataclass(eq=False)
class Conv2d:
    """2-D cross-correlation (ONNX Conv, group 1) with explicit top/left/bottom/right zero padding."""

    weight: np.ndarray  # (C_out, C_in, kH, kW)
    bias: np.ndarray  # (C_out,)
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    in_shape: Shape  # (C_in, H, W)
    out_shape: Shape = field(init=False)

    def __post_init__(self) -> None:
        self.weight = np.array(self.weight, dtype=np.float64, order="C")
        self.bias = np.array(self.bias, dtype=np.float64).reshape(-1)
        c_out, c_in, kh, kw = self.weight.shape
        _, h, w = self.in_shape
        top, left, bottom, right = self.padding
        h_out = (h + top + bottom - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        w_out = (w + left + right - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        self.out_shape = (c_out, h_out, w_out)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.correlate(x) + self.bias[None, :, None, None]

    def correlate(self, x: np.ndarray) -> np.ndarray:
        """The convolution without bias: sum over kernel offsets of strided slices of the
        zero-padded input (float64)."""
        x = x.reshape(len(x), *self.in_shape)
        top, left, bottom, right = self.padding
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        _, h_out, w_out = self.out_shape
        (sh, sw), (dh, dw) = self.stride, self.dilation
        out = np.zeros((len(x), *self.out_shape))
        for i in range(self.weight.shape[2]):
            for j in range(self.weight.shape[3]):
                patch = x[:, :, i * dh : i * dh + sh * (h_out - 1) + 1 : sh,
                          j * dw : j * dw + sw * (w_out - 1) + 1 : sw]
                out += np.einsum("bchw,oc->bohw", patch, self.weight[:, :, i, j])
        return out

    def bias_per_output(self, bias):
        """A per-channel vector (numpy or torch, e.g. the bias or |bias|) repeated over each
        channel's H x W outputs, in the row-major order of dense_matrix()'s rows."""
        n = int(np.prod(self.out_shape[1:]))
        return bias.repeat_interleave(n) if isinstance(bias, torch.Tensor) else np.repeat(bias, n)

    def dense_matrix(self) -> np.ndarray:
        """The equivalent (out_size, in_size) matrix, built once from the identity basis."""
        if getattr(self, "_matrix", None) is None:
            n = size_of(self.in_shape)
            basis = np.eye(n).reshape(n, *self.in_shape)
            self._matrix = np.ascontiguousarray(self.correlate(basis).reshape(n, -1).T)
        return self._matrix

    def torch_forward(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        top, left, bottom, right = self.padding
        x = torch.nn.functional.pad(x.reshape(len(x), *self.in_shape), (left, right, top, bottom))
        return torch.nn.functional.conv2d(
            x, params["weight"], params["bias"], stride=self.stride, dilation=self.dilation
        )

    def describe(self) -> str:
        c_out, c_in, kh, kw = self.weight.shape
        return (f"Conv2d {c_in}->{c_out} k{kh}x{kw} s{self.stride[0]}x{self.stride[1]} "
                f"p{','.join(map(str, self.padding))}")

    @property
    def n_params(self) -> int:
        return self.weight.size + self.bias.size


@dataclass(eq=False)
class ReLU:
    """max(x, 0), elementwise."""

    in_shape: Shape

    @property
    def out_shape(self) -> Shape:
        return self.in_shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0.0)

    def torch_forward(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        return torch.clamp(x, min=0.0)

    def describe(self) -> str:
        return f"ReLU ({size_of(self.in_shape)} neurons)"

    n_params = 0


Layer = Union[Dense, Conv2d, ReLU]
AFFINE = (Dense, Conv2d)


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """"auto" (or None) means CUDA when present, else CPU; "cpu" and "cuda[:i]" are taken as
    asked, and refused (InputError) when this torch has no such device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise InputError(f"unknown device '{device}': use auto, cpu or cuda")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device '{device}' asked for, but this torch sees no CUDA device "
                             f"(torch {torch.__version__}): use auto or cpu")
        if resolved.index is not None and resolved.index >= count:
            raise InputError(f"device '{device}' asked for, but there are only {count} CUDA "
                             "device(s)")
    return resolved


class Network:
    """A feed-forward ReLU network: `layers` applied in order to an input of `input_shape`."""

    def __init__(self, layers: Sequence[Layer], input_shape: Shape, name: str = "network",
                 source_sha256: str | None = None):
        self.layers: list[Layer] = list(layers)
        self.input_shape: Shape = tuple(int(d) for d in input_shape)
        self.name = name
        self.source_sha256 = source_sha256
        self._torch_params: dict = {}
        shape = self.input_shape
        for k, layer in enumerate(self.layers):
            if size_of(layer.in_shape) != size_of(shape):
                raise ValueError(f"layer {k} ({layer.describe()}) reads {layer.in_shape}, "
                                 f"previous layer writes {shape}")
            shape = layer.out_shape
        self.output_shape: Shape = shape

    @property
    def input_size(self) -> int:
        return size_of(self.input_shape)

    @property
    def output_size(self) -> int:
        return size_of(self.output_shape)

    @property
    def n_relus(self) -> int:
        return sum(size_of(layer.in_shape) for layer in self.layers if isinstance(layer, ReLU))

    @property
    def n_params(self) -> int:
        return sum(layer.n_params for layer in self.layers)

    def fingerprint(self) -> str:
        """sha256 of the layer types, shapes and float64 parameters (first 16 hex digits)."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        digest = hashlib.sha256(repr(self.input_shape).encode())
        for layer in self.layers:
            digest.update(f"{type(layer).__name__}{layer.in_shape}{layer.out_shape}".encode())
            if isinstance(layer, Conv2d):
                digest.update(repr((layer.stride, layer.padding, layer.dilation)).encode())
            if isinstance(layer, AFFINE):
                digest.update(layer.weight.tobytes())
                digest.update(layer.bias.tobytes())
        return digest.hexdigest()[:16]

    def _as_batch(self, x) -> tuple[np.ndarray, bool]:
        """(batch, input_size) float64 from one flat sample, a flat batch, or an ONNX-shaped batch."""
        x = np.asarray(x, dtype=np.float64)
        n = self.input_size
        if x.ndim == 1 and x.size == n:
            return x.reshape(1, n), True
        if x.ndim >= 2 and x[0].size == n:
            return x.reshape(len(x), n), False
        raise InputError(f"input of shape {x.shape} does not fit the network input "
                         f"{self.input_shape} ({n} values per sample)")

    def forward(self, x) -> np.ndarray:
        """Logits in float64 numpy: (batch, output_size), or (output_size,) for one flat sample."""
        batch, single = self._as_batch(x)
        for layer in self.layers:
            batch = layer.forward(batch)
        out = batch.reshape(len(batch), -1)
        return out[0] if single else out

    def torch_params(self, device: torch.device, dtype: torch.dtype = torch.float64) -> list[dict]:
        """Per-layer torch copies of the parameters on `device`, cached."""
        key = (str(device), dtype)
        if key not in self._torch_params:
            self._torch_params[key] = [
                {"weight": torch.as_tensor(l.weight, dtype=dtype, device=device),
                 "bias": torch.as_tensor(l.bias, dtype=dtype, device=device)}
                if isinstance(l, AFFINE) else {}
                for l in self.layers
            ]
        return self._torch_params[key]

    def torch_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Batched logits (batch, output_size) in the dtype and on the device of `x`."""
        params = self.torch_params(x.device, x.dtype)
        x = x.reshape(len(x), -1)
        for layer, p in zip(self.layers, params):
            x = layer.torch_forward(x, p)
        return x.reshape(len(x), -1)

    def summary(self) -> str:
        rows = [f"{self.name}: input {self.input_shape} -> output {self.output_shape}, "
                f"{self.n_relus} ReLUs, {self.n_params} parameters"]
        for k, layer in enumerate(self.layers):
            rows.append(f"  {k:3d}  {layer.describe():40s} {layer.in_shape} -> {layer.out_shape}")
        return "\n".join(rows)

    def __repr__(self) -> str:
        return f"Network({self.name!r}, input={self.input_shape}, layers={len(self.layers)})"
