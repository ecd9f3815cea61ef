"""Plain-data views of results, shared by `--json` output and the people-facing tables."""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from toolkit.blocks import BlockStructure, periodic
from toolkit.costgraph import crossing_tensors
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


def table(title: str | None, *columns: str, numbers: tuple[str, ...] = ()) -> Table:
    """A table people read: `numbers` columns right-aligned and never wrapped (a number is
    not cut in two), the others folded to fit."""
    out = Table(title=title, title_justify="left")
    for name in columns:
        if name in numbers:
            out.add_column(name, justify="right", no_wrap=True)
        else:
            out.add_column(name, overflow="fold")
    return out


def duration(ms: float) -> str:
    """A delay people read: 3 significant digits, in ms below a second, else in s."""
    if abs(ms) >= 1000:
        return f"{_sig(ms / 1000)} s"
    return f"{_sig(ms)} ms"


def _sig(x: float) -> str:
    """3 significant digits, thousands separated, never '-0'."""
    if abs(x) < 1e-9 or abs(x) >= 100:  # rounding noise reads as 0
        return f"{round(x) + 0:,}"
    return f"{x:.3g}" if abs(x) >= 0.01 else "<0.01" if x > 0 else ">-0.01"


def percent(fraction: float) -> str:
    """0.8178 -> '82%', never '-0%'."""
    value = round(fraction * 100)
    return f"{value + 0}%"


def rate(bps: float) -> str:
    """A link rate in Mbit/s (Gbit/s from 1,000 Mbit/s up)."""
    return f"{_sig(bps / 1e9)} Gbit/s" if bps >= 1e9 else f"{_sig(bps / 1e6)} Mbit/s"


def rates(on: float, back: float) -> str:
    """'400 / 700 Mbit/s': both ways of a link, the unit once when they share it."""
    a, b = rate(on).split(" "), rate(back).split(" ")
    return f"{a[0]} / {b[0]} {a[1]}" if a[1] == b[1] else f"{rate(on)} / {rate(back)}"


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 layer', '4 layers' ('2 cut vertices' with `many`)."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def ingest_summary(statuses: Sequence[str], layers: int) -> str:
    """'ingested 96 of 100 models (90 created, 6 unchanged), 41,200 layers; 4 skipped'."""
    counts = Counter(statuses)
    skipped = counts.pop("skipped", 0)
    kinds = ", ".join(f"{n} {status}" for status, n in counts.most_common())
    line = f"ingested {sum(counts.values())} of {plural(len(statuses), 'model')}"
    line += f" ({kinds}), {plural(layers, 'layer')}" if counts else ""
    return line + (f"; {skipped} skipped" if skipped else "")


def verdict(total_ms: float, device_layers: int, layers: int, cut_after: list[str],
            device_only_ms: float | None) -> str:
    """The one line a person reads first: where the cut is, the delay, and the gain over
    training on the device alone (split learning's own baseline)."""
    if device_layers == layers:
        where = "no cut: train on the device alone"
    else:
        where = f"cut after {_span(cut_after)} ({plural(device_layers, 'layer')} on the device)"
    line = f"{where}: {duration(total_ms)} per iteration"
    if device_only_ms and device_layers < layers:  # (slower where a memory budget or a
        gain = 1 - total_ms / device_only_ms  # chosen cut rules the fastest out)
        line += (f", {percent(gain)} faster than training on the device alone"
                 if round(gain * 100) > 0 else
                 f", {percent(-gain)} slower than training on the device alone"
                 if round(gain * 100) < 0 else ", as fast as training on the device alone")
    return line


def partition_headline(result: Partition, graph: LayerGraph) -> str:
    """'resnet50: cut after maxpool (4 layers on the device): 2.01 s per iteration, ...'."""
    modules = [layer.module or layer.name for layer in graph]
    cut_after = list(dict.fromkeys(
        modules[t.producer] for t in crossing_tensors(result.graph, set(result.device))))
    return f"{result.graph.model}: " + verdict(
        result.delay.total, len(result.device), len(result.graph), cut_after,
        result.baselines_ms.get("device_only"))


