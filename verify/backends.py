"""Certifier registry and the one entry point `certify` that every method shares.

A certifier is registered under a name with its options dataclass, one function
`run(net, specs, options) -> list[Certificate]` and the l_p balls it takes (its module's `NORMS`;
all by default); `certify` validates the user's input, builds the specification and dispatches.
New certifiers plug in with `register(...)`. Options classes may declare `LIMITS` (numeric
ranges) and `CHOICES` (allowed strings), which `make_options` checks.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .certificate import Certificate
from .errors import InputError
from .network import Network, resolve_device
from .options import check_choice, check_choices, fits, option_kind, within  # noqa: F401 (re-exported)
from .spec import NORMS, Specification, parse_norm, robustness_spec, robustness_specs

RunFn = Callable[[Network, Sequence[Specification], Any], list[Certificate]]


@dataclass(frozen=True)
class Backend:
    name: str
    run: RunFn
    options_type: type
    summary: str
    norms: tuple[str, ...] = NORMS  # the l_p balls it takes (its module's NORMS)


REGISTRY: dict[str, Backend] = {}


def register(name: str, run: RunFn, options_type: type, summary: str,
             norms: Sequence[str] = NORMS) -> None:
    REGISTRY[name] = Backend(name, run, options_type, summary, tuple(norms))


def methods() -> list[str]:
    """Every method's name (the built-in ones without importing them)."""
    return sorted(set(REGISTRY) | set(BUILTIN))


def check_norm(method: str, norm) -> None:
    """InputError unless `method` is registered and takes l_`norm` balls (its `norms`)."""
    norm, backend = parse_norm(norm), get_backend(method)
    if norm not in backend.norms:
        taken = " and ".join(f"l_{n}" for n in backend.norms)
        raise InputError(f"method {method} takes {taken} balls only, not l_{norm} "
                         f"(see verify methods)")


def make_options(method: str, options: dict[str, Any]):
    """The method's options dataclass from keyword options. Refused with InputError: unknown or
    mistyped names (a bool is no number), non-finite numbers, values outside the class's LIMITS
    or its CHOICES, a `device` this torch lacks, and whatever the class's own `check()`
    refuses."""
    backend = get_backend(method)
    valid = {f.name: f for f in dataclasses.fields(backend.options_type)}
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)} for method '{method}'; valid: "
                         f"{', '.join(valid) or 'none'}")
    defaults = backend.options_type()
    for key, value in options.items():
        default = getattr(defaults, key)
        if not fits(default, value):
            raise InputError(f"option {key} of method '{method}' takes {option_kind(default)}, "
                             f"got {value!r}")
    options = {key: bool(value) if isinstance(value, np.bool_) else value
               for key, value in options.items()}
    made = backend.options_type(**options)
    limits = getattr(backend.options_type, "LIMITS", {})
    for key, value in options.items():
        if isinstance(value, (float, np.floating)) and not math.isfinite(value):
            raise InputError(f"option {key} of method '{method}' must be finite, got {value}")
        rule = limits.get(key)
        if rule is not None and value is not None and not within(value, rule):
            raise InputError(f"option {key} of method '{method}' must be {rule}, got {value!r}")
    check_choices(made, method)
    if "device" in valid:
        resolve_device(made.device)  # InputError: unknown, or a device this torch lacks
    if hasattr(made, "check"):  # the options class's own consistency checks
        made.check()
    return made


def get_backend(method: str) -> Backend:
    if method not in REGISTRY and method in BUILTIN:
        _load(method)
    if method not in REGISTRY:
        raise InputError(f"unknown method '{method}': use one of {', '.join(methods())}")
    return REGISTRY[method]


def certify_specs(net: Network, specs: Sequence[Specification], method: str = "ibp",
                  **options) -> list[Certificate]:
    """Run one certifier on already-built specifications.

    A method with a `timeout` option (seconds per input, 0: none) runs under an active deadline
    (verify.deadline) of timeout x the number of specifications, so that every loop of it sees
    the limit, not only the solver call that reads the option. A certifier whose loop raises
    DeadlineExpired answers MAYBE "timeout" for every specification of the call (NO only where
    the set's center replays as a counterexample), never YES."""
    from . import deadline
    from .deadline import DeadlineExpired

    backend = get_backend(method)
    opts = make_options(method, options)
    if getattr(net, "is_graph", False) and method not in ("attack", "smoothing", "bab", "lp", "milp",
                                                          "alpha-crown", "relu-bab"):
        from .bounds import graph  # IBP / CROWN over the DAG; other methods refuse in one line

        return graph.certify(net, list(specs), method, opts)
    per_input = getattr(opts, "timeout", None)
    limit = per_input * len(specs) if isinstance(per_input, (int, float)) and per_input > 0 \
        else None
    try:
        with deadline.limit(limit):
            return backend.run(net, list(specs), opts)
    except DeadlineExpired as exc:
        from .verdict import certificate_from_bounds

        return [certificate_from_bounds(net, spec, method, np.full(len(spec.output.C), -np.inf),
                                        reason=f"{exc} (the deadline passed)")
                for spec in specs]


def certify_batch(net: Network, xs, labels, eps: float, norm="inf", method: str = "ibp",
                  domain=None, **options) -> list[Certificate]:
    """`certify` for many inputs at once (batched on the device where the method allows)."""
    xs = np.asarray(xs, dtype=np.float64).reshape(len(labels), -1)
    specs = robustness_specs(net.input_size, net.output_size, xs, labels, eps, norm, domain)
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
             "big-M MILP on HiGHS: exact, YES or NO (MAYBE on timeout or a model HiGHS cannot hold)"),
    "bab": ("verify.exact.bab", "certify", "BaBOptions",
            "branch and bound over input boxes with CROWN: complete for few inputs"),
    "relu-bab": ("verify.exact.relu_bab", "certify", "ReluBaBOptions",
                 "branch and bound over ReLU splits with beta-CROWN: complete for many inputs"),
    "attack": ("verify.attack", "certify", "AttackOptions",
               "PGD attack with random restarts: finds counterexamples (NO or MAYBE, never YES)"),
    "smoothing": ("verify.smoothing.certify", "run", "SmoothingOptions",
                  "randomized smoothing (CERTIFY): certifies the smoothed classifier g at "
                  "confidence 1 - alpha"),
}


def _load(name: str) -> None:
    """Import one built-in certifier's module and register it (on its first use only: the
    modules pull torch, highspy, cvxpy or scipy.stats, which a run of one method never needs
    all of)."""
    import importlib

    module_name, function, options_name, summary = BUILTIN[name]
    module = importlib.import_module(module_name)
    register(name, getattr(module, function), getattr(module, options_name), summary,
             getattr(module, "NORMS", NORMS))


def load_all() -> dict[str, Backend]:
    """Every built-in certifier imported and registered (for listings): the REGISTRY."""
    for name in BUILTIN:
        if name not in REGISTRY:
            _load(name)
    return REGISTRY
