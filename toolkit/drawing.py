"""A picture of a partitioned model people can read, laid out by Graphviz `dot`.

The compressed block chain runs left to right: one box per segment, consecutive instances of
one block type on one tier collapsed into "x N"; each box is coloured by the tier that trains
it. A segment the cut runs through is expanded to its layers, each coloured by its tier. Every
tensor that crosses a boundary is drawn as a thick red edge labelled with its size per sample
(and how many tensors a box-to-box edge carries). The graph's title is the report's verdict.

`dot` is Graphviz's layered layout (Sugiyama): it keeps the chain's order and draws a DAG
without crossings where it can, which a force-directed layout (the Browser's) does not.
Graphviz comes from the Debian package `graphviz`; the `graphviz` Python package writes the
DOT source and runs `dot`.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import graphviz

from toolkit.blocks import BlockStructure, periodic
from toolkit.errors import ToolkitError
from toolkit.files import write_atomically
from toolkit.graph import Layer, LayerGraph
from toolkit.partition import Partition
from toolkit.partition.tiers import TierPartition
from toolkit.report import TIMES, partition_headline, plural, tiers_headline

PALETTE = ("#4C9BE8", "#F2A541", "#6CC07A", "#B07CD8", "#E86F6F", "#58C4C6")
CROSSING = "#D62728"
FORMATS = (".svg", ".png", ".html")
_EXPAND_LIMIT = 120  # layers of an expanded segment drawn one by one; beyond, its tiers' counts
ROW = 6  # boxes per row of the chain


@dataclass(frozen=True)
class Picture:
    """What to draw: the model, each layer's tier (names by index), the crossing tensors
    (producer, consumer, bytes per sample) and the verdict line."""

    graph: LayerGraph
    blocks: BlockStructure
    tier_of: Sequence[int]
    tier_names: Sequence[str]
    verdict: str


def check_format(path: str | Path) -> None:
    """Refuse an output name this module cannot draw to, before any work is done."""
    if Path(path).suffix not in FORMATS:
        raise ToolkitError(f"cannot draw to {Path(path).name!r}: give a file ending in "
                           + ", ".join(FORMATS))


def picture_of(result: Partition | TierPartition, graph: LayerGraph,
               blocks: BlockStructure) -> Picture:
    """What to draw for a two-tier partition or a tiering of a chain."""
    if isinstance(result, TierPartition):
        return Picture(graph, blocks, [int(t) for t in result.tier], list(result.graph.tiers),
                       tiers_headline(result))
    device = set(result.device)
    return Picture(graph, blocks, [0 if v in device else 1 for v in range(len(result.graph))],
                   ["device", "server"], partition_headline(result, graph))


def human_size(nbytes: float) -> str:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} B"


@dataclass
class _Item:
    """One box of the chain (or the expanded segment, `cluster`): its layers and label."""

    name: str
    layers: list[int]
    label: str = ""
    tier: int = -1  # -1: several (expanded)
    cluster: bool = False
    merges: bool = False  # a box of one-layer blocks: the next one on its tier joins it


def dot_source(picture: Picture, per_row: int = ROW) -> str:
    """The DOT text of the picture (module docstring); the chain wraps every `per_row` boxes,
    left to right on each row."""
    g, tier_of = picture.graph, picture.tier_of
    colour = {name: PALETTE[k % len(PALETTE)]
              for k, name in enumerate(dict.fromkeys(picture.tier_names))}

    def fill(tier: int) -> str:
        return colour[picture.tier_names[tier]]

    dot = graphviz.Digraph(picture.graph.name, graph_attr={
        "rankdir": "TB", "label": picture.verdict, "labelloc": "t", "fontname": "Helvetica",
        "fontsize": "16", "nodesep": "0.3", "ranksep": "0.45", "newrank": "true"},
        node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                   "fontsize": "11", "fontcolor": "#1B1B1B", "penwidth": "0"},
        edge_attr={"color": "#8A8A8A", "arrowsize": "0.6", "fontname": "Helvetica",
                   "fontsize": "10"})
    items = _chain_items(picture)
    node_of: dict[int, str] = {}
    for item in items:
        if item.cluster:
            _expanded(dot, item, picture, fill, node_of)
        else:
            dot.node(item.name, item.label, fillcolor=fill(item.tier))
            node_of.update((v, item.name) for v in item.layers)
    rows: list[list[_Item]] = []
    for item in items:  # serpentine rows: boxes side by side, an expanded segment alone
        if item.cluster or not rows or rows[-1][0].cluster or len(rows[-1]) >= per_row:
            rows.append([])
        rows[-1].append(item)
    def anchor(item: _Item, last: bool = False) -> str:
        return node_of[item.layers[-1 if last else 0]] if item.cluster else item.name

    for row in rows:
        if not row[0].cluster:
            with dot.subgraph() as same:
                same.attr(rank="same")
                for item in row:
                    same.node(item.name)
    wraps = {(anchor(a[-1], last=True), anchor(b[0])) for a, b in pairwise(rows)}
    for a, b in pairwise(rows):  # each row starts under the one before
        dot.edge(anchor(a[0]), anchor(b[0]), style="invis", weight="10")
    _edges(dot, g, list(g), tier_of, node_of, wraps)
    legend = " &nbsp; ".join(
        f'<font color="{c}">&#9632;</font> {html.escape(n)}' for n, c in colour.items()) \
        + f' &nbsp; <font color="{CROSSING}">&#9473;&#9473;</font> crosses a link (bytes per ' \
        + "sample)"
    dot.node("legend", f"<{legend}>", shape="plaintext", style="", fontsize="11")
    if items:
        dot.edge("legend", items[0].name if not items[0].cluster else
                 node_of[items[0].layers[0]], style="invis")
    return str(dot.source)


def _chain_items(picture: Picture) -> list[_Item]:
    """The compressed chain as boxes: repeated runs of block types on one tier collapsed
    ("x N"), consecutive one-layer blocks on one tier merged, each segment the cut runs
    through its own expanded item."""
    blocks, tier_of, layers = picture.blocks, picture.tier_of, list(picture.graph)
    names = {t.id: t.name for t in blocks.types}
    keys = []  # per segment: (type, tier) or (segment, -1) when mixed: never repeated
    for seg in blocks.segments:
        tiers = {tier_of[v] for v in seg.layers}
        keys.append((seg.type_id, tiers.pop()) if len(tiers) == 1 else (-1 - seg.index, -1))
    items: list[_Item] = []
    k = 0
    for period, reps in periodic(keys):
        run = blocks.segments[k: k + len(period) * reps]
        k += len(run)
        members = [v for seg in run for v in seg.layers]
        if period[0][1] == -1:
            items.append(_Item(f"cluster_s{run[0].index}", members,
                               names[run[0].type_id], cluster=True))
            continue
        tier = period[0][1]  # tiers never decrease along the chain: a repeat keeps one tier
        title = " \u2192 ".join(names[t] for t, _ in period)
        times = f"\n{TIMES} {reps}" if reps > 1 else ""
        single = reps == 1 and len(members) == 1
        last = items[-1] if items else None
        if single and last is not None and last.merges and last.tier == tier:
            last.layers += members  # one-layer blocks on one tier share a box
            last.label = _merged_label([layers[v] for v in last.layers])
            continue
        label = f"\u00b7 {title}" if single else f"{title}{times}\n{len(members):,} layers"
        items.append(_Item(f"s{run[0].index}", members, label, tier, merges=single))
    return items


def _merged_label(members: Sequence[Layer]) -> str:
    """One-layer blocks merged into one box: their modules (or ops), a few of them."""
    words = [layer.module or layer.op for layer in members]
    shown = words if len(words) <= 4 else [*words[:2], "\u2026", words[-1]]
    return "\u00b7 " + "\n\u00b7 ".join(shown) + (
        f"\n({len(words)} layers)" if len(words) > 1 else "")


def _expanded(dot: graphviz.Digraph, item: _Item, picture: Picture,
              fill: Callable[[int], str], node_of: dict[int, str]) -> None:
    """A segment the cut runs through, as a cluster of its layers (or, past
    `_EXPAND_LIMIT` layers, one node per tier with its layer count)."""
    layers, tier_of = list(picture.graph), picture.tier_of
    with dot.subgraph(name=item.name) as sub:
        sub.attr(label=f"{item.label}: the cut runs through it", style="dashed",
                 color="#8A8A8A", fontname="Helvetica", fontsize="12")
        if len(item.layers) > _EXPAND_LIMIT:
            for tier in sorted({tier_of[v] for v in item.layers}):
                on = [v for v in item.layers if tier_of[v] == tier]
                name = f"{item.name}t{tier}"
                sub.node(name, plural(len(on), "layer"), fillcolor=fill(tier))
                node_of.update((v, name) for v in on)
            return
        for v in item.layers:
            layer = layers[v]
            label = (layer.module or layer.name).split("/")[-1]
            sub.node(f"l{v}", f"{label}\n{layer.op}", fillcolor=fill(tier_of[v]), fontsize="9")
            node_of[v] = f"l{v}"


def _edges(dot: graphviz.Digraph, g: LayerGraph, layers: list[Layer], tier_of: Sequence[int],
           node_of: dict[int, str], wraps: set[tuple[str, str]]) -> None:
    """One edge per pair of nodes a tensor joins; red and labelled where it crosses tiers.
    `wraps` join the end of a row to the next row's start: they do not rank (the rows do)."""
    index = {layer.name: i for i, layer in enumerate(layers)}
    joined: set[tuple[str, str]] = set()
    crossing: dict[tuple[str, str], dict[str, float]] = {}  # tensor name -> bytes
    for t in g.activations():
        if t.producer is None or t.producer not in index:
            continue
        p = index[t.producer]
        for c in {index[c] for c in t.consumers if c in index}:
            a, b = node_of[p], node_of[c]
            if tier_of[p] != tier_of[c]:
                crossing.setdefault((a, b), {})[t.name] = float(t.bytes)
            elif a != b:
                joined.add((a, b))
    for a, b in joined:
        if (a, b) not in crossing:
            dot.edge(a, b, constraint="false" if (a, b) in wraps else "true")
    for (a, b), sizes in crossing.items():
        label = human_size(sum(sizes.values())) \
            + (f" ({len(sizes)} tensors)" if len(sizes) > 1 else "")
        dot.edge(a, b, label=label, color=CROSSING, fontcolor=CROSSING, penwidth="3",
                 constraint="false" if (a, b) in wraps else "true")


def render(source: str, path: str | Path) -> Path:
    """Lay out `source` with dot and write it as the suffix says: SVG, PNG, or an HTML page
    holding the SVG."""
    out = Path(path)
    check_format(out)
    fmt = "png" if out.suffix == ".png" else "svg"
    try:
        data = graphviz.Source(source).pipe(format=fmt, engine="dot")
    except graphviz.ExecutableNotFound as exc:
        raise ToolkitError("drawing needs Graphviz's dot: apt-get install graphviz "
                           "(or your system's graphviz package)") from exc
    except graphviz.CalledProcessError as exc:
        raise ToolkitError(f"Graphviz could not lay out the picture: {exc}") from exc
    if out.suffix == ".html":
        svg = data.decode()
        data = ("<!doctype html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(out.stem)}</title>"
                "<style>body{font-family:Helvetica,sans-serif;margin:1em}"
                "svg{max-width:100%;height:auto}</style></head><body>\n"
                f"{svg[svg.index('<svg'):]}\n</body></html>\n").encode()
    return write_atomically(out, data)
