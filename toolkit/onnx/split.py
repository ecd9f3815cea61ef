"""Write a partition as runnable ONNX models, one per tier, and check that in order they equal
the whole.

Two tiers: `device.onnx` reads the raw inputs and returns the crossing tensors (plus any model
output made on the device); `server.onnx` reads the crossing tensors, under their own names,
and returns the rest of the outputs. A chain writes one file per tier (a U-shape: device-head,
server, device-tail). Only tiers that hold layers are written: when every layer runs on the
device there is no server half.

Dynamic dimensions stay dynamic: a half's raw inputs and model outputs keep the file's own
declarations, crossing tensors of a model with symbolic input dimensions are declared by type
alone, and a Shape/Size node whose input lives in the half stays a node; where its input lives
only in the other half, the shape is made a constant when static and otherwise sent across
with the crossing tensors (a few int64 values: dimensions, which the activations reveal
anyway). The check runs the halves at two batch sizes when the batch is symbolic. Folded
constants go to whichever half needs them, both if both do.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper

from toolkit.errors import ModelError, ToolkitError
from toolkit.onnx import NodeRoles, load_external_data, load_model, node_roles
from toolkit.onnx.shapes import dim_given

_SIZE_LIMIT = 1_800_000_000  # protobuf's 2 GiB cap, with room to spare


@dataclass(frozen=True)
class SplitResult:
    device_path: Path
    server_path: Path | None  # None: every layer runs on the device, no server half
    cut_tensors: list[str]
    max_abs_error: float | None
    max_rel_error: float | None  # relative to the largest magnitude of that output
    not_verified: str | None = None  # why the halves could not be checked (they are written)


@dataclass(frozen=True)
class TierSplit:
    """One ONNX file per tier that holds layers, in chain order."""

    paths: list[Path | None]  # per tier; None: the tier holds no layer, no file
    inputs: list[list[str]]  # per tier, what it receives from earlier tiers
    max_abs_error: float | None
    max_rel_error: float | None
    not_verified: str | None = None
    sources: dict[str, int] = field(default_factory=dict)  # received tensor -> its tier
    made: list[list[str]] = field(default_factory=list)  # per tier, the model outputs it makes

    def crossing(self, boundary: int) -> list[str]:
        """What crosses `boundary` (after its tier): every tensor a later tier receives from
        this tier or an earlier one, once, relayed or not."""
        return list(dict.fromkeys(
            name for t in range(boundary + 1, len(self.inputs)) for name in self.inputs[t]
            if self.sources.get(name, 0) <= boundary))


def split_model(
    path: str | Path, device_layers: Collection[str], out_dir: str | Path, check: bool = True,
    dims: Mapping[str, int] | None = None,
) -> SplitResult:
    """Write device.onnx and server.onnx for `device_layers` (`split_tiers` with two tiers);
    optionally verify them (`dims`: values for symbolic dimensions other than the batch)."""
    split = split_tiers(path, dict.fromkeys(device_layers, 0), ["device", "server"], out_dir,
                        check, dims, default=1)
    device = split.paths[0] or Path(out_dir) / "device.onnx"
    return SplitResult(device, split.paths[1], split.inputs[1], split.max_abs_error,
                       split.max_rel_error, split.not_verified)


def split_tiers(
    path: str | Path, tier_of: Mapping[str, int], files: Sequence[str], out_dir: str | Path,
    check: bool = True, dims: Mapping[str, int] | None = None, default: int | None = None,
) -> TierSplit:
    """Write `files[t]`.onnx for each tier t that holds layers (`tier_of`: each layer's tier,
    data flowing forward along the chain) and optionally verify that running them in order
    equals the whole model. A tier reads the raw inputs its layers read and the tensors of
    earlier tiers it needs (by their own names: relayed or not, a tensor arrives as itself),
    and returns what later tiers read from it plus the model outputs it makes. Layers
    `tier_of` does not name take `default` (an error when None)."""
    src = Path(path)
    model = load_model(src)
    load_external_data(model, src.parent)
    roles = node_roles(model, src.parent, dims)
    g = model.graph
    for node, name in zip(g.node, roles.names, strict=True):  # each node named its layer: a
        node.name = name  # name the file repeats makes a model onnxruntime refuses
    k = len(files)
    missing = [n for n in tier_of if n not in set(roles.names)]
    if missing:
        raise ModelError(f"no layer named {missing[0]!r} in {src.name}")
    layers = [i for i in roles.order if i not in roles.constant]
    tier = {i: tier_of.get(roles.names[i], -1 if default is None else default) for i in layers}
    unplaced = [roles.names[i] for i in layers if not 0 <= tier[i] < k]
    if unplaced:
        raise ModelError(f"layer {unplaced[0]!r} of {src.name} has no tier of the chain")
    parts = [[i for i in layers if tier[i] == t] for t in range(k)]
    produced_in = {o: tier[i] for i in layers for o in g.node[i].output if o}
    raw = {vi.name for vi in g.input} - {t.name for t in g.initializer}
    backwards = [name for i in layers for name in roles.deps[i]
                 if produced_in.get(name, -1) > tier[i]]
    if backwards:
        raise ModelError(f"tensor {backwards[0]!r} would flow back along the chain")
    inputs = [list(dict.fromkeys(name for i in parts[t] for name in roles.deps[i]
                                 if name in raw or produced_in.get(name, t) < t))
              for t in range(k)]
    holding = [t for t in range(k) if parts[t]] or [0]
    outputs = [o.name for o in g.output]
    # an output no layer makes: a raw input passed through stays where the raw data is (the
    # first tier holding layers: the device), a constant comes from the last tier
    made = [[o for o in outputs if produced_in.get(o, holding[0] if o in raw else holding[-1])
             == t] for t in range(k)]
    declared = _declarations(model)
    sent: list[list[str]] = [[] for _ in range(k)]
    sources: dict[str, int] = {}
    for t in holding:
        borrowed = _closure(model, roles, parts[t], inputs[t], made[t], declared.dynamic).borrowed
        inputs[t] += borrowed
        for name in inputs[t]:
            if name in raw:
                sources[name] = 0
                continue
            source = produced_in[name] if name in produced_in else \
                _shape_source(g, name, produced_in)
            sources[name] = source
            if source < t:
                sent[source].append(name)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        what = "halves" if k == 2 else "tier files"
        raise ToolkitError(f"cannot write the {what} into {out}: {exc.strerror or exc}") from exc
    models = {t: _half(model, roles, parts[t], inputs[t],
                       list(dict.fromkeys(sent[t] + made[t])), declared) for t in holding}
    paths: list[Path | None] = [
        save_model(models[t], out / f"{files[t]}.onnx") if t in models and parts[t] else None
        for t in range(k)]
    result = TierSplit(paths, inputs, None, None, None, sources, made)
    if check:
        try:
            abs_err, rel_err = verify(model, [models[t] for t in holding], dims or {})
        except ToolkitError as exc:  # the files stand; say why they could not be checked
            return replace(result, not_verified=str(exc))
        result = replace(result, max_abs_error=abs_err, max_rel_error=rel_err)
    return result


def _shape_source(g: onnx.GraphProto, name: str, produced_in: Mapping[str, int]) -> int:
    """The tier where a borrowed Shape/Size is computed: where the tensor it reads is made
    (tier 0 for a raw input)."""
    node = next(n for n in g.node if name in n.output)
    return produced_in.get(node.input[0], 0)


@dataclass(frozen=True)
class _Closure:
    """The nodes a half runs beyond its layers, and what it must receive to run them."""

    wanted: set[int]  # layer nodes plus the constant nodes they need
    live: set[int]  # Shape/Size nodes kept as nodes: their input lives in this half
    initializers: set[str]
    borrowed: list[str]  # shapes of tensors this half lacks and that are not static


def _closure(
    model: ModelProto, roles: NodeRoles, layers: list[int], inputs: list[str],
    outputs: list[str], dynamic: bool,
) -> _Closure:
    g = model.graph
    producer = {o: i for i, node in enumerate(g.node) for o in node.output if o}
    initializers = {t.name for t in g.initializer}
    available = set(inputs) | {o for i in layers for o in g.node[i].output if o}
    wanted = set(layers)
    live: set[int] = set()
    borrowed: list[str] = []
    stack = [name for i in layers for name in roles.deps[i]]
    stack += [o for o in outputs if o not in available]
    used_inits: set[str] = set()
    while stack:
        name = stack.pop()
        if name in initializers:
            used_inits.add(name)
            continue
        i = producer.get(name)
        if i is None or i in wanted or i not in roles.constant or name in borrowed \
                or name in available:
            continue
        node = g.node[i]
        if node.op_type in ("Shape", "Size") and node.input[0] not in available \
                and (dynamic or node.input[0] not in roles.shapes):
            if producer.get(node.input[0]) not in roles.constant:
                borrowed.append(name)  # a dynamic shape only the other half can read
                continue
            # the shape of shape arithmetic (ViT's class token expanded to the batch, by
            # Hugging Face's optimum): this half redoes the arithmetic, whose own shapes it
            # reads or borrows in turn
            wanted.add(i)
            live.add(i)
            stack.append(node.input[0])
            continue
        wanted.add(i)
        if node.op_type in ("Shape", "Size") and node.input[0] in available:
            live.add(i)
        elif node.op_type not in ("Shape", "Size", "CastLike"):
            stack.extend(roles.deps[i])
        elif node.op_type == "CastLike":
            stack.append(node.input[0])
    return _Closure(wanted, live, used_inits, borrowed)


def _half(
    model: ModelProto, roles: NodeRoles, layers: list[int], inputs: list[str],
    outputs: list[str], declared: _Declared,
) -> ModelProto:
    """One half: its layer nodes, the constants they need, and the initializers behind them."""
    g = model.graph
    initializers = {t.name: t for t in g.initializer}
    closure = _closure(model, roles, layers, inputs, outputs, declared.dynamic)
    nodes = [g.node[i] if i in closure.live else _materialise(g.node[i], roles)
             for i in roles.order if i in closure.wanted]
    graph = helper.make_graph(
        nodes, g.name or "half",
        [declared.value_info(n, roles) for n in [*inputs, *closure.borrowed]],
        [declared.value_info(n, roles) for n in outputs],
        [initializers[n] for n in sorted(closure.initializers)],
    )
    half = helper.make_model(graph, opset_imports=list(model.opset_import))
    half.ir_version = model.ir_version
    half.functions.extend(model.functions)
    return half


def _materialise(node: NodeProto, roles: NodeRoles) -> NodeProto:
    """Shape/Size of a static tensor -> Constant; CastLike -> Cast to the target's type."""
    if node.op_type == "CastLike":
        return helper.make_node("Cast", [node.input[0]], list(node.output), name=node.name,
                                to=roles.elem_types.get(node.input[1], TensorProto.FLOAT))
    if node.op_type not in ("Shape", "Size") or node.input[0] not in roles.shapes:
        return node  # (a Shape of a tensor nobody could size is a layer: it runs)
    shape = roles.shapes[node.input[0]]
    if node.op_type == "Size":
        value = np.array(int(np.prod(shape)), dtype=np.int64)
    else:
        attrs = {a.name: a.i for a in node.attribute}
        value = np.array(shape[attrs.get("start", 0): attrs.get("end", len(shape))],
                         dtype=np.int64)
    return helper.make_node("Constant", [], list(node.output), name=node.name,
                            value=onnx.numpy_helper.from_array(value))


