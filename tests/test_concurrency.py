"""Concurrent writers against the real Neo4j server: ingests of the same and of different models,
and partitions of one model written at once for different scenarios."""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter

import pytest

from tests.helpers import chain, save
from tests.workers import PASSWORD, ingest_all, partition_rounds
from toolkit import api
from toolkit.blocks import find_blocks
from toolkit.costs import scenario_key
from toolkit.store import Connection, Store, StoreError

PROCESSES = 4


@pytest.fixture(scope="module")
def store():
    with Store(Connection.from_env(password=PASSWORD)) as s:
        s.ensure_schema()
        yield s


def rows(store, query, **params):
    return store.driver.execute_query(query, params).records


def count(store, query, **params):
    return int(rows(store, query, **params)[0][0])


def run_processes(target, args_per_process):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(args_per_process)), context.Queue()
    procs = [context.Process(target=target, args=(barrier, *args, results))
             for args in args_per_process]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    assert all(p.exitcode == 0 for p in procs)
    out = []
    while not results.empty():
        out.append(results.get())
    errors = [detail for key, detail in out if key == "error"]
    assert not errors, errors
    return out


def test_four_processes_ingesting_eight_models_leave_each_exactly_once(store, tmp_path):
    names = [f"concurrent-{i}" for i in range(5)]
    for name in names:
        rows(store, "MATCH (m:Model {name: $n}) "
                    "OPTIONAL MATCH (m)-[:HAS_LAYER]->(l) OPTIONAL MATCH (b:Block {model: $n}) "
                    "DETACH DELETE m, l, b", n=name)
    paths = {name: str(save(chain(60 + 20 * i), tmp_path / f"{name}.onnx"))
             for i, name in enumerate(names)}
    jobs = [[0, 1], [1, 2], [3, 0], [4, 0]]  # 8 ingests, model 0 three times, model 1 twice
    results = run_processes(ingest_all, [[[(paths[names[i]], names[i]) for i in job]]
                                         for job in jobs])
    statuses = Counter((name, status) for name, status in results)
    for i, name in enumerate(names):
        ingests = sum(job.count(i) for job in jobs)
        assert statuses[name, "created"] == 1, statuses  # the others found it unchanged
        assert statuses[name, "unchanged"] == ingests - 1
        graph = api.load_graph(paths[name], name)
        assert rows(store, "MATCH (m:Model {name: $n}) RETURN count(m) AS c", n=name)[0]["c"] == 1
        layers = rows(store, "MATCH (:Model {name: $n})-[:HAS_LAYER]->(l) "
                             "RETURN count(l) AS c, count(DISTINCT l.topo) AS topo", n=name)[0]
        assert layers["c"] == layers["topo"] == len(graph)
        feeds = rows(store, "MATCH (:Layer {model: $n})-[f:FEEDS]->() RETURN count(f) AS c",
                     n=name)[0]["c"]
        assert feeds == sum(len(t.consumers) for t in graph.activations())
        blocks = rows(store, "MATCH (b:Block {model: $n}) RETURN count(b) AS c", n=name)[0]["c"]
        assert blocks == len(find_blocks(graph).segments)


def test_concurrent_partitions_leave_labels_of_exactly_one_current_partition(store, zoo_path):
    name, path = "concurrent-resnet18", str(zoo_path("resnet18"))
    uplinks = ["10Mbps", "100Mbps", "200Mbps", "50Mbps"]  # different cuts of resnet18
    api.ingest_model(store, path, api.make_scenario(), name)
    # each process writes every scenario, in a different order
    orders = [uplinks[k:] + uplinks[:k] for k in range(PROCESSES)]
    results = run_processes(partition_rounds, [[path, name, order] for order in orders])
    assert len(results) == PROCESSES * len(uplinks)
    current = rows(store, "MATCH (p:Partition {current: true})-[:OF]->(:Model {name: $n}) "
                          "RETURN p.scenario AS scenario, p.device_layers AS device", n=name)
    assert len(current) == 1
    scenario = json.loads(current[0]["scenario"])
    graph = api.load_graph(path, name)
    expected = api.partition_model(graph, api.make_scenario(
        uplink=f"{scenario['uplink_bps']}bps", downlink=f"{scenario['downlink_bps']}bps"))
    assert scenario_key(expected.graph.scenario) == scenario_key(scenario)
    labelled = rows(store, "MATCH (:Model {name: $n})-[:HAS_LAYER]->(l) "
                           "RETURN l.topo AS topo, l:Device AS device, l:Server AS server", n=name)
    assert all(r["device"] != r["server"] for r in labelled)  # one label each, never both
    assert {r["topo"] for r in labelled if r["device"]} == set(expected.device)
    assert current[0]["device"] == len(expected.device)
    distinct = {count for _, count in results}
    assert len(distinct) > 1  # the scenarios really do cut differently


