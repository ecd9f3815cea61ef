"""Plain-data views of results, shared by `--json` output and the people-facing tables."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from toolkit.blocks import BlockStructure
from toolkit.graph import LayerGraph
from toolkit.partition import Partition
from toolkit.partition.sweep import SweepResult
from toolkit.partition.tiers import TierPartition

if TYPE_CHECKING:
    from toolkit.train.session import TrainResult


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
        f"{d['crossing']:.2f} + latency {d['latency']:.2f} + labels {d['labels']:.2f}"
    )
    lines.append(
        f"(device and server compute include the {sc.get('optimizer', 'sgd')} optimizer step; "
        "latency is paid once each way per iteration when anything crosses; the server "
        "computes the loss, so labels "
        f"({sc.get('label_bytes', 8):g} bytes per sample) go up when it holds a model output)")
    if "memory" in data:
        lines.append(_memory_line(data["memory"], sc["device"]))
    pins = Counter(g.pin_reasons[i] for i in range(len(g)) if g.pinned[i])
    if pins:
        lines.append("kept on the device: " + "; ".join(
            f"{n} {'layer' if n == 1 else 'layers'} {reason}" for reason, n in pins.items()))
    for note in graph.notes:
        lines.append(f"note: {note}")
    lines.append(_baselines(data))
    s = data["solver"]
    lines.append(
        f"solver: {s['method']}, {s['vertices']} vertices, {s['edges']} edges, "
        f"{s['solve_ms']:.2f} ms (blocks {s['blocks_ms']:.2f} ms)"
    )
    if s["method"] == "blockwise":
        lines.append(
            f"block abstraction: the chain and its inner max-flows touched {s['vertices']} "
            f"vertices; the general cut needs one max-flow over {s['general_vertices']}"
        )
    return Group(*lines)


def tiers_report(result: TierPartition, graph: LayerGraph) -> Group:
    """For people: each tier's layers and compute, what crosses each boundary, the delay."""
    data = result.to_dict()
    g = result.graph
    modules = [layer.module or layer.name for layer in graph]
    sc = data["scenario"]
    chain = " -> ".join(f"{t['name']} ({t['processor']})" for t in sc["tiers"])
    lines: list[RenderableType] = [f"[bold]{g.base.model}[/bold] on {chain}, batch {sc['batch']}"]
    for t, tier in enumerate(data["partition"]["tiers"]):
        span = _span(list(dict.fromkeys(modules[i] for i in result.layers_on(t))))
        lines.append(f"{tier['name']}: {len(tier['layers'])} layers ({span}), "
                     f"compute {tier['compute_ms']:.2f} ms, training memory "
                     f"{_gb(tier['peak_memory_bytes'])}")
    links = sc["links"]
    table = Table("boundary", "Mbit/s on / back", "tensors", "bytes ms", "latency ms",
                  "labels ms", title="what crosses each boundary")
    for b, boundary in enumerate(data["partition"]["boundaries"]):
        table.add_row(f"{boundary['from']} -> {boundary['to']}",
                      f"{links[b]['uplink_bps'] / 1e6:g} / {links[b]['downlink_bps'] / 1e6:g}",
                      str(len(boundary["tensors"])), f"{boundary['crossing_ms']:.2f}",
                      f"{boundary['latency_ms']:.2f}", f"{boundary['labels_ms']:.2f}")
    lines.append(table)
    d = data["delay_ms"]
    lines.append(f"training delay per iteration: [bold]{d['total']:.2f} ms[/bold] = compute "
                 + " + ".join(f"{c:.2f}" for c in d["compute"])
                 + f" + crossing {d['crossing']:.2f} + latency {d['latency']:.2f} + labels "
                 f"{d['labels']:.2f}")
    if "memory" in data:
        m = data["memory"]
        lines.append("memory budgets: " + ", ".join(
            f"{name} {_gb(m['peaks_bytes'][name])} of {_gb(budget)}"
            for name, budget in m["budgets_bytes"].items())
            + (": proven optimal" if m["gap"] == 0 else f": within {m['gap']:.2%} of optimal")
            + f" (without them {m['unconstrained_ms']:.2f} ms; {m['solve_ms']:.0f} ms)")
    if "vanilla_split_ms" in data:
        vanilla = data["vanilla_split_ms"]
        lines.append(f"U-shape: the model's outputs, the loss and the labels stay on the "
                     f"{g.tiers[0]}; vanilla split learning (labels to the server) would take "
                     f"{vanilla:.2f} ms, so keeping them costs "
                     f"{(d['total'] / vanilla - 1) * 100 if vanilla else 0.0:+.1f}%")
    lines.append(_baselines(data))
    s = data["solver"]
    lines.append(f"solver: {s['method']}, {s['vertices']} vertices, {s['edges']} edges, "
                 f"{s['solve_ms']:.2f} ms (blocks {s['blocks_ms']:.2f} ms)")
    return Group(*lines)