@dataclass(frozen=True)
class _Declared:
    """What the file declares: its inputs' and outputs' value infos, and whether any raw
    input has a symbolic dimension (then crossing tensors are declared by type alone)."""

    infos: dict[str, onnx.ValueInfoProto]
    dynamic: bool

    def value_info(self, name: str, roles: NodeRoles) -> onnx.ValueInfoProto:
        if name in self.infos:
            return self.infos[name]
        shape = None if self.dynamic else roles.shapes.get(name)
        return helper.make_tensor_value_info(
            name, roles.elem_types.get(name, TensorProto.FLOAT), shape)


def _declarations(model: ModelProto) -> _Declared:
    g = model.graph
    initializers = {t.name for t in g.initializer}
    raw = [vi for vi in g.input if vi.name not in initializers]
    dynamic = any(not d.HasField("dim_value") for vi in raw
                  for d in vi.type.tensor_type.shape.dim)
    return _Declared({vi.name: vi for vi in [*raw, *g.output]}, dynamic)


def save_model(model: ModelProto, path: Path) -> Path:
    """Write through a temporary file in the same folder and `os.replace` it into place: an
    existing file or a planted symbolic link at `path` is replaced, never written through."""
    external = model.ByteSize() > _SIZE_LIMIT
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".splitcut-") as tmp:
            staged = Path(tmp) / path.name
            onnx.save(model, str(staged), save_as_external_data=external,
                      location=path.name + ".data" if external else None)
            if external:
                os.replace(staged.with_name(path.name + ".data"),
                           path.with_name(path.name + ".data"))
            os.replace(staged, path)
    except OSError as exc:
        raise ToolkitError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


