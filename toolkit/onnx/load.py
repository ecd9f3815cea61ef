"""Loading an ONNX file safely: size and text checks, external data read only from inside the
model's folder, and the names of its nodes and buffers."""

from __future__ import annotations

import ast
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnx.inliner
import onnx.numpy_helper
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto

from toolkit.errors import ModelError

log = logging.getLogger(__name__)

_BIG_WEIGHT_BYTES = 4096
_INPUT_KIND = "pkg.torch.export.graph_signature.InputSpec.kind"
_FOLDED_FROM = "pkg.onnxscript.optimizer.folded_from"
_ORIGINAL_NAME = "pkg.torch.onnx.original_node_name"
FROZEN = "splitcut.requires_grad"
"""An initializer's metadata key; "false" marks a parameter the module does not train (a frozen
sinusoidal position table): `export_pytorch` writes it, a user may too."""
_EXPORTER_VALUE = re.compile(r"val_[0-9]+")  # onnxscript's name for a value an op makes
_SPARSE_GROWTH = 1000  # a weight pruned to 0.1% of its values is still read
_SPARSE_SLACK_BYTES = 1 << 28

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
        raise ModelError(f"{p} is not a valid ONNX file ({first_line(exc)})") from exc
    except Exception as exc:  # protobuf raises assorted errors on garbage input
        raise ModelError(f"{p} is not a valid ONNX file ({type(exc).__name__})") from exc
    if not model.graph.node:
        raise ModelError(f"{p} holds no ONNX graph nodes: not an ONNX model, or an empty one")
    return standard_form(model)


def standard_form(model: ModelProto) -> ModelProto:
    """`model` as the reader, split and the executor take it: its sparse initializers dense
    (`dense_initializers`), its weights initializers where it wrote them as Constant nodes
    (`constant_weights`) and its own functions inlined (`inline_functions`)."""
    return inline_functions(constant_weights(dense_initializers(model)))


WRITTEN_AS = "splitcut.written_as"
"""An initializer's metadata key; "Constant" marks a weight the file wrote as a Constant node
(`constant_weights`)."""
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "LSTM": 1, "GRU": 1,
                 "RNN": 1}
"""Where an operator reads its weight: a float Constant node there is a weight."""
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
                         TensorProto.BFLOAT16})


def constant_weights(model: ModelProto) -> ModelProto:
    """`model` with its float Constant nodes made initializers (each marked `WRITTEN_AS`) where
    it writes its weights so: no float initializer, and a Constant node's float tensor is some
    convolution's, Gemm's, MatMul's or recurrent layer's weight (paddle2onnx and OpenVINO's
    exports; PaddleOCR's models). Nothing in such a file tells a weight from another constant,
    so every float Constant tensor is one, as every float initializer is in other files; the
    rules that keep bounds, scales and statistics from training apply to both alike. A copy;
    `model` as it is otherwise (also a file whose weights are inputs: no Constant reads as
    one)."""
    graph = model.graph
    if any(t.data_type in FLOAT_TYPES for t in graph.initializer):
        return model
    outputs = {o.name for o in graph.output}
    found: dict[int, TensorProto] = {}  # node index -> the weight it holds
    for i, node in enumerate(graph.node):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") \
                or len(node.output) != 1 or node.output[0] in outputs:
            continue
        value = next((a.t for a in node.attribute
                      if a.name == "value" and a.type == AttributeProto.TENSOR), None)
        if value is not None and value.data_type in FLOAT_TYPES:
            found[i] = value
    read_as_weight = set()
    for node in graph.node:
        k = _WEIGHT_INPUT.get(node.op_type)
        if k is not None and len(node.input) > k:
            read_as_weight.add(node.input[k])
    if read_as_weight.isdisjoint(graph.node[i].output[0] for i in found):
        return model
    copy = ModelProto()
    copy.CopyFrom(model)
    for i, value in found.items():
        weight = copy.graph.initializer.add()
        weight.CopyFrom(value)
        weight.name = graph.node[i].output[0]
        mark = weight.metadata_props.add()
        mark.key, mark.value = WRITTEN_AS, "Constant"
    kept = [n for i, n in enumerate(copy.graph.node) if i not in found]
    del copy.graph.node[:]
    copy.graph.node.extend(kept)
    return copy


