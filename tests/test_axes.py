"""An axis of the inputs followed through a graph: which layer combines it, which takes it as
its batch (`toolkit.onnx.axes`, the reader's test of a guessed batch)."""

from __future__ import annotations

import pytest

from toolkit.graph import Layer
from toolkit.onnx.axes import follow_axis

N, L, H, D = 3, 7, 2, 5  # batch, sequence, heads, head size: all different


def _attention() -> tuple[list[tuple[Layer, tuple[str, ...]]], dict[str, tuple[int, ...]]]:
    """Batch-first multi-head self-attention as PyTorch exports it (heads split off by a
    reshape, merged into the batch by another, attention as batched products), then a
    batch norm over the features (N, C, L)."""
    def step(op: str, slots: tuple[str, ...], out: str, attrs: str = "") -> tuple[
            Layer, tuple[str, ...]]:
        return Layer(out, op, tuple(s for s in slots if not s.startswith("w")), (out,),
                     attrs=attrs), slots

    steps = [
        step("MatMul", ("x", "w_qkv"), "q"),
        step("Reshape", ("q", "w_shape"), "q4"),
        step("Transpose", ("q4",), "qh", "perm=[0, 2, 1, 3]"),
        step("Reshape", ("qh", "w_shape"), "qm"),  # heads merged into the batch
        step("Transpose", ("qm",), "kt", "perm=[0, 2, 1]"),
        step("MatMul", ("qm", "kt"), "scores"),
        step("Softmax", ("scores",), "p", "axis=-1"),
        step("MatMul", ("p", "qm"), "o"),
        step("Reshape", ("o", "w_shape"), "o4"),  # heads split off again
        step("Transpose", ("o4",), "ot", "perm=[0, 3, 1, 2]"),
        step("Reshape", ("ot", "w_shape"), "features"),  # (N, H*D, L)
        step("BatchNormalization", ("features", "w_s", "w_b", "w_m", "w_v"), "y"),
    ]
    shapes = {"x": (N, L, H * D), "q": (N, L, H * D), "q4": (N, L, H, D), "qh": (N, H, L, D),
              "qm": (N * H, L, D), "kt": (N * H, D, L), "scores": (N * H, L, L),
              "p": (N * H, L, L), "o": (N * H, L, D), "o4": (N, H, L, D), "ot": (N, D, H, L),
              "features": (N, D * H, L), "y": (N, D * H, L)}
    return steps, shapes


def test_the_batch_survives_heads_merged_into_it_and_reaches_a_batch_norm():
    steps, shapes = _attention()
    fate = follow_axis(steps, shapes, {"x": 0}, N, 17)
    assert fate.combined_by is None
    assert fate.batch_of is not None and fate.batch_of.op == "BatchNormalization"


@pytest.mark.parametrize(("axis", "size", "by"), [(1, L, "scores"), (2, H * D, "q")])
def test_the_sequence_meets_itself_in_attention_and_the_features_in_a_product(axis, size, by):
    steps, shapes = _attention()
    fate = follow_axis(steps, shapes, {"x": axis}, size, 17)
    assert fate.combined_by is not None and fate.combined_by.name == by
    assert fate.batch_of is None


@pytest.mark.parametrize(("regrouped", "combined"), [((6, 5, 1), True), ((2, 3, 5), False)])
def test_an_axis_a_reshape_splits_in_two_is_lost_not_combined(regrouped, combined):
    reshape = Layer("reshape", "Reshape", ("x",), ("r",))
    total = Layer("sum", "ReduceSum", ("r",), ("y",), attrs="axes=[0, 1];keepdims=0")
    shapes = {"x": (6, 5), "r": regrouped, "y": regrouped[2:]}
    fate = follow_axis([(reshape, ("x", "shape")), (total, ("r",))], shapes, {"x": 0}, 6, 17)
    assert (fate.combined_by is total) is combined


