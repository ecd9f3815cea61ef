"""Integration tests against the real Neo4j server started by scripts/neo4j-local (.ci/run)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import NoReturn

import neo4j
import numpy as np
import onnx
import pytest
from onnx import helper

from tests.helpers import chain, model, run_main, save, vi, weight
from tests.oracles import brute_force_monotone, total
from toolkit import api, zoo
from toolkit.blocks import find_blocks
from toolkit.costgraph import CostGraph, CostTensor
from toolkit.costs import BUILTIN_SCENARIOS, build_cost_graph
from toolkit.graph import LayerGraph
from toolkit.measured import MeasuredProfile, layers_sha
from toolkit.partition import solve, stored
from toolkit.partition.blockwise import follows
from toolkit.store import Connection, Store, StoreError

PASSWORD = os.environ.get("NEO4J_PASSWORD", "splitcut-dev")


@pytest.fixture(scope="module")
def store():
    with Store(Connection.from_env(password=PASSWORD)) as s:
        s.ensure_schema()
        yield s


def count(store: Store, cypher: str, **params: object) -> int:
    with store.driver.session(database=store.connection.database) as session:
        return int(session.run(cypher, params).single()[0])


def model_size(store: Store, name: str) -> tuple[int, int, int]:
    return (
        count(store, "MATCH (:Model {name: $n})-[:HAS_LAYER]->(l) RETURN count(l)", n=name),
        count(store, "MATCH (l:Layer {model: $n})-[f:FEEDS]->() RETURN count(f)", n=name),
        count(store, "MATCH (b:Block {model: $n}) RETURN count(b)", n=name),
    )


def test_a_path_from_the_input_past_earlier_layers_leaves_them_no_cut_vertices(store, tmp_path):
    """A second input joined deep in the model (`x` added to the fourth layer's output): the
    input reaches that layer past every layer before it, so none of them is a cut vertex, in
    Cypher as in Python (both took the first three for cut vertices)."""
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"),
             helper.make_node("Relu", ["h0"], ["r0"], name="relu0"),
             helper.make_node("MatMul", ["r0", "w1"], ["h1"], name="mm1"),
             helper.make_node("Add", ["h1", "extra"], ["a"], name="join"),
             helper.make_node("MatMul", ["a", "w2"], ["h2"], name="mm2"),
             helper.make_node("Relu", ["h2"], ["y"], name="relu2")]
    path = save(model(nodes, [vi("x", [1, 8]), vi("extra", [1, 8])], [vi("y", [1, 8])],
                      [weight("w0", 8, 8), weight("w1", 8, 8), weight("w2", 8, 8)]),
                tmp_path / "late.onnx")
    graph, _, _ = api.ingest_model(store, str(path), api.make_scenario(), "late-input")
    python = find_blocks(graph)
    assert python.cut_vertices == [3, 4, 5]
    assert store.read_blocks("late-input").cut_vertices == python.cut_vertices
    store.delete_model("late-input")
    # an output computed from weights alone, past a layer weights alone make (a learned
    # scale returned beside the result): a path from the input starts at its layer too
    nodes = [*nodes[:3], helper.make_node("Relu", ["h1"], ["y"], name="relu1"),
             helper.make_node("Mul", ["w0", "w1"], ["ww"], name="weights"),
             helper.make_node("ReduceSum", ["ww"], ["scale"], name="scale", keepdims=0)]
    path = save(model(nodes, [vi("x", [1, 8])], [vi("y", [1, 8]), vi("scale", [])],
                      [weight("w0", 8, 8), weight("w1", 8, 8)]), tmp_path / "scale.onnx")
    graph, _, _ = api.ingest_model(store, str(path), api.make_scenario(), "weights-output")
    python = find_blocks(graph)
    assert python.weight_only == (4,) and python.cut_vertices == []
    assert store.read_blocks("weights-output").cut_vertices == python.cut_vertices
    store.delete_model("weights-output")


def assert_same_blocks(store: Store, graph: LayerGraph) -> None:
    """Cypher's block structure of the stored `graph` is Python's, field by field."""
    python = find_blocks(graph)
    cypher = store.read_blocks(graph.name)
    assert cypher.cut_vertices == python.cut_vertices
    assert [(s.layers, s.entry, s.exit) for s in cypher.segments] == [
        (s.layers, s.entry, s.exit) for s in python.segments
    ]
    assert [python.types[s.type_id].signature for s in python.segments] == [
        cypher.types[s.type_id].signature for s in cypher.segments
    ]
    assert cypher.weight_only == python.weight_only


def test_stored_blocks_and_cut_equal_python_and_brute_force_on_random_models(store):
    """The exactness tests' random models (model inputs read late, layers weights alone make,
    repeated blocks whose instances carry permuted costs), ingested one after another under
    one name: Cypher detects Python's blocks, and the block-wise cut solved from what Neo4j
    stores is the brute-force optimum. (The ingest stored no output flags, so a cut read back
    before another scenario's delays were put on the model lost its labels' term.)"""
    from tests.test_exactness import _costs, random_dag, repeated_blocks

    rng = np.random.default_rng(77)
    chains = 0
    for k in range(40):
        graph, repeats, m = repeated_blocks(rng) if k % 2 else (
            random_dag(rng, late_inputs=0.3), 0, 0)
        costs = _costs(graph, rng, repeats, m)
        names = {t.signature: t.name for t in find_blocks(graph).types}
        assert store.ingest(graph, costs, f"random-{k}", "random", 17, names) in (
            "created", "replaced")
        assert_same_blocks(store, graph)
        held = store.reading(graph.name, functools.partial(stored.cost_graph, graph.name))
        assert held.outputs == costs.outputs and held.labels_ms == costs.labels_ms  # (as ingested)
        result = store.reading(graph.name, functools.partial(
            stored.solve_stored, graph.name, costs, "blockwise"))
        assert result.delay.total == pytest.approx(brute_force_monotone(costs), abs=1e-9)
        chains += result.method == "blockwise"
    assert chains > 20, chains  # most were solved on the stored chain, not whole
    for name in ("dag", "blocks"):
        assert store.delete_model(name)


def test_cut_vertices_scanned_in_ranges_at_once_are_python_s(store, monkeypatch):
    """Batches of 1-4 layers and three writers: the cut-vertex scan runs in up to three ranges
    at once, split anywhere (inside a block, under an edge that jumps across the split, before
    a late model input), and the cut vertices joined from them are Python's."""
    from tests.test_exactness import random_dag, repeated_blocks

    scanned: list[tuple[int, int]] = []
    statement = Store._statement

    def spying(self, query, /, **params):
        if query == "detect_blocks_cuts":
            scanned.append((params["low"], params["high"]))
        return statement(self, query, **params)

    monkeypatch.setattr(Store, "_statement", spying)
    rng = np.random.default_rng(31)
    split = 0
    with Store(store.connection, writers=3) as small:
        for k in range(30):
            graph = repeated_blocks(rng)[0] if k % 2 else random_dag(rng, late_inputs=0.4)
            small.batch_rows = int(rng.integers(1, 5))
            scanned.clear()
            small.ingest(graph, build_cost_graph(graph, api.make_scenario()), f"ranges-{k}",
                         "random", 17)
            ranges = sorted(scanned)  # (the writers' threads start them in any order)
            assert ranges[0][0] == 0 and ranges[-1][1] == len(graph)
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
            split += len(scanned) > 1
            assert_same_blocks(small, graph)
        for name in ("dag", "blocks"):
            assert small.delete_model(name)
    assert split > 20, split


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_cypher_blocks_equal_python_blocks(store, zoo_path, name):
    scenario = api.make_scenario()
    graph, _, _ = api.ingest_model(store, str(zoo_path(name)), scenario, name)
    assert_same_blocks(store, graph)
    assert count(store, "MATCH (l:Layer {model: $n}) WHERE l.weight_only IS NOT NULL "
                 "RETURN count(l)", n=name) == len(find_blocks(graph).weight_only)  # (only true)


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "gpt2"])
def test_partition_through_neo4j_equals_embedded_and_labels_match(store, zoo_path, name):
    path = str(zoo_path(name))
    graph = api.load_graph(path, name)
    for settings in list(BUILTIN_SCENARIOS.values())[:3]:
        scenario = api.make_scenario(**settings)
        embedded = api.partition_model(graph, scenario)
        result, written, _ = api.partition_in_neo4j(store, path, scenario, name)
        assert result.delay.total == pytest.approx(embedded.delay.total, rel=1e-9)
        device = {result.graph.names[i] for i in result.device}
        labelled = count(store, "MATCH (l:Layer:Device {model: $n}) RETURN count(l)", n=name)
        assert labelled == len(device) == written["device"]
        assert count(store, "MATCH (l:Layer:Server {model: $n}) RETURN count(l)",
                     n=name) == len(graph) - len(device)
        assert count(store, "MATCH (l:Layer:Device:Server {model: $n}) RETURN count(l)",
                     n=name) == 0
        names = store.driver.execute_query(
            "MATCH (l:Layer:Device {model: $n}) RETURN collect(l.name) AS names", n=name
        ).records[0]["names"]
        assert set(names) == device
        current = store.driver.execute_query(
            "MATCH (p:Partition {current: true})-[:OF]->(:Model {name: $n}) "
            "RETURN p.total_ms AS total, p.device_layers AS d", n=name).records
        assert len(current) == 1
        assert current[0]["total"] == pytest.approx(result.delay.total)
        assert current[0]["d"] == len(device)


