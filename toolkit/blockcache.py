"""The block structure of a model, computed once per model file and kept on disk.

Block detection depends only on the model, so `splitcut partition` finds a model's blocks the
first time it reads that model (same `LayerGraph.sha256`: structure and `--dim` values) and
every later run and scenario reuses them: `$SPLITCUT_CACHE/blocks/<digest>.json` (default
`~/.cache/splitcut`).
A cache file that does not fit the model (another layer count, unreadable JSON) is ignored and
rewritten; writes go through a temporary file and `os.replace`, so readers never see half.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from toolkit import zoo
from toolkit.blocks import BlockStructure, BlockType, Segment, find_blocks
from toolkit.graph import LayerGraph

log = logging.getLogger(__name__)
_VERSION = 3  # 2: layers weights alone make are off the input's path; 3: a layer reading a
# model input deep in the graph is fed by the input, past the layers before it


def model_blocks(graph: LayerGraph) -> tuple[BlockStructure, float]:
    """The model's block structure and the milliseconds spent finding it (0 when cached)."""
    path = _path(graph)
    if path is not None:
        cached = _load(path, graph)
        if cached is not None:
            return cached, 0.0
    start = time.perf_counter()
    blocks = find_blocks(graph)
    elapsed = (time.perf_counter() - start) * 1e3
    if path is not None:
        _save(path, blocks)
    return blocks, elapsed


def _path(graph: LayerGraph) -> Path | None:
    return zoo.cache_dir().parent / "blocks" / f"{graph.sha256}.json" if graph.sha256 else None


def _load(path: Path, graph: LayerGraph) -> BlockStructure | None:
    try:
        data = json.loads(path.read_text())
        if data["version"] != _VERSION or data["layer_count"] != len(graph):
            return None
        types = [BlockType(**t) for t in data["types"]]
        n = data["layer_count"]
        segments = [
            Segment(k, tuple(range(entry + 1, (n - 1 if exit_ is None else exit_) + 1)),
                    None if entry < 0 else entry, exit_, type_id)
            for k, (entry, exit_, type_id) in enumerate(data["segments"])
        ]
        return BlockStructure(graph.name, n, list(data["cut_vertices"]), segments, types,
                              tuple(data["weight_only"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.info("block cache %s not used (%s)", path, exc)
        return None


def _save(path: Path, blocks: BlockStructure) -> None:
    data: dict[str, Any] = {
        "version": _VERSION, "layer_count": blocks.layer_count,
        "cut_vertices": blocks.cut_vertices, "weight_only": list(blocks.weight_only),
        "segments": [[-1 if s.entry is None else s.entry, s.exit, s.type_id]
                     for s in blocks.segments],
        "types": [{"id": t.id, "signature": t.signature, "name": t.name, "size": t.size,
                   "count": t.count, "closed": t.closed} for t in blocks.types],
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp",
                                         delete=False) as f:
            json.dump(data, f)
        os.replace(f.name, path)
    except OSError as exc:  # a read-only cache costs time, not correctness
        log.info("block cache %s not written (%s)", path, exc)
