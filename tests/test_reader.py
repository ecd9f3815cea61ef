"""Graph structure from the reader: folding, several inputs/outputs, control flow, bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import (
    as_constant_nodes,
    chain,
    model,
    run_main,
    save,
    single_op,
    vi,
    weight,
    with_local_function,
)
from toolkit.cli import cli
from toolkit.errors import ModelError
from toolkit.graph import LayerGraph
from toolkit.onnx import load_external_data, read_model, read_onnx
from toolkit.onnx.load import load_model


def test_identity_and_constant_chains_on_weights_are_folded_into_parameters():
    nodes = [
        helper.make_node("Identity", ["w"], ["w_id"], name="weight_copy"),
        helper.make_node("Constant", [], ["two"], name="two",
                         value=helper.make_tensor("v", TensorProto.FLOAT, [], [2.0])),
        helper.make_node("Mul", ["two", "two"], ["four"], name="scale"),
        helper.make_node("Transpose", ["w_id"], ["wt"], name="transpose_weight"),
        helper.make_node("MatMul", ["x", "wt"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "four"], ["y"], name="add"),
    ]
    graph = read_model(model(nodes, [vi("x", [1, 3])], [vi("y", [1, 4])], [weight("w", 4, 3)]), "m")
    assert list(graph.layers) == ["mm", "add"]
    mm = graph.layers["mm"]
    assert mm.inputs == ("x",)
    assert mm.params == 12
    assert mm.reads_input
    assert graph.layers["add"].params == 0  # a constant computed from Constant nodes is no weight


def test_shape_of_a_static_tensor_is_a_constant_not_a_layer():
    shape_init = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Shape", ["r"], ["s"], name="shape"),
        helper.make_node("Reshape", ["r", "s"], ["y"], name="reshape"),
    ]
    graph = read_model(model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])], [shape_init]), "m")
    assert list(graph.layers) == ["relu", "reshape"]
    assert graph.layers["reshape"].inputs == ("r",)


def test_several_inputs_outputs_and_a_tensor_with_three_consumers():
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r1"], name="r1"),
        helper.make_node("Sigmoid", ["s"], ["r2"], name="r2"),
        helper.make_node("Tanh", ["s"], ["r3"], name="r3"),
    ]
    graph = read_model(model(nodes, [vi("a", [1, 5]), vi("b", [1, 5])],
                             [vi("r1", [1, 5]), vi("r2", [1, 5]), vi("r3", [1, 5])]), "m")
    assert graph.inputs == ("a", "b")
    assert graph.outputs == ("r1", "r2", "r3")
    assert graph.tensors["s"].consumers == ("r1", "r2", "r3")
    assert graph.input_layers() == ["add"]
    assert [t.name for t in graph.activations()] == ["s"]


def test_if_is_one_layer_and_its_outer_scope_reads_are_edges():
    then_g = helper.make_graph([helper.make_node("Relu", ["h"], ["o1"])], "then", [],
                               [vi("o1", [1, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["h"], ["o2"])], "else", [],
                               [vi("o2", [1, 4])])
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["h"], name="hidden"),
        helper.make_node("ReduceSum", ["x"], ["c0"], name="sum", keepdims=0),
        helper.make_node("Cast", ["c0"], ["c"], name="cond", to=TensorProto.BOOL),
        helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_g,
                         else_branch=else_g),
    ]
    graph = read_model(model(nodes, [vi("x", [1, 4])], [vi("y", [1, 4])], check=False), "m")
    assert graph.layers["branch"].op == "If"
    assert set(graph.layers["branch"].inputs) == {"c", "h"}
    assert graph.layers["branch"].flops > 0
    assert list(graph.layers).index("hidden") < list(graph.layers).index("branch")


def test_symbolic_batch_counts_as_one_and_is_noted():
    m = model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
              [vi("x", ["batch", 3, 8])], [vi("y", ["batch", 3, 8])])
    graph = read_model(m, "m")
    assert graph.tensors["y"].bytes == 3 * 8 * 4
    assert any("symbolic" in n for n in graph.notes)


def _leading(case: str) -> onnx.ModelProto:
    """A model whose inputs lead with a concrete 4 that is the batch or is not."""
    ints = TensorProto.INT64
    if case == "batch":  # a batch runs through to the output
        nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
                 helper.make_node("Relu", ["h"], ["y"])]
        return model(nodes, [vi("x", [4, 6, 5])], [vi("y", [4, 6, 5])], [weight("w", 5, 5)])
    if case == "batch-second-out":  # ... and comes out time first: [6, 4, 5]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
                 helper.make_node("Transpose", ["h"], ["y"], perm=[1, 0, 2])]
        return model(nodes, [vi("x", [4, 6, 5])], [vi("y", [6, 4, 5])], [weight("w", 5, 5)])
    if case == "batch-first-recurrent":  # time first inside: the batch on axis 1, then 2
        hidden = 3
        nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
                 helper.make_node("LSTM", ["t", "w", "r"], ["yy"], hidden_size=hidden),
                 helper.make_node("Squeeze", ["yy", "one"], ["s"]),
                 helper.make_node("Transpose", ["s"], ["y"], perm=[1, 0, 2])]
        return model(nodes, [vi("x", [4, 6, 5])], [vi("y", [4, 6, hidden])],
                     [weight("w", 1, 4 * hidden, 5), weight("r", 1, 4 * hidden, hidden),
                      helper.make_tensor("one", ints, [1], [1])])
    if case.startswith("time-first-tagger"):  # nn.LSTM without batch_first, a tag per step
        hidden, batch = 3, int(case[-1])  # [steps, batch, features] in and out
        nodes = [helper.make_node("LSTM", ["x", "w", "r"], ["yy"], hidden_size=hidden),
                 helper.make_node("Squeeze", ["yy", "one"], ["s"]),
                 helper.make_node("MatMul", ["s", "head"], ["y"])]
        return model(nodes, [vi("x", [4, batch, 5])], [vi("y", [4, batch, 2])],
                     [weight("w", 1, 4 * hidden, 5), weight("r", 1, 4 * hidden, hidden),
                      weight("head", hidden, 2), helper.make_tensor("one", ints, [1], [1])])
    if case.startswith("attention"):  # self-attention per sample: [4, 6, 5] in and out
        time_first = case.endswith("time-first")  # the 4 is the sequence, 6 the batch
        lead = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2])] if time_first \
            else [helper.make_node("Identity", ["x"], ["t"])]
        nodes = [*lead,
                 helper.make_node("MatMul", ["t", "wq"], ["q"]),
                 helper.make_node("MatMul", ["t", "wk"], ["k"]),
                 helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
                 helper.make_node("MatMul", ["q", "kt"], ["s"]),  # scores: each step's row
                 helper.make_node("Softmax", ["s"], ["p"], axis=-1),
                 helper.make_node("MatMul", ["p", "t"], ["o"]),
                 helper.make_node("Transpose", ["o"], ["y"], perm=[1, 0, 2]) if time_first
                 else helper.make_node("Relu", ["o"], ["y"])]
        return model(nodes, [vi("x", [4, 6, 5])], [vi("y", [4, 6, 5])],
                     [weight("wq", 5, 5), weight("wk", 5, 5, seed=1)])
    if case == "channels":  # a CHW image made a batch of one (torchvision's detection)
        nodes = [helper.make_node("Unsqueeze", ["x", "zero"], ["b"]),
                 helper.make_node("Conv", ["b", "w"], ["c"]),
                 helper.make_node("Relu", ["c"], ["y"])]
        return model(nodes, [vi("x", [4, 6, 5])], [vi("y", [1, 2, 4, 3])],
                     [weight("w", 2, 4, 3, 3), helper.make_tensor("zero", ints, [1], [0])])
    # time first, reduced away (nn.TransformerEncoder without batch_first); "picked": an
    # output takes one of the six rows, as no model does with its samples
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("ReduceSum", ["r", "zero"], ["y"], keepdims=0),
             helper.make_node("Gather", ["y", "first"], ["g"], axis=0)]
    picked = [vi("g", [5])] if case == "picked" else []
    return model(nodes, [vi("x", [4, 6, 5])], [vi("y", [6, 5]), *picked],
                 [weight("w", 5, 5), helper.make_tensor("zero", ints, [1], [0]),
                  helper.make_tensor("first", ints, [], [0])])


@pytest.mark.parametrize(("case", "batch", "wanted"), [
    ("batch", 4, "exported with batch 4: divided out"),
    ("batch-second-out", 4, "exported with batch 4: divided out"),
    ("batch-first-recurrent", 4, "exported with batch 4: divided out"),
    ("attention", 4, "exported with batch 4: divided out"),  # attends along its axis 1
    ("channels", 1, "(4) is not the batch: Conv"),
    ("sequence", 6, "(4) is not the batch: ReduceSum"),  # and no layer combines the 6
    ("picked", 1, "read as one sample"),  # nor here, but an output picks one of the six
    ("attention-time-first", 6, "the second (6) is the batch"),  # its output leads with time
    ("time-first-tagger-1", 1, "(4) is not the batch: LSTM"),  # so does this one's
    ("time-first-tagger-2", 2, "takes the second (2) as its batch: exported with batch 2")])
def test_a_concrete_leading_dimension_is_the_batch_only_where_the_model_carries_it(
        case, batch, wanted):
    m = _leading(case)
    whole = read_model(m, case, dims={"batch": 1})  # the file's figures, nothing divided
    graph = read_model(m, case)
    assert graph.file_batch == batch
    assert graph.total_flops == pytest.approx(whole.total_flops / batch)
    assert graph.total_macs > 0
    assert wanted in graph.notes[0]
    assert read_model(m, case, dims={"batch": 4}).total_flops == \
        pytest.approx(whole.total_flops / 4)  # stated, it is divided out whatever the model
    with pytest.raises(ModelError, match=r"--dim batch=7: no input has an axis of 7 \(x \[4, "):
        read_model(m, case, dims={"batch": 7})  # not the file's: never divided out silently


def test_a_batch_beside_a_scalar_or_a_vector_input_is_still_divided_out():
    """A diffusion model's inputs: the latents and a timestep per sample, one guidance scale
    for the batch (rank 0: no batch axis to share) and a position table (a vector whose
    length is not the batch's)."""
    ints = TensorProto.INT64
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Unsqueeze", ["t", "axes"], ["tt"]),
             helper.make_node("Mul", ["c", "tt"], ["m"]),
             helper.make_node("Add", ["m", "pos"], ["p"]),
             helper.make_node("Mul", ["p", "scale"], ["y"])]
    m = model(nodes, [vi("x", [2, 3, 8, 8]), vi("t", [2]), vi("pos", [6]), vi("scale", [])],
              [vi("y", [2, 4, 6, 6])],
              [weight("w", 4, 3, 3, 3), helper.make_tensor("axes", ints, [3], [1, 2, 3])])
    graph, whole = read_model(m, "unet"), read_model(m, "unet", dims={"batch": 1})
    assert graph.file_batch == 2
    assert graph.total_flops == pytest.approx(whole.total_flops / 2)
    assert graph.tensors["tt"].bytes == whole.tensors["tt"].bytes // 2