def test_swin_lookups_follow_their_blocks_or_the_general_cut_is_solved(store, zoo_path):
    """Swin-T's bias lookups are made from weights alone. With a slow device they follow the
    blocks that read them and the stored chain is solved; with a slow server (an H100 device
    beside a Raspberry Pi) the optimum might compute one on the device, which the chain cannot
    express, so the general cut is solved. Both equal the embedded general min cut."""
    path = str(zoo_path("swin_t"))
    graph = api.load_graph(path, "swin_t")
    blocks = find_blocks(graph)
    paths = set()
    for settings in ({}, {"device": "h100", "server": "raspberry-pi-4"}):
        scenario = api.make_scenario(**settings)
        costs = build_cost_graph(graph, scenario)
        follow = follows(costs, blocks.weight_only)
        paths.add(follow)
        general = solve(costs, "general", with_baselines=False)
        blockwise = solve(costs, "blockwise", blocks=blocks, with_baselines=False)
        stored, _, _ = api.partition_in_neo4j(store, path, scenario, "swin_t")
        assert blockwise.delay.total == pytest.approx(general.delay.total, rel=1e-9)
        assert stored.delay.total == pytest.approx(general.delay.total, rel=1e-9)
        used = "blockwise" if follow else "general"  # what each solved, and says
        assert blockwise.method == stored.method == used
    assert paths == {True, False}


def test_pins_are_honoured_through_neo4j(store, zoo_path):
    path = str(zoo_path("resnet50"))
    graph = api.load_graph(path, "resnet50")
    fast = api.make_scenario(uplink="1Gbps", downlink="1Gbps", latency="1ms")
    for pins in [{"pin_device": ["layer2"]}, {"pin_server": ["maxpool"]}]:
        embedded = api.partition_model(graph, fast, **pins)
        result, _, _ = api.partition_in_neo4j(store, path, fast, "resnet50", **pins)
        assert result.delay.total == pytest.approx(embedded.delay.total, rel=1e-9)
        free = api.partition_in_neo4j(store, path, fast, "resnet50")[0]
        assert result.delay.total > free.delay.total  # the pin binds: a costlier optimum
        module = (pins.get("pin_device") or pins["pin_server"])[0]
        where = "Device" if "pin_device" in pins else "Server"
        api.partition_in_neo4j(store, path, fast, "resnet50", **pins)
        inside = [x.name for x in graph if (x.module or "").startswith(module)]
        labelled = count(store, f"MATCH (l:Layer:{where} {{model: 'resnet50'}}) "
                                "WHERE l.name IN $names RETURN count(l)", names=inside)
        assert inside and labelled == len(inside)


