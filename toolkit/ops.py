"""Per-op forward cost handles: a registry from ONNX op type to a function of shapes and attributes.

A handle returns FLOPs (a multiply-accumulate counts 2) and MACs (only for Conv/Gemm/MatMul-like
ops, the convention torchvision publishes as "GFLOPS"). Unknown ops get a conservative estimate and
are reported as unsupported by the reader, never fatal. Pure: no `onnx` import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OpFacts:
    """What a handle may look at: op type, attributes, and the shapes around the node."""

    op: str
    inputs: Sequence[Shape | None]
    outputs: Sequence[Shape | None]
    attrs: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class OpCost:
    flops: float
    macs: float = 0.0
    supported: bool = True


Handle = Callable[[OpFacts], OpCost]


def numel(shape: Shape | None) -> int:
    return math.prod(shape) if shape is not None else 0


def _out(f: OpFacts) -> int:
    return sum(numel(s) for s in f.outputs)


def _first_out(f: OpFacts) -> int:
    return numel(f.outputs[0]) if f.outputs else 0


def _in(f: OpFacts) -> int:
    return sum(numel(s) for s in f.inputs)


def _shape(f: OpFacts, i: int) -> Shape | None:
    return f.inputs[i] if i < len(f.inputs) else None


def per_output(factor: float) -> Handle:
    """Elementwise family: `factor` FLOPs per output element."""

    def handle(f: OpFacts) -> OpCost:
        return OpCost(factor * _first_out(f))

    return handle


def variadic(f: OpFacts) -> OpCost:
    """Sum/Mean/Max/Min of n inputs: n - 1 operations per output element."""
    return OpCost(_first_out(f) * max(1, sum(1 for s in f.inputs if s is not None) - 1))


def per_input(factor: float) -> Handle:
    """Reductions: every input element is read and combined once."""

    def handle(f: OpFacts) -> OpCost:
        return OpCost(factor * numel(_shape(f, 0)))

    return handle


def zero_cost(f: OpFacts) -> OpCost:
    """Data movement and shape plumbing: no arithmetic (the roofline charges memory traffic)."""
    return OpCost(0.0)


def conv_with(weight: int, bias: int) -> Handle:
    """Convolutions whose weight and bias are inputs `weight` and `bias` (QLinearConv keeps
    scales and zero points between them)."""

    def handle(f: OpFacts) -> OpCost:
        w = _shape(f, weight)
        if w is None:
            return unknown(f)
        macs = _first_out(f) * math.prod(w[1:])
        extra = _first_out(f) if _shape(f, bias) is not None else 0
        return OpCost(2.0 * macs + extra, macs)

    return handle


conv = conv_with(1, 2)


def conv_transpose(f: OpFacts) -> OpCost:
    x, w = _shape(f, 0), _shape(f, 1)
    if x is None or w is None:
        return unknown(f)
    macs = numel(x) * math.prod(w[1:])
    bias = _first_out(f) if _shape(f, 2) is not None else 0
    return OpCost(2.0 * macs + bias, macs)


def gemm(f: OpFacts) -> OpCost:
    a = _shape(f, 0)
    if a is None or len(a) != 2 or not f.outputs or f.outputs[0] is None:
        return unknown(f)
    k = a[0] if f.attrs.get("transA", 0) else a[1]
    macs = _first_out(f) * k
    bias = _first_out(f) if _shape(f, 2) is not None else 0
    return OpCost(2.0 * macs + bias, macs)


def matmul(f: OpFacts) -> OpCost:
    a = _shape(f, 0)
    if a is None or not a or not f.outputs or f.outputs[0] is None:
        return unknown(f)
    macs = _first_out(f) * a[-1]
    return OpCost(2.0 * macs, macs)


def size_conflict(f: OpFacts) -> str | None:
    """Why the sizes around a Reshape, MatMul or Gemm cannot be (None where they can): a
    Reshape that changes the element count, a product whose inner sizes differ. Such a node
    cannot run: its file fixes a size that the input sizes it is read at change
    (`SIZE_CHECKED`)."""
    a, b = _shape(f, 0), _shape(f, 1)
    out = f.outputs[0] if f.outputs else None
    if f.op == "Reshape" and a is not None and out is not None and numel(a) != numel(out):
        return f"Reshape of {a} ({numel(a):,} elements) into {out} ({numel(out):,})"
    if not a or not b:
        return None
    if f.op == "MatMul":
        inner = (a[-1], b[-2 if len(b) > 1 else 0])
    elif f.op == "Gemm" and len(a) == len(b) == 2:
        inner = (a[0 if f.attrs.get("transA") else 1], b[1 if f.attrs.get("transB") else 0])
    else:
        return None
    return f"{f.op} of {a} by {b}: the inner sizes differ" if inner[0] != inner[1] else None


SIZE_CHECKED = frozenset({"Reshape", "MatMul", "Gemm"})
"""Operators whose sizes `size_conflict` checks."""


def einsum(f: OpFacts) -> OpCost:
    """MACs of a contraction: the product of every index's extent (one MAC per index tuple)."""
    equation = str(f.attrs.get("equation", "")).replace(" ", "")
    operands = equation.split("->")[0].split(",")
    if len(operands) != len(f.inputs) or any(s is None for s in f.inputs):
        return unknown(f)
    sizes: dict[str, int] = {}
    ellipsis = 1
    for term, shape in zip(operands, f.inputs, strict=True):
        assert shape is not None
        letters = term.replace("...", "")
        if "..." in term:
            ellipsis = max(ellipsis, math.prod(shape[: len(shape) - len(letters)]))
        tail = shape[len(shape) - len(letters) :] if letters else ()
        for letter, extent in zip(letters, tail, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), extent)
    macs = math.prod(sizes.values()) * ellipsis
    if len(operands) == 1:
        return OpCost(float(macs))
    return OpCost(2.0 * macs, float(macs))


