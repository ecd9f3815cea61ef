"""Training memory and the least-delay partition under a device memory budget."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tests.helpers import run_main
from tests.oracles import is_valid, monotone_partitions, total
from tests.test_exactness import _costs, random_dag
from toolkit import api
from toolkit.costgraph import CostGraph, peak_memory
from toolkit.costs import build_cost_graph
from toolkit.errors import PartitionError
from toolkit.memory import ModelMemory, SavedTensor, kept_by
from toolkit.partition.budget import least_device_peak, smallest_device, solve_with_budget
from toolkit.tiergraph import TierGraph

TIED = (0.0, 1.0, 1.0, 2.0, 5.0)


def _with_memory(costs: CostGraph, rng: np.random.Generator) -> CostGraph:
    """Random memory terms (whole bytes, as a model's are; ties and zeros among them): state,
    gradients and workspace per layer, and kept tensors with random keepers among each
    tensor's producer and consumers, some alive over a random span, some held while sent."""
    n = len(costs)

    def amount() -> float:
        return float(rng.choice(TIED)) if rng.random() < 0.5 else float(rng.integers(0, 900))

    saved = []
    other = np.random.default_rng(n * 1000 + len(costs.tensors))  # keeps rng's stream as it was
    for t in costs.tensors:
        candidates = [t.producer, *t.consumers]
        keepers = sorted({int(c) for c in candidates if rng.random() < 0.5})
        if keepers:
            span = sorted(int(x) for x in other.integers(0, n, 2))  # some alive for a span
            saved.append(SavedTensor(amount(), tuple(keepers), *(
                (min(span[0], keepers[0]), max(span[1], keepers[0]))
                if other.random() < 0.3 else (-1, -1))))
        if t.consumers and other.random() < 0.3:  # held while a reader is on another tier
            saved.append(SavedTensor(float(other.integers(0, 300)), (int(t.producer),), start=0,
                                     readers=tuple(int(c) for c in t.consumers)))
    memory = ModelMemory([amount() for _ in range(n)], [amount() for _ in range(n)],
                         [amount() for _ in range(n)], saved)
    return dataclasses.replace(costs, memory=memory)


def _brute_force(costs: CostGraph, budget: float) -> float:
    best = float("inf")
    for device in monotone_partitions(costs):
        if is_valid(costs, device) and peak_memory(costs, device) <= budget:
            best = min(best, total(costs, device))
    return best


@pytest.mark.parametrize("seed", range(2))
def test_budgeted_optimum_equals_brute_force_on_random_dags(seed):
    rng = np.random.default_rng(100 + seed)
    checked = infeasible = binding = 0
    while checked < 150:
        costs = _with_memory(_costs(random_dag(rng), rng), rng)
        everything = peak_memory(costs, range(len(costs)))
        smallest = peak_memory(costs, smallest_device(costs))
        budget = float(rng.integers(int(min(smallest, everything) * 0.9),
                                    max(smallest, everything) + 2)) \
            if rng.random() < 0.85 else float(rng.choice(TIED))
        expected = _brute_force(costs, budget)
        try:
            result = solve_with_budget(costs, budget)
        except PartitionError as exc:
            if "no partition fits" in str(exc):  # even the least peak is too big
                assert expected == float("inf")
                least, device = least_device_peak(costs)
                assert least > budget and is_valid(costs, frozenset(device))
                assert least == pytest.approx(min(
                    peak_memory(costs, d) for d in monotone_partitions(costs)
                    if is_valid(costs, d)))
                infeasible += 1
                checked += 1
                continue
            raise
        device = set(result.partition.device)
        assert is_valid(costs, device) and peak_memory(costs, device) <= budget + 1e-9
        # integer units inside the solver (ns): equal to 1e-6 ms per term
        assert result.partition.delay.total == pytest.approx(expected, abs=1e-5 * len(costs))
        assert result.lower_bound_ms <= result.partition.delay.total + 1e-9
        assert result.gap == 0.0
        if result.best_single_split_ms is not None:
            assert result.partition.delay.total <= result.best_single_split_ms + 1e-5 * len(costs)
        binding += result.unconstrained_peak_bytes > budget
        checked += 1
    assert infeasible >= 5 and binding >= 30, (infeasible, binding)


def test_memory_terms_follow_the_formula():
    from toolkit.graph import Layer

    conv = Layer("c", "Conv", ("x",), ("y",), params=1000, param_bytes=4000)
    relu = Layer("r", "Relu", ("y",), ("z",))
    scale = Layer("s", "Mul", ("z",), ("w",))
    assert kept_by(conv) == ("x",) and kept_by(relu) == ("z",) and kept_by(scale) == ()
    assert kept_by(Layer("a", "Add", ("x", "z"), ("y",))) == ()
    assert kept_by(Layer("v", "Reshape", ("x",), ("y",))) == ()
    assert kept_by(Layer("m", "Mul", ("x", "z"), ("y",))) == ("x", "z")
    # state and gradients; a tensor kept by two layers once, from its first keeper; peak at
    # the moment the backward reaches the position where kept + gradients + workspace is top
    memory = ModelMemory(state=[4000.0 * 3, 0.0, 0.0], grads=[4000.0, 0.0, 0.0],
                         workspace=[50.0, 20.0, 10.0],
                         saved=[SavedTensor(100.0, (0,)), SavedTensor(30.0, (1, 2))])
    costs = CostGraph("m", ["c", "r", "s"], ["Conv", "Relu", "Mul"], [1.0] * 3, [1.0] * 3,
                      [False] * 3, [], memory=memory)
    # position 0: kept 100 + grads 4000 + ws 50; position 1: 130 + 0 + 20; 2: 130 + 0 + 10
    assert peak_memory(costs, [0, 1, 2]) == 12000 + 4150
    assert peak_memory(costs, [1, 2]) == 30 + 20  # only what its layers keep and need
    assert peak_memory(costs, []) == 0


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "densenet121", "mobilenet_v2"])
def test_zoo_budgets_beat_the_best_fitting_single_split(zoo_path, name):
    graph = api.load_graph(str(zoo_path(name)), name)
    costs = build_cost_graph(graph, api.make_scenario(batch=32, uplink="10Mbps",
                                                      downlink="10Mbps"))
    full = peak_memory(costs, range(len(costs)))
    for fraction in (0.3, 0.6, 0.9):
        budget = fraction * full
        try:
            result = solve_with_budget(costs, budget)
        except PartitionError as exc:
            assert "no partition fits" in str(exc)
            continue
        assert result.peak_bytes <= budget and result.gap == 0.0
        assert result.lower_bound_ms <= result.partition.delay.total * (1 + 1e-9)
        assert result.partition.delay.total >= result.unconstrained_ms * (1 - 1e-9)
        if result.best_single_split_ms is not None:
            assert result.partition.delay.total <= result.best_single_split_ms * (1 + 1e-9)


