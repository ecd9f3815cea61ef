"""Real split training: the ONNX executor, the wire format, and two peers over a shaped link."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import onnx.reference
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import (
    assert_shaped,
    model,
    run_main,
    save,
    schema,
    vi,
    weight,
    with_local_function,
)
from toolkit import api, zoo
from toolkit.onnx import read_model
from toolkit.onnx.split import split_model
from toolkit.train import wire
from toolkit.train.executor import OnnxModule, trainable_initializers
from toolkit.train.peer import (
    label_kind,
    loss_of,
    score_kind,
    synthetic_inputs,
    synthetic_labels,
)
from toolkit.train.session import TrainError, input_specs, loss_output

ZOO = [(name, exporter) for name in zoo.MODELS for exporter in ("torchscript", "dynamo")]


def _whole(name: str, exporter: str) -> tuple[Path, onnx.ModelProto, OnnxModule]:
    path, _ = zoo.resolve(name, exporter)
    m = onnx.load(str(path))
    return path, m, OnnxModule(m, trainable_initializers(m.graph))


@pytest.mark.parametrize(("name", "exporter"), ZOO, ids=[f"{n}-{e}" for n, e in ZOO])
def test_executor_matches_onnxruntime_and_trains_the_readers_parameters(name, exporter):
    """Forward equals onnxruntime on every zoo export, and the parameters the executor trains
    are exactly the ones the reader counts (PyTorch's totals)."""
    path, m, module = _whole(name, exporter)
    feeds = synthetic_inputs(input_specs(m, 1, {}), seed=3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {k: v.numpy() for k, v in feeds.items()})
    with torch.no_grad():
        got = module(feeds)
    for ref, out_name in zip(expected, module.output_names, strict=True):
        scale = max(float(np.abs(ref).max()), 1e-6)
        assert np.abs(got[out_name].numpy() - ref).max() / scale < 1e-4, out_name
    graph = api.load_graph(name, exporter=exporter)
    assert sum(p.numel() for p in module.weights) == sum(layer.params for layer in graph)


def _sgd_step(modules, feeds, labels, classes, output):
    """One SGD step through a chain of modules (device, then server), returning the loss."""
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in modules]
    values = dict(feeds)
    boundaries = []
    for k, module in enumerate(modules):
        if k:  # what the server receives: a leaf, as it arrives over the wire
            cut = {n: values[n].detach().requires_grad_(values[n].is_floating_point())
                   for n in module.input_names}
            boundaries.append((values, cut))
            values = {**values, **cut}
        values = {**values, **module({n: values[n] for n in module.input_names})}
    loss = loss_of(values[output], labels, classes)
    loss.backward()
    for sent, received in boundaries:
        floats = [n for n, t in received.items() if t.is_floating_point()]
        torch.autograd.backward([sent[n] for n in floats], [received[n].grad for n in floats])
    for opt in optimizers:
        opt.step()
    return loss.item()


@pytest.mark.parametrize(("name", "exporter"), [("resnet18", "torchscript"),
                                                ("googlenet", "torchscript"),
                                                ("vit_b_16", "dynamo")])
def test_one_sgd_step_on_the_halves_equals_one_on_the_whole(name, exporter, tmp_path):
    path, m, whole = _whole(name, exporter)
    graph = api.load_graph(name, exporter=exporter)
    result = api.partition_model(graph, api.make_scenario(link="lte", batch=1))
    middle = len(graph) // 2
    device = [layer.name for layer in list(graph)[:middle]]
    assert result.device  # a real cut exists for this model
    halves = split_model(path, device, tmp_path, check=False)
    trainable = trainable_initializers(m.graph)
    dev = OnnxModule(onnx.load(str(halves.device_path)), trainable)
    srv = OnnxModule(onnx.load(str(halves.server_path)), trainable)
    feeds = synthetic_inputs(input_specs(m, 1, {}), seed=5)
    output = m.graph.output[0].name
    with torch.no_grad():
        classes = int(whole(feeds)[output].shape[-1])
    labels = synthetic_labels([1], classes, seed=5)
    with torch.no_grad():
        split_out = srv({n: t for n, t in {**feeds, **dev(feeds)}.items()
                         if n in srv.input_names})[output]
        assert torch.allclose(split_out, whole(feeds)[output], rtol=1e-4, atol=1e-5)
    before = {n: w.detach().clone() for n, w in whole.named_weights().items()}
    whole_loss = _sgd_step([whole], feeds, labels, classes, output)
    split_loss = _sgd_step([dev, srv], feeds, labels, classes, output)
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    # SGD is linear in the gradient: a weight both halves read (tied across the cut) moves in
    # the whole model by the sum of its moves in the two halves
    moved = {n: torch.zeros_like(w) for n, w in before.items()}
    for part in (dev, srv):
        for weight_name, param in part.named_weights().items():
            moved[weight_name] += param.detach() - before[weight_name]
    for weight_name, param in whole.named_weights().items():
        assert torch.allclose(before[weight_name] + moved[weight_name], param.detach(),
                              rtol=1e-4, atol=1e-6), weight_name
    assert any(float(m.abs().max()) > 0 for m in moved.values())


