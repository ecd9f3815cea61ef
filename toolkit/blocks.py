"""Cut vertices, segments, block signatures and block types: the model's compressed chain. Pure.

A cut vertex is a layer every input-to-output path passes through. In a topological order, v is
one iff no edge jumps over v's position (with a virtual input feeding every layer that reads a
model input or that no layer on an input's path feeds, and a virtual output fed by every layer
with no consumer) — one sweep, O(V + E), and the same set for any topological order. A layer
deep in the graph that reads a model input beside a layer's output (a second input joined
late), or that makes a model output from weights alone, starts a path from the input past
every layer before it: none of those is a cut vertex, so a solver may place them on a later
tier than the layers that do not depend on them.

Layers that weights and constants alone make (`weight_only`: Swin's relative-position bias
looked up in its table in every block, Gemma's `1 + weight` in every RMSNorm) lie on no path
from the input: they are not fed by the virtual input and are never cut vertices, so each sits
in the segment of the layers that read it. Were they fed by the virtual input, the last of them
would leave no cut vertex before it (Swin-T: 7 cut vertices of 629 layers instead of 44). The
block-wise solvers are exact on this structure when such layers are no cheaper on an earlier
tier (`toolkit.partition.blockwise.weights_follow`), and fall back to the general solver when
they are not.

A segment is the run of layers after one cut vertex up to and including the next, so segments
partition the layers and a ResNet bottleneck (with the ReLU that closes it) is one segment.
Layers after the last cut vertex form a final segment with a virtual exit. Segments with equal
signatures (ops, attributes, shapes, parameter counts and internal wiring, in order) are
instances of one block type.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from toolkit.collector import collector_paused
from toolkit.graph import Layer, LayerGraph

T = TypeVar("T")


@dataclass(frozen=True)
class Segment:
    index: int
    layers: tuple[int, ...]  # topological positions; the last is `exit` when exit is not None
    entry: int | None  # the cut vertex before it; None: the virtual input
    exit: int | None  # the cut vertex closing it; None: the virtual output
    type_id: int


@dataclass(frozen=True)
class BlockType:
    id: int
    signature: str
    name: str
    size: int
    count: int
    closed: bool  # ends at a real cut vertex (False: the final segment, virtual output)


@dataclass(frozen=True)
class ChainArrays:
    cuts: np.ndarray
    entries: np.ndarray  # per segment; -1: virtual input
    exits: np.ndarray  # per segment; layer_count: virtual output
    ends: np.ndarray  # first position after the segment
    closed: np.ndarray
    instances: dict[int, np.ndarray]  # type -> rows of [entry, layers...]
    segments_of: dict[int, np.ndarray]  # type -> segment indices, in row order
    row_in_type: np.ndarray  # per segment: its row in `instances[type]`


@dataclass
class BlockStructure:
    """Computed once per model; every scenario's block-wise solve reuses it."""

    model: str
    layer_count: int
    cut_vertices: list[int]
    segments: list[Segment]
    types: list[BlockType]
    weight_only: tuple[int, ...] = ()  # layers weights alone make (module doc), positions
    layouts: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The block-wise solver's tensor layouts, kept per tensor structure (solver-owned)."""

    @functools.cached_property
    def arrays(self) -> ChainArrays:
        """The chain as arrays, built once per model for the vectorised solver."""
        segs = self.segments
        by_type: dict[int, list[Segment]] = {t.id: [] for t in self.types}
        for s in segs:
            by_type[s.type_id].append(s)
        return ChainArrays(
            cuts=np.asarray(self.cut_vertices, dtype=np.int64),
            entries=np.asarray([-1 if s.entry is None else s.entry for s in segs], np.int64),
            exits=np.asarray([self.layer_count if s.exit is None else s.exit for s in segs],
                             np.int64),
            ends=np.asarray([self.layer_count if s.exit is None else s.exit + 1 for s in segs],
                            np.int64),
            closed=np.asarray([s.exit is not None for s in segs], dtype=bool),
            instances={
                t: np.asarray([[-1 if s.entry is None else s.entry, *s.layers] for s in ss],
                              dtype=np.int64)
                for t, ss in by_type.items()
            },
            segments_of={t: np.asarray([s.index for s in ss], np.int64)
                         for t, ss in by_type.items()},
            row_in_type=np.asarray(_rows(segs), dtype=np.int64),
        )

    def chain(self) -> list[tuple[int, int]]:
        """The compressed chain, run-length encoded: (type id, repeats)."""
        runs: list[tuple[int, int]] = []
        for s in self.segments:
            if runs and runs[-1][0] == s.type_id:
                runs[-1] = (s.type_id, runs[-1][1] + 1)
            else:
                runs.append((s.type_id, 1))
        return runs


