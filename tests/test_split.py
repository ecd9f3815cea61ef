"""Device and server halves reproduce the whole model (onnxruntime), on every zoo model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.helpers import chain, run_main, save
from toolkit import zoo
from toolkit.onnx import read_onnx
from toolkit.onnx.split import split_model, split_tiers


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_halves_reproduce_every_zoo_model_cut_midway(zoo_path, tmp_path, name):
    path = zoo_path(name)
    graph = read_onnx(path, name)
    layers = list(graph.layers)
    device = layers[: len(layers) // 2]  # a topological prefix is always a valid device side
    result = split_model(path, device, tmp_path)
    assert result.cut_tensors
    assert result.max_rel_error is not None and result.max_rel_error < 1e-4
    server = onnx.load(str(result.server_path), load_external_data=False)
    assert [i.name for i in server.graph.input] == result.cut_tensors


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "densenet121", "vit_b_16", "gpt2",
                                  "bert_base", "swin_t"])
def test_three_tiers_reproduce_zoo_models_cut_in_thirds(zoo_path, tmp_path, name):
    """Contiguous thirds of the topological order on three tiers: skip connections from the
    first third into the last are relayed, and the three files in order equal the whole."""
    path = zoo_path(name)
    layers = list(read_onnx(path, name).layers)
    third = len(layers) // 3
    tier_of = {n: min(k // third, 2) for k, n in enumerate(layers)}
    split = split_tiers(path, tier_of, ["device", "edge", "cloud"], tmp_path)
    assert all(p is not None and p.exists() for p in split.paths)
    assert split.max_rel_error is not None and split.max_rel_error < 1e-4, split.not_verified
    for t, written in enumerate(split.paths):
        inputs = [i.name for i in onnx.load(str(written), load_external_data=False).graph.input]
        assert inputs == split.inputs[t]
    assert split.inputs[1] and split.inputs[2]


def test_split_u_shape_writes_head_server_tail(zoo_path, tmp_path, capsys, monkeypatch):
    code, out, err = run_main(["split", str(zoo_path("resnet18")), "--u-shape", "--uplink",
                               "1Gbps", "--downlink", "1Gbps", "-o", str(tmp_path), "--json"],
                              capsys, monkeypatch)
    assert code == 0, err
    data = json.loads(out)
    files = [t["file"] for t in data["tiers"]]
    assert [Path(f).name for f in files] == ["device-head.onnx", "server.onnx",
                                             "device-tail.onnx"]
    assert data["max_rel_error"] is not None and data["max_rel_error"] < 1e-4
    tail = onnx.load(files[2], load_external_data=False)
    assert [o.name for o in tail.graph.output] == [
        o.name for o in onnx.load(str(zoo_path("resnet18")), load_external_data=False).graph.output]


def test_split_command_writes_both_halves(tmp_path, capsys, monkeypatch):
    path = save(chain(6, width=32), tmp_path / "c.onnx")
    code, out, _ = run_main(["split", str(path), "--uplink", "1Gbps", "--downlink", "1Gbps",
                             "--latency", "0ms", "-o", str(tmp_path / "out")], capsys,
                            monkeypatch)
    assert code == 0
    assert (tmp_path / "out" / "device.onnx").exists()
    assert (tmp_path / "out" / "server.onnx").exists()
    assert "max abs error" in out


def test_device_only_split_writes_no_empty_server_half(tmp_path, capsys, monkeypatch):
    """A link so slow that training on the device alone wins: only device.onnx is written,
    and it runs as the whole model does."""
    path = save(chain(6, width=32), tmp_path / "c.onnx")
    code, out, _ = run_main(["split", str(path), "--uplink", "1kbps", "--downlink", "1kbps",
                             "-o", str(tmp_path / "out"), "--json"], capsys, monkeypatch)
    assert code == 0
    data = json.loads(out)
    assert data["server"] is None and data["cut_tensors"] == []
    assert (tmp_path / "out" / "device.onnx").exists()
    assert not (tmp_path / "out" / "server.onnx").exists()
    assert data["max_abs_error"] == 0.0
    code, out, _ = run_main(["split", str(path), "--uplink", "1kbps", "--downlink", "1kbps",
                             "-o", str(tmp_path / "out2")], capsys, monkeypatch)
    assert "no server half" in out and "device then server" not in out


@pytest.mark.zoo
def test_dynamic_batch_and_sequence_stay_dynamic_in_the_halves(tmp_path, capsys, monkeypatch):
    """A model exported with a dynamic batch and sequence that reshapes by its input's shape:
    the halves run at other batch sizes and sequence lengths and agree with the whole."""
    import onnxruntime as ort
    import torch
    from torch import nn

    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x).relu()
            h = h.reshape(x.shape[0], x.shape[1], 2, 4).transpose(2, 3)
            return self.b(h.reshape(x.shape[0], x.shape[1], 8))

    path = tmp_path / "heads.onnx"
    torch.onnx.export(Heads().eval(), (torch.randn(2, 5, 8),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}})
    code, out, err = run_main(["split", str(path), "--dim", "seq=16", "--pin", "a",
                               "--pin-server", "b", "--latency", "0ms", "-o",
                               str(tmp_path / "out"), "--json"], capsys, monkeypatch)
    assert code == 0, err
    data = json.loads(out)
    assert data["server"] and data["max_abs_error"] < 1e-4

    x = np.random.default_rng(0).standard_normal((4, 32, 8)).astype(np.float32)
    whole = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    device = ort.InferenceSession(str(tmp_path / "out" / "device.onnx"),
                                  providers=["CPUExecutionProvider"])
    sent = dict(zip([o.name for o in device.get_outputs()], device.run(None, {"x": x}),
                    strict=True))
    server = ort.InferenceSession(str(tmp_path / "out" / "server.onnx"),
                                  providers=["CPUExecutionProvider"])
    got = server.run(None, {i.name: sent[i.name] for i in server.get_inputs()})
    assert np.allclose(got[0], whole[0], atol=1e-5)


def test_a_class_token_expanded_to_a_dynamic_batch_splits(tmp_path, capsys, monkeypatch):
    """ViT's class token expanded to the batch (`cls.expand(x.shape[0], -1, -1)`, as Hugging
    Face's optimum exports it): the expand's size is a Shape of shape arithmetic, which each
    half redoes from the batch it reads. Both halves borrowed it from the other, so the
    device half asked for an input nothing made ("no value for input ...Shape_1_output_0")."""
    import onnxruntime as ort
    import torch
    from torch import nn

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = nn.Linear(8, 8), nn.Linear(8, 4)
            self.cls = nn.Parameter(torch.randn(1, 1, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            cls = self.cls.expand(x.shape[0], -1, -1)
            return self.head(torch.cat([cls, self.embed(x)], 1))

    path = tmp_path / "tokens.onnx"
    torch.onnx.export(Tokens().eval(), (torch.randn(2, 5, 8),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    code, out, err = run_main(["split", str(path), "--pin", "embed", "--pin-server", "head",
                               "--latency", "0ms", "-o", str(tmp_path / "out"), "--json"],
                              capsys, monkeypatch)
    assert code == 0, err
    data = json.loads(out)
    assert data["server"] and data["max_abs_error"] < 1e-5, data
    device = ort.InferenceSession(str(tmp_path / "out" / "device.onnx"),
                                  providers=["CPUExecutionProvider"])
    assert [i.name for i in device.get_inputs()] == ["x"]  # nothing it cannot make itself
    x = np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32)
    sent = dict(zip([o.name for o in device.get_outputs()], device.run(None, {"x": x}),
                    strict=True))
    server = ort.InferenceSession(str(tmp_path / "out" / "server.onnx"),
                                  providers=["CPUExecutionProvider"])
    whole = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = server.run(None, {i.name: sent[i.name] for i in server.get_inputs()})[0]
    assert got.shape == (3, 6, 4)
    assert np.allclose(got, whole.run(None, {"x": x})[0], atol=1e-5)


def test_a_shape_of_a_tensor_nobody_could_size_is_kept_as_a_node(tmp_path):
    """tf2onnx wrote a GELU with `Erfc`, which no ONNX runtime knows: sizes after it stay
    unknown, so a Shape of one is a layer, not a constant. The half that holds it runs it on
    the tensor it receives (splitting crashed with a KeyError looking for its static shape)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Erfc", ["a"], ["m"], name="erfc"),
             helper.make_node("Shape", ["m"], ["s"], name="shape"),
             helper.make_node("Cast", ["s"], ["y"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Relu", ["m"], ["z"], name="after")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 8])],
                              [helper.make_tensor_value_info("y", 1, None),
                               helper.make_tensor_value_info("z", 1, None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    assert "shape" in read_onnx(path).layers  # not folded: its input's size is unknown
    split = split_tiers(path, {"relu": 0, "erfc": 0, "shape": 1, "cast": 1, "after": 1},
                        ["device", "server"], tmp_path / "out")
    server = onnx.load(str(tmp_path / "out" / "server.onnx"))
    assert [n.op_type for n in server.graph.node] == ["Shape", "Cast", "Relu"]
    assert [i.name for i in server.graph.input] == ["m"]
    assert split.not_verified  # nothing runs Erfc


def _zipmap_model(labels: list[int]) -> onnx.ModelProto:
    """Scores -> ReLU -> ZipMap: an output that is a sequence of maps (scikit-learn's
    classifiers as skl2onnx writes them), not a tensor."""
    from onnx import helper

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("ZipMap", ["r"], ["p"], name="zipmap", domain="ai.onnx.ml",
                              classlabels_int64s=labels)]
    out = helper.make_value_info("p", helper.make_sequence_type_proto(
        helper.make_map_type_proto(onnx.TensorProto.INT64,
                                   helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, []))))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [2, 3])],
                              [out])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("ai.onnx.ml", 3)])
    m.ir_version = 8
    return m


