"""onnxruntime's contrib operators (domain com.microsoft) as torch functions, so a model saved
by onnxruntime's graph optimizer (`SessionOptions.optimized_model_filepath`) or its transformer
optimizer (`onnxruntime.transformers.optimizer`) trains split as its source does.

Each is the fusion of standard operators that onnxruntime's documentation gives
(docs/ContribOperators.md) and its CPU kernels compute, checked against those kernels node by
node. Only the float operators its CPU provider runs are here: the quantized ones hold no
trainable weights, and the fusions only its GPU providers run (BiasAdd, BiasSoftmax,
GemmFastGelu, NhwcConv, GroupNorm, ...) are refused by name, as any operator with no torch
function is.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from toolkit.ops import CONTRIB
from toolkit.train.ops import (
    OPS,
    Attrs,
    Value,
    conv,
    gemm,
    op,
    rms_normalised,
    rotary_embedding,
)


def _activated(y: torch.Tensor, name: Any, attrs: Attrs) -> torch.Tensor:
    """`y` through the standard activation `name` with `attrs` (none for an empty name)."""
    if not name:
        return y
    fn = OPS.get(str(name))
    if fn is None:
        raise NotImplementedError(f"fused activation {name}")
    return fn(attrs, [y])[0]


_CONV_PARAMETERS = {"LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta"),
                    "Clip": ("min", "max")}
"""How FusedConv's `activation_params` list names its activation's attributes."""


@op(CONTRIB + "FusedConv")
def fused_conv(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """activation(Conv(X, W, B) + Z): the Z summand where given."""
    y = conv(a, x[:3])[0]
    if len(x) > 3 and x[3] is not None:
        y = y + x[3]
    name = a.get("activation", "")
    params = dict(zip(_CONV_PARAMETERS.get(str(name), ()), a.get("activation_params", []),
                      strict=False))
    return (_activated(y, name, params),)


@op(CONTRIB + "FusedGemm")
def fused_gemm(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """activation(Gemm(A, B, C)), the activation's alpha, beta and gamma as attributes."""
    params = {key: a[f"activation_{key}"] for key in ("alpha", "beta", "gamma")
              if f"activation_{key}" in a}
    return (_activated(gemm(a, x)[0], a.get("activation", ""), params),)


def _batch_transposed(t: torch.Tensor) -> torch.Tensor:
    """A FusedMatMul operand stored with its row axis first, (rows, batch..., columns), as
    (batch..., rows, columns)."""
    return t.movedim(0, -2) if t.dim() > 2 else t