@pytest.mark.parametrize("batch_first", [False, True])
def test_pytorch_transformer_taggers_read_per_sample_whatever_the_layout(tmp_path, batch_first):
    """nn.TransformerEncoder exported as PyTorch writes it (heads merged into the batch by
    reshapes, attention as batched products): each file's figures per sample equal one
    sample's, every tensor's bytes too. Time first, the leading 10 is the sequence, which
    attention combines."""
    import torch
    from torch import nn

    from toolkit.zoo import export_pytorch

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
    tagger = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                           nn.Linear(16, 3)).eval()

    def read(samples: int, **dims: int) -> LayerGraph:
        x = torch.randn(samples, 10, 16) if batch_first else torch.randn(10, samples, 16)
        return read_onnx(export_pytorch(tagger, (x,), tmp_path / f"t{samples}.onnx"), dims=dims)

    def tensor_bytes(graph: LayerGraph) -> dict[str, int]:
        return {name: t.bytes for name, t in graph.tensors.items()}

    one = read(1)
    assert one.file_batch == 1
    if batch_first:  # the leading 3 is the batch: divided out, wherever the heads hide it
        three = read(3)
        assert three.file_batch == 3
        assert three.total_flops == pytest.approx(one.total_flops)
        whole = read(3, batch=1).tensors  # the file's shapes
        assert any(3 * 2 in t.shape and 3 not in t.shape for t in whole.values())  # merged:
        # (batch x heads, steps, head size), no axis of the batch's size alone
        assert tensor_bytes(three) == tensor_bytes(one)
        return
    assert "(10) is not the batch: MatMul" in one.notes[0]
    assert one.total_flops == read(1, batch=1).total_flops  # not divided by the sequence
    three = read(3)  # the second axis: nothing combines it, every output carries it
    assert three.file_batch == 3
    assert "the second (3) is the batch" in three.notes[0]
    assert three.total_flops == pytest.approx(one.total_flops)
    assert tensor_bytes(three) == tensor_bytes(one)


def test_nodes_out_of_order_are_sorted():
    m = chain(3)
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))
    graph = read_model(m, "m")
    assert list(graph.layers) == ["mm0", "relu0", "mm1", "relu1", "mm2", "relu2"]


def test_external_data_model_reads_without_loading_weights(tmp_path):
    m = chain(2, width=64)
    onnx.save(m, str(tmp_path / "ext.onnx"), save_as_external_data=True, size_threshold=0,
              all_tensors_to_one_file=True, location="ext.bin")
    graph = read_onnx(tmp_path / "ext.onnx")
    assert graph.name == "ext"
    assert graph.total_params == 2 * 64 * 64


def _cycle() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
             helper.make_node("Relu", ["a"], ["b"], name="n2")]
    return model(nodes, [vi("x", [1])], [vi("b", [1])], check=False)


def _dangling() -> onnx.ModelProto:
    return model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")],
                 [vi("x", [1])], [vi("y", [1])], check=False)


def _empty() -> onnx.ModelProto:
    return model([], [vi("x", [1])], [vi("x", [1])], check=False)


@pytest.mark.parametrize(("make", "message"), [
    (_cycle, "cycle"), (_dangling, "dangling tensor name"), (_empty, "no ONNX graph nodes"),
])
def test_broken_graphs_raise_model_error(tmp_path, make, message):
    path = save(make(), tmp_path / "bad.onnx")
    with pytest.raises(ModelError, match=message):
        read_onnx(path)


def _negative_input_dim() -> onnx.ModelProto:
    m = chain(2)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -7
    return m


def _negative_weight_dim() -> onnx.ModelProto:
    m = chain(2)
    m.graph.initializer[0].dims[0] = -8
    return m


def _external(location: str, m: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """chain(2) whose first weight lives in an external file at `location`; a symbolic batch
    forces the probe run, the one reason the reader reads external weights."""
    m = m or chain(2)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    w = m.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    return m


@pytest.mark.parametrize(("make", "message"), [
    (_negative_input_dim, "negative dimension"), (_negative_weight_dim, "negative dimension"),
])
def test_negative_dimensions_are_model_errors(tmp_path, make, message):
    with pytest.raises(ModelError, match=message):
        read_onnx(save(make(), tmp_path / "neg.onnx"))


def test_a_dimension_written_as_minus_one_is_symbolic_and_named_by_input_and_axis(tmp_path):
    """A Reshape that needs the input's third axis to be 4, the batch and that axis written
    as -1, as paddle2onnx and TensorFlow's converters write an unknown dimension."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3 * 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "w"], ["y"], name="mm")]
    m = model(nodes, [vi("x", [-1, 3, -1])], [vi("y", [-1, 2])],
              [shape, weight("w", 12, 2)], check=False)
    with pytest.raises(ModelError, match=r"'x\.2' \(axis 2 of input 'x'\).*--dim x\.2=128"):
        read_model(m, "paddle")
    graph = read_model(m, "paddle", dims={"x.2": 4})
    assert graph.tensors["f"].shape == (1, 12)  # the batch read as 1, the axis as given
    assert any("symbolic batch dimension (x.0)" in n for n in graph.notes)
    # splitting checks the parts at the given size: at 1 the Reshape to 12 could not run
    code = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "split", str(save(m, tmp_path / "p.onnx")),
         "--dim", "x.2=4", "-o", str(tmp_path / "parts")], capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    from toolkit.train.session import input_specs

    assert input_specs(m, 5, {"x.2": 4})["x"]["shape"] == [5, 3, 4]


def test_one_name_for_several_dimensions_is_given_by_input_and_axis():
    """PaddleOCR's files call two axes of the image "?": `--dim ?=N` would set both."""
    m = single_op("Relu", {"x": [1, 3, "?", "?"]}, [1, 3, "?", "?"])
    with pytest.raises(ModelError, match=r"--dim x\.2=128 \(INPUT\.AXIS: one axis; \?=128 gives "
                                         r"every axis named '\?' that value\)"):
        read_model(m, "ocr")
    graph = read_model(m, "ocr", dims={"x.2": 48, "x.3": 320})
    assert graph.tensors["y"].shape == (1, 3, 48, 320)


def test_a_size_baked_at_export_that_the_dims_given_change_is_one_clear_error(
        tmp_path, capsys, monkeypatch):
    """TorchScript's tracer bakes sizes it saw into a Reshape's target (nn.MultiheadAttention
    exported at 16 tokens with a dynamic sequence axis): read at 128 tokens, the file reshapes
    4,096 elements into 512, onnxruntime refuses to run it, and its costs would be garbage
    (attention scores of 128 x 16). At the sizes it was exported with it reads; a MatMul whose
    inner sizes the given size changes is refused alike."""
    target = helper.make_tensor("target", TensorProto.INT64, [3], [16, 2, 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="act"),
             helper.make_node("Reshape", ["r", "target"], ["v"], name="view"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]
    m = model(nodes, [vi("x", ["batch", "seq", 8])],
              [vi("v", [16, 2, 4]), vi("y", ["batch", "seq", 3])],
              [target, weight("w", 8, 3)])
    graph = read_model(m, "baked", dims={"seq": 16})
    assert graph.tensors["v"].shape == (16, 2, 4)
    with pytest.raises(ModelError, match=r"layer 'view': Reshape of \(1, 128, 8\) \(1,024 "
                                         r"elements\) into \(16, 2, 4\) \(128\): the file "
                                         r"fixes a size"):
        read_model(m, "baked", dims={"seq": 128})
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="cannot be reshaped"):  # (the runtime agrees)
        session.run(None, {"x": np.zeros((1, 128, 8), np.float32)})
    wide = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
                 [vi("x", ["batch", "seq"])], [vi("y", ["batch", 3])], [weight("w", 16, 3)])
    assert read_model(wide, "wide", dims={"seq": 16}).layers["fc"].flops == 2 * 16 * 3
    path = save(wide, tmp_path / "wide.onnx")
    code, _, err = run_main(["graph", str(path), "--dim", "seq=32"], capsys, monkeypatch)
    assert code != 0 and "layer 'fc': MatMul of (1, 32) by (16, 3): the inner sizes differ" \
        in err and "Traceback" not in err


