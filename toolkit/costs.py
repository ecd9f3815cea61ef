"""LayerGraph + scenario -> CostGraph: per-layer training delays and per-tensor crossing delays.

The estimate is a roofline per layer and pass, for one batch of `b` samples:

    t_pass = max(FLOPs / (peak x efficiency), bytes / (bandwidth x memory_efficiency)) + overhead

with `efficiency` chosen by op class (`op_class`): matmul_efficiency for Gemm/MatMul/Einsum,
conv_efficiency for dense convolutions, vector_efficiency for everything else (grouped and
depthwise convolutions included). Forward FLOPs are b·F; backward FLOPs are 2·b·F for layers with
trainable weights (gradients for inputs and weights) and b·F without. Bytes moved are the
activations in and out (b per sample) plus the parameters (read once per pass; the backward
pass also writes their gradients). `device_ms` and `server_ms` are forward + backward.

Crossing a tensor of A bytes per sample costs b·A·8/uplink (activations up) + b·A·8/downlink
(gradients down) + 2·latency, charged once however many consumers it has. In mixed precision
(`fp16`) the peak is the FP16 rate and float activations move at 2 bytes per element.

Split-federated mode (`sync_every=k`): device-side parameters are sent up and down once every
k iterations, and that cost is spread over the device layers that own the parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from toolkit.costgraph import CostGraph, CostTensor
from toolkit.errors import ScenarioError
from toolkit.graph import Layer, LayerGraph
from toolkit.measure import MeasuredProfile
from toolkit.profiles import Processor

PRECISIONS = ("fp32", "fp16")

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

    def __post_init__(self) -> None:
        if self.uplink_bps <= 0 or self.downlink_bps <= 0:
            raise ScenarioError("uplink and downlink rates must be greater than zero")
        if self.latency_ms < 0:
            raise ScenarioError("latency cannot be negative")
        if self.batch < 1:
            raise ScenarioError(f"batch size must be at least 1, not {self.batch}")
        if self.precision not in PRECISIONS:
            raise ScenarioError(f"precision must be one of {', '.join(PRECISIONS)}")
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
    'jetson-nano+rtx-3090 200M/400M 3ms b32 fp32'."""
    def rate(bps: float) -> str:
        return f"{bps / 1e6:g}M"

    return (f"{scenario['device']}+{scenario['server']} {rate(scenario['uplink_bps'])}/"
            f"{rate(scenario['downlink_bps'])} {scenario['latency_ms']:g}ms "
            f"b{scenario['batch']} {scenario.get('precision', 'fp32')}")


def _precision_bytes(scenario: Scenario, nbytes: float, dtype_is_float: bool = True) -> float:
    return nbytes / 2 if scenario.precision == "fp16" and dtype_is_float else nbytes


_GROUPS = re.compile(r"(?:^|;)group=(\d+)")


def op_class(layer: Layer) -> str:
    """'matmul' (Gemm, MatMul, Einsum, RNNs), 'conv' (dense convolutions) or 'vector' (the
    rest, grouped and depthwise convolutions included: they run like per-channel stencils)."""
    if layer.macs <= 0:
        return "vector"
    if layer.op in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv"):
        groups = _GROUPS.search(layer.attrs)
        return "vector" if groups and int(groups.group(1)) > 1 else "conv"
    return "matmul"


def efficiency(proc: Processor, op_class_name: str) -> float:
    return {"matmul": proc.matmul_efficiency, "conv": proc.conv_efficiency,
            "vector": proc.vector_efficiency}[op_class_name]


def _rates(layer: Layer, proc: Processor, precision: str) -> tuple[float, float]:
    """(FLOP/s, byte/s) this layer sustains on `proc`."""
    peak = (proc.fp16_tflops if precision == "fp16" else proc.fp32_tflops) * 1e12
    return peak * efficiency(proc, op_class(layer)), proc.memory_gbps * 1e9 * proc.memory_efficiency


def forward_ms(layer: Layer, proc: Processor, precision: str = "fp32", batch: int = 1) -> float:
    """Forward time of one layer for `batch` samples (what a measured forward is compared to)."""
    flop_rate, byte_rate = _rates(layer, proc, precision)
    scale = 0.5 if precision == "fp16" else 1.0
    moved = scale * ((layer.in_bytes + layer.out_bytes) * batch + layer.param_bytes)
    compute = max(layer.flops * batch / flop_rate, moved / byte_rate)
    return (compute + proc.layer_overhead_us * 1e-6) * 1e3


