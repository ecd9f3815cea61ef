"""The training-memory model's terms, on a small PyTorch model exported as it trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from toolkit import api, zoo
from toolkit.costs import build_cost_graph
from toolkit.graph import Layer
from toolkit.memory import ModelMemory, SavedTensor, fused_attention, kept_by, peak_bytes
from toolkit.onnx import read_onnx

torch = pytest.importorskip("torch")
BATCH, SEQ = 16, 64
CPU = "raspberry-pi-5"  # a device that trains on its CPU, as autograd does here


def _tiny() -> Any:
    """A tied embedding and LM head, attention through scaled_dot_product_attention and by
    hand (softmax, dropout 0.1, dropout 0), and a learned layer scale."""
    nn, functional = torch.nn, torch.nn.functional

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(100, 32)
            self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))
            self.scale = nn.Parameter(torch.ones(32))
            self.drop, self.nodrop = nn.Dropout(0.1), nn.Dropout(0.0)
            self.head = nn.Linear(32, 100, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids: Any) -> Any:
            b, s = ids.shape
            x = self.emb(ids)
            q, k, v = (f(x).view(b, s, 4, 8).transpose(1, 2) for f in (self.q, self.k, self.v))
            fused = functional.scaled_dot_product_attention(q, k, v)
            x = x + self.o(fused.transpose(1, 2).reshape(b, s, 32)) * self.scale
            p = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1)
            x = x + self.nodrop(self.drop(p) @ v).transpose(1, 2).reshape(b, s, 32)
            return self.head(torch.relu(x))

    torch.manual_seed(0)
    return Tiny().train()


def _autograd_saved_bytes(output: Any, params: set[int]) -> int:
    """What autograd actually keeps: the distinct storages of every saved float tensor."""
    seen: dict[int, int] = {}
    stack, visited = [output.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in visited:
            continue
        visited.add(fn)
        for attr in dir(fn):
            if not attr.startswith("_saved_"):
                continue
            value = getattr(fn, attr)
            for t in value if isinstance(value, tuple) else (value,):
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    storage = t.untyped_storage()
                    if storage.data_ptr() not in params:
                        seen[storage.data_ptr()] = storage.nbytes()
        stack.extend(f for f, _ in fn.next_functions)
    return sum(seen.values())


def _kept(graph: Any, module: Any, inputs: Any) -> tuple[Any, float, int]:
    """The cost graph at BATCH, what its memory model keeps from the forward pass to the
    backward, and what autograd keeps running `module` on `inputs`."""
    costs = build_cost_graph(graph, api.make_scenario(batch=BATCH, optimizer="sgd", device=CPU))
    assert costs.memory is not None
    predicted = sum(x.nbytes for x in costs.memory.saved if x.start < 0 and not x.readers)
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    return costs, predicted, _autograd_saved_bytes(module(inputs), params)


def test_the_kept_activations_are_what_autograd_keeps(tmp_path: Path) -> None:
    module = _tiny()
    ids = torch.randint(0, 100, (BATCH, SEQ))
    path = tmp_path / "tiny.onnx"
    zoo.export_module(torch, module, (ids,), path, "torchscript")
    graph = api.load_graph(str(path), name="tiny")
    layers = list(graph)
    # the SDPA call is fused (no attention matrix kept); the hand-written attention is not
    _, lse = fused_attention(graph)
    assert len(lse) == 1
    assert next(iter(lse.values())) == 4 * SEQ * 4  # one float per head and query row
    # dropout at training time is marked, dropout with p = 0 is not
    drops = {layer.name: layer.attrs for layer in layers if layer.op == "Dropout"}
    assert sorted(drops.values()) == ["", "training_mode=1"]
    # the LM head shares the embedding's weight, owned by the embedding
    head = next(layer for layer in layers if layer.tied)
    owner, elements = head.tied[0]
    assert elements == 100 * 32 and graph.layers[owner].op == "Gather"
    assert head.params == 0 and graph.layers[owner].params == 100 * 32

    costs, predicted, measured = _kept(graph, module, ids)
    # the dropout mask and the attention matrix are each ~23% of the total: without either
    # term, or with the fused attention's matrix counted, this fails; so does missing the
    # copies torch.matmul makes of the transposed q and v (their views are kept by the fused
    # attention too: 6%), or counting the fused output and its merged heads twice (3%)
    assert predicted == pytest.approx(measured, rel=0.01)
    scale = next(i for i, layer in enumerate(layers) if layer.op == "Mul" and layer.trainable)
    assert any(scale in x.keepers for x in costs.memory.saved)


def _weight_standardized() -> Any:
    """NFNet's convolution: its weight standardised per output channel at every step, from
    the weight alone, then convolved with the batch."""
    nn, functional = torch.nn, torch.nn.functional

    class StdConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(64, 64, 3, 3))

        def forward(self, x: Any) -> Any:
            centred = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
            std = torch.sqrt((centred ** 2).mean(dim=(1, 2, 3), keepdim=True) + 1e-5)
            return torch.relu(functional.conv2d(torch.relu(x), centred / std, padding=1))

    torch.manual_seed(0)
    return StdConv().train()


def test_what_weights_alone_make_is_kept_once_per_step_not_per_sample(tmp_path: Path) -> None:
    """The standardised weight (and what its backward keeps) is one tensor per step whatever
    the batch; the activations are one per sample. Counting the weight's terms per sample
    made NFNet-L0's training memory 1.87x what PyTorch allocates at batch 8 (now 1.07x)."""
    module = _weight_standardized()
    x = torch.randn(BATCH, 64, 8, 8)
    path = tmp_path / "std.onnx"
    zoo.export_module(torch, module, (x,), path, "torchscript")
    graph = api.load_graph(str(path), name="std")
    weight_made = [layer for layer in graph if not graph.per_sample(layer)]
    assert {layer.op for layer in weight_made} >= {"ReduceMean", "Sub", "Sqrt", "Div"}
    assert all(graph.per_sample(layer) for layer in graph if layer.op == "Conv")
    costs, predicted, measured = _kept(graph, module, x)
    assert predicted == pytest.approx(measured, rel=0.01)
    # what the weight's layers keep is the same at batch 1 and at BATCH
    one = build_cost_graph(graph, api.make_scenario(batch=1, optimizer="sgd")).memory
    assert one is not None
    kept = [i for i, layer in enumerate(graph) if layer in weight_made]

    def weight_terms(memory: ModelMemory) -> float:
        return sum(x.nbytes for x in memory.saved
                   if x.start < 0 and not x.readers and set(x.keepers) <= set(kept))

    assert weight_terms(one) == weight_terms(costs.memory) > 64 * 64 * 9 * 4


