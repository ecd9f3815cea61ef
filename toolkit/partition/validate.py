"""`validate_partition`: the solver's self-check and the tests' oracle."""

from __future__ import annotations

from collections.abc import Collection

from toolkit.costgraph import CostGraph, Delay, delay
from toolkit.errors import PartitionError


def validate_partition(
    graph: CostGraph, device: Collection[int]
) -> Delay:
    """Check that `device` (layer indices) is a valid device side and return its D(S).

    Valid: indices in range; monotone (no data edge from the server back to the device);
    every pinned layer on the device and every server-pinned layer on the server.
    """
    on_device = set(device)
    n = len(graph)
    if any(not 0 <= i < n for i in on_device):
        raise PartitionError("partition names a layer index outside the model")
    for u, w in graph.edges():
        if w in on_device and u not in on_device:
            raise PartitionError(
                f"invalid partition: {graph.names[u]!r} is on the server but feeds "
                f"{graph.names[w]!r} on the device"
            )
    for i in range(n):
        if graph.pinned[i] and i not in on_device:
            raise PartitionError(
                f"invalid partition: pinned layer {graph.names[i]!r} left the device"
            )
    for i in graph.server_pinned:
        if i in on_device:
            raise PartitionError(f"invalid partition: {graph.names[i]!r} must run on the server")
    return delay(graph, on_device)
