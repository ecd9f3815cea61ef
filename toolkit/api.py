"""The library's front door: what the CLI commands call, one function each."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import re
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toolkit import profiles, zoo
from toolkit.blockcache import model_blocks
from toolkit.blocks import find_blocks
from toolkit.costgraph import CostGraph
from toolkit.costs import LABEL_BYTES, Scenario, build_cost_graph, build_tier_graph
from toolkit.errors import PartitionError, ScenarioError, ToolkitError
from toolkit.graph import LayerGraph
from toolkit.measured import MeasuredProfile, load_profile
from toolkit.partition import Partition, checked_partition, solve, stored
from toolkit.partition.blockwise import Chain
from toolkit.partition.stcut import CutResult
from toolkit.partition.sweep import SweepResult
from toolkit.partition.tiers import TierPartition, file_stems, solve_tiers
from toolkit.profiles import Processor
from toolkit.tiergraph import TierGraph

if TYPE_CHECKING:
    from toolkit.onnx.split import SplitResult, TierSplit
    from toolkit.store import Store
    from toolkit.train.session import TrainResult

CUTS = ("optimal", "best-single", "device-only")


def load_graph(
    model: str, name: str | None = None, exporter: str = "torchscript",
    dims: dict[str, int] | None = None,
) -> LayerGraph:
    """MODEL is an .onnx path or a zoo name (exported once, then cached); `dims` gives symbolic
    input dimensions their values (`toolkit.onnx.read_model`)."""
    from toolkit.onnx import read_onnx

    path, default_name = zoo.resolve(model, exporter)
    return read_onnx(path, name or default_name, dims)


def split_halves(
    model: str, result: Partition, out_dir: str, exporter: str = "torchscript", check: bool = True,
    dims: dict[str, int] | None = None,
) -> SplitResult:
    """Write the partition's device.onnx and server.onnx and check them against the whole."""
    from toolkit.onnx.split import split_model

    path, _ = zoo.resolve(model, exporter)
    device = [result.graph.names[i] for i in result.device]
    return split_model(path, device, out_dir, check, dims)


def split_tiers(
    model: str, result: TierPartition, out_dir: str, exporter: str = "torchscript",
    check: bool = True, dims: dict[str, int] | None = None,
) -> tuple[list[str], TierSplit]:
    """Write one ONNX file per tier that holds layers and check them, in order, against the
    whole. Returns the file stems (a tier name used twice, as a U-shape's device, becomes
    `device-head` and `device-tail`) and the split."""
    from toolkit.onnx.split import split_tiers as write

    path, _ = zoo.resolve(model, exporter)
    files = file_stems(result.graph.tiers)
    tier_of = {result.graph.names[i]: int(t) for i, t in enumerate(result.tier)}
    return files, write(path, tier_of, files, out_dir, check, dims)


def make_scenario(
    device: str = "jetson-nano",
    server: str = "rtx-3090",
    link: str | None = "wifi5",
    uplink: str | None = None,
    downlink: str | None = None,
    latency: str | None = None,
    batch: int = 32,
    precision: str = "fp32",
    profile_dir: str | None = None,
    sync_every: int | None = None,
    measured: Sequence[str] = (),
    optimizer: str = "sgd",
    label_bytes: float = LABEL_BYTES,
) -> Scenario:
    """A scenario from profile names and link settings; explicit rates override the preset."""
    preset = profiles.link(link) if link else None
    if preset is None and (uplink is None or downlink is None):
        raise PartitionError("give a --link preset or both --uplink and --downlink")
    up = profiles.parse_rate(uplink) if uplink else preset.uplink_bps  # type: ignore[union-attr]
    down = profiles.parse_rate(downlink) if downlink else preset.downlink_bps  # type: ignore[union-attr]
    lat = profiles.parse_latency(latency) if latency else (preset.latency_ms if preset else 0.0)
    return Scenario(
        device=profiles.processor(device, profile_dir),
        server=profiles.processor(server, profile_dir),
        uplink_bps=up, downlink_bps=down, latency_ms=lat, batch=batch, precision=precision,
        link=link if preset and not (uplink or downlink or latency) else None,
        sync_every=sync_every, measured=tuple(load_profile(p) for p in measured),
        optimizer=optimizer, label_bytes=label_bytes,
    )


