"""PGD attack: a falsifier that searches the input set for a point violating the property.

Accepts:   Network of Dense/Conv2d/ReLU layers; input set = l_inf/l_2/l_1 ball (∩ box) or a
           bounded box; any output property C f(x) - d (robustness margins z_y - z_j, VNN-LIB).
Returns:   Certificate; margin_lower = -inf (an attack proves nothing), margin_upper[j] = the
           lowest value of row j found (an upper bound on its minimum over the set). NO with the
           counterexample when a row reaches <= 0, else MAYBE.
Method:    projected gradient descent with random restarts, all trajectories of all specifications
           in one torch batch: `restarts` on the worst row (min over rows, the Carlini-Wagner
           margin loss for robustness) and `row_restarts` on each row alone, so that every row's
           upper bound is searched for. The first trajectory of each objective starts at the
           set's center, the others at points of the set's own sampler (uniform, a quarter at
           corners / vertices / sphere points). Steps follow the norm:
           l_inf (and box): sign of the gradient; l_2: normalised gradient; l_1: sparse steepest
           descent on the top-k coordinates that can still move inside the box (k shrinks to 1),
           then the exact Euclidean projection onto the l_1 ball (Duchi et al.) and a clip to the
           box, which stays in the ball because it moves every coordinate towards the center.
           Step sizes decay on a cosine schedule; the lowest value per row is kept at every step.
Soundness: every reported point is projected into the set, checked with `contains`, and replayed
           by the float64 numpy forward pass; `margin_upper` and any NO come from that replay
           (`verdict.certificate_from_bounds`), never from the torch (possibly float32) values.
Reference: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR
           2018; Croce & Hein, "Mind the Box: l_1-APGD for Sparse Adversarial Attacks on Image
           Classifiers", ICML 2021 (sparse l_1 steps, box-aware coordinates); Duchi et al.,
           "Efficient Projections onto the l_1-Ball for Learning in High Dimensions", ICML 2008.
"""

from __future__ import annotations

import dataclasses
import math
import time
import zlib
from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch

from . import deadline
from .options import check_choices
from .certificate import Certificate, Status
from .errors import InputError
from .network import Network, resolve_device
from .spec import LpBall, Specification, norm_of, radius_of
from .verdict import certificate_from_bounds, validated_counterexample


@dataclass
class AttackOptions:
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"dtype": ("auto", "float32", "float64")}
    device: str = "auto"
    restarts: int = 10  # trajectories on the worst row; the first starts at the center
    row_restarts: int = 1  # trajectories on each row separately (0: none); the first at the center
    steps: int = 50
    step_size: Optional[float] = None  # first step as a fraction of eps (box: of its half-width)
    seed: int = 0
    batch_size: int = 64  # specifications per torch batch
    dtype: str = "auto"  # "float64", "float32", or "auto": float32 on CUDA, float64 on CPU
    stop_early: bool = True  # stop a batch once every specification in it has a violation
    stop_at_first: bool = False  # stop a batch once any has one (a VNN-LIB query needs one)

    def check(self) -> None:
        _check(self)


# Default first step, as a fraction of eps. The cosine schedule halves the average step, so the
# path length of one trajectory is about step * steps / 2 (5 eps at the default 50 steps).
DEFAULT_STEP = 0.2
L1_SPARSITY = 0.05  # l_1 steps start on the top 5% of the coordinates and shrink to one


@dataclass
class AttackResult:
    """The best points of one specification, replayed in float64.

    `upper[i]`: the lowest float64 value of row i at any reported point (the set's center
    included), reached at `row_points[i]`; `best_x` = the row point of the lowest row, and
    `values` = all row values at `best_x`. `violated`: some row <= 0 (a confirmed violation).
    """

    best_x: np.ndarray
    values: np.ndarray
    upper: np.ndarray
    row_points: np.ndarray
    forward_passes: int
    steps_run: int
    time_s: float
    timed_out: bool = False  # the active deadline stopped the steps early

    @property
    def violated(self) -> bool:
        return bool(self.values.size and self.values.min() <= 0)


# ---------------------------------------------------------------------------------------------
# Projections (batched over rows; deltas are relative to the center)