def periodic(seq: Sequence[T], longest: int = 4) -> list[tuple[list[T], int]]:
    """[a, b, a, b, a, b, c] -> [([a, b], 3), ([c], 1)]: the chain's repeated runs (periods up
    to `longest`), for people to read."""
    items = list(seq)
    out: list[tuple[list[T], int]] = []
    i = 0
    while i < len(items):
        best = ([items[i]], 1)
        for p in range(1, longest + 1):
            period = items[i : i + p]
            reps = 1
            while items[i + reps * p : i + (reps + 1) * p] == period:
                reps += 1
            if reps > 1 and reps * p > best[1] * len(best[0]):
                best = (period, reps)
        out.append(best)
        i += best[1] * len(best[0])
    return out


def _rows(segments: list[Segment]) -> list[int]:
    """Each segment's position among the segments of its type, in order."""
    seen: dict[int, int] = {}
    rows = []
    for s in segments:
        rows.append(seen.get(s.type_id, 0))
        seen[s.type_id] = rows[-1] + 1
    return rows


def weight_only(graph: LayerGraph) -> list[int]:
    """Positions of the layers no model input reaches (weights and constants alone make what
    they read) that feed another layer and make no model output: off every input-to-output
    path (module doc)."""
    outputs = set(graph.outputs)
    return [i for i, layer in enumerate(graph)
            if not layer.reads_input and not graph.per_sample(layer)
            and not outputs.intersection(layer.outputs)
            and any(graph.tensors[t].consumers for t in layer.outputs)]


def read_input(graph: LayerGraph) -> list[int]:
    """Positions of the layers that read a model input (holding data) themselves."""
    raw = {t for t in graph.inputs if not graph.tensors[t].empty}
    return [i for i, layer in enumerate(graph)
            if layer.reads_input or not raw.isdisjoint(layer.inputs)]


def cut_vertices(n: int, edges: Iterable[tuple[int, int]], off_path: Iterable[int] = (),
                 read_input: Iterable[int] = ()) -> list[int]:
    """Positions 0..n-1 (a topological order) that every input-to-output path passes. The
    virtual input feeds every layer in `read_input` (those that read a model input: one that
    also reads a layer's output, deep in the graph, is reached from the input past every layer
    before it, which are then no cut vertices) and every layer no layer on the path feeds;
    `off_path` layers (`weight_only`) are on no such path: neither fed by it nor cut vertices.
    So a layer that only they feed and that makes a model output (an output computed from
    weights alone) is fed by it: a path from the input to the output starts there too, past
    the layers before it, which then do not hold it on their tier."""
    off = set(off_path)
    furthest = [-1] * n
    fed_by_input = [True] * n
    for u, w in edges:
        furthest[u] = max(furthest[u], w)
        if u not in off:
            fed_by_input[w] = False
    for i in read_input:
        fed_by_input[i] = True
    reach = max((i for i in range(n) if fed_by_input[i] and i not in off),
                default=0)  # virtual input
    cuts = []
    for p in range(n):
        if reach <= p and p not in off:
            cuts.append(p)
        reach = max(reach, furthest[p] if furthest[p] >= 0 else n)  # sinks feed the output
    return cuts


def segment_spans(cuts: list[int], n: int) -> list[tuple[int, int, bool]]:
    """The segments of n layers between consecutive cut vertices `cuts`, as (entry, last,
    closed): the cut vertex before (-1 for the first), the last layer, and whether that is a cut
    vertex (else the segment is the open tail after the last one)."""
    entries = [-1, *cuts]
    spans = [(entry, cut, True) for entry, cut in zip(entries[:-1], cuts, strict=True)]
    if entries[-1] < n - 1:
        spans.append((entries[-1], n - 1, False))
    return spans


@collector_paused
def find_blocks(graph: LayerGraph) -> BlockStructure:
    """Cut vertices, segments and block types of a layer graph."""
    layers = list(graph)
    index = {layer.name: i for i, layer in enumerate(layers)}
    edges = [(index[u], index[w]) for u, w, _ in graph.edges()]
    off_path = weight_only(graph)
    cuts = cut_vertices(len(layers), edges, off_path, read_input(graph))
    bounds = [(None if entry < 0 else entry, last if closed else None,
               tuple(range(entry + 1, last + 1)))
              for entry, last, closed in segment_spans(cuts, len(layers))]
    signatures = [
        signature(segment_key(graph, layers, index, seg, entry, exit_ is not None))
        for entry, exit_, seg in bounds
    ]
    type_of: dict[str, int] = {}
    for sig in signatures:
        type_of.setdefault(sig, len(type_of))
    segments = [
        Segment(k, seg, entry, exit_, type_of[sig])
        for k, ((entry, exit_, seg), sig) in enumerate(zip(bounds, signatures, strict=True))
    ]
    counts = Counter(s.type_id for s in segments)
    instances: list[list[Segment]] = [[] for _ in type_of]
    for s in segments:
        instances[s.type_id].append(s)
    first = [group[0] for group in instances]
    names = _names(graph, layers, instances)
    types = [
        BlockType(t, sig, names[t], len(first[t].layers), counts[t], first[t].exit is not None)
        for sig, t in type_of.items()
    ]
    return BlockStructure(graph.name, len(layers), cuts, segments, types, tuple(off_path))


