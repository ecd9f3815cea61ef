"""ONNX file -> LayerGraph. The only module that imports `onnx`.

Shape inference gives every tensor a size; nodes fed only by initializers or Constants are
folded into parameters (they are weights, not layers); each remaining node becomes a Layer whose
FLOPs and MACs come from the handle registry in `toolkit.ops`.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import heapq
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto

from toolkit.errors import ModelError
from toolkit.graph import Layer, LayerGraph, Tensor
from toolkit.ops import OpCost, OpFacts, Shape, cost_of, numel

log = logging.getLogger(__name__)

_NEVER_CONSTANT = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
     "Bernoulli"}
)
NOT_TRAINABLE_INPUTS: dict[str, frozenset[int]] = {
    "BatchNormalization": frozenset({3, 4}),  # running mean and variance
    # quantization scales and zero points are calibration constants, not trained
    "QLinearConv": frozenset({1, 2, 4, 5, 6, 7}),
    "QLinearMatMul": frozenset({1, 2, 4, 5, 6, 7}),
    "QuantizeLinear": frozenset({1, 2}),
    "DequantizeLinear": frozenset({1, 2}),
    "ConvInteger": frozenset({2, 3}),
    "MatMulInteger": frozenset({2, 3}),
}
_TYPE_ONLY_INPUTS = frozenset({"CastLike"})
_WEIGHT_VIEWS = frozenset(
    {"Identity", "Transpose", "Cast", "CastLike", "Reshape", "Unsqueeze", "Squeeze", "Expand",
     "Flatten"}
)
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})
_BIG_WEIGHT_BYTES = 4096
_PROBE_ELEMENTS = 1 << 26  # inputs larger than this (elements) are not worth a probe run
_OP_CLASS_PREFIXES = ("aten.", "prims.", "<built-in", "torch.ops.")
READER_VERSION = 3
"""Bumped whenever the reader turns the same file into another layer graph: stored models and
cached block structures keyed by `LayerGraph.sha256` are then read again."""
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
_INPUT_KIND = "pkg.torch.export.graph_signature.InputSpec.kind"
_CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"


def load_model(path: str | Path) -> ModelProto:
    """Read an ONNX file's structure (external weights are not loaded) or raise ModelError."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"no such file: {p}")
    if not p.is_file():
        raise ModelError(f"not a file: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{p} is not a valid ONNX file ({_first_line(exc)})") from exc
    except Exception as exc:  # protobuf raises assorted errors on garbage input
        raise ModelError(f"{p} is not a valid ONNX file ({type(exc).__name__})") from exc
    if not model.graph.node:
        raise ModelError(f"{p} holds no ONNX graph nodes: not an ONNX model, or an empty one")
    return model


def read_onnx(
    path: str | Path, name: str | None = None, dims: Mapping[str, int] | None = None
) -> LayerGraph:
    """Read an ONNX file into a validated LayerGraph named `name` (default: the file stem)."""
    p = Path(path)
    graph = read_model(load_model(p), name or p.stem, base_dir=p.parent, dims=dims)
    digest = hashlib.sha256(file_sha256(p).encode())
    digest.update(json.dumps([READER_VERSION, sorted((dims or {}).items())]).encode())
    graph.sha256 = digest.hexdigest()
    return graph


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_model(
    model: ModelProto, name: str, base_dir: Path | None = None,
    dims: Mapping[str, int] | None = None,
) -> LayerGraph:
    """Turn a loaded ModelProto into a LayerGraph with per-sample facts.

    `base_dir` is where external weight files live; they are read only if static shape
    inference leaves sizes symbolic and the model must be run once to learn them. `dims`
    gives the symbolic input dimensions other than the batch (`_input_dims`).
    """
    with _input_dims(model, name, dims or {}) as batch:
        reader = _prepared(model, name, base_dir)
    return reader.build(batch)


@dataclass(frozen=True)
class _Batch:
    """How the raw inputs' leading (batch) dimension was read: symbolic, or exported at a
    concrete size that is divided out so that every figure is per sample."""

    exported: int  # the concrete batch the file was exported with (1: per sample already)
    note: str


