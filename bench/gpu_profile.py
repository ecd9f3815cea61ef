"""Turn GPU training-step measurements (from `bench.gpu_measure`) into a measured server profile.

    python -m bench.gpu_profile [bench/results/h200-training.json]

Fits the `h200` datasheet profile's efficiencies and per-op overhead to the measured fp32
training steps of every zoo model at every batch size, writes the result as
`toolkit/profiles/h200-measured.toml`, and documents how well it holds in docs/gpu-profile.md:
a fit on half of the models checked on the other half, fp16 steps (not fitted), the measured
backward/forward ratio, and per-leaf-module times against the per-layer estimates.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import api, profiles
from toolkit.calibrate import fit_training, to_toml, training_ms
from toolkit.costs import forward_ms
from toolkit.graph import LayerGraph
from toolkit.measure import spread_leaf_times
from toolkit.profiles import Processor

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INPUTS = [ROOT / "bench" / "results" / "h200-training.json",
                  ROOT / "bench" / "results" / "h200-training-2.json"]
PROFILE = ROOT / "toolkit" / "profiles" / "h200-measured.toml"
DOC = ROOT / "docs" / "gpu-profile.md"

Sample = tuple[LayerGraph, int, float]


def _samples(data: dict[str, Any], graphs: dict[str, LayerGraph], names: list[str]) -> list[Sample]:
    return [(graphs[name], int(batch), float(step["fp32"]["step_ms"]))
            for name in names for batch, step in data["models"][name]["steps"].items()]


def _ratio_text(est: float, meas: float) -> str:
    return f"{est:.2f} ({est / meas:.2f}x)"


def _within(pairs: list[tuple[float, float]], tolerance: float) -> int:
    return sum(1 for est, meas in pairs if abs(est / meas - 1) <= tolerance)


def _leaf_errors(graph: LayerGraph, leaves: dict[str, list[float | None]], proc: Processor,
                 batch: int) -> tuple[float, float]:
    """(median |log(estimate/measured)| over leaf modules, their summed measured ms)."""
    times = {path: (float(f or 0.0), b) for path, (f, b) in leaves.items()}
    fwd, bwd = spread_leaf_times(graph, times)
    errors, covered = [], 0.0
    for path in leaves:
        layers = [x for x in graph if x.name in fwd and (x.module == path or
                                                         (x.module or "").startswith(path + "."))]
        if not layers:
            continue
        measured = sum(fwd[x.name] + bwd.get(x.name, 0.0) for x in layers)
        if measured > 0:
            errors.append(abs(np.log(training_ms(proc, layers, batch) / measured)))
        covered += measured
    return (statistics.median(errors) if errors else float("nan")), covered


def _geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several measurement files (machines of one kind, one run each) as one: per model, batch
    and precision the geometric mean of the runs' times, with their max/min spread and the
    GPU-busy (kernel) time where a run recorded it. Leaf times come from the first run."""
    first = runs[0]
    models: dict[str, Any] = {}
    for name, entry in first["models"].items():
        steps: dict[str, Any] = {}
        for batch in entry["steps"]:
            steps[batch] = {}
            for precision in ("fp32", "fp16"):
                found = [r["models"][name]["steps"][batch][precision] for r in runs
                         if r["models"].get(name, {}).get("steps", {}).get(batch, {})
                         .get(precision)]
                if not found:
                    steps[batch][precision] = None
                    continue
                step = [f["step_ms"] for f in found]
                profiled = [f for f in found if f.get("kernel_ms")]
                steps[batch][precision] = {
                    "step_ms": _geomean(step), "forward_ms": _geomean([f["forward_ms"]
                                                                       for f in found]),
                    "spread": max(step) / min(step), "runs": len(found),
                    "kernel_ms": _geomean([f["kernel_ms"] for f in profiled]) if profiled
                    else None,
                    # the wall time of the runs the kernel time comes from
                    "kernel_step_ms": _geomean([f["step_ms"] for f in profiled]) if profiled
                    else None,
                }
        models[name] = {"steps": steps, "leaves": entry.get("leaves", {})}
    dates = sorted({r["date"] for r in runs})
    return {"device": first["device"], "torch": first["torch"], "cuda": first["cuda"],
            "date": ", ".join(dates), "runs": first["runs"], "machines": len(runs),
            "models": models}