@op(CONTRIB + "FusedMatMul", CONTRIB + "TransposeMatMul")
def fused_matmul(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """alpha * A @ B, each operand optionally batch-transposed, then transposed."""
    left, right = x[0], x[1]
    if a.get("transBatchA", 0):
        left = _batch_transposed(left)
    if a.get("transBatchB", 0):
        right = _batch_transposed(right)
    if a.get("transA", 0):
        left = left.transpose(-1, -2)
    if a.get("transB", 0):
        right = right.transpose(-1, -2)
    out = left @ right
    alpha = float(a.get("alpha", 1.0))
    return (out * alpha if alpha != 1.0 else out,)


def _biased(x: list[Value]) -> torch.Tensor:
    """The first input plus the optional bias after it."""
    return x[0] + x[1] if len(x) > 1 and x[1] is not None else x[0]


@op(CONTRIB + "Gelu", CONTRIB + "BiasGelu")
def gelu(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """The exact (erf) GELU of x (+ bias)."""
    return (F.gelu(_biased(x)),)


@op(CONTRIB + "FastGelu")
def fast_gelu(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """The tanh approximation of GELU of x (+ bias)."""
    return (F.gelu(_biased(x), approximate="tanh"),)


@op(CONTRIB + "QuickGelu")
def quick_gelu(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """x * sigmoid(alpha x), as SiLU(alpha x) / alpha: alpha 1.702 approximates GELU, 1 is
    SiLU (Swish), which PyTorch's fused SiLU computes keeping only its input."""
    alpha = float(a.get("alpha", 1.702))
    return (F.silu(x[0]) if alpha == 1.0 else F.silu(alpha * x[0]) / alpha,)


def _skip_sum(x: list[Value], bias: int) -> torch.Tensor:
    """input + skip (+ the bias at input `bias`): what a skip normalisation normalises."""
    total = x[0] + x[1]
    return total + x[bias] if len(x) > bias and x[bias] is not None else total


def _normalised(total: torch.Tensor, scale: torch.Tensor, shift: Value, epsilon: float,
                centred: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNorm (`centred`: PyTorch's, which keeps its input and two float32 statistics per
    row) or RMSNorm (in float32, cast back: ONNX's RMSNormalization's way) of `total` over its
    last axis, with the mean and inverse standard deviation onnxruntime's optional outputs
    give (no gradient flows back through those)."""
    if centred:
        with torch.no_grad():
            wide = total.float()
            mean = wide.mean(-1, keepdim=True)
            inv = torch.rsqrt((wide - mean).square().mean(-1, keepdim=True) + epsilon)
        return F.layer_norm(total, total.shape[-1:], scale, shift, epsilon), mean, inv
    normed, root = rms_normalised(total, -1, epsilon)
    return normed.to(total.dtype) * scale, torch.zeros_like(root), root.detach()


@op(CONTRIB + "SkipLayerNormalization")
def skip_layer_norm(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """LayerNorm(input + skip + bias) with gamma and beta; outputs the result, its mean and
    inverse standard deviation, and the sum it normalised (the next residual's input)."""
    total = _skip_sum(x, 4)
    y, mean, inv = _normalised(total, x[2], x[3] if len(x) > 3 else None,
                               float(a.get("epsilon", 1e-12)), centred=True)
    return y, mean, inv, total


@op(CONTRIB + "SkipSimplifiedLayerNormalization")
def skip_simplified_layer_norm(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """RMSNorm(input + skip + bias) with gamma; outputs as SkipLayerNormalization's."""
    total = _skip_sum(x, 3)
    y, mean, inv = _normalised(total, x[2], None, float(a.get("epsilon", 1e-12)),
                               centred=False)
    return y, mean, inv, total


@op("SimplifiedLayerNormalization")
def simplified_layer_norm(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """onnxruntime's RMSNorm, registered in ONNX's own domain: x over the root mean square of
    its axes from `axis` on, times the scale; and the inverse of that root."""
    normed, root = rms_normalised(x[0], int(a.get("axis", -1)), float(a.get("epsilon", 1e-5)))
    return normed.to(x[0].dtype) * x[1], root


@op(CONTRIB + "EmbedLayerNormalization")
def embed_layer_norm(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """BERT's embeddings: word + position (+ segment) embeddings looked up and summed, then
    LayerNorm; outputs the result, the mask index (each sample's count of unmasked tokens, or
    0s without a mask) and the sum before normalisation."""
    ids, segments, words, positions, segment_table, gamma, beta, mask, position_ids = \
        (*x, *[None] * 9)[:9]
    batch, sequence = ids.shape
    if position_ids is None:
        position_ids = torch.arange(sequence, device=ids.device).expand(batch, sequence)
    total = words[ids.long()] + positions[position_ids.long().expand(batch, sequence)]
    if segments is not None and segment_table is not None:
        total = total + segment_table[segments.long()]
    y, _, _ = _normalised(total, gamma, beta, float(a.get("epsilon", 1e-12)), centred=True)
    index = mask.to(torch.int32).sum(-1, dtype=torch.int32) if mask is not None \
        else torch.zeros(batch, dtype=torch.int32, device=ids.device)
    return y, index, total


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, sequence, heads x size) -> (batch, heads, sequence, size)."""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def _key_mask(mask: Value, batch: int, queries: int, keys: int) -> Value:
    """A key mask as a boolean (batch, 1, queries or 1, keys), True where a key may be
    attended: from each sample's count of valid keys (batch,), a 0/1 mask of each sample's
    keys (batch, keys) or of each query's (batch, queries, keys); None for none."""
    if mask is None:
        return None
    if mask.dim() == 1 and mask.shape[0] == batch:  # right padding: the valid keys' count
        allowed = torch.arange(keys, device=mask.device) < mask.reshape(-1, 1)
        return allowed.reshape(batch, 1, 1, keys)
    if mask.dim() == 2:
        return (mask != 0).reshape(batch, 1, 1, -1)[..., -keys:]
    if mask.dim() == 3:
        return (mask != 0).reshape(batch, 1, queries, -1)[..., -keys:]
    raise NotImplementedError(f"an attention mask of shape {tuple(mask.shape)}")


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: Attrs, allowed: Value,
            bias: Value) -> torch.Tensor:
    """softmax(scale q k^T + bias + mask) v, onnxruntime's way: a masked score gets
    `mask_filter_value` (-10000) added rather than -inf, `unidirectional` masks a key after
    its query (offset by the cached keys) with the lowest finite value, and the softmax is
    taken in float32 (in a 16-bit model too)."""
    scale = float(a["scale"]) if a.get("scale", 0.0) else 1 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    if allowed is not None:
        fill = float(a.get("mask_filter_value", -10000.0))
        scores = scores + torch.where(allowed, 0.0, fill).to(scores.dtype)
    if int(a.get("unidirectional", 0)):
        queries, keys = scores.shape[-2:]
        later = torch.arange(keys, device=q.device) > \
            torch.arange(queries, device=q.device).reshape(-1, 1) + (keys - queries)
        scores = scores.masked_fill(later, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, -1, dtype=torch.float32).to(v.dtype) @ v


@op(CONTRIB + "Attention")
def attention(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Self-attention with its input projection: input (batch, sequence, width) times weights
    (width, q + k + v widths, `qkv_hidden_sizes` or three equal) plus bias, split into
    `num_heads` heads; keys and values from `past` (2, batch, heads, past, size) prepended and
    returned as `present`; an optional key mask (`mask_index`) and additive attention bias."""
    data, weights, bias, mask, past, attention_bias = (*x, *[None] * 6)[:6]
    if int(a.get("do_rotary", 0)):
        raise NotImplementedError("Attention with do_rotary")
    heads = int(a["num_heads"])
    sizes = a.get("qkv_hidden_sizes") or [weights.shape[1] // 3] * 3
    projected = data @ weights
    if bias is not None:
        projected = projected + bias
    q, k, v = (_heads(t, heads) for t in projected.split(list(sizes), -1))
    if past is not None:
        k, v = torch.cat((past[0], k), 2), torch.cat((past[1], v), 2)
    batch, queries = data.shape[:2]
    allowed = _key_mask(mask, batch, queries, k.shape[2])
    y = _attend(q, k, v, a, allowed, attention_bias)
    present = torch.stack((k, v)) if k.shape == v.shape else None  # (only of equal sizes)
    return y.transpose(1, 2).flatten(-2), present


@op(CONTRIB + "MultiHeadAttention")
def multi_head_attention(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Attention of projected queries, keys and values: query (batch, sequence, width); key and
    value (batch, keys, width) or already in heads (batch, heads, keys, size); an optional
    bias of the three widths added to the unsplit ones; a key padding mask, an attention
    bias, and past keys and values (batch, heads, past, size) prepended and returned as
    present."""
    query, key, value, bias, mask, attention_bias, past_k, past_v = (*x, *[None] * 8)[:8]
    heads = int(a["num_heads"])
    if key is None:  # (onnxruntime's CPU kernel does not take them either)
        raise NotImplementedError("MultiHeadAttention of packed queries, keys and values")
    q = query
    if bias is not None:
        width = query.shape[-1]  # (the keys' width is the queries', the values' may differ)
        q_bias, k_bias, v_bias = bias.split([width, width, bias.shape[0] - 2 * width])
        q = query + q_bias
        key = key + k_bias if key.dim() == 3 else key
        value = value + v_bias if value.dim() == 3 else value
    q = _heads(q, heads)
    k = _heads(key, heads) if key.dim() == 3 else key
    v = _heads(value, heads) if value.dim() == 3 else value
    if past_k is not None:
        k, v = torch.cat((past_k, k), 2), torch.cat((past_v, v), 2)
    batch, queries = query.shape[:2]
    allowed = _key_mask(mask, batch, queries, k.shape[2])
    y = _attend(q, k, v, a, allowed, attention_bias)
    return y.transpose(1, 2).flatten(-2), k, v


@op(CONTRIB + "RotaryEmbedding")
def ms_rotary_embedding(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """ONNX's RotaryEmbedding with onnxruntime's input order (input, position_ids, cos, sin),
    where a one-element position_ids is the first position of every sample's sequence."""
    data, positions, cos, sin = x[0], x[1], x[2], x[3]
    sequence = data.shape[1] if data.dim() == 3 else data.shape[2]
    if positions.numel() == 1:
        positions = positions.reshape(1, 1) + torch.arange(sequence, device=positions.device)
        positions = positions.expand(data.shape[0], sequence)
    attrs = {key: value for key, value in a.items() if key in
             ("interleaved", "num_heads", "rotary_embedding_dim")}
    if data.dim() == 3 and "num_heads" not in attrs:  # (every head rotated whole)
        attrs["num_heads"] = data.shape[-1] // (2 * cos.shape[-1])
    return rotary_embedding(attrs, [data, cos, sin, positions.long()])


@op(CONTRIB + "ExpandDims")
def expand_dims(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (x[0].unsqueeze(int(x[1])),)


OPS.update({CONTRIB + name: OPS[name] for name in ("Trilu", "Range")})  # ONNX's, again


_GQA_REFUSED = ("head_sink", "k_scale", "v_scale", "q_norm_weight", "k_norm_weight",
                "query_seqlens")
"""GroupQueryAttention's inputs for sinks, quantized caches, per-head norms and packed
sequences, from input 11 on: refused by name, as its `position_ids`."""


@op(CONTRIB + "GroupQueryAttention")
def group_query_attention(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Causal attention of `num_heads` query heads over `kv_num_heads` key and value heads:
    query (batch, sequence, heads x size), or queries, keys and values packed in it; past keys
    and values (batch, kv heads, past, size) before the new ones, as present; each sample's
    keys up to `seqlens_k` (its total length less one: a prompt's padding follows) attended,
    a query at position p (its past plus its place) only keys up to p (and from
    p - `local_window_size`); rotary
    positions applied to queries and keys (`do_rotary`); a soft cap; an attention bias."""
    query, key, value, past_k, past_v, seqlens, _, cos, sin, positions, bias = \
        (*x, *[None] * 11)[:11]  # (position_ids: refused, their use is onnxruntime's own)
    refused = [name for name, v in zip(_GQA_REFUSED, x[11:], strict=False) if v is not None]
    refused += ["position_ids"] if positions is not None else []
    if refused or any(int(a.get(k, 0)) for k in ("smooth_softmax", "qk_output")):
        raise NotImplementedError(f"GroupQueryAttention with {', '.join(refused) or 'those'}")
    heads, kv_heads = int(a["num_heads"]), int(a["kv_num_heads"])
    batch, sequence = query.shape[:2]
    if key is None:  # packed: heads x size of queries, then of keys, then of values
        size = query.shape[-1] // (heads + 2 * kv_heads)
        query, key, value = query.split([heads * size, kv_heads * size, kv_heads * size], -1)
    q, k, v = _heads(query, heads), _heads(key, kv_heads), _heads(value, kv_heads)
    total = seqlens.long().reshape(-1) + 1  # each sample's keys
    # each sample's first query position: its past (a prompt starts at 0, its padding on
    # the right, after `total` keys)
    start = torch.zeros_like(total) if past_k is None else total - sequence
    if past_k is not None and bool((start != past_k.shape[2]).any()):
        raise NotImplementedError("GroupQueryAttention over a cache its samples fill unevenly")
    at = torch.arange(sequence, device=q.device)
    where = start.reshape(-1, 1) + at
    if int(a.get("do_rotary", 0)):
        rotate = {"interleaved": int(a.get("rotary_interleaved", 0))}
        q = rotary_embedding(rotate, [q, cos, sin, where])[0]
        k = rotary_embedding(rotate, [k, cos, sin, where])[0]
    if past_k is not None:
        k, v = torch.cat((past_k, k), 2), torch.cat((past_v, v), 2)
    present = (k, v)
    keys = torch.arange(k.shape[2], device=q.device)
    query_at = (start.reshape(-1, 1) + at).unsqueeze(-1)  # (batch, sequence, 1)
    allowed = keys < total.reshape(-1, 1, 1)
    if int(a.get("causal", 1)):
        allowed = allowed & (keys <= query_at)
    window = int(a.get("local_window_size", -1))
    if window >= 0:
        allowed = allowed & (keys > query_at - window)
    k, v = (t.repeat_interleave(heads // kv_heads, 1) for t in (k, v))
    scale = float(a["scale"]) if a.get("scale", 0.0) else 1 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-1, -2)) * scale
    cap = float(a.get("softcap", 0.0))
    if cap > 0:
        scores = cap * torch.tanh(scores / cap)
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))  # (never a whole row)
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(v.dtype)
    return ((probs @ v).transpose(1, 2).reshape(batch, sequence, -1), *present)
