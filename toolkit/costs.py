"""LayerGraph + scenario -> CostGraph: per-layer training delays, per-tensor crossing delays and
the per-iteration message terms of one split-learning iteration (DESIGN.md, "The training-delay
model").

Compute, per layer and pass, for one batch of `b` samples, is a roofline (Williams, Waterman
and Patterson, CACM 2009):

    t_pass = max(FLOPs / (peak x efficiency), bytes / (bandwidth x memory_efficiency)) + overhead

with `efficiency` chosen by op class (`op_class`): matmul_efficiency for Gemm/MatMul/Einsum,
conv_efficiency for dense convolutions, vector_efficiency for everything else (grouped and
depthwise convolutions included), and `peak` the processor's fp16 rate under mixed precision or
where the layer computes on 16-bit floats (`Layer.half`: a file in fp16 or bf16 trains in it
whatever the scenario says), its fp32 rate otherwise. Forward FLOPs are b·F; backward FLOPs are
2·b·F for layers with trainable weights (gradients for inputs and weights) and b·F without
(Kaplan et al. 2020, the 2x/4x forward rule). Bytes moved are the activations in and out (b per
sample) plus the parameters (read once per pass; the backward pass also writes their gradients).
A layer that computes on weights alone (an LSTM's weights reordered into ONNX's gate order,
Swin's relative-position bias looked up in its table) runs once per step: b = 1 for it and for
what it makes (`graph.computed_from`), sent or kept.

The optimizer step is a memory-bound term on the layers that own parameters: a fused update
reads the parameters and gradients and writes the parameters (3 words per parameter), and each
optimizer state buffer is read and written once more (SGD 0 buffers, SGD with momentum 1,
Adam 2: torch.optim's update rules), each word a weight's bytes as the file stores it
(`Layer.weight_word`): 4 in an fp32 file at either precision (torch.amp keeps master weights,
gradients and state fp32), 2 in an fp16 file (trained in fp16, as its layers compute).

`device_ms` and `server_ms` are forward + backward + optimizer step.

Bytes follow each tensor's own dtype: mixed precision (`fp16`) carries float activations at 2
bytes per element (fp32 and float64 shrink, fp16/bf16 stay) and leaves integer and bool tensors
as they are. A tensor crossing the cut costs b·A·8/uplink for its activations and, only when
it is a float tensor (the only kind autograd returns a gradient for), b·A·8/downlink for the
gradient, once however many consumers it has.

Per iteration, all tensors crossing one way travel in one message: `latency_ms` = 2·latency is
paid once when anything crosses. The server computes the loss in vanilla split learning, so
when it holds a layer producing a model output the labels go up once: b·label_bytes·8/uplink.

Raw data never leaves the device: layers reading a raw input stay there, and so do layers
reading a tensor computed from raw inputs by parameter-free layers only (still raw data,
`LayerGraph.raw_data_readers`).

Split-federated mode (`sync_every=k`): device-side parameters are sent up and down once every
k iterations, and that cost is spread over the device layers that own the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from toolkit.collector import collector_paused
from toolkit.costgraph import CostGraph, CostTensor
from toolkit.errors import ScenarioError
from toolkit.graph import ELEMENT_BYTES, Layer, LayerGraph, Tensor
from toolkit.measured import MeasuredProfile
from toolkit.memory import model_memory
from toolkit.ops import CONVOLUTIONS
from toolkit.profiles import Processor
from toolkit.tiergraph import TierGraph

PRECISIONS = ("fp32", "fp16")
OPTIMIZER_STATES = {"sgd": 0, "momentum": 1, "adam": 2}
"""Optimizer state buffers per parameter (torch.optim: SGD, SGD with momentum, Adam)."""
LABEL_BYTES = 8
"""Default label size per sample: one int64 class index."""

BUILTIN_SCENARIOS: dict[str, dict[str, str]] = {
    "nano-3090-wifi5": {"device": "jetson-nano", "server": "rtx-3090", "link": "wifi5"},
    "nano-3090-lte": {"device": "jetson-nano", "server": "rtx-3090", "link": "lte"},
    "orin-a100-5g": {"device": "jetson-agx-orin", "server": "a100", "link": "5g"},
    "xavier-a100-wifi6": {"device": "jetson-xavier-nx", "server": "a100", "link": "wifi6"},
    "pi4-cpu-ethernet": {"device": "raspberry-pi-4", "server": "cpu-server", "link": "ethernet"},
    "phone-h100-5g": {"device": "midrange-phone", "server": "h100", "link": "5g"},
}
"""Named scenarios covering weak/strong devices, GPU/CPU servers and slow/fast links."""


@dataclass(frozen=True)
class Scenario:
    device: Processor
    server: Processor
    uplink_bps: float
    downlink_bps: float
    latency_ms: float
    batch: int = 32
    precision: str = "fp32"
    link: str | None = None
    sync_every: int | None = None
    measured: tuple[MeasuredProfile, ...] = ()
    optimizer: str = "sgd"
    label_bytes: float = LABEL_BYTES

    def __post_init__(self) -> None:
        if not (0 < self.uplink_bps < math.inf and 0 < self.downlink_bps < math.inf):
            raise ScenarioError("uplink and downlink rates must be finite and greater than zero")
        if not 0 <= self.latency_ms < math.inf:
            raise ScenarioError("latency must be finite and not negative")
        if self.batch < 1:
            raise ScenarioError(f"batch size must be at least 1, not {self.batch}")
        if self.precision not in PRECISIONS:
            raise ScenarioError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.optimizer not in OPTIMIZER_STATES:
            raise ScenarioError(f"optimizer must be one of {', '.join(OPTIMIZER_STATES)}")
        if not 0 <= self.label_bytes < math.inf:
            raise ScenarioError("label bytes must be finite and not negative")
        if self.sync_every is not None and self.sync_every < 1:
            raise ScenarioError("--sync-every must be at least 1 iteration")
        for profile in self.measured:
            if profile.processor not in (self.device.name, self.server.name):
                raise ScenarioError(
                    f"measured profile is for processor {profile.processor!r}, but the scenario "
                    f"runs on {self.device.name!r} and {self.server.name!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        """The scenario as the JSON contract writes it."""
        out: dict[str, Any] = {
            "device": self.device.name, "server": self.server.name,
            "uplink_bps": self.uplink_bps, "downlink_bps": self.downlink_bps,
            "latency_ms": self.latency_ms, "batch": self.batch, "precision": self.precision,
            "optimizer": self.optimizer, "label_bytes": self.label_bytes,
        }
        if self.link:
            out["link"] = self.link
        if self.sync_every:
            out["sync_every"] = self.sync_every
        if self.measured:
            out["measured"] = sorted(p.processor for p in self.measured)
        return out


def scenario_key(scenario: dict[str, Any]) -> str:
    """A short readable name of a scenario, used to find its partitions in Neo4j:
    'jetson-nano+rtx-3090 200M/400M 3ms b32 fp32' (optimizer appended unless SGD), or for a
    tier chain its tiers and links in order."""
    def rate(bps: float) -> str:
        return f"{bps / 1e6:g}M"

    optimizer = scenario.get("optimizer", "sgd")
    settings = (f"b{scenario['batch']} {scenario.get('precision', 'fp32')}"
                + ("" if optimizer == "sgd" else f" {optimizer}"))
    if "tiers" in scenario:  # a chain: 'device:jetson-nano>edge:rtx-3090 400M/700M 2ms ...'
        tiers = ">".join(f"{t['name']}:{t['processor']}" for t in scenario["tiers"])
        links = ",".join(f"{rate(x['uplink_bps'])}/{rate(x['downlink_bps'])} "
                         f"{x['latency_ms']:g}ms" for x in scenario["links"])
        return f"{tiers} {links} {settings}"
    return (f"{scenario['device']}+{scenario['server']} {rate(scenario['uplink_bps'])}/"
            f"{rate(scenario['downlink_bps'])} {scenario['latency_ms']:g}ms {settings}")


def tensor_bytes(tensor: Tensor, precision: str) -> float:
    """Bytes per sample of `tensor` as training moves it: float tensors at 2 bytes per element
    under mixed precision, everything else as stored."""
    if precision != "fp16" or not tensor.floating:
        return float(tensor.bytes)
    return tensor.bytes / ELEMENT_BYTES[tensor.dtype] * 2


def param_bytes(layer: Layer, precision: str) -> float:
    """Bytes of a layer's parameters as a pass reads them (fp16 copies under mixed precision)."""
    return float(layer.reads_weights * 2) if precision == "fp16" else float(layer.param_bytes)


