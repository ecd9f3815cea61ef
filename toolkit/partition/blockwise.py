"""The block-wise exact algorithm (DESIGN.md, "Block-wise exact algorithm").

Partitions are monotone, so every cut vertex before the cut is on the device and every one after
it on the server. The optimum therefore either cuts right after a cut vertex (device = the layers
up to it, a prefix sum of the chain away) or inside exactly one segment, whose inner problem is a
small min cut with the segment's entry pinned to the device and its exit to the server. Segments
of one group share that inner solution: same block type and the same inner problem exactly
(every layer's device/server delay, pin and output flag, and every tensor's crossing cost, the
entry's included, matched by position in the block); groups whose lower bound cannot beat the
best cut so far are never solved.

The labels term (paid when a model output runs on the server) follows the chain: a cut after a
cut vertex pays it when an output lies beyond; a cut inside a segment pays it as a constant when
an output lies beyond the segment, and inside the segment's own min cut when one lies within.
Latency per message is added afterwards (`toolkit.partition.messages`).

`solve_chain` needs only the chain with per-segment sums (`Chain`) and a way to solve one
segment's inside on demand, so the same scan serves the embedded solver (arrays in memory) and
the Neo4j path (aggregates and inner layers read by Cypher).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.blocks import BlockStructure
from toolkit.costgraph import CostGraph
from toolkit.errors import PartitionError
from toolkit.partition.stcut import NO_PARTITION, CutResult, min_cut


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
    outputs: tuple[int, ...] = ()  # layers producing a model output
    labels_ms: float = 0.0  # paid when one of them runs on the server

    @property
    def last_layers(self) -> np.ndarray:
        """Each segment's last layer (the open tail ends at the model's last layer)."""
        last: np.ndarray = np.minimum(self.exits, self.layer_count - 1)
        return last

    def labels_inside(self) -> np.ndarray:
        """Per segment: its inner cut must price the labels (an output inside, none beyond)."""
        last = self.last_layers
        beyond = max(self.outputs, default=-1) > last
        out = np.asarray(self.outputs, dtype=np.int64)  # sorted
        inside = np.searchsorted(out, last, "right") > np.searchsorted(out, self.entries, "right")
        flags: np.ndarray = inside & ~beyond
        return flags


@dataclass(frozen=True)
class Inner:
    """One segment's best inside cut."""

    value: float  # the segment's own delay, entry's device time excluded; inf if infeasible
    device: tuple[int, ...]  # offsets (layer - entry) of its layers on the device
    vertices: int
    edges: int


def solve_chain(chain: Chain, solve_inner: Callable[[int, bool], Inner]) -> CutResult:
    """The minimum of D(S) without latency; `solve_inner(k, labels)` solves segment k's inside
    (`labels`: price the labels term in it)."""
    n = chain.layer_count
    first_server = chain.first_server if chain.first_server >= 0 else n
    before = np.concatenate(([0.0], np.cumsum(chain.device)[:-1]))  # device time of earlier
    after = np.concatenate((np.cumsum(chain.server[::-1])[::-1][1:], [0.0]))  # server, later
    last_output = max(chain.outputs, default=-1)
    labels_beyond = np.where(last_output > chain.last_layers, chain.labels_ms, 0.0)
    labels_inside = chain.labels_inside()
    candidates: list[tuple[float, str, int]] = []
    if chain.last_pinned < 0:  # nothing must stay on the device: all on the server
        labels = chain.labels_ms if chain.outputs else 0.0
        candidates.append((float(chain.server.sum()) + labels, "none", -1))

    boundary = before + chain.device + after + chain.exit_cross + labels_beyond
    ok = chain.closed & (chain.exits >= chain.last_pinned) & (chain.exits < first_server)
    boundary[~ok] = np.inf
    if boundary.size and np.isfinite(boundary.min()):
        k = int(boundary.argmin())
        candidates.append((float(boundary[k]), "cut", k))

    outside = before + after + labels_beyond
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
        inner = solve_inner(int(segs[0]), bool(labels_inside[segs[0]]))
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


