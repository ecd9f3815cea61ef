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
`--cuda` measures `torch.cuda.max_memory_allocated` instead (`--measure-only JSON` there, then
`--cuda-from JSON` here, where the exports are). Raw results: bench/results/memory.json and
memory-cuda.json; `--doc-only` rewrites docs/memory.md from them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.gpu_split import machine
from toolkit import api, zoo
from toolkit.costs import build_cost_graph
from toolkit.memory import peak_bytes

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"resnet18": 8, "resnet50": 8, "mobilenet_v2": 8, "googlenet": 8,
          "densenet121": 8, "efficientnet_b0": 8, "vgg16": 4, "vit_b_16": 4, "swin_t": 4,
          "convnext_tiny": 4, "bert_base": 4, "gpt2": 2,
          # weights made at every step (standardised, weight-normed, reordered into ONNX's
          # LSTM gate order): counted once per step, not once per sample
          "timm:nfnet_l0": 8, "hf:wav2vec2": 8, "timm:sequencer2d_s": 4}
# glibc keeps freed heap memory resident: with every block of 64 KiB and more from its own
# mapping, returned when freed, the resident size follows what is allocated
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
# on a GPU, a larger batch of some too: where convolution and attention kernels' workspaces
# and the caching allocator's rounding would show
CUDA_MODELS = [("resnet50", 32), ("vit_b_16", 32), ("bert_base", 32)]
CUDA_RESULTS = ROOT / "bench" / "results" / "memory-cuda.json"
BUDGET_MODELS = ["resnet18", "resnet50", "mobilenet_v2", "googlenet", "densenet121",
                 "vit_b_16", "gpt2"]
BUDGETS_GB = [1, 2, 4, 8]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def training_step(name: str, batch: int, device: str) -> tuple[Any, Any, Callable[[], None]]:
    """Zoo model `name` in train mode on `device`, SGD with momentum, and one training step of
    it at `batch` (loss = the output's sum, whose backward keeps nothing): the module, the
    optimizer and the step."""
    import torch

    module, (example,) = zoo.get(name).build()
    module.train()
    zoo.keep_every_layer(module)  # as the export: the step that skips no layer
    shape = (batch, *example.shape[1:])
    inputs = torch.randn(shape) if example.is_floating_point() \
        else torch.randint(0, 1000, shape)
    module, inputs = module.to(device), inputs.to(device)
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        output = module(inputs)
        output = output[0] if isinstance(output, tuple) else output
        output.sum().backward()
        optimizer.step()

    return module, optimizer, step


def measure_one(name: str, batch: int, cuda: bool) -> dict[str, Any]:
    """One training step of zoo model `name` at `batch` in this process: what it added."""
    import gc

    import torch

    torch.set_num_threads(2)
    device = "cuda" if cuda else "cpu"
    module, optimizer, step = training_step(name, batch, device)
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
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


def predicted(name: str, batch: int, backend: str) -> dict[str, float]:
    """The model's peak for training the whole model on `backend` ("cpu" or "cuda"), less its
    state (weights and momentum buffers, resident before the measured step), from the export
    of the module in train mode: the graph PyTorch trains (dropout and stochastic depth in
    it)."""
    graph = api.load_graph(str(zoo.export(name, training=True)), name=name)
    costs = build_cost_graph(graph, api.make_scenario(batch=batch, optimizer="momentum"))
    assert costs.memory is not None
    memory = costs.memory.on(backend)
    whole = peak_bytes(memory, range(len(costs)), len(costs))
    return {"predicted_bytes": whole - sum(memory.state), "predicted_peak_bytes": whole,
            "params": float(sum(layer.params for layer in graph))}


