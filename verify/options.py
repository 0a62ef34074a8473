"""Option checks shared by the certifiers and the registry: one-line InputErrors for a setting
that is unknown, mistyped, outside its limits or not one of its choices.

Certifiers import these from here (a leaf of the spine), never from backends.py, which imports
the certifiers: no import cycle.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .errors import InputError


def option_kind(default: Any) -> Optional[str]:
    """What an option with this default takes, in words, or None (not type-checked): a bool
    default takes true or false, an int an integer, a float or None a number."""
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if default is None or isinstance(default, float):
        return "a number"
    return None


def fits(default: Any, value: Any) -> bool:
    """Whether `value` has the type an option with this default takes (a bool is not a number,
    though Python counts it as an int; None defaults take any non-bool value)."""
    if isinstance(default, bool):
        return isinstance(value, (bool, np.bool_))
    if option_kind(default) is None:
        return True
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(default, int):
        return isinstance(value, (int, np.integer))
    return default is None or isinstance(value, (int, float, np.integer, np.floating))


def check_choice(value: Any, allowed: Sequence[str], what: str, owner: str = "") -> None:
    """InputError unless `value` is one of `allowed`: "unknown WHAT 'value' for OWNER: use one
    of ...", for settings passed as plain strings (an options object goes to check_choices)."""
    if value not in allowed:
        where = f" for {owner}" if owner else ""
        raise InputError(f"unknown {what} '{value}'{where}: use one of {', '.join(allowed)}")


def check_choices(options: Any, method: str) -> None:
    """InputError unless each field named in the options class's CHOICES holds one of its
    values (make_options checks them, and certifiers called directly with an options object)."""
    for key, allowed in getattr(type(options), "CHOICES", {}).items():
        value = getattr(options, key)
        if value not in allowed:
            raise InputError(f"option {key} of method '{method}' must be one of "
                             f"{', '.join(allowed)}, got {value!r}")


def within(value: float, rule: str) -> bool:
    """Whether value obeys an options class's LIMITS rule: ">= a", "> a" or "in (a, b]" (any
    of ( [ and ) ])."""
    if rule.startswith("in "):
        low, high = (float(t) for t in rule[4:-1].split(","))
        return (value > low if rule[3] == "(" else value >= low) and \
            (value < high if rule[-1] == ")" else value <= high)
    op, bound = rule.split()
    return value > float(bound) if op == ">" else value >= float(bound)
