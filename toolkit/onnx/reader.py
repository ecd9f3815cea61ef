"""ONNX model -> LayerGraph (`toolkit.onnx` is the only package that imports `onnx`).

Shape inference gives every tensor a size; nodes fed only by initializers or Constants are
folded into parameters (they are weights, not layers); each remaining node becomes a Layer whose
FLOPs and MACs come from the handle registry in `toolkit.ops`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import json
import logging
import math
import re
from collections import ChainMap
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, ValueInfoProto

from toolkit.collector import collector_paused
from toolkit.errors import ModelError
from toolkit.graph import HALF_DTYPES, Layer, LayerGraph, Tensor, computed_from
from toolkit.memory import decomposed_gelus
from toolkit.onnx.axes import Axis, AxisFate, follow_axis
from toolkit.onnx.fold import fold_shapes
from toolkit.onnx.load import (
    ELEM_BYTES,
    FLOAT_TYPES,
    UNKNOWN_ELEM_BYTES,
    WRITTEN_AS,
    ExportedWeights,
    NodeFields,
    attr_graphs,
    check_node_text,
    check_value_names,
    drop_big_weights,
    exported_weights,
    has_external_data,
    holds_graphs,
    load_model,
    standard_form,
    unique_names,
    weightless,
    with_external_data,
)
from toolkit.onnx.scopes import modules_of
from toolkit.onnx.shapes import (
    Info,
    Probe,
    dim_name,
    dtype_name,
    given_dim,
    infer_shapes,
    open_dim,
    runtime_shapes,
    value_infos,
)
from toolkit.ops import SIZE_CHECKED, OpCost, OpFacts, Shape, cost_of, numel, size_conflict

log = logging.getLogger(__name__)

_NEVER_CONSTANT = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
     "Bernoulli"}
)
def dft_axis(opset: int) -> int:
    """The axis a DFT node transforms where it names none: an attribute defaulting to 1 up to
    opset 19, an input defaulting to -2 (the last signal axis) from opset 20."""
    return 1 if opset < 20 else -2


NOT_TRAINABLE_INPUTS: dict[str, frozenset[int]] = {
    "BatchNormalization": frozenset({3, 4}),  # running mean and variance
    # quantization scales and zero points are calibration constants, not trained
    "QLinearConv": frozenset({1, 2, 4, 5, 6, 7}),
    "QLinearMatMul": frozenset({1, 2, 4, 5, 6, 7}),
    "QuantizeLinear": frozenset({1, 2}),
    "DequantizeLinear": frozenset({1, 2}),
    "ConvInteger": frozenset({2, 3}),
    "MatMulInteger": frozenset({2, 3}),
    # bounds and thresholds: no framework trains them (a comparison passes no gradient at
    # all), though tf2onnx freezes them into float initializers (Keras' ReLU6 is a Clip)
    "Clip": frozenset({1, 2}),
    # sizes and settings: a resize's region and scales, a pad's fill value, a dropout's ratio
    # (float constants where paddle2onnx writes them: `constant_weights`)
    "Resize": frozenset({1, 2}),
    "Upsample": frozenset({1}),
    "Pad": frozenset({2}),
    "Dropout": frozenset({1}),
    # a power's exponent: trained, its gradient takes the log of the base, which is NaN
    # wherever the base is negative (LayerNorm's squared deviations, as tf2onnx and
    # paddle2onnx write them: Pow by 2); GeM pooling's learnable p is the exception it freezes
    "Pow": frozenset({1}),
    **{op: frozenset({0, 1})
       for op in ("Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual")},
}
_TYPE_ONLY_INPUTS = frozenset({"CastLike"})
_WEIGHT_VIEWS = frozenset(
    {"Identity", "Transpose", "Cast", "CastLike", "Reshape", "Unsqueeze", "Squeeze", "Expand",
     "Flatten"}
)
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})
_FX_NODE = "pkg.torch.onnx.fx_node"  # the FX node a dynamo export's node comes from, as text
_PLACEHOLDER = re.compile(r"%([pbc]_\w+)")  # torch.export's parameter, buffer, constant
_SCALAR_ATTRIBUTES = frozenset({"value", "value_int", "value_float", "value_ints", "value_floats"})
"""How a Constant node can hold a number (its other forms hold strings or sparse tensors)."""
READER_VERSION = 17  # 17: cut vertices where the input starts a path past earlier layers
"""Bumped whenever the reader turns the same file into another layer graph, or what is derived
from one and kept by `LayerGraph.sha256` changes (block detection, what a stored layer holds):
stored models and cached block structures are then read again."""
def read_onnx(
    path: str | Path, name: str | None = None, dims: Mapping[str, int] | None = None
) -> LayerGraph:
    """Read an ONNX file into a validated LayerGraph named `name` (default: the file stem).

    Its large weights are dropped as soon as the file is parsed (the reader needs their
    types and dimensions only) and read again only if the model must be run once to learn
    its sizes.
    """
    p = Path(path)
    model = load_model(p)
    drop_big_weights(model)
    digest = hashlib.sha256(model.SerializeToString())
    digest.update(json.dumps([READER_VERSION, sorted((dims or {}).items())]).encode())
    graph = _read(model, name or p.stem, p.parent, dims or {}, lambda: load_model(p))
    graph.sha256 = digest.hexdigest()
    return graph


def read_model(
    model: ModelProto, name: str, base_dir: Path | None = None,
    dims: Mapping[str, int] | None = None,
) -> LayerGraph:
    """Turn a loaded ModelProto into a LayerGraph with per-sample facts.

    `base_dir` is where external weight files live; they are read only if static shape
    inference leaves sizes symbolic and the model must be run once to learn them. `dims`
    gives the symbolic input dimensions other than the batch (`_input_dims`).
    """
    whole = standard_form(model)
    return _read(weightless(whole), name, base_dir, dims or {}, lambda: whole)


@collector_paused
def _read(
    model: ModelProto, name: str, base_dir: Path | None, dims: Mapping[str, int],
    whole: Callable[[], ModelProto],
) -> LayerGraph:
    """`read_model` of a weightless `model` that `whole()` gives with its weights."""
    with _input_dims(model, name, dims) as batch:
        reader = _prepared(model, name, base_dir, whole)
    return reader.build(batch)


@dataclass(frozen=True)
class _Batch:
    """How the raw inputs' leading (batch) dimension was read: symbolic, or exported at a
    concrete size that is divided out so that every figure is per sample."""

    exported: int  # the concrete batch the file was exported with (1: per sample already)
    note: str
    guessed: bool = False  # taken from the inputs' shapes, not given by --dim batch
    symbolic: bool = False  # the file leaves the batch open

    @property
    def fixed(self) -> int | None:
        """The batch the file fixes (None: any), so that training uses it."""
        return None if self.symbolic else self.exported


@contextmanager
def _input_dims(model: ModelProto, name: str, dims: Mapping[str, int]) -> Iterator[_Batch]:
    """Give the raw inputs' symbolic dimensions values for the duration of a read.

    The leading dimension of the raw inputs is the batch: symbolic, it is read as 1 (figures
    per sample); concrete and shared by the inputs of rank 2 or more, it is divided out
    afterwards where the model treats it as a batch (`_carried`; `dims`
    may name it `batch=N` to say what it is, 1 to keep the file's figures as they are). Every
    other symbolic dimension needs a value, by name (`seq=128`) or as `INPUT.AXIS=128` when
    unnamed; a missing one is a ModelError naming it, never a silent 1.
    """
    initializers = {t.name for t in model.graph.initializer}
    raw = [vi for vi in model.graph.input if vi.name not in initializers
           and vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")]
    saved = [(vi, [_SavedDim(d) for d in vi.type.tensor_type.shape.dim]) for vi in raw]
    missing: list[tuple[str, int, str]] = []  # (name, axis, input)
    open_batch: set[str] = set()  # the names of symbolic leading dimensions
    for vi in raw:
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if not open_dim(d):
                continue  # (a negative one is a ModelError, from `value_info`)
            value = given_dim(d, vi.name, axis, dims)
            key = dim_name(d, vi.name, axis)
            if value == 0 and axis == 0:
                raise ModelError(f"model {name!r}: --dim {key}=0 would leave input {vi.name!r} "
                                 "without a sample (its axis 0 is the batch); 0 is for an empty "
                                 "cache's length, e.g. past_sequence_length=0")
            if value is not None:
                d.dim_value = value
            elif axis == 0:
                open_batch.add(key)
                d.dim_value = 1
            else:
                missing.append((key, axis, vi.name))
    try:
        if missing:
            key, axis, tensor = missing[0]
            shared = sum(m[0] == key for m in missing) > 1  # (PaddleOCR names two axes "?")
            example = f"{tensor}.{axis}=128 (INPUT.AXIS: one axis; {key}=128 gives every " \
                f"axis named {key!r} that value)" if shared \
                else f"{key}=128"
            raise ModelError(
                f"model {name!r} has symbolic dimensions other than the batch: "
                + ", ".join(f"{k!r} (axis {a} of input {t!r})" for k, a, t in missing)
                + f"; give each a value, e.g. --dim {example}")
        yield _batch(open_batch, raw, dims)
    finally:
        for vi, old in saved:
            for d, o in zip(vi.type.tensor_type.shape.dim, old, strict=True):
                o.restore(d)


def _batch(open_batch: set[str], raw: list[ValueInfoProto], dims: Mapping[str, int]) -> _Batch:
    if "batch" in dims and not open_batch:
        return _Batch(int(dims["batch"]), f"exported batch {dims['batch']} divided out "
                                          "(--dim batch)" if dims["batch"] > 1 else "")
    if open_batch:
        names = ", ".join(sorted(open_batch))
        return _Batch(1, f"symbolic batch dimension ({names}) read as 1: figures per sample",
                      symbolic=True)
    # the inputs of rank 2 or more: a scalar or a vector beside them (a diffusion model's
    # guidance scale, a sequence's position ids) says nothing of the batch; `_carried` decides
    firsts = {vi.type.tensor_type.shape.dim[0].dim_value for vi in raw
              if len(vi.type.tensor_type.shape.dim) >= 2}
    if len(firsts) == 1:
        exported = int(next(iter(firsts)))
        if exported > 1:
            return _Batch(exported, f"exported with batch {exported}: divided out, figures "
                                    "per sample (--dim batch=1 keeps them as they are)", True)
    return _Batch(1, "")


class _SavedDim:
    """A saved dimension (value or name) to put back after a read."""

    def __init__(self, dim: object) -> None:
        self.value = int(dim.dim_value) if dim.HasField("dim_value") else None  # type: ignore[attr-defined]
        self.param = str(dim.dim_param)  # type: ignore[attr-defined]

    def restore(self, dim: object) -> None:
        if self.value is not None:
            dim.dim_value = self.value  # type: ignore[attr-defined]
        else:
            dim.ClearField("dim_value")  # type: ignore[attr-defined]
            if self.param:
                dim.dim_param = self.param  # type: ignore[attr-defined]


@dataclass(frozen=True)
class NodeRoles:
    """How the reader saw each node: what writing model halves needs to agree with it."""

    names: list[str]
    order: list[int]
    constant: set[int]
    deps: list[list[str]]
    shapes: dict[str, Shape]
    elem_types: dict[str, int]


def node_roles(
    model: ModelProto, base_dir: Path | None = None, dims: Mapping[str, int] | None = None
) -> NodeRoles:
    """Layer names, topological order and folded-constant nodes of `model`, as `read_model`
    with the same `dims` sees them."""
    light = weightless(model)
    with _input_dims(light, "model", dims or {}):
        reader = _prepared(light, "model", base_dir, lambda: model)
    order = reader._node_order()
    constant, _ = reader._fold_constants(order)
    return NodeRoles(
        reader.names, order, constant, reader.deps,
        {n: i.shape for n, i in reader.info.items() if i.shape is not None and not i.symbolic},
        {n: i.elem_type for n, i in reader.info.items()},
    )


def _prepared(
    model: ModelProto, name: str, base_dir: Path | None, whole: Callable[[], ModelProto]
) -> _Reader:
    """A reader over the shape-inferred weightless `model`: sizes that stay symbolic are
    folded statically (`fold_shapes`), and what is left is learnt by one run of `whole()`."""
    if not model.graph.node:
        raise ModelError(f"model {name!r} has no nodes")
    nodes = _nodes(model.graph, name)  # before inference: a name that is not text is an error
    reader = _Reader(infer_shapes(model), name, nodes, exported_weights(model.graph))
    if reader.unresolved() or "If" in nodes.ops:  # (an If's condition may be arithmetic)
        reader.info, reader.taken = fold_shapes(model, reader.info, nodes.fields())
    missing = reader.unresolved()
    if missing:
        full = whole()
        if base_dir is not None and has_external_data(full):
            full = with_external_data(full, base_dir)
        reader.refine(runtime_shapes(full, missing, inputs=model.graph.input))
    return reader


def _attr_value(attr: AttributeProto) -> object:
    if attr.type == AttributeProto.TENSOR:
        return f"tensor{tuple(attr.t.dims)}:{dtype_name(attr.t.data_type)}"
    if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        return "graph:" + "|".join(",".join(n.op_type for n in g.node)
                                   for g in attr_graphs(attr))
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return value


def qualified_op(op: str, domain: str) -> str:
    """An operator's name as costs and layers know it: ONNX's own bare, any other domain's
    prefixed (`com.microsoft.FusedConv`), so a custom `Conv` is never costed as ONNX's."""
    return op if domain in ("", "ai.onnx") else f"{domain}.{op}"


def _groups(value: object) -> int:
    """A convolution's `group` attribute as a count (1 when absent or unreadable)."""
    return value if isinstance(value, int) and value > 0 else 1


def _computes_in_half(activations: Sequence[Tensor]) -> bool:
    """Every float activation a layer reads or writes is a 16-bit float (an fp16 or bf16
    file): its kernels run at the fp16 rate. A Cast between widths, or a layer with no float
    activation, runs at the scenario's precision."""
    floats = [t.dtype for t in activations if t.floating]
    return bool(floats) and all(d in HALF_DTYPES for d in floats)


def _canonical_attrs(attrs: dict[str, object]) -> str:
    return ";".join(f"{k}={attrs[k]!r}" for k in sorted(attrs))


def _subgraph_outer_names(node: NodeProto) -> list[str]:
    """Names a node's subgraphs read from the enclosing scope: hidden data dependencies."""
    found: list[str] = []

    def visit(g: GraphProto, bound: set[str]) -> None:
        local = bound | {i.name for i in g.input} | {t.name for t in g.initializer}
        for n in g.node:
            for name in n.input:
                if name and name not in local and name not in found:
                    found.append(name)
            for attr in n.attribute:
                for sub in attr_graphs(attr):
                    visit(sub, local)
            local |= {o for o in n.output if o}

    for attr in node.attribute:
        for sub in attr_graphs(attr):
            visit(sub, set())
    return found


@dataclass(frozen=True)
class _Flow:
    """The cost of a control-flow node or of one run of a body: FLOPs and MACs, whether every
    node in it has a cost model, and how many Loops in it have no fixed trip count and how many
    Ifs have branches of different cost (each makes a note)."""

    flops: float
    macs: float = 0.0
    supported: bool = True
    untripped: int = 0
    branches: int = 0

    def __add__(self, other: _Flow) -> _Flow:
        return _Flow(self.flops + other.flops, self.macs + other.macs,
                     self.supported and other.supported, self.untripped + other.untripped,
                     self.branches + other.branches)


def _shape_in(name: str, scope: Mapping[str, Info]) -> Shape | None:
    info = scope.get(name) if name else None
    return info.shape if info is not None else None


def _carried(batch: _Batch, steps: Sequence[tuple[Layer, Sequence[str]]],
             tensors: dict[str, Tensor], inputs: Sequence[str], reached: set[str],
             outputs: list[str], opset: int) -> tuple[_Batch, Mapping[str, Axis]]:
    """`batch`, unless its leading dimension was guessed to be the batch and the model does
    not treat it as one; and where the batch is in each tensor it was followed to.

    Samples never mix, so a leading dimension that some layer combines (a reduction, a
    contraction, attention, a recurrence, a convolution: `follow_axis`) is something else:
    the sequence of a time-first `nn.TransformerEncoder` or `nn.LSTM`, the channels of the CHW
    images torchvision's detection models take. Then the second axis is the batch where an
    operator's layout names it so (a recurrent layer's in ONNX's default layout: sequence,
    batch, features) or where no layer combines it and every output carries it (a time-first
    transformer's), else the inputs are one sample. A leading dimension nothing combines is
    the batch if every output carries it, or else (where it was lost on the way) if most
    outputs of the layers computing on the inputs have it and a graph output leads with it.
    A batch given (`--dim batch=N`) is the inputs' first axis of that size (a ModelError
    where none has one)."""
    size = batch.exported
    shapes = {n: t.shape if t.shape_known else None for n, t in tensors.items()}
    if not batch.guessed:
        given = {n: tensors[n].shape.index(size) for n in inputs if size in tensors[n].shape}
        if not given:
            shown = ", ".join(f"{n} {list(tensors[n].shape)}" for n in inputs)
            raise ModelError(f"--dim batch={size}: no input has an axis of {size} ({shown}); "
                             "give the batch the file was exported with, or 1 to keep its "
                             "figures as they are")
        return batch, follow_axis(steps, shapes, given, size, opset).where
    ranked = [n for n in inputs if len(tensors[n].shape) >= 2]
    first = follow_axis(steps, shapes, {n: 0 for n in ranked}, size, opset)
    if first.combined_by is not None:
        said = (f"the inputs' leading dimension ({size}) is not the batch: "
                f"{first.combined_by.op} {first.combined_by.name!r} combines elements along "
                "it, and samples never mix; ")
        second = {tensors[n].shape[1] for n in ranked}
        exported = second.pop() if len(second) == 1 else 1
        named = follow_axis(steps, shapes, {n: 1 for n in ranked}, exported, opset) \
            if exported > 1 else AxisFate()
        if named.combined_by is None and exported > 1 and (
                named.batch_of or _carried_to(outputs, reached, named)):
            why = f"{named.batch_of.op} {named.batch_of.name!r} takes the second ({exported}) " \
                "as its batch" if named.batch_of else f"the second ({exported}) is the batch: " \
                "no layer combines it, and every output carries it"
            return _Batch(exported, said + f"{why}: exported with batch {exported}, divided "
                          f"out, figures per sample (--dim batch={size} divides the leading "
                          "dimension out instead)", guessed=True), named.where
        return _Batch(1, said + "the inputs are read as one sample (--dim batch=N divides "
                                "out the batch they hold)"), {}
    if _carried_to(outputs, reached, first):
        return batch, first.where
    held = [size in tensors[x.outputs[0]].shape for x, _ in steps
            if x.outputs and x.outputs[0] in reached and tensors[x.outputs[0]].shape]
    heads = [tensors[o].shape[:1] == (size,) for o in outputs]
    if 2 * sum(held) > len(held) and any(heads):
        return batch, first.where
    return _Batch(1, f"the inputs' leading dimension ({size}) is read as part of one sample, "
                     f"not as the batch: {sum(held)} of the {len(held)} layers computing on the "
                     f"inputs have it in their output and {sum(heads)} of {len(heads)} "
                     f"graph outputs lead with it (--dim batch={size} divides it out)"), {}


def _carried_to(outputs: Sequence[str], reached: set[str], fate: AxisFate) -> bool:
    """The followed axis reaches every graph output computed from the inputs, on some axis,
    and nothing combined it: as a batch runs through a model."""
    ends = [o for o in outputs if o in reached]
    return fate.combined_by is None and bool(ends) and all(o in fate.where for o in ends)


def _per_sample(layers: list[Layer], tensors: dict[str, Tensor], reached: set[str],
                exported: int, where: Mapping[str, Axis]) -> tuple[list[Layer], dict[str, Tensor]]:
    """Divide a concrete exported batch out of what the inputs make (`reached`): each such
    tensor's batch axis (where `follow_axis` found it, merged with the heads or the windows
    an attention reshaped into it too; else its first axis of the batch's size) and every
    such layer's work. What weights alone make is per step, as is."""
    def per(t: Tensor) -> Tensor:
        if t.name not in reached:
            return t
        axis = where[t.name].at if t.name in where else \
            t.shape.index(exported) if exported in t.shape else None
        if axis is None:
            return t
        return dataclasses.replace(
            t, shape=(*t.shape[:axis], t.shape[axis] // exported, *t.shape[axis + 1:]),
            bytes=t.bytes // exported)

    tensors = {n: per(t) for n, t in tensors.items()}
    layers = [dataclasses.replace(
        x, flops=x.flops / exported, macs=x.macs / exported,
        in_bytes=sum(tensors[t].bytes for t in x.inputs if t in tensors),
        out_bytes=sum(tensors[t].bytes for t in x.outputs))
        if reached.intersection(x.inputs) else x for x in layers]
    return layers, tensors


@dataclass(frozen=True)
class _Nodes:
    """Each node's fields, read from protobuf once (upb builds a new object at every access)."""

    protos: list[NodeProto]
    ops: list[str]
    names: list[str]  # as in the file (`unique_names` makes them layer names)
    domains: list[str]
    inputs: list[tuple[str, ...]]
    outputs: list[tuple[str, ...]]
    attributes: list[Sequence[AttributeProto]]
    subgraphs: list[bool]  # `holds_graphs`

    def fields(self) -> list[NodeFields]:
        """The same, node by node (as the folding takes them)."""
        return list(map(NodeFields, self.protos, self.ops, self.names, self.domains,
                        self.inputs, self.outputs, self.attributes, self.subgraphs))


def _nodes(graph: GraphProto, name: str) -> _Nodes:
    """The fields of `graph`'s nodes, checked to be text (`check_text`)."""
    protos = list(graph.node)
    attributes = [n.attribute for n in protos]
    nodes = _Nodes(
        protos, [n.op_type for n in protos], [n.name for n in protos],
        [n.domain for n in protos], [tuple(n.input) for n in protos],
        [tuple(n.output) for n in protos], attributes, [holds_graphs(a) for a in attributes],
    )
    check_value_names(graph, name)
    texts = itertools.chain(nodes.ops, nodes.names, nodes.domains,
                            itertools.chain.from_iterable(nodes.inputs),
                            itertools.chain.from_iterable(nodes.outputs))
    check_node_text(texts, itertools.chain.from_iterable(a for a in nodes.attributes if a), name)
    return nodes


class _Reader:
    """One pass over a shape-inferred model: order nodes, fold constants, build layers."""

    def __init__(self, model: ModelProto, name: str, nodes: _Nodes,
                 exported: ExportedWeights) -> None:
        self.name = name
        g = model.graph
        self.graph = g
        self.nodes = nodes.protos
        self.initializers = {t.name: t for t in g.initializer}
        self.constant_values: dict[str, AttributeProto] | None = None  # Constant nodes'
        self.info = value_infos(itertools.chain(g.input, g.value_info, g.output))
        for t in g.initializer:
            dims = tuple(t.dims)
            if dims and min(dims) < 0:
                raise ModelError(f"model {name!r}: initializer {t.name!r} has a negative "
                                 f"dimension {dims}")
            self.info[t.name] = Info(dims, t.data_type)
        self.raw_inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.raw_data: set[str] = set()  # the raw inputs that hold elements (build)
        self.exported = exported  # (read from the file as written: inference adds nothing)
        self.placeholders: dict[int, frozenset[str]] = {}  # torch.export's, by node (_parameter)
        self.constant_weights = sum(any(e.key == WRITTEN_AS for e in t.metadata_props)
                                    for t in g.initializer)
        self.names = unique_names(nodes.names, nodes.ops)
        self.ops = [qualified_op(op, domain) for op, domain in zip(nodes.ops, nodes.domains,
                                                                 strict=True)]
        self.attributes = nodes.attributes
        self.subgraphs = nodes.subgraphs
        self.node_inputs, self.node_outputs = nodes.inputs, nodes.outputs
        self.module_classes: dict[str, str] = {}
        self.untripped = self.branches = 0  # control flow costed with a caveat (notes)
        self.taken: dict[str, str] = {}  # the branch of an If its shape arithmetic decides
        self.probe_failure = ""  # why the probe run (refine) could not run the model
        self.any_half = False  # some tensor is a 16-bit float (build)
        self.modules: dict[int, tuple[str | None, dict[str, str]]] = {}  # layers' (build)
        self.typed: dict[Info, tuple[str, int]] = {}  # dtype name and bytes (_tensor)
        self.costs: dict[tuple[object, ...], OpCost] = {}  # by all a handle reads (_layer)
        self.opset = max(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0
        )

    def unresolved(self) -> dict[str, int]:
        """Node outputs (with element type, 0 where unknown) whose size static inference left
        unknown or symbolic: also those it says nothing of, as the outputs of an operator ONNX
        does not know (onnxruntime's fused `com.microsoft` ones) and everything after them."""
        found: dict[str, int] = {}
        for outputs in self.node_outputs:
            for out in filter(None, outputs):  # (a missing optional output has no name)
                info = self.info.get(out)
                if info is None:
                    found[out] = 0
                elif info.elem_type and (info.shape is None or info.symbolic):
                    found[out] = info.elem_type
        return found

    def refine(self, probe: Probe) -> None:
        """Sizes (and element types) seen in the probe run replace what inference left."""
        self.info.update(probe.shapes)
        self.probe_failure = probe.failure

    def build(self, batch: _Batch | None = None) -> LayerGraph:
        order = self._node_order()  # also fills self.deps
        constant, consts = self._fold_constants(order)
        # (a file with no 16-bit float anywhere has no layer computing in one: skip the check)
        self.any_half = any(dtype_name(t) in HALF_DTYPES
                            for t in {info.elem_type for info in self.info.values()})
        unsupported: dict[str, int] = {}
        unknown: list[str] = []
        tensors: dict[str, Tensor] = {}
        for name in self.raw_inputs:
            tensors[name] = self._tensor(name, None, fallback=0)
        self.raw_data = {n for n in self.raw_inputs if not tensors[n].empty}
        layers: list[Layer] = []
        kept = [i for i in order if i not in constant]
        self.modules = dict(zip(kept, modules_of([self.nodes[i] for i in kept]), strict=True))
        for i in kept:
            layer = self._layer(i, consts, tensors)
            for out in layer.outputs:
                if not tensors[out].shape_known:
                    unknown.append(out)
            if not layer.supported:
                unsupported[self.ops[i]] = unsupported.get(self.ops[i], 0) + 1
            layers.append(layer)
        outputs = [o.name for o in self.graph.output if o.name in tensors]
        reached: set[str] = set()  # what the inputs make, where an exported batch matters
        where: Mapping[str, Axis] = {}  # the batch's axis in each tensor
        if batch is not None and batch.exported > 1:
            reached = computed_from(layers, self.raw_inputs)  # (layers in topological order)
            steps = [(layer, self.node_inputs[i]) for layer, i in zip(layers, kept, strict=True)]
            batch, where = _carried(batch, steps, tensors, self.raw_inputs, reached, outputs,
                                    self.opset)
        notes = [batch.note] if batch is not None and batch.note else []
        if unsupported:
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(unsupported.items()))
            count = sum(unsupported.values())
            notes.append(f"{count} node{'s' if count > 1 else ''} charged a guess, 2 FLOPs "
                         "per element read or written, for want of a cost model for the "
                         f"operator or of its sizes: {ops}")
        if unknown:
            why = f"; the run failed: {self.probe_failure}" if self.probe_failure else ""
            notes.append(f"{len(unknown)} tensor{'s' if len(unknown) > 1 else ''} of unknown "
                         f"size (neither ONNX's inference nor a run of the model gave one{why}), "
                         "each taken as large as its producer's largest input")
        if self.constant_weights:
            notes.append(f"{self.constant_weights} float tensors written as Constant nodes, "
                         "not initializers (as paddle2onnx and OpenVINO write weights), read as "
                         "trainable parameters, as initializers are")
        if layers and not any(layer.trainable for layer in layers):
            classic = sorted({layer.op for layer in layers if layer.op.startswith("ai.onnx.ml.")})
            why = f"classical ML operators ({', '.join(classic)}) keep any parameters in " \
                  "attributes, which no gradient trains" if classic \
                else "a quantized file, or one whose weights are inputs"
            notes.append(f"no trainable parameters (no layer reads a float weight: {why}): "
                         "nothing trains, so every layer computes on raw data and stays on the "
                         "device")
        if self.untripped:
            notes.append(f"{self.untripped} loop{'s' if self.untripped > 1 else ''} (Loop or "
                         "Scan) costed as one run of the body: the file does not fix the trip "
                         "count (no constant maximum, a condition the body computes, or a scanned "
                         "axis of unknown length)")
        if self.branches:
            notes.append(f"{self.branches} If node{'s' if self.branches > 1 else ''} costed as "
                         "the costlier branch: the data decides which one runs")
        gelus = decomposed_gelus(layers)
        if gelus:
            notes.append(f"{gelus} GELU{'s' if gelus > 1 else ''} exported as five nodes "
                         "(Div, Erf, Add, Mul, Mul), charged as five kernels as the graph runs; "
                         "PyTorch's fused GELU is one (the dynamo exporter writes one Gelu node)")
        if batch is not None and batch.exported > 1:
            layers, tensors = _per_sample(layers, tensors, reached, batch.exported, where)
        return LayerGraph.build(
            self.name, layers, tensors, self.raw_inputs, outputs,
            unsupported_ops=unsupported, unknown_shapes=tuple(unknown), notes=tuple(notes),
            module_classes=self.module_classes, opset=self.opset,
            file_batch=batch.fixed if batch is not None else None,
        )

    def _node_order(self) -> list[int]:
        """Node indices in topological order; a cycle or a dangling name is a ModelError."""
        nodes = self.nodes
        producer: dict[str, int] = {}
        for i, outputs in enumerate(self.node_outputs):
            for out in outputs:
                if not out:
                    continue
                if out in producer or out in self.initializers or out in self.raw_inputs:
                    raise ModelError(f"model {self.name!r}: tensor {out!r} is produced twice")
                producer[out] = i
        self.deps: list[list[str]] = []
        indegree = [0] * len(nodes)
        succ: list[list[int]] = [[] for _ in nodes]
        in_file_order = True  # as exporters write them: no sort needed
        for i, node in enumerate(nodes):
            names = [n for n in self.node_inputs[i] if n]
            if self.ops[i] in _SUBGRAPH_OPS or self.subgraphs[i]:
                names += [n for n in _subgraph_outer_names(node) if n not in names]
            self.deps.append(names)
            for name in dict.fromkeys(names):
                j = producer.get(name)
                if j is not None:
                    succ[j].append(i)
                    indegree[i] += 1
                    in_file_order = in_file_order and j < i
                elif name not in self.initializers and name not in self.raw_inputs:
                    raise ModelError(
                        f"model {self.name!r}: node {self.names[i]!r} reads tensor {name!r}, "
                        "which is neither a graph input, an initializer nor a node output "
                        "(dangling tensor name)"
                    )
        if in_file_order:
            return list(range(len(nodes)))
        heap = [i for i in range(len(nodes)) if indegree[i] == 0]
        order: list[int] = []
        while heap:
            i = heapq.heappop(heap)
            order.append(i)
            for j in succ[i]:
                indegree[j] -= 1
                if indegree[j] == 0:
                    heapq.heappush(heap, j)
        if len(order) != len(nodes):
            stuck = next(i for i in range(len(nodes)) if indegree[i] > 0)
            raise ModelError(
                f"model {self.name!r} has a cycle: {len(nodes) - len(order)} nodes depend on "
                f"each other (first: {self.names[stuck]!r})"
            )
        return order

    def _fold_constants(self, order: list[int]) -> tuple[set[int], set[str]]:
        """Nodes computable from initializers alone, and every constant tensor's name.

        Also fills `self.weights`: float initializers and views of them (Identity, Transpose,
        Cast, ...). Those are a layer's trainable parameters; other constants (masks built
        from Constant nodes, shapes) are not, nor are the buffers and lifted constants that
        the dynamo exporter marks as such (`pkg.torch.export.graph_signature.InputSpec.kind`
        on the initializer's value info: an attention mask, running statistics). Only what is
        truly constant is folded: a node
        that computes on trainable weights (a weight-normed convolution's norm, Swin V2's
        position-bias MLP) runs at every training step and gets gradients, so it is a layer.
        """
        consts = set(self.initializers)
        self.weights = {n for n, t in self.initializers.items()
                        if t.data_type in FLOAT_TYPES and n not in self.exported.buffers}
        # a view of a weight -> the initializer itself (the optimizer's folded ones to start)
        self.weight_base: dict[str, str] = dict(self.exported.views)
        self.owner: dict[str, str] = {}  # a weight -> the layer that reads it first
        self.reads: dict[int, list[str]] = {}  # node -> its trainable weights (_weight_reads)
        constant: set[int] = set()
        for i in order:
            op, inputs, outputs = self.ops[i], self.node_inputs[i], self.node_outputs[i]
            names = self.deps[i]
            if op in _NEVER_CONSTANT:
                continue
            static_shape = op in ("Shape", "Size") and self._static(inputs[0])
            if op in _TYPE_ONLY_INPUTS:  # CastLike reads only its target's dtype
                names = [n for n in inputs[:1] if n]
            trains = op not in _WEIGHT_VIEWS and bool(self._weight_reads(i))
            if static_shape or (not trains and all(n in consts for n in names)):
                constant.add(i)
                consts.update(out for out in outputs if out)
                if op in _WEIGHT_VIEWS and inputs and inputs[0] in self.weights \
                        and self._float(outputs[0]):  # (a cast to integers passes no gradient)
                    self.weights.update(out for out in outputs if out)
                    # Identity is how the TorchScript exporter aliases distinct parameters
                    # that happen to hold equal values (it de-duplicates initializers): its
                    # output is a parameter of its own. Other views read the same one.
                    base = outputs[0] if op == "Identity" \
                        else self.weight_base.get(inputs[0], inputs[0])
                    self.weight_base.update((out, base) for out in outputs if out)
        return constant, consts

    def _weight_reads(self, i: int) -> list[str]:
        """The trainable weights node `i` reads, each once: its inputs but those its operator
        never trains (`NOT_TRAINABLE_INPUTS`: a quantization scale, a running mean) and, for
        control flow, what its bodies read from the enclosing graph (`deps`)."""
        found = self.reads.get(i)
        if found is None and self.weights.isdisjoint(self.deps[i]):  # (most nodes)
            found = self.reads[i] = []
        if found is None:  # (a node's inputs come before it: its reads are known at its turn)
            inputs = self.node_inputs[i]
            skip = NOT_TRAINABLE_INPUTS.get(self.ops[i], frozenset())
            read = [n for k, n in enumerate(inputs) if k not in skip]
            read += [n for n in self.deps[i] if n not in inputs]
            found = self.reads[i] = [n for n in dict.fromkeys(read) if n in self.weights]
        return found

    def _parameter(self, i: int, weight: str) -> str:
        """The parameter node `i` reads as the initializer `weight`: `weight`, unless the
        exporter stored parameters of equal value once (torch.onnx's optimizer merges equal
        initializers, and at random initialisation every zero bias and unit norm weight is
        equal) and the node's FX node (`pkg.torch.onnx.fx_node`) names other torch.export
        placeholders than the one `weight` was exported for: then it reads a parameter of its
        own, as the module does. A weight the module ties itself (a head reading the
        embedding) is one placeholder in both nodes: tied still."""
        original = self.exported.originals.get(weight)
        if original is None:
            return weight
        named = self.placeholders.get(i)
        if named is None:
            fx = next((e.value for e in self.nodes[i].metadata_props if e.key == _FX_NODE), "")
            named = self.placeholders[i] = frozenset(_PLACEHOLDER.findall(fx))
        if not named or original in named:
            return weight
        return f"{weight} read by {' '.join(sorted(named))}"

    def _float(self, name: str) -> bool:
        """Whether tensor `name` holds floats, or may (its element type unknown)."""
        info = self.info.get(name)
        return info is None or not info.elem_type or info.elem_type in FLOAT_TYPES

    def _static(self, name: str) -> bool:
        info = self.info.get(name)
        return info is not None and info.shape is not None and not info.symbolic

    def _tensor(self, name: str, producer: str | None, fallback: int) -> Tensor:
        info = self.info.get(name)
        if info is None or info.shape is None:
            return Tensor(name, (), "undefined", fallback, producer, shape_known=False)
        typed = self.typed.get(info)  # (a model's tensors share a few types)
        if typed is None:
            size = ELEM_BYTES.get(info.elem_type, UNKNOWN_ELEM_BYTES)
            typed = self.typed[info] = (dtype_name(info.elem_type),
                                        math.ceil(numel(info.shape) * size))
        return Tensor(name, info.shape, typed[0], typed[1], producer)

    def _layer(self, i: int, consts: set[str], tensors: dict[str, Tensor]) -> Layer:
        name, op = self.names[i], self.ops[i]
        inputs, outputs = self.node_inputs[i], self.node_outputs[i]
        acts = [n for n in dict.fromkeys(self.deps[i]) if n not in consts]
        params = param_bytes = elements = 0
        tied: dict[str, int] = {}
        for inp in self._weight_reads(i):
            info = self.info.get(inp)
            if info is None:
                continue
            if info.shape is not None:
                base = self.weight_base.get(inp, inp)
                # the parameter's own elements: an Expand's view of it repeats them
                source = self.info.get(base)
                count = numel(source.shape if source is not None and source.shape is not None
                              else info.shape)
                elements += count
                param_bytes += math.ceil(count * ELEM_BYTES.get(info.elem_type,
                                                                 UNKNOWN_ELEM_BYTES))
                # the first reader owns it
                owner = self.owner.setdefault(self._parameter(i, base), name)
                if owner == name:
                    params += count
                else:
                    tied[owner] = tied.get(owner, 0) + count
        read = [tensors[n] for n in acts if n in tensors]
        in_bytes = sum(t.bytes for t in read)
        outs = [o for o in outputs if o]
        fallback = max((t.bytes for t in read), default=0)
        made = [self._tensor(out, name, fallback) for out in outs]
        tensors.update(zip(outs, made, strict=True))
        whole = tensors.get(inputs[0]) if inputs and op == "SplitToSequence" else None
        if whole is not None and whole.shape_known and outs:
            # a sequence (no shape of its own): its pieces tile the input, in its element type
            tensors[outs[0]] = made[0] = dataclasses.replace(whole, name=outs[0], producer=name)
        attributes = self.attributes[i]
        attrs = {a.name: _attr_value(a) for a in attributes} if attributes else {}
        if op == "Dropout" and self._constant(inputs[2:3], 0.0) \
                and self._constant(inputs[1:2], 0.5):
            attrs["training_mode"] = 1  # drops at training time: keeps a mask (toolkit.memory)
        if op == "DFT" and "axis" not in attrs:  # an attribute until opset 20, then an input
            attrs["axis"] = self._integer(inputs[2:3], dft_axis(self.opset))
        if op == "STFT" and self._integer(inputs[3:4], None) is not None:
            attrs["frame_length"] = self._integer(inputs[3:4], None)  # where no window gives it
        canonical = _canonical_attrs(attrs)
        cost: OpCost | _Flow
        if op in _SUBGRAPH_OPS:
            cost = self._control_flow(self.graph.node[i], self.info)
            self.untripped += cost.untripped
            self.branches += cost.branches
        else:
            ins = tuple(_shape_in(n, self.info) for n in inputs)
            outs_in = tuple(_shape_in(n, self.info) for n in outputs)
            key = (op, ins, outs_in, canonical)  # all a handle reads: each distinct one runs once
            found = self.costs.get(key)
            if found is None:
                if op in SIZE_CHECKED:
                    self._check_sizes(name, op, (inputs, outputs), attrs)
                found = self.costs[key] = self._cost(name, OpFacts(op, ins, outs_in, attrs))
            cost = found
        flops, macs, supported = cost.flops, cost.macs, cost.supported
        module, classes = self.modules[i]
        for path, cls in classes.items():  # ("" is an unknown class: never over a known one)
            if cls or path not in self.module_classes:
                self.module_classes[path] = cls
        return Layer(
            name=name,
            op=op,
            inputs=tuple(acts),
            outputs=tuple(outs),
            flops=flops,
            macs=macs,
            params=params,
            param_bytes=param_bytes,
            in_bytes=in_bytes,
            out_bytes=sum(t.bytes for t in made),
            module=module,
            attrs=canonical,
            groups=_groups(attrs.get("group", 1)),
            supported=supported,
            reads_input=any(n in self.raw_data for n in acts),
            weight_elements=elements,
            tied=tuple(tied.items()),
            half=self.any_half and _computes_in_half([*read, *made]),
        )

    def _constant(self, names: Sequence[str], absent: float) -> float:
        """The value of the one scalar constant named (initializer or Constant node): `absent`
        where none is named, 0 where it is not a constant."""
        if not names or not names[0]:
            return absent
        value = self._scalar(names[0])
        return 0.0 if value is None else value

    def _integer(self, names: Sequence[str], absent: int | None) -> int | None:
        """The value of the one integer scalar constant named: `absent` where none is named,
        None where it is not a constant."""
        if not names or not names[0]:
            return absent
        value = self._scalar(names[0])
        return int(value) if value is not None and value.is_integer() else None

    def _scalar(self, name: str) -> float | None:
        """The value of the scalar constant (initializer or Constant node) `name`, if it is one."""
        if self.constant_values is None:
            self.constant_values = {n.output[0]: a for n in self.nodes
                                    if n.op_type == "Constant" and n.output
                                    for a in n.attribute if a.name in _SCALAR_ATTRIBUTES}
        tensor = self.initializers.get(name)
        attr = self.constant_values.get(name)
        if tensor is None and attr is not None and attr.name == "value":
            tensor = attr.t
        try:
            if tensor is not None:
                value = onnx.numpy_helper.to_array(tensor)
            elif attr is not None:
                value = np.asarray(onnx.helper.get_attribute_value(attr))
            else:
                return None
            return float(value.reshape(-1)[0]) if value.size == 1 else None
        except (ValueError, TypeError):
            return None

    def _control_flow(self, node: NodeProto, scope: MutableMapping[str, Info]) -> _Flow:
        """An If, Loop or Scan as one layer (the cut cannot fall inside it): an If costs the
        branch it takes where its condition is shape arithmetic (`fold_shapes` computed it),
        else its costlier branch (the data decides which one runs), a Loop its body times the
        trip count, a Scan its body once per slice of the scanned axis. A Loop whose count
        the file does not fix (no constant maximum, or a condition computed in the body), or
        a Scan over an axis of unknown length, is costed as one iteration and says so."""
        bodies = {a.name: a.g for a in node.attribute if a.type == AttributeProto.GRAPH}
        label = node.name or node.op_type
        if node.op_type == "If":
            decided = self.taken.get(node.output[0]) if node.output else None
            names = [decided] if decided in bodies else ["then_branch", "else_branch"]
            branches = [self._body(bodies[b], scope, label) for b in names if b in bodies]
            if not branches:
                return _Flow(0.0)
            costly = max(branches, key=lambda b: b.flops)
            differ = len({b.flops for b in branches}) > 1
            return dataclasses.replace(
                costly, supported=all(b.supported for b in branches),
                untripped=sum(b.untripped for b in branches),
                branches=sum(b.branches for b in branches) + differ)
        body = self._body(bodies["body"], scope, label) if "body" in bodies else _Flow(0.0)
        trips = self._trips(node, scope)
        if trips is None:
            return dataclasses.replace(body, untripped=body.untripped + 1)
        return dataclasses.replace(body, flops=body.flops * trips, macs=body.macs * trips)

    def _body(self, g: GraphProto, scope: MutableMapping[str, Info], label: str) -> _Flow:
        """The summed cost of one run of a control-flow body, nested bodies included."""
        local = ChainMap(value_infos(itertools.chain(g.input, g.value_info, g.output)), scope)
        for t in g.initializer:
            local[t.name] = Info(tuple(t.dims), t.data_type)
        total = _Flow(0.0)
        for n in g.node:
            op = qualified_op(n.op_type, n.domain)
            if op in _SUBGRAPH_OPS:
                part = self._control_flow(n, local)
            else:
                facts = OpFacts(op, [_shape_in(x, local) for x in n.input],
                                [_shape_in(x, local) for x in n.output],
                                {a.name: _attr_value(a) for a in n.attribute})
                cost = self._cost(f"{label} / {n.name or n.op_type}", facts)
                part = _Flow(cost.flops, cost.macs, cost.supported)
            total = total + part
        return total

    def _trips(self, node: NodeProto, scope: Mapping[str, Info]) -> int | None:
        """How often a Loop or Scan runs its body; None where the file does not fix it."""
        ins = list(node.input)
        if node.op_type == "Loop":
            count = self._scalar(ins[0]) if ins and ins[0] else None
            condition = ins[1] if len(ins) > 1 else ""
            body = next((a.g for a in node.attribute if a.name == "body"), None)
            if count is None or not math.isfinite(count) \
                    or (condition and self._scalar(condition) is None) \
                    or (body is not None and not self._counted(body)):
                return None  # a while loop: its condition decides
            return max(int(count), 0)
        ints = {a.name: list(a.ints) if a.type == AttributeProto.INTS else [a.i]
                for a in node.attribute if a.type in (AttributeProto.INT, AttributeProto.INTS)}
        scans = (ints.get("num_scan_inputs") or [0])[0]
        # Scan-8 slices batch-major (axis 1); from opset 9 the axis is an attribute
        axis = 1 if self.opset < 9 else (ints.get("scan_input_axes") or [0])[0]
        first = len(ins) - scans
        if scans <= 0 or first < 0:
            return None
        shape = _shape_in(ins[first], scope)
        if shape is None or not shape:
            return None
        return shape[axis % len(shape)]

    def _counted(self, body: GraphProto) -> bool:
        """A Loop body whose condition out is its condition in or a constant (a `for` loop, as
        exporters write one): it runs the full trip count."""
        if len(body.output) < 1 or len(body.input) < 2:
            return True
        name = body.output[0].name
        made = {o: n for n in body.node for o in n.output if o}
        while name in made and made[name].op_type == "Identity" and made[name].input:
            name = made[name].input[0]
        node = made.get(name)
        return name == body.input[1].name or self._scalar(name) is not None \
            or (node is not None and node.op_type == "Constant")

    def _check_sizes(self, layer: str, op: str, names: tuple[Sequence[str], Sequence[str]],
                     attrs: dict[str, object]) -> None:
        """A ModelError where the static sizes around the node cannot be (`size_conflict`):
        an exporter's tracer baked a size it saw (TorchScript's: a sequence length of 16 in a
        Reshape's target), and the input sizes read change it. The file fails to run at those
        sizes (onnxruntime refuses the node), and its costs would be garbage."""
        def static(tensors: Sequence[str]) -> list[Shape | None]:
            # (a size inference left open is read as 1: no evidence either way)
            return [None if info is None or info.symbolic else info.shape
                    for info in (self.info.get(n) if n else None for n in tensors)]

        inputs, outputs = names
        conflict = size_conflict(OpFacts(op, static(inputs), static(outputs), attrs))
        if conflict:
            raise ModelError(f"model {self.name!r}: layer {layer!r}: {conflict}: the file "
                             "fixes a size that the input sizes it is read at change (as a "
                             "tracer bakes one it saw): read it at the sizes it was exported "
                             "with (--dim; the batch too, which is read as 1 where the file "
                             "leaves it open)")

    def _cost(self, layer: str, facts: OpFacts) -> OpCost:
        try:
            return cost_of(facts)
        except ValueError as exc:
            raise ModelError(f"model {self.name!r}: layer {layer!r}: {exc}") from exc