def _baselines(data: dict[str, Any]) -> Table:
    """Each baseline's delay and what the optimum saves on it (never below 0: it is exact)."""
    total = data["delay_ms"]["total"]
    budgeted = "budget_bytes" in data.get("memory", {})
    table = Table("baseline", "delay ms", "optimum saves",
                  title="baselines (same cost model"
                  + ("; they ignore the memory budget: the optimum under it can be slower)"
                     if budgeted else ", never faster than the optimum)"))
    for key, value in data["baselines_ms"].items():
        gain = round((1 - total / value) * 100, 1) + 0.0 if value > 0 else 0.0
        table.add_row(key.replace("_", " "), f"{value:.2f}", f"{gain:.1f}%")
    return table


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.3g} GB"


def _memory_line(memory: dict[str, Any], device: str) -> str:
    """The device half's peak training memory, against the device's memory and any budget."""
    peak = memory["device_peak_bytes"]
    line = f"device training memory: peak {_gb(peak)} (server {_gb(memory['server_peak_bytes'])})"
    known = memory.get("device_memory_bytes")
    if known:
        line += (f"; the {device} has {_gb(known)}"
                 + ("" if peak <= known else ": [bold]it does not fit[/bold], give "
                    "--device-memory to find the best partition that does"))
    if "budget_bytes" in memory:
        gap = memory["gap"]
        line += (f"\nbudget {_gb(memory['budget_bytes'])}: "
                 + ("proven optimal" if gap == 0 else f"within {gap:.2%} of optimal")
                 + f" (Lagrangian bound {memory['lagrangian_bound_ms']:.2f} ms; without the "
                 f"budget {memory['unconstrained_ms']:.2f} ms at "
                 f"{_gb(memory['unconstrained_device_peak_bytes'])}"
                 + (f"; best single split that fits {memory['best_feasible_single_split_ms']:.2f}"
                    " ms" if memory["best_feasible_single_split_ms"] is not None else "")
                 + f"; {memory['solve_ms']:.0f} ms)")
    return line


def _span(modules: list[str]) -> str:
    if not modules:
        return "none"
    if len(modules) <= 3:
        return ", ".join(modules)
    return f"{modules[0]} … {modules[-1]}"


def blocks_dict(blocks: BlockStructure, graph: LayerGraph) -> dict[str, Any]:
    """`splitcut blocks --json`: cut vertices, segments, block types and the compressed chain."""
    names = list(graph.layers)
    return {
        "model": blocks.model,
        "layers": blocks.layer_count,
        "cut_vertices": [names[c] for c in blocks.cut_vertices],
        "types": [
            {"id": t.id, "name": t.name, "signature": t.signature, "size": t.size,
             "count": t.count}
            for t in blocks.types
        ],
        "segments": [
            {"index": s.index, "type": s.type_id,
             "entry": None if s.entry is None else names[s.entry],
             "exit": None if s.exit is None else names[s.exit],
             "layers": [names[p] for p in s.layers]}
            for s in blocks.segments
        ],
        "chain": [[t, n] for t, n in blocks.chain()],
    }


def blocks_report(blocks: BlockStructure) -> Group:
    table = Table("type", "name", "instances", "layers each", "signature",
                  title=f"{blocks.model}: block types")
    for t in sorted(blocks.types, key=lambda t: -t.count * t.size):
        table.add_row(str(t.id), escape(t.name), str(t.count), str(t.size), t.signature)
    types = {t.id: t for t in blocks.types}
    chain = " → ".join(
        (f"({' → '.join(types[t].name for t in period)}) x{n}" if len(period) > 1
         else f"{types[period[0]].name}{f' x{n}' if n > 1 else ''}")
        for period, n in _periodic([s.type_id for s in blocks.segments])
    )
    repeated = sum(t.size * (t.count - 1) for t in blocks.types)
    return Group(
        f"{blocks.layer_count} layers, {len(blocks.cut_vertices)} cut vertices, "
        f"{len(blocks.segments)} segments of {len(blocks.types)} block types "
        f"({repeated} layers are repeats of an earlier instance)",
        table,
        f"chain: {escape(chain)}",
    )


