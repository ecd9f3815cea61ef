"""Training delay of the optimal partition vs the baselines across link rates, with plots.

For each device/server pair, batch size and zoo model, the link rate sweeps 1-1000 Mbit/s
(uplink = downlink, 5 ms latency); every point is solved exactly, and the baselines are costed
under the same model. Plots go to docs/plots/.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit import api
from toolkit.blocks import BlockStructure, find_blocks
from toolkit.costs import build_cost_graph
from toolkit.graph import LayerGraph
from toolkit.partition import solve
from toolkit.partition.baselines import best_chain_split
from toolkit.partition.validate import validate_partition

PAIRS = (("jetson-nano", "rtx-3090"), ("jetson-agx-orin", "a100"),
         ("midrange-phone", "h200-measured"))
BATCHES = (8, 32)
RATES_MBPS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
LATENCY = "5ms"
BASELINES = ("device_only", "best_chain_split", "dads_repaired")  # server_only: plots only
PLOTS = Path(__file__).resolve().parent.parent / "docs" / "plots"


@dataclass(frozen=True)
class Point:
    model: str
    layers: int
    pair: tuple[str, str]
    batch: int
    mbps: float
    optimal: float
    baselines: dict[str, float]
    device_layers: int
    device_flops_share: float
    fixed_split: float  # the best single split chosen at the median rate, run at this rate
    fixed_optimal: float  # the optimal partition for the median rate, run at this rate


def sweep(models: dict[str, LayerGraph], progress: Callable[[str], None]) -> list[Point]:
    """Every model x pair x batch x rate, solved block-wise (exact)."""
    blocks: dict[str, BlockStructure] = {name: find_blocks(g) for name, g in models.items()}
    median_rate = RATES_MBPS[len(RATES_MBPS) // 2]
    points = []
    for device, server in PAIRS:
        for batch in BATCHES:
            progress(f"  {device} + {server}, batch {batch}")
            scenarios = {mbps: api.make_scenario(device, server, None, f"{mbps}Mbps",
                                                 f"{mbps}Mbps", LATENCY, batch)
                         for mbps in RATES_MBPS}
            for name, graph in models.items():
                median_costs = build_cost_graph(graph, scenarios[median_rate])
                fixed_optimal = solve(median_costs, "blockwise", blocks=blocks[name]).device
                fixed_split = list(range(best_chain_split(median_costs)[1]))
                for mbps, scenario in scenarios.items():
                    costs = build_cost_graph(graph, scenario)
                    result = solve(costs, "blockwise", blocks=blocks[name])
                    total_flops = sum(costs.flops) or 1.0
                    points.append(Point(
                        name, len(graph), (device, server), batch, mbps, result.delay.total,
                        dict(result.baselines_ms), len(result.device),
                        sum(costs.flops[i] for i in result.device) / total_flops,
                        validate_partition(costs, fixed_split).total,
                        validate_partition(costs, fixed_optimal).total,
                    ))
    return points


def reduction(point: Point, baseline: str) -> float:
    """How much lower the optimum is than a baseline, as a fraction of the baseline."""
    return 1.0 - point.optimal / point.baselines[baseline]


def pct(value: float) -> str:
    """A fraction as a percentage; rounding noise around zero prints as 0.0%."""
    return f"{0.0 if abs(value) < 1e-9 else value:.1%}"


def summary_rows(points: list[Point]) -> list[list[str]]:
    """Per pair and batch: mean / max reduction vs each baseline, over models and rates."""
    rows = []
    for pair in PAIRS:
        for batch in BATCHES:
            group = [p for p in points if p.pair == pair and p.batch == batch]
            row = [f"{pair[0]} + {pair[1]}", str(batch)]
            for baseline in BASELINES:
                values = [reduction(p, baseline) for p in group]
                row.append(f"{pct(statistics.mean(values))} / {pct(max(values))}")
            split = sum(1 for p in group if 0 < p.device_layers < p.layers)
            row.append(f"{split} of {len(group)}")
            rows.append(row)
    return rows


def beats_single_split(points: list[Point]) -> dict[str, float]:
    """Models whose optimum beats the best single split point somewhere: the largest gain."""
    found: dict[str, float] = {}
    for p in points:
        gain = reduction(p, "best_chain_split")
        if gain > 1e-3:
            found[p.model] = max(found.get(p.model, 0.0), gain)
    return found


def dynamic_rows(points: list[Point]) -> list[list[str]]:
    """A link whose rate visits every swept rate equally often: re-partitioning optimally at
    each rate vs keeping a partition chosen once at the median rate."""
    rows = []
    for pair in PAIRS:
        for batch in BATCHES:
            vs_split, vs_fixed = [], []
            for model in dict.fromkeys(p.model for p in points):
                group = [p for p in points if p.pair == pair and p.batch == batch
                         and p.model == model]
                adaptive = statistics.mean(p.optimal for p in group)
                vs_split.append(1 - adaptive / statistics.mean(p.fixed_split for p in group))
                vs_fixed.append(1 - adaptive / statistics.mean(p.fixed_optimal for p in group))
            rows.append([f"{pair[0]} + {pair[1]}", str(batch),
                         f"{pct(statistics.mean(vs_split))} ({pct(min(vs_split))} to "
                         f"{pct(max(vs_split))})",
                         f"{pct(statistics.mean(vs_fixed))} ({pct(min(vs_fixed))} to "
                         f"{pct(max(vs_fixed))})"])
    return rows


def cut_moves(points: list[Point], pair: tuple[str, str], batch: int) -> list[list[str]]:
    """Per model: the device layer count at each rate (where the cut moves)."""
    rows = []
    for model in dict.fromkeys(p.model for p in points):
        group = sorted((p for p in points if p.pair == pair and p.batch == batch
                        and p.model == model), key=lambda p: p.mbps)
        rows.append([model, str(group[0].layers)] + [str(p.device_layers) for p in group])
    return rows


def plot(points: list[Point]) -> list[Path]:
    """One figure per pair and batch: delay vs rate per model, optimum and baselines; and one
    figure of the device's share of FLOPs vs rate (where the cut moves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    models = list(dict.fromkeys(p.model for p in points))
    written = []
    styles = {"optimal": ("black", "-"), "device_only": ("tab:blue", "--"),
              "best_chain_split": ("tab:green", "-."), "dads_repaired": ("tab:orange", ":"),
              "server_only": ("tab:red", (0, (1, 3)))}
    for pair in PAIRS:
        for batch in BATCHES:
            cols = 4
            rows = (len(models) + cols - 1) // cols
            fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
            for ax, model in zip(axes.flat, models, strict=False):
                group = sorted((p for p in points if p.pair == pair and p.batch == batch
                                and p.model == model), key=lambda p: p.mbps)
                rates = [p.mbps for p in group]
                for key, (colour, style) in styles.items():
                    values = [p.optimal if key == "optimal" else p.baselines[key] for p in group]
                    ax.plot(rates, np.array(values) / 1e3, color=colour, linestyle=style,
                            label=key.replace("_", " "))
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_title(model, fontsize=9)
                ax.set_xlabel("link Mbit/s", fontsize=8)
                ax.set_ylabel("s per iteration", fontsize=8)
                ax.tick_params(labelsize=7)
            for ax in list(axes.flat)[len(models):]:
                ax.axis("off")
            axes.flat[0].legend(fontsize=7)
            fig.suptitle(f"Training delay per iteration: {pair[0]} + {pair[1]}, batch {batch}")
            fig.tight_layout()
            path = PLOTS / f"delay-{pair[0]}-{pair[1]}-b{batch}.png"
            fig.savefig(path, dpi=80)
            plt.close(fig)
            written.append(path)
    fig, axes = plt.subplots(1, len(PAIRS), figsize=(5 * len(PAIRS), 4), squeeze=False)
    for ax, pair in zip(axes.flat, PAIRS, strict=True):
        for model in models:
            group = sorted((p for p in points if p.pair == pair and p.batch == BATCHES[-1]
                            and p.model == model), key=lambda p: p.mbps)
            ax.plot([p.mbps for p in group], [p.device_flops_share for p in group],
                    marker=".", label=model)
        ax.set_xscale("log")
        ax.set_title(f"{pair[0]} + {pair[1]}, batch {BATCHES[-1]}", fontsize=9)
        ax.set_xlabel("link Mbit/s")
        ax.set_ylabel("share of FLOPs on the device")
    axes.flat[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path = PLOTS / "cut-moves.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    written.append(path)
    return written