def _trains_as_pytorch(m: onnx.ModelProto, module: torch.nn.Module,
                       feeds: dict[str, torch.Tensor], atol: float) -> None:
    """The executor's forward of `m` and every parameter's gradient (of the squared output's
    sum) equal `module`'s own, and it trains exactly `module`'s parameters."""
    executor = OnnxModule(m, trainable_initializers(m.graph))
    got = executor(feeds)[executor.output_names[0]]
    expected = module(*feeds.values())
    assert torch.allclose(got, expected, atol=atol)
    got.square().sum().backward()
    expected.square().sum().backward()
    weights = executor.named_weights()
    assert sorted(weights) == sorted(name for name, _ in module.named_parameters())
    for name, param in module.named_parameters():
        assert torch.allclose(weights[name].grad, param.grad, atol=10 * atol), name


def test_the_attention_op_trains_as_pytorch_does(tmp_path):
    """scaled_dot_product_attention exported at opset 23 becomes ONNX's Attention op (here
    with grouped heads, a padding mask and a causal one): the executor's forward and every
    parameter's gradient equal PyTorch's own."""
    functional = torch.nn.functional

    class Grouped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.kv, self.o = (torch.nn.Linear(32, 32), torch.nn.Linear(32, 32),
                                       torch.nn.Linear(32, 32))

        def forward(self, x, keep):
            b, s, _ = x.shape
            q = self.q(x).view(b, s, 4, 8).transpose(1, 2)
            k, v = self.kv(x).view(b, s, 2, 2, 8).permute(2, 0, 3, 1, 4)
            padded = functional.scaled_dot_product_attention(
                q, k, v, attn_mask=keep[:, None, None, :], enable_gqa=True)
            causal = functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                             enable_gqa=True)
            return self.o((padded + causal).transpose(1, 2).reshape(b, s, 32))

    torch.manual_seed(0)
    module = Grouped()
    x, keep = torch.randn(2, 6, 32), torch.ones(2, 6, dtype=torch.bool)
    keep[1, 4:] = False
    path = tmp_path / "grouped.onnx"
    torch.onnx.export(module, (x, keep), str(path), opset_version=23, dynamo=True,
                      optimize=False, verbose=False, input_names=["x", "keep"])
    m = onnx.load(str(path))
    assert [n.op_type for n in m.graph.node].count("Attention") == 2
    _trains_as_pytorch(m, module, {"x": x, "keep": keep}, atol=1e-6)


def test_the_opset_23_normalizations_and_activations_train_as_pytorch_does(tmp_path):
    """The dynamo exporter at opset 23 writes nn.RMSNorm as RMSNormalization, nn.GroupNorm as
    GroupNormalization, nn.PixelShuffle as DepthToSpace and ELU, SELU and Mish as themselves:
    `splitcut train` refused a Llama so exported ('no torch function for op
    RMSNormalization'). The executor's forward and every parameter's gradient equal
    PyTorch's."""
    nn = torch.nn

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.groups = nn.Conv2d(4, 16, 3, padding=1), nn.GroupNorm(4, 16)
            self.shuffle, self.unshuffle = nn.PixelShuffle(2), nn.PixelUnshuffle(2)
            self.norm, self.fc = nn.RMSNorm(16), nn.Linear(16, 3)

        def forward(self, x):
            h = nn.functional.mish(nn.functional.elu(self.groups(self.conv(x))))
            h = nn.functional.selu(self.unshuffle(self.shuffle(h)))
            return self.fc(self.norm(h.mean((2, 3))))

    torch.manual_seed(0)
    module, x = Mixed().eval(), torch.randn(2, 4, 8, 8)
    torch.nn.init.normal_(module.norm.weight)
    torch.nn.init.normal_(module.groups.weight)
    path = tmp_path / "mixed.onnx"
    torch.onnx.export(module, (x,), str(path), opset_version=23, dynamo=True, optimize=False,
                      verbose=False)
    m = onnx.load(str(path))
    assert {"RMSNormalization", "GroupNormalization", "DepthToSpace", "Elu", "Selu",
            "Mish"} <= {n.op_type for n in m.graph.node}
    _trains_as_pytorch(m, module, {"x": x}, atol=1e-5)


def test_a_deformable_convolution_and_pooling_indices_train_as_pytorch_does(tmp_path):
    """torchvision's DeformConv2d exports as ONNX's DeformConv, and nn.MaxUnpool2d reads the
    indices of a MaxPool with two outputs (ONNX counts them over the whole input): the
    executor ran neither ('no torch function for op DeformConv'). Its forward and every
    gradient equal PyTorch's."""
    torchvision = pytest.importorskip("torchvision")
    nn = torch.nn

    class Deformable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.offset, self.mask = nn.Conv2d(4, 18, 3, padding=1), nn.Conv2d(4, 9, 3, padding=1)
            self.deform = torchvision.ops.DeformConv2d(4, 8, 3, padding=1)
            self.pool, self.unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)

        def forward(self, x):
            h = self.deform(x, self.offset(x), torch.sigmoid(self.mask(x)))
            return self.unpool(*self.pool(h))

    torch.manual_seed(0)
    module, x = Deformable().eval(), torch.randn(2, 4, 8, 8)
    path = tmp_path / "deformable.onnx"
    torch.onnx.export(module, (x,), str(path), opset_version=19, dynamo=True, verbose=False)
    m = onnx.load(str(path))
    assert "DeformConv" in {n.op_type for n in m.graph.node}
    assert any(n.op_type == "MaxPool" and len(n.output) == 2 for n in m.graph.node)
    _trains_as_pytorch(m, module, {"x": x}, atol=1e-5)


