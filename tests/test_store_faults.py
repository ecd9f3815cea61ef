"""A Neo4j server killed in the middle of an ingest leaves no partial model after restart.

Runs its own second server (other ports, its own folder) so that killing it disturbs nothing:
one for the tests that kill it (each restarts it, and each starts it again where one before
it failed), one that allows small transactions only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_ports
from toolkit import api
from toolkit.blocks import find_blocks
from toolkit.costgraph import CostGraph
from toolkit.costs import build_cost_graph
from toolkit.errors import NotStoredError
from toolkit.graph import LayerGraph
from toolkit.store import Connection, Store, StoreError, TransactionTooLargeError
from toolkit.synthetic import deep_model

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "neo4j-local"
BOLT_PORT, HTTP_PORT, SMALL_BOLT_PORT, SMALL_HTTP_PORT = free_ports(4)
URI = f"bolt://127.0.0.1:{BOLT_PORT}"  # the second server's, the same across its restarts


def server(home: Path, action: str, **settings: str) -> None:
    env = {**os.environ, "NEO4J_LOCAL_HOME": str(home), "NEO4J_LOCAL_BOLT_PORT": BOLT_PORT,
           "NEO4J_LOCAL_HTTP_PORT": HTTP_PORT, "NEO4J_PASSWORD": "splitcut-dev", **settings}
    subprocess.run([str(SCRIPT), action], env=env, check=True, capture_output=True, timeout=300)


def kill_while_running(home: Path, connection: Connection, marker: str) -> None:
    """SIGKILL the server as soon as a transaction runs a statement containing `marker`: the
    kill then lands inside that transaction, however fast the machine."""
    with Store(connection) as watcher:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = watcher.driver.execute_query(
                "SHOW TRANSACTIONS YIELD currentQuery RETURN currentQuery").records
            if any(marker in (r["currentQuery"] or "") for r in running):
                os.kill(int((home / "run" / "neo4j.pid").read_text()), signal.SIGKILL)
                return
            time.sleep(0.01)
    raise AssertionError(f"no transaction ran {marker!r} within 120 s")


def ingest_killed(home: Path, connection: Connection, graph: LayerGraph, costs: CostGraph,
                  sha: str, batch_rows: int = 2_500) -> str:
    """Ingest `graph` in a thread and SIGKILL the server while its blocks are detected; the
    ingest's error, which must come (the kill landed before the ingest finished)."""
    outcome: dict[str, object] = {}

    def ingest() -> None:
        try:
            with Store(connection, batch_rows=batch_rows) as store:
                store.ensure_schema()
                outcome["status"] = store.ingest(graph, costs, sha, "synthetic", 0)
        except StoreError as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=ingest)
    worker.start()
    kill_while_running(home, connection, "CREATE (b)-[:CONTAINS]->(l)")
    worker.join(timeout=120)
    assert "error" in outcome, f"the ingest finished before the kill: {outcome}"
    return str(outcome["error"])


def discard(home: Path) -> None:
    """Stop a server whose store nobody reads again: SIGKILL, no checkpoint (a clean stop
    spends 13 s here writing one)."""
    try:
        pid = int((home / "run" / "neo4j.pid").read_text())
        if str(home) not in Path(f"/proc/{pid}/cmdline").read_text():
            return  # (killed by a test, its pid since taken by another process)
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):  # never started, or already gone
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def second_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("second") / "neo4j"
    yield home
    discard(home)


@pytest.fixture
def second_server(second_home):
    """The second server's home, the server running (started, or already so)."""
    server(second_home, "start")
    return second_home


def count_layers(store: Store, model: str) -> int:
    """Every stored layer of `model`, of any version (staged, current or abandoned)."""
    records = store.driver.execute_query(
        "MATCH (l:Layer {model: $m}) RETURN count(l) AS layers", m=model).records
    return int(records[0]["layers"])


