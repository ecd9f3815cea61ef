"""ONNX's detection operators (RoiAlign, NonMaxSuppression) as torch functions.

RoiAlign pools each region of interest by bilinear samples on a regular grid per output cell,
as ONNX's reference computes them (samples past the map's edge by more than one pixel count
zero; the rest clamp to it), so gradients reach the feature map. NonMaxSuppression picks boxes
per batch and class, greedily by score, and passes no gradient (its output is indices).
"""

from __future__ import annotations

import math

import torch

from toolkit.train.ops import Attrs, Value, op


@op("RoiAlign")
def roi_align(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    data, rois, batch_indices = x
    if "coordinate_transformation_mode" not in a:
        raise NotImplementedError("RoiAlign without coordinate_transformation_mode (its "
                                  "default changed at opset 16)")
    half_pixel = a["coordinate_transformation_mode"] == "half_pixel"
    mode = a.get("mode", "avg")
    if mode not in ("avg", "max"):
        raise NotImplementedError(f"RoiAlign mode {mode}")
    offset = 0.5 if half_pixel else 0.0
    out_h, out_w = int(a.get("output_height", 1)), int(a.get("output_width", 1))
    ratio, scale = int(a.get("sampling_ratio", 0)), float(a.get("spatial_scale", 1.0))
    height, width = data.shape[2], data.shape[3]
    pooled = []
    for box, n in zip(rois.tolist(), batch_indices.tolist(), strict=True):
        x1, y1, x2, y2 = (v * scale - offset for v in box)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not half_pixel:  # malformed regions are taken as 1 x 1
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        grid_h = ratio if ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = ratio if ratio > 0 else math.ceil(roi_w / out_w)
        if grid_h <= 0 or grid_w <= 0:
            pooled.append(data.new_zeros(data.shape[1], out_h, out_w))
            continue
        ys = _axis(y1, roi_h / out_h, out_h, grid_h, height, data)
        xs = _axis(x1, roi_w / out_w, out_w, grid_w, width, data)
        fmap = data[int(n)]
        rows = [fmap.index_select(1, index) for index in (ys[0], ys[1])]
        corners = [[r.index_select(2, index) for index in (xs[0], xs[1])] for r in rows]
        weights = [[ys[2 + i].reshape(-1, 1) * xs[2 + j].reshape(1, -1) for j in (0, 1)]
                   for i in (0, 1)]
        terms = torch.stack([corners[i][j] * weights[i][j] for i in (0, 1) for j in (0, 1)])
        if mode == "avg":  # each sample the weighted sum of its corners, averaged per cell
            pooled.append(terms.sum(0).reshape(-1, out_h, grid_h, out_w, grid_w)
                          .mean(dim=(2, 4)))
        else:  # ONNX's max: the largest weighted corner, the largest sample per cell
            pooled.append(terms.amax(0).reshape(-1, out_h, grid_h, out_w, grid_w)
                          .amax(dim=(2, 4)))
    if not pooled:
        return (data.new_zeros(0, data.shape[1], out_h, out_w),)
    return (torch.stack(pooled),)


def _axis(start: float, bin_size: float, cells: int, grid: int, size: int,
          like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Along one axis: each sample's lower and upper index and the weights of the two (zero
    for a sample more than one pixel off the map)."""
    at = [start + c * bin_size + (g + 0.5) * bin_size / grid
          for c in range(cells) for g in range(grid)]
    where = torch.tensor(at, dtype=torch.float64, device=like.device)
    inside = (where >= -1.0) & (where <= size)
    where = where.clamp(min=0)
    low = where.floor().long()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(where), where - low)
    upper = (frac * inside).to(like.dtype)
    lower = ((1 - frac) * inside).to(like.dtype)
    return low, high, lower, upper


@op("NonMaxSuppression")
def non_max_suppression(a: Attrs, x: list[Value]) -> tuple[Value, ...]:
    """Per batch and class, the boxes scoring above `score_threshold` taken by score, each
    dropping the rest that overlap it by more than `iou_threshold` (IoU), at most
    `max_output_boxes_per_class` of them: rows of (batch, class, box)."""
    boxes, scores = x[0].detach(), x[1].detach()

    def scalar(k: int, default: float) -> float:
        return float(x[k].reshape(-1)[0]) if len(x) > k and x[k] is not None \
            and x[k].numel() else default

    most = int(scalar(2, 0))
    iou_limit, score_limit = scalar(3, 0.0), scalar(4, -math.inf)
    if int(a.get("center_point_box", 0)):
        centre, size = boxes[..., :2], boxes[..., 2:]
        corners = torch.cat([centre - size / 2, centre + size / 2], -1)
    else:  # (y1, x1, y2, x2), either corner first
        corners = torch.cat([torch.minimum(boxes[..., :2], boxes[..., 2:]),
                             torch.maximum(boxes[..., :2], boxes[..., 2:])], -1)
    picked: list[list[int]] = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            ranked = torch.sort(scores[b, c], descending=True, stable=True).indices
            ranked = ranked[scores[b, c, ranked] > score_limit]
            kept = _greedy(corners[b, ranked], iou_limit, most)
            picked += [[b, c, int(ranked[k])] for k in kept]
    return (torch.tensor(picked, dtype=torch.int64, device=boxes.device).reshape(-1, 3),)


def _greedy(corners: torch.Tensor, iou_limit: float, most: int) -> list[int]:
    """Positions in `corners` (best first) that NMS keeps: each kept box drops the boxes after
    it that overlap it by more than `iou_limit` (one row of IoUs at a time: memory linear in
    the boxes, as a detector's thousands of anchors need)."""
    area = (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1])
    alive = torch.ones(len(corners), dtype=torch.bool, device=corners.device)
    kept: list[int] = []
    for i in range(len(corners)):
        if len(kept) >= most:
            break
        if not alive[i]:
            continue
        kept.append(i)
        low = torch.maximum(corners[i, :2], corners[:, :2])
        high = torch.minimum(corners[i, 2:], corners[:, 2:])
        overlap = (high - low).clamp(min=0).prod(-1)
        union = area[i] + area - overlap
        iou = torch.where(union > 0, overlap / union, torch.zeros_like(union))
        alive &= iou <= iou_limit
    return kept
