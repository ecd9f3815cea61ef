"""Where `splitcut partition` spends its time, and how reading ONNX scales with model size."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from toolkit import api, zoo
from toolkit.blocks import find_blocks
from toolkit.costs import Scenario, build_cost_graph
from toolkit.onnx import read_onnx
from toolkit.partition import solve

_WIDTH = 8


def phases_ms(path: Path, name: str, scenario: Scenario) -> dict[str, float]:
    """One `partition` run split into its phases: load, costs, blocks, solve (+ baselines)."""
    out = {}
    start = time.perf_counter()
    graph = read_onnx(path, name)
    out["load"] = time.perf_counter() - start
    start = time.perf_counter()
    costs = build_cost_graph(graph, scenario)
    out["costs"] = time.perf_counter() - start
    start = time.perf_counter()
    blocks = find_blocks(graph)
    out["blocks"] = time.perf_counter() - start
    start = time.perf_counter()
    solve(costs, "blockwise", blocks=blocks, with_baselines=False)
    out["solve"] = time.perf_counter() - start
    start = time.perf_counter()
    solve(costs, "blockwise", blocks=blocks)
    out["baselines"] = time.perf_counter() - start - out["solve"]
    return {k: max(v, 0.0) * 1e3 for k, v in out.items()}


def cli_wall_ms(model: str) -> float:
    """`splitcut partition MODEL --json` as a user runs it: a fresh process, imports included."""
    start = time.perf_counter()
    command = [sys.executable, "-c", "from toolkit.cli import main; main()"]
    subprocess.run([*command, "partition", model, "--json"], check=True, capture_output=True)
    return (time.perf_counter() - start) * 1e3


def residual_mlp_onnx(blocks: int, path: Path) -> int:
    """An ONNX chain of `blocks` residual MLP blocks (6 nodes each, distinct small weights).
    Returns the number of nodes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "input"
    for b in range(blocks):
        w1, b1, w2 = f"w1_{b}", f"b1_{b}", f"w2_{b}"
        for name, shape in ((w1, (_WIDTH, _WIDTH)), (b1, (_WIDTH,)), (w2, (_WIDTH, _WIDTH))):
            inits.append(numpy_helper.from_array(
                rng.standard_normal(shape).astype(np.float32), name))
        h = [f"h{b}_{i}" for i in range(6)]
        nodes += [
            helper.make_node("MatMul", [x, w1], [h[0]], name=f"/block{b}/fc1/MatMul"),
            helper.make_node("Add", [h[0], b1], [h[1]], name=f"/block{b}/fc1/Add"),
            helper.make_node("Relu", [h[1]], [h[2]], name=f"/block{b}/act/Relu"),
            helper.make_node("MatMul", [h[2], w2], [h[3]], name=f"/block{b}/fc2/MatMul"),
            helper.make_node("Add", [h[3], x], [h[4]], name=f"/block{b}/Add"),
            helper.make_node("Relu", [h[4]], [h[5]], name=f"/block{b}/out/Relu"),
        ]
        x = h[5]
    graph = helper.make_graph(
        nodes, "residual-mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, _WIDTH])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, _WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return len(nodes)


def read_floor_rows(names: list[str], chain_sizes: list[int], repeats: int) -> list[list[str]]:
    """`partition` (read, costs, blocks, solve) against the read floor (`bench.readfloor`) for
    zoo models and synthetic chains of about `chain_sizes` nodes, each in a fresh process."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = [(name, zoo.export(name), repeats) for name in names]
        for size in chain_sizes:
            path = Path(tmp) / f"chain-{size}.onnx"
            residual_mlp_onnx(max(1, size // 6), path)
            models.append((f"residual MLP chain, {size:,} nodes", path,
                           repeats if size < 100_000 else 1))
        for label, path, times in models:
            floor = _measured("floor", path, times)
            nodes = int(floor["nodes"])
            run = _measured("partition", path, times)
            total = sum(run[k] for k in ("load", "costs", "blocks", "solve", "baselines"))
            rows.append([label, f"{nodes:,}", f"{path.stat().st_size / 1e6:.0f}",
                         f"{floor['floor']:.2f}", f"{run['load']:.2f}",
                         f"{total - run['load']:.2f}", f"{total:.2f}",
                         f"{total / floor['floor']:.1f}x", f"{floor['peak_mb']:,.0f}",
                         f"{run['peak_mb']:,.0f}"])
    return rows


def _measured(what: str, path: Path, repeats: int) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-m", "bench.readfloor", what, str(path),
                           str(repeats)], check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def zoo_rows(names: list[str], with_cli: bool) -> list[list[str]]:
    scenario = api.make_scenario()
    rows = []
    for name in names:
        path = zoo.export(name)
        ms = phases_ms(path, name, scenario)
        total = sum(ms.values())
        row = [name] + [f"{ms[k]:.1f}" for k in ("load", "costs", "blocks", "solve",
                                                   "baselines")] + [f"{total:.0f}"]
        row.append(f"{cli_wall_ms(name):.0f}" if with_cli else "not run")
        rows.append(row)
    return rows
