"""The toolkit's own model graph: layers joined by activation tensors, in topological order.

Everything downstream of the ONNX reader (costs, blocks, partition, store) works on these
dataclasses only, so none of it needs `onnx` to run or to be tested.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from toolkit.errors import ModelError
from toolkit.ops import DATA_MOVEMENT

_LIMIT = 2.0**62
"""Sizes (bytes, FLOPs, parameters) at or beyond this are corrupt shapes: no model is that big,
and the database's 64-bit integers could not hold them."""


FLOAT_DTYPES = frozenset({"float", "double", "float16", "bfloat16"})
HALF_DTYPES = frozenset({"float16", "bfloat16"})
"""16-bit floats: a layer computing on them runs at a processor's fp16 rate."""
ELEMENT_BYTES: dict[str, float] = {  # bytes of one element of each dtype
    "float": 4, "double": 8, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1, "int16": 2,
    "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "bool": 1, "complex64": 8,
    "complex128": 16, "string": 8, "float8e4m3fn": 1, "float8e4m3fnuz": 1, "float8e5m2": 1,
    "float8e5m2fnuz": 1, "float8e8m0": 1, "int4": 0.5, "uint4": 0.5, "float4e2m1": 0.5,
    "int2": 0.25, "uint2": 0.25,
}


_LOOKUPS = frozenset({"Gather", "GatherElements", "GatherND"})
"""Operators that look their indices up in a table: with a trainable table, an embedding."""
_SIZES = frozenset({"Shape", "Size"})
_COPIES = DATA_MOVEMENT - _SIZES - {"Constant", "ConstantOfShape", "Range", "EyeLike",
                                    "NonZero", "SequenceEmpty", "SequenceLength",
                                    "OptionalHasElement"} | {"Where", "Max", "Min"}
"""Operators whose output holds elements of their inputs as they are (moved, joined, picked):
raw data among them is raw data in the output, whatever else it is joined with."""