def test_a_tier_chain_through_neo4j_labels_every_layer_with_its_tier(store, zoo_path):
    """Device-edge-cloud and U-shape through Neo4j equal the embedded optimum; each layer
    carries its tier's label and index (blocks too when whole), a user pin is honoured, and a
    later two-sided partition replaces every tier label."""
    path = str(zoo_path("resnet50"))
    graph = api.load_graph(path, "resnet50")
    example = Path(__file__).resolve().parent.parent / "examples" / "device-edge-cloud.toml"
    fast = api.make_scenario(uplink="1Gbps", downlink="1Gbps", latency="1ms")
    for names, boundaries in [api.make_chain(fast, str(example)),
                              api.make_chain(fast, u_shape=True)]:
        embedded = api.partition_tiers(graph, names, boundaries, pin_server=["layer4"])
        result, written, _ = api.partition_tiers_in_neo4j(
            store, path, names, boundaries, "resnet50", pin_server=["layer4"])
        assert result.delay.total == pytest.approx(embedded.delay.total, rel=1e-9)
        assert written["layers"] == len(graph)
        rows = store.driver.execute_query(
            "MATCH (l:Layer {model: 'resnet50'})<-[:HAS_LAYER]-(m:Model) "
            "WHERE l.version = m.version RETURN l.topo AS topo, l.tier AS tier, "
            "labels(l) AS labels", database_=store.connection.database).records
        for row in rows:
            tier = int(result.tier[row["topo"]])
            assert row["tier"] == tier
            assert set(row["labels"]) - {"Layer"} == {names[tier].capitalize()}
        layer4 = [i for i, x in enumerate(graph) if (x.module or "").startswith("layer4")]
        assert layer4 and all(result.tier[i] >= 1 for i in layer4)
        assert len({int(result.tier[i]) for i in range(len(graph))}) >= 2
        whole = count(store, "MATCH (b:Block {model: 'resnet50'})-[:CONTAINS]->(l:Layer) "
                             "WITH b, collect(DISTINCT l.tier) AS t WHERE size(t) = 1 "
                             "AND b.tier = t[0] RETURN count(b)")
        assert whole > 0
    api.partition_in_neo4j(store, path, fast, "resnet50")
    for label in ("Edge", "Cloud"):
        assert count(store, f"MATCH (l:Layer:{label} {{model: 'resnet50'}}) RETURN count(l)") == 0


def test_reingest_is_idempotent_and_a_changed_file_replaces_the_old(store, tmp_path):
    scenario = api.make_scenario()
    small = save(chain(3), tmp_path / "model.onnx")
    _, _, status = api.ingest_model(store, str(small), scenario, "replace-me")
    assert status in ("created", "replaced")
    before = model_size(store, "replace-me")
    _, _, status = api.ingest_model(store, str(small), scenario, "replace-me")
    assert status == "unchanged"
    assert model_size(store, "replace-me") == before
    big = save(chain(5), tmp_path / "model.onnx")
    _, _, status = api.ingest_model(store, str(big), scenario, "replace-me")
    assert status == "replaced"
    assert model_size(store, "replace-me")[0] == 10
    assert count(store, "MATCH (m:Model {name: 'replace-me'}) RETURN count(m)") == 1


def test_names_with_quotes_backticks_and_keywords_round_trip(store, tmp_path):
    name = "x' }) MATCH (n) DETACH DELETE n //`ü"
    path = save(chain(2), tmp_path / "odd.onnx")
    api.ingest_model(store, str(path), api.make_scenario(), name)
    assert count(store, "MATCH (m:Model {name: $n}) RETURN count(m)", n=name) == 1
    assert count(store, "MATCH (l:Layer) RETURN count(l)") > 4  # nothing was deleted


def test_query_runs_saved_queries_read_only(store, capsys, monkeypatch):
    from toolkit import queries

    def count_models() -> int:
        return count(store, "MATCH (m:Model) WHERE m.version IS NOT NULL RETURN count(m)")

    monkeypatch.setenv("NEO4J_PASSWORD", PASSWORD)
    code, out, _ = run_main(["query", "read_blocks", "--param", "model=resnet50", "--json"],
                            capsys, monkeypatch)
    assert code == 0 and '"signature"' in out
    code, _, err = run_main(["query", "model_delete", "--param", "name=resnet50"], capsys,
                            monkeypatch)
    assert code != 0 and "internal step" in err  # not offered, not run
    assert count_models() > 0
    code, out, _ = run_main(["query"], capsys, monkeypatch)
    listed = {line.split("│")[1].strip() for line in out.splitlines()
              if line.startswith("│") and line.split("│")[1].strip()}
    assert listed == set(queries.user_names()) and "cut_positions" in listed
    assert not {"model_delete", "ingest_layers", "detect_blocks_types"} & listed
    code, _, err = run_main(["query", "cut_positions"], capsys, monkeypatch)
    assert code == 2 and "--param scenario_key=VALUE" in err
    code, _, err = run_main(["query", "MATCH (n) DETACH DELETE n"], capsys, monkeypatch)
    assert code == 2 and "no saved query" in err


def test_dead_server_and_wrong_password_are_one_line_errors(capsys, monkeypatch, tmp_path):
    path = save(chain(2), tmp_path / "c.onnx")
    code, _, err = run_main(["ingest", str(path), "--uri", "bolt://127.0.0.1:7999",
                             "--password", "x"], capsys, monkeypatch)
    assert code == 2
    assert "cannot reach Neo4j at bolt://127.0.0.1:7999" in err
    code, _, err = run_main(["ingest", str(path), "--password", "not-the-password"], capsys,
                            monkeypatch)
    assert code == 2
    assert "rejected the credentials" in err
    assert "not-the-password" not in err
    with pytest.raises(StoreError):
        Store(Connection("bolt://127.0.0.1:7999", "neo4j", "x", None))


def _scan(model: str, chain: object, read: object) -> object:
    """The block-wise scan over a stored chain, its segments read through `read`."""
    from toolkit.partition.blockwise import solve_chain

    return solve_chain(chain, lambda k, labels: stored.segment(model, chain, k, labels, read))