def pool(f: OpFacts) -> OpCost:
    kernel = f.attrs.get("kernel_shape")
    k = math.prod(kernel) if isinstance(kernel, list | tuple) else 1
    return OpCost(float(_first_out(f) * k))


def recurrent(gates: int) -> Handle:
    """RNN/GRU/LSTM: every step multiplies input and hidden state by the gate weights."""

    def handle(f: OpFacts) -> OpCost:
        x, w, r = _shape(f, 0), _shape(f, 1), _shape(f, 2)
        if x is None or w is None or r is None or len(x) < 2:
            return unknown(f)
        seq, batch = x[0], x[1]
        if f.attrs.get("layout", 0):
            seq, batch = x[1], x[0]
        macs = seq * batch * w[0] * w[1] * (w[2] + r[2])
        return OpCost(2.0 * macs + 4.0 * seq * batch * w[0] * w[1], float(macs))

    handle.__doc__ = f"Recurrent cell with {gates} gates."
    return handle


def attention(f: OpFacts) -> OpCost:
    """ONNX's Attention (opset 23; torch.onnx exports `scaled_dot_product_attention` as it
    from opset 23), counted as the graph it stands for, which older opsets spell out
    (`scaled_dot_product`), and a soft cap's divide, tanh and multiply (6 per score) where one
    is set. Keys of a `past_key` cache count with the new ones. Q, K and V 4-D (batch, heads,
    sequence, head size) or 3-D (batch, sequence, heads x head size, with
    `q_num_heads`/`kv_num_heads`)."""
    q, k, v, past = _shape(f, 0), _shape(f, 1), _shape(f, 2), _shape(f, 4)
    if q is None or k is None or v is None or not len(q) == len(k) == len(v) \
            or len(q) not in (3, 4) or (past is not None and len(past) != 4):
        return unknown(f)
    cached = past[2] if past is not None else 0
    if len(q) == 4:
        batch, heads, queries, head = q
        keys, v_head = k[2] + cached, v[3]
    else:
        heads, kv_heads = (int(_number_attr(f, name)) for name in ("q_num_heads",
                                                                   "kv_num_heads"))
        if heads <= 0 or kv_heads <= 0:
            return unknown(f)
        batch, queries, hidden = q
        head, keys, v_head = hidden // heads, k[1] + cached, v[2] // kv_heads
    scores = batch * heads * queries * keys
    masked = _shape(f, 3) is not None or bool(_number_attr(f, "is_causal"))
    cost = scaled_dot_product(scores, head, v_head, masked, numel(q) + numel(k) + numel(past))
    cap = 6 * scores if _number_attr(f, "softcap") > 0 else 0
    return OpCost(cost.flops + cap, cost.macs)


