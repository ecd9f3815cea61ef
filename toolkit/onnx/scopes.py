"""Module scopes from PyTorch exporters' node metadata: which module each node belongs to."""

from __future__ import annotations

import ast
import functools
from collections.abc import Sequence

from onnx import NodeProto

_OP_CLASS_PREFIXES = ("aten.", "prims.", "<built-in", "torch.ops.")
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
_CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"


def module_of(node: NodeProto) -> tuple[str | None, dict[str, str]]:
    """PyTorch module path of a node and the class of each enclosing module, where known.

    From the exporters' `pkg.torch.onnx.name_scopes`/`class_hierarchy` metadata, else from a
    scoped node name such as `/layer1/layer1.0/conv1/Conv` (TorchScript), which has no classes.
    """
    if not node.metadata_props:
        return module_path(node.name), {}
    meta = {p.key: p.value for p in node.metadata_props}
    scopes = _parse_list(meta.get(_NAME_SCOPES))
    classes = _parse_list(meta.get(_CLASS_HIERARCHY))
    if scopes:
        if classes and classes[-1].startswith(_OP_CLASS_PREFIXES):  # innermost is the op itself
            scopes, classes = scopes[:-1], classes[:-1]
        paths = [_join_scopes([s for s in scopes[: k + 1] if s]) for k in range(len(scopes))]
        known = {p: c for p, c in zip(paths, classes, strict=False) if p}
        return (paths[-1] or None) if paths else None, known
    return module_path(node.name), {}


def module_path(node_name: str) -> str | None:
    """'/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1'; None for an unscoped name."""
    if not node_name.startswith("/"):
        return None
    return _scope_path(node_name.rpartition("/")[0])


@functools.lru_cache(maxsize=1 << 16)
def _scope_path(scope: str) -> str | None:
    """'/layer1/layer1.0/conv1' -> 'layer1.0.conv1': shared by every node of a module."""
    return _join_scopes([p for p in scope.split("/")[1:] if p]) or None


_METADATA_CHARS = 65_536  # a scope list longer than this is not read as one


def _parse_list(text: str | None) -> list[str]:
    if not text:
        return []
    if len(text) > _METADATA_CHARS:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return [text]
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def _join_scopes(parts: Sequence[str]) -> str:
    """['layer1', 'layer1.0', 'conv1'] -> 'layer1.0.conv1' (parts may be qualified or not)."""
    comps: list[str] = []
    for part in parts:
        for k in range(len(comps)):  # a part may repeat a tail of the path: 'downsample.0'
            tail = ".".join(comps[k:])
            if part == tail or part.startswith(tail + "."):
                comps = comps[:k]
                break
        comps.extend(part.split("."))
    return ".".join(comps)