def measure_model(
    model: str, name: str | None, exporter: str, processor: str, use_torch: bool = True,
    dims: dict[str, int] | None = None, executor: bool = False,
) -> MeasuredProfile:
    """Per-layer times of MODEL on this machine (see `toolkit.measure`), its symbolic
    dimensions at their `dims` values; with `executor`, forward and backward of every layer
    of any file as `splitcut train` runs it (`toolkit.train.timing`)."""
    from toolkit.measure import measure

    path, _ = zoo.resolve(model, exporter)
    graph = load_graph(model, name, exporter, dims)
    if executor:
        from toolkit.train.timing import executor_profile

        if graph.file_batch not in (None, 1):
            raise ToolkitError(f"{graph.name} fixes its batch at {graph.file_batch}; "
                               "--executor times batch 1 (export it with a dynamic batch)")
        return executor_profile(Path(path), graph, processor, dims=dims, source_model=model)
    zoo_name = model if use_torch and model in zoo.MODELS else None
    return measure(path, graph, processor, zoo_name, source_model=model, dims=dims)


def calibrate_profile(profile_paths: Sequence[str], base: str, name: str,
                      kind: str = "device") -> Processor:
    """Fit `base`'s efficiencies to measured profiles (each remembers the model it timed and
    the CPU it ran on): a `kind` profile named `name` for that CPU."""
    from toolkit.calibrate import fit
    from toolkit.measured import load_profile, this_machine

    samples, machines = [], []
    for path in profile_paths:
        measured = load_profile(path)
        graph = load_graph(measured.source_model, dims=measured.dims)
        measured.check_model(graph)
        samples.append((graph, measured.forward_ms))
        machines.append(measured.machine or this_machine())
    return fit(profiles.processor(base), samples, name, kind=kind,
               machine=" / ".join(dict.fromkeys(machines)))


def layer_indices(graph: LayerGraph, names: Sequence[str], what: str) -> list[int]:
    """Layer names or module paths (as every output shows them) -> layer indices.

    A module path names every layer inside it. `layer:NAME` or `module:PATH` says which is
    meant when a name is both; an unknown or ambiguous name is a clear error."""
    layers = list(graph)
    index = {layer.name: i for i, layer in enumerate(layers)}
    out: list[int] = []
    for text in names:
        kind, sep, name = text.partition(":")
        if not sep or kind not in ("layer", "module"):
            kind, name = "", text
        inside = [i for i, x in enumerate(layers)
                  if x.module and (x.module == name or x.module.startswith(name + "."))]
        if kind == "layer" or (not kind and name in index and not inside):
            if name not in index:
                raise PartitionError(f"{what}: no layer named {name!r} in {graph.name}")
            out.append(index[name])
        elif kind == "module" or (not kind and inside and name not in index):
            if not inside:
                raise PartitionError(f"{what}: no module named {name!r} in {graph.name}")
            out += inside
        elif not kind and name in index:
            raise PartitionError(
                f"{what}: {name!r} is both a layer and a module of {len(inside)} layers in "
                f"{graph.name}; write layer:{name} or module:{name}")
        else:
            raise PartitionError(f"{what}: no layer or module named {name!r} in {graph.name}")
    return out


def partition_model(
    graph: LayerGraph,
    scenario: Scenario,
    method: str = "blockwise",
    pin_device: Sequence[str] = (),
    pin_server: Sequence[str] = (),
    device_memory: float | None = None,
) -> Partition:
    """Cost the model under `scenario` and find its optimal partition; with `device_memory`
    (bytes), the optimal one whose device half fits it (`partition.budget`, exact)."""
    costs = pinned_costs(graph, build_cost_graph(graph, scenario), pin_device, pin_server)
    known = scenario.device.memory_gb * 1e9 if scenario.device.memory_gb else None
    if device_memory is not None:
        from toolkit.partition.budget import solve_with_budget

        budgeted = solve_with_budget(costs, device_memory)
        result = budgeted.partition
        result.memory = {**budgeted.to_dict(), "device_memory_bytes": known}
        return result
    blocks, blocks_ms = None, 0.0
    if method == "blockwise":
        blocks, blocks_ms = model_blocks(graph)
    result = solve(costs, method, blocks=blocks, blocks_ms=blocks_ms)
    result.memory = {"device_memory_bytes": known}
    return result