def scaled_dot_product(scores: int, head: int, v_head: int, masked: bool,
                       scaled: int) -> OpCost:
    """Attention over `scores` query-key pairs as exporters spell it out: the `scaled`
    elements of Q and K each multiplied by a root of the scale, Q x K^T and P x V (per score,
    head + v_head MACs), the mask or causal bias added (1 per score), the softmax (5, as
    `Softmax`)."""
    macs = scores * (head + v_head)
    return OpCost(2.0 * macs + (5.0 + masked) * scores + scaled, float(macs))


def _number_attr(f: OpFacts, name: str) -> float:
    """A numeric attribute, 0 when absent or not a number."""
    value = f.attrs.get(name, 0)
    return float(value) if isinstance(value, int | float) else 0.0


def affine_grid(f: OpFacts) -> OpCost:
    """AffineGrid: each of the r coordinates of each grid point is a row of theta (N, r,
    r + 1) times the point's homogeneous position (r + 1 MACs); PyTorch computes it as one
    batched product of the base grid by theta's transpose."""
    theta, out = _shape(f, 0), f.outputs[0] if f.outputs else None
    if theta is None or len(theta) != 3 or out is None:
        return unknown(f)
    macs = numel(out) * theta[2]
    return OpCost(2.0 * macs, float(macs))


def det(f: OpFacts) -> OpCost:
    """Det: an LU factorisation of each n x n matrix (2n^3/3 FLOPs, LAPACK's getrf count in
    Golub and Van Loan) and the product of its diagonal (n)."""
    x = _shape(f, 0)
    if x is None or len(x) < 2 or x[-1] != x[-2]:
        return unknown(f)
    n = x[-1]
    return OpCost(numel(x[:-2]) * (2.0 * n**3 / 3 + n))


def causal_conv_with_state(f: OpFacts) -> OpCost:
    """CausalConvWithState (opset 27): a depthwise 1-D convolution, k MACs per output element
    for a (channels, 1, k) kernel, then its optional bias (1) and fused SiLU (5, as Swish)."""
    w, out = _shape(f, 1), _first_out(f)
    if w is None or len(w) != 3:
        return unknown(f)
    macs = out * w[2]
    bias = out if _shape(f, 2) is not None else 0
    silu = 5 * out if f.attrs.get("activation") in ("silu", "swish") else 0
    return OpCost(2.0 * macs + bias + silu, float(macs))


_LINEAR_RULES = ("linear", "gated", "delta", "gated_delta")


