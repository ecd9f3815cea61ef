"""Where a tensor's elements lie in memory: the physical order of its axes, followed through
the views PyTorch makes of one storage (transposes, reshapes it can view, selects, slices and
the pieces of a split or unbind).

An operator that computes writes its output contiguously, axes in their logical order; a
transpose relabels the axes without moving data; a reshape that only splits axes, or merges
axes lying next to each other in memory and in order, is a view (`torch.reshape` copies
otherwise, and the copy is contiguous again). The order says whether a later view of a kernel's
output reads the same storage, as `toolkit.memory.merged_heads` asks; `storages` says which
tensors are views of which storage, where the graph can tell. Pure: shapes in, axes out."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from toolkit.graph import Layer, Tensor

Order = tuple[int, ...]  # logical axes from the outermost in memory to the innermost
_VIEWS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity",
                    "Slice", "Split", "Gather"})


def transposed(order: Order, perm: Sequence[int]) -> Order:
    """The order after a transpose whose output axis k is input axis perm[k]."""
    inverse = {axis: k for k, axis in enumerate(perm)}
    return tuple(inverse[a] for a in order)


def in_order(order: Order, shape: Sequence[int]) -> bool:
    """The axes of more than one element lie in memory in their logical order: the tensor
    reads its storage in order (axes of one element, such as a batch of one, are free)."""
    wide = [a for a in order if shape[a] != 1]
    return wide == sorted(wide)


def reshaped(order: Order, src: Sequence[int], dst: Sequence[int]) -> Order:
    """The order after reshaping `src` to `dst`: each group of input axes that becomes a group
    of output axes (equal products) keeps its place in memory where its axes of more than one
    element lie together and in order there (a view); otherwise torch copies, contiguously."""
    contiguous = tuple(range(len(dst)))
    groups = _groups(src, dst)
    if groups is None:
        return contiguous
    wide = [a for a in order if src[a] != 1]
    place = {a: k for k, a in enumerate(order)}
    ranks = []
    for g, (ins, outs) in enumerate(groups):
        spread = [a for a in ins if src[a] != 1]
        if spread and wide[wide.index(spread[0]):wide.index(spread[0]) + len(spread)] != spread:
            return contiguous
        # where it lies: its first axis of many elements, else its first axis (one element)
        first = spread[0] if spread else ins[0] if ins else None
        ranks.append((place[first] if first is not None else len(order), g, outs))
    return tuple(axis for _, _, outs in sorted(ranks) for axis in outs)


def _groups(src: Sequence[int], dst: Sequence[int]
            ) -> list[tuple[list[int], list[int]]] | None:
    """Input and output axes paired into groups of equal products, in order; None where the
    sizes do not match (or are unknown)."""
    if 0 in src or 0 in dst or math.prod(src) != math.prod(dst):
        return None
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) or j < len(dst):
        ins, outs, a, b = [], [], 1, 1
        if i < len(src):
            ins, a, i = [i], src[i], i + 1
        if j < len(dst):
            outs, b, j = [j], dst[j], j + 1
        while a != b:
            if a < b and i < len(src):
                ins.append(i)
                a, i = a * src[i], i + 1
            elif b < a and j < len(dst):
                outs.append(j)
                b, j = b * dst[j], j + 1
            else:
                return None
        groups.append((ins, outs))
    return groups


def physical_order(layers: Sequence[Layer], producer: Mapping[str, int],
                   tensors: Mapping[str, Tensor], name: str) -> Order:
    """`name`'s axes in memory order: followed back through the views that made it to the
    tensor an operator computed (contiguous), then forward again."""
    chain, t = [], name
    while (j := producer.get(t)) is not None and layers[j].op in _VIEWS and layers[j].inputs \
            and t in layers[j].outputs and _viewed(layers[j], tensors, t):
        chain.append((layers[j], t))
        t = layers[j].inputs[0]
    order: Order = tuple(range(len(tensors[t].shape)))
    for layer, made in reversed(chain):
        src, dst = tensors[layer.inputs[0]].shape, tensors[made].shape
        if layer.op == "Transpose":
            perm = layer.ints("perm") or list(range(len(src)))[::-1]
            order = transposed(order, perm) if sorted(perm) == sorted(order) \
                else tuple(range(len(dst)))  # (a malformed permutation: taken as a copy)
        elif layer.op == "Gather":  # a select: its axis goes
            axis = (layer.ints("axis") or [0])[0] % len(src)
            order = tuple(a - (a > axis) for a in order if a != axis)
        elif layer.op not in ("Slice", "Split", "Identity"):  # (pieces lie as the whole)
            order = reshaped(order, src, dst)
    return order


_ANY_INPUT_VIEWS = frozenset({"Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice", "Split",
                            "Gather", "Expand"})
"""Ops torch computes as views of any input: `transpose`/`permute`, `squeeze`/`unsqueeze`,
basic slicing and `narrow`, `split`/`chunk`/`unbind`, `select` (a Gather of one index),
`expand`."""
_CONTIGUOUS_VIEWS = frozenset({"Reshape", "Flatten"})
"""Ops torch computes as views of an input that reads its storage in order (`reshape`,
`view`, `flatten`), or that they only split; otherwise as a view or a copy by strides the
one-sample graph does not show at the training batch."""
_KEEP_ORDER = frozenset({"Squeeze", "Unsqueeze", "Identity", *_CONTIGUOUS_VIEWS})
_VIEW_OPS = _ANY_INPUT_VIEWS | _CONTIGUOUS_VIEWS
_PARTS = frozenset({"Slice", "Split", "Gather", "Expand"})  # views of part of a storage


@dataclass(frozen=True)
class Storages:
    """Which tensors read another's storage (`storages`)."""

    root: dict[str, str]  # view -> the tensor whose storage it reads
    in_order: set[str]  # the views among them that read all of it, in order
    partial: set[str]  # those that read part of it (a select, slice, split or expansion on the way)


