"""Which layer first combines a batch's samples: an axis of the inputs followed through a graph.

A model computes each sample of a batch on its own, so no operator ever combines elements of
two samples: the batch axis is never contracted (MatMul, Gemm), reduced, normalised over,
soft-maxed over, convolved or run along by a recurrence, and two tensors that carry it are
only ever combined sample with sample. An axis of the inputs that some layer combines is
therefore not the batch (a sequence that attention or a reduction mixes, the channels of a CHW
image); an axis that reaches the slot an operator's specification calls its batch (`N` of a
convolution or a normalisation, the batch of a recurrent layer's layout) and is never combined
is one. The reader asks this where the inputs' leading dimension is only guessed to be the
batch (`reader._carried`).

The axis is followed through operators whose semantics this module knows, by the shapes of
their inputs and outputs: element-wise operators with broadcasting, transposes, reshapes (the
batch stays identifiable while the elements before it keep their count), slices, gathers and
concatenations along other axes, and the operators that combine along some axes. Anything else
loses it: a lost axis is evidence of nothing, so the answer errs towards "not combined".
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from toolkit.graph import Layer
from toolkit.ops import CONTRIB, ELEMENTWISE

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Axis:
    """Where the followed axis is in one tensor: axis `at`, possibly merged with neighbours by
    a reshape (then its index is `(i // inner) % size` of index `i` along `at`)."""

    at: int
    inner: int = 1


@dataclass(frozen=True)
class AxisFate:
    """What became of an axis of the inputs: the first layer that combines elements along it,
    the first that takes it as its operator's batch (`N`), and where it is in each tensor it
    was followed to (up to the combining layer)."""

    combined_by: Layer | None = None
    batch_of: Layer | None = None
    where: Mapping[str, Axis] = field(default_factory=dict)


_COMBINED = "combined"  # a step's verdict: the layer combines elements along the axis

_BATCH_FIRST = frozenset({
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool",
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "BatchNormalization",
    "InstanceNormalization", "GroupNormalization", "LRN", "DepthToSpace", "SpaceToDepth",
})
"""Operators whose specification names their first input's axis 0 the batch (`N`)."""

_KEEPS_CHANNELS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
                             "GlobalMaxPool", "GlobalLpPool", "BatchNormalization",
                             "InstanceNormalization"})