def test_a_vaes_noise_is_drawn_afresh_and_its_encoder_trains():
    """torch.randn_like exports as RandomNormalLike (a VAE's reparameterisation), which the
    executor did not run: now each run draws new numbers of the input's shape (a seed makes
    them the same every run, as ONNX says), and the gradient reaches the encoder through
    mean + noise * std. Bernoulli draws 0s and 1s at the given odds."""
    nn = torch.nn

    class Vae(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encode, self.decode = nn.Linear(8, 2 * 64), nn.Linear(64, 8)

        def forward(self, x):
            mean, log_var = self.encode(x).chunk(2, dim=-1)
            return self.decode(mean + torch.randn_like(mean) * torch.exp(0.5 * log_var))

    m = onnx.load_from_string(_exported(Vae().eval(), torch.randn(256, 8)))
    assert "RandomNormalLike" in {n.op_type for n in m.graph.node}
    executor = OnnxModule(m, trainable_initializers(m.graph))
    x = torch.randn(256, 8)
    first, second = (executor({"x": x})[executor.output_names[0]] for _ in range(2))
    assert not torch.allclose(first, second)
    second.square().sum().backward()
    weights = executor.named_weights()
    assert float(weights["encode.weight"].grad.abs().max()) > 0
    node = helper.make_node("RandomNormalLike", ["x"], ["y"], mean=2.0, scale=3.0)
    drawn = _run_one(node, torch.zeros(100_000))
    assert abs(float(drawn.mean()) - 2.0) < 0.05 and abs(float(drawn.std()) - 3.0) < 0.05
    seeded = helper.make_node("RandomUniformLike", ["x"], ["y"], low=-1.0, high=1.0, seed=7.0)
    once, again = _run_one(seeded, torch.zeros(1000)), _run_one(seeded, torch.zeros(1000))
    assert torch.equal(once, again) and -1 <= float(once.min()) < float(once.max()) <= 1
    odds = _run_one(helper.make_node("Bernoulli", ["x"], ["y"]), torch.full((100_000,), 0.3))
    assert set(odds.unique().tolist()) == {0.0, 1.0} and abs(float(odds.mean()) - 0.3) < 0.01


def _exported(module: torch.nn.Module, x: torch.Tensor) -> bytes:
    """`module` exported by the TorchScript exporter, its input named x."""
    import io

    buffer = io.BytesIO()
    torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["x"])
    return buffer.getvalue()


def _run_one(node: onnx.NodeProto, x: torch.Tensor) -> torch.Tensor:
    """One node on one float input `x`, output `y` of its shape."""
    graph = helper.make_graph([node], "g", [vi("x", list(x.shape))], [vi("y", list(x.shape))])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return OnnxModule(m, ())({"x": x})["y"]


def test_a_float_constant_cast_to_integers_is_not_a_parameter():
    """onnxruntime's optimizer makes a float Constant an initializer, so a Range's start reads
    a float initializer cast to int64. No gradient passes a cast to integers: the start is no
    parameter, for the reader or the executor, and the Range is folded as the constant it
    is; the float weight the same Range scales still trains."""
    nodes = [helper.make_node("Cast", ["start"], ["start_int"], to=TensorProto.INT64),
             helper.make_node("Range", ["start_int", "limit", "delta"], ["positions"]),
             helper.make_node("Cast", ["positions"], ["positions_float"],
                              to=TensorProto.FLOAT),
             helper.make_node("Mul", ["positions_float", "scale"], ["bias"]),
             helper.make_node("Add", ["x", "bias"], ["y"])]
    initializers = [numpy_helper.from_array(np.array(0.0, np.float32), "start"),
                    numpy_helper.from_array(np.array(8, np.int64), "limit"),
                    numpy_helper.from_array(np.array(1, np.int64), "delta"),
                    weight("scale", 8)]
    graph = helper.make_graph(nodes, "g", [vi("x", [2, 8])], [vi("y", [2, 8])], initializers)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    layers = read_model(m, "m")
    assert [layer.op for layer in layers] == ["Mul", "Add"]  # the Range folded
    assert sum(layer.params for layer in layers) == 8
    module = OnnxModule(m, trainable_initializers(m.graph))
    assert list(module.named_weights()) == ["scale"]
    module({"x": torch.ones(2, 8)})["y"].sum().backward()
    assert float(module.named_weights()["scale"].grad.abs().sum()) > 0


def test_a_bf16_files_weights_train():
    """The executor took an initializer for a float only where numpy's dtype of it was one,
    which bfloat16 (ml_dtypes') is not: a model exported in bf16 trained nothing, its loss
    the same at every step, while the reader counted its parameters. Every float width
    trains now, the reader's and the executor's weights the same."""
    import io

    from toolkit.onnx import read_model

    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                 torch.nn.Linear(16, 4)).to(torch.bfloat16)
    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.randn(2, 8, dtype=torch.bfloat16),), buffer,
                      dynamo=False, input_names=["x"])
    m = onnx.load_from_string(buffer.getvalue())
    assert {t.data_type for t in m.graph.initializer} == {TensorProto.BFLOAT16}
    trained = trainable_initializers(m.graph)
    assert len(trained) == 4
    assert read_model(m, "bf16").total_params == sum(p.numel() for p in module.parameters())
    executor = OnnxModule(m, trained)
    executor({"x": torch.randn(2, 8, dtype=torch.bfloat16)})[
        executor.output_names[0]].float().square().sum().backward()
    assert all(w.grad is not None and w.dtype == torch.bfloat16
               for w in executor.named_weights().values())


