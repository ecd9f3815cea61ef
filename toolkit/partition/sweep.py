"""Every optimal partition across a range of one parameter, exactly: the lower envelope.

With a link rate r swept, every term of a fixed partition's delay is either independent of r
(compute, the latency) or bytes x 8 / r (its crossing tensors, the labels, split-federated
sync), so D_S is affine in x = 1/r and the optimum opt(x) = min over S of D_S(x) is the lower
envelope of finitely many lines: concave and piecewise linear. Eisner and Severance's
recursion finds every piece with one exact solve per piece and one per breakpoint:

- solve at both ends of [xa, xb]; if one partition is optimal at both, it is optimal on the
  whole interval (opt is concave and meets that line at both ends, so it lies on the line);
- else intersect the two lines at xm and solve there: if nothing beats them at xm, xm is the
  breakpoint; if a partition does, its line lies strictly below both at xm: recurse on
  [xa, xm] and [xm, xb] with it.

Each solve finds a new line of the envelope or closes a breakpoint, so at most 2k + 1 solves
for k pieces. The parameter's meaning (1/r), the solver and the delay of a fixed partition
come from the caller; this module only needs them to be exact and affine in x.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Piece(Generic[Key]):
    """On [lo, hi] (in x) the partition `key` is optimal; its delay there is affine."""

    lo: float
    hi: float
    key: Key
    delay_lo: float  # its delay at lo
    delay_hi: float  # ... and at hi


def _close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def lower_envelope(
    x_lo: float, x_hi: float, optimum: Callable[[float], tuple[Key, float]],
    delay: Callable[[Key, float], float], tol: float = 1e-9,
) -> list[Piece[Key]]:
    """The pieces of opt(x) = min over partitions of their delay at x on [x_lo, x_hi], in
    order: `optimum(x)` gives an optimal partition at x and its delay, `delay(key, x)` a
    partition's delay at x (affine in x). Adjacent pieces have different partitions."""
    if not x_lo <= x_hi:
        raise ValueError(f"an empty range: {x_lo} > {x_hi}")
    start, end = optimum(x_lo), optimum(x_hi)
    out: list[tuple[float, float, Key]] = []
    stack = [(x_lo, start[0], x_hi, end[0])]
    while stack:
        xa, ka, xb, kb = stack.pop()
        if ka == kb or xa == xb:
            out.append((xa, xb, ka))
            continue
        da = delay(ka, xa) - delay(kb, xa)  # <= 0: ka is optimal at xa
        db = delay(ka, xb) - delay(kb, xb)  # >= 0: kb is optimal at xb
        scale = max(abs(delay(ka, xa)), abs(delay(kb, xb)), 1.0)
        if abs(db) <= tol * scale:  # ka's line is optimal at both ends
            out.append((xa, xb, ka))
            continue
        if abs(da) <= tol * scale:  # kb's line is
            out.append((xa, xb, kb))
            continue
        xm = xa + da / (da - db) * (xb - xa)
        km, vm = optimum(xm)
        if vm >= delay(ka, xm) - tol * scale or not xa < xm < xb:  # nothing below: a breakpoint
            out += [(xa, xm, ka), (xm, xb, kb)]
            continue
        stack += [(xm, km, xb, kb), (xa, ka, xm, km)]
    out.sort(key=lambda p: (p[0], p[1]))
    merged: list[tuple[float, float, Key]] = []
    for lo, hi, key in out:
        if merged and merged[-1][2] == key:
            merged[-1] = (merged[-1][0], hi, key)
        elif not merged or hi > lo or lo == hi == x_lo == x_hi:
            merged.append((lo, hi, key))
    return [Piece(lo, hi, key, delay(key, lo), delay(key, hi)) for lo, hi, key in merged]


def enumerate_optima(values: Sequence[float], optimum: Callable[[float], tuple[Key, float]]
                     ) -> list[Piece[Key]]:
    """For a parameter the delay is not affine in (the batch: the roofline switches between
    compute- and memory-bound), the optimum at each of `values`, runs of one partition
    joined into a piece."""
    pieces: list[Piece[Key]] = []
    for x in values:
        key, value = optimum(x)
        if pieces and pieces[-1].key == key:
            pieces[-1] = dataclasses.replace(pieces[-1], hi=x, delay_hi=value)
        else:
            pieces.append(Piece(x, x, key, value, value))
    return pieces


def lookup(pieces: Sequence[Piece[Key]], starts: Sequence[float], x: float) -> Piece[Key]:
    """The piece that holds x (the policy for a measured value): a binary search over the
    pieces' starts, O(log k)."""
    if not pieces or not pieces[0].lo <= x <= pieces[-1].hi:
        raise ValueError(f"{float(x):g} lies outside the swept range")
    return pieces[max(0, bisect.bisect_right(starts, x) - 1)]


RATES = ("uplink", "downlink", "rate")  # swept in x = 1/rate; "rate": both ways at once
PARAMETERS = (*RATES, "batch")


@dataclass(frozen=True)
class SweepResult:
    """Every optimal tiering of a model across a parameter's range, as a policy."""

    model: str
    parameter: str  # one of PARAMETERS
    boundary: int  # the chain's boundary whose link is swept (rates)
    tiers: list[str]
    names: list[str]  # the layers
    pieces: list[Piece[tuple[int, ...]]]  # in the parameter's own units, ascending
    crossing: list[list[list[str]]]  # per piece, per boundary: the tensors that cross it
    solves: int
    solve_ms: float
    scenario: dict[str, Any] = field(default_factory=dict)

    @property
    def unit(self) -> str:
        return "samples" if self.parameter == "batch" else "bit/s"

    def policy(self, value: float) -> Piece[tuple[int, ...]]:
        """The optimal tiering at a measured value of the parameter, O(log k)."""
        return lookup(self.pieces, [p.lo for p in self.pieces], value)

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of `splitcut sweep --json` (`toolkit/schemas/sweep.schema.json`):
        the policy, one entry per interval of the parameter."""
        return {
            "model": self.model, "parameter": self.parameter, "unit": self.unit,
            "boundary": self.boundary, "tiers": self.tiers, "scenario": self.scenario,
            "pieces": [{
                "from": p.lo, "to": p.hi,
                "delay_ms": {"from": p.delay_lo, "to": p.delay_hi},
                "tier_of": {name: t for name, t in zip(self.names, p.key, strict=True)},
                "layers_per_tier": [p.key.count(t) for t in range(len(self.tiers))],
                "crossing": [{"from": self.tiers[b], "to": self.tiers[b + 1], "tensors": c}
                             for b, c in enumerate(crossing)],
            } for p, crossing in zip(self.pieces, self.crossing, strict=True)],
            "solver": {"solves": self.solves, "solve_ms": self.solve_ms},
        }
