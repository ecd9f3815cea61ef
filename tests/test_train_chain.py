"""Real split training along a tier chain: one process per tier, relayed tensors and
gradients, labels that stay home in a U-shape, each link shaped by the kernel."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import onnx
import pytest
from onnx import helper

from tests.helpers import assert_shaped, model, run_main, save, schema, vi, weight
from toolkit import api
from toolkit.train.peer import LABELS

WIDTH = 4096
BATCH = 4
# fc1 on the device, relu on the middle tier, the skip Add and fc2 on the last: h is made on
# tier 0 and read on tiers 1 and 2, so the middle tier relays it (and its gradient)
TIERS = {"fc1": 0, "relu": 1, "skip": 2, "fc2": 2}


def _skip_model(tmp_path: Path) -> Path:
    """x[4, 64] -> fc1 -> h -> Relu -> r; y = fc2(r + h)[4, 10]."""
    m = model(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Add", ["r", "h"], ["a"], name="skip"),
         helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2")],
        [vi("x", [BATCH, 64])], [vi("y", [BATCH, 10])],
        [weight("w1", 64, WIDTH), weight("w2", WIDTH, 10, seed=1)],
    )
    for t in m.graph.initializer:  # small weights: the loss falls smoothly
        t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * 0.01, t.name))
    return save(m, tmp_path / "skip.onnx")


def _chain_file(tmp_path: Path, rates: list[tuple[str, str]]) -> str:
    tiers = ["device", "edge", "cloud"]
    text = "".join(
        f'[[tier]]\nname = "{name}"\nprocessor = "cpu-server"\n'
        + (f'uplink = "{rates[t - 1][0]}"\ndownlink = "{rates[t - 1][1]}"\nlatency = "0ms"\n'
           if t else "")
        for t, name in enumerate(tiers))
    path = tmp_path / "chain.toml"
    path.write_text(text)
    return str(path)


def _scenario() -> api.Scenario:
    return api.make_scenario(device="cpu-server", server="cpu-server", uplink="1Gbps",
                             downlink="1Gbps", latency="0ms", batch=BATCH)


def test_three_tiers_relay_tensors_and_labels_at_each_links_rate(tmp_path):
    path = _skip_model(tmp_path)
    rates = [(8e6, 16e6), (32e6, 12e6)]
    chain = api.make_chain(_scenario(), _chain_file(tmp_path, [("8Mbps", "16Mbps"),
                                                               ("32Mbps", "12Mbps")]))
    result = api.train_model(str(path), _scenario(), device_layers=TIERS, iterations=5,
                             warmup=1, lr=0.01, chain=chain)
    assert result.shaping.startswith("kernel")
    assert result.tiers == ["device", "edge", "cloud"]
    # what each tier received: h relayed by the edge, the labels on their way to the loss
    assert sorted(result.crossing[0]) == sorted(["h", LABELS])
    assert sorted(result.crossing[1]) == sorted(["h", "r", LABELS])
    tensor = BATCH * WIDTH * 4
    labels = BATCH * 8
    sent = [(tensor + labels, tensor), (2 * tensor + labels, 2 * tensor)]
    keys = [("device_to_edge_ms", "edge_to_device_ms"), ("edge_to_cloud_ms", "cloud_to_edge_ms")]
    for (up_bps, down_bps), (up_bytes, down_bytes), (up, down) in zip(rates, sent, keys,
                                                                    strict=True):
        assert result.predicted_ms[up] == pytest.approx(up_bytes * 8 / up_bps * 1e3)
        assert result.predicted_ms[down] == pytest.approx(down_bytes * 8 / down_bps * 1e3)
        # each message at its own link's rate
        assert_shaped(result.iterations, up, up_bytes * 8 / up_bps * 1e3)
        assert_shaped(result.iterations, down, down_bytes * 8 / down_bps * 1e3)
    total = sum(v for k, v in result.measured_ms.items() if k != "total_ms")
    assert result.measured_ms["total_ms"] == pytest.approx(total, rel=0.1)  # nothing unseen
    assert result.losses[-1] < result.losses[0]


def test_a_chain_trains_exactly_as_the_whole_model(tmp_path):
    """Relayed gradients add to the relaying tier's own: every tier's step is the whole
    model's, so the losses along a device-edge-cloud chain and a U-shape equal those of the
    model trained in one piece."""
    path = _skip_model(tmp_path)
    scenario = _scenario()
    run = {"iterations": 4, "warmup": 0, "lr": 0.5}
    whole = api.train_model(str(path), scenario, cut="device-only", **run)
    assert whole.tiers == ["device", "server"] and whole.crossing == []
    assert whole.losses[0] != pytest.approx(whole.losses[-1], rel=1e-3)  # the weights move
    for chain in (api.make_chain(scenario, _chain_file(tmp_path, [("1Gbps", "1Gbps")] * 2)),
                  api.make_chain(scenario, u_shape=True)):
        split = api.train_model(str(path), scenario, device_layers=TIERS, chain=chain, **run)
        assert split.losses == pytest.approx(whole.losses, rel=1e-5), chain[0]


def test_u_shape_keeps_the_labels_on_the_device(tmp_path, capsys, monkeypatch):
    path = _skip_model(tmp_path)
    layers = tmp_path / "tiers.json"
    layers.write_text(json.dumps({"partition": {"tier_of": TIERS}}))
    code, out, err = run_main(
        ["train", str(path), "--u-shape", "--device-layers", str(layers), "--uplink", "20Mbps",
         "--downlink", "40Mbps", "--latency", "3ms", "--device", "cpu-server", "--server",
         "cpu-server", "--device-cpu", "0.9", "--iterations", "2", "--warmup", "0", "--json"],
        capsys, monkeypatch)
    assert code == 0, err
    data = json.loads(out)
    jsonschema.validate(data, schema("train"))
    assert {t["term"] for t in data["tiers"]} | {b[k] for b in data["boundaries"]
                                                for k in ("up_term", "down_term")} \
        | {"total_ms"} == set(data["measured_ms"]) == set(data["predicted_ms"])
    assert [t["name"] for t in data["tiers"]] == ["device-head", "server", "device-tail"]
    assert [t["layers"] for t in data["tiers"]] == [1, 1, 2]
    assert [b["labels"] for b in data["boundaries"]] == [False, False]  # never on a link
    assert sorted(data["boundaries"][1]["tensors"]) == ["h", "r"]
    # the second link runs server -> device: activations at the device's downlink
    tensor_ms = 2 * BATCH * WIDTH * 4 * 8 / 40e6 * 1e3
    assert data["predicted_ms"]["server_to_device_tail_ms"] == pytest.approx(tensor_ms + 3)
    for row in data["iterations"]:
        assert row["server_to_device_tail_ms"] >= 3  # the one-way latency, measured
    assert data["losses"][-1] < data["losses"][0]
    assert "device limited to 90% of a CPU" in data["shaping"]


def test_device_layers_alone_cannot_place_a_chain(tmp_path):
    from toolkit.errors import PartitionError

    path = _skip_model(tmp_path)
    chain = api.make_chain(_scenario(), u_shape=True)
    with pytest.raises(PartitionError, match="names the device's layers only"):
        api.train_model(str(path), _scenario(), device_layers=["fc1"], chain=chain)
    with pytest.raises(PartitionError, match="'fc2' has no tier"):
        api.train_model(str(path), _scenario(), device_layers={"fc1": 0, "relu": 1,
                                                               "skip": 2}, chain=chain)
    with pytest.raises(PartitionError, match="invalid tiering"):  # the labels' pin
        api.train_model(str(path), _scenario(), device_layers={**TIERS, "fc2": 1},
                        chain=chain)


def test_cpu_shares_name_tiers_of_the_chain(tmp_path, capsys, monkeypatch):
    from toolkit.train.session import TrainError

    path = _skip_model(tmp_path)
    with pytest.raises(TrainError, match=r"no tier named 'fog'.*device, server"):
        api.train_model(str(path), _scenario(), device_layers=TIERS,
                        chain=api.make_chain(_scenario(), u_shape=True), tier_cpu={"fog": 0.5})
    for bad in ("edge=2", "edge", "=0.5", "edge=x"):
        code, _, err = run_main(["train", str(path), "--tier-cpu", bad], capsys, monkeypatch)
        assert code == 2 and "--tier-cpu" in err and "TIER=SHARE" in err, bad