def layer_key(graph: LayerGraph, layer: Layer) -> str:
    """A layer's own content: op, attributes, parameters, outputs, raw inputs read. Stored on
    `(:Layer)` at ingest so that Cypher can build the same segment keys."""
    tensors = graph.tensors
    outs = ";".join(f"{i}:{_typed(tensors[t].shape, tensors[t].dtype)}"
                    for i, t in enumerate(layer.outputs))
    raw = ";".join(_typed(tensors[t].shape, tensors[t].dtype)
                   for t in layer.inputs if tensors[t].producer is None)
    return f"{layer.op}|{layer.attrs}|{layer.params}|{outs}|{raw}"


def tensor_key(graph: LayerGraph, producer: Layer, tensor: str) -> str:
    """Which output of its producer a tensor is, and its shape and type (on `[:FEEDS]`)."""
    t = graph.tensors[tensor]
    return f"{producer.outputs.index(tensor)}:{_typed(t.shape, t.dtype)}"


@functools.lru_cache(maxsize=4096)
def _typed(shape: tuple[int, ...], dtype: str) -> str:
    """'shape:dtype' of a tensor key (a deep model repeats a few shapes many times)."""
    return f"{shape}:{dtype}"


def segment_key(
    graph: LayerGraph, layers: list[Layer], index: dict[str, int], seg: tuple[int, ...],
    entry: int | None, closed: bool,
) -> str:
    """A segment's canonical content, the same string `cypher/detect_blocks_chain.cypher` builds.

    'C' or 'O' (closed by a cut vertex or open at the end), then per layer in order
    `[layer_key](sources)`, a source per input read from another layer, in input order:
    `<position in segment>.<tensor_key>`, `e.<tensor_key>` from the entry, `o.<tensor_key>`
    from elsewhere. Names play no part.
    """
    start = seg[0]
    parts = ["C" if closed else "O"]
    for pos in seg:
        layer = layers[pos]
        sources = []
        for t in layer.inputs:
            producer_name = graph.tensors[t].producer
            if producer_name is None:
                continue
            producer = index[producer_name]
            key = tensor_key(graph, layers[producer], t)
            if producer >= start:
                sources.append(f"{producer - start}.{key}")
            elif producer == entry:
                sources.append(f"e.{key}")
            else:
                sources.append(f"o.{key}")
        parts.append(f"[{layer_key(graph, layer)}]({','.join(sources)})")
    return "".join(parts)


def signature(key: str) -> str:
    """The block type's name-free identity: a short hash of its segment key."""
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _names(graph: LayerGraph, layers: list[Layer], instances: list[list[Segment]]) -> list[str]:
    """Readable type names, from what every instance of a type shares: a lone layer's op;
    else the class of the module enclosing each instance, or the pattern of their module
    paths (`layerN.N` for `layer1.0` ... `layer4.1`, `*.conv` for `inc.conv` and `u4.conv`).

    Types that would share a name are told apart by that path pattern, then by the numbers
    it stands for (`features.{3,4}`), then by the child module holding most of their
    layers (`[mlp]`, `_main_child`), then by id.
    """
    names, paths, where = [], [], []
    for group in instances:
        prefixes = [_prefix(layers, seg) for seg in group]
        paths.append(_shared_path([p for p in prefixes if p]))
        where.append(_shared_path([p for p in prefixes if p], numbers=True))
        classes = {_enclosing_class(graph, p) for p in prefixes}
        cls = classes.pop() if len(classes) == 1 else None
        ops = [layers[p].op for p in group[0].layers]
        if len(ops) == 1:
            names.append(ops[0])
        elif cls is not None:
            names.append(cls.rsplit(".", 1)[-1])
        elif paths[-1]:
            names.append(paths[-1])
        else:
            names.append("-".join(ops) if len(ops) <= 3 else f"{ops[0]}…{ops[-1]} ({len(ops)})")
    options = [_name_options(name, paths[i], where[i]) for i, name in enumerate(names)]
    level = [0] * len(names)
    surest: set[int] = set()  # types whose options run to the id
    while True:
        chosen = [opts[k] for opts, k in zip(options, level, strict=True)]
        taken = Counter(chosen)
        clashing = [i for i, name in enumerate(chosen) if taken[name] > 1]
        if not clashing:
            return chosen
        for i in clashing:  # the last option (with the id) is unique
            if level[i] + 1 == len(options[i]) and i not in surest:
                # the main child only where the shorter names clash (it reads every instance)
                options[i] += _child_options(names[i], paths[i], where[i],
                                             _main_child(layers, instances[i]), i)
                surest.add(i)
            level[i] = min(level[i] + 1, len(options[i]) - 1)


