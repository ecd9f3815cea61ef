"""The `splitcut` command line: thin commands over the library; ToolkitError -> one line, exit 2."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from toolkit import __version__, api, drawing, profiles, zoo
from toolkit.blockcache import model_blocks
from toolkit.blocks import BlockStructure, find_blocks
from toolkit.costs import LABEL_BYTES, OPTIMIZER_STATES, PRECISIONS, Scenario, build_cost_graph
from toolkit.errors import ScenarioError, ToolkitError
from toolkit.graph import LayerGraph
from toolkit.partition import METHODS, Partition
from toolkit.partition.sweep import SweepResult
from toolkit.partition.tiers import TierPartition, tier_label
from toolkit.report import (
    blocks_dict,
    blocks_report,
    duration,
    human,
    human_bytes,
    ingest_summary,
    inspect_dict,
    partition_headline,
    partition_report,
    plural,
    rate,
    rows_table,
    sweep_report,
    tiers_headline,
    tiers_report,
    train_report,
)
from toolkit.report import table as report_table

if TYPE_CHECKING:
    from pathlib import Path

    from toolkit.store import Store

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def plain_console(**options: Any) -> Console:
    """A console that prints text as written: names from a model may contain `[bold]` or
    `:llama:`, so neither markup nor emoji codes are read; styles come from `Text`."""
    return Console(markup=False, emoji=False, **options)


console = plain_console()


def verbose() -> bool:
    """`splitcut -v`: reports add how they were computed."""
    return bool(click.get_current_context().find_root().params.get("verbose", False))


def model_options(func: F) -> F:
    """MODEL argument plus --name and --exporter, shared by every command that reads a model."""
    func = click.option(
        "--exporter", type=click.Choice(zoo.EXPORTERS), default="torchscript", show_default=True,
        help="Exporter used when MODEL is a zoo name.",
    )(func)
    func = click.option("--name", help="Model name (default: file stem or zoo name).")(func)
    return click.argument("model")(dims_option(func))


def dims_option(func: F) -> F:
    """--dim NAME=VALUE, repeatable: the values of symbolic input dimensions."""
    return click.option(
        "--dim", "dims", multiple=True, metavar="NAME=VALUE", callback=_parse_dims,
        help="Value of a symbolic input dimension other than the batch, e.g. --dim seq=128 "
             "(repeatable; INPUT.AXIS=VALUE names one by input and axis); --dim batch=N "
             "states a concrete exported batch.")(func)


def _parse_dims(_ctx: click.Context, _param: click.Parameter, values: Sequence[str]
                ) -> dict[str, int]:
    dims = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key or not value.strip().isdigit() \
                or int(value) < (1 if key.strip() == "batch" else 0):
            raise click.BadParameter(f"{text!r}: write NAME=VALUE with an integer, positive "
                                     "for the batch, e.g. seq=128 (0 for an empty cache: "
                                     "past_sequence_length=0)")
        dims[key.strip()] = int(value)
    return dims


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(func)


@dataclasses.dataclass(frozen=True)
class ScenarioOptions:
    """The scenario options as one typed value (`settings` of every command that takes them)."""

    device: str
    server: str
    link: str | None
    uplink: str | None
    downlink: str | None
    latency: str | None
    batch: int
    precision: str
    optimizer: str
    label_bytes: float
    sync_every: int | None
    profile_dir: str | None
    measured: tuple[str, ...]

    def scenario(self) -> Scenario:
        """The scenario, warning (on stderr) when a profile plays the other role: a server
        profile as --device, a device profile as --server."""
        scenario = api.make_scenario(**dataclasses.asdict(self))
        for role, proc in (("device", scenario.device), ("server", scenario.server)):
            if proc.kind != role:
                click.echo(f"warning: {proc.name} is a {proc.kind} profile, used here as the "
                           f"--{role}", err=True)
        return scenario

    def chain(self, tiers_file: str | None, u_shape: bool
              ) -> tuple[list[str], list[Scenario]]:
        """The tier chain of `--tiers FILE` or `--u-shape` (`api.make_chain`): the measured
        profiles may time any of its processors."""
        base = dataclasses.replace(self, measured=()).scenario()
        return api.make_chain(base, tiers_file, u_shape, self.profile_dir, self.measured)


@dataclasses.dataclass(frozen=True)
class Neo4jOptions:
    """Where the store is (`neo4j` of every command that talks to Neo4j)."""

    uri: str
    user: str
    password: str  # never printed
    database: str | None
    batch_rows: int
    writers: int
    retry_seconds: float

    def store(self) -> Store:
        from toolkit.store import Connection, Store

        connection = Connection.from_env(self.uri, self.user, self.password, self.database)
        connection = dataclasses.replace(connection, retry_seconds=self.retry_seconds)
        return Store(connection, batch_rows=self.batch_rows, writers=self.writers)

    def __repr__(self) -> str:
        return f"Neo4jOptions(uri={self.uri!r}, user={self.user!r}, database={self.database!r})"


def _typed(options: list[Callable[[F], F]], kind: type, param: str) -> Callable[[F], F]:
    """A decorator adding `options` and handing the command one `kind` value as `param`."""
    names = [f.name for f in dataclasses.fields(kind)]

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            return func(*args, **{param: kind(**values)}, **kwargs)

        for opt in reversed(options):
            command = opt(command)
        return command  # type: ignore[return-value]

    return decorate


def scenario_options(func: F) -> F:
    """Device, server, link and training settings shared by graph and partition."""
    opts = [
        click.option("--device", default="jetson-nano", show_default=True,
                     help="Device profile name or TOML path."),
        click.option("--server", default="rtx-3090", show_default=True,
                     help="Server profile name or TOML path."),
        click.option("--link", default="wifi5", show_default=True,
                     help="Link preset (wifi5, wifi6, lte, 5g, ethernet)."),
        click.option("--uplink", help="Uplink rate, e.g. 20Mbps (overrides the preset)."),
        click.option("--downlink", help="Downlink rate, e.g. 100Mbps (overrides the preset)."),
        click.option("--latency", help="One-way latency, e.g. 5ms (overrides the preset)."),
        click.option("--batch", type=int, default=32, show_default=True, help="Batch size."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="fp32",
                     show_default=True,
                     help="fp16: mixed precision. A file in fp16 or bf16 computes in it either "
                          "way."),
        click.option("--optimizer", type=click.Choice(tuple(OPTIMIZER_STATES)), default="sgd",
                     show_default=True, help="Optimizer whose step each side pays per iteration."),
        click.option("--label-bytes", type=float, default=LABEL_BYTES, show_default=True,
                     help="Label bytes per sample sent up when the server computes the loss."),

        click.option("--sync-every", type=int,
                     help="Split-federated: device model synchronised every N iterations."),
        click.option("--profile-dir", help="Folder with extra profile TOML files."),
        click.option("--measured", multiple=True,
                     help="Measured profile JSON (from `splitcut profile`) for the device or "
                          "server it names; replaces the roofline there. Repeatable."),
    ]
    return _typed(opts, ScenarioOptions, "settings")(func)


def partition_options(func: F) -> F:
    """Solver method and pins, shared by partition and split."""
    opts = [
        click.option("--method", type=click.Choice(METHODS), default="blockwise",
                     show_default=True, help="Both exact; block-wise is faster on deep models."),
        click.option("--pin", multiple=True, help="Keep this layer on the device (repeatable)."),
        click.option("--pin-server", multiple=True,
                     help="Run this layer on the server (repeatable)."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def neo4j_options(func: F) -> F:
    """Connection settings; default to NEO4J_URI, NEO4J_USER, NEO4J_PASSWORD, NEO4J_DATABASE."""
    opts = [
        click.option("--uri", envvar="NEO4J_URI", default="bolt://127.0.0.1:7687",
                     show_default=True, help="Any URI the driver takes (bolt://, neo4j+s://)."),
        click.option("--user", envvar="NEO4J_USER", default="neo4j", show_default=True),
        click.option("--password", envvar="NEO4J_PASSWORD", default="", show_default=False,
                     help="Default: $NEO4J_PASSWORD. Never printed."),
        click.option("--database", envvar="NEO4J_DATABASE", default=None,
                     help="Default: the server's default database."),
        click.option("--batch-rows", type=click.IntRange(min=100), default=2_500,
                     show_default=True, envvar="SPLITCUT_BATCH_ROWS",
                     help="Rows per write transaction of a large model (smaller for a server "
                          "with a small transaction memory limit)."),
        click.option("--writers", type=click.IntRange(min=1), default=2, show_default=True,
                     envvar="SPLITCUT_WRITERS",
                     help="Batches of a large model written at once (about the server's "
                          "cores; 1 writes them one after the other)."),
        click.option("--retry-seconds", type=click.FloatRange(min=0), default=30.0,
                     show_default=True, help="How long a write retries transient failures "
                                             "(a lost connection, a leader switch)."),
    ]
    return _typed(opts, Neo4jOptions, "neo4j")(func)


def load_graph(model: str, name: str | None, exporter: str, dims: dict[str, int]) -> LayerGraph:
    if not sys.stderr.isatty():
        return api.load_graph(model, name, exporter, dims)
    with console.status(f"reading {model}", spinner="dots"):
        return api.load_graph(model, name, exporter, dims)


def rows_option(func: F) -> F:
    return click.option(
        "--rows", type=click.IntRange(min=0), default=200, show_default=True,
        help="Table rows to print (0: all); --json always gives every layer.")(func)


def print_rows(table: Table, rows: Sequence[Sequence[str]], limit: int) -> None:
    """A table of at most `limit` rows (0: all), saying how many were left out."""
    shown = rows if limit == 0 else rows[:limit]
    for row in shown:
        table.add_row(*row)
    console.print(table)
    if len(shown) < len(rows):
        console.print(f"... {len(rows) - len(shown)} more layers: --rows 0 prints them all, "
                      "--json gives every layer")


def emit_json(data: object) -> None:
    """JSON as the standard has it: a non-finite number is a bug, never `Infinity` text."""
    click.echo(json.dumps(data, indent=2, allow_nan=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="splitcut")
@click.option("-v", "--verbose", is_flag=True,
              help="Log what is happening; reports say how they were computed.")
def cli(verbose: bool) -> None:
    """Find where to split a neural network between a mobile device and an edge server."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # driver failures reach the user as one StoreError line, not as log noise
        logging.getLogger("neo4j").setLevel(logging.CRITICAL)