def linear_attention(f: OpFacts) -> OpCost:
    """LinearAttention (opset 27), counted as its recurrence runs, per token: the output
    q^T S for each query head and, under the delta rules, S^T k for each key-value head
    (d_k d_v MACs each: the products FlopCounterMode counts); the state's update k u^T added
    into it (2 per state element); the gated rules' decay of the state (1 per element) and
    its exponential (4 per decay element); the delta rules' beta (v - S^T k) (2 d_v); the
    output's scale (d_v per query head)."""
    q, v = _shape(f, 0), _shape(f, 2)
    heads, kv_heads = (int(_number_attr(f, name)) for name in ("q_num_heads", "kv_num_heads"))
    rule = str(f.attrs.get("update_rule", "gated_delta"))
    if q is None or v is None or len(q) != 3 or len(v) != 3 or heads <= 0 or kv_heads <= 0 \
            or rule not in _LINEAR_RULES:
        return unknown(f)
    tokens, d_k, d_v = q[0] * q[1], q[2] // heads, v[2] // kv_heads
    gated, delta = rule.startswith("gated"), rule.endswith("delta")
    state = kv_heads * d_k * d_v
    macs = tokens * (heads * d_k * d_v + (state if delta else 0))
    elementwise = tokens * ((3 if gated else 2) * state + heads * d_v
                            + (2 * kv_heads * d_v if delta else 0))
    return OpCost(2.0 * macs + elementwise + (4 * numel(_shape(f, 4)) if gated else 0),
                  float(macs))


def grid_sample(f: OpFacts) -> OpCost:
    """GridSample: each output element interpolates 2^d (linear) or 4^d (cubic) input values
    of a d-dimensional input (one MAC each); nearest reads one and computes nothing."""
    out = f.outputs[0] if f.outputs else None
    if out is None or len(out) < 3:
        return unknown(f)
    mode = str(f.attrs.get("mode", "linear"))
    taps = {"nearest": 0, "cubic": 4, "bicubic": 4}.get(mode, 2) ** (len(out) - 2)
    return OpCost(2.0 * taps * numel(out))


def roi_align(f: OpFacts) -> OpCost:
    """RoiAlign: each output element (rois x channels x output height x width) pools
    `sampling_ratio` squared points, each interpolated from 4 values (one MAC each) and summed
    or compared once. An adaptive ratio (0, the default) depends on each box's size, which
    the data decides: a guess then."""
    out, ratio = f.outputs[0] if f.outputs else None, int(_number_attr(f, "sampling_ratio"))
    if out is None or len(out) != 4 or ratio <= 0:
        return unknown(f)
    return OpCost((2.0 * 4 + 1) * ratio * ratio * numel(out))


def deform_conv(f: OpFacts) -> OpCost:
    """DeformConv: a convolution (weight input 1, bias input 3) over input values sampled at
    learnt offsets: each of the N x H_out x W_out x C_in x kernel samples interpolates 4 values
    (8 FLOPs), and is scaled by the modulation mask (input 4) where there is one."""
    x, w, out = _shape(f, 0), _shape(f, 1), f.outputs[0] if f.outputs else None
    if x is None or w is None or out is None or len(x) < 3 or len(out) < 3 or not out[1]:
        return unknown(f)
    conv_cost = conv_with(1, 3)(f)
    samples = numel(out) // out[1] * x[1] * math.prod(w[2:])
    sampling = (8.0 + (_shape(f, 4) is not None)) * samples
    return OpCost(conv_cost.flops + sampling, conv_cost.macs)


def _fft_flops(n: int, complex_input: bool) -> float:
    """One fast Fourier transform of length n: 5 n log2 n FLOPs on complex numbers, half that
    on real ones (the count FFTW's benchmarks charge an FFT, whatever algorithm runs)."""
    return (5.0 if complex_input else 2.5) * n * math.log2(n) if n > 1 else 0.0


def dft(f: OpFacts) -> OpCost:
    """DFT: one FFT along `axis` (the reader sets it from the attribute, the axis input, or
    the opset's default) per position of the other axes, of the input's length there, or of
    the output's where `dft_length` pads it (a one-sided output holds n / 2 + 1 bins; the
    inverse of one-sided bins is a real signal of n); the last axis holds a real (1) or
    complex (2) number, and a transform with real input or output costs half."""
    x, out = _shape(f, 0), f.outputs[0] if f.outputs else None
    axis = f.attrs.get("axis")
    if x is None or out is None or len(x) < 2 or len(out) != len(x) \
            or not isinstance(axis, int) or not -len(x) <= axis < len(x) - 1:
        return unknown(f)
    axis %= len(x)
    inverse, onesided = _number_attr(f, "inverse"), _number_attr(f, "onesided")
    if onesided and inverse:  # one-sided bins in, n real samples out
        n = out[axis]
    elif onesided:
        n = max(x[axis], 2 * (out[axis] - 1))
    else:
        n = max(x[axis], out[axis])
    transforms = numel(x) // max(x[axis] * x[-1], 1)
    return OpCost(transforms * _fft_flops(n, x[-1] == 2 and out[-1] == 2))


