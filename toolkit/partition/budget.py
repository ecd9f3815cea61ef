"""The least-delay partition whose device half fits a memory budget, exactly.

Minimising D(S) subject to peak(S) <= B (`toolkit.memory`: the device's state, and at the
worst moment of its backward pass the activations still kept, the gradients made so far and
one layer's buffers) is a min cut with a knapsack-like constraint: NP-hard in general, so this
is exact by construction, not by hope:

- the unconstrained optimum, if it fits, is the answer;
- every device half holds at least the state and gradients of the smallest valid one (the
  pinned layers and their ancestors); above the budget, nothing fits. The peak itself is not
  monotone in the device half (a smaller half can send, and so hold, more), so when nothing
  fits the least achievable peak is found by the same program minimising the peak;
- a Lagrangian bound: peak(S) is at least R(S), the state and gradients of S (the optimizer
  step's moment), which is a sum over layers; for lambda >= 0, min over S of
  D(S) + lambda (R(S) - B) is a min cut with each device delay raised by lambda x R_v, and at
  most the optimum; a bisection on lambda maximises it, and the partitions it meets that fit
  are feasible answers;
- the exact optimum: the integer program of the partition (a 0/1 variable per layer, one per
  tensor for "crosses", one for "anything crosses", one for "the labels travel", one per kept
  tensor for "kept (or held while sent) on the device"; the monotone and pin constraints;
  running sums of kept bytes forward and of gradients backward, and the peak above their sum
  at every position;
  the budget) solved to proven optimality by OR-Tools' CP-SAT in integer units (delays in ns,
  memory in bytes), seeded with the best feasible partition found so far. Its optimality gap
  is reported (0 when proven); the partition is then re-costed, its peak recomputed, and both
  checked against the program's.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.costgraph import CostGraph, delay, peak_memory, with_ancestors
from toolkit.errors import PartitionError
from toolkit.memory import ModelMemory
from toolkit.partition import Partition, checked_partition, solve
from toolkit.partition.baselines import chain_split_delays
from toolkit.partition.stcut import CutResult
from toolkit.partition.tiers import TierPartition, baselines_of, solve_tiers
from toolkit.tiergraph import TierGraph, check_tiers

_NS = 1e6  # integer delay units per ms
_LAMBDA_STEPS = 40


@dataclass(frozen=True)
class Budgeted:
    """The optimum under a device memory budget, and how it was proven."""

    partition: Partition
    budget_bytes: float
    peak_bytes: float  # the device half's peak
    unconstrained_ms: float  # the optimum without the budget
    unconstrained_peak_bytes: float
    lower_bound_ms: float  # the Lagrangian bound
    gap: float  # proven: (delay - best bound) / delay, 0 when optimal
    best_single_split_ms: float | None  # the best prefix that fits (None: none does)
    solve_ms: float

    def to_dict(self) -> dict[str, float | None]:
        return {"budget_bytes": self.budget_bytes, "device_peak_bytes": self.peak_bytes,
                "unconstrained_ms": self.unconstrained_ms,
                "unconstrained_device_peak_bytes": self.unconstrained_peak_bytes,
                "lagrangian_bound_ms": self.lower_bound_ms, "gap": self.gap,
                "best_feasible_single_split_ms": self.best_single_split_ms,
                "solve_ms": self.solve_ms}


def smallest_device(graph: CostGraph) -> list[int]:
    """The smallest valid device half: the pinned layers and their ancestors."""
    return sorted(with_ancestors(graph, np.flatnonzero(graph.pinned).tolist()))


def resident_floor(graph: CostGraph) -> float:
    """A lower bound on every valid device half's peak: the smallest half's state and
    gradients, which every device half holds (the peak itself is not monotone in the half: a
    smaller half can send, and so hold, more)."""
    assert graph.memory is not None
    device = smallest_device(graph)
    return float(sum(graph.memory.state[v] + graph.memory.grads[v] for v in device))


def least_device_peak(graph: CostGraph, time_limit_s: float = 120.0) -> tuple[float, list[int]]:
    """The least peak any valid device half needs, and that half (CP-SAT, proven)."""
    tier, peak, _ = tier_program(TierGraph.from_cost_graph(graph), {"device": math.inf},
                                 None, time_limit_s, least_peak_of="device")
    return peak, np.flatnonzero(tier == 0).tolist()


def _does_not_fit(graph: CostGraph, budget_bytes: float, time_limit_s: float) -> PartitionError:
    least, _ = least_device_peak(graph, time_limit_s)
    return PartitionError(f"no partition fits {_gb(budget_bytes)} on the device: the least any "
                          f"device half needs is {_gb(least)}")


class Infeasible(PartitionError):
    """No tiering fits the memory budgets."""


def solve_with_budget(graph: CostGraph, budget_bytes: float, time_limit_s: float = 120.0
                      ) -> Budgeted:
    """The least-delay valid partition whose device peak memory is at most `budget_bytes`."""
    if graph.memory is None:
        raise PartitionError("this cost graph carries no memory terms")
    start = time.perf_counter()
    free = solve(graph, "general")
    free_peak = peak_memory(graph, free.device)
    if resident_floor(graph) > budget_bytes:
        raise _does_not_fit(graph, budget_bytes, time_limit_s)
    prefix = _best_fitting_prefix(graph, budget_bytes)
    if free_peak <= budget_bytes:
        return Budgeted(free, budget_bytes, free_peak, free.delay.total, free_peak,
                        free.delay.total, 0.0, prefix, _ms(start))
    bound, incumbent = _lagrangian(graph, budget_bytes)
    hint = None if incumbent is None else [0 if v in set(incumbent) else 1
                                           for v in range(len(graph))]
    try:
        tier, objective, gap = tier_program(TierGraph.from_cost_graph(graph),
                                            {"device": budget_bytes}, hint, time_limit_s)
    except Infeasible:
        raise _does_not_fit(graph, budget_bytes, time_limit_s) from None
    device = np.flatnonzero(tier == 0).tolist()
    value = delay(graph, device).total
    if abs(objective - value) > (len(graph) + len(graph.tensors) + 3) / _NS + 1e-9 * value:
        raise PartitionError(f"budget self-check failed: the program says {objective} ms, "
                             f"the partition costs {value} ms")
    result = checked_partition(graph, CutResult(device, value, 0, 0), "budget", _ms(start))
    peak = peak_memory(graph, result.device)
    if peak > budget_bytes * (1 + 1e-12):
        raise PartitionError(f"budget self-check failed: the device half needs {_gb(peak)}")
    return Budgeted(result, budget_bytes, peak, free.delay.total, free_peak,
                    min(bound, result.delay.total), gap, prefix, _ms(start))


def solve_tiers_with_budget(graph: TierGraph, budgets: Mapping[str, float],
                            time_limit_s: float = 120.0) -> TierPartition:
    """The least-delay valid tiering of a chain whose processors fit their memory budgets
    (bytes, by tier name: a name's tiers share one memory), exactly: the unconstrained
    optimum if it fits, else `tier_program`. The result's `memory` says how it was proven."""
    unknown = [name for name in budgets if name not in graph.tiers]
    if unknown:
        raise PartitionError(f"no tier named {unknown[0]!r} to give a memory budget; the "
                             "chain has " + ", ".join(dict.fromkeys(graph.tiers)))
    if graph.base.memory is None:
        raise PartitionError("this cost graph carries no memory terms")
    start = time.perf_counter()
    free = solve_tiers(graph, "general")

    def peaks(tier: np.ndarray) -> dict[str, float]:
        return {name: graph.peak_of(name, [v for v in range(len(graph))
                                           if graph.tiers[int(tier[v])] == name])
                for name in budgets}

    free_peaks = peaks(free.tier)
    if all(free_peaks[name] <= budget for name, budget in budgets.items()):
        result, gap = free, 0.0
    else:
        tier, objective, gap = tier_program(graph, budgets, None, time_limit_s)
        checked = check_tiers(graph, tier)
        if abs(objective - checked.total) > (len(graph) + len(graph.base.tensors) + 3) \
                * graph.k / _NS + 1e-9 * checked.total:
            raise PartitionError(f"budget self-check failed: the program says {objective} "
                                 f"ms, the tiering costs {checked.total} ms")
        result = TierPartition(graph, tier, checked, "budget", 0, 0, _ms(start))
        result.baselines_ms = baselines_of(graph)
    final = peaks(result.tier)
    over = [name for name, budget in budgets.items() if final[name] > budget * (1 + 1e-12)]
    if over:
        raise PartitionError(f"budget self-check failed: {over[0]} needs {_gb(final[over[0]])}")
    result.memory = {"budgets_bytes": dict(budgets), "peaks_bytes": final, "gap": gap,
                     "unconstrained_ms": free.delay.total,
                     "unconstrained_peaks_bytes": free_peaks, "solve_ms": _ms(start)}
    return result


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.3g} GB"


