"""Optimal tierings of a k-tier chain: the layered min cut and its block-wise equal.

Block-wise (DESIGN.md, "Block-wise exact algorithm"): every layer of a segment lies on a path
from its entry cut vertex to its exit, so with data flowing forward along the chain each cut
vertex takes one tier, nondecreasing along the chain, and a segment's layers take tiers between
its entry's and its exit's. Given those two tiers (a, b), a segment's best inside is a small
layered cut (`layered_cut` over the entry and the segment, the entry fixed to a and the exit
to b) that no other segment affects: its tensors reach no further than its exit. So

    f_j(b) = min over a <= b of f_j-1(a) + inner_j(a, b)

over the chain of segments (the entry's own compute counted in the segment it closes, the
exit's outgoing tensors in the next segment) gives the least C; the open tail leaves its exit
free. Segments of one block type whose inner problems are equal in every cost and pin share
their inner solutions. The labels are priced in the segment holding the last model output:
every later layer is a descendant of that segment's exit, so no earlier output lies on a higher
tier. Latency per boundary is handled as in the layered cut, one chain pass per quiet set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.blocks import BlockStructure
from toolkit.errors import PartitionError
from toolkit.partition.blockwise import same_rows, tensor_layouts, weights_follow
from toolkit.partition.layered import TierCut, layered_cut, layered_optimum, quiet_sets
from toolkit.partition.stcut import NO_PARTITION
from toolkit.tiergraph import TierDelay, TierGraph, check_tiers, crossed, tier_delay

TIER_METHODS = ("general", "blockwise")


@dataclass
class TierPartition:
    graph: TierGraph
    tier: np.ndarray  # per layer
    delay: TierDelay
    method: str
    vertices: int
    edges: int
    solve_ms: float
    blocks_ms: float = 0.0
    baselines_ms: dict[str, float] = field(default_factory=dict)
    vanilla_ms: float | None = None  # a U-shape's vanilla split learning (`vanilla_split_ms`)
    memory: dict[str, Any] = field(default_factory=dict)  # how a memory budget was met

    def layers_on(self, tier: int) -> list[int]:
        return np.flatnonzero(self.tier == tier).tolist()

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of `splitcut partition --tiers/--u-shape --json`: each layer's
        tier, per tier its layers, compute and the peak training memory of its processor
        (a U-shape's head and tail share the device), per boundary what crosses it and what
        that costs; with two tiers also the two-sided keys (`device_layers`, `server_layers`)."""
        g = self.graph
        names = g.names
        flags = crossed(g, self.tier)
        tiers = [{"name": name, "processor": g.scenario.get("tiers", [{}] * g.k)[t].get(
                      "processor", name),
                  "layers": [names[i] for i in self.layers_on(t)],
                  "compute_ms": self.delay.compute[t],
                  "peak_memory_bytes": g.peak_of(name, [
                      i for u, other in enumerate(g.tiers) if other == name
                      for i in self.layers_on(u)])}
                 for t, name in enumerate(g.tiers)]
        boundaries = [{"from": g.tiers[b], "to": g.tiers[b + 1],
                       "tensors": [g.base.tensors[x].name for x in np.flatnonzero(flags[:, b])],
                       "crossing_ms": self.delay.crossing[b], "latency_ms": self.delay.latency[b],
                       "labels_ms": self.delay.labels[b]}
                      for b in range(g.k - 1)]
        partition: dict[str, Any] = {"tier_of": {names[i]: int(t) for i, t in
                                                 enumerate(self.tier)},
                                     "tiers": tiers, "boundaries": boundaries}
        if g.k == 2:
            partition["device_layers"] = tiers[0]["layers"]
            partition["server_layers"] = tiers[1]["layers"]
            partition["cut_tensors"] = boundaries[0]["tensors"]
        return {
            "model": g.base.model,
            "scenario": g.scenario,
            "partition": partition,
            "delay_ms": {"total": self.delay.total, "compute": list(self.delay.compute),
                         "crossing": sum(self.delay.crossing), "latency": sum(self.delay.latency),
                         "labels": sum(self.delay.labels)},
            "baselines_ms": self.baselines_ms,
            **({"vanilla_split_ms": self.vanilla_ms} if self.vanilla_ms is not None else {}),
            **({"memory": self.memory} if self.memory else {}),
            "notes": list(g.base.notes),
            "solver": {"method": self.method, "vertices": self.vertices, "edges": self.edges,
                       "solve_ms": self.solve_ms, "blocks_ms": self.blocks_ms},
        }


def file_stems(names: Sequence[str]) -> list[str]:
    """Each tier's file (and process) name: its own, or for a name used twice, as a U-shape's
    device, `device-head` and `device-tail` (`device-1` between them)."""
    return [name if names.count(name) == 1 else
            f"{name}-head" if names.index(name) == t else
            f"{name}-tail" if len(names) - 1 - names[::-1].index(name) == t else f"{name}-{t}"
            for t, name in enumerate(names)]