def test_cypher_chain_sums_equal_the_python_chain_and_general_agrees(store, zoo_path):
    from toolkit.partition.blockwise import chain_of

    path = str(zoo_path("resnet152"))
    scenario = api.make_scenario(**BUILTIN_SCENARIOS["phone-h100-5g"])
    graph, costs, _ = api.ingest_model(store, path, scenario, "resnet152")
    python = chain_of(costs, find_blocks(graph), set())
    cypher = api.stored_chain(store, "resnet152")
    for field in ("entries", "exits", "closed"):
        assert getattr(cypher, field).tolist() == getattr(python, field).tolist()
    for field in ("device", "server", "cheapest", "exit_cross"):
        assert getattr(cypher, field) == pytest.approx(getattr(python, field), rel=1e-9)
    assert cypher.last_pinned == python.last_pinned
    assert len(set(cypher.groups.tolist())) < len(cypher.groups)  # repeats share inner solves
    blockwise, _, _ = api.partition_in_neo4j(store, path, scenario, "resnet152")
    general, _, _ = api.partition_in_neo4j(store, path, scenario, "resnet152",
                                           method="general")
    assert blockwise.delay.total == pytest.approx(general.delay.total, rel=1e-9)
    assert blockwise.vertices < general.vertices


def split_blocks(repeats: int = 4) -> onnx.ModelProto:
    """A stem and `repeats` identical blocks: Split into two halves, Relu and Sigmoid, Concat.
    The Split's two outputs go to different layers, so swapping their costs between instances
    changes the inner cut while keeping every sum."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h0"], name="stem")]
    for r in range(repeats):
        h, a, b = f"h{r}", f"a{r}", f"b{r}"
        nodes += [
            helper.make_node("Split", [h, "halves"], [f"s{r}0", f"s{r}1"], name=f"split{r}",
                             axis=1),
            helper.make_node("Relu", [f"s{r}0"], [a], name=f"relu{r}"),
            helper.make_node("Sigmoid", [f"s{r}1"], [b], name=f"sigmoid{r}"),
            helper.make_node("Concat", [a, b], [f"h{r + 1}"], name=f"concat{r}", axis=1),
        ]
    halves = onnx.numpy_helper.from_array(np.array([8, 8], dtype=np.int64), "halves")
    return model(nodes, [vi("x", [1, 16])], [vi(f"h{repeats}", [1, 16])],
                 [weight("w", 16, 16), halves])


def permuted(costs: CostGraph, rng: np.random.Generator, block: int = 4) -> CostGraph:
    """Adversarial costs: every instance carries instance 0's costs, some with two layers'
    delays or the Split's two output tensors swapped; ties and zeros throughout."""
    def value() -> float:
        return float(rng.choice((0.0, 1.0, 2.0, 3.0, rng.uniform(0, 5))))

    n = len(costs)
    device, server = [value() for _ in range(n)], [value() for _ in range(n)]
    crossing = {t.name: value() for t in costs.tensors}
    index = {name: i for i, name in enumerate(costs.names)}
    for r in range(1, (n - 1) // block):
        for j in range(block):
            device[1 + r * block + j] = device[1 + j]
            server[1 + r * block + j] = server[1 + j]
        crossing.update({f"s{r}0": crossing["s00"], f"s{r}1": crossing["s01"],
                         f"a{r}": crossing["a0"], f"b{r}": crossing["b0"]})
        if rng.random() < 0.5:
            crossing[f"s{r}0"], crossing[f"s{r}1"] = crossing[f"s{r}1"], crossing[f"s{r}0"]
        else:
            i, k = index[f"relu{r}"], index[f"sigmoid{r}"]
            device[i], device[k] = device[k], device[i]
    return CostGraph(
        costs.model, costs.names, costs.ops, device, server, costs.pinned,
        [CostTensor(t.name, t.producer, t.consumers, t.bytes, crossing[t.name], t.is_float)
         for t in costs.tensors],
        scenario=costs.scenario, latency_ms=value(), labels_ms=value(), outputs=costs.outputs,
    )


def test_stored_blockwise_is_exact_when_instances_have_permuted_costs(store, tmp_path):
    from toolkit.partition.messages import with_latency

    path = save(split_blocks(), tmp_path / "splits.onnx")
    graph, costs, _ = api.ingest_model(store, str(path), api.make_scenario(), "splits")
    blocks = find_blocks(graph)
    assert max(t.count for t in blocks.types) == 4
    rng = np.random.default_rng(7)
    for _ in range(25):
        adversarial = permuted(costs, rng)
        store.set_costs(adversarial)
        chain = api.stored_chain(store, "splits")
        cut = store.reading("splits", functools.partial(_scan, "splits", chain))
        cut = with_latency(adversarial, cut)
        expected = brute_force_monotone(adversarial)
        assert total(adversarial, set(cut.device)) == pytest.approx(expected, abs=1e-9)
        assert cut.value == pytest.approx(expected, abs=1e-9)
        embedded = solve(adversarial, "blockwise", blocks=blocks, with_baselines=False)
        assert embedded.delay.total == pytest.approx(expected, abs=1e-9)


def test_neo4j_with_a_measured_profile_permuted_between_instances(store, tmp_path, capsys,
                                                                   monkeypatch):
    """Measured per-layer times differ between identical blocks (relu and sigmoid swap):
    the stored block-wise cut equals the embedded general cut."""
    monkeypatch.setenv("NEO4J_PASSWORD", PASSWORD)
    path = save(split_blocks(), tmp_path / "measured.onnx")
    graph = api.load_graph(str(path), "measured")
    rng = np.random.default_rng(3)
    times = {layer.name: float(rng.uniform(0.1, 2.0)) for layer in graph}
    for r in range(1, 4):
        for name in ("split", "relu", "sigmoid", "concat"):
            times[f"{name}{r}"] = times[f"{name}0"]
        if r % 2:
            times[f"relu{r}"], times[f"sigmoid{r}"] = times[f"sigmoid{r}"], times[f"relu{r}"]
    profile = MeasuredProfile("measured", "jetson-nano", 1, "test", layers_sha(graph), times, {})
    profile_path = tmp_path / "nano.json"
    profile_path.write_text(json.dumps(profile.to_dict()))
    for rate in ("1Mbps", "20Mbps", "400Mbps"):
        args = ["--uplink", rate, "--downlink", rate, "--latency", "1ms", "--measured",
                str(profile_path), "--batch", "64"]
        code, out, _ = run_main(["partition", str(path), "--name", "measured", "--neo4j",
                                 "--json", *args], capsys, monkeypatch)
        assert code == 0, capsys.readouterr().err
        stored = json.loads(out)
        code, out, _ = run_main(["partition", str(path), "--name", "measured", "--method",
                                 "general", "--json", *args], capsys, monkeypatch)
        embedded = json.loads(out)
        assert stored["delay_ms"]["total"] == pytest.approx(embedded["delay_ms"]["total"],
                                                            rel=1e-9)


def test_layer_keys_cannot_collide_and_long_names_store(store, tmp_path):
    """Model 'col' with layer 'x/y' and model 'col/x' with layer 'y' are two nodes; a 12 kB
    layer name ingests (the key is fixed-size); an over-long model name is a clear error."""
    def one_layer(layer: str) -> onnx.ModelProto:
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name=layer)
        return model([node], [vi("x", [1, 4])], [vi("y", [1, 4])], [weight("w", 4, 4)])

    scenario = api.make_scenario()
    for name, layer in (("col", "x/y"), ("col/x", "y"), ("long", "L" * 12_000)):
        path = save(one_layer(layer), tmp_path / f"{len(layer)}-{name.replace('/', '_')}.onnx")
        api.ingest_model(store, str(path), scenario, name)
        assert count(store, "MATCH (:Model {name: $n})-[:HAS_LAYER]->(l {name: $l}) "
                            "RETURN count(l)", n=name, l=layer) == 1
    with pytest.raises(StoreError, match="cannot be stored"):
        api.ingest_model(store, str(path), scenario, "m" * 5000)
    assert count(store, "MATCH (m:Model) WHERE size(m.name) > 1000 RETURN count(m)") == 0