def stft(f: OpFacts) -> OpCost:
    """STFT: per frame of each signal (output batch x frames), the window's product (one per
    sample of the frame, where a window is given) and one FFT of the frame's length (the
    window's, else `frame_length`, which the reader reads from its constant input)."""
    x, window, out = _shape(f, 0), _shape(f, 2), f.outputs[0] if f.outputs else None
    n = window[0] if window is not None and len(window) == 1 else f.attrs.get("frame_length")
    if x is None or out is None or len(x) != 3 or len(out) != 4 or not isinstance(n, int):
        return unknown(f)
    frames = out[0] * out[1]
    return OpCost(frames * ((n if window is not None else 0) + _fft_flops(n, x[-1] == 2)))


def nll_loss(f: OpFacts) -> OpCost:
    """NegativeLogLikelihoodLoss: one weighted pick per target element (gather, weight, sum)."""
    return OpCost(2.0 * numel(_shape(f, 1)))


def resize(f: OpFacts) -> OpCost:
    mode = str(f.attrs.get("mode", "nearest"))
    factor = {"nearest": 1.0, "linear": 4.0, "cubic": 16.0}.get(mode, 4.0)
    return OpCost(factor * _first_out(f))


# onnxruntime's contrib operators (domain com.microsoft): what its graph optimizer and its
# transformer optimizer write into the models they save (fusions of standard operators), each
# counted as the standard operators it fuses, so an optimized file costs what its source does.


def _activation(f: OpFacts) -> OpCost:
    """The `activation` a fused operator applies to its output, costed as that operator (an
    activation nobody taught us is the unknown-operator guess, and says so)."""
    name = f.attrs.get("activation")
    if not isinstance(name, str) or not name:
        return OpCost(0.0)
    out = f.outputs[:1]
    return REGISTRY.get(name, unknown)(OpFacts(name, out, out))


def fused(base: Handle, summand: int | None = None) -> Handle:
    """A standard operator followed by its `activation` (FusedConv, FusedGemm), after adding
    input `summand` where one is given (FusedConv's Z)."""

    def handle(f: OpFacts) -> OpCost:
        cost = base(f)
        if not cost.supported:
            return cost
        summed = _first_out(f) if summand is not None and _shape(f, summand) is not None else 0
        activation = _activation(f)
        return OpCost(cost.flops + summed + activation.flops, cost.macs, activation.supported)

    return handle


def fused_matmul(f: OpFacts) -> OpCost:
    """FusedMatMul: a MatMul of optionally transposed operands, scaled by `alpha`."""
    a = _shape(f, 0)
    if a is None or len(a) < 2 or not f.outputs or f.outputs[0] is None:
        return unknown(f)
    k = a[-2] if _number_attr(f, "transA") else a[-1]
    macs = _first_out(f) * k
    scaled = _first_out(f) if f.attrs.get("alpha", 1.0) != 1.0 else 0
    return OpCost(2.0 * macs + scaled, macs)


def with_bias(factor: float, bias: int) -> Handle:
    """An elementwise fusion of `factor` FLOPs per output element, one more per optional input
    (`bias` onwards) that is present: FastGelu's bias, SkipLayerNormalization's."""

    def handle(f: OpFacts) -> OpCost:
        extra = sum(1 for s in f.inputs[bias:] if s is not None)
        return OpCost((factor + extra) * _first_out(f))

    return handle