_NUMPY_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


def verify(
    full: ModelProto, parts: Sequence[ModelProto], dims: Mapping[str, int] | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Run the whole model, and the parts one after the other, on the same random inputs:
    the largest absolute and relative difference of the model's outputs.

    Each input gets values of its declared type (floats normal, integers 1 or 2, so ids index
    and divisors are not zero); a symbolic batch dimension is tried at two sizes (1 and 3),
    other symbolic dimensions take their `dims` value (else 1)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # failures are reported here, not printed by onnxruntime

    def session(m: ModelProto) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        return ort.InferenceSession(m.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])

    try:
        whole = session(full)
        runs = [session(m) for m in parts if m.graph.node]
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:300]
        raise ToolkitError(f"onnxruntime cannot run this model to check the parts: "
                           f"{reason}") from exc
    symbolic_batch = any(inp.shape and not isinstance(inp.shape[0], int)
                         for inp in whole.get_inputs())
    worst_abs = worst_rel = 0.0
    for k, batch in enumerate((1, 3) if symbolic_batch else (1,)):
        feeds = random_feeds(whole, batch, dims or {}, np.random.default_rng(seed + k))
        try:
            a, r = _compare(whole, runs, feeds)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0][:300]
            raise ToolkitError(f"the parts do not run at batch {batch}: {reason}") from exc
        worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, r)
    return worst_abs, worst_rel


