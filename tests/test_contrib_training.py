"""Training ONNX as onnxruntime's optimizers save it: the executor runs the fused
`com.microsoft` operators (FusedConv, SkipLayerNormalization, Attention, ...) as onnxruntime's
CPU kernels compute them, node by node, and an optimized model trains as its source does."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from tests.helpers import run_main
from toolkit.train.executor import OnnxModule, trainable_initializers
from toolkit.train.ops import run_op

_rng = np.random.default_rng(0)


def _f(*shape: int) -> np.ndarray:
    return _rng.standard_normal(shape).astype(np.float32)


def _i(values: Any) -> np.ndarray:
    return np.array(values, np.int32)


_MASK = _i([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
_CAUSAL = np.broadcast_to(np.tril(np.ones((5, 5), np.int32)), (2, 5, 5)).copy()

CASES: list[tuple[str, dict[str, Any], list[np.ndarray | None], int]] = [
    ("FusedConv", {"activation": "Relu"}, [_f(1, 3, 8, 8), _f(4, 3, 3, 3), _f(4)], 1),
    ("FusedConv", {"activation": "LeakyRelu", "activation_params": [0.2], "pads": [1] * 4},
     [_f(1, 3, 8, 8), _f(4, 3, 3, 3), None, _f(1, 4, 8, 8)], 1),  # Z added before it
    ("FusedConv", {"activation": "Clip", "activation_params": [-0.5, 0.5]},
     [_f(1, 3, 8, 8), _f(4, 3, 3, 3), _f(4)], 1),
    ("FusedConv", {"activation": "HardSigmoid", "activation_params": [0.3, 0.4],
                   "strides": [2, 2]}, [_f(1, 3, 8, 8), _f(4, 3, 3, 3), _f(4)], 1),
    ("FusedConv", {"activation": "Sigmoid", "group": 3}, [_f(1, 3, 8, 8), _f(3, 1, 3, 3)], 1),
    ("FusedGemm", {"activation": "LeakyRelu", "activation_alpha": 0.3, "transB": 1},
     [_f(2, 5), _f(4, 5), _f(4)], 1),
    ("FusedGemm", {"activation": "Relu", "alpha": 0.5, "beta": 2.0, "transA": 1},
     [_f(5, 2), _f(5, 4), _f(2, 4)], 1),
    ("FusedMatMul", {"alpha": 0.5, "transA": 1, "transB": 1}, [_f(3, 5, 4), _f(3, 6, 5)], 1),
    ("FusedMatMul", {"transBatchA": 1}, [_f(4, 3, 5), _f(3, 5, 6)], 1),
    ("FusedMatMul", {"transBatchB": 1}, [_f(2, 3, 4, 5), _f(5, 2, 3, 6)], 1),
    ("FusedMatMul", {"transBatchA": 1, "transA": 1}, [_f(5, 2, 3, 4), _f(2, 3, 5, 6)], 1),
    ("TransposeMatMul", {"transB": 1}, [_f(3, 4), _f(5, 4)], 1),
    ("Gelu", {}, [_f(3, 4)], 1),
    ("BiasGelu", {}, [_f(3, 4), _f(4)], 1),
    ("FastGelu", {}, [_f(3, 4), _f(4)], 1),
    ("FastGelu", {}, [_f(3, 4)], 1),
    ("QuickGelu", {}, [_f(3, 4)], 1),
    ("QuickGelu", {"alpha": 1.0}, [_f(3, 4)], 1),  # SiLU
    ("SkipLayerNormalization", {"epsilon": 1e-5}, [_f(2, 3, 8), _f(2, 3, 8), _f(8), _f(8),
                                                   _f(8)], 4),
    ("SkipLayerNormalization", {}, [_f(2, 3, 8), _f(2, 3, 8), _f(8)], 1),
    ("SkipSimplifiedLayerNormalization", {"epsilon": 1e-5},
     [_f(2, 3, 8), _f(2, 3, 8), _f(8), _f(8)], 4),
    ("EmbedLayerNormalization", {"epsilon": 1e-5},
     [_i(_rng.integers(0, 10, (2, 5))), _i(_rng.integers(0, 2, (2, 5))), _f(10, 8), _f(6, 8),
      _f(2, 8), _f(8), _f(8), _MASK], 3),
    ("EmbedLayerNormalization", {}, [_i(_rng.integers(0, 10, (2, 5))), None, _f(10, 8),
                                     _f(6, 8), None, _f(8), _f(8)], 3),
    ("Attention", {"num_heads": 2}, [_f(2, 5, 8), _f(8, 24), _f(24)], 1),
    ("Attention", {"num_heads": 2}, [_f(2, 5, 8), _f(8, 24), _f(24), _MASK], 2),
    ("Attention", {"num_heads": 2}, [_f(2, 5, 8), _f(8, 24), _f(24), _i([3, 5])], 1),
    ("Attention", {"num_heads": 2, "unidirectional": 1},
     [_f(2, 5, 8), _f(8, 24), _f(24), None, _f(2, 2, 2, 3, 4)], 2),
    ("Attention", {"num_heads": 2, "qkv_hidden_sizes": [8, 8, 4]},
     [_f(2, 5, 8), _f(8, 20), _f(20)], 1),
    ("Attention", {"num_heads": 2, "mask_filter_value": -1e9},
     [_f(2, 5, 8), _f(8, 24), _f(24), _CAUSAL, None, _f(1, 2, 5, 5)], 1),
    ("MultiHeadAttention", {"num_heads": 2}, [_f(2, 5, 8), _f(2, 6, 8), _f(2, 6, 8)], 1),
    ("MultiHeadAttention", {"num_heads": 2},
     [_f(2, 5, 8), _f(2, 6, 8), _f(2, 6, 8), _f(24), _i([[1, 1, 1, 1, 0, 0], [1] * 6])], 1),
    ("MultiHeadAttention", {"num_heads": 2}, [_f(2, 5, 8), _f(2, 2, 6, 4), _f(2, 2, 6, 4)], 1),
    ("MultiHeadAttention", {"num_heads": 2}, [_f(2, 5, 8), _f(2, 6, 8), _f(2, 6, 4), _f(20)], 1),
    ("MultiHeadAttention", {"num_heads": 2, "scale": 0.3},
     [_f(2, 5, 8), _f(2, 6, 8), _f(2, 6, 8), None, _i([4, 6]), _f(2, 2, 5, 6)], 1),
    ("MultiHeadAttention", {"num_heads": 2, "unidirectional": 1},
     [_f(2, 5, 8), _f(2, 5, 8), _f(2, 5, 8), None, None, None, _f(2, 2, 3, 4),
      _f(2, 2, 3, 4)], 3),
    ("ExpandDims", {}, [_f(3, 4), np.array(-1, np.int32)], 1),
    ("Range", {}, [np.array(1.0, np.float32), np.array(5.0, np.float32),
                   np.array(0.5, np.float32)], 1),
    ("Trilu", {"upper": 0}, [_f(4, 4), np.array(1, np.int64)], 1),
    *[("GroupQueryAttention", {"num_heads": 4, "kv_num_heads": 2, **attrs},
       [*qkv, None, None, _i(lengths), _i(5), *rotary], 3)
      for attrs, qkv, lengths, rotary in [
          ({}, [_f(2, 5, 64), _f(2, 5, 32), _f(2, 5, 32)], [4, 4], []),
          ({}, [_f(2, 5, 64), _f(2, 5, 32), _f(2, 5, 32)], [4, 2], []),  # a padded prompt
          ({}, [_f(2, 5, 128), None, None], [4, 4], []),  # packed
          ({"softcap": 2.0, "scale": 0.3}, [_f(2, 5, 64), _f(2, 5, 32), _f(2, 5, 32)],
           [4, 4], []),
          ({"local_window_size": 2}, [_f(2, 5, 64), _f(2, 5, 32), _f(2, 5, 32)], [4, 4], []),
          ({"do_rotary": 1, "rotary_interleaved": 1},
           [_f(2, 5, 64), _f(2, 5, 32), _f(2, 5, 32)], [4, 4], [_f(16, 8), _f(16, 8)])]],
    ("GroupQueryAttention", {"num_heads": 4, "kv_num_heads": 2, "do_rotary": 1},
     [_f(1, 2, 64), _f(1, 2, 32), _f(1, 2, 32), _f(1, 2, 3, 16), _f(1, 2, 3, 16), _i([4]),
      _i(5), _f(16, 8), _f(16, 8)], 3),  # a step after a cache of 3
    ("RotaryEmbedding", {}, [_f(2, 5, 8), np.array([2], np.int64), _f(10, 4), _f(10, 4)], 1),
    ("RotaryEmbedding", {"interleaved": 1, "num_heads": 2},
     [_f(2, 5, 8), np.array([[0, 1, 2, 3, 4], [2, 3, 4, 5, 6]], np.int64), _f(10, 2),
      _f(10, 2)], 1),
]


def _onnxruntime(op: str, domain: str, attrs: dict[str, Any],
                 inputs: Sequence[np.ndarray | None], outputs: int) -> list[np.ndarray]:
    """One node run by onnxruntime's CPU kernel (its graph optimizer off)."""
    names = [f"in{k}" if v is not None else "" for k, v in enumerate(inputs)]
    node = helper.make_node(op, names, [f"out{k}" for k in range(outputs)], domain=domain,
                            **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in zip(names, inputs, strict=True) if v is not None],
        [onnx.ValueInfoProto(name=f"out{k}") for k in range(outputs)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {n: v for n, v in zip(names, inputs, strict=True) if v is not None}
    return [np.asarray(v) for v in session.run(None, feeds)]


@pytest.mark.parametrize(("op", "attrs", "inputs", "outputs"), CASES,
                         ids=[f"{c[0]}-{k}" for k, c in enumerate(CASES)])
def test_a_contrib_operator_computes_what_onnxruntime_does(op, attrs, inputs, outputs):
    expected = _onnxruntime(op, "com.microsoft", attrs, inputs, outputs)
    got = run_op(f"com.microsoft.{op}", attrs,
                 [torch.from_numpy(v) if v is not None else None for v in inputs], outputs)
    assert len(got) >= outputs
    for k, want in enumerate(expected):
        np.testing.assert_allclose(got[k].numpy(), want, rtol=1e-5, atol=1e-5,
                                   err_msg=f"output {k}")


@pytest.mark.parametrize(("op", "attrs", "inputs", "outputs"), [
    ("Attention", {"num_heads": 2}, [_f(2, 5, 8), _f(8, 24), _f(24), _MASK], 1),
    ("SkipLayerNormalization", {}, [_f(2, 3, 8), _f(2, 3, 8), _f(8), _f(8), _f(8)], 4),
    ("FusedMatMul", {"alpha": 0.5, "transB": 1}, [_f(3, 5, 4), _f(3, 6, 4)], 1)])
def test_a_16_bit_contrib_operator_computes_what_onnxruntime_does(op, attrs, inputs, outputs):
    """In a model converted to float16 (a masked score's fill and the softmax in float32, as
    onnxruntime's kernels take them), within float16's resolution."""
    halves = [v.astype(np.float16) if v.dtype == np.float32 else v for v in inputs]
    expected = _onnxruntime(op, "com.microsoft", attrs, halves, outputs)
    got = run_op(f"com.microsoft.{op}", attrs, [torch.from_numpy(v) for v in halves], outputs)
    for k, want in enumerate(expected):
        assert got[k].dtype == torch.from_numpy(want).dtype, f"output {k}"
        np.testing.assert_allclose(got[k].float().numpy(), want.astype(np.float32),
                                   rtol=2e-3, atol=2e-3, err_msg=f"output {k}")


def test_onnxruntimes_rms_norm_in_onnxs_domain_computes_what_it_does():
    """onnxruntime registers SimplifiedLayerNormalization (LLaMA's RMSNorm, as its transformer
    optimizer writes it) in ONNX's own domain."""
    inputs = [_f(2, 3, 8), _f(8)]
    expected = _onnxruntime("SimplifiedLayerNormalization", "", {"epsilon": 1e-5}, inputs, 2)
    got = run_op("SimplifiedLayerNormalization", {"epsilon": 1e-5},
                 [torch.from_numpy(v) for v in inputs], 2)
    for k, want in enumerate(expected):
        np.testing.assert_allclose(got[k].numpy(), want, rtol=1e-5, atol=1e-6)


class _Fusable(torch.nn.Module):  # type: ignore[misc]  # torch is untyped here
    """Layers onnxruntime's CPU graph optimizer fuses: convolutions with their ReLU (one after
    a residual sum), a Linear with its ReLU, GELU, a residual LayerNorm, SiLU, a scaled
    product of a transposed operand."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c3, self.fc, self.ln = nn.Conv2d(8, 8, 1), nn.Linear(8, 16), nn.LayerNorm(16)
        self.up, self.down, self.gate = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 16)
        self.head, self.out = nn.Linear(16, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        functional = torch.nn.functional
        h = torch.relu(self.c1(x))
        h = torch.relu(self.c2(h) + h)
        h = torch.sigmoid(self.c3(h)) * h
        t = self.fc(h.flatten(2).transpose(1, 2))
        t = self.ln(t + self.down(functional.gelu(self.up(t))))
        t = functional.silu(self.gate(t)) + t
        t = torch.softmax((t @ t.transpose(1, 2)) * 0.25, -1) @ t
        return self.out(torch.relu(self.head(t.mean(1))))


def _optimized(source: Path, target: Path) -> onnx.ModelProto:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(target))


def _forward_backward(m: onnx.ModelProto, feeds: dict[str, torch.Tensor]
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The executor's first output and the gradients of a random projection of it, by
    weight name and for each float input."""
    executor = OnnxModule(m, trainable_initializers(m.graph))
    inputs = {n: t.clone().requires_grad_(t.is_floating_point()) for n, t in feeds.items()}
    out = executor(inputs)[executor.output_names[0]]
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * projection).sum().backward()
    grads = {n: w.grad for n, w in executor.named_weights().items()}
    grads.update({n: t.grad for n, t in inputs.items() if t.grad is not None})
    return out.detach(), grads


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal but for float rounding: within 1e-5 of the largest magnitude (sums reordered by
    a fusion differ by some 1e-7 of it)."""
    return float((got - want).abs().max()) <= 1e-5 * max(float(want.abs().max()), 1.0)


def test_an_onnxruntime_optimized_model_trains_as_its_source(tmp_path):
    """The model PyTorch exported and the one onnxruntime's graph optimizer saved from it
    (six kinds of fused operator) give PyTorch's output and the same gradient for every
    weight and for the input; `splitcut train` trains the optimized one split."""
    torch.manual_seed(0)
    module, x = _Fusable().eval(), torch.randn(2, 3, 8, 8)
    source = tmp_path / "source.onnx"
    torch.onnx.export(module, (x,), str(source), dynamo=False, opset_version=17,
                      input_names=["x"])
    optimized = _optimized(source, tmp_path / "optimized.onnx")
    fused = {n.op_type for n in optimized.graph.node if n.domain == "com.microsoft"}
    assert fused >= {"FusedConv", "FusedGemm", "FusedMatMul", "Gelu", "QuickGelu",
                     "SkipLayerNormalization"}
    plain_out, plain = _forward_backward(onnx.load(str(source)), {"x": x})
    fused_out, grads = _forward_backward(optimized, {"x": x})
    with torch.no_grad():
        assert torch.allclose(fused_out, module(x), atol=1e-5)
    assert torch.allclose(fused_out, plain_out, atol=1e-5)
    assert sorted(grads) == sorted(plain)  # every weight kept its name, and trains
    for name, grad in plain.items():
        assert _close(grads[name], grad), name


def test_the_train_command_trains_an_onnxruntime_optimized_model(tmp_path, capsys,
                                                                 monkeypatch):
    torch.manual_seed(0)
    source = tmp_path / "source.onnx"
    torch.onnx.export(_Fusable().eval(), (torch.randn(4, 3, 8, 8),), str(source),
                      dynamo=False, opset_version=17, input_names=["x"])
    _optimized(source, tmp_path / "optimized.onnx")
    code, out, err = run_main(
        ["train", str(tmp_path / "optimized.onnx"), "--cut", "best-single", "--link", "5g",
         "--device", "cpu-server", "--server", "cpu-server", "--iterations", "2",
         "--warmup", "0", "--json"], capsys, monkeypatch)
    assert code == 0, err
    data = json.loads(out)
    assert len(data["iterations"]) == 2
    assert all(np.isfinite(row["loss"]) for row in data["iterations"])


def test_the_transformer_optimizers_rms_norms_train_as_their_source(zoo_path, tmp_path):
    """A small LLaMA saved by onnxruntime's transformer optimizer: its RMSNorms become
    SimplifiedLayerNormalization and SkipSimplifiedLayerNormalization, whose residual sums
    feed the next layer; the loss and every gradient are the source's."""
    from onnxruntime.transformers.optimizer import optimize_model

    source = zoo_path("hf:llama", "dynamo")
    target = tmp_path / "optimized.onnx"
    optimize_model(str(source), model_type="bert", num_heads=0,
                   hidden_size=0).save_model_to_file(str(target))
    optimized = onnx.load(str(target))
    ops = {n.op_type for n in optimized.graph.node}
    assert {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"} <= ops
    m = onnx.load(str(source))
    feeds = {i.name: torch.randint(0, 100, [d.dim_value or 2 for d in
                                            i.type.tensor_type.shape.dim])
             for i in m.graph.input}
    plain_out, plain = _forward_backward(m, feeds)
    fused_out, grads = _forward_backward(optimized, feeds)
    assert torch.allclose(fused_out, plain_out, atol=1e-4)
    shared = [n for n in plain if n in grads and grads[n].shape == plain[n].shape]
    scales = {n.input[1 if n.op_type == "SimplifiedLayerNormalization" else 2]
              for n in optimized.graph.node if "SimplifiedLayerNormalization" in n.op_type}
    assert len(scales) >= 5 and scales <= set(shared)  # (its projections were transposed)
    for name in shared:
        assert _close(grads[name], plain[name]), name


class _Bert(torch.nn.Module):  # type: ignore[misc]  # torch is untyped here
    """A two-layer BERT with eager attention, whose pattern the transformer optimizer fuses
    into Attention, EmbedLayerNormalization, BiasGelu and SkipLayerNormalization."""

    def __init__(self) -> None:
        super().__init__()
        import transformers

        config = transformers.BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            vocab_size=100, attn_implementation="eager")
        self.bert = transformers.BertModel(config).eval()
        for param in self.bert.parameters():  # (distinct values: none shared by the optimizer)
            torch.nn.init.normal_(param, std=0.2)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor
                ) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=mask,
                         token_type_ids=types).last_hidden_state


