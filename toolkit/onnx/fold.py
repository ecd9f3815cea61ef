"""Symbolic sizes resolved without running the model: the shape arithmetic evaluated node by node.

Exporters compute many shapes at run time: `Shape` of an activation, then Gather, Where,
Range, Concat... into the target of a Reshape or Expand. ONNX shape inference propagates such
values through a handful of operators only, so Swin's window partition, BERT's and GPT-2's
masks or ViT's class token come out symbolic. Every input of that arithmetic is known once the
input sizes are fixed: the static shapes of the activations it measures and small constants.
So one pass in topological order evaluates that arithmetic (integers, a few elements, with
ONNX's reference implementation of each operator) and gives each node whose output size is
still unknown to ONNX's inference of that one node, with the values of its inputs: a Reshape
then learns its target, and the Shape of its output is static for the nodes after it, however
deep the chain (Swin: 1,422 sizes, 16 blocks deep). Only values that can decide a size are
computed (scalars, short vectors): a mask the arithmetic sizes gets its size, never its value
(Swin's 100 attention masks). Repeated blocks repeat their arithmetic: each distinct
evaluation or inference (operator, attributes, inputs) is done once (Swin-T: 253 evaluations
of 5,559). What still stays symbolic (sizes that
depend on data, operators ONNX does not know) is left to the probe run (`runtime_shapes`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import ModelProto, NodeProto, TensorProto
from onnx.shape_inference import infer_node_outputs

from toolkit.onnx.load import NodeFields, first_line, node_fields
from toolkit.onnx.shapes import Info, value_info

log = logging.getLogger(__name__)
T = TypeVar("T")

_SMALL_INITIALIZER = 512
"""Initializers (elements) small enough to be shape arithmetic's constants, not weights (and
never dropped by `drop_big_weights`)."""
_SMALL_VALUE = 1 << 16
"""Values (elements) evaluated and kept: shapes and indices; larger ones are masks."""
_SHAPE_ARGUMENT = 1 << 10
"""Elements of the longest input whose value can decide an output's size: ONNX's operators
read sizes from scalars and vectors (a target shape, starts, pads, repeats, scales, a split)."""
_NEVER_FOLDED = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
     "Bernoulli"}
)
"""Operators whose values differ at every run: their sizes are inferred, never their values."""
_DEFAULT_DOMAINS = ("", "ai.onnx")
_RUN_PARAMS: dict[str, Any] = {"new_ops": None, "log": lambda *_: None, "verbose": 0}


def fold_shapes(model: ModelProto, info: dict[str, Info], nodes: Sequence[NodeFields]
                ) -> tuple[dict[str, Info], dict[str, str]]:
    """Sizes of weightless `model`'s tensors after evaluating its shape arithmetic (module
    doc): `info` is what static inference gave; nodes are taken in file order (exporters
    write them in topological order; a node before its inputs only stays unresolved). Also
    the branch ('then_branch' or 'else_branch') of each If whose condition the arithmetic
    computes, by the If's first output."""
    folding = _Folding(model, info, nodes)
    return folding.run(), folding.taken


