"""Saved cross-model queries against the real Neo4j server, with the zoo ingested."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from toolkit import api, zoo
from toolkit.blocks import find_blocks
from toolkit.costs import BUILTIN_SCENARIOS, scenario_key
from toolkit.store import Connection, Store

PASSWORD = os.environ.get("NEO4J_PASSWORD", "splitcut-dev")
MODELS = list(zoo.MODELS)  # all 14
SCENARIO_A, SCENARIO_B = "nano-3090-lte", "orin-a100-5g"


@pytest.fixture(scope="module")
def store(zoo_path):
    """The whole zoo ingested (unchanged models are skipped, so reruns are quick)."""
    with Store(Connection.from_env(password=PASSWORD)) as s:
        for name in MODELS:
            api.ingest_model(s, str(zoo_path(name)), api.make_scenario(), name)
        yield s


@pytest.fixture(scope="module")
def python_blocks(store):
    return {name: find_blocks(api.load_graph(name)) for name in MODELS}


@pytest.fixture(scope="module")
def partitions(store):
    """Each model partitioned through Neo4j under two scenarios; the embedded results beside."""
    out = {}
    for key in (SCENARIO_A, SCENARIO_B):
        scenario = api.make_scenario(**BUILTIN_SCENARIOS[key])
        for name in MODELS:
            out[key, name], _, _ = api.partition_in_neo4j(store, name, scenario)
    return out


def test_block_types_by_model_match_splitcut_blocks(store, python_blocks):
    for name, blocks in python_blocks.items():
        rows = store.run_saved("block_types_by_model", {"model": name})
        expected = Counter(blocks.types[s.type_id].signature for s in blocks.segments)
        assert {r["signature"]: r["instances"] for r in rows} == dict(expected)


def test_shared_block_types_agree_with_per_model_blocks(store, python_blocks):
    rows = store.run_saved("models_sharing_block_types", {"min_models": 2})
    in_models: dict[str, set[str]] = {}
    for name, blocks in python_blocks.items():
        for t in blocks.types:
            in_models.setdefault(t.signature, set()).add(name)
    shared = {sig: models for sig, models in in_models.items() if len(models) >= 2}
    assert shared  # ResNets share bottlenecks, transformers their ReLU/LayerNorm links
    found = {r["signature"]: set(r["models"]) & set(MODELS) for r in rows}  # other tests' too
    assert {sig: models for sig, models in found.items() if len(models) >= 2} == shared


def test_costliest_block_types_on_a_device(store, python_blocks):
    scenario = api.make_scenario(**BUILTIN_SCENARIOS[SCENARIO_A])
    expected = []
    for name, blocks in python_blocks.items():
        _, costs, _ = api.ingest_model(store, name, scenario)
        per_type: dict[str, float] = Counter()
        for s in blocks.segments:
            per_type[blocks.types[s.type_id].signature] += sum(costs.device_ms[i] for i in s.layers)
        expected += [(total, name, sig) for sig, total in per_type.items()]
    expected.sort(reverse=True)
    rows = store.run_saved("costliest_block_types", {"device": "jetson-nano", "limit": 5})
    assert [(r["model"], r["signature"]) for r in rows] == [(m, s) for _, m, s in expected[:5]]
    for row, (total, _, _) in zip(rows, expected, strict=False):
        assert row["device_ms_total"] == pytest.approx(total, rel=1e-9)


def test_cut_positions_and_gains(store, python_blocks, partitions):
    key = scenario_key(api.make_scenario(**BUILTIN_SCENARIOS[SCENARIO_B]).to_dict())
    rows = {r["model"]: r for r in store.run_saved("cut_positions", {"scenario_key": key})}
    assert set(rows) >= set(MODELS)
    for name in MODELS:
        result, row = partitions[SCENARIO_B, name], rows[name]
        blocks = python_blocks[name]
        last = max(result.device)
        block = next(s.index for s in blocks.segments if last in s.layers)
        assert row["cut_block"] == block
        assert row["blocks"] == len(blocks.segments)
        assert row["total_ms"] == pytest.approx(result.delay.total)
        assert row["cut_tensors"] == result.to_dict()["partition"]["cut_tensors"]
        device_only = result.baselines_ms["device_only"]
        assert row["gain_vs_device_only"] == pytest.approx(1 - result.delay.total / device_only)


def test_models_whose_cut_moves_between_scenarios(store, partitions):
    a = scenario_key(api.make_scenario(**BUILTIN_SCENARIOS[SCENARIO_A]).to_dict())
    b = scenario_key(api.make_scenario(**BUILTIN_SCENARIOS[SCENARIO_B]).to_dict())
    rows = store.run_saved("cut_moves", {"a": a, "b": b})
    count = {(key, name): len(p.device) for (key, name), p in partitions.items()}
    moved = {name for name in MODELS if count[SCENARIO_A, name] != count[SCENARIO_B, name]}
    assert moved
    assert {r["model"] for r in rows} == moved
