"""What is live on the GPU at a training step's peak: the memory model's missing CUDA terms,
found from the caching allocator's own trace rather than guessed.

    python -m bench.gpu_peak --out DIR [MODEL:BATCH ...]     # on a lent GPU machine

Each model trains as `bench.memory --cuda` trains it (SGD with momentum, loss = the output's
sum, one step first); the measured step runs under `torch.cuda.memory._record_memory_history`
with C++ stacks. Replaying the allocator's trace gives the moment of the step's peak and the
blocks live then that the step allocated, each named by the first frame that says who asked
for it (a cuDNN or cuBLAS workspace, an autograd node, an ATen kernel). One JSON per model in
DIR.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.memory import training_step

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["resnet18:8", "bert_base:4", "gpt2:2", "vit_b_16:4"]
# the frames that say who asked for a block, most telling first
_WHO = [re.compile(p) for p in (r"cudnn|cuDNN", r"cublas|cuBLAS", r"Backward\d*::apply",
                                r"at::native::\w+", r"at::_ops::\w+")]


def _who(frames: list[dict[str, Any]]) -> str:
    """Who asked for a block: its most telling frame's name, else its first Python line."""
    names = [str(f.get("name", "")) for f in frames]
    for pattern in _WHO:
        for name in names:
            if pattern.search(name):
                return name[:160]
    python = [f"{f.get('filename', '')}:{f.get('line', '')}" for f in frames
              if str(f.get("filename", "")).endswith(".py")]
    return python[0] if python else (names[0][:160] if names else "?")


def _peak(trace: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    """The step's peak (bytes above what was allocated before it) and the blocks it
    allocated that are live then."""
    total, best, at = 0, 0, -1
    for i, event in enumerate(trace):
        if event["action"] == "alloc":
            total += event["size"]
        elif event["action"] == "free_requested":
            total -= event["size"]
        if total > best:
            best, at = total, i
    live: dict[int, dict[str, Any]] = {}
    for event in trace[:at + 1]:
        if event["action"] == "alloc":
            live[event["addr"]] = event
        elif event["action"] == "free_requested":
            live.pop(event["addr"], None)
    blocks = [{"bytes": e["size"], "who": _who(e.get("frames", []))} for e in live.values()]
    return best, sorted(blocks, key=lambda b: -b["bytes"])


def trace_one(name: str, batch: int) -> dict[str, Any]:
    """One measured training step of zoo model `name` at `batch` on the GPU, traced."""
    import torch

    _, optimizer, step = training_step(name, batch, "cuda")
    step()
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(context="alloc", stacks="all",
                                             max_entries=1_000_000)
    step()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - before
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    trace = snapshot["device_traces"][torch.cuda.current_device()]
    peak, blocks = _peak(trace)
    grouped: dict[str, int] = {}
    for block in blocks:
        grouped[block["who"]] = grouped.get(block["who"], 0) + block["bytes"]
    return {"model": name, "batch": batch, "measured_bytes": measured, "replayed_bytes": peak,
            "events": len(trace), "cudnn": torch.backends.cudnn.version(),
            "live_by_who": sorted(grouped.items(), key=lambda kv: -kv[1])[:40],
            "largest": blocks[:40]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("models", nargs="*", default=MODELS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one:
        name, batch = args.one.rsplit(":", 1)
        result = trace_one(name, int(batch))
        (args.out / f"peak-{name.replace(':', '_')}-b{batch}.json").write_text(
            json.dumps(result, indent=1))
        print(f"{name} b{batch}: measured {result['measured_bytes'] / 1e6:.1f} MB, replayed "
              f"{result['replayed_bytes'] / 1e6:.1f} MB; largest live: "
              + "; ".join(f"{who} {n / 1e6:.1f} MB" for who, n in result["live_by_who"][:6]),
              flush=True)
        return

    def one(model: str) -> None:
        done = subprocess.run([sys.executable, "-m", "bench.gpu_peak", "--out", str(args.out),
                               "--one", model], cwd=ROOT, capture_output=True, text=True,
                              timeout=150, check=False)
        print(done.stdout.strip() or f"{model}: failed: {done.stderr.strip()[-600:]}",
              flush=True)

    with ThreadPoolExecutor(len(args.models)) as pool:
        list(pool.map(one, args.models))


if __name__ == "__main__":
    main()
