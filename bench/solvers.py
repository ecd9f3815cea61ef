"""Max-flow back ends on the same s-t construction, for choosing the solver on evidence."""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import numpy as np

from toolkit.costgraph import CostGraph
from toolkit.partition.stcut import min_cut

_SCALE = 1e6  # integer solvers: microsecond-of-a-millisecond resolution


def infinity(graph: CostGraph, layers: range, tensors: range) -> float:
    """A capacity no finite cut reaches: twice every finite capacity, plus one (as stcut)."""
    idx = list(layers)
    finite = graph.device_arr[idx].sum() + graph.server_arr[idx].sum()
    return 2.0 * float(finite + graph.tensor_crossing[list(tensors)].sum()) + 1.0


def arcs(graph: CostGraph) -> tuple[int, list[tuple[int, int, float]]]:
    """The general construction as (vertex count, [(u, v, capacity)]); s = n, t = n + 1."""
    n = len(graph)
    inf = infinity(graph, range(n), range(len(graph.tensors)))
    s, t = n, n + 1
    out = []
    for v in range(n):
        out.append((s, v, inf if graph.pinned[v] else float(graph.server_ms[v])))
        out.append((v, t, float(graph.device_ms[v])))
    aux = n + 2
    for x in graph.tensors:
        out.append((x.producer, aux, x.crossing_ms))
        for c in x.consumers:
            out.append((aux, c, inf))
            out.append((c, x.producer, inf))
        aux += 1
    return aux, out


def pymaxflow(graph: CostGraph) -> float:
    return min_cut(graph).value


def ortools(graph: CostGraph) -> float:
    from ortools.graph.python import max_flow

    _, edges = arcs(graph)
    solver = max_flow.SimpleMaxFlow()
    tails = np.array([e[0] for e in edges], dtype=np.int64)
    heads = np.array([e[1] for e in edges], dtype=np.int64)
    caps = np.array([round(e[2] * _SCALE) for e in edges], dtype=np.int64)
    solver.add_arcs_with_capacity(tails, heads, caps)
    solver.solve(len(graph), len(graph) + 1)
    return float(solver.optimal_flow()) / _SCALE


def scipy_flow(graph: CostGraph) -> float:
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow

    count, edges = arcs(graph)
    cap_limit = 2**31 - 1
    biggest = max(e[2] for e in edges if e[2] < infinity(graph, range(len(graph)),
                                                         range(len(graph.tensors))))
    scale = min(_SCALE, (cap_limit // 4) / max(biggest * len(edges) ** 0.5, 1.0))
    rows = [e[0] for e in edges]
    cols = [e[1] for e in edges]
    data = [min(cap_limit, round(e[2] * scale)) for e in edges]
    m = csr_matrix((np.array(data, dtype=np.int32), (rows, cols)), shape=(count, count))
    m.sum_duplicates()
    return float(maximum_flow(m, len(graph), len(graph) + 1).flow_value) / scale


def networkx_flow(graph: CostGraph) -> float:
    _, edges = arcs(graph)
    g = nx.DiGraph()
    for u, v, c in edges:
        g.add_edge(u, v, capacity=c)
    value, _ = nx.minimum_cut(g, len(graph), len(graph) + 1,
                              flow_func=nx.algorithms.flow.preflow_push)
    return float(value)


SOLVERS: dict[str, Callable[[CostGraph], float]] = {
    "PyMaxflow (BK, float64)": pymaxflow,
    "OR-Tools SimpleMaxFlow (int64, x1e6)": ortools,
    "scipy maximum_flow (int32, scaled)": scipy_flow,
    "networkx preflow_push (float)": networkx_flow,
}


def dads_pymaxflow(graph: CostGraph) -> float:
    """The DADS construction (min cut without the monotone edges) on the same C++ solver and
    the same vectorised graph building as the general cut, so the comparison is like for
    like."""
    return min_cut(graph, monotone=False).value
