"""Rows for the store's batched statements: node keys that cannot collide, batches of rows, and
the layer and edge rows of an ingest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from toolkit.blocks import layer_key, tensor_key, weight_only
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


def node_uids(model: str, version: str, nodes: Iterable[str | int]) -> list[str]:
    """The unique keys of layers or blocks (by name or index) of one version of a model:
    fixed-size (names of any length index) and collision-free (model 'a' with layer 'b/c' and
    model 'a/b' with layer 'c' differ, and so do two versions of one model), the name kept
    beside them. Each is the SHA-256 of the JSON list `[model, version, node]`, the common
    prefix hashed once."""
    prefix = hashlib.sha256(json.dumps([model, version])[:-1].encode() + b", ")
    uids = []
    for node in nodes:
        digest = prefix.copy()
        digest.update(json.dumps(node).encode() + b"]")
        uids.append(digest.hexdigest())
    return uids


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


Rows = list[list[Any]]
Batch = Callable[[], tuple[Rows, Rows, Rows]]


def ingest_rows(graph: LayerGraph, costs: CostGraph, version: str, batch: int) -> list[Batch]:
    """A version of a layer graph and its delays as plain rows for UNWIND, in batches of
    `batch` layers: lists in the order `ingest_layers.cypher` and `ingest_feeds.cypher` read
    their fields (a list costs the server no field names to decode, unlike a map). Each
    batch is built when its writer calls for it, while the server writes the batch before:
    (layer rows, edges inside the batch, edges into it from earlier batches). An edge inside
    a batch names its ends by position in the batch (p, c), one from an earlier batch by
    topological position (producer, consumer). A layer reading one tensor at several inputs
    gets one edge, at the first."""
    layers = list(graph)
    produced = {t.name: t for t in costs.tensors}
    off_path = set(weight_only(graph))
    outputs = set(costs.outputs)

    def rows(start: int) -> Batch:
        def build() -> tuple[Rows, Rows, Rows]:
            span = layers[start:start + batch]
            uids = node_uids(graph.name, version, [layer.name for layer in span])
            nodes = [
                [uid, layer.name, layer.op, i, layer.flops, layer.macs, layer.params,
                 layer.out_bytes, float(costs.device_ms[i]), float(costs.server_ms[i]),
                 bool(costs.pinned[i]), layer.module, layer_key(graph, layer), i in off_path,
                 i in outputs]
                for i, (layer, uid) in enumerate(zip(span, uids, strict=True), start)]
            inside: Rows = []
            earlier: Rows = []
            for c, layer in enumerate(span, start):
                seen = set()
                for position, name in enumerate(layer.inputs):
                    t = produced.get(name)
                    if t is None or name in seen:
                        continue
                    seen.add(name)
                    edge = [name, t.bytes, t.crossing_ms, position,
                            tensor_key(graph, layers[t.producer], name)]
                    if t.producer >= start:
                        inside.append([t.producer - start, c - start, *edge])
                    else:
                        earlier.append([t.producer, c, *edge])
            return nodes, inside, earlier
        return build

    return [rows(start) for start in range(0, len(layers), batch)]