@pytest.mark.parametrize(("op", "attrs", "out", "combined"), [
    ("ReduceMean", "axes=[1];keepdims=0", (N, H * D), True),
    ("ReduceMean", "axes=[0];keepdims=1", (1, L, H * D), False),
    ("ReduceMean", "keepdims=0", (N, H * D), True),  # axes as an input: the shapes tell
    ("LayerNormalization", "axis=-1", (N, L, H * D), False),
    ("LayerNormalization", "axis=1", (N, L, H * D), True),
    ("Softmax", "axis=1", (N, L, H * D), True),
    ("TopK", "axis=1", (N, 2, H * D), True),
    ("Slice", "", (N, 2, H * D), False),  # picks steps: evidence of nothing
])
def test_what_combines_the_sequence_and_what_only_picks_from_it(op, attrs, out, combined):
    layer = Layer("op", op, ("x",), ("y",), attrs=attrs)
    fate = follow_axis([(layer, ("x",))], {"x": (N, L, H * D), "y": out}, {"x": 1}, L, 17)
    assert (fate.combined_by is layer) is combined


def test_two_tensors_carrying_the_axis_on_different_axes_combine_it():
    outer = Layer("outer", "Mul", ("a", "b"), ("y",))
    shapes = {"a": (L, 1), "b": (1, L), "y": (L, L)}  # every step against every step
    fate = follow_axis([(outer, ("a", "b"))], shapes, {"a": 0, "b": 1}, L, 17)
    assert fate.combined_by is outer
    same = follow_axis([(outer, ("a", "b"))], {**shapes, "b": (L, 1), "y": (L, 1)},
                       {"a": 0, "b": 0}, L, 17)
    assert same.combined_by is None


def test_a_recurrent_layer_runs_along_time_and_names_its_batch_by_layout():
    lstm = Layer("lstm", "LSTM", ("x",), ("y", "h"), attrs="hidden_size=4")
    shapes = {"x": (L, N, D), "y": (L, 1, N, 4), "h": (1, N, 4)}
    assert follow_axis([(lstm, ("x", "w", "r"))], shapes, {"x": 0}, L, 17).combined_by is lstm
    fate = follow_axis([(lstm, ("x", "w", "r"))], shapes, {"x": 1}, N, 17)
    assert fate.combined_by is None and fate.batch_of is lstm
    states = Layer("lstm", "LSTM", ("x",), ("h",), attrs="hidden_size=4")  # Y left out
    assert follow_axis([(states, ("x", "w", "r"))], shapes, {"x": 1}, N, 17).where["h"].at == 1
    first = Layer("lstm", "LSTM", ("x",), ("y",), attrs="hidden_size=4;layout=1")
    assert follow_axis([(first, ("x", "w", "r"))], {"x": (N, L, D), "y": (N, L, 1, 4)},
                       {"x": 0}, N, 17).batch_of is first


def test_a_class_token_joined_to_the_patches_keeps_the_batch_where_it_was():
    join = Layer("join", "Concat", ("token", "patches"), ("y",), attrs="axis=1")
    shapes = {"token": (N, 1, D), "patches": (N, L, D), "y": (N, L + 1, D)}
    fate = follow_axis([(join, ("token", "patches"))], shapes, {"patches": 0}, N, 17)
    assert fate.where["y"] == fate.where["patches"]
    along = follow_axis([(join, ("token", "patches"))], shapes, {"patches": 1}, L, 17)
    assert "y" not in along.where  # steps joined along it: lost