_KEEPS_SPACE = frozenset({"BatchNormalization", "LRN"})
_SAME_SHAPE = frozenset({"Identity", "Cast", "CastLike"})
_RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
_SOFTMAX = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
_REDUCTIONS = frozenset({
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"})
_RECURRENT = frozenset({"LSTM", "GRU", "RNN"})
_ALONG_OTHERS = frozenset({"Gather", "Slice", "Split", "Concat", "Pad", "Tile", "TopK",
                           "Resize", "Upsample", "SplitToSequence", "SequenceAt"})
_NORMALIZATIONS = frozenset({"LayerNormalization", "RMSNormalization",
                             "SimplifiedLayerNormalization"})
"""Normalisations over every axis from `axis` (default the last) on."""
_CONTRIB_AS = {CONTRIB + "FusedConv": "Conv", CONTRIB + "FusedGemm": "Gemm",
               CONTRIB + "FusedMatMul": "MatMul", CONTRIB + "TransposeMatMul": "MatMul",
               **dict.fromkeys((CONTRIB + op for op in ("Gelu", "BiasGelu", "FastGelu",
                                                    "QuickGelu")), "Add")}
"""onnxruntime's fusions that treat the axes as the standard operator they fuse does (an
elementwise one as a broadcasting Add: `FusedConv`'s activation changes no axis)."""
_SKIP_NORMALIZATIONS = frozenset({CONTRIB + "SkipLayerNormalization",
                                  CONTRIB + "SkipSimplifiedLayerNormalization"})
"""input + skip (+ bias), normalised over the last axis."""
_ATTENTIONS = frozenset({CONTRIB + "Attention", CONTRIB + "MultiHeadAttention",
                         CONTRIB + "EmbedLayerNormalization"})
"""(batch, sequence, ...) in, (batch, sequence, ...) out: the sequence combined (or, for the
embeddings, looked up per position: kept apart), the batch left alone."""


def follow_axis(
    steps: Iterable[tuple[Layer, Sequence[str]]], shapes: Mapping[str, Shape | None],
    sources: Mapping[str, int], size: int, opset: int,
) -> AxisFate:
    """Follow axis `sources[name]` (of `size` elements) of each source tensor through `steps`:
    each layer, in topological order, with its operator's inputs slot by slot (weights
    included, '' for an absent one). `shapes` gives each activation's shape (None: unknown)."""
    where: dict[str, Axis] = {name: Axis(at) for name, at in sources.items()}
    batch_of: Layer | None = None
    for layer, slots in steps:
        held = {slot: where[name] for slot, name in enumerate(slots) if name in where}
        if not held:
            continue
        outcome = _step(layer, slots, held, shapes, size, opset)
        if isinstance(outcome, str):  # _COMBINED
            return AxisFate(layer, batch_of, where)
        verdict, outs = outcome
        if verdict and batch_of is None:
            batch_of = layer
        where.update((name, axis) for name, axis in outs.items()  # (shapes may disagree
                     if 0 <= axis.at < len(shapes.get(name) or ()))  # with the operator)
    return AxisFate(None, batch_of, where)


_Step = tuple[bool, dict[str, Axis]] | str  # (it is this layer's batch, where it went) | combined


def _step(layer: Layer, slots: Sequence[str], held: dict[int, Axis],
          shapes: Mapping[str, Shape | None], size: int, opset: int) -> _Step:
    """Where the axis goes through one layer, or `_COMBINED`."""
    maybe = [shapes.get(name) for name in layer.outputs]
    outs = [out for out in maybe if out is not None]
    ins = [shapes.get(name) or () for name in slots]
    if not outs or len(outs) < len(maybe) \
            or any(not 0 <= axis.at < len(ins[s]) for s, axis in held.items()):
        return False, {}  # sizes unknown (or not as inferred): the axis is lost
    op, first = _CONTRIB_AS.get(layer.op, layer.op), outs[0]
    if op in _SKIP_NORMALIZATIONS:  # (the sum is elementwise: what the input's is, the skip's)
        op, held = "LayerNormalization", {0: held.get(0) or held[min(held)]}
    if layer.op in _ATTENTIONS:
        return _attention(layer, held)

    def to_all(axis: Axis | None) -> dict[str, Axis]:
        return {name: axis for name in layer.outputs if axis is not None}

    if op in ELEMENTWISE or op == "Expand":  # numpy broadcasting: ranks align on the right
        moved = {replace(axis, at=len(first) - len(ins[s]) + axis.at) for s, axis in held.items()}
        if len(moved) > 1:
            return _COMBINED  # two tensors with it on different axes: sample meets sample
        return False, to_all(moved.pop())
    if op in _SAME_SHAPE:
        return False, to_all(held.get(0))
    if op in _RESHAPES:
        return False, to_all(_reshaped(held.get(0), ins[0], first, size))
    if op == "Transpose":
        axis = held.get(0)
        perm = layer.ints("perm") or list(reversed(range(len(ins[0]))))
        if axis is None or axis.at not in perm:
            return False, {}
        return False, to_all(replace(axis, at=perm.index(axis.at)))
    if op in ("MatMul", "Gemm"):
        return _matmul(layer, op == "Gemm", held, ins, first)
    if op == "Einsum":
        return _einsum(layer, held, ins)
    if op in _BATCH_FIRST:
        return _batch_first(op, held.get(0), layer)
    if op in _RECURRENT:
        return _recurrent(layer, held.get(0), outs)
    if op in _SOFTMAX or op in _NORMALIZATIONS:
        axis = held.get(0)
        if axis is None:
            return False, {}
        last = _int(layer, "axis", -1 if op in _NORMALIZATIONS or opset >= 13 else 1)
        last %= len(ins[0])
        # the normalisations, and Softmax before opset 13, treat every axis from `axis` on
        spans = op in _NORMALIZATIONS or opset < 13
        if axis.at == last or (spans and axis.at > last):
            return _COMBINED
        return False, to_all(axis)
    if op in _REDUCTIONS:
        return _reduced(layer, held.get(0), ins[0], first)
    return _moved_along_others(layer, held, ins, outs)


def _moved_along_others(layer: Layer, held: dict[int, Axis], ins: list[Shape],
                        outs: list[Shape]) -> _Step:
    """Gathering, slicing, concatenating, splitting (into tensors or a sequence, and taking
    one back), padding, tiling and resizing keep the axis where they leave its size alone;
    where they change it, it is lost (they pick, repeat or sample elements along it; a lost
    axis is evidence of nothing)."""
    op, axis = layer.op, held.get(0)
    if op == "Gather" and 1 in held:  # an embedding looked up by (tracked) indices
        rank = len(outs[0]) - len(ins[1]) + 1  # the table's (a weight: its shape not given)
        at = _int(layer, "axis", 0) % max(rank, 1)
        return False, ({} if axis is not None else
                       {layer.outputs[0]: replace(held[1], at=at + held[1].at)})
    if op == "Concat" and len(set(held.values())) == 1:  # a class token joins the patches
        slot, axis = next(iter(held.items()))
        ins = [ins[slot]]
    if op not in _ALONG_OTHERS or axis is None or len(set(held.values())) > 1:
        return False, {}
    if op == "Gather":
        gathered = _int(layer, "axis", 0) % len(ins[0])
        if axis.at == gathered:
            return False, {}
        shift = len(outs[0]) - len(ins[0])  # the indices' rank, less the axis they replace
        return False, {layer.outputs[0]: axis if axis.at < gathered else
                       replace(axis, at=axis.at + shift)}
    if op == "TopK" and axis.at == _int(layer, "axis", -1) % len(ins[0]):
        return _COMBINED  # the k largest along it: a ranking across its elements
    if op == "SplitToSequence" and axis.at == _int(layer, "axis", 0) % len(ins[0]):
        return False, {}  # (the sequence has the whole input's shape: split along it, lost)
    if any(len(out) != len(ins[0]) or out[axis.at] != ins[0][axis.at] for out in outs):
        return False, {}
    return False, dict.fromkeys(layer.outputs, axis)


def _reshaped(axis: Axis | None, before: Shape, after: Shape, size: int) -> Axis | None:
    """The axis after a reshape, which keeps the elements' row-major order. In it, the
    followed axis' index is (i // s) % size of a flat index i, s the count of elements after
    it (`after` the followed axis, times `inner`); it is found in the output axis whose stride
    divides s and whose extent holds it whole, and lost where it was split between two."""
    if axis is None:
        return None
    after_it = math.prod(before[axis.at + 1:]) * axis.inner
    if not after_it:
        return None  # an empty tensor
    stride = 1
    for at in reversed(range(len(after))):
        if stride <= after_it < stride * after[at]:
            whole = after_it % stride == 0 and (stride * after[at]) % (after_it * size) == 0
            return Axis(at, after_it // stride) if whole else None
        stride *= after[at]
    return None


def _matmul(layer: Layer, gemm: bool, held: dict[int, Axis], ins: list[Shape],
            out: Shape) -> _Step:
    """A matrix product combines along the axis it contracts: the last of the first operand,
    the one before the last of the second (Gemm: as `transA`, `transB` say)."""
    moved: set[Axis] = set()
    for slot, axis in held.items():
        rank = len(ins[slot])
        if gemm:
            if slot == 2:  # C, broadcast onto the result
                moved.add(replace(axis, at=len(out) - rank + axis.at))
                continue
            flipped = _int(layer, "transA" if slot == 0 else "transB", 0)
            kept = (0 if slot == 0 else 1) ^ flipped  # rows of A, columns of B
            if axis.at != kept:
                return _COMBINED
            moved.add(replace(axis, at=0 if slot == 0 else 1))
            continue
        if slot > 1 or _int(layer, "transBatchA", 0) or _int(layer, "transBatchB", 0):
            return False, {}  # (FusedMatMul's batch-transposed operands: lost)
        # (FusedMatMul's transA and transB, as Gemm's, swap an operand's last two axes)
        flipped = _int(layer, "transA" if slot == 0 else "transB", 0) and rank >= 2
        contracted = rank - 1 if slot == 0 else max(rank - 2, 0)
        if flipped:
            contracted = 2 * rank - 3 - contracted  # (rank - 1 <-> rank - 2)
        if axis.at == contracted:
            return _COMBINED
        if rank == 1:
            return False, {}
        if axis.at >= rank - 2:  # a row of the first, a column of the second
            moved.add(replace(axis, at=len(out) - (2 if slot == 0 else 1)))
        else:  # a batch dimension of the product
            moved.add(replace(axis, at=len(out) - rank + axis.at))
    if len(moved) > 1:
        return _COMBINED  # e.g. one operand's rows against the other's columns: attention
    return False, {layer.outputs[0]: moved.pop()}


def _attention(layer: Layer, held: dict[int, Axis]) -> _Step:
    """onnxruntime's attention and BERT embeddings: the batch (axis 0 of the queries, the
    token ids and the masks) goes to axis 0 of the result (and of the embeddings' sum and
    mask index); the sequence is combined (the embeddings keep positions apart: there, it
    goes to the same axis)."""
    if any(axis.inner != 1 for axis in held.values()):
        return False, {}
    at = {axis.at for axis in held.values()}
    embeddings = layer.op.endswith("EmbedLayerNormalization")
    if at == {0}:
        kept = layer.outputs[:3] if embeddings else layer.outputs[:1]
        return True, dict.fromkeys(filter(None, kept), Axis(0))
    if embeddings and at == {1}:
        return False, dict.fromkeys(filter(None, layer.outputs[:3:2]), Axis(1))
    return _COMBINED


def _einsum(layer: Layer, held: dict[int, Axis], ins: list[Shape]) -> _Step:
    """Einsum combines along the letters its output drops, and where two operands carry the
    axis under different letters that both stay (an outer product of samples)."""
    found = re.search(r"(?:^|;)equation='([^']*)'", layer.attrs)
    terms = found.group(1).replace(" ", "").split("->") if found else []
    operands = terms[0].split(",") if terms else []
    if "." in "".join(terms) or len(operands) != len(ins) \
            or any(len(operands[s]) != len(ins[s]) for s in held):
        return False, {}  # (an ellipsis or an equation that disagrees: lost)
    letters = "".join(operands)
    output = terms[1] if len(terms) > 1 else "".join(
        sorted(c for c in set(letters) if letters.count(c) == 1))
    mine = {operands[s][axis.at] for s, axis in held.items()}
    if len(mine) > 1 or any(c not in output for c in mine):
        return _COMBINED
    inner = {axis.inner for axis in held.values()}
    if len(inner) > 1:
        return False, {}
    return False, {layer.outputs[0]: Axis(output.index(mine.pop()), inner.pop())}


def _batch_first(op: str, axis: Axis | None, layer: Layer) -> _Step:
    """Convolutions, pools and normalisations: axis 0 is the batch; the channels (axis 1) and
    the spatial axes are combined unless the operator keeps them apart."""
    if axis is None:
        return False, {}
    if axis.at == 0:
        return True, {layer.outputs[0]: axis}
    if op in ("DepthToSpace", "SpaceToDepth"):
        return False, {}
    if axis.at == 1 and op not in _KEEPS_CHANNELS:
        return _COMBINED
    if axis.at >= 2 and op not in _KEEPS_SPACE:
        return _COMBINED
    return False, {layer.outputs[0]: axis}


def _recurrent(layer: Layer, axis: Axis | None, outs: list[Shape]) -> _Step:
    """LSTM, GRU, RNN: X is (sequence, batch, features), or (batch, sequence, features) in
    layout 1; the recurrence combines along the sequence, the gates along the features. Y is
    (sequence, directions, batch, hidden) (layout 1: batch, sequence, directions, hidden), the
    last states (directions, batch, hidden) (layout 1: batch, directions, hidden)."""
    if axis is None:
        return False, {}
    layout = _int(layer, "layout", 0)
    if axis.at != 1 - layout:
        return _COMBINED
    # Y has rank 4, the last states rank 3 (an output left out leaves no name: go by rank)
    return True, {name: replace(axis, at=(2 if len(out) == 4 else 1) if layout == 0 else 0)
                  for name, out in zip(layer.outputs, outs, strict=True)}


def _reduced(layer: Layer, axis: Axis | None, before: Shape, after: Shape) -> _Step:
    """A reduction combines along the axes it reduces: as its `axes` (or ArgMax's `axis`)
    say, else (axes given as an input) as the shapes show."""
    if axis is None:
        return False, {}
    rank = len(before)
    given = [_int(layer, "axis", 0)] if layer.op in ("ArgMax", "ArgMin") else layer.ints("axes")
    reduced = {a % rank for a in given} if given else _dropped(before, after)
    if axis.at in reduced:
        return _COMBINED
    kept = len(after) == rank
    return False, {layer.outputs[0]: axis if kept else
                   replace(axis, at=axis.at - sum(1 for a in reduced if a < axis.at))}


def _dropped(before: Shape, after: Shape) -> set[int]:
    """The axes a reduction removed, matching the kept ones in order (keepdims: the axes it
    brought to 1)."""
    if len(after) == len(before):
        return {a for a, (b, c) in enumerate(zip(before, after, strict=True)) if c == 1 != b}
    dropped, j = set(), 0
    for a, extent in enumerate(before):
        if j < len(after) and after[j] == extent:
            j += 1
        else:
            dropped.add(a)
    return dropped


def _int(layer: Layer, key: str, default: int) -> int:
    """An integer attribute (`default` where absent)."""
    return (layer.ints(key) or [default])[0]