def main(argv: list[str]) -> None:
    sources = [Path(a) for a in argv] or DEFAULT_INPUTS
    data = merge([json.loads(p.read_text()) for p in sources])
    names = list(data["models"])
    begin = time.perf_counter()
    graphs = {name: api.load_graph(name) for name in names}
    base = profiles.processor("h200")
    files = ", ".join(p.name for p in sources)
    note = (f"fitted by bench/gpu_profile.py to fp32 training steps of {len(names)} zoo models "
            f"at batches {', '.join(data['models'][names[0]]['steps'])}, measured on "
            f"{data['machines']} {data['device']} machines with PyTorch {data['torch']} on "
            f"{data['date']} (bench/results: {files})")
    print("fitting on half of the models ...", flush=True)
    half = fit_training(base, _samples(data, graphs, names[::2]), "h200-half", note)
    print("fitting on all models ...", flush=True)
    fitted = fit_training(base, _samples(data, graphs, names), "h200-measured", note)
    fitted = Processor(**{**fitted.__dict__, "description":
                          f"{data['device']}, fitted to measured training steps"})
    PROFILE.write_text(to_toml(fitted))
    print(f"wrote {PROFILE.relative_to(ROOT)}", flush=True)
    DOC.write_text(_document(data, graphs, names, base, half, fitted, sources,
                             time.perf_counter() - begin))
    print(f"wrote {DOC.relative_to(ROOT)}")