def pinned_costs(graph: LayerGraph, costs: CostGraph, pin_device: Sequence[str] = (),
                 pin_server: Sequence[str] = ()) -> CostGraph:
    """`costs` with the user's pins (`--pin`, `--pin-server`: layer names or module paths)."""
    return costs.with_pins(
        device=dict.fromkeys(layer_indices(graph, pin_device, "--pin"), "user (--pin)"),
        server=layer_indices(graph, pin_server, "--pin-server"))


_TIER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
_TIER_KEYS = {"name", "processor", "link", "uplink", "downlink", "latency"}


def make_chain(scenario: Scenario, tiers_file: str | None = None, u_shape: bool = False,
               profile_dir: str | None = None, measured: Sequence[str] = (),
               ) -> tuple[list[str], list[Scenario]]:
    """A tier chain: its tier names and one two-tier scenario per boundary
    (`costs.build_tier_graph`). `u_shape`: device -> server -> device on `scenario`, the
    second link the first with its directions swapped (activations come down, gradients go
    up). `tiers_file`: a TOML file of `[[tier]]` tables in chain order, each with a `name` and
    a `processor` (profile name or TOML path), and from the second on the link from the tier
    before (`link` preset and/or `uplink` (towards this tier), `downlink`, `latency`); batch,
    precision and optimizer come from `scenario`. Measured profiles (`scenario`'s and the
    `measured` files) go to the boundaries whose processors they time; each must time one of
    the chain's processors."""
    if u_shape == (tiers_file is not None):
        raise ScenarioError("give either a --tiers file or --u-shape")
    pool = (*scenario.measured, *(load_profile(p) for p in measured))
    if u_shape:
        names = ["device", "server", "device"]
        procs = [scenario.device, scenario.server, scenario.device]
        back = dataclasses.replace(scenario, device=scenario.server, server=scenario.device,
                                   uplink_bps=scenario.downlink_bps,
                                   downlink_bps=scenario.uplink_bps, link=None, measured=())
        boundaries = [dataclasses.replace(scenario, measured=()), back]
    else:
        assert tiers_file is not None
        names, procs, boundaries = _read_chain(scenario, tiers_file, profile_dir)
    running = list(dict.fromkeys(p.name for p in procs))
    for profile in pool:
        if profile.processor not in running:
            raise ScenarioError(f"measured profile is for processor {profile.processor!r}, but "
                                f"the chain runs on {', '.join(map(repr, running))}")
    return names, [dataclasses.replace(
        s, measured=tuple(m for m in pool if m.processor in {s.device.name, s.server.name}))
        for s in boundaries]