@pytest.mark.parametrize("p", [1, 2, 3])
def test_global_lp_pooling_equals_onnxruntime(p):
    """(The onnx package has no node test of GlobalLpPool.)"""
    node = helper.make_node("GlobalLpPool", ["x"], ["y"], p=p)
    graph = helper.make_graph([node], "g", [vi("x", [2, 3, 4, 5])], [vi("y", [2, 3, 1, 1])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(p).standard_normal((2, 3, 4, 5)).astype(np.float32)
    expected = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    got = OnnxModule(m, ())({"x": torch.from_numpy(x)})["y"]
    assert np.allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("op", "attrs", "message"), [
    ("Attention", {}, "need q_num_heads and kv_num_heads"),
    ("Attention", {"q_num_heads": 3, "kv_num_heads": 3}, "cannot run a Attention node"),
    ("RotaryEmbedding", {}, "needs num_heads"),
])
def test_a_malformed_attention_node_is_a_one_line_error(op, attrs, message):
    from toolkit.errors import ModelError

    names = ["q", "k", "v"]  # (RotaryEmbedding: input, cos and sin caches)
    node = helper.make_node(op, names, ["y"], **attrs)
    graph = helper.make_graph([node], "g", [vi(n, [1, 4, 8]) for n in names],
                              [vi("y", [1, 4, 8])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    with pytest.raises(ModelError, match=message) as caught:
        OnnxModule(m, ())({n: torch.randn(1, 4, 8) for n in names})
    assert "\n" not in str(caught.value)


# the wire ------------------------------------------------------------------------------------

def _pair():
    a, b = socket.socketpair()
    return a, b


def test_tensors_of_every_carried_dtype_cross_the_wire_unchanged():
    tensors = {name: (torch.arange(24) % 7).to(dtype).reshape(2, 3, 4)
               for name, dtype in wire.DTYPES.items()}
    tensors["empty"] = torch.zeros(0, 5)
    tensors["scalar"] = torch.tensor(3.5)
    a, b = _pair()
    with a, b:
        sent = wire.send(a, "forward", tensors, loss=1.5)
        kind, meta, got, received = wire.receive(b, 1 << 20)
    assert kind == "forward" and meta == {"loss": 1.5} and received == sent
    for name, tensor in tensors.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


def _raw(header: object, payload: bytes = b"", magic: bytes = wire.MAGIC) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return magic + struct.pack(">I", len(text)) + text + payload


@pytest.mark.parametrize(("message", "error"), [
    (_raw({"kind": "x", "tensors": []}, magic=b"PICK"), "bad magic"),
    (wire.MAGIC + struct.pack(">I", 1 << 30), "header of"),
    (_raw(b"\x80\x04\x95cos\nsystem\n"), "not JSON"),
    (_raw({"kind": "x"}), "without kind"),
    (_raw({"kind": "x", "tensors": [{"name": "t", "dtype": "object", "shape": [1]}]}),
     "bad name or dtype"),
    (_raw({"kind": "x", "tensors": [{"name": "t", "dtype": "float32", "shape": [-1]}]}),
     "bad shape"),
    (_raw({"kind": "x", "tensors": [{"name": "t", "dtype": "float32", "shape": [1 << 30]}]}),
     "at most"),
    (_raw({"kind": "x", "tensors": [{"name": "t", "dtype": "float32", "shape": [4]}]},
          b"\0" * 8), "mid-message"),
])
def test_malformed_or_oversized_messages_are_errors(message, error):
    a, b = _pair()
    with a, b:
        a.sendall(message)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(wire.WireError, match=error):
            wire.receive(b, 1 << 20)


# two processes over a shaped link --------------------------------------------------------------

WIDTH = 8192


def _two_layer_model(tmp_path: Path) -> Path:
    """x[4, 64] -> MatMul -> Relu -> MatMul -> y[4, 10]: cut after the first MatMul, 128 KiB
    cross each way per iteration."""
    m = model(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")],
        [vi("x", [4, 64])], [vi("y", [4, 10])],
        [weight("w1", 64, WIDTH), weight("w2", WIDTH, 10, seed=1)],
    )
    for t in m.graph.initializer:  # small weights: the loss falls smoothly
        t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * 0.01, t.name))
    return save(m, tmp_path / "two.onnx")


def test_split_training_over_the_kernel_shaped_link(tmp_path):
    path = _two_layer_model(tmp_path)
    up, down = 4e6, 8e6
    scenario = api.make_scenario(device="cpu-server", server="cpu-server", uplink="4Mbps",
                                 downlink="8Mbps", latency="0ms", batch=4)
    result = api.train_model(str(path), scenario, device_layers=["fc1"], iterations=6,
                             warmup=1, lr=0.01)
    assert result.shaping.startswith("kernel")
    assert result.cut_tensors == ["h"]
    nbytes = 4 * WIDTH * 4
    # each message at the shaped rate (the labels travel with the activations)
    assert_shaped(result.iterations, "upload_ms", (nbytes + 4 * 8) * 8 / up * 1e3)
    assert_shaped(result.iterations, "download_ms", nbytes * 8 / down * 1e3)
    assert result.predicted_ms["upload_ms"] == pytest.approx((nbytes + 32) * 8 / up * 1e3)
    assert result.losses[-1] < result.losses[0]  # the halves learn


def test_train_command_json(tmp_path, capsys, monkeypatch):
    path = _two_layer_model(tmp_path)
    layers = tmp_path / "device.json"
    layers.write_text(json.dumps(["fc1"]))
    reads = []
    read = api.load_graph
    monkeypatch.setattr(api, "load_graph", lambda *a, **k: reads.append(a) or read(*a, **k))
    code, out, _ = run_main(
        ["train", str(path), "--device-layers", str(layers), "--uplink", "20Mbps",
         "--downlink", "20Mbps", "--latency", "5ms", "--device", "cpu-server",
         "--server", "cpu-server", "--iterations", "2", "--warmup", "0", "--json"],
        capsys, monkeypatch)
    assert code == 0
    data = json.loads(out)
    jsonschema.validate(data, schema("train"))
    assert data["batch"] == 4 and data["cut"] == "given" and len(data["iterations"]) == 2
    assert len(reads) == 1  # the batch the file fixes is read from the graph it trains
    assert set(data["measured_ms"]) == set(data["predicted_ms"])
    # the 5 ms one-way latency is in both directions, measured and predicted
    assert all(row["download_ms"] >= 5 for row in data["iterations"])
    assert data["predicted_ms"]["download_ms"] >= 5


def _fc1_on_the_device(path: Path, iterations: int) -> list[str]:
    """`splitcut train` of `path` with its layer fc1 on the device, the rest on the server,
    over a 20 Mbit/s link, each on this CPU, from the first iteration."""
    layers = path.with_name("device.json")
    layers.write_text(json.dumps(["fc1"]))
    return ["train", str(path), "--device-layers", str(layers), "--uplink", "20Mbps",
            "--downlink", "20Mbps", "--device", "cpu-server", "--server", "cpu-server",
            "--iterations", str(iterations), "--warmup", "0"]


def test_a_loss_that_is_not_a_number_is_reported_not_a_crash(tmp_path, capsys, monkeypatch):
    """A detector with random weights detects nothing (an empty output) and training can
    diverge: the loss is then NaN, which the wire's JSON cannot carry. The server used to die
    on it ("the server closed the connection"); now the run ends and says so."""
    m = model(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("Exp", ["h"], ["e"], name="exp"),
         helper.make_node("Neg", ["e"], ["n"], name="neg"),
         helper.make_node("Log", ["n"], ["y"], name="log")],  # log of a negative: NaN
        [vi("x", [4, 8])], [vi("y", [4, 8])], [weight("w1", 8, 8)])
    args = _fc1_on_the_device(save(m, tmp_path / "nan.onnx"), 2)
    code, out, err = run_main([*args, "--json"], capsys, monkeypatch)
    assert code == 0, err
    data = json.loads(out)
    jsonschema.validate(data, schema("train"))
    assert data["losses"] == [None, None] and len(data["cut_tensors"]) == 1
    code, out, _ = run_main(args, capsys, monkeypatch)
    assert code == 0 and "not a number -> not a number" in out