def test_parts_are_checked_on_outputs_that_are_not_tensors(tmp_path):
    """A sequence of maps is compared for equality (it was 'written, not verified: float()
    argument must be ... not dict'); a part that maps to other labels is caught."""
    from toolkit.errors import ToolkitError
    from toolkit.onnx.split import verify

    path = tmp_path / "m.onnx"
    onnx.save(_zipmap_model([0, 1, 2]), str(path))
    split = split_tiers(path, {"relu": 0, "zipmap": 1}, ["device", "server"], tmp_path / "out")
    assert split.not_verified is None and split.max_abs_error == 0.0
    device = onnx.load(str(tmp_path / "out" / "device.onnx"))
    server = onnx.load(str(tmp_path / "out" / "server.onnx"))
    for a in server.graph.node[0].attribute:
        if a.name == "classlabels_int64s":
            a.ints[:] = [5, 6, 7]
    with pytest.raises(ToolkitError, match="'p' of the parts differs"):
        verify(_zipmap_model([0, 1, 2]), [device, server])


def test_a_file_that_repeats_a_node_name_splits_and_is_checked(tmp_path):
    """The reader names a repeated node name's second node `mm#1`; onnxruntime refuses a file
    that repeats one ('two nodes with same node name'), so the parts could not be checked.
    Each node of the halves is named its layer, and the check runs."""
    m = chain(3, width=16)
    m.graph.node[2].name = m.graph.node[4].name = "mm"
    path = save(m, tmp_path / "dup.onnx")
    names = [layer.name for layer in read_onnx(path)]
    assert names == ["mm0", "relu0", "mm", "relu1", "mm#1", "relu2"]
    split = split_tiers(path, {name: int(k >= 3) for k, name in enumerate(names)},
                        ["device", "server"], tmp_path / "out")
    assert split.not_verified is None and split.max_abs_error == 0.0
    server = onnx.load(str(tmp_path / "out" / "server.onnx"))
    assert [n.name for n in server.graph.node] == ["relu1", "mm#1", "relu2"]


def test_a_raw_input_passed_through_as_an_output_stays_on_the_device(tmp_path):
    """A file that returns its raw input beside its result: the output no layer makes was
    given to the last part, whose file then read the raw input (raw data leaving the device,
    and a part the trainer could not run: 'KeyError: x'). The device's part returns it."""
    m = chain(2, width=8)
    m.graph.output.insert(0, onnx.helper.make_tensor_value_info(
        m.graph.input[0].name, onnx.TensorProto.FLOAT, None))
    path = save(m, tmp_path / "passthrough.onnx")
    names = [layer.name for layer in read_onnx(path)]
    raw = m.graph.input[0].name
    split = split_tiers(path, {name: int(k >= 2) for k, name in enumerate(names)},
                        ["device", "server"], tmp_path / "out")
    assert split.not_verified is None and split.max_abs_error == 0.0
    assert split.made[0] == [raw] and raw not in split.made[1] and raw not in split.inputs[1]
    server = onnx.load(str(tmp_path / "out" / "server.onnx"))
    assert raw not in [i.name for i in server.graph.input]