def test_a_reingest_between_ingest_and_solve_never_mixes_two_files(store, tmp_path,
                                                                    monkeypatch):
    """The race window made deterministic: every round, another process's re-ingest of a
    different file under the same name commits right before the solve-and-write transaction.
    The partition must refuse (nothing written), leaving the other file whole with its own
    blocks; 100 rounds, the files alternating."""
    files = [save(chain(6, width=8), tmp_path / "a.onnx"), save(chain(9, width=16),
                                                                  tmp_path / "c.onnx")]
    graphs = [api.load_graph(str(f), "raced") for f in files]
    scenario = api.make_scenario(latency="0ms")
    original = Store.solve_and_write
    intruder: list[int] = []

    def late_reingest(self, costs, sha256, solve):
        with Store(Connection.from_env(password=PASSWORD)) as other:
            api.ingest_model(other, str(files[intruder[0]]), scenario, "raced")
        return original(self, costs, sha256, solve)

    monkeypatch.setattr(Store, "solve_and_write", late_reingest)
    for round_ in range(100):
        mine, theirs = round_ % 2, 1 - round_ % 2
        intruder[:] = [theirs]
        with pytest.raises(StoreError, match="replaced by another file"):
            api.partition_in_neo4j(store, str(files[mine]), scenario, "raced")
        layers = count(store, "MATCH (:Model {name: 'raced'})-[:HAS_LAYER]->(l) RETURN count(l)")
        sha = rows(store, "MATCH (m:Model {name: 'raced'}) RETURN m.sha256")[0][0]
        assert layers == len(graphs[theirs]) and sha == graphs[theirs].sha256
        assert count(store, "MATCH (b:Block {model: 'raced'}) RETURN count(b)") == len(
            find_blocks(graphs[theirs]).segments)
        assert count(store, "MATCH (l:Layer {model: 'raced'}) WHERE l:Device OR l:Server "
                            "RETURN count(l)") == 0
    monkeypatch.setattr(Store, "solve_and_write", original)
    _, written, _ = api.partition_in_neo4j(store, str(files[0]), scenario, "raced")
    assert written["layers"] == len(graphs[0])


# a delete racing an ingest of the same model -----------------------------------------------------

VANISHED = ("Neo4j at bolt://… answered Neo.ClientError.Statement.EntityNotFound: Unable to "
            "load NODE …")
"""What the server answers when a node a statement reads is deleted under it (seen when
deletes and ingests of one model race, in the detection's statements)."""


def _left(store: Store, name: str) -> tuple[int, int, int]:
    """(Model nodes, layers, blocks) stored under `name`."""
    return (count(store, "MATCH (m:Model {name: $n}) RETURN count(m)", n=name),
            count(store, "MATCH (l:Layer {model: $n}) RETURN count(l)", n=name),
            count(store, "MATCH (b:Block {model: $n}) RETURN count(b)", n=name))


def _delete_elsewhere(name: str) -> None:
    with Store(Connection.from_env(password=PASSWORD)) as other:
        assert other.delete_model(name) in (True, False)


@pytest.mark.parametrize("stored_before", [False, True])
def test_a_delete_while_an_ingest_stages_the_model_is_a_clear_error_and_leaves_nothing(
        store, tmp_path, monkeypatch, stored_before):
    """Another process deletes the model after this ingest wrote its layers, before their
    blocks: the ingest says so in one line, and neither the old version, the staged one nor
    the model's node is left."""
    name = "raced-delete"
    store.delete_model(name)
    path = str(save(chain(30), tmp_path / "a.onnx"))
    if stored_before:
        api.ingest_model(store, str(save(chain(20), tmp_path / "b.onnx")), api.make_scenario(),
                         name)
    detect = Store._detect_blocks

    def deleted_first(self, *args):
        _delete_elsewhere(name)
        return detect(self, *args)

    monkeypatch.setattr(Store, "_detect_blocks", deleted_first)
    with pytest.raises(StoreError, match="was deleted while this ingest wrote it"):
        api.ingest_model(store, path, api.make_scenario(), name)
    assert _left(store, name) == (0, 0, 0)


