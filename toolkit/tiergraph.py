"""The cost graph of a tier chain T0 -> T1 -> ... -> Tk-1, and the training delay of a tiering.

A tiering gives every layer a tier; data flows only forward along the chain (the producer's
tier is at most each consumer's), and each layer's pins bound its tier (raw data stays on T0;
a U-shape keeps the model's outputs on its last tier, the device again). Boundary b lies
between T_b and T_b+1. Its delay per iteration (DESIGN.md, "The training-delay model"):

    D = sum over layers v of compute_ms[v, tier(v)]
      + sum over tensors x and boundaries b that x crosses of crossing_ms[x, b]
      + sum over boundaries b that any tensor crosses of latency_ms[b]
      + sum over boundaries b before the highest tier of a model output of labels_ms[b]

A tensor produced on T_i and read as far as T_j crosses every boundary i..j-1 once (relayed),
however many consumers read it. With two tiers this is `CostGraph`'s D(S) term for term
(`TierGraph.from_cost_graph`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.costgraph import CostGraph
from toolkit.errors import PartitionError
from toolkit.memory import ModelMemory, peak_bytes


@dataclass
class TierGraph:
    """Layers 0..n-1 in topological order on a chain of `tiers`; the tensors' structure (and the
    per-layer facts) come from `base`, the first boundary's two-tier cost graph."""

    base: CostGraph
    tiers: list[str]  # tier names in chain order ("device", "edge", "cloud")
    compute_ms: np.ndarray  # layers x tiers: forward + backward + optimizer step
    crossing_ms: np.ndarray  # tensors x boundaries: bytes terms of crossing each boundary
    latency_ms: np.ndarray  # per boundary, paid when anything crosses it (both ways)
    labels_ms: np.ndarray  # per boundary, paid when a model output lies beyond it
    lowest: np.ndarray  # per layer, the lowest tier it may take
    highest: np.ndarray  # per layer, the highest
    scenario: dict[str, Any] = field(default_factory=dict)  # the chain as the JSON writes it
    memories: list[ModelMemory | None] = field(default_factory=list)  # per tier (its
    # processor's backend, `ModelMemory.on`); empty: the base's for every tier

    def __post_init__(self) -> None:
        n, k = len(self.base), len(self.tiers)
        self.compute_ms = np.asarray(self.compute_ms, dtype=np.float64).reshape(n, k)
        self.crossing_ms = np.asarray(self.crossing_ms, dtype=np.float64).reshape(
            len(self.base.tensors), k - 1)
        self.latency_ms = np.asarray(self.latency_ms, dtype=np.float64).reshape(k - 1)
        self.labels_ms = np.asarray(self.labels_ms, dtype=np.float64).reshape(k - 1)
        self.lowest = np.asarray(self.lowest, dtype=np.int64).reshape(n)
        self.highest = np.asarray(self.highest, dtype=np.int64).reshape(n)
        if k < 2:
            raise PartitionError("a tier chain needs at least two tiers")
        for values in (self.compute_ms, self.crossing_ms, self.latency_ms, self.labels_ms):
            if not np.isfinite(values).all() or (values < 0).any():
                raise PartitionError("tier costs must be finite and not negative")

    def __len__(self) -> int:
        return len(self.base)

    def peak_of(self, name: str, layers: Collection[int]) -> float:
        """Peak training memory, in bytes, of the processor of the tiers named `name` (one
        memory however many tiers it takes: a U-shape's head and tail) training `layers`."""
        memory = self.memory_of(name)
        return 0.0 if memory is None else peak_bytes(memory, layers, len(self))

    def memory_of(self, name: str) -> ModelMemory | None:
        """The memory terms of the processor of the tiers named `name`."""
        return self.memories[self.tiers.index(name)] if self.memories else self.base.memory

    @property
    def k(self) -> int:
        return len(self.tiers)

    @property
    def names(self) -> list[str]:
        return self.base.names

    @property
    def outputs(self) -> list[int]:
        return self.base.outputs

    @classmethod
    def from_cost_graph(cls, graph: CostGraph) -> TierGraph:
        """Two tiers, device and server: the same objective as `graph`'s D(S), its pins."""
        lowest = np.zeros(len(graph), dtype=np.int64)
        lowest[list(graph.server_pinned)] = 1
        return cls(graph, ["device", "server"],
                   np.column_stack([graph.device_arr, graph.server_arr]),
                   graph.tensor_crossing.reshape(-1, 1), np.array([graph.latency_ms]),
                   np.array([graph.labels_ms]),
                   lowest, np.where(np.asarray(graph.pinned, dtype=bool), 0, 1),
                   graph.scenario)

    @property
    def u_shape(self) -> bool:
        """Ends on the tier it starts from (device -> server -> device)."""
        return self.tiers[-1] == self.tiers[0]

    def device_alone(self) -> bool:
        """Whether training on the first tier alone is valid: nothing pinned away from it but,
        in a U-shape, the outputs to its last tier (the same device: with nothing on the
        server they need not travel)."""
        away = self.lowest > 0
        if self.u_shape:
            away[self.outputs] &= self.lowest[self.outputs] != self.k - 1
        return not away.any()