@dataclass(frozen=True)
class Tensor:
    """An activation tensor. `bytes` is per sample (per step where weights alone make it:
    not `per_sample`); `producer` is None for a raw graph input."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int
    producer: str | None
    consumers: tuple[str, ...] = ()
    shape_known: bool = True
    per_sample: bool = True  # made from the raw inputs (LayerGraph.build sets it: `computed_from`)

    @property
    def floating(self) -> bool:
        """It holds floating-point numbers: it can carry a gradient."""
        return self.dtype in FLOAT_DTYPES

    @property
    def empty(self) -> bool:
        """It holds no element (a decoder's key-value cache before the first token): as a raw
        input it carries no raw data."""
        return self.shape_known and 0 in self.shape


@dataclass(frozen=True)
class Layer:
    """One trainable-graph node with its per-sample forward facts.

    `inputs`/`outputs` name activation tensors only; trainable weights it reads (initializers
    and views of them) are folded into `weight_elements`/`param_bytes` (what a pass reads) and
    `params` (the parameters this layer owns: each weight is owned by the first layer that
    reads it, so a tied embedding is counted, and updated by the optimizer, once); `tied`
    names the owners of the weights it reads but does not own.
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    flops: float = 0.0
    macs: float = 0.0
    params: int = 0
    param_bytes: int = 0
    in_bytes: int = 0
    out_bytes: int = 0
    module: str | None = None
    attrs: str = ""  # canonical 'k=v;...' text: part of the layer's block signature
    groups: int = 1  # a convolution's channel groups (grouped and depthwise: > 1)
    supported: bool = True
    reads_input: bool = False
    weight_elements: int = -1  # elements of every weight it reads (-1: as many as `params`)
    tied: tuple[tuple[str, int], ...] = ()  # (owner layer, elements) of weights it shares
    half: bool = False  # computes in 16-bit floats: every float activation it reads or writes

    @property
    def reads_weights(self) -> int:
        """Elements of the trainable weights this layer reads (owned or shared)."""
        return self.params if self.weight_elements < 0 else self.weight_elements

    @property
    def weight_word(self) -> float:
        """Bytes of one of its weights as the file stores them: the width its parameters, their
        gradients and optimizer state train at (4 in an fp32 file, whose parameters mixed
        precision keeps in fp32; 2 in an fp16 file, trained in fp16; 4 where unknown)."""
        if self.reads_weights and self.param_bytes:
            return self.param_bytes / self.reads_weights
        return ELEMENT_BYTES["float"]

    @property
    def trainable(self) -> bool:
        """It computes gradients for weights (its own or shared ones)."""
        return self.reads_weights > 0

    def hides_raw_data(self, weights_made: bool = False, out_elements: float = 0.0) -> bool:
        """It turns raw data into activations: it combines its input's elements with trainable
        weights (a convolution, a matmul, attention, a recurrence: it has MACs) or looks them
        up in its weights (an embedding); `weights_made`: it also reads a tensor weights alone
        make, which counts as a weight. A layer that only scales and shifts each element,
        weights or not (a rescaling by 1/255, a per-channel normalisation, a learned scale
        read as `exp(log_scale)`), hides nothing: its input comes back by undoing the scale
        and the shift. Nor does a contraction of one MAC per output element (`out_elements`,
        per sample, where known: a `Linear(1, d)` embedding of a univariate series, a 1x1
        convolution of one channel per group): each output is one input element, scaled."""
        mixes = self.macs > out_elements or self.op in _LOOKUPS
        return (self.trainable or weights_made) and mixes

    def ints(self, name: str) -> list[int]:
        """An integer or list-of-integers attribute, read back from `attrs` ([] when absent
        or not integers)."""
        found = re.search(rf"(?:^|;){re.escape(name)}=\[?([-0-9, ]*)\]?(?:;|$)", self.attrs)
        return [int(v) for v in found.group(1).split(",") if v.strip()] if found else []


@dataclass
class LayerGraph:
    """A DAG of layers. Build it with `LayerGraph.build`, which validates and orders it."""

    name: str
    layers: dict[str, Layer]
    tensors: dict[str, Tensor]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    unsupported_ops: dict[str, int] = field(default_factory=dict)
    unknown_shapes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    module_classes: dict[str, str] = field(default_factory=dict)  # module path -> class
    opset: int = 0  # the default-domain opset of the source file (0: unknown)
    file_batch: int | None = None  # the batch the file's inputs fix (None: open); 1 if per sample
    sha256: str = ""  # digest of the file without its large weights, reader version, options

    @classmethod
    def build(
        cls,
        name: str,
        layers: Iterable[Layer],
        tensors: Mapping[str, Tensor],
        inputs: Iterable[str],
        outputs: Iterable[str],
        **extra: object,
    ) -> LayerGraph:
        """Validate names and references, fill tensor consumers, and sort layers topologically."""
        layer_list = list(layers)
        if not layer_list:
            raise ModelError(f"model {name!r} has no layers: the graph holds no computation")
        by_name: dict[str, Layer] = {}
        for layer in layer_list:
            sizes = (layer.flops, layer.macs, layer.params, layer.param_bytes, layer.in_bytes,
                     layer.out_bytes)
            if not all(0 <= x < _LIMIT for x in sizes):
                raise ModelError(f"model {name!r}: layer {layer.name!r} comes out with a "
                                 "negative, infinite or absurdly large size (corrupt shapes or "
                                 "weights?)")
            if layer.name in by_name:
                raise ModelError(f"model {name!r}: two layers are named {layer.name!r}")
            by_name[layer.name] = layer
        for tensor in tensors.values():
            if not 0 <= tensor.bytes < _LIMIT:
                raise ModelError(f"model {name!r}: tensor {tensor.name!r} comes out with a "
                                 f"negative or infinite size {tensor.shape}")
        consumers: dict[str, list[str]] = {t: [] for t in tensors}
        for layer in layer_list:
            for t in layer.inputs:
                if t not in tensors:
                    raise ModelError(
                        f"model {name!r}: layer {layer.name!r} reads tensor {t!r}, "
                        "which nothing produces (dangling tensor name)"
                    )
                if layer.name not in consumers[t]:
                    consumers[t].append(layer.name)
            for t in layer.outputs:
                if t not in tensors or tensors[t].producer != layer.name:
                    raise ModelError(
                        f"model {name!r}: tensor {t!r} of layer {layer.name!r} has no record"
                    )
        ordered = _topological(name, layer_list, tensors)
        inputs = tuple(inputs)
        sampled = computed_from(ordered, inputs)
        full = {
            t.name: Tensor(
                t.name, t.shape, t.dtype, t.bytes, t.producer, tuple(consumers[t.name]),
                t.shape_known, t.name in sampled,
            )
            for t in tensors.values()
        }
        return cls(
            name=name,
            layers={layer.name: layer for layer in ordered},
            tensors=full,
            inputs=inputs,
            outputs=tuple(outputs),
            **extra,  # type: ignore[arg-type]
        )

    def __len__(self) -> int:
        return len(self.layers)

    def per_sample(self, layer: Layer) -> bool:
        """`layer` computes on the raw inputs, once per sample of a batch (see `computed_from`
        for the layers that run once per step)."""
        return any(self.tensors[t].per_sample for t in layer.inputs)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers.values())

    def activations(self) -> Iterator[Tensor]:
        """Tensors produced by a layer and read by at least one other: the crossing candidates."""
        for t in self.tensors.values():
            if t.producer is not None and t.consumers:
                yield t

    def edges(self) -> Iterator[tuple[str, str, str]]:
        """(producer, consumer, tensor) for every data edge between layers."""
        for t in self.activations():
            for c in t.consumers:
                assert t.producer is not None
                yield t.producer, c, t.name

    def raw_data_readers(self) -> dict[str, str]:
        """Layers that must stay on the device because they read raw data, with the reason.

        Raw data never leaves the device in any disguise: a tensor computed from raw inputs by
        parameter-free or elementwise layers only (a Reshape, Cast or Unsqueeze of the token
        ids, a mask built from the attention mask, Keras' rescaling and normalisation of the
        pixels) is still raw data, so it may not cross, and every layer that reads it stays on
        the device. A layer that mixes it with trainable weights (`Layer.hides_raw_data`: an
        embedding lookup, a convolution) turns raw data into activations; so does mixing in
        any other input computed from the model's inputs, unless the layer only copies
        elements (`_COPIES`: a concatenation of raw features with embeddings, a `Where` picking
        raw values) and reads raw data of its output's element type (its values, not only
        indices, a condition or sizes: a shape joined to an activation's is no raw data
        copied). A tensor weights alone make (no model input reaches it:
        `Tensor.per_sample` false) is a weight here, not such an input: raw data times
        `exp(log_scale)` is still raw data.
        """
        raw = {t for t in self.inputs if not self.tensors[t].empty}
        sizes: set[str] = set()  # raw tensors that hold only sizes of raw data
        reasons: dict[str, str] = {}
        for layer in self:
            read = [t for t in layer.inputs if t in raw]
            if layer.reads_input or any(t in self.inputs for t in read):
                reasons[layer.name] = "reads raw input"
            elif read:
                reasons[layer.name] = "reads raw data (no layer on its path mixes it with " \
                                      "trainable weights)"
            if not read:
                continue
            data = [t for t in layer.inputs if self.tensors[t].per_sample]
            made = sum(self.tensors[o].bytes / ELEMENT_BYTES.get(self.tensors[o].dtype, 4)
                       for o in layer.outputs)
            if layer.hides_raw_data(len(data) < len(layer.inputs), made):
                continue
            kinds = {self.tensors[o].dtype for o in layer.outputs} | {"undefined"}
            if len(read) == len(data) or (layer.op in _COPIES and any(
                    t not in sizes and self.tensors[t].dtype in kinds for t in read)):
                raw.update(layer.outputs)
                if layer.op in _SIZES or sizes.issuperset(read):
                    sizes.update(layer.outputs)
        return reasons

    def input_layers(self) -> list[str]:
        """Layers that read a raw model input: they stay on the device."""
        return [layer.name for layer in self if layer.reads_input]

    @property
    def total_flops(self) -> float:
        return sum(layer.flops for layer in self)

    @property
    def total_macs(self) -> float:
        return sum(layer.macs for layer in self)

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self)