def project_l1_ball(v: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean projection of each row of v onto {||x||_1 <= radius} (Duchi et al. 2008,
    Fig. 1: sort the magnitudes, find the threshold theta, soft-threshold)."""
    a = v.abs()
    mu = torch.sort(a, dim=1, descending=True).values
    cssv = mu.cumsum(dim=1) - radius[:, None]
    index = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    positive = (mu - cssv / index) > 0
    rho = (positive * index).amax(dim=1).clamp(min=1).long()  # last index where positive
    theta = cssv.gather(1, (rho - 1)[:, None]) / rho[:, None].to(v.dtype)
    projected = torch.sign(v) * (a - theta).clamp(min=0)
    inside = a.sum(dim=1) <= radius
    return torch.where(inside[:, None], v, projected)


def project_l2_ball(v: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of v onto {||x||_2 <= radius} (radial shrink)."""
    size = torch.linalg.vector_norm(v, dim=1)
    scale = torch.where(size > radius, radius / size.clamp(min=1e-300), torch.ones_like(size))
    return v * scale[:, None]


# ---------------------------------------------------------------------------------------------
# The batched attack

@dataclass
class _Batch:
    """Trajectories of B specifications x R restarts-and-objectives, flattened to T = B * R."""

    center: torch.Tensor  # (T, n)
    lower: torch.Tensor  # (T, n) bounding box of the set
    upper: torch.Tensor
    radius: torch.Tensor  # (T, n) per-coordinate step scale: eps, or the box half-width
    eps: torch.Tensor  # (T,)
    C: torch.Tensor  # (B, m, k)
    d: torch.Tensor  # (B, m)
    objective: torch.Tensor  # (T,) row index, or -1 for the worst row
    norm: str
    per_spec: int  # R


def _objectives(m: int, options: AttackOptions) -> tuple[np.ndarray, np.ndarray]:
    """Per trajectory of one specification: the row it descends (-1: the worst row) and whether
    it starts at the center (the first trajectory of every objective does)."""
    aims = [-1] * options.restarts
    if m > 1:
        aims += [row for row in range(m) for _ in range(options.row_restarts)]
    aims_array = np.array(aims, dtype=np.int64)
    first = np.ones(len(aims), dtype=bool)
    first[1:] = aims_array[1:] != aims_array[:-1]
    return aims_array, first


def _random_starts(spec: Specification, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` points of the set from its own sampler: uniform in the ball, with a quarter at
    extreme points (l_inf corners, l_1 vertices, l_2 sphere points), clipped into the box. In
    few dimensions the extreme points are where sampling alone beats PGD's local search."""
    return spec.input_set.sample(count, rng)


def _entropy(spec: Specification, seed: int) -> list[int]:
    """Seed material for one specification's starts: the user's seed and checksums of the set's
    center and the property, so that the same question gets the same starts wherever it is asked."""
    s = spec.input_set
    return [int(seed), zlib.crc32(s.center.tobytes()), zlib.crc32(s.bounding_box()[0].tobytes()),
            zlib.crc32(spec.output.C.tobytes() + spec.output.d.tobytes())]


def _build_batch(specs: Sequence[Specification], options: AttackOptions,
                 device: torch.device, dtype: torch.dtype) -> tuple[_Batch, torch.Tensor]:
    norm = norm_of(specs[0].input_set)
    m = specs[0].output.C.shape[0]
    objective, at_center = _objectives(m, options)
    per_spec = len(objective)
    centers, lowers, uppers, radii, epss, starts = [], [], [], [], [], []
    for spec in specs:
        s = spec.input_set
        lower, upper = s.bounding_box()
        if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
            raise InputError("the attack needs a bounded input set: give the box finite bounds")
        eps = radius_of(s)
        radius = np.full(lower.size, eps) if isinstance(s, LpBall) else (upper - lower) / 2
        rng = np.random.default_rng(_entropy(spec, options.seed))
        x0 = _random_starts(spec, per_spec, rng)
        x0[at_center] = s.center
        for store, value in ((centers, s.center), (lowers, lower), (uppers, upper),
                             (radii, radius)):
            store.append(np.broadcast_to(value, (per_spec, lower.size)))
        epss.append(np.full(per_spec, eps))
        starts.append(x0)

    def cat(arrays) -> torch.Tensor:
        return torch.as_tensor(np.concatenate(arrays), dtype=dtype, device=device)

    batch = _Batch(
        center=cat(centers), lower=cat(lowers), upper=cat(uppers), radius=cat(radii),
        eps=cat(epss),
        C=torch.as_tensor(np.stack([s.output.C for s in specs]), dtype=dtype, device=device),
        d=torch.as_tensor(np.stack([s.output.d for s in specs]), dtype=dtype, device=device),
        objective=torch.as_tensor(np.tile(objective, len(specs)), device=device),
        norm=norm, per_spec=per_spec,
    )
    start = torch.clamp(cat(starts), batch.lower, batch.upper)
    return batch, start


def _row_values(net: Network, batch: _Batch, x: torch.Tensor) -> torch.Tensor:
    """C f(x) - d for every trajectory: (T, m)."""
    logits = net.torch_forward(x).reshape(len(batch.C), batch.per_spec, -1)
    return (torch.einsum("bmk,brk->brm", batch.C, logits) - batch.d[:, None, :]).reshape(len(x), -1)


def _step(batch: _Batch, x: torch.Tensor, grad: torch.Tensor, size: float, k: int) -> torch.Tensor:
    """One descent step of relative length `size` in the norm's geometry, projected into the set."""
    if batch.norm in ("inf", "box"):
        x = x - size * batch.radius * torch.sign(grad)
    elif batch.norm == "2":
        unit = grad / torch.linalg.vector_norm(grad, dim=1, keepdim=True).clamp(min=1e-300)
        x = batch.center + project_l2_ball(x - size * batch.eps[:, None] * unit - batch.center,
                                           batch.eps)
    else:
        # Sparse steepest descent: the k largest |gradient| among coordinates that can still
        # move downhill inside the box; each gets an equal share of the l_1 step.
        down = -torch.sign(grad)
        movable = ((down > 0) & (x < batch.upper)) | ((down < 0) & (x > batch.lower))
        score = grad.abs() * movable
        top = torch.topk(score, min(k, x.shape[1]), dim=1)
        chosen = torch.zeros_like(x).scatter(1, top.indices, (top.values > 0).to(x.dtype))
        share = chosen / chosen.sum(dim=1, keepdim=True).clamp(min=1)
        x = x + size * batch.eps[:, None] * down * share
        x = batch.center + project_l1_ball(x - batch.center, batch.eps)
    return torch.clamp(x, batch.lower, batch.upper)


def _run_batch(net: Network, specs: Sequence[Specification],
               options: AttackOptions, device: torch.device, dtype: torch.dtype
               ) -> tuple[np.ndarray, int, int]:
    """PGD on one batch: (B, m, n) the torch-best point per row, forward passes, steps run.
    Past the active deadline it stops after the current step (the first, the start points, is
    always evaluated)."""
    timer = deadline.active()
    batch, x = _build_batch(specs, options, device, dtype)
    n_specs, m, per_spec = len(specs), batch.C.shape[1], batch.per_spec
    if m == 0:  # no rows: nothing to attack
        return np.zeros((n_specs, 0, x.shape[1])), 0, 0
    best = torch.full((n_specs, m), math.inf, dtype=dtype, device=device)
    best_points = x.reshape(n_specs, per_spec, -1)[:, :1].expand(n_specs, m, -1).clone()
    base = DEFAULT_STEP if options.step_size is None else options.step_size
    k0 = max(1, math.ceil(L1_SPARSITY * x.shape[1]))
    aim = batch.objective.clamp(min=0)[:, None]
    worst = batch.objective < 0
    steps_run = 0
    for t in range(options.steps + 1):
        x = x.detach().requires_grad_(t < options.steps)
        with torch.set_grad_enabled(t < options.steps):
            values = _row_values(net, batch, x)
        # Keep the lowest value of each row over all trajectories of a specification.
        per_traj = values.detach().reshape(n_specs, per_spec, m)
        low, arg = per_traj.min(dim=1)
        better = low < best
        best = torch.where(better, low, best)
        reached = x.detach().reshape(n_specs, per_spec, -1).gather(
            1, arg[:, :, None].expand(n_specs, m, x.shape[1]))
        best_points = torch.where(better[:, :, None], reached, best_points)
        if t == options.steps or timer.expired():
            break
        if t % 5 == 0 and (options.stop_early or options.stop_at_first):
            found = best.amin(dim=1) < 0
            if bool(found.any() if options.stop_at_first else found.all()):
                break
        loss = torch.where(worst, values.amin(dim=1), values.gather(1, aim)[:, 0])
        (grad,) = torch.autograd.grad(loss.sum(), x)
        schedule = 0.5 * (1 + math.cos(math.pi * t / options.steps))
        k = max(1, round(k0 * (1 - t / (0.5 * options.steps)))) if t < options.steps // 2 else 1
        x = _step(batch, x.detach(), grad, base * schedule, k)
        steps_run += 1
    return best_points.detach().cpu().to(torch.float64).numpy(), len(x) * (steps_run + 1), steps_run


def _replay(net: Network, spec: Specification, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project the center and each point into the set, keep those `contains` accepts, and replay
    them in float64: (per-row lowest value, the point reaching it)."""
    s = spec.input_set
    candidates = [s.project(p) for p in [s.center, *points]]
    candidates = np.stack([p for p in candidates if s.contains(p)])
    values = spec.output.values(net.forward(candidates))  # (points, m)
    index = np.argmin(values, axis=0)
    return values[index, np.arange(values.shape[1])], candidates[index]


def _dtype(options: AttackOptions, device: torch.device) -> torch.dtype:
    """The torch dtype of the search: options.dtype, where "auto" is float32 on CUDA."""
    check_choices(options, "attack")
    name = options.dtype if options.dtype != "auto" else \
        ("float32" if device.type == "cuda" else "float64")
    return getattr(torch, name)


def _check(options: AttackOptions) -> None:
    if options.restarts < 1 or options.row_restarts < 0 or options.steps < 0 or \
            options.batch_size < 1:
        raise InputError("attack options need restarts >= 1, row_restarts >= 0, steps >= 0 and "
                         "batch_size >= 1")
    if not 0 <= options.seed < 2 ** 63:
        raise InputError(f"seed must lie in [0, 2^63), got {options.seed}")
    if options.step_size is not None and not (isinstance(options.step_size, (int, float))
                                              and options.step_size > 0):
        raise InputError(f"step_size must be > 0 (a fraction of eps), got {options.step_size}")


def pgd_attack_many(net: Network, specs: Sequence[Specification],
                    options: Optional[AttackOptions] = None) -> list[AttackResult]:
    """PGD on every specification, batched by norm and row count; results replayed in float64.

    A specification draws its random starts from the seed and its own content (`_entropy`), so
    its result does not depend on the list or batch it came in (up to torch's float rounding)."""
    options = options or AttackOptions()
    _check(options)
    device = resolve_device(options.device)
    dtype = _dtype(options, device)
    out: list[Optional[AttackResult]] = [None] * len(specs)
    groups: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault((norm_of(spec.input_set), spec.output.C.shape), []).append(i)
    for indices in groups.values():
        for first in range(0, len(indices), options.batch_size):
            chunk = indices[first:first + options.batch_size]
            t0 = time.perf_counter()
            points, passes, steps_run = _run_batch(net, [specs[i] for i in chunk], options, device,
                                                   dtype)
            timed_out = deadline.active().expired() and steps_run < options.steps
            for row, i in enumerate(chunk):
                upper, row_points = _replay(net, specs[i], points[row])
                worst = int(np.argmin(upper)) if upper.size else 0
                best_x = row_points[worst] if upper.size else specs[i].input_set.center.copy()
                values = specs[i].output.values(net.forward(best_x))
                out[i] = AttackResult(best_x, values, upper, row_points, passes // len(chunk),
                                      steps_run, 0.0, timed_out)
            elapsed = (time.perf_counter() - t0) / len(chunk)
            for i in chunk:
                out[i].time_s = elapsed  # type: ignore[union-attr]
    return out  # type: ignore[return-value]


def pgd_attack(net: Network, spec: Specification,
               options: Optional[AttackOptions] = None) -> AttackResult:
    """PGD on one specification: best point, row values there, lowest value per row."""
    return pgd_attack_many(net, [spec], options)[0]


def attack_upper_bounds(net: Network, spec: Specification, options: Optional[AttackOptions] = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(upper, points): upper[i] = row i's float64 value at points[i], a point of the set; so
    upper[i] >= min over the set of row i. Runs every step (no early stop)."""
    options = dataclasses.replace(options or AttackOptions(), stop_early=False,
                                  stop_at_first=False)
    result = pgd_attack(net, spec, options)
    return result.upper, result.row_points


def find_counterexample(net: Network, spec: Specification,
                        options: Optional[AttackOptions] = None) -> Optional[np.ndarray]:
    """A point of the set where some row is <= 0 in the float64 forward pass, or None.

    For other certifiers: a cheap NO before expensive work."""
    result = pgd_attack(net, spec, options)
    if not result.violated:
        return None
    checked = validated_counterexample(net, spec, result.best_x)
    return None if checked is None else checked[0]


def certify(net: Network, specs: Sequence[Specification],
            options: AttackOptions) -> list[Certificate]:
    """NO with a replayed counterexample, or MAYBE; margin_upper = lowest value found per row."""
    options = options or AttackOptions()
    results = pgd_attack_many(net, specs, options)
    device = resolve_device(options.device)
    details = {"seed": options.seed, "restarts": options.restarts, "steps": options.steps,
               "step_size": options.step_size or DEFAULT_STEP, "row_restarts": options.row_restarts,
               "dtype": str(_dtype(options, device)).replace("torch.", "")}
    certificates = []
    for spec, result in zip(specs, results):
        rows = spec.output.C.shape[0]
        trajectories = options.restarts + (rows * options.row_restarts if rows > 1 else 0)
        cert = certificate_from_bounds(
            net, spec, "attack", np.full(rows, -np.inf), upper=result.upper,
            candidates=[result.best_x], time_s=result.time_s,
            cost={"forward_passes": result.forward_passes, "steps_run": result.steps_run,
                  "trajectories": trajectories, "device": str(device)},
            details=dict(details))
        if cert.status is not Status.NO:  # an attack never proves: MAYBE, even with no rows
            cert.status = Status.MAYBE
            cert.reason = (f"no counterexample found by PGD ({options.restarts} restarts x "
                           f"{options.steps} steps); an attack is not a proof")
            if result.timed_out:
                cert.reason = (f"timeout: PGD stopped at its deadline after {result.steps_run} "
                               f"of {options.steps} steps; no counterexample found")
        certificates.append(cert)
    return certificates