@cli.command()
@model_options
@rows_option
@json_option
def inspect(model: str, name: str | None, exporter: str, dims: dict[str, int], rows: int,
            as_json: bool) -> None:
    """Per-layer facts of MODEL: op, FLOPs, MACs, parameters, activation size.

    MODEL is an .onnx file or a zoo name. Example: splitcut inspect resnet50
    """
    graph = load_graph(model, name, exporter, dims)
    if as_json:
        emit_json(inspect_dict(graph))
        return
    table = report_table(f"{graph.name}: {plural(len(graph), 'layer')}", "layer", "op",
                         "module", "FLOPs", "MACs", "params", "activation",
                         numbers=("FLOPs", "MACs", "params", "activation"))
    print_rows(table, [
        [layer.name, layer.op if layer.supported else f"{layer.op} (?)", layer.module or "",
         human(layer.flops), human(layer.macs), human(layer.params), human_bytes(layer.out_bytes)]
        for layer in graph
    ], rows)
    console.print(
        f"total: {human(graph.total_flops)}FLOPs and {human(graph.total_macs)}MACs per "
        f"sample, {human(graph.total_params)} parameters"
    )
    for note in graph.notes:
        console.print(f"note: {note}")


@cli.command()
@model_options
@click.option("--wide", is_flag=True, help="Add each block type's signature (its hash).")
@json_option
def blocks(model: str, name: str | None, exporter: str, dims: dict[str, int],
           wide: bool, as_json: bool) -> None:
    """Cut vertices, segments and repeated block types of MODEL: its compressed chain.

    Example: splitcut blocks resnet152
    """
    graph = load_graph(model, name, exporter, dims)
    structure = find_blocks(graph)
    if as_json:
        emit_json(blocks_dict(structure, graph))
        return
    console.print(blocks_report(structure, wide))


