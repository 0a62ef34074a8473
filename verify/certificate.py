"""Status and Certificate: the one answer every certifier gives.

- YES: proved; every margin lower bound is > 0 (for smoothing: of the smoothed classifier g, at
  confidence 1 - alpha).
- NO: `counterexample` is an input inside the set whose float64 forward pass violates a row.
- MAYBE: neither; `reason` says why (loose relaxation, timeout, abstain, ...).

`margin_lower[j]` <= min over the set of (z_label - z_j) <= `margin_upper[j]`; None at the label.
JSON: `to_dict()` / `from_dict()` round-trip; non-finite floats are written as "inf", "-inf",
"nan" so that the output stays valid JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any, Optional


class Status(str, Enum):
    YES = "YES"
    NO = "NO"
    MAYBE = "MAYBE"

    def __str__(self) -> str:
        return self.value


@dataclass
class Certificate:
    status: Status
    method: str
    label: Optional[int]
    norm: str
    eps: float
    margin_lower: list[Optional[float]]
    margin_upper: list[Optional[float]]
    counterexample: Optional[list[float]] = None
    counterexample_logits: Optional[list[float]] = None
    radius: Optional[float] = None
    confidence: float = 1.0
    reason: str = ""
    time_s: float = 0.0
    domain: Optional[list] = None  # [low, high] as numbers, or as lists when they vary
    model: str = ""  # Network fingerprint
    certifies: str = "f"  # "f": the network itself; "g": a smoothed classifier
    cost: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    @property
    def proved(self) -> bool:
        return self.status is Status.YES

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status.value
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Certificate":
        known = {f.name for f in fields(cls)}
        return cls(**{k: _decode(v) if k in _NUMERIC_FIELDS else v
                      for k, v in data.items() if k in known})

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "Certificate":
        return cls.from_dict(json.loads(text))

    def __str__(self) -> str:
        norm = {"inf": "l_inf", "2": "l_2", "1": "l_1"}.get(self.norm, self.norm)
        head = f"{self.status.value:5s}  method {self.method}"
        if self.model:
            head += f", model {self.model}"
        threat = f"label {self.label}, {norm} ball of radius {self.eps:g}"
        if self.domain is not None:
            lo, hi = self.domain
            threat += (f" ∩ [{lo:g}, {hi:g}]" if not isinstance(lo, list)
                       else " ∩ per-feature domain")
        if self.certifies == "g":
            threat += f", smoothed classifier g at confidence {self.confidence:g}"
        lines = [head, threat]
        if self.reason:
            lines.append(f"reason: {self.reason}")
        lines.append(f"{'class':>5s}  {'margin_lower':>13s}  {'margin_upper':>13s}")
        for j, (lo, up) in enumerate(zip(self.margin_lower, self.margin_upper)):
            if j == self.label:
                lines.append(f"{j:5d}  {'(label)':>13s}  {'':>13s}")
            else:
                lines.append(f"{j:5d}  {_fmt(lo):>13s}  {_fmt(up):>13s}")
        if self.radius is not None:
            lines.append(f"certified radius: {self.radius:.6g}")
        if self.counterexample is not None:
            lines.append("counterexample: " + _short(self.counterexample))
        cost = ", ".join(f"{k} {v}" for k, v in self.cost.items())
        lines.append(f"time {self.time_s:.4f} s" + (f" ({cost})" if cost else ""))
        return "\n".join(lines)


_NUMERIC_FIELDS = {"eps", "margin_lower", "margin_upper", "counterexample", "counterexample_logits",
                   "radius", "confidence", "time_s", "domain"}


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.6g}"


def _short(values: list[float], k: int = 8) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:k])
    return f"[{shown}{', ...' if len(values) > k else ''}] ({len(values)} values)"


def json_safe(value: Any) -> Any:
    """Floats made JSON-safe (inf/nan as strings), recursively; numpy scalars as Python."""
    if isinstance(value, float):
        return value if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                   ("inf" if value > 0 else "-inf"))
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalars
        return json_safe(value.item())
    return value


def _decode(value: Any) -> Any:
    if value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value