def _cached_decoder() -> onnx.ModelProto:
    """A decoder step as Hugging Face's optimum exports one `-with-past`: new keys concatenated
    to a cache of `past` tokens, and a mask over both, its length written
    `past + seq`."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Concat", ["past", "h"], ["kv"], name="cat", axis=1),
             helper.make_node("Unsqueeze", ["mask", "last"], ["m3"], name="spread"),
             helper.make_node("Mul", ["kv", "m3"], ["y"], name="gate")]
    return model(nodes, [vi("x", ["batch", "seq", 4]), vi("past", ["batch", "past", 4]),
                         vi("mask", ["batch", "past + seq"])],
                 [vi("y", ["batch", "past + seq", 4])],
                 [weight("w", 4, 4), helper.make_tensor("last", TensorProto.INT64, [1], [2])])


def test_a_dimension_named_by_arithmetic_on_others_takes_their_values(
        tmp_path, capsys, monkeypatch):
    """optimum names a mask's length `past_sequence_length + sequence_length`: it had to be
    given as a name of its own; it comes from the values of the names in it. An empty
    cache (`--dim past=0`, refused as not positive) holds no raw data, so the layer that
    extends it is not pinned to the device on its account; a cache of three tokens is."""
    from toolkit.onnx.shapes import dim_expression

    m = _cached_decoder()
    graph = read_model(m, "decoder", dims={"seq": 5, "past": 3})
    assert graph.tensors["mask"].shape == (1, 8) and graph.tensors["kv"].shape == (1, 8, 4)
    assert "cat" in graph.raw_data_readers()
    with pytest.raises(ModelError, match=r"'past \+ seq' \(axis 1 of input 'mask'\)"):
        read_model(m, "decoder", dims={"seq": 5})
    path = save(m, tmp_path / "decoder.onnx")
    code, out, err = run_main(["graph", str(path), "--dim", "seq=5", "--dim", "past=0",
                               "--json"], capsys, monkeypatch)
    assert code == 0, err
    layers = {layer["name"]: layer for layer in json.loads(out)["layers"]}
    assert layers["cat"]["pinned"] is None and layers["gate"]["pinned"] == "device"
    code, _, err = run_main(["graph", str(path), "--dim", "batch=0"], capsys, monkeypatch)
    assert code != 0 and "positive for the batch" in err
    # nor by the batch axis's own name or position: an input without a sample
    for given in ({"batch": 0, "seq": 5}, {"x.0": 0, "seq": 5}):
        with pytest.raises(ModelError, match=r"input 'x' without a sample \(its axis 0"):
            read_model(m, "decoder", dims=given)
    # a 0 the file writes is "unknown", as early converters wrote it, never an empty input
    # that would let raw data past the device
    written = single_op("Relu", {"x": [0, 4]}, [0, 4])
    graph = read_model(written, "paddle-onnx")
    assert graph.tensors["x"].shape == (1, 4) and "Relu" in graph.raw_data_readers()
    assert any("symbolic batch dimension (x.0)" in n for n in graph.notes)
    given = {"a": 6, "b": 2}
    assert dim_expression("a + b * 2", given) == 10
    assert dim_expression("(a - 1) // b + a % 4", given) == 4
    for name in ("a ** 2", "a + c", "a - 7", "a // 0", "?", "__import__('os').getpid() + 1",
                 "a", "a" + " + a" * 200):
        assert dim_expression(name, given) is None, name


def test_a_classical_model_says_why_nothing_trains():
    """scikit-learn's logistic regression by skl2onnx: its coefficients are attributes of an
    `ai.onnx.ml` operator, not weights. The note gave a quantized file or weights as inputs
    as the cause; it names the operators."""
    node = helper.make_node("LinearClassifier", ["x"], ["label", "scores"], name="linear",
                            domain="ai.onnx.ml", classlabels_ints=[0, 1],
                            coefficients=[0.5] * 8, intercepts=[0.0, 0.1])
    graph = helper.make_graph([node], "g", [vi("x", [1, 4])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, [1]),
                               vi("scores", [1, 2])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("ai.onnx.ml", 3)])
    notes = read_model(m, "logreg").notes
    assert any("classical ML operators (ai.onnx.ml.LinearClassifier) keep any parameters"
               in n for n in notes), notes
    assert not any("a quantized file" in n for n in notes)


def _paddle_like() -> onnx.ModelProto:
    """A convolution, a hard-swish by scalars (x * clip(x + 3, 0, 6) / 6), a dense layer."""
    scalars = [helper.make_tensor(n, TensorProto.FLOAT, [], [v])
               for n, v in (("three", 3.0), ("zero", 0.0), ("six", 6.0))]
    shape = helper.make_tensor("flat", TensorProto.INT64, [2], [1, 4 * 6 * 6])
    nodes = [helper.make_node("Conv", ["x", "k", "b"], ["c"], name="conv", kernel_shape=[3, 3]),
             helper.make_node("Add", ["c", "three"], ["c3"], name="plus3"),
             helper.make_node("Clip", ["c3", "zero", "six"], ["r6"], name="relu6"),
             helper.make_node("Mul", ["c", "r6"], ["m"], name="gate"),
             helper.make_node("Div", ["m", "six"], ["hs"], name="hardswish"),
             helper.make_node("Reshape", ["hs", "flat"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "w"], ["y"], name="dense")]
    return model(nodes, [vi("x", [1, 3, 8, 8])], [vi("y", [1, 5])],
                 [weight("k", 4, 3, 3, 3), weight("b", 4), *scalars, shape,
                  weight("w", 4 * 6 * 6, 5)])


def test_weights_written_as_constant_nodes_train_as_initializers_do():
    from toolkit.onnx.load import standard_form
    from toolkit.train.executor import trainable_initializers

    m = _paddle_like()
    written = as_constant_nodes(m)
    assert not any(t.data_type == TensorProto.FLOAT for t in written.graph.initializer)
    ref, graph = read_model(m, "initializers"), read_model(written, "constants")
    assert graph.total_params == ref.total_params == 4 * 27 + 4 + 2 + 144 * 5
    assert {n: layer.params for n, layer in graph.layers.items()} == \
        {n: layer.params for n, layer in ref.layers.items()}
    assert not graph.layers["relu6"].trainable  # a bound trains nothing, however written
    assert graph.layers["dense"].trainable and not graph.layers["dense"].reads_input
    assert any("6 float tensors written as Constant nodes" in n for n in graph.notes)
    assert not any("Constant nodes" in n for n in ref.notes)
    # the split training's executor trains the same tensors as the reader
    assert trainable_initializers(standard_form(written).graph) == \
        trainable_initializers(m.graph) == {"k", "b", "three", "six", "w"}


def test_constant_nodes_are_no_weights_where_nothing_reads_one_as_a_weight():
    """A file whose weights are inputs (exported without its parameters) keeps its scalar
    Constant nodes constant: nothing trains, and a note says so."""
    m = as_constant_nodes(_paddle_like())
    for node in m.graph.node:
        if node.output[0] in ("k", "b", "w"):
            node.op_type, node.input[:] = "Identity", [f"{node.output[0]}_in"]
            del node.attribute[:]
    m.graph.input.extend([vi("k_in", [4, 3, 3, 3]), vi("b_in", [4]), vi("w_in", [144, 5])])
    graph = read_model(m, "weights_as_inputs")
    assert graph.total_params == 0
    assert any("no trainable parameters" in n for n in graph.notes)
    assert not any("Constant nodes" in n for n in graph.notes)


def test_names_that_are_not_utf8_are_a_model_error(tmp_path):
    data = save(chain(2), tmp_path / "ok.onnx").read_bytes().replace(b"relu1", b"rel\xff1")
    (tmp_path / "bad.onnx").write_bytes(data)
    with pytest.raises(ModelError, match="UTF-8"):
        read_onnx(tmp_path / "bad.onnx")


def _opened(monkeypatch) -> list[str]:
    """Every path opened through Python's io from here on."""
    import builtins
    import io

    seen: list[str] = []
    real = io.open

    def spy(file, *args, **kwargs):
        seen.append(os.fspath(file) if isinstance(file, str | os.PathLike) else str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    return seen


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_external_weights_outside_the_model_folder_are_never_opened(tmp_path, monkeypatch, how):
    """A real sentinel outside the model's folder, reached by `..`, an absolute path or a
    symbolic link in the folder: the model still reads, the sentinel is never opened."""
    folder = tmp_path / "model"
    folder.mkdir()
    sentinel = tmp_path / "secret.bin"
    sentinel.write_bytes(b"\x00" * 4096)
    location = {"dotdot": "../secret.bin", "absolute": str(sentinel), "symlink": "w.bin"}[how]
    if how == "symlink":
        (folder / "w.bin").symlink_to(sentinel)
    path = save(_external(location), folder / "ext.onnx")
    opened = _opened(monkeypatch)
    graph = read_onnx(path)
    assert len(graph) == 4  # the structure reads; the refused weights only skip the probe run
    assert not [p for p in opened if os.path.realpath(p) == str(sentinel.resolve())]
    with pytest.raises(ModelError, match=r"outside the model's folder|cannot be read"):
        load_external_data(onnx.load(str(path), load_external_data=False), folder)


def test_external_data_bigger_than_its_tensor_is_refused_before_it_is_read(tmp_path,
                                                                           monkeypatch):
    """A 200-byte model pointing at a 1 GiB sparse file in its own folder: refused by size,
    the file never opened."""
    big = tmp_path / "bomb.bin"
    with big.open("wb") as f:
        f.truncate(1 << 30)
    path = save(_external("bomb.bin"), tmp_path / "bomb.onnx")
    opened = _opened(monkeypatch)
    with pytest.raises(ModelError, match=r"declares .* bytes but its external data holds"):
        load_external_data(onnx.load(str(path), load_external_data=False), tmp_path)
    assert len(read_onnx(path)) == 4
    assert str(big) not in opened


def test_huge_declared_input_is_not_allocated(tmp_path):
    m = chain(2)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value = 1 << 40
    for value in m.graph.output:
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    graph = read_onnx(save(m, tmp_path / "huge.onnx"), dims={"batch": 1})
    assert graph.tensors["x"].shape[0] == 1 << 40


def _write_bad_files(tmp_path):
    good = save(chain(4), tmp_path / "good.onnx").read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    save(_cycle(), tmp_path / "cycle.onnx")
    save(_dangling(), tmp_path / "dangling.onnx")
    save(_empty(), tmp_path / "empty.onnx")


@pytest.mark.parametrize(("name", "message"), [
    ("missing.onnx", "no such file"),
    ("truncated.onnx", "not a valid ONNX file"),
    ("text.onnx", "ONNX"),
    ("cycle.onnx", "cycle"),
    ("dangling.onnx", "dangling"),
    ("empty.onnx", "no ONNX graph nodes"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, name, message):
    _write_bad_files(tmp_path)
    proc = subprocess.run([sys.executable, "-c", "from toolkit.cli import main; main()",
                           "inspect", str(tmp_path / name)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_inspect_json(tmp_path):
    path = save(chain(3), tmp_path / "c.onnx")
    result = CliRunner().invoke(cli, ["inspect", str(path), "--json", "--name", "mine"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["model"] == "mine"
    assert data["totals"]["layers"] == 6
    assert data["totals"]["macs"] == 3 * 8 * 8
    assert data["unsupported_ops"] == {}


@pytest.mark.parametrize("opset", [11, 13, 17, 21])
def test_split_and_reduce_read_on_every_opset(opset):
    """Split's sizes and ReduceMean's axes moved from attributes to inputs in opset 13/18."""
    split_sizes = helper.make_tensor("sizes", TensorProto.INT64, [2], [3, 5])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    split = (helper.make_node("Split", ["x"], ["a", "b"], name="split", axis=1, split=[3, 5])
             if opset < 13 else
             helper.make_node("Split", ["x", "sizes"], ["a", "b"], name="split", axis=1))
    reduce = (helper.make_node("ReduceMean", ["b"], ["m"], name="mean", axes=[1])
              if opset < 18 else helper.make_node("ReduceMean", ["b", "axes"], ["m"], name="mean"))
    nodes = [split, reduce, helper.make_node("Relu", ["a"], ["r"], name="relu")]
    inits = [split_sizes, axes] if opset >= 13 else []
    m = model(nodes, [vi("x", [1, 8])], [vi("r", [1, 3]), vi("m", [1, 1])], inits, opset=opset)
    graph = read_model(m, "m")
    assert list(graph.layers) == ["split", "mean", "relu"]
    assert graph.opset == opset
    assert graph.tensors["a"].bytes == 12 and graph.tensors["b"].bytes == 20
    assert graph.layers["mean"].flops == 5


def test_unknown_output_shapes_are_reported_with_a_conservative_size():
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example", name="mystery")
    after = helper.make_node("Relu", ["y"], ["z"], name="relu")
    graph = helper.make_graph([node, after], "g", [vi("x", [1, 32])], [vi("z", None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("com.example", 1)])
    result = read_model(m, "m")
    assert "y" in result.unknown_shapes
    assert result.tensors["y"].bytes == 32 * 4  # as large as its largest input


def test_an_operator_fed_shapes_it_cannot_take_is_a_model_error(tmp_path):
    m = single_op("LSTM", {"x": [1, 4, 8]}, [1, 1, 4, 8], [weight("w", 4), weight("r", 4)],
                  hidden_size=8)
    with pytest.raises(ModelError, match="LSTM cannot take inputs of shapes"):
        read_onnx(save(m, tmp_path / "lstm.onnx"))


def test_a_computation_on_trainable_weights_is_a_layer_not_a_constant():
    """Weight normalisation (w = g * v / ||v||) runs at every step and trains v and g: the
    norm, division and scaling are layers and v's parameters are all counted (folding them
    away left the convolution with only g's)."""
    v, g = weight("v", 16, 8, 3, 3), weight("g", 16, 1, 1, 1, seed=1)
    nodes = [
        helper.make_node("ReduceL2", ["v"], ["norm"], name="norm", axes=[1, 2, 3], keepdims=1),
        helper.make_node("Div", ["v", "norm"], ["unit"], name="unit"),
        helper.make_node("Mul", ["g", "unit"], ["w"], name="scale"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    m = model(nodes, [vi("x", [1, 8, 10, 10])], [vi("y", [1, 16, 10, 10])], [v, g])
    graph = read_model(m, "weightnorm")
    assert [layer.name for layer in graph] == ["norm", "unit", "scale", "conv"]
    assert graph.layers["norm"].params == 16 * 8 * 9
    assert graph.layers["scale"].params == 16  # g; v is owned by the norm
    assert graph.layers["unit"].params == 0 and graph.layers["unit"].trainable  # reads v
    assert graph.total_params == 16 * 8 * 9 + 16  # each weight once
    assert graph.layers["conv"].params == 0 and graph.layers["conv"].macs == 16 * 8 * 9 * 100
    assert graph.layers["conv"].reads_input
    transposed = model([helper.make_node("Transpose", ["w2"], ["wt"], name="t", perm=[1, 0]),
                        helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm")],
                       [vi("x", [1, 4])], [vi("y", [1, 4])], [weight("w2", 4, 4)])
    views = read_model(transposed, "view")
    assert [layer.name for layer in views] == ["mm"] and views.layers["mm"].params == 16


def test_buffers_marked_by_the_dynamo_exporter_are_not_trainable():
    """torch.export marks each initializer PARAMETER, BUFFER or CONSTANT_TENSOR on its value
    info; a float buffer (an attention mask) added to activations is not a parameter."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "mask"], ["y"], name="add")]
    m = model(nodes, [vi("x", [1, 4])], [vi("y", [1, 4])],
              [weight("w", 4, 4), weight("mask", 1, 4, seed=2)])
    graph = read_model(m, "plain")
    assert graph.layers["add"].params == 4  # without the exporter's word: a float initializer
    for name, kind in (("w", "PARAMETER"), ("mask", "BUFFER")):
        info = helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        entry = info.metadata_props.add()
        entry.key, entry.value = "pkg.torch.export.graph_signature.InputSpec.kind", kind
        m.graph.value_info.append(info)
    marked = read_model(m, "marked")
    assert marked.layers["add"].params == 0 and marked.layers["mm"].params == 16


def test_an_initializer_marked_frozen_is_not_trainable():
    """`splitcut.requires_grad = false` on an initializer (as `export_pytorch` marks a
    module's frozen parameters, or a user by hand): no gradient, no parameters counted."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "table"], ["y"], name="add")]
    m = model(nodes, [vi("x", [1, 4])], [vi("y", [1, 4])],
              [weight("w", 4, 4), weight("table", 1, 4, seed=2)])
    assert read_model(m, "plain").total_params == 20
    entry = m.graph.initializer[1].metadata_props.add()
    entry.key, entry.value = "splitcut.requires_grad", "false"
    marked = read_model(m, "marked")
    assert marked.total_params == 16 and marked.layers["add"].params == 0


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_modules_frozen_parameters_are_not_counted_after_either_export(tmp_path, exporter):
    """A frozen position table (`requires_grad=False`, as Whisper's and Pegasus's sinusoidal
    ones) is a parameter to torch and an initializer to both exporters; `export_pytorch` marks
    it, so the file's trainable parameters are the module's (without the mark: +64)."""
    torch = pytest.importorskip("torch")
    from toolkit import zoo

    class Frozen(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(4, 16), requires_grad=False)
            self.fc = torch.nn.Linear(16, 8)

        def forward(self, x: object) -> object:
            return self.fc(x + self.table)

    module = Frozen().eval()
    path = zoo.export_pytorch(module, (torch.randn(1, 4, 16),), tmp_path / "f.onnx", exporter)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert read_onnx(path, "f").total_params == trainable == 136


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_modules_buffers_neither_train_nor_hide_raw_data_after_either_export(tmp_path,
                                                                               exporter):
    """A batch norm frozen as buffers (DETR's backbone scales by four of them, as torchvision's
    `FrozenBatchNorm2d`) after a frozen convolution: TorchScript writes buffers as initializers
    like any weight, so `export_pytorch` marks them; without the mark the norm's Mul and Add
    counted 16 trainable parameters and hid the pixels, and the optimum could send the
    frozen stem's output (raw data in disguise) to the server."""
    torch = pytest.importorskip("torch")
    from toolkit import zoo

    class FrozenNorm(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            for name, value in (("weight", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0)):
                self.register_buffer(name, torch.full((4,), value) + torch.rand(4))

        def forward(self, x: object) -> object:
            scale = self.weight * (self.var + 1e-5).rsqrt()
            shift = self.bias - self.mean * scale
            return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    class Backboned(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False).requires_grad_(False)
            self.norm = FrozenNorm()
            self.head = torch.nn.Linear(4 * 8 * 8, 10)

        def forward(self, x: object) -> object:
            return self.head(torch.relu(self.norm(self.stem(x))).flatten(1))

    module = Backboned().eval()
    path = zoo.export_pytorch(module, (torch.randn(1, 3, 8, 8),), tmp_path / "b.onnx", exporter)
    graph = read_onnx(path, "b")
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert graph.total_params == trainable == 2570
    head = next(layer for layer in graph if layer.trainable)
    assert head.op in ("Gemm", "MatMul") and head.hides_raw_data()
    assert set(graph.raw_data_readers()) == set(graph.layers)  # every layer up to the head


def test_tensors_equal_at_random_initialisation_stay_apart_in_an_export(tmp_path):
    """Two batch norms of one width start equal (weights and running variances ones, biases
    and means zeros): TorchScript in eval mode stores equal tensors once, so a running
    variance's initializer stood for the other norm's weight too, and marking buffers froze
    it. Exports merge only tensors that share storage: the counts are torch's."""
    torch = pytest.importorskip("torch")
    from toolkit import zoo

    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 2)).eval()
    path = zoo.export_pytorch(module, (torch.randn(1, 3, 8, 8),), tmp_path / "n.onnx")
    assert not any(n.op_type == "Identity" for n in onnx.load(str(path)).graph.node)
    graph = read_onnx(path, "n")
    assert graph.total_params == sum(p.numel() for p in module.parameters()) == 406
    norms = [layer for layer in graph if layer.op == "BatchNormalization"]
    assert [layer.params for layer in norms] == [8, 8] and all(x.trainable for x in norms)


@pytest.mark.parametrize(("sources", "trainable"), [
    ("['h', 'val_3', 'val_4']", False),  # the exporter's constants and an activation's shape
    ("['0.attn.weight']", True),  # a parameter folded (transposed): still trained
    ("['val_3', 'logit_scale']", True),  # a source it cannot tell from a parameter
    ("[[[[", True), ("{'a': 1}", True), ("[]", True),  # not what the optimizer writes
])
def test_initializers_the_dynamo_optimizer_folded_from_constants_are_not_trainable(
        sources, trainable):
    """torch.onnx's optimizer folds an attention scale or a causal mask into an initializer
    and records what it folded it from (`pkg.onnxscript.optimizer.folded_from`)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "folded"], ["y"], name="add")]
    m = model(nodes, [vi("x", [1, 4])], [vi("y", [1, 4])],
              [weight("w", 4, 4), weight("folded", 1, 4, seed=2)])
    info = helper.make_tensor_value_info("folded", TensorProto.FLOAT, None)
    entry = info.metadata_props.add()
    entry.key, entry.value = "pkg.onnxscript.optimizer.folded_from", sources
    m.graph.value_info.append(info)
    graph = read_model(m, "folded")
    assert graph.layers["add"].params == (4 if trainable else 0)
    assert graph.layers["mm"].params == 16


def test_a_tied_weight_is_counted_once_and_both_readers_train_it():
    """An embedding table read by a Gather and, transposed, by the output MatMul (GPT-2's tied
    head): one parameter tensor, owned by its first reader; an Identity alias (how TorchScript
    de-duplicates equal-valued parameters) is a parameter of its own."""
    table = weight("table", 10, 4)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("Transpose", ["table"], ["tt"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["e", "tt"], ["logits"], name="head"),
             helper.make_node("Identity", ["table"], ["alias"], name="alias"),
             helper.make_node("Transpose", ["alias"], ["alias_t"], name="t2", perm=[1, 0]),
             helper.make_node("MatMul", ["e", "alias_t"], ["more"], name="other")]
    m = model(nodes, [vi("ids", [1, 3], TensorProto.INT64)],
              [vi("logits", [1, 3, 10]), vi("more", [1, 3, 10])], [table])
    graph = read_model(m, "tied")
    assert graph.layers["embed"].params == 40 and graph.layers["head"].params == 0
    assert graph.layers["head"].trainable and graph.layers["head"].param_bytes == 160
    assert graph.layers["other"].params == 40  # the Identity alias: another parameter
    assert graph.total_params == 80


def test_parameters_a_default_dynamo_export_merged_by_value_are_each_their_own(tmp_path):
    """torch.onnx.export's default (dynamo, optimised) stores initializers of equal value once:
    at random initialisation every zero bias and unit norm weight of a model is one tensor,
    read by every layer that had one (Hugging Face's BERT: 15 biases read one initializer),
    which read as one parameter tied across the model. Each node's FX node names the
    parameters it reads and the initializer the one it was exported for, so a node that names
    others reads a parameter of its own: the parameters are PyTorch's. A weight the module
    ties itself (the head reading the embedding, transposed by the optimiser into an
    initializer of its own) is one parameter still, and the code's literals, stored as
    initializers too, are none."""
    torch = pytest.importorskip("torch")

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(50, 16)
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(3))
            self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(16) for _ in range(3))
            self.head = torch.nn.Linear(16, 50, bias=False)
            self.head.weight = self.embed.weight
            for block in self.blocks:
                torch.nn.init.zeros_(block.bias)

        def forward(self, ids):
            h = self.embed(ids)
            for block, norm in zip(self.blocks, self.norms, strict=True):
                h = norm(h + block(h)) * 0.5  # (a literal the exporter stores as `val_N`)
            return self.head(h)

    module = Tied().eval()
    path = tmp_path / "tied.onnx"
    torch.onnx.export(module, (torch.ones(1, 8, dtype=torch.long),), str(path), verbose=False)
    initializers = [t.name for t in onnx.load(str(path)).graph.initializer]
    assert not any("blocks.1.bias" in n or "norms.2.weight" in n for n in initializers)
    graph = read_onnx(path)
    assert graph.total_params == sum(p.numel() for p in module.parameters()) == 50 * 16 + 3 * (
        16 * 16 + 16 + 2 * 16)
    heads = [layer for layer in graph if layer.tied]
    assert [(layer.op, layer.tied[0][1]) for layer in heads] == [("MatMul", 50 * 16)]
    # a batch norm the optimiser fuses into its convolution leaves the fused weights with
    # their names and no metadata: still the convolution's parameters
    fused = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
    torch.onnx.export(fused, (torch.randn(1, 3, 8, 8),), str(path), verbose=False)
    assert [layer.op for layer in read_onnx(path)] == ["Conv"]
    assert read_onnx(path).total_params == 8 * 3 * 3 * 3 + 8


def test_a_weight_read_through_expand_counts_its_own_elements_not_the_views():
    """MViT's positional encoding adds a table expanded over the frames (TorchScript writes
    repeat_interleave as Unsqueeze, Expand, Reshape): the view repeats the 8 x 4 parameter 6
    times, and the parameter, its gradient and its optimizer state stay 32 numbers."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [6, 8, 4])
    flat = helper.make_tensor("flat", TensorProto.INT64, [2], [48, 4])
    nodes = [helper.make_node("Expand", ["pos", "shape"], ["spread"], name="expand"),
             helper.make_node("Reshape", ["spread", "flat"], ["table"], name="reshape"),
             helper.make_node("Add", ["x", "table"], ["y"], name="add")]
    m = model(nodes, [vi("x", [1, 48, 4])], [vi("y", [1, 48, 4])],
              [weight("pos", 8, 4), shape, flat])
    add = read_model(m, "expanded").layers["add"]
    assert add.trainable and add.params == add.weight_elements == 32
    assert add.param_bytes == 32 * 4


def _where_shaped(deep: int = 1) -> onnx.ModelProto:
    """x + Expand(mean(x), shape): the target shape goes through Where, which ONNX shape
    inference does not propagate, `deep` times in a row (each stage measures the last one's
    output)."""
    minus = helper.make_tensor("minus", TensorProto.INT64, [3], [-1, -1, -1])
    nodes, x = [], "x"
    for k in range(deep):
        nodes += [
            helper.make_node("Shape", [x], [f"s{k}"], name=f"shape{k}"),
            helper.make_node("Equal", [f"s{k}", "minus"], [f"c{k}"], name=f"equal{k}"),
            helper.make_node("Where", [f"c{k}", "minus", f"s{k}"], [f"t{k}"], name=f"where{k}"),
            helper.make_node("ReduceMean", [x], [f"m{k}"], name=f"mean{k}", axes=[0, 1, 2]),
            helper.make_node("Expand", [f"m{k}", f"t{k}"], [f"e{k}"], name=f"expand{k}"),
            helper.make_node("Add", [x, f"e{k}"], [f"y{k}"], name=f"add{k}"),
        ]
        x = f"y{k}"
    return model(nodes, [vi("x", [1, 6, 4])], [vi(x, [1, 6, 4])], [minus])


def test_shape_arithmetic_is_folded_without_running_the_model(monkeypatch):
    import toolkit.onnx.reader as reader
    inferred = onnx.shape_inference.infer_shapes(_where_shaped(), data_prop=True).graph
    e0 = next(v for v in inferred.value_info if v.name == "e0").type.tensor_type.shape.dim
    assert not all(d.HasField("dim_value") for d in e0)  # ONNX alone leaves it symbolic

    def no_probe(*_: object) -> dict[str, tuple[int, ...]]:
        raise AssertionError("the model was run")

    monkeypatch.setattr(reader, "runtime_shapes", no_probe)
    graph = reader.read_model(_where_shaped(), "m")
    assert graph.tensors["e0"].shape == (1, 6, 4) and graph.tensors["y0"].bytes == 6 * 4 * 4
    assert not graph.unknown_shapes


def _evaluated(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(operator, elements out) of each node the folding runs with ONNX's reference."""
    import onnx.reference.ops as kernels

    ran: list[tuple[str, int]] = []
    load = kernels.load_op

    def spying(domain: str, op: str, version: int) -> type:
        kernel = load(domain, op, version)

        class Spy(kernel):  # type: ignore[misc,valid-type]
            def run(self, *args: object) -> object:
                out = super().run(*args)
                ran.append((op, sum(getattr(v, "size", 1) for v in out)))
                return out
        return Spy

    monkeypatch.setattr(kernels, "load_op", spying)
    return ran


def test_shape_arithmetic_any_number_of_stages_deep_is_folded_in_one_pass(monkeypatch):
    """Each stage measures the last one's output, whose size only the folding knows (Swin's
    windows: 16 blocks deep); ONNX's reference runs each arithmetic node, never a big one
    (what needs one is left to the run)."""
    import toolkit.onnx.reader as reader

    asked: list[str] = []
    probe = reader.runtime_shapes
    monkeypatch.setattr(reader, "runtime_shapes",
                        lambda m, names, inputs: asked.extend(names) or probe(m, names, inputs))
    ran = _evaluated(monkeypatch)
    m = _where_shaped(deep=20)
    big = helper.make_tensor("big", TensorProto.INT64, [2], [400, 400])  # 160,000 elements
    m.graph.initializer.append(big)
    m.graph.node.extend([  # a large value the arithmetic reads: not evaluated
        helper.make_node("ConstantOfShape", ["big"], ["filled"], name="fill",
                         value=helper.make_tensor("v", TensorProto.INT64, [1], [0])),
        helper.make_node("ReduceSum", ["filled"], ["total"], name="total", keepdims=0),
        helper.make_node("Sub", ["total", "one"], ["minus_one"], name="minus_one"),  # -1
        helper.make_node("Unsqueeze", ["minus_one", "zero"], ["flat_shape"], name="as_shape"),
        helper.make_node("Reshape", ["y19", "flat_shape"], ["flat"], name="flat"),
    ])
    m.graph.initializer.extend([helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
                                helper.make_tensor("one", TensorProto.INT64, [], [1])])
    kept = m.SerializeToString()
    graph = reader.read_model(m, "m")
    assert all(graph.tensors[f"e{k}"].shape == (1, 6, 4) for k in range(20))
    assert {op for op, _ in ran} >= {"Equal", "Where"} and max(n for _, n in ran) <= 3
    assert [op for op, _ in ran].count("Where") == 1  # the 20 stages' arithmetic is one
    assert "ConstantOfShape" not in {op for op, _ in ran}
    assert asked == ["flat"] and graph.tensors["flat"].shape == (1 * 6 * 4,)  # by the run
    assert m.SerializeToString() == kept  # the caller's model is left as it was


def _size_decided(threshold: int) -> onnx.ModelProto:
    """Reshape(x, If(x.shape[1] > threshold, [1, 24], [1, 6, 4])): a branch chosen by
    comparing sizes, as TorchScript writes scripted code that does (timm's Hiera-Det tiles
    its position embedding so). The branches' targets differ in length, so ONNX's inference
    of the If leaves the Reshape's rank open."""
    ints = TensorProto.INT64

    def branch(name: str, target: str, length: int) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Identity", [target], [f"{name}_t"])],
                                 name, [], [vi(f"{name}_t", [length], ints)])

    consts = [helper.make_tensor("one", ints, [], [1]),
              helper.make_tensor("threshold", ints, [], [threshold]),
              helper.make_tensor("flat", ints, [2], [1, 24]),
              helper.make_tensor("same", ints, [3], [1, 6, 4])]
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "one"], ["d"], name="dim"),
             helper.make_node("Greater", ["d", "threshold"], ["wide"], name="wide"),
             helper.make_node("If", ["wide"], ["target"], name="choose",
                              then_branch=branch("then", "flat", 2),
                              else_branch=branch("else", "same", 3)),
             helper.make_node("Reshape", ["x", "target"], ["r"], name="reshape"),
             helper.make_node("Relu", ["r"], ["y"], name="relu")]
    return model(nodes, [vi("x", [1, 6, 4])], [vi("y", None)], consts, check=False)


@pytest.mark.parametrize(("threshold", "shape"), [(5, (1, 24)), (6, (1, 6, 4))])
def test_an_if_that_sizes_decide_is_folded_through_the_branch_taken(monkeypatch, threshold,
                                                                    shape):
    """The If's condition is shape arithmetic, so the branch it takes is known: its sizes come
    out of the folding, not out of a run that loads every weight (as they did)."""
    import toolkit.onnx.reader as reader

    m = _size_decided(threshold)
    inferred = onnx.shape_inference.infer_shapes(m, data_prop=True).graph
    r = next(v for v in inferred.value_info if v.name == "r").type.tensor_type
    assert not r.HasField("shape") or not all(d.HasField("dim_value") for d in r.shape.dim)
    monkeypatch.setattr(reader, "runtime_shapes", lambda *_, **__: pytest.fail("the model ran"))
    graph = reader.read_model(m, "m")
    assert graph.tensors["y"].shape == shape and not graph.unknown_shapes


@pytest.mark.parametrize(("threshold", "flops", "noted"), [
    (5, 2 * 6 * 4 * 4, False), (6, 0, False), (None, 2 * 6 * 4 * 4, True)])
def test_an_if_is_costed_as_the_branch_its_sizes_take(threshold, flops, noted):
    """x.shape[1] > threshold ? x @ w : x. Where sizes decide the condition, the If costs the
    branch taken and no note says the data decides; where the data does (a comparison of
    values), it costs the costlier branch and says so."""
    ints = TensorProto.INT64
    then = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["xw"])], "then", [],
                             [vi("xw", [1, 6, 4])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["same"])], "else", [],
                              [vi("same", [1, 6, 4])])
    if threshold is None:  # the data: the first element of x against zero
        test = [helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
                helper.make_node("Greater", ["top", "zero"], ["wide"])]
    else:
        test = [helper.make_node("Shape", ["x"], ["s"]),
                helper.make_node("Gather", ["s", "one"], ["d"]),
                helper.make_node("Greater", ["d", "threshold"], ["wide"])]
    nodes = [*test,
             helper.make_node("If", ["wide"], ["chosen"], name="choose", then_branch=then,
                              else_branch=other),
             helper.make_node("Relu", ["chosen"], ["y"], name="relu")]
    consts = [weight("w", 4, 4), helper.make_tensor("one", ints, [], [1]),
              helper.make_tensor("threshold", ints, [], [threshold or 0]),
              helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    graph = read_model(model(nodes, [vi("x", [1, 6, 4])], [vi("y", [1, 6, 4])], consts), "m")
    assert graph.layers["choose"].flops == flops
    assert any("If node" in note for note in graph.notes) == noted


def test_an_optional_input_left_out_keeps_the_others_in_their_places(monkeypatch):
    """Slice(shape, starts, ends, '', steps): the steps are steps, not axes (ONNX's own
    inference leaves the size open behind the Mod)."""
    import toolkit.onnx.reader as reader

    monkeypatch.setattr(reader, "runtime_shapes", lambda *_, **__: pytest.fail("the model was run"))
    ints = TensorProto.INT64
    consts = [helper.make_tensor(n, ints, [len(v)], v) for n, v in (
        ("big", [100] * 4), ("starts", [0]), ("ends", [4]), ("steps", [2]))]
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Mod", ["s", "big"], ["same"]),
             helper.make_node("Slice", ["same", "starts", "ends", "", "steps"], ["every_other"]),
             helper.make_node("Reshape", ["x", "every_other"], ["y"])]
    m = model(nodes, [vi("x", [2, 1, 4, 1])], [vi("y", None)], consts, check=False)
    graph = read_model(m, "m", dims={"batch": 1})
    assert graph.tensors["y"].shape == (2, 4)  # axes 0 and 2 of [2, 1, 4, 1]


def test_a_mask_sized_by_shape_arithmetic_is_sized_but_never_evaluated(monkeypatch):
    """Swin's attention masks: a ConstantOfShape sized by arithmetic ONNX leaves open (Mod),
    then Equal and Where, added to an activation. The Add's size needs the mask's size, not
    its value: only the size arithmetic runs."""
    ran = _evaluated(monkeypatch)
    big = helper.make_tensor("big", TensorProto.INT64, [], [100])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Mod", ["s", "big"], ["size"], name="mod"),
             helper.make_node("ConstantOfShape", ["size"], ["zeros"], name="fill"),
             helper.make_node("Equal", ["zeros", "zero"], ["open"], name="equal"),
             helper.make_node("Where", ["open", "zero", "zeros"], ["mask"], name="where"),
             helper.make_node("Add", ["x", "mask"], ["y"], name="add")]
    m = model(nodes, [vi("x", [1, 6, 4])], [vi("y", [1, 6, 4])], [big, zero])
    inferred = onnx.shape_inference.infer_shapes(m, data_prop=True).graph
    mask = next(v for v in inferred.value_info if v.name == "mask").type.tensor_type.shape
    assert not all(d.HasField("dim_value") for d in mask.dim)  # ONNX alone leaves it open
    graph = read_model(m, "m")
    assert graph.tensors["y"].shape == (1, 6, 4) and not graph.unknown_shapes
    assert ("Mod", 3) in ran and not {"Equal", "Where"} & {op for op, _ in ran}


def test_sizes_that_depend_on_data_are_learnt_from_one_run(monkeypatch):
    """NonZero's count depends on the values: no static pass knows it; one run does."""
    import toolkit.onnx.reader as reader
    runs: list[int] = []
    probe = reader.runtime_shapes
    monkeypatch.setattr(reader, "runtime_shapes",
                        lambda m, names, inputs: runs.append(1) or probe(m, names, inputs))
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "one"], ["pos"], name="add"),  # never zero
             helper.make_node("NonZero", ["pos"], ["where"], name="nonzero"),
             helper.make_node("Cast", ["where"], ["y"], name="cast", to=TensorProto.FLOAT)]
    m = model(nodes, [vi("x", [1, 6, 4])], [vi("y", [3, "count"])], [one])
    graph = reader.read_model(m, "m")
    assert runs == [1] and graph.tensors["y"].shape == (3, 24) and not graph.unknown_shapes