def test_partition_cli_reports_memory_and_honours_a_budget(zoo_path, capsys, monkeypatch):
    model = str(zoo_path("googlenet"))
    args = ["partition", model, "--uplink", "10Mbps", "--downlink", "10Mbps", "--json"]
    code, out, err = run_main(args, capsys, monkeypatch)
    assert code == 0, err
    free = json.loads(out)
    assert free["memory"]["device_peak_bytes"] > 1.2e9  # most of GoogLeNet on the device
    assert free["memory"]["device_memory_bytes"] == 4e9  # the Jetson Nano's
    code, out, err = run_main([*args, "--device-memory", "1GB"], capsys, monkeypatch)
    assert code == 0, err
    capped = json.loads(out)
    assert capped["memory"]["device_peak_bytes"] <= 1e9 and capped["memory"]["gap"] == 0.0
    assert capped["delay_ms"]["total"] >= free["delay_ms"]["total"]
    code, out, err = run_main([*args[:-1], "--device-memory", "1GB"], capsys, monkeypatch)
    assert code == 0 and "1 GB" in out and "proven optimal" in out
    code, _, err = run_main([*args, "--device-memory", "1MB"], capsys, monkeypatch)
    assert code == 2 and "no partition fits 0.001 GB" in err and "needs" in err
    code, _, err = run_main([*args, "--device-memory", "lots"], capsys, monkeypatch)
    assert code == 2 and "--device-memory" in err


def test_decomposed_gelu_and_silu_keep_what_the_fused_op_keeps():
    from toolkit.graph import Layer
    from toolkit.memory import fused_activations

    gelu = [Layer("fc", "MatMul", ("h",), ("x",)), Layer("d", "Div", ("x",), ("a",)),
            Layer("e", "Erf", ("a",), ("b",)), Layer("p", "Add", ("b",), ("c",)),
            Layer("m", "Mul", ("x", "c"), ("y",)), Layer("h2", "Mul", ("y",), ("z",))]
    assert fused_activations(gelu) == {1: (), 2: (), 3: (), 4: ("x",)}
    silu = [Layer("s", "Sigmoid", ("x",), ("g",)), Layer("m", "Mul", ("x", "g"), ("y",))]
    assert fused_activations(silu) == {0: (), 1: ("x",)}
    # a squeeze-and-excitation gate multiplies other features by the sigmoid: not a SiLU
    gate = [Layer("s", "Sigmoid", ("w",), ("g",)), Layer("m", "Mul", ("x", "g"), ("y",))]
    assert fused_activations(gate) == {}
    assert kept_by(gate[0]) == ("g",) and kept_by(gate[1]) == ("x", "g")


