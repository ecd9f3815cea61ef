"""Any ONNX graph as a trainable PyTorch module.

Chosen over converters on evidence (issue 15): onnx2torch 1.5.15 failed on every zoo model
(opset 18-20 ops, TorchScript's `Identity`-aliased weights). Here every node runs its torch
function from `toolkit.train.ops`, trainable float initializers are `nn.Parameter`s, and
autograd does the backward, so the device and server halves written by `splitcut split` train
as they are.
"""

from __future__ import annotations

import time
from collections import ChainMap
from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, helper

from toolkit.errors import ModelError
from toolkit.onnx import NOT_TRAINABLE_INPUTS, buffer_names, dft_axis, qualified_op
from toolkit.onnx.load import FLOAT_TYPES, attr_graphs, standard_form
from toolkit.train.ops import known, run_op, to_tensor

_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def trainable_initializers(graph: GraphProto) -> set[str]:
    """The float initializers a training step updates, by the reader's rules: not a buffer
    or lifted constant of torch.export, and read somewhere other than a non-trainable input
    (BatchNormalization's running statistics, quantization scales)."""
    floats = {t.name for t in graph.initializer if t.data_type in FLOAT_TYPES}
    return (floats & _read_trainably(graph)) - buffer_names(graph)


def _read_trainably(graph: GraphProto) -> set[str]:
    """Names some node reads at an input that trains (not running statistics, scales, nor a
    cast to integers), in the graph or in a control-flow body inside it (a body reads the
    enclosing graph's weights by name)."""
    return {
        name for node in _all_nodes(graph) if not _casts_to_integers(node)
        for k, name in enumerate(node.input)
        if k not in NOT_TRAINABLE_INPUTS.get(qualified_op(node.op_type, node.domain),
                                             frozenset())
    }


def _casts_to_integers(node: NodeProto) -> bool:
    """A Cast to a type that is not a float: no gradient passes it (onnxruntime's optimizer
    makes a float Constant an initializer and leaves its Cast to int64 before a Range)."""
    return node.op_type == "Cast" and node.domain in ("", "ai.onnx") and any(
        a.name == "to" and a.i not in FLOAT_TYPES for a in node.attribute)


def _all_nodes(graph: GraphProto) -> Iterator[NodeProto]:
    """The graph's nodes and those of every body nested in them."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in attr_graphs(attr):
                yield from _all_nodes(sub)


Node = tuple[str, dict[str, Any], list[str], list[str]]
_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


@dataclass(frozen=True)
class _Body:
    """A control-flow node's subgraph, run in the scope of the graph around it."""

    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    constants: dict[str, torch.Tensor]


def _node(node: NodeProto, opset: int) -> Node:
    attrs = {a.name: _attribute(a, opset) for a in node.attribute}
    if node.op_type == "DFT" and "axis" not in attrs:  # (the op reads an axis input first)
        attrs["axis"] = dft_axis(opset)
    return qualified_op(node.op_type, node.domain), attrs, list(node.input), list(node.output)


def _attribute(attr: AttributeProto, opset: int) -> Any:
    if attr.type == AttributeProto.GRAPH:
        g = attr.g
        try:
            constants = {t.name: to_tensor(t) for t in g.initializer}
        except NotImplementedError as exc:
            raise ModelError(f"cannot train on a constant of body {attr.name!r}: {exc}") from exc
        return _Body([_node(n, opset) for n in g.node], [i.name for i in g.input],
                     [o.name for o in g.output], constants)
    if attr.type == AttributeProto.GRAPHS:
        raise ModelError(f"op with a list of subgraphs {attr.name!r} cannot be trained here")
    value = helper.get_attribute_value(attr)
    if attr.type == AttributeProto.TENSOR:
        return to_tensor(value)
    if isinstance(value, bytes):
        return value.decode()
    return value


