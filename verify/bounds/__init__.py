"""Relaxed certifiers (IBP, CROWN, LP) and what they share.

Shared here:
- `InputBatch`: a batch of specifications as torch tensors (bounding box of each input set, ball
  center/radius/norm, margin matrix C and offset d);
- `rounding_slack`: the float64 rounding allowance that keeps computed bounds sound;
- `certify_with_bounds`: batches specifications, calls a margin-bound function, and turns its
  lower bounds (plus the margins at each set's center, an upper bound) into Certificates.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..certificate import Certificate
from ..network import Network, resolve_device
from ..spec import UNIT_ROUNDOFF, Specification, norm_of, radius_of
from ..verdict import certificates_from_bounds

# The smallest subnormal float64. A rounded product (or quotient) is off by at most
# u |exact| + UNDERFLOW / 2 (the second term: underflow); a sum that underflows is exact.
UNDERFLOW = 2.0 ** -1074


def float_constants(dtype: torch.dtype) -> tuple[float, float]:
    """(unit roundoff u, smallest subnormal) of a float dtype: (2^-53, 2^-1074) for float64,
    (2^-24, 2^-149) for float32. The bounds assume IEEE arithmetic with gradual underflow (no
    flush-to-zero), as torch's CPU kernels and cuBLAS give; TF32 is switched off where float32
    bounds run on CUDA (`crown.exact_float32`)."""
    if dtype == torch.float64:
        return UNIT_ROUNDOFF, UNDERFLOW
    info = torch.finfo(dtype)
    return info.eps / 2, info.smallest_normal * info.eps


def rounding_slack(magnitude: torch.Tensor, n_terms: int, scale=0.0) -> torch.Tensor:
    """Allowance for float rounding in a sum of `n_terms` products whose absolute values add up
    to `magnitude`: |fl(sum) - sum| <= gamma_n * magnitude + n_terms * UNDERFLOW, gamma_n ~ n u
    (Higham, Thm 3.1, with each product's underflow added); we take 2 (n + 4) for n to cover the
    mid/radius split and the bias addition as well. `scale`: when the sum's terms are themselves
    rounded products (coefficients fl(Lambda W)) later multiplied by values whose absolute values
    add up to `scale` (broadcastable to magnitude), their underflow is charged that much more.
    u and UNDERFLOW are those of magnitude's dtype (float_constants): float64 unless a caller
    computes in float32."""
    terms = 2.0 * (n_terms + 4)
    unit, tiny = float_constants(magnitude.dtype)
    return magnitude * (terms * unit) + (terms * tiny) * (1 + scale)


def outward_margin(C: torch.Tensor, d: torch.Tensor, value: torch.Tensor, slack: torch.Tensor,
                   down: bool = True) -> torch.Tensor:
    """value -/+ slack, where `value` = fl(c . y - d) for one end y of the box (B, m) and
    `slack` the rounding allowance of the sum; tighter on the rows with one coefficient, +1 or
    -1: there c . y is exact (the other products are +-0, and adding zeros rounds nothing), so
    only the subtraction of d is rounded, and one ulp outward covers it (the true value rounds
    to `value`, so it lies past the next float; a 0 is exact, as x - d = 0 in floats only when
    x = d; with d = 0 nothing is rounded at all). This lets a bound of exactly 0 prove
    y_k >= 0 (a Softmax or Relu output, say)."""
    nonzero = C != 0
    single = (nonzero.sum(-1) == 1) & ((C.abs() == 1) | ~nonzero).all(-1)
    step = torch.nextafter(value, torch.full_like(value, -math.inf if down else math.inf))
    exact = torch.where((value == 0) | (d == 0), value, step)
    return torch.where(single, exact, value - slack if down else value + slack)


def norm_underflow(norm: str, n_terms: int, dtype: torch.dtype = torch.float64) -> float:
    """How far below the true ||v||_q of `n_terms` entries a float one can come out by
    underflow alone (relative rounding aside), q the dual of the ball's `norm`: for q = 2 (an l_2
    ball) the squares of entries below ~1e-162 (float64) vanish, losing at most
    sqrt(n UNDERFLOW); for q = inf (an l_1 ball; a maximum) nothing."""
    return 2.0 * math.sqrt(n_terms * float_constants(dtype)[1]) if norm == "2" else 0.0


@dataclass
class InputBatch:
    """B specifications of one network, sharing one norm and one number of property rows."""

    lower: torch.Tensor  # (B, n) bounding box of each input set
    upper: torch.Tensor
    center: torch.Tensor  # (B, n) ball center (box midpoint for plain boxes)
    eps: torch.Tensor  # (B,) ball radius (unused for "box")
    norm: str  # "inf", "2", "1" or "box"
    C: torch.Tensor  # (B, m, k)
    d: torch.Tensor  # (B, m)

    @classmethod
    def from_specs(cls, specs: Sequence[Specification], device: torch.device) -> "InputBatch":
        """The specifications' tensors, stacked; the bounding boxes are computed for the whole
        batch at once, element for element as `bounding_box` does (the same floats)."""
        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(array, dtype=torch.float64, device=device)

        sets = [s.input_set for s in specs]
        norms = {norm_of(x) for x in sets}
        assert len(norms) == 1, "one norm per batch"
        norm = norms.pop()
        eps = np.array([radius_of(x) for x in sets], dtype=np.float64)
        set_lower = np.array([x.lower for x in sets], dtype=np.float64)  # (np.stack's rows,
        set_upper = np.array([x.upper for x in sets], dtype=np.float64)  # faster for many)
        if norm == "box":
            lower, upper = set_lower, set_upper
            center = (lower + upper) / 2
        else:  # LpBall.bounding_box: center ± eps rounded outwards, then ∩ [lower, upper]
            center = np.array([x.center for x in sets], dtype=np.float64)
            radius = eps[:, None]
            lower = np.maximum(np.nextafter(center - radius, -np.inf), set_lower)
            upper = np.minimum(np.nextafter(center + radius, np.inf), set_upper)
        return cls(lower=tensor(lower), upper=tensor(upper), center=tensor(center),
                   eps=tensor(eps), norm=norm,
                   C=tensor(np.array([s.output.C for s in specs], dtype=np.float64)),
                   d=tensor(np.array([s.output.d for s in specs], dtype=np.float64)))

    def __len__(self) -> int:
        return len(self.lower)

    def subset(self, rows: torch.Tensor) -> "InputBatch":
        """The specifications `rows` (an index tensor) of this batch."""
        return InputBatch(lower=self.lower[rows], upper=self.upper[rows], center=self.center[rows],
                          eps=self.eps[rows], norm=self.norm, C=self.C[rows], d=self.d[rows])


MarginBoundFn = Callable[[Network, InputBatch], tuple[torch.Tensor, dict]]


def _group_key(spec: Specification) -> tuple:
    return norm_of(spec.input_set), spec.output.C.shape


def certify_with_bounds(net: Network, specs: Sequence[Specification], method: str,
                        margin_lower_fn: MarginBoundFn, device="auto",
                        batch_size: int = 256) -> list[Certificate]:
    """Certificates from a sound margin lower-bound function, batched by norm and row count.

    `margin_lower_fn(net, batch)` returns ((B, m) lower bounds on C f(x) - d, cost dict).
    """
    device = resolve_device(device)
    out: list[Optional[Certificate]] = [None] * len(specs)
    groups: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(_group_key(spec), []).append(i)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            t0 = time.perf_counter()
            batch = InputBatch.from_specs([specs[i] for i in chunk], device)
            lower, cost = margin_lower_fn(net, batch)
            lower = lower.detach().cpu().numpy()
            elapsed = (time.perf_counter() - t0) / len(chunk)
            certs = certificates_from_bounds(
                net, [specs[i] for i in chunk], method, lower, time_s=elapsed,
                cost={**cost, "batch": len(chunk), "device": str(device)})
            for i, cert in zip(chunk, certs):
                out[i] = cert
    return out  # type: ignore[return-value]
