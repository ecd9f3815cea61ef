"""Baselines judged under the same cost model: local training, raw upload, one split point, DADS."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

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
    prefixes leaving a pinned layer on the server are skipped. Vectorised, O(V + E): a tensor
    crosses prefix k when its producer is before k and its last consumer at or after it.
    """
    n = len(graph)
    first = max((i + 1 for i in range(n) if graph.pinned[i]), default=0)
    last = min(server_pinned, default=n)
    last_consumer = np.zeros(len(graph.tensors), dtype=np.int64)
    np.maximum.at(last_consumer, graph.tensor_of, graph.consumer_of)
    opens, closes = graph.tensor_producer + 1, last_consumer + 1  # crossing for k in [open, close)
    cross = np.cumsum(np.bincount(opens, graph.tensor_crossing, n + 2)
                      - np.bincount(closes, graph.tensor_crossing, n + 2))[: n + 1]
    crossing = np.cumsum(np.bincount(opens, minlength=n + 2)
                         - np.bincount(closes, minlength=n + 2))[: n + 1]
    dev = np.concatenate(([0.0], np.cumsum(graph.device_arr)))
    srv = graph.server_arr.sum() - np.concatenate(([0.0], np.cumsum(graph.server_arr)))
    last_output = max(graph.outputs, default=-1)
    k = np.arange(n + 1)
    total = dev + srv + cross + np.where(crossing > 0, graph.latency_ms, 0.0) \
        + np.where(last_output >= k, graph.labels_ms, 0.0)
    total[(k < first) | (k > last)] = np.inf
    best = int(np.argmin(total))
    return float(total[best]), best


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
