"""What people read: every table of README's commands fits 100 columns, no number cut."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import pytest
from rich.table import Table

from tests.helpers import chain, run_main, save
from toolkit import cli
from toolkit.report import cell, duration, percent, rows_table

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WIDTH = 100
_NUMBER_END = re.compile(r"\d\.?$")
_NUMBER_START = re.compile(r"[\d.,%]|(ms|s|GB|MB|kB|KiB|MiB|GiB|Mbit/s|Gbit/s)\b")


def cut_numbers(text: str) -> list[str]:
    """Table cells whose number continues on the next line (or loses its unit there), or is
    cut short with an ellipsis."""
    rows = [line.split("│")[1:-1] for line in text.splitlines() if line.startswith("│")]
    cut = [c for row in rows for c in row if re.search(r"\d\u2026", c)]
    for upper, lower in pairwise(rows):
        if len(upper) != len(lower) or (len(lower) > 1 and lower[0].strip()):
            continue  # a new row starts (its first cell is filled), not a wrapped one
        for a, b in zip(upper, lower, strict=True):
            a, b = a.strip(), b.strip()
            if a and b and _NUMBER_END.search(a) and _NUMBER_START.match(b):
                cut.append(f"{a!r} / {b!r}")
    return cut


def test_the_check_catches_a_number_cut_in_two():
    narrow = Table("value")
    narrow.add_row("123456789.25 ms")
    console = cli.plain_console(width=10, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(narrow)
    assert cut_numbers(console.export_text())


@pytest.mark.parametrize("args", [
    ["partition", "resnet50"],
    ["partition", "googlenet", "--uplink", "10Mbps", "--downlink", "10Mbps",
     "--device-memory", "1GB"],
    ["partition", "gpt2", "--device", "jetson-agx-orin", "--server", "h100", "--uplink",
     "50Mbps", "--downlink", "300Mbps"],
    ["partition", "resnet18", "--tiers", str(EXAMPLES / "device-edge-cloud.toml")],
    ["partition", "resnet18", "--u-shape", "--uplink", "10Mbps", "--downlink", "10Mbps"],
    ["-v", "partition", "resnet152"],
    ["blocks", "resnet152"],
    ["inspect", "resnet18"],
    ["graph", "resnet18", "--device", "jetson-agx-orin", "--server", "a100", "--link", "5g"],
    ["profiles"],
    ["sweep", "resnet18", "--uplink", "1Mbps..1Gbps"],
    ["query"],
], ids=lambda a: " ".join(a[:3]))
def test_readme_tables_fit_100_columns(args, capsys, monkeypatch):
    monkeypatch.setattr(cli, "console", cli.plain_console(width=WIDTH))
    code, out, err = run_main(args, capsys, monkeypatch)
    assert code == 0, err
    assert "│" in out  # a table was printed
    assert max(len(line) for line in out.splitlines()) <= WIDTH
    assert not cut_numbers(out)
    assert "-0%" not in out and "-0.0" not in out
    if args[0] == "inspect":  # the parameters are the model's, not per sample
        assert re.search(r"MACs per sample, [\d.]+M parameters", " ".join(out.split()))


def test_partition_report_reads_as_a_verdict(capsys, monkeypatch):
    monkeypatch.setattr(cli, "console", cli.plain_console(width=WIDTH))
    code, out, _ = run_main(["partition", "resnet50"], capsys, monkeypatch)
    assert code == 0
    first = " ".join(out.split(" + ")[0].split())  # up to the scenario's "device + server"
    assert re.match(r"resnet50: cut after \S+ \(\d+ layers? on the device\): [\d.,]+ m?s per "
                    r"iteration, \d+% faster than training on the device alone", first), first
    server = next(line for line in out.splitlines() if "server only" in line)
    assert "reference only: raw data would leave the device" in server and "%" not in server
    assert not re.search(r"\b1 layers", out) and "(blocks" not in out  # detection: -v
    assert "kept on the device: 1 layer (reads raw input)" in " ".join(out.split())
    code, out, _ = run_main(["-v", "partition", "resnet50"], capsys, monkeypatch)
    assert "finding the repeated blocks took" in " ".join(out.split())


def test_a_cut_slower_than_the_device_alone_says_so():
    """A memory budget that rules training on the device alone out can leave a cut slower
    than it: the verdict said 'as fast as training on the device alone' for 135 ms against
    73.7 ms."""
    from toolkit.report import verdict

    slower = verdict(135.0, 1, 48, ["stem"], 73.7)
    assert slower.endswith(": 135 ms per iteration, 83% slower than training on the device "
                           "alone"), slower
    assert verdict(36.0, 1, 48, ["stem"], 73.7).endswith("51% faster than training on the "
                                                         "device alone")
    assert verdict(73.8, 1, 48, ["stem"], 73.7).endswith("as fast as training on the device "
                                                         "alone")


def test_query_results_read_well():
    rows = [{"model": "resnet50", "total_ms": 2005.1124, "gain_vs_device_only": 0.81776,
             "peak_bytes": 456_000_000.0, "signature": "d6b45e37f0ba6e45", "tiny": -1.33e-16,
             "layers": ["a", "b", "c", "d", "e", "f", "g", "h"]}]
    assert cell("total_ms", 2005.1124) == duration(2005.1124) == "2.01 s"
    assert cell("gain_vs_device_only", 0.81776) == percent(0.81776) == "82%"
    assert percent(-1e-9) == "0%"
    console = cli.plain_console(width=WIDTH, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(rows_table(rows))
    text = console.export_text()
    assert "2.01 s" in text and "82%" in text and "434.9 MiB" in text
    assert "d6b45e37" not in text and "e-16" not in text and "... (8)" in text
    console.print(rows_table(rows, wide=True))
    assert "d6b45e37f0ba6e45" in console.export_text()


@pytest.mark.parametrize("command", [["inspect"], ["graph"], ["blocks"], ["partition"],
                                     ["sweep", "--uplink", "1Mbps..1Gbps"]],
                         ids=lambda c: c[0])
def test_names_print_as_written(command, tmp_path, capsys, monkeypatch):
    """A layer or model name is printed verbatim: `[/bold]` is not read as markup (rich
    would raise on the unmatched tag) and `:llama:` is not turned into an emoji."""
    m = chain(6)
    for i, node in enumerate(m.graph.node):
        node.name = f"/enc[/bold]/blk[red]/{node.op_type}_{i}"
    path = save(m, tmp_path / "marked.onnx")
    monkeypatch.setattr(cli, "console", cli.plain_console(width=WIDTH))
    args = [command[0], str(path), "--name", "hf:llama:[b]", *command[1:]]
    code, out, err = run_main(args, capsys, monkeypatch)
    assert code == 0, err
    flat = "".join(out.split())
    assert "hf:llama:[b]" in flat and "\N{LLAMA}" not in out
    if command[0] != "sweep":  # the sweep names the tiers' last layers only
        assert "blk[red]" in flat  # (block type names write a module path with dots)
