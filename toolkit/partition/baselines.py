"""Baselines judged under the same cost model: local training, raw upload, one split point, DADS."""

from __future__ import annotations

import numpy as np

from toolkit.costgraph import CostGraph, delay, with_ancestors
from toolkit.partition.stcut import min_cut
from toolkit.tiergraph import TierGraph


def device_only(graph: CostGraph) -> float:
    """Local training: every layer on the device, nothing crosses."""
    return sum(graph.device_ms)


def server_only(graph: CostGraph) -> float:
    """Reference only: raw data uploaded (split learning forbids it), all layers on the server,
    labels up with the data."""
    return sum(graph.server_ms) + graph.raw_upload_ms + (graph.labels_ms if graph.outputs else 0)


def best_chain_split(graph: CostGraph) -> tuple[float, int]:
    """Neurosurgeon-style: the best prefix of the topological order on the device.

    Returns (delay, k) where the first k layers run on the device (`chain_split_delays`)."""
    total = chain_split_delays(graph)
    best = int(np.argmin(total))
    return float(total[best]), best


def chain_split_delays(graph: CostGraph) -> np.ndarray:
    """D of every prefix k = 0..n of the topological order on the device; inf for prefixes
    that leave a pinned layer on the wrong side. Every prefix is monotone. Vectorised,
    O(V + E): a tensor crosses prefix k when its producer is before k and its last consumer at
    or after it.
    """
    n = len(graph)
    first = max((i + 1 for i in range(n) if graph.pinned[i]), default=0)
    last = min(graph.server_pinned, default=n)
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
    total: np.ndarray = dev + srv + cross + np.where(crossing > 0, graph.latency_ms, 0.0) \
        + np.where(last_output >= k, graph.labels_ms, 0.0)
    total[(k < first) | (k > last)] = np.inf
    return total


def dads_repaired(graph: CostGraph) -> float:
    """DADS: min cut without the monotone edges, then every device layer's ancestors moved in."""
    return delay(graph, with_ancestors(graph, min_cut(graph, monotone=False).device)).total


def best_ranges(graph: TierGraph) -> tuple[float, list[int]]:
    """The multi-split generalisation of the best single split: contiguous ranges of the
    topological order, one per tier in chain order. Returns (delay, splits): tier t holds
    layers [splits[t-1], splits[t]) (0 and n at the ends).

    With s_b+1 the first layer beyond boundary b, a tensor crosses b exactly when its producer
    is before s_b+1 and its last consumer at or after it, and the labels when the last output
    is at or after it, so D = sum over tiers of compute prefix sums + sum over boundaries of a
    function of s_b+1 alone: a DP over the boundaries with a running minimum, O(k (V + E)).
    """
    base = graph.base
    n, k = len(graph), graph.k
    last_consumer = np.zeros(len(base.tensors), dtype=np.int64)
    np.maximum.at(last_consumer, base.tensor_of, base.consumer_of)
    opens, closes = base.tensor_producer + 1, last_consumer + 1  # crossing for s in [open, close)
    counts = np.cumsum(np.bincount(opens, minlength=n + 2)
                       - np.bincount(closes, minlength=n + 2))[: n + 1]
    prefix = np.vstack([np.zeros(k), np.cumsum(graph.compute_ms, axis=0)])  # (n + 1) x k
    s = np.arange(n + 1)
    last_output = max(graph.outputs, default=-1)
    best = np.zeros(n + 1)
    back: list[np.ndarray] = []
    for b in range(k - 1):
        cross = np.cumsum(np.bincount(opens, graph.crossing_ms[:, b], n + 2)
                          - np.bincount(closes, graph.crossing_ms[:, b], n + 2))[: n + 1]
        h = prefix[:, b] - prefix[:, b + 1] + cross \
            + np.where(counts > 0, graph.latency_ms[b], 0.0) \
            + np.where(last_output >= s, graph.labels_ms[b], 0.0)
        low = max((v + 1 for v in np.flatnonzero(graph.highest <= b)), default=0)
        high = min((int(v) for v in np.flatnonzero(graph.lowest > b)), default=n)
        h[(s < low) | (s > high)] = np.inf
        running = np.minimum.accumulate(best)  # the best earlier boundary at or before s
        improves = best < np.concatenate(([np.inf], running[:-1]))
        back.append(np.maximum.accumulate(np.where(improves, s, 0)))
        best = h + running
    total = float(best.min()) + float(prefix[n, k - 1])
    if graph.device_alone() and prefix[n, 0] <= total:  # a U-shape's device alone
        return float(prefix[n, 0]), [n] * (k - 1)
    if not np.isfinite(total):
        return total, []
    splits = [int(np.argmin(best))]
    for b in range(k - 2, 0, -1):
        splits.append(int(back[b][splits[-1]]))
    return total, splits[::-1]