def _read_chain(scenario: Scenario, tiers_file: str, profile_dir: str | None
                ) -> tuple[list[str], list[Processor], list[Scenario]]:
    """A `--tiers` file: its tier names, processors and boundaries (no measured profiles)."""
    try:
        data = tomllib.loads(Path(tiers_file).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"cannot read tier chain {tiers_file}: {exc}") from None
    tiers = data.get("tier")
    if not isinstance(tiers, list) or len(tiers) < 2 or set(data) != {"tier"}:
        raise ScenarioError(f"{tiers_file}: write two or more [[tier]] tables and nothing else")
    names: list[str] = []
    procs: list[Processor] = []
    boundaries: list[Scenario] = []
    for t, tier in enumerate(tiers):
        where = f"{tiers_file}: tier {t + 1}"
        unknown = sorted(set(tier) - _TIER_KEYS) if isinstance(tier, dict) else ["?"]
        if unknown or not all(isinstance(v, str) for v in tier.values()):
            raise ScenarioError(f"{where}: keys are {', '.join(sorted(_TIER_KEYS))}, all "
                                f"strings (not {', '.join(map(str, unknown)) or 'a number'})")
        name, proc = tier.get("name", ""), tier.get("processor", "")
        if not _TIER_NAME.match(name) or not proc:
            raise ScenarioError(f"{where}: a name (a letter, then letters, digits or _) and a "
                                "processor are required")
        if name in names and not (t == len(tiers) - 1 and name == names[0]):
            raise ScenarioError(f"{where}: tier name {name!r} is used twice (only the last "
                                "tier may repeat the first: a U-shape)")
        link_keys = {k for k in tier if k in ("link", "uplink", "downlink", "latency")}
        if t == 0 and link_keys:
            raise ScenarioError(f"{where}: the first tier has no link before it")
        names.append(name)
        procs.append(profiles.processor(proc, profile_dir))
        if t:
            preset = profiles.link(tier["link"]) if "link" in tier else None
            if preset is None and not {"uplink", "downlink"} <= link_keys:
                raise ScenarioError(f"{where}: give a link preset or both uplink and downlink")
            up = profiles.parse_rate(tier["uplink"]) if "uplink" in tier else preset.uplink_bps  # type: ignore[union-attr]
            down = (profiles.parse_rate(tier["downlink"]) if "downlink" in tier
                    else preset.downlink_bps)  # type: ignore[union-attr]
            lat = (profiles.parse_latency(tier["latency"]) if "latency" in tier
                   else preset.latency_ms if preset else 0.0)
            boundaries.append(dataclasses.replace(
                scenario, device=procs[t - 1], server=procs[t], uplink_bps=up,
                downlink_bps=down, latency_ms=lat,
                link=tier.get("link") if preset and link_keys == {"link"} else None,
                measured=()))
    return names, procs, boundaries


def tier_costs(graph: LayerGraph, names: Sequence[str], boundaries: Sequence[Scenario],
               pin_device: Sequence[str] = (), pin_server: Sequence[str] = ()) -> TierGraph:
    """The tier chain's cost graph with the user's pins: `--pin` keeps a layer on the first
    tier, `--pin-server` off every tier named like it (the device)."""
    costs = build_tier_graph(graph, names, boundaries)
    for i in layer_indices(graph, pin_device, "--pin"):
        costs.highest[i] = 0
    away = [t for t, name in enumerate(names) if name != names[0]]
    for i in layer_indices(graph, pin_server, "--pin-server"):
        costs.lowest[i] = max(costs.lowest[i], away[0])
        costs.highest[i] = min(costs.highest[i], away[-1])
    return costs


def partition_tiers(
    graph: LayerGraph,
    names: Sequence[str],
    boundaries: Sequence[Scenario],
    method: str = "blockwise",
    pin_device: Sequence[str] = (),
    pin_server: Sequence[str] = (),
    memory: Mapping[str, float] | None = None,
) -> TierPartition:
    """Cost the model on a tier chain (`tier_costs`) and find its optimal tiering; with
    `memory` (bytes by tier name), the optimal one whose processors fit (exact)."""
    costs = tier_costs(graph, names, boundaries, pin_device, pin_server)
    if memory:
        from toolkit.partition.budget import solve_tiers_with_budget

        return solve_tiers_with_budget(costs, memory)
    blocks, blocks_ms = None, 0.0
    if method == "blockwise":
        blocks, blocks_ms = model_blocks(graph)
    return solve_tiers(costs, method, blocks, blocks_ms)