@pytest.mark.parametrize("meanwhile", ["deleted", "ingested", "nothing"])
def test_a_statement_that_finds_a_node_deleted_under_it_is_told_apart(
        store, tmp_path, monkeypatch, meanwhile):
    """A detection statement fails as the server fails it when another writer sweeps the
    layers it reads: after a delete, the one-line 'deleted' error and nothing left; after an
    ingest of another file under the name (started later, current first), 'superseded' and
    that file whole; the same failure with neither is not explained away, and the staged
    version is still swept."""
    name = "raced-vanished"
    store.delete_model(name)
    mine, theirs = save(chain(30), tmp_path / "a.onnx"), save(chain(12), tmp_path / "b.onnx")
    statement = Store._statement

    def failing(self, query, /, **params):
        if query == "detect_blocks_chain" and self is store:
            if meanwhile == "deleted":
                _delete_elsewhere(name)
            elif meanwhile == "ingested":
                with Store(Connection.from_env(password=PASSWORD)) as other:
                    api.ingest_model(other, str(theirs), api.make_scenario(), name)
            raise StoreError(VANISHED)
        return statement(self, query, **params)

    monkeypatch.setattr(Store, "_statement", failing)
    if meanwhile == "ingested":
        _, _, status = api.ingest_model(store, str(mine), api.make_scenario(), name)
        assert status == "superseded"
        assert _left(store, name)[1] == len(api.load_graph(str(theirs), name))
        assert rows(store, "MATCH (m:Model {name: $n}) RETURN m.sha256", n=name)[0][0] == \
            api.load_graph(str(theirs), name).sha256
    else:
        message = "was deleted while this ingest wrote it" if meanwhile == "deleted" \
            else "EntityNotFound"
        with pytest.raises(StoreError, match=message):
            api.ingest_model(store, str(mine), api.make_scenario(), name)
        assert _left(store, name)[1:] == (0, 0)
    monkeypatch.setattr(Store, "_statement", statement)
    store.delete_model(name)


@pytest.mark.parametrize("joined", [True, False])
def test_a_delete_whose_model_an_ingest_joined_meanwhile_leaves_it_the_ingest(
        store, tmp_path, monkeypatch, joined):
    """The delete's last step fails as the server fails it when an ingest of the name joins
    a layer to the model's node between the check and the commit: the node stays, the
    ingest's, and the delete succeeds; the same failure with nothing joined is an error."""
    name = "raced-drop"
    api.ingest_model(store, str(save(chain(5), tmp_path / "a.onnx")), api.make_scenario(), name)
    statement = Store._statement

    def joining(self, query, /, **params):
        if query == "model_drop":
            if joined:
                rows(store, "MATCH (m:Model {name: $n}) CREATE (m)-[:HAS_LAYER]->"
                            "(:Layer {uid: $n + '/staged', model: $n, version: 'z', topo: 0})",
                     n=name)
            raise StoreError("Neo4j at bolt://… answered Neo.ClientError.Schema."
                             "ConstraintValidationFailed: Cannot delete node<7>, because it "
                             "still has relationships.")
        return statement(self, query, **params)

    monkeypatch.setattr(Store, "_statement", joining)
    if joined:
        assert store.delete_model(name)
        assert _left(store, name)[:2] == (1, 1)
    else:
        with pytest.raises(StoreError, match="still has relationships"):
            store.delete_model(name)
    monkeypatch.setattr(Store, "_statement", statement)
    rows(store, "MATCH (l:Layer {model: $n}) DETACH DELETE l", n=name)
    store.delete_model(name)
    assert _left(store, name) == (0, 0, 0)


@pytest.mark.parametrize("write", ["partition", "sweep"])
def test_a_delete_before_a_partition_or_sweep_is_written_is_said_and_leaves_nothing(
        store, tmp_path, monkeypatch, write):
    """Another process deletes the model after this one ingested and solved it, before its
    result is written: the write says the model was deleted (not replaced), writes nothing and
    leaves no (:Model) node behind."""
    name = "raced-written"
    store.delete_model(name)
    path = str(save(chain(8), tmp_path / "a.onnx"))
    scenario = api.make_scenario()
    method = "solve_and_write" if write == "partition" else "write_policy"
    original = getattr(Store, method)

    def deleted_first(self, *args):
        _delete_elsewhere(name)
        return original(self, *args)

    monkeypatch.setattr(Store, method, deleted_first)
    with pytest.raises(StoreError, match=f"was deleted while this {write} ran"):
        if write == "partition":
            api.partition_in_neo4j(store, path, scenario, name)
        else:
            api.sweep_in_neo4j(store, path, scenario,
                               lambda g: api.sweep_model(g, scenario, "uplink", 1e6, 1e9), name)
    assert _left(store, name) == (0, 0, 0)
