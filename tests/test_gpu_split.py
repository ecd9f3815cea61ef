"""The prepared GPU run (`bench/gpu_split.py`) works end to end before a GPU is lent: a GPU
machine's minutes are few, so its script is run here with the server on the CPU, on a small
model, through the same phases and document writers."""

from __future__ import annotations

import json
import time

import numpy as np
from onnx import helper, numpy_helper

from bench import gpu_peak, gpu_split, memory
from tests.helpers import model, save, vi


def test_the_prepared_gpu_run_trains_predicts_and_documents_on_the_cpu(tmp_path):
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.1, n)
               for n, s in (("w1", (32, 256)), ("w2", (256, 256)), ("w3", (256, 10)))]
    path = save(model([helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
                       helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
                       helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="fc2"),
                       helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
                       helper.make_node("MatMul", ["r2", "w3"], ["y"], name="fc3")],
                      [vi("x", [1, 32])], [vi("y", [1, 10])], weights), tmp_path / "mlp.onnx")
    out = tmp_path / "out"
    out.mkdir()
    results = gpu_split.run_split([str(path)], [50.0], iterations=2, warmup=1, out=out,
                                  deadline=time.monotonic() + 600, server_on="cpu")
    runs = results["runs"]
    assert [r["cut"] for r in runs] == gpu_split.CUTS and not any("error" in r for r in runs)
    for r in runs:
        assert r["runs_on"] == ["cpu", "cpu"]
        assert r["measured_ms"]["total_ms"] > 0 and r["predicted_a_ms"]["total_ms"] > 0
    assert json.loads((out / "gpu-split.json").read_text())["runs"] == json.loads(
        json.dumps(runs))  # written as it went
    doc = tmp_path / "gpu-split.md"
    gpu_split.write_doc([results], "1 passed", doc)
    text = doc.read_text()
    assert "## (a) measured per layer" in text and text.count("| mlp | 50 |") == 3


def test_the_gpu_memory_rows_are_predicted_here(tmp_path):
    """`bench.memory --measure-only` (as on the GPU machine) then `with_predictions` (as
    `--cuda-from` does here): each row beside the model's prediction."""
    rows = memory.measure(False, [("resnet18", 2)])
    assert rows and rows[0]["measured_bytes"] > 0
    predicted = memory.with_predictions(rows)[0]
    assert predicted["predicted_bytes"] > 0
    assert abs(predicted["error"]) < 0.5  # the CPU table's model, on the CPU: close


def test_the_gpu_peak_replay_finds_the_peak_and_what_is_live_then():
    """`bench.gpu_peak` replays the caching allocator's trace: the peak counts frees of blocks
    made before the step too, and names each live block by the frame that asked for it."""
    frames = {"conv": [{"name": "at::native::cudnn_convolution(...)"}],
              "grad": [{"name": "at::_ops::foo"},
                       {"name": "torch::autograd::generated::AddmmBackward0::apply(...)"}]}
    trace = [{"action": "alloc", "addr": 1, "size": 100, "frames": frames["conv"]},
             {"action": "free_requested", "addr": 7, "size": 30},  # made before the step
             {"action": "alloc", "addr": 2, "size": 50, "frames": frames["grad"]},
             {"action": "alloc", "addr": 3, "size": 10, "frames": []},
             {"action": "free_requested", "addr": 1, "size": 100},
             {"action": "alloc", "addr": 4, "size": 60, "frames": frames["grad"]}]
    peak, live = gpu_peak._peak(trace)
    assert peak == 130  # 100 - 30 + 50 + 10, before the conv's block is freed
    assert [b["bytes"] for b in live] == [100, 50, 10]
    assert live[0]["who"].startswith("at::native::cudnn_convolution")
    assert live[1]["who"].startswith("torch::autograd::generated::AddmmBackward0")