def sweep_model(
    graph: LayerGraph, scenario: Scenario, parameter: str, low: float, high: float,
    method: str = "blockwise", pin_device: Sequence[str] = (), pin_server: Sequence[str] = (),
    chain: tuple[Sequence[str], Sequence[Scenario]] | None = None, boundary: int = 0,
    progress: Callable[[int], None] | None = None,
) -> SweepResult:
    """Every optimal partition (or tiering, along `chain`) of the model for `parameter`
    (`sweep.PARAMETERS`) across [low, high]: a link rate of `boundary` exactly, by the lower
    envelope of the delay's lines in 1/rate (`sweep.lower_envelope`); the batch by solving
    every integer batch. `progress` is told the solves done."""
    from toolkit.partition import sweep
    from toolkit.tiergraph import crossed, tier_delay

    if parameter not in sweep.PARAMETERS:
        raise ScenarioError(f"cannot sweep {parameter!r}; choose one of "
                            f"{', '.join(sweep.PARAMETERS)}")
    if not 0 < low <= high < math.inf:
        raise ScenarioError(f"the {parameter} range needs 0 < low <= high, not "
                            f"{low:g}..{high:g}")
    names, boundaries = chain or (["device", "server"], [scenario])
    if not 0 <= boundary < len(boundaries):
        raise ScenarioError(f"the chain has boundaries 0..{len(boundaries) - 1}, not {boundary}")
    u_shape = len(names) == 3 and names[0] == names[-1]
    blocks = model_blocks(graph)[0] if method == "blockwise" else None
    cache: dict[float, TierGraph] = {}
    solves = [0, 0.0]

    def costs_at(x: float) -> TierGraph:
        if x not in cache:
            if parameter == "batch":
                links = [dataclasses.replace(s, batch=int(x)) for s in boundaries]
            else:
                links = list(boundaries)
                links[boundary] = _rated(links[boundary], parameter, 1 / x)
                if u_shape:  # the way back is the first link with its directions swapped
                    links[1 - boundary] = _rated(links[1 - boundary], parameter, 1 / x,
                                                 swapped=True)
            if parameter == "batch":
                cache.clear()  # each batch is solved once: keep one cost graph, not thousands
            cache[x] = tier_costs(graph, names, links, pin_device, pin_server)
        return cache[x]

    def optimum(x: float) -> tuple[tuple[int, ...], float]:
        start = time.perf_counter()
        solved = solve_tiers(costs_at(x), method, blocks, with_baselines=False)
        solves[0] += 1
        solves[1] += (time.perf_counter() - start) * 1e3
        if progress is not None:
            progress(int(solves[0]))
        return tuple(int(t) for t in solved.tier), solved.delay.total

    def delay(key: tuple[int, ...], x: float) -> float:
        return tier_delay(costs_at(x), np.array(key)).total

    if parameter == "batch":
        pieces = sweep.enumerate_optima(range(int(low), int(high) + 1), optimum)
    else:  # in x = 1/rate, then back to rates, ascending
        pieces = [sweep.Piece(1 / p.hi, 1 / p.lo, p.key, p.delay_hi, p.delay_lo) for p in
                  reversed(sweep.lower_envelope(1 / high, 1 / low, optimum, delay))]
        pieces[0] = dataclasses.replace(pieces[0], lo=low)  # the ends exactly as asked
        pieces[-1] = dataclasses.replace(pieces[-1], hi=high)
    costs = costs_at(pieces[0].lo if parameter == "batch" else 1 / pieces[0].lo)
    crossing = [[[costs.base.tensors[x].name for x in np.flatnonzero(flags[:, b])]
                 for b in range(costs.k - 1)]
                for flags in (crossed(costs, np.array(p.key)) for p in pieces)]
    return sweep.SweepResult(graph.name, parameter, boundary, list(names), costs.names,
                             pieces, crossing, int(solves[0]), solves[1], costs.scenario)


def sweep_in_neo4j(
    store: Store, model: str, scenario: Scenario, sweep: Callable[[LayerGraph], SweepResult],
    name: str | None = None, exporter: str = "torchscript", dims: dict[str, int] | None = None,
    graph: LayerGraph | None = None,
) -> tuple[SweepResult, int, LayerGraph]:
    """A sweep through Neo4j: ingest the model (if new), `sweep` it (`sweep_model` with its
    settings), and store the policy as (:Partition) nodes with their intervals under a
    (:Policy) of the model (`Store.write_policy`). Returns the partitions written."""
    graph, _, _ = ingest_model(store, model, scenario, name, exporter, put_costs=False,
                               dims=dims, graph=graph)
    result = sweep(graph)
    return result, store.write_policy(result, graph.sha256), graph