def tiers_headline(result: TierPartition) -> str:
    """'resnet18: 4 layers on the device, 65 layers on the edge: 1.22 s per iteration'."""
    held = ", ".join(f"{plural(len(result.layers_on(t)), 'layer')} on the {name}"
                     for t, name in enumerate(result.graph.tiers) if result.layers_on(t))
    return f"{result.graph.base.model}: {held}: {duration(result.delay.total)} per iteration"


def partition_report(result: Partition, graph: LayerGraph, verbose: bool = False) -> Group:
    """For people: the verdict first, then what crosses, the delays, memory and baselines."""
    data = result.to_dict()
    g = result.graph
    on_device = set(result.device)
    modules = [layer.module or layer.name for layer in graph]
    crossing = [t for t in g.tensors if t.name in data["partition"]["cut_tensors"]]
    sc = data["scenario"]
    lines: list[RenderableType] = [
        Text(partition_headline(result, graph), style="bold"),
        f"on {sc['device']} + {sc['server']}, up {rate(sc['uplink_bps'])}, down "
        f"{rate(sc['downlink_bps'])}, latency {duration(sc['latency_ms'])}, batch {sc['batch']}",
        f"device: {plural(len(on_device), 'layer')} "
        f"({_span(list(dict.fromkeys(modules[i] for i in sorted(on_device))))}); "
        f"server: {plural(len(g) - len(on_device), 'layer')}",
    ]
    if crossing:
        cut = Table(title="what crosses the link", title_justify="left")
        cut.add_column("tensor", overflow="fold")
        cut.add_column("made by", overflow="fold")
        for header in ("per sample", "per iteration"):
            cut.add_column(header, justify="right", no_wrap=True)
        for t in crossing:
            cut.add_row(t.name, modules[t.producer], human_bytes(t.bytes),
                        duration(t.crossing_ms))
        lines.append(cut)
    d = data["delay_ms"]
    lines.append(Text.assemble(
        "per iteration: ", (duration(d["total"]), "bold"),
        f" = device {duration(d['device_compute'])} + server {duration(d['server_compute'])}"
        f" + crossing {duration(d['crossing'])} + latency {duration(d['latency'])} + labels "
        f"{duration(d['labels'])}"))
    if verbose:
        lines.append(
            f"(compute includes the {sc.get('optimizer', 'sgd')} optimizer step; latency is "
            "paid once each way per iteration when anything crosses; the server computes the "
            f"loss, so labels ({sc.get('label_bytes', 8):g} bytes per sample) go up when it "
            "holds a model output)")
    if "memory" in data:
        lines.append(_memory_line(data["memory"], sc["device"]))
    pins = Counter(g.pin_reasons[i] for i in range(len(g)) if g.pinned[i])
    if pins:
        lines.append("kept on the device: " + "; ".join(
            f"{plural(n, 'layer')} ({reason})" for reason, n in pins.items()))
    for note in graph.notes:
        lines.append(Text(f"note: {note}"))
    lines.append(_baselines(data))
    lines.append(_solver_line(data["solver"], verbose))
    return Group(*lines)


def _solver_line(s: dict[str, Any], verbose: bool) -> str:
    """How the optimum was found; with `verbose` the block abstraction's work too."""
    line = f"solver: {s['method']}, {duration(s['solve_ms'])}"
    if s["method"] == "blockwise" and "general_vertices" in s:
        line += (f" (the block chain and its segments' max-flows touched {s['vertices']:,} "
                 f"vertices; one max-flow over the whole graph has {s['general_vertices']:,})")
    if verbose:
        line += (f"; {s['vertices']:,} vertices, {s['edges']:,} edges; finding the repeated "
                 f"blocks took {duration(s['blocks_ms'])}")
    return line


