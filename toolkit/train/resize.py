"""ONNX's Resize (opset 11 on) as torch indexing, one axis at a time.

Each resized axis maps its output positions back to input coordinates by the node's
`coordinate_transformation_mode`, then reads the input there: the nearest element (by
`nearest_mode`), the two around it (linear) or four (cubic, `cubic_coeff_a`, optionally
`exclude_outside`), with indices past an edge reading the edge, as ONNX's reference does. The
sampling is a gather and a weighted sum, so gradients reach the input. Not here: the crop of
`tf_crop_and_resize` and antialiased downsampling (refused by name).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from toolkit.train.ops import Attrs, Value, ints, op


@op("Resize")
def resize(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    if len(x) < 3:
        raise NotImplementedError("Resize before opset 11")
    data = x[0]
    scales = x[2] if len(x) > 2 and x[2] is not None and x[2].numel() else None
    sizes = x[3] if len(x) > 3 and x[3] is not None and x[3].numel() else None
    mode = a.get("mode", "nearest")
    transform = a.get("coordinate_transformation_mode", "half_pixel")
    if transform == "tf_crop_and_resize" or int(a.get("antialias", 0)):
        raise NotImplementedError(f"Resize with {transform}, antialias "
                                  f"{int(a.get('antialias', 0))}")
    axes = [d % data.dim() for d in a.get("axes", range(data.dim()))]
    shape = [data.shape[d] for d in axes]
    if sizes is not None:
        wanted = ints(sizes)
        ratios = [w / s for w, s in zip(wanted, shape, strict=True)]
        policy = a.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            ratio = (min if policy == "not_larger" else max)(ratios)
            ratios = [ratio] * len(axes)
            wanted = [math.floor(ratio * s + 0.5) for s in shape]
    else:
        assert scales is not None
        ratios = [float(v) for v in scales.reshape(-1).tolist()]
        wanted = [math.floor(s * r) for s, r in zip(shape, ratios, strict=True)]
    out = data
    for axis, size, length, ratio in zip(axes, shape, wanted, ratios, strict=True):
        if length == size and ratio == 1:
            continue
        where = _source(np.arange(length, dtype=np.float64), ratio, size, transform)
        out = _sample(out, axis, where, size, mode, a)
    return (out,)


@op("Upsample")
def upsample(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Opset 7-9's Upsample: Resize with the scales of its input (9) or attribute (7),
    sampling at `asymmetric` coordinates, the nearest element by floor."""
    scales = x[1] if len(x) > 1 and x[1] is not None else torch.tensor(a["scales"])
    mode = {"bilinear": "linear"}.get(a.get("mode", "nearest"), a.get("mode", "nearest"))
    return resize({"mode": mode, "coordinate_transformation_mode": "asymmetric",
                   "nearest_mode": "floor"}, [x[0], None, scales])


def _source(at: np.ndarray, scale: float, size: int, mode: str) -> np.ndarray:
    """Input coordinates of output positions `at` along an axis of `size` resized by `scale`
    (to `len(at)` positions), as ONNX's reference computes them: against the unrounded
    length `scale * size`."""
    length = scale * size
    if mode == "align_corners":
        return at * (size - 1) / (length - 1) if length != 1 else np.zeros_like(at)
    if mode == "asymmetric":
        return at / scale
    if mode == "pytorch_half_pixel":
        return (at + 0.5) / scale - 0.5 if length != 1 else np.full_like(at, -0.5)
    if mode == "half_pixel_symmetric":
        return size / 2 * (1 - len(at) / length) + (at + 0.5) / scale - 0.5
    if mode == "half_pixel":
        return (at + 0.5) / scale - 0.5
    raise NotImplementedError(f"Resize coordinate_transformation_mode {mode}")


def _sample(data: torch.Tensor, axis: int, where: np.ndarray, size: int, mode: str,
            a: Attrs) -> torch.Tensor:
    """`data` read along `axis` at input coordinates `where`."""
    def take(index: np.ndarray) -> torch.Tensor:
        return data.index_select(axis, torch.from_numpy(np.clip(index, 0, size - 1))
                                 .to(data.device))

    def weighted(weights: np.ndarray) -> torch.Tensor:
        shape = [1] * data.dim()
        shape[axis] = -1
        return torch.from_numpy(weights).to(data.device, data.dtype).reshape(shape)

    if mode == "nearest":
        rule = a.get("nearest_mode", "round_prefer_floor")
        if rule not in _ROUNDING:
            raise NotImplementedError(f"Resize nearest_mode {rule}")
        return take(_ROUNDING[rule](where).astype(np.int64))
    base = np.floor(where)
    frac = where - base
    base = base.astype(np.int64)
    if mode == "linear":
        return take(base) * weighted(1 - frac) + take(base + 1) * weighted(frac)
    if mode != "cubic":
        raise NotImplementedError(f"Resize mode {mode}")
    coeff = float(a.get("cubic_coeff_a", -0.75))
    taps = [base + k for k in (-1, 0, 1, 2)]
    weights = [_cubic(coeff, np.abs(frac - k)) for k in (-1, 0, 1, 2)]
    if int(a.get("exclude_outside", 0)):
        weights = [w * ((t >= 0) & (t < size)) for w, t in zip(weights, taps, strict=True)]
        total = sum(weights)
        weights = [w / total for w in weights]
    return sum((take(t) * weighted(w) for t, w in zip(taps, weights, strict=True)),
               start=torch.zeros((), dtype=data.dtype, device=data.device))


_ROUNDING: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "round_prefer_floor": lambda v: np.ceil(v - 0.5),  # a tie goes down
    "round_prefer_ceil": lambda v: np.floor(v + 0.5),
    "floor": np.floor, "ceil": np.ceil,
}


def _cubic(coeff: float, d: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel at distance `d` (ONNX's cubic_coeff_a is its A)."""
    near = ((coeff + 2) * d - (coeff + 3)) * d * d + 1
    far = ((coeff * d - 5 * coeff) * d + 8 * coeff) * d - 4 * coeff
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))
