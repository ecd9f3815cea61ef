"""The exact partition as a minimum s-t cut (DESIGN.md, "Exact partition").

s is the device side, t the server side. Layer v: s->v costs server_ms(v) (cut when v runs on
the server), v->t costs device_ms(v). Tensor x of producer u: auxiliary a_x, u->a_x costs
crossing_ms(x), a_x->w infinite for each consumer w, so x is paid once however many consumers
sit on the server. Each data edge u->w adds w->u infinite (a device layer's inputs are on the
device). Pinned layers get s->v infinite; server-pinned layers v->t infinite.

Capacities are floats solved by Boykov-Kolmogorov (PyMaxflow, C++, double precision); the
caller recomputes D(S) from scratch (`validate_partition`), so round-off cannot go unnoticed.
"Infinite" is a finite number larger than every finite cut, which also detects infeasibility.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import maxflow
import numpy as np

from toolkit.costgraph import CostGraph
from toolkit.errors import PartitionError


@dataclass(frozen=True)
class CutResult:
    device: list[int]
    value: float
    vertices: int
    edges: int


def general_size(graph: CostGraph) -> tuple[int, int]:
    """Vertices and edges of the general construction over the whole model."""
    consumers = sum(len(t.consumers) for t in graph.tensors)
    return len(graph) + len(graph.tensors) + 2, 2 * len(graph) + len(graph.tensors) + 2 * consumers


def infinity(graph: CostGraph, layers: Sequence[int], tensors: Sequence[int]) -> float:
    """A capacity no finite cut can reach: twice the sum of every finite capacity, plus one."""
    idx = np.asarray(layers, dtype=np.int64)
    finite = graph.device_arr[idx].sum() + graph.server_arr[idx].sum()
    finite += graph.tensor_crossing[np.asarray(tensors, dtype=np.int64)].sum()
    return 2.0 * float(finite) + 1.0


def min_cut(
    graph: CostGraph,
    server_pinned: Collection[int] = (),
    monotone: bool = True,
    layers: Sequence[int] | None = None,
    device_pinned: Collection[int] = (),
) -> CutResult:
    """Solve the s-t cut over `layers` (default: all). Tensors leaving the subset are ignored.

    `device_pinned` adds pins to the graph's own (the block-wise solver pins a segment's entry).
    """
    subset = list(range(len(graph))) if layers is None else list(layers)
    local = {v: k for k, v in enumerate(subset)}
    produced = range(len(graph.tensors)) if layers is None else graph.tensors_of(subset)
    tensors = [
        (graph.tensors[j], [local[c] for c in graph.tensors[j].consumers if c in local])
        for j in produced
    ]
    tensors = [(t, cs) for t, cs in tensors if cs]
    inf = infinity(graph, subset, produced)
    g = maxflow.Graph[float](len(subset) + len(tensors), 2 * len(tensors) + len(subset))
    g.add_nodes(len(subset) + len(tensors))
    edges = 0
    server_only = set(server_pinned)
    device_only = set(device_pinned)
    for v, k in local.items():
        to_server = inf if v in server_only else graph.device_ms[v]
        from_device = inf if graph.pinned[v] or v in device_only else graph.server_ms[v]
        g.add_tedge(k, from_device, to_server)
        edges += 2
    aux = len(subset)
    for t, consumers in tensors:
        u = local[t.producer]
        g.add_edge(u, aux, t.crossing_ms, 0.0)
        for w in consumers:
            g.add_edge(aux, w, inf, 0.0)
            if monotone:
                g.add_edge(w, u, inf, 0.0)
                edges += 1
            edges += 1
        edges += 1
        aux += 1
    value = float(g.maxflow())
    if value >= inf:
        raise PartitionError(
            "no valid partition: the pins contradict each other (a server-pinned layer feeds a "
            "device-pinned one, or reads the raw input)"
        )
    device = [v for v, k in local.items() if g.get_segment(k) == 0]
    return CutResult(device, value, len(subset) + len(tensors) + 2, edges)