def layer_ms(layer: Layer, proc: Processor, scenario: Scenario) -> float:
    """Forward + backward time of one layer for one batch on `proc`, in milliseconds."""
    flop_rate, byte_rate = _rates(layer, proc, scenario.precision)
    b = scenario.batch
    activations = _precision_bytes(scenario, layer.in_bytes + layer.out_bytes) * b
    weights = _precision_bytes(scenario, layer.param_bytes)
    fwd_flops = layer.flops * b
    bwd_flops = fwd_flops * (2.0 if layer.trainable else 1.0)
    fwd = max(fwd_flops / flop_rate, (activations + weights) / byte_rate)
    bwd = max(bwd_flops / flop_rate, (2 * activations + 2 * weights) / byte_rate)
    overhead_s = proc.layer_overhead_us * 1e-6 * 2
    return (fwd + bwd + overhead_s) * 1e3


def measured_ms(layer: Layer, profile: MeasuredProfile, batch: int) -> float:
    """Measured forward (+ measured backward, else the same backward/forward ratio as the
    roofline's FLOPs) for `layer`, scaled linearly from the profile's batch to `batch`."""
    fwd = profile.forward_ms.get(layer.name, 0.0)
    bwd = profile.backward_ms.get(layer.name, fwd * (2.0 if layer.trainable else 1.0))
    return (fwd + bwd) * batch / profile.batch


def _side_ms(graph: LayerGraph, proc: Processor, scenario: Scenario) -> list[float]:
    profile = next((p for p in scenario.measured if p.processor == proc.name), None)
    if profile is None:
        return [layer_ms(layer, proc, scenario) for layer in graph]
    profile.check_model(graph)
    return [measured_ms(layer, profile, scenario.batch) for layer in graph]


def crossing_ms(nbytes: float, scenario: Scenario, is_float: bool = True) -> float:
    """Activations up, gradients down, one latency each way."""
    bits = _precision_bytes(scenario, nbytes, is_float) * scenario.batch * 8
    transfer_s = bits / scenario.uplink_bps + bits / scenario.downlink_bps
    return transfer_s * 1e3 + 2 * scenario.latency_ms


def sync_ms(layer: Layer, scenario: Scenario) -> float:
    """Split-federated: this layer's parameters up and down once per round, per iteration."""
    if not scenario.sync_every or not layer.param_bytes:
        return 0.0
    bits = _precision_bytes(scenario, layer.param_bytes) * 8
    return (bits / scenario.uplink_bps + bits / scenario.downlink_bps) * 1e3 / scenario.sync_every


def build_cost_graph(graph: LayerGraph, scenario: Scenario) -> CostGraph:
    """Every layer's device/server delay and every activation's crossing delay."""
    layers = list(graph)
    index = {layer.name: i for i, layer in enumerate(layers)}
    tensors = []
    for t in graph.activations():
        assert t.producer is not None
        is_float = t.dtype.startswith(("float", "bfloat", "double"))
        tensors.append(CostTensor(
            t.name, index[t.producer], tuple(index[c] for c in t.consumers), float(t.bytes),
            crossing_ms(t.bytes, scenario, is_float),
        ))
    raw = sum(graph.tensors[name].bytes for name in graph.inputs)
    return CostGraph(
        model=graph.name,
        names=[layer.name for layer in layers],
        ops=[layer.op for layer in layers],
        device_ms=[
            t + sync_ms(x, scenario)
            for t, x in zip(_side_ms(graph, scenario.device, scenario), layers, strict=True)
        ],
        server_ms=_side_ms(graph, scenario.server, scenario),
        pinned=[layer.reads_input for layer in layers],
        tensors=tensors,
        scenario=scenario.to_dict(),
        flops=[layer.flops for layer in layers],
        macs=[layer.macs for layer in layers],
        params=[layer.params for layer in layers],
        raw_upload_ms=raw * scenario.batch * 8 / scenario.uplink_bps * 1e3 + scenario.latency_ms,
    )
