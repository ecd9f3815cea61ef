"""The cost graph a partition is judged on, and the training delay D(S) of a partition.

Pure data: per-layer device/server delays, pinned layers, and per-tensor crossing delays. It is
what `splitcut graph --json` prints and what every solver reads.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CostTensor:
    name: str
    producer: int
    consumers: tuple[int, ...]
    bytes: float
    crossing_ms: float


@dataclass
class CostGraph:
    """Layers 0..n-1 in topological order; tensors join a producer to its consumers."""

    model: str
    names: list[str]
    ops: list[str]
    device_ms: list[float]
    server_ms: list[float]
    pinned: np.ndarray | list[bool]  # stored as a bool array
    tensors: list[CostTensor]
    scenario: dict[str, Any] = field(default_factory=dict)
    flops: list[float] = field(default_factory=list)
    macs: list[float] = field(default_factory=list)
    params: list[int] = field(default_factory=list)
    raw_upload_ms: float = 0.0  # sending the raw input up once: the server-only reference

    def __post_init__(self) -> None:
        """Array views for the vectorised solvers, built once with the graph."""
        self.pinned = np.array(self.pinned, dtype=bool)
        self.device_arr = np.asarray(self.device_ms, dtype=np.float64)
        self.server_arr = np.asarray(self.server_ms, dtype=np.float64)
        self.tensor_producer = np.fromiter(
            (t.producer for t in self.tensors), np.int64, len(self.tensors)
        )
        self.tensor_crossing = np.fromiter(
            (t.crossing_ms for t in self.tensors), np.float64, len(self.tensors)
        )

    def __len__(self) -> int:
        return len(self.names)

    @functools.cached_property
    def _by_producer(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.tensor_producer, kind="stable")
        return order, self.tensor_producer[order]

    def tensors_of(self, layers: Iterable[int]) -> list[int]:
        """Indices of the tensors produced by `layers`, without scanning every tensor."""
        order, sorted_producers = self._by_producer
        found: list[int] = []
        for v in layers:
            lo, hi = np.searchsorted(sorted_producers, [v, v + 1])
            found.extend(order[lo:hi].tolist())
        return found

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def edges(self) -> Iterable[tuple[int, int]]:
        for t in self.tensors:
            for c in t.consumers:
                yield t.producer, c

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of `splitcut graph --json`."""
        return {
            "model": self.model,
            "scenario": self.scenario,
            "layers": [
                {
                    "name": self.names[i], "op": self.ops[i],
                    "device_ms": self.device_ms[i], "server_ms": self.server_ms[i],
                    "pinned": "device" if self.pinned[i] else None,
                    "flops": self.flops[i] if self.flops else 0,
                    "macs": self.macs[i] if self.macs else 0,
                    "params": self.params[i] if self.params else 0,
                }
                for i in range(len(self))
            ],
            "tensors": [
                {
                    "name": t.name, "producer": self.names[t.producer],
                    "consumers": [self.names[c] for c in t.consumers],
                    "bytes": t.bytes, "crossing_ms": t.crossing_ms,
                }
                for t in self.tensors
            ],
        }


@dataclass(frozen=True)
class Delay:
    device_compute: float
    server_compute: float
    crossing: float

    @property
    def total(self) -> float:
        return self.device_compute + self.server_compute + self.crossing


def delay(graph: CostGraph, device: Collection[int]) -> Delay:
    """D(S): device compute of S, server compute of the rest, and each crossing tensor once."""
    on_device = set(device)
    dev = sum(graph.device_ms[i] for i in on_device)
    srv = sum(graph.server_ms[i] for i in range(len(graph)) if i not in on_device)
    cross = sum(t.crossing_ms for t in crossing_tensors(graph, on_device))
    return Delay(dev, srv, cross)


def crossing_tensors(graph: CostGraph, device: Collection[int]) -> list[CostTensor]:
    on_device = set(device)
    return [
        t for t in graph.tensors
        if t.producer in on_device and any(c not in on_device for c in t.consumers)
    ]
