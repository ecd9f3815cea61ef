"""Module scopes from PyTorch exporters' node metadata: which module each node belongs to."""

from __future__ import annotations

import ast
import functools
from collections.abc import Sequence

from onnx import NodeProto

_OP_CLASS_PREFIXES = ("aten.", "prims.", "<built-in", "torch.ops.")
_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
_CLASS_HIERARCHY = "pkg.torch.onnx.class_hierarchy"


Scoped = tuple[str | None, tuple[tuple[str, str], ...]] | None


def module_of(node: NodeProto, seen: dict[tuple[str, str], Scoped]
              ) -> tuple[str | None, dict[str, str]]:
    """PyTorch module path of a node and the class of each enclosing module, where known.

    From the exporters' `pkg.torch.onnx.name_scopes`/`class_hierarchy` metadata, else from a
    scoped node name such as `/layer1/layer1.0/conv1/Conv` (TorchScript), which has no classes.
    `seen` holds what each distinct metadata text spells: every node of a module repeats it.
    """
    if not node.metadata_props:
        return module_path(node.name), {}
    meta = {p.key: p.value for p in node.metadata_props}
    texts = (meta.get(_NAME_SCOPES) or "", meta.get(_CLASS_HIERARCHY) or "")
    if texts not in seen:
        seen[texts] = _scoped(*texts)
    scoped = seen[texts]
    if scoped is None:
        return module_path(node.name), {}
    path, known = scoped
    return path, dict(known)


def _scoped(scopes_text: str, classes_text: str) -> Scoped:
    """The module path and (path, class) pairs that a node's metadata spells; None where it
    names no scopes."""
    scopes, classes = _parse_list(scopes_text), _parse_list(classes_text)
    if not scopes:
        return None
    if classes and classes[-1].startswith(_OP_CLASS_PREFIXES):  # innermost is the op itself
        scopes, classes = scopes[:-1], classes[:-1]
    paths = _scope_paths(scopes)
    known = tuple((p, c) for p, c in zip(paths, classes, strict=False) if p)
    return (paths[-1] or None) if paths else None, known


def modules_of(nodes: Sequence[NodeProto]) -> list[tuple[str | None, dict[str, str]]]:
    """`module_of` each of a graph's layer nodes, judging the metadata once over all of them:
    where it stops short of the path the node's scoped name spells out for most of the nodes
    that have both (TorchScript under transformers' forward wrappers: every Llama node's says
    'model', its name '/model/model/layers.0/self_attn/q_proj/MatMul'), the names' paths are
    taken, the metadata's classes kept where it reaches and the modules below of unknown
    class ("", so that no outer class names them). A few short ones are kept as they are: a
    module called twice (TorchScript names the second call `relu_1`) or shared."""
    seen: dict[tuple[str, str], Scoped] = {}
    found = [module_of(n, seen) for n in nodes]
    scoped = [i for i, n in enumerate(nodes) if n.metadata_props and n.name.startswith("/")]
    named = {i: module_path(nodes[i].name) for i in scoped}
    short = [i for i in scoped if _extends(named[i], found[i][0])]
    if len(short) * 2 <= len(scoped):
        return found
    for i in short:
        path, classes = found[i]
        deeper = str(named[i])
        parts = deeper.split(".")
        depth = len(path.split(".")) if path else 0
        found[i] = deeper, {**classes, **{".".join(parts[:k]): ""
                                         for k in range(depth + 1, len(parts) + 1)}}
    return found


def _extends(named: str | None, path: str | None) -> bool:
    """`named` is a module path strictly inside `path` (or any, where `path` is None)."""
    return named is not None and named != path and (path is None
                                                    or named.startswith(path + "."))


def module_path(node_name: str) -> str | None:
    """'/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1'; None for an unscoped name."""
    if not node_name.startswith("/"):
        return None
    return _scope_path(node_name.rpartition("/")[0])


@functools.lru_cache(maxsize=1 << 16)
def _scope_path(scope: str) -> str | None:
    """'/layer1/layer1.0/conv1' -> 'layer1.0.conv1': shared by every node of a module."""
    parts = scope.split("/")[1:]
    return (_scope_paths(parts)[-1] if parts else "") or None


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


def _scope_paths(parts: Sequence[str]) -> list[str]:
    """The module path after each of `parts`, scopes each named relative to the module before
    it (an empty part adds nothing): a part that extends the one before it by '.' is a child
    of that container (TorchScript's ['layer1', 'layer1.0', 'conv1'] -> 'layer1.0.conv1';
    dynamo's fully qualified ['model', 'model.layers'] -> 'model.layers'), any other part an
    attribute path inside the module so far (['model', 'model'] -> 'model.model', a
    wrapper's `model` holding a transformers `model`; crossvit's ['blocks.0', 'blocks.0',
    'blocks.0.0'] -> 'blocks.0.blocks.0.0')."""
    comps: list[str] = []
    previous = ""
    paths = []
    for part in parts:
        if part:
            if previous and part.startswith(previous + "."):
                comps.extend(part[len(previous) + 1:].split("."))
            else:
                comps.extend(part.split("."))
            previous = part
        paths.append(".".join(comps))
    return paths
