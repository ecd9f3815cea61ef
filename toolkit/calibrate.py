"""Fit a processor profile's efficiencies and launch overhead to measured forward times. Pure.

The roofline forward time of layer i is max(F_i / (peak·e_class), M_i / (bw·e_mem)) + overhead.
Coordinate descent over log-spaced grids minimises the squared log error of per-model totals
(weight 1) plus per-layer times (weight 1/n per model), so totals come out right and the
per-layer shape follows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from toolkit.costs import Scenario, efficiency, layer_ms, op_class, pass_ms, peak_flops
from toolkit.graph import Layer, LayerGraph
from toolkit.profiles import Processor

_GRIDS = {
    "matmul_efficiency": np.geomspace(1e-4, 1.0, 80),
    "conv_efficiency": np.geomspace(1e-4, 1.0, 80),
    "vector_efficiency": np.geomspace(1e-5, 1.0, 90),
    "memory_efficiency": np.geomspace(1e-3, 1.0, 70),
    "layer_overhead_us": np.concatenate(([0.0], np.geomspace(0.1, 500.0, 59))),
}
_TENSOR_CORE_GRIDS = {
    **_GRIDS,
    # PyTorch runs FP32 convolutions on TF32 tensor cores by default (up to ~7x the FP32
    # peak); FP32 matmuls stay on CUDA cores unless the user allows TF32
    "conv_efficiency": np.geomspace(1e-4, 8.0, 90),
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
    half: np.ndarray  # computes on 16-bit floats: the fp16 peak (`Layer.half`)


def _features(graph: LayerGraph) -> _Features:
    layers = list(graph)
    return _Features(
        np.array([x.flops for x in layers], dtype=np.float64),
        np.array([x.in_bytes + x.out_bytes + x.param_bytes for x in layers], dtype=np.float64),
        [op_class(x) for x in layers],
        np.array([x.half for x in layers], dtype=bool),
    )


def _estimate(proc: Processor, f: _Features) -> np.ndarray:
    """`costs.forward_ms` for every layer at once (fp32, batch 1)."""
    eff = np.array([efficiency(proc, c) for c in f.classes])
    estimate: np.ndarray = pass_ms(f.flops, f.moved, peak_flops(proc, "fp32", f.half) * eff,
                                   proc.memory_gbps * 1e9 * proc.memory_efficiency,
                                   proc.layer_overhead_us)
    return estimate


def estimates(proc: Processor, graph: LayerGraph) -> np.ndarray:
    """Roofline forward ms of every layer at batch 1."""
    return _estimate(proc, _features(graph))


def fit(
    base: Processor, samples: Sequence[tuple[LayerGraph, dict[str, float]]], name: str,
    sweeps: int = 4, kind: str | None = None, machine: str | None = None,
) -> Processor:
    """A copy of `base` with efficiencies and overhead fitted to measured forward ms; `kind`
    and `machine` (what was measured) name the processor it now stands for."""
    measured = [np.array([times[layer.name] for layer in graph]) for graph, times in samples]
    features = [_features(graph) for graph, _ in samples]
    fitted = _descend(
        base, lambda proc: _objective([_estimate(proc, f) for f in features], measured), sweeps)
    models = ", ".join(graph.name for graph, _ in samples)
    return _named(fitted, base, name, f"fitted by splitcut profile --calibrate to measured "
                                      f"forward times of {models}", kind,
                  None if machine is None else f"{machine} (efficiencies fitted to measured "
                  f"forward times; peak rates kept from {base.name})")


def training_ms(
    proc: Processor, layers: Iterable[Layer], batch: int, precision: str = "fp32"
) -> float:
    """Forward + backward of these layers on `proc`, as the cost model charges them."""
    scenario = Scenario(proc, proc, 1.0, 1.0, 0.0, batch=batch, precision=precision)
    return sum(layer_ms(layer, proc, scenario) for layer in layers)


def fit_training(
    base: Processor, samples: Sequence[tuple[LayerGraph, int, float]], name: str, note: str,
    sweeps: int = 3,
) -> Processor:
    """A copy of `base` fitted to measured fp32 training steps: (graph, batch, step ms).

    The convolution efficiency may exceed 1: it is relative to the FP32 peak, and PyTorch
    runs FP32 convolutions on TF32 tensor cores by default."""
    def objective(proc: Processor) -> float:
        return sum(float(np.log(training_ms(proc, graph, batch) / ms)) ** 2
                   for graph, batch, ms in samples)

    return _named(_descend(base, objective, sweeps, _TENSOR_CORE_GRIDS), base, name, note)


def _descend(
    base: Processor, objective: Callable[[Processor], float], sweeps: int,
    grids: dict[str, np.ndarray] = _GRIDS,
) -> Processor:
    """Coordinate descent over log-spaced grids."""
    current = base
    for _ in range(sweeps):
        for field, grid in grids.items():
            scores = [objective(_with(current, field, float(value))) for value in grid]
            current = _with(current, field, float(grid[int(np.argmin(scores))]))
    return current


def _named(fitted: Processor, base: Processor, name: str, note: str, kind: str | None = None,
           description: str | None = None) -> Processor:
    """The fitted copy named for what it stands for; a profile of another machine
    (`description` given) does not keep the base's memory size, which is not its own."""
    sources = {**base.sources, **dict.fromkeys(_GRIDS, note)}
    if description is not None:
        sources.pop("memory_gb", None)
    return dataclasses.replace(
        fitted, name=name, kind=kind or base.kind,
        description=description or f"{base.description} (calibrated)", sources=sources,
        memory_gb=fitted.memory_gb if description is None else None,
    )


def _with(proc: Processor, field: str, value: float) -> Processor:
    values = dataclasses.asdict(proc)
    values[field] = value
    return Processor(**values)


def to_toml(proc: Processor) -> str:
    """A processor profile file, every number with its source, and where PyTorch trains on
    it (`backend`)."""
    lines = [f'name = "{proc.name}"', f'kind = "{proc.kind}"',
             f'description = "{proc.description}"']
    numbers = [f.name for f in dataclasses.fields(proc)
               if f.name not in ("name", "kind", "description", "sources", "backend")
               and getattr(proc, f.name) is not None]
    lines += [f"{key} = {getattr(proc, key)!r}" for key in numbers]
    lines.append(f'backend = "{proc.backend}"')
    lines += ["", "[sources]"]
    lines += [f'{key} = "{proc.sources.get(key, "")}"' for key in numbers]
    if "backend" in proc.sources:
        lines.append(f'backend = "{proc.sources["backend"]}"')
    return "\n".join(lines) + "\n"
