"""Plain-data views of results, shared by `--json` output and the people-facing tables."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table

from toolkit.graph import LayerGraph
from toolkit.partition import Partition


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


def partition_report(result: Partition, graph: LayerGraph) -> Group:
    """For people: where the cut is, what crosses, the delays, and the gain over baselines."""
    data = result.to_dict()
    g = result.graph
    on_device = set(result.device)
    modules = [layer.module or layer.name for layer in graph]
    device_modules = list(dict.fromkeys(modules[i] for i in sorted(on_device)))
    server_modules = list(dict.fromkeys(modules[i] for i in range(len(g)) if i not in on_device))
    sc = data["scenario"]
    lines: list[RenderableType] = [
        f"[bold]{g.model}[/bold] on {sc['device']} + {sc['server']}, "
        f"uplink {human(sc['uplink_bps'], 'bit/s')}, "
        f"downlink {human(sc['downlink_bps'], 'bit/s')}, "
        f"latency {sc['latency_ms']:g} ms, batch {sc['batch']}",
        f"device: {len(on_device)} layers ({_span(device_modules)})",
        f"server: {len(g) - len(on_device)} layers ({_span(server_modules)})",
    ]
    cut = Table("crossing tensor", "from", "size / sample", "ms per iteration", title="cut")
    for t in g.tensors:
        if t.name in data["partition"]["cut_tensors"]:
            cut.add_row(t.name, g.names[t.producer], human_bytes(t.bytes), f"{t.crossing_ms:.2f}")
    if data["partition"]["cut_tensors"]:
        lines.append(cut)
    d = data["delay_ms"]
    lines.append(
        f"training delay per iteration: [bold]{d['total']:.2f} ms[/bold] = device "
        f"{d['device_compute']:.2f} + server {d['server_compute']:.2f} + crossing "
        f"{d['crossing']:.2f}"
    )
    base = Table("baseline", "delay ms", "optimum saves", title="baselines (same cost model)")
    for key, value in data["baselines_ms"].items():
        gain = (1 - d["total"] / value) * 100 if value > 0 else 0.0
        base.add_row(key.replace("_", " "), f"{value:.2f}", f"{gain:.1f}%")
    lines.append(base)
    s = data["solver"]
    lines.append(
        f"solver: {s['method']}, {s['vertices']} vertices, {s['edges']} edges, "
        f"{s['solve_ms']:.2f} ms (blocks {s['blocks_ms']:.2f} ms)"
    )
    return Group(*lines)


def _span(modules: list[str]) -> str:
    if not modules:
        return "none"
    if len(modules) <= 3:
        return ", ".join(modules)
    return f"{modules[0]} … {modules[-1]}"