def _rated(scenario: Scenario, parameter: str, rate: float, swapped: bool = False) -> Scenario:
    """`scenario` with its uplink, downlink or both at `rate` (`swapped`: the way back of a
    U-shape, whose uplink is the first link's downlink)."""
    up = parameter in ("rate", "downlink" if swapped else "uplink")
    down = parameter in ("rate", "uplink" if swapped else "downlink")
    return dataclasses.replace(scenario, link=None,
                               uplink_bps=rate if up else scenario.uplink_bps,
                               downlink_bps=rate if down else scenario.downlink_bps)


def partition_tiers_in_neo4j(
    store: Store, model: str, names: Sequence[str], boundaries: Sequence[Scenario],
    name: str | None = None, exporter: str = "torchscript", method: str = "blockwise",
    dims: dict[str, int] | None = None, pin_device: Sequence[str] = (),
    pin_server: Sequence[str] = (), memory: Mapping[str, float] | None = None,
) -> tuple[TierPartition, dict[str, int], LayerGraph]:
    """A tier chain through Neo4j: ingest (if new) with the first boundary's delays, solve
    block-wise on the blocks Cypher detected (under the model's lock), and write each layer's
    tier back as its label and `tier` index."""
    graph, costs, _ = ingest_model(store, model, boundaries[0], name, exporter,
                                   put_costs=False, dims=dims)
    chained = tier_costs(graph, names, boundaries, pin_device, pin_server)
    budgeted = None
    if memory:
        from toolkit.partition.budget import solve_tiers_with_budget

        budgeted = solve_tiers_with_budget(chained, memory)

    def solve(rows: stored.Rows) -> TierPartition:
        if budgeted is not None:
            return budgeted
        blocks = store.read_blocks(graph.name, rows) if method == "blockwise" else None
        return solve_tiers(chained, method, blocks)

    result, written = store.solve_and_write(costs, graph.sha256, solve)
    return result, written, graph


def expand_models(models: Sequence[str], source: str | None = None, limit: int | None = None,
                  match: Sequence[str] = ()) -> tuple[str, ...]:
    """MODEL arguments with folders replaced by the .onnx files in them, and a zoo source's
    architectures added: those matching any `match` glob, at most `limit` spread over them."""
    found: list[str] = []
    if source is not None:
        offered = zoo.names(source)
        if match:
            offered = [n for n in offered if any(fnmatch.fnmatchcase(n, g) or
                                                 fnmatch.fnmatchcase(n.partition(":")[2], g)
                                                 for g in match)]
        found = zoo.sample(offered, limit)
    for model in models:
        p = Path(model)
        found += sorted(str(f) for f in p.glob("*.onnx")) if p.is_dir() else [model]
    return tuple(dict.fromkeys(found))


@dataclasses.dataclass(frozen=True)
class Ingested:
    """One model of an ingest: its stored name and layers, 'created', 'replaced',
    'unchanged', 'superseded' or 'skipped' (with the reason), and the seconds it took."""

    model: str
    name: str | None
    layers: int
    status: str
    reason: str
    seconds: float


def ingest_model(
    store: Store, model: str, scenario: Scenario, name: str | None = None,
    exporter: str = "torchscript", put_costs: bool = True, dims: dict[str, int] | None = None,
    graph: LayerGraph | None = None,
) -> tuple[LayerGraph, CostGraph, str]:
    """Ingest MODEL with `scenario`'s delays and detect its blocks in Cypher.

    Returns the graph, its cost graph and 'created', 'replaced' or 'unchanged' (same sha256:
    nothing is written, though a different scenario's delays are put in place unless
    `put_costs` is false: partition_in_neo4j puts them in its own transaction). `graph` is
    MODEL already read (as `load_graph` reads it), for callers that ingest it repeatedly.
    """
    path, _ = zoo.resolve(model, exporter)
    graph = graph if graph is not None else load_graph(model, name, exporter, dims)
    costs = build_cost_graph(graph, scenario)
    names = {t.signature: t.name for t in find_blocks(graph).types}
    status = store.ingest(graph, costs, graph.sha256, str(path), graph.opset, names,
                          family=zoo.family_of(model))
    if status == "unchanged" and put_costs:
        store.set_costs(costs)
    return graph, costs, status


