"""VNN-LIB 1.0 and 2.0 properties -> input boxes and violation regions over the outputs.

A VNN-LIB file describes the *violation*: `sat` means some input satisfies every assertion (a
counterexample exists), `unsat` means the property is proved. We read the file into DNF:

    violation = OR over cases (x in box_c  AND  OR over disjuncts k (A_ck f(x) <= b_ck))

Each case is one input box; each disjunct is a conjunction of linear constraints on the outputs.
Strict inequalities (`<`, `>`) keep their strictness in the parsed form (`Disjunct.strict`,
`VnnlibCase.open_lower/open_upper`): the certifiers work on the closure (rows and boxes as if
non-strict; a strict one-row violation is refuted by a bound >= 0, `OutputProperty.closed`), so an
unsat proof of the closed violation region holds for the open one, while a sat
needs a point that `violated_by` confirms with the strict comparisons in float64 (`(> Y_0 Y_0)`
is unsatisfiable; a point with Y_0 = Y_1 exactly does not satisfy `(< Y_0 Y_1)`). A disjunct
with one row a.y <= b is the complement of the row a.y - b > 0, so a case whose disjuncts all
have one row is the internal `Specification` "C f(x) - d > 0 for every row"
(`to_specifications`). Constants must be finite float64 numbers: NaN, inf, or a value that
overflows (1e400, or a product or sum that does) is refused with the line and column.

VNN-LIB 1.0, read by our own parser: `(declare-const X_i Real)`, `(declare-const Y_j Real)`,
`(assert E)` with E built from `and`, `or`, `<=`, `>=`, `<`, `>`, `=` over linear terms (`+`, `-`,
`*` by constants, numbers, declared names). Errors carry the file, line and column.

VNN-LIB 2.0 (`(vnnlib-version <2.0>)`, `(declare-network N (declare-input X real [1,5])
(declare-output Y real [1,5]))`, indexed elements `X[0,3]`), parsed and type-checked by the
`vnnlib` package (in a checkout: `pip install -e '.[vnnlib2]'`). We walk its typed AST ourselves into the same
DNF (the package's `compat.transform` returns wrong cases when a query has several `assert`s:
it treats them as alternatives instead of a conjunction). Supported: several networks, inputs,
outputs and hidden nodes, real or floating-point element types, linear and polynomial terms over
any declared variables, `!=` (two strict alternatives); tensor elements flatten row-major. x is
every declared input in declaration order; the rows read y: every hidden node and output in
declaration order, then x again when a constraint reads inputs other than as single-entry
bounds (`VnnlibQuery.observes_inputs`); an input equated entry by entry with an earlier one in
every case shares its entries of x. Polynomial atoms stay with their disjunct (`Polynomial`):
certifiers see the linear rows only. Errors carry the file and, where the package gives them,
line and column.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

from .errors import InputError, not_a_file
from .spec import Box, OutputProperty, Specification

MAX_DNF_TERMS = 100_000
# VNN-LIB 2.0 inputs left unbounded: searched for a sat in [b, b + 2 W], [b - 2 W, b] or
# [-W, W] (W this): a sat there is one of the query; an unsat is not (the answer is unknown).
INPUT_WINDOW = 1.0


class VnnlibError(InputError):
    """A VNN-LIB file that cannot be read or mapped; the message names file, line and column."""


@dataclass
class Disjunct:
    """Violation region A y <= b (every row; row i strict, A_i y < b_i, where strict[i]); zero
    rows means 'always violated'."""

    A: np.ndarray
    b: np.ndarray
    strict: Optional[np.ndarray] = None  # bool per row; None: all non-strict
    polys: list["Polynomial"] = field(default_factory=list)  # nonlinear atoms, also required

    def holds(self, y: np.ndarray) -> bool:
        if not all(p.holds(y) for p in self.polys):
            return False
        value = self.A @ y
        if self.strict is None:
            return bool(np.all(value <= self.b))
        return bool(np.all(np.where(self.strict, value < self.b, value <= self.b)))


@dataclass
class Polynomial:
    """A nonlinear atom sum_m c_m prod_{j in m} y_j + const <= 0 (< 0 when strict), m a tuple
    of indices into the observed vector y (a repeated index is a power). Certifiers never see
    it: they answer for the disjunct's linear rows alone (a superset of the violation region,
    so an unsat stays a proof), and a sat is confirmed by `holds` on the replayed point."""

    terms: dict[tuple[int, ...], float]
    const: float
    strict: bool = False

    def value(self, y: np.ndarray) -> float:
        return float(sum(c * np.prod([y[j] for j in m]) for m, c in self.terms.items())
                     + self.const)

    def holds(self, y: np.ndarray) -> bool:
        v = self.value(np.asarray(y, dtype=np.float64).reshape(-1))
        return v < 0 if self.strict else v <= 0

    def lower_bound(self, lower: np.ndarray, upper: np.ndarray) -> float:
        """A lower bound of the polynomial over the box lower <= y <= upper (interval
        arithmetic, float64 with outward slack). A NaN bound counts as unbounded (-inf / +inf),
        so a NaN corner below can only be 0 * inf, which is 0."""
        lower = np.where(np.isnan(lower), -np.inf, lower)
        upper = np.where(np.isnan(upper), np.inf, upper)
        total = self.const
        for m, c in self.terms.items():
            lo, hi = 1.0, 1.0
            for j in m:
                corners = [lo * lower[j], lo * upper[j], hi * lower[j], hi * upper[j]]
                corners = [0.0 if math.isnan(v) else v for v in corners]  # 0 * inf
                lo, hi = min(corners), max(corners)
            total += min(c * lo, c * hi)
        return total - 1e-12 * (abs(total) + 1.0)


@dataclass
class VnnlibCase:
    """An input box (its closure; `open_lower[i]` / `open_upper[i]`: that side is strict) and
    the disjuncts over the outputs that make a violation inside it."""

    box: Box
    disjuncts: list[Disjunct] = field(default_factory=list)
    open_lower: Optional[np.ndarray] = None
    open_upper: Optional[np.ndarray] = None

    def contains(self, x: np.ndarray) -> bool:
        """x in the box, strict sides honoured."""
        if not self.box.contains(x):
            return False
        if self.open_lower is not None and np.any(self.open_lower & (x <= self.box.lower)):
            return False
        return not (self.open_upper is not None
                    and np.any(self.open_upper & (x >= self.box.upper)))


@dataclass
class VnnlibVariable:
    """A declared variable: a 1.0 scalar `X_3`, or a 2.0 tensor `X real [1,5]`; its values are
    the flat input x (inputs) or observed vector y (outputs and hidden nodes) entries offset ..
    offset + size - 1, row-major."""

    name: str
    element_type: str  # as declared: "Real" (1.0), "real", "float32", ... (2.0)
    shape: tuple[int, ...]
    kind: str  # "input", "hidden" or "output"; inputs index x, the others y
    offset: int
    network: Optional[str] = None  # the declaring network (2.0)
    onnx_name: Optional[str] = None  # the ONNX tensor named in the declaration, if any
    shares: Optional[str] = None  # an input the query makes equal to this one, entry by entry

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class VnnlibNetwork:
    """A 2.0 `declare-network`: its name and the network it is declared equal or isomorphic
    to (an equal network reuses that network's model file)."""

    name: str
    equal_to: Optional[str] = None
    isomorphic_to: Optional[str] = None


@dataclass
class VnnlibQuery:
    """x: every declared input, flat, in declaration order (network by network). y, the
    observed vector the rows read: every declared hidden node and output in declaration order,
    then, when `observes_inputs`, x again (a constraint mixing inputs with outputs, or a linear
    combination of several inputs, is a row over y). `n_outputs` is the size of y."""

    n_inputs: int
    n_outputs: int
    cases: list[VnnlibCase]
    source: str = ""
    version: str = "1.0"
    network: Optional[str] = None  # the declared network's name (2.0; the first of several)
    variables: list[VnnlibVariable] = field(default_factory=list)  # in declaration order
    networks: list[VnnlibNetwork] = field(default_factory=list)  # 2.0, in declaration order
    observes_inputs: bool = False
    # 2.0 inputs the query leaves unbounded, searched within INPUT_WINDOW only: no unsat
    windowed_inputs: list[str] = field(default_factory=list)

    @property
    def simple(self) -> bool:
        """One network, one input and one output tensor, no hidden node, rows over the outputs
        only: the query reads the model's own output vector."""
        kinds = [v.kind for v in self.variables]
        return len(self.networks) <= 1 and not self.observes_inputs and \
            "hidden" not in kinds and (self.version == "1.0" or
                                       (kinds.count("input"), kinds.count("output")) == (1, 1))

    @property
    def nonlinear(self) -> bool:
        return any(d.polys for c in self.cases for d in c.disjuncts)

    def observed_from(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """y extended by x when the rows read the inputs too (y: hidden nodes and outputs)."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if self.observes_inputs and y.size == self.n_outputs - self.n_inputs:
            y = np.concatenate([y, np.asarray(x, dtype=np.float64).reshape(-1)])
        return y

    def check_sizes(self, n_inputs: int, n_outputs: int,
                    input_shape: Optional[tuple[int, ...]] = None) -> None:
        """Refuse a network whose input/output sizes differ from the declared ones; with
        `input_shape`, also a declared 2.0 input shape that differs beyond dimensions of 1."""
        if (n_inputs, n_outputs) != (self.n_inputs, self.n_outputs):
            raise VnnlibError(
                f"{self.source}: property declares {self.n_inputs} inputs and {self.n_outputs} "
                f"outputs, the network has {n_inputs} inputs and {n_outputs} outputs")
        declared = [v for v in self.variables if v.kind == "input"]
        if input_shape is not None and self.version != "1.0" and len(declared) == 1:
            def squeeze(shape):
                return [int(d) for d in shape if d != 1]
            if squeeze(declared[0].shape) != squeeze(input_shape):
                raise VnnlibError(
                    f"{self.source}: input {declared[0].name} is declared "
                    f"{_dims(declared[0].shape)}, the network's input has shape "
                    f"{_dims(input_shape)}")

    def format_assignment(self, x: np.ndarray, y: np.ndarray) -> str:
        """The VNN-LIB standard's command-line assignment (section 5.3.1): per declared
        variable, in declaration order, `NAME TYPE [DIMS]` and then its values row-major, one
        per line, at full float64 precision."""
        y = np.ravel(np.asarray(y, dtype=np.float64))
        flat = {"input": np.ravel(np.asarray(x, dtype=np.float64)), "output": y, "hidden": y}
        lines = []
        for v in self.variables:
            lines.append(f"{v.name} {v.element_type} {_dims(v.shape)}")
            lines += [repr(float(value)) for value in flat[v.kind][v.offset:v.offset + v.size]]
        return "".join(line + "\n" for line in lines)

    @property
    def single_row(self) -> bool:
        return all(len(d.A) == 1 and not d.polys for c in self.cases for d in c.disjuncts)

    def to_specifications(self) -> list[Specification]:
        """One Specification per case: rows a.y - b > 0 that all must hold (the property).

        Requires every disjunct to have exactly one row; multi-row disjuncts need a certifier
        that handles 'some row > 0' (see `violated_by`).
        """
        if not self.single_row:
            raise VnnlibError(f"{self.source}: a disjunct has several output constraints (or a "
                              "polynomial one); it is not a conjunction of margin rows")
        specs = []
        for case in self.cases:
            C = np.array([d.A[0] for d in case.disjuncts])
            d = np.array([d.b[0] for d in case.disjuncts])
            label, classes = _robustness_pattern(C, d)
            prop = OutputProperty(C, d, classes if label is not None else [])
            specs.append(Specification(case.box, prop, label))
        return specs

    def violated_by(self, x: np.ndarray, y: np.ndarray) -> bool:
        """Does the input/output pair satisfy the VNN-LIB assertions (a counterexample)?"""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        y = self.observed_from(x, y)
        return any(case.contains(x) and any(d.holds(y) for d in case.disjuncts)
                   for case in self.cases)


def _dims(shape) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def _robustness_pattern(C: np.ndarray, d: np.ndarray) -> tuple[Optional[int], list]:
    """(label, [j per row]) when the rows are e_label - e_j with d = 0, else (None, [])."""
    if np.any(d != 0) or C.shape[1] < 2:
        return None, []
    labels, classes = set(), []
    for row in C:
        pos, neg = np.flatnonzero(row == 1.0), np.flatnonzero(row == -1.0)
        if len(pos) != 1 or len(neg) != 1 or np.count_nonzero(row) != 2:
            return None, []
        labels.add(int(pos[0]))
        classes.append(int(neg[0]))
    return (labels.pop(), classes) if len(labels) == 1 else (None, [])


# -- reading ---------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(;[^\n]*)|(\()|(\))|([^\s()]+))")


@dataclass
class _Node:
    value: Union[str, list]
    line: int
    col: int


def _parse_sexprs(text: str, source: str) -> list[_Node]:
    stack: list[_Node] = [_Node([], 0, 0)]
    pos, line_starts = 0, [0] + [m.end() for m in re.finditer("\n", text)]

    def where(offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(line_starts, offset)
        return line, offset - line_starts[line - 1] + 1

    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            break
        comment, open_, close, atom = match.groups()
        start = match.start(match.lastindex) if match.lastindex else pos
        pos = match.end()
        if comment:
            continue
        line, col = where(start)
        if open_:
            stack.append(_Node([], line, col))
        elif close:
            if len(stack) == 1:
                raise VnnlibError(f"{source}:{line}:{col}: unbalanced ')'")
            node = stack.pop()
            stack[-1].value.append(node)
        elif atom:
            stack[-1].value.append(_Node(atom, line, col))
    if len(stack) != 1:
        raise VnnlibError(f"{source}:{stack[-1].line}:{stack[-1].col}: '(' is never closed")
    return stack[0].value


class _Reader:
    def __init__(self, source: str):
        self.source = source
        self.names: dict[str, tuple[str, int]] = {}  # name -> ("X"|"Y", index)

    def fail(self, node: _Node, message: str) -> VnnlibError:
        return VnnlibError(f"{self.source}:{node.line}:{node.col}: {message}")

    def declare(self, node: _Node) -> None:
        parts = node.value
        if len(parts) != 3 or not all(isinstance(p.value, str) for p in parts[1:]):
            raise self.fail(node, "expected (declare-const NAME Real)")
        name, sort = parts[1].value, parts[2].value
        if sort != "Real":
            raise self.fail(parts[2], f"sort '{sort}' is not supported (Real only)")
        match = re.fullmatch(r"([XY])_(\d+)", name)
        if not match:
            raise self.fail(parts[1], f"name '{name}' is not X_i or Y_j")
        if name in self.names:
            raise self.fail(parts[1], f"'{name}' is declared twice")
        self.names[name] = (match.group(1), int(match.group(2)))

    def linear(self, node: _Node) -> tuple[dict, float]:
        """A term as ({name: coefficient}, constant)."""
        if isinstance(node.value, str):
            token = node.value
            if token in self.names:
                return {token: 1.0}, 0.0
            if token.lower().lstrip("+-") in ("nan", "inf", "infinity"):
                raise self.fail(node, f"the constant '{token}' is not a finite number")
            if not _NUMBER.fullmatch(token):
                raise self.fail(node, f"'{token}' is neither a declared name nor a number")
            value = float(token)
            if not np.isfinite(value):
                raise self.fail(node, f"the constant {token} overflows float64")
            return {}, value
        if not node.value or not isinstance(node.value[0].value, str):
            raise self.fail(node, "expected an operator")
        op, args = node.value[0].value, [self.linear(a) for a in node.value[1:]]
        if op == "+" and args:
            return _combine(args, [1.0] * len(args))
        if op == "-" and len(args) == 1:
            return _combine(args, [-1.0])
        if op == "-" and args:
            return _combine(args, [1.0] + [-1.0] * (len(args) - 1))
        if op == "*" and args:
            variable = [a for a in args if a[0]]
            if len(variable) > 1:
                raise self.fail(node, "product of two variables (not linear)")
            factor = math.prod(a[1] for a in args if not a[0])
            if not variable:
                return {}, factor
            return {k: v * factor for k, v in variable[0][0].items()}, variable[0][1] * factor
        raise self.fail(node, f"operator '{op}' is not supported in a linear term")

    def dnf(self, node: _Node) -> list[list[tuple[dict, float, _Node]]]:
        """Boolean formula -> list of conjunctions of atoms 'expr <= 0' (expr as (coef, const))."""
        if isinstance(node.value, str) or not node.value:
            raise self.fail(node, "expected a constraint such as (<= X_0 1)")
        op = node.value[0].value
        args = node.value[1:]
        if op == "and":
            terms = [[]]
            for arg in args:
                terms = [a + b for a, b in itertools.product(terms, self.dnf(arg))]
                if len(terms) > MAX_DNF_TERMS:
                    raise self.fail(node, f"more than {MAX_DNF_TERMS} cases after expansion")
            return terms
        if op == "or":
            return [t for arg in args for t in self.dnf(arg)]
        if op in ("<=", ">=", "<", ">", "="):
            if len(args) != 2:
                raise self.fail(node, f"'{op}' needs two arguments")
            lhs, rhs = self.linear(args[0]), self.linear(args[1])
            less = _combine([lhs, rhs], [1.0, -1.0])  # lhs - rhs
            more = _combine([lhs, rhs], [-1.0, 1.0])
            atoms = {"<=": [less], "<": [less], ">=": [more], ">": [more], "=": [less, more]}[op]
            _check_finite(atoms, lambda message: self.fail(node, message))
            return [[(coef, const, node, op in ("<", ">")) for coef, const in atoms]]
        raise self.fail(node, f"'{op}' is not supported (and, or, <=, >=, <, >, =)")


# An SMT-LIB decimal or a number in scientific notation (not Python's "nan", "inf", "1_0").
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _check_finite(atoms, fail: Callable[[str], VnnlibError]) -> None:
    """Refuse an atom whose coefficients or constant overflowed float64 (in a sum or product)."""
    for coef, const in atoms:
        if not (np.isfinite(const) and all(np.isfinite(c) for c in coef.values())):
            raise fail("a coefficient or constant of this constraint overflows float64")


def _combine(parts, weights) -> tuple[dict, float]:
    coef: dict[str, float] = {}
    const = 0.0
    for (c, k), w in zip(parts, weights):
        for name, v in c.items():
            coef[name] = coef.get(name, 0.0) + w * v
        const += w * k
    return {n: v for n, v in coef.items() if v != 0.0}, const


def parse_vnnlib(text: str, source: str = "<vnnlib>") -> VnnlibQuery:
    """Read VNN-LIB text into a VnnlibQuery: 2.0 when the first form is `(vnnlib-version ...)`
    (or `(declare-network ...)`), else 1.0 (see the module docstring)."""
    if vnnlib_version(text) != "1.0":
        return parse_vnnlib2(text, source)
    reader = _Reader(source)
    asserts = []
    for node in _parse_sexprs(text, source):
        if isinstance(node.value, str) or not node.value or \
                not isinstance(node.value[0].value, str):
            raise reader.fail(node, "expected (declare-const ...) or (assert ...)")
        head = node.value[0].value
        if head == "declare-const":
            reader.declare(node)
        elif head == "assert":
            if len(node.value) != 2:
                raise reader.fail(node, "(assert ...) takes one formula")
            asserts.append(node.value[1])
        elif head in ("vnnlib-version", "declare-network"):
            raise reader.fail(node, f"'{head}' is VNN-LIB 2.0, in a file that starts as VNN-LIB "
                                    "1.0 (a 2.0 file starts with (vnnlib-version <2.0>))")
        else:
            raise reader.fail(node, f"'{head}' is not supported (declare-const, assert)")
    n = {kind: sorted(i for k, i in reader.names.values() if k == kind) for kind in "XY"}
    for kind, idx in n.items():
        if idx != list(range(len(idx))):
            raise VnnlibError(f"{source}: {kind}_i are not numbered 0..{len(idx) - 1}")
    if not n["X"] or not n["Y"]:
        raise VnnlibError(f"{source}: declares no X_i or no Y_j")
    n_in, n_out = len(n["X"]), len(n["Y"])

    terms: list[list] = [[]]
    for formula in asserts:
        terms = [a + b for a, b in itertools.product(terms, reader.dnf(formula))]
        if len(terms) > MAX_DNF_TERMS:
            raise reader.fail(formula, f"more than {MAX_DNF_TERMS} cases after expansion")
    keyed = [[({reader.names[name]: c for name, c in coef.items()}, const, node, strict)
              for coef, const, node, strict in term] for term in terms]
    cases = _cases_from_dnf(keyed, n_in, n_out, source, reader.fail, lambda i: f"X_{i}")
    variables = [VnnlibVariable(name, "Real", (), "input" if kind == "X" else "output", index)
                 for name, (kind, index) in reader.names.items()]
    return VnnlibQuery(n_in, n_out, cases, source, "1.0", None, variables)


# ({("X" | "Y", flat index): coefficient}, constant, where, strict): sum coef var + const <= 0
# (< 0 if strict)
_Atom = tuple[dict, float, Any, bool]


def _is_bound(atom) -> bool:
    """A bound on one input entry (the atoms that make the input boxes)."""
    coef, nonlinear = atom[0], atom[4] if len(atom) > 4 else None
    return not nonlinear and len(coef) == 1 and next(iter(coef))[0] == "X"


def _reads_inputs(atom) -> bool:
    """Does the atom read an input other than as a bound on one entry?"""
    coef, nonlinear = atom[0], atom[4] if len(atom) > 4 else None
    return not _is_bound(atom) and (any(kind == "X" for kind, _ in coef) or any(
        kind == "X" for monomial in (nonlinear or {}) for kind, _ in monomial))


def _cases_from_dnf(terms: list[list[_Atom]], n_in: int, n_out: int, source: str,
                    fail: Callable[[Any, str], VnnlibError],
                    input_name: Callable[[int], str],
                    observes_inputs: bool = False,
                    windowed: Optional[list[str]] = None) -> list[VnnlibCase]:
    """Conjunctions of atoms `sum coef * var + constant <= 0` (< 0 if strict) -> cases (one per
    distinct input box, empty boxes dropped), each with its disjuncts over the outputs. With
    `observes_inputs`, y is the n_out - n_in observed values followed by x, and atoms other than
    single-input bounds become rows (or polynomials) over y; an atom's fifth entry, if any,
    holds its nonlinear monomials {((kind, index), ...): coefficient}. With `windowed` (a
    list, VNN-LIB 2.0), an input left unbounded gets the search window of INPUT_WINDOW (its
    name is appended): a sat found there holds, an unsat does not (vnncomp.solve says unknown);
    without it such an input is refused."""
    base = n_out - n_in if observes_inputs else n_out

    def column(key) -> int:
        kind, index = key
        return index if kind == "Y" else base + index

    cases: dict[bytes, VnnlibCase] = {}
    for term in terms:
        lower, upper = np.full(n_in, -np.inf), np.full(n_in, np.inf)
        open_lower, open_upper = np.zeros(n_in, dtype=bool), np.zeros(n_in, dtype=bool)
        rows, rhs, strict_rows, polys, feasible = [], [], [], [], True
        for atom in term:
            coef, const, where, strict = atom[:4]
            nonlinear = atom[4] if len(atom) > 4 else None
            kinds = {kind for kind, _ in coef}
            if nonlinear:
                if _reads_inputs(atom) and not observes_inputs:
                    raise fail(where, "a nonlinear constraint reads inputs")
                poly_terms = {(column(k),): c for k, c in coef.items()}
                for monomial, c in nonlinear.items():
                    key = tuple(sorted(column(k) for k in monomial))
                    poly_terms[key] = poly_terms.get(key, 0.0) + c
                polys.append(Polynomial(poly_terms, const, strict))
                continue
            if "X" in kinds and not _is_bound(atom) and not observes_inputs:
                if kinds == {"X", "Y"}:
                    raise fail(where, "a constraint mixes inputs and outputs")
                raise fail(where, "only bounds on single inputs are supported "
                                  f"(e.g. (<= {input_name(0)} 1))")
            if not kinds:  # constant atom: const <= 0 (const < 0 if strict)
                feasible &= const < 0 if strict else const <= 0
            elif _is_bound(atom):
                ((_, i), c), = coef.items()
                bound, side, opened = (upper, -1, open_upper) if c > 0 else \
                    (lower, 1, open_lower)
                value = -const / c
                if side * (value - bound[i]) > 0:  # tighter: replaces the bound and its kind
                    bound[i], opened[i] = value, strict
                elif value == bound[i]:
                    opened[i] |= strict
            else:
                row = np.zeros(n_out)
                for key, c in coef.items():
                    row[column(key)] += c
                rows.append(row)
                rhs.append(-const)
                strict_rows.append(strict)
        if not feasible or np.any(lower > upper) or \
                np.any((lower == upper) & (open_lower | open_upper)):
            continue
        missing = np.flatnonzero(~np.isfinite(lower) | ~np.isfinite(upper))
        if missing.size and windowed is not None:
            lower, upper = lower.copy(), upper.copy()
            for i in missing:
                if np.isfinite(lower[i]):
                    upper[i] = lower[i] + 2 * INPUT_WINDOW
                elif np.isfinite(upper[i]):
                    lower[i] = upper[i] - 2 * INPUT_WINDOW
                else:
                    lower[i], upper[i] = -INPUT_WINDOW, INPUT_WINDOW
                if input_name(int(i)) not in windowed:
                    windowed.append(input_name(int(i)))
        elif missing.size:
            raise VnnlibError(f"{source}: input {input_name(int(missing[0]))} is not bounded "
                              "on both sides")
        key = lower.tobytes() + upper.tobytes() + open_lower.tobytes() + open_upper.tobytes()
        case = cases.setdefault(key, VnnlibCase(
            Box(lower, upper), open_lower=open_lower if open_lower.any() else None,
            open_upper=open_upper if open_upper.any() else None))
        strict = np.array(strict_rows, dtype=bool)
        case.disjuncts.append(Disjunct(np.array(rows).reshape(len(rows), n_out), np.array(rhs),
                                       strict if strict.any() else None, polys))
    return list(cases.values())


def load_vnnlib(path: Union[str, Path]) -> VnnlibQuery:
    """Read a VNN-LIB 1.0 or 2.0 file (errors name the file, line and column)."""
    path = Path(path)
    if not path.is_file():
        raise VnnlibError(f"{path}: {not_a_file(path)}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise VnnlibError(f"{path}: not a text file") from None
    return parse_vnnlib(text, str(path))


# -- VNN-LIB 2.0 through the `vnnlib` package --------------------------------------------------

VNNLIB2_VERSION = (2, 0)
_FIRST_FORM = re.compile(r"\A(?:\s+|;[^\n]*)*\(\s*([^\s()]+)")
_VERSION_FORM = re.compile(r"\(\s*vnnlib-version\s*<\s*(\d+)\s*\.\s*(\d+)\s*>\s*\)")
# The package's element types (enum member names) that we read, as the standard spells them.
# Values are analysed as reals in float64 whatever the declared type.
_ELEMENT_TYPES = {"Real": "real", "F64": "float64", "F32": "float32", "F16": "float16",
                  "BF16": "bfloat16"}
# Integer types, read for outputs and hidden nodes (the network computes them exactly, e.g. a
# Shape or a cast to int64): their values are integers, compared as reals.
_INTEGER_TYPES = ("I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64")


def vnnlib_version(text: str) -> str:
    """"2.0" (or whatever `(vnnlib-version <M.m>)` says) when the first form is a 2.0 one,
    "1.0" otherwise."""
    first = _FIRST_FORM.match(text)
    if first is None or first.group(1) not in ("vnnlib-version", "declare-network"):
        return "1.0"
    version = _VERSION_FORM.search(text)
    return f"{version.group(1)}.{version.group(2)}" if version else "2.0"


def vnnlib2_available() -> bool:
    """Is the `vnnlib` package (the VNN-LIB 2.0 parser) importable?"""
    try:
        import vnnlib  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 while the package's C++ parser runs: it prints its warnings
    and some errors there itself (multi-line JSON); ours come as one-line exceptions."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to protect
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _package_error(exc: Exception, source: str) -> VnnlibError:
    """The package's exception (plain text with line and column, or a JSON report) as one
    line naming the file and the position."""
    body = str(exc).strip()
    try:
        report = json.loads(body)
    except ValueError:
        match = re.search(r"(.*?) at line (\d+), column (\d+):?\s*(.*)", body, re.S)
        if match:
            what, line, col, near = match.groups()
            near = " ".join(near.split())
            near = f" near {near}" if near and near != "''" else " (unexpected end)"
            return VnnlibError(f"{source}:{line}:{col}: {what.strip().lower()}{near}")
        return VnnlibError(f"{source}: {' '.join(body.split()) or 'cannot be parsed'}")
    errors = report.get("errors") if isinstance(report, dict) else None
    if errors and all(isinstance(e, dict) for e in errors):  # isomorphic retyping aside
        errors = [e for e in errors if not _ISOMORPHIC_MISMATCH.fullmatch(
            str(e.get("message", "")).strip())] or errors
    if not errors or not isinstance(errors[0], dict):
        return VnnlibError(f"{source}: the VNN-LIB 2.0 type checker refused the query")
    first = errors[0]
    where = f"{source}:{first['line']}" if first.get("line") is not None else source
    text = "; ".join(str(first[k]) for k in ("message", "hint") if first.get(k))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return VnnlibError(f"{where}: {' '.join(text.split())}{more}")


def _line_of(node: Any) -> Optional[int]:
    """The first source line found in a node's subtree (variables and literals carry one)."""
    line = getattr(node, "line", None)
    if isinstance(line, int) and line > 0:
        return line
    for child in node.children():
        line = _line_of(child)
        if line is not None:
            return line
    return None


class _Reader2:
    """Walks the package's typed AST of a query into DNF atoms. `tensors`: declared name ->
    ("X" for inputs, "Y" for hidden nodes and outputs, shape, offset into x or y)."""

    def __init__(self, vnnlib: Any, source: str,
                 tensors: dict[str, tuple[str, tuple[int, ...], int]]):
        self.v = vnnlib
        self.source = source
        self.tensors = tensors

    def fail(self, node: Any, message: str) -> VnnlibError:
        line = node if isinstance(node, int) else (None if node is None else _line_of(node))
        return VnnlibError(f"{self.source}{'' if line is None else f':{line}'}: {message}")

    def poly(self, node: Any) -> dict[tuple, float]:
        """An arithmetic expression as a polynomial {monomial: coefficient}, a monomial the
        sorted tuple of its variables (kind, flat index), () for the constant."""
        v = self.v
        if isinstance(node, v.Var):
            if node.name not in self.tensors:
                raise self.fail(node, f"'{node.name}' is not a declared variable")
            kind, shape, offset = self.tensors[node.name]
            index = int(np.ravel_multi_index(tuple(node.indices), shape)) if shape else 0
            return {((kind, offset + index),): 1.0}
        if isinstance(node, v.Literal):
            value = float(node.lexeme)  # correctly rounded from the text
            if not np.isfinite(value):
                raise self.fail(node, f"the constant {node.lexeme} is not a finite float64")
            return {(): value}
        if isinstance(node, v.Negate):
            return _poly_sum([self.poly(node.expr)], [-1.0])
        if isinstance(node, v.Plus):
            args = [self.poly(a) for a in node.args]
            return _poly_sum(args, [1.0] * len(args))
        if isinstance(node, v.Minus):
            args = [self.poly(node.head)] + [self.poly(a) for a in node.rest]
            return _poly_sum(args, [1.0] + [-1.0] * (len(args) - 1))
        if isinstance(node, v.Multiply):
            product: dict[tuple, float] = {(): 1.0}
            for arg in node.args:
                factor = self.poly(arg)
                out: dict[tuple, float] = {}
                for m1, c1 in product.items():
                    for m2, c2 in factor.items():
                        key = tuple(sorted(m1 + m2))
                        out[key] = out.get(key, 0.0) + c1 * c2
                if len(out) > MAX_DNF_TERMS:
                    raise self.fail(node, f"more than {MAX_DNF_TERMS} monomials")
                product = out
            return {m: c for m, c in product.items() if c != 0.0}
        raise self.fail(node, f"'{type(node).__name__}' is not supported in an arithmetic term")

    def atom(self, poly: dict[tuple, float], line: Any, strict: bool) -> _Atom:
        """poly <= 0 (< 0 if strict) as (linear coefficients, constant, where, strict,
        nonlinear monomials or None)."""
        coef = {m[0]: c for m, c in poly.items() if len(m) == 1}
        nonlinear = {m: c for m, c in poly.items() if len(m) > 1}
        const = poly.get((), 0.0)
        if not (np.isfinite(const) and all(np.isfinite(c) for c in poly.values())):
            raise self.fail(line, "a coefficient or constant of this constraint overflows "
                                  "float64")
        return (coef, const, line, strict, nonlinear or None)

    def dnf(self, node: Any) -> list[list[_Atom]]:
        """A Boolean expression as a list of conjunctions of atoms `expr <= 0`."""
        v = self.v
        if isinstance(node, v.And):
            terms: list[list[_Atom]] = [[]]
            for arg in node.args:
                terms = [a + b for a, b in itertools.product(terms, self.dnf(arg))]
                if len(terms) > MAX_DNF_TERMS:
                    raise self.fail(node, f"more than {MAX_DNF_TERMS} cases after expansion")
            return terms
        if isinstance(node, v.Or):
            return [t for arg in node.args for t in self.dnf(arg)]
        line = _line_of(node)
        if isinstance(node, v.Comparison):
            lhs, rhs = self.poly(node.lhs), self.poly(node.rhs)
            less = _poly_sum([lhs, rhs], [1.0, -1.0])  # lhs - rhs <= 0
            more = _poly_sum([lhs, rhs], [-1.0, 1.0])
            if isinstance(node, v.NotEqual):  # lhs < rhs or lhs > rhs
                return [[self.atom(less, line, True)], [self.atom(more, line, True)]]
            if isinstance(node, (v.LessEqual, v.LessThan)):
                polys = [less]
            elif isinstance(node, (v.GreaterEqual, v.GreaterThan)):
                polys = [more]
            elif isinstance(node, v.Equal):
                polys = [less, more]
            else:
                raise self.fail(line, f"comparison '{type(node).__name__}' is not supported")
            strict = isinstance(node, (v.LessThan, v.GreaterThan))
            return [[self.atom(p, line, strict) for p in polys]]
        raise self.fail(line, f"'{type(node).__name__}' is not supported (and, or, <=, >=, <, "
                              ">, ==, !=)")


def _poly_sum(parts: list[dict], weights: list[float]) -> dict[tuple, float]:
    out: dict[tuple, float] = {}
    for part, w in zip(parts, weights):
        for m, c in part.items():
            out[m] = out.get(m, 0.0) + w * c
    return {m: c for m, c in out.items() if c != 0.0 or m == ()}


def _equal_pairs(term: list) -> set[tuple[int, int]]:
    """Input entries (i, j), i != j, that a conjunction of atoms makes equal: x_i - x_j <= 0
    and x_j - x_i <= 0, both non-strict and linear."""
    halves = set()
    for atom in term:
        coef, const, strict = atom[0], atom[1], atom[3]
        if strict or const != 0 or (len(atom) > 4 and atom[4]) or len(coef) != 2:
            continue
        (k1, c1), (k2, c2) = coef.items()
        if k1[0] == k2[0] == "X" and c1 == -c2 != 0:
            halves.add((k1[1], k2[1]) if c1 > 0 else (k2[1], k1[1]))
    return {(i, j) for i, j in halves if (j, i) in halves}


def _share_inputs(terms: list[list], variables: list[VnnlibVariable], n_in: int
                  ) -> tuple[list[list], int]:
    """Shared inputs: an input tensor that every case makes equal, entry by entry, to an
    earlier declared input of the same size (`(assert (== U[0] X[0]))`, ...: the standard has
    no other way to feed two networks one input) becomes the same entries of x (its
    `offset` that input's, `shares` its name); the equalities then read 0 <= 0. Returns the
    terms over the smaller x and its size."""
    pairs = set.intersection(*[_equal_pairs(t) for t in terms]) if terms else set()
    if not pairs:
        return terms, n_in
    inputs = [v for v in variables if v.kind == "input"]
    target: dict[int, int] = {}  # old x index -> old x index it equals (an earlier tensor's)
    for k, u in enumerate(inputs):
        for x in inputs[:k]:
            if x.shares is None and x.size == u.size and u.shares is None and all(
                    (x.offset + e, u.offset + e) in pairs or (u.offset + e, x.offset + e) in pairs
                    for e in range(u.size)):
                u.shares = x.name
                target.update({u.offset + e: x.offset + e for e in range(u.size)})
                break
    if not target:
        return terms, n_in
    kept = [i for i in range(n_in) if i not in target]
    new_index = {old: new for new, old in enumerate(kept)}
    new_index.update({old: new_index[t] for old, t in target.items()})
    for v in inputs:
        v.offset = new_index[v.offset]

    def moved(key):
        return ("X", new_index[key[1]]) if key[0] == "X" else key

    out = []
    for term in terms:
        atoms = []
        for atom in term:
            coef: dict = {}
            for key, c in atom[0].items():
                coef[moved(key)] = coef.get(moved(key), 0.0) + c
            coef = {k: c for k, c in coef.items() if c != 0.0}
            nonlinear = atom[4] if len(atom) > 4 else None
            if nonlinear:
                merged: dict = {}
                for monomial, c in nonlinear.items():
                    key = tuple(sorted(moved(k) for k in monomial))
                    merged[key] = merged.get(key, 0.0) + c
                nonlinear = {k: c for k, c in merged.items() if c != 0.0} or None
            atoms.append((coef, atom[1], atom[2], atom[3], nonlinear))
        out.append(atoms)
    return out, len(kept)


_ISOMORPHIC_MISMATCH = re.compile(r"Type mismatch for variable number (\d+) between networks "
                                  r"'([^']+)' and '([^']+)'")


def _isomorphic_retyped(text: str, source: str, exc: Exception
                        ) -> Optional[tuple[str, dict[str, str]]]:
    """Isomorphic networks may differ in element type (the same graph evaluated in another
    precision), which the package's type checker refuses ("Type mismatch for variable number k
    between networks 'N2' and 'N1'"). When that is every error it reports, and the k-th
    declarations of such a pair have real or floating-point types, the query text with every
    real or float variable of the isomorphic network retyped to its counterpart's (the same
    declaration of the network it is isomorphic to) and {variable name: its declared type};
    else None (the error stands). Every other check of the package runs on the retyped text (a
    comparison mixing types included)."""
    try:
        report = json.loads(str(exc))
        errors = report["errors"]
        matches = [_ISOMORPHIC_MISMATCH.fullmatch(str(e.get("message", "")).strip())
                   for e in errors]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not errors or not all(matches):
        return None
    try:
        forms = _parse_sexprs(text, source)
    except VnnlibError:
        return None
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    networks: dict[str, tuple[Optional[str], list[_Node]]] = {}
    for form in forms:
        parts = form.value if isinstance(form.value, list) else []
        if len(parts) < 2 or parts[0].value != "declare-network" or \
                not isinstance(parts[1].value, str):
            continue
        isomorphic_to, types = None, []
        for part in parts[2:]:
            if not isinstance(part.value, list) or not part.value:
                continue
            head = part.value[0].value
            if head == "isomorphic-to" and len(part.value) == 2:
                isomorphic_to = part.value[1].value
            elif head in ("declare-input", "declare-hidden", "declare-output") and \
                    len(part.value) >= 3 and isinstance(part.value[2].value, str):
                types.append(part.value[2])
        networks[parts[1].value] = (isomorphic_to, types)
    edits: dict[int, tuple[_Node, str]] = {}
    declared: dict[str, str] = {}
    readable = set(_ELEMENT_TYPES.values())
    for match in matches:  # the package may stop at the first: every variable of the pair
        k, mine, theirs = int(match.group(1)), match.group(2), match.group(3)
        if mine not in networks or networks[mine][0] != theirs or theirs not in networks:
            return None
        own, other = networks[mine][1], networks[theirs][1]
        if k >= min(len(own), len(other)) or \
                not {own[k].value, other[k].value} <= readable:
            return None
        for mine_type, their_type in zip(own, other):
            if mine_type.value != their_type.value and \
                    {mine_type.value, their_type.value} <= readable:
                offset = line_starts[mine_type.line - 1] + mine_type.col - 1
                if text[offset:offset + len(mine_type.value)] != mine_type.value:
                    return None  # (a quoted name this tokenizer misread: leave the error)
                edits[offset] = (mine_type, their_type.value)
    for offset in sorted(edits, reverse=True):
        token, replacement = edits[offset]
        text = text[:offset] + replacement + text[offset + len(token.value):]
    for form in forms:  # the variable names of the retyped declarations
        parts = form.value if isinstance(form.value, list) else []
        for part in parts[2:] if len(parts) > 2 else []:
            if isinstance(part.value, list) and len(part.value) >= 3:
                token = part.value[2]
                if isinstance(token.value, str) and any(t is token for t, _ in edits.values()):
                    declared[part.value[1].value] = token.value
    return text, declared


def _onnx_name(decl: Any) -> Optional[str]:
    """The ONNX tensor name a declaration gives (the package keeps the quotes), or None."""
    name = getattr(decl, "onnx_name", None)
    if not name:
        return None
    name = str(name)
    return name[1:-1] if len(name) >= 2 and name[0] == name[-1] == '"' else name


def parse_vnnlib2(text: str, source: str = "<vnnlib>") -> VnnlibQuery:
    """Read VNN-LIB 2.0 text with the `vnnlib` package's parser and type checker into a
    VnnlibQuery: x the declared inputs, y the hidden nodes and outputs (network by network, in
    declaration order), every tensor flattened row-major."""
    try:
        import vnnlib
    except ImportError:
        raise VnnlibError(f"{source}: reading VNN-LIB 2.0 needs the 'vnnlib' package: "
                          "pip install 'vnnlib>=1.0' (in a checkout: pip install -e "
                          "'.[vnnlib2]')") from None
    version = vnnlib_version(text)
    if version != "{}.{}".format(*VNNLIB2_VERSION):
        raise VnnlibError(f"{source}: VNN-LIB version {version} is not supported (1.0 and 2.0)")
    declared_types: dict[str, str] = {}
    try:
        with _quiet_native_stderr():
            query = vnnlib.parse_query_string(text)
    except vnnlib.VNNLibException as exc:
        retyped = _isomorphic_retyped(text, source, exc)
        if retyped is None:
            raise _package_error(exc, source) from None
        text, declared_types = retyped
        try:
            with _quiet_native_stderr():
                query = vnnlib.parse_query_string(text)
        except vnnlib.VNNLibException as again:
            raise _package_error(again, source) from None
    except (IndexError, ValueError) as exc:  # the package's C++ std::stod: out_of_range
        if str(exc).startswith("sto"):
            raise VnnlibError(f"{source}: a numeric literal is beyond float64's range (the "
                              "vnnlib package's reader gave no position)") from None
        raise VnnlibError(f"{source}: the VNN-LIB 2.0 parser failed: {exc}") from None
    if query is None:
        raise VnnlibError(f"{source}: the VNN-LIB 2.0 parser could not read the query")
    networks, variables = [], []
    tensors: dict[str, tuple[str, tuple[int, ...], int]] = {}
    size = {"X": 0, "Y": 0}
    for net in query.networks:
        networks.append(VnnlibNetwork(net.name, net.equal_to or None,
                                      net.isometric_to or None))
        if not len(net.inputs) or not len(net.outputs):
            raise VnnlibError(f"{source}: network '{net.name}' declares no input or no output")
        for kind, decls in (("input", net.inputs), ("hidden", net.hidden),
                            ("output", net.outputs)):
            for decl in decls:
                element_type = _ELEMENT_TYPES.get(decl.dtype.name)
                if kind != "input" and decl.dtype.name in _INTEGER_TYPES:
                    element_type = decl.dtype.name.replace("I", "int").replace("U", "uint")
                if element_type is None:
                    raise VnnlibError(f"{source}: {kind} {decl.name} has element type "
                                      f"{decl.dtype.name}; only real and floating-point types "
                                      f"({', '.join(_ELEMENT_TYPES.values())}) are supported")
                side = "X" if kind == "input" else "Y"
                variable = VnnlibVariable(decl.name, element_type, tuple(decl.shape), kind,
                                          size[side], net.name, _onnx_name(decl))
                variable.element_type = declared_types.get(decl.name, element_type)
                if kind == "hidden" and variable.onnx_name is None:
                    raise VnnlibError(f"{source}: hidden node {decl.name} names no ONNX tensor")
                variables.append(variable)
                tensors[decl.name] = (side, variable.shape, variable.offset)
                size[side] += variable.size
    n_in, n_observed = size["X"], size["Y"]

    reader = _Reader2(vnnlib, source, tensors)
    terms: list[list[_Atom]] = [[]]
    for assertion in query.assertions:
        terms = [a + b for a, b in itertools.product(terms, reader.dnf(assertion.expr))]
        if len(terms) > MAX_DNF_TERMS:
            raise reader.fail(assertion, f"more than {MAX_DNF_TERMS} cases after expansion")
    terms, n_in = _share_inputs(terms, variables, n_in)
    observes_inputs = any(_reads_inputs(atom) for term in terms for atom in term)
    n_out = n_observed + (n_in if observes_inputs else 0)

    def input_name(i: int) -> str:
        v = next(v for v in variables if v.kind == "input" and v.offset <= i < v.offset + v.size
                 and v.shares is None)
        return v.name + (_dims(np.unravel_index(i - v.offset, v.shape)) if v.shape else "")

    windowed: list[str] = []
    cases = _cases_from_dnf(terms, n_in, n_out, source, reader.fail, input_name,
                            observes_inputs, windowed)
    return VnnlibQuery(n_in, n_out, cases, source, version, networks[0].name, variables,
                       networks, observes_inputs, windowed)


def format_counterexample(x: np.ndarray, y: np.ndarray) -> str:
    """The VNN-COMP assignment: ((X_0 v) (X_1 v) ... (Y_0 v) ...), full float64 precision."""
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(np.ravel(x))]
    pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(np.ravel(y))]
    return "(" + "\n ".join(pairs) + ")"
