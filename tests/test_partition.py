"""The exact partition against independent oracles, its baselines, and bad pins."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import chain, run_main, save
from tests.oracles import brute_force, is_valid, make_graph, networkx_delay_optimum, total
from toolkit import api, zoo
from toolkit.costs import BUILTIN_SCENARIOS, build_cost_graph
from toolkit.errors import PartitionError
from toolkit.partition import solve
from toolkit.partition.baselines import best_chain_split, dads_repaired, device_only


@st.composite
def cost_graphs(draw, max_layers=14):
    n = draw(st.integers(min_value=1, max_value=max_layers))
    edges = []
    for w in range(1, n):
        preds = draw(st.sets(st.integers(min_value=max(0, w - 4), max_value=w - 1), max_size=3))
        edges += [(u, w) for u in preds]
    costs = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
    device = draw(st.lists(costs, min_size=n, max_size=n))
    server = draw(st.lists(costs, min_size=n, max_size=n))
    crossing = draw(st.lists(costs, min_size=n, max_size=n))
    has_pred = {w for _, w in edges}
    pinned = [i not in has_pred and draw(st.booleans()) for i in range(n)]
    return make_graph(n, edges, device, server, crossing, pinned)


@given(cost_graphs())
def test_min_cut_equals_brute_force_on_random_dags(graph):
    result = solve(graph)
    device = set(result.device)
    assert is_valid(graph, device)
    assert result.delay.total == pytest.approx(total(graph, device), rel=1e-12, abs=1e-9)
    assert result.delay.total == pytest.approx(brute_force(graph), rel=1e-9, abs=1e-9)


@given(cost_graphs(max_layers=10), st.data())
def test_server_pins_are_respected_and_still_optimal(graph, data):
    free = [i for i in range(len(graph)) if not graph.pinned[i]]
    if not free:
        return
    pinned = {data.draw(st.sampled_from(free))}
    try:
        result = solve(graph.with_pins(server=pinned))
    except PartitionError:
        assert brute_force(graph, pinned) == float("inf")
        return
    assert not pinned & set(result.device)
    assert result.delay.total == pytest.approx(brute_force(graph, pinned), rel=1e-9, abs=1e-9)


@given(cost_graphs())
def test_baselines_are_valid_partitions_never_better_than_the_optimum(graph):
    best = solve(graph).delay.total
    chain_delay, k = best_chain_split(graph)
    assert is_valid(graph, set(range(k)))
    assert chain_delay == pytest.approx(total(graph, set(range(k))))
    assert best <= chain_delay + 1e-9
    assert best <= dads_repaired(graph) + 1e-9
    assert best <= device_only(graph) + 1e-9


VISION_AND_TEXT = list(zoo.MODELS)


@pytest.mark.parametrize("name", VISION_AND_TEXT)
def test_every_zoo_model_and_scenario_matches_networkx(zoo_path, name):
    graph = api.load_graph(str(zoo_path(name)), name)
    for scenario_name, settings in BUILTIN_SCENARIOS.items():
        costs = build_cost_graph(graph, api.make_scenario(**settings))
        result = solve(costs)
        expected = networkx_delay_optimum(costs)
        assert result.delay.total == pytest.approx(expected, rel=1e-9), scenario_name


def test_unknown_pin_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    path = save(chain(3), tmp_path / "c.onnx")
    code, _, err = run_main(["partition", str(path), "--pin", "nope"], capsys, monkeypatch)
    assert code == 2
    assert "no layer or module named 'nope'" in err
    assert len(err.strip().splitlines()) == 1


def test_contradictory_pins_are_a_one_line_error(tmp_path, capsys, monkeypatch):
    path = save(chain(3), tmp_path / "c.onnx")
    args = ["partition", str(path), "--pin", "relu2", "--pin-server", "mm1"]
    code, _, err = run_main(args, capsys, monkeypatch)
    assert code == 2
    assert "no valid partition" in err


def test_pin_takes_module_paths_and_says_when_a_name_is_ambiguous(zoo_path, capsys, monkeypatch):
    path = str(zoo_path("resnet18"))
    graph = api.load_graph(path, "resnet18")
    inside = [x.name for x in graph if x.module and x.module.startswith("layer2.")]
    result = api.partition_model(graph, api.make_scenario(link="wifi5"), pin_device=["layer2"])
    on_device = {result.graph.names[i] for i in result.device}
    assert inside and set(inside) <= on_device
    assert "user (--pin)" in result.graph.pin_reasons
    first = next(iter(graph)).name
    assert api.layer_indices(graph, [f"layer:{first}"], "--pin") == [0]
    with pytest.raises(PartitionError, match="no module named"):
        api.layer_indices(graph, ["module:nope"], "--pin")


def test_symbolic_sequence_needs_a_value(tmp_path, capsys, monkeypatch):
    from onnx import TensorProto, helper

    from tests.helpers import weight
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight("w", 8, 8)])
    path = save(helper.make_model(g), tmp_path / "seq.onnx")
    code, _, err = run_main(["inspect", str(path)], capsys, monkeypatch)
    assert code == 2 and "'seq'" in err and "--dim seq=" in err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = run_main(["inspect", str(path), "--dim", "seq=128", "--json"], capsys,
                            monkeypatch)
    assert code == 0
    data = json.loads(out)
    assert data["totals"]["macs"] == 128 * 8 * 8
    assert any("batch" in note for note in data["notes"])
    four = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [4, 16, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight("w", 8, 8)])
    path = save(helper.make_model(four), tmp_path / "four.onnx")
    for command in ("graph", "partition"):
        code, out, _ = run_main([command, str(path), "--json"], capsys, monkeypatch)
        assert code == 0
        assert any("exported with batch 4" in note for note in json.loads(out)["notes"])
    code, out, _ = run_main(["inspect", str(path), "--json"], capsys, monkeypatch)
    assert json.loads(out)["totals"]["macs"] == 16 * 8 * 8  # per sample: 4 divided out