def test_held_and_tied_spans_and_a_learned_scale() -> None:
    scale = Layer("s", "Mul", ("x",), ("y",), params=8, param_bytes=32)
    assert kept_by(scale) == ("x",)  # the gradient of the scale needs x
    assert kept_by(Layer("c", "Mul", ("x",), ("y",))) == ()  # by a constant
    # 4 layers; a tensor held from position 0 while its reader (3) is on another tier; a tied
    # partial alive from the owner (0) to its reader (2), and one more copy at the owner
    memory = ModelMemory(state=[0.0] * 4, grads=[0.0] * 4, workspace=[0.0] * 4, saved=[
        SavedTensor(100.0, (1,), start=0, readers=(3,)),
        SavedTensor(10.0, (2,), start=0, stop=2), SavedTensor(10.0, (2,), start=0, stop=0),
        SavedTensor(1.0, (3,))])
    assert peak_bytes(memory, [0, 1, 2], 4) == 100 + 20  # at position 0
    assert peak_bytes(memory, [0, 1, 2, 3], 4) == 20  # nothing sent; the 1 is freed by then
    assert peak_bytes(memory, [3], 4) == 1
    assert peak_bytes(memory, [1], 4) == 100
    spans = [x.span(4) for x in memory.saved]
    assert spans == [(0, 3), (0, 2), (0, 0), (3, 3)]
    assert np.isclose(peak_bytes(memory, [2], 4), 20)


def _causal_blocks() -> Any:
    """Two pre-norm causal self-attention blocks through scaled_dot_product_attention."""
    nn, functional = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm, self.qkv, self.out = nn.LayerNorm(32), nn.Linear(32, 96), nn.Linear(32, 32)

        def forward(self, x: Any) -> Any:
            b, s, _ = x.shape
            q, k, v = self.qkv(self.norm(x)).view(b, s, 3, 4, 8).permute(2, 0, 3, 1, 4)
            y = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return x + self.out(y.transpose(1, 2).reshape(b, s, 32))

    torch.manual_seed(0)
    blocks = nn.Sequential(Block(), Block(), nn.Linear(32, 10)).train()
    with torch.no_grad():  # as after training: no two LayerNorms alike, which torch.onnx's
        for p in blocks.parameters():  # optimizer would store once (a weight tied by value)
            p.add_(0.01 * torch.randn_like(p))
    return blocks