def _best_fitting_prefix(graph: CostGraph, budget_bytes: float) -> float | None:
    """The best single split (a prefix of the topological order on the device) that fits."""
    totals = chain_split_delays(graph)
    fitting = [totals[k] for k in range(len(graph) + 1)
               if np.isfinite(totals[k]) and peak_memory(graph, range(k)) <= budget_bytes]
    return float(min(fitting)) if fitting else None


def _lagrangian(graph: CostGraph, budget_bytes: float) -> tuple[float, list[int] | None]:
    """max over lambda of the relaxed min cut (module docstring), and the best partition met
    that fits the budget."""
    assert graph.memory is not None
    resident = np.asarray(graph.memory.state) + np.asarray(graph.memory.grads)
    best_bound, incumbent, incumbent_ms = -math.inf, None, math.inf

    def relaxed(lam: float) -> float:
        nonlocal best_bound, incumbent, incumbent_ms
        priced = dataclasses.replace(graph, device_ms=list(graph.device_arr + lam * resident))
        cut = solve(priced, "general", with_baselines=False)
        best_bound = max(best_bound, cut.delay.total - lam * budget_bytes)
        if peak_memory(graph, cut.device) <= budget_bytes:
            value = delay(graph, cut.device).total
            if value < incumbent_ms:
                incumbent, incumbent_ms = list(cut.device), value
        return float(resident[cut.device].sum()) - budget_bytes  # a subgradient

    low, high = 0.0, 1e-9  # ms per byte
    while relaxed(high) > 0 and high < 1e3:
        low, high = high, high * 10
    for _ in range(_LAMBDA_STEPS):
        middle = math.sqrt(low * high) if low > 0 else high / 2
        if relaxed(middle) > 0:
            low = middle
        else:
            high = middle
    return best_bound, incumbent


