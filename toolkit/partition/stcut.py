"""The exact partition as a minimum s-t cut (DESIGN.md, "Exact partition").

s is the device side, t the server side. Layer v: s->v costs server_ms(v) (cut when v runs on
the server), v->t costs device_ms(v). Tensor x of producer u: auxiliary a_x, u->a_x costs
crossing_ms(x), a_x->w infinite for each consumer w, so x is paid once however many consumers
sit on the server. Each data edge u->w adds w->u infinite (a device layer's inputs are on the
device). Pinned layers get s->v infinite; server-pinned layers v->t infinite. The labels term is
a tensor sent by the source itself: s->a_L costs labels_ms, a_L->w infinite for every layer w
producing a model output, so it is paid once when any of them runs on the server.

The cut value is D(S) without the per-message latency (`toolkit.partition.messages` adds it
exactly). The graph is built with PyMaxflow's vectorised calls, one per kind of edge.

Capacities are floats solved by Boykov-Kolmogorov (PyMaxflow, C++, double precision); the
caller recomputes D(S) from scratch (`validate_partition`), so round-off cannot go unnoticed.
"Infinite" is a finite number over twice every finite cut, which also detects infeasibility.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import maxflow
import numpy as np

from toolkit.costgraph import CostGraph
from toolkit.errors import PartitionError

NO_PARTITION = (
    "no valid partition: the pins contradict each other (a server-pinned layer feeds a "
    "device-pinned one, or reads the raw input)"
)


@dataclass(frozen=True)
class CutResult:
    device: list[int]
    value: float
    vertices: int
    edges: int


def general_size(graph: CostGraph) -> tuple[int, int]:
    """Vertices and edges of the general construction over the whole model."""
    consumers = len(graph.consumer_of)
    return len(graph) + len(graph.tensors) + 2, 2 * len(graph) + len(graph.tensors) + 2 * consumers


def min_cut(
    graph: CostGraph,
    server_pinned: Collection[int] = (),
    monotone: bool = True,
    layers: Sequence[int] | None = None,
    device_pinned: Collection[int] = (),
    labels: bool = True,
) -> CutResult:
    """Solve the s-t cut over `layers` (default: all). Tensors leaving the subset are ignored.

    `device_pinned` adds pins to the graph's own (the block-wise solver pins a segment's entry);
    `labels` charges the labels term for the model outputs inside the subset.
    """
    inside = graph.inside(layers)
    subset, local, used = inside.layers, inside.local, inside.tensors
    producers, pair_aux, pair_consumer = inside.producers, inside.pair_tensor, inside.pair_consumer
    crossing = graph.tensor_crossing[used]
    outputs = [int(local[v]) for v in graph.outputs if local[v] >= 0] if labels else []
    label_cost = graph.labels_ms if outputs else 0.0

    m = len(subset)
    source = graph.server_arr[subset].copy()
    sink = graph.device_arr[subset].copy()
    inf = 2.0 * float(source.sum() + sink.sum() + crossing.sum() + label_cost) + 1.0
    source[graph.pinned[subset]] = inf
    for v in device_pinned:
        source[local[v]] = inf
    for v in set(server_pinned) | graph.server_pinned:
        if local[v] >= 0:
            sink[local[v]] = inf

    aux = m + pair_aux.reshape(-1)
    count = m + len(used) + (1 if outputs else 0)
    g = maxflow.Graph[float](count, len(used) + 2 * len(aux) + len(outputs))
    g.add_nodes(count)
    g.add_grid_tedges(np.arange(m), source, sink)
    g.add_edges(producers, m + np.arange(len(used)), crossing, np.zeros(len(used)))
    g.add_edges(aux, pair_consumer, np.full(len(aux), inf), np.zeros(len(aux)))
    edges = 2 * m + len(used) + len(aux)
    if monotone:
        g.add_edges(pair_consumer, producers[pair_aux.reshape(-1)], np.full(len(aux), inf),
                    np.zeros(len(aux)))
        edges += len(aux)
    if outputs:
        label = count - 1
        g.add_tedge(label, label_cost, 0.0)
        g.add_edges(np.full(len(outputs), label), np.asarray(outputs),
                    np.full(len(outputs), inf), np.zeros(len(outputs)))
        edges += 1 + len(outputs)
    value = float(g.maxflow())
    if value > inf / 2:  # every finite cut is below half of `inf`; an infeasible one may
        # come out a rounding below `inf` (the max-flow sums in its own order)
        raise PartitionError(NO_PARTITION)
    sides = g.get_grid_segments(np.arange(m))
    device = subset[~sides].tolist()
    return CutResult(device, value, count + 2, edges)
