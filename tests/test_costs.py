"""The delay model: scaling laws as properties, single charging of shared tensors, JSON contract."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from tests.helpers import chain, model, run_main, save, schema, vi, weight
from toolkit import api, profiles
from toolkit.costgraph import CostGraph, delay, peak_memory
from toolkit.costs import (
    activation_bytes,
    build_cost_graph,
    build_tier_graph,
    crossing_ms,
    layer_ms,
    step_ms,
    tensor_bytes,
)
from toolkit.errors import ProfileError
from toolkit.graph import Tensor
from toolkit.onnx import read_model

GRAPH = chain(4, width=64)
LAYERS = read_model(GRAPH, "chain")


def scenario(**kw):
    base = {"device": "jetson-nano", "server": "rtx-3090", "link": None, "uplink": "20Mbps",
            "downlink": "100Mbps", "latency": "5ms"}
    base.update(kw)
    return api.make_scenario(**base)


batches = st.integers(min_value=1, max_value=512)
rates = st.floats(min_value=1e5, max_value=1e10)


@given(batch=batches, nbytes=st.integers(min_value=0, max_value=10**8))
def test_crossing_transfer_is_linear_in_batch_and_holds_no_latency(batch, nbytes):
    one = scenario(batch=1)
    many = scenario(batch=batch)
    assert crossing_ms(nbytes, many) == pytest.approx(crossing_ms(nbytes, one) * batch)
    assert crossing_ms(0, many) == 0.0


@given(up=rates, down=rates, nbytes=st.integers(min_value=1, max_value=10**8))
def test_crossing_follows_the_formula(up, down, nbytes):
    s = scenario(uplink=f"{up}bps", downlink=f"{down}bps", latency="7ms", batch=8)
    bits = nbytes * 8 * 8
    assert crossing_ms(nbytes, s) == pytest.approx((bits / up + bits / down) * 1e3)
    assert crossing_ms(nbytes, s, is_float_tensor=False) == pytest.approx(bits / up * 1e3)
    faster = scenario(uplink=f"{2 * up}bps", downlink=f"{2 * down}bps", latency="0ms", batch=8)
    assert crossing_ms(nbytes, faster) == pytest.approx(crossing_ms(nbytes, s) / 2)


@settings(max_examples=50)
@given(b1=batches, b2=batches)
def test_layer_delay_grows_with_batch_and_compute_part_is_linear(b1, b2):
    small, large = sorted((b1, b2))
    for layer in LAYERS:
        for proc in ("device", "server"):
            s1, s2 = scenario(batch=small), scenario(batch=large)
            p1, p2 = getattr(s1, proc), getattr(s2, proc)
            assert layer_ms(layer, p1, s1) <= layer_ms(layer, p2, s2) + 1e-12
            overhead = 2 * p1.layer_overhead_us * 1e-3
            assert layer_ms(layer, p2, s2) - overhead <= (
                (layer_ms(layer, p1, s1) - overhead) * large / small * (1 + 1e-9)
            )


@pytest.mark.parametrize("device", ["jetson-nano", "jetson-agx-orin", "raspberry-pi-4"])
def test_fp16_is_never_slower_and_halves_crossing_bytes(device):
    fp32, fp16 = scenario(device=device), scenario(device=device, precision="fp16")
    for layer in LAYERS:
        assert layer_ms(layer, fp16.device, fp16) <= layer_ms(layer, fp32.device, fp32)


def conv_net(dtype: int) -> onnx.ModelProto:
    """Conv, Relu, MaxPool, Gemm with weights and activations of element type `dtype`."""
    np_type = onnx.helper.tensor_dtype_to_np_dtype(dtype)

    def w(name: str, *shape: int, seed: int) -> onnx.TensorProto:
        values = numpy_helper.to_array(weight(name, *shape, seed=seed))
        return numpy_helper.from_array(values.astype(np_type), name)

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "head"], ["y"], name="head", transB=1)]
    return model(nodes, [vi("x", [1, 3, 32, 32], dtype)], [vi("y", [1, 10], dtype)],
                 [w("w", 64, 3, 3, 3, seed=0), w("head", 10, 64 * 16 * 16, seed=1)])


@pytest.mark.parametrize("device", ["jetson-nano", "jetson-agx-orin", "cpu-server"])
def test_an_fp16_file_computes_at_the_fp16_rate(device):
    """A file whose float tensors are all fp16 trains in fp16 whatever `--precision` says: its
    layers compute at the fp16 peak, as the same model in fp32 does under mixed precision
    (whose activations and weight reads are then 2 bytes too), so both passes cost alike; its
    optimizer step moves 2-byte words where mixed precision keeps fp32 master weights."""
    half = read_model(conv_net(onnx.TensorProto.FLOAT16), "half")
    full = read_model(conv_net(onnx.TensorProto.FLOAT), "full")
    assert all(layer.half for layer in half) and not any(layer.half for layer in full)
    fp32, fp16 = scenario(device=device), scenario(device=device, precision="fp16")
    for a, b in zip(half, full, strict=True):
        reference = layer_ms(b, fp16.device, fp16, activation_bytes(full, b, "fp16"))
        for s in (fp32, fp16):
            assert layer_ms(a, s.device, s) == pytest.approx(reference, rel=1e-12)
        if b.params:
            assert (a.weight_word, b.weight_word) == (2, 4)
            assert step_ms(a, fp32.device, "adam") == pytest.approx(
                step_ms(b, fp32.device, "adam") / 2, rel=1e-12)
    conv = full.layers["conv"]
    in_fp32, amp = layer_ms(conv, fp32.device, fp32), layer_ms(
        conv, fp16.device, fp16, activation_bytes(full, conv, "fp16"))
    if fp32.device.fp16_tflops > fp32.device.fp32_tflops:
        assert amp < in_fp32
    else:  # (a CPU computes fp16 no faster: only its bytes halve)
        assert amp <= in_fp32
    memory = build_cost_graph(half, fp32).memory, build_cost_graph(full, fp32).memory
    assert sum(memory[0].grads) == pytest.approx(sum(memory[1].grads) / 2)
    assert sum(memory[0].state) == pytest.approx(sum(memory[1].state) / 2)
    pool = [layer.name for layer in half].index("pool")
    argmax = fp32.batch * 64 * 16 * 16 * 8  # one int64 index per pooled element, any dtype
    for m in memory:
        assert argmax in [x.nbytes for x in m.saved if x.keepers == (pool,)]


def test_a_cast_between_float_widths_runs_at_the_scenarios_precision():
    nodes = [helper.make_node("Cast", ["x"], ["h"], name="to_half", to=onnx.TensorProto.FLOAT16),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    half = vi("y", [1, 64], onnx.TensorProto.FLOAT16)
    graph = read_model(model(nodes, [vi("x", [1, 64])], [half]), "cast")
    assert not graph.layers["to_half"].half and graph.layers["relu"].half


def tensor(dtype: str, elements: int = 100) -> Tensor:
    size = {"float": 4, "double": 8, "float16": 2, "bfloat16": 2, "int64": 8, "bool": 1}[dtype]
    return Tensor("t", (elements,), dtype, elements * size, "p")


def test_bytes_follow_each_tensors_own_dtype():
    for precision, expected in (("fp32", {"float": 400, "double": 800, "float16": 200,
                                          "bfloat16": 200, "int64": 800, "bool": 100}),
                                ("fp16", {"float": 200, "double": 200, "float16": 200,
                                          "bfloat16": 200, "int64": 800, "bool": 100})):
        for dtype, nbytes in expected.items():
            assert tensor_bytes(tensor(dtype), precision) == nbytes, (precision, dtype)


def test_integer_tensors_cost_their_upload_only_and_latency_is_per_iteration():
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"),
             helper.make_node("ArgMax", ["h"], ["i"], name="argmax", keepdims=1, axis=1),
             helper.make_node("Cast", ["i"], ["f"], name="cast", to=1)]
    m = model(nodes, [vi("x", [1, 256])], [vi("f", [1, 1])])
    s = scenario(latency="5ms", batch=4)
    g = build_cost_graph(read_model(m, "ints"), s)
    by_name = {t.name: t for t in g.tensors}
    assert by_name["h"].is_float and not by_name["i"].is_float
    assert by_name["i"].crossing_ms == pytest.approx(4 * 8 * 8 / s.uplink_bps * 1e3)
    assert g.latency_ms == pytest.approx(10.0)
    assert g.labels_ms == pytest.approx(4 * 8 * 8 / s.uplink_bps * 1e3)
    two_cross = delay(g, {0})  # h crosses; argmax and cast (the output) on the server
    assert two_cross.latency == pytest.approx(10.0)
    assert two_cross.labels == pytest.approx(g.labels_ms)
    assert delay(g, {0, 1, 2}).latency == 0 and delay(g, {0, 1, 2}).labels == 0


@pytest.mark.parametrize(("optimizer", "words"), [("sgd", 3), ("momentum", 5), ("adam", 7)])
def test_optimizer_step_is_charged_to_layers_with_parameters(optimizer, words):
    plain = build_cost_graph(LAYERS, scenario())
    stepped = build_cost_graph(LAYERS, scenario(optimizer=optimizer))
    proc = scenario().device
    for i, layer in enumerate(LAYERS):
        expected = layer.params * words * 4 / (proc.memory_gbps * 1e9 * proc.memory_efficiency)
        assert step_ms(layer, proc, optimizer) == pytest.approx(expected * 1e3)
        if optimizer == "sgd":
            continue
        extra = stepped.device_ms[i] - plain.device_ms[i]
        assert (extra > 0) == (layer.params > 0)


def test_split_federated_sync_is_charged_to_device_layers_only():
    plain = build_cost_graph(LAYERS, scenario())
    fed = build_cost_graph(LAYERS, scenario(sync_every=10))
    for i, layer in enumerate(LAYERS):
        extra = fed.device_ms[i] - plain.device_ms[i]
        assert (extra > 0) == (layer.params > 0)
        assert fed.server_ms[i] == plain.server_ms[i]


def three_consumers() -> CostGraph:
    nodes = [
        helper.make_node("Relu", ["x"], ["h"], name="producer"),
        helper.make_node("Sigmoid", ["h"], ["a"], name="c1"),
        helper.make_node("Tanh", ["h"], ["b"], name="c2"),
        helper.make_node("Exp", ["h"], ["c"], name="c3"),
    ]
    m = model(nodes, [vi("x", [1, 256])], [vi("a", [1, 256]), vi("b", [1, 256]), vi("c", [1, 256])])
    return build_cost_graph(read_model(m, "fan"), scenario())


def _weight_made(batch: int | None = None):
    """A matmul with a weight centred at every step (ReduceMean, Sub: from the weight alone),
    read at batch `batch` (None: symbolic)."""
    nodes = [helper.make_node("ReduceMean", ["w"], ["m"], name="mean", keepdims=1),
             helper.make_node("Sub", ["w", "m"], ["c"], name="centre"),
             helper.make_node("MatMul", ["x", "c"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    return model(nodes, [vi("x", [batch or "batch", 64])], [vi("y", [batch or "batch", 64])],
                 [weight("w", 64, 64)])


def test_what_weights_alone_make_costs_once_per_step_whatever_the_batch():
    """Compute on the weight and its crossing run once per step (b = 1); the rest per sample.
    An exported batch is divided out of the per-sample layers only."""
    graph = read_model(_weight_made(), "w")
    assert [graph.per_sample(x) for x in graph] == [False, False, True, True]
    assert not graph.tensors["c"].per_sample and graph.tensors["h"].per_sample
    one, many = (build_cost_graph(graph, scenario(batch=b)) for b in (1, 64))
    assert one.device_ms[:2] == many.device_ms[:2]
    assert many.device_ms[2] > one.device_ms[2]
    crossing = {a.name: (a.crossing_ms, b.crossing_ms)
                for a, b in zip(one.tensors, many.tensors, strict=True)}
    assert crossing["c"][0] == crossing["c"][1] > 0
    assert crossing["h"][1] == pytest.approx(64 * crossing["h"][0])
    exported = read_model(_weight_made(4), "w4")
    assert exported.layers["centre"].flops == graph.layers["centre"].flops > 0
    assert exported.layers["mm"].flops == graph.layers["mm"].flops
    assert exported.tensors["c"].bytes == graph.tensors["c"].bytes


def test_a_tensor_with_three_consumers_is_charged_once():
    g = three_consumers()
    h = next(t for t in g.tensors if t.name == "h")
    assert len(h.consumers) == 3
    only_producer = delay(g, {0})
    assert only_producer.crossing == pytest.approx(h.crossing_ms)
    assert only_producer.crossing == pytest.approx(crossing_ms(256 * 4, scenario()))
    assert delay(g, {0, 1}).crossing == pytest.approx(h.crossing_ms)
    assert delay(g, {0, 1, 2, 3}).crossing == 0


def test_graph_and_partition_json_follow_the_contract_and_agree(tmp_path, capsys, monkeypatch):
    path = save(GRAPH, tmp_path / "chain.onnx")
    args = ["--device", "jetson-tx2", "--server", "a100", "--uplink", "50Mbps", "--batch", "16"]
    code, out, _ = run_main(["graph", str(path), *args, "--json"], capsys, monkeypatch)
    assert code == 0
    graph = json.loads(out)
    jsonschema.validate(graph, schema("graph"))
    code, out, _ = run_main(["partition", str(path), *args, "--json"], capsys, monkeypatch)
    assert code == 0
    part = json.loads(out)
    jsonschema.validate(part, schema("partition"))
    assert part["scenario"] == graph["scenario"]
    # D(S) recomputed from the graph JSON alone, as a user would
    device = set(part["partition"]["device_layers"])
    layers = {layer["name"]: layer for layer in graph["layers"]}
    total = sum(layers[n]["device_ms"] if n in device else layers[n]["server_ms"] for n in layers)
    crossing = [t for t in graph["tensors"]
                if t["producer"] in device and any(c not in device for c in t["consumers"])]
    total += sum(t["crossing_ms"] for t in crossing)
    if crossing:
        total += graph["per_iteration_ms"]["latency"]
    if any(o not in device for o in graph["outputs"]):
        total += graph["per_iteration_ms"]["labels"]
    assert part["delay_ms"]["total"] == pytest.approx(total, rel=1e-12)
    cut = {t["name"] for t in graph["tensors"]
           if t["producer"] in device and any(c not in device for c in t["consumers"])}
    assert set(part["partition"]["cut_tensors"]) == cut


def test_the_collector_is_paused_inside_and_back_on_after_even_on_error():
    import gc

    from toolkit.blocks import find_blocks
    from toolkit.collector import collector_paused
    from toolkit.partition import solve

    seen: list[bool] = []

    @collector_paused
    def inner() -> None:
        seen.append(gc.isenabled())

    @collector_paused
    def outer(fail: bool) -> None:
        inner()
        seen.append(gc.isenabled())  # the inner call left it to the outer one
        if fail:
            raise ValueError("boom")

    assert gc.isenabled()
    outer(False)
    with pytest.raises(ValueError):
        outer(True)
    assert seen == [False, False, False, False] and gc.isenabled()
    assert all(hasattr(f, "__wrapped__") for f in (build_cost_graph, find_blocks, solve))


def _dropout_model(tmp_path) -> tuple[object, int]:
    """x -> MatMul -> Dropout(0.1, training) -> MatMul: the mask, 64 numbers per sample, is
    kept from the forward to the backward."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Dropout", ["h", "ratio", "training"], ["d"], name="drop"),
             helper.make_node("MatMul", ["d", "w2"], ["y"], name="fc2")]
    inits = [weight("w1", 64, 64), weight("w2", 64, 8, seed=1),
             numpy_helper.from_array(np.array(0.1, dtype=np.float32), "ratio"),
             numpy_helper.from_array(np.array(True), "training")]
    path = save(model(nodes, [vi("x", [1, 64])], [vi("y", [1, 8])], inits), tmp_path / "d.onnx")
    return api.load_graph(str(path), name="d"), 64