def tier_program(graph: TierGraph, budgets: Mapping[str, float],
                 hint: Sequence[int] | None = None, time_limit_s: float = 120.0,
                 least_peak_of: str | None = None) -> tuple[np.ndarray, float, float]:
    """The integer program of a tiering under memory budgets (module docstring), by CP-SAT:
    each layer's tier, the program's value of it (ms) and the proven relative gap; with
    `least_peak_of` (a name in `budgets`), the tiering that minimises that processor's peak
    instead, and the peak (bytes).
    `budgets` (bytes) are per processor, by tier name: a name's tiers share one memory (a
    U-shape's device head and tail). Tier t of layer v is encoded as z[v][s] = [tier >= s]."""
    from ortools.sat.python import cp_model

    base = graph.base
    n, k = len(graph), graph.k
    model = cp_model.CpModel()
    z = [[model.new_bool_var(f"z{v}_{t}") for t in range(k)] for v in range(n)]  # z[v][0] = 1

    def at_least(v: int, t: int) -> Any:
        return 1 if t <= 0 else 0 if t >= k else z[v][t]

    alone = model.new_bool_var("alone") if graph.u_shape and graph.device_alone() else None
    for v in range(n):
        model.add(z[v][0] == 1)
        for t in range(1, k):
            if t + 1 < k:
                model.add(z[v][t] >= z[v][t + 1])
            if t <= graph.lowest[v]:  # (a U-shape's pins give way when it trains alone)
                model.add(z[v][t] + (alone if alone is not None else 0) >= 1)
            if t > graph.highest[v]:
                model.add(z[v][t] == 0)
        if alone is not None and k > 1:
            model.add(z[v][1] + alone <= 1)
    for u, w in base.edges():
        for t in range(1, k):
            model.add(z[u][t] <= z[w][t])
    terms: list[tuple[int, Any]] = []
    constant = float(graph.compute_ms[:, 0].sum())
    for v in range(n):
        for t in range(1, k):
            terms.append((round((graph.compute_ms[v, t] - graph.compute_ms[v, t - 1]) * _NS),
                          z[v][t]))
    for b in range(k - 1):
        anything = model.new_bool_var(f"any{b}")
        for x, tensor in enumerate(base.tensors):
            crosses = model.new_bool_var(f"y{x}_{b}")
            for c in tensor.consumers:
                model.add(crosses >= z[c][b + 1] - z[tensor.producer][b + 1])
            model.add(anything >= crosses)
            terms.append((round(graph.crossing_ms[x, b] * _NS), crosses))
        terms.append((round(graph.latency_ms[b] * _NS), anything))
        if base.outputs:
            labels = model.new_bool_var(f"labels{b}")
            for o in base.outputs:
                model.add(labels >= z[o][b + 1])
            terms.append((round(graph.labels_ms[b] * _NS), labels))
    peaks = {}
    for name, budget in budgets.items():
        mine = [t for t in range(k) if graph.tiers[t] == name]
        member = [sum(at_least(v, t) - at_least(v, t + 1) for t in mine) for v in range(n)]
        memory = graph.memory_of(name)
        assert memory is not None
        peaks[name] = _peak_within(model, memory, member, budget, name)
    if least_peak_of is not None:
        model.minimize(peaks[least_peak_of])
    else:
        model.minimize(sum(c * var for c, var in terms))
    if hint is not None:
        for v in range(n):
            for t in range(1, k):
                model.add_hint(z[v][t], int(hint[v]) >= t)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = 2
    status = solver.solve(model)
    if status == cp_model.INFEASIBLE:
        raise Infeasible("no tiering fits the memory budgets ("
                             + ", ".join(f"{name} {_gb(b)}" for name, b in budgets.items())
                             + ")")
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise PartitionError(f"the budgeted solve found no tiering within {time_limit_s:g} s")
    tier = np.array([sum(solver.value(z[v][t]) for t in range(1, k)) for v in range(n)],
                    dtype=np.int64)
    scale, offset = (1.0, 0.0) if least_peak_of is not None else (1 / _NS, constant)
    objective = solver.objective_value * scale + offset
    bound = solver.best_objective_bound * scale + offset
    gap = 0.0 if status == cp_model.OPTIMAL else max(0.0, (objective - bound) / objective)
    return tier, objective, gap


