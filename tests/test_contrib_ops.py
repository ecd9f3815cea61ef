"""ONNX as onnxruntime's optimizers save it: fused `com.microsoft` operators that ONNX's shape
inference does not know. Each fused operator must cost what the standard operators it fuses
cost (checked on graphs onnxruntime runs to the same outputs), and the sizes after it must be
measured, not guessed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import vi, weight
from toolkit.onnx import read_model, read_onnx


def _model(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
           outputs: Sequence[onnx.ValueInfoProto],
           initializers: Sequence[TensorProto] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m


def _ints(name: str, values: Sequence[int]) -> TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _scalar(name: str, value: float) -> TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in session.run(None, feeds)]


def _same_flops(fused: onnx.ModelProto, plain: onnx.ModelProto,
                feeds: dict[str, np.ndarray]) -> None:
    """onnxruntime computes the same outputs from both graphs, and both cost the same FLOPs
    and MACs, with every operator known and every size resolved."""
    for got, want in zip(_run(fused, feeds), _run(plain, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    a, b = read_model(fused, "fused"), read_model(plain, "plain")
    assert any(layer.op.startswith("com.microsoft.") for layer in a)
    assert not a.unsupported_ops and not a.unknown_shapes
    assert not any("guess" in note or "unknown size" in note for note in a.notes)
    assert a.total_flops == pytest.approx(b.total_flops, rel=1e-9)
    assert a.total_macs == pytest.approx(b.total_macs, rel=1e-9)


def _heads(x: str, out: str, batch: int, length: int, heads: int, head: int,
           perm: Sequence[int]) -> list[onnx.NodeProto]:
    """(batch, length, heads x head) -> per-head layout `perm` of (batch, length, heads, head)."""
    shape = f"{out}_shape"
    return [helper.make_node("Constant", [], [shape],
                             value=numpy_helper.from_array(
                                 np.array([batch, length, heads, head], np.int64))),
            helper.make_node("Reshape", [x, shape], [f"{out}_split"]),
            helper.make_node("Transpose", [f"{out}_split"], [out], perm=list(perm))]


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))


def _attend(q: str, k: str, v: str, out: str, batch: int, queries: int, keys: int,
            heads: int, head: int, kv_heads: int | None = None,
            causal: bool = False) -> list[onnx.NodeProto]:
    """Scaled dot-product attention spelled out as PyTorch exports it: Q and K^T each scaled
    by head^-1/4 (K once per key/value head, then repeated for each query head of its group),
    their product softmaxed (after a causal mask where asked), times V, heads merged back."""
    kv = kv_heads or heads
    group = heads // kv

    def per_query_head(x: str, shape: Sequence[int]) -> list[onnx.NodeProto]:
        """`x` (batch, kv heads, ...) repeated for the `group` query heads of each."""
        if group == 1:
            return [helper.make_node("Identity", [x], [f"{x}r"])]
        return [_const(f"{x}_two", np.array([2], np.int64)),
                helper.make_node("Unsqueeze", [x, f"{x}_two"], [f"{x}u"]),
                _const(f"{x}_5", np.array([batch, kv, group, *shape], np.int64)),
                helper.make_node("Expand", [f"{x}u", f"{x}_5"], [f"{x}e"]),
                _const(f"{x}_4", np.array([batch, heads, *shape], np.int64)),
                helper.make_node("Reshape", [f"{x}e", f"{x}_4"], [f"{x}r"])]

    scores = "scores"
    masking = []
    if causal:
        mask = np.triu(np.full((queries, keys), -np.inf, np.float32), 1)
        masking = [_const("causal", mask),
                   helper.make_node("Add", ["scores", "causal"], ["masked"])]
        scores = "masked"
    return [*_heads(q, "qh", batch, queries, heads, head, (0, 2, 1, 3)),
            *_heads(k, "kh", batch, keys, kv, head, (0, 2, 3, 1)),
            *_heads(v, "vh", batch, keys, kv, head, (0, 2, 1, 3)),
            _const("root", np.array(head ** -0.25, np.float32)),
            helper.make_node("Mul", ["qh", "root"], ["qs"]),
            helper.make_node("Mul", ["kh", "root"], ["ks"]),
            *per_query_head("ks", (head, keys)),
            *per_query_head("vh", (keys, head)),
            helper.make_node("MatMul", ["qs", "ksr"], ["scores"]),
            *masking,
            helper.make_node("Softmax", [scores], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "vhr"], ["ctx"]),
            helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
            _const("merged", np.array([batch, queries, heads * head], np.int64)),
            helper.make_node("Reshape", ["ctx_t", "merged"], [out])]


def test_contrib_attention_costs_the_projection_and_attention_it_fuses():
    batch, seq, width, heads, head = 2, 7, 12, 3, 4
    hidden = heads * head
    inits = [weight("w", width, 3 * hidden), weight("b", 3 * hidden, seed=1)]
    x = vi("x", [batch, seq, width])
    y = vi("y", [batch, seq, hidden])
    fused = _model([helper.make_node("Attention", ["x", "w", "b"], ["y"], domain="com.microsoft",
                                     num_heads=heads)], [x], [y], inits)
    plain = _model([helper.make_node("MatMul", ["x", "w"], ["xw"]),
                    helper.make_node("Add", ["xw", "b"], ["qkv"]),
                    helper.make_node("Split", ["qkv", "sizes"], ["q", "k", "v"], axis=2),
                    *_attend("q", "k", "v", "y", batch, seq, seq, heads, head)],
                   [x], [y], [*inits, _ints("sizes", [hidden] * 3)])
    feeds = {"x": np.random.default_rng(2).standard_normal((batch, seq, width), np.float32)}
    _same_flops(fused, plain, feeds)


def test_multi_head_attention_counts_the_keys_it_attends_to():
    """Cross-attention: 5 queries over 9 keys (a cost that confused them would differ)."""
    batch, queries, keys, heads, head = 2, 5, 9, 2, 8
    hidden = heads * head
    ins = [vi("q", [batch, queries, hidden]), vi("k", [batch, keys, hidden]),
           vi("v", [batch, keys, hidden])]
    y = vi("y", [batch, queries, hidden])
    fused = _model([helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"],
                                     domain="com.microsoft", num_heads=heads)], ins, [y])
    plain = _model(_attend("q", "k", "v", "y", batch, queries, keys, heads, head), ins, [y])
    rng = np.random.default_rng(3)
    feeds = {vi_.name: rng.standard_normal([d.dim_value for d in
                                            vi_.type.tensor_type.shape.dim], np.float32)
             for vi_ in ins}
    _same_flops(fused, plain, feeds)


def test_fused_matmul_and_fused_gemm_cost_their_parts():
    a, b = vi("a", [2, 3, 5]), vi("b", [2, 4, 5])  # b transposed in the product
    y = vi("y", [2, 3, 4])
    fused = _model([helper.make_node("FusedMatMul", ["a", "b"], ["y"], domain="com.microsoft",
                                     transB=1, alpha=0.5)], [a, b], [y])
    plain = _model([helper.make_node("Transpose", ["b"], ["bt"], perm=[0, 2, 1]),
                    helper.make_node("MatMul", ["a", "bt"], ["ab"]),
                    helper.make_node("Mul", ["ab", "half"], ["y"])],
                   [a, b], [y], [_scalar("half", 0.5)])
    rng = np.random.default_rng(4)
    _same_flops(fused, plain, {"a": rng.standard_normal((2, 3, 5), np.float32),
                               "b": rng.standard_normal((2, 4, 5), np.float32)})

    x, out = vi("x", [3, 6]), vi("z", [3, 4])
    inits = [weight("w", 6, 4), weight("c", 4, seed=1)]
    fused = _model([helper.make_node("FusedGemm", ["x", "w", "c"], ["z"], domain="com.microsoft",
                                     activation="Sigmoid")], [x], [out], inits)
    plain = _model([helper.make_node("Gemm", ["x", "w", "c"], ["g"]),
                    helper.make_node("Sigmoid", ["g"], ["z"])], [x], [out], inits)
    _same_flops(fused, plain, {"x": rng.standard_normal((3, 6), np.float32)})


def test_skip_layer_normalization_costs_the_sum_and_the_normalization():
    x, s, y = vi("x", [2, 3, 8]), vi("s", [2, 3, 8]), vi("y", [2, 3, 8])
    inits = [weight("g", 8), weight("beta", 8, seed=1)]
    fused = _model([helper.make_node("SkipLayerNormalization", ["x", "s", "g", "beta"], ["y"],
                                     domain="com.microsoft", epsilon=1e-5)], [x, s], [y], inits)
    plain = _model([helper.make_node("Add", ["x", "s"], ["xs"]),
                    helper.make_node("LayerNormalization", ["xs", "g", "beta"], ["y"],
                                     axis=-1, epsilon=1e-5)], [x, s], [y], inits)
    rng = np.random.default_rng(5)
    _same_flops(fused, plain, {"x": rng.standard_normal((2, 3, 8), np.float32),
                               "s": rng.standard_normal((2, 3, 8), np.float32)})


def test_sizes_after_an_operator_onnx_does_not_know_are_measured_by_one_run():
    """ONNX's inference stops at com.microsoft.FusedConv: it says nothing of its output nor of
    anything after it. The run gives their sizes and types, so the Conv after it costs what it
    does (it cost nothing before: its input size was a guess that did not fit its weight)."""
    nodes = [helper.make_node("FusedConv", ["x", "w1"], ["a"], domain="com.microsoft",
                              activation="Relu", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["y"], pads=[1, 1, 1, 1])]
    m = _model(nodes, [vi("x", [1, 3, 16, 16])], [vi("y", None)],
               [weight("w1", 8, 3, 3, 3), weight("w2", 4, 8, 3, 3, seed=1)])
    graph = read_model(m, "m")
    assert graph.tensors["a"].shape == (1, 8, 16, 16) and graph.tensors["a"].dtype == "float"
    assert graph.layers[graph.tensors["y"].producer].macs == 4 * 16 * 16 * 8 * 9
    assert not graph.unknown_shapes and not graph.notes


def test_an_onnxruntime_optimized_export_costs_what_its_source_does(zoo_path, tmp_path):
    """ResNet-18 saved by onnxruntime's graph optimizer: convolutions fused with their ReLU
    (com.microsoft.FusedConv), batch norms folded into them. The same arithmetic, less the
    folded batch norms (0.14% of the FLOPs)."""
    source = zoo_path("resnet18")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    optimized, plain = read_onnx(tmp_path / "optimized.onnx"), read_onnx(source)
    assert sum(layer.op == "com.microsoft.FusedConv" for layer in optimized) >= 8
    assert not optimized.unsupported_ops and not optimized.unknown_shapes
    assert optimized.total_flops == pytest.approx(plain.total_flops, rel=0.005)
    assert optimized.total_macs == pytest.approx(plain.total_macs, rel=1e-9)


def test_group_query_attention_scales_and_repeats_the_key_value_heads():
    """4 query heads over 2 key/value heads, causal: K and V repeated per group (free), K
    scaled once per key/value head, the causal mask added (a cost that took the key/value
    heads for query heads, or forgot the mask, would differ)."""
    batch, seq, heads, kv_heads, head = 2, 6, 4, 2, 8
    ins = [vi("q", [batch, seq, heads * head]), vi("k", [batch, seq, kv_heads * head]),
           vi("v", [batch, seq, kv_heads * head])]
    y = vi("y", [batch, seq, heads * head])
    lengths = [numpy_helper.from_array(np.full([batch], seq - 1, np.int32), "seqlens"),
               numpy_helper.from_array(np.array(seq, np.int32), "total")]
    fused = _model([helper.make_node("GroupQueryAttention",
                                     ["q", "k", "v", "", "", "seqlens", "total"],
                                     ["y", "present_k", "present_v"], domain="com.microsoft",
                                     num_heads=heads, kv_num_heads=kv_heads)],
                   ins, [y], lengths)
    plain = _model(_attend("q", "k", "v", "y", batch, seq, seq, heads, head, kv_heads,
                           causal=True), ins, [y])
    rng = np.random.default_rng(6)
    _same_flops(fused, plain, {
        "q": rng.standard_normal((batch, seq, heads * head), np.float32),
        "k": rng.standard_normal((batch, seq, kv_heads * head), np.float32),
        "v": rng.standard_normal((batch, seq, kv_heads * head), np.float32)})


def test_a_fused_activation_nobody_taught_us_is_said_to_be_a_guess():
    """FusedConv's convolution is known, its `activation` may not be: the layer is then not
    fully costed, and the guess note names it (it passed as fully known)."""
    node = helper.make_node("FusedConv", ["x", "w"], ["y"], domain="com.microsoft",
                            name="fused", activation="Mystery")
    m = _model([node], [vi("x", [1, 3, 8, 8])], [vi("y", [1, 4, 6, 6])],
               [weight("w", 4, 3, 3, 3)])
    graph = read_model(m, "m")
    layer = graph.layers["fused"]
    assert layer.macs == 4 * 6 * 6 * 3 * 9 and not layer.supported
    assert graph.unsupported_ops == {"com.microsoft.FusedConv": 1}
    assert any("guess" in note and "com.microsoft.FusedConv x1" in note for note in graph.notes)
