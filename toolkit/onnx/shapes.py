"""Tensor shapes and element types: ONNX shape inference, and where it leaves sizes symbolic, one
probe run in onnxruntime."""

from __future__ import annotations

import ast
import functools
import logging
import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, TensorShapeProto, ValueInfoProto

from toolkit.errors import ModelError
from toolkit.onnx.load import ELEM_BYTES, big_weights_aside, first_line
from toolkit.ops import Shape

log = logging.getLogger(__name__)

_PROBE_ELEMENTS = 1 << 26  # inputs larger than this (elements) are not worth a probe run
def infer_shapes(model: ModelProto) -> ModelProto:
    """ONNX shape inference on a weightless view of the model."""
    with big_weights_aside(model):
        try:
            return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception as exc:
            log.warning("shape inference failed (%s); using declared shapes only",
                        first_line(exc))
            return model


def runtime_shapes(
    model: ModelProto, names: dict[str, int], inputs: Sequence[ValueInfoProto] | None = None,
) -> Probe:
    """Shapes and element types of `names` (name -> element type, 0 where inference gave
    none) seen running the model once in onnxruntime.

    Used where static inference and folding leave sizes symbolic (sizes that depend on data,
    as NonZero's, or operators ONNX does not know). `inputs` replace the model's declared
    graph inputs (the reader's, with `--dim` values); symbolic input dimensions are taken as
    1. Where the model cannot run (custom ops, missing weights, an inconsistent file) no shapes
    come back, and why: the static shapes then stand.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return Probe({}, "onnxruntime is not installed")
    if not names:
        return Probe({})
    probe, feeds = _probe_model(model, inputs)
    del probe.graph.output[:]
    for name, elem_type in names.items():
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None)
                                  if elem_type else onnx.helper.make_empty_tensor_value_info(name))
    initializers = {t.name for t in model.graph.initializer}
    for vi in list(probe.graph.input):
        if vi.name in initializers or vi.name in feeds:
            continue
        info = value_info(vi)
        shape = info.shape or ()
        if any(d < 0 for d in shape) or math.prod(shape) > _PROBE_ELEMENTS \
                or info.elem_type not in ELEM_BYTES:
            return Probe({}, f"input {vi.name!r} of shape {shape} is not one to run it on")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.elem_type or TensorProto.FLOAT)
        feeds[vi.name] = np.zeros(shape, dtype=dtype)
    ort.set_default_logger_severity(4)  # failures are handled here, not printed by onnxruntime
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        values = session.run(None, feeds)
    except Exception as exc:
        log.info("onnxruntime could not refine shapes (%s)", first_line(exc))
        reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(exc).strip())
        return Probe({}, reason.splitlines()[0][:200] if reason else type(exc).__name__)
    return Probe({o.name: Info(tuple(int(d) for d in np.shape(v)), _elem_type(v))
                  for o, v in zip(probe.graph.output, values, strict=True)})


def _elem_type(value: object) -> int:
    """The ONNX element type of a value onnxruntime returned; 0 where it is not a tensor."""
    try:
        return int(onnx.helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype))
    except (KeyError, ValueError, TypeError):
        return 0


_PROBE_WEIGHT_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
                       TensorProto.FLOAT16: np.float16}


def _probe_model(
    model: ModelProto, inputs: Sequence[ValueInfoProto] | None
) -> tuple[ModelProto, dict[str, np.ndarray]]:
    """A copy of `model` (its graph inputs replaced by `inputs` if given) whose big float
    weights are graph inputs, fed as views of their bytes: onnxruntime then gets them without
    serialising hundreds of megabytes of protobuf."""
    with big_weights_aside(model) as big:
        probe = ModelProto()
        probe.CopyFrom(model)
    if inputs is not None:
        del probe.graph.input[:]
        probe.graph.input.extend(inputs)
    moved: dict[str, np.ndarray] = {}
    for i, raw in sorted(big.items(), reverse=True):  # back to front: deleting keeps positions
        t = probe.graph.initializer[i]
        dtype = _PROBE_WEIGHT_TYPES.get(t.data_type)
        if dtype is not None and len(raw) == math.prod(t.dims) * np.dtype(dtype).itemsize:
            moved[t.name] = np.frombuffer(raw, dtype=dtype).reshape(tuple(t.dims))
            del probe.graph.initializer[i]
        else:
            t.raw_data = raw
    declared = {i.name for i in probe.graph.input}
    for name, array in moved.items():
        if name not in declared:
            probe.graph.input.append(onnx.helper.make_tensor_value_info(
                name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape))
    return probe, moved


@functools.lru_cache(maxsize=256)
def dtype_name(elem_type: int) -> str:
    try:
        return str(TensorProto.DataType.Name(elem_type)).lower()
    except ValueError:
        return "undefined"


DYNAMIC = -1
"""A dimension's value that means "unknown" where paddle2onnx and TensorFlow's converters write
one: read as a symbolic dimension, not as an error."""


def open_dim(dim: TensorShapeProto.Dimension) -> bool:
    """A raw input's dimension has no value of its own: symbolic, -1 (`DYNAMIC`), or 0, which
    early converters wrote for "unknown" (paddle-onnx for the batch) and which no input holds
    for real: an empty input, a decoder's first empty cache, is given as `--dim NAME=0`."""
    return not dim.HasField("dim_value") or dim.dim_value in (DYNAMIC, 0)


