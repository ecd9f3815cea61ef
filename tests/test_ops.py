"""Each op handle on a tiny model built with onnx.helper, against the formula by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import model, single_op, vi, weight
from toolkit.onnx import read_model


def only_layer(m, name="t"):
    """The single layer of an op-level model; its concrete shapes are per call, not per
    sample (`batch=1`: no exported batch is divided out)."""
    graph = read_model(m, name, dims={"batch": 1})
    assert len(graph) == 1
    return next(iter(graph))


def test_conv_with_groups_dilation_and_bias():
    # 8 -> 16 channels, groups 2, 3x3 kernel dilated 2, stride 1, pad 2: output 16x10x10
    m = single_op("Conv", {"x": [1, 8, 10, 10]}, [1, 16, 10, 10],
                  [weight("w", 16, 4, 3, 3), weight("b", 16)],
                  group=2, dilations=[2, 2], pads=[2, 2, 2, 2])
    layer = only_layer(m)
    macs = 16 * 10 * 10 * 4 * 3 * 3
    assert layer.macs == macs
    assert layer.flops == 2 * macs + 16 * 10 * 10
    assert layer.params == 16 * 4 * 9 + 16
    assert layer.out_bytes == 16 * 10 * 10 * 4


def test_grouped_convolutions_are_read_as_data_and_costed_as_vector_ops():
    from toolkit.costs import op_class

    grouped = only_layer(single_op("Conv", {"x": [1, 8, 10, 10]}, [1, 8, 10, 10],
                                   [weight("w", 8, 1, 3, 3)], group=8, pads=[1, 1, 1, 1]))
    dense = only_layer(single_op("Conv", {"x": [1, 8, 10, 10]}, [1, 8, 10, 10],
                                 [weight("w", 8, 8, 3, 3)], pads=[1, 1, 1, 1]))
    assert (grouped.groups, dense.groups) == (8, 1)
    assert (op_class(grouped), op_class(dense)) == ("vector", "conv")


def test_conv_transpose():
    m = single_op("ConvTranspose", {"x": [1, 4, 5, 5]}, [1, 6, 10, 10],
                  [weight("w", 4, 6, 2, 2)], strides=[2, 2])
    layer = only_layer(m)
    assert layer.macs == 4 * 5 * 5 * 6 * 2 * 2


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm(trans_a):
    a_shape = [7, 3] if trans_a else [3, 7]
    m = single_op("Gemm", {"a": a_shape}, [3, 5], [weight("b", 7, 5), weight("c", 5)],
                  transA=trans_a)
    layer = only_layer(m)
    assert layer.macs == 3 * 5 * 7
    assert layer.params == 7 * 5 + 5


@pytest.mark.parametrize(("op", "inputs", "output", "attrs", "conflict"), [
    ("Reshape", [(2, 3, 4), (2,)], (6, 4), {}, None),
    ("Reshape", [(0, 4), (2,)], (0, 2), {}, None),  # an empty tensor stays empty
    ("Reshape", [(2, 3, 4), (2,)], (6, 3), {},
     "Reshape of (2, 3, 4) (24 elements) into (6, 3) (18)"),
    ("Reshape", [None, (2,)], (6, 3), {}, None),  # an open size is no evidence
    ("MatMul", [(5, 2, 8), (8,)], (5, 2), {}, None),  # a vector b: its only axis is inner
    ("MatMul", [(5, 2, 8), (7,)], (5, 2), {},
     "MatMul of (5, 2, 8) by (7,): the inner sizes differ"),
    ("MatMul", [(4, 8), (3, 8, 2)], (3, 4, 2), {}, None),  # broadcast over b's batch
    ("MatMul", [(4, 8), (3, 2, 8)], None, {},
     "MatMul of (4, 8) by (3, 2, 8): the inner sizes differ"),
    ("MatMul", [(4, 8), None], None, {}, None),
    ("Gemm", [(2, 256), (10, 256)], (2, 10), {"transB": 1}, None),  # torch.nn.Linear's
    ("Gemm", [(2, 128), (10, 256)], (2, 10), {"transB": 1},
     "Gemm of (2, 128) by (10, 256): the inner sizes differ"),  # a batch of 2 baked in a view
    ("Gemm", [(256, 2), (256, 10)], (2, 10), {"transA": 1}, None),
    ("Gemm", [(2, 256), (10, 256)], (2, 10), {}, "Gemm of (2, 256) by (10, 256): the inner "
                                                 "sizes differ"),
])
def test_size_conflicts_are_the_sizes_no_runtime_accepts(op, inputs, output, attrs, conflict):
    """`size_conflict`: what the reader refuses as sizes a file fixed and the input sizes
    changed."""
    from toolkit.ops import OpFacts, size_conflict

    assert size_conflict(OpFacts(op, inputs, [output], attrs)) == conflict


def test_batched_matmul_with_broadcast():
    m = single_op("MatMul", {"a": [1, 4, 6, 8], "b": [1, 1, 8, 3]}, [1, 4, 6, 3])
    assert only_layer(m).macs == 4 * 6 * 3 * 8


def test_einsum_contraction():
    m = single_op("Einsum", {"a": [1, 4, 6, 8], "b": [1, 4, 8, 3]}, [1, 4, 6, 3],
                  equation="bhij,bhjk->bhik")
    assert only_layer(m).macs == 4 * 6 * 8 * 3


def test_batchnorm_running_stats_are_not_trainable():
    ws = [weight("s", 8), weight("b", 8), weight("mean", 8), weight("var", 8)]
    m = single_op("BatchNormalization", {"x": [1, 8, 4, 4]}, [1, 8, 4, 4], ws)
    layer = only_layer(m)
    assert layer.params == 16
    assert layer.macs == 0
    assert layer.flops == 2 * 8 * 4 * 4


@pytest.mark.parametrize(("op", "attrs", "out", "flops"), [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2]}, [1, 4, 3, 3], 4 * 3 * 3 * 9),
    ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}, [1, 4, 4, 4], 4 * 4 * 4 * 4),
    ("GlobalAveragePool", {}, [1, 4, 1, 1], 4 * 8 * 8),
    ("Relu", {}, [1, 4, 8, 8], 256),
    ("Sigmoid", {}, [1, 4, 8, 8], 4 * 256),
    ("Softmax", {"axis": -1}, [1, 4, 8, 8], 5 * 256),
    ("ReduceMax", {"keepdims": 1}, [1, 1, 1, 1], 256),
    ("Flatten", {}, [1, 256], 0),
    ("Transpose", {"perm": [0, 2, 3, 1]}, [1, 8, 8, 4], 0),
])
def test_unary_handles(op, attrs, out, flops):
    m = single_op(op, {"x": [1, 4, 8, 8]}, out, **attrs)
    layer = only_layer(m)
    assert layer.flops == flops
    assert layer.macs == 0


def test_binary_elementwise_and_concat():
    m = single_op("Add", {"a": [1, 4, 8], "b": [1, 4, 8]}, [1, 4, 8])
    assert only_layer(m).flops == 32
    m = single_op("Concat", {"a": [1, 4, 8], "b": [1, 4, 8]}, [1, 8, 8], axis=1)
    layer = only_layer(m)
    assert layer.flops == 0
    assert layer.in_bytes == 2 * 32 * 4


def test_resize_linear():
    scales = helper.make_tensor("scales", 1, [4], [1, 1, 2, 2])
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")
    m = model([node], [vi("x", [1, 2, 4, 4])], [vi("y", [1, 2, 8, 8])], [scales])
    assert only_layer(m).flops == 4 * 2 * 8 * 8


def test_lstm_counts_gate_macs():
    seq, batch, inp, hidden = 5, 1, 6, 4
    ws = [weight("W", 1, 4 * hidden, inp), weight("R", 1, 4 * hidden, hidden)]
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=hidden)
    m = model([node], [vi("x", [seq, batch, inp])], [vi("y", [seq, 1, batch, hidden])], ws)
    assert only_layer(m).macs == seq * batch * 4 * hidden * (inp + hidden)


def test_unknown_op_is_estimated_and_reported_not_fatal():
    node = helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [vi("x", [1, 10])], [vi("y", [1, 10])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("com.example", 1)])
    graph = read_model(m, "custom")
    layer = next(iter(graph))
    assert not layer.supported
    assert layer.flops == 2 * (10 + 10)
    assert graph.unsupported_ops == {"com.example.FancyOp": 1}
    assert [n for n in graph.notes if "guess" in n] == [
        "1 node charged a guess, 2 FLOPs per element read or written, for want of a cost model "
        "for the operator or of its sizes: com.example.FancyOp x1"]


def test_an_operator_of_another_domain_is_not_costed_as_onnx_one_of_its_name():
    """A custom `Conv` (domain com.example) may compute anything: it is not ONNX's Conv."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], domain="com.example", name="conv")
    graph = helper.make_graph([node], "g", [vi("x", [1, 3, 8, 8])], [vi("y", [1, 4, 8, 8])],
                              [weight("w", 4, 3, 3, 3)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("com.example", 1)])
    layer = read_model(m, "custom").layers["conv"]
    assert layer.op == "com.example.Conv" and not layer.supported and layer.macs == 0


