"""Baselines judged under the same cost model: local training, raw upload, one split point, DADS."""

from __future__ import annotations

from collections.abc import Collection

from toolkit.costgraph import CostGraph, delay
from toolkit.partition.stcut import min_cut


def device_only(graph: CostGraph) -> float:
    """Local training: every layer on the device, nothing crosses."""
    return sum(graph.device_ms)


def server_only(graph: CostGraph) -> float:
    """Reference only: raw data uploaded (split learning forbids it), all layers on the server,
    labels up with the data."""
    return sum(graph.server_ms) + graph.raw_upload_ms + (graph.labels_ms if graph.outputs else 0)


def best_chain_split(graph: CostGraph, server_pinned: Collection[int] = ()) -> tuple[float, int]:
    """Neurosurgeon-style: the best prefix of the topological order on the device.

    Returns (delay, k) where the first k layers run on the device. Every prefix is monotone;
    prefixes leaving a pinned layer on the server are skipped. Incremental: O(V + E).
    """
    n = len(graph)
    first = max((i + 1 for i in range(n) if graph.pinned[i]), default=0)
    last = min(server_pinned, default=n)
    last_consumer = [max(t.consumers) for t in graph.tensors]
    opened: list[list[int]] = [[] for _ in range(n)]  # tensors whose producer is layer i
    closed: list[list[int]] = [[] for _ in range(n + 1)]  # tensors fully on device at prefix k
    for j, t in enumerate(graph.tensors):
        opened[t.producer].append(j)
        closed[last_consumer[j] + 1].append(j)
    last_output = max(graph.outputs, default=-1)
    dev, srv, cross, crossing = 0.0, sum(graph.server_ms), 0.0, 0
    best = (float("inf"), 0)
    for k in range(0, n + 1):
        if k > 0:
            dev += graph.device_ms[k - 1]
            srv -= graph.server_ms[k - 1]
            cross += sum(graph.tensors[j].crossing_ms for j in opened[k - 1])
            crossing += len(opened[k - 1])
        cross -= sum(graph.tensors[j].crossing_ms for j in closed[k])
        crossing -= len(closed[k])
        total = dev + srv + cross + (graph.latency_ms if crossing else 0.0) \
            + (graph.labels_ms if last_output >= k else 0.0)
        if first <= k <= last and total < best[0]:
            best = (total, k)
    return best


def dads_repaired(graph: CostGraph, server_pinned: Collection[int] = ()) -> float:
    """DADS: min cut without the monotone edges, then every device layer's ancestors moved in."""
    cut = min_cut(graph, server_pinned, monotone=False)
    device = set(cut.device)
    preds: list[list[int]] = [[] for _ in range(len(graph))]
    for u, w in graph.edges():
        preds[w].append(u)
    stack = list(device)
    while stack:
        for u in preds[stack.pop()]:
            if u not in device:
                device.add(u)
                stack.append(u)
    return delay(graph, device).total