def test_a_softmax_classifier_learns_and_says_so(tmp_path, capsys, monkeypatch):
    """A model that ends in a softmax (Keras' applications by tf2onnx) trains on the negative
    log of its probabilities, and a small step reads as one: the printed losses carry the
    digits that tell them apart ('2.313 -> 2.313' hid a falling loss)."""
    m = model(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("MatMul", ["h", "w2"], ["s"], name="fc2"),
         helper.make_node("Softmax", ["s"], ["y"], name="softmax", axis=-1)],
        [vi("x", [4, 8])], [vi("y", [4, 8])], [weight("w1", 8, 8), weight("w2", 8, 8)])
    args = _fc1_on_the_device(save(m, tmp_path / "softmax.onnx"), 3)
    code, out, err = run_main([*args, "--json"], capsys, monkeypatch)
    assert code == 0, err
    losses = json.loads(out)["losses"]
    assert losses[0] > losses[1] > losses[2]
    code, out, _ = run_main(args, capsys, monkeypatch)
    assert code == 0
    first, last = out.split("loss on the fixed synthetic batch: ")[1].split()[::2][:2]
    assert float(first) > float(last)


def test_the_loss_is_on_the_first_output_gradients_flow_from(tmp_path, capsys, monkeypatch):
    """A file may list first an output no gradient flows back from (the raw input passed
    through, a mask): the loss was computed on it and the peers died in backward ('a peer
    failed (exit 1)'). It is computed on the first output that carries gradients, and a file
    with none is refused in one line before anything runs."""
    zero = numpy_helper.from_array(np.zeros(1, np.float32), "zero")
    m = model(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2"),
         helper.make_node("Greater", ["y", "zero"], ["above"], name="cmp")],
        [vi("x", [4, 8])],
        [vi("x", [4, 8]), helper.make_tensor_value_info("above", TensorProto.BOOL, [4, 8]),
         vi("y", [4, 8])], [weight("w1", 8, 8), weight("w2", 8, 8), zero])
    path = save(m, tmp_path / "passthrough.onnx")
    assert loss_output(api.load_graph(str(path))) == "y"
    code, out, err = run_main([*_fc1_on_the_device(path, 2), "--json"], capsys, monkeypatch)
    assert code == 0, err
    losses = json.loads(out)["losses"]
    assert losses[0] > losses[1]
    untrained = model([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                       helper.make_node("Greater", ["x", "zero"], ["above"], name="cmp")],
                      [vi("x", [4, 8])],
                      [vi("r", [4, 8]), helper.make_tensor_value_info("above", TensorProto.BOOL,
                                                                       [4, 8])],
                      [zero])
    with pytest.raises(TrainError, match=r"nothing to train in none: no model output \(r, "
                                         r"above\)"):
        api.train_model(str(save(untrained, tmp_path / "none.onnx")), api.make_scenario(batch=4))