def test_attention_exported_as_one_op_costs_and_keeps_what_its_decomposition_does(
        tmp_path: Path) -> None:
    """torch.onnx exports scaled_dot_product_attention as ONNX's Attention op from opset 23
    and spelt out in MatMuls and a Softmax before: the same FLOPs, MACs and kept activations
    either way, and those are what autograd keeps. Exported as `torch.onnx.export(dynamo=True)`
    does by default (its optimizer folds the scale and the causal mask into initializers):
    the parameters are PyTorch's, not those constants too."""
    module = _causal_blocks()
    x = torch.randn(BATCH, SEQ, 32)
    graphs, saved = [], []
    for opset in (18, 23):
        path = tmp_path / f"blocks{opset}.onnx"
        with torch.no_grad():
            torch.onnx.export(module, (x,), str(path), dynamo=True, opset_version=opset,
                              verbose=False)
        graph = api.load_graph(str(path), name=f"blocks{opset}")
        assert sum(layer.params for layer in graph) == sum(p.numel()
                                                           for p in module.parameters())
        costs = build_cost_graph(graph, api.make_scenario(batch=BATCH, optimizer="sgd"))
        assert costs.memory is not None
        saved.append(sum(t.nbytes for t in costs.memory.saved if t.start < 0 and not t.readers))
        graphs.append(graph)
    spelt, fused = graphs
    assert [layer.op for layer in fused].count("Attention") == 2
    assert "Attention" not in [layer.op for layer in spelt]
    assert sum(layer.macs for layer in fused) == sum(layer.macs for layer in spelt)
    assert sum(layer.flops for layer in fused) == pytest.approx(
        sum(layer.flops for layer in spelt), rel=1e-9)
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    measured = _autograd_saved_bytes(module(x), params)
    # the two attention matrices (4 heads x 64 x 64 floats per sample each) would be 2/3 of
    # the total: counting them fails, and so does missing the fused output and log-sum-exp,
    # counting the output merged back from heads apart from it (15%), or missing the layer
    # norms' statistics (1%)
    assert saved[0] == saved[1] == pytest.approx(measured, rel=0.005)


@pytest.mark.parametrize(("activation", "gelus"), [
    (torch.nn.GELU, 2), (lambda: torch.nn.GELU(approximate="tanh"), 0), (torch.nn.ReLU, 0)])
def test_a_decomposed_gelu_is_counted_and_said(tmp_path: Path, activation: Any,
                                               gelus: int) -> None:
    """TorchScript writes each exact GELU as Div, Erf, Add, Mul, Mul; the note says so."""
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), activation(), torch.nn.Linear(8, 8),
                                 activation()).eval()
    path = tmp_path / "m.onnx"
    zoo.export_module(torch, module, (torch.randn(1, 8),), path, "torchscript")
    graph = read_onnx(path)
    noted = [n for n in graph.notes if "GELU" in n]
    assert len(noted) == (1 if gelus else 0)
    if gelus:
        assert noted[0].startswith(f"{gelus} GELUs exported as five nodes")
        assert sum(layer.op == "Erf" for layer in graph) == gelus


_LSTM_FORWARD = """
import gc, sys, torch
torch.set_num_threads(1)
steps, batch, features, hidden, both, batch_first = map(int, sys.argv[1:7])
def resident():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                if l.startswith("VmRSS"))
lstm = torch.nn.LSTM(features, hidden, bidirectional=bool(both), batch_first=bool(batch_first))
x = torch.randn(*((batch, steps) if batch_first else (steps, batch)), features)
y, _ = lstm(x); y.sum().backward(); del y; gc.collect()  # oneDNN's primitives made
before = resident()
y, (h, c) = lstm(x)
tensors = y.numel() + h.numel() + c.numel()  # the output, the last states
tensors += both * 2 * steps * batch * hidden  # each direction's output, before their concat
tensors += batch_first * steps * batch * features  # the input's steps-first copy
print(resident() - before - 4 * tensors)
"""


@pytest.mark.parametrize("steps,batch,features,hidden,both,batch_first", [
    (64, 32, 256, 256, 0, 0), (48, 24, 96, 320, 0, 0), (32, 64, 192, 48, 1, 1)])