def test_a_cycle_through_shape_arithmetic_is_an_error_not_a_hang():
    """Two small integer values computed from each other: folding gives up on them, and the
    reader reports the cycle."""
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    nodes = [helper.make_node("Add", ["b", "one"], ["a"], name="a"),
             helper.make_node("Add", ["a", "one"], ["b"], name="b"),
             helper.make_node("Reshape", ["x", "a"], ["y"], name="reshape")]
    m = model(nodes, [vi("x", [1, 6, 4])], [vi("y", [24])], [one], check=False)
    m.graph.value_info.extend([vi("a", [1], TensorProto.INT64), vi("b", [1], TensorProto.INT64)])
    with pytest.raises(ModelError, match="cycle"):
        read_model(m, "m")


def test_shape_arithmetic_through_a_sequence_or_text_is_left_to_the_run():
    """Values the arithmetic does not compute with (a sequence, a string constant) are not
    held as values: the Reshape target built through a sequence is learnt by the run, right."""
    zero = helper.make_tensor("zero", TensorProto.INT64, [], [0])
    text = helper.make_tensor("text", TensorProto.STRING, [1], [b"not a size"])
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("SequenceConstruct", ["s"], ["seq"], name="seq"),
             helper.make_node("SequenceAt", ["seq", "zero"], ["t"], name="at"),
             helper.make_node("Reshape", ["x", "t"], ["y"], name="reshape"),
             helper.make_node("Identity", ["text"], ["words"], name="words")]
    m = model(nodes, [vi("x", [1, 6, 4])], [vi("y", [1, 6, 4]),
              vi("words", [1], TensorProto.STRING)], [zero, text])
    graph = read_model(m, "m")
    assert graph.tensors["y"].shape == (1, 6, 4) and not graph.unknown_shapes