class _Folding:
    """One pass over the nodes: values of the shape arithmetic, sizes of what they shape."""

    def __init__(self, model: ModelProto, info: dict[str, Info],
                 nodes: Sequence[NodeFields]) -> None:
        self.model = model
        self.info = dict(info)
        self.opset = max((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS),
                         default=0)
        self.values: dict[str, np.ndarray | None] = {}
        for t in model.graph.initializer:
            self.values[t.name] = _array(t) if math.prod(t.dims) <= _SMALL_INITIALIZER else None
        self.nodes = nodes  # model.graph's (`node_fields`)
        self.producers = {o: n for n in self.nodes for o in n.outputs if o}
        self.constants: dict[bytes, np.ndarray | None] = {}  # Constant nodes' values, by bytes
        self.kernels: dict[str, type | None] = {}
        self.schemas: dict[str, onnx.defs.OpSchema | None] = {}
        # each distinct evaluation and inference, by operator, attributes and inputs
        self.evaluated: dict[tuple[object, ...], list[np.ndarray | None]] = {}
        self.inferred: dict[tuple[object, ...], list[Info | None]] = {}
        self.taken: dict[str, str] = {}  # an If's first output -> the branch it takes

    def run(self) -> dict[str, Info]:
        self._fold(self.nodes)
        return self.info

    def _fold(self, nodes: Sequence[NodeFields]) -> None:
        info = self.info
        for node in nodes:
            if node.op == "If" and node.domain in _DEFAULT_DOMAINS:
                self._branch(node)
                continue
            if _inferable(node) and not all(_static(info.get(o)) for o in node.outputs if o):
                self._infer(node, [x for x in node.inputs if x])

    def _branch(self, node: NodeFields) -> None:
        """An If whose condition the shape arithmetic decides (TorchScript writes one where
        scripted code compares sizes): the branch it takes is folded as if it stood in the
        graph, and its outputs' sizes and values are the If's. A branch that makes a name
        the graph already has is left to the probe run."""
        condition = self._value(node.inputs[0]) if node.inputs and node.inputs[0] else None
        if condition is None or condition.size != 1:
            return
        taken = "then_branch" if bool(condition.reshape(-1)[0]) else "else_branch"
        if node.outputs and node.outputs[0]:
            self.taken[node.outputs[0]] = taken
        branch = next((a.g for a in node.attributes if a.name == taken), None)
        if branch is None or len(branch.output) < len([o for o in node.outputs if o]):
            return
        made = {o for n in branch.node for o in n.output if o}
        made.update(t.name for t in branch.initializer)
        if any(name in self.info or name in self.values or name in self.producers
               for name in made):
            return
        for t in branch.initializer:
            self.values[t.name] = _array(t) if math.prod(t.dims) <= _SMALL_INITIALIZER \
                else None
            self.info[t.name] = Info(tuple(t.dims), t.data_type)
        inner_nodes = [node_fields(n) for n in branch.node]
        self.producers.update((o, n) for n in inner_nodes for o in n.outputs if o)
        self._fold(inner_nodes)
        for out, inner in zip(node.outputs, branch.output, strict=False):
            if not out:
                continue
            got = self.info.get(inner.name)
            if got is not None and _static(got):
                self.info[out] = got
            self.values[out] = self._value(inner.name)

    def _value(self, name: str) -> np.ndarray | None:
        """The value of `name` where it is shape arithmetic (small and computable from small
        constants and static shapes), evaluated once, inputs first (no recursion: chains of
        arithmetic can be long); None otherwise."""
        stack, busy = [name], set()
        while stack:
            top = stack[-1]
            if top in self.values:
                stack.pop()
                continue
            node = self.producers.get(top)
            if node is None or node.op in _NEVER_FOLDED or not _inferable(node):
                self.values[top] = None
                stack.pop()
                continue
            ins = [x for x in node.inputs if x]
            measured = _measured(node, self.info.get(ins[0]) if ins else None) \
                if node.op in ("Shape", "Size") else None
            if measured is not None:
                self.values[top] = measured
                stack.pop()
                continue
            pending = [x for x in ins if x not in self.values]
            if pending and top not in busy and self._small(node.outputs):
                busy.add(top)  # a cycle leads back here: its names get no value
                stack.extend(pending)
                continue
            self._evaluate(node)
            stack.pop()
        return self.values[name]

    def _small(self, outs: Sequence[str]) -> bool:
        """Every output's size is known and small: worth evaluating, safe to allocate."""
        total = 0
        for o in filter(None, outs):  # (a missing optional output has no name)
            got = self.info.get(o)
            if not _static(got):
                return False
            assert got is not None and got.shape is not None
            total += math.prod(got.shape)
        return total <= _SMALL_VALUE

    def _infer(self, node: NodeFields, ins: Sequence[str]) -> None:
        """ONNX's inference of this one node, told the values of its inputs where known."""
        schema = self._schema(node.op)
        got = [self.info.get(x) for x in ins]
        if schema is None or any(g is None or not g.elem_type for g in got):
            return
        sizes = [(g.elem_type, g.shape if _static(g) else None) for g in got if g is not None]
        known = {x: self._value(x) for x, g in zip(ins, got, strict=True) if _may_shape(g)}
        key = (node.op, _attributes(node), tuple(bool(x) for x in node.inputs), tuple(
            (size, _fingerprint(known.get(x))) for x, size in zip(ins, sizes, strict=True)))
        if key not in self.inferred:
            types = {x: onnx.helper.make_tensor_type_proto(*size)
                     for x, size in zip(ins, sizes, strict=True)}
            self.inferred[key] = self._inferred(node.proto, schema, types, known)
        for name, inferred in zip(node.outputs, self.inferred[key], strict=False):
            if inferred is not None:
                self.info[name] = inferred

    def _inferred(self, node: NodeProto, schema: onnx.defs.OpSchema,
                  types: dict[str, onnx.TypeProto], known: dict[str, np.ndarray | None]
                  ) -> list[Info | None]:
        """What ONNX infers of each output of `node` (None where nothing static)."""
        try:
            data = {x: onnx.numpy_helper.from_array(v, x) for x, v in known.items()
                    if v is not None}
            inferred = infer_node_outputs(schema, node, types, data,
                                          opset_imports=list(self.model.opset_import))
        except Exception as exc:  # ONNX raises assorted errors on inconsistent nodes
            log.debug("node %s not inferred (%s)", node.name, first_line(exc))
            return []
        got = [value_info(onnx.helper.make_value_info(name, inferred[name]))
               if name in inferred else None for name in node.output]
        return [g if _static(g) else None for g in got]

    def _evaluate(self, node: NodeFields) -> None:
        """Run the node on its inputs' values (ONNX's reference implementation; an optional
        input left out is None, in its place); its outputs get no value where it cannot run or
        one is large."""
        args = [self.values.get(x) if x else None for x in node.inputs]
        results: Sequence[np.ndarray | None] = ()
        attributes = node.attributes
        if node.op == "Constant" and len(attributes) == 1 and attributes[0].name == "value":
            results = [self._constant(attributes[0].t)]  # the common form, read directly
        elif self._small(node.outputs) and all(a is not None for a, x in zip(args, node.inputs,
                                                                               strict=True) if x):
            key = (node.op, _attributes(node), tuple(_fingerprint(a) for a in args))
            if key not in self.evaluated:
                self.evaluated[key] = self._run(node.proto, args)
            results = self.evaluated[key]
        for k, name in enumerate(node.outputs):
            self.values[name] = results[k] if k < len(results) else None

    def _run(self, node: NodeProto, args: list[np.ndarray | None]) -> list[np.ndarray | None]:
        """The node's outputs on `args` (ONNX's reference implementation); [] where it cannot
        run."""
        kernel = self._kernel(node.op_type)
        if kernel is None:
            return []
        try:
            # as the runtime does: T5's log of a zero distance is -inf, then masked out
            with np.errstate(all="ignore"):
                results = kernel(node, {**_RUN_PARAMS, "opsets": {"": self.opset}}).run(*args)
        except Exception as exc:  # an operator the reference cannot run on these inputs
            log.debug("node %s not evaluated (%s)", node.name, first_line(exc))
            return []
        return [_held(r) for r in results]

    def _constant(self, t: TensorProto) -> np.ndarray | None:
        """A Constant's value, read once per distinct tensor (repeated blocks repeat them);
        None for one too large to be shape arithmetic (a weight: never read, nor kept as a
        key)."""
        if math.prod(t.dims) > _SMALL_VALUE:
            return None
        key = t.SerializeToString()
        if key not in self.constants:
            self.constants[key] = _array(t)
        return self.constants[key]

    def _kernel(self, op: str) -> type | None:
        from onnx.reference.ops import load_op  # 90 ms to import: only for models that fold

        return _cached(self.kernels, op, lambda: load_op("", op, self.opset))

    def _schema(self, op: str) -> onnx.defs.OpSchema | None:
        return _cached(self.schemas, op, lambda: onnx.defs.get_schema(op, self.opset, ""))