def test_server_killed_mid_ingest_leaves_the_old_version_whole(second_server):
    """A 20,000-layer replacement (eight batches) is killed while its blocks are detected:
    after the restart readers see the old version whole; the next ingest (another file)
    deletes both."""
    connection = Connection(URI, "neo4j", "splitcut-dev", None,
                            retry_seconds=5)
    name = "replaced-while-killed"
    scenario = api.make_scenario()
    old = deep_model("residual", 300)
    new = deep_model("transformer", 20_000)
    old.name = new.name = name
    old_costs, new_costs = build_cost_graph(old, scenario), build_cost_graph(new, scenario)
    with Store(connection) as store:
        store.ensure_schema()
        assert store.ingest(old, old_costs, "old", "synthetic", 0) == "created"
    assert "Neo4j" in ingest_killed(second_server, connection, new, new_costs, "new")
    server(second_server, "start")
    with Store(connection) as store:
        assert count_layers(store, name) > len(old)  # batches of the new version were kept...
        stored = api.stored_cost_graph(store, name)  # ...but readers see the old version, whole
        assert stored.names == old_costs.names
        assert [t.name for t in stored.tensors] == [t.name for t in old_costs.tensors]
        assert store.read_blocks(name).cut_vertices == find_blocks(old).cut_vertices
        # the next write of the model deletes the abandoned version and the replaced one
        third = deep_model("residual", 200)
        third.name = name
        third_costs = build_cost_graph(third, scenario)
        assert store.ingest(third, third_costs, "third", "synthetic", 0) == "replaced"
        assert count_layers(store, name) == len(third)
        assert api.stored_cost_graph(store, name).names == third_costs.names


def test_server_killed_mid_ingest_of_a_new_model_shows_no_model(second_server):
    connection = Connection(URI, "neo4j", "splitcut-dev", None,
                            retry_seconds=5)
    graph = deep_model("transformer", 5_000)
    costs = build_cost_graph(graph, api.make_scenario())
    ingest_killed(second_server, connection, graph, costs, "sha", batch_rows=500)
    server(second_server, "start")
    with Store(connection) as store:
        assert count_layers(store, graph.name) == len(graph)  # staged whole, never switched
        with pytest.raises(NotStoredError, match="not in Neo4j"):
            api.stored_cost_graph(store, graph.name)
        assert store.run_saved("block_types_by_model", {"model": graph.name}) == []
        assert store.delete_model(graph.name)
        assert count_layers(store, graph.name) == 0


def _labels(store: Store, model: str) -> tuple[set[int], int, list[float]]:
    """(topo of :Device layers, layers with neither or both labels, current partitions' totals)."""
    rows = store.driver.execute_query(
        "MATCH (:Model {name: $m})-[:HAS_LAYER]->(l) "
        "RETURN l.topo AS topo, l:Device AS device, l:Server AS server", m=model).records
    current = store.driver.execute_query(
        "MATCH (p:Partition {current: true})-[:OF]->(:Model {name: $m}) "
        "RETURN p.total_ms AS total", m=model).records
    return ({r["topo"] for r in rows if r["device"]},
            sum(1 for r in rows if r["device"] == r["server"]), [r["total"] for r in current])


def test_server_killed_during_label_write_back_keeps_the_old_partition(second_server):
    connection = Connection(URI, "neo4j", "splitcut-dev", None,
                            retry_seconds=5)
    graph = deep_model("transformer", 10_000)
    all_device = api.make_scenario(device="jetson-agx-orin", server="cpu-server", uplink="1Gbps")
    all_server = api.make_scenario(device="raspberry-pi-4", server="a100", uplink="1Gbps")
    old, new = (api.partition_model(graph, s) for s in (all_device, all_server))
    # almost every label changes (the stem's raw-data chain stays on the device)
    assert len(old.device) == len(graph) and len(new.device) < len(graph) // 100
    with Store(connection) as store:
        store.ensure_schema()
        store.ingest(graph, old.graph, "sha", "synthetic", 0)
        store.write_partition(old)
    outcome: dict[str, object] = {}

    def write() -> None:
        try:
            with Store(connection) as store:
                outcome["written"] = store.write_partition(new)
        except StoreError as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=write)
    worker.start()
    kill_while_running(second_server, connection, "partitioned_at")  # relabelling
    worker.join(timeout=120)
    assert "error" in outcome, f"the write finished before the kill: {outcome}"
    assert "rolled back, so nothing was changed" in str(outcome["error"])
    server(second_server, "start")
    with Store(connection) as store:
        device, unlabelled, current = _labels(store, graph.name)
    assert device == set(old.device) and unlabelled == 0  # the old cut, whole
    assert current == [pytest.approx(old.delay.total)]


