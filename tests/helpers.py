"""Tiny ONNX models built in code with onnx.helper, so tests commit no binaries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def vi(
    name: str, shape: Sequence[int | str] | None, dtype: int = TensorProto.FLOAT
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def weight(name: str, *shape: int, seed: int = 0) -> TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[TensorProto] = (),
    opset: int = 17,
    check: bool = True,
) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    if check:
        onnx.checker.check_model(m)
    return m


def save(m: onnx.ModelProto, path: Path) -> Path:
    onnx.save(m, str(path))
    return path


def single_op(op: str, in_shapes: dict[str, Sequence[int]], out_shape: Sequence[int],
              weights: Sequence[TensorProto] = (), **attrs: object) -> onnx.ModelProto:
    """One node `op` reading the named inputs (then the weights) and writing `y`."""
    names = [*in_shapes, *(w.name for w in weights)]
    node = helper.make_node(op, names, ["y"], name=op, **attrs)
    return model([node], [vi(n, s) for n, s in in_shapes.items()], [vi("y", out_shape)], weights)


def chain(n: int, width: int = 8) -> onnx.ModelProto:
    """x -> (MatMul -> Relu) * n, a plain chain."""
    nodes, inits = [], []
    prev = "x"
    for i in range(n):
        inits.append(weight(f"w{i}", width, width, seed=i))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}"))
        prev = f"r{i}"
    return model(nodes, [vi("x", [1, width])], [vi(prev, [1, width])], inits)


def as_constant_nodes(m: onnx.ModelProto) -> onnx.ModelProto:
    """`m` with every initializer written as a Constant node, as paddle2onnx writes weights."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    constants = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t)
                 for t in out.graph.initializer]
    nodes = [*constants, *out.graph.node]
    del out.graph.initializer[:]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def run_main(args: Sequence[str], capsys: object, monkeypatch: object) -> tuple[int, str, str]:
    """Run the console entry point in-process: (exit code, stdout, stderr)."""
    import sys

    from toolkit.cli import main

    monkeypatch.setattr(sys, "argv", ["splitcut", *args])  # type: ignore[attr-defined]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()  # type: ignore[attr-defined]
    return code, captured.out, captured.err


def schema(name: str) -> dict:
    """A JSON contract of the package (`toolkit/schemas/NAME.schema.json`)."""
    text = (resources.files("toolkit") / "schemas" / f"{name}.schema.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]


def assert_shaped(rows: Sequence[dict], key: str, expected_ms: float) -> None:
    """A kernel-shaped message is never faster than its bytes at the link's rate (within 10%:
    the clock and HTB's token accounting), and typically takes just that: the median over the
    iterations within 20%. Single iterations may run longer — the receiving process can be
    off the CPU when its last byte lands, on two cores shared with a Neo4j server — so no
    bound is put on one message's excess."""
    import statistics

    times = [row[key] for row in rows]
    assert min(times) >= 0.9 * expected_ms, (key, times, expected_ms)
    assert statistics.median(times) == pytest.approx(expected_ms, rel=0.2), (key, times)


def with_local_function() -> onnx.ModelProto:
    """A block (MatMul, Relu) written once as a model-local function and called twice, as
    onnxscript and torch.onnx's `export_modules_as_functions` write modules."""
    body = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    block = helper.make_function("local", "Block", ["x", "w"], ["y"], body,
                                 opset_imports=[helper.make_opsetid("", 17)])
    nodes = [helper.make_node("Block", ["x", "w"], ["a"], domain="local", name="b1"),
             helper.make_node("Block", ["a", "w"], ["y"], domain="local", name="b2")]
    graph = helper.make_graph(nodes, "g", [vi("x", [1, 16])], [vi("y", [1, 16])],
                              [weight("w", 16, 16)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("local", 1)],
                          functions=[block])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m
