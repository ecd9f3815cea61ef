"""Cut vertices, segments and block types; block-wise partition equals the general min cut."""

from __future__ import annotations

import json

import networkx as nx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import chain, save
from tests.oracles import brute_force
from toolkit import api, zoo
from toolkit.blockcache import model_blocks
from toolkit.blocks import cut_vertices, find_blocks
from toolkit.costgraph import CostGraph, CostTensor
from toolkit.costs import BUILTIN_SCENARIOS, build_cost_graph
from toolkit.partition import solve
from toolkit.synthetic import Spec, stack


@st.composite
def dags(draw, max_layers=16):
    n = draw(st.integers(min_value=1, max_value=max_layers))
    edges = set()
    for w in range(1, n):
        preds = draw(st.sets(st.integers(min_value=0, max_value=w - 1), max_size=3))
        edges |= {(u, w) for u in preds}
    return n, sorted(edges)


@given(dags(), st.data())
def test_cut_vertices_are_exactly_the_layers_every_path_passes(graph, data):
    """The input feeds every layer nothing feeds and every layer that reads a model input,
    deep in the graph or not (a second input joined late: the layers before it were taken
    for cut vertices, and the three-tier block-wise solve came out above the optimum)."""
    n, edges = graph
    read_input = sorted(data.draw(st.sets(st.integers(0, n - 1), max_size=2)))
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from(edges)
    for v in range(n):
        if g.in_degree(v) == 0 or v in read_input:
            g.add_edge("in", v)
        if g.out_degree(v) == 0:
            g.add_edge(v, "out")
    expected = []
    for v in range(n):
        h = g.copy()
        h.remove_node(v)
        if not nx.has_path(h, "in", "out"):
            expected.append(v)
    assert cut_vertices(n, edges, read_input=read_input) == expected


@given(dags(), st.data())
def test_layers_off_the_input_path_share_a_segment_with_their_readers(graph, data):
    """Layers weights alone make (no input reaches them) are fed by no virtual input: the
    cut vertices are exactly those every input-to-output path passes (a layer only they feed
    starts such a path: it makes an output from weights alone, and was taken for held by the
    cut vertices before it, so the block-wise solve came out above the optimum); every such
    layer sits in one segment with all the layers it feeds; and no cut vertex is lost to
    treating them as fed by the input."""
    n, edges = graph
    producers: dict[int, set[int]] = {w: set() for w in range(n)}
    for u, w in edges:
        producers[w].add(u)
    off: set[int] = set()
    for v in range(1, n):  # layer 0 reads the input; a layer off the path reads only such
        if producers[v] <= off and data.draw(st.booleans()):
            off.add(v)
    off = {v for v in off if any(u == v for u, _ in edges)}  # and feeds a layer
    cuts = cut_vertices(n, edges, off)
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from(edges)
    for v in range(n):  # (a layer only they feed makes an output from weights alone: a path
        if v not in off and producers[v] <= off:  # from the input starts there too)
            g.add_edge("in", v)
        if g.out_degree(v) == 0:
            g.add_edge(v, "out")
    expected = []
    for v in range(n):
        h = g.copy()
        h.remove_node(v)
        # (a layer an off-path layer jumps over is none: the off-path layer sits
        # with the layers it feeds, in one segment, wherever the order put it)
        jumped = any(u < v < w for u, w in edges if u in off)
        if v not in off and not jumped and not nx.has_path(h, "in", "out"):
            expected.append(v)
    assert cuts == expected
    for v in cuts:
        assert not any(u < v < w for u, w in edges)
    segment = [sum(c < v for c in cuts) for v in range(n)]
    for u, w in edges:
        if u in off:
            assert segment[u] == segment[w]
    assert set(cut_vertices(n, edges)) - off <= set(cuts)


