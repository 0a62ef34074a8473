"""LP / MILP encodings of graph nodes: each op's rows in one place, read by the program builder
(`verify.bounds.relu_encoding.build_program`), which owns the columns, the input set and HiGHS.

Every tensor is held as `Entries`: per flat entry a column of the program, or (column -1) a
constant. Given sound bounds [l, u] of every tensor (from `verify.bounds.graph.crown_bounds`):

- linear node y = L(x_1, ..., x_k) + b: its exact sparse matrix J_i per input is read off the
  forward by vector-Jacobian products on identity rows (exact: the entries are the node's own
  constants), then rows  y - sum_i J_i x_i = b  (constants folded into b). A row that merely
  copies one column (Reshape, Transpose, Slice, Concat, Pad, ...) gets no column or row: the
  output entry is that column. Where the matrix or the folded constant is a rounded product
  (pooling averages, repeated inputs, non-zero constant inputs) the equality becomes a range
  b +- gamma_n (|J| |x| + |b|), so the program still holds the real-arithmetic network.
- Relu: the `ReluEncoding` passed in (big-M with a binary per unstable entry, or the triangle);
  stable entries are linear (0 or the input itself).
- MaxPool (any spatial rank), per output with candidates x_i in [l_i, u_i] (those with
  u_i < L = max_i l_i can never be the maximum and are dropped; one left: y is that candidate):
      y >= x_i,  y <= x_i + M_i (1 - z_i),  sum_i z_i = 1,  y <= sum_i u_i z_i,
      M_i = U - l_i rounded up, U = max_i u_i,  z_i in {0, 1} (MILP) or [0, 1] (LP).
  Exact in the MILP; its LP relaxation otherwise.
- Sigmoid, Tanh, Softplus, Exp: the outer linear relaxation a_l x + b_l <= y <= a_u x + b_u of
  `ops.relax` (chord / tangent, widened for rounding) within y's interval, plus the tangents at
  l and u where f is convex or concave on [l, u] (`tangent_lines`): never exact, so the MILP on
  such a graph is a relaxation (`GraphColumns.relaxed` names the ops).
- Softmax, Product and Quotient: interval only (y's column box), also a relaxation.
"""

from __future__ import annotations

import re
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import scipy.sparse as sp
import torch
import torch.autograd.forward_ad as forward_ad

from ..spec import UNIT_ROUNDOFF
from . import ops
from .ir import size_of

NumpyBounds = tuple[np.ndarray, np.ndarray]
SMALL_COEFFICIENT = 1e-9  # HiGHS drops matrix entries at or below this (relu_encoding's)
SAFE_COEFFICIENT = 2 * SMALL_COEFFICIENT  # what a tiny coefficient that may grow becomes
LARGE_SLOPE = 1e9  # relaxation lines steeper than this are left out (the column box holds)
CHUNK_ENTRIES = 1 << 22  # dense Jacobian entries per automatic-differentiation pass
# Ops whose matrix entries are products of constants (rounded), not copies of them.
ROUNDED_MATRIX = ("AveragePool", "GlobalAveragePool", "Reduce")


def _gamma(n_terms) -> Any:
    return 2.0 * (np.asarray(n_terms) + 4) * UNIT_ROUNDOFF


@dataclass
class Entries:
    """A tensor's flat entries: column index, or -1 where the entry is the constant `const`."""

    cols: np.ndarray
    const: np.ndarray


@dataclass
class GraphColumns:
    """How a graph sits in a program: enough to rebuild every column's value from a forward pass."""

    tensors: dict[str, Entries]
    relu_binaries: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    # (pre-activation tensor, its flat entries, their binary columns)
    pool_binaries: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    # (MaxPool input tensor, candidates (n, K) as flat input entries (-1: none), binaries (n, K))
    relaxed: list[str] = field(default_factory=list)  # "op (node)" encoded by a relaxation
    unstable_relus: int = 0
    split_pools: int = 0  # MaxPool outputs with two candidates or more


def tag_of(k: int, node) -> str:
    """A name part for node k that LP / MPS files accept."""
    return f"{k}_{re.sub(r'[^A-Za-z0-9_]', '_', node.output)[:24]}"


# Ops where each output entry reads at most one entry of each input (copies, scalings, sums).
SINGLE_SOURCE = ("Affine", "Sum", "Reshape", "Transpose", "Select", "Concat", "Pad", "Expand",
                 "Cast")