def _periodic(seq: list[int], longest: int = 4) -> list[tuple[list[int], int]]:
    """[a, b, a, b, a, b, c] -> [([a, b], 3), ([c], 1)]: repeated runs for display."""
    out: list[tuple[list[int], int]] = []
    i = 0
    while i < len(seq):
        best = ([seq[i]], 1)
        for p in range(1, longest + 1):
            period = seq[i : i + p]
            reps = 1
            while seq[i + reps * p : i + (reps + 1) * p] == period:
                reps += 1
            if reps > 1 and reps * p > best[1] * len(best[0]):
                best = (period, reps)
        out.append(best)
        i += best[1] * len(best[0])
    return out


def train_report(result: TrainResult) -> Group:
    """For people: measured against predicted, term by term in the order an iteration meets
    them (medians after warm-up)."""
    data = result.to_dict()
    table = Table("term", "predicted ms", "measured ms", "measured / predicted",
                  title=f"one iteration, median of {len(result.iterations)}")

    def row(key: str, label: str) -> None:
        ratio = data["ratio"].get(key)
        table.add_row(label, f"{result.predicted_ms[key]:.1f}", f"{result.measured_ms[key]:.1f}",
                      f"{ratio:.2f}" if ratio is not None else "-")

    tiers, boundaries = data["tiers"], data["boundaries"]
    for t, tier in enumerate(tiers):
        row(tier["term"], f"{tier['name']} forward + backward + step")
        if t < len(boundaries):
            b = boundaries[t]
            row(b["up_term"], f"{b['from']} -> {b['to']}: activations"
                + (" and labels" if b["labels"] else ""))
            row(b["down_term"], f"{b['to']} -> {b['from']}: gradients")
    row("total_ms", "whole iteration")
    placed = ", ".join(f"{t['name']} {t['layers']}" for t in tiers)
    crossing = [f"{escape(b['from'])} -> {escape(b['to'])}: "
                + escape(", ".join(b["tensors"]) or "nothing") for b in boundaries]
    losses = result.losses
    return Group(
        f"[bold]{escape(result.model)}[/bold], {result.cut} cut, batch {result.batch}; layers: "
        f"{escape(placed)}",
        *(crossing or ["nothing crosses: every layer on the device"]),
        f"link: {result.shaping}",
        f"predicted for {escape(result.predicted_for)} (profiles); measured on this machine, "
        "one CPU thread per tier",
        table,
        f"loss on the fixed synthetic batch: {losses[0]:.4g} -> {losses[-1]:.4g}"
        if losses else "no iterations measured",
    )


def _amount(value: float, unit: str) -> str:
    """1.5e7 bit/s -> '15 Mbit/s'; a batch as itself."""
    if unit != "bit/s":
        return f"{value:g}"
    for scale, name in ((1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")):
        if value >= scale:
            return f"{value / scale:.4g} {name}"
    return f"{value:.4g} bit/s"


def sweep_report(result: SweepResult, graph: LayerGraph) -> Group:
    """For people: each interval of the swept parameter, the partition optimal on it (layers
    per tier, where the cut lies, what crosses) and the delay across it."""
    modules = [layer.module or layer.name for layer in graph]
    what = {"uplink": "uplink rate", "downlink": "downlink rate",
            "rate": "link rate (both ways)", "batch": "batch"}[result.parameter]
    table = Table(what, "layers per tier", "last layer of each tier but the last", "crossing",
                  "delay ms", title=f"{escape(result.model)}: every optimal "
                  f"{'partition' if len(result.tiers) == 2 else 'tiering'} across the {what}")
    for piece, crossing in zip(result.pieces, result.crossing, strict=True):
        ends = [max((i for i, t in enumerate(piece.key) if t == tier), default=None)
                for tier in range(len(result.tiers) - 1)]
        table.add_row(
            f"{_amount(piece.lo, result.unit)} .. {_amount(piece.hi, result.unit)}",
            " / ".join(f"{name} {piece.key.count(t)}" for t, name in enumerate(result.tiers)),
            ", ".join(escape(modules[i]) if i is not None else "-" for i in ends),
            "; ".join(f"{len(c)} tensors" for c in crossing),
            f"{piece.delay_lo:.1f} .. {piece.delay_hi:.1f}")
    return Group(table, f"{len(result.pieces)} intervals from {result.solves} exact solves "
                        f"({result.solve_ms:.0f} ms)"
                 + ("" if result.parameter == "batch" else
                    ": breakpoints of the lower envelope of the delay's lines in 1/rate"))