def _peak_within(model: Any, memory: ModelMemory, member: Sequence[Any], budget: float,
                 name: str) -> Any:
    """peak(S) <= budget for the layers with member[v] = 1 (`toolkit.memory`): kept tensors,
    running sums of kept bytes forward and of gradients backward, the top over positions.
    Returns peak(S) as an expression (no constraint for an infinite budget)."""
    n = len(member)
    total = math.ceil(sum(x.nbytes for x in memory.saved) + sum(memory.grads)
                      + max(memory.workspace, default=0.0))
    kept_at: list[list[tuple[int, Any]]] = [[] for _ in range(n + 1)]
    for j, kept in enumerate(memory.saved):
        here = model.new_bool_var(f"{name}_kept{j}")
        for v in kept.keepers:
            for r in kept.readers or (None,):  # sent away: while a reader is elsewhere
                model.add(here >= member[v] - (member[r] if r is not None else 0))
        first, last = kept.span(n)
        kept_at[first].append((math.ceil(kept.nbytes), here))
        kept_at[last + 1].append((-math.ceil(kept.nbytes), here))
    peak = model.new_int_var(0, total, f"{name}_peak")
    forward = [model.new_int_var(0, total, f"{name}_kept_to{v}") for v in range(n)]
    backward = [model.new_int_var(0, total, f"{name}_grads_from{v}") for v in range(n)]
    for v in range(n):
        model.add(forward[v] == (forward[v - 1] if v else 0)
                  + sum(b * here for b, here in kept_at[v]))
        model.add(backward[v] == (backward[v + 1] if v + 1 < n else 0)
                  + math.ceil(memory.grads[v]) * member[v])
        model.add(peak >= forward[v] + backward[v] + math.ceil(memory.workspace[v]) * member[v])
    whole = sum(math.ceil(w) * member[v] for v, w in enumerate(memory.state)) + peak
    if math.isfinite(budget):
        model.add(whole <= math.floor(budget))
    return whole