def test_a_split_into_a_sequence_is_as_large_as_what_it_splits():
    """The dynamo exporter writes torch.split as SplitToSequence: a sequence has no shape of
    its own, but its pieces tile the input, float, so it carries a gradient back."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("SplitToSequence", ["r", "sizes"], ["seq"], name="split", axis=1),
             helper.make_node("SequenceAt", ["seq", "zero"], ["first"], name="at"),
             helper.make_node("Relu", ["first"], ["y"], name="after")]
    m = model(nodes, [vi("x", [1, 6, 4])], [vi("y", [1, 2, 4])],
              [helper.make_tensor("sizes", TensorProto.INT64, [2], [2, 4]),
               helper.make_tensor("zero", TensorProto.INT64, [], [0])])
    graph = read_model(m, "m")
    seq = graph.tensors["seq"]
    assert seq.bytes == 6 * 4 * 4 and seq.floating and not graph.unknown_shapes
    assert graph.tensors["y"].shape == (1, 2, 4)


def test_a_models_own_functions_are_read_as_their_bodies(tmp_path):
    """Each call was one unknown layer charged a guess (`local.Block`, 64 FLOPs); it is the
    operators inside, costed as themselves, and the halves of a cut between them run."""
    from toolkit.onnx.split import split_tiers

    graph = read_model(with_local_function(), "m")
    assert [layer.op for layer in graph] == ["MatMul", "Relu", "MatMul", "Relu"]
    assert graph.total_macs == 2 * 16 * 16 and not graph.unsupported_ops
    path = save(with_local_function(), tmp_path / "m.onnx")
    names = [layer.name for layer in read_onnx(path)]
    split = split_tiers(path, {name: int(k >= 1) for k, name in enumerate(names)},
                        ["device", "server"], tmp_path / "out")
    assert split.not_verified is None and split.max_abs_error == 0.0


def test_a_functions_nodes_are_named_after_their_call_and_module(tmp_path):
    """ONNX's inliner names a call's nodes after the function's alone (`Conv_0__1`): a
    TorchScript export with `export_modules_as_functions` lost every module path and class.
    Each node is named after its call (nested calls too) and sits in the call's module, of
    the function's class, so block types are named after it; costs are the plain export's."""
    torch = pytest.importorskip("torch")
    from toolkit.blocks import find_blocks

    nn = torch.nn

    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return torch.sigmoid(self.conv(x)) * x

    class Unit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.gate = nn.Conv2d(8, 8, 3, padding=1), Gate()

        def forward(self, x):
            return self.gate(torch.relu(self.conv(x))) + x

    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Sequential(*(Unit() for _ in range(3)))).eval()
    x = torch.randn(1, 3, 16, 16)
    functions, plain = tmp_path / "functions.onnx", tmp_path / "plain.onnx"
    torch.onnx.export(net, (x,), str(functions), dynamo=False,
                      export_modules_as_functions={Unit, Gate})
    torch.onnx.export(net, (x,), str(plain), dynamo=False)
    assert len(onnx.load(str(functions)).functions) == 2
    graph = read_onnx(functions)
    inner = [layer for layer in graph if layer.name.startswith("/1/1.1/Unit.")]
    assert [re.sub(r"_\d+", "", layer.name) for layer in inner] == [
        "/1/1.1/Unit.Conv", "/1/1.1/Unit.Relu", "/1/1.1/Unit.Gate.Conv",
        "/1/1.1/Unit.Gate.Sigmoid", "/1/1.1/Unit.Gate.Mul", "/1/1.1/Unit.Add"]
    assert {layer.module for layer in inner} == {"1.1"}
    assert len({layer.name for layer in graph}) == len(graph) == 19
    assert [layer.flops for layer in graph] == [layer.flops for layer in read_onnx(plain)]
    assert graph.total_params == sum(p.numel() for p in net.parameters())
    names = [t.name for t in find_blocks(graph).types if t.count == 3]
    assert names and names[0].startswith("Unit"), names


def test_profiling_a_model_onnxruntime_refuses_is_one_line(tmp_path):
    """tf2onnx's `Erfc` (no ONNX runtime knows it): `profile` said so in one line, after a red
    line of onnxruntime's own ('Could not write a profile because no model was loaded')."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Erfc", ["r"], ["y"], name="erfc")]
    graph = helper.make_graph(nodes, "g", [vi("x", [1, 8])], [vi("y", [1, 8])])
    path = tmp_path / "erfc.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), str(path))
    proc = subprocess.run([sys.executable, "-c", "from toolkit.cli import main; main()",
                           "profile", str(path), "-o", str(tmp_path / "p.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: onnxruntime cannot run erfc.onnx")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _quantized_matmul(weights: list[TensorProto], first: onnx.NodeProto) -> onnx.ModelProto:
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.05])
    zero = helper.make_tensor("zero", TensorProto.INT8, [], [0])
    nodes = [first, helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["wd"],
                                     name="dequantize"),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    return model(nodes, [vi("x", [1, 4])], [vi("y", [1, 4])], [*weights, scale, zero])


