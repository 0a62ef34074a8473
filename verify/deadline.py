"""Deadlines: one monotonic end time, checked by any loop that may run long.

A `Deadline` is an end time on `time.monotonic()` (math.inf for none). Code that loops (attack
restarts and steps, alpha-CROWN iterations, BaB branches, LP/MILP rows, smoothing batches) calls
`deadline.check("where")` between steps; past the end time that raises `DeadlineExpired`, which
the caller turns into a MAYBE/unknown "timeout" answer, never into YES or NO.

The deadline in force is context-local, so deep code reads it without a parameter threaded
through every call:

    with deadline.limit(30.0):           # the sooner of this and any enclosing limit
        ...
        deadline.check("alpha-CROWN")    # raises DeadlineExpired once 30 s have passed
        deadline.active().remaining()    # seconds left (math.inf with no limit)

Limits only nest inward: an inner `limit` can shorten the enclosing one, never extend it. A
budget is split between stages with `Deadline.split(fraction)` (a fraction of what remains).
The context is per thread (contextvars): a worker thread starts with no limit unless it enters
one itself.
"""

from __future__ import annotations

import contextvars
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Union


def check_seconds(value: float, name: str = "timeout") -> float:
    """`value`, a finite number of seconds > 0; else InputError naming it (`name`)."""
    from .errors import InputError

    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{name} must be > 0 seconds (a finite number), got {value}")
    return value


class DeadlineExpired(TimeoutError):
    """The active deadline passed; `where` names the loop that noticed."""

    def __init__(self, where: str = ""):
        self.where = where
        super().__init__(f"timeout{' in ' + where if where else ''}")


@dataclass(frozen=True)
class Deadline:
    """An end time on the monotonic clock; `end = math.inf` means no limit."""

    end: float = math.inf

    @classmethod
    def after(cls, seconds: Optional[float]) -> "Deadline":
        """The deadline `seconds` from now; None or inf gives no limit, <= 0 one already past."""
        if seconds is None or seconds == math.inf:
            return cls(math.inf)
        seconds = float(seconds)
        if math.isnan(seconds):
            raise ValueError("a deadline needs a number of seconds, got nan")
        return cls(time.monotonic() + max(seconds, 0.0))

    @classmethod
    def never(cls) -> "Deadline":
        return cls(math.inf)

    @property
    def limited(self) -> bool:
        return self.end != math.inf

    def remaining(self) -> float:
        """Seconds left, >= 0 (math.inf with no limit)."""
        if not self.limited:
            return math.inf
        return max(self.end - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return self.limited and time.monotonic() >= self.end

    def check(self, where: str = "") -> None:
        """Raise `DeadlineExpired(where)` once the end time has passed."""
        if self.limited and time.monotonic() >= self.end:
            raise DeadlineExpired(where)

    def split(self, fraction: float) -> "Deadline":
        """A child deadline after `fraction` (0..1) of the time that remains now."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"a deadline split needs a fraction in [0, 1], got {fraction}")
        if not self.limited:
            return self
        return Deadline(min(self.end, time.monotonic() + fraction * self.remaining()))

    def sooner(self, other: Union["Deadline", float, None]) -> "Deadline":
        """The earlier of this deadline and `other` (a Deadline or seconds from now)."""
        other = other if isinstance(other, Deadline) else Deadline.after(other)
        return self if self.end <= other.end else other


_ACTIVE: contextvars.ContextVar[Deadline] = contextvars.ContextVar(
    "verify_active_deadline", default=Deadline())


def active() -> Deadline:
    """The deadline in force in this context (no limit outside any `limit` block)."""
    return _ACTIVE.get()


def check(where: str = "") -> None:
    """`active().check(where)`: the one line a long loop adds."""
    _ACTIVE.get().check(where)


@contextmanager
def limit(bound: Union[Deadline, float, None]) -> Iterator[Deadline]:
    """Make the sooner of the active deadline and `bound` (Deadline or seconds) active inside."""
    token = _ACTIVE.set(_ACTIVE.get().sooner(bound))
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)