def test_an_lstm_keeps_the_part_of_onednns_workspace_its_forward_writes(
        tmp_path: Path, steps: int, batch: int, features: int, hidden: int, both: int,
        batch_first: int) -> None:
    """PyTorch's CPU LSTM keeps oneDNN's workspace for its backward; the forward writes its
    gates and cell states, and in the reverse direction its inputs and outputs (the rest
    only the backward touches). Measured here as the resident memory a forward adds beyond
    the tensors it makes, with large blocks mapped fresh (bench.memory's allocator
    settings), against the model's figure from the ONNX export."""
    import os
    import subprocess
    import sys

    from toolkit.memory import lstm_workspace

    class Seq(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(features, hidden, bidirectional=bool(both),
                                      batch_first=bool(batch_first))

        def forward(self, x: Any) -> Any:
            return self.lstm(x)[0]

    path = tmp_path / "lstm.onnx"
    example = torch.randn(*((2, steps) if batch_first else (steps, 2)), features)
    zoo.export_module(torch, Seq().train(), (example,), path, "torchscript")
    graph = api.load_graph(str(path), name="lstm")
    lstm = next(layer for layer in graph if layer.op == "LSTM")
    assert set(kept_by(lstm)) == {lstm.inputs[0], *lstm.outputs}  # not ONNX's weight copies
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    measured = int(subprocess.run(
        [sys.executable, "-c", _LSTM_FORWARD,
         *map(str, (steps, batch, features, hidden, both, batch_first))],
        capture_output=True, text=True, check=True, env=env).stdout)
    # without the cell states (a fifth of it), without the reverse direction's steps
    # (nearly half of a bidirectional one's) or with the whole workspace, this fails
    assert lstm_workspace(graph, lstm, batch) == pytest.approx(measured, rel=0.03)


@pytest.mark.parametrize("cell", ["GRU", "RNN"])
@pytest.mark.parametrize("both,batch_first", [(0, 0), (1, 1), (1, 0)])
def test_a_gru_or_rnn_keeps_what_autograd_keeps_for_its_steps(
        tmp_path: Path, cell: str, both: int, batch_first: int) -> None:
    """PyTorch runs GRU and RNN decomposed on the CPU: autograd keeps each step's tensors
    (a GRU's 7 per hidden unit, an RNN's state), the sequence once, and where it is read
    through a transpose, one copy per direction."""

    class Seq(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = getattr(torch.nn, cell)(16, 12, bidirectional=bool(both),
                                               batch_first=bool(batch_first))

        def forward(self, x: Any) -> Any:
            return self.rnn(x)[0]

    torch.manual_seed(0)
    module = Seq().train()
    x = torch.randn(*((BATCH, 10) if batch_first else (10, BATCH)), 16)
    path = tmp_path / "rnn.onnx"
    zoo.export_module(torch, module, (x,), path, "torchscript")
    graph = api.load_graph(str(path), name="rnn")
    assert [layer.op for layer in graph if layer.op in ("GRU", "RNN")] == [cell]
    _, predicted, measured = _kept(graph, module, x)
    # without the steps' tensors (most of it), or the second direction's copy of a
    # batch-first sequence, this fails
    assert predicted == pytest.approx(measured, rel=0.01)


def test_a_fourier_transform_keeps_nothing_for_its_backward(tmp_path: Path) -> None:
    """FNet's token mixing (a 2-D FFT's real part added to its input, between two linear
    layers; exported by dynamo as DFT nodes): an FFT's gradient is the inverse FFT of the
    output's gradient, so autograd keeps only what the linear layers read. Counting the DFTs'
    inputs fails. (The sum is FNet's: a layer reading the real part itself would keep the
    complex storage that view lies in, which the model does not count.)"""
    nn = torch.nn

    class Mixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(32, 32), nn.Linear(32, 32)

        def forward(self, x: Any) -> Any:
            h = self.a(x)
            return self.b(torch.fft.fftn(h, dim=(1, 2)).real + h)

    module, x = Mixer().train(), torch.randn(BATCH, SEQ, 32)
    path = tmp_path / "mixer.onnx"
    zoo.export_module(torch, module, (x,), path, "dynamo")
    graph = api.load_graph(str(path), name="mixer", dims={"batch": BATCH})
    dfts = [layer for layer in graph if layer.op == "DFT"]
    assert dfts and all(layer.supported for layer in dfts)
    _, predicted, measured = _kept(graph, module, x)
    assert predicted == pytest.approx(measured, rel=0.01)


def test_roi_align_keeps_the_boxes_not_the_features(tmp_path: Path) -> None:
    """torchvision's RoIAlign saves the boxes for its backward (and the features' shape), not
    the features: as autograd's saved-tensor hooks see it running a Faster R-CNN-like head."""
    torchvision = pytest.importorskip("torchvision")
    nn = torch.nn

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 7 * 7, 10)

        def forward(self, x: Any, boxes: Any) -> Any:
            pooled = torchvision.ops.roi_align(self.conv(x), boxes, output_size=7,
                                               sampling_ratio=2)
            return self.fc(pooled.flatten(1))

    module = Head()
    x = torch.randn(2, 3, 32, 32)
    boxes = torch.tensor([[0, 1.0, 1.0, 20.0, 20.0], [1, 4.0, 2.0, 30.0, 25.0]])
    saved: dict[int, tuple[int, ...]] = {}

    def pack(t: Any) -> Any:
        saved[t.untyped_storage().data_ptr()] = tuple(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x, boxes)
    shapes = set(saved.values())
    assert (2, 8, 32, 32) not in shapes and {(2, 3, 32, 32), (2, 5)} <= shapes
    path = tmp_path / "head.onnx"
    zoo.export_module(torch, module, (x, boxes), path, "torchscript")
    graph = api.load_graph(str(path), name="head")
    roi = next(layer for layer in graph if layer.op == "RoiAlign")
    assert roi.supported and kept_by(roi) == roi.inputs[1:2]
    assert graph.tensors[roi.inputs[1]].shape[-1] == 4  # the boxes' corners


def test_a_spatial_transformer_keeps_what_autograd_keeps(tmp_path: Path) -> None:
    """A spatial transformer (theta from a linear layer, F.affine_grid, grid sampling) and a
    determinant, which the TorchScript exporter writes as AffineGrid and Det: affine_grid
    keeps nothing (its gradient is the output's summed over a base grid it makes again);
    linalg.det keeps its input, its output, the LU factors and their pivots. Keeping theta
    for the grid, or leaving out the LU factors, fails."""
    nn = torch.nn
    functional = torch.nn.functional

    class Transformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.locate, self.conv = nn.Linear(3, 6), nn.Conv2d(3, 8, 3)

        def forward(self, x: Any) -> Any:
            theta = self.locate(x.mean(dim=(2, 3))).view(-1, 2, 3)
            grid = functional.affine_grid(theta, list(x.shape), align_corners=False)
            y = self.conv(functional.grid_sample(x, grid, align_corners=False))
            # (the determinants of views: each keeps its base's whole storage)
            return y.mean() + torch.linalg.det(y[:, 0]).sum() + torch.linalg.det(
                theta[:, :, :2]).sum()

    module, x = Transformer().train(), torch.randn(BATCH, 3, 16, 16)
    saved: list[tuple[int, ...]] = []

    def pack(t: Any) -> Any:
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        functional.affine_grid(torch.randn(BATCH, 2, 3, requires_grad=True), [BATCH, 3, 16, 16],
                               align_corners=False)
    assert saved == []
    path = tmp_path / "stn.onnx"
    zoo.export_module(torch, module, (x,), path, "torchscript")
    graph = api.load_graph(str(path), name="stn", dims={"batch": BATCH})
    ops = {layer.op: layer for layer in graph}
    assert ops["AffineGrid"].supported and ops["Det"].supported
    assert kept_by(ops["AffineGrid"]) == ()
    _, predicted, measured = _kept(graph, module, x)
    assert predicted == pytest.approx(measured, rel=0.01)


def test_a_kept_view_keeps_its_whole_storage_once(tmp_path: Path) -> None:
    """Autograd, keeping a view, keeps its base's storage whole and once: a linear layer on
    `y[:, 0, 0]` keeps all of y, one on `y.flatten(1)` the same storage again, a product with
    `s.expand_as(y)` only s. A reshape of a transposed view is a copy, a storage of its own.
    Counting each view's own bytes (one 16th of y for the select, all of y for the expanded s)
    fails, and so does taking the transposed reshape for a view."""
    nn = torch.nn

    class Views(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = (nn.Conv2d(3, 16, 3, padding=1) for _ in range(3))
            self.head, self.body = nn.Linear(8, 8), nn.Linear(16 * 64, 8)
            self.tail = nn.Linear(16 * 64, 8)

        def forward(self, x: Any) -> Any:
            y, z = self.a(x), torch.relu(self.c(x))  # y is kept only through its views
            s = self.b(x).mean(dim=(2, 3), keepdim=True)
            gated = torch.tanh(z * s.expand_as(z)).mean(dim=(1, 2, 3))
            copied = self.tail(z.transpose(1, 2).reshape(x.shape[0], -1))
            return self.head(y[:, 0, 0]) + self.body(y.flatten(1)) + copied + gated[:, None]

    module, x = Views().train(), torch.randn(BATCH, 3, 8, 8)
    path = tmp_path / "views.onnx"
    zoo.export_module(torch, module, (x,), path, "torchscript")
    graph = api.load_graph(str(path), name="views", dims={"batch": BATCH})
    ops = [layer.op for layer in graph]
    assert {"Gather", "Expand", "Transpose"} <= set(ops)
    _, predicted, measured = _kept(graph, module, x)
    assert predicted == pytest.approx(measured, rel=0.01)


def test_a_cast_to_its_own_type_a_reshape_that_only_splits_and_ops_without_gradients(
        tmp_path: Path) -> None:
    """A softmax computed in fp32 and cast back (`softmax(..., dtype=torch.float32).to(x.dtype)`,
    as transformers' attention does: `.to()` of an fp32 tensor returns it) keeps one storage
    for the softmax and the product that reads the cast (LLaMA +9% before); PVT's spatial
    reduction reads `h.permute(0, 2, 1).reshape(b, c, h, w)`, a reshape of a transposed view
    that only splits an axis, so a view whatever the strides (PVT-v2 +3% before); and an op
    on the raw input alone (`x.pow(2)`, max pooling it) is not recorded by autograd, so keeps
    nothing, not even the pooling's indices."""
    nn = torch.nn

    class Attending(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.out = nn.Linear(32, 32), nn.Linear(32, 8)
            self.reduce = nn.Conv2d(32, 32, 2, stride=2)

        def forward(self, x: Any) -> Any:
            b, n, c = x.shape
            h = self.q(torch.nn.functional.max_pool1d(x.pow(2), 1))
            p = torch.softmax(h @ h.transpose(1, 2), -1, dtype=torch.float32).to(x.dtype)
            h = p @ h
            reduced = self.reduce(h.permute(0, 2, 1).reshape(b, c, 8, n // 8))
            return self.out(h).mean() + reduced.mean()

    module, x = Attending().train(), torch.randn(BATCH, 64, 32)
    path = tmp_path / "attending.onnx"
    zoo.export_module(torch, module, (x,), path, "torchscript")
    graph = api.load_graph(str(path), name="attending", dims={"batch": BATCH})
    assert {"Cast", "Pow", "MaxPool", "Transpose", "Reshape"} <= {layer.op for layer in graph}
    _, predicted, measured = _kept(graph, module, x)
    assert predicted == pytest.approx(measured, rel=0.01)


def test_a_decomposed_group_norm_and_weight_norm_keep_what_the_fused_ops_keep(
        tmp_path: Path) -> None:
    """The TorchScript exporter writes GroupNorm as InstanceNormalization between Reshapes,
    then Mul by the weight, and a weight norm as ReduceL2, Div and Mul by g; PyTorch's fused
    ops keep the group norm's input and statistics, and v, g and the norms: neither Mul keeps
    its input (wav2vec2's feature encoder and positional convolution: counting them was
    +18% there). Counting either Mul's input fails."""
    nn = torch.nn
    weight_norm = torch.nn.utils.parametrizations.weight_norm

    class Normed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(4, 32, 3, padding=1)
            self.norm = nn.GroupNorm(8, 32)
            self.mix = weight_norm(nn.Conv1d(32, 32, 5, padding=2, groups=4), dim=2)

        def forward(self, x: Any) -> Any:
            return self.mix(torch.relu(self.norm(self.conv(x))))

    torch.manual_seed(0)
    module, x = Normed().train(), torch.randn(BATCH, 4, 256)
    path = tmp_path / "normed.onnx"
    zoo.export_module(torch, module, (x,), path, "torchscript")
    graph = api.load_graph(str(path), name="normed", dims={"batch": BATCH})
    assert {"InstanceNormalization", "ReduceL2"} <= {layer.op for layer in graph}
    _, predicted, measured = _kept(graph, module, x)
    assert predicted == pytest.approx(measured, rel=0.01)


class _UnbindAttention(torch.nn.Module):
    """timm's attention: q, k and v unbound from one projection (Split and Squeeze in the
    export), laid out (batch, sequence, heads, head size); heads merged with transpose(1, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = torch.nn.Linear(32, 96), torch.nn.Linear(32, 32)

    def forward(self, x: Any) -> Any:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 4, c // 4).permute(2, 0, 3, 1, 4).unbind(0)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _SequenceFirstAttention(torch.nn.Module):
    """torch's `nn.MultiheadAttention`, batch first (torchvision's ViT, TransformerEncoder):
    queries laid out (sequence, batch, heads, head size); heads merged with
    permute(2, 0, 1, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x: Any) -> Any:
        return self.attention(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize(("make", "copied_on_cuda"), [(_SequenceFirstAttention, True),
                                                      (_UnbindAttention, False)])
def test_heads_merged_in_place_are_one_storage_with_the_attention_output(
        make: Any, copied_on_cuda: bool, tmp_path: Path) -> None:
    """The CPU's fused kernel gives its output the queries' strides, so merging the heads
    back reads it in order, a view, where the queries lay (sequence, batch, heads, head size)
    and the merge is permute(2, 0, 1, 3) as much as where they lay (batch, sequence, heads,
    head size) and it is transpose(1, 2): autograd keeps one storage for both. Counting the
    projection's input apart fails here (ViT-B/16's +8% in docs/memory.md). CUDA's kernels
    write (batch, sequence, heads, head size) whatever the queries: there the first merge
    copies, and the tier keeps both."""
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention, self.out = make(), torch.nn.Linear(32, 8)

        def forward(self, x: Any) -> Any:
            return self.out(self.attention(x) + x)

    module, x = Block().train(), torch.randn(BATCH, SEQ, 32)
    path = tmp_path / "attention.onnx"
    zoo.export_module(torch, module, (x,), path, "torchscript")
    graph = api.load_graph(str(path), name="attention", dims={"batch": BATCH})
    costs, predicted, measured = _kept(graph, module, x)
    assert predicted == pytest.approx(measured, rel=0.01)
    assert costs.memory is not None
    on_cuda = costs.memory.on("cuda")
    merged = BATCH * SEQ * 32 * 4  # the attention's output, once more
    assert sum(s.nbytes for s in on_cuda.saved) - sum(s.nbytes for s in costs.memory.saved) \
        == (merged if copied_on_cuda else 0)


def _one_contrib_node(op: str, attrs: dict[str, Any], extra: list[str], shape: list[int],
                      weights: list[Any], outputs: int, domain: str) -> Any:
    """x -> Mul(w0) -> OP(h, extra...) -> Mul(w1) -> y: the operator between two layers that
    train, so that autograd records it."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    named = [numpy_helper.from_array(s if isinstance(s, np.ndarray) else
                                     rng.standard_normal(s).astype(np.float32), n)
             for n, s in [("w0", shape[1:]), *weights]]
    nodes = [helper.make_node("Mul", ["x", "w0"], ["h"]),
             helper.make_node(op, ["h", *extra], ["o", *(f"o{k}" for k in range(1, outputs))],
                              domain=domain, **attrs),
             helper.make_node("Mul", ["o", "w1"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, shape)],
                              [helper.make_tensor_value_info("y", 1, None)], named)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23),
                                                   helper.make_opsetid("com.microsoft", 1)])


def _kept_by_the_executor(m: Any, feeds: dict[str, Any]) -> tuple[float, int]:
    """What the memory model keeps of `m` at BATCH, and what autograd keeps as the executor
    trains it on `feeds` (its output `y`)."""
    from toolkit.onnx import read_model
    from toolkit.train.executor import OnnxModule, trainable_initializers

    costs = build_cost_graph(read_model(m, "g"),
                             api.make_scenario(batch=BATCH, optimizer="sgd", device=CPU))
    assert costs.memory is not None
    predicted = sum(x.nbytes for x in costs.memory.saved if x.start < 0 and not x.readers)
    module = OnnxModule(m, trainable_initializers(m.graph))
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    return predicted, _autograd_saved_bytes(module(feeds)["y"], params)


_S, _H = 16, 32
_ROW = [("w1", [_S, _H])]
_CONTRIB_KEEPS = [
    ("FusedConv", {"activation": "Relu", "pads": [1] * 4}, ["wc", "bc"], [BATCH, 8, 12, 12],
     [("wc", [8, 8, 3, 3]), ("bc", [8]), ("w1", [8, 12, 12])], 1, "com.microsoft"),
    ("FusedConv", {"activation": "LeakyRelu", "activation_params": [0.1], "pads": [1] * 4},
     ["wc", "bc"], [BATCH, 8, 12, 12], [("wc", [8, 8, 3, 3]), ("bc", [8]),
                                        ("w1", [8, 12, 12])], 1, "com.microsoft"),
    ("FusedMatMul", {"alpha": 0.5, "transB": 1}, ["wm"], [BATCH, _S, _H],
     [("wm", [_H, _H]), *_ROW], 1, "com.microsoft"),
    ("QuickGelu", {}, [], [BATCH, _S, _H], _ROW, 1, "com.microsoft"),
    ("QuickGelu", {"alpha": 1.0}, [], [BATCH, _S, _H], _ROW, 1, "com.microsoft"),
    ("BiasGelu", {}, ["bb"], [BATCH, _S, _H], [("bb", [_H]), *_ROW], 1, "com.microsoft"),
    ("SkipLayerNormalization", {}, ["h", "ga", "be"], [BATCH, _S, _H],
     [("ga", [_H]), ("be", [_H]), *_ROW], 1, "com.microsoft"),
    ("SkipLayerNormalization", {}, ["h", "ga", "be", "bi"], [BATCH, _S, _H],
     [("ga", [_H]), ("be", [_H]), ("bi", [_H]), *_ROW], 4, "com.microsoft"),
    ("SkipSimplifiedLayerNormalization", {}, ["h", "ga"], [BATCH, _S, _H],
     [("ga", [_H]), *_ROW], 1, "com.microsoft"),
    ("SimplifiedLayerNormalization", {}, ["ga"], [BATCH, _S, _H], [("ga", [_H]), *_ROW], 1,
     ""),
    ("RMSNormalization", {"epsilon": 1e-5}, ["ga"], [BATCH, _S, _H], [("ga", [_H]), *_ROW], 1,
     ""),
    ("Attention", {"num_heads": 4}, ["wa", "ba"], [BATCH, _S, _H],
     [("wa", [_H, 3 * _H]), ("ba", [3 * _H]), *_ROW], 1, "com.microsoft"),
    ("MultiHeadAttention", {"num_heads": 4}, ["h", "h"], [BATCH, _S, _H], _ROW, 1,
     "com.microsoft"),
    ("GroupQueryAttention", {"num_heads": 2, "kv_num_heads": 1},  # packed: keys repeated
     ["", "", "", "", "lengths", "total"], [BATCH, _S, _H],
     [("lengths", np.full([BATCH], _S - 1, np.int32)), ("total", np.array(_S, np.int32)),
      ("w1", [_S, _H // 2])], 3, "com.microsoft"),
]


@pytest.mark.parametrize(("op", "attrs", "extra", "shape", "weights", "outputs", "domain"),
                         _CONTRIB_KEEPS, ids=[f"{c[0]}-{k}" for k, c in
                                              enumerate(_CONTRIB_KEEPS)])
def test_onnxruntimes_fusions_and_rms_norms_keep_what_autograd_keeps(
        op: str, attrs: dict[str, Any], extra: list[str], shape: list[int], weights: list[Any],
        outputs: int, domain: str) -> None:
    """Each of onnxruntime's fusions as the executor trains it, and an RMS normalisation (its
    float32 arithmetic as PyTorch's `F.rms_norm` records it on a CPU: the input, the
    normalised input, a root per row): the memory model keeps what autograd keeps. Without
    the terms no tensor of the graph holds (a skip normalisation's sum and statistics, a
    LeakyRelu's input after a convolution, attention's split heads and probabilities, an RMS
    norm's normalised input) some 25-60% is missing."""
    m = _one_contrib_node(op, attrs, extra, shape, weights, outputs, domain)
    predicted, measured = _kept_by_the_executor(m, {"x": torch.randn(shape)})
    assert predicted == pytest.approx(measured, rel=0.002)


def test_an_onnxruntime_optimized_file_keeps_what_its_source_and_the_executor_keep(
        tmp_path: Path) -> None:
    """A model PyTorch exported at batch 16 and the file onnxruntime's graph optimizer saved
    from it, which reshapes each 3-D MatMul into a Gemm of (batch x sequence) rows: read per
    sample (the batch followed through the fused operators and the merged rows: before, the
    rows kept their 16 samples and the file's activations came to 3.4 times the source's),
    the optimized file keeps what its source keeps, which is what autograd keeps training
    the PyTorch model, and what it keeps when the executor trains the optimized file."""
    from tests.test_contrib_training import _Fusable, _optimized
    from toolkit.train.executor import OnnxModule, trainable_initializers

    torch.manual_seed(0)
    module, x = _Fusable().train(), torch.randn(BATCH, 3, 8, 8)
    source = tmp_path / "source.onnx"
    zoo.export_module(torch, module, (x,), source, "torchscript")
    optimized = _optimized(source, tmp_path / "optimized.onnx")
    fused_graph = api.load_graph(str(tmp_path / "optimized.onnx"), name="optimized")
    assert any(layer.op == "Gemm" for layer in fused_graph)  # (the reshaped MatMuls)
    _, source_kept, torch_kept = _kept(api.load_graph(str(source), name="source"), module, x)
    _, fused_kept, _ = _kept(fused_graph, module, x)
    executor = OnnxModule(optimized, trainable_initializers(optimized.graph))
    params = {p.untyped_storage().data_ptr() for p in executor.parameters()}
    out = executor({executor.input_names[0]: x})[executor.output_names[0]]
    measured = _autograd_saved_bytes(out, params)
    assert source_kept == pytest.approx(torch_kept, rel=0.001)
    assert fused_kept == pytest.approx(source_kept, rel=0.001)
    assert fused_kept == pytest.approx(measured, rel=0.001)


@pytest.mark.parametrize("sum_output", ["sum", ""])
def test_berts_fused_embeddings_keep_their_sum_and_statistics(sum_output: str) -> None:
    """onnxruntime's EmbedLayerNormalization (three lookups summed, then LayerNorm) keeps
    what autograd keeps as the executor trains it: the sum (an output or not) and two
    statistics per token; not the token ids its inputs are (it counted those alone)."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    tables = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
              for n, s in [("words", [50, 32]), ("positions", [SEQ, 32]), ("types", [2, 32]),
                           ("gamma", [32]), ("beta", [32]), ("w1", [SEQ, 32])]]
    ids = ["ids", "segments", "mask"]
    nodes = [helper.make_node("EmbedLayerNormalization",
                              ["ids", "segments", "words", "positions", "types", "gamma",
                               "beta", "mask"], ["o", "index", sum_output],
                              domain="com.microsoft"),
             helper.make_node("Mul", ["o", "w1"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, 6, [BATCH, SEQ]) for n in ids],
        [helper.make_tensor_value_info("y", 1, None)], tables)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("com.microsoft", 1)])
    predicted, measured = _kept_by_the_executor(m, {
        "ids": torch.randint(0, 50, (BATCH, SEQ), dtype=torch.int32),
        "segments": torch.randint(0, 2, (BATCH, SEQ), dtype=torch.int32),
        "mask": torch.ones(BATCH, SEQ, dtype=torch.int32)})
    assert predicted == pytest.approx(measured, rel=0.002)