def test_a_dequantized_integer_weight_is_a_constant_and_its_scale_trains_nothing():
    w8 = helper.make_tensor("w8", TensorProto.INT8, [4, 4], list(range(16)))
    m = _quantized_matmul([w8], helper.make_node("Identity", ["w8"], ["q"], name="alias"))
    graph = read_model(m, "qdq")
    assert list(graph.layers) == ["mm"]  # the dequantization is folded, not a layer
    assert graph.total_params == 0
    assert any(n.startswith("no trainable parameters") for n in graph.notes)
    assert graph.raw_data_readers() == {"mm": "reads raw input"}


def test_a_fake_quantized_float_weight_trains_in_the_node_that_quantizes_it():
    m = _quantized_matmul([weight("w", 4, 4)], helper.make_node(
        "QuantizeLinear", ["w", "scale", "zero"], ["q"], name="quantize"))
    graph = read_model(m, "qat")
    assert graph.layers["quantize"].params == 16 and graph.total_params == 16
    assert not any(n.startswith("no trainable parameters") for n in graph.notes)


def test_a_weight_read_twice_by_one_node_is_counted_once():
    nodes = [helper.make_node("Add", ["w", "w"], ["w2"], name="double"),
             helper.make_node("MatMul", ["x", "w2"], ["y"], name="mm")]
    graph = read_model(model(nodes, [vi("x", [1, 4])], [vi("y", [1, 4])], [weight("w", 4, 4)]),
                       "m")
    assert graph.layers["double"].params == 16 and graph.total_params == 16


