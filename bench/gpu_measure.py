"""Measure zoo models' training times on a GPU: whole training steps and per-leaf-module forward
and backward, at several batch sizes. Needs only torch (plus torchvision/transformers for the
zoo); it writes JSON that `python -m bench.gpu_profile` turns into a measured server profile.

    python -m bench.gpu_measure -o gpu.json            # every zoo model, batches 1, 8, 32
    python -m bench.gpu_measure --models resnet18 --batches 1 --device cpu -o x.json  # a check

Training steps are timed with CUDA events around forward + backward (train mode, sum of the
output as loss), median of `--runs` after warm-ups, in fp32 (PyTorch's defaults: TF32 off for
matmuls, on for cuDNN convolutions) and under fp16 autocast. Each leaf module is then timed on
its own on the inputs it saw in one forward pass, like `toolkit.measure` does on the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from toolkit import zoo
from toolkit.measure import leaf_inputs, time_leaf, wall_ms


class Timer:
    """Milliseconds of GPU work (CUDA events) or of wall time on the CPU."""

    def __init__(self, torch: Any, device: str) -> None:
        self.torch, self.cuda = torch, device.startswith("cuda")

    def __call__(self, fn: Any) -> float:
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        return wall_ms(fn)


def _loss(out: Any) -> Any:
    out = out[0] if isinstance(out, tuple | list) else out
    return out.float().sum()


def _batched(torch: Any, args: tuple[Any, ...], batch: int, device: str) -> tuple[Any, ...]:
    return tuple(a.repeat(batch, *([1] * (a.dim() - 1))).to(device) for a in args)


def training_step(torch: Any, module: Any, inputs: tuple[Any, ...], timer: Timer, runs: int,
                  fp16: bool) -> dict[str, float]:
    """Median forward and forward+backward ms of one training step."""
    def forward() -> Any:
        with torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
            return module(*inputs)

    holder: dict[str, Any] = {}

    def fwd_only() -> None:
        holder["loss"] = _loss(forward())

    def step() -> None:
        module.zero_grad(set_to_none=True)
        _loss(forward()).backward()

    for _ in range(3):
        step()
    fwd = [timer(fwd_only) for _ in range(runs)]
    holder.clear()
    steps = [timer(step) for _ in range(runs)]
    out = {"forward_ms": statistics.median(fwd), "step_ms": statistics.median(steps)}
    if timer.cuda:
        out["kernel_ms"] = kernel_ms(torch, step)
    return out


def kernel_ms(torch: Any, step: Any) -> float | None:
    """GPU-busy time of one training step: the sum of its CUDA kernels' durations (one stream),
    as opposed to the wall time, which also waits on the host launching them."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        totals = prof.key_averages()
        us = sum(getattr(e, "self_device_time_total", None) or
                 getattr(e, "self_cuda_time_total", 0.0) for e in totals)
        return float(us) / 1e3
    except Exception as exc:  # the profiler is a diagnostic: never lose the timings for it
        print(f"  kernel times unavailable: {type(exc).__name__}: {exc}", flush=True)
        return None


def leaf_times(module: Any, inputs: tuple[Any, ...], timer: Timer,
               runs: int) -> dict[str, list[float | None]]:
    """Median forward and backward ms of every leaf module, each run on its own."""
    leaves, captured = leaf_inputs(module, inputs)
    return {path: list(time_leaf(leaves[path], args, runs, timer, warmups=2))
            for path, args in captured.items()}


def measure_model(torch: Any, name: str, batches: list[int], leaf_batches: list[int],
                  device: str, runs: int) -> dict[str, Any]:
    module, args = zoo.get(name).build()
    module = module.to(device).train()
    timer = Timer(torch, device)
    entry: dict[str, Any] = {"steps": {}, "leaves": {}}
    for batch in batches:
        inputs = _batched(torch, args, batch, device)
        entry["steps"][str(batch)] = {
            "fp32": training_step(torch, module, inputs, timer, runs, fp16=False),
            "fp16": training_step(torch, module, inputs, timer, runs, fp16=True)
            if device.startswith("cuda") else None,
        }
        if batch in leaf_batches:
            entry["leaves"][str(batch)] = leaf_times(module, inputs, timer, runs)
    return entry


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", required=True)
    parser.add_argument("--models", nargs="*", default=list(zoo.MODELS))
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 8, 32])
    parser.add_argument("--leaf-batches", nargs="*", type=int, default=[1, 32])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    opts = parser.parse_args()
    torch.backends.mha.set_fastpath_enabled(False)
    gpu = torch.cuda.get_device_name() if opts.device.startswith("cuda") else platform.processor()
    result: dict[str, Any] = {
        "device": gpu, "torch": torch.__version__,
        "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d"),
        "runs": opts.runs, "models": {},
    }
    out = Path(opts.out)
    for name in opts.models:
        begin = time.perf_counter()
        result["models"][name] = measure_model(
            torch, name, opts.batches, opts.leaf_batches, opts.device, opts.runs)
        out.write_text(json.dumps(result, indent=1))  # partial results survive a timeout
        step = result["models"][name]["steps"][str(opts.batches[0])]["fp32"]["step_ms"]
        print(f"{name}: {time.perf_counter() - begin:.1f}s, "
              f"b{opts.batches[0]} step {step:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
