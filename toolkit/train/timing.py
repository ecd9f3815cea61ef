"""Per-layer times of the training executor itself, on this machine, as a measured profile.

What `splitcut train` runs is the executor, so predicting its compute terms from per-layer times
measured in the same executor isolates the link and system parts of the delay model (issue 15's
column "measured per layer"). Forward: each node timed as it runs. Backward: a hook on every
node's float outputs fires when that output's gradient is complete; the time from one such event
to the next is the backward of the node whose gradient came in first (exact on a chain, an
attribution within the same total on a DAG).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from toolkit.graph import LayerGraph
from toolkit.measured import MeasuredProfile, layers_sha, sizes_sha, this_machine
from toolkit.onnx import layer_names, load_external_data, load_model
from toolkit.train.executor import OnnxModule, synchronize, trainable_initializers
from toolkit.train.peer import (
    label_kind,
    loss_of,
    score_kind,
    synthetic_inputs,
    synthetic_labels,
)
from toolkit.train.session import input_specs, loss_output


def executor_profile(path: Path, graph: LayerGraph, processor: str, batch: int = 1,
                     repeats: int = 5, warmup: int = 2, threads: int = 1,
                     device: str = "cpu", dims: Mapping[str, int] | None = None,
                     source_model: str = "") -> MeasuredProfile:
    """Mean per-layer forward and backward times of one training step in the executor (means,
    not medians: under a CPU quota the throttling stalls land on different layers each run,
    and only means add up to the step's time). On a GPU (`device="cuda"`) each layer is timed
    to the end of its GPU work: the step is synchronised after every layer, so the times add
    up to a step that overlaps nothing (what a small batch, bound by launching kernels,
    nearly is). `dims`: the symbolic dimensions `graph` was read with."""
    torch.set_num_threads(threads)
    whole = load_model(path)
    load_external_data(whole, path.parent)
    module = OnnxModule(whole, trainable_initializers(whole.graph)).to(device)
    names = layer_names(whole.graph)
    layer_of = [names[i] for i, n in enumerate(whole.graph.node)
                if not (n.op_type == "Identity" and n.input[0] in module.weight_names)]
    specs = input_specs(whole, batch, dict(dims or {}))
    feeds = {n: x.to(device) for n, x in synthetic_inputs(specs, seed=0).items()}
    output = loss_output(graph)
    with torch.no_grad():
        probe = module(feeds)[output]
    classes, shape = label_kind(probe)
    scores = score_kind(probe, classes)
    labels = synthetic_labels(shape, classes, 0).to(device)
    layers = {layer.name for layer in graph}
    forward: dict[str, list[float]] = {}
    backward: dict[str, list[float]] = {}
    for run in range(warmup + repeats):
        fwd, bwd = _one_step(module, feeds,
                             lambda out: loss_of(out[output], labels, classes, scores), layer_of)
        if run >= warmup:
            for name, ms in fwd.items():
                forward.setdefault(name, []).append(ms)
                backward.setdefault(name, []).append(bwd.get(name, 0.0))
    return MeasuredProfile(
        model=graph.name, processor=processor, batch=batch,
        source=f"splitcut training executor, {threads} thread(s)"
               + (f", on {device}" if device != "cpu" else "") + f", mean of {repeats}",
        layers_sha=layers_sha(graph), sizes_sha=sizes_sha(graph),
        forward_ms={n: statistics.fmean(v) for n, v in forward.items() if n in layers},
        backward_ms={n: statistics.fmean(v) for n, v in backward.items() if n in layers},
        source_model=source_model or str(path), machine=this_machine(), dims=dict(dims or {}),
    )



def _one_step(module: OnnxModule, feeds: dict[str, torch.Tensor],
              loss: Callable[[dict[str, torch.Tensor]], torch.Tensor], layer_of: list[str],
              ) -> tuple[dict[str, float], dict[str, float]]:
    """One forward and backward pass: per layer forward and backward ms."""
    fwd: dict[str, float] = {}
    events: list[tuple[float, str]] = []

    def timed(k: int, ms: float, outputs: list[Any]) -> None:
        name = layer_of[k]
        fwd[name] = fwd.get(name, 0.0) + ms
        for out in outputs:
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda g, n=name: events.append((_now([g]), n)))

    value = loss(module(feeds, timer=timed))
    value.backward()
    end = _now([value])
    module.zero_grad(set_to_none=True)
    bwd: dict[str, float] = {}
    events.sort()  # the span before the first event is the loss's own backward
    for i, (t, name) in enumerate(events):
        following = events[i + 1][0] if i + 1 < len(events) else end
        bwd[name] = bwd.get(name, 0.0) + (following - t) * 1e3
    return fwd, bwd


def _now(values: list[Any]) -> float:
    """The host's clock once the GPU work making `values` is done."""
    synchronize(values)
    return time.perf_counter()