def _sparse_matmul(dims: list[int], values: list[float], indices: np.ndarray) -> onnx.ModelProto:
    """y = x @ w with `w` stored as a sparse initializer (valid ONNX: onnxruntime runs it)."""
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array(values, np.float32), "w"),
        numpy_helper.from_array(indices.astype(np.int64), "w_indices"), dims)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [vi("x", [1, 4])], [vi("y", [1, 4])], sparse_initializer=[sparse])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("indices", [np.array([1, 14]), np.array([[0, 1], [3, 2]])],
                         ids=["linear", "coordinates"])
def test_a_sparse_initializer_is_a_weight_like_any_other(tmp_path, indices):
    m = _sparse_matmul([4, 4], [2.0, 5.0], indices)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    expected = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    path = save(m, tmp_path / "sparse.onnx")
    graph = read_onnx(path)
    assert graph.layers["mm"].params == 16 and graph.layers["mm"].macs == 16
    dense = {t.name: numpy_helper.to_array(t) for t in load_model(path).graph.initializer}["w"]
    np.testing.assert_array_equal(x @ dense, expected)
    assert dense[0, 1] == 2.0 and dense[3, 2] == 5.0 and np.count_nonzero(dense) == 2
    assert read_model(m, "m").total_params == 16
    assert len(m.graph.sparse_initializer) == 1 and not m.graph.initializer  # the caller's


