"""The block-wise exact algorithm (DESIGN.md, "Block-wise exact algorithm").

Partitions are monotone, so every cut vertex before the cut is on the device and every one after
it on the server. The optimum therefore either cuts right after a cut vertex (device = the layers
up to it, a prefix sum of the chain away) or inside exactly one segment, whose inner problem is a
small min cut with the segment's entry pinned to the device and its exit to the server. Segments
of one group (same block type, same costs) share that inner value, and groups whose lower bound
cannot beat the best cut so far are never solved.

`solve_chain` needs only the chain with per-segment sums (`Chain`) and a way to solve one
segment's inside on demand, so the same scan serves the embedded solver (arrays in memory) and
the Neo4j path (aggregates and inner layers read by Cypher).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from toolkit.blocks import BlockStructure
from toolkit.costgraph import CostGraph
from toolkit.errors import PartitionError
from toolkit.partition.stcut import CutResult, min_cut

NO_PARTITION = (
    "no valid partition: the pins contradict each other (a server-pinned layer feeds a "
    "device-pinned one, or reads the raw input)"
)


@dataclass(frozen=True)
class Chain:
    """The compressed chain under one scenario: everything the scan needs, per segment."""

    layer_count: int
    entries: np.ndarray  # the cut vertex before each segment; -1: the virtual input
    exits: np.ndarray  # each segment's last layer (its closing cut vertex when closed)
    closed: np.ndarray  # ends at a cut vertex (False: the open tail)
    device: np.ndarray  # sum of device_ms over the segment's layers
    server: np.ndarray  # sum of server_ms
    cheapest: np.ndarray  # sum of min(device_ms, server_ms): a lower bound of any inner cut
    exit_cross: np.ndarray  # crossing_ms of the tensors the exit produces
    groups: np.ndarray  # segments with equal group ids share one inner solution
    last_pinned: int = -1  # the last layer that must stay on the device
    first_server: int = -1  # the first layer that must run on the server (-1: none)


@dataclass(frozen=True)
class Inner:
    """One segment's best inside cut."""

    value: float  # the segment's own delay, entry's device time excluded; inf if infeasible
    device: tuple[int, ...]  # offsets (layer - entry) of its layers on the device
    vertices: int
    edges: int


def solve_chain(chain: Chain, solve_inner: Callable[[int], Inner]) -> CutResult:
    """The minimum-delay device set; `solve_inner(k)` solves segment k's inside."""
    n = chain.layer_count
    first_server = chain.first_server if chain.first_server >= 0 else n
    before = np.concatenate(([0.0], np.cumsum(chain.device)[:-1]))  # device time of earlier
    after = np.concatenate((np.cumsum(chain.server[::-1])[::-1][1:], [0.0]))  # server, later
    candidates: list[tuple[float, str, int]] = []
    if chain.last_pinned < 0:  # nothing must stay on the device: all on the server
        candidates.append((float(chain.server.sum()), "none", -1))

    boundary = before + chain.device + after + chain.exit_cross  # cut right after the exit
    ok = chain.closed & (chain.exits >= chain.last_pinned) & (chain.exits < first_server)
    boundary[~ok] = np.inf
    if boundary.size and np.isfinite(boundary.min()):
        k = int(boundary.argmin())
        candidates.append((float(boundary[k]), "cut", k))

    outside = before + after
    bound = outside + chain.cheapest
    invalid = (chain.closed & (chain.last_pinned >= chain.exits)) | (first_server <= chain.entries)
    has_inside = ~chain.closed | (chain.exits - chain.entries > 1)
    bound[invalid | ~has_inside] = np.inf
    incumbent = min((c[0] for c in candidates), default=np.inf)
    inner_total = np.full(len(bound), np.inf)
    solved: dict[int, Inner] = {}
    vertices = edges = len(bound)
    order = np.argsort(chain.groups, kind="stable")
    ids, starts = np.unique(chain.groups[order], return_index=True)
    members = dict(zip(ids.tolist(), np.split(order, starts[1:]), strict=True))
    group_bound = {g: float(bound[segs].min()) for g, segs in members.items()}
    for group in sorted(group_bound, key=group_bound.__getitem__):
        if group_bound[group] >= incumbent:
            break
        segs = members[group]
        inner = solve_inner(int(segs[0]))
        solved[group] = inner
        vertices += inner.vertices
        edges += inner.edges
        inner_total[segs] = np.where(invalid[segs], np.inf, outside[segs] + inner.value)
        incumbent = min(incumbent, float(inner_total[segs].min()))
    if solved:
        k = int(inner_total.argmin())
        candidates.append((float(inner_total[k]), "inner", k))

    value, kind, k = min(candidates, default=(np.inf, "none", -1))
    if not np.isfinite(value):
        raise PartitionError(NO_PARTITION)
    if kind == "none":
        device: list[int] = []
    elif kind == "cut":
        device = list(range(int(chain.exits[k]) + 1))
    else:
        entry = int(chain.entries[k])
        inside = [entry + c for c in solved[int(chain.groups[k])].device if c > 0]
        device = list(range(entry + 1)) + inside
    return CutResult(sorted(set(device)), value, vertices, edges)