# versions: staged in batches, switched in one small transaction --------------------------------

def _versioned(name: str, kind: str, size: int):
    from toolkit.costs import build_cost_graph
    from toolkit.synthetic import deep_model

    graph = deep_model(kind, size)
    graph.name = name
    return graph, build_cost_graph(graph, api.make_scenario())


@contextlib.contextmanager
def _fresh(name: str, batch_rows: int):
    """A store writing in batches of `batch_rows`, with no model `name` in it."""
    with Store(Connection.from_env(password=PASSWORD), batch_rows=batch_rows) as store:
        store.ensure_schema()
        store.delete_model(name)
        yield store


def _all_layers(store: Store, name: str) -> int:
    return count(store, "MATCH (l:Layer {model: $n}) RETURN count(l)", n=name)


def test_an_ingest_creates_the_schema_it_needs():
    """A store's first ingest creates the constraints and indexes that are missing (here one
    dropped before it), without anyone calling ensure_schema."""
    name = "schema-first"
    graph, costs = _versioned(name, "residual", 12)

    def indexes(store: Store) -> set[str]:
        return {r["name"] for r in store.driver.execute_query(
            "SHOW INDEXES YIELD name RETURN name").records}

    with Store(Connection.from_env(password=PASSWORD)) as store:
        store.driver.execute_query("DROP INDEX model_family IF EXISTS")
        assert "model_family" not in indexes(store)
        store.delete_model(name)
        assert store.ingest(graph, costs, "schema", "synthetic", 0) == "created"
        assert "model_family" in indexes(store)
        store.delete_model(name)


def test_the_schema_before_moves_to_one_key_per_layer_and_block():
    """A database made by the schema before (a uid constraint per layer and block beside a
    plain (model, version, position) index) gets the unique (model, version, position) keys at
    the next ingest, its old indexes dropped; the database then refuses a second layer at a
    stored position of a version."""
    name = "schema-before"
    graph, costs = _versioned(name, "residual", 12)
    old = ["DROP CONSTRAINT layer_key IF EXISTS", "DROP CONSTRAINT block_key IF EXISTS",
           "CREATE CONSTRAINT layer_uid FOR (l:Layer) REQUIRE l.uid IS UNIQUE",
           "CREATE CONSTRAINT block_uid FOR (b:Block) REQUIRE b.uid IS UNIQUE",
           "CREATE INDEX layer_version_topo FOR (l:Layer) ON (l.model, l.version, l.topo)",
           "CREATE INDEX block_version_index FOR (b:Block) ON (b.model, b.version, b.index)"]

    def schema(store: Store) -> set[str]:
        return {r["name"] for r in store.driver.execute_query(
            "SHOW INDEXES YIELD name RETURN name").records}

    with Store(Connection.from_env(password=PASSWORD)) as store:
        for statement in old:
            store.driver.execute_query(statement)
        store.driver.execute_query("CALL db.awaitIndexes(60)")
        assert {"layer_uid", "block_version_index"} <= schema(store)
        store.delete_model(name)
        assert store.ingest(graph, costs, "before", "synthetic", 0) == "created"
        found = schema(store)
        assert {"layer_key", "block_key"} <= found
        assert not found & {"layer_uid", "block_uid", "layer_version_topo",
                            "block_version_index"}
        assert store.read_blocks(name).cut_vertices == find_blocks(graph).cut_vertices
        with pytest.raises(neo4j.exceptions.ConstraintError):
            store.driver.execute_query(
                "MATCH (m:Model {name: $n}) CREATE (:Layer {uid: 'twin', model: $n, "
                "version: m.version, topo: 3})", n=name)
        store.delete_model(name)


