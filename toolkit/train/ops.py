"""ONNX operators as torch functions: the executor's registry, one function per op type.

Each function takes the node's attributes and its inputs (torch tensors, `None` for an omitted
optional input, lists for sequences) and returns a tuple of outputs. Semantics follow the ONNX
operator specification (opsets 13-21); autograd differentiates through them, so an ONNX model
run here trains. An op that is not here is refused by name before anything runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

Attrs = dict[str, Any]
Value = Any  # a tensor, None, or a list of tensors (a sequence)
OpFunction = Callable[[Attrs, list[Value]], tuple[Value, ...]]

OPS: dict[str, OpFunction] = {}


def op(*names: str) -> Callable[[OpFunction], OpFunction]:
    def register(fn: OpFunction) -> OpFunction:
        for name in names:
            OPS[name] = fn
        return fn

    return register


def torch_dtype(elem_type: int) -> torch.dtype:
    """The torch dtype of an ONNX element type."""
    return torch.from_numpy(np.zeros(0, helper.tensor_dtype_to_np_dtype(elem_type))).dtype


def to_tensor(proto: TensorProto) -> torch.Tensor:
    """An ONNX tensor as a torch tensor (bfloat16 through float32: numpy has no bfloat16)."""
    array = np.array(numpy_helper.to_array(proto))
    if proto.data_type == TensorProto.BFLOAT16:
        return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
    if array.dtype.kind not in "biuf" or array.dtype.itemsize == 0:
        raise NotImplementedError(f"{array.dtype} tensors")
    return torch.from_numpy(array)


def ints(t: Value) -> list[int]:
    """A shape-like input (an int64 tensor) as Python ints."""
    return [int(v) for v in t.reshape(-1).tolist()]


def unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> OpFunction:
    return lambda a, x: (fn(x[0]),)


def binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> OpFunction:
    return lambda a, x: (fn(x[0], x[1]),)


for _name, _fn in {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf,
    "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Sin": torch.sin,
    "Cos": torch.cos, "Not": torch.logical_not, "Softplus": F.softplus, "Identity": lambda t: t,
    "IsNaN": torch.isnan, "Sign": torch.sign, "Round": torch.round, "Tan": torch.tan,
    "Asin": torch.asin, "Acos": torch.acos, "Atan": torch.atan, "Sinh": torch.sinh,
    "Cosh": torch.cosh, "Asinh": torch.asinh, "Acosh": torch.acosh, "Atanh": torch.atanh,
    "Softsign": F.softsign, "Mish": F.mish, "BitwiseNot": torch.bitwise_not,
}.items():
    OPS[_name] = unary(_fn)

for _name, _fn2 in {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow,
    "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
    "Xor": torch.logical_xor, "MatMul": torch.matmul, "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or, "BitwiseXor": torch.bitwise_xor,
}.items():
    OPS[_name] = binary(_fn2)


@op("Div")
def div(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    if x[0].is_floating_point():
        return (x[0] / x[1],)
    return (torch.div(x[0], x[1], rounding_mode="trunc"),)


@op("Mod")
def mod(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return ((torch.fmod if a.get("fmod", 0) else torch.remainder)(x[0], x[1]),)


def _fold(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mean: bool = False
          ) -> OpFunction:
    def run(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
        out = x[0]
        for t in x[1:]:
            out = fn(out, t)
        return (out / len(x) if mean else out,)

    return run


OPS.update(Max=_fold(torch.maximum), Min=_fold(torch.minimum), Sum=_fold(torch.add),
           Mean=_fold(torch.add, mean=True))


@op("Where")
def where(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (torch.where(x[0], x[1], x[2]),)


@op("Cast")
def cast(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (x[0].to(torch_dtype(int(a["to"]))),)


@op("CastLike")
def cast_like(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (x[0].to(x[1].dtype),)


@op("Clip")
def clip(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    low = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    high = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    out = x[0]
    if low is not None:
        out = torch.maximum(out, torch.as_tensor(low, dtype=out.dtype))
    if high is not None:
        out = torch.minimum(out, torch.as_tensor(high, dtype=out.dtype))
    return (out,)


@op("HardSigmoid")
def hard_sigmoid(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0.0, 1.0),)


@op("HardSwish")
def hard_swish(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (F.hardswish(x[0]),)


@op("LeakyRelu")
def leaky_relu(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (F.leaky_relu(x[0], a.get("alpha", 0.01)),)


@op("Elu")
def elu(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (F.elu(x[0], a.get("alpha", 1.0)),)


@op("Celu")
def celu(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (F.celu(x[0], a.get("alpha", 1.0)),)


@op("Selu")
def selu(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """gamma x above 0, gamma alpha (e^x - 1) below (ONNX's defaults are torch's SELU)."""
    alpha = a.get("alpha", 1.67326319217681884765625)
    gamma = a.get("gamma", 1.05070102214813232421875)
    return (gamma * torch.where(x[0] > 0, x[0], alpha * torch.expm1(x[0])),)


@op("ThresholdedRelu")
def thresholded_relu(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (torch.where(x[0] > a.get("alpha", 1.0), x[0], torch.zeros_like(x[0])),)


@op("Shrink")
def shrink(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """x - bias above lambd, x + bias below -lambd, 0 between (soft and hard shrinkage)."""
    lambd, bias = a.get("lambd", 0.5), a.get("bias", 0.0)
    data = x[0]
    return (torch.where(data > lambd, data - bias,
                        torch.where(data < -lambd, data + bias, torch.zeros_like(data))),)


@op("IsInf")
def is_inf(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    found = torch.isinf(x[0])
    if not a.get("detect_negative", 1):
        found = found & (x[0] > 0)
    if not a.get("detect_positive", 1):
        found = found & (x[0] < 0)
    return (found,)


@op("PRelu")
def p_relu(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """A leaky ReLU whose slope is a trained weight, broadcast to the input (nn.PReLU;
    MediaPipe's models by tf2onnx, one slope per channel of an NHWC tensor)."""
    return (torch.where(x[0] < 0, x[0] * x[1], x[0]),)


@op("Gelu")
def gelu(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    approximate = a.get("approximate", "none")
    return (F.gelu(x[0], approximate=approximate.decode() if isinstance(approximate, bytes)
                   else approximate),)


@op("Softmax")
def softmax(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (torch.softmax(x[0], int(a.get("axis", -1))),)


@op("Hardmax")
def hardmax(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """1 at the first largest value along `axis`, 0 elsewhere."""
    axis = int(a.get("axis", -1)) % x[0].dim()
    if x[0].numel() == 0:
        return (x[0],)
    first = x[0].argmax(axis, keepdim=True)
    return (torch.zeros_like(x[0]).scatter(axis, first, 1),)


def _loss_reading(a: Attrs, x: list[Value]) -> dict[str, Any]:
    """F.nll_loss's and F.cross_entropy's keywords from a loss node: the class weights, the
    reduction and the label to ignore (torch ignores -100 where ONNX names none: none is
    one no label can be)."""
    reduction = a.get("reduction", "mean")
    return {"weight": x[2] if len(x) > 2 else None,
            "reduction": reduction.decode() if isinstance(reduction, bytes) else reduction,
            "ignore_index": int(a.get("ignore_index", -(2**62)))}


@op("NegativeLogLikelihoodLoss")
def nll_loss(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (F.nll_loss(x[0], x[1].long(), **_loss_reading(a, x)),)


@op("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """The loss and, as the second output, the log-probabilities it read."""
    log_prob = torch.log_softmax(x[0], 1)
    return F.nll_loss(log_prob, x[1].long(), **_loss_reading(a, x)), log_prob


@op("LogSoftmax")
def log_softmax(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (torch.log_softmax(x[0], int(a.get("axis", -1))),)


def _pads(a: Attrs, size: Sequence[int], kernel: Sequence[int]) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] of an input of spatial `size` under `kernel`: the
    file's, none for VALID, and for SAME_UPPER and SAME_LOWER (TensorFlow's and JAX's "SAME",
    as tf2onnx and jax2onnx write it) what makes each output size ceil(size / stride), an odd
    one at the end (UPPER) or the beginning (LOWER)."""
    spatial = len(kernel)
    auto = a.get("auto_pad", "NOTSET")
    if auto == "VALID":
        return [0] * 2 * spatial
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        strides = list(a.get("strides", [1] * spatial))
        dilations = list(a.get("dilations", [1] * spatial))
        total = [max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
                 for n, s, k, d in zip(size, strides, kernel, dilations, strict=True)]
        begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        return begin + [t - b for t, b in zip(total, begin, strict=True)]
    if auto != "NOTSET":
        raise NotImplementedError(f"auto_pad={auto}")
    return list(a.get("pads", [0] * 2 * spatial))


def _padded(x: torch.Tensor, pads: list[int], value: float = 0.0,
            kernel: Sequence[int] = ()) -> tuple[torch.Tensor, list[int]]:
    """Symmetric pads stay for the torch op; asymmetric ones, and pads wider than half a
    pooling `kernel` (which torch's pools refuse), are applied here."""
    n = len(pads) // 2
    begin, end = pads[:n], pads[n:]
    if begin == end and all(2 * p <= k for p, k in zip(begin, kernel, strict=False)):
        return x, begin
    torch_pads: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        torch_pads += [b, e]
    return F.pad(x, torch_pads, value=value), [0] * n


@op("Conv")
def conv(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    w = x[1]
    spatial = w.dim() - 2
    data, padding = _padded(x[0], _pads(a, x[0].shape[2:], w.shape[2:]))
    fn = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return (fn(data, w, x[2] if len(x) > 2 else None, list(a.get("strides", [1] * spatial)),
               padding, list(a.get("dilations", [1] * spatial)), int(a.get("group", 1))),)


@op("ConvTranspose")
def conv_transpose(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Computed unpadded (every position an input reaches), then `output_padding` zeros added
    at the end and the pads cut off each side (zeros added where a pad is negative), the bias
    last: ONNX's asymmetric pads, its `output_shape` and `auto_pad` SAME_* all come down to
    that crop."""
    data, w = x[0], x[1]
    spatial = w.dim() - 2
    strides = list(a.get("strides", [1] * spatial))
    dilations = list(a.get("dilations", [1] * spatial))
    extra = list(a.get("output_padding", [0] * spatial))
    group = int(a.get("group", 1))
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    out = fn(data, w, None, strides, 0, 0, group, dilations)
    full = [n + e for n, e in zip(out.shape[2:], extra, strict=True)]  # ONNX's unpadded size
    auto = a.get("auto_pad", "NOTSET")
    if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
        wanted = list(a["output_shape"])[-spatial:] if "output_shape" in a else \
            [n * s for n, s in zip(data.shape[2:], strides, strict=True)]
        total = [f - o for f, o in zip(full, wanted, strict=True)]
        upper = auto == "SAME_UPPER"
        begin = [t // 2 if upper else t - t // 2 for t in total]
        pads = begin + [t - b for t, b in zip(total, begin, strict=True)]
    else:
        pads = [0] * 2 * spatial if auto == "VALID" else list(a.get("pads", [0] * 2 * spatial))
    torch_pads: list[int] = []  # (F.pad crops where a pad is negative)
    for b, e, more in zip(reversed(pads[:spatial]), reversed(pads[spatial:]), reversed(extra),
                          strict=True):
        torch_pads += [-b, more - e]
    out = F.pad(out, torch_pads)
    if len(x) > 2 and x[2] is not None:
        out = out + x[2].reshape(1, -1, *[1] * spatial)
    return (out,)


def max_pool(a: Attrs, x: list[Value], outputs: int) -> tuple[Value, ...]:
    """The window maxima and, where the node asks for them, their indices as ONNX counts
    them: into the whole input flattened (samples and channels included), padding not
    counted, row-major (or column-major within a plane: `storage_order` 1)."""
    kernel = list(a["kernel_shape"])
    spatial = len(kernel)
    pads = _pads(a, x[0].shape[2:], kernel)
    data, padding = _padded(x[0], pads, -math.inf, kernel)
    fn: Callable[..., Any] = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1]
    pooled = fn(data, kernel, list(a.get("strides", [1] * spatial)), padding,
                list(a.get("dilations", [1] * spatial)), bool(a.get("ceil_mode", 0)),
                return_indices=outputs > 1)
    if outputs < 2:
        return (pooled,)
    values, at = pooled
    size, padded = list(x[0].shape[2:]), list(data.shape[2:])
    begin = pads[:spatial] if padded != size else [0] * spatial  # (padded here, not by torch)
    coords = torch.unravel_index(at, tuple(padded))
    coords = tuple(c - b for c, b in zip(coords, begin, strict=True))
    order = range(spatial) if a.get("storage_order", 0) else reversed(range(spatial))
    index, stride = torch.zeros_like(at), 1
    for d in order:
        index, stride = index + coords[d] * stride, stride * size[d]
    planes = torch.arange(at.shape[0] * at.shape[1], device=at.device).reshape(
        at.shape[0], at.shape[1], *([1] * spatial))
    return values, index + planes * math.prod(size)


OPS["MaxPool"] = lambda a, x: max_pool(a, x, 1)  # run_op passes the node's real output count


@op("DeformConv")
def deform_conv(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """A 2-D convolution sampling each tap at its learned offset, scaled by the optional mask
    (torchvision's `deform_conv2d`, which ONNX's DeformConv was written after)."""
    try:
        from torchvision.ops import deform_conv2d
    except ImportError as exc:
        raise NotImplementedError("DeformConv without torchvision (the zoo extra)") from exc
    data, weight, offset = x[0], x[1], x[2]
    if data.dim() != 4:
        raise NotImplementedError(f"DeformConv on {data.dim() - 2} spatial axes")
    pads = list(a.get("pads", [0] * 4))
    if pads[:2] != pads[2:]:
        data, pads = F.pad(data, [pads[1], pads[3], pads[0], pads[2]]), [0] * 4
    bias = x[3] if len(x) > 3 else None
    mask = x[4] if len(x) > 4 else None
    return (deform_conv2d(data, offset, weight, bias, stride=tuple(a.get("strides", (1, 1))),
                          padding=tuple(pads[:2]), dilation=tuple(a.get("dilations", (1, 1))),
                          mask=mask),)


@op("AveragePool")
def average_pool(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    kernel = list(a["kernel_shape"])
    spatial = len(kernel)
    include = bool(a.get("count_include_pad", 0))
    pads = _pads(a, x[0].shape[2:], kernel)
    if any(d != 1 for d in a.get("dilations", [])):
        raise NotImplementedError("AveragePool with dilations")
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1]
    strides, ceil = list(a.get("strides", [1] * spatial)), bool(a.get("ceil_mode", 0))
    if include or (pads[:spatial] == pads[spatial:]
                   and all(2 * p <= k for p, k in zip(pads, kernel, strict=False))):
        data, padding = _padded(x[0], pads, 0.0, kernel) if include else (x[0], pads[:spatial])
        return (fn(data, kernel, strides, padding, ceil, include),)
    # pads torch cannot leave out of the count (uneven, as SAME's; or over half the window):
    # each window's sum over the number of input positions in it, both pooled over the padded
    # input (torch divides both by the same count, which cancels)
    unpadded = [0] * spatial
    data, _ = _padded(x[0], pads, 0.0, unpadded)
    inside, _ = _padded(torch.ones_like(x[0][:1, :1]), pads, 0.0, unpadded)
    return (fn(data, kernel, strides, unpadded, ceil, True)
            / fn(inside, kernel, strides, unpadded, ceil, True),)


@op("GlobalAveragePool")
def global_average_pool(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True),)


@op("LpPool")
def lp_pool(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """(the sum of |x|^p over each window)^(1/p), zero padding counted as zeros."""
    kernel = list(a["kernel_shape"])
    spatial = len(kernel)
    if any(d != 1 for d in a.get("dilations", [1] * spatial)):
        raise NotImplementedError("LpPool with dilations")
    p = float(a.get("p", 2))
    data, padding = _padded(x[0].abs().pow(p), _pads(a, x[0].shape[2:], kernel), 0.0, kernel)
    strides = list(a.get("strides", [1] * spatial))
    if spatial == 1:  # (avg_pool1d takes no divisor)
        data, kernel, strides, padding = data.unsqueeze(-1), [*kernel, 1], [*strides, 1], \
            [*padding, 0]
    fn: Callable[..., Any] = F.avg_pool2d if len(kernel) == 2 else F.avg_pool3d
    sums = fn(data, kernel, strides, padding, bool(a.get("ceil_mode", 0)), True,
              divisor_override=1)
    return ((sums.squeeze(-1) if spatial == 1 else sums).pow(1 / p),)


@op("Col2Im")
def col2im(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Columns of blocks summed back into an image (nn.Fold)."""
    image, block = ints(x[1]), ints(x[2])
    pads = list(a.get("pads", [0] * 2 * len(image)))
    if len(image) != 2 or pads[:2] != pads[2:]:
        raise NotImplementedError("Col2Im other than 2-D with symmetric pads")
    return (F.fold(x[0], image, block, dilation=list(a.get("dilations", [1, 1])),
                   padding=pads[:2], stride=list(a.get("strides", [1, 1]))),)


@op("GlobalLpPool")
def global_lp_pool(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    p = float(a.get("p", 2))
    axes = tuple(range(2, x[0].dim()))
    return (x[0].abs().pow(p).sum(axes, keepdim=True).pow(1 / p),)


@op("GlobalMaxPool")
def global_max_pool(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True),)


def batch_norm(a: Attrs, x: list[Value], outputs: int) -> tuple[Value, ...]:
    """Inference form (running statistics), as PyTorch exports a model in eval mode; training
    form, as a model exported with `TrainingMode.TRAINING` declares it (`training_mode=1`, or
    before opset 14 the optional outputs: onnxruntime trains wherever a node declares more
    than one): normalised by the batch's statistics, with the running ones updated as the ONNX
    specification says (the momentum weighs the old value; the batch's variance is the
    population variance) and, where the node declares them (opsets 9-13), the batch's own mean
    and, as onnxruntime (after Caffe2) gives it, inverse standard deviation."""
    eps = a.get("epsilon", 1e-5)
    if not a.get("training_mode", 0) and outputs < 2:
        return (F.batch_norm(x[0], x[3].detach(), x[4].detach(), x[1], x[2], False, 0.0, eps),)
    momentum = float(a.get("momentum", 0.9))
    axes = [0, *range(2, x[0].dim())]
    data = x[0].detach()
    saved_mean, saved_var = data.mean(dim=axes), data.var(dim=axes, unbiased=False)
    mean = x[3].detach() * momentum + saved_mean * (1 - momentum)
    var = x[4].detach() * momentum + saved_var * (1 - momentum)
    normalised = F.batch_norm(x[0], None, None, x[1], x[2], True, 0.0, eps)
    inv_std = (saved_var + eps).rsqrt()
    return (normalised, mean, var, saved_mean, inv_std)[:max(outputs, 3)]


OPS["BatchNormalization"] = lambda a, x: batch_norm(a, x, 1)  # run_op passes the real count


@op("Dropout")
def dropout(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Drops at training time only (`training_mode`, opset 12 on: a model exported with
    `TrainingMode.TRAINING`), scaling what it keeps by 1 / (1 - ratio); the mask is the second
    output. Otherwise (and in older opsets) it passes its input through."""
    ratio = float(x[1]) if len(x) > 1 and x[1] is not None else float(a.get("ratio", 0.5))
    training = len(x) > 2 and x[2] is not None and bool(x[2])
    if not training or ratio == 0.0:
        return (x[0], torch.ones_like(x[0], dtype=torch.bool))
    mask = torch.rand_like(x[0], dtype=torch.float32) >= ratio
    return (x[0] * mask / (1.0 - ratio), mask)


@op("LayerNormalization")
def layer_norm(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    axis = int(a.get("axis", -1)) % x[0].dim()
    shape = x[0].shape[axis:]
    bias = x[2] if len(x) > 2 else None
    return (F.layer_norm(x[0], shape, x[1].expand(shape) if x[1] is not None else None,
                         bias.expand(shape) if bias is not None else None,
                         a.get("epsilon", 1e-5)),)


@op("RMSNormalization")
def rms_norm(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """x over the root mean square of its axes from `axis` on, times the scale; computed in
    float32 (`stash_type` 1, the only one ONNX defines) and cast back."""
    normed, _ = rms_normalised(x[0], int(a.get("axis", -1)), float(a.get("epsilon", 1e-5)))
    return ((normed * x[1]).to(x[0].dtype),)


def rms_normalised(data: torch.Tensor, axis: int, epsilon: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """`data` over the root mean square of its axes from `axis` on, in float32, and that
    root's reciprocal (the RMS norms of ONNX and onnxruntime)."""
    axes = tuple(range(axis % data.dim(), data.dim()))
    wide = data.float()
    root = torch.rsqrt(wide.square().mean(axes, keepdim=True) + epsilon)
    return wide * root, root


@op("GroupNormalization")
def group_norm(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Normalized over each group of channels; the scale and bias per channel (opset 21) or,
    as opset 18 had them, per group."""
    data, scale, bias = x[0], x[1], x[2]
    groups, channels = int(a["num_groups"]), data.shape[1]
    if scale.numel() != channels:  # (opset 18: one per group)
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    wide = F.group_norm(data.float(), groups, eps=a.get("epsilon", 1e-5)).to(data.dtype)
    shape = (1, channels) + (1,) * (data.dim() - 2)
    return (wide * scale.reshape(shape) + bias.reshape(shape),)


@op("MeanVarianceNormalization")
def mean_variance_norm(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """(x - E x) / (sqrt(E x^2 - (E x)^2) + 1e-9) over `axes`, as ONNX's function body."""
    axes = tuple(d % x[0].dim() for d in a.get("axes", (0, 2, 3)))
    mean = x[0].mean(axes, keepdim=True)
    spread = torch.sqrt(x[0].square().mean(axes, keepdim=True) - mean.square())
    return ((x[0] - mean) / (spread + 1e-9),)


@op("LpNormalization")
def lp_norm(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """x over its p-norm along `axis`; a vector of zeros stays zeros."""
    norm = x[0].norm(int(a.get("p", 2)), dim=int(a.get("axis", -1)), keepdim=True)
    return (x[0] / torch.where(norm == 0, torch.ones_like(norm), norm),)


@op("LRN")
def local_response_norm(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """x over (bias + alpha / size * the sum of squares of the `size` channels around it)^beta,
    the window floor((size - 1) / 2) channels before and ceil((size - 1) / 2) after (torch's
    own puts an even window's extra channel before)."""
    size = int(a["size"])
    before, after = (size - 1) // 2, size // 2
    squares = x[0].square()
    pads = [0, 0] * (x[0].dim() - 2) + [before, after]
    window = F.pad(squares, pads).unfold(1, size, 1).sum(-1)
    return (x[0] / (a.get("bias", 1.0) + a.get("alpha", 1e-4) / size * window)
            ** a.get("beta", 0.75),)


@op("InstanceNormalization")
def instance_norm(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (F.instance_norm(x[0], weight=x[1], bias=x[2], eps=a.get("epsilon", 1e-5)),)


@op("Gemm")
def gemm(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    left = x[0].T if a.get("transA", 0) else x[0]
    right = x[1].T if a.get("transB", 0) else x[1]
    out = a.get("alpha", 1.0) * (left @ right)
    if len(x) > 2 and x[2] is not None:
        out = out + a.get("beta", 1.0) * x[2]
    return (out,)


@op("Flatten")
def flatten(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    axis = int(a.get("axis", 1))
    axis = axis + x[0].dim() if axis < 0 else axis
    lead = math.prod(x[0].shape[:axis])
    return (x[0].reshape(lead, -1),)


@op("Reshape")
def reshape(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    shape = ints(x[1])
    if not a.get("allowzero", 0):
        shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return (x[0].reshape(shape),)


@op("Transpose")
def transpose(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    perm = a.get("perm") or list(reversed(range(x[0].dim())))
    return (x[0].permute(*perm),)


@op("DepthToSpace")
def depth_to_space(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Channels moved into blocks of `blocksize` x `blocksize` pixels, depth-column-row (DCR,
    the default) or column-row-depth (CRD: torch's pixel shuffle)."""
    b = int(a["blocksize"])
    n, c, h, w = x[0].shape
    if a.get("mode", "DCR") == "CRD":
        return (F.pixel_shuffle(x[0], b),)
    blocks = x[0].reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    return (blocks.reshape(n, c // (b * b), h * b, w * b),)


@op("SpaceToDepth")
def space_to_depth(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Blocks of `blocksize` x `blocksize` pixels moved into channels, as DepthToSpace undoes
    in either mode."""
    b = int(a["blocksize"])
    if a.get("mode", "DCR") == "CRD":
        return (F.pixel_unshuffle(x[0], b),)
    n, c, h, w = x[0].shape
    blocks = x[0].reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return (blocks.reshape(n, c * b * b, h // b, w // b),)


def _axes(a: Attrs, x: list[Value], at: int) -> list[int] | None:
    """Axes from input `at` (newer opsets) or the `axes` attribute (older ones)."""
    if len(x) > at and x[at] is not None:
        return ints(x[at])
    return list(a["axes"]) if "axes" in a else None


@op("Squeeze")
def squeeze(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    axes = _axes(a, x, 1)
    if axes is None:
        return (x[0].squeeze(),)
    return (x[0].squeeze(tuple(d % x[0].dim() for d in axes)),)


@op("Unsqueeze")
def unsqueeze(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    axes = _axes(a, x, 1) or []
    rank = x[0].dim() + len(axes)
    out = x[0]
    for d in sorted(d % rank for d in axes):
        out = out.unsqueeze(d)
    return (out,)


@op("Concat")
def concat(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (torch.cat([t for t in x if t is not None], int(a["axis"])),)


def _split_sizes(a: Attrs, x: list[Value], dim: int, count: int) -> list[int]:
    given = _axes({"axes": a["split"]} if "split" in a else {}, x, 1)
    if given is not None:
        return given
    parts = int(a.get("num_outputs", count))
    each = -(-dim // parts)
    return [min(each, dim - i * each) for i in range(parts)]


def split(a: Attrs, x: list[Value], count: int) -> tuple[Value, ...]:
    """Split into `count` outputs (the node's output count, when sizes are not given)."""
    axis = int(a.get("axis", 0))
    return tuple(torch.split(x[0], _split_sizes(a, x, x[0].shape[axis], count), axis))


OPS["Split"] = lambda a, x: split(a, x, 1)  # run_op passes the node's real output count


@op("SplitToSequence")
def split_to_sequence(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    axis = int(a.get("axis", 0))
    if len(x) > 1 and x[1] is not None:
        sizes = ints(x[1])
        parts = torch.split(x[0], sizes[0] if x[1].dim() == 0 else sizes, axis)
        return (list(parts),)
    parts = torch.split(x[0], 1, axis)
    return ([p.squeeze(axis) for p in parts] if a.get("keepdims", 1) == 0 else list(parts),)


@op("SequenceAt")
def sequence_at(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (x[0][int(x[1])],)


@op("SequenceConstruct")
def sequence_construct(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (list(x),)


@op("SequenceEmpty")
def sequence_empty(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return ([],)


@op("SequenceInsert")
def sequence_insert(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """A new sequence with the tensor at `position` (counted from the end where negative;
    at the end where not given)."""
    items = list(x[0])
    at = int(x[2]) if len(x) > 2 and x[2] is not None else len(items)
    items.insert(at + len(items) if at < 0 else at, x[1])
    return (items,)


@op("SequenceErase")
def sequence_erase(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    items = list(x[0])
    del items[int(x[1]) if len(x) > 1 and x[1] is not None else -1]
    return (items,)


@op("SequenceLength")
def sequence_length(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (torch.tensor(len(x[0]), dtype=torch.int64),)


@op("ConcatFromSequence")
def concat_from_sequence(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    axis = int(a["axis"])
    return ((torch.stack if a.get("new_axis", 0) else torch.cat)(list(x[0]), axis),)


@op("ReverseSequence")
def reverse_sequence(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Each batch entry's first `sequence_lens` steps along `time_axis` reversed, the rest
    as they are."""
    axes = (int(a.get("time_axis", 0)), int(a.get("batch_axis", 1)))
    moved = x[0].movedim(axes, (0, 1))  # [time, batch, ...]
    steps, lens = torch.arange(moved.shape[0]).unsqueeze(1), x[1].long().unsqueeze(0)
    where = torch.where(steps < lens, lens - 1 - steps, steps)
    where = where.reshape(*where.shape, *[1] * (moved.dim() - 2)).expand_as(moved)
    return (moved.gather(0, where).movedim((0, 1), axes),)


@op("CenterCropPad")
def center_crop_pad(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Each of `axes` (all by default) cropped or zero-padded to its size in `shape`, the
    window centred (an odd difference's extra element at the end)."""
    out, sizes = x[0], ints(x[1])
    for axis, size in zip(a.get("axes", range(out.dim())), sizes, strict=True):
        axis %= out.dim()
        have = out.shape[axis]
        if size < have:
            out = out.narrow(axis, (have - size) // 2, size)
        elif size > have:
            before = (size - have) // 2
            pads = [0, 0] * (out.dim() - 1 - axis) + [before, size - have - before]
            out = F.pad(out, pads)
    return (out,)


@op("Shape")
def shape(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    dims = list(x[0].shape)
    return (torch.tensor(dims[a.get("start", 0):a.get("end", len(dims))], dtype=torch.int64),)


@op("Size")
def size(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (torch.tensor(x[0].numel(), dtype=torch.int64),)


@op("Constant")
def constant(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    if "value" in a:
        return (a["value"],)
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in a:
            return (torch.tensor(a[key], dtype=dtype),)
    raise NotImplementedError("Constant without a numeric value")


@op("ConstantOfShape")
def constant_of_shape(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    value = a.get("value", torch.zeros(1))
    return (torch.full(ints(x[0]), value.reshape(-1)[0].item(), dtype=value.dtype),)


@op("Range")
def range_(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (torch.arange(x[0].item(), x[1].item(), x[2].item(), dtype=x[0].dtype),)


@op("Expand")
def expand(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (x[0].expand(torch.broadcast_shapes(x[0].shape, tuple(ints(x[1])))),)


@op("Tile")
def tile(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (x[0].repeat(*ints(x[1])),)


def _index(indices: torch.Tensor, size: int) -> torch.Tensor:
    indices = indices.long()
    return torch.where(indices < 0, indices + size, indices)


@op("Gather")
def gather(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    data, indices = x
    axis = int(a.get("axis", 0)) % data.dim()
    flat = _index(indices, data.shape[axis]).reshape(-1)
    out = torch.index_select(data, axis, flat)
    return (out.reshape((*data.shape[:axis], *indices.shape, *data.shape[axis + 1:])),)


@op("OneHot")
def one_hot(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """values[1] where an index (negative ones counted from `depth`) hits, values[0]
    elsewhere, along a new axis `axis`; an index out of range hits nothing."""
    indices, depth, values = x[0], int(x[1].reshape(-1)[0]), x[2].reshape(-1)
    wrapped = torch.where(indices < 0, indices + depth, indices).long()
    hits = (wrapped.unsqueeze(-1) == torch.arange(depth))
    axis = int(a.get("axis", -1)) % (indices.dim() + 1)
    out = torch.where(hits, values[1], values[0])
    return (out.movedim(-1, axis),)


@op("GatherElements")
def gather_elements(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    axis = int(a.get("axis", 0)) % x[0].dim()
    return (torch.gather(x[0], axis, _index(x[1], x[0].shape[axis])),)


def _nd_index(data: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
    depth = indices.shape[-1]
    return tuple(_index(indices[..., i], data.shape[i]) for i in range(depth))


@op("GatherND")
def gather_nd(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    if a.get("batch_dims", 0):
        raise NotImplementedError("GatherND with batch_dims")
    return (x[0][_nd_index(x[0], x[1])],)


@op("ScatterND")
def scatter_nd(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    if a.get("reduction", "none") not in ("none", b"none"):
        raise NotImplementedError("ScatterND with a reduction")
    return (x[0].index_put(_nd_index(x[0], x[1]), x[2]),)


@op("Slice")
def slice_(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    data = x[0]
    starts, ends = ints(x[1]), ints(x[2])
    axes = ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        dim = data.shape[axis % data.dim()]
        axis %= data.dim()
        if step > 0:
            lo = min(max(start + dim if start < 0 else start, 0), dim)
            hi = min(max(end + dim if end < 0 else end, 0), dim)
            data = data.narrow(axis, lo, max(hi - lo, 0))[
                (slice(None),) * axis + (slice(None, None, step),)]
        else:
            lo = min(max(start + dim if start < 0 else start, -1), dim - 1)
            hi = min(max(end + dim if end < 0 else end, -1), dim - 1)
            index = torch.arange(lo, hi, step, dtype=torch.int64, device=data.device)
            data = torch.index_select(data, axis, index)
    return (data,)


@op("Pad")
def pad(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    data = x[0]
    pads = ints(x[1]) if len(x) > 1 else list(a["pads"])
    value = x[2].item() if len(x) > 2 and x[2] is not None else a.get("value", 0.0)
    axes = ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(data.dim()))
    n = len(axes)
    full = [0] * 2 * data.dim()
    for k, axis in enumerate(axes):
        full[axis % data.dim()] = pads[k]
        full[axis % data.dim() + data.dim()] = pads[k + n]
    torch_pads: list[int] = []
    for axis in reversed(range(data.dim())):
        torch_pads += [full[axis], full[axis + data.dim()]]
    mode = a.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "constant":
        return (F.pad(data, torch_pads, value=value),)
    # torch pads only the trailing spatial dims in these modes
    trimmed = torch_pads[:2 * max(data.dim() - 2, 1)]
    if any(torch_pads[len(trimmed):]):
        raise NotImplementedError(f"Pad mode {mode} on the leading two axes")
    return (F.pad(data, trimmed, mode={"edge": "replicate"}.get(mode, mode)),)


def _reduce(fn: Callable[..., torch.Tensor], axes_input: int = 1) -> OpFunction:
    def run(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
        axes = _axes(a, x, axes_input)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return (x[0],)
            axes = list(range(x[0].dim()))
        return (fn(x[0], dim=tuple(d % x[0].dim() for d in axes), keepdim=keep),)

    return run


def _product(t: torch.Tensor, dim: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    """torch.prod over several axes (it takes one)."""
    for d in sorted(dim, reverse=True):
        t = t.prod(d, keepdim=keepdim)
    return t


OPS.update(ReduceMean=_reduce(torch.mean), ReduceSum=_reduce(torch.sum),
           ReduceMax=_reduce(torch.amax), ReduceMin=_reduce(torch.amin),
           ReduceProd=_reduce(_product), ReduceLogSumExp=_reduce(torch.logsumexp),
           ReduceL1=_reduce(lambda t, **k: t.abs().sum(**k)),
           ReduceSumSquare=_reduce(lambda t, **k: t.square().sum(**k)),
           ReduceLogSum=_reduce(lambda t, **k: t.sum(**k).log()))


def _arg(largest: bool) -> OpFunction:
    """ArgMax / ArgMin: the first extreme along `axis`, or the last (`select_last_index`)."""
    def run(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
        axis = int(a.get("axis", 0)) % x[0].dim()
        last = bool(a.get("select_last_index", 0))
        data = x[0].flip(axis) if last else x[0]
        found = (torch.argmax if largest else torch.argmin)(
            data, dim=axis, keepdim=bool(a.get("keepdims", 1)))
        return (x[0].shape[axis] - 1 - found if last else found,)

    return run


OPS.update(ArgMax=_arg(True), ArgMin=_arg(False))


@op("ReduceL2")
def reduce_l2(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    squares = _reduce(torch.sum)(a, [x[0] * x[0], *x[1:]])[0]
    return (torch.sqrt(squares),)


@op("CumSum")
def cumsum(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    axis = int(x[1])
    data = x[0].flip(axis) if a.get("reverse", 0) else x[0]
    out = data.cumsum(axis)
    if a.get("exclusive", 0):
        out = out - data
    return (out.flip(axis) if a.get("reverse", 0) else out,)


@op("CumProd")
def cumprod(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    axis = int(x[1]) % x[0].dim()
    data = x[0].flip(axis) if a.get("reverse", 0) else x[0]
    if a.get("exclusive", 0):  # each product of the elements before it: a 1 shifted in
        ones = torch.ones_like(data.narrow(axis, 0, 1))
        data = torch.cat([ones, data.narrow(axis, 0, data.shape[axis] - 1)], axis)
    out = data.cumprod(axis)
    return (out.flip(axis) if a.get("reverse", 0) else out,)


@op("TopK")
def top_k(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """The k largest (or smallest) along `axis`; equal values in index order, as ONNX asks."""
    axis = int(a.get("axis", -1))
    largest = bool(a.get("largest", 1))
    order = torch.sort(x[0], dim=axis, descending=largest, stable=True)
    k = int(x[1].reshape(-1)[0])
    return (order.values.narrow(axis, 0, k), order.indices.narrow(axis, 0, k))


@op("NonZero")
def non_zero(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (torch.nonzero(x[0]).T.contiguous(),)


@op("ScatterElements")
def scatter_elements(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    data, index, updates = x
    axis = int(a.get("axis", 0)) % data.dim()
    index = index.long() % data.shape[axis]  # ONNX allows negative indices
    reduction = a.get("reduction", "none")
    if reduction == "none":
        return (data.scatter(axis, index, updates),)
    how = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}.get(reduction)
    if how is None:
        raise NotImplementedError(f"ScatterElements reduction {reduction}")
    return (data.scatter_reduce(axis, index, updates, how, include_self=True),)


OPS["Scatter"] = scatter_elements  # (opset 9-10's name for it)


@op("Compress")
def compress(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """The slices along `axis` (of the flattened input without one) where the condition
    holds; a condition shorter than the axis selects nothing past its end."""
    data = x[0] if "axis" in a else x[0].reshape(-1)
    axis = int(a.get("axis", 0)) % data.dim()
    keep = torch.nonzero(x[1].reshape(-1)[:data.shape[axis]]).reshape(-1)
    return (data.index_select(axis, keep),)


@op("EyeLike")
def eye_like(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    rows, cols = x[0].shape
    dtype = torch_dtype(int(a["dtype"])) if "dtype" in a else x[0].dtype
    k = int(a.get("k", 0))
    return (torch.ones(rows, cols, dtype=dtype).tril(k).triu(k),)


def _generator(a: Attrs) -> torch.Generator | None:
    """A generator seeded by the node's `seed` (the same numbers at every run, as the seed
    asks), or None: torch's own stream."""
    if "seed" not in a:
        return None
    return torch.Generator().manual_seed(int(float(a["seed"])))


def _random(like: bool, normal: bool) -> OpFunction:
    """RandomNormal(Like) and RandomUniform(Like): fresh numbers at each run (a VAE's noise),
    of the node's shape or its input's, in its `dtype` or the input's."""
    def run(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
        shape = tuple(x[0].shape) if like else tuple(int(d) for d in a["shape"])
        dtype = torch_dtype(int(a["dtype"])) if "dtype" in a else (
            x[0].dtype if like else torch.float32)
        made = torch.empty(shape, dtype=torch.float32)
        if normal:
            made.normal_(float(a.get("mean", 0.0)), float(a.get("scale", 1.0)),
                         generator=_generator(a))
        else:
            made.uniform_(float(a.get("low", 0.0)), float(a.get("high", 1.0)),
                          generator=_generator(a))
        return (made.to(x[0].device if like else "cpu").to(dtype),)

    return run


OPS.update(RandomNormal=_random(False, True), RandomNormalLike=_random(True, True),
           RandomUniform=_random(False, False), RandomUniformLike=_random(True, False))


@op("Bernoulli")
def bernoulli(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    drawn = torch.bernoulli(x[0].detach().float(), generator=_generator(a))
    return (drawn.to(torch_dtype(int(a["dtype"])) if "dtype" in a else x[0].dtype),)


@op("Trilu")
def trilu(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    k = int(x[1]) if len(x) > 1 and x[1] is not None else 0
    return ((torch.triu if a.get("upper", 1) else torch.tril)(x[0], k),)


@op("Einsum")
def einsum(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    equation = a["equation"]
    return (torch.einsum(equation.decode() if isinstance(equation, bytes) else equation, *x),)


@op("Det")
def det(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (torch.linalg.det(x[0]),)


@op("Swish")
def swish(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (x[0] * torch.sigmoid(float(a.get("alpha", 1.0)) * x[0]),)


@op("SwiGLU")
def swiglu(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """The gate through Swish, times the value (Llama's MLP: silu(gate) * up)."""
    return (swish(a, [x[0]])[0] * x[1],)


@op("BitShift")
def bit_shift(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    left = a.get("direction", "LEFT") in ("LEFT", b"LEFT")
    return ((torch.bitwise_left_shift if left else torch.bitwise_right_shift)(x[0], x[1]),)


@op("RotaryEmbedding")
def rotary_embedding(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Rotate the first `rotary_embedding_dim` features of each head (all by default) by the
    cos/sin caches, looked up by `position_ids` where given; halves or interleaved pairs."""
    data, cos, sin = x[0], x[1], x[2]
    positions = x[3] if len(x) > 3 else None
    if data.dim() == 3 and "num_heads" not in a:
        raise ValueError("a 3-D input needs num_heads")
    heads = data.unflatten(-1, (int(a["num_heads"]), -1)) if data.dim() == 3 \
        else data.transpose(1, 2)  # (batch, sequence, heads, head size)
    dim = int(a.get("rotary_embedding_dim", 0)) or heads.shape[-1]
    if positions is not None:
        cos, sin = cos[positions], sin[positions]
    if cos.shape[-1] != dim // 2 or sin.shape[-1] != dim // 2:
        raise ValueError(f"cos/sin caches of {cos.shape[-1]} features for a rotation of {dim}")
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    rotate, keep = heads[..., :dim], heads[..., dim:]
    interleaved = bool(a.get("interleaved", 0))
    x1, x2 = (rotate[..., 0::2], rotate[..., 1::2]) if interleaved else rotate.chunk(2, -1)
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    rotated = torch.stack((real, imag), -1).flatten(-2) if interleaved \
        else torch.cat((real, imag), -1)
    out = torch.cat((rotated, keep), -1)
    return (out.flatten(-2) if data.dim() == 3 else out.transpose(1, 2),)


def attention(a: Attrs, x: list[Value], outputs: int) -> tuple[Value, ...]:
    """ONNX's Attention (opsets 23-24): multi-, grouped- or multi-query heads, 3-D or 4-D;
    a boolean or additive mask; causal masking and sliding windows aligned to the cache
    offset; a KV cache (past in, present out); a soft cap; the QK output (modes 0-3); a
    query row with no key to attend gives zeros. Without a soft cap, a QK output or a
    softmax precision it runs on torch's fused kernel, as PyTorch trains attention."""
    q, k, v, mask, past_k, past_v, nonpad = (*x, *[None] * 7)[:7]
    if q.dim() == 3:
        if "q_num_heads" not in a or "kv_num_heads" not in a:
            raise ValueError("3-D queries, keys and values need q_num_heads and kv_num_heads")
        q = q.unflatten(-1, (int(a["q_num_heads"]), -1)).transpose(1, 2)
        k, v = (t.unflatten(-1, (int(a["kv_num_heads"]), -1)).transpose(1, 2) for t in (k, v))
    if past_k is not None:
        k, v = torch.cat((past_k, k), 2), torch.cat((past_v, v), 2)
    present = (k, v)
    groups = q.shape[1] // k.shape[1]
    scale = float(a["scale"]) if "scale" in a else 1 / math.sqrt(q.shape[-1])
    cap, mode = float(a.get("softcap", 0.0)), int(a.get("qk_matmul_output_mode", 0))
    fused = cap <= 0 and outputs < 4 and "softmax_precision" not in a
    qk = None
    if fused and mask is None and past_k is None and nonpad is None \
            and int(a.get("left_window_size", -1)) < 0 and int(a.get("right_window_size", -1)) < 0:
        # causal or not, offset 0: torch's own mask (top-left aligned), its fastest kernel
        y = F.scaled_dot_product_attention(q, k, v, is_causal=bool(a.get("is_causal", 0)),
                                           scale=scale, enable_gqa=groups > 1)
    else:
        bias = _attention_bias(a, q, k, mask, past_k, nonpad)
        masked_rows = torch.isneginf(bias.amax(-1, keepdim=True))
        if fused:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=scale,
                                               enable_gqa=groups > 1).masked_fill(masked_rows, 0.0)
        else:
            k, v = (t.repeat_interleave(groups, 1) for t in (k, v))
            root = q.new_tensor(math.sqrt(scale))
            qk = (q * root) @ (k * root).transpose(-1, -2)
            if cap > 0:
                qk = cap * torch.tanh(qk / cap)
            scores = qk + bias
            if mode == 2:
                qk = scores
            if "softmax_precision" in a:
                scores = scores.to(torch_dtype(int(a["softmax_precision"])))
            p = torch.softmax(scores, -1).masked_fill(masked_rows, 0.0)
            qk = p.to(q.dtype) if mode == 3 else qk.to(q.dtype)
            y = p.to(q.dtype) @ v
    if x[0].dim() == 3:
        y = y.transpose(1, 2).flatten(-2)
    return (y, *present, qk)


def _attention_bias(a: Attrs, q: torch.Tensor, k: torch.Tensor, mask: Value, past: Value,
                    nonpad: Value) -> torch.Tensor:
    """The additive bias of Attention's scores: 0 where a query may attend a key, -inf where
    the mask (a shorter one padded as masked), causality or a window forbids it. A query at
    i attends key j up to i + offset: the past's length, else each sample's keys that are not
    padding less the queries, else 0."""
    queries, keys, at = q.shape[-2], k.shape[-2], q.device
    inf = torch.tensor(-math.inf, device=at)
    bias = torch.zeros(queries, keys, device=at)
    if mask is not None:
        if mask.shape[-1] < keys:
            mask = F.pad(mask, (0, keys - mask.shape[-1]),
                         value=False if mask.dtype == torch.bool else -math.inf)
        bias = bias + (torch.where(mask, 0.0, inf) if mask.dtype == torch.bool
                       else mask.float())
    offset: Any = past.shape[2] if past is not None else 0
    if past is None and nonpad is not None:
        offset = (nonpad.reshape(-1) - queries).reshape(-1, 1, 1, 1)
    reach = (torch.arange(queries, device=at).reshape(-1, 1) + offset
             - torch.arange(keys, device=at))  # i + offset - j
    allowed = torch.ones_like(reach, dtype=torch.bool)
    if int(a.get("is_causal", 0)):
        allowed &= reach >= 0
    left, right = int(a.get("left_window_size", -1)), int(a.get("right_window_size", -1))
    if left >= 0:
        allowed &= reach <= left
    if right >= 0:
        allowed &= -reach <= right
    bias = bias + torch.where(allowed, 0.0, inf)
    if nonpad is not None:
        bias = bias + torch.where(torch.arange(keys, device=at) < nonpad.reshape(-1, 1), 0.0,
                                  inf).reshape(-1, 1, 1, keys)
    return bias


OPS["Attention"] = lambda a, x: attention(a, x, 3)  # run_op passes the real output count


def known(op_type: str) -> bool:
    return op_type in OPS


def run_op(op_type: str, attrs: Attrs, inputs: Sequence[Value], outputs: int) -> tuple[Value,
                                                                                        ...]:
    """Run one node; `outputs` is how many outputs the node declares (`_COUNTED` need it)."""
    if any(isinstance(v, torch.Tensor) and v.dtype in _NO_ARITHMETIC for v in inputs):
        raise NotImplementedError("unsigned 16-, 32- or 64-bit tensors (torch has no kernels)")
    counted = _COUNTED.get(op_type)
    if counted is not None:
        return counted(attrs, list(inputs), outputs)
    return OPS[op_type](attrs, list(inputs))


_NO_ARITHMETIC = (torch.uint16, torch.uint32, torch.uint64)
# operators whose outputs depend on how many the node declares
_COUNTED: dict[str, Callable[[Attrs, list[Value], int], tuple[Value, ...]]] = {
    "Split": split, "Attention": attention, "MaxPool": max_pool,
    "BatchNormalization": batch_norm,
}

from toolkit.train import contrib, detection, recurrent, resize, sampling, spectral  # noqa: E402,F401  (they register their ops)
