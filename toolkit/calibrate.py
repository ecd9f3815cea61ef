"""Fit a processor profile's efficiencies and launch overhead to measured forward times. Pure.

The roofline forward time of layer i is max(F_i / (peak·e_class), M_i / (bw·e_mem)) + overhead.
Coordinate descent over log-spaced grids minimises the squared log error of per-model totals
(weight 1) plus per-layer times (weight 1/n per model), so totals come out right and the
per-layer shape follows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from toolkit.costs import efficiency, op_class
from toolkit.graph import LayerGraph
from toolkit.profiles import Processor

_GRIDS = {
    "matmul_efficiency": np.geomspace(1e-4, 1.0, 80),
    "conv_efficiency": np.geomspace(1e-4, 1.0, 80),
    "vector_efficiency": np.geomspace(1e-5, 1.0, 90),
    "memory_efficiency": np.geomspace(1e-3, 1.0, 70),
    "layer_overhead_us": np.concatenate(([0.0], np.geomspace(0.1, 500.0, 59))),
}
_FLOOR_MS = 1e-3


def _objective(procs_estimates: list[np.ndarray], measured: list[np.ndarray]) -> float:
    total = 0.0
    for est, meas in zip(procs_estimates, measured, strict=True):
        total += (np.log(est.sum() / meas.sum())) ** 2
        total += np.mean((np.log(est + _FLOOR_MS) - np.log(meas + _FLOOR_MS)) ** 2)
    return float(total)


@dataclasses.dataclass(frozen=True)
class _Features:
    flops: np.ndarray
    moved: np.ndarray
    classes: list[str]


def _features(graph: LayerGraph) -> _Features:
    layers = list(graph)
    return _Features(
        np.array([x.flops for x in layers], dtype=np.float64),
        np.array([x.in_bytes + x.out_bytes + x.param_bytes for x in layers], dtype=np.float64),
        [op_class(x) for x in layers],
    )


def _estimate(proc: Processor, f: _Features) -> np.ndarray:
    """`costs.forward_ms` for every layer at once (fp32, batch 1)."""
    eff = np.array([efficiency(proc, c) for c in f.classes])
    compute = np.maximum(f.flops / (proc.fp32_tflops * 1e12 * eff),
                         f.moved / (proc.memory_gbps * 1e9 * proc.memory_efficiency))
    return (compute + proc.layer_overhead_us * 1e-6) * 1e3


def estimates(proc: Processor, graph: LayerGraph) -> np.ndarray:
    """Roofline forward ms of every layer at batch 1."""
    return _estimate(proc, _features(graph))


def fit(
    base: Processor, samples: Sequence[tuple[LayerGraph, dict[str, float]]], name: str,
    sweeps: int = 4,
) -> Processor:
    """A copy of `base` with efficiencies and overhead fitted to measured forward ms."""
    measured = [np.array([times[layer.name] for layer in graph]) for graph, times in samples]
    features = [_features(graph) for graph, _ in samples]
    current = base
    for _ in range(sweeps):
        for field, grid in _GRIDS.items():
            scores = []
            for value in grid:
                candidate = _with(current, field, float(value))
                est = [_estimate(candidate, f) for f in features]
                scores.append(_objective(est, measured))
            current = _with(current, field, float(grid[int(np.argmin(scores))]))
    models = ", ".join(graph.name for graph, _ in samples)
    note = f"fitted by splitcut profile --calibrate to measured forward times of {models}"
    return dataclasses.replace(
        current, name=name, description=f"{base.description} (calibrated)",
        sources={**base.sources, **dict.fromkeys(_GRIDS, note)},
    )


def _with(proc: Processor, field: str, value: float) -> Processor:
    values = dataclasses.asdict(proc)
    values[field] = value
    return Processor(**values)


def to_toml(proc: Processor) -> str:
    """A processor profile file, every number with its source."""
    lines = [f'name = "{proc.name}"', f'kind = "{proc.kind}"',
             f'description = "{proc.description}"']
    numbers = [f.name for f in dataclasses.fields(proc)
               if f.name not in ("name", "kind", "description", "sources")]
    lines += [f"{key} = {getattr(proc, key)!r}" for key in numbers]
    lines += ["", "[sources]"]
    lines += [f'{key} = "{proc.sources.get(key, "")}"' for key in numbers]
    return "\n".join(lines) + "\n"
