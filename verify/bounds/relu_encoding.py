"""One constraint builder for the LP and the MILP: the ReLU encoding is a parameter.

    build_program(net, input_set, bounds, TRIANGLE)  ->  the LP relaxation (`bounds/lp.py`)
    build_program(net, input_set, bounds, BIG_M)     ->  the exact MILP    (`exact/milp.py`)

Variables (columns), named as in the lecture notes:
    x_i      network inputs, bounded by the input set's bounding box;
    t_i      l_1 balls only: |x_i - center_i| <= t_i, sum_i t_i <= eps (so the ball stays linear);
    y_l_i    output of the l-th affine layer (pre-activation), bounded by the neuron bounds;
    z_l_i    output of the ReLU after it (post-activation), unstable neurons only;
    a_l_i    big-M only: the binary 1[y_l_i >= 0], unstable neurons only.
Stable neurons get no variable of their own: an inactive one (u <= 0) is the constant 0, an active
one (l >= 0) is its pre-activation column itself. The last affine layer gets no variables either:
the network output is kept as a linear expression `G @ cols[output_cols] + g`, so a margin row
c^T f(x) - d becomes an objective vector directly.

ReLU encodings (per unstable neuron, pre-activation y in [l, u], l < 0 < u):
    TRIANGLE  z >= 0, z >= y, z <= u (y - l) / (u - l)            (LP; the convex hull)
    BIG_M     z >= 0, z >= y, z <= y - l (1 - a), z <= u a, a ∈ {0,1}   (exact)
The triangle's chord is computed in float64 and moved up by a rounding allowance, so every true
(y, relu(y)) pair stays feasible; all other coefficients are copied exactly from the network.

`lagrangian_bound` turns any row duals into a lower bound on the program's minimum, computed in
float64 with a rounding allowance: the certifiers use it instead of the solver's primal objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional, Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from ..graph import encoding as graph_encoding
from ..network import AFFINE, Network, ReLU
from ..spec import Box, InputSet, LpBall
from . import UNIT_ROUNDOFF
NumpyBounds = tuple[np.ndarray, np.ndarray]  # (lower, upper) of one layer's flat output


# HiGHS's default small_matrix_value: it drops matrix entries smaller than this (with a warning).
SMALL_COEFFICIENT = 1e-9
# HiGHS's default infinite_bound: a bound this large is read as no bound at all.
LARGEST_BOUND = 1e20


def _check_holdable(lower: np.ndarray, upper: np.ndarray, what: str,
                    names: Optional[Sequence[str]] = None) -> None:
    """InputError unless every bound is finite and below LARGEST_BOUND in magnitude: a solver
    reads larger ones as infinite (HiGHS) or meets NaN in its data (cvxpy, from inf - inf).
    The offender is named `what` and its index, or its entry of `names`."""
    reach = np.maximum(np.abs(lower), np.abs(upper))
    bad = np.flatnonzero(~(reach < LARGEST_BOUND))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"{what} {i if names is None else names[i]} reaches {reach[i]:.3g} (bounds [{lower[i]:.3g}, "
                         f"{upper[i]:.3g}]), beyond the {LARGEST_BOUND:g} a solver can hold: lp "
                         "and milp need a smaller input set or weights (ibp and crown take it)")


def _gamma(n_terms: int) -> float:
    """Relative allowance for a float64 sum of n products (Higham's gamma_n, doubled)."""
    return 2.0 * (n_terms + 4) * UNIT_ROUNDOFF


class _Builder:
    """Accumulates columns and sparse rows (COO triplets), vectorised per layer."""

    def __init__(self) -> None:
        self.col_lower: list[np.ndarray] = []
        self.col_upper: list[np.ndarray] = []
        self.integer: list[np.ndarray] = []
        self.names: list[str] = []
        self.n_cols = 0
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.row_lower: list[np.ndarray] = []
        self.row_upper: list[np.ndarray] = []
        self.row_names: list[str] = []
        self.n_rows = 0

    def add_cols(self, lower, upper, names: Sequence[str], integer: bool = False) -> np.ndarray:
        n = len(names)
        self.col_lower.append(np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)).copy())
        self.col_upper.append(np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,)).copy())
        self.integer.append(np.full(n, integer))
        self.names.extend(names)
        index = np.arange(self.n_cols, self.n_cols + n)
        self.n_cols += n
        return index

    def add_rows(self, names: Sequence[str], local_rows, cols, vals, lower, upper) -> None:
        """One row per name: lower <= sum over its (local_row, col, val) triplets <= upper."""
        n = len(names)
        self.row_names.extend(names)
        self.rows.append(np.asarray(local_rows, dtype=np.int64) + self.n_rows)
        self.cols.append(np.asarray(cols, dtype=np.int64))
        self.vals.append(np.asarray(vals, dtype=np.float64))
        self.row_lower.append(np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)).copy())
        self.row_upper.append(np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,)).copy())
        self.n_rows += n

    def add_pairs(self, names: Sequence[str], first, first_coef, second, second_coef, lower,
                  upper) -> None:
        """Rows first_coef * col(first) + second_coef * col(second) in [lower, upper] (one each)."""
        n = len(first)
        if n == 0:
            return
        local = np.arange(n)
        self.add_rows(names, np.concatenate([local, local]), np.concatenate([first, second]),
                      np.concatenate([np.broadcast_to(first_coef, (n,)),
                                      np.broadcast_to(second_coef, (n,))]), lower, upper)