def measure(cuda: bool, models: list[tuple[str, int]], parallel: int = 1
            ) -> list[dict[str, Any]]:
    """Each model's training step measured in a fresh process, `parallel` at a time (on a GPU
    each process's peak is its own)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item: tuple[str, int]) -> dict[str, Any] | None:
        name, batch = item
        done = subprocess.run(
            [sys.executable, "-m", "bench.memory", "--one", name, str(batch),
             *(["--cuda"] if cuda else [])],
            capture_output=True, text=True, check=False, cwd=ROOT, env={**os.environ, **MALLOC})
        if done.returncode:
            print(f"{name}: failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
            return None
        row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name} b{batch}: measured {row['measured_bytes'] / 1e9:.3f} GB", flush=True)
        return row

    with ThreadPoolExecutor(parallel) as pool:
        return [row for row in pool.map(one, models) if row is not None]


def with_predictions(measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The measured rows beside the model's prediction of each."""
    rows = []
    for row in measured:
        row = {**row, **predicted(row["model"], row["batch"], row["device"])}
        row["error"] = row["predicted_bytes"] / row["measured_bytes"] - 1
        rows.append(row)
        print(f"{row['model']} b{row['batch']} on {row['device']}: measured "
              f"{row['measured_bytes'] / 1e9:.3f} GB, predicted "
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


MODEL_TEXT = """## The model

For the tier that trains a set S of layers at batch b (`toolkit/memory.py` has every term and
why): **state** (weights and optimizer buffers: SGD 0, momentum 1, Adam 2 copies, as
torch.optim keeps them) all along; **saved activations**, what each op's backward needs (a
convolution or matmul its input, ReLU or softmax its output, a product with a weight its
activation, a product of two activations the factor the other's gradient needs, a training-
mode dropout its mask (a float per element on a CPU, a byte on CUDA), an LSTM its input,
outputs and what its forward writes of oneDNN's workspace, a GRU or RNN its input and each
step's state and gates; an exporter's
decomposed GELU/SiLU and attention exported from `scaled_dot_product_attention` what
PyTorch's fused kernels keep), each tensor once, from the forward pass to the backward's
first keeper; **held tensors** (the model's outputs, and every
tensor the tier sends to another, until its backward is done); **gradients** of the weights
as the backward makes them, a **tied weight**'s partial gradient held until its owner's
backward, a **gradient in flight** along a skip connection, and the **workspace** of the layer
whose backward runs. The peak is the largest sum over the positions of the backward.
`splitcut partition` reports the device half's peak; `--device-memory SIZE` finds the best
partition that fits (below).
"""

FINDINGS = """**What it took, and what is left.** Each step below is a term the measurement
asked for, found by comparing the model with what autograd saves (`grad_fn._saved_*`,
distinct storages) and with PyTorch's memory profiler at the peak, model by model: never a
factor fitted to a model.

- PyTorch trains what a **train-mode export** shows: dropout (BERT, GPT-2), stochastic depth
  (Swin-T, ConvNeXt-T) are absent from an eval-mode export. Predictions here are from the
  module exported in train mode (`zoo.export(..., training=True)`); the CPU's dropout keeps
  a float mask the size of its input (BERT -8% to +1%). A dropout with p = 0 keeps nothing
  and its output is its input (Swin-T's attention dropout).
- A product keeps a factor only for the other's gradient: stochastic depth's `x * noise`
  keeps the noise, not x (Swin-T from +15% to +1%); a product with a **learned weight**
  (ConvNeXt's layer scale) keeps its activation.
- **Fused attention**: torchvision's ViT calls `scaled_dot_product_attention`, whose CPU
  kernel keeps q, k, v, its output and a log-sum-exp, never the attention matrix (ViT-B/16
  from +20% to +8%); torch.onnx's decomposition of it scales q and k both, which hand-written
  attention (BERT, GPT-2 eager, Swin) does not, so the two are told apart in the graph.
- **Tied weights**: GPT-2's LM head shares the embedding's 154 MB table; autograd holds the
  head's partial gradient until the embedding's backward adds its own into a new tensor,
  three copies at once at the end of the backward (GPT-2 from -42% to +0%).
- **Views and copies around fused attention** (found on small models exported both ways,
  `tests/test_memory.py`, now exact against autograd): the fused kernel lays its output out
  like its queries, so where the heads were split with `transpose(1, 2)` (the batch-first
  attention of timm, transformers and hand-written modules) merging them back is a view, not
  a second tensor. torchvision's `MultiheadAttention` splits the heads sequence-first (its
  queries lie (sequence, batch, heads, head size) in memory), and its `permute(2, 0, 1, 3)`
  before the output projection is a view on the CPU too: autograd keeps one storage for the
  attention's output and the projection's input in all 12 of ViT-B/16's blocks. The model
  follows the queries' layout back through the export's transposes and reshapes
  (`toolkit/layout.py`, against torch's strides on random chains) and counts the merge as a
  view wherever it reads that memory in order (ViT-B/16 from +8% to +2%: 0.502 GB predicted,
  0.490 GB measured). CUDA's kernels write the output (batch, sequence, heads, head size)
  whatever the queries: there the same merge copies, and a GPU tier counts two storages
  (`ModelMemory.on`; ViT-B/16 on the H200 stays +2%). And torch.matmul copies a batched
  operand whose heads a transpose moved ahead of the sequence, so a query or value kept by
  both a fused and a hand-written attention is two storages. The layer norm's mean and
  reciprocal standard deviation (two fp32 numbers per row) are counted too. ONNX's own
  `Attention` op (torch.onnx from opset 23) keeps what the decomposed export does.
- **Weights made at every step** (NFNet's standardised convolution weights, wav2vec2's
  weight-normed positional convolution, an LSTM's weights reordered into ONNX's gate order)
  are one tensor per step, not one per sample: NFNet-L0 from +87% to +7%, wav2vec2 from +67%
  to +5% at batch 8 (`graph.computed_from`).
- **Views keep their base** (2026-12-01, found by comparing the kept tensors of every model
  on this page with autograd's distinct storages at batch 2): a view autograd keeps holds its
  base's whole storage, once for all the views of it (ViT's head reads `x[:, 0]` and keeps
  all 197 tokens; `s.expand_as(y)` keeps only s). The model follows selects, slices, the
  pieces of a split, transposes, expansions, in-order reshapes and reshapes that only split
  axes back to the tensor an operator computed (`toolkit.layout.storages`, checked against
  torch's storages on random chains); where the graph cannot tell a view from a copy (a
  reshape merging axes of what may not lie in order) each counts its own, and torch.matmul's
  copy of an operand with two batch dimensions that views part of a storage is kept apart.
  A cast to the type a tensor has is that tensor (`.to()`: transformers' softmax in fp32,
  cast back), and an op no gradient flows through (on raw data alone) is not recorded by
  autograd and keeps nothing. Kept tensors now equal autograd's within 0.4% on fourteen of
  the fifteen models (Sequencer2d's oneDNN workspace is kept whole by autograd but only
  partly written, as measured), ViT-B/16 from -0.5% to 0.0%; and on thirteen architectures
  off this page (twelve timm families and a small LLaMA), within 0.4% of autograd, PVT-v2
  from +3.2% and LLaMA from +8.6% (timm's LeViT does not export in train mode at batch 1:
  its BatchNorm1d on pooled features needs two samples).
- **Decomposed group norm and weight norm, and LayerDrop** (the same comparison, wav2vec2 at
  +18%): the TorchScript exporter writes GroupNorm as InstanceNormalization and a product by
  its weight, and a weight norm as ReduceL2, Div and a product by g; PyTorch runs both fused,
  keeping the group norm's input and statistics and the weight norm's norms, never the
  products' inputs (13 and 19 MB at batch 2), so those products keep nothing
  (`fused_normalizations`; kept tensors from +18% to 0.0%). And wav2vec2 skips each encoder
  layer with p = 0.1 while training (LayerDrop): its train-mode export held the 10 layers one
  draw kept, the measured step those another draw kept. Both now run every layer
  (`zoo.keep_every_layer`: the step that skips none is the one that must fit).
- **oneDNN's LSTM workspace**: PyTorch trains an fp32 LSTM on the CPU with oneDNN, one call
  per direction, and keeps for the backward its input, its outputs and oneDNN's workspace
  (not ONNX's reordered copies of the weights, which the export shows). Of the workspace's
  page-aligned regions, the forward writes every step's gates (T x N x 4H floats, the leading
  dimension padded as oneDNN pads it) and cell states ((T + 1) x N x H), and the reverse
  direction each step's input and output too (2 x T x N x max(I, H)); the states' gradients
  are written only by the backward. Measured as the resident memory a forward adds beyond
  the tensors it makes (within 3% on three sizes, one bidirectional, `tests/test_memory.py`;
  eight more bidirectional ones by hand; the whole workspace's size fits oneDNN's layout on
  18). Sequencer2d, whose 36 bidirectional LSTMs run 32 or 16 sequences per sample, from
  -38% to +1%.
- **GRU and RNN** run decomposed on the CPU: autograd keeps, per step and sequence, a GRU's
  state, its hidden projection (the storage its three gates are chunks of), the new gate's
  tanh and the update's two factors (7 floats per hidden unit), an RNN's state (each step's
  output is the next one's input: T + 1 states), and the sequence once, or, read through a
  transpose (batch-first), once per direction. Equal to what autograd keeps within 1% for
  both cells, one and two directions, time- and batch-first (`tests/test_memory.py`).
- Left: wav2vec2, -7.5% with every layer run (it read +5% before the terms above, whose
  over-counts and the smaller export hid this): its kept tensors equal autograd's, so the
  missing 54 MB at batch 8 is live in the backward without being kept. Sampling the resident
  size at each module's gradient puts the peak inside the backward of the feature encoder's
  second convolution (512 to 512 channels, kernel 3, stride 2, over 3,199 steps); that
  convolution alone, 1-D or as 2-D, adds 157 MB in its backward on this CPU: its input
  gradient (52 MB), its weight gradient (3 MB) and about 100 MB more, the size of an im2col
  matrix (input channels x kernel x output steps x batch floats, 79 MB) and a copy of its
  output gradient (26 MB). The model's workspace counts the gradients only. The CNN rows stay
  within 1.5%, so which CPU convolutions take this path (PyTorch's choice of backend) and
  when their buffer sets the peak is the term left to model. ConvNeXt-T (-1%, -5% in
  an earlier run): a 38.5 MB scratch buffer a CPU kernel allocates during the backward of
  its last stage (no tensor: the profiler sees an anonymous block, three times), which no
  graph shows.
- **On a GPU** (the table below: an H200, 2026-11-30; raw rows in
  bench/results/memory-cuda.json) the same model, with the GPU's dropout masks, is within 7%
  for 16 of 18 rows, median 2%. What is live at the peak was read from the caching
  allocator's own trace (`python -m bench.gpu_peak`, bench/results/gpu-peak-*.json):
  - **Dropout masks.** CUDA's fused dropout keeps a 1-byte bool mask per element where the
    CPU path keeps a float noise tensor. Counted as floats, BERT was +14% at batch 32 (the
    masks over-counted by 0.462 GB, the excess was 0.466 GB) and +6% at batch 4; with the
    mask sized by where the tier trains (`backend` in the processor profile,
    `ModelMemory.on`) it is +0.4% and -3%.
  - **Sequencer2d, +16%: cuDNN's LSTM.** On CUDA the LSTM runs in cuDNN (`_cudnn_rnn`), whose
    reserve space is not the oneDNN workspace the model counts (that one is within 1% on the
    CPU). Not modelled.
  - **ResNet-18, -7%:** 16 MB above the CPU's measurement; at the peak the convolution's
    backward holds an 18.9 MB block that is no tensor of the graph (most likely cuDNN's
    workspace, whose size its heuristics choose). Not modelled.
"""


def _table(measured: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | batch | parameters | measured GB | predicted GB | error |",
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
    return lines


def write_doc(measured: list[dict[str, Any]], budgets: list[dict[str, Any]], doc: Path,
              gpu: dict[str, Any] | None = None) -> None:
    lines = ["# Training memory: the model against PyTorch, and budgets", "",
             "Regenerate with `python -m bench.memory` (about 5 minutes on 2 cores; `--cuda` "
             "on a GPU). Raw results: `bench/results/memory.json`.", "",
             *MODEL_TEXT.splitlines(),
             "## Against PyTorch", "",
             "One training step of each zoo model in a fresh process, as PyTorch runs it "
             "(the torchvision or transformers module in train mode, SGD with momentum, loss = "
             "the output's sum): what the step added to the process's peak resident memory "
             "(VmHWM, reset just before the step) beyond the loaded weights, against the "
             "model's prediction of the same (its peak less the weights) from the ONNX export "
             "alone.", "",
             *_table(measured)]
    lines += [*FINDINGS.splitlines(), ""]
    if gpu is not None:
        lines += ["## On a GPU", "",
                  f"The same step on {gpu['gpu']} (PyTorch {gpu['torch']}, CUDA {gpu['cuda']}, "
                  f"{gpu['date']}; `python -m bench.memory --cuda --measure-only` on a lent GPU "
                  "machine, run by `bench/gpu_split.py`): `torch.cuda.max_memory_allocated` "
                  "during the step less `torch.cuda.memory_allocated` before it, against the "
                  "same prediction. Raw results: `bench/results/memory-cuda.json`.", "",
                  *_table(gpu["measured"])]
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
    parser.add_argument("--measure-only", type=Path, metavar="JSON",
                        help="measure (on a GPU machine: 4 models at a time) and write the raw "
                             "rows there, without exporting or predicting")
    parser.add_argument("--cuda-from", type=Path, metavar="JSON",
                        help="a GPU run's raw rows: predict each here, write "
                             "bench/results/memory-cuda.json and docs/memory.md")
    parser.add_argument("--doc-only", action="store_true",
                        help="rewrite docs/memory.md from bench/results/")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args.cuda)))
        return
    models = [*MODELS.items(), *(CUDA_MODELS if args.cuda else [])]
    if args.measure_only:
        rows = measure(args.cuda, models, parallel=4 if args.cuda else 1)
        args.measure_only.write_text(json.dumps({**machine(), "measured": rows}, indent=1))
        return
    results, gpu_results = ROOT / "bench" / "results" / "memory.json", CUDA_RESULTS
    if args.cuda_from or args.cuda:
        raw = json.loads(args.cuda_from.read_text()) if args.cuda_from else \
            {**machine(), "measured": measure(True, models, parallel=4)}
        gpu_results.write_text(json.dumps(
            {**raw, "measured": with_predictions(raw["measured"])}, indent=1))
    elif not args.doc_only:
        measured = with_predictions(measure(False, models))
        results.write_text(json.dumps({"measured": measured, "budgets": budget_rows()},
                                      indent=1))
    data = json.loads(results.read_text())
    gpu = json.loads(gpu_results.read_text()) if gpu_results.exists() else None
    write_doc(data["measured"], data["budgets"], ROOT / "docs" / "memory.md", gpu)


if __name__ == "__main__":
    main()