def input_colors(node, shape) -> Optional[np.ndarray]:
    """A color per flat entry of an input such that no output entry reads two entries of one
    color (None: not known, read J densely). One color for SINGLE_SOURCE ops; for Conv and
    AveragePool, entries closer than the kernel's extent on every spatial axis differ in
    color: coordinate mod extent per spatial axis (and, for Conv, which mixes channels, the
    leading index)."""
    n = size_of(shape)
    if node.op in SINGLE_SOURCE:
        return np.zeros(n, dtype=np.int64)
    if node.op == "Conv":
        kernel = node.params["weight"].shape[2:]
        extent = [d * (k - 1) + 1 for k, d in zip(kernel, node.params["dilations"])]
    elif node.op == "AveragePool":  # (channel by channel: the leading axes need no colors)
        extent = list(node.params["kernel"])
    else:
        return None
    k = len(extent)
    coords = np.indices(shape).reshape(len(shape), -1)
    lead = np.ravel_multi_index(coords[:-k], shape[:-k]) \
        if len(shape) > k and node.op == "Conv" else np.zeros(n, np.int64)
    spatial = np.ravel_multi_index(tuple(c % e for c, e in zip(coords[-k:], extent)), extent)
    return lead * int(np.prod(extent)) + spatial


def _tangents_out(call, zeros, shapes, i: int, tangent: torch.Tensor, unbiased: bool
                  ) -> np.ndarray:
    """Derivative at 0 of the node along `tangent` (r, n_i) on input i: (r, m). A node without
    constant term (`unbiased`) is its own derivative: the plain forward, else forward-mode AD."""
    r = len(tangent)
    tangents = zeros(r)
    tangents[i] = tangent.reshape(r, *shapes[i])
    if unbiased:
        with torch.no_grad():
            return call(*tangents).reshape(r, -1).numpy()
    with forward_ad.dual_level(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (torch's first use)
        duals = [forward_ad.make_dual(x, t) for x, t in zip(zeros(r), tangents)]
        out = forward_ad.unpack_dual(call(*duals)).tangent
    return out.reshape(r, -1).numpy()


def _colored_matrix(call, zeros, shapes, i: int, colors: np.ndarray, m: int, unbiased: bool
                    ) -> Optional[sp.csr_matrix]:
    """J_i from two derivatives per color: along the color's indicator (each output gets the
    one coefficient it reads, exactly) and along indicator * (index + 1) (the ratio names the
    entry). None if a ratio is not such an index (the coloring did not hold)."""
    n = len(colors)
    count = int(colors.max()) + 1 if n else 0
    chunk = max(1, CHUNK_ENTRIES // (2 * max(m, n, 1)))
    rows, cols, vals = [], [], []
    for start in range(0, count, chunk):
        members = np.arange(start, min(count, start + chunk))[:, None] == colors[None, :]
        one = torch.as_tensor(members, dtype=torch.float64)
        out = _tangents_out(call, zeros, shapes, i,
                            torch.cat([one, one * torch.arange(1, n + 1, dtype=torch.float64)]),
                            unbiased)
        coef, scaled = out[:len(one)], out[len(one):]
        color, where = np.nonzero(coef)
        ratio = scaled[color, where] / coef[color, where]
        entry = np.rint(ratio).astype(np.int64) - 1
        if np.any((entry < 0) | (entry >= n)) or \
                np.any(np.abs(ratio - (entry + 1)) > 1e-6 * (entry + 1)) or \
                np.any(colors[np.clip(entry, 0, max(n - 1, 0))] != start + color):
            return None
        rows.append(where)
        cols.append(entry)
        vals.append(coef[color, where])
    if not rows:
        return sp.csr_matrix((m, n))
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(m, n))


def linear_matrices(node, params: dict, shapes: list) -> tuple[list[sp.csr_matrix], np.ndarray]:
    """The linear node as y = sum_i J_i x_i + b over flat tensors: (J_i as sparse (m, n_i), b).
    J is read off the forward by automatic differentiation at 0, exact for a linear map: two
    forward-mode passes per color of `input_colors` where the op has one (copies, sums,
    convolutions, pooling; checked against the forward at a random point), else forward mode
    on identity inputs (columns of J) when the inputs are fewer than the outputs, or reverse
    mode on identity rows; in chunks of about CHUNK_ENTRIES dense entries."""
    forward = ops.LINEAR[node.op][0]
    sizes = [size_of(s) for s in shapes]
    zeros = lambda r: [torch.zeros((r, *s), dtype=torch.float64) for s in shapes]
    with torch.no_grad():
        bias = forward(node, zeros(1), params).reshape(-1).numpy().copy()
    m = len(bias)
    call = lambda *xs: forward(node, list(xs), params)
    unbiased = not bias.any()
    colors = [input_colors(node, s) for s in shapes]
    if all(c is not None for c in colors):
        found = [_colored_matrix(call, zeros, shapes, i, c, m, unbiased)
                 for i, c in enumerate(colors)]
        if all(J is not None for J in found):
            x = [np.random.default_rng(0).normal(size=n) for n in sizes]
            with torch.no_grad():
                want = forward(node, [torch.as_tensor(v).reshape(1, *s) for v, s in zip(x, shapes)],
                               params).reshape(-1).numpy()
            got = bias + sum(J @ v for J, v in zip(found, x))
            scale = np.abs(bias) + sum(abs(J) @ np.abs(v) for J, v in zip(found, x))
            if np.all(np.abs(got - want) <= 1e-9 * (scale + 1e-300)):
                return found, bias
    parts: list[list] = [[] for _ in shapes]
    if sum(sizes) <= m:  # columns of J: jvp with unit inputs
        for i, n in enumerate(sizes):
            chunk = max(1, CHUNK_ENTRIES // max(m, 1))
            for start in range(0, n, chunk):
                r = min(chunk, n - start)
                unit = torch.zeros((r, n), dtype=torch.float64)
                unit[torch.arange(r), torch.arange(start, start + r)] = 1.0
                parts[i].append(sp.csr_matrix(_tangents_out(call, zeros, shapes, i, unit,
                                                             unbiased)).T)
        return [sp.hstack(p, format="csr") for p in parts], bias
    chunk = max(1, CHUNK_ENTRIES // max(sum(sizes), 1))  # rows of J: vjp with unit outputs
    for start in range(0, m, chunk):
        r = min(chunk, m - start)
        unit = torch.zeros((r, m), dtype=torch.float64)
        unit[torch.arange(r), torch.arange(start, start + r)] = 1.0
        with torch.enable_grad():
            xs = [x.requires_grad_() for x in zeros(r)]
            y = call(*xs).reshape(r, m)
            grads = torch.autograd.grad(y, xs, grad_outputs=unit, allow_unused=True)
        for i, g in enumerate(grads):
            parts[i].append(sp.csr_matrix((r, sizes[i])) if g is None
                            else sp.csr_matrix(g.reshape(r, sizes[i]).numpy()))
    return [sp.vstack(p, format="csr") for p in parts], bias


def copied(node, J: sp.csr_matrix) -> bool:
    """Whether every entry of J is +-1 or one of the node's float constants (not a rounded
    product of them), which makes the rows y - J x = b exact."""
    allowed = [np.array([1.0, -1.0])] + [v.ravel() for v in node.params.values()
                                         if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
    return bool(np.isin(J.data, np.concatenate(allowed)).all())


_MATRICES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # net -> {node: (J, b)}


class GraphEncoder:
    """Walks the graph in order, adding columns and rows to `builder` (relu_encoding's)."""

    def __init__(self, net, builder, bounds: dict[str, NumpyBounds], relu_encoding):
        self.net, self.b, self.bounds, self.relu = net, builder, bounds, relu_encoding
        self.params = net.torch_params(torch.device("cpu"), torch.float64)
        self.columns = GraphColumns(tensors={})
        self.box: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (cols, lo, up) to meet

    def run(self, input_cols: np.ndarray) -> GraphColumns:
        graph, start = self.net.graph, 0
        for name in graph.inputs:
            n = size_of(graph.shapes[name])
            self._set(name, input_cols[start:start + n], np.zeros(n))
            start += n
        for k, node in enumerate(graph.nodes):
            if node.op in ops.LINEAR:
                self._linear(k, node)
            elif node.op == "Relu":
                self._relu(k, node)
            elif node.op == "MaxPool":  # any spatial rank (ops.max_pool_windows)
                self._max_pool(k, node)
            elif node.op in ops.ELEMENTWISE:
                self._smooth(k, node)
            else:  # Softmax, Product, Quotient: the output's interval
                self._interval(k, node, f"{node.op} ({node.name}, interval only)")
        return self.columns

    # -- helpers ---------------------------------------------------------------------------------
    def _set(self, name: str, cols: np.ndarray, const: np.ndarray) -> None:
        self.columns.tensors[name] = Entries(np.asarray(cols, dtype=np.int64),
                                             np.asarray(const, dtype=np.float64))
        live = cols >= 0
        if name in self.bounds and live.any():  # every column also within this tensor's bounds
            lo, up = self.bounds[name]
            self.box.append((cols[live], lo[live], up[live]))

    def _new_cols(self, name: str, k: int, node, entries: np.ndarray, prefix: str) -> np.ndarray:
        lo, up = self.bounds[name]
        tag = tag_of(k, node)
        return self.b.add_cols(lo[entries], up[entries], [f"{prefix}_{tag}_{i}" for i in entries])

    # -- linear ----------------------------------------------------------------------------------
    def _linear(self, k: int, node) -> None:
        cache = _MATRICES.setdefault(self.net, {})  # (the same for every program of this net)
        if k not in cache:
            shapes = [self.net.graph.shapes[i] for i in node.inputs]
            cache[k] = linear_matrices(node, self.params[k], shapes)
        matrices, bias = cache[k]
        m = len(bias)
        const = bias.copy()
        magnitude = np.abs(bias)
        exact = node.op not in ROUNDED_MATRIX and all(copied(node, J) for J in matrices)
        rows, cols, vals = [], [], []
        for name, J in zip(node.inputs, matrices):
            ent = self.columns.tensors[name]
            live = ent.cols >= 0
            J_const = J[:, ~live]
            if J_const.nnz and np.any(ent.const[~live] != 0):
                c = ent.const[~live]
                const = const + J_const @ c
                magnitude = magnitude + abs(J_const) @ np.abs(c)
                exact = False
            lo, up = self.bounds[name]
            magnitude = magnitude + abs(J[:, live]) @ np.maximum(np.abs(lo[live]), np.abs(up[live]))
            coo = J[:, live].tocoo()
            rows.append(coo.row)
            cols.append(ent.cols[live][coo.col])
            vals.append(coo.data)
        coo = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                            shape=(m, self.b.n_cols))
        merged = coo.tocsr()
        merged.sum_duplicates()
        if merged.nnz != coo.nnz:  # one column reached through two inputs: summed coefficients
            exact = False
        merged.eliminate_zeros()
        nnz = np.diff(merged.indptr)
        allowance = np.zeros(m) if exact else _gamma(nnz + len(node.inputs) + 2) * magnitude
        # Rows that copy one column (coefficient 1, no constant): the output entry is that column.
        first = np.full(m, -1, dtype=np.int64)
        one = np.zeros(m, dtype=bool)
        if merged.nnz:
            at = np.minimum(merged.indptr[:-1], merged.nnz - 1)
            first, one = merged.indices[at], (nnz == 1) & (merged.data[at] == 1.0)
        copy = one & (const == 0) & (allowance == 0)
        fixed = (nnz == 0) & (allowance == 0)
        out_cols = np.full(m, -1, dtype=np.int64)
        out_cols[copy] = first[copy]
        new = np.flatnonzero(~copy & ~fixed)
        if len(new):
            y = self._new_cols(node.output, k, node, new, "y")
            out_cols[new] = y
            sub = merged[new].tocoo()
            local = np.arange(len(new))
            tag = tag_of(k, node)
            self.b.add_rows([f"lin_{tag}_{i}" for i in new],
                            np.concatenate([local, sub.row]), np.concatenate([y, sub.col]),
                            np.concatenate([np.ones(len(new)), -sub.data]),
                            const[new] - allowance[new], const[new] + allowance[new])
        self._set(node.output, out_cols, np.where(fixed, const, 0.0))

    # -- Relu ------------------------------------------------------------------------------------
    def _relu(self, k: int, node) -> None:
        ent = self.columns.tensors[node.inputs[0]]
        lo, up = self.bounds[node.inputs[0]]
        live = ent.cols >= 0
        out = np.full(len(ent.cols), -1, dtype=np.int64)
        dead = ~live | (up <= 0)
        active = live & (lo >= 0) & ~dead
        unstable = np.flatnonzero(live & ~dead & ~active)
        out[active] = ent.cols[active]
        z, a = self.relu.encode(self.b, ent.cols[unstable], lo[unstable], up[unstable],
                                tag_of(k, node), unstable)
        out[unstable] = z
        if len(a) and (a >= 0).any():
            self.columns.relu_binaries.append((node.inputs[0], unstable[a >= 0], a[a >= 0]))
        self.columns.unstable_relus += len(unstable)
        self._set(node.output, out, np.where(live, 0.0, np.maximum(ent.const, 0.0)))

    # -- MaxPool ---------------------------------------------------------------------------------
    def _max_pool(self, k: int, node) -> None:
        graph = self.net.graph
        name = node.inputs[0]
        ent = self.columns.tensors[name]
        lo, up = self.bounds[name]
        n_in = size_of(graph.shapes[name])
        index = torch.arange(n_in, dtype=torch.float64).reshape(1, *graph.shapes[name])
        with torch.no_grad():
            windows = ops.max_pool_windows(node, index, self.params[k], -1.0)
        cand = windows.reshape(windows.shape[1], -1).T.numpy().astype(np.int64)  # (n_out, K)
        valid = cand >= 0
        safe = np.where(valid, cand, 0)
        live = ent.cols >= 0
        c_lo = np.where(valid, np.where(live[safe], lo[safe], ent.const[safe]), -np.inf)
        c_up = np.where(valid, np.where(live[safe], up[safe], ent.const[safe]), -np.inf)
        L, U = c_lo.max(1), c_up.max(1)
        keep = valid & (c_up >= L[:, None])  # the others never reach the maximum
        n_out = len(cand)
        out_cols = np.full(n_out, -1, dtype=np.int64)
        out_const = np.zeros(n_out)
        single = (keep.sum(1) == 1) & (U > L)
        pick = safe[np.arange(n_out), keep.argmax(1)]
        out_cols[single] = ent.cols[pick[single]]
        out_const[single] = np.where(live[pick[single]], 0.0, ent.const[pick[single]])
        fixed = U <= L  # max_i x_i >= x_j >= l_j = L and <= U: the constant L
        out_const[fixed] = L[fixed]
        split = np.flatnonzero(~single & ~fixed)
        self.columns.split_pools += len(split)
        if len(split):
            tag = tag_of(k, node)
            y = self._new_cols(node.output, k, node, split, "y")
            out_cols[split] = y
            kept = keep[split]
            o_idx, c_idx = np.nonzero(kept)  # pairs (output among split, candidate slot)
            z_cols = np.full(kept.shape, -1, dtype=np.int64)
            z = self.b.add_cols(0.0, 1.0, [f"p_{tag}_{split[o]}_{j}" for o, j in zip(o_idx, c_idx)],
                                integer=self.relu.integer)
            z_cols[o_idx, c_idx] = z
            self.columns.pool_binaries.append((name, np.where(kept, cand[split], -1), z_cols))
            src = safe[split][o_idx, c_idx]
            src_live = live[src]
            yo = y[o_idx]
            l_i, u_i = c_lo[split][o_idx, c_idx], c_up[split][o_idx, c_idx]
            big = np.maximum(np.nextafter(U[split][o_idx] - l_i, np.inf), SAFE_COEFFICIENT)
            names = [f"{split[o]}_{j}" for o, j in zip(o_idx, c_idx)]
            # y >= x_i (a constant candidate: already the column's lower bound, L >= c)
            v = np.flatnonzero(src_live)
            self.b.add_pairs([f"pool_ge_{tag}_{names[i]}" for i in v], yo[v], 1.0,
                             ent.cols[src[v]], -1.0, 0.0, np.inf)
            # y - x_i + M_i z_i <= M_i ;  constant x_i = c: y + M_i z_i <= M_i + c (rounded up)
            n = len(o_idx)
            local = np.arange(n)
            lv = local[v]
            self.b.add_rows([f"pool_le_{tag}_{s}" for s in names],
                            np.concatenate([local, local, lv]),
                            np.concatenate([yo, z, ent.cols[src[v]]]),
                            np.concatenate([np.ones(n), big, -np.ones(len(v))]), -np.inf,
                            np.where(src_live, big, np.nextafter(big + ent.const[src], np.inf)))
            # sum_i z_i = 1 and y - sum_i u_i z_i <= 0 (u_i moved up off HiGHS's dropped range)
            m = len(split)
            self.b.add_rows([f"pool_one_{tag}_{o}" for o in split], o_idx, z, np.ones(n), 1.0, 1.0)
            coef = np.where(np.abs(u_i) <= SMALL_COEFFICIENT,
                            np.where(u_i > 0, SAFE_COEFFICIENT, 0.0), u_i)
            nz = np.flatnonzero(coef != 0)
            self.b.add_rows([f"pool_up_{tag}_{o}" for o in split],
                            np.concatenate([np.arange(m), o_idx[nz]]), np.concatenate([y, z[nz]]),
                            np.concatenate([np.ones(m), -coef[nz]]), -np.inf, 0.0)
        self._set(node.output, out_cols, out_const)

    # -- smooth and interval-only ops ------------------------------------------------------------
    def _interval(self, k: int, node, why: str) -> np.ndarray:
        n = size_of(self.net.graph.shapes[node.output])
        y = self._new_cols(node.output, k, node, np.arange(n), "y")
        self._set(node.output, y, np.zeros(n))
        if why not in self.columns.relaxed:
            self.columns.relaxed.append(why)
        return y

    def _smooth(self, k: int, node) -> None:
        """The lines of `ops.relax` and of `tangent_lines` on the live entries; a slope at or
        below HiGHS's smallest coefficient becomes the line's constant bound over [l, u]."""
        y = self._interval(k, node, f"{node.op} ({node.name}, linear relaxation)")
        ent = self.columns.tensors[node.inputs[0]]
        lo, up = self.bounds[node.inputs[0]]
        v = np.flatnonzero(ent.cols >= 0)
        if not len(v):
            return
        t = lambda a: torch.as_tensor(a, dtype=torch.float64)
        a_l, b_l, a_u, b_u = (r.numpy() for r in ops.relax(node.op, t(lo[v]), t(up[v])))
        everywhere = np.ones(len(v), dtype=bool)
        lines = [(a_l, b_l, 1.0, everywhere, "lo"), (a_u, b_u, -1.0, everywhere, "up")]
        lines += tangent_lines(node.op, lo[v], up[v])
        tag = tag_of(k, node)
        for n, (slope, intercept, sign, valid, side) in enumerate(lines):
            # sign * (y - a x) >= sign * b
            steep = valid & (np.abs(slope) > SMALL_COEFFICIENT) & (np.abs(slope) <= LARGE_SLOPE)
            w = v[steep]
            self.b.add_pairs([f"{node.op.lower()}_{side}{n}_{tag}_{i}" for i in w], y[w], 1.0,
                             ent.cols[w], -slope[steep],
                             intercept[steep] if sign > 0 else -np.inf,
                             np.inf if sign > 0 else intercept[steep])
            flat = valid & (np.abs(slope) <= SMALL_COEFFICIENT)  # (steeper than LARGE: none)
            if flat.any():  # constant bound b + min / max of a x over [l, u], rounded outwards
                ends = np.stack([slope[flat] * lo[v][flat], slope[flat] * up[v][flat]])
                value = intercept[flat] + (ends.min(0) if sign > 0 else ends.max(0))
                value = value - sign * (_gamma(2) * (np.abs(intercept[flat]) + np.abs(ends).max(0))
                                        + 1e-300)
                self.box.append((y[v[flat]], value if sign > 0 else np.full(flat.sum(), -np.inf),
                                 np.full(flat.sum(), np.inf) if sign > 0 else value))


def tangent_lines(op: str, lower: np.ndarray, upper: np.ndarray) -> list:
    """Tangents of f at both ends of [l, u], where f is convex (below) or concave (above) on
    the whole interval: f(x) >= f(p) + f'(p)(x - p) (convex; "s" ops for u <= 0), <= for concave
    ("s" ops for l >= 0). The slope's and f(p)'s rounding is allowed for as in `ops.relax`
    (`ops.function_error` of the values and of the slope times the interval's span). Returns
    (slope, intercept, +1 below / -1 above, entries where valid, name) per line."""
    f, df, shape = ops.ELEMENTWISE[op]
    lines = []
    span = torch.as_tensor(np.abs(lower) + np.abs(upper), dtype=torch.float64)
    sides = [(1.0, np.ones(len(lower), dtype=bool))] if shape == "convex" else \
        [(1.0, upper <= 0), (-1.0, lower >= 0)]
    for point in (lower, upper):
        p = torch.as_tensor(point, dtype=torch.float64)
        fp, a = f(p), df(p)
        b = fp - a * p
        error = ops.function_error(fp, b, a * (span + p.abs()))
        for sign, where in sides:
            if where.any():
                line_b = (b - sign * error).numpy()
                ok = where & np.isfinite(a.numpy()) & np.isfinite(line_b)
                lines.append((a.numpy(), line_b, sign, ok, "t"))
    return lines


def encode(net, builder, input_cols: np.ndarray, bounds: dict[str, NumpyBounds],
           relu_encoding) -> tuple[GraphColumns, np.ndarray, np.ndarray, np.ndarray]:
    """Encode every node of the GraphNetwork `net` into `builder` (columns and rows), the inputs
    being `input_cols`; then intersect every column's box with the bounds of each tensor that
    uses it. Returns (the GraphColumns, output columns, G, g): output = G @ v[cols] + g."""
    encoder = GraphEncoder(net, builder, bounds, relu_encoding)
    columns = encoder.run(input_cols)
    col_lower, col_upper = np.concatenate(builder.col_lower), np.concatenate(builder.col_upper)
    for cols, lo, up in encoder.box:
        new_lo, new_up = np.maximum(col_lower[cols], lo), np.minimum(col_upper[cols], up)
        ok = new_lo <= new_up  # (sound bounds of one value always meet; kept if not)
        col_lower[cols[ok]], col_upper[cols[ok]] = new_lo[ok], new_up[ok]
    builder.col_lower, builder.col_upper = [col_lower], [col_upper]
    outs = [columns.tensors[o] for o in net.graph.outputs]
    cols = np.concatenate([e.cols for e in outs])
    const = np.concatenate([np.where(e.cols >= 0, 0.0, e.const) for e in outs])
    live = np.flatnonzero(cols >= 0)
    G = np.zeros((len(cols), len(live)))
    G[live, np.arange(len(live))] = 1.0
    return columns, cols[live], G, const


def assignment(net, columns: GraphColumns, values: np.ndarray, x: np.ndarray) -> None:
    """Fill `values` (one per column) from a float64 forward pass at x: each tensor's columns,
    relu binaries 1[pre >= 0], MaxPool binaries on the first largest candidate."""
    with torch.no_grad():
        tensors = net.run(net.split_input(torch.as_tensor(x, dtype=torch.float64).reshape(1, -1)))
    flat = {name: t.reshape(-1).numpy() for name, t in tensors.items()}
    for name, ent in columns.tensors.items():
        live = ent.cols >= 0
        values[ent.cols[live]] = flat[name][live]
    for name, entries, a in columns.relu_binaries:
        values[a] = (flat[name][entries] >= 0).astype(np.float64)
    for name, cand, z in columns.pool_binaries:
        cand_values = np.where(cand >= 0, flat[name][np.maximum(cand, 0)], -np.inf)
        best = cand_values.argmax(1)
        has = z >= 0
        values[z[has]] = 0.0
        values[z[np.arange(len(z)), best]] = 1.0


EXACT_OPS = ("Relu", "MaxPool")  # with the linear ones: encoded exactly in the MILP


def relaxed_ops(net) -> list[str]:
    """The op types of a network whose MILP encoding is a relaxation (none for a chain)."""
    if not getattr(net, "is_graph", False):
        return []
    return sorted({node.op for node in net.graph.nodes
                   if node.op not in ops.LINEAR and node.op not in EXACT_OPS})


def relaxed_reason(columns: Optional[GraphColumns]) -> str:
    """'' when the program is exact, else which ops it relaxes."""
    if columns is None or not columns.relaxed:
        return ""
    return ("the program relaxes " + "; ".join(columns.relaxed[:3])
            + (f" and {len(columns.relaxed) - 3} more" if len(columns.relaxed) > 3 else "")
            + ": its minimum is a lower bound, not the exact one")