def activation_bytes(graph: LayerGraph, layer: Layer, precision: str) -> float:
    """Per-sample bytes of a layer's activations in and out, each in its own dtype."""
    if precision == "fp32":
        return float(layer.in_bytes + layer.out_bytes)
    tensors = graph.tensors
    return sum(tensor_bytes(tensors[t], precision) for t in (*layer.inputs, *layer.outputs)
               if t in tensors)


def op_class(layer: Layer) -> str:
    """'matmul' (Gemm, MatMul, Einsum, RNNs), 'conv' (dense convolutions) or 'vector' (the
    rest, grouped and depthwise convolutions included: they run like per-channel stencils)."""
    if layer.macs <= 0:
        return "vector"
    if layer.op in CONVOLUTIONS:
        return "vector" if layer.groups > 1 else "conv"
    return "matmul"


def efficiency(proc: Processor, op_class_name: str) -> float:
    return {"matmul": proc.matmul_efficiency, "conv": proc.conv_efficiency,
            "vector": proc.vector_efficiency}[op_class_name]


def _rates(layer: Layer, proc: Processor, precision: str) -> tuple[float, float]:
    """(FLOP/s, byte/s) this layer sustains on `proc`."""
    peak = float(peak_flops(proc, precision, layer.half))
    return peak * efficiency(proc, op_class(layer)), _byte_rate(proc)