def solve_blockwise(
    graph: CostGraph, blocks: BlockStructure, server_pinned: Collection[int] = ()
) -> CutResult:
    """The block-wise optimum of a cost graph in memory (exactly the general min cut's value)."""
    if blocks.layer_count != len(graph):
        raise PartitionError("block structure and cost graph describe different models")
    server_set = set(server_pinned)
    chain = chain_of(graph, blocks, server_set)
    arr = blocks.arrays

    def solve_inner(k: int) -> Inner:
        rows = arr.instances[blocks.segments[k].type_id]
        return solve_segment(graph, rows[arr.row_in_type[k]], bool(chain.closed[k]), server_set)

    return solve_chain(chain, solve_inner)


def chain_of(graph: CostGraph, blocks: BlockStructure, server_set: set[int]) -> Chain:
    """Per-segment sums and (type, costs) groups from the full arrays."""
    n = len(graph)
    arr = blocks.arrays
    out_cross = np.bincount(graph.tensor_producer, weights=graph.tensor_crossing, minlength=n)
    starts = arr.entries + 1
    exits = np.minimum(arr.exits, n - 1)
    pinned = np.flatnonzero(graph.pinned)
    groups = np.zeros(len(blocks.segments), dtype=np.int64)
    next_group = 0
    for type_id, rows in arr.instances.items():
        keys = _cost_groups(graph, rows, out_cross, server_set)
        groups[arr.segments_of[type_id]] = keys + next_group
        next_group += int(keys.max()) + 1
    return Chain(
        layer_count=n, entries=arr.entries, exits=exits, closed=arr.closed,
        device=np.add.reduceat(graph.device_arr, starts),
        server=np.add.reduceat(graph.server_arr, starts),
        cheapest=np.add.reduceat(np.minimum(graph.device_arr, graph.server_arr), starts),
        exit_cross=np.where(arr.closed, out_cross[exits], 0.0), groups=groups,
        last_pinned=int(pinned[-1]) if pinned.size else -1,
        first_server=min(server_set, default=-1),
    )


def _cost_groups(
    graph: CostGraph, rows: np.ndarray, out_cross: np.ndarray, server_set: set[int]
) -> np.ndarray:
    """Instances of one block type with identical per-layer costs get the same group (0, 1, ...)."""
    entries, layers = rows[:, 0], rows[:, 1:]
    pinned = np.asarray(graph.pinned, dtype=np.float64)
    server_flags = np.zeros(len(graph))
    if server_set:
        server_flags[list(server_set)] = 1.0
    features = np.column_stack([
        graph.device_arr[layers], graph.server_arr[layers], out_cross[layers], pinned[layers],
        server_flags[layers], np.where(entries >= 0, out_cross[np.maximum(entries, 0)], -1.0),
    ])
    keys = np.zeros(len(rows), dtype=np.int64)
    differ = np.flatnonzero(~(features == features[0]).all(axis=1))
    if differ.size:  # usually only the first instance (another entry) or none
        _, inverse = np.unique(features[differ], axis=0, return_inverse=True)
        keys[differ] = inverse.reshape(-1) + 1
    return keys


def solve_segment(
    graph: CostGraph, row: np.ndarray | list[int], closed: bool, server_set: set[int]
) -> Inner:
    """Inner min cut over [entry, layers...]: entry pinned to the device, the closing cut vertex
    (if any) to the server. `graph` may be the whole model or just this segment."""
    entry = int(row[0])
    members = [int(v) for v in row[1:]]
    subset = ([entry] if entry >= 0 else []) + members
    server = {v for v in members if v in server_set}
    if closed:
        server.add(members[-1])
    try:
        cut = min_cut(graph, server, layers=subset, device_pinned=[entry] if entry >= 0 else [])
    except PartitionError:
        return Inner(float("inf"), (), 0, 0)
    value = cut.value - (float(graph.device_ms[entry]) if entry >= 0 else 0.0)
    return Inner(value, tuple(sorted(v - entry for v in cut.device)), cut.vertices, cut.edges)