def dense_initializers(model: ModelProto) -> ModelProto:
    """`model` with each sparse initializer (SparseTensorProto: a pruned weight stored as its
    non-zero values and their indices) made an ordinary one, zeros filled in, so that it is a
    weight like any other (a copy: `model` as it is when it has none). One whose dense form
    would be over `_SPARSE_GROWTH` times its stored size (and over `_SPARSE_SLACK_BYTES`) is a
    ModelError: a few bytes must not ask for gigabytes."""
    if not model.graph.sparse_initializer:
        return model
    copy = ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    taken = {t.name for t in graph.initializer}
    dense = []
    for sparse in graph.sparse_initializer:
        name = sparse.values.name
        if name in taken:
            raise ModelError(f"sparse initializer {name!r} has the name of another initializer")
        dense.append(_dense(sparse, name))
        taken.add(name)
    graph.initializer.extend(dense)
    del graph.sparse_initializer[:]
    return copy


def _dense(sparse: onnx.SparseTensorProto, name: str) -> TensorProto:
    dims = tuple(sparse.dims)
    try:
        values = onnx.numpy_helper.to_array(sparse.values).reshape(-1)
        indices = onnx.numpy_helper.to_array(sparse.indices).astype(np.int64)
    except Exception as exc:  # external or malformed data: ONNX raises assorted errors
        raise ModelError(f"sparse initializer {name!r} cannot be read ({first_line(exc)})") from exc
    size = math.prod(dims)
    stored = values.nbytes + indices.nbytes
    if min(dims, default=0) < 0 or size * values.itemsize > max(
            _SPARSE_GROWTH * stored, _SPARSE_SLACK_BYTES):
        raise ModelError(f"sparse initializer {name!r} would take {size * values.itemsize:,} "
                         f"bytes dense (dims {list(dims)}, {values.size:,} values stored)")
    if indices.ndim == 2 and len(dims) > 0 and indices.shape[1] == len(dims):
        flat = np.ravel_multi_index(tuple(indices.T), dims) if indices.size else indices[:, 0]
    else:
        flat = indices.reshape(-1)
    if flat.shape != values.shape or (flat.size and (flat.min() < 0 or flat.max() >= size)):
        raise ModelError(f"sparse initializer {name!r}: its indices do not fit its values and "
                         f"dims {list(dims)}")
    out = np.zeros(size, values.dtype)
    out[flat] = values
    return onnx.numpy_helper.from_array(out.reshape(dims), name)


def inline_functions(model: ModelProto) -> ModelProto:
    """`model` with every call of one of its own functions (a FunctionProto: onnxscript's, or
    torch.onnx's `export_modules_as_functions`) replaced by the function's body, so each
    operator inside is a layer costed as itself; `model` as it is where it has none, or where
    ONNX cannot inline them (each call is then charged a guess, and a note says so)."""
    if not model.functions:
        return model
    try:
        inlined = onnx.inliner.inline_local_functions(model)
    except Exception as exc:  # ONNX raises its own errors on functions it cannot inline
        log.info("local functions not inlined (%s)", first_line(exc))
        return model
    _name_after_calls(model, inlined)
    return inlined


_MODULE_CLASS = re.compile(r"(?P<op>.+?)(?:_\d+)?")
_SCOPES = "pkg.torch.onnx.name_scopes"
_CLASSES = "pkg.torch.onnx.class_hierarchy"