@contextmanager
def _input_dims(model: ModelProto, name: str, dims: Mapping[str, int]) -> Iterator[_Batch]:
    """Give the raw inputs' symbolic dimensions values for the duration of a read.

    The leading dimension of the raw inputs is the batch: symbolic, it is read as 1 (figures
    per sample); concrete and shared by every raw input, it is divided out afterwards (`dims`
    may name it `batch=N` to say what it is, 1 to keep the file's figures as they are). Every
    other symbolic dimension needs a value, by name (`seq=128`) or as `INPUT.AXIS=128` when
    unnamed; a missing one is a ModelError naming it, never a silent 1.
    """
    initializers = {t.name for t in model.graph.initializer}
    raw = [vi for vi in model.graph.input if vi.name not in initializers
           and vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")]
    saved = [(vi, [_SavedDim(d) for d in vi.type.tensor_type.shape.dim]) for vi in raw]
    missing: list[str] = []
    leading: set[int | str] = set()
    for vi in raw:
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                if axis == 0:
                    leading.add(int(d.dim_value))
                continue
            key = d.dim_param or f"{vi.name}.{axis}"
            if key in dims or f"{vi.name}.{axis}" in dims:
                d.dim_value = int(dims.get(key, dims.get(f"{vi.name}.{axis}", 1)))
            elif axis == 0:
                leading.add(key)
                d.dim_value = 1
            else:
                missing.append(f"{key!r} (axis {axis} of input {vi.name!r})")
    try:
        if missing:
            example = missing[0].split("'")[1]
            raise ModelError(
                f"model {name!r} has symbolic dimensions other than the batch: "
                f"{', '.join(dict.fromkeys(missing))}; give each a value, e.g. "
                f"--dim {example}=128")
        yield _batch(leading, raw, dims)
    finally:
        for vi, old in saved:
            for d, o in zip(vi.type.tensor_type.shape.dim, old, strict=True):
                o.restore(d)


def _batch(leading: set[int | str], raw: list[ValueInfoProto], dims: Mapping[str, int]) -> _Batch:
    if "batch" in dims and not any(isinstance(x, str) for x in leading):
        return _Batch(int(dims["batch"]), f"exported batch {dims['batch']} divided out "
                                          "(--dim batch)" if dims["batch"] > 1 else "")
    if any(isinstance(x, str) for x in leading):
        names = ", ".join(sorted(str(x) for x in leading if isinstance(x, str)))
        return _Batch(1, f"symbolic batch dimension ({names}) read as 1: figures per sample")
    ranks = [len(vi.type.tensor_type.shape.dim) for vi in raw]
    if len(leading) == 1 and min(ranks, default=0) >= 2:
        exported = int(next(iter(leading)))
        if exported > 1:
            return _Batch(exported, f"exported with batch {exported}: divided out, figures "
                                    "per sample (--dim batch=1 keeps them as they are)")
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
    with _input_dims(model, "model", dims or {}):
        reader = _prepared(model, "model", base_dir)
    order = reader._node_order()
    constant, _ = reader._fold_constants(order)
    return NodeRoles(
        reader.names, order, constant, reader.deps,
        {n: i.shape for n, i in reader.info.items() if i.shape is not None and not i.symbolic},
        {n: i.elem_type for n, i in reader.info.items()},
    )


def _prepared(model: ModelProto, name: str, base_dir: Path | None) -> _Reader:
    """A reader over the shape-inferred model, symbolic sizes refined by one run if needed."""
    if not model.graph.node:
        raise ModelError(f"model {name!r} has no nodes")
    _check_text(model.graph, name)
    reader = _Reader(_infer_shapes(model), name)
    missing = reader.unresolved()
    if missing:
        if base_dir is not None and _has_external_data(model):
            model = _with_external_data(model, base_dir)
        reader.refine(runtime_shapes(model, missing))
    return reader


def _check_text(graph: GraphProto, name: str) -> None:
    """Names must be text: protobuf hands back bytes for strings that are not valid UTF-8."""
    def bad(texts: Iterable[str | bytes]) -> bool:
        return any(isinstance(t, bytes) for t in texts)

    values = [*graph.input, *graph.output, *graph.value_info]
    if bad(v.name for v in values) or bad(t.name for t in graph.initializer):
        raise ModelError(f"model {name!r}: a tensor name is not valid UTF-8 text")
    for node in graph.node:
        if bad((node.name, node.op_type, node.domain, *node.input, *node.output)):
            raise ModelError(f"model {name!r}: a node's name, type or tensor names are not "
                             "valid UTF-8 text")
        for attr in node.attribute:
            if bad((attr.name,)):
                raise ModelError(f"model {name!r}: an attribute name is not valid UTF-8 text")
            for sub in (attr.g, *attr.graphs) if attr.HasField("g") else attr.graphs:
                _check_text(sub, name)


def _has_external_data(model: ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def _with_external_data(model: ModelProto, base_dir: Path) -> ModelProto:
    full = ModelProto()
    full.CopyFrom(model)
    try:
        load_external_data(full, base_dir)
    except ModelError as exc:
        log.info("external weights not read (%s)", exc)
        return model
    return full


def load_external_data(model: ModelProto, base_dir: Path) -> None:
    """Load `model`'s external weights from `base_dir`, after checking every reference: the
    file exists inside the folder (no absolute path, `..` or symbolic link out of it), the
    region lies within the file and holds no more than the tensor declares, and all of them
    together stay under $SPLITCUT_MAX_EXTERNAL_GB (default 64). A ModelError otherwise, before
    anything big is read."""
    folder = base_dir.resolve()
    ceiling = float(os.environ.get("SPLITCUT_MAX_EXTERNAL_GB", "64")) * 2**30
    total = 0
    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        try:
            path = (folder / location).resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise ModelError(f"initializer {t.name!r}: external data {location!r} cannot be "
                             f"read ({_first_line(exc)})") from exc
        if folder not in path.parents or not path.is_file():
            raise ModelError(f"initializer {t.name!r}: external data {location!r} lies outside "
                             "the model's folder or is not a file; refused")
        size = path.stat().st_size
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else size - offset
        except ValueError as exc:
            raise ModelError(f"initializer {t.name!r}: unreadable external data offset or "
                             "length") from exc
        declared = math.ceil(math.prod(t.dims) * _ELEM_BYTES.get(t.data_type,
                                                                _UNKNOWN_ELEM_BYTES))
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelError(f"initializer {t.name!r}: external data region lies outside "
                             f"{location!r}")
        if length > declared:
            raise ModelError(f"initializer {t.name!r} declares {declared} bytes but its external "
                             f"data holds {length}; refused")
        total += length
        if total > ceiling:
            raise ModelError(f"external weights exceed {ceiling / 2**30:g} GiB "
                             "(SPLITCUT_MAX_EXTERNAL_GB); refused")
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(folder))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelError(f"external weights unreadable ({_first_line(exc)})") from exc


def layer_names(graph: GraphProto) -> list[str]:
    """The layer name of each node, in file order: the node's name, made unique and non-empty."""
    seen: dict[str, int] = {}
    names: list[str] = []
    for i, node in enumerate(graph.node):
        base = node.name or f"{node.op_type}_{i}"
        count = seen.get(base, 0)
        seen[base] = count + 1
        names.append(base if count == 0 else f"{base}#{count}")
    return names


@contextmanager
def _big_weights_aside(model: ModelProto) -> Iterator[dict[int, bytes]]:
    """The model without the bytes of its big initializers for a while (they only cost time to
    copy and serialise); yields them by initializer position, and puts them back."""
    stash = {i: t.raw_data for i, t in enumerate(model.graph.initializer)
             if len(t.raw_data) > _BIG_WEIGHT_BYTES}
    for i in stash:
        model.graph.initializer[i].ClearField("raw_data")
    try:
        yield stash
    finally:
        for i, raw in stash.items():
            model.graph.initializer[i].raw_data = raw


def _infer_shapes(model: ModelProto) -> ModelProto:
    """ONNX shape inference on a weightless view of the model."""
    with _big_weights_aside(model):
        try:
            return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception as exc:
            log.warning("shape inference failed (%s); using declared shapes only",
                        _first_line(exc))
            return model


def runtime_shapes(model: ModelProto, names: dict[str, int]) -> dict[str, Shape]:
    """Shapes of `names` (name -> element type) seen running the model once in onnxruntime.

    Used where static inference leaves sizes symbolic (shapes computed from Shape ops, as in
    Swin's window partition). Symbolic input dimensions are taken as 1. Returns {} if the model
    cannot run (custom ops, missing weights), in which case the static shapes stand.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    if not names:
        return {}
    probe, feeds = _probe_model(model)
    del probe.graph.output[:]
    for name, elem_type in names.items():
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
    initializers = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        info = _value_info(vi)
        shape = info.shape or ()
        if any(d < 0 for d in shape) or math.prod(shape) > _PROBE_ELEMENTS \
                or info.elem_type not in _ELEM_BYTES:
            log.info("input %s (%s) is not one to run the model on", vi.name, shape)
            return {}
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
        log.info("onnxruntime could not refine shapes (%s)", _first_line(exc))
        return {}
    return {
        o.name: tuple(int(d) for d in np.shape(v))
        for o, v in zip(probe.graph.output, values, strict=True)
    }


_PROBE_WEIGHT_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
                       TensorProto.FLOAT16: np.float16}


def _probe_model(model: ModelProto) -> tuple[ModelProto, dict[str, np.ndarray]]:
    """A copy of `model` whose big float weights are graph inputs, fed as views of their bytes:
    onnxruntime then gets them without serialising hundreds of megabytes of protobuf."""
    with _big_weights_aside(model) as big:
        probe = ModelProto()
        probe.CopyFrom(model)
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


_ELEM_BYTES: dict[int, float] = {
    TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2,
    TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.INT16: 2, TensorProto.UINT16: 2,
    TensorProto.INT32: 4, TensorProto.UINT32: 4, TensorProto.INT64: 8, TensorProto.UINT64: 8,
    TensorProto.BOOL: 1, TensorProto.COMPLEX64: 8, TensorProto.COMPLEX128: 16,
    TensorProto.STRING: 8,
}
for _name, _bits in (("FLOAT8E4M3FN", 8), ("FLOAT8E4M3FNUZ", 8), ("FLOAT8E5M2", 8),
                     ("FLOAT8E5M2FNUZ", 8), ("FLOAT8E8M0", 8), ("UINT4", 4), ("INT4", 4),
                     ("FLOAT4E2M1", 4), ("UINT2", 2), ("INT2", 2)):
    if hasattr(TensorProto, _name):  # newer onnx releases add element types
        _ELEM_BYTES[getattr(TensorProto, _name)] = _bits / 8
_UNKNOWN_ELEM_BYTES = 4  # an element type this onnx does not know: costed as fp32
_FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
)


def _dtype_name(elem_type: int) -> str:
    try:
        return str(TensorProto.DataType.Name(elem_type)).lower()
    except ValueError:
        return "undefined"


@dataclass(frozen=True)
class _Info:
    shape: Shape | None
    elem_type: int
    symbolic: bool = False


def _value_info(vi: ValueInfoProto) -> _Info:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
        return _Info(None, tt.elem_type if vi.type.HasField("tensor_type") else 0)
    dims: list[int] = []
    symbolic = False
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value < 0:
            raise ModelError(f"tensor {vi.name!r} has a negative dimension ({d.dim_value})")
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(1)
            symbolic = True
    return _Info(tuple(dims), tt.elem_type, symbolic)


def _attr_value(attr: AttributeProto) -> object:
    if attr.type == AttributeProto.TENSOR:
        return f"tensor{tuple(attr.t.dims)}:{_dtype_name(attr.t.data_type)}"
    if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        graphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
        return "graph:" + "|".join(",".join(n.op_type for n in g.node) for g in graphs)
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return value


def _groups(value: object) -> int:
    """A convolution's `group` attribute as a count (1 when absent or unreadable)."""
    return value if isinstance(value, int) and value > 0 else 1


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
                for sub in [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs):
                    visit(sub, local)
            local |= {o for o in n.output if o}

    for attr in node.attribute:
        for sub in [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs):
            visit(sub, set())
    return found


def _module_of(node: NodeProto) -> tuple[str | None, dict[str, str]]:
    """PyTorch module path of a node and the class of each enclosing module, where known.

    From the exporters' `pkg.torch.onnx.name_scopes`/`class_hierarchy` metadata, else from a
    scoped node name such as `/layer1/layer1.0/conv1/Conv` (TorchScript), which has no classes.
    """
    meta = {p.key: p.value for p in node.metadata_props}
    scopes = _parse_list(meta.get(_NAME_SCOPES))
    classes = _parse_list(meta.get(_CLASS_HIERARCHY))
    if scopes:
        if classes and classes[-1].startswith(_OP_CLASS_PREFIXES):  # innermost is the op itself
            scopes, classes = scopes[:-1], classes[:-1]
        paths = [_join_scopes([s for s in scopes[: k + 1] if s]) for k in range(len(scopes))]
        known = {p: c for p, c in zip(paths, classes, strict=False) if p}
        return (paths[-1] or None) if paths else None, known
    return module_path(node.name), {}


def module_path(node_name: str) -> str | None:
    """'/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1'; None for an unscoped name."""
    if not node_name.startswith("/"):
        return None
    return _join_scopes([p for p in node_name.split("/")[1:-1] if p]) or None


_METADATA_CHARS = 65_536  # a scope list longer than this is not read as one


def _parse_list(text: str | None) -> list[str]:
    if not text:
        return []
    if len(text) > _METADATA_CHARS:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return [text]
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def _join_scopes(parts: Sequence[str]) -> str:
    """['layer1', 'layer1.0', 'conv1'] -> 'layer1.0.conv1' (parts may be qualified or not)."""
    comps: list[str] = []
    for part in parts:
        for k in range(len(comps)):  # a part may repeat a tail of the path: 'downsample.0'
            tail = ".".join(comps[k:])
            if part == tail or part.startswith(tail + "."):
                comps = comps[:k]
                break
        comps.extend(part.split("."))
    return ".".join(comps)


def _per_sample(
    layers: list[Layer], tensors: dict[str, Tensor], exported: int
) -> tuple[list[Layer], dict[str, Tensor]]:
    """Divide a concrete exported batch out: tensors led by it and every layer's work."""
    def per(t: Tensor) -> Tensor:
        if not t.shape or t.shape[0] != exported:
            return t
        return dataclasses.replace(t, shape=(1, *t.shape[1:]), bytes=t.bytes // exported)

    tensors = {n: per(t) for n, t in tensors.items()}
    layers = [dataclasses.replace(
        x, flops=x.flops / exported, macs=x.macs / exported,
        in_bytes=sum(tensors[t].bytes for t in x.inputs if t in tensors),
        out_bytes=sum(tensors[t].bytes for t in x.outputs)) for x in layers]
    return layers, tensors


def buffer_names(graph: GraphProto) -> set[str]:
    """Initializers that torch.export says are not parameters (buffers, lifted constants)."""
    return {
        vi.name for vi in [*graph.value_info, *graph.input]
        if any(e.key == _INPUT_KIND and e.value in ("BUFFER", "CONSTANT_TENSOR")
               for e in vi.metadata_props)
    }


class _Reader:
    """One pass over a shape-inferred model: order nodes, fold constants, build layers."""

    def __init__(self, model: ModelProto, name: str) -> None:
        self.name = name
        g = model.graph
        self.graph = g
        self.initializers = {t.name: t for t in g.initializer}
        self.info: dict[str, _Info] = {}
        for vi in [*g.input, *g.value_info, *g.output]:
            if vi.name:
                self.info[vi.name] = _value_info(vi)
        for t in g.initializer:
            if any(d < 0 for d in t.dims):
                raise ModelError(f"model {name!r}: initializer {t.name!r} has a negative "
                                 f"dimension {tuple(t.dims)}")
            self.info[t.name] = _Info(tuple(int(d) for d in t.dims), t.data_type)
        self.raw_inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.buffers = buffer_names(g)
        self.names = layer_names(g)
        self.module_classes: dict[str, str] = {}
        self.opset = max(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0
        )

    def unresolved(self) -> dict[str, int]:
        """Node outputs (with element type) whose size static inference left unknown or symbolic."""
        found: dict[str, int] = {}
        for node in self.graph.node:
            for out in node.output:
                info = self.info.get(out)
                if info is not None and info.elem_type and (info.shape is None or info.symbolic):
                    found[out] = info.elem_type
        return found

    def refine(self, shapes: dict[str, Shape]) -> None:
        for name, shape in shapes.items():
            old = self.info.get(name)
            self.info[name] = _Info(shape, old.elem_type if old else TensorProto.FLOAT)

    def build(self, batch: _Batch | None = None) -> LayerGraph:
        order = self._node_order()  # also fills self.deps
        constant, consts = self._fold_constants(order)
        unsupported: dict[str, int] = {}
        unknown: list[str] = []
        tensors: dict[str, Tensor] = {}
        for name in self.raw_inputs:
            tensors[name] = self._tensor(name, None, fallback=0)
        layers: list[Layer] = []
        for i in order:
            if i in constant:
                continue
            node = self.graph.node[i]
            layer = self._layer(i, node, consts, tensors)
            for out in layer.outputs:
                if not tensors[out].shape_known:
                    unknown.append(out)
            if not layer.supported:
                unsupported[node.op_type] = unsupported.get(node.op_type, 0) + 1
            layers.append(layer)
        outputs = [o.name for o in self.graph.output if o.name in tensors]
        notes = [batch.note] if batch is not None and batch.note else []
        if batch is not None and batch.exported > 1:
            layers, tensors = _per_sample(layers, tensors, batch.exported)
        return LayerGraph.build(
            self.name, layers, tensors, self.raw_inputs, outputs,
            unsupported_ops=unsupported, unknown_shapes=tuple(unknown), notes=tuple(notes),
            module_classes=self.module_classes, opset=self.opset,
        )

    def _node_order(self) -> list[int]:
        """Node indices in topological order; a cycle or a dangling name is a ModelError."""
        nodes = self.graph.node
        producer: dict[str, int] = {}
        for i, node in enumerate(nodes):
            for out in node.output:
                if not out:
                    continue
                if out in producer or out in self.initializers or out in self.raw_inputs:
                    raise ModelError(f"model {self.name!r}: tensor {out!r} is produced twice")
                producer[out] = i
        self.deps: list[list[str]] = []
        indegree = [0] * len(nodes)
        succ: list[list[int]] = [[] for _ in nodes]
        for i, node in enumerate(nodes):
            names = [n for n in node.input if n]
            if node.op_type in _SUBGRAPH_OPS or any(
                a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute
            ):
                names += [n for n in _subgraph_outer_names(node) if n not in names]
            self.deps.append(names)
            for name in dict.fromkeys(names):
                if name in producer:
                    succ[producer[name]].append(i)
                    indegree[i] += 1
                elif name not in self.initializers and name not in self.raw_inputs:
                    raise ModelError(
                        f"model {self.name!r}: node {self.names[i]!r} reads tensor {name!r}, "
                        "which is neither a graph input, an initializer nor a node output "
                        "(dangling tensor name)"
                    )
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
                        if t.data_type in _FLOAT_TYPES and n not in self.buffers}
        self.weight_base: dict[str, str] = {}  # a view of a weight -> the initializer itself
        self.owned: set[str] = set()  # weights already counted by an earlier layer
        constant: set[int] = set()
        for i in order:
            node = self.graph.node[i]
            names = self.deps[i]
            if node.op_type in _NEVER_CONSTANT:
                continue
            static_shape = node.op_type in ("Shape", "Size") and self._static(node.input[0])
            if node.op_type in _TYPE_ONLY_INPUTS:  # CastLike reads only its target's dtype
                names = [n for n in node.input[:1] if n]
            trains = node.op_type not in _WEIGHT_VIEWS and any(n in self.weights for n in names)
            if static_shape or (not trains and all(n in consts for n in names)):
                constant.add(i)
                consts.update(out for out in node.output if out)
                if node.op_type in _WEIGHT_VIEWS and node.input and node.input[0] in self.weights:
                    self.weights.update(out for out in node.output if out)
                    # Identity is how the TorchScript exporter aliases distinct parameters
                    # that happen to hold equal values (it de-duplicates initializers): its
                    # output is a parameter of its own. Other views read the same one.
                    base = node.output[0] if node.op_type == "Identity" \
                        else self.weight_base.get(node.input[0], node.input[0])
                    self.weight_base.update((out, base) for out in node.output if out)
        return constant, consts

    def _static(self, name: str) -> bool:
        info = self.info.get(name)
        return info is not None and info.shape is not None and not info.symbolic

    def _tensor(self, name: str, producer: str | None, fallback: int) -> Tensor:
        info = self.info.get(name)
        if info is None or info.shape is None:
            return Tensor(name, (), "undefined", fallback, producer, shape_known=False)
        size = _ELEM_BYTES.get(info.elem_type, _UNKNOWN_ELEM_BYTES)
        nbytes = math.ceil(numel(info.shape) * size)
        return Tensor(name, info.shape, _dtype_name(info.elem_type), nbytes, producer)

    def _layer(
        self,
        i: int,
        node: NodeProto,
        consts: set[str],
        tensors: dict[str, Tensor],
    ) -> Layer:
        name = self.names[i]
        acts = [n for n in dict.fromkeys(self.deps[i]) if n not in consts]
        params = param_bytes = elements = 0
        skip = NOT_TRAINABLE_INPUTS.get(node.op_type, frozenset())
        for k, inp in enumerate(node.input):
            info = self.info.get(inp)
            if inp not in self.weights or k in skip or info is None:
                continue
            if info.shape is not None:
                count = numel(info.shape)
                elements += count
                param_bytes += math.ceil(count * _ELEM_BYTES.get(info.elem_type,
                                                                 _UNKNOWN_ELEM_BYTES))
                base = self.weight_base.get(inp, inp)
                if base not in self.owned:  # the first reader owns it
                    self.owned.add(base)
                    params += count
        in_bytes = sum(tensors[n].bytes for n in acts if n in tensors)
        outs = [o for o in node.output if o]
        fallback = max((tensors[n].bytes for n in acts if n in tensors), default=0)
        for out in outs:
            tensors[out] = self._tensor(out, name, fallback)
        attrs = {a.name: _attr_value(a) for a in node.attribute}
        cost = self._cost(name, OpFacts(
            node.op_type, [self._shape(n) for n in node.input],
            [self._shape(n) for n in node.output], attrs,
        ))
        flops, macs, supported = cost.flops, cost.macs, cost.supported
        if node.op_type in _SUBGRAPH_OPS:
            flops, supported = self._subgraph_flops(node), True
        module, classes = _module_of(node)
        self.module_classes.update(classes)
        return Layer(
            name=name,
            op=node.op_type if not node.domain or node.domain == "ai.onnx"
            else f"{node.domain}.{node.op_type}",
            inputs=tuple(acts),
            outputs=tuple(outs),
            flops=flops,
            macs=macs,
            params=params,
            param_bytes=param_bytes,
            in_bytes=in_bytes,
            out_bytes=sum(tensors[o].bytes for o in outs),
            module=module,
            attrs=_canonical_attrs(attrs),
            groups=_groups(attrs.get("group", 1)),
            supported=supported,
            reads_input=any(n in self.raw_inputs for n in acts),
            weight_elements=elements,
        )

    def _shape(self, name: str) -> Shape | None:
        info = self.info.get(name) if name else None
        return info.shape if info is not None else None

    def _subgraph_flops(self, node: NodeProto) -> float:
        """Control flow counts as one layer costing the sum of its bodies (one iteration each)."""
        total = 0.0
        for attr in node.attribute:
            for g in [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs):
                local = {vi.name: _value_info(vi) for vi in [*g.input, *g.value_info, *g.output]}
                for n in g.node:
                    shapes_in = [self._local_shape(x, local) for x in n.input]
                    shapes_out = [self._local_shape(x, local) for x in n.output]
                    attrs = {a.name: _attr_value(a) for a in n.attribute}
                    facts = OpFacts(n.op_type, shapes_in, shapes_out, attrs)
                    total += self._cost(f"{node.name} / {n.name}", facts).flops
        return total

    def _cost(self, layer: str, facts: OpFacts) -> OpCost:
        try:
            return cost_of(facts)
        except ValueError as exc:
            raise ModelError(f"model {self.name!r}: layer {layer!r}: {exc}") from exc

    def _local_shape(self, name: str, local: dict[str, _Info]) -> Shape | None:
        info = local.get(name) or self.info.get(name)
        return info.shape if info is not None else None

