"""Plain-data views of results, shared by `--json` output and the people-facing tables."""

from __future__ import annotations

from typing import Any

from toolkit.graph import LayerGraph


def inspect_dict(graph: LayerGraph) -> dict[str, Any]:
    """`splitcut inspect --json`: every layer's facts, totals and what the reader could not cost."""
    return {
        "model": graph.name,
        "inputs": list(graph.inputs),
        "outputs": list(graph.outputs),
        "layers": [
            {
                "name": layer.name,
                "op": layer.op,
                "module": layer.module,
                "flops": layer.flops,
                "macs": layer.macs,
                "params": layer.params,
                "param_bytes": layer.param_bytes,
                "in_bytes": layer.in_bytes,
                "out_bytes": layer.out_bytes,
                "inputs": list(layer.inputs),
                "outputs": list(layer.outputs),
                "supported": layer.supported,
            }
            for layer in graph
        ],
        "totals": {
            "layers": len(graph),
            "flops": graph.total_flops,
            "macs": graph.total_macs,
            "params": graph.total_params,
        },
        "unsupported_ops": dict(graph.unsupported_ops),
        "unknown_shapes": list(graph.unknown_shapes),
        "notes": list(graph.notes),
    }


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' — compact numbers for tables."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}" if float(n).is_integer() else f"{n:.2f}{unit}"


def human_bytes(n: float) -> str:
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{n:.0f} B"