def ingest_models(
    store: Store, models: Sequence[str], scenario: Scenario, exporter: str = "torchscript",
    dims: dict[str, int] | None = None, started: Callable[[str], None] = lambda model: None,
) -> Iterator[Ingested]:
    """Ingest each model in turn (`dims` for those with such dimensions); one that cannot be
    read or exported is skipped with its reason (a dead or refusing server stops the whole
    run: StoreError)."""
    from toolkit.store import StoreError

    for model in models:
        started(model)
        began = time.perf_counter()
        try:
            graph, _, status = ingest_model(store, model, scenario, exporter=exporter,
                                            dims=dims)
        except StoreError:
            raise
        except ToolkitError as exc:
            yield Ingested(model, None, 0, "skipped", str(exc), time.perf_counter() - began)
            continue
        yield Ingested(model, graph.name, len(graph), status, "", time.perf_counter() - began)


def partition_in_neo4j(
    store: Store, model: str, scenario: Scenario, name: str | None = None,
    exporter: str = "torchscript", method: str = "blockwise", dims: dict[str, int] | None = None,
    pin_device: Sequence[str] = (), pin_server: Sequence[str] = (),
    device_memory: float | None = None, graph: LayerGraph | None = None,
) -> tuple[Partition, dict[str, int], LayerGraph]:
    """The main job through Neo4j: ingest (if new), solve (`partition.stored.solve_stored`,
    under the model's lock), write the cut back as labels. With pins (which the stored chain
    does not know), the two-tier chain of the pinned cost graph is solved instead, block-wise
    on the blocks Cypher detected: the same optimum, the pins honoured. With `device_memory`,
    the optimum under that budget (`partition_model`) is written, under the same lock."""
    graph, costs, _ = ingest_model(store, model, scenario, name, exporter, put_costs=False,
                                   dims=dims, graph=graph)
    costs = pinned_costs(graph, costs, pin_device, pin_server)
    budgeted = partition_model(graph, scenario, method, pin_device, pin_server,
                               device_memory) if device_memory is not None else None

    def solve(rows: stored.Rows) -> Partition:
        if budgeted is not None:
            return budgeted
        if not (pin_device or pin_server):
            return stored.solve_stored(graph.name, costs, method, rows)
        start = time.perf_counter()
        blocks = store.read_blocks(graph.name, rows) if method == "blockwise" else None
        two = solve_tiers(TierGraph.from_cost_graph(costs), method, blocks,
                          with_baselines=False)
        cut = CutResult(two.layers_on(0), two.delay.total, two.vertices, two.edges)
        return checked_partition(costs, cut, method, (time.perf_counter() - start) * 1e3)

    result, written = store.solve_and_write(costs, graph.sha256, solve)
    return result, written, graph


def stored_cost_graph(store: Store, model: str) -> CostGraph:
    """The cost graph stored for `model`, read from one consistent version."""
    return store.reading(model, lambda read: stored.cost_graph(model, read))


def stored_chain(store: Store, model: str) -> Chain:
    """The compressed chain of `model` as Cypher sums it, from one consistent version."""
    return store.reading(model, lambda read: stored.chain(model, read))