@dataclass(frozen=True)
class TierDelay:
    """D of one tiering, term by term."""

    compute: tuple[float, ...]  # per tier
    crossing: tuple[float, ...]  # per boundary: the bytes terms
    latency: tuple[float, ...]  # per boundary
    labels: tuple[float, ...]  # per boundary

    @property
    def total(self) -> float:
        return sum(self.compute) + sum(self.crossing) + sum(self.latency) + sum(self.labels)


def crossed(graph: TierGraph, tier: np.ndarray) -> np.ndarray:
    """tensors x boundaries: whether each tensor crosses each boundary under `tier`."""
    base = graph.base
    reach = np.zeros(len(base.tensors), dtype=np.int64)  # the farthest tier a consumer is on
    np.maximum.at(reach, base.tensor_of, tier[base.consumer_of])
    produced = tier[base.tensor_producer]
    b = np.arange(graph.k - 1)
    flags: np.ndarray = (produced[:, None] <= b) & (b < reach[:, None])
    return flags


def tier_delay(graph: TierGraph, tier: Sequence[int] | np.ndarray) -> TierDelay:
    """D of a valid tiering (`check_tiers` first when it may not be)."""
    tiers = np.asarray(tier, dtype=np.int64)
    compute = np.bincount(tiers, graph.compute_ms[np.arange(len(graph)), tiers], graph.k)
    flags = crossed(graph, tiers)
    crossing = (graph.crossing_ms * flags).sum(axis=0)
    latency = np.where(flags.any(axis=0), graph.latency_ms, 0.0)
    top = max((int(tiers[o]) for o in graph.outputs), default=0)
    labels = np.where(np.arange(graph.k - 1) < top, graph.labels_ms, 0.0)
    return TierDelay(tuple(compute.tolist()), tuple(crossing.tolist()), tuple(latency.tolist()),
                     tuple(labels.tolist()))


def check_tiers(graph: TierGraph, tier: Sequence[int] | np.ndarray) -> TierDelay:
    """Check that `tier` is a valid tiering of `graph` and return its D: one tier per layer
    within its pins (every layer on the first tier when `device_alone` allows it), and no edge
    running backwards along the chain."""
    tiers = np.asarray(tier, dtype=np.int64)
    if tiers.shape != (len(graph),) or ((tiers < 0) | (tiers >= graph.k)).any():
        raise PartitionError("a tiering gives every layer one tier of the chain")
    base = graph.base
    backwards = np.flatnonzero(tiers[base.tensor_producer[base.tensor_of]]
                               > tiers[base.consumer_of])
    if backwards.size:
        j = int(backwards[0])
        u, w = int(base.tensor_producer[base.tensor_of[j]]), int(base.consumer_of[j])
        raise PartitionError(f"invalid tiering: {base.names[u]!r} on {graph.tiers[tiers[u]]} "
                             f"feeds {base.names[w]!r} on {graph.tiers[tiers[w]]}")
    lowest = graph.lowest
    if not tiers.any() and graph.device_alone():
        lowest = np.zeros_like(lowest)  # the device alone (`TierGraph.device_alone`)
    outside = np.flatnonzero((tiers < lowest) | (tiers > graph.highest))
    if outside.size:
        v = int(outside[0])
        raise PartitionError(f"invalid tiering: {base.names[v]!r} must run on tiers "
                             f"{graph.lowest[v]}..{graph.highest[v]}, not {tiers[v]}")
    return tier_delay(graph, tiers)