def tiers_report(result: TierPartition, graph: LayerGraph, verbose: bool = False) -> Group:
    """For people: the delay first, each tier's layers, what crosses each boundary."""
    data = result.to_dict()
    g = result.graph
    modules = [layer.module or layer.name for layer in graph]
    sc = data["scenario"]
    d = data["delay_ms"]
    tiers = data["partition"]["tiers"]
    chain = " -> ".join(f"{t['name']} ({t['processor']})" for t in sc["tiers"])
    lines: list[RenderableType] = [Text(tiers_headline(result), style="bold"),
                                   f"on {chain}, batch {sc['batch']}"]
    table = Table(title="the tiers", title_justify="left")
    table.add_column("tier")
    table.add_column("layers", overflow="fold")
    for header in ("compute", "memory"):
        table.add_column(header, justify="right", no_wrap=True)
    for t, tier in enumerate(tiers):
        span = _span(list(dict.fromkeys(modules[i] for i in result.layers_on(t))))
        table.add_row(tier["name"], f"{len(tier['layers']):,} ({span})",
                      duration(tier["compute_ms"]), _gb(tier["peak_memory_bytes"]))
    lines.append(table)
    links = sc["links"]
    table = Table(title="what crosses each boundary", title_justify="left")
    table.add_column("boundary", no_wrap=True)
    table.add_column("link on / back", no_wrap=True)
    for header in ("tensors", "bytes", "latency", "labels"):
        table.add_column(header, justify="right", no_wrap=True)
    for b, boundary in enumerate(data["partition"]["boundaries"]):
        table.add_row(f"{boundary['from']} -> {boundary['to']}",
                      rates(links[b]["uplink_bps"], links[b]["downlink_bps"]),
                      f"{len(boundary['tensors']):,}", duration(boundary["crossing_ms"]),
                      duration(boundary["latency_ms"]), duration(boundary["labels_ms"]))
    lines.append(table)
    lines.append(Text.assemble(
        "per iteration: ", (duration(d["total"]), "bold"),
        " = compute " + " + ".join(duration(c) for c in d["compute"])
        + f" + crossing {duration(d['crossing'])} + latency {duration(d['latency'])}"
        f" + labels {duration(d['labels'])}"))
    if "memory" in data:
        m = data["memory"]
        lines.append("memory budgets: " + ", ".join(
            f"{name} {_gb(m['peaks_bytes'][name])} of {_gb(budget)}"
            for name, budget in m["budgets_bytes"].items())
            + (": proven optimal" if m["gap"] == 0 else f": within {m['gap']:.2%} of optimal")
            + f" (without them {duration(m['unconstrained_ms'])}; solved in "
            f"{duration(m['solve_ms'])})")
    if "vanilla_split_ms" in data:
        vanilla = data["vanilla_split_ms"]
        change = d["total"] / vanilla - 1 if vanilla else 0.0
        lines.append(f"U-shape: the model's outputs, the loss and the labels stay on the "
                     f"{g.tiers[0]}; vanilla split learning (labels to the server) would take "
                     f"{duration(vanilla)}, so keeping them costs "
                     + (f"{percent(change)} more" if round(change * 100) > 0 else "nothing"))
    lines.append(_baselines(data))
    lines.append(_solver_line(data["solver"], verbose))
    return Group(*lines)


FORBIDDEN = {"server_only": "raw data would leave the device: not split learning"}


def _baselines(data: dict[str, Any]) -> Table:
    """Each baseline's delay and how the optimum compares (never slower: it is exact, unless
    a memory budget binds); references split learning forbids are labelled as such."""
    total = data["delay_ms"]["total"]
    budgeted = "budget_bytes" in data.get("memory", {})
    table = Table(title="against the usual choices (same cost model)"
                  + ("; they ignore the memory budget" if budgeted else ""),
                  title_justify="left")
    table.add_column("baseline", overflow="fold")
    table.add_column("per iteration", justify="right", no_wrap=True)
    table.add_column("the optimum", overflow="fold")
    for key, value in data["baselines_ms"].items():
        if key in FORBIDDEN:
            verdict_ = f"reference only: {FORBIDDEN[key]}"
        elif value <= 0:
            verdict_ = ""
        else:
            gain = 1 - total / value
            verdict_ = (f"{percent(gain)} faster" if round(gain * 100) > 0
                        else f"{percent(-gain)} slower" if round(gain * 100) < 0 else "the same")
        table.add_row(key.replace("_", " "), duration(value), verdict_)
    return table


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.3g} GB"