def peak_flops(proc: Processor, precision: str, half: Any) -> Any:
    """FLOP/s at `proc`'s fp16 peak under mixed precision or for a layer computing on 16-bit
    floats (`half`, `Layer.half`: an fp16 file), at its fp32 peak otherwise. `half` a bool or
    an array of them (the calibration's estimate of every layer at once)."""
    otherwise = proc.fp16_tflops if precision == "fp16" else proc.fp32_tflops
    return np.where(half, proc.fp16_tflops, otherwise) * 1e12


def _byte_rate(proc: Processor) -> float:
    return proc.memory_gbps * 1e9 * proc.memory_efficiency


def pass_ms(flops: Any, moved: Any, flop_rate: Any, byte_rate: Any, overhead_us: float) -> Any:
    """The roofline of one pass, in ms: FLOPs or bytes, whichever takes longer, plus the
    per-op overhead. Floats or numpy arrays (the calibration fits it over whole models)."""
    return (np.maximum(flops / flop_rate, moved / byte_rate) + overhead_us * 1e-6) * 1e3


def forward_ms(layer: Layer, proc: Processor, precision: str = "fp32", batch: int = 1,
               activations: float | None = None) -> float:
    """Forward time of one layer for `batch` samples (what a measured forward is compared to).
    `activations`: per-sample bytes in and out at `precision` (default: as stored, fp32)."""
    flop_rate, byte_rate = _rates(layer, proc, precision)
    act = float(layer.in_bytes + layer.out_bytes) if activations is None else activations
    moved = act * batch + param_bytes(layer, precision)
    return float(pass_ms(layer.flops * batch, moved, flop_rate, byte_rate,
                         proc.layer_overhead_us))


def layer_ms(layer: Layer, proc: Processor, scenario: Scenario,
             activations: float | None = None) -> float:
    """Forward + backward time of one layer for one batch on `proc`, in milliseconds.
    `activations`: per-sample bytes in and out at the scenario's precision (default: as
    stored, exact at fp32; `activation_bytes` gives them for fp16)."""
    flop_rate, byte_rate = _rates(layer, proc, scenario.precision)
    act = float(layer.in_bytes + layer.out_bytes) if activations is None else activations
    return float(_train_ms(layer.flops, act, param_bytes(layer, scenario.precision),
                           layer.trainable, flop_rate, byte_rate, proc, scenario.batch))


def _train_ms(flops: Any, activations: Any, weights: Any, trainable: Any, flop_rate: Any,
              byte_rate: float, proc: Processor, batch: Any) -> Any:
    """`layer_ms` of one layer (floats) or of every layer at once (numpy arrays): the forward
    reads weights and activations; the backward reads and writes both, and costs twice the
    forward's FLOPs where there are weight gradients to compute, once otherwise."""
    fwd_flops = flops * batch
    bwd_flops = fwd_flops * np.where(trainable, 2.0, 1.0)
    moved = activations * batch
    overhead = proc.layer_overhead_us
    return (pass_ms(fwd_flops, moved + weights, flop_rate, byte_rate, overhead)
            + pass_ms(bwd_flops, 2 * moved + 2 * weights, flop_rate, byte_rate, overhead))


def step_ms(layer: Layer, proc: Processor, optimizer: str) -> float:
    """The optimizer step for this layer's parameters: memory-bound (module docstring)."""
    return float(_step_ms(layer.params * layer.weight_word, proc, optimizer))


def _step_ms(param_bytes: Any, proc: Processor, optimizer: str) -> Any:
    """`step_ms` of the bytes of the parameters a layer owns, or of an array of them."""
    words = 3 + 2 * OPTIMIZER_STATES[optimizer]
    return param_bytes * words / _byte_rate(proc) * 1e3


