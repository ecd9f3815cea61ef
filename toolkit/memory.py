"""Training memory: what each layer keeps, and a tier's peak while it trains.

For the tier that trains the layers S (in topological order), at batch b, in steady training
(docs/memory.md has the measurements):

- **state**, resident all along: each layer's weights and its optimizer's buffers, params x 4
  bytes x (1 + s) (SGD s = 0, momentum 1, Adam 2: torch.optim's `momentum_buffer`, or
  `exp_avg` and `exp_avg_sq`);
- **saved activations**: autograd keeps, from the forward pass to the backward, the tensors
  each op's backward needs: a convolution, matmul or normalisation its input, ReLU, sigmoid,
  tanh, softmax or exp its output, a product of two activations both factors, max pooling
  its input and the argmax indices (int64), an addition or an op that moves or views data
  nothing; an activation an exporter decomposed (GELU into Erf and products, SiLU into a
  sigmoid and a product) what PyTorch's fused op keeps, its input (`fused_activations`).
  A tensor kept by several ops (ReLU's output is the next convolution's input) is
  kept once: b x its bytes at the training precision. It is freed when the backward reaches
  the first op that keeps it;
- **gradients** of the weights, params x 4 bytes, made as the backward reaches each layer
  (`zero_grad(set_to_none=True)` frees them after each step);
- **workspace**: while layer v's backward runs, the gradients of its output and its inputs,
  b x (its input and output bytes).

The backward runs from the last layer to the first: when it reaches v, the activations kept
for v and everything before it are alive, and the gradients of v and everything after it:

    peak(S) = sum over S of state + max over positions v of
              (saved bytes of tensors whose first keeper is at or before v
               + gradients of the layers of S at or after v + workspace of v if v in S)

counting a tensor when any of its keepers is in S (from its first keeper in the whole
model: where that keeper is on another tier, the tensor is counted a little longer than it
lives, never shorter). The forward pass's end (everything saved, no gradient yet) and the
optimizer step (every gradient, nothing saved) are its two extremes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.graph import Layer, LayerGraph
from toolkit.ops import DATA_MOVEMENT

WORD = 4  # bytes of an fp32 weight, gradient or optimizer state element
KEEPS_OUTPUT = frozenset({"Relu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Exp", "Sqrt",
                          "Reciprocal", "HardSigmoid"})
KEEPS_NOTHING = DATA_MOVEMENT | frozenset({
    "Add", "Sub", "Neg", "Sum", "Identity", "ReduceSum", "ReduceMean", "GlobalAveragePool",
    "Dropout", "Equal", "Less", "Greater", "Not", "And", "Or", "Where"})
SCALING = frozenset({"Mul", "Div"})  # by a constant: nothing kept; of two activations: both
_INDEX_BYTES = 8  # MaxPool's argmax, int64 per output element


@dataclass(frozen=True)
class SavedTensor:
    """An activation autograd keeps for the backward: its bytes per batch and its keepers."""

    nbytes: float
    keepers: tuple[int, ...]  # layer indices, ascending


@dataclass(frozen=True)
class ModelMemory:
    """Every layer's state, gradient and workspace bytes, and the tensors kept for backward."""

    state: list[float]
    grads: list[float]
    workspace: list[float]
    saved: list[SavedTensor]


def kept_by(layer: Layer) -> tuple[str, ...]:
    """The activation tensors `layer`'s backward needs (module docstring)."""
    if layer.op in KEEPS_NOTHING or (layer.op in SCALING and len(layer.inputs) < 2):
        return ()
    if layer.op in KEEPS_OUTPUT:
        return layer.outputs
    return layer.inputs


def fused_activations(layers: Sequence[Layer]) -> dict[int, tuple[str, ...]]:
    """What the ops of an exporter's decomposed activation keep when PyTorch trains the fused
    op it came from, which keeps only its input x: SiLU exported as Sigmoid(x) and
    Mul(x, Sigmoid(x)); GELU as Div(x, sqrt 2) -> Erf -> Add 1 -> Mul(x, .). Layer index ->
    the tensors it keeps, for the layers of each such pattern."""
    producer = {t: i for i, layer in enumerate(layers) for t in layer.outputs}
    readers: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        for t in layer.inputs:
            readers.setdefault(t, []).append(i)

    def product_with(t: str, x: str) -> int | None:
        """A reader of t that multiplies it by x (and nothing else)."""
        return next((j for j in readers.get(t, []) if layers[j].op == "Mul"
                     and set(layers[j].inputs) == {t, x}), None)

    out: dict[int, tuple[str, ...]] = {}
    for i, layer in enumerate(layers):
        if layer.op == "Sigmoid" and len(layer.inputs) == 1 and layer.outputs:
            x = layer.inputs[0]
            m = product_with(layer.outputs[0], x)
            if m is not None:
                out.update({i: (), m: (x,)})
        elif layer.op == "Erf" and len(layer.inputs) == 1 and layer.outputs:
            d = producer.get(layer.inputs[0])
            if d is None or layers[d].op not in SCALING or len(layers[d].inputs) != 1:
                continue
            x = layers[d].inputs[0]
            for a in readers.get(layer.outputs[0], []):
                if layers[a].op == "Add" and len(layers[a].inputs) == 1 and layers[a].outputs:
                    m = product_with(layers[a].outputs[0], x)
                    if m is not None:
                        out.update({d: (), i: (), a: (), m: (x,)})
    return out


def model_memory(graph: LayerGraph, batch: int, state_buffers: int,
                 bytes_of: Mapping[str, float]) -> ModelMemory:
    """The terms of every layer in topological order; `state_buffers` per parameter (the
    optimizer's), `bytes_of` each activation's bytes per sample at the training precision."""
    layers = list(graph)
    fused = fused_activations(layers)
    keepers: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        for name in fused.get(i, kept_by(layer)):
            keepers.setdefault(name, []).append(i)
    saved = [SavedTensor(batch * bytes_of.get(name, 0.0), tuple(sorted(set(who))))
             for name, who in keepers.items()]
    for i, layer in enumerate(layers):
        if layer.op == "MaxPool" and layer.outputs and layer.outputs[0] in graph.tensors:
            elements = graph.tensors[layer.outputs[0]].bytes / WORD  # (pooled floats, fp32)
            saved.append(SavedTensor(batch * elements * _INDEX_BYTES, (i,)))
    return ModelMemory(
        state=[float(x.params * WORD * (1 + state_buffers)) for x in layers],
        grads=[float(x.params * WORD) for x in layers],
        workspace=[batch * sum(bytes_of.get(t, 0.0) for t in (*x.inputs, *x.outputs))
                   for x in layers],
        saved=saved)


def peak_bytes(memory: ModelMemory, layers: Collection[int], n: int) -> float:
    """peak(S) of the module docstring for the tier training `layers` of an n-layer model."""
    inside = np.zeros(n, dtype=bool)
    inside[list(layers)] = True
    if not inside.any():
        return 0.0
    state = float(np.asarray(memory.state)[inside].sum())
    alive = np.zeros(n)
    for x in memory.saved:
        if inside[list(x.keepers)].any():
            alive[x.keepers[0]] += x.nbytes
    grads = np.where(inside, memory.grads, 0.0)
    at = np.cumsum(alive) + np.cumsum(grads[::-1])[::-1] \
        + np.where(inside, memory.workspace, 0.0)
    return state + float(at.max())
