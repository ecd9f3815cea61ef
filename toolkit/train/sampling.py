"""ONNX's spatial sampling as torch's: AffineGrid (a grid of positions from affine matrices)
and GridSample (the input read at those positions), so that a spatial transformer trains
split. Both are torch's own functions, whose gradients reach theta, the grid and the input.
Not here: GridSample's cubic mode on volumes, which torch does not have (refused by name)."""

from __future__ import annotations

import torch.nn.functional as F

from toolkit.train.ops import Attrs, Value, ints, op

_MODES = {"linear": "bilinear", "bilinear": "bilinear", "nearest": "nearest",
          "cubic": "bicubic", "bicubic": "bicubic"}  # ONNX's names (opset 20, and 16's)


@op("AffineGrid")
def affine_grid(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    return (F.affine_grid(x[0], ints(x[1]), align_corners=bool(a.get("align_corners", 0))),)


@op("GridSample")
def grid_sample(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    data, grid = x[0], x[1]
    mode = _MODES.get(str(a.get("mode", "linear")))
    if mode is None or data.dim() not in (4, 5) or (mode == "bicubic" and data.dim() == 5):
        raise NotImplementedError(f"GridSample {a.get('mode', 'linear')} on {data.dim()}-D "
                                  "input")
    return (F.grid_sample(data, grid.to(data.dtype), mode=mode,
                          padding_mode=str(a.get("padding_mode", "zeros")),
                          align_corners=bool(a.get("align_corners", 0))),)