def measured_ms(layer: Layer, profile: MeasuredProfile, batch: int) -> float:
    """Measured forward (+ measured backward, else the same backward/forward ratio as the
    roofline's FLOPs) for `layer`, scaled linearly from the profile's batch to `batch`."""
    fwd = profile.forward_ms.get(layer.name, 0.0)
    bwd = profile.backward_ms.get(layer.name, fwd * (2.0 if layer.trainable else 1.0))
    return (fwd + bwd) * batch / profile.batch


class _LayerColumns(NamedTuple):
    """What both sides' delays read of every layer, gathered once per cost graph."""

    layers: list[Layer]
    owned_bytes: np.ndarray  # the bytes of the parameters each owns (its optimizer step)
    samples: np.ndarray  # the batch for a layer on the raw inputs' path, else 1 (per step)
    flops: np.ndarray
    activations: np.ndarray  # per-sample bytes in and out, at the scenario's precision
    weights: np.ndarray  # parameter bytes a pass reads
    trainable: np.ndarray
    half: np.ndarray
    classes: list[str]  # op_class


def _columns(graph: LayerGraph, scenario: Scenario) -> _LayerColumns:
    layers = list(graph)
    return _LayerColumns(
        layers,
        np.array([x.params * x.weight_word for x in layers], dtype=float),
        np.array([scenario.batch if graph.per_sample(x) else 1 for x in layers]),
        np.array([x.flops for x in layers], dtype=float),
        np.array([activation_bytes(graph, x, scenario.precision) for x in layers], dtype=float),
        np.array([param_bytes(x, scenario.precision) for x in layers], dtype=float),
        np.array([x.trainable for x in layers], dtype=bool),
        np.array([x.half for x in layers], dtype=bool),
        [op_class(x) for x in layers],
    )


def _side_ms(graph: LayerGraph, columns: _LayerColumns, proc: Processor,
             scenario: Scenario) -> list[float]:
    """Per layer: forward + backward (measured or roofline) + optimizer step on `proc`."""
    steps = _step_ms(columns.owned_bytes, proc, scenario.optimizer)
    profile = next((p for p in scenario.measured if p.processor == proc.name), None)
    if profile is None:
        rate = {name: efficiency(proc, name) for name in ("matmul", "conv", "vector")}
        passes = _train_ms(
            columns.flops, columns.activations, columns.weights, columns.trainable,
            peak_flops(proc, scenario.precision, columns.half)
            * np.array([rate[c] for c in columns.classes]),
            _byte_rate(proc), proc, columns.samples)
    else:
        profile.check_model(graph)
        passes = np.array([measured_ms(x, profile, int(n)) for x, n in
                           zip(columns.layers, columns.samples, strict=True)])
    return (passes + steps).tolist()  # type: ignore[no-any-return]


def transfer_ms(nbytes: float, scenario: Scenario, up: bool, per_sample: bool = True) -> float:
    """One batch of a tensor one way (`nbytes` per sample as it travels, `tensor_bytes`; once
    per step for one that weights alone make: `Tensor.per_sample`) over the uplink or the
    downlink; no latency (that is per message)."""
    return nbytes * (scenario.batch if per_sample else 1) * 8 / (
        scenario.uplink_bps if up else scenario.downlink_bps) * 1e3


def crossing_ms(nbytes: float, scenario: Scenario, is_float_tensor: bool = True,
                per_sample: bool = True) -> float:
    """Activations up and, for a float tensor, its gradient down. Latency is per message:
    `per_iteration_latency_ms`."""
    down = transfer_ms(nbytes, scenario, False, per_sample) if is_float_tensor else 0.0
    return transfer_ms(nbytes, scenario, True, per_sample) + down


def per_iteration_latency_ms(scenario: Scenario) -> float:
    """One message up and one down per iteration when anything crosses."""
    return 2 * scenario.latency_ms


def labels_ms(scenario: Scenario) -> float:
    """The labels up to the server that computes the loss, once per iteration."""
    return scenario.batch * scenario.label_bytes * 8 / scenario.uplink_bps * 1e3


def sync_ms(layer: Layer, scenario: Scenario) -> float:
    """Split-federated: this layer's parameters up and down once per round, per iteration."""
    if not scenario.sync_every or not layer.params:
        return 0.0
    bits = layer.params * (2 if scenario.precision == "fp16" else layer.weight_word) * 8
    return (bits / scenario.uplink_bps + bits / scenario.downlink_bps) * 1e3 / scenario.sync_every


