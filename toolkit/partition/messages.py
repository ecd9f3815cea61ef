"""The per-message latency, added exactly to a solver's answer.

All tensors crossing in one direction travel in one message per iteration, so a partition pays
`latency_ms` (one latency up, one down) once when anything crosses and nothing otherwise:

    D(S) = C(S) + latency_ms * [some tensor crosses S]

where C(S) is what the min cut minimises (compute, bytes terms, labels). Let A = min C(S),
attained by S_A, and B = min C(S) over the partitions across which nothing crosses. If S_A
crosses nothing, D(S_A) = A <= D(S) for every S. Otherwise every crossing S has D(S) >= A +
latency = D(S_A) and every quiet S has D(S) >= B, so the optimum is the better of S_A and the
best quiet partition. Nothing crossing means no data edge joins the two sides: each weakly
connected component of the layer graph lies wholly on one side, so B is a choice per component
(one component in most models: B is then training on the device alone).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from toolkit.costgraph import CostGraph
from toolkit.partition.stcut import CutResult


def with_latency(
    graph: CostGraph, cut: CutResult
) -> CutResult:
    """The optimum of D given `cut`, an optimum of C (module docstring)."""
    if not graph.crosses(cut.device):
        return cut
    crossing = CutResult(cut.device, cut.value + graph.latency_ms, cut.vertices, cut.edges)
    if graph.latency_ms <= 0:
        return crossing
    quiet = quiet_optimum(graph)
    if quiet is not None and quiet[0] <= crossing.value:
        return CutResult(quiet[1], quiet[0], cut.vertices, cut.edges)
    return crossing


def quiet_optimum(
    graph: CostGraph
) -> tuple[float, list[int]] | None:
    """The least C(S) over partitions that send nothing, and its device side (None: none)."""
    n = len(graph)
    producers = graph.tensor_producer[graph.tensor_of]
    adjacency = coo_matrix((np.ones(len(producers)), (producers, graph.consumer_of)), (n, n))
    count, component = connected_components(adjacency, directed=False)
    device = np.bincount(component, graph.device_arr, count)
    server = np.bincount(component, graph.server_arr, count)
    must_device = np.bincount(component, np.asarray(graph.pinned, np.float64), count) > 0
    server_flags = np.zeros(n)
    server_flags[list(graph.server_pinned)] = 1.0
    must_server = np.bincount(component, server_flags, count) > 0
    if (must_device & must_server).any():
        return None
    has_output = np.zeros(count, dtype=bool)
    has_output[component[np.asarray(graph.outputs, dtype=np.int64)]] = True
    free = np.where(must_device, True, np.where(must_server, False, device <= server))
    options = []
    if not (has_output & must_server).any():  # outputs on the device: no labels
        on_device = free | has_output
        options.append((float(np.where(on_device, device, server).sum()), on_device))
    if (has_output & ~free).any():  # the free choice runs an output on the server
        options.append((float(np.where(free, device, server).sum()) + graph.labels_ms, free))
    if not options:
        return None
    value, on_device = min(options, key=lambda o: o[0])
    return value, np.flatnonzero(on_device[component]).tolist()