def test_a_write_during_a_restart_is_retried_until_the_server_is_back(second_server):
    connection = Connection(URI, "neo4j", "splitcut-dev", None,
                            retry_seconds=180)
    graph = deep_model("residual", 500)
    result = api.partition_model(graph, api.make_scenario(uplink="1Gbps"))
    with Store(connection) as store:
        store.ensure_schema()
        store.ingest(graph, result.graph, "sha", "synthetic", 0)
        os.kill(int((second_server / "run" / "neo4j.pid").read_text()), signal.SIGKILL)
        time.sleep(1.0)
        outcome: dict[str, object] = {}

        def write() -> None:
            try:
                outcome["written"] = store.write_partition(result)
            except StoreError as exc:
                outcome["error"] = str(exc)

        worker = threading.Thread(target=write)
        worker.start()  # the server is down: the driver retries with backoff
        time.sleep(2.0)
        assert worker.is_alive() and not outcome
        server(second_server, "start")
        worker.join(timeout=300)
        assert outcome.get("written") == {"layers": len(graph), "device": len(result.device)}
        device, unlabelled, current = _labels(store, graph.name)
    assert device == set(result.device) and unlabelled == 0
    assert current == [pytest.approx(result.delay.total)]


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """A server allowing 8 MiB per transaction (a 5,000-layer model needs more in one)."""
    home = tmp_path_factory.mktemp("small") / "neo4j"
    ports = {"NEO4J_LOCAL_BOLT_PORT": SMALL_BOLT_PORT, "NEO4J_LOCAL_HTTP_PORT": SMALL_HTTP_PORT}
    server(home, "start", NEO4J_LOCAL_TX_MAX="8m", **ports)
    yield Connection(f"bolt://127.0.0.1:{SMALL_BOLT_PORT}", "neo4j", "splitcut-dev", None,
                     retry_seconds=60)
    discard(home)


def test_a_model_too_large_for_one_transaction_ingests_in_batches(small_server):
    graph = deep_model("transformer", 5_000)
    costs = build_cost_graph(graph, api.make_scenario())
    with Store(small_server, batch_rows=500) as store:
        store.ensure_schema()
        assert store.ingest(graph, costs, "sha", "synthetic", 0) == "created"
        stored = api.stored_cost_graph(store, graph.name)
        assert stored.names == costs.names and stored.device_ms == pytest.approx(costs.device_ms)
        assert store.read_blocks(graph.name).cut_vertices == find_blocks(graph).cut_vertices
        assert store.delete_model(graph.name)
        assert count_layers(store, graph.name) == 0


def test_a_batch_too_large_for_the_server_fails_at_once_and_leaves_nothing(small_server):
    """One clear error, without the driver retrying for its whole retry time, and no layer
    left behind."""
    graph = deep_model("transformer", 5_000)
    graph.name = "one-big-batch"
    costs = build_cost_graph(graph, api.make_scenario())
    with Store(small_server, batch_rows=100_000) as store:
        store.ensure_schema()
        start = time.monotonic()
        with pytest.raises(TransactionTooLargeError, match=r"db\.memory\.transaction\.max"):
            store.ingest(graph, costs, "sha", "synthetic", 0)
        assert time.monotonic() - start < 30  # not retried for the 60 s allowed
        assert count_layers(store, graph.name) == 0
        with pytest.raises(NotStoredError, match="not in Neo4j"):
            api.stored_cost_graph(store, graph.name)
