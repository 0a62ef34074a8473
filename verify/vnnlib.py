"""VNN-LIB 1.0 properties -> input boxes and violation regions over the outputs.

A VNN-LIB file describes the *violation*: `sat` means some input satisfies every assertion (a
counterexample exists), `unsat` means the property is proved. We read the file into DNF:

    violation = OR over cases (x in box_c  AND  OR over disjuncts k (A_ck f(x) <= b_ck))

Each case is one input box; each disjunct is a conjunction of linear constraints on the outputs.
Strict and non-strict inequalities are read alike (as VNN-COMP does). A disjunct with one row
a.y <= b is the complement of the row a.y - b > 0, so a case whose disjuncts all have one row is
exactly the internal `Specification` "C f(x) - d > 0 for every row" (`to_specifications`).

Grammar read: `(declare-const X_i Real)`, `(declare-const Y_j Real)`, `(assert E)` with E built
from `and`, `or`, `<=`, `>=`, `<`, `>`, `=` over linear terms (`+`, `-`, `*` by constants,
numbers, declared names). Errors carry the file, line and column.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .errors import InputError
from .spec import Box, OutputProperty, Specification

MAX_DNF_TERMS = 100_000


class VnnlibError(InputError):
    """A VNN-LIB file that cannot be read or mapped; the message names file, line and column."""


@dataclass
class Disjunct:
    """Violation region A y <= b (every row); zero rows means 'always violated'."""

    A: np.ndarray
    b: np.ndarray

    def holds(self, y: np.ndarray) -> bool:
        return bool(np.all(self.A @ y <= self.b))


@dataclass
class VnnlibCase:
    box: Box
    disjuncts: list[Disjunct] = field(default_factory=list)


@dataclass
class VnnlibQuery:
    n_inputs: int
    n_outputs: int
    cases: list[VnnlibCase]
    source: str = ""

    def check_sizes(self, n_inputs: int, n_outputs: int) -> None:
        if (n_inputs, n_outputs) != (self.n_inputs, self.n_outputs):
            raise VnnlibError(
                f"{self.source}: property declares {self.n_inputs} inputs and {self.n_outputs} "
                f"outputs, the network has {n_inputs} inputs and {n_outputs} outputs")

    @property
    def single_row(self) -> bool:
        return all(len(d.A) == 1 for c in self.cases for d in c.disjuncts)

    def to_specifications(self) -> list[Specification]:
        """One Specification per case: rows a.y - b > 0 that all must hold (the property).

        Requires every disjunct to have exactly one row; multi-row disjuncts need a certifier
        that handles 'some row > 0' (see `violated_by`).
        """
        if not self.single_row:
            raise VnnlibError(f"{self.source}: a disjunct has several output constraints; it "
                              "is not a conjunction of margin rows")
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
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        return any(case.box.contains(x) and any(d.holds(y) for d in case.disjuncts)
                   for case in self.cases)


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
            try:
                return {}, float(token)
            except ValueError:
                raise self.fail(node, f"'{token}' is neither a declared name nor a number") \
                    from None
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
            factor = float(np.prod([a[1] for a in args if not a[0]]))
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
            return [[(coef, const, node) for coef, const in atoms]]
        raise self.fail(node, f"'{op}' is not supported (and, or, <=, >=, <, >, =)")


def _combine(parts, weights) -> tuple[dict, float]:
    coef: dict[str, float] = {}
    const = 0.0
    for (c, k), w in zip(parts, weights):
        for name, v in c.items():
            coef[name] = coef.get(name, 0.0) + w * v
        const += w * k
    return {n: v for n, v in coef.items() if v != 0.0}, const


def parse_vnnlib(text: str, source: str = "<vnnlib>") -> VnnlibQuery:
    """Read VNN-LIB 1.0 text into a VnnlibQuery (see the module docstring)."""
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
            raise reader.fail(node, "this is VNN-LIB 2.0; only VNN-LIB 1.0 is read here")
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

    cases: dict[bytes, VnnlibCase] = {}
    for term in terms:
        lower, upper = np.full(n_in, -np.inf), np.full(n_in, np.inf)
        rows, rhs, feasible = [], [], True
        for coef, const, node in term:
            kinds = {reader.names[name][0] for name in coef}
            if kinds == {"X", "Y"}:
                raise reader.fail(node, "a constraint mixes inputs and outputs")
            if not kinds:  # constant atom: const <= 0
                feasible &= const <= 0
            elif kinds == {"X"}:
                if len(coef) != 1:
                    raise reader.fail(node, "only bounds on single inputs are supported "
                                            "(e.g. (<= X_0 1))")
                (name, c), = coef.items()
                i = reader.names[name][1]
                if c > 0:
                    upper[i] = min(upper[i], -const / c)
                else:
                    lower[i] = max(lower[i], -const / c)
            else:
                row = np.zeros(n_out)
                for name, c in coef.items():
                    row[reader.names[name][1]] = c
                rows.append(row)
                rhs.append(-const)
        if not feasible or np.any(lower > upper):
            continue
        missing = np.flatnonzero(~np.isfinite(lower) | ~np.isfinite(upper))
        if missing.size:
            raise VnnlibError(f"{source}: input X_{missing[0]} is not bounded on both sides")
        key = lower.tobytes() + upper.tobytes()
        case = cases.setdefault(key, VnnlibCase(Box(lower, upper)))
        case.disjuncts.append(Disjunct(np.array(rows).reshape(len(rows), n_out), np.array(rhs)))
    return VnnlibQuery(n_in, n_out, list(cases.values()), source)


def load_vnnlib(path: Union[str, Path]) -> VnnlibQuery:
    """Read a VNN-LIB 1.0 file (errors name the file, line and column)."""
    path = Path(path)
    if not path.is_file():
        raise VnnlibError(f"{path}: no such file")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise VnnlibError(f"{path}: not a text file") from None
    return parse_vnnlib(text, str(path))


def format_counterexample(x: np.ndarray, y: np.ndarray) -> str:
    """The VNN-COMP assignment: ((X_0 v) (X_1 v) ... (Y_0 v) ...), full float64 precision."""
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(np.ravel(x))]
    pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(np.ravel(y))]
    return "(" + "\n ".join(pairs) + ")"