@pytest.mark.parametrize(("dims", "indices", "message"), [
    ([1 << 20, 1 << 20], np.array([7, 9]), "would take 4,398,046,511,104 bytes dense"),
    ([4, 4], np.array([1, 16]), "indices do not fit"),
])
def test_a_sparse_initializer_that_cannot_be_expanded_is_one_line(
        tmp_path, capsys, monkeypatch, dims, indices, message):
    path = save(_sparse_matmul(dims, [2.0, 5.0], indices), tmp_path / "bad.onnx")
    code, out, err = run_main(["inspect", str(path)], capsys, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2 and not out
    assert len(lines) == 1 and message in lines[0] and "'w'" in lines[0]


def test_a_powers_exponent_is_not_a_weight():
    """LayerNorm as tf2onnx and paddle2onnx write it squares the deviations with Pow by a
    float constant 2. Trained, the exponent's gradient takes the log of a negative base: NaN,
    and every weight with it after one step (PaddleOCR's recogniser trained on NaN)."""
    import torch

    from toolkit.train.executor import OnnxModule, trainable_initializers

    eps = helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-5])
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], name="mean", axes=[-1]),
             helper.make_node("Sub", ["x", "mean"], ["dev"], name="centre"),
             helper.make_node("Pow", ["dev", "two"], ["sq"], name="square"),
             helper.make_node("ReduceMean", ["sq"], ["var"], name="variance", axes=[-1]),
             helper.make_node("Constant", [], ["eps"], name="eps", value=eps),
             helper.make_node("Add", ["var", "eps"], ["ve"], name="plus_eps"),
             helper.make_node("Sqrt", ["ve"], ["sd"], name="sd"),
             helper.make_node("Div", ["dev", "sd"], ["norm"], name="normalise"),
             helper.make_node("MatMul", ["norm", "w"], ["y"], name="mm")]
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    m = model(nodes, [vi("x", [2, 4])], [vi("y", [2, 3])], [two, weight("w", 4, 3)], opset=13)
    graph = read_model(m, "tf_layer_norm")
    assert not graph.layers["square"].trainable and graph.total_params == 12
    trainable = trainable_initializers(m.graph)
    assert trainable == {"w"}
    executor = OnnxModule(m, trainable)
    executor({"x": torch.randn(2, 4)})["y"].square().sum().backward()
    grads = [p.grad for p in executor.named_weights().values()]
    assert grads and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


def test_clip_bounds_and_comparison_thresholds_are_not_weights():
    """tf2onnx freezes Keras' ReLU6 bounds and a comparison's threshold into float
    initializers; no framework trains them, so neither layer trains (a trainable layer's
    backward is charged twice a parameter-free one's) and the executor agrees."""
    from toolkit.train.executor import trainable_initializers

    bounds = [helper.make_tensor(n, TensorProto.FLOAT, [], [v])
              for n, v in (("low", 0.0), ("high", 6.0), ("limit", 0.5))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Clip", ["h", "low", "high"], ["r6"], name="relu6"),
             helper.make_node("Greater", ["r6", "limit"], ["big"], name="threshold"),
             helper.make_node("Where", ["big", "r6", "h"], ["y"], name="pick")]
    m = model(nodes, [vi("x", [1, 4])], [vi("y", [1, 4])], [weight("w", 4, 4), *bounds])
    graph = read_model(m, "keras_relu6")
    assert graph.total_params == 16
    assert not graph.layers["relu6"].trainable and not graph.layers["threshold"].trainable
    assert trainable_initializers(m.graph) == {"w"}