def contrib_attention(f: OpFacts) -> OpCost:
    """com.microsoft Attention: input (batch, sequence, in) projected by weights (in, q + k +
    v widths, `qkv_hidden_sizes` or three equal) plus bias, then attention over `num_heads`
    heads, keys from `past` (2, batch, heads, past, head) added."""
    x, w, past = _shape(f, 0), _shape(f, 1), _shape(f, 4)
    heads = int(_number_attr(f, "num_heads"))
    if x is None or w is None or len(x) != 3 or len(w) != 2 or heads <= 0:
        return unknown(f)
    sizes = f.attrs.get("qkv_hidden_sizes")
    q, _, v = (sizes if isinstance(sizes, list) and len(sizes) == 3 else [w[1] // 3] * 3)
    batch, sequence = x[0], x[1]
    cached = past[3] if past is not None and len(past) == 5 else 0
    keys = sequence + cached
    cost = scaled_dot_product(batch * heads * sequence * keys, q // heads, v // heads,
                              _shape(f, 3) is not None or _shape(f, 5) is not None,
                              batch * (sequence + keys) * q)
    projection = batch * sequence * x[2] * w[1]  # and its bias added
    return OpCost(cost.flops + 2.0 * projection + batch * sequence * w[1],
                  cost.macs + projection)


def multi_head_attention(f: OpFacts) -> OpCost:
    """com.microsoft MultiHeadAttention (and GroupQueryAttention, `kv_num_heads` key and value
    heads): query (batch, sequence, heads x head); key and value (batch, keys, width) or
    already split (batch, kv heads, keys, head), or packed into the query; past keys (batch,
    kv heads, past, head) added; `num_heads` query heads."""
    q, k, v = _shape(f, 0), _shape(f, 1), _shape(f, 2)
    heads = int(_number_attr(f, "num_heads"))
    if q is None or len(q) != 3 or heads <= 0:
        return unknown(f)
    grouped = f.op.endswith("GroupQueryAttention")  # causal, so always masked
    kv_heads = int(_number_attr(f, "kv_num_heads")) if grouped else heads
    past = _shape(f, 3) if grouped else _shape(f, 6)
    masked = grouped or _shape(f, 4) is not None or _shape(f, 5) is not None
    cached = past[2] if past is not None and len(past) == 4 else 0
    batch, queries = q[0], q[1]
    if k is None:  # query, key and value packed into one input
        head = q[2] // (heads + 2 * kv_heads) if grouped else q[2] // (3 * heads)
        keys, v_head = queries, head
    else:
        head = q[2] // heads
        keys = k[2] if len(k) == 4 else k[1]
        v_head = (v[3] if len(v) == 4 else v[2] // kv_heads) if v is not None else head
    keys += cached
    return scaled_dot_product(batch * heads * queries * keys, head, v_head, masked,
                              batch * (heads * queries + kv_heads * keys) * head)


def matmul_n_bits(f: OpFacts) -> OpCost:
    """MatMulNBits: A (..., K) times a block-quantized (K, N) weight (`K` and `N` attributes),
    each weight element dequantized once per call (a multiply and an add)."""
    a, n = _shape(f, 0), int(_number_attr(f, "N"))
    if a is None or not a or n <= 0:
        return unknown(f)
    macs = numel(a) * n
    return OpCost(2.0 * macs + 2.0 * a[-1] * n, float(macs))


def unknown(f: OpFacts) -> OpCost:
    """Conservative guess for an op nobody taught us: two FLOPs per element read or written."""
    return OpCost(2.0 * (_in(f) + _out(f)), 0.0, supported=False)


_ZERO = (
    "Reshape Flatten Squeeze Unsqueeze Transpose Concat Split Slice Gather GatherElements "
    "GatherND Identity Cast CastLike Expand Tile Pad Shape Size Constant ConstantOfShape Range "
    "DepthToSpace SpaceToDepth NonZero OneHot Trilu EyeLike ScatterND ScatterElements "
    "SplitToSequence SequenceAt SequenceConstruct ConcatFromSequence Optional OptionalGetElement "
    "ReverseSequence Compress BitCast TensorScatter CenterCropPad MaxUnpool Scatter "
    "SequenceEmpty SequenceErase SequenceInsert SequenceLength OptionalHasElement"
)
_CHEAP_ELEMENTWISE = (
    "Add Sub Mul Div Equal Less LessOrEqual Greater GreaterOrEqual Where And Or "
    "Xor Not Mod BitShift PRelu Relu LeakyRelu Clip Abs Neg Floor Ceil Round Sign IsNaN IsInf "
    "ThresholdedRelu Dropout Reciprocal BitwiseAnd BitwiseOr BitwiseXor BitwiseNot "
    "QuantizeLinear DequantizeLinear"
)
_TRANSCENDENTAL = (
    "Sigmoid Tanh Exp Log Sqrt Erf Pow Elu Selu Celu Softplus Softsign HardSigmoid HardSwish "
    "Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh Shrink "
    "HannWindow HammingWindow BlackmanWindow"
)
_REDUCTIONS = (
    "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum "
    "ReduceLogSumExp ReduceSumSquare ArgMax ArgMin CumSum GlobalAveragePool GlobalMaxPool "
    "GlobalLpPool TopK CumProd Col2Im"
)

_WINDOWS = {"HannWindow", "HammingWindow", "BlackmanWindow"}

DATA_MOVEMENT = frozenset(_ZERO.split())
"""Ops that only move, view or index data: no arithmetic, nothing kept for their backward."""

ELEMENTWISE = frozenset(
    set(f"{_CHEAP_ELEMENTWISE} {_TRANSCENDENTAL} Max Min Mean Sum Gelu Mish Swish FastGelu".split())
    - _WINDOWS)
"""Ops whose each output element is computed from the elements at its position in each input
(numpy broadcasting): they never combine elements along an axis."""

REGISTRY: dict[str, Handle] = {
    **dict.fromkeys(_ZERO.split(), zero_cost),
    **dict.fromkeys(_CHEAP_ELEMENTWISE.split(), per_output(1.0)),
    **dict.fromkeys(_TRANSCENDENTAL.split(), per_output(4.0)),
    **dict.fromkeys(_REDUCTIONS.split(), per_input(1.0)),
    **dict.fromkeys(("Max", "Min", "Mean", "Sum"), variadic),
    "Gelu": per_output(8.0),
    "Mish": per_output(8.0),
    "Swish": per_output(5.0),  # x * sigmoid(alpha x): a sigmoid (4) and a product (1)
    "SwiGLU": per_output(6.0),  # swish(a) * b
    "RotaryEmbedding": per_output(3.0),  # x cos + rotated(x) sin
    **dict.fromkeys(("Bernoulli", "RandomNormal", "RandomNormalLike", "RandomUniform",
                     "RandomUniformLike", "Multinomial"), per_output(1.0)),  # a draw each
    "DynamicQuantizeLinear": per_input(3.0),  # its minimum, its maximum, then quantize
    "SoftmaxCrossEntropyLoss": per_input(5.0),  # a log-softmax over the scores
    "NegativeLogLikelihoodLoss": nll_loss,
    "FastGelu": per_output(8.0),
    "Softmax": per_output(5.0),
    "LogSoftmax": per_output(5.0),
    "Hardmax": per_output(2.0),
    "BatchNormalization": per_output(2.0),
    "InstanceNormalization": per_output(5.0),
    "LayerNormalization": per_output(5.0),
    "SimplifiedLayerNormalization": per_output(4.0),
    "RMSNormalization": per_output(4.0),
    "GroupNormalization": per_output(5.0),
    "LpNormalization": per_output(3.0),
    "MeanVarianceNormalization": per_output(5.0),
    "LRN": per_output(5.0),
    "Conv": conv,
    "ConvInteger": conv,
    "QLinearConv": conv_with(3, 8),
    "ConvTranspose": conv_transpose,
    "DeformConv": deform_conv,
    "Attention": attention,
    "LinearAttention": linear_attention,
    "CausalConvWithState": causal_conv_with_state,
    "AffineGrid": affine_grid,
    "Det": det,
    "GridSample": grid_sample,
    "RoiAlign": roi_align,
    "Gemm": gemm,
    "MatMul": matmul,
    "MatMulInteger": matmul,
    "QLinearMatMul": matmul,  # a, then scales and zero points, then b: shapes from a and y
    "Einsum": einsum,
    "MaxPool": pool,
    "AveragePool": pool,
    "LpPool": pool,
    "MaxRoiPool": pool,
    "RNN": recurrent(1),
    "GRU": recurrent(3),
    "LSTM": recurrent(4),
    "Resize": resize,
    "Upsample": resize,
    "DFT": dft,
    "STFT": stft,
}
CONTRIB = "com.microsoft."
"""The prefix of onnxruntime's contrib operators' names (`qualified_op`)."""
REGISTRY.update({CONTRIB + op: handle for op, handle in {
    "FusedConv": fused(conv, summand=3),
    "NhwcConv": conv,
    "FusedGemm": fused(gemm),
    "FusedMatMul": fused_matmul,
    "TransposeMatMul": fused_matmul,
    "GemmFastGelu": fused(gemm),
    "FastGelu": with_bias(8.0, 1),
    "BiasGelu": per_output(9.0),
    "QuickGelu": per_output(6.0),  # x * sigmoid(alpha x)
    "BiasAdd": per_output(2.0),  # x + bias + skip
    "BiasSoftmax": per_output(6.0),
    "BiasDropout": per_output(3.0),
    "SkipLayerNormalization": with_bias(6.0, 4),  # x + skip (+ bias), then LayerNormalization
    "SkipSimplifiedLayerNormalization": with_bias(5.0, 3),
    "EmbedLayerNormalization": per_output(7.0),  # three embeddings summed, then normalised
    "SkipGroupNorm": with_bias(6.0, 4),
    "GroupNorm": per_output(5.0),
    "Attention": contrib_attention,
    "MultiHeadAttention": multi_head_attention,
    "GroupQueryAttention": multi_head_attention,
    "MatMulNBits": matmul_n_bits,
    "MatMulIntegerToFloat": matmul,
    "DynamicQuantizeMatMul": matmul,
    "QGemm": gemm,
    "QLinearAdd": per_output(3.0),  # dequantize both, add, quantize
    "QLinearMul": per_output(3.0),
    "QLinearSigmoid": per_output(6.0),
    "QLinearLeakyRelu": per_output(3.0),
    "QLinearAveragePool": pool,
    "QLinearGlobalAveragePool": per_input(1.0),
    "QLinearConcat": zero_cost,
    "ExpandDims": zero_cost,
    **{op: REGISTRY[op] for op in ("Gelu", "RotaryEmbedding", "QLinearConv", "QuantizeLinear",
                                   "DequantizeLinear", "Trilu", "Range")},  # ONNX's, again
}.items()})
CONVOLUTIONS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv",
                          "com.microsoft.FusedConv", "com.microsoft.NhwcConv",
                          "com.microsoft.QLinearConv"})
"""Dense convolutions (grouped ones run like per-channel stencils; see costs.op_class)."""


def cost_of(facts: OpFacts) -> OpCost:
    """Look up the handle for `facts.op`; fall back to the conservative estimate.

    Inputs whose shapes cannot belong to the operator (a 2-D LSTM weight, a missing operand)
    raise ValueError naming the operator."""
    handle = REGISTRY.get(facts.op, unknown)
    try:
        return handle(facts)
    except (IndexError, KeyError, TypeError, ZeroDivisionError, OverflowError) as exc:
        shapes = ", ".join(str(s) for s in facts.inputs)
        raise ValueError(f"{facts.op} cannot take inputs of shapes {shapes} "
                         f"({type(exc).__name__})") from exc
