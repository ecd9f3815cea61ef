"""The training-memory model against PyTorch: `python -m bench.memory` -> docs/memory.md.

Each zoo model trains in a fresh process as PyTorch itself runs it (the torchvision or
transformers module in train mode, SGD with momentum, `zero_grad(set_to_none=True)`, loss =
the output's sum, whose backward keeps nothing): after a first step (which makes the momentum
buffers), the process's peak resident memory during the second step (VmHWM, reset just before
it through /proc/self/clear_refs) minus its resident memory before it (weights and momentum
buffers; glibc told to map every block of 64 KiB and more apart and return it when freed, so
that resident memory follows what is allocated) is what a training step adds: the activations
autograd keeps, the gradients and the backward's buffers. The model predicts the same thing
(`toolkit.memory`: the whole model's peak less its state) from the ONNX export alone.

On a CPU this is what a device without a GPU allocates; with a GPU lent, the same script's
`--cuda` measures `torch.cuda.max_memory_allocated` instead. Raw results:
bench/results/memory.json; the budget table of docs/memory.md comes from `--budgets`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from toolkit import api
from toolkit.costgraph import peak_memory
from toolkit.costs import build_cost_graph

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"resnet18": 8, "resnet50": 8, "mobilenet_v2": 8, "googlenet": 8,
          "densenet121": 8, "efficientnet_b0": 8, "vgg16": 4, "vit_b_16": 4, "swin_t": 4,
          "convnext_tiny": 4, "bert_base": 4, "gpt2": 2}
# glibc keeps freed heap memory resident: with every block of 64 KiB and more from its own
# mapping, returned when freed, the resident size follows what is allocated
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
BUDGET_MODELS = ["resnet18", "resnet50", "mobilenet_v2", "googlenet", "densenet121",
                 "vit_b_16", "gpt2"]
BUDGETS_GB = [1, 2, 4, 8]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_one(name: str, batch: int, cuda: bool) -> dict[str, Any]:
    """One training step of zoo model `name` at `batch` in this process: what it added."""
    import gc

    import torch

    from toolkit import zoo

    torch.set_num_threads(2)
    module, (example,) = zoo.get(name).build()
    module.train()
    shape = (batch, *example.shape[1:])
    inputs = torch.randn(shape) if example.is_floating_point() \
        else torch.randint(0, 1000, shape)
    device = "cuda" if cuda else "cpu"
    module, inputs = module.to(device), inputs.to(device)
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
    weights = sum(p.numel() * p.element_size() for p in module.parameters())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        output = module(inputs)
        output = output[0] if isinstance(output, tuple) else output
        output.sum().backward()
        optimizer.step()

    step()  # the first step makes the momentum buffers, which stay
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the peak resident size starts here
    start = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status("VmHWM")
    return {"model": name, "batch": batch, "device": device, "weights_bytes": weights,
            "measured_bytes": peak - before, "step_s": time.perf_counter() - start}


def predicted(name: str, batch: int) -> dict[str, float]:
    """The model's peak for training the whole model, less its state (weights and momentum
    buffers, resident before the measured step)."""
    graph = api.load_graph(name)
    costs = build_cost_graph(graph, api.make_scenario(batch=batch, optimizer="momentum"))
    assert costs.memory is not None
    whole = peak_memory(costs, range(len(costs)))
    return {"predicted_bytes": whole - sum(costs.memory.state), "predicted_peak_bytes": whole,
            "params": float(sum(layer.params for layer in graph))}


def run(cuda: bool) -> list[dict[str, Any]]:
    rows = []
    for name, batch in MODELS.items():
        done = subprocess.run(
            [sys.executable, "-m", "bench.memory", "--one", name, str(batch),
             *(["--cuda"] if cuda else [])],
            capture_output=True, text=True, check=False, cwd=ROOT, env={**os.environ, **MALLOC})
        if done.returncode:
            print(f"{name}: failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        row = {**json.loads(done.stdout.strip().splitlines()[-1]), **predicted(name, batch)}
        row["error"] = row["predicted_bytes"] / row["measured_bytes"] - 1
        rows.append(row)
        print(f"{name} b{batch}: measured {row['measured_bytes'] / 1e9:.3f} GB, predicted "
              f"{row['predicted_bytes'] / 1e9:.3f} GB ({row['error']:+.1%})", flush=True)
    return rows


def budget_rows() -> list[dict[str, Any]]:
    """Per model and budget (Jetson Nano + RTX 3090, 10 Mbit/s each way, batch 32): the
    optimum under the budget, its proof, and the best single split that fits."""
    from toolkit.errors import PartitionError
    from toolkit.partition.budget import solve_with_budget

    scenario = api.make_scenario(batch=32, uplink="10Mbps", downlink="10Mbps")
    rows = []
    for name in BUDGET_MODELS:
        costs = build_cost_graph(api.load_graph(name), scenario)
        for gb in BUDGETS_GB:
            try:
                r = solve_with_budget(costs, gb * 1e9)
            except PartitionError as exc:
                rows.append({"model": name, "budget_gb": gb, "error": str(exc)})
                continue
            rows.append({"model": name, "budget_gb": gb, **r.to_dict(),
                         "delay_ms": r.partition.delay.total,
                         "device_layers": len(r.partition.device), "layers": len(costs)})
    return rows


def write_doc(measured: list[dict[str, Any]], budgets: list[dict[str, Any]], doc: Path) -> None:
    lines = ["# Training memory: the model against PyTorch, and budgets", "",
             "Regenerate with `python -m bench.memory` (about 5 minutes on 2 cores; `--cuda` "
             "on a GPU). Raw results: `bench/results/memory.json`.", "",
             "## The model", "",
             "For the tier that trains layer v at batch b (`toolkit/memory.py`):", "",
             "- **state**: parameters x 4 bytes x (weights + gradients + optimizer buffers: SGD "
             "0, momentum 1, Adam 2, as torch.optim keeps them);",
             "- **saved**: b x the bytes of v's inputs, which autograd keeps for the backward "
             "(a convolution or matmul its input for the weight gradient, an activation or "
             "normalisation an input or output of that size); nothing for additions and for "
             "ops that only move or view data;",
             "- **workspace**: b x (v's input and output bytes): the gradients of its output "
             "and inputs, alive while its backward runs.", "",
             "A tier's peak is the sum of state and saved over its layers plus the largest "
             "workspace among them: everything saved is alive at the turn from forward to "
             "backward. `splitcut partition` reports the device half's peak; "
             "`--device-memory SIZE` finds the best partition that fits (below).", "",
             "## Against PyTorch", "",
             "One training step of each zoo model in a fresh process, as PyTorch runs it "
             "(the torchvision or transformers module in train mode, SGD with momentum, loss = "
             "the output's sum): what the step added to the process's peak resident memory "
             "(VmHWM, reset just before the step) beyond the loaded weights, against the "
             "model's prediction of the same (its peak less the weights) from the ONNX export "
             "alone.", "",
             "| model | batch | parameters | measured GB | predicted GB | error |",
             "|---|---|---|---|---|---|"]
    for r in measured:
        lines.append(f"| {r['model']} | {r['batch']} | {r['params'] / 1e6:.1f} M | "
                     f"{r['measured_bytes'] / 1e9:.3f} | {r['predicted_bytes'] / 1e9:.3f} | "
                     f"{r['error']:+.0%} |")
    if measured:
        errors = [abs(r["error"]) for r in measured]
        lines += ["", f"Median absolute error {statistics.median(errors):.0%}, worst "
                      f"{max(errors):.0%} ({len(measured)} models, "
                      f"{measured[0]['device']}).", ""]
    lines += ["**Where it is off, and what is suspected (not yet measured term by term):** "
              "the exported graph is what the model reads, and PyTorch does not always train "
              "what the graph shows. GELU and SiLU, which exporters split into `Erf` or "
              "`Sigmoid` and products, are counted as the fused ops PyTorch runs "
              "(`memory.fused_activations`: that took ViT-B/16 from +68% to the figure above, "
              "Swin-T from +37%, ConvNeXt-T from +39%, EfficientNet-B0 from +29%). Attention "
              "is still counted as exported (two matmuls around a softmax, keeping the "
              "attention matrix), while torchvision's ViT calls scaled_dot_product_attention, "
              "whose fused kernel keeps queries, keys, values, the output and a log-sum-exp "
              "instead: the likely remainder of ViT's over-prediction. Under-predictions come "
              "from what the graph does not show: train-mode dropout (BERT, GPT-2: each keeps "
              "a mask and makes a new tensor the next op keeps), GPT-2's tied embedding (two "
              "gradients of the 154 MB table alive together before they are summed), and "
              "ConvNeXt's channels-last permutes around its LayerNorm, which PyTorch copies. "
              "Each is a term to add, not a factor to fit.", ""]
    lines += ["## The best partition under a budget", "",
              "Jetson Nano + RTX 3090, 10 Mbit/s each way, batch 32 (a slow link pushes "
              "layers onto the device, so budgets bind). Per model and device budget: the "
              "exact optimum under the budget (`partition/budget.py`: CP-SAT on the "
              "partition's integer program, proven optimal: gap 0), its device half's peak, "
              "the Lagrangian lower bound, the optimum without the budget, the best single "
              "split that fits, and the time.", "",
              "| model | budget GB | delay ms | gap | device layers | device peak GB | "
              "Lagrangian bound ms | without budget ms (peak GB) | best fitting single split "
              "ms | solve ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in budgets:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['budget_gb']} | {r['error']} | | | | | | | |")
            continue
        split = r["best_feasible_single_split_ms"]
        lines.append(
            f"| {r['model']} | {r['budget_gb']} | {r['delay_ms']:.0f} | {r['gap']:.0%} | "
            f"{r['device_layers']} / {r['layers']} | {r['device_peak_bytes'] / 1e9:.2f} | "
            f"{r['lagrangian_bound_ms']:.0f} | {r['unconstrained_ms']:.0f} "
            f"({r['unconstrained_device_peak_bytes'] / 1e9:.2f}) | "
            + (f"{split:.0f}" if split is not None else "none fits")
            + f" | {r['solve_ms']:.0f} |")
    doc.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--cuda", action="store_true", help="measure on the GPU")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args.cuda)))
        return
    measured = run(args.cuda)
    budgets = budget_rows()
    out = ROOT / "bench" / "results" / ("memory-cuda.json" if args.cuda else "memory.json")
    out.write_text(json.dumps({"measured": measured, "budgets": budgets}, indent=1))
    if not args.cuda:
        write_doc(measured, budgets, ROOT / "docs" / "memory.md")


if __name__ == "__main__":
    main()