def _name_after_calls(model: ModelProto, inlined: ModelProto) -> None:
    """Each node `inlined` made of a call of one of `model`'s functions named after that call
    and placed in its module: ONNX's inliner names them after the function's nodes alone
    (`Conv_0__1`), which says neither which call nor which module. A node of the call
    `/blocks/blocks.0/Blk` (TorchScript's `export_modules_as_functions`: the call named
    after its module's scope and the module's class, the function after the class) becomes
    `/blocks/blocks.0/Blk.Conv_0` in module `blocks.0`, whose class is the function's
    (`__main__.Blk`); a node of a nested call `/blocks/blocks.0/Blk.Sub_2.Conv_5`. A node
    without metadata of its own takes the call's (an exporter that scopes its calls). The
    inliner writes each call's nodes in its place, in order; names stay as it gave them
    where the nodes do not line up with the calls so, or a name would be taken twice."""
    functions = {(f.domain, f.name, f.overload): f for f in model.functions}

    def expanded(nodes: Iterable[NodeProto], prefix: str, depth: int
                 ) -> Iterator[tuple[str, str, NodeProto | None]]:
        """(name, op, outermost call) of each node the inliner makes of `nodes`."""
        for node in nodes:
            name = f"{prefix}.{node.name or node.op_type}" if prefix else node.name
            function = functions.get((node.domain, node.op_type, node.overload))
            if function is None:
                yield name, node.op_type, None
            elif depth < _MAX_FUNCTION_DEPTH:  # (deeper, the nodes fail to line up)
                for inner, op, _ in expanded(function.node, name or node.op_type, depth + 1):
                    yield inner, op, node
    planned = list(expanded(model.graph.node, "", 0))
    made = inlined.graph.node
    if [op for _, op, _ in planned] != [n.op_type for n in made]:
        log.info("inlined nodes not named after their calls: they do not line up")
        return
    taken = {name for name, _, call in planned if call is None}
    for (name, _, call), node in zip(planned, made, strict=True):
        if call is None or name in taken:
            continue
        taken.add(name)
        node.name = name
        if node.metadata_props:
            continue
        if call.metadata_props:
            node.metadata_props.extend(call.metadata_props)
        elif scope := _module_scope(call):
            classes = [""] * (len(scope) - 1) + [f"{call.domain}.{call.op_type}"]
            node.metadata_props.add(key=_SCOPES, value=repr(scope))
            node.metadata_props.add(key=_CLASSES, value=repr(classes))


_MAX_FUNCTION_DEPTH = 64  # calls nested deeper keep the names the inliner gave


def _module_scope(call: NodeProto) -> list[str]:
    """The scope of `call` where it is TorchScript's call of a module exported as a function:
    named `/SCOPE/Class` (or `Class_N`, a second call), the function named after the module's
    class, in the domain of the Python module that defines it; else none."""
    name: str = call.name
    scope, _, last = name.rpartition("/")
    found = _MODULE_CLASS.fullmatch(last)
    if (not scope.startswith("/") or found is None or found["op"] != call.op_type
            or not call.domain or call.domain.startswith(("ai.onnx", "com.", "pkg.", "org."))):
        return []
    return scope.split("/")[1:]


class NodeFields(NamedTuple):
    """A node's fields, read from protobuf once: upb builds a new object at every access, and
    the reader and the folding read each field several times."""

    proto: NodeProto
    op: str  # as in the file (unqualified)
    name: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: Sequence[AttributeProto]
    subgraphs: bool  # an attribute holds a graph (control flow, or one that hides a body)


def node_fields(proto: NodeProto) -> NodeFields:
    attributes = proto.attribute
    return NodeFields(proto, proto.op_type, proto.name, proto.domain, tuple(proto.input),
                      tuple(proto.output), attributes, holds_graphs(attributes))


def holds_graphs(attributes: Sequence[AttributeProto]) -> bool:
    """Some attribute holds a graph (a control-flow body, or one that hides one)."""
    return bool(attributes) and any(a.type in _GRAPH_TYPES for a in attributes)


_GRAPH_TYPES = (AttributeProto.GRAPH, AttributeProto.GRAPHS)


def check_text(graph: GraphProto, name: str) -> None:
    """Names must be text: protobuf hands back bytes for strings that are not valid UTF-8."""
    check_value_names(graph, name)
    for node in graph.node:
        check_node_text((node.name, node.op_type, node.domain, *node.input, *node.output),
                        node.attribute, name)


