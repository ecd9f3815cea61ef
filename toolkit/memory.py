"""Training memory: what each layer keeps, and a tier's peak while it trains.

For the tier that trains the layers S (in topological order), at batch b, in steady training
(docs/memory.md has the measurements):

- **state**, resident all along: each layer's weights and its optimizer's buffers, params x
  word x (1 + s) (SGD s = 0, momentum 1, Adam 2: torch.optim's `momentum_buffer`, or
  `exp_avg` and `exp_avg_sq`, kept in the parameters' dtype), the word being a weight's
  bytes as the file stores it (`Layer.weight_word`: 4 in an fp32 file, whose parameters mixed
  precision keeps in fp32; 2 in an fp16 file);
- **saved activations**: autograd keeps, from the forward pass to the backward, the tensors
  each op's backward needs: a convolution, matmul or normalisation its input (layer
  normalisation also a mean and a reciprocal standard deviation per row, fp32), ReLU,
  sigmoid, tanh, softmax or exp its output, a product of two activations both factors, a
  product with a weight (ConvNeXt's layer scale) its activation, max pooling its input and
  the argmax indices (int64), an addition, a product with a constant, an op that moves or
  views data or an op no gradient flows through (on raw data alone: autograd does not record
  it) nothing; an activation an exporter decomposed (GELU into Erf and products, SiLU
  into a sigmoid and a product) what PyTorch's fused op keeps, its input
  (`fused_activations`), and so for a decomposed group norm (its input and statistics, not
  the affine product's input) and weight norm (the norms: `fused_normalizations`);
  attention exported from `scaled_dot_product_attention` (ONNX's Attention op from opset
  23, before that queries and keys both scaled before their product: torch.onnx's
  decomposition) what the fused kernel keeps, queries, keys, values,
  its output and one log-sum-exp per query row, not the attention matrix
  (`fused_attention`); a dropout exported in training mode its mask: at the activation's
  precision on a CPU (PyTorch's CPU path multiplies by a float noise tensor), one byte per
  element on CUDA (its fused kernel keeps a bool mask: `ModelMemory.on`, by the processor
  profile's `backend`); an RMS normalisation its input, its normalised input and a root
  per row, and onnxruntime's fusions what the executor's autograd keeps (`kept_unnamed`);
  an LSTM its input, its outputs and the part of
  oneDNN's workspace its forward writes (`lstm_workspace`); a GRU or RNN its input and its
  steps' tensors (`recurrent_steps`). A tensor kept by several ops
  (ReLU's output is the next convolution's input) is kept once: b x its bytes at the
  training precision (once per step, not b times, for what weights alone make:
  `graph.computed_from`), and so is the same tensor under a new name (an Identity, a cast
  to its own type) and a view of it, whose whole storage it keeps
  (`toolkit.layout.storages`: a linear layer on `y[:, 0]` keeps all of y; `s.expand_as(y)`
  keeps only s): the fused attention's output with its heads merged back where that reads
  its memory in order (`merged_heads`: CUDA's kernels write (batch, sequence, heads, head
  size); the CPU's follow the queries' layout). A batched matmul operand whose heads a
  transpose moved ahead of the sequence, or that views part of a storage, is copied by
  torch.matmul, and the copy kept apart (`copied_operands`). A kept tensor is freed when the
  backward reaches the first op that keeps it;
- **held tensors**: the model's outputs, which the loss and the training loop hold until the
  backward is done, and every tensor the tier sends to another (it holds it, with its graph,
  until the gradient comes back and its backward is done): alive at every position;
- **tied weights**: a weight read by a later layer than its owner (GPT-2's embedding, read
  again by the LM head) gets a partial gradient there, which autograd holds until the owner's
  backward adds its own: that partial alive from the later reader's position to the owner's,
  and at the owner one more copy (its own partial and the sum exist together);
- **gradients** of the weights, params x word, made as the backward reaches each layer
  (`zero_grad(set_to_none=True)` frees them after each step);
- **workspace**: while layer v's backward runs, the gradients of its output and its inputs,
  b x (its input and output bytes).

The backward runs from the last layer to the first: when it reaches v, the activations kept
for v and everything before it are alive (and the held and tied terms whose span covers v),
and the gradients of v and everything after it:

    peak(S) = sum over S of state + max over positions v of
              (bytes of the saved, held and tied tensors alive at v
               + gradients of the layers of S at or after v + workspace of v if v in S)

counting a saved tensor when any of its keepers is in S (from its first keeper in the whole
model: where that keeper is on another tier, the tensor is counted a little longer than it
lives, never shorter; a tensor both kept and sent is counted twice: never too little). The
forward pass's end (everything saved, no gradient yet) and the optimizer step (every
gradient, nothing saved) are its two extremes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from toolkit.graph import ELEMENT_BYTES, Layer, LayerGraph
from toolkit.layout import Storages, in_order, physical_order, storages, transposed
from toolkit.ops import CONTRIB, DATA_MOVEMENT

WORD = 4  # bytes of an fp32 weight, gradient or optimizer state element
KEEPS_OUTPUT = frozenset({"Relu", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Exp", "Sqrt",
                          "Reciprocal", "HardSigmoid"})
KEEPS_NOTHING = DATA_MOVEMENT | frozenset({
    "Add", "Sub", "Neg", "Sum", "Identity", "ReduceSum", "ReduceMean", "GlobalAveragePool",
    "Dropout", "Equal", "Less", "Greater", "Not", "And", "Or", "Where",
    "DFT", "STFT",  # a Fourier transform's gradient is the inverse transform: sizes only
    "AffineGrid"})  # its gradient sums the output's over the base grid, made again
SCALING = frozenset({"Mul", "Div"})  # by a constant: nothing kept; of two activations: both
NOT_DIFFERENTIABLE = frozenset({
    "RandomUniformLike", "RandomNormalLike", "RandomUniform", "RandomNormal", "Bernoulli",
    "Multinomial", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Equal", "Not", "And",
    "Or", "Xor", "Shape", "Size", "ArgMax", "ArgMin", "NonZero", "IsNaN", "IsInf"})
_SKIP_NORMALIZATIONS = frozenset({CONTRIB + "SkipLayerNormalization",
                                  CONTRIB + "SkipSimplifiedLayerNormalization"})
_RMS_NORMALIZATIONS = frozenset({"RMSNormalization", "SimplifiedLayerNormalization",
                                 CONTRIB + "SkipSimplifiedLayerNormalization"})
_FUSED_LINEAR = frozenset({CONTRIB + "FusedConv", CONTRIB + "FusedGemm"})
_CONTRIB_ATTENTION = frozenset({CONTRIB + "Attention", CONTRIB + "MultiHeadAttention",
                                CONTRIB + "GroupQueryAttention"})
_INDEX_BYTES = 8  # MaxPool's argmax, int64 per output element
_MASK_BYTES = 1  # CUDA's dropout mask, a bool per element
_PIVOT_BYTES = 4  # LAPACK's pivots, int32 per row
Wiring = tuple[dict[str, int], dict[str, list[int]]]  # each tensor's producer, its readers


@dataclass(frozen=True)
class SavedTensor:
    """Bytes alive during the backward from position `start` to `stop` (by default from its
    first keeper to the end), on a tier that holds one of its `keepers`; where `readers` are
    named (a tensor the tier sends), only while one of them is on another tier."""

    nbytes: float
    keepers: tuple[int, ...]  # layer indices, ascending
    start: int = -1  # -1: keepers[0]
    stop: int = -1  # -1: the last position
    readers: tuple[int, ...] = ()

    def span(self, n: int) -> tuple[int, int]:
        """The first and last backward positions at which it is alive."""
        return (self.keepers[0] if self.start < 0 else self.start,
                n - 1 if self.stop < 0 else self.stop)


@dataclass(frozen=True)
class ModelMemory:
    """Every layer's state, gradient and workspace bytes, and the tensors kept for backward."""

    state: list[float]
    grads: list[float]
    workspace: list[float]
    saved: list[SavedTensor]
    variants: dict[int, tuple[SavedTensor, SavedTensor]] = field(default_factory=dict)
    # saved[j] as the CPU and as CUDA keep it (`on`)
    backend: str = "cpu"  # where the tier trains (`Processor.backend`): picks the variants

    def on(self, backend: str) -> ModelMemory:
        """The same terms for a tier that trains on `backend` ("cpu" or "cuda"). Two kinds of
        kept tensor differ: a training-mode dropout's mask (PyTorch's CPU path multiplies by
        a float noise tensor the size of the input and keeps it; CUDA's fused
        `native_dropout` keeps a bool mask, one byte per element: measured on an H200, BERT
        at batch 32 from +14% to +0.4%, docs/memory.md), and fused attention's output with
        its heads merged back, one storage where that is a view there, two where it is a
        copy (`merged_heads`)."""
        if backend == self.backend:
            return self
        column = 0 if backend == "cpu" else 1
        saved = list(self.saved)
        for j, pair in self.variants.items():
            saved[j] = pair[column]
        return replace(self, saved=saved, backend=backend)

    @cached_property
    def columns(self) -> SavedColumns:
        """`saved` as flat arrays, for evaluating peaks without a Python loop."""
        n = len(self.state)
        with_readers = [j for j, x in enumerate(self.saved) if x.readers]
        spans = np.array([x.span(n) for x in self.saved], dtype=np.int64).reshape(-1, 2)
        return SavedColumns(
            nbytes=np.array([x.nbytes for x in self.saved]),
            first=spans[:, 0], last=spans[:, 1],
            keepers=np.array([v for x in self.saved for v in x.keepers], dtype=np.int64),
            keeper_starts=_starts([len(x.keepers) for x in self.saved]),
            reader_rows=np.array(with_readers, dtype=np.int64),
            readers=np.array([v for j in with_readers for v in self.saved[j].readers],
                             dtype=np.int64),
            reader_starts=_starts([len(self.saved[j].readers) for j in with_readers]))