def _busy_row(name: str, batch: str, step: dict[str, float]) -> str:
    wall, kernels = step["kernel_step_ms"], step["kernel_ms"]
    return f"| {name} | {batch} | {wall:.2f} | {kernels:.2f} | {kernels / wall:.0%} |"


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _document(data: dict[str, Any], graphs: dict[str, LayerGraph], names: list[str],
              base: Processor, half: Processor, fitted: Processor, sources: list[Path],
              seconds: float) -> str:
    batches = list(data["models"][names[0]]["steps"])
    held_out = set(names[1::2])
    lines = [
        "# Measured GPU server profile (h200-measured)",
        "",
        f"Generated by `python -m bench.gpu_profile` in {seconds:.0f} s from "
        f"{', '.join(f'`{_shown(p)}`' for p in sources)}, which `python -m bench.gpu_measure` "
        f"wrote on {data['machines']} **{data['device']}** machines, one run each (PyTorch "
        f"{data['torch']}, CUDA {data['cuda']}, {data['date']}; medians of {data['runs']} timed "
        "steps after warm-ups, CUDA events, eager mode, train mode, loss = sum of the output). "
        "*Measured* below is the geometric mean of the runs; *spread* is the slower run's time "
        "over the faster one's.",
        "",
        "Use it with `--server h200-measured`. Fitted values (datasheet `h200` in brackets):",
        "",
        "| parameter | fitted | datasheet profile |",
        "| --- | ---: | ---: |",
    ]
    for key in ("matmul_efficiency", "conv_efficiency", "vector_efficiency",
                "memory_efficiency", "layer_overhead_us"):
        lines.append(f"| {key} | {getattr(fitted, key):.4g} | {getattr(base, key):.4g} |")
    lines += [
        "",
        "At these batch sizes an eager PyTorch training step is bound by per-op launch and "
        "dispatch on the host, not by the GPU's arithmetic: the fit puts most of the time into "
        "`layer_overhead_us`, and the efficiencies only matter for the largest layers. "
        "`conv_efficiency` above 1 is real: it is relative to the FP32 peak, and PyTorch runs FP32 "
        "convolutions on TF32 tensor cores by default (FP32 matmuls it keeps on CUDA cores, so "
        "that fit is capped at 1). The per-op overhead is charged to every ONNX layer, including "
        "reshapes and transposes that eager PyTorch runs as free views, which is why "
        "transformers with many such layers come out too slow at batch 1.",
        "",
        "## Whole training steps (fp32, ms): measured vs estimated",
        "",
        "Estimate = the sum of the cost model's forward + backward over every layer "
        "(what `server_only_ms` charges). *half-fit* was fitted on the other half of the models "
        "only (held-out models marked with *).",
        "",
        "| model | batch | measured | spread | datasheet h200 | half-fit | h200-measured |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    pairs: dict[str, list[tuple[float, float]]] = {"base": [], "half": [], "fit": []}
    for name in names:
        for batch in batches:
            meas = float(data["models"][name]["steps"][batch]["fp32"]["step_ms"])
            est = {key: training_ms(proc, graphs[name], int(batch))
                   for key, proc in (("base", base), ("half", half), ("fit", fitted))}
            pairs["base"].append((est["base"], meas))
            pairs["fit"].append((est["fit"], meas))
            if name in held_out:
                pairs["half"].append((est["half"], meas))
            label = f"{name}*" if name in held_out else name
            spread = data["models"][name]["steps"][batch]["fp32"]["spread"]
            lines.append(f"| {label} | {batch} | {meas:.2f} | {spread:.2f}x "
                         f"| {_ratio_text(est['base'], meas)} "
                         f"| {_ratio_text(est['half'], meas)} | {_ratio_text(est['fit'], meas)} |")
    total = len(pairs["fit"])
    lines += [
        "",
        f"Within 25% of the measured step: datasheet profile {_within(pairs['base'], 0.25)} of "
        f"{total}; half-fit on the held-out models {_within(pairs['half'], 0.25)} of "
        f"{len(pairs['half'])}; h200-measured {_within(pairs['fit'], 0.25)} of {total} "
        f"(within 50%: {_within(pairs['fit'], 0.5)} of {total}).",
        "",
        "## How much of a step the GPU is busy",
        "",
        "Kernel time = the sum of the step's CUDA kernel durations from the PyTorch profiler "
        "(one stream, so no overlap), against the wall time of the same run's steps.",
        "",
        "| model | batch | step ms | kernel ms | GPU busy |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[_busy_row(name, batch, step["fp32"])
          for name in names for batch, step in data["models"][name]["steps"].items()
          if step["fp32"].get("kernel_ms")],
        "",
        "## fp16 autocast steps (not fitted)",
        "",
        "| model | batch | measured fp32 | measured fp16 | h200-measured fp16 estimate |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        for batch in batches:
            step = data["models"][name]["steps"][batch]
            if step.get("fp16") is None:
                continue
            est = training_ms(fitted, graphs[name], int(batch), "fp16")
            lines.append(f"| {name} | {batch} | {step['fp32']['step_ms']:.2f} | "
                         f"{step['fp16']['step_ms']:.2f} | "
                         f"{_ratio_text(est, float(step['fp16']['step_ms']))} |")
    lines += [
        "",
        "Autocast adds casts around every op, so at these batch sizes fp16 steps are rarely "
        "faster than fp32 on this GPU; the cost model's fp16 mode (tensor-core peak, half the "
        "bytes) is therefore optimistic for eager small-batch training.",
        "",
        "## Backward / forward",
        "",
        "| model | batch | measured backward/forward | cost model backward/forward |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in names:
        for batch in batches:
            step = data["models"][name]["steps"][batch]["fp32"]
            fwd_meas = float(step["forward_ms"])
            fwd_est = sum(forward_ms(x, fitted, "fp32", int(batch)) for x in graphs[name])
            total_est = training_ms(fitted, graphs[name], int(batch))
            lines.append(f"| {name} | {batch} | {(step['step_ms'] - fwd_meas) / fwd_meas:.2f} "
                         f"| {(total_est - fwd_est) / fwd_est:.2f} |")
    lines += [
        "",
        "## Leaf modules timed one by one",
        "",
        "Each leaf module (Conv2d, Linear, LayerNorm, ...) was run forward and backward on its own "
        "on the inputs it saw; its time is shared among the ONNX layers it produced "
        "(`toolkit.measure.spread_leaf_times`) and compared with the estimate for those layers. "
        "Leaves leave out functional code (residual adds, attention arithmetic), so they cover "
        "only part of a step.",
        "",
        "| model | batch | leaves | median abs log error (h200-measured) | leaves' sum / step |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        for batch, leaves in data["models"][name]["leaves"].items():
            error, covered = _leaf_errors(graphs[name], leaves, fitted, int(batch))
            step_ms = float(data["models"][name]["steps"][batch]["fp32"]["step_ms"])
            lines.append(f"| {name} | {batch} | {len(leaves)} | {error:.2f} "
                         f"({np.exp(error):.2f}x) | {covered / step_ms:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