def _memory_line(memory: dict[str, Any], device: str) -> Text:
    """The device half's peak training memory, against the device's memory and any budget."""
    peak = memory["device_peak_bytes"]
    line = Text(f"device training memory: peak {_gb(peak)} "
                f"(server {_gb(memory['server_peak_bytes'])})")
    known = memory.get("device_memory_bytes")
    if known:
        line.append(f"; the {device} has {_gb(known)}")
        if peak > known:
            line.append(": ").append("it does not fit", "bold").append(
                ", give --device-memory to find the best partition that does")
    if "budget_bytes" in memory:
        gap = memory["gap"]
        line.append(f"\nbudget {_gb(memory['budget_bytes'])}: "
                    + ("proven optimal" if gap == 0 else f"within {gap:.2%} of optimal")
                    + f" (Lagrangian bound {memory['lagrangian_bound_ms']:.2f} ms; without the "
                    f"budget {memory['unconstrained_ms']:.2f} ms at "
                    f"{_gb(memory['unconstrained_device_peak_bytes'])}"
                    + (f"; best single split that fits "
                       f"{memory['best_feasible_single_split_ms']:.2f} ms"
                       if memory["best_feasible_single_split_ms"] is not None else "")
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


def blocks_report(blocks: BlockStructure, wide: bool = False) -> Group:
    """For people: the block types, most layers first, and the compressed chain; `wide`
    adds each type's signature (the hash Neo4j keys it by)."""
    table = Table(title=f"{blocks.model}: block types", title_justify="left")
    table.add_column("type", justify="right", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("instances", justify="right", no_wrap=True)
    table.add_column("layers each", justify="right", no_wrap=True)
    if wide:
        table.add_column("signature", no_wrap=True)
    for t in sorted(blocks.types, key=lambda t: -t.count * t.size):
        table.add_row(str(t.id), t.name, f"{t.count:,}", f"{t.size:,}",
                      *([t.signature] if wide else []))
    types = {t.id: t for t in blocks.types}
    chain = " → ".join(
        (f"({' → '.join(types[t].name for t in period)}) {TIMES}{n}" if len(period) > 1
         else f"{types[period[0]].name}{f' {TIMES}{n}' if n > 1 else ''}")
        for period, n in periodic([s.type_id for s in blocks.segments])
    )
    repeated = sum(t.size * (t.count - 1) for t in blocks.types)
    return Group(
        f"{plural(blocks.layer_count, 'layer')}, "
        f"{plural(len(blocks.cut_vertices), 'cut vertex', 'cut vertices')}, "
        f"{plural(len(blocks.segments), 'segment')} of "
        f"{plural(len(blocks.types), 'block type')} ({plural(repeated, 'layer')} repeat an "
        "earlier instance)",
        table,
        Text(f"chain: {chain}"),
    )


def train_report(result: TrainResult) -> Group:
    """For people: measured against predicted, term by term in the order an iteration meets
    them (medians after warm-up)."""
    data = result.to_dict()
    grid = table(f"one iteration, median of {len(result.iterations)}", "term", "predicted",
                 "measured", "measured / predicted",
                 numbers=("predicted", "measured", "measured / predicted"))

    def row(key: str, label: str) -> None:
        ratio = data["ratio"].get(key)
        grid.add_row(label, duration(result.predicted_ms[key]),
                     duration(result.measured_ms[key]), f"{ratio:.2f}" if ratio is not None
                     else "-")

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
    crossing = [Text(f"{b['from']} -> {b['to']}: " + (", ".join(b["tensors"]) or "nothing"))
                for b in boundaries]
    losses = result.losses
    return Group(
        Text.assemble((result.model, "bold"),
                      f", {result.cut} cut, batch {result.batch}; layers: {placed}"),
        *(crossing or [Text("nothing crosses: every layer on the device")]),
        f"link: {result.shaping}",
        f"predicted for {result.predicted_for} (profiles); measured on this machine, "
        "one CPU thread per tier" + "".join(f"; {t['name']} on {t['runs_on']}" for t in tiers
                                            if t["runs_on"] != "cpu"),
        grid,
        f"loss on the fixed synthetic batch: {_losses(losses[0], losses[-1])}"
        if losses else "no iterations measured",
    )


def _losses(first: float | None, last: float | None) -> str:
    """'2.3131 -> 2.3127': the first and last loss with as many digits (4 or more) as tell
    them apart, so a small step (a low learning rate) does not read as no learning."""
    digits = 4
    while digits < 10 and first is not None and last is not None and first != last \
            and f"{first:.{digits}g}" == f"{last:.{digits}g}":
        digits += 1
    return " -> ".join("not a number" if v is None else f"{v:.{digits}g}" for v in (first, last))


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
    grid = table(f"{result.model}: every optimal "
                 f"{'partition' if len(result.tiers) == 2 else 'tiering'} across the {what}",
                 what, "layers per tier", "last layer of each tier but the last", "crossing",
                 "delay", numbers=(what, "delay"))
    for piece, crossing in zip(result.pieces, result.crossing, strict=True):
        ends = [max((i for i, t in enumerate(piece.key) if t == tier), default=None)
                for tier in range(len(result.tiers) - 1)]
        grid.add_row(
            f"{_amount(piece.lo, result.unit)} .. {_amount(piece.hi, result.unit)}",
            " / ".join(f"{name} {piece.key.count(t)}" for t, name in enumerate(result.tiers)),
            ", ".join(modules[i] if i is not None else "-" for i in ends),
            "; ".join(plural(len(c), "tensor") for c in crossing),
            f"{duration(piece.delay_lo)} .. {duration(piece.delay_hi)}")
    return Group(grid, f"{plural(len(result.pieces), 'interval')} from "
                        f"{plural(result.solves, 'exact solve')} "
                        f"({result.solve_ms:.0f} ms)"
                 + ("" if result.parameter == "batch" else
                    ": breakpoints of the lower envelope of the delay's lines in 1/rate"))


TIMES = "\u00d7"  # the multiplication sign of "x 12"
_NUMBER = re.compile(r"-|<?-?[\d.,]+( ?[a-zA-Z%/]+)?")  # a cell `cell` made from a number
HIDDEN = ("signature", "sha256", "version", "key")  # hashes and ids: `--wide` shows them
_LIST_ITEMS = 6


def cell(key: str, value: Any) -> str:
    """One query result value as people read it: units from the column's name (`_ms`,
    `_bytes`, `_bps`; gains, depths and shares as percentages), 3 significant digits,
    long lists shortened."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        shown = [cell(key, v) for v in value[:_LIST_ITEMS]]
        more = f", ... ({len(value):,})" if len(value) > _LIST_ITEMS else ""
        return ", ".join(shown) + more
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        name = key.lower()
        if name.endswith("_ms"):
            return duration(value)
        if name.endswith("_bytes"):
            return human_bytes(value)
        if name.endswith("_bps") or name in ("low", "high", "rate"):
            return rate(value)
        if any(word in name for word in ("gain", "depth", "share", "fraction", "saving")):
            return percent(value)
        return _sig(value)
    return str(value)


def rows_table(rows: list[dict[str, Any]], wide: bool = False) -> Table:
    """Rows of a saved query as a table that fits: units, rounding, hashes only with `wide`."""
    if not rows:
        return Table("(no rows)")
    keys = [k for k in rows[0] if wide or not any(k == h or k.endswith("_" + h)
                                                   for h in HIDDEN)]
    table = Table()
    cells = [[cell(k, row.get(k)) for k in keys] for row in rows]
    for j, k in enumerate(keys):  # numbers never wrap (their headers do); text folds
        numeric = all(_NUMBER.fullmatch(c[j]) for c in cells)
        longest = max(len(c[j]) for c in cells)
        header = k.replace("_", " ")
        if numeric:
            width = max(longest, *(len(word) for word in header.split()))
            table.add_column(textwrap.fill(header, width), justify="right",
                             no_wrap=True)
        else:
            table.add_column(header, overflow="fold", min_width=min(longest, 12))
    for row_cells in cells:
        table.add_row(*row_cells)
    return table