def storages(layers: Sequence[Layer], tensors: Mapping[str, Tensor], same: Mapping[str, str],
             strided: Collection[str] = ()) -> Storages:
    """The views of another tensor's storage (autograd, keeping a view, keeps that storage
    whole: `y[:, 0]` keeps all of y), in one pass in topological order. `same` maps tensors
    that are another under a new name (`toolkit.memory.aliases`); `strided` names tensors
    that do not lie in order (fused attention's outputs: `toolkit.memory.merged_heads`).
    Where the graph cannot tell a view from a copy, each is its own storage: a reshape that
    merges axes of what may not read its storage in order, a slice as large as its input (a
    flip copies). A copy the code makes (`.contiguous()`) does not show in an export: there
    the view's base is counted for it (as large as the copy or larger), once where the base
    is kept too."""
    root: dict[str, str] = {}
    ordered: set[str] = set()
    partial: set[str] = set()
    scattered = set(strided)  # what may not lie in order: never reshaped in place
    for layer in layers:
        if not layer.inputs or layer.op not in _VIEW_OPS:
            continue
        src = same.get(layer.inputs[0], layer.inputs[0])
        in_order = src in ordered or (src not in root and src not in scattered)
        for out in filter(None, layer.outputs):
            if (layer.op in _ANY_INPUT_VIEWS or in_order or _splits_only(tensors, src, out)) \
                    and _viewed(layer, tensors, out) \
                    and src in tensors and tensors[out].dtype == tensors[src].dtype and not (
                        layer.op == "Slice" and tensors[out].shape == tensors[src].shape):
                root[out] = root.get(src, src)
                if layer.op in _KEEP_ORDER and in_order:
                    ordered.add(out)
                if layer.op in _PARTS or src in partial:
                    partial.add(out)
            elif not in_order:  # a copy, or a view of what does not lie in order
                scattered.add(out)
    return Storages(root, ordered, partial)


def _splits_only(tensors: Mapping[str, Tensor], src: str, dst: str) -> bool:
    """A reshape from `src` to `dst` only splits axes, or adds axes of one element: a view
    whatever the strides (`view` can always split an axis). Merging an axis of one element with
    another is not counted as such: in the one-sample graph that axis may be the batch."""
    a, b = tensors.get(src), tensors.get(dst)
    groups = _groups(a.shape, b.shape) if a is not None and b is not None else None
    return groups is not None and all(len(ins) <= 1 for ins, _ in groups)


def _viewed(layer: Layer, tensors: Mapping[str, Tensor], made: str) -> bool:
    """The layer is a view torch makes (`made` one of its outputs): known shapes, and a
    Gather only where it selects one index (its output has one axis fewer)."""
    src, dst = tensors.get(layer.inputs[0]), tensors.get(made)
    if src is None or dst is None or not src.shape_known or not dst.shape_known:
        return False
    return layer.op != "Gather" or len(dst.shape) == len(src.shape) - 1