class Info(NamedTuple):
    """What the reader knows of a tensor: its shape (symbolic dimensions read as 1) and element
    type. A tuple, not a dataclass: one is made per tensor of the model."""

    shape: Shape | None
    elem_type: int
    symbolic: bool = False


class Probe(NamedTuple):
    """What one onnxruntime run of a model saw: sizes by tensor name, or why it could not run
    ("" where it ran)."""

    shapes: dict[str, Info]
    failure: str = ""


def dim_name(dim: TensorShapeProto.Dimension, tensor: str, axis: int) -> str:
    """What `--dim` calls a raw input's dimension: its name, or `INPUT.AXIS` where it has none
    (PaddleOCR's files call two axes of one input "?": `--dim x.2=48 --dim x.3=320`)."""
    return dim.dim_param or f"{tensor}.{axis}"


def given_dim(dim: TensorShapeProto.Dimension, tensor: str, axis: int,
              dims: Mapping[str, int]) -> int | None:
    """A raw input's dimension: the file's value, else the one `dims` gives it as `INPUT.AXIS`
    or by name; None where neither does (an `open_dim`)."""
    if not open_dim(dim):
        return int(dim.dim_value)
    return dim_given(dims, tensor, axis, dim.dim_param)


def dim_given(dims: Mapping[str, int], tensor: str, axis: int, name: str) -> int | None:
    """The value `dims` gives an input's symbolic dimension: as `INPUT.AXIS`, else by its
    `name`, else by the values of the names its name computes from (`dim_expression`);
    None where it gives none."""
    for key in (f"{tensor}.{axis}", name):
        if key and key in dims:
            return int(dims[key])
    return dim_expression(name, dims)


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
               ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


def dim_expression(name: str, dims: Mapping[str, int]) -> int | None:
    """The value of a dimension named by arithmetic on other dimensions' names, as Hugging
    Face's optimum names an attention mask's length `past_sequence_length + sequence_length`
    (integers, names, + - * // %, parentheses), where `dims` gives each name; None where the
    name is no such expression, a name in it is not given, or it comes out negative."""
    if not 0 < len(name) <= 200 or not any(c in name for c in "+-*/%"):
        return None  # (a plain name, or no arithmetic worth parsing)
    try:
        tree = ast.parse(name, mode="eval")
    except (SyntaxError, ValueError):
        return None

    def value(node: ast.expr) -> int | None:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name):
            found = dims.get(node.id)
            return None if found is None else int(found)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            a, b = value(node.left), value(node.right)
            if a is None or b is None or (b == 0 and type(node.op) in (ast.FloorDiv, ast.Mod)):
                return None
            return int(_ARITHMETIC[type(node.op)](a, b))
        return None

    result = value(tree.body)
    return result if result is not None and result >= 0 else None


def value_info(vi: ValueInfoProto) -> Info:
    if vi.type.WhichOneof("value") != "tensor_type":
        return Info(None, 0)
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return Info(None, tt.elem_type)
    dims: list[int] = []
    symbolic = False
    for d in tt.shape.dim:
        if d.WhichOneof("value") == "dim_value" and d.dim_value != DYNAMIC:
            value = d.dim_value
            if value < 0:
                raise ModelError(f"tensor {vi.name!r} has a negative dimension ({value})")
            dims.append(value)
        else:
            dims.append(1)
            symbolic = True
    return Info(tuple(dims), tt.elem_type, symbolic)


def value_infos(vis: Iterable[ValueInfoProto]) -> dict[str, Info]:
    """`value_info` of each named one, by name. A model's tensors share a few types, so each
    distinct type (its serialised bytes) is read once: reading a type's dimensions from
    protobuf costs ten times what serialising it does."""
    by_type: dict[bytes, Info] = {}
    found: dict[str, Info] = {}
    for vi in vis:
        if not vi.name:
            continue
        key = vi.type.SerializeToString()
        info = by_type.get(key)
        if info is None:
            info = by_type[key] = value_info(vi)
        found[vi.name] = info
    return found
