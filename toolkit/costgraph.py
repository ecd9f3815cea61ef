"""The cost graph a partition is judged on, and the training delay D(S) of a partition.

Pure data: per-layer device/server delays, pinned layers (with the reason), per-tensor crossing
delays (bytes terms only) and the per-iteration message terms. It is what `splitcut graph
--json` prints and what every solver reads:

    D(S) = sum of device_ms over S + sum of server_ms over the rest
         + sum of crossing_ms of the tensors produced in S and read outside it
         + latency_ms  if any tensor crosses (one message each way per iteration)
         + labels_ms   if a layer producing a model output runs on the server
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from toolkit.memory import ModelMemory, peak_bytes


@dataclass(frozen=True)
class CostTensor:
    name: str
    producer: int
    consumers: tuple[int, ...]
    bytes: float
    crossing_ms: float  # activations up (+ gradients down for float tensors); no latency
    is_float: bool = True  # float tensors carry a gradient back
    per_sample: bool = True  # sent once per sample of a batch (else once per step: weights')


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
    latency_ms: float = 0.0  # per iteration when anything crosses: one latency each way
    labels_ms: float = 0.0  # per iteration when a layer in `outputs` runs on the server
    outputs: list[int] = field(default_factory=list)  # layers producing a model output
    pin_reasons: list[str | None] = field(default_factory=list)  # why each pinned layer is
    notes: list[str] = field(default_factory=list)  # how the model was read (exported batch, ...)
    server_pinned: frozenset[int] = frozenset()  # layers that must run on the server
    memory: ModelMemory | None = None  # training memory terms (`toolkit.memory`), the device's
    server_memory: ModelMemory | None = None  # the server's, where it trains on another
    # backend (`ModelMemory.on`); None: the same as the device's

    def __post_init__(self) -> None:
        """Array views for the vectorised solvers, built once with the graph."""
        self.pinned = np.array(self.pinned, dtype=bool)
        if not self.pin_reasons:
            self.pin_reasons = ["pinned" if p else None for p in self.pinned]
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
    def _by_producer(self) -> tuple[list[int], list[int]]:
        """Tensor indices sorted by producer, and where each layer's run of them starts
        (layer v's are `order[starts[v]:starts[v + 1]]`), as lists: a solver asks for a few
        layers at a time, thousands of times."""
        order = np.argsort(self.tensor_producer, kind="stable")
        starts = np.searchsorted(self.tensor_producer[order], np.arange(len(self) + 1))
        return order.tolist(), starts.tolist()

    @functools.cached_property
    def _pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(tensor, consumer) pairs flattened: the tensor and the consumer of each."""
        lists = [t.consumers for t in self.tensors]
        counts = np.fromiter(map(len, lists), np.int64, len(lists))
        consumers = np.fromiter(itertools.chain.from_iterable(lists), np.int64,
                                int(counts.sum()))
        return np.repeat(np.arange(len(self.tensors)), counts), consumers

    @property
    def tensor_of(self) -> np.ndarray:
        """The tensor of each (tensor, consumer) pair."""
        return self._pairs[0]

    @property
    def consumer_of(self) -> np.ndarray:
        """The consumer of each (tensor, consumer) pair."""
        return self._pairs[1]

    def pairs_of(self, tensors: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """The (tensor, consumer) pairs of a few tensors (no whole-graph arrays built)."""
        pairs = [(j, c) for j in tensors for c in self.tensors[j].consumers]
        found = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        return found[:, 0], found[:, 1]

    def inside(self, layers: Sequence[int] | None = None) -> Inside:
        """The tensors among `layers` (default: all) that a layer among them reads, renumbered
        for a solver over just those layers (tensors read only outside are left out)."""
        n = len(self)
        subset = np.arange(n) if layers is None else np.asarray(layers, dtype=np.int64)
        local = np.full(n, -1, dtype=np.int64)
        local[subset] = np.arange(len(subset))
        if layers is None:
            pair_tensor, pair_consumer = self.tensor_of, self.consumer_of
        else:
            pair_tensor, pair_consumer = self.pairs_of(self.tensors_of(subset.tolist()))
        keep = local[pair_consumer] >= 0
        used, pair_aux = np.unique(pair_tensor[keep], return_inverse=True)
        return Inside(subset, local, used, local[self.tensor_producer[used]],
                      pair_aux.reshape(-1), local[pair_consumer[keep]])

    def crosses(self, device: Collection[int]) -> bool:
        """Whether any tensor goes from `device` to a layer outside it (vectorised)."""
        on = np.zeros(len(self), dtype=bool)
        on[np.fromiter(device, np.int64, len(device))] = True
        return bool((on[self.tensor_producer[self.tensor_of]] & ~on[self.consumer_of]).any())

    def tensors_of(self, layers: Iterable[int]) -> list[int]:
        """Indices of the tensors produced by `layers`, without scanning every tensor."""
        order, starts = self._by_producer
        found: list[int] = []
        for v in layers:
            found.extend(order[starts[v]:starts[v + 1]])
        return found

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def edges(self) -> Iterable[tuple[int, int]]:
        for t in self.tensors:
            for c in t.consumers:
                yield t.producer, c

    def with_pins(self, device: Mapping[int, str] | None = None, server: Iterable[int] = ()
                  ) -> CostGraph:
        """A copy with more pins: `device` layers (with why) kept on the device (a reason
        already there is kept), `server` layers on it. Pins live here, and every solver, the
        validation and the baselines read them from here."""
        pinned = np.array(self.pinned, dtype=bool)
        reasons = list(self.pin_reasons)
        for layer, reason in (device or {}).items():
            if not pinned[layer]:
                pinned[layer], reasons[layer] = True, reason
        return dataclasses.replace(self, pinned=pinned, pin_reasons=reasons,
                                   server_pinned=self.server_pinned | frozenset(server))

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of `splitcut graph --json`."""
        return {
            "model": self.model,
            "scenario": self.scenario,
            "per_iteration_ms": {"latency": self.latency_ms, "labels": self.labels_ms},
            "outputs": [self.names[i] for i in self.outputs],
            "notes": list(self.notes),
            "layers": [
                {
                    "name": self.names[i], "op": self.ops[i],
                    "device_ms": self.device_ms[i], "server_ms": self.server_ms[i],
                    "pinned": "device" if self.pinned[i] else None,
                    "pin_reason": self.pin_reasons[i] if self.pinned[i] else None,
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
                    "bytes": t.bytes, "crossing_ms": t.crossing_ms, "float": t.is_float,
                }
                for t in self.tensors
            ],
        }


@dataclass(frozen=True)
class Inside:
    """`CostGraph.inside`: a subset of layers and the tensors read within it, locally numbered."""

    layers: np.ndarray  # the subset's layer indices, in order
    local: np.ndarray  # per layer of the graph, its position in the subset (-1: outside)
    tensors: np.ndarray  # tensors read by a layer of the subset
    producers: np.ndarray  # each of those tensors' producer, local (-1: outside the subset)
    pair_tensor: np.ndarray  # per (tensor, consumer inside) pair: its position in `tensors`
    pair_consumer: np.ndarray  # and the consumer, local


@dataclass(frozen=True)
class Delay:
    device_compute: float
    server_compute: float
    crossing: float  # the bytes terms of the crossing tensors
    latency: float = 0.0  # per-message latency, both ways, when anything crosses
    labels: float = 0.0  # labels up when the server holds a model output

    @property
    def total(self) -> float:
        return self.device_compute + self.server_compute + self.crossing + self.latency \
            + self.labels


def delay(graph: CostGraph, device: Collection[int]) -> Delay:
    """D(S): device compute of S, server compute of the rest, each crossing tensor once, and
    the per-iteration message terms (module docstring)."""
    on_device = set(device)
    dev = sum(graph.device_ms[i] for i in on_device)
    srv = sum(graph.server_ms[i] for i in range(len(graph)) if i not in on_device)
    crossing = crossing_tensors(graph, on_device)
    cross = sum(t.crossing_ms for t in crossing)
    labels = graph.labels_ms if any(i not in on_device for i in graph.outputs) else 0.0
    return Delay(dev, srv, cross, graph.latency_ms if crossing else 0.0, labels)


def with_ancestors(graph: CostGraph, layers: Iterable[int]) -> set[int]:
    """`layers` and every layer they depend on: the smallest monotone device set holding them."""
    preds: list[list[int]] = [[] for _ in range(len(graph))]
    for u, w in graph.edges():
        preds[w].append(u)
    closed = set(layers)
    stack = list(closed)
    while stack:
        for u in preds[stack.pop()]:
            if u not in closed:
                closed.add(u)
                stack.append(u)
    return closed


def peak_memory(graph: CostGraph, layers: Collection[int],
                side: Literal["device", "server"] = "device") -> float:
    """Peak training memory, in bytes, of the tier that trains `layers` (`toolkit.memory`) on
    the device or the server `side`; 0 when the graph carries no memory terms."""
    memory = graph.server_memory if side == "server" and graph.server_memory is not None \
        else graph.memory
    if memory is None:
        return 0.0
    return peak_bytes(memory, layers, len(graph))


def crossing_tensors(graph: CostGraph, device: Collection[int]) -> list[CostTensor]:
    on_device = set(device)
    return [
        t for t in graph.tensors
        if t.producer in on_device and any(c not in on_device for c in t.consumers)
    ]