def computed_from(layers: Iterable[Layer], sources: Iterable[str]) -> set[str]:
    """The tensors `layers` (in topological order) compute from `sources`, and `sources`.

    What depends on the raw inputs is computed, kept and sent once per sample of a batch; what
    weights and constants alone make (an LSTM's weights reordered into ONNX's gate order,
    Swin's relative-position bias looked up in its table, a weight norm) is made once per
    training step, whatever the batch: its work and its bytes do not scale with it.
    """
    reached = set(sources)
    for layer in layers:
        if reached.intersection(layer.inputs):
            reached.update(layer.outputs)
    return reached


def _topological(name: str, layers: list[Layer], tensors: Mapping[str, Tensor]) -> list[Layer]:
    """Kahn's algorithm, ties broken by file order so the result is stable and familiar (the
    given order, when every layer already follows the producers of its inputs)."""
    index = {layer.name: i for i, layer in enumerate(layers)}
    if all(index[p] < i for i, layer in enumerate(layers) for t in layer.inputs
           if (p := tensors[t].producer) is not None):
        return layers
    indegree = dict.fromkeys(index, 0)
    succ: dict[str, set[str]] = {n: set() for n in index}
    for layer in layers:
        for t in layer.inputs:
            producer = tensors[t].producer
            if producer is not None and layer.name not in succ[producer]:
                succ[producer].add(layer.name)
                indegree[layer.name] += 1
    heap = [index[n] for n, d in indegree.items() if d == 0]
    heapq.heapify(heap)
    ordered: list[Layer] = []
    while heap:
        layer = layers[heapq.heappop(heap)]
        ordered.append(layer)
        for w in succ[layer.name]:
            indegree[w] -= 1
            if indegree[w] == 0:
                heapq.heappush(heap, index[w])
    if len(ordered) != len(layers):
        stuck = sorted((n for n, d in indegree.items() if d > 0), key=index.__getitem__)
        raise ModelError(
            f"model {name!r} has a cycle: {len(stuck)} layers depend on each other "
            f"(first: {stuck[0]!r})"
        )
    return ordered