@cli.command(name="profiles")
@click.option("--profile-dir", help="Folder with extra profile TOML files.")
@json_option
def profiles_cmd(profile_dir: str | None, as_json: bool) -> None:
    """List device, server and link profiles. Example: splitcut profiles"""
    procs = profiles.processors(profile_dir)
    links = profiles.links()
    if as_json:
        emit_json({
            "processors": [
                {k: v for k, v in vars(p).items() if k != "sources"} for p in procs.values()
            ],
            "links": [vars(link) for link in links.values()],
        })
        return
    table = report_table("processors", "name", "kind", "FP32 TFLOPS", "FP16 TFLOPS", "GB/s",
                         "memory", "description",
                         numbers=("FP32 TFLOPS", "FP16 TFLOPS", "GB/s", "memory"))
    for p in sorted(procs.values(), key=lambda p: (p.kind, p.name)):
        table.add_row(p.name, p.kind, f"{p.fp32_tflops:.3g}", f"{p.fp16_tflops:.4g}",
                      f"{p.memory_gbps:.4g}", f"{p.memory_gb:g} GB" if p.memory_gb else "-",
                      p.description)
    console.print(table)
    links_table = report_table("links", "link", "uplink", "downlink", "latency",
                               "description", numbers=("uplink", "downlink", "latency"))
    for link in links.values():
        links_table.add_row(link.name, rate(link.uplink_bps), rate(link.downlink_bps),
                            duration(link.latency_ms), link.description)
    console.print(links_table)


@cli.command()
@model_options
@scenario_options
@rows_option
@json_option
def graph(model: str, name: str | None, exporter: str, dims: dict[str, int], rows: int,
          as_json: bool, settings: ScenarioOptions) -> None:
    """The cost graph a partition is judged on: per-layer delays, per-tensor crossing delays.

    Example: splitcut graph resnet18 --device jetson-nano --server a100 --uplink 20Mbps --json
    """
    scenario = settings.scenario()
    costs = build_cost_graph(load_graph(model, name, exporter, dims), scenario)
    if as_json:
        emit_json(costs.to_dict())
        return
    table = report_table(f"{costs.model}: delays for one batch of {scenario.batch}", "layer",
                         "op", "device", "server", "pinned", numbers=("device", "server"))
    print_rows(table, [
        [layer_name, costs.ops[i], duration(costs.device_ms[i]), duration(costs.server_ms[i]),
         "device" if costs.pinned[i] else ""]
        for i, layer_name in enumerate(costs.names)
    ], rows)
    console.print(f"device total {duration(sum(costs.device_ms))}, "
                  f"server total {duration(sum(costs.server_ms))}, "
                  f"{plural(len(costs.tensors), 'activation tensor')}")


def partition_command(f: Callable[..., None]) -> Callable[..., None]:
    """The options `partition` and `show` share: model, scenario, solver, chain, budgets."""
    for option in reversed([
        model_options, scenario_options, partition_options,
        click.option("--neo4j", "use_neo4j", is_flag=True,
                     help="Run through Neo4j: ingest, Cypher block detection, cut written "
                          "back."),
        click.option("--tiers", "tiers_file", type=click.Path(dir_okay=False),
                     help="A chain of tiers (TOML: [[tier]] name, processor, link...): device "
                          "-> edge -> cloud. README, 'Beyond two sides'."),
        click.option("--u-shape", is_flag=True,
                     help="Device -> server -> device: the loss and labels stay on the "
                          "device."),
        click.option("--device-memory", "device_memory", metavar="SIZE",
                     help="The device's memory budget (2.5GB, 512MB; 'profile': the device "
                          "profile's): the best partition whose device half fits, exactly."),
        click.option("--tier-memory", "tier_memory", multiple=True, metavar="TIER=SIZE",
                     help="A chain tier's memory budget, as --device-memory (repeatable)."),
        neo4j_options]):
        f = option(f)
    return f


