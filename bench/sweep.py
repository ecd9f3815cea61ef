"""Sweeps in docs/benchmarks.md: every optimal partition across the link rate on the zoo, checked
against dense sampling, and the policy it gives used on a changing link."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from toolkit import api
from toolkit.costgraph import delay
from toolkit.costs import BUILTIN_SCENARIOS, Scenario, build_cost_graph
from toolkit.graph import LayerGraph
from toolkit.partition import solve
from toolkit.partition.baselines import chain_split_delays
from toolkit.partition.sweep import SweepResult

SCENARIO = "nano-3090-wifi5"
LOW, HIGH = 1e6, 10e9  # the swept link rate, both ways
SAMPLES = 200  # dense check per model (tests/test_sweep.py samples 2,000 on three models)
TRACE_LOW, TRACE_HIGH, STEPS = 5e6, 200e6, 1000  # the changing link of the replay


def _scenario() -> Scenario:
    return dataclasses.replace(api.make_scenario(**BUILTIN_SCENARIOS[SCENARIO]), link=None)


def _at(scenario: Scenario, rate: float) -> Scenario:
    return dataclasses.replace(scenario, uplink_bps=rate, downlink_bps=rate)


def _envelope_delay(result: SweepResult, rate: float) -> float:
    """The policy's delay at `rate`: its piece's line, affine in 1/rate."""
    p = result.policy(rate)
    if p.lo == p.hi:
        return p.delay_lo
    t = (1 / rate - 1 / p.lo) / (1 / p.hi - 1 / p.lo)
    return p.delay_lo + (p.delay_hi - p.delay_lo) * t


def envelope_rows(models: dict[str, LayerGraph]) -> list[list[str]]:
    """Per model: the sweep's intervals, solves and time, against SAMPLES independent solves
    (the two-sided general solver on a cost graph built afresh at each rate): whether every
    sampled optimum lies on the envelope, and how much time the sampling took."""
    scenario = _scenario()
    rows = []
    for name, graph in models.items():
        start = time.perf_counter()
        result = api.sweep_model(graph, scenario, "rate", LOW, HIGH)
        sweep_ms = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        worst = 0.0
        for rate in np.geomspace(LOW, HIGH, SAMPLES):
            best = solve(build_cost_graph(graph, _at(scenario, float(rate))), "general",
                         with_baselines=False).delay.total
            worst = max(worst, abs(_envelope_delay(result, float(rate)) - best) / best)
        dense_ms = (time.perf_counter() - start) * 1e3
        rows.append([name, str(len(graph)), str(len(result.pieces)), str(result.solves),
                     f"{sweep_ms:.0f}", f"{dense_ms:.0f}",
                     "yes" if worst < 1e-9 else f"NO ({worst:.1e})"])
    return rows


def random_walk(seed: int = 0) -> np.ndarray:
    """A link rate drifting between TRACE_LOW and TRACE_HIGH: a random walk in log-rate,
    reflected at the ends, one step per training iteration."""
    rng = np.random.default_rng(seed)
    low, high = np.log(TRACE_LOW), np.log(TRACE_HIGH)
    x = np.empty(STEPS)
    x[0] = (low + high) / 2
    for t in range(1, STEPS):
        step = x[t - 1] + rng.normal(0, 0.15)
        x[t] = low + abs(step - low) if step < low else high - abs(step - high) \
            if step > high else step
    return np.asarray(np.exp(x))


def replay_rows(models: dict[str, LayerGraph], trace: np.ndarray) -> list[list[str]]:
    """Per model, the mean delay per iteration over the trace: re-partitioning from the sweep's
    table at every step (the exact optimum each time, a lookup); the best fixed partition in
    hindsight (sum over the trace of a + b/r_t is minimised at the mean of 1/r: one solve);
    and Neurosurgeon's best single split re-chosen at every step."""
    scenario = _scenario()
    rows = []
    for name, graph in models.items():
        result = api.sweep_model(graph, scenario, "rate", float(trace.min()), float(trace.max()))
        start = time.perf_counter()
        policy = np.array([_envelope_delay(result, float(r)) for r in trace])
        lookup_us = (time.perf_counter() - start) / len(trace) * 1e6
        hindsight = api.partition_model(graph, _at(scenario, float(1 / np.mean(1 / trace))))
        fixed_keys = set(hindsight.device)
        fixed = np.array([_fixed_delay(graph, scenario, fixed_keys, float(r))
                          for r in (trace.min(), trace.max())])
        x = 1 / trace
        fixed_trace = fixed[0] + (fixed[1] - fixed[0]) * (x - x.max()) / (x.min() - x.max())
        low, high = (chain_split_delays(build_cost_graph(graph, _at(scenario, float(r))))
                     for r in (trace.min(), trace.max()))
        valid = np.isfinite(low)  # (the same prefixes at every rate)
        per_split = low[valid, None] + (high[valid] - low[valid])[:, None] \
            * ((x - x.max()) / (x.min() - x.max()))[None, :]
        neurosurgeon = per_split.min(axis=0)
        rows.append([name, str(len(result.pieces)), f"{policy.mean():.1f}",
                     f"{fixed_trace.mean():.1f}", f"{neurosurgeon.mean():.1f}",
                     _percent(1 - policy.mean() / fixed_trace.mean()),
                     _percent(1 - policy.mean() / neurosurgeon.mean()),
                     f"{lookup_us:.1f}"])
    return rows


def _fixed_delay(graph: LayerGraph, scenario: Scenario, device: set[int], rate: float) -> float:
    return delay(build_cost_graph(graph, _at(scenario, rate)), device).total


def _percent(fraction: float) -> str:
    return f"{round(fraction * 100, 1) + 0.0:.1f}%"  # (no "-0.0%")