def tier_label(name: str) -> str:
    """The Neo4j node label of a tier: its name capitalised ('edge' -> 'Edge'). Tier names are
    letters, digits and underscores (checked where a chain is read), and labels reach Cypher
    as parameters (`SET l:$(label)`), never as query text."""
    return name[:1].upper() + name[1:]


def solve_tiers(graph: TierGraph, method: str = "general", blocks: BlockStructure | None = None,
                blocks_ms: float = 0.0, with_baselines: bool = True) -> TierPartition:
    """The least-delay valid tiering, checked and re-costed from scratch before it is returned."""
    if method not in TIER_METHODS:
        raise PartitionError(f"unknown method {method!r}; choose one of {', '.join(TIER_METHODS)}")
    start = time.perf_counter()
    if method == "blockwise" and blocks is not None and not weights_follow(
            graph.compute_ms, graph.lowest, graph.highest, blocks.weight_only):
        method = "general"  # the chain does not hold for this scenario: solved whole, said so
    if method == "blockwise":
        if blocks is None:
            raise PartitionError("the blockwise method needs the model's block structure")
        cut = _or_device_alone(graph, lambda: blockwise_optimum(graph, blocks))
    else:
        cut = _or_device_alone(graph, lambda: layered_optimum(graph))
    solve_ms = (time.perf_counter() - start) * 1e3
    checked = check_tiers(graph, cut.tier)
    if abs(checked.total - cut.value) > 1e-9 * max(1.0, abs(cut.value)) * len(graph):
        raise PartitionError(f"solver self-check failed: {cut.value} but D = {checked.total}")
    result = TierPartition(graph, cut.tier, checked, method, cut.vertices, cut.edges, solve_ms,
                           blocks_ms)
    if with_baselines:
        result.baselines_ms = baselines_of(graph)
        result.vanilla_ms = vanilla_split_ms(graph)
    return result


def _or_device_alone(graph: TierGraph, optimum: Callable[[], TierCut]) -> TierCut:
    """The chain's optimum, or training on the device alone where a U-shape allows that and it
    is no slower (`TierGraph.device_alone`: not a tiering the chain's cut can express)."""
    alone = float(graph.compute_ms[:, 0].sum()) if graph.u_shape and graph.device_alone() \
        else np.inf
    try:
        cut = optimum()
    except PartitionError:
        if not np.isfinite(alone):
            raise
        return TierCut(np.zeros(len(graph), dtype=np.int64), alone, 0, 0)
    if alone <= cut.value:
        return TierCut(np.zeros(len(graph), dtype=np.int64), alone, cut.vertices, cut.edges)
    return cut


def baselines_of(graph: TierGraph) -> dict[str, float]:
    """Baselines under the same cost model, each a valid tiering (or, for a U-shape, its
    device alone: nothing crosses): the first tier alone and the best contiguous ranges."""
    from toolkit.partition.baselines import best_ranges

    out: dict[str, float] = {}
    if graph.device_alone():
        out["first_tier_only"] = float(graph.compute_ms[:, 0].sum())
    ranges = best_ranges(graph)[0]
    if np.isfinite(ranges):
        out["best_ranges"] = ranges
    return out


def vanilla_split_ms(graph: TierGraph) -> float | None:
    """For a U-shape, the optimum of vanilla split learning on its first boundary (labels go
    to the server): beside the U-shape's optimum, what keeping the labels home costs."""
    from toolkit.partition import solve

    if not graph.u_shape:
        return None
    return solve(graph.base, with_baselines=False).delay.total


def blockwise_optimum(graph: TierGraph, blocks: BlockStructure) -> TierCut:
    """The layered cut's optimum by a DP over the chain of segments (module docstring), where
    the chain holds (`weights_follow`, which `solve_tiers` checks first)."""
    if blocks.layer_count != len(graph):
        raise PartitionError("block structure and cost graph describe different models")
    labels_inside = _labels_inside(graph, blocks)
    groups = _groups(graph, blocks, labels_inside)
    best: TierCut | None = None
    vertices = edges = 0
    cache: dict[tuple[int, int, int, tuple[int, ...]], TierCut | None] = {}
    for quiet in quiet_sets(graph):
        solved = _chain_pass(graph, blocks, groups, labels_inside, quiet, cache)
        if solved is None:
            continue
        tier, v, e = solved
        vertices, edges = vertices + v, edges + e
        total = tier_delay(graph, tier).total
        if best is None or total < best.value:
            best = TierCut(tier, total, 0, 0)
    if best is None:
        raise PartitionError(NO_PARTITION)
    return TierCut(best.tier, best.value, vertices, edges)