def test_a_staged_version_is_invisible_and_the_next_ingest_deletes_it():
    """A client that dies after staging (never switching) leaves the old model readable; the
    next ingest of the name deletes what it left. Batches of 7 rows: many transactions."""
    name = "versions-abandoned"
    old, old_costs = _versioned(name, "residual", 40)
    staged, staged_costs = _versioned(name, "transformer", 60)
    with _fresh(name, batch_rows=7) as store:
        assert store.ingest(old, old_costs, "old", "synthetic", 0) == "created"
        version = store._read("version_new")[0]["version"]
        store._stage(staged, staged_costs, version, {})  # and then the client died
        assert _all_layers(store, name) == len(old) + len(staged)
        assert api.stored_cost_graph(store, name).names == old_costs.names
        assert store.read_blocks(name).cut_vertices == find_blocks(old).cut_vertices
        assert {r["model"] for r in store.run_saved("block_types_by_model", {"model": name})} \
            == {name}
        third, third_costs = _versioned(name, "residual", 25)
        assert store.ingest(third, third_costs, "third", "synthetic", 0) == "replaced"
        assert _all_layers(store, name) == len(third)
        assert count(store, "MATCH (b:Block {model: $n}) RETURN count(b)", n=name) \
            == len(find_blocks(third).segments)
        assert api.stored_cost_graph(store, name).names == third_costs.names
        assert store.delete_model(name)
        assert _all_layers(store, name) == 0
        assert count(store, "MATCH (m:Model {name: $n}) RETURN count(m)", n=name) == 0


def test_layers_and_blocks_stored_before_versions_existed_are_swept():
    """A model written by a splitcut without versions has layers and blocks with no `version`:
    the next ingest of it deletes them (through the model's HAS_LAYER edges, not a scan), and
    another model's version-less layer stays."""
    name = "versions-unversioned"
    graph, costs = _versioned(name, "residual", 30)
    bystander = ("MATCH (l:Layer {model: 'versions-bystander'}) "
                 "OPTIONAL MATCH (m:Model {name: 'versions-bystander'}) DETACH DELETE l, m")
    with _fresh(name, batch_rows=7) as store:
        store.driver.execute_query(bystander)  # (what an interrupted run left)
        store.driver.execute_query(
            "MERGE (m:Model {name: $n}) WITH m UNWIND range(0, 11) AS i "
            "CREATE (m)-[:HAS_LAYER]->(l:Layer {uid: $n + '/' + i, model: $n, topo: i}) "
            "WITH l WHERE l.topo % 4 = 0 "
            "CREATE (:Block {uid: l.uid + '/b', model: $n, index: l.topo})-[:CONTAINS]->(l)",
            n=name)
        store.driver.execute_query(
            "MERGE (m:Model {name: 'versions-bystander'}) "
            "CREATE (m)-[:HAS_LAYER]->(:Layer {uid: 'versions-bystander/0', "
            "model: 'versions-bystander', topo: 0})")
        assert _all_layers(store, name) == 12
        assert store.ingest(graph, costs, "versioned", "synthetic", 0) == "created"
        assert _all_layers(store, name) == len(graph)
        assert count(store, "MATCH (b:Block {model: $n}) WHERE b.version IS NULL "
                            "RETURN count(b)", n=name) == 0
        assert count(store, "MATCH (b:Block {model: $n}) RETURN count(b)", n=name) \
            == len(find_blocks(graph).segments)
        assert _all_layers(store, "versions-bystander") == 1
        store.driver.execute_query(bystander)
        assert store.delete_model(name)


def test_a_deleted_or_replaced_model_takes_its_names_of_shared_types_with_it():
    """A type shared by two models is named after both models' names for it; once one is
    deleted, or re-ingested under other names, the type is named after what is stored."""
    a, costs = _versioned("names-a", "residual", 30)
    b, _ = _versioned("names-b", "residual", 30)
    sigs = sorted({t.signature for t in find_blocks(a).types})

    def called(word: str, model: str) -> dict[str, str]:
        return {sig: f"{word}{k} {model}.{k}" for k, sig in enumerate(sigs)}

    def types(store: Store) -> dict[str, tuple[str, list[str]]]:
        return {r["sig"]: (r["name"], r["names"]) for r in store.driver.execute_query(
            "MATCH (t:BlockType) WHERE t.signature IN $sigs "
            "RETURN t.signature AS sig, t.name AS name, t.names AS names", sigs=sigs).records}

    with _fresh("names-a", batch_rows=7) as store:
        store.delete_model("names-b")
        store.ingest(a, costs, "a", "synthetic", 0, names=called("Unit", "a"))
        store.ingest(b, costs, "b", "synthetic", 0, names=called("Unit", "b"))
        holders = store.driver.execute_query(
            "MATCH (b:Block)-[:OF_TYPE]->(t:BlockType) WHERE t.signature IN $sigs "
            "RETURN collect(DISTINCT b.model) AS models", sigs=sigs).records[0]["models"]
        assert sorted(holders) == ["names-a", "names-b"]  # no other model has these types
        assert types(store) == {sig: (f"Unit{k}", [f"Unit{k} a.{k}", f"Unit{k} b.{k}"])
                                for k, sig in enumerate(sigs)}
        assert store.delete_model("names-b")
        assert types(store) == {sig: (n, [n]) for sig, n in called("Unit", "a").items()}
        assert store.ingest(a, costs, "a, again", "synthetic", 0,
                            names=called("Cell", "a")) == "replaced"
        assert types(store) == {sig: (n, [n]) for sig, n in called("Cell", "a").items()}
        with pytest.MonkeyPatch.context() as patch:  # an ingest that fails at its switch
            patch.setattr("toolkit.store.store._switch", _refused)
            with pytest.raises(StoreError, match="refused"):
                store.ingest(a, costs, "a, failed", "synthetic", 0, names=called("Gone", "a"))
        assert types(store) == {sig: (n, [n]) for sig, n in called("Cell", "a").items()}
        store.delete_model("names-a")


def _refused(*_: object) -> NoReturn:
    raise StoreError("Neo4j refused the switch")


