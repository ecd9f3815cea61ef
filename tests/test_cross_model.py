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
        for name in MODELS:  # by zoo name: each model's family is stored
            zoo_path(name)
            api.ingest_model(s, name, api.make_scenario())
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


def _shared_name(names: set[str]) -> str:
    """What a type's names share: their common leading words, else their first words."""
    words = [n.split(" ") for n in sorted(names)]
    common = []
    for parts in zip(*words, strict=False):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return " ".join(common) if common else " / ".join(sorted({w[0] for w in words}))


def test_a_shared_type_is_named_after_what_its_models_call_it(store, python_blocks):
    """Not after the model ingested first: a type's name is what every model's name for it
    shares, and each model's blocks keep the model's own name."""
    names: dict[str, dict[str, str]] = {}  # signature -> {model: its name for the type}
    for model, blocks in python_blocks.items():
        for t in blocks.types:
            names.setdefault(t.signature, {})[model] = t.name
    shared = [sig for sig, per_model in names.items() if len(per_model) > 1]
    records = store.driver.execute_query(
        "MATCH (t:BlockType) WHERE t.signature IN $sigs "
        "RETURN t.signature AS sig, t.name AS name, t.names AS names", sigs=shared).records
    assert len(records) == len(shared)
    differing = 0
    for r in records:
        per_model = set(names[r["sig"]].values())
        assert per_model <= set(r["names"]), r["sig"]  # every model's name is kept
        assert r["name"] == _shared_name(set(r["names"])), r["sig"]
        differing += len(per_model) > 1
    assert differing  # some type shared by the zoo is called differently by its models
    for model, blocks in python_blocks.items():
        stored = store.read_blocks(model)
        assert {t.signature: t.name for t in stored.types} == \
            {t.signature: t.name for t in blocks.types}, model


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


def _family(name: str) -> str:
    return zoo.get(name).family


def test_block_types_across_families(store, python_blocks, partitions):
    """Every block type the zoo's own models share across families is found, with at least
    those families (other tests' models may add theirs)."""
    families: dict[str, set[str]] = {}
    for name, blocks in python_blocks.items():
        for t in blocks.types:
            families.setdefault(t.signature, set()).add(_family(name))
    expected = {sig for sig, fams in families.items() if len(fams) >= 2}
    assert expected  # ResNet-style and transformer links recur
    rows = {r["signature"]: r for r in store.run_saved("block_types_across_families",
                                                       {"min_families": 2, "min_size": 1})}
    assert expected <= set(rows)
    for sig in expected:
        assert families[sig] <= set(rows[sig]["families"])
        assert rows[sig]["family_count"] == len(rows[sig]["families"]) >= 2


def test_cut_depth_by_family_and_families_cut_apart(store, partitions):
    """Depths are the last device layer's place in topological order, per family as the
    partitions give them; family pairs sharing a type are reported exactly when their mean
    depths differ by the gap asked."""
    key = scenario_key(api.make_scenario(**BUILTIN_SCENARIOS[SCENARIO_B]).to_dict())
    expected: dict[str, list[float]] = {}
    for name in MODELS:
        result = partitions[SCENARIO_B, name]
        expected.setdefault(_family(name), []).append(
            (max(result.device) + 1) / len(result.graph.names))
    rows = {r["family"]: r for r in store.run_saved("cut_depth_by_family",
                                                    {"scenario_key": key})}
    for family, depths in expected.items():
        assert rows[family]["depths"] == pytest.approx(sorted(depths))
        assert rows[family]["mean_depth"] == pytest.approx(sum(depths) / len(depths))
    means = {f: r["mean_depth"] for f, r in rows.items()}
    pairs = store.run_saved("families_sharing_a_type_cut_apart",
                            {"scenario_key": key, "min_gap": 0.2})
    for row in pairs:
        assert row["depth_a"] == pytest.approx(means[row["family_a"]])
        assert row["gap"] == pytest.approx(abs(row["depth_a"] - row["depth_b"])) >= 0.2
    wide = store.run_saved("families_sharing_a_type_cut_apart",
                           {"scenario_key": key, "min_gap": 0.0})
    assert len(wide) >= len(pairs) and {(r["family_a"], r["family_b"]) for r in pairs} <= {
        (r["family_a"], r["family_b"]) for r in wide}


def test_costliest_block_types_across_the_corpus(store, python_blocks):
    scenario = api.make_scenario(**BUILTIN_SCENARIOS[SCENARIO_A])
    totals: Counter[str] = Counter()
    for name, blocks in python_blocks.items():
        _, costs, _ = api.ingest_model(store, name, scenario)
        for s in blocks.segments:
            totals[blocks.types[s.type_id].signature] += sum(costs.device_ms[i] for i in s.layers)
    rows = store.run_saved("costliest_block_types_in_corpus",
                           {"device": "jetson-nano", "limit": 1000})
    found = {r["signature"]: r["device_ms_total"] for r in rows}
    for sig, total in totals.most_common(5):  # the zoo's costliest, at least their own sum
        assert found[sig] >= total * (1 - 1e-9)
    assert [r["device_ms_total"] for r in rows] == sorted(found.values(), reverse=True)
