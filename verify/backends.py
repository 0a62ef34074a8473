"""Certifier registry and the one entry point `certify` that every method shares.

A certifier is registered under a name with its options dataclass and one function
`run(net, specs, options) -> list[Certificate]`; `certify` validates the user's input, builds the
specification and dispatches. New certifiers plug in with `register(...)`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .certificate import Certificate
from .errors import InputError
from .network import Network
from .spec import Specification, robustness_spec

RunFn = Callable[[Network, Sequence[Specification], Any], list[Certificate]]


@dataclass(frozen=True)
class Backend:
    name: str
    run: RunFn
    options_type: type
    summary: str


REGISTRY: dict[str, Backend] = {}


def register(name: str, run: RunFn, options_type: type, summary: str) -> None:
    REGISTRY[name] = Backend(name, run, options_type, summary)


def methods() -> list[str]:
    _load_builtin()
    return sorted(REGISTRY)


def make_options(method: str, options: dict[str, Any]):
    """The method's options dataclass from keyword options. Refused with InputError: unknown or
    mistyped names, non-finite numbers, values outside the class's LIMITS, and whatever the
    class's own `check()` refuses."""
    backend = get_backend(method)
    valid = {f.name: f for f in dataclasses.fields(backend.options_type)}
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)} for method '{method}'; valid: "
                         f"{', '.join(valid) or 'none'}")
    defaults = backend.options_type()
    for key, value in options.items():
        default = getattr(defaults, key)
        if isinstance(default, bool) and not isinstance(value, bool) or \
                isinstance(default, int) and not isinstance(default, bool) and \
                not isinstance(value, (int, np.integer)) or \
                isinstance(default, float) and not isinstance(value, (int, float, np.number)):
            raise InputError(f"option {key} of method '{method}' must be of type "
                             f"{type(default).__name__}, got {value!r}")
    made = backend.options_type(**options)
    limits = getattr(backend.options_type, "LIMITS", {})
    for key, value in options.items():
        if isinstance(value, (float, np.floating)) and not math.isfinite(value):
            raise InputError(f"option {key} of method '{method}' must be finite, got {value}")
        rule = limits.get(key)
        if rule is not None and value is not None and not within(value, rule):
            raise InputError(f"option {key} of method '{method}' must be {rule}, got {value!r}")
    if hasattr(made, "check"):  # the options class's own consistency checks
        made.check()
    return made


def within(value: float, rule: str) -> bool:
    """Whether value obeys an options class's LIMITS rule: ">= a", "> a" or "in (a, b]" (any
    of ( [ and ) ])."""
    if rule.startswith("in "):
        low, high = (float(t) for t in rule[4:-1].split(","))
        return (value > low if rule[3] == "(" else value >= low) and \
            (value < high if rule[-1] == ")" else value <= high)
    op, bound = rule.split()
    return value > float(bound) if op == ">" else value >= float(bound)


def get_backend(method: str) -> Backend:
    _load_builtin()
    if method not in REGISTRY:
        raise InputError(f"unknown method '{method}': use one of {', '.join(methods())}")
    return REGISTRY[method]


def certify_specs(net: Network, specs: Sequence[Specification], method: str = "ibp",
                  **options) -> list[Certificate]:
    """Run one certifier on already-built specifications."""
    backend = get_backend(method)
    opts = make_options(method, options)
    return backend.run(net, list(specs), opts)


def certify_batch(net: Network, xs, labels, eps: float, norm="inf", method: str = "ibp",
                  domain=None, **options) -> list[Certificate]:
    """`certify` for many inputs at once (batched on the device where the method allows)."""
    xs = np.asarray(xs, dtype=np.float64).reshape(len(labels), -1)
    specs = [robustness_spec(net.input_size, net.output_size, x, y, eps, norm, domain)
             for x, y in zip(xs, labels)]
    return certify_specs(net, specs, method, **options)


def certify(net: Network, x, label: int, eps: float, norm="inf", method: str = "ibp",
            domain=None, **options) -> Certificate:
    """Is the network's margin z_label - z_j > 0 for every j != label over the ball
    {x' : ||x' - x||_norm <= eps} ∩ domain?  Returns a Certificate (YES / NO / MAYBE).

    `domain`: None, or (low, high) scalars or per-feature vectors (e.g. (0, 1) for images).
    `options`: the method's options (e.g. device="cpu"); unknown ones raise InputError.
    """
    get_backend(method)
    spec = robustness_spec(net.input_size, net.output_size, x, label, eps, norm, domain)
    t0 = time.perf_counter()
    cert = certify_specs(net, [spec], method, **options)[0]
    cert.time_s = time.perf_counter() - t0
    return cert


_loaded = False


# name -> (module, entry function, options class, one-line summary), imported on first use.
BUILTIN = {
    "ibp": ("verify.bounds.ibp", "certify", "IBPOptions",
            "interval bound propagation: fastest, loosest (sound, incomplete)"),
    "crown": ("verify.bounds.crown", "certify", "CROWNOptions",
              "linear bound propagation (CROWN): tighter than IBP (sound, incomplete)"),
    "alpha-crown": ("verify.bounds.alpha_crown", "certify", "AlphaCROWNOptions",
                    "CROWN with optimised ReLU slopes: tighter, slower (sound, incomplete)"),
    "lp": ("verify.bounds.lp", "certify", "LPOptions",
           "triangle LP relaxation on HiGHS (l_2: Clarabel): tighter, slower (sound, incomplete)"),
    "milp": ("verify.exact.milp", "certify", "MILPOptions",
             "big-M MILP on HiGHS: exact, YES or NO (l_inf, l_1; MAYBE only on timeout)"),
    "bab": ("verify.exact.bab", "certify", "BaBOptions",
            "branch and bound over input boxes with CROWN: complete for few inputs (l_inf, box)"),
    "attack": ("verify.attack", "certify", "AttackOptions",
               "PGD attack with random restarts: finds counterexamples (NO or MAYBE, never YES)"),
    "smoothing": ("verify.smoothing.certify", "run", "SmoothingOptions",
                  "randomized smoothing (CERTIFY): certifies the smoothed classifier g at "
                  "confidence 1 - alpha"),
}


def _load_builtin() -> None:
    """Register the certifiers shipped with the package (import on first use)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for name, (module_name, function, options_name, summary) in BUILTIN.items():
        module = importlib.import_module(module_name)
        register(name, getattr(module, function), getattr(module, options_name), summary)
