"""The block-wise exact algorithm (DESIGN.md, "Block-wise exact algorithm").

Partitions are monotone, so every cut vertex before the cut is on the device and every one after
it on the server. The optimum therefore either cuts right after a cut vertex c (device = the
layers up to c, a prefix sum away) or inside exactly one segment, whose inner problem is a small
min cut with the segment's entry pinned to the device and its exit to the server. Segments of
one block type with equal costs share that inner value, so each scenario costs one vectorised
scan of the chain plus one small max-flow per distinct (block type, costs).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from toolkit.blocks import BlockStructure
from toolkit.costgraph import CostGraph
from toolkit.errors import PartitionError
from toolkit.partition.stcut import CutResult, min_cut

_NO_PARTITION = (
    "no valid partition: the pins contradict each other (a server-pinned layer feeds a "
    "device-pinned one, or reads the raw input)"
)


@dataclass(frozen=True)
class _Inner:
    value: float  # the segment's own delay, entry's device time excluded; inf if infeasible
    device: tuple[int, ...]  # columns of the instance row [entry, layers...] on the device
    vertices: int
    edges: int


def solve_blockwise(
    graph: CostGraph, blocks: BlockStructure, server_pinned: Collection[int] = ()
) -> CutResult:
    """The minimum-delay partition, exactly the general min cut's value."""
    n = len(graph)
    if blocks.layer_count != n:
        raise PartitionError("block structure and cost graph describe different models")
    out_cross = np.bincount(graph.tensor_producer, weights=graph.tensor_crossing, minlength=n)
    prefix_dev = np.concatenate(([0.0], np.cumsum(graph.device_arr)))
    suffix_srv = np.concatenate((np.cumsum(graph.server_arr[::-1])[::-1], [0.0]))
    pinned = np.flatnonzero(graph.pinned)
    last_pinned = int(pinned[-1]) if pinned.size else -1
    server_set = set(server_pinned)
    first_server = min(server_set, default=n)
    candidates: list[tuple[float, str, int]] = []
    if last_pinned < 0:  # nothing must stay on the device: all on the server is a candidate
        candidates.append((float(suffix_srv[0]), "none", -1))

    cuts = blocks.arrays.cuts  # right after a cut vertex
    boundary = prefix_dev[cuts + 1] + suffix_srv[cuts + 1] + out_cross[cuts]
    boundary[(cuts < last_pinned) | (cuts >= first_server)] = np.inf
    if boundary.size:
        k = int(boundary.argmin())
        candidates.append((float(boundary[k]), "cut", int(cuts[k])))

    # inside one segment: solve block types in order of a lower bound, skip the hopeless ones
    arr = blocks.arrays
    outside = prefix_dev[arr.entries + 1] + suffix_srv[arr.ends]
    cheapest = np.concatenate(([0.0], np.cumsum(np.minimum(graph.device_arr, graph.server_arr))))
    bound = outside + cheapest[arr.ends] - cheapest[arr.entries + 1]  # each layer's cheaper side
    invalid = (arr.closed & (last_pinned >= arr.exits)) | (first_server <= arr.entries)
    bound[invalid] = np.inf
    inner_total = np.full(len(blocks.segments), np.inf)
    solutions: dict[int, _Inner] = {}
    vertices = edges = len(blocks.segments)
    incumbent = min((c[0] for c in candidates), default=np.inf)
    type_bound = {t.id: float(bound[arr.segments_of[t.id]].min()) for t in blocks.types
                  if not (t.size == 1 and t.closed)}  # a lone cut vertex has no inside
    for type_id in sorted(type_bound, key=type_bound.__getitem__):
        if type_bound[type_id] >= incumbent:
            break
        closed = bool(arr.closed[arr.segments_of[type_id][0]])
        found, keys = _inner_values(graph, arr.instances[type_id], closed, out_cross, server_set)
        segs = arr.segments_of[type_id]
        inner_total[segs] = outside[segs] + np.asarray([found[k].value for k in keys])
        inner_total[segs[invalid[segs]]] = np.inf
        for seg, k in zip(segs.tolist(), keys.tolist(), strict=True):
            solutions[seg] = found[k]
        vertices += sum(f.vertices for f in found)
        edges += sum(f.edges for f in found)
        incumbent = min(incumbent, float(inner_total[segs].min()))
    if solutions:
        k = int(inner_total.argmin())
        candidates.append((float(inner_total[k]), "inner", k))

    value, kind, where = min(candidates, default=(np.inf, "none", -1))
    if not np.isfinite(value):
        raise PartitionError(_NO_PARTITION)
    if kind == "none":
        device: list[int] = []
    elif kind == "cut":
        device = list(range(where + 1))
    else:
        seg = blocks.segments[where]
        columns = [-1 if seg.entry is None else seg.entry, *seg.layers]
        inside = [columns[c] for c in solutions[where].device if columns[c] >= 0]
        device = list(range(0 if seg.entry is None else seg.entry + 1)) + inside
    return CutResult(sorted(set(device)), value, vertices, edges)


def _inner_values(
    graph: CostGraph, rows: np.ndarray, closed: bool, out_cross: np.ndarray, server_set: set[int]
) -> tuple[list[_Inner], np.ndarray]:
    """Solve each distinct instance of one block type; return the solutions and row -> solution."""
    entries, layers = rows[:, 0], rows[:, 1:]
    pinned = np.asarray(graph.pinned, dtype=np.float64)  # a view-speed cast of a bool array
    server_flags = np.zeros(len(graph))
    if server_set:
        server_flags[list(server_set)] = 1.0
    features = np.column_stack([
        graph.device_arr[layers], graph.server_arr[layers], out_cross[layers], pinned[layers],
        server_flags[layers], np.where(entries >= 0, out_cross[np.maximum(entries, 0)], -1.0),
    ])
    keys = np.zeros(len(rows), dtype=np.int64)
    representatives = [0]
    differ = np.flatnonzero(~(features == features[0]).all(axis=1))
    if differ.size:  # usually only the first instance (another entry) or none
        _, first, inverse = np.unique(features[differ], axis=0, return_index=True,
                                      return_inverse=True)
        keys[differ] = inverse.reshape(-1) + 1
        representatives += differ[first].tolist()
    return [_solve_instance(graph, rows[r], closed, server_set) for r in representatives], keys


def _solve_instance(
    graph: CostGraph, row: np.ndarray, closed: bool, server_set: set[int]
) -> _Inner:
    """Inner min cut: entry pinned to the device, the closing cut vertex (if any) to the server."""
    entry = int(row[0])
    members = [int(v) for v in row[1:]]
    subset = ([entry] if entry >= 0 else []) + members
    server = {v for v in members if v in server_set}
    if closed:
        server.add(members[-1])
    try:
        cut = min_cut(graph, server, layers=subset, device_pinned=[entry] if entry >= 0 else [])
    except PartitionError:
        return _Inner(float("inf"), (), 0, 0)
    value = cut.value - (float(graph.device_ms[entry]) if entry >= 0 else 0.0)
    column = {v: c for c, v in enumerate([entry, *members])}
    return _Inner(value, tuple(sorted(column[v] for v in cut.device)), cut.vertices, cut.edges)
