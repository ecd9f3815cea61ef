"""Both solvers against brute force over every monotone partition, on adversarial cost graphs.

Thousands of seeded random models per run: DAGs with multi-output layers, fan-out, several raw
inputs (some read deep in the model, beside activations), integer tensors, parameter-free layers
forwarding raw data, layers that weights alone make (no input reaches them: Swin's bias tables),
zero costs and ties; and chains of identical blocks, some holding such a layer, whose instances
carry permuted costs (a two-output layer's outputs swapping their crossing costs, layers
swapping delays), so that instances with equal sums need different inner cuts. Latency per
message and the labels term are drawn too.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tests.oracles import brute_force_monotone, is_valid, monotone_partitions, total
from toolkit.blocks import find_blocks
from toolkit.costgraph import CostGraph, CostTensor
from toolkit.errors import PartitionError
from toolkit.graph import Layer, LayerGraph, Tensor
from toolkit.partition import solve
from toolkit.partition.baselines import best_chain_split
from toolkit.partition.blockwise import follows

CASES = 3000
TIED = (0.0, 1.0, 1.0, 2.0, 3.0, 5.0)


def _cost(rng: np.random.Generator) -> float:
    """Mostly small integers (ties and zeros), sometimes an arbitrary float."""
    return float(rng.choice(TIED)) if rng.random() < 0.7 else float(rng.uniform(0, 10))


def _layer_graph(name: str, spec: list[tuple[list[str], int, bool, list[str]]],
                 raw: dict[str, str]) -> LayerGraph:
    """spec: per layer (inputs, params, -, output dtypes); outputs are `l{i}.{k}`. A layer
    with parameters multiplies them into its inputs (MACs), so it turns raw data into
    activations."""
    tensors = {t: Tensor(t, (4,), dtype, 16, None) for t, dtype in raw.items()}
    layers = []
    for i, (inputs, params, _, dtypes) in enumerate(spec):
        outs = tuple(f"l{i}.{k}" for k in range(len(dtypes)))
        for t, dtype in zip(outs, dtypes, strict=True):
            tensors[t] = Tensor(t, (4,), dtype, 16, f"l{i}")
        layers.append(Layer(f"l{i}", "Op" if params else "Shape", tuple(inputs), outs,
                            macs=float(params), params=params, param_bytes=4 * params))
    consumed = {t for inputs, *_ in spec for t in inputs}
    outputs = [t for t in tensors if t not in consumed and tensors[t].producer is not None]
    return LayerGraph.build(name, layers, tensors, list(raw), outputs)


def random_dag(rng: np.random.Generator, late_inputs: float = 0.0) -> LayerGraph:
    """A random model; `late_inputs`: how often a layer past the third also reads a model
    input beside its activations."""
    n = int(rng.integers(2, 15))
    raw = {f"in{k}": ("float" if rng.random() < 0.6 else "int64")
           for k in range(int(rng.integers(1, 3)))}
    available = list(raw)
    weights_made: list[str] = []  # outputs no input reaches
    spec = []
    for i in range(n):
        pool = [t for t in available[-6:] if i < 2 or t not in raw]  # (inputs: early)
        k = min(len(pool), int(rng.integers(1, 4)))
        inputs = list(rng.choice(pool, size=k, replace=False)) if i else [available[0]]
        if i and rng.random() < 0.15:  # made from weights (and what weights made) alone
            inputs = [t for t in weights_made[-2:] if rng.random() < 0.5]
        elif i > 2 and late_inputs and rng.random() < late_inputs:  # a model input joined
            inputs = list(dict.fromkeys([*inputs, str(rng.choice(list(raw)))]))  # late
        elif weights_made and rng.random() < 0.6:  # what weights made, read beside activations
            inputs = list(dict.fromkeys([*inputs, weights_made[-1]]))  # (Swin's bias tables)
        dtypes = ["float" if rng.random() < 0.8 else "int64"
                  for _ in range(1 if rng.random() < 0.75 else 2)]
        spec.append((inputs, int(rng.random() < 0.5) * 10, False, dtypes))
        available += [f"l{i}.{j}" for j in range(len(dtypes))]
        if all(t in weights_made for t in inputs):
            weights_made += [f"l{i}.{j}" for j in range(len(dtypes))]
    return _layer_graph("dag", spec, raw)


def repeated_blocks(rng: np.random.Generator) -> tuple[LayerGraph, int, int]:
    """A stem, R instances of one random block of m layers, maybe a head: (graph, R, m)."""
    m = int(rng.integers(2, 5))
    repeats = int(rng.integers(2, max(3, 13 // m)))
    exit_outputs = int(rng.integers(1, 3))
    template = []  # per layer: inputs as ("e", k) entry output or (j, k) earlier layer
    for j in range(m - 1):
        sources = [("e", k) for k in range(exit_outputs)] + [
            (i, k) for i in range(j) for k in range(template[i][1])]
        picks = rng.choice(len(sources), size=min(len(sources), int(rng.integers(1, 3))),
                           replace=False)
        # after the first, a layer may read nothing but its weights (a bias table's lookup)
        inputs = [] if j and rng.random() < 0.2 else [sources[p] for p in picks]
        template.append((inputs, 1 if rng.random() < 0.7 else 2))
    # the exit reads every inner output nobody else reads, so it closes the block
    read = {s for inputs, _ in template for s in inputs}
    last = [(i, k) for i in range(m - 1) for k in range(template[i][1]) if (i, k) not in read]
    template.append((last or [(m - 2, 0)], exit_outputs))
    params = [int(rng.random() < 0.6) * 10 for _ in range(m)]
    spec: list[tuple[list[str], int, bool, list[str]]] = [
        (["in0"], 10, False, ["float"] * exit_outputs)]
    entry = 0
    for _ in range(repeats):
        base = len(spec)
        for j, (inputs, outs) in enumerate(template):
            names = [f"l{entry}.{k}" if i == "e" else f"l{base + int(i)}.{k}" for i, k in inputs]
            spec.append((names, params[j], False, ["float"] * outs))
        entry = len(spec) - 1
    if rng.random() < 0.5 and len(spec) < 14:
        spec.append(([f"l{entry}.0"], 10, False, ["float", "int64"]))
    return _layer_graph("blocks", spec, {"in0": "float"}), repeats, m


def _costs(graph: LayerGraph, rng: np.random.Generator, repeats: int = 0, m: int = 0
           ) -> CostGraph:
    """Random adversarial costs; for repeated blocks, instance costs are permutations."""
    layers = list(graph)
    index = {x.name: i for i, x in enumerate(layers)}
    device = [_cost(rng) for _ in layers]
    server = [_cost(rng) for _ in layers]
    tensors = [t for t in graph.activations()]
    crossing = {t.name: _cost(rng) for t in tensors}
    for r in range(1, repeats):  # block instances: permute instance 0's costs
        for j in range(m):
            a, b = 1 + j, 1 + r * m + j
            device[b], server[b] = device[a], server[a]
            for k, t in enumerate(layers[b].outputs):
                crossing[t] = crossing.get(layers[a].outputs[k], 0.0)
        if rng.random() < 0.5:  # swap something between two positions of this instance
            lo = 1 + r * m
            two = [x for x in layers[lo:lo + m] if len(x.outputs) == 2]
            if two and rng.random() < 0.7:
                x, y = two[0].outputs
                crossing[x], crossing[y] = crossing[y], crossing[x]
            else:
                p, q = rng.choice(m, size=2, replace=False)
                device[lo + p], device[lo + q] = device[lo + q], device[lo + p]
    reasons = graph.raw_data_readers()
    pinned = [x.name in reasons for x in layers]
    for i in range(len(layers)):
        if rng.random() < 0.08:
            pinned[i] = True
    outputs = sorted({index[graph.tensors[o].producer] for o in graph.outputs})
    return CostGraph(
        model=graph.name, names=[x.name for x in layers], ops=[x.op for x in layers],
        device_ms=device, server_ms=server, pinned=pinned,
        tensors=[CostTensor(t.name, index[t.producer], tuple(index[c] for c in t.consumers),
                            16.0, crossing[t.name], t.dtype == "float") for t in tensors],
        latency_ms=float(rng.choice((0.0, 1.0, 4.0, rng.uniform(0, 20)))),
        labels_ms=float(rng.choice((0.0, 2.0, rng.uniform(0, 10)))), outputs=outputs,
    )


def _check(graph: LayerGraph, costs: CostGraph, rng: np.random.Generator) -> str:
    """Both solvers against brute force; how the block-wise one went about layers weights
    alone make: 'none' beyond a cut vertex, 'chain' (they follow their readers beyond one),
    'general' (it fell back)."""
    free = [i for i in range(len(costs)) if not costs.pinned[i]]
    server = {int(rng.choice(free))} if free and rng.random() < 0.15 else set()
    expected = brute_force_monotone(costs, server)
    prefixes = [total(costs, set(range(k))) for k in range(len(costs) + 1)
                if is_valid(costs, set(range(k)), server)]
    if prefixes:
        chain_delay, k = best_chain_split(costs.with_pins(server=server))
        assert chain_delay == pytest.approx(min(prefixes), rel=1e-9, abs=1e-9)
        assert chain_delay == pytest.approx(total(costs, set(range(k))), rel=1e-9, abs=1e-9)
    blocks = find_blocks(graph)
    pinned = costs.with_pins(server=server)
    beyond = [v for v in blocks.weight_only if blocks.cut_vertices and
              v > blocks.cut_vertices[0]]
    how = "none" if not beyond else \
        "chain" if follows(pinned, blocks.weight_only) else "general"
    for method in ("general", "blockwise"):
        try:
            result = solve(costs.with_pins(server=server), method, with_baselines=False,
                           blocks=blocks)
        except PartitionError:
            assert expected == float("inf"), method
            continue
        assert result.delay.total == pytest.approx(total(costs, set(result.device)),
                                                   rel=1e-9, abs=1e-9), method
        assert result.delay.total == pytest.approx(expected, rel=1e-9, abs=1e-9), method
        assert result.method == ("general" if how == "general" or not follows(
            pinned, blocks.weight_only) else method)  # a fallback says so
    return how


@pytest.mark.parametrize("part", range(3))
def test_both_solvers_equal_brute_force_on_random_dags(part):
    rng = np.random.default_rng(1000 + part)
    ways = Counter(_check(graph, _costs(graph, rng), rng)
                   for graph in (random_dag(rng) for _ in range(CASES // 3)))
    # (fewer chains than before a layer's path from the input past earlier cut vertices was
    # seen: those cut vertices, which it left standing, were no cut vertices)
    assert ways["chain"] > CASES // 100 and ways["general"] > CASES // 60, ways


def test_both_solvers_equal_brute_force_with_model_inputs_read_late():
    """A layer deep in the graph that reads a model input beside activations (a second input
    joined late) is fed by the input: the layers before it are no cut vertices."""
    rng = np.random.default_rng(1500)
    late = 0
    for _ in range(CASES // 3):
        graph = random_dag(rng, late_inputs=0.3)
        raw = set(graph.inputs)
        late += any(raw.intersection(layer.inputs) and any(
            graph.tensors[t].producer is not None for t in layer.inputs) for layer in graph)
        _check(graph, _costs(graph, rng), rng)
    assert late > CASES // 10, "the generator must read model inputs late"


@pytest.mark.parametrize("part", range(3))
def test_both_solvers_equal_brute_force_on_blocks_with_permuted_costs(part):
    rng = np.random.default_rng(2000 + part)
    shared = 0
    ways: Counter[str] = Counter()
    for _ in range(CASES // 3):
        graph, repeats, m = repeated_blocks(rng)
        blocks = find_blocks(graph)
        shared += any(t.count > 1 for t in blocks.types)
        ways[_check(graph, _costs(graph, rng, repeats, m), rng)] += 1
    assert shared > CASES // 6, "the generator must produce repeated block types"
    assert ways["chain"] > CASES // 60 and ways["general"] > CASES // 60, ways


def test_latency_per_message_prefers_the_multi_tensor_cut():
    """Two tensors cross a cut that beats local training only when latency is paid once."""
    spec: list[tuple[list[str], int, bool, list[str]]] = [
        (["in0"], 10, False, ["float", "float"]), (["l0.0"], 10, False, ["float"]),
        (["l0.1"], 10, False, ["float"]), (["l1.0", "l2.0"], 10, False, ["float"])]
    graph = _layer_graph("fork", spec, {"in0": "float"})
    costs = _costs(graph, np.random.default_rng(0))
    costs = CostGraph(costs.model, costs.names, costs.ops, [1.0, 10.0, 10.0, 10.0],
                      [0.0, 1.0, 1.0, 1.0], costs.pinned,
                      [CostTensor(t.name, t.producer, t.consumers, 1.0, 1.0)
                       for t in costs.tensors],
                      latency_ms=10.0, labels_ms=0.0, outputs=costs.outputs)
    result = solve(costs)
    # device-only 31; cut after l0: 1 + 3 + 2 crossings + one latency (10) = 16
    assert result.device == [0]
    assert result.delay.total == pytest.approx(16.0)
    assert result.delay.latency == pytest.approx(10.0)


def test_oracle_enumerates_only_monotone_sets():
    graph = random_dag(np.random.default_rng(5))
    costs = _costs(graph, np.random.default_rng(5))
    seen = list(monotone_partitions(costs))
    assert len(seen) == len({frozenset(s) for s in seen})
    for device in seen:
        assert all(not (w in device and u not in device) for u, w in costs.edges())
