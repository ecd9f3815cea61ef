"""Profiles parse, every number has a source, and bad settings end in clear errors."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from tests.helpers import chain, run_main, save
from toolkit import profiles
from toolkit.cli import cli
from toolkit.errors import ProfileError, ScenarioError

NAMES = ["jetson-nano", "jetson-tx2", "jetson-xavier-nx", "jetson-agx-orin", "raspberry-pi-4",
         "raspberry-pi-5", "midrange-phone", "rtx-3090", "a100", "h100", "cpu-server"]


def test_every_named_profile_exists_and_every_number_has_a_source():
    procs = profiles.processors()
    assert set(NAMES) <= set(procs)
    for proc in procs.values():
        for key, value in vars(proc).items():
            if isinstance(value, float):
                assert proc.sources.get(key), f"{proc.name}.{key} has no source"
        assert 0 < proc.matmul_efficiency <= 1
        assert proc.fp16_tflops >= proc.fp32_tflops


def test_every_link_has_a_source_and_positive_rates():
    links = profiles.links()
    assert {"wifi5", "lte", "5g"} <= set(links)
    for link in links.values():
        assert link.source and link.uplink_bps > 0 and link.downlink_bps > 0


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ProfileError, match=r"known: .*jetson-nano"):
        profiles.processor("jetson-mega")


def test_malformed_toml_is_a_profile_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x\nkind = device")
    with pytest.raises(ProfileError, match="malformed TOML"):
        profiles.processor(str(bad))


def test_profile_missing_numbers_is_named(tmp_path):
    bad = tmp_path / "half.toml"
    bad.write_text('name = "half"\nkind = "device"\nfp32_tflops = 1.0\n')
    with pytest.raises(ProfileError, match="lacks fp16_tflops"):
        profiles.processor(str(bad))


def test_user_profile_dir_adds_a_processor(tmp_path):
    text = (profiles._builtin_files()[0]).read_text().replace('name = "a100"', 'name = "my-gpu"')
    (tmp_path / "mine.toml").write_text(text)
    assert "my-gpu" in profiles.processors(tmp_path)


@pytest.mark.parametrize(("text", "bps"), [
    ("20Mbps", 20e6), ("1.5Gbps", 1.5e9), ("800kbps", 800e3), ("2e7bps", 2e7), ("100 Mbit/s", 1e8),
    ("20mbps", 20e6), ("20 Mb/s", 20e6), ("20MB/s", 160e6), ("20MBps", 160e6),
    ("2.5 kbyte/s", 20e3), ("1E3bps", 1e3),
])
def test_rates_parse(text, bps):
    assert profiles.parse_rate(text) == pytest.approx(bps)


@pytest.mark.parametrize("text", ["0Mbps", "-5Mbps", "fast", "", "20", "1e400Mbps", "20MBit/s",
                                  "20 Mbytes", "20MBPS"])
def test_bad_rates_are_rejected(text):
    with pytest.raises(ScenarioError):
        profiles.parse_rate(text)


@pytest.mark.parametrize(("args", "message"), [
    (["--uplink", "0Mbps"], "greater than zero"),
    (["--uplink", "-3Mbps"], "cannot read rate"),
    (["--device", "jetson-mega"], "known:"),
    (["--batch", "0"], "batch size"),
])
def test_cli_bad_scenarios_exit_2(tmp_path, capsys, monkeypatch, args, message):
    path = save(chain(2), tmp_path / "c.onnx")
    code, _, err = run_main(["graph", str(path), *args], capsys, monkeypatch)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_profiles_command_lists_everything():
    result = CliRunner().invoke(cli, ["profiles", "--json"])
    assert result.exit_code == 0
    assert "jetson-agx-orin" in result.output and "wifi5" in result.output


def test_cli_malformed_profile_file_exits_2(tmp_path, capsys, monkeypatch):
    path = save(chain(2), tmp_path / "c.onnx")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    code, _, err = run_main(["graph", str(path), "--device", str(bad)], capsys, monkeypatch)
    assert code == 2
    assert "malformed TOML" in err


def test_measured_gpu_profile_reproduces_the_steps_it_was_fitted_to():
    """h200-measured (bench/gpu_profile.py) against the GPU measurements shipped beside it."""
    import json
    from pathlib import Path

    from toolkit.api import load_graph
    from toolkit.calibrate import training_ms

    proc = profiles.processor("h200-measured")
    assert proc.kind == "server" and "measured" in proc.sources["layer_overhead_us"]
    data = json.loads((Path(__file__).parent.parent / "bench" / "results"
                       / "h200-training.json").read_text())
    datasheet = profiles.processor("h200")
    errors = {"fitted": 0.0, "datasheet": 0.0}
    for name in ("resnet18", "mobilenet_v2", "bert_base"):
        graph = load_graph(name)
        for batch, step in data["models"][name]["steps"].items():
            measured = step["fp32"]["step_ms"]
            fitted = training_ms(proc, graph, int(batch))
            assert 0.5 < fitted / measured < 2.0, (name, batch, fitted, measured)
            errors["fitted"] += math.log(fitted / measured) ** 2
            guess = training_ms(datasheet, graph, int(batch))
            errors["datasheet"] += math.log(guess / measured) ** 2
    assert errors["fitted"] < errors["datasheet"] / 4  # the fit beats the guess it started from
