"""Optimal device/server partition of a cost graph, with baselines and a self-check."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from toolkit.blocks import BlockStructure
from toolkit.collector import collector_paused
from toolkit.costgraph import CostGraph, Delay, crossing_tensors, peak_memory
from toolkit.errors import PartitionError
from toolkit.partition import baselines
from toolkit.partition.blockwise import follows, solve_blockwise
from toolkit.partition.messages import with_latency
from toolkit.partition.stcut import CutResult, general_size, min_cut
from toolkit.partition.validate import validate_partition

METHODS = ("general", "blockwise")
_REL_TOL = 1e-9

__all__ = ["METHODS", "Partition", "checked_partition", "solve", "validate_partition"]


@dataclass
class Partition:
    graph: CostGraph
    device: list[int]
    delay: Delay
    method: str
    vertices: int
    edges: int
    solve_ms: float
    blocks_ms: float = 0.0
    baselines_ms: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float | None] = field(default_factory=dict)  # a budget's proof, ...

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract of `splitcut partition --json`."""
        g = self.graph
        on_device = set(self.device)
        return {
            "model": g.model,
            "scenario": g.scenario,
            "partition": {
                "device_layers": [g.names[i] for i in range(len(g)) if i in on_device],
                "server_layers": [g.names[i] for i in range(len(g)) if i not in on_device],
                "cut_tensors": [t.name for t in crossing_tensors(g, on_device)],
            },
            "delay_ms": {
                "total": self.delay.total,
                "device_compute": self.delay.device_compute,
                "server_compute": self.delay.server_compute,
                "crossing": self.delay.crossing,
                "latency": self.delay.latency,
                "labels": self.delay.labels,
            },
            "baselines_ms": self.baselines_ms,
            **({"memory": {"device_peak_bytes": peak_memory(g, on_device),
                           "server_peak_bytes": peak_memory(
                               g, [i for i in range(len(g)) if i not in on_device], "server"),
                           **self.memory}} if g.memory is not None else {}),
            "notes": list(g.notes),
            "solver": {
                "method": self.method, "vertices": self.vertices, "edges": self.edges,
                "solve_ms": self.solve_ms, "blocks_ms": self.blocks_ms,
                "general_vertices": general_size(g)[0], "general_edges": general_size(g)[1],
            },
        }


@collector_paused
def solve(
    graph: CostGraph,
    method: str = "general",
    with_baselines: bool = True,
    blocks: BlockStructure | None = None,
    blocks_ms: float = 0.0,
) -> Partition:
    """The minimum-delay valid partition, checked by `validate_partition` before it is returned.

    `blockwise` needs the model's block structure (`toolkit.blocks.find_blocks`), computed once
    per model; `blocks_ms` reports what that took (0 when it was cached). Where the chain does
    not hold for this scenario (`toolkit.partition.blockwise.weights_follow`), the general cut
    is solved and the result says `general`.
    """
    if method not in METHODS:
        raise PartitionError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "blockwise" and blocks is None:
        raise PartitionError("the blockwise method needs the model's block structure")
    start = time.perf_counter()
    if method == "blockwise" and blocks is not None and not follows(graph, blocks.weight_only):
        method = "general"  # the chain does not hold for this scenario: solved whole, said so
    if method == "blockwise":
        assert blocks is not None
        cut = solve_blockwise(graph, blocks)
    else:
        cut = min_cut(graph)
    cut = with_latency(graph, cut)
    solve_ms = (time.perf_counter() - start) * 1e3
    result = checked_partition(graph, cut, method, solve_ms, blocks_ms, with_baselines)
    return result


def checked_partition(
    graph: CostGraph, cut: CutResult, method: str, solve_ms: float, blocks_ms: float = 0.0,
    with_baselines: bool = True,
) -> Partition:
    """A solver's answer, validated and re-costed from scratch, with the baselines beside it."""
    checked = validate_partition(graph, cut.device)
    if abs(checked.total - cut.value) > _REL_TOL * max(1.0, abs(cut.value)) * len(graph):
        raise PartitionError(
            f"solver self-check failed: cut value {cut.value} but D(S) = {checked.total}"
        )
    result = Partition(graph, sorted(cut.device), checked, method, cut.vertices, cut.edges,
                       solve_ms, blocks_ms)
    if with_baselines:
        result.baselines_ms = {
            "device_only": baselines.device_only(graph),
            "server_only": baselines.server_only(graph),
            "best_chain_split": baselines.best_chain_split(graph)[0],
            "dads_repaired": baselines.dads_repaired(graph),
        }
    return result