def test_a_lookup_from_weights_in_every_block_keeps_the_blocks_apart(zoo_path):
    """Each block reads a table lookup made from weights alone (Swin's relative-position
    bias): fed by the input, the last lookup would leave no cut vertex before it."""
    edges = [(0, 2), (1, 2), (2, 4), (3, 4), (4, 6), (5, 6)]  # 1, 3, 5: the lookups
    assert cut_vertices(7, edges) == [6]
    assert cut_vertices(7, edges, [1, 3, 5]) == [0, 2, 4, 6]
    swin = find_blocks(api.load_graph(str(zoo_path("swin_t")), "swin_t"))
    assert len(swin.weight_only) >= 12  # a bias lookup in each of the 12 transformer blocks
    assert len(swin.cut_vertices) >= 3 * 12  # (7 when the lookups were fed by the input)
    assert max(t.count for t in swin.types) >= 3  # stage 3's pairs of blocks repeat


@st.composite
def repeated_block_models(draw):
    """A random single-entry template, stacked 1-6 times, with random or repeated costs."""
    size = draw(st.integers(min_value=1, max_value=5))
    specs = []
    for j in range(size):
        choices = st.sets(st.integers(min_value=-1, max_value=j - 1), min_size=1, max_size=2)
        preds = tuple(sorted(draw(choices)))
        specs.append(Spec(f"Op{j}", 0, draw(st.integers(0, 3)), draw(st.integers(1, 50)), preds))
    graph = stack(specs, draw(st.integers(min_value=1, max_value=6)), "random-blocks")
    n = len(graph)
    costs = st.floats(min_value=0.0, max_value=50.0, allow_nan=False)
    repeat_costs = draw(st.booleans())
    if repeat_costs:  # equal costs per template position: exercises the shared inner values
        per_position = [draw(st.lists(costs, min_size=size, max_size=size)) for _ in range(3)]
        dev, srv, cross = ([draw(costs)] + [p[(i - 1) % size] for i in range(1, n)]
                           for p in per_position)
    else:
        dev, srv, cross = (draw(st.lists(costs, min_size=n, max_size=n)) for _ in range(3))
    index = {name: i for i, name in enumerate(graph.layers)}
    tensors = [
        CostTensor(t.name, index[t.producer], tuple(index[c] for c in t.consumers), t.bytes,
                   cross[index[t.producer]])
        for t in graph.activations()
    ]
    cg = CostGraph("random-blocks", list(graph.layers), [x.op for x in graph], dev, srv,
                   [x.reads_input for x in graph], tensors)
    return graph, cg


