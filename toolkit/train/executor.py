"""Any ONNX graph as a trainable PyTorch module.

Chosen over converters on evidence (issue 15): onnx2torch 1.5.15 failed on every zoo model
(opset 18-20 ops, TorchScript's `Identity`-aliased weights). Here every node runs its torch
function from `toolkit.train.ops`, trainable float initializers are `nn.Parameter`s, and
autograd does the backward, so the device and server halves written by `splitcut split` train
as they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from onnx import AttributeProto, GraphProto, ModelProto, helper

from toolkit.errors import ModelError
from toolkit.onnx import NOT_TRAINABLE_INPUTS, buffer_names
from toolkit.onnx.load import standard_form
from toolkit.train.ops import known, run_op, to_tensor

_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def trainable_initializers(graph: GraphProto) -> set[str]:
    """The float initializers a training step updates, by the reader's rules: not a buffer
    or lifted constant of torch.export, and read somewhere other than a non-trainable input
    (BatchNormalization's running statistics, quantization scales)."""
    floats = {t.name for t in graph.initializer
              if helper.tensor_dtype_to_np_dtype(t.data_type).kind == "f"}
    return (floats & _read_trainably(graph)) - buffer_names(graph)


def _read_trainably(graph: GraphProto) -> set[str]:
    """Names some node reads at an input that trains (not running statistics, scales)."""
    return {
        name for node in graph.node for k, name in enumerate(node.input)
        if k not in NOT_TRAINABLE_INPUTS.get(node.op_type, frozenset())
    }


def _attribute(attr: AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if attr.type == AttributeProto.TENSOR:
        return to_tensor(value)
    if isinstance(value, bytes):
        return value.decode()
    if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        raise ModelError(f"op with a subgraph attribute {attr.name!r} cannot be trained here")
    return value


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
        unknown = sorted({
            n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            for n in graph.node
            if n.domain not in ("", "ai.onnx") or not known(n.op_type)
        })
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
        self.nodes: list[tuple[str, dict[str, Any], list[str], list[str]]] = []
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
            attrs = {a.name: _attribute(a) for a in node.attribute}
            self.nodes.append((node.op_type, attrs, list(node.input), list(node.output)))
        initializers = set(self.weight_names) | set(self.constants)
        self.input_names = [i.name for i in graph.input if i.name not in initializers]
        self.output_names = [o.name for o in graph.output]

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
        for k, (op_type, attrs, inputs, outputs) in enumerate(self.nodes):
            args = [env[name] if name else None for name in inputs]
            start = time.perf_counter()
            try:
                results = run_op(op_type, attrs, args, len(outputs))
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
                timer(k, (time.perf_counter() - start) * 1e3, list(results))
        return {name: env[name] for name in self.output_names}
