"""Partitions of a model stored in Neo4j, solved from the rows the store returns.

The store only reads and writes; this module turns its rows (`Rows`: a saved query by name
with keyword parameters, inside the store's consistent read or its solve transaction) into
the cost graph, the compressed chain and the insides of the segments the block-wise scan
asks for, and solves them with the same solvers as the embedded path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from toolkit.costgraph import CostGraph, CostTensor
from toolkit.errors import NotStoredError
from toolkit.partition import Partition, checked_partition
from toolkit.partition.blockwise import Chain, Inner, follows, solve_chain, solve_segment
from toolkit.partition.messages import with_latency
from toolkit.partition.stcut import min_cut

Rows = Callable[..., list[dict[str, Any]]]
"""Runs a saved query by name with keyword parameters and returns its rows."""


def solve_stored(model: str, costs: CostGraph, method: str, read: Rows) -> Partition:
    """The optimum of the stored model: block-wise reads only the compressed chain (per-block
    sums computed in Cypher) and the insides of the segments it must solve; `general` reads
    the whole cost graph back, as block-wise does (and says `general`) where the chain does
    not hold for the scenario (`toolkit.partition.blockwise.weights_follow`). Either answer
    is checked against `costs`, the cost graph the caller computed, before it is returned."""
    start = time.perf_counter()
    if method == "blockwise" and not follows(
            costs, [int(r["topo"]) for r in read("read_weight_only", model=model)]):
        method = "general"
    if method == "blockwise":
        found = chain(model, read)
        cut = solve_chain(found, lambda k, labels: segment(model, found, k, labels, read))
    else:
        cut = min_cut(cost_graph(model, read))
    cut = with_latency(costs, cut)  # per-message latency, exactly, on the same costs
    return checked_partition(costs, cut, method, (time.perf_counter() - start) * 1e3)


def segment(model: str, found: Chain, k: int, labels: bool, read: Rows) -> Inner:
    """Read segment k's inside (and nothing else) and solve its inner min cut."""
    entry, last = int(found.entries[k]), int(found.exits[k])
    first = max(entry, 0)
    rows = read("read_segment", model=model, first=first, last=last)
    local = CostGraph(
        model=model, names=[str(r["topo"]) for r in rows], ops=["" for _ in rows],
        device_ms=[float(r["device_ms"]) for r in rows],
        server_ms=[float(r["server_ms"]) for r in rows],
        pinned=[bool(r["pinned"]) for r in rows],
        tensors=[
            CostTensor(t["tensor"], int(r["topo"]) - first,
                       tuple(int(c) - first for c in t["consumers"]), 0.0,
                       float(t["crossing_ms"]))
            for r in rows for t in r["tensors"] if t["consumers"]
        ],
        labels_ms=found.labels_ms,
        outputs=[i for i, r in enumerate(rows) if r["output"]],
    )
    row = [entry - first if entry >= 0 else -1, *range(max(entry + 1, 0) - first,
                                                        last - first + 1)]
    return solve_segment(local, row, bool(found.closed[k]), set(), labels)


def cost_graph(model: str, read: Rows) -> CostGraph:
    """A stored cost graph from its rows."""
    layers = read("read_layers", model=model)
    if not layers:
        raise NotStoredError(f"model {model!r} is not in Neo4j: ingest it first")
    tensors = [
        CostTensor(r["tensor"], int(r["producer"]), tuple(int(c) for c in r["consumers"]),
                   float(r["bytes"]), float(r["crossing_ms"]))
        for r in read("read_tensors", model=model)
    ]
    stored = read("model_get", name=model)
    message = stored[0] if stored else {}
    return CostGraph(
        model=model, names=[r["name"] for r in layers], ops=[r["op"] for r in layers],
        device_ms=[float(r["device_ms"]) for r in layers],
        server_ms=[float(r["server_ms"]) for r in layers],
        pinned=[bool(r["pinned"]) for r in layers], tensors=tensors,
        scenario=json.loads(stored[0]["scenario"]) if stored else {},
        flops=[float(r["flops"]) for r in layers], macs=[float(r["macs"]) for r in layers],
        params=[int(r["params"]) for r in layers],
        latency_ms=float(message.get("latency_ms") or 0.0),
        labels_ms=float(message.get("labels_ms") or 0.0),
        outputs=[i for i, r in enumerate(layers) if r["output"]],
    )


def chain(model: str, read: Rows) -> Chain:
    """The compressed chain with the stored delays summed per block, computed in Cypher.

    Blocks share an inner solution only when their inner problems are identical: the same
    type and the same per-layer delays, pins and output flags and per-tensor crossing costs
    (tensors matched by producer position, output slot and consumer position)."""
    found = read("read_chain", model=model)
    if not found:
        raise NotStoredError(f"model {model!r} has no blocks in Neo4j: ingest it first")
    pinned = [int(r["last_pinned"]) for r in found if r["last_pinned"] is not None]
    out = Chain(
        layer_count=int(found[-1]["exit"]) + 1,
        entries=np.array([r["entry"] for r in found], dtype=np.int64),
        exits=np.array([r["exit"] for r in found], dtype=np.int64),
        closed=np.array([r["closed"] for r in found], dtype=bool),
        device=np.array([r["device"] for r in found], dtype=np.float64),
        server=np.array([r["server"] for r in found], dtype=np.float64),
        cheapest=np.array([r["cheapest"] for r in found], dtype=np.float64),
        exit_cross=np.array([r["exit_cross"] if r["closed"] else 0.0 for r in found]),
        groups=np.zeros(len(found), dtype=np.int64),
        last_pinned=max(pinned, default=-1),
        outputs=tuple(sorted(int(o) for r in found for o in r["outputs"])),
        labels_ms=float(found[0]["labels_ms"] or 0.0),
    )
    labels_inside = out.labels_inside()
    group_of: dict[tuple[object, ...], int] = {}
    for k, r in enumerate(found):
        key = (r["signature"], bool(labels_inside[k]),
               tuple(sorted(tuple(x) for x in r["inner_layers"])),
               tuple(sorted(tuple(x) for x in r["inner_tensors"])))
        out.groups[k] = group_of.setdefault(key, len(group_of))
    return out
