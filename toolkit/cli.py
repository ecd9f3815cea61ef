"""The `splitcut` command line: thin commands over the library; ToolkitError -> one line, exit 2."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from toolkit import __version__, zoo
from toolkit.errors import ToolkitError
from toolkit.graph import LayerGraph
from toolkit.report import human, human_bytes, inspect_dict

F = TypeVar("F", bound=Callable[..., Any])
console = Console()


def model_options(func: F) -> F:
    """MODEL argument plus --name and --exporter, shared by every command that reads a model."""
    func = click.option(
        "--exporter", type=click.Choice(zoo.EXPORTERS), default="torchscript", show_default=True,
        help="Exporter used when MODEL is a zoo name.",
    )(func)
    func = click.option("--name", help="Model name (default: file stem or zoo name).")(func)
    return click.argument("model")(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(func)


def load_graph(model: str, name: str | None, exporter: str) -> LayerGraph:
    from toolkit.onnx_reader import read_onnx

    with console.status(f"reading {model}", spinner="dots") if sys.stderr.isatty() else _null():
        path, default_name = zoo.resolve(model, exporter)
        return read_onnx(path, name or default_name)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="splitcut")
@click.option("-v", "--verbose", is_flag=True, help="Log what is happening.")
def cli(verbose: bool) -> None:
    """Find where to split a neural network between a mobile device and an edge server."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )


@cli.command()
@model_options
@json_option
def inspect(model: str, name: str | None, exporter: str, as_json: bool) -> None:
    """Per-layer facts of MODEL: op, FLOPs, MACs, parameters, activation size.

    MODEL is an .onnx file or a zoo name. Example: splitcut inspect resnet50
    """
    graph = load_graph(model, name, exporter)
    if as_json:
        emit_json(inspect_dict(graph))
        return
    table = Table(title=f"{graph.name}: {len(graph)} layers")
    for col in ("layer", "op", "module", "FLOPs", "MACs", "params", "activation"):
        table.add_column(col, justify="right" if col in ("FLOPs", "MACs", "params") else "left")
    for layer in graph:
        table.add_row(
            layer.name, layer.op if layer.supported else f"{layer.op} (?)", layer.module or "",
            human(layer.flops), human(layer.macs), human(layer.params),
            human_bytes(layer.out_bytes),
        )
    console.print(table)
    console.print(
        f"total: {human(graph.total_flops)}FLOPs, {human(graph.total_macs)}MACs, "
        f"{human(graph.total_params)} parameters per sample"
    )
    if graph.unsupported_ops:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(graph.unsupported_ops.items()))
        console.print(f"[yellow]unsupported ops (conservative estimate): {ops}[/yellow]")
    if graph.unknown_shapes:
        console.print(f"[yellow]{len(graph.unknown_shapes)} tensors of unknown shape[/yellow]")
    for note in graph.notes:
        console.print(f"note: {note}")


@cli.group(name="zoo")
def zoo_group() -> None:
    """Reference models built offline with random weights."""


@zoo_group.command(name="list")
@json_option
def zoo_list(as_json: bool) -> None:
    """List the zoo. Example: splitcut zoo list"""
    rows = [
        {"name": m.name, "family": m.family, "description": m.description}
        for m in zoo.MODELS.values()
    ]
    if as_json:
        emit_json(rows)
        return
    table = Table("name", "family", "description")
    for row in rows:
        table.add_row(row["name"], row["family"], row["description"])
    console.print(table)


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
