"""Rows for the store's batched statements: node keys that cannot collide, batches of rows, and
the layer and edge rows of an ingest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from toolkit.blocks import layer_key, tensor_key
from toolkit.costgraph import CostGraph
from toolkit.graph import LayerGraph

Row = TypeVar("Row")
def by_layers(blocks: list[dict[str, Any]], batch: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive blocks in groups of at most `batch` layers (or one bigger block)."""
    group: list[dict[str, Any]] = []
    layers = 0
    for block in blocks:
        size = block["exit"] - block["entry"]
        if group and layers + size > batch:
            yield group
            group, layers = [], 0
        group.append(block)
        layers += size
    if group:
        yield group


def node_uid(model: str, version: str, node: str | int) -> str:
    """A layer's or block's unique key: fixed-size (names of any length index) and
    collision-free (model 'a' with layer 'b/c' and model 'a/b' with layer 'c' differ, and so
    do two versions of one model), the name kept beside it."""
    return hashlib.sha256(json.dumps([model, version, node]).encode()).hexdigest()


def batched(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    """`rows` in lists of at most `size`."""
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def ingest_rows(graph: LayerGraph, costs: CostGraph, version: str
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A version of a layer graph and its delays as plain rows for UNWIND: (layers, feeds)."""
    layers = list(graph)
    layer_rows = [
        {"uid": node_uid(graph.name, version, layer.name), "name": layer.name,
         "op": layer.op, "topo": i,
         "flops": layer.flops, "macs": layer.macs, "params": layer.params,
         "out_bytes": layer.out_bytes, "device_ms": float(costs.device_ms[i]),
         "server_ms": float(costs.server_ms[i]), "pinned": bool(costs.pinned[i]),
         "module": layer.module, "key": layer_key(graph, layer)}
        for i, layer in enumerate(layers)
    ]
    feed_rows = []
    for t in costs.tensors:
        producer = layers[t.producer]
        key = tensor_key(graph, producer, t.name)
        for c in t.consumers:
            feed_rows.append({
                "producer": t.producer, "consumer": c, "tensor": t.name, "bytes": t.bytes,
                "crossing_ms": t.crossing_ms, "position": layers[c].inputs.index(t.name),
                "tensor_key": key,
            })
    return layer_rows, feed_rows