@collector_paused
def build_cost_graph(graph: LayerGraph, scenario: Scenario) -> CostGraph:
    """Every layer's device/server delay, every activation's crossing delay, the message terms
    and the raw-data pins."""
    layers = list(graph)
    index = {layer.name: i for i, layer in enumerate(layers)}
    tensors = []
    for t in graph.activations():
        assert t.producer is not None
        floating = t.floating
        tensors.append(CostTensor(
            t.name, index[t.producer], tuple(index[c] for c in t.consumers), float(t.bytes),
            crossing_ms(tensor_bytes(t, scenario.precision), scenario, floating, t.per_sample),
            floating, t.per_sample,
        ))
    raw = sum(tensor_bytes(graph.tensors[name], scenario.precision) for name in graph.inputs)
    reasons = graph.raw_data_readers()
    outputs = sorted({index[graph.tensors[o].producer] for o in graph.outputs  # type: ignore[index]
                      if graph.tensors[o].producer is not None})
    memory = model_memory(graph, scenario.batch, OPTIMIZER_STATES[scenario.optimizer],
                          {name: tensor_bytes(t, scenario.precision)
                           for name, t in graph.tensors.items()}).on(scenario.device.backend)
    columns = _columns(graph, scenario)
    return CostGraph(
        model=graph.name,
        names=[layer.name for layer in layers],
        ops=[layer.op for layer in layers],
        device_ms=[
            t + sync_ms(x, scenario) for t, x in
            zip(_side_ms(graph, columns, scenario.device, scenario), layers, strict=True)
        ],
        server_ms=_side_ms(graph, columns, scenario.server, scenario),
        pinned=[layer.name in reasons for layer in layers],
        tensors=tensors,
        scenario=scenario.to_dict(),
        flops=[layer.flops for layer in layers],
        macs=[layer.macs for layer in layers],
        params=[layer.params for layer in layers],
        raw_upload_ms=raw * scenario.batch * 8 / scenario.uplink_bps * 1e3 + scenario.latency_ms,
        latency_ms=per_iteration_latency_ms(scenario),
        labels_ms=labels_ms(scenario),
        outputs=outputs,
        pin_reasons=[reasons.get(layer.name) for layer in layers],
        notes=list(graph.notes),
        memory=memory,
        server_memory=memory.on(scenario.server.backend),
    )


def build_tier_graph(graph: LayerGraph, names: Sequence[str],
                     boundaries: Sequence[Scenario]) -> TierGraph:
    """The cost graph of a tier chain: `boundaries[b]` is the two-tier scenario of boundary b
    (its device the processor of tier b, its server that of tier b+1, its uplink the rate
    towards the later tier). Every term comes from that boundary's `build_cost_graph`, so two
    tiers are today's objective exactly and each formula has one implementation: tier 0's
    compute (split-federated sync included) from boundary 0's device side, tier b+1's from
    boundary b's server side, each boundary's crossing, latency and labels from its own link.

    Raw data stays on tier 0. A chain that ends on the tier it starts from (named alike, as
    the U-shape device -> server -> device) keeps the model's outputs on its last tier, where
    the labels already are: no labels travel.
    """
    if len(names) != len(boundaries) + 1 or len(names) < 2:
        raise ScenarioError("a tier chain names k >= 2 tiers and k - 1 links between them")
    per_boundary = [build_cost_graph(graph, s) for s in boundaries]
    first = per_boundary[0]
    k = len(names)
    u_shape = names[-1] == names[0]
    lowest = np.zeros(len(first), dtype=np.int64)
    if u_shape:
        lowest[first.outputs] = k - 1
    scenario = {
        "tiers": [{"name": name, "processor": (boundaries[0].device if t == 0 else
                                               boundaries[t - 1].server).name}
                  for t, name in enumerate(names)],
        "links": [{"uplink_bps": s.uplink_bps, "downlink_bps": s.downlink_bps,
                   "latency_ms": s.latency_ms, **({"link": s.link} if s.link else {})}
                  for s in boundaries],
        **{key: value for key, value in first.scenario.items()
           if key in ("batch", "precision", "optimizer", "label_bytes", "sync_every")},
    }
    return TierGraph(
        first, list(names),
        np.column_stack([first.device_arr] + [c.server_arr for c in per_boundary]),
        np.column_stack([c.tensor_crossing for c in per_boundary]),
        np.array([c.latency_ms for c in per_boundary]),
        np.array([0.0 if u_shape else c.labels_ms for c in per_boundary]),
        lowest, np.where(np.asarray(first.pinned, dtype=bool), 0, k - 1), scenario,
        [first.memory] + [c.server_memory for c in per_boundary])