def _name_options(base: str, pattern: str, where: str) -> list[str]:
    """A type's names from the shortest: op or class, + path pattern, or + the numbers it
    stands for (`_child_options` follow where all of these clash)."""
    spot = where if where != base else ""
    options = [base]
    if pattern and pattern != base:
        options.append(f"{base} {pattern}")
    if spot and spot != pattern:
        options.append(f"{base} {spot}")
    return options


def _child_options(base: str, pattern: str, where: str, child: str, i: int) -> list[str]:
    """A type's surest names: + main child, then + id (unique)."""
    spot = where if where != base else ""
    return [" ".join(filter(None, (base, pattern if pattern != base else "", f"[{child}]"))),
            " ".join(filter(None, (base, spot, f"[{child}]", f"#{i}")))]


def _prefix(layers: list[Layer], seg: Segment) -> list[str]:
    """The module path enclosing all of a segment's layers ([] if a layer has none)."""
    modules = _module_paths(layers, seg)
    return _common_prefix(modules) if len(modules) == len(seg.layers) else []


_CONTAINERS = "torch.nn.modules.container."  # Sequential, ModuleList: they hold, not define


def _enclosing_class(graph: LayerGraph, prefix: list[str]) -> str | None:
    """The class of the innermost module around `prefix` whose class the export names; None
    when that is a container (a `Sequential` names no kind of block: its path does better) or
    of unknown class ("": an outer module's class would name it wrongly)."""
    known = (".".join(prefix[:k]) for k in range(len(prefix), 0, -1))
    cls = next((graph.module_classes[p] for p in known if p in graph.module_classes), None)
    return None if not cls or cls.startswith(_CONTAINERS) else cls


def _shared_path(paths: list[list[str]], numbers: bool = False) -> str:
    """What module paths have in common, as a pattern: a component equal in all stays, one
    equal once digits read as N becomes that (`layerN`; with `numbers`, the numbers N takes:
    `layer{1-3,5}`), any other `*`; paths of different depths share their common tail
    (`*.conv` for `inc.conv` and `up4.conv`); "" when they share nothing."""
    if not paths:
        return ""
    depth = min(len(p) for p in paths)
    parts = ["*"] if any(len(p) != depth for p in paths) else []
    for column in zip(*(p[len(p) - depth:] for p in paths), strict=True):
        general = {re.sub(r"\d+", "N", c) for c in column} if len(set(column)) > 1 else {column[0]}
        if len(general) != 1:
            parts.append("*")
        elif numbers and len(set(column)) > 1 and general == {"N"}:
            parts.append("{" + _ranges(sorted({int(c) for c in column})) + "}")
        else:
            parts.append(general.pop())
    while len(parts) > 1 and parts[0] == parts[1] == "*":
        parts.pop(0)  # one '*' says "any modules"
    return "" if parts == ["*"] else ".".join(parts)  # nothing shared is no pattern


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3,5'."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in runs)


def _common_prefix(paths: list[list[str]]) -> list[str]:
    prefix = paths[0] if paths else []
    for p in paths[1:]:
        k = 0
        while k < min(len(prefix), len(p)) and prefix[k] == p[k]:
            k += 1
        prefix = prefix[:k]
    return prefix


def _module_paths(layers: list[Layer], seg: Segment) -> list[list[str]]:
    return [m.split(".") for m in (layers[p].module for p in seg.layers) if m]


def _main_child(layers: list[Layer], group: list[Segment]) -> str:
    """The child module holding most of a type's layers, as its instances share it: one name,
    else the pattern their digits make (ALBERT's one layer called twelve times is TorchScript's
    `attention_1` ... `attention_11`: `attention_N`), else the first instance's."""
    children = [_instance_child(layers, seg) for seg in group]
    if len(set(children)) == 1:
        return children[0]
    pattern = {re.sub(r"\d+", "N", c) for c in children}
    return pattern.pop() if len(pattern) == 1 else children[0]


def _instance_child(layers: list[Layer], seg: Segment) -> str:
    modules = _module_paths(layers, seg)
    depth = len(_common_prefix(modules))
    children = Counter(m[depth] for m in modules if len(m) > depth)
    return children.most_common(1)[0][0] if children else layers[seg.layers[0]].op