def test_an_invalid_cut_is_refused_before_anything_runs(tmp_path):
    from toolkit.errors import PartitionError

    path = _two_layer_model(tmp_path)
    with pytest.raises(PartitionError, match="invalid tiering"):
        api.train_model(str(path), api.make_scenario(batch=4), device_layers=["relu"],
                        iterations=1)
    with pytest.raises(TrainError, match="fixes its batch at 4"):
        api.train_model(str(path), api.make_scenario(batch=8), device_layers=["fc1"])


def _peers() -> list[str]:
    found = subprocess.run(["pgrep", "-af", "toolkit.train.peer"], capture_output=True,
                           text=True, check=False).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def test_a_killed_server_ends_the_run_with_one_line_and_no_orphans(tmp_path):
    path = _two_layer_model(tmp_path)
    scenario = api.make_scenario(uplink="1Mbps", downlink="1Mbps", latency="0ms", batch=4)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            api.train_model(str(path), scenario, device_layers=["fc1"], iterations=200)
        except TrainError as exc:
            outcome["error"] = str(exc)

    before = set(Path(tempfile.gettempdir()).glob("splitcut-train-*"))
    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the device has done two iterations
        runs = set(Path(tempfile.gettempdir()).glob("splitcut-train-*")) - before
        done = [(r / "progress").read_text() for r in runs if (r / "progress").exists()]
        if any(d.isdigit() and int(d) >= 2 for d in done):
            break
        time.sleep(0.05)
    server = [p for p in _peers() if " server " in p]
    assert server, "the server peer never started"
    subprocess.run(["kill", "-9", server[0].split()[0]], check=True)
    worker.join(timeout=60)
    assert "\n" not in str(outcome.get("error", "\n"))
    error = str(outcome["error"])
    assert "the server peer was killed by signal 9" in error
    assert "device: lost the server" in error or "the server closed the connection" in error
    time.sleep(0.5)
    assert _peers() == []


def _torch_value(value: object) -> object:
    """A node test's input: an array as a tensor, a sequence as a list of them."""
    from toolkit.errors import ModelError

    if isinstance(value, list):
        return [_torch_value(v) for v in value]
    if isinstance(value, np.generic):  # a 0-d input (CumSum's axis) comes as a numpy scalar
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise ModelError("a test input torch cannot hold")
    return torch.from_numpy(value.copy())


def test_executor_equals_the_onnx_backend_node_tests():
    """Every case of the onnx package's own node tests whose ops the executor has either gives
    the expected outputs or is refused with a one-line ModelError: never a wrong number."""
    from tests.test_corpus import node_test_cases
    from toolkit.errors import ModelError
    from toolkit.train.ops import known

    passed, refused, wrong = 0, 0, []
    for case in node_test_cases():
        if (case.name.startswith("test_training_dropout") and "zero_ratio" not in case.name) \
                or case.name.startswith("test_bernoulli"):
            continue  # its expected mask is one draw of numpy's generator (tested on its own)
        nodes = case.model.graph.node
        if any(n.domain not in ("", "ai.onnx")
               or not (known(n.op_type) or n.op_type in ("If", "Loop", "Scan")) for n in nodes):
            continue
        names = [i.name for i in case.model.graph.input]
        try:
            module = OnnxModule(case.model, ())
            for inputs, outputs in case.data_sets:
                feeds = {n: _torch_value(v) for n, v in zip(names, inputs, strict=True)}
                with torch.no_grad():
                    got = module(feeds)
                for out_name, expected in zip(module.output_names, outputs, strict=True):
                    values = got[out_name] if isinstance(got[out_name], list) \
                        else [got[out_name]]
                    wanted = expected if isinstance(expected, list) else [expected]
                    if len(values) != len(wanted):
                        wrong.append(f"{case.name}: {len(values)} tensors, not {len(wanted)}")
                    for value, want in zip(values, wanted, strict=False):
                        want = np.asarray(want)
                        ok = value.shape == want.shape and np.allclose(
                            value.numpy().astype(np.float64), want.astype(np.float64),
                            rtol=1e-3, atol=1e-4, equal_nan=True)
                        if not ok:
                            wrong.append(case.name)
            passed += 1
        except ModelError:
            refused += 1
    assert not wrong, wrong
    assert passed > 700, (passed, refused)


def test_cpu_limit_puts_processes_under_one_quota_and_cleans_up():
    """Two processes (a U-shape's device head and tail) share one group: one device."""
    from toolkit.train.link import CPU_CGROUP, cpu_limit

    def group_of(pid: int) -> Path:
        line = next(x for x in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                    if "cpu" in x.split(":")[1].split(","))
        return CPU_CGROUP / line.split(":", 2)[2].lstrip("/")

    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    home = group_of(sleepers[0].pid)
    try:
        with cpu_limit(0.25, [s.pid for s in sleepers]):
            group = group_of(sleepers[0].pid)
            assert group_of(sleepers[1].pid) == group
            assert group.name.startswith("splitcut-")
            assert (group / "cpu.cfs_quota_us").read_text().strip() == "25000"
            assert (group / "cpu.cfs_period_us").read_text().strip() == "100000"
        assert not group.exists()  # removed, the processes back where they were
        assert [group_of(s.pid) for s in sleepers] == [home, home]
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


