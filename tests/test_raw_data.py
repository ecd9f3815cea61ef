"""Raw data never leaves the device, in any disguise, on every zoo model and exporter.

The oracle here is written independently of `LayerGraph.raw_data_readers`: a tensor is raw
when it is a model input or every input of its parameter-free producer is raw. No such tensor
may be a cut tensor, at any link rate of a sweep from 1 to 1000 Mbit/s.
"""

from __future__ import annotations

import pytest

from toolkit import api, zoo
from toolkit.graph import LayerGraph

RATES_MBPS = (1, 3, 10, 30, 100, 300, 1000)


def raw_tensors(graph: LayerGraph) -> set[str]:
    raw = set(graph.inputs)
    changed = True
    while changed:  # a fixed point, not a topological sweep: independent of the solver's order
        changed = False
        for layer in graph:
            if layer.params == 0 and layer.inputs and set(layer.inputs) <= raw \
                    and not set(layer.outputs) <= raw:
                raw |= set(layer.outputs)
                changed = True
    return raw


@pytest.mark.parametrize("exporter", zoo.EXPORTERS)
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_no_raw_tensor_crosses_at_any_rate(zoo_path, name, exporter):
    graph = api.load_graph(str(zoo_path(name, exporter)), name)
    raw = raw_tensors(graph)
    for device, server in (("jetson-nano", "rtx-3090"), ("jetson-agx-orin", "h100")):
        for rate in RATES_MBPS:
            scenario = api.make_scenario(device=device, server=server, link=None,
                                         uplink=f"{rate}Mbps", downlink=f"{rate}Mbps",
                                         latency="2ms", batch=8)
            result = api.partition_model(graph, scenario)
            crossing = set(result.to_dict()["partition"]["cut_tensors"])
            assert not crossing & raw, (device, rate, sorted(crossing & raw))


def test_reshaped_token_ids_stay_on_the_device(zoo_path):
    """GPT-2's token ids reach the embedding through parameter-free layers: those stay, and
    the pin says why."""
    graph = api.load_graph(str(zoo_path("gpt2")), "gpt2")
    costs = api.partition_model(graph, api.make_scenario(link=None, uplink="1000Mbps",
                                                         downlink="1000Mbps")).graph
    reasons = {costs.names[i]: costs.pin_reasons[i] for i in range(len(costs))
               if costs.pinned[i]}
    assert "reads raw data (no trainable layer on its path)" in reasons.values()
    assert "reads raw input" in reasons.values()
    derived = raw_tensors(graph) - set(graph.inputs)
    assert derived, "GPT-2's export forwards raw ids through parameter-free layers"
    for t in derived:
        for consumer in graph.tensors[t].consumers:
            assert consumer in reasons
