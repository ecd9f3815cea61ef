"""The corpus: `python -m bench.corpus` -> docs/corpus.md (+ docs/plots/corpus-*.png and
bench/results/corpus.json).

Every torchvision classifier, a sample of timm architectures across its families and the
transformers presets are exported (cached), read, ingested into the corpus's own Neo4j server
(`scripts/neo4j-local` with its home in `.neo4j-corpus/`, Bolt 7698, Browser on 7485, password
splitcut-corpus; started here and left running, so the corpus can be explored after),
partitioned through Neo4j under three scenarios and swept over the link rate; then the
cross-model queries of `cypher/` run on what was stored, each timed and PROFILEd. A model that
cannot be exported or read is listed with its reason. `--limit N` takes N models spread over
the list (a quick look; docs/ is then left as it is).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.__main__ import Doc, machine
from bench.server import Server
from toolkit import api, queries, zoo
from toolkit.blocks import BlockStructure, find_blocks
from toolkit.costs import BUILTIN_SCENARIOS, scenario_key
from toolkit.errors import ToolkitError
from toolkit.store import Store, StoreError

ROOT = Path(__file__).resolve().parent.parent
# timm architectures across its families (each a different module), small to mid-sized
TIMM = [
    "resnet18", "resnet50d", "efficientnet_b0", "mobilenetv3_large_100",
    "vit_small_patch16_224", "deit_small_patch16_224", "swin_tiny_patch4_window7_224",
    "convnext_nano", "regnety_016", "densenet121", "mixer_s16_224", "resmlp_12_224",
    "poolformer_s12", "efficientformer_l1", "mobilevit_s", "levit_128", "ghostnet_100",
    "rexnet_100", "cspresnet50", "dla34", "hrnet_w18_small", "inception_v4", "xception41",
    "vgg11", "beit_base_patch16_224", "coat_lite_tiny", "pvt_v2_b0", "tinynet_a", "lcnet_050",
    "edgenext_small", "fastvit_t8", "repvgg_a0", "nfnet_l0", "twins_pcpvt_small",
    "cait_xxs24_224", "sequencer2d_s",
]
SERVER = Server(".neo4j-corpus", 7698, 7485, "splitcut-corpus")
SCENARIOS = ("nano-3090-wifi5", "xavier-a100-wifi6", "phone-h100-5g")
SWEPT = "nano-3090-wifi5"  # swept over the link rate, 1 Mbit/s to 1 Gbit/s
LOW, HIGH = 1e6, 1e9


def corpus_names() -> list[str]:
    return [*zoo.names("torchvision"), *(f"timm:{n}" for n in TIMM), *zoo.names("hf")]


def compression(graph_layers: int, blocks: BlockStructure) -> float:
    """Layers over what the block-wise solver works on at most: one node per segment of the
    chain, plus the layers of each distinct multi-layer block type once."""
    inner = sum(t.size for t in blocks.types if t.size > 1)
    return graph_layers / (len(blocks.segments) + inner)


def measure(store: Store, name: str) -> dict[str, Any]:
    """One model: read, blocks, three partitions and a sweep through Neo4j."""
    began = time.perf_counter()
    model = zoo.get(name)
    zoo.export(name)
    graph = api.load_graph(name)
    blocks = find_blocks(graph)
    row: dict[str, Any] = {
        "model": name, "source": model.source, "family": model.family, "layers": len(graph),
        "params": graph.total_params, "macs": graph.total_macs,
        "cut_vertices": len(blocks.cut_vertices), "segments": len(blocks.segments),
        "block_types": len(blocks.types),
        "repeated_types": sum(1 for t in blocks.types if t.count > 1 and t.size > 1),
        "compression": compression(len(graph), blocks), "scenarios": {},
    }
    for key in SCENARIOS:
        scenario = api.make_scenario(**BUILTIN_SCENARIOS[key])
        result, _, _ = api.partition_in_neo4j(store, name, scenario, graph=graph)
        total = result.delay.total
        row["scenarios"][key] = {
            "scenario_key": scenario_key(scenario.to_dict()), "total_ms": total,
            "device_layers": len(result.device),
            "gain_vs_device_only": 1 - total / result.baselines_ms["device_only"],
            "gain_vs_best_single_split": 1 - total / result.baselines_ms["best_chain_split"],
        }
    scenario = api.make_scenario(**BUILTIN_SCENARIOS[SWEPT])
    swept, _, _ = api.sweep_in_neo4j(
        store, name, scenario, lambda g: api.sweep_model(g, scenario, "rate", LOW, HIGH),
        graph=graph)
    row["sweep_cuts"] = len(swept.pieces)
    row["seconds"] = time.perf_counter() - began
    return row


def depths(store: Store, rows: list[dict[str, Any]]) -> None:
    """Each model's cut depth per scenario, as `cut_positions` reads it back from Neo4j."""
    for key in SCENARIOS:
        sk = rows[0]["scenarios"][key]["scenario_key"]
        found = {r["model"]: r for r in store.run_saved("cut_positions", {"scenario_key": sk})}
        for row in rows:
            row["scenarios"][key]["depth"] = found[row["model"]]["depth"]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def family_table(doc: Doc, rows: list[dict[str, Any]]) -> None:
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_family[row["family"]].append(row)
    header = ["family", "models", "layers", "block types", "cut vertices", "compression"]
    header += [f"depth {k}" for k in SCENARIOS]
    header += [f"gain vs best single split, {k}" for k in SCENARIOS]
    table = []
    for family, members in sorted(by_family.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        cells = [family, str(len(members))]
        for key, fmt in (("layers", "{:,.0f}"), ("block_types", "{:.0f}"),
                         ("cut_vertices", "{:.0f}"), ("compression", "{:.1f}x")):
            cells.append(fmt.format(median([m[key] for m in members])))
        for field in ("depth", "gain_vs_best_single_split"):
            for key in SCENARIOS:
                value = median([m["scenarios"][key][field] for m in members])
                value = round(value, 4) + 0.0  # no '-0.0%' from rounding noise
                cells.append(f"{value:.2f}" if field == "depth" else f"{value:.1%}")
        table.append(cells)
    doc.table(header, table)


def model_table(doc: Doc, rows: list[dict[str, Any]]) -> None:
    header = ["model", "family", "layers", "cut vertices", "block types (repeated)",
              "compression", *(f"depth {k}" for k in SCENARIOS), "cuts over 1 Mbit/s-1 Gbit/s"]
    table = [[r["model"], r["family"], f"{r['layers']:,}", str(r["cut_vertices"]),
              f"{r['block_types']} ({r['repeated_types']})", f"{r['compression']:.1f}x",
              *(f"{r['scenarios'][k]['depth']:.2f}" for k in SCENARIOS), str(r["sweep_cuts"])]
             for r in rows]
    doc.table(header, table)


def query_runs(store: Store, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each cross-model query with the parameters the corpus page uses: its rows, the median
    of five runs, and its PROFILE (database hits, whether any operator scans all nodes)."""
    key = rows[0]["scenarios"][SCENARIOS[-1]]["scenario_key"]
    device = BUILTIN_SCENARIOS[SCENARIOS[-1]]["device"]  # the delays stored last
    asked = [
        ("block_types_across_families", {"min_families": 3, "min_size": 2}),
        ("families_sharing_a_type_cut_apart", {"scenario_key": key, "min_gap": 0.05}),
        ("costliest_block_types_in_corpus", {"device": device, "limit": 10}),
        ("cut_changes", {"low": 10e6, "high": 100e6, "parameter": "rate"}),
        ("cut_depth_by_family", {"scenario_key": key}),
        ("models_sharing_block_types", {"min_models": 10}),
    ]
    out = []
    for name, params in asked:
        found = store.run_saved(name, params)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            store.run_saved(name, params)
            times.append((time.perf_counter() - start) * 1e3)
        hits, operators = profile(store, name, params)
        out.append({"query": name, "params": params, "rows": found, "median_ms": median(times),
                    "db_hits": hits, "scans_all_nodes": "AllNodesScan" in operators,
                    "operators": sorted(operators)})
    return out


def profile(store: Store, name: str, params: dict[str, Any]) -> tuple[int, set[str]]:
    """Total database hits and the operator types of the query's PROFILE."""
    with store.driver.session(database=store.connection.database) as session:
        summary = session.run("PROFILE " + queries.load(name), params).consume()
    hits, operators = 0, set()
    stack = [summary.profile or {}]
    while stack:
        plan = stack.pop()
        hits += int(plan.get("dbHits", 0))
        operators.add(str(plan.get("operatorType", "")).split("@")[0])
        stack.extend(plan.get("children", []))
    return hits, operators


def shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        text = ", ".join(shown(v) for v in value[:6])
        return f"[{text}{', ...' if len(value) > 6 else ''}] ({len(value)})" if len(
            value) > 6 else f"[{text}]"
    return str(value)


def query_section(doc: Doc, runs: list[dict[str, Any]]) -> None:
    doc.add("| query | rows | median time | database hits | scans all nodes |")
    doc.add("|---|---|---|---|---|")
    for run in runs:
        doc.add(f"| `{run['query']}` | {len(run['rows'])} | {run['median_ms']:.0f} ms | "
                f"{run['db_hits']:,} | {'yes' if run['scans_all_nodes'] else 'no'} |")
    doc.add()
    for run in runs:
        params = " ".join(f"--param {k}={v!r}" if isinstance(v, str) else
                          f"--param {k}={json.dumps(v)}" for k, v in run["params"].items())
        doc.add(f"### {queries.description(run['query'])}")
        doc.add()
        doc.add(f"`splitcut query {run['query']} {params}` (first 8 of {len(run['rows'])} rows)")
        doc.add()
        keys = [k for k in (run["rows"][0] if run["rows"] else {}) if k != "signature"
                and k != "scenario_key"]
        doc.table(keys, [[shown(r[k]) for k in keys] for r in run["rows"][:8]])


def plots(rows: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = ROOT / "docs" / "plots"
    out.mkdir(parents=True, exist_ok=True)
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_family[row["family"]].append(row)
    families = sorted((f for f, m in by_family.items() if len(m) >= 3),
                      key=lambda f: median([m["scenarios"][SCENARIOS[-1]]["depth"]
                                            for m in by_family[f]]))
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(families) + 1.5))
    for k, (key, marker) in enumerate(zip(SCENARIOS, "o^s", strict=True)):
        for i, family in enumerate(families):
            ys = [i + (k - 1) * 0.22] * len(by_family[family])
            xs = [m["scenarios"][key]["depth"] for m in by_family[family]]
            ax.scatter(xs, ys, marker=marker, s=18, alpha=0.7,
                       label=key if i == 0 else None, color=f"C{k}")
    ax.set_yticks(range(len(families)), families)
    ax.set_xlabel("cut depth (last device layer's place in topological order)")
    ax.set_title("Where the optimal cut falls, per family (families with 3+ models)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "corpus-depth.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 5))
    for k, source in enumerate(("torchvision", "timm", "hf")):
        pts = [(r["layers"], r["compression"]) for r in rows if r["source"] == source]
        if pts:
            ax.scatter(*zip(*pts, strict=True), label=source, s=20, alpha=0.75, color=f"C{k}")
    ax.set_xscale("log")
    ax.set_xlabel("layers")
    ax.set_ylabel("compression of the block abstraction (x)")
    ax.set_title("How much the block abstraction compresses each model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "corpus-compression.png", dpi=110)
    plt.close(fig)
    return ["plots/corpus-depth.png", "plots/corpus-compression.png"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, help="N models spread over the list; prints only")
    args = parser.parse_args()
    names = zoo.sample(corpus_names(), args.limit)
    rows, skipped = [], []
    store = Store(SERVER.start())
    with store:
        store.ensure_schema()
        for i, name in enumerate(names, 1):
            try:
                row = measure(store, name)
            except StoreError:
                raise
            except ToolkitError as exc:
                skipped.append({"model": name, "reason": str(exc)})
                print(f"[{i}/{len(names)}] {name}: skipped: {exc}", flush=True)
                continue
            rows.append(row)
            print(f"[{i}/{len(names)}] {name}: {row['layers']} layers, "
                  f"{row['seconds']:.1f} s", flush=True)
        depths(store, rows)
        runs = query_runs(store, rows)
    write(rows, skipped, runs, publish=args.limit is None)


def write(rows: list[dict[str, Any]], skipped: list[dict[str, str]],
          runs: list[dict[str, Any]], publish: bool) -> None:
    doc = Doc()
    families = {r["family"] for r in rows}
    layers = sum(r["layers"] for r in rows)
    doc.add("# The corpus")
    doc.add()
    doc.add(f"Written by `python -m bench.corpus` on {machine()}. {len(rows)} architectures "
            f"({sum(r['source'] == 'torchvision' for r in rows)} torchvision, "
            f"{sum(r['source'] == 'timm' for r in rows)} timm, "
            f"{sum(r['source'] == 'hf' for r in rows)} transformers) in {len(families)} "
            f"families, {layers:,} layers, exported with random weights (nothing downloaded), "
            "ingested into Neo4j 5.26 with their blocks detected by Cypher, partitioned through "
            "Neo4j under three scenarios (batch 32, fp32) and swept over the link rate from "
            "1 Mbit/s to 1 Gbit/s on the first. A family is the library module that defines "
            "an architecture (`resnet` holds ResNets, ResNeXts and Wide ResNets) or the "
            "transformers model type.")
    doc.add()
    doc.add("- **depth**: how deep the cut is: the last device layer's place in topological "
            "order over the layers (as `cut_positions` returns it): near 0 = only the input "
            "layers stay on the device, 1 = train on the device alone.")
    doc.add("- **compression**: layers over what the block-wise solver works on at most (one "
            "node per segment between cut vertices, plus each distinct multi-layer block type "
            "once).")
    doc.add("- **gain vs best single split**: how much faster the optimal partition trains "
            "than the best cut at a single cut vertex (the chain baseline).")
    doc.add(f"- scenarios: {', '.join(f'`{k}`' for k in SCENARIOS)} "
            "(`splitcut profiles`; `costs.BUILTIN_SCENARIOS`).")
    doc.add()
    images = plots(rows) if publish else []
    doc.add("## Per family")
    doc.add()
    doc.add("Medians over each family's models.")
    doc.add()
    family_table(doc, rows)
    for image in images:
        doc.add(f"![{image}]({image})")
        doc.add()
    doc.add("## Cross-model questions")
    doc.add()
    doc.add("The saved queries of `cypher/` on this corpus, each run five times (median) "
            "through `splitcut query`'s read path, with their `PROFILE`: total database hits "
            "and whether any step scans every node.")
    doc.add()
    query_section(doc, runs)
    doc.add("## Every model")
    doc.add()
    model_table(doc, rows)
    if skipped:
        doc.add("## Skipped")
        doc.add()
        doc.table(["model", "reason"], [[s["model"], s["reason"]] for s in skipped])
    if publish:
        (ROOT / "docs" / "corpus.md").write_text("\n".join(doc.lines) + "\n")
        results = ROOT / "bench" / "results" / "corpus.json"
        results.write_text(json.dumps({"models": rows, "skipped": skipped, "queries": [
            {k: v for k, v in run.items() if k != "rows"} | {"row_count": len(run["rows"])}
            for run in runs]}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
