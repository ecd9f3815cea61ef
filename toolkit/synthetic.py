"""Synthetic deep models as LayerGraphs, for scaling benchmarks and property tests. Pure.

A block template is a small DAG: `(op, macs, params, out_elems, preds)` per layer, where preds
index earlier layers of the block and -1 is the block's entry (the previous block's last layer).
Stacking a template gives deep models with realistic repeated structure at any depth, without
exporting anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from toolkit.graph import Layer, LayerGraph, Tensor


@dataclass(frozen=True)
class Spec:
    op: str
    macs: float
    params: int
    out_elems: int
    preds: tuple[int, ...]


def _transformer_block(d: int = 768, seq: int = 128) -> list[Spec]:
    """Pre-norm transformer layer: attention sub-layer and MLP sub-layer, each with a residual."""
    t = seq * d
    return [
        Spec("LayerNormalization", 0, 2 * d, t, (-1,)),
        Spec("MatMul", 3 * t * d, 3 * d * d, 3 * t, (0,)),  # qkv
        Spec("MatMul", seq * seq * d, 0, 12 * seq * seq, (1,)),  # scores
        Spec("Softmax", 0, 0, 12 * seq * seq, (2,)),
        Spec("MatMul", seq * seq * d, 0, t, (3, 1)),  # weighted values
        Spec("MatMul", t * d, d * d, t, (4,)),  # output projection
        Spec("Add", 0, 0, t, (5, -1)),
        Spec("LayerNormalization", 0, 2 * d, t, (6,)),
        Spec("MatMul", 4 * t * d, 4 * d * d, 4 * t, (7,)),
        Spec("Gelu", 0, 0, 4 * t, (8,)),
        Spec("MatMul", 4 * t * d, 4 * d * d, t, (9,)),
        Spec("Add", 0, 0, t, (10, 6)),
    ]


def _residual_block(c: int = 256, hw: int = 28 * 28) -> list[Spec]:
    """ResNet bottleneck: 1x1, 3x3, 1x1 convolutions with BatchNorm, a skip, a ReLU."""
    m = c // 4
    return [
        Spec("Conv", hw * m * c, m * c, hw * m, (-1,)),
        Spec("BatchNormalization", 0, 2 * m, hw * m, (0,)),
        Spec("Relu", 0, 0, hw * m, (1,)),
        Spec("Conv", hw * m * m * 9, m * m * 9, hw * m, (2,)),
        Spec("BatchNormalization", 0, 2 * m, hw * m, (3,)),
        Spec("Relu", 0, 0, hw * m, (4,)),
        Spec("Conv", hw * c * m, c * m, hw * c, (5,)),
        Spec("BatchNormalization", 0, 2 * c, hw * c, (6,)),
        Spec("Add", 0, 0, hw * c, (7, -1)),
        Spec("Relu", 0, 0, hw * c, (8,)),
    ]


TEMPLATES = {"transformer": _transformer_block, "residual": _residual_block}


def stack(template: Sequence[Spec], repeats: int, name: str = "synthetic") -> LayerGraph:
    """`repeats` copies of `template` after one input layer, as a validated LayerGraph."""
    layers: list[Layer] = []
    tensors: dict[str, Tensor] = {"x": Tensor("x", (1,), "float32", 4, None)}
    first = template[0]
    layers.append(Layer("stem", "Identity", ("x",), ("stem",), 0.0, 0.0, 0, 0, 4,
                        first.out_elems * 4, reads_input=True))
    tensors["stem"] = Tensor("stem", (first.out_elems,), "float32", first.out_elems * 4, "stem")
    entry = "stem"
    for b in range(repeats):
        names = [f"b{b}.l{j}" for j in range(len(template))]
        for j, spec in enumerate(template):
            inputs = tuple(entry if p < 0 else names[p] for p in spec.preds)
            out_bytes = spec.out_elems * 4
            layers.append(Layer(
                names[j], spec.op, inputs, (names[j],),
                flops=2 * spec.macs + spec.out_elems, macs=spec.macs, params=spec.params,
                param_bytes=4 * spec.params,
                in_bytes=sum(tensors[i].bytes for i in inputs), out_bytes=out_bytes,
                attrs=f"template={j}",
            ))
            tensors[names[j]] = Tensor(names[j], (spec.out_elems,), "float32", out_bytes,
                                       names[j])
        entry = names[-1]
    return LayerGraph.build(name, layers, tensors, ["x"], [entry])


def deep_model(kind: str, layers: int) -> LayerGraph:
    """About `layers` layers of stacked `kind` blocks ('transformer' or 'residual')."""
    template = TEMPLATES[kind]()
    return stack(template, max(1, layers // len(template)), f"{kind}-{layers}")
