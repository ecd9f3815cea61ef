"""Tier chains in docs/benchmarks.md: the U-shape and a device-edge-cloud chain on the zoo, and
the two exact k-tier solvers side by side."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit import api
from toolkit.blocks import find_blocks
from toolkit.costs import BUILTIN_SCENARIOS, build_tier_graph
from toolkit.graph import LayerGraph
from toolkit.partition.tiers import solve_tiers
from toolkit.synthetic import deep_model

U_SCENARIOS = ["nano-3090-wifi5", "orin-a100-5g", "phone-h100-5g"]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CHAINS = ["device-edge-cloud", "device-orin-cloud"]


def u_shape_rows(models: dict[str, LayerGraph]) -> list[list[str]]:
    """Per model and scenario: the U-shape optimum, where its tiers are, and what keeping the
    labels home costs against vanilla split learning."""
    rows = []
    for scenario_name in U_SCENARIOS:
        scenario = api.make_scenario(**BUILTIN_SCENARIOS[scenario_name])
        names, boundaries = api.make_chain(scenario, u_shape=True)
        for model, graph in models.items():
            result = api.partition_tiers(graph, names, boundaries, "general")
            counts = [len(result.layers_on(t)) for t in range(3)]
            vanilla = result.vanilla_ms or 0.0
            alone = result.baselines_ms.get("first_tier_only", 0.0)
            rows.append([scenario_name, model, " / ".join(map(str, counts)),
                         f"{result.delay.total:.1f}", f"{vanilla:.1f}",
                         f"{(result.delay.total / vanilla - 1) * 100:+.1f}%" if vanilla else "",
                         f"{alone:.1f}"])
    return rows


def chain_rows(models: dict[str, LayerGraph]) -> list[list[str]]:
    """Per example chain and model: each tier's layers and compute, each boundary's bytes
    terms, and the total."""
    rows = []
    for chain in CHAINS:
        names, boundaries = api.make_chain(api.make_scenario(), str(EXAMPLES / f"{chain}.toml"))
        for model, graph in models.items():
            result = api.partition_tiers(graph, names, boundaries, "general")
            d = result.delay
            tiers = " / ".join(f"{len(result.layers_on(t))}: {d.compute[t]:.1f}"
                               for t in range(len(names)))
            rows.append([chain, model, tiers, " / ".join(f"{c:.1f}" for c in d.crossing),
                         f"{sum(d.latency) + sum(d.labels):.1f}", f"{d.total:.1f}",
                         f"{result.baselines_ms.get('best_ranges', float('nan')):.1f}"])
    return rows


def solver_rows(models: dict[str, LayerGraph], sizes: list[int], repeats: int,
                median_ms: Callable[[Callable[[], object], int], float]) -> list[list[str]]:
    """Layered min cut vs block-wise DP on the U-shape of zoo and deep synthetic models (one
    run, side by side, same C++ max-flow), and their optima."""
    names, boundaries = api.make_chain(
        api.make_scenario(**BUILTIN_SCENARIOS["orin-a100-5g"]), u_shape=True)
    graphs: dict[str, Any] = {n: models[n] for n in ("resnet152", "gpt2") if n in models}
    for size in sizes:
        graphs[f"transformer-{size // 1000}k (synthetic)"] = deep_model("transformer", size)
    rows = []
    for name, graph in graphs.items():
        costs = build_tier_graph(graph, names, boundaries)
        start = time.perf_counter()
        blocks = find_blocks(graph)
        blocks_ms = (time.perf_counter() - start) * 1e3
        values = {m: solve_tiers(costs, m, blocks, with_baselines=False).delay.total
                  for m in ("general", "blockwise")}
        general, blockwise = (
            median_ms(lambda m=m, c=costs, b=blocks: solve_tiers(c, m, b, with_baselines=False),
                      repeats) for m in ("general", "blockwise"))
        same = abs(values["general"] - values["blockwise"]) <= 1e-9 * values["general"]
        rows.append([name, str(len(graph)), f"{general:.1f}", f"{blockwise:.1f}",
                     f"{blocks_ms:.0f}", f"{general / blockwise:.2f}x",
                     "yes" if same else "NO"])
    return rows