def test_of_two_overlapping_ingests_the_later_started_stays():
    """Ingests are ordered by when they started: an older one that finishes last reports
    'superseded' and leaves the newer one current, and nothing of it behind."""
    from toolkit.store.store import _switch

    name = "versions-overlap"
    first, first_costs = _versioned(name, "residual", 30)
    second, second_costs = _versioned(name, "transformer", 24)
    with _fresh(name, batch_rows=11) as store:
        early = store._read("version_new")[0]["version"]
        assert store.ingest(second, second_costs, "second", "synthetic", 0) == "created"
        store._stage(first, first_costs, early, {})
        status, current = store._write(lambda tx: _switch(
            tx, first, first_costs, early, {"sha256": "first", "source": "s", "opset": 0}))
        assert status == "superseded" and current is not None and current > early
        store._sweep(name, current, early)
        assert _all_layers(store, name) == len(second)
        assert api.stored_cost_graph(store, name).names == second_costs.names
        store.delete_model(name)


def test_a_sweep_policy_is_stored_replaced_queried_and_deleted(store, zoo_path, capsys,
                                                              monkeypatch):
    """`sweep --neo4j`: one (:Partition) per interval under one (:Policy), replaced (not added
    to) by the same sweep again; `cut_changes` finds the model exactly when a breakpoint lies
    in the asked range; deleting or re-ingesting the model takes the policy with it."""
    name = "resnet18-policy"
    scenario = api.make_scenario(link="wifi5", batch=32)

    def run(graph):
        return api.sweep_model(graph, scenario, "uplink", 1e6, 1e9)

    result, written, _ = api.sweep_in_neo4j(store, str(zoo_path("resnet18")), scenario, run,
                                                name)
    assert written == len(result.pieces) >= 3
    api.sweep_in_neo4j(store, str(zoo_path("resnet18")), scenario, run, name)  # again
    policies = "MATCH (p:Policy)-[:OF]->(:Model {name: $n}) RETURN count(p)"
    intervals = "MATCH (p:Partition)-[:IN]->(:Policy)-[:OF]->(:Model {name: $n}) RETURN count(p)"
    assert count(store, policies, n=name) == 1
    assert count(store, intervals, n=name) == len(result.pieces)
    current = "MATCH (p:Partition)-[:OF]->(:Model {name: $n}) RETURN count(p)"
    assert count(store, current, n=name) == 0  # the policy is not a current partition
    inside = [p.lo for p in result.pieces[1:] if 10e6 < p.lo < 100e6]
    rows = [r for r in store.run_saved("cut_changes", {"low": 10e6, "high": 100e6,
                                                       "parameter": None})
            if r["model"] == name]
    assert len(rows) == (1 if inside else 0)
    if inside:
        assert rows[0]["changes"] == len(inside)
        assert rows[0]["breakpoints"] == pytest.approx(inside)
    outside = [r for r in store.run_saved("cut_changes", {"low": 2e6, "high": 3e6,
                                                          "parameter": "uplink"})
               if r["model"] == name]
    assert bool(outside) == any(2e6 < p.lo < 3e6 for p in result.pieces[1:])
    code, out, err = run_main(["sweep", str(zoo_path("resnet18")), "--name", name, "--uplink",
                               "1Mbps..1Gbps", "--neo4j", "--password", PASSWORD, "--json"],
                              capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["neo4j"]["partitions"] == len(result.pieces)
    assert count(store, policies, n=name) == 1  # the same sweep from the CLI: replaced
    code, out, err = run_main(["query", "cut_changes", "--param", "low=10000000", "--param",
                               "high=100000000", "--param", "parameter=null", "--password",
                               PASSWORD, "--json"],
                              capsys, monkeypatch)
    assert code == 0, err
    assert any(r["model"] == name for r in json.loads(out)) == bool(inside)
    assert store.delete_model(name)
    assert count(store, "MATCH (p:Policy {model: $n}) RETURN count(p)", n=name) == 0
    assert count(store, "MATCH (p:Partition {model: $n}) RETURN count(p)", n=name) == 0


def test_a_budgeted_partition_is_written_back(store, zoo_path):
    """--device-memory through Neo4j: the optimum under the budget is the one labelled."""
    from toolkit.costgraph import peak_memory

    name = "googlenet-budget"
    scenario = api.make_scenario(uplink="10Mbps", downlink="10Mbps", batch=32)
    free, _, _ = api.partition_in_neo4j(store, str(zoo_path("googlenet")), scenario, name)
    result, written, _ = api.partition_in_neo4j(store, str(zoo_path("googlenet")), scenario,
                                                name, device_memory=1e9)
    assert peak_memory(result.graph, result.device) <= 1e9 < peak_memory(free.graph,
                                                                         free.device)
    assert written["device"] == len(result.device) != len(free.device)
    assert count(store, "MATCH (m:Model {name: $n}) MATCH (l:Layer:Device {model: $n}) "
                        "WHERE l.version = m.version RETURN count(l)", n=name) \
        == len(result.device)
    assert store.delete_model(name)


def test_a_write_retried_after_its_commit_is_not_applied_twice(monkeypatch):
    """A batch whose transaction committed but whose acknowledgement was lost is retried by
    `_write`: each batch statement is run twice here (as that retry runs it), and the stored
    model is still exactly the graph, once (a replayed block batch returns the keys it
    stored)."""
    name = "retried-batches"
    graph, costs = _versioned(name, "transformer", 40)
    with _fresh(name, batch_rows=9) as store:
        twice = store._statement
        replayed: list[str] = []

        def replay(query: str, /, **params: object) -> list[dict[str, object]]:
            rows = twice(query, **params)
            if query in ("ingest_layers", "ingest_feeds", "detect_blocks_chain",
                         "detect_blocks_link"):
                replayed.append(query)
                again = twice(query, **params)  # the same transaction's work again
                if query == "detect_blocks_chain":  # writes nothing, returns the stored keys
                    assert again == rows and rows
            return rows

        monkeypatch.setattr(store, "_statement", replay)
        assert store.ingest(graph, costs, "retried", "synthetic", 0) == "created"
        assert replayed.count("ingest_layers") == -(-len(graph) // 9)  # every batch replayed
        assert {"ingest_feeds", "detect_blocks_chain", "detect_blocks_link"} <= set(replayed)
        assert _stored_edges(store, name) == _graph_edges(graph, costs)
        assert _all_layers(store, name) == len(graph)
        assert model_size(store, name)[1] == sum(len(t.consumers) for t in costs.tensors)
        assert store.read_blocks(name).cut_vertices == find_blocks(graph).cut_vertices
        assert api.stored_cost_graph(store, name).names == costs.names
        store.delete_model(name)


def test_the_routing_scheme_reads_and_writes_a_single_server(tmp_path, capsys, monkeypatch):
    """neo4j:// (what a cluster or Aura is reached by: a routing table, writes to the leader,
    reads anywhere) against the suite's single server: ingest, partition and query work."""
    routed = os.environ["NEO4J_URI"].replace("bolt://", "neo4j://")
    path = save(chain(4), tmp_path / "routed.onnx")
    code, out, err = run_main(["partition", str(path), "--neo4j", "--uri", routed, "--json"],
                              capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["partition"]["device_layers"]
    code, out, err = run_main(["query", "cut_positions", "--param", "scenario_key=null",
                               "--uri", routed, "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert "routed" in {row["model"] for row in json.loads(out)}
    with Store(Connection.from_env(uri=routed, password=PASSWORD)) as store:
        assert store.delete_model("routed")


def _stored_edges(store: Store, name: str) -> Counter[tuple[object, ...]]:
    """The current version's FEEDS edges with what they carry."""
    found = store.driver.execute_query(
        "MATCH (m:Model {name: $n})-[:HAS_LAYER]->(p:Layer)-[f:FEEDS]->(c:Layer) "
        "RETURN p.name AS p, c.name AS c, f.tensor AS t, f.position AS pos, f.bytes AS b, "
        "f.tensor_key AS k", n=name).records
    return Counter((r["p"], r["c"], r["t"], r["pos"], r["b"], r["k"]) for r in found)


def _graph_edges(graph, costs: CostGraph) -> Counter[tuple[object, ...]]:
    from toolkit.blocks import tensor_key

    layers = list(graph)
    return Counter(
        (layers[t.producer].name, layers[c].name, t.name, layers[c].inputs.index(t.name),
         t.bytes, tensor_key(graph, layers[t.producer], t.name))
        for t in costs.tensors for c in t.consumers)


@pytest.mark.parametrize("writers", [1, 3])
def test_batches_written_at_once_store_the_graph_exactly(writers, caplog):
    """Small batches, several in flight: every edge (inside a batch or between two, skips
    included) stored once with what it carries, the blocks one NEXT chain in order, and the
    cut vertices and block types those of the Python detection. The ingest logs how long
    its two phases took."""
    name = f"batched-{writers}"
    graph, costs = _versioned(name, "residual", 120)
    with Store(Connection.from_env(password=PASSWORD), batch_rows=11,
               writers=writers) as store:
        store.ensure_schema()
        store.delete_model(name)
        with caplog.at_level(logging.INFO, logger="toolkit.store.store"):
            assert store.ingest(graph, costs, "batched", "synthetic", 0) == "created"
        [logged] = [r for r in caplog.records if hasattr(r, "phases_s")]
        assert set(logged.phases_s) == {"layers", "blocks"}
        assert all(s > 0 for s in logged.phases_s.values())
        assert f"{len(graph)} layers" in logged.getMessage()
        assert _stored_edges(store, name) == _graph_edges(graph, costs)
        chain = [r["i"] for r in store.driver.execute_query(
            "MATCH (m:Model {name: $n}) MATCH p = (a:Block {model: $n, version: m.version})"
            "-[:NEXT]->*(z:Block) WHERE NOT EXISTS { (:Block)-[:NEXT]->(a) } "
            "AND NOT EXISTS { (z)-[:NEXT]->(:Block) } "
            "UNWIND nodes(p) AS b RETURN b.index AS i", n=name).records]
        python = find_blocks(graph)
        assert chain == list(range(len(python.segments)))
        stored_blocks = store.read_blocks(name)
        assert stored_blocks.cut_vertices == python.cut_vertices
        assert [s.type_id for s in stored_blocks.segments] == \
            [s.type_id for s in python.segments]
        store.delete_model(name)


def test_concurrent_writes_overlap_and_stop_at_the_first_failure():
    """`writers` batches in flight at once, never more; a failure is raised and the batches
    not yet started never start."""
    import threading

    from toolkit.store.store import concurrently

    both = threading.Barrier(2, timeout=10)  # broken unless two batches run at once
    lock = threading.Lock()
    running, most, started = 0, 0, []

    def work(item: int) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            started.append(item)
        try:
            if item < 2:
                both.wait()
            if item == 3:
                raise ValueError("batch 3 failed")
        finally:
            with lock:
                running -= 1

    with pytest.raises(ValueError, match="batch 3"):
        concurrently(work, list(range(200)), 2)
    assert most == 2
    assert max(started) <= 4  # none started after the failure was seen


def test_no_saved_query_scans_every_layer_or_block_of_the_database(store):
    """Each query plans its reads of (:Layer) and (:Block) through an index: per model through
    the (model, version, topo|index) indexes (which need a predicate on every property), so its
    cost does not grow with the rest of the corpus. Planted check: the plan inspector finds the
    label scan of a query that asks for one."""
    from toolkit import queries

    def scans(text: str) -> list[str]:
        with store.driver.session(database=store.connection.database,
                                  notifications_min_severity="OFF") as session:
            plan = session.run("EXPLAIN " + text).consume().plan
        found, todo = [], [plan]
        while todo:
            op = todo.pop()
            details = op["args"].get("Details", "")
            if op["operatorType"].startswith("AllNodesScan") or (
                    "LabelScan" in op["operatorType"] and
                    re.search(r":(Layer|Block)\b", details)):
                found.append(details)
            todo.extend(op.get("children", []))
        return found

    assert scans("MATCH (l:Layer {model: $model, version: $version}) RETURN l")
    for name in queries.names():
        if name != "schema":
            assert scans(queries.load(name)) == [], name
