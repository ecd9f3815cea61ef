"""Independent oracles for partitions: brute force over all subsets, and networkx's max-flow."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import networkx as nx

from toolkit.costgraph import CostGraph, CostTensor


def is_valid(graph: CostGraph, device: set[int], server_pinned: set[int] = frozenset()) -> bool:
    if any(graph.pinned[i] and i not in device for i in range(len(graph))):
        return False
    if server_pinned & device:
        return False
    return all(not (w in device and u not in device) for u, w in graph.edges())


def total(graph: CostGraph, device: set[int]) -> float:
    """D(S) from the definition: compute, crossing tensors once, latency once per iteration
    when anything crosses, labels when a model output runs on the server."""
    d = sum(graph.device_ms[i] if i in device else graph.server_ms[i] for i in range(len(graph)))
    crossing = [t for t in graph.tensors
                if t.producer in device and any(c not in device for c in t.consumers)]
    d += sum(t.crossing_ms for t in crossing)
    if crossing:
        d += graph.latency_ms
    if any(o not in device for o in graph.outputs):
        d += graph.labels_ms
    return d


def brute_force(graph: CostGraph, server_pinned: set[int] = frozenset()) -> float:
    """min D(S) over every valid subset: 2^n candidates."""
    n = len(graph)
    best = float("inf")
    for bits in itertools.product((0, 1), repeat=n):
        device = {i for i in range(n) if bits[i]}
        if is_valid(graph, device, server_pinned):
            best = min(best, total(graph, device))
    return best


def monotone_partitions(graph: CostGraph) -> Iterator[set[int]]:
    """Every device set closed under producers (a layer on the device has its inputs there),
    by depth-first choice in topological order: far fewer than 2^n on most DAGs."""
    n = len(graph)
    preds: list[set[int]] = [set() for _ in range(n)]
    for u, w in graph.edges():
        preds[w].add(u)

    def extend(i: int, device: set[int]) -> Iterator[set[int]]:
        if i == n:
            yield set(device)
            return
        yield from extend(i + 1, device)
        if preds[i] <= device:
            device.add(i)
            yield from extend(i + 1, device)
            device.discard(i)

    yield from extend(0, set())


def brute_force_monotone(graph: CostGraph, server_pinned: set[int] = frozenset()) -> float:
    """min D(S) over every monotone partition that honours the pins."""
    best = float("inf")
    for device in monotone_partitions(graph):
        if is_valid(graph, device, server_pinned):
            best = min(best, total(graph, device))
    return best


def networkx_optimum(graph: CostGraph) -> float:
    """The same s-t construction, built independently, solved by networkx preflow-push."""
    g = nx.DiGraph()
    g.add_node("s")
    g.add_node("t")
    for i in range(len(graph)):
        if graph.pinned[i]:
            g.add_edge("s", i)  # no capacity attribute = infinite
        else:
            g.add_edge("s", i, capacity=graph.server_ms[i])
        g.add_edge(i, "t", capacity=graph.device_ms[i])
    for k, t in enumerate(graph.tensors):
        g.add_edge(t.producer, ("x", k), capacity=t.crossing_ms)
        for c in t.consumers:
            g.add_edge(("x", k), c)
            g.add_edge(c, t.producer)
    if graph.outputs:
        g.add_edge("s", "labels", capacity=graph.labels_ms)
        for o in graph.outputs:
            g.add_edge("labels", o)
    value, _ = nx.minimum_cut(g, "s", "t", flow_func=nx.algorithms.flow.preflow_push)
    return float(value)


def networkx_delay_optimum(graph: CostGraph) -> float:
    """The optimum of D on a weakly connected model: the better of the latency-free min cut
    plus one latency per iteration and training on the device alone (the only partition of a
    connected model across which nothing crosses)."""
    g = nx.DiGraph(list(graph.edges()))
    g.add_nodes_from(range(len(graph)))
    assert nx.is_weakly_connected(g), "the oracle covers connected models"
    return min(networkx_optimum(graph) + graph.latency_ms, sum(graph.device_ms))




def make_graph(
    n: int, edges: list[tuple[int, int]], device: list[float], server: list[float],
    crossing: list[float], pinned: list[bool],
) -> CostGraph:
    """One tensor per producing layer, read by all of its successors."""
    consumers: dict[int, list[int]] = {}
    for u, w in edges:
        consumers.setdefault(u, []).append(w)
    tensors = [
        CostTensor(f"t{u}", u, tuple(sorted(set(ws))), 4.0, crossing[u])
        for u, ws in sorted(consumers.items())
    ]
    return CostGraph(
        model="random", names=[f"l{i}" for i in range(n)], ops=["Op"] * n,
        device_ms=device, server_ms=server, pinned=pinned, tensors=tensors,
    )