def test_cpu_limit_slows_a_burst_and_sweeps_groups_of_killed_runs():
    from toolkit.train.link import CPU_CGROUP, cpu_limit

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = CPU_CGROUP / f"splitcut-{dead.pid}-1"
    stale.mkdir()
    with cpu_limit(0.25):
        time.sleep(0.05)  # an idle gap fills the bucket, as between iterations
        started, cpu = time.monotonic(), time.thread_time()
        while time.thread_time() - cpu < 0.06:
            pass
        wall = time.monotonic() - started
    assert not stale.exists()
    # 60 ms of work at 25 ms per 100 ms: at least 135 ms whatever the phase of the period
    assert wall > 2 * 0.06, wall


def test_executor_profile_times_every_layer_forward_and_backward(tmp_path):
    from toolkit.costs import build_cost_graph
    from toolkit.train.timing import executor_profile

    path = _two_layer_model(tmp_path)
    graph = api.load_graph(str(path))
    profile = executor_profile(path, graph, "cpu-server", batch=4, repeats=2, warmup=1)
    assert set(profile.forward_ms) == set(profile.backward_ms) == {"fc1", "relu", "fc2"}
    assert all(ms > 0 for ms in profile.forward_ms.values())
    assert profile.backward_ms["fc2"] > 0 and profile.backward_ms["relu"] > 0
    # usable as --measured for the processor it names: it replaces that side's roofline
    saved = tmp_path / "profile.json"
    saved.write_text(json.dumps(profile.to_dict()))
    scenario = api.make_scenario(device="cpu-server", server="a100", batch=4,
                                 measured=[str(saved)])
    costs = build_cost_graph(graph, scenario)
    fc1 = costs.names.index("fc1")
    passes = profile.forward_ms["fc1"] + profile.backward_ms["fc1"]
    assert passes <= costs.device_ms[fc1] < passes + 1.0  # (+ the SGD step's few µs)


def test_one_score_per_sample_trains_as_regression():
    """A regressor's (N, 1) output is not a one-class classifier: its cross-entropy is 0
    whatever it says, so the loss never moved (scikit-learn's MLPRegressor: '0 -> 0')."""
    out = torch.randn(4, 1, requires_grad=True)
    classes, shape = label_kind(out)
    assert (classes, shape) == (0, [4, 1])
    loss = loss_of(out, synthetic_labels(shape, classes, 0), classes)
    loss.backward()
    assert loss.item() > 0 and out.grad is not None and out.grad.abs().sum() > 0
    assert label_kind(torch.zeros(4, 10)) == (10, [4])
    assert label_kind(torch.zeros(2, 7, 50)) == (50, [2, 7])  # a language model head
    assert label_kind(torch.zeros(4, 3, dtype=torch.int64)) == (0, [4, 3])