@dataclass(frozen=True)
class SavedColumns:
    """The saved tensors' bytes and spans, and their keepers and readers as flat arrays
    with each tensor's start offset (CSR)."""

    nbytes: np.ndarray
    first: np.ndarray
    last: np.ndarray
    keepers: np.ndarray
    keeper_starts: np.ndarray
    reader_rows: np.ndarray
    readers: np.ndarray
    reader_starts: np.ndarray


def _starts(lengths: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if lengths \
        else np.zeros(0, dtype=np.int64)


def kept_by(layer: Layer, carries_grad: Collection[str] | None = None) -> tuple[str, ...]:
    """The activation tensors `layer`'s backward needs (module docstring). With
    `carries_grad` (the tensors autograd differentiates), a product keeps a factor only for
    the gradient of the other: x * noise (stochastic depth) keeps the noise, not x."""
    by_constant = layer.op in SCALING and len(layer.inputs) < 2 and not layer.trainable
    if layer.op in KEEPS_NOTHING or by_constant:
        return ()
    if layer.op in KEEPS_OUTPUT:
        return layer.outputs
    if layer.op == "LSTM":  # oneDNN's backward reads the sequence in and the states out
        return (*layer.inputs[:1], *layer.outputs)  # (not ONNX's reordered weights: PyTorch's)
    if layer.op in ("GRU", "RNN"):  # the sequence in; its steps' tensors: `recurrent_steps`
        return layer.inputs[:1]
    if layer.op == "RoiAlign":  # torchvision's backward reads the boxes, not the features
        return layer.inputs[1:2]
    if layer.op == "Det":  # and the LU factors (`lu_factors`)
        return (*layer.inputs, *layer.outputs)
    if layer.op in _SKIP_NORMALIZATIONS:  # the sum it normalises, where it is an output
        return tuple(filter(None, layer.outputs[3:4]))  # (else `kept_unnamed`)
    if layer.op == CONTRIB + "EmbedLayerNormalization":  # likewise its embeddings' sum (not the
        return tuple(filter(None, layer.outputs[2:3]))  # token ids: integers, a few bytes)
    if layer.op in _FUSED_LINEAR and fused_activation(layer) in KEEPS_OUTPUT:
        return (*layer.inputs, *layer.outputs[:1])  # the product's inputs, the activation's out
    if layer.op in _CONTRIB_ATTENTION:  # its projection's input (the rest: `kept_unnamed`)
        return layer.inputs[:1] if layer.op.endswith(".Attention") else ()
    if layer.op == "Mul" and len(layer.inputs) == 2 and carries_grad is not None:
        a, b = layer.inputs
        return (*((a,) if b in carries_grad else ()), *((b,) if a in carries_grad else ()))
    return layer.inputs


def fused_activation(layer: Layer) -> str:
    """The `activation` a FusedConv or FusedGemm applies ("" for none)."""
    found = re.search(r"(?:^|;)activation='([^']*)'", layer.attrs)
    return found.group(1) if found else ""


def kept_unnamed(graph: LayerGraph, layer: Layer, word: float) -> float:
    """Bytes per sample a layer keeps for its backward that are no tensor of the graph: an
    RMS normalisation (ONNX's, onnxruntime's, and PyTorch's `F.rms_norm` on a CPU alike: its
    float32 arithmetic, as autograd records it) its normalised input before the scale and one
    float32 reciprocal root per row; and, as the executor trains onnxruntime's fusions
    (`toolkit.train.contrib`), a skip normalisation and BERT's embeddings the sum they
    normalise where no output holds it (and, centred, LayerNormalization's two statistics per
    row); a fused convolution
    or Gemm its activation's input where the activation keeps its input (LeakyRelu, Clip);
    attention the queries, keys and values split into heads (copies torch.matmul makes of
    the strided views, or the views themselves: the same bytes) and the softmax's
    probabilities in float32, heads x queries x keys. `word` is an activation element's bytes
    at the training precision."""
    tensors = graph.tensors
    x = tensors.get(layer.inputs[0]) if layer.inputs else None
    if x is None:
        return 0.0
    elements = x.bytes / ELEMENT_BYTES.get(x.dtype, WORD)
    if layer.op == CONTRIB + "EmbedLayerNormalization":  # the sum and LayerNorm's statistics
        out = tensors.get(layer.outputs[0]) if layer.outputs else None
        if out is None or not out.shape or not out.shape[-1]:
            return 0.0
        width = out.bytes / ELEMENT_BYTES.get(out.dtype, WORD)
        named = len(layer.outputs) > 2 and bool(layer.outputs[2])
        return (0.0 if named else width * word) + 2.0 * WORD * width / out.shape[-1]
    if layer.op in _SKIP_NORMALIZATIONS or layer.op in _RMS_NORMALIZATIONS:
        named = len(layer.outputs) > 3 and bool(layer.outputs[3])
        summed = elements * word if layer.op in _SKIP_NORMALIZATIONS and not named else 0.0
        if layer.op.endswith(".SkipLayerNormalization"):
            return summed + _row_statistics(graph, layer)
        return summed + elements * word + _row_statistics(graph, layer) / 2
    if layer.op in _FUSED_LINEAR:
        out = tensors.get(layer.outputs[0]) if layer.outputs else None
        activation = fused_activation(layer)
        return out.bytes / ELEMENT_BYTES.get(out.dtype, WORD) * word \
            if out is not None and activation and activation not in KEEPS_OUTPUT else 0.0
    if layer.op not in _CONTRIB_ATTENTION or len(x.shape) != 3:
        return 0.0
    heads = (layer.ints("num_heads") or [0])[0]
    out = tensors.get(layer.outputs[0]) if layer.outputs else None
    if layer.op.endswith(".GroupQueryAttention"):  # keys and values repeated per query head
        key = tensors.get(layer.inputs[1]) if len(layer.inputs) > 1 else x
        kv_heads = (layer.ints("kv_num_heads") or [0])[0]
        if key is None or len(key.shape) != 3 or heads <= 0 or kv_heads <= 0:
            return 0.0
        packed = key is x
        size = x.shape[-1] // (heads + 2 * kv_heads if packed else heads)
        keys = key.shape[1]
        split = x.shape[0] * (x.shape[1] + 2 * keys) * heads * size * word
        return split + WORD * x.shape[0] * heads * x.shape[1] * keys
    if layer.op.endswith(".MultiHeadAttention"):  # (its inputs: the activations it reads,
        # once each: a self-attention's query is its key and value)
        key = tensors.get(layer.inputs[1]) if len(layer.inputs) > 1 else x
        value = tensors.get(layer.inputs[2]) if len(layer.inputs) > 2 else key
        if key is None or value is None:
            return 0.0
        split = sum(t.bytes / ELEMENT_BYTES.get(t.dtype, WORD) for t in (x, key, value)) * word
    elif out is not None and len(out.shape) == 3:  # widths q + k + v, each v's by default
        widths = sum(layer.ints("qkv_hidden_sizes")) or 3 * out.shape[-1]
        key, split = x, x.shape[0] * x.shape[1] * widths * word
    else:
        return 0.0
    if len(key.shape) not in (3, 4):
        return split
    keys = key.shape[-2] if len(key.shape) == 4 else key.shape[1]
    return split + WORD * x.shape[0] * heads * x.shape[1] * keys


def carrying_grad(graph: LayerGraph) -> set[str]:
    """The activations autograd differentiates: floating-point tensors made by a
    differentiable op from weights or from other such tensors (raw inputs, masks, random
    draws and what only they make carry none)."""
    out: set[str] = set()
    for layer in graph:
        if layer.op in NOT_DIFFERENTIABLE or not (
                layer.trainable or any(t in out for t in layer.inputs)):
            continue
        out.update(t for t in layer.outputs if t in graph.tensors and graph.tensors[t].floating)
    return out


def aliases(graph: LayerGraph, layers: Sequence[Layer]) -> dict[str, str]:
    """Tensors that are another under a new name: the output of an Identity, of a dropout that
    drops nothing (p = 0, or not training), or of a cast to the type it has (HF's RMSNorm and
    attention cast to fp32 and back: `.to()` in fp32), which PyTorch returns as its input."""
    alias: dict[str, str] = {}
    for layer in layers:
        if len(layer.inputs) == 1 and layer.outputs and (
                layer.op == "Identity"
                or (layer.op == "Dropout" and "training_mode=1" not in layer.attrs)
                or (layer.op == "Cast" and _same_type(graph, layer))):
            alias[layer.outputs[0]] = alias.get(layer.inputs[0], layer.inputs[0])
    return alias


def _same_type(graph: LayerGraph, layer: Layer) -> bool:
    src, dst = graph.tensors.get(layer.inputs[0]), graph.tensors.get(layer.outputs[0])
    return src is not None and dst is not None and src.dtype == dst.dtype


def merged_heads(graph: LayerGraph, attention: Mapping[int, tuple[str, ...]],
                 wiring: Wiring | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Views of fused attention's output, on the CPU and on CUDA: tensor -> the output it
    views, for the 4-D outputs of `attention` (layer -> what it keeps, queries first). The
    heads merged back (a transpose, then reshapes) read the output's memory in order, so
    copy nothing, where the transpose lays its axes out as the output lies in memory.
    PyTorch's CUDA kernels (flash, memory-efficient) write the output as (batch, sequence,
    heads, head size) and return a (batch, heads, sequence, head size) view, so
    transpose(1, 2) merges in place; its CPU kernel gives the output the queries' strides, so
    torchvision's `nn.MultiheadAttention`, whose queries lie (sequence, batch, heads, head
    size), merges in place with permute(2, 0, 1, 3) on the CPU and copies on CUDA
    (autograd's saved tensors on vit_b_16; `toolkit.layout` follows the queries' layout)."""
    layers = list(graph)
    producer, readers = wiring or _wiring(layers)
    views: tuple[dict[str, str], dict[str, str]] = ({}, {})
    for i, kept in attention.items():
        out = layers[i].outputs[0]
        tensor = graph.tensors.get(out)
        if tensor is None or len(tensor.shape) != 4 or not kept:
            continue
        queries = physical_order(layers, producer, graph.tensors, kept[0])
        lies = (queries if len(queries) == 4 else (0, 1, 2, 3), (0, 2, 1, 3))  # CPU, CUDA
        # (the CPU's compared on the axes of more than one element: the graph's tensors are
        # one sample's, and where the queries' batch lies among them the file does not say;
        # CUDA's kernels put it outermost)
        for t in readers.get(out, []):
            if layers[t].op != "Transpose" or not layers[t].outputs:
                continue
            merged = [layers[t].outputs[0], *(layers[r].outputs[0]
                                              for r in readers.get(layers[t].outputs[0], [])
                                              if layers[r].op == "Reshape" and layers[r].outputs)]
            perm = layers[t].ints("perm") or [3, 2, 1, 0]
            shape = list(graph.tensors[merged[0]].shape)
            if sorted(perm) != [0, 1, 2, 3] or len(shape) != 4:
                continue
            step = [*shape]  # as a step has it: the batch (the output's first axis) of many
            step[perm.index(0)] = 2
            for backend, order, sizes in zip(views, lies, (shape, step), strict=True):
                if in_order(transposed(order, perm), sizes):
                    backend.update(dict.fromkeys(merged, out))
    return views


def copied_operands(graph: LayerGraph, views: Storages, wiring: Wiring | None = None
                    ) -> dict[int, set[str]]:
    """MatMul operands PyTorch copies before multiplying: torch.matmul folds a batched
    operand's leading dimensions into one, which a transposed view whose leading dimensions
    are out of order (heads split off and moved ahead of the sequence) cannot do in place; its
    backward keeps the copy, a storage of its own even where another op keeps the view. Layer
    index -> such inputs (followed back through Transposes; what they start from is taken as
    laid out in order), and the operands with two batch dimensions or more that view part
    of a storage (`views`: a select, a slice, a piece of a split, an expansion), whose gaps
    the fold may not span (Swin's keys and values, selected from one projection): a storage
    of their own, as the graph shows them."""
    layers = list(graph)
    producer, _ = wiring or _wiring(layers)
    copies: dict[int, set[str]] = {}
    for i, layer in enumerate(layers):
        if layer.op != "MatMul":
            continue
        for t in layer.inputs:
            info = graph.tensors.get(t)
            rank = len(info.shape) if info is not None and info.shape else 0
            if rank < 3:
                continue
            order, j = list(range(rank)), producer.get(t)
            while j is not None and layers[j].op == "Transpose" and layers[j].inputs:
                perm = layers[j].ints("perm") or list(range(rank))[::-1]  # (ONNX's default)
                if sorted(perm) != list(range(rank)):
                    break
                order = [perm[o] for o in order]
                j = producer.get(layers[j].inputs[0])
            if order[:-2] != list(range(rank - 2)) or (rank > 3 and t in views.partial):
                copies.setdefault(i, set()).add(t)
    return copies


def _wiring(layers: Sequence[Layer]) -> Wiring:
    """Each tensor's producing layer, and the layers that read it (by index)."""
    producer = {t: i for i, layer in enumerate(layers) for t in layer.outputs}
    readers: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        for t in layer.inputs:
            readers.setdefault(t, []).append(i)
    return producer, readers


def fused_activations(layers: Sequence[Layer], wiring: Wiring | None = None
                      ) -> dict[int, tuple[str, ...]]:
    """What the ops of an exporter's decomposed activation keep when PyTorch trains the fused
    op it came from, which keeps only its input x: SiLU exported as Sigmoid(x) and
    Mul(x, Sigmoid(x)); GELU as Div(x, sqrt 2) -> Erf -> Add 1 -> Mul(x, .). Layer index ->
    the tensors it keeps, for the layers of each such pattern."""
    producer, readers = wiring or _wiring(layers)

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


def fused_normalizations(layers: Sequence[Layer], wiring: Wiring | None = None
                         ) -> dict[int, tuple[str, ...]]:
    """What the ops of an exporter's decomposed normalisation keep when PyTorch trains the
    fused op it came from, whose backward finds the affine step's input again from what the
    normalisation keeps: a group norm exported as InstanceNormalization between Reshapes,
    then Mul by its weight (native_group_norm keeps its input and statistics only); a weight
    norm as ReduceL2(v), Div(v, .) and Mul by g (`_weight_norm` keeps v, g and the norms).
    Layer index -> the tensors it keeps (none, for each such Mul)."""
    producer, _ = wiring or _wiring(layers)
    out: dict[int, tuple[str, ...]] = {}
    for i, layer in enumerate(layers):
        if layer.op != "Mul" or not layer.trainable or len(layer.inputs) != 1:
            continue
        j = producer.get(layer.inputs[0])
        if j is not None and layers[j].op == "Reshape" and layers[j].inputs:
            k = producer.get(layers[j].inputs[0])
            if k is not None and layers[k].op == "InstanceNormalization":
                out[i] = ()
        elif j is not None and layers[j].op == "Div" and len(layers[j].inputs) == 1:
            k = producer.get(layers[j].inputs[0])
            if k is not None and layers[k].op == "ReduceL2" and any(
                    owner == layers[k].name for owner, _ in layers[j].tied):
                out[i] = ()
    return out


def decomposed_gelus(layers: Sequence[Layer]) -> int:
    """How many GELUs an exporter wrote as Div, Erf, Add, Mul, Mul (the TorchScript exporter's
    form at opset 17): the delay model charges their five kernels, as the graph runs;
    PyTorch's fused GELU is one."""
    if not any(layer.op == "Erf" for layer in layers):
        return 0
    return sum(layers[i].op == "Erf" for i in fused_activations(layers))


def fused_attention(graph: LayerGraph, wiring: Wiring | None = None
                    ) -> tuple[dict[int, tuple[str, ...]], dict[int, float]]:
    """Attention that torch.onnx exported from `scaled_dot_product_attention`: up to opset 22
    MatMul(q x s, k^T x s) with both operands scaled by constants, an optional additive mask,
    Softmax, and MatMul(., v) (a dropout between that drops nothing allowed); from opset 23
    ONNX's Attention op. Its fused kernel keeps q, k, v and its output, and a log-sum-exp per
    query row: layer index -> the tensors it keeps for the pattern's layers, and the final
    MatMul's (or the Attention op's) index -> the log-sum-exp's bytes per sample."""
    layers = list(graph)
    producer, readers = wiring or _wiring(layers)

    def scaled(t: str) -> int | None:
        """The layer that scales t by a constant, if one does."""
        j = producer.get(t)
        if j is None or layers[j].op not in SCALING or len(layers[j].inputs) != 1 \
                or layers[j].trainable:
            return None
        return j

    def untransposed(t: str) -> str:
        """The keys before the decomposition turned them (up to three Reshapes and Transposes
        that lead only there: the turn of the last two axes, between Reshapes that flatten
        and restore the batch axes in torch.onnx's): the tensor the fused kernel reads, whose
        storage it keeps (the same bytes)."""
        for _ in range(3):
            j = producer.get(t)
            if j is None or layers[j].op not in ("Reshape", "Transpose") \
                    or len(readers.get(t, [])) != 1 or not layers[j].inputs:
                break
            t = layers[j].inputs[0]
        return t

    kept: dict[int, tuple[str, ...]] = {}
    lse: dict[int, float] = {}
    for i, layer in enumerate(layers):
        if layer.op == "Attention" and layer.outputs:  # ONNX's own op (opset 23)
            out = graph.tensors.get(layer.outputs[0])
            kept[i] = (*layer.inputs[:3], layer.outputs[0])
            v_head = _v_head_size(graph, layer)
            if out is not None and v_head > 0:
                lse[i] = out.bytes / v_head
            continue
        if layer.op != "Softmax" or len(layer.inputs) != 1 or not layer.outputs:
            continue
        pattern, t = [i], layer.inputs[0]
        while (j := producer.get(t)) is not None and layers[j].op in ("Add", "Where") \
                and len(layers[j].inputs) == 1:  # an additive mask (a constant)
            pattern.append(j)
            t = layers[j].inputs[0]
        scores = producer.get(t)
        if scores is None or layers[scores].op != "MatMul" or len(layers[scores].inputs) != 2:
            continue
        scales = [scaled(x) for x in layers[scores].inputs]
        probabilities = layer.outputs[0]
        after = readers.get(probabilities, [])
        if len(after) == 1 and layers[after[0]].op == "Dropout" \
                and "training_mode=1" not in layers[after[0]].attrs and layers[after[0]].outputs:
            pattern.append(after[0])  # a dropout that drops nothing (p = 0, or not training)
            probabilities = layers[after[0]].outputs[0]
            after = readers.get(probabilities, [])
        if None in scales or len(after) != 1 or layers[after[0]].op != "MatMul" \
                or layers[after[0]].inputs[0] != probabilities \
                or len(layers[after[0]].inputs) != 2 or not layers[after[0]].outputs:
            continue
        final = after[0]
        q, k = (layers[j].inputs[0] for j in scales if j is not None)
        kept.update({j: () for j in (*pattern, scores, *scales) if j is not None})
        kept[final] = (q, untransposed(k), layers[final].inputs[1], layers[final].outputs[0])
        matrix = graph.tensors.get(layer.outputs[0])
        if matrix is not None and matrix.shape and matrix.shape[-1] > 0:
            lse[final] = matrix.bytes / matrix.shape[-1]
    return kept, lse


def _v_head_size(graph: LayerGraph, layer: Layer) -> int:
    """The size of one head of V in an Attention op: V's last extent, over `kv_num_heads`
    where V is 3-D (batch, sequence, heads x head size); 0 when unknown."""
    v = graph.tensors.get(layer.inputs[2]) if len(layer.inputs) > 2 else None
    if v is None or not v.shape:
        return 0
    if len(v.shape) == 4:
        return v.shape[-1]
    heads = layer.ints("kv_num_heads")
    return v.shape[-1] // heads[0] if heads and heads[0] > 0 else 0


def model_memory(graph: LayerGraph, batch: int, state_buffers: int,
                 bytes_of: Mapping[str, float]) -> ModelMemory:
    """The terms of every layer in topological order; `state_buffers` per parameter (the
    optimizer's), `bytes_of` each activation's bytes per sample at the training precision
    (`batch` of them in a step; one of a tensor that weights alone make: `computed_from`)."""
    layers = list(graph)
    index = {layer.name: i for i, layer in enumerate(layers)}
    wiring = _wiring(layers)
    attention, lse = fused_attention(graph, wiring)
    fused = {**fused_activations(layers, wiring), **fused_normalizations(layers, wiring),
             **attention}
    grad = carrying_grad(graph)
    on_cpu, on_cuda = merged_heads(graph, attention, wiring)
    same = aliases(graph, layers)
    merged = {t: o for t, o in on_cpu.items() if on_cuda.get(t) == o}
    views = storages(layers, graph.tensors, same, {layers[i].outputs[0] for i in attention})

    def stored_in(t: str) -> str:
        """The tensor whose storage `t` is: through views, then merged heads."""
        base = views.root.get(t, t)
        return merged.get(base, base)

    alias = {t: stored_in(r) for t, r in {**same, **views.root}.items()} | merged
    copies = copied_operands(graph, views, wiring)

    def times(name: str) -> int:
        """How many of `name` a step makes: one per sample, or one (weights alone make it)."""
        tensor = graph.tensors.get(name)
        return batch if tensor is None or tensor.per_sample else 1

    def per_step(name: str) -> float:
        return times(name) * bytes_of.get(name, 0.0)

    def elements(name: str) -> float:
        """How many numbers of `name` a step makes."""
        tensor = graph.tensors.get(name)
        return 0.0 if tensor is None else \
            times(name) * tensor.bytes / ELEMENT_BYTES.get(tensor.dtype, WORD)

    # autograd records only the ops a gradient flows through: one on raw data alone keeps nothing
    recorded = [layer.trainable or any(t in grad for t in layer.inputs) for layer in layers]
    keepers: dict[tuple[str, int], list[int]] = {}  # (tensor, the layer with a copy, or -1)
    for i, layer in enumerate(layers):
        if not recorded[i]:
            continue
        for name in fused.get(i, kept_by(layer, grad)):
            own = i if name in copies.get(i, ()) and i not in attention else -1
            # (a fused attention kernel reads strided operands in place)
            keepers.setdefault((name if own >= 0 else alias.get(name, name), own), []).append(i)
    saved = [SavedTensor(per_step(name), tuple(sorted(set(who))))
             for (name, _), who in keepers.items()]
    variants = _merged_on_one_backend(
        saved, {name: j for j, (name, own) in enumerate(keepers) if own < 0}, on_cpu, on_cuda)
    saved += [SavedTensor(times(layers[i].outputs[0]) * nbytes, (i,))
              for i, nbytes in lse.items()]
    for i, layer in enumerate(layers):
        if not recorded[i]:
            continue
        if layer.op == "MaxPool" and layer.outputs and layer.outputs[0] in graph.tensors:
            saved.append(SavedTensor(elements(layer.outputs[0]) * _INDEX_BYTES, (i,)))
        if layer.op == "LayerNormalization" and layer.inputs and layer.inputs[0] in graph.tensors:
            saved.append(SavedTensor(times(layer.inputs[0]) * _row_statistics(graph, layer),
                                     (i,)))
        if (layer.op.startswith(CONTRIB) or layer.op in _RMS_NORMALIZATIONS) and layer.inputs \
                and layer.inputs[0] in graph.tensors:
            x = layer.inputs[0]
            word = bytes_of.get(x, 0.0) / max(elements(x) / times(x), 1.0)
            saved.append(SavedTensor(times(x) * kept_unnamed(graph, layer, word), (i,)))
        if layer.op == "Dropout" and "training_mode=1" in layer.attrs and layer.outputs:
            variants[len(saved)] = (SavedTensor(per_step(layer.outputs[0]), (i,)),
                                    SavedTensor(elements(layer.outputs[0]) * _MASK_BYTES, (i,)))
            saved.append(variants[len(saved)][0])
        if layer.op == "Det" and layer.inputs and layer.inputs[0] in graph.tensors:
            saved.append(SavedTensor(lu_factors(graph, layer, per_step, elements), (i,)))
        if layer.op == "LSTM":
            saved.append(SavedTensor(lstm_workspace(graph, layer, batch), (i,)))
        if layer.op in ("GRU", "RNN"):
            saved.append(SavedTensor(recurrent_steps(graph, layer, batch, per_step), (i,)))
    saved += _tied_partials(layers, index)
    saved += _in_flight_and_held(graph, index, grad, [per_step(name) for name in graph.tensors])
    return ModelMemory(
        state=[float(x.params * x.weight_word * (1 + state_buffers)) for x in layers],
        grads=[float(x.params * x.weight_word) for x in layers],
        workspace=[sum(per_step(t) for t in (*x.inputs, *x.outputs)) for x in layers],
        saved=[variants[j][0] if j in variants else x for j, x in enumerate(saved)],
        variants=variants)


def _merged_on_one_backend(saved: list[SavedTensor], index: Mapping[str, int],
                           on_cpu: Mapping[str, str], on_cuda: Mapping[str, str]
                           ) -> dict[int, tuple[SavedTensor, SavedTensor]]:
    """The saved tensors (by `index`) of the merged heads that are a view of the attention's
    output on one backend only: there one storage, kept as long as either keeper needs it
    (the view adds no bytes); on the other, two. saved index -> (CPU's, CUDA's)."""
    variants: dict[int, tuple[SavedTensor, SavedTensor]] = {}
    for t, out in {**on_cpu, **on_cuda}.items():
        a, b = index.get(out), index.get(t)
        if a is None or b is None or (t in on_cpu) == (t in on_cuda):
            continue
        whole, view = list(variants.get(a, (saved[a],) * 2)), list(variants.get(b, (saved[b],) * 2))
        for k, views in enumerate((t in on_cpu, t in on_cuda)):
            if views:
                whole[k] = replace(whole[k], keepers=tuple(sorted({*whole[k].keepers,
                                                                    *view[k].keepers})))
                view[k] = replace(view[k], nbytes=0.0)
        variants[a], variants[b] = (whole[0], whole[1]), (view[0], view[1])
    return variants


_PAGE = 4096  # oneDNN aligns each region of an RNN workspace to a page


def _good_ld(elements: int) -> int:
    """oneDNN's leading dimension for an fp32 RNN array (`rnn_utils::get_good_ld`): rounded
    up to 64 bytes, and one more 64 bytes where that is a multiple of 256 elements (4K
    aliasing)."""
    ld = -(-elements // 16) * 16
    return ld + 16 if ld % 256 == 0 else ld


def _sequence(graph: LayerGraph, layer: Layer, batch: int
              ) -> tuple[int, int, int, int, int] | None:
    """An ONNX recurrent layer's steps T, sequences N at `batch` samples (a sample may hold
    many, as Sequencer2d's rows), input features I, hidden units H and directions."""
    x = graph.tensors.get(layer.inputs[0]) if layer.inputs else None
    hidden = layer.ints("hidden_size")
    if x is None or len(x.shape) != 3 or not hidden or not x.bytes:
        return None
    steps, features = (x.shape[1], x.shape[2]) if layer.ints("layout") == [1] \
        else (x.shape[0], x.shape[2])
    elements = x.bytes / ELEMENT_BYTES.get(x.dtype, WORD)  # per sample
    sequences = math.ceil(elements / max(steps * features, 1) * batch)
    directions = 2 if "direction='bidirectional'" in layer.attrs else 1
    return steps, sequences, features, hidden[0], directions


def lstm_workspace(graph: LayerGraph, layer: Layer, batch: int) -> float:
    """Bytes of oneDNN's workspace that an ONNX LSTM's forward writes and its backward reads,
    at `batch` samples. PyTorch trains an fp32 LSTM on the CPU with oneDNN, one call per
    direction (`MkldnnRnnLayerBackward0` keeps the workspace). Each call's forward writes
    every step's gates (T x N x ld(4H) floats) and cell states ((T + 1) x N x H), each region
    page-aligned, where ld is oneDNN's padded leading dimension; the reverse direction also
    writes each step's input and output there (2 x T x N x ld(max(I, H))). The other regions
    (the states' gradients) only the backward writes: not resident before. Measured with
    PyTorch 2.15's oneDNN 3.13 (docs/memory.md, tests/test_memory.py)."""
    found = _sequence(graph, layer, batch)
    if found is None:
        return 0.0
    steps, sequences, features, h, directions = found

    def region(floats: int) -> int:
        return -(-floats * WORD // _PAGE) * _PAGE

    each = region(steps * sequences * _good_ld(4 * h)) + region((steps + 1) * sequences * h)
    reversed_states = region(2 * steps * sequences * _good_ld(max(features, h)))
    if directions == 2:
        return float(2 * each + reversed_states)
    return float(each + (reversed_states if "direction='reverse'" in layer.attrs else 0))


def recurrent_steps(graph: LayerGraph, layer: Layer, batch: int,
                    per_step: Callable[[str], float]) -> float:
    """Bytes autograd keeps for an ONNX GRU's or RNN's steps at `batch` samples, at the
    training precision. PyTorch runs them decomposed on the CPU: a GRU step keeps the state
    it reads (H per sequence), its hidden projection (3H: the storage its gates are chunks
    of), the new gate's tanh (H) and the two factors of its update (2H): 7H; an RNN step its
    state, which is the step before's output, so T + 1 states of H. A sequence read through a
    transpose (batch-first) is copied by each direction's input projection, so a second
    direction keeps a second copy (tests/test_memory.py, against autograd)."""
    found = _sequence(graph, layer, batch)
    if found is None:
        return 0.0
    steps, sequences, features, h, directions = found
    x = layer.inputs[0]
    element = per_step(x) / (steps * sequences * features)  # bytes at the training precision
    floats = directions * (7 * steps if layer.op == "GRU" else steps + 1) * sequences * h
    made = graph.tensors[x].producer
    copies = directions - 1 if made and graph.layers[made].op == "Transpose" else 0
    return element * (floats + copies * steps * sequences * features)


def lu_factors(graph: LayerGraph, layer: Layer, per_step: Callable[[str], float],
               elements: Callable[[str], float]) -> float:
    """Bytes of the LU factors a Det keeps for its backward besides its input and output:
    PyTorch's `linalg_det` saves the factors (the input's size) and their pivots (an int32
    per row of each matrix), checked with autograd's saved tensors (tests/test_memory.py)."""
    x = layer.inputs[0]
    shape = graph.tensors[x].shape
    if len(shape) < 2 or not shape[-1]:
        return 0.0
    return per_step(x) + elements(x) / shape[-1] * _PIVOT_BYTES


def _row_statistics(graph: LayerGraph, layer: Layer) -> float:
    """Bytes per sample of the mean and reciprocal standard deviation a LayerNormalization
    keeps for its backward: one each per normalised row (the dimensions from `axis` on are
    normalised together), in fp32 at either precision (PyTorch's native_layer_norm)."""
    x = graph.tensors[layer.inputs[0]]
    axis = (layer.ints("axis") or [-1])[0]
    if not x.shape or not -len(x.shape) <= axis < len(x.shape):
        return 0.0
    row = math.prod(x.shape[axis % len(x.shape):]) * ELEMENT_BYTES.get(x.dtype, WORD)
    return 2.0 * WORD * x.bytes / row if row else 0.0


def _tied_partials(layers: Sequence[Layer], index: Mapping[str, int]) -> list[SavedTensor]:
    """A tied weight's partial gradient from each later reader, alive from that reader's
    backward to its owner's, and one more copy at the owner (its own partial and the sum)."""
    out = []
    for i, layer in enumerate(layers):
        for owner, elements in layer.tied:
            if owner in index:
                o = index[owner]
                out += [SavedTensor(elements * WORD, (i,), start=o, stop=i),
                        SavedTensor(elements * WORD, (i,), start=o, stop=o)]
    return out


def _in_flight_and_held(graph: LayerGraph, index: Mapping[str, int], grad: Collection[str],
                        nbytes: Sequence[float]) -> list[SavedTensor]:
    """Per tensor (`nbytes` in `graph.tensors`' order, per batch): its gradient in flight
    between its last reader's backward and its maker's (a skip connection's: the workspace
    covers both ends), and the tensor itself held to the end of the backward when it is a
    model output or its tier sends it."""
    out = []
    outputs = set(graph.outputs)
    for (name, tensor), size in zip(graph.tensors.items(), nbytes, strict=True):
        if tensor.producer is None or tensor.producer not in index:
            continue
        maker = index[tensor.producer]
        readers = tuple(sorted({index[c] for c in tensor.consumers if c in index}))
        if name in grad and readers and readers[-1] - 1 >= maker + 1:
            out.append(SavedTensor(size, (readers[-1],), start=maker + 1, stop=readers[-1] - 1))
        if name in outputs or readers:
            out.append(SavedTensor(size, (maker,), start=0,
                                   readers=() if name in outputs else readers))
    return out


def peak_bytes(memory: ModelMemory, layers: Collection[int], n: int) -> float:
    """peak(S) of the module docstring for the tier training `layers` of an n-layer model."""
    inside = np.zeros(n, dtype=bool)
    inside[list(layers)] = True
    if not inside.any():
        return 0.0
    state = float(np.asarray(memory.state)[inside].sum())
    alive = np.zeros(n + 1)
    c = memory.columns
    if c.nbytes.size:
        held = np.logical_or.reduceat(inside[c.keepers], c.keeper_starts)
        if c.reader_rows.size:  # sent: held only while a reader is elsewhere
            held[c.reader_rows] &= ~np.logical_and.reduceat(inside[c.readers], c.reader_starts)
        np.add.at(alive, c.first[held], c.nbytes[held])
        np.add.at(alive, c.last[held] + 1, -c.nbytes[held])
    grads = np.where(inside, memory.grads, 0.0)
    at = np.cumsum(alive)[:n] + np.cumsum(grads[::-1])[::-1] \
        + np.where(inside, memory.workspace, 0.0)
    return state + float(at.max())
