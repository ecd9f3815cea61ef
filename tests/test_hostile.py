"""Hostile and absurd input: every case ends in one line on stderr and exit code 2, and touches
nothing it should not (planted sentinels are checked after each)."""

from __future__ import annotations

import json
import os

import click
import pytest

from tests.helpers import chain, run_main, save
from toolkit.cli import cli
from toolkit.measured import layers_sha
from toolkit.onnx import read_onnx
from toolkit.store import Connection, Store

PASSWORD = os.environ.get("NEO4J_PASSWORD", "splitcut-dev")
WRITTEN_HERE = {"uri-creds"}  # the one model these tests store on purpose


def _snapshot() -> dict[str, tuple[str, int]]:
    """Every stored model other than this module's: its sha256 and layer count."""
    with Store(Connection.from_env(password=PASSWORD)) as store:
        records = store.driver.execute_query(
            "MATCH (m:Model) OPTIONAL MATCH (m)-[:HAS_LAYER]->(l) "
            "RETURN m.name AS name, m.sha256 AS sha, count(l) AS layers").records
    return {r["name"]: (r["sha"], r["layers"]) for r in records if r["name"] not in WRITTEN_HERE}


@pytest.fixture(scope="module", autouse=True)
def unrelated_data_untouched():
    """Nothing hostile changes what else is in the database."""
    before = _snapshot()
    yield
    assert _snapshot() == before


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_every_command_goes_through_the_last_resort_handler(tmp_path, capsys, monkeypatch):
    """An unexpected exception inside any command is one line and exit 2, never a traceback;
    -v logs the traceback."""
    def boom(self, ctx):
        raise RuntimeError("planted failure")

    for name, command in cli.commands.items():
        monkeypatch.setattr(type(command), "invoke", boom)
        args = [name] + ["x" for p in command.params
                         if isinstance(p, click.Argument) and p.required]
        code, _, err = run_main(args, capsys, monkeypatch)
        one_line_error(code, err, "unexpected RuntimeError: planted failure")
        monkeypatch.undo()


def _profile(tmp_path, **changes) -> str:
    graph = read_onnx(save(chain(2), tmp_path / "c.onnx"))
    data = {"model": "c", "processor": "jetson-nano", "batch": 1, "source": "test",
            "layers_sha256": layers_sha(graph),
            "layers": {x.name: {"forward_ms": 1.0, "backward_ms": None} for x in graph}}
    data.update(changes)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"batch": 0}, "batch must be a positive integer"),
    ({"layers": []}, "'layers' must map"),
    ({"layers": {"relu1": {"forward_ms": -64000.0}}}, "finite, non-negative"),
])
def test_bad_measured_profiles_are_one_line_errors(tmp_path, capsys, monkeypatch, changes,
                                                   fragment):
    path = _profile(tmp_path, **changes)
    code, _, err = run_main(["partition", str(tmp_path / "c.onnx"), "--measured", path],
                            capsys, monkeypatch)
    one_line_error(code, err, fragment)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--latency", "1" + "0" * 400 + "ms"], "must be finite"),
    (["--uplink", "1" + "0" * 400 + "Mbps"], "finite and greater than zero"),
    (["--uplink", "20"], "with a unit"),
    (["--label-bytes", "inf"], "label bytes must be finite"),
])
def test_numbers_that_are_not_numbers_are_refused(tmp_path, capsys, monkeypatch, args,
                                                  fragment):
    path = save(chain(2), tmp_path / "c.onnx")
    code, _, err = run_main(["partition", str(path), *args, "--json"], capsys, monkeypatch)
    one_line_error(code, err, fragment)


@pytest.mark.parametrize(("text", "fragment"), [
    ("nan", "finite, non-negative"), ("inf", "finite, non-negative"),
])
def test_non_finite_profile_numbers_are_refused(tmp_path, capsys, monkeypatch, text, fragment):
    source = (tmp_path / "dev.toml")
    from importlib import resources
    nano = (resources.files("toolkit") / "profiles" / "jetson-nano.toml").read_text()
    source.write_text(nano.replace("conv_efficiency = ", f"conv_efficiency = {text} #", 1))
    path = save(chain(2), tmp_path / "c.onnx")
    code, _, err = run_main(["partition", str(path), "--device", str(source)], capsys,
                            monkeypatch)
    one_line_error(code, err, fragment)
    source.write_bytes(b"name = \"\xff\xfe\"\n")
    code, _, err = run_main(["partition", str(path), "--device", str(source)], capsys,
                            monkeypatch)
    one_line_error(code, err, "malformed TOML")


def test_split_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path, capsys,
                                                                        monkeypatch):
    sentinel = tmp_path / "precious.txt"
    sentinel.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "device.onnx").symlink_to(sentinel)
    path = save(chain(4, width=16), tmp_path / "c.onnx")
    code, _, err = run_main(["split", str(path), "--latency", "0ms", "--uplink", "1Gbps",
                             "-o", str(out)], capsys, monkeypatch)
    assert code == 0, err
    assert sentinel.read_text() == "keep me"
    assert not (out / "device.onnx").is_symlink()
    assert not list(out.glob(".splitcut-*"))  # no temporary left behind
    (tmp_path / "afile").write_text("x")
    code, _, err = run_main(["split", str(path), "-o", str(tmp_path / "afile")], capsys,
                            monkeypatch)
    one_line_error(code, err, "cannot write the halves")
    assert (tmp_path / "afile").read_text() == "x"


def test_http_uris_and_passwords_in_uris(tmp_path, capsys, monkeypatch):
    path = save(chain(2), tmp_path / "c.onnx")
    monkeypatch.setenv("NEO4J_URI", "http://neo4j:t0p-s3cret@127.0.0.1:7474")
    code, _, err = run_main(["ingest", str(path)], capsys, monkeypatch)
    one_line_error(code, err, "splitcut talks Bolt")
    assert "t0p-s3cret" not in err
    monkeypatch.setenv("NEO4J_URI", "bolt://neo4j:t0p-s3cret@127.0.0.1:7999")
    code, out, err = run_main(["ingest", str(path)], capsys, monkeypatch)
    one_line_error(code, err, "bolt://127.0.0.1:7999")
    assert "t0p-s3cret" not in out + err
    port = os.environ.get("NEO4J_LOCAL_BOLT_PORT", "7687")
    monkeypatch.setenv("NEO4J_URI", f"bolt://neo4j:{PASSWORD}@127.0.0.1:{port}")
    monkeypatch.delenv("NEO4J_PASSWORD", raising=False)
    code, out, err = run_main(["partition", str(path), "--neo4j", "--name", "uri-creds"],
                              capsys, monkeypatch)
    assert code == 0, err  # the credentials in the URI were used
    assert PASSWORD not in out + err


@pytest.mark.parametrize("params", [["query=1"], ["self=1"], ["model=99999999999999999999999"]])
def test_query_parameters_that_collide_or_overflow(capsys, monkeypatch, params):
    monkeypatch.setenv("NEO4J_PASSWORD", PASSWORD)
    args = ["query", "read_blocks", "--param", "model=nothing-here"]
    for p in params:
        args += ["--param", p]
    code, out, err = run_main([*args, "--json"], capsys, monkeypatch)
    if "9999" in params[0]:
        one_line_error(code, err, "64-bit integers")
    else:
        assert code == 0, err
        assert json.loads(out) == []