def test_any_layer_with_any_shapes_gives_an_answer_never_an_exception():
    """Hostile files: attributes and inferred shapes that disagree with the operator."""
    import random

    from toolkit.onnx import axes

    rng = random.Random(0)
    ops = sorted(axes._BATCH_FIRST | axes._RESHAPES | axes._SOFTMAX | axes._REDUCTIONS
                 | axes._RECURRENT | axes._ALONG_OTHERS | axes._SAME_SHAPE
                 | {"MatMul", "Gemm", "Transpose", "Add", "Expand", "LayerNormalization", "Foo"})
    attrs = ["", "axis=-1", "axis=7", "axes=[]", "axes=[0, -1]", "perm=[2, 0]", "perm=[]",
             "layout=1", "transA=1;transB=1", "keepdims=0", "axis=0;keepdims=0"]

    def shape() -> tuple[int, ...]:
        return tuple(rng.choice([0, 1, 2, 3, 6]) for _ in range(rng.randrange(0, 5)))

    for case in range(3000):
        names = ["x"]
        steps, shapes = [], {"x": shape() or (3,)}
        for k in range(4):
            slots = tuple(rng.choice([*names, "", "w"]) for _ in range(rng.randrange(1, 4)))
            outs = tuple(f"t{k}_{j}" for j in range(rng.randrange(1, 3)))
            layer = Layer(f"l{k}", rng.choice(ops), tuple(s for s in slots if s in names), outs,
                          attrs=rng.choice(attrs))
            steps.append((layer, slots))
            shapes.update({o: shape() if rng.random() > 0.1 else None for o in outs})
            names += outs
        fate = follow_axis(steps, shapes, {"x": rng.randrange(len(shapes["x"]))}, 3, 17)
        for name, axis in fate.where.items():
            assert shapes[name] is not None and 0 <= axis.at < len(shapes[name]), case


def test_a_split_into_a_sequence_and_one_piece_taken_back_keeps_the_batch():
    """The dynamo exporter splits a fused QKV projection with SplitToSequence (the reader
    gives the sequence its whole input's shape) and takes each piece with SequenceAt."""
    def steps(split_axis: int) -> list[tuple[Layer, tuple[str, ...]]]:
        return [(Layer("split", "SplitToSequence", ("qkv",), ("seq",),
                       attrs=f"axis={split_axis};keepdims=1"), ("qkv", "sizes")),
                (Layer("q", "SequenceAt", ("seq",), ("q",)), ("seq", "zero"))]

    shapes = {"qkv": (N, L, 3 * D), "seq": (N, L, 3 * D), "q": (N, L, D)}
    assert follow_axis(steps(2), shapes, {"qkv": 0}, N, 18).where["q"].at == 0
    assert "q" not in follow_axis(steps(0), shapes, {"qkv": 0}, N, 18).where  # split along it


@pytest.mark.parametrize(("equation", "axis", "size", "where"), [
    ("bqd,bkd->bqk", 0, N, 0),  # attention's scores: the batch stays
    ("bqd,bkd->bqk", 1, L, "combined"),  # the steps meet the steps
    ("bld,de->ble", 2, D, "combined"),  # a projection (by a weight) contracts the features
    ("bld,de", 1, L, 2),  # implicit output: the letters that occur once, sorted: "bel"
    ("...d,de->...e", 0, N, "lost"),  # an ellipsis: not followed
])
def test_einsum_keeps_what_its_output_keeps_and_combines_what_it_drops(equation, axis, size,
                                                                        where):
    extent = {"b": N, "q": L, "k": L, "l": L, "d": D, "e": 4, ".": None}
    first, second = equation.split("->")[0].split(",")
    weighted = "e" in second  # the second operand is a weight: not followed
    layer = Layer("e", "Einsum", ("a",) if weighted else ("a", "b"), ("y",),
                  attrs=f"equation={equation!r}")
    shapes = {"a": (N, L, D) if "." in first else tuple(extent[c] for c in first),
              "b": tuple(extent[c] for c in second), "y": (N, L, L)}
    sources = {"a": axis} if weighted else {"a": axis, "b": axis}
    fate = follow_axis([(layer, ("a", "w" if weighted else "b"))], shapes, sources, size, 17)
    if where == "combined":
        assert fate.combined_by is layer
    elif where == "lost":
        assert fate.combined_by is None and "y" not in fate.where
    else:
        assert fate.combined_by is None and fate.where["y"].at == where