def _cached(cache: dict[str, T | None], op: str, make: Callable[[], T]) -> T | None:
    """`make()` once per operator; None (also remembered) where ONNX has none at this opset."""
    if op not in cache:
        try:
            cache[op] = make()
        except Exception:  # onnx raises its own errors for unknown or newer operators
            cache[op] = None
    return cache[op]


def _attributes(node: NodeFields) -> tuple[bytes, ...]:
    """A node's attributes as bytes: part of what its evaluation and inference depend on."""
    return tuple(a.SerializeToString() for a in node.attributes)


def _fingerprint(value: np.ndarray | None) -> tuple[str, tuple[int, ...], bytes] | None:
    """A small value as a key: its type, its shape and its bytes."""
    return None if value is None else (value.dtype.str, value.shape, value.tobytes())


def _inferable(node: NodeFields) -> bool:
    """A standard operator without subgraphs: ONNX infers it, its reference runs it."""
    return node.domain in _DEFAULT_DOMAINS and not node.subgraphs


def _may_shape(info: Info | None) -> bool:
    """The tensor can be a size argument: a scalar or a short vector, or of unknown size.
    A mask's or an activation's value decides no size, so it is never evaluated for one."""
    if not _static(info):
        return True
    assert info is not None and info.shape is not None
    return len(info.shape) <= 1 and math.prod(info.shape) <= _SHAPE_ARGUMENT


def _static(info: Info | None) -> bool:
    return info is not None and info.shape is not None and not info.symbolic


def _array(t: TensorProto) -> np.ndarray | None:
    """A small initializer's value; None where its bytes were dropped or cannot be read."""
    try:
        value = onnx.numpy_helper.to_array(t)
    except Exception:  # a malformed tensor: not a constant of the arithmetic
        return None
    return _held(value) if value.size == math.prod(t.dims) else None


def _held(value: object) -> np.ndarray | None:
    """`value` if it is one the arithmetic computes with: a small array of numbers or booleans
    (not a sequence, text, or a missing optional output)."""
    if not isinstance(value, np.ndarray | np.generic):
        return None
    array = np.asarray(value)
    return array if array.dtype.kind in "biuf" and array.size <= _SMALL_VALUE else None


def _measured(node: NodeFields, source: Info | None) -> np.ndarray | None:
    """What a Shape or Size node returns for an input of static shape; None if not static."""
    if source is None or source.shape is None or source.symbolic:
        return None
    shape = list(source.shape)
    if node.op == "Size":
        return np.array(math.prod(shape), dtype=np.int64)
    attrs = {a.name: a.i for a in node.attributes}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return np.array(shape[start:end], dtype=np.int64)
