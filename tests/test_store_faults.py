"""A Neo4j server killed in the middle of an ingest leaves no partial model after restart.

Runs its own second server (other ports, its own folder) so that killing it disturbs nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from toolkit import api
from toolkit.costs import build_cost_graph
from toolkit.store import Connection, Store, StoreError
from toolkit.synthetic import deep_model

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "neo4j-local"


def server(home: Path, action: str) -> None:
    env = {**os.environ, "NEO4J_LOCAL_HOME": str(home), "NEO4J_LOCAL_BOLT_PORT": "7688",
           "NEO4J_LOCAL_HTTP_PORT": "7475", "NEO4J_PASSWORD": "splitcut-dev"}
    subprocess.run([str(SCRIPT), action], env=env, check=True, capture_output=True, timeout=300)


@pytest.fixture
def second_server(tmp_path):
    home = tmp_path / "neo4j"
    server(home, "start")
    yield home
    server(home, "stop")


def test_server_killed_mid_ingest_leaves_no_partial_model(second_server):
    connection = Connection("bolt://127.0.0.1:7688", "neo4j", "splitcut-dev", None)
    graph = deep_model("transformer", 40_000)
    costs = build_cost_graph(graph, api.make_scenario())
    outcome: dict[str, object] = {}

    def ingest() -> None:
        try:
            with Store(connection) as store:
                store.ensure_schema()
                outcome["status"] = store.ingest(graph, costs, "sha", "synthetic", 0)
        except StoreError as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=ingest)
    worker.start()
    time.sleep(3.0)  # well inside the one ingest transaction (it takes far longer)
    pid = int((second_server / "run" / "neo4j.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    worker.join(timeout=120)
    assert "error" in outcome, f"the ingest finished before the kill: {outcome}"
    assert "Neo4j" in str(outcome["error"])
    server(second_server, "start")
    with Store(connection) as store:
        records = store.driver.execute_query(
            "MATCH (l:Layer {model: $m}) RETURN count(l) AS layers", m=graph.name
        ).records
        models = store.driver.execute_query(
            "MATCH (m:Model {name: $m}) RETURN count(m) AS models", m=graph.name
        ).records
    assert records[0]["layers"] == 0
    assert models[0]["models"] == 0