def _per_tier_masks(chain: TierGraph, rng: np.random.Generator) -> TierGraph:
    """Some kept tensors made dropout masks, smaller on CUDA, and each tier's processor on a
    random backend: the tiers' memories differ (`ModelMemory.on`), as a CPU device's and a
    GPU server's do."""
    memory = chain.base.memory
    assert memory is not None
    variants = {j: (x, dataclasses.replace(x, nbytes=float(rng.integers(0, int(x.nbytes) + 1))))
                for j, x in enumerate(memory.saved) if not x.readers and rng.random() < 0.4}
    memory = dataclasses.replace(memory, variants=variants)
    return dataclasses.replace(chain, memories=[memory.on(str(rng.choice(["cpu", "cuda"])))
                                                for _ in chain.tiers])


@pytest.mark.parametrize("seed", range(2))
def test_budgeted_tierings_equal_brute_force(seed):
    """Three-tier chains (U-shapes among them: head and tail share the device's memory) with
    random memory, each processor's own (`_per_tier_masks`), and budgets on some of them,
    against every tiering."""
    import itertools

    from tests.test_tiers import three_tiers
    from toolkit.partition.budget import solve_tiers_with_budget
    from toolkit.partition.tiers import solve_tiers
    from toolkit.tiergraph import check_tiers

    rng = np.random.default_rng(40 + seed)
    masks = np.random.default_rng(140 + seed)  # (rng's stream stays as it was)
    checked = binding = infeasible = differing = 0
    while checked < 60:
        graph = random_dag(rng)
        if len(graph) > 7:
            continue
        chain = _per_tier_masks(three_tiers(_with_memory(_costs(graph, rng), rng), rng), masks)
        differing += len({tuple(x.nbytes for x in m.saved) for m in chain.memories if m}) > 1
        try:  # budgets around what the unconstrained optimum needs: often binding
            free = solve_tiers(chain, "general", with_baselines=False).tier
        except PartitionError:
            free = np.zeros(len(graph), dtype=np.int64)
        needs = {name: chain.peak_of(name, [v for v in range(len(graph))
                                            if chain.tiers[free[v]] == name])
                 for name in chain.tiers}
        floor = {name: 0.0 for name in needs}  # the device must hold its pinned layers
        floor[chain.tiers[0]] = chain.peak_of(chain.tiers[0], np.flatnonzero(chain.highest == 0))
        budgets = {name: float(int(floor[name] + (need - floor[name]) * rng.uniform(0, 1.2)))
                   for name, need in needs.items() if rng.random() < 0.6} \
            or {chain.tiers[0]: float(rng.integers(0, 50))}

        def fits(tier: tuple[int, ...], budgets=budgets, chain=chain) -> bool:
            return all(chain.peak_of(name, [v for v, t in enumerate(tier)
                                            if chain.tiers[t] == name]) <= budget
                       for name, budget in budgets.items())

        best = float("inf")
        for tier in itertools.product(range(chain.k), repeat=len(graph)):
            try:
                value = check_tiers(chain, np.array(tier)).total
            except PartitionError:
                continue
            if value < best and fits(tier):
                best = value
        try:
            result = solve_tiers_with_budget(chain, budgets)
        except PartitionError as exc:
            assert best == float("inf"), exc  # none fits, or the pins allow none at all
            assert "no tiering fits" in str(exc) or "no valid" in str(exc), exc
            infeasible += 1
            checked += 1
            continue
        assert fits(tuple(int(t) for t in result.tier))
        assert result.delay.total == pytest.approx(best, abs=1e-5 * len(graph) * chain.k)
        binding += result.memory["unconstrained_ms"] < result.delay.total - 1e-9
        checked += 1
    assert binding >= 5, (binding, infeasible)
    assert differing >= 10, differing  # tiers whose memories differ were solved


def test_chain_budgets_from_the_cli(zoo_path, capsys, monkeypatch):
    from tests.test_tiers import EXAMPLE

    model = str(zoo_path("resnet18"))
    args = ["partition", model, "--tiers", str(EXAMPLE), "--json"]
    code, out, err = run_main(args, capsys, monkeypatch)
    assert code == 0, err
    free = json.loads(out)
    edge = free["partition"]["tiers"][1]["peak_memory_bytes"]
    assert edge > 0.2e9  # the unconstrained optimum trains on the edge
    code, out, err = run_main([*args, "--tier-memory", "edge=0.2GB"], capsys, monkeypatch)
    assert code == 0, err
    capped = json.loads(out)
    assert capped["partition"]["tiers"][1]["peak_memory_bytes"] <= 0.2e9
    assert capped["memory"]["gap"] == 0.0 and capped["memory"]["budgets_bytes"] == {
        "edge": 0.2e9}
    assert capped["delay_ms"]["total"] >= free["delay_ms"]["total"]
    for bad, message in [("edge", "TIER=SIZE"), ("edge=lots", "cannot read memory size"),
                         ("fog=1GB", "no tier named 'fog'")]:
        code, _, err = run_main([*args, "--tier-memory", bad], capsys, monkeypatch)
        assert code == 2 and message in err, (bad, err)
    code, _, err = run_main(["partition", model, "--tier-memory", "edge=1GB"], capsys,
                            monkeypatch)
    assert code == 2 and "--tiers or --u-shape" in err