@dataclass(frozen=True)
class ReluEncoding:
    """How an unstable ReLU becomes constraints: `integer` says whether it adds binaries."""

    name: str
    integer: bool

    def encode(self, builder: _Builder, y: np.ndarray, lower: np.ndarray, upper: np.ndarray,
               tag, neurons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Columns (z, a) for unstable neurons with pre-activation columns y in [lower, upper];
        `a` is empty for relaxations."""
        z = builder.add_cols(0.0, np.maximum(upper, 0.0), [f"z_{tag}_{i}" for i in neurons])
        names = np.array([f"{tag}_{i}" for i in neurons], dtype=object)
        builder.add_pairs([f"relu_ge_pre_{s}" for s in names], z, 1.0, y, -1.0, 0.0, np.inf)
        slope = upper / (upper - lower)
        # Within SMALL_COEFFICIENT of stable, a neuron's big-M constant (-l or u), or for the
        # triangle its chord slope, would be a matrix entry HiGHS drops. Such a neuron gets an
        # outer relaxation of relu on [l, u] without one: z <= u (the column bound; u tiny, or
        # for the triangle a flat chord), or z <= y - l (-l tiny; the chord is nearly that line).
        inactive = upper < SMALL_COEFFICIENT
        if not self.integer:
            inactive |= slope < SMALL_COEFFICIENT
        active = (-lower < SMALL_COEFFICIENT) & ~inactive
        builder.add_pairs([f"relu_near_{s}" for s in names[active]], z[active], 1.0, y[active],
                          -1.0, -np.inf, -lower[active])
        exact = ~inactive & ~active
        z_e, y_e, lo, up, names = z[exact], y[exact], lower[exact], upper[exact], names[exact]
        if not self.integer:  # triangle: z - s y <= -s l, s = u / (u - l), chord rounded up
            chord = slope[exact]
            allowance = 8 * UNIT_ROUNDOFF * chord * (np.abs(lo) + np.abs(up))
            builder.add_pairs([f"relu_chord_{s}" for s in names], z_e, 1.0, y_e, -chord, -np.inf,
                              -chord * lo + allowance)
            return z, np.zeros(0, dtype=np.int64)
        a = np.full(len(z), -1, dtype=np.int64)  # no binary for the nearly stable ones
        a[exact] = a_e = builder.add_cols(0.0, 1.0, [f"a_{s}" for s in names], integer=True)
        n = len(z_e)
        local = np.arange(n)
        # z - y - l a <= -l   (z <= y - l (1 - a)): exact, l and u are copied, not computed
        builder.add_rows([f"relu_off_{s}" for s in names], np.concatenate([local] * 3),
                         np.concatenate([z_e, y_e, a_e]),
                         np.concatenate([np.ones(n), -np.ones(n), -lo]), -np.inf, -lo)
        builder.add_pairs([f"relu_on_{s}" for s in names], z_e, 1.0, a_e, -up, -np.inf, 0.0)
        return z, a


TRIANGLE = ReluEncoding("triangle", integer=False)
BIG_M = ReluEncoding("big-M", integer=True)
ENCODINGS = {"triangle": TRIANGLE, "big-M": BIG_M}


@dataclass
class ReluProgram:
    """The network over an input set as sparse linear constraints (and binaries for BIG_M).

    Columns hold `col_lower <= v <= col_upper` (all finite); rows `row_lower <= A v <= row_upper`.
    The network output is `G @ v[output_cols] + g`. `ball` is (input columns, center, eps) for an
    l_2 ball, whose constraint ||x - center||_2 <= eps is not part of the linear rows.
    """

    encoding: ReluEncoding
    matrix: sp.csr_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    integer: np.ndarray
    names: list[str]
    row_names: list[str]
    input_cols: np.ndarray
    output_cols: np.ndarray
    G: np.ndarray
    g: np.ndarray
    layer_cols: list[np.ndarray]  # per layer: columns of its output (-1: constant 0); [] if folded
    binary_cols: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> columns (-1: none)
    ball: Optional[tuple[np.ndarray, np.ndarray, float]] = None
    unstable_neurons: int = 0
    aux_cols: Optional[np.ndarray] = None  # l_1 balls: the t_i columns
    aux_center: Optional[np.ndarray] = None
    graph: Optional[graph_encoding.GraphColumns] = None  # a GraphNetwork's columns per tensor

    @property
    def n_cols(self) -> int:
        return len(self.col_lower)

    @cached_property
    def abs_matrix_t(self) -> sp.csr_matrix:
        """|A|^T, for rounding allowances."""
        return abs(self.matrix).T.tocsr()

    @cached_property
    def max_col_nnz(self) -> int:
        return int(np.diff(self.matrix.tocsc().indptr).max(initial=0)) if self.matrix.nnz else 0

    @property
    def n_rows(self) -> int:
        return len(self.row_lower)

    @cached_property
    def _reach(self) -> np.ndarray:
        """max |v_j| over each column's box."""
        return np.maximum(np.abs(self.col_lower), np.abs(self.col_upper))

    def rounding_noise(self, cost: np.ndarray, offset: float) -> tuple[float, str]:
        """(largest float64 rounding error of one row's activity or of the objective, anywhere in
        the column box; the name of that row or "objective"). Row r's activity sum_j a_rj v_j
        is computed with error up to gamma_n (sum_j |a_rj| |v_j| + |rhs_r|) (Higham); a solver
        that checks the row against an absolute tolerance smaller than that cannot tell a
        feasible point from an infeasible one, nor its bounds from rounding noise."""
        A = self.matrix.tocsr()
        rhs = np.maximum(np.where(np.isfinite(self.row_lower), np.abs(self.row_lower), 0.0),
                         np.where(np.isfinite(self.row_upper), np.abs(self.row_upper), 0.0))
        nnz = np.diff(A.indptr)
        rows = (2.0 * (nnz + 4) * UNIT_ROUNDOFF) * (abs(A) @ self._reach + rhs) if A.nnz \
            else np.zeros(0)
        objective = _gamma(int(np.count_nonzero(cost)) + 1) * (
            float(np.abs(cost) @ self._reach) + abs(offset))
        if len(rows) and rows.max() > objective:
            r = int(rows.argmax())
            return float(rows[r]), self.row_names[r]
        return objective, "objective"

    def objective(self, c: np.ndarray, d: float = 0.0) -> tuple[np.ndarray, float, np.ndarray]:
        """(cost over all columns, constant, rounding bound on each cost entry) of c^T f(x) - d."""
        cost = np.zeros(self.n_cols)
        error = np.zeros(self.n_cols)
        if len(self.output_cols):
            np.add.at(cost, self.output_cols, c @ self.G)
            np.add.at(error, self.output_cols, _gamma(len(c)) * (np.abs(c) @ np.abs(self.G)))
        offset = float(c @ self.g - d)
        offset_error = _gamma(len(c)) * float(np.abs(c) @ np.abs(self.g) + abs(d))
        # A rounding error of the constant shifts the bound by at most itself: fold it into the
        # constant here (downwards), so callers can treat `offset` as exact.
        return cost, offset - offset_error, error

    def assignment(self, net: Network, x: np.ndarray) -> np.ndarray:
        """Values of every column at input x (a feasible point when x lies in the input set and
        the neuron bounds hold there): forward pass, binaries 1[y >= 0], t = |x - center|."""
        values = np.zeros(self.n_cols)
        h = np.asarray(x, dtype=np.float64).reshape(1, -1)
        values[self.input_cols] = h[0]
        if self.graph is not None:
            graph_encoding.assignment(net, self.graph, values, h[0])
        for k, layer in enumerate(net.layers if self.graph is None else ()):
            pre, h = h.reshape(-1), layer.forward(h)
            cols = self.layer_cols[k]
            if len(cols):  # (empty for the folded last layer)
                keep = cols >= 0
                values[cols[keep]] = h.reshape(-1)[keep]
            if k in self.binary_cols:
                a = self.binary_cols[k]
                keep = a >= 0
                values[a[keep]] = (pre[keep] >= 0).astype(np.float64)
        if self.aux_cols is not None:
            values[self.aux_cols] = np.abs(values[self.input_cols] - self.aux_center)
        return np.clip(values, self.col_lower, self.col_upper)


def _input_columns(b: _Builder, input_set: InputSet) -> tuple:
    """Columns x_i of the inputs (and t_i of an l_1 ball, with its rows): (x, ball, t, center)."""
    box_lower, box_upper = input_set.bounding_box()
    _check_holdable(box_lower, box_upper, "input")
    n_in = len(box_lower)
    x = b.add_cols(box_lower, box_upper, [f"x_{i}" for i in range(n_in)])
    ball = None
    aux_cols = aux_center = None
    if isinstance(input_set, LpBall) and input_set.norm == "1":
        eps, center = input_set.eps, input_set.center
        t = b.add_cols(0.0, eps, [f"t_{i}" for i in range(n_in)])
        b.add_pairs([f"l1_above_{i}" for i in range(n_in)], x, 1.0, t, -1.0, -np.inf, center)
        b.add_pairs([f"l1_below_{i}" for i in range(n_in)], x, 1.0, t, 1.0, center, np.inf)
        b.add_rows(["l1_radius"], np.zeros(n_in), t, np.ones(n_in), -np.inf, eps)
        aux_cols, aux_center = t, center
    elif isinstance(input_set, LpBall) and input_set.norm == "2":
        ball = (x, input_set.center.copy(), input_set.eps)
    elif not isinstance(input_set, (Box, LpBall)):  # pragma: no cover
        raise TypeError(f"unknown input set {type(input_set).__name__}")
    return x, ball, aux_cols, aux_center


def build_program(net: Network, input_set: InputSet, bounds, encoding: ReluEncoding,
                  eliminate_stable: bool = True) -> ReluProgram:
    """Constraints of `net` over `input_set` with neuron bounds `bounds` (entry k bounds the flat
    output of net.layers[k], as from `ibp.layer_bounds`). The last affine layer is folded into
    the output expression. `eliminate_stable=False` encodes stable neurons like unstable ones
    (only for comparisons: it never changes the feasible set's projection). A GraphNetwork
    takes `bounds` per tensor name (flat arrays) and its nodes' rules from verify.graph.encoding."""
    if getattr(net, "is_graph", False):
        return _build_graph_program(net, input_set, bounds, encoding)
    b = _Builder()
    x, ball, aux_cols, aux_center = _input_columns(b, input_set)
    encoded = len(net.layers) - (0 if isinstance(net.layers[-1], ReLU) else 1)  # (last folded)
    for k, (lower, upper) in enumerate(bounds[:encoded]):
        _check_holdable(lower, upper, f"layer {k} ({type(net.layers[k]).__name__}) neuron")
    box_lower, box_upper = input_set.bounding_box()

    current = x  # columns of the current flat activation; -1 = the constant 0
    layer_cols: list[np.ndarray] = []
    binary_cols: dict[int, np.ndarray] = {}
    affine_count = 0
    unstable_total = 0
    last = len(net.layers) - 1
    G = g = output_cols = None
    for k, layer in enumerate(net.layers):
        if isinstance(layer, AFFINE):
            affine_count += 1
            weight = layer.dense_matrix()
            bias = layer.bias_per_output(layer.bias)
            live = current >= 0
            w_live = weight[:, live]
            if k == last:
                output_cols, G, g = current[live], w_live, bias
                layer_cols.append(np.zeros(0, dtype=np.int64))
                break
            lower, upper = bounds[k]
            n_out = weight.shape[0]
            y = b.add_cols(lower, upper, [f"y_{affine_count}_{i}" for i in range(n_out)])
            # y - W h = b, exactly the network's float64 coefficients
            coo = sp.coo_matrix(w_live)
            b.add_rows([f"affine_{affine_count}_{i}" for i in range(n_out)],
                       np.concatenate([np.arange(n_out), coo.row]),
                       np.concatenate([y, current[live][coo.col]]),
                       np.concatenate([np.ones(n_out), -coo.data]), bias, bias)
            current = y
            layer_cols.append(y)
        elif isinstance(layer, ReLU):
            pre_lower, pre_upper = bounds[k - 1] if k > 0 else (box_lower, box_upper)
            post = np.full(len(current), -1, dtype=np.int64)
            dead = (pre_upper <= 0) | (current < 0)
            active = (pre_lower >= 0) & ~dead
            unstable = ~dead & ~active
            unstable_total += int(np.sum(unstable))
            if not eliminate_stable:  # big-M with the true l, u is exact for stable neurons too
                assert encoding.integer, "only an exact encoding may keep stable neurons"
                unstable, active = current >= 0, np.zeros_like(active)
            post[active] = current[active]
            neurons = np.flatnonzero(unstable)
            lo, up = pre_lower[neurons], pre_upper[neurons]
            z, a = encoding.encode(b, current[neurons], lo, up, affine_count, neurons)
            post[neurons] = z
            if encoding.integer:
                binaries = np.full(len(current), -1, dtype=np.int64)
                binaries[neurons] = a
                binary_cols[k] = binaries
            current = post
            layer_cols.append(post)
        else:  # pragma: no cover - the loader only builds the layers above
            raise TypeError(f"cannot encode {type(layer).__name__}")
    if G is None:  # the network ends with a ReLU: the output is the last activation
        live = current >= 0
        output_cols, G, g = current[live], np.eye(len(current))[:, live], np.zeros(len(current))
    return _finish(b, encoding, x, output_cols, G, g, ball, aux_cols, aux_center,
                   layer_cols=layer_cols, binary_cols=binary_cols, unstable_neurons=unstable_total)


def _build_graph_program(net, input_set: InputSet, bounds: dict, encoding: ReluEncoding
                         ) -> ReluProgram:
    """build_program for a GraphNetwork: every node by its rule in verify.graph.encoding."""
    b = _Builder()
    x, ball, aux_cols, aux_center = _input_columns(b, input_set)
    columns, output_cols, G, g = graph_encoding.encode(net, b, x, bounds, encoding)
    _check_holdable(b.col_lower[0], b.col_upper[0], "column", b.names)
    return _finish(b, encoding, x, output_cols, G, g, ball, aux_cols, aux_center, layer_cols=[],
                   binary_cols={}, unstable_neurons=columns.unstable_relus, graph=columns)


def _finish(b: _Builder, encoding: ReluEncoding, x, output_cols, G, g, ball, aux_cols,
            aux_center, **extra) -> ReluProgram:
    """The builder's columns and rows as a ReluProgram."""
    n_rows = b.n_rows
    if b.rows:
        matrix = sp.csr_matrix((np.concatenate(b.vals), (np.concatenate(b.rows),
                                                         np.concatenate(b.cols))),
                               shape=(n_rows, b.n_cols))
        row_lower, row_upper = np.concatenate(b.row_lower), np.concatenate(b.row_upper)
    else:
        matrix = sp.csr_matrix((0, b.n_cols))
        row_lower = row_upper = np.zeros(0)
    return ReluProgram(
        encoding=encoding, matrix=matrix, row_lower=row_lower, row_upper=row_upper,
        col_lower=np.concatenate(b.col_lower), col_upper=np.concatenate(b.col_upper),
        integer=np.concatenate(b.integer), names=b.names, row_names=b.row_names, input_cols=x,
        output_cols=np.asarray(output_cols, dtype=np.int64), G=np.asarray(G), g=np.asarray(g),
        ball=ball, aux_cols=aux_cols, aux_center=aux_center, **extra)


def lagrangian_bound(program: ReluProgram, cost: np.ndarray, offset: float,
                     cost_error: np.ndarray, row_dual: np.ndarray,
                     input_box_dual: Optional[np.ndarray] = None) -> float:
    """A lower bound on min { cost^T v + offset : v feasible } from ANY row multipliers y.

    Weak duality: for v in the columns' box (and, for an l_2 program, in the ball),
        cost^T v >= sum_i y_i A_i v + min_v (cost - A^T y)^T v,  y_i A_i v >= y_i * (row bound),
    taking the row's lower bound where y_i > 0 and its upper bound where y_i < 0 (a multiplier
    of the wrong sign for an infinite side is dropped). So the bound holds whatever the solver
    returned; its optimal duals merely make it tight. For an l_2 program the input columns'
    minimum splits into a ball part and a box part with the solver's box multipliers
    `input_box_dual`. Computed in float64 and lowered by a rounding allowance (`_gamma`), so
    the bound holds for the real-arithmetic program, with `cost_error` bounding the error already
    in `cost`.
    """
    A = program.matrix
    y = np.nan_to_num(np.asarray(row_dual, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    y = np.where(((y > 0) & ~np.isfinite(program.row_lower)) |
                 ((y < 0) & ~np.isfinite(program.row_upper)), 0.0, y)
    rhs = np.where(y > 0, program.row_lower, np.where(y < 0, program.row_upper, 0.0))
    rhs = np.where(np.isfinite(rhs), rhs, 0.0)
    row_terms = y * rhs
    reduced = cost - A.T @ y
    reduced_error = cost_error + _gamma(program.max_col_nnz + 1) * (
        np.abs(cost) + program.abs_matrix_t @ np.abs(y))
    lo, hi = program.col_lower, program.col_upper
    reach = np.maximum(np.abs(lo), np.abs(hi))
    col_terms = np.minimum(reduced * lo, reduced * hi)
    slack = float(reduced_error @ reach)
    extra = 0.0
    if program.ball is not None:
        inputs, center, eps = program.ball
        w = np.zeros(len(inputs)) if input_box_dual is None else np.asarray(input_box_dual)
        r = reduced[inputs] - w
        ball_term = float(r @ center) - eps * float(np.linalg.norm(r))
        col_terms[inputs] = np.minimum(w * lo[inputs], w * hi[inputs])
        extra = ball_term
        slack += _gamma(len(inputs)) * float(np.abs(r) @ (np.abs(center) + reach[inputs])
                                              + eps * np.linalg.norm(r)
                                              + np.abs(w) @ reach[inputs])
    total = math.fsum(row_terms) + math.fsum(col_terms) + extra + offset
    magnitude = (float(np.abs(row_terms).sum()) + float(np.abs(col_terms).sum()) + abs(extra)
                 + abs(offset))
    slack += _gamma(program.n_rows + program.n_cols) * magnitude
    value = total - slack
    return value if math.isfinite(value) else -math.inf
