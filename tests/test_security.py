"""No way in through names or queries, no password in any output, TLS URIs left to the driver."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from onnx import helper

from tests.helpers import model, save, vi, weight
from toolkit import api
from toolkit.cli import cli
from toolkit.store import Connection, Store, StoreError

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = os.environ.get("NEO4J_PASSWORD", "splitcut-dev")
ODD = ["a'b", 'say "hi"', "`x`", "MATCH (n) DETACH DELETE n", "ü🚀\u202e", "{$p}", "x\\y", "1;"]
CYPHER = re.compile(r"\b(MATCH|MERGE|CREATE)\s+\(|\bUNWIND\s+\$|\bDETACH\s+DELETE\s+\w")


def test_no_cypher_is_written_in_python():
    """Every query is a parameterised file in cypher/: no Cypher text, let alone an f-string,
    is built in the package."""
    for path in (ROOT / "toolkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not CYPHER.search(node.value), f"{path.name}: {node.value[:60]!r}"


def test_query_has_no_ad_hoc_mode():
    params = {p.name for p in cli.commands["query"].params}
    assert params <= {"name", "params", "as_json", "wide", "uri", "user", "password", "database",
                      "batch_rows", "writers", "retry_seconds"}


def _odd_model():
    nodes, inits, prev = [], [], "x"
    for i, name in enumerate(ODD):
        inits.append(weight(f"w{i}", 4, 4, seed=i))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [name + "_out"], name=name))
        prev = name + "_out"
    return model(nodes, [vi("x", [1, 4])], [vi(prev, [1, 4])], inits)


def test_odd_model_and_layer_names_round_trip_through_neo4j(tmp_path):
    path = save(_odd_model(), tmp_path / "odd.onnx")
    name = "o'dd `model` MATCH (m) DETACH DELETE m ü"
    with Store(Connection.from_env(password=PASSWORD)) as store:
        partition, written, graph = api.partition_in_neo4j(store, str(path),
                                                           api.make_scenario(), name)
        stored = api.stored_cost_graph(store, name)
    assert stored.model == name
    assert stored.names == [layer.name for layer in graph] == ODD
    assert [t.name for t in stored.tensors] == [t.name for t in partition.graph.tensors]
    assert written["layers"] == len(ODD)


def _cli(args, env_password):
    env = {**os.environ, "NEO4J_PASSWORD": env_password}
    return subprocess.run([sys.executable, "-c", "from toolkit.cli import main; main()", *args],
                          capture_output=True, text=True, env=env)


def test_passwords_never_appear_in_output_or_logs(tmp_path):
    path = str(save(_odd_model(), tmp_path / "p.onnx"))
    secret = "Wr0ng-s3cret-XYZ"
    runs = [
        _cli(["-v", "ingest", path, "--password", secret], PASSWORD),  # refused
        _cli(["-v", "ingest", path], secret),  # refused, from the environment
        _cli(["-v", "ingest", path, "--uri", "bolt://127.0.0.1:7999", "--password", secret],
             PASSWORD),  # nobody there
        _cli(["-v", "partition", path, "--neo4j"], PASSWORD),  # works, with the right one
    ]
    assert [r.returncode for r in runs] == [2, 2, 2, 0]
    for r in runs:
        assert secret not in r.stdout + r.stderr
        assert PASSWORD not in r.stdout + r.stderr
    assert "rejected the credentials" in runs[0].stderr
    assert secret not in repr(Connection("bolt://h", "neo4j", secret, None))


@pytest.mark.parametrize("scheme", ["bolt+s", "bolt+ssc", "neo4j+s", "neo4j+ssc"])
def test_tls_uris_go_to_the_driver_unchanged(scheme):
    uri = f"{scheme}://127.0.0.1:{os.environ.get('NEO4J_LOCAL_BOLT_PORT', '7687')}"
    with pytest.raises(StoreError) as raised:
        Store(Connection(uri, "neo4j", PASSWORD, None))  # the local server speaks no TLS
    assert f"at {uri}:" in str(raised.value)
    assert "accept TLS" in str(raised.value)


CORE = ("graph", "ops", "costs", "costgraph", "blocks", "measured", "partition")
EDGE_LIBRARIES = {"onnx", "onnxruntime", "torch", "torchvision", "transformers", "neo4j"}


def _imports(module: str) -> set[str]:
    """Top-level names a toolkit module imports (a package: all its modules)."""
    base = ROOT / "toolkit" / module.replace(".", "/")
    files = sorted(base.glob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    found: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
    return found


def test_the_pure_core_imports_no_edge_library():
    """graph, ops, costs, costgraph, blocks, measured and partition/ import neither onnx,
    onnxruntime, torch nor neo4j, directly or through another toolkit module."""
    seen: set[str] = set()
    todo = list(CORE)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in _imports(module):
            top = name.split(".")[0]
            assert top not in EDGE_LIBRARIES, f"toolkit.{module} imports {name}"
            if top == "toolkit" and name != "toolkit":
                todo.append(name.split(".", 1)[1])
    assert {"costs", "measured", "profiles", "partition.stcut"} <= seen  # it did walk