def weights_follow(compute: np.ndarray, lowest: np.ndarray, highest: np.ndarray,
                   layers: Sequence[int]) -> bool:
    """Whether the chain of segments is exact for these layers that weights alone make
    (`toolkit.blocks.weight_only`, off every input-to-output path): each may take the last
    tier and costs no less on any earlier tier it may take than on a later one (`compute`:
    layers x tiers, nondecreasing tiers along the chain).

    The chain assumes that a segment beyond its entry's tier runs there whole. A layer off
    the input's path is not held there by its entry: the optimum could compute it on an
    earlier tier and send what it makes. Moving every such layer of the segment up to the
    entry's tier never costs more when they are no cheaper earlier: compute does not grow,
    and each tensor they make or read then crosses a subset of the boundaries it crossed
    (they make no model output, so labels do not move). Otherwise the caller solves the
    general problem."""
    idx = np.asarray(layers, dtype=np.int64)
    if idx.size == 0:
        return True
    k = compute.shape[1]
    if (highest[idx] < k - 1).any():
        return False
    costs = compute[idx]
    may = np.arange(k)[None, :] >= lowest[idx, None]  # tiers each may take
    # costs[v, t] >= costs[v, t'] for every t < t' it may take: >= the largest from t on
    later = np.maximum.accumulate(np.where(may, costs, -np.inf)[:, ::-1], axis=1)[:, ::-1]
    return bool(np.all(~may | (costs >= later)))


def follows(graph: CostGraph, layers: Sequence[int]) -> bool:
    """`weights_follow` for a two-tier cost graph (device, server), on those layers' rows."""
    idx = np.asarray(layers, dtype=np.int64)
    lowest = np.isin(idx, list(graph.server_pinned)).astype(np.int64)
    highest = np.where(np.asarray(graph.pinned, dtype=bool)[idx], 0, 1)
    compute = np.column_stack((graph.device_arr[idx], graph.server_arr[idx]))
    return weights_follow(compute, lowest, highest, range(len(idx)))


def solve_blockwise(
    graph: CostGraph, blocks: BlockStructure
) -> CutResult:
    """The block-wise optimum of a cost graph in memory: exactly the general min cut's value
    where the chain holds (`follows`, which `toolkit.partition.solve` checks first)."""
    if blocks.layer_count != len(graph):
        raise PartitionError("block structure and cost graph describe different models")
    server_set = set(graph.server_pinned)
    chain = chain_of(graph, blocks, server_set)
    arr = blocks.arrays

    def solve_inner(k: int, labels: bool) -> Inner:
        rows = arr.instances[blocks.segments[k].type_id]
        return solve_segment(graph, rows[arr.row_in_type[k]], bool(chain.closed[k]), server_set,
                             labels)

    return solve_chain(chain, solve_inner)


def chain_of(graph: CostGraph, blocks: BlockStructure, server_set: set[int]) -> Chain:
    """Per-segment sums and (type, inner problem) groups from the full arrays."""
    n = len(graph)
    arr = blocks.arrays
    out_cross = np.bincount(graph.tensor_producer, weights=graph.tensor_crossing, minlength=n)
    starts = arr.entries + 1
    exits = np.minimum(arr.exits, n - 1)
    pinned = np.flatnonzero(graph.pinned)
    chain = Chain(
        layer_count=n, entries=arr.entries, exits=exits, closed=arr.closed,
        device=np.add.reduceat(graph.device_arr, starts),
        server=np.add.reduceat(graph.server_arr, starts),
        cheapest=np.add.reduceat(np.minimum(graph.device_arr, graph.server_arr), starts),
        exit_cross=np.where(arr.closed, out_cross[exits], 0.0),
        groups=np.zeros(len(blocks.segments), dtype=np.int64),
        last_pinned=int(pinned[-1]) if pinned.size else -1,
        first_server=min(server_set, default=-1),
        outputs=tuple(sorted(graph.outputs)), labels_ms=graph.labels_ms,
    )
    layer_flags = np.zeros((n, 3))
    layer_flags[:, 0] = graph.pinned
    layer_flags[list(server_set), 1] = 1.0
    layer_flags[list(graph.outputs), 2] = 1.0
    labels_inside = chain.labels_inside()
    layouts = tensor_layouts(graph, blocks)
    next_group = 0
    for type_id, rows in arr.instances.items():
        segs = arr.segments_of[type_id]
        layers = rows[:, 1:]
        features = [graph.device_arr[layers], graph.server_arr[layers],
                    layer_flags[layers].reshape(len(rows), -1), labels_inside[segs, None]]
        layout = layouts[type_id]
        if layout is None:  # instances whose tensors do not line up share nothing
            keys = np.arange(len(rows))
        else:
            features.append(layout.costs(graph.tensor_crossing))
            keys = same_rows(np.column_stack(features))
        chain.groups[segs] = keys + next_group
        next_group += int(keys.max()) + 1
    return chain


