"""Measured per-layer times on this machine: onnxruntime per-node profiling (forward) and, for
zoo models, torch autograd hooks (forward + backward).

The profiles themselves (data, reading and checking) live in the pure `toolkit.measured`.
"""

from __future__ import annotations

import functools
import json
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError
from toolkit.graph import LayerGraph
from toolkit.measured import MeasuredProfile, layers_sha, sizes_sha, this_machine


def onnxruntime_forward(onnx_path: Path, graph: LayerGraph, runs: int = 5,
                        dims: Mapping[str, int] | None = None) -> dict[str, float]:
    """Median per-layer forward time (ms) from onnxruntime's node profiler, optimisations off
    so that every ONNX node keeps its own timing; one sample, other symbolic dimensions at
    their `dims` values."""
    import numpy as np
    import onnxruntime as ort

    from toolkit.onnx.split import random_feeds

    ort.set_default_logger_severity(4)  # failures are one line here, not red text from it
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_profiling = True
    options.intra_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        try:
            session = ort.InferenceSession(str(_as_read(onnx_path, Path(tmp))), options,
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0][:200]
            raise ToolkitError(f"onnxruntime cannot run {onnx_path.name}: {reason}") from exc
        feeds = random_feeds(session, 1, dims or {}, np.random.default_rng(0))
        session.run(None, feeds)  # warm-up
        for _ in range(runs):
            session.run(None, feeds)
        trace = json.loads(Path(session.end_profiling()).read_text())
    samples: dict[str, list[float]] = defaultdict(list)
    for event in trace:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            samples[name[: -len("_kernel_time")]].append(event["dur"] / 1000.0)
    node_ms = {name: statistics.median(values[-runs:]) for name, values in samples.items()}
    return {layer.name: node_ms.get(layer.name, 0.0) for layer in graph}


def _as_read(onnx_path: Path, folder: Path) -> Path:
    """The model as the reader reads it (its functions inlined, weights written as Constant
    nodes initializers), each node named its layer, written into `folder`: onnxruntime's
    profiler names a node as the file does, or as its own inlining does, which a function's
    layers are not named after, and it refuses a file that repeats a node name."""
    from toolkit.onnx import layer_names, load_external_data, load_model
    from toolkit.onnx.split import save_model

    whole = load_model(onnx_path)
    load_external_data(whole, onnx_path.parent)
    for node, name in zip(whole.graph.node, layer_names(whole.graph), strict=True):
        node.name = name
    return save_model(whole, folder / "model.onnx")


def torch_forward_backward(
    zoo_name: str, graph: LayerGraph, runs: int = 3
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-layer forward and backward ms of a zoo model, timing each leaf module on its own.

    One forward pass records every leaf module's inputs; each leaf is then run forward and
    backward on those inputs `runs` times (median). A leaf's time is shared among the ONNX layers
    it produced, in proportion to FLOPs; layers from functional code in a parent's forward
    (residual adds, attention arithmetic) get no torch time and are left out.
    """
    import torch

    from toolkit import zoo

    module, args = zoo.get(zoo_name).build()
    module.train()
    leaves, captured = leaf_inputs(module, args)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like onnxruntime's measurement: one thread, stable numbers
    try:
        times = {p: time_leaf(leaves[p], inputs, runs) for p, inputs in captured.items()}
    finally:
        torch.set_num_threads(threads)
    return spread_leaf_times(graph, times)


def spread_leaf_times(
    graph: LayerGraph, times: dict[str, tuple[float, float | None]]
) -> tuple[dict[str, float], dict[str, float]]:
    """Leaf-module (forward, backward) ms -> per-layer ms, shared among the ONNX layers each
    module produced in proportion to their FLOPs; layers of no timed module are left out."""
    forward, backward = {}, {}
    for path, (fwd_ms, bwd_ms) in times.items():
        layers = [layer for layer in graph if layer.module == path
                  or (layer.module or "").startswith(path + ".")]
        total_flops = sum(layer.flops for layer in layers)
        for layer in layers:
            share = layer.flops / total_flops if total_flops else 1.0 / len(layers)
            forward[layer.name] = fwd_ms * share
            if bwd_ms is not None:
                backward[layer.name] = bwd_ms * share
    return forward, backward


def leaf_inputs(module: Any, args: tuple[Any, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Leaf modules by path, and the inputs each got at its first call in one forward pass."""
    import torch

    leaves = {p: m for p, m in module.named_modules() if p and not any(True for _ in m.children())}
    captured: dict[str, tuple[Any, ...]] = {}

    def hook(path: str, inputs: tuple[Any, ...]) -> None:  # returns None: inputs stay as they are
        if path not in captured:
            captured[path] = tuple(x.detach().clone() if isinstance(x, torch.Tensor) else x
                                   for x in inputs)

    handles = [sub.register_forward_pre_hook(lambda _m, inputs, p=path: hook(p, inputs))
               for path, sub in leaves.items()]
    try:
        with torch.no_grad():
            module(*args)
    finally:
        for h in handles:
            h.remove()
    return leaves, captured


def wall_ms(fn: Callable[[], object]) -> float:
    """Milliseconds `fn` takes on the wall clock."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def time_leaf(
    sub: Any, inputs: tuple[Any, ...], runs: int, timer: Callable[[Callable[[], object]], float]
    = wall_ms, warmups: int = 1,
) -> tuple[float, float | None]:
    """Median forward and backward ms of one module on recorded inputs, after `warmups` runs;
    `timer(fn)` gives fn's milliseconds (the wall clock here, CUDA events on a GPU)."""
    import torch

    fwd, bwd = [], []
    for i in range(warmups + runs):
        args = tuple(x.clone().requires_grad_(True).clone()  # not a leaf: in-place ops work
                     if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                     for x in inputs)
        outputs: list[Any] = []
        ms = timer(functools.partial(_call_into, outputs, sub, args))
        out = outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]
        if i >= warmups:
            fwd.append(ms)
        if isinstance(out, torch.Tensor) and out.requires_grad:
            ms = timer(functools.partial(out.backward, torch.ones_like(out)))
            if i >= warmups:
                bwd.append(ms)
    return statistics.median(fwd), statistics.median(bwd) if bwd else None


def _call_into(outputs: list[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    outputs.append(fn(*args))


def measure(
    onnx_path: Path, graph: LayerGraph, processor: str, zoo_name: str | None = None,
    source_model: str = "", dims: Mapping[str, int] | None = None,
) -> MeasuredProfile:
    """Forward by onnxruntime for every layer; forward + backward by torch where it can.
    `dims`: the symbolic dimensions `graph` was read with."""
    forward = onnxruntime_forward(onnx_path, graph, dims=dims)
    backward: dict[str, float] = {}
    source = "onnxruntime"
    if zoo_name is not None:
        torch_fwd, backward = torch_forward_backward(zoo_name, graph)
        forward.update(torch_fwd)
        source = "onnxruntime+torch"
    return MeasuredProfile(graph.name, processor, 1, source, layers_sha(graph), forward, backward,
                           source_model or graph.name, this_machine(), dict(dims or {}),
                           sizes_sha(graph))