def _run_nodes(nodes: Sequence[Node], env: MutableMapping[str, Any],
              timer: Callable[[int, float, list[Any]], None] | None = None) -> None:
    """Run `nodes` in order, each reading its inputs from `env` and writing its outputs there;
    `timer(k, ms, outputs)` is told each node's time."""
    for k, (op_type, attrs, inputs, outputs) in enumerate(nodes):
        args = [env[name] if name else None for name in inputs]
        start = time.perf_counter()
        try:
            try:
                results = _run_node(op_type, attrs, args, len(outputs), env)
            except RuntimeError:
                together = _on_one_device(args)
                if together is None:
                    raise
                results = _run_node(op_type, attrs, together, len(outputs), env)
        except (NotImplementedError, RuntimeError, IndexError, ValueError,
                TypeError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelError(f"cannot run a {op_type} node in torch: {reason}") from exc
        wanted = [k for k, name in enumerate(outputs) if name]
        if wanted and wanted[-1] >= len(results):
            raise ModelError(f"cannot run a {op_type} node in torch: its output "
                             f"{wanted[-1] + 1} ({outputs[wanted[-1]]!r}) is not computed")
        for name, value in zip(outputs, results, strict=False):
            if name:
                env[name] = value
        if timer is not None:
            synchronize(results)
            timer(k, (time.perf_counter() - start) * 1e3, list(results))


def _run_node(op_type: str, attrs: dict[str, Any], args: list[Any], outputs: int,
              env: MutableMapping[str, Any]) -> tuple[Any, ...]:
    if op_type in _CONTROL_FLOW:
        return _control_flow(op_type, attrs, args, env)
    return run_op(op_type, attrs, args, outputs)


def _on_one_device(args: list[Any]) -> list[Any] | None:
    """`args` with the CPU tensors among them moved to the accelerator another one is on, or
    None when they do not mix devices. A module placed on a GPU computes its shapes on the
    CPU (`Shape` makes a CPU tensor, as PyTorch's sizes live on the host); where such a tensor
    meets the GPU's, in an op that does not read it as numbers, it moves there."""
    tensors = [x for x in args if isinstance(x, torch.Tensor)]
    device = next((x.device for x in tensors if x.device.type != "cpu"), None)
    if device is None or all(x.device == device for x in tensors):
        return None
    return [x.to(device) if isinstance(x, torch.Tensor) else x for x in args]


def synchronize(values: Sequence[Any]) -> None:
    """Wait for the GPU work making `values`, where any is on a GPU: a timer reading the host's
    clock then reads when the work is done, not when it was queued."""
    if any(isinstance(x, torch.Tensor) and x.is_cuda for x in values):
        torch.cuda.synchronize()


def _run_body(body: _Body, env: MutableMapping[str, Any], bound: Sequence[Any]) -> list[Any]:
    """One run of `body` with its inputs bound to `bound`, reading the rest from `env`."""
    scope: ChainMap[str, Any] = ChainMap(dict(zip(body.inputs, bound, strict=False)),
                                         body.constants, env)
    _run_nodes(body.nodes, scope)
    return [scope[name] for name in body.outputs]


def _control_flow(op_type: str, attrs: dict[str, Any], args: list[Any],
                  env: MutableMapping[str, Any]) -> tuple[Any, ...]:
    """If, Loop and Scan as the ONNX specification runs them (Scan from opset 9: axes and
    directions as attributes), autograd through every run of a body."""
    if op_type == "If":
        return tuple(_run_body(attrs["then_branch" if bool(args[0]) else "else_branch"],
                               env, []))
    if op_type == "Loop":
        return _loop(attrs["body"], args, env)
    return _scan(attrs, args, env)


def _loop(body: _Body, args: list[Any], env: MutableMapping[str, Any]) -> tuple[Any, ...]:
    trips = int(args[0]) if args and args[0] is not None else None
    cond = bool(args[1]) if len(args) > 1 and args[1] is not None else True
    if trips is None and (len(args) < 2 or args[1] is None):
        raise ValueError("a Loop with neither a trip count nor a condition never ends")
    carried = list(args[2:])
    stacked: list[list[Any]] = []
    i = 0
    while cond and (trips is None or i < trips):
        out = _run_body(body, env, [torch.tensor(i, dtype=torch.int64), torch.tensor(cond),
                                    *carried])
        cond, carried = bool(out[0]), out[1:1 + len(carried)]
        per_step = out[1 + len(carried):]
        stacked = stacked or [[] for _ in per_step]
        for pile, value in zip(stacked, per_step, strict=True):
            pile.append(value)
        i += 1
    if len(body.outputs) > 1 + len(carried) and not stacked:
        raise ValueError("a Loop that ran no iteration has no scan outputs to stack")
    return (*carried, *(torch.stack(pile) for pile in stacked))


def _scan(attrs: dict[str, Any], args: list[Any], env: MutableMapping[str, Any]
          ) -> tuple[Any, ...]:
    body: _Body = attrs["body"]
    if len(body.inputs) != len(args):  # Scan-8 reads sequence lengths first, batch-major
        raise NotImplementedError("Scan before opset 9")
    count = int(attrs["num_scan_inputs"])
    states, xs = list(args[:len(args) - count]), args[len(args) - count:]
    in_axes = list(attrs.get("scan_input_axes") or [0] * count)
    in_back = list(attrs.get("scan_input_directions") or [0] * count)
    outs = len(body.outputs) - len(states)
    out_axes = list(attrs.get("scan_output_axes") or [0] * outs)
    out_back = list(attrs.get("scan_output_directions") or [0] * outs)
    length = xs[0].shape[in_axes[0]]
    piles: list[list[Any]] = [[] for _ in range(outs)]
    for t in range(length):
        slices = [x.select(axis, length - 1 - t if back else t)
                  for x, axis, back in zip(xs, in_axes, in_back, strict=True)]
        out = _run_body(body, env, [*states, *slices])
        states = out[:len(states)]
        for pile, value in zip(piles, out[len(states):], strict=True):
            pile.append(value)
    stacked = [torch.stack(pile[::-1] if back else pile, dim=axis % (pile[0].dim() + 1))
               for pile, axis, back in zip(piles, out_axes, out_back, strict=True)]
    return (*states, *stacked)


def _moved(node: Node, fn: Callable[[torch.Tensor], torch.Tensor]) -> Node:
    """`node` with `fn` applied to what it makes from its attributes: a `Constant`'s value, a
    body's constants and nodes (other ops read their tensor attributes as numbers, such as
    `ConstantOfShape`'s fill value)."""
    op_type, attrs, inputs, outputs = node

    def moved(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and op_type == "Constant":
            return _host_or(fn, value)
        if isinstance(value, _Body):
            return _Body([_moved(n, fn) for n in value.nodes], value.inputs, value.outputs,
                         {name: _host_or(fn, t) for name, t in value.constants.items()})
        return value

    return op_type, {name: moved(value) for name, value in attrs.items()}, inputs, outputs


_SHAPE_LIKE = 64  # integer constants of at most this many elements stay on the host


def _host_or(fn: Callable[[torch.Tensor], torch.Tensor], value: torch.Tensor) -> torch.Tensor:
    """`fn(value)`, unless `value` is a short integer vector that ops read as numbers."""
    shape_like = not (value.is_floating_point() or value.is_complex()) \
        and value.numel() <= _SHAPE_LIKE
    return value if shape_like else fn(value)


def _unknown_ops(graph: GraphProto) -> set[str]:
    """Operators in the graph (bodies included) with no torch function here."""
    ops = {qualified_op(n.op_type, n.domain) for n in _all_nodes(graph)}
    return {op for op in ops if not (known(op) or op in _CONTROL_FLOW)}


class OnnxModule(torch.nn.Module):  # type: ignore[misc]  # torch is untyped here
    """An ONNX graph run node by node in torch.

    `trainable` names the initializers that become parameters (compute it on the whole model
    with `trainable_initializers`: a half written by `splitcut split` no longer carries the
    exporter's buffer markers). An `Identity` of a trainable initializer is how TorchScript
    aliases distinct parameters that hold equal values: its output is a parameter of its own,
    as in PyTorch.
    """

    def __init__(self, model: ModelProto, trainable: Collection[str]) -> None:
        super().__init__()
        graph = standard_form(model).graph  # functions run as their bodies; sparse weights dense
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                    default=0)
        unknown = sorted(_unknown_ops(graph))
        if unknown:
            raise ModelError("cannot train this model: no torch function for op "
                             f"{', '.join(unknown)}")  # (the graph's name is often 'tf2onnx')
        self.weight_names: list[str] = []
        self.weights = torch.nn.ParameterList()
        self.constants: dict[str, torch.Tensor] = {}
        wanted = set(trainable)
        for t in graph.initializer:
            try:
                value = to_tensor(t)
            except NotImplementedError as exc:
                raise ModelError(f"cannot train on initializer {t.name!r}: {exc}") from exc
            if t.name in wanted and value.dtype in _FLOAT:
                self._parameter(t.name, value)
            else:
                self.constants[t.name] = value
        self.nodes: list[Node] = []
        params = set(self.weight_names)
        read = _read_trainably(graph)
        for node in graph.node:
            if node.op_type == "Identity" and node.input[0] in params:
                value = self.weights[self.weight_names.index(node.input[0])].detach().clone()
                if node.output[0] in read:
                    self._parameter(node.output[0], value)
                    params.add(node.output[0])
                else:
                    self.constants[node.output[0]] = value
                continue
            self.nodes.append(_node(node, opset))
        initializers = set(self.weight_names) | set(self.constants)
        self.input_names = [i.name for i in graph.input if i.name not in initializers]
        self.output_names = [o.name for o in graph.output]

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
               ) -> OnnxModule:
        """`module.to(device)` and its kin move the constants too: the initializers that do
        not train and the values of `Constant` nodes, in bodies as well. Short integer
        vectors (shapes, axes, indices) stay on the host, where ops read them as numbers
        (from a GPU, each such read would wait for the GPU)."""
        super()._apply(fn, recurse)
        self.constants = {name: _host_or(fn, value) for name, value in self.constants.items()}
        self.nodes = [_moved(node, fn) for node in self.nodes]
        return self

    def _parameter(self, name: str, value: torch.Tensor) -> None:
        self.weight_names.append(name)
        self.weights.append(torch.nn.Parameter(value))

    def named_weights(self) -> dict[str, torch.nn.Parameter]:
        """Parameters by their ONNX initializer name."""
        return dict(zip(self.weight_names, self.weights, strict=True))

    def forward(self, feeds: Mapping[str, torch.Tensor],
                timer: Callable[[int, float, list[Any]], None] | None = None,
                ) -> dict[str, torch.Tensor]:
        """The graph's outputs; `timer(node, ms, outputs)` is told each node's forward time
        (nodes counted in the order they run)."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ModelError(f"no value for input {missing[0]!r}")
        env: dict[str, Any] = {**self.constants, **self.named_weights(), **feeds}
        _run_nodes(self.nodes, env, timer)
        return {name: env[name] for name in self.output_names}