def _chain_pass(graph: TierGraph, blocks: BlockStructure, groups: np.ndarray,
                labels_inside: np.ndarray, quiet: tuple[int, ...],
                cache: dict[tuple[int, int, int, tuple[int, ...]], TierCut | None],
                ) -> tuple[np.ndarray, int, int] | None:
    """The best tiering quiet on `quiet`: the DP over segments (None: no valid tiering).
    `cache` keeps inner solutions across passes: a segment between tiers a and b is affected
    only by the quiet boundaries between them, and none can lie there when a < b (a path
    from its entry to its exit would cross it)."""
    k = graph.k
    arr = blocks.arrays
    vertices = edges = 0
    previous = np.full(k, np.inf)
    previous[0] = 0.0  # the virtual input sits on the first tier
    choices: list[tuple[np.ndarray, list[TierCut | None]]] = []
    for j, seg in enumerate(blocks.segments):
        row = arr.instances[seg.type_id][arr.row_in_type[j]]
        closed = seg.exit is not None
        current = np.full(k, np.inf)
        argmin = np.full(k, -1, dtype=np.int64)
        cuts: list[TierCut | None] = [None] * k
        for a in np.flatnonzero(np.isfinite(previous)).tolist():
            for b in range(a, k) if closed else [a]:
                span = tuple(q for q in quiet if a <= q < (b if closed else k - 1))
                if closed and span:
                    continue
                key = (int(groups[j]), a, b, span)
                if key not in cache:
                    cache[key] = _inner(graph, row, a, b, closed, span, bool(labels_inside[j]))
                    found = cache[key]
                    if found is not None:
                        vertices, edges = vertices + found.vertices, edges + found.edges
                inner = cache[key]
                if inner is None:
                    continue
                value = previous[a] + inner.value
                slot = b if closed else a
                if value < current[slot]:
                    current[slot], argmin[slot], cuts[slot] = value, a, inner
        choices.append((argmin, cuts))
        previous = current
    if not np.isfinite(previous).any():
        return None
    tier = np.zeros(len(graph), dtype=np.int64)
    slot = int(np.argmin(previous))
    for j in range(len(blocks.segments) - 1, -1, -1):
        argmin, cuts = choices[j]
        inner = cuts[slot]
        assert inner is not None
        row = arr.instances[blocks.segments[j].type_id][arr.row_in_type[j]]
        members = row[1:] if row[0] < 0 else row
        tier[members] = inner.tier
        slot = int(argmin[slot])
    return tier, vertices, edges


def _inner(graph: TierGraph, row: np.ndarray, a: int, b: int, closed: bool,
           quiet: tuple[int, ...], labels: bool) -> TierCut | None:
    """One segment's best inside with its entry on tier a and (closed) its exit on tier b; its
    value leaves out the entry's own compute."""
    entry = int(row[0])
    layers = row[1:] if entry < 0 else row
    if closed and a == b:  # all on one tier: nothing crosses, no cut needed
        members = row[1:]
        if ((graph.lowest[layers] > a) | (graph.highest[layers] < a)).any():
            return None
        has_output = labels and bool(np.isin(graph.outputs, members).any())
        value = float(graph.compute_ms[members, a].sum()) \
            + (float(graph.labels_ms[:a].sum()) if has_output else 0.0)
        return TierCut(np.full(len(layers), a, dtype=np.int64), value, 0, 0)
    lowest = np.full(len(layers), a, dtype=np.int64)
    highest = np.full(len(layers), b if closed else graph.k - 1, dtype=np.int64)
    if entry >= 0:
        highest[0] = a
    if closed:
        lowest[-1] = b
    cut = layered_cut(graph, quiet, layers.tolist(), lowest, highest, labels)
    if cut is None or entry < 0:
        return cut
    # the entry's compute belongs to the segment it closes (and differs between instances)
    return TierCut(cut.tier, cut.value - float(graph.compute_ms[entry, a]), cut.vertices,
                   cut.edges)


def _labels_inside(graph: TierGraph, blocks: BlockStructure) -> np.ndarray:
    """Per segment: it holds the last model output (its inner cut prices the labels)."""
    flags = np.zeros(len(blocks.segments), dtype=bool)
    if graph.outputs:
        last = max(graph.outputs)
        flags[next(j for j, s in enumerate(blocks.segments) if last in s.layers)] = True
    return flags


def _groups(graph: TierGraph, blocks: BlockStructure, labels_inside: np.ndarray) -> np.ndarray:
    """Per segment, a group id: equal ids have equal inner problems in every cost and pin."""
    arr = blocks.arrays
    base = graph.base
    groups = np.zeros(len(blocks.segments), dtype=np.int64)
    flags = np.zeros((len(graph), 3))
    flags[:, 0] = graph.lowest
    flags[:, 1] = graph.highest
    flags[list(graph.outputs), 2] = 1.0
    layouts = tensor_layouts(base, blocks)
    next_group = 0
    for type_id, rows in arr.instances.items():
        segs = arr.segments_of[type_id]
        layers = rows[:, 1:]
        features = [graph.compute_ms[layers].reshape(len(rows), -1),
                    flags[layers].reshape(len(rows), -1), labels_inside[segs, None]]
        layout = layouts[type_id]
        if layout is None:
            keys = np.arange(len(rows))
        else:
            features += [layout.costs(graph.crossing_ms[:, b]) for b in range(graph.k - 1)]
            keys = same_rows(np.column_stack(features))
        groups[segs] = keys + next_group
        next_group += int(keys.max()) + 1
    return groups
