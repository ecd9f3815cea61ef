"""k-tier chains: the layered min cut and the block-wise DP against brute force over every
tiering, and two tiers against the two-sided solvers.

The oracle enumerates all k^n labelings of small random models (fan-out, multi-output layers,
integer tensors, raw-data pins, pins to a tier range, outputs pinned to the last tier as in a
U-shape) with adversarial costs (ties, zeros, permuted costs between identical blocks, per
boundary latency and labels), and evaluates D with its own code, not the toolkit's.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from tests.helpers import run_main, schema
from tests.oracles import make_graph
from tests.test_exactness import _costs, random_dag, repeated_blocks
from toolkit import api, zoo
from toolkit.blocks import find_blocks
from toolkit.costgraph import CostGraph, CostTensor
from toolkit.costs import BUILTIN_SCENARIOS, build_cost_graph, build_tier_graph
from toolkit.errors import PartitionError
from toolkit.partition import solve
from toolkit.partition.baselines import best_chain_split, best_ranges
from toolkit.partition.blockwise import weights_follow
from toolkit.partition.layered import layered_cut
from toolkit.partition.tiers import solve_tiers
from toolkit.tiergraph import TierGraph, check_tiers, tier_delay

CASES = 1500
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "device-edge-cloud.toml"


def brute_force(graph: TierGraph) -> tuple[float, np.ndarray | None]:
    """The least D over every valid labeling, and one that attains it (None: none is valid)."""
    n, k = len(graph), graph.k
    labels = np.array(list(itertools.product(range(k), repeat=n)), dtype=np.int64).reshape(-1, n)
    ok = ((labels >= graph.lowest) & (labels <= graph.highest)).all(axis=1)
    base = graph.base
    total = graph.compute_ms[np.arange(n), labels].sum(axis=1)
    used = np.zeros((len(labels), k - 1), dtype=bool)
    for x, tensor in enumerate(base.tensors):
        produced = labels[:, tensor.producer]
        reach = labels[:, list(tensor.consumers)].max(axis=1)
        ok &= (labels[:, list(tensor.consumers)] >= produced[:, None]).all(axis=1)
        for b in range(k - 1):
            crosses = (produced <= b) & (b < reach)
            total += np.where(crosses, graph.crossing_ms[x, b], 0.0)
            used[:, b] |= crosses
    total += (used * graph.latency_ms).sum(axis=1)
    if base.outputs:
        top = labels[:, base.outputs].max(axis=1)
        total += ((np.arange(k - 1) < top[:, None]) * graph.labels_ms).sum(axis=1)
    if graph.tiers[-1] == graph.tiers[0]:  # a U-shape may train on the device alone
        pins = np.flatnonzero(graph.lowest > 0)
        if all(v in base.outputs and graph.lowest[v] == k - 1 for v in pins):
            ok[0] = True  # labels[0] puts every layer on tier 0: nothing crosses
    if not ok.any():
        return float("inf"), None
    total[~ok] = np.inf
    best = int(np.argmin(total))
    return float(total[best]), labels[best]


def three_tiers(costs: CostGraph, rng: np.random.Generator) -> TierGraph:
    """A third tier whose costs derive from the first two (so block instances with equal or
    permuted costs stay equal or permuted), per-boundary latency and labels, and pins: the
    raw-data pins on tier 0, some layers kept off tier 0, some outputs on the last tier."""
    device, server = costs.device_arr, costs.server_arr
    a, b = rng.uniform(0.1, 3.0, size=2)
    third = np.mod(device * a + server * b, 1.0) * float(rng.choice((1.0, 4.0, 10.0)))
    if rng.random() < 0.4:
        third = np.round(third)  # more ties and zeros
    shrink = float(rng.choice((1.0, 0.3, 0.0)))  # cheap links make every tier worth using
    crossing0 = costs.tensor_crossing * shrink
    crossing1 = np.where(rng.random() < 0.5, crossing0, np.round(crossing0 * 1.5))
    lowest = np.zeros(len(costs), dtype=np.int64)
    highest = np.where(np.asarray(costs.pinned, dtype=bool), 0, 2)
    for i in range(len(costs)):
        if not costs.pinned[i] and rng.random() < 0.04:
            lowest[i] = 1
    names = ["device", "edge", "cloud"]
    if costs.outputs and rng.random() < 0.25:
        lowest[costs.outputs] = np.maximum(lowest[costs.outputs], 2)  # a U-shape's tail
        if rng.random() < 0.7:
            names[2] = "device"  # and a U-shape: it may train on the device alone
    latency = [costs.latency_ms * shrink, float(rng.choice((0.0, 1.0, 3.0, rng.uniform(0, 10))))]
    labels = [costs.labels_ms, float(rng.choice((0.0, 1.0, rng.uniform(0, 5))))]
    if names[2] == "device":
        third = device  # the same device
    return TierGraph(costs, names, np.column_stack([device, server, third]),
                     np.column_stack([crossing0, crossing1]), latency, labels, lowest, highest)


def _check(graph: TierGraph, blocks: object) -> int:
    """Both solvers and the ranges baseline against brute force; the tiers the optimum uses."""
    expected, witness = brute_force(graph)
    if witness is not None:  # the oracle's evaluation and the toolkit's agree
        assert check_tiers(graph, witness).total == pytest.approx(expected, rel=1e-9, abs=1e-9)
    for method in ("general", "blockwise"):
        try:
            result = solve_tiers(graph, method, blocks, with_baselines=False)  # type: ignore[arg-type]
        except PartitionError:
            assert expected == float("inf"), method
            continue
        assert result.delay.total == pytest.approx(expected, rel=1e-9, abs=1e-9), method
        follow = weights_follow(graph.compute_ms, graph.lowest, graph.highest,
                                blocks.weight_only)  # type: ignore[attr-defined]
        assert result.method == (method if follow else "general")  # a fallback says so
    ranges, splits = best_ranges(graph)
    contiguous = []
    for cuts in itertools.combinations_with_replacement(range(len(graph) + 1), graph.k - 1):
        tier = np.searchsorted(cuts, np.arange(len(graph)), "right")
        with contextlib.suppress(PartitionError):
            contiguous.append(check_tiers(graph, tier).total)
    assert ranges == pytest.approx(min(contiguous, default=float("inf")), rel=1e-9, abs=1e-9)
    if contiguous:
        assert ranges >= expected - 1e-9
        tier = np.searchsorted(splits, np.arange(len(graph)), "right")
        assert check_tiers(graph, tier).total == pytest.approx(ranges, rel=1e-9, abs=1e-9)
    return 0 if witness is None else len(set(witness.tolist()))


def _small(rng: np.random.Generator, make: object) -> tuple[object, CostGraph]:
    while True:
        made = make(rng)  # type: ignore[operator]
        graph, extra = (made, ()) if not isinstance(made, tuple) else (made[0], made[1:])
        if len(graph) <= 9:
            return graph, _costs(graph, rng, *extra)


@pytest.mark.parametrize("part", range(2))
def test_three_tiers_equal_brute_force_on_random_dags(part):
    rng = np.random.default_rng(3000 + part)
    late = functools.partial(random_dag, late_inputs=0.1)  # (a model input read late: the
    # layers before its reader were taken for cut vertices, and the block-wise optimum erred)
    used = [_check(three_tiers(costs, rng), find_blocks(graph))
            for graph, costs in (_small(rng, random_dag if k % 2 else late)
                                 for k in range(CASES // 2))]
    assert used.count(3) > CASES // 200, "the generator must make all three tiers worth using"


@pytest.mark.parametrize("part", range(2))
def test_three_tiers_equal_brute_force_on_blocks_with_permuted_costs(part):
    rng = np.random.default_rng(4000 + part)
    shared, used = 0, []
    for _ in range(CASES // 2):
        graph, costs = _small(rng, repeated_blocks)
        blocks = find_blocks(graph)
        shared += any(t.count > 1 for t in blocks.types)
        used.append(_check(three_tiers(costs, rng), blocks))
    assert shared > CASES // 4, "the generator must produce repeated block types"
    assert used.count(3) > CASES // 40, "the generator must make all three tiers worth using"


def four_tiers(costs: CostGraph, rng: np.random.Generator) -> TierGraph:
    """Three tiers and a fourth beyond them (costs again derived from the first two), a third
    boundary with its own crossing, latency and labels, and tier ranges up to 3."""
    three = three_tiers(costs, rng)
    device, server = costs.device_arr, costs.server_arr
    fourth = np.mod(device * 0.7 + server * 1.3, 1.0) * float(rng.choice((0.5, 2.0, 8.0)))
    crossing2 = three.crossing_ms[:, 0] * float(rng.choice((0.0, 0.5, 1.0)))
    names = ["device", "edge", "fog", "cloud"]
    lowest = np.where(three.lowest == 2, 3, three.lowest)
    highest = np.where(three.highest == 2, 3, three.highest)
    return TierGraph(costs, names, np.column_stack([three.compute_ms, fourth]),
                     np.column_stack([three.crossing_ms, crossing2]),
                     [*three.latency_ms, float(rng.choice((0.0, 2.0, rng.uniform(0, 6))))],
                     [*three.labels_ms, float(rng.choice((0.0, 1.0)))], lowest, highest)


def test_four_tiers_equal_brute_force():
    """k = 4 (eight quiet sets, tensors relayed over three boundaries) on models of up to 7
    layers: both solvers and the ranges baseline equal brute force over every labeling."""
    rng = np.random.default_rng(6000)
    used = []
    for _ in range(CASES // 3):
        make = random_dag if rng.random() < 0.5 else repeated_blocks
        while True:
            graph, costs = _small(rng, make)
            if len(graph) <= 7:
                break
        used.append(_check(four_tiers(costs, rng), find_blocks(graph)))
    assert max(used) == 4 and used.count(4) > 0


@pytest.mark.parametrize("part", range(2))
def test_two_tiers_equal_the_two_sided_solvers(part):
    rng = np.random.default_rng(5000 + part)
    for _ in range(CASES // 2):
        graph = random_dag(rng) if rng.random() < 0.5 else repeated_blocks(rng)[0]
        costs = _costs(graph, rng)
        free = [i for i in range(len(costs)) if not costs.pinned[i]]
        if free and rng.random() < 0.3:  # a server pin becomes the second tier's lower bound
            costs = costs.with_pins(server={int(rng.choice(free))})
        blocks = find_blocks(graph)
        tiers = TierGraph.from_cost_graph(costs)
        try:
            two = solve(costs, "general", with_baselines=False)
        except PartitionError:
            with pytest.raises(PartitionError):
                solve_tiers(tiers, "general", with_baselines=False)
            continue
        for method in ("general", "blockwise"):
            result = solve_tiers(tiers, method, blocks, with_baselines=False)
            assert result.delay.total == pytest.approx(two.delay.total, rel=1e-9, abs=1e-9)
        assert best_ranges(tiers)[0] == pytest.approx(best_chain_split(costs)[0],
                                                      rel=1e-9, abs=1e-9)


def test_an_infeasible_quiet_set_is_not_taken_for_a_cut():
    """Quiet on its first boundary, this chain has no valid tiering (its raw-data reader stays
    on the device, its output goes to the cloud). The max-flow summed that infeasible cut a
    rounding below the 'infinite' capacity, and the solver once took it for a tiering that put
    the raw-data reader in the cloud (found by the brute-force comparison)."""
    n = 8
    base = CostGraph("chain", [f"l{i}" for i in range(n)], ["Op"] * n, [0.0] * n, [0.0] * n,
                     [True] + [False] * (n - 1),
                     [CostTensor(f"l{i}.0", i, (i + 1,), 16.0, 0.0) for i in range(n - 1)],
                     outputs=[n - 1])
    slow = 6.516765662621361
    compute = [[1.0, 1.0, 0.0], [slow, 1.0, 0.0], [3.0, 2.0, 0.0], [3.0, 1.0, 0.0],
               [slow, 2.0, 0.0], [3.0, 1.0, 0.0], [slow, 2.0, 0.0], [1.4988714825488558, 0, 0]]
    crossing = [[0.0, 0.0]] + [[0.6, 0.6], [1.5, 1.5]] * 3
    graph = TierGraph(base, ["device", "edge", "cloud"], np.array(compute), np.array(crossing),
                      [5.217303857272755, 1.0], [0.0, 0.0], np.array([0] * (n - 1) + [2]),
                      np.array([0] + [2] * (n - 1)))
    assert layered_cut(graph, quiet=(0,)) is None
    result = solve_tiers(graph, "general", with_baselines=False)
    assert result.tier.tolist() == [0] + [2] * (n - 1)
    assert result.delay.total == pytest.approx(brute_force(graph)[0], rel=1e-12)


def test_a_tensor_read_two_tiers_later_crosses_both_boundaries_once():
    """Relay: t0 (from l0, read by l1 and l2) with l0, l1, l2 on T0, T1, T2 crosses both
    boundaries once each; t1 (l1 -> l2) crosses the second; each boundary pays its latency
    once; the labels travel over both to the output l2, over neither when l2 stays on T0."""
    costs = make_graph(3, [(0, 1), (0, 2), (1, 2)], [1.0] * 3, [1.0] * 3, [0.0] * 3,
                       [False] * 3)
    costs.outputs = [2]
    tiers = TierGraph(costs, ["device", "edge", "cloud"], np.ones((3, 3)),
                      [[10.0, 20.0], [100.0, 200.0]], [1.0, 2.0], [1000.0, 3000.0],
                      [0, 0, 0], [2, 2, 2])
    delay = tier_delay(tiers, [0, 1, 2])
    assert delay.crossing == (10.0, 20.0 + 200.0)
    assert delay.latency == (1.0, 2.0)
    assert delay.labels == (1000.0, 3000.0)
    assert tier_delay(tiers, [0, 0, 0]).total == 3.0
    with pytest.raises(PartitionError, match="feeds"):
        check_tiers(tiers, [1, 0, 2])


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_chains_agree_between_solvers_and_two_tiers_equal_today(zoo_path, name):
    """Every zoo model: with two tiers the k-tier solvers give the two-sided optimum under every
    built-in scenario; the U-shape (three scenarios) and a device-edge-cloud chain give the same
    optimum from the layered cut and the block-wise DP, each a valid tiering that keeps raw
    data on the device and (U-shape) the outputs back on it."""
    graph = api.load_graph(str(zoo_path(name)), name)
    blocks = find_blocks(graph)
    for settings in BUILTIN_SCENARIOS.values():
        scenario = api.make_scenario(**settings)
        two = solve(build_cost_graph(graph, scenario), "general", with_baselines=False)
        tiers = TierGraph.from_cost_graph(build_cost_graph(graph, scenario))
        for method in ("general", "blockwise"):
            assert solve_tiers(tiers, method, blocks, with_baselines=False).delay.total \
                == pytest.approx(two.delay.total, rel=1e-9)
    chains = [api.make_chain(api.make_scenario(**BUILTIN_SCENARIOS[s]), u_shape=True)
              for s in ("nano-3090-wifi5", "orin-a100-5g", "phone-h100-5g")]
    chains.append(api.make_chain(api.make_scenario(), str(EXAMPLE)))
    for names, boundaries in chains:
        costs = build_tier_graph(graph, names, boundaries)
        general = solve_tiers(costs, "general", with_baselines=True)
        blockwise = solve_tiers(costs, "blockwise", blocks, with_baselines=False)
        assert blockwise.delay.total == pytest.approx(general.delay.total, rel=1e-9)
        assert general.delay.total <= min(general.baselines_ms.values()) * (1 + 1e-9)
        pinned = np.asarray(costs.base.pinned, dtype=bool)
        assert (general.tier[pinned] == 0).all() and pinned.any()
        if names[-1] == names[0]:  # outputs back on the device, or the device alone
            alone = not general.tier.any()
            assert alone or (general.tier[costs.outputs] == len(names) - 1).all()
            assert sum(general.delay.labels) == 0.0


def test_partition_cli_runs_a_u_shape_and_a_tier_file(zoo_path, tmp_path, capsys, monkeypatch):
    model = str(zoo_path("resnet18"))
    code, out, err = run_main(["partition", model, "--u-shape", "--link", "wifi6", "--json"],
                              capsys, monkeypatch)
    assert code == 0, err
    data = json.loads(out)
    jsonschema.validate(data, schema("tiers"))
    tiers = data["partition"]["tiers"]
    assert [t["name"] for t in tiers] == ["device", "server", "device"]
    assert sum(len(t["layers"]) for t in tiers) == len(data["partition"]["tier_of"])
    assert data["delay_ms"]["total"] == pytest.approx(
        sum(data["delay_ms"]["compute"]) + data["delay_ms"]["crossing"]
        + data["delay_ms"]["latency"] + data["delay_ms"]["labels"])
    assert data["scenario"]["links"][1]["uplink_bps"] == data["scenario"]["links"][0][
        "downlink_bps"]  # the way back: activations come down
    code, out, err = run_main(["partition", model, "--tiers", str(EXAMPLE), "--json"], capsys,
                              monkeypatch)
    assert code == 0, err
    jsonschema.validate(json.loads(out), schema("tiers"))
    code, out, err = run_main(["partition", model, "--tiers", str(EXAMPLE)], capsys,
                              monkeypatch)
    assert code == 0, err
    words = " ".join(out.split())
    assert "device (jetson-nano) -> edge (rtx-3090) -> cloud (h100)" in words
    assert "what crosses each boundary" in words and "edge -> cloud" in words
    bad = tmp_path / "bad.toml"
    for text, message in [
        ('[[tier]]\nname = "device"\nprocessor = "jetson-nano"\n', "two or more"),
        ('[[tier]]\nname = "device"\nprocessor = "jetson-nano"\n[[tier]]\nname = "edge"\n'
         'processor = "rtx-3090"\n', "link preset or both"),
        ('[[tier]]\nname = "device"\nprocessor = "jetson-nano"\n[[tier]]\nname = "edge"\n'
         'processor = "nope"\nlink = "wifi6"\n', "nope"),
        ('[[tier]]\nname = "a b"\nprocessor = "jetson-nano"\n', "two or more"),
        ("[[tier]\n", "cannot read tier chain"),
    ]:
        bad.write_text(text)
        code, out, err = run_main(["partition", model, "--tiers", str(bad)], capsys,
                                  monkeypatch)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (text, err)
    code, out, err = run_main(["partition", model, "--u-shape", "--neo4j", "--uri",
                               "bolt://127.0.0.1:7999", "--password", "x"], capsys, monkeypatch)
    assert code == 2 and "cannot reach Neo4j" in err and len(err.strip().splitlines()) == 1


def test_measured_profiles_time_any_processor_of_the_chain(tmp_path, capsys, monkeypatch):
    """A profile measured for the cloud's processor (neither --device nor --server) prices the
    cloud tier; one for a processor the chain does not run on is refused."""
    import dataclasses

    from tests.helpers import chain, save
    from toolkit.measure import measure
    from toolkit.onnx import read_onnx

    path = save(chain(4, width=64), tmp_path / "c.onnx")
    graph = read_onnx(path)
    files = {}
    for processor in ("h100", "a100"):
        profile = dataclasses.replace(measure(path, graph, processor),
                                      forward_ms={n: 1000.0 for n in graph.layers},
                                      backward_ms={})
        files[processor] = tmp_path / f"{processor}.json"
        files[processor].write_text(json.dumps(profile.to_dict()))
    args = ["partition", str(path), "--tiers", str(EXAMPLE), "--batch", "1", "--json"]
    code, out, err = run_main([*args, "--measured", str(files["h100"])], capsys, monkeypatch)
    assert code == 0, err
    data = json.loads(out)
    plain = api.partition_tiers(graph, *api.make_chain(api.make_scenario(batch=1), str(EXAMPLE)))
    cloud = data["partition"]["tiers"][2]
    assert cloud["layers"] == []  # a second per layer on the cloud: nothing goes there
    assert plain.delay.total == pytest.approx(data["delay_ms"]["total"])  # nor did it before
    names, boundaries = api.make_chain(api.make_scenario(batch=1), str(EXAMPLE),
                                       measured=[str(files["h100"])])
    costs = api.tier_costs(graph, names, boundaries)
    assert (costs.compute_ms[:, 2] >= 2000.0).all()  # forward + backward, measured
    assert (costs.compute_ms[:, :2] < 1000.0).all()  # the other tiers keep their rooflines
    code, _, err = run_main([*args, "--measured", str(files["a100"])], capsys, monkeypatch)
    assert code == 2 and "'a100'" in err and "'h100'" in err


def test_each_tier_reports_its_processors_training_memory(zoo_path):
    """A U-shape's head and tail share one device: both report the memory of all its layers;
    every tier's figure is the memory model's peak of its processor's layers."""
    from toolkit.costgraph import peak_memory

    graph = api.load_graph(str(zoo_path("resnet18")), "resnet18")
    scenario = api.make_scenario(link="wifi5", batch=8)
    result = api.partition_tiers(graph, *api.make_chain(scenario, u_shape=True), "general")
    tiers = result.to_dict()["partition"]["tiers"]
    device = result.layers_on(0) + result.layers_on(2)
    assert tiers[0]["peak_memory_bytes"] == tiers[2]["peak_memory_bytes"] \
        == peak_memory(result.graph.base, device) > 0
    assert tiers[1]["peak_memory_bytes"] == peak_memory(result.graph.base, result.layers_on(1))
