"""Symbolic sizes resolved without running the model: fold the shape arithmetic, infer again.

Exporters compute many shapes at run time: `Shape` of an activation, then Gather, Where,
Range, Concat... into the target of a Reshape or Expand. ONNX shape inference propagates such
values through a handful of operators only, so Swin's window partition, BERT's and GPT-2's
masks or ViT's class token come out symbolic. Every input of that arithmetic is known once the
input sizes are fixed: the static shapes of the activations it measures and small constants.
So we evaluate just that arithmetic (integers, a few elements) in onnxruntime on a weightless
model, put the values in as Constant nodes and infer shapes again. What still stays symbolic
is left to the probe run (`runtime_shapes`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import AttributeProto, ModelProto, NodeProto

from toolkit.onnx.load import first_line
from toolkit.onnx.shapes import Info, value_info

log = logging.getLogger(__name__)

_SMALL_INITIALIZER = 512
"""Initializers (elements) small enough to be shape arithmetic's constants, not weights (and
never dropped by `drop_big_weights`)."""
_SMALL_VALUE = 1 << 16
"""Values (elements) put in as constants: shapes and indices; larger ones are masks."""
_NEVER_FOLDED = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
     "Bernoulli", "If", "Loop", "Scan"}
)


def fold_shapes(
    model: ModelProto, info: dict[str, Info], infer: Callable[[ModelProto], ModelProto]
) -> dict[str, Info]:
    """Sizes of weightless `model`'s tensors after folding its shape arithmetic (module doc):
    `info` is what static inference (`infer`) gave.

    One round of folding resolves every size of BERT, GPT-2 and ViT. Where a Shape node
    measures a tensor whose size is itself unknown, one round cannot finish (Swin's windows:
    17 rounds, each a shape inference) and the model must be run anyway; nothing is folded.
    """
    if any(_measured(node, info.get(node.input[0]) if node.input else None) is None
           for node in model.graph.node if node.op_type in ("Shape", "Size")):
        return info
    values = _evaluate(model, info)
    if not values:
        return info
    return {**info, **_resolved(infer(_with_constants(model, values)))}


def _resolved(model: ModelProto) -> dict[str, Info]:
    found = {}
    for vi in [*model.graph.value_info, *model.graph.output]:
        got = value_info(vi)
        if got.shape is not None and not got.symbolic:
            found[vi.name] = got
    return found


def _evaluate(model: ModelProto, info: dict[str, Info]) -> dict[str, np.ndarray]:
    """Values of the shape arithmetic, computed in one onnxruntime run."""
    g = model.graph
    small = {t.name: t for t in g.initializer if math.prod(t.dims) <= _SMALL_INITIALIZER}
    static: set[str] = set(small)
    arithmetic: list[NodeProto] = []
    for node in g.node:  # exporters write nodes in topological order
        outs = [o for o in node.output if o]
        if not outs or node.op_type in _NEVER_FOLDED or node.domain not in ("", "ai.onnx"):
            continue
        ins = [x for x in node.input if x]
        if node.op_type in ("Shape", "Size"):
            measured = _measured(node, info.get(ins[0]) if ins else None)
            if measured is None:
                continue
            node = _constant(outs[0], measured)
        elif not all(x in static for x in ins) or any(
                a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute):
            continue
        arithmetic.append(node)
        static.update(outs)
    wanted = [o for n in arithmetic for o in n.output if o]
    if not wanted:
        return {}
    values = _run(model, arithmetic, small, wanted)
    return {n: v for n, v in values.items() if v.size <= _SMALL_VALUE}


def _measured(node: NodeProto, source: Info | None) -> np.ndarray | None:
    """What a Shape or Size node returns for an input of static shape; None if not static."""
    if source is None or source.shape is None or source.symbolic:
        return None
    shape = list(source.shape)
    if node.op_type == "Size":
        return np.array(math.prod(shape), dtype=np.int64)
    attrs = {a.name: a.i for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return np.array(shape[start:end], dtype=np.int64)


def _constant(name: str, value: np.ndarray) -> NodeProto:
    return onnx.helper.make_node("Constant", [], [name],
                                 value=onnx.numpy_helper.from_array(value, name))


def _run(
    model: ModelProto, nodes: list[NodeProto], small: dict[str, onnx.TensorProto],
    wanted: list[str],
) -> dict[str, np.ndarray]:
    """Run `nodes` (their inputs: `small` initializers) in onnxruntime and return the
    `wanted` values; {} if it cannot."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    used = {i for n in nodes for i in n.input}
    outputs = [onnx.helper.make_empty_tensor_value_info(n) for n in wanted]
    graph = onnx.helper.make_graph(nodes, "shape-arithmetic", [], outputs,
                                   [small[n] for n in used if n in small])
    sub = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(sub.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        got = session.run(wanted, {})
    except Exception as exc:
        log.info("shape arithmetic not folded (%s)", first_line(exc))
        return {}
    return {n: np.asarray(v) for n, v in zip(wanted, got, strict=True)}


def _with_constants(model: ModelProto, values: dict[str, np.ndarray]) -> ModelProto:
    """A copy of `model` in which each node whose outputs all have `values` is replaced by
    Constant nodes, and no shapes are declared inside (inference works them out anew)."""
    folded = ModelProto()
    folded.CopyFrom(model)
    del folded.graph.value_info[:]
    kept, constants = [], []
    for n in folded.graph.node:
        outs = [o for o in n.output if o]
        if outs and all(o in values for o in outs):
            constants += [_constant(o, values[o]) for o in outs]
        else:
            kept.append(n)
    del folded.graph.node[:]
    folded.graph.node.extend([*constants, *kept])
    return folded
