"""The least-delay partition whose device half fits a memory budget, exactly.

Minimising D(S) subject to peak(S) <= B (`toolkit.memory`: the device's state, and at the
worst moment of its backward pass the activations still kept, the gradients made so far and
one layer's buffers) is a min cut with a knapsack-like constraint: NP-hard in general, so this
is exact by construction, not by hope:

- the unconstrained optimum, if it fits, is the answer;
- the smallest achievable peak is that of the smallest valid device half (the pinned layers
  and their ancestors: memory only grows with the device set); above the budget, nothing
  fits;
- a Lagrangian bound: peak(S) is at least R(S), the state and gradients of S (the optimizer
  step's moment), which is a sum over layers; for lambda >= 0, min over S of
  D(S) + lambda (R(S) - B) is a min cut with each device delay raised by lambda x R_v, and at
  most the optimum; a bisection on lambda maximises it, and the partitions it meets that fit
  are feasible answers;
- the exact optimum: the integer program of the partition (a 0/1 variable per layer, one per
  tensor for "crosses", one for "anything crosses", one for "the labels travel", one per kept
  tensor for "kept on the device"; the monotone and pin constraints; running sums of kept
  bytes forward and of gradients backward, and the peak above their sum at every position;
  the budget) solved to proven optimality by OR-Tools' CP-SAT in integer units (delays in ns,
  memory in bytes), seeded with the best feasible partition found so far. Its optimality gap
  is reported (0 when proven); the partition is then re-costed, its peak recomputed, and both
  checked against the program's.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np

from toolkit.costgraph import CostGraph, delay, peak_memory
from toolkit.errors import PartitionError
from toolkit.partition import Partition, checked_partition, solve
from toolkit.partition.baselines import chain_split_delays
from toolkit.partition.stcut import CutResult

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
    preds: list[set[int]] = [set() for _ in range(len(graph))]
    for u, w in graph.edges():
        preds[w].add(u)
    device = {i for i in range(len(graph)) if graph.pinned[i]}
    stack = list(device)
    while stack:
        for u in preds[stack.pop()] - device:
            device.add(u)
            stack.append(u)
    return sorted(device)


def solve_with_budget(graph: CostGraph, budget_bytes: float, time_limit_s: float = 120.0
                      ) -> Budgeted:
    """The least-delay valid partition whose device peak memory is at most `budget_bytes`."""
    if graph.memory is None:
        raise PartitionError("this cost graph carries no memory terms")
    start = time.perf_counter()
    free = solve(graph, "general")
    free_peak = peak_memory(graph, free.device)
    smallest = peak_memory(graph, smallest_device(graph))
    if smallest > budget_bytes:
        raise PartitionError(
            f"no partition fits {_gb(budget_bytes)} on the device: the smallest device half "
            f"(the layers that read raw data and their inputs) needs {_gb(smallest)}")
    prefix = _best_fitting_prefix(graph, budget_bytes)
    if free_peak <= budget_bytes:
        return Budgeted(free, budget_bytes, free_peak, free.delay.total, free_peak,
                        free.delay.total, 0.0, prefix, _ms(start))
    bound, incumbent = _lagrangian(graph, budget_bytes)
    device, objective, gap = _exact(graph, budget_bytes, incumbent, time_limit_s)
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


def _exact(graph: CostGraph, budget_bytes: float, hint: list[int] | None,
           time_limit_s: float) -> tuple[list[int], float, float]:
    """The integer program (module docstring) by CP-SAT: the device layers, the program's
    value of them (ms) and the proven relative gap."""
    from ortools.sat.python import cp_model

    n = len(graph)
    model = cp_model.CpModel()
    x = [model.new_bool_var(f"x{i}") for i in range(n)]
    for i in range(n):
        if graph.pinned[i]:
            model.add(x[i] == 1)
    for i in graph.server_pinned:
        model.add(x[i] == 0)
    for u, w in graph.edges():
        model.add(x[w] <= x[u])
    terms: list[tuple[int, cp_model.IntVar]] = []
    constant = sum(graph.server_ms)
    for i in range(n):
        terms.append((round((graph.device_ms[i] - graph.server_ms[i]) * _NS), x[i]))
    anything = model.new_bool_var("anything_crosses")
    for k, t in enumerate(graph.tensors):
        crosses = model.new_bool_var(f"y{k}")
        for c in t.consumers:
            model.add(crosses >= x[t.producer] - x[c])
        model.add(anything >= crosses)
        terms.append((round(t.crossing_ms * _NS), crosses))
    terms.append((round(graph.latency_ms * _NS), anything))
    if graph.outputs:
        labels = model.new_bool_var("labels_travel")
        for o in graph.outputs:
            model.add(labels >= 1 - x[o])
        terms.append((round(graph.labels_ms * _NS), labels))
    assert graph.memory is not None
    memory = graph.memory
    total = math.ceil(sum(x.nbytes for x in memory.saved) + sum(memory.grads)
                      + max(memory.workspace, default=0.0))
    kept_at: list[list[tuple[int, cp_model.IntVar]]] = [[] for _ in range(n)]
    for k, kept in enumerate(memory.saved):
        on_device = model.new_bool_var(f"kept{k}")
        for i in kept.keepers:
            model.add(on_device >= x[i])
        kept_at[kept.keepers[0]].append((math.ceil(kept.nbytes), on_device))
    peak = model.new_int_var(0, total, "peak_moment")
    forward = [model.new_int_var(0, total, f"kept_to{i}") for i in range(n)]
    backward = [model.new_int_var(0, total, f"grads_from{i}") for i in range(n)]
    for i in range(n):
        model.add(forward[i] == (forward[i - 1] if i else 0)
                  + sum(b * v for b, v in kept_at[i]))
        model.add(backward[i] == (backward[i + 1] if i + 1 < n else 0)
                  + math.ceil(memory.grads[i]) * x[i])
        model.add(peak >= forward[i] + backward[i] + math.ceil(memory.workspace[i]) * x[i])
    model.add(sum(math.ceil(w) * x[i] for i, w in enumerate(memory.state)) + peak
              <= math.floor(budget_bytes))
    model.minimize(sum(c * v for c, v in terms))
    if hint is not None:
        chosen = set(hint)
        for i in range(n):
            model.add_hint(x[i], i in chosen)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = 2
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise PartitionError(f"the budgeted solve found no partition within {time_limit_s:g} s")
    device = [i for i in range(n) if solver.value(x[i])]
    objective = solver.objective_value / _NS + constant
    bound = solver.best_objective_bound / _NS + constant
    gap = 0.0 if status == cp_model.OPTIMAL else max(0.0, (objective - bound) / objective)
    return device, objective, gap
