"""The physical order of a tensor's axes through views, against torch's own strides."""

from __future__ import annotations

import math
import random

import pytest

from toolkit.layout import reshaped, transposed

torch = pytest.importorskip("torch")


def _torch_order(t) -> list[int]:
    """Axes of more than one element, outermost in memory first (by stride)."""
    return sorted((a for a in range(t.dim()) if t.shape[a] > 1), key=lambda a: -t.stride(a))


def _wide(order, shape) -> list[int]:
    return [a for a in order if shape[a] > 1]


def _random_reshape(rng: random.Random, shape: list[int]) -> list[int]:
    """Split one axis into two factors, merge two neighbours, or add or drop an axis of one."""
    shape = list(shape)
    how = rng.choice(["split", "merge", "one"])
    if how == "split":
        k = rng.randrange(len(shape))
        factors = [f for f in range(1, shape[k] + 1) if shape[k] % f == 0]
        f = rng.choice(factors)
        return [*shape[:k], f, shape[k] // f, *shape[k + 1:]]
    if how == "merge" and len(shape) > 1:
        k = rng.randrange(len(shape) - 1)
        return [*shape[:k], shape[k] * shape[k + 1], *shape[k + 2:]]
    if 1 in shape and rng.random() < 0.5:
        k = shape.index(1)
        return shape[:k] + shape[k + 1:]
    k = rng.randrange(len(shape) + 1)
    return [*shape[:k], 1, *shape[k:]]


@pytest.mark.parametrize("seed", range(40))
def test_transposes_and_reshapes_lay_axes_out_as_torch_does(seed):
    """Random chains of permutes and reshapes (splits, merges, axes of one element, batches of
    one among them): after each step the axes of more than one element lie in memory in the
    order torch's strides say, whether torch viewed or copied."""
    rng = random.Random(seed)
    shape = [rng.choice([1, 2, 3, 4, 6]) for _ in range(rng.randint(2, 5))]
    t = torch.empty(shape)
    order = tuple(range(len(shape)))
    for _ in range(8):
        if rng.random() < 0.5:
            perm = list(range(t.dim()))
            rng.shuffle(perm)
            t, order = t.permute(perm), transposed(order, perm)
        else:
            dst = _random_reshape(rng, list(t.shape))
            order = reshaped(order, list(t.shape), dst)
            t = t.reshape(dst)
        assert _wide(order, list(t.shape)) == _torch_order(t), (seed, list(t.shape))


def test_heads_split_and_merged_back_as_multi_head_attention_does():
    """torch's multi-head attention at batch 2: q is (L, B x H, D) transposed and viewed as
    (B, H, L, D); merging the heads back with permute(2, 0, 1, 3) reads memory in order (a
    view), with permute(0, 2, 1, 3) it does not. At batch 1 the order still places the batch."""
    for batch in (2, 1):
        length, heads, size = 5, 3, 4
        q = torch.empty(length, batch * heads, size).transpose(0, 1).reshape(
            batch, heads, length, size)
        order = reshaped(transposed((0, 1, 2), [1, 0, 2]), [batch * heads, length, size],
                         [batch, heads, length, size])
        assert order == (2, 0, 1, 3)
        if batch > 1:
            assert _wide(order, list(q.shape)) == _torch_order(q)
        assert transposed(order, [2, 0, 1, 3]) == (0, 1, 2, 3)
        assert q.permute(2, 0, 1, 3).is_contiguous()
        assert transposed(order, [0, 2, 1, 3]) != (0, 1, 2, 3)


def test_a_graphs_views_are_followed_back_and_a_malformed_permutation_is_a_copy():
    """physical_order walks a graph: x made by a MatMul (contiguous), reshaped to heads and
    transposed, lies (sequence, heads, head size) with the heads second; a transpose whose
    permutation is not one (a hostile file) is taken as a copy, never an error."""
    from toolkit.graph import Layer, Tensor
    from toolkit.layout import physical_order

    def tensor(name, shape, producer):
        return Tensor(name, shape, "float32", 4 * math.prod(shape), producer)

    for perm, wanted in (("[1, 0, 2]", (1, 0, 2)), ("[1, 1, 2]", (0, 1, 2))):
        layers = [Layer("mm", "MatMul", ("in",), ("x",)),
                  Layer("r", "Reshape", ("x",), ("h",)),
                  Layer("t", "Transpose", ("h",), ("q",), attrs=f"perm={perm}")]
        tensors = {"x": tensor("x", (5, 12), "mm"), "h": tensor("h", (5, 3, 4), "r"),
                   "q": tensor("q", (3, 5, 4), "t")}
        producer = {"x": 0, "h": 1, "q": 2}
        assert physical_order(layers, producer, tensors, "q") == wanted


def _random_view(rng: random.Random, t):
    """One op of a chain and what torch makes of it: a permute, a reshape (a view or a copy,
    as torch decides), a select, a narrowing slice, an unsqueeze or an expansion."""
    how = rng.choice(["Transpose", "Reshape", "Gather", "Slice", "Unsqueeze", "Expand"])
    wide = [a for a in range(t.dim()) if t.shape[a] > 1]
    if how == "Gather" and t.dim() > 1:
        axis = rng.randrange(t.dim())
        return how, t.select(axis, rng.randrange(t.shape[axis]))
    if how == "Slice" and wide:
        axis = rng.choice(wide)
        length = rng.randrange(1, t.shape[axis])
        return how, t.narrow(axis, rng.randrange(t.shape[axis] - length + 1), length)
    if how == "Unsqueeze":
        return how, t.unsqueeze(rng.randrange(t.dim() + 1))
    if how == "Expand" and 1 in t.shape:
        return how, t.expand(*(3 if n == 1 else n for n in t.shape))
    if how == "Reshape":
        return how, t.reshape(_random_reshape(rng, list(t.shape)))
    perm = list(range(t.dim()))
    rng.shuffle(perm)
    return "Transpose", t.permute(perm)


@pytest.mark.parametrize("seed", range(40))
def test_storages_name_a_view_only_where_torch_shares_the_storage(seed):
    """Random chains of views and reshapes from one computed tensor: each tensor `storages`
    calls a view shares its root's storage in torch, and each it says reads that storage in
    order is contiguous; what it cannot tell it leaves its own (a copy, or an uncounted view).
    The first op, a permute, is always a view."""
    from toolkit.graph import Layer, Tensor
    from toolkit.layout import storages

    rng = random.Random(seed)
    shape = [rng.choice([1, 2, 3, 4]) for _ in range(rng.randint(2, 4))]
    made = {"t0": torch.empty(shape)}
    layers = [Layer("make", "MatMul", ("in",), ("t0",))]
    tensors = {"t0": Tensor("t0", tuple(shape), "float32", 4 * math.prod(shape), "make")}
    for k in range(1, 12):
        how, new = _random_view(rng, made[f"t{k - 1}"]) if k > 1 else (
            "Transpose", made["t0"].permute(*reversed(range(len(shape)))))
        layers.append(Layer(f"l{k}", how, (f"t{k - 1}",), (f"t{k}",)))
        tensors[f"t{k}"] = Tensor(f"t{k}", tuple(new.shape), "float32", 4 * new.numel(), f"l{k}")
        made[f"t{k}"] = new
    views = storages(layers, tensors, {})
    assert "t1" in views.root
    for name, root in views.root.items():
        assert made[name].untyped_storage().data_ptr() == made[root].untyped_storage().data_ptr()
    for name in views.in_order:
        assert made[name].is_contiguous(), (seed, name)
