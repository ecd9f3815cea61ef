"""Raw data never leaves the device, in any disguise, on every zoo model and exporter.

The oracle here is written independently of `LayerGraph.raw_data_readers`: a tensor is raw
when it is a model input or its producer mixes no weights into it (reads none, nor a tensor
weights alone make, or only scales and shifts each element: no more MACs than outputs, no
lookup) and either
every input of it that a model input reaches is raw or it copies elements as they are (a
concatenation, a `Where`) and one of them is raw values of its own element type (not sizes).
No such tensor may be a cut tensor, at any link rate of a sweep from 1 to 1000 Mbit/s.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.helpers import model, vi, weight
from toolkit import api, zoo
from toolkit.graph import Layer, LayerGraph
from toolkit.onnx import read_model

RATES_MBPS = (1, 3, 10, 30, 100, 300, 1000)


def _fixed_point(graph: LayerGraph, grows: Callable[[Layer, set[str]], bool],
                 start: set[str]) -> set[str]:
    """`start` and the outputs of every layer `grows` says the set reaches, to a fixed point
    (not a topological sweep: independent of the reader's order)."""
    found, changed = set(start), True
    while changed:
        changed = False
        for layer in graph:
            if not set(layer.outputs) <= found and grows(layer, found):
                found |= set(layer.outputs)
                changed = True
    return found


COPIES = {"Concat", "Where", "Max", "Min", "Gather", "GatherElements", "GatherND", "Slice",
          "Split", "Reshape", "Expand", "Tile", "Pad", "Transpose", "Squeeze", "Unsqueeze",
          "Flatten", "Identity", "ScatterND", "ScatterElements"}
"""Operators that copy input elements into their output as they are."""


def raw_tensors(graph: LayerGraph) -> set[str]:
    data = _fixed_point(graph, lambda layer, found: bool(found.intersection(layer.inputs)),
                        set(graph.inputs))  # what a model input reaches
    sizes = _fixed_point(graph, lambda layer, found: layer.op in ("Shape", "Size") or (bool(
        set(layer.inputs) & data) and set(layer.inputs) & data <= found), set())

    def stays_raw(layer: Layer, raw: set[str]) -> bool:
        weighted = layer.reads_weights > 0 or not set(layer.inputs) <= data
        outputs = sum(math.prod(graph.tensors[o].shape) for o in layer.outputs)  # (batch 1)
        mixes = weighted and (layer.macs > outputs or layer.op.startswith("Gather"))
        read = set(layer.inputs) & data
        if mixes or not read & raw:
            return False
        kinds = {graph.tensors[o].dtype for o in layer.outputs}
        return read <= raw or (layer.op in COPIES and any(  # raw values copied as they are
            t in raw and t not in sizes and graph.tensors[t].dtype in kinds for t in read))

    return _fixed_point(graph, stays_raw, set(graph.inputs))


def assert_raw_stays(graph: LayerGraph, raw: set[str], batch: int = 8) -> None:
    """No tensor of `raw` is a cut tensor at any rate: a Jetson Nano training with an H100."""
    for rate in RATES_MBPS:
        scenario = api.make_scenario(device="jetson-nano", server="h100", link=None,
                                     uplink=f"{rate}Mbps", downlink=f"{rate}Mbps",
                                     latency="0.1ms", batch=batch)
        crossing = set(api.partition_model(graph, scenario).to_dict()["partition"]
                       ["cut_tensors"])
        assert not crossing & raw, (rate, sorted(crossing & raw))


def convs(source: str, count: int = 4) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """`count` 3x3 convolutions of 16 channels, each with a ReLU, after tensor `source` (the
    last output `r{count - 1}`), and their weights."""
    nodes: list[onnx.NodeProto] = []
    for k in range(count):
        nodes += [helper.make_node("Conv", [nodes[-1].output[0] if nodes else source, f"w{k}"],
                                   [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1],
                                   kernel_shape=[3, 3]),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}")]
    return nodes, [weight(f"w{k}", 16, 16, 3, 3, seed=k + 1) for k in range(count)]


@pytest.mark.parametrize("exporter", zoo.EXPORTERS)
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_no_raw_tensor_crosses_at_any_rate(zoo_path, name, exporter):
    graph = api.load_graph(str(zoo_path(name, exporter)), name)
    raw = raw_tensors(graph)
    for device, server in (("jetson-nano", "rtx-3090"), ("jetson-agx-orin", "h100")):
        for rate in RATES_MBPS:
            scenario = api.make_scenario(device=device, server=server, link=None,
                                         uplink=f"{rate}Mbps", downlink=f"{rate}Mbps",
                                         latency="2ms", batch=8)
            result = api.partition_model(graph, scenario)
            crossing = set(result.to_dict()["partition"]["cut_tensors"])
            assert not crossing & raw, (device, rate, sorted(crossing & raw))


def test_reshaped_token_ids_stay_on_the_device(zoo_path):
    """GPT-2's token ids reach the embedding through parameter-free layers: those stay, and
    the pin says why."""
    graph = api.load_graph(str(zoo_path("gpt2")), "gpt2")
    costs = api.partition_model(graph, api.make_scenario(link=None, uplink="1000Mbps",
                                                         downlink="1000Mbps")).graph
    reasons = {costs.names[i]: costs.pin_reasons[i] for i in range(len(costs))
               if costs.pinned[i]}
    assert "reads raw data (no layer on its path mixes it with trainable weights)" \
        in reasons.values()
    assert "reads raw input" in reasons.values()
    derived = raw_tensors(graph) - set(graph.inputs)
    assert derived, "GPT-2's export forwards raw ids through parameter-free layers"
    for t in derived:
        for consumer in graph.tensors[t].consumers:
            assert consumer in reasons


def test_rescaled_and_normalised_pixels_are_still_raw():
    """Keras' EfficientNet as tf2onnx writes it: the pixels times 1/255, minus a per-channel
    mean, over a per-channel deviation, all three float initializers, then the stem
    convolution. It was cut after the rescaling (one layer on the device, the scaled image
    sent); an elementwise scale and shift hides nothing, so the convolution stays too."""
    scalar = numpy_helper.from_array(np.array(1 / 255, np.float32), "scale")
    mean = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.45, np.float32), "mean")
    std = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.22, np.float32), "std")
    nodes = [helper.make_node("Mul", ["x", "scale"], ["scaled"], name="rescaling"),
             helper.make_node("Sub", ["scaled", "mean"], ["centred"], name="normalise_mean"),
             helper.make_node("Div", ["centred", "std"], ["normal"], name="normalise_std"),
             helper.make_node("Conv", ["normal", "w"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["stem"], ["act"], name="act")]
    stack, weights = convs("act")
    nodes += stack
    inits = [scalar, mean, std, weight("w", 16, 3, 3, 3), *weights]
    graph = read_model(model(nodes, [vi("x", [1, 3, 64, 64])], [vi("r3", [1, 16, 64, 64])],
                             inits), "keras_front")
    raw = raw_tensors(graph)
    assert {"scaled", "centred", "normal"} <= raw and "stem" not in raw
    reasons = graph.raw_data_readers()
    assert {"normalise_mean", "normalise_std", "stem"} <= set(reasons)
    assert_raw_stays(graph, raw)


def test_a_scale_and_shift_computed_from_weights_hide_nothing():
    """A learned input normalisation as PyTorch users write it: the pixels times
    `exp(log_scale)` plus `tanh(shift)`, each a tensor weights alone make (no model input
    reaches it), then the stem convolution. Reading such a tensor beside the pixels was taken
    for mixing in a second input, so the scaled pixels crossed to the server at 1 Gbit/s."""
    channel = np.zeros((1, 3, 1, 1), np.float32)
    nodes = [helper.make_node("Exp", ["log_scale"], ["scale"], name="scale_exp"),
             helper.make_node("Tanh", ["shift"], ["offset"], name="shift_tanh"),
             helper.make_node("Mul", ["x", "scale"], ["scaled"], name="learned_scale"),
             helper.make_node("Add", ["scaled", "offset"], ["shifted"], name="learned_shift"),
             helper.make_node("Conv", ["shifted", "w"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["stem"], ["act"], name="act")]
    stack, weights = convs("act")
    nodes += stack
    inits = [numpy_helper.from_array(channel, "log_scale"),
             numpy_helper.from_array(channel, "shift"), weight("w", 16, 3, 3, 3), *weights]
    graph = read_model(model(nodes, [vi("x", [1, 3, 64, 64])], [vi("r3", [1, 16, 64, 64])],
                             inits), "learned_front")
    assert not graph.tensors["scale"].per_sample and graph.layers["learned_scale"].params == 0
    raw = raw_tensors(graph)
    assert {"scaled", "shifted"} <= raw and "stem" not in raw
    assert {"learned_shift", "stem"} <= set(graph.raw_data_readers())
    assert_raw_stays(graph, raw)


def test_raw_features_joined_to_embeddings_stay_raw():
    """A wide-and-deep front as tabular models write it: the raw dense features concatenated
    with the embeddings of the raw ids, then an MLP. The concatenation mixes nothing: its
    output holds the features as they are, so it is raw data and the first matmul stays on the
    device (the concatenation crossed to the server from 10 Mbit/s up). A `Where` choosing
    between the features and the embeddings by a raw mask, or picking by an index computed
    from them, is as raw; a gather of activations by raw indices (their values not copied)
    is not."""
    width = 512
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
             helper.make_node("Flatten", ["e"], ["ef"], name="flat"),
             helper.make_node("Concat", ["dense", "ef"], ["h"], name="wide_and_deep", axis=1),
             helper.make_node("Where", ["keep", "dense", "ef_first"], ["picked"], name="pick"),
             helper.make_node("Slice", ["ef", "zero", "thirteen", "one"], ["ef_first"],
                              name="first_features"),
             helper.make_node("GatherElements", ["ef", "ids"], ["by_ids"], name="by_ids",
                              axis=1),
             helper.make_node("Concat", ["h", "picked", "by_ids"], ["joined"], name="join",
                              axis=1),
             helper.make_node("MatMul", ["joined", "w0"], ["m0"], name="fc0"),
             helper.make_node("Relu", ["m0"], ["r0"], name="relu0")]
    for k in range(1, 5):
        nodes += [helper.make_node("MatMul", [f"r{k - 1}", f"w{k}"], [f"m{k}"], name=f"fc{k}"),
                  helper.make_node("Relu", [f"m{k}"], [f"r{k}"], name=f"relu{k}")]
    nodes.insert(3, nodes.pop(4))  # (the slice before the Where that reads it)
    ints = [numpy_helper.from_array(np.array([v], np.int64), n)
            for n, v in (("zero", 0), ("thirteen", 13), ("one", 1))]
    inits = [weight("emb", 1000, 16), *ints, weight("w0", 45 + 13 + 2, width),
             *(weight(f"w{k}", width, width, seed=k) for k in range(1, 5))]
    graph = read_model(model(
        nodes, [vi("dense", [1, 13]), vi("ids", [1, 2], onnx.TensorProto.INT64),
                vi("keep", [1, 13], onnx.TensorProto.BOOL)], [vi("r4", [1, width])], inits),
        "wide_and_deep")
    raw = raw_tensors(graph)
    assert {"h", "picked", "joined"} <= raw and not {"ef", "by_ids", "m0"} & raw
    assert {"wide_and_deep", "pick", "join", "fc0"} <= set(graph.raw_data_readers())
    assert_raw_stays(graph, raw, batch=64)


@pytest.mark.parametrize("front", ["series", "gray"])
def test_one_mac_per_output_hides_nothing(front):
    """A contraction that gives each output one input element times a weight: the value
    embedding of a univariate series (`Linear(1, d)`, a MatMul over an axis of size 1) or a
    1x1 convolution of a one-channel image. Each output is the input scaled and shifted, d
    times over, so it is raw data; the matmul or 3x3 convolution after it mixes elements and
    hides them (the embedding crossed to the server from 10 Mbit/s up)."""
    if front == "series":
        nodes = [helper.make_node("MatMul", ["x", "w"], ["first"], name="value_embedding"),
                 helper.make_node("Relu", ["first"], ["a"], name="act"),
                 helper.make_node("MatMul", ["a", "w0"], ["mixed"], name="mix")]
        inits = [weight("w", 1, 64), weight("w0", 64, 64, seed=1)]
        shape, width = [1, 256, 1], [1, 256, 64]
        for k in range(4):
            nodes += [helper.make_node("MatMul", [nodes[-1].output[0], f"w{k + 1}"],
                                       [f"m{k}"], name=f"fc{k}")]
            inits.append(weight(f"w{k + 1}", 64, 64, seed=k + 2))
    else:
        stack, weights = convs("mixed")
        nodes = [helper.make_node("Conv", ["x", "w"], ["first"], name="pointwise",
                                  kernel_shape=[1, 1]),
                 helper.make_node("Relu", ["first"], ["a"], name="act"),
                 helper.make_node("Conv", ["a", "wm"], ["mixed"], name="mix", pads=[1] * 4,
                                  kernel_shape=[3, 3]), *stack]
        inits = [weight("w", 16, 1, 1, 1), weight("wm", 16, 16, 3, 3, seed=9), *weights]
        shape, width = [1, 1, 64, 64], [1, 16, 64, 64]
    graph = read_model(model(nodes, [vi("x", shape)], [vi(nodes[-1].output[0], width)], inits),
                       front)
    raw = raw_tensors(graph)
    assert {"first", "a"} <= raw and "mixed" not in raw
    assert set(graph.raw_data_readers()) == {nodes[0].name, "act", "mix"}
    assert_raw_stays(graph, raw)


def test_frozen_integer_weights_hide_no_raw_data(tmp_path):
    """A file quantized by onnxruntime (`quantize_dynamic`: ConvInteger on int8 weights) keeps
    its float head trainable. An integer weight does not train, and anyone holding the file
    can undo a frozen convolution, so the pixels stay raw through both convolutions up to the
    float head (the quantizer writes the Gemm as MatMul and Add); unquantized, the first
    convolution hides them. The pin says why."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Flatten", ["r1"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "head"], ["y"], name="head", transB=1)]
    inits = [weight("w0", 8, 3, 3, 3), weight("w1", 8, 8, 3, 3, seed=1),
             weight("head", 10, 8 * 16 * 16, seed=2)]
    plain = model(nodes, [vi("x", [1, 3, 16, 16])], [vi("y", [1, 10])], inits)
    float_path, quantized_path = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(plain, str(float_path))
    quantize_dynamic(str(float_path), str(quantized_path), op_types_to_quantize=["Conv"],
                     weight_type=QuantType.QInt8)

    float_pins = read_model(onnx.load(str(float_path)), "float").raw_data_readers()
    assert set(float_pins) == {"conv0"}  # the float convolution hides the pixels

    graph = read_model(onnx.load(str(quantized_path)), "int8")
    integer_convs = [layer.name for layer in graph if layer.op == "ConvInteger"]
    assert len(integer_convs) == 2
    assert not any(graph.layers[name].trainable for name in integer_convs)
    head = next(layer for layer in graph if layer.op == "MatMul")  # (the Gemm, rewritten)
    assert head.trainable and head.hides_raw_data()
    reasons = graph.raw_data_readers()
    for name in [*integer_convs, head.name]:
        assert reasons[name] == \
            "reads raw data (no layer on its path mixes it with trainable weights)"
    assert not any("no trainable parameters" in note for note in graph.notes)