@given(repeated_block_models())
def test_blockwise_equals_general_and_brute_force_on_repeated_random_blocks(model):
    graph, costs = model
    blocks = find_blocks(graph)
    general = solve(costs, "general", with_baselines=False)
    blockwise = solve(costs, "blockwise", blocks=blocks, with_baselines=False)
    assert blockwise.delay.total == pytest.approx(general.delay.total, rel=1e-9, abs=1e-9)
    if len(costs) <= 14:
        assert blockwise.delay.total == pytest.approx(brute_force(costs), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_blockwise_equals_general_on_every_zoo_model_and_scenario(zoo_path, name):
    graph = api.load_graph(str(zoo_path(name)), name)
    blocks = find_blocks(graph)
    for scenario_name, settings in BUILTIN_SCENARIOS.items():
        costs = build_cost_graph(graph, api.make_scenario(**settings))
        general = solve(costs, "general", with_baselines=False)
        blockwise = solve(costs, "blockwise", blocks=blocks, with_baselines=False)
        assert blockwise.delay.total == pytest.approx(general.delay.total, rel=1e-9), (
            scenario_name
        )


def test_segments_partition_the_layers_and_close_at_cut_vertices(zoo_path):
    graph = api.load_graph(str(zoo_path("densenet121")), "densenet121")
    blocks = find_blocks(graph)
    covered = [p for s in blocks.segments for p in s.layers]
    assert covered == list(range(len(graph)))
    assert [s.exit for s in blocks.segments if s.exit is not None] == blocks.cut_vertices
    assert max(len(s.layers) for s in blocks.segments) > 50  # dense blocks have no cut inside


@pytest.mark.parametrize(("name", "block", "count"), [
    ("resnet152", "Bottleneck layer3.N", 35),
    ("vit_b_16", "EncoderBlock encoder.layers.encoder_layer_N [self_attention]", 12),
    ("vit_b_16", "EncoderBlock encoder.layers.encoder_layer_N [mlp]", 12),
    ("gpt2", "GPT2Block model.transformer.h.N [attn]", 12),
    ("gpt2", "GPT2Block model.transformer.h.N [mlp]", 12),
])
def test_identical_blocks_map_to_one_named_type(zoo_path, name, block, count):
    blocks = find_blocks(api.load_graph(str(zoo_path(name)), name))
    named = {t.name: t for t in blocks.types}
    assert named[block].count == count


def test_signatures_are_stable_across_reads(zoo_path):
    a = find_blocks(api.load_graph(str(zoo_path("resnet50")), "resnet50"))
    b = find_blocks(api.load_graph(str(zoo_path("resnet50")), "other-name"))
    assert [t.signature for t in a.types] == [t.signature for t in b.types]


@pytest.mark.parametrize("name", ["resnet18", "resnet152", "vit_b_16", "bert_base"])
def test_both_exporters_give_the_same_block_type_counts(zoo_path, name):
    counts = []
    for exporter in ("torchscript", "dynamo"):
        blocks = find_blocks(api.load_graph(str(zoo_path(name, exporter)), name))
        counts.append(sorted(t.count for t in blocks.types))
    assert counts[0] == counts[1]


def test_block_structure_is_cached_per_model_file_and_a_bad_cache_is_ignored(
        tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITCUT_CACHE", str(tmp_path / "cache"))
    path = save(chain(6, width=16), tmp_path / "c.onnx")
    graph = api.load_graph(str(path))
    first, first_ms = model_blocks(graph)
    files = list((tmp_path / "cache" / "blocks").glob("*.json"))
    assert len(files) == 1 and first_ms > 0
    again, again_ms = model_blocks(api.load_graph(str(path)))
    assert again_ms == 0.0
    assert again.cut_vertices == first.cut_vertices and again.types == first.types
    assert [s.layers for s in again.segments] == [s.layers for s in first.segments]
    other = api.load_graph(str(path), dims={"batch": 1})  # other reader options: other key
    assert other.sha256 != graph.sha256
    files[0].write_text("{not json")
    recomputed, ms = model_blocks(api.load_graph(str(path)))
    assert ms > 0 and recomputed.cut_vertices == first.cut_vertices
    assert json.loads(files[0].read_text())["layer_count"] == len(graph)


def test_a_types_main_child_is_what_its_instances_share():
    """ALBERT's one layer called eleven times: TorchScript names the calls' children
    `attention_1` ... `attention_11`; the type's main child is `attention_N`, not the first
    instance's `attention_1`. Children that share nothing fall back to the first instance's."""
    from toolkit.blocks import Segment, _main_child
    from toolkit.graph import Layer

    def instances(children: list[str]) -> tuple[list[Layer], list[Segment]]:
        """One instance per child: two layers in it, one in a sibling (`out`)."""
        layers: list[Layer] = []
        for c in children:
            layers += [Layer(f"l{len(layers) + j}", "MatMul", (), (), module=path)
                       for j, path in enumerate((f"enc.layer.{c}.q", f"enc.layer.{c}.k",
                                                 "enc.layer.out"))]
        return layers, [Segment(k, (3 * k, 3 * k + 1, 3 * k + 2), None, None, 0)
                        for k in range(len(children))]

    assert _main_child(*instances([f"attention_{k}" for k in range(1, 12)])) == "attention_N"
    assert _main_child(*instances(["mlp", "mlp"])) == "mlp"
    assert _main_child(*instances(["mlp", "attn"])) == "mlp"
