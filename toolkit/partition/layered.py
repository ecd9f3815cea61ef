"""The exact tiering of a k-tier chain as one minimum s-t cut (Ishikawa's layered graph).

Each layer v gets k-1 vertices v_1 .. v_k-1 and the tiering reads tier(v) = the number of them
on the source side. The construction:

- a chain s -> v_1 -> v_2 -> ... -> v_k-1 -> t whose t-th edge costs compute_ms[v, t], each
  with an infinite reverse edge v_t+1 -> v_t. A finite cut then crosses the chain exactly once
  (the source-side vertices are a prefix v_1..v_m: v_t+1 on the source side and v_t on the
  sink side would cut an infinite edge), at the edge of m = tier(v), and pays compute_ms[v, m];
- pins: s -> v_lo infinite keeps tier(v) >= lo, v_hi+1 -> t infinite keeps tier(v) <= hi;
- data flows forward: for each edge u -> w and level t, u_t -> w_t infinite (tier(u) >= t
  forces tier(w) >= t);
- tensor x of producer u over boundary b (level t = b + 1): an auxiliary a, w_t -> a infinite
  for each consumer w and a -> u_t costing crossing_ms[x, b]. x crosses b exactly when
  tier(u) <= b < tier(w) for some consumer w, that is u_t on the sink side and some w_t on the
  source side; then a sits on the source side (else an infinite edge is cut) and a -> u_t is
  cut: paid once however many consumers are beyond. When no consumer is beyond, a may sit on
  the sink side and nothing is paid. So every finite cut is a tiering's C (D without the
  latency) and every tiering's C is the value of some cut: the minimum cut is the minimum C;
- labels over boundary b: an auxiliary a_L, o_t -> a_L infinite for each output layer o and
  a_L -> t costing labels_ms[b], paid when an output lies beyond b.

Latency is per boundary and message, not per tensor: D = C + sum of latency_ms[b] over the
boundaries anything crosses. For a set Q of boundaries forced quiet (w_t -> u_t infinite as
well at their levels: no edge crosses them), min over tierings quiet on Q of C + the latency
of every boundary outside Q bounds D from above for those tierings and equals it for the
tiering whose quiet boundaries are exactly Q; the least such bound over all Q is therefore the
optimum of D. Boundaries without latency need no enumeration: at most 2^(k-1) cuts, one for
two tiers with no latency.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import maxflow
import numpy as np

from toolkit.errors import PartitionError
from toolkit.partition.stcut import NO_PARTITION
from toolkit.tiergraph import TierGraph, tier_delay


@dataclass(frozen=True)
class TierCut:
    tier: np.ndarray  # per layer of the solved set, in its order
    value: float  # C: D without the latency of the boundaries outside the quiet set
    vertices: int
    edges: int


def layered_cut(
    graph: TierGraph,
    quiet: Collection[int] = (),
    layers: Sequence[int] | None = None,
    lowest: np.ndarray | None = None,
    highest: np.ndarray | None = None,
    labels: bool = True,
) -> TierCut | None:
    """The least C over the tierings of `layers` (default: all) that send nothing over the
    `quiet` boundaries, within the graph's pins and the optional per-layer `lowest`/`highest`
    (indexed like `layers`); tensors leaving `layers` are ignored and `labels` prices the
    labels for the outputs among them. None when no tiering is valid."""
    base = graph.base
    k = graph.k
    levels = k - 1
    inside = base.inside(layers)
    subset, local, used = inside.layers, inside.local, inside.tensors
    producers, pair_aux, pair_consumer = inside.producers, inside.pair_tensor, inside.pair_consumer
    m = len(subset)
    crossing = graph.crossing_ms[used]  # used x levels
    outputs = np.asarray([local[v] for v in graph.outputs if local[v] >= 0], dtype=np.int64)
    label_cost = graph.labels_ms if labels and outputs.size else np.zeros(levels)
    lo = graph.lowest[subset] if lowest is None else np.maximum(graph.lowest[subset], lowest)
    hi = graph.highest[subset] if highest is None else np.minimum(graph.highest[subset], highest)
    if (lo > hi).any():
        return None
    compute = graph.compute_ms[subset]
    inf = 2.0 * float(compute.sum() + crossing.sum() + label_cost.sum()) + 1.0

    def vertex(layer: np.ndarray, level: int) -> np.ndarray:
        ids: np.ndarray = layer * levels + (level - 1)
        return ids

    aux_count = len(used) * levels
    label_levels = [t for t in range(1, k) if label_cost[t - 1] > 0] if outputs.size else []
    count = m * levels + aux_count + len(label_levels)
    g = maxflow.Graph[float](count, count * 4)
    g.add_nodes(count)
    source = np.zeros((m, levels))
    sink = np.zeros((m, levels))
    source[:, 0] += compute[:, 0]
    sink[:, levels - 1] += compute[:, k - 1]
    everyone = np.arange(m)
    source[everyone[lo > 0], lo[lo > 0] - 1] += inf
    sink[everyone[hi < levels], hi[hi < levels]] += inf
    g.add_grid_tedges(np.arange(m * levels), source.reshape(-1), sink.reshape(-1))
    edges = 2 * m
    for t in range(1, levels):
        g.add_edges(vertex(everyone, t), vertex(everyone, t + 1), compute[:, t],
                    np.full(m, inf))
        edges += 2 * m
    quiet_levels = {b + 1 for b in quiet}
    pair_producer = producers[pair_aux]
    for t in range(1, k):
        back = inf if t in quiet_levels else 0.0
        g.add_edges(vertex(pair_producer, t), vertex(pair_consumer, t),
                    np.full(len(pair_consumer), inf), np.full(len(pair_consumer), back))
        aux = m * levels + (t - 1) * len(used) + np.arange(len(used))
        g.add_edges(aux, vertex(producers, t), crossing[:, t - 1], np.zeros(len(used)))
        g.add_edges(vertex(pair_consumer, t), aux[pair_aux], np.full(len(pair_aux), inf),
                    np.zeros(len(pair_aux)))
        edges += 2 * len(pair_consumer) + len(used)
    for j, t in enumerate(label_levels):
        label = m * levels + aux_count + j
        g.add_tedge(label, 0.0, float(label_cost[t - 1]))
        g.add_edges(vertex(outputs, t), np.full(len(outputs), label),
                    np.full(len(outputs), inf), np.zeros(len(outputs)))
        edges += 1 + len(outputs)
    value = float(g.maxflow())
    if value > inf / 2:  # every finite cut is below half of `inf`; an infeasible one may
        # come out a rounding below `inf` (the max-flow sums in its own order)
        return None
    sink_side = g.get_grid_segments(np.arange(m * levels)).reshape(m, levels)
    return TierCut((~sink_side).sum(axis=1).astype(np.int64), value, count + 2, edges)


def quiet_sets(graph: TierGraph) -> list[tuple[int, ...]]:
    """Every set of boundaries with latency that may be forced quiet (module docstring)."""
    paying = [b for b in range(graph.k - 1) if graph.latency_ms[b] > 0]
    return [q for r in range(len(paying) + 1) for q in itertools.combinations(paying, r)]


def layered_optimum(graph: TierGraph) -> TierCut:
    """The tiering of least D over the whole graph: one layered cut per quiet set."""
    best: TierCut | None = None
    best_total = np.inf
    vertices = edges = 0
    for quiet in quiet_sets(graph):
        cut = layered_cut(graph, quiet)
        if cut is None:
            continue
        vertices, edges = max(vertices, cut.vertices), edges + cut.edges
        total = tier_delay(graph, cut.tier).total
        if total < best_total:
            best, best_total = cut, total
    if best is None:
        raise PartitionError(NO_PARTITION)
    return TierCut(best.tier, best_total, vertices, edges)