def test_an_operator_with_no_torch_function_is_named_in_one_line():
    """An operator the executor has no torch function for (here onnxruntime's CUDA-only
    BiasSoftmax): the model partitions, but training runs each node in torch, so it is refused
    naming the operator (not the graph's name, which tf2onnx sets to 'tf2onnx')."""
    from toolkit.errors import ModelError

    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("BiasSoftmax", ["r", "w"], ["y"], domain="com.microsoft")]
    graph = helper.make_graph(nodes, "tf2onnx", [vi("x", [1, 3, 8, 8])], [vi("y", None)],
                              [weight("w", 4, 3, 3, 3)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(ModelError, match=r"^cannot train this model: no torch function for op "
                                         r"com\.microsoft\.BiasSoftmax$"):
        OnnxModule(m, ["w"])


def test_a_models_own_functions_train_as_their_bodies():
    """The executor runs a call of a model-local function as the function's body (it refused
    it: 'no torch function for op local.Block'), and its forward equals onnxruntime's."""
    m = with_local_function()
    module = OnnxModule(m, trainable_initializers(m.graph))
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    got = module({"x": torch.from_numpy(x)})["y"].detach().numpy()
    want = ort.InferenceSession(m.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.allclose(got, want, atol=1e-5)


def test_a_sparse_weight_trains_as_a_dense_one():
    """A pruned weight stored as a sparse initializer is a parameter (it was a dangling name),
    and the forward equals onnxruntime's."""
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([2.0, -1.0, 0.5], np.float32), "w"),
        numpy_helper.from_array(np.array([0, 5, 15], np.int64), "w_indices"), [4, 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              sparse_initializer=[sparse])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    module = OnnxModule(m, ["w"])
    assert [tuple(p.shape) for p in module.parameters()] == [(4, 4)]
    got = module({"x": torch.from_numpy(x)})["y"].detach().numpy()
    assert np.allclose(got, want.run(None, {"x": x})[0])


def _training_mode_model(nodes, outputs, inits, opset=15):
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 5])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                               for n in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [9, 13, 15])
def test_batch_norm_in_training_mode_runs_as_onnx_says(opset):
    """A model exported with TrainingMode.TRAINING normalises by the batch's statistics and
    updates the running ones (it was refused): outputs equal onnxruntime's (and, from opset
    14, ONNX's reference evaluator's), and the scale and bias get gradients. From opset 14
    `training_mode` says so; before, the node's optional outputs do (TorchScript's opset-13
    training export declares all five: it was run in inference form, then refused)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.random(3).astype(np.float32) + c, n)
             for n, c in (("scale", 0.5), ("bias", 0.0), ("mean", 0.0), ("var", 1.0))]
    outputs = ["y", "rm", "rv"] if opset >= 14 else ["y", "rm", "rv", "saved_mean", "saved_inv"]
    flag = {"training_mode": 1} if opset >= 14 else {}
    m = _training_mode_model([helper.make_node(
        "BatchNormalization", ["x", "scale", "bias", "mean", "var"], outputs, momentum=0.8,
        **flag)], outputs, inits, opset)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    module = OnnxModule(m, ["scale", "bias"])
    got = module({"x": torch.from_numpy(x)})
    oracles = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])]
    if opset >= 14:
        oracles.append(onnx.reference.ReferenceEvaluator(m))
    for oracle in oracles:
        for name, want in zip(outputs, oracle.run(None, {"x": x}), strict=True):
            assert np.allclose(got[name].detach().numpy(), want, atol=1e-5), name
    eval_mode = OnnxModule(_training_mode_model([helper.make_node(
        "BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"])], ["y"], inits,
        opset), ["scale", "bias"])({"x": torch.from_numpy(x)})["y"]
    assert not torch.allclose(eval_mode, got["y"])  # (the running statistics differ)
    got["y"].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_dropout_drops_only_in_training_mode():
    ratio = numpy_helper.from_array(np.array(0.5, np.float32), "ratio")
    x = np.ones((4, 3, 5), np.float32)
    for training, dropped in ((True, True), (False, False)):
        flag = numpy_helper.from_array(np.array(training), "training")
        m = _training_mode_model([helper.make_node("Dropout", ["x", "ratio", "training"],
                                                   ["y", "mask"])], ["y"], [ratio, flag])
        y = OnnxModule(m, [])({"x": torch.from_numpy(x)})["y"].numpy()
        assert set(np.unique(y)) == ({0.0, 2.0} if dropped else {1.0})


@pytest.mark.parametrize("end", ["softmax", "log_softmax", "none"])
def test_a_model_that_ends_in_a_softmax_learns(end):
    """Keras' applications end in a softmax: a cross-entropy that took the probabilities for
    logits barely moved (MobileNetV2 by tf2onnx: '6.908 -> 6.908'). The scores are read for
    what they are, and the step moves the loss as it does on the logits."""
    torch.manual_seed(0)
    logits = torch.randn(8, 1000, dtype=torch.float64, requires_grad=True)
    scores = {"softmax": torch.softmax(logits, -1), "log_softmax": torch.log_softmax(logits, -1),
              "none": logits}[end]
    classes, shape = label_kind(scores)
    kind = score_kind(scores, classes)
    assert kind == {"softmax": "probabilities", "log_softmax": "log-probabilities",
                    "none": "logits"}[end]
    labels = synthetic_labels(shape, classes, 0)
    loss_of(scores, labels, classes, kind).backward()
    reference = logits.detach().clone().requires_grad_(True)
    loss_of(reference, labels, classes).backward()
    assert logits.grad is not None and reference.grad is not None
    assert torch.allclose(logits.grad.float(), reference.grad.float(), atol=1e-6)
    # half-precision probabilities still read as such; a row that sums to 1 but for one
    # negative score, or scores all below 0 that are no log of a distribution, are logits
    assert score_kind(torch.softmax(logits.detach(), -1).half(), classes) == "probabilities"
    assert score_kind(torch.tensor([[1.5, -0.5]]), 2) == "logits"
    assert score_kind(torch.tensor([[-1.0, -2.0]]), 2) == "logits"


def test_synthetic_integer_inputs_mask_nothing():
    """Random zeros and ones as an attention mask masked a whole row of a sequence (GPT-2 and
    Llama by optimum): the softmax over nothing made every gradient not a number, and the
    training reported 'not a number -> not a number'. Integers are 1: a mask that masks
    nothing, an index into any table of two rows, never a divisor 0."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["s"], name="scores"),
             helper.make_node("Equal", ["mask", "zero"], ["masked"], name="masked"),
             helper.make_node("Where", ["masked", "minus_inf", "s"], ["ms"], name="where"),
             helper.make_node("Softmax", ["ms"], ["y"], name="softmax", axis=-1)]
    m = model(nodes, [vi("x", [4, 8]), vi("mask", [4, 8], TensorProto.INT64)], [vi("y", [4, 8])],
              [weight("w1", 8, 8), helper.make_tensor("zero", TensorProto.INT64, [], [0]),
               helper.make_tensor("minus_inf", TensorProto.FLOAT, [], [-np.inf])])
    feeds = synthetic_inputs(input_specs(m, 4, {}), seed=0)
    assert feeds["mask"].dtype == torch.int64 and bool((feeds["mask"] == 1).all())
    module = OnnxModule(m, {"w1"})
    out = module(feeds)["y"]
    classes, shape = label_kind(out)
    loss_of(out, synthetic_labels(shape, classes, 0), classes, score_kind(out, classes)).backward()
    assert all(bool(torch.isfinite(w.grad).all()) for w in module.weights if w.grad is not None)