def test_a_dropout_mask_is_sized_by_where_its_tier_trains(tmp_path):
    """PyTorch's CPU path keeps a float noise tensor per dropout, CUDA's fused kernel a bool
    mask (docs/memory.md: BERT on an H200 from +14% to +0.4%): a tier's peak uses its own
    processor's `backend`, the device's and the server's apart, and so does each tier of a
    chain. Counting every mask as floats (or as bytes) fails here."""
    graph, elements = _dropout_model(tmp_path)
    batch = 1024  # activations, not weights, make the peak
    whole = range(len(graph))
    cuda_device = build_cost_graph(graph, api.make_scenario(
        device="jetson-nano", server="cpu-server", batch=batch))
    assert api.make_scenario(device="jetson-nano").device.backend == "cuda"
    assert cuda_device.memory is not None and cuda_device.server_memory is not None
    device, server = cuda_device.memory, cuda_device.server_memory
    assert [device.saved[j].nbytes for j in device.variants] == [elements * batch * 1]
    assert [server.saved[j].nbytes for j in server.variants] == [elements * batch * 4]
    assert peak_memory(cuda_device, whole, "server") - peak_memory(cuda_device, whole) \
        == pytest.approx(3 * elements * batch)
    cpu_device = build_cost_graph(graph, api.make_scenario(
        device="raspberry-pi-5", server="rtx-3090", batch=batch))
    assert peak_memory(cpu_device, whole) == peak_memory(cuda_device, whole, "server")
    assert cpu_device.memory.on("cuda").saved == cuda_device.memory.saved
    chain = build_tier_graph(graph, ["device", "edge", "cloud"], [
        api.make_scenario(device="raspberry-pi-5", server="jetson-agx-orin", batch=batch),
        api.make_scenario(device="jetson-agx-orin", server="cpu-server", batch=batch)])
    on = {name: chain.peak_of(name, whole) for name in chain.tiers}
    assert on["device"] == on["cloud"] == on["edge"] + 3 * elements * batch


def test_a_profile_says_where_pytorch_trains_on_it(tmp_path):
    """`backend` is optional (a CPU), "cpu" or "cuda"; anything else is a one-line error."""
    text = (resources.files("toolkit") / "profiles" / "raspberry-pi-5.toml").read_text()
    (tmp_path / "mine.toml").write_text(text.replace('name = "raspberry-pi-5"', 'name = "mine"'))
    assert profiles.processors(tmp_path)["mine"].backend == "cpu"
    assert profiles.processors(tmp_path)["jetson-nano"].backend == "cuda"
    (tmp_path / "mine.toml").write_text(text.replace('name = "raspberry-pi-5"',
                                                     'name = "mine"\nbackend = "tpu"'))
    with pytest.raises(ProfileError, match="backend must be one of cpu, cuda"):
        profiles.processors(tmp_path)