def test_the_transformer_optimizers_attention_trains_as_its_source(tmp_path):
    """BERT through onnxruntime's transformer optimizer: its attention (with a padding mask)
    one Attention node per layer, its embeddings one EmbedLayerNormalization. The output and
    every gradient of the weights both files hold (the embeddings', reached through both
    attentions) are the source's."""
    from onnxruntime.transformers.optimizer import optimize_model

    torch.manual_seed(0)
    ids, types = torch.randint(0, 100, (2, 16)), torch.zeros(2, 16, dtype=torch.int64)
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 10:], types[:, 8:] = 0, 1
    source, target = tmp_path / "bert.onnx", tmp_path / "optimized.onnx"
    names = ["ids", "mask", "types"]
    torch.onnx.export(_Bert(), (ids, mask, types), str(source), dynamo=False, opset_version=14,
                      input_names=names, output_names=["y"],
                      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names})
    optimize_model(str(source), model_type="bert", num_heads=4,
                   hidden_size=64).save_model_to_file(str(target))
    optimized = onnx.load(str(target))
    fused = [n.op_type for n in optimized.graph.node if n.domain == "com.microsoft"]
    assert fused.count("Attention") == 2 and "EmbedLayerNormalization" in fused
    feeds = {"ids": ids, "mask": mask, "types": types}
    plain_out, plain = _forward_backward(onnx.load(str(source)), feeds)
    fused_out, grads = _forward_backward(optimized, feeds)
    assert torch.allclose(fused_out, plain_out, atol=1e-5)
    shared = [n for n in plain if n in grads and grads[n].shape == plain[n].shape]
    assert any("word_embeddings" in n for n in shared) and len(shared) >= 20
    for name in shared:
        assert _close(grads[name], plain[name]), name