def _or_one(value: int | None) -> int:
    """A dimension `dims` does not give is 1 (one given 0, an empty cache, stays 0)."""
    return 1 if value is None else value


def random_feeds(session: Any, batch: int, dims: Mapping[str, int],
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs for an onnxruntime `session`: each of its declared type, a symbolic batch at
    `batch` (or one written 0 or -1: `open_dim`), other symbolic dimensions at their `dims`
    value (by `INPUT.AXIS` or name; else 1); floats normal, integers 1 or 2 (ids index,
    divisors are not zero)."""
    feeds: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch if axis == 0
                 else _or_one(dim_given(dims, inp.name, axis, d if isinstance(d, str) else ""))
                 for axis, d in enumerate(inp.shape)]
        dtype = _NUMPY_TYPES.get(inp.type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[inp.name] = rng.random(shape) < 0.5
        else:
            feeds[inp.name] = rng.integers(1, 3, size=shape).astype(dtype)
    return feeds


def _compare(whole: Any, runs: Sequence[Any], feeds: dict[str, np.ndarray]
             ) -> tuple[float, float]:
    expected = dict(zip([o.name for o in whole.get_outputs()], whole.run(None, feeds), strict=True))
    got: dict[str, Any] = dict(feeds)
    for run in runs:  # in chain order: each reads raw inputs and what earlier parts returned
        part_feeds = {i.name: got[i.name] for i in run.get_inputs()}
        got.update(zip([o.name for o in run.get_outputs()], run.run(None, part_feeds),
                       strict=True))
    worst_abs = worst_rel = 0.0
    for key, want in expected.items():
        if not np.size(want):
            continue
        try:
            want64 = np.asarray(want, dtype=np.float64)
            got64 = np.asarray(got[key], dtype=np.float64)
        except (TypeError, ValueError):  # strings, or a sequence of maps (ZipMap): equal or not
            if not np.array_equal(np.asarray(got[key], dtype=object),
                                  np.asarray(want, dtype=object)):
                raise ToolkitError(f"output {key!r} of the parts differs from the whole "
                                   "model's") from None
            continue
        same = (got64 == want64) | (np.isnan(got64) & np.isnan(want64))  # inf, nan alike
        with np.errstate(invalid="ignore"):
            diff = float(np.max(np.where(same, 0.0, np.abs(got64 - want64))))
        if not math.isfinite(diff):
            raise ToolkitError(f"output {key!r} of the halves is not finite where the whole "
                               "model's is, or the other way round")
        finite = np.abs(want64[np.isfinite(want64)])
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(float(finite.max()) if finite.size else 0.0,
                                              1e-30))
    return worst_abs, worst_rel
