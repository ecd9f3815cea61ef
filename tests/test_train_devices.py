"""Tiers on a torch device (`splitcut train --tier-device server=cuda`).

The executor placed on another device moves its weights and constants there and keeps the
shapes it reads as numbers on the host; tensors of both meet only where an op needs them
together. Without a GPU the placement is checked on PyTorch's `meta` device, which refuses
to mix with the CPU exactly as CUDA does. Where torch sees a CUDA GPU, zoo models train on it
as on the CPU and a split run trains its server part there: `python -m bench.gpu_split` runs
this file on a lent GPU machine (results in bench/results/).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import model, run_main, save, vi, weight
from toolkit import api, zoo
from toolkit.train.executor import OnnxModule, trainable_initializers
from toolkit.train.peer import label_kind, loss_of, synthetic_inputs, synthetic_labels
from toolkit.train.session import TrainError, input_specs

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (bench/gpu_split.py runs it on one)")


def _mixed_model() -> onnx.ModelProto:
    """x[2, 3] meets a float initializer, a `Constant` node, a tensor made from its own shape
    on the host (`ConstantOfShape`), a long integer index table and a short shape vector."""
    ids = numpy_helper.from_array(np.arange(100, dtype=np.int64) % 7, "ids")
    shape = numpy_helper.from_array(np.array([6], dtype=np.int64), "shape")
    return model(
        [helper.make_node("Add", ["x", "bias"], ["a"], name="add"),
         helper.make_node("Constant", [], ["c"], name="const",
                          value=numpy_helper.from_array(np.full(3, 2.0, np.float32))),
         helper.make_node("Mul", ["a", "c"], ["m"], name="mul"),
         helper.make_node("Shape", ["m"], ["s"], name="shape_of"),
         helper.make_node("ConstantOfShape", ["s"], ["ones"], name="ones",
                          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
         helper.make_node("Add", ["m", "ones"], ["p"], name="plus"),
         helper.make_node("Reshape", ["p", "shape"], ["flat"], name="flat"),
         helper.make_node("Gather", ["table", "ids"], ["rows"], name="rows"),
         helper.make_node("ReduceSum", ["rows"], ["total"], name="total", keepdims=0),
         helper.make_node("Add", ["flat", "total"], ["y"], name="y")],
        [vi("x", [2, 3])], [vi("y", [6])],
        [weight("bias", 3), weight("table", 7, 1, seed=1), ids, shape])


def test_a_placed_module_moves_weights_and_constants_and_keeps_shapes_on_the_host():
    m = _mixed_model()
    module = OnnxModule(m, trainable_initializers(m.graph))
    x = torch.randn(2, 3)
    expected = module({"x": x})["y"]
    module.to("meta")
    assert all(w.device.type == "meta" for w in module.weights)
    assert module.constants["ids"].device.type == "meta"  # an index table, not a shape
    assert module.constants["shape"].device.type == "cpu"  # read as numbers by Reshape
    constant = next(attrs["value"] for op, attrs, _, _ in module.nodes if op == "Constant")
    assert constant.device.type == "meta"
    fill = next(attrs["value"] for op, attrs, _, _ in module.nodes if op == "ConstantOfShape")
    assert fill.device.type == "cpu"  # read as a number
    # `ones` is made on the host from the shape and meets `m` on the other device: it moves
    out = module({"x": x.to("meta")})["y"]
    assert out.device.type == "meta" and out.shape == expected.shape


def test_a_tier_device_is_checked_before_anything_runs(tmp_path, capsys, monkeypatch):
    path = save(model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
                      [vi("x", [2, 4])], [vi("y", [2, 3])], [weight("w", 4, 3)]),
                tmp_path / "fc.onnx")
    scenario = api.make_scenario(device="cpu-server", server="cpu-server", link="wifi5",
                                 batch=2)
    for devices, message in [({"server": "cuda:99"}, "server: cannot run on cuda:99"),
                             ({"server": "abacus"}, "'abacus' is not a torch device"),
                             ({"server": "meta"}, "a tier runs on the cpu or cuda"),
                             ({"edge": "cpu"}, "no tier named 'edge'.*device, server")]:
        with pytest.raises(TrainError, match=message):
            api.train_model(str(path), scenario, device_layers=["fc"], tier_device=devices)
    for bad in ("server", "=cuda"):
        code, _, err = run_main(["train", str(path), "--tier-device", bad], capsys, monkeypatch)
        assert code == 2 and "--tier-device" in err and "TIER=DEVICE" in err, bad


@needs_cuda
@pytest.mark.parametrize("name", ["resnet18", "bert_base", "swin_t"])
def test_a_zoo_model_trains_on_the_gpu_as_on_the_cpu(name):
    """Outputs and every weight's gradient on the GPU equal the CPU's (TF32 off: both in
    full fp32)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    path = zoo.export(name)
    m = onnx.load(str(path))
    trainable = trainable_initializers(m.graph)
    feeds = synthetic_inputs(input_specs(m, 1, {}), seed=2)
    output = m.graph.output[0].name
    grads = []
    for device in ("cpu", "cuda"):
        module = OnnxModule(m, trainable).to(device)
        out = module({n: x.to(device) for n, x in feeds.items()})[output]
        classes, shape = label_kind(out)
        loss_of(out, synthetic_labels(shape, classes, 2).to(device), classes).backward()
        grads.append((out.detach().cpu(), {n: w.grad.cpu() for n, w in
                                           module.named_weights().items() if w.grad is not None}))
    (out_cpu, grad_cpu), (out_gpu, grad_gpu) = grads
    assert torch.allclose(out_gpu, out_cpu, rtol=1e-3, atol=1e-4 * float(out_cpu.abs().max()))
    assert grad_gpu.keys() == grad_cpu.keys() and grad_cpu
    for n, g in grad_cpu.items():
        assert torch.allclose(grad_gpu[n], g, rtol=1e-2, atol=1e-3 * float(g.abs().max()) + 1e-9), n


@needs_cuda
def test_split_training_with_the_server_on_the_gpu(tmp_path: Path):
    m = model([helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
               helper.make_node("Relu", ["h"], ["r"], name="relu"),
               helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")],
              [vi("x", [4, 64])], [vi("y", [4, 10])],
              [weight("w1", 64, 512), weight("w2", 512, 10, seed=1)])
    for t in m.graph.initializer:  # small weights: the loss falls smoothly
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 0.01, t.name))
    path = save(m, tmp_path / "two.onnx")
    scenario = api.make_scenario(device="cpu-server", server="h200", uplink="50Mbps",
                                 downlink="50Mbps", latency="1ms", batch=4)
    result = api.train_model(str(path), scenario, device_layers=["fc1"], iterations=8,
                             warmup=2, lr=0.05, tier_device={"server": "cuda"})
    data = result.to_dict()
    assert [t["runs_on"] for t in data["tiers"]] == ["cpu", "cuda"]
    assert result.cut_tensors == ["h"]
    assert all(row["download_ms"] >= 1 for row in result.iterations)  # the latency, measured
    assert result.losses[-1] < result.losses[0]  # the halves learn across the two devices