def device_layers_from(path: str) -> list[str] | dict[str, int]:
    """The layers to train with, from a JSON file: a list of device layer names, the output
    of `splitcut partition --json` (its device layers), or of `partition --tiers/--u-shape
    --json` (each layer's tier)."""
    what = f"--device-layers {path}"
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PartitionError(f"{what}: cannot read it as JSON ({exc})") from exc
    if isinstance(data, dict):
        chosen = data.get("partition", {})
        if isinstance(chosen, dict) and "tier_of" in chosen:
            tier_of = chosen["tier_of"]
            if not isinstance(tier_of, dict) or not all(
                    isinstance(t, int) and not isinstance(t, bool) for t in tier_of.values()):
                raise PartitionError(f"{what}: its tier_of is not layer name -> tier index")
            return dict(tier_of)
        data = chosen.get("device_layers") if isinstance(chosen, dict) else None
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise PartitionError(f"{what}: expected a JSON list of layer names or the output of "
                             "`splitcut partition --json`")
    return data


def train_model(
    model: str, scenario: Scenario, name: str | None = None, exporter: str = "torchscript",
    dims: dict[str, int] | None = None, cut: str = "optimal",
    device_layers: Sequence[str] | Mapping[str, int] = (), iterations: int = 20,
    warmup: int = 3, lr: float = 0.001, paced: bool = False, device_cpu: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    chain: tuple[Sequence[str], Sequence[Scenario]] | None = None,
    tier_cpu: Mapping[str, float] | None = None,
    tier_device: Mapping[str, str] | None = None,
    graph: LayerGraph | None = None,
) -> TrainResult:
    """Real split training of MODEL at a cut (`CUTS`, or the given layers: device layer names,
    or each layer's tier) over the scenario's link, or along a tier `chain` (`make_chain`:
    one process per tier), measured beside the delay model's prediction. `device_cpu` and
    `tier_cpu` (by tier name) emulate slower processors with a share of one CPU;
    `tier_device` runs tiers on a torch device (`{"server": "cuda"}`). `graph` is MODEL
    already read (as `load_graph` reads it), for a caller that looked at it first (the
    CLI reads the batch the file fixes)."""
    from toolkit.partition.baselines import best_chain_split, best_ranges
    from toolkit.train.session import loss_output, train

    path, _ = zoo.resolve(model, exporter)
    graph = graph if graph is not None else load_graph(model, name, exporter, dims)
    loss = loss_output(graph)
    names, boundaries = chain or (["device", "server"], [scenario])
    costs = build_tier_graph(graph, names, boundaries)
    tier = np.zeros(len(graph), dtype=np.int64)
    if isinstance(device_layers, Mapping) and device_layers:
        index = {layer_name: i for i, layer_name in enumerate(costs.names)}
        unknown = [n for n in device_layers if n not in index]
        if unknown:
            raise PartitionError(f"--device-layers: no layer named {unknown[0]!r} in "
                                 f"{graph.name}")
        missing = [n for n in costs.names if n not in device_layers]
        if missing:
            raise PartitionError(f"--device-layers: layer {missing[0]!r} has no tier")
        for layer_name, t in device_layers.items():
            tier[index[layer_name]] = t
        label = "given"
    elif device_layers:
        if costs.k != 2:
            raise PartitionError("--device-layers names the device's layers only; for a chain "
                                 "give the output of `splitcut partition --tiers ... --json`")
        tier[:] = 1
        tier[layer_indices(graph, list(device_layers), "--device-layers")] = 0
        label = "given"
    elif cut == "optimal":
        if chain is None:
            tier[:] = 1
            tier[partition_model(graph, scenario).device] = 0
        else:
            tier = partition_tiers(graph, names, boundaries).tier
        label = "optimal"
    elif cut == "best-single":
        if chain is None:
            tier[best_chain_split(build_cost_graph(graph, scenario))[1]:] = 1
            label = "best single split"
        else:
            splits = best_ranges(costs)[1]
            for t, start in enumerate(splits, start=1):
                tier[start:] = t
            label = "best contiguous ranges"
    elif cut == "device-only":
        label = "device only"
    else:
        raise PartitionError(f"unknown --cut {cut!r}; choose one of {', '.join(CUTS)}")
    return train(Path(path), graph.name, costs, tier.tolist(), label, boundaries,
                 loss, iterations, warmup, lr, paced, dims, graph.file_batch,
                 progress=progress,
                 cpu={names[0]: device_cpu, **(tier_cpu or {})}, devices=tier_device)