@cli.command()
@partition_command
@click.option("-o", "--draw", "draw", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also draw the partition (.svg, .png or .html), as `splitcut show` does.")
@json_option
def partition(as_json: bool, draw: str | None, **options: Any) -> None:
    """Where to cut MODEL between device and server for the least training delay.

    Example: splitcut partition resnet50 --device jetson-nano --server rtx-3090 --link lte
    """
    result, graph, data, written, drawn = _partition(draw=draw, **options)
    if as_json:
        emit_json(data)
        return
    if isinstance(result, TierPartition):
        console.print(tiers_report(result, graph, verbose()))
        if written is not None:
            console.print(f"written to {data['neo4j']['uri']}: each of {written['layers']} "
                          "layers labelled with its tier (" + ", ".join(
                              dict.fromkeys(f":{tier_label(n)}" for n in result.graph.tiers))
                          + ")")
    else:
        console.print(partition_report(result, graph, verbose()))
        if written is not None:
            console.print(f"written to {data['neo4j']['uri']}: {written['device']} of "
                          f"{plural(written['layers'], 'layer')} labelled :Device, the rest "
                          ":Server")
    if drawn is not None:
        console.print(f"drawn to {drawn}")


@cli.command()
@partition_command
@click.option("-o", "--output", "draw", type=click.Path(dir_okay=False), metavar="FILE",
              default="cut.svg", show_default=True,
              help="Where to draw it: .svg, .png, or .html (the SVG in a page).")
def show(draw: str, **options: Any) -> None:
    """Draw MODEL's optimal partition: its block chain left to right, coloured by tier, the
    segment the cut runs through expanded to its layers, what crosses each link labelled.

    Example: splitcut show resnet50 --uplink 20Mbps -o resnet50.png
    """
    result, graph, _, _, drawn = _partition(draw=draw, **options)
    headline = tiers_headline(result) if isinstance(result, TierPartition) \
        else partition_headline(result, graph)
    console.print(f"{headline}\ndrawn to {drawn}")


def _partition(model: str, name: str | None, exporter: str, dims: dict[str, int],
               method: str, pin: tuple[str, ...], pin_server: tuple[str, ...],
               use_neo4j: bool, tiers_file: str | None, u_shape: bool,
               device_memory: str | None, tier_memory: tuple[str, ...],
               settings: ScenarioOptions, neo4j: Neo4jOptions, draw: str | None,
               ) -> tuple[Partition | TierPartition, LayerGraph, dict[str, Any],
                          dict[str, int] | None, Path | None]:
    """Solve as the options say (embedded or through Neo4j; two tiers or a chain; budgets),
    draw it when asked: (result, graph, its JSON, what Neo4j was written, the drawing)."""
    budget = _budget(device_memory, settings)
    if tier_memory and not (tiers_file or u_shape):
        raise click.UsageError("--tier-memory gives a chain's tiers budgets: use it with "
                               "--tiers or --u-shape (--device-memory for two tiers)")
    if draw is not None:
        drawing.check_format(draw)
    result: Partition | TierPartition
    written: dict[str, int] | None = None
    blocks: BlockStructure | None = None
    if tiers_file or u_shape:
        names, boundaries = settings.chain(tiers_file, u_shape)
        memory = {**_per_tier(tier_memory, "--tier-memory", "SIZE", profiles.parse_size),
                  **({names[0]: budget} if budget is not None else {})}
    if use_neo4j:
        with neo4j.store() as store:
            if tiers_file or u_shape:
                result, written, graph = api.partition_tiers_in_neo4j(
                    store, model, names, boundaries, name, exporter, method, dims, pin,
                    pin_server, memory)
            else:
                result, written, graph = api.partition_in_neo4j(
                    store, model, settings.scenario(), name, exporter, method, dims, pin,
                    pin_server, budget)
            if draw is not None:
                blocks = store.read_blocks(graph.name)
        data = {**result.to_dict(), "neo4j": {"uri": store.connection.uri, "written": written}}
    else:
        graph = load_graph(model, name, exporter, dims)
        if tiers_file or u_shape:
            result = api.partition_tiers(graph, names, boundaries, method, pin, pin_server,
                                         memory)
        else:
            result = api.partition_model(graph, settings.scenario(), method, pin, pin_server,
                                         budget)
        data = result.to_dict()
    drawn = None
    if draw is not None:
        if blocks is None:
            blocks, _ = model_blocks(graph)
        drawn = drawing.render(drawing.dot_source(drawing.picture_of(result, graph, blocks)),
                               draw)
    return result, graph, data, written, drawn


def _per_tier(values: tuple[str, ...], option: str, what: str,
              parse: Callable[[str], T]) -> dict[str, T]:
    """`--tier-cpu edge=0.5`, `--tier-memory edge=8GB` -> {"edge": value}; `parse` turns the
    value's text into a number or raises ValueError/ScenarioError saying why."""
    out = {}
    for text in values:
        name, sep, value = text.partition("=")
        try:
            if not sep or not name:
                raise ValueError(f"write TIER={what}, not {text!r}")
            out[name] = parse(value)
        except (ValueError, ScenarioError) as exc:
            raise click.BadParameter(str(exc), param_hint=option) from None
    return out


def _share(text: str) -> float:
    """A share of one CPU, in (0, 1]."""
    share = float(text) if text.replace(".", "", 1).isdigit() else math.nan
    if not 0 < share <= 1:
        raise ValueError(f"write TIER=SHARE with a share in (0, 1], not {text!r}")
    return share


def _budget(text: str | None, settings: ScenarioOptions) -> float | None:
    """--device-memory in bytes: a size, or 'profile' (the device profile's memory)."""
    if text is None:
        return None
    if text != "profile":
        try:
            return profiles.parse_size(text)
        except ScenarioError as exc:
            raise click.BadParameter(str(exc), param_hint="--device-memory") from None
    device = profiles.processor(settings.device, settings.profile_dir)
    if device.memory_gb is None:
        raise ScenarioError(f"--device-memory profile: the {device.name} profile gives no "
                            "memory_gb; give a size")
    return device.memory_gb * 1e9


@cli.command()
@model_options
@scenario_options
@partition_options
@click.option("--batches", metavar="LOW..HIGH", help="Sweep the batch (every integer).")
@click.option("--tiers", "tiers_file", type=click.Path(dir_okay=False),
              help="A chain of tiers (TOML): sweep a rate of its --boundary.")
@click.option("--u-shape", is_flag=True, help="Device -> server -> device.")
@click.option("--boundary", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which link of a chain a rate sweep changes (0: the first).")
@click.option("--plot", "plot_path", metavar="FILE.png",
              help="Also draw delay against the parameter, one line per optimal partition.")
@click.option("--neo4j", "use_neo4j", is_flag=True,
              help="Ingest the model (if new) and store the policy in Neo4j.")
@neo4j_options
@json_option
def sweep(model: str, name: str | None, exporter: str, dims: dict[str, int], as_json: bool,
          method: str, pin: tuple[str, ...], pin_server: tuple[str, ...], batches: str | None,
          tiers_file: str | None, u_shape: bool, boundary: int, plot_path: str | None,
          use_neo4j: bool, settings: ScenarioOptions, neo4j: Neo4jOptions) -> None:
    """Every optimal partition of MODEL across a range of link rates (or batches), exactly.

    Give one range: --uplink 1Mbps..1Gbps, --downlink ..., both alike (the link's rate both
    ways), or --batches 1..256.

    Example: splitcut sweep resnet50 --uplink 1Mbps..1Gbps --plot sweep.png
    """
    parameter, low, high, settings = _sweep_range(settings, batches)
    chain = settings.chain(tiers_file, u_shape) if tiers_file or u_shape else None
    scenario = chain[1][0] if chain else settings.scenario()
    written = None
    with console.status(f"sweeping {model}", spinner="dots") as status:
        of = f" of {int(high - low) + 1:,} (one per batch)" if parameter == "batch" else ""

        def progress(done: int) -> None:
            status.update(f"sweeping {model}: {done:,}{of} exact solves")

        def run(graph: LayerGraph) -> SweepResult:
            return api.sweep_model(graph, scenario, parameter, low, high, method, pin,
                                   pin_server, chain, boundary, progress)

        if use_neo4j:
            with neo4j.store() as store:
                result, written, graph = api.sweep_in_neo4j(store, model, scenario, run, name,
                                                            exporter, dims)
        else:
            graph = load_graph(model, name, exporter, dims)
            result = run(graph)
    if plot_path:
        from toolkit.plots import sweep_plot

        sweep_plot(result, plot_path)
    if as_json:
        emit_json({**result.to_dict(), **({"neo4j": {"uri": store.connection.uri,
                                                      "partitions": written}}
                                          if written is not None else {})})
        return
    console.print(sweep_report(result, graph))
    if plot_path:
        console.print(f"plot: {plot_path}")
    if written is not None:
        console.print(f"written to {store.connection.uri}: the policy, {written} (:Partition) "
                      "nodes with their intervals; `splitcut query cut_changes` finds models "
                      "whose cut changes in a range")


def _sweep_range(settings: ScenarioOptions, batches: str | None
                 ) -> tuple[str, float, float, ScenarioOptions]:
    """The one range asked for, and the settings with its low end in its place."""
    ranges = {key: text for key, text in (("uplink", settings.uplink),
                                          ("downlink", settings.downlink), ("batch", batches))
              if text and ".." in text}
    if batches and "batch" not in ranges:
        raise ScenarioError(f"--batches {batches!r}: write LOW..HIGH, e.g. 1..256")
    if ranges.keys() == {"uplink", "downlink"} and ranges["uplink"] == ranges["downlink"]:
        ranges = {"rate": ranges["uplink"]}
    if len(ranges) != 1:
        raise ScenarioError("give one range to sweep: --uplink LOW..HIGH, --downlink LOW..HIGH "
                            "(both alike: the rate both ways) or --batches LOW..HIGH")
    (parameter, text), = ranges.items()
    low_text, _, high_text = text.partition("..")
    if parameter == "batch":
        if not (low_text.strip().isdigit() and high_text.strip().isdigit()):
            raise ScenarioError(f"--batches {text!r}: write LOW..HIGH in samples, e.g. 1..256")
        low, high = float(low_text), float(high_text)
        return parameter, low, high, dataclasses.replace(settings, batch=int(low))
    low, high = profiles.parse_rate(low_text), profiles.parse_rate(high_text)
    both = parameter == "rate"
    return parameter, low, high, dataclasses.replace(
        settings, uplink=low_text if both or parameter == "uplink" else settings.uplink,
        downlink=low_text if both or parameter == "downlink" else settings.downlink)


@cli.command()
@click.argument("models", nargs=-1)
@click.option("--zoo", "source", type=click.Choice(zoo.SOURCES), is_flag=False,
              flag_value="reference", default=None,
              help="Also ingest a zoo source's architectures: reference (the default with a "
                   "bare --zoo), torchvision (every classifier), timm or hf.")
@click.option("--limit", type=click.IntRange(min=1), help="At most N of the source's "
              "architectures, spread evenly over its list.")
@click.option("--match", "match", multiple=True, metavar="GLOB",
              help="Only the source's architectures matching GLOB (e.g. 'resnet*'). Repeatable.")
@click.option("--name", help="Model name (one MODEL only; default: file stem or zoo name).")
@click.option("--exporter", type=click.Choice(zoo.EXPORTERS), default="torchscript",
              show_default=True)
@dims_option
@scenario_options
@neo4j_options
@json_option
def ingest(models: tuple[str, ...], source: str | None, limit: int | None,
           match: tuple[str, ...], name: str | None, exporter: str, dims: dict[str, int],
           as_json: bool, settings: ScenarioOptions, neo4j: Neo4jOptions) -> None:
    """Ingest models into Neo4j (one transaction each; unchanged files are skipped).

    MODELS are .onnx files, folders of them, or zoo names. A model that cannot be read or
    exported is skipped with its reason; the exit code is then 1. `--dim` applies to every
    model that has the dimension. Examples: splitcut ingest --zoo; splitcut ingest --zoo timm
    --match 'resnet*' --limit 10; splitcut ingest bert.onnx --dim seq=128
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    models = api.expand_models(models, source, limit, match)
    if not models:
        raise click.UsageError("give MODELS to ingest, or --zoo SOURCE (none matched)")
    if name and len(models) > 1:
        raise click.UsageError("--name names one model; give one MODEL with it")
    scenario = settings.scenario()
    done: list[api.Ingested] = []
    columns = (TextColumn("{task.description}", markup=False), BarColumn(),
               MofNCompleteColumn())
    with neo4j.store() as store, Progress(*columns, console=console, transient=True,
                                           disable=as_json) as progress:
        task = progress.add_task("ingesting", total=len(models))
        if name:
            graph, _, status = api.ingest_model(store, models[0], scenario, name, exporter,
                                                dims=dims)
            done.append(api.Ingested(models[0], graph.name, len(graph), status, "", 0.0))
        else:
            for row in api.ingest_models(
                    store, models, scenario, exporter, dims,
                    started=lambda m: progress.update(task, description=f"ingesting {m}")):
                done.append(row)
                if row.status == "skipped" and not as_json:
                    progress.console.print(f"skipped {row.model}: {row.reason}")
                progress.advance(task)
    skipped = [row for row in done if row.status == "skipped"]
    if as_json:
        emit_json([dataclasses.asdict(row) for row in done])
    else:
        for row in done:
            if row.status != "skipped":
                console.print(f"{row.name}: {row.status} ({plural(row.layers, 'layer')})")
        console.print(ingest_summary([row.status for row in done],
                                            sum(row.layers for row in done)))
    if skipped:
        sys.exit(1)


@cli.command()
@click.argument("name", required=False)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Query parameter (a JSON value, else a string). Repeatable.")
@click.option("--wide", is_flag=True, help="Show every column (signatures, keys) unshortened.")
@neo4j_options
@json_option
def query(name: str | None, params: tuple[str, ...], as_json: bool, wide: bool,
          neo4j: Neo4jOptions) -> None:
    """Run a saved read query from cypher/; without NAME, list them with what they answer.

    Example: splitcut query read_blocks --param model=resnet18
    """
    from toolkit import queries

    if name is None:
        table = Table(title="saved queries: splitcut query NAME --param KEY=VALUE",
                      title_justify="left")
        table.add_column("name", no_wrap=True)
        table.add_column("what it answers", overflow="fold")
        table.add_column("parameters (cypher/NAME.cypher says what they mean)",
                         overflow="fold")
        for known in queries.user_names():
            table.add_row(known, queries.description(known),
                          ", ".join(queries.parameters(known)) or "-")
        console.print(table)
        return
    if queries.internal(name):
        raise ToolkitError(f"{name!r} is an internal step splitcut runs itself; "
                           f"`splitcut query` lists the ones to ask")
    values = dict(_parse_param(p) for p in params)
    missing = [k for k in queries.parameters(name) if k not in values]
    if missing:
        raise click.UsageError(f"{name} needs " + " ".join(f"--param {k}=VALUE" for k in missing)
                               + f" (null for none where it allows: cypher/{name}.cypher)")
    with neo4j.store() as store:
        rows = store.run_saved(name, values)
    if as_json:
        emit_json(rows)
        return
    console.print(rows_table(rows, wide))


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.UsageError(f"--param takes KEY=VALUE, not {text!r}")
    try:
        parsed = json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        return key, value
    _check_param(key, parsed)
    return key, parsed


def _check_param(key: str, value: Any) -> None:
    """Numbers Neo4j can hold: integers within int64, floats finite."""
    if isinstance(value, bool):
        return
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise click.ClickException(f"--param {key}: {value} does not fit Neo4j's 64-bit "
                                   "integers")
    if isinstance(value, float) and not math.isfinite(value):
        raise click.ClickException(f"--param {key}: {value} is not a finite number")
    for item in value if isinstance(value, list) else []:
        _check_param(key, item)


@cli.command()
@model_options
@scenario_options
@partition_options
@click.option("-o", "--out", "out_dir", required=True, help="Folder for device.onnx/server.onnx.")
@click.option("--no-check", is_flag=True, help="Skip the onnxruntime equivalence check.")
@click.option("--tiers", "tiers_file", type=click.Path(dir_okay=False),
              help="A chain of tiers (TOML): one ONNX file per tier.")
@click.option("--u-shape", is_flag=True,
              help="Device -> server -> device: device-head, server and device-tail files.")
@json_option
def split(model: str, name: str | None, exporter: str, dims: dict[str, int],
          as_json: bool, method: str,
          pin: tuple[str, ...], pin_server: tuple[str, ...], out_dir: str, no_check: bool,
          tiers_file: str | None, u_shape: bool, settings: ScenarioOptions) -> None:
    """Write the optimal partition of MODEL as device.onnx and server.onnx, and check them.

    Example: splitcut split resnet18 --link lte -o halves/
    """
    if tiers_file or u_shape:
        names, boundaries = settings.chain(tiers_file, u_shape)
        chained = api.partition_tiers(load_graph(model, name, exporter, dims), names,
                                      boundaries, method, pin, pin_server)
        files, parts = api.split_tiers(model, chained, out_dir, exporter, check=not no_check,
                                       dims=dims)
        if as_json:
            emit_json({"tiers": [{"name": n, "file": str(f) if f else None, "inputs": i}
                                 for n, f, i in zip(names, parts.paths, parts.inputs,
                                                    strict=True)],
                       "max_abs_error": parts.max_abs_error,
                       "max_rel_error": parts.max_rel_error,
                       "not_verified": parts.not_verified, "delay_ms": chained.delay.total})
            return
        for stem, written in zip(files, parts.paths, strict=True):
            click.echo(f"{stem}: {written}" if written else f"{stem}: holds no layer, no file")
        if parts.not_verified is not None:
            click.echo(f"written, not verified: {parts.not_verified}")
        if parts.max_abs_error is not None:
            click.echo(f"the tiers in order reproduce the whole model: max abs error "
                       f"{parts.max_abs_error:.3g} (relative {parts.max_rel_error:.3g})")
        return
    result = api.partition_model(load_graph(model, name, exporter, dims), settings.scenario(),
                                 method, pin, pin_server)
    halves = api.split_halves(model, result, out_dir, exporter, check=not no_check,
                              dims=dims)
    data = {
        "device": str(halves.device_path),
        "server": str(halves.server_path) if halves.server_path else None,
        "cut_tensors": halves.cut_tensors, "max_abs_error": halves.max_abs_error,
        "max_rel_error": halves.max_rel_error, "not_verified": halves.not_verified,
        "delay_ms": result.delay.total,
    }
    if as_json:
        emit_json(data)
        return
    click.echo(f"device half: {halves.device_path}")
    if halves.server_path is None:
        click.echo("no server half: every layer runs on the device, nothing crosses")
    else:
        click.echo(f"server half: {halves.server_path} (inputs: {', '.join(halves.cut_tensors)})")
    if halves.not_verified is not None:
        click.echo(f"written, not verified: {halves.not_verified}")
    if halves.max_abs_error is not None:
        what = ("device then server reproduces" if halves.server_path
                else "the device half reproduces")
        click.echo(f"{what} the whole model: max abs error "
                   f"{halves.max_abs_error:.3g} (relative {halves.max_rel_error:.3g})")


@cli.command()
@model_options
@scenario_options
@click.option("--cut", type=click.Choice(api.CUTS), default="optimal", show_default=True,
              help="Which partition to train.")
@click.option("--device-layers", "device_layers_file",
              help="JSON list of device layers, or `partition --json` output (with --tiers/"
                   "--u-shape: `partition --tiers/--u-shape --json`), instead of --cut.")
@click.option("--tiers", "tiers_file", type=click.Path(dir_okay=False),
              help="A chain of tiers (TOML, as partition --tiers): one process per tier.")
@click.option("--u-shape", is_flag=True,
              help="Device -> server -> device: the loss and labels stay on the device.")
@click.option("--iterations", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True,
              help="Iterations run first and not measured.")
@click.option("--lr", type=float, default=0.001, show_default=True, help="SGD learning rate.")
@click.option("--paced", is_flag=True,
              help="Pace in the senders instead of shaping the link in the kernel.")
@click.option("--device-cpu", type=click.FloatRange(min=0.01, max=1.0), default=1.0,
              show_default=True,
              help="The device's share of one CPU (a cgroup quota): a slower device.")
@click.option("--tier-cpu", "tier_cpu", multiple=True, metavar="TIER=SHARE",
              callback=lambda _c, _p, v: _per_tier(v, "--tier-cpu", "SHARE", _share),
              help="A chain tier's share of one CPU, as --device-cpu (repeatable).")
@click.option("--tier-device", "tier_device", multiple=True, metavar="TIER=DEVICE",
              callback=lambda _c, _p, v: _per_tier(v, "--tier-device", "DEVICE", str),
              help="Run a tier on a torch device, e.g. server=cuda: the server's part "
                   "trains on this machine's GPU (repeatable).")
@json_option
def train(model: str, name: str | None, exporter: str, dims: dict[str, int], cut: str,
          device_layers_file: str | None, tiers_file: str | None, u_shape: bool,
          iterations: int, warmup: int, lr: float, paced: bool, device_cpu: float,
          tier_cpu: dict[str, float], tier_device: dict[str, str], as_json: bool,
          settings: ScenarioOptions) -> None:
    """Train MODEL split across processes over shaped links; measured vs predicted.

    Each tier (device and server; with --u-shape or --tiers, every tier of the chain) runs
    as its own program, exchanging activations and gradients over TCP inside a private
    network namespace whose loopback `tc` shapes to each link's rates (root needed; else
    --paced). A file that fixes its batch trains at that batch.

    Example: splitcut train resnet18 --link wifi5 --iterations 20
    """
    graph = load_graph(model, name, exporter, dims)
    ctx = click.get_current_context()
    if ctx.get_parameter_source("batch") == click.core.ParameterSource.DEFAULT:
        settings = dataclasses.replace(settings, batch=graph.file_batch or settings.batch)
    chain = settings.chain(tiers_file, u_shape) if tiers_file or u_shape else None
    scenario = chain[1][0] if chain else settings.scenario()
    layers = api.device_layers_from(device_layers_file) if device_layers_file else []
    with console.status(f"training {model} split", spinner="dots") as status:
        def progress(done: int, steps: int) -> None:
            status.update(f"training {model} split: iteration {done}/{steps}")

        result = api.train_model(model, scenario, name, exporter, dims, cut, layers,
                                 iterations, warmup, lr, paced, device_cpu, progress, chain,
                                 tier_cpu, tier_device, graph)
    if as_json:
        emit_json(result.to_dict())
        return
    console.print(train_report(result))


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--name", help="Model name (default: file stem or zoo name).")
@click.option("--exporter", type=click.Choice(zoo.EXPORTERS), default="torchscript",
              show_default=True)
@click.option("-o", "--out", "out_path", required=True,
              help="Where to write the measured profile (JSON) or, with --calibrate, the TOML.")
@click.option("--processor", default="this-machine", show_default=True,
              help="Processor name the measurement (or calibrated profile) stands for.")
@click.option("--no-torch", is_flag=True, help="Forward times only (onnxruntime).")
@click.option("--executor", is_flag=True,
              help="Forward and backward of every layer of any file, timed in the executor "
                   "`splitcut train` runs (one thread, batch 1, mean of 5 steps).")
@click.option("--calibrate", is_flag=True,
              help="INPUTS are measured profiles: fit a CPU profile to them instead of measuring.")
@click.option("--base", default="cpu-server", show_default=True,
              help="Profile whose peaks are kept when calibrating.")
@click.option("--kind", type=click.Choice(["device", "server"]), default="device",
              show_default=True, help="What the calibrated profile is: --device or --server.")
@dims_option
def profile(inputs: tuple[str, ...], name: str | None, exporter: str, out_path: str,
            processor: str, no_torch: bool, executor: bool, calibrate: bool, base: str,
            kind: str, dims: dict[str, int]) -> None:
    """Measure per-layer times of a MODEL on this machine, or calibrate a profile to them.

    Examples: splitcut profile resnet18 -o r18.json;
    splitcut profile --calibrate r18.json mbv2.json --processor this-machine -o this-machine.toml
    """
    from pathlib import Path

    if calibrate:
        from toolkit.calibrate import to_toml

        fitted = api.calibrate_profile(inputs, base, processor, kind)
        Path(out_path).write_text(to_toml(fitted))
        click.echo(f"wrote {out_path}, a {fitted.kind} profile of {fitted.description}: "
                   f"matmul {fitted.matmul_efficiency:.3g}, vector "
                   f"{fitted.vector_efficiency:.3g}, memory {fitted.memory_efficiency:.3g}, "
                   f"overhead {fitted.layer_overhead_us:.3g} us")
        return
    if len(inputs) != 1:
        raise click.UsageError("measure one MODEL at a time (or pass --calibrate PROFILES...)")
    model = inputs[0]
    if executor and no_torch:
        raise click.UsageError("--executor times with torch: drop --no-torch")
    measured = api.measure_model(model, name, exporter, processor, use_torch=not no_torch,
                                 dims=dims, executor=executor)
    Path(out_path).write_text(json.dumps(measured.to_dict(), indent=1))
    total = sum(measured.forward_ms.values())
    backward = f", backward {sum(measured.backward_ms.values()):.2f} ms" \
        if measured.backward_ms else ""
    click.echo(f"wrote {out_path}: {plural(len(measured.forward_ms), 'layer')}, forward "
               f"{total:.2f} ms{backward} per sample ({measured.source})")


@cli.command()
@click.option("--port", type=int, default=7480, show_default=True,
              help="Local port to serve the style file on (0: any free port).")
def style(port: int) -> None:
    """Serve the Browser style and guide until Ctrl-C, and print the `:style` and `:play`
    commands that load them. Example: splitcut style"""
    import time

    from toolkit.style_server import StyleServer

    try:
        server = StyleServer(port)
    except OSError as exc:
        raise ToolkitError(f"cannot serve on port {port}: {exc.strerror} (try --port 0)") from exc
    with server:
        click.echo(f"In the Neo4j Browser, run:  :style {server.url}")
        click.echo(f"and for a guided tour:      :play {server.guide_url}")
        click.echo("Serving the style and the guide; Ctrl-C stops.")
        while True:
            time.sleep(3600)


@cli.group(name="zoo")
def zoo_group() -> None:
    """Reference models built offline with random weights."""


@zoo_group.command(name="list")
@click.option("--source", type=click.Choice(zoo.SOURCES), default="reference",
              show_default=True, help="Which architectures: the reference zoo, every "
              "torchvision classifier, timm's or the transformers presets.")
@click.option("--match", "match", multiple=True, metavar="GLOB",
              help="Only architectures matching GLOB. Repeatable.")
@click.option("--limit", type=click.IntRange(min=1), help="At most N, spread evenly.")
@json_option
def zoo_list(source: str, match: tuple[str, ...], limit: int | None, as_json: bool) -> None:
    """List the architectures a source builds. Example: splitcut zoo list --source timm
    --match 'convnext*'"""
    rows = []
    for name in api.expand_models((), source, limit, match):
        model = zoo.get(name)
        rows.append({"name": model.name, "source": model.source, "family": model.family,
                     "description": model.description})
    if not any(row["description"] for row in rows):
        rows = [{k: v for k, v in row.items() if k != "description"} for row in rows]
    if as_json:
        emit_json(rows)
        return
    console.print(rows_table(rows))


@zoo_group.command(name="export")
@click.argument("names", nargs=-1, required=True)
@click.option("-o", "--out", "out_dir", default=".", show_default=True, help="Output folder.")
@click.option("--exporter", type=click.Choice(zoo.EXPORTERS), default="torchscript",
              show_default=True)
@click.option("--force", is_flag=True, help="Export again even if the file exists.")
def zoo_export(names: tuple[str, ...], out_dir: str, exporter: str, force: bool) -> None:
    """Export zoo models to ONNX. Example: splitcut zoo export resnet18 gpt2 -o models/"""
    for name in names:
        zoo.get(name)
    for name in names:
        path = zoo.export(name, out_dir, exporter, force, progress=click.echo)
        click.echo(str(path))


def main() -> None:
    """Console entry point: library errors become one line on stderr and exit code 2."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except ToolkitError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (MemoryError, RecursionError) as exc:
        click.echo(f"error: the input is too large or too deeply nested to handle "
                   f"({type(exc).__name__})", err=True)
        sys.exit(2)
    except Exception as exc:  # last resort: one line and exit 2; the traceback with -v
        logging.getLogger(__name__).info("unexpected error", exc_info=True)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        click.echo(f"error: unexpected {type(exc).__name__}: {first} (a bug: please report it; "
                   "-v shows the traceback)", err=True)
        sys.exit(2)