def _q(name: str, value: float | int, dtype: int) -> TensorProto:
    return helper.make_tensor(name, dtype, [], [value])


def test_quantized_ops_count_the_macs_of_their_float_equivalents():
    """QLinearConv's weight is input 3 (input 1 is a scale), and scales and zero points are
    not trainable parameters."""
    w8 = helper.make_tensor("w8", TensorProto.INT8, [16, 8, 3, 3], [1] * (16 * 8 * 9))
    scales = [_q("xs", 0.1, TensorProto.FLOAT), _q("xz", 0, TensorProto.UINT8),
              _q("ws", 0.1, TensorProto.FLOAT), _q("wz", 0, TensorProto.INT8),
              _q("ys", 0.1, TensorProto.FLOAT), _q("yz", 0, TensorProto.UINT8)]
    qconv = helper.make_node("QLinearConv", ["x", "xs", "xz", "w8", "ws", "wz", "ys", "yz"],
                             ["y"], name="q", pads=[1, 1, 1, 1])
    quant = only_layer(model([qconv], [vi("x", [1, 8, 10, 10], TensorProto.UINT8)],
                             [vi("y", [1, 16, 10, 10], TensorProto.UINT8)], [w8, *scales]))
    conv = only_layer(model([helper.make_node("Conv", ["x", "w"], ["y"], name="c",
                                              pads=[1, 1, 1, 1])],
                            [vi("x", [1, 8, 10, 10])], [vi("y", [1, 16, 10, 10])],
                            [weight("w", 16, 8, 3, 3)]))
    assert quant.macs == conv.macs == 16 * 8 * 9 * 100
    assert quant.params == 0
    integer = only_layer(model([helper.make_node("ConvInteger", ["x", "w8"], ["y"], name="ci",
                                                 pads=[1, 1, 1, 1])],
                               [vi("x", [1, 8, 10, 10], TensorProto.UINT8)],
                               [vi("y", [1, 16, 10, 10], TensorProto.INT32)], [w8]))
    assert integer.macs == conv.macs
    b8 = helper.make_tensor("b8", TensorProto.INT8, [32, 8], [1] * 256)
    qmm = helper.make_node("QLinearMatMul", ["a", "xs", "xz", "b8", "ws", "wz", "ys", "yz"],
                           ["y"], name="qmm")
    qmatmul = only_layer(model([qmm], [vi("a", [4, 32], TensorProto.UINT8)],
                               [vi("y", [4, 8], TensorProto.UINT8)], [b8, *scales]))
    mm = only_layer(model([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")],
                          [vi("a", [4, 32])], [vi("y", [4, 8])], [weight("b", 32, 8)]))
    assert qmatmul.macs == mm.macs == 4 * 32 * 8 and qmatmul.params == 0


def test_attention_costs_the_macs_and_flops_of_its_own_expansion():
    """ONNX ships every Attention node test also expanded into the primitive ops that define
    it (`*_expanded`): an independent count. MACs (the two products) are equal in every
    variant (grouped heads, 3-D, caches, masks, soft caps, windows); FLOPs are at least
    those of the expansion's products and softmax and at most the whole expansion's (which
    also builds its masks elementwise)."""
    from tests.test_corpus import node_test_cases

    cases = {case.name: case.model for case in node_test_cases()}
    pairs = [(name, cases[name + "_expanded"]) for name in cases
             if name.startswith("test_attention") and name + "_expanded" in cases]
    assert len(pairs) > 50
    for name, expanded in pairs:
        whole, parts = (read_model(m, name, dims={"batch": 1}) for m in (cases[name], expanded))
        op = [layer for layer in whole if layer.op == "Attention"]
        assert len(op) == 1 and op[0].supported, name
        assert op[0].macs == sum(layer.macs for layer in parts) > 0, name
        core = sum(layer.flops for layer in parts if layer.op in ("MatMul", "Softmax"))
        assert core < op[0].flops <= sum(layer.flops for layer in parts), name


@pytest.mark.parametrize(("mode", "taps"), [("linear", 4), ("cubic", 16), ("nearest", 0)])
def test_grid_sample_interpolates_its_taps_per_output(mode, taps):
    node = helper.make_node("GridSample", ["x", "g"], ["y"], name="s", mode=mode)
    layer = only_layer(model([node], [vi("x", [1, 3, 8, 8]), vi("g", [1, 5, 6, 2])],
                             [vi("y", [1, 3, 5, 6])], opset=20))
    assert layer.supported and layer.flops == 2 * taps * 3 * 5 * 6


def test_deform_conv_is_a_convolution_over_interpolated_samples():
    node = helper.make_node("DeformConv", ["x", "w", "offset"], ["y"], name="d",
                            kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    layer = only_layer(model([node], [vi("x", [1, 4, 8, 8]), vi("offset", [1, 18, 8, 8])],
                             [vi("y", [1, 6, 8, 8])], [weight("w", 6, 4, 3, 3)], opset=19))
    assert layer.supported and layer.params == 6 * 4 * 9
    assert layer.macs == 6 * 64 * 4 * 9  # the convolution's
    assert layer.flops == 2 * layer.macs + 8 * 64 * 4 * 9  # 4 taps per sample


def _fft(n: int, complex_input: bool) -> float:
    """One FFT of length n as FFTW's benchmarks count it: 5 n log2 n FLOPs, half on reals."""
    return (5.0 if complex_input else 2.5) * n * math.log2(n)


@pytest.mark.parametrize(("opset", "axis"), [(17, 1), (17, 2), (20, 1), (20, None)])
def test_dft_is_one_fft_along_its_axis_per_position_of_the_others(opset, axis):
    """DFT's axis is an attribute (default 1) up to opset 19 and an input (default -2, the
    last signal axis) from opset 20; the transform runs once per position of the others."""
    inputs, inits, attrs = ["x"], [], {}
    if opset == 17:
        attrs["axis"] = axis
    elif axis is not None:
        inputs += ["", "axis"]
        inits.append(numpy_helper.from_array(np.array(axis, dtype=np.int64), "axis"))
    node = helper.make_node("DFT", inputs, ["y"], name="f", **attrs)
    layer = only_layer(model([node], [vi("x", [2, 16, 8, 2])], [vi("y", [2, 16, 8, 2])],
                             inits, opset=opset))
    n = {1: 16, 2: 8, None: 8}[axis]
    assert layer.supported and layer.macs == 0
    assert layer.flops == pytest.approx(2 * 16 * 8 / n * _fft(n, True))


def test_a_onesided_dft_of_reals_padded_by_dft_length_counts_the_padded_length():
    node = helper.make_node("DFT", ["x", "n"], ["y"], name="f", axis=1, onesided=1)
    n = numpy_helper.from_array(np.array(32, dtype=np.int64), "n")
    layer = only_layer(model([node], [vi("x", [3, 20, 1])], [vi("y", [3, 17, 2])], [n]))
    assert layer.supported and layer.flops == pytest.approx(3 * _fft(32, False))


@pytest.mark.parametrize("window", [True, False])
def test_stft_windows_and_transforms_each_frame(window):
    """A signal of 400 reals in frames of 64 every 16 samples: 22 frames of 33 bins."""
    step = numpy_helper.from_array(np.array(16, dtype=np.int64), "step")
    length = numpy_helper.from_array(np.array(64, dtype=np.int64), "length")
    names = ["x", "step", "w" if window else "", "" if window else "length"]
    inits = [step, *([weight("w", 64)] if window else [length])]
    node = helper.make_node("STFT", names, ["y"], name="s", onesided=1)
    layer = only_layer(model([node], [vi("x", [2, 400, 1])], [vi("y", [2, 22, 33, 2])], inits))
    assert layer.supported
    assert layer.flops == pytest.approx(2 * 22 * ((64 if window else 0) + _fft(64, False)))


def test_a_size_no_run_could_give_says_why_the_run_failed():
    """Sizes after an operator ONNX does not know are asked of one onnxruntime run; where the
    run fails too (onnxruntime does not know it either, or the file is inconsistent: a broken
    export), the note says why, in one line."""
    nodes = [helper.make_node("FancyOp", ["x"], ["f"], domain="com.example"),
             helper.make_node("Relu", ["f"], ["y"])]
    graph = helper.make_graph(nodes, "g", [vi("x", [1, 10])], [vi("y", None)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("com.example", 1)])
    note = next(n for n in read_model(m, "custom").notes if "unknown size" in n)
    assert note.startswith("2 tensors of unknown size")
    assert "the run failed: " in note and "FancyOp" in note and "\n" not in note


@pytest.mark.parametrize(("ratio", "supported"), [(2, True), (0, False)])
def test_roi_align_interpolates_its_sampling_points_per_output(ratio, supported):
    """Each pooled element averages ratio^2 points of 4 taps each; an adaptive ratio (0)
    follows each box's size, which the data decides: a guess, said so."""
    node = helper.make_node("RoiAlign", ["x", "rois", "idx"], ["y"], name="r",
                            output_height=7, output_width=7, sampling_ratio=ratio)
    m = model([node], [vi("x", [2, 8, 32, 32]), vi("rois", [3, 4]),
                       vi("idx", [3], TensorProto.INT64)], [vi("y", [3, 8, 7, 7])], opset=16)
    layer = only_layer(m)
    assert layer.supported == supported
    if supported:
        assert layer.flops == 9 * ratio * ratio * 3 * 8 * 7 * 7


def test_the_inverse_of_one_sided_bins_is_a_real_transform_of_the_output_length():
    """irfft: 3 one-sided bins of a 5-sample real signal back to the 5 samples."""
    node = helper.make_node("DFT", ["x"], ["y"], name="f", axis=1, inverse=1, onesided=1)
    layer = only_layer(model([node], [vi("x", [4, 3, 2])], [vi("y", [4, 5, 1])], opset=19))
    assert layer.supported and layer.flops == pytest.approx(4 * _fft(5, False))


def _torch_macs(fn, *args) -> float:
    """MACs torch's FlopCounterMode counts running `fn` (its products: half its FLOPs)."""
    pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 2


def test_affine_grid_is_a_product_of_the_base_grid_by_theta():
    """F.affine_grid (TorchScript writes AffineGrid from opset 20): PyTorch multiplies the
    base grid of homogeneous positions (N, H x W, 3) by theta's transpose (N, 3, 2)."""
    torch = pytest.importorskip("torch")
    n, h, w = 2, 5, 6
    node = helper.make_node("AffineGrid", ["theta", "size"], ["y"], name="a")
    size = numpy_helper.from_array(np.array([n, 3, h, w], dtype=np.int64), "size")
    layer = only_layer(model([node], [vi("theta", [n, 2, 3])], [vi("y", [n, h, w, 2])],
                             [size], opset=20))
    base = torch.randn(n, h * w, 3)
    assert layer.supported
    assert layer.macs == _torch_macs(torch.bmm, base, torch.randn(n, 3, 2)) == n * h * w * 2 * 3
    assert layer.flops == 2 * layer.macs


def test_det_is_an_lu_factorisation_per_matrix():
    node = helper.make_node("Det", ["x"], ["y"], name="d")
    layer = only_layer(model([node], [vi("x", [3, 4, 6, 6])], [vi("y", [3, 4])], opset=22))
    assert layer.supported and layer.flops == pytest.approx(3 * 4 * (2 * 6**3 / 3 + 6))


@pytest.mark.parametrize(("activation", "per_output"), [("silu", 2 * 4 + 1 + 5), ("none", 9)])
def test_causal_conv_with_state_is_a_depthwise_convolution(activation, per_output):
    """A (batch, channels, length) signal through a (channels, 1, k) kernel: the MACs of the
    depthwise conv1d it stands for (FlopCounterMode), its bias and its fused SiLU."""
    torch = pytest.importorskip("torch")
    b, c, length, k = 2, 8, 10, 4
    node = helper.make_node("CausalConvWithState", ["x", "w", "bias"], ["y", "state"], name="c",
                            activation=activation)
    layer = only_layer(model([node], [vi("x", [b, c, length])], [vi("y", [b, c, length])],
                             [weight("w", c, 1, k), weight("bias", c)], opset=27))
    conv = torch.nn.Conv1d(c, c, k, groups=c)  # over the signal padded by k - 1 zeros before
    assert layer.supported and layer.params == c * k + c
    padded = torch.nn.functional.pad(torch.randn(b, c, length), (k - 1, 0))
    assert layer.macs == _torch_macs(conv, padded) == b * c * length * k
    assert layer.flops == per_output * b * c * length


@pytest.mark.parametrize("rule", ["linear", "gated", "delta", "gated_delta"])
def test_linear_attention_counts_the_products_of_its_recurrence(rule):
    """Each rule's recurrence, run token by token in torch (the schema's definition): its
    products, as FlopCounterMode counts them (not the outer products, which einsum
    multiplies elementwise), are the handle's MACs (grouped query heads)."""
    torch = pytest.importorskip("torch")
    b, t, heads, kv_heads, d_k, d_v = 2, 5, 4, 2, 8, 16
    q, k, v = (torch.randn(b, t, h, d) for h, d in ((heads, d_k), (kv_heads, d_k),
                                                     (kv_heads, d_v)))
    decay, beta = torch.randn(b, t, kv_heads), torch.rand(b, t, kv_heads)

    def recurrence() -> None:
        state = torch.zeros(b, kv_heads, d_k, d_v)
        for i in range(t):
            if rule.startswith("gated"):
                state = state * decay[:, i].exp()[..., None, None]
            update = v[:, i]
            if rule.endswith("delta"):
                update = beta[:, i, :, None] * (v[:, i] - torch.einsum("bhk,bhkv->bhv",
                                                                       k[:, i], state))
            state = state + torch.einsum("bhk,bhv->bhkv", k[:, i], update)
            shared = state.repeat_interleave(heads // kv_heads, dim=1)
            torch.einsum("bhk,bhkv->bhv", q[:, i], shared)

    gates = ["", "g", ""] if rule.startswith("gated") else ["", "", ""]
    if rule.endswith("delta"):
        gates = ["", gates[1], "beta"]
    node = helper.make_node("LinearAttention", ["q", "k", "v", *gates], ["y", "state"],
                            name="l", q_num_heads=heads, kv_num_heads=kv_heads,
                            update_rule=rule)
    inputs = [vi("q", [b, t, heads * d_k]), vi("k", [b, t, kv_heads * d_k]),
              vi("v", [b, t, kv_heads * d_v])]
    inputs += [vi(name, [b, t, kv_heads]) for name in gates if name]
    layer = only_layer(model([node], inputs, [vi("y", [b, t, heads * d_v])], opset=27))
    assert layer.supported and layer.macs == _torch_macs(recurrence)
    assert layer.flops > 2 * layer.macs
