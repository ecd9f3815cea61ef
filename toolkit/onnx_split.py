"""Write a partition as two runnable ONNX models and check that together they equal the whole.

`device.onnx` reads the raw inputs and returns the crossing tensors (plus any model output made
on the device); `server.onnx` reads the crossing tensors, under their own names, and returns
the rest of the outputs. Only halves that hold layers are written: when every layer runs on the
device there is no server half. Folded constants go to whichever half needs them, both if both do;
constants computed from an activation's static shape (Shape, Size, CastLike) are written out
as plain constants so neither half depends on the other's activations.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper

from toolkit.errors import ModelError, ToolkitError
from toolkit.onnx_reader import NodeRoles, load_model, node_roles

_SIZE_LIMIT = 1_800_000_000  # protobuf's 2 GiB cap, with room to spare


@dataclass(frozen=True)
class SplitResult:
    device_path: Path
    server_path: Path | None  # None: every layer runs on the device, no server half
    cut_tensors: list[str]
    max_abs_error: float | None
    max_rel_error: float | None  # relative to the largest magnitude of that output


def split_model(
    path: str | Path, device_layers: Collection[str], out_dir: str | Path, check: bool = True
) -> SplitResult:
    """Write device.onnx and server.onnx for `device_layers`; optionally verify them."""
    src = Path(path)
    model = load_model(src)
    onnx.load_external_data_for_model(model, str(src.parent))
    roles = node_roles(model, src.parent)
    known = set(roles.names)
    missing = [n for n in device_layers if n not in known]
    if missing:
        raise ModelError(f"no layer named {missing[0]!r} in {src.name}")
    on_device = {i for i, n in enumerate(roles.names) if n in set(device_layers)}
    layers = [i for i in roles.order if i not in roles.constant]
    device = [i for i in layers if i in on_device]
    server = [i for i in layers if i not in on_device]
    produced_on_device = {o for i in device for o in model.graph.node[i].output if o}
    raw_inputs = [
        vi.name for vi in model.graph.input
        if vi.name not in {t.name for t in model.graph.initializer}
    ]
    cut = list(dict.fromkeys(
        name for i in server for name in roles.deps[i] if name in produced_on_device
    ))
    outputs = [o.name for o in model.graph.output]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device_model = _half(model, roles, device, raw_inputs,
                         cut + [o for o in outputs if o in produced_on_device and o not in cut])
    server_model = _half(model, roles, server, cut,
                         [o for o in outputs if o not in produced_on_device])
    result = SplitResult(
        _save(device_model, out / "device.onnx"),
        _save(server_model, out / "server.onnx") if server else None, cut, None, None,
    )
    if check:
        abs_err, rel_err = verify(model, device_model, server_model)
        result = SplitResult(result.device_path, result.server_path, cut, abs_err, rel_err)
    return result


def _half(
    model: ModelProto, roles: NodeRoles, layers: list[int], inputs: list[str], outputs: list[str]
) -> ModelProto:
    """One half: its layer nodes, the constants they need, and the initializers behind them."""
    g = model.graph
    producer = {o: i for i, node in enumerate(g.node) for o in node.output if o}
    initializers = {t.name: t for t in g.initializer}
    wanted = set(layers)
    stack = [name for i in layers for name in roles.deps[i]]
    used_inits: set[str] = set()
    while stack:
        name = stack.pop()
        if name in initializers:
            used_inits.add(name)
            continue
        i = producer.get(name)
        if i is None or i in wanted or i not in roles.constant:
            continue
        wanted.add(i)
        if g.node[i].op_type not in ("Shape", "Size", "CastLike"):
            stack.extend(roles.deps[i])
        elif g.node[i].op_type == "CastLike":
            stack.append(g.node[i].input[0])
    nodes = [_materialise(g.node[i], roles) for i in roles.order if i in wanted]
    graph = helper.make_graph(
        nodes, g.name or "half",
        [_value_info(n, roles) for n in inputs],
        [_value_info(n, roles) for n in outputs],
        [initializers[n] for n in sorted(used_inits)],
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
    if node.op_type not in ("Shape", "Size"):
        return node
    shape = roles.shapes[node.input[0]]
    if node.op_type == "Size":
        value = np.array(int(np.prod(shape)), dtype=np.int64)
    else:
        attrs = {a.name: a.i for a in node.attribute}
        value = np.array(shape[attrs.get("start", 0): attrs.get("end", len(shape))],
                         dtype=np.int64)
    return helper.make_node("Constant", [], list(node.output), name=node.name,
                            value=onnx.numpy_helper.from_array(value))


def _value_info(name: str, roles: NodeRoles) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        name, roles.elem_types.get(name, TensorProto.FLOAT), roles.shapes.get(name)
    )


def _save(model: ModelProto, path: Path) -> Path:
    external = model.ByteSize() > _SIZE_LIMIT
    onnx.save(model, str(path), save_as_external_data=external,
              location=path.name + ".data" if external else None)
    return path


def verify(
    full: ModelProto, device: ModelProto, server: ModelProto, seed: int = 0
) -> tuple[float, float]:
    """Run whole and halves on the same random inputs: largest absolute and relative difference."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)

    def session(m: ModelProto) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(m.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])

    try:
        whole, dev = session(full), session(device)
        srv = session(server) if server.graph.node else None
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:300]
        raise ToolkitError(f"onnxruntime cannot run this model to check halves: {reason}") from exc
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in whole.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        if "float" in inp.type:
            dtype = np.float16 if "float16" in inp.type else np.float32
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[inp.name] = np.zeros(shape, dtype=np.int64 if "int64" in inp.type else np.int32)
    expected = dict(zip([o.name for o in whole.get_outputs()], whole.run(None, feeds), strict=True))
    dev_feeds = {i.name: feeds[i.name] for i in dev.get_inputs()}
    got = dict(zip([o.name for o in dev.get_outputs()], dev.run(None, dev_feeds), strict=True))
    if srv is not None:  # an empty server half: the optimum trains on the device alone
        srv_feeds = {i.name: got[i.name] for i in srv.get_inputs()}
        got.update(zip([o.name for o in srv.get_outputs()], srv.run(None, srv_feeds), strict=True))
    worst_abs = worst_rel = 0.0
    for key, want in expected.items():
        if not np.size(want):
            continue
        want64 = np.asarray(want, dtype=np.float64)
        diff = float(np.max(np.abs(np.asarray(got[key], dtype=np.float64) - want64)))
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(float(np.max(np.abs(want64))), 1e-30))
    return worst_abs, worst_rel