def same_rows(features: np.ndarray) -> np.ndarray:
    """Group ids (0, 1, ...) of identical rows: each row's bytes compared as one value."""
    rows = np.ascontiguousarray(features + 0.0)  # + 0.0: -0.0 and 0.0 compare equal
    as_bytes = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).reshape(-1)
    _, inverse = np.unique(as_bytes, return_inverse=True)
    keys: np.ndarray = inverse.reshape(-1).astype(np.int64)
    return keys


@dataclass(frozen=True)
class TensorLayout:
    """The tensors of a block type's inner problem, lined up across its instances: column j of
    every row is the same tensor of the block (same producer and consumers by position)."""

    tensors: np.ndarray  # instances x tensors, indices into the cost graph's tensors
    ties: tuple[tuple[int, int], ...]  # column ranges of interchangeable tensors

    def costs(self, crossing: np.ndarray) -> np.ndarray:
        """Each instance's crossing costs in column order, interchangeable ones sorted."""
        out = crossing[self.tensors]
        for lo, hi in self.ties:
            out[:, lo:hi] = np.sort(out[:, lo:hi], axis=1)
        costs: np.ndarray = out
        return costs


def tensor_layouts(graph: CostGraph, blocks: BlockStructure) -> dict[int, TensorLayout | None]:
    """Per block type, its tensor layout (None when instances do not line up). Structural, so
    computed once per model and tensor structure and kept with the block structure."""
    fingerprint = hashlib.sha1(graph.tensor_producer.tobytes()
                               + "\n".join(graph.names).encode()).hexdigest()
    found = blocks.layouts.get(fingerprint)
    if found is None:
        found = {t: _layout(graph, rows) for t, rows in blocks.arrays.instances.items()}
        blocks.layouts.clear()
        blocks.layouts[fingerprint] = found
    return found


def _layout(graph: CostGraph, rows: np.ndarray) -> TensorLayout | None:
    keyed_rows = []
    for row in rows:
        offset = {int(v): k for k, v in enumerate(row) if v >= 0}
        members = set(row[1:].tolist())
        keyed = []
        for j in graph.tensors_of(offset):
            t = graph.tensors[j]
            inside = tuple(sorted(offset[c] for c in t.consumers if c in members))
            if inside:
                keyed.append(((offset[t.producer], inside), j))
        keyed.sort(key=lambda kj: kj[0])
        keyed_rows.append(keyed)
    shape = [k for k, _ in keyed_rows[0]]
    if any([k for k, _ in keyed] != shape for keyed in keyed_rows[1:]):
        return None
    ties = []
    lo = 0
    for hi in range(1, len(shape) + 1):
        if hi == len(shape) or shape[hi] != shape[lo]:
            if hi - lo > 1:
                ties.append((lo, hi))
            lo = hi
    tensors = np.asarray([[j for _, j in keyed] for keyed in keyed_rows], dtype=np.int64)
    return TensorLayout(tensors.reshape(len(rows), len(shape)), tuple(ties))


def solve_segment(
    graph: CostGraph, row: np.ndarray | list[int], closed: bool, server_set: set[int],
    labels: bool,
) -> Inner:
    """Inner min cut over [entry, layers...]: entry pinned to the device, the closing cut vertex
    (if any) to the server, the labels term priced if `labels`. `graph` may be the whole model
    or just this segment."""
    entry = int(row[0])
    members = [int(v) for v in row[1:]]
    subset = ([entry] if entry >= 0 else []) + members
    server = {v for v in members if v in server_set}
    if closed:
        server.add(members[-1])
    try:
        cut = min_cut(graph, server, layers=subset, device_pinned=[entry] if entry >= 0 else [],
                      labels=labels)
    except PartitionError:
        return Inner(float("inf"), (), 0, 0)
    value = cut.value - (float(graph.device_ms[entry]) if entry >= 0 else 0.0)
    return Inner(value, tuple(sorted(v - entry for v in cut.device)), cut.vertices, cut.edges)