def check_value_names(graph: GraphProto, name: str) -> None:
    """`check_text` of the graph's inputs, outputs, value infos and initializers."""
    values = [*graph.input, *graph.output, *graph.value_info]
    if _bad(v.name for v in values) or _bad(t.name for t in graph.initializer):
        raise ModelError(f"model {name!r}: a tensor name is not valid UTF-8 text")


def check_node_text(
    texts: Iterable[str | bytes], attributes: Iterable[AttributeProto], name: str
) -> None:
    """`check_text` of nodes: their names, types and tensor names (`texts`), their attributes'
    names and the graphs inside them."""
    if _bad(texts):
        raise ModelError(f"model {name!r}: a node's name, type or tensor names are not "
                         "valid UTF-8 text")
    for attr in attributes:
        if isinstance(attr.name, bytes):
            raise ModelError(f"model {name!r}: an attribute name is not valid UTF-8 text")
        for sub in attr_graphs(attr):
            check_text(sub, name)


def attr_graphs(attr: AttributeProto) -> list[GraphProto]:
    """The graphs an attribute holds (a control-flow body, or a list of them): every one
    present, whatever its type field says."""
    return [attr.g, *attr.graphs] if attr.HasField("g") else list(attr.graphs)


def _bad(texts: Iterable[str | bytes]) -> bool:
    return any(issubclass(kind, bytes) for kind in set(map(type, texts)))  # (map: in C)


def has_external_data(model: ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def with_external_data(model: ModelProto, base_dir: Path) -> ModelProto:
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
                             f"read ({first_line(exc)})") from exc
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
        declared = math.ceil(math.prod(t.dims) * ELEM_BYTES.get(t.data_type,
                                                                UNKNOWN_ELEM_BYTES))
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
        raise ModelError(f"external weights unreadable ({first_line(exc)})") from exc


def layer_names(graph: GraphProto) -> list[str]:
    """The layer name of each node, in file order: the node's name, made unique and non-empty."""
    return unique_names([n.name for n in graph.node], [n.op_type for n in graph.node])


def unique_names(names: Sequence[str], ops: Sequence[str]) -> list[str]:
    """`layer_names` from the nodes' names and types, in file order."""
    seen: dict[str, int] = {}
    unique: list[str] = []
    for i, base in enumerate(names):
        base = base or f"{ops[i]}_{i}"
        count = seen.get(base, 0)
        seen[base] = count + 1
        unique.append(base if count == 0 else f"{base}#{count}")
    return unique


def _big(t: TensorProto) -> bool:
    """An initializer whose bytes are worth keeping out of copies (judged by its declared
    size: reading `raw_data` to measure it would copy it)."""
    return bool(math.prod(t.dims) * ELEM_BYTES.get(t.data_type, UNKNOWN_ELEM_BYTES)
                > _BIG_WEIGHT_BYTES)


@contextmanager
def big_weights_aside(model: ModelProto) -> Iterator[dict[int, bytes]]:
    """The model without the bytes of its big initializers for a while (they only cost time to
    copy and serialise); yields them by initializer position, and puts them back."""
    stash = {i: t.raw_data for i, t in enumerate(model.graph.initializer)
             if _big(t) and t.HasField("raw_data")}
    for i in stash:
        model.graph.initializer[i].ClearField("raw_data")
    try:
        yield stash
    finally:
        for i, raw in stash.items():
            model.graph.initializer[i].raw_data = raw


def weightless(model: ModelProto) -> ModelProto:
    """A copy of `model` without the bytes of its big initializers (names, types, dims kept)."""
    with big_weights_aside(model):
        copy = ModelProto()
        copy.CopyFrom(model)
    return copy


