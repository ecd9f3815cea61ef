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


@dataclass(frozen=True)
class _Inner:
    value: float  # segment's own delay (entry's device time excluded), inf if infeasible
    device: tuple[int, ...]  # column offsets into the instance row [entry, layers...]
    vertices: int
    edges: int


def solve_blockwise(
    graph: CostGraph, blocks: BlockStructure, server_pinned: Collection[int] = ()
) -> CutResult:
    """The minimum-delay partition, exactly the general min cut's value."""
    n = len(graph)
    if blocks.layer_count != n:
        raise PartitionError("block structure and cost graph describe different models")
    dev = np.asarray(graph.device_ms, dtype=np.float64)
    srv = np.asarray(graph.server_ms, dtype=np.float64)
    producers = np.fromiter((t.producer for t in graph.tensors), np.int64, len(graph.tensors))
    crossing = np.fromiter((t.crossing_ms for t in graph.tensors), np.float64, len(graph.tensors))
    out_cross = np.bincount(producers, weights=crossing, minlength=n)
    prefix_dev = np.concatenate(([0.0], np.cumsum(dev)))
    suffix_srv = np.concatenate((np.cumsum(srv[::-1])[::-1], [0.0]))
    pinned = np.flatnonzero(np.asarray(graph.pinned, dtype=bool))
    last_pinned = int(pinned.max()) if pinned.size else -1
    server_set = set(server_pinned)
    first_server = min(server_set, default=n)

    # cuts right after a cut vertex
    cuts = np.asarray(blocks.cut_vertices, dtype=np.int64)
    boundary = prefix_dev[cuts + 1] + suffix_srv[cuts + 1] + out_cross[cuts]
    boundary[(cuts < last_pinned) | (cuts >= first_server)] = np.inf
    best_value, best = float(suffix_srv[0]) if last_pinned < 0 else np.inf, ("none", -1)
    if boundary.size and boundary.min() < best_value:
        k = int(boundary.argmin())
        best_value, best = float(boundary[k]), ("cut", int(cuts[k]))

    # cuts inside one segment: one inner max-flow per distinct (type, costs)
    vertices, edges = len(blocks.segments), len(blocks.segments)
    inner_of: dict[int, list[_Inner]] = {}
    for block_type in blocks.types:
        rows = blocks.instances(block_type.id)
        inner_of[block_type.id], keys_of_rows = _inner_values(
            graph, rows, block_type.closed, dev, srv, out_cross, server_set
        )
        for inner in inner_of[block_type.id]:
            vertices += inner.vertices
            edges += inner.edges
        inner_of[block_type.id] = [inner_of[block_type.id][k] for k in keys_of_rows]
    row_in_type: dict[int, int] = {}
    for seg in blocks.segments:
        row = row_in_type.get(seg.type_id, 0)
        row_in_type[seg.type_id] = row + 1
        inner = inner_of[seg.type_id][row]
        if not np.isfinite(inner.value):
            continue
        entry = -1 if seg.entry is None else seg.entry
        end = n if seg.exit is None else seg.exit + 1
        if seg.exit is not None and last_pinned >= seg.exit:
            continue
        if first_server <= entry:
            continue
        value = float(prefix_dev[entry + 1] + suffix_srv[end] + inner.value)
        if value < best_value:
            best_value, best = value, ("inner", seg.index)
            best_inner = inner
    if not np.isfinite(best_value):
        raise PartitionError(
            "no valid partition: the pins contradict each other (a server-pinned layer feeds a "
            "device-pinned one, or reads the raw input)"
        )
    kind, where = best
    if kind == "none":
        device: list[int] = []
    elif kind == "cut":
        device = list(range(where + 1))
    else:
        seg = blocks.segments[where]
        columns = [-1 if seg.entry is None else seg.entry, *seg.layers]
        inside = [columns[c] for c in best_inner.device if columns[c] >= 0]
        device = list(range(0 if seg.entry is None else seg.entry + 1)) + inside
    return CutResult(sorted(set(device)), best_value, vertices, edges)


def _inner_values(
    graph: CostGraph,
    rows: np.ndarray,
    closed: bool,
    dev: np.ndarray,
    srv: np.ndarray,
    out_cross: np.ndarray,
    server_set: set[int],
) -> tuple[list[_Inner], np.ndarray]:
    """Solve each distinct instance of one block type; return the solutions and row -> solution."""
    entries, layers = rows[:, 0], rows[:, 1:]
    safe_entry = np.where(entries >= 0, entries, 0)
    pinned = np.asarray(graph.pinned, dtype=np.float64)
    server_flags = np.zeros(len(graph))
    if server_set:
        server_flags[list(server_set)] = 1.0
    features = np.column_stack([
        dev[layers], srv[layers], out_cross[layers], pinned[layers], server_flags[layers],
        np.where(entries >= 0, out_cross[safe_entry], -1.0),
    ])
    if (features == features[0]).all():
        keys, representatives = np.zeros(len(rows), dtype=np.int64), [0]
    else:
        _, first, keys = np.unique(features, axis=0, return_index=True, return_inverse=True)
        representatives = list(first)
        keys = keys.reshape(-1)
    solutions = [_solve_instance(graph, rows[r], closed, server_set) for r in representatives]
    return solutions, keys


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
    value = cut.value - (graph.device_ms[entry] if entry >= 0 else 0.0)
    offset = {v: c for c, v in enumerate([entry, *members])}
    return _Inner(value, tuple(sorted(offset[v] for v in cut.device)), cut.vertices, cut.edges)