def drop_big_weights(model: ModelProto) -> None:
    """`weightless` in place, for a model nobody else holds."""
    for t in model.graph.initializer:
        if _big(t):
            t.ClearField("raw_data")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def buffer_names(graph: GraphProto) -> set[str]:
    """Initializers that carry no gradient by what the exporter wrote (`ExportedWeights`)."""
    return exported_weights(graph).buffers


class ExportedWeights(NamedTuple):
    """What torch.onnx wrote of where its initializers come from (`exported_weights`)."""

    buffers: set[str]  # initializers that carry no gradient
    views: dict[str, str]  # a folded initializer -> the trainable initializer it holds anew
    originals: dict[str, str]  # an initializer -> the torch.export placeholder it stands for


def exported_weights(graph: GraphProto) -> ExportedWeights:
    """The initializers that carry no gradient: those marked frozen (`FROZEN`), those
    torch.export says are not parameters (buffers, lifted constants), the values the
    exporter made of the code's literals (`x * 0.5`, stored as `val_N` with no word of where
    from, in a file that says it of others), and those onnxscript's
    optimizer (on by default in `torch.onnx.export(dynamo=True)`) folded from nothing a
    gradient reaches: the exporter's own constants (`val_N`, gone once folded), the shapes of
    activations (values the graph still computes) and such buffers. A folded initializer with
    any other source (a parameter transposed or scaled, or a source it cannot tell from one)
    stays trainable; one folded from a single parameter that the file still holds, as many
    elements (a transposed weight that another node reads as it is: a tied head), is that
    parameter anew. Also the placeholder each initializer was exported for
    (`pkg.torch.onnx.original_node_name`)."""
    marked = {t.name for t in graph.initializer
              if any(e.key == FROZEN and e.value == "false" for e in t.metadata_props)}
    recorded: list[tuple[str, str]] = []  # (initializer, what the optimizer folded it from)
    originals: dict[str, str] = {}
    described: set[str] = set()  # what torch.export lifted: parameters, buffers, constants
    for vi in [*graph.value_info, *graph.input]:
        for e in vi.metadata_props:
            if e.key == _INPUT_KIND:
                described.add(vi.name)
                if e.value in ("BUFFER", "CONSTANT_TENSOR"):
                    marked.add(vi.name)
            elif e.key == _FOLDED_FROM:
                recorded.append((vi.name, e.value))
            elif e.key == _ORIGINAL_NAME:
                originals[vi.name] = e.value
    sizes = {t.name: math.prod(t.dims) for t in graph.initializer}
    if described:  # a torch.export file: a value the exporter made (`val_N`) that it neither
        # lifted nor folded is a literal of the code (GPT-2's `* 0.5`, a mask's fill value); a
        # parameter keeps its name where a rewrite drops its metadata (a batch norm fused)
        folded_names = {name for name, _ in recorded}
        marked |= {name for name in sizes.keys() - described - folded_names
                   if _EXPORTER_VALUE.fullmatch(name)}
    if not recorded:  # (no optimizer ran: nothing more to look at)
        return ExportedWeights(marked, {}, originals)
    computed = {o for n in graph.node for o in n.output} | (
        {i.name for i in graph.input} - sizes.keys())

    def no_gradient(source: object) -> bool:
        if not isinstance(source, str):
            return False
        if source in sizes:
            return source in marked
        return source in computed or _EXPORTER_VALUE.fullmatch(source) is not None

    folded, views = set(), {}
    for name, value in recorded:
        if name not in sizes:
            continue
        try:
            sources = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue  # not a list the optimizer wrote: trainable, as any initializer
        if not isinstance(sources, list) or not sources:
            continue
        live = [source for source in sources if not no_gradient(source)]
        if not live:
            folded.add(name)
        elif len(live) == 1 and isinstance(live[0], str) and sizes.get(live[0]) == sizes[name]:
            views[name] = live[0]
    return ExportedWeights(marked | folded, views, originals)


ELEM_BYTES: dict[int, float] = {
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
        ELEM_BYTES[getattr(TensorProto, _name)] = _bits / 8
UNKNOWN_ELEM_BYTES = 4  # an element type this onnx does not know: costed as fp32
